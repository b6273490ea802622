/*
 * crash_test.c - qdup-crash-test: kills qdup-daemon and qdup-index with SIGKILL at
 * random moments and checks that nothing acknowledged is ever lost.
 *
 *   qdup-crash-test [--kills N] [--index-kills N] [--rows N] [--seed S] ...
 *
 * Daemon phase. A store is built with qdup-index from --rows generated questions.
 * Then, --kills times: the daemon is started on it (checkpointing every 50 ms, 300 ms
 * or 5 s, so that kills also land inside checkpoints), one client streams adds,
 * removes and checks-with-store to it, pipelined (--window requests in flight), and
 * after a random time (uniform up to --max-ms) the daemon gets SIGKILL. One kill in
 * eight instead lands while the daemon is starting up (replaying the rows written
 * after the last checkpoint, or writing the checkpoint that follows). Replies already
 * in the socket when the daemon died still count: the daemon sends one only after the
 * write committed.
 *
 * Every question has one of three states in the test's model: present (its add was
 * acknowledged, or seen stored), gone (its remove was acknowledged, or seen done) and
 * unknown (a write sent but not answered before the kill: it may or may not have
 * committed). After each restart the unknown ones are looked up and settled, and
 * every known one is checked with "get" (texts included): a present question that is
 * missing, or a gone one that is back, is a lost write. After the last kill the daemon
 * is started once more, checked, asked --queries queries, and stopped with SIGTERM;
 * then `qdup-index verify` must pass, `qdup-index export` must list exactly the present
 * questions, and an index built from scratch over the exported rows must answer the
 * same queries with the same ids and scores (up to float rounding: ids whose scores tie
 * within 1e-4 may swap, and the last place may hold any of a tie). No temporary FAISS
 * file of a checkpoint cut short may be left beside the store by then.
 *
 * After every kill, before anything reopens the store, a read-only verify is run too.
 * It may report one thing, counted and printed as a note: a kill between a
 * checkpoint's rename of the FAISS file and the database's record of it leaves a
 * FAISS file the database does not vouch for. The database is the truth and nothing
 * is lost (the next writer, e.g. the daemon starting, rebuilds the index from it), so
 * this is how the store is designed, not a failure.
 *
 * Index phase. --index-kills times each: `qdup-index build` of a new dump over an
 * existing index, and `qdup-index add` of a new dump, killed at a random time up to
 * 1.1 times what an uninterrupted one takes (measured first, then updated from every
 * run that finished before its kill). After a killed build the index must
 * hold exactly the old questions or exactly the new ones; after a killed add, the old
 * ones plus none or all of the added ones; and verify must pass. One window is known
 * and documented (qd_store_install): killed between the database's rename and the
 * FAISS file's, the new database is in place with the old FAISS file, which the
 * database does not vouch for; verify reports it until a writer (`verify --repair`,
 * the daemon, any add) rebuilds it. The same holds for an add killed inside its
 * checkpoint. The test counts these cases, repairs, and verifies again.
 *
 * Reembed phase. A store of --index-rows questions is built with the model and
 * switched back and forth between it and a second model (the first with its weights
 * perturbed, written to the work directory) with `qdup-index reembed`, --reembed-kills
 * times, each killed: at a random time up to 1.1 times an uninterrupted run, or (one
 * round in three each) stopped at a named point of the switch (QDUP_INDEX_TEST_STOP:
 * between two staging chunks, between staging and switch, just before the switch's
 * commit, just after it) and killed there. After each kill one model must be in
 * force (`info`: one of the two fingerprints) and every stored vector must be that
 * model's encoding of its text (`verify --reencode`: a vector of the other model is
 * a mix); a kill after the switch's commit leaves a FAISS file the database does not
 * vouch for (counted; --repair rebuilds it). Finally one run to the end must switch.
 *
 * The last lines are the summary:
 *   RESULT kills=20 acknowledged=5123 lost=0 ... status=ok
 * Exit status 0 when nothing was lost and every check passed, 1 otherwise, 2 for bad
 * usage. Programs come from the directory of this one (or --bin); the model is the
 * test fixture fwd_plain.qdm (vocabulary "w2".."w39") unless --model says otherwise.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "qdup/common.h"
#include "qdup/store.h" /* QD_STORE_SUFFIXES only: this test links no store code */

#include "harness.h"

#ifndef QDUP_CRASH_MODEL
#define QDUP_CRASH_MODEL "tests/fixtures/fwd_plain.qdm"
#endif

#define DEADLINE 120.0 /* seconds: only a hung program gets near it */
#define SCORE_TOL 1e-4 /* scores this close are a tie (float rounding of two encoders) */

/* --- options and counters ------------------------------------------------------------ */

typedef struct cfg {
    char bin[PATH_MAX];    /* directory holding qdup-daemon and qdup-index */
    char model[PATH_MAX];  /* model file */
    char dir[PATH_MAX];    /* work directory */
    int dir_given;         /* 1 if --dir was given (then it is kept) */
    int keep;              /* --keep: leave the work directory */
    int kills;             /* daemon kills */
    int index_kills;       /* kills of build, and of add, each */
    int reembed_kills;     /* kills of reembed */
    size_t rows;           /* questions in the initial store */
    size_t index_rows;     /* questions in each dump of the index phase */
    size_t window;         /* requests in flight while streaming */
    double max_ms;         /* longest run before a kill, ms */
    size_t queries;        /* queries compared at the end */
    uint64_t seed;         /* random seed */
    int verbose;           /* a line per round */
    int inject_loss;       /* --inject-loss: remove an acknowledged question behind the
                              daemon's back before the last restart, to show that the
                              check catches a loss */
} cfg;

static cfg C;

/* What happened, for the summary. */
typedef struct tally {
    int kills;                /* daemon kills */
    int kills_startup;        /* of them, before the daemon was listening */
    uint64_t acked;           /* acknowledged writes */
    uint64_t acked_adds;      /* of them adds and checks that stored */
    uint64_t acked_removes;   /* of them removes */
    uint64_t lost;            /* acknowledged (or seen) writes found undone */
    uint64_t unacked;         /* writes sent, not answered before a kill */
    uint64_t unacked_done;    /* of them, found committed at the next restart */
    uint64_t busy;            /* writes answered busy (not done) */
    uint64_t checks;          /* get checks after restarts */
    uint64_t verify_after_kill_bad; /* read-only verify right after a kill failed */
    size_t compared;          /* queries compared against a fresh index */
    size_t mismatched;        /* of them, with different results */
    int build_kills, build_old, build_new, build_torn, build_finished;
    int add_kills, add_none, add_all, add_finished, add_verify_repaired;
    int re_kills, re_stopped, re_old, re_new, re_unvouched, re_finished;
} tally;

static tally T;

/* --- random numbers and questions ------------------------------------------------------ */

static uint64_t rng_state;

static uint64_t rnd(void)
{
    uint64_t x = rng_state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng_state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static double rnd_unit(void)
{
    return (double)(rnd() >> 11) / 9007199254740992.0;
}

/* Question k's text: five words from the digits of a bijection of k in base 38
 * (distinct for every k < 38^5, so no two questions are exact duplicates), then zero
 * to three more words and sometimes a question mark. */
#define NWORDS 38
#define SPACE 79235168ULL /* 38^5 */

static void text_of(uint64_t k, char *buf, size_t len)
{
    uint64_t x = (k * 1000003ULL + 12345ULL) % SPACE;
    uint64_t h = (k + 1) * 0x9E3779B97F4A7C15ULL;
    size_t n = 0;
    for (int i = 0; i < 5; i++, x /= NWORDS)
        n += (size_t)snprintf(buf + n, len - n, "%sw%u", i ? " " : "", (unsigned)(2 + x % NWORDS));
    for (unsigned i = 0; i < (h >> 60) % 4; i++)
        n += (size_t)snprintf(buf + n, len - n, " w%u", (unsigned)(2 + (h >> (8 * i)) % NWORDS));
    if ((h >> 20) & 1)
        snprintf(buf + n, len - n, " ?");
}

/* A query that is nobody's question: a few random words. */
static void random_text(char *buf, size_t len)
{
    size_t n = 0;
    unsigned words = 2 + (unsigned)(rnd() % 6);
    for (unsigned i = 0; i < words; i++)
        n += (size_t)snprintf(buf + n, len - n, "%sw%u", i ? " " : "",
                              (unsigned)(2 + rnd() % NWORDS));
}

/* --- files and processes ---------------------------------------------------------------- */

/* A path under the work directory in a local array (path_in's buffers rotate). */
#define LOCAL_PATH(var, name)                                                           \
    char var[PATH_MAX + 64];                                                           \
    snprintf(var, sizeof var, "%s/%s", C.dir, name)

static const char *prog(const char *name)
{
    return path_in(C.bin, name);
}

static long file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : 0;
}

/* Runs a program to completion. */
static int run(char *const argv[], const char *in, const char *out, const char *err)
{
    return wait_status(spawn(argv, in, out, err));
}

/* Removes a store's files (the database, its journal files, the FAISS file). */
static void remove_store(const char *db)
{
    static const char *const sfx[] = {QD_STORE_SUFFIXES};
    char p[PATH_MAX + 16];
    for (size_t i = 0; i < sizeof sfx / sizeof sfx[0]; i++) {
        snprintf(p, sizeof p, "%s%s", db, sfx[i]);
        unlink(p);
    }
}

/* Files in dir whose names start with prefix (temporary files left by kills). */
static size_t count_prefixed(const char *dir, const char *prefix)
{
    DIR *d = opendir(dir);
    size_t n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL)
        n += strncmp(e->d_name, prefix, strlen(prefix)) == 0;
    if (d)
        closedir(d);
    return n;
}

/* --- qdup-index ------------------------------------------------------------------------- */

static int index_build(const char *db, const char *dump, const char *log)
{
    char *argv[] = {(char *)prog("qdup-index"), "build", "--model", C.model, "--db",
                    (char *)db, "--quiet", (char *)dump, NULL};
    return run(argv, NULL, NULL, log);
}

/* verify; the report goes to out. */
static int index_verify(const char *db, const char *out, int repair)
{
    char *argv[] = {(char *)prog("qdup-index"), "verify", "--db", (char *)db,
                    repair ? "--repair" : NULL, NULL};
    return run(argv, NULL, out, out);
}

/* A set of external ids from `qdup-index export` (sorted, for lookups). */
typedef struct idset {
    char **id;     /* (n) ids, sorted */
    char **text;   /* (n) their texts, in the same order */
    size_t n;
} idset;

static void idset_free(idset *s)
{
    for (size_t i = 0; i < s->n; i++) {
        free(s->id[i]);
        free(s->text[i]);
    }
    free(s->id);
    free(s->text);
    memset(s, 0, sizeof *s);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Exports db to out and reads the ids and texts back: 0, or -1 if export failed. */
static int index_export(const char *db, const char *out, const char *log, idset *s)
{
    memset(s, 0, sizeof *s);
    char *argv[] = {(char *)prog("qdup-index"), "export", "--db", (char *)db, "--out",
                    (char *)out, NULL};
    if (run(argv, NULL, NULL, log) != 0)
        return -1;
    FILE *f = fopen(out, "r");
    if (!f)
        return -1;
    char *line = NULL;
    size_t cap = 0, scap = 0;
    ssize_t len;
    typedef struct pair {
        char *id;   /* first: the pairs sort with cmp_str */
        char *text;
    } pair;
    pair *v = NULL;
    while ((len = getline(&line, &cap, f)) > 0) {
        json_t *j = json_loadb(line, (size_t)len, 0, NULL);
        const char *id = json_string_value(json_object_get(j, "id"));
        const char *tx = json_string_value(json_object_get(j, "text"));
        if (!id || !tx) {
            json_decref(j);
            continue;
        }
        if (s->n == scap) {
            scap = scap ? 2 * scap : 1024;
            v = realloc(v, scap * sizeof *v);
        }
        v[s->n].id = strdup(id);
        v[s->n].text = strdup(tx);
        s->n++;
        json_decref(j);
    }
    free(line);
    fclose(f);
    /* Sort the pairs by id (an index array keeps texts with their ids). */
    qsort(v, s->n, sizeof *v, cmp_str);
    s->id = malloc((s->n + 1) * sizeof *s->id);
    s->text = malloc((s->n + 1) * sizeof *s->text);
    for (size_t i = 0; i < s->n; i++) {
        s->id[i] = v[i].id;
        s->text[i] = v[i].text;
    }
    free(v);
    return 0;
}

/* Position of id in the set, or -1. */
static long idset_find(const idset *s, const char *id)
{
    char *key = (char *)id;
    char **p = bsearch(&key, s->id, s->n, sizeof *s->id, cmp_str);
    return p ? (long)(p - s->id) : -1;
}

/* --- the daemon ------------------------------------------------------------------------- */

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

typedef struct daemon {
    pid_t pid;          /* running, or -1 */
    char db[PATH_MAX];  /* its store */
    char sock[PATH_MAX + 16];
    char log[PATH_MAX + 16];
    double start_s;     /* running mean of start-up times, seconds */
    int starts;
} daemon_t;

/* Starts the daemon and waits for "listening on" (or returns at once when `at_once`,
 * for a kill during start-up). Returns 0, or -1 if it exited instead. */
static int daemon_start(daemon_t *d, double ckpt_s, int at_once)
{
    char ck[32];
    snprintf(ck, sizeof ck, "%g", ckpt_s);
    char *argv[] = {(char *)prog("qdup-daemon"), "--db", d->db, "--socket", d->sock,
                    "--threads", "2", "--checkpoint-interval", ck, NULL};
    long from = file_size(d->log);
    double t0 = qd_now();
    d->pid = live_pid = spawn(argv, NULL, NULL, d->log);
    if (at_once)
        return 0;
    if (wait_listening(d->pid, d->log, from, d->sock, DEADLINE) != 0) {
        d->pid = live_pid = -1;
        return -1;
    }
    double s = qd_now() - t0;
    d->start_s = (d->start_s * d->starts + s) / (d->starts + 1);
    d->starts++;
    return 0;
}

/* SIGKILL and reap. */
static void daemon_kill(daemon_t *d)
{
    if (d->pid <= 0)
        return;
    kill(d->pid, SIGKILL);
    int st = wait_status(d->pid);
    if (st != 128 + SIGKILL)
        failf("qdup-daemon exited with %d before it was killed (log %s)", st, d->log);
    d->pid = live_pid = -1;
}

/* SIGTERM and reap: its exit code. */
static int daemon_stop(daemon_t *d)
{
    kill(d->pid, SIGTERM);
    int st = wait_status(d->pid);
    d->pid = live_pid = -1;
    return st;
}

/* --- a pipelined connection ------------------------------------------------------------- */

typedef struct conn {
    int fd;
    char *out;          /* bytes to send */
    size_t out_len, out_off, out_cap;
    char *in;           /* bytes received, not yet cut into lines */
    size_t in_len, in_cap;
    int eof;            /* nothing more to read: the peer closed (or reset) */
    int wfail;          /* sending failed: the peer is gone */
} conn;

static int conn_open(conn *c, const char *sock)
{
    memset(c, 0, sizeof *c);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t n = strlen(sock);
    if (n >= sizeof sa.sun_path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(sa.sun_path, sock, n + 1);
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (c->fd < 0)
        return -1;
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(c->fd);
        c->fd = -1;
        return -1;
    }
    return 0;
}

static void conn_close(conn *c)
{
    if (c->fd >= 0)
        close(c->fd);
    free(c->out);
    free(c->in);
    memset(c, 0, sizeof *c);
    c->fd = -1;
}

static void conn_queue(conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void conn_queue(conn *c, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    QD_ASSERT(n > 0 && (size_t)n < sizeof line - 1);
    line[n++] = '\n';
    if (c->out_len + (size_t)n > c->out_cap) {
        c->out_cap = (c->out_len + (size_t)n) * 2;
        c->out = realloc(c->out, c->out_cap);
        if (!c->out)
            die("out of memory");
    }
    memcpy(c->out + c->out_len, line, (size_t)n);
    c->out_len += (size_t)n;
}

/* One round of I/O: sends what it can, receives what has come, waiting at most
 * timeout_ms for either. */
static void conn_pump(conn *c, int timeout_ms)
{
    struct pollfd p = {.fd = c->fd, .events = POLLIN};
    if (c->out_off < c->out_len)
        p.events |= POLLOUT;
    int pr = poll(&p, 1, timeout_ms);
    if (pr <= 0)
        return;
    if ((p.revents & POLLOUT) && c->out_off < c->out_len) {
        ssize_t w = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (w > 0) {
            c->out_off += (size_t)w;
            if (c->out_off == c->out_len)
                c->out_off = c->out_len = 0;
        } else if (w < 0 && errno != EAGAIN && errno != EINTR) {
            c->wfail = 1;
            c->out_off = c->out_len = 0;
        }
    }
    if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
        for (;;) {
            if (c->in_cap - c->in_len < 65536) {
                c->in_cap = c->in_cap ? 2 * c->in_cap : 1 << 17;
                c->in = realloc(c->in, c->in_cap);
                if (!c->in)
                    die("out of memory");
            }
            ssize_t r = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
            if (r > 0) {
                c->in_len += (size_t)r;
                continue;
            }
            if (r == 0 || (errno != EAGAIN && errno != EINTR))
                c->eof = 1;
            break;
        }
    }
}

/* The next complete reply line, parsed (NULL if none yet). */
static json_t *conn_reply(conn *c)
{
    char *nl = c->in_len ? memchr(c->in, '\n', c->in_len) : NULL;
    if (!nl)
        return NULL;
    size_t n = (size_t)(nl - c->in);
    json_error_t je;
    json_t *j = json_loadb(c->in, n, 0, &je);
    memmove(c->in, nl + 1, c->in_len - n - 1);
    c->in_len -= n + 1;
    if (!j)
        die("a reply that is not JSON: %s", je.text);
    return j;
}

static int reply_ok(json_t *j)
{
    return json_is_true(json_object_get(j, "ok"));
}

static const char *reply_code(json_t *j)
{
    const char *s = json_string_value(json_object_get(json_object_get(j, "error"), "code"));
    return s ? s : "";
}

/* --- the model of the store ------------------------------------------------------------- */

/* A question's state. The unknown states remember which write was unanswered, so that
 * settling one tells whether it had committed. */
enum { S_NONE = 0, S_PRESENT, S_GONE, S_UNK_ADD, S_UNK_REMOVE };

/* Question q<k> for every k < n. */
typedef struct model {
    uint8_t *st;      /* (n) S_* */
    size_t n, cap;
} model_t;

static model_t M;

static void model_grow(size_t n)
{
    if (n <= M.cap)
        return;
    size_t cap = M.cap ? M.cap : 4096;
    while (cap < n)
        cap *= 2;
    M.st = realloc(M.st, cap);
    if (!M.st)
        die("out of memory");
    memset(M.st + M.cap, S_NONE, cap - M.cap);
    M.cap = cap;
}

/* --- checking the daemon ---------------------------------------------------------------- */

/* Gets every question that is not S_NONE, pipelined: settles the unknown ones and
 * counts known ones that are wrong as lost. */
static void check_all(daemon_t *d, const char *why)
{
    conn c;
    if (conn_open(&c, d->sock) != 0)
        die("cannot connect to %s", d->sock);
    size_t next = 0, pending_from = 0, inflight = 0;
    size_t *ks = malloc(C.window * 4 * sizeof *ks); /* ring of the ks in flight */
    size_t ring = C.window * 4;
    uint64_t lost = 0;
    double end = qd_now() + DEADLINE;
    while ((next < M.n || inflight) && qd_now() < end) {
        while (inflight < ring && next < M.n) {
            if (M.st[next] != S_NONE) {
                conn_queue(&c, "{\"op\":\"get\",\"id\":\"q%zu\"}", next);
                ks[(pending_from + inflight) % ring] = next;
                inflight++;
            }
            next++;
        }
        conn_pump(&c, 100);
        json_t *j;
        while ((j = conn_reply(&c)) != NULL) {
            QD_ASSERT(inflight > 0);
            size_t k = ks[pending_from % ring];
            pending_from++;
            inflight--;
            int present;
            if (reply_ok(j)) {
                present = 1;
                char want[128];
                text_of(k, want, sizeof want);
                const char *got = json_string_value(json_object_get(j, "text"));
                if (!got || strcmp(got, want) != 0)
                    failf("%s: q%zu has text \"%s\", expected \"%s\"", why, k,
                          got ? got : "(none)", want);
            } else if (strcmp(reply_code(j), "not_found") == 0) {
                present = 0;
            } else {
                die("%s: get q%zu: unexpected reply %s", why, k, reply_code(j));
            }
            json_decref(j);
            T.checks++;
            switch (M.st[k]) {
            case S_PRESENT:
                if (!present) {
                    fprintf(stderr, "qdup-crash-test: LOST: q%zu was acknowledged and is gone (%s)\n",
                            k, why);
                    lost++;
                    M.st[k] = S_GONE;
                }
                break;
            case S_GONE:
                if (present) {
                    fprintf(stderr, "qdup-crash-test: LOST: q%zu was removed (acknowledged) and "
                            "is back (%s)\n", k, why);
                    lost++;
                    M.st[k] = S_PRESENT;
                }
                break;
            case S_UNK_ADD:
            case S_UNK_REMOVE:
                T.unacked_done += present == (M.st[k] == S_UNK_ADD);
                M.st[k] = present ? S_PRESENT : S_GONE;
                break;
            default:
                break;
            }
        }
        if (c.eof || c.wfail)
            die("%s: the daemon closed the connection (log %s)", why, d->log);
    }
    if (next < M.n || inflight)
        die("%s: the daemon stopped answering (log %s)", why, d->log);
    T.lost += lost;
    free(ks);
    conn_close(&c);
}

/* --- streaming writes ----------------------------------------------------------------- */

enum { OP_ADD, OP_CHECK, OP_REMOVE };

typedef struct inflight {
    int op;       /* OP_* */
    size_t k;     /* the question */
    uint8_t was;  /* its state before (for a write refused busy) */
} inflight_t;

/* A question to remove: a present one, picked at random (0 tries: none found). */
static int pick_present(size_t *k)
{
    for (int tries = 0; tries < 32 && M.n; tries++) {
        size_t x = (size_t)(rnd() % M.n);
        if (M.st[x] == S_PRESENT) {
            *k = x;
            return 1;
        }
    }
    return 0;
}

static void settle_reply(const inflight_t *f, json_t *j)
{
    if (reply_ok(j)) {
        if (f->op == OP_CHECK && !json_is_true(json_object_get(j, "stored")))
            die("check of q%zu did not store it: %s", f->k,
                json_string_value(json_object_get(j, "reason")));
        M.st[f->k] = f->op == OP_REMOVE ? S_GONE : S_PRESENT;
        T.acked++;
        if (f->op == OP_REMOVE)
            T.acked_removes++;
        else
            T.acked_adds++;
        return;
    }
    if (strcmp(reply_code(j), "busy") == 0) {
        /* Refused before it was queued: nothing happened. */
        M.st[f->k] = f->was == S_NONE ? S_GONE : f->was;
        T.busy++;
        return;
    }
    die("%s of q%zu: unexpected error %s: %s", f->op == OP_REMOVE ? "remove" : "add", f->k,
        reply_code(j),
        json_string_value(json_object_get(json_object_get(j, "error"), "message")));
}

/* Settles the writes whose replies have arrived, oldest first: fl is a ring of `ring`
 * entries, *n of them in flight from *head. */
static void settle_replies(conn *c, inflight_t *fl, size_t ring, size_t *head, size_t *n)
{
    json_t *j;
    while ((j = conn_reply(c)) != NULL) {
        QD_ASSERT(*n > 0);
        settle_reply(&fl[*head], j);
        *head = (*head + 1) % ring;
        (*n)--;
        json_decref(j);
    }
}

/* Streams writes to the daemon until `secs` have passed, then kills it; takes every
 * reply that reached the socket before the kill. */
static void stream_and_kill(daemon_t *d, double secs)
{
    conn c;
    if (conn_open(&c, d->sock) != 0)
        die("cannot connect to %s", d->sock);
    size_t ring = C.window;
    inflight_t *fl = calloc(ring, sizeof *fl);
    size_t head = 0, n = 0;
    double end = qd_now() + secs;
    while (qd_now() < end) {
        while (n < ring) {
            inflight_t f = {0};
            double u = rnd_unit();
            if (u < 0.25 && pick_present(&f.k)) {
                f.op = OP_REMOVE;
                conn_queue(&c, "{\"op\":\"remove\",\"id\":\"q%zu\"}", f.k);
            } else {
                f.op = u < 0.35 ? OP_CHECK : OP_ADD;
                f.k = M.n;
                model_grow(M.n + 1);
                M.n++;
                char t[128];
                text_of(f.k, t, sizeof t);
                if (f.op == OP_CHECK)
                    conn_queue(&c, "{\"op\":\"check\",\"id\":\"q%zu\",\"text\":\"%s\",\"k\":3}",
                               f.k, t);
                else
                    conn_queue(&c, "{\"op\":\"add\",\"id\":\"q%zu\",\"text\":\"%s\"}", f.k, t);
            }
            f.was = M.st[f.k];
            M.st[f.k] = f.op == OP_REMOVE ? S_UNK_REMOVE : S_UNK_ADD;
            fl[(head + n) % ring] = f;
            n++;
        }
        double left = end - qd_now();
        conn_pump(&c, left > 0 ? (int)(left * 1000) + 1 : 0);
        settle_replies(&c, fl, ring, &head, &n);
        if (c.eof || c.wfail)
            die("the daemon closed the connection before it was killed (log %s)", d->log);
    }
    daemon_kill(d);
    T.kills++;
    /* What the daemon wrote before it died is in our socket buffer: read to the end
     * (the kernel keeps it readable after the peer is gone), sending nothing more. */
    c.out_off = c.out_len = 0;
    while (!c.eof)
        conn_pump(&c, 1000);
    settle_replies(&c, fl, ring, &head, &n);
    T.unacked += n;
    free(fl);
    conn_close(&c);
}

/* --- comparing queries with a fresh index ---------------------------------------------- */

/* One result of a query. */
typedef struct hit {
    char id[64];   /* external id */
    double score;  /* cosine similarity */
} hit_t;

/* A query's results, best first. */
typedef struct hits {
    hit_t h[16];   /* (n) */
    size_t n;
} hits_t;

static void hits_from_json(json_t *arr, hits_t *out)
{
    out->n = 0;
    size_t i;
    json_t *x;
    json_array_foreach(arr, i, x) {
        if (out->n == 16)
            break;
        const char *id = json_string_value(json_object_get(x, "id"));
        snprintf(out->h[out->n].id, sizeof out->h[0].id, "%s", id ? id : "");
        out->h[out->n].score = json_number_value(json_object_get(x, "score"));
        out->n++;
    }
}

static int hits_has(const hits_t *h, const char *id, double score)
{
    for (size_t i = 0; i < h->n; i++)
        if (strcmp(h->h[i].id, id) == 0 && fabs(h->h[i].score - score) <= SCORE_TOL)
            return 1;
    return 0;
}

/* Same results up to ties: the same number, scores equal rank by rank, and every id
 * scoring clearly above the last place in one list is in the other. */
static int hits_same(const hits_t *a, const hits_t *b)
{
    if (a->n != b->n)
        return 0;
    for (size_t i = 0; i < a->n; i++)
        if (fabs(a->h[i].score - b->h[i].score) > SCORE_TOL)
            return 0;
    if (a->n == 0)
        return 1;
    double cut = a->h[a->n - 1].score;
    for (size_t i = 0; i < a->n; i++) {
        if (a->h[i].score > cut + SCORE_TOL && !hits_has(b, a->h[i].id, a->h[i].score))
            return 0;
        if (b->h[i].score > cut + SCORE_TOL && !hits_has(a, b->h[i].id, b->h[i].score))
            return 0;
    }
    return 1;
}

static void print_hits(const char *who, const hits_t *h)
{
    fprintf(stderr, "  %s:", who);
    for (size_t i = 0; i < h->n; i++)
        fprintf(stderr, " %s %.6f", h->h[i].id, h->h[i].score);
    fputc('\n', stderr);
}

/* Asks the daemon the queries, then an index built from scratch over the exported
 * rows, and compares. */
static void compare_queries(daemon_t *d, char **queries, size_t nq, const char *fresh_db)
{
    hits_t *live = calloc(nq, sizeof *live);
    conn c;
    if (conn_open(&c, d->sock) != 0)
        die("cannot connect to %s", d->sock);
    for (size_t i = 0; i < nq; i++)
        conn_queue(&c, "{\"op\":\"query\",\"text\":\"%s\",\"k\":10}", queries[i]);
    size_t got = 0;
    double end = qd_now() + DEADLINE;
    while (got < nq && !c.eof && qd_now() < end) {
        conn_pump(&c, 100);
        json_t *j;
        while ((j = conn_reply(&c)) != NULL) {
            if (!reply_ok(j))
                die("query failed: %s", reply_code(j));
            hits_from_json(json_object_get(j, "results"), &live[got++]);
            json_decref(j);
        }
    }
    conn_close(&c);
    if (got < nq)
        die("the daemon answered %zu of %zu queries", got, nq);

    LOCAL_PATH(qfile, "queries.txt");
    LOCAL_PATH(rfile, "fresh.json");
    FILE *f = fopen(qfile, "w");
    for (size_t i = 0; i < nq; i++)
        fprintf(f, "%s\n", queries[i]);
    fclose(f);
    char *argv[] = {(char *)prog("qdup-index"), "search", "--db", (char *)fresh_db, "-k", "10",
                    "--json", "-", NULL};
    if (run(argv, qfile, rfile, path_in(C.dir, "index.log")) != 0)
        die("qdup-index search on the fresh index failed (log %s)", path_in(C.dir, "index.log"));
    FILE *r = fopen(rfile, "r");
    char *line = NULL;
    size_t cap = 0, i = 0;
    ssize_t len;
    while (r && i < nq && (len = getline(&line, &cap, r)) > 0) {
        json_t *j = json_loadb(line, (size_t)len, 0, NULL);
        hits_t fresh;
        hits_from_json(json_object_get(j, "results"), &fresh);
        json_decref(j);
        T.compared++;
        if (!hits_same(&live[i], &fresh)) {
            T.mismatched++;
            fprintf(stderr, "qdup-crash-test: query \"%s\" differs:\n", queries[i]);
            print_hits("daemon", &live[i]);
            print_hits("fresh ", &fresh);
        }
        i++;
    }
    free(line);
    if (r)
        fclose(r);
    if (i < nq)
        failf("the fresh index answered %zu of %zu queries", i, nq);
    free(live);
}

/* --- the daemon phase ----------------------------------------------------------------- */

static void daemon_phase(void)
{
    daemon_t d = {.pid = -1};
    snprintf(d.db, sizeof d.db, "%s", path_in(C.dir, "live.db"));
    snprintf(d.sock, sizeof d.sock, "%s", path_in(C.dir, "d.sock"));
    snprintf(d.log, sizeof d.log, "%s", path_in(C.dir, "daemon.log"));
    LOCAL_PATH(init, "init.tsv");
    write_dump(init, "q", 0, C.rows, text_of);
    if (index_build(d.db, init, path_in(C.dir, "index.log")) != 0)
        die("qdup-index build failed (log %s)", path_in(C.dir, "index.log"));
    model_grow(C.rows);
    M.n = C.rows;
    for (size_t k = 0; k < C.rows; k++)
        M.st[k] = S_PRESENT;

    static const double ckpts[] = {0.05, 0.3, 5};
    for (int round = 0; round < C.kills; round++) {
        double ck = ckpts[rnd() % 3];
        uint64_t before_unacked = T.unacked, before_acked = T.acked;
        int startup = round > 0 && rnd() % 8 == 0 && d.starts > 0;
        if (startup) {
            /* Kill it while it opens the store, replays and checkpoints. */
            daemon_start(&d, ck, 1);
            sleep_s(rnd_unit() * d.start_s * 1.2);
            daemon_kill(&d);
            T.kills++;
            T.kills_startup++;
        } else {
            if (daemon_start(&d, ck, 0) != 0)
                die("qdup-daemon exited at start (round %d, log %s)", round, d.log);
            check_all(&d, "after restart");
            stream_and_kill(&d, rnd_unit() * C.max_ms / 1e3);
        }
        /* Straight after the kill, before any writer reopens it, a read-only verify: the
         * FAISS file may lag the database, which is how it is meant to work; it must
         * still pass, except in the window between the FAISS file's rename and meta's
         * record of it (counted, not a failure: the next writer rebuilds). */
        LOCAL_PATH(vout, "verify.out");
        if (index_verify(d.db, vout, 0) != 0) {
            T.verify_after_kill_bad++;
            char *report = slurp(vout, NULL);
            fprintf(stderr, "qdup-crash-test: note: read-only verify straight after kill %d: %s",
                    T.kills, report ? report : "(no output)\n");
            free(report);
        }
        if (C.verbose)
            fprintf(stderr, "round %d: %s, checkpoint every %gs, acknowledged %" PRIu64
                    ", unanswered %" PRIu64 "\n", round, startup ? "killed at start-up" : "killed",
                    ck, T.acked - before_acked, T.unacked - before_unacked);
    }

    if (C.inject_loss) {
        size_t k;
        if (!pick_present(&k))
            die("--inject-loss: no present question to remove");
        char id[32];
        snprintf(id, sizeof id, "q%zu", k);
        char *argv[] = {(char *)prog("qdup-index"), "remove", "--db", d.db, "--quiet", id, NULL};
        if (run(argv, NULL, NULL, path_in(C.dir, "index.log")) != 0)
            die("--inject-loss: qdup-index remove %s failed", id);
        printf("injected a loss: removed %s behind the daemon's back\n", id);
    }

    /* The last restart: everything acknowledged is there, the unknown settled. */
    if (daemon_start(&d, 30, 0) != 0)
        die("qdup-daemon exited at the last start (log %s)", d.log);
    check_all(&d, "after the last restart");
    for (size_t k = 0; k < M.n; k++)
        if (M.st[k] == S_UNK_ADD || M.st[k] == S_UNK_REMOVE)
            failf("q%zu still unknown after the last check", k);

    /* Queries: texts of stored questions (each must find itself first) and random ones. */
    size_t nq = C.queries;
    char **queries = calloc(nq, sizeof *queries);
    for (size_t i = 0; i < nq; i++) {
        char t[128];
        size_t k;
        if (i % 2 == 0 && pick_present(&k))
            text_of(k, t, sizeof t);
        else
            random_text(t, sizeof t);
        queries[i] = strdup(t);
    }

    /* The export must list exactly the present questions. */
    idset ex;
    LOCAL_PATH(rows, "rows.jsonl");
    int st = daemon_stop(&d);
    if (st != 0)
        failf("qdup-daemon exited with %d on SIGTERM (log %s)", st, d.log);
    /* Checkpoints cut short by kills leave temporary FAISS files; the store deletes
     * them when a writer opens it, so none may outlive the last clean run. */
    size_t leftovers = count_prefixed(C.dir, "live.db.faiss.tmp.");
    if (leftovers)
        failf("%zu temporary FAISS files of killed checkpoints are left beside the store",
              leftovers);
    int verified = index_verify(d.db, path_in(C.dir, "verify.out"), 0) == 0;
    if (!verified)
        failf("qdup-index verify failed after the last restart: see %s",
              path_in(C.dir, "verify.out"));
    if (index_export(d.db, rows, path_in(C.dir, "index.log"), &ex) != 0)
        die("qdup-index export failed");
    size_t present = 0;
    for (size_t k = 0; k < M.n; k++) {
        if (M.st[k] != S_PRESENT)
            continue;
        present++;
        char id[32];
        snprintf(id, sizeof id, "q%zu", k);
        if (idset_find(&ex, id) < 0)
            failf("q%zu is present but not exported", k);
    }
    if (ex.n != present)
        failf("export lists %zu questions, %zu are present", ex.n, present);

    /* A fresh index over the exported rows answers like the daemon did. The daemon is
     * started again (read-only use: it only answers queries) for the comparison. */
    LOCAL_PATH(fresh, "fresh.db");
    remove_store(fresh);
    if (index_build(fresh, rows, path_in(C.dir, "index.log")) != 0)
        die("building the fresh index failed (log %s)", path_in(C.dir, "index.log"));
    if (daemon_start(&d, 30, 0) != 0)
        die("qdup-daemon exited at start (log %s)", d.log);
    compare_queries(&d, queries, nq, fresh);
    st = daemon_stop(&d);
    if (st != 0)
        failf("qdup-daemon exited with %d on SIGTERM (log %s)", st, d.log);
    for (size_t i = 0; i < nq; i++)
        free(queries[i]);
    free(queries);
    idset_free(&ex);
    printf("daemon: %d kills (%d during start-up), %" PRIu64 " acknowledged writes (%" PRIu64
           " adds and stored checks, %" PRIu64 " removes), %" PRIu64 " lost; %" PRIu64
           " unanswered at a kill (%" PRIu64 " of them had committed); %" PRIu64
           " answered busy; %zu questions present at the end\n",
           T.kills, T.kills_startup, T.acked, T.acked_adds, T.acked_removes, T.lost, T.unacked,
           T.unacked_done, T.busy, present);
    printf("daemon: verify after the last restart %s; read-only verify straight after a kill "
           "failed %" PRIu64 " of %d times; %zu queries compared with a fresh index, %zu "
           "differ\n",
           verified ? "passed" : "FAILED", T.verify_after_kill_bad, T.kills, T.compared,
           T.mismatched);
}

/* --- the index phase -------------------------------------------------------------------- */

/* Which generation of questions the store holds: every id of exactly one dump. */
static int holds_exactly(const idset *s, const char *prefix, uint64_t k0, uint64_t k1)
{
    if (s->n != k1 - k0)
        return 0;
    char id[64];
    for (uint64_t k = k0; k < k1; k++) {
        snprintf(id, sizeof id, "%s%" PRIu64, prefix, k);
        if (idset_find(s, id) < 0)
            return 0;
    }
    return 1;
}

static int holds_none(const idset *s, const char *prefix, uint64_t k0, uint64_t k1)
{
    char id[64];
    for (uint64_t k = k0; k < k1; k++) {
        snprintf(id, sizeof id, "%s%" PRIu64, prefix, k);
        if (idset_find(s, id) >= 0)
            return 0;
    }
    return 1;
}

/* Verifies db; in the documented window after a killed install, repairs first. Returns
 * 1 if a repair was needed, 0 if not; a failure is counted. */
static int verify_or_repair(const char *db, const char *what)
{
    LOCAL_PATH(out, "verify.out");
    if (index_verify(db, out, 0) == 0)
        return 0;
    int stale = file_has_from(out, 0, "not the checkpoint");
    if (!stale) {
        char *report = slurp(out, NULL);
        failf("%s: verify failed: %s", what, report ? report : "");
        free(report);
        return 0;
    }
    if (index_verify(db, out, 1) != 0 || index_verify(db, out, 0) != 0) {
        char *report = slurp(out, NULL);
        failf("%s: verify failed after --repair: %s", what, report ? report : "");
        free(report);
    }
    return 1;
}

/* Runs qdup-index args, killed after a random time up to 1.1 times *t_est, the
 * estimated run time. 1 if it was killed, 0 if it finished first (its exit status must
 * then be 0); then *t_est becomes the time it took, so that the kills of the next
 * rounds land within the run whatever the machine's load does to it. */
static int run_and_kill(char *const argv[], double *t_est, const char *log)
{
    double t0 = qd_now();
    pid_t pid = spawn(argv, NULL, NULL, log);
    double end = t0 + rnd_unit() * 1.1 * *t_est;
    int st;
    while (qd_now() < end) {
        pid_t w = waitpid(pid, &st, WNOHANG);
        if (w == pid) {
            if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
                failf("%s %s exited with %d before the kill (log %s)", argv[0], argv[1],
                      WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st), log);
            *t_est = qd_now() - t0;
            return 0;
        }
        sleep_s(0.0005);
    }
    kill(pid, SIGKILL);
    st = wait_status(pid);
    if (st != 128 + SIGKILL) {
        if (st != 0)
            failf("%s %s exited with %d (log %s)", argv[0], argv[1], st, log);
        return 0;
    }
    return 1;
}

static void index_phase(void)
{
    LOCAL_PATH(db, "ix.db");
    LOCAL_PATH(log, "index.log");
    LOCAL_PATH(exported, "ix.jsonl");
    size_t n = C.index_rows;
    /* Generations of questions: g<k> for k in [gen * n, (gen + 1) * n). */
    char dumps[2][PATH_MAX + 16];
    snprintf(dumps[0], sizeof dumps[0], "%s", path_in(C.dir, "gen0.tsv"));
    snprintf(dumps[1], sizeof dumps[1], "%s", path_in(C.dir, "gen1.tsv"));
    write_dump(dumps[0], "g", 0, n, text_of);
    write_dump(dumps[1], "g", n, 2 * n, text_of);

    /* How long an uninterrupted build over an existing index takes, and an add, on a
     * scratch store: the first estimates of run_and_kill. */
    LOCAL_PATH(probe, "probe.db");
    LOCAL_PATH(probe_add, "probe-add.tsv");
    uint64_t kbase = 10 * (uint64_t)n; /* added questions: texts unlike both generations' */
    write_dump(probe_add, "p", kbase - n, kbase, text_of);
    if (index_build(probe, dumps[0], log) != 0)
        die("qdup-index build failed (log %s)", log);
    double t0 = qd_now();
    if (index_build(probe, dumps[1], log) != 0)
        die("qdup-index build failed (log %s)", log);
    double t_build = qd_now() - t0;
    t0 = qd_now();
    char *pargv[] = {(char *)prog("qdup-index"), "add", "--db", probe, "--quiet", probe_add, NULL};
    if (run(pargv, NULL, NULL, log) != 0)
        die("qdup-index add failed (log %s)", log);
    double t_add = qd_now() - t0;
    remove_store(probe);

    if (index_build(db, dumps[0], log) != 0)
        die("qdup-index build failed (log %s)", log);
    int gen = 0; /* which generation is installed */
    for (int r = 0; r < C.index_kills; r++) {
        int target = 1 - gen;
        char *argv[] = {(char *)prog("qdup-index"), "build", "--model", C.model, "--db",
                        (char *)db, "--quiet", dumps[target], NULL};
        int killed = run_and_kill(argv, &t_build, log);
        T.build_kills += killed;
        T.build_finished += !killed;
        idset s;
        if (index_export(db, exported, log, &s) != 0) {
            failf("build round %d: the index cannot be exported (log %s)", r, log);
            continue;
        }
        int torn = verify_or_repair(db, "after a killed build");
        if (holds_exactly(&s, "g", (uint64_t)gen * n, (uint64_t)(gen + 1) * n)) {
            T.build_old++;
            if (torn)
                failf("build round %d: the old index needed a repair", r);
        } else if (holds_exactly(&s, "g", (uint64_t)target * n, (uint64_t)(target + 1) * n)) {
            if (torn)
                T.build_torn++;
            else if (killed)
                T.build_new++;
            gen = target;
        } else {
            failf("build round %d: the index holds %zu questions, neither the old nor the new "
                  "set", r, s.n);
        }
        idset_free(&s);
    }

    /* Adds: dumps of new questions a<r>_<k>; after a kill, none or all of them. */
    idset base;
    if (index_export(db, exported, log, &base) != 0)
        die("qdup-index export failed (log %s)", log);
    for (int r = 0; r < C.index_kills; r++) {
        char prefix[32];
        snprintf(prefix, sizeof prefix, "a%d_", r);
        LOCAL_PATH(dump, "add.tsv");
        uint64_t k0 = kbase + (uint64_t)r * n, k1 = k0 + n;
        write_dump(dump, prefix, k0, k1, text_of);
        char *argv[] = {(char *)prog("qdup-index"), "add", "--db", (char *)db, "--quiet",
                        (char *)dump, NULL};
        int killed = run_and_kill(argv, &t_add, log);
        T.add_kills += killed;
        T.add_finished += !killed;
        idset s;
        if (index_export(db, exported, log, &s) != 0) {
            failf("add round %d: the index cannot be exported (log %s)", r, log);
            continue;
        }
        T.add_verify_repaired += verify_or_repair(db, "after a killed add");
        int all = s.n == base.n + n, none = s.n == base.n;
        for (size_t i = 0; (all || none) && i < base.n; i++)
            if (idset_find(&s, base.id[i]) < 0) {
                failf("add round %d: %s, in the index before, is gone", r, base.id[i]);
                all = none = 0;
            }
        if (none && !holds_none(&s, prefix, k0, k1))
            none = 0;
        if (all) {
            char id[64];
            for (uint64_t k = k0; k < k1 && all; k++) {
                snprintf(id, sizeof id, "%s%" PRIu64, prefix, k);
                all = idset_find(&s, id) >= 0;
            }
        }
        if (all) {
            T.add_all++;
            idset_free(&base);
            base = s;
        } else if (none) {
            T.add_none++;
            idset_free(&s);
        } else {
            failf("add round %d: %zu questions after the add, %zu before: part of the add is "
                  "there", r, s.n, base.n);
            idset_free(&s);
        }
    }
    idset_free(&base);
    printf("build: %d kills (plus %d builds that finished first): old index kept %d times, new "
           "one installed %d times, killed between the two renames %d times (verify reported "
           "the stale FAISS file, --repair fixed it); an uninterrupted build took %.0f ms\n",
           T.build_kills, T.build_finished, T.build_old, T.build_new, T.build_torn,
           t_build * 1e3);
    printf("add: %d kills (plus %d adds that finished first): none of the add %d times, all "
           "of it %d times; verify needed --repair %d times; an uninterrupted add took %.0f ms\n",
           T.add_kills, T.add_finished, T.add_none, T.add_all, T.add_verify_repaired,
           t_add * 1e3);
}

/* --- reembed phase --------------------------------------------------------------------- */

/* The fingerprint of the model in force in db (`qdup-index info --json`), or "". */
static void store_fingerprint(const char *db, char *fp, size_t len)
{
    LOCAL_PATH(out, "info.json");
    char *argv[] = {(char *)prog("qdup-index"), "info", "--json", "--db", (char *)db, NULL};
    fp[0] = '\0';
    if (run(argv, NULL, out, out) != 0)
        return;
    char *text = slurp(out, NULL);
    json_t *j = text ? json_loads(text, 0, NULL) : NULL;
    const char *v = json_string_value(json_object_get(j, "model_fingerprint"));
    snprintf(fp, len, "%s", v ? v : "");
    json_decref(j);
    free(text);
}

/* Runs reembed to `model` until it stops itself at `point` (QDUP_INDEX_TEST_STOP),
 * then kills it. 1 if it was killed there, 0 if it finished without reaching it. */
static int reembed_stop_and_kill(char *const argv[], const char *point, const char *log)
{
    setenv("QDUP_INDEX_TEST_STOP", point, 1);
    pid_t pid = spawn(argv, NULL, NULL, log);
    unsetenv("QDUP_INDEX_TEST_STOP");
    int st;
    if (waitpid(pid, &st, WUNTRACED) != pid)
        die("waitpid: %s", strerror(errno));
    if (WIFSTOPPED(st)) {
        kill(pid, SIGKILL);
        wait_status(pid);
        return 1;
    }
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        failf("reembed exited with %d before %s (log %s)",
              WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st), point, log);
    return 0;
}

/* After a kill: one model in force, every vector its encoding. Returns the
 * fingerprint in force into fp. */
static void reembed_check(const char *db, const char *fp1, const char *fp2, char *fp,
                          size_t fplen, int round)
{
    LOCAL_PATH(out, "verify.out");
    store_fingerprint(db, fp, fplen);
    if (strcmp(fp, fp1) != 0 && strcmp(fp, fp2) != 0) {
        failf("reembed round %d: the store's model is \"%s\", neither %s nor %s", round, fp,
              fp1, fp2);
        return;
    }
    char *argv[] = {(char *)prog("qdup-index"), "verify", "--reencode", "--db", (char *)db,
                    NULL, NULL};
    if (run(argv, NULL, out, out) == 0)
        return;
    if (file_has_from(out, 0, "is not the encoding")) {
        char *report = slurp(out, NULL);
        failf("reembed round %d: vectors of two models: %s", round, report ? report : "");
        free(report);
        return;
    }
    if (!file_has_from(out, 0, "records no checkpoint")) {
        char *report = slurp(out, NULL);
        failf("reembed round %d: verify failed: %s", round, report ? report : "");
        free(report);
        return;
    }
    /* Killed after the switch's commit, before its checkpoint: the next writer rebuilds
     * the FAISS file from the (new) vectors. */
    T.re_unvouched++;
    argv[5] = "--repair";
    if (run(argv, NULL, out, out) != 0) {
        char *report = slurp(out, NULL);
        failf("reembed round %d: verify failed after --repair: %s", round,
              report ? report : "");
        free(report);
    }
}

static void reembed_phase(void)
{
    LOCAL_PATH(db, "re.db");
    LOCAL_PATH(log, "reembed.log");
    LOCAL_PATH(dump, "re.tsv");
    LOCAL_PATH(model2, "second.qdm");
    make_second_model(C.model, model2);
    write_dump(dump, "r", 0, C.index_rows, text_of);
    if (index_build(db, dump, log) != 0)
        die("qdup-index build failed (log %s)", log);
    char fp1[32], fp2[32], fp[32];
    store_fingerprint(db, fp1, sizeof fp1);
    /* An uninterrupted switch to the second model: the first estimate of the time. */
    char *argv[] = {(char *)prog("qdup-index"), "reembed", "--quiet", "--db", (char *)db,
                    "--model", model2, NULL};
    double t0 = qd_now();
    if (run(argv, NULL, NULL, log) != 0)
        die("qdup-index reembed failed (log %s)", log);
    double t_est = qd_now() - t0;
    store_fingerprint(db, fp2, sizeof fp2);
    if (!fp1[0] || !fp2[0] || strcmp(fp1, fp2) == 0)
        die("reembed did not switch the store (fingerprints \"%s\", \"%s\"; log %s)", fp1,
            fp2, log);
    snprintf(fp, sizeof fp, "%s", fp2);
    static const char *const points[] = {"reembed:chunk", "reembed:staged",
                                         "reembed:before-commit", "reembed:committed"};
    for (int r = 0; r < C.reembed_kills; r++) {
        /* Towards the model not in force. */
        argv[6] = strcmp(fp, fp1) == 0 ? model2 : C.model;
        int killed;
        if (rnd() % 3 == 0) {
            killed = reembed_stop_and_kill(argv, points[rnd() % 4], log);
            T.re_stopped += killed;
        } else {
            killed = run_and_kill(argv, &t_est, log);
        }
        T.re_kills += killed;
        T.re_finished += !killed;
        char before[32];
        snprintf(before, sizeof before, "%s", fp);
        reembed_check(db, fp1, fp2, fp, sizeof fp, r);
        if (strcmp(fp, before) == 0)
            T.re_old++;
        else
            T.re_new++;
        if (C.verbose)
            printf("reembed round %d: %s, model %s in force\n", r,
                   killed ? "killed" : "finished", fp);
    }
    /* A killed staging is resumed (or a finished one switched) by the next run. */
    argv[6] = strcmp(fp, fp1) == 0 ? model2 : C.model;
    const char *want = strcmp(fp, fp1) == 0 ? fp2 : fp1;
    if (run(argv, NULL, NULL, log) != 0)
        failf("the last reembed failed (log %s)", log);
    reembed_check(db, fp1, fp2, fp, sizeof fp, C.reembed_kills);
    if (strcmp(fp, want) != 0)
        failf("the last reembed left model %s in force, not %s", fp, want);
    printf("reembed: %d kills (%d of them at a named point, plus %d runs that finished "
           "first): old model in force %d times, new one %d times (FAISS file rebuilt after "
           "a kill past the commit %d times); never a mix; an uninterrupted reembed of %zu "
           "questions took %.0f ms\n",
           T.re_kills, T.re_stopped, T.re_finished, T.re_old, T.re_new, T.re_unvouched,
           C.index_rows, t_est * 1e3);
}

/* --- main ------------------------------------------------------------------------------ */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: qdup-crash-test [options]\n\n"
            "Kills qdup-daemon, qdup-index build and qdup-index add with SIGKILL at random\n"
            "moments and checks that no acknowledged write is lost (see the source's header).\n\n"
            "  --kills N         daemon kills (default 20)\n"
            "  --index-kills N   kills of build, and of add, each (default 5)\n"
            "  --rows N          questions in the initial store (default 500)\n"
            "  --index-rows N    questions per dump in the index phase (default 3000)\n"
            "  --reembed-kills N kills of qdup-index reembed (default 0)\n"
            "  --window N        requests in flight while streaming (default 32)\n"
            "  --max-ms MS       longest stream before a kill (default 400)\n"
            "  --queries N       queries compared with a fresh index (default 60)\n"
            "  --seed S          random seed (default: from the clock, printed)\n"
            "  --bin DIR         where qdup-daemon and qdup-index are (default: beside this)\n"
            "  --model FILE      model (default: the test fixture fwd_plain.qdm)\n"
            "  --dir DIR         work directory (default: a new one under $TMPDIR, removed\n"
            "                    on success)\n"
            "  --keep            keep the work directory\n"
            "  --verbose         a line per round\n"
            "  --inject-loss     remove a question behind the daemon's back before the last\n"
            "                    restart: the run must then report lost=1 (tests the test)\n");
}

int main(int argc, char **argv)
{
    harness_prog = "qdup-crash-test";
    C.kills = 20;
    C.index_kills = 5;
    C.rows = 500;
    C.index_rows = 3000;
    C.window = 32;
    C.max_ms = 400;
    C.queries = 60;
    C.seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    int seed_given = 0;
    static const struct option lo[] = {
        {"kills", 1, 0, 'k'},   {"index-kills", 1, 0, 'i'}, {"rows", 1, 0, 'r'},
        {"index-rows", 1, 0, 'R'}, {"window", 1, 0, 'w'}, {"max-ms", 1, 0, 'm'},
        {"queries", 1, 0, 'q'}, {"seed", 1, 0, 's'},        {"bin", 1, 0, 'b'},
        {"model", 1, 0, 'M'},   {"dir", 1, 0, 'd'},         {"keep", 0, 0, 'K'},
        {"verbose", 0, 0, 'v'}, {"inject-loss", 0, 0, 'I'}, {"help", 0, 0, 'h'},
        {"reembed-kills", 1, 0, 'E'},
        {0, 0, 0, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (ch) {
        case 'k': C.kills = (int)opt_long("kills", optarg, 0, 1000000); break;
        case 'i': C.index_kills = (int)opt_long("index-kills", optarg, 0, 100000); break;
        case 'E': C.reembed_kills = (int)opt_long("reembed-kills", optarg, 0, 100000); break;
        case 'r': C.rows = (size_t)opt_long("rows", optarg, 1, 10000000); break;
        case 'R': C.index_rows = (size_t)opt_long("index-rows", optarg, 1, 10000000); break;
        case 'w': C.window = (size_t)opt_long("window", optarg, 1, 64); break;
        case 'm': C.max_ms = (double)opt_long("max-ms", optarg, 1, 600000); break;
        case 'q': C.queries = (size_t)opt_long("queries", optarg, 1, 100000); break;
        case 's': C.seed = (uint64_t)opt_long("seed", optarg, 0, LONG_MAX); seed_given = 1; break;
        case 'b': snprintf(C.bin, sizeof C.bin, "%s", optarg); break;
        case 'M': snprintf(C.model, sizeof C.model, "%s", optarg); break;
        case 'd': snprintf(C.dir, sizeof C.dir, "%s", optarg); C.dir_given = 1; break;
        case 'K': C.keep = 1; break;
        case 'v': C.verbose = 1; break;
        case 'I': C.inject_loss = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        usage(stderr);
        return 2;
    }
    (void)seed_given;
    rng_state = C.seed * 2 + 1;
    signal(SIGPIPE, SIG_IGN);
    atexit(kill_live);

    harness_setup(C.bin, C.model, QDUP_CRASH_MODEL, C.dir, C.dir_given);
    printf("qdup-crash-test --kills %d --index-kills %d --reembed-kills %d --rows %zu "
           "--index-rows %zu --window %zu --max-ms %.0f --queries %zu --seed %" PRIu64 "\n",
           C.kills, C.index_kills, C.reembed_kills, C.rows, C.index_rows, C.window, C.max_ms,
           C.queries, C.seed);
    printf("work directory %s\n", C.dir);
    fflush(stdout);

    double t0 = qd_now();
    daemon_phase();
    fflush(stdout);
    if (C.index_kills > 0)
        index_phase();
    fflush(stdout);
    if (C.reembed_kills > 0)
        reembed_phase();
    int ok = T.lost == 0 && harness_failures == 0 && T.mismatched == 0;
    printf("RESULT kills=%d acknowledged=%" PRIu64 " lost=%" PRIu64 " unanswered=%" PRIu64
           " compared=%zu differ=%zu build_kills=%d build_old=%d build_new=%d build_torn=%d "
           "add_kills=%d add_none=%d add_all=%d reembed_kills=%d reembed_old=%d reembed_new=%d "
           "failures=%d seconds=%.1f status=%s\n",
           T.kills, T.acked, T.lost, T.unacked, T.compared, T.mismatched, T.build_kills,
           T.build_old, T.build_new, T.build_torn, T.add_kills, T.add_none, T.add_all,
           T.re_kills, T.re_old, T.re_new, harness_failures, qd_now() - t0, ok ? "ok" : "FAILED");
    if ((ok || C.inject_loss) && !C.keep && !C.dir_given)
        remove_tree(C.dir);
    else
        printf("work directory kept: %s\n", C.dir);
    free(M.st);
    return ok ? 0 : 1;
}
