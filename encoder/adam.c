/*
 * adam.c - Adam and gradient clipping by global norm.
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
