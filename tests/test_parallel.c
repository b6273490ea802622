/*
 * test_parallel.c - qd_parallel_for: every index in exactly one share, the shares
 * contiguous, in order and as documented, each worker once and on its own thread.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "qdup/common.h"
#include "qdup/parallel.h"
#include "testutil.h"

#define MAX_N 1000

/* What the loop bodies record. */
typedef struct seen {
    atomic_int hits[MAX_N];          /* times each index was visited */
    size_t begin[QD_PARALLEL_MAX];   /* each worker's share */
    size_t end[QD_PARALLEL_MAX];
    atomic_int calls[QD_PARALLEL_MAX]; /* times each worker was called */
    pthread_t self[QD_PARALLEL_MAX]; /* the thread each worker ran on */
} seen;

static void body(size_t begin, size_t end, int worker, void *arg)
{
    seen *s = arg;
    assert_true(worker >= 0 && worker < QD_PARALLEL_MAX);
    s->begin[worker] = begin;
    s->end[worker] = end;
    s->self[worker] = pthread_self();
    atomic_fetch_add(&s->calls[worker], 1);
    for (size_t i = begin; i < end; i++)
        atomic_fetch_add(&s->hits[i], 1);
}

static void test_shares(void **state)
{
    (void)state;
    static const size_t ns[] = {0, 1, 2, 3, 7, 64, 999, 1000};
    static const int ts[] = {1, 2, 3, 4, 8, 300};
    static seen s;
    for (size_t a = 0; a < sizeof ns / sizeof ns[0]; a++) {
        for (size_t b = 0; b < sizeof ts / sizeof ts[0]; b++) {
            size_t n = ns[a];
            int threads = ts[b];
            memset(&s, 0, sizeof s);
            int T = qd_parallel_workers(n, threads);
            int want_T = threads > QD_PARALLEL_MAX ? QD_PARALLEL_MAX : threads;
            if ((size_t)want_T > n)
                want_T = (int)n;
            assert_int_equal(T, want_T);
            assert_int_equal(qd_parallel_for(n, threads, body, &s), 0);
            for (size_t i = 0; i < n; i++)
                assert_int_equal(atomic_load(&s.hits[i]), 1);
            for (int w = 0; w < QD_PARALLEL_MAX; w++)
                assert_int_equal(atomic_load(&s.calls[w]), w < T ? 1 : 0);
            for (int w = 0; w < T; w++) {
                /* The documented split, computed here the plain way. */
                assert_int_equal(s.begin[w], n * (size_t)w / (size_t)T);
                assert_int_equal(s.end[w], n * (size_t)(w + 1) / (size_t)T);
                assert_true(s.end[w] > s.begin[w]); /* no empty share */
            }
            /* The caller is worker 0; the others each ran on a thread of their own. */
            if (T > 0)
                assert_true(pthread_equal(s.self[0], pthread_self()));
            for (int w = 1; w < T; w++)
                for (int v = 0; v < w; v++)
                    assert_false(pthread_equal(s.self[w], s.self[v]));
        }
    }
}

static void test_default_threads(void **state)
{
    (void)state;
    /* threads <= 0: one per CPU, at least one. */
    int T = qd_parallel_workers(MAX_N, 0);
    assert_true(T >= 1 && T <= QD_PARALLEL_MAX);
    assert_int_equal(qd_parallel_workers(MAX_N, -3), T);
    static seen s;
    memset(&s, 0, sizeof s);
    assert_int_equal(qd_parallel_for(MAX_N, 0, body, &s), 0);
    for (size_t i = 0; i < MAX_N; i++)
        assert_int_equal(atomic_load(&s.hits[i]), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shares),
        cmocka_unit_test(test_default_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
