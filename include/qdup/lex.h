/*
 * lex.h - the lexical side of matching: a question's terms, the term statistics of a
 * collection, BM25 and the cheap pair signals the duplicate head reads.
 *
 * Terms. A question's terms are its word tokens as the tokenizer makes them
 * (qd_tok_split: case folded, compatibility decomposed; tok.h), punctuation and symbol
 * tokens left out: a token is a word when its first code point is a letter, a mark or
 * a digit. A term is kept as a 64-bit hash of its bytes (never 0), so that a question
 * is a short sorted array of integers and two questions are compared by merging two
 * arrays, with no string compared and nothing allocated (a collision of two words is a
 * 1 in 2^64 event per pair of words). A qd_lex_doc is a question's distinct terms in
 * ascending order, each with its count, and its length (word tokens in all).
 *
 * Statistics. BM25 needs, for the collection searched, the number of questions N, the
 * mean length and each term's document frequency df (in how many questions it
 * occurs). qd_lex_stats keeps them in memory and changes with each question added or
 * removed; it is rebuilt from the stored texts when a store opens. A term whose df
 * falls to 0 keeps its (empty) slot: the table only grows.
 *
 * BM25, the Okapi form with Lucene's non-negative IDF:
 *   idf(t)       = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))
 *   bm25(q, d)   = sum over the distinct terms t of q that occur in d of
 *                  idf(t) * tf(t,d) * (k1 + 1) / (tf(t,d) + k1 * (1 - b + b * |d| / avglen))
 * Each distinct query term counts once (as in the FTS5 baseline of qdup-eval), whatever
 * its count in the query.
 *
 * Pair signals (qd_lex_pair_signals), all in [0, 1]: the Jaccard index of the two term
 * sets; the IDF-weighted share of q's terms found in d (sum of idf over shared terms
 * divided by the sum over q's), the same from d's side, and the mean of those two.
 * A question with no terms shares nothing: its signals are 0.
 */
#ifndef QDUP_LEX_H
#define QDUP_LEX_H

#include <stddef.h>
#include <stdint.h>

#include "qdup/tok.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A question's terms (see above). term and tf live in one allocation owned by the doc
 * (qd_lex_doc_free); a doc with no terms owns nothing. */
typedef struct qd_lex_doc {
    uint64_t *term; /* (n) distinct term hashes, ascending; NULL when n == 0 */
    uint32_t *tf;   /* (n) occurrences of each term (in the same allocation) */
    uint32_t n;     /* distinct terms */
    uint32_t len;   /* word tokens in all (BM25's document length) */
} qd_lex_doc;

/* The terms of text[0..len) into *out, splitting with tb (scratch, one per thread).
 * 0, QD_ERR_NOMEM or QD_ERR_RANGE (from the tokenizer); on failure *out is empty. */
int qd_lex_doc_make(qd_tokbuf *tb, const char *text, size_t len, qd_lex_doc *out);
void qd_lex_doc_free(qd_lex_doc *d);
/* The term hash of one token's bytes (for tests and other implementations). */
uint64_t qd_lex_term_hash(const char *s, size_t n);
/* 1 if the token s[0..n) is a word (first code point a letter, mark or digit). */
int qd_lex_is_word(const char *s, size_t n);

/* --- collection statistics --------------------------------------------------------- */

typedef struct qd_lex_stats qd_lex_stats;

qd_lex_stats *qd_lex_stats_new(void);
void qd_lex_stats_free(qd_lex_stats *st);
/* Makes room for `extra` terms not yet in the table, so that the adds that follow
 * (of docs with that many new distinct terms in all) cannot fail. 0 or QD_ERR_NOMEM. */
int qd_lex_stats_reserve(qd_lex_stats *st, size_t extra);
/* Counts one question in (df of each of its terms + 1, N + 1, total length + len).
 * QD_ERR_NOMEM (nothing counted) only when the table has to grow and cannot. */
int qd_lex_stats_add(qd_lex_stats *st, const qd_lex_doc *d);
/* Counts a question out that was counted in before. Never fails. */
void qd_lex_stats_remove(qd_lex_stats *st, const qd_lex_doc *d);
/* How many of d's terms the table lacks (what qd_lex_stats_reserve needs for it). */
size_t qd_lex_stats_missing(const qd_lex_stats *st, const qd_lex_doc *d);
uint32_t qd_lex_stats_df(const qd_lex_stats *st, uint64_t term);
/* Questions counted (N). */
uint64_t qd_lex_stats_ndocs(const qd_lex_stats *st);
/* Mean length of the questions counted (1 when there are none, so BM25 stays finite). */
double qd_lex_stats_avglen(const qd_lex_stats *st);

/* --- scoring ----------------------------------------------------------------------- */

/* BM25's two parameters. */
typedef struct qd_bm25_params {
    float k1; /* term frequency saturation (>= 0) */
    float b;  /* length normalization, 0..1 */
} qd_bm25_params;

double qd_lex_idf(const qd_lex_stats *st, uint64_t term);

/* A query prepared for scoring many candidates: its doc, the idf of each of its terms
 * and the collection's mean length, all read once. Borrows q (keep it alive). */
typedef struct qd_lex_query {
    const qd_lex_doc *q; /* the query's terms */
    double *idf;         /* (q->n) idf of each term */
    double idf_sum;      /* sum of idf over the query's terms */
    double avglen;       /* the collection's mean length */
    qd_bm25_params p;    /* BM25's parameters */
} qd_lex_query;

/* 0 or QD_ERR_NOMEM. */
int qd_lex_query_init(qd_lex_query *lq, const qd_lex_stats *st, const qd_lex_doc *q,
                      qd_bm25_params p);
void qd_lex_query_free(qd_lex_query *lq);
/* BM25 of the prepared query against one candidate. */
double qd_lex_bm25(const qd_lex_query *lq, const qd_lex_doc *d);

/* Pair signals, in this order in out[QD_LEX_NSIGNALS]. */
enum {
    QD_LEX_JACCARD = 0, /* |q & d| / |q | d| over distinct terms */
    QD_LEX_IDF_Q,       /* idf of the shared terms / idf of q's terms */
    QD_LEX_IDF_D,       /* idf of the shared terms / idf of d's terms */
    QD_LEX_IDF_MEAN,    /* the mean of the two */
    QD_LEX_NSIGNALS
};
void qd_lex_pair_signals(const qd_lex_stats *st, const qd_lex_doc *q, const qd_lex_doc *d,
                         float out[QD_LEX_NSIGNALS]);

/* The same with q's idf values given (qidf[i] for q->term[i], as a qd_lex_query holds
 * them; NULL: looked up), so that the results of one query do not look them up again. */
void qd_lex_pair_signals_idf(const qd_lex_stats *st, const qd_lex_doc *q, const double *qidf,
                             const qd_lex_doc *d, float out[QD_LEX_NSIGNALS]);

#ifdef __cplusplus
}
#endif

#endif
