/*
 * train.h - training the Siamese encoder with the course's triplet loss.
 *
 * A step takes a batch of B duplicate pairs (A_i, P_i), encodes the 2B questions with
 * the one forward pass of the encoder (model.h), scores every anchor against every
 * positive (the other positives are its negatives), and follows the gradient of the
 * triplet loss back through the encoder, into an Adam step. The batch is split among
 * the threads, each with its own activations and gradients, which are summed in a
 * fixed order: a run is deterministic for a given seed and thread count.
 *
 * After each epoch the model is judged on the validation pairs (the ROC AUC of the
 * cosine similarity, or the caller's judge: qdup-train's is what its duplicate head
 * would score); the best epoch's weights are kept, and training stops early when the
 * judgement has not improved for `patience` epochs. A fine-tuning run also judges its
 * starting point, as epoch 0, so that it never keeps weights worse than the ones it
 * started from.
 */
#ifndef QDUP_TRAIN_H
#define QDUP_TRAIN_H

#include <stddef.h>
#include <stdint.h>

#include "qdup/model.h"
#include "qdup/pairs.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The loss over each batch's anchor-candidate scores. */
enum qd_loss {
    QD_LOSS_TRIPLET = 0, /* the course's triplet loss (mean and closest negative) */
    QD_LOSS_SOFTMAX = 1, /* softmax cross-entropy over the candidates (InfoNCE) */
};

typedef struct qd_train_opts {
    char recipe[32];        /* the recipe's name, for messages */
    uint32_t emb_dim;       /* E */
    uint32_t hidden;        /* H */
    uint32_t pool;          /* enum qd_pool bits */
    uint32_t min_count;     /* vocabulary: words seen at least this often in training */
    uint32_t max_tokens;    /* tokens kept per question */
    uint32_t ngram_min;     /* character n-grams: shortest (0: no n-grams) */
    uint32_t ngram_max;     /* longest */
    uint32_t ngram_buckets; /* hashed n-gram rows (0: no n-grams) */
    size_t batch;           /* duplicate pairs per step */
    int epochs;             /* passes over the duplicate pairs */
    float lr;               /* Adam step size */
    float margin;           /* triplet margin a (also the ranking loss's margin) */
    int loss;               /* enum qd_loss */
    float temperature;      /* softmax loss: scores are divided by it */
    float weight_decay;     /* Adam's L2 weight decay (0: none) */
    float dropout;          /* dropout on the token embeddings while training (0: none) */
    float lr_decay;         /* the learning rate is multiplied by this after each epoch
                               (1 or 0: constant) */
    float clip;             /* gradient clipping by global norm (0: none) */
    int symmetric;          /* 1: also each P_i as anchor against the A's */
    size_t hard_negatives;  /* labelled non-duplicate pairs added per step (0: none) */
    size_t mine_top;        /* from epoch 2, each anchor also gets a mined negative drawn
                               among its mine_top nearest training questions outside its
                               duplicate cluster (0: no mining) */
    int patience;           /* epochs without a better validation AUC before stopping */
    int threads;            /* worker threads (0: all cores) */
    const char *const *corpus; /* (ncorpus) unlabelled questions (e.g. the dump to be
                                  indexed) whose words also enter the vocabulary, or NULL */
    const size_t *corpus_lens; /* (ncorpus) their byte lengths */
    size_t ncorpus;            /* entries of corpus */
    int pretrain_epochs;    /* skip-gram pre-training of the embeddings on the training
                               questions and the corpus, in epochs (0: none) */
    uint64_t seed;          /* initialization and shuffling */
    const qd_model *init;   /* fine-tuning (finetune.h): start from this model's shape and
                               weights, its vocabulary extended with the words of the
                               training pairs and the corpus it lacks (seen min_count
                               times), instead of a new model; NULL: a new model */
    /* Judging an epoch's weights: *score, higher is better (epoch 0: the starting
     * point of a fine-tuning run). NULL: the validation pairs' cosine ROC AUC. Returns
     * 0 or a QD_ERR_* that ends training. */
    int (*judge)(const qd_model *m, int epoch, void *arg, double *score);
    void *judge_arg;        /* passed to judge */
} qd_train_opts;

/* Fills o with a named recipe: "seed" (the course's settings: E = H = 128, batch 256,
 * Adam 0.01, margin 0.25, duplicate pairs only, in-batch negatives) or "default" (what
 * the validation set says works best). QD_ERR_INVAL for an unknown name. */
int qd_train_recipe(const char *name, qd_train_opts *o);

/* What the trainer reports to its progress callback. */
typedef struct qd_train_progress {
    int epoch;            /* 1-based; 0: a fine-tuning run's starting point judged */
    int epochs;           /* planned */
    size_t step;          /* steps done in this epoch */
    size_t steps;         /* steps in an epoch */
    double loss;          /* mean loss over this epoch's steps so far */
    double pairs_per_s;   /* duplicate pairs trained per second, this epoch */
    double eta_s;         /* seconds left for the planned epochs */
    int epoch_done;       /* 1 at the end of an epoch: the fields below are set */
    double valid_auc;     /* the judgement after this epoch (validation ROC AUC without
                             a judge) */
    int best;             /* 1 if this epoch is the best so far */
} qd_train_progress;

typedef void (*qd_train_progress_fn)(const qd_train_progress *p, void *arg);

/* What a finished run measured. */
typedef struct qd_train_result {
    int epochs_run;       /* epochs actually trained */
    int best_epoch;       /* the epoch whose weights were kept (0: the starting point) */
    int stopped_early;    /* 1 if --patience epochs without a better validation AUC
                             ended training before o->epochs */
    double best_valid_auc;/* its judgement (validation AUC without a judge) */
    double last_loss;     /* mean loss of the last epoch */
    double seconds;       /* training time (validation included) */
    double pairs_per_s;   /* duplicate pairs per second over the run, validation excluded */
    size_t vocab;         /* vocabulary size, reserved ids included */
    size_t words_added;   /* fine-tuning: words added to the starting model's vocabulary */
} qd_train_result;

/* Trains a new model on train (valid and o->judge may both be NULL: then no early
 * stopping and the last epoch is kept). progress may be NULL. On success *out is the trained model (its
 * fingerprint is set when it is saved). */
int qd_train(const qd_train_opts *o, const qd_pairs *train, const qd_pairs *valid,
             qd_train_progress_fn progress, void *arg, qd_model **out,
             qd_train_result *result, char *err, size_t errlen);

/* Scores pairs with a model: cosine similarity of each pair's two vectors into scores
 * (p->n). */
int qd_score_pairs(const qd_model *m, const qd_pairs *p, int threads, float *scores);

#ifdef __cplusplus
}
#endif

#endif
