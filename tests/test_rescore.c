/*
 * test_rescore.c - a compressed index kind (IVF with 4-bit product quantization,
 * fast-scan) with exact re-scoring of the top candidates from the float vectors in
 * SQLite (indexer/rescore.c): on 20,000 random unit vectors, recall@10 against a
 * brute-force search of the same vectors, the returned scores being the exact cosines,
 * min_score applied to those, the rescore parameter, removal (tombstones: fast-scan
 * codes cannot be removed) and compaction, adds, and the same answers after a reopen
 * (read-write and read-only).
 *
 * The store takes vectors as given (the model only fixes the dimension, 12 for the
 * fixture), so the test knows every stored vector and can compute the truth itself.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qdup/common.h"
#include "qdup/store.h"
#include "testutil.h"

#define NVEC 20000
#define NQ 200
#define K 10
#define SPEC "IVF32,PQ12x4fs"

/* The vectors of the test: NVEC stored ones (row i+1 is vector i) and NQ queries. */
typedef struct rs_data {
    int dim;          /* the fixture model's dimension */
    float *vec;       /* (NVEC, dim) stored vectors, unit length */
    int *live;        /* (NVEC) 1 while vector i is live in the store */
    float *q;         /* (NQ, dim) queries, unit length */
} rs_data;

static void unit_random(uint64_t *st, float *v, int dim)
{
    double norm = 0;
    for (int d = 0; d < dim; d++) {
        /* A sum of uniforms: roughly normal, so directions are spread evenly. */
        double x = 0;
        for (int j = 0; j < 4; j++)
            x += (double)(qt_rand(st) % 100000) / 100000.0 - 0.5;
        v[d] = (float)x;
        norm += x * x;
    }
    for (int d = 0; d < dim; d++)
        v[d] = (float)(v[d] / sqrt(norm));
}

static qd_store *create_store(const char *db, int *dim)
{
    char err[QD_ERRMSG_MAX];
    qd_store_opts o = {.model_path = qt_path(qt_fixtures_dir(), "fwd_plain.qdm"),
                       .index_spec = SPEC, .threads = 2};
    qd_store *s = NULL;
    if (qd_store_create(db, &o, &s, err, sizeof err))
        fail_msg("create %s: %s", db, err);
    qd_store_info in;
    assert_int_equal(qd_store_get_info(s, &in), 0);
    *dim = in.dim;
    return s;
}

static qd_store *reopen(const char *db, int readonly)
{
    char err[QD_ERRMSG_MAX];
    qd_store_opts o = {.readonly = readonly, .threads = 2};
    qd_store *s = NULL;
    if (qd_store_open(db, &o, &s, err, sizeof err))
        fail_msg("open %s: %s", db, err);
    return s;
}

/* Adds vectors lo..hi-1 with ids "v<i>" and texts "t<i> x" (distinct texts). */
static void add_range(qd_store *s, const rs_data *d, size_t lo, size_t hi)
{
    size_t n = hi - lo;
    qd_store_item *it = calloc(n, sizeof *it);
    char (*id)[16] = calloc(n, sizeof *id);
    char (*text)[24] = calloc(n, sizeof *text);
    qd_store_result *res = calloc(n, sizeof *res);
    assert_non_null(it);
    assert_non_null(id);
    assert_non_null(text);
    assert_non_null(res);
    for (size_t i = 0; i < n; i++) {
        snprintf(id[i], sizeof id[i], "v%zu", lo + i);
        snprintf(text[i], sizeof text[i], "t%zu x", lo + i);
        it[i] = (qd_store_item){id[i], strlen(id[i]), text[i], strlen(text[i]),
                                d->vec + (lo + i) * (size_t)d->dim};
    }
    if (qd_store_add(s, it, n, 0, res))
        fail_msg("add: %s", qd_store_errmsg(s));
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(res[i].status, QD_STORE_ADDED);
        assert_int_equal(res[i].row, (int64_t)(lo + i + 1));
        d->live[lo + i] = 1;
    }
    free(it);
    free(id);
    free(text);
    free(res);
}

/* The exact top K rows of query j among the live vectors (rows, best first). */
static void truth(const rs_data *d, size_t j, int64_t *top, float *best)
{
    for (int a = 0; a < K; a++) {
        top[a] = -1;
        best[a] = -INFINITY;
    }
    const float *q = d->q + j * (size_t)d->dim;
    for (size_t i = 0; i < NVEC; i++) {
        if (!d->live[i])
            continue;
        float dot = 0;
        for (int c = 0; c < d->dim; c++)
            dot += q[c] * d->vec[i * (size_t)d->dim + c];
        if (dot <= best[K - 1])
            continue;
        int p = K - 1;
        while (p > 0 && best[p - 1] < dot) {
            best[p] = best[p - 1];
            top[p] = top[p - 1];
            p--;
        }
        best[p] = dot;
        top[p] = (int64_t)i + 1;
    }
}

/* Searches every query: recall@K against the truth, and checks that every score is
 * the exact cosine of its row (re-scored from the floats) when exact is set, and that
 * no removed row comes back. */
static double recall(qd_store *s, const rs_data *d, int exact)
{
    size_t found = 0, want = 0;
    for (size_t j = 0; j < NQ; j++) {
        int64_t top[K];
        float best[K];
        truth(d, j, top, best);
        qd_store_hits h;
        if (qd_store_search(s, d->q + j * (size_t)d->dim, 1, K, -2.0f, NULL, &h))
            fail_msg("search: %s", qd_store_errmsg(s));
        assert_int_equal(h.n, K);
        for (size_t b = 0; b < h.n; b++) {
            int64_t row = h.hit[b].row.row;
            assert_true(row >= 1 && row <= NVEC);
            assert_true(d->live[row - 1]);
            if (b > 0 && exact)
                assert_true(h.hit[b].score <= h.hit[b - 1].score);
            if (exact) {
                float dot = 0;
                for (int c = 0; c < d->dim; c++)
                    dot += d->q[j * (size_t)d->dim + c] * d->vec[(size_t)(row - 1) * d->dim + c];
                assert_float_equal(h.hit[b].score, dot, 1e-5);
            }
        }
        for (int a = 0; a < K; a++) {
            want++;
            for (size_t b = 0; b < h.n; b++)
                if (h.hit[b].row.row == top[a]) {
                    found++;
                    break;
                }
        }
        qd_store_hits_free(&h);
    }
    return (double)found / (double)want;
}

static void test_rescore(void **state)
{
    (void)state;
    char db[4096];
    snprintf(db, sizeof db, "%s/rescore.db", qt_tmp_dir());
    rs_data d = {0};
    qd_store *s = create_store(db, &d.dim);
    d.vec = malloc((size_t)NVEC * d.dim * sizeof *d.vec);
    d.live = calloc(NVEC, sizeof *d.live);
    d.q = malloc((size_t)NQ * d.dim * sizeof *d.q);
    assert_non_null(d.vec);
    assert_non_null(d.live);
    assert_non_null(d.q);
    uint64_t st = 12345;
    for (size_t i = 0; i < NVEC; i++)
        unit_random(&st, d.vec + i * (size_t)d.dim, d.dim);
    for (size_t j = 0; j < NQ; j++)
        unit_random(&st, d.q + j * (size_t)d.dim, d.dim);

    /* The first batch trains the index; the rest go in as later adds. */
    add_range(s, &d, 0, NVEC - 1000);
    qd_store_info in;
    assert_int_equal(qd_store_get_info(s, &in), 0);
    assert_string_equal(in.index_spec, SPEC);
    assert_int_equal(in.live, NVEC - 1000);
    add_range(s, &d, NVEC - 1000, NVEC);

    /* Every list probed, so only the 4-bit codes stand between FAISS and the truth:
     * re-scoring 100 candidates from the floats finds nearly all of the top 10, FAISS's
     * own order far fewer. */
    assert_int_equal(qd_store_set_param(s, "nprobe", 32), 0);
    double r = recall(s, &d, 1);
    assert_int_equal(qd_store_set_param(s, "rescore", 0), 0);
    double r0 = recall(s, &d, 0);
    print_message("recall@10: %.4f re-scored, %.4f from the codes alone\n", r, r0);
    assert_true(r >= 0.98);
    assert_true(r0 < r - 0.1);
    assert_int_equal(qd_store_set_param(s, "rescore", 100), 0);
    assert_int_equal(qd_store_set_param(s, "rescore", -1), QD_ERR_INVAL);
    assert_int_equal(qd_store_set_param(s, "rescore", 2.5), QD_ERR_INVAL);
    assert_true(strstr(qd_store_errmsg(s), "rescore") != NULL);

    /* min_score applies to the exact cosines. */
    qd_store_hits h;
    assert_int_equal(qd_store_search(s, d.q, 1, K, 0.9f, NULL, &h), 0);
    for (size_t b = 0; b < h.n; b++)
        assert_true(h.hit[b].score >= 0.9f);
    qd_store_hits_free(&h);

    /* Remove each query's current best row: none comes back, recall holds. */
    for (size_t j = 0; j < NQ; j++) {
        int64_t top[K];
        float best[K];
        truth(&d, j, top, best);
        char id[32];
        snprintf(id, sizeof id, "v%lld", (long long)(top[0] - 1));
        if (d.live[top[0] - 1]) {
            assert_int_equal(qd_store_remove(s, id, strlen(id)), 0);
            d.live[top[0] - 1] = 0;
        }
    }
    assert_true(recall(s, &d, 1) >= 0.98);
    /* Fast-scan codes cannot be removed from FAISS 1.7.3's block lists: the removed
     * rows stay in the index as tombstones, filtered out above, until compact. */
    assert_int_equal(qd_store_get_info(s, &in), 0);
    assert_false(in.can_remove);
    assert_true(in.faiss_count == NVEC && in.live < NVEC - NQ / 2);
    assert_int_equal(qd_store_compact(s), 0);
    assert_int_equal(qd_store_get_info(s, &in), 0);
    assert_int_equal(in.faiss_count, in.live);
    assert_int_equal(qd_store_set_param(s, "nprobe", 32), 0);
    assert_true(recall(s, &d, 1) >= 0.98);

    /* A question added with a query's own vector is that query's first hit, at 1. */
    char qid[] = "query0", qtext[] = "the first query";
    qd_store_item it = {qid, strlen(qid), qtext, strlen(qtext), d.q};
    qd_store_result res;
    assert_int_equal(qd_store_add(s, &it, 1, 0, &res), 0);
    assert_int_equal(res.status, QD_STORE_ADDED);
    assert_int_equal(qd_store_search(s, d.q, 1, K, -2.0f, NULL, &h), 0);
    assert_string_equal(h.hit[0].row.ext_id, "query0");
    assert_float_equal(h.hit[0].score, 1.0, 1e-5);
    qd_store_hits_free(&h);
    assert_int_equal(qd_store_remove(s, "query0", 6), 0);

    /* After a reopen, read-write and read-only: the same recall, from the FAISS file
     * and the row table as loaded. */
    qd_store_close(s);
    for (int ro = 0; ro < 2; ro++) {
        s = reopen(db, ro);
        assert_int_equal(qd_store_set_param(s, "nprobe", 32), 0);
        assert_true(recall(s, &d, 1) >= 0.98);
        qd_store_close(s);
    }
    free(d.vec);
    free(d.live);
    free(d.q);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rescore),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
