/*
 * store_impl.h - internals of the question store shared between its files (and the
 * generated schema file and the tests). The store is one object (struct qd_store)
 * whose work is divided by layer:
 *
 *   store.c      open, create, close; search, get, info; the error message.
 *   write.c      the write path: add, remove, compact, search parameters.
 *   rows.c       the in-memory row table (row id -> question) and its hash tables,
 *                text keys, loading the table from SQLite.
 *   cache.c      the FAISS index as a cache of SQLite: build, replay, checkpoint.
 *   storefile.c  the files: SQLite helpers and meta, vector blobs, the file suffixes,
 *                locks, probe, install, discard, the leftover temp-file sweep.
 *   verify.c     verify and export (read everything, check or write it out).
 *   verdicts.c   moderators' verdicts: store, export, the version 1 -> 2 migration.
 *   reembed.c    switching to another model: staging the new vectors, the switch,
 *                re-encoding checks.
 *
 * Everything here is internal: names are st_* (cross-file) and nothing outside
 * indexer/ but the tests includes this header. Locking rules are those of store.c's
 * design note: `wmu` serializes writers and every use of the SQLite connection, `rw`
 * guards what searches read (the index and the row table), and `pin` (taken before
 * rw when both are) keeps the model in force from changing between a caller's encoding
 * and its search (qd_store_pin; the switch to another model takes its write side).
 */
#ifndef QDUP_STORE_IMPL_H
#define QDUP_STORE_IMPL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include <sqlite3.h>

#include "qdup/ann.h"
#include "qdup/common.h"
#include "qdup/lex.h"
#include "qdup/store.h"
#include "qdup/tok.h"

/* schema.sql, NUL-terminated; generated at build time from the top-level file by
 * indexer/CMakeLists.txt into schema_sql.c, so the programs work from any directory. */
extern const char qd_store_schema_sql[];

/* Tests only: fn(point) is called at named points of the store's crash-sensitive
 * sequences, so that a test can stop or kill the process exactly there. Points:
 * "install:db-renamed" (qd_store_install, after the database rename and before the
 * FAISS rename), "checkpoint:faiss-written" (after the FAISS file's rename and before
 * meta records it). NULL turns it off. Not thread-safe: set it before any store call. */
void qd_store_set_test_hook(void (*fn)(const char *point));

/* 'QDUP' as PRAGMA application_id (schema.sql sets it). */
#define ST_APP_ID 0x51445550
/* How long a statement waits for another connection's lock before SQLITE_BUSY. */
#define ST_BUSY_MS 10000
/* Vectors handed to FAISS per call when replaying or rebuilding, and the most
 * vectors used to train an index kind that needs training (IVF k-means). */
#define ST_CHUNK 8192
#define ST_MAX_TRAIN 262144
/* Room for a path we build from db_path. */
#define ST_PATH_MAX 4096

/* --- errors (store.c) ------------------------------------------------------------------ */

/* Detail of the last failing store call in this thread (qd_store_errmsg). */
extern _Thread_local char st_err[QD_ERRMSG_MAX];

/* Every public store call that can fail starts with this: qd_store_errmsg then
 * never shows an earlier call's message as if it were this one's. */
static inline void st_enter(void)
{
    st_err[0] = '\0';
}

/* Records a message in st_err and returns rc. */
int st_fail(int rc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Maps an SQLite result code to a QD_ERR_*. */
int st_db_code(int src);
/* Records an SQLite failure: "<path>: <what>: <sqlite's message>". */
int st_dbfail(sqlite3 *db, const char *path, const char *what);
/* snprintf that may truncate on purpose (bounded messages and notes). */
void st_format(char *dst, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Calls the test hook, if set, at a named point. */
void st_hook(const char *point);

/* --- the row table (rows.c) ------------------------------------------------------------ */

/* One question in memory. Allocated once with its strings; never changed by anyone
 * but the writer, and only under the write lock, except `flags`, which only the
 * writer reads or writes. */
typedef struct st_row {
    int64_t row;        /* row id (the FAISS id) */
    uint64_t text_key;  /* qd_store_text_key of the text */
    uint64_t id_hash;   /* hash of ext_id, for the by_ext table */
    double created;     /* unix time */
    double removed;     /* unix time of removal, 0 while live */
    uint16_t id_len;    /* bytes of ext_id (at most QD_STORE_MAX_ID) */
    uint16_t flags;     /* ROW_* marks used by the writer within one call */
    uint32_t text_len;  /* bytes of text */
    uint32_t nterms;    /* distinct terms kept in data (0 where the store keeps none) */
    uint32_t nwords;    /* the text's word tokens (qd_lex_doc.len), when kept */
    _Alignas(uint64_t) char data[]; /* the terms if the store keeps them (nterms
                           hashes, then nterms counts), ext_id, NUL, text, NUL */
} st_row;

enum { ROW_REPLACING = 1u, ROW_REMOVING = 2u };

static inline const char *st_row_ext(const st_row *r)
{
    return r->data + (size_t)r->nterms * (sizeof(uint64_t) + sizeof(uint32_t));
}
static inline const char *st_row_text(const st_row *r) { return st_row_ext(r) + r->id_len + 1; }

/* Which key a table is over. */
enum st_key { KEY_ROW, KEY_EXT, KEY_TEXT };

/* An open-addressing hash table of row pointers with linear probing and
 * backward-shift deletion (no tombstone slots, so probes stay short). */
typedef struct st_map {
    st_row **slot;      /* (mask + 1) entries, NULL = empty; NULL array when empty */
    size_t mask;        /* capacity - 1 (capacity a power of two), 0 without slots */
    size_t n;           /* entries */
    enum st_key key;    /* what the entries are hashed by */
} st_map;

/* A row entry with copies of its strings and, if terms is not NULL, of its terms; or
 * NULL without memory. */
st_row *st_row_new(int64_t row, const char *id, size_t id_len, const char *text,
                   size_t text_len, uint64_t key, const qd_lex_doc *terms, double created,
                   double removed);
/* The terms of a row's text into *doc: a view of those the row keeps when the store
 * keeps terms (s->keep_terms), else made from the text with tb, which the caller then
 * frees with qd_lex_doc_free (st_row_doc_done does the right thing for both). */
int st_row_doc(const qd_store *s, qd_tokbuf *tb, const st_row *r, qd_lex_doc *doc);
void st_row_doc_done(const qd_store *s, qd_lex_doc *doc);
st_row *st_map_get_row(const st_map *m, int64_t row);
st_row *st_map_get_ext(const st_map *m, const char *id, size_t len);
st_row *st_map_get_text(const st_map *m, uint64_t key);
/* Inserts r, which the caller knows is absent; room must have been reserved. */
void st_map_put(st_map *m, st_row *r);
/* Removes r (by identity) if present. */
void st_map_del(st_map *m, const st_row *r);
/* Makes room for `extra` more entries, swapping the table in under rw if not NULL. */
int st_map_reserve(st_map *m, size_t extra, pthread_rwlock_t *rw);
void st_map_free(st_map *m);
/* Copies a row table entry out (strings owned by *out). */
int st_row_copy(const st_row *r, qd_store_row *out);
/* The text key of text (0: no tokens), tokenizing with tb. */
int st_text_key_tb(qd_tokbuf *tb, const char *text, size_t len, uint64_t *key);
/* Text keys of n items on up to `threads` threads, and their terms into docs (n; the
 * caller frees them with qd_lex_doc_free) if docs is not NULL. */
int st_text_keys(const qd_store_item *items, size_t n, int threads, uint64_t *keys,
                 qd_lex_doc *docs);

/* --- the store object ------------------------------------------------------------------ */

typedef void (*st_progress_fn)(const char *phase, size_t done, size_t total, void *arg);

/* A read-only connection for re-scoring (rescore.c). */
typedef struct st_reader st_reader;

/* Candidates re-scored exactly from SQLite by default, for compressed kinds
 * (rescore.c). */
#define ST_RESCORE_DEFAULT 100

struct qd_store {
    char db_path[ST_PATH_MAX];    /* the database file, as given */
    char faiss_path[ST_PATH_MAX]; /* db_path + ".faiss" */
    sqlite3 *db;                  /* the one connection; used only under wmu */
    int lock_fd;                  /* DB.lock, held while open for writing; -1 read-only */
    int readonly;                 /* opened read-only */
    int threads;                  /* tokenizing threads for batch adds (0: all cores) */
    qd_model *model;              /* the vectors' model: its fingerprint is the store's;
                                     callers encode with it (read-only once loaded;
                                     replaced only by a switch, under pin and rw, which
                                     then frees the old one) */
    pthread_rwlock_t pin;         /* qd_store_pin (read) against a switch (write) */
    int dim;                      /* vector dimension (meta, = the model's) */
    int can_remove;               /* the index kind removes vectors (else tombstones) */
    int lossy;                    /* the index kind stores approximate vectors (SQ, PQ) */
    int compressed;               /* the kind keeps compressed codes (PQ, SQ): searches
                                     re-score from SQLite (st_spec_is_compressed) */
    int keep_terms;               /* rows keep their terms (not when compressed: such a
                                     kind is chosen to save memory, and the terms
                                     would cost more than its codes; they are made from
                                     the text when needed) */
    char spec[128];               /* FAISS factory string (meta) */
    char fingerprint[17];         /* model fingerprint (meta; a switch: under rw) */
    char model_path[ST_PATH_MAX]; /* absolute path of the model in use (as fingerprint) */
    pthread_mutex_t wmu;          /* serializes writers, verify, export and all of db */
    pthread_rwlock_t rw;          /* searches (read) against applying a change (write) */
    qd_ann *ann;                  /* the index (rw) */
    st_map by_row;                /* every row in SQLite, live or tombstone (rw) */
    st_map by_ext;                /* live rows by external id (rw) */
    st_map by_text;               /* live rows by text key (rw) */
    uint64_t live;                /* live rows (rw) */
    qd_lex_stats *lex;            /* term statistics of the live rows' texts (rw) */
    uint64_t tombs;               /* tombstones: removed rows still in SQLite (rw) */
    uint64_t seq;                 /* last change number (written under wmu and rw) */
    uint64_t faiss_seq;           /* change the FAISS file on disk reflects (wmu + rw) */
    int vouched;                  /* meta vouches for the FAISS file on disk (wmu) */
    int broken;                   /* a change reached SQLite but not memory (wmu) */
    char broken_msg[QD_ERRMSG_MAX]; /* why (wmu) */
    char faiss_note[256];         /* why the FAISS file was not used at open, or ""
                                     once a checkpoint replaced it (wmu + rw) */
    int ckpt_failing;             /* the last checkpoint failed (wmu + rw) */
    uint64_t ckpt_failures;       /* checkpoints failed since open (wmu + rw) */
    char ckpt_error[256];         /* the last failure's detail, or "" (wmu + rw) */
    struct {
        char name[32];            /* FAISS search parameter name */
        double value;             /* its value */
    } param[8];                   /* set by qd_store_set_param (wmu), applied again to
                                     every index built later (compact, switch) */
    int nparams;                  /* entries of param */
    size_t rescore;               /* compressed kinds: candidates re-scored from the stored
                                     vectors (0: none, FAISS's scores stand) (rw) */
    char rd_path[3 * ST_PATH_MAX + 32]; /* what re-scoring connections open (db_path,
                                     or the immutable URI of a read-only open) */
    int rd_flags;                 /* their sqlite3_open_v2 flags */
    pthread_mutex_t rd_mu;        /* guards rd_free */
    st_reader *rd_free;           /* idle re-scoring connections (rd_mu) */
    st_progress_fn progress;      /* progress callback, or NULL */
    void *progress_arg;           /* its argument */
};

/* A store object with its paths and locks set up and nothing opened (store.c). */
int st_new(const char *db_path, const qd_store_opts *o, qd_store **out, char *err,
           size_t errlen);
/* Frees everything a store object holds (closing the database without a checkpoint). */
void st_free(qd_store *s);
/* Loads the model at path into *m, its absolute path into abs (ST_PATH_MAX bytes). */
int st_load_model_at(const char *path, qd_model **m, char *abs, char *err, size_t errlen);
/* How meta remembers the model at model_abs (relative to the database's directory
 * when it lies there or below), and the file such a reference names. */
void st_model_ref(const char *db_path, const char *model_abs, char *out, size_t outlen);
void st_model_resolve(const char *db_path, const char *ref, char *out, size_t outlen);

/* Reports progress through the store's callback, if any. */
void st_progress(qd_store *s, const char *phase, size_t done, size_t total);
/* Loads every row of the questions table into the row table (rows.c). */
int st_load_rows(qd_store *s);

/* --- the FAISS cache (cache.c) --------------------------------------------------------- */

/* 1 if the factory string names a kind that stores vectors exactly. */
int st_spec_is_exact(const char *spec);
/* 1 if it names a kind that keeps compressed codes instead of the vectors (a
 * component PQ..., SQ..., RQ..., LSQ..., LSH): searches re-score from SQLite. */
int st_spec_is_compressed(const char *spec);
/* 1 if it names a fast-scan kind (PQ...x4fs), which cannot remove vectors. */
int st_spec_is_fastscan(const char *spec);
/* Whether the store removes vectors from index a (else removed rows stay in it as
 * tombstones until compact): what FAISS says, less the fast-scan kinds. */
int st_can_remove(const qd_store *s, const qd_ann *a);
/* Adds n vectors to a, training it on them first if it needs training. */
int st_ann_add_trained(qd_ann *a, const float *x, const int64_t *ids, size_t n);
/* A new index of the store's kind holding every live row's stored vector. */
int st_build_index(qd_store *s, qd_ann **out);
/* Loads the FAISS file if meta vouches for it and replays later changes, else
 * rebuilds; sets s->ann, s->vouched and s->faiss_note. */
int st_load_index(qd_store *s, int64_t faiss_crc, int crc_null, int64_t faiss_size);
/* Writes the FAISS file and records it in meta. Caller holds wmu. */
int st_checkpoint_locked(qd_store *s);
/* Sets the search parameters qd_store_set_param set on the index in force on a new
 * index a (write.c). Caller holds wmu; a is not yet searched. */
int st_apply_params(qd_store *s, qd_ann *a);

/* --- exact re-scoring (rescore.c) ------------------------------------------------------ */

/* Re-scores n candidates of one query (q: dim floats) by the exact cosine of their
 * vectors stored in SQLite: rows and cos get, best first, at most `want` of them with
 * cosine >= min_score, and *nout their number. Caller holds the read lock. */
int st_rescore(qd_store *s, const float *q, const st_row **rows, float *cos, size_t n,
               size_t want, float min_score, size_t *nout);
/* Closes the idle re-scoring connections (at close, when no search runs). */
void st_readers_free(qd_store *s);

/* --- files and SQLite (storefile.c) ---------------------------------------------------- */

/* Vector blobs are little-endian float32 (schema.sql). */
void st_vec_to_le(const float *v, size_t n, unsigned char *out);
void st_vec_from_le(const void *blob, size_t n, float *out);
/* dst = base + suffix, or QD_ERR_RANGE. */
int st_path_with(char *dst, size_t len, const char *base, const char *suffix);
int st_file_exists(const char *path);
/* Size of a file, 0 if it cannot be stat'ed. */
uint64_t st_file_size(const char *path);
/* CRC-32 and size of a whole file. QD_ERR_NOTFOUND if it does not exist. */
int st_file_crc(const char *path, uint32_t *crc, uint64_t *size);

/* Runs every statement of a constant SQL text (no parameters) in turn. */
int st_db_exec(qd_store *s, const char *sql);
int st_db_prepare(qd_store *s, const char *sql, sqlite3_stmt **st);
/* Steps a statement to its end and resets it for the next use. */
int st_db_run(qd_store *s, sqlite3_stmt *st);
void st_db_rollback(qd_store *s);
/* 1 if the database has a table of this name, 0 if not, or <0. */
int st_db_has_table(qd_store *s, const char *name);
/* Per-connection settings (WAL, synchronous=FULL, busy timeout). */
int st_db_configure(qd_store *s);
/* QD_ERR_FORMAT naming the file if an open database is not a qdup store. */
int st_db_check_ours(sqlite3 *db, const char *path);
/* meta[key]: *type gets the SQLite type (SQLITE_NULL also when absent). */
int st_meta_get(qd_store *s, const char *key, int *type, int64_t *ival, char *text,
                size_t textlen);
/* An integer / text meta value that must be there. */
int st_meta_int(qd_store *s, const char *key, int64_t *v);
int st_meta_text(qd_store *s, const char *key, char *buf, size_t len);
/* meta[key] = value; kinds: 'i' integer, 't' text, 'r' real, 'n' NULL. */
int st_meta_set(qd_store *s, const char *key, char kind, int64_t ival, const char *text,
                double rval);

/* --- verdicts (verdicts.c) ------------------------------------------------------------- */

/* Upgrades a version 1 store to version 2 (adds the verdicts table) in one
 * transaction; a store of any other version is left as it is. Writable opens only. */
int st_migrate(qd_store *s);

#endif
