/*
 * adam.c - Adam, gradient clipping by global norm, and the trainer's random numbers.
 *
 * Adam follows torch.optim.Adam step for step (bias corrections computed from the step
 * count, eps added after the square root), so that one step can be checked against
 * PyTorch to float precision.
 */
#include <math.h>
#include <string.h>

#include "qdup/common.h"
#include "model_impl.h"
#include "train_impl.h"

int qd_adam_init(qd_adam *a, size_t n, float lr)
{
    memset(a, 0, sizeof *a);
    a->lr = lr;
    a->beta1 = 0.9;
    a->beta2 = 0.999;
    a->eps = 1e-8f;
    a->n = n;
    a->m = qd_calloc(n, sizeof *a->m);
    a->v = qd_calloc(n, sizeof *a->v);
    if (!a->m || !a->v) {
        qd_adam_free(a);
        return QD_ERR_NOMEM;
    }
    return 0;
}

void qd_adam_free(qd_adam *a)
{
    if (!a)
        return;
    qd_free(a->m);
    qd_free(a->v);
    a->m = a->v = NULL;
}

void qd_adam_begin(qd_adam *a)
{
    a->step++;
    /* Bias corrections in double, as PyTorch computes them in Python floats. */
    a->step_size = (float)(a->lr / (1.0 - pow(a->beta1, (double)a->step)));
    a->bc2 = (float)sqrt(1.0 - pow(a->beta2, (double)a->step));
}

/* Vectorizes (adam.c is built with -O3 -fno-math-errno: sqrtf as one instruction);
 * the same IEEE operations in the same order as the scalar loop, so the same bits. */
QD_CLONES void qd_adam_update(const qd_adam *a, float *restrict p, const float *restrict grad,
                              size_t lo, size_t hi)
{
    float b1 = (float)a->beta1, b2 = (float)a->beta2, wd = a->weight_decay, eps = a->eps;
    float step = a->step_size, bc2 = a->bc2;
    float *restrict m = a->m, *restrict v = a->v;
    for (size_t i = lo; i < hi; i++) {
        float g = grad[i] + wd * p[i];
        m[i] = b1 * m[i] + (1.0f - b1) * g;
        v[i] = b2 * v[i] + (1.0f - b2) * g * g;
        p[i] -= step * m[i] / (sqrtf(v[i]) / bc2 + eps);
    }
}

void qd_adam_step(qd_adam *a, float *p, const float *grad)
{
    qd_adam_begin(a);
    qd_adam_update(a, p, grad, 0, a->n);
}

double qd_clip_grad_norm(float *grad, size_t n, double max_norm)
{
    double ss = 0;
    for (size_t i = 0; i < n; i++)
        ss += (double)grad[i] * grad[i];
    double norm = sqrt(ss);
    if (max_norm > 0 && norm > max_norm) {
        float scale = (float)(max_norm / (norm + 1e-6));
        for (size_t i = 0; i < n; i++)
            grad[i] *= scale;
    }
    return norm;
}

/* --- random numbers ----------------------------------------------------------------------- */

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
