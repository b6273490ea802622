/*
 * write.c - the store's write path: add (classify against the row table, gather
 * the caller's vectors, one SQLite transaction, then apply to memory), remove,
 * compact and search parameters. Every change follows the four steps of store.c's
 * design note under the writer mutex: decide reading memory only, allocate, commit,
 * apply under the write lock. A failure after the commit (FAISS out of memory) marks
 * the store broken.
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
#include "qdup/store.h"
#include "store_impl.h"

/* --- adding ------------------------------------------------------------------------- */

/* One item of a batch add as the writer sees it. */
typedef struct add_plan {
    st_row *r;        /* the new row (to be stored), or NULL */
    st_row *old;      /* the live row it replaces, or NULL */
    size_t vec_index; /* its row in the batch's vector array */
    const qd_lex_doc *doc; /* the new row's terms (the batch's), for the statistics */
    qd_lex_doc old_doc;    /* the replaced row's terms (owned), made before the commit */
} add_plan;

/* Until its INSERT, a new row's id field holds -(item index + 2), so that a
 * duplicate within the batch can name the item it collided with. */
static int64_t batch_mark(size_t i) { return -(int64_t)i - 2; }
static int is_batch_mark(int64_t row) { return row <= -2; }
static size_t batch_item(int64_t row) { return (size_t)(-(row + 2)); }

/* Classifies the items (filling res) and makes the rows to store (plan[i].r, which
 * the caller frees if it does not store them). Live rows to be replaced get
 * ROW_REPLACING, which the caller clears. The batch maps find duplicates within the
 * batch: the first item with an id or a text that is stored claims it. Caller holds
 * wmu. */
static int classify(qd_store *s, const qd_store_item *items, size_t n, int flags,
                    const uint64_t *keys, const qd_lex_doc *docs, qd_store_result *res,
                    add_plan *plan, size_t *nstore, size_t *nreplace)
{
    st_map bid = {.key = KEY_EXT}, btext = {.key = KEY_TEXT};
    int rc, replace = flags & QD_STORE_REPLACE;
    *nstore = *nreplace = 0;
    if ((rc = st_map_reserve(&bid, n, NULL)) != 0 || (rc = st_map_reserve(&btext, n, NULL)) != 0)
        goto out;
    double now = qd_wall_now();
    for (size_t i = 0; i < n; i++) {
        const qd_store_item *it = &items[i];
        res[i] = (qd_store_result){QD_STORE_ADDED, -1, -1};
        plan[i] = (add_plan){0};
        if (keys[i] == 0) {
            res[i].status = QD_STORE_EMPTY;
            continue;
        }
        st_row *b = st_map_get_ext(&bid, it->ext_id, it->ext_id_len);
        if (b) {
            res[i] = (qd_store_result){QD_STORE_DUP_ID, -1, b->row};
            continue;
        }
        st_row *old = st_map_get_ext(&s->by_ext, it->ext_id, it->ext_id_len);
        if (old && !replace) {
            res[i] = (qd_store_result){QD_STORE_DUP_ID, -1, old->row};
            continue;
        }
        st_row *t = st_map_get_text(&btext, keys[i]);
        if (!t) {
            /* A live row with this text does not count if this item or an earlier one
             * replaces it. */
            t = st_map_get_text(&s->by_text, keys[i]);
            if (t && (t == old || (t->flags & ROW_REPLACING)))
                t = NULL;
        }
        if (t && !(flags & QD_STORE_REPOSTS)) {
            res[i] = (qd_store_result){QD_STORE_DUP_TEXT, -1, t->row};
            continue;
        }
        if (t)
            res[i] = (qd_store_result){QD_STORE_REPOST, -1, t->row};
        st_row *r = st_row_new(batch_mark(i), it->ext_id, it->ext_id_len, it->text,
                               it->text_len, keys[i], s->keep_terms ? &docs[i] : NULL, now, 0);
        if (!r) {
            rc = st_fail(QD_ERR_NOMEM, "out of memory for %zu new rows", n);
            goto out;
        }
        plan[i].r = r;
        plan[i].doc = &docs[i];
        st_map_put(&bid, r);
        if (!t)
            st_map_put(&btext, r);
        if (old) {
            old->flags |= ROW_REPLACING;
            plan[i].old = old;
            res[i].status = QD_STORE_REPLACED;
            (*nreplace)++;
        }
        plan[i].vec_index = (*nstore)++;
    }
out:
    st_map_free(&bid);
    st_map_free(&btext);
    return rc;
}

/* The vectors of the rows to store as one (nstore, dim) array, in plan order. When
 * the caller's vectors already lie so (qdup-index encodes the stored items into one
 * array), that array is used as is: *x points into it and *own is NULL; else they
 * are copied into *own, which the caller frees. QD_ERR_INVAL if a row to store came
 * without a vector: the store takes vectors, it does not encode (ingest.h does). */
static int plan_vectors(qd_store *s, const qd_store_item *items, size_t n,
                        const add_plan *plan, size_t nstore, const float **x, float **own)
{
    size_t dim = (size_t)s->dim;
    const float *base = NULL;
    int direct = 1;
    *x = NULL;
    *own = NULL;
    for (size_t i = 0; i < n; i++) {
        if (!plan[i].r)
            continue;
        if (!items[i].vec)
            return st_fail(QD_ERR_INVAL, "item %zu: no vector (encode it first)", i);
        if (!base)
            base = items[i].vec; /* the first row to store has vec_index 0 */
        /* Compared as addresses: base + k * dim need not point into any array. */
        direct &= (uintptr_t)items[i].vec ==
                  (uintptr_t)base + plan[i].vec_index * dim * sizeof *base;
    }
    if (direct) {
        *x = base;
        return 0;
    }
    *own = qd_mallocarray(nstore * dim, sizeof **own);
    if (!*own)
        return st_fail(QD_ERR_NOMEM, "out of memory for %zu vectors", nstore);
    for (size_t i = 0; i < n; i++)
        if (plan[i].r)
            memcpy(*own + plan[i].vec_index * dim, items[i].vec, dim * sizeof **own);
    *x = *own;
    return 0;
}

/* Inserts the planned rows and marks the replaced ones removed, in one transaction
 * that takes change number seq. Sets each new row's id. */
static int write_add(qd_store *s, const qd_store_item *items, size_t n, add_plan *plan,
                     const float *x, uint64_t seq, double now)
{
    sqlite3_stmt *ins = NULL, *rem = NULL;
    size_t dim = (size_t)s->dim;
    unsigned char *blob = qd_malloc(dim * sizeof(float));
    int rc = 0;
    if (!blob)
        return st_fail(QD_ERR_NOMEM, "out of memory");
    if (sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
        rc = st_dbfail(s->db, s->db_path, "starting a transaction");
        goto out;
    }
    if ((rc = st_db_prepare(s, "UPDATE questions SET removed = ?1, removed_seq = ?2 "
                            "WHERE row = ?3 AND removed IS NULL", &rem)) != 0 ||
        (rc = st_db_prepare(s, "INSERT INTO questions (ext_id, text, text_key, vec, created, "
                            "seq) VALUES (?1, ?2, ?3, ?4, ?5, ?6)", &ins)) != 0)
        goto out;
    for (size_t i = 0; i < n && !rc; i++) {
        if (!plan[i].old)
            continue;
        sqlite3_bind_double(rem, 1, now);
        sqlite3_bind_int64(rem, 2, (int64_t)seq);
        sqlite3_bind_int64(rem, 3, plan[i].old->row);
        rc = st_db_run(s, rem);
        if (!rc && sqlite3_changes(s->db) != 1)
            rc = st_fail(QD_ERR_DB, "%s: row %" PRId64 " is no longer live in the database "
                         "(changed by another program?)", s->db_path, plan[i].old->row);
    }
    for (size_t i = 0; i < n && !rc; i++) {
        st_row *r = plan[i].r;
        if (!r)
            continue;
        st_vec_to_le(x + plan[i].vec_index * dim, dim, blob);
        sqlite3_bind_text(ins, 1, items[i].ext_id, (int)items[i].ext_id_len, SQLITE_STATIC);
        sqlite3_bind_text(ins, 2, items[i].text, (int)items[i].text_len, SQLITE_STATIC);
        sqlite3_bind_int64(ins, 3, (int64_t)r->text_key);
        sqlite3_bind_blob(ins, 4, blob, (int)(dim * sizeof(float)), SQLITE_STATIC);
        sqlite3_bind_double(ins, 5, r->created);
        sqlite3_bind_int64(ins, 6, (int64_t)seq);
        rc = st_db_run(s, ins);
        if (!rc)
            r->row = sqlite3_last_insert_rowid(s->db);
    }
    if (!rc)
        rc = st_meta_set(s, "seq", 'i', (int64_t)seq, NULL, 0);
    if (!rc && sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        rc = st_dbfail(s->db, s->db_path, "committing");
out:
    if (rc)
        st_db_rollback(s);
    sqlite3_finalize(ins);
    sqlite3_finalize(rem);
    qd_free(blob);
    return rc;
}

/* Marks the store broken after a change reached SQLite but not memory. */
static int st_broken(qd_store *s, int rc, const char *what)
{
    s->broken = 1;
    st_format(s->broken_msg, sizeof s->broken_msg,
             "%s: %s: %s; the change is stored in the database but not in the index in "
             "memory: reopen the index",
             s->db_path, what, st_err);
    return st_fail(rc, "%s", s->broken_msg);
}

/* Applies a committed add to memory. Caller holds wmu; takes the write lock. */
static int apply_add(qd_store *s, add_plan *plan, size_t n, size_t nstore, size_t nreplace,
                     const float *x, int64_t *ids, int64_t *old_ids, uint64_t seq, double now)
{
    size_t dim = (size_t)s->dim;
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (plan[i].old)
            old_ids[k++] = plan[i].old->row;
    for (size_t i = 0; i < n; i++)
        if (plan[i].r)
            ids[plan[i].vec_index] = plan[i].r->row;

    int rc = 0;
    pthread_rwlock_wrlock(&s->rw);
    for (size_t i = 0; i < n; i++) {
        st_row *old = plan[i].old;
        if (!old)
            continue;
        old->flags &= ~ROW_REPLACING;
        old->removed = now;
        st_map_del(&s->by_ext, old);
        st_map_del(&s->by_text, old);
        qd_lex_stats_remove(s->lex, &plan[i].old_doc);
        s->live--;
        s->tombs++;
    }
    for (size_t i = 0; i < n; i++) {
        st_row *r = plan[i].r;
        if (!r)
            continue;
        st_map_put(&s->by_row, r);
        st_map_put(&s->by_ext, r);
        st_map_put(&s->by_text, r);
        /* Cannot fail: room was reserved before the commit. */
        int lrc = qd_lex_stats_add(s->lex, plan[i].doc);
        QD_ASSERT(lrc == 0);
        plan[i].r = NULL; /* owned by the table now */
        s->live++;
    }
    s->seq = seq;
    if (nreplace > 0 && s->can_remove) {
        rc = qd_ann_remove(s->ann, old_ids, nreplace, NULL);
        if (rc)
            st_fail(rc, "removing replaced rows: %s", qd_ann_errmsg(s->ann));
    }
    /* In chunks, for the progress of slow kinds (HNSW adds a few thousand a second). */
    for (size_t i = 0; i < nstore && !rc; i += ST_CHUNK) {
        size_t m = nstore - i < ST_CHUNK ? nstore - i : ST_CHUNK;
        rc = st_ann_add_trained(s->ann, x + i * dim, ids + i, m);
        st_progress(s, "index", i + m, nstore);
    }
    pthread_rwlock_unlock(&s->rw);
    if (rc)
        return st_broken(s, rc, "updating the index");
    return 0;
}

static int add_common(qd_store *s, const qd_store_item *items, size_t n, int replace,
                      qd_store_result *res, int dry)
{
    char why[QD_ERRMSG_MAX];
    if (s->readonly && !dry)
        return st_fail(QD_ERR_FORBIDDEN, "%s: opened read-only", s->db_path);
    for (size_t i = 0; i < n; i++) {
        if (qd_store_check_item(&items[i], why, sizeof why) != 0)
            return st_fail(QD_ERR_INVAL, "item %zu: %s", i, why);
        if (!items[i].vec)
            continue;
        /* Scores are cosine similarities only between unit vectors, and verify holds
         * every stored vector to that. */
        double norm = 0;
        for (int d = 0; d < s->dim; d++) {
            if (!isfinite(items[i].vec[d]))
                return st_fail(QD_ERR_INVAL, "item %zu: vector component %d is not finite", i,
                               d);
            norm += (double)items[i].vec[d] * items[i].vec[d];
        }
        if (fabs(sqrt(norm) - 1.0) > 1e-3)
            return st_fail(QD_ERR_INVAL, "item %zu: vector norm %g, expected a unit vector", i,
                           sqrt(norm));
    }
    if (n == 0)
        return 0;

    uint64_t *keys = qd_mallocarray(n, sizeof *keys);
    qd_lex_doc *docs = qd_calloc(n, sizeof *docs);
    add_plan *plan = qd_calloc(n, sizeof *plan);
    const float *x = NULL;
    float *own = NULL;
    int64_t *ids = NULL, *old_ids = NULL;
    size_t nstore = 0, nreplace = 0;
    int rc = 0, stored = 0;
    if (!keys || !plan || !docs) {
        qd_free(keys);
        qd_free(docs);
        qd_free(plan);
        return st_fail(QD_ERR_NOMEM, "out of memory for a batch of %zu", n);
    }
    /* Tokenizing needs no lock; keep other writers out only from here. */
    rc = st_text_keys(items, n, s->threads, keys, dry ? NULL : docs);
    pthread_mutex_lock(&s->wmu);
    if (!rc && s->broken)
        rc = st_fail(QD_ERR_INDEX, "%s", s->broken_msg);
    if (!rc)
        rc = classify(s, items, n, replace, keys, docs, res, plan, &nstore, &nreplace);
    if (rc || dry || nstore + nreplace == 0)
        goto out;

    ids = qd_mallocarray(nstore ? nstore : 1, sizeof *ids);
    old_ids = qd_mallocarray(nreplace ? nreplace : 1, sizeof *old_ids);
    if (!ids || !old_ids) {
        rc = st_fail(QD_ERR_NOMEM, "out of memory for %zu vectors", nstore);
        goto out;
    }
    if ((rc = plan_vectors(s, items, n, plan, nstore, &x, &own)) != 0)
        goto out;
    /* Everything the in-memory update needs, before the commit. Training changes the
     * index, but only an empty one (searches find nothing either way). */
    if ((rc = st_map_reserve(&s->by_row, nstore, &s->rw)) != 0 ||
        (rc = st_map_reserve(&s->by_ext, nstore, &s->rw)) != 0 ||
        (rc = st_map_reserve(&s->by_text, nstore, &s->rw)) != 0)
        goto out;
    size_t new_terms = 0;
    for (size_t i = 0; i < n; i++)
        if (plan[i].r)
            new_terms += qd_lex_stats_missing(s->lex, plan[i].doc);
    if (nreplace > 0) {
        qd_tokbuf tb;
        qd_tokbuf_init(&tb);
        for (size_t i = 0; i < n && !rc; i++)
            if (plan[i].old)
                rc = st_row_doc(s, &tb, plan[i].old, &plan[i].old_doc);
        qd_tokbuf_free(&tb);
        if (rc)
            goto out;
    }
    pthread_rwlock_wrlock(&s->rw); /* the table may move */
    rc = qd_lex_stats_reserve(s->lex, new_terms);
    pthread_rwlock_unlock(&s->rw);
    if (rc) {
        rc = st_fail(rc, "out of memory for the term statistics");
        goto out;
    }
    if (qd_ann_needs_training(s->ann)) {
        pthread_rwlock_wrlock(&s->rw);
        rc = qd_ann_train(s->ann, x, nstore < ST_MAX_TRAIN ? nstore : ST_MAX_TRAIN);
        pthread_rwlock_unlock(&s->rw);
        if (rc) {
            rc = st_fail(rc, "training the index on %zu vectors: %s", nstore,
                         qd_ann_errmsg(s->ann));
            goto out;
        }
    }
    double now = qd_wall_now();
    uint64_t seq = s->seq + 1;
    if ((rc = write_add(s, items, n, plan, x, seq, now)) != 0)
        goto out;
    for (size_t i = 0; i < n; i++)
        if (plan[i].r)
            res[i].row = plan[i].r->row;
    stored = 1;
    rc = apply_add(s, plan, n, nstore, nreplace, x, ids, old_ids, seq, now);
out:
    /* Duplicates of batch items name the row the batch item got (none in a dry run or
     * after a failure). */
    for (size_t i = 0; i < n; i++)
        if (is_batch_mark(res[i].other_row))
            res[i].other_row = stored ? res[batch_item(res[i].other_row)].row : -1;
    for (size_t i = 0; i < n; i++) {
        if (plan[i].old)
            plan[i].old->flags &= ~ROW_REPLACING;
        st_row_doc_done(s, &plan[i].old_doc);
        qd_free(plan[i].r); /* NULL once the row table took it */
    }
    pthread_mutex_unlock(&s->wmu);
    for (size_t i = 0; i < n; i++)
        qd_lex_doc_free(&docs[i]);
    qd_free(keys);
    qd_free(docs);
    qd_free(plan);
    qd_free(own);
    qd_free(ids);
    qd_free(old_ids);
    return rc;
}

int qd_store_add(qd_store *s, const qd_store_item *items, size_t n, int replace,
                 qd_store_result *res)
{
    st_enter();
    return add_common(s, items, n, replace, res, 0);
}

int qd_store_check(qd_store *s, const qd_store_item *items, size_t n, int replace,
                   qd_store_result *res)
{
    st_enter();
    return add_common(s, items, n, replace, res, 1);
}

/* --- removing ------------------------------------------------------------------------- */

int qd_store_remove_many(qd_store *s, const char *const *ext_ids, const size_t *lens,
                         size_t n, int *found, size_t *nremoved)
{
    st_enter();
    if (nremoved)
        *nremoved = 0;
    if (found)
        memset(found, 0, n * sizeof *found);
    if (s->readonly)
        return st_fail(QD_ERR_FORBIDDEN, "%s: opened read-only", s->db_path);
    if (n == 0)
        return 0;
    st_row **rows = qd_mallocarray(n, sizeof *rows);
    int64_t *ids = qd_mallocarray(n, sizeof *ids);
    qd_lex_doc *docs = qd_calloc(n, sizeof *docs);
    sqlite3_stmt *rem = NULL;
    size_t m = 0;
    int rc = 0;
    if (!rows || !ids || !docs) {
        qd_free(rows);
        qd_free(ids);
        qd_free(docs);
        return st_fail(QD_ERR_NOMEM, "out of memory");
    }
    pthread_mutex_lock(&s->wmu);
    if (s->broken) {
        rc = st_fail(QD_ERR_INDEX, "%s", s->broken_msg);
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        st_row *r = st_map_get_ext(&s->by_ext, ext_ids[i], lens[i]);
        if (!r || (r->flags & ROW_REMOVING))
            continue; /* not live, or named twice */
        r->flags |= ROW_REMOVING;
        rows[m] = r;
        ids[m++] = r->row;
        if (found)
            found[i] = 1;
    }
    if (m == 0)
        goto out;
    /* The rows' terms, to take them out of the statistics: made before the commit,
     * since applying a committed change to memory must not fail. */
    qd_tokbuf tb;
    qd_tokbuf_init(&tb);
    for (size_t i = 0; i < m && !rc; i++)
        rc = st_row_doc(s, &tb, rows[i], &docs[i]);
    qd_tokbuf_free(&tb);
    if (rc)
        goto out;
    double now = qd_wall_now();
    uint64_t seq = s->seq + 1;
    if (sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
        rc = st_dbfail(s->db, s->db_path, "starting a transaction");
        goto out;
    }
    rc = st_db_prepare(s, "UPDATE questions SET removed = ?1, removed_seq = ?2 "
                       "WHERE row = ?3 AND removed IS NULL", &rem);
    for (size_t i = 0; i < m && !rc; i++) {
        sqlite3_bind_double(rem, 1, now);
        sqlite3_bind_int64(rem, 2, (int64_t)seq);
        sqlite3_bind_int64(rem, 3, ids[i]);
        rc = st_db_run(s, rem);
        if (!rc && sqlite3_changes(s->db) != 1)
            rc = st_fail(QD_ERR_DB, "%s: row %" PRId64 " is no longer live in the database "
                         "(changed by another program?)", s->db_path, ids[i]);
    }
    if (!rc)
        rc = st_meta_set(s, "seq", 'i', (int64_t)seq, NULL, 0);
    if (!rc && sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        rc = st_dbfail(s->db, s->db_path, "committing");
    if (rc) {
        st_db_rollback(s);
        goto out;
    }
    pthread_rwlock_wrlock(&s->rw);
    for (size_t i = 0; i < m; i++) {
        rows[i]->removed = now;
        st_map_del(&s->by_ext, rows[i]);
        st_map_del(&s->by_text, rows[i]);
        qd_lex_stats_remove(s->lex, &docs[i]);
    }
    s->live -= m;
    s->tombs += m;
    s->seq = seq;
    int arc = 0;
    if (s->can_remove) {
        arc = qd_ann_remove(s->ann, ids, m, NULL);
        if (arc)
            st_fail(arc, "removing from the index: %s", qd_ann_errmsg(s->ann));
    }
    pthread_rwlock_unlock(&s->rw);
    if (arc)
        rc = st_broken(s, arc, "updating the index");
    else if (nremoved)
        *nremoved = m;
out:
    for (size_t i = 0; i < m; i++) {
        rows[i]->flags &= ~ROW_REMOVING;
        st_row_doc_done(s, &docs[i]);
    }
    sqlite3_finalize(rem);
    pthread_mutex_unlock(&s->wmu);
    qd_free(rows);
    qd_free(ids);
    qd_free(docs);
    if (rc && found)
        memset(found, 0, n * sizeof *found);
    return rc;
}

int qd_store_remove(qd_store *s, const char *ext_id, size_t ext_id_len)
{
    st_enter();
    size_t got = 0;
    int rc = qd_store_remove_many(s, &ext_id, &ext_id_len, 1, NULL, &got);
    if (rc)
        return rc;
    if (got == 0)
        return st_fail(QD_ERR_NOTFOUND, "no live question with id \"%.*s\"",
                       (int)(ext_id_len > 200 ? 200 : ext_id_len), ext_id);
    return 0;
}

/* --- compaction and parameters -------------------------------------------------------------- */

int qd_store_compact(qd_store *s)
{
    st_enter();
    if (s->readonly)
        return st_fail(QD_ERR_FORBIDDEN, "%s: opened read-only", s->db_path);
    pthread_mutex_lock(&s->wmu);
    int rc = 0;
    st_row **dead = NULL;
    size_t ndead = 0;
    qd_ann *fresh = NULL, *old = NULL;
    if (s->broken) {
        rc = st_fail(QD_ERR_INDEX, "%s", s->broken_msg);
        goto out;
    }
    dead = qd_mallocarray(s->tombs ? s->tombs : 1, sizeof *dead);
    if (!dead) {
        rc = st_fail(QD_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; s->by_row.slot && i <= s->by_row.mask; i++) {
        st_row *r = s->by_row.slot[i];
        if (r && r->removed != 0 && ndead < s->tombs)
            dead[ndead++] = r;
    }
    /* Delete the tombstones and withdraw meta's word for the FAISS file in one
     * transaction: a crash before the new checkpoint makes the next open rebuild,
     * rather than load a file naming rows that no longer exist. */
    uint64_t seq = s->seq + 1;
    if (sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
        rc = st_dbfail(s->db, s->db_path, "starting a transaction");
        goto out;
    }
    rc = st_db_exec(s, "DELETE FROM questions WHERE removed IS NOT NULL");
    if (!rc)
        rc = st_meta_set(s, "seq", 'i', (int64_t)seq, NULL, 0);
    if (!rc)
        rc = st_meta_set(s, "faiss_crc", 'n', 0, NULL, 0);
    if (!rc && sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        rc = st_dbfail(s->db, s->db_path, "committing");
    if (rc) {
        st_db_rollback(s);
        goto out;
    }
    s->vouched = 0;
    pthread_rwlock_wrlock(&s->rw);
    s->seq = seq;
    pthread_rwlock_unlock(&s->rw);
    /* The new index is built while searches go on against the old one. */
    rc = st_build_index(s, &fresh);
    if (!rc)
        rc = st_apply_params(s, fresh);
    if (rc)
        goto out; /* tombstones stay filtered; the next open rebuilds */
    pthread_rwlock_wrlock(&s->rw);
    old = s->ann;
    s->ann = fresh;
    fresh = NULL;
    for (size_t i = 0; i < ndead; i++)
        st_map_del(&s->by_row, dead[i]);
    s->tombs -= ndead;
    pthread_rwlock_unlock(&s->rw);
    for (size_t i = 0; i < ndead; i++)
        qd_free(dead[i]);
    ndead = 0;
    rc = st_checkpoint_locked(s);
    /* Give the freed pages back to the file system, then fold the WAL into the file. */
    if (!rc)
        rc = st_db_exec(s, "VACUUM");
    if (!rc)
        rc = st_db_exec(s, "PRAGMA wal_checkpoint(TRUNCATE)");
out:
    pthread_mutex_unlock(&s->wmu);
    qd_ann_free(old);
    qd_ann_free(fresh);
    qd_free(dead);
    return rc;
}

int qd_store_set_param(qd_store *s, const char *name, double value)
{
    st_enter();
    pthread_mutex_lock(&s->wmu);
    pthread_rwlock_wrlock(&s->rw);
    int rc;
    int own = s->compressed && name && strcmp(name, "rescore") == 0;
    if (own) {
        /* A compressed kind's re-scoring depth is the store's (rescore.c); the exact
         * index's own 8-bit scan has a parameter of that name in ann.c. */
        if (!(value >= 0 && value <= QD_STORE_MAX_K && value == floor(value)))
            rc = st_fail(QD_ERR_INVAL, "parameter rescore: %g is not an integer in 0..%d",
                         value, QD_STORE_MAX_K);
        else {
            __atomic_store_n(&s->rescore, (size_t)value, __ATOMIC_RELAXED);
            rc = 0;
        }
    } else if ((rc = qd_ann_set_param(s->ann, name, value)) != 0) {
        st_fail(rc, "%s", qd_ann_errmsg(s->ann));
    }
    pthread_rwlock_unlock(&s->rw);
    /* Remembered (the last value of each name), so that an index built later by a
     * compaction or a switch of model searches the same way; the store's own rescore
     * stays with the store. */
    int i = 0;
    while (!rc && !own && i < s->nparams && strcmp(s->param[i].name, name) != 0)
        i++;
    if (!rc && !own && strlen(name) < sizeof s->param[0].name &&
        i < (int)(sizeof s->param / sizeof s->param[0])) {
        snprintf(s->param[i].name, sizeof s->param[i].name, "%s", name);
        s->param[i].value = value;
        if (i == s->nparams)
            s->nparams++;
    }
    pthread_mutex_unlock(&s->wmu);
    return rc;
}

int st_apply_params(qd_store *s, qd_ann *a)
{
    for (int i = 0; i < s->nparams; i++) {
        int rc = qd_ann_set_param(a, s->param[i].name, s->param[i].value);
        if (rc)
            return st_fail(rc, "setting %s on the new index: %s", s->param[i].name,
                           qd_ann_errmsg(a));
    }
    return 0;
}

int qd_store_set_param_text(qd_store *s, const char *name_value)
{
    st_enter();
    const char *eq = strchr(name_value, '=');
    char name[64], *end;
    errno = 0;
    double v = eq ? strtod(eq + 1, &end) : 0;
    if (!eq || eq == name_value || (size_t)(eq - name_value) >= sizeof name ||
        eq[1] == '\0' || *end || errno)
        return st_fail(QD_ERR_FORMAT, "expected NAME=VALUE, e.g. nprobe=16");
    snprintf(name, sizeof name, "%.*s", (int)(eq - name_value), name_value);
    return qd_store_set_param(s, name, v);
}
