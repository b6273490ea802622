/*
 * enc.c - encoding questions with a loaded model: per-thread workspaces, and a
 * parallel driver for large dumps.
 *
 * Texts tokenized here take a known word's mean embedding from the model's cache of
 * word means (lstm_impl.h) once some pass has computed it; qd_enc_forward(), whose
 * batch may be made any way, reads every row.
 *
 * qd_enc_texts_parallel() runs workers with qd_parallel_for, each taking chunks of the
 * input in turn (an atomic cursor), tokenizes a chunk, sorts it by length and encodes it in batches of
 * similar lengths, writing each vector to its question's row of the output. OpenBLAS
 * is kept single-threaded: parallelism comes from the workers, which keeps every
 * product on one core with its cache and makes results independent of BLAS threading.
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "lstm_impl.h"
#include "model_impl.h"
#include "qdup/common.h"
#include "qdup/model.h"
#include "qdup/parallel.h"

struct qd_enc_ws {
    qd_tokbuf tb;      /* tokenizer scratch */
    qd_tokseqs seqs;   /* the batch as embedding rows */
    qd_fwd fwd;        /* forward activations */
    float *wt;         /* (qd_lstm_packed_len) the weights of wt_model packed for the
                          small-batch products (qd_lstm_pack), or NULL */
    size_t wt_len;     /* floats allocated in wt */
    const qd_model *wt_model; /* the model wt was made from */
    char wt_fp[17];    /* its fingerprint then ("": pack again at the next call) */
};

qd_enc_ws *qd_enc_ws_new(void)
{
    qd_enc_ws *ws = qd_calloc(1, sizeof *ws);
    if (!ws)
        return NULL;
    qd_tokbuf_init(&ws->tb);
    qd_tokseqs_init(&ws->seqs);
    qd_fwd_init(&ws->fwd);
    return ws;
}

void qd_enc_ws_free(qd_enc_ws *ws)
{
    if (!ws)
        return;
    qd_tokbuf_free(&ws->tb);
    qd_tokseqs_free(&ws->seqs);
    qd_fwd_free(&ws->fwd);
    qd_free(ws->wt);
    qd_free(ws);
}

/* Gives the forward pass m's weights transposed for small products: made once per
 * workspace and model, since a loaded model's weights do not change (a model with no
 * fingerprint yet, one being trained, is packed again at each call). Without memory
 * for them the pass uses BLAS alone. */
static void ws_pack(qd_enc_ws *ws, const qd_model *m)
{
    if (ws->wt && ws->wt_model == m && m->fingerprint[0] &&
        strcmp(ws->wt_fp, m->fingerprint) == 0) {
        ws->fwd.wt = ws->wt;
        return;
    }
    size_t need = qd_lstm_packed_len(&m->hdr);
    ws->fwd.wt = NULL;
    ws->wt_model = NULL;
    if (need > ws->wt_len) {
        qd_free(ws->wt);
        ws->wt_len = 0;
        if (!(ws->wt = qd_mallocarray(need, sizeof *ws->wt)))
            return;
        ws->wt_len = need;
    }
    qd_lstm_pack(&m->hdr, &m->p, ws->wt);
    ws->wt_model = m;
    memcpy(ws->wt_fp, m->fingerprint, sizeof ws->wt_fp);
    ws->fwd.wt = ws->wt;
}

/* The forward pass over a batch of any making reads every row of every token. */
int qd_enc_forward(const qd_model *m, qd_enc_ws *ws, const qd_tokseqs *seqs, float *out)
{
    ws_pack(ws, m);
    ws->fwd.wmean = NULL;
    int rc = qd_lstm_forward(&m->hdr, &m->p, seqs, NULL, 0, &ws->fwd);
    if (rc)
        return rc;
    memcpy(out, ws->fwd.out, seqs->n * ws->fwd.D * sizeof *out);
    return 0;
}

int qd_enc_texts(const qd_model *m, qd_enc_ws *ws, const char *const *texts,
                 const size_t *lens, size_t n, float *out)
{
    qd_tokseqs_clear(&ws->seqs);
    for (size_t i = 0; i < n; i++) {
        int rc = qd_tok_encode(m->vocab, &m->hdr.tok, &ws->tb, texts[i], lens[i], &ws->seqs);
        if (rc)
            return rc;
    }
    /* The batch is qd_tok_encode's with m's vocabulary: known words' means may come
     * from the model's cache. */
    ws_pack(ws, m);
    ws->fwd.wmean = m->wmean;
    int rc = qd_lstm_forward(&m->hdr, &m->p, &ws->seqs, NULL, 0, &ws->fwd);
    if (rc)
        return rc;
    memcpy(out, ws->fwd.out, n * ws->fwd.D * sizeof *out);
    return 0;
}

/* --- the parallel driver ----------------------------------------------------------------- */

/* Questions per chunk a worker takes at a time, in batches. A chunk is sorted by length
 * before it is cut into batches, so the questions of a batch end at about the same step
 * and the late steps of the recurrence still multiply many rows at once. */
#define CHUNK_BATCHES 8

typedef struct par_job {
    const qd_model *m;          /* shared, read-only */
    const char *const *texts;   /* (n) the questions */
    const size_t *lens;         /* (n) their byte lengths */
    size_t n;                   /* questions */
    size_t batch;               /* questions per forward pass */
    float *out;                 /* (n, dim) results */
    atomic_size_t next;         /* first question of the next chunk to take */
    atomic_size_t done;         /* questions encoded so far */
    atomic_int rc;              /* first error, 0 if none */
    void (*progress)(size_t done, void *arg); /* called by worker 0 only, or NULL */
    void *progress_arg;         /* its argument */
} par_job;

/* Orders question indices of the qd_tokseqs `ctx` longest first, ties by index. */
static int cmp_longer(const void *a, const void *b, void *ctx)
{
    const qd_tokseqs *s = ctx;
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    uint32_t lx = qd_tokseqs_len(s, x), ly = qd_tokseqs_len(s, y);
    if (lx != ly)
        return lx > ly ? -1 : 1;
    return x < y ? -1 : x > y;
}

/* Encodes one chunk [lo, hi) of the input: tokenized once, sorted by length, encoded
 * in batches of neighbours in that order. */
static int encode_chunk(par_job *j, qd_enc_ws *ws, uint32_t *sel, size_t lo, size_t hi)
{
    const qd_model *m = j->m;
    size_t count = hi - lo, H = qd_model_out_dim(&m->hdr);
    qd_tokseqs_clear(&ws->seqs);
    for (size_t i = 0; i < count; i++) {
        int rc = qd_tok_encode(m->vocab, &m->hdr.tok, &ws->tb, j->texts[lo + i],
                               j->lens[lo + i], &ws->seqs);
        if (rc)
            return rc;
        sel[i] = (uint32_t)i;
    }
    qsort_r(sel, count, sizeof *sel, cmp_longer, &ws->seqs);
    ws->fwd.wmean = m->wmean; /* the chunk is qd_tok_encode's, as in qd_enc_texts */
    for (size_t b = 0; b < count; b += j->batch) {
        size_t nb = b + j->batch < count ? j->batch : count - b;
        int rc = qd_lstm_forward(&m->hdr, &m->p, &ws->seqs, sel + b, nb, &ws->fwd);
        if (rc)
            return rc;
        for (size_t i = 0; i < nb; i++)
            memcpy(j->out + (lo + sel[b + i]) * H, ws->fwd.out + i * H, H * sizeof(float));
        atomic_fetch_add(&j->done, nb);
    }
    return 0;
}

/* One worker (qd_parallel_for): takes chunks from the shared cursor until none is
 * left or another worker failed. Worker 0 runs on the caller's thread, so it alone
 * reports progress, between its chunks, and the callback never runs concurrently. */
static void par_worker(size_t begin, size_t end, int worker, void *arg)
{
    (void)begin;
    (void)end;
    par_job *j = arg;
    size_t chunk = j->batch * CHUNK_BATCHES;
    qd_enc_ws *ws = qd_enc_ws_new();
    uint32_t *sel = qd_mallocarray(chunk, sizeof *sel);
    int rc = (ws && sel) ? 0 : QD_ERR_NOMEM;
    if (ws)
        ws_pack(ws, j->m);
    while (rc == 0 && atomic_load(&j->rc) == 0) {
        size_t lo = atomic_fetch_add(&j->next, chunk);
        if (lo >= j->n)
            break;
        size_t hi = lo + chunk < j->n ? lo + chunk : j->n;
        rc = encode_chunk(j, ws, sel, lo, hi);
        if (rc == 0 && worker == 0 && j->progress && hi < j->n)
            j->progress(atomic_load(&j->done), j->progress_arg);
    }
    if (rc) {
        int zero = 0;
        atomic_compare_exchange_strong(&j->rc, &zero, rc);
    }
    qd_free(sel);
    qd_enc_ws_free(ws);
}

int qd_enc_texts_parallel(const qd_model *m, const char *const *texts, const size_t *lens,
                          size_t n, int nthreads, size_t batch,
                          void (*progress)(size_t done, void *arg), void *arg, float *out)
{
    if (n == 0)
        return 0;
    if (n > UINT32_MAX)
        return QD_ERR_RANGE;
    if (batch == 0)
        batch = 256;
    qd_blas_single_thread();

    par_job j = {.m = m, .texts = texts, .lens = lens, .n = n, .batch = batch, .out = out,
                 .progress = progress, .progress_arg = arg};
    atomic_init(&j.next, 0);
    atomic_init(&j.done, 0);
    atomic_init(&j.rc, 0);
    /* No more workers than chunks; each worker pulls chunks from the cursor. */
    size_t chunk = batch * CHUNK_BATCHES;
    int workers = qd_parallel_workers((n + chunk - 1) / chunk, nthreads);
    qd_parallel_for((size_t)workers, workers, par_worker, &j);
    if (progress && atomic_load(&j.rc) == 0)
        progress(n, arg);
    return atomic_load(&j.rc);
}
