/*
 * store.c - the question store: SQLite holds every question (text, vector, times), a
 * FAISS index (qd_ann) holds the vectors for search, and an in-memory row table maps
 * FAISS ids back to questions. See include/qdup/store.h for the contract, and
 * store_impl.h for how the work is divided among the store's files: this one opens,
 * creates and closes a store and answers searches; write.c makes changes.
 *
 * How a change is made (add, remove, compact), always under the writer mutex `wmu`:
 *   1. work out what will happen (classification) reading only memory,
 *      which no one else modifies while we hold wmu;
 *   2. allocate everything the in-memory update will need (row entries, hash-table
 *      room), so that nothing after the commit can fail for lack of memory;
 *   3. one SQLite transaction: the rows, the next change number, COMMIT; the change is
 *      acknowledged only once COMMIT returns;
 *   4. under the write side of the rwlock `rw`, apply it to the row table and to
 *      FAISS, so that a search (read side) sees all of it or none of it.
 * If FAISS fails in step 4 (only an allocation inside FAISS can), the change is in
 * SQLite but not in memory: the store marks itself broken and refuses further writes;
 * the next open replays it from SQLite.
 *
 * Durability. The database runs in WAL mode with synchronous=FULL: COMMIT fsyncs the
 * WAL, so an acknowledged change survives a power cut (with NORMAL a power cut could
 * lose the last few commits, never corrupt); a killed process loses nothing that was
 * committed whatever the setting, since the bytes are in the OS page cache. The FAISS
 * file is a cache: qd_store_checkpoint writes it (temporary file, fsync, rename) and
 * then records its change number, CRC-32 and size in meta; qd_store_open trusts a
 * file only if it matches that record, replays later changes from the stored vectors,
 * and otherwise rebuilds the index from SQLite.
 *
 * Reads. The row table (row id -> ext id, text, times) lives in memory in three
 * open-addressing hash tables (by row id: all rows; by ext id and by text key: live
 * rows only), so a search costs one FAISS search plus a few hash probes and string
 * copies under the read lock, and never touches SQLite. A search over-fetches from
 * FAISS to make up for tombstones still in the index (HNSW) and an excluded id, and
 * asks again with a larger k for a query that still came up short.
 */
#include "qdup/store.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "qdup/ann.h"
#include "qdup/common.h"
#include "qdup/input.h"
#include "qdup/tok.h"
#include "store_impl.h"

/* --- errors ------------------------------------------------------------------------- */

/* Detail of the last failing store call in this thread: per thread, because searches
 * run concurrently on one store (see ann.c for the same choice). */
_Thread_local char st_err[QD_ERRMSG_MAX];

int st_fail(int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(st_err, sizeof st_err, fmt, ap);
    va_end(ap);
    return rc;
}

const char *qd_store_errmsg(const qd_store *s)
{
    (void)s;
    return st_err;
}

/* Maps an SQLite result code to a QD_ERR_* (a full disk, a read-only filesystem or a
 * failing device is the machine's fault, "unavailable": nothing was written, retry
 * later; a locked database is busy, a file that is not a database is a format error). */
int st_db_code(int src)
{
    switch (src & 0xff) {
    case SQLITE_NOMEM: return QD_ERR_NOMEM;
    case SQLITE_FULL:
    case SQLITE_IOERR:
    case SQLITE_READONLY: return QD_ERR_UNAVAILABLE;
    case SQLITE_CANTOPEN: return QD_ERR_IO;
    case SQLITE_BUSY:
    case SQLITE_LOCKED: return QD_ERR_BUSY;
    case SQLITE_NOTADB:
    case SQLITE_CORRUPT: return QD_ERR_FORMAT;
    default: return QD_ERR_DB;
    }
}

/* Records an SQLite failure: "<path>: <what>: <sqlite's message>". */
int st_dbfail(sqlite3 *db, const char *path, const char *what)
{
    int src = db ? sqlite3_extended_errcode(db) : SQLITE_ERROR;
    return st_fail(st_db_code(src), "%s: %s: %s", path, what,
                   db ? sqlite3_errmsg(db) : "no database");
}

/* snprintf that may truncate on purpose (messages and notes are bounded); a
 * function of our own, so that GCC does not warn about the intended truncation. */
void st_format(char *dst, size_t len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(dst, len, fmt, ap);
    va_end(ap);
}

/* --- test hook ---------------------------------------------------------------------- */

static void (*st_test_hook)(const char *point);

void qd_store_set_test_hook(void (*fn)(const char *point))
{
    st_test_hook = fn;
}

void st_hook(const char *point)
{
    if (st_test_hook)
        st_test_hook(point);
}

/* --- small helpers ------------------------------------------------------------------ */

const qd_model *qd_store_model(const qd_store *s)
{
    return s->model;
}

void qd_store_set_progress(qd_store *s, st_progress_fn fn, void *arg)
{
    s->progress = fn;
    s->progress_arg = arg;
}

void st_progress(qd_store *s, const char *phase, size_t done, size_t total)
{
    if (s->progress)
        s->progress(phase, done, total, s->progress_arg);
}

/* --- item checks -------------------------------------------------------------------- */

int qd_store_check_item(const qd_store_item *it, char *err, size_t errlen)
{
    return qd_input_check_question(it->ext_id, it->ext_id_len, QD_STORE_MAX_ID, it->text,
                                   it->text_len, QD_STORE_MAX_TEXT, QD_INPUT_BLANK_OK, err,
                                   errlen)
               ? QD_ERR_INVAL
               : 0;
}

/* --- open, create, close ------------------------------------------------------------------- */

void st_free(qd_store *s)
{
    if (!s)
        return;
    st_readers_free(s);
    if (s->db)
        sqlite3_close(s->db);
    qd_store_unlock(s->lock_fd);
    qd_ann_free(s->ann);
    if (s->by_row.slot)
        for (size_t i = 0; i <= s->by_row.mask; i++)
            qd_free(s->by_row.slot[i]);
    st_map_free(&s->by_row);
    st_map_free(&s->by_ext);
    st_map_free(&s->by_text);
    qd_lex_stats_free(s->lex);
    qd_model_free(s->model);
    pthread_mutex_destroy(&s->wmu);
    pthread_mutex_destroy(&s->rd_mu);
    pthread_rwlock_destroy(&s->rw);
    pthread_rwlock_destroy(&s->pin);
    qd_free(s);
}

/* A store object with paths and locks set up and nothing opened. */
int st_new(const char *db_path, const qd_store_opts *o, qd_store **out, char *err,
                  size_t errlen)
{
    *out = NULL;
    if (!db_path || !*db_path)
        return qd_errf(err, errlen, QD_ERR_INVAL, "no database path");
    qd_store *s = qd_calloc(1, sizeof *s);
    if (!s)
        return qd_errf(err, errlen, QD_ERR_NOMEM, "out of memory");
    s->lock_fd = -1;
    s->by_row.key = KEY_ROW;
    s->by_ext.key = KEY_EXT;
    s->by_text.key = KEY_TEXT;
    s->readonly = o ? o->readonly : 0;
    s->threads = o ? o->threads : 0;
    s->lex = qd_lex_stats_new();
    if (!s->lex) {
        qd_free(s);
        return qd_errf(err, errlen, QD_ERR_NOMEM, "out of memory");
    }
    pthread_mutex_init(&s->wmu, NULL);
    pthread_mutex_init(&s->rd_mu, NULL);
    /* Writers would starve behind a steady stream of searches with glibc's default
     * (readers first). */
    pthread_rwlockattr_t ra;
    pthread_rwlockattr_init(&ra);
    pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&s->rw, &ra);
    pthread_rwlock_init(&s->pin, &ra);
    pthread_rwlockattr_destroy(&ra);
    if (st_path_with(s->db_path, sizeof s->db_path, db_path, "") ||
        st_path_with(s->faiss_path, sizeof s->faiss_path, db_path, ".faiss")) {
        st_free(s);
        return qd_errf(err, errlen, QD_ERR_RANGE, "%s: path too long", db_path);
    }
    st_format(s->rd_path, sizeof s->rd_path, "%s", s->db_path);
    s->rd_flags = SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX;
    *out = s;
    return 0;
}

/* The real path of the directory holding db_path into dir. */
static int st_db_dir(const char *db_path, char *dir, size_t dirlen)
{
    char copy[PATH_MAX];
    if (snprintf(copy, sizeof copy, "%s", db_path) >= (int)sizeof copy)
        return -1;
    char *slash = strrchr(copy, '/');
    if (slash == copy)
        slash[1] = '\0';
    else if (slash)
        *slash = '\0';
    else
        snprintf(copy, sizeof copy, ".");
    char real[PATH_MAX];
    if (!realpath(copy, real) || strlen(real) >= dirlen)
        return -1;
    memcpy(dir, real, strlen(real) + 1);
    return 0;
}

/* How meta remembers the model at model_abs: relative to the database's directory when
 * the model lies there or below (the two then move together: a directory copied or
 * renamed whole still finds its model), else absolute. */
void st_model_ref(const char *db_path, const char *model_abs, char *out, size_t outlen)
{
    char dir[PATH_MAX];
    size_t n;
    if (st_db_dir(db_path, dir, sizeof dir) == 0 && (n = strlen(dir)) > 1 &&
        strncmp(model_abs, dir, n) == 0 && model_abs[n] == '/')
        snprintf(out, outlen, "%s", model_abs + n + 1);
    else
        snprintf(out, outlen, "%s", model_abs);
}

/* The file a remembered model reference names: a relative one from the database's
 * directory (not the current one). */
void st_model_resolve(const char *db_path, const char *ref, char *out, size_t outlen)
{
    char dir[PATH_MAX];
    size_t n;
    if (ref[0] != '/' && st_db_dir(db_path, dir, sizeof dir) == 0 &&
        (n = strlen(dir)) + 1 + strlen(ref) < outlen) {
        memcpy(out, dir, n);
        out[n] = '/';
        memcpy(out + n + 1, ref, strlen(ref) + 1);
    } else {
        snprintf(out, outlen, "%s", ref);
    }
}

/* Loads the model at path into *m and its absolute path into abs (PATH_MAX). */
int st_load_model_at(const char *path, qd_model **m, char *abs, char *err, size_t errlen)
{
    *m = NULL;
    if (!realpath(path, abs)) {
        int e = errno;
        return qd_errf(err, errlen, e == ENOENT ? QD_ERR_NOTFOUND : QD_ERR_IO, "model %s: %s",
                       path, strerror(e));
    }
    int rc = qd_model_load(abs, m, err, errlen);
    if (rc)
        return rc;
    if (strlen(abs) >= ST_PATH_MAX)
        rc = qd_errf(err, errlen, QD_ERR_RANGE, "model %s: path too long", abs);
    else if (strlen(qd_model_fingerprint(*m)) != 16)
        rc = qd_errf(err, errlen, QD_ERR_INVAL, "model %s: no fingerprint", abs);
    if (rc) {
        qd_model_free(*m);
        *m = NULL;
    }
    return rc;
}

/* Loads the model at path into s, remembering its absolute path. */
static int st_load_model(qd_store *s, const char *path, char *err, size_t errlen)
{
    char abs[PATH_MAX];
    int rc = st_load_model_at(path, &s->model, abs, err, errlen);
    if (!rc)
        strcpy(s->model_path, abs);
    return rc;
}

static void st_kind(qd_store *s)
{
    s->can_remove = st_can_remove(s, s->ann);
    s->lossy = !st_spec_is_exact(s->spec);
    s->rescore = s->compressed ? ST_RESCORE_DEFAULT : 0;
}

int qd_store_create(const char *db_path, const qd_store_opts *o, qd_store **out, char *err,
                    size_t errlen)
{
    st_enter();
    qd_store *s = NULL;
    int created = 0, rc;
    *out = NULL;
    if (!o || !o->model_path)
        return qd_errf(err, errlen, QD_ERR_INVAL, "%s: creating an index needs a model",
                       db_path ? db_path : "");
    if (o->readonly)
        return qd_errf(err, errlen, QD_ERR_INVAL, "%s: cannot create read-only", db_path);
    rc = st_new(db_path, o, &s, err, errlen);
    if (rc)
        return rc;
    const char *spec = o->index_spec && *o->index_spec ? o->index_spec : "Flat";
    if (strlen(spec) >= sizeof s->spec) {
        rc = qd_errf(err, errlen, QD_ERR_INVAL, "index spec \"%.40s...\" too long", spec);
        goto fail;
    }
    strcpy(s->spec, spec);
    s->compressed = st_spec_is_compressed(s->spec);
    s->keep_terms = !s->compressed;
    rc = qd_store_lock(db_path, &s->lock_fd, err, errlen);
    if (rc)
        goto fail;
    if (st_file_exists(db_path)) {
        rc = qd_errf(err, errlen, QD_ERR_EXISTS, "%s: already exists", db_path);
        goto fail;
    }
    rc = st_load_model(s, o->model_path, err, errlen);
    if (rc)
        goto fail;
    s->dim = qd_model_dim(s->model);
    snprintf(s->fingerprint, sizeof s->fingerprint, "%s", qd_model_fingerprint(s->model));
    rc = qd_ann_new(s->dim, s->spec, &s->ann, err, errlen);
    if (rc)
        goto fail;
    st_kind(s);

    created = 1;
    int src = sqlite3_open_v2(db_path, &s->db,
                              SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                              NULL);
    if (src != SQLITE_OK) {
        rc = qd_errf(err, errlen, st_db_code(src), "%s: %s", db_path,
                     s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(src));
        goto fail;
    }
    rc = st_db_configure(s);
    if (!rc && sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        rc = st_dbfail(s->db, db_path, "starting a transaction");
    if (!rc)
        rc = st_db_exec(s, qd_store_schema_sql);
    double now = qd_wall_now();
    if (!rc)
        rc = st_meta_set(s, "dim", 'i', s->dim, NULL, 0);
    if (!rc)
        rc = st_meta_set(s, "index_spec", 't', 0, s->spec, 0);
    if (!rc)
        rc = st_meta_set(s, "model_fingerprint", 't', 0, s->fingerprint, 0);
    char model_ref[PATH_MAX];
    st_model_ref(db_path, s->model_path, model_ref, sizeof model_ref);
    if (!rc)
        rc = st_meta_set(s, "model_path", 't', 0, model_ref, 0);
    if (!rc)
        rc = st_meta_set(s, "seq", 'i', 0, NULL, 0);
    if (!rc)
        rc = st_meta_set(s, "faiss_seq", 'i', 0, NULL, 0);
    if (!rc)
        rc = st_meta_set(s, "faiss_crc", 'n', 0, NULL, 0);
    if (!rc)
        rc = st_meta_set(s, "faiss_size", 'n', 0, NULL, 0);
    if (!rc)
        rc = st_meta_set(s, "created", 'r', 0, NULL, now);
    int64_t version = 0;
    if (!rc)
        rc = st_meta_int(s, "schema_version", &version);
    if (!rc && version != QD_STORE_SCHEMA_VERSION)
        rc = st_fail(QD_ERR_VERSION, "schema.sql is version %" PRId64 ", this program "
                     "expects %d", version, QD_STORE_SCHEMA_VERSION);
    if (!rc && sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        rc = st_dbfail(s->db, db_path, "creating the schema");
    if (!rc)
        rc = st_map_reserve(&s->by_row, 0, NULL);
    /* An empty store already has its FAISS file, so the pair is complete from the
     * start. */
    if (!rc)
        rc = st_checkpoint_locked(s);
    if (rc) {
        qd_errf(err, errlen, rc, "%s", st_err);
        goto fail;
    }
    *out = s;
    return 0;

fail:
    if (s && s->db) {
        sqlite3_close(s->db);
        s->db = NULL;
    }
    if (created) {
        char p[ST_PATH_MAX];
        /* Everything but the lock, which this process holds until st_free. */
        static const char *const suffix[] = {QD_STORE_SUFFIXES};
        for (size_t i = 0; i < sizeof suffix / sizeof *suffix; i++)
            if (strcmp(suffix[i], QD_STORE_LOCK_SUFFIX) != 0 &&
                st_path_with(p, sizeof p, db_path, suffix[i]) == 0)
                unlink(p);
    }
    st_free(s);
    return rc;
}


/* A read-only open of a WAL database needs its -wal and -shm files, or the right to
 * create them: on a read-only filesystem (or medium) holding a store closed cleanly,
 * which leaves neither, SQLite cannot open it. With no -wal file there is nothing
 * beyond the database file to read, so it is opened as immutable instead (no locks,
 * no -shm). A read-only store is loaded once at open anyway (store.h), so not seeing
 * later changes costs nothing. 0 if s->db was reopened so, else -1 (s->db as was). */
static int reopen_immutable(qd_store *s, const char *db_path)
{
    char wal[ST_PATH_MAX], uri[3 * ST_PATH_MAX + 32];
    if (st_path_with(wal, sizeof wal, db_path, "-wal") != 0 || st_file_exists(wal))
        return -1;
    size_t n = (size_t)snprintf(uri, sizeof uri, "file:");
    for (const char *p = db_path; *p && n + 4 < sizeof uri; p++) {
        if (*p == '%' || *p == '?' || *p == '#')
            n += (size_t)snprintf(uri + n, sizeof uri - n, "%%%02X", (unsigned char)*p);
        else
            uri[n++] = *p;
    }
    uri[n] = '\0';
    if (n + 16 >= sizeof uri)
        return -1;
    snprintf(uri + n, sizeof uri - n, "?immutable=1");
    sqlite3 *db = NULL;
    int flags = SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_URI;
    if (sqlite3_open_v2(uri, &db, flags, NULL) != SQLITE_OK) {
        sqlite3_close(db);
        return -1;
    }
    sqlite3_close(s->db);
    s->db = db;
    st_format(s->rd_path, sizeof s->rd_path, "%s", uri);
    s->rd_flags = flags;
    return 0;
}

int qd_store_open(const char *db_path, const qd_store_opts *o, qd_store **out, char *err,
                  size_t errlen)
{
    st_enter();
    qd_store *s = NULL;
    char meta_model[ST_PATH_MAX];
    int rc;
    *out = NULL;
    rc = st_new(db_path, o, &s, err, errlen);
    if (rc)
        return rc;
    struct stat sb;
    if (stat(db_path, &sb) != 0) {
        int e = errno;
        rc = qd_errf(err, errlen, e == ENOENT ? QD_ERR_NOTFOUND : QD_ERR_IO, "%s: %s",
                     db_path, strerror(e));
        goto fail;
    }
    if (!S_ISREG(sb.st_mode)) {
        rc = qd_errf(err, errlen, QD_ERR_FORMAT, "%s: not a regular file", db_path);
        goto fail;
    }
    if (!s->readonly) {
        rc = qd_store_lock(db_path, &s->lock_fd, err, errlen);
        if (rc)
            goto fail;
        qd_store_sweep(db_path, 0, NULL, NULL);
    }
    int flags = (s->readonly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE) |
                SQLITE_OPEN_NOMUTEX;
    int src = sqlite3_open_v2(db_path, &s->db, flags, NULL);
    if (src != SQLITE_OK) {
        rc = qd_errf(err, errlen, st_db_code(src), "%s: %s", db_path,
                     s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(src));
        goto fail;
    }
    rc = st_db_check_ours(s->db, db_path);
    if (rc && s->readonly && reopen_immutable(s, db_path) == 0)
        rc = st_db_check_ours(s->db, db_path);
    if (rc || (rc = st_db_configure(s)) != 0)
        goto fail_st;
    /* A version 1 store opened for writing becomes version 2 at once; a full disk
     * leaves it version 1 (it opens all the same, without verdicts) until next time. */
    if (!s->readonly && (rc = st_migrate(s)) != 0 && rc != QD_ERR_UNAVAILABLE)
        goto fail_st;

    /* A read transaction over everything read at open, so that the meta values, the
     * rows and the replayed vectors all come from one state of the database even if
     * another process writes meanwhile. */
    if (sqlite3_exec(s->db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK) {
        rc = st_dbfail(s->db, db_path, "starting a transaction");
        goto fail_st;
    }
    int64_t version, dim, seq, faiss_seq, faiss_crc = 0, faiss_size = 0;
    int type;
    rc = st_meta_get(s, "schema_version", &type, &version, NULL, 0);
    if (!rc && type != SQLITE_INTEGER)
        rc = st_fail(QD_ERR_FORMAT, "%s: not a qdup index (no schema version)", db_path);
    if (!rc && version > QD_STORE_SCHEMA_VERSION)
        rc = st_fail(QD_ERR_VERSION,
                     "%s: schema version %" PRId64 " is newer than this program's (%d)",
                     db_path, version, QD_STORE_SCHEMA_VERSION);
    if (!rc && version < 1)
        rc = st_fail(QD_ERR_FORMAT, "%s: schema version %" PRId64 " is not valid", db_path,
                     version);
    if (!rc)
        rc = st_meta_int(s, "dim", &dim);
    if (!rc && (dim < 1 || dim > QD_ANN_MAX_DIM))
        rc = st_fail(QD_ERR_FORMAT, "%s: meta dim %" PRId64 " out of range", db_path, dim);
    if (!rc)
        rc = st_meta_text(s, "index_spec", s->spec, sizeof s->spec);
    s->compressed = st_spec_is_compressed(s->spec);
    s->keep_terms = !s->compressed;
    if (!rc)
        rc = st_meta_text(s, "model_fingerprint", s->fingerprint, sizeof s->fingerprint);
    if (!rc)
        rc = st_meta_text(s, "model_path", meta_model, sizeof meta_model);
    if (!rc)
        rc = st_meta_int(s, "seq", &seq);
    if (!rc)
        rc = st_meta_int(s, "faiss_seq", &faiss_seq);
    int crc_type = SQLITE_NULL;
    if (!rc)
        rc = st_meta_get(s, "faiss_crc", &crc_type, &faiss_crc, NULL, 0);
    if (!rc && crc_type == SQLITE_INTEGER)
        rc = st_meta_int(s, "faiss_size", &faiss_size);
    if (!rc && (seq < 0 || faiss_seq < 0 || faiss_seq > seq))
        rc = st_fail(QD_ERR_FORMAT, "%s: meta seq %" PRId64 " / faiss_seq %" PRId64
                     " are not valid", db_path, seq, faiss_seq);
    if (rc)
        goto fail_st;
    s->dim = (int)dim;
    s->seq = (uint64_t)seq;
    s->faiss_seq = (uint64_t)faiss_seq;

    char meta_file[2 * PATH_MAX];
    st_model_resolve(db_path, meta_model, meta_file, sizeof meta_file);
    const char *model_path = o && o->model_path ? o->model_path : meta_file;
    rc = st_load_model(s, model_path, err, errlen);
    if (rc) {
        if (!(o && o->model_path)) {
            char inner[QD_ERRMSG_MAX];
            snprintf(inner, sizeof inner, "%s", err);
            if (meta_model[0] != '/')
                qd_errf(err, errlen, rc, "%s: the index's model cannot be loaded (%s; "
                        "remembered as %s, relative to the index's directory); pass "
                        "--model", db_path, inner, meta_model);
            else
                qd_errf(err, errlen, rc, "%s: the index's model cannot be loaded (%s); pass "
                        "--model", db_path, inner);
        }
        goto fail;
    }
    if (strcmp(qd_model_fingerprint(s->model), s->fingerprint) != 0) {
        rc = qd_errf(err, errlen, QD_ERR_MISMATCH,
                     "model %s (fingerprint %s) is not the model of %s (fingerprint %s, "
                     "built with %s)",
                     s->model_path, qd_model_fingerprint(s->model), db_path, s->fingerprint,
                     meta_model);
        goto fail;
    }
    if (qd_model_dim(s->model) != s->dim) {
        rc = qd_errf(err, errlen, QD_ERR_FORMAT, "%s: dimension %d, the model's is %d",
                     db_path, s->dim, qd_model_dim(s->model));
        goto fail;
    }
    if ((rc = st_load_rows(s)) != 0 ||
        (rc = st_load_index(s, faiss_crc, crc_type != SQLITE_INTEGER, faiss_size)) != 0)
        goto fail_st;
    sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL); /* ends the read transaction */
    st_kind(s);

    char model_ref[PATH_MAX];
    st_model_ref(db_path, s->model_path, model_ref, sizeof model_ref);
    if (!s->readonly) {
        rc = 0;
        if (strcmp(model_ref, meta_model) != 0) {
            /* Remember where the model is now (it was moved, or --model named it). */
            if (sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
                rc = st_dbfail(s->db, db_path, "starting a transaction");
            if (!rc)
                rc = st_meta_set(s, "model_path", 't', 0, model_ref, 0);
            if (!rc && sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
                rc = st_dbfail(s->db, db_path, "recording the model path");
            if (rc)
                st_db_rollback(s);
            /* A convenience, not a need: on a full disk the next open remembers it. */
            if (rc == QD_ERR_UNAVAILABLE)
                rc = 0;
        }
        if (rc)
            goto fail_st;
        /* The FAISS file is a cache: failing to save it (a full disk) must not turn a
         * crash into an outage. The store serves from memory and reports the failure
         * (qd_store_get_info); the owner retries qd_store_checkpoint later. */
        st_checkpoint_locked(s);
    }
    *out = s;
    return 0;

fail_st:
    qd_errf(err, errlen, rc, "%s", st_err);
fail:
    if (s->db)
        st_db_rollback(s);
    st_free(s);
    return rc;
}

void qd_store_close(qd_store *s)
{
    st_enter();
    if (!s)
        return;
    if (!s->readonly && !s->broken) {
        pthread_mutex_lock(&s->wmu);
        st_checkpoint_locked(s); /* on failure the next open replays from SQLite */
        pthread_mutex_unlock(&s->wmu);
    }
    st_free(s);
}

/* --- reading ---------------------------------------------------------------------------- */


int qd_store_get(qd_store *s, const char *ext_id, size_t ext_id_len, qd_store_row *row)
{
    st_enter();
    memset(row, 0, sizeof *row);
    pthread_rwlock_rdlock(&s->rw);
    const st_row *r = st_map_get_ext(&s->by_ext, ext_id, ext_id_len);
    int rc = r ? st_row_copy(r, row)
               : st_fail(QD_ERR_NOTFOUND, "no live question with id \"%.*s\"",
                         (int)(ext_id_len > 200 ? 200 : ext_id_len), ext_id);
    pthread_rwlock_unlock(&s->rw);
    return rc;
}

int qd_store_get_row(qd_store *s, int64_t row_id, qd_store_row *row)
{
    st_enter();
    memset(row, 0, sizeof *row);
    pthread_rwlock_rdlock(&s->rw);
    const st_row *r = st_map_get_row(&s->by_row, row_id);
    int rc = r ? st_row_copy(r, row)
               : st_fail(QD_ERR_NOTFOUND, "no row %" PRId64, row_id);
    pthread_rwlock_unlock(&s->rw);
    return rc;
}

/* The live rows among one query's FAISS results (fetch of them, best first): up to
 * `want` of them with cosine >= min_score, the excluded id left out, into rows and
 * cos. *more gets 1 if fewer than k were found while FAISS may hold further ones worth
 * fetching. Caller holds the read lock. */
static size_t gather(qd_store *s, const float *scores, const int64_t *ids, size_t fetch,
                     size_t want, size_t k, float min_score, const char *exclude,
                     const st_row **rows, float *cos, int *more)
{
    size_t excl_len = exclude ? strlen(exclude) : 0, n = 0, j = 0;
    *more = 0;
    for (; j < fetch && n < want; j++) {
        if (ids[j] < 0 || scores[j] < min_score)
            return n; /* FAISS has nothing further, or nothing good enough */
        const st_row *r = st_map_get_row(&s->by_row, ids[j]);
        if (!r || r->removed != 0)
            continue;
        if (exclude && r->id_len == excl_len && memcmp(st_row_ext(r), exclude, excl_len) == 0)
            continue;
        rows[n] = r;
        cos[n++] = scores[j];
    }
    *more = n < k && j == fetch;
    return n;
}

/* The hits of one query from its gathered rows: ranked by rank.h when the query's
 * terms are known (q not NULL), else in cosine order with no lexical score. The
 * candidates' terms are made from their texts into docs (n, freed by the caller) with
 * tb. */
static int make_hits(qd_store *s, const qd_store_query *o, const qd_lex_doc *q,
                     uint64_t qkey, const st_row **rows, const float *cos, size_t n,
                     qd_rank_cand *cand, qd_tokbuf *tb, qd_lex_doc *docs,
                     qd_store_hits *out)
{
    size_t k = o->k < n ? o->k : n;
    out->hit = qd_calloc(k ? k : 1, sizeof *out->hit);
    if (!out->hit)
        return st_fail(QD_ERR_NOMEM, "out of memory for %zu results", k);
    for (size_t i = 0; i < n; i++) {
        if (q) {
            int rc = st_row_doc(s, tb, rows[i], &docs[i]);
            if (rc)
                return rc;
        }
        cand[i] = (qd_rank_cand){.doc = &docs[i], .cosine = cos[i],
                                 .identical = q && qkey && rows[i]->text_key == qkey,
                                 .index = i, .score = cos[i]};
    }
    if (q) {
        int rc = qd_rank_rescore(qd_model_get_scoring(s->model), s->lex, q, o->rank, cand, n,
                                 k);
        if (rc)
            return st_fail(rc, "ranking: %s", qd_strerror(rc));
    }
    for (size_t i = 0; i < k; i++) {
        qd_store_hit *h = &out->hit[i];
        int rc = st_row_copy(rows[cand[i].index], &h->row);
        if (rc)
            return rc;
        out->n++;
        h->score = cand[i].score;
        h->cosine = cand[i].cosine;
        h->lexical = q ? cand[i].lexical : 0;
        h->p_duplicate = q ? cand[i].p : 0;
        h->identical = cand[i].identical;
    }
    return 0;
}

int qd_store_search_text(qd_store *s, const float *q, size_t nq, const qd_store_query *o,
                         qd_store_hits *out)
{
    st_enter();
    for (size_t i = 0; i < nq; i++)
        out[i] = (qd_store_hits){0, NULL};
    size_t k = o->k;
    if (k == 0 || k > QD_STORE_MAX_K)
        return st_fail(QD_ERR_INVAL, "k = %zu not in 1..%d", k, QD_STORE_MAX_K);
    if (nq == 0)
        return 0;
    if (nq > SIZE_MAX / (2 * (size_t)QD_STORE_MAX_K + 64))
        return st_fail(QD_ERR_RANGE, "%zu queries: too many", nq);
    size_t dim = (size_t)s->dim;
    for (size_t i = 0; i < nq * dim; i++)
        if (!isfinite(q[i]))
            return st_fail(QD_ERR_INVAL, "query %zu: component %zu is not finite", i / dim,
                           i % dim);
    /* How many nearest rows each query ranks. */
    size_t want = k;
    if (o->texts && o->rank == QD_RANK_FUSED) {
        /* s->model under the read lock: a switch of model replaces it under the write
         * lock (a caller that pinned the model sees the same one throughout). */
        pthread_rwlock_rdlock(&s->rw);
        size_t c = o->candidates ? o->candidates : qd_model_get_scoring(s->model)->candidates;
        pthread_rwlock_unlock(&s->rw);
        if (c > QD_STORE_MAX_K)
            c = QD_STORE_MAX_K;
        if (c > want)
            want = c;
    }

    /* How many of the nearest rows by FAISS's scores are re-scored exactly from SQLite
     * (compressed kinds), to keep the best `want` of them. */
    size_t rescore = __atomic_load_n(&s->rescore, __ATOMIC_RELAXED); /* (set_param) */
    size_t depth = rescore > want ? rescore : want;

    float *scores = NULL, *cos = NULL;
    int64_t *ids = NULL;
    const st_row **rows = NULL;
    qd_rank_cand *cand = NULL;
    qd_lex_doc *docs = NULL, *cdocs = NULL;
    uint64_t *keys = NULL;
    qd_tokbuf tb;
    qd_tokbuf_init(&tb);
    int rc = 0;
    rows = qd_mallocarray(depth, sizeof *rows);
    cos = qd_mallocarray(depth, sizeof *cos);
    cand = qd_mallocarray(want, sizeof *cand);
    if (o->texts) {
        docs = qd_calloc(nq, sizeof *docs);
        keys = qd_calloc(nq, sizeof *keys);
        cdocs = qd_calloc(want, sizeof *cdocs);
    }
    if (!rows || !cos || !cand || (o->texts && (!docs || !keys || !cdocs))) {
        rc = st_fail(QD_ERR_NOMEM, "out of memory for %zu candidates", want);
        goto free;
    }
    if (o->texts) {
        /* The queries' terms and text keys, before taking the lock. */
        for (size_t i = 0; i < nq && !rc; i++) {
            rc = st_text_key_tb(&tb, o->texts[i], o->lens[i], &keys[i]);
            if (!rc)
                rc = qd_lex_doc_make(&tb, o->texts[i], o->lens[i], &docs[i]);
        }
        if (rc) {
            rc = st_fail(rc, "query terms: %s", qd_strerror(rc));
            goto free;
        }
    }
    pthread_rwlock_rdlock(&s->rw);
    size_t ntotal = qd_ann_count(s->ann);
    if (ntotal == 0 || s->live == 0)
        goto out;
    /* Over-fetch: vectors in FAISS that are not live rows (tombstones of kinds that
     * cannot remove) and the excluded id may take places in the list. Bounded, and
     * topped up below for a query that still comes up short. */
    size_t extra = ntotal > s->live ? (size_t)(ntotal - s->live) : 0;
    if (extra > 4 * k + 16)
        extra = 4 * k + 16;
    size_t fetch = depth + extra + (o->exclude ? 1 : 0);
    if (fetch > ntotal)
        fetch = ntotal;
    scores = qd_mallocarray(nq * fetch, sizeof *scores);
    ids = qd_mallocarray(nq * fetch, sizeof *ids);
    if (!scores || !ids) {
        rc = st_fail(QD_ERR_NOMEM, "out of memory for %zu x %zu results", nq, fetch);
        goto out;
    }
    rc = qd_ann_search(s->ann, q, nq, fetch, scores, ids);
    if (rc) {
        rc = st_fail(rc, "%s", qd_ann_errmsg(s->ann));
        goto out;
    }
    /* FAISS's scores of a compressed kind are approximate: min_score applies to the
     * exact ones after re-scoring. */
    float gather_min = rescore ? -INFINITY : o->min_score;
    for (size_t i = 0; i < nq && !rc; i++) {
        int more;
        const char *ex = o->exclude ? o->exclude[i] : NULL;
        size_t n = gather(s, scores + i * fetch, ids + i * fetch, fetch, depth, k,
                          gather_min, ex, rows, cos, &more);
        /* Ask again for this query alone, four times deeper each time. */
        for (size_t f = fetch; !rc && more && f < ntotal;) {
            f = f > ntotal / 4 ? ntotal : f * 4;
            float *sc = qd_mallocarray(f, sizeof *sc);
            int64_t *id = qd_mallocarray(f, sizeof *id);
            if (!sc || !id)
                rc = st_fail(QD_ERR_NOMEM, "out of memory for %zu results", f);
            else if ((rc = qd_ann_search(s->ann, q + i * dim, 1, f, sc, id)) != 0)
                rc = st_fail(rc, "%s", qd_ann_errmsg(s->ann));
            else
                n = gather(s, sc, id, f, depth, k, gather_min, ex, rows, cos, &more);
            qd_free(sc);
            qd_free(id);
        }
        if (!rc && rescore)
            rc = st_rescore(s, q + i * dim, rows, cos, n, want, o->min_score, &n);
        if (!rc)
            rc = make_hits(s, o, docs ? &docs[i] : NULL, keys ? keys[i] : 0, rows, cos, n,
                           cand, &tb, cdocs, &out[i]);
        if (cdocs)
            for (size_t j = 0; j < want; j++)
                st_row_doc_done(s, &cdocs[j]);
    }
out:
    pthread_rwlock_unlock(&s->rw);
free:
    qd_free(scores);
    qd_free(ids);
    qd_free(rows);
    qd_free(cos);
    qd_free(cand);
    qd_free(cdocs);
    qd_tokbuf_free(&tb);
    if (docs)
        for (size_t i = 0; i < nq; i++)
            qd_lex_doc_free(&docs[i]);
    qd_free(docs);
    qd_free(keys);
    if (rc)
        for (size_t i = 0; i < nq; i++)
            qd_store_hits_free(&out[i]);
    return rc;
}

int qd_store_search(qd_store *s, const float *q, size_t nq, size_t k, float min_score,
                    const char *const *exclude, qd_store_hits *out)
{
    qd_store_query o = {.k = k, .min_score = min_score, .rank = QD_RANK_COSINE,
                        .exclude = exclude};
    return qd_store_search_text(s, q, nq, &o, out);
}

size_t qd_store_search_batch(qd_store *s, size_t dflt)
{
    if (pthread_rwlock_tryrdlock(&s->rw) != 0)
        return dflt;
    size_t n = s->ann ? qd_ann_search_batch(s->ann) : 1;
    pthread_rwlock_unlock(&s->rw);
    return n;
}

int qd_store_get_info(qd_store *s, qd_store_info *info)
{
    st_enter();
    memset(info, 0, sizeof *info);
    char wal[ST_PATH_MAX];
    pthread_rwlock_rdlock(&s->rw);
    info->live = s->live;
    info->tombstones = s->tombs;
    info->faiss_count = qd_ann_count(s->ann);
    info->seq = s->seq;
    info->checkpoint_seq = s->faiss_seq;
    st_format(info->faiss_note, sizeof info->faiss_note, "%s", s->faiss_note);
    info->checkpoint_failing = s->ckpt_failing;
    info->checkpoint_failures = s->ckpt_failures;
    st_format(info->checkpoint_error, sizeof info->checkpoint_error, "%s", s->ckpt_error);
    info->unsaved_changes = s->seq - s->faiss_seq;
    info->unsaved_bytes = info->unsaved_changes * ((uint64_t)s->dim * sizeof(float) + 8);
    /* The model's names change with a switch of model, under the write lock. */
    st_format(info->model_fingerprint, sizeof info->model_fingerprint, "%s", s->fingerprint);
    st_format(info->model_path, sizeof info->model_path, "%s", s->model_path);
    pthread_rwlock_unlock(&s->rw);
    info->dim = s->dim;
    st_format(info->index_spec, sizeof info->index_spec, "%s", s->spec);
    info->db_bytes = st_file_size(s->db_path);
    if (st_path_with(wal, sizeof wal, s->db_path, "-wal") == 0)
        info->db_bytes += st_file_size(wal);
    info->faiss_bytes = st_file_size(s->faiss_path);
    info->can_remove = s->can_remove;
    info->readonly = s->readonly;
    return 0;
}
