/*
 * main.c - qdup-daemon: options and config file, the store, then the server.
 *
 * Every option can be given on the command line (--name VALUE or --name=VALUE) or in
 * a config file (--config FILE: one "name value" or "name = value" per line, '#'
 * starts a comment); the command line wins. One table describes them all, so the
 * two sources cannot drift apart and --help lists exactly what is accepted.
 *
 * The process-wide settings the server's design relies on are made here, before any
 * work starts: OpenBLAS and FAISS use one thread per call (the parallelism comes from
 * libuv's pool, one search per worker), FAISS's exact search uses matrix products
 * from one query on (a Flat index: see --blas-threshold), and the open-files limit is
 * raised to fit max_clients connections.
 *
 * Why a threshold of 1 on Flat. Debian's FAISS is a generic build: its per-query scan
 * has no vectorized kernel, and the BLAS path (one sgemm per block of 1024 stored
 * vectors) is cheaper at every batch size. Measured on this 2-core machine, CPU time
 * per search call over 67,033 vectors of 128 floats, k 10, one thread: threshold 20
 * (FAISS's default): 1 query 4.9 ms, 2 queries 9.6 ms, 8 queries 38 ms, 20 queries
 * 10.7 ms; threshold 1: 2.5-2.9, 6.9-7.1, 8.1-8.6 and 10.4-10.8 ms. The cost at
 * threshold 1 grows with the number of queries, so padding a batch (--search-pad,
 * which made 2..19 queries cost what 20 do under the old threshold) only adds work
 * and is off by default. All of this is for FAISS's own exact search, which a Flat
 * index uses only with --param flatscan=0: by default qd_ann answers exact searches from
 * its 8-bit scan (flatscan.h), where a batch costs little more per query than one
 * query alone and padding would only add work.
 */
#include <errno.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include <cblas.h>

#include "qdup/common.h"
#include "qdup/fileio.h"
#include "qdup/backend.h"
#include "qdup/log.h"
#include "qdup/memidx.h"
#include "qdup/server.h"
#include "qdup/ann.h"
#include "qdup/store.h"

/* Everything the options set. */
typedef struct cfg {
    qd_server_opts so;       /* server options */
    const char *db;          /* --db */
    const char *model;       /* --model */
    int ephemeral;           /* --ephemeral */
    long search_pad;         /* --search-pad; -1: decided from the index kind */
    long blas_threshold;     /* --blas-threshold; -1: decided from the index kind */
    const char *params[8];   /* --param NAME=VALUE, applied after the store opens */
    size_t nparams;
    uint32_t uids[64];       /* --write-uids */
    char *strs[64];          /* strings copied from a config file, freed at exit */
    size_t nstrs;
    int log_level;           /* --log-level (qd_log_level) */
    qd_log_time log_time;    /* --log-time */
} cfg;

typedef int (*opt_fn)(cfg *c, const char *v, char *err, size_t errlen);

/* One option: its name, whether it takes a value, how to apply it, its help. */
typedef struct opt {
    const char *name; /* without the leading "--" */
    const char *arg;  /* the value's name in --help, NULL for a flag */
    opt_fn set;       /* checks the value and stores it in the cfg */
    const char *help; /* one sentence for --help */
} opt;

/* --- value parsers ------------------------------------------------------------------- */

static int parse_secs(const char *v, double *out)
{
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (end == v || *end || errno || !(x >= 0 && x <= 86400 * 365))
        return -1;
    *out = x;
    return 0;
}

#define SIZE_OPT(fn, field, lo, hi)                                                     \
    static int fn(cfg *c, const char *v, char *err, size_t errlen)                      \
    {                                                                                   \
        size_t x;                                                                       \
        if (qd_parse_size(v, lo, hi, &x))                                               \
            return qd_errf(err, errlen, QD_ERR_INVAL, "must be a number from %llu to %llu", \
                           (unsigned long long)(lo), (unsigned long long)(hi));         \
        c->field = x;                                                                   \
        return 0;                                                                       \
    }

SIZE_OPT(set_max_clients, so.max_clients, 1, 1000000)
SIZE_OPT(set_max_queued, so.max_queued, 1, 10000000)
SIZE_OPT(set_max_inflight, so.max_inflight, 1, 100000)
SIZE_OPT(set_max_output, so.max_output, 1024, 1ULL << 34)
SIZE_OPT(set_max_output_total, so.max_output_total, 1024, 1ULL << 40)
SIZE_OPT(set_max_queued_bytes, so.max_queued_bytes, 1024, 1ULL << 40)
SIZE_OPT(set_max_line, so.limits.max_line, 64, 1ULL << 30)
SIZE_OPT(set_max_k, so.limits.max_k, 1, 100000)
SIZE_OPT(set_max_text, so.limits.max_text, 1, 1ULL << 30)
SIZE_OPT(set_max_batch, so.limits.max_batch, 1, 100000)
SIZE_OPT(set_max_reply, so.limits.max_reply, 1024, 1ULL << 34)
SIZE_OPT(set_search_batch, so.search_batch, 1, 100000)
SIZE_OPT(set_batch_results, so.batch_results, 1, 1ULL << 40)
SIZE_OPT(set_batch_bytes, so.batch_bytes, 1, 1ULL << 40)
SIZE_OPT(set_pause_output, so.pause_output, 1024, 1ULL << 40)
SIZE_OPT(set_write_batch, so.write_batch, 1, 100000)

static int set_db(cfg *c, const char *v, char *err, size_t errlen)
{
    (void)err, (void)errlen;
    c->db = v;
    return 0;
}

static int set_socket(cfg *c, const char *v, char *err, size_t errlen)
{
    (void)err, (void)errlen;
    c->so.socket_path = v;
    return 0;
}

static int set_model(cfg *c, const char *v, char *err, size_t errlen)
{
    (void)err, (void)errlen;
    c->model = v;
    return 0;
}

static int set_ephemeral(cfg *c, const char *v, char *err, size_t errlen)
{
    (void)v, (void)err, (void)errlen;
    c->ephemeral = 1;
    return 0;
}

static int set_owner_only(cfg *c, const char *v, char *err, size_t errlen)
{
    (void)v, (void)err, (void)errlen;
    c->so.owner_only = 1;
    return 0;
}

static int set_threads(cfg *c, const char *v, char *err, size_t errlen)
{
    size_t x;
    if (qd_parse_size(v, 1, 64, &x))
        return qd_errf(err, errlen, QD_ERR_INVAL, "must be a number from 1 to 64");
    c->so.threads = (int)x;
    return 0;
}

static int set_whole_batches(cfg *c, const char *v, char *err, size_t errlen)
{
    (void)v, (void)err, (void)errlen;
    c->so.whole_batches = 1;
    return 0;
}

static int set_search_pad(cfg *c, const char *v, char *err, size_t errlen)
{
    size_t x;
    if (qd_parse_size(v, 0, 4096, &x))
        return qd_errf(err, errlen, QD_ERR_INVAL, "must be a number from 0 to 4096");
    c->search_pad = (long)x;
    return 0;
}

static int set_rank(cfg *c, const char *v, char *err, size_t errlen)
{
    if (qd_rank_mode_parse(v, &c->so.rank))
        return qd_errf(err, errlen, QD_ERR_INVAL, "must be fused or cosine");
    return 0;
}

static int set_blas_threshold(cfg *c, const char *v, char *err, size_t errlen)
{
    size_t x;
    if (qd_parse_size(v, 0, 4096, &x))
        return qd_errf(err, errlen, QD_ERR_INVAL, "must be a number from 0 to 4096");
    c->blas_threshold = (long)x;
    return 0;
}

static int set_socket_mode(cfg *c, const char *v, char *err, size_t errlen)
{
    char *end;
    errno = 0;
    unsigned long m = strtoul(v, &end, 8);
    if (end == v || *end || errno || m > 0777)
        return qd_errf(err, errlen, QD_ERR_INVAL, "must be octal permission bits, e.g. 0660");
    c->so.socket_mode = (unsigned)m;
    return 0;
}

static int set_checkpoint(cfg *c, const char *v, char *err, size_t errlen)
{
    if (parse_secs(v, &c->so.checkpoint_s))
        return qd_errf(err, errlen, QD_ERR_INVAL, "must be a number of seconds");
    return 0;
}

static int set_drain(cfg *c, const char *v, char *err, size_t errlen)
{
    if (parse_secs(v, &c->so.drain_s))
        return qd_errf(err, errlen, QD_ERR_INVAL, "must be a number of seconds");
    return 0;
}

static int set_request_timeout(cfg *c, const char *v, char *err, size_t errlen)
{
    if (parse_secs(v, &c->so.request_timeout_s))
        return qd_errf(err, errlen, QD_ERR_INVAL, "must be a number of seconds");
    return 0;
}

static int set_idle_timeout(cfg *c, const char *v, char *err, size_t errlen)
{
    if (parse_secs(v, &c->so.idle_timeout_s))
        return qd_errf(err, errlen, QD_ERR_INVAL, "must be a number of seconds");
    return 0;
}

static int set_param(cfg *c, const char *v, char *err, size_t errlen)
{
    const char *eq = strchr(v, '=');
    if (!eq || eq == v || eq[1] == '\0')
        return qd_errf(err, errlen, QD_ERR_INVAL, "expected NAME=VALUE, e.g. nprobe=16");
    if (c->nparams == sizeof c->params / sizeof c->params[0])
        return qd_errf(err, errlen, QD_ERR_RANGE, "at most %zu of them",
                       sizeof c->params / sizeof c->params[0]);
    c->params[c->nparams++] = v;
    return 0;
}

/* Sets each --param on the opened store; names the one refused. */
static int apply_params(const cfg *c, qd_store *store)
{
    for (size_t i = 0; i < c->nparams; i++) {
        if (qd_store_set_param_text(store, c->params[i]) != 0) {
            qd_log(QD_LOG_ERR, "--param %s: %s", c->params[i],
                    qd_store_errmsg(store));
            return -1;
        }
        qd_log(QD_LOG_INFO, "search parameter %s", c->params[i]);
    }
    return 0;
}

/* A list of uids or user names, comma-separated. */
static int set_write_uids(cfg *c, const char *v, char *err, size_t errlen)
{
    size_t n = 0;
    const char *p = v;
    while (*p) {
        size_t len = strcspn(p, ",");
        char name[256];
        if (len == 0 || len >= sizeof name)
            return qd_errf(err, errlen, QD_ERR_INVAL, "bad uid list \"%s\"", v);
        memcpy(name, p, len);
        name[len] = '\0';
        char *end;
        errno = 0;
        unsigned long uid = strtoul(name, &end, 10);
        if (*end || errno || uid > UINT32_MAX || name[0] == '-') {
            struct passwd *pw = getpwnam(name);
            if (!pw)
                return qd_errf(err, errlen, QD_ERR_INVAL, "no user \"%s\"", name);
            uid = pw->pw_uid;
        }
        if (n == sizeof c->uids / sizeof c->uids[0])
            return qd_errf(err, errlen, QD_ERR_RANGE, "at most %zu uids",
                           sizeof c->uids / sizeof c->uids[0]);
        c->uids[n++] = (uint32_t)uid;
        p += len;
        if (*p == ',')
            p++;
    }
    c->so.write_uids = c->uids;
    c->so.n_write_uids = n;
    return 0;
}

static int set_write_group(cfg *c, const char *v, char *err, size_t errlen)
{
    char *end;
    errno = 0;
    unsigned long gid = strtoul(v, &end, 10);
    if (end == v || *end || errno || gid > UINT32_MAX || v[0] == '-') {
        struct group *gr = getgrnam(v);
        if (!gr)
            return qd_errf(err, errlen, QD_ERR_INVAL, "no group \"%s\"", v);
        gid = gr->gr_gid;
    }
    c->so.write_group_set = 1;
    c->so.write_gid = (uint32_t)gid;
    return 0;
}

static int set_log_level(cfg *c, const char *v, char *err, size_t errlen)
{
    if (qd_log_parse_level(v, &c->log_level))
        return qd_errf(err, errlen, QD_ERR_INVAL, "must be error, warn, info or debug");
    return 0;
}

static int set_log_time(cfg *c, const char *v, char *err, size_t errlen)
{
    if (qd_log_parse_time(v, &c->log_time))
        return qd_errf(err, errlen, QD_ERR_INVAL, "must be yes, no or auto");
    return 0;
}

static int set_huge_pages(cfg *c, const char *v, char *err, size_t errlen)
{
    if (strcmp(v, "yes") != 0 && strcmp(v, "no") != 0)
        return qd_errf(err, errlen, QD_ERR_INVAL, "must be yes or no");
    c->so.huge_pages = strcmp(v, "yes") == 0;
    return 0;
}

static const opt options[] = {
    {"db", "PATH", set_db, "the question store made by qdup-index (required)"},
    {"socket", "PATH", set_socket, "Unix socket to listen on (required)"},
    {"model", "PATH", set_model,
     "model file (default: the one the store remembers); it must be the model the "
     "store was built with"},
    {"ephemeral", NULL, set_ephemeral,
     "keep questions in memory only, starting empty; nothing is saved (for tests; "
     "needs --model, not --db)"},
    {"threads", "N", set_threads,
     "search workers (default: one more than the processors online, at most 64); "
     "writes have one more"},
    {"socket-mode", "MODE", set_socket_mode, "socket file permissions, octal (default 0660)"},
    {"owner-only", NULL, set_owner_only, "refuse connections from any uid but the daemon's"},
    {"write-uids", "LIST", set_write_uids,
     "only these uids or user names (comma-separated) may add, remove or check with "
     "store; everyone who can connect may still query"},
    {"write-group", "GROUP", set_write_group,
     "members of GROUP (name or gid) may write too (primary or supplementary group)"},
    {"max-clients", "N", set_max_clients, "connections at once (default 1024)"},
    {"max-queued", "N", set_max_queued,
     "requests waiting for a worker before new ones are answered busy (default 4096)"},
    {"max-inflight", "N", set_max_inflight,
     "unanswered requests per client before it is no longer read (default 64)"},
    {"max-output", "BYTES", set_max_output,
     "unread reply bytes per client before it is dropped (default 8M)"},
    {"max-output-total", "BYTES", set_max_output_total,
     "unread reply bytes of all clients before the worst is dropped (default 256M)"},
    {"max-queued-bytes", "BYTES", set_max_queued_bytes,
     "bytes of waiting requests before new ones are answered busy (default 64M)"},
    {"max-line", "BYTES", set_max_line, "longest request line (default 64K)"},
    {"max-k", "N", set_max_k, "largest k (default 1000)"},
    {"max-text", "BYTES", set_max_text, "longest question text (default 16K)"},
    {"max-batch", "N", set_max_batch, "most texts in one query (default 256)"},
    {"max-reply", "BYTES", set_max_reply,
     "longest reply; a longer one is answered too_large (default 4M)"},
    {"search-batch", "N", set_search_batch,
     "most query texts encoded and searched together (default 64)"},
    {"whole-batches", NULL, set_whole_batches,
     "a free search worker takes every waiting query (up to the batch caps) instead "
     "of its share of them among the free workers"},
    {"batch-results", "N", set_batch_results,
     "most results (k for each text) in one batch of reads, unless a single request "
     "asks for more (default 1000)"},
    {"batch-bytes", "BYTES", set_batch_bytes,
     "most bytes of question text in one batch of reads, unless a single request has "
     "more (default 4K)"},
    {"pause-output", "BYTES", set_pause_output,
     "stop reading from a client owed more reply bytes than this (unsent, or estimated "
     "for its unanswered requests) until it reads some (default 256K)"},
    {"search-pad", "N", set_search_pad,
     "pad searches of 2 or more queries to N queries, for FAISS's matrix-product path "
     "(default: the BLAS threshold for a Flat index if it is above 1, else 0)"},
    {"blas-threshold", "N", set_blas_threshold,
     "FAISS's exact search computes a search call of N or more queries as one matrix "
     "product, process-wide (default 1 for a Flat index, measured cheaper even for one "
     "query; else FAISS's 20; 0: FAISS's 20)"},
    {"rank", "MODE", set_rank,
     "how queries are ranked unless a request says: fused (default: the cosine "
     "re-scored with BM25 over the model's candidates, by the model's fusion weight) "
     "or cosine"},
    {"param", "NAME=VALUE", set_param,
     "FAISS search parameter of the index, e.g. nprobe=16 (IVF: lists visited per "
     "query), efSearch=64 (HNSW: candidates kept); repeatable"},
    {"write-batch", "N", set_write_batch, "most adds committed together (default 256)"},
    {"huge-pages", "WHEN", set_huge_pages,
     "yes (default): once the index and model are in memory, and after each "
     "checkpoint, have the kernel back their buffers with 2 MiB pages (fewer TLB "
     "misses per search; Linux 6.1 or later); "
     "no: leave the pages as they are"},
    {"checkpoint-interval", "SECONDS", set_checkpoint,
     "save the index this often while it changes (default 30; 0: only at shutdown)"},
    {"drain-timeout", "SECONDS", set_drain,
     "at shutdown, how long clients get to read their replies (default 10)"},
    {"request-timeout", "SECONDS", set_request_timeout,
     "a request line must be complete this long after its first byte, or the client is "
     "answered bad_request and closed (default 30; 0: no limit)"},
    {"idle-timeout", "SECONDS", set_idle_timeout,
     "close a client that has sent nothing and is owed nothing this long (default 0: "
     "never)"},
    {"log-level", "LEVEL", set_log_level,
     "least important log lines written: error, warn, info (default) or debug"},
    {"log-time", "WHEN", set_log_time,
     "time on each log line: yes, no, or auto (default: no when stderr is the systemd "
     "journal's, which adds its own, else yes)"},
};
#define NOPTS (sizeof options / sizeof options[0])

static void usage(FILE *f)
{
    fprintf(f,
            "usage: qdup-daemon --db DB --socket PATH [options]\n"
            "       qdup-daemon --ephemeral --model MODEL --socket PATH [options]\n\n"
            "Serves near-duplicate queries over a Unix socket: one JSON request per line,\n"
            "one JSON reply per line (ops query, add, remove, get, check, verdict, reload,\n"
            "stats, ping, metrics). Logs \"listening on PATH\" when ready; SIGTERM or\n"
            "SIGINT stop it cleanly; SIGHUP re-reads the configuration and switches to a\n"
            "model staged by qdup-index reembed. Started by systemd with a socket\n"
            "(qdup.socket), it serves on that socket instead of binding its own.\n"
            "Log lines go to stderr with time and level (see --log-time).\n\n"
            "options (also accepted in a --config FILE, one \"name value\" per line):\n"
            "  --config FILE         read options from FILE; the command line wins\n");
    for (size_t i = 0; i < NOPTS; i++) {
        char head[64];
        snprintf(head, sizeof head, "--%s%s%s", options[i].name, options[i].arg ? " " : "",
                 options[i].arg ? options[i].arg : "");
        /* The option on its own line when long; the help wrapped at 80 columns. */
        int col = fprintf(f, "  %-21s", head);
        if (col > 23) {
            fputc('\n', f);
            col = fprintf(f, "%23s", "");
        }
        const char *h = options[i].help;
        while (*h) {
            size_t w = strcspn(h, " ");
            if (col + 1 + (int)w > 80) {
                fputc('\n', f);
                col = fprintf(f, "%23s", "");
            }
            col += fprintf(f, " %.*s", (int)w, h);
            h += w;
            h += strspn(h, " ");
        }
        fputc('\n', f);
    }
    fprintf(f, "  --help                this text\n");
}

static const opt *find_opt(const char *name, size_t len)
{
    for (size_t i = 0; i < NOPTS; i++)
        if (strlen(options[i].name) == len && memcmp(options[i].name, name, len) == 0)
            return &options[i];
    return NULL;
}

/* Applies one option; where says where it came from, for the message. */
static int apply(cfg *c, const char *name, size_t nlen, const char *val, const char *where)
{
    char err[QD_ERRMSG_MAX] = "";
    const opt *o = find_opt(name, nlen);
    if (!o) {
        qd_log(QD_LOG_ERR, "%s: unknown option \"%.*s\" (see --help)", where,
                (int)nlen, name);
        return -1;
    }
    if (o->arg && !val) {
        qd_log(QD_LOG_ERR, "%s: --%s needs a value", where, o->name);
        return -1;
    }
    if (!o->arg && val && strcmp(val, "true") != 0 && strcmp(val, "yes") != 0 &&
        strcmp(val, "1") != 0) {
        qd_log(QD_LOG_ERR, "%s: --%s takes no value", where, o->name);
        return -1;
    }
    if (o->set(c, val, err, sizeof err)) {
        qd_log(QD_LOG_ERR, "%s: --%s %s: %s", where, o->name, val ? val : "",
                err);
        return -1;
    }
    return 0;
}

/* Reads a config file: "name value" or "name = value" lines, '#' comments. */
static int read_config(cfg *c, const char *path)
{
    char err[QD_ERRMSG_MAX];
    char *data;
    size_t len;
    if (qd_file_read(path, 1 << 20, &data, &len, err, sizeof err)) {
        qd_log(QD_LOG_ERR, "%s", err);
        return -1;
    }
    int rc = 0;
    size_t lineno = 0;
    char *save = NULL;
    for (char *line = strtok_r(data, "\n", &save); line && !rc;
         line = strtok_r(NULL, "\n", &save)) {
        lineno++;
        char *hash = strchr(line, '#');
        if (hash)
            *hash = '\0';
        char *p = line + strspn(line, " \t\r");
        char *end = p + strlen(p);
        while (end > p && strchr(" \t\r", end[-1]))
            *--end = '\0';
        if (!*p)
            continue;
        size_t nlen = strcspn(p, " \t=");
        char *v = p + nlen;
        v += strspn(v, " \t");
        if (*v == '=')
            v++;
        v += strspn(v, " \t");
        char where[1100];
        snprintf(where, sizeof where, "%s line %zu", path, lineno);
        char *val = NULL;
        if (*v) {
            if (c->nstrs == sizeof c->strs / sizeof c->strs[0]) {
                qd_log(QD_LOG_ERR, "%s: too many options", where);
                rc = -1;
                break;
            }
            val = c->strs[c->nstrs++] = qd_strndup(v, strlen(v));
            if (!val) {
                rc = -1;
                break;
            }
        }
        rc = apply(c, p, nlen, val, where);
    }
    qd_free(data);
    return rc;
}

static int parse_args(cfg *c, int argc, char **argv)
{
    /* The config file first, so that the command line overrides it. */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            exit(0);
        }
        if (strncmp(a, "--config=", 9) == 0 || strcmp(a, "--config") == 0) {
            const char *path = a[8] == '=' ? a + 9 : (i + 1 < argc ? argv[++i] : NULL);
            if (!path) {
                qd_log(QD_LOG_ERR, "--config needs a file");
                return -1;
            }
            if (read_config(c, path))
                return -1;
        }
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) != 0) {
            qd_log(QD_LOG_ERR, "unexpected argument \"%s\" (see --help)", a);
            return -1;
        }
        if (strncmp(a, "--config", 8) == 0 && (a[8] == '\0' || a[8] == '=')) {
            if (a[8] == '\0')
                i++;
            continue;
        }
        const char *name = a + 2, *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        const opt *o = find_opt(name, nlen);
        const char *val = eq ? eq + 1 : NULL;
        if (o && o->arg && !eq) {
            if (i + 1 >= argc) {
                qd_log(QD_LOG_ERR, "--%s needs a value", o->name);
                return -1;
            }
            val = argv[++i];
        }
        if (apply(c, name, nlen, val, "command line"))
            return -1;
    }
    return 0;
}

/* Room for max_clients connections plus the files the store keeps open. */
static void raise_nofile(size_t clients)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    rlim_t want = (rlim_t)clients + 64;
    if (rl.rlim_cur >= want)
        return;
    rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > want ? want : rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur < want)
        qd_log(QD_LOG_WARN, "open-files limit %llu is below the %zu "
                "clients allowed", (unsigned long long)rl.rlim_cur, clients);
}

/* A cfg with the defaults. */
static void cfg_init(cfg *c)
{
    for (size_t i = 0; i < c->nstrs; i++)
        qd_free(c->strs[i]);
    memset(c, 0, sizeof *c);
    qd_server_opts_default(&c->so);
    c->search_pad = -1;
    c->blas_threshold = -1;
    c->log_level = QD_LOG_INFO;
    c->log_time = QD_LOG_TIME_AUTO;
}

/* What SIGHUP needs to read the options again as they were read at start. */
typedef struct reload_ctx {
    int argc;        /* the command line */
    char **argv;
    const cfg *cur;  /* the options read at start */
    size_t pad;      /* the search padding derived from the index kind */
    cfg next;        /* the options read at the last SIGHUP (the server points into
                        them until the next one) */
} reload_ctx;

static int same_str(const char *a, const char *b)
{
    return a == b || (a && b && strcmp(a, b) == 0);
}

/* qd_server_opts.reload: the config file and the command line again. The store's
 * options cannot change while it is open: a change is logged as waiting for the next
 * start. Log settings apply at once. */
static int reload_opts(void *ctx, qd_server_opts *o)
{
    reload_ctx *r = ctx;
    cfg *n = &r->next;
    cfg_init(n);
    if (parse_args(n, r->argc, r->argv))
        return -1;
    const cfg *c = r->cur;
    int same_params = n->nparams == c->nparams;
    for (size_t i = 0; same_params && i < n->nparams; i++)
        same_params = same_str(n->params[i], c->params[i]);
    const char *fixed = !same_str(n->db, c->db)                     ? "db"
                        : !same_str(n->model, c->model)             ? "model"
                        : n->ephemeral != c->ephemeral              ? "ephemeral"
                        : !same_params                              ? "param"
                        : n->blas_threshold != c->blas_threshold    ? "blas-threshold"
                                                                    : NULL;
    if (fixed)
        qd_log(QD_LOG_WARN, "%s: changed in the configuration; takes effect at the next start",
               fixed);
    qd_log_setup("qdup-daemon", n->log_level, n->log_time);
    n->so.search_pad = n->search_pad >= 0 ? (size_t)n->search_pad : r->pad;
    n->so.reload = o->reload;
    n->so.reload_ctx = o->reload_ctx;
    *o = n->so;
    return 0;
}

int main(int argc, char **argv)
{
    static cfg c;
    static reload_ctx rctx;
    qd_log_setup("qdup-daemon", QD_LOG_INFO, QD_LOG_TIME_AUTO);
    cfg_init(&c);
    int status = 1;
    qd_model *model = NULL;
    qd_memidx *mem = NULL;
    qd_server *srv = NULL;
    qd_store *store = NULL;
    char err[QD_ERRMSG_MAX] = "";

    if (parse_args(&c, argc, argv)) {
        status = 2;
        goto out;
    }
    qd_log_setup("qdup-daemon", c.log_level, c.log_time);
    if (!c.so.socket_path || (!c.db && !c.ephemeral) || (c.db && c.ephemeral) ||
        (c.ephemeral && (!c.model || c.nparams))) {
        qd_log(QD_LOG_ERR, "need --db DB (or --ephemeral --model MODEL, which "
                "takes no --param) and --socket PATH (see --help)");
        status = 2;
        goto out;
    }

    /* One thread per BLAS and FAISS call: the pool's workers are the parallelism. */
    openblas_set_num_threads(1);
    qd_ann_set_threads(1);
    raise_nofile(c.so.max_clients);

    qd_backend be;
    size_t pad = 0;
    if (c.ephemeral) {
        if (qd_model_load(c.model, &model, err, sizeof err) ||
            qd_memidx_new(model, 0, &mem)) {
            qd_log(QD_LOG_ERR, "%s", err[0] ? err : "out of memory");
            goto out;
        }
        qd_memidx_backend(mem, &be);
        qd_log(QD_LOG_INFO, "ephemeral in-memory index, model %s (%s); nothing "
                "will be saved", c.model, qd_model_fingerprint(model));
    } else {
        qd_store_opts so = {.model_path = c.model, .threads = 1};
        int rc = qd_store_open(c.db, &so, &store, err, sizeof err);
        if (rc == QD_ERR_UNAVAILABLE) {
            /* A read-only filesystem (or a failing disk): serve what is there. */
            fprintf(stderr, "qdup-daemon: cannot open for writing (%s); serving read-only, "
                    "writes are refused \"unavailable\"\n", err);
            so.readonly = 1;
            rc = qd_store_open(c.db, &so, &store, err, sizeof err);
        }
        if (rc) {
            qd_log(QD_LOG_ERR, "%s", err[0] ? err : qd_strerror(rc));
            if (rc == QD_ERR_MISMATCH && c.model)
                qd_log(QD_LOG_ERR, "if the store was switched to another model (qdup-index "
                       "reembed), name that model with --model, or leave --model out: the "
                       "store remembers its model");
            goto out;
        }
        if (apply_params(&c, store))
            goto out;
        qd_backend_store(store, &be);
        qd_store_info info;
        if (qd_store_get_info(store, &info) == 0) {
            qd_log(QD_LOG_INFO, "%s: %llu questions, index %s, model %s (%s)",
                    c.db, (unsigned long long)info.live, info.index_spec,
                    info.model_path, info.model_fingerprint);
            if (info.checkpoint_failing)
                fprintf(stderr, "qdup-daemon: could not save the index file (%s); serving from "
                        "memory, %llu changes not yet in it, retrying later\n",
                        info.checkpoint_error, (unsigned long long)info.unsaved_changes);
            if (strcmp(info.index_spec, "Flat") == 0) {
                long thr = c.blas_threshold >= 0 ? c.blas_threshold : 1;
                qd_ann_set_blas_threshold((int)thr);
                pad = thr > 1 ? (size_t)thr : thr == 0 ? 20 : 0;
                qd_log(QD_LOG_INFO, "exact search: 8-bit scan with exact re-scoring "
                        "(FAISS's with --param flatscan=0: BLAS threshold %ld queries per "
                        "call, searches padded to %zu)", thr ? thr : 20,
                        c.search_pad >= 0 ? (size_t)c.search_pad : pad);
            } else if (c.blas_threshold >= 0) {
                qd_ann_set_blas_threshold((int)c.blas_threshold);
            }
        }
    }
    c.so.search_pad = c.search_pad >= 0 ? (size_t)c.search_pad : pad;
    rctx = (reload_ctx){.argc = argc, .argv = argv, .cur = &c, .pad = pad};
    c.so.reload = reload_opts;
    c.so.reload_ctx = &rctx;

    if (qd_server_new(&c.so, &be, &srv, err, sizeof err)) {
        qd_log(QD_LOG_ERR, "%s", err);
        goto out;
    }
    status = qd_server_run(srv) == 0 ? 0 : 1;
out:
    qd_server_free(srv);
    if (store) {
        qd_store_close(store);
        qd_log(QD_LOG_INFO, "store closed");
    }
    qd_memidx_free(mem);
    qd_model_free(model);
    cfg_init(&c);
    cfg_init(&rctx.next);
    return status;
}
