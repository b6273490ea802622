/*
 * lex.c - terms, collection statistics, BM25 and pair signals (see lex.h).
 *
 * A doc is built by splitting the text, hashing each word token, sorting the hashes
 * and folding equal neighbours into counts. Statistics are an open-addressing hash
 * table (linear probing, power-of-two capacity, at most half full) from term hash to
 * document frequency; 0 marks an empty slot, which is why a term hash is never 0.
 * Scoring merges two sorted term arrays, so BM25 of a query against a candidate costs
 * a few dozen integer comparisons.
 */
#include "qdup/lex.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <utf8proc.h>

#include "qdup/common.h"
#include "qdup/fileio.h"

/* --- terms ------------------------------------------------------------------------- */

uint64_t qd_lex_term_hash(const char *s, size_t n)
{
    uint64_t h = qd_hash64(QD_HASH64_INIT, s, n);
    /* A final mix spreads FNV's low bits, which the table's mask uses. */
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    return h ? h : 1;
}

int qd_lex_is_word(const char *s, size_t n)
{
    if (n == 0)
        return 0;
    int32_t cp;
    qd_utf8_decode((const unsigned char *)s, n, &cp);
    if (cp < 0)
        return 0;
    switch (utf8proc_category(cp)) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO: case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_MC: case UTF8PROC_CATEGORY_ME: case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_NO:
        return 1;
    default:
        return 0;
    }
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

void qd_lex_doc_free(qd_lex_doc *d)
{
    if (!d)
        return;
    qd_free(d->term);
    memset(d, 0, sizeof *d);
}

int qd_lex_doc_make(qd_tokbuf *tb, const char *text, size_t len, qd_lex_doc *out)
{
    memset(out, 0, sizeof *out);
    int rc = qd_tok_split(tb, text, len, 0);
    if (rc)
        return rc;
    if (tb->n > UINT32_MAX)
        return QD_ERR_RANGE;
    uint64_t *h = qd_mallocarray(tb->n ? tb->n : 1, sizeof *h);
    if (!h)
        return QD_ERR_NOMEM;
    size_t nw = 0;
    for (size_t i = 0; i < tb->n; i++) {
        const char *s = tb->text + tb->start[i];
        if (qd_lex_is_word(s, tb->len[i]))
            h[nw++] = qd_lex_term_hash(s, tb->len[i]);
    }
    if (nw == 0) {
        qd_free(h);
        return 0;
    }
    qsort(h, nw, sizeof *h, cmp_u64);
    size_t nd = 1;
    for (size_t i = 1; i < nw; i++)
        nd += h[i] != h[i - 1];
    /* One block: nd hashes, then nd counts. */
    uint64_t *blk = qd_malloc(nd * (sizeof(uint64_t) + sizeof(uint32_t)));
    if (!blk) {
        qd_free(h);
        return QD_ERR_NOMEM;
    }
    uint32_t *tf = (uint32_t *)(blk + nd);
    size_t j = 0;
    for (size_t i = 0; i < nw; i++) {
        if (i > 0 && h[i] == h[i - 1]) {
            tf[j - 1]++;
            continue;
        }
        blk[j] = h[i];
        tf[j] = 1;
        j++;
    }
    qd_free(h);
    out->term = blk;
    out->tf = tf;
    out->n = (uint32_t)nd;
    out->len = (uint32_t)nw;
    return 0;
}

/* --- statistics -------------------------------------------------------------------- */

typedef struct lex_slot {
    uint64_t term; /* term hash; 0: empty */
    uint32_t df;   /* questions holding the term (0 once all are removed) */
} lex_slot;

struct qd_lex_stats {
    lex_slot *slot;     /* (cap) the table */
    size_t cap;         /* slots, a power of two (0 before the first add) */
    size_t used;        /* slots holding a term */
    uint64_t ndocs;     /* questions counted */
    uint64_t total_len; /* sum of their lengths */
};

qd_lex_stats *qd_lex_stats_new(void)
{
    return qd_calloc(1, sizeof(qd_lex_stats));
}

void qd_lex_stats_free(qd_lex_stats *st)
{
    if (!st)
        return;
    qd_free(st->slot);
    qd_free(st);
}

static lex_slot *find_slot(const lex_slot *tab, size_t cap, uint64_t term)
{
    size_t mask = cap - 1, i = (size_t)term & mask;
    while (tab[i].term != 0 && tab[i].term != term)
        i = (i + 1) & mask;
    return (lex_slot *)&tab[i];
}

int qd_lex_stats_reserve(qd_lex_stats *st, size_t extra)
{
    size_t need = st->used + extra;
    if (need > SIZE_MAX / 4)
        return QD_ERR_NOMEM;
    if (st->cap && need * 2 <= st->cap)
        return 0;
    size_t cap = st->cap ? st->cap : 1024;
    while (need * 2 > cap)
        cap *= 2;
    lex_slot *tab = qd_calloc(cap, sizeof *tab);
    if (!tab)
        return QD_ERR_NOMEM;
    for (size_t i = 0; i < st->cap; i++)
        if (st->slot[i].term)
            *find_slot(tab, cap, st->slot[i].term) = st->slot[i];
    qd_free(st->slot);
    st->slot = tab;
    st->cap = cap;
    return 0;
}

size_t qd_lex_stats_missing(const qd_lex_stats *st, const qd_lex_doc *d)
{
    if (st->cap == 0)
        return d->n;
    size_t miss = 0;
    for (uint32_t i = 0; i < d->n; i++)
        miss += find_slot(st->slot, st->cap, d->term[i])->term == 0;
    return miss;
}

int qd_lex_stats_add(qd_lex_stats *st, const qd_lex_doc *d)
{
    int rc = qd_lex_stats_reserve(st, qd_lex_stats_missing(st, d));
    if (rc)
        return rc;
    for (uint32_t i = 0; i < d->n; i++) {
        lex_slot *s = find_slot(st->slot, st->cap, d->term[i]);
        if (s->term == 0) {
            s->term = d->term[i];
            st->used++;
        }
        s->df++;
    }
    st->ndocs++;
    st->total_len += d->len;
    return 0;
}

void qd_lex_stats_remove(qd_lex_stats *st, const qd_lex_doc *d)
{
    QD_ASSERT(st->ndocs > 0);
    for (uint32_t i = 0; i < d->n; i++) {
        lex_slot *s = find_slot(st->slot, st->cap, d->term[i]);
        QD_ASSERT(s->term == d->term[i] && s->df > 0);
        s->df--;
    }
    st->ndocs--;
    st->total_len -= d->len;
}

uint32_t qd_lex_stats_df(const qd_lex_stats *st, uint64_t term)
{
    if (st->cap == 0 || term == 0)
        return 0;
    return find_slot(st->slot, st->cap, term)->df;
}

uint64_t qd_lex_stats_ndocs(const qd_lex_stats *st) { return st->ndocs; }

double qd_lex_stats_avglen(const qd_lex_stats *st)
{
    if (st->ndocs == 0 || st->total_len == 0)
        return 1.0;
    return (double)st->total_len / (double)st->ndocs;
}

/* --- scoring ------------------------------------------------------------------------ */

double qd_lex_idf(const qd_lex_stats *st, uint64_t term)
{
    double n = (double)st->ndocs, df = qd_lex_stats_df(st, term);
    if (df > n) /* cannot happen with consistent counts; keeps idf >= 0 regardless */
        df = n;
    return log(1.0 + (n - df + 0.5) / (df + 0.5));
}

int qd_lex_query_init(qd_lex_query *lq, const qd_lex_stats *st, const qd_lex_doc *q,
                      qd_bm25_params p)
{
    memset(lq, 0, sizeof *lq);
    lq->q = q;
    lq->p = p;
    lq->avglen = qd_lex_stats_avglen(st);
    if (q->n == 0)
        return 0;
    lq->idf = qd_mallocarray(q->n, sizeof *lq->idf);
    if (!lq->idf)
        return QD_ERR_NOMEM;
    for (uint32_t i = 0; i < q->n; i++) {
        lq->idf[i] = qd_lex_idf(st, q->term[i]);
        lq->idf_sum += lq->idf[i];
    }
    return 0;
}

void qd_lex_query_free(qd_lex_query *lq)
{
    if (!lq)
        return;
    qd_free(lq->idf);
    lq->idf = NULL;
}

double qd_lex_bm25(const qd_lex_query *lq, const qd_lex_doc *d)
{
    const qd_lex_doc *q = lq->q;
    double k1 = lq->p.k1, b = lq->p.b;
    double norm = k1 * (1.0 - b + b * (double)d->len / lq->avglen);
    double s = 0;
    uint32_t i = 0, j = 0;
    /* The merge steps without branching on which term is smaller (which mispredicted
     * about every other step); only a shared term branches. */
    while (i < q->n && j < d->n) {
        uint64_t a = q->term[i], t = d->term[j];
        if (a == t) {
            double tf = d->tf[j];
            s += lq->idf[i] * tf * (k1 + 1.0) / (tf + norm);
        }
        i += a <= t;
        j += t <= a;
    }
    return s;
}

void qd_lex_pair_signals(const qd_lex_stats *st, const qd_lex_doc *q, const qd_lex_doc *d,
                         float out[QD_LEX_NSIGNALS])
{
    qd_lex_pair_signals_idf(st, q, NULL, d, out);
}

void qd_lex_pair_signals_idf(const qd_lex_stats *st, const qd_lex_doc *q, const double *qidf,
                             const qd_lex_doc *d, float out[QD_LEX_NSIGNALS])
{
    double iq = 0, id = 0, ishared = 0;
    uint32_t i = 0, j = 0, shared = 0;
    while (i < q->n || j < d->n) {
        if (j >= d->n || (i < q->n && q->term[i] < d->term[j])) {
            iq += qidf ? qidf[i] : qd_lex_idf(st, q->term[i]);
            i++;
        } else if (i >= q->n || q->term[i] > d->term[j]) {
            id += qd_lex_idf(st, d->term[j++]);
        } else {
            double w = qidf ? qidf[i] : qd_lex_idf(st, q->term[i]);
            iq += w;
            id += w;
            ishared += w;
            shared++;
            i++;
            j++;
        }
    }
    uint32_t uni = q->n + d->n - shared;
    out[QD_LEX_JACCARD] = uni ? (float)shared / (float)uni : 0.0f;
    out[QD_LEX_IDF_Q] = iq > 0 ? (float)(ishared / iq) : 0.0f;
    out[QD_LEX_IDF_D] = id > 0 ? (float)(ishared / id) : 0.0f;
    out[QD_LEX_IDF_MEAN] = 0.5f * (out[QD_LEX_IDF_Q] + out[QD_LEX_IDF_D]);
}
