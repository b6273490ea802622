/*
 * lstm_impl.h - the encoder's layers, shared by inference (enc.c) and training
 * (train.c): one forward pass for both, so there is never a second encoder.
 *
 * A batch is processed time-major and packed: questions are sorted by length, longest
 * first, so at step t the questions still running are a prefix of that order (n_t of
 * them) and the rows of step t are contiguous. Padding is never computed: a batch of
 * mixed lengths costs what its real tokens cost. Buffers of shape (ntok, ...) hold one
 * row per real token, step 0's rows first.
 */
#ifndef QDUP_LSTM_IMPL_H
#define QDUP_LSTM_IMPL_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "qdup/model.h"
#include "qdup/tok.h"

/* C = alpha * op(A) * op(B) + beta * C, row-major; op transposes when the flag is set.
 * op(A) is (M, K), op(B) is (K, N), C is (M, N). Goes to cblas_sgemm, or to a plain
 * triple loop when the reference is selected (the oracle in tests). */
void qd_gemm(int trans_a, int trans_b, size_t M, size_t N, size_t K, float alpha,
             const float *A, size_t lda, const float *B, size_t ldb, float beta, float *C,
             size_t ldc);
/* Tests only: route qd_gemm through the plain loops (1) or BLAS (0). */
void qd_gemm_use_reference(int on);
/* Makes OpenBLAS run each call on the calling thread: qdup parallelizes above BLAS. */
void qd_blas_single_thread(void);

/* Output columns per panel of a matrix packed for qd_smm. */
#define SMM_NP 64

/* C (M, N) = [C +] A (M, K) * W^T for a W (N, K) packed by qd_smm_pack into Bp: the
 * small-batch product (lstm.c), for few rows of A against a weight matrix. Row-major,
 * row strides lda and ldc. Adds into C when `accumulate` is set, else overwrites it.
 * Each element is summed in order of k with fused multiply-adds, by the AVX-512, AVX2
 * or plain kernel (QDUP_SMM_KERNEL=avx2 or generic picks a lesser one; the reference of
 * qd_gemm_use_reference, the plain one). */
void qd_smm(size_t M, size_t N, size_t K, const float *A, size_t lda, const float *Bp,
            int accumulate, float *C, size_t ldc);
/* Floats of W (N, K) packed: panels of SMM_NP rows of W (the last padded with zeros),
 * each stored transposed, K rows of SMM_NP. */
size_t qd_smm_packed_len(size_t N, size_t K);
void qd_smm_pack(size_t N, size_t K, const float *W, float *Bp);

/* Packs wx and then wh for qd_smm into wt (qd_lstm_packed_len floats). */
void qd_lstm_pack(const qd_model_hdr *hdr, const qd_params *p, float *wt);
size_t qd_lstm_packed_len(const qd_model_hdr *hdr);

/* The mean embedding of each vocabulary word, for inference: a known word's rows are
 * [id, its n-gram rows...], a pure function of the id (tok.h), so its mean is computed
 * once, the first time the word is encoded, and copied after that: one row read instead
 * of one per n-gram, scattered over the embedding table. Filled lazily by any number of
 * threads at once: a word's state goes 0 (empty) -> 1 (one thread writing its row) -> 2
 * (ready, published with release order); a thread that finds it not ready computes the
 * mean itself, exactly as without the cache, so the vectors are the same bit for bit.
 * Only for a model whose weights no longer change, and only for token batches made by
 * qd_tok_encode with that model's vocabulary and settings. */
typedef struct qd_wordmean {
    size_t nwords;         /* V: word ids 0 .. V-1 (0 and 1 reserved, never cached) */
    size_t dim;            /* E: floats per row */
    float *mean;           /* (V, E) the mean of word w's rows once state[w] is 2;
                              calloc'd, so a page takes memory only once written */
    atomic_uchar *state;   /* (V) 0 empty, 1 being written, 2 ready */
    /* The same for the input projection of each word's mean, x W_x^T (no bias), as
     * qd_smm computes it (the passes with packed weights only: a row of qd_smm's
     * product is the same bit for bit in any batch, so a cached row is the row the
     * batch would compute). Filled and published like the means. */
    size_t gdim;           /* 4H: floats per projected row */
    float *gates;          /* (V, 4H) word w's projection once gstate[w] is 2 */
    atomic_uchar *gstate;  /* (V) 0 empty, 1 being written, 2 ready */
} qd_wordmean;

/* A cache for V words of E floats (their means) and G floats (their projections),
 * empty; NULL without memory. */
qd_wordmean *qd_wordmean_new(size_t V, size_t E, size_t G);
void qd_wordmean_free(qd_wordmean *c);
/* Words whose mean, and whose projection, is cached (for tests and reports). */
size_t qd_wordmean_count(const qd_wordmean *c);
size_t qd_wordmean_gates_count(const qd_wordmean *c);

/* Forward activations of one batch, kept for the backward pass. Grows as needed. */
typedef struct qd_fwd {
    size_t n;          /* questions in the batch */
    size_t T;          /* tokens in the longest question */
    size_t ntok;       /* real tokens in the batch */
    uint32_t *order;   /* (n) batch index (0..n-1) of each position in length order */
    const uint32_t *sel; /* (n) question of seqs for each batch index, or NULL: identity */
    uint32_t *len;     /* (n) tokens of the question at each position */
    uint32_t *nact;    /* (T) questions still running at step t */
    uint32_t *toff;    /* (T + 1) first row of step t in the time-major buffers */
    float *x;          /* (ntok, E) token embeddings */
    float *gates;      /* (ntok, 4H) gate activations i f g o (after sigmoid / tanh) */
    float *c;          /* (ntok, H) cell states */
    float *h;          /* (ntok, H) hidden states */
    size_t D;          /* width of pooled and out (qd_model_out_dim) */
    float *pooled;     /* (n, D) [mean of h | max of h | mean of x] over real tokens, in
                          batch order; the parts the model's pool bits select */
    uint32_t *argmax;  /* (n, H) row of the max of each hidden unit (max pooling only) */
    float *norm;       /* (n) L2 norm of pooled (0 for an empty question) */
    float *out;        /* (n, D) pooled / norm: the unit vectors */
    float *zeros;      /* (H) the state before step 0 */
    const float *wt;   /* the weights packed for qd_smm (qd_lstm_pack) of the params
                          passed to qd_lstm_forward, borrowed; small products then run
                          through qd_smm. NULL: qd_gemm only (training) */
    qd_wordmean *wmean; /* inference only: the model's cache of word means, borrowed,
                           read and filled by the pass; NULL: every token's rows are read
                           (always for training, and for token batches not made by
                           qd_tok_encode with the model's vocabulary). With wt set, the
                           pass also takes known words' projections from it */
    int32_t *wid;      /* (cap_wid) the known word of each row, or -1 (projection cache) */
    uint32_t *urow;    /* (cap_wid) the rows whose projection is computed, in order */
    float *xu, *gu;    /* (cap_wid, E), (cap_wid, 4H): the rows whose projection is
                          computed, gathered, and their projections */
    size_t cap_wid;    /* rows wid, xu and gu are allocated for */
    float dropout;     /* training only: probability of zeroing each input component
                          (inverted dropout on the token embeddings); 0 for inference */
    uint64_t dropout_seed; /* draws of this pass: the mask is a hash of (seed, question,
                              step, component), recomputed by the backward pass */
    size_t cap_n, cap_t, cap_tok; /* questions, steps + 1 and tokens allocated for */
    size_t dim_e, dim_h, dim_d;   /* E, H and D the buffers were allocated for */
} qd_fwd;

void qd_fwd_init(qd_fwd *f);
void qd_fwd_free(qd_fwd *f);

/* Runs the encoder over questions sel[0..n) of seqs (all of them, in order, when sel is
 * NULL, with n = seqs->n) with weights p (shape hdr), filling f; row i of f->out is the
 * vector of question sel[i]. Returns 0 or QD_ERR_NOMEM. */
int qd_lstm_forward(const qd_model_hdr *hdr, const qd_params *p, const qd_tokseqs *seqs,
                    const uint32_t *sel, size_t n, qd_fwd *f);

/* --- backward ------------------------------------------------------------------------ */

/* Gradients with respect to the weights: one contiguous buffer shaped like the
 * parameters, plus the list of embedding rows a batch touched, so that zeroing costs
 * what the batch touched rather than the whole table. */
typedef struct qd_grads {
    float *data;       /* (nparams) every gradient, in parameter order */
    size_t nparams;    /* floats in data */
    qd_params g;       /* named views into data */
    size_t nrows;      /* embedding rows in the table (R) */
    uint8_t *touched;  /* (R) 1 if the row's gradient may be nonzero */
    int32_t *rows;     /* (nrows_touched) the touched rows, in order of first touch */
    size_t nrows_touched; /* entries in rows */
} qd_grads;

int qd_grads_init(qd_grads *g, const qd_model_hdr *hdr);
void qd_grads_free(qd_grads *g);
/* Sets every gradient to zero (the embedding rows through the touched list). */
void qd_grads_zero(qd_grads *g);
/* dst += src, touched rows included. */
void qd_grads_add(qd_grads *dst, const qd_grads *src);

/* Scratch of the backward pass, sized like the forward activations. */
typedef struct qd_bwd {
    float *dpooled;    /* (n, D) gradient w.r.t. the pooled vector */
    float *dpool;      /* (n, H) gradient w.r.t. the mean of h, divided by length */
    float *dh_max;     /* (ntok, H) gradient reaching h through max pooling (or NULL) */
    float *dg;         /* (ntok, 4H) gradient w.r.t. gate pre-activations */
    float *dh_rec;     /* (n, H) gradient reaching h_{t-1} through the recurrence */
    float *dc;         /* (n, H) gradient reaching c_{t-1} */
    float *hprev;      /* (ntok, H) h_{t-1} next to each row of steps >= 1 */
    float *dx;         /* (ntok, E) gradient w.r.t. the token embeddings */
    size_t cap_n, cap_tok; /* questions and tokens allocated for */
    size_t dim_e, dim_h, dim_d; /* E, H and D the buffers were allocated for */
} qd_bwd;

void qd_bwd_init(qd_bwd *b);
void qd_bwd_free(qd_bwd *b);

/* Backward of out = pooled / ||pooled||: dpooled = (dout - out (out . dout)) / norm,
 * row by row of width D (zero where norm is 0). */
void qd_l2norm_backward(size_t n, size_t D, const float *out, const float *norm,
                        const float *dout, float *dpooled);

/* Backpropagation through the whole encoder for the batch of the last forward pass f
 * over seqs: given dout (n, D), the gradient w.r.t. f->out in batch order, adds the
 * gradients of every weight into grads. */
int qd_lstm_backward(const qd_model_hdr *hdr, const qd_params *p, const qd_tokseqs *seqs,
                     const qd_fwd *f, const float *dout, qd_bwd *b, qd_grads *grads);

/* The inverted-dropout multiplier (0 or 1 / (1 - p)) of input component k of
 * question q (its index in the qd_tokseqs) at step t, for a pass with this seed. */
float qd_dropout_scale(uint64_t seed, size_t q, size_t t, size_t k, float p);

/* Activation kernels, vectorized; exposed for the tests of their accuracy. */
void qd_vsigmoid(float *y, const float *x, size_t n);
void qd_vtanh(float *y, const float *x, size_t n);

#endif
