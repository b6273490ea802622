/*
 * fault_test.c - qdup-fault-test: makes the machine fail under qdup-index and
 * qdup-daemon, one I/O call at a time, and checks that nothing acknowledged is lost.
 *
 *   qdup-fault-test [--scenario index|daemon|diskfull|all] [--stride S] ...
 *
 * The faults come from libqdup-faultio.so (tools/faultio.c), preloaded into the
 * program under test: the Nth write, pwrite, fsync, fdatasync, rename, open or
 * ftruncate on the store's files fails with ENOSPC or EIO ("enospc", "eio": that call
 * only), every call from the Nth on fails with ENOSPC ("full": the disk fills up), or
 * the power goes at the Nth call ("powercut": every file back to its last fsync, the
 * process killed).
 *
 * Sweeps (--scenario index, daemon). An operation is first run without a fault with
 * the interposer logging its matching calls, which gives their number C; then, for N
 * = 1, 1 + S, 1 + 2S, ... up to C and every fault kind (each N takes the kinds in turn
 * unless --all-kinds), the store is put back as it was, the operation is run with call
 * N failing, and once the fault is gone the store is checked:
 *   - index: `qdup-index add`, `remove`, `build` (over the existing index),
 *     `compact` and `reembed` (to a second model: the fixture's weights perturbed).
 *     Each is one transaction: afterwards the store holds exactly what it held before
 *     or exactly what an unfaulted run leaves (its questions and the model in force),
 *     and the latter whenever the command said it succeeded (exit status 0).
 *   - daemon: the daemon starts on the store, gets adds and removes one at a time
 *     (each with the client, `qdup`), a query, and SIGTERM (which checkpoints), so that
 *     the calls cover a start-up, commits, a checkpoint and a shutdown. An
 *     acknowledged write must be there afterwards; a write refused `unavailable` must
 *     not ("nothing was written"); no other error code is acceptable; while a fault
 *     refuses writes, queries must still be answered. A daemon may refuse to start
 *     while the fault is there; it must start once the fault is gone.
 * In both, afterwards `qdup-index verify --reencode` must pass (every stored vector
 * the encoding of its text by the model in force). A fault between the FAISS file's
 * rename and the database's record of it leaves a FAISS file the database does not
 * vouch for (the documented window of qd_store_install and of checkpoints): counted,
 * repaired with `verify --repair` as an operator would, and verified again.
 *
 * Read-only filesystem (--scenario readonly): after a clean stop, and after a SIGKILL,
 * the store's filesystem refuses writing (EROFS); the daemon must start read-only,
 * serve every acknowledged question, refuse an add `unavailable`, and take writes again
 * once the filesystem is writable.
 *
 * Disk full (--scenario diskfull), the operator's story of issue 15 with the
 * interposer's switch file in place of a small tmpfs (or, with --fs-dir, on a real small
 * filesystem that a ballast file fills; the test mounts nothing): adds stream to the daemon; the
 * disk fills (every write to the store's files fails from then on); further adds are
 * refused `unavailable` while queries go on; the daemon is killed with SIGKILL and
 * restarted with the disk still full: it must start, serve queries and report
 * checkpoint_failing in stats; then the space comes back: writes resume, the
 * checkpoint catches up, and every acknowledged add is there.
 *
 * The last line is the summary:
 *   RESULT runs=212 faults=... acknowledged=... lost=0 ... status=ok
 * Exit status 0 when every check passed, 1 otherwise, 2 for bad usage. Programs and
 * the interposer come from the directory of this one (or --bin); the model is the
 * test fixture fwd_plain.qdm unless --model says otherwise.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "qdup/common.h"

#include "harness.h"

#ifndef QDUP_FAULT_MODEL
#define QDUP_FAULT_MODEL "tests/fixtures/fwd_plain.qdm"
#endif

#define DEADLINE 60.0 /* seconds: only a hung program gets near it */

/* --- options and counters --------------------------------------------------------------- */

typedef struct cfg {
    char bin[PATH_MAX];   /* directory of qdup-index, qdup-daemon, qdup, the interposer */
    char model[PATH_MAX]; /* model file */
    char dir[PATH_MAX];   /* work directory */
    int dir_given;        /* --dir given (kept) */
    int keep;             /* --keep */
    char scenario[32];    /* index, daemon, diskfull or all */
    long stride;          /* step between the calls failed */
    int all_kinds;        /* every kind of fault at every N */
    size_t rows;          /* questions in the initial store */
    int verbose;          /* a line per run */
    long only;            /* --only N: fail only call N (0: sweep) */
    char fs_dir[PATH_MAX]; /* --fs-dir: a small real filesystem for diskfull ("": none) */
    long long room;       /* --room: bytes left free when it fills */
    int kind;             /* --kind: only this kind (-1: all) */
} cfg;

static cfg C;

typedef struct tally {
    uint64_t runs;            /* operations run with a fault armed */
    uint64_t fired;           /* of them, where the fault happened */
    uint64_t by_kind[4];      /* runs per fault kind */
    uint64_t cmd_ok;          /* faulted runs that still reported success */
    uint64_t acked;           /* writes acknowledged under a fault */
    uint64_t refused;         /* writes refused `unavailable` */
    uint64_t sync_failed;     /* daemon runs whose fault was a failed sync of the WAL: a
                                 refused write's outcome is unknown */
    uint64_t unknown;         /* writes unanswered (the process died) */
    uint64_t lost;            /* acknowledged writes missing, refused ones present */
    uint64_t torn;            /* stores holding neither the old nor the new state */
    uint64_t startup_refused; /* daemon start-ups that failed while the fault was armed */
    uint64_t restart_failed;  /* start-ups that failed once the fault was gone */
    uint64_t reads_failed;    /* queries that failed while writes were refused */
    uint64_t bad_code;        /* error replies with a code other than unavailable */
    uint64_t verify_failed;   /* verify failures (after any repair) */
    uint64_t repaired;        /* stale FAISS files repaired (the documented window) */
} tally;

static tally T;

/* --- faults ------------------------------------------------------------------------------ */

enum { F_ENOSPC, F_EIO, F_FULL, F_POWERCUT, F_KINDS };
static const char *const kind_name[F_KINDS] = {"enospc", "eio", "full", "powercut"};

/* One armed fault: kind, which call (0: none, only logging), and an optional switch
 * file (the fault applies only while it exists). */
typedef struct fault {
    int kind;
    long n;
    const char *sw;
} fault;

/* Sets the environment of the next spawned program: the interposer on the work
 * directory's store files, logging to `log`. NULL f clears it all. */
static void fault_env(const fault *f, const char *log)
{
    static const char *const vars[] = {"LD_PRELOAD", "QDUP_FAULT_PATH", "QDUP_FAULT_N",
                                       "QDUP_FAULT_MODE", "QDUP_FAULT_ERRNO",
                                       "QDUP_FAULT_SWITCH", "QDUP_FAULT_LOG"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
        unsetenv(vars[i]);
    if (!f)
        return;
    char n[32], prefix[PATH_MAX + 8];
    snprintf(n, sizeof n, "%ld", f->n);
    /* The store's directory: its files, the temporary ones beside them, and the
     * directory itself (fsynced after renames). */
    snprintf(prefix, sizeof prefix, "%s/store", C.dir);
    setenv("LD_PRELOAD", path_in(C.bin, "libqdup-faultio.so"), 1);
    setenv("QDUP_FAULT_PATH", prefix, 1);
    setenv("QDUP_FAULT_N", n, 1);
    setenv("QDUP_FAULT_MODE", f->kind == F_FULL ? "sticky" : f->kind == F_POWERCUT ? "powercut"
                                                                                 : "once", 1);
    setenv("QDUP_FAULT_ERRNO", f->kind == F_EIO ? "EIO" : "ENOSPC", 1);
    if (f->sw)
        setenv("QDUP_FAULT_SWITCH", f->sw, 1);
    if (log)
        setenv("QDUP_FAULT_LOG", log, 1);
}

/* Lines of a call log, and whether a fault fired in it. */
static long log_calls(const char *log, int *fired)
{
    size_t len;
    char *b = slurp(log, &len);
    long n = 0;
    if (fired)
        *fired = 0;
    for (size_t i = 0; b && i < len; i++)
        n += b[i] == '\n';
    if (b && fired)
        *fired = strstr(b, " FAIL\n") != NULL || strstr(b, " POWERCUT\n") != NULL;
    free(b);
    return n;
}

/* 1 if the first call failed in a call log is a sync of SQLite's WAL: a commit whose
 * frames were written but not synced. The store reports the write unavailable, yet the
 * frames may be found by the WAL's recovery at the next start (unless a later commit
 * overwrote them first): its outcome is unknown, as for a write unanswered at a crash,
 * and SQLite cannot tell which (nor can anyone, after a failed fsync). */
static int first_fail_is_wal_sync(const char *log)
{
    char *b = slurp(log, NULL);
    if (!b)
        return 0;
    int r = 0;
    for (char *line = b, *nl; *line; line = nl + 1) {
        nl = strchr(line, '\n');
        if (!nl)
            break;
        *nl = '\0';
        if (strstr(line, " FAIL")) {
            r = (strstr(line, " fsync ") || strstr(line, " fdatasync ")) &&
                strstr(line, "-wal FAIL");
            break;
        }
    }
    free(b);
    return r;
}

/* --- files and programs ---------------------------------------------------------------- */

/* A path under the work directory in a local array (path_in's buffers rotate: a
 * pointer kept across other calls would come to name another file). */
#define LOCAL_PATH(var, name)                                                           \
    char var[PATH_MAX + 64];                                                           \
    snprintf(var, sizeof var, "%s/%s", C.dir, name)

static const char *prog(const char *name)
{
    return path_in(C.bin, name);
}

static int run(char *const argv[], const char *in, const char *out, const char *err)
{
    return wait_status(spawn(argv, in, out, err));
}

static const char *const store_sfx[] = {"", "-wal", "-shm", ".faiss", ".lock"};
#define NSFX (sizeof store_sfx / sizeof store_sfx[0])

/* Copies a file (a missing source removes the target). */
static void copy_file(const char *from, const char *to)
{
    size_t len;
    char *b = slurp(from, &len);
    unlink(to);
    if (!b)
        return;
    FILE *f = fopen(to, "wb");
    if (!f || fwrite(b, 1, len, f) != len || fclose(f) != 0)
        die("%s: %s", to, strerror(errno));
    free(b);
}

/* Copies the store db's files to db2 (both closed). */
static void copy_store(const char *db, const char *db2)
{
    char a[PATH_MAX + 16], b[PATH_MAX + 16];
    for (size_t i = 0; i < NSFX; i++) {
        snprintf(a, sizeof a, "%s%s", db, store_sfx[i]);
        snprintf(b, sizeof b, "%s%s", db2, store_sfx[i]);
        copy_file(a, b);
    }
}

/* Removes the store's files and any temporary files beside it. */
static void clear_store(const char *db)
{
    char p[PATH_MAX + 16];
    for (size_t i = 0; i < NSFX; i++) {
        snprintf(p, sizeof p, "%s%s", db, store_sfx[i]);
        unlink(p);
    }
}

/* Question k's text: words of the fixture model's vocabulary ("w2".."w39"), distinct
 * for every k below 38^4. */
static void text_of(uint64_t k, char *buf, size_t len)
{
    uint64_t x = (k * 7919ULL + 104729ULL) % 2085136ULL; /* 38^4 */
    size_t n = 0;
    for (int i = 0; i < 4; i++, x /= 38)
        n += (size_t)snprintf(buf + n, len - n, "%sw%u", i ? " " : "", (unsigned)(2 + x % 38));
    snprintf(buf + n, len - n, " w%u", (unsigned)(2 + k % 38));
}

/* Builds a store at db from the dump `tsv` of C.rows questions b<k> it writes. */
static void build_base(const char *db, const char *tsv)
{
    write_dump(tsv, "b", 0, C.rows, text_of);
    clear_store(db);
    char *argv[] = {(char *)prog("qdup-index"), "build", "--model", C.model, "--db", (char *)db,
                    "--quiet", (char *)tsv, NULL};
    fault_env(NULL, NULL);
    if (run(argv, NULL, NULL, path_in(C.dir, "index.log")) != 0)
        die("qdup-index build failed (log %s)", path_in(C.dir, "index.log"));
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The store's live questions as one string ("id\ttext\n" sorted by id), from
 * `qdup-index export` without any fault; NULL if the export failed. */
static char *store_content(const char *db)
{
    LOCAL_PATH(out, "export.jsonl");
    LOCAL_PATH(info, "info.json");
    char *argv[] = {(char *)prog("qdup-index"), "export", "--db", (char *)db, "--out",
                    (char *)out, NULL};
    char *iargv[] = {(char *)prog("qdup-index"), "info", "--json", "--db", (char *)db, NULL};
    fault_env(NULL, NULL);
    if (run(argv, NULL, NULL, path_in(C.dir, "index.log")) != 0 ||
        run(iargv, NULL, info, path_in(C.dir, "index.log")) != 0)
        return NULL;
    /* The model in force is part of the content: reembed changes only it (and the
     * vectors, which verify --reencode checks against it). */
    char *itext = slurp(info, NULL);
    json_t *ij = itext ? json_loads(itext, 0, NULL) : NULL;
    const char *fp = json_string_value(json_object_get(ij, "model_fingerprint"));
    char model_line[64];
    snprintf(model_line, sizeof model_line, "model %s\n", fp ? fp : "?");
    json_decref(ij);
    free(itext);
    FILE *f = fopen(out, "r");
    if (!f)
        return NULL;
    char **v = NULL, *line = NULL;
    size_t n = 0, cap = 0, lcap = 0, total = 1;
    ssize_t len;
    while ((len = getline(&line, &lcap, f)) > 0) {
        json_t *j = json_loadb(line, (size_t)len, 0, NULL);
        const char *id = json_string_value(json_object_get(j, "id"));
        const char *tx = json_string_value(json_object_get(j, "text"));
        if (id && tx) {
            if (n == cap) {
                cap = cap ? 2 * cap : 256;
                v = realloc(v, cap * sizeof *v);
                if (!v)
                    die("out of memory");
            }
            if (asprintf(&v[n], "%s\t%s\n", id, tx) < 0)
                die("out of memory");
            total += strlen(v[n++]);
        }
        json_decref(j);
    }
    free(line);
    fclose(f);
    qsort(v, n, sizeof *v, cmp_str);
    char *s = malloc(total + strlen(model_line));
    if (!s)
        die("out of memory");
    strcpy(s, model_line);
    for (size_t i = 0, off = strlen(model_line); i < n; i++) {
        size_t l = strlen(v[i]);
        memcpy(s + off, v[i], l + 1);
        off += l;
        free(v[i]);
    }
    free(v);
    return s;
}

/* verify, with --repair in the documented stale-FAISS window; counts the outcome. */
static void verify_store(const char *db, const char *what)
{
    LOCAL_PATH(out, "verify.out");
    /* --reencode: every stored vector is the model's in force (a switch of model cut
     * short must not leave vectors of two). */
    char *argv[] = {(char *)prog("qdup-index"), "verify", "--reencode", "--db", (char *)db,
                    NULL, NULL};
    fault_env(NULL, NULL);
    if (run(argv, NULL, out, out) == 0)
        return;
    if (file_has_from(out, 0, "not the checkpoint") ||
        file_has_from(out, 0, "records no checkpoint")) {
        T.repaired++;
        argv[5] = "--repair";
        run(argv, NULL, out, out);
        argv[5] = NULL;
        if (run(argv, NULL, out, out) == 0)
            return;
    }
    T.verify_failed++;
    char *report = slurp(out, NULL);
    failf("%s: verify failed: %s", what, report ? report : "(no output)");
    free(report);
}

/* --- sweeping ----------------------------------------------------------------------- */

/* One case of a sweep: run the operation under f (its calls logged to log), then
 * check the store with no fault; `what` names the case for messages. */
typedef void (*case_fn)(const fault *f, const char *log, const char *what, void *ctx);

/* Runs `one` for N = 1, 1 + stride, ... up to calls (or only --only), each N with the
 * next kind of fault in turn (or every kind, or --kind's), counting the runs. */
static void sweep(const char *name, long calls, const char *log, case_fn one, void *ctx)
{
    int turn = 0;
    uint64_t runs0 = T.runs;
    long first = C.only ? C.only : 1, last = C.only ? C.only : calls;
    for (long n = first; n <= last; n += C.stride) {
        for (int k = 0; k < F_KINDS; k++) {
            fault f = {C.kind >= 0 ? C.kind : C.all_kinds ? k : turn++ % F_KINDS, n, NULL};
            char what[128];
            snprintf(what, sizeof what, "%s, %s at call %ld of %ld", name, kind_name[f.kind],
                     n, calls);
            unlink(log);
            one(&f, log, what, ctx);
            int fired;
            log_calls(log, &fired);
            T.runs++;
            T.by_kind[f.kind]++;
            T.fired += fired;
            if (C.verbose)
                fprintf(stderr, "%s: %s\n", what, fired ? "fired" : "not reached");
            if (!C.all_kinds)
                break;
        }
    }
    printf("%s: %ld matching I/O calls, %" PRIu64 " faulted runs\n", name, calls,
           T.runs - runs0);
    fflush(stdout);
}

/* --- the index sweep ------------------------------------------------------------------- */

typedef struct index_op {
    const char *name; /* for messages */
    char *argv[12];   /* the command (NULL-terminated) */
} index_op;

/* Runs op on a copy of the snapshot `snap` at db under fault f (logging to log); its
 * exit status. */
static int run_index_op(const index_op *op, const char *snap, const char *db,
                        const fault *f, const char *log)
{
    clear_store(db);
    copy_store(snap, db);
    unlink(log);
    fault_env(f, log);
    int st = run(op->argv, NULL, NULL, path_in(C.dir, "op.log"));
    fault_env(NULL, NULL);
    return st;
}

/* What an index case needs: the operation, the snapshot and the store, and the
 * store's content before and after an unfaulted run. */
typedef struct index_case {
    const index_op *op;
    const char *snap, *db;
    const char *before, *after;
} index_case;

static void index_one(const fault *f, const char *log, const char *what0, void *ctx)
{
    const index_case *c = ctx;
    int st = run_index_op(c->op, c->snap, c->db, f, log);
    T.cmd_ok += st == 0;
    char what[160];
    snprintf(what, sizeof what, "%s (exit %d)", what0, st);
    char *now = store_content(c->db);
    if (!now) {
        T.restart_failed++;
        failf("%s: the store cannot be opened once the fault is gone", what);
    } else if (strcmp(now, c->after) != 0 && (st == 0 || strcmp(now, c->before) != 0)) {
        if (st == 0) {
            T.lost++;
            failf("%s: it reported success, the store does not hold its result", what);
        } else {
            T.torn++;
            failf("%s: the store holds neither the old nor the new questions", what);
        }
    }
    free(now);
    verify_store(c->db, what);
}

static void sweep_index_op(const index_op *op, const char *snap, const char *db)
{
    LOCAL_PATH(log, "calls.log");
    fault clean = {F_ENOSPC, 0, NULL};
    if (run_index_op(op, snap, db, &clean, log) != 0)
        die("%s without a fault failed (log %s)", op->name, path_in(C.dir, "op.log"));
    long calls = log_calls(log, NULL);
    char *after = store_content(db);
    clear_store(db);
    copy_store(snap, db);
    char *before = store_content(db);
    if (!after || !before)
        die("%s: cannot export the store", op->name);
    if (strcmp(before, after) == 0 && strcmp(op->name, "compact") != 0)
        die("%s changes nothing: the test would prove nothing", op->name);
    index_case ic = {op, snap, db, before, after};
    char name[64];
    snprintf(name, sizeof name, "index %s", op->name);
    sweep(name, calls, log, index_one, &ic);
    free(before);
    free(after);
}

static void index_scenario(void)
{
    char snap[PATH_MAX + 16], db[PATH_MAX + 16];
    snprintf(snap, sizeof snap, "%s", path_in(C.dir, "snap.db"));
    snprintf(db, sizeof db, "%s", path_in(C.dir, "store/s.db"));
    LOCAL_PATH(base, "base.tsv");
    char add[PATH_MAX + 16], gen[PATH_MAX + 16];
    snprintf(add, sizeof add, "%s", path_in(C.dir, "add.tsv"));
    snprintf(gen, sizeof gen, "%s", path_in(C.dir, "gen.tsv"));
    write_dump(add, "a", 100000, 100000 + C.rows / 4 + 1, text_of);
    write_dump(gen, "g", 200000, 200000 + C.rows / 2 + 1, text_of);
    build_base(snap, base);
    /* Tombstones for compact to delete. */
    char *rargv[] = {(char *)prog("qdup-index"), "remove", "--db", snap, "--quiet", "b1", "b2",
                     "b3", NULL};
    if (run(rargv, NULL, NULL, path_in(C.dir, "index.log")) != 0)
        die("qdup-index remove failed (log %s)", path_in(C.dir, "index.log"));

    char ix[PATH_MAX + 16]; /* a copy: path_in's buffers rotate */
    snprintf(ix, sizeof ix, "%s", prog("qdup-index"));
    char second[PATH_MAX + 16];
    snprintf(second, sizeof second, "%s", path_in(C.dir, "second.qdm"));
    make_second_model(C.model, second);
    index_op ops[] = {
        {"add", {ix, "add", "--db", db, "--quiet", add, NULL}},
        {"remove", {ix, "remove", "--db", db, "--quiet", "b4", "b5", "b6", NULL}},
        {"build", {ix, "build", "--model", C.model, "--db", db, "--quiet", gen, NULL}},
        {"compact", {ix, "compact", "--db", db, NULL}},
        {"reembed", {ix, "reembed", "--db", db, "--quiet", "--model", second, NULL}},
    };
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
        sweep_index_op(&ops[i], snap, db);
}

/* --- the daemon ------------------------------------------------------------------------ */

typedef struct daemon {
    pid_t pid;                /* running, or -1 */
    char db[PATH_MAX + 16];   /* its store */
    char sock[PATH_MAX + 16]; /* its socket */
    char log[PATH_MAX + 16];  /* its log (appended) */
} daemon_t;

/* The daemon running now, killed at exit so that a failing run leaves none behind. */
static pid_t live_pid = -1;

static void kill_live(void)
{
    if (live_pid > 0) {
        kill(live_pid, SIGKILL);
        waitpid(live_pid, NULL, 0);
        live_pid = -1;
    }
}

/* Starts the daemon (under whatever fault_env set) and waits for "listening on": 0,
 * or -1 if it exited first. */
static int daemon_start(daemon_t *d, const char *ckpt)
{
    char *argv[] = {(char *)prog("qdup-daemon"), "--db", d->db, "--socket", d->sock,
                    "--threads", "2", "--checkpoint-interval", (char *)ckpt, NULL};
    struct stat st;
    long from = stat(d->log, &st) == 0 ? (long)st.st_size : 0;
    d->pid = live_pid = spawn(argv, NULL, NULL, d->log);
    if (wait_listening(d->pid, d->log, from, d->sock, DEADLINE) != 0) {
        d->pid = live_pid = -1;
        return -1;
    }
    return 0;
}

/* Stops the daemon with sig and reaps it: its exit status (128 + signal if killed). */
static int daemon_stop(daemon_t *d, int sig)
{
    if (d->pid <= 0)
        return -1;
    kill(d->pid, sig);
    int st = wait_status(d->pid);
    d->pid = live_pid = -1;
    return st;
}

/* One request through the client (`qdup --json`): 0 and the reply (*reply, to
 * json_decref) if the daemon answered, -1 if it could not be reached or died. */
static int ask(daemon_t *d, char *const args[], json_t **reply)
{
    char *argv[16] = {(char *)prog("qdup"), "--socket", d->sock, "--json", "--timeout", "20"};
    size_t n = 6;
    for (size_t i = 0; args[i] && n < 15; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    LOCAL_PATH(out, "reply.json");
    fault_env(NULL, NULL);
    int st = run(argv, NULL, out, path_in(C.dir, "client.log"));
    *reply = NULL;
    if (st == 2)
        return -1;
    char *b = slurp(out, NULL);
    *reply = b ? json_loads(b, 0, NULL) : NULL;
    free(b);
    return *reply ? 0 : -1;
}

static const char *reply_code(json_t *j)
{
    const char *s = json_string_value(json_object_get(json_object_get(j, "error"), "code"));
    return s ? s : "";
}

/* A write's outcome: 1 acknowledged, 0 refused unavailable, -1 unanswered, -2 another
 * error (counted as a failure). */
static int ask_write(daemon_t *d, char *const args[], const char *what)
{
    json_t *j;
    if (ask(d, args, &j) != 0)
        return -1;
    int r;
    if (json_is_true(json_object_get(j, "ok"))) {
        r = 1;
    } else if (strcmp(reply_code(j), "unavailable") == 0) {
        r = 0;
    } else {
        T.bad_code++;
        failf("%s: error %s: %s", what, reply_code(j),
              json_string_value(json_object_get(json_object_get(j, "error"), "message")));
        r = -2;
    }
    json_decref(j);
    return r;
}

/* 1 if the daemon has question id with text (0 if not found, -1 if no answer). */
static int daemon_has(daemon_t *d, const char *id, const char *text)
{
    char *args[] = {"get", (char *)id, NULL};
    json_t *j;
    if (ask(d, args, &j) != 0)
        return -1;
    int r = 0;
    if (json_is_true(json_object_get(j, "ok"))) {
        const char *got = json_string_value(json_object_get(j, "text"));
        if (!got || strcmp(got, text) != 0)
            failf("%s has text \"%s\", expected \"%s\"", id, got ? got : "", text);
        r = 1;
    } else if (strcmp(reply_code(j), "not_found") != 0) {
        failf("get %s: unexpected %s", id, reply_code(j));
    }
    json_decref(j);
    return r;
}

/* 0 if a query is answered with results. */
static int daemon_query(daemon_t *d)
{
    char *args[] = {"query", "-k", "3", "w5 w6 w7", NULL};
    json_t *j;
    if (ask(d, args, &j) != 0)
        return -1;
    int ok = json_is_true(json_object_get(j, "ok")) &&
             json_array_size(json_object_get(j, "results")) > 0;
    json_decref(j);
    return ok ? 0 : -1;
}

/* --- the daemon sweep ---------------------------------------------------------------- */

#define DW_ADDS 3    /* adds per run */
#define DW_REMOVES 2 /* removes per run */

/* The writes of one run: what each became. */
typedef struct dwrite {
    char id[32];     /* the question */
    char text[128];  /* its text (adds; the stored text for removes) */
    int remove;      /* 1 for a remove */
    int outcome;     /* ask_write's */
} dwrite;

/* One run of the daemon under f: start, writes, a query, SIGTERM. Fills w. */
static void daemon_run(daemon_t *d, const fault *f, const char *log, dwrite *w, size_t nw)
{
    for (size_t i = 0; i < nw; i++)
        w[i].outcome = -1;
    fault_env(f, log);
    int up = daemon_start(d, "3600") == 0;
    fault_env(NULL, NULL);
    if (!up) {
        T.startup_refused++;
        return;
    }
    int refused = 0;
    for (size_t i = 0; i < nw; i++) {
        char *add[] = {"add", w[i].id, w[i].text, NULL};
        char *rm[] = {"remove", w[i].id, NULL};
        w[i].outcome = ask_write(d, w[i].remove ? rm : add, w[i].id);
        if (w[i].outcome == -1)
            break; /* the daemon is gone (a power cut) */
        refused += w[i].outcome == 0;
    }
    if (refused && daemon_query(d) != 0 && kill(d->pid, 0) == 0) {
        /* The daemon is up and refuses writes: reads must still work. */
        T.reads_failed++;
        failf("a query failed while writes were refused (log %s)", d->log);
    }
    daemon_stop(d, SIGTERM);
}

/* After a faulted run, with no fault: start, check every write, stop, verify. */
static void daemon_check(daemon_t *d, const dwrite *w, size_t nw, int sync_failed,
                         const char *what)
{
    if (daemon_start(d, "3600") != 0) {
        T.restart_failed++;
        failf("%s: the daemon does not start once the fault is gone (log %s)", what, d->log);
        return;
    }
    for (size_t i = 0; i < nw; i++) {
        int has = daemon_has(d, w[i].id, w[i].text);
        if (has < 0) {
            failf("%s: the daemon stopped answering (log %s)", what, d->log);
            break;
        }
        int want; /* 1 present, 0 absent, -1 either */
        if (w[i].outcome == 1)
            want = !w[i].remove;
        else if (w[i].outcome == 0 && !sync_failed)
            want = w[i].remove; /* refused: as before */
        else
            want = -1;
        if (want >= 0 && has != want) {
            T.lost++;
            failf("%s: %s of %s was %s, and it is %s", what, w[i].remove ? "remove" : "add",
                  w[i].id, w[i].outcome == 1 ? "acknowledged" : "refused",
                  has ? "there" : "not there");
        }
    }
    int st = daemon_stop(d, SIGTERM);
    if (st != 0)
        failf("%s: the daemon exited with %d on SIGTERM (log %s)", what, st, d->log);
    verify_store(d->db, what);
}

/* What a daemon case needs: the daemon, the snapshot, the writes of a run. */
typedef struct daemon_case {
    daemon_t *d;
    const char *snap;
    dwrite *w;
    size_t nw;
} daemon_case;

static void daemon_one(const fault *f, const char *log, const char *what, void *ctx)
{
    daemon_case *c = ctx;
    clear_store(c->d->db);
    copy_store(c->snap, c->d->db);
    daemon_run(c->d, f, log, c->w, c->nw);
    for (size_t i = 0; i < c->nw; i++) {
        T.acked += c->w[i].outcome == 1;
        T.refused += c->w[i].outcome == 0;
        T.unknown += c->w[i].outcome == -1;
    }
    int sync_failed = first_fail_is_wal_sync(log);
    T.sync_failed += sync_failed;
    daemon_check(c->d, c->w, c->nw, sync_failed, what);
}

static void daemon_scenario(void)
{
    char snap[PATH_MAX + 16];
    snprintf(snap, sizeof snap, "%s", path_in(C.dir, "dsnap.db"));
    daemon_t d = {.pid = -1};
    snprintf(d.db, sizeof d.db, "%s", path_in(C.dir, "store/s.db"));
    snprintf(d.sock, sizeof d.sock, "%s", path_in(C.dir, "d.sock"));
    snprintf(d.log, sizeof d.log, "%s", path_in(C.dir, "daemon.log"));
    LOCAL_PATH(base, "dbase.tsv");
    build_base(snap, base);

    dwrite w[DW_ADDS + DW_REMOVES];
    size_t nw = 0;
    for (int i = 0; i < DW_ADDS; i++, nw++) {
        memset(&w[nw], 0, sizeof w[nw]);
        snprintf(w[nw].id, sizeof w[nw].id, "d%d", i);
        text_of(300000 + (uint64_t)i, w[nw].text, sizeof w[nw].text);
        /* A remove after each add but the last. */
        if (i < DW_REMOVES) {
            nw++;
            memset(&w[nw], 0, sizeof w[nw]);
            snprintf(w[nw].id, sizeof w[nw].id, "b%d", 7 + i);
            text_of(7 + (uint64_t)i, w[nw].text, sizeof w[nw].text);
            w[nw].remove = 1;
        }
    }

    LOCAL_PATH(log, "calls.log");
    clear_store(d.db);
    copy_store(snap, d.db);
    unlink(log);
    fault clean = {F_ENOSPC, 0, NULL};
    daemon_run(&d, &clean, log, w, nw);
    for (size_t i = 0; i < nw; i++)
        if (w[i].outcome != 1)
            die("daemon: write %s without a fault was not acknowledged (log %s)", w[i].id,
                d.log);
    long calls = log_calls(log, NULL);
    daemon_case dc = {&d, snap, w, nw};
    sweep("daemon", calls, log, daemon_one, &dc);
}

/* --- the disk-full story --------------------------------------------------------------- */

/* The daemon's stats reply (NULL if none). */
static json_t *daemon_stats(daemon_t *d)
{
    char *args[] = {"stats", NULL};
    json_t *j;
    return ask(d, args, &j) == 0 ? j : NULL;
}

/* Waits up to secs for stats' checkpoint_failing to be `want`: 1 if it came. */
static int wait_checkpoint_failing(daemon_t *d, int want, double secs)
{
    double end = qd_now() + secs;
    do {
        json_t *j = daemon_stats(d);
        json_t *f = json_object_get(json_object_get(j, "stats"), "checkpoint_failing");
        int v = json_is_true(f), present = f != NULL;
        json_decref(j);
        if (present && v == want)
            return 1;
        sleep_s(0.05);
    } while (qd_now() < end);
    return 0;
}

/* How the disk fills and empties: the interposer's switch file, or (--fs-dir) a real
 * small filesystem filled with a ballast file up to C.room free bytes. */
typedef struct disk {
    char sw[PATH_MAX + 16];      /* the switch file (interposer) */
    char ballast[PATH_MAX + 16]; /* the ballast file (real filesystem) */
    int real;                    /* 1 on a real filesystem */
} disk_t;

static void disk_fill(const disk_t *k)
{
    if (!k->real) {
        FILE *f = fopen(k->sw, "w");
        if (f)
            fclose(f);
        return;
    }
    /* Fill to the last byte, then give back C.room bytes. */
    int fd = open(k->ballast, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        die("%s: %s", k->ballast, strerror(errno));
    static char block[65536];
    ssize_t w;
    while ((w = write(fd, block, sizeof block)) > 0)
        ;
    int e = errno;
    off_t size = lseek(fd, 0, SEEK_END);
    close(fd);
    if (w < 0 && e != ENOSPC)
        die("%s: %s", k->ballast, strerror(e));
    if (truncate(k->ballast, size > C.room ? size - C.room : 0) != 0)
        die("%s: %s", k->ballast, strerror(errno));
}

static void disk_free(const disk_t *k)
{
    unlink(k->real ? k->ballast : k->sw);
}

/* The daemon on the disk: under the interposer (switch mode) or as it is. */
static int disk_daemon_start(const disk_t *k, daemon_t *d, const char *ckpt)
{
    fault full = {F_FULL, 1, k->sw};
    fault_env(k->real ? NULL : &full, NULL);
    int up = daemon_start(d, ckpt) == 0;
    fault_env(NULL, NULL);
    return up;
}

/* One add of question f<i>: ask_write's outcome. */
static int diskfull_add(daemon_t *d, int i)
{
    char id[32], text[128];
    snprintf(id, sizeof id, "f%d", i);
    text_of(400000 + (uint64_t)i, text, sizeof text);
    char *args[] = {"add", id, text, NULL};
    return ask_write(d, args, id);
}

static void diskfull_scenario(void)
{
    daemon_t d = {.pid = -1};
    disk_t k = {.real = C.fs_dir[0] != '\0'};
    const char *root = k.real ? C.fs_dir : C.dir;
    if (k.real && mkdir(path_in(root, "store"), 0700) != 0 && errno != EEXIST)
        die("%s: %s", path_in(root, "store"), strerror(errno));
    snprintf(d.db, sizeof d.db, "%s", path_in(root, "store/s.db"));
    snprintf(d.sock, sizeof d.sock, "%s", path_in(C.dir, "full.sock"));
    snprintf(d.log, sizeof d.log, "%s", path_in(C.dir, "full.log"));
    snprintf(k.sw, sizeof k.sw, "%s", path_in(C.dir, "disk-is-full"));
    snprintf(k.ballast, sizeof k.ballast, "%s", path_in(root, "ballast"));
    disk_free(&k);
    LOCAL_PATH(base, "fbase.tsv");
    build_base(d.db, base);

    enum { MAX_ADDS = 20000 };
    static int state[MAX_ADDS]; /* 1 acknowledged, 0 refused, -1 unanswered */
    int n = 0, refused_full = 0, acked_full = 0;
    /* No periodic checkpoint in the first run: the adds before the disk fills stay out
     * of the FAISS file, so the restart must replay them and its checkpoint meets the
     * full disk (the outage of issue 15). */
    if (!disk_daemon_start(&k, &d, "3600"))
        die("diskfull: the daemon did not start (log %s)", d.log);
    /* Room on the disk: every add is acknowledged. */
    for (; n < 20; n++)
        if ((state[n] = diskfull_add(&d, n)) != 1)
            failf("diskfull: add f%d with room on the disk was not acknowledged", n);
    /* The disk fills: adds are refused unavailable (on a real disk, once what little
     * room is left has gone), and the daemon stays up. */
    disk_fill(&k);
    while (n < MAX_ADDS && refused_full < 20) {
        state[n] = diskfull_add(&d, n);
        refused_full += state[n] == 0;
        acked_full += state[n] == 1;
        if (state[n] != 0 && (!k.real || state[n] != 1))
            failf("diskfull: add f%d with the disk full was not refused unavailable", n);
        if (state[n] == -1)
            break;
        n++;
    }
    if (refused_full < 20)
        failf("diskfull: %d adds refused after %d with the disk full", refused_full, n);
    if (daemon_query(&d) != 0)
        failf("diskfull: a query failed while the disk was full");
    json_t *st = daemon_stats(&d);
    if (json_integer_value(json_object_get(json_object_get(st, "stats"), "unsaved_changes")) < 1)
        failf("diskfull: stats report no changes outside the FAISS file");
    json_decref(st);
    /* On a real disk the FAISS file fits in what is left only if it is small. */
    int expect_failing = !k.real || C.rows >= 1000;
    /* SIGKILL, and start again on the full disk, checkpointing every 0.1 s. */
    daemon_stop(&d, SIGKILL);
    if (!disk_daemon_start(&k, &d, "0.1")) {
        T.restart_failed++;
        failf("diskfull: the daemon did not start with the disk still full (log %s)", d.log);
        disk_free(&k);
        return;
    }
    if (daemon_query(&d) != 0)
        failf("diskfull: no query answered after the restart on a full disk");
    if (expect_failing && !wait_checkpoint_failing(&d, 1, 10))
        failf("diskfull: after the restart, stats do not report checkpoint_failing");
    for (int i = 0; i < 10 && n < MAX_ADDS; i++, n++) {
        state[n] = diskfull_add(&d, n);
        refused_full += state[n] == 0;
        acked_full += state[n] == 1;
        if (state[n] != 0 && (!k.real || state[n] != 1))
            failf("diskfull: add f%d after the restart on the full disk was not refused "
                  "unavailable", n);
    }
    /* The space comes back: writes resume, the checkpoint catches up. */
    disk_free(&k);
    for (int i = 0; i < 10 && n < MAX_ADDS; i++, n++)
        if ((state[n] = diskfull_add(&d, n)) != 1)
            failf("diskfull: add f%d once the space came back was not acknowledged", n);
    if (!wait_checkpoint_failing(&d, 0, 20))
        failf("diskfull: the checkpoint did not recover once the space came back");
    if (daemon_stop(&d, SIGTERM) != 0)
        failf("diskfull: the daemon did not stop cleanly (log %s)", d.log);
    /* Nothing acknowledged is lost, nothing refused is there. */
    fault_env(NULL, NULL);
    if (daemon_start(&d, "3600") != 0) {
        T.restart_failed++;
        failf("diskfull: the daemon does not start at the end (log %s)", d.log);
        return;
    }
    uint64_t acked = 0, refused = 0;
    for (int i = 0; i < n; i++) {
        char id[32], text[128];
        snprintf(id, sizeof id, "f%d", i);
        text_of(400000 + (uint64_t)i, text, sizeof text);
        int has = daemon_has(&d, id, text);
        acked += state[i] == 1;
        refused += state[i] == 0;
        if ((state[i] == 1 && has != 1) || (state[i] == 0 && has != 0)) {
            T.lost++;
            failf("diskfull: %s was %s and is %s", id, state[i] ? "acknowledged" : "refused",
                  has ? "there" : "not there");
        }
    }
    if (daemon_stop(&d, SIGTERM) != 0)
        failf("diskfull: the daemon did not stop cleanly (log %s)", d.log);
    verify_store(d.db, "diskfull");
    T.acked += acked;
    T.refused += refused;
    printf("diskfull%s: %" PRIu64 " adds acknowledged (%d of them after the disk filled), %"
           PRIu64 " refused unavailable; SIGKILL and restart on the full disk: %s\n",
           k.real ? " (a real filesystem)" : "", acked, acked_full, refused,
           T.restart_failed ? "FAILED" : "served");
    fflush(stdout);
}

/* --- the read-only filesystem ----------------------------------------------------------- */

/* The store's filesystem becomes read-only (EROFS for every open for writing), after a
 * clean stop or after a SIGKILL: the daemon must start, serve reads, refuse writes
 * `unavailable`, and, once the filesystem is writable again, take writes with nothing
 * lost. */
static void readonly_case(daemon_t *d, int killed, const char *what)
{
    enum { ADDS = 5 };
    char id[32], text[128];
    fault_env(NULL, NULL);
    if (daemon_start(d, "3600") != 0)
        die("%s: the daemon did not start (log %s)", what, d->log);
    int acked[ADDS];
    for (int i = 0; i < ADDS; i++) {
        snprintf(id, sizeof id, "%s%d", killed ? "k" : "c", i);
        text_of(500000 + (uint64_t)(killed * ADDS + i), text, sizeof text);
        char *args[] = {"add", id, text, NULL};
        acked[i] = ask_write(d, args, id) == 1;
        if (!acked[i])
            failf("%s: add %s not acknowledged", what, id);
    }
    daemon_stop(d, killed ? SIGKILL : SIGTERM);

    /* Every call from the first on, with EROFS: the interposer then refuses opens for
     * writing and writes, as a read-only mount does. */
    fault ro = {F_FULL, 1, NULL};
    fault_env(&ro, NULL);
    setenv("QDUP_FAULT_ERRNO", "EROFS", 1);
    int up = daemon_start(d, "0.1") == 0;
    fault_env(NULL, NULL);
    if (!up) {
        T.restart_failed++;
        failf("%s: the daemon does not start on the read-only filesystem (log %s)", what,
              d->log);
        return;
    }
    for (int i = 0; i < ADDS; i++) {
        snprintf(id, sizeof id, "%s%d", killed ? "k" : "c", i);
        text_of(500000 + (uint64_t)(killed * ADDS + i), text, sizeof text);
        if (acked[i] && daemon_has(d, id, text) != 1) {
            T.lost++;
            failf("%s: %s was acknowledged and is not served read-only", what, id);
        }
    }
    if (daemon_query(d) != 0) {
        T.reads_failed++;
        failf("%s: no query answered on the read-only filesystem", what);
    }
    char *args[] = {"add", "ro0", "w5 w9 w13", NULL};
    if (ask_write(d, args, "ro0") != 0)
        failf("%s: an add on the read-only filesystem was not refused unavailable", what);
    T.refused++;
    json_t *st = daemon_stats(d);
    if (!json_is_true(json_object_get(json_object_get(st, "stats"), "readonly")))
        failf("%s: stats do not say readonly", what);
    json_decref(st);
    daemon_stop(d, SIGTERM);

    /* Writable again. */
    if (daemon_start(d, "3600") != 0) {
        T.restart_failed++;
        failf("%s: the daemon does not start once the filesystem is writable (log %s)", what,
              d->log);
        return;
    }
    if (ask_write(d, args, "ro0") != 1)
        failf("%s: an add is not acknowledged once the filesystem is writable", what);
    if (daemon_stop(d, SIGTERM) != 0)
        failf("%s: the daemon did not stop cleanly (log %s)", what, d->log);
    verify_store(d->db, what);
    char *rm[] = {(char *)prog("qdup-index"), "remove", "--db", d->db, "--quiet", "ro0", NULL};
    if (run(rm, NULL, NULL, path_in(C.dir, "index.log")) != 0)
        failf("%s: qdup-index remove ro0 failed", what);
}

static void readonly_scenario(void)
{
    daemon_t d = {.pid = -1};
    snprintf(d.db, sizeof d.db, "%s", path_in(C.dir, "store/s.db"));
    snprintf(d.sock, sizeof d.sock, "%s", path_in(C.dir, "ro.sock"));
    snprintf(d.log, sizeof d.log, "%s", path_in(C.dir, "ro.log"));
    LOCAL_PATH(base, "rbase.tsv");
    build_base(d.db, base);
    readonly_case(&d, 0, "readonly after a clean stop");
    readonly_case(&d, 1, "readonly after SIGKILL");
    printf("readonly: the daemon served a read-only store after a clean stop and after "
           "SIGKILL, refusing writes unavailable\n");
    fflush(stdout);
}

/* --- main ------------------------------------------------------------------------------ */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: qdup-fault-test [options]\n\n"
            "Fails the I/O calls of qdup-index and qdup-daemon one at a time (ENOSPC, EIO,\n"
            "a full disk, a power cut) and checks that nothing acknowledged is lost (see\n"
            "the source's header).\n\n"
            "  --scenario S      index, daemon, diskfull, readonly or all (default all)\n"
            "  --stride S        fail every S-th call (default 1: every call)\n"
            "  --all-kinds       every kind of fault at every call (default: in turn)\n"
            "  --kind K          only faults of kind K: enospc, eio, full or powercut\n"
            "  --only N          fail only call N (to look at one case; with --keep)\n"
            "  --fs-dir DIR      diskfull on a small real filesystem mounted at DIR (e.g.\n"
            "                    tmpfs, size=16m) instead of the interposer: a ballast file\n"
            "                    fills it, leaving --room bytes (default 98304)\n"
            "  --rows N          questions in the initial store (default 60)\n"
            "  --bin DIR         where the programs and libqdup-faultio.so are\n"
            "  --model FILE      model (default: the test fixture fwd_plain.qdm)\n"
            "  --dir DIR         work directory (default: a new one under $TMPDIR, removed\n"
            "                    on success)\n"
            "  --keep            keep the work directory\n"
            "  --verbose         a line per run\n");
}

int main(int argc, char **argv)
{
    harness_prog = "qdup-fault-test";
    snprintf(C.scenario, sizeof C.scenario, "all");
    C.stride = 1;
    C.rows = 60;
    C.kind = -1;
    C.room = 96 * 1024;
    static const struct option lo[] = {
        {"scenario", 1, 0, 'S'}, {"stride", 1, 0, 's'}, {"all-kinds", 0, 0, 'a'},
        {"rows", 1, 0, 'r'},     {"bin", 1, 0, 'b'},    {"model", 1, 0, 'M'},
        {"dir", 1, 0, 'd'},      {"keep", 0, 0, 'K'},   {"verbose", 0, 0, 'v'},
        {"only", 1, 0, 'o'},     {"kind", 1, 0, 'k'},   {"fs-dir", 1, 0, 'F'},
        {"room", 1, 0, 'R'},     {"help", 0, 0, 'h'},
        {0, 0, 0, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (ch) {
        case 'S': snprintf(C.scenario, sizeof C.scenario, "%s", optarg); break;
        case 's': C.stride = opt_long("stride", optarg, 1, 1000000); break;
        case 'a': C.all_kinds = 1; break;
        case 'r': C.rows = (size_t)opt_long("rows", optarg, 20, 1000000); break;
        case 'b': snprintf(C.bin, sizeof C.bin, "%s", optarg); break;
        case 'M': snprintf(C.model, sizeof C.model, "%s", optarg); break;
        case 'd': snprintf(C.dir, sizeof C.dir, "%s", optarg); C.dir_given = 1; break;
        case 'K': C.keep = 1; break;
        case 'v': C.verbose = 1; break;
        case 'F': snprintf(C.fs_dir, sizeof C.fs_dir, "%s", optarg); break;
        case 'R': C.room = opt_long("room", optarg, 0, 1L << 40); break;
        case 'o': C.only = opt_long("only", optarg, 1, LONG_MAX); break;
        case 'k':
            for (C.kind = F_KINDS - 1; C.kind >= 0; C.kind--)
                if (strcmp(optarg, kind_name[C.kind]) == 0)
                    break;
            if (C.kind < 0) {
                usage(stderr);
                return 2;
            }
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    int all = strcmp(C.scenario, "all") == 0;
    if (optind < argc || (!all && strcmp(C.scenario, "index") != 0 &&
                          strcmp(C.scenario, "daemon") != 0 &&
                          strcmp(C.scenario, "diskfull") != 0 &&
                          strcmp(C.scenario, "readonly") != 0)) {
        usage(stderr);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    atexit(kill_live);
    harness_setup(C.bin, C.model, QDUP_FAULT_MODEL, C.dir, C.dir_given);
    if (access(path_in(C.bin, "libqdup-faultio.so"), R_OK) != 0)
        die("%s: %s", path_in(C.bin, "libqdup-faultio.so"), strerror(errno));
    if (mkdir(path_in(C.dir, "store"), 0700) != 0 && errno != EEXIST)
        die("%s: %s", path_in(C.dir, "store"), strerror(errno));
    printf("qdup-fault-test --scenario %s --stride %ld%s --rows %zu\nwork directory %s\n",
           C.scenario, C.stride, C.all_kinds ? " --all-kinds" : "", C.rows, C.dir);
    fflush(stdout);

    double t0 = qd_now();
    if (all || strcmp(C.scenario, "index") == 0)
        index_scenario();
    if (all || strcmp(C.scenario, "daemon") == 0)
        daemon_scenario();
    if (all || strcmp(C.scenario, "diskfull") == 0)
        diskfull_scenario();
    if (all || strcmp(C.scenario, "readonly") == 0)
        readonly_scenario();
    int ok = harness_failures == 0 && T.lost == 0;
    printf("RESULT runs=%" PRIu64 " fired=%" PRIu64 " enospc=%" PRIu64 " eio=%" PRIu64
           " full=%" PRIu64 " powercut=%" PRIu64 " reported_ok=%" PRIu64 " acknowledged=%" PRIu64
           " refused=%" PRIu64 " wal_sync_failed=%" PRIu64 " unanswered=%" PRIu64 " lost=%" PRIu64 " torn=%" PRIu64
           " startup_refused=%" PRIu64 " restart_failed=%" PRIu64 " reads_failed=%" PRIu64
           " bad_code=%" PRIu64 " verify_failed=%" PRIu64 " repaired=%" PRIu64
           " failures=%d seconds=%.1f status=%s\n",
           T.runs, T.fired, T.by_kind[F_ENOSPC], T.by_kind[F_EIO], T.by_kind[F_FULL],
           T.by_kind[F_POWERCUT], T.cmd_ok, T.acked, T.refused, T.sync_failed, T.unknown, T.lost, T.torn,
           T.startup_refused, T.restart_failed, T.reads_failed, T.bad_code, T.verify_failed,
           T.repaired, harness_failures, qd_now() - t0, ok ? "ok" : "FAILED");
    if (ok && !C.keep && !C.dir_given)
        remove_tree(C.dir);
    else
        printf("work directory kept: %s\n", C.dir);
    return ok ? 0 : 1;
}
