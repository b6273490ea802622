/*
 * test_flatscan.c - qd_flatscan, the 8-bit scan behind exact search, against plain loops.
 *
 * Every kernel this processor runs (AVX-512 VNNI, AVX2, the portable loop) must give
 * candidate scores equal bit for bit to a plain loop over the stored codes, for
 * dimensions and counts that leave partial groups and partial blocks. Searches must
 * return what a brute-force search in double precision returns: the same positions in
 * the same order, the same scores to float precision, on batches of queries, on one
 * thread and on several. The exact re-scoring of every kernel must equal bit for bit a
 * plain loop that sums in the order the header documents, and with that loop as the
 * reference a search must return exactly its top k, ties by position, where exact
 * copies put many equal scores across the k-th place.
 */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "flatscan_impl.h"
#include "qdup/common.h"
#include "testutil.h"

static const char *const kernels[] = {"avx512vnni", "avx2", "generic"};
#define NKERNELS (sizeof kernels / sizeof kernels[0])

static double gauss(uint64_t *rng)
{
    double u = qt_uniform(rng, 1e-12, 1), v = qt_uniform(rng, 0, 1);
    return sqrt(-2 * log(u)) * cos(2 * M_PI * v);
}

static void normalize(float *v, int dim)
{
    double s = 0;
    for (int j = 0; j < dim; j++)
        s += (double)v[j] * v[j];
    for (int j = 0; j < dim; j++)
        v[j] = (float)(v[j] / sqrt(s));
}

/* n unit vectors around ncl cluster centres (spread: distance from the centre). */
static float *clustered(uint64_t *rng, size_t n, int dim, int ncl, double spread)
{
    float *cent = malloc((size_t)ncl * dim * sizeof *cent);
    float *x = malloc(n * dim * sizeof *x);
    assert_non_null(cent);
    assert_non_null(x);
    for (int c = 0; c < ncl; c++) {
        for (int j = 0; j < dim; j++)
            cent[c * dim + j] = (float)gauss(rng);
        normalize(cent + c * dim, dim);
    }
    for (size_t i = 0; i < n; i++) {
        int c = (int)(qt_rand(rng) % (uint64_t)ncl);
        for (int j = 0; j < dim; j++)
            x[i * dim + j] = cent[c * dim + j] + (float)(spread * gauss(rng) / sqrt(dim));
        normalize(x + i * dim, dim);
    }
    free(cent);
    return x;
}

/* nq unit queries, each a stored vector (the first `fixed` from vector 0, the rest drawn
 * at random) moved by noise: near-duplicates, what qdup looks for. */
static float *near_queries(uint64_t *rng, const float *x, size_t n, int dim, size_t nq,
                           size_t fixed, double noise)
{
    float *q = malloc(nq * dim * sizeof *q);
    assert_non_null(q);
    for (size_t j = 0; j < nq; j++) {
        size_t src = j < fixed ? 0 : qt_rand(rng) % n;
        memcpy(q + j * dim, x + src * dim, dim * sizeof *q);
        for (int d = 0; d < dim; d++)
            q[j * dim + d] += (float)(noise * gauss(rng) / sqrt(dim));
        normalize(q + j * dim, dim);
    }
    return q;
}

/* A scan holding x (n, dim). */
static qd_flatscan *scan_of(const float *x, size_t n, int dim)
{
    qd_flatscan *fs;
    assert_int_equal(qd_flatscan_new(dim, &fs), 0);
    assert_int_equal(qd_flatscan_add(fs, x, n), 0);
    return fs;
}

/* Quantizing keeps every component within half a step, in -127..127, padding zero. */
static void test_quantize(void **state)
{
    (void)state;
    uint64_t rng = 7;
    int8_t codes[136];
    float s;
    for (int dim = 1; dim <= 130; dim += 43) {
        float x[130];
        for (int rep = 0; rep < 20; rep++) {
            double mag = pow(10, qt_uniform(&rng, -30, 30));
            for (int j = 0; j < dim; j++)
                x[j] = (float)(mag * gauss(&rng));
            memset(codes, 0x55, sizeof codes);
            qd_flatscan_quantize(x, dim, codes, &s);
            float m = 0;
            for (int j = 0; j < dim; j++)
                m = fmaxf(m, fabsf(x[j]));
            qt_assert_near(s, m / 127, m / 127 * 1e-6);
            for (int j = 0; j < dim; j++) {
                assert_true(codes[j] >= -127 && codes[j] <= 127);
                assert_true(fabs(x[j] - (double)s * codes[j]) <= 0.5001 * s);
            }
            for (int j = dim; j < (dim + 3) / 4 * 4; j++)
                assert_int_equal(codes[j], 0);
        }
    }
    float zero[5] = {0};
    qd_flatscan_quantize(zero, 5, codes, &s);
    assert_true(s == 0);
    for (int j = 0; j < 8; j++)
        assert_int_equal(codes[j], 0);
}

/* The codes stored for each position are the quantized vector added there. */
static void test_codes_stored(void **state)
{
    (void)state;
    uint64_t rng = 11;
    int dim = 37;
    size_t n = 53;
    float *x = clustered(&rng, n, dim, 3, 0.5);
    qd_flatscan *fs;
    assert_int_equal(qd_flatscan_new(dim, &fs), 0);
    assert_int_equal(qd_flatscan_add(fs, x, 20), 0);
    assert_int_equal(qd_flatscan_add(fs, x + 20 * dim, n - 20), 0);
    assert_int_equal(qd_flatscan_count(fs), n);
    int8_t want[40], got[40];
    float ws, gs;
    for (size_t i = 0; i < n; i++) {
        qd_flatscan_quantize(x + i * dim, dim, want, &ws);
        qd_flatscan_code(fs, i, got, &gs);
        assert_memory_equal(want, got, 40);
        assert_true(ws == gs);
    }
    qd_flatscan_clear(fs);
    assert_int_equal(qd_flatscan_count(fs), 0);
    assert_int_equal(qd_flatscan_add(fs, x + 5 * dim, 1), 0);
    qd_flatscan_quantize(x + 5 * dim, dim, want, &ws);
    qd_flatscan_code(fs, 0, got, &gs);
    assert_memory_equal(want, got, 40);
    qd_flatscan_free(fs);
    free(x);
}

/* A store of a few vectors is searched a query at a time; one whose codes outgrow the
 * L2 cache (1 MiB: 8,192 vectors of 128 components) four at a time, by the kernels that
 * score four queries in one pass. */
static void test_batch_hint(void **state)
{
    (void)state;
    int dim = 128;
    size_t n = 8192;
    float *x = calloc(n * (size_t)dim, sizeof *x);
    assert_non_null(x);
    for (size_t i = 0; i < n; i++)
        x[i * (size_t)dim + i % (size_t)dim] = 1.0f;
    qd_flatscan *fs;
    assert_int_equal(qd_flatscan_new(dim, &fs), 0);
    assert_int_equal(qd_flatscan_batch(fs), 1);
    assert_int_equal(qd_flatscan_add(fs, x, n - 1), 0);
    assert_int_equal(qd_flatscan_batch(fs), 1);
    assert_int_equal(qd_flatscan_add(fs, x + (n - 1) * (size_t)dim, 1), 0);
    for (size_t kk = 0; kk < NKERNELS; kk++) {
        if (qd_flatscan_set_kernel(fs, kernels[kk]) != 0)
            continue;
        size_t want = strcmp(kernels[kk], "generic") == 0 ? 1 : 4;
        assert_int_equal(qd_flatscan_batch(fs), want);
    }
    qd_flatscan_clear(fs);
    assert_int_equal(qd_flatscan_batch(fs), 1);
    qd_flatscan_free(fs);
    free(x);
}

/* Every kernel's candidate scores equal the plain loop's, bit for bit. */
static void test_kernels_match_loop(void **state)
{
    (void)state;
    static const int dims[] = {1, 3, 4, 17, 64, 128, 130, 300};
    static const size_t counts[] = {1, 15, 16, 17, 250};
    uint64_t rng = 99;
    int ran[NKERNELS] = {0};
    for (size_t di = 0; di < sizeof dims / sizeof dims[0]; di++) {
        for (size_t ci = 0; ci < sizeof counts / sizeof counts[0]; ci++) {
            int dim = dims[di];
            size_t n = counts[ci];
            float *x = clustered(&rng, n, dim, 4, 1.0);
            /* Extremes: a zero vector, one of all-equal components, a negated one. */
            memset(x, 0, dim * sizeof *x);
            if (n > 2) {
                for (int j = 0; j < dim; j++) {
                    x[dim + j] = 1.0f;
                    x[2 * dim + j] = -x[(n - 1) * dim + j];
                }
            }
            float *q = clustered(&rng, 3, dim, 1, 1.0);
            q[2 * dim] = -5; /* a query with one dominant component */
            qd_flatscan *fs = scan_of(x, n, dim);
            float *got = malloc(n * sizeof *got);
            int8_t *xc = malloc((size_t)dim + 4), *qc = malloc((size_t)dim + 4);
            assert_non_null(got);
            for (size_t kk = 0; kk < NKERNELS; kk++) {
                int rc = qd_flatscan_set_kernel(fs, kernels[kk]);
                if (rc == QD_ERR_UNSUPPORTED)
                    continue;
                assert_int_equal(rc, 0);
                assert_string_equal(qd_flatscan_kernel(fs), kernels[kk]);
                ran[kk] = 1;
                for (int qi = 0; qi < 3; qi++) {
                    assert_int_equal(qd_flatscan_approx(fs, q + qi * dim, got), 0);
                    float qs, xs;
                    qd_flatscan_quantize(q + qi * dim, dim, qc, &qs);
                    for (size_t i = 0; i < n; i++) {
                        qd_flatscan_code(fs, i, xc, &xs);
                        int32_t dot = 0;
                        for (int j = 0; j < dim; j++)
                            dot += xc[j] * qc[j];
                        float want = (float)dot * xs;
                        if (got[i] != want)
                            fail_msg("kernel %s, dim %d, n %zu, query %d, vector %zu: %.9g, "
                                     "loop gives %.9g",
                                     kernels[kk], dim, n, qi, i, got[i], want);
                    }
                }
            }
            free(got);
            free(xc);
            free(qc);
            free(q);
            free(x);
            qd_flatscan_free(fs);
        }
    }
    assert_true(ran[NKERNELS - 1]); /* the portable kernel always runs */
    for (size_t kk = 0; kk < NKERNELS; kk++)
        print_message("kernel %s: %s\n", kernels[kk], ran[kk] ? "checked" : "not on this CPU");
}

/* Brute-force top k in double precision: best first, equal scores by position. */
static void brute(const float *x, size_t n, int dim, const float *q, size_t k, float *sc,
                  int64_t *pos)
{
    for (size_t i = 0; i < k; i++) {
        sc[i] = -INFINITY;
        pos[i] = -1;
    }
    for (size_t i = 0; i < n; i++) {
        double s = 0;
        for (int j = 0; j < dim; j++)
            s += (double)q[j] * x[i * dim + j];
        float f = (float)s;
        size_t at = k;
        while (at > 0 && (pos[at - 1] < 0 || f > sc[at - 1]))
            at--;
        if (at >= k)
            continue;
        memmove(sc + at + 1, sc + at, (k - at - 1) * sizeof *sc);
        memmove(pos + at + 1, pos + at, (k - at - 1) * sizeof *pos);
        sc[at] = f;
        pos[at] = (int64_t)i;
    }
}

/* Vectors, queries and the brute-force answers, computed once per test (the top
 * `k` of a query begin with its top k for any smaller k). */
struct truth {
    const float *x; /* (n, dim) stored vectors */
    size_t n;       /* how many */
    int dim;        /* their dimension */
    const float *q; /* (nq, dim) queries */
    size_t nq;      /* how many */
    size_t k;       /* answers per query */
    float *sc;      /* (nq, k) brute-force scores */
    int64_t *pos;   /* (nq, k) brute-force positions */
};

static struct truth truth_new(const float *x, size_t n, int dim, const float *q, size_t nq,
                              size_t k)
{
    struct truth t = {x, n, dim, q, nq, k, malloc(nq * k * sizeof(float)),
                      malloc(nq * k * sizeof(int64_t))};
    assert_non_null(t.sc);
    assert_non_null(t.pos);
    for (size_t j = 0; j < nq; j++)
        brute(x, n, dim, q + j * dim, k, t.sc + j * k, t.pos + j * k);
    return t;
}

static void truth_free(struct truth *t)
{
    free(t->sc);
    free(t->pos);
}

/* Searches the first nq queries as one batch and compares every answer with brute
 * force: the same positions in the same order, the same scores. */
static void check_search(qd_flatscan *fs, const struct truth *t, size_t nq, size_t k,
                         size_t rescore, const char *what)
{
    assert_true(nq <= t->nq && k <= t->k);
    float *sc = malloc(nq * k * sizeof *sc);
    int64_t *pos = malloc(nq * k * sizeof *pos);
    assert_int_equal(qd_flatscan_search(fs, t->x, t->q, nq, k, rescore, sc, pos), 0);
    for (size_t j = 0; j < nq; j++) {
        const float *bsc = t->sc + j * t->k;
        const int64_t *bpos = t->pos + j * t->k;
        for (size_t i = 0; i < k; i++) {
            if (pos[j * k + i] != bpos[i])
                fail_msg("%s (%s): query %zu rank %zu: position %lld, brute force %lld", what,
                         qd_flatscan_kernel(fs), j, i, (long long)pos[j * k + i],
                         (long long)bpos[i]);
            if (bpos[i] < 0)
                assert_true(sc[j * k + i] == -INFINITY);
            else
                qt_assert_near(sc[j * k + i], bsc[i], 1e-6);
        }
    }
    free(sc);
    free(pos);
}

/* Batches of near-duplicate and random queries, one and two threads, every kernel. */
static void test_search_exact(void **state)
{
    (void)state;
    uint64_t rng = 2024;
    int dim = 64;
    size_t n = 3001, nq = 40, k = 10;
    float *x = clustered(&rng, n, dim, 20, 0.6);
    float *q = near_queries(&rng, x, n, dim, nq, 0, 0.3);
    for (size_t j = 3; j < nq; j += 4) { /* and some random ones */
        for (int d = 0; d < dim; d++)
            q[j * dim + d] = (float)gauss(&rng);
        normalize(q + j * dim, dim);
    }
    struct truth t = truth_new(x, n, dim, q, nq, 100);
    qd_flatscan *fs = scan_of(x, n, dim);
    int saved = omp_get_max_threads();
    for (size_t kk = 0; kk < NKERNELS; kk++) {
        if (qd_flatscan_set_kernel(fs, kernels[kk]) != 0)
            continue;
        for (int threads = 1; threads <= 2; threads++) {
            omp_set_num_threads(threads);
            check_search(fs, &t, 1, k, 0, "one query");
            check_search(fs, &t, 7, k, 0, "7 queries");
            check_search(fs, &t, nq, k, 0, "40 queries");
            check_search(fs, &t, nq, 1, 0, "k = 1");
            check_search(fs, &t, 5, 100, 0, "k = 100");
            /* Re-scoring everything is exact whatever the codes say. */
            check_search(fs, &t, 5, k, n, "rescore all");
        }
    }
    omp_set_num_threads(saved);
    truth_free(&t);
    qd_flatscan_free(fs);
    free(x);
    free(q);
}

/* Fewer vectors than k: the rest of the row is padding; rescore below k is raised to k. */
static void test_search_edges(void **state)
{
    (void)state;
    uint64_t rng = 5;
    int dim = 8;
    float *x = clustered(&rng, 3, dim, 2, 1.0);
    qd_flatscan *fs;
    assert_int_equal(qd_flatscan_new(dim, &fs), 0);
    float sc[5];
    int64_t pos[5];
    /* Empty: all padding. */
    assert_int_equal(qd_flatscan_search(fs, x, x, 1, 5, 0, sc, pos), 0);
    for (int i = 0; i < 5; i++)
        assert_true(pos[i] == -1 && sc[i] == -INFINITY);
    assert_int_equal(qd_flatscan_add(fs, x, 3), 0);
    struct truth t = truth_new(x, 3, dim, x + dim, 1, 5);
    check_search(fs, &t, 1, 5, 0, "k > count");
    check_search(fs, &t, 1, 3, 1, "rescore < k");
    truth_free(&t);
    assert_int_equal(qd_flatscan_search(fs, x, x, 1, 0, 0, sc, pos), QD_ERR_INVAL);
    assert_int_equal(qd_flatscan_search(fs, x, x, 0, 5, 0, sc, pos), 0);
    assert_int_equal(qd_flatscan_set_kernel(fs, "sse9"), QD_ERR_INVAL);
    assert_int_equal(qd_flatscan_new(0, &(qd_flatscan *){NULL}), QD_ERR_INVAL);
    qd_flatscan_free(fs);
    qd_flatscan_free(NULL);
    free(x);
}

/* Checks the answer to query j for exactness without depending on how ties fall: rank by
 * rank the scores equal brute force's, and every position returned has the score it is
 * reported with. */
static void check_exact_scores(const struct truth *t, size_t j, const float *sc,
                               const int64_t *pos, const char *what)
{
    const float *x = t->x, *q = t->q + j * t->dim;
    const float *bsc = t->sc + j * t->k;
    size_t n = t->n, k = t->k;
    int dim = t->dim;
    for (size_t i = 0; i < k; i++) {
        if (fabsf(sc[i] - bsc[i]) > 1e-6f)
            fail_msg("%s: rank %zu: score %.7f, brute force %.7f", what, i, sc[i], bsc[i]);
        assert_true(pos[i] >= 0 && (size_t)pos[i] < n);
        double s = 0;
        for (int d = 0; d < dim; d++)
            s += (double)q[d] * x[(size_t)pos[i] * dim + d];
        qt_assert_near(sc[i], s, 1e-6);
        for (size_t h = 0; h < i; h++)
            assert_true(pos[h] != pos[i]);
    }
}

/* Crowded neighbourhoods (many vectors closer to each other than the codes resolve)
 * are where 8-bit scores misorder: the bound must notice, and the second pass must
 * make the answer exact anyway. */
static void test_search_crowded(void **state)
{
    (void)state;
    uint64_t rng = 77;
    int dim = 128;
    size_t n = 20000, nq = 50, k = 10;
    /* Tight clusters: neighbours within a few thousandths of each other. */
    float *x = clustered(&rng, n, dim, 8, 0.05);
    /* And 300 copies of one vector, plus copies nudged below the codes' resolution. */
    for (size_t i = 1000; i < 1300; i++) {
        memcpy(x + i * dim, x, dim * sizeof *x);
        if (i % 2)
            x[i * dim + i % dim] += 1e-4f;
    }
    float *q = near_queries(&rng, x, n, dim, nq, 5, 0.05);
    struct truth t = truth_new(x, n, dim, q, nq, k);
    qd_flatscan *fs = scan_of(x, n, dim);
    float *sc = malloc(nq * k * sizeof *sc);
    int64_t *pos = malloc(nq * k * sizeof *pos);
    int saved = omp_get_max_threads();
    for (size_t kk = 0; kk < NKERNELS; kk++) {
        if (qd_flatscan_set_kernel(fs, kernels[kk]) != 0)
            continue;
        for (int threads = 1; threads <= 2; threads++) {
            omp_set_num_threads(threads);
            size_t searched0, second0, searched, second;
            qd_flatscan_stats(fs, &searched0, &second0);
            assert_int_equal(qd_flatscan_search(fs, x, q, nq, k, 0, sc, pos), 0);
            for (size_t j = 0; j < nq; j++)
                check_exact_scores(&t, j, sc + j * k, pos + j * k, kernels[kk]);
            qd_flatscan_stats(fs, &searched, &second);
            assert_int_equal(searched - searched0, nq);
            /* The copies of vector 0 cannot be told apart by their codes. */
            assert_true(second - second0 >= 5);
            print_message("%s, %d thread(s): %zu of %zu queries needed a second pass\n",
                          kernels[kk], threads, second - second0, nq);
        }
    }
    omp_set_num_threads(saved);
    truth_free(&t);
    qd_flatscan_free(fs);
    free(x);
    free(q);
    free(sc);
    free(pos);
}

/* The exact score as flatscan_impl.h documents it: sums 0..3 in double, in order. */
static float loop_exact(const float *q, const float *x, int dim)
{
    double s[4] = {0, 0, 0, 0};
    int full = dim / 4 * 4;
    for (int i = 0; i < full; i++)
        s[i % 4] += (double)q[i] * x[i];
    for (int i = full; i < dim; i++)
        s[0] += (double)q[i] * x[i];
    return (float)((s[0] + s[1]) + (s[2] + s[3]));
}

/* Every kernel's re-scoring equals the plain loop bit for bit, for dimensions that leave
 * 1 to 3 components past a multiple of 4 (and 8 and 16), and any number of positions
 * (groups of 8 and a short last one), repeats included. Components spread over many
 * orders of magnitude, and large products that cancel, make the rounding depend on the
 * order of the sums, so a kernel summing in another order would fail (checked: a single
 * running sum often gives another float). */
static void test_exact_match_loop(void **state)
{
    (void)state;
    static const int dims[] = {1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 33, 64, 127, 128, 300};
    uint64_t rng = 4242;
    size_t n = 21, order_matters = 0;
    int ran[NKERNELS] = {0};
    for (size_t di = 0; di < sizeof dims / sizeof dims[0]; di++) {
        int dim = dims[di];
        float *x = malloc(n * dim * sizeof *x), *q = malloc(2 * dim * sizeof *q);
        assert_non_null(x);
        assert_non_null(q);
        for (size_t i = 0; i < n * (size_t)dim; i++)
            x[i] = (float)(gauss(&rng) * pow(10, qt_uniform(&rng, -6, 6)));
        for (int i = 0; i < 2 * dim; i++)
            q[i] = (float)(gauss(&rng) * pow(10, qt_uniform(&rng, -6, 6)));
        /* Two large products that cancel: what is summed before them is absorbed in
         * some orders and not in others. */
        q[0] = q[dim - 1] = 1;
        for (size_t i = 3; i < n; i += 2) {
            x[i * dim] = 1e20f;
            x[i * dim + dim - 1] = -1e20f;
        }
        memset(x, 0, dim * sizeof *x); /* a zero vector */
        for (int i = 0; i < dim; i++)
            x[dim + i] = -0.0f; /* and a negative zero one: the sign of 0 must match */
        int64_t pos[40];
        for (size_t i = 0; i < 40; i++)
            pos[i] = (int64_t)(qt_rand(&rng) % n);
        pos[3] = pos[4]; /* a repeat */
        qd_flatscan *fs = scan_of(x, n, dim);
        float got[40];
        for (size_t kk = 0; kk < NKERNELS; kk++) {
            if (qd_flatscan_set_kernel(fs, kernels[kk]) != 0)
                continue;
            ran[kk] = 1;
            for (int qi = 0; qi < 2; qi++) {
                const float *qv = q + qi * dim;
                for (size_t m = 0; m <= 40; m += m < 18 ? 1 : 11) {
                    memset(got, 0x7f, sizeof got);
                    assert_int_equal(qd_flatscan_exact(fs, x, qv, pos, m, got), 0);
                    for (size_t i = 0; i < m; i++) {
                        const float *xv = x + (size_t)pos[i] * dim;
                        float want = loop_exact(qv, xv, dim);
                        if (memcmp(&got[i], &want, sizeof want) != 0)
                            fail_msg("kernel %s, dim %d, %zu positions, #%zu (position %lld): "
                                     "%a, loop gives %a",
                                     kernels[kk], dim, m, i, (long long)pos[i], got[i], want);
                    }
                }
                if (kk == NKERNELS - 1) {
                    for (size_t i = 0; i < n; i++) {
                        double one = 0;
                        for (int d = 0; d < dim; d++)
                            one += (double)qv[d] * x[i * dim + d];
                        order_matters += (float)one != loop_exact(qv, x + i * dim, dim);
                    }
                }
            }
        }
        qd_flatscan_free(fs);
        free(x);
        free(q);
    }
    print_message("a single running sum differs from the loop for %zu vectors\n", order_matters);
    assert_true(order_matters > 20);
    for (size_t kk = 0; kk < NKERNELS; kk++)
        print_message("re-scoring %s: %s\n", kernels[kk], ran[kk] ? "checked" : "not on this CPU");
}

/* Best first by exact score, equal scores by position: qd_flatscan_search's order. */
struct ranked {
    float score; /* loop_exact's */
    int64_t pos; /* position */
};

static int ranked_cmp(const void *pa, const void *pb)
{
    const struct ranked *a = pa, *b = pb;
    if (a->score != b->score)
        return a->score > b->score ? -1 : 1;
    return (a->pos > b->pos) - (a->pos < b->pos);
}

/* Many exact copies (equal codes, equal exact scores) scattered over the positions, so
 * that equal scores straddle the k-th place and the second pass runs: with the plain
 * loop's exact scores as the reference, every search returns exactly its top k, ties
 * by position, scores bit for bit, for k from 1 to past the count, on every
 * kernel, one and two threads, default and full re-scoring. */
static void test_search_ties(void **state)
{
    (void)state;
    uint64_t rng = 31337;
    int dim = 33;
    size_t n = 4000, nq = 24, nd = 37;
    float *distinct = clustered(&rng, nd, dim, 3, 0.02);
    float *x = malloc(n * dim * sizeof *x);
    assert_non_null(x);
    for (size_t i = 0; i < n; i++)
        memcpy(x + i * dim, distinct + (qt_rand(&rng) % nd) * dim, dim * sizeof *x);
    float *q = near_queries(&rng, x, n, dim, nq, 2, 0.01);
    struct ranked *want = malloc(nq * n * sizeof *want);
    assert_non_null(want);
    for (size_t j = 0; j < nq; j++) {
        for (size_t i = 0; i < n; i++)
            want[j * n + i] = (struct ranked){loop_exact(q + j * dim, x + i * dim, dim),
                                              (int64_t)i};
        qsort(want + j * n, n, sizeof *want, ranked_cmp);
        /* The data does what it is for: the 10th score is shared by several vectors. */
        if (j < 2)
            assert_true(want[j * n + 9].score == want[j * n + 10].score);
    }
    static const size_t ks[] = {1, 7, 10, 50, 64, 200, 999, 4001};
    size_t kmax = 4001;
    float *sc = malloc(nq * kmax * sizeof *sc);
    int64_t *pos = malloc(nq * kmax * sizeof *pos);
    assert_non_null(sc);
    assert_non_null(pos);
    qd_flatscan *fs = scan_of(x, n, dim);
    int saved = omp_get_max_threads();
    for (size_t kk = 0; kk < NKERNELS; kk++) {
        if (qd_flatscan_set_kernel(fs, kernels[kk]) != 0)
            continue;
        for (int threads = 1; threads <= 2; threads++) {
            omp_set_num_threads(threads);
            for (size_t ki = 0; ki < sizeof ks / sizeof ks[0]; ki++) {
                for (size_t rescore = 0; rescore <= n; rescore += n) {
                    size_t k = ks[ki];
                    assert_int_equal(qd_flatscan_search(fs, x, q, nq, k, rescore, sc, pos), 0);
                    for (size_t j = 0; j < nq; j++) {
                        for (size_t i = 0; i < k; i++) {
                            float gs = sc[j * k + i];
                            int64_t gp = pos[j * k + i];
                            if (i >= n) {
                                assert_true(gp == -1 && gs == -INFINITY);
                                continue;
                            }
                            const struct ranked *w = &want[j * n + i];
                            if (gp != w->pos || memcmp(&gs, &w->score, sizeof gs) != 0)
                                fail_msg("%s, %d thread(s), k %zu, rescore %zu, query %zu, "
                                         "rank %zu: position %lld score %a, the loop's top "
                                         "k %lld %a",
                                         kernels[kk], threads, k, rescore, j, i, (long long)gp,
                                         gs, (long long)w->pos, w->score);
                        }
                    }
                }
            }
        }
    }
    omp_set_num_threads(saved);
    qd_flatscan_free(fs);
    free(distinct);
    free(x);
    free(q);
    free(want);
    free(sc);
    free(pos);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_quantize),
        cmocka_unit_test(test_codes_stored),
        cmocka_unit_test(test_batch_hint),
        cmocka_unit_test(test_kernels_match_loop),
        cmocka_unit_test(test_search_exact),
        cmocka_unit_test(test_search_edges),
        cmocka_unit_test(test_search_crowded),
        cmocka_unit_test(test_exact_match_loop),
        cmocka_unit_test(test_search_ties),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
