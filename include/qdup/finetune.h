/*
 * finetune.h - teaching a trained model another forum: its words and its pairs.
 *
 * Fine-tuning is qd_train (train.h) started from an existing model (qd_train_opts.init)
 * instead of random weights, with settings that keep what the model knew: a few
 * epochs, a lower learning rate, small batches (a forum has a few hundred labelled
 * duplicates, not a hundred thousand), and optionally a share of the original training
 * pairs mixed in (qd_finetune_mix).
 *
 * Before training, the words of the new forum that the vocabulary lacks are added
 * (qd_finetune_extend). The starting model represented such a word by the mean of its
 * character n-gram rows; the new word's own row starts as exactly that mean. A known
 * token is the mean of its own row and its n-gram rows, so the extended model encodes
 * every text exactly as the starting model did, and only training moves the new rows
 * apart: then the word has a vector of its own. N-gram rows keep their buckets (they
 * follow the vocabulary rows, so they move down by the number of words added).
 *
 * Graded pair files (a `relevance` column, pairs.h) become duplicate labels by the
 * grades the user counts as "the same question" (qd_finetune_relabel).
 */
#ifndef QDUP_FINETUNE_H
#define QDUP_FINETUNE_H

#include <stddef.h>
#include <stdint.h>

#include "qdup/model.h"
#include "qdup/pairs.h"
#include "qdup/train.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The fine-tuning settings chosen on ../shared/data/semeval/dev.tsv (BENCHMARKS.md):
 * the default recipe's loss and negatives with fewer epochs, a lower learning rate
 * and smaller batches. The shape fields (E, H, pooling, n-grams) are not used: the
 * starting model's are kept. */
void qd_finetune_recipe(qd_train_opts *o);

/* A copy of base with every word of `words` (ids from QD_TOK_NRESERVED on) that its
 * vocabulary lacks appended, in the order of `words`, each new embedding row the mean
 * of the rows base represented the word with (see the top of the file), and keeping
 * max_tokens tokens per question (0: as many as base). The number of words added goes
 * to *added. The copy has no fingerprint until it is saved. */
int qd_finetune_extend(const qd_model *base, const qd_vocab *words, uint32_t max_tokens,
                       qd_model **out, size_t *added, char *err, size_t errlen);

/* "2", "1,2": a set of grades 0..9 as a bit mask (bit g for grade g). QD_ERR_INVAL for
 * anything else. */
/* How much better a fine-tuned epoch scores the validation pairs through the duplicate
 * head (AUC auc, MAP map) than the starting model did (auc0, map0): the smaller of the
 * two gains (the AUC's alone if the file is not graded), so that an epoch that trades
 * one measure for the other never counts as better (> 0). */
double qd_finetune_gain(double auc, double map, double auc0, double map0, int graded);

int qd_finetune_parse_grades(const char *s, unsigned *mask);

/* Labels a graded pair file: the pairs whose grade is in skip (a bit mask like mask)
 * are left out (e.g. "related" pairs, neither duplicates nor unrelated), and of the
 * others dup = 1 exactly when their grade is in mask (mask 0: dup as the file has
 * it). QD_ERR_INVAL if p has no grades. */
int qd_finetune_relabel(qd_pairs *p, unsigned mask, unsigned skip);

/* A new pair set: every pair of a, then round(share * a->n) pairs of b drawn at random
 * without replacement (all of b if it has fewer), b's question ids moved past a's
 * largest so that the two files' ids never name the same question. */
int qd_finetune_mix(const qd_pairs *a, const qd_pairs *b, double share, uint64_t seed,
                    qd_pairs **out);

/* Splits p by groups (the pairs sharing a qid1; a pair without ids is its own group)
 * into *kept and *held, each group held with probability share (decided by a hash of
 * its qid1 and seed): e.g. pairs to fine-tune the encoder on, and pairs its scoring is
 * fitted on with cosines it was not trained to raise. */
int qd_finetune_split(const qd_pairs *p, double share, uint64_t seed, qd_pairs **kept,
                      qd_pairs **held);

#ifdef __cplusplus
}
#endif

#endif
