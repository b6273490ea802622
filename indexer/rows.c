/*
 * rows.c - the store's in-memory row table: every row of the questions table (row id
 * -> external id, text, times) in three open-addressing hash tables (by row id: all
 * rows; by external id and by text key: live rows only), so that a search resolves
 * FAISS ids with a few hash probes and never touches SQLite. Also the text key (the
 * hash of a question's token sequence, for exact-duplicate detection), and loading the
 * table from SQLite at open. Only the writer changes the tables, under the store's
 * write lock; see store_impl.h for the layout of the store.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qdup/common.h"
#include "qdup/fileio.h"
#include "qdup/parallel.h"
#include "qdup/store.h"
#include "qdup/tok.h"
#include "store_impl.h"

/* --- row entries and hash tables ------------------------------------------------------ */
static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

static uint64_t id_hash(const char *id, size_t len)
{
    return mix64(qd_hash64(QD_HASH64_INIT, id, len));
}

st_row *st_row_new(int64_t row, const char *id, size_t id_len, const char *text,
                   size_t text_len, uint64_t key, const qd_lex_doc *terms, double created,
                   double removed)
{
    uint32_t nt = terms ? terms->n : 0;
    size_t tb = (size_t)nt * (sizeof(uint64_t) + sizeof(uint32_t));
    st_row *r = qd_malloc(sizeof *r + tb + id_len + text_len + 2);
    if (!r)
        return NULL;
    r->nterms = nt;
    r->nwords = terms ? terms->len : 0;
    if (nt) {
        memcpy(r->data, terms->term, nt * sizeof *terms->term);
        memcpy(r->data + nt * sizeof(uint64_t), terms->tf, nt * sizeof *terms->tf);
    }
    r->row = row;
    r->text_key = key;
    r->id_hash = id_hash(id, id_len);
    r->created = created;
    r->removed = removed;
    r->id_len = (uint16_t)id_len;
    r->text_len = (uint32_t)text_len;
    r->flags = 0;
    char *p = r->data + tb;
    memcpy(p, id, id_len);
    p[id_len] = '\0';
    memcpy(p + id_len + 1, text, text_len);
    p[id_len + 1 + text_len] = '\0';
    return r;
}

static uint64_t map_hash_of(enum st_key k, const st_row *r)
{
    switch (k) {
    case KEY_ROW: return mix64((uint64_t)r->row);
    case KEY_EXT: return r->id_hash;
    case KEY_TEXT: return mix64(r->text_key);
    }
    return 0;
}

st_row *st_map_get_row(const st_map *m, int64_t row)
{
    if (!m->slot)
        return NULL;
    for (size_t i = mix64((uint64_t)row) & m->mask;; i = (i + 1) & m->mask) {
        st_row *r = m->slot[i];
        if (!r || r->row == row)
            return r;
    }
}

st_row *st_map_get_ext(const st_map *m, const char *id, size_t len)
{
    if (!m->slot)
        return NULL;
    uint64_t h = id_hash(id, len);
    for (size_t i = h & m->mask;; i = (i + 1) & m->mask) {
        st_row *r = m->slot[i];
        if (!r || (r->id_hash == h && r->id_len == len && memcmp(st_row_ext(r), id, len) == 0))
            return r;
    }
}

st_row *st_map_get_text(const st_map *m, uint64_t key)
{
    if (!m->slot)
        return NULL;
    for (size_t i = mix64(key) & m->mask;; i = (i + 1) & m->mask) {
        st_row *r = m->slot[i];
        if (!r || r->text_key == key)
            return r;
    }
}

/* Inserts r, which the caller knows is absent; room must have been reserved. */
void st_map_put(st_map *m, st_row *r)
{
    QD_ASSERT(m->slot && (m->n + 1) * 4 <= (m->mask + 1) * 3);
    size_t i = map_hash_of(m->key, r) & m->mask;
    while (m->slot[i])
        i = (i + 1) & m->mask;
    m->slot[i] = r;
    m->n++;
}

/* Removes r (by identity) if present. */
void st_map_del(st_map *m, const st_row *r)
{
    if (!m->slot)
        return;
    size_t i = map_hash_of(m->key, r) & m->mask;
    while (m->slot[i] && m->slot[i] != r)
        i = (i + 1) & m->mask;
    if (!m->slot[i])
        return;
    /* Shift back the entries after it whose home slot does not lie in (i, j]. */
    size_t j = i;
    for (;;) {
        j = (j + 1) & m->mask;
        st_row *e = m->slot[j];
        if (!e)
            break;
        size_t home = map_hash_of(m->key, e) & m->mask;
        int between = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (!between) {
            m->slot[i] = e;
            i = j;
        }
    }
    m->slot[i] = NULL;
    m->n--;
}

/* Makes room for `extra` more entries, keeping the table at most three quarters full
 * (linear probing stays short there: about 2.5 probes a hit, 8.5 a miss, while the
 * three tables of ten million rows take 400 MB instead of the 800 MB of a table kept
 * half empty). The bigger table is filled outside the lock
 * (only the writer changes a table, and it holds wmu), and swapped in under `rw`
 * (if not NULL) so that readers never see a half-filled one. */
int st_map_reserve(st_map *m, size_t extra, pthread_rwlock_t *rw)
{
    size_t cap = m->slot ? m->mask + 1 : 0;
    if (extra > SIZE_MAX / 4 - m->n)
        return st_fail(QD_ERR_NOMEM, "row table: too many rows");
    size_t need = (m->n + extra) / 3 * 4 + ((m->n + extra) % 3) * 4 / 3 + 1;
    if (need <= cap)
        return 0;
    size_t ncap = 16;
    while (ncap < need)
        ncap *= 2;
    st_row **ns = qd_calloc(ncap, sizeof *ns);
    if (!ns)
        return st_fail(QD_ERR_NOMEM, "row table: out of memory for %zu slots", ncap);
    for (size_t i = 0; i < cap; i++) {
        st_row *r = m->slot[i];
        if (!r)
            continue;
        size_t k = map_hash_of(m->key, r) & (ncap - 1);
        while (ns[k])
            k = (k + 1) & (ncap - 1);
        ns[k] = r;
    }
    st_row **old = m->slot;
    if (rw)
        pthread_rwlock_wrlock(rw);
    m->slot = ns;
    m->mask = ncap - 1;
    if (rw)
        pthread_rwlock_unlock(rw);
    qd_free(old);
    return 0;
}

void st_map_free(st_map *m)
{
    qd_free(m->slot);
    m->slot = NULL;
    m->mask = m->n = 0;
}

/* --- text keys ---------------------------------------------------------------------- */

/* The hash of a text's token sequence (0: no tokens). Each token is hashed with its
 * length in front, so "ab c" and "a bc" differ. */
int st_text_key_tb(qd_tokbuf *tb, const char *text, size_t len, uint64_t *key)
{
    int rc = qd_tok_split(tb, text, len, 0);
    if (rc)
        return rc;
    if (tb->n == 0) {
        *key = 0;
        return 0;
    }
    uint64_t h = QD_HASH64_INIT;
    for (size_t i = 0; i < tb->n; i++) {
        unsigned char l[4] = {(unsigned char)tb->len[i], (unsigned char)(tb->len[i] >> 8),
                              (unsigned char)(tb->len[i] >> 16),
                              (unsigned char)(tb->len[i] >> 24)};
        h = qd_hash64(h, l, sizeof l);
        h = qd_hash64(h, tb->text + tb->start[i], tb->len[i]);
    }
    h = mix64(h);
    *key = h ? h : 1;
    return 0;
}

uint64_t qd_store_text_key(const qd_store *s, const char *text, size_t len)
{
    st_enter();
    (void)s;
    qd_tokbuf tb;
    qd_tokbuf_init(&tb);
    uint64_t key = 0;
    if (st_text_key_tb(&tb, text, len, &key) != 0)
        key = 0;
    qd_tokbuf_free(&tb);
    return key;
}

/* Text keys of n items on several threads (tokenizing a million questions takes a
 * few seconds on one core): at most 16, and one for under 4,096 items. */
#define KEY_MAX_THREADS 16

typedef struct key_job {
    const qd_store_item *items;  /* (n) */
    uint64_t *keys;              /* (n) output */
    qd_lex_doc *docs;            /* (n) output, or NULL */
    int rc[KEY_MAX_THREADS];     /* each worker's result */
} key_job;

/* One worker's share (qd_parallel_for). */
static void key_share(size_t lo, size_t hi, int worker, void *arg)
{
    key_job *j = arg;
    qd_tokbuf tb;
    qd_tokbuf_init(&tb);
    int rc = 0;
    for (size_t i = lo; i < hi && !rc; i++) {
        rc = st_text_key_tb(&tb, j->items[i].text, j->items[i].text_len, &j->keys[i]);
        if (!rc && j->docs)
            rc = qd_lex_doc_make(&tb, j->items[i].text, j->items[i].text_len, &j->docs[i]);
    }
    j->rc[worker] = rc;
    qd_tokbuf_free(&tb);
}

int st_text_keys(const qd_store_item *items, size_t n, int threads, uint64_t *keys,
                 qd_lex_doc *docs)
{
    threads = qd_parallel_workers(n, threads);
    if (threads > KEY_MAX_THREADS)
        threads = KEY_MAX_THREADS;
    if (n < 4096)
        threads = 1;
    key_job j = {.items = items, .keys = keys, .docs = docs};
    qd_parallel_for(n, threads, key_share, &j);
    for (int t = 0; t < threads; t++)
        if (j.rc[t])
            return st_fail(j.rc[t], "tokenizing: %s", qd_strerror(j.rc[t]));
    return 0;
}
/* Loads every row of the questions table into the row table. */
int st_load_rows(qd_store *s)
{
    sqlite3_stmt *st = NULL;
    int64_t count = 0;
    int rc = st_db_prepare(s, "SELECT count(*) FROM questions", &st);
    if (rc)
        return rc;
    if (sqlite3_step(st) == SQLITE_ROW)
        count = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    if ((rc = st_map_reserve(&s->by_row, (size_t)count, NULL)) != 0 ||
        (rc = st_map_reserve(&s->by_ext, (size_t)count, NULL)) != 0 ||
        (rc = st_map_reserve(&s->by_text, (size_t)count, NULL)) != 0)
        return rc;
    rc = st_db_prepare(s, "SELECT row, ext_id, text, text_key, created, removed FROM questions "
                       "ORDER BY row", &st);
    if (rc)
        return rc;
    int src;
    qd_tokbuf tb;
    qd_tokbuf_init(&tb);
    while ((src = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t row = sqlite3_column_int64(st, 0);
        const char *id = (const char *)sqlite3_column_text(st, 1);
        size_t id_len = (size_t)sqlite3_column_bytes(st, 1);
        const char *text = (const char *)sqlite3_column_text(st, 2);
        size_t text_len = (size_t)sqlite3_column_bytes(st, 2);
        if (!id || !text) {
            rc = st_fail(QD_ERR_NOMEM, "%s: out of memory reading row %" PRId64, s->db_path,
                         row);
            break;
        }
        double removed = sqlite3_column_type(st, 5) == SQLITE_NULL
                             ? 0
                             : sqlite3_column_double(st, 5);
        if (sqlite3_column_type(st, 5) != SQLITE_NULL && removed == 0)
            removed = 1e-9; /* a removal time of 0 would read as live */
        /* The terms are not stored: they are made again from the text, so that the
         * term statistics can never be out of step with the rows. */
        qd_lex_doc doc;
        if ((rc = qd_lex_doc_make(&tb, text, text_len, &doc)) != 0) {
            rc = st_fail(rc, "%s: row %" PRId64 ": terms: %s", s->db_path, row,
                         qd_strerror(rc));
            break;
        }
        if (id_len > QD_STORE_MAX_ID) {
            qd_lex_doc_free(&doc);
            rc = st_fail(QD_ERR_FORMAT, "%s: row %" PRId64 ": id of %zu bytes", s->db_path,
                         row, id_len);
            break;
        }
        st_row *r = st_row_new(row, id, id_len, text, text_len,
                               (uint64_t)sqlite3_column_int64(st, 3),
                               s->keep_terms ? &doc : NULL, sqlite3_column_double(st, 4),
                               removed);
        if (r && removed == 0 && qd_lex_stats_add(s->lex, &doc) != 0) {
            qd_free(r);
            r = NULL;
        }
        qd_lex_doc_free(&doc);
        if (!r) {
            rc = st_fail(QD_ERR_NOMEM, "%s: out of memory for the row table", s->db_path);
            break;
        }
        if (s->by_row.n == (size_t)count) {
            /* More rows than counted: the database changed under a read-only open. */
            if ((rc = st_map_reserve(&s->by_row, 1024, NULL)) != 0 ||
                (rc = st_map_reserve(&s->by_ext, 1024, NULL)) != 0 ||
                (rc = st_map_reserve(&s->by_text, 1024, NULL)) != 0) {
                qd_free(r);
                break;
            }
            count += 1024;
        }
        st_map_put(&s->by_row, r);
        if (removed == 0) {
            st_map_put(&s->by_ext, r);
            /* Live rows may share a text (reposts): each is in the table. */
            st_map_put(&s->by_text, r);
            s->live++;
        } else {
            s->tombs++;
        }
    }
    qd_tokbuf_free(&tb);
    if (!rc && src != SQLITE_DONE)
        rc = st_dbfail(s->db, s->db_path, "reading the questions");
    sqlite3_finalize(st);
    return rc;
}
int st_row_doc(const qd_store *s, qd_tokbuf *tb, const st_row *r, qd_lex_doc *doc)
{
    if (s->keep_terms) {
        const char *t = r->data;
        *doc = (qd_lex_doc){
            .term = r->nterms ? (uint64_t *)(void *)t : NULL,
            .tf = r->nterms ? (uint32_t *)(void *)(t + r->nterms * sizeof(uint64_t)) : NULL,
            .n = r->nterms,
            .len = r->nwords,
        };
        return 0;
    }
    int rc = qd_lex_doc_make(tb, st_row_text(r), r->text_len, doc);
    if (rc)
        return st_fail(rc, "row %" PRId64 ": terms: %s", r->row, qd_strerror(rc));
    return 0;
}

void st_row_doc_done(const qd_store *s, qd_lex_doc *doc)
{
    if (s->keep_terms)
        *doc = (qd_lex_doc){0};
    else
        qd_lex_doc_free(doc);
}

/* Copies a row table entry out. */
int st_row_copy(const st_row *r, qd_store_row *out)
{
    out->row = r->row;
    out->created = r->created;
    out->removed = r->removed;
    out->ext_id = qd_strndup(st_row_ext(r), r->id_len);
    out->text = qd_strndup(st_row_text(r), r->text_len);
    if (!out->ext_id || !out->text) {
        qd_store_row_free(out);
        return st_fail(QD_ERR_NOMEM, "out of memory");
    }
    return 0;
}
