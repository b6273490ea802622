/*
 * pretrain_impl.h - skip-gram pre-training of the embedding table (pretrain.c).
 */
#ifndef QDUP_PRETRAIN_IMPL_H
#define QDUP_PRETRAIN_IMPL_H

#include <stdint.h>

#include "qdup/model.h"
#include "qdup/tok.h"

typedef struct qd_pretrain_opts {
    int epochs;     /* passes over the text */
    int window;     /* largest context window each side */
    int negatives;  /* negative words per context word */
    float lr;       /* starting learning rate, decayed linearly to nearly 0 */
    float scale;    /* standard deviation the vectors are rescaled to */
    uint64_t seed;  /* random draws */
} qd_pretrain_opts;

/* Overwrites m's embedding rows (all but the pad row) with skip-gram vectors learned
 * from the questions in s (as embedding rows, tokenized with m's vocabulary). */
int qd_pretrain(qd_model *m, const qd_tokseqs *s, const qd_pretrain_opts *o);

#endif
