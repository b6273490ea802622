/*
 * rank.c - re-scoring a query's candidates: BM25, the fused score, P(duplicate), and
 * the sort. See rank.h. The query's idf values are read once (qd_lex_query) and each
 * candidate costs one merge of two short sorted term arrays plus the head.
 */
#include "qdup/rank.h"

#include <stdlib.h>
#include <string.h>

#include "qdup/common.h"
#include "qdup/head.h"

static int cmp_cand(const void *a, const void *b)
{
    const qd_rank_cand *x = a, *y = b;
    if (x->identical != y->identical)
        return y->identical - x->identical;
    if (x->score != y->score)
        return x->score < y->score ? 1 : -1;
    if (x->cosine != y->cosine)
        return x->cosine < y->cosine ? 1 : -1;
    return (x->index > y->index) - (x->index < y->index);
}

int qd_rank_rescore(const qd_model_scoring *sc, const qd_lex_stats *st, const qd_lex_doc *q,
                    qd_rank_mode mode, qd_rank_cand *c, size_t n, size_t k)
{
    qd_lex_query lq;
    int rc = qd_lex_query_init(&lq, st, q, sc->bm25);
    if (rc)
        return rc;
    double best = 0;
    for (size_t i = 0; i < n; i++) {
        c[i].bm25 = (float)qd_lex_bm25(&lq, c[i].doc);
        if (c[i].bm25 > best)
            best = c[i].bm25;
    }
    for (size_t i = 0; i < n; i++) {
        c[i].lexical = best > 0 ? (float)(c[i].bm25 / best) : 0.0f;
        c[i].score = mode == QD_RANK_COSINE ? c[i].cosine
                                            : qd_rank_fuse(sc->fusion, c[i].cosine, c[i].lexical);
        /* A repost is the most certain duplicate there is: it ranks first, with the
         * highest score the fusion can give. */
        if (c[i].identical && mode == QD_RANK_FUSED)
            c[i].score = 1.0f;
        c[i].p = 0;
    }
    qsort(c, n, sizeof *c, cmp_cand);
    for (size_t i = 0; i < n && i < k; i++) {
        float feat[QD_HEAD_NFEAT];
        qd_head_features(c[i].cosine, st, q, lq.idf, c[i].doc, feat);
        c[i].p = c[i].identical ? 1.0f : qd_head_prob(&sc->head, feat);
    }
    qd_lex_query_free(&lq);
    return 0;
}

int qd_rank_mode_parse(const char *s, qd_rank_mode *out)
{
    if (strcmp(s, "fused") == 0)
        *out = QD_RANK_FUSED;
    else if (strcmp(s, "cosine") == 0)
        *out = QD_RANK_COSINE;
    else
        return QD_ERR_INVAL;
    return 0;
}

const char *qd_rank_mode_name(qd_rank_mode m)
{
    return m == QD_RANK_COSINE ? "cosine" : "fused";
}
