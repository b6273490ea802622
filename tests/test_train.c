/*
 * test_train.c - training against PyTorch, and training that learns.
 *
 * tests/fixtures/step_tiny.{qdm,txt} (tools/torch_ref.py) hold a tiny model, a batch of
 * 6 pairs, and what PyTorch computes for it: the course's triplet loss, its gradient
 * w.r.t. every weight, and the weights after one Adam step. The C layers must agree.
 * Then whole runs: 64 duplicate pairs are learned to a loss under 0.05, a run is
 * reproducible for a seed and thread count, and the metrics are right on known cases.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../encoder/lstm_impl.h"
#include "../encoder/model_impl.h"
#include "../encoder/train_impl.h"
#include "qdup/common.h"
#include "qdup/model.h"
#include "qdup/pairs.h"
#include "qdup/train.h"
#include "testutil.h"

static char err[QD_ERRMSG_MAX];

/* Reads count floats following `key ` on its line of text. */
static float *read_floats(const char *text, const char *key, size_t count)
{
    char pat[32];
    snprintf(pat, sizeof pat, "\n%s ", key);
    const char *p = strstr(text, pat);
    if (!p)
        fail_msg("fixture lacks \"%s\"", key);
    p += strlen(pat);
    float *v = malloc(count * sizeof *v);
    for (size_t i = 0; i < count; i++) {
        char *end;
        v[i] = strtof(p, &end);
        if (end == p)
            fail_msg("fixture \"%s\": %zu values, expected %zu", key, i, count);
        p = end;
    }
    return v;
}

static void test_step_matches_pytorch(void **state)
{
    (void)state;
    qd_model *m;
    if (qd_model_load(qt_path(qt_fixtures_dir(), "step_tiny.qdm"), &m, err, sizeof err))
        fail_msg("%s", err);
    char *text = qt_read_file(qt_path(qt_fixtures_dir(), "step_tiny.txt"), NULL);
    /* The questions, as embedding rows. */
    qd_tokseqs s;
    memset(&s, 0, sizeof s);
    size_t cap = strlen(text);
    s.qoff = calloc(cap, sizeof *s.qoff);
    s.toff = calloc(cap, sizeof *s.toff);
    s.rows = calloc(cap, sizeof *s.rows);
    for (const char *p = text; *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : p + strlen(p)) {
        if (p[0] == 'q' && p[1] == ' ')
            s.qoff[s.n++] = (uint32_t)s.ntok;
        else if (p[0] == 't' && p[1] == ' ') {
            s.toff[s.ntok++] = (uint32_t)s.nrows;
            s.rows[s.nrows++] = (int32_t)strtol(p + 2, NULL, 10);
        }
    }
    s.qoff[s.n] = (uint32_t)s.ntok;
    s.toff[s.ntok] = (uint32_t)s.nrows;
    size_t B = s.n / 2, H = m->hdr.hidden;
    assert_int_equal(B, 6);

    float *want_loss = read_floats(text, "loss", 1);
    float *want_grad = read_floats(text, "grad", m->nparams);
    float *want_adam = read_floats(text, "adam", m->nparams);

    qd_fwd f;
    qd_bwd b;
    qd_grads g;
    qd_fwd_init(&f);
    qd_bwd_init(&b);
    assert_int_equal(qd_grads_init(&g, &m->hdr), 0);
    assert_int_equal(qd_lstm_forward(&m->hdr, &m->p, &s, NULL, 0, &f), 0);
    float *S = malloc(B * B * sizeof *S), *dout = malloc(2 * B * H * sizeof *dout);
    float loss = qd_triplet_loss(f.out, f.out + B * H, B, B, H, 0.25f, S, dout, dout + B * H);
    qt_assert_near(loss, want_loss[0], 1e-6);
    assert_int_equal(qd_lstm_backward(&m->hdr, &m->p, &s, &f, dout, &b, &g), 0);
    double worst = 0;
    for (size_t i = 0; i < m->nparams; i++) {
        double d = fabs((double)g.data[i] - want_grad[i]);
        worst = d > worst ? d : worst;
    }
    printf("# loss %.9g (PyTorch %.9g); max gradient difference %.3g\n", (double)loss,
           (double)want_loss[0], worst);
    if (!(worst < 1e-6))
        fail_msg("gradient differs from PyTorch's by up to %.3g", worst);

    /* One Adam step with PyTorch's gradient: the same weights as torch.optim.Adam. */
    qd_adam adam;
    assert_int_equal(qd_adam_init(&adam, m->nparams, 0.01f), 0);
    qd_adam_step(&adam, m->param_data, want_grad);
    worst = 0;
    for (size_t i = 0; i < m->nparams; i++) {
        double d = fabs((double)m->param_data[i] - want_adam[i]);
        worst = d > worst ? d : worst;
    }
    printf("# Adam step: max difference from PyTorch %.3g\n", worst);
    if (!(worst < 1e-6))
        fail_msg("Adam step differs from PyTorch's by up to %.3g", worst);

    qd_adam_free(&adam);
    qd_grads_free(&g);
    qd_bwd_free(&b);
    qd_fwd_free(&f);
    free(S);
    free(dout);
    free(want_loss);
    free(want_grad);
    free(want_adam);
    free(s.qoff);
    free(s.toff);
    free(s.rows);
    free(text);
    qd_model_free(m);
}

static void test_clip_grad_norm(void **state)
{
    (void)state;
    float g[4] = {3, 0, 4, 0};
    qt_assert_near(qd_clip_grad_norm(g, 4, 10), 5, 1e-9); /* under the limit: unchanged */
    qt_assert_near(g[0], 3, 0);
    qt_assert_near(qd_clip_grad_norm(g, 4, 1), 5, 1e-9);
    qt_assert_near(g[0], 0.6, 1e-6);
    qt_assert_near(g[2], 0.8, 1e-6);
}

static void test_metrics(void **state)
{
    (void)state;
    float s[6] = {0.9f, 0.8f, 0.7f, 0.6f, 0.5f, 0.4f};
    uint8_t all_right[6] = {1, 1, 1, 0, 0, 0}, inverted[6] = {0, 0, 0, 1, 1, 1};
    uint8_t one_swap[6] = {1, 1, 0, 1, 0, 0};
    qt_assert_near(qd_pairs_auc(s, all_right, 6), 1.0, 1e-12);
    qt_assert_near(qd_pairs_auc(s, inverted, 6), 0.0, 1e-12);
    qt_assert_near(qd_pairs_auc(s, one_swap, 6), 8.0 / 9.0, 1e-12);
    float tied[4] = {0.5f, 0.5f, 0.5f, 0.5f};
    uint8_t mixed[4] = {1, 0, 1, 0};
    qt_assert_near(qd_pairs_auc(tied, mixed, 4), 0.5, 1e-12);
    qt_assert_near(qd_pairs_accuracy_at(s, all_right, 6, 0.65), 1.0, 1e-12);
    qt_assert_near(qd_pairs_accuracy_at(s, all_right, 6, 0.85), 4.0 / 6.0, 1e-12);
    double acc;
    double thr = qd_pairs_best_threshold(s, all_right, 6, &acc);
    qt_assert_near(acc, 1.0, 1e-12);
    assert_true(thr > 0.6 && thr < 0.7);
    thr = qd_pairs_best_threshold(s, one_swap, 6, &acc);
    qt_assert_near(acc, 5.0 / 6.0, 1e-12);
    qt_assert_near(qd_pairs_accuracy_at(s, one_swap, 6, thr), acc, 1e-12);
}

/* n duplicate pairs from the shared training data, or made up if it is absent. */
static qd_pairs *some_pairs(size_t n)
{
    qd_pairs *all;
    const char *path = qt_path(qt_data_dir(), "quora/train.tsv");
    if (qd_pairs_load(path, NULL, NULL, &all, err, sizeof err) != 0)
        return NULL;
    qd_pairs *p = calloc(1, sizeof *p);
    p->q1 = calloc(n, sizeof *p->q1);
    p->q2 = calloc(n, sizeof *p->q2);
    p->len1 = calloc(n, sizeof *p->len1);
    p->len2 = calloc(n, sizeof *p->len2);
    p->dup = calloc(n, 1);
    p->qid1 = calloc(n, sizeof *p->qid1);
    p->qid2 = calloc(n, sizeof *p->qid2);
    size_t arena = 0;
    for (size_t i = 0; i < all->n && p->n < n; i++)
        if (all->dup[i])
            arena += all->len1[i] + all->len2[i] + 2;
    p->arena = malloc(arena);
    char *w = p->arena;
    for (size_t i = 0; i < all->n && p->n < n; i++) {
        if (!all->dup[i])
            continue;
        size_t k = p->n++;
        memcpy(w, all->q1[i], all->len1[i] + 1);
        p->q1[k] = w;
        p->len1[k] = all->len1[i];
        w += all->len1[i] + 1;
        memcpy(w, all->q2[i], all->len2[i] + 1);
        p->q2[k] = w;
        p->len2[k] = all->len2[i];
        w += all->len2[i] + 1;
        p->dup[k] = 1;
        p->qid1[k] = all->qid1[i];
        p->qid2[k] = all->qid2[i];
    }
    qd_pairs_free(all);
    return p;
}

static qd_train_opts small_recipe(void)
{
    qd_train_opts o;
    assert_int_equal(qd_train_recipe("seed", &o), 0);
    o.emb_dim = 32;
    o.hidden = 32;
    o.batch = 16;
    o.epochs = 40;
    o.threads = 2;
    o.seed = 3;
    return o;
}

static void test_learns_64_pairs(void **state)
{
    (void)state;
    qd_pairs *p = some_pairs(64);
    if (!p)
        skip();
    assert_int_equal(p->n, 64);
    qd_train_opts o = small_recipe();
    qd_model *m;
    qd_train_result r;
    if (qd_train(&o, p, NULL, NULL, NULL, &m, &r, err, sizeof err))
        fail_msg("%s", err);
    printf("# 64 pairs, %d epochs: last loss %.4f\n", r.epochs_run, r.last_loss);
    assert_true(r.last_loss < 0.05);
    /* The pairs it learned now score far above pairs it did not: each q1 against the
     * next pair's q2. */
    float *s = malloc(p->n * sizeof *s);
    assert_int_equal(qd_score_pairs(m, p, 1, s), 0);
    double same = 0;
    for (size_t i = 0; i < p->n; i++)
        same += s[i];
    const char *tmp = p->q2[0];
    size_t tmplen = p->len2[0];
    for (size_t i = 0; i + 1 < p->n; i++) {
        p->q2[i] = p->q2[i + 1];
        p->len2[i] = p->len2[i + 1];
    }
    p->q2[p->n - 1] = tmp;
    p->len2[p->n - 1] = tmplen;
    float *s2 = malloc(p->n * sizeof *s2);
    assert_int_equal(qd_score_pairs(m, p, 1, s2), 0);
    double other = 0;
    for (size_t i = 0; i < p->n; i++)
        other += s2[i];
    printf("# mean cosine: duplicates %.3f, shifted pairs %.3f\n", same / (double)p->n,
           other / (double)p->n);
    assert_true(same / (double)p->n > other / (double)p->n + 0.25);
    free(s);
    free(s2);
    qd_model_free(m);
    qd_pairs_free(p);
}

static void test_reproducible(void **state)
{
    (void)state;
    qd_pairs *p = some_pairs(64);
    if (!p)
        skip();
    qd_train_opts o = small_recipe();
    o.epochs = 3;
    uint8_t *bytes[2];
    size_t len[2];
    for (int run = 0; run < 2; run++) {
        qd_model *m;
        qd_train_result r;
        assert_int_equal(qd_train(&o, p, NULL, NULL, NULL, &m, &r, err, sizeof err), 0);
        assert_int_equal(qd_model_serialize(m, &bytes[run], &len[run]), 0);
        qd_model_free(m);
    }
    assert_int_equal(len[0], len[1]);
    assert_memory_equal(bytes[0], bytes[1], len[0]);
    /* Another seed gives another model. */
    o.seed = 4;
    qd_model *m;
    qd_train_result r;
    assert_int_equal(qd_train(&o, p, NULL, NULL, NULL, &m, &r, err, sizeof err), 0);
    uint8_t *other;
    size_t olen;
    assert_int_equal(qd_model_serialize(m, &other, &olen), 0);
    assert_true(olen != len[0] || memcmp(other, bytes[0], olen) != 0);
    qd_free(other);
    qd_model_free(m);
    qd_free(bytes[0]);
    qd_free(bytes[1]);
    qd_pairs_free(p);
}

static void test_bad_options_refused(void **state)
{
    (void)state;
    qd_pairs *p = some_pairs(8);
    if (!p)
        skip();
    qd_train_opts o = small_recipe();
    qd_model *m = (qd_model *)0x1;
    qd_train_result r;
    o.batch = 16; /* more than the 8 pairs there are */
    assert_int_equal(qd_train(&o, p, NULL, NULL, NULL, &m, &r, err, sizeof err), QD_ERR_INVAL);
    assert_non_null(strstr(err, "fewer than one batch"));
    assert_null(m);
    o.batch = 4;
    o.hard_negatives = 2; /* only duplicates here */
    assert_int_equal(qd_train(&o, p, NULL, NULL, NULL, &m, &r, err, sizeof err), QD_ERR_INVAL);
    assert_non_null(strstr(err, "non-duplicates"));
    assert_int_not_equal(qd_train_recipe("nonsense", &o), 0);
    qd_pairs_free(p);
}

static void test_pair_file_errors(void **state)
{
    (void)state;
    const char *dir = qt_tmp_dir();
    const char *bad = qt_path(dir, "bad.tsv");
    const char *good =
        "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
        "0\t1\t2\tHow?\tWhy?\t1\n"
        "1\t3\t4\tOnly four\tfields\n"
        "2\t5\t6\tA\tB\tmaybe\n"
        "3\t7\t8\t\tB\t0\n"
        "4\t9\t10\tWhat is x?\tWhat's x?\t0\r\n";
    qt_write_file(bad, good, strlen(good));
    qd_pairs *p;
    assert_int_equal(qd_pairs_load(bad, NULL, NULL, &p, err, sizeof err), 0);
    assert_int_equal(p->n, 2);
    assert_int_equal(p->skipped, 3);
    assert_string_equal(p->q2[1], "What's x?");
    assert_int_equal(p->dup[0], 1);
    assert_int_equal(p->qid2[1], 10);
    qd_pairs_free(p);
    const char *nohdr = "just\ttwo\n";
    qt_write_file(bad, nohdr, strlen(nohdr));
    assert_int_equal(qd_pairs_load(bad, NULL, NULL, &p, err, sizeof err), QD_ERR_FORMAT);
    assert_non_null(strstr(err, "bad.tsv:1"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_step_matches_pytorch),
        cmocka_unit_test(test_clip_grad_norm),
        cmocka_unit_test(test_metrics),
        cmocka_unit_test(test_learns_64_pairs),
        cmocka_unit_test(test_reproducible),
        cmocka_unit_test(test_bad_options_refused),
        cmocka_unit_test(test_pair_file_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
