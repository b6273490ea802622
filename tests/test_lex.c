/*
 * test_lex.c - terms, collection statistics, BM25 and the pair signals, each checked
 * against a plain oracle written here independently: words as lower-cased runs of ASCII
 * letters and digits compared as strings, document frequencies counted by scanning the
 * whole collection, and the BM25 formula written out in double precision.
 */
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qdup/common.h"
#include "qdup/head.h"
#include "qdup/lex.h"
#include "qdup/rank.h"
#include "testutil.h"

#define MAXW 64

/* --- the oracle -------------------------------------------------------------------- */

typedef struct owords {
    char w[MAXW][16]; /* the words, in text order */
    int n;            /* how many */
} owords;

static void o_split(const char *t, owords *o)
{
    o->n = 0;
    while (*t) {
        while (*t && !isalnum((unsigned char)*t))
            t++;
        int k = 0;
        while (*t && isalnum((unsigned char)*t)) {
            if (k < 15)
                o->w[o->n][k++] = (char)tolower((unsigned char)*t);
            t++;
        }
        if (k) {
            o->w[o->n][k] = '\0';
            o->n++;
        }
    }
}

static int o_count(const owords *o, const char *w)
{
    int c = 0;
    for (int i = 0; i < o->n; i++)
        c += strcmp(o->w[i], w) == 0;
    return c;
}

static double o_bm25(const owords *coll, int ndocs, const owords *q, const owords *d, double k1,
                     double b)
{
    double avg = 0;
    for (int i = 0; i < ndocs; i++)
        avg += coll[i].n;
    avg /= ndocs;
    double s = 0;
    for (int i = 0; i < q->n; i++) {
        int seen = 0;
        for (int j = 0; j < i; j++)
            seen |= strcmp(q->w[j], q->w[i]) == 0;
        if (seen)
            continue; /* each distinct query term once */
        int df = 0;
        for (int k = 0; k < ndocs; k++)
            df += o_count(&coll[k], q->w[i]) > 0;
        double idf = log(1 + (ndocs - df + 0.5) / (df + 0.5));
        double tf = o_count(d, q->w[i]);
        if (tf == 0)
            continue;
        s += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * d->n / avg));
    }
    return s;
}

/* --- random collections ----------------------------------------------------------- */

static const char *vocab[] = {"how", "do", "I", "learn", "Python", "java", "best", "way",
                              "to", "what", "is", "the", "C", "2024", "QUICKLY", "learn"};

static void random_text(uint64_t *rng, char *buf, size_t cap)
{
    int n = 1 + (int)(qt_rand(rng) % 12);
    size_t k = 0;
    buf[0] = '\0';
    for (int i = 0; i < n; i++) {
        const char *w = vocab[qt_rand(rng) % (sizeof vocab / sizeof *vocab)];
        const char *sep = qt_rand(rng) % 4 == 0 ? ", " : qt_rand(rng) % 5 == 0 ? "? " : " ";
        k += (size_t)snprintf(buf + k, cap - k, "%s%s", w, sep);
    }
}

static void test_doc_terms(void **state)
{
    (void)state;
    qd_tokbuf tb;
    qd_tokbuf_init(&tb);
    qd_lex_doc d;
    const char *t = "How do I learn Python? How, HOW... learn!";
    assert_int_equal(qd_lex_doc_make(&tb, t, strlen(t), &d), 0);
    /* Words: how do i learn python how how learn: 8 tokens, 5 distinct. */
    assert_int_equal(d.len, 8);
    assert_int_equal(d.n, 5);
    for (uint32_t i = 1; i < d.n; i++)
        assert_true(d.term[i] > d.term[i - 1]);
    uint32_t total = 0;
    for (uint32_t i = 0; i < d.n; i++)
        total += d.tf[i];
    assert_int_equal(total, 8);
    uint64_t how = qd_lex_term_hash("how", 3);
    int found = 0;
    for (uint32_t i = 0; i < d.n; i++)
        if (d.term[i] == how) {
            assert_int_equal(d.tf[i], 3);
            found = 1;
        }
    assert_true(found);
    qd_lex_doc_free(&d);
    /* Punctuation only: no terms, nothing allocated. */
    assert_int_equal(qd_lex_doc_make(&tb, "?! ...", 6, &d), 0);
    assert_int_equal(d.n, 0);
    assert_int_equal(d.len, 0);
    assert_null(d.term);
    /* Case and width fold into one term, as the tokenizer does. */
    qd_lex_doc a, b;
    assert_int_equal(qd_lex_doc_make(&tb, "PYTHON", 6, &a), 0);
    assert_int_equal(qd_lex_doc_make(&tb, "\xef\xbd\x90ython", 8, &b), 0); /* fullwidth p */
    assert_int_equal(a.n, 1);
    assert_int_equal(b.n, 1);
    assert_true(a.term[0] == b.term[0]);
    qd_lex_doc_free(&a);
    qd_lex_doc_free(&b);
    assert_true(qd_lex_is_word("\xc3\xa9", 2));
    assert_false(qd_lex_is_word("?", 1));
    assert_false(qd_lex_is_word("\xe2\x80\x94", 3)); /* em dash */
    qd_tokbuf_free(&tb);
}

static void test_bm25_against_oracle(void **state)
{
    (void)state;
    uint64_t rng = 12345;
    enum { NDOC = 60 };
    char text[NDOC][256];
    owords ow[NDOC];
    qd_lex_doc docs[NDOC];
    qd_tokbuf tb;
    qd_tokbuf_init(&tb);
    qd_lex_stats *st = qd_lex_stats_new();
    assert_non_null(st);
    for (int i = 0; i < NDOC; i++) {
        random_text(&rng, text[i], sizeof text[i]);
        o_split(text[i], &ow[i]);
        assert_int_equal(qd_lex_doc_make(&tb, text[i], strlen(text[i]), &docs[i]), 0);
        assert_int_equal(docs[i].len, (uint32_t)ow[i].n);
        assert_int_equal(qd_lex_stats_add(st, &docs[i]), 0);
    }
    assert_int_equal(qd_lex_stats_ndocs(st), NDOC);
    const qd_bm25_params ps[] = {{0.9f, 0.4f}, {1.2f, 0.75f}, {0.0f, 0.0f}, {2.0f, 1.0f}};
    for (size_t pi = 0; pi < sizeof ps / sizeof *ps; pi++)
        for (int qi = 0; qi < 10; qi++) {
            qd_lex_query lq;
            assert_int_equal(qd_lex_query_init(&lq, st, &docs[qi], ps[pi]), 0);
            for (int di = 0; di < NDOC; di++) {
                double want = o_bm25(ow, NDOC, &ow[qi], &ow[di], ps[pi].k1, ps[pi].b);
                qt_assert_near(qd_lex_bm25(&lq, &docs[di]), want, 1e-9 * (1 + want));
            }
            qd_lex_query_free(&lq);
        }
    /* Removing documents changes the statistics as if they had never been added. */
    for (int i = NDOC / 2; i < NDOC; i++)
        qd_lex_stats_remove(st, &docs[i]);
    assert_int_equal(qd_lex_stats_ndocs(st), NDOC / 2);
    qd_lex_query lq;
    qd_bm25_params p = {0.9f, 0.4f};
    assert_int_equal(qd_lex_query_init(&lq, st, &docs[3], p), 0);
    for (int di = 0; di < NDOC / 2; di++) {
        double want = o_bm25(ow, NDOC / 2, &ow[3], &ow[di], p.k1, p.b);
        qt_assert_near(qd_lex_bm25(&lq, &docs[di]), want, 1e-9 * (1 + want));
    }
    qd_lex_query_free(&lq);
    for (int i = 0; i < NDOC; i++)
        qd_lex_doc_free(&docs[i]);
    qd_lex_stats_free(st);
    qd_tokbuf_free(&tb);
}

static void test_pair_signals(void **state)
{
    (void)state;
    qd_tokbuf tb;
    qd_tokbuf_init(&tb);
    const char *coll[] = {"how do I learn python", "how do I learn java", "what is python",
                          "best way to learn"};
    qd_lex_doc d[4];
    qd_lex_stats *st = qd_lex_stats_new();
    for (int i = 0; i < 4; i++) {
        assert_int_equal(qd_lex_doc_make(&tb, coll[i], strlen(coll[i]), &d[i]), 0);
        assert_int_equal(qd_lex_stats_add(st, &d[i]), 0);
    }
    float s[QD_LEX_NSIGNALS];
    /* d0 = {how do i learn python}, d1 = {how do i learn java}: 4 shared of 6. */
    qd_lex_pair_signals(st, &d[0], &d[1], s);
    qt_assert_near(s[QD_LEX_JACCARD], 4.0 / 6.0, 1e-6);
    double idf[5];
    const char *w[5] = {"how", "do", "i", "learn", "python"};
    for (int i = 0; i < 5; i++)
        idf[i] = qd_lex_idf(st, qd_lex_term_hash(w[i], strlen(w[i])));
    double java = qd_lex_idf(st, qd_lex_term_hash("java", 4));
    double shared = idf[0] + idf[1] + idf[2] + idf[3];
    qt_assert_near(s[QD_LEX_IDF_Q], shared / (shared + idf[4]), 1e-6);
    qt_assert_near(s[QD_LEX_IDF_D], shared / (shared + java), 1e-6);
    qt_assert_near(s[QD_LEX_IDF_MEAN], 0.5 * (s[QD_LEX_IDF_Q] + s[QD_LEX_IDF_D]), 1e-6);
    /* A question against itself: everything 1. */
    qd_lex_pair_signals(st, &d[2], &d[2], s);
    for (int i = 0; i < QD_LEX_NSIGNALS; i++)
        qt_assert_near(s[i], 1.0, 1e-6);
    /* No terms: all 0. */
    qd_lex_doc empty = {0};
    qd_lex_pair_signals(st, &empty, &d[0], s);
    for (int i = 0; i < QD_LEX_NSIGNALS; i++)
        qt_assert_near(s[i], 0.0, 0);
    /* With the query's idf values from a qd_lex_query: the same signals, bit for bit;
     * and the values given are the ones used. */
    qd_bm25_params bp = {1.2, 0.75};
    for (int a = 0; a < 4; a++) {
        qd_lex_query lq;
        assert_int_equal(qd_lex_query_init(&lq, st, &d[a], bp), 0);
        for (int b = 0; b < 4; b++) {
            float want[QD_LEX_NSIGNALS], got[QD_LEX_NSIGNALS];
            qd_lex_pair_signals(st, &d[a], &d[b], want);
            qd_lex_pair_signals_idf(st, &d[a], lq.idf, &d[b], got);
            assert_memory_equal(want, got, sizeof want);
        }
        for (uint32_t i = 0; i < d[a].n; i++)
            lq.idf[i] = 0;
        qd_lex_pair_signals_idf(st, &d[a], lq.idf, &d[(a + 1) % 4], s);
        qt_assert_near(s[QD_LEX_IDF_Q], 0.0, 0);
        qd_lex_query_free(&lq);
    }
    for (int i = 0; i < 4; i++)
        qd_lex_doc_free(&d[i]);
    qd_lex_stats_free(st);
    qd_tokbuf_free(&tb);
}

/* The reserve-then-add contract the store relies on: after reserving for a doc's missing
 * terms, adding it cannot fail even when every allocation would. */
static void test_reserve_then_add_cannot_fail(void **state)
{
    (void)state;
    qd_tokbuf tb;
    qd_tokbuf_init(&tb);
    qd_lex_stats *st = qd_lex_stats_new();
    char text[256];
    uint64_t rng = 7;
    for (int i = 0; i < 3000; i++) {
        snprintf(text, sizeof text, "word%d other%d shared", i, i * 7);
        qd_lex_doc d;
        assert_int_equal(qd_lex_doc_make(&tb, text, strlen(text), &d), 0);
        assert_int_equal(qd_lex_stats_reserve(st, qd_lex_stats_missing(st, &d)), 0);
        qd_alloc_fail_after(0, 1);
        int rc = qd_lex_stats_add(st, &d);
        qd_alloc_fail_after(-1, 0);
        assert_int_equal(rc, 0);
        qd_lex_doc_free(&d);
        (void)qt_rand(&rng);
    }
    assert_int_equal(qd_lex_stats_df(st, qd_lex_term_hash("shared", 6)), 3000);
    assert_int_equal(qd_lex_stats_df(st, qd_lex_term_hash("word17", 6)), 1);
    qt_assert_near(qd_lex_stats_avglen(st), 3.0, 1e-12);
    qd_lex_stats_free(st);
    qd_tokbuf_free(&tb);
}

/* The fused ranking: lexical normalized by the best candidate, the fused order, the
 * cosine mode, p = 1 for a repost. */
static void test_rank_rescore(void **state)
{
    (void)state;
    qd_tokbuf tb;
    qd_tokbuf_init(&tb);
    const char *coll[] = {"how do I learn python", "python tutorial for beginners",
                          "how to cook rice", "learn python fast"};
    qd_lex_doc d[4], q;
    qd_lex_stats *st = qd_lex_stats_new();
    for (int i = 0; i < 4; i++) {
        assert_int_equal(qd_lex_doc_make(&tb, coll[i], strlen(coll[i]), &d[i]), 0);
        assert_int_equal(qd_lex_stats_add(st, &d[i]), 0);
    }
    const char *qt = "how do I learn python";
    assert_int_equal(qd_lex_doc_make(&tb, qt, strlen(qt), &q), 0);
    qd_model_scoring sc;
    qd_model_scoring_default(&sc);
    sc.fusion = 0.5f;
    /* Cosines that put the lexical best (d0) last by cosine. */
    float cosv[4] = {0.60f, 0.90f, 0.20f, 0.85f};
    qd_rank_cand c[4];
    for (int i = 0; i < 4; i++)
        c[i] = (qd_rank_cand){.doc = &d[i], .cosine = cosv[i], .identical = i == 0, .index =
                              (size_t)i};
    assert_int_equal(qd_rank_rescore(&sc, st, &q, QD_RANK_FUSED, c, 4, 4), 0);
    double best = 0;
    for (int i = 0; i < 4; i++)
        best = fmax(best, c[i].bm25);
    for (int i = 0; i < 4; i++) {
        qt_assert_near(c[i].lexical, c[i].bm25 / best, 1e-6);
        if (c[i].index == 0) /* the repost: first, with score 1 */
            qt_assert_near(c[i].score, 1.0, 0);
        else
            qt_assert_near(c[i].score, 0.5 * c[i].cosine + 0.5 * c[i].lexical, 1e-6);
        if (i)
            assert_true(c[i - 1].score >= c[i].score);
        if (c[i].index == 0)
            qt_assert_near(c[i].p, 1.0, 0); /* the repost */
        else
            assert_true(c[i].p > 0 && c[i].p < 1);
    }
    assert_int_equal(c[0].index, 0);
    qt_assert_near(c[0].lexical, 1.0, 1e-6);
    /* Without the repost mark the lexical match still wins: lexical 1 and cosine 0.6
     * beat cosine 0.9 with a lower lexical score. */
    for (int i = 0; i < 4; i++)
        c[i] = (qd_rank_cand){.doc = &d[i], .cosine = cosv[i], .index = (size_t)i};
    assert_int_equal(qd_rank_rescore(&sc, st, &q, QD_RANK_FUSED, c, 4, 4), 0);
    assert_int_equal(c[0].index, 0);
    assert_true(c[0].p < 1);
    for (int i = 0; i < 4; i++)
        c[i] = (qd_rank_cand){.doc = &d[i], .cosine = cosv[i], .index = (size_t)i};
    assert_int_equal(qd_rank_rescore(&sc, st, &q, QD_RANK_COSINE, c, 4, 1), 0);
    assert_int_equal(c[0].index, 1);
    assert_int_equal(c[1].index, 3);
    qt_assert_near(c[0].score, 0.9, 1e-6);
    assert_true(c[0].p > 0);
    qt_assert_near(c[1].p, 0, 0); /* p only for the first k */
    qd_rank_mode m;
    assert_int_equal(qd_rank_mode_parse("cosine", &m), 0);
    assert_int_equal(m, QD_RANK_COSINE);
    assert_int_equal(qd_rank_mode_parse("bm25", &m), QD_ERR_INVAL);
    for (int i = 0; i < 4; i++)
        qd_lex_doc_free(&d[i]);
    qd_lex_doc_free(&q);
    qd_lex_stats_free(st);
    qd_tokbuf_free(&tb);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_doc_terms),
        cmocka_unit_test(test_bm25_against_oracle),
        cmocka_unit_test(test_pair_signals),
        cmocka_unit_test(test_reserve_then_add_cannot_fail),
        cmocka_unit_test(test_rank_rescore),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
