/*
 * head.h - the duplicate head: a calibrated probability that two questions are
 * duplicates, from the encoder's cosine and a few cheap pair signals (lex.h).
 *
 * The head is a logistic regression over the features it uses (the cosine always,
 * the lexical signals when they help), optionally followed by an isotonic map of its
 * output: p = iso(sigmoid(bias + sum_i w_i * f_i)). With only the cosine and no map it
 * is Platt scaling; with the map and only the cosine it is isotonic regression on the
 * cosine (the sigmoid is monotone). The map is piecewise linear through its points
 * and flat beyond the first and last; isotonic regression gives two points (the
 * ends) to each block of pooled pairs, so it is flat over each block and linear only
 * between blocks.
 *
 * Fitting (qd_head_fit_best) tries the four forms -- Platt, logistic over all
 * features, isotonic over the cosine, isotonic over the logistic -- by k-fold cross
 * validation on the pairs given (the validation split: never the test split), scores
 * each by its Brier score on the held-out folds, and keeps the best, refitted on all
 * pairs. A form with the lexical signals is kept only if it beats the best cosine-only
 * form by QD_HEAD_MIN_GAIN in Brier score: where nothing else helps, the cosine alone.
 */
#ifndef QDUP_HEAD_H
#define QDUP_HEAD_H

#include <stddef.h>
#include <stdint.h>

#include "qdup/lex.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Features, in this order: the cosine, then the pair signals of lex.h. */
enum {
    QD_HEAD_COSINE = 0,
    QD_HEAD_NFEAT = 1 + QD_LEX_NSIGNALS
};
#define QD_HEAD_ALL ((1u << QD_HEAD_NFEAT) - 1)
/* Most points of an isotonic map. */
#define QD_HEAD_MAX_POINTS 256
/* Brier score the lexical signals must gain to be kept (see above). */
#define QD_HEAD_MIN_GAIN 0.001

typedef struct qd_head {
    uint32_t features;              /* bit i: feature i enters the logistic; bit 0 set */
    float w[QD_HEAD_NFEAT];         /* weight of each feature (0 where not used) */
    float bias;                     /* the logistic's intercept */
    uint32_t npoints;               /* points of the isotonic map (0: none) */
    float x[QD_HEAD_MAX_POINTS];    /* (npoints) logistic outputs, ascending */
    float y[QD_HEAD_MAX_POINTS];    /* (npoints) probabilities, non-decreasing, 0..1 */
} qd_head;

/* The features of a pair: its cosine and, from the two questions' terms and the
 * collection's statistics, the pair signals (qidf: q's idf values, or NULL: looked up;
 * see qd_lex_pair_signals_idf). */
void qd_head_features(float cosine, const qd_lex_stats *st, const qd_lex_doc *q,
                      const double *qidf, const qd_lex_doc *d, float feat[QD_HEAD_NFEAT]);

/* P(duplicate) for one pair's features. */
float qd_head_prob(const qd_head *h, const float feat[QD_HEAD_NFEAT]);

/* Checks a head read from a file: finite values, known feature bits with the cosine
 * among them, points within bounds and in order. 0 or QD_ERR_FORMAT with err. */
int qd_head_check(const qd_head *h, char *err, size_t errlen);

/* "platt", "logistic", "isotonic" or "logistic+isotonic". */
const char *qd_head_form(const qd_head *h);

/* Fits the logistic over `features` (bits; the cosine is always added) to n pairs:
 * feat (n, QD_HEAD_NFEAT) and labels y (n) of 0/1, by Newton's method with a small L2
 * penalty on the weights. The result has no isotonic map. QD_ERR_INVAL for n == 0,
 * QD_ERR_NOMEM. */
int qd_head_fit_logistic(const float *feat, const uint8_t *y, size_t n, uint32_t features,
                         qd_head *out);

/* Adds to h an isotonic map of its logistic output fitted to the same kind of data
 * (pool adjacent violators; at most QD_HEAD_MAX_POINTS points). */
int qd_head_fit_isotonic(qd_head *h, const float *feat, const uint8_t *y, size_t n);

/* What qd_head_fit_best measured. */
typedef struct qd_head_report {
    double cv_brier[4]; /* held-out Brier score of each form, in the order above */
    int chosen;         /* index of the form kept */
} qd_head_report;

/* Chooses and fits a head as described above (folds >= 2). rep may be NULL. */
int qd_head_fit_best(const float *feat, const uint8_t *y, size_t n, int folds, qd_head *out,
                     qd_head_report *rep);

/* --- calibration metrics -------------------------------------------------------------- */

/* Expected calibration error over `bins` equal-width bins of p in [0, 1]: the sum over
 * bins of (pairs in the bin / n) * |mean label - mean p| in the bin. */
double qd_head_ece(const float *p, const uint8_t *y, size_t n, int bins);
/* Mean of (p - y)^2. */
double qd_head_brier(const float *p, const uint8_t *y, size_t n);

#ifdef __cplusplus
}
#endif

#endif
