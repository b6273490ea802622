/*
 * mine_impl.h - hard-negative mining for the trainer (mine.c). Not public.
 */
#ifndef QDUP_MINE_IMPL_H
#define QDUP_MINE_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include "qdup/model.h"
#include "qdup/pairs.h"

#define QD_MINE_NONE UINT32_MAX  /* no mined negative (yet) */
#define QD_MINE_MAX_TOP 64       /* largest `top` */
#define QD_MINE_MAX_THREADS 64

typedef struct qd_miner {
    size_t top;           /* a negative is drawn among this many nearest questions */
    size_t nseq;          /* training questions: 2 per pair */
    uint32_t *cluster;    /* (nseq) duplicate cluster of each training question */
    size_t npool;         /* distinct training questions */
    uint32_t *pool;       /* (npool) one training question index per distinct question */
    uint32_t *pool_of;    /* (nseq) pool position of each training question */
    const char **texts;   /* (npool) their texts, borrowed from the pairs */
    size_t *lens;         /* (npool) their lengths */
    float *vec;           /* (npool, D) their vectors under the current weights */
    uint32_t *mined;      /* (pairs) training question index of each duplicate pair's
                             mined negative, or QD_MINE_NONE */
} qd_miner;

/* Clusters and the pool of distinct questions from the training pairs. */
int qd_miner_init(qd_miner *mn, const qd_pairs *train, size_t top);
void qd_miner_free(qd_miner *mn);

/* Encodes the pool with m and mines a negative for every anchor of dups (pair
 * indices), on nthreads threads (qd_parallel_for; 0: one per core). The draws depend
 * only on seed and the pair. */
int qd_miner_mine(qd_miner *mn, const qd_model *m, const uint32_t *dups, size_t ndups,
                  uint64_t seed, int nthreads);

#endif
