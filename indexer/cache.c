/*
 * cache.c - the FAISS index as a cache of SQLite: building it from every live row's
 * stored vector, loading the checkpoint file when meta vouches for it and replaying
 * the changes after it, and writing checkpoints (the file first, then its change
 * number, CRC-32 and size in meta). Nothing here is trusted beyond what SQLite says.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include "qdup/ann.h"
#include "qdup/common.h"
#include "qdup/fileio.h"
#include "qdup/store.h"
#include "store_impl.h"

/* --- FAISS: building, replaying, checkpoints -------------------------------------------- */

/* 1 if the factory string names a kind that stores vectors exactly (Flat, HNSW over
 * flat storage), so that verify can insist on equal vectors. */
int st_spec_is_exact(const char *spec)
{
    if (strncmp(spec, "IDMap2,", 7) == 0)
        spec += 7;
    else if (strncmp(spec, "IDMap,", 6) == 0)
        spec += 6;
    if (strcmp(spec, "Flat") == 0)
        return 1;
    if (strncmp(spec, "HNSW", 4) == 0) {
        const char *p = spec + 4;
        while (*p >= '0' && *p <= '9')
            p++;
        return *p == '\0' || strcmp(p, ",Flat") == 0;
    }
    return 0;
}

/* 1 if the factory string has a fast-scan product quantizer (a component "PQ<M>x4fs"
 * or "...fsr"). FAISS 1.7.3 keeps such codes in block inverted lists, which cannot
 * remove (BlockInvertedLists::update_entries throws inside an OpenMP loop, which ends
 * the process), although removing nothing passes ann.c's probe. */
int st_spec_is_fastscan(const char *spec)
{
    for (const char *p = spec; p && *p;) {
        const char *end = strchr(p, ',');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        if (n > 4 && strncmp(p, "PQ", 2) == 0 &&
            ((n > 2 && strncmp(p + n - 2, "fs", 2) == 0) ||
             (n > 3 && strncmp(p + n - 3, "fsr", 3) == 0)))
            return 1;
        p = end ? end + 1 : NULL;
    }
    return 0;
}

int st_spec_is_compressed(const char *spec)
{
    static const char *const codes[] = {"PQ", "SQ", "RQ", "LSQ", "PRQ", "PLSQ", "LSH"};
    for (const char *p = spec; p && *p;) {
        for (size_t i = 0; i < sizeof codes / sizeof *codes; i++)
            if (strncmp(p, codes[i], strlen(codes[i])) == 0)
                return 1;
        p = strchr(p, ',');
        if (p)
            p++;
    }
    return 0;
}

int st_can_remove(const qd_store *s, const qd_ann *a)
{
    return qd_ann_can_remove(a) && !st_spec_is_fastscan(s->spec);
}

/* Adds n vectors to a, training it on them first if it needs training. */
int st_ann_add_trained(qd_ann *a, const float *x, const int64_t *ids, size_t n)
{
    if (n == 0)
        return 0;
    if (qd_ann_needs_training(a)) {
        int rc = qd_ann_train(a, x, n < ST_MAX_TRAIN ? n : ST_MAX_TRAIN);
        if (rc)
            return st_fail(rc, "training the index: %s", qd_ann_errmsg(a));
    }
    int rc = qd_ann_add(a, x, ids, n);
    if (rc)
        return st_fail(rc, "adding %zu vectors to the index: %s", n, qd_ann_errmsg(a));
    return 0;
}

/* Reads the (row, vec) pairs a prepared statement yields and adds them to a in chunks.
 * Checks each blob's size. *added (may be NULL) counts them. */
static int add_from_stmt(qd_store *s, qd_ann *a, sqlite3_stmt *st, size_t total,
                         size_t *added)
{
    size_t dim = (size_t)s->dim, n = 0, done = 0;
    float *x = qd_mallocarray((size_t)ST_CHUNK * dim, sizeof *x);
    int64_t *ids = qd_mallocarray(ST_CHUNK, sizeof *ids);
    int rc = 0, src;
    if (!x || !ids) {
        rc = st_fail(QD_ERR_NOMEM, "out of memory rebuilding the index");
        goto out;
    }
    while ((src = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t row = sqlite3_column_int64(st, 0);
        const void *blob = sqlite3_column_blob(st, 1);
        if ((size_t)sqlite3_column_bytes(st, 1) != dim * sizeof(float) || !blob) {
            rc = st_fail(QD_ERR_FORMAT, "%s: row %" PRId64 ": stored vector has %d bytes, "
                         "expected %zu", s->db_path, row, sqlite3_column_bytes(st, 1),
                         dim * sizeof(float));
            goto out;
        }
        st_vec_from_le(blob, dim, x + n * dim);
        ids[n++] = row;
        if (n == ST_CHUNK) {
            if ((rc = st_ann_add_trained(a, x, ids, n)) != 0)
                goto out;
            done += n;
            n = 0;
            st_progress(s, "rebuild", done, total);
        }
    }
    if (src != SQLITE_DONE) {
        rc = st_dbfail(s->db, s->db_path, "reading stored vectors");
        goto out;
    }
    if ((rc = st_ann_add_trained(a, x, ids, n)) != 0)
        goto out;
    done += n;
    if (total)
        st_progress(s, "rebuild", done, total);
out:
    if (added)
        *added = done;
    qd_free(x);
    qd_free(ids);
    return rc;
}

/* Trains a fresh index that needs it on up to ST_MAX_TRAIN live vectors, taken evenly
 * over the rows (the first rows alone could all be from one corner of the data). */
static int train_from_db(qd_store *s, qd_ann *a)
{
    if (!qd_ann_needs_training(a) || s->live == 0)
        return 0;
    size_t dim = (size_t)s->dim;
    uint64_t stride = s->live / ST_MAX_TRAIN + 1;
    size_t cap = (size_t)(s->live / stride + 1);
    float *x = qd_mallocarray(cap * dim, sizeof *x);
    if (!x)
        return st_fail(QD_ERR_NOMEM, "out of memory for %zu training vectors", cap);
    sqlite3_stmt *st = NULL;
    int rc = st_db_prepare(s, "SELECT vec FROM questions WHERE removed IS NULL ORDER BY row", &st);
    size_t n = 0;
    uint64_t i = 0;
    int src = SQLITE_DONE;
    while (!rc && (src = sqlite3_step(st)) == SQLITE_ROW) {
        if (i++ % stride != 0 || n == cap)
            continue;
        if ((size_t)sqlite3_column_bytes(st, 0) != dim * sizeof(float))
            continue; /* reported by the add pass */
        st_vec_from_le(sqlite3_column_blob(st, 0), dim, x + n * dim);
        n++;
    }
    if (!rc && src != SQLITE_DONE)
        rc = st_dbfail(s->db, s->db_path, "reading training vectors");
    sqlite3_finalize(st);
    if (!rc && n > 0) {
        rc = qd_ann_train(a, x, n);
        if (rc)
            rc = st_fail(rc, "training the index on %zu vectors: %s", n, qd_ann_errmsg(a));
    }
    qd_free(x);
    return rc;
}

/* A new index of the store's kind holding every live row's stored vector. */
int st_build_index(qd_store *s, qd_ann **out)
{
    char err[QD_ERRMSG_MAX];
    qd_ann *a = NULL;
    *out = NULL;
    int rc = qd_ann_new(s->dim, s->spec, &a, err, sizeof err);
    if (rc)
        return st_fail(rc, "%s: %s", s->db_path, err);
    rc = train_from_db(s, a);
    if (!rc) {
        sqlite3_stmt *st = NULL;
        rc = st_db_prepare(s, "SELECT row, vec FROM questions WHERE removed IS NULL ORDER BY row",
                        &st);
        if (!rc)
            rc = add_from_stmt(s, a, st, (size_t)s->live, NULL);
        sqlite3_finalize(st);
    }
    if (rc) {
        qd_ann_free(a);
        return rc;
    }
    *out = a;
    return 0;
}

/* Applies to a loaded index every change after change number `since`: rows added
 * since (and still live) are added, rows removed since that the file holds are
 * removed (or stay as tombstones for kinds that cannot remove). */
static int replay(qd_store *s, qd_ann *a, uint64_t since)
{
    sqlite3_stmt *st = NULL;
    int rc = st_db_prepare(s, "SELECT row, vec FROM questions "
                           "WHERE seq > ?1 AND removed IS NULL ORDER BY row",
                        &st);
    if (rc)
        return rc;
    sqlite3_bind_int64(st, 1, (int64_t)since);
    rc = add_from_stmt(s, a, st, 0, NULL);
    sqlite3_finalize(st);
    if (rc || !st_can_remove(s, a))
        return rc;
    rc = st_db_prepare(s, "SELECT row FROM questions WHERE removed_seq > ?1 AND seq <= ?1", &st);
    if (rc)
        return rc;
    sqlite3_bind_int64(st, 1, (int64_t)since);
    int64_t *ids = NULL;
    size_t n = 0, cap = 0;
    int src;
    while ((src = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 256;
            int64_t *ni = qd_reallocarray(ids, nc, sizeof *ni);
            if (!ni) {
                rc = st_fail(QD_ERR_NOMEM, "out of memory replaying removals");
                break;
            }
            ids = ni;
            cap = nc;
        }
        ids[n++] = sqlite3_column_int64(st, 0);
    }
    if (!rc && src != SQLITE_DONE)
        rc = st_dbfail(s->db, s->db_path, "reading removals");
    sqlite3_finalize(st);
    if (!rc && n > 0) {
        rc = qd_ann_remove(a, ids, n, NULL);
        if (rc)
            rc = st_fail(rc, "replaying %zu removals: %s", n, qd_ann_errmsg(a));
    }
    qd_free(ids);
    return rc;
}

/* Loads the FAISS file if meta vouches for it and replays what came after it; else
 * (or if that fails) rebuilds the index from SQLite. Sets s->faiss_note to the reason
 * the file was not used. Fails only if the rebuild fails. */
int st_load_index(qd_store *s, int64_t faiss_crc, int crc_null, int64_t faiss_size)
{
    char err[QD_ERRMSG_MAX];
    const char *path = s->faiss_path;
    s->faiss_note[0] = '\0';
    if (crc_null) {
        st_format(s->faiss_note, sizeof s->faiss_note,
                  "%s: the database records no checkpoint of it (a compaction or a crash "
                  "before its first checkpoint): rebuilt from the database", path);
    } else {
        uint32_t crc;
        uint64_t size;
        int rc = st_file_crc(path, &crc, &size);
        if (rc == QD_ERR_NOTFOUND) {
            st_format(s->faiss_note, sizeof s->faiss_note,
                      "%s is missing: rebuilt from the database", path);
        } else if (rc) {
            st_format(s->faiss_note, sizeof s->faiss_note, "%s: rebuilt from the database",
                      st_err);
        } else if ((int64_t)size != faiss_size || (int64_t)crc != faiss_crc) {
            st_format(s->faiss_note, sizeof s->faiss_note,
                      "%s (%" PRIu64 " bytes, CRC-32 %08" PRIx32 ") is not the checkpoint "
                      "the database records (%" PRId64 " bytes, CRC-32 %08" PRIx32 "): "
                      "changed or damaged since, or a crash before its record; rebuilt "
                      "from the database",
                      path, size, crc, faiss_size, (uint32_t)faiss_crc);
        } else {
            qd_ann *a = NULL;
            rc = qd_ann_load(path, &a, err, sizeof err);
            /* Running out of memory says nothing about the file: fail the open rather
             * than rebuild (which would need more memory still). */
            if (rc == QD_ERR_NOMEM)
                return st_fail(rc, "%s", err);
            if (rc) {
                st_format(s->faiss_note, sizeof s->faiss_note, "%s: rebuilt from the database",
                          err);
            } else if (qd_ann_dim(a) != s->dim) {
                st_format(s->faiss_note, sizeof s->faiss_note,
                          "%s holds vectors of dimension %d, the database %d: rebuilt", path,
                          qd_ann_dim(a), s->dim);
                qd_ann_free(a);
            } else if ((rc = replay(s, a, s->faiss_seq)) != 0) {
                qd_ann_free(a);
                if (rc == QD_ERR_NOMEM || rc == QD_ERR_DB || rc == QD_ERR_IO ||
                    rc == QD_ERR_BUSY)
                    return rc; /* the database's problem, not the file's */
                st_format(s->faiss_note, sizeof s->faiss_note, "%s: replaying onto %s: %s",
                          s->db_path, path, st_err);
            } else {
                s->ann = a;
                s->vouched = 1;
                return 0;
            }
        }
    }
    s->vouched = 0;
    return st_build_index(s, &s->ann);
}

/* Writes the FAISS file and records it in meta. Caller holds wmu. */
static int checkpoint_write(qd_store *s)
{
    char err[QD_ERRMSG_MAX];
    if (s->vouched && s->faiss_seq == s->seq)
        return 0;
    /* Saving only reads the index, so searches go on meanwhile. */
    pthread_rwlock_rdlock(&s->rw);
    int rc = qd_ann_save(s->ann, s->faiss_path, err, sizeof err);
    pthread_rwlock_unlock(&s->rw);
    if (rc)
        return st_fail(rc, "writing the index: %s", err);
    /* From here until meta records the new file, meta does not vouch for what is on
     * disk: a crash now makes the next open rebuild from SQLite. */
    s->vouched = 0;
    st_hook("checkpoint:faiss-written");
    uint32_t crc;
    uint64_t size;
    rc = st_file_crc(s->faiss_path, &crc, &size);
    if (rc)
        return rc;
    if (sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        return st_dbfail(s->db, s->db_path, "starting a transaction");
    rc = st_meta_set(s, "faiss_seq", 'i', (int64_t)s->seq, NULL, 0);
    if (!rc)
        rc = st_meta_set(s, "faiss_crc", 'i', (int64_t)crc, NULL, 0);
    if (!rc)
        rc = st_meta_set(s, "faiss_size", 'i', (int64_t)size, NULL, 0);
    if (!rc && sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        rc = st_dbfail(s->db, s->db_path, "recording the checkpoint");
    if (rc) {
        st_db_rollback(s);
        return rc;
    }
    s->vouched = 1;
    /* Under the write lock because qd_store_get_info reads these under the read lock. */
    pthread_rwlock_wrlock(&s->rw);
    s->faiss_seq = s->seq;
    s->faiss_note[0] = '\0'; /* whatever was wrong with the file at open is repaired */
    pthread_rwlock_unlock(&s->rw);
    return 0;
}

/* checkpoint_write, remembering whether it failed: a failed checkpoint leaves the store
 * serving from memory (the database has every change), and the state is reported. */
int st_checkpoint_locked(qd_store *s)
{
    int rc = checkpoint_write(s);
    pthread_rwlock_wrlock(&s->rw);
    s->ckpt_failing = rc != 0;
    if (rc) {
        s->ckpt_failures++;
        st_format(s->ckpt_error, sizeof s->ckpt_error, "%s", st_err);
    } else {
        s->ckpt_error[0] = '\0';
    }
    pthread_rwlock_unlock(&s->rw);
    return rc;
}

int qd_store_checkpoint(qd_store *s)
{
    st_enter();
    if (s->readonly)
        return st_fail(QD_ERR_FORBIDDEN, "%s: opened read-only", s->db_path);
    pthread_mutex_lock(&s->wmu);
    int rc = s->broken ? st_fail(QD_ERR_INDEX, "%s", s->broken_msg) : st_checkpoint_locked(s);
    pthread_mutex_unlock(&s->wmu);
    return rc;
}
