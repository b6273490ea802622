/*
 * qdup-load.c - a load generator for qdup-daemon: N connections, a fixed number of
 * requests, queries per second and latency percentiles.
 *
 * Each connection is a closed loop: it sends one request, waits for the reply, sends
 * the next (so N connections keep exactly N requests in flight, like N forum web
 * workers). Latency is from the first byte sent to the reply's newline received, on
 * the client's monotonic clock. All connections run on one libuv loop in one thread,
 * which costs far less CPU than the daemon's work, so the numbers describe the daemon.
 *
 * Questions come from a dump (any format qdup-index reads, e.g. the shared
 * questions.tsv); request i asks for question (seed-shuffled order)[i mod n]. A warm-up
 * phase (not measured) runs first. The last lines are machine-readable:
 *   RESULT clients=8 requests=20000 errors=0 seconds=3.2 qps=6250.0 p50_ms=1.1 ...
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <uv.h>

#include "qdup/common.h"
#include "qdup/dump.h"

typedef struct loadgen loadgen;

/* One connection. */
typedef struct conn {
    uv_pipe_t pipe;        /* first */
    uv_connect_t creq;     /* the connect request */
    uv_write_t wreq;       /* the write of the current request */
    loadgen *lg;           /* owner */
    char *in;              /* reply bytes so far */
    size_t in_len, in_cap;
    double t0;             /* when the current request was sent */
    int busy;              /* a request is out */
    int measured;          /* the current request counts (not warm-up) */
} conn;

struct loadgen {
    uv_loop_t *loop;       /* the one loop all connections run on */
    conn *conns;           /* (nconn) the connections */
    size_t nconn;
    char **lines;          /* (nlines) request lines, '\n'-terminated */
    size_t *line_len;      /* (nlines) their lengths */
    size_t nlines;
    size_t warmup;         /* requests before measuring */
    size_t total;          /* measured requests */
    size_t issued;         /* requests sent (warm-up included) */
    size_t done_measured;  /* measured replies received */
    size_t errors;         /* measured replies that were not ok */
    size_t failed;         /* connections lost */
    double *lat;           /* (total) latencies of measured requests, ms */
    double t_start, t_end; /* the measured phase */
    int started;           /* the measured phase has begun */
    char rbuf[65536];      /* read buffer shared by all connections */
};

static void send_next(conn *c);

static void on_alloc(uv_handle_t *h, size_t sz, uv_buf_t *b)
{
    (void)sz;
    conn *c = (conn *)h;
    *b = uv_buf_init(c->lg->rbuf, sizeof c->lg->rbuf);
}

static void conn_fail(conn *c, const char *why)
{
    fprintf(stderr, "qdup-load: connection lost: %s\n", why);
    c->lg->failed++;
    if (!uv_is_closing((uv_handle_t *)&c->pipe))
        uv_close((uv_handle_t *)&c->pipe, NULL);
}

static void on_reply(conn *c, const char *line, size_t len)
{
    loadgen *lg = c->lg;
    double ms = (qd_now() - c->t0) * 1e3;
    c->busy = 0;
    if (c->measured) {
        lg->lat[lg->done_measured++] = ms;
        if (len < 10 || memcmp(line, "{\"ok\":true", 10) != 0) {
            if (lg->errors < 5)
                fprintf(stderr, "qdup-load: error reply: %.*s\n", (int)(len > 300 ? 300 : len),
                        line);
            lg->errors++;
        }
        if (lg->done_measured == lg->total)
            lg->t_end = qd_now();
    }
    send_next(c);
}

static void on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b)
{
    (void)b;
    conn *c = (conn *)st;
    if (n == 0)
        return;
    if (n < 0) {
        conn_fail(c, uv_strerror((int)n));
        return;
    }
    if (c->in_len + (size_t)n > c->in_cap) {
        size_t cap = c->in_cap ? c->in_cap : 65536;
        while (cap < c->in_len + (size_t)n)
            cap *= 2;
        char *p = realloc(c->in, cap);
        if (!p) {
            conn_fail(c, "out of memory");
            return;
        }
        c->in = p;
        c->in_cap = cap;
    }
    memcpy(c->in + c->in_len, c->lg->rbuf, (size_t)n);
    c->in_len += (size_t)n;
    char *nl;
    while ((nl = memchr(c->in, '\n', c->in_len)) != NULL) {
        size_t len = (size_t)(nl - c->in);
        on_reply(c, c->in, len);
        memmove(c->in, nl + 1, c->in_len - len - 1);
        c->in_len -= len + 1;
    }
}

static void on_written(uv_write_t *w, int status)
{
    conn *c = w->data;
    if (status < 0)
        conn_fail(c, uv_strerror(status));
}

static void send_next(conn *c)
{
    loadgen *lg = c->lg;
    if (lg->issued >= lg->warmup + lg->total) {
        if (!uv_is_closing((uv_handle_t *)&c->pipe))
            uv_close((uv_handle_t *)&c->pipe, NULL);
        return;
    }
    size_t i = lg->issued++;
    if (i == lg->warmup && !lg->started) {
        lg->started = 1;
        lg->t_start = qd_now();
    }
    c->measured = i >= lg->warmup;
    size_t li = i % lg->nlines;
    uv_buf_t buf = uv_buf_init(lg->lines[li], (unsigned)lg->line_len[li]);
    c->busy = 1;
    c->t0 = qd_now();
    c->wreq.data = c;
    int rc = uv_write(&c->wreq, (uv_stream_t *)&c->pipe, &buf, 1, on_written);
    if (rc < 0)
        conn_fail(c, uv_strerror(rc));
}

static void on_connect(uv_connect_t *req, int status)
{
    conn *c = req->data;
    if (status < 0) {
        conn_fail(c, uv_strerror(status));
        return;
    }
    uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read);
    send_next(c);
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
    size_t i = (size_t)((p / 100.0) * (double)n + 0.999999);
    return v[i ? i - 1 : 0];
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: qdup-load --socket PATH --questions FILE [options]\n\n"
            "Loads qdup-daemon with N closed-loop connections and reports queries per\n"
            "second and latency percentiles. The last line is machine-readable (RESULT ...).\n\n"
            "options:\n"
            "  --clients N      concurrent connections (default 8)\n"
            "  --requests N     measured requests, all connections together (default 20000)\n"
            "  --warmup N       requests before measuring (default 1000)\n"
            "  -k N             results per query (default 10)\n"
            "  --limit N        use only the first N questions of the file (default all)\n"
            "  --seed N         shuffles the order of the questions (default 1)\n"
            "  --label TEXT     added to the RESULT line as label=TEXT\n");
}

int main(int argc, char **argv)
{
    const char *socket_path = NULL, *questions = NULL, *label = NULL;
    size_t nconn = 8, total = 20000, warmup = 1000, k = 10, limit = 0;
    unsigned long long seed = 1;
    static const struct option lopts[] = {
        {"socket", required_argument, NULL, 's'}, {"questions", required_argument, NULL, 'q'},
        {"clients", required_argument, NULL, 'c'}, {"requests", required_argument, NULL, 'n'},
        {"warmup", required_argument, NULL, 'w'}, {"limit", required_argument, NULL, 'l'},
        {"seed", required_argument, NULL, 'S'},   {"label", required_argument, NULL, 'L'},
        {"help", no_argument, NULL, 'h'},         {0, 0, 0, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "k:h", lopts, NULL)) != -1) {
        char *end = NULL;
        unsigned long long v = 0;
        if (optarg) {
            errno = 0;
            v = strtoull(optarg, &end, 10);
            if (ch != 's' && ch != 'q' && ch != 'L' && (*end || errno || optarg[0] == '-')) {
                fprintf(stderr, "qdup-load: bad number \"%s\"\n", optarg);
                return 2;
            }
        }
        switch (ch) {
        case 's': socket_path = optarg; break;
        case 'q': questions = optarg; break;
        case 'L': label = optarg; break;
        case 'c': nconn = (size_t)v; break;
        case 'n': total = (size_t)v; break;
        case 'w': warmup = (size_t)v; break;
        case 'k': k = (size_t)v; break;
        case 'l': limit = (size_t)v; break;
        case 'S': seed = v; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!socket_path || !questions || nconn == 0 || total == 0 || k == 0) {
        usage(stderr);
        return 2;
    }

    /* The request lines, one per question. */
    char err[QD_ERRMSG_MAX];
    qd_dump *d;
    if (qd_dump_open(questions, NULL, &d, err, sizeof err)) {
        fprintf(stderr, "qdup-load: %s\n", err);
        return 2;
    }
    loadgen *lg = calloc(1, sizeof *lg);
    size_t cap = 0;
    qd_dump_rec rec;
    int rc;
    while ((!limit || lg->nlines < limit) && (rc = qd_dump_next(d, &rec)) != 0) {
        if (rc == QD_ERR_FORMAT)
            continue;
        if (rc < 0) {
            fprintf(stderr, "qdup-load: %s\n", qd_dump_errmsg(d));
            return 2;
        }
        if (lg->nlines == cap) {
            cap = cap ? 2 * cap : 4096;
            lg->lines = realloc(lg->lines, cap * sizeof *lg->lines);
            lg->line_len = realloc(lg->line_len, cap * sizeof *lg->line_len);
            if (!lg->lines || !lg->line_len)
                return 2;
        }
        json_t *j = json_pack("{s:s, s:s%, s:I}", "op", "query", "text", rec.text,
                              rec.text_len, "k", (json_int_t)k);
        char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
        json_decref(j);
        if (!s)
            continue;
        size_t len = strlen(s);
        char *line = malloc(len + 2);
        memcpy(line, s, len);
        line[len] = '\n';
        line[len + 1] = '\0';
        free(s);
        lg->lines[lg->nlines] = line;
        lg->line_len[lg->nlines++] = len + 1;
    }
    qd_dump_close(d);
    if (lg->nlines == 0) {
        fprintf(stderr, "qdup-load: no questions in %s\n", questions);
        return 2;
    }
    /* A seeded shuffle, so runs with one seed ask the same questions in one order. */
    uint64_t x = seed * 0x9E3779B97F4A7C15ULL + 1;
    for (size_t i = lg->nlines - 1; i > 0; i--) {
        x ^= x >> 12, x ^= x << 25, x ^= x >> 27;
        size_t j = (size_t)((x * 0x2545F4914F6CDD1DULL) % (i + 1));
        char *t = lg->lines[i];
        lg->lines[i] = lg->lines[j];
        lg->lines[j] = t;
        size_t tl = lg->line_len[i];
        lg->line_len[i] = lg->line_len[j];
        lg->line_len[j] = tl;
    }

    lg->loop = uv_default_loop();
    lg->nconn = nconn;
    lg->warmup = warmup;
    lg->total = total;
    lg->lat = calloc(total, sizeof *lg->lat);
    lg->conns = calloc(nconn, sizeof *lg->conns);
    if (!lg->lat || !lg->conns)
        return 2;
    if (warmup == 0) {
        lg->started = 1;
        lg->t_start = qd_now();
    }
    for (size_t i = 0; i < nconn; i++) {
        conn *c = &lg->conns[i];
        c->lg = lg;
        uv_pipe_init(lg->loop, &c->pipe, 0);
        c->creq.data = c;
        uv_pipe_connect(&c->creq, &c->pipe, socket_path, on_connect);
    }
    uv_run(lg->loop, UV_RUN_DEFAULT);

    size_t n = lg->done_measured;
    double secs = lg->t_end > lg->t_start ? lg->t_end - lg->t_start : qd_now() - lg->t_start;
    qsort(lg->lat, n, sizeof *lg->lat, cmp_double);
    double qps = secs > 0 ? (double)n / secs : 0;
    printf("qdup-load: %zu clients, %zu queries (k %zu, %zu questions) in %.3f s: %.1f "
           "queries/s; latency ms p50 %.3f p90 %.3f p99 %.3f max %.3f; errors %zu\n",
           nconn, n, k, lg->nlines, secs, qps, pct(lg->lat, n, 50), pct(lg->lat, n, 90),
           pct(lg->lat, n, 99), n ? lg->lat[n - 1] : 0.0, lg->errors);
    printf("RESULT clients=%zu requests=%zu errors=%zu seconds=%.3f qps=%.1f p50_ms=%.3f "
           "p90_ms=%.3f p99_ms=%.3f max_ms=%.3f k=%zu%s%s\n",
           nconn, n, lg->errors, secs, qps, pct(lg->lat, n, 50), pct(lg->lat, n, 90),
           pct(lg->lat, n, 99), n ? lg->lat[n - 1] : 0.0, k, label ? " label=" : "",
           label ? label : "");
    int status = (n == total && lg->errors == 0 && lg->failed == 0) ? 0 : 1;
    uv_loop_close(lg->loop);
    for (size_t i = 0; i < lg->nlines; i++)
        free(lg->lines[i]);
    free(lg->lines);
    free(lg->line_len);
    free(lg->lat);
    free(lg->conns);
    free(lg);
    return status;
}
