/*
 * head.c - the duplicate head: features, fitting (Newton's method for the logistic,
 * pool adjacent violators for the isotonic map), the choice between the forms by
 * cross-validation, and the calibration metrics. See head.h.
 *
 * Everything is fitted in double precision and stored as float. The logistic has at
 * most QD_HEAD_NFEAT + 1 unknowns, so each Newton step solves a tiny dense system by
 * Gaussian elimination; a small L2 penalty keeps it solvable when the data separate.
 */
#include "qdup/head.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qdup/common.h"

#define NEWTON_ITERS 100
#define L2_PENALTY 1e-3

void qd_head_features(float cosine, const qd_lex_stats *st, const qd_lex_doc *q,
                      const double *qidf, const qd_lex_doc *d, float feat[QD_HEAD_NFEAT])
{
    feat[QD_HEAD_COSINE] = cosine;
    qd_lex_pair_signals_idf(st, q, qidf, d, feat + 1);
}

static double logit_of(const qd_head *h, const float *f)
{
    double z = h->bias;
    for (int i = 0; i < QD_HEAD_NFEAT; i++)
        if (h->features >> i & 1)
            z += (double)h->w[i] * f[i];
    return z;
}

static double sigmoid(double z)
{
    return z >= 0 ? 1.0 / (1.0 + exp(-z)) : exp(z) / (1.0 + exp(z));
}

static float iso_map(const qd_head *h, float s)
{
    if (h->npoints == 0)
        return s;
    if (s <= h->x[0])
        return h->y[0];
    uint32_t last = h->npoints - 1;
    if (s >= h->x[last])
        return h->y[last];
    uint32_t lo = 0, hi = last; /* x[lo] < s < x[hi] */
    while (hi - lo > 1) {
        uint32_t mid = (lo + hi) / 2;
        if (h->x[mid] <= s)
            lo = mid;
        else
            hi = mid;
    }
    float span = h->x[hi] - h->x[lo];
    float t = span > 0 ? (s - h->x[lo]) / span : 0.0f;
    return h->y[lo] + t * (h->y[hi] - h->y[lo]);
}

float qd_head_prob(const qd_head *h, const float feat[QD_HEAD_NFEAT])
{
    return iso_map(h, (float)sigmoid(logit_of(h, feat)));
}

const char *qd_head_form(const qd_head *h)
{
    int lexical = (h->features & ~1u) != 0;
    if (h->npoints)
        return lexical ? "logistic+isotonic" : "isotonic";
    return lexical ? "logistic" : "platt";
}

int qd_head_check(const qd_head *h, char *err, size_t errlen)
{
    if (!(h->features & 1) || (h->features & ~(uint32_t)QD_HEAD_ALL))
        return qd_errf(err, errlen, QD_ERR_FORMAT, "duplicate head: feature bits 0x%x are "
                       "not a set of known features with the cosine", h->features);
    if (!isfinite(h->bias))
        return qd_errf(err, errlen, QD_ERR_FORMAT, "duplicate head: bias is not finite");
    for (int i = 0; i < QD_HEAD_NFEAT; i++)
        if (!isfinite(h->w[i]))
            return qd_errf(err, errlen, QD_ERR_FORMAT, "duplicate head: weight %d is not "
                           "finite", i);
    if (h->npoints > QD_HEAD_MAX_POINTS)
        return qd_errf(err, errlen, QD_ERR_FORMAT, "duplicate head: %u isotonic points, "
                       "over %d", h->npoints, QD_HEAD_MAX_POINTS);
    for (uint32_t i = 0; i < h->npoints; i++) {
        if (!(h->x[i] >= 0 && h->x[i] <= 1 && h->y[i] >= 0 && h->y[i] <= 1))
            return qd_errf(err, errlen, QD_ERR_FORMAT, "duplicate head: isotonic point %u "
                           "is outside [0, 1]", i);
        if (i > 0 && (h->x[i] < h->x[i - 1] || h->y[i] < h->y[i - 1]))
            return qd_errf(err, errlen, QD_ERR_FORMAT, "duplicate head: isotonic point %u "
                           "is out of order", i);
    }
    return 0;
}

/* --- logistic regression ---------------------------------------------------------------- */

/* Solves a x = b for x (n unknowns, a row-major n x n, both destroyed) by Gaussian
 * elimination with partial pivoting. -1 if a is singular. */
static int solve(double *a, double *b, int n)
{
    for (int c = 0; c < n; c++) {
        int p = c;
        for (int r = c + 1; r < n; r++)
            if (fabs(a[r * n + c]) > fabs(a[p * n + c]))
                p = r;
        if (fabs(a[p * n + c]) < 1e-300)
            return -1;
        if (p != c) {
            for (int k = 0; k < n; k++) {
                double t = a[c * n + k];
                a[c * n + k] = a[p * n + k];
                a[p * n + k] = t;
            }
            double t = b[c];
            b[c] = b[p];
            b[p] = t;
        }
        for (int r = c + 1; r < n; r++) {
            double f = a[r * n + c] / a[c * n + c];
            for (int k = c; k < n; k++)
                a[r * n + k] -= f * a[c * n + k];
            b[r] -= f * b[c];
        }
    }
    for (int c = n - 1; c >= 0; c--) {
        double s = b[c];
        for (int k = c + 1; k < n; k++)
            s -= a[c * n + k] * b[k];
        b[c] = s / a[c * n + c];
    }
    return 0;
}

int qd_head_fit_logistic(const float *feat, const uint8_t *y, size_t n, uint32_t features,
                         qd_head *out)
{
    memset(out, 0, sizeof *out);
    if (n == 0)
        return QD_ERR_INVAL;
    features = (features | 1u) & QD_HEAD_ALL;
    int idx[QD_HEAD_NFEAT], d = 0;
    for (int i = 0; i < QD_HEAD_NFEAT; i++)
        if (features >> i & 1)
            idx[d++] = i;
    int m = d + 1; /* the weights, then the bias */
    double beta[QD_HEAD_NFEAT + 1] = {0};
    /* Start from the base rate, so the first step is a sensible one. */
    double pos = 0;
    for (size_t i = 0; i < n; i++)
        pos += y[i];
    double rate = (pos + 0.5) / ((double)n + 1.0);
    beta[d] = log(rate / (1 - rate));
    for (int it = 0; it < NEWTON_ITERS; it++) {
        double g[QD_HEAD_NFEAT + 1] = {0}, hs[(QD_HEAD_NFEAT + 1) * (QD_HEAD_NFEAT + 1)] = {0};
        for (size_t i = 0; i < n; i++) {
            double x[QD_HEAD_NFEAT + 1];
            for (int k = 0; k < d; k++)
                x[k] = feat[i * QD_HEAD_NFEAT + idx[k]];
            x[d] = 1.0;
            double z = 0;
            for (int k = 0; k < m; k++)
                z += beta[k] * x[k];
            double p = sigmoid(z), r = p - (double)y[i], wgt = p * (1 - p);
            for (int k = 0; k < m; k++) {
                g[k] += r * x[k];
                for (int l = 0; l <= k; l++)
                    hs[k * m + l] += wgt * x[k] * x[l];
            }
        }
        for (int k = 0; k < m; k++)
            for (int l = k + 1; l < m; l++)
                hs[k * m + l] = hs[l * m + k];
        for (int k = 0; k < d; k++) {
            g[k] += L2_PENALTY * beta[k];
            hs[k * m + k] += L2_PENALTY;
        }
        hs[d * m + d] += 1e-9; /* keeps a constant label set solvable */
        if (solve(hs, g, m) != 0)
            break;
        double step = 0;
        for (int k = 0; k < m; k++) {
            beta[k] -= g[k];
            step = fmax(step, fabs(g[k]));
        }
        if (step < 1e-10)
            break;
    }
    out->features = features;
    for (int k = 0; k < d; k++)
        out->w[idx[k]] = (float)beta[k];
    out->bias = (float)beta[d];
    return 0;
}

/* --- isotonic map ------------------------------------------------------------------------ */

typedef struct iso_pt {
    double s;  /* score (the logistic output) */
    double y;  /* label */
} iso_pt;

typedef struct iso_block {
    double lo; /* smallest score */
    double hi; /* largest score */
    double sy; /* sum of labels */
    double w;  /* pairs */
} iso_block;

static int cmp_iso(const void *a, const void *b)
{
    double x = ((const iso_pt *)a)->s, y = ((const iso_pt *)b)->s;
    return (x > y) - (x < y);
}

int qd_head_fit_isotonic(qd_head *h, const float *feat, const uint8_t *y, size_t n)
{
    if (n == 0)
        return QD_ERR_INVAL;
    h->npoints = 0;
    iso_pt *pt = qd_mallocarray(n, sizeof *pt);
    iso_block *bl = qd_mallocarray(n, sizeof *bl);
    if (!pt || !bl) {
        qd_free(pt);
        qd_free(bl);
        return QD_ERR_NOMEM;
    }
    for (size_t i = 0; i < n; i++)
        pt[i] = (iso_pt){(float)sigmoid(logit_of(h, feat + i * QD_HEAD_NFEAT)), y[i]};
    qsort(pt, n, sizeof *pt, cmp_iso);
    size_t nb = 0;
    for (size_t i = 0; i < n;) {
        /* Equal scores form one block: the map is a function of the score. */
        iso_block b = {pt[i].s, pt[i].s, 0, 0};
        size_t j = i;
        for (; j < n && pt[j].s == pt[i].s; j++) {
            b.sy += pt[j].y;
            b.w += 1;
        }
        i = j;
        bl[nb++] = b;
        /* Pool while the last block's mean label is below its predecessor's. */
        while (nb > 1 && bl[nb - 1].sy * bl[nb - 2].w <= bl[nb - 2].sy * bl[nb - 1].w) {
            bl[nb - 2].hi = bl[nb - 1].hi;
            bl[nb - 2].sy += bl[nb - 1].sy;
            bl[nb - 2].w += bl[nb - 1].w;
            nb--;
        }
    }
    /* Too many points (two a block): merge neighbours pairwise (means of a monotone
     * sequence of blocks stay monotone). */
    while (2 * nb > QD_HEAD_MAX_POINTS) {
        size_t k = 0;
        for (size_t i = 0; i < nb; i += 2) {
            iso_block b = bl[i];
            if (i + 1 < nb) {
                b.hi = bl[i + 1].hi;
                b.sy += bl[i + 1].sy;
                b.w += bl[i + 1].w;
            }
            bl[k++] = b;
        }
        nb = k;
    }
    /* Each block is flat from its smallest to its largest score; the map is linear only
     * in the gaps between blocks. */
    size_t np = 0;
    for (size_t i = 0; i < nb; i++) {
        float mean = (float)(bl[i].sy / bl[i].w);
        float ends[2] = {(float)bl[i].lo, (float)bl[i].hi};
        for (int e = 0; e < 2; e++) {
            if (e == 1 && ends[1] <= ends[0])
                break;
            h->x[np] = ends[e];
            h->y[np] = mean;
            if (np > 0 && h->y[np] < h->y[np - 1]) /* float rounding only */
                h->y[np] = h->y[np - 1];
            if (np > 0 && h->x[np] < h->x[np - 1])
                h->x[np] = h->x[np - 1];
            np++;
        }
    }
    h->npoints = (uint32_t)np;
    qd_free(pt);
    qd_free(bl);
    return 0;
}

/* --- choosing the form ------------------------------------------------------------------- */

/* Fits form f (0 platt, 1 logistic, 2 isotonic, 3 logistic+isotonic). */
static int fit_form(int f, const float *feat, const uint8_t *y, size_t n, qd_head *out)
{
    int rc = qd_head_fit_logistic(feat, y, n, f == 1 || f == 3 ? QD_HEAD_ALL : 1u, out);
    if (rc == 0 && f >= 2)
        rc = qd_head_fit_isotonic(out, feat, y, n);
    return rc;
}

int qd_head_fit_best(const float *feat, const uint8_t *y, size_t n, int folds, qd_head *out,
                     qd_head_report *rep)
{
    memset(out, 0, sizeof *out);
    if (n < (size_t)folds || folds < 2)
        return QD_ERR_INVAL;
    float *tf = qd_mallocarray(n, QD_HEAD_NFEAT * sizeof *tf);
    uint8_t *ty = qd_malloc(n);
    qd_head *h = qd_malloc(sizeof *h);
    if (!tf || !ty || !h) {
        qd_free(tf);
        qd_free(ty);
        qd_free(h);
        return QD_ERR_NOMEM;
    }
    double brier[4] = {0};
    int rc = 0;
    for (int f = 0; f < 4 && rc == 0; f++) {
        double se = 0;
        for (int k = 0; k < folds && rc == 0; k++) {
            size_t m = 0;
            for (size_t i = 0; i < n; i++)
                if ((int)(i % (size_t)folds) != k) {
                    memcpy(tf + m * QD_HEAD_NFEAT, feat + i * QD_HEAD_NFEAT,
                           QD_HEAD_NFEAT * sizeof *tf);
                    ty[m++] = y[i];
                }
            rc = fit_form(f, tf, ty, m, h);
            for (size_t i = (size_t)k; rc == 0 && i < n; i += (size_t)folds) {
                double p = qd_head_prob(h, feat + i * QD_HEAD_NFEAT);
                se += (p - y[i]) * (p - y[i]);
            }
        }
        brier[f] = se / (double)n;
    }
    int best = brier[2] < brier[0] ? 2 : 0;
    int best_lex = brier[3] < brier[1] ? 3 : 1;
    if (brier[best_lex] + QD_HEAD_MIN_GAIN <= brier[best])
        best = best_lex;
    if (rc == 0)
        rc = fit_form(best, feat, y, n, out);
    if (rep) {
        memcpy(rep->cv_brier, brier, sizeof brier);
        rep->chosen = best;
    }
    qd_free(tf);
    qd_free(ty);
    qd_free(h);
    return rc;
}

/* --- metrics -------------------------------------------------------------------------------- */

double qd_head_ece(const float *p, const uint8_t *y, size_t n, int bins)
{
    if (n == 0 || bins <= 0)
        return 0;
    double *sp = qd_calloc((size_t)bins, sizeof *sp), *sy = qd_calloc((size_t)bins, sizeof *sy);
    size_t *cnt = qd_calloc((size_t)bins, sizeof *cnt);
    double ece = NAN;
    if (sp && sy && cnt) {
        for (size_t i = 0; i < n; i++) {
            int b = (int)(p[i] * bins);
            b = b < 0 ? 0 : b >= bins ? bins - 1 : b;
            sp[b] += p[i];
            sy[b] += y[i];
            cnt[b]++;
        }
        ece = 0;
        for (int b = 0; b < bins; b++)
            if (cnt[b])
                ece += fabs(sy[b] - sp[b]) / (double)n;
    }
    qd_free(sp);
    qd_free(sy);
    qd_free(cnt);
    return ece;
}

double qd_head_brier(const float *p, const uint8_t *y, size_t n)
{
    if (n == 0)
        return 0;
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += ((double)p[i] - y[i]) * ((double)p[i] - y[i]);
    return s / (double)n;
}
