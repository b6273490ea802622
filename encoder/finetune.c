/*
 * finetune.c - starting a model for fine-tuning: the vocabulary extended with a new
 * forum's words (their rows from the n-grams the old model used for them), graded
 * labels, and mixing in the original training pairs. The training itself is qd_train
 * with qd_train_opts.init set (train.c). See finetune.h.
 */
#include "qdup/finetune.h"

#include <stdio.h>
#include <string.h>

#include "model_impl.h"
#include "qdup/common.h"
#include "train_impl.h"

void qd_finetune_recipe(qd_train_opts *o)
{
    qd_train_recipe("default", o);
    snprintf(o->recipe, sizeof o->recipe, "%s", "finetune");
    o->batch = 16;
    o->hard_negatives = 64;
    o->lr = 0.001f;
    o->epochs = 8;
    /* Every epoch, and the starting model as epoch 0, compete: with 200 groups an
     * epoch's judgement is noisy, and stopping after three worse ones cut runs short
     * whose last epochs were their best (BENCHMARKS.md). */
    o->patience = 0;
}

int qd_finetune_extend(const qd_model *base, const qd_vocab *words, uint32_t max_tokens,
                       qd_model **out, size_t *added, char *err, size_t errlen)
{
    *out = NULL;
    *added = 0;
    const qd_model_hdr *bh = &base->hdr;
    size_t E = bh->emb_dim, V = bh->vocab;
    qd_vocab *v = qd_vocab_new();
    if (!v)
        return qd_errf(err, errlen, QD_ERR_NOMEM, "out of memory");
    /* The base's words keep their ids; the new ones follow. */
    int rc = 0;
    for (size_t id = QD_TOK_NRESERVED; id < V && rc >= 0; id++) {
        size_t n;
        const char *w = qd_vocab_word(base->vocab, (int32_t)id, &n);
        rc = qd_vocab_add(v, w, n);
    }
    for (size_t id = QD_TOK_NRESERVED; id < qd_vocab_size(words) && rc >= 0; id++) {
        size_t n;
        const char *w = qd_vocab_word(words, (int32_t)id, &n);
        if (qd_vocab_find(base->vocab, w, n) == QD_TOK_UNK)
            rc = qd_vocab_add(v, w, n);
    }
    if (rc < 0) {
        qd_vocab_free(v);
        return qd_errf(err, errlen, rc, "extending the vocabulary: %s", qd_strerror(rc));
    }
    size_t nadd = qd_vocab_size(v) - V;
    if (V + nadd > QD_MODEL_MAX_VOCAB) {
        qd_vocab_free(v);
        return qd_errf(err, errlen, QD_ERR_RANGE, "the vocabulary would grow to %zu words, "
                       "over %d", V + nadd, QD_MODEL_MAX_VOCAB);
    }
    qd_model_hdr hdr = *bh;
    hdr.vocab = (uint32_t)(V + nadd);
    if (max_tokens)
        hdr.tok.max_tokens = max_tokens;
    qd_model *m;
    rc = qd_model_new(&hdr, v, &m, err, errlen);
    if (rc)
        return rc;
    m->scoring = base->scoring; /* until qdup-train fits it anew */
    /* Everything but the embedding rows is copied as is; the rows are the base's
     * vocabulary rows, the new words' rows, then the base's n-gram rows. */
    size_t rows_base = qd_model_rows(bh), emb_base = rows_base * E;
    memcpy(m->p.emb, base->p.emb, V * E * sizeof(float));
    memcpy(m->p.emb + (V + nadd) * E, base->p.emb + V * E,
           (size_t)bh->tok.ngram_buckets * E * sizeof(float));
    memcpy(m->param_data + emb_base + nadd * E, base->param_data + emb_base,
           (base->nparams - emb_base) * sizeof(float));
    /* Each new word's row: the mean of the rows the base model read for it. */
    qd_tokbuf tb;
    qd_tokseqs seqs;
    qd_tokbuf_init(&tb);
    qd_tokseqs_init(&seqs);
    for (size_t k = 0; k < nadd && rc == 0; k++) {
        size_t n;
        const char *w = qd_vocab_word(v, (int32_t)(V + k), &n);
        qd_tokseqs_clear(&seqs);
        rc = qd_tok_encode(base->vocab, &bh->tok, &tb, w, n, &seqs);
        if (rc)
            break;
        float *row = m->p.emb + (V + k) * E;
        if (seqs.ntok == 0) {
            /* Nothing the tokenizer keeps (cannot happen for a word it produced): the
             * unknown word's row. */
            memcpy(row, base->p.emb + (size_t)QD_TOK_UNK * E, E * sizeof(float));
            continue;
        }
        uint32_t lo = seqs.toff[0], hi = seqs.toff[1];
        for (uint32_t j = lo; j < hi; j++) {
            const float *src = base->p.emb + (size_t)seqs.rows[j] * E;
            for (size_t e = 0; e < E; e++)
                row[e] += src[e];
        }
        for (size_t e = 0; e < E; e++)
            row[e] /= (float)(hi - lo);
    }
    qd_tokseqs_free(&seqs);
    qd_tokbuf_free(&tb);
    if (rc) {
        qd_model_free(m);
        return qd_errf(err, errlen, rc, "tokenizing a new word: %s", qd_strerror(rc));
    }
    *added = nadd;
    *out = m;
    return 0;
}

double qd_finetune_gain(double auc, double map, double auc0, double map0, int graded)
{
    double g = auc - auc0;
    return graded && map - map0 < g ? map - map0 : g;
}

int qd_finetune_parse_grades(const char *s, unsigned *mask)
{
    unsigned m = 0;
    for (const char *p = s;; p++) {
        if (*p < '0' || *p > '9')
            return QD_ERR_INVAL;
        m |= 1u << (*p - '0');
        p++;
        if (*p == '\0')
            break;
        if (*p != ',')
            return QD_ERR_INVAL;
    }
    *mask = m;
    return 0;
}

int qd_finetune_relabel(qd_pairs *p, unsigned mask, unsigned skip)
{
    if (!p->grade)
        return QD_ERR_INVAL;
    size_t k = 0;
    for (size_t i = 0; i < p->n; i++) {
        if ((skip >> p->grade[i]) & 1u)
            continue;
        p->q1[k] = p->q1[i];
        p->q2[k] = p->q2[i];
        p->len1[k] = p->len1[i];
        p->len2[k] = p->len2[i];
        p->qid1[k] = p->qid1[i];
        p->qid2[k] = p->qid2[i];
        p->grade[k] = p->grade[i];
        p->dup[k++] = mask ? (mask >> p->grade[i]) & 1u : p->dup[i];
    }
    p->n = k;
    return 0;
}

/* An empty pair set with room for n pairs and bytes of text (and grades if graded). */
static qd_pairs *pairs_alloc(size_t n, size_t bytes, int graded)
{
    qd_pairs *s = qd_calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->q1 = qd_calloc(n + 1, sizeof *s->q1);
    s->q2 = qd_calloc(n + 1, sizeof *s->q2);
    s->len1 = qd_calloc(n + 1, sizeof *s->len1);
    s->len2 = qd_calloc(n + 1, sizeof *s->len2);
    s->dup = qd_calloc(n + 1, sizeof *s->dup);
    s->qid1 = qd_calloc(n + 1, sizeof *s->qid1);
    s->qid2 = qd_calloc(n + 1, sizeof *s->qid2);
    s->grade = graded ? qd_calloc(n + 1, sizeof *s->grade) : NULL;
    s->arena = qd_malloc(bytes + 1);
    if (!s->q1 || !s->q2 || !s->len1 || !s->len2 || !s->dup || !s->qid1 || !s->qid2 ||
        !s->arena || (graded && !s->grade)) {
        qd_pairs_free(s);
        return NULL;
    }
    return s;
}

/* Appends pair j of src to dst, its texts at *w (advanced), its ids moved by shift. */
static void pairs_append(qd_pairs *dst, char **w, const qd_pairs *src, size_t j, int64_t shift)
{
    size_t k = dst->n++;
    memcpy(*w, src->q1[j], src->len1[j] + 1);
    dst->q1[k] = *w;
    dst->len1[k] = src->len1[j];
    *w += src->len1[j] + 1;
    memcpy(*w, src->q2[j], src->len2[j] + 1);
    dst->q2[k] = *w;
    dst->len2[k] = src->len2[j];
    *w += src->len2[j] + 1;
    dst->dup[k] = src->dup[j];
    dst->qid1[k] = src->qid1[j] >= 0 ? src->qid1[j] + shift : -1;
    dst->qid2[k] = src->qid2[j] >= 0 ? src->qid2[j] + shift : -1;
    if (dst->grade)
        dst->grade[k] = src->grade ? src->grade[j] : 0;
}

int qd_finetune_mix(const qd_pairs *a, const qd_pairs *b, double share, uint64_t seed,
                    qd_pairs **out)
{
    *out = NULL;
    double want = share * (double)a->n + 0.5;
    size_t nb = want < (double)b->n ? (size_t)want : b->n;
    uint32_t *pick = qd_mallocarray(b->n + 1, sizeof *pick);
    if (!pick)
        return QD_ERR_NOMEM;
    for (size_t i = 0; i < b->n; i++)
        pick[i] = (uint32_t)i;
    qd_rng rng;
    qd_rng_seed(&rng, seed);
    qd_rng_shuffle(&rng, pick, b->n);
    int64_t base = 0;
    size_t bytes = 0;
    for (size_t i = 0; i < a->n; i++) {
        base = a->qid1[i] > base ? a->qid1[i] : base;
        base = a->qid2[i] > base ? a->qid2[i] : base;
        bytes += a->len1[i] + a->len2[i] + 2;
    }
    for (size_t k = 0; k < nb; k++)
        bytes += b->len1[pick[k]] + b->len2[pick[k]] + 2;
    qd_pairs *p = pairs_alloc(a->n + nb, bytes, 0);
    if (!p) {
        qd_free(pick);
        return QD_ERR_NOMEM;
    }
    char *w = p->arena;
    for (size_t i = 0; i < a->n; i++)
        pairs_append(p, &w, a, i, 0);
    for (size_t k = 0; k < nb; k++)
        pairs_append(p, &w, b, pick[k], base + 1);
    qd_free(pick);
    *out = p;
    return 0;
}

/* The rows i of p with pick[i] == want, copied into a new pair set. */
static qd_pairs *subset(const qd_pairs *p, const uint8_t *pick, uint8_t want)
{
    size_t n = 0, bytes = 0;
    for (size_t i = 0; i < p->n; i++)
        if (pick[i] == want) {
            n++;
            bytes += p->len1[i] + p->len2[i] + 2;
        }
    qd_pairs *s = pairs_alloc(n, bytes, p->grade != NULL);
    char *w = s ? s->arena : NULL;
    for (size_t i = 0; s && i < p->n; i++)
        if (pick[i] == want)
            pairs_append(s, &w, p, i, 0);
    return s;
}

int qd_finetune_split(const qd_pairs *p, double share, uint64_t seed, qd_pairs **kept,
                      qd_pairs **held)
{
    *kept = *held = NULL;
    uint8_t *pick = qd_malloc(p->n + 1);
    if (!pick)
        return QD_ERR_NOMEM;
    for (size_t i = 0; i < p->n; i++) {
        /* A group's fate is a hash of its qid1 (its row index without one). */
        uint64_t key = p->qid1[i] >= 0 ? (uint64_t)p->qid1[i] : (uint64_t)i;
        qd_rng r;
        qd_rng_seed(&r, key ^ (seed * 0x9E3779B97F4A7C15ULL));
        pick[i] = qd_rng_uniform(&r) < share;
    }
    *kept = subset(p, pick, 0);
    *held = subset(p, pick, 1);
    qd_free(pick);
    if (!*kept || !*held) {
        qd_pairs_free(*kept);
        qd_pairs_free(*held);
        *kept = *held = NULL;
        return QD_ERR_NOMEM;
    }
    return 0;
}
