/*
 * parallel.h - the one way qdup runs a loop on several threads.
 *
 * qd_parallel_for(n, threads, fn, arg) cuts [0, n) into T = min(threads, n)
 * contiguous shares, worker w getting [n*w/T, n*(w+1)/T), and calls
 * fn(begin, end, w, arg) once for each, on T threads of which the caller is worker 0;
 * it returns when all are done. The shares depend only on n and T, so a computation
 * that writes per-share results is reproducible. A thread that cannot be started costs
 * no work: the caller runs that worker's share itself, with the same worker number,
 * so per-worker state indexed by w is never touched by two threads.
 *
 * Callers that want each worker to pull work dynamically (an atomic cursor) pass
 * n = threads and ignore begin/end. threads <= 0 means one per online CPU; at most
 * QD_PARALLEL_MAX threads run. Threads are created per call, which costs tens of
 * microseconds: fine for work of milliseconds or more, not for tiny loops.
 */
#ifndef QDUP_PARALLEL_H
#define QDUP_PARALLEL_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Most threads one qd_parallel_for runs. */
#define QD_PARALLEL_MAX 256

/* The body of a loop: [begin, end) is worker `worker`'s share. */
typedef void (*qd_parallel_fn)(size_t begin, size_t end, int worker, void *arg);

/* Runs fn over [0, n) as described above. Returns 0: it cannot fail, since a share
 * whose thread cannot start runs in the caller (the int keeps the qdup convention, so
 * a caller may write `rc = qd_parallel_for(...)`). Results and errors of the shares
 * go through arg, usually one slot per worker. */
int qd_parallel_for(size_t n, int threads, qd_parallel_fn fn, void *arg);

/* The number of workers T that qd_parallel_for(n, threads, ...) uses (0 when n is 0),
 * for sizing per-worker state before the call. */
int qd_parallel_workers(size_t n, int threads);

#ifdef __cplusplus
}
#endif

#endif
