/*
 * fit.c - fitting a model's scoring on the validation split (see fit.h).
 *
 * The documents are gathered from both pair files (one per distinct text, through a
 * small open-addressing table of text hashes), encoded once and put in an exact FAISS
 * index; each query's nearest QD_FIT_MAX_CANDIDATES are fetched once. The grid search
 * then only needs BM25 of each query against its candidates, once per (k1, b), and
 * for each fusion weight and candidate count the rank of the target, counted without
 * sorting: 1 + the candidates that qd_rank_rescore would put before it (a higher
 * score, or an equal score and a higher cosine, or both equal and fetched earlier).
 * The scores are computed in the same float arithmetic as qd_rank_rescore, so the
 * MRR measured here is the one the product's ranking gets.
 */
#include "qdup/fit.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "qdup/ann.h"
#include "qdup/common.h"
#include "qdup/fileio.h"
#include "qdup/rank.h"

static const float grid_k1[] = {0.1f, 0.2f, 0.3f, 0.45f, 0.6f, 0.9f, 1.2f, 1.5f};
static const float grid_b[] = {0.2f, 0.4f, 0.6f, 0.75f, 0.9f, 1.0f};
#define GRID_A 21 /* a = 0, 0.05, ..., 1 */
#define NK1 (sizeof grid_k1 / sizeof *grid_k1)
#define NB (sizeof grid_b / sizeof *grid_b)

/* The distinct texts of the pair files. */
typedef struct docset {
    const char **text; /* (n) texts (borrowed from the pairs) */
    size_t *len;       /* (n) their lengths */
    size_t n;          /* distinct texts */
    size_t cap;        /* entries allocated in text and len */
    int64_t *slot;     /* (tcap) hash table of document numbers; -1: empty */
    size_t tcap;       /* slots, a power of two */
} docset;

static void docset_free(docset *d)
{
    qd_free(d->text);
    qd_free(d->len);
    qd_free(d->slot);
}

/* The document number of text t (added if new), or -1 when out of memory. */
static int64_t docset_put(docset *d, const char *t, size_t n)
{
    size_t mask = d->tcap - 1, i = (size_t)qd_hash64(QD_HASH64_INIT, t, n) & mask;
    for (; d->slot[i] >= 0; i = (i + 1) & mask) {
        int64_t k = d->slot[i];
        if (d->len[k] == n && memcmp(d->text[k], t, n) == 0)
            return k;
    }
    if (d->n == d->cap)
        return -1; /* sized by the caller for every text: cannot happen */
    d->text[d->n] = t;
    d->len[d->n] = n;
    d->slot[i] = (int64_t)d->n;
    return (int64_t)d->n++;
}

static int docset_init(docset *d, size_t most)
{
    memset(d, 0, sizeof *d);
    d->tcap = 1024;
    while (d->tcap < 2 * most)
        d->tcap *= 2;
    d->cap = most;
    d->text = qd_mallocarray(most ? most : 1, sizeof *d->text);
    d->len = qd_mallocarray(most ? most : 1, sizeof *d->len);
    d->slot = qd_mallocarray(d->tcap, sizeof *d->slot);
    if (!d->text || !d->len || !d->slot) {
        docset_free(d);
        return QD_ERR_NOMEM;
    }
    memset(d->slot, 0xff, d->tcap * sizeof *d->slot);
    return 0;
}

/* Puts both texts of every pair of p into d; their document numbers into vdoc (2 per
 * pair) unless it is NULL. */
static int docset_pairs(docset *d, const qd_pairs *p, size_t *vdoc)
{
    for (size_t i = 0; i < p->n; i++) {
        int64_t a = docset_put(d, p->q1[i], p->len1[i]);
        int64_t b = docset_put(d, p->q2[i], p->len2[i]);
        if (a < 0 || b < 0)
            return QD_ERR_NOMEM;
        if (vdoc) {
            vdoc[2 * i] = (size_t)a;
            vdoc[2 * i + 1] = (size_t)b;
        }
    }
    return 0;
}

/* One query's candidates, nearest first. */
typedef struct fit_query {
    size_t doc;     /* the query's document */
    size_t n;       /* candidates */
    int target;     /* position of the target among them, -1 if not fetched */
} fit_query;

/* Reciprocal rank (0 past 10) of the target of a query whose c candidates have the
 * cosines cos and BM25 values bm (float, as qd_rank_rescore keeps them). */
static double rr_of(const float *cos, const float *bm, size_t c, int target, float a)
{
    if (target < 0 || (size_t)target >= c)
        return 0;
    double best = 0;
    for (size_t j = 0; j < c; j++)
        if (bm[j] > best)
            best = bm[j];
    float lt = best > 0 ? (float)(bm[target] / best) : 0.0f;
    float st = qd_rank_fuse(a, cos[target], lt);
    size_t rank = 1;
    for (size_t j = 0; j < c && rank <= 10; j++) {
        if ((int)j == target)
            continue;
        float lj = best > 0 ? (float)(bm[j] / best) : 0.0f;
        float sj = qd_rank_fuse(a, cos[j], lj);
        if (sj > st || (sj == st && (cos[j] > cos[target] ||
                                     (cos[j] == cos[target] && (int)j < target))))
            rank++;
    }
    return rank <= 10 ? 1.0 / (double)rank : 0;
}

/* The vectors (*vec: (ds->n, dim)), the terms (*docs) and their statistics (*st) of
 * every document of ds; on failure nothing is left allocated. */
static int docs_encode(const qd_model *m, const docset *ds, int threads, float **vec,
                       qd_lex_doc **docs, qd_lex_stats **st, char *err, size_t errlen)
{
    size_t dim = (size_t)qd_model_dim(m);
    *vec = qd_mallocarray(ds->n + 1, dim * sizeof **vec);
    *docs = qd_calloc(ds->n + 1, sizeof **docs);
    *st = qd_lex_stats_new();
    int rc = *vec && *docs && *st ? 0 : QD_ERR_NOMEM;
    if (rc)
        qd_errf(err, errlen, rc, "fitting the scoring: out of memory");
    else if ((rc = qd_enc_texts_parallel(m, ds->text, ds->len, ds->n, threads, 0, NULL, NULL,
                                         *vec)) != 0)
        qd_errf(err, errlen, rc, "fitting the scoring: encoding: %s", qd_strerror(rc));
    qd_tokbuf tb;
    qd_tokbuf_init(&tb);
    for (size_t i = 0; i < ds->n && rc == 0; i++) {
        rc = qd_lex_doc_make(&tb, ds->text[i], ds->len[i], &(*docs)[i]);
        if (rc == 0)
            rc = qd_lex_stats_add(*st, &(*docs)[i]);
        if (rc)
            qd_errf(err, errlen, rc, "fitting the scoring: terms: %s", qd_strerror(rc));
    }
    qd_tokbuf_free(&tb);
    if (rc) {
        for (size_t i = 0; *docs && i < ds->n; i++)
            qd_lex_doc_free(&(*docs)[i]);
        qd_free(*vec);
        qd_free(*docs);
        qd_lex_stats_free(*st);
        *vec = NULL;
        *docs = NULL;
        *st = NULL;
    }
    return rc;
}

/* The head fitted on the pairs p, whose documents are vdoc (2 per pair) among the
 * encoded documents vec and docs; feat is scratch of (p->n, QD_HEAD_NFEAT) and keeps
 * the pairs' features. */
static int head_fit(const float *vec, size_t dim, const qd_lex_doc *docs,
                    const qd_lex_stats *st, const size_t *vdoc, const qd_pairs *p, float *feat,
                    qd_head *out, qd_head_report *rep, char *err, size_t errlen)
{
    for (size_t i = 0; i < p->n; i++) {
        const float *x = vec + vdoc[2 * i] * dim, *y = vec + vdoc[2 * i + 1] * dim;
        float c = 0;
        for (size_t k = 0; k < dim; k++)
            c += x[k] * y[k];
        qd_head_features(c, st, &docs[vdoc[2 * i]], NULL, &docs[vdoc[2 * i + 1]],
                         feat + i * QD_HEAD_NFEAT);
    }
    int rc = qd_head_fit_best(feat, p->dup, p->n, 5, out, rep);
    if (rc)
        qd_errf(err, errlen, rc, "fitting the duplicate head: %s", qd_strerror(rc));
    return rc;
}

int qd_fit_scoring(const qd_model *m, const qd_pairs *train, const qd_pairs *valid,
                   int threads, qd_model_scoring *out, qd_fit_report *rep, char *err,
                   size_t errlen)
{
    double t0 = qd_now();
    qd_fit_report r;
    memset(&r, 0, sizeof r);
    qd_model_scoring_default(out);
    size_t ntrain = train ? train->n : 0, dim = (size_t)qd_model_dim(m);
    docset ds;
    if (docset_init(&ds, 2 * (ntrain + valid->n)) != 0)
        return qd_errf(err, errlen, QD_ERR_NOMEM, "fitting the scoring: out of memory");
    int rc = QD_ERR_NOMEM;
    size_t *vdoc = qd_mallocarray(2 * valid->n + 1, sizeof *vdoc);
    float *vec = NULL, *qv = NULL, *sc = NULL, *cos = NULL, *bm = NULL, *feat = NULL,
          *p = NULL;
    int64_t *ids = NULL;
    size_t *cdoc = NULL;
    fit_query *qs = NULL;
    qd_lex_doc *docs = NULL;
    qd_lex_stats *st = NULL;
    qd_ann *ann = NULL;
    if (!vdoc)
        goto nomem;
    if ((train && docset_pairs(&ds, train, NULL) != 0) || docset_pairs(&ds, valid, vdoc) != 0)
        goto nomem;
    r.documents = ds.n;

    /* Vectors and terms of every document. */
    rc = docs_encode(m, &ds, threads, &vec, &docs, &st, err, errlen);
    if (rc)
        goto done;

    /* Queries: question1 of the validation duplicates. */
    qs = qd_calloc(valid->n + 1, sizeof *qs);
    if (!qs)
        goto nomem;
    size_t nq = 0;
    for (size_t i = 0; i < valid->n; i++)
        if (valid->dup[i] && vdoc[2 * i] != vdoc[2 * i + 1])
            qs[nq++] = (fit_query){.doc = vdoc[2 * i], .target = (int)vdoc[2 * i + 1]};
    if (nq == 0) {
        rc = qd_errf(err, errlen, QD_ERR_INVAL,
                     "fitting the scoring: the validation pairs hold no duplicates");
        goto done;
    }
    r.queries = nq;
    const size_t K = QD_FIT_MAX_CANDIDATES + 1, C = QD_FIT_MAX_CANDIDATES;
    qv = qd_mallocarray(nq, dim * sizeof *qv);
    sc = qd_mallocarray(nq, K * sizeof *sc);
    ids = qd_mallocarray(nq, K * sizeof *ids);
    cos = qd_mallocarray(nq, C * sizeof *cos);
    bm = qd_mallocarray(nq, C * sizeof *bm);
    cdoc = qd_mallocarray(nq, C * sizeof *cdoc);
    int64_t *docid = qd_mallocarray(ds.n, sizeof *docid);
    if (!qv || !sc || !ids || !cos || !bm || !cdoc || !docid) {
        qd_free(docid);
        goto nomem;
    }
    for (size_t i = 0; i < ds.n; i++)
        docid[i] = (int64_t)i;
    for (size_t q = 0; q < nq; q++)
        memcpy(qv + q * dim, vec + qs[q].doc * dim, dim * sizeof *qv);
    char aerr[QD_ERRMSG_MAX];
    rc = qd_ann_new((int)dim, "Flat", &ann, aerr, sizeof aerr);
    if (rc == 0) {
        qd_ann_set_threads(threads);
        rc = qd_ann_add(ann, vec, docid, ds.n);
        if (rc == 0)
            rc = qd_ann_search(ann, qv, nq, K, sc, ids);
        if (rc)
            snprintf(aerr, sizeof aerr, "%s", qd_ann_errmsg(ann));
    }
    qd_free(docid);
    if (rc) {
        qd_errf(err, errlen, rc, "fitting the scoring: vector index: %s", aerr);
        goto done;
    }
    for (size_t q = 0; q < nq; q++) {
        size_t target = (size_t)qs[q].target, n = 0;
        qs[q].target = -1;
        for (size_t j = 0; j < K && n < C; j++) {
            int64_t id = ids[q * K + j];
            if (id < 0 || (size_t)id == qs[q].doc)
                continue;
            if ((size_t)id == target)
                qs[q].target = (int)n;
            cos[q * C + n] = sc[q * K + j];
            cdoc[q * C + n] = (size_t)id;
            n++;
        }
        qs[q].n = n;
    }

    /* The grid. */
    static const size_t cand[QD_FIT_NCAND] = QD_FIT_CANDIDATES;
    double best_by_c[QD_FIT_NCAND];
    float bk1[QD_FIT_NCAND], bb[QD_FIT_NCAND], ba[QD_FIT_NCAND];
    for (int c = 0; c < QD_FIT_NCAND; c++)
        best_by_c[c] = -1;
    for (size_t i1 = 0; i1 < NK1; i1++)
        for (size_t ib = 0; ib < NB; ib++) {
            qd_bm25_params bp = {grid_k1[i1], grid_b[ib]};
            for (size_t q = 0; q < nq; q++) {
                qd_lex_query lq;
                rc = qd_lex_query_init(&lq, st, &docs[qs[q].doc], bp);
                if (rc)
                    goto nomem;
                for (size_t j = 0; j < qs[q].n; j++)
                    bm[q * C + j] = (float)qd_lex_bm25(&lq, &docs[cdoc[q * C + j]]);
                qd_lex_query_free(&lq);
            }
            for (int c = 0; c < QD_FIT_NCAND; c++)
                for (int ia = 0; ia < GRID_A; ia++) {
                    float a = (float)ia / (GRID_A - 1);
                    double sum = 0;
                    for (size_t q = 0; q < nq; q++) {
                        size_t n = qs[q].n < cand[c] ? qs[q].n : cand[c];
                        sum += rr_of(cos + q * C, bm + q * C, n, qs[q].target, a);
                    }
                    double mrr = sum / (double)nq;
                    if (mrr > best_by_c[c]) {
                        best_by_c[c] = mrr;
                        bk1[c] = bp.k1;
                        bb[c] = bp.b;
                        ba[c] = a;
                    }
                }
        }
    int top = 0;
    for (int c = 1; c < QD_FIT_NCAND; c++)
        if (best_by_c[c] > best_by_c[top])
            top = c;
    int pick = top;
    for (int c = 0; c < top; c++)
        if (best_by_c[c] >= best_by_c[top] - QD_FIT_MRR_SLACK) {
            pick = c;
            break;
        }
    out->candidates = (uint32_t)cand[pick];
    out->bm25 = (qd_bm25_params){bk1[pick], bb[pick]};
    out->fusion = ba[pick];
    memcpy(r.mrr_by_cand, best_by_c, sizeof best_by_c);
    r.mrr_fused = best_by_c[pick];
    /* The two signals alone, at the chosen settings, for the report. */
    double sum_cos = 0, sum_bm = 0;
    for (size_t q = 0; q < nq; q++) {
        qd_lex_query lq;
        rc = qd_lex_query_init(&lq, st, &docs[qs[q].doc], out->bm25);
        if (rc)
            goto nomem;
        size_t n = qs[q].n < out->candidates ? qs[q].n : out->candidates;
        for (size_t j = 0; j < n; j++)
            bm[q * C + j] = (float)qd_lex_bm25(&lq, &docs[cdoc[q * C + j]]);
        qd_lex_query_free(&lq);
        sum_cos += rr_of(cos + q * C, bm + q * C, n, qs[q].target, 1.0f);
        sum_bm += rr_of(cos + q * C, bm + q * C, n, qs[q].target, 0.0f);
    }
    r.mrr_cosine = sum_cos / (double)nq;
    r.mrr_bm25 = sum_bm / (double)nq;

    /* The head, on every validation pair. */
    feat = qd_mallocarray(valid->n, QD_HEAD_NFEAT * sizeof *feat);
    p = qd_mallocarray(valid->n, sizeof *p);
    if (!feat || !p)
        goto nomem;
    rc = head_fit(vec, dim, docs, st, vdoc, valid, feat, &out->head, &r.head, err, errlen);
    if (rc)
        goto done;
    for (size_t i = 0; i < valid->n; i++)
        p[i] = qd_head_prob(&out->head, feat + i * QD_HEAD_NFEAT);
    out->min_p = (float)qd_pairs_best_threshold(p, valid->dup, valid->n, &r.acc_at_min_p);
    if (!(out->min_p >= 0))
        out->min_p = 0;
    if (out->min_p > 1)
        out->min_p = 1;
    r.ece = qd_head_ece(p, valid->dup, valid->n, 10);
    r.brier = qd_head_brier(p, valid->dup, valid->n);
    out->fitted = 1;
    rc = 0;
    goto done;
nomem:
    rc = qd_errf(err, errlen, QD_ERR_NOMEM, "fitting the scoring: out of memory");
done:
    if (docs)
        for (size_t i = 0; i < ds.n; i++)
            qd_lex_doc_free(&docs[i]);
    qd_free(docs);
    qd_lex_stats_free(st);
    qd_ann_free(ann);
    qd_free(vdoc);
    qd_free(vec);
    qd_free(qv);
    qd_free(sc);
    qd_free(ids);
    qd_free(cos);
    qd_free(bm);
    qd_free(cdoc);
    qd_free(qs);
    qd_free(feat);
    qd_free(p);
    docset_free(&ds);
    r.seconds = qd_now() - t0;
    if (rep)
        *rep = r;
    return rc;
}

int qd_fit_head(const qd_model *m, const qd_pairs *pairs, int threads, qd_head *out,
                char *err, size_t errlen)
{
    docset ds;
    if (docset_init(&ds, 2 * pairs->n) != 0)
        return qd_errf(err, errlen, QD_ERR_NOMEM, "fitting the head: out of memory");
    size_t *vdoc = qd_mallocarray(2 * pairs->n + 1, sizeof *vdoc);
    float *feat = qd_mallocarray(pairs->n + 1, QD_HEAD_NFEAT * sizeof *feat);
    float *vec = NULL;
    qd_lex_doc *docs = NULL;
    qd_lex_stats *st = NULL;
    int rc = vdoc && feat && docset_pairs(&ds, pairs, vdoc) == 0 ? 0 : QD_ERR_NOMEM;
    if (rc)
        qd_errf(err, errlen, rc, "fitting the head: out of memory");
    else
        rc = docs_encode(m, &ds, threads, &vec, &docs, &st, err, errlen);
    if (rc == 0) {
        qd_head_report rep;
        rc = head_fit(vec, (size_t)qd_model_dim(m), docs, st, vdoc, pairs, feat, out, &rep,
                      err, errlen);
    }
    for (size_t i = 0; docs && i < ds.n; i++)
        qd_lex_doc_free(&docs[i]);
    qd_free(docs);
    qd_lex_stats_free(st);
    qd_free(vec);
    qd_free(feat);
    qd_free(vdoc);
    docset_free(&ds);
    return rc;
}

int qd_fit_stats(const char *const *text, const size_t *len, size_t n, qd_lex_stats **out)
{
    qd_lex_stats *st = qd_lex_stats_new();
    qd_tokbuf tb;
    qd_tokbuf_init(&tb);
    int rc = st ? 0 : QD_ERR_NOMEM;
    for (size_t i = 0; i < n && rc == 0; i++) {
        qd_lex_doc d;
        rc = qd_lex_doc_make(&tb, text[i], len[i], &d);
        if (rc == 0)
            rc = qd_lex_stats_add(st, &d);
        qd_lex_doc_free(&d);
    }
    qd_tokbuf_free(&tb);
    if (rc) {
        qd_lex_stats_free(st);
        st = NULL;
    }
    *out = st;
    return rc;
}

int qd_fit_pairs_prob(const qd_head *h, const qd_lex_stats *st, const qd_pairs *p,
                      const float *cosine, float *prob)
{
    qd_tokbuf tb;
    qd_tokbuf_init(&tb);
    int rc = 0;
    for (size_t i = 0; i < p->n && rc == 0; i++) {
        qd_lex_doc a, b;
        rc = qd_lex_doc_make(&tb, p->q1[i], p->len1[i], &a);
        if (rc)
            break;
        rc = qd_lex_doc_make(&tb, p->q2[i], p->len2[i], &b);
        if (rc == 0) {
            float feat[QD_HEAD_NFEAT];
            qd_head_features(cosine[i], st, &a, NULL, &b, feat);
            prob[i] = qd_head_prob(h, feat);
            qd_lex_doc_free(&b);
        }
        qd_lex_doc_free(&a);
    }
    qd_tokbuf_free(&tb);
    return rc;
}
