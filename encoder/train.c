/*
 * train.c - the trainer: vocabulary, initialization, the training loop with its worker
 * threads, validation and early stopping.
 *
 * Every training question is tokenized once, up front, into one qd_tokseqs; a batch is
 * then only a list of question indices (sel), which the forward pass takes as is. A
 * step runs in three phases on a few threads (qd_parallel_for; the caller is thread 0):
 *   1. each thread encodes its contiguous slice of the batch (forward, activations kept);
 *   2. thread 0 computes the loss and its gradient w.r.t. every vector of the batch;
 *   3. each thread backpropagates its slice into its own gradient buffer;
 * then thread 0 sums the buffers in thread order and clips, and each thread takes the
 * Adam step of its slice of the parameters. The slices depend only on the batch size
 * and thread count, so a run is reproducible.
 */
#include "qdup/train.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "lstm_impl.h"
#include "mine_impl.h"
#include "pretrain_impl.h"
#include "model_impl.h"
#include "qdup/common.h"
#include "qdup/finetune.h"
#include "qdup/parallel.h"
#include "train_impl.h"

int qd_train_recipe(const char *name, qd_train_opts *o)
{
    memset(o, 0, sizeof *o);
    snprintf(o->recipe, sizeof o->recipe, "%s", name);
    o->emb_dim = 128;
    o->hidden = 128;
    o->max_tokens = 64;
    o->batch = 256;
    o->lr = 0.01f;
    o->margin = 0.25f;
    o->loss = QD_LOSS_TRIPLET;
    o->temperature = 0.05f;
    o->seed = 1;
    if (strcmp(name, "seed") == 0) {
        /* The course: every training word, duplicate pairs only, in-batch negatives. */
        o->min_count = 1;
        o->epochs = 8;
        o->patience = 0;
        return 0;
    }
    if (strcmp(name, "default") == 0) {
        /* What the validation set chose (BENCHMARKS.md has the experiments): the softmax
         * loss over in-batch, labelled-non-duplicate and mined negatives, both directions,
         * the ranking loss on labelled non-duplicates, hashed character n-grams. */
        o->min_count = 2;
        o->epochs = 10;
        o->patience = 3;
        o->loss = QD_LOSS_SOFTMAX;
        o->temperature = 0.1f;
        o->symmetric = 1;
        o->hard_negatives = 256;
        o->mine_top = 10;
        o->ngram_min = 2;
        o->ngram_max = 4;
        o->ngram_buckets = 200000;
        return 0;
    }
    return QD_ERR_INVAL;
}

/* --- the training state ------------------------------------------------------------------ */

typedef struct worker {
    qd_fwd fwd;      /* activations of this thread's slice */
    qd_bwd bwd;      /* backward scratch */
    qd_grads grads;  /* this thread's gradients */
    size_t lo, n;    /* its slice of the batch */
    int rc;          /* error of its last phase */
} worker;

typedef struct trainer {
    const qd_train_opts *o;
    qd_model *m;          /* the model being trained */
    qd_tokseqs seqs;      /* every training question: pair i is 2i (q1) and 2i+1 (q2) */
    uint32_t *dups;       /* (ndups) pair indices labelled duplicate */
    size_t ndups;
    uint32_t *nondups;    /* (nnondups) pair indices labelled non-duplicate */
    size_t nnondups;
    size_t nondup_next;   /* cursor into nondups, which is reshuffled when used up */
    qd_miner miner;       /* mined negatives, when o->mine_top > 0 */
    int mined;            /* 1 once the miner has run: batches carry B mined negatives */
    uint32_t *sel;        /* (2B + 2M + B) the batch: A's, P's, X's, Y's, mined negatives */
    size_t nsel;          /* entries of sel in use */
    float *out;           /* (nsel, H) the batch's vectors */
    float *dout;          /* (nsel, H) gradient of the loss w.r.t. out */
    float *S;             /* (B, B) scores, then their gradient */
    float *scratch;       /* (B, H) for the symmetric direction */
    float *pos, *neg, *dpos, *dneg; /* (B), (M): pair cosines and their gradients */
    qd_adam adam;         /* optimizer state */
    worker *w;            /* (threads) */
    int threads;          /* workers of each phase (qd_parallel_for), the caller is 0 */
    qd_rng rng;           /* shuffling */
    uint64_t dropout_seed; /* this step's dropout draws */
} trainer;

/* Phase 1: forward over this thread's slice. */
static void phase_forward(size_t begin, size_t end, int tid, void *arg)
{
    (void)begin;
    (void)end;
    trainer *t = arg;
    worker *w = &t->w[tid];
    size_t H = qd_model_out_dim(&t->m->hdr);
    w->rc = 0;
    if (w->n == 0)
        return;
    w->fwd.dropout = t->o->dropout;
    w->fwd.dropout_seed = t->dropout_seed;
    w->rc = qd_lstm_forward(&t->m->hdr, &t->m->p, &t->seqs, t->sel + w->lo, w->n, &w->fwd);
    if (w->rc == 0)
        memcpy(t->out + w->lo * H, w->fwd.out, w->n * H * sizeof(float));
}

/* Phase 3: backward over this thread's slice into its own gradients. */
static void phase_backward(size_t begin, size_t end, int tid, void *arg)
{
    (void)begin;
    (void)end;
    trainer *t = arg;
    worker *w = &t->w[tid];
    size_t H = qd_model_out_dim(&t->m->hdr);
    w->rc = 0;
    qd_grads_zero(&w->grads);
    if (w->n == 0)
        return;
    w->rc = qd_lstm_backward(&t->m->hdr, &t->m->p, &t->seqs, &w->fwd, t->dout + w->lo * H,
                             &w->bwd, &w->grads);
}

/* Thread tid's share of the Adam update, 16-float aligned. */
static void phase_adam(size_t begin, size_t end, int tid, void *arg)
{
    (void)begin;
    (void)end;
    trainer *t = arg;
    size_t n = t->adam.n, parts = (size_t)t->threads;
    size_t lo = n * (size_t)tid / parts & ~(size_t)15;
    size_t hi = tid + 1 == t->threads ? n : n * (size_t)(tid + 1) / parts & ~(size_t)15;
    qd_adam_update(&t->adam, t->m->param_data, t->w[0].grads.data, lo, hi);
}

/* Runs a phase on every worker, the caller as worker 0, and waits for all: worker
 * tid's slice is t->w[tid], fixed by the batch size and thread count alone. */
static void run_phase(trainer *t, qd_parallel_fn phase)
{
    qd_parallel_for((size_t)t->threads, t->threads, phase, t);
}

static int check_workers(trainer *t)
{
    for (int i = 0; i < t->threads; i++)
        if (t->w[i].rc)
            return t->w[i].rc;
    return 0;
}

static float dot(const float *a, const float *b, size_t n)
{
    float s = 0;
    for (size_t k = 0; k < n; k++)
        s += a[k] * b[k];
    return s;
}

/* The anchor-candidate loss the options choose: B anchors A against K candidates C,
 * C_i the positive of A_i. */
static float anchor_loss(const qd_train_opts *o, const float *A, const float *C, size_t B,
                         size_t K, size_t H, float *S, float *dA, float *dC)
{
    if (o->loss == QD_LOSS_SOFTMAX)
        return qd_infonce_loss(A, C, B, K, H, o->temperature, S, dA, dC);
    return qd_triplet_loss(A, C, B, K, H, o->margin, S, dA, dC);
}

/* Phase 2: the loss of the batch and its gradient w.r.t. every vector in t->out. The
 * batch's rows are A (B), P (B), X (M), Y (M): the labelled non-duplicate pairs (X_m,
 * Y_m) follow the positives, so with M > 0 every anchor is scored against the P's and
 * all 2M of their questions, which are negatives for it, and the ranking loss then
 * asks every duplicate pair to score above every non-duplicate pair. The N mined
 * negatives come last, candidates for every anchor too. */
static float batch_loss(trainer *t, size_t B, size_t M, size_t N)
{
    const qd_train_opts *o = t->o;
    size_t H = qd_model_out_dim(&t->m->hdr), K = B + 2 * M + N;
    float *A = t->out, *P = t->out + B * H, *dA = t->dout, *dP = t->dout + B * H;
    float loss = anchor_loss(o, A, P, B, K, H, t->S, dA, dP);
    if (o->symmetric) {
        /* P as anchor against the A's: the same loss with the roles swapped. */
        float *dP2 = t->scratch;
        float *dA2 = t->dout + (2 * B + 2 * M + N) * H; /* spare rows past the batch */
        loss += anchor_loss(o, P, A, B, B, H, t->S, dP2, dA2);
        for (size_t i = 0; i < B * H; i++) {
            dP[i] += dP2[i];
            dA[i] += dA2[i];
        }
    }
    if (M > 0) {
        float *X = t->out + 2 * B * H, *Y = X + M * H;
        float *dX = t->dout + 2 * B * H, *dY = dX + M * H;
        for (size_t i = 0; i < B; i++)
            t->pos[i] = dot(A + i * H, P + i * H, H);
        for (size_t m = 0; m < M; m++)
            t->neg[m] = dot(X + m * H, Y + m * H, H);
        loss += qd_rank_loss(t->pos, B, t->neg, M, o->margin, t->dpos, t->dneg);
        for (size_t i = 0; i < B; i++)
            for (size_t k = 0; k < H; k++) {
                dA[i * H + k] += t->dpos[i] * P[i * H + k];
                dP[i * H + k] += t->dpos[i] * A[i * H + k];
            }
        for (size_t m = 0; m < M; m++)
            for (size_t k = 0; k < H; k++) {
                dX[m * H + k] += t->dneg[m] * Y[m * H + k];
                dY[m * H + k] += t->dneg[m] * X[m * H + k];
            }
    }
    return loss;
}

/* One optimization step over dups[first .. first + B). */
static int train_step(trainer *t, size_t first, size_t B, size_t M, float *loss)
{
    /* The batch: anchors, positives, M labelled non-duplicate pairs, and (once mined)
     * each anchor's mined negative. */
    size_t N = t->mined ? B : 0;
    for (size_t i = 0; i < B; i++) {
        uint32_t pr = t->dups[first + i];
        t->sel[i] = 2 * pr;
        t->sel[B + i] = 2 * pr + 1;
        if (N) {
            uint32_t neg = t->miner.mined[pr];
            /* No neighbour outside the cluster: any other question will do. */
            t->sel[2 * B + 2 * M + i] = neg != QD_MINE_NONE ? neg : 2 * t->dups[(first + i + 1) % t->ndups] + 1;
        }
    }
    for (size_t m = 0; m < M; m++) {
        if (t->nondup_next == t->nnondups) {
            qd_rng_shuffle(&t->rng, t->nondups, t->nnondups);
            t->nondup_next = 0;
        }
        uint32_t pr = t->nondups[t->nondup_next++];
        t->sel[2 * B + m] = 2 * pr;
        t->sel[2 * B + M + m] = 2 * pr + 1;
    }
    t->nsel = 2 * B + 2 * M + N;
    t->dropout_seed = qd_rng_next(&t->rng);
    /* Contiguous slices, one per thread. */
    int n = t->threads;
    for (int i = 0; i < n; i++) {
        t->w[i].lo = t->nsel * (size_t)i / (size_t)n;
        t->w[i].n = t->nsel * (size_t)(i + 1) / (size_t)n - t->w[i].lo;
    }
    run_phase(t, phase_forward);
    int rc = check_workers(t);
    if (rc)
        return rc;
    *loss = batch_loss(t, B, M, N);
    run_phase(t, phase_backward);
    rc = check_workers(t);
    if (rc)
        return rc;
    qd_grads *g = &t->w[0].grads;
    for (int i = 1; i < n; i++)
        qd_grads_add(g, &t->w[i].grads);
    if (t->o->clip > 0)
        qd_clip_grad_norm(g->data, g->nparams, t->o->clip);
    qd_adam_begin(&t->adam);
    run_phase(t, phase_adam);
    return 0;
}

/* --- vocabulary and initialization ------------------------------------------------------ */

/* Counts the words of every distinct training question (by qid when the file has
 * them) and of the unlabelled corpus, and keeps those seen at least min_count times. */
static int build_vocab(const qd_train_opts *o, const qd_pairs *train, qd_vocab **out)
{
    qd_vocab_counter *c = qd_vocab_counter_new();
    qd_tokbuf tb;
    qd_tokbuf_init(&tb);
    /* Seen qids: an open-addressing set sized for every question. */
    size_t cap = 16;
    while (cap < 4 * train->n + 16)
        cap *= 2;
    int64_t *seen = qd_mallocarray(cap, sizeof *seen);
    int rc = (c && seen) ? 0 : QD_ERR_NOMEM;
    if (seen)
        for (size_t i = 0; i < cap; i++)
            seen[i] = -1;
    for (size_t i = 0; rc == 0 && i < 2 * train->n; i++) {
        size_t pr = i / 2;
        int64_t qid = (i & 1) ? train->qid2[pr] : train->qid1[pr];
        if (qid >= 0) {
            size_t h = (size_t)((uint64_t)qid * 0x9E3779B97F4A7C15ULL) & (cap - 1);
            while (seen[h] != -1 && seen[h] != qid)
                h = (h + 1) & (cap - 1);
            if (seen[h] == qid)
                continue;
            seen[h] = qid;
        }
        const char *q = (i & 1) ? train->q2[pr] : train->q1[pr];
        size_t len = (i & 1) ? train->len2[pr] : train->len1[pr];
        rc = qd_tok_split(&tb, q, len, o->max_tokens);
        if (rc == 0)
            rc = qd_vocab_counter_add(c, &tb);
    }
    for (size_t i = 0; rc == 0 && i < o->ncorpus; i++) {
        rc = qd_tok_split(&tb, o->corpus[i], o->corpus_lens[i], o->max_tokens);
        if (rc == 0)
            rc = qd_vocab_counter_add(c, &tb);
    }
    if (rc == 0)
        rc = qd_vocab_from_counter(c, o->min_count, 0, out);
    qd_free(seen);
    qd_tokbuf_free(&tb);
    qd_vocab_counter_free(c);
    return rc;
}

/* PyTorch's defaults: embedding rows N(0, 1), LSTM weights and both biases
 * U(-1/sqrt(H), 1/sqrt(H)) (the bias stored here is b_ih + b_hh). */
static void init_weights(qd_model *m, qd_rng *rng)
{
    size_t E = m->hdr.emb_dim, H = m->hdr.hidden, R = qd_model_rows(&m->hdr);
    qd_params *p = &m->p;
    for (size_t i = 0; i < R * E; i++)
        p->emb[i] = (float)qd_rng_normal(rng);
    memset(p->emb, 0, E * sizeof *p->emb); /* the pad row, never read */
    double k = 1.0 / sqrt((double)H);
    for (size_t i = 0; i < 4 * H * E; i++)
        p->wx[i] = (float)((2 * qd_rng_uniform(rng) - 1) * k);
    for (size_t i = 0; i < 4 * H * H; i++)
        p->wh[i] = (float)((2 * qd_rng_uniform(rng) - 1) * k);
    for (size_t i = 0; i < 4 * H; i++)
        p->b[i] = (float)((2 * qd_rng_uniform(rng) - 1) * k + (2 * qd_rng_uniform(rng) - 1) * k);
}

/* --- scoring pairs -------------------------------------------------------------------------- */

int qd_score_pairs(const qd_model *m, const qd_pairs *p, int threads, float *scores)
{
    size_t n = p->n, H = qd_model_out_dim(&m->hdr);
    const char **texts = qd_mallocarray(2 * n + 1, sizeof *texts);
    size_t *lens = qd_mallocarray(2 * n + 1, sizeof *lens);
    float *v = qd_mallocarray(2 * n + 1, H * sizeof *v);
    int rc = (texts && lens && v) ? 0 : QD_ERR_NOMEM;
    if (rc == 0) {
        for (size_t i = 0; i < n; i++) {
            texts[2 * i] = p->q1[i];
            lens[2 * i] = p->len1[i];
            texts[2 * i + 1] = p->q2[i];
            lens[2 * i + 1] = p->len2[i];
        }
        rc = qd_enc_texts_parallel(m, texts, lens, 2 * n, threads, 256, NULL, NULL, v);
    }
    if (rc == 0)
        for (size_t i = 0; i < n; i++)
            scores[i] = dot(v + 2 * i * H, v + (2 * i + 1) * H, H);
    qd_free(texts);
    qd_free(lens);
    qd_free(v);
    return rc;
}

static int valid_auc(const qd_model *m, const qd_pairs *valid, int threads, double *auc)
{
    float *s = qd_mallocarray(valid->n + 1, sizeof *s);
    if (!s)
        return QD_ERR_NOMEM;
    int rc = qd_score_pairs(m, valid, threads, s);
    if (rc == 0)
        *auc = qd_pairs_auc(s, valid->dup, valid->n);
    qd_free(s);
    return rc;
}

/* How good m is after an epoch: the caller's judge, or the validation cosine AUC. */
static int judge_epoch(const qd_train_opts *o, const qd_model *m, const qd_pairs *valid,
                       int epoch, int threads, double *score)
{
    if (o->judge)
        return o->judge(m, epoch, o->judge_arg, score);
    return valid_auc(m, valid, threads, score);
}

/* --- the loop ------------------------------------------------------------------------------ */

static void trainer_free(trainer *t)
{
    if (t->w) {
        for (int i = 0; i < t->threads; i++) {
            qd_fwd_free(&t->w[i].fwd);
            qd_bwd_free(&t->w[i].bwd);
            qd_grads_free(&t->w[i].grads);
        }
        qd_free(t->w);
    }
    qd_tokseqs_free(&t->seqs);
    qd_free(t->dups);
    qd_free(t->nondups);
    qd_free(t->sel);
    qd_free(t->out);
    qd_free(t->dout);
    qd_free(t->S);
    qd_free(t->scratch);
    qd_free(t->pos);
    qd_free(t->neg);
    qd_free(t->dpos);
    qd_free(t->dneg);
    qd_adam_free(&t->adam);
    qd_miner_free(&t->miner);
}

int qd_train(const qd_train_opts *o, const qd_pairs *train, const qd_pairs *valid,
             qd_train_progress_fn progress, void *arg, qd_model **out,
             qd_train_result *result, char *err, size_t errlen)
{
    *out = NULL;
    memset(result, 0, sizeof *result);
    double t_start = qd_now();
    trainer t;
    memset(&t, 0, sizeof t);
    t.o = o;
    int rc;
    if (o->batch < 2 || o->epochs < 1 || o->lr <= 0 || o->mine_top > QD_MINE_MAX_TOP)
        return qd_errf(err, errlen, QD_ERR_INVAL,
                       "batch must be at least 2, epochs at least 1, lr positive, mining "
                       "from at most %d neighbours", QD_MINE_MAX_TOP);

    qd_rng rng;
    qd_rng_seed(&rng, o->seed);
    qd_rng_seed(&t.rng, o->seed ^ 0x5eed5eed5eed5eedULL);

    qd_vocab *vocab = NULL;
    rc = build_vocab(o, train, &vocab);
    if (rc)
        return qd_errf(err, errlen, rc, "building the vocabulary: %s", qd_strerror(rc));
    if (o->init) {
        /* Fine-tuning: the starting model, with the words it lacks. */
        rc = qd_finetune_extend(o->init, vocab, o->max_tokens, &t.m, &result->words_added, err, errlen);
        qd_vocab_free(vocab);
        if (rc)
            return rc;
    } else {
        qd_model_hdr fresh = {
            .emb_dim = o->emb_dim,
            .hidden = o->hidden,
            .vocab = (uint32_t)qd_vocab_size(vocab),
            .dirs = 1,
            .pool = o->pool,
            .tok = {.max_tokens = o->max_tokens,
                    .ngram_min = o->ngram_buckets ? o->ngram_min : 0,
                    .ngram_max = o->ngram_buckets ? o->ngram_max : 0,
                    .ngram_buckets = o->ngram_buckets},
        };
        rc = qd_model_new(&fresh, vocab, &t.m, err, errlen);
        if (rc)
            return rc;
        init_weights(t.m, &rng);
    }
    qd_model_hdr hdr = t.m->hdr;
    result->vocab = hdr.vocab;
    if (o->pretrain_epochs > 0) {
        /* Word vectors from every question there is text for, labelled or not. */
        qd_tokseqs all;
        qd_tokbuf ptb;
        qd_tokseqs_init(&all);
        qd_tokbuf_init(&ptb);
        for (size_t i = 0; i < 2 * train->n && rc == 0; i++)
            rc = qd_tok_encode(t.m->vocab, &hdr.tok, &ptb, (i & 1) ? train->q2[i / 2] : train->q1[i / 2],
                               (i & 1) ? train->len2[i / 2] : train->len1[i / 2], &all);
        for (size_t i = 0; i < o->ncorpus && rc == 0; i++)
            rc = qd_tok_encode(t.m->vocab, &hdr.tok, &ptb, o->corpus[i], o->corpus_lens[i], &all);
        qd_pretrain_opts po = {.epochs = o->pretrain_epochs, .window = 4, .negatives = 5,
                               .lr = 0.05f, .scale = 1.0f, .seed = o->seed ^ 0x9e37u};
        if (rc == 0)
            rc = qd_pretrain(t.m, &all, &po);
        qd_tokbuf_free(&ptb);
        qd_tokseqs_free(&all);
        if (rc)
            goto fail_nomem;
    }

    size_t H = qd_model_out_dim(&hdr), B = o->batch, M = o->hard_negatives;
    qd_tokbuf tb;
    qd_tokbuf_init(&tb);
    qd_tokseqs_init(&t.seqs);
    for (size_t i = 0; i < train->n && rc == 0; i++) {
        rc = qd_tok_encode(t.m->vocab, &hdr.tok, &tb, train->q1[i], train->len1[i], &t.seqs);
        if (rc == 0)
            rc = qd_tok_encode(t.m->vocab, &hdr.tok, &tb, train->q2[i], train->len2[i],
                               &t.seqs);
    }
    qd_tokbuf_free(&tb);
    if (rc)
        goto fail_nomem;

    t.dups = qd_mallocarray(train->n + 1, sizeof *t.dups);
    t.nondups = qd_mallocarray(train->n + 1, sizeof *t.nondups);
    if (!t.dups || !t.nondups)
        goto fail_nomem;
    for (size_t i = 0; i < train->n; i++) {
        if (train->dup[i])
            t.dups[t.ndups++] = (uint32_t)i;
        else
            t.nondups[t.nnondups++] = (uint32_t)i;
    }
    if (t.ndups < B) {
        rc = qd_errf(err, errlen, QD_ERR_INVAL,
                     "%zu duplicate pairs in the training data, fewer than one batch of %zu",
                     t.ndups, B);
        goto fail;
    }
    if (M > 0 && t.nnondups == 0) {
        rc = qd_errf(err, errlen, QD_ERR_INVAL,
                     "hard negatives asked for, but the training data has no non-duplicates");
        goto fail;
    }
    t.nondup_next = t.nnondups; /* shuffled on first use */

    /* The batch (with room for B mined negatives), plus spare rows for the symmetric
     * loss. */
    size_t rows = 2 * B + 2 * M + B + B;
    t.sel = qd_mallocarray(2 * B + 2 * M + B, sizeof *t.sel);
    t.out = qd_mallocarray(rows, H * sizeof *t.out);
    t.dout = qd_mallocarray(rows, H * sizeof *t.dout);
    t.S = qd_mallocarray(B * (2 * B + 2 * M), sizeof *t.S);
    t.scratch = qd_mallocarray(B, H * sizeof *t.scratch);
    t.pos = qd_mallocarray(B, sizeof *t.pos);
    t.dpos = qd_mallocarray(B, sizeof *t.dpos);
    t.neg = qd_mallocarray(M + 1, sizeof *t.neg);
    t.dneg = qd_mallocarray(M + 1, sizeof *t.dneg);
    if (!t.sel || !t.out || !t.dout || !t.S || !t.scratch || !t.pos || !t.dpos || !t.neg ||
        !t.dneg)
        goto fail_nomem;
    if (qd_adam_init(&t.adam, t.m->nparams, o->lr))
        goto fail_nomem;
    t.adam.weight_decay = o->weight_decay;

    /* 0 threads: one per core (at most QD_PARALLEL_MAX). */
    int threads = qd_parallel_workers(SIZE_MAX, o->threads);
    qd_blas_single_thread();
    t.threads = threads;
    t.w = qd_calloc((size_t)t.threads, sizeof *t.w);
    if (!t.w)
        goto fail_nomem;
    for (int i = 0; i < t.threads; i++) {
        qd_fwd_init(&t.w[i].fwd);
        qd_bwd_init(&t.w[i].bwd);
        if (qd_grads_init(&t.w[i].grads, &hdr))
            goto fail_nomem;
    }

    float *best = qd_mallocarray(t.m->nparams, sizeof *best);
    if (!best)
        goto fail_nomem;
    size_t steps = t.ndups / B;
    double best_auc = -1, train_seconds = 0;
    size_t pairs_trained = 0;
    int since_best = 0;
    int judged = valid || o->judge;
    if (o->init && judged) {
        /* Epoch 0: the starting model (its vocabulary extended, which changes no vector)
         * competes with the epochs, so fine-tuning that only hurts keeps it. */
        rc = judge_epoch(o, t.m, valid, 0, threads, &best_auc);
        if (rc) {
            qd_free(best);
            rc = qd_errf(err, errlen, rc, "validation: %s", qd_strerror(rc));
            goto fail;
        }
        memcpy(best, t.m->param_data, t.m->nparams * sizeof *best);
        if (progress) {
            qd_train_progress pr = {.epoch = 0, .epochs = o->epochs, .epoch_done = 1,
                                    .valid_auc = best_auc, .best = 1};
            progress(&pr, arg);
        }
    }
    if (o->mine_top > 0 && qd_miner_init(&t.miner, train, o->mine_top))
        goto fail_nomem_best;
    for (int epoch = 1; epoch <= o->epochs; epoch++) {
        qd_rng_shuffle(&t.rng, t.dups, t.ndups);
        if (epoch > 1 && o->lr_decay > 0)
            t.adam.lr *= o->lr_decay;
        if (o->mine_top > 0 && epoch >= 2) {
            /* Mine with the weights after the first epoch: a random model's neighbours
             * are random anyway. */
            rc = qd_miner_mine(&t.miner, t.m, t.dups, t.ndups,
                               o->seed * 1000003u + (uint64_t)epoch, t.threads);
            if (rc) {
                qd_free(best);
                rc = qd_errf(err, errlen, rc, "mining negatives: %s", qd_strerror(rc));
                goto fail;
            }
            t.mined = 1;
        }
        double t0 = qd_now(), loss_sum = 0;
        for (size_t s = 0; s < steps; s++) {
            float loss;
            rc = train_step(&t, s * B, B, M, &loss);
            if (rc) {
                qd_free(best);
                rc = qd_errf(err, errlen, rc, "training step: %s", qd_strerror(rc));
                goto fail;
            }
            if (!isfinite(loss)) {
                qd_free(best);
                rc = qd_errf(err, errlen, QD_ERR_RANGE,
                             "epoch %d step %zu: the loss is not finite (learning rate too "
                             "high?)", epoch, s + 1);
                goto fail;
            }
            loss_sum += loss;
            if (progress) {
                double dt = qd_now() - t0, rate = (double)((s + 1) * B) / (dt > 0 ? dt : 1e-9);
                size_t left = steps - s - 1 + (size_t)(o->epochs - epoch) * steps;
                qd_train_progress pr = {.epoch = epoch, .epochs = o->epochs, .step = s + 1,
                                        .steps = steps, .loss = loss_sum / (double)(s + 1),
                                        .pairs_per_s = rate,
                                        .eta_s = (double)(left * B) / rate};
                progress(&pr, arg);
            }
        }
        double dt = qd_now() - t0;
        train_seconds += dt;
        pairs_trained += steps * B;
        result->epochs_run = epoch;
        result->last_loss = loss_sum / (double)steps;
        double auc = 0;
        int is_best = 1;
        if (judged) {
            rc = judge_epoch(o, t.m, valid, epoch, threads, &auc);
            if (rc) {
                qd_free(best);
                rc = qd_errf(err, errlen, rc, "validation: %s", qd_strerror(rc));
                goto fail;
            }
            is_best = auc > best_auc;
        }
        if (is_best) {
            best_auc = auc;
            result->best_epoch = epoch;
            memcpy(best, t.m->param_data, t.m->nparams * sizeof *best);
            since_best = 0;
        } else {
            since_best++;
        }
        if (progress) {
            qd_train_progress pr = {.epoch = epoch, .epochs = o->epochs, .step = steps,
                                    .steps = steps, .loss = result->last_loss,
                                    .pairs_per_s = (double)(steps * B) / dt,
                                    .epoch_done = 1, .valid_auc = auc, .best = is_best};
            progress(&pr, arg);
        }
        if (o->patience > 0 && since_best >= o->patience) {
            result->stopped_early = epoch < o->epochs;
            break;
        }
    }
    memcpy(t.m->param_data, best, t.m->nparams * sizeof *best);
    qd_free(best);
    result->best_valid_auc = best_auc;
    result->seconds = qd_now() - t_start;
    result->pairs_per_s = (double)pairs_trained / (train_seconds > 0 ? train_seconds : 1e-9);
    *out = t.m;
    t.m = NULL;
    trainer_free(&t);
    return 0;

fail_nomem_best:
    qd_free(best);
fail_nomem:
    rc = qd_errf(err, errlen, QD_ERR_NOMEM, "out of memory");
fail:
    qd_model_free(t.m);
    trainer_free(&t);
    return rc;
}
