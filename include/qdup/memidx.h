/*
 * memidx.h - a small in-memory question index behind the handler's backend interface
 * (proto.h): the store's semantics without SQLite, FAISS or files.
 *
 * It exists so that the request handler can be exercised without a database: fuzz
 * harnesses ("one line in, one reply out against a small in-memory index"), qdup-daemon
 * --ephemeral, and test_proto_memidx (the protocol tests, which run against a real
 * store as test_proto, with the same assertions). Search is a brute-force scan, fine
 * for thousands of questions, not for the real data.
 *
 * Same outcomes as the store (store.h) for the same calls: an id is unique among live
 * rows (DUP_ID), a text equal byte for byte to a live row's is DUP_TEXT (the store
 * compares normalized token sequences; tests stay within what both agree on), a zero
 * vector is EMPTY, removed rows become tombstones, and searches skip them. Any number
 * of threads may search and get at once; writers take a write lock.
 */
#ifndef QDUP_MEMIDX_H
#define QDUP_MEMIDX_H

#include <stddef.h>

#include "qdup/proto.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct qd_memidx qd_memidx;

/* An empty index for vectors of model m (not owned; must outlive the index). Adds
 * beyond max_rows rows (0: no limit) fail with QD_ERR_BUSY, which keeps a fuzzer's
 * memory bounded. */
int qd_memidx_new(const qd_model *m, size_t max_rows, qd_memidx **out);

/* Frees the index; NULL is a no-op. */
void qd_memidx_free(qd_memidx *mi);

/* Fills be with the index's functions (ctx = mi, model = its model). */
void qd_memidx_backend(qd_memidx *mi, qd_backend *be);

#ifdef __cplusplus
}
#endif

#endif
