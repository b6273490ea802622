/*
 * test_faiss.c - the FAISS C API as qdup uses it, run against whichever implementation
 * the build links: FAISS's own, built from Debian's source package (QDUP_FAISS=source),
 * or qdup's indexer/faiss_c_api.cpp over Debian's libfaiss (QDUP_FAISS=system). With
 * the first, it also checks that the dynamic loader picked the library variant the
 * processor can run (QDUP_FAISS_VARIANT, set by ctest for the run that masks AVX2).
 *
 * Expected results are computed here by brute force (inner products in double), never
 * taken from FAISS, so a wrong search, a wrong id after removal or a lost vector after
 * a write/read round trip all fail.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <faiss/c_api/AutoTune_c.h>
#include <faiss/c_api/IndexFlat_c.h>
#include <faiss/c_api/IndexIVF_c.h>
#include <faiss/c_api/IndexPreTransform_c.h>
#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/MetaIndexes_c.h>
#include <faiss/c_api/error_c.h>
#include <faiss/c_api/impl/AuxIndexStructures_c.h>
#include <faiss/c_api/index_factory_c.h>
#include <faiss/c_api/index_io_c.h>
#include <faiss/c_api/utils/distances_c.h>

#include "testutil.h"

#define D 8
#define N 50

/* Test vectors (N, D) and their ids (N): ids are not positions, so that a test mixing
 * them up fails. */
static float xb[N * D];
static int64_t xid[N];
static int present[N]; /* 1 while vector i is expected in the index */

static void make_data(void)
{
    uint64_t rng = 12345;
    for (int i = 0; i < N * D; i++)
        xb[i] = (float)qt_uniform(&rng, -1, 1);
    for (int i = 0; i < N; i++) {
        xid[i] = 1000 + 7 * i;
        present[i] = 1;
    }
}

static double dot(const float *a, const float *b)
{
    double s = 0;
    for (int j = 0; j < D; j++)
        s += (double)a[j] * b[j];
    return s;
}

/* Checks one query's FAISS result against brute force over the present vectors. */
static void check_against_brute_force(const float *q, int k, const float *dist,
                                      const int64_t *lab)
{
    double best[N];
    int order[N], m = 0;
    for (int i = 0; i < N; i++)
        if (present[i]) {
            best[m] = dot(q, xb + i * D);
            order[m++] = i;
        }
    /* Selection sort by score, descending: N is tiny. */
    for (int a = 0; a < m; a++)
        for (int b = a + 1; b < m; b++)
            if (best[b] > best[a]) {
                double t = best[a];
                best[a] = best[b];
                best[b] = t;
                int o = order[a];
                order[a] = order[b];
                order[b] = o;
            }
    for (int r = 0; r < k; r++) {
        if (r >= m) {
            assert_int_equal(lab[r], -1);
            continue;
        }
        qt_assert_near(dist[r], best[r], 1e-5);
        /* Ids must match unless two scores are too close to order reliably. */
        int tie = (r > 0 && best[r - 1] - best[r] < 1e-5) ||
                  (r + 1 < m && best[r] - best[r + 1] < 1e-5);
        if (!tie)
            assert_int_equal(lab[r], xid[order[r]]);
    }
}

static FaissIndex *make_idmap2_flat(void)
{
    FaissIndex *ix = NULL;
    assert_int_equal(faiss_index_factory(&ix, D, "IDMap2,Flat", METRIC_INNER_PRODUCT), 0);
    assert_non_null(ix);
    assert_int_equal(faiss_Index_add_with_ids(ix, N, xb, xid), 0);
    return ix;
}

static void search_all(const FaissIndex *ix, int k, float *dist, int64_t *lab)
{
    /* Queries: the first 5 stored vectors, negated and mixed so they are not stored. */
    float q[5 * D];
    for (int i = 0; i < 5 * D; i++)
        q[i] = xb[i] * 0.5f - xb[5 * D + i];
    assert_int_equal(faiss_Index_search(ix, 5, q, k, dist, lab), 0);
    for (int i = 0; i < 5; i++)
        check_against_brute_force(q + i * D, k, dist + i * k, lab + i * k);
}

static void test_factory_add_search(void **state)
{
    (void)state;
    make_data();
    FaissIndex *ix = make_idmap2_flat();
    assert_int_equal(faiss_Index_d(ix), D);
    assert_int_equal(faiss_Index_ntotal(ix), N);
    assert_int_equal(faiss_Index_is_trained(ix), 1);
    assert_int_equal(faiss_Index_metric_type(ix), METRIC_INNER_PRODUCT);
    assert_non_null(faiss_IndexIDMap2_cast(ix));
    assert_non_null(faiss_IndexIDMap_cast(ix)); /* IDMap2 is an IDMap */
    assert_null(faiss_IndexIVF_cast(ix));

    float dist[5 * 10];
    int64_t lab[5 * 10];
    search_all(ix, 10, dist, lab);

    /* k over ntotal pads with -1. */
    float dist2[5 * (N + 3)];
    int64_t lab2[5 * (N + 3)];
    search_all(ix, N + 3, dist2, lab2);
    assert_int_equal(lab2[N + 2], -1);

    /* The id map lists ids in insertion order, and reconstruct finds them by id. */
    int64_t *map;
    size_t nmap;
    faiss_IndexIDMap_id_map(ix, &map, &nmap);
    assert_int_equal(nmap, N);
    assert_memory_equal(map, xid, sizeof xid);
    assert_int_equal(faiss_Index_ntotal(faiss_IndexIDMap_sub_index(ix)), N);
    float v[D];
    assert_int_equal(faiss_Index_reconstruct(ix, xid[17], v), 0);
    assert_memory_equal(v, xb + 17 * D, sizeof v);
    faiss_Index_free(ix);
}

static void test_remove_ids(void **state)
{
    (void)state;
    make_data();
    FaissIndex *ix = make_idmap2_flat();
    int64_t gone[] = {xid[0], xid[13], xid[49], 999999 /* absent */};
    FaissIDSelectorBatch *sel = NULL;
    assert_int_equal(faiss_IDSelectorBatch_new(&sel, 4, gone), 0);
    assert_non_null(sel);
    size_t nremoved = 0;
    assert_int_equal(faiss_Index_remove_ids(ix, (const FaissIDSelector *)sel, &nremoved), 0);
    faiss_IDSelector_free((FaissIDSelector *)sel);
    assert_int_equal(nremoved, 3);
    assert_int_equal(faiss_Index_ntotal(ix), N - 3);
    present[0] = present[13] = present[49] = 0;

    float dist[5 * N];
    int64_t lab[5 * N];
    search_all(ix, N, dist, lab); /* every remaining vector, in order; none removed */
    for (int i = 0; i < 5 * N; i++)
        assert_true(lab[i] != xid[0] && lab[i] != xid[13] && lab[i] != xid[49]);

    /* A removed id cannot be reconstructed; the ones after it moved but still map. */
    float v[D];
    assert_int_not_equal(faiss_Index_reconstruct(ix, xid[13], v), 0);
    assert_true(strlen(faiss_get_last_error()) > 0);
    assert_int_equal(faiss_Index_reconstruct(ix, xid[14], v), 0);
    assert_memory_equal(v, xb + 14 * D, sizeof v);

    /* reset empties it. */
    assert_int_equal(faiss_Index_reset(ix), 0);
    assert_int_equal(faiss_Index_ntotal(ix), 0);
    faiss_Index_free(ix);
}

static void test_write_read(void **state)
{
    (void)state;
    make_data();
    FaissIndex *ix = make_idmap2_flat();
    const char *path = qt_path(qt_tmp_dir(), "flat.faiss");
    assert_int_equal(faiss_write_index_fname(ix, path), 0);

    FaissIndex *back = NULL;
    assert_int_equal(faiss_read_index_fname(path, 0, &back), 0);
    assert_non_null(back);
    assert_int_equal(faiss_Index_ntotal(back), N);
    assert_int_equal(faiss_Index_d(back), D);
    assert_non_null(faiss_IndexIDMap2_cast(back));

    float d1[5 * 10], d2[5 * 10];
    int64_t l1[5 * 10], l2[5 * 10];
    search_all(ix, 10, d1, l1);
    search_all(back, 10, d2, l2);
    assert_memory_equal(l1, l2, sizeof l1);
    assert_memory_equal(d1, d2, sizeof d1);
    faiss_Index_free(back);

    /* The FILE* variants read and write the same bytes. */
    const char *path2 = qt_path(qt_tmp_dir(), "flat2.faiss");
    FILE *f = fopen(path2, "wb");
    assert_non_null(f);
    assert_int_equal(faiss_write_index(ix, f), 0);
    assert_int_equal(fclose(f), 0);
    size_t n1, n2;
    char *b1 = qt_read_file(path, &n1), *b2 = qt_read_file(path2, &n2);
    assert_int_equal(n1, n2);
    assert_memory_equal(b1, b2, n1);
    free(b1);
    free(b2);
    f = fopen(path2, "rb");
    assert_non_null(f);
    assert_int_equal(faiss_read_index(f, 0, &back), 0);
    fclose(f);
    assert_int_equal(faiss_Index_ntotal(back), N);
    faiss_Index_free(back);
    faiss_Index_free(ix);
}

static void test_errors(void **state)
{
    (void)state;
#ifdef QDUP_FAISS_SOURCE
    FaissIndex *ix = NULL; /* FAISS's own C API leaves it as it was on failure */
#else
    FaissIndex *ix = (FaissIndex *)&ix; /* qdup's must overwrite it with NULL */
#endif
    int rc = faiss_index_factory(&ix, D, "NoSuchIndex42", METRIC_INNER_PRODUCT);
    assert_int_not_equal(rc, 0);
    assert_null(ix);
    assert_non_null(strstr(faiss_get_last_error(), "NoSuchIndex42"));

#ifndef QDUP_FAISS_SOURCE
    /* qdup's refuses dimension 0; FAISS's own makes an index of it (qd_ann checks). */
    assert_int_not_equal(faiss_index_factory(&ix, 0, "Flat", METRIC_INNER_PRODUCT), 0);
#endif
    assert_int_not_equal(faiss_index_factory(&ix, D, NULL, METRIC_INNER_PRODUCT), 0);

    /* k = 0 and untrained adds are errors, not crashes. */
    assert_int_equal(faiss_index_factory(&ix, D, "IVF4,Flat", METRIC_INNER_PRODUCT), 0);
    float q[D] = {1};
    float dist[1];
    int64_t lab[1];
    assert_int_not_equal(faiss_Index_search(ix, 1, q, 0, dist, lab), 0);
    int64_t id = 5;
    assert_int_not_equal(faiss_Index_add_with_ids(ix, 1, q, &id), 0);
    assert_true(strlen(faiss_get_last_error()) > 0);
    faiss_Index_free(ix);

    /* Reading what is not an index. */
    FaissIndex *back = NULL;
    assert_int_not_equal(
        faiss_read_index_fname(qt_path(qt_tmp_dir(), "missing.faiss"), 0, &back), 0);
    assert_null(back);
    assert_non_null(strstr(faiss_get_last_error(), "missing.faiss"));
    const char *junk = qt_path(qt_tmp_dir(), "junk.faiss");
    /* (An unknown type tag: FAISS 1.7.3 leaks the half-read index when a known one is
     * followed by junk.) */
    qt_write_file(junk, "JUNK this is not an index", 25);
    assert_int_not_equal(faiss_read_index_fname(junk, 0, &back), 0);
    assert_null(back);
}

/* Makes a different error in another thread and reports its message. */
static void *other_thread_error(void *arg)
{
    FaissIndex *ix = NULL;
    int rc = faiss_index_factory(&ix, D, "OtherThreadBogus", METRIC_INNER_PRODUCT);
    snprintf(arg, 256, "%d %s", rc, faiss_get_last_error());
    return NULL;
}

static void test_error_is_per_thread(void **state)
{
    (void)state;
    FaissIndex *ix = NULL;
    assert_int_not_equal(faiss_index_factory(&ix, D, "MainThreadBogus", METRIC_INNER_PRODUCT), 0);
    char mine[256];
    snprintf(mine, sizeof mine, "%s", faiss_get_last_error());
    char theirs[256] = "";
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, other_thread_error, theirs), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_non_null(strstr(theirs, "OtherThreadBogus"));
    assert_string_equal(faiss_get_last_error(), mine);
    assert_non_null(strstr(mine, "MainThreadBogus"));
}

static void test_parameters_and_casts(void **state)
{
    (void)state;
    make_data();
    FaissParameterSpace *ps = NULL;
    assert_int_equal(faiss_ParameterSpace_new(&ps), 0);

    FaissIndex *ivf = NULL;
    assert_int_equal(faiss_index_factory(&ivf, D, "IVF4,Flat", METRIC_INNER_PRODUCT), 0);
    assert_non_null(faiss_IndexIVF_cast(ivf));
    assert_null(faiss_IndexIDMap_cast(ivf));
    assert_int_equal(faiss_Index_is_trained(ivf), 0);
    assert_int_equal(faiss_ParameterSpace_set_index_parameter(ps, ivf, "nprobe", 4), 0);
    assert_int_not_equal(faiss_ParameterSpace_set_index_parameter(ps, ivf, "efSearch", 4), 0);
    faiss_Index_free(ivf);

    FaissIndex *flat = make_idmap2_flat();
    assert_int_not_equal(faiss_ParameterSpace_set_index_parameter(ps, flat, "nprobe", 4), 0);
    assert_non_null(strstr(faiss_get_last_error(), "nprobe"));
    faiss_Index_free(flat);

    FaissIndex *hnsw = NULL;
    assert_int_equal(faiss_index_factory(&hnsw, D, "IDMap2,HNSW8", METRIC_INNER_PRODUCT), 0);
    assert_int_equal(faiss_ParameterSpace_set_index_parameter(ps, hnsw, "efSearch", 32), 0);
    /* HNSW cannot remove: FAISS says so by failing, even for an empty selector. */
    int64_t none = 0;
    FaissIDSelectorBatch *sel = NULL;
    assert_int_equal(faiss_IDSelectorBatch_new(&sel, 0, &none), 0);
    assert_int_not_equal(faiss_Index_remove_ids(hnsw, (const FaissIDSelector *)sel, NULL), 0);
    faiss_IDSelector_free((FaissIDSelector *)sel);
    faiss_Index_free(hnsw);
    faiss_ParameterSpace_free(ps);

    /* A pre-transform is seen through to the index under it. */
    FaissIndex *pca = NULL;
    assert_int_equal(faiss_index_factory(&pca, D, "PCA4,IVF2,Flat", METRIC_INNER_PRODUCT), 0);
    FaissIndexPreTransform *pt = faiss_IndexPreTransform_cast(pca);
    assert_non_null(pt);
    assert_null(faiss_IndexIVF_cast(pca));
    FaissIndex *under = faiss_IndexPreTransform_index(pt);
    assert_non_null(faiss_IndexIVF_cast(under));
    assert_int_equal(faiss_Index_d(under), 4);
    faiss_Index_free(pca);

    int old = faiss_get_distance_compute_blas_threshold();
    faiss_set_distance_compute_blas_threshold(3);
    assert_int_equal(faiss_get_distance_compute_blas_threshold(), 3);
    faiss_set_distance_compute_blas_threshold(old);
}

/* Exhaustive search takes a BLAS path from the BLAS threshold on: both paths must
 * give the brute-force answer. */
static void test_blas_path_agrees(void **state)
{
    (void)state;
    make_data();
    FaissIndex *ix = make_idmap2_flat();
    int old = faiss_get_distance_compute_blas_threshold();
    float d1[5 * 10], d2[5 * 10];
    int64_t l1[5 * 10], l2[5 * 10];
    faiss_set_distance_compute_blas_threshold(1000); /* 5 queries: SIMD loops */
    search_all(ix, 10, d1, l1);
    faiss_set_distance_compute_blas_threshold(1); /* 5 queries: BLAS */
    search_all(ix, 10, d2, l2);
    faiss_set_distance_compute_blas_threshold(old);
    for (int i = 0; i < 5 * 10; i++)
        qt_assert_near(d1[i], d2[i], 1e-5);
    faiss_Index_free(ix);
}

/* The flat index under IDMap2 hands out its vectors in insertion order (qd_ann's exact
 * search re-scores from them); other kinds are not flat. */
static void test_flat_vectors(void **state)
{
    (void)state;
    FaissIndex *ix = NULL;
    assert_int_equal(faiss_index_factory(&ix, D, "IDMap2,Flat", METRIC_INNER_PRODUCT), 0);
    assert_int_equal(faiss_Index_add_with_ids(ix, N, xb, xid), 0);
    FaissIndexFlat *flat = faiss_IndexFlat_cast(faiss_IndexIDMap_sub_index(ix));
    assert_non_null(flat);
    float *v = NULL;
    size_t nf = 0;
    faiss_IndexFlat_xb(flat, &v, &nf);
    assert_int_equal(nf, N * D);
    assert_memory_equal(v, xb, sizeof xb);
    assert_null(faiss_IndexFlat_cast(ix)); /* the wrapper itself is not flat */
    faiss_Index_free(ix);
    assert_int_equal(faiss_index_factory(&ix, D, "IDMap2,HNSW8", METRIC_INNER_PRODUCT), 0);
    assert_null(faiss_IndexFlat_cast(faiss_IndexIDMap_sub_index(ix)));
    faiss_Index_free(ix);
}

/* Which file the C API was loaded from: with QDUP_FAISS=source, the AVX2 variant under
 * glibc-hwcaps/x86-64-v3/ where the processor has that level, the generic one
 * otherwise. QDUP_FAISS_VARIANT (avx2 or generic) overrides what the CPU suggests: ctest
 * sets it for the run in which glibc is told to ignore AVX2. */
static void test_library_variant(void **state)
{
    (void)state;
    Dl_info info;
    assert_true(dladdr((void *)faiss_Index_search, &info) != 0);
    print_message("FAISS C API from %s\n", info.dli_fname);
#ifdef QDUP_FAISS_SOURCE
    const char *want = getenv("QDUP_FAISS_VARIANT");
    if (!want || !*want) {
        __builtin_cpu_init();
        int v3 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                 __builtin_cpu_supports("bmi2");
        want = v3 ? "avx2" : "generic";
    }
    int is_avx2 = strstr(info.dli_fname, "/glibc-hwcaps/x86-64-v3/") != NULL;
    if (is_avx2 != (strcmp(want, "avx2") == 0))
        fail_msg("expected the %s variant, loaded %s", want, info.dli_fname);
#else
    skip();
#endif
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_factory_add_search),
        cmocka_unit_test(test_remove_ids),
        cmocka_unit_test(test_write_read),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_error_is_per_thread),
        cmocka_unit_test(test_parameters_and_casts),
        cmocka_unit_test(test_blas_path_agrees),
        cmocka_unit_test(test_flat_vectors),
        cmocka_unit_test(test_library_variant),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
