/*
 * ingest.h - bringing questions into a store: read dumps (dump.h), drop ids the input
 * repeats, ask the store which records it will keep (qd_store_check), encode those
 * (the store takes vectors and never encodes) and add them as one batch, with a
 * progress line and an import summary on stderr. qdup-index build and add are this
 * module plus a command line; qd_ingest_add is the encode-and-add step alone, for
 * callers that hold items in memory.
 *
 * Messages go to stderr: a record that is skipped is reported as "file:line: reason"
 * (the first max_report of them, then a count in the summary); a failure that stops
 * the import is prefixed with the program's name.
 */
#ifndef QDUP_INGEST_H
#define QDUP_INGEST_H

#include <stddef.h>
#include <stdint.h>

#include "qdup/store.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A progress callback: phase "encode" (from qd_ingest_add) or the store's phases. */
typedef void (*qd_ingest_progress_fn)(const char *phase, size_t done, size_t total, void *arg);

/* Adds n items to s as qd_store_add does, first encoding (with s's model, on `threads`
 * threads, 0: all cores) the items the store will keep that bring no vector. fn (may
 * be NULL) gets phase "encode" now and then. On failure err gets the reason (also in
 * qd_store_errmsg(s) when the store raised it) and nothing is stored. */
int qd_ingest_add(qd_store *s, const qd_store_item *items, size_t n, int replace, int threads,
                  qd_ingest_progress_fn fn, void *arg, qd_store_result *res, char *err,
                  size_t errlen);

/* The progress line on stderr: on a terminal it is rewritten in place; with `force`
 * and no terminal, one line a second; nothing when quiet. */
typedef struct qd_ingest_progress {
    int on;          /* print anything at all */
    int tty;         /* stderr is a terminal */
    double t0;       /* start of the current phase */
    double last;     /* last print */
    char phase[16];  /* current phase */
    int dirty;       /* a line without newline is showing */
    void (*stop)(const char *point); /* tests: called with "encode" once encoding is
                                        under way (see qdup-index), or NULL */
} qd_ingest_progress;

void qd_ingest_progress_init(qd_ingest_progress *p, int quiet, int force,
                             void (*stop)(const char *point));
/* A qd_ingest_progress_fn (and qd_store_set_progress callback); arg is the
 * qd_ingest_progress. */
void qd_ingest_progress_cb(const char *phase, size_t done, size_t total, void *arg);
/* Erases a progress line left showing, before other output. */
void qd_ingest_progress_clear(qd_ingest_progress *p);

/* How to read and add dumps. */
typedef struct qd_ingest_opts {
    const char *prog;       /* program name, prefix of failure messages */
    const char *format;     /* dump format name (qd_dump_parse_format), NULL: auto */
    const char *id_col;     /* CSV: the id column's name, or NULL */
    const char *text_col;   /* CSV: the text column's name, or NULL */
    size_t max_text;        /* longest text the reader takes (0: its default) */
    size_t max_report;      /* skipped records reported one by one at most */
    int strict;             /* stop at the first record that would be skipped */
    int replace;            /* a record with a live id replaces it (and the later of two
                               records with one id wins) */
    int threads;            /* encoding threads (0: all cores) */
    int quiet;              /* no summary */
    int keep_identical;     /* a record with the normalized text of a live question (or
                               of an earlier record) is stored all the same, as a repost,
                               and reported; 0: skipped and reported */
} qd_ingest_opts;

/* What happened to the input, for the summary. */
typedef struct qd_ingest_tally {
    uint64_t read;       /* records read (malformed ones included) */
    uint64_t indexed;    /* stored */
    uint64_t malformed;  /* refused by the dump reader */
    uint64_t dup_id;     /* id repeated in the input, or live without replace */
    uint64_t dup_text;   /* same normalized text as another question (skipped) */
    uint64_t reposts;    /* same normalized text, kept (keep_identical) */
    uint64_t empty;      /* empty texts ("" or white space) and texts without words */
    uint64_t replaced;   /* replaced a live row, or an earlier record of the input */
    uint64_t shown;      /* skip messages counted (printed up to max_report) */
} qd_ingest_tally;

/* Reads every dump of files (nfiles; "-" is standard input) completely, reporting
 * malformed records, drops repeated ids, and adds the rest to s as one batch
 * (qd_ingest_add), reporting what the store refused. p (may be NULL) shows progress
 * and should also be s's progress callback. 0, or a negative QD_ERR_* after printing
 * why: a dump that cannot be read, with strict any record that would be skipped, or
 * a failure of the store (which then holds nothing of the batch). *t (zeroed first)
 * counts what happened. */
int qd_ingest_dumps(qd_store *s, const qd_ingest_opts *o, qd_ingest_progress *p,
                    char **files, int nfiles, qd_ingest_tally *t);

/* Prints the import summary of command `cmd` ("build", "add") that took `seconds`:
 * the count of skipped records not shown, and unless o->quiet one line of counts. */
void qd_ingest_summary(const qd_ingest_opts *o, const char *cmd, const qd_ingest_tally *t,
                       int nfiles, double seconds);

#ifdef __cplusplus
}
#endif

#endif
