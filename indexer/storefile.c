/*
 * storefile.c - the store's files: the SQLite connection helpers and the meta table,
 * the on-disk form of vectors, the CRC of the FAISS file, the writer lock (flock on
 * DB.lock), probing whether a file is a qdup store, installing a finished build over
 * a store, discarding a store's files, and sweeping leftover temporary files.
 */
#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include "qdup/fileio.h"
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include "qdup/ann.h"
#include "qdup/common.h"
#include "qdup/store.h"
#include "store_impl.h"

/* Vectors are stored little-endian (schema.sql); a no-op copy on x86 and ARM. */
void st_vec_to_le(const float *v, size_t n, unsigned char *out)
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

void st_vec_from_le(const void *blob, size_t n, float *out)
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
int st_path_with(char *dst, size_t len, const char *base, const char *suffix)
{
    int n = snprintf(dst, len, "%s%s", base, suffix);
    return (n < 0 || (size_t)n >= len) ? QD_ERR_RANGE : 0;
}

int st_file_exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

uint64_t st_file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (uint64_t)st.st_size : 0;
}

/* CRC-32 and size of a whole file. QD_ERR_NOTFOUND if it does not exist. */
int st_file_crc(const char *path, uint32_t *crc, uint64_t *size)
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

/* --- SQLite helpers ------------------------------------------------------------------- */

/* Runs every statement of a constant SQL text (no parameters) in turn. */
int st_db_exec(qd_store *s, const char *sql)
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

int st_db_prepare(qd_store *s, const char *sql, sqlite3_stmt **st)
{
    if (sqlite3_prepare_v2(s->db, sql, -1, st, NULL) != SQLITE_OK)
        return st_dbfail(s->db, s->db_path, sql);
    return 0;
}

/* Steps a statement that returns no row (or whose rows are ignored) to its end and
 * resets it for the next use. */
int st_db_run(qd_store *s, sqlite3_stmt *st)
{
    int src;
    while ((src = sqlite3_step(st)) == SQLITE_ROW)
        ;
    int rc = src == SQLITE_DONE ? 0 : st_dbfail(s->db, s->db_path, sqlite3_sql(st));
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc;
}

int st_db_has_table(qd_store *s, const char *name)
{
    sqlite3_stmt *st = NULL;
    int rc = st_db_prepare(s, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                           "name = ?1", &st);
    if (rc)
        return rc;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    int src = sqlite3_step(st);
    rc = src == SQLITE_ROW    ? 1
         : src == SQLITE_DONE ? 0
                              : st_dbfail(s->db, s->db_path, "looking for a table");
    sqlite3_finalize(st);
    return rc;
}

void st_db_rollback(qd_store *s)
{
    if (!sqlite3_get_autocommit(s->db))
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL); /* constant, no parameters */
}

/* Reads meta[key]: *type gets the SQLite type (SQLITE_NULL also when absent). */
int st_meta_get(qd_store *s, const char *key, int *type, int64_t *ival, char *text,
                    size_t textlen)
{
    sqlite3_stmt *st = NULL;
    int rc = st_db_prepare(s, "SELECT value FROM meta WHERE key = ?1", &st);
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
int st_meta_int(qd_store *s, const char *key, int64_t *v)
{
    int type;
    int rc = st_meta_get(s, key, &type, v, NULL, 0);
    if (rc)
        return rc;
    if (type != SQLITE_INTEGER)
        return st_fail(QD_ERR_FORMAT, "%s: meta value \"%s\" is missing or not an integer",
                       s->db_path, key);
    return 0;
}

int st_meta_text(qd_store *s, const char *key, char *buf, size_t len)
{
    int type;
    int rc = st_meta_get(s, key, &type, NULL, buf, len);
    if (rc)
        return rc;
    if (type != SQLITE_TEXT)
        return st_fail(QD_ERR_FORMAT, "%s: meta value \"%s\" is missing or not text",
                       s->db_path, key);
    return 0;
}

/* meta[key] = value; value kinds: 'i' integer, 't' text, 'r' real, 'n' NULL. */
int st_meta_set(qd_store *s, const char *key, char kind, int64_t ival, const char *text,
                    double rval)
{
    sqlite3_stmt *st = NULL;
    int rc = st_db_prepare(s, "INSERT INTO meta (key, value) VALUES (?1, ?2) "
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
    rc = st_db_run(s, st);
    sqlite3_finalize(st);
    return rc;
}

/* Per-connection settings. WAL and synchronous=FULL give durable commits (see the
 * top of the file); busy_timeout lets a reader in another process wait out a
 * checkpoint instead of failing. */
int st_db_configure(qd_store *s)
{
    sqlite3_busy_timeout(s->db, ST_BUSY_MS);
    sqlite3_extended_result_codes(s->db, 1);
    if (s->readonly)
        return st_db_exec(s, "PRAGMA query_only = 1");
    int rc = st_db_exec(s, "PRAGMA journal_mode = WAL");
    if (!rc)
        rc = st_db_exec(s, "PRAGMA synchronous = FULL");
    if (!rc)
        rc = st_db_exec(s, "PRAGMA cache_size = -32768"); /* 32 MiB: big batch inserts */
    return rc;
}

/* Checks that an open database is a qdup store: QD_ERR_FORMAT naming the file if not. */
int st_db_check_ours(sqlite3 *db, const char *path)
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

/* --- files and locks ------------------------------------------------------------------ */

/* Skips "<digits>.<digits>" (a qd_tmp_path suffix: pid and counter) at *p. */
static int skip_tmp_suffix(const char **p)
{
    const char *q = *p;
    for (int part = 0; part < 2; part++) {
        if (part && *q++ != '.')
            return 0;
        if (*q < '0' || *q > '9')
            return 0;
        while (*q >= '0' && *q <= '9')
            q++;
    }
    *p = q;
    return 1;
}

/* 1 if name is one of the leftovers qd_store_sweep deletes beside the store `base`. */
static int is_leftover(const char *name, const char *base, int builds)
{
    size_t bl = strlen(base);
    if (strncmp(name, base, bl) != 0)
        return 0;
    const char *p = name + bl;
    if (strncmp(p, ".faiss.tmp.", 11) == 0) {
        p += 11;
        return skip_tmp_suffix(&p) && *p == '\0';
    }
    if (!builds || strncmp(p, ".tmp.", 5) != 0)
        return 0;
    p += 5;
    if (!skip_tmp_suffix(&p))
        return 0;
    static const char *const rest[] = {QD_STORE_SUFFIXES};
    for (size_t i = 0; i < sizeof rest / sizeof *rest; i++)
        if (strcmp(p, rest[i]) == 0)
            return 1;
    if (strncmp(p, ".faiss.tmp.", 11) == 0) {
        p += 11;
        return skip_tmp_suffix(&p) && *p == '\0';
    }
    return 0;
}

void qd_store_sweep(const char *db_path, int builds,
                    void (*removed)(const char *path, void *arg), void *arg)
{
    char dir[ST_PATH_MAX], path[2 * ST_PATH_MAX];
    const char *slash = strrchr(db_path, '/');
    const char *base = slash ? slash + 1 : db_path;
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else
        snprintf(dir, sizeof dir, "%.*s", slash == db_path ? 1 : (int)(slash - db_path),
                 db_path);
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!is_leftover(e->d_name, base, builds))
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (unlink(path) == 0 && removed)
            removed(path, arg);
    }
    closedir(d);
}

int qd_store_lock(const char *db_path, int *fd, char *err, size_t errlen)
{
    st_enter();
    char path[ST_PATH_MAX];
    *fd = -1;
    if (st_path_with(path, sizeof path, db_path, QD_STORE_LOCK_SUFFIX))
        return qd_errf(err, errlen, QD_ERR_RANGE, "%s: path too long", db_path);
    int f = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (f < 0) {
        int e = errno; /* EROFS: a read-only filesystem, "unavailable" for writing */
        return qd_errf(err, errlen, qd_err_from_errno(e), "%s: %s", path, strerror(e));
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
    st_enter();
    static const char *const suffix[] = {QD_STORE_SUFFIXES};
    char path[ST_PATH_MAX];
    for (size_t i = 0; i < sizeof suffix / sizeof *suffix; i++)
        if (st_path_with(path, sizeof path, db_path, suffix[i]) == 0)
            unlink(path);
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
    rc = st_db_check_ours(db, db_path);
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
    st_path_with(wal, sizeof wal, db_path, "-wal");
    if (st_file_size(wal) > 0)
        return qd_errf(err, errlen, QD_ERR_BUSY,
                       "%s: its WAL is still in use by another process; cannot replace it now",
                       db_path);
    return 0;
}

int qd_store_probe(const char *db_path, char *err, size_t errlen)
{
    st_enter();
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
    int rc = src == SQLITE_OK ? st_db_check_ours(db, db_path)
                              : st_fail(st_db_code(src), "%s: %s", db_path,
                                        db ? sqlite3_errmsg(db) : sqlite3_errstr(src));
    sqlite3_close(db);
    return rc ? qd_errf(err, errlen, rc, "%s", st_err) : 0;
}

int qd_store_install(const char *tmp_db, const char *db_path, char *err, size_t errlen)
{
    st_enter();
    char tmp_faiss[ST_PATH_MAX], faiss[ST_PATH_MAX], p[ST_PATH_MAX];
    if (st_path_with(tmp_faiss, sizeof tmp_faiss, tmp_db, ".faiss") ||
        st_path_with(faiss, sizeof faiss, db_path, ".faiss"))
        return qd_errf(err, errlen, QD_ERR_RANGE, "%s: path too long", db_path);
    /* The new database must be complete in its main file: no WAL of its own left. */
    st_path_with(p, sizeof p, tmp_db, "-wal");
    if (st_file_size(p) > 0)
        return qd_errf(err, errlen, QD_ERR_INVAL, "%s: still has a WAL (not closed?)", tmp_db);
    if (st_file_exists(db_path)) {
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
    st_path_with(p, sizeof p, tmp_db, "-shm");
    unlink(p);
    st_path_with(p, sizeof p, tmp_db, QD_STORE_LOCK_SUFFIX);
    unlink(p);
    return rc;
}
