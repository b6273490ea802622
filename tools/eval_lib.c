/*
 * eval_lib.c - retrieval metrics and the BM25 baseline of qdup-eval (see eval_impl.h).
 *
 * The BM25 query is built by our own scan of the question rather than by handing the
 * text to FTS5's query parser, which would read quotes, parentheses, "*", "^", ":" and
 * the words AND/OR/NOT/NEAR as syntax. The scan cuts the text into runs of letters,
 * marks, digits and private-use characters (unicode61's token characters, marks added
 * so that a decomposed "é" stays in its word), and quotes each run: inside a FTS5 string
 * nothing is syntax, and FTS5 then tokenizes and folds the run itself, exactly as it did
 * the indexed text. A term repeated in the question would count twice in bm25() (it sums
 * over the query's phrases), so terms are kept once, compared after case folding and
 * without marks, as unicode61 folds them.
 */
#include "eval_impl.h"

#include <sqlite3.h>
#include <stdio.h>
#include <string.h>
#include <utf8proc.h>

#include "qdup/common.h"
#include "qdup/fileio.h"

/* --- retrieval metrics --------------------------------------------------------------- */

size_t qd_eval_rank(const int64_t *ids, size_t k, int64_t self, int64_t target)
{
    size_t rank = 0;
    for (size_t i = 0; i < k; i++) {
        if (ids[i] == self || ids[i] < 0)
            continue;
        rank++;
        if (ids[i] == target)
            return rank;
    }
    return 0;
}

void qd_eval_retr_add(qd_eval_retr *r, size_t rank)
{
    r->queries++;
    if (rank == 1)
        r->hits1++;
    if (rank >= 1 && rank <= 10) {
        r->hits10++;
        r->rr10 += 1.0 / (double)rank;
    }
}

double qd_eval_recall1(const qd_eval_retr *r)
{
    return r->queries ? (double)r->hits1 / (double)r->queries : 0;
}

double qd_eval_recall10(const qd_eval_retr *r)
{
    return r->queries ? (double)r->hits10 / (double)r->queries : 0;
}

double qd_eval_mrr10(const qd_eval_retr *r)
{
    return r->queries ? r->rr10 / (double)r->queries : 0;
}

/* --- building the FTS5 query ----------------------------------------------------------- */

/* A growing byte buffer. */
typedef struct qbuf {
    char *p;     /* bytes, NUL-terminated once finished */
    size_t n;    /* bytes used */
    size_t cap;  /* bytes allocated */
} qbuf;

static int qbuf_put(qbuf *b, const void *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *p = qd_realloc(b->p, cap);
        if (!p)
            return QD_ERR_NOMEM;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
    return 0;
}

/* A set of folded terms: open addressing over offsets into a key buffer. */
typedef struct termset {
    qbuf keys;        /* the folded terms, back to back */
    size_t *off;      /* (cap) offset of a key in keys, or SIZE_MAX for an empty slot */
    size_t *len;      /* (cap) its length */
    size_t cap;       /* slots, a power of two */
    size_t n;         /* keys held */
} termset;

static void termset_free(termset *s)
{
    qd_free(s->keys.p);
    qd_free(s->off);
    qd_free(s->len);
}

static size_t termset_slot(const termset *s, const char *k, size_t n)
{
    size_t i = (size_t)qd_hash64(QD_HASH64_INIT, k, n) & (s->cap - 1);
    while (s->off[i] != SIZE_MAX &&
           !(s->len[i] == n && memcmp(s->keys.p + s->off[i], k, n) == 0))
        i = (i + 1) & (s->cap - 1);
    return i;
}

static int termset_grow(termset *s)
{
    size_t cap = s->cap ? s->cap * 2 : 32;
    size_t *off = qd_mallocarray(cap, sizeof *off), *len = qd_mallocarray(cap, sizeof *len);
    if (!off || !len) {
        qd_free(off);
        qd_free(len);
        return QD_ERR_NOMEM;
    }
    for (size_t i = 0; i < cap; i++)
        off[i] = SIZE_MAX;
    termset old = *s;
    s->off = off;
    s->len = len;
    s->cap = cap;
    for (size_t i = 0; i < old.cap; i++)
        if (old.off[i] != SIZE_MAX) {
            size_t j = termset_slot(s, old.keys.p + old.off[i], old.len[i]);
            s->off[j] = old.off[i];
            s->len[j] = old.len[i];
        }
    qd_free(old.off);
    qd_free(old.len);
    return 0;
}

/* Adds the key keys.p[at..keys.n) (just appended): 1 if new, 0 if it was there (and is
 * removed from keys again), or QD_ERR_NOMEM. */
static int termset_add_last(termset *s, size_t at)
{
    if ((s->n + 1) * 2 > s->cap && termset_grow(s))
        return QD_ERR_NOMEM;
    size_t n = s->keys.n - at;
    size_t i = termset_slot(s, s->keys.p + at, n);
    if (s->off[i] != SIZE_MAX) {
        s->keys.n = at;
        return 0;
    }
    s->off[i] = at;
    s->len[i] = n;
    s->n++;
    return 1;
}

/* unicode61's token characters (letters, digits, private use), plus marks. */
static int is_term_char(utf8proc_int32_t cp)
{
    switch (utf8proc_category(cp)) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO:
    case UTF8PROC_CATEGORY_MN: case UTF8PROC_CATEGORY_MC: case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_ND: case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_NO:
    case UTF8PROC_CATEGORY_CO:
        return 1;
    default:
        return 0;
    }
}

/* Appends the folded form of code point cp to b: case folded, decomposed, marks
 * dropped. */
static int fold_char(qbuf *b, utf8proc_int32_t cp)
{
    utf8proc_int32_t dec[32];
    int last = 0;
    utf8proc_ssize_t n = utf8proc_decompose_char(
        cp, dec, 32, UTF8PROC_DECOMPOSE | UTF8PROC_CASEFOLD | UTF8PROC_STRIPMARK, &last);
    if (n < 0 || n > 32) { /* cannot happen for a valid code point; keep it as it is */
        dec[0] = cp;
        n = 1;
    }
    for (utf8proc_ssize_t i = 0; i < n; i++) {
        utf8proc_uint8_t enc[4];
        utf8proc_ssize_t k = utf8proc_encode_char(dec[i], enc);
        if (k > 0 && qbuf_put(b, enc, (size_t)k))
            return QD_ERR_NOMEM;
    }
    return 0;
}

int qd_bm25_query(const char *text, size_t len, char **out, size_t *nterms)
{
    *out = NULL;
    qbuf q = {0};
    termset set = {0};
    size_t terms = 0;
    int rc = qbuf_put(&q, "", 0);
    const uint8_t *s = (const uint8_t *)text;
    size_t i = 0;
    while (rc == 0 && i < len) {
        /* Skip to the start of a term. */
        int32_t cp; /* -1 for an ill-formed sequence: a separator, like a space */
        size_t k = qd_utf8_decode(s + i, len - i, &cp);
        if (cp < 0 || !is_term_char(cp)) {
            i += k;
            continue;
        }
        /* The term runs while term characters follow; fold it into a key. */
        size_t start = i, key_at = set.keys.n;
        while (i < len) {
            k = qd_utf8_decode(s + i, len - i, &cp);
            if (cp < 0 || !is_term_char(cp))
                break;
            if ((rc = fold_char(&set.keys, cp)) != 0)
                break;
            i += (size_t)k;
        }
        if (rc)
            break;
        int added = termset_add_last(&set, key_at);
        if (added < 0) {
            rc = added;
            break;
        }
        if (!added)
            continue;
        /* A new term: append it quoted (a term holds no quote, but double any anyway). */
        if (terms > 0)
            rc = qbuf_put(&q, " OR ", 4);
        if (rc == 0)
            rc = qbuf_put(&q, "\"", 1);
        for (size_t j = start; rc == 0 && j < i; j++)
            rc = qbuf_put(&q, text[j] == '"' ? "\"\"" : &text[j], text[j] == '"' ? 2 : 1);
        if (rc == 0)
            rc = qbuf_put(&q, "\"", 1);
        terms++;
    }
    termset_free(&set);
    if (rc) {
        qd_free(q.p);
        return rc;
    }
    *out = q.p;
    if (nterms)
        *nterms = terms;
    return 0;
}

/* --- the FTS5 index ------------------------------------------------------------------------ */

struct qd_bm25 {
    sqlite3 *db;             /* in-memory database holding the FTS5 table q(text) */
    sqlite3_stmt *search;    /* the ranked MATCH query, prepared once */
    char err[QD_ERRMSG_MAX]; /* detail of the last failure */
};

static int bm25_fail(qd_bm25 *b, const char *what)
{
    snprintf(b->err, sizeof b->err, "%s: %s", what, sqlite3_errmsg(b->db));
    return QD_ERR_DB;
}

int qd_bm25_open(qd_bm25 **out, char *err, size_t errlen)
{
    *out = NULL;
    qd_bm25 *b = qd_calloc(1, sizeof *b);
    if (!b)
        return qd_errf(err, errlen, QD_ERR_NOMEM, "BM25 index: out of memory");
    int rc;
    if (sqlite3_open_v2(":memory:", &b->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE,
                        NULL) != SQLITE_OK) {
        rc = qd_errf(err, errlen, QD_ERR_DB, "BM25 index: cannot open an in-memory database: %s",
                     b->db ? sqlite3_errmsg(b->db) : "out of memory");
        goto fail;
    }
    if (sqlite3_exec(b->db, "CREATE VIRTUAL TABLE q USING fts5(text, tokenize = 'unicode61')",
                     NULL, NULL, NULL) != SQLITE_OK) {
        rc = qd_errf(err, errlen, QD_ERR_DB,
                     "BM25 index: cannot create the FTS5 table (is SQLite built with FTS5?): %s",
                     sqlite3_errmsg(b->db));
        goto fail;
    }
    if (sqlite3_prepare_v2(b->db,
                           "SELECT rowid, bm25(q) FROM q WHERE q MATCH ?1 "
                           "ORDER BY bm25(q), rowid LIMIT ?2",
                           -1, &b->search, NULL) != SQLITE_OK) {
        rc = qd_errf(err, errlen, QD_ERR_DB, "BM25 index: %s", sqlite3_errmsg(b->db));
        goto fail;
    }
    *out = b;
    return 0;
fail:
    qd_bm25_close(b);
    return rc;
}

void qd_bm25_close(qd_bm25 *b)
{
    if (!b)
        return;
    sqlite3_finalize(b->search);
    sqlite3_close(b->db);
    qd_free(b);
}

const char *qd_bm25_errmsg(const qd_bm25 *b)
{
    return b ? b->err : "";
}

int qd_bm25_add(qd_bm25 *b, const int64_t *ids, const char *const *texts, const size_t *lens,
                size_t n)
{
    sqlite3_stmt *ins = NULL;
    if (sqlite3_exec(b->db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK)
        return bm25_fail(b, "BM25 index: BEGIN");
    if (sqlite3_prepare_v2(b->db, "INSERT INTO q(rowid, text) VALUES (?1, ?2)", -1, &ins,
                           NULL) != SQLITE_OK)
        goto fail;
    for (size_t i = 0; i < n; i++) {
        if (lens[i] > (size_t)INT32_MAX) {
            snprintf(b->err, sizeof b->err, "BM25 index: question %lld is over 2 GiB",
                     (long long)ids[i]);
            sqlite3_finalize(ins);
            sqlite3_exec(b->db, "ROLLBACK", NULL, NULL, NULL);
            return QD_ERR_RANGE;
        }
        sqlite3_bind_int64(ins, 1, ids[i]);
        sqlite3_bind_text(ins, 2, texts[i], (int)lens[i], SQLITE_STATIC);
        if (sqlite3_step(ins) != SQLITE_DONE)
            goto fail;
        sqlite3_reset(ins);
    }
    sqlite3_finalize(ins);
    if (sqlite3_exec(b->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        return bm25_fail(b, "BM25 index: COMMIT");
    return 0;
fail:
    bm25_fail(b, "BM25 index: insert");
    sqlite3_finalize(ins);
    sqlite3_exec(b->db, "ROLLBACK", NULL, NULL, NULL);
    return QD_ERR_DB;
}

int qd_bm25_search(qd_bm25 *b, const char *text, size_t len, size_t k, int64_t *ids,
                   double *scores, size_t *found)
{
    *found = 0;
    char *query;
    size_t nterms;
    int rc = qd_bm25_query(text, len, &query, &nterms);
    if (rc)
        return rc;
    if (nterms == 0 || k == 0) {
        qd_free(query);
        return 0;
    }
    sqlite3_bind_text(b->search, 1, query, -1, SQLITE_STATIC);
    sqlite3_bind_int64(b->search, 2, (sqlite3_int64)(k < INT32_MAX ? k : INT32_MAX));
    int r;
    while ((r = sqlite3_step(b->search)) == SQLITE_ROW && *found < k) {
        ids[*found] = sqlite3_column_int64(b->search, 0);
        if (scores)
            scores[*found] = sqlite3_column_double(b->search, 1);
        (*found)++;
    }
    if (r != SQLITE_ROW && r != SQLITE_DONE)
        rc = bm25_fail(b, "BM25 search");
    sqlite3_reset(b->search);
    sqlite3_clear_bindings(b->search);
    qd_free(query);
    return rc;
}
