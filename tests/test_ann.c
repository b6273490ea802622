/*
 * test_ann.c - qd_ann, the vector index, for the kinds qdup uses: Flat (exact), HNSW16,
 * IVF4,Flat and SQ8.
 *
 * The data are clustered random unit vectors, like sentence embeddings; queries are
 * either fresh random points or near-duplicates of stored vectors (what qdup looks
 * for). Expected answers come from a brute-force search written here in double
 * precision: Flat (and IVF probing every list) must match it exactly, the approximate
 * kinds must find the true best match for nearly every near-duplicate query.
 */
#include <dirent.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/error_c.h>
#include <faiss/c_api/index_factory_c.h>
#include <faiss/c_api/index_io_c.h>

#include "qdup/ann.h"
#include "qdup/common.h"
#include "qdup/fileio.h"
#include "testutil.h"

#define DIM 32
#define NB 2000      /* stored vectors */
#define NQ 100       /* queries */
#define K 10         /* results per query */
#define NCLUSTER 16  /* cluster centres in the data */

static float base[NB * DIM];    /* (NB, DIM) stored vectors, unit length */
static int64_t base_id[NB];     /* (NB) their ids: 10 i + 7, so ids are not positions */
static int alive[NB];           /* (NB) 1 while vector i is expected in the index */
static float near_q[NQ * DIM];  /* (NQ, DIM) near-duplicates of stored vectors */
static float rand_q[NQ * DIM];  /* (NQ, DIM) random unit vectors */

static void normalize(float *v)
{
    double s = 0;
    for (int j = 0; j < DIM; j++)
        s += (double)v[j] * v[j];
    float inv = (float)(1 / sqrt(s));
    for (int j = 0; j < DIM; j++)
        v[j] *= inv;
}

static double gauss(uint64_t *rng)
{
    double u = qt_uniform(rng, 1e-12, 1), v = qt_uniform(rng, 0, 1);
    return sqrt(-2 * log(u)) * cos(2 * M_PI * v);
}

static int setup_data(void **state)
{
    (void)state;
    uint64_t rng = 42;
    float centre[NCLUSTER * DIM];
    for (int i = 0; i < NCLUSTER * DIM; i++)
        centre[i] = (float)gauss(&rng);
    for (int c = 0; c < NCLUSTER; c++)
        normalize(centre + c * DIM);
    for (int i = 0; i < NB; i++) {
        const float *c = centre + (qt_rand(&rng) % NCLUSTER) * DIM;
        for (int j = 0; j < DIM; j++)
            base[i * DIM + j] = c[j] + (float)(0.5 * gauss(&rng) / sqrt(DIM));
        normalize(base + i * DIM);
        base_id[i] = 10 * (int64_t)i + 7;
        alive[i] = 1;
    }
    for (int i = 0; i < NQ; i++) {
        const float *src = base + (qt_rand(&rng) % NB) * DIM;
        for (int j = 0; j < DIM; j++) {
            near_q[i * DIM + j] = src[j] + (float)(0.05 * gauss(&rng) / sqrt(DIM));
            rand_q[i * DIM + j] = (float)gauss(&rng);
        }
        normalize(near_q + i * DIM);
        normalize(rand_q + i * DIM);
    }
    return 0;
}

/* Brute-force top-k of one query over the alive vectors: scores descending. */
static void brute_topk(const float *q, size_t k, double *sc, int64_t *id)
{
    for (size_t r = 0; r < k; r++) {
        sc[r] = -INFINITY;
        id[r] = -1;
    }
    for (int i = 0; i < NB; i++) {
        if (!alive[i])
            continue;
        double s = 0;
        for (int j = 0; j < DIM; j++)
            s += (double)q[j] * base[i * DIM + j];
        if (s <= sc[k - 1])
            continue;
        size_t r = k - 1;
        while (r > 0 && sc[r - 1] < s) {
            sc[r] = sc[r - 1];
            id[r] = id[r - 1];
            r--;
        }
        sc[r] = s;
        id[r] = base_id[i];
    }
}

/* Asserts that a result row equals brute force: scores to float precision, ids except
 * where two true scores are too close to order reliably. */
static void assert_row_exact(const float *q, size_t k, const float *sc, const int64_t *id)
{
    double bs[NB];
    int64_t bi[NB];
    QD_ASSERT(k <= NB);
    brute_topk(q, k, bs, bi);
    for (size_t r = 0; r < k; r++) {
        if (bi[r] < 0) {
            assert_int_equal(id[r], -1);
            assert_true(isinf(sc[r]) && sc[r] < 0);
            continue;
        }
        qt_assert_near(sc[r], bs[r], 1e-5);
        int tie = (r > 0 && bs[r - 1] - bs[r] < 1e-5) ||
                  (r + 1 < k && bi[r + 1] >= 0 && bs[r] - bs[r + 1] < 1e-5);
        if (!tie)
            assert_int_equal(id[r], bi[r]);
    }
}

/* Fraction of queries whose best result is the true best match. */
static double recall_at_1(const qd_ann *a, const float *qs)
{
    float sc[NQ * K];
    int64_t id[NQ * K];
    assert_int_equal(qd_ann_search(a, qs, NQ, K, sc, id), 0);
    int hit = 0;
    for (int i = 0; i < NQ; i++) {
        double bs[1];
        int64_t bi[1];
        brute_topk(qs + i * DIM, 1, bs, bi);
        hit += id[i * K] == bi[0];
    }
    return (double)hit / NQ;
}

static void reset_alive(void)
{
    for (int i = 0; i < NB; i++)
        alive[i] = 1;
}

/* A new index of `spec` holding all base vectors (trained on them when needed). */
static qd_ann *make_full(const char *spec)
{
    char err[QD_ERRMSG_MAX];
    qd_ann *a = NULL;
    int rc = qd_ann_new(DIM, spec, &a, err, sizeof err);
    if (rc != 0)
        fail_msg("qd_ann_new(%s): %s", spec, err);
    if (qd_ann_needs_training(a))
        assert_int_equal(qd_ann_train(a, base, NB), 0);
    assert_int_equal(qd_ann_needs_training(a), 0);
    assert_int_equal(qd_ann_add(a, base, base_id, NB), 0);
    assert_int_equal(qd_ann_count(a), NB);
    reset_alive();
    return a;
}

/* Removes base vectors 3, 500, 1999 (and an absent id), checking the count. */
static void remove_three(qd_ann *a)
{
    int64_t gone[] = {base_id[3], base_id[500], base_id[1999], 123456789};
    size_t nremoved = 0;
    assert_int_equal(qd_ann_remove(a, gone, 4, &nremoved), 0);
    assert_int_equal(nremoved, 3);
    assert_int_equal(qd_ann_count(a), NB - 3);
    alive[3] = alive[500] = alive[1999] = 0;
}

static void test_flat_exact(void **state)
{
    (void)state;
    qd_ann *a = make_full("Flat");
    assert_string_equal(qd_ann_spec(a), "Flat");
    assert_int_equal(qd_ann_dim(a), DIM);
    assert_int_equal(qd_ann_can_remove(a), 1);
    assert_int_equal(qd_ann_can_get(a), 1);

    float sc[NQ * K];
    int64_t id[NQ * K];
    /* One query per call (FAISS's SIMD path) and all at once (its BLAS path). */
    for (int i = 0; i < NQ; i++) {
        assert_int_equal(qd_ann_search(a, rand_q + i * DIM, 1, K, sc, id), 0);
        assert_row_exact(rand_q + i * DIM, K, sc, id);
    }
    assert_int_equal(qd_ann_search(a, rand_q, NQ, K, sc, id), 0);
    for (int i = 0; i < NQ; i++)
        assert_row_exact(rand_q + i * DIM, K, sc + i * K, id + i * K);
    assert_true(recall_at_1(a, near_q) == 1.0);

    /* get returns the stored vector itself. */
    float v[DIM];
    assert_int_equal(qd_ann_get(a, base_id[1234], v), 0);
    assert_memory_equal(v, base + 1234 * DIM, sizeof v);
    assert_int_equal(qd_ann_get(a, 8, v), QD_ERR_NOTFOUND); /* ids are 10 i + 7 */
    assert_int_equal(qd_ann_get(a, -1, v), QD_ERR_NOTFOUND);

    /* Removal: gone from results and from get; the vectors after them still pair
     * with their own ids. */
    remove_three(a);
    for (int i = 0; i < NQ; i++) {
        assert_int_equal(qd_ann_search(a, base + (3 + i) * DIM, 1, K, sc, id), 0);
        assert_row_exact(base + (3 + i) * DIM, K, sc, id);
    }
    assert_int_equal(qd_ann_get(a, base_id[500], v), QD_ERR_NOTFOUND);
    assert_true(strstr(qd_ann_errmsg(a), "not in the index") != NULL);
    assert_int_equal(qd_ann_get(a, base_id[501], v), 0);
    assert_memory_equal(v, base + 501 * DIM, sizeof v);
    /* The message belongs to the call that failed: a later success clears it. */
    assert_string_equal(qd_ann_errmsg(a), "");
    size_t nremoved = 99;
    assert_int_equal(qd_ann_remove(a, NULL, 0, &nremoved), 0);
    assert_int_equal(nremoved, 0);
    qd_ann_free(a);
    qd_ann_free(NULL);
}

/* The exact index answers from its 8-bit scan by default: the same answers as FAISS's
 * own search, after adds and removals too; its parameters exist on Flat only. */
static void test_flat_scan_matches_faiss(void **state)
{
    (void)state;
    char err[QD_ERRMSG_MAX];
    qd_ann *a = NULL;
    assert_int_equal(qd_ann_new(DIM, "Flat", &a, err, sizeof err), 0);
    /* Added in two batches, with a removal between: the codes must follow both. */
    assert_int_equal(qd_ann_add(a, base, base_id, NB / 2), 0);
    reset_alive();
    int64_t gone[] = {base_id[3], base_id[500], base_id[1999]};
    size_t nremoved;
    assert_int_equal(qd_ann_remove(a, gone, 2, &nremoved), 0);
    assert_int_equal(nremoved, 2);
    assert_int_equal(qd_ann_add(a, base + NB / 2 * DIM, base_id + NB / 2, NB - NB / 2), 0);
    assert_int_equal(qd_ann_remove(a, gone + 2, 1, &nremoved), 0);
    assert_int_equal(nremoved, 1);
    alive[3] = alive[500] = alive[1999] = 0;
    float sc[NQ * K], fsc[NQ * K];
    int64_t id[NQ * K], fid[NQ * K];
    for (int pass = 0; pass < 2; pass++) {
        const float *qs = pass ? near_q : rand_q;
        assert_int_equal(qd_ann_set_param(a, "flatscan", 1), 0);
        assert_int_equal(qd_ann_search(a, qs, NQ, K, sc, id), 0);
        assert_int_equal(qd_ann_set_param(a, "flatscan", 0), 0);
        assert_int_equal(qd_ann_search(a, qs, NQ, K, fsc, fid), 0);
        for (int i = 0; i < NQ; i++) {
            assert_row_exact(qs + i * DIM, K, sc + i * K, id + i * K);
            assert_row_exact(qs + i * DIM, K, fsc + i * K, fid + i * K);
        }
    }
    assert_int_equal(qd_ann_set_param(a, "flatscan", 1), 0);
    assert_int_equal(qd_ann_set_param(a, "rescore", 10), 0);
    assert_int_equal(qd_ann_search(a, near_q, NQ, K, sc, id), 0);
    for (int i = 0; i < NQ; i++)
        assert_row_exact(near_q + i * DIM, K, sc + i * K, id + i * K);
    assert_int_equal(qd_ann_set_param(a, "rescore", 0), QD_ERR_INVAL);
    assert_int_equal(qd_ann_set_param(a, "flatscan", 2), QD_ERR_INVAL);
    qd_ann_free(a);

    a = make_full("HNSW16");
    assert_int_equal(qd_ann_set_param(a, "flatscan", 0), QD_ERR_INVAL);
    assert_true(strstr(qd_ann_errmsg(a), "Flat") != NULL);
    assert_int_equal(qd_ann_set_param(a, "rescore", 100), QD_ERR_INVAL);
    qd_ann_free(a);
}

/* Out of memory for the codes of an add: the vectors are in, and searches stay exact
 * (through FAISS). */
static void test_flat_scan_dropped(void **state)
{
    (void)state;
    char err[QD_ERRMSG_MAX];
    qd_ann *a = NULL;
    assert_int_equal(qd_ann_new(DIM, "Flat", &a, err, sizeof err), 0);
    assert_int_equal(qd_ann_add(a, base, base_id, NB / 2), 0);
    qd_alloc_fail_after(0, 0);
    int rc = qd_ann_add(a, base + NB / 2 * DIM, base_id + NB / 2, NB - NB / 2);
    qd_alloc_fail_after(-1, 0);
    assert_int_equal(rc, 0);
    assert_int_equal(qd_ann_count(a), NB);
    reset_alive();
    float sc[NQ * K];
    int64_t id[NQ * K];
    assert_int_equal(qd_ann_search(a, near_q, NQ, K, sc, id), 0);
    for (int i = 0; i < NQ; i++)
        assert_row_exact(near_q + i * DIM, K, sc + i * K, id + i * K);
    qd_ann_free(a);
}

/* Searches worth batching: 1 for a small Flat store, an HNSW one or FAISS's own scan;
 * 4 for a Flat store whose 8-bit codes outgrow the L2 cache (1 MiB: 32,768 vectors of
 * 32 components) where the kernels that score four queries in a pass run. */
static void test_search_batch(void **state)
{
    (void)state;
    char err[QD_ERRMSG_MAX];
    qd_ann *a = NULL;
    assert_int_equal(qd_ann_new(DIM, "HNSW16", &a, err, sizeof err), 0);
    assert_int_equal(qd_ann_add(a, base, base_id, NB), 0);
    assert_int_equal(qd_ann_search_batch(a), 1);
    qd_ann_free(a);

    assert_int_equal(qd_ann_new(DIM, "Flat", &a, err, sizeof err), 0);
    assert_int_equal(qd_ann_add(a, base, base_id, NB), 0);
    assert_int_equal(qd_ann_search_batch(a), 1);
    size_t big = ((size_t)1 << 20) / DIM;
    float *x = malloc(big * DIM * sizeof *x);
    int64_t *ids = malloc(big * sizeof *ids);
    assert_non_null(x);
    assert_non_null(ids);
    for (size_t i = 0; i < big; i++) {
        memcpy(x + i * DIM, base + (i % NB) * DIM, DIM * sizeof *x);
        ids[i] = 1000000 + (int64_t)i;
    }
    assert_int_equal(qd_ann_add(a, x, ids, big), 0);
    __builtin_cpu_init();
    size_t want = __builtin_cpu_supports("avx2") ? 4 : 1;
    assert_int_equal(qd_ann_search_batch(a), want);
    assert_int_equal(qd_ann_set_param(a, "flatscan", 0), 0);
    assert_int_equal(qd_ann_search_batch(a), 1);
    qd_ann_free(a);
    free(x);
    free(ids);
}

static void test_padding_when_fewer_than_k(void **state)
{
    (void)state;
    char err[QD_ERRMSG_MAX];
    for (int s = 0; s < 2; s++) {
        qd_ann *a = NULL;
        assert_int_equal(qd_ann_new(DIM, s ? "HNSW16" : NULL, &a, err, sizeof err), 0);
        assert_string_equal(qd_ann_spec(a), s ? "HNSW16" : "Flat");
        float sc[8];
        int64_t id[8];
        /* Empty index: all padding. */
        assert_int_equal(qd_ann_search(a, rand_q, 1, 8, sc, id), 0);
        for (int r = 0; r < 8; r++) {
            assert_int_equal(id[r], -1);
            assert_true(isinf(sc[r]) && sc[r] < 0);
        }
        assert_int_equal(qd_ann_add(a, base, base_id, 3), 0);
        assert_int_equal(qd_ann_search(a, rand_q, 1, 8, sc, id), 0);
        for (int r = 0; r < 8; r++) {
            if (r < 3) {
                assert_true(id[r] == base_id[0] || id[r] == base_id[1] || id[r] == base_id[2]);
                assert_true(r == 0 || sc[r] <= sc[r - 1]);
            } else {
                assert_int_equal(id[r], -1);
                assert_true(isinf(sc[r]) && sc[r] < 0);
            }
        }
        qd_ann_free(a);
    }
}

static void test_hnsw(void **state)
{
    (void)state;
    qd_ann *a = make_full("HNSW16");
    assert_true(recall_at_1(a, near_q) >= 0.95);
    assert_int_equal(qd_ann_set_param(a, "efSearch", 128), 0);
    assert_true(recall_at_1(a, near_q) >= 0.98);

    /* HNSW cannot remove: UNSUPPORTED and nothing changes. */
    assert_int_equal(qd_ann_can_remove(a), 0);
    int64_t gone = base_id[5];
    size_t nremoved = 99;
    assert_int_equal(qd_ann_remove(a, &gone, 1, &nremoved), QD_ERR_UNSUPPORTED);
    assert_int_equal(nremoved, 0);
    assert_int_equal(qd_ann_count(a), NB);
    assert_true(strlen(qd_ann_errmsg(a)) > 0);

    /* get works through the IDMap2 wrapper. */
    assert_int_equal(qd_ann_can_get(a), 1);
    float v[DIM];
    assert_int_equal(qd_ann_get(a, base_id[77], v), 0);
    assert_memory_equal(v, base + 77 * DIM, sizeof v);

    /* nprobe is not an HNSW parameter. */
    assert_int_equal(qd_ann_set_param(a, "nprobe", 4), QD_ERR_INVAL);
    assert_true(strstr(qd_ann_errmsg(a), "nprobe") != NULL);
    qd_ann_free(a);
}

static void test_ivf(void **state)
{
    (void)state;
    char err[QD_ERRMSG_MAX];
    qd_ann *a = NULL;
    assert_int_equal(qd_ann_new(DIM, "IVF4,Flat", &a, err, sizeof err), 0);
    assert_int_equal(qd_ann_needs_training(a), 1);
    assert_int_equal(qd_ann_add(a, base, base_id, 10), QD_ERR_INVAL);
    assert_true(strstr(qd_ann_errmsg(a), "trained") != NULL);
    assert_int_equal(qd_ann_train(a, base, 1), QD_ERR_INDEX); /* 1 point, 4 lists */
    assert_true(strlen(qd_ann_errmsg(a)) > 0);
    assert_int_equal(qd_ann_train(a, base, NB), 0);
    assert_int_equal(qd_ann_add(a, base, base_id, NB), 0);
    reset_alive();
    assert_int_equal(qd_ann_train(a, base, NB), QD_ERR_INVAL); /* would orphan the codes */

    /* One list of four: approximate but good on near-duplicates. */
    assert_int_equal(qd_ann_set_param(a, "nprobe", 1), 0);
    assert_true(recall_at_1(a, near_q) >= 0.95);
    /* All four lists: exact. */
    assert_int_equal(qd_ann_set_param(a, "nprobe", 4), 0);
    float sc[NQ * K];
    int64_t id[NQ * K];
    assert_int_equal(qd_ann_search(a, rand_q, NQ, K, sc, id), 0);
    for (int i = 0; i < NQ; i++)
        assert_row_exact(rand_q + i * DIM, K, sc + i * K, id + i * K);

    /* Bad parameter values are refused before FAISS sees them. */
    assert_int_equal(qd_ann_set_param(a, "nprobe", 0), QD_ERR_INVAL);
    assert_int_equal(qd_ann_set_param(a, "nprobe", 2.5), QD_ERR_INVAL);
    assert_int_equal(qd_ann_set_param(a, "nprobe", NAN), QD_ERR_INVAL);
    assert_int_equal(qd_ann_set_param(a, "efSearch", 16), QD_ERR_INVAL);
    assert_int_equal(qd_ann_set_param(a, "noSuchParam", 1), QD_ERR_INVAL);

    /* IVF removes natively; the ids stay the caller's. */
    assert_int_equal(qd_ann_can_remove(a), 1);
    remove_three(a);
    assert_int_equal(qd_ann_search(a, rand_q, NQ, K, sc, id), 0);
    for (int i = 0; i < NQ; i++)
        assert_row_exact(rand_q + i * DIM, K, sc + i * K, id + i * K);
    float v[DIM];
    assert_int_equal(qd_ann_can_get(a), 0);
    assert_int_equal(qd_ann_get(a, base_id[10], v), QD_ERR_UNSUPPORTED);
    qd_ann_free(a);
}

static void test_sq8(void **state)
{
    (void)state;
    char err[QD_ERRMSG_MAX];
    qd_ann *a = NULL;
    assert_int_equal(qd_ann_new(DIM, "SQ8", &a, err, sizeof err), 0);
    assert_int_equal(qd_ann_needs_training(a), 1);
    qd_ann_free(a);
    a = make_full("SQ8");
    assert_true(recall_at_1(a, near_q) >= 0.95);
    /* get decodes: close to, not equal to, the stored vector. */
    float v[DIM];
    assert_int_equal(qd_ann_get(a, base_id[42], v), 0);
    for (int j = 0; j < DIM; j++)
        qt_assert_near(v[j], base[42 * DIM + j], 0.02);
    assert_int_equal(qd_ann_can_remove(a), 1);
    remove_three(a);
    assert_true(recall_at_1(a, near_q) >= 0.95);
    assert_int_equal(qd_ann_get(a, base_id[3], v), QD_ERR_NOTFOUND);
    qd_ann_free(a);
}

/* What qd_ann makes of specs beyond the four main kinds. */
static void test_other_specs(void **state)
{
    (void)state;
    char err[QD_ERRMSG_MAX];
    qd_ann *a = NULL;
    /* An IVF under a PCA still takes ids natively: removes, cannot get. */
    assert_int_equal(qd_ann_new(DIM, "PCA16,IVF4,Flat", &a, err, sizeof err), 0);
    assert_int_equal(qd_ann_can_remove(a), 1);
    assert_int_equal(qd_ann_can_get(a), 0);
    assert_int_equal(qd_ann_train(a, base, NB), 0);
    assert_int_equal(qd_ann_add(a, base, base_id, NB), 0);
    reset_alive();
    /* PCA loses information, so no recall check: the point is that results carry the
     * caller's ids, not positions. */
    float sc[NQ * K];
    int64_t id[NQ * K];
    assert_int_equal(qd_ann_search(a, near_q, NQ, K, sc, id), 0);
    for (int i = 0; i < NQ * K; i++)
        assert_true(id[i] % 10 == 7 && id[i] < 10 * NB);
    qd_ann_free(a);
    /* An explicit IDMap2 over IVF is kept as given, but removal would corrupt its id
     * map and IVF cannot reconstruct: both refused. */
    assert_int_equal(qd_ann_new(DIM, "IDMap2,IVF4,Flat", &a, err, sizeof err), 0);
    assert_string_equal(qd_ann_spec(a), "IDMap2,IVF4,Flat");
    assert_int_equal(qd_ann_can_remove(a), 0);
    assert_int_equal(qd_ann_can_get(a), 0);
    qd_ann_free(a);
    /* An explicit IDMap2 over Flat is the same as "Flat". */
    assert_int_equal(qd_ann_new(DIM, "IDMap2,Flat", &a, err, sizeof err), 0);
    assert_int_equal(qd_ann_can_remove(a), 1);
    assert_int_equal(qd_ann_can_get(a), 1);
    qd_ann_free(a);
}

/* Saving and loading keeps vectors, ids, parameters and abilities. */
static void test_save_load_roundtrip(void **state)
{
    (void)state;
    const char *specs[] = {"Flat", "HNSW16", "IVF4,Flat", "SQ8"};
    char err[QD_ERRMSG_MAX];
    for (size_t s = 0; s < sizeof specs / sizeof *specs; s++) {
        qd_ann *a = make_full(specs[s]);
        if (strncmp(specs[s], "IVF", 3) == 0)
            assert_int_equal(qd_ann_set_param(a, "nprobe", 2), 0);
        if (qd_ann_can_remove(a))
            remove_three(a);
        const char *path = qt_path(qt_tmp_dir(), "roundtrip.idx");
        assert_int_equal(qd_ann_save(a, path, err, sizeof err), 0);
        /* Saving again replaces the file. */
        assert_int_equal(qd_ann_save(a, path, err, sizeof err), 0);

        qd_ann *b = NULL;
        if (qd_ann_load(path, &b, err, sizeof err) != 0)
            fail_msg("load %s: %s", specs[s], err);
        assert_int_equal(qd_ann_count(b), qd_ann_count(a));
        assert_int_equal(qd_ann_dim(b), DIM);
        assert_null(qd_ann_spec(b));
        assert_int_equal(qd_ann_can_remove(b), qd_ann_can_remove(a));
        assert_int_equal(qd_ann_can_get(b), qd_ann_can_get(a));
        assert_int_equal(qd_ann_needs_training(b), 0);

        float s1[NQ * K], s2[NQ * K];
        int64_t i1[NQ * K], i2[NQ * K];
        assert_int_equal(qd_ann_search(a, near_q, NQ, K, s1, i1), 0);
        assert_int_equal(qd_ann_search(b, near_q, NQ, K, s2, i2), 0);
        assert_memory_equal(i1, i2, sizeof i1);
        assert_memory_equal(s1, s2, sizeof s1);
        if (qd_ann_can_get(a)) {
            float v1[DIM], v2[DIM];
            assert_int_equal(qd_ann_get(a, base_id[600], v1), 0);
            assert_int_equal(qd_ann_get(b, base_id[600], v2), 0);
            assert_memory_equal(v1, v2, sizeof v1);
        }
        /* The loaded index keeps working as a writer. */
        int64_t extra = 5;
        assert_int_equal(qd_ann_add(b, rand_q, &extra, 1), 0);
        assert_int_equal(qd_ann_count(b), qd_ann_count(a) + 1);
        qd_ann_free(a);
        qd_ann_free(b);
    }
}

/* A small saved Flat index, read into memory. */
static char *small_index_bytes(size_t *len, const char *name)
{
    char err[QD_ERRMSG_MAX];
    qd_ann *a = NULL;
    assert_int_equal(qd_ann_new(DIM, "Flat", &a, err, sizeof err), 0);
    assert_int_equal(qd_ann_add(a, base, base_id, 5), 0);
    const char *path = qt_path(qt_tmp_dir(), name);
    assert_int_equal(qd_ann_save(a, path, err, sizeof err), 0);
    qd_ann_free(a);
    return qt_read_file(path, len);
}

/* Loads bytes written to a scratch file; returns the rc, checks failure leaves no
 * object and says something. */
static int load_bytes(const char *bytes, size_t len)
{
    char err[QD_ERRMSG_MAX] = "";
    const char *path = qt_path(qt_tmp_dir(), "damaged.idx");
    qt_write_file(path, bytes, len);
    qd_ann *a = (qd_ann *)&a;
    int rc = qd_ann_load(path, &a, err, sizeof err);
    if (rc == 0) {
        qd_ann_free(a);
        return 0;
    }
    assert_null(a);
    assert_non_null(strstr(err, "damaged.idx"));
    return rc;
}

static void test_damaged_files(void **state)
{
    (void)state;
    size_t len;
    char *good = small_index_bytes(&len, "small.idx");
    assert_int_equal(load_bytes(good, len), 0);

    /* Every truncation fails, before FAISS reads anything. */
    for (size_t n = 0; n < len; n++)
        assert_int_equal(load_bytes(good, n), QD_ERR_FORMAT);
    /* Every single damaged byte fails: in the FAISS part the CRC catches it. */
    char *bad = malloc(len);
    assert_non_null(bad);
    for (size_t i = 0; i < len; i++) {
        memcpy(bad, good, len);
        bad[i] ^= 0x5a;
        int rc = load_bytes(bad, len);
        assert_int_not_equal(rc, 0);
        if (i < len - 24)
            assert_int_equal(rc, QD_ERR_CHECKSUM);
    }
    /* Bytes appended after the trailer. */
    char *longer = malloc(len + 1);
    assert_non_null(longer);
    memcpy(longer, good, len);
    longer[len] = 0;
    assert_int_not_equal(load_bytes(longer, len + 1), 0);
    free(longer);
    free(bad);
    free(good);
}

/* Writes FAISS bytes followed by a qd_ann trailer, built here from the format that
 * ann.h documents: "QDANNCRC", version 1, CRC-32 and length, little-endian. */
static void write_with_trailer(const char *path, const char *bytes, size_t len)
{
    char *buf = malloc(len + 24);
    assert_non_null(buf);
    memcpy(buf, bytes, len);
    unsigned char *t = (unsigned char *)buf + len;
    memcpy(t, "QDANNCRC", 8);
    uint32_t crc = qd_crc32(0, bytes, len);
    for (int i = 0; i < 4; i++) {
        t[8 + i] = (unsigned char)(i == 0);
        t[12 + i] = (unsigned char)(crc >> (8 * i));
    }
    for (int i = 0; i < 8; i++)
        t[16 + i] = (unsigned char)((uint64_t)len >> (8 * i));
    qt_write_file(path, buf, len + 24);
    free(buf);
}

/* Writes a FAISS index made through the C API to path, plain. */
static void write_plain(const char *path, const char *spec, FaissMetricType metric, size_t n)
{
    FaissIndex *ix = NULL;
    assert_int_equal(faiss_index_factory(&ix, DIM, spec, metric), 0);
    if (n)
        assert_int_equal(faiss_Index_add_with_ids(ix, (int64_t)n, base, base_id), 0);
    assert_int_equal(faiss_write_index_fname(ix, path), 0);
    faiss_Index_free(ix);
}

/* Files qd_ann_save did not write: refused without the trailer; with one, checked for
 * what qd_ann needs. */
static void test_foreign_files(void **state)
{
    (void)state;
    char err[QD_ERRMSG_MAX];
    const char *plain = qt_path(qt_tmp_dir(), "plain.faiss");
    const char *wrapped = qt_path(qt_tmp_dir(), "wrapped.idx");
    qd_ann *a = NULL;
    size_t len;

    /* An IDMap2,Flat index written by FAISS: refused as is, fine with a trailer. */
    write_plain(plain, "IDMap2,Flat", METRIC_INNER_PRODUCT, NB);
    assert_int_equal(qd_ann_load(plain, &a, err, sizeof err), QD_ERR_FORMAT);
    assert_non_null(strstr(err, "trailer"));
    char *bytes = qt_read_file(plain, &len);
    write_with_trailer(wrapped, bytes, len);
    if (qd_ann_load(wrapped, &a, err, sizeof err) != 0)
        fail_msg("%s", err);
    assert_int_equal(qd_ann_count(a), NB);
    reset_alive();
    float sc[K];
    int64_t id[K];
    assert_int_equal(qd_ann_search(a, rand_q, 1, K, sc, id), 0);
    assert_row_exact(rand_q, K, sc, id);
    qd_ann_free(a);
    /* Junk after the FAISS bytes but under the checksum: FAISS stops short of it. */
    char *longer = malloc(len + 3);
    assert_non_null(longer);
    memcpy(longer, bytes, len);
    memcpy(longer + len, "xyz", 3);
    write_with_trailer(wrapped, longer, len + 3);
    assert_int_equal(qd_ann_load(wrapped, &a, err, sizeof err), QD_ERR_FORMAT);
    free(longer);
    free(bytes);

    /* Checksummed, but not an index, another metric, or ids by position. */
    write_with_trailer(wrapped, "JUNKJUNKJUNKJUNK", 16);
    assert_int_equal(qd_ann_load(wrapped, &a, err, sizeof err), QD_ERR_FORMAT);
    assert_non_null(strstr(err, "not a readable FAISS index"));
    write_plain(plain, "IDMap2,Flat", METRIC_L2, 10);
    bytes = qt_read_file(plain, &len);
    write_with_trailer(wrapped, bytes, len);
    free(bytes);
    assert_int_equal(qd_ann_load(wrapped, &a, err, sizeof err), QD_ERR_FORMAT);
    assert_non_null(strstr(err, "metric"));
    write_plain(plain, "Flat", METRIC_INNER_PRODUCT, 0);
    bytes = qt_read_file(plain, &len);
    write_with_trailer(wrapped, bytes, len);
    free(bytes);
    assert_int_equal(qd_ann_load(wrapped, &a, err, sizeof err), QD_ERR_FORMAT);
    assert_non_null(strstr(err, "position"));
    assert_null(a);

    /* A later trailer version is named as such. */
    bytes = qt_read_file(wrapped, &len);
    bytes[len - 16] = 2;
    qt_write_file(wrapped, bytes, len);
    free(bytes);
    assert_int_equal(qd_ann_load(wrapped, &a, err, sizeof err), QD_ERR_VERSION);
}

static int count_tmp_files(const char *dir)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        n += strstr(e->d_name, ".tmp.") != NULL;
    closedir(d);
    return n;
}

static void test_file_errors(void **state)
{
    (void)state;
    char err[QD_ERRMSG_MAX];
    qd_ann *a = NULL;
    assert_int_equal(qd_ann_load(qt_path(qt_tmp_dir(), "absent.idx"), &a, err, sizeof err),
                     QD_ERR_NOTFOUND);
    assert_null(a);
    assert_non_null(strstr(err, "absent.idx"));
    assert_int_equal(qd_ann_load(qt_tmp_dir(), &a, err, sizeof err), QD_ERR_IO);

    assert_int_equal(qd_ann_new(DIM, "Flat", &a, err, sizeof err), 0);
    assert_int_equal(qd_ann_save(a, qt_path(qt_tmp_dir(), "no/such/dir.idx"), err, sizeof err),
                     QD_ERR_IO);
    assert_non_null(strstr(err, "no/such/dir.idx"));
    /* Saving over a directory fails at the rename and leaves no temporary file. */
    const char *dir = qt_path(qt_tmp_dir(), "a_directory");
    mkdir(dir, 0755);
    assert_int_equal(qd_ann_save(a, dir, err, sizeof err), QD_ERR_IO);
    assert_int_equal(count_tmp_files(qt_tmp_dir()), 0);
    qd_ann_free(a);
}

static void test_bad_arguments(void **state)
{
    (void)state;
    char err[QD_ERRMSG_MAX];
    qd_ann *a = (qd_ann *)&a;
    assert_int_equal(qd_ann_new(0, "Flat", &a, err, sizeof err), QD_ERR_INVAL);
    assert_null(a);
    assert_int_equal(qd_ann_new(QD_ANN_MAX_DIM + 1, "Flat", &a, err, sizeof err), QD_ERR_INVAL);
    assert_int_equal(qd_ann_new(DIM, "Nonsense99", &a, err, sizeof err), QD_ERR_INVAL);
    assert_non_null(strstr(err, "Nonsense99"));
    assert_null(strstr(err, "Error in")); /* FAISS's function-signature prefix is cut */

    assert_int_equal(qd_ann_new(DIM, "Flat", &a, err, sizeof err), 0);
    int64_t ids[2] = {1, -5};
    assert_int_equal(qd_ann_add(a, base, ids, 2), QD_ERR_INVAL);
    assert_non_null(strstr(qd_ann_errmsg(a), "-5"));
    assert_int_equal(qd_ann_count(a), 0);
    float v[2 * DIM];
    memcpy(v, base, sizeof v);
    v[DIM + 3] = NAN;
    ids[1] = 2;
    assert_int_equal(qd_ann_add(a, v, ids, 2), QD_ERR_INVAL);
    assert_int_equal(qd_ann_count(a), 0);
    assert_int_equal(qd_ann_add(a, base, ids, 2), 0);
    float sc[4];
    int64_t id[4];
    assert_int_equal(qd_ann_search(a, base, 1, 0, sc, id), QD_ERR_INVAL);
    assert_int_equal(qd_ann_search(a, v + DIM, 1, 4, sc, id), QD_ERR_INVAL);
    assert_int_equal(qd_ann_search(a, NULL, 0, 4, NULL, NULL), 0);
    assert_int_equal(qd_ann_train(a, base, 0), QD_ERR_INVAL);
    assert_int_equal(qd_ann_set_param(a, "", 1), QD_ERR_INVAL);
    qd_ann_free(a);
}

/* Every allocation qd_ann makes, failed in turn: NOMEM and nothing half-built. */
static void test_allocation_failures(void **state)
{
    (void)state;
    char err[QD_ERRMSG_MAX];
    size_t len;
    free(small_index_bytes(&len, "alloc.idx"));
    const char *path = qt_path(qt_tmp_dir(), "alloc.idx");
    for (int which = 0; which < 3; which++) {
        int failures = 0;
        for (long n = 0;; n++) {
            qd_ann *a = (qd_ann *)&a;
            qd_alloc_fail_after(n, 0);
            int rc = which == 1   ? qd_ann_load(path, &a, err, sizeof err)
                     : which == 2 ? qd_ann_new(DIM, "Flat", &a, err, sizeof err)
                                  : qd_ann_new(DIM, "SQ8", &a, err, sizeof err);
            qd_alloc_fail_after(-1, 0);
            if (rc == 0) {
                qd_ann_free(a);
                break;
            }
            assert_int_equal(rc, QD_ERR_NOMEM);
            assert_null(a);
            failures++;
        }
        assert_true(failures >= 1);
    }
}

/* --- threads -------------------------------------------------------------------------- */

struct search_job {
    const qd_ann *a;   /* index searched by every thread */
    const float *one;  /* (NQ, K) serial one-at-a-time scores */
    const int64_t *one_id; /* (NQ, K) their ids */
    const float *all;  /* (NQ, K) serial whole-batch scores */
    const int64_t *all_id; /* (NQ, K) their ids */
    int mismatches;    /* out: results that differ from the serial ones */
};

static void *search_thread(void *arg)
{
    struct search_job *j = arg;
    float sc[NQ * K];
    int64_t id[NQ * K];
    for (int rep = 0; rep < 3; rep++) {
        for (int i = 0; i < NQ; i++) {
            if (qd_ann_search(j->a, near_q + i * DIM, 1, K, sc, id) != 0)
                j->mismatches++;
            /* Same call shape as the serial run: the same bits. */
            if (memcmp(id, j->one_id + i * K, K * sizeof *id) != 0 ||
                memcmp(sc, j->one + i * K, K * sizeof *sc) != 0)
                j->mismatches++;
        }
        if (qd_ann_search(j->a, near_q, NQ, K, sc, id) != 0)
            j->mismatches++;
        for (int i = 0; i < NQ * K; i++)
            if (id[i] != j->all_id[i] || fabsf(sc[i] - j->all[i]) > 1e-6f)
                j->mismatches++;
    }
    return NULL;
}

static void test_concurrent_search(void **state)
{
    (void)state;
    const char *specs[] = {"Flat", "HNSW16", "IVF4,Flat", "SQ8"};
    static float one[NQ * K], all[NQ * K];
    static int64_t one_id[NQ * K], all_id[NQ * K];
    for (size_t s = 0; s < sizeof specs / sizeof *specs; s++) {
        qd_ann *a = make_full(specs[s]);
        for (int i = 0; i < NQ; i++)
            assert_int_equal(
                qd_ann_search(a, near_q + i * DIM, 1, K, one + i * K, one_id + i * K), 0);
        assert_int_equal(qd_ann_search(a, near_q, NQ, K, all, all_id), 0);
        struct search_job jobs[4];
        pthread_t t[4];
        for (int i = 0; i < 4; i++) {
            jobs[i] = (struct search_job){a, one, one_id, all, all_id, 0};
            assert_int_equal(pthread_create(&t[i], NULL, search_thread, &jobs[i]), 0);
        }
        for (int i = 0; i < 4; i++) {
            assert_int_equal(pthread_join(t[i], NULL), 0);
            assert_int_equal(jobs[i].mismatches, 0);
        }
        qd_ann_free(a);
    }
}

struct threads_probe {
    const qd_ann *a;  /* index to search */
    int before;       /* out: omp_get_max_threads() before any qd_ann call */
    int during;       /* out: after a search with qd_ann_set_threads(7) */
    int after;        /* out: after a search with qd_ann_set_threads(0) */
};

static void *threads_thread(void *arg)
{
    struct threads_probe *p = arg;
    float sc[K];
    int64_t id[K];
    p->before = omp_get_max_threads();
    qd_ann_set_threads(7);
    qd_ann_search(p->a, near_q, 1, K, sc, id);
    p->during = omp_get_max_threads();
    qd_ann_set_threads(0);
    qd_ann_search(p->a, near_q, 1, K, sc, id);
    p->after = omp_get_max_threads();
    return NULL;
}

/* The thread bound reaches a thread that never called omp_set_num_threads itself,
 * and 0 restores that thread's default. */
static void test_set_threads(void **state)
{
    (void)state;
    char err[QD_ERRMSG_MAX];
    qd_ann *a = NULL;
    assert_int_equal(qd_ann_new(DIM, "Flat", &a, err, sizeof err), 0);
    struct threads_probe p = {a, 0, 0, 0};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, threads_thread, &p), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(p.during, 7);
    assert_int_equal(p.after, p.before);
    qd_ann_free(a);
}

static void *fail_in_thread(void *arg)
{
    qd_ann_set_param((qd_ann *)arg, "nprobe", 3); /* Flat has no nprobe */
    return NULL;
}

static void test_errmsg_per_thread(void **state)
{
    (void)state;
    char err[QD_ERRMSG_MAX];
    qd_ann *a = NULL;
    assert_int_equal(qd_ann_new(DIM, "Flat", &a, err, sizeof err), 0);
    assert_int_equal(qd_ann_search(a, base, 1, 0, NULL, NULL), QD_ERR_INVAL);
    char mine[QD_ERRMSG_MAX];
    snprintf(mine, sizeof mine, "%s", qd_ann_errmsg(a));
    assert_non_null(strstr(mine, "k = 0"));
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, fail_in_thread, a), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_string_equal(qd_ann_errmsg(a), mine);
    qd_ann_free(a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_flat_exact),
        cmocka_unit_test(test_flat_scan_matches_faiss),
        cmocka_unit_test(test_flat_scan_dropped),
        cmocka_unit_test(test_search_batch),
        cmocka_unit_test(test_padding_when_fewer_than_k),
        cmocka_unit_test(test_hnsw),
        cmocka_unit_test(test_ivf),
        cmocka_unit_test(test_sq8),
        cmocka_unit_test(test_other_specs),
        cmocka_unit_test(test_save_load_roundtrip),
        cmocka_unit_test(test_damaged_files),
        cmocka_unit_test(test_foreign_files),
        cmocka_unit_test(test_file_errors),
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_allocation_failures),
        cmocka_unit_test(test_concurrent_search),
        cmocka_unit_test(test_set_threads),
        cmocka_unit_test(test_errmsg_per_thread),
    };
    return cmocka_run_group_tests(tests, setup_data, NULL);
}
