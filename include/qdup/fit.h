/*
 * fit.h - fitting a model's scoring (model.h: the fusion weight, BM25's parameters,
 * the candidates re-scored, the duplicate head and its operating point) on labelled
 * pairs, with the encoder left as it is.
 *
 * Ranking settings, by retrieval MRR@10 on the validation pairs: every distinct
 * question of the training and validation files is a document (the same text is one
 * document); question1 of each validation duplicate pair is a query, its own document
 * excluded, question2's document the target. The nearest QD_FIT_MAX_CANDIDATES
 * vectors of each query are re-scored over a grid of k1, b and the fusion weight a,
 * for each candidate count of QD_FIT_CANDIDATES (the first c of them); the settings
 * with the best MRR@10 win, and the smallest candidate count within QD_FIT_MRR_SLACK of
 * the best MRR is kept (fewer candidates, less work per query). The term statistics
 * are those of all the documents.
 *
 * The head, by cross-validated Brier score on the validation pairs (head.h), over the
 * cosine and the pair signals with the same statistics; its operating point min_p is
 * the threshold on p that maximizes accuracy on the validation pairs.
 *
 * Never the test split: the caller passes training and validation files only.
 */
#ifndef QDUP_FIT_H
#define QDUP_FIT_H

#include <stddef.h>

#include "qdup/head.h"
#include "qdup/model.h"
#include "qdup/pairs.h"

#ifdef __cplusplus
extern "C" {
#endif

#define QD_FIT_MAX_CANDIDATES 400
#define QD_FIT_NCAND 4
#define QD_FIT_CANDIDATES {50, 100, 200, 400}
#define QD_FIT_MRR_SLACK 0.005

/* What a fit measured, all on the validation pairs. */
typedef struct qd_fit_report {
    size_t documents;              /* distinct questions indexed */
    size_t queries;                /* validation duplicates used as queries */
    double mrr_cosine;             /* MRR@10 ranking by the cosine alone */
    double mrr_bm25;               /* MRR@10 ranking the candidates by BM25 alone (the
                                      chosen k1, b; the candidates of the cosine) */
    double mrr_fused;              /* MRR@10 of the chosen settings */
    double mrr_by_cand[QD_FIT_NCAND]; /* best MRR@10 for each candidate count */
    qd_head_report head;           /* the head's choice */
    double acc_at_min_p;           /* validation accuracy at the operating point */
    double ece;                    /* validation ECE of the head (in-sample) */
    double brier;                  /* validation Brier score (in-sample) */
    double seconds;                /* the whole fit */
} qd_fit_report;

/* Fits m's scoring on train (documents only) and valid (documents, queries and head)
 * into *out (fitted = 1; m is not changed: qd_model_set_scoring does that). threads:
 * 0 for all cores. err says what failed. */
int qd_fit_scoring(const qd_model *m, const qd_pairs *train, const qd_pairs *valid,
                   int threads, qd_model_scoring *out, qd_fit_report *rep, char *err,
                   size_t errlen);

/* The duplicate head alone, as qd_fit_scoring(m, pairs, pairs, ...) fits it: over the
 * cosine and the pair signals of every pair, with the term statistics of the pairs'
 * distinct questions. For judging a model by the head it would get (qdup-train's
 * epochs) in a fraction of the whole fit's time. */
int qd_fit_head(const qd_model *m, const qd_pairs *pairs, int threads, qd_head *out,
                char *err, size_t errlen);

/* The term statistics of n texts (each counted once per occurrence in the list) into
 * *out (NULL on failure; free with qd_lex_stats_free). */
int qd_fit_stats(const char *const *text, const size_t *len, size_t n, qd_lex_stats **out);

/* The head's P(duplicate) of every pair of p (p->n) into prob, given the pairs'
 * cosines and the term statistics st of the pair signals: what the daemon reports for
 * the pair. */
int qd_fit_pairs_prob(const qd_head *h, const qd_lex_stats *st, const qd_pairs *p,
                      const float *cosine, float *prob);

#ifdef __cplusplus
}
#endif

#endif
