/*
 * test_head.c - the duplicate head on synthetic pairs whose true P(duplicate) is
 * known: the logistic fit recovers the generating weights, the isotonic map is monotone
 * and calibrated, the choice between the forms keeps the cosine alone when the lexical
 * signals are noise and takes them when they carry the label, and the calibration
 * metrics match hand computations.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "qdup/common.h"
#include "qdup/head.h"
#include "testutil.h"

static double sig(double z) { return 1 / (1 + exp(-z)); }

/* n pairs: cosine uniform in [0, 1], signal 1 (Jaccard) uniform; the label drawn with
 * P = sigmoid(b0 + b1 * cosine + b2 * jaccard). */
static void synth(size_t n, double b0, double b1, double b2, uint64_t seed, float *feat,
                  uint8_t *y)
{
    uint64_t rng = seed;
    for (size_t i = 0; i < n; i++) {
        float *f = feat + i * QD_HEAD_NFEAT;
        memset(f, 0, QD_HEAD_NFEAT * sizeof *f);
        f[0] = (float)qt_uniform(&rng, 0, 1);
        f[1] = (float)qt_uniform(&rng, 0, 1);
        for (int k = 2; k < QD_HEAD_NFEAT; k++)
            f[k] = (float)qt_uniform(&rng, 0, 1); /* noise */
        double p = sig(b0 + b1 * f[0] + b2 * f[1]);
        y[i] = qt_uniform(&rng, 0, 1) < p;
    }
}

static void test_logistic_recovers_weights(void **state)
{
    (void)state;
    size_t n = 40000;
    float *feat = malloc(n * QD_HEAD_NFEAT * sizeof *feat);
    uint8_t *y = malloc(n);
    synth(n, -5, 8, 2, 1, feat, y);
    qd_head h;
    assert_int_equal(qd_head_fit_logistic(feat, y, n, QD_HEAD_ALL, &h), 0);
    qt_assert_near(h.bias, -5, 0.35);
    qt_assert_near(h.w[0], 8, 0.4);
    qt_assert_near(h.w[1], 2, 0.25);
    for (int k = 2; k < QD_HEAD_NFEAT; k++)
        qt_assert_near(h.w[k], 0, 0.25);
    assert_string_equal(qd_head_form(&h), "logistic");
    assert_int_equal(qd_head_check(&h, NULL, 0), 0);
    /* Cosine only: Platt. Weights of unused features stay 0. */
    assert_int_equal(qd_head_fit_logistic(feat, y, n, 1, &h), 0);
    assert_string_equal(qd_head_form(&h), "platt");
    for (int k = 1; k < QD_HEAD_NFEAT; k++)
        assert_true(h.w[k] == 0);
    /* The probability is the sigmoid of the linear form. */
    float f[QD_HEAD_NFEAT] = {0.7f, 0.2f, 0, 0, 0};
    qt_assert_near(qd_head_prob(&h, f), sig(h.bias + h.w[0] * 0.7), 1e-6);
    free(feat);
    free(y);
}

static void test_isotonic_monotone_and_calibrated(void **state)
{
    (void)state;
    size_t n = 20000;
    float *feat = malloc(n * QD_HEAD_NFEAT * sizeof *feat);
    uint8_t *y = malloc(n);
    /* A label that is a step function of the cosine: no sigmoid fits it, isotonic does. */
    uint64_t rng = 3;
    for (size_t i = 0; i < n; i++) {
        float *f = feat + i * QD_HEAD_NFEAT;
        memset(f, 0, QD_HEAD_NFEAT * sizeof *f);
        f[0] = (float)qt_uniform(&rng, 0, 1);
        double p = f[0] < 0.5 ? 0.1 : 0.8;
        y[i] = qt_uniform(&rng, 0, 1) < p;
    }
    qd_head h;
    assert_int_equal(qd_head_fit_logistic(feat, y, n, 1, &h), 0);
    assert_int_equal(qd_head_fit_isotonic(&h, feat, y, n), 0);
    assert_string_equal(qd_head_form(&h), "isotonic");
    assert_true(h.npoints >= 2 && h.npoints <= QD_HEAD_MAX_POINTS);
    assert_int_equal(qd_head_check(&h, NULL, 0), 0);
    float prev = -1;
    for (int i = 0; i <= 100; i++) {
        float f[QD_HEAD_NFEAT] = {(float)i / 100, 0, 0, 0, 0};
        float p = qd_head_prob(&h, f);
        assert_true(p >= prev);
        prev = p;
    }
    float lo[QD_HEAD_NFEAT] = {0.25f, 0, 0, 0, 0}, hi[QD_HEAD_NFEAT] = {0.75f, 0, 0, 0, 0};
    qt_assert_near(qd_head_prob(&h, lo), 0.1, 0.05);
    qt_assert_near(qd_head_prob(&h, hi), 0.8, 0.05);
    float *p = malloc(n * sizeof *p);
    for (size_t i = 0; i < n; i++)
        p[i] = qd_head_prob(&h, feat + i * QD_HEAD_NFEAT);
    double ece = qd_head_ece(p, y, n, 10);
    if (!(ece < 0.02))
        fail_msg("ECE %g", ece);
    free(p);
    free(feat);
    free(y);
}

static void test_choice_follows_the_data(void **state)
{
    (void)state;
    size_t n = 6000;
    float *feat = malloc(n * QD_HEAD_NFEAT * sizeof *feat);
    uint8_t *y = malloc(n);
    qd_head h;
    qd_head_report rep;
    /* The lexical signals are noise: the cosine alone is kept. */
    synth(n, -4, 8, 0, 11, feat, y);
    assert_int_equal(qd_head_fit_best(feat, y, n, 5, &h, &rep), 0);
    assert_true(rep.chosen == 0 || rep.chosen == 2);
    assert_int_equal(h.features, 1);
    /* Jaccard carries much of the label: a form with the lexical signals wins. */
    synth(n, -6, 4, 8, 12, feat, y);
    assert_int_equal(qd_head_fit_best(feat, y, n, 5, &h, &rep), 0);
    assert_true(rep.chosen == 1 || rep.chosen == 3);
    assert_true(h.features & 2);
    assert_true(rep.cv_brier[rep.chosen] + QD_HEAD_MIN_GAIN <= rep.cv_brier[0]);
    assert_int_equal(qd_head_fit_best(feat, y, 3, 5, &h, NULL), QD_ERR_INVAL);
    free(feat);
    free(y);
}

static void test_metrics_by_hand(void **state)
{
    (void)state;
    /* Bin [0.1, 0.2): p 0.1, 0.15 with labels 0, 1: |1 - 0.25| = 0.75.
     * Bin [0.9, 1.0]: p 0.9, 1.0 with labels 1, 1: |2 - 1.9| = 0.1. ECE = 0.85 / 4. */
    float p[4] = {0.1f, 0.15f, 0.9f, 1.0f};
    uint8_t y[4] = {0, 1, 1, 1};
    qt_assert_near(qd_head_ece(p, y, 4, 10), 0.85 / 4, 1e-6);
    double brier = (0.01 + 0.7225 + 0.01 + 0) / 4;
    qt_assert_near(qd_head_brier(p, y, 4), brier, 1e-6);
    qt_assert_near(qd_head_ece(p, y, 0, 10), 0, 0);
}

static void test_check_refuses_bad_heads(void **state)
{
    (void)state;
    qd_head h;
    memset(&h, 0, sizeof h);
    h.features = 1;
    assert_int_equal(qd_head_check(&h, NULL, 0), 0);
    char err[QD_ERRMSG_MAX];
    h.features = 2; /* no cosine */
    assert_int_equal(qd_head_check(&h, err, sizeof err), QD_ERR_FORMAT);
    h.features = 1;
    h.w[0] = NAN;
    assert_int_equal(qd_head_check(&h, err, sizeof err), QD_ERR_FORMAT);
    h.w[0] = 1;
    h.npoints = 2;
    h.x[0] = 0.5f;
    h.x[1] = 0.4f; /* out of order */
    h.y[0] = 0.1f;
    h.y[1] = 0.2f;
    assert_int_equal(qd_head_check(&h, err, sizeof err), QD_ERR_FORMAT);
    assert_non_null(strstr(err, "out of order"));
    h.npoints = QD_HEAD_MAX_POINTS + 1;
    assert_int_equal(qd_head_check(&h, err, sizeof err), QD_ERR_FORMAT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_logistic_recovers_weights),
        cmocka_unit_test(test_isotonic_monotone_and_calibrated),
        cmocka_unit_test(test_choice_follows_the_data),
        cmocka_unit_test(test_metrics_by_hand),
        cmocka_unit_test(test_check_refuses_bad_heads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
