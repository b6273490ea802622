/*
 * bench_search.c - qdup-bench search: latency and recall of a store's FAISS index.
 *
 * The store is opened read-only, as qdup-daemon opens it (FAISS file, row table), and
 * N questions drawn from a dump are embedded with the store's model, then searched one
 * at a time (or --batch at a time, as a daemon worker searches the queries waiting)
 * through qd_store_search, the call the daemon makes for each request (JSON aside), on
 * one FAISS thread unless told otherwise (the daemon runs one search per worker
 * thread). A warm-up of up to 50 queries comes first.
 *
 * Recall is measured against exact search done apart from FAISS: every live row's
 * vector is read from the database (SQLite, the truth the index is built from) one
 * block at a time (so ten million rows need no more memory than a million), the
 * queries' inner products with each block come from cblas_sgemm, and the
 * true top k of each query is kept; recall@k is the mean share of those k rows that
 * the index returned. For a Flat index it is 1 up to ties, which checks the
 * measurement itself.
 */
#include <cblas.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qdup/ann.h"
#include "qdup/common.h"
#include "qdup/model.h"
#include "qdup/store.h"

#include "bench.h"
#include "texts.h"

#define PROG "qdup-bench search"
#define WARMUP 50
#define MAX_PARAMS 8
#define EXACT_BLOCK 16384 /* stored vectors per sgemm of the exact search */

static const char usage[] =
    "usage: qdup-bench search --db DB --queries FILE [-n N] [-k K] [--param NAME=V]...\n"
    "                  [--batch N] [--threads N] [--seed N] [--model MODEL] [--no-exact]\n"
    "\n"
    "Latency and recall of the index of a store built by qdup-index. N questions drawn\n"
    "(seeded) from FILE are embedded with the store's model and searched one at a time\n"
    "with qd_store_search, as qdup-daemon searches (after a warm-up of up to 50);\n"
    "p50, p90, p99 and max latency are printed (with --batch N, N queries per call, as\n"
    "a daemon worker searches N waiting queries: latency per call, and the mean time per\n"
    "query). Then the exact top K of every query is\n"
    "computed from the vectors stored in the database (not from FAISS) with BLAS, and\n"
    "recall@K is the mean share of those the index returned.\n"
    "\n"
    "  --db DB           the store (required)\n"
    "  --queries FILE    question dump to draw the queries from (required)\n"
    "  -n N              queries (default 1000)\n"
    "  -k K              results per query (default 10)\n"
    "  --batch N         queries per search call (default 1)\n"
    "  --param NAME=V    FAISS search parameter, e.g. nprobe=16 (IVF), efSearch=64\n"
    "                    (HNSW); repeatable\n"
    "  --threads N       FAISS threads per search (default 1, as in the daemon)\n"
    "  --blas-threshold N  queries per call from which FAISS's exact search uses BLAS\n"
    "                    (default as qdup-daemon: 1 for a Flat index, else FAISS's 20)\n"
    "  --seed N          which questions are drawn (default 1)\n"
    "  --model MODEL     the model, if not the one the store remembers\n"
    "  --no-exact        latency only\n"
    "  -h, --help        this help\n"
    "\n"
    "The last line is machine-readable: RESULT spec=... rows=... p50_ms=... p99_ms=...\n"
    "recall_at_k=... batch=... us_per_query=... (recall -1 with --no-exact).\n";

typedef struct search_opts {
    const char *db, *queries, *model;
    size_t n, k;
    size_t batch;            /* queries per search call */
    const char *params[MAX_PARAMS];
    int nparams;
    int threads;
    int blas_threshold;      /* -1: as the daemon decides */
    unsigned long seed;
    int exact;
} search_opts;

static int parse_num(const char *opt, const char *s, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *s == '\0' || *end != '\0' || !(v >= lo && v <= hi)) {
        fprintf(stderr, PROG ": %s: expected a number from %g to %g, got \"%s\"\n", opt, lo,
                hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The value below which a share p of the sorted v (n) lies (nearest rank). */
static double pct(const double *v, size_t n, double p)
{
    size_t i = (size_t)(p * (double)n + 0.5);
    return v[i ? (i > n ? n : i) - 1 : 0];
}

/* Merges one block of scores (nq, nb: queries by the block's rows, whose ids are
 * ids[0..nb)) into each query's sorted top k (best, top: (nq, k), best first). */
static void merge_block(const float *s, size_t nq, size_t nb, const int64_t *ids, size_t k,
                        float *best, int64_t *top)
{
    for (size_t i = 0; i < nq; i++) {
        float *bs = best + i * k;
        int64_t *bt = top + i * k;
        const float *si = s + i * nb;
        for (size_t j = 0; j < nb; j++) {
            if (si[j] <= bs[k - 1])
                continue;
            size_t p = k - 1; /* insertion into the sorted list, best first */
            while (p > 0 && bs[p - 1] < si[j]) {
                bs[p] = bs[p - 1];
                bt[p] = bt[p - 1];
                p--;
            }
            bs[p] = si[j];
            bt[p] = ids[j];
        }
    }
}

/* The exact top k rows (by inner product) of each of nq queries q (nq, dim) among the
 * live rows' vectors stored in the database: top (nq, k) row ids, best first. The
 * vectors are read in blocks of EXACT_BLOCK and each block is scored with one
 * cblas_sgemm, so memory stays at one block however many rows the store holds. */
static int exact_topk(const char *db, const float *q, size_t nq, int dim, size_t k,
                      int64_t *top)
{
    sqlite3 *h = NULL;
    sqlite3_stmt *st = NULL;
    size_t vbytes = (size_t)dim * sizeof(float), n = 0, nb = 0;
    float *s = qd_mallocarray(nq * EXACT_BLOCK, sizeof *s);
    float *best = qd_mallocarray(nq * k, sizeof *best);
    float *vecs = qd_mallocarray((size_t)EXACT_BLOCK * (size_t)dim, sizeof *vecs);
    int64_t *ids = qd_mallocarray(EXACT_BLOCK, sizeof *ids);
    int rc = -1, step;
    if (!s || !best || !vecs || !ids) {
        fprintf(stderr, PROG ": out of memory for the exact search\n");
        goto done;
    }
    for (size_t i = 0; i < nq * k; i++) {
        best[i] = -INFINITY;
        top[i] = -1;
    }
    if (sqlite3_open_v2(db, &h, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(h, "SELECT row, vec FROM questions WHERE removed IS NULL", -1,
                           &st, NULL) != SQLITE_OK) {
        fprintf(stderr, PROG ": %s: %s\n", db, h ? sqlite3_errmsg(h) : "cannot open");
        goto done;
    }
    for (;;) {
        step = sqlite3_step(st);
        if (step == SQLITE_ROW) {
            if ((size_t)sqlite3_column_bytes(st, 1) != vbytes) {
                fprintf(stderr, PROG ": %s: row %lld: vector of %d bytes, expected %zu\n", db,
                        (long long)sqlite3_column_int64(st, 0), sqlite3_column_bytes(st, 1),
                        vbytes);
                goto done;
            }
            ids[nb] = sqlite3_column_int64(st, 0);
            memcpy(vecs + nb * (size_t)dim, sqlite3_column_blob(st, 1), vbytes);
            nb++;
        } else if (step != SQLITE_DONE) {
            fprintf(stderr, PROG ": %s: %s\n", db, sqlite3_errmsg(h));
            goto done;
        }
        if (nb == EXACT_BLOCK || (step == SQLITE_DONE && nb > 0)) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nq, (int)nb, dim, 1.0f,
                        q, dim, vecs, dim, 0.0f, s, (int)nb);
            merge_block(s, nq, nb, ids, k, best, top);
            n += nb;
            nb = 0;
            fprintf(stderr, "\r" PROG ": exact search: %zu rows", n);
        }
        if (step == SQLITE_DONE)
            break;
    }
    fputc('\n', stderr);
    rc = 0;
done:
    sqlite3_finalize(st);
    sqlite3_close(h);
    qd_free(s);
    qd_free(best);
    qd_free(vecs);
    qd_free(ids);
    return rc;
}

static int set_params(qd_store *s, const search_opts *o)
{
    for (int i = 0; i < o->nparams; i++) {
        int rc = qd_store_set_param_text(s, o->params[i]);
        if (rc) {
            fprintf(stderr, PROG ": --param %s: %s\n", o->params[i], qd_store_errmsg(s));
            return rc == QD_ERR_FORMAT ? 2 : 1;
        }
    }
    return 0;
}

static int run(const search_opts *o)
{
    char err[QD_ERRMSG_MAX];
    qd_store *s = NULL;
    qd_texts t = {0};
    float *qv = NULL;
    size_t *pick = NULL;
    int64_t *got = NULL, *truth = NULL;
    double *lat = NULL;
    qd_store_hits *hits = NULL;
    int status = 1;

    qd_store_opts so = {.model_path = o->model, .readonly = 1};
    double t0 = qd_now();
    if (qd_store_open(o->db, &so, &s, err, sizeof err) != 0) {
        fprintf(stderr, PROG ": %s\n", err);
        goto done;
    }
    double open_s = qd_now() - t0;
    qd_store_info info;
    if (qd_store_get_info(s, &info) != 0) {
        fprintf(stderr, PROG ": %s: %s\n", o->db, qd_store_errmsg(s));
        goto done;
    }
    if ((status = set_params(s, o)) != 0)
        goto done;
    status = 1;
    qd_ann_set_threads(o->threads);
    int blas = o->blas_threshold >= 0 ? o->blas_threshold
                                      : strcmp(info.index_spec, "Flat") == 0 ? 1 : 20;
    qd_ann_set_blas_threshold(blas);
    if (qd_texts_load(PROG, o->queries, NULL, &t) != 0)
        goto done;

    /* The queries: n of the dump's questions, a seeded partial shuffle. */
    size_t n = o->n < t.n ? o->n : t.n, warm = n < WARMUP ? n : WARMUP, k = o->k;
    int dim = info.dim;
    pick = qd_mallocarray(t.n, sizeof *pick);
    qv = qd_mallocarray(n * (size_t)dim, sizeof *qv);
    got = qd_mallocarray(n * k, sizeof *got);
    lat = qd_mallocarray(n, sizeof *lat);
    const char **qt = qd_mallocarray(n, sizeof *qt);
    size_t *ql = qd_mallocarray(n, sizeof *ql);
    if (!pick || !qv || !got || !lat || !qt || !ql) {
        qd_free(qt);
        qd_free(ql);
        fprintf(stderr, PROG ": out of memory\n");
        goto done;
    }
    uint64_t x = o->seed * 0x9E3779B97F4A7C15ULL + 1;
    for (size_t i = 0; i < t.n; i++)
        pick[i] = i;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        size_t j = i + (size_t)(x % (t.n - i)), tmp = pick[i];
        pick[i] = pick[j];
        pick[j] = tmp;
        qt[i] = t.text[pick[i]];
        ql[i] = t.len[pick[i]];
    }
    int rc = qd_enc_texts_parallel(qd_store_model(s), qt, ql, n, 0, 0, NULL, NULL, qv);
    qd_free(qt);
    qd_free(ql);
    if (rc != 0) {
        fprintf(stderr, PROG ": encoding the queries failed (%d)\n", rc);
        goto done;
    }

    /* batch queries per call, as a daemon worker searches what waits: a warm-up of up
     * to WARMUP queries, then the n measured (the last call may hold fewer). */
    size_t nb = o->batch, ncalls = 0;
    hits = qd_mallocarray(nb, sizeof *hits);
    if (!hits) {
        fprintf(stderr, PROG ": out of memory\n");
        goto done;
    }
    for (int measured = 0; measured < 2; measured++) {
        size_t end = measured ? n : warm;
        for (size_t q0 = 0; q0 < end; q0 += nb) {
            size_t m = end - q0 < nb ? end - q0 : nb;
            double a = qd_now();
            if (qd_store_search(s, qv + q0 * (size_t)dim, m, k, -2.0f, NULL, hits) != 0) {
                fprintf(stderr, PROG ": search: %s\n", qd_store_errmsg(s));
                goto done;
            }
            double ms = (qd_now() - a) * 1e3;
            for (size_t b = 0; b < m; b++) {
                if (measured)
                    for (size_t j = 0; j < k; j++)
                        got[(q0 + b) * k + j] = j < hits[b].n ? hits[b].hit[j].row.row : -1;
                qd_store_hits_free(&hits[b]);
            }
            if (measured)
                lat[ncalls++] = ms;
        }
    }
    double total_ms = 0;
    for (size_t i = 0; i < ncalls; i++)
        total_ms += lat[i];
    qsort(lat, ncalls, sizeof *lat, cmp_double);

    double recall = -1;
    if (o->exact) {
        truth = qd_mallocarray(n * k, sizeof *truth);
        if (!truth || exact_topk(o->db, qv, n, dim, k, truth) != 0)
            goto done;
        size_t found = 0, want = 0;
        for (size_t i = 0; i < n; i++)
            for (size_t a = 0; a < k; a++) {
                if (truth[i * k + a] < 0)
                    continue;
                want++;
                for (size_t b = 0; b < k; b++)
                    if (got[i * k + b] == truth[i * k + a]) {
                        found++;
                        break;
                    }
            }
        recall = want ? (double)found / (double)want : 1.0;
    }

    uint64_t disk = info.db_bytes + info.faiss_bytes;
    printf("store:     %s: %llu live rows, index %s, opened in %.2f s\n", o->db,
           (unsigned long long)info.live, info.index_spec, open_s);
    printf("disk:      %llu bytes (database %llu, FAISS %llu): %.0f bytes per question\n",
           (unsigned long long)disk, (unsigned long long)info.db_bytes,
           (unsigned long long)info.faiss_bytes,
           info.live ? (double)disk / (double)info.live : 0.0);
    for (int i = 0; i < o->nparams; i++)
        printf("param:     %s\n", o->params[i]);
    printf("queries:   %zu from %s, k %zu, %zu per call, %d FAISS thread(s), BLAS "
           "threshold %d\n", n, o->queries, k, nb, o->threads, blas);
    printf("latency:   p50 %.3f ms, p90 %.3f ms, p99 %.3f ms, max %.3f ms, mean %.3f ms "
           "per call; %.1f us per query\n",
           pct(lat, ncalls, 0.50), pct(lat, ncalls, 0.90), pct(lat, ncalls, 0.99),
           lat[ncalls - 1], total_ms / (double)ncalls, total_ms * 1e3 / (double)n);
    if (recall >= 0)
        printf("recall@%zu: %.4f (against exact inner product over the stored vectors)\n", k,
               recall);
    printf("RESULT spec=%s rows=%llu bytes_per_question=%.0f n=%zu k=%zu p50_ms=%.3f "
           "p99_ms=%.3f recall_at_k=%.4f batch=%zu us_per_query=%.1f\n",
           info.index_spec, (unsigned long long)info.live,
           info.live ? (double)disk / (double)info.live : 0.0, n, k, pct(lat, ncalls, 0.50),
           pct(lat, ncalls, 0.99), recall, nb, total_ms * 1e3 / (double)n);
    status = 0;
done:
    qd_free(pick);
    qd_free(qv);
    qd_free(got);
    qd_free(truth);
    qd_free(lat);
    qd_free(hits);
    qd_texts_free(&t);
    qd_store_close(s);
    return status;
}

int bench_search_main(int argc, char **argv)
{
    enum { O_DB = 256, O_QUERIES, O_PARAM, O_THREADS, O_BLAS, O_SEED, O_MODEL, O_NOEXACT,
           O_BATCH };
    static const struct option longopts[] = {
        {"db", required_argument, 0, O_DB},
        {"queries", required_argument, 0, O_QUERIES},
        {"param", required_argument, 0, O_PARAM},
        {"threads", required_argument, 0, O_THREADS},
        {"batch", required_argument, 0, O_BATCH},
        {"blas-threshold", required_argument, 0, O_BLAS},
        {"seed", required_argument, 0, O_SEED},
        {"model", required_argument, 0, O_MODEL},
        {"no-exact", no_argument, 0, O_NOEXACT},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    search_opts o = {.n = 1000, .k = 10, .batch = 1, .threads = 1, .blas_threshold = -1,
                     .seed = 1, .exact = 1};
    double v;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "n:k:h", longopts, NULL)) != -1) {
        switch (c) {
        case O_DB: o.db = optarg; break;
        case O_QUERIES: o.queries = optarg; break;
        case O_MODEL: o.model = optarg; break;
        case O_NOEXACT: o.exact = 0; break;
        case O_PARAM:
            if (o.nparams == MAX_PARAMS) {
                fprintf(stderr, PROG ": at most %d --param options\n", MAX_PARAMS);
                return 2;
            }
            o.params[o.nparams++] = optarg;
            break;
        case 'n':
            if (parse_num("-n", optarg, 1, 1e7, &v)) return 2;
            o.n = (size_t)v;
            break;
        case 'k':
            if (parse_num("-k", optarg, 1, QD_STORE_MAX_K, &v)) return 2;
            o.k = (size_t)v;
            break;
        case O_BATCH:
            if (parse_num("--batch", optarg, 1, 256, &v)) return 2;
            o.batch = (size_t)v;
            break;
        case O_THREADS:
            if (parse_num("--threads", optarg, 1, 256, &v)) return 2;
            o.threads = (int)v;
            break;
        case O_BLAS:
            if (parse_num("--blas-threshold", optarg, 1, 4096, &v)) return 2;
            o.blas_threshold = (int)v;
            break;
        case O_SEED:
            if (parse_num("--seed", optarg, 0, 4294967295.0, &v)) return 2;
            o.seed = (unsigned long)v;
            break;
        case 'h': fputs(usage, stdout); return 0;
        default: fputs(usage, stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, PROG ": unexpected argument \"%s\" (see --help)\n", argv[optind]);
        return 2;
    }
    if (!o.db || !o.queries) {
        fprintf(stderr, PROG ": --db and --queries are required (see --help)\n");
        return 2;
    }
    return run(&o);
}
