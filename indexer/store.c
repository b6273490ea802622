/*
 * store.c - the question store: SQLite holds every question (text, vector, times), a
 * FAISS index (qd_ann) holds the vectors for search, and an in-memory row table maps
 * FAISS ids back to questions. See include/qdup/store.h for the contract.
 *
 * How a change is made (add, remove, compact), always under the writer mutex `wmu`:
 *   1. work out what will happen (classification, encoding) reading only memory,
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

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <sqlite3.h>

#include "qdup/ann.h"
#include "qdup/common.h"
#include "qdup/fileio.h"
#include "qdup/tok.h"
#include "store_impl.h"

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

/* --- errors ------------------------------------------------------------------------- */

/* Detail of the last failing store call in this thread: per thread, because searches
 * run concurrently on one store (see ann.c for the same choice). */
static _Thread_local char st_err[QD_ERRMSG_MAX];

static int st_fail(int rc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int st_fail(int rc, const char *fmt, ...)
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

/* Maps an SQLite result code to a QD_ERR_* (a full disk is an I/O error to the user,
 * a locked database is busy, a file that is not a database is a format error). */
static int st_db_code(int src)
{
    switch (src & 0xff) {
    case SQLITE_NOMEM: return QD_ERR_NOMEM;
    case SQLITE_FULL:
    case SQLITE_IOERR:
    case SQLITE_CANTOPEN:
    case SQLITE_READONLY: return QD_ERR_IO;
    case SQLITE_BUSY:
    case SQLITE_LOCKED: return QD_ERR_BUSY;
    case SQLITE_NOTADB:
    case SQLITE_CORRUPT: return QD_ERR_FORMAT;
    default: return QD_ERR_DB;
    }
}

/* Records an SQLite failure: "<path>: <what>: <sqlite's message>". */
static int st_dbfail(sqlite3 *db, const char *path, const char *what)
{
    int src = db ? sqlite3_extended_errcode(db) : SQLITE_ERROR;
    return st_fail(st_db_code(src), "%s: %s: %s", path, what,
                   db ? sqlite3_errmsg(db) : "no database");
}

/* snprintf that may truncate on purpose (messages and notes are bounded); a
 * function of our own, so that GCC does not warn about the intended truncation. */
static void st_format(char *dst, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void st_format(char *dst, size_t len, const char *fmt, ...)
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

static void st_hook(const char *point)
{
    if (st_test_hook)
        st_test_hook(point);
}

/* --- small helpers ------------------------------------------------------------------ */

static double st_wall_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Vectors are stored little-endian (schema.sql); a no-op copy on x86 and ARM. */
static void vec_to_le(const float *v, size_t n, unsigned char *out)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    memcpy(out, v, n * sizeof(float));
#else
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &v[i], 4);
        for (int b = 0; b < 4; b++)
            out[4 * i + b] = (unsigned char)(u >> (8 * b));
    }
#endif
}

static void vec_from_le(const void *blob, size_t n, float *out)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    memcpy(out, blob, n * sizeof(float));
#else
    const unsigned char *p = blob;
    for (size_t i = 0; i < n; i++) {
        uint32_t u = 0;
        for (int b = 3; b >= 0; b--)
            u = u << 8 | p[4 * i + b];
        memcpy(&out[i], &u, 4);
    }
#endif
}

/* dst = base + suffix, or QD_ERR_RANGE. */
static int path_with(char *dst, size_t len, const char *base, const char *suffix)
{
    int n = snprintf(dst, len, "%s%s", base, suffix);
    return (n < 0 || (size_t)n >= len) ? QD_ERR_RANGE : 0;
}

static int file_exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

static uint64_t file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (uint64_t)st.st_size : 0;
}

/* CRC-32 and size of a whole file. QD_ERR_NOTFOUND if it does not exist. */
static int file_crc(const char *path, uint32_t *crc, uint64_t *size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        return st_fail(e == ENOENT ? QD_ERR_NOTFOUND : QD_ERR_IO, "%s: %s", path,
                       strerror(e));
    }
    unsigned char buf[65536];
    uint32_t c = 0;
    uint64_t n = 0;
    for (;;) {
        ssize_t r = read(fd, buf, sizeof buf);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            close(fd);
            return st_fail(QD_ERR_IO, "%s: %s", path, strerror(e));
        }
        if (r == 0)
            break;
        c = qd_crc32(c, buf, (size_t)r);
        n += (uint64_t)r;
    }
    close(fd);
    *crc = c;
    *size = n;
    return 0;
}

/* 1 if s[0..n) is well-formed UTF-8 (no overlongs, surrogates or code points past
 * U+10FFFF); *ctl gets 1 if it holds a C0 control character or DEL, *nul 1 if a NUL. */
static int utf8_ok(const char *s, size_t n, int *ctl, int *nul)
{
    const unsigned char *p = (const unsigned char *)s;
    *ctl = *nul = 0;
    for (size_t i = 0; i < n;) {
        int32_t cp;
        i += qd_utf8_decode(p + i, n - i, &cp);
        if (cp < 0)
            return 0;
        if (cp == 0)
            *nul = 1;
        if (cp < 0x20 || cp == 0x7f)
            *ctl = 1;
    }
    return 1;
}

/* --- the row table -------------------------------------------------------------------- */

/* One question in memory. Allocated once with its strings; never changed by anyone
 * but the writer, and only under the write lock, except `flags`, which only the
 * writer reads or writes. */
typedef struct st_row {
    int64_t row;        /* row id (the FAISS id) */
    uint64_t text_key;  /* qd_store_text_key of the text */
    uint64_t id_hash;   /* hash of ext_id, for the by_ext table */
    double created;     /* unix time */
    double removed;     /* unix time of removal, 0 while live */
    uint32_t id_len;    /* bytes of ext_id */
    uint32_t text_len;  /* bytes of text */
    unsigned flags;     /* ROW_* marks used by the writer within one call */
    char data[];        /* ext_id, NUL, text, NUL */
} st_row;

enum { ROW_REPLACING = 1u, ROW_REMOVING = 2u };

static const char *row_ext(const st_row *r) { return r->data; }
static const char *row_text(const st_row *r) { return r->data + r->id_len + 1; }

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

static uint64_t id_hash(const char *id, size_t len)
{
    return mix64(qd_hash64(QD_HASH64_INIT, id, len));
}

static st_row *row_new(int64_t row, const char *id, size_t id_len, const char *text,
                       size_t text_len, uint64_t key, double created, double removed)
{
    st_row *r = qd_malloc(sizeof *r + id_len + text_len + 2);
    if (!r)
        return NULL;
    r->row = row;
    r->text_key = key;
    r->id_hash = id_hash(id, id_len);
    r->created = created;
    r->removed = removed;
    r->id_len = (uint32_t)id_len;
    r->text_len = (uint32_t)text_len;
    r->flags = 0;
    memcpy(r->data, id, id_len);
    r->data[id_len] = '\0';
    memcpy(r->data + id_len + 1, text, text_len);
    r->data[id_len + 1 + text_len] = '\0';
    return r;
}

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

static uint64_t map_hash_of(enum st_key k, const st_row *r)
{
    switch (k) {
    case KEY_ROW: return mix64((uint64_t)r->row);
    case KEY_EXT: return r->id_hash;
    case KEY_TEXT: return mix64(r->text_key);
    }
    return 0;
}

static st_row *map_get_row(const st_map *m, int64_t row)
{
    if (!m->slot)
        return NULL;
    for (size_t i = mix64((uint64_t)row) & m->mask;; i = (i + 1) & m->mask) {
        st_row *r = m->slot[i];
        if (!r || r->row == row)
            return r;
    }
}

static st_row *map_get_ext(const st_map *m, const char *id, size_t len)
{
    if (!m->slot)
        return NULL;
    uint64_t h = id_hash(id, len);
    for (size_t i = h & m->mask;; i = (i + 1) & m->mask) {
        st_row *r = m->slot[i];
        if (!r || (r->id_hash == h && r->id_len == len && memcmp(r->data, id, len) == 0))
            return r;
    }
}

static st_row *map_get_text(const st_map *m, uint64_t key)
{
    if (!m->slot)
        return NULL;
    for (size_t i = mix64(key) & m->mask;; i = (i + 1) & m->mask) {
        st_row *r = m->slot[i];
        if (!r || r->text_key == key)
            return r;
    }
}

/* Inserts r, which the caller knows is absent; room must have been reserved. */
static void map_put(st_map *m, st_row *r)
{
    QD_ASSERT(m->slot && (m->n + 1) * 2 <= m->mask + 1);
    size_t i = map_hash_of(m->key, r) & m->mask;
    while (m->slot[i])
        i = (i + 1) & m->mask;
    m->slot[i] = r;
    m->n++;
}

/* Removes r (by identity) if present. */
static void map_del(st_map *m, const st_row *r)
{
    if (!m->slot)
        return;
    size_t i = map_hash_of(m->key, r) & m->mask;
    while (m->slot[i] && m->slot[i] != r)
        i = (i + 1) & m->mask;
    if (!m->slot[i])
        return;
    /* Shift back the entries after it whose home slot does not lie in (i, j]. */
    size_t j = i;
    for (;;) {
        j = (j + 1) & m->mask;
        st_row *e = m->slot[j];
        if (!e)
            break;
        size_t home = map_hash_of(m->key, e) & m->mask;
        int between = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (!between) {
            m->slot[i] = e;
            i = j;
        }
    }
    m->slot[i] = NULL;
    m->n--;
}

/* Makes room for `extra` more entries. The bigger table is filled outside the lock
 * (only the writer changes a table, and it holds wmu), and swapped in under `rw`
 * (if not NULL) so that readers never see a half-filled one. */
static int map_reserve(st_map *m, size_t extra, pthread_rwlock_t *rw)
{
    size_t cap = m->slot ? m->mask + 1 : 0;
    if (extra > SIZE_MAX / 4 - m->n)
        return st_fail(QD_ERR_NOMEM, "row table: too many rows");
    size_t need = (m->n + extra) * 2;
    if (need <= cap)
        return 0;
    size_t ncap = 16;
    while (ncap < need)
        ncap *= 2;
    st_row **ns = qd_calloc(ncap, sizeof *ns);
    if (!ns)
        return st_fail(QD_ERR_NOMEM, "row table: out of memory for %zu slots", ncap);
    for (size_t i = 0; i < cap; i++) {
        st_row *r = m->slot[i];
        if (!r)
            continue;
        size_t k = map_hash_of(m->key, r) & (ncap - 1);
        while (ns[k])
            k = (k + 1) & (ncap - 1);
        ns[k] = r;
    }
    st_row **old = m->slot;
    if (rw)
        pthread_rwlock_wrlock(rw);
    m->slot = ns;
    m->mask = ncap - 1;
    if (rw)
        pthread_rwlock_unlock(rw);
    qd_free(old);
    return 0;
}

static void map_free(st_map *m)
{
    qd_free(m->slot);
    m->slot = NULL;
    m->mask = m->n = 0;
}

/* --- the store ---------------------------------------------------------------------- */

typedef void (*st_progress_fn)(const char *phase, size_t done, size_t total, void *arg);

struct qd_store {
    char db_path[ST_PATH_MAX];    /* the database file, as given */
    char faiss_path[ST_PATH_MAX]; /* db_path + ".faiss" */
    sqlite3 *db;                  /* the one connection; used only under wmu */
    int lock_fd;                  /* DB.lock, held while open for writing; -1 read-only */
    int readonly;                 /* opened read-only */
    int threads;                  /* encoding threads for batch adds (0: all cores) */
    qd_model *model;              /* the encoder (read-only once loaded) */
    int dim;                      /* vector dimension (meta, = the model's) */
    int can_remove;               /* the index kind removes vectors (else tombstones) */
    int lossy;                    /* the index kind stores approximate vectors (SQ, PQ) */
    char spec[128];               /* FAISS factory string (meta) */
    char fingerprint[17];         /* model fingerprint (meta) */
    char model_path[ST_PATH_MAX]; /* absolute path of the model in use */
    pthread_mutex_t wmu;          /* serializes writers, verify, export and all of db */
    pthread_rwlock_t rw;          /* searches (read) against applying a change (write) */
    qd_ann *ann;                  /* the index (rw) */
    st_map by_row;                /* every row in SQLite, live or tombstone (rw) */
    st_map by_ext;                /* live rows by external id (rw) */
    st_map by_text;               /* live rows by text key (rw) */
    uint64_t live;                /* live rows (rw) */
    uint64_t tombs;               /* tombstones: removed rows still in SQLite (rw) */
    uint64_t seq;                 /* last change number (written under wmu and rw) */
    uint64_t faiss_seq;           /* change the FAISS file on disk reflects (wmu + rw) */
    int vouched;                  /* meta vouches for the FAISS file on disk (wmu) */
    int broken;                   /* a change reached SQLite but not memory (wmu) */
    char broken_msg[QD_ERRMSG_MAX]; /* why (wmu) */
    char faiss_note[256];         /* why the FAISS file was not used at open, or ""
                                     once a checkpoint replaced it (wmu + rw) */
    st_progress_fn progress;      /* progress callback, or NULL */
    void *progress_arg;           /* its argument */
};

const qd_model *qd_store_model(const qd_store *s)
{
    return s->model;
}

void qd_store_set_progress(qd_store *s, st_progress_fn fn, void *arg)
{
    s->progress = fn;
    s->progress_arg = arg;
}

static void st_progress(qd_store *s, const char *phase, size_t done, size_t total)
{
    if (s->progress)
        s->progress(phase, done, total, s->progress_arg);
}

/* --- SQLite helpers ------------------------------------------------------------------- */

/* Runs every statement of a constant SQL text (no parameters) in turn. */
static int db_exec(qd_store *s, const char *sql)
{
    const char *p = sql;
    while (p && *p) {
        sqlite3_stmt *st = NULL;
        const char *tail = NULL;
        if (sqlite3_prepare_v2(s->db, p, -1, &st, &tail) != SQLITE_OK)
            return st_dbfail(s->db, s->db_path, "preparing a statement");
        if (!st) /* only white space or comments left */
            break;
        int src;
        while ((src = sqlite3_step(st)) == SQLITE_ROW)
            ;
        if (src != SQLITE_DONE) {
            int rc = st_dbfail(s->db, s->db_path, sqlite3_sql(st));
            sqlite3_finalize(st);
            return rc;
        }
        sqlite3_finalize(st);
        p = tail;
    }
    return 0;
}

static int db_prepare(qd_store *s, const char *sql, sqlite3_stmt **st)
{
    if (sqlite3_prepare_v2(s->db, sql, -1, st, NULL) != SQLITE_OK)
        return st_dbfail(s->db, s->db_path, sql);
    return 0;
}

/* Steps a statement that returns no row (or whose rows are ignored) to its end and
 * resets it for the next use. */
static int db_run(qd_store *s, sqlite3_stmt *st)
{
    int src;
    while ((src = sqlite3_step(st)) == SQLITE_ROW)
        ;
    int rc = src == SQLITE_DONE ? 0 : st_dbfail(s->db, s->db_path, sqlite3_sql(st));
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc;
}

static void db_rollback(qd_store *s)
{
    if (!sqlite3_get_autocommit(s->db))
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL); /* constant, no parameters */
}

/* Reads meta[key]: *type gets the SQLite type (SQLITE_NULL also when absent). */
static int meta_get(qd_store *s, const char *key, int *type, int64_t *ival, char *text,
                    size_t textlen)
{
    sqlite3_stmt *st = NULL;
    int rc = db_prepare(s, "SELECT value FROM meta WHERE key = ?1", &st);
    if (rc)
        return rc;
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    *type = SQLITE_NULL;
    int src = sqlite3_step(st);
    if (src == SQLITE_ROW) {
        *type = sqlite3_column_type(st, 0);
        if (ival)
            *ival = sqlite3_column_int64(st, 0);
        if (text && textlen) {
            const unsigned char *t = sqlite3_column_text(st, 0);
            snprintf(text, textlen, "%s", t ? (const char *)t : "");
        }
    } else if (src != SQLITE_DONE) {
        rc = st_dbfail(s->db, s->db_path, "reading meta");
    }
    sqlite3_finalize(st);
    return rc;
}

/* Reads an integer meta value that must be there. */
static int meta_int(qd_store *s, const char *key, int64_t *v)
{
    int type;
    int rc = meta_get(s, key, &type, v, NULL, 0);
    if (rc)
        return rc;
    if (type != SQLITE_INTEGER)
        return st_fail(QD_ERR_FORMAT, "%s: meta value \"%s\" is missing or not an integer",
                       s->db_path, key);
    return 0;
}

static int meta_text(qd_store *s, const char *key, char *buf, size_t len)
{
    int type;
    int rc = meta_get(s, key, &type, NULL, buf, len);
    if (rc)
        return rc;
    if (type != SQLITE_TEXT)
        return st_fail(QD_ERR_FORMAT, "%s: meta value \"%s\" is missing or not text",
                       s->db_path, key);
    return 0;
}

/* meta[key] = value; value kinds: 'i' integer, 't' text, 'r' real, 'n' NULL. */
static int meta_set(qd_store *s, const char *key, char kind, int64_t ival, const char *text,
                    double rval)
{
    sqlite3_stmt *st = NULL;
    int rc = db_prepare(s, "INSERT INTO meta (key, value) VALUES (?1, ?2) "
                           "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        &st);
    if (rc)
        return rc;
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    switch (kind) {
    case 'i': sqlite3_bind_int64(st, 2, ival); break;
    case 't': sqlite3_bind_text(st, 2, text, -1, SQLITE_STATIC); break;
    case 'r': sqlite3_bind_double(st, 2, rval); break;
    default: sqlite3_bind_null(st, 2); break;
    }
    rc = db_run(s, st);
    sqlite3_finalize(st);
    return rc;
}

/* Per-connection settings. WAL and synchronous=FULL give durable commits (see the
 * top of the file); busy_timeout lets a reader in another process wait out a
 * checkpoint instead of failing. */
static int db_configure(qd_store *s)
{
    sqlite3_busy_timeout(s->db, ST_BUSY_MS);
    sqlite3_extended_result_codes(s->db, 1);
    if (s->readonly)
        return db_exec(s, "PRAGMA query_only = 1");
    int rc = db_exec(s, "PRAGMA journal_mode = WAL");
    if (!rc)
        rc = db_exec(s, "PRAGMA synchronous = FULL");
    if (!rc)
        rc = db_exec(s, "PRAGMA cache_size = -32768"); /* 32 MiB: big batch inserts */
    return rc;
}

/* Checks that an open database is a qdup store: QD_ERR_FORMAT naming the file if not. */
static int db_check_ours(sqlite3 *db, const char *path)
{
    sqlite3_stmt *st = NULL;
    int rc = 0, src = sqlite3_prepare_v2(db, "PRAGMA application_id", -1, &st, NULL);
    int64_t app = -1;
    if (src == SQLITE_OK) {
        src = sqlite3_step(st);
        if (src == SQLITE_ROW)
            app = sqlite3_column_int64(st, 0);
    }
    if (src != SQLITE_ROW) {
        if ((sqlite3_extended_errcode(db) & 0xff) == SQLITE_NOTADB)
            rc = st_fail(QD_ERR_FORMAT, "%s: not a qdup index (not an SQLite database)", path);
        else
            rc = st_dbfail(db, path, "reading the header");
    } else if (app != ST_APP_ID) {
        rc = st_fail(QD_ERR_FORMAT,
                     "%s: not a qdup index (an SQLite database with application id %" PRId64
                     ")",
                     path, app);
    }
    sqlite3_finalize(st);
    return rc;
}

/* --- text keys ---------------------------------------------------------------------- */

/* The hash of a text's token sequence (0: no tokens). Each token is hashed with its
 * length in front, so "ab c" and "a bc" differ. */
static int text_key_tb(qd_tokbuf *tb, const char *text, size_t len, uint64_t *key)
{
    int rc = qd_tok_split(tb, text, len, 0);
    if (rc)
        return rc;
    if (tb->n == 0) {
        *key = 0;
        return 0;
    }
    uint64_t h = QD_HASH64_INIT;
    for (size_t i = 0; i < tb->n; i++) {
        unsigned char l[4] = {(unsigned char)tb->len[i], (unsigned char)(tb->len[i] >> 8),
                              (unsigned char)(tb->len[i] >> 16),
                              (unsigned char)(tb->len[i] >> 24)};
        h = qd_hash64(h, l, sizeof l);
        h = qd_hash64(h, tb->text + tb->start[i], tb->len[i]);
    }
    h = mix64(h);
    *key = h ? h : 1;
    return 0;
}

uint64_t qd_store_text_key(const qd_store *s, const char *text, size_t len)
{
    (void)s;
    qd_tokbuf tb;
    qd_tokbuf_init(&tb);
    uint64_t key = 0;
    if (text_key_tb(&tb, text, len, &key) != 0)
        key = 0;
    qd_tokbuf_free(&tb);
    return key;
}

/* Text keys of n items on several threads (tokenizing a million questions takes a
 * few seconds on one core). */
typedef struct key_job {
    const qd_store_item *items; /* (n) */
    uint64_t *keys;             /* (n) output */
    size_t lo, hi;              /* this worker's range */
    int rc;                     /* its result */
} key_job;

static void *key_worker(void *arg)
{
    key_job *j = arg;
    qd_tokbuf tb;
    qd_tokbuf_init(&tb);
    for (size_t i = j->lo; i < j->hi && !j->rc; i++)
        j->rc = text_key_tb(&tb, j->items[i].text, j->items[i].text_len, &j->keys[i]);
    qd_tokbuf_free(&tb);
    return NULL;
}

static int text_keys(const qd_store_item *items, size_t n, int threads, uint64_t *keys)
{
    if (threads <= 0) {
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        threads = c > 0 ? (int)c : 1;
    }
    if (threads > 16)
        threads = 16;
    if (n < 4096)
        threads = 1;
    key_job jobs[16];
    pthread_t tid[16];
    int started[16] = {0};
    for (int t = 0; t < threads; t++) {
        jobs[t] = (key_job){items, keys, n * (size_t)t / (size_t)threads,
                            n * (size_t)(t + 1) / (size_t)threads, 0};
        if (t > 0)
            started[t] = pthread_create(&tid[t], NULL, key_worker, &jobs[t]) == 0;
    }
    key_worker(&jobs[0]);
    for (int t = 1; t < threads; t++) {
        if (started[t])
            pthread_join(tid[t], NULL);
        else
            key_worker(&jobs[t]); /* could not start a thread: do its share here */
    }
    for (int t = 0; t < threads; t++)
        if (jobs[t].rc)
            return st_fail(jobs[t].rc, "tokenizing: %s", qd_strerror(jobs[t].rc));
    return 0;
}

/* --- item checks -------------------------------------------------------------------- */

int qd_store_check_item(const qd_store_item *it, char *err, size_t errlen)
{
    int ctl, nul;
    if (!it->ext_id || it->ext_id_len == 0)
        return qd_errf(err, errlen, QD_ERR_INVAL, "empty id");
    if (it->ext_id_len > QD_STORE_MAX_ID)
        return qd_errf(err, errlen, QD_ERR_INVAL, "id of %zu bytes, over the limit of %d",
                       it->ext_id_len, QD_STORE_MAX_ID);
    if (!utf8_ok(it->ext_id, it->ext_id_len, &ctl, &nul))
        return qd_errf(err, errlen, QD_ERR_INVAL, "id is not valid UTF-8");
    if (ctl)
        return qd_errf(err, errlen, QD_ERR_INVAL, "id holds a control character");
    if (!it->text || it->text_len == 0)
        return qd_errf(err, errlen, QD_ERR_INVAL, "empty text");
    if (it->text_len > QD_STORE_MAX_TEXT)
        return qd_errf(err, errlen, QD_ERR_INVAL, "text of %zu bytes, over the limit of %d",
                       it->text_len, QD_STORE_MAX_TEXT);
    if (!utf8_ok(it->text, it->text_len, &ctl, &nul))
        return qd_errf(err, errlen, QD_ERR_INVAL, "text is not valid UTF-8");
    if (nul)
        return qd_errf(err, errlen, QD_ERR_INVAL, "text holds a NUL byte");
    return 0;
}

/* --- FAISS: building, replaying, checkpoints -------------------------------------------- */

/* 1 if the factory string names a kind that stores vectors exactly (Flat, HNSW over
 * flat storage), so that verify can insist on equal vectors. */
static int spec_is_exact(const char *spec)
{
    if (strncmp(spec, "IDMap2,", 7) == 0)
        spec += 7;
    else if (strncmp(spec, "IDMap,", 6) == 0)
        spec += 6;
    if (strcmp(spec, "Flat") == 0)
        return 1;
    if (strncmp(spec, "HNSW", 4) == 0) {
        const char *p = spec + 4;
        while (*p >= '0' && *p <= '9')
            p++;
        return *p == '\0' || strcmp(p, ",Flat") == 0;
    }
    return 0;
}

/* Adds n vectors to a, training it on them first if it needs training. */
static int ann_add_trained(qd_ann *a, const float *x, const int64_t *ids, size_t n)
{
    if (n == 0)
        return 0;
    if (qd_ann_needs_training(a)) {
        int rc = qd_ann_train(a, x, n < ST_MAX_TRAIN ? n : ST_MAX_TRAIN);
        if (rc)
            return st_fail(rc, "training the index: %s", qd_ann_errmsg(a));
    }
    int rc = qd_ann_add(a, x, ids, n);
    if (rc)
        return st_fail(rc, "adding %zu vectors to the index: %s", n, qd_ann_errmsg(a));
    return 0;
}

/* Reads the (row, vec) pairs a prepared statement yields and adds them to a in chunks.
 * Checks each blob's size. *added (may be NULL) counts them. */
static int add_from_stmt(qd_store *s, qd_ann *a, sqlite3_stmt *st, size_t total,
                         size_t *added)
{
    size_t dim = (size_t)s->dim, n = 0, done = 0;
    float *x = qd_mallocarray((size_t)ST_CHUNK * dim, sizeof *x);
    int64_t *ids = qd_mallocarray(ST_CHUNK, sizeof *ids);
    int rc = 0, src;
    if (!x || !ids) {
        rc = st_fail(QD_ERR_NOMEM, "out of memory rebuilding the index");
        goto out;
    }
    while ((src = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t row = sqlite3_column_int64(st, 0);
        const void *blob = sqlite3_column_blob(st, 1);
        if ((size_t)sqlite3_column_bytes(st, 1) != dim * sizeof(float) || !blob) {
            rc = st_fail(QD_ERR_FORMAT, "%s: row %" PRId64 ": stored vector has %d bytes, "
                         "expected %zu", s->db_path, row, sqlite3_column_bytes(st, 1),
                         dim * sizeof(float));
            goto out;
        }
        vec_from_le(blob, dim, x + n * dim);
        ids[n++] = row;
        if (n == ST_CHUNK) {
            if ((rc = ann_add_trained(a, x, ids, n)) != 0)
                goto out;
            done += n;
            n = 0;
            st_progress(s, "rebuild", done, total);
        }
    }
    if (src != SQLITE_DONE) {
        rc = st_dbfail(s->db, s->db_path, "reading stored vectors");
        goto out;
    }
    if ((rc = ann_add_trained(a, x, ids, n)) != 0)
        goto out;
    done += n;
    if (total)
        st_progress(s, "rebuild", done, total);
out:
    if (added)
        *added = done;
    qd_free(x);
    qd_free(ids);
    return rc;
}

/* Trains a fresh index that needs it on up to ST_MAX_TRAIN live vectors, taken evenly
 * over the rows (the first rows alone could all be from one corner of the data). */
static int train_from_db(qd_store *s, qd_ann *a)
{
    if (!qd_ann_needs_training(a) || s->live == 0)
        return 0;
    size_t dim = (size_t)s->dim;
    uint64_t stride = s->live / ST_MAX_TRAIN + 1;
    size_t cap = (size_t)(s->live / stride + 1);
    float *x = qd_mallocarray(cap * dim, sizeof *x);
    if (!x)
        return st_fail(QD_ERR_NOMEM, "out of memory for %zu training vectors", cap);
    sqlite3_stmt *st = NULL;
    int rc = db_prepare(s, "SELECT vec FROM questions WHERE removed IS NULL ORDER BY row", &st);
    size_t n = 0;
    uint64_t i = 0;
    int src = SQLITE_DONE;
    while (!rc && (src = sqlite3_step(st)) == SQLITE_ROW) {
        if (i++ % stride != 0 || n == cap)
            continue;
        if ((size_t)sqlite3_column_bytes(st, 0) != dim * sizeof(float))
            continue; /* reported by the add pass */
        vec_from_le(sqlite3_column_blob(st, 0), dim, x + n * dim);
        n++;
    }
    if (!rc && src != SQLITE_DONE)
        rc = st_dbfail(s->db, s->db_path, "reading training vectors");
    sqlite3_finalize(st);
    if (!rc && n > 0) {
        rc = qd_ann_train(a, x, n);
        if (rc)
            rc = st_fail(rc, "training the index on %zu vectors: %s", n, qd_ann_errmsg(a));
    }
    qd_free(x);
    return rc;
}

/* A new index of the store's kind holding every live row's stored vector. */
static int build_index(qd_store *s, qd_ann **out)
{
    char err[QD_ERRMSG_MAX];
    qd_ann *a = NULL;
    *out = NULL;
    int rc = qd_ann_new(s->dim, s->spec, &a, err, sizeof err);
    if (rc)
        return st_fail(rc, "%s: %s", s->db_path, err);
    rc = train_from_db(s, a);
    if (!rc) {
        sqlite3_stmt *st = NULL;
        rc = db_prepare(s, "SELECT row, vec FROM questions WHERE removed IS NULL ORDER BY row",
                        &st);
        if (!rc)
            rc = add_from_stmt(s, a, st, (size_t)s->live, NULL);
        sqlite3_finalize(st);
    }
    if (rc) {
        qd_ann_free(a);
        return rc;
    }
    *out = a;
    return 0;
}

/* Applies to a loaded index every change after change number `since`: rows added
 * since (and still live) are added, rows removed since that the file holds are
 * removed (or stay as tombstones for kinds that cannot remove). */
static int replay(qd_store *s, qd_ann *a, uint64_t since)
{
    sqlite3_stmt *st = NULL;
    int rc = db_prepare(s, "SELECT row, vec FROM questions "
                           "WHERE seq > ?1 AND removed IS NULL ORDER BY row",
                        &st);
    if (rc)
        return rc;
    sqlite3_bind_int64(st, 1, (int64_t)since);
    rc = add_from_stmt(s, a, st, 0, NULL);
    sqlite3_finalize(st);
    if (rc || !qd_ann_can_remove(a))
        return rc;
    rc = db_prepare(s, "SELECT row FROM questions WHERE removed_seq > ?1 AND seq <= ?1", &st);
    if (rc)
        return rc;
    sqlite3_bind_int64(st, 1, (int64_t)since);
    int64_t *ids = NULL;
    size_t n = 0, cap = 0;
    int src;
    while ((src = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 256;
            int64_t *ni = qd_reallocarray(ids, nc, sizeof *ni);
            if (!ni) {
                rc = st_fail(QD_ERR_NOMEM, "out of memory replaying removals");
                break;
            }
            ids = ni;
            cap = nc;
        }
        ids[n++] = sqlite3_column_int64(st, 0);
    }
    if (!rc && src != SQLITE_DONE)
        rc = st_dbfail(s->db, s->db_path, "reading removals");
    sqlite3_finalize(st);
    if (!rc && n > 0) {
        rc = qd_ann_remove(a, ids, n, NULL);
        if (rc)
            rc = st_fail(rc, "replaying %zu removals: %s", n, qd_ann_errmsg(a));
    }
    qd_free(ids);
    return rc;
}

/* Loads the FAISS file if meta vouches for it and replays what came after it; else
 * (or if that fails) rebuilds the index from SQLite. Sets s->faiss_note to the reason
 * the file was not used. Fails only if the rebuild fails. */
static int load_index(qd_store *s, int64_t faiss_crc, int crc_null, int64_t faiss_size)
{
    char err[QD_ERRMSG_MAX];
    const char *path = s->faiss_path;
    s->faiss_note[0] = '\0';
    if (crc_null) {
        st_format(s->faiss_note, sizeof s->faiss_note,
                  "%s: the database records no checkpoint of it (a compaction or a crash "
                  "before its first checkpoint): rebuilt from the database", path);
    } else {
        uint32_t crc;
        uint64_t size;
        int rc = file_crc(path, &crc, &size);
        if (rc == QD_ERR_NOTFOUND) {
            st_format(s->faiss_note, sizeof s->faiss_note,
                      "%s is missing: rebuilt from the database", path);
        } else if (rc) {
            st_format(s->faiss_note, sizeof s->faiss_note, "%s: rebuilt from the database",
                      st_err);
        } else if ((int64_t)size != faiss_size || (int64_t)crc != faiss_crc) {
            st_format(s->faiss_note, sizeof s->faiss_note,
                      "%s (%" PRIu64 " bytes, CRC-32 %08" PRIx32 ") is not the checkpoint "
                      "the database records (%" PRId64 " bytes, CRC-32 %08" PRIx32 "): "
                      "changed or damaged since, or a crash before its record; rebuilt "
                      "from the database",
                      path, size, crc, faiss_size, (uint32_t)faiss_crc);
        } else {
            qd_ann *a = NULL;
            rc = qd_ann_load(path, &a, err, sizeof err);
            /* Running out of memory says nothing about the file: fail the open rather
             * than rebuild (which would need more memory still). */
            if (rc == QD_ERR_NOMEM)
                return st_fail(rc, "%s", err);
            if (rc) {
                st_format(s->faiss_note, sizeof s->faiss_note, "%s: rebuilt from the database",
                          err);
            } else if (qd_ann_dim(a) != s->dim) {
                st_format(s->faiss_note, sizeof s->faiss_note,
                          "%s holds vectors of dimension %d, the database %d: rebuilt", path,
                          qd_ann_dim(a), s->dim);
                qd_ann_free(a);
            } else if ((rc = replay(s, a, s->faiss_seq)) != 0) {
                qd_ann_free(a);
                if (rc == QD_ERR_NOMEM || rc == QD_ERR_DB || rc == QD_ERR_IO ||
                    rc == QD_ERR_BUSY)
                    return rc; /* the database's problem, not the file's */
                st_format(s->faiss_note, sizeof s->faiss_note, "%s: replaying onto %s: %s",
                          s->db_path, path, st_err);
            } else {
                s->ann = a;
                s->vouched = 1;
                return 0;
            }
        }
    }
    s->vouched = 0;
    return build_index(s, &s->ann);
}

/* Writes the FAISS file and records it in meta. Caller holds wmu. */
static int checkpoint_locked(qd_store *s)
{
    char err[QD_ERRMSG_MAX];
    if (s->vouched && s->faiss_seq == s->seq)
        return 0;
    /* Saving only reads the index, so searches go on meanwhile. */
    pthread_rwlock_rdlock(&s->rw);
    int rc = qd_ann_save(s->ann, s->faiss_path, err, sizeof err);
    pthread_rwlock_unlock(&s->rw);
    if (rc)
        return st_fail(rc, "writing the index: %s", err);
    /* From here until meta records the new file, meta does not vouch for what is on
     * disk: a crash now makes the next open rebuild from SQLite. */
    s->vouched = 0;
    st_hook("checkpoint:faiss-written");
    uint32_t crc;
    uint64_t size;
    rc = file_crc(s->faiss_path, &crc, &size);
    if (rc)
        return rc;
    if (sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        return st_dbfail(s->db, s->db_path, "starting a transaction");
    rc = meta_set(s, "faiss_seq", 'i', (int64_t)s->seq, NULL, 0);
    if (!rc)
        rc = meta_set(s, "faiss_crc", 'i', (int64_t)crc, NULL, 0);
    if (!rc)
        rc = meta_set(s, "faiss_size", 'i', (int64_t)size, NULL, 0);
    if (!rc && sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        rc = st_dbfail(s->db, s->db_path, "recording the checkpoint");
    if (rc) {
        db_rollback(s);
        return rc;
    }
    s->vouched = 1;
    /* Under the write lock because qd_store_get_info reads these under the read lock. */
    pthread_rwlock_wrlock(&s->rw);
    s->faiss_seq = s->seq;
    s->faiss_note[0] = '\0'; /* whatever was wrong with the file at open is repaired */
    pthread_rwlock_unlock(&s->rw);
    return 0;
}

int qd_store_checkpoint(qd_store *s)
{
    if (s->readonly)
        return st_fail(QD_ERR_FORBIDDEN, "%s: opened read-only", s->db_path);
    pthread_mutex_lock(&s->wmu);
    int rc = s->broken ? st_fail(QD_ERR_INDEX, "%s", s->broken_msg) : checkpoint_locked(s);
    pthread_mutex_unlock(&s->wmu);
    return rc;
}

/* --- files and locks ------------------------------------------------------------------ */

/* Deletes "<db>.faiss.tmp.P.N" files beside db_path: checkpoints of a process killed
 * before their rename (qd_file_write_atomic's temporary names). Without this a daemon
 * killed during checkpoints leaves one FAISS-sized file per kill. Called only with the
 * writer lock held, so no live process is still writing one. */
static void sweep_faiss_tmp(const char *db_path)
{
    char dir[ST_PATH_MAX], prefix[ST_PATH_MAX], path[2 * ST_PATH_MAX];
    const char *slash = strrchr(db_path, '/');
    const char *base = slash ? slash + 1 : db_path;
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else
        snprintf(dir, sizeof dir, "%.*s", slash == db_path ? 1 : (int)(slash - db_path),
                 db_path);
    int plen = snprintf(prefix, sizeof prefix, "%s.faiss.tmp.", base);
    if (plen <= 0 || (size_t)plen >= sizeof prefix)
        return;
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        const char *p = e->d_name;
        if (strncmp(p, prefix, (size_t)plen) != 0)
            continue;
        /* Only "P.N" after the prefix, both decimal: nothing else is ours. */
        p += plen;
        size_t a = strspn(p, "0123456789");
        if (a == 0 || p[a] != '.')
            continue;
        size_t b = strspn(p + a + 1, "0123456789");
        if (b == 0 || p[a + 1 + b] != '\0')
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        unlink(path);
    }
    closedir(d);
}

int qd_store_lock(const char *db_path, int *fd, char *err, size_t errlen)
{
    char path[ST_PATH_MAX];
    *fd = -1;
    if (path_with(path, sizeof path, db_path, ".lock"))
        return qd_errf(err, errlen, QD_ERR_RANGE, "%s: path too long", db_path);
    int f = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (f < 0) {
        int e = errno;
        return qd_errf(err, errlen, QD_ERR_IO, "%s: %s", path, strerror(e));
    }
    if (flock(f, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        if (e == EWOULDBLOCK) {
            char buf[32] = "";
            ssize_t r = pread(f, buf, sizeof buf - 1, 0);
            buf[r > 0 ? r : 0] = '\0';
            buf[strcspn(buf, "\n")] = '\0';
            close(f);
            return qd_errf(err, errlen, QD_ERR_BUSY,
                           "%s: open for writing by another process (pid %s)", db_path,
                           buf[0] ? buf : "unknown");
        }
        close(f);
        return qd_errf(err, errlen, QD_ERR_IO, "%s: flock: %s", path, strerror(e));
    }
    /* The pid is only for the message above; failing to write it is harmless. */
    char pid[32];
    int n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(f, 0) == 0 && pwrite(f, pid, (size_t)n, 0) != n) {
        /* ignored */
    }
    *fd = f;
    return 0;
}

void qd_store_unlock(int fd)
{
    if (fd >= 0)
        close(fd); /* releases the flock */
}

void qd_store_discard(const char *db_path)
{
    static const char *const suffix[] = {"", "-wal", "-shm", "-journal", ".faiss", ".lock"};
    char path[ST_PATH_MAX];
    for (size_t i = 0; i < sizeof suffix / sizeof *suffix; i++)
        if (path_with(path, sizeof path, db_path, suffix[i]) == 0)
            unlink(path);
}

/* --- open, create, close ------------------------------------------------------------------- */

static void st_free(qd_store *s)
{
    if (!s)
        return;
    if (s->db)
        sqlite3_close(s->db);
    qd_store_unlock(s->lock_fd);
    qd_ann_free(s->ann);
    if (s->by_row.slot)
        for (size_t i = 0; i <= s->by_row.mask; i++)
            qd_free(s->by_row.slot[i]);
    map_free(&s->by_row);
    map_free(&s->by_ext);
    map_free(&s->by_text);
    qd_model_free(s->model);
    pthread_mutex_destroy(&s->wmu);
    pthread_rwlock_destroy(&s->rw);
    qd_free(s);
}

/* A store object with paths and locks set up and nothing opened. */
static int st_new(const char *db_path, const qd_store_opts *o, qd_store **out, char *err,
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
    pthread_mutex_init(&s->wmu, NULL);
    /* Writers would starve behind a steady stream of searches with glibc's default
     * (readers first). */
    pthread_rwlockattr_t ra;
    pthread_rwlockattr_init(&ra);
    pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&s->rw, &ra);
    pthread_rwlockattr_destroy(&ra);
    if (path_with(s->db_path, sizeof s->db_path, db_path, "") ||
        path_with(s->faiss_path, sizeof s->faiss_path, db_path, ".faiss")) {
        st_free(s);
        return qd_errf(err, errlen, QD_ERR_RANGE, "%s: path too long", db_path);
    }
    *out = s;
    return 0;
}

/* Loads the model at path into s, remembering its absolute path. */
static int st_load_model(qd_store *s, const char *path, char *err, size_t errlen)
{
    char abs[PATH_MAX];
    if (!realpath(path, abs)) {
        int e = errno;
        return qd_errf(err, errlen, e == ENOENT ? QD_ERR_NOTFOUND : QD_ERR_IO, "model %s: %s",
                       path, strerror(e));
    }
    int rc = qd_model_load(abs, &s->model, err, errlen);
    if (rc)
        return rc;
    if (strlen(abs) >= sizeof s->model_path)
        return qd_errf(err, errlen, QD_ERR_RANGE, "model %s: path too long", abs);
    strcpy(s->model_path, abs);
    if (strlen(qd_model_fingerprint(s->model)) != 16)
        return qd_errf(err, errlen, QD_ERR_INVAL, "model %s: no fingerprint", abs);
    return 0;
}

static void st_kind(qd_store *s)
{
    s->can_remove = qd_ann_can_remove(s->ann);
    s->lossy = !spec_is_exact(s->spec);
}

int qd_store_create(const char *db_path, const qd_store_opts *o, qd_store **out, char *err,
                    size_t errlen)
{
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
    rc = qd_store_lock(db_path, &s->lock_fd, err, errlen);
    if (rc)
        goto fail;
    if (file_exists(db_path)) {
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
    rc = db_configure(s);
    if (!rc && sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        rc = st_dbfail(s->db, db_path, "starting a transaction");
    if (!rc)
        rc = db_exec(s, qd_store_schema_sql);
    double now = st_wall_now();
    if (!rc)
        rc = meta_set(s, "dim", 'i', s->dim, NULL, 0);
    if (!rc)
        rc = meta_set(s, "index_spec", 't', 0, s->spec, 0);
    if (!rc)
        rc = meta_set(s, "model_fingerprint", 't', 0, s->fingerprint, 0);
    if (!rc)
        rc = meta_set(s, "model_path", 't', 0, s->model_path, 0);
    if (!rc)
        rc = meta_set(s, "seq", 'i', 0, NULL, 0);
    if (!rc)
        rc = meta_set(s, "faiss_seq", 'i', 0, NULL, 0);
    if (!rc)
        rc = meta_set(s, "faiss_crc", 'n', 0, NULL, 0);
    if (!rc)
        rc = meta_set(s, "faiss_size", 'n', 0, NULL, 0);
    if (!rc)
        rc = meta_set(s, "created", 'r', 0, NULL, now);
    int64_t version = 0;
    if (!rc)
        rc = meta_int(s, "schema_version", &version);
    if (!rc && version != QD_STORE_SCHEMA_VERSION)
        rc = st_fail(QD_ERR_VERSION, "schema.sql is version %" PRId64 ", this program "
                     "expects %d", version, QD_STORE_SCHEMA_VERSION);
    if (!rc && sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        rc = st_dbfail(s->db, db_path, "creating the schema");
    if (!rc)
        rc = map_reserve(&s->by_row, 0, NULL);
    /* An empty store already has its FAISS file, so the pair is complete from the
     * start. */
    if (!rc)
        rc = checkpoint_locked(s);
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
        static const char *const suffix[] = {"", "-wal", "-shm", "-journal", ".faiss"};
        for (size_t i = 0; i < sizeof suffix / sizeof *suffix; i++)
            if (path_with(p, sizeof p, db_path, suffix[i]) == 0)
                unlink(p);
    }
    st_free(s);
    return rc;
}

/* Loads every row of the questions table into the row table. */
static int load_rows(qd_store *s)
{
    sqlite3_stmt *st = NULL;
    int64_t count = 0;
    int rc = db_prepare(s, "SELECT count(*) FROM questions", &st);
    if (rc)
        return rc;
    if (sqlite3_step(st) == SQLITE_ROW)
        count = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    if ((rc = map_reserve(&s->by_row, (size_t)count, NULL)) != 0 ||
        (rc = map_reserve(&s->by_ext, (size_t)count, NULL)) != 0 ||
        (rc = map_reserve(&s->by_text, (size_t)count, NULL)) != 0)
        return rc;
    rc = db_prepare(s, "SELECT row, ext_id, text, text_key, created, removed FROM questions "
                       "ORDER BY row", &st);
    if (rc)
        return rc;
    int src;
    while ((src = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t row = sqlite3_column_int64(st, 0);
        const char *id = (const char *)sqlite3_column_text(st, 1);
        size_t id_len = (size_t)sqlite3_column_bytes(st, 1);
        const char *text = (const char *)sqlite3_column_text(st, 2);
        size_t text_len = (size_t)sqlite3_column_bytes(st, 2);
        if (!id || !text) {
            rc = st_fail(QD_ERR_NOMEM, "%s: out of memory reading row %" PRId64, s->db_path,
                         row);
            break;
        }
        double removed = sqlite3_column_type(st, 5) == SQLITE_NULL
                             ? 0
                             : sqlite3_column_double(st, 5);
        if (sqlite3_column_type(st, 5) != SQLITE_NULL && removed == 0)
            removed = 1e-9; /* a removal time of 0 would read as live */
        st_row *r = row_new(row, id, id_len, text, text_len,
                            (uint64_t)sqlite3_column_int64(st, 3),
                            sqlite3_column_double(st, 4), removed);
        if (!r) {
            rc = st_fail(QD_ERR_NOMEM, "%s: out of memory for the row table", s->db_path);
            break;
        }
        if (s->by_row.n == (size_t)count) {
            /* More rows than counted: the database changed under a read-only open. */
            if ((rc = map_reserve(&s->by_row, 1024, NULL)) != 0 ||
                (rc = map_reserve(&s->by_ext, 1024, NULL)) != 0 ||
                (rc = map_reserve(&s->by_text, 1024, NULL)) != 0) {
                qd_free(r);
                break;
            }
            count += 1024;
        }
        map_put(&s->by_row, r);
        if (removed == 0) {
            map_put(&s->by_ext, r);
            /* Two live rows with one text cannot be added through the store; should
             * someone have inserted them by hand, the first keeps the key. */
            if (!map_get_text(&s->by_text, r->text_key))
                map_put(&s->by_text, r);
            s->live++;
        } else {
            s->tombs++;
        }
    }
    if (!rc && src != SQLITE_DONE)
        rc = st_dbfail(s->db, s->db_path, "reading the questions");
    sqlite3_finalize(st);
    return rc;
}

int qd_store_open(const char *db_path, const qd_store_opts *o, qd_store **out, char *err,
                  size_t errlen)
{
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
        sweep_faiss_tmp(db_path);
    }
    int flags = (s->readonly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE) |
                SQLITE_OPEN_NOMUTEX;
    int src = sqlite3_open_v2(db_path, &s->db, flags, NULL);
    if (src != SQLITE_OK) {
        rc = qd_errf(err, errlen, st_db_code(src), "%s: %s", db_path,
                     s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(src));
        goto fail;
    }
    if ((rc = db_check_ours(s->db, db_path)) != 0 || (rc = db_configure(s)) != 0)
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
    rc = meta_get(s, "schema_version", &type, &version, NULL, 0);
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
        rc = meta_int(s, "dim", &dim);
    if (!rc && (dim < 1 || dim > QD_ANN_MAX_DIM))
        rc = st_fail(QD_ERR_FORMAT, "%s: meta dim %" PRId64 " out of range", db_path, dim);
    if (!rc)
        rc = meta_text(s, "index_spec", s->spec, sizeof s->spec);
    if (!rc)
        rc = meta_text(s, "model_fingerprint", s->fingerprint, sizeof s->fingerprint);
    if (!rc)
        rc = meta_text(s, "model_path", meta_model, sizeof meta_model);
    if (!rc)
        rc = meta_int(s, "seq", &seq);
    if (!rc)
        rc = meta_int(s, "faiss_seq", &faiss_seq);
    int crc_type = SQLITE_NULL;
    if (!rc)
        rc = meta_get(s, "faiss_crc", &crc_type, &faiss_crc, NULL, 0);
    if (!rc && crc_type == SQLITE_INTEGER)
        rc = meta_int(s, "faiss_size", &faiss_size);
    if (!rc && (seq < 0 || faiss_seq < 0 || faiss_seq > seq))
        rc = st_fail(QD_ERR_FORMAT, "%s: meta seq %" PRId64 " / faiss_seq %" PRId64
                     " are not valid", db_path, seq, faiss_seq);
    if (rc)
        goto fail_st;
    s->dim = (int)dim;
    s->seq = (uint64_t)seq;
    s->faiss_seq = (uint64_t)faiss_seq;

    const char *model_path = o && o->model_path ? o->model_path : meta_model;
    rc = st_load_model(s, model_path, err, errlen);
    if (rc) {
        if (!(o && o->model_path)) {
            char inner[QD_ERRMSG_MAX];
            snprintf(inner, sizeof inner, "%s", err);
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
    if ((rc = load_rows(s)) != 0 ||
        (rc = load_index(s, faiss_crc, crc_type != SQLITE_INTEGER, faiss_size)) != 0)
        goto fail_st;
    sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL); /* ends the read transaction */
    st_kind(s);

    if (!s->readonly) {
        rc = 0;
        if (strcmp(s->model_path, meta_model) != 0) {
            /* Remember where the model is now (it was moved, or --model named it). */
            if (sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
                rc = st_dbfail(s->db, db_path, "starting a transaction");
            if (!rc)
                rc = meta_set(s, "model_path", 't', 0, s->model_path, 0);
            if (!rc && sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
                rc = st_dbfail(s->db, db_path, "recording the model path");
            if (rc)
                db_rollback(s);
        }
        if (!rc)
            rc = checkpoint_locked(s);
        if (rc)
            goto fail_st;
    }
    *out = s;
    return 0;

fail_st:
    qd_errf(err, errlen, rc, "%s", st_err);
fail:
    if (s->db)
        db_rollback(s);
    st_free(s);
    return rc;
}

void qd_store_close(qd_store *s)
{
    if (!s)
        return;
    if (!s->readonly && !s->broken) {
        pthread_mutex_lock(&s->wmu);
        checkpoint_locked(s); /* on failure the next open replays from SQLite */
        pthread_mutex_unlock(&s->wmu);
    }
    st_free(s);
}

/* --- adding ------------------------------------------------------------------------- */

/* One item of a batch add as the writer sees it. */
typedef struct add_plan {
    st_row *r;        /* the new row (to be stored), or NULL */
    st_row *old;      /* the live row it replaces, or NULL */
    size_t vec_index; /* its row in the batch's vector array */
} add_plan;

/* Until its INSERT, a new row's id field holds -(item index + 2), so that a
 * duplicate within the batch can name the item it collided with. */
static int64_t batch_mark(size_t i) { return -(int64_t)i - 2; }
static int is_batch_mark(int64_t row) { return row <= -2; }
static size_t batch_item(int64_t row) { return (size_t)(-(row + 2)); }

/* Classifies the items (filling res) and makes the rows to store (plan[i].r, which
 * the caller frees if it does not store them). Live rows to be replaced get
 * ROW_REPLACING, which the caller clears. The batch maps find duplicates within the
 * batch: the first item with an id or a text that is stored claims it. Caller holds
 * wmu. */
static int classify(qd_store *s, const qd_store_item *items, size_t n, int replace,
                    const uint64_t *keys, qd_store_result *res, add_plan *plan,
                    size_t *nstore, size_t *nreplace)
{
    st_map bid = {.key = KEY_EXT}, btext = {.key = KEY_TEXT};
    int rc;
    *nstore = *nreplace = 0;
    if ((rc = map_reserve(&bid, n, NULL)) != 0 || (rc = map_reserve(&btext, n, NULL)) != 0)
        goto out;
    double now = st_wall_now();
    for (size_t i = 0; i < n; i++) {
        const qd_store_item *it = &items[i];
        res[i] = (qd_store_result){QD_STORE_ADDED, -1, -1};
        plan[i] = (add_plan){0};
        if (keys[i] == 0) {
            res[i].status = QD_STORE_EMPTY;
            continue;
        }
        st_row *b = map_get_ext(&bid, it->ext_id, it->ext_id_len);
        if (b) {
            res[i] = (qd_store_result){QD_STORE_DUP_ID, -1, b->row};
            continue;
        }
        st_row *old = map_get_ext(&s->by_ext, it->ext_id, it->ext_id_len);
        if (old && !replace) {
            res[i] = (qd_store_result){QD_STORE_DUP_ID, -1, old->row};
            continue;
        }
        st_row *t = map_get_text(&btext, keys[i]);
        if (t) {
            res[i] = (qd_store_result){QD_STORE_DUP_TEXT, -1, t->row};
            continue;
        }
        /* A live row with this text does not count if this item or an earlier one
         * replaces it. */
        t = map_get_text(&s->by_text, keys[i]);
        if (t && t != old && !(t->flags & ROW_REPLACING)) {
            res[i] = (qd_store_result){QD_STORE_DUP_TEXT, -1, t->row};
            continue;
        }
        st_row *r = row_new(batch_mark(i), it->ext_id, it->ext_id_len, it->text,
                            it->text_len, keys[i], now, 0);
        if (!r) {
            rc = st_fail(QD_ERR_NOMEM, "out of memory for %zu new rows", n);
            goto out;
        }
        plan[i].r = r;
        map_put(&bid, r);
        map_put(&btext, r);
        if (old) {
            old->flags |= ROW_REPLACING;
            plan[i].old = old;
            res[i].status = QD_STORE_REPLACED;
            (*nreplace)++;
        }
        plan[i].vec_index = (*nstore)++;
    }
out:
    map_free(&bid);
    map_free(&btext);
    return rc;
}

/* Progress of the encoder, forwarded as phase "encode". */
typedef struct enc_progress {
    qd_store *s;   /* the store whose callback gets it */
    size_t total;  /* questions being encoded */
} enc_progress;

static void enc_progress_cb(size_t done, void *arg)
{
    enc_progress *p = arg;
    st_progress(p->s, "encode", done, p->total);
}

/* Encodes (or copies) the vectors of the rows to store into x (nstore, dim). When no
 * item brings its own vector (the usual case) the encoder writes straight into x. */
static int encode_plan(qd_store *s, const qd_store_item *items, size_t n,
                       const add_plan *plan, size_t nstore, float *x)
{
    size_t dim = (size_t)s->dim, nenc = 0;
    for (size_t i = 0; i < n; i++)
        if (plan[i].r && !items[i].vec)
            nenc++;
    int direct = nenc == nstore;
    const char **texts = qd_mallocarray(nenc ? nenc : 1, sizeof *texts);
    size_t *lens = qd_mallocarray(nenc ? nenc : 1, sizeof *lens);
    float *ex = direct ? x : qd_mallocarray(nenc ? nenc * dim : 1, sizeof *ex);
    int rc = 0;
    if (!texts || !lens || !ex) {
        rc = st_fail(QD_ERR_NOMEM, "out of memory for %zu vectors", nstore);
        goto out;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (plan[i].r && !items[i].vec) {
            texts[k] = items[i].text;
            lens[k++] = items[i].text_len;
        }
    if (nenc > 0) {
        enc_progress ep = {s, nenc};
        rc = qd_enc_texts_parallel(s->model, texts, lens, nenc, s->threads, 0,
                                   s->progress ? enc_progress_cb : NULL, &ep, ex);
        if (rc) {
            rc = st_fail(rc, "encoding %zu questions: %s", nenc, qd_strerror(rc));
            goto out;
        }
    }
    if (!direct) {
        k = 0;
        for (size_t i = 0; i < n; i++) {
            if (!plan[i].r)
                continue;
            const float *src = items[i].vec ? items[i].vec : ex + dim * k++;
            memcpy(x + plan[i].vec_index * dim, src, dim * sizeof *x);
        }
    }
out:
    qd_free(texts);
    qd_free(lens);
    if (!direct)
        qd_free(ex);
    return rc;
}

/* Inserts the planned rows and marks the replaced ones removed, in one transaction
 * that takes change number seq. Sets each new row's id. */
static int write_add(qd_store *s, const qd_store_item *items, size_t n, add_plan *plan,
                     const float *x, uint64_t seq, double now)
{
    sqlite3_stmt *ins = NULL, *rem = NULL;
    size_t dim = (size_t)s->dim;
    unsigned char *blob = qd_malloc(dim * sizeof(float));
    int rc = 0;
    if (!blob)
        return st_fail(QD_ERR_NOMEM, "out of memory");
    if (sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
        rc = st_dbfail(s->db, s->db_path, "starting a transaction");
        goto out;
    }
    if ((rc = db_prepare(s, "UPDATE questions SET removed = ?1, removed_seq = ?2 "
                            "WHERE row = ?3 AND removed IS NULL", &rem)) != 0 ||
        (rc = db_prepare(s, "INSERT INTO questions (ext_id, text, text_key, vec, created, "
                            "seq) VALUES (?1, ?2, ?3, ?4, ?5, ?6)", &ins)) != 0)
        goto out;
    for (size_t i = 0; i < n && !rc; i++) {
        if (!plan[i].old)
            continue;
        sqlite3_bind_double(rem, 1, now);
        sqlite3_bind_int64(rem, 2, (int64_t)seq);
        sqlite3_bind_int64(rem, 3, plan[i].old->row);
        rc = db_run(s, rem);
        if (!rc && sqlite3_changes(s->db) != 1)
            rc = st_fail(QD_ERR_DB, "%s: row %" PRId64 " is no longer live in the database "
                         "(changed by another program?)", s->db_path, plan[i].old->row);
    }
    for (size_t i = 0; i < n && !rc; i++) {
        st_row *r = plan[i].r;
        if (!r)
            continue;
        vec_to_le(x + plan[i].vec_index * dim, dim, blob);
        sqlite3_bind_text(ins, 1, items[i].ext_id, (int)items[i].ext_id_len, SQLITE_STATIC);
        sqlite3_bind_text(ins, 2, items[i].text, (int)items[i].text_len, SQLITE_STATIC);
        sqlite3_bind_int64(ins, 3, (int64_t)r->text_key);
        sqlite3_bind_blob(ins, 4, blob, (int)(dim * sizeof(float)), SQLITE_STATIC);
        sqlite3_bind_double(ins, 5, r->created);
        sqlite3_bind_int64(ins, 6, (int64_t)seq);
        rc = db_run(s, ins);
        if (!rc)
            r->row = sqlite3_last_insert_rowid(s->db);
    }
    if (!rc)
        rc = meta_set(s, "seq", 'i', (int64_t)seq, NULL, 0);
    if (!rc && sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        rc = st_dbfail(s->db, s->db_path, "committing");
out:
    if (rc)
        db_rollback(s);
    sqlite3_finalize(ins);
    sqlite3_finalize(rem);
    qd_free(blob);
    return rc;
}

/* Marks the store broken after a change reached SQLite but not memory. */
static int st_broken(qd_store *s, int rc, const char *what)
{
    s->broken = 1;
    st_format(s->broken_msg, sizeof s->broken_msg,
             "%s: %s: %s; the change is stored in the database but not in the index in "
             "memory: reopen the index",
             s->db_path, what, st_err);
    return st_fail(rc, "%s", s->broken_msg);
}

/* Applies a committed add to memory. Caller holds wmu; takes the write lock. */
static int apply_add(qd_store *s, add_plan *plan, size_t n, size_t nstore, size_t nreplace,
                     const float *x, int64_t *ids, int64_t *old_ids, uint64_t seq, double now)
{
    size_t dim = (size_t)s->dim;
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (plan[i].old)
            old_ids[k++] = plan[i].old->row;
    for (size_t i = 0; i < n; i++)
        if (plan[i].r)
            ids[plan[i].vec_index] = plan[i].r->row;

    int rc = 0;
    pthread_rwlock_wrlock(&s->rw);
    for (size_t i = 0; i < n; i++) {
        st_row *old = plan[i].old;
        if (!old)
            continue;
        old->flags &= ~ROW_REPLACING;
        old->removed = now;
        map_del(&s->by_ext, old);
        map_del(&s->by_text, old);
        s->live--;
        s->tombs++;
    }
    for (size_t i = 0; i < n; i++) {
        st_row *r = plan[i].r;
        if (!r)
            continue;
        map_put(&s->by_row, r);
        map_put(&s->by_ext, r);
        map_put(&s->by_text, r);
        plan[i].r = NULL; /* owned by the table now */
        s->live++;
    }
    s->seq = seq;
    if (nreplace > 0 && s->can_remove) {
        rc = qd_ann_remove(s->ann, old_ids, nreplace, NULL);
        if (rc)
            st_fail(rc, "removing replaced rows: %s", qd_ann_errmsg(s->ann));
    }
    /* In chunks, for the progress of slow kinds (HNSW adds a few thousand a second). */
    for (size_t i = 0; i < nstore && !rc; i += ST_CHUNK) {
        size_t m = nstore - i < ST_CHUNK ? nstore - i : ST_CHUNK;
        rc = ann_add_trained(s->ann, x + i * dim, ids + i, m);
        st_progress(s, "index", i + m, nstore);
    }
    pthread_rwlock_unlock(&s->rw);
    if (rc)
        return st_broken(s, rc, "updating the index");
    return 0;
}

static int add_common(qd_store *s, const qd_store_item *items, size_t n, int replace,
                      qd_store_result *res, int dry)
{
    char why[QD_ERRMSG_MAX];
    if (s->readonly && !dry)
        return st_fail(QD_ERR_FORBIDDEN, "%s: opened read-only", s->db_path);
    for (size_t i = 0; i < n; i++) {
        if (qd_store_check_item(&items[i], why, sizeof why) != 0)
            return st_fail(QD_ERR_INVAL, "item %zu: %s", i, why);
        if (!items[i].vec)
            continue;
        /* Scores are cosine similarities only between unit vectors, and verify holds
         * every stored vector to that. */
        double norm = 0;
        for (int d = 0; d < s->dim; d++) {
            if (!isfinite(items[i].vec[d]))
                return st_fail(QD_ERR_INVAL, "item %zu: vector component %d is not finite", i,
                               d);
            norm += (double)items[i].vec[d] * items[i].vec[d];
        }
        if (fabs(sqrt(norm) - 1.0) > 1e-3)
            return st_fail(QD_ERR_INVAL, "item %zu: vector norm %g, expected a unit vector", i,
                           sqrt(norm));
    }
    if (n == 0)
        return 0;

    uint64_t *keys = qd_mallocarray(n, sizeof *keys);
    add_plan *plan = qd_calloc(n, sizeof *plan);
    float *x = NULL;
    int64_t *ids = NULL, *old_ids = NULL;
    size_t nstore = 0, nreplace = 0;
    int rc = 0, stored = 0;
    if (!keys || !plan) {
        qd_free(keys);
        qd_free(plan);
        return st_fail(QD_ERR_NOMEM, "out of memory for a batch of %zu", n);
    }
    /* Tokenizing needs no lock; keep other writers out only from here. */
    rc = text_keys(items, n, s->threads, keys);
    pthread_mutex_lock(&s->wmu);
    if (!rc && s->broken)
        rc = st_fail(QD_ERR_INDEX, "%s", s->broken_msg);
    if (!rc)
        rc = classify(s, items, n, replace, keys, res, plan, &nstore, &nreplace);
    if (rc || dry || nstore + nreplace == 0)
        goto out;

    x = qd_mallocarray(nstore ? nstore * (size_t)s->dim : 1, sizeof *x);
    ids = qd_mallocarray(nstore ? nstore : 1, sizeof *ids);
    old_ids = qd_mallocarray(nreplace ? nreplace : 1, sizeof *old_ids);
    if (!x || !ids || !old_ids) {
        rc = st_fail(QD_ERR_NOMEM, "out of memory for %zu vectors", nstore);
        goto out;
    }
    if ((rc = encode_plan(s, items, n, plan, nstore, x)) != 0)
        goto out;
    /* Everything the in-memory update needs, before the commit. Training changes the
     * index, but only an empty one (searches find nothing either way). */
    if ((rc = map_reserve(&s->by_row, nstore, &s->rw)) != 0 ||
        (rc = map_reserve(&s->by_ext, nstore, &s->rw)) != 0 ||
        (rc = map_reserve(&s->by_text, nstore, &s->rw)) != 0)
        goto out;
    if (qd_ann_needs_training(s->ann)) {
        pthread_rwlock_wrlock(&s->rw);
        rc = qd_ann_train(s->ann, x, nstore < ST_MAX_TRAIN ? nstore : ST_MAX_TRAIN);
        pthread_rwlock_unlock(&s->rw);
        if (rc) {
            rc = st_fail(rc, "training the index on %zu vectors: %s", nstore,
                         qd_ann_errmsg(s->ann));
            goto out;
        }
    }
    double now = st_wall_now();
    uint64_t seq = s->seq + 1;
    if ((rc = write_add(s, items, n, plan, x, seq, now)) != 0)
        goto out;
    for (size_t i = 0; i < n; i++)
        if (plan[i].r)
            res[i].row = plan[i].r->row;
    stored = 1;
    rc = apply_add(s, plan, n, nstore, nreplace, x, ids, old_ids, seq, now);
out:
    /* Duplicates of batch items name the row the batch item got (none in a dry run or
     * after a failure). */
    for (size_t i = 0; i < n; i++)
        if (is_batch_mark(res[i].other_row))
            res[i].other_row = stored ? res[batch_item(res[i].other_row)].row : -1;
    for (size_t i = 0; i < n; i++) {
        if (plan[i].old)
            plan[i].old->flags &= ~ROW_REPLACING;
        qd_free(plan[i].r); /* NULL once the row table took it */
    }
    pthread_mutex_unlock(&s->wmu);
    qd_free(keys);
    qd_free(plan);
    qd_free(x);
    qd_free(ids);
    qd_free(old_ids);
    return rc;
}

int qd_store_add(qd_store *s, const qd_store_item *items, size_t n, int replace,
                 qd_store_result *res)
{
    return add_common(s, items, n, replace, res, 0);
}

int qd_store_check(qd_store *s, const qd_store_item *items, size_t n, int replace,
                   qd_store_result *res)
{
    return add_common(s, items, n, replace, res, 1);
}

/* --- removing ------------------------------------------------------------------------- */

int qd_store_remove_many(qd_store *s, const char *const *ext_ids, const size_t *lens,
                         size_t n, int *found, size_t *nremoved)
{
    if (nremoved)
        *nremoved = 0;
    if (found)
        memset(found, 0, n * sizeof *found);
    if (s->readonly)
        return st_fail(QD_ERR_FORBIDDEN, "%s: opened read-only", s->db_path);
    if (n == 0)
        return 0;
    st_row **rows = qd_mallocarray(n, sizeof *rows);
    int64_t *ids = qd_mallocarray(n, sizeof *ids);
    sqlite3_stmt *rem = NULL;
    size_t m = 0;
    int rc = 0;
    if (!rows || !ids) {
        qd_free(rows);
        qd_free(ids);
        return st_fail(QD_ERR_NOMEM, "out of memory");
    }
    pthread_mutex_lock(&s->wmu);
    if (s->broken) {
        rc = st_fail(QD_ERR_INDEX, "%s", s->broken_msg);
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        st_row *r = map_get_ext(&s->by_ext, ext_ids[i], lens[i]);
        if (!r || (r->flags & ROW_REMOVING))
            continue; /* not live, or named twice */
        r->flags |= ROW_REMOVING;
        rows[m] = r;
        ids[m++] = r->row;
        if (found)
            found[i] = 1;
    }
    if (m == 0)
        goto out;
    double now = st_wall_now();
    uint64_t seq = s->seq + 1;
    if (sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
        rc = st_dbfail(s->db, s->db_path, "starting a transaction");
        goto out;
    }
    rc = db_prepare(s, "UPDATE questions SET removed = ?1, removed_seq = ?2 "
                       "WHERE row = ?3 AND removed IS NULL", &rem);
    for (size_t i = 0; i < m && !rc; i++) {
        sqlite3_bind_double(rem, 1, now);
        sqlite3_bind_int64(rem, 2, (int64_t)seq);
        sqlite3_bind_int64(rem, 3, ids[i]);
        rc = db_run(s, rem);
        if (!rc && sqlite3_changes(s->db) != 1)
            rc = st_fail(QD_ERR_DB, "%s: row %" PRId64 " is no longer live in the database "
                         "(changed by another program?)", s->db_path, ids[i]);
    }
    if (!rc)
        rc = meta_set(s, "seq", 'i', (int64_t)seq, NULL, 0);
    if (!rc && sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        rc = st_dbfail(s->db, s->db_path, "committing");
    if (rc) {
        db_rollback(s);
        goto out;
    }
    pthread_rwlock_wrlock(&s->rw);
    for (size_t i = 0; i < m; i++) {
        rows[i]->removed = now;
        map_del(&s->by_ext, rows[i]);
        map_del(&s->by_text, rows[i]);
    }
    s->live -= m;
    s->tombs += m;
    s->seq = seq;
    int arc = 0;
    if (s->can_remove) {
        arc = qd_ann_remove(s->ann, ids, m, NULL);
        if (arc)
            st_fail(arc, "removing from the index: %s", qd_ann_errmsg(s->ann));
    }
    pthread_rwlock_unlock(&s->rw);
    if (arc)
        rc = st_broken(s, arc, "updating the index");
    else if (nremoved)
        *nremoved = m;
out:
    for (size_t i = 0; i < m; i++)
        rows[i]->flags &= ~ROW_REMOVING;
    sqlite3_finalize(rem);
    pthread_mutex_unlock(&s->wmu);
    qd_free(rows);
    qd_free(ids);
    if (rc && found)
        memset(found, 0, n * sizeof *found);
    return rc;
}

int qd_store_remove(qd_store *s, const char *ext_id, size_t ext_id_len)
{
    size_t got = 0;
    int rc = qd_store_remove_many(s, &ext_id, &ext_id_len, 1, NULL, &got);
    if (rc)
        return rc;
    if (got == 0)
        return st_fail(QD_ERR_NOTFOUND, "no live question with id \"%.*s\"",
                       (int)(ext_id_len > 200 ? 200 : ext_id_len), ext_id);
    return 0;
}

/* --- compaction and parameters -------------------------------------------------------------- */

int qd_store_compact(qd_store *s)
{
    if (s->readonly)
        return st_fail(QD_ERR_FORBIDDEN, "%s: opened read-only", s->db_path);
    pthread_mutex_lock(&s->wmu);
    int rc = 0;
    st_row **dead = NULL;
    size_t ndead = 0;
    qd_ann *fresh = NULL, *old = NULL;
    if (s->broken) {
        rc = st_fail(QD_ERR_INDEX, "%s", s->broken_msg);
        goto out;
    }
    dead = qd_mallocarray(s->tombs ? s->tombs : 1, sizeof *dead);
    if (!dead) {
        rc = st_fail(QD_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; s->by_row.slot && i <= s->by_row.mask; i++) {
        st_row *r = s->by_row.slot[i];
        if (r && r->removed != 0 && ndead < s->tombs)
            dead[ndead++] = r;
    }
    /* Delete the tombstones and withdraw meta's word for the FAISS file in one
     * transaction: a crash before the new checkpoint makes the next open rebuild,
     * rather than load a file naming rows that no longer exist. */
    uint64_t seq = s->seq + 1;
    if (sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
        rc = st_dbfail(s->db, s->db_path, "starting a transaction");
        goto out;
    }
    rc = db_exec(s, "DELETE FROM questions WHERE removed IS NOT NULL");
    if (!rc)
        rc = meta_set(s, "seq", 'i', (int64_t)seq, NULL, 0);
    if (!rc)
        rc = meta_set(s, "faiss_crc", 'n', 0, NULL, 0);
    if (!rc && sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        rc = st_dbfail(s->db, s->db_path, "committing");
    if (rc) {
        db_rollback(s);
        goto out;
    }
    s->vouched = 0;
    pthread_rwlock_wrlock(&s->rw);
    s->seq = seq;
    pthread_rwlock_unlock(&s->rw);
    /* The new index is built while searches go on against the old one. */
    rc = build_index(s, &fresh);
    if (rc)
        goto out; /* tombstones stay filtered; the next open rebuilds */
    pthread_rwlock_wrlock(&s->rw);
    old = s->ann;
    s->ann = fresh;
    fresh = NULL;
    for (size_t i = 0; i < ndead; i++)
        map_del(&s->by_row, dead[i]);
    s->tombs -= ndead;
    pthread_rwlock_unlock(&s->rw);
    for (size_t i = 0; i < ndead; i++)
        qd_free(dead[i]);
    ndead = 0;
    rc = checkpoint_locked(s);
    /* Give the freed pages back to the file system, then fold the WAL into the file. */
    if (!rc)
        rc = db_exec(s, "VACUUM");
    if (!rc)
        rc = db_exec(s, "PRAGMA wal_checkpoint(TRUNCATE)");
out:
    pthread_mutex_unlock(&s->wmu);
    qd_ann_free(old);
    qd_ann_free(fresh);
    qd_free(dead);
    return rc;
}

int qd_store_set_param(qd_store *s, const char *name, double value)
{
    pthread_mutex_lock(&s->wmu);
    pthread_rwlock_wrlock(&s->rw);
    int rc = qd_ann_set_param(s->ann, name, value);
    if (rc)
        st_fail(rc, "%s", qd_ann_errmsg(s->ann));
    pthread_rwlock_unlock(&s->rw);
    pthread_mutex_unlock(&s->wmu);
    return rc;
}

int qd_store_set_param_text(qd_store *s, const char *name_value)
{
    const char *eq = strchr(name_value, '=');
    char name[64], *end;
    errno = 0;
    double v = eq ? strtod(eq + 1, &end) : 0;
    if (!eq || eq == name_value || (size_t)(eq - name_value) >= sizeof name ||
        eq[1] == '\0' || *end || errno)
        return st_fail(QD_ERR_FORMAT, "expected NAME=VALUE, e.g. nprobe=16");
    snprintf(name, sizeof name, "%.*s", (int)(eq - name_value), name_value);
    return qd_store_set_param(s, name, v);
}

/* --- reading ---------------------------------------------------------------------------- */

void qd_store_row_free(qd_store_row *r)
{
    if (!r)
        return;
    qd_free(r->ext_id);
    qd_free(r->text);
    r->ext_id = r->text = NULL;
}

void qd_store_hits_free(qd_store_hits *h)
{
    if (!h)
        return;
    for (size_t i = 0; i < h->n; i++)
        qd_store_row_free(&h->hit[i].row);
    qd_free(h->hit);
    h->hit = NULL;
    h->n = 0;
}

/* Copies a row table entry out. */
static int row_copy(const st_row *r, qd_store_row *out)
{
    out->row = r->row;
    out->created = r->created;
    out->removed = r->removed;
    out->ext_id = qd_strndup(row_ext(r), r->id_len);
    out->text = qd_strndup(row_text(r), r->text_len);
    if (!out->ext_id || !out->text) {
        qd_store_row_free(out);
        return st_fail(QD_ERR_NOMEM, "out of memory");
    }
    return 0;
}

int qd_store_get(qd_store *s, const char *ext_id, size_t ext_id_len, qd_store_row *row)
{
    memset(row, 0, sizeof *row);
    pthread_rwlock_rdlock(&s->rw);
    const st_row *r = map_get_ext(&s->by_ext, ext_id, ext_id_len);
    int rc = r ? row_copy(r, row)
               : st_fail(QD_ERR_NOTFOUND, "no live question with id \"%.*s\"",
                         (int)(ext_id_len > 200 ? 200 : ext_id_len), ext_id);
    pthread_rwlock_unlock(&s->rw);
    return rc;
}

int qd_store_get_row(qd_store *s, int64_t row_id, qd_store_row *row)
{
    memset(row, 0, sizeof *row);
    pthread_rwlock_rdlock(&s->rw);
    const st_row *r = map_get_row(&s->by_row, row_id);
    int rc = r ? row_copy(r, row)
               : st_fail(QD_ERR_NOTFOUND, "no row %" PRId64, row_id);
    pthread_rwlock_unlock(&s->rw);
    return rc;
}

/* Turns one query's FAISS results (fetch of them) into hits. *more gets 1 if the
 * query came up short while FAISS may hold further candidates worth fetching. */
static int collect(qd_store *s, const float *scores, const int64_t *ids, size_t fetch,
                   size_t k, float min_score, const char *exclude, qd_store_hits *out,
                   int *more)
{
    size_t excl_len = exclude ? strlen(exclude) : 0;
    *more = 0;
    qd_store_hits_free(out);
    out->hit = qd_mallocarray(k, sizeof *out->hit);
    if (!out->hit)
        return st_fail(QD_ERR_NOMEM, "out of memory for %zu results", k);
    size_t j = 0;
    for (; j < fetch && out->n < k; j++) {
        if (ids[j] < 0 || scores[j] < min_score)
            return 0; /* FAISS has nothing further, or nothing good enough */
        const st_row *r = map_get_row(&s->by_row, ids[j]);
        if (!r || r->removed != 0)
            continue;
        if (exclude && r->id_len == excl_len && memcmp(row_ext(r), exclude, excl_len) == 0)
            continue;
        qd_store_hit *h = &out->hit[out->n];
        int rc = row_copy(r, &h->row);
        if (rc)
            return rc;
        h->score = scores[j];
        out->n++;
    }
    *more = out->n < k && j == fetch;
    return 0;
}

int qd_store_search(qd_store *s, const float *q, size_t nq, size_t k, float min_score,
                    const char *const *exclude, qd_store_hits *out)
{
    for (size_t i = 0; i < nq; i++)
        out[i] = (qd_store_hits){0, NULL};
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

    float *scores = NULL;
    int64_t *ids = NULL;
    int rc = 0;
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
    size_t fetch = k + extra + (exclude ? 1 : 0);
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
    for (size_t i = 0; i < nq && !rc; i++) {
        int more;
        const char *ex = exclude ? exclude[i] : NULL;
        rc = collect(s, scores + i * fetch, ids + i * fetch, fetch, k, min_score, ex, &out[i],
                     &more);
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
                rc = collect(s, sc, id, f, k, min_score, ex, &out[i], &more);
            qd_free(sc);
            qd_free(id);
        }
    }
out:
    pthread_rwlock_unlock(&s->rw);
    qd_free(scores);
    qd_free(ids);
    if (rc)
        for (size_t i = 0; i < nq; i++)
            qd_store_hits_free(&out[i]);
    return rc;
}

int qd_store_get_info(qd_store *s, qd_store_info *info)
{
    memset(info, 0, sizeof *info);
    char wal[ST_PATH_MAX];
    pthread_rwlock_rdlock(&s->rw);
    info->live = s->live;
    info->tombstones = s->tombs;
    info->faiss_count = qd_ann_count(s->ann);
    info->seq = s->seq;
    info->checkpoint_seq = s->faiss_seq;
    st_format(info->faiss_note, sizeof info->faiss_note, "%s", s->faiss_note);
    pthread_rwlock_unlock(&s->rw);
    info->dim = s->dim;
    st_format(info->index_spec, sizeof info->index_spec, "%s", s->spec);
    st_format(info->model_fingerprint, sizeof info->model_fingerprint, "%s", s->fingerprint);
    st_format(info->model_path, sizeof info->model_path, "%s", s->model_path);
    info->db_bytes = file_size(s->db_path);
    if (path_with(wal, sizeof wal, s->db_path, "-wal") == 0)
        info->db_bytes += file_size(wal);
    info->faiss_bytes = file_size(s->faiss_path);
    info->can_remove = s->can_remove;
    info->readonly = s->readonly;
    return 0;
}

/* --- verify ----------------------------------------------------------------------------- */

/* Problem counting and reporting for verify. */
typedef struct vreport {
    FILE *f;          /* where to print, or NULL */
    size_t max;       /* lines to print at most */
    uint64_t n;       /* problems found */
} vreport;

static void vproblem(vreport *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void vproblem(vreport *v, const char *fmt, ...)
{
    v->n++;
    if (!v->f || v->n > v->max)
        return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(v->f, fmt, ap);
    va_end(ap);
    fputc('\n', v->f);
}

/* Checks the FAISS file on disk against meta's current record. */
static int verify_file(qd_store *s, vreport *v)
{
    if (s->faiss_note[0]) {
        vproblem(v, "%s", s->faiss_note);
        return 0;
    }
    int type;
    int64_t crc = 0, size = 0, fseq = 0;
    int rc = meta_get(s, "faiss_crc", &type, &crc, NULL, 0);
    if (!rc && type == SQLITE_INTEGER)
        rc = meta_int(s, "faiss_size", &size);
    if (!rc)
        rc = meta_int(s, "faiss_seq", &fseq);
    if (rc)
        return rc;
    if (type != SQLITE_INTEGER) {
        vproblem(v, "%s: the database records no checkpoint of the FAISS file", s->db_path);
        return 0;
    }
    uint32_t fcrc;
    uint64_t fsize;
    rc = file_crc(s->faiss_path, &fcrc, &fsize);
    if (rc == QD_ERR_NOTFOUND) {
        vproblem(v, "%s: missing", s->faiss_path);
        return 0;
    }
    if (rc)
        return rc;
    if ((int64_t)fsize != size || (int64_t)fcrc != crc)
        vproblem(v, "%s: %" PRIu64 " bytes with CRC-32 %08" PRIx32 ", the database records "
                 "%" PRId64 " bytes with CRC-32 %08" PRIx32 " (changed or damaged since "
                 "checkpoint %" PRId64 ")",
                 s->faiss_path, fsize, fcrc, size, (uint32_t)crc, fseq);
    return 0;
}

/* Row ids and vectors of live rows waiting to be checked by search (IVF). */
typedef struct vbatch {
    float *x;       /* (n, dim) stored vectors */
    int64_t *rows;  /* (n) their row ids */
    size_t n;       /* filled */
} vbatch;

#define VBATCH 256

/* Checks a batch of live rows of a kind that cannot look vectors up by id: each
 * stored vector, searched for, must find its own row. */
static int verify_by_search(qd_store *s, vbatch *b, vreport *v, uint64_t *present)
{
    if (b->n == 0)
        return 0;
    size_t ntotal = qd_ann_count(s->ann);
    size_t k = ntotal < 32 ? ntotal : 32;
    if (k == 0) {
        for (size_t i = 0; i < b->n; i++)
            vproblem(v, "row %" PRId64 ": missing from the FAISS index (it is empty)",
                     b->rows[i]);
        b->n = 0;
        return 0;
    }
    float *sc = qd_mallocarray(b->n * k, sizeof *sc);
    int64_t *id = qd_mallocarray(b->n * k, sizeof *id);
    int rc = 0;
    if (!sc || !id)
        rc = st_fail(QD_ERR_NOMEM, "out of memory");
    else if ((rc = qd_ann_search(s->ann, b->x, b->n, k, sc, id)) != 0)
        rc = st_fail(rc, "%s", qd_ann_errmsg(s->ann));
    for (size_t i = 0; !rc && i < b->n; i++) {
        int hit = 0;
        for (size_t j = 0; j < k; j++)
            if (id[i * k + j] == b->rows[i])
                hit = 1;
        if (hit)
            (*present)++;
        else
            vproblem(v, "row %" PRId64 ": not found in the FAISS index by searching for its "
                     "own vector (missing, or a different vector)", b->rows[i]);
    }
    qd_free(sc);
    qd_free(id);
    b->n = 0;
    return rc;
}

static int verify_rows(qd_store *s, vreport *v)
{
    size_t dim = (size_t)s->dim;
    int can_get = qd_ann_can_get(s->ann);
    float *stored = qd_mallocarray(dim, sizeof *stored);
    float *held = qd_mallocarray(dim, sizeof *held);
    vbatch b = {qd_mallocarray(VBATCH * dim, sizeof(float)),
                qd_mallocarray(VBATCH, sizeof(int64_t)), 0};
    qd_tokbuf tb;
    qd_tokbuf_init(&tb);
    sqlite3_stmt *st = NULL;
    uint64_t rows = 0, live = 0, present = 0, tomb_present = 0;
    int64_t seq = 0;
    int rc = 0;
    if (!stored || !held || !b.x || !b.rows) {
        rc = st_fail(QD_ERR_NOMEM, "out of memory");
        goto out;
    }
    if ((rc = meta_int(s, "seq", &seq)) != 0)
        goto out;
    rc = db_prepare(s, "SELECT row, ext_id, text, text_key, vec, removed, seq, removed_seq "
                       "FROM questions ORDER BY row", &st);
    int src = SQLITE_DONE;
    while (!rc && (src = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t row = sqlite3_column_int64(st, 0);
        const char *id = (const char *)sqlite3_column_text(st, 1);
        size_t id_len = (size_t)sqlite3_column_bytes(st, 1);
        const char *text = (const char *)sqlite3_column_text(st, 2);
        size_t text_len = (size_t)sqlite3_column_bytes(st, 2);
        uint64_t key = (uint64_t)sqlite3_column_int64(st, 3);
        const void *blob = sqlite3_column_blob(st, 4);
        size_t blen = (size_t)sqlite3_column_bytes(st, 4);
        int is_live = sqlite3_column_type(st, 5) == SQLITE_NULL;
        int64_t rseq = sqlite3_column_int64(st, 6);
        int64_t rmseq = sqlite3_column_int64(st, 7);
        rows++;
        if (!id || !text) {
            rc = st_fail(QD_ERR_NOMEM, "out of memory");
            break;
        }
        if (rseq > seq || rmseq > seq)
            vproblem(v, "row %" PRId64 ": change number %" PRId64 " is past the last one "
                     "recorded (%" PRId64 ")", row, rseq > rmseq ? rseq : rmseq, seq);
        uint64_t k2;
        if ((rc = text_key_tb(&tb, text, text_len, &k2)) != 0) {
            rc = st_fail(rc, "tokenizing row %" PRId64, row);
            break;
        }
        if (k2 != key)
            vproblem(v, "row %" PRId64 " (id \"%s\"): stored text key does not match its "
                     "text (a different tokenizer?)", row, id);
        const st_row *m = map_get_row(&s->by_row, row);
        if (!m)
            vproblem(v, "row %" PRId64 " (id \"%s\"): in the database but not in the row "
                     "table (added by another process since this one opened it?)", row, id);
        else if ((m->removed == 0) != is_live || m->id_len != id_len ||
                 memcmp(row_ext(m), id, id_len) != 0)
            vproblem(v, "row %" PRId64 " (id \"%s\"): the row table in memory differs from "
                     "the database", row, id);
        if (blen != dim * sizeof(float) || !blob) {
            vproblem(v, "row %" PRId64 " (id \"%s\"): stored vector has %zu bytes, expected "
                     "%zu", row, id, blen, dim * sizeof(float));
            continue;
        }
        vec_from_le(blob, dim, stored);
        double norm = 0;
        int finite = 1;
        for (size_t d = 0; d < dim; d++) {
            finite &= isfinite(stored[d]) != 0;
            norm += (double)stored[d] * stored[d];
        }
        if (!finite || fabs(sqrt(norm) - 1.0) > 1e-3) {
            vproblem(v, "row %" PRId64 " (id \"%s\"): stored vector is not a unit vector "
                     "(norm %g)", row, id, sqrt(norm));
            continue;
        }
        if (!is_live) {
            /* A tombstone: in FAISS only if the kind cannot remove. A kind that cannot
             * look up by id (IVF) removes, so the count check below covers it. */
            if (can_get) {
                int grc = qd_ann_get(s->ann, row, held);
                if (grc == 0) {
                    tomb_present++;
                    if (s->can_remove)
                        vproblem(v, "row %" PRId64 " (id \"%s\"): removed, but still in the "
                                 "FAISS index", row, id);
                } else if (grc != QD_ERR_NOTFOUND) {
                    rc = st_fail(grc, "%s", qd_ann_errmsg(s->ann));
                }
            }
            continue;
        }
        live++;
        if (!can_get) {
            memcpy(b.x + b.n * dim, stored, dim * sizeof(float));
            b.rows[b.n++] = row;
            if (b.n == VBATCH)
                rc = verify_by_search(s, &b, v, &present);
            continue;
        }
        int grc = qd_ann_get(s->ann, row, held);
        if (grc == QD_ERR_NOTFOUND) {
            vproblem(v, "row %" PRId64 " (id \"%s\"): missing from the FAISS index", row, id);
            continue;
        }
        if (grc) {
            rc = st_fail(grc, "%s", qd_ann_errmsg(s->ann));
            break;
        }
        present++;
        double maxd = 0, dot = 0, hn = 0;
        for (size_t d = 0; d < dim; d++) {
            double diff = fabs((double)held[d] - stored[d]);
            maxd = diff > maxd ? diff : maxd;
            dot += (double)held[d] * stored[d];
            hn += (double)held[d] * held[d];
        }
        double cosine = hn > 0 ? dot / sqrt(hn * norm) : 0;
        if (s->lossy ? cosine < 0.95 : maxd > 1e-6)
            vproblem(v, "row %" PRId64 " (id \"%s\"): the FAISS index holds a different "
                     "vector (largest difference %.3g, cosine %.4f)", row, id, maxd, cosine);
    }
    if (!rc && src != SQLITE_DONE)
        rc = st_dbfail(s->db, s->db_path, "reading the questions");
    if (!rc)
        rc = verify_by_search(s, &b, v, &present);
    if (rc)
        goto out;
    if (rows != s->by_row.n)
        vproblem(v, "the row table holds %zu rows, the database %" PRIu64, s->by_row.n, rows);
    if (live != s->live)
        vproblem(v, "%" PRIu64 " live rows in the database, %" PRIu64 " in memory", live,
                 s->live);
    size_t ntotal = qd_ann_count(s->ann);
    uint64_t expect = present + tomb_present;
    if (ntotal > expect)
        vproblem(v, "the FAISS index holds %" PRIu64 " vector(s) that belong to no %srow",
                 (uint64_t)ntotal - expect, s->can_remove ? "live " : "");
out:
    sqlite3_finalize(st);
    qd_tokbuf_free(&tb);
    qd_free(stored);
    qd_free(held);
    qd_free(b.x);
    qd_free(b.rows);
    return rc;
}

int qd_store_verify(qd_store *s, FILE *report, size_t max_report, uint64_t *problems)
{
    vreport v = {report, max_report, 0};
    if (problems)
        *problems = 0;
    pthread_mutex_lock(&s->wmu);
    int rc = 0;
    if (s->broken)
        vproblem(&v, "%s", s->broken_msg);
    char fp[64];
    if ((rc = meta_text(s, "model_fingerprint", fp, sizeof fp)) != 0)
        goto out;
    if (strcmp(fp, qd_model_fingerprint(s->model)) != 0)
        vproblem(&v, "model %s has fingerprint %s, the database records %s", s->model_path,
                 qd_model_fingerprint(s->model), fp);
    if ((rc = verify_file(s, &v)) != 0)
        goto out;
    /* SQLite's own structural check (b-trees, indexes against tables). */
    sqlite3_stmt *st = NULL;
    if ((rc = db_prepare(s, "PRAGMA quick_check", &st)) != 0)
        goto out;
    int src;
    while ((src = sqlite3_step(st)) == SQLITE_ROW) {
        const char *t = (const char *)sqlite3_column_text(st, 0);
        if (t && strcmp(t, "ok") != 0)
            vproblem(&v, "%s: %s", s->db_path, t);
    }
    if (src != SQLITE_DONE)
        vproblem(&v, "%s: integrity check failed: %s", s->db_path, sqlite3_errmsg(s->db));
    sqlite3_finalize(st);
    if (sqlite3_exec(s->db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK) {
        rc = st_dbfail(s->db, s->db_path, "starting a transaction");
        goto out;
    }
    rc = verify_rows(s, &v);
    sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL);
out:
    pthread_mutex_unlock(&s->wmu);
    if (problems)
        *problems = v.n;
    if (rc)
        return rc;
    return v.n ? st_fail(QD_ERR_MISMATCH, "%" PRIu64 " problem(s) found", v.n) : 0;
}

/* --- export ------------------------------------------------------------------------------ */

/* Writes s[0..n) as a JSON string (jansson does the escaping). */
static int put_json_string(FILE *out, const char *s, size_t n)
{
    json_t *j = json_stringn(s, n);
    if (!j)
        return QD_ERR_NOMEM;
    int rc = json_dumpf(j, out, JSON_ENCODE_ANY) == 0 ? 0 : QD_ERR_IO;
    json_decref(j);
    return rc;
}

int qd_store_export(qd_store *s, FILE *out)
{
    size_t dim = (size_t)s->dim;
    float *x = qd_mallocarray(dim, sizeof *x);
    if (!x)
        return st_fail(QD_ERR_NOMEM, "out of memory");
    pthread_mutex_lock(&s->wmu);
    sqlite3_stmt *st = NULL;
    int rc = 0;
    if (sqlite3_exec(s->db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK)
        rc = st_dbfail(s->db, s->db_path, "starting a transaction");
    if (!rc)
        rc = db_prepare(s, "SELECT row, ext_id, text, vec FROM questions "
                           "WHERE removed IS NULL ORDER BY row", &st);
    int src = SQLITE_DONE;
    while (!rc && (src = sqlite3_step(st)) == SQLITE_ROW) {
        int64_t row = sqlite3_column_int64(st, 0);
        const char *id = (const char *)sqlite3_column_text(st, 1);
        const char *text = (const char *)sqlite3_column_text(st, 2);
        if (!id || !text) {
            rc = st_fail(QD_ERR_NOMEM, "out of memory");
            break;
        }
        if ((size_t)sqlite3_column_bytes(st, 3) != dim * sizeof(float)) {
            rc = st_fail(QD_ERR_FORMAT, "%s: row %" PRId64 ": stored vector has %d bytes",
                         s->db_path, row, sqlite3_column_bytes(st, 3));
            break;
        }
        vec_from_le(sqlite3_column_blob(st, 3), dim, x);
        fputs("{\"id\": ", out);
        rc = put_json_string(out, id, (size_t)sqlite3_column_bytes(st, 1));
        fputs(", \"text\": ", out);
        if (!rc)
            rc = put_json_string(out, text, (size_t)sqlite3_column_bytes(st, 2));
        fputs(", \"vector\": [", out);
        /* %.9g round-trips a float32 exactly. */
        for (size_t d = 0; d < dim; d++)
            fprintf(out, d ? ", %.9g" : "%.9g", (double)x[d]);
        fputs("]}\n", out);
        if (rc || ferror(out)) {
            int e = errno;
            rc = st_fail(rc == QD_ERR_NOMEM ? rc : QD_ERR_IO, "writing the export: %s",
                         rc == QD_ERR_NOMEM ? "out of memory" : strerror(e));
        }
    }
    if (!rc && src != SQLITE_DONE)
        rc = st_dbfail(s->db, s->db_path, "reading the questions");
    sqlite3_finalize(st);
    sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL);
    pthread_mutex_unlock(&s->wmu);
    qd_free(x);
    if (!rc && fflush(out) != 0) {
        int e = errno;
        rc = st_fail(QD_ERR_IO, "writing the export: %s", strerror(e));
    }
    return rc;
}

/* --- installing a build ---------------------------------------------------------------- */

/* Folds db_path's WAL into the database file, so that renaming another file over it
 * cannot leave a stale -wal behind. Also checks that db_path is a qdup store. */
static int flush_old(const char *db_path, char *err, size_t errlen)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int rc = 0;
    int src = sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
    if (src != SQLITE_OK) {
        rc = qd_errf(err, errlen, st_db_code(src), "%s: %s", db_path,
                     db ? sqlite3_errmsg(db) : sqlite3_errstr(src));
        sqlite3_close(db);
        return rc;
    }
    sqlite3_busy_timeout(db, ST_BUSY_MS);
    rc = db_check_ours(db, db_path);
    if (rc == QD_ERR_FORMAT) {
        char why[QD_ERRMSG_MAX];
        snprintf(why, sizeof why, "%s", st_err);
        st_fail(rc, "%s; not replacing it", why);
    }
    if (!rc && sqlite3_prepare_v2(db, "PRAGMA wal_checkpoint(TRUNCATE)", -1, &st, NULL) !=
                   SQLITE_OK)
        rc = st_dbfail(db, db_path, "checkpointing its WAL");
    if (!rc) {
        /* One row: busy (1 if a reader kept it from finishing), log and checkpointed
         * frame counts. */
        if (sqlite3_step(st) != SQLITE_ROW)
            rc = st_dbfail(db, db_path, "checkpointing its WAL");
        else if (sqlite3_column_int(st, 0) != 0)
            rc = st_fail(QD_ERR_BUSY, "%s: another process is reading it; cannot replace it "
                         "now", db_path);
    }
    sqlite3_finalize(st);
    if (sqlite3_close(db) != SQLITE_OK && !rc)
        rc = st_fail(QD_ERR_DB, "%s: closing", db_path);
    if (rc)
        return qd_errf(err, errlen, rc, "%s", st_err);
    char wal[ST_PATH_MAX];
    path_with(wal, sizeof wal, db_path, "-wal");
    if (file_size(wal) > 0)
        return qd_errf(err, errlen, QD_ERR_BUSY,
                       "%s: its WAL is still in use by another process; cannot replace it now",
                       db_path);
    return 0;
}

int qd_store_probe(const char *db_path, char *err, size_t errlen)
{
    struct stat st;
    if (stat(db_path, &st) != 0) {
        int e = errno;
        return qd_errf(err, errlen, e == ENOENT ? QD_ERR_NOTFOUND : QD_ERR_IO, "%s: %s",
                       db_path, strerror(e));
    }
    if (!S_ISREG(st.st_mode))
        return qd_errf(err, errlen, QD_ERR_FORMAT, "%s: not a regular file", db_path);
    sqlite3 *db = NULL;
    int src = sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL);
    int rc = src == SQLITE_OK ? db_check_ours(db, db_path)
                              : st_fail(st_db_code(src), "%s: %s", db_path,
                                        db ? sqlite3_errmsg(db) : sqlite3_errstr(src));
    sqlite3_close(db);
    return rc ? qd_errf(err, errlen, rc, "%s", st_err) : 0;
}

int qd_store_install(const char *tmp_db, const char *db_path, char *err, size_t errlen)
{
    char tmp_faiss[ST_PATH_MAX], faiss[ST_PATH_MAX], p[ST_PATH_MAX];
    if (path_with(tmp_faiss, sizeof tmp_faiss, tmp_db, ".faiss") ||
        path_with(faiss, sizeof faiss, db_path, ".faiss"))
        return qd_errf(err, errlen, QD_ERR_RANGE, "%s: path too long", db_path);
    /* The new database must be complete in its main file: no WAL of its own left. */
    path_with(p, sizeof p, tmp_db, "-wal");
    if (file_size(p) > 0)
        return qd_errf(err, errlen, QD_ERR_INVAL, "%s: still has a WAL (not closed?)", tmp_db);
    if (file_exists(db_path)) {
        int rc = flush_old(db_path, err, errlen);
        if (rc)
            return rc;
    }
    if (rename(tmp_db, db_path) != 0) {
        int e = errno;
        return qd_errf(err, errlen, QD_ERR_IO, "renaming %s to %s: %s", tmp_db, db_path,
                       strerror(e));
    }
    /* The commit point: make it durable before touching the FAISS file. */
    int rc = qd_fsync_dir_of(db_path, err, errlen);
    if (rc)
        return rc;
    st_hook("install:db-renamed");
    if (rename(tmp_faiss, faiss) != 0) {
        int e = errno;
        /* The new database is in place; the next open rebuilds its index. */
        return qd_errf(err, errlen, QD_ERR_IO, "renaming %s to %s: %s", tmp_faiss, faiss,
                       strerror(e));
    }
    rc = qd_fsync_dir_of(faiss, err, errlen);
    path_with(p, sizeof p, tmp_db, "-shm");
    unlink(p);
    path_with(p, sizeof p, tmp_db, ".lock");
    unlink(p);
    return rc;
}
