/*
 * reembed.c - switching a store to another model without stopping its writer: the
 * staging of the new vectors, the switch, and the re-encoding check.
 *
 * Staging runs in its own process (qdup-index reembed) on a connection of its own,
 * without the writer lock, beside a daemon that keeps adding and removing: it reads
 * the questions in row order a chunk at a time, encodes them with the new model and
 * writes the vectors into the staging table `reembed` (schema.sql) in one short
 * transaction per chunk. meta reembed_fingerprint names the model being staged; each
 * chunk's transaction checks it is still ours before writing, so two stagings of
 * different models never mix vectors in the table. Rows are never rewritten (row ids
 * are not reused and a row's text never changes), so a staged vector stays right
 * for its row whatever the writer does meanwhile; rows added after staging read past
 * them are encoded by the switch, and rows compacted away leave staged vectors that
 * the switch ignores. A killed staging resumes after its highest staged row.
 *
 * The switch runs in the process holding the writer lock, under the writer mutex, so
 * no change can slip in: one transaction encodes the rows still without a staged
 * vector, copies every staged vector into questions.vec, records the new model in
 * meta, unvouches the FAISS file (faiss_crc NULL) and drops the staging; an index
 * built from the new vectors inside that transaction is ready before the commit.
 * Then, once the pin lock is ours (every caller that encoded with the old model has
 * finished: qd_store_pin), the new model and index are swapped in under the read-write
 * lock, and a checkpoint writes the new FAISS file. For a compressed kind, whose
 * searches read vectors from SQLite, the pin lock is taken before the commit instead,
 * so that no search of the old model runs past it. A kill before the commit
 * leaves the old model in force with its staging (the next reembed resumes it); a
 * kill after the commit leaves the new model in force with a FAISS file meta does not
 * vouch for, which the next open rebuilds from the database.
 */
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include "qdup/common.h"
#include "qdup/model.h"
#include "qdup/store.h"
#include "store_impl.h"

/* Rows encoded and written per staging transaction: short enough that a daemon's
 * write waits at most a few milliseconds for it. */
#define RE_CHUNK 1024
/* Largest difference of one component between a stored vector and its re-encoding
 * that still counts as the same model (float rounding of batched encoding). */
#define RE_TOL 1e-4f

static const char create_sql[] =
    "CREATE TABLE IF NOT EXISTS reembed (row INTEGER PRIMARY KEY, vec BLOB NOT NULL)";

/* One integer from a query without parameters. */
static int query_int(qd_store *s, const char *sql, int64_t *v)
{
    sqlite3_stmt *st = NULL;
    int rc = st_db_prepare(s, sql, &st);
    if (rc)
        return rc;
    int src = sqlite3_step(st);
    if (src == SQLITE_ROW)
        *v = sqlite3_column_int64(st, 0);
    else
        rc = st_dbfail(s->db, s->db_path, sql);
    sqlite3_finalize(st);
    return rc;
}

static int begin(qd_store *s)
{
    if (sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        return st_dbfail(s->db, s->db_path, "starting a transaction");
    return 0;
}

static int commit(qd_store *s, const char *what)
{
    if (sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        return st_dbfail(s->db, s->db_path, what);
    return 0;
}

/* The staging's meta values into *out (staged 0 and the rest empty when there is
 * none). Inside a transaction or not. */
static int read_status(qd_store *s, qd_store_staged *out)
{
    memset(out, 0, sizeof *out);
    int type, rc = st_db_has_table(s, "reembed");
    if (rc <= 0)
        return rc;
    char ref[ST_PATH_MAX];
    int64_t complete = 0, rows = 0, total = 0;
    rc = st_meta_get(s, "reembed_fingerprint", &type, NULL, out->fingerprint,
                     sizeof out->fingerprint);
    if (rc || type != SQLITE_TEXT)
        return rc;
    if ((rc = st_meta_get(s, "reembed_model_path", &type, NULL, ref, sizeof ref)) != 0 ||
        (rc = st_meta_get(s, "reembed_complete", &type, &complete, NULL, 0)) != 0 ||
        (rc = query_int(s, "SELECT count(*) FROM reembed", &rows)) != 0 ||
        (rc = query_int(s, "SELECT count(*) FROM questions", &total)) != 0)
        return rc;
    char file[2 * ST_PATH_MAX];
    st_model_resolve(s->db_path, ref, file, sizeof file);
    st_format(out->model_path, sizeof out->model_path, "%s", file);
    out->staged = 1;
    out->complete = complete == 1;
    out->rows = (uint64_t)rows;
    out->total = (uint64_t)total;
    return 0;
}

/* Fails with QD_ERR_BUSY unless meta still names fp as the model being staged. */
static int still_ours(qd_store *s, const char *fp)
{
    char cur[17] = "";
    int type, rc = st_meta_get(s, "reembed_fingerprint", &type, NULL, cur, sizeof cur);
    if (rc)
        return rc;
    if (type != SQLITE_TEXT || strcmp(cur, fp) != 0)
        return st_fail(QD_ERR_BUSY, "%s: the staging was taken over meanwhile (%s): by a "
                       "switch, or a reembed with another model", s->db_path,
                       type == SQLITE_TEXT ? cur : "none any more");
    return 0;
}

/* Reads up to cap rows (row, text) from st, a query of questions. texts[i] are copies.
 * With vec not NULL, column 2 too: the stored vector (dim floats) into vec + i * dim,
 * NaN where its size is wrong (verify names those; here it matches nothing). */
static int read_rows(qd_store *s, sqlite3_stmt *st, int64_t *rows, char **texts,
                     size_t *lens, float *vec, size_t dim, size_t cap, size_t *n)
{
    int src = SQLITE_DONE;
    *n = 0;
    while (*n < cap && (src = sqlite3_step(st)) == SQLITE_ROW) {
        const unsigned char *t = sqlite3_column_text(st, 1);
        size_t len = (size_t)sqlite3_column_bytes(st, 1);
        char *copy = qd_malloc(len + 1);
        if (!copy)
            return st_fail(QD_ERR_NOMEM, "out of memory reading questions");
        memcpy(copy, t ? (const char *)t : "", len);
        copy[len] = '\0';
        rows[*n] = sqlite3_column_int64(st, 0);
        texts[*n] = copy;
        lens[*n] = len;
        if (vec && (size_t)sqlite3_column_bytes(st, 2) == dim * sizeof(float))
            st_vec_from_le(sqlite3_column_blob(st, 2), dim, vec + *n * dim);
        else if (vec)
            for (size_t j = 0; j < dim; j++)
                vec[*n * dim + j] = NAN;
        (*n)++;
    }
    if (*n < cap && src != SQLITE_DONE)
        return st_dbfail(s->db, s->db_path, "reading questions");
    return 0;
}

/* Encodes n texts (rows rows[0..n)) with m into vec. */
static int encode_rows(qd_store *s, const qd_model *m, int threads, const int64_t *rows,
                       char *const *texts, const size_t *lens, size_t n, float *vec)
{
    int rc = qd_enc_texts_parallel(m, (const char *const *)texts, lens, n, threads, 256, NULL,
                                   NULL, vec);
    if (rc)
        return st_fail(rc, "%s: encoding rows %" PRId64 "..%" PRId64 " with the new model: %s",
                       s->db_path, rows[0], rows[n - 1], qd_strerror(rc));
    return 0;
}

/* Writes (row, vector) pairs into the staging table. Caller holds a write
 * transaction. */
static int insert_staged(qd_store *s, const int64_t *rows, size_t n, const float *vec,
                         unsigned char *blob)
{
    size_t dim = (size_t)s->dim;
    sqlite3_stmt *st = NULL;
    int rc = st_db_prepare(s, "INSERT OR REPLACE INTO reembed (row, vec) VALUES (?1, ?2)", &st);
    for (size_t i = 0; i < n && !rc; i++) {
        st_vec_to_le(vec + i * dim, dim, blob);
        sqlite3_bind_int64(st, 1, rows[i]);
        sqlite3_bind_blob(st, 2, blob, (int)(dim * sizeof(float)), SQLITE_STATIC);
        rc = st_db_run(s, st);
    }
    sqlite3_finalize(st);
    return rc;
}

static void free_texts(char **texts, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        qd_free(texts[i]);
        texts[i] = NULL;
    }
}

/* Room for cap rows of a staging pass. */
typedef struct batch {
    int64_t *rows;       /* (cap) row ids */
    char **texts;        /* (cap) their texts, owned */
    size_t *lens;        /* (cap) their lengths */
    float *vec;          /* (cap, dim) the new vectors */
    unsigned char *blob; /* (dim * 4) one vector as stored */
    size_t cap;          /* rows of room */
} batch;

static void batch_free(batch *b)
{
    if (b->texts)
        free_texts(b->texts, b->cap);
    qd_free(b->rows);
    qd_free(b->texts);
    qd_free(b->lens);
    qd_free(b->vec);
    qd_free(b->blob);
    memset(b, 0, sizeof *b);
}

static int batch_new(batch *b, size_t cap, size_t dim)
{
    memset(b, 0, sizeof *b);
    b->cap = cap ? cap : 1;
    b->rows = qd_mallocarray(b->cap, sizeof *b->rows);
    b->texts = qd_calloc(b->cap, sizeof *b->texts);
    b->lens = qd_mallocarray(b->cap, sizeof *b->lens);
    b->vec = qd_mallocarray(b->cap * dim, sizeof *b->vec);
    b->blob = qd_malloc(dim * sizeof(float));
    if (!b->rows || !b->texts || !b->lens || !b->vec || !b->blob) {
        batch_free(b);
        return st_fail(QD_ERR_NOMEM, "out of memory for %zu questions", cap);
    }
    return 0;
}

/* Starts or resumes the staging of m (absolute path abs) in s: creates the table,
 * and empties it if it held another model's vectors. QD_ERR_EXISTS if the store uses
 * m already: read in the transaction, as a switch to m may have committed since the
 * caller looked. */
static int stage_begin(qd_store *s, const qd_model *m, const char *abs)
{
    const char *fp = qd_model_fingerprint(m);
    char cur[17] = "", ref[ST_PATH_MAX];
    int type, rc = begin(s);
    if (rc)
        return rc;
    rc = st_meta_text(s, "model_fingerprint", s->fingerprint, sizeof s->fingerprint);
    if (!rc && strcmp(fp, s->fingerprint) == 0)
        rc = st_fail(QD_ERR_EXISTS, "%s already uses model %s (fingerprint %s)", s->db_path,
                     abs, fp);
    if (!rc)
        rc = st_db_exec(s, create_sql);
    if (!rc)
        rc = st_meta_get(s, "reembed_fingerprint", &type, NULL, cur, sizeof cur);
    if (!rc && (type != SQLITE_TEXT || strcmp(cur, fp) != 0)) {
        rc = st_db_exec(s, "DELETE FROM reembed");
        if (!rc)
            rc = st_meta_set(s, "reembed_fingerprint", 't', 0, fp, 0);
    }
    st_model_ref(s->db_path, abs, ref, sizeof ref);
    if (!rc)
        rc = st_meta_set(s, "reembed_model_path", 't', 0, ref, 0);
    if (!rc)
        rc = st_meta_set(s, "reembed_complete", 'i', 0, NULL, 0);
    if (!rc)
        rc = commit(s, "starting the staging");
    if (rc)
        st_db_rollback(s);
    return rc;
}

/* The staging pass: every row after the highest staged one, a chunk per transaction,
 * then the mark that it is complete. */
static int stage_all(qd_store *s, const qd_model *m, int threads, qd_store_staged *out)
{
    const char *fp = qd_model_fingerprint(m);
    int64_t last = 0, done = 0, total = 0;
    int rc = query_int(s, "SELECT coalesce(max(row), 0) FROM reembed", &last);
    if (!rc)
        rc = query_int(s, "SELECT count(*) FROM reembed", &done);
    if (!rc)
        rc = query_int(s, "SELECT count(*) FROM questions", &total);
    if (rc)
        return rc;
    batch b;
    if ((rc = batch_new(&b, RE_CHUNK, (size_t)s->dim)) != 0)
        return rc;
    sqlite3_stmt *sel = NULL;
    rc = st_db_prepare(s, "SELECT row, text FROM questions WHERE row > ?1 ORDER BY row "
                       "LIMIT ?2", &sel);
    st_progress(s, "reembed", (size_t)done, (size_t)total);
    while (!rc) {
        size_t n = 0;
        sqlite3_bind_int64(sel, 1, last);
        sqlite3_bind_int64(sel, 2, RE_CHUNK);
        rc = read_rows(s, sel, b.rows, b.texts, b.lens, NULL, 0, b.cap, &n);
        sqlite3_reset(sel); /* ends the read, so the write below can start */
        if (rc || n == 0)
            break;
        /* Encoded before the transaction, so that a serving daemon's writes wait only
         * for the inserts. */
        if ((rc = encode_rows(s, m, threads, b.rows, b.texts, b.lens, n, b.vec)) != 0)
            break;
        if (!(rc = begin(s)) && !(rc = still_ours(s, fp)) &&
            !(rc = insert_staged(s, b.rows, n, b.vec, b.blob)))
            rc = commit(s, "writing staged vectors");
        if (rc) {
            st_db_rollback(s);
            break;
        }
        free_texts(b.texts, n);
        last = b.rows[n - 1];
        done += (int64_t)n;
        if (done > total)
            total = done; /* rows added meanwhile */
        st_progress(s, "reembed", (size_t)done, (size_t)total);
        st_hook("reembed:chunk");
    }
    sqlite3_finalize(sel);
    batch_free(&b);
    if (!rc && !(rc = begin(s)) && !(rc = still_ours(s, fp)) &&
        !(rc = st_meta_set(s, "reembed_complete", 'i', 1, NULL, 0)))
        rc = commit(s, "finishing the staging");
    if (rc) {
        st_db_rollback(s);
        return rc;
    }
    return read_status(s, out);
}

int qd_store_reembed_stage(const char *db_path, const char *model_path, int threads,
                           void (*progress)(const char *phase, size_t done, size_t total,
                                            void *arg),
                           void *arg, qd_store_staged *out, char *err, size_t errlen)
{
    st_enter();
    double t0 = qd_now();
    qd_store_staged dummy;
    if (!out)
        out = &dummy;
    memset(out, 0, sizeof *out);
    qd_store_opts o = {.threads = threads};
    qd_store *s = NULL;
    qd_model *m = NULL;
    char abs[ST_PATH_MAX];
    int rc = qd_store_probe(db_path, err, errlen);
    if (rc)
        return rc;
    if ((rc = st_new(db_path, &o, &s, err, errlen)) != 0)
        return rc;
    qd_store_set_progress(s, progress, arg);
    /* The new model first: a bad file is reported before anything is written. */
    if ((rc = st_load_model_at(model_path, &m, abs, err, errlen)) != 0)
        goto out;
    int src = sqlite3_open_v2(db_path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX,
                              NULL);
    if (src != SQLITE_OK) {
        rc = st_fail(st_db_code(src), "%s: %s", db_path,
                     s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(src));
        goto fail_st;
    }
    int64_t dim = 0, version = 0;
    if ((rc = st_db_check_ours(s->db, db_path)) != 0 || (rc = st_db_configure(s)) != 0 ||
        (rc = st_meta_int(s, "schema_version", &version)) != 0 ||
        (rc = st_meta_int(s, "dim", &dim)) != 0)
        goto fail_st;
    if (version > QD_STORE_SCHEMA_VERSION) {
        rc = st_fail(QD_ERR_VERSION, "%s: schema version %" PRId64 " is newer than this "
                     "program's (%d)", db_path, version, QD_STORE_SCHEMA_VERSION);
        goto fail_st;
    }
    if (dim != qd_model_dim(m)) {
        rc = st_fail(QD_ERR_MISMATCH, "model %s has dimension %d, the vectors of %s have "
                     "%" PRId64 ": a store keeps its dimension", abs, qd_model_dim(m),
                     db_path, dim);
        goto fail_st;
    }
    s->dim = (int)dim;
    st_hook("reembed:begin");
    if ((rc = stage_begin(s, m, abs)) != 0 || (rc = stage_all(s, m, threads, out)) != 0)
        goto fail_st;
    out->seconds = qd_now() - t0;
    goto out;
fail_st:
    qd_errf(err, errlen, rc, "%s", st_err);
out:
    qd_model_free(m);
    st_free(s);
    return rc;
}

int qd_store_reembed_status(qd_store *s, qd_store_staged *out)
{
    st_enter();
    pthread_mutex_lock(&s->wmu);
    int rc = read_status(s, out);
    pthread_mutex_unlock(&s->wmu);
    return rc;
}

/* Gives every row without a staged vector one (encoding it with m), then copies the
 * staged vectors into questions and records m as the store's model. Caller holds the
 * switch's transaction. */
static int switch_rows(qd_store *s, const qd_model *m, const char *abs)
{
    sqlite3_stmt *sel = NULL;
    int rc = st_db_prepare(s, "SELECT q.row, q.text FROM questions q WHERE NOT EXISTS "
                           "(SELECT 1 FROM reembed r WHERE r.row = q.row) ORDER BY q.row",
                           &sel);
    if (rc)
        return rc;
    batch b;
    if ((rc = batch_new(&b, RE_CHUNK, (size_t)s->dim)) != 0) {
        sqlite3_finalize(sel);
        return rc;
    }
    /* Read everything missing first: inserting while the SELECT walks would change
     * what it walks. Usually a few rows (added during staging). */
    int64_t *rows = NULL;
    char **texts = NULL;
    size_t *lens = NULL, n = 0, cap = 0, got;
    do {
        if (n + RE_CHUNK > cap) {
            size_t nc = cap ? cap * 2 : RE_CHUNK;
            int64_t *nr = qd_reallocarray(rows, nc, sizeof *nr);
            if (nr)
                rows = nr;
            char **nt = qd_reallocarray(texts, nc, sizeof *nt);
            if (nt)
                texts = nt;
            size_t *nl = qd_reallocarray(lens, nc, sizeof *nl);
            if (nl)
                lens = nl;
            if (!nr || !nt || !nl) {
                rc = st_fail(QD_ERR_NOMEM, "out of memory for %zu questions", nc);
                break;
            }
            cap = nc;
        }
        rc = read_rows(s, sel, rows + n, texts + n, lens + n, NULL, 0, RE_CHUNK, &got);
        n += got;
    } while (!rc && got == RE_CHUNK);
    sqlite3_finalize(sel);
    for (size_t i = 0; i < n && !rc; i += RE_CHUNK) {
        size_t c = n - i < RE_CHUNK ? n - i : RE_CHUNK;
        rc = encode_rows(s, m, s->threads, rows + i, texts + i, lens + i, c, b.vec);
        if (!rc)
            rc = insert_staged(s, rows + i, c, b.vec, b.blob);
    }
    if (texts)
        free_texts(texts, n);
    qd_free(rows);
    qd_free(texts);
    qd_free(lens);
    batch_free(&b);
    if (rc)
        return rc;
    char ref[ST_PATH_MAX];
    st_model_ref(s->db_path, abs, ref, sizeof ref);
    rc = st_db_exec(s, "UPDATE questions SET vec = (SELECT r.vec FROM reembed r "
                       "WHERE r.row = questions.row)");
    if (!rc)
        rc = st_meta_set(s, "model_fingerprint", 't', 0, qd_model_fingerprint(m), 0);
    if (!rc)
        rc = st_meta_set(s, "model_path", 't', 0, ref, 0);
    /* The FAISS file holds the old vectors: no longer vouched for until the checkpoint
     * after the swap, so a kill in between makes the next open rebuild it. */
    if (!rc)
        rc = st_meta_set(s, "faiss_crc", 'n', 0, NULL, 0);
    if (!rc)
        rc = st_meta_set(s, "faiss_size", 'n', 0, NULL, 0);
    if (!rc)
        rc = st_db_exec(s, "DELETE FROM meta WHERE key IN ('reembed_fingerprint', "
                           "'reembed_model_path', 'reembed_complete'); DROP TABLE reembed");
    return rc;
}

int qd_store_reembed_switch(qd_store *s, char *old_fp, char *new_fp)
{
    st_enter();
    if (s->readonly)
        return st_fail(QD_ERR_FORBIDDEN, "%s: opened read-only", s->db_path);
    char err[QD_ERRMSG_MAX], abs[ST_PATH_MAX];
    qd_model *m = NULL;
    qd_ann *a = NULL;
    qd_store_staged sg;
    pthread_mutex_lock(&s->wmu);
    int rc = s->broken ? st_fail(QD_ERR_INDEX, "%s", s->broken_msg) : read_status(s, &sg);
    if (rc)
        goto out;
    if (!sg.staged) {
        rc = st_fail(QD_ERR_NOTFOUND, "%s: no model is staged (run qdup-index reembed)",
                     s->db_path);
        goto out;
    }
    if (!sg.complete) {
        rc = st_fail(QD_ERR_BUSY, "%s: the staging of model %s is not finished (%" PRIu64
                     " of %" PRIu64 " questions): a reembed is running, or was stopped (run "
                     "it again)", s->db_path, sg.fingerprint, sg.rows, sg.total);
        goto out;
    }
    if ((rc = st_load_model_at(sg.model_path, &m, abs, err, sizeof err)) != 0) {
        rc = st_fail(rc, "%s: the staged model cannot be loaded: %s", s->db_path, err);
        goto out;
    }
    if (strcmp(qd_model_fingerprint(m), sg.fingerprint) != 0 || qd_model_dim(m) != s->dim) {
        rc = st_fail(QD_ERR_MISMATCH, "%s: model %s (fingerprint %s) is not the one staged "
                     "(%s): it changed since; run qdup-index reembed again", s->db_path, abs,
                     qd_model_fingerprint(m), sg.fingerprint);
        goto out;
    }
    if ((rc = begin(s)) != 0)
        goto out;
    /* Checked again inside the transaction: a reembed of another model may have
     * taken the staging over between the status read and here. */
    if (!(rc = still_ours(s, sg.fingerprint)) && !(rc = switch_rows(s, m, abs)) &&
        !(rc = st_build_index(s, &a)))
        rc = st_apply_params(s, a);
    st_hook("reembed:before-commit");
    /* Every caller that encoded with the old model has finished with it once the pin
     * lock is ours, and none pins again until the swap. A search of a compressed kind
     * re-scores from the vectors in SQLite and must read its own model's there, so for
     * such a store the commit waits for the pins (queries wait the commit, hundreds of
     * milliseconds for a large store); other kinds search memory only, and go on
     * while the commit runs. */
    int pin_first = s->compressed;
    if (!rc) {
        st_hook("reembed:pins");
        if (pin_first)
            pthread_rwlock_wrlock(&s->pin);
        if ((rc = commit(s, "switching the model")) != 0 && pin_first)
            pthread_rwlock_unlock(&s->pin);
    }
    if (rc) {
        st_db_rollback(s);
        goto out;
    }
    st_hook("reembed:committed");
    if (old_fp)
        memcpy(old_fp, s->fingerprint, 17);
    if (!pin_first)
        pthread_rwlock_wrlock(&s->pin);
    pthread_rwlock_wrlock(&s->rw);
    qd_ann *old_ann = s->ann;
    s->ann = a;
    a = NULL;
    qd_model *old_model = s->model;
    s->model = m;
    m = old_model; /* freed below: no pin holds it any more, and searches see s->model
                      only under rw */
    snprintf(s->fingerprint, sizeof s->fingerprint, "%s", qd_model_fingerprint(s->model));
    snprintf(s->model_path, sizeof s->model_path, "%s", abs);
    s->vouched = 0;
    s->faiss_note[0] = '\0';
    pthread_rwlock_unlock(&s->rw);
    pthread_rwlock_unlock(&s->pin);
    qd_ann_free(old_ann);
    if (new_fp)
        memcpy(new_fp, s->fingerprint, 17);
    /* A failed checkpoint loses nothing (the next open rebuilds); it is reported. */
    st_checkpoint_locked(s);
out:
    pthread_mutex_unlock(&s->wmu);
    qd_ann_free(a);
    qd_model_free(m);
    return rc;
}

const qd_model *qd_store_pin(qd_store *s)
{
    pthread_rwlock_rdlock(&s->pin);
    return s->model;
}

void qd_store_unpin(qd_store *s)
{
    pthread_rwlock_unlock(&s->pin);
}

int qd_store_check_vectors(qd_store *s, FILE *report, size_t max_report, uint64_t *problems)
{
    st_enter();
    uint64_t bad = 0;
    size_t dim = (size_t)s->dim;
    batch b;
    float *stored = qd_mallocarray((size_t)RE_CHUNK * dim, sizeof *stored);
    int rc = stored ? batch_new(&b, RE_CHUNK, dim)
                    : st_fail(QD_ERR_NOMEM, "out of memory");
    if (rc) {
        qd_free(stored);
        return rc;
    }
    pthread_mutex_lock(&s->wmu);
    sqlite3_stmt *st = NULL;
    rc = st_db_prepare(s, "SELECT row, text, vec FROM questions ORDER BY row", &st);
    if (!rc && sqlite3_exec(s->db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK)
        rc = st_dbfail(s->db, s->db_path, "starting a transaction");
    for (size_t n = RE_CHUNK; !rc && n == RE_CHUNK;) {
        rc = read_rows(s, st, b.rows, b.texts, b.lens, stored, dim, RE_CHUNK, &n);
        if (!rc && n > 0) {
            rc = qd_enc_texts_parallel(s->model, (const char *const *)b.texts, b.lens, n,
                                       s->threads, 256, NULL, NULL, b.vec);
            if (rc)
                rc = st_fail(rc, "%s: encoding rows %" PRId64 "..%" PRId64 ": %s", s->db_path,
                             b.rows[0], b.rows[n - 1], qd_strerror(rc));
        }
        for (size_t i = 0; i < n && !rc; i++) {
            float worst = 0;
            for (size_t j = 0; j < dim; j++) {
                float d = fabsf(b.vec[i * dim + j] - stored[i * dim + j]);
                if (!(d <= worst))
                    worst = isnan(d) ? INFINITY : d;
            }
            if (worst > RE_TOL && bad++ < max_report && report)
                fprintf(report, "row %" PRId64 ": stored vector is not the encoding of its "
                        "text by model %s (largest difference %g)\n", b.rows[i],
                        s->fingerprint, (double)worst);
        }
        free_texts(b.texts, n);
    }
    sqlite3_finalize(st);
    sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL); /* ends the read */
    pthread_mutex_unlock(&s->wmu);
    batch_free(&b);
    qd_free(stored);
    if (problems)
        *problems = bad;
    return rc ? rc : bad ? QD_ERR_MISMATCH : 0;
}
