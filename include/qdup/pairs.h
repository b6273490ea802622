/*
 * pairs.h - labelled question pairs (train/valid/test.tsv) and the pair metrics.
 *
 * A pair file has the columns of the Quora release, found by name in its header:
 * question1, question2 and is_duplicate (qid1 and qid2 are used when present, to know
 * which questions are the same). The shared split files are plain TSV; quoted files
 * (the original release: RFC 4180 quoting with tab as delimiter, fields spanning lines)
 * are recognized and read by the rules of the dump readers (dump.h, quoting AUTO).
 * A graded file (../shared/data/semeval) adds a column `relevance`, one digit per pair.
 */
#ifndef QDUP_PAIRS_H
#define QDUP_PAIRS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct qd_pairs {
    size_t n;          /* pairs */
    const char **q1;   /* (n) first questions, NUL-terminated, in the arena */
    const char **q2;   /* (n) second questions */
    size_t *len1;      /* (n) byte lengths of q1 */
    size_t *len2;      /* (n) byte lengths of q2 */
    uint8_t *dup;      /* (n) 1 if the pair is labelled a duplicate */
    int64_t *qid1;     /* (n) question ids, or -1 when the file has none */
    int64_t *qid2;     /* (n) */
    int8_t *grade;     /* (n) the graded files' 7th column `relevance` (0 .. 9, e.g. SemEval's
                          2 PerfectMatch, 1 Relevant, 0 Irrelevant), or NULL without one */
    size_t skipped;    /* malformed rows skipped while loading */
    char *arena;       /* every text, back to back */
} qd_pairs;

/* Loads a pair file. Malformed rows are skipped and counted (the first few are
 * reported through warn(msg, arg) if warn is not NULL, as "file:line: reason"); a file
 * that cannot be read or has no usable header fails, with err naming it. */
int qd_pairs_load(const char *path, void (*warn)(const char *msg, void *arg), void *arg,
                  qd_pairs **out, char *err, size_t errlen);
void qd_pairs_free(qd_pairs *p);

/* A question id as the Quora files write it: 1 to 18 decimal digits, nothing else.
 * Returns 0 with the value in *out, or -1. */
int qd_pairs_parse_qid(const char *s, size_t n, int64_t *out);

/* --- metrics -------------------------------------------------------------------------- */

/* Area under the ROC curve of scores against labels (ties count one half). */
double qd_pairs_auc(const float *scores, const uint8_t *labels, size_t n);
/* Fraction of pairs classified right when "duplicate" means score > threshold. */
double qd_pairs_accuracy_at(const float *scores, const uint8_t *labels, size_t n,
                            double threshold);
/* The threshold maximizing accuracy (midpoint between neighbouring scores); its
 * accuracy in *acc. */
double qd_pairs_best_threshold(const float *scores, const uint8_t *labels, size_t n,
                               double *acc);
/* Mean average precision as SemEval-2016 Task 3 scores it: the pairs sharing a group
 * (qid1) are one ranked list, by score best first (ties in file order); a pair is
 * relevant when grade >= min_grade; the mean is over the groups with at least one
 * relevant pair, whose count goes to *ngroups if not NULL (0 groups: MAP 0). */
double qd_pairs_map(const float *scores, const int64_t *group, const int8_t *grade, size_t n,
                    int min_grade, size_t *ngroups);

#ifdef __cplusplus
}
#endif

#endif
