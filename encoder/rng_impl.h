/*
 * rng_impl.h - seeded random numbers for training (rng.c): xoshiro256** seeded by
 * splitmix64, the same stream on every machine. Shared by the trainer, the miner,
 * pre-training and the tests; not part of the public API.
 */
#ifndef QDUP_RNG_IMPL_H
#define QDUP_RNG_IMPL_H

#include <stddef.h>
#include <stdint.h>

/* xoshiro256** seeded by splitmix64: fast, and the same stream on every machine. */
typedef struct qd_rng {
    uint64_t s[4]; /* state */
} qd_rng;

void qd_rng_seed(qd_rng *r, uint64_t seed);
uint64_t qd_rng_next(qd_rng *r);
/* Uniform in [0, 1). */
double qd_rng_uniform(qd_rng *r);
/* Standard normal (Box-Muller). */
double qd_rng_normal(qd_rng *r);
/* Uniform integer in [0, n). */
uint64_t qd_rng_below(qd_rng *r, uint64_t n);
/* Fisher-Yates shuffle of n uint32_t. */
void qd_rng_shuffle(qd_rng *r, uint32_t *v, size_t n);

#endif
