/*
 * flatscan.h - exact inner-product search by one pass over 8-bit copies of the vectors.
 *
 * A qd_flatscan holds an 8-bit code per component of every vector (a per-vector scale
 * times a signed code in -127..127) and answers a batch of queries with one pass over
 * those codes: a quarter of the memory of the float vectors, so that the pass for a
 * whole batch of queries reads little more than one query's. The codes only pick
 * candidates: the best `rescore` of them per query are scored again from the float
 * vectors, which the caller keeps and passes in (qdup's exact index already holds
 * them), and the k best of those exact scores are the answer. The answer is exact: a
 * bound on the codes' error tells when a vector left out could still have made the
 * top k, and then that query is scanned again with a wider net (rare, except where
 * many vectors lie within about 0.01 of each other). Vectors are known by their
 * position (the order they were added in); the caller maps positions to ids.
 *
 * The scan runs on the widest kernel the processor has, picked at run time: AVX-512
 * with VNNI, AVX2, or a portable loop. All give the same candidate scores bit for bit
 * (integer dot products, then one float multiply), so the choice changes speed only.
 * The exact re-scoring runs on the same instruction set and also gives the same scores
 * bit for bit whatever the kernel (each sum in double in a fixed order).
 *
 * Threads: searches may run concurrently with each other; add and clear are writers
 * (the caller excludes them, as for qd_ann). A search splits its pass over OpenMP's
 * threads (omp_get_max_threads() of the calling thread) when the work is large.
 */
#ifndef QDUP_FLATSCAN_H
#define QDUP_FLATSCAN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* 8-bit codes of inner-product vectors, scanned for candidates. */
typedef struct qd_flatscan qd_flatscan;

/* Makes an empty scan for vectors of dimension dim (1..65536), on the best kernel this
 * processor runs, or the one named by the environment variable QDUP_FLATSCAN_KERNEL
 * if the processor runs it (for benchmarks). QD_ERR_INVAL for a bad dim, QD_ERR_NOMEM. */
int qd_flatscan_new(int dim, qd_flatscan **out);

/* Frees it; NULL is a no-op. */
void qd_flatscan_free(qd_flatscan *fs);

/* Appends the codes of n vectors x (n, dim) at positions count..count+n-1. Components
 * must be finite (the caller checks; qd_ann does). At most 2^32 - 1 vectors are held.
 * QD_ERR_NOMEM (also past that count) leaves it unchanged. */
int qd_flatscan_add(qd_flatscan *fs, const float *x, size_t n);

/* Drops every vector (capacity is kept). */
void qd_flatscan_clear(qd_flatscan *fs);

/* Number of vectors held. */
size_t qd_flatscan_count(const qd_flatscan *fs);

/* Searches nq queries q (nq, dim) for their k best matches by inner product. xb
 * (count, dim) are the float vectors in position order: the candidates are re-scored
 * from them, and the scores returned are exact float inner products. rescore is how
 * many candidates per query are re-scored (0: the default, max(4k, 64)); it is raised
 * to k if smaller. Row i of scores and pos (nq, k) lists query i's matches best first
 * (equal scores: lower position first), padded with position -1 and score -INFINITY
 * past the count. QD_ERR_INVAL for k == 0, QD_ERR_NOMEM. */
int qd_flatscan_search(const qd_flatscan *fs, const float *xb, const float *q, size_t nq,
                       size_t k, size_t rescore, float *scores, int64_t *pos);

/* How many queries are worth searching together: the queries one pass of the kernel
 * scores (4) once the codes outgrow a processor's L2 cache, since each search then
 * streams them from memory and that many queries cost about what one does; else 1. */
size_t qd_flatscan_batch(const qd_flatscan *fs);

/* Name of the kernel in use: "avx512vnni", "avx2" or "generic". */
const char *qd_flatscan_kernel(const qd_flatscan *fs);

/* Switches to the named kernel (one of the names above). QD_ERR_UNSUPPORTED if this
 * processor cannot run it, QD_ERR_INVAL for an unknown name. A writer. For tests and
 * benchmarks that compare kernels. */
int qd_flatscan_set_kernel(qd_flatscan *fs, const char *name);

#ifdef __cplusplus
}
#endif

#endif
