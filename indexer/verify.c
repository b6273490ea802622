/*
 * verify.c - qd_store_verify (every live row in FAISS with its stored vector, the
 * FAISS file against meta's record, SQLite's own check, the text keys) and
 * qd_store_export (the live rows as JSON Lines). Both read the database under the
 * writer mutex, in one read transaction.
 */
#include <stdarg.h>
#include <stdio.h>
#include <jansson.h>
#include "qdup/tok.h"
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include "qdup/ann.h"
#include "qdup/common.h"
#include "qdup/store.h"
#include "store_impl.h"

/* --- verify ----------------------------------------------------------------------------- */

/* Problem counting and reporting for verify. */
typedef struct vreport {
    FILE *f;          /* where to print, or NULL */
    size_t max;       /* lines to print at most */
    uint64_t n;       /* problems found */
} vreport;

static void vproblem(vreport *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void vproblem(vreport *v, const char *fmt, ...)
{
    v->n++;
    if (!v->f || v->n > v->max)
        return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(v->f, fmt, ap);
    va_end(ap);
    fputc('\n', v->f);
}

/* Checks the FAISS file on disk against meta's current record. */
static int verify_file(qd_store *s, vreport *v)
{
    if (s->faiss_note[0]) {
        vproblem(v, "%s", s->faiss_note);
        return 0;
    }
    int type;
    int64_t crc = 0, size = 0, fseq = 0;
    int rc = st_meta_get(s, "faiss_crc", &type, &crc, NULL, 0);
    if (!rc && type == SQLITE_INTEGER)
        rc = st_meta_int(s, "faiss_size", &size);
    if (!rc)
        rc = st_meta_int(s, "faiss_seq", &fseq);
    if (rc)
        return rc;
    if (type != SQLITE_INTEGER) {
        vproblem(v, "%s: the database records no checkpoint of the FAISS file", s->db_path);
        return 0;
    }
    uint32_t fcrc;
    uint64_t fsize;
    rc = st_file_crc(s->faiss_path, &fcrc, &fsize);
    if (rc == QD_ERR_NOTFOUND) {
        vproblem(v, "%s: missing", s->faiss_path);
        return 0;
    }
    if (rc)
        return rc;
    if ((int64_t)fsize != size || (int64_t)fcrc != crc)
        vproblem(v, "%s: %" PRIu64 " bytes with CRC-32 %08" PRIx32 ", the database records "
                 "%" PRId64 " bytes with CRC-32 %08" PRIx32 " (changed or damaged since "
                 "checkpoint %" PRId64 ")",
                 s->faiss_path, fsize, fcrc, size, (uint32_t)crc, fseq);
    return 0;
}

/* Row ids and vectors of live rows waiting to be checked by search (IVF). */
typedef struct vbatch {
    float *x;       /* (n, dim) stored vectors */
    int64_t *rows;  /* (n) their row ids */
    size_t n;       /* filled */
} vbatch;

#define VBATCH 256

/* Checks a batch of live rows of a kind that cannot look vectors up by id: each
 * stored vector, searched for, must find its own row. */
static int verify_by_search(qd_store *s, vbatch *b, vreport *v, uint64_t *present)
{
    if (b->n == 0)
        return 0;
    size_t ntotal = qd_ann_count(s->ann);
    size_t k = ntotal < 32 ? ntotal : 32;
    if (k == 0) {
        for (size_t i = 0; i < b->n; i++)
            vproblem(v, "row %" PRId64 ": missing from the FAISS index (it is empty)",
                     b->rows[i]);
        b->n = 0;
        return 0;
    }
    float *sc = qd_mallocarray(b->n * k, sizeof *sc);
    int64_t *id = qd_mallocarray(b->n * k, sizeof *id);
    int rc = 0;
    if (!sc || !id)
        rc = st_fail(QD_ERR_NOMEM, "out of memory");
    else if ((rc = qd_ann_search(s->ann, b->x, b->n, k, sc, id)) != 0)
        rc = st_fail(rc, "%s", qd_ann_errmsg(s->ann));
    for (size_t i = 0; !rc && i < b->n; i++) {
        int hit = 0;
        for (size_t j = 0; j < k; j++)
            if (id[i * k + j] == b->rows[i])
                hit = 1;
        if (hit)
            (*present)++;
        else
            vproblem(v, "row %" PRId64 ": not found in the FAISS index by searching for its "
                     "own vector (missing, or a different vector)", b->rows[i]);
    }
    qd_free(sc);
    qd_free(id);
    b->n = 0;
    return rc;
}

static int verify_rows(qd_store *s, vreport *v)
{
    size_t dim = (size_t)s->dim;
    int can_get = qd_ann_can_get(s->ann);
    float *stored = qd_mallocarray(dim, sizeof *stored);
    float *held = qd_mallocarray(dim, sizeof *held);
    vbatch b = {qd_mallocarray(VBATCH * dim, sizeof(float)),
                qd_mallocarray(VBATCH, sizeof(int64_t)), 0};
    qd_tokbuf tb;
    qd_tokbuf_init(&tb);
    sqlite3_stmt *st = NULL;
    uint64_t rows = 0, live = 0, present = 0, tomb_present = 0;
    int64_t seq = 0;
    int rc = 0;
    if (!stored || !held || !b.x || !b.rows) {
        rc = st_fail(QD_ERR_NOMEM, "out of memory");
        goto out;
    }
    if ((rc = st_meta_int(s, "seq", &seq)) != 0)
        goto out;
    rc = st_db_prepare(s, "SELECT row, ext_id, text, text_key, vec, removed, seq, removed_seq "
                       "FROM questions ORDER BY row", &st);
    int src = SQLITE_DONE;
    while (!rc && (src = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t row = sqlite3_column_int64(st, 0);
        const char *id = (const char *)sqlite3_column_text(st, 1);
        size_t id_len = (size_t)sqlite3_column_bytes(st, 1);
        const char *text = (const char *)sqlite3_column_text(st, 2);
        size_t text_len = (size_t)sqlite3_column_bytes(st, 2);
        uint64_t key = (uint64_t)sqlite3_column_int64(st, 3);
        const void *blob = sqlite3_column_blob(st, 4);
        size_t blen = (size_t)sqlite3_column_bytes(st, 4);
        int is_live = sqlite3_column_type(st, 5) == SQLITE_NULL;
        int64_t rseq = sqlite3_column_int64(st, 6);
        int64_t rmseq = sqlite3_column_int64(st, 7);
        rows++;
        if (!id || !text) {
            rc = st_fail(QD_ERR_NOMEM, "out of memory");
            break;
        }
        if (rseq > seq || rmseq > seq)
            vproblem(v, "row %" PRId64 ": change number %" PRId64 " is past the last one "
                     "recorded (%" PRId64 ")", row, rseq > rmseq ? rseq : rmseq, seq);
        uint64_t k2;
        if ((rc = st_text_key_tb(&tb, text, text_len, &k2)) != 0) {
            rc = st_fail(rc, "tokenizing row %" PRId64, row);
            break;
        }
        if (k2 != key)
            vproblem(v, "row %" PRId64 " (id \"%s\"): stored text key does not match its "
                     "text (a different tokenizer?)", row, id);
        const st_row *m = st_map_get_row(&s->by_row, row);
        if (!m)
            vproblem(v, "row %" PRId64 " (id \"%s\"): in the database but not in the row "
                     "table (added by another process since this one opened it?)", row, id);
        else if ((m->removed == 0) != is_live || m->id_len != id_len ||
                 memcmp(st_row_ext(m), id, id_len) != 0)
            vproblem(v, "row %" PRId64 " (id \"%s\"): the row table in memory differs from "
                     "the database", row, id);
        if (blen != dim * sizeof(float) || !blob) {
            vproblem(v, "row %" PRId64 " (id \"%s\"): stored vector has %zu bytes, expected "
                     "%zu", row, id, blen, dim * sizeof(float));
            continue;
        }
        st_vec_from_le(blob, dim, stored);
        double norm = 0;
        int finite = 1;
        for (size_t d = 0; d < dim; d++) {
            finite &= isfinite(stored[d]) != 0;
            norm += (double)stored[d] * stored[d];
        }
        if (!finite || fabs(sqrt(norm) - 1.0) > 1e-3) {
            vproblem(v, "row %" PRId64 " (id \"%s\"): stored vector is not a unit vector "
                     "(norm %g)", row, id, sqrt(norm));
            continue;
        }
        if (!is_live) {
            /* A tombstone: in FAISS only if the kind cannot remove. A kind that cannot
             * look up by id (IVF) removes, so the count check below covers it. */
            if (can_get) {
                int grc = qd_ann_get(s->ann, row, held);
                if (grc == 0) {
                    tomb_present++;
                    if (s->can_remove)
                        vproblem(v, "row %" PRId64 " (id \"%s\"): removed, but still in the "
                                 "FAISS index", row, id);
                } else if (grc != QD_ERR_NOTFOUND) {
                    rc = st_fail(grc, "%s", qd_ann_errmsg(s->ann));
                }
            }
            continue;
        }
        live++;
        if (!can_get) {
            memcpy(b.x + b.n * dim, stored, dim * sizeof(float));
            b.rows[b.n++] = row;
            if (b.n == VBATCH)
                rc = verify_by_search(s, &b, v, &present);
            continue;
        }
        int grc = qd_ann_get(s->ann, row, held);
        if (grc == QD_ERR_NOTFOUND) {
            vproblem(v, "row %" PRId64 " (id \"%s\"): missing from the FAISS index", row, id);
            continue;
        }
        if (grc) {
            rc = st_fail(grc, "%s", qd_ann_errmsg(s->ann));
            break;
        }
        present++;
        double maxd = 0, dot = 0, hn = 0;
        for (size_t d = 0; d < dim; d++) {
            double diff = fabs((double)held[d] - stored[d]);
            maxd = diff > maxd ? diff : maxd;
            dot += (double)held[d] * stored[d];
            hn += (double)held[d] * held[d];
        }
        double cosine = hn > 0 ? dot / sqrt(hn * norm) : 0;
        if (s->lossy ? cosine < 0.95 : maxd > 1e-6)
            vproblem(v, "row %" PRId64 " (id \"%s\"): the FAISS index holds a different "
                     "vector (largest difference %.3g, cosine %.4f)", row, id, maxd, cosine);
    }
    if (!rc && src != SQLITE_DONE)
        rc = st_dbfail(s->db, s->db_path, "reading the questions");
    if (!rc)
        rc = verify_by_search(s, &b, v, &present);
    if (rc)
        goto out;
    if (rows != s->by_row.n)
        vproblem(v, "the row table holds %zu rows, the database %" PRIu64, s->by_row.n, rows);
    if (live != s->live)
        vproblem(v, "%" PRIu64 " live rows in the database, %" PRIu64 " in memory", live,
                 s->live);
    size_t ntotal = qd_ann_count(s->ann);
    uint64_t expect = present + tomb_present;
    if (ntotal > expect)
        vproblem(v, "the FAISS index holds %" PRIu64 " vector(s) that belong to no %srow",
                 (uint64_t)ntotal - expect, s->can_remove ? "live " : "");
out:
    sqlite3_finalize(st);
    qd_tokbuf_free(&tb);
    qd_free(stored);
    qd_free(held);
    qd_free(b.x);
    qd_free(b.rows);
    return rc;
}

int qd_store_verify(qd_store *s, FILE *report, size_t max_report, uint64_t *problems)
{
    st_enter();
    vreport v = {report, max_report, 0};
    if (problems)
        *problems = 0;
    pthread_mutex_lock(&s->wmu);
    int rc = 0;
    if (s->broken)
        vproblem(&v, "%s", s->broken_msg);
    char fp[64];
    if ((rc = st_meta_text(s, "model_fingerprint", fp, sizeof fp)) != 0)
        goto out;
    if (strcmp(fp, qd_model_fingerprint(s->model)) != 0)
        vproblem(&v, "model %s has fingerprint %s, the database records %s", s->model_path,
                 qd_model_fingerprint(s->model), fp);
    if ((rc = verify_file(s, &v)) != 0)
        goto out;
    /* SQLite's own structural check (b-trees, indexes against tables). */
    sqlite3_stmt *st = NULL;
    if ((rc = st_db_prepare(s, "PRAGMA quick_check", &st)) != 0)
        goto out;
    int src;
    while ((src = sqlite3_step(st)) == SQLITE_ROW) {
        const char *t = (const char *)sqlite3_column_text(st, 0);
        if (t && strcmp(t, "ok") != 0)
            vproblem(&v, "%s: %s", s->db_path, t);
    }
    if (src != SQLITE_DONE)
        vproblem(&v, "%s: integrity check failed: %s", s->db_path, sqlite3_errmsg(s->db));
    sqlite3_finalize(st);
    if (sqlite3_exec(s->db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK) {
        rc = st_dbfail(s->db, s->db_path, "starting a transaction");
        goto out;
    }
    rc = verify_rows(s, &v);
    sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL);
out:
    pthread_mutex_unlock(&s->wmu);
    if (problems)
        *problems = v.n;
    if (rc)
        return rc;
    return v.n ? st_fail(QD_ERR_MISMATCH, "%" PRIu64 " problem(s) found", v.n) : 0;
}

/* --- export ------------------------------------------------------------------------------ */

/* Writes s[0..n) as a JSON string (jansson does the escaping). */
static int put_json_string(FILE *out, const char *s, size_t n)
{
    json_t *j = json_stringn(s, n);
    if (!j)
        return QD_ERR_NOMEM;
    int rc = json_dumpf(j, out, JSON_ENCODE_ANY) == 0 ? 0 : QD_ERR_IO;
    json_decref(j);
    return rc;
}

int qd_store_export(qd_store *s, FILE *out)
{
    st_enter();
    size_t dim = (size_t)s->dim;
    float *x = qd_mallocarray(dim, sizeof *x);
    if (!x)
        return st_fail(QD_ERR_NOMEM, "out of memory");
    pthread_mutex_lock(&s->wmu);
    sqlite3_stmt *st = NULL;
    int rc = 0;
    if (sqlite3_exec(s->db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK)
        rc = st_dbfail(s->db, s->db_path, "starting a transaction");
    if (!rc)
        rc = st_db_prepare(s, "SELECT row, ext_id, text, vec FROM questions "
                           "WHERE removed IS NULL ORDER BY row", &st);
    int src = SQLITE_DONE;
    while (!rc && (src = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t row = sqlite3_column_int64(st, 0);
        const char *id = (const char *)sqlite3_column_text(st, 1);
        const char *text = (const char *)sqlite3_column_text(st, 2);
        if (!id || !text) {
            rc = st_fail(QD_ERR_NOMEM, "out of memory");
            break;
        }
        if ((size_t)sqlite3_column_bytes(st, 3) != dim * sizeof(float)) {
            rc = st_fail(QD_ERR_FORMAT, "%s: row %" PRId64 ": stored vector has %d bytes",
                         s->db_path, row, sqlite3_column_bytes(st, 3));
            break;
        }
        st_vec_from_le(sqlite3_column_blob(st, 3), dim, x);
        fputs("{\"id\": ", out);
        rc = put_json_string(out, id, (size_t)sqlite3_column_bytes(st, 1));
        fputs(", \"text\": ", out);
        if (!rc)
            rc = put_json_string(out, text, (size_t)sqlite3_column_bytes(st, 2));
        fputs(", \"vector\": [", out);
        /* %.9g round-trips a float32 exactly. */
        for (size_t d = 0; d < dim; d++)
            fprintf(out, d ? ", %.9g" : "%.9g", (double)x[d]);
        fputs("]}\n", out);
        if (rc || ferror(out)) {
            int e = errno;
            rc = st_fail(rc == QD_ERR_NOMEM ? rc : QD_ERR_IO, "writing the export: %s",
                         rc == QD_ERR_NOMEM ? "out of memory" : strerror(e));
        }
    }
    if (!rc && src != SQLITE_DONE)
        rc = st_dbfail(s->db, s->db_path, "reading the questions");
    sqlite3_finalize(st);
    sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL);
    pthread_mutex_unlock(&s->wmu);
    qd_free(x);
    if (!rc && fflush(out) != 0) {
        int e = errno;
        rc = st_fail(QD_ERR_IO, "writing the export: %s", strerror(e));
    }
    return rc;
}
