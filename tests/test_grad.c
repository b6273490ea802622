/*
 * test_grad.c - every backward pass against central finite differences in double
 * precision.
 *
 * The test carries its own double-precision encoder, written question by question
 * with plain loops (nothing shared with encoder/lstm.c), and differentiates an
 * objective L = sum(w * out) numerically for every weight. The C backward pass (float,
 * batched, packed, BLAS) must agree within a relative error of 1e-3, on random small
 * shapes with questions of mixed lengths (empty ones included), with and without
 * n-gram rows. The L2-normalize layer and the triplet loss are checked the same way on
 * their own.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../encoder/lstm_impl.h"
#include "../encoder/model_impl.h"
#include "../encoder/train_impl.h"
#include "qdup/common.h"
#include "qdup/model.h"
#include "testutil.h"

/* --- a double-precision encoder --------------------------------------------------------- */

static double sigm(double x)
{
    return 1.0 / (1.0 + exp(-x));
}

/* Dropout of the problem being checked (0: none), and its seed. */
static float ref_dropout;
static uint64_t ref_dropout_seed;

/* out (D) = the encoder's vector for question q of s, with weights w (model order). */
static void ref_encode(const qd_model_hdr *h, const double *w, const qd_tokseqs *s, size_t q,
                       double *out)
{
    size_t E = h->emb_dim, H = h->hidden, R = qd_model_rows(h), D = qd_model_out_dim(h);
    const double *emb = w, *wx = emb + R * E, *wh = wx + 4 * H * E, *b = wh + 4 * H * H;
    double *hs = calloc(H, sizeof *hs), *cs = calloc(H, sizeof *cs);
    double *x = calloc(E, sizeof *x), *g = calloc(4 * H, sizeof *g);
    double *sum = calloc(D, sizeof *sum), *mx = calloc(H, sizeof *mx);
    double *xsum = calloc(E, sizeof *xsum);
    size_t len = qd_tokseqs_len(s, q);
    for (size_t t = 0; t < len; t++) {
        size_t tok = s->qoff[q] + t;
        uint32_t r0 = s->toff[tok], r1 = s->toff[tok + 1];
        for (size_t k = 0; k < E; k++) {
            x[k] = 0;
            for (uint32_t r = r0; r < r1; r++)
                x[k] += emb[(size_t)s->rows[r] * E + k];
            x[k] /= (double)(r1 - r0);
            if (ref_dropout > 0)
                x[k] *= qd_dropout_scale(ref_dropout_seed, q, t, k, ref_dropout);
            xsum[k] += x[k];
        }
        for (size_t i = 0; i < 4 * H; i++) {
            g[i] = b[i];
            for (size_t k = 0; k < E; k++)
                g[i] += wx[i * E + k] * x[k];
            for (size_t k = 0; k < H; k++)
                g[i] += wh[i * H + k] * hs[k];
        }
        for (size_t k = 0; k < H; k++) {
            double ig = sigm(g[k]), fg = sigm(g[H + k]), u = tanh(g[2 * H + k]),
                   og = sigm(g[3 * H + k]);
            cs[k] = fg * cs[k] + ig * u;
            hs[k] = og * tanh(cs[k]);
            sum[k] += hs[k];
            if (t == 0 || hs[k] > mx[k])
                mx[k] = hs[k];
        }
    }
    size_t at = H;
    if (h->pool & QD_POOL_MAX) {
        for (size_t k = 0; k < H; k++)
            sum[at + k] = mx[k] * (double)len; /* divided by len below, like the mean */
        at += H;
    }
    if (h->pool & QD_POOL_EMB)
        for (size_t k = 0; k < E; k++)
            sum[at + k] = xsum[k];
    double ss = 0;
    for (size_t k = 0; k < D; k++) {
        sum[k] = len ? sum[k] / (double)len : 0;
        ss += sum[k] * sum[k];
    }
    for (size_t k = 0; k < D; k++)
        out[k] = ss > 0 ? sum[k] / sqrt(ss) : 0;
    free(mx);
    free(xsum);
    free(hs);
    free(cs);
    free(x);
    free(g);
    free(sum);
}

static double ref_objective(const qd_model_hdr *h, const double *w, const qd_tokseqs *s,
                            const uint32_t *sel, size_t n, const double *coef)
{
    size_t H = qd_model_out_dim(h);
    double *out = calloc(H, sizeof *out), L = 0;
    for (size_t i = 0; i < n; i++) {
        ref_encode(h, w, s, sel[i], out);
        for (size_t k = 0; k < H; k++)
            L += coef[i * H + k] * out[k];
    }
    free(out);
    return L;
}

/* --- random problems ------------------------------------------------------------------------ */

typedef struct problem {
    qd_model_hdr hdr;
    size_t np;       /* weights */
    float *wf;       /* (np) float weights */
    double *wd;      /* (np) the same in double */
    qd_tokseqs s;    /* the questions */
    uint32_t *sel;   /* (n) which questions form the batch, in batch order */
    size_t n;        /* batch size */
} problem;

static void make_problem(problem *p, uint64_t *rng, int ngrams, uint32_t pool)
{
    memset(p, 0, sizeof *p);
    qd_model_hdr *h = &p->hdr;
    h->pool = pool;
    h->emb_dim = 2 + (uint32_t)(qt_rand(rng) % 6);
    h->hidden = 2 + (uint32_t)(qt_rand(rng) % 6);
    h->vocab = 6 + (uint32_t)(qt_rand(rng) % 6);
    h->dirs = 1;
    h->tok.max_tokens = 64;
    if (ngrams) {
        h->tok.ngram_min = 3;
        h->tok.ngram_max = 4;
        h->tok.ngram_buckets = 5;
    }
    p->np = qd_model_nparams(h);
    p->wf = malloc(p->np * sizeof *p->wf);
    p->wd = malloc(p->np * sizeof *p->wd);
    for (size_t i = 0; i < p->np; i++) {
        p->wf[i] = (float)qt_uniform(rng, -0.9, 0.9);
        p->wd[i] = p->wf[i];
    }
    /* Questions of lengths 0..7 (an empty one sometimes); a batch takes a shuffled
     * subset, so sel is not the identity. */
    size_t nq = 3 + qt_rand(rng) % 5, R = qd_model_rows(h);
    qd_tokseqs *s = &p->s;
    s->n = nq;
    s->qoff = calloc(nq + 1, sizeof *s->qoff);
    s->toff = calloc(nq * 8 + 1, sizeof *s->toff);
    s->rows = calloc(nq * 8 * 4, sizeof *s->rows);
    for (size_t q = 0; q < nq; q++) {
        s->qoff[q] = (uint32_t)s->ntok;
        size_t len = q == 1 ? 0 : qt_rand(rng) % 8;
        for (size_t t = 0; t < len; t++) {
            s->toff[s->ntok++] = (uint32_t)s->nrows;
            size_t nr = ngrams ? 1 + qt_rand(rng) % 3 : 1;
            for (size_t r = 0; r < nr; r++)
                s->rows[s->nrows++] = (int32_t)(1 + qt_rand(rng) % (R - 1));
        }
    }
    s->qoff[nq] = (uint32_t)s->ntok;
    s->toff[s->ntok] = (uint32_t)s->nrows;
    p->n = nq - qt_rand(rng) % 2;
    p->sel = malloc(nq * sizeof *p->sel);
    for (size_t i = 0; i < nq; i++)
        p->sel[i] = (uint32_t)i;
    for (size_t i = nq; i > 1; i--) {
        size_t j = qt_rand(rng) % i;
        uint32_t t = p->sel[i - 1];
        p->sel[i - 1] = p->sel[j];
        p->sel[j] = t;
    }
}

static void free_problem(problem *p)
{
    free(p->wf);
    free(p->wd);
    free(p->s.qoff);
    free(p->s.toff);
    free(p->s.rows);
    free(p->sel);
}

/* Compares analytic gradients g with finite differences of the double encoder for
 * the weights [lo, hi); returns the worst relative error over the range. */
static double check_range(problem *p, const double *coef, const float *g, size_t lo,
                          size_t hi, const char *what)
{
    double num = 0, den = 0, worst_elem = 0;
    const double eps = 1e-6;
    for (size_t i = lo; i < hi; i++) {
        double keep = p->wd[i];
        p->wd[i] = keep + eps;
        double Lp = ref_objective(&p->hdr, p->wd, &p->s, p->sel, p->n, coef);
        p->wd[i] = keep - eps;
        double Lm = ref_objective(&p->hdr, p->wd, &p->s, p->sel, p->n, coef);
        p->wd[i] = keep;
        double fd = (Lp - Lm) / (2 * eps), an = g[i];
        num += (fd - an) * (fd - an);
        den += fd * fd;
        double e = fabs(fd - an) / (fabs(fd) + 1e-3);
        if (e > worst_elem)
            worst_elem = e;
    }
    double rel = den > 0 ? sqrt(num / den) : sqrt(num);
    if (!(rel < 1e-3 && worst_elem < 1e-2))
        fail_msg("%s: relative error %.3g (worst element %.3g)", what, rel, worst_elem);
    return rel;
}

static void run_gradcheck(int ngrams, uint32_t pool, uint64_t seed)
{
    uint64_t rng = seed;
    for (int trial = 0; trial < 6; trial++) {
        problem p;
        make_problem(&p, &rng, ngrams, pool);
        size_t H = qd_model_out_dim(&p.hdr), Hh = p.hdr.hidden;
        qd_params params;
        qd_params_point(&p.hdr, p.wf, &params);
        qd_fwd f;
        qd_bwd b;
        qd_grads g;
        qd_fwd_init(&f);
        qd_bwd_init(&b);
        f.dropout = ref_dropout;
        f.dropout_seed = ref_dropout_seed;
        assert_int_equal(qd_grads_init(&g, &p.hdr), 0);
        assert_int_equal(qd_lstm_forward(&p.hdr, &params, &p.s, p.sel, p.n, &f), 0);

        /* The float forward agrees with the double one. */
        double *ref = malloc(H * sizeof *ref);
        for (size_t i = 0; i < p.n; i++) {
            ref_encode(&p.hdr, p.wd, &p.s, p.sel[i], ref);
            for (size_t k = 0; k < H; k++)
                qt_assert_near(f.out[i * H + k], ref[k], 1e-5);
        }
        free(ref);

        double *coef = malloc(p.n * H * sizeof *coef);
        float *dout = malloc(p.n * H * sizeof *dout);
        for (size_t i = 0; i < p.n * H; i++) {
            dout[i] = (float)qt_uniform(&rng, -1, 1);
            coef[i] = dout[i];
        }
        /* Gradients accumulate: a stale gradient, zeroed, must leave no trace. */
        assert_int_equal(qd_lstm_backward(&p.hdr, &params, &p.s, &f, dout, &b, &g), 0);
        qd_grads_zero(&g);
        assert_int_equal(qd_lstm_backward(&p.hdr, &params, &p.s, &f, dout, &b, &g), 0);

        size_t E = p.hdr.emb_dim, R = qd_model_rows(&p.hdr);
        size_t off_wx = R * E, off_wh = off_wx + 4 * Hh * E, off_b = off_wh + 4 * Hh * Hh;
        check_range(&p, coef, g.data, 0, off_wx, "embedding");
        check_range(&p, coef, g.data, off_wx, off_wh, "input weights");
        check_range(&p, coef, g.data, off_wh, off_b, "recurrent weights");
        check_range(&p, coef, g.data, off_b, p.np, "bias");

        free(coef);
        free(dout);
        qd_grads_free(&g);
        qd_bwd_free(&b);
        qd_fwd_free(&f);
        free_problem(&p);
    }
}

static void test_encoder_backward_plain(void **state)
{
    (void)state;
    run_gradcheck(0, QD_POOL_MEAN, 11);
}

static void test_encoder_backward_ngrams(void **state)
{
    (void)state;
    run_gradcheck(1, QD_POOL_MEAN, 12);
}

static void test_encoder_backward_max_pooling(void **state)
{
    (void)state;
    run_gradcheck(0, QD_POOL_MAX, 13);
}

static void test_encoder_backward_embedding_path(void **state)
{
    (void)state;
    run_gradcheck(1, QD_POOL_EMB, 14);
    run_gradcheck(1, QD_POOL_MAX | QD_POOL_EMB, 15);
}

static void test_encoder_backward_dropout(void **state)
{
    (void)state;
    ref_dropout = 0.3f;
    ref_dropout_seed = 99;
    run_gradcheck(1, QD_POOL_EMB, 16);
    ref_dropout = 0;
}

static void test_l2norm_backward(void **state)
{
    (void)state;
    uint64_t rng = 5;
    enum { N = 3, H = 7 };
    double x[N * H], w[N * H];
    float out[N * H], norm[N], dout[N * H], dx[N * H];
    for (int i = 0; i < N * H; i++) {
        x[i] = qt_uniform(&rng, -1, 1);
        w[i] = qt_uniform(&rng, -1, 1);
        dout[i] = (float)w[i];
    }
    for (int q = 0; q < N; q++) {
        double ss = 0;
        for (int k = 0; k < H; k++)
            ss += x[q * H + k] * x[q * H + k];
        norm[q] = (float)sqrt(ss);
        for (int k = 0; k < H; k++)
            out[q * H + k] = (float)(x[q * H + k] / sqrt(ss));
    }
    qd_l2norm_backward(N, H, out, norm, dout, dx);
    for (int i = 0; i < N * H; i++) {
        int q = i / H;
        double fd[2];
        for (int sgn = 0; sgn < 2; sgn++) {
            double keep = x[i], ss = 0, L = 0;
            x[i] = keep + (sgn ? -1e-6 : 1e-6);
            for (int k = 0; k < H; k++)
                ss += x[q * H + k] * x[q * H + k];
            for (int k = 0; k < H; k++)
                L += w[q * H + k] * x[q * H + k] / sqrt(ss);
            fd[sgn] = L;
            x[i] = keep;
        }
        qt_assert_near(dx[i], (fd[0] - fd[1]) / 2e-6, 1e-3 * fabs(dx[i]) + 1e-6);
    }
}

/* --- the triplet loss ------------------------------------------------------------------------ */

static double ref_loss(const double *A, const double *C, size_t B, size_t K, size_t H,
                       double margin)
{
    double total = 0;
    for (size_t i = 0; i < B; i++) {
        double S[64];
        for (size_t j = 0; j < K; j++) {
            S[j] = 0;
            for (size_t k = 0; k < H; k++)
                S[j] += A[i * H + k] * C[j * H + k];
        }
        double sum = 0, closest = -2; /* diagonal of S' - 2M */
        for (size_t j = 0; j < K; j++)
            if (j != i) {
                sum += S[j];
                double v = S[j] > S[i] ? S[j] - 2 : S[j];
                if (v > closest)
                    closest = v;
            }
        total += fmax(0, margin - S[i] + sum / (double)(K - 1)) + fmax(0, margin - S[i] + closest);
    }
    return total / (double)B;
}

static void test_triplet_loss_gradient(void **state)
{
    (void)state;
    uint64_t rng = 77;
    for (int trial = 0; trial < 30; trial++) {
        size_t B = 2 + qt_rand(&rng) % 6, K = B + qt_rand(&rng) % 4, H = 3 + qt_rand(&rng) % 5;
        double *A = malloc(B * H * sizeof *A), *C = malloc(K * H * sizeof *C);
        float *Af = malloc(B * H * sizeof *Af), *Cf = malloc(K * H * sizeof *Cf);
        float *dA = malloc(B * H * sizeof *dA), *dC = malloc(K * H * sizeof *dC);
        float *S = malloc(B * K * sizeof *S);
        for (size_t i = 0; i < B * H; i++)
            Af[i] = (float)(A[i] = qt_uniform(&rng, -0.6, 0.6));
        for (size_t i = 0; i < K * H; i++)
            Cf[i] = (float)(C[i] = qt_uniform(&rng, -0.6, 0.6));
        float L = qd_triplet_loss(Af, Cf, B, K, H, 0.25f, S, dA, dC);
        double Lref = ref_loss(A, C, B, K, H, 0.25);
        qt_assert_near(L, Lref, 1e-5);
        /* Loss only, no gradients requested: the same value. */
        qt_assert_near(qd_triplet_loss(Af, Cf, B, K, H, 0.25f, S, NULL, NULL), L, 0);
        const double eps = 1e-7;
        for (int side = 0; side < 2; side++) {
            double *x = side ? C : A;
            float *dx = side ? dC : dA;
            size_t cnt = (side ? K : B) * H;
            for (size_t i = 0; i < cnt; i++) {
                double keep = x[i];
                x[i] = keep + eps;
                double Lp = ref_loss(A, C, B, K, H, 0.25);
                x[i] = keep - eps;
                double Lm = ref_loss(A, C, B, K, H, 0.25);
                x[i] = keep;
                double fd = (Lp - Lm) / (2 * eps);
                /* A kink (a max or a hinge switching) within eps: skip that entry. */
                double Lpp = 0;
                x[i] = keep + 2 * eps;
                Lpp = ref_loss(A, C, B, K, H, 0.25);
                x[i] = keep;
                if (fabs((Lpp - Lp) / eps - fd) > 1e-3)
                    continue;
                qt_assert_near(dx[i], fd, 1e-3 * fabs(fd) + 1e-5);
            }
        }
        free(A);
        free(C);
        free(Af);
        free(Cf);
        free(dA);
        free(dC);
        free(S);
    }
}

/* The course's masking: a row whose every negative scores above its positive gets
 * nothing from the closest-negative term. */
static void test_triplet_loss_masking(void **state)
{
    (void)state;
    /* Two anchors, unit vectors in 2-d; A0's positive is worse than its negative. */
    float A[4] = {1, 0, 0, 1};
    float C[4] = {0.6f, 0.8f, 0.8f, 0.6f}; /* S = [[0.6, 0.8], [0.8, 0.6]] */
    float S[4], dA[4], dC[4];
    float L = qd_triplet_loss(A, C, 2, 2, 2, 0.25f, S, dA, dC);
    /* Row 0: mean term 0.25 - 0.6 + 0.8 = 0.45; closest = 0.8 - 2 -> 0.25 - 0.6 - 1.2 < 0.
     * Row 1: the same by symmetry. Loss = (0.45 + 0.45) / 2. */
    qt_assert_near(L, 0.45, 1e-6);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_encoder_backward_plain),
        cmocka_unit_test(test_encoder_backward_ngrams),
        cmocka_unit_test(test_encoder_backward_max_pooling),
        cmocka_unit_test(test_encoder_backward_embedding_path),
        cmocka_unit_test(test_encoder_backward_dropout),
        cmocka_unit_test(test_l2norm_backward),
        cmocka_unit_test(test_triplet_loss_gradient),
        cmocka_unit_test(test_triplet_loss_masking),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
