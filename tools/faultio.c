/*
 * faultio.c - libqdup-faultio.so, an LD_PRELOAD interposer that makes the machine fail
 * under a qdup program: the Nth matching I/O call fails with ENOSPC or EIO (once, or
 * from then on, like a full disk), or the power goes at the Nth call. SQLite's test
 * suite does the same inside its VFS (a full disk, the Nth I/O failing, crashes
 * between writes); here it sits below every library, so SQLite, FAISS and qdup's own
 * file code meet the same faults. qdup-fault-test drives it.
 *
 * Interposed: open, open64, openat, openat64, creat, write, pwrite, pwrite64, fwrite
 * (FAISS writes through stdio, whose own calls to write cannot be interposed), fsync,
 * fdatasync, rename, renameat, ftruncate, ftruncate64. A call "matches" when it is of
 * a kind in QDUP_FAULT_CALLS and its file's path starts with QDUP_FAULT_PATH (for an
 * fd, the path the kernel reports in /proc/self/fd; for rename, either name). Other
 * calls (sockets, the terminal, the model file) pass straight through.
 *
 * Configured by the environment, read once at load:
 *   QDUP_FAULT_PATH    path prefix of the files to hit (unset: nothing matches)
 *   QDUP_FAULT_CALLS   comma-separated kinds: open, write (write and fwrite), pwrite,
 *                      fsync, fdatasync, rename, ftruncate; default all of them
 *   QDUP_FAULT_N       the matching call to fail, counting from 1 (unset or 0: none;
 *                      matching calls are still counted and logged)
 *   QDUP_FAULT_MODE    once: only call N fails; sticky: call N and every later one
 *                      fail, or with ENOSPC the disk is full from call N on (writes
 *                      that need room fail, see full_disk below); powercut: at call
 *                      N the power goes
 *   QDUP_FAULT_ERRNO   ENOSPC (default), EIO, EROFS or EDQUOT; as on a real machine, a
 *                      full disk (ENOSPC, EDQUOT) still opens the files that exist, and
 *                      a read-only filesystem (EROFS) opens files for reading and syncs
 *   QDUP_FAULT_SWITCH  a file: faults are injected only while it exists, so a driver
 *                      can fill the disk and give the space back while the program
 *                      runs (with QDUP_FAULT_N=1 and sticky: every matching call fails
 *                      while the file is there)
 *   QDUP_FAULT_LOG     a file that gets one line per matching call, "N kind path" (a
 *                      failed one ends in " FAIL", the power cut in " POWERCUT"), so a
 *                      driver can count the calls of an operation and aim at each
 *
 * The power cut. Until call N, every matching write (write, pwrite, fwrite, ftruncate)
 * records what it overwrites (the old bytes and the old size of the file); fsync or
 * fdatasync of the file forgets its records, since what they protect is now durable.
 * At call N the records are played back newest first, which puts every file back as
 * it was at its last fsync, and the process kills itself with SIGKILL: what a power
 * cut leaves of a file is at least what was synced, and this is the worst such case
 * for writes. Renames and file creations are taken as durable at once (ext4's and
 * XFS's behaviour for a rename over a file, not a promise of POSIX); a program that
 * fsyncs the directory after them loses nothing by it. A lock held across the record
 * and the write keeps another thread's write from landing after the playback.
 *
 * Not a product: built for the tests and the benchmark runs of the fault tests.
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

/* Call kinds, as bits of the QDUP_FAULT_CALLS mask. */
enum {
    K_OPEN = 1,
    K_WRITE = 2,
    K_PWRITE = 4,
    K_FSYNC = 8,
    K_FDATASYNC = 16,
    K_RENAME = 32,
    K_FTRUNCATE = 64,
    K_ALL = 127,
};

static const struct {
    const char *name;
    int bit;
} kinds[] = {
    {"open", K_OPEN},   {"write", K_WRITE},   {"pwrite", K_PWRITE},       {"fsync", K_FSYNC},
    {"fdatasync", K_FDATASYNC}, {"rename", K_RENAME}, {"ftruncate", K_FTRUNCATE},
};

enum { MODE_ONCE, MODE_STICKY, MODE_POWERCUT };

/* The configuration, read from the environment at load. */
static struct {
    char prefix[PATH_MAX]; /* QDUP_FAULT_PATH ("" matches nothing) */
    size_t prefix_len;
    int mask;              /* K_* bits of the kinds that match */
    long n;                /* the call to fail (0: none) */
    int mode;              /* MODE_* */
    int err;               /* errno of a failed call */
    char sw[PATH_MAX];     /* QDUP_FAULT_SWITCH, or "" */
    int log_fd;            /* QDUP_FAULT_LOG's descriptor, or -1 */
} F = {.log_fd = -1};

/* Matching calls so far. */
static atomic_long calls;

/* The real functions. */
static int (*real_open)(const char *, int, ...);
static int (*real_open64)(const char *, int, ...);
static int (*real_openat)(int, const char *, int, ...);
static int (*real_openat64)(int, const char *, int, ...);
static int (*real_creat)(const char *, mode_t);
static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off64_t);
static size_t (*real_fwrite)(const void *, size_t, size_t, FILE *);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_rename)(const char *, const char *);
static int (*real_renameat)(int, const char *, int, const char *);
static int (*real_ftruncate)(int, off_t);
static int (*real_ftruncate64)(int, off64_t);

#define RESOLVE(name)                                                                   \
    do {                                                                                \
        if (!real_##name)                                                               \
            *(void **)&real_##name = dlsym(RTLD_NEXT, #name);                           \
    } while (0)

static void resolve_all(void)
{
    RESOLVE(open);
    RESOLVE(open64);
    RESOLVE(openat);
    RESOLVE(openat64);
    RESOLVE(creat);
    RESOLVE(write);
    RESOLVE(pwrite);
    RESOLVE(pwrite64);
    RESOLVE(fwrite);
    RESOLVE(fsync);
    RESOLVE(fdatasync);
    RESOLVE(rename);
    RESOLVE(renameat);
    RESOLVE(ftruncate);
    RESOLVE(ftruncate64);
}

__attribute__((constructor)) static void faultio_init(void)
{
    resolve_all();
    const char *v = getenv("QDUP_FAULT_PATH");
    if (v && *v) {
        snprintf(F.prefix, sizeof F.prefix, "%s", v);
        F.prefix_len = strlen(F.prefix);
    }
    F.mask = K_ALL;
    if ((v = getenv("QDUP_FAULT_CALLS")) != NULL && *v) {
        F.mask = 0;
        for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
            size_t len = strlen(kinds[i].name);
            for (const char *p = v; (p = strstr(p, kinds[i].name)) != NULL; p += len)
                if ((p == v || p[-1] == ',') && (p[len] == ',' || p[len] == '\0'))
                    F.mask |= kinds[i].bit;
        }
    }
    F.n = (v = getenv("QDUP_FAULT_N")) != NULL ? atol(v) : 0;
    F.mode = MODE_ONCE;
    if ((v = getenv("QDUP_FAULT_MODE")) != NULL) {
        if (strcmp(v, "sticky") == 0)
            F.mode = MODE_STICKY;
        else if (strcmp(v, "powercut") == 0)
            F.mode = MODE_POWERCUT;
    }
    F.err = ENOSPC;
    if ((v = getenv("QDUP_FAULT_ERRNO")) != NULL) {
        if (strcmp(v, "EIO") == 0)
            F.err = EIO;
        else if (strcmp(v, "EROFS") == 0)
            F.err = EROFS;
        else if (strcmp(v, "EDQUOT") == 0)
            F.err = EDQUOT;
    }
    if ((v = getenv("QDUP_FAULT_SWITCH")) != NULL && *v)
        snprintf(F.sw, sizeof F.sw, "%s", v);
    if ((v = getenv("QDUP_FAULT_LOG")) != NULL && *v)
        F.log_fd = real_open(v, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
}

/* --- which calls match ------------------------------------------------------------- */

static int path_matches(const char *path)
{
    return F.prefix_len && strncmp(path, F.prefix, F.prefix_len) == 0;
}

/* The absolute form of a path given to open or rename (relative to dirfd or the
 * working directory). */
static void abs_path(int dirfd, const char *path, char *out, size_t len)
{
    if (path[0] == '/') {
        snprintf(out, len, "%s", path);
        return;
    }
    char dir[PATH_MAX] = "";
    if (dirfd == AT_FDCWD) {
        if (!getcwd(dir, sizeof dir))
            dir[0] = '\0';
    } else {
        char link[64];
        snprintf(link, sizeof link, "/proc/self/fd/%d", dirfd);
        ssize_t n = readlink(link, dir, sizeof dir - 1);
        dir[n > 0 ? n : 0] = '\0';
    }
    snprintf(out, len, "%s/%s", dir, path);
}

/* The path of fd into out; 0, or -1 if the kernel does not say. */
static int fd_path(int fd, char *out, size_t len)
{
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, out, len - 1);
    if (n <= 0)
        return -1;
    out[n] = '\0';
    return 0;
}

/* What to do with a matching call. */
enum { GO = 0, FAIL, POWERCUT };

static void log_call(long n, const char *kind, const char *path, const char *what)
{
    if (F.log_fd < 0)
        return;
    char line[PATH_MAX + 96];
    int len = snprintf(line, sizeof line, "%ld %s %s%s\n", n, kind, path, what);
    if (len > 0)
        real_write(F.log_fd, line, (size_t)len < sizeof line ? (size_t)len : sizeof line - 1);
}

/* A full disk (QDUP_FAULT_MODE=sticky with ENOSPC or EDQUOT) is modelled by its free
 * space rather than by failing every call, since that is how a real one behaves: from
 * call N on the disk has no room, so a write that extends a file (or an ftruncate that
 * grows it) fails, while overwriting bytes a file already has, syncing, renaming and
 * opening files succeed, and shrinking a file gives its bytes back (SQLite truncates
 * its -shm at start-up and regrows it into the same room). Bytes freed by deleting
 * files are not counted: the model never has more room than the real disk would. */
static long long room;
static pthread_mutex_t room_mu = PTHREAD_MUTEX_INITIALIZER;

static int full_disk(void)
{
    return F.mode == MODE_STICKY && (F.err == ENOSPC || F.err == EDQUOT);
}

/* Counts a matching call of `kind` on `path` and says what to do with it. refusable is
 * 0 for a call the fault does not refuse on a real machine (see open_refusable); grow
 * and freed are the bytes the call adds to or removes from the files (for the model
 * of a full disk). */
static int decide_space(int bit, const char *kind, const char *path, int refusable,
                        long long grow, long long freed)
{
    if (!(F.mask & bit) || !path_matches(path))
        return GO;
    long n = atomic_fetch_add(&calls, 1) + 1;
    int act = GO;
    struct stat st;
    int armed = F.n > 0 && (n == F.n || (F.mode == MODE_STICKY && n > F.n)) &&
                (!F.sw[0] || stat(F.sw, &st) == 0);
    if (armed && full_disk()) {
        pthread_mutex_lock(&room_mu);
        if (grow > room)
            act = FAIL;
        else
            room += freed - grow;
        pthread_mutex_unlock(&room_mu);
    } else if (armed && refusable) {
        act = F.mode == MODE_POWERCUT ? POWERCUT : FAIL;
    }
    log_call(n, kind, path, act == FAIL ? " FAIL" : act == POWERCUT ? " POWERCUT" : "");
    return act;
}

static int decide(int bit, const char *kind, const char *path)
{
    return decide_space(bit, kind, path, 1, 0, 0);
}

/* Whether the fault refuses an open with these flags of the file at abs: a full disk
 * refuses only to create a file (no inode), a read-only filesystem only to open for
 * writing; an I/O error anything. */
static int open_refusable(int flags, const char *abs)
{
    struct stat st;
    if (F.err == ENOSPC || F.err == EDQUOT)
        return (flags & O_CREAT) && stat(abs, &st) != 0;
    if (F.err == EROFS)
        return (flags & (O_WRONLY | O_RDWR | O_CREAT | O_TRUNC)) != 0;
    return 1;
}

/* decide for a call on fd; end is where a write ends (or -1), trunc the size an
 * ftruncate sets (or -1), for the full disk's model. */
static int decide_fd(int bit, const char *kind, int fd, long long end, long long trunc)
{
    char path[PATH_MAX];
    if (!(F.mask & bit) || !F.prefix_len || fd_path(fd, path, sizeof path) != 0)
        return GO;
    long long grow = 0, freed = 0;
    struct stat st;
    if (full_disk() && (end >= 0 || trunc >= 0) && fstat(fd, &st) == 0) {
        long long size = (long long)st.st_size, to = end >= 0 ? end : trunc;
        if (to > size)
            grow = to - size;
        else if (trunc >= 0)
            freed = size - trunc;
    }
    /* A read-only filesystem has nothing to sync: fsync succeeds there. */
    int refusable = !(F.err == EROFS && (bit & (K_FSYNC | K_FDATASYNC)));
    return decide_space(bit, kind, path, refusable, grow, freed);
}

/* --- the power cut's undo records ----------------------------------------------------- */

/* What one write overwrote, to put back at the power cut. */
typedef struct undo {
    struct undo *prev;   /* the record before (newest first) */
    dev_t dev;           /* the file */
    ino_t ino;
    char path[PATH_MAX]; /* its name when written (to reopen it at the cut) */
    off_t off;           /* where the write went */
    size_t len;          /* bytes of old data saved (those that existed) */
    off_t old_size;      /* the file's size before the write */
    unsigned char *old;  /* (len) the bytes that were there */
} undo;

/* Newest record; the lock: writes hold it shared across record + write, the cut holds
 * it exclusively from the playback to the kill. */
static undo *undo_top;
static pthread_mutex_t undo_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_rwlock_t cut_lock = PTHREAD_RWLOCK_INITIALIZER;

/* Records what a write of len bytes at off (or a truncation to off, len 0) on fd will
 * overwrite. Only in powercut mode, before the cut. */
static void undo_record(int fd, off_t off, size_t len)
{
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
        return;
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0 && (fl & O_DSYNC))
        return; /* written through: durable at once */
    undo *u = calloc(1, sizeof *u);
    if (!u)
        return;
    u->dev = st.st_dev;
    u->ino = st.st_ino;
    if (fd_path(fd, u->path, sizeof u->path) != 0) {
        free(u);
        return;
    }
    u->off = off;
    u->old_size = st.st_size;
    if (off < st.st_size && len > 0) {
        size_t have = (size_t)(st.st_size - off);
        u->len = len < have ? len : have;
        u->old = malloc(u->len);
        if (!u->old || pread(fd, u->old, u->len, off) != (ssize_t)u->len) {
            free(u->old);
            free(u);
            return;
        }
    }
    pthread_mutex_lock(&undo_mu);
    u->prev = undo_top;
    undo_top = u;
    pthread_mutex_unlock(&undo_mu);
}

/* Forgets the records of fd's file: it was synced. */
static void undo_forget(int fd)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        return;
    pthread_mutex_lock(&undo_mu);
    for (undo **p = &undo_top; *p;) {
        undo *u = *p;
        if (u->dev == st.st_dev && u->ino == st.st_ino) {
            *p = u->prev;
            free(u->old);
            free(u);
        } else {
            p = &u->prev;
        }
    }
    pthread_mutex_unlock(&undo_mu);
}

/* The power cut: every file back to its last fsync, then SIGKILL. Never returns. */
static void power_cut(void)
{
    pthread_rwlock_wrlock(&cut_lock);
    pthread_mutex_lock(&undo_mu);
    for (undo *u = undo_top; u; u = u->prev) {
        int fd = real_open(u->path, O_WRONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        struct stat st;
        if (fstat(fd, &st) == 0 && st.st_dev == u->dev && st.st_ino == u->ino) {
            if (u->len)
                (void)!real_pwrite(fd, u->old, u->len, u->off);
            if (st.st_size != u->old_size)
                (void)!real_ftruncate(fd, u->old_size);
        }
        close(fd);
    }
    raise(SIGKILL);
    for (;;)
        pause();
}

/* Before a write-like call (under the shared cut lock): its undo record. */
static void before_write(int fd, off_t off, size_t len)
{
    if (F.mode == MODE_POWERCUT && F.n > 0 && off >= 0)
        undo_record(fd, off, len);
}

/* Carries out a decision: the power cut (never returns), or 1 with errno set if the
 * call is to fail, else 0. */
static int fail_now(int act)
{
    if (act == POWERCUT)
        power_cut();
    if (act == FAIL) {
        errno = F.err;
        return 1;
    }
    return 0;
}

/* --- the interposed calls ------------------------------------------------------------- */

static int open_common(int dirfd, const char *path, int flags, mode_t mode, int which)
{
    resolve_all();
    char abs[PATH_MAX];
    int act = GO;
    if (F.prefix_len && (F.mask & K_OPEN)) {
        abs_path(dirfd, path, abs, sizeof abs);
        act = decide_space(K_OPEN, "open", abs, open_refusable(flags, abs), 0, 0);
    }
    if (fail_now(act))
        return -1;
    switch (which) {
    case 0: return real_open(path, flags, mode);
    case 1: return real_open64(path, flags, mode);
    case 2: return real_openat(dirfd, path, flags, mode);
    default: return real_openat64(dirfd, path, flags, mode);
    }
}

static mode_t mode_arg(int flags, va_list ap)
{
    return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE ? (mode_t)va_arg(ap, int) : 0;
}

/* open, open64, openat and openat64: one body over open_common. */
#define OPEN_BODY(dirfd, which)                                                         \
    {                                                                                   \
        va_list ap;                                                                     \
        va_start(ap, flags);                                                            \
        mode_t m = mode_arg(flags, ap);                                                 \
        va_end(ap);                                                                     \
        return open_common(dirfd, path, flags, m, which);                               \
    }

int open(const char *path, int flags, ...) OPEN_BODY(AT_FDCWD, 0)
int open64(const char *path, int flags, ...) OPEN_BODY(AT_FDCWD, 1)
int openat(int dirfd, const char *path, int flags, ...) OPEN_BODY(dirfd, 2)
int openat64(int dirfd, const char *path, int flags, ...) OPEN_BODY(dirfd, 3)

int creat(const char *path, mode_t mode)
{
    return open_common(AT_FDCWD, path, O_WRONLY | O_CREAT | O_TRUNC, mode, 0);
}

/* write and the pwrites: one body. off < 0 means "at the file position". */
static ssize_t write_common(int fd, const void *buf, size_t len, off_t off, int which)
{
    resolve_all();
    int bit = which == 0 ? K_WRITE : K_PWRITE;
    long long end = -1;
    if (full_disk()) {
        off_t at = which == 0 ? lseek(fd, 0, SEEK_CUR) : off;
        end = at >= 0 ? (long long)at + (long long)len : -1;
    }
    int act = decide_fd(bit, which == 0 ? "write" : "pwrite", fd, end, -1);
    if (fail_now(act))
        return -1;
    pthread_rwlock_rdlock(&cut_lock);
    before_write(fd, which == 0 ? lseek(fd, 0, SEEK_CUR) : off, len);
    ssize_t r = which == 0   ? real_write(fd, buf, len)
                : which == 1 ? real_pwrite(fd, buf, len, off)
                             : real_pwrite64(fd, buf, len, off);
    int e = errno;
    pthread_rwlock_unlock(&cut_lock);
    errno = e;
    return r;
}

ssize_t write(int fd, const void *buf, size_t len)
{
    return write_common(fd, buf, len, -1, 0);
}

ssize_t pwrite(int fd, const void *buf, size_t len, off_t off)
{
    return write_common(fd, buf, len, off, 1);
}

ssize_t pwrite64(int fd, const void *buf, size_t len, off64_t off)
{
    return write_common(fd, buf, len, off, 2);
}

size_t fwrite(const void *buf, size_t size, size_t n, FILE *f)
{
    resolve_all();
    int fd = fileno(f);
    long long end = -1;
    if (full_disk() && fd >= 0) {
        off_t at = ftello(f);
        end = at >= 0 ? (long long)at + (long long)(size * n) : -1;
    }
    int act = fd >= 0 ? decide_fd(K_WRITE, "fwrite", fd, end, -1) : GO;
    if (fail_now(act))
        return 0;
    pthread_rwlock_rdlock(&cut_lock);
    /* The bytes land at the stream's position whenever stdio flushes them; what they
     * overwrite is what is in the file there now. */
    before_write(fd, ftello(f), size * n);
    size_t r = real_fwrite(buf, size, n, f);
    int e = errno;
    pthread_rwlock_unlock(&cut_lock);
    errno = e;
    return r;
}

static int sync_common(int fd, int data_only)
{
    resolve_all();
    int act = decide_fd(data_only ? K_FDATASYNC : K_FSYNC, data_only ? "fdatasync" : "fsync",
                        fd, -1, -1);
    if (fail_now(act))
        return -1;
    int r = data_only ? real_fdatasync(fd) : real_fsync(fd);
    if (r == 0 && F.mode == MODE_POWERCUT)
        undo_forget(fd);
    return r;
}

int fsync(int fd)
{
    return sync_common(fd, 0);
}

int fdatasync(int fd)
{
    return sync_common(fd, 1);
}

static int rename_common(int olddir, const char *from, int newdir, const char *to, int at)
{
    resolve_all();
    int act = GO;
    if (F.prefix_len && (F.mask & K_RENAME)) {
        char a[PATH_MAX], b[PATH_MAX];
        abs_path(olddir, from, a, sizeof a);
        abs_path(newdir, to, b, sizeof b);
        act = decide(K_RENAME, "rename", path_matches(b) ? b : a);
    }
    if (fail_now(act))
        return -1;
    return at ? real_renameat(olddir, from, newdir, to) : real_rename(from, to);
}

int rename(const char *from, const char *to)
{
    return rename_common(AT_FDCWD, from, AT_FDCWD, to, 0);
}

int renameat(int olddir, const char *from, int newdir, const char *to)
{
    return rename_common(olddir, from, newdir, to, 1);
}

static int truncate_common(int fd, off_t len, int which)
{
    resolve_all();
    int act = decide_fd(K_FTRUNCATE, "ftruncate", fd, -1, len);
    if (fail_now(act))
        return -1;
    pthread_rwlock_rdlock(&cut_lock);
    if (F.mode == MODE_POWERCUT && F.n > 0) {
        /* Keep the bytes a shrink drops (a grow drops nothing; the size is restored). */
        struct stat st;
        size_t lost = fstat(fd, &st) == 0 && st.st_size > len ? (size_t)(st.st_size - len) : 0;
        undo_record(fd, len, lost);
    }
    int r = which ? real_ftruncate64(fd, len) : real_ftruncate(fd, len);
    int e = errno;
    pthread_rwlock_unlock(&cut_lock);
    errno = e;
    return r;
}

int ftruncate(int fd, off_t len)
{
    return truncate_common(fd, len, 0);
}

int ftruncate64(int fd, off64_t len)
{
    return truncate_common(fd, len, 1);
}
