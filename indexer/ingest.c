/*
 * ingest.c - the import pipeline of qdup-index build and add (see ingest.h): read
 * every dump into one arena, drop ids the input repeats, ask the store which records
 * it will keep (qd_store_check: its rules and duplicates), encode just those into one
 * array in item order (which qd_store_add then reads in place) and add the batch in
 * one transaction. Encoding lives here, not in the store: the store takes vectors.
 */
#include "qdup/ingest.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qdup/common.h"
#include "qdup/dump.h"
#include "qdup/fileio.h"
#include "qdup/model.h"

/* --- reading dumps -------------------------------------------------------------------- */

/* One record read from a dump; its strings live in the arena. */
typedef struct rec {
    size_t id_off;    /* offset of the id in the arena */
    size_t text_off;  /* offset of the text */
    uint32_t id_len;  /* bytes */
    uint32_t text_len;
    uint32_t file;    /* index into the file list */
    int dropped;      /* 1: not handed to the store (repeated id) */
    uint64_t line;    /* where it starts */
} rec;

/* Every record of every dump, in order. */
typedef struct recs {
    char *arena;      /* ids and texts, each NUL-terminated */
    size_t len, cap;  /* bytes used and allocated */
    rec *r;           /* (n) records */
    size_t n, rcap;   /* records and allocated entries */
} recs;

/* The passes that skip records, in the order they run. */
enum { PASS_READ, PASS_IDS, PASS_STORE, PASS_COUNT };

/* One skipped record's report. The passes run one after the other over the whole
 * input (reading, repeated ids, the store's refusals), each in line order; the reports
 * are held until the import ends and then printed merged in line order, so that a
 * repeated id is reported where it stands and not after every malformed line. */
typedef struct skip_report {
    uint32_t file;    /* index into the file list */
    uint32_t pass;    /* PASS_* */
    uint64_t line;    /* where the record starts */
    size_t seq;       /* arrival order, for a stable sort */
    char *msg;        /* the report (owned) */
} skip_report;

/* Reports held so far: at most max_report of each pass, which is all the merge of
 * the first max_report needs, since each pass arrives in line order. */
typedef struct skip_reports {
    skip_report *r;            /* (n) */
    size_t n, cap;             /* held and allocated */
    size_t held[PASS_COUNT];   /* held per pass */
} skip_reports;

/* One import: what read_dumps, drop_repeated_ids and the add share. */
typedef struct ingest {
    const qd_ingest_opts *o;  /* options */
    qd_ingest_progress *p;    /* the progress line, or NULL */
    qd_ingest_tally *t;       /* counts */
    char **files;             /* the dumps' names */
    skip_reports *sk;         /* reports not yet printed */
} ingest;

static int skip_cmp(const void *a, const void *b)
{
    const skip_report *x = a, *y = b;
    if (x->file != y->file)
        return x->file < y->file ? -1 : 1;
    if (x->line != y->line)
        return x->line < y->line ? -1 : 1;
    if (x->pass != y->pass)
        return x->pass < y->pass ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Prints the held reports in line order (the first max_report of them) and forgets
 * them. */
static void skips_flush(const ingest *g)
{
    skip_reports *k = g->sk;
    if (!k || !k->n)
        return;
    if (g->p)
        qd_ingest_progress_clear(g->p);
    qsort(k->r, k->n, sizeof *k->r, skip_cmp);
    for (size_t i = 0; i < k->n; i++) {
        if (i < g->o->max_report)
            fprintf(stderr, "%s\n", k->r[i].msg);
        qd_free(k->r[i].msg);
    }
    qd_free(k->r);
    memset(k, 0, sizeof *k);
}

static void errorf(const ingest *g, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void errorf(const ingest *g, const char *fmt, ...)
{
    skips_flush(g);
    va_list ap;
    va_start(ap, fmt);
    if (g->p)
        qd_ingest_progress_clear(g->p);
    fprintf(stderr, "%s: ", g->o->prog ? g->o->prog : "qdup");
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* The last line of every strict failure. */
static const char strict_stop[] =
    "--strict: stopping at the first bad record; the index is unchanged";

/* Reports a skipped record of file `file` starting at `line`, found by pass `pass`
 * (held, then printed in line order by skips_flush; the first max_report of them). */
static void skipf(const ingest *g, int pass, uint32_t file, uint64_t line, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void skipf(const ingest *g, int pass, uint32_t file, uint64_t line, const char *fmt, ...)
{
    size_t seq = g->t->shown++;
    skip_reports *k = g->sk;
    if (k->held[pass] >= g->o->max_report)
        return;
    if (k->n == k->cap) {
        size_t c = k->cap ? k->cap * 2 : 64;
        skip_report *r = qd_realloc(k->r, c * sizeof *r);
        if (!r)
            return; /* the report is lost, the count is not */
        k->r = r;
        k->cap = c;
    }
    char buf[QD_ERRMSG_MAX + 600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    size_t len = strlen(buf) + 1;
    char *msg = qd_malloc(len);
    if (!msg)
        return;
    memcpy(msg, buf, len);
    k->r[k->n++] = (skip_report){file, (uint32_t)pass, line, seq, msg};
    k->held[pass]++;
}

/* The line a dump's "file:line: reason" message names, or `fallback` when it names
 * none. */
static uint64_t message_line(const char *msg, const char *file, uint64_t fallback)
{
    size_t n = strlen(file);
    if (strncmp(msg, file, n) != 0 || msg[n] != ':' || msg[n + 1] < '0' || msg[n + 1] > '9')
        return fallback;
    return strtoull(msg + n + 1, NULL, 10);
}

static int arena_put(recs *R, const char *s, size_t n, size_t *off)
{
    if (R->len + n + 1 > R->cap) {
        size_t c = R->cap ? R->cap : 1 << 20;
        while (c < R->len + n + 1)
            c *= 2;
        char *a = qd_realloc(R->arena, c);
        if (!a)
            return QD_ERR_NOMEM;
        R->arena = a;
        R->cap = c;
    }
    memcpy(R->arena + R->len, s, n);
    R->arena[R->len + n] = '\0';
    *off = R->len;
    R->len += n + 1;
    return 0;
}

static int recs_add(recs *R, const qd_dump_rec *d, uint32_t file)
{
    if (R->n == R->rcap) {
        size_t c = R->rcap ? R->rcap * 2 : 4096;
        rec *r = qd_reallocarray(R->r, c, sizeof *r);
        if (!r)
            return QD_ERR_NOMEM;
        R->r = r;
        R->rcap = c;
    }
    rec *r = &R->r[R->n];
    memset(r, 0, sizeof *r);
    if (arena_put(R, d->id, d->id_len, &r->id_off) || arena_put(R, d->text, d->text_len,
                                                                 &r->text_off))
        return QD_ERR_NOMEM;
    r->id_len = (uint32_t)d->id_len;
    r->text_len = (uint32_t)d->text_len;
    r->file = file;
    r->line = d->line;
    R->n++;
    return 0;
}

static void recs_free(recs *R)
{
    qd_free(R->arena);
    qd_free(R->r);
    memset(R, 0, sizeof *R);
}

/* The name a dump goes by in messages. */
static const char *file_name(char **files, uint32_t i)
{
    return strcmp(files[i], "-") == 0 ? "<stdin>" : files[i];
}

/* Reads every dump into R. A malformed record is reported and skipped (fatal with
 * strict); a dump that cannot be opened or read is fatal. Returns 0 or a QD_ERR_*
 * (message printed). */
static int read_dumps(const ingest *g, int nfiles, recs *R)
{
    const qd_ingest_opts *o = g->o;
    char **files = g->files;
    qd_ingest_progress *p = g->p;
    char err[QD_ERRMSG_MAX];
    qd_dump_opts dopt = qd_dump_opts_default();
    if (o->format && qd_dump_parse_format(o->format, &dopt.format) != 0) {
        errorf(g, "--format %s: expected auto, quora, tsv, csv or jsonl", o->format);
        return QD_ERR_INVAL;
    }
    dopt.id_col = o->id_col;
    dopt.text_col = o->text_col;
    dopt.max_text_bytes = o->max_text;
    int stdin_seen = 0;
    for (int f = 0; f < nfiles; f++) {
        if (strcmp(files[f], "-") == 0 && stdin_seen++) {
            errorf(g, "standard input (-) given twice");
            return QD_ERR_INVAL;
        }
        qd_dump *d = NULL;
        int orc = qd_dump_open(files[f], &dopt, &d, err, sizeof err);
        if (orc != 0) {
            errorf(g, "%s", err);
            return orc;
        }
        if (*qd_dump_note(d))
            errorf(g, "note: %s", qd_dump_note(d));
        double last = qd_now();
        uint64_t prev_line = 0; /* the last record's line: where a malformed one follows */
        for (;;) {
            qd_dump_rec dr;
            int rc = qd_dump_next(d, &dr);
            if (rc == 0)
                break;
            if (rc == QD_ERR_FORMAT) {
                g->t->read++;
                /* An empty text is counted with the texts without words. */
                if (qd_dump_last_empty(d))
                    g->t->empty++;
                else
                    g->t->malformed++;
                if (o->strict) {
                    errorf(g, "%s", qd_dump_errmsg(d));
                    errorf(g, "%s", strict_stop);
                    qd_dump_close(d);
                    return QD_ERR_FORMAT;
                }
                prev_line++;
                skipf(g, PASS_READ, (uint32_t)f,
                      message_line(qd_dump_errmsg(d), files[f], prev_line), "%s",
                      qd_dump_errmsg(d));
                continue;
            }
            if (rc < 0) {
                errorf(g, "%s", qd_dump_errmsg(d));
                qd_dump_close(d);
                return rc;
            }
            g->t->read++;
            prev_line = dr.line;
            if (recs_add(R, &dr, (uint32_t)f) != 0) {
                errorf(g, "out of memory after %zu records", R->n);
                qd_dump_close(d);
                return QD_ERR_NOMEM;
            }
            if (p && p->on && (R->n & 4095) == 0 && qd_now() - last > 0.2) {
                last = qd_now();
                fprintf(stderr, "%sreading %s: %zu records%s", p->tty ? "\r\033[K" : "",
                        file_name(files, (uint32_t)f), R->n, p->tty ? "" : "\n");
                p->dirty = p->tty;
            }
        }
        qd_dump_close(d);
    }
    if (p)
        qd_ingest_progress_clear(p);
    return 0;
}

/* Drops records whose id came earlier in the input: the later one is skipped, or
 * with replace the earlier one is dropped. Returns 0 or a QD_ERR_* (strict, printed). */
static int drop_repeated_ids(const ingest *g, recs *R)
{
    const qd_ingest_opts *o = g->o;
    char **files = g->files;
    qd_ingest_tally *t = g->t;
    size_t cap = 16;
    while (cap < R->n * 2)
        cap *= 2;
    size_t *slot = qd_calloc(cap, sizeof *slot); /* record index + 1; 0 = empty */
    if (!slot) {
        errorf(g, "out of memory");
        return QD_ERR_NOMEM;
    }
    int rc = 0;
    for (size_t i = 0; i < R->n && !rc; i++) {
        rec *r = &R->r[i];
        const char *id = R->arena + r->id_off;
        size_t h = (size_t)qd_hash64(QD_HASH64_INIT, id, r->id_len) & (cap - 1);
        for (;; h = (h + 1) & (cap - 1)) {
            if (!slot[h]) {
                slot[h] = i + 1;
                break;
            }
            rec *e = &R->r[slot[h] - 1];
            if (e->id_len != r->id_len || memcmp(R->arena + e->id_off, id, r->id_len) != 0)
                continue;
            if (o->replace) {
                e->dropped = 1;
                slot[h] = i + 1;
                t->replaced++;
            } else if (o->strict) {
                errorf(g, "%s:%" PRIu64 ": id \"%s\" repeats the one at %s:%" PRIu64,
                       file_name(files, r->file), r->line, id, file_name(files, e->file),
                       e->line);
                errorf(g, "%s", strict_stop);
                rc = QD_ERR_INVAL;
            } else {
                r->dropped = 1;
                t->dup_id++;
                skipf(g, PASS_IDS, r->file, r->line,
                      "%s:%" PRIu64 ": id \"%s\" repeats the one at %s:%" PRIu64
                      " (use --replace to keep the later)",
                      file_name(files, r->file), r->line, id, file_name(files, e->file),
                      e->line);
            }
            break;
        }
    }
    qd_free(slot);
    return rc;
}

/* The message for an item the store did not take. */
static void describe_refusal(qd_store *s, const qd_store_result *res, const rec *r,
                             const recs *R, char **files, char *buf, size_t len)
{
    const char *id = R->arena + r->id_off;
    qd_store_row other = {0};
    int have = res->other_row >= 0 && qd_store_get_row(s, res->other_row, &other) == 0;
    switch (res->status) {
    case QD_STORE_DUP_ID:
        snprintf(buf, len, "%s:%" PRIu64 ": id \"%s\" is already in the index (row %" PRId64
                 "); use --replace to replace it",
                 file_name(files, r->file), r->line, id, res->other_row);
        break;
    case QD_STORE_REPOST:
        if (have)
            snprintf(buf, len, "%s:%" PRIu64 ": id \"%s\": same text as id \"%s\" (row %" PRId64
                     "), kept", file_name(files, r->file), r->line, id, other.ext_id, other.row);
        else
            snprintf(buf, len, "%s:%" PRIu64 ": id \"%s\": same text as an earlier record, kept",
                     file_name(files, r->file), r->line, id);
        break;
    case QD_STORE_DUP_TEXT:
        if (have)
            snprintf(buf, len, "%s:%" PRIu64 ": id \"%s\": same text as id \"%s\" (row %" PRId64
                     ")", file_name(files, r->file), r->line, id, other.ext_id, other.row);
        else
            snprintf(buf, len, "%s:%" PRIu64 ": id \"%s\": same text as an earlier record",
                     file_name(files, r->file), r->line, id);
        break;
    case QD_STORE_EMPTY:
        snprintf(buf, len, "%s:%" PRIu64 ": id \"%s\": the text has no words or symbols",
                 file_name(files, r->file), r->line, id);
        break;
    default:
        buf[0] = '\0';
    }
    qd_store_row_free(&other);
}

/* --- encoding and adding ---------------------------------------------------------------- */

/* Progress of the encoder, forwarded as phase "encode". */
typedef struct enc_progress {
    qd_ingest_progress_fn fn; /* where it goes */
    void *arg;                /* its argument */
    size_t total;             /* questions being encoded */
} enc_progress;

static void enc_progress_cb(size_t done, void *arg)
{
    enc_progress *p = arg;
    p->fn("encode", done, p->total, p->arg);
}

/* Encodes the items that res (from qd_store_check) says the store will keep and that
 * bring no vector, into one array *vec (in item order, so that qd_store_add reads it
 * in place when every kept item is encoded here), and points those items at their
 * rows of it. *vec (freed by the caller) is NULL when nothing needed encoding. */
static int encode_kept(qd_store *s, qd_store_item *items, size_t n, const qd_store_result *res,
                       int threads, qd_ingest_progress_fn fn, void *arg, float **vec,
                       char *err, size_t errlen)
{
    const qd_model *m = qd_store_model(s);
    size_t dim = (size_t)qd_model_dim(m), nenc = 0;
    *vec = NULL;
    for (size_t i = 0; i < n; i++)
        if ((res[i].status == QD_STORE_ADDED || res[i].status == QD_STORE_REPLACED) &&
            !items[i].vec)
            nenc++;
    if (nenc == 0)
        return 0;
    const char **texts = qd_mallocarray(nenc, sizeof *texts);
    size_t *lens = qd_mallocarray(nenc, sizeof *lens);
    float *x = qd_mallocarray(nenc * dim, sizeof *x);
    int rc = 0;
    if (!texts || !lens || !x) {
        rc = qd_errf(err, errlen, QD_ERR_NOMEM, "out of memory for %zu vectors", nenc);
        goto out;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if ((res[i].status == QD_STORE_ADDED || res[i].status == QD_STORE_REPLACED) &&
            !items[i].vec) {
            texts[k] = items[i].text;
            lens[k] = items[i].text_len;
            items[i].vec = x + k++ * dim;
        }
    enc_progress ep = {fn, arg, nenc};
    rc = qd_enc_texts_parallel(m, texts, lens, nenc, threads, 0, fn ? enc_progress_cb : NULL,
                               &ep, x);
    if (rc)
        qd_errf(err, errlen, rc, "encoding %zu questions: %s", nenc, qd_strerror(rc));
out:
    qd_free(texts);
    qd_free(lens);
    if (rc)
        qd_free(x);
    else
        *vec = x;
    return rc;
}

/* qd_ingest_add on items the caller lets us fill in (their vec fields). With
 * `checked`, res already holds qd_store_check's answer for them. */
static int encode_add(qd_store *s, qd_store_item *items, size_t n, int replace, int threads,
                      qd_ingest_progress_fn fn, void *arg, qd_store_result *res, int checked,
                      char *err, size_t errlen)
{
    float *vec = NULL;
    int rc = checked ? 0 : qd_store_check(s, items, n, replace, res);
    if (rc)
        return qd_errf(err, errlen, rc, "%s", qd_store_errmsg(s));
    rc = encode_kept(s, items, n, res, threads, fn, arg, &vec, err, errlen);
    if (!rc && (rc = qd_store_add(s, items, n, replace, res)) != 0)
        qd_errf(err, errlen, rc, "%s", qd_store_errmsg(s));
    qd_free(vec);
    return rc;
}

int qd_ingest_add(qd_store *s, const qd_store_item *items, size_t n, int replace, int threads,
                  qd_ingest_progress_fn fn, void *arg, qd_store_result *res, char *err,
                  size_t errlen)
{
    qd_store_item *copy = qd_mallocarray(n ? n : 1, sizeof *copy);
    if (!copy)
        return qd_errf(err, errlen, QD_ERR_NOMEM, "out of memory for a batch of %zu", n);
    if (n)
        memcpy(copy, items, n * sizeof *copy);
    int rc = encode_add(s, copy, n, replace, threads, fn, arg, res, 0, err, errlen);
    qd_free(copy);
    return rc;
}

/* --- dumps -------------------------------------------------------------------------------- */

int qd_ingest_dumps(qd_store *s, const qd_ingest_opts *o, qd_ingest_progress *p,
                    char **files, int nfiles, qd_ingest_tally *t)
{
    skip_reports sk = {0};
    ingest g = {o, p, t, files, &sk};
    recs R = {0};
    qd_store_item *items = NULL;
    qd_store_result *res = NULL;
    size_t *from = NULL;
    char msg[QD_ERRMSG_MAX + 600];
    memset(t, 0, sizeof *t);
    int rc = read_dumps(&g, nfiles, &R);
    if (!rc)
        rc = drop_repeated_ids(&g, &R);
    if (rc)
        goto out;
    items = qd_calloc(R.n ? R.n : 1, sizeof *items);
    res = qd_calloc(R.n ? R.n : 1, sizeof *res);
    from = qd_calloc(R.n ? R.n : 1, sizeof *from);
    if (!items || !res || !from) {
        errorf(&g, "out of memory for %zu records", R.n);
        rc = QD_ERR_NOMEM;
        goto out;
    }
    size_t n = 0;
    for (size_t i = 0; i < R.n; i++) {
        if (R.r[i].dropped)
            continue;
        items[n] = (qd_store_item){R.arena + R.r[i].id_off, R.r[i].id_len,
                                   R.arena + R.r[i].text_off, R.r[i].text_len, NULL};
        from[n++] = i;
    }
    int flags = (o->replace ? QD_STORE_REPLACE : 0) | (o->keep_identical ? QD_STORE_REPOSTS : 0);
    if ((rc = qd_store_check(s, items, n, flags, res)) != 0) {
        errorf(&g, "%s", qd_store_errmsg(s));
        goto out;
    }
    if (o->strict)
        for (size_t i = 0; i < n; i++)
            if (res[i].status != QD_STORE_ADDED && res[i].status != QD_STORE_REPLACED &&
                res[i].status != QD_STORE_REPOST) {
                describe_refusal(s, &res[i], &R.r[from[i]], &R, files, msg, sizeof msg);
                errorf(&g, "%s", msg);
                errorf(&g, "%s", strict_stop);
                rc = QD_ERR_INVAL;
                goto out;
            }
    rc = encode_add(s, items, n, flags, o->threads, p ? qd_ingest_progress_cb : NULL, p,
                    res, 1, msg, sizeof msg);
    if (rc) {
        errorf(&g, "%s", msg);
        goto out;
    }
    if (p)
        qd_ingest_progress_clear(p);
    for (size_t i = 0; i < n; i++) {
        switch (res[i].status) {
        case QD_STORE_ADDED: t->indexed++; continue;
        case QD_STORE_REPLACED: t->indexed++; t->replaced++; continue;
        case QD_STORE_DUP_ID: t->dup_id++; break;
        case QD_STORE_DUP_TEXT: t->dup_text++; break;
        case QD_STORE_EMPTY: t->empty++; break;
        case QD_STORE_REPOST: t->indexed++; t->reposts++; break;
        }
        describe_refusal(s, &res[i], &R.r[from[i]], &R, files, msg, sizeof msg);
        skipf(&g, PASS_STORE, R.r[from[i]].file, R.r[from[i]].line, "%s", msg);
    }
out:
    skips_flush(&g);
    qd_free(items);
    qd_free(res);
    qd_free(from);
    recs_free(&R);
    return rc;
}

void qd_ingest_summary(const qd_ingest_opts *o, const char *cmd, const qd_ingest_tally *t,
                       int nfiles, double seconds)
{
    const char *prog = o->prog ? o->prog : "qdup";
    if (t->shown > o->max_report)
        fprintf(stderr, "%s: ... and %" PRIu64 " more skipped records not shown "
                "(--max-report)\n", prog, t->shown - o->max_report);
    if (o->quiet)
        return;
    uint64_t skipped = t->malformed + t->dup_id + t->dup_text + t->empty;
    fprintf(stderr,
            "%s %s: %" PRIu64 " records read from %d file%s, %" PRIu64 " indexed, %" PRIu64
            " skipped (%" PRIu64 " malformed, %" PRIu64 " duplicate id, %" PRIu64
            " duplicate text, %" PRIu64 " empty), %" PRIu64 " replaced, %" PRIu64
            " identical kept; %.2f s, %.0f records/s\n",
            prog, cmd, t->read, nfiles, nfiles == 1 ? "" : "s", t->indexed, skipped,
            t->malformed, t->dup_id, t->dup_text, t->empty, t->replaced, t->reposts, seconds,
            seconds > 0 ? (double)t->read / seconds : 0.0);
}

/* --- the progress line -------------------------------------------------------------------- */

void qd_ingest_progress_init(qd_ingest_progress *p, int quiet, int force,
                             void (*stop)(const char *point))
{
    memset(p, 0, sizeof *p);
    p->tty = isatty(STDERR_FILENO);
    p->on = !quiet && (p->tty || force);
    p->stop = stop;
}

void qd_ingest_progress_clear(qd_ingest_progress *p)
{
    if (p->dirty) {
        fputs("\r\033[K", stderr);
        p->dirty = 0;
    }
}

void qd_ingest_progress_cb(const char *phase, size_t done, size_t total, void *arg)
{
    qd_ingest_progress *p = arg;
    double now = qd_now();
    if (strcmp(p->phase, phase) != 0) {
        snprintf(p->phase, sizeof p->phase, "%s", phase);
        p->t0 = now;
        p->last = 0;
    }
    if (p->stop && strcmp(phase, "encode") == 0 && done > 0)
        p->stop("encode");
    if (!p->on)
        return;
    /* The first call of a phase has no rate yet: wait for the next. */
    if ((now - p->last < (p->tty ? 0.2 : 1.0) || now - p->t0 < 0.1) && done < total)
        return;
    p->last = now;
    double el = now - p->t0;
    double rate = el > 0 ? (double)done / el : 0;
    double eta = rate > 0 ? (double)(total - done) / rate : 0;
    const char *what = strcmp(phase, "encode") == 0   ? "encoding"
                       : strcmp(phase, "index") == 0 ? "indexing"
                                                     : phase;
    fprintf(stderr, "%s%s: %zu/%zu rows, %.0f rows/s, ETA %.0f s%s", p->tty ? "\r\033[K" : "",
            what, done, total, rate, eta, p->tty ? "" : "\n");
    p->dirty = p->tty;
    fflush(stderr);
}
