/*
 * pretrain.c - word vectors pre-trained on unlabelled questions, to start the encoder's
 * embedding table from something better than noise.
 *
 * Skip-gram with negative sampling, with the encoder's own token representation as the
 * input side (the mean of the token's embedding rows: its word row and its hashed
 * character n-gram rows), as fastText does: each token predicts the words around it
 * (a window of 1..window tokens each side, drawn per token) against `negatives` words
 * drawn from the unigram distribution raised to 0.75. A word never seen in labelled
 * pairs, or never seen at all, still gets a vector shaped by its n-grams and contexts.
 *
 * One thread and one seeded generator: the result is reproducible.
 */
#include <math.h>
#include <string.h>

#include "model_impl.h"
#include "pretrain_impl.h"
#include "qdup/common.h"
#include "train_impl.h"

#define NEG_TABLE 1000000

static float sigmoidf(float x)
{
    if (x > 12)
        return 1;
    if (x < -12)
        return 0;
    return 1.0f / (1.0f + expf(-x));
}

/* The word id of token t (its first row when that row is a word: rows past the
 * vocabulary are n-grams), or -1 for a token known only by its n-grams. */
static int32_t word_of(const qd_tokseqs *s, size_t t, int32_t V)
{
    int32_t r = s->rows[s->toff[t]];
    return (r >= QD_TOK_NRESERVED && r < V) ? r : -1;
}

int qd_pretrain(qd_model *m, const qd_tokseqs *s, const qd_pretrain_opts *o)
{
    int32_t V = (int32_t)m->hdr.vocab;
    size_t E = m->hdr.emb_dim;
    float *outv = qd_calloc((size_t)V, E * sizeof *outv);
    float *grad = qd_mallocarray(E, sizeof *grad);
    float *u = qd_mallocarray(E, sizeof *u);
    int32_t *table = qd_mallocarray(NEG_TABLE, sizeof *table);
    double *count = qd_calloc((size_t)V, sizeof *count);
    if (!outv || !grad || !u || !table || !count) {
        qd_free(outv);
        qd_free(grad);
        qd_free(u);
        qd_free(table);
        qd_free(count);
        return QD_ERR_NOMEM;
    }
    qd_rng rng;
    qd_rng_seed(&rng, o->seed);

    /* Input rows start small and random, as word2vec's do. */
    float *emb = m->p.emb;
    size_t R = qd_model_rows(&m->hdr);
    for (size_t i = E; i < R * E; i++)
        emb[i] = (float)((qd_rng_uniform(&rng) - 0.5) / (double)E);

    /* Negative sampling table: unigram counts ^ 0.75. */
    for (size_t t = 0; t < s->ntok; t++) {
        int32_t w = word_of(s, t, V);
        if (w >= 0)
            count[w] += 1;
    }
    double total = 0;
    for (int32_t w = 0; w < V; w++)
        total += pow(count[w], 0.75);
    if (total <= 0) {
        qd_free(outv);
        qd_free(grad);
        qd_free(u);
        qd_free(table);
        qd_free(count);
        return 0; /* no known words: nothing to learn from */
    }
    int32_t w = 0;
    double acc = pow(count[0], 0.75) / total;
    for (size_t i = 0; i < NEG_TABLE; i++) {
        table[i] = w;
        if ((double)(i + 1) / NEG_TABLE > acc && w < V - 1) {
            w++;
            acc += pow(count[w], 0.75) / total;
        }
    }

    size_t steps = (size_t)o->epochs * s->ntok, done = 0;
    for (int epoch = 0; epoch < o->epochs; epoch++) {
        for (size_t q = 0; q < s->n; q++) {
            size_t t0 = s->qoff[q], t1 = s->qoff[q + 1];
            for (size_t t = t0; t < t1; t++, done++) {
                float lr = o->lr * (1.0f - (float)done / (float)(steps + 1));
                if (lr < o->lr * 1e-4f)
                    lr = o->lr * 1e-4f;
                /* The input: the mean of the token's rows. */
                uint32_t r0 = s->toff[t], r1 = s->toff[t + 1];
                memset(u, 0, E * sizeof *u);
                for (uint32_t r = r0; r < r1; r++) {
                    const float *e = emb + (size_t)s->rows[r] * E;
                    for (size_t k = 0; k < E; k++)
                        u[k] += e[k];
                }
                float inv = 1.0f / (float)(r1 - r0);
                for (size_t k = 0; k < E; k++)
                    u[k] *= inv;
                size_t win = 1 + (size_t)qd_rng_below(&rng, (uint64_t)o->window);
                size_t c0 = t >= t0 + win ? t - win : t0, c1 = t + win + 1 < t1 ? t + win + 1 : t1;
                memset(grad, 0, E * sizeof *grad);
                for (size_t c = c0; c < c1; c++) {
                    int32_t target = c == t ? -1 : word_of(s, c, V);
                    if (target < 0)
                        continue;
                    for (int d = 0; d <= o->negatives; d++) {
                        int32_t tw = target;
                        float label = 1;
                        if (d > 0) {
                            tw = table[qd_rng_below(&rng, NEG_TABLE)];
                            if (tw == target)
                                continue;
                            label = 0;
                        }
                        float *ov = outv + (size_t)tw * E;
                        float dot = 0;
                        for (size_t k = 0; k < E; k++)
                            dot += u[k] * ov[k];
                        float g = (label - sigmoidf(dot)) * lr;
                        for (size_t k = 0; k < E; k++) {
                            grad[k] += g * ov[k];
                            ov[k] += g * u[k];
                        }
                    }
                }
                for (uint32_t r = r0; r < r1; r++) {
                    float *e = emb + (size_t)s->rows[r] * E;
                    for (size_t k = 0; k < E; k++)
                        e[k] += grad[k] * inv;
                }
            }
        }
    }

    /* Rescale to the spread the encoder is initialized with (unit variance per
     * component), so the LSTM sees inputs of the size it expects. */
    double ss = 0;
    for (size_t i = E; i < R * E; i++)
        ss += (double)emb[i] * emb[i];
    double sd = sqrt(ss / (double)((R - 1) * E));
    if (sd > 0)
        for (size_t i = E; i < R * E; i++)
            emb[i] = (float)(emb[i] / sd * o->scale);
    qd_free(outv);
    qd_free(grad);
    qd_free(u);
    qd_free(table);
    qd_free(count);
    return 0;
}
