/*
 * mine.c - mining hard negatives for training: for each anchor of a duplicate pair,
 * a training question the current model puts near it that is not its duplicate.
 *
 * In-batch negatives are random questions, mostly about something else; what the index
 * must tell apart are questions on the same topic. Before an epoch, every distinct
 * training question is encoded with the current weights, each anchor is scored against
 * all of them (one GEMM per block of anchors), and one of its `top` nearest questions is
 * drawn at random, skipping every question of its own duplicate cluster (the connected
 * component of the labelled duplicate graph, so a known duplicate is never used as a
 * negative). Drawing among the top few rather than taking the nearest keeps clear of
 * unlabelled duplicates, which the nearest often is.
 *
 * The draw for anchor i uses a generator seeded from (seed, epoch, i), so the result
 * does not depend on how the anchors are split among threads.
 */
#include <stdlib.h>
#include <string.h>

#include "lstm_impl.h"
#include "mine_impl.h"
#include "model_impl.h"
#include "qdup/common.h"
#include "qdup/parallel.h"
#include "train_impl.h"

/* Anchors scored per GEMM. */
#define MINE_BLOCK 128

static uint32_t uf_find(uint32_t *parent, uint32_t x)
{
    while (parent[x] != x) {
        parent[x] = parent[parent[x]];
        x = parent[x];
    }
    return x;
}

static void uf_union(uint32_t *parent, uint32_t a, uint32_t b)
{
    a = uf_find(parent, a);
    b = uf_find(parent, b);
    if (a != b)
        parent[a < b ? b : a] = a < b ? a : b;
}

typedef struct qid_at {
    int64_t qid;   /* question id */
    uint32_t seq;  /* training question index (2 * pair + side) */
} qid_at;

static int cmp_qid(const void *a, const void *b)
{
    const qid_at *x = a, *y = b;
    if (x->qid != y->qid)
        return x->qid < y->qid ? -1 : 1;
    return (x->seq > y->seq) - (x->seq < y->seq);
}

void qd_miner_free(qd_miner *mn)
{
    if (!mn)
        return;
    qd_free(mn->cluster);
    qd_free(mn->pool);
    qd_free(mn->pool_of);
    qd_free(mn->vec);
    qd_free(mn->texts);
    qd_free(mn->lens);
    qd_free(mn->mined);
    memset(mn, 0, sizeof *mn);
}

int qd_miner_init(qd_miner *mn, const qd_pairs *train, size_t top)
{
    memset(mn, 0, sizeof *mn);
    size_t nseq = 2 * train->n;
    mn->top = top;
    mn->nseq = nseq;
    mn->cluster = qd_mallocarray(nseq + 1, sizeof *mn->cluster);
    mn->pool = qd_mallocarray(nseq + 1, sizeof *mn->pool);
    mn->pool_of = qd_mallocarray(nseq + 1, sizeof *mn->pool_of);
    mn->mined = qd_mallocarray(train->n + 1, sizeof *mn->mined);
    qid_at *by_qid = qd_mallocarray(nseq + 1, sizeof *by_qid);
    if (!mn->cluster || !mn->pool || !mn->pool_of || !mn->mined || !by_qid) {
        qd_free(by_qid);
        qd_miner_free(mn);
        return QD_ERR_NOMEM;
    }
    /* Clusters: a labelled duplicate joins its two questions; one qid is one question. */
    for (uint32_t s = 0; s < nseq; s++)
        mn->cluster[s] = s;
    for (size_t i = 0; i < train->n; i++) {
        if (train->dup[i])
            uf_union(mn->cluster, (uint32_t)(2 * i), (uint32_t)(2 * i + 1));
        by_qid[2 * i] = (qid_at){train->qid1[i], (uint32_t)(2 * i)};
        by_qid[2 * i + 1] = (qid_at){train->qid2[i], (uint32_t)(2 * i + 1)};
        mn->mined[i] = QD_MINE_NONE;
    }
    qsort(by_qid, nseq, sizeof *by_qid, cmp_qid);
    /* The pool: one training question per qid (every question when there are no qids). */
    for (size_t k = 0; k < nseq; k++) {
        const qid_at *q = &by_qid[k];
        int same = k > 0 && q->qid >= 0 && by_qid[k - 1].qid == q->qid;
        if (same)
            uf_union(mn->cluster, by_qid[k - 1].seq, q->seq);
        else
            mn->pool[mn->npool++] = q->seq;
        mn->pool_of[q->seq] = (uint32_t)(mn->npool - 1);
    }
    for (uint32_t s = 0; s < nseq; s++)
        mn->cluster[s] = uf_find(mn->cluster, s);
    qd_free(by_qid);
    mn->texts = qd_mallocarray(mn->npool, sizeof *mn->texts);
    mn->lens = qd_mallocarray(mn->npool, sizeof *mn->lens);
    if (!mn->texts || !mn->lens) {
        qd_miner_free(mn);
        return QD_ERR_NOMEM;
    }
    for (size_t k = 0; k < mn->npool; k++) {
        size_t s = mn->pool[k], pr = s / 2;
        mn->texts[k] = (s & 1) ? train->q2[pr] : train->q1[pr];
        mn->lens[k] = (s & 1) ? train->len2[pr] : train->len1[pr];
    }
    return 0;
}

/* Mines anchors [lo, hi) of dups (pair indices); S is scratch of (MINE_BLOCK, npool),
 * Q of (MINE_BLOCK, D). */
static void mine_range(qd_miner *mn, const uint32_t *dups, size_t lo, size_t hi, size_t D,
                       uint64_t seed, float *S, float *Q)
{
    size_t top = mn->top, np = mn->npool;
    float best_s[QD_MINE_MAX_TOP];
    uint32_t best_k[QD_MINE_MAX_TOP];
    for (size_t b = lo; b < hi; b += MINE_BLOCK) {
        size_t nb = hi - b < MINE_BLOCK ? hi - b : MINE_BLOCK;
        for (size_t r = 0; r < nb; r++)
            memcpy(Q + r * D, mn->vec + (size_t)mn->pool_of[2 * dups[b + r]] * D,
                   D * sizeof *Q);
        qd_gemm(0, 1, nb, np, D, 1.0f, Q, D, mn->vec, D, 0.0f, S, np);
        for (size_t r = 0; r < nb; r++) {
            uint32_t pair = dups[b + r], own = mn->cluster[2 * pair];
            const float *row = S + r * np;
            size_t nbest = 0;
            /* Insertion into a small sorted list: top is a handful. */
            for (size_t k = 0; k < np; k++) {
                float v = row[k];
                if (nbest == top && v <= best_s[top - 1])
                    continue;
                if (mn->cluster[mn->pool[k]] == own)
                    continue;
                size_t at = nbest < top ? nbest++ : top - 1;
                while (at > 0 && best_s[at - 1] < v) {
                    best_s[at] = best_s[at - 1];
                    best_k[at] = best_k[at - 1];
                    at--;
                }
                best_s[at] = v;
                best_k[at] = (uint32_t)k;
            }
            if (nbest == 0) {
                mn->mined[pair] = QD_MINE_NONE;
                continue;
            }
            qd_rng rng;
            qd_rng_seed(&rng, seed ^ ((uint64_t)pair * 0x9E3779B97F4A7C15ULL));
            mn->mined[pair] = mn->pool[best_k[qd_rng_below(&rng, nbest)]];
        }
    }
}

typedef struct mine_job {
    qd_miner *mn;          /* the miner */
    const uint32_t *dups;  /* (ndups) anchors' pair indices */
    size_t ndups;
    size_t D;              /* vector width */
    uint64_t seed;         /* this epoch's seed */
    float **S, **Q;        /* (workers) per-worker scratch */
} mine_job;

/* One worker's share of the anchors (qd_parallel_for). */
static void mine_share(size_t lo, size_t hi, int worker, void *arg)
{
    mine_job *j = arg;
    mine_range(j->mn, j->dups, lo, hi, j->D, j->seed, j->S[worker], j->Q[worker]);
}

int qd_miner_mine(qd_miner *mn, const qd_model *m, const uint32_t *dups, size_t ndups,
                  uint64_t seed, int nthreads)
{
    size_t D = qd_model_out_dim(&m->hdr);
    if (!mn->vec) {
        mn->vec = qd_mallocarray(mn->npool, D * sizeof *mn->vec);
        if (!mn->vec)
            return QD_ERR_NOMEM;
    }
    int rc = qd_enc_texts_parallel(m, mn->texts, mn->lens, mn->npool, nthreads, 256, NULL,
                                   NULL, mn->vec);
    if (rc)
        return rc;
    float *S[QD_MINE_MAX_THREADS] = {0}, *Q[QD_MINE_MAX_THREADS] = {0};
    nthreads = qd_parallel_workers(ndups, nthreads);
    if (nthreads > QD_MINE_MAX_THREADS)
        nthreads = QD_MINE_MAX_THREADS;
    for (int i = 0; i < nthreads && rc == 0; i++) {
        S[i] = qd_mallocarray((size_t)MINE_BLOCK * mn->npool, sizeof(float));
        Q[i] = qd_mallocarray((size_t)MINE_BLOCK * D, sizeof(float));
        if (!S[i] || !Q[i])
            rc = QD_ERR_NOMEM;
    }
    if (rc == 0) {
        mine_job j = {mn, dups, ndups, D, seed, S, Q};
        qd_parallel_for(ndups, nthreads, mine_share, &j);
    }
    for (int i = 0; i < nthreads; i++) {
        qd_free(S[i]);
        qd_free(Q[i]);
    }
    return rc;
}
