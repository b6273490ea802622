/*
 * bench.h - what qdup-bench's commands share (tools/bench.c, tools/bench_search.c).
 */
#ifndef QDUP_TOOLS_BENCH_H
#define QDUP_TOOLS_BENCH_H

#include <stddef.h>

/* The questions of a dump, in file order. */
typedef struct texts {
    size_t n;              /* questions */
    const char **text;     /* (n) into arena */
    size_t *len;           /* (n) byte lengths */
    char *arena;           /* texts, NUL-terminated, back to back */
    size_t skipped;        /* malformed records */
} texts;

/* Reads every question of a dump (any format qdup-index reads); malformed records are
 * skipped (the first few named on standard error). Prints why and returns a negative
 * QD_ERR_* on failure, or when the dump holds no question. */
int load_texts(const char *path, texts *t);
void texts_free(texts *t);

/* qdup-bench search (bench_search.c): argv[0] is "search". */
int bench_search_main(int argc, char **argv);

#endif
