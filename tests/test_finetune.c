/*
 * test_finetune.c - teaching a model a forum (finetune.h) and scoring graded files.
 *
 * A tiny model that never saw the word "sourdough" is fine-tuned on a graded pair file
 * of a made-up forum whose questions use it: afterwards the word has an id and a row
 * of its own, moved away from the n-gram mean it started from, and the forum's
 * duplicates score above its non-duplicates better than before. Extending a
 * vocabulary alone must not change a single vector, and fine-tuning that only hurts
 * keeps the starting model. Then the pieces: graded columns,
 * grades to labels, mixing in other pairs, splitting by groups, and MAP on hand-checked
 * lists.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../encoder/model_impl.h"
#include "qdup/common.h"
#include "qdup/finetune.h"
#include "qdup/model.h"
#include "qdup/pairs.h"
#include "qdup/train.h"
#include "testutil.h"

static char err[QD_ERRMSG_MAX];

/* The forum: each topic asked two ways; its duplicates are the two ways of one topic
 * (grade 2), a non-duplicate pairs one topic with the next (grade 0) or, for a
 * related topic, grade 1. */
static const char *const topics[] = {
    "sourdough bread", "bicycle repair", "visa renewal", "car insurance",
    "driving licence", "apartment rent", "school fees",   "phone plan",
};
#define NTOPICS (sizeof topics / sizeof *topics)
/* Ways of asking: the words before and after the topic. */
static const char *const asks1[][2] = {{"where can i get", "in doha"},
                                       {"who knows a good", "place"},
                                       {"best", "in town"},
                                       {"need", "advice please"}};
static const char *const asks2[][2] = {{"any shop for", "near the city ?"},
                                       {"recommend me", ", thanks"},
                                       {"looking for", "here"},
                                       {"help with", "needed"}};
#define NASKS 4

/* Writes the forum's graded pair file as name (with is_duplicate turned round if flip)
 * and returns its path. */
static const char *write_forum_as(const char *name, int flip)
{
    static char buf[16384];
    size_t n = 0;
    int id = 0;
    n += (size_t)snprintf(buf + n, sizeof buf - n,
                          "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\trelevance\n");
    for (size_t t = 0; t < NTOPICS; t++)
        for (size_t a = 0; a < NASKS; a++) {
            char q1[128], q2[128], q3[128];
            snprintf(q1, sizeof q1, "%s %s %s", asks1[a][0], topics[t], asks1[a][1]);
            snprintf(q2, sizeof q2, "%s %s %s", asks2[a][0], topics[t], asks2[a][1]);
            snprintf(q3, sizeof q3, "%s %s %s", asks2[a][0], topics[(t + 1) % NTOPICS],
                     asks2[a][1]);
            int g = a % 2 ? 1 : 0; /* some non-duplicates graded related */
            int qa = (int)(t * 100 + a), qb = qa + 10, qc = (int)(((t + 1) % NTOPICS) * 100 + a + 10);
            n += (size_t)snprintf(buf + n, sizeof buf - n, "%d\t%d\t%d\t%s\t%s\t%d\t2\n", id++,
                                  qa, qb, q1, q2, !flip);
            n += (size_t)snprintf(buf + n, sizeof buf - n, "%d\t%d\t%d\t%s\t%s\t%d\t%d\n", id++,
                                  qa, qc, q1, q3, flip, g);
        }
    const char *path = qt_path(qt_tmp_dir(), name);
    qt_write_file(path, buf, n);
    return path;
}

static const char *write_forum(void)
{
    return write_forum_as("forum.tsv", 0);
}

/* A tiny random model whose vocabulary has every word of the forum but "sourdough". */
static qd_model *tiny_model(const qd_pairs *p)
{
    qd_vocab *v = qd_vocab_new();
    qd_tokbuf tb;
    qd_tokbuf_init(&tb);
    for (size_t i = 0; i < 2 * p->n; i++) {
        const char *q = i & 1 ? p->q2[i / 2] : p->q1[i / 2];
        assert_int_equal(qd_tok_split(&tb, q, strlen(q), 0), 0);
        for (size_t k = 0; k < tb.n; k++)
            if (!(tb.len[k] == 9 && memcmp(tb.text + tb.start[k], "sourdough", 9) == 0))
                assert_true(qd_vocab_add(v, tb.text + tb.start[k], tb.len[k]) >= 0);
    }
    qd_tokbuf_free(&tb);
    qd_model_hdr h = {.emb_dim = 16, .hidden = 16, .vocab = (uint32_t)qd_vocab_size(v),
                      .dirs = 1, .pool = QD_POOL_EMB,
                      .tok = {.max_tokens = 32, .ngram_min = 2, .ngram_max = 4,
                              .ngram_buckets = 512}};
    qd_model *m;
    if (qd_model_new(&h, v, &m, err, sizeof err))
        fail_msg("%s", err);
    uint64_t rs = 7;
    size_t n;
    float *w = qd_model_param_data(m, &n);
    for (size_t i = 0; i < n; i++)
        w[i] = (float)qt_uniform(&rs, -0.5, 0.5);
    return m;
}

/* ROC AUC of a model's cosines on p; in *gap how much the sourdough questions'
 * duplicates score above their non-duplicates, on average. */
static double pair_auc(const qd_model *m, const qd_pairs *p, double *gap)
{
    float *s = malloc(p->n * sizeof *s);
    assert_int_equal(qd_score_pairs(m, p, 1, s), 0);
    double auc = qd_pairs_auc(s, p->dup, p->n), sum[2] = {0, 0};
    size_t k[2] = {0, 0};
    for (size_t i = 0; i < p->n; i++)
        if (strstr(p->q1[i], "sourdough")) {
            sum[p->dup[i]] += s[i];
            k[p->dup[i]]++;
        }
    assert_true(k[0] > 0 && k[1] > 0);
    *gap = sum[1] / (double)k[1] - sum[0] / (double)k[0];
    free(s);
    return auc;
}

static const float *row_of(const qd_model *m, const char *word)
{
    int32_t id = qd_vocab_find(qd_model_vocab(m), word, strlen(word));
    return qd_model_cparams(m)->emb + (size_t)id * qd_model_header(m)->emb_dim;
}

/* The finetune recipe, scaled down for the tiny model and the forum's 64 pairs. */
static qd_train_opts tiny_opts(const qd_model *base, int epochs)
{
    qd_train_opts o;
    qd_finetune_recipe(&o);
    o.init = base;
    o.max_tokens = 32;
    o.min_count = 1;
    o.batch = 8;
    o.hard_negatives = 8;
    o.mine_top = 0;
    o.epochs = epochs;
    o.patience = 0;
    o.lr = 0.01f;
    o.threads = 1;
    return o;
}

static void test_new_word_learned(void **state)
{
    (void)state;
    qd_pairs *p;
    if (qd_pairs_load(write_forum(), NULL, NULL, &p, err, sizeof err))
        fail_msg("%s", err);
    assert_int_equal(p->n, 2 * NTOPICS * NASKS);
    qd_model *base = tiny_model(p);
    assert_int_equal(qd_vocab_find(qd_model_vocab(base), "sourdough", 9), QD_TOK_UNK);

    /* Extending alone changes no vector: the new row is the n-gram mean it replaces. */
    qd_vocab *words = qd_vocab_new();
    assert_true(qd_vocab_add(words, "sourdough", 9) >= 0);
    assert_true(qd_vocab_add(words, "bread", 5) >= 0); /* known: not added again */
    qd_model *ext;
    size_t added;
    if (qd_finetune_extend(base, words, 0, &ext, &added, err, sizeof err))
        fail_msg("%s", err);
    qd_vocab_free(words);
    assert_int_equal(added, 1);
    assert_int_equal(qd_model_header(ext)->vocab, qd_model_header(base)->vocab + 1);
    double m0, m1, m2;
    double auc0 = pair_auc(base, p, &m0), auc_ext = pair_auc(ext, p, &m1);
    qt_assert_near(auc_ext, auc0, 1e-9);
    qt_assert_near(m1, m0, 1e-5);
    qd_model_free(ext);

    /* Fine-tuning on the forum's PerfectMatch-only labels (the grades say the same). */
    assert_int_equal(qd_finetune_relabel(p, 1u << 2, 0), 0);
    qd_train_opts o = tiny_opts(base, 30);
    qd_model *m;
    qd_train_result r;
    if (qd_train(&o, p, NULL, NULL, NULL, &m, &r, err, sizeof err))
        fail_msg("%s", err);
    assert_int_equal(r.words_added, 1);
    int32_t id = qd_vocab_find(qd_model_vocab(m), "sourdough", 9);
    assert_int_equal(id, (int32_t)qd_model_header(base)->vocab);
    /* Its own row: no longer the mean of its n-gram rows. */
    qd_tokbuf tb;
    qd_tokseqs seqs;
    qd_tokbuf_init(&tb);
    qd_tokseqs_init(&seqs);
    assert_int_equal(qd_tok_encode(qd_model_vocab(m), &qd_model_header(m)->tok, &tb,
                                   "sourdough", 9, &seqs), 0);
    assert_int_equal(seqs.rows[0], id);
    size_t E = qd_model_header(m)->emb_dim, nrows = seqs.toff[1] - 1;
    const float *own = row_of(m, "sourdough");
    double dist = 0;
    for (size_t e = 0; e < E; e++) {
        double mean = 0;
        for (size_t j = 1; j <= nrows; j++)
            mean += qd_model_cparams(m)->emb[(size_t)seqs.rows[j] * E + e];
        mean /= (double)nrows;
        dist += (own[e] - mean) * (own[e] - mean);
    }
    qd_tokseqs_free(&seqs);
    qd_tokbuf_free(&tb);
    printf("# own row %.4f from its n-gram mean\n", sqrt(dist));
    assert_true(sqrt(dist) > 0.01);
    /* Its pairs score higher, and duplicates rank above non-duplicates better. */
    double auc1 = pair_auc(m, p, &m2);
    printf("# AUC %.3f -> %.3f, sourdough duplicates over non-duplicates %.3f -> %.3f\n",
           auc0, auc1, m0, m2);
    assert_true(m2 > m0 + 0.05);
    assert_true(auc1 > auc0);
    qd_model_free(m);
    qd_model_free(base);
    qd_pairs_free(p);
}

/* A judge that prefers the earliest epoch (a higher score the earlier). */
static int judge_earliest(const qd_model *m, int epoch, void *arg, double *score)
{
    (void)m;
    int *calls = arg;
    (*calls)++;
    *score = -epoch;
    return 0;
}

/* Fine-tuning judges its starting point as epoch 0 and keeps it when training only
 * makes things worse: here the training pairs are the forum's with their labels
 * turned round, so every epoch lowers the validation AUC; the model written is the
 * starting one (its vectors unchanged, the new word added). A caller's judge decides
 * in place of the cosine AUC, and is asked about epoch 0 too. */
static void test_keeps_start(void **state)
{
    (void)state;
    qd_pairs *p, *flipped;
    if (qd_pairs_load(write_forum(), NULL, NULL, &p, err, sizeof err) ||
        qd_pairs_load(write_forum_as("flipped.tsv", 1), NULL, NULL, &flipped, err, sizeof err))
        fail_msg("%s", err);
    qd_model *base = tiny_model(p);
    double gap0, gap1;
    double auc0 = pair_auc(base, p, &gap0);
    qd_train_opts o = tiny_opts(base, 4);
    qd_model *m;
    qd_train_result r;
    if (qd_train(&o, flipped, p, NULL, NULL, &m, &r, err, sizeof err))
        fail_msg("%s", err);
    printf("# best epoch %d of %d, valid AUC %.4f (start %.4f)\n", r.best_epoch, r.epochs_run,
           r.best_valid_auc, auc0);
    assert_int_equal(r.epochs_run, 4);
    assert_int_equal(r.best_epoch, 0);
    assert_int_equal(r.words_added, 1);
    qt_assert_near(r.best_valid_auc, auc0, 1e-6);
    qt_assert_near(pair_auc(m, p, &gap1), auc0, 1e-6);
    qt_assert_near(gap1, gap0, 1e-5);
    qd_model_free(m);

    /* The same labels the right way round: training helps, a later epoch is kept. */
    if (qd_train(&o, p, p, NULL, NULL, &m, &r, err, sizeof err))
        fail_msg("%s", err);
    assert_true(r.best_epoch > 0);
    assert_true(r.best_valid_auc > auc0);
    qd_model_free(m);

    /* A judge of the caller's decides, epoch 0 included. */
    int calls = 0;
    o.judge = judge_earliest;
    o.judge_arg = &calls;
    o.epochs = 2;
    if (qd_train(&o, p, NULL, NULL, NULL, &m, &r, err, sizeof err))
        fail_msg("%s", err);
    assert_int_equal(calls, 3);
    assert_int_equal(r.best_epoch, 0);
    qt_assert_near(pair_auc(m, p, &gap1), auc0, 1e-6);
    qd_model_free(m);
    qd_model_free(base);
    qd_pairs_free(flipped);
    qd_pairs_free(p);
}

/* The judge's rule, on epochs measured on SemEval dev: seed 7's epoch 2 raised MAP by
 * 0.023 and lowered AUC by 0.013 (their sum rose: it was kept, and missed the issue's
 * AUC target); seed 1's epoch 8 raised both. */
static void test_gain(void **state)
{
    (void)state;
    qt_assert_near(qd_finetune_gain(0.7864, 0.8193, 0.7999, 0.7959, 1), -0.0135, 1e-9);
    qt_assert_near(qd_finetune_gain(0.8088, 0.8022, 0.7999, 0.7959, 1), 0.0063, 1e-9);
    qt_assert_near(qd_finetune_gain(0.7999, 0.7959, 0.7999, 0.7959, 1), 0, 0);
    /* Without grades there is no MAP: the AUC's gain alone. */
    qt_assert_near(qd_finetune_gain(0.8100, 0, 0.7999, 0, 0), 0.0101, 1e-9);
}

static void test_grades(void **state)
{
    (void)state;
    qd_pairs *p;
    if (qd_pairs_load(write_forum(), NULL, NULL, &p, err, sizeof err))
        fail_msg("%s", err);
    assert_non_null(p->grade);
    assert_int_equal(p->grade[0], 2);
    assert_int_equal(p->grade[1], 0);
    assert_int_equal(p->grade[3], 1);
    unsigned mask;
    assert_int_equal(qd_finetune_parse_grades("1,2", &mask), 0);
    assert_int_equal(mask, 6);
    assert_int_equal(qd_finetune_parse_grades("2", &mask), 0);
    assert_int_equal(mask, 4);
    assert_int_equal(qd_finetune_parse_grades("12", &mask), QD_ERR_INVAL);
    assert_int_equal(qd_finetune_parse_grades("1,", &mask), QD_ERR_INVAL);
    assert_int_equal(qd_finetune_parse_grades("", &mask), QD_ERR_INVAL);
    size_t n = p->n;
    assert_int_equal(qd_finetune_relabel(p, 6, 0), 0);
    assert_int_equal(p->n, n);
    assert_int_equal(p->dup[0], 1);
    assert_int_equal(p->dup[1], 0);
    assert_int_equal(p->dup[3], 1);
    /* Leaving out grade 1: the pairs graded 2 and 0 remain, in order. */
    assert_int_equal(qd_finetune_relabel(p, 4, 2), 0);
    assert_int_equal(p->n, n - n / 4);
    for (size_t i = 0; i < p->n; i++) {
        assert_int_not_equal(p->grade[i], 1);
        assert_int_equal(p->dup[i], p->grade[i] == 2);
    }

    /* Mixing: all of a, then half as many of b with ids past a's. */
    qd_pairs *mixed;
    assert_int_equal(qd_finetune_mix(p, p, 0.5, 1, &mixed), 0);
    assert_int_equal(mixed->n, p->n + p->n / 2);
    int64_t top = 0;
    for (size_t i = 0; i < p->n; i++) {
        assert_string_equal(mixed->q1[i], p->q1[i]);
        top = p->qid2[i] > top ? p->qid2[i] : top;
    }
    for (size_t i = p->n; i < mixed->n; i++) {
        assert_true(mixed->qid1[i] > top);
        int found = 0; /* a pair of b, its ids moved by the same amount */
        for (size_t j = 0; j < p->n; j++)
            found |= strcmp(mixed->q2[i], p->q2[j]) == 0 &&
                     mixed->qid2[i] - p->qid2[j] == top + 1;
        assert_true(found);
    }
    qd_pairs_free(mixed);

    /* Splitting by qid1 groups: every pair in one part, no group in both. */
    qd_pairs *kept, *held;
    assert_int_equal(qd_finetune_split(p, 0.5, 3, &kept, &held), 0);
    assert_int_equal(kept->n + held->n, p->n);
    assert_true(kept->n > 0 && held->n > 0);
    for (size_t i = 0; i < kept->n; i++)
        for (size_t j = 0; j < held->n; j++)
            assert_true(kept->qid1[i] != held->qid1[j]);
    assert_int_equal(held->grade[0] >= 0, 1);
    qd_pairs_free(kept);
    qd_pairs_free(held);
    qd_pairs_free(p);

    /* A grade that is not a digit costs its row, with the reason. */
    const char *bad = qt_path(qt_tmp_dir(), "badgrade.tsv");
    const char text[] = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\trelevance\n"
                        "0\t1\t2\ta\tb\t1\t2\n1\t1\t3\ta\tc\t0\tx\n";
    qt_write_file(bad, text, sizeof text - 1);
    assert_int_equal(qd_pairs_load(bad, NULL, NULL, &p, err, sizeof err), 0);
    assert_int_equal(p->n, 1);
    assert_int_equal(p->skipped, 1);
    qd_pairs_free(p);
}

static void test_map(void **state)
{
    (void)state;
    /* Group 1: ranked 0.9 (rel), 0.8, 0.7 (rel): AP = (1/1 + 2/3) / 2 = 5/6.
     * Group 2: ranked 0.6, 0.5 (rel): AP = 1/2. Group 3: nothing relevant, left out. */
    const float s[] = {0.7f, 0.9f, 0.8f, 0.5f, 0.6f, 0.4f};
    const int64_t g[] = {1, 1, 1, 2, 2, 3};
    const int8_t grade[] = {1, 2, 0, 2, 0, 0};
    size_t groups;
    qt_assert_near(qd_pairs_map(s, g, grade, 6, 1, &groups), (5.0 / 6 + 0.5) / 2, 1e-12);
    assert_int_equal(groups, 2);
    /* Only grade 2 relevant: group 1 AP = 1, group 2 AP = 1/2. */
    qt_assert_near(qd_pairs_map(s, g, grade, 6, 2, &groups), 0.75, 1e-12);
    /* Ties keep file order; no relevant pair at all gives 0 over 0 groups. */
    const float tie[] = {0.5f, 0.5f};
    const int64_t g1[] = {4, 4};
    const int8_t gr[] = {0, 1};
    qt_assert_near(qd_pairs_map(tie, g1, gr, 2, 1, &groups), 0.5, 1e-12);
    qt_assert_near(qd_pairs_map(tie, g1, gr, 2, 2, &groups), 0, 1e-12);
    assert_int_equal(groups, 0);
}

/* qdup-train --init and --head-only from the command line, on the made-up forum. */
static void test_command_line(void **state)
{
    (void)state;
    const char *forum = write_forum();
    char base[4096], out[4096], head[4096], cmd[16384];
    snprintf(base, sizeof base, "%s/fwd_ngram.qdm", qt_fixtures_dir());
    snprintf(out, sizeof out, "%s/forum.qdm", qt_tmp_dir());
    snprintf(head, sizeof head, "%s/forum_head.qdm", qt_tmp_dir());
    snprintf(cmd, sizeof cmd, "'%s/qdup-train' --init '%s' --train '%s' --valid '%s' --out '%s' "
             "--duplicate-grades 2 --head-share 0 --batch 4 --epochs 2 --min-count 1 --threads 1 "
             "--quiet >/dev/null 2>&1", qt_bin_dir(), base, forum, forum, out);
    assert_int_equal(system(cmd), 0);
    qd_model *b, *m, *h;
    assert_int_equal(qd_model_load(base, &b, err, sizeof err), 0);
    if (qd_model_load(out, &m, err, sizeof err))
        fail_msg("%s", err);
    /* A new model: more words, its own fingerprint. */
    assert_true(qd_model_header(m)->vocab > qd_model_header(b)->vocab);
    assert_string_not_equal(qd_model_fingerprint(m), qd_model_fingerprint(b));
    /* --head-only keeps the vectors: same fingerprint, a fitted scoring. */
    snprintf(cmd, sizeof cmd, "'%s/qdup-train' --init '%s' --head-only --train '%s' --valid "
             "'%s' --out '%s' --threads 1 --quiet >/dev/null 2>&1", qt_bin_dir(), out, forum,
             forum, head);
    assert_int_equal(system(cmd), 0);
    if (qd_model_load(head, &h, err, sizeof err))
        fail_msg("%s", err);
    assert_string_equal(qd_model_fingerprint(h), qd_model_fingerprint(m));
    assert_int_equal(qd_model_get_scoring(h)->fitted, 1);
    /* Judged on the labels turned round, every epoch scores worse than the start: the
     * starting model is written, with its own vocabulary and fingerprint, its scoring
     * fitted. */
    qd_model *same;
    snprintf(cmd, sizeof cmd, "'%s/qdup-train' --init '%s' --train '%s' --valid '%s' --out '%s' "
             "--head-share 0 --batch 4 --epochs 3 --lr 0.01 --min-count 1 --threads 1 --quiet "
             ">/dev/null 2>&1", qt_bin_dir(), base, forum, write_forum_as("flipped.tsv", 1),
             out);
    assert_int_equal(system(cmd), 0);
    if (qd_model_load(out, &same, err, sizeof err))
        fail_msg("%s", err);
    assert_string_equal(qd_model_fingerprint(same), qd_model_fingerprint(b));
    assert_int_equal(qd_model_header(same)->vocab, qd_model_header(b)->vocab);
    assert_int_equal(qd_model_get_scoring(same)->fitted, 1);
    qd_model_free(same);
    /* The default judge, the duplicate head: on this forum the pair signals alone
     * separate every pair (P(duplicate) AUC and MAP 1 from the start), no epoch does
     * better, and a tie keeps the starting model. */
    snprintf(cmd, sizeof cmd, "'%s/qdup-train' --init '%s' --train '%s' --valid '%s' --out '%s' "
             "--duplicate-grades 2 --batch 4 --epochs 2 --min-count 1 --threads 1 --quiet "
             ">/dev/null 2>&1", qt_bin_dir(), base, forum, forum, out);
    assert_int_equal(system(cmd), 0);
    if (qd_model_load(out, &same, err, sizeof err))
        fail_msg("%s", err);
    assert_string_equal(qd_model_fingerprint(same), qd_model_fingerprint(b));
    qd_model_free(same);
    /* Grades asked of a file without them: refused, nothing written. */
    const char *plain = qt_path(qt_tmp_dir(), "plain.tsv");
    const char text[] = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
                        "0\t1\t2\ta b\tb a\t1\n";
    qt_write_file(plain, text, sizeof text - 1);
    char *x = strdup(qt_path(qt_tmp_dir(), "never.qdm"));
    snprintf(cmd, sizeof cmd, "'%s/qdup-train' --init '%s' --train '%s' --valid '%s' --out '%s' "
             "--skip-grades 1 >/dev/null 2>&1", qt_bin_dir(), base, plain, forum, x);
    assert_int_not_equal(system(cmd), 0);
    FILE *f = fopen(x, "rb");
    assert_null(f);
    free(x);
    qd_model_free(b);
    qd_model_free(m);
    qd_model_free(h);
}

/* qdup-eval scores a graded file with the task's MAP beside the AUC. */
static void test_eval_map(void **state)
{
    (void)state;
    const char *forum = write_forum();
    char dir[4096], model[4096], cmd[16384], line[1024];
    snprintf(dir, sizeof dir, "%s/evaldata", qt_tmp_dir());
    snprintf(cmd, sizeof cmd, "mkdir -p '%s' && cp '%s' '%s/valid.tsv' && cp '%s' '%s/test.tsv'",
             dir, forum, dir, forum, dir);
    assert_int_equal(system(cmd), 0);
    snprintf(model, sizeof model, "%s/fwd_ngram.qdm", qt_fixtures_dir());
    snprintf(cmd, sizeof cmd, "'%s/qdup-eval' --model '%s' --data '%s' --pairs '%s' "
             "--no-retrieval --threads 1 2>/dev/null", qt_bin_dir(), model, dir, forum);
    FILE *f = popen(cmd, "r");
    assert_non_null(f);
    double map = -1;
    size_t groups = 0;
    while (fgets(line, sizeof line, f)) {
        /* The pair metrics' row (the calibration table's row has no "over"). */
        const char *m = strncmp(line, "forum.tsv ", 10) == 0 ? strstr(line, "MAP ") : NULL;
        double v;
        size_t g;
        if (m && map < 0 && sscanf(m, "MAP %lf over %zu", &v, &g) == 2) {
            map = v;
            groups = g;
        }
    }
    assert_int_equal(pclose(f), 0);
    qd_pairs *p;
    qd_model *mo;
    assert_int_equal(qd_pairs_load(forum, NULL, NULL, &p, err, sizeof err), 0);
    assert_int_equal(qd_model_load(model, &mo, err, sizeof err), 0);
    float *s = malloc(p->n * sizeof *s);
    assert_int_equal(qd_score_pairs(mo, p, 1, s), 0);
    size_t want_groups;
    double want = qd_pairs_map(s, p->qid1, p->grade, p->n, 1, &want_groups);
    printf("# qdup-eval MAP %.4f over %zu groups, expected %.4f over %zu\n", map, groups, want,
           want_groups);
    qt_assert_near(map, want, 1e-4);
    assert_int_equal(groups, want_groups);
    free(s);
    qd_model_free(mo);
    qd_pairs_free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_map),
        cmocka_unit_test(test_grades),
        cmocka_unit_test(test_new_word_learned),
        cmocka_unit_test(test_keeps_start),
        cmocka_unit_test(test_gain),
        cmocka_unit_test(test_command_line),
        cmocka_unit_test(test_eval_map),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
