/*
 * eval.c - qdup-eval: how good a model is, measured the ways ../shared/data/quora/README.md
 * describes, on the test split.
 *
 * Pair metrics: every pair of a file is scored by the cosine of its two encodings
 * (qd_score_pairs); reported are the accuracy at 0.7 (the course's metric), the
 * accuracy at the threshold that is best on valid.tsv (chosen there, applied unchanged
 * to the other files) and the ROC AUC. Retrieval: all of questions.tsv is encoded and
 * put in an exact inner-product index (qd_ann "Flat"); question1 of each duplicate pair
 * of test.tsv is encoded and searched for its 11 nearest questions, its own qid is taken
 * out and the rank of question2 gives Recall@1, Recall@10 and MRR@10. The same queries
 * then go to the BM25 baseline (SQLite FTS5, eval_lib.c) over the same questions, so both
 * retrieval rows come from one run on one set of queries.
 *
 * Hybrid: the same queries ranked the way the product ranks (qd_rank_rescore, rank.h):
 * the model's `candidates` nearest questions re-scored with BM25 over the term
 * statistics of questions.tsv and fused with the cosine, by the model's scoring.
 * Calibration: each pair set's P(duplicate) from the model's head (head.h) over the
 * cosine and the pair signals (with the same statistics): expected calibration error
 * over 10 equal-width bins, Brier score, and precision, recall and accuracy at the
 * model's operating point min_p (and at a few other thresholds on test).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <libgen.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "eval_impl.h"
#include "qdup/ann.h"
#include "qdup/common.h"
#include "qdup/dump.h"
#include "qdup/fit.h"
#include "qdup/head.h"
#include "qdup/lex.h"
#include "qdup/model.h"
#include "qdup/pairs.h"
#include "qdup/parallel.h"
#include "qdup/rank.h"
#include "qdup/train.h"
#include "texts.h"

#define PROG "qdup-eval"
#define MAX_PAIR_FILES 64
/* Results asked of each index: the 10 that count plus the query itself. */
#define RETR_K 11

static const char usage[] =
    "usage: " PROG " --model MODEL [--data DIR] [--pairs FILE]... [--json] [--threads N]\n"
    "\n"
    "Evaluates a qdup model on the Quora test split (see ../shared/data/quora/README.md).\n"
    "\n"
    "Pair metrics on DIR/test.tsv and on each --pairs file: accuracy at cosine 0.7 (the\n"
    "course's metric), accuracy at the threshold that is best on DIR/valid.tsv, ROC AUC.\n"
    "\n"
    "Retrieval: every question of DIR/questions.tsv is encoded and indexed (exact inner\n"
    "product, FAISS Flat); question1 of each duplicate pair of test.tsv is the query, the\n"
    "query's own qid is excluded from its results, and the rank of question2 gives\n"
    "Recall@1, Recall@10 and MRR@10. The same queries are also run against a BM25\n"
    "baseline over the same questions: SQLite FTS5, in-memory, unicode61 tokenizer,\n"
    "ORDER BY bm25(), with FTS5's fixed parameters k1 = 1.2 and b = 0.75; the query is\n"
    "the OR of the question's distinct terms, each quoted.\n"
    "\n"
    "options:\n"
    "  --model MODEL     model file (.qdm) (required)\n"
    "  --data DIR        directory holding train.tsv, valid.tsv, test.tsv and\n"
    "                    questions.tsv (default: $QDUP_DATA/quora, QDUP_DATA defaulting\n"
    "                    to ../shared/data)\n"
    "  --pairs FILE      another Quora-format pair file to score (plain TSV or the\n"
    "                    original release's quoted format); may be repeated; keyed in\n"
    "                    the output by its base name\n"
    "  --pairs-collection DUMP  the questions (qid<TAB>question) the --pairs files come\n"
    "                    from: the term statistics of their pair signals (default:\n"
    "                    DIR/questions.tsv, those of the test pairs)\n"
    "  --no-retrieval    pair metrics only\n"
    "  --no-bm25         skip the BM25 baseline (it takes about a minute: FTS5 scores\n"
    "                    every question sharing a term with the query)\n"
    "  --json            print one JSON object instead of tables\n"
    "  --threads N       threads for encoding and search (default 0: all cores)\n"
    "  -h, --help        this help\n"
    "\n"
    "JSON keys: \"test\" and each --pairs base name hold acc_at_0_7,\n"
    "acc_at_valid_threshold, auc (and pairs, duplicates, skipped; for a graded file,\n"
    "one with a 7th column relevance, also map: SemEval-2016 Task 3's mean average\n"
    "precision over the qid1 groups, relevant = relevance >= 1, and map_groups);\n"
    "\"retrieval\" and\n"
    "\"bm25\" hold recall_at_1, recall_at_10, mrr_at_10 (and queries, seconds); \"valid\"\n"
    "holds the threshold; \"model\" the path and fingerprint.\n"
    "Exit status: 0 on success, 1 if a file cannot be used, 2 for bad options.\n";

/* Thresholds of the precision/recall table printed for test. */
static const double pr_thresholds[] = {0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9};
#define N_PR (sizeof pr_thresholds / sizeof *pr_thresholds)

/* Precision, recall and accuracy of "duplicate when p >= t". */
typedef struct pr_point {
    double t;         /* the threshold */
    double precision; /* duplicates among the pairs flagged (0 when none is) */
    double recall;    /* flagged among the duplicates */
    double accuracy;  /* pairs classified right */
    size_t flagged;   /* pairs flagged */
} pr_point;

/* The calibration of one pair set. */
typedef struct calib_result {
    double ece;           /* expected calibration error, 10 equal-width bins */
    double brier;         /* Brier score */
    pr_point at;          /* at the model's min_p */
    pr_point table[N_PR]; /* at pr_thresholds */
    double auc;           /* ROC AUC of P(duplicate) */
    double map;           /* graded files: MAP of P(duplicate) over the qid1 groups */
    size_t map_groups;    /* groups counted in map (0: not a graded file) */
} calib_result;

/* The pair metrics of one file. */
typedef struct pair_result {
    char key[256];        /* JSON key: "test" or the file's base name */
    const char *path;     /* the file */
    size_t n;             /* pairs scored */
    size_t dups;          /* of them labelled duplicates */
    size_t skipped;       /* malformed rows skipped */
    double acc07;         /* accuracy at cosine 0.7 */
    double acc_thr;       /* accuracy at the valid threshold */
    double auc;           /* ROC AUC */
    double map;           /* graded files: MAP over qid1 groups (relevant: grade >= 1) */
    size_t map_groups;    /* groups with a relevant pair; 0 for a file without grades */
    calib_result cal;     /* P(duplicate) from the model's head */
} pair_result;

/* Retrieval results of one method. */
typedef struct retr_result {
    qd_eval_retr r;       /* counts */
    double seconds;       /* building the index and answering every query */
} retr_result;

/* The questions of the dump, copied out of the reader. */
typedef struct questions {
    size_t n;             /* questions */
    int64_t *qid;         /* (n) their ids */
    const char **text;    /* (n) texts, NUL-terminated */
    size_t *len;          /* (n) byte lengths */
    size_t skipped;       /* malformed records skipped */
    qd_texts src;         /* the dump as read (text and len point into it) */
} questions;

static void on_pair_warning(const char *msg, void *arg)
{
    (void)arg;
    fprintf(stderr, PROG ": warning: %s (row skipped)\n", msg);
}

static int progress_on; /* stderr is a terminal: print phases */

static void phase(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void phase(const char *fmt, ...)
{
    if (!progress_on)
        return;
    va_list ap;
    va_start(ap, fmt);
    fputs(PROG ": ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* --- pair metrics ------------------------------------------------------------------------ */

/* Loads and scores a pair file; scores (p->n) are returned for the caller to free. */
static int score_file(const qd_model *m, const char *path, int threads, qd_pairs **pairs,
                      float **scores)
{
    char err[QD_ERRMSG_MAX];
    *scores = NULL;
    int rc = qd_pairs_load(path, on_pair_warning, NULL, pairs, err, sizeof err);
    if (rc) {
        fprintf(stderr, PROG ": %s\n", err);
        return rc;
    }
    if ((*pairs)->n == 0) {
        fprintf(stderr, PROG ": %s: no usable pairs\n", path);
        qd_pairs_free(*pairs);
        *pairs = NULL;
        return QD_ERR_FORMAT;
    }
    *scores = qd_mallocarray((*pairs)->n, sizeof **scores);
    if (!*scores) {
        qd_pairs_free(*pairs);
        *pairs = NULL;
        return QD_ERR_NOMEM;
    }
    phase("scoring %zu pairs of %s", (*pairs)->n, path);
    rc = qd_score_pairs(m, *pairs, threads, *scores);
    if (rc) {
        fprintf(stderr, PROG ": %s: scoring failed: %s\n", path, qd_strerror(rc));
        qd_free(*scores);
        *scores = NULL;
        qd_pairs_free(*pairs);
        *pairs = NULL;
    }
    return rc;
}

static pr_point pr_at(const float *p, const uint8_t *y, size_t n, double t)
{
    size_t tp = 0, fp = 0, pos = 0, right = 0;
    for (size_t i = 0; i < n; i++) {
        int flag = p[i] >= t;
        pos += y[i];
        tp += flag && y[i];
        fp += flag && !y[i];
        right += flag == (y[i] != 0);
    }
    pr_point r = {t, tp + fp ? (double)tp / (double)(tp + fp) : 0, pos ? (double)tp / pos : 0,
                  n ? (double)right / (double)n : 0, tp + fp};
    return r;
}

/* The head's P(duplicate) for every pair (cosines in s, statistics st) into cal. */
static int calibrate(const qd_model *m, const qd_lex_stats *st, const qd_pairs *p,
                     const float *s, calib_result *cal)
{
    const qd_model_scoring *sc = qd_model_get_scoring(m);
    float *prob = qd_mallocarray(p->n, sizeof *prob);
    if (!prob)
        return QD_ERR_NOMEM;
    int rc = qd_fit_pairs_prob(&sc->head, st, p, s, prob);
    if (rc == 0) {
        cal->ece = qd_head_ece(prob, p->dup, p->n, 10);
        cal->brier = qd_head_brier(prob, p->dup, p->n);
        cal->at = pr_at(prob, p->dup, p->n, sc->min_p);
        cal->auc = qd_pairs_auc(prob, p->dup, p->n);
        if (p->grade)
            cal->map = qd_pairs_map(prob, p->qid1, p->grade, p->n, 1, &cal->map_groups);
        for (size_t k = 0; k < N_PR; k++)
            cal->table[k] = pr_at(prob, p->dup, p->n, pr_thresholds[k]);
    }
    qd_free(prob);
    return rc;
}

static int eval_pair_file(const qd_model *m, const qd_lex_stats *st, const char *path,
                          int threads, double thr, pair_result *pr)
{
    qd_pairs *p;
    float *s;
    int rc = score_file(m, path, threads, &p, &s);
    if (rc)
        return rc;
    pr->path = path;
    pr->n = p->n;
    pr->skipped = p->skipped;
    pr->dups = 0;
    for (size_t i = 0; i < p->n; i++)
        pr->dups += p->dup[i];
    pr->acc07 = qd_pairs_accuracy_at(s, p->dup, p->n, 0.7);
    pr->acc_thr = qd_pairs_accuracy_at(s, p->dup, p->n, thr);
    pr->auc = qd_pairs_auc(s, p->dup, p->n);
    if (p->grade)
        pr->map = qd_pairs_map(s, p->qid1, p->grade, p->n, 1, &pr->map_groups);
    rc = calibrate(m, st, p, s, &pr->cal);
    if (rc)
        fprintf(stderr, PROG ": %s: calibration: %s\n", path, qd_strerror(rc));
    qd_free(s);
    qd_pairs_free(p);
    return rc;
}

/* --- the question dump ---------------------------------------------------------------- */

static void questions_free(questions *q)
{
    qd_free(q->qid);
    qd_texts_free(&q->src);
    memset(q, 0, sizeof *q);
}

typedef struct qid_row {
    int64_t qid;   /* question id */
    size_t row;    /* its row in questions */
} qid_row;

static int cmp_qid_row(const void *a, const void *b)
{
    int64_t x = ((const qid_row *)a)->qid, y = ((const qid_row *)b)->qid;
    return (x > y) - (x < y);
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Reads a two-column dump (qid, question) whose qids are whole numbers. */
static int load_questions(const char *path, questions *q)
{
    memset(q, 0, sizeof *q);
    qd_dump_opts o = qd_dump_opts_default();
    o.format = QD_DUMP_TSV;
    int rc = qd_texts_load(PROG, path, &o, &q->src);
    if (rc)
        return rc;
    q->n = q->src.n;
    q->text = q->src.text;
    q->len = q->src.len;
    q->skipped = q->src.skipped;
    q->qid = qd_mallocarray(q->n, sizeof *q->qid);
    int64_t *sorted = qd_mallocarray(q->n, sizeof *sorted);
    if (!q->qid || !sorted) {
        fprintf(stderr, PROG ": %s: out of memory\n", path);
        rc = QD_ERR_NOMEM;
        goto fail;
    }
    for (size_t i = 0; i < q->n; i++)
        if (qd_pairs_parse_qid(q->src.id[i], q->src.id_len[i], &q->qid[i])) {
            fprintf(stderr, PROG ": %s:%" PRIu64 ": qid \"%.40s\" is not a whole number\n",
                    path, q->src.line[i], q->src.id[i]);
            rc = QD_ERR_FORMAT;
            goto fail;
        }
    /* Ids must be unique: the index keys vectors by qid. */
    memcpy(sorted, q->qid, q->n * sizeof *sorted);
    qsort(sorted, q->n, sizeof *sorted, cmp_i64);
    for (size_t i = 1; i < q->n; i++)
        if (sorted[i] == sorted[i - 1]) {
            fprintf(stderr, PROG ": %s: qid %" PRId64 " appears more than once\n", path,
                    sorted[i]);
            rc = QD_ERR_FORMAT;
            goto fail;
        }
    qd_free(sorted);
    return 0;
fail:
    qd_free(sorted);
    questions_free(q);
    return rc;
}

/* --- retrieval -------------------------------------------------------------------------- */

/* The test duplicates as queries: question1's text, its qid (excluded from the results)
 * and question2's qid (the target). */
typedef struct queries {
    size_t n;              /* queries */
    const char **text;     /* (n) question1 texts (in the pairs' arena) */
    size_t *len;           /* (n) their lengths */
    int64_t *self;         /* (n) question1's qid */
    int64_t *target;       /* (n) question2's qid */
    size_t missing;        /* targets that questions.tsv lacks (always misses) */
} queries;

static void queries_free(queries *q)
{
    qd_free(q->text);
    qd_free(q->len);
    qd_free(q->self);
    qd_free(q->target);
}

static int make_queries(const qd_pairs *test, const char *test_path, const questions *qs,
                        queries *q)
{
    memset(q, 0, sizeof *q);
    size_t n = 0;
    for (size_t i = 0; i < test->n; i++)
        n += test->dup[i];
    if (n == 0) {
        fprintf(stderr, PROG ": %s: no duplicate pairs to query with\n", test_path);
        return QD_ERR_FORMAT;
    }
    q->text = qd_mallocarray(n, sizeof *q->text);
    q->len = qd_mallocarray(n, sizeof *q->len);
    q->self = qd_mallocarray(n, sizeof *q->self);
    q->target = qd_mallocarray(n, sizeof *q->target);
    qid_row *sorted = qd_mallocarray(qs->n, sizeof *sorted);
    if (!q->text || !q->len || !q->self || !q->target || !sorted) {
        qd_free(sorted);
        queries_free(q);
        fprintf(stderr, PROG ": out of memory\n");
        return QD_ERR_NOMEM;
    }
    for (size_t i = 0; i < qs->n; i++)
        sorted[i] = (qid_row){qs->qid[i], i};
    qsort(sorted, qs->n, sizeof *sorted, cmp_qid_row);
    for (size_t i = 0; i < test->n; i++) {
        if (!test->dup[i])
            continue;
        if (test->qid1[i] < 0 || test->qid2[i] < 0) {
            fprintf(stderr,
                    PROG ": %s: no qid1/qid2 columns (or an empty qid): retrieval needs "
                         "them to know which indexed question is the query and which its "
                         "duplicate\n",
                    test_path);
            qd_free(sorted);
            queries_free(q);
            return QD_ERR_FORMAT;
        }
        qid_row key = {test->qid2[i], 0};
        if (!bsearch(&key, sorted, qs->n, sizeof *sorted, cmp_qid_row))
            q->missing++;
        q->text[q->n] = test->q1[i];
        q->len[q->n] = test->len1[i];
        q->self[q->n] = test->qid1[i];
        q->target[q->n] = test->qid2[i];
        q->n++;
    }
    qd_free(sorted);
    return 0;
}

/* The hybrid ranking of the queries from their K nearest questions (ids, scores by
 * cosine, best first; ids are rows of qs): each query's own row taken out, the first
 * `candidates` re-scored by qd_rank_rescore, the rank of the target among the result. */
static int retrieve_hybrid(const qd_model *m, const questions *qs, const queries *q,
                           const int64_t *ids, const float *sc, size_t K, retr_result *res,
                           retr_result *lex_only)
{
    double t0 = qd_now();
    const qd_model_scoring *scoring = qd_model_get_scoring(m);
    size_t C = scoring->candidates;
    qd_lex_stats *st = NULL;
    qd_lex_doc *docs = qd_calloc(qs->n, sizeof *docs);
    qd_rank_cand *c = qd_mallocarray(C, sizeof *c);
    int64_t *ranked = qd_mallocarray(C, sizeof *ranked);
    qd_tokbuf tb;
    qd_tokbuf_init(&tb);
    int rc = QD_ERR_NOMEM;
    if (!docs || !c || !ranked)
        goto done;
    phase("hybrid: terms of %zu questions, re-scoring %zu candidates per query", qs->n, C);
    st = qd_lex_stats_new();
    if (!st)
        goto done;
    for (size_t i = 0; i < qs->n; i++) {
        rc = qd_lex_doc_make(&tb, qs->text[i], qs->len[i], &docs[i]);
        if (rc == 0)
            rc = qd_lex_stats_add(st, &docs[i]);
        if (rc)
            goto done;
    }
    memset(&res->r, 0, sizeof res->r);
    memset(&lex_only->r, 0, sizeof lex_only->r);
    for (int mode = 0; mode < 2; mode++) {
        /* mode 0: the model's scoring; 1: the same candidates by BM25 alone (a = 0). */
        qd_model_scoring s = *scoring;
        if (mode == 1)
            s.fusion = 0;
        for (size_t i = 0; i < q->n; i++) {
            qd_lex_doc qd;
            rc = qd_lex_doc_make(&tb, q->text[i], q->len[i], &qd);
            if (rc)
                goto done;
            size_t n = 0;
            for (size_t j = 0; j < K && n < C; j++) {
                int64_t row = ids[i * K + j];
                if (row < 0 || qs->qid[row] == q->self[i])
                    continue;
                c[n] = (qd_rank_cand){.doc = &docs[row], .cosine = sc[i * K + j], .index = n};
                ranked[n++] = row;
            }
            rc = qd_rank_rescore(&s, st, &qd, QD_RANK_FUSED, c, n, 0);
            qd_lex_doc_free(&qd);
            if (rc)
                goto done;
            int64_t top[RETR_K];
            size_t k = 0;
            for (; k < n && k < RETR_K; k++)
                top[k] = qs->qid[ranked[c[k].index]];
            qd_eval_retr_add(mode ? &lex_only->r : &res->r,
                             qd_eval_rank(top, k, q->self[i], q->target[i]));
        }
    }
    res->seconds = qd_now() - t0;
    lex_only->seconds = res->seconds;
    rc = 0;
done:
    if (rc)
        fprintf(stderr, PROG ": hybrid ranking: %s\n", qd_strerror(rc));
    if (docs)
        for (size_t i = 0; i < qs->n; i++)
            qd_lex_doc_free(&docs[i]);
    qd_free(docs);
    qd_free(c);
    qd_free(ranked);
    qd_lex_stats_free(st);
    qd_tokbuf_free(&tb);
    return rc;
}

static int retrieve_dense(const qd_model *m, const questions *qs, const queries *q,
                          int threads, retr_result *res, retr_result *hybrid,
                          retr_result *lex_only)
{
    double t0 = qd_now();
    int dim = qd_model_dim(m);
    char err[QD_ERRMSG_MAX];
    size_t K = qd_model_get_scoring(m)->candidates + 1;
    if (K < RETR_K)
        K = RETR_K;
    float *v = qd_mallocarray(qs->n, (size_t)dim * sizeof *v);
    float *qv = qd_mallocarray(q->n, (size_t)dim * sizeof *qv);
    float *sc = qd_mallocarray(q->n, K * sizeof *sc);
    int64_t *ids = qd_mallocarray(q->n, K * sizeof *ids);
    int64_t *rows = qd_mallocarray(qs->n, sizeof *rows);
    int64_t *top = qd_mallocarray(RETR_K, sizeof *top);
    qd_ann *ann = NULL;
    int rc = QD_ERR_NOMEM;
    if (!v || !qv || !sc || !ids || !rows || !top) {
        fprintf(stderr, PROG ": out of memory for %zu vectors\n", qs->n);
        goto done;
    }
    phase("encoding %zu questions", qs->n);
    rc = qd_enc_texts_parallel(m, qs->text, qs->len, qs->n, threads, 0, NULL, NULL, v);
    if (rc == 0)
        rc = qd_enc_texts_parallel(m, q->text, q->len, q->n, threads, 0, NULL, NULL, qv);
    if (rc) {
        fprintf(stderr, PROG ": encoding failed: %s\n", qd_strerror(rc));
        goto done;
    }
    rc = qd_ann_new(dim, "Flat", &ann, err, sizeof err);
    if (rc) {
        fprintf(stderr, PROG ": %s\n", err);
        goto done;
    }
    qd_ann_set_threads(threads);
    phase("indexing and searching (%zu queries)", q->n);
    /* FAISS ids are rows of qs, so the hybrid ranking finds each result's terms. */
    for (size_t i = 0; i < qs->n; i++)
        rows[i] = (int64_t)i;
    rc = qd_ann_add(ann, v, rows, qs->n);
    if (rc == 0)
        rc = qd_ann_search(ann, qv, q->n, K, sc, ids);
    if (rc) {
        fprintf(stderr, PROG ": vector index: %s: %s\n", qd_strerror(rc), qd_ann_errmsg(ann));
        goto done;
    }
    memset(&res->r, 0, sizeof res->r);
    for (size_t i = 0; i < q->n; i++) {
        for (size_t j = 0; j < RETR_K; j++) {
            int64_t row = ids[i * K + j];
            top[j] = row < 0 ? -1 : qs->qid[row];
        }
        qd_eval_retr_add(&res->r, qd_eval_rank(top, RETR_K, q->self[i], q->target[i]));
    }
    res->seconds = qd_now() - t0;
    if (hybrid)
        rc = retrieve_hybrid(m, qs, q, ids, sc, K, hybrid, lex_only);
done:
    qd_ann_free(ann);
    qd_free(v);
    qd_free(qv);
    qd_free(sc);
    qd_free(ids);
    qd_free(rows);
    qd_free(top);
    return rc;
}

/* BM25 workers: FTS5 scores every question that shares a term with the query (tens of
 * milliseconds a query here), so the queries are spread over threads, each with its own
 * in-memory copy of the index (building one takes under a second). */
typedef struct bm25_job {
    const questions *qs;   /* the indexed questions */
    const queries *q;      /* the queries */
    size_t *rank;          /* (q->n) rank of each query's target, 0 if not found */
    atomic_size_t next;    /* next query to take */
    atomic_int rc;         /* first failure, 0 if none */
    pthread_mutex_t mu;    /* guards msg */
    char msg[QD_ERRMSG_MAX]; /* its detail */
} bm25_job;

static void bm25_job_fail(bm25_job *j, int rc, const char *msg)
{
    pthread_mutex_lock(&j->mu);
    if (atomic_load(&j->rc) == 0) {
        snprintf(j->msg, sizeof j->msg, "%s", msg);
        atomic_store(&j->rc, rc);
    }
    pthread_mutex_unlock(&j->mu);
}

/* One worker (qd_parallel_for): its own index, then queries from the shared cursor. */
static void bm25_worker(size_t begin, size_t end, int worker, void *arg)
{
    (void)begin;
    (void)end;
    (void)worker;
    bm25_job *j = arg;
    char err[QD_ERRMSG_MAX];
    qd_bm25 *b;
    int rc = qd_bm25_open(&b, err, sizeof err);
    if (rc) {
        bm25_job_fail(j, rc, err);
        return;
    }
    rc = qd_bm25_add(b, j->qs->qid, j->qs->text, j->qs->len, j->qs->n);
    if (rc) {
        bm25_job_fail(j, rc, qd_bm25_errmsg(b));
        qd_bm25_close(b);
        return;
    }
    for (;;) {
        size_t i = atomic_fetch_add(&j->next, 1);
        if (i >= j->q->n || atomic_load(&j->rc) != 0)
            break;
        int64_t ids[RETR_K];
        size_t found;
        rc = qd_bm25_search(b, j->q->text[i], j->q->len[i], RETR_K, ids, NULL, &found);
        if (rc) {
            snprintf(err, sizeof err, "query %zu (qid %" PRId64 "): %s", i + 1, j->q->self[i],
                     rc == QD_ERR_DB ? qd_bm25_errmsg(b) : qd_strerror(rc));
            bm25_job_fail(j, rc, err);
            break;
        }
        j->rank[i] = qd_eval_rank(ids, found, j->q->self[i], j->q->target[i]);
    }
    qd_bm25_close(b);
}

static int retrieve_bm25(const questions *qs, const queries *q, int threads, retr_result *res)
{
    double t0 = qd_now();
    threads = qd_parallel_workers(q->n, threads);
    bm25_job j = {.qs = qs, .q = q};
    atomic_init(&j.next, 0);
    atomic_init(&j.rc, 0);
    pthread_mutex_init(&j.mu, NULL);
    j.rank = qd_calloc(q->n, sizeof *j.rank);
    if (!j.rank) {
        fprintf(stderr, PROG ": out of memory\n");
        pthread_mutex_destroy(&j.mu);
        return QD_ERR_NOMEM;
    }
    phase("BM25: %zu queries on %d threads, each with its own SQLite FTS5 index", q->n,
          threads);
    qd_parallel_for((size_t)threads, threads, bm25_worker, &j);
    int rc = atomic_load(&j.rc);
    if (rc) {
        fprintf(stderr, PROG ": BM25: %s\n", j.msg);
    } else {
        memset(&res->r, 0, sizeof res->r);
        for (size_t i = 0; i < q->n; i++)
            qd_eval_retr_add(&res->r, j.rank[i]);
        res->seconds = qd_now() - t0;
    }
    qd_free(j.rank);
    pthread_mutex_destroy(&j.mu);
    return rc;
}

/* --- output -------------------------------------------------------------------------------- */

static json_t *pair_json(const pair_result *p)
{
    json_t *o = json_pack("{s:f, s:f, s:f, s:I, s:I, s:I}", "acc_at_0_7", p->acc07,
                          "acc_at_valid_threshold", p->acc_thr, "auc", p->auc, "pairs",
                          (json_int_t)p->n, "duplicates", (json_int_t)p->dups, "skipped",
                          (json_int_t)p->skipped);
    if (o && p->map_groups) {
        json_object_set_new(o, "map", json_real(p->map));
        json_object_set_new(o, "map_groups", json_integer((json_int_t)p->map_groups));
    }
    return o;
}

static json_t *pr_json(const pr_point *p)
{
    return json_pack("{s:f, s:f, s:f, s:f, s:I}", "min_p", p->t, "precision", p->precision,
                     "recall", p->recall, "accuracy", p->accuracy, "flagged",
                     (json_int_t)p->flagged);
}

static json_t *calib_json(const calib_result *c, int table)
{
    json_t *o = json_pack("{s:f, s:f, s:f, s:f, s:f, s:f}", "ece", c->ece, "brier", c->brier,
                          "threshold", c->at.t, "precision", c->at.precision, "recall",
                          c->at.recall, "accuracy", c->at.accuracy);
    if (o && table) {
        json_t *a = json_array();
        for (size_t k = 0; a && k < N_PR; k++)
            json_array_append_new(a, pr_json(&c->table[k]));
        json_object_set_new(o, "by_threshold", a);
    }
    if (o)
        json_object_set_new(o, "auc", json_real(c->auc));
    if (o && c->map_groups)
        json_object_set_new(o, "map", json_real(c->map));
    return o;
}

static json_t *retr_json(const retr_result *r)
{
    return json_pack("{s:f, s:f, s:f, s:I, s:f}", "recall_at_1", qd_eval_recall1(&r->r),
                     "recall_at_10", qd_eval_recall10(&r->r), "mrr_at_10",
                     qd_eval_mrr10(&r->r), "queries", (json_int_t)r->r.queries, "seconds",
                     r->seconds);
}

static void set_new(json_t *o, const char *key, json_t *v)
{
    QD_ASSERT(v != NULL); /* json_pack only fails on a bad format string or no memory */
    json_object_set_new(o, key, v);
}

/* --- main ---------------------------------------------------------------------------------- */

static int parse_threads(const char *s, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *s == '\0' || *end != '\0' || v < 0 || v > 256) {
        fprintf(stderr, PROG ": --threads: expected a whole number from 0 to 256, got \"%s\"\n",
                s);
        return -1;
    }
    *out = (int)v;
    return 0;
}

enum { OPT_MODEL = 256, OPT_DATA, OPT_PAIRS, OPT_JSON, OPT_THREADS, OPT_NORETR, OPT_NOBM25,
       OPT_PCOLL };

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"model", required_argument, 0, OPT_MODEL},
        {"data", required_argument, 0, OPT_DATA},
        {"pairs", required_argument, 0, OPT_PAIRS},
        {"pairs-collection", required_argument, 0, OPT_PCOLL},
        {"json", no_argument, 0, OPT_JSON},
        {"threads", required_argument, 0, OPT_THREADS},
        {"no-retrieval", no_argument, 0, OPT_NORETR},
        {"no-bm25", no_argument, 0, OPT_NOBM25},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    const char *model_path = NULL, *data_dir = NULL, *pcoll_path = NULL;
    qd_lex_stats *pstats = NULL; /* --pairs-collection's statistics */
    const char *pair_paths[MAX_PAIR_FILES];
    size_t npairs = 0;
    int json = 0, threads = 0, retrieval = 1, bm25_on = 1, c;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case OPT_MODEL: model_path = optarg; break;
        case OPT_DATA: data_dir = optarg; break;
        case OPT_PCOLL: pcoll_path = optarg; break;
        case OPT_PAIRS:
            if (npairs == MAX_PAIR_FILES) {
                fprintf(stderr, PROG ": at most %d --pairs files\n", MAX_PAIR_FILES);
                return 2;
            }
            pair_paths[npairs++] = optarg;
            break;
        case OPT_JSON: json = 1; break;
        case OPT_THREADS:
            if (parse_threads(optarg, &threads))
                return 2;
            break;
        case OPT_NORETR: retrieval = 0; break;
        case OPT_NOBM25: bm25_on = 0; break;
        case 'h': fputs(usage, stdout); return 0;
        default: fputs(usage, stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, PROG ": unexpected argument \"%s\" (see --help)\n", argv[optind]);
        return 2;
    }
    if (!model_path) {
        fprintf(stderr, PROG ": --model is required (see --help)\n");
        return 2;
    }
    char dir_buf[4096];
    if (!data_dir) {
        const char *root = getenv("QDUP_DATA");
        snprintf(dir_buf, sizeof dir_buf, "%s/quora", root && *root ? root : "../shared/data");
        data_dir = dir_buf;
    }
    pair_result *pr = qd_calloc(npairs + 1, sizeof *pr);
    if (!pr) {
        fprintf(stderr, PROG ": out of memory\n");
        return 1;
    }
    /* Keys: "test" and the base names, which must not collide. */
    snprintf(pr[0].key, sizeof pr[0].key, "test");
    for (size_t i = 0; i < npairs; i++) {
        char tmp[4096];
        snprintf(tmp, sizeof tmp, "%s", pair_paths[i]);
        snprintf(pr[i + 1].key, sizeof pr[i + 1].key, "%s", basename(tmp));
        static const char *const reserved[] = {"test", "valid", "retrieval", "bm25", "model",
                                               "seconds", "hybrid", "calibration", "lexical_only"};
        for (size_t r = 0; r < sizeof reserved / sizeof *reserved; r++)
            if (strcmp(pr[i + 1].key, reserved[r]) == 0) {
                fprintf(stderr, PROG ": --pairs %s: its base name \"%s\" is a key of the output "
                                "already; rename or link the file\n", pair_paths[i], reserved[r]);
                qd_free(pr);
                return 2;
            }
        for (size_t j = 0; j < i; j++)
            if (strcmp(pr[i + 1].key, pr[j + 1].key) == 0) {
                fprintf(stderr, PROG ": --pairs %s and %s share the base name \"%s\"\n",
                        pair_paths[j], pair_paths[i], pr[i + 1].key);
                qd_free(pr);
                return 2;
            }
    }
    progress_on = isatty(2);

    char valid_path[4200], test_path[4200], q_path[4200];
    snprintf(valid_path, sizeof valid_path, "%s/valid.tsv", data_dir);
    snprintf(test_path, sizeof test_path, "%s/test.tsv", data_dir);
    snprintf(q_path, sizeof q_path, "%s/questions.tsv", data_dir);

    int status = 1;
    char err[QD_ERRMSG_MAX];
    qd_model *m = NULL;
    qd_pairs *valid = NULL, *test = NULL;
    float *vs = NULL, *ts = NULL;
    questions qs = {0};
    queries q = {0};
    retr_result dense = {0}, bm25 = {0}, hybrid = {0}, lex_only = {0};
    qd_lex_stats *stats = NULL;
    calib_result valid_cal = {0};
    double t_start = qd_now();

    if (qd_model_load(model_path, &m, err, sizeof err) != 0) {
        fprintf(stderr, PROG ": %s\n", err);
        goto out;
    }
    /* The threshold comes from the validation split only. */
    if (score_file(m, valid_path, threads, &valid, &vs) != 0)
        goto out;
    double valid_acc;
    double thr = qd_pairs_best_threshold(vs, valid->dup, valid->n, &valid_acc);
    double valid_auc = qd_pairs_auc(vs, valid->dup, valid->n);
    if (score_file(m, test_path, threads, &test, &ts) != 0)
        goto out;
    pr[0].path = test_path;
    pr[0].n = test->n;
    pr[0].skipped = test->skipped;
    for (size_t i = 0; i < test->n; i++)
        pr[0].dups += test->dup[i];
    pr[0].acc07 = qd_pairs_accuracy_at(ts, test->dup, test->n, 0.7);
    pr[0].acc_thr = qd_pairs_accuracy_at(ts, test->dup, test->n, thr);
    pr[0].auc = qd_pairs_auc(ts, test->dup, test->n);
    /* The pair signals' statistics: those of the collection a store would hold
     * (questions.tsv), else of the validation and test questions. */
    if (load_questions(q_path, &qs) == 0) {
        if (qd_fit_stats(qs.text, qs.len, qs.n, &stats) != 0)
            goto nomem;
    } else if (retrieval) {
        goto out;
    } else {
        size_t n = 2 * (valid->n + test->n), k = 0;
        const char **t = qd_mallocarray(n, sizeof *t);
        size_t *l = qd_mallocarray(n, sizeof *l);
        if (t && l) {
            const qd_pairs *ps[2] = {valid, test};
            for (int f = 0; f < 2; f++)
                for (size_t i = 0; i < ps[f]->n; i++) {
                    t[k] = ps[f]->q1[i];
                    l[k++] = ps[f]->len1[i];
                    t[k] = ps[f]->q2[i];
                    l[k++] = ps[f]->len2[i];
                }
        }
        int src = t && l ? qd_fit_stats(t, l, n, &stats) : QD_ERR_NOMEM;
        qd_free(t);
        qd_free(l);
        if (src)
            goto nomem;
    }
    if (calibrate(m, stats, valid, vs, &valid_cal) != 0 ||
        calibrate(m, stats, test, ts, &pr[0].cal) != 0)
        goto nomem;
    if (pcoll_path) {
        questions pq;
        if (load_questions(pcoll_path, &pq) != 0)
            goto out;
        int src = qd_fit_stats(pq.text, pq.len, pq.n, &pstats);
        questions_free(&pq);
        if (src)
            goto nomem;
    }
    for (size_t i = 0; i < npairs; i++)
        if (eval_pair_file(m, pstats ? pstats : stats, pair_paths[i], threads, thr,
                           &pr[i + 1]) != 0)
            goto out;
    if (retrieval) {
        if (make_queries(test, test_path, &qs, &q) != 0)
            goto out;
        if (q.missing)
            fprintf(stderr, PROG ": warning: %zu of %zu query targets (question2) are not in "
                            "%s; they count as misses\n", q.missing, q.n, q_path);
        if (retrieve_dense(m, &qs, &q, threads, &dense, &hybrid, &lex_only) != 0 ||
            (bm25_on && retrieve_bm25(&qs, &q, threads, &bm25) != 0))
            goto out;
    }
    double seconds = qd_now() - t_start;
    const qd_model_hdr *h = qd_model_header(m);

    if (json) {
        json_t *o = json_object();
        if (!o)
            goto nomem;
        set_new(o, "model", json_pack("{s:s, s:s, s:I, s:I, s:I}", "path", model_path,
                                      "fingerprint", qd_model_fingerprint(m), "emb_dim",
                                      (json_int_t)h->emb_dim, "hidden", (json_int_t)h->hidden,
                                      "vocab", (json_int_t)h->vocab));
        set_new(o, "valid", json_pack("{s:f, s:f, s:f, s:I}", "threshold", thr,
                                      "acc_at_threshold", valid_acc, "auc", valid_auc, "pairs",
                                      (json_int_t)valid->n));
        for (size_t i = 0; i <= npairs; i++)
            set_new(o, pr[i].key, pair_json(&pr[i]));
        if (retrieval) {
            json_t *r = retr_json(&dense);
            QD_ASSERT(r);
            json_object_set_new(r, "index", json_string("Flat"));
            json_object_set_new(r, "questions", json_integer((json_int_t)qs.n));
            json_object_set_new(r, "targets_missing", json_integer((json_int_t)q.missing));
            set_new(o, "retrieval", r);
            const qd_model_scoring *sc = qd_model_get_scoring(m);
            json_t *hy = retr_json(&hybrid);
            QD_ASSERT(hy);
            json_object_set_new(hy, "fusion", json_real(sc->fusion));
            json_object_set_new(hy, "k1", json_real(sc->bm25.k1));
            json_object_set_new(hy, "b", json_real(sc->bm25.b));
            json_object_set_new(hy, "candidates", json_integer(sc->candidates));
            json_object_set_new(hy, "fitted", json_boolean(sc->fitted));
            set_new(o, "hybrid", hy);
            json_t *lo = retr_json(&lex_only);
            QD_ASSERT(lo);
            json_object_set_new(lo, "note", json_string("BM25 (k1, b of the model) re-ranking "
                                                         "the same candidates, a = 0"));
            set_new(o, "lexical_only", lo);
            if (bm25_on) {
                json_t *b = retr_json(&bm25);
                QD_ASSERT(b);
                json_object_set_new(b, "engine", json_string("SQLite FTS5 bm25(), unicode61"));
                json_object_set_new(b, "k1", json_real(QD_BM25_K1));
                json_object_set_new(b, "b", json_real(QD_BM25_B));
                set_new(o, "bm25", b);
            }
        }
        json_t *cal = json_object();
        if (!cal)
            goto nomem;
        set_new(cal, "head", json_pack("{s:s, s:b, s:f}", "form",
                                       qd_head_form(&qd_model_get_scoring(m)->head), "fitted",
                                       qd_model_get_scoring(m)->fitted, "min_p",
                                       (double)qd_model_get_scoring(m)->min_p));
        set_new(cal, "valid", calib_json(&valid_cal, 0));
        for (size_t i = 0; i <= npairs; i++)
            set_new(cal, pr[i].key, calib_json(&pr[i].cal, i == 0));
        set_new(o, "calibration", cal);
        json_object_set_new(o, "seconds", json_real(seconds));
        char *text = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(8));
        json_decref(o);
        if (!text)
            goto nomem;
        puts(text);
        free(text);
    } else {
        printf("model %s: fingerprint %s, E=%u H=%u, vocabulary %u\n", model_path,
               qd_model_fingerprint(m), h->emb_dim, h->hidden, h->vocab);
        printf("threshold from %s (%zu pairs): %.4f (valid accuracy %.4f, valid AUC %.4f)\n\n",
               valid_path, valid->n, thr, valid_acc, valid_auc);
        int w = 36; /* the name column fits the longest base name */
        for (size_t i = 0; i <= npairs; i++)
            if (strlen(pr[i].key) > (size_t)w)
                w = (int)strlen(pr[i].key);
        printf("%-*s %7s %8s %10s %8s\n", w, "pair metrics", "pairs", "acc@0.7", "acc@thr",
               "ROC AUC");
        for (size_t i = 0; i <= npairs; i++) {
            printf("%-*s %7zu %8.4f %10.4f %8.4f", w, pr[i].key, pr[i].n, pr[i].acc07,
                   pr[i].acc_thr, pr[i].auc);
            if (pr[i].map_groups)
                printf("  MAP %.4f over %zu qid1 groups", pr[i].map, pr[i].map_groups);
            if (pr[i].skipped)
                printf("  (%zu rows skipped)", pr[i].skipped);
            putchar('\n');
        }
        const qd_model_scoring *sc = qd_model_get_scoring(m);
        printf("\nP(duplicate): head %s (%s), operating point min_p %.4f\n",
               qd_head_form(&sc->head), sc->fitted ? "fitted on validation pairs"
                                                   : "the defaults: this model has none fitted",
               (double)sc->min_p);
        printf("%-*s %7s %7s %10s %7s %9s %8s\n", w, "calibration", "ECE", "Brier", "precision",
               "recall", "accuracy", "ROC AUC");
        printf("%-*s %7.4f %7.4f %10.4f %7.4f %9.4f %8.4f\n", w, "valid (fitted there)",
               valid_cal.ece, valid_cal.brier, valid_cal.at.precision, valid_cal.at.recall,
               valid_cal.at.accuracy, valid_cal.auc);
        for (size_t i = 0; i <= npairs; i++) {
            printf("%-*s %7.4f %7.4f %10.4f %7.4f %9.4f %8.4f", w, pr[i].key, pr[i].cal.ece,
                   pr[i].cal.brier, pr[i].cal.at.precision, pr[i].cal.at.recall,
                   pr[i].cal.at.accuracy, pr[i].cal.auc);
            if (pr[i].cal.map_groups)
                printf("  MAP %.4f", pr[i].cal.map);
            putchar('\n');
        }
        printf("\ntest: duplicate when p_duplicate >= min_p\n%8s %10s %7s %9s %8s\n", "min_p",
               "precision", "recall", "accuracy", "flagged");
        for (size_t k = 0; k < N_PR; k++) {
            const pr_point *t = &pr[0].cal.table[k];
            printf("%8.2f %10.4f %7.4f %9.4f %8zu\n", t->t, t->precision, t->recall,
                   t->accuracy, t->flagged);
        }
        if (retrieval) {
            printf("\nretrieval: %zu questions of %s indexed; %zu queries (question1 of each "
                   "duplicate pair of test.tsv, itself excluded)\n",
                   qs.n, q_path, q.n);
            printf("%-36s %9s %10s %8s %9s\n", "", "Recall@1", "Recall@10", "MRR@10", "seconds");
            printf("%-36s %9.4f %10.4f %8.4f %9.1f\n", "qdup (exact inner product, Flat)",
                   qd_eval_recall1(&dense.r), qd_eval_recall10(&dense.r),
                   qd_eval_mrr10(&dense.r), dense.seconds);
            char name[80];
            snprintf(name, sizeof name, "qdup hybrid (a %.2f, %u candidates)", (double)sc->fusion,
                     sc->candidates);
            printf("%-36s %9.4f %10.4f %8.4f %9.1f\n", name, qd_eval_recall1(&hybrid.r),
                   qd_eval_recall10(&hybrid.r), qd_eval_mrr10(&hybrid.r), hybrid.seconds);
            snprintf(name, sizeof name, "BM25 k1 %.2f b %.2f over candidates", (double)sc->bm25.k1,
                     (double)sc->bm25.b);
            printf("%-36s %9.4f %10.4f %8.4f %9.1f\n", name, qd_eval_recall1(&lex_only.r),
                   qd_eval_recall10(&lex_only.r), qd_eval_mrr10(&lex_only.r), lex_only.seconds);
            if (bm25_on) {
                printf("%-36s %9.4f %10.4f %8.4f %9.1f\n", "BM25 (SQLite FTS5)",
                       qd_eval_recall1(&bm25.r), qd_eval_recall10(&bm25.r),
                       qd_eval_mrr10(&bm25.r), bm25.seconds);
                printf("BM25: FTS5 bm25() with its fixed k1 = %.1f, b = %.2f; unicode61 "
                       "tokenizer; query = OR of the question's distinct terms, each quoted\n",
                       QD_BM25_K1, QD_BM25_B);
            }
        }
        printf("(%.1f s)\n", seconds);
    }
    status = 0;
    goto out;
nomem:
    fprintf(stderr, PROG ": out of memory\n");
out:
    qd_lex_stats_free(stats);
    qd_lex_stats_free(pstats);
    queries_free(&q);
    questions_free(&qs);
    qd_free(vs);
    qd_free(ts);
    qd_pairs_free(valid);
    qd_pairs_free(test);
    qd_model_free(m);
    qd_free(pr);
    return status;
}
