/*
 * ann.h - the vector index: inner-product nearest neighbours over caller-chosen ids.
 *
 * A qd_ann holds unit vectors of one dimension, each under a caller-chosen int64 id
 * (qdup uses the question's row id), and answers "which stored vectors have the
 * largest inner product with this query". It is FAISS underneath, reached only through
 * FAISS's C API, and the kind of index is a FAISS index_factory string ("Flat",
 * "HNSW32", "IVF1024,Flat", "SQ8", ...); the metric is always inner product.
 *
 * How ids work: index types that cannot store ids themselves (Flat, SQ8, HNSW, ...)
 * are wrapped as "IDMap2,<spec>", which keeps an id per vector and a reverse map for
 * qd_ann_get(). IVF types store ids natively and are not wrapped: FAISS's IDMap
 * assumes a removal shifts the vectors after it, which IVF does not do, so removing
 * from an IDMap-wrapped IVF corrupts the id mapping.
 *
 * Exact search (Flat) does not go through FAISS's search: qd_ann keeps 8-bit codes of
 * the vectors beside FAISS's floats and answers a batch of queries with one pass over
 * them (flatscan.h), re-scoring the best candidates exactly; pass concurrent queries to
 * one qd_ann_search call to share that pass.
 *
 * What each kind can do (FAISS 1.7.3 through its C API):
 *   - remove: Flat, SQ, IVF yes; HNSW no (qd_ann_remove gives QD_ERR_UNSUPPORTED and
 *     the caller keeps a tombstone list instead). qd_ann_can_remove() says which.
 *   - get (reconstruct by id): every IDMap2-wrapped kind yes (SQ8 gives the decoded,
 *     approximate vector); IVF no. An IVF index with caller ids needs a hash-table
 *     "direct map" for that, and the C API can only request the array kind, which
 *     FAISS refuses to combine with caller ids. qd_ann_can_get() says which.
 *
 * Threads: any number of threads may run qd_ann_search, qd_ann_get, qd_ann_count and
 * qd_ann_save on one qd_ann at once, as long as no thread runs a writer (add, remove,
 * train, set_param, free) on it at the same time; the caller provides that exclusion
 * (a rwlock, or a single writer that swaps in a new index). FAISS parallelises each
 * call internally with OpenMP; qd_ann_set_threads() bounds that.
 *
 * Errors: functions return 0 or a negative QD_ERR_*. The detail (FAISS's own message
 * where FAISS failed) is kept per thread and read with qd_ann_errmsg(), because
 * searches on one object run concurrently and must not write into it. Read it in the
 * thread that made the failing call (in a libuv work callback, not the after-work
 * callback). Constructors write the detail into the caller's err buffer instead.
 */
#ifndef QDUP_ANN_H
#define QDUP_ANN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* An inner-product vector index with caller-chosen int64 ids. */
typedef struct qd_ann qd_ann;

/* Largest dimension accepted: far above any encoder qdup trains, small enough that a
 * vector's byte size can never overflow. */
#define QD_ANN_MAX_DIM 65536

/* Makes an empty index of dimension `dim` from a FAISS index_factory string; NULL or
 * "" means "Flat" (exact search). A spec that already starts with "IDMap" is used as
 * given. Some kinds must be trained before vectors are added (qd_ann_needs_training).
 * QD_ERR_INVAL for a bad dim or a spec FAISS cannot parse (err holds FAISS's reason). */
int qd_ann_new(int dim, const char *spec, qd_ann **out, char *err, size_t errlen);

/* Loads an index written by qd_ann_save. The file's checksum is verified before FAISS
 * reads it, so a truncated or damaged file is an error, never a crash or a silently
 * different index. QD_ERR_NOTFOUND if there is no file, QD_ERR_IO if it cannot be
 * read, QD_ERR_CHECKSUM if its bytes were damaged, QD_ERR_FORMAT if it is truncated,
 * lacks qd_ann's trailer (a file written by FAISS itself) or holds an index qd_ann
 * cannot use (another metric, ids by position), QD_ERR_VERSION for a newer trailer.
 * err names the file and the reason. */
int qd_ann_load(const char *path, qd_ann **out, char *err, size_t errlen);

/* Writes the index to `path` crash-safely: to a temporary file beside it, flushed and
 * fsynced, renamed over `path`, then the directory fsynced. A crash leaves the old
 * file or the new one. The file is FAISS's own format (FAISS tools read it) followed
 * by a 24-byte trailer: "QDANNCRC", version, CRC-32 and length of the FAISS bytes. It
 * does not hold the spec string. Only reads the index, so it may run alongside
 * searches. QD_ERR_IO on failure (the temporary file is removed). */
int qd_ann_save(const qd_ann *a, const char *path, char *err, size_t errlen);

/* Frees the index; NULL is a no-op. */
void qd_ann_free(qd_ann *a);

/* 1 if the index must be trained (qd_ann_train) before vectors can be added. */
int qd_ann_needs_training(const qd_ann *a);

/* Trains on n vectors x (n, dim) (IVF: k-means for the coarse quantizer, which wants
 * at least 39 vectors per list; SQ: value ranges). Training an index that already
 * holds vectors is refused (QD_ERR_INVAL): their codes would no longer match.
 * Harmless for kinds that need no training. */
int qd_ann_train(qd_ann *a, const float *x, size_t n);

/* Adds n vectors x (n, dim) under ids (n). Ids must be >= 0 (-1 marks an empty result
 * slot) and must not already be in the index: qd_ann does not check that (FAISS keeps
 * both and a search may then return the id twice). Components must be finite.
 * QD_ERR_INVAL for bad input or an untrained index; QD_ERR_INDEX if FAISS fails, in
 * which case part of the batch may have been added. */
int qd_ann_add(qd_ann *a, const float *x, const int64_t *ids, size_t n);

/* Removes the vectors with the given ids (ids not present are ignored); *nremoved
 * (if not NULL) gets how many were removed. QD_ERR_UNSUPPORTED, with nothing
 * changed, if the kind cannot remove (HNSW): the caller then tombstones. Costs a pass
 * over the whole index (Flat compacts its arrays), so batch removals. */
int qd_ann_remove(qd_ann *a, const int64_t *ids, size_t n, size_t *nremoved);

/* 1 if qd_ann_remove works for this kind of index. */
int qd_ann_can_remove(const qd_ann *a);

/* Searches nq queries q (nq, dim) for their k best matches. Row i of scores (nq, k)
 * and ids (nq, k) lists query i's matches best first (largest inner product first);
 * when fewer than k vectors are found the row is padded with id -1 and score
 * -INFINITY (FAISS itself pads with -FLT_MAX; qd_ann normalises that). Approximate
 * kinds may miss true neighbours. Safe from many threads at once (see above).
 * nq == 0 does nothing; k == 0 or a non-finite query is QD_ERR_INVAL. */
int qd_ann_search(const qd_ann *a, const float *q, size_t nq, size_t k, float *scores,
                  int64_t *ids);

/* Copies the stored vector of `id` into vec (dim). QD_ERR_NOTFOUND if absent,
 * QD_ERR_UNSUPPORTED for kinds that cannot reconstruct by id (IVF). */
int qd_ann_get(const qd_ann *a, int64_t id, float *vec);

/* 1 if qd_ann_get works for this kind of index. */
int qd_ann_can_get(const qd_ann *a);

/* Number of vectors held. */
size_t qd_ann_count(const qd_ann *a);

/* How many queries are worth searching in one call (qd_flatscan_batch for an exact
 * index answered by 8-bit codes; 1 otherwise). */
size_t qd_ann_search_batch(const qd_ann *a);

/* Dimension of the vectors. */
int qd_ann_dim(const qd_ann *a);

/* The factory string as given to qd_ann_new ("Flat" when it was NULL or ""). NULL
 * after qd_ann_load: the file does not store it and FAISS's C API cannot describe
 * every kind (no HNSW type test), so the caller keeps the spec with its metadata. */
const char *qd_ann_spec(const qd_ann *a);

/* Sets a search-time parameter through FAISS's ParameterSpace: "nprobe" (IVF lists
 * visited per query) or "efSearch" (HNSW candidate list size); both take an integer
 * >= 1, and FAISS saves them in the index file. Other FAISS parameter names are
 * passed through. The exact index (Flat) has two of qd_ann's own, not saved:
 * "rescore", candidates per query re-scored from the float vectors after the 8-bit
 * scan (default max(4k, 64)), and "flatscan", 0 to search through FAISS's own exact
 * search instead of the 8-bit scan, 1 (the default) to go back. QD_ERR_INVAL for a bad
 * value or a parameter the kind does not have ("nprobe" on Flat). A writer: no
 * searches may run meanwhile. */
int qd_ann_set_param(qd_ann *a, const char *name, double value);

/* Bounds the OpenMP threads FAISS uses inside each qd_ann call, process-wide; n < 1
 * restores OpenMP's default (OMP_NUM_THREADS or the number of cores). OpenMP keeps
 * this setting per calling thread, so it is applied at the start of every qd_ann call
 * in whichever thread makes it. Does not bound OpenBLAS's own threads, which FAISS
 * uses for calls of at least qd_ann_set_blas_threshold() queries (OPENBLAS_NUM_THREADS
 * does). */
void qd_ann_set_threads(int n);

/* From how many queries per search call FAISS's exact search (Flat, and the flat
 * parts of other kinds) computes inner products as one BLAS matrix product instead of
 * one loop per query; n < 1 restores FAISS's default, 20. Process-wide (a FAISS
 * global, read by every search without a lock): set it at start-up, before any
 * search runs. With Debian's generic FAISS build the matrix product is the cheaper
 * way on a Flat index even for a single query (measurements in daemon/main.c, which
 * sets it from qdup-daemon's --blas-threshold). */
void qd_ann_set_blas_threshold(int nq);

/* Detail of the failure of the last qd_ann call in the calling thread: every call
 * that can fail clears it on entry, so it is "" after a success and never an earlier
 * call's message. a may be NULL. Valid until the next qd_ann call in this thread. */
const char *qd_ann_errmsg(const qd_ann *a);

#ifdef __cplusplus
}
#endif

#endif
