/*
 * rank.h - the fused ranking and the duplicate probability of search results.
 *
 * A search takes the `candidates` nearest stored vectors to the query (the model's
 * scoring, model.h) and re-scores them here:
 *   bm25     BM25 of the query against the candidate's text, with the collection's
 *            term statistics (lex.h) and the model's k1 and b
 *   lexical  bm25 / the best bm25 among the candidates, so 0..1 (1 for the best
 *            lexical match; 0 for all when none shares a term with the query)
 *   score    a * cosine + (1 - a) * lexical with the model's fusion weight a; in
 *            cosine mode (QD_RANK_COSINE) the cosine alone
 *   p        P(duplicate) from the model's head (head.h) over the cosine and the pair
 *            signals; 1 for a candidate with the query's very token sequence (a repost)
 * and sorts them by score, best first (ties: higher cosine, then the order given); a
 * repost comes before everything else, and in fused mode its score is 1.
 * The daemon, qdup-index search and qdup-eval all rank through qd_rank_rescore.
 */
#ifndef QDUP_RANK_H
#define QDUP_RANK_H

#include <stddef.h>

#include "qdup/lex.h"
#include "qdup/model.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum qd_rank_mode {
    QD_RANK_FUSED = 0,  /* the fused score (the default) */
    QD_RANK_COSINE = 1, /* the encoder's cosine alone */
} qd_rank_mode;

/* One candidate: the caller fills the inputs, qd_rank_rescore the outputs. */
typedef struct qd_rank_cand {
    const qd_lex_doc *doc; /* in: the candidate's terms */
    float cosine;          /* in: its cosine with the query */
    int identical;         /* in: 1 if its token sequence is the query's (a repost) */
    size_t index;          /* in: the caller's index, carried through the sort */
    float bm25;            /* out: BM25 of the query against it */
    float lexical;         /* out: bm25 / the best bm25 among the candidates, 0..1 */
    float score;           /* out: the ranking score */
    float p;               /* out: P(duplicate) */
} qd_rank_cand;

/* The fused score. */
static inline float qd_rank_fuse(float a, float cosine, float lexical)
{
    return a * cosine + (1.0f - a) * lexical;
}

/* Re-scores and sorts n candidates of the query q (terms) as described above; p is
 * computed for the first k after the sort only (the results returned), the others get
 * 0. 0 or QD_ERR_NOMEM (c unchanged). */
int qd_rank_rescore(const qd_model_scoring *sc, const qd_lex_stats *st, const qd_lex_doc *q,
                    qd_rank_mode mode, qd_rank_cand *c, size_t n, size_t k);

/* Parses "fused" or "cosine"; QD_ERR_INVAL otherwise. */
int qd_rank_mode_parse(const char *s, qd_rank_mode *out);
const char *qd_rank_mode_name(qd_rank_mode m);

#ifdef __cplusplus
}
#endif

#endif
