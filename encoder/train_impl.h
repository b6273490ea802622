/*
 * train_impl.h - the pieces of training below the trainer: the triplet loss, Adam
 * and gradient clipping (and, through rng_impl.h, the seeded random numbers). Shared
 * by train.c and the tests; not part of the public API.
 */
#ifndef QDUP_TRAIN_IMPL_H
#define QDUP_TRAIN_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include "rng_impl.h"

/* --- the triplet loss of the course ---------------------------------------------------- */

/* Loss over a batch of B anchors A (B, H) and K >= B candidates C (K, H), all unit
 * vectors: C_i is the duplicate of A_i for i < B, every other candidate is a negative
 * of A_i (the other positives, then K - B extra negatives, e.g. labelled
 * non-duplicates). With S = A C^T and for each row i:
 *   mean_neg_i = sum_{j != i} S_ij / (K - 1)
 *   closest_i  = max_j (S'_ij - 2 M_ij), S' = S with its diagonal zeroed, M_ij = 1 on the
 *                diagonal and where S'_ij > S_ii: the largest negative below the
 *                positive, computed as the course's code does
 *   loss_i     = max(0, a - S_ii + mean_neg_i) + max(0, a - S_ii + closest_i)
 * and the loss is the mean of loss_i. With K == B this is the course's TripletLoss.
 * Writes dL/dA into dA (B, H) and dL/dC into dC (K, H) (overwritten, not added) when
 * they are not NULL; S is scratch of (B, K). Returns the loss. */
float qd_triplet_loss(const float *A, const float *C, size_t B, size_t K, size_t H,
                      float margin, float *S, float *dA, float *dC);

/* The softmax (InfoNCE) loss over the same scores: row i is a classification of A_i's
 * positive C_i among all K candidates, loss = mean_i -log softmax(S_i / temperature)_i.
 * Same arguments and outputs as qd_triplet_loss. */
float qd_infonce_loss(const float *A, const float *C, size_t B, size_t K, size_t H,
                      float temperature, float *S, float *dA, float *dC);

/* --- optimization ------------------------------------------------------------------------ */

/* Adam as PyTorch's torch.optim.Adam (L2 weight decay added to the gradient, as its
 * weight_decay does), over one contiguous parameter buffer. */
typedef struct qd_adam {
    float lr;           /* step size */
    double beta1, beta2; /* moment decay rates */
    float eps;          /* added to sqrt(v_hat) */
    float weight_decay; /* L2 coefficient (0: none) */
    long step;          /* steps taken */
    float step_size;    /* this step's lr / (1 - beta1^step) (qd_adam_begin) */
    float bc2;          /* this step's sqrt(1 - beta2^step) */
    size_t n;           /* parameters */
    float *m;           /* (n) first moments */
    float *v;           /* (n) second moments */
} qd_adam;

int qd_adam_init(qd_adam *a, size_t n, float lr);
void qd_adam_free(qd_adam *a);
/* One update of params (n) with gradients grad (n). */
void qd_adam_step(qd_adam *a, float *params, const float *grad);
/* The same in parts, for several threads: qd_adam_begin() counts the step, then
 * qd_adam_update() on disjoint ranges [lo, hi) covering 0 .. n, in any order or at
 * once, gives what qd_adam_step() does. */
void qd_adam_begin(qd_adam *a);
void qd_adam_update(const qd_adam *a, float *params, const float *grad, size_t lo, size_t hi);

/* Scales grad (n) so its L2 norm is at most max_norm, as torch.nn.utils.clip_grad_norm_
 * does; returns the norm before clipping. */
double qd_clip_grad_norm(float *grad, size_t n, double max_norm);

/* --- ranking duplicates above labelled non-duplicates ----------------------------------- */

/* For B duplicate-pair cosines pos and M non-duplicate-pair cosines neg:
 *   loss = mean_{i,m} max(0, a - pos_i + neg_m)
 * so that every labelled duplicate scores above every labelled non-duplicate by the
 * margin (a surrogate of the ROC AUC). Writes dL/dpos and dL/dneg (overwritten) and
 * returns the loss. */
float qd_rank_loss(const float *pos, size_t B, const float *neg, size_t M, float margin,
                   float *dpos, float *dneg);
#endif
