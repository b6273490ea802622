/*
 * rescore.c - exact re-scoring for index kinds that keep only approximate vectors in
 * memory (IVF with product or scalar quantization): the store asks FAISS for the
 * `rescore` best candidates by their compressed codes, then reads those candidates'
 * float vectors from SQLite (questions.vec, the truth) and ranks them by their exact
 * cosine with the query. The vectors never live in memory, so an index of ten million
 * questions costs its codes (16-64 bytes each) rather than 512 bytes of floats.
 *
 * Searches run on many threads at once while the store's own connection belongs to
 * the writer (wmu), so the reads go through a small pool of read-only connections,
 * one per concurrent search at most, each with one prepared statement. A connection
 * reads outside any transaction, one statement at a time: every row the search found
 * live in the row table (under the read lock) was committed before it got there, and
 * its vector stays in SQLite until compact deletes it as a tombstone, which it cannot
 * be while the search holds the read lock.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "qdup/common.h"
#include "store_impl.h"

/* One read-only connection of the pool. */
struct st_reader {
    sqlite3 *db;             /* read-only connection to the store's database */
    sqlite3_stmt *vec;       /* SELECT vec FROM questions WHERE row = ?1 */
    struct st_reader *next;  /* next free one */
};

static void reader_free(st_reader *r)
{
    if (!r)
        return;
    sqlite3_finalize(r->vec);
    sqlite3_close(r->db);
    qd_free(r);
}

/* A free connection of the pool, or a new one. */
static int reader_take(qd_store *s, st_reader **out)
{
    pthread_mutex_lock(&s->rd_mu);
    st_reader *r = s->rd_free;
    if (r)
        s->rd_free = r->next;
    pthread_mutex_unlock(&s->rd_mu);
    if (r) {
        *out = r;
        return 0;
    }
    r = qd_calloc(1, sizeof *r);
    if (!r)
        return st_fail(QD_ERR_NOMEM, "out of memory for a database connection");
    int src = sqlite3_open_v2(s->rd_path, &r->db, s->rd_flags, NULL);
    if (src == SQLITE_OK)
        src = sqlite3_busy_timeout(r->db, ST_BUSY_MS);
    if (src == SQLITE_OK)
        src = sqlite3_prepare_v2(r->db, "SELECT vec FROM questions WHERE row = ?1", -1,
                                 &r->vec, NULL);
    if (src != SQLITE_OK) {
        int rc = st_fail(st_db_code(src), "%s: opening a connection for re-scoring: %s",
                         s->db_path, r->db ? sqlite3_errmsg(r->db) : sqlite3_errstr(src));
        reader_free(r);
        return rc;
    }
    *out = r;
    return 0;
}

static void reader_give(qd_store *s, st_reader *r)
{
    pthread_mutex_lock(&s->rd_mu);
    r->next = s->rd_free;
    s->rd_free = r;
    pthread_mutex_unlock(&s->rd_mu);
}

void st_readers_free(qd_store *s)
{
    while (s->rd_free) {
        st_reader *r = s->rd_free;
        s->rd_free = r->next;
        reader_free(r);
    }
}

/* A candidate while re-scoring. */
typedef struct rs_cand {
    const st_row *r;  /* the row */
    float exact;      /* its exact cosine with the query */
    size_t pos;       /* its place in FAISS's order (ties keep it) */
} rs_cand;

static int by_row_id(const void *a, const void *b)
{
    const rs_cand *x = a, *y = b;
    return (x->r->row > y->r->row) - (x->r->row < y->r->row);
}

static int by_exact(const void *a, const void *b)
{
    const rs_cand *x = a, *y = b;
    if (x->exact != y->exact)
        return x->exact < y->exact ? 1 : -1;
    return (x->pos > y->pos) - (x->pos < y->pos);
}

int st_rescore(qd_store *s, const float *q, const st_row **rows, float *cos, size_t n,
               size_t want, float min_score, size_t *nout)
{
    *nout = 0;
    if (n == 0)
        return 0;
    size_t dim = (size_t)s->dim;
    rs_cand *c = qd_mallocarray(n, sizeof *c);
    float *v = qd_mallocarray(dim, sizeof *v);
    st_reader *rd = NULL;
    int rc = (c && v) ? reader_take(s, &rd)
                      : st_fail(QD_ERR_NOMEM, "out of memory for %zu candidates", n);
    if (rc)
        goto out;
    for (size_t i = 0; i < n; i++)
        c[i] = (rs_cand){rows[i], 0, i};
    /* In row order: neighbouring rows share database pages. */
    qsort(c, n, sizeof *c, by_row_id);
    for (size_t i = 0; i < n && !rc; i++) {
        sqlite3_bind_int64(rd->vec, 1, c[i].r->row);
        int src = sqlite3_step(rd->vec);
        if (src == SQLITE_ROW) {
            const void *blob = sqlite3_column_blob(rd->vec, 0);
            size_t bytes = (size_t)sqlite3_column_bytes(rd->vec, 0);
            if (bytes != dim * sizeof(float) || !blob) {
                rc = st_fail(QD_ERR_FORMAT, "%s: row %" PRId64 ": vector of %zu bytes, "
                             "expected %zu", s->db_path, c[i].r->row, bytes,
                             dim * sizeof(float));
            } else {
                st_vec_from_le(blob, dim, v);
                double dot = 0;
                for (size_t d = 0; d < dim; d++)
                    dot += (double)q[d] * v[d];
                c[i].exact = (float)dot;
            }
        } else if (src == SQLITE_DONE) {
            rc = st_fail(QD_ERR_DB, "%s: row %" PRId64 " is live in memory but not in the "
                         "database (changed by another program?)", s->db_path, c[i].r->row);
        } else {
            rc = st_dbfail(rd->db, s->db_path, "reading a vector to re-score");
        }
        sqlite3_reset(rd->vec);
    }
    sqlite3_clear_bindings(rd->vec);
    if (rc)
        goto out;
    qsort(c, n, sizeof *c, by_exact);
    size_t m = 0;
    for (size_t i = 0; i < n && m < want && c[i].exact >= min_score; i++) {
        rows[m] = c[i].r;
        cos[m++] = c[i].exact;
    }
    *nout = m;
out:
    if (rd)
        reader_give(s, rd);
    qd_free(c);
    qd_free(v);
    return rc;
}
