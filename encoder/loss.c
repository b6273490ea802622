/*
 * loss.c - the triplet loss of the course, with in-batch (and extra) negatives.
 *
 * See train_impl.h for the definition. The "closest negative" follows the course's
 * code rather than its prose: it is the row maximum of S' - 2M, where M masks the
 * diagonal and every negative scoring above the positive, so a row whose negatives all
 * score above its positive takes max(S_ij - 2) and contributes (almost always) nothing
 * to that term. Its gradient goes to the one entry that attains the maximum (the first
 * on ties), as autograd's max does.
 */
#include <math.h>
#include <string.h>

#include "lstm_impl.h"
#include "train_impl.h"

float qd_triplet_loss(const float *A, const float *C, size_t B, size_t K, size_t H,
                      float margin, float *S, float *dA, float *dC)
{
    qd_gemm(0, 1, B, K, H, 1.0f, A, H, C, H, 0.0f, S, K);
    double total = 0;
    float inv_b = 1.0f / (float)B, inv_neg = K > 1 ? 1.0f / (float)(K - 1) : 0.0f;
    /* S becomes dL/dS row by row once the row's loss is known. */
    for (size_t i = 0; i < B; i++) {
        float *row = S + i * K;
        float pos = row[i];
        double sum = 0;
        size_t arg = i;
        float best = -2.0f; /* the diagonal's entry of S' - 2M */
        for (size_t j = 0; j < K; j++) {
            if (j == i)
                continue;
            sum += row[j];
            float v = row[j] > pos ? row[j] - 2.0f : row[j];
            if (v > best || (v == best && j < arg)) {
                best = v;
                arg = j;
            }
        }
        float mean_neg = (float)(sum * inv_neg);
        float l1 = margin - pos + mean_neg, l2 = margin - pos + best;
        int act1 = l1 > 0, act2 = l2 > 0;
        total += (act1 ? l1 : 0) + (act2 ? l2 : 0);
        if (!dA && !dC)
            continue;
        float g_mean = act1 ? inv_b * inv_neg : 0.0f;
        for (size_t j = 0; j < K; j++)
            row[j] = g_mean;
        row[i] = -(float)(act1 + act2) * inv_b;
        if (act2 && arg != i)
            row[arg] += inv_b;
    }
    if (dA)
        qd_gemm(0, 0, B, H, K, 1.0f, S, K, C, H, 0.0f, dA, H);
    if (dC)
        qd_gemm(1, 0, K, H, B, 1.0f, S, K, A, H, 0.0f, dC, H);
    return (float)(total * inv_b);
}

float qd_rank_loss(const float *pos, size_t B, const float *neg, size_t M, float margin,
                   float *dpos, float *dneg)
{
    memset(dpos, 0, B * sizeof *dpos);
    memset(dneg, 0, M * sizeof *dneg);
    if (B == 0 || M == 0)
        return 0;
    double total = 0;
    float w = 1.0f / ((float)B * (float)M);
    for (size_t i = 0; i < B; i++)
        for (size_t m = 0; m < M; m++) {
            float l = margin - pos[i] + neg[m];
            if (l > 0) {
                total += l;
                dpos[i] -= w;
                dneg[m] += w;
            }
        }
    return (float)(total * w);
}

float qd_infonce_loss(const float *A, const float *C, size_t B, size_t K, size_t H,
                      float temperature, float *S, float *dA, float *dC)
{
    qd_gemm(0, 1, B, K, H, 1.0f, A, H, C, H, 0.0f, S, K);
    double total = 0;
    float inv_t = 1.0f / temperature, inv_b = 1.0f / (float)B;
    for (size_t i = 0; i < B; i++) {
        float *row = S + i * K;
        float mx = row[0];
        for (size_t j = 1; j < K; j++)
            mx = row[j] > mx ? row[j] : mx;
        double z = 0;
        for (size_t j = 0; j < K; j++)
            z += exp((double)(row[j] - mx) * inv_t);
        total += log(z) - (double)(row[i] - mx) * inv_t;
        /* dL/dS_ij = (softmax_ij - [i == j]) / (temperature B) */
        for (size_t j = 0; j < K; j++)
            row[j] = (float)(exp((double)(row[j] - mx) * inv_t) / z) * inv_t * inv_b;
        row[i] -= inv_t * inv_b;
    }
    if (dA)
        qd_gemm(0, 0, B, H, K, 1.0f, S, K, C, H, 0.0f, dA, H);
    if (dC)
        qd_gemm(1, 0, K, H, B, 1.0f, S, K, A, H, 0.0f, dC, H);
    return (float)(total * inv_b);
}
