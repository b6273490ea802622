/*
 * parallel.c - qd_parallel_for (parallel.h).
 *
 * Each call starts T - 1 threads, runs worker 0's share on the caller, then joins the
 * threads in order; a worker whose thread could not start is run by the caller after
 * the join. No state outlives a call, so there is nothing to set up or tear down.
 */
#include "qdup/parallel.h"

#include <pthread.h>
#include <unistd.h>

/* One worker's call. */
typedef struct par_share {
    qd_parallel_fn fn; /* the loop body */
    void *arg;         /* its argument */
    size_t begin, end; /* the share */
    int worker;        /* its number, 0..T-1 */
} par_share;

static void *par_main(void *p)
{
    par_share *s = p;
    s->fn(s->begin, s->end, s->worker, s->arg);
    return NULL;
}

int qd_parallel_workers(size_t n, int threads)
{
    if (threads <= 0) {
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        threads = c > 0 ? (int)c : 1;
    }
    if (threads > QD_PARALLEL_MAX)
        threads = QD_PARALLEL_MAX;
    if ((size_t)threads > n)
        threads = (int)n;
    return threads;
}

int qd_parallel_for(size_t n, int threads, qd_parallel_fn fn, void *arg)
{
    int T = qd_parallel_workers(n, threads);
    par_share share[QD_PARALLEL_MAX];
    pthread_t tid[QD_PARALLEL_MAX];
    unsigned char started[QD_PARALLEL_MAX];
    for (int w = 0; w < T; w++) {
        /* floor(n * w / T), written so that n * w cannot overflow. */
        size_t b = n / (size_t)T * (size_t)w + n % (size_t)T * (size_t)w / (size_t)T;
        size_t e = n / (size_t)T * (size_t)(w + 1) + n % (size_t)T * (size_t)(w + 1) / (size_t)T;
        share[w] = (par_share){fn, arg, b, e, w};
        started[w] = w > 0 && pthread_create(&tid[w], NULL, par_main, &share[w]) == 0;
    }
    if (T > 0)
        par_main(&share[0]);
    for (int w = 1; w < T; w++) {
        if (started[w])
            pthread_join(tid[w], NULL);
        else
            par_main(&share[w]);
    }
    return 0;
}
