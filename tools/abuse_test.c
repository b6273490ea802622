/*
 * abuse_test.c - qdup-abuse: hostile clients against qdup-daemon, while well-behaved
 * ones keep asking; reports the daemon's peak memory and the good clients' latencies.
 *
 *   qdup-abuse [--seconds S] [--hold N] [--loris N] [--nonreaders N] [--flooders N] ...
 *
 * A store of --rows generated questions is built with qdup-index and served by a
 * daemon (extra daemon options with --daemon-arg). Connected first, a well-behaved
 * client asks one query at a time over one connection for the whole run; a second one
 * opens a new connection for every query. Then, at once, for --seconds:
 *   hold        N connections opened and held, never sending a byte (default 1000);
 *   slow loris  clients sending one byte per second of a request line that never ends;
 *   non-readers clients pipelining queries with large replies (k=1000) and never
 *               reading them;
 *   flooders    clients sending maximum-size requests (lines of exactly --max-line
 *               bytes: 16 texts of 4 KiB, within every limit) as fast as the daemon
 *               takes them, reading the replies; every 16th line is one byte too long,
 *               which the daemon answers too_large and closes.
 * A hostile client the daemon drops reconnects, so the pressure stays on. Connections
 * are made in that order; those past the daemon's --max-clients are answered busy and
 * closed by the daemon (counted).
 *
 * With --expect-timeouts (and the daemon given short --request-timeout and
 * --idle-timeout), every slow-loris client must have been answered bad_request and
 * dropped, and every held connection closed by the daemon.
 *
 * At the end the daemon's peak resident memory (VmHWM in /proc/PID/status) must be
 * below --rss-limit (a generous bound: the daemon's own budget is max_clients partial
 * lines, the queued request bytes and the unsent-reply budget), every query of the
 * persistent good client must have been answered ok, and the daemon must stop cleanly
 * on SIGTERM. Latencies are printed, never asserted. Last line:
 *   RESULT peak_rss_mib=... good=... good_ok=... p50_ms=... p99_ms=... status=ok
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "qdup/common.h"

#include "harness.h"

#ifndef QDUP_ABUSE_MODEL
#define QDUP_ABUSE_MODEL "tests/fixtures/fwd_plain.qdm"
#endif

#define DEADLINE 60.0 /* seconds a good client waits for a reply before calling it lost */
#define MAX_DAEMON_ARGS 32

typedef struct cfg {
    char bin[PATH_MAX];     /* directory of qdup-daemon and qdup-index */
    char model[PATH_MAX];   /* model file */
    char dir[PATH_MAX];     /* work directory */
    int dir_given;          /* --dir given: kept */
    double seconds;         /* abuse duration */
    size_t hold, loris, nonreaders, flooders;
    size_t rows;            /* questions in the store */
    size_t max_line;        /* the daemon's request line limit (its --max-line) */
    double rss_limit_mib;   /* peak RSS bound */
    int expect_timeouts;    /* --expect-timeouts: the daemon runs with short request and
                               idle timeouts; every loris and held connection must be
                               closed by it */
    const char *dargs[MAX_DAEMON_ARGS]; /* extra daemon arguments */
    int ndargs;
} cfg;

static cfg C;

/* Question k's text: the crash test's generator (distinct texts of the fixture words). */
static void text_of(uint64_t k, char *buf, size_t len)
{
    uint64_t x = (k * 1000003ULL + 12345ULL) % 79235168ULL;
    size_t n = 0;
    for (int i = 0; i < 5; i++, x /= 38)
        n += (size_t)snprintf(buf + n, len - n, "%sw%u", i ? " " : "", (unsigned)(2 + x % 38));
}

/* --- processes ----------------------------------------------------------------------- */

/* The daemon, killed at exit so that a failing run leaves none behind. */
static pid_t live_pid = -1;

static void kill_live(void)
{
    if (live_pid > 0) {
        kill(live_pid, SIGKILL);
        waitpid(live_pid, NULL, 0);
    }
}

/* A field of /proc/PID/status in KiB (-1 if unreadable). */
static long proc_kib(pid_t pid, const char *field)
{
    char p[64], line[256];
    snprintf(p, sizeof p, "/proc/%d/status", (int)pid);
    FILE *f = fopen(p, "r");
    if (!f)
        return -1;
    long v = -1;
    size_t fl = strlen(field);
    while (fgets(line, sizeof line, f))
        if (strncmp(line, field, fl) == 0 && line[fl] == ':') {
            v = strtol(line + fl + 1, NULL, 10);
            break;
        }
    fclose(f);
    return v;
}

/* --- sockets -------------------------------------------------------------------------- */

static char sock_path[PATH_MAX + 16];

/* A connection to the daemon (nonblocking if asked), or -1. */
static int dial(int nonblock)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t n = strlen(sock_path);
    if (n >= sizeof sa.sun_path)
        die("socket path %s is too long for a Unix socket", sock_path);
    memcpy(sa.sun_path, sock_path, n + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0), 0);
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Sends a whole line and reads one reply line (blocking fd) into buf; the latency in
 * ms, or -1 if the connection failed or no reply came within DEADLINE. */
static double rpc(int fd, const char *req, size_t len, char *buf, size_t cap)
{
    double t0 = qd_now();
    size_t off = 0;
    while (off < len) {
        ssize_t w = send(fd, req + off, len - off, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break; /* a refused client is told why first: read it */
        off += (size_t)w;
    }
    size_t n = 0;
    while (n < cap - 1) {
        double left = t0 + DEADLINE - qd_now();
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (left <= 0 || poll(&p, 1, (int)(left * 1000) + 1) <= 0)
            return -1;
        ssize_t r = recv(fd, buf + n, cap - 1 - n, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        n += (size_t)r;
        buf[n] = '\0';
        if (memchr(buf, '\n', n))
            return (qd_now() - t0) * 1e3;
    }
    return -1;
}

/* --- the well-behaved clients --------------------------------------------------------- */

typedef struct good {
    int fresh;            /* 1: a new connection per query */
    size_t asked;         /* queries sent */
    size_t ok;            /* answered ok */
    size_t busy;          /* answered busy */
    size_t other;         /* answered with another error */
    size_t lost;          /* not answered (connection lost or DEADLINE) */
    double *lat;          /* (ok) latencies of ok answers, ms */
    size_t nlat, cap;
    int fd;               /* the persistent connection */
} good_t;

static atomic_int stop_good;

static void *good_run(void *arg)
{
    good_t *g = arg;
    char req[256], buf[1 << 16];
    uint64_t k = 0;
    while (!atomic_load(&stop_good)) {
        char t[128];
        text_of((k++ * 7919) % C.rows, t, sizeof t);
        int n = snprintf(req, sizeof req, "{\"op\":\"query\",\"text\":\"%s\",\"k\":10}\n", t);
        int fd = g->fresh ? dial(0) : g->fd;
        g->asked++;
        double ms = fd >= 0 ? rpc(fd, req, (size_t)n, buf, sizeof buf) : -1;
        if (ms < 0) {
            g->lost++;
        } else if (strstr(buf, "\"ok\":true")) {
            g->ok++;
            if (g->nlat == g->cap) {
                g->cap = g->cap ? 2 * g->cap : 1024;
                g->lat = realloc(g->lat, g->cap * sizeof *g->lat);
            }
            g->lat[g->nlat++] = ms;
        } else if (strstr(buf, "\"code\":\"busy\"")) {
            g->busy++;
        } else {
            g->other++;
        }
        if (g->fresh && fd >= 0)
            close(fd);
        if (!g->fresh && ms < 0)
            break; /* the persistent connection is gone: that is the failure */
        sleep_s(0.005);
    }
    return NULL;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double pct(const double *v, size_t n, double p)
{
    if (n == 0)
        return 0;
    size_t i = (size_t)ceil(p / 100.0 * (double)n);
    return v[i ? i - 1 : 0];
}

/* --- the hostile clients ---------------------------------------------------------------- */

enum { K_LORIS, K_NONREADER, K_FLOODER };

typedef struct hostile {
    int kind;             /* K_* */
    int fd;               /* -1 while disconnected */
    size_t off;           /* bytes of the current line sent */
    size_t lines;         /* lines sent on this connection */
    double next;          /* loris: when to send the next byte */
    char tail[256];       /* flooder: the unfinished reply line's start (classification) */
    size_t tail_len;
} hostile_t;

typedef struct counts {
    size_t connects;      /* connections made */
    size_t dropped;       /* closed by the daemon */
    size_t replies;       /* reply lines received */
    size_t ok, busy, too_large, bad_request, other;
    uint64_t bytes_sent;  /* request bytes the daemon took */
} counts_t;

static counts_t cnt[3];
static char *big_line;   /* a maximum-size request, '\n'-terminated */
static size_t big_len;   /* its length with the newline */
static char *over_line;  /* one byte over the limit, '\n'-terminated */
static size_t over_len;
static const char loris_line[] = "{\"op\":\"query\",\"text\":\"w3 w4 w5 w6 w7 w8 w9 w10 w11 w12 "
                                 "w13 w14 w15 w16 w17 w18 w19 w20 w21 w22 w23 w24 w25";
static const char nonreader_line[] = "{\"op\":\"query\",\"text\":\"w3 w4\",\"k\":1000}\n";

/* A request line of exactly len bytes plus '\n': 16 texts of fixture words. */
static char *make_big(size_t len, size_t *out_len)
{
    char *b = malloc(len + 2);
    if (!b)
        die("out of memory");
    const char *head = "{\"op\":\"query\",\"k\":10,\"texts\":[";
    const char *tail = "]}";
    size_t n = (size_t)snprintf(b, len + 1, "%s", head);
    size_t body = len - strlen(head) - strlen(tail);
    size_t per = body / 16; /* each text with its quotes and comma */
    uint64_t w = 1;
    for (int t = 0; t < 16; t++) {
        size_t start = n;
        size_t want = t == 15 ? len - strlen(tail) - n : per;
        b[n++] = '"';
        while (n - start + 6 < want) {
            w = w * 6364136223846793005ULL + 1442695040888963407ULL;
            n += (size_t)sprintf(b + n, "w%u ", (unsigned)(2 + (w >> 33) % 38));
        }
        while (n - start < want - (t == 15 ? 1 : 2))
            b[n++] = ' ';
        b[n++] = '"';
        if (t < 15)
            b[n++] = ',';
    }
    memcpy(b + n, tail, strlen(tail));
    n += strlen(tail);
    if (n != len)
        die("internal: built a %zu-byte request, wanted %zu", n, len);
    b[n++] = '\n';
    b[n] = '\0';
    *out_len = n;
    return b;
}

static void hostile_connect(hostile_t *h, double now)
{
    h->fd = dial(1);
    h->off = 0;
    h->lines = 0;
    h->tail_len = 0;
    h->next = now;
    if (h->fd >= 0)
        cnt[h->kind].connects++;
}

static void hostile_dropped(hostile_t *h)
{
    close(h->fd);
    h->fd = -1;
    cnt[h->kind].dropped++;
}

/* Counts the reply lines in bytes just received by a flooder. */
static void classify(hostile_t *h, const char *b, size_t n)
{
    counts_t *c = &cnt[h->kind];
    for (size_t i = 0; i < n; i++) {
        if (b[i] != '\n') {
            if (h->tail_len < sizeof h->tail - 1)
                h->tail[h->tail_len++] = b[i];
            continue;
        }
        h->tail[h->tail_len] = '\0';
        c->replies++;
        if (strstr(h->tail, "\"ok\":true"))
            c->ok++;
        else if (strstr(h->tail, "\"busy\""))
            c->busy++;
        else if (strstr(h->tail, "\"too_large\""))
            c->too_large++;
        else if (strstr(h->tail, "\"bad_request\""))
            c->bad_request++;
        else
            c->other++;
        h->tail_len = 0;
    }
}

/* Sends the rest of the current line; 1 if the daemon dropped us. */
static int send_line(hostile_t *h, const char *line, size_t len)
{
    while (h->off < len) {
        ssize_t w = send(h->fd, line + h->off, len - h->off, MSG_NOSIGNAL);
        if (w > 0) {
            h->off += (size_t)w;
            cnt[h->kind].bytes_sent += (uint64_t)w;
            continue;
        }
        if (w < 0 && (errno == EAGAIN || errno == EINTR))
            return 0;
        return 1;
    }
    h->off = 0;
    h->lines++;
    return 0;
}

/* One step of a hostile client; revents from poll. */
static void hostile_step(hostile_t *h, short revents, double now)
{
    char buf[65536];
    if (h->kind == K_LORIS) {
        while (revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t r = recv(h->fd, buf, sizeof buf, 0);
            if (r > 0) {
                classify(h, buf, (size_t)r); /* a refusal, or the timeout's answer */
                continue;
            }
            if (r < 0 && (errno == EAGAIN || errno == EINTR))
                break;
            hostile_dropped(h);
            return;
        }
        if (now >= h->next) {
            /* One byte a second; the line never ends (it is as long as the daemon lets
             * it be, then starts again: a loris that outlived its line gets dropped). */
            size_t len = sizeof loris_line - 1;
            char c = loris_line[h->off % len];
            ssize_t w = send(h->fd, &c, 1, MSG_NOSIGNAL);
            if (w == 1) {
                h->off++;
                cnt[K_LORIS].bytes_sent++;
            } else if (!(w < 0 && errno == EAGAIN)) {
                hostile_dropped(h);
                return;
            }
            h->next = now + 1.0;
        }
        return;
    }
    if (h->kind == K_NONREADER) {
        if ((revents & POLLOUT) && send_line(h, nonreader_line, sizeof nonreader_line - 1))
            hostile_dropped(h);
        else if (revents & (POLLHUP | POLLERR))
            hostile_dropped(h);
        return;
    }
    /* Flooder: read everything, send the next big line when it fits. */
    if (revents & (POLLIN | POLLHUP | POLLERR)) {
        for (;;) {
            ssize_t r = recv(h->fd, buf, sizeof buf, 0);
            if (r > 0) {
                classify(h, buf, (size_t)r);
                continue;
            }
            if (r < 0 && (errno == EAGAIN || errno == EINTR))
                break;
            hostile_dropped(h);
            return;
        }
    }
    if (revents & POLLOUT) {
        int over = h->lines % 16 == 15;
        if (send_line(h, over ? over_line : big_line, over ? over_len : big_len))
            hostile_dropped(h);
    }
}

/* --- main ------------------------------------------------------------------------------ */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: qdup-abuse [options]\n\n"
            "Holds connections, sends one byte a second, never reads, floods maximum-size\n"
            "requests at qdup-daemon while well-behaved clients query; prints the daemon's\n"
            "peak RSS and the good clients' latencies (see the source's header).\n\n"
            "  --seconds S        how long the abuse lasts (default 20)\n"
            "  --hold N           connections opened and held (default 1000)\n"
            "  --loris N          slow-loris clients, one byte per second (default 20)\n"
            "  --nonreaders N     clients that never read their replies (default 10)\n"
            "  --flooders N       clients sending maximum-size requests (default 4)\n"
            "  --rows N           questions in the store (default 2000)\n"
            "  --max-line BYTES   the daemon's line limit (default 65536; passed to it)\n"
            "  --rss-limit MIB    fail if the daemon's peak RSS passes this (default 1024)\n"
            "  --daemon-arg ARG   one more argument for qdup-daemon (repeatable)\n"
            "  --expect-timeouts  fail unless the daemon closed every slow-loris and held\n"
            "                     connection (give it short --request-timeout and\n"
            "                     --idle-timeout through --daemon-arg)\n"
            "  --bin DIR          where qdup-daemon and qdup-index are (default: beside this)\n"
            "  --model FILE       model (default: the test fixture fwd_plain.qdm)\n"
            "  --dir DIR          work directory (default: a new one under $TMPDIR)\n");
}

static double opt_num(const char *name, const char *v, double lo, double hi)
{
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || *end || end == v || !(x >= lo && x <= hi)) {
        fprintf(stderr, "qdup-abuse: --%s %s: expected a number from %g to %g\n", name, v, lo,
                hi);
        exit(2);
    }
    return x;
}

int main(int argc, char **argv)
{
    harness_prog = "qdup-abuse";
    C.seconds = 20;
    C.hold = 1000;
    C.loris = 20;
    C.nonreaders = 10;
    C.flooders = 4;
    C.rows = 2000;
    C.max_line = 65536;
    C.rss_limit_mib = 1024;
    static const struct option lo[] = {
        {"seconds", 1, 0, 's'},    {"hold", 1, 0, 'H'},      {"loris", 1, 0, 'l'},
        {"nonreaders", 1, 0, 'n'}, {"flooders", 1, 0, 'f'},  {"rows", 1, 0, 'r'},
        {"max-line", 1, 0, 'L'},   {"rss-limit", 1, 0, 'R'}, {"daemon-arg", 1, 0, 'a'},
        {"bin", 1, 0, 'b'},        {"model", 1, 0, 'M'},     {"dir", 1, 0, 'd'},
        {"expect-timeouts", 0, 0, 'T'}, {"help", 0, 0, 'h'}, {0, 0, 0, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (ch) {
        case 's': C.seconds = opt_num("seconds", optarg, 0.1, 86400); break;
        case 'H': C.hold = (size_t)opt_num("hold", optarg, 0, 100000); break;
        case 'l': C.loris = (size_t)opt_num("loris", optarg, 0, 100000); break;
        case 'n': C.nonreaders = (size_t)opt_num("nonreaders", optarg, 0, 100000); break;
        case 'f': C.flooders = (size_t)opt_num("flooders", optarg, 0, 100000); break;
        case 'r': C.rows = (size_t)opt_num("rows", optarg, 1, 10000000); break;
        case 'L': C.max_line = (size_t)opt_num("max-line", optarg, 1024, 1 << 26); break;
        case 'R': C.rss_limit_mib = opt_num("rss-limit", optarg, 1, 1 << 20); break;
        case 'a':
            if (C.ndargs == MAX_DAEMON_ARGS)
                die("too many --daemon-arg");
            C.dargs[C.ndargs++] = optarg;
            break;
        case 'b': snprintf(C.bin, sizeof C.bin, "%s", optarg); break;
        case 'M': snprintf(C.model, sizeof C.model, "%s", optarg); break;
        case 'd': snprintf(C.dir, sizeof C.dir, "%s", optarg); C.dir_given = 1; break;
        case 'T': C.expect_timeouts = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        usage(stderr);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    harness_setup(C.bin, C.model, QDUP_ABUSE_MODEL, C.dir, C.dir_given);
    /* Room for every connection of ours. */
    size_t want_fds = C.hold + C.loris + C.nonreaders + C.flooders + 64;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < want_fds) {
        rl.rlim_cur = rl.rlim_max < want_fds ? rl.rlim_max : want_fds;
        setrlimit(RLIMIT_NOFILE, &rl);
        if (rl.rlim_cur < want_fds) {
            /* A machine that allows fewer files gets fewer held connections, not a
             * failed test; the note says so. */
            size_t room = rl.rlim_cur > want_fds - C.hold ? rl.rlim_cur - (want_fds - C.hold) : 0;
            printf("note: the open-files limit is %llu: holding %zu connections instead of %zu\n",
                   (unsigned long long)rl.rlim_cur, room, C.hold);
            C.hold = room;
        }
    }

    /* The store. */
    char db[PATH_MAX + 64], dump[PATH_MAX + 64], log[PATH_MAX + 64], ilog[PATH_MAX + 64];
    snprintf(db, sizeof db, "%s", path_in(C.dir, "abuse.db"));
    snprintf(dump, sizeof dump, "%s", path_in(C.dir, "abuse.tsv"));
    snprintf(log, sizeof log, "%s", path_in(C.dir, "daemon.log"));
    snprintf(ilog, sizeof ilog, "%s", path_in(C.dir, "index.log"));
    snprintf(sock_path, sizeof sock_path, "%s", path_in(C.dir, "abuse.sock"));
    FILE *f = fopen(dump, "w");
    if (!f)
        die("%s: %s", dump, strerror(errno));
    fprintf(f, "qid\tquestion\n");
    for (size_t k = 0; k < C.rows; k++) {
        char t[128];
        text_of(k, t, sizeof t);
        fprintf(f, "a%zu\t%s\n", k, t);
    }
    fclose(f);
    char idx[PATH_MAX + 16];
    snprintf(idx, sizeof idx, "%s/qdup-index", C.bin);
    char *bargv[] = {idx, "build", "--model", C.model, "--db", db, "--quiet", dump, NULL};
    if (wait_status(spawn(bargv, NULL, NULL, ilog)) != 0)
        die("qdup-index build failed (log %s)", ilog);

    /* The daemon. */
    char dmn[PATH_MAX + 16], ml[32];
    snprintf(dmn, sizeof dmn, "%s/qdup-daemon", C.bin);
    snprintf(ml, sizeof ml, "%zu", C.max_line);
    const char *dargv[16 + MAX_DAEMON_ARGS] = {dmn, "--db", db, "--socket", sock_path,
                                              "--threads", "2", "--max-line", ml};
    int na = 9;
    for (int i = 0; i < C.ndargs; i++)
        dargv[na++] = C.dargs[i];
    dargv[na] = NULL;
    pid_t dpid = live_pid = spawn((char *const *)dargv, NULL, NULL, log);
    atexit(kill_live);
    char want[PATH_MAX + 64];
    snprintf(want, sizeof want, "listening on %s", sock_path);
    double t0 = qd_now();
    while (!file_has_from(log, 0, want)) {
        int st;
        if (waitpid(dpid, &st, WNOHANG) == dpid) {
            live_pid = -1;
            die("qdup-daemon exited at start (log %s)", log);
        }
        if (qd_now() - t0 > DEADLINE)
            die("qdup-daemon did not start (log %s)", log);
        sleep_s(0.01);
    }
    long rss_start = proc_kib(dpid, "VmRSS");

    big_line = make_big(C.max_line, &big_len);
    over_line = make_big(C.max_line + 1, &over_len);
    printf("qdup-abuse: daemon pid %d, %zu questions, RSS at start %.1f MiB; %.0f s of: %zu held "
           "connections, %zu slow-loris clients, %zu non-readers, %zu flooders of %zu-byte "
           "requests; daemon options:",
           (int)dpid, C.rows, rss_start / 1024.0, C.seconds, C.hold, C.loris, C.nonreaders,
           C.flooders, C.max_line);
    for (int i = 0; i < C.ndargs; i++)
        printf(" %s", C.dargs[i]);
    printf("%s\n", C.ndargs ? "" : " (defaults)");
    fflush(stdout);

    /* Good clients first, so that the persistent one has its slot. */
    good_t good[2] = {{.fresh = 0}, {.fresh = 1}};
    good[0].fd = dial(0);
    if (good[0].fd < 0)
        die("cannot connect to %s", sock_path);
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&th[i], NULL, good_run, &good[i]);

    /* Then the hostile ones, in this order: flooders, non-readers, loris, held. */
    size_t nh = C.flooders + C.nonreaders + C.loris;
    hostile_t *hs = calloc(nh ? nh : 1, sizeof *hs);
    double now = qd_now();
    for (size_t i = 0; i < nh; i++) {
        hs[i].kind = i < C.flooders ? K_FLOODER
                     : i < C.flooders + C.nonreaders ? K_NONREADER
                                                     : K_LORIS;
        hostile_connect(&hs[i], now);
        hs[i].next = now + (double)i / (double)(nh ? nh : 1); /* loris spread over a second */
    }
    int *held = malloc((C.hold ? C.hold : 1) * sizeof *held);
    size_t nheld = 0;
    for (size_t i = 0; i < C.hold; i++) {
        held[i] = dial(1);
        nheld += held[i] >= 0;
    }

    /* The abuse, sampling the daemon's memory. */
    struct pollfd *pf = calloc(nh ? nh : 1, sizeof *pf);
    double end = qd_now() + C.seconds, next_sample = 0;
    long rss_max_seen = rss_start;
    while ((now = qd_now()) < end) {
        for (size_t i = 0; i < nh; i++) {
            if (hs[i].fd < 0)
                hostile_connect(&hs[i], now);
            pf[i].fd = hs[i].fd;
            pf[i].events = hs[i].kind == K_FLOODER     ? POLLIN | POLLOUT
                           : hs[i].kind == K_NONREADER ? POLLOUT
                                                       : POLLIN;
            pf[i].revents = 0;
        }
        poll(pf, nh, 50);
        now = qd_now();
        for (size_t i = 0; i < nh; i++)
            if (hs[i].fd >= 0)
                hostile_step(&hs[i], pf[i].revents, now);
        if (now >= next_sample) {
            long r = proc_kib(dpid, "VmRSS");
            if (r > rss_max_seen)
                rss_max_seen = r;
            next_sample = now + 0.25;
        }
    }
    long hwm = proc_kib(dpid, "VmHWM");

    /* How many held connections the daemon still keeps (it refuses those past
     * max_clients and closes them): a held one that reads EOF was refused. */
    size_t held_closed = 0;
    for (size_t i = 0; i < C.hold; i++) {
        if (held[i] < 0)
            continue;
        char b[512];
        ssize_t r = recv(held[i], b, sizeof b, MSG_DONTWAIT);
        held_closed += r > 0 || r == 0;
    }

    /* The daemon's own account, over a connection made once the abusers are gone. */
    for (size_t i = 0; i < nh; i++)
        if (hs[i].fd >= 0)
            close(hs[i].fd);
    for (size_t i = 0; i < C.hold; i++)
        if (held[i] >= 0)
            close(held[i]);
    atomic_store(&stop_good, 1);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    char stats[1 << 16] = "";
    int sfd = -1;
    for (int tries = 0; tries < 100 && sfd < 0; tries++) {
        sfd = dial(0);
        if (sfd >= 0 && rpc(sfd, "{\"op\":\"stats\"}\n", 15, stats, sizeof stats) < 0) {
            close(sfd);
            sfd = -1;
        }
        if (sfd >= 0 && !strstr(stats, "\"ok\":true")) { /* refused: slots not freed yet */
            close(sfd);
            sfd = -1;
            sleep_s(0.1);
        }
    }
    if (sfd >= 0)
        close(sfd);
    json_t *sj = json_loads(stats, 0, NULL);
    json_t *cl = json_object_get(json_object_get(sj, "stats"), "clients");
    json_t *er = json_object_get(json_object_get(sj, "stats"), "errors");
    kill(dpid, SIGTERM);
    int dst = wait_status(dpid);
    live_pid = -1;

    /* The report. */
    int ok = 1;
    double hwm_mib = hwm / 1024.0;
    printf("daemon: peak RSS (VmHWM) %.1f MiB (highest VmRSS sampled %.1f MiB; %.1f MiB at "
           "start); limit %.0f MiB\n",
           hwm_mib, rss_max_seen / 1024.0, rss_start / 1024.0, C.rss_limit_mib);
    printf("daemon: clients accepted %lld, refused %lld (too many or shutting down), dropped "
           "for unread replies %lld; errors busy %lld, too_large %lld, bad_request %lld; "
           "exit status %d on SIGTERM\n",
           (long long)json_integer_value(json_object_get(cl, "total")),
           (long long)json_integer_value(json_object_get(cl, "refused")),
           (long long)json_integer_value(json_object_get(cl, "dropped")),
           (long long)json_integer_value(json_object_get(er, "busy")),
           (long long)json_integer_value(json_object_get(er, "too_large")),
           (long long)json_integer_value(json_object_get(er, "bad_request")), dst);
    printf("held: %zu connections made, %zu of them closed by the daemon (refused past "
           "max-clients, or idle)\n", nheld, held_closed);
    static const char *const kname[] = {"slow loris", "non-readers", "flooders"};
    for (int k = 0; k < 3; k++)
        printf("%s: %zu connections, %zu dropped by the daemon, %" PRIu64 " bytes sent, %zu "
               "replies read (ok %zu, busy %zu, too_large %zu, bad_request %zu, other %zu)\n",
               kname[k], cnt[k].connects, cnt[k].dropped, cnt[k].bytes_sent, cnt[k].replies,
               cnt[k].ok, cnt[k].busy, cnt[k].too_large, cnt[k].bad_request, cnt[k].other);
    double p50[2], p99[2], mx[2];
    for (int i = 0; i < 2; i++) {
        good_t *g = &good[i];
        if (g->nlat) /* lat is NULL when no answer came: qsort must not see it */
            qsort(g->lat, g->nlat, sizeof *g->lat, cmp_double);
        p50[i] = pct(g->lat, g->nlat, 50);
        p99[i] = pct(g->lat, g->nlat, 99);
        mx[i] = g->nlat ? g->lat[g->nlat - 1] : 0;
        printf("good client (%s): %zu queries, %zu ok, %zu busy, %zu other errors, %zu "
               "unanswered; latency of ok answers p50 %.2f ms, p99 %.2f ms, max %.2f ms\n",
               i ? "new connection per query" : "one connection", g->asked, g->ok, g->busy,
               g->other, g->lost, p50[i], p99[i], mx[i]);
    }
    if (hwm < 0 || hwm_mib > C.rss_limit_mib) {
        fprintf(stderr, "qdup-abuse: FAIL: peak RSS %.1f MiB over the limit of %.0f MiB\n",
                hwm_mib, C.rss_limit_mib);
        ok = 0;
    }
    if (good[0].ok == 0 || good[0].ok != good[0].asked) {
        fprintf(stderr, "qdup-abuse: FAIL: the persistent good client got %zu ok answers to %zu "
                "queries\n", good[0].ok, good[0].asked);
        ok = 0;
    }
    if (C.expect_timeouts && (cnt[K_LORIS].bad_request < C.loris ||
                              cnt[K_LORIS].dropped < C.loris || held_closed < nheld)) {
        fprintf(stderr, "qdup-abuse: FAIL: with timeouts, the daemon answered %zu and dropped %zu "
                "slow-loris clients (of %zu) and closed %zu of %zu held connections\n",
                cnt[K_LORIS].bad_request, cnt[K_LORIS].dropped, C.loris, held_closed, nheld);
        ok = 0;
    }
    if (dst != 0) {
        fprintf(stderr, "qdup-abuse: FAIL: qdup-daemon exited with %d (log %s)\n", dst, log);
        ok = 0;
    }
    printf("RESULT seconds=%.0f hold=%zu loris=%zu nonreaders=%zu flooders=%zu "
           "peak_rss_mib=%.1f good=%zu good_ok=%zu p50_ms=%.2f p99_ms=%.2f max_ms=%.2f "
           "fresh=%zu fresh_ok=%zu fresh_busy=%zu fresh_p99_ms=%.2f status=%s\n",
           C.seconds, C.hold, C.loris, C.nonreaders, C.flooders, hwm_mib, good[0].asked,
           good[0].ok, p50[0], p99[0], mx[0], good[1].asked, good[1].ok, good[1].busy, p99[1],
           ok ? "ok" : "FAILED");
    json_decref(sj);
    free(good[0].lat);
    free(good[1].lat);
    free(hs);
    free(held);
    free(pf);
    free(big_line);
    free(over_line);
    if (ok && !C.dir_given)
        remove_tree(C.dir);
    else
        printf("work directory kept: %s\n", C.dir);
    return ok ? 0 : 1;
}
