/*
 * eval_impl.h - the parts of qdup-eval that tests check on their own (tests/test_eval.c):
 * scoring ranked result lists, and the BM25 baseline.
 *
 * Retrieval as ../shared/data/quora/README.md describes it: every question of the dump
 * is indexed, a test question is the query, its own entry is taken out of the results
 * (by id), and what is measured is where its duplicate lands among the rest:
 * Recall@1, Recall@10 and MRR@10 (1/rank when the duplicate is in the first 10, else 0,
 * averaged over the queries).
 *
 * The BM25 baseline is SQLite's FTS5 with its bm25() ranking function: an in-memory
 * database, one FTS5 table with the unicode61 tokenizer (case folded, diacritics
 * removed; a token is a run of letters, digits and private-use characters), results
 * ORDER BY bm25() (then by id, so that ties are stable). FTS5 fixes BM25's parameters at
 * k1 = 1.2 and b = 0.75. A question becomes an FTS5 query as the OR of its distinct
 * terms, each a double-quoted string, so that nothing the question holds (quotes,
 * parentheses, stars, colons, the words AND, OR, NOT, NEAR) can change the query's
 * meaning or make it a syntax error.
 */
#ifndef QDUP_EVAL_IMPL_H
#define QDUP_EVAL_IMPL_H

#include <stddef.h>
#include <stdint.h>

/* Retrieval results accumulated over queries. */
typedef struct qd_eval_retr {
    size_t queries;  /* queries scored */
    size_t hits1;    /* queries whose target ranked first */
    size_t hits10;   /* queries whose target ranked in the first 10 */
    double rr10;     /* sum over queries of 1/rank, for ranks 1..10 */
} qd_eval_retr;

/* The 1-based rank of `target` in ids[0..k) (best first) once every entry equal to
 * `self` is taken out, or 0 if it is not there. Entries of -1 (FAISS's empty slots) are
 * skipped too. */
size_t qd_eval_rank(const int64_t *ids, size_t k, int64_t self, int64_t target);

/* Adds one query whose target has `rank` (0: not found). */
void qd_eval_retr_add(qd_eval_retr *r, size_t rank);

/* Recall@1, Recall@10 and MRR@10 (0 when there were no queries). */
double qd_eval_recall1(const qd_eval_retr *r);
double qd_eval_recall10(const qd_eval_retr *r);
double qd_eval_mrr10(const qd_eval_retr *r);

/* --- the BM25 baseline -------------------------------------------------------------- */

/* BM25's parameters as FTS5's bm25() fixes them. */
#define QD_BM25_K1 1.2
#define QD_BM25_B 0.75

/* Builds the FTS5 query for a question: its distinct terms (runs of letters, digits
 * and private-use characters; distinct after case folding and removing marks), each
 * double-quoted, joined by " OR ". Invalid UTF-8 separates terms. *out is a fresh
 * NUL-terminated string (qd_free it), "" when the question has no terms; *nterms (if
 * not NULL) the number of terms. QD_ERR_NOMEM on failure. */
int qd_bm25_query(const char *text, size_t len, char **out, size_t *nterms);

/* An in-memory FTS5 index of questions. */
typedef struct qd_bm25 qd_bm25;

/* Opens an empty index. err says why SQLite refused (e.g. no FTS5 in this build). */
int qd_bm25_open(qd_bm25 **out, char *err, size_t errlen);
/* Indexes n questions texts[i] (lens[i] bytes) under ids[i], in one transaction.
 * QD_ERR_DB on failure (qd_bm25_errmsg says why). */
int qd_bm25_add(qd_bm25 *b, const int64_t *ids, const char *const *texts, const size_t *lens,
                size_t n);
/* The k best matches of a question, best first: ids (k) and, if scores is not NULL,
 * their bm25() values (k; lower is better, as FTS5 has it); *found of them are set. A
 * question with no terms finds nothing. */
int qd_bm25_search(qd_bm25 *b, const char *text, size_t len, size_t k, int64_t *ids,
                   double *scores, size_t *found);
/* Detail of the last failure ("" if none). */
const char *qd_bm25_errmsg(const qd_bm25 *b);
void qd_bm25_close(qd_bm25 *b);

#endif
