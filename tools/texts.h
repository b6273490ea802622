/*
 * texts.h - every question of a dump in memory, for the tools that embed or search a
 * whole file at once (qdup-bench, qdup-eval).
 */
#ifndef QDUP_TOOLS_TEXTS_H
#define QDUP_TOOLS_TEXTS_H

#include <stddef.h>
#include <stdint.h>

#include "qdup/dump.h"

/* The records of a dump, in file order. Strings are NUL-terminated, in one arena. */
typedef struct qd_texts {
    size_t n;              /* records */
    const char **text;     /* (n) question texts */
    size_t *len;           /* (n) their byte lengths */
    const char **id;       /* (n) external ids */
    size_t *id_len;        /* (n) their byte lengths */
    uint64_t *line;        /* (n) line where each record starts */
    char *arena;           /* the strings, back to back */
    size_t skipped;        /* malformed records skipped */
} qd_texts;

/* Reads every record of the dump at path (o: format and columns, NULL for the
 * defaults: format from the content). A malformed record is skipped, the first five
 * named on standard error after "prog: ". Fails, saying why, when the file cannot be
 * read, on out of memory, and when no record is left. Returns 0 or a QD_ERR_*. */
int qd_texts_load(const char *prog, const char *path, const qd_dump_opts *o, qd_texts *t);
void qd_texts_free(qd_texts *t);

#endif
