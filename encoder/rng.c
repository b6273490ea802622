/*
 * rng.c - the trainer's random numbers (rng_impl.h): xoshiro256** seeded by
 * splitmix64, so that a seed gives the same stream on every machine, and the few
 * draws training needs (uniform, normal, below n, shuffle) built on it.
 */
#include <math.h>

#include "rng_impl.h"

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

void qd_rng_seed(qd_rng *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

uint64_t qd_rng_next(qd_rng *r)
{
    uint64_t *s = r->s;
    uint64_t out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return out;
}

double qd_rng_uniform(qd_rng *r)
{
    return (double)(qd_rng_next(r) >> 11) * 0x1.0p-53;
}

double qd_rng_normal(qd_rng *r)
{
    double u1 = qd_rng_uniform(r), u2 = qd_rng_uniform(r);
    if (u1 < 1e-300)
        u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

uint64_t qd_rng_below(qd_rng *r, uint64_t n)
{
    /* Rejection keeps it unbiased. */
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do
        x = qd_rng_next(r);
    while (x >= limit);
    return x % n;
}

void qd_rng_shuffle(qd_rng *r, uint32_t *v, size_t n)
{
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)qd_rng_below(r, i);
        uint32_t t = v[i - 1];
        v[i - 1] = v[j];
        v[j] = t;
    }
}
