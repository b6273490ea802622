/*
 * backend.h - the question store (store.h) behind the request handler's backend
 * interface (qd_backend, proto.h).
 *
 * Owns only the mapping: each qd_backend function calls its qd_store_* namesake with
 * the store as ctx. The daemon serves a store through it, and the protocol tests run
 * through it against a real store, so that they check the store's semantics rather
 * than those of the in-memory index (memidx.h) alone.
 */
#ifndef QDUP_BACKEND_H
#define QDUP_BACKEND_H

#include "qdup/proto.h"
#include "qdup/store.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Fills be so that the handler works on st (which must outlive every use of be). */
void qd_backend_store(qd_store *st, qd_backend *be);

#ifdef __cplusplus
}
#endif

#endif
