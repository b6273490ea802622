/*
 * store.h - the question store: SQLite (the truth) plus a FAISS index (a cache of the
 * vectors, rebuildable from SQLite), used by qdup-index and qdup-daemon.
 *
 * Layout on disk: the database file DB (schema.sql: questions with their text, vector
 * and times; meta with the model fingerprint, dimension, index spec, schema version)
 * and the FAISS file DB.faiss beside it, written by qd_ann_save (checksummed).
 *
 * Consistency. Every change (add, remove) takes the next change sequence number,
 * stored with the row in the same SQLite transaction that makes the change; a change
 * is acknowledged only after that transaction commits. The FAISS index in memory is
 * updated after the commit. qd_store_checkpoint() writes the FAISS file (crash-safe
 * rename) and then records in meta the sequence number it reflects and the file's
 * CRC-32 and size. qd_store_open() loads the FAISS file when meta vouches for it and
 * replays every change with a later sequence number from the stored vectors; when the
 * file is missing or meta does not vouch for it (a crash between rename and meta
 * update, a tampered file), it rebuilds the index from every live row's stored
 * vector. So a killed process loses nothing that was acknowledged, and the FAISS file
 * is never trusted beyond what SQLite says.
 *
 * Removal. A removed row keeps its text and vector with a removed time (a tombstone)
 * until qd_store_compact() deletes it. Index kinds FAISS can remove from lose the
 * vector at once; for the others (HNSW) the vector stays in FAISS and searches filter
 * it out (over-fetching to still return k results), until compact rebuilds the index.
 * An external id is unique among live rows; a removed id may be added again (a new
 * row).
 *
 * Threads. qd_store_search, qd_store_get, qd_store_get_row and qd_store_get_info may
 * run from any number of threads at once; writers (add, remove, checkpoint, compact,
 * set_param) and verify and export are serialized inside the store. A search sees
 * each concurrent write entirely or not at all (a reader-writer lock over the index
 * and the in-memory row table, which searches read without touching SQLite); it waits
 * only while a committed change is applied to memory, never while a batch is tokenized
 * or written to SQLite. FAISS runs each search on OpenMP threads of its own: a caller
 * searching from several threads should bound that with qd_ann_set_threads(1).
 *
 * Processes. One process at a time may open a store for writing: a writable open
 * (and qdup-index build) holds an exclusive flock on DB.lock and fails with
 * QD_ERR_BUSY while another process holds it (QD_ERR_UNAVAILABLE if the lock file
 * cannot be opened for writing: a read-only filesystem). Read-only opens take no lock;
 * they see the database as it was when they opened it (plus nothing later: the index
 * and the row table are loaded once), and work on a read-only filesystem too (a store
 * closed cleanly is then opened as immutable, since SQLite cannot create the files a
 * WAL database needs to be shared).
 *
 * Errors: functions return 0 or a negative QD_ERR_*; the detail is kept per thread
 * (qd_store_errmsg), because searches run concurrently on one store.
 */
#ifndef QDUP_STORE_H
#define QDUP_STORE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "qdup/model.h"
#include "qdup/rank.h"

#ifdef __cplusplus
extern "C" {
#endif

#define QD_STORE_SCHEMA_VERSION 2

/* Limits on what a store accepts (qd_store_check_item). */
#define QD_STORE_MAX_ID 256        /* bytes of an external id */
#define QD_STORE_MAX_TEXT 65536    /* bytes of a question text */
#define QD_STORE_MAX_K 10000       /* results per query */

typedef struct qd_store qd_store;

typedef struct qd_store_opts {
    const char *model_path; /* model to use; NULL: the path remembered in the database */
    const char *index_spec; /* create only: FAISS factory string; NULL: "Flat" */
    int threads;            /* tokenizing threads for batch adds (0: all cores) */
    int readonly;           /* open only for reading (info, verify, export, search) */
} qd_store_opts;

/* Creates a new, empty store at db_path (which must not exist: QD_ERR_EXISTS; the
 * FAISS file is db_path + ".faiss"), applying schema.sql and recording the model's
 * fingerprint and absolute path, its dimension and the index spec (checked by making
 * an index: QD_ERR_INVAL for a spec FAISS refuses). o->model_path is required;
 * o->readonly must be 0. On failure nothing is left on disk. */
int qd_store_create(const char *db_path, const qd_store_opts *o, qd_store **out, char *err,
                    size_t errlen);

/* Opens an existing store: checks the schema version (QD_ERR_VERSION if newer,
 * QD_ERR_FORMAT if db_path is not a qdup store, QD_ERR_NOTFOUND if it does not
 * exist), loads the model (o->model_path or the remembered one) and refuses it with
 * QD_ERR_MISMATCH if its fingerprint is not the database's; loads or rebuilds the
 * FAISS index as described above. A writable open that had to replay or rebuild
 * tries a fresh checkpoint at once, and remembers o->model_path if given; neither is
 * required: when the machine refuses the write (a full disk, an I/O error), the store
 * opens all the same, serving from the index in memory, and reports the failed
 * checkpoint in qd_store_get_info (checkpoint_failing) until one succeeds. A failed
 * checkpoint loses nothing: the database holds every change, and the next open
 * replays what the file lacks. QD_ERR_BUSY if another process has the store open for
 * writing. */
int qd_store_open(const char *db_path, const qd_store_opts *o, qd_store **out, char *err,
                  size_t errlen);

/* Checkpoints (unless read-only or nothing changed) and frees everything. NULL is a
 * no-op. A failing checkpoint loses nothing (the next open replays from SQLite); call
 * qd_store_checkpoint() first to see its errors. */
void qd_store_close(qd_store *s);

/* Detail of the failure of the last store call in the calling thread: every qd_store
 * call clears it on entry, so it is "" after a success and never an earlier call's
 * message (constructors, probe and install also give it in their err buffer). s may
 * be NULL. */
const char *qd_store_errmsg(const qd_store *s);

/* The model in force. A switch of model (qd_store_reembed_switch) frees the one it
 * replaces: a caller on another thread than the switch's holds it with qd_store_pin. */
const qd_model *qd_store_model(const qd_store *s);

/* --- writing ------------------------------------------------------------------------ */

/* One question to add. */
typedef struct qd_store_item {
    const char *ext_id;  /* the caller's id (UTF-8, 1..256 bytes) */
    size_t ext_id_len;
    const char *text;    /* the question */
    size_t text_len;
    const float *vec;    /* (dim) its vector (a unit vector, as the model makes):
                            required for an item qd_store_add stores, may be NULL
                            for one it refuses and in qd_store_check */
} qd_store_item;

/* Checks one item against the input rules (input.h) with the store's limits: id
 * 1..QD_STORE_MAX_ID bytes of UTF-8 without control characters, text
 * 1..QD_STORE_MAX_TEXT bytes of UTF-8 without NUL (a text of white space only passes
 * here and comes back from add as QD_STORE_EMPTY). 0 or QD_ERR_INVAL with the reason
 * in err. qd_store_add refuses a batch holding an item that fails this, so callers
 * taking items from the network check first. */
int qd_store_check_item(const qd_store_item *it, char *err, size_t errlen);

/* What happened to each item of a batch add. */
typedef enum qd_store_status {
    QD_STORE_ADDED = 0,        /* stored */
    QD_STORE_REPLACED,         /* stored, an earlier live row with that id removed */
    QD_STORE_DUP_ID,           /* not stored: the id is live (or twice in the batch) */
    QD_STORE_DUP_TEXT,         /* not stored: same normalized text as a live row */
    QD_STORE_EMPTY,            /* not stored: no tokens (empty after normalization) */
    QD_STORE_REPOST,           /* stored (QD_STORE_REPOSTS), same normalized text as the
                                  live row other_row (or an earlier item of the batch) */
} qd_store_status;

typedef struct qd_store_result {
    qd_store_status status;  /* the outcome */
    int64_t row;             /* row id (the FAISS id) when stored, else -1 */
    int64_t other_row;       /* for DUP_ID / DUP_TEXT / REPOST: the row it collided
                                with, or -1 */
} qd_store_result;

/* Flags of qd_store_add and qd_store_check (1 is QD_STORE_REPLACE, so a caller's
 * "replace" boolean keeps its meaning). */
enum {
    QD_STORE_REPLACE = 1, /* an item whose id is live replaces that row (else DUP_ID) */
    QD_STORE_REPOSTS = 2, /* an item with the normalized text of a live row is stored
                             all the same, as QD_STORE_REPOST (else DUP_TEXT) */
};

/* Adds n questions in one transaction; `replace` holds the flags above (with
 * QD_STORE_REPLACE, an item whose id is live replaces that row instead of being
 * refused). res (n) gets each item's outcome. The
 * store does not encode: every item it stores must bring its vector (qd_store_check
 * says which those are; qd_ingest_add in ingest.h encodes and adds). When the vectors
 * of the stored items lie one after another in one array, in item order, the store
 * reads them in place; else it copies them. The call fails as a whole (nothing
 * stored) on an I/O, database or index error, and with QD_ERR_INVAL (the message
 * names the item) if an item fails qd_store_check_item() or a stored item has no
 * vector.
 * An index kind that must be trained (IVF) is trained on the first batch added.
 * Within a batch the first of two items with one id or one normalized text wins. */
int qd_store_add(qd_store *s, const qd_store_item *items, size_t n, int replace,
                 qd_store_result *res);

/* What qd_store_add would do with these items, storing nothing (vectors are not
 * needed: row is -1 for every item; other_row names live rows only). Tells the
 * encoder which items to encode, and serves --strict. */
int qd_store_check(qd_store *s, const qd_store_item *items, size_t n, int replace,
                   qd_store_result *res);

/* Reports progress of long calls (add: phase "index"; open, compact:
 * "rebuild"): fn(phase, done, total, arg) from the calling thread now and then. fn
 * must not call into s. NULL turns it off. */
void qd_store_set_progress(qd_store *s,
                           void (*fn)(const char *phase, size_t done, size_t total,
                                      void *arg),
                           void *arg);

/* Removes the live row with this external id: QD_ERR_NOTFOUND if there is none. */
int qd_store_remove(qd_store *s, const char *ext_id, size_t ext_id_len);

/* Removes the live rows of n external ids in one transaction (one pass over the
 * FAISS index). found (n, may be NULL) gets 1 for each id that was live, else 0;
 * *nremoved (may be NULL) the number removed. Ids that are not live are skipped, not
 * an error. */
int qd_store_remove_many(qd_store *s, const char *const *ext_ids, const size_t *lens,
                         size_t n, int *found, size_t *nremoved);

/* Writes the FAISS file and records in meta what it reflects (see above). On failure
 * (QD_ERR_UNAVAILABLE for a full disk or an I/O error) the store stays usable and
 * reports checkpoint_failing until a checkpoint succeeds; the caller retries later. */
int qd_store_checkpoint(qd_store *s);

/* Deletes tombstones and rebuilds the FAISS index from the live rows (searches go on
 * meanwhile against the old index), checkpoints it and VACUUMs the database. */
int qd_store_compact(qd_store *s);

/* Sets a FAISS search parameter ("nprobe" for IVF, "efSearch" for HNSW) on the index
 * in memory, and on the indexes compact and a switch of model build later (not
 * remembered across opens). QD_ERR_INVAL if the kind has none. */
int qd_store_set_param(qd_store *s, const char *name, double value);
/* The same from "NAME=VALUE" text (a --param option): QD_ERR_FORMAT, with the reason in
 * qd_store_errmsg(), if it is not of that form with a number for VALUE. */
int qd_store_set_param_text(qd_store *s, const char *name_value);

/* --- moderators' verdicts (schema version 2) ------------------------------------------- */

/* Records that a moderator closed the live question new_id as a duplicate of the live
 * question old_id (duplicate 1) or dismissed that suggestion (0), with both texts as
 * they are now, so that removing either later loses nothing. A repeated verdict on the
 * same (new_id, old_id) replaces the earlier one. QD_ERR_NOTFOUND if either is not
 * live, QD_ERR_INVAL if they are the same id, QD_ERR_FORBIDDEN if opened read-only,
 * QD_ERR_UNAVAILABLE on a version 1 store that could not be migrated (a full disk). */
int qd_store_verdict(qd_store *s, const char *new_id, size_t new_len, const char *old_id,
                     size_t old_len, int duplicate);

/* Writes every verdict, oldest first, as a pair file in the Quora format qdup-train
 * takes (pairs.h): a header, then id, qid1 (the new question), qid2 (the old one),
 * question1, question2 (quoted RFC 4180 style) and is_duplicate, tab separated. qids
 * number the distinct questions (an external id with its text) from 1 in order of
 * first appearance. A version 1 store (read-only) has none: the header only. */
int qd_store_export_verdicts(qd_store *s, FILE *out);

/* --- switching to another model (reembed.c) ------------------------------------------ */

/* A store switches to another model in two steps, so that a daemon can keep serving
 * meanwhile and a kill at any moment leaves one model in force, never a mix:
 *
 * Staging (qd_store_reembed_stage) encodes every stored question (live and removed)
 * with the new model into a staging table of the database (schema.sql: reembed), in
 * short transactions beside whatever process writes the store, and needs no writer
 * lock. It resumes a staging for the same model left by a kill, and starts over if
 * one for another model is there. The store keeps its model until the switch.
 *
 * The switch (qd_store_reembed_switch, by the process holding the writer lock)
 * is one SQLite transaction: it encodes the rows added since staging read them,
 * copies the staged vectors into the questions, records the new model in meta, drops
 * the staging data and leaves the FAISS file unvouched for; it then swaps the new
 * model and an index built from the new vectors in (see qd_store_pin) and writes a
 * checkpoint. A kill after the commit and before the checkpoint is healed by the
 * next open, which rebuilds the index from the database. The new model must have the
 * store's dimension. */

/* What a staging holds (qd_store_reembed_status), or made (stage). */
typedef struct qd_store_staged {
    int staged;              /* 1 if the store holds a staging */
    int complete;            /* 1 if it reached every row there was when it finished */
    uint64_t rows;           /* vectors staged */
    uint64_t total;          /* rows in the store (live and removed) */
    char fingerprint[17];    /* the staged model's fingerprint */
    char model_path[1024];   /* its file (resolved) */
    double seconds;          /* stage only: time it took */
} qd_store_staged;

/* Stages the vectors of model_path for the store at db_path (see above) on `threads`
 * encoding threads (0: all cores); progress(phase "reembed", done, total, arg) now
 * and then if not NULL. QD_ERR_EXISTS if the store already uses that model,
 * QD_ERR_MISMATCH for a model of another dimension, QD_ERR_BUSY if another staging
 * (of another model) replaced this one meanwhile. *out (may be NULL) gets the result. */
int qd_store_reembed_stage(const char *db_path, const char *model_path, int threads,
                           void (*progress)(const char *phase, size_t done, size_t total,
                                            void *arg),
                           void *arg, qd_store_staged *out, char *err, size_t errlen);

/* What the store's database holds staged now. */
int qd_store_reembed_status(qd_store *s, qd_store_staged *out);

/* Switches s to the staged model (see above). QD_ERR_NOTFOUND if nothing is staged,
 * QD_ERR_BUSY if the staging is not finished (a reembed still running, or killed:
 * run it again), QD_ERR_MISMATCH if the staged model's file no longer has the staged
 * fingerprint, QD_ERR_FORBIDDEN if opened read-only. On failure the store keeps its
 * model and the staging. *old_fp and *new_fp (17 bytes each, may be NULL) get the
 * fingerprints. */
int qd_store_reembed_switch(qd_store *s, char *old_fp, char *new_fp);

/* The model in force, held until qd_store_unpin: a switch waits for every pin to be
 * released before it swaps the model and the index (for a compressed kind, before it
 * commits the new vectors, which its searches read from the database), so a caller
 * that encodes with the pinned model and then searches (or adds) sees one model
 * throughout. Pins are shared; a thread must not pin twice (a waiting switch would
 * deadlock it). */
const qd_model *qd_store_pin(qd_store *s);
void qd_store_unpin(qd_store *s);

/* Re-encodes every stored question (live and removed) with the store's model and
 * compares it with its stored vector: a vector of another model (or a damaged one)
 * is a problem, printed as one line to report (at most max_report) if not NULL.
 * *problems gets the count. 0 if all match, QD_ERR_MISMATCH if not. */
int qd_store_check_vectors(qd_store *s, FILE *report, size_t max_report, uint64_t *problems);

/* --- reading ------------------------------------------------------------------------ */

/* A stored question. Strings are copies owned by the caller's qd_store_hits or row
 * (freed with qd_store_hits_free / qd_store_row_free). */
typedef struct qd_store_row {
    int64_t row;        /* row id (FAISS id) */
    char *ext_id;       /* external id */
    char *text;         /* question text */
    double created;     /* unix time, seconds */
    double removed;     /* unix time, 0 while live */
} qd_store_row;

void qd_store_row_free(qd_store_row *r);

/* Looks up a live row by external id: QD_ERR_NOTFOUND if there is none. */
int qd_store_get(qd_store *s, const char *ext_id, size_t ext_id_len, qd_store_row *row);

/* Looks up a row by row id, live or tombstone (removed != 0): QD_ERR_NOTFOUND if
 * there is none (never added, or compacted away). */
int qd_store_get_row(qd_store *s, int64_t row_id, qd_store_row *row);

/* One search result. Without a query text (qd_store_search) score is the cosine and
 * lexical and p_duplicate are 0. */
typedef struct qd_store_hit {
    qd_store_row row;   /* the stored question */
    float score;        /* the ranking score: fused (rank.h) or, ranking by cosine, the
                           cosine */
    float cosine;       /* cosine similarity to the query */
    float lexical;      /* BM25 relative to the best candidate's, 0..1 (rank.h) */
    float p_duplicate;  /* P(duplicate) from the model's head; 1 for the same text */
    int identical;      /* 1 if its normalized text is the query's (a repost) */
} qd_store_hit;

typedef struct qd_store_hits {
    size_t n;           /* results, best first */
    qd_store_hit *hit;  /* (n) */
} qd_store_hits;

void qd_store_hits_free(qd_store_hits *h);

/* The k best live rows for each of nq query vectors q (nq, dim), with score >=
 * min_score, excluding rows whose external id equals exclude[i] (for query i; exclude
 * may be NULL, or hold NULLs; NUL-terminated ids). out (nq) receives one result list
 * per query (fewer than k when the store holds fewer matching rows); on failure every
 * out[i] is empty. All nq queries see one state of the store. k is 1..QD_STORE_MAX_K;
 * queries must be finite (QD_ERR_INVAL). Approximate kinds may miss neighbours. */
int qd_store_search(qd_store *s, const float *q, size_t nq, size_t k, float min_score,
                    const char *const *exclude, qd_store_hits *out);

/* A search with the query texts: the hybrid ranking. */
typedef struct qd_store_query {
    size_t k;                   /* results per query, 1..QD_STORE_MAX_K */
    float min_score;            /* keep rows whose cosine is >= min_score */
    qd_rank_mode rank;          /* QD_RANK_FUSED or QD_RANK_COSINE */
    size_t candidates;          /* fused: nearest vectors re-scored (0: the model's) */
    const char *const *texts;   /* (nq) the query texts */
    const size_t *lens;         /* (nq) their lengths */
    const char *const *exclude; /* (nq) external ids to leave out (NULL, or NULLs) */
} qd_store_query;

/* Like qd_store_search, ranked as rank.h describes: with QD_RANK_FUSED the
 * `candidates` nearest live rows (at least k) are re-scored with BM25 against the
 * query text over the store's term statistics and fused with the cosine, with
 * QD_RANK_COSINE the k nearest are kept in cosine order (their lexical score relative
 * to the best of those k); every hit gets its lexical score and P(duplicate), and a
 * row with the query's very normalized text gets p_duplicate 1 and identical 1. The
 * term statistics (document frequencies over the live rows, their mean length) are
 * rebuilt from the stored texts at open and kept in step with every add and remove
 * in memory. */
int qd_store_search_text(qd_store *s, const float *q, size_t nq, const qd_store_query *o,
                         qd_store_hits *out);

/* Counts and sizes for `qdup-index info` and the daemon's stats. */
typedef struct qd_store_info {
    uint64_t live;           /* live rows */
    uint64_t tombstones;     /* removed rows not yet compacted */
    uint64_t faiss_count;    /* vectors in the FAISS index */
    uint64_t seq;            /* last change sequence number */
    uint64_t checkpoint_seq; /* sequence number the FAISS file reflects */
    int dim;                 /* vector dimension */
    char index_spec[128];    /* FAISS factory string */
    char model_fingerprint[17];
    char model_path[1024];
    uint64_t db_bytes;       /* database file (with its WAL) */
    uint64_t faiss_bytes;    /* FAISS file */
    int can_remove;          /* 1 if the index kind removes vectors (else tombstones) */
    int readonly;            /* 1 if opened read-only */
    char faiss_note[256];    /* why the FAISS file was not used as is at open ("" if it
                                was, or replayed onto): the index was rebuilt */
    int checkpoint_failing;  /* 1 if the last checkpoint failed (a full disk, an I/O
                                error): the index in memory serves, the file lags */
    uint64_t checkpoint_failures; /* checkpoints failed since open */
    char checkpoint_error[256]; /* the last failure's detail ("" if none) */
    uint64_t unsaved_changes; /* changes not yet in the FAISS file (seq - checkpoint_seq) */
    uint64_t unsaved_bytes;  /* an estimate of their bytes: a vector and an id each */
} qd_store_info;

int qd_store_get_info(qd_store *s, qd_store_info *info);

/* How many queries are worth searching in one call (qd_ann_search_batch), or `dflt`
 * if a change is being applied right now: it never waits for one. */
size_t qd_store_search_batch(qd_store *s, size_t dflt);

/* Checks that every live row is in FAISS with its stored vector, that FAISS holds
 * nothing else (tombstones of kinds that cannot remove aside), and that the model
 * matches; also the FAISS file on disk against meta's record, SQLite's own integrity
 * check, and every stored vector and text key. Kinds that cannot look a vector up by
 * id (IVF) are checked by searching each stored vector. Prints one line per problem
 * (at most max_report) to `report` if not NULL; *problems (may be NULL) gets the
 * count. Returns 0 if all holds, QD_ERR_MISMATCH if not, another error if the check
 * itself could not run. */
int qd_store_verify(qd_store *s, FILE *report, size_t max_report, uint64_t *problems);

/* Writes every live row as JSON Lines: {"id": ..., "text": ..., "vector": [...]} (the
 * form Milvus, Qdrant, Elasticsearch and pgvector bulk loaders take). */
int qd_store_export(qd_store *s, FILE *out);

/* The normalized-text key used for exact-duplicate detection: a 64-bit hash of the
 * question's token sequence (qd_tok_split, all tokens, before the vocabulary: so two
 * texts differing only in case, width, accents' encoding or spacing have one key).
 * 0 if the text has no tokens (or on allocation failure); never 0 otherwise. */
uint64_t qd_store_text_key(const qd_store *s, const char *text, size_t len);

/* --- files ----------------------------------------------------------------------- */

/* Takes the writer lock of the store at db_path (flock on db_path + ".lock", created
 * if missing) into *fd: QD_ERR_BUSY, naming the holder's pid, if another process
 * holds it. qd_store_unlock(fd) releases it (fd < 0 is a no-op). */
int qd_store_lock(const char *db_path, int *fd, char *err, size_t errlen);
void qd_store_unlock(int fd);

/* 0 if db_path is a qdup store (an SQLite database with qdup's application id),
 * QD_ERR_NOTFOUND if there is no such file, QD_ERR_FORMAT if it is something else;
 * err says which. Opens nothing for writing. */
int qd_store_probe(const char *db_path, char *err, size_t errlen);

/* Moves a complete, closed store built at tmp_db (by qd_store_create, filled, closed)
 * into place at db_path, replacing the store there if any (the caller holds
 * db_path's lock). The old database's WAL is checkpointed first so that no stale
 * -wal file can be applied to the new one; then tmp_db is renamed over db_path (the
 * commit point), then tmp_db.faiss over db_path.faiss, then the directory is
 * fsynced. A crash before the first rename leaves the old store; between the two,
 * the new database with the old FAISS file, which its meta does not vouch for, so
 * the next open rebuilds the index from the new database. QD_ERR_FORMAT if db_path
 * exists and is not a qdup store (it is not replaced). */
int qd_store_install(const char *tmp_db, const char *db_path, char *err, size_t errlen);

/* The files of a store, as suffixes of its database file's name DB ("" is DB itself):
 * SQLite's journal files, the FAISS file and the writer lock. The one list of them,
 * for an array initializer: `static const char *const sfx[] = {QD_STORE_SUFFIXES};`.
 * QD_STORE_LOCK_SUFFIX is the last. */
#define QD_STORE_LOCK_SUFFIX ".lock"
#define QD_STORE_SUFFIXES "", "-wal", "-shm", "-journal", ".faiss", QD_STORE_LOCK_SUFFIX

/* Deletes the files of a store that is not open (db_path + each QD_STORE_SUFFIXES);
 * for discarding a failed build. Missing files are ignored. */
void qd_store_discard(const char *db_path);

/* Deletes the temporary files that killed processes left beside the store at db_path
 * (the caller holds its writer lock, so no live process is still writing one): the
 * checkpoints' "DB.faiss.tmp.P.N" (qd_file_write_atomic's names: pid and counter),
 * and with `builds` also the stores of killed builds, "DB.tmp.P.N" followed by one of
 * QD_STORE_SUFFIXES or by ".faiss.tmp.P.N". removed(path, arg), if not NULL, is told
 * each file deleted. qd_store_open sweeps checkpoints; qdup-index build everything. */
void qd_store_sweep(const char *db_path, int builds,
                    void (*removed)(const char *path, void *arg), void *arg);

#ifdef __cplusplus
}
#endif

#endif
