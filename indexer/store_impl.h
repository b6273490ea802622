/*
 * store_impl.h - internals of the question store shared between store.c, the
 * generated schema file and the tests: the schema text and a test hook.
 */
#ifndef QDUP_STORE_IMPL_H
#define QDUP_STORE_IMPL_H

/* schema.sql, NUL-terminated; generated at build time from the top-level file by
 * indexer/CMakeLists.txt into schema_sql.c, so the programs work from any directory. */
extern const char qd_store_schema_sql[];

/* Tests only: fn(point) is called at named points of the store's crash-sensitive
 * sequences, so that a test can stop or kill the process exactly there. Points:
 * "install:db-renamed" (qd_store_install, after the database rename and before the
 * FAISS rename), "checkpoint:faiss-written" (after the FAISS file's rename and before
 * meta records it). NULL turns it off. Not thread-safe: set it before any store call. */
void qd_store_set_test_hook(void (*fn)(const char *point));

#endif
