/*
 * test_eval.c - qdup-eval and qdup-bench: the retrieval metrics on hand-made rankings,
 * the BM25 query builder against odd input (checked by running every query through a
 * real FTS5 table), the quoted flavour of pair files, and the two programs end to end
 * on a small made-up data set with the committed fixture model.
 *
 * The end-to-end tests check the programs' numbers against independent computations
 * made here: the pair metrics through the library on the same files, dense retrieval
 * by brute force over vectors encoded in this process, and BM25 on data built so that
 * the answer is known (each query shares one rare word with its duplicate only).
 */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "eval_impl.h"
#include "qdup/common.h"
#include "qdup/model.h"
#include "qdup/pairs.h"
#include "qdup/train.h"
#include "testutil.h"

/* ------------------------------------------------------------------ metrics ---- */

static void test_rank(void **state)
{
    (void)state;
    const int64_t ids[] = {7, 3, -1, 9, 4, 3};
    /* Without exclusion: the position among the real entries. */
    assert_int_equal(qd_eval_rank(ids, 6, -5, 7), 1);
    assert_int_equal(qd_eval_rank(ids, 6, -5, 9), 3); /* the -1 slot does not count */
    /* The query itself is taken out wherever it is, ranks close up. */
    assert_int_equal(qd_eval_rank(ids, 6, 7, 3), 1);
    assert_int_equal(qd_eval_rank(ids, 6, 7, 4), 3);
    assert_int_equal(qd_eval_rank(ids, 6, 3, 4), 3); /* 3 appears twice: both out */
    /* Absent, or only beyond k. */
    assert_int_equal(qd_eval_rank(ids, 6, 7, 42), 0);
    assert_int_equal(qd_eval_rank(ids, 3, 7, 9), 0);
    /* A target equal to the query is never found. */
    assert_int_equal(qd_eval_rank(ids, 6, 7, 7), 0);
    assert_int_equal(qd_eval_rank(ids, 0, 7, 7), 0);
}

static void test_retrieval_metrics(void **state)
{
    (void)state;
    qd_eval_retr r = {0};
    assert_true(qd_eval_recall1(&r) == 0 && qd_eval_recall10(&r) == 0 && qd_eval_mrr10(&r) == 0);
    const size_t ranks[] = {1, 3, 0, 10, 11, 2};
    for (size_t i = 0; i < 6; i++)
        qd_eval_retr_add(&r, ranks[i]);
    assert_int_equal(r.queries, 6);
    /* By hand: first place once; ranks 1, 3, 10, 2 within ten; 1 + 1/3 + 1/10 + 1/2. */
    qt_assert_near(qd_eval_recall1(&r), 1.0 / 6, 1e-12);
    qt_assert_near(qd_eval_recall10(&r), 4.0 / 6, 1e-12);
    qt_assert_near(qd_eval_mrr10(&r), (1 + 1.0 / 3 + 0.1 + 0.5) / 6, 1e-12);
}

/* ------------------------------------------------------------- BM25 query ---- */

static char *query_of(const char *s, size_t len, size_t *nterms)
{
    char *q;
    assert_int_equal(qd_bm25_query(s, len, &q, nterms), 0);
    return q;
}

static void test_bm25_query_text(void **state)
{
    (void)state;
    size_t n;
    char *q = query_of("What is C++?", 12, &n);
    assert_string_equal(q, "\"What\" OR \"is\" OR \"C\"");
    assert_int_equal(n, 3);
    qd_free(q);
    /* Repeats go, whatever their case or accents; the first spelling is kept. */
    q = query_of("The the THE café Cafe CAFÉ naïve naive", strlen("The the THE café Cafe CAFÉ naïve naive"), &n);
    assert_string_equal(q, "\"The\" OR \"café\" OR \"naïve\"");
    assert_int_equal(n, 3);
    qd_free(q);
    /* FTS5 syntax in the text is only text. */
    const char *odd = "AND OR NOT NEAR \"quoted\" (paren) col:umn star* ^caret a-b +plus {x}";
    q = query_of(odd, strlen(odd), &n);
    assert_string_equal(q, "\"AND\" OR \"OR\" OR \"NOT\" OR \"NEAR\" OR \"quoted\" OR \"paren\" OR "
                           "\"col\" OR \"umn\" OR \"star\" OR \"caret\" OR \"a\" OR \"b\" OR "
                           "\"plus\" OR \"x\"");
    qd_free(q);
    /* Nothing to search for. */
    q = query_of("?!... -- \"\" ()", 14, &n);
    assert_string_equal(q, "");
    assert_int_equal(n, 0);
    qd_free(q);
    q = query_of("", 0, &n);
    assert_string_equal(q, "");
    qd_free(q);
    /* NUL bytes and invalid UTF-8 separate words and never reach the query. */
    q = query_of("ab\0cd\xff" "ef\xc3", 9, &n);
    assert_string_equal(q, "\"ab\" OR \"cd\" OR \"ef\"");
    qd_free(q);
    /* Letters of other scripts and digits are words; emoji and symbols are not. */
    q = query_of("東京 2024 😀 Ωmega €5", strlen("東京 2024 😀 Ωmega €5"), &n);
    assert_string_equal(q, "\"東京\" OR \"2024\" OR \"Ωmega\" OR \"5\"");
    qd_free(q);
}

static void test_bm25_query_nomem(void **state)
{
    (void)state;
    const char *s = "one two three four five six seven eight nine ten one two eleven";
    int failed = 0;
    for (long k = 0;; k++) {
        char *q = NULL;
        qd_alloc_fail_after(k, 0);
        int rc = qd_bm25_query(s, strlen(s), &q, NULL);
        qd_alloc_fail_after(-1, 0);
        if (rc == 0) {
            assert_non_null(q);
            qd_free(q);
            break;
        }
        assert_int_equal(rc, QD_ERR_NOMEM);
        assert_null(q);
        failed++;
    }
    assert_true(failed > 2); /* the loop did walk through several allocations */
}

/* A tiny FTS5 index of docs[i] under id 100 + i. */
static qd_bm25 *small_index(const char *const *docs, size_t n)
{
    char err[QD_ERRMSG_MAX];
    qd_bm25 *b;
    assert_int_equal(qd_bm25_open(&b, err, sizeof err), 0);
    int64_t ids[64];
    size_t lens[64];
    assert_true(n <= 64);
    for (size_t i = 0; i < n; i++) {
        ids[i] = 100 + (int64_t)i;
        lens[i] = strlen(docs[i]);
    }
    assert_int_equal(qd_bm25_add(b, ids, docs, lens, n), 0);
    return b;
}

static void test_bm25_search(void **state)
{
    (void)state;
    static const char *const docs[] = {
        "How do I learn Python quickly?",
        "What is the best way to learn Python?",
        "Where can I cook rice?",
        "Is NOT a keyword in \"FTS5\" (queries)?",
        "Café au lait: how is it made?",
        "What is the capital of France?",
    };
    qd_bm25 *b = small_index(docs, 6);
    int64_t ids[8];
    double sc[8];
    size_t found;
    /* A document finds itself first, and its closest relative next. */
    assert_int_equal(qd_bm25_search(b, docs[0], strlen(docs[0]), 8, ids, sc, &found), 0);
    assert_true(found >= 2);
    assert_int_equal(ids[0], 100);
    assert_int_equal(ids[1], 101);
    assert_true(sc[0] <= sc[1]); /* bm25() is lower for better matches */
    assert_int_equal(qd_eval_rank(ids, found, 100, 101), 1);
    /* k limits the list. */
    assert_int_equal(qd_bm25_search(b, docs[0], strlen(docs[0]), 1, ids, NULL, &found), 0);
    assert_int_equal(found, 1);
    /* Keywords and punctuation are searched as words: "NOT" finds document 3. */
    const char *q = "NOT (queries) \"FTS5\" OR";
    assert_int_equal(qd_bm25_search(b, q, strlen(q), 8, ids, NULL, &found), 0);
    assert_true(found >= 1);
    assert_int_equal(ids[0], 103);
    /* Case and accents are folded by unicode61 on both sides. */
    q = "CAFE";
    assert_int_equal(qd_bm25_search(b, q, strlen(q), 8, ids, NULL, &found), 0);
    assert_int_equal(found, 1);
    assert_int_equal(ids[0], 104);
    /* No terms, no results, no error. */
    assert_int_equal(qd_bm25_search(b, "?!", 2, 8, ids, NULL, &found), 0);
    assert_int_equal(found, 0);
    qd_bm25_close(b);
    qd_bm25_close(NULL);
}

/* Any bytes at all make a valid query: random strings drawn from an alphabet rich in
 * FTS5 syntax, bytes that are not UTF-8, and a question of 10,000 distinct terms. */
static void test_bm25_any_bytes(void **state)
{
    (void)state;
    static const char *const docs[] = {"alpha beta", "gamma delta AND", "NEAR NOT OR"};
    qd_bm25 *b = small_index(docs, 3);
    static const char alphabet[] = "aZ9 \"'()*^:+-{}.,;ORANDNOTNEAR\t\n\0\xc3\xa9\xff\xe2\x82";
    uint64_t rng = 12345;
    int64_t ids[4];
    size_t found;
    for (int t = 0; t < 500; t++) {
        char s[64];
        size_t n = qt_rand(&rng) % sizeof s;
        for (size_t i = 0; i < n; i++)
            s[i] = alphabet[qt_rand(&rng) % (sizeof alphabet - 1)];
        int rc = qd_bm25_search(b, s, n, 4, ids, NULL, &found);
        if (rc != 0)
            fail_msg("query %d failed: %s", t, qd_bm25_errmsg(b));
    }
    size_t cap = 10000 * 8;
    char *big = malloc(cap);
    assert_non_null(big);
    size_t len = (size_t)snprintf(big, cap, "alpha ");
    for (int i = 1; i < 10000; i++)
        len += (size_t)snprintf(big + len, cap - len, "w%d ", i);
    size_t nterms;
    char *q = query_of(big, len, &nterms);
    assert_int_equal(nterms, 10000);
    qd_free(q);
    assert_int_equal(qd_bm25_search(b, big, len, 4, ids, NULL, &found), 0);
    assert_int_equal(found, 1);
    assert_int_equal(ids[0], 100);
    free(big);
    qd_bm25_close(b);
}

/* ------------------------------------------------------------ quoted pairs ---- */

#define WARNED_MAX 1024

/* Appends a loader warning to the WARNED_MAX-byte buffer arg, "|" after each. */
static void collect_warning(const char *msg, void *arg)
{
    char *buf = arg;
    size_t n = strlen(buf);
    snprintf(buf + n, WARNED_MAX - n, "%s|", msg);
}

/* Writes text to name in the scratch directory and loads it as pairs, collecting the
 * warnings into warned (WARNED_MAX bytes). */
static qd_pairs *load_pairs_text(const char *name, const char *text, size_t len, char *warned)
{
    const char *path = qt_path(qt_tmp_dir(), name);
    qt_write_file(path, text, len);
    char err[QD_ERRMSG_MAX];
    qd_pairs *p;
    warned[0] = '\0';
    int rc = qd_pairs_load(path, collect_warning, warned, &p, err, sizeof err);
    if (rc)
        fail_msg("%s", err);
    return p;
}

static const char quoted_file[] =
    "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
    "0\t1\t2\tplain one?\t\"He said \"\"hi\"\" to me?\"\t0\n"
    "1\t3\t4\t\"spans\r\nlines?\"\tsecond\t1\r\n"
    "2\t5\t6\t\"broken \"quote\tx\t0\n"
    "3\t7\t8\tafter broken\t\"ok\"\t1\n"
    "4\t9\t10\tunquoted \"inner\" quote\tz\t0\n"
    "5\t11\t12\t\"\"\t\"empty q1\"\t0\n"
    "6\t13\t14\t\"never closed\tq\t1\n"
    "7\t15\t16\tlast\tone\t0\n";

static void test_pairs_quoted(void **state)
{
    (void)state;
    char warned[WARNED_MAX];
    qd_pairs *p = load_pairs_text("quoted.tsv", quoted_file, sizeof quoted_file - 1, warned);
    assert_int_equal(p->n, 4);
    assert_string_equal(p->q1[0], "plain one?");
    assert_string_equal(p->q2[0], "He said \"hi\" to me?");
    assert_int_equal(p->len2[0], strlen("He said \"hi\" to me?"));
    assert_string_equal(p->q1[1], "spans\nlines?"); /* CR LF inside a field becomes LF */
    assert_string_equal(p->q2[1], "second");        /* the row's CR LF ends the row */
    assert_int_equal(p->dup[1], 1);
    assert_int_equal(p->qid1[1], 3);
    assert_string_equal(p->q1[2], "after broken");
    assert_string_equal(p->q2[2], "ok");
    assert_int_equal(p->qid2[2], 8);
    /* The unterminated quote costs its own row only: the next line is read. */
    assert_string_equal(p->q1[3], "last");
    assert_int_equal(p->qid1[3], 15);
    assert_int_equal(p->skipped, 4);
    /* Each skipped row is named by the line it starts on (row 1 spans lines 3-4). */
    char *w5 = strstr(warned, "quoted.tsv:5: text after a closing quote");
    char *w7 = strstr(warned, "quoted.tsv:7: quote inside an unquoted field");
    char *w8 = strstr(warned, "quoted.tsv:8: empty question");
    char *w9 = strstr(warned, "quoted.tsv:9: quoted field");
    if (!w5 || !w7 || !w8 || !w9)
        fail_msg("warnings: %s", warned);
    qd_pairs_free(p);
}

static void test_pairs_plain_stays_plain(void **state)
{
    (void)state;
    char warned[WARNED_MAX];
    /* The first quote is inside a field: the file is plain, later quotes are text. */
    static const char a[] = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
                            "0\t1\t2\tuse \"&\" here\tx\t0\n"
                            "1\t3\t4\t\"quoted\"\t\"a\tb\"\t1\n";
    qd_pairs *p = load_pairs_text("plain_a.tsv", a, sizeof a - 1, warned);
    assert_int_equal(p->n, 1);
    assert_string_equal(p->q1[0], "use \"&\" here");
    assert_int_equal(p->skipped, 1); /* read plain, "a<TAB>b" gives 7 fields */
    qd_pairs_free(p);
    /* The first quote opens a field but the row is not well-formed quoted: plain. */
    static const char b[] = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
                            "0\t1\t2\t\"Sapiens\" is good?\tx\t0\n"
                            "1\t3\t4\t\"quoted\"\ty\t1\n";
    p = load_pairs_text("plain_b.tsv", b, sizeof b - 1, warned);
    assert_int_equal(p->n, 2);
    assert_int_equal(p->skipped, 0);
    assert_string_equal(p->q1[0], "\"Sapiens\" is good?");
    assert_string_equal(p->q1[1], "\"quoted\"");
    qd_pairs_free(p);
}

static void test_pairs_quoted_nomem(void **state)
{
    (void)state;
    const char *path = qt_path(qt_tmp_dir(), "quoted_nomem.tsv");
    qt_write_file(path, quoted_file, sizeof quoted_file - 1);
    int failed = 0;
    for (long k = 0;; k++) {
        char err[QD_ERRMSG_MAX];
        qd_pairs *p = NULL;
        qd_alloc_fail_after(k, 0);
        int rc = qd_pairs_load(path, NULL, NULL, &p, err, sizeof err);
        qd_alloc_fail_after(-1, 0);
        if (rc == 0) {
            assert_int_equal(p->n, 4);
            qd_pairs_free(p);
            break;
        }
        assert_int_equal(rc, QD_ERR_NOMEM);
        assert_null(p);
        failed++;
    }
    assert_true(failed > 5);
}

/* The shared files: the original release is quoted (multi-line records included), the
 * splits are plain and keep their leading quotes. */
static void test_pairs_real_files(void **state)
{
    (void)state;
    char raw[4096], train[4096], err[QD_ERRMSG_MAX];
    snprintf(raw, sizeof raw, "%s/quora/raw/quora_duplicate_questions.head10k.tsv",
             qt_data_dir());
    snprintf(train, sizeof train, "%s/quora/train.tsv", qt_data_dir());
    struct stat st;
    if (stat(raw, &st) != 0 || stat(train, &st) != 0) {
        printf("# shared data not found under %s: skipped\n", qt_data_dir());
        skip();
    }
    qd_pairs *p;
    assert_int_equal(qd_pairs_load(raw, NULL, NULL, &p, err, sizeof err), 0);
    /* The counts the data README gives. */
    assert_int_equal(p->n, 9998);
    assert_int_equal(p->skipped, 0);
    size_t dups = 0, found = 0;
    for (size_t i = 0; i < p->n; i++) {
        dups += p->dup[i];
        const char *t = p->qid1[i] == 4637 ? p->q1[i] : p->qid2[i] == 4637 ? p->q2[i] : NULL;
        if (t) {
            found = 1;
            size_t n = strlen(t);
            assert_true(n > 11 && strcmp(t + n - 11, "Ahmedabad?\n") == 0);
        }
        assert_null(strchr(p->q1[i], '\r'));
    }
    assert_int_equal(dups, 3710);
    assert_true(found);
    qd_pairs_free(p);

    assert_int_equal(qd_pairs_load(train, NULL, NULL, &p, err, sizeof err), 0);
    assert_int_equal(p->n, 30288);
    assert_int_equal(p->skipped, 0);
    size_t leading = 0;
    for (size_t i = 0; i < p->n; i++)
        leading += p->q1[i][0] == '"';
    assert_true(leading > 0); /* quotes are kept as text in the plain files */
    qd_pairs_free(p);
}

/* ------------------------------------------------------------- the programs ---- */

/* Runs a shell command line; stdout into *out (malloc'd), stderr into *errout. Returns
 * the exit status (or -1 if it did not exit). */
static int run(const char *cmd, char **out, char **errout)
{
    const char *so = qt_path(qt_tmp_dir(), "stdout.txt");
    const char *se = qt_path(qt_tmp_dir(), "stderr.txt");
    char line[8192];
    snprintf(line, sizeof line, "%s >'%s' 2>'%s'", cmd, so, se);
    int st = system(line);
    *out = qt_read_file(so, NULL);
    *errout = qt_read_file(se, NULL);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* A small Quora-style data set: NPAIR query/duplicate pairs that share one rare word
 * each ("uniq<k>") and nothing else, and filler questions that all share the common
 * words. Words w2..w39 are the fixture model's vocabulary. */
#define NPAIR 6
#define NFILL 14
#define NQUEST (2 * NPAIR + NFILL)

/* Question i of the set (0 <= i < NQUEST): its text into buf, its qid returned. Pair k
 * is questions 2k (the query) and 2k + 1 (its duplicate). */
static int64_t data_question(int i, char *buf, size_t n)
{
    if (i < 2 * NPAIR) {
        int k = i / 2;
        if (i % 2 == 0)
            snprintf(buf, n, "w2 w%d uniq%d w3?", 10 + k, k);
        else
            snprintf(buf, n, "uniq%d w%d w20", k, 30 - k);
        return i + 1;
    }
    int f = i - 2 * NPAIR;
    snprintf(buf, n, "w2 w3 w20 w%d w%d", 4 + f % 5, 21 + f);
    return 100 + f;
}

static void make_data(const char *dir)
{
    char path[3][4200];
    mkdir(dir, 0755);
    snprintf(path[0], sizeof path[0], "%s/questions.tsv", dir);
    snprintf(path[1], sizeof path[1], "%s/test.tsv", dir);
    snprintf(path[2], sizeof path[2], "%s/valid.tsv", dir);
    FILE *q = fopen(path[0], "w"), *t = fopen(path[1], "w"), *v = fopen(path[2], "w");
    assert_true(q && t && v);
    fprintf(q, "qid\tquestion\n");
    fprintf(t, "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n");
    fprintf(v, "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n");
    char a[64], b[64];
    for (int i = 0; i < NQUEST; i++) {
        int64_t id = data_question(i, a, sizeof a);
        fprintf(q, "%lld\t%s\n", (long long)id, a);
    }
    for (int k = 0; k < NPAIR; k++) {
        int64_t ia = data_question(2 * k, a, sizeof a), ib = data_question(2 * k + 1, b, sizeof b);
        fprintf(t, "%d\t%lld\t%lld\t%s\t%s\t1\n", k, (long long)ia, (long long)ib, a, b);
    }
    for (int f = 0; f < NFILL; f++) {
        int64_t id = data_question(2 * NPAIR + f, a, sizeof a);
        if (f % 2)
            fprintf(t, "%d\t%lld\t%d\t%s\tw%d w%d\t0\n", 50 + f, (long long)id, 200 + f, a,
                    5 + f, 7 + f);
        fprintf(v, "%d\t%d\t%d\t%s\tw2 w%d w%d\t%d\n", f, 300 + f, 400 + f, a, 4 + f, 21 + f,
                f % 3 == 0);
    }
    fclose(q);
    fclose(t);
    fclose(v);
}

static double jget(json_t *root, const char *obj, const char *key)
{
    json_t *o = json_object_get(root, obj);
    json_t *x = o ? json_object_get(o, key) : NULL;
    if (!json_is_number(x))
        fail_msg("JSON lacks %s.%s", obj, key);
    return json_number_value(x);
}

/* Pair metrics as qdup-eval should compute them: threshold from valid, applied to f. */
static void expected_pairs(const qd_model *m, const char *valid, const char *f, double *acc07,
                           double *acc_thr, double *auc)
{
    char err[QD_ERRMSG_MAX];
    qd_pairs *v, *t;
    assert_int_equal(qd_pairs_load(valid, NULL, NULL, &v, err, sizeof err), 0);
    assert_int_equal(qd_pairs_load(f, NULL, NULL, &t, err, sizeof err), 0);
    float *vs = calloc(v->n, sizeof *vs), *ts = calloc(t->n, sizeof *ts);
    assert_int_equal(qd_score_pairs(m, v, 1, vs), 0);
    assert_int_equal(qd_score_pairs(m, t, 1, ts), 0);
    double va;
    double thr = qd_pairs_best_threshold(vs, v->dup, v->n, &va);
    *acc07 = qd_pairs_accuracy_at(ts, t->dup, t->n, 0.7);
    *acc_thr = qd_pairs_accuracy_at(ts, t->dup, t->n, thr);
    *auc = qd_pairs_auc(ts, t->dup, t->n);
    free(vs);
    free(ts);
    qd_pairs_free(v);
    qd_pairs_free(t);
}

/* Dense retrieval by brute force: each query against every other question. */
static void expected_dense(const qd_model *m, qd_eval_retr *r)
{
    char texts[NQUEST][64];
    const char *tp[NQUEST];
    size_t lens[NQUEST];
    for (int i = 0; i < NQUEST; i++) {
        data_question(i, texts[i], sizeof texts[i]);
        tp[i] = texts[i];
        lens[i] = strlen(texts[i]);
    }
    size_t H = (size_t)qd_model_dim(m);
    float *v = calloc(NQUEST * H, sizeof *v);
    qd_enc_ws *ws = qd_enc_ws_new();
    assert_int_equal(qd_enc_texts(m, ws, tp, lens, NQUEST, v), 0);
    qd_enc_ws_free(ws);
    memset(r, 0, sizeof *r);
    for (size_t k = 0; k < NPAIR; k++) {
        const float *qv = v + 2 * k * H;
        double target = 0;
        for (size_t j = 0; j < H; j++)
            target += (double)qv[j] * v[(2 * k + 1) * H + j];
        size_t rank = 1;
        for (size_t i = 0; i < NQUEST; i++) {
            if (i == 2 * k || i == 2 * k + 1)
                continue;
            double s = 0;
            for (size_t j = 0; j < H; j++)
                s += (double)qv[j] * v[i * H + j];
            rank += s > target;
        }
        qd_eval_retr_add(r, rank <= 10 ? rank : 0);
    }
    free(v);
}

static void test_eval_program(void **state)
{
    (void)state;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/data", qt_tmp_dir());
    make_data(dir);
    char model[4096], cmd[20000], *out, *err;
    snprintf(model, sizeof model, "%s/fwd_plain.qdm", qt_fixtures_dir());
    /* An extra pair file in the original release's quoted format. */
    char extra[4096];
    snprintf(extra, sizeof extra, "%s/extra_quoted.tsv", qt_tmp_dir());
    qt_write_file(extra, quoted_file, sizeof quoted_file - 1);

    snprintf(cmd, sizeof cmd, "'%s/qdup-eval' --model '%s' --data '%s' --pairs '%s' --json "
             "--threads 2", qt_bin_dir(), model, dir, extra);
    int st = run(cmd, &out, &err);
    if (st != 0)
        fail_msg("qdup-eval exited %d: %s", st, err);
    json_error_t je;
    json_t *root = json_loads(out, 0, &je);
    if (!root)
        fail_msg("not one JSON object (%s): %s", je.text, out);

    char emsg[QD_ERRMSG_MAX];
    qd_model *m;
    assert_int_equal(qd_model_load(model, &m, emsg, sizeof emsg), 0);
    double a07, athr, auc;
    expected_pairs(m, qt_path(dir, "valid.tsv"), qt_path(dir, "test.tsv"), &a07, &athr, &auc);
    qt_assert_near(jget(root, "test", "acc_at_0_7"), a07, 1e-5);
    qt_assert_near(jget(root, "test", "acc_at_valid_threshold"), athr, 1e-5);
    qt_assert_near(jget(root, "test", "auc"), auc, 1e-5);
    assert_int_equal((int)jget(root, "test", "pairs"), NPAIR + NFILL / 2);
    expected_pairs(m, qt_path(dir, "valid.tsv"), extra, &a07, &athr, &auc);
    qt_assert_near(jget(root, "extra_quoted.tsv", "auc"), auc, 1e-5);
    qt_assert_near(jget(root, "extra_quoted.tsv", "acc_at_valid_threshold"), athr, 1e-5);
    assert_int_equal((int)jget(root, "extra_quoted.tsv", "pairs"), 4);

    qd_eval_retr r;
    expected_dense(m, &r);
    printf("# brute force: Recall@1 %.3f, Recall@10 %.3f, MRR@10 %.3f\n", qd_eval_recall1(&r),
           qd_eval_recall10(&r), qd_eval_mrr10(&r));
    assert_int_equal((int)jget(root, "retrieval", "queries"), NPAIR);
    qt_assert_near(jget(root, "retrieval", "recall_at_1"), qd_eval_recall1(&r), 1e-6);
    qt_assert_near(jget(root, "retrieval", "recall_at_10"), qd_eval_recall10(&r), 1e-6);
    qt_assert_near(jget(root, "retrieval", "mrr_at_10"), qd_eval_mrr10(&r), 1e-6);
    /* BM25 finds every duplicate first through its one rare shared word. */
    qt_assert_near(jget(root, "bm25", "recall_at_1"), 1.0, 1e-9);
    qt_assert_near(jget(root, "bm25", "mrr_at_10"), 1.0, 1e-9);
    assert_string_equal(json_string_value(json_object_get(json_object_get(root, "model"),
                                                          "fingerprint")),
                        qd_model_fingerprint(m));
    json_decref(root);
    free(out);
    free(err);

    /* --no-bm25 leaves the dense numbers as they were and drops the baseline. */
    snprintf(cmd, sizeof cmd, "'%s/qdup-eval' --model '%s' --data '%s' --no-bm25 --json",
             qt_bin_dir(), model, dir);
    assert_int_equal(run(cmd, &out, &err), 0);
    root = json_loads(out, 0, &je);
    assert_non_null(root);
    assert_null(json_object_get(root, "bm25"));
    qt_assert_near(jget(root, "retrieval", "mrr_at_10"), qd_eval_mrr10(&r), 1e-6);
    json_decref(root);
    free(out);
    free(err);

    /* The human-readable form names the same things. */
    snprintf(cmd, sizeof cmd, "'%s/qdup-eval' --model '%s' --data '%s'", qt_bin_dir(), model,
             dir);
    assert_int_equal(run(cmd, &out, &err), 0);
    assert_non_null(strstr(out, "Recall@1"));
    assert_non_null(strstr(out, "BM25"));
    assert_non_null(strstr(out, "k1 = 1.2"));
    free(out);
    free(err);
    qd_model_free(m);
}

static void test_eval_errors(void **state)
{
    (void)state;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/data_err", qt_tmp_dir());
    make_data(dir);
    char model[4096], cmd[20000], *out, *err;
    snprintf(model, sizeof model, "%s/fwd_plain.qdm", qt_fixtures_dir());
    const char *bin = qt_bin_dir();

    snprintf(cmd, sizeof cmd, "'%s/qdup-eval' --help", bin);
    assert_int_equal(run(cmd, &out, &err), 0);
    assert_non_null(strstr(out, "usage: qdup-eval"));
    free(out), free(err);

    snprintf(cmd, sizeof cmd, "'%s/qdup-eval' --data '%s'", bin, dir);
    assert_int_equal(run(cmd, &out, &err), 2);
    assert_non_null(strstr(err, "--model"));
    free(out), free(err);

    snprintf(cmd, sizeof cmd, "'%s/qdup-eval' --model '%s' --threads x", bin, model);
    assert_int_equal(run(cmd, &out, &err), 2);
    free(out), free(err);

    snprintf(cmd, sizeof cmd, "'%s/qdup-eval' --model '%s/nope.qdm' --data '%s'", bin, dir, dir);
    assert_int_equal(run(cmd, &out, &err), 1);
    assert_non_null(strstr(err, "nope.qdm"));
    free(out), free(err);

    /* A missing pair file is named. */
    snprintf(cmd, sizeof cmd, "'%s/qdup-eval' --model '%s' --data '%s' --pairs '%s/none.tsv'",
             bin, model, dir, dir);
    assert_int_equal(run(cmd, &out, &err), 1);
    assert_non_null(strstr(err, "none.tsv"));
    free(out), free(err);

    /* Two --pairs files with one base name would share a JSON key. */
    snprintf(cmd, sizeof cmd, "'%s/qdup-eval' --model '%s' --data '%s' --pairs '%s/valid.tsv' "
             "--pairs './valid.tsv'", bin, model, dir, dir);
    assert_int_equal(run(cmd, &out, &err), 2);
    assert_non_null(strstr(err, "valid.tsv"));
    free(out), free(err);

    /* Without questions.tsv: the pair metrics are computed, then the missing file named. */
    assert_int_equal(remove(qt_path(dir, "questions.tsv")), 0);
    snprintf(cmd, sizeof cmd, "'%s/qdup-eval' --model '%s' --data '%s'", bin, model, dir);
    assert_int_equal(run(cmd, &out, &err), 1);
    assert_non_null(strstr(err, "questions.tsv"));
    free(out), free(err);
    snprintf(cmd, sizeof cmd, "'%s/qdup-eval' --model '%s' --data '%s' --no-retrieval --json",
             bin, model, dir);
    assert_int_equal(run(cmd, &out, &err), 0);
    json_t *root = json_loads(out, 0, NULL);
    assert_non_null(root);
    assert_non_null(json_object_get(root, "test"));
    assert_null(json_object_get(root, "retrieval"));
    json_decref(root);
    free(out), free(err);
}

/* The last line of s (without its newline) into buf. */
static void last_line(const char *s, char *buf, size_t n)
{
    size_t len = strlen(s);
    while (len > 0 && s[len - 1] == '\n')
        len--;
    size_t start = len;
    while (start > 0 && s[start - 1] != '\n')
        start--;
    snprintf(buf, n, "%.*s", (int)(len - start), s + start);
}

static void test_bench_encode(void **state)
{
    (void)state;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/data_bench", qt_tmp_dir());
    make_data(dir);
    char model[4096], cmd[20000], last[256], *out, *err;
    snprintf(model, sizeof model, "%s/fwd_plain.qdm", qt_fixtures_dir());
    const char *bin = qt_bin_dir();

    snprintf(cmd, sizeof cmd, "'%s/qdup-bench' encode --model '%s' --input '%s' --runs 1 "
             "--no-torch", bin, model, qt_path(dir, "questions.tsv"));
    assert_int_equal(run(cmd, &out, &err), 0);
    last_line(out, last, sizeof last);
    double qps;
    assert_int_equal(sscanf(last, "questions_per_second: %lf", &qps), 1);
    assert_true(qps > 0);
    assert_non_null(strstr(out, "26 questions"));
    free(out), free(err);

    /* No interpreter: said, and the C result still printed, with success. */
    snprintf(cmd, sizeof cmd, "'%s/qdup-bench' encode --model '%s' --input '%s' --runs 1 "
             "--python /nonexistent/python3", bin, model, qt_path(dir, "questions.tsv"));
    assert_int_equal(run(cmd, &out, &err), 0);
    assert_non_null(strstr(err, "/nonexistent/python3"));
    last_line(out, last, sizeof last);
    assert_int_equal(strncmp(last, "questions_per_second: ", 22), 0);
    free(out), free(err);

    /* A reference script that fails: the C result is printed, and the exit status says
     * the comparison did not happen. */
    snprintf(cmd, sizeof cmd, "'%s/qdup-bench' encode --model '%s' --input '%s' --runs 1 "
             "--python /bin/sh --torch-script /dev/null", bin, model,
             qt_path(dir, "questions.tsv"));
    assert_int_equal(run(cmd, &out, &err), 1);
    last_line(out, last, sizeof last);
    assert_int_equal(strncmp(last, "questions_per_second: ", 22), 0);
    assert_non_null(strstr(err, "RESULT"));
    free(out), free(err);

    /* Errors: no command, options of the other command, a missing dump. */
    snprintf(cmd, sizeof cmd, "'%s/qdup-bench'", bin);
    assert_int_equal(run(cmd, &out, &err), 2);
    free(out), free(err);
    snprintf(cmd, sizeof cmd, "'%s/qdup-bench' encode --model '%s' --input x --epochs 2", bin,
             model);
    assert_int_equal(run(cmd, &out, &err), 2);
    assert_non_null(strstr(err, "--epochs"));
    free(out), free(err);
    snprintf(cmd, sizeof cmd, "'%s/qdup-bench' encode --model '%s' --input '%s/none.tsv'", bin,
             model, dir);
    assert_int_equal(run(cmd, &out, &err), 1);
    assert_non_null(strstr(err, "none.tsv"));
    free(out), free(err);
    snprintf(cmd, sizeof cmd, "'%s/qdup-bench' --help", bin);
    assert_int_equal(run(cmd, &out, &err), 0);
    assert_non_null(strstr(out, "questions_per_second"));
    free(out), free(err);
}

/* qdup-bench search over an exact store: every query's own top k, whether searched one
 * at a time or several per call (a mix-up of the batch's results would cost recall). */
static void test_bench_search(void **state)
{
    (void)state;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/data_bsearch", qt_tmp_dir());
    make_data(dir);
    char model[4096], db[4200], cmd[20000], last[512], *out, *err;
    snprintf(model, sizeof model, "%s/fwd_plain.qdm", qt_fixtures_dir());
    snprintf(db, sizeof db, "%s/s.db", dir);
    const char *bin = qt_bin_dir();
    snprintf(cmd, sizeof cmd, "'%s/qdup-index' build --model '%s' --db '%s' --index Flat --quiet '%s'",
             bin, model, db, qt_path(dir, "questions.tsv"));
    int st = run(cmd, &out, &err);
    if (st != 0)
        fail_msg("qdup-index build exited %d: %s", st, err);
    free(out), free(err);
    for (int batch = 1; batch <= 4; batch += 3) {
        snprintf(cmd, sizeof cmd, "'%s/qdup-bench' search --db '%s' --queries '%s' -n 20 -k 5 "
                 "--batch %d", bin, db, qt_path(dir, "questions.tsv"), batch);
        st = run(cmd, &out, &err);
        if (st != 0)
            fail_msg("qdup-bench search --batch %d exited %d: %s", batch, st, err);
        last_line(out, last, sizeof last);
        unsigned n, k, b;
        double recall, us;
        const char *r = strstr(last, " n=");
        assert_non_null(r);
        assert_int_equal(sscanf(r, " n=%u k=%u", &n, &k), 2);
        assert_int_equal(n, 20);
        assert_int_equal(k, 5);
        r = strstr(last, "recall_at_k=");
        assert_non_null(r);
        assert_int_equal(sscanf(r, "recall_at_k=%lf batch=%u us_per_query=%lf", &recall, &b, &us),
                         3);
        qt_assert_near(recall, 1.0, 0);
        assert_int_equal(b, (unsigned)batch);
        assert_true(us > 0);
        free(out), free(err);
    }
    snprintf(cmd, sizeof cmd, "'%s/qdup-bench' search --db '%s' --queries '%s' --batch 0", bin,
             db, qt_path(dir, "questions.tsv"));
    assert_int_equal(run(cmd, &out, &err), 2);
    assert_non_null(strstr(err, "--batch"));
    free(out), free(err);
}

/* The training comparison on a small made-up set, C side only (one step of 256). */
static void test_bench_train(void **state)
{
    (void)state;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/data_train", qt_tmp_dir());
    mkdir(dir, 0755);
    const char *names[] = {"train.tsv", "valid.tsv", "test.tsv"};
    const int rows[] = {300, 40, 40};
    uint64_t rng = 99;
    for (int f = 0; f < 3; f++) {
        FILE *fp = fopen(qt_path(dir, names[f]), "w");
        assert_non_null(fp);
        fprintf(fp, "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n");
        for (int i = 0; i < rows[f]; i++) {
            int topic = (int)(qt_rand(&rng) % 50), dup = f == 0 || i % 2;
            int other = dup ? topic : (topic + 7) % 50;
            fprintf(fp, "%d\t%d\t%d\thow to t%d a%d?\twhat is t%d b%d\t%d\n", i, 2 * i + 1,
                    2 * i + 2, topic, i % 5, other, i % 3, dup);
        }
        fclose(fp);
    }
    char cmd[20000], last[256], *out, *err;
    snprintf(cmd, sizeof cmd, "'%s/qdup-bench' train --data '%s' --epochs 1 --no-torch "
             "--out '%s'", qt_bin_dir(), dir, qt_path(qt_tmp_dir(), "bench_train.qdm"));
    int st = run(cmd, &out, &err);
    if (st != 0)
        fail_msg("qdup-bench train exited %d: %s", st, err);
    assert_non_null(strstr(out, "test ROC AUC"));
    last_line(out, last, sizeof last);
    double pps;
    assert_int_equal(sscanf(last, "pairs_per_second: %lf", &pps), 1);
    assert_true(pps > 0);
    /* The model it trained was saved and loads. */
    char emsg[QD_ERRMSG_MAX];
    qd_model *m;
    assert_int_equal(qd_model_load(qt_path(qt_tmp_dir(), "bench_train.qdm"), &m, emsg,
                                   sizeof emsg), 0);
    qd_model_free(m);
    free(out), free(err);

    /* Too few duplicates for one batch: a clear error. */
    FILE *fp = fopen(qt_path(dir, "train.tsv"), "w");
    fprintf(fp, "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n0\t1\t2\ta\tb\t1\n");
    fclose(fp);
    assert_int_equal(run(cmd, &out, &err), 1);
    assert_non_null(strstr(err, "fewer than one batch"));
    free(out), free(err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rank),
        cmocka_unit_test(test_retrieval_metrics),
        cmocka_unit_test(test_bm25_query_text),
        cmocka_unit_test(test_bm25_query_nomem),
        cmocka_unit_test(test_bm25_search),
        cmocka_unit_test(test_bm25_any_bytes),
        cmocka_unit_test(test_pairs_quoted),
        cmocka_unit_test(test_pairs_plain_stays_plain),
        cmocka_unit_test(test_pairs_quoted_nomem),
        cmocka_unit_test(test_pairs_real_files),
        cmocka_unit_test(test_eval_program),
        cmocka_unit_test(test_eval_errors),
        cmocka_unit_test(test_bench_encode),
        cmocka_unit_test(test_bench_search),
        cmocka_unit_test(test_bench_train),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
