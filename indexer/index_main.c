/*
 * index_main.c - qdup-index: build, grow, shrink, query, inspect, check and export a
 * question index (a qdup store: the SQLite database DB and the FAISS file DB.faiss).
 *
 *   qdup-index build   --model MODEL --db DB [--index SPEC] [--strict] DUMP...
 *   qdup-index add     --db DB [--replace] [--strict] DUMP...
 *   qdup-index remove  --db DB ID... | --ids FILE
 *   qdup-index search  --db DB [-k N] [--json] TEXT...
 *   qdup-index info | verify | export | verdicts | compact --db DB
 *   qdup-index reembed --db DB --model NEW
 *
 * build and add are the import pipeline of ingest.c (ingest.h) behind this command
 * line: read every dump completely first (reporting each malformed record as
 * "file:line: reason", the first --max-report of them verbatim, then a count), drop
 * repeated ids, ask the store which records it keeps (it refuses exact duplicates:
 * same token sequence), encode those on all cores and hand them to the store as one
 * batch, which it commits in one SQLite transaction, so a killed add leaves the index
 * as it was or with the whole batch. build fills a fresh store under a temporary
 * name beside DB and installs it (qd_store_install: database first, then FAISS file)
 * only when it is complete; the previous index stays usable until then, whatever
 * happens to the process.
 *
 * Exit status: 0 success, 1 failure (or problems found by verify, or ids not found by
 * remove), 2 bad usage.
 *
 * For tests, QDUP_INDEX_TEST_STOP=<point> makes the program stop itself (SIGSTOP) at
 * that point, after saying so on stderr, so that a test can kill it exactly there:
 * "encode" (encoding under way), "built" (the new store is complete under its
 * temporary name), and the store's own points (store_impl.h).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "qdup/common.h"
#include "qdup/dump.h"
#include "qdup/fileio.h"
#include "qdup/ingest.h"
#include "qdup/model.h"
#include "qdup/store.h"
#include "store_impl.h"

#define EXIT_USAGE 2

/* --- options ------------------------------------------------------------------------ */

enum opt_id {
    O_HELP = 'h',
    O_K = 'k',
    O_DB = 256,
    O_MODEL,
    O_INDEX,
    O_STRICT,
    O_REPLACE,
    O_FORMAT,
    O_ID_COL,
    O_TEXT_COL,
    O_MAX_TEXT,
    O_MAX_REPORT,
    O_THREADS,
    O_PROGRESS,
    O_QUIET,
    O_JSON,
    O_MIN_SCORE,
    O_PARAM,
    O_EXCLUDE,
    O_IDS,
    O_OUT,
    O_REPAIR,
    O_RANK,
    O_IDENTICAL,
    O_REENCODE,
};

static const struct option long_opts[] = {
    {"help", no_argument, NULL, O_HELP},
    {"db", required_argument, NULL, O_DB},
    {"model", required_argument, NULL, O_MODEL},
    {"index", required_argument, NULL, O_INDEX},
    {"strict", no_argument, NULL, O_STRICT},
    {"replace", no_argument, NULL, O_REPLACE},
    {"format", required_argument, NULL, O_FORMAT},
    {"id-col", required_argument, NULL, O_ID_COL},
    {"text-col", required_argument, NULL, O_TEXT_COL},
    {"max-text", required_argument, NULL, O_MAX_TEXT},
    {"max-report", required_argument, NULL, O_MAX_REPORT},
    {"threads", required_argument, NULL, O_THREADS},
    {"progress", no_argument, NULL, O_PROGRESS},
    {"quiet", no_argument, NULL, O_QUIET},
    {"json", no_argument, NULL, O_JSON},
    {"min-score", required_argument, NULL, O_MIN_SCORE},
    {"param", required_argument, NULL, O_PARAM},
    {"exclude", required_argument, NULL, O_EXCLUDE},
    {"ids", required_argument, NULL, O_IDS},
    {"out", required_argument, NULL, O_OUT},
    {"repair", no_argument, NULL, O_REPAIR},
    {"rank", required_argument, NULL, O_RANK},
    {"identical", required_argument, NULL, O_IDENTICAL},
    {"reencode", no_argument, NULL, O_REENCODE},
    {NULL, 0, NULL, 0},
};

#define MAX_PARAMS 8

/* Everything the command line can say. */
typedef struct opts {
    const char *db;            /* --db */
    const char *model;         /* --model, or NULL */
    const char *index_spec;    /* --index, or NULL (Flat) */
    const char *format;        /* --format, or NULL (auto) */
    const char *id_col;        /* --id-col (csv) */
    const char *text_col;      /* --text-col (csv) */
    const char *ids_file;      /* --ids (remove) */
    const char *out;           /* --out (export) */
    const char *exclude;       /* --exclude (search) */
    const char *params[MAX_PARAMS]; /* --param name=value (search) */
    int nparams;               /* entries of params */
    int strict;                /* --strict */
    int replace;               /* --replace */
    int keep_identical;        /* --identical keep */
    qd_rank_mode rank;         /* --rank */
    int json;                  /* --json */
    int quiet;                 /* --quiet: no progress, no summary */
    int progress;              /* --progress: progress lines even without a terminal */
    int repair;                /* --repair (verify) */
    int reencode;              /* --reencode (verify) */
    int threads;               /* --threads (0: all cores) */
    size_t k;                  /* -k */
    double min_score;          /* --min-score */
    size_t max_text;           /* --max-text (0: the reader's default) */
    size_t max_report;         /* --max-report */
} opts;

/* One subcommand. */
typedef struct command {
    const char *name;                      /* as typed */
    int (*run)(opts *o, int argc, char **argv); /* argv: the operands */
    const int *allowed;                    /* options it takes, 0-terminated */
    const char *summary;                   /* one line for the overview */
    const char *usage;                     /* its --help text */
} command;

static const char *prog = "qdup-index";

static void errorf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void errorf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", prog);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* --- test stops ---------------------------------------------------------------------- */

static const char *test_stop_at;

static void test_stop(const char *point)
{
    if (test_stop_at && strcmp(test_stop_at, point) == 0) {
        fprintf(stderr, "%s: test stop at %s\n", prog, point);
        fflush(stderr);
        test_stop_at = NULL; /* once */
        raise(SIGSTOP);
    }
}

/* --- progress and import (ingest.h) ------------------------------------------------------- */

static qd_ingest_progress prog_state;

static void progress_clear(void)
{
    qd_ingest_progress_clear(&prog_state);
}

static void progress_setup(const opts *o, qd_store *s)
{
    qd_ingest_progress_init(&prog_state, o->quiet, o->progress, test_stop);
    qd_store_set_progress(s, qd_ingest_progress_cb, &prog_state);
}

static qd_ingest_opts ingest_opts(const opts *o)
{
    return (qd_ingest_opts){.prog = prog, .format = o->format, .id_col = o->id_col,
                            .text_col = o->text_col, .max_text = o->max_text,
                            .max_report = o->max_report, .strict = o->strict,
                            .replace = o->replace, .threads = o->threads, .quiet = o->quiet,
                            .keep_identical = o->keep_identical};
}

/* Reads the dumps and adds them to s as one batch. Returns 0 or 1 (printed). */
static int load_and_add(qd_store *s, const opts *o, char **files, int nfiles,
                        qd_ingest_tally *t)
{
    qd_ingest_opts io = ingest_opts(o);
    return qd_ingest_dumps(s, &io, &prog_state, files, nfiles, t) ? 1 : 0;
}

static void print_summary(const char *cmd, const opts *o, const qd_ingest_tally *t,
                          int nfiles, double seconds)
{
    qd_ingest_opts io = ingest_opts(o);
    qd_ingest_summary(&io, cmd, t, nfiles, seconds);
}

/* --- build ---------------------------------------------------------------------------- */

/* Says what qd_store_sweep deleted: what killed builds and checkpoints left. */
static void report_removed(const char *path, void *arg)
{
    (void)arg;
    fprintf(stderr, "%s: removed %s, left by an interrupted build\n", prog, path);
}

/* 0 if every dump can be opened for reading ("-" is standard input); else names the
 * first that cannot. Checked before the model is loaded, which takes a while. */
static int check_dumps(char **paths, int n)
{
    for (int i = 0; i < n; i++) {
        if (strcmp(paths[i], "-") == 0)
            continue;
        struct stat st;
        if (stat(paths[i], &st) != 0 || access(paths[i], R_OK) != 0) {
            errorf("%s: %s", paths[i], strerror(errno));
            return -1;
        }
        if (S_ISDIR(st.st_mode)) {
            errorf("%s: is a directory, not a dump", paths[i]);
            return -1;
        }
    }
    return 0;
}

static int cmd_build(opts *o, int argc, char **argv)
{
    char err[QD_ERRMSG_MAX], tmp[PATH_MAX];
    if (!o->model) {
        errorf("build: --model is required");
        return EXIT_USAGE;
    }
    if (argc < 1) {
        errorf("build: no dump to read (see --help)");
        return EXIT_USAGE;
    }
    if (check_dumps(argv, argc) != 0)
        return 1;
    double t0 = qd_now();
    /* Refuse at once, not after the work, to replace a file that is not an index
     * (qd_store_install checks again, under the lock). */
    int prc = qd_store_probe(o->db, err, sizeof err);
    if (prc != 0 && prc != QD_ERR_NOTFOUND) {
        errorf("%s; not replacing it", err);
        return 1;
    }
    int lock = -1;
    if (qd_store_lock(o->db, &lock, err, sizeof err) != 0) {
        errorf("%s", err);
        return 1;
    }
    qd_store_sweep(o->db, 1, report_removed, NULL);
    if (qd_tmp_path(o->db, tmp, sizeof tmp) != 0) {
        errorf("%s: path too long", o->db);
        qd_store_unlock(lock);
        return 1;
    }
    qd_store_opts so = {.model_path = o->model, .index_spec = o->index_spec,
                        .threads = o->threads};
    qd_store *s = NULL;
    if (qd_store_create(tmp, &so, &s, err, sizeof err) != 0) {
        errorf("%s", err);
        qd_store_unlock(lock);
        return 1;
    }
    progress_setup(o, s);
    qd_ingest_tally t;
    int rc = load_and_add(s, o, argv, argc, &t);
    if (!rc && qd_store_checkpoint(s) != 0) {
        errorf("%s", qd_store_errmsg(s));
        rc = 1;
    }
    qd_store_info info;
    qd_store_get_info(s, &info);
    qd_store_close(s);
    if (!rc) {
        test_stop("built");
        if (qd_store_install(tmp, o->db, err, sizeof err) != 0) {
            errorf("%s", err);
            rc = 1;
        }
    }
    if (rc) {
        qd_store_discard(tmp);
        errorf("build failed; %s is unchanged", o->db);
    }
    qd_store_unlock(lock);
    if (!rc) {
        print_summary("build", o, &t, argc, qd_now() - t0);
        if (!o->quiet)
            fprintf(stderr, "%s: wrote %s (%" PRIu64 " questions, index %s, model %s)\n", prog,
                    o->db, info.live, info.index_spec, info.model_fingerprint);
    }
    return rc;
}

/* --- add, remove ------------------------------------------------------------------------ */

/* Opens the store named by --db. Returns NULL after printing the error. */
static qd_store *open_store(const opts *o, int readonly)
{
    char err[QD_ERRMSG_MAX];
    qd_store_opts so = {.model_path = o->model, .threads = o->threads, .readonly = readonly};
    qd_store *s = NULL;
    if (qd_store_open(o->db, &so, &s, err, sizeof err) != 0) {
        errorf("%s", err);
        return NULL;
    }
    return s;
}

static int cmd_add(opts *o, int argc, char **argv)
{
    if (argc < 1) {
        errorf("add: no dump to read (see --help)");
        return EXIT_USAGE;
    }
    if (check_dumps(argv, argc) != 0)
        return 1;
    double t0 = qd_now();
    qd_store *s = open_store(o, 0);
    if (!s)
        return 1;
    progress_setup(o, s);
    qd_ingest_tally t;
    int rc = load_and_add(s, o, argv, argc, &t);
    if (rc)
        errorf("add failed; %s is unchanged", o->db);
    else if (qd_store_checkpoint(s) != 0)
        /* The rows are committed; only the FAISS file lags, and the next open replays. */
        errorf("warning: %s", qd_store_errmsg(s));
    qd_store_close(s);
    if (!rc)
        print_summary("add", o, &t, argc, qd_now() - t0);
    return rc;
}

/* Reads ids, one per line, from path ("-": standard input) into a list. */
static int read_ids(const char *path, char ***ids, size_t *n)
{
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "r");
    if (!f) {
        errorf("%s: %s", path, strerror(errno));
        return 1;
    }
    char *line = NULL;
    size_t cap = 0, m = 0, lcap = 0;
    ssize_t len;
    char **v = NULL;
    uint64_t lineno = 0;
    int rc = 0;
    while ((len = getline(&line, &lcap, f)) >= 0) {
        lineno++;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = '\0';
        if (len == 0)
            continue;
        if (m == cap) {
            size_t c = cap ? cap * 2 : 64;
            char **nv = qd_reallocarray(v, c, sizeof *nv);
            if (!nv) {
                rc = 1;
                break;
            }
            v = nv;
            cap = c;
        }
        if (!(v[m] = qd_strndup(line, (size_t)len))) {
            rc = 1;
            break;
        }
        m++;
    }
    if (ferror(f)) {
        errorf("%s: line %" PRIu64 ": %s", path, lineno + 1, strerror(errno));
        rc = 1;
    } else if (rc) {
        errorf("out of memory reading %s", path);
    }
    free(line);
    if (f != stdin)
        fclose(f);
    *ids = v;
    *n = m;
    return rc;
}

static int cmd_remove(opts *o, int argc, char **argv)
{
    char **ids = NULL;
    size_t n = 0, owned = 0;
    if (o->ids_file) {
        if (argc > 0) {
            errorf("remove: give ids either as arguments or with --ids, not both");
            return EXIT_USAGE;
        }
        if (read_ids(o->ids_file, &ids, &n) != 0)
            return 1;
        owned = n;
    } else {
        if (argc < 1) {
            errorf("remove: no id given (see --help)");
            return EXIT_USAGE;
        }
        ids = argv;
        n = (size_t)argc;
    }
    int rc = 1;
    size_t *lens = qd_calloc(n ? n : 1, sizeof *lens);
    int *found = qd_calloc(n ? n : 1, sizeof *found);
    qd_store *s = NULL;
    if (!lens || !found) {
        errorf("out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++)
        lens[i] = strlen(ids[i]);
    if (!(s = open_store(o, 0)))
        goto out;
    size_t removed = 0;
    if (qd_store_remove_many(s, (const char *const *)ids, lens, n, found, &removed) != 0) {
        errorf("%s", qd_store_errmsg(s));
        goto out;
    }
    size_t missing = 0;
    for (size_t i = 0; i < n; i++)
        if (!found[i] && missing++ < o->max_report)
            errorf("no live question with id \"%s\"", ids[i]);
    if (missing > o->max_report)
        errorf("... and %zu more ids not found", missing - o->max_report);
    if (qd_store_checkpoint(s) != 0)
        errorf("warning: %s", qd_store_errmsg(s));
    if (!o->quiet)
        fprintf(stderr, "%s remove: %zu removed, %zu not found\n", prog, removed, missing);
    rc = missing ? 1 : 0;
out:
    qd_store_close(s);
    for (size_t i = 0; i < owned; i++)
        qd_free(ids[i]);
    if (owned)
        qd_free(ids);
    qd_free(lens);
    qd_free(found);
    return rc;
}

/* --- search ---------------------------------------------------------------------------- */

/* Prints text on one line: control characters (newlines in multi-line questions)
 * become spaces. */
static void put_flat(const char *s)
{
    for (; *s; s++)
        putchar((unsigned char)*s < 0x20 || *s == 0x7f ? ' ' : *s);
}

static int print_hits_json(const char *query, const qd_store_hits *h)
{
    json_t *o = json_object(), *arr = json_array();
    if (!o || !arr) {
        json_decref(o);
        json_decref(arr);
        return 1;
    }
    json_object_set_new(o, "query", json_string(query));
    for (size_t i = 0; i < h->n; i++) {
        json_t *r = json_object();
        json_object_set_new(r, "id", json_string(h->hit[i].row.ext_id));
        json_object_set_new(r, "text", json_string(h->hit[i].row.text));
        json_object_set_new(r, "score", json_real(round((double)h->hit[i].score * 1e6) / 1e6));
        json_object_set_new(r, "cosine", json_real(round((double)h->hit[i].cosine * 1e6) / 1e6));
        json_object_set_new(r, "lexical",
                            json_real(round((double)h->hit[i].lexical * 1e6) / 1e6));
        json_object_set_new(r, "p_duplicate",
                            json_real(round((double)h->hit[i].p_duplicate * 1e6) / 1e6));
        json_object_set_new(r, "row", json_integer(h->hit[i].row.row));
        json_array_append_new(arr, r);
    }
    json_object_set_new(o, "results", arr);
    int rc = json_dumpf(o, stdout, JSON_COMPACT) != 0;
    putchar('\n');
    json_decref(o);
    return rc;
}

/* Searches a batch of queries and prints the results. */
static int search_batch(qd_store *s, qd_enc_ws *ws, const opts *o, char **texts, size_t n)
{
    const qd_model *m = qd_store_model(s);
    size_t dim = (size_t)qd_model_dim(m);
    size_t *lens = qd_calloc(n, sizeof *lens);
    float *q = qd_mallocarray(n * dim, sizeof *q);
    qd_store_hits *hits = qd_calloc(n, sizeof *hits);
    const char **excl = qd_calloc(n, sizeof *excl);
    int rc = 1;
    if (!lens || !q || !hits || !excl) {
        errorf("out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        lens[i] = strlen(texts[i]);
        excl[i] = o->exclude;
    }
    int erc = qd_enc_texts(m, ws, (const char *const *)texts, lens, n, q);
    if (erc) {
        errorf("encoding the query: %s", qd_strerror(erc));
        goto out;
    }
    qd_store_query sq = {.k = o->k, .min_score = (float)o->min_score, .rank = o->rank,
                         .texts = (const char *const *)texts, .lens = lens,
                         .exclude = o->exclude ? excl : NULL};
    if (qd_store_search_text(s, q, n, &sq, hits) != 0) {
        errorf("%s", qd_store_errmsg(s));
        goto out;
    }
    rc = 0;
    for (size_t i = 0; i < n; i++) {
        if (o->json) {
            rc |= print_hits_json(texts[i], &hits[i]);
            continue;
        }
        if (n > 1 || strcmp(texts[i], "") == 0) {
            fputs("# ", stdout);
            put_flat(texts[i]);
            putchar('\n');
        }
        for (size_t j = 0; j < hits[i].n; j++) {
            printf("%.4f\t", (double)hits[i].hit[j].score);
            put_flat(hits[i].hit[j].row.ext_id);
            putchar('\t');
            put_flat(hits[i].hit[j].row.text);
            putchar('\n');
        }
    }
out:
    for (size_t i = 0; hits && i < n; i++)
        qd_store_hits_free(&hits[i]);
    qd_free(lens);
    qd_free(q);
    qd_free(hits);
    qd_free(excl);
    return rc;
}

static int cmd_search(opts *o, int argc, char **argv)
{
    if (argc < 1) {
        errorf("search: no query text (see --help)");
        return EXIT_USAGE;
    }
    qd_store *s = open_store(o, 1);
    if (!s)
        return 1;
    int rc = 0;
    for (int i = 0; i < o->nparams && !rc; i++) {
        int r = qd_store_set_param_text(s, o->params[i]);
        if (r) {
            errorf("--param %s: %s", o->params[i], qd_store_errmsg(s));
            rc = r == QD_ERR_FORMAT ? EXIT_USAGE : 1;
        }
    }
    qd_enc_ws *ws = qd_enc_ws_new();
    if (!rc && !ws) {
        errorf("out of memory");
        rc = 1;
    }
    if (!rc && argc == 1 && strcmp(argv[0], "-") == 0) {
        /* One query per line of standard input, searched 64 at a time. */
        char *batch[64];
        size_t nb = 0, cap = 0;
        char *line = NULL;
        ssize_t len;
        while (!rc && (len = getline(&line, &cap, stdin)) >= 0) {
            while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
                line[--len] = '\0';
            if (!(batch[nb] = qd_strndup(line, (size_t)len))) {
                errorf("out of memory");
                rc = 1;
                break;
            }
            if (++nb == 64) {
                rc = search_batch(s, ws, o, batch, nb);
                for (size_t i = 0; i < nb; i++)
                    qd_free(batch[i]);
                nb = 0;
            }
        }
        if (!rc && nb)
            rc = search_batch(s, ws, o, batch, nb);
        for (size_t i = 0; i < nb; i++)
            qd_free(batch[i]);
        free(line);
    } else if (!rc) {
        /* The operands are one query: `qdup-index search --db x how do I learn c` works. */
        size_t total = 1;
        for (int i = 0; i < argc; i++)
            total += strlen(argv[i]) + 1;
        char *text = qd_malloc(total);
        if (!text) {
            errorf("out of memory");
            rc = 1;
        } else {
            text[0] = '\0';
            for (int i = 0; i < argc; i++) {
                if (i)
                    strcat(text, " ");
                strcat(text, argv[i]);
            }
            rc = search_batch(s, ws, o, &text, 1);
            qd_free(text);
        }
    }
    qd_enc_ws_free(ws);
    qd_store_close(s);
    if (fflush(stdout) != 0) {
        errorf("writing the results: %s", strerror(errno));
        rc = 1;
    }
    return rc;
}

/* --- info, verify, export, compact ----------------------------------------------------- */

static void human_bytes(uint64_t b, char *buf, size_t len)
{
    if (b >= 10ull << 20)
        snprintf(buf, len, "%.1f MB", (double)b / 1e6);
    else if (b >= 10ull << 10)
        snprintf(buf, len, "%.1f kB", (double)b / 1e3);
    else
        snprintf(buf, len, "%" PRIu64 " bytes", b);
}

static void print_info(const char *db, const qd_store_info *in, const qd_store_staged *sg,
                       int json)
{
    if (json) {
        json_t *o = json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:i, s:s, s:s, s:s, s:I, s:I, "
                              "s:b, s:s}",
                              "db", db, "live", (json_int_t)in->live, "tombstones",
                              (json_int_t)in->tombstones, "faiss_count",
                              (json_int_t)in->faiss_count, "seq", (json_int_t)in->seq,
                              "checkpoint_seq", (json_int_t)in->checkpoint_seq, "dim", in->dim,
                              "index_spec", in->index_spec, "model_fingerprint",
                              in->model_fingerprint, "model_path", in->model_path, "db_bytes",
                              (json_int_t)in->db_bytes, "faiss_bytes",
                              (json_int_t)in->faiss_bytes, "can_remove", in->can_remove,
                              "note", in->faiss_note);
        /* A switch to another model under way (reembed): what is staged, or null. */
        json_t *st = sg->staged ? json_pack("{s:s, s:s, s:I, s:I, s:b}", "fingerprint",
                                            sg->fingerprint, "model_path", sg->model_path,
                                            "rows", (json_int_t)sg->rows, "total",
                                            (json_int_t)sg->total, "complete", sg->complete)
                                : json_null();
        if (o && st)
            json_object_set_new(o, "staged", st);
        if (o) {
            json_dumpf(o, stdout, JSON_COMPACT);
            putchar('\n');
            json_decref(o);
        }
        return;
    }
    char b1[32], b2[32];
    human_bytes(in->db_bytes, b1, sizeof b1);
    human_bytes(in->faiss_bytes, b2, sizeof b2);
    printf("database:    %s (%s)\n", db, b1);
    printf("faiss file:  %s.faiss (%s)\n", db, b2);
    printf("questions:   %" PRIu64 " live, %" PRIu64 " removed not yet compacted\n", in->live,
           in->tombstones);
    printf("index:       %s, %" PRIu64 " vectors of dimension %d (%s)\n", in->index_spec,
           in->faiss_count, in->dim,
           in->can_remove ? "removes vectors" : "removed vectors stay as tombstones until compact");
    printf("model:       %s (fingerprint %s)\n", in->model_path, in->model_fingerprint);
    printf("changes:     %" PRIu64 ", FAISS file checkpointed at %" PRIu64 "\n", in->seq,
           in->checkpoint_seq);
    if (in->live)
        printf("on disk:     %.0f bytes per question\n",
               (double)(in->db_bytes + in->faiss_bytes) / (double)in->live);
    if (in->faiss_note[0])
        printf("note:        %s\n", in->faiss_note);
    if (sg->staged)
        printf("staged:      model %s (fingerprint %s), %" PRIu64 " of %" PRIu64
               " questions%s\n", sg->model_path, sg->fingerprint, sg->rows, sg->total,
               sg->complete ? ", complete: switched by the next reload or reembed"
                            : ", not finished: run qdup-index reembed again");
}

static int cmd_info(opts *o, int argc, char **argv)
{
    (void)argv;
    if (argc > 0) {
        errorf("info: unexpected argument %s", argv[0]);
        return EXIT_USAGE;
    }
    qd_store *s = open_store(o, 1);
    if (!s)
        return 1;
    qd_store_info in;
    qd_store_get_info(s, &in);
    qd_store_staged sg;
    if (qd_store_reembed_status(s, &sg) != 0)
        sg.staged = 0; /* not worth failing info for: the rest is shown */
    print_info(o->db, &in, &sg, o->json);
    qd_store_close(s);
    return 0;
}

static int cmd_verify(opts *o, int argc, char **argv)
{
    (void)argv;
    if (argc > 0) {
        errorf("verify: unexpected argument %s", argv[0]);
        return EXIT_USAGE;
    }
    /* --repair: a writable open rebuilds a FAISS file the database does not vouch for
     * and checkpoints it; then the check runs as usual. */
    qd_store *s = open_store(o, !o->repair);
    if (!s) {
        fprintf(stdout, "verify: FAILED: the index cannot be opened\n");
        return 1;
    }
    uint64_t problems = 0;
    double t0 = qd_now();
    int rc = qd_store_verify(s, stdout, o->max_report, &problems);
    if (o->reencode && (!rc || rc == QD_ERR_MISMATCH)) {
        uint64_t bad = 0;
        int rc2 = qd_store_check_vectors(s, stdout, o->max_report, &bad);
        problems += bad;
        if (rc2 && rc2 != QD_ERR_MISMATCH)
            rc = rc2;
    }
    if (rc && rc != QD_ERR_MISMATCH)
        errorf("verify could not run: %s", qd_store_errmsg(s));
    qd_store_info in;
    qd_store_get_info(s, &in);
    qd_store_close(s);
    if (rc && rc != QD_ERR_MISMATCH)
        return 1;
    if (problems > o->max_report)
        printf("... and %" PRIu64 " more problems not shown\n", problems - o->max_report);
    if (problems) {
        printf("verify: FAILED: %" PRIu64 " problem(s) in %s\n", problems, o->db);
        return 1;
    }
    printf("verify: OK: %" PRIu64 " live questions, %" PRIu64 " vectors in %s, model %s "
           "(%.2f s)\n", in.live, in.faiss_count, in.index_spec, in.model_fingerprint,
           qd_now() - t0);
    return 0;
}

/* Opens the store read-only and writes it out with `write` (export, verdicts). */
static int export_with(opts *o, int argc, char **argv, const char *name,
                       int (*write)(qd_store *s, FILE *f))
{
    char tmp[PATH_MAX];
    if (argc > 0) {
        errorf("%s: unexpected argument %s", name, argv[0]);
        return EXIT_USAGE;
    }
    qd_store *s = open_store(o, 1);
    if (!s)
        return 1;
    FILE *f = stdout;
    int rc = 0;
    if (o->out && strcmp(o->out, "-") != 0) {
        /* Written beside the target and renamed, so a failed export leaves no half file. */
        if (qd_tmp_path(o->out, tmp, sizeof tmp) != 0 || !(f = fopen(tmp, "w"))) {
            errorf("%s: %s", o->out, strerror(errno));
            qd_store_close(s);
            return 1;
        }
    }
    if (write(s, f) != 0) {
        errorf("%s", qd_store_errmsg(s));
        rc = 1;
    }
    if (f != stdout) {
        if (fflush(f) != 0 || fsync(fileno(f)) != 0) {
            errorf("%s: %s", tmp, strerror(errno));
            rc = 1;
        }
        if (fclose(f) != 0 && !rc) {
            errorf("%s: %s", tmp, strerror(errno));
            rc = 1;
        }
        if (!rc && rename(tmp, o->out) != 0) {
            errorf("%s: %s", o->out, strerror(errno));
            rc = 1;
        }
        if (rc)
            unlink(tmp);
    }
    qd_store_close(s);
    return rc;
}

static int cmd_export(opts *o, int argc, char **argv)
{
    return export_with(o, argc, argv, "export", qd_store_export);
}

static int cmd_verdicts(opts *o, int argc, char **argv)
{
    return export_with(o, argc, argv, "verdicts", qd_store_export_verdicts);
}

/* --- reembed ----------------------------------------------------------------------- */

static int cmd_reembed(opts *o, int argc, char **argv)
{
    if (argc > 0) {
        errorf("reembed: unexpected argument %s", argv[0]);
        return EXIT_USAGE;
    }
    if (!o->model) {
        errorf("reembed: --model NEW is required (see --help)");
        return EXIT_USAGE;
    }
    char err[QD_ERRMSG_MAX];
    qd_store_staged sg;
    qd_ingest_progress_init(&prog_state, o->quiet, o->progress, test_stop);
    int rc = qd_store_reembed_stage(o->db, o->model, o->threads, qd_ingest_progress_cb,
                                    &prog_state, &sg, err, sizeof err);
    progress_clear();
    if (rc == QD_ERR_EXISTS) {
        if (!o->quiet)
            fprintf(stderr, "%s reembed: %s: nothing to do\n", prog, err);
        return 0;
    }
    if (rc) {
        errorf("%s", err);
        return 1;
    }
    if (!o->quiet)
        fprintf(stderr, "%s reembed: staged %" PRIu64 " vectors of model %s (fingerprint "
                "%s) in %.2f s\n", prog, sg.rows, sg.model_path, sg.fingerprint, sg.seconds);
    test_stop("reembed:staged");
    /* The switch needs the writer lock: a serving daemon holds it and switches on
     * reload instead; any other writer (an add, a compact) is done some time, and a run
     * of reembed then switches (the staging is there). The store opens with the model
     * in force until then. */
    qd_store_opts so = {.threads = o->threads};
    qd_store *s = NULL;
    rc = qd_store_open(o->db, &so, &s, err, sizeof err);
    if (rc == QD_ERR_BUSY) {
        printf("staged; send SIGHUP or {\"op\":\"reload\"} to the daemon to switch (%s); "
               "if that process is not a daemon, run qdup-index reembed again once it is "
               "done\n", err);
        return 0;
    }
    if (rc) {
        errorf("%s", err);
        return 1;
    }
    double t0 = qd_now();
    char old_fp[17], new_fp[17];
    rc = qd_store_reembed_switch(s, old_fp, new_fp);
    if (rc)
        errorf("%s", qd_store_errmsg(s));
    qd_store_close(s);
    if (rc)
        return 1;
    printf("switched %s from model %s to %s (%.2f s)\n", o->db, old_fp, new_fp,
           qd_now() - t0);
    return 0;
}

static int cmd_compact(opts *o, int argc, char **argv)
{
    (void)argv;
    if (argc > 0) {
        errorf("compact: unexpected argument %s", argv[0]);
        return EXIT_USAGE;
    }
    double t0 = qd_now();
    qd_store *s = open_store(o, 0);
    if (!s)
        return 1;
    progress_setup(o, s);
    qd_store_info before, after;
    qd_store_get_info(s, &before);
    int rc = 0;
    if (qd_store_compact(s) != 0) {
        progress_clear();
        errorf("%s", qd_store_errmsg(s));
        rc = 1;
    }
    progress_clear();
    qd_store_get_info(s, &after);
    qd_store_close(s);
    if (!rc && !o->quiet)
        fprintf(stderr, "%s compact: %" PRIu64 " removed questions deleted, %" PRIu64
                " live; FAISS %" PRIu64 " -> %" PRIu64 " vectors; %.2f s\n", prog,
                before.tombstones, after.live, before.faiss_count, after.faiss_count,
                qd_now() - t0);
    return rc;
}

/* --- the command table ----------------------------------------------------------------- */

static const int build_opts[] = {O_DB, O_MODEL, O_INDEX, O_STRICT, O_REPLACE, O_FORMAT,
                                 O_ID_COL, O_TEXT_COL, O_MAX_TEXT, O_MAX_REPORT, O_THREADS,
                                 O_PROGRESS, O_QUIET, O_IDENTICAL, 0};
static const int add_opts[] = {O_DB, O_MODEL, O_STRICT, O_REPLACE, O_FORMAT, O_ID_COL,
                               O_TEXT_COL, O_MAX_TEXT, O_MAX_REPORT, O_THREADS, O_PROGRESS,
                               O_QUIET, O_IDENTICAL, 0};
static const int remove_opts[] = {O_DB, O_MODEL, O_IDS, O_MAX_REPORT, O_QUIET, 0};
static const int search_opts[] = {O_DB, O_MODEL, O_K, O_JSON, O_MIN_SCORE, O_PARAM,
                                  O_EXCLUDE, O_RANK, 0};
static const int info_opts[] = {O_DB, O_MODEL, O_JSON, 0};
static const int verify_opts[] = {O_DB, O_MODEL, O_MAX_REPORT, O_REPAIR, O_REENCODE, 0};
static const int reembed_opts[] = {O_DB, O_MODEL, O_THREADS, O_PROGRESS, O_QUIET, 0};
static const int export_opts[] = {O_DB, O_MODEL, O_OUT, 0};
static const int compact_opts[] = {O_DB, O_MODEL, O_PROGRESS, O_QUIET, 0};

#define DUMP_HELP                                                                           \
    "Dumps (\"-\" is standard input) are read in the format --format names, or by\n"        \
    "extension and first line: the Quora pair files (both questions of each row,\n"         \
    "keyed by qid), two-column TSV (qid, question), CSV with a header (--id-col,\n"         \
    "--text-col; default id, text), JSON Lines ({\"id\": ..., \"text\": ...}).\n"           \
    "A malformed record, an id seen before in the input, a text with the same words\n"      \
    "as another question (after case folding and Unicode normalization) and a text\n"       \
    "without words are reported as file:line: reason and skipped.\n\n"                     \
    "  --format F        auto (default), quora, tsv, csv, jsonl\n"                         \
    "  --id-col NAME     CSV id column (default id)\n"                                     \
    "  --text-col NAME   CSV text column (default text)\n"                                 \
    "  --max-text N      longest question in bytes (default 16384)\n"                      \
    "  --strict          the first bad record is fatal (nothing is changed)\n"             \
    "  --replace         a repeated id replaces the earlier question instead of being\n"   \
    "                    skipped (within the input: the last one wins)\n"                  \
    "  --identical W     a text the index (or the input) already has: skip (default)\n"  \
    "                    or keep (stored as a repost under its own id); reported\n"       \
    "                    either way\n"                                                    \
    "  --max-report N    print at most N skipped records (default 20), then a count\n"     \
    "  --threads N       encoding threads (default: all cores)\n"                          \
    "  --progress        progress lines even when stderr is not a terminal\n"              \
    "  --quiet           no progress and no summary\n"

static const command commands[] = {
    {"build", cmd_build, build_opts, "make a new index from question dumps",
     "usage: qdup-index build --model MODEL --db DB [--index SPEC] [options] DUMP...\n\n"
     "Makes a new index DB (and DB.faiss) from the dumps. The index is written under a\n"
     "temporary name and put in place only when complete: an existing DB stays usable\n"
     "until then, also if the build fails or is killed.\n\n"
     "  --model MODEL     the encoder (.qdm); its absolute path is remembered in DB\n"
     "  --db DB           the index database to create or replace\n"
     "  --index SPEC      FAISS index_factory string: Flat (exact, default), HNSW32,\n"
     "                    IVF1024,Flat, SQ8, ... (HNSW cannot remove: removed\n"
     "                    questions stay as tombstones until compact)\n" DUMP_HELP},
    {"add", cmd_add, add_opts, "add question dumps to an index",
     "usage: qdup-index add --db DB [--model MODEL] [options] DUMP...\n\n"
     "Adds the dumps' questions to DB in one transaction: a failed or killed add leaves\n"
     "DB as it was. An id already in DB is skipped unless --replace.\n\n"
     "  --db DB           the index\n"
     "  --model MODEL     use this model instead of the remembered one (same fingerprint)\n"
     DUMP_HELP},
    {"remove", cmd_remove, remove_opts, "remove questions by id",
     "usage: qdup-index remove --db DB ID... | --ids FILE\n\n"
     "Removes the questions with these ids (one transaction). Exit status 1 if an id\n"
     "is not in the index (the others are removed).\n\n"
     "  --db DB           the index\n"
     "  --ids FILE        read the ids from FILE, one per line (\"-\": standard input)\n"
     "  --max-report N    print at most N ids not found (default 20)\n"
     "  --quiet           no summary\n"},
    {"search", cmd_search, search_opts, "find the questions nearest to a text",
     "usage: qdup-index search --db DB [-k N] [--json] TEXT...\n\n"
     "Encodes TEXT (the operands joined by spaces) and prints the k best questions,\n"
     "best first: score, id and text, tab separated (--json adds cosine, lexical and\n"
     "p_duplicate). score ranks: the model's fused score (the cosine re-scored with\n"
     "BM25 over the model's candidates), or the cosine with --rank cosine; lexical is\n"
     "BM25 relative to the best candidate's; p_duplicate is the model's P(duplicate)\n"
     "(1 for the same text). With TEXT \"-\", each line of standard input is a query.\n\n"
     "  --db DB           the index\n"
     "  -k N              results per query (default 10)\n"
     "  --json            one JSON object per query: {\"query\", \"results\": [{\"id\",\n"
     "                    \"text\", \"score\", \"cosine\", \"lexical\", \"p_duplicate\",\n"
     "                    \"row\"}]}\n"
     "  --min-score X     only results whose cosine is at least X\n"
     "  --rank R          fused (default) or cosine\n"
     "  --exclude ID      leave out the question with this id\n"
     "  --param NAME=V    FAISS search parameter, e.g. nprobe=16 (IVF), efSearch=64\n"
     "  --model MODEL     use this model instead of the remembered one\n"},
    {"info", cmd_info, info_opts, "show counts, model, index type and sizes",
     "usage: qdup-index info --db DB [--json]\n\n"
     "Prints what DB holds: live questions and tombstones (removed, not yet compacted),\n"
     "the index kind and its vectors, the model (path and fingerprint), the change\n"
     "sequence and the checkpoint the FAISS file reflects, the files' sizes, and a\n"
     "model staged by reembed (and how far). Opens DB read-only, so it works while a\n"
     "daemon serves it.\n\n"
     "  --db DB           the index database\n"
     "  --json            one JSON object instead of text\n"},
    {"verify", cmd_verify, verify_opts, "check the index against its database",
     "usage: qdup-index verify --db DB [--max-report N] [--repair]\n\n"
     "Checks that every live question is in the FAISS index with its stored vector,\n"
     "that the index holds nothing else, that the FAISS file is the checkpoint the\n"
     "database records, that the model matches, and SQLite's integrity. Prints one\n"
     "line per problem; exit status 0 if all holds, 1 if not.\n\n"
     "  --db DB           the index database\n"
     "  --max-report N    print at most N problems (default 20)\n"
     "  --repair          open for writing first, which rebuilds and rewrites a FAISS\n"
     "                    file the database does not vouch for\n"
     "  --reencode        also encode every stored question again with the model and\n"
     "                    compare with its stored vector (catches vectors of another\n"
     "                    model; slow: as long as encoding the whole store)\n"},
    {"export", cmd_export, export_opts, "write ids, texts and vectors as JSON Lines",
     "usage: qdup-index export --db DB [--out FILE]\n\n"
     "Writes every live question as {\"id\": ..., \"text\": ..., \"vector\": [...]}, one per\n"
     "line (what Milvus, Qdrant, Elasticsearch and pgvector bulk loaders take), to\n"
     "standard output or FILE.\n\n"
     "  --db DB           the index database\n"
     "  --out FILE        write to FILE (replaced only when complete) instead of\n"
     "                    standard output\n"},
    {"verdicts", cmd_verdicts, export_opts, "write moderators' verdicts as a pair file",
     "usage: qdup-index verdicts --db DB [--out FILE]\n\n"
     "Writes the moderators' verdicts (the daemon's verdict op) as a Quora pair file\n"
     "(id, qid1, qid2, question1, question2, is_duplicate; question1 the post a\n"
     "moderator closed or kept, question2 the older question, both as they were when\n"
     "judged) for qdup-train --init, oldest first, to standard output or FILE.\n\n"
     "  --db DB           the index database\n"
     "  --out FILE        write to FILE (replaced only when complete) instead of\n"
     "                    standard output\n"},
    {"reembed", cmd_reembed, reembed_opts, "switch the index to another model",
     "usage: qdup-index reembed --db DB --model NEW [--threads N]\n\n"
     "Encodes every stored question with the model NEW into a staging table of DB,\n"
     "in short transactions (a daemon serving DB keeps answering and writing), then\n"
     "switches DB to NEW in one transaction and rewrites DB.faiss. A kill at any\n"
     "moment leaves DB with its old model or with NEW, never a mix; run it again to\n"
     "resume a killed staging. NEW must have the dimension of DB's vectors.\n\n"
     "While a daemon serves DB (it holds the writer lock), reembed stops after the\n"
     "staging and says so: the daemon switches on SIGHUP or {\"op\":\"reload\"},\n"
     "encoding with NEW whatever was added meanwhile.\n\n"
     "  --db DB           the index database\n"
     "  --model NEW       the model to switch to (.qdm)\n"
     "  --threads N       encoding threads (default: all cores)\n"
     "  --progress        progress lines even when stderr is not a terminal\n"
     "  --quiet           no progress and no summary\n"},
    {"compact", cmd_compact, compact_opts, "delete removed questions and rebuild the index",
     "usage: qdup-index compact --db DB\n\n"
     "Deletes removed questions from the database, rebuilds the FAISS index from the\n"
     "live ones (dropping tombstones of index kinds that cannot remove), rewrites the\n"
     "FAISS file and vacuums the database.\n\n"
     "  --db DB           the index database\n"},
};

#define NCOMMANDS (sizeof commands / sizeof *commands)

static void overview(FILE *f)
{
    fprintf(f, "usage: qdup-index COMMAND --db DB [options] ...\n\n"
               "Indexes question dumps for near-duplicate search (SQLite + FAISS).\n\n"
               "commands:\n");
    for (size_t i = 0; i < NCOMMANDS; i++)
        fprintf(f, "  %-9s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\n'qdup-index COMMAND --help' describes a command.\n");
}

static int allowed(const command *c, int id)
{
    for (const int *p = c->allowed; *p; p++)
        if (*p == id)
            return 1;
    return id == O_HELP;
}

int main(int argc, char **argv)
{
    test_stop_at = getenv("QDUP_INDEX_TEST_STOP");
    if (test_stop_at)
        qd_store_set_test_hook(test_stop);
    if (argc < 2) {
        overview(stderr);
        return EXIT_USAGE;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        overview(stdout);
        return 0;
    }
    const command *c = NULL;
    for (size_t i = 0; i < NCOMMANDS; i++)
        if (strcmp(argv[1], commands[i].name) == 0)
            c = &commands[i];
    if (!c) {
        errorf("unknown command \"%s\"", argv[1]);
        overview(stderr);
        return EXIT_USAGE;
    }
    opts o = {.k = 10, .min_score = -INFINITY, .max_report = 20};
    int sub_argc = argc - 1;
    char **sub_argv = argv + 1;
    opterr = 0;
    optind = 1;
    int ch;
    while ((ch = getopt_long(sub_argc, sub_argv, ":hk:", long_opts, NULL)) != -1) {
        if (ch == '?') {
            if (optopt)
                errorf("%s: unknown option -%c (see --help)", c->name, optopt);
            else
                errorf("%s: unknown option %s (see --help)", c->name, sub_argv[optind - 1]);
            return EXIT_USAGE;
        }
        if (ch == ':') {
            errorf("%s: option %s needs a value", c->name, sub_argv[optind - 1]);
            return EXIT_USAGE;
        }
        if (!allowed(c, ch)) {
            errorf("%s: option %s does not apply to this command (see --help)", c->name,
                   sub_argv[optind - 1]);
            return EXIT_USAGE;
        }
        size_t v;
        switch (ch) {
        case O_HELP: fputs(c->usage, stdout); return 0;
        case O_DB: o.db = optarg; break;
        case O_MODEL: o.model = optarg; break;
        case O_INDEX: o.index_spec = optarg; break;
        case O_STRICT: o.strict = 1; break;
        case O_REPLACE: o.replace = 1; break;
        case O_FORMAT: o.format = optarg; break;
        case O_ID_COL: o.id_col = optarg; break;
        case O_TEXT_COL: o.text_col = optarg; break;
        case O_IDS: o.ids_file = optarg; break;
        case O_OUT: o.out = optarg; break;
        case O_EXCLUDE: o.exclude = optarg; break;
        case O_RANK:
            if (qd_rank_mode_parse(optarg, &o.rank) != 0) {
                errorf("--rank: expected fused or cosine, got \"%s\"", optarg);
                return EXIT_USAGE;
            }
            break;
        case O_IDENTICAL:
            if (strcmp(optarg, "keep") == 0 || strcmp(optarg, "skip") == 0)
                o.keep_identical = optarg[0] == 'k';
            else {
                errorf("--identical: expected keep or skip, got \"%s\"", optarg);
                return EXIT_USAGE;
            }
            break;
        case O_JSON: o.json = 1; break;
        case O_QUIET: o.quiet = 1; break;
        case O_PROGRESS: o.progress = 1; break;
        case O_REPAIR: o.repair = 1; break;
        case O_REENCODE: o.reencode = 1; break;
        case O_PARAM:
            if (o.nparams == MAX_PARAMS) {
                errorf("%s: at most %d --param options", c->name, MAX_PARAMS);
                return EXIT_USAGE;
            }
            o.params[o.nparams++] = optarg;
            break;
        case O_K:
            if (qd_parse_size(optarg, 1, QD_STORE_MAX_K, &o.k)) {
                errorf("%s: -k %s: expected a number from 1 to %d", c->name, optarg,
                       QD_STORE_MAX_K);
                return EXIT_USAGE;
            }
            break;
        case O_THREADS:
            if (qd_parse_size(optarg, 0, 1024, &v)) {
                errorf("%s: --threads %s: expected a number from 0 to 1024", c->name, optarg);
                return EXIT_USAGE;
            }
            o.threads = (int)v;
            break;
        case O_MAX_TEXT:
            if (qd_parse_size(optarg, 1, QD_STORE_MAX_TEXT, &o.max_text)) {
                errorf("%s: --max-text %s: expected a number from 1 to %d", c->name, optarg,
                       QD_STORE_MAX_TEXT);
                return EXIT_USAGE;
            }
            break;
        case O_MAX_REPORT:
            if (qd_parse_size(optarg, 0, SIZE_MAX, &o.max_report)) {
                errorf("%s: --max-report %s: expected a number", c->name, optarg);
                return EXIT_USAGE;
            }
            break;
        case O_MIN_SCORE: {
            char *end;
            o.min_score = strtod(optarg, &end);
            if (*end || end == optarg || isnan(o.min_score)) {
                errorf("%s: --min-score %s: expected a number", c->name, optarg);
                return EXIT_USAGE;
            }
            break;
        }
        default: return EXIT_USAGE;
        }
    }
    if (!o.db) {
        errorf("%s: --db is required (see --help)", c->name);
        return EXIT_USAGE;
    }
    return c->run(&o, sub_argc - optind, sub_argv + optind);
}
