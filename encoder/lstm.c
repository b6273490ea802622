/*
 * lstm.c - the forward pass: embedding mean -> LSTM -> masked mean -> L2 normalize.
 *
 * Matrix work is two kinds of GEMM: the input projection of every token of the batch
 * at once, X (ntok, E) times Wx^T (E, 4H), and at each step the recurrent product of
 * the running questions' hidden states, H_{t-1} (n_t, H) times Wh^T (H, 4H), added into
 * the gate pre-activations of step t. Training multiplies through OpenBLAS (qd_gemm);
 * inference, which has the weights packed in its workspace (qd_fwd.wt), through the
 * small-batch kernel qd_smm below. The rest is element-wise work over 4H gates per
 * token, done by vectorized exp-based kernels that are cloned for AVX-512 and AVX2 and
 * chosen at load time, so the build needs no -march flag.
 *
 * Questions are sorted longest first (see lstm_impl.h), so the hidden states of the
 * n_t questions running at step t are the first n_t rows of step t-1.
 */
#include <cblas.h>
#include <immintrin.h>
#include <pthread.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "lstm_impl.h"
#include "model_impl.h"
#include "qdup/common.h"

/* --- matrix products ------------------------------------------------------------------- */

static atomic_int gemm_reference;

void qd_gemm_use_reference(int on)
{
    atomic_store(&gemm_reference, on);
}

extern void openblas_set_num_threads(int n);

void qd_blas_single_thread(void)
{
    openblas_set_num_threads(1);
}

static void gemm_loops(int ta, int tb, size_t M, size_t N, size_t K, float alpha,
                       const float *A, size_t lda, const float *B, size_t ldb, float beta,
                       float *C, size_t ldc)
{
    for (size_t i = 0; i < M; i++)
        for (size_t j = 0; j < N; j++) {
            double s = 0;
            for (size_t k = 0; k < K; k++) {
                float a = ta ? A[k * lda + i] : A[i * lda + k];
                float b = tb ? B[j * ldb + k] : B[k * ldb + j];
                s += (double)a * b;
            }
            float prev = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
            C[i * ldc + j] = prev + alpha * (float)s;
        }
}

void qd_gemm(int ta, int tb, size_t M, size_t N, size_t K, float alpha, const float *A,
             size_t lda, const float *B, size_t ldb, float beta, float *C, size_t ldc)
{
    if (M == 0 || N == 0)
        return;
    if (atomic_load_explicit(&gemm_reference, memory_order_relaxed)) {
        gemm_loops(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                (blasint)M, (blasint)N, (blasint)K, alpha, A, (blasint)lda, B, (blasint)ldb,
                beta, C, (blasint)ldc);
}

/* --- small-batch products --------------------------------------------------------------- */

/* The daemon encodes a few questions at a time, so most of its products have 1 to 16
 * rows: the recurrent step (n_t, H) x (H, 4H) and the input projection of a dozen
 * tokens. For those, OpenBLAS (from 3 rows on) spends more time packing the weight
 * matrix into its panel layout (256 KiB at H = 128) than multiplying. qd_smm reads
 * weights packed once into that kind of layout instead (qd_lstm_pack): panels of
 * SMM_NP output columns, each panel K rows of SMM_NP floats, contiguous, so a panel
 * streams through in order. MR rows of A times a strip of columns stay in registers
 * for all K: each weight vector is loaded once per strip and multiplied into MR
 * accumulators with the row values broadcast. Every element is summed in order
 * k = 0, 1, ..., K - 1 with fused multiply-adds, in every kernel, so all agree. */

/* Rows per register block. */
#define SMM_MR 4

/* The AVX-512 kernel asks for the panel's row this many steps of k ahead of the one it
 * multiplies by. A panel (K * 64 floats: 32 KiB at K = 128) is read once per block of
 * rows, and the recurrence's blocks are of one to four rows, too few for the
 * multiplications to hide the panel's way from the L2 cache (the weights, 256 KiB,
 * do not fit the L1): ahead 16, a question took about a sixth less time one at a time
 * (qdup-bench encode --batch 1 --threads 1: 19,428 and 18,762 questions/s before,
 * 22,418 and 22,628 after), a tenth less four at a time. Past the panel's end it
 * reaches into the next panel, which comes next; past the last, a prefetch of an
 * address that is not mapped does nothing. The AVX2 kernel, a quarter of a panel (one
 * cache line per step) at a time, gained nothing from it. */
#define SMM_AHEAD 16

#define SMM_INLINE static inline __attribute__((always_inline))

/* AVX-512: MR rows times one panel (4 vectors of 16 floats); nc < 64 masks the stores. */
SMM_INLINE __attribute__((target("avx512f"))) void
smm_block_avx512(size_t mr, size_t nc, size_t K, const float *A, size_t lda, const float *P,
                 int acc, float *C, size_t ldc)
{
    __mmask16 m[4];
    for (int v = 0; v < 4; v++) {
        size_t rem = nc > (size_t)v * 16 ? nc - (size_t)v * 16 : 0;
        m[v] = rem >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << rem) - 1);
    }
    __m512 c[SMM_MR][4];
#pragma GCC unroll 4
    for (size_t r = 0; r < SMM_MR; r++)
#pragma GCC unroll 4
        for (int v = 0; v < 4; v++)
            c[r][v] = (acc && r < mr) ? _mm512_maskz_loadu_ps(m[v], C + r * ldc + v * 16)
                                      : _mm512_setzero_ps();
    for (size_t k = 0; k < K; k++) {
        const float *b = P + k * SMM_NP;
        const char *ahead = (const char *)(b + SMM_AHEAD * SMM_NP);
        _mm_prefetch(ahead, _MM_HINT_T0);
        _mm_prefetch(ahead + 64, _MM_HINT_T0);
        _mm_prefetch(ahead + 128, _MM_HINT_T0);
        _mm_prefetch(ahead + 192, _MM_HINT_T0);
        __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16);
        __m512 b2 = _mm512_loadu_ps(b + 32), b3 = _mm512_loadu_ps(b + 48);
#pragma GCC unroll 4
        for (size_t r = 0; r < SMM_MR; r++) {
            if (r >= mr)
                break;
            __m512 a = _mm512_set1_ps(A[r * lda + k]);
            c[r][0] = _mm512_fmadd_ps(a, b0, c[r][0]);
            c[r][1] = _mm512_fmadd_ps(a, b1, c[r][1]);
            c[r][2] = _mm512_fmadd_ps(a, b2, c[r][2]);
            c[r][3] = _mm512_fmadd_ps(a, b3, c[r][3]);
        }
    }
#pragma GCC unroll 4
    for (size_t r = 0; r < SMM_MR; r++)
        if (r < mr)
#pragma GCC unroll 4
            for (int v = 0; v < 4; v++)
                _mm512_mask_storeu_ps(C + r * ldc + v * 16, m[v], c[r][v]);
}

/* The row count as a constant, so that the block's loops over rows unroll away. */
#define SMM_DISPATCH(block, mr, ...)                                                     \
    switch (mr) {                                                                         \
    case 1: block(1, __VA_ARGS__); break;                                                 \
    case 2: block(2, __VA_ARGS__); break;                                                 \
    case 3: block(3, __VA_ARGS__); break;                                                 \
    default: block(4, __VA_ARGS__); break;                                                \
    }

__attribute__((target("avx512f"))) static void
smm_avx512(size_t M, size_t N, size_t K, const float *A, size_t lda, const float *Bp,
           int acc, float *C, size_t ldc)
{
    /* Panel by panel: one panel (K * 64 floats, 32 KiB at K = 128) stays in the L1
     * cache while every row passes. */
    for (size_t j = 0; j < N; j += SMM_NP)
        for (size_t i = 0; i < M; i += SMM_MR) {
            size_t mr = M - i < SMM_MR ? M - i : SMM_MR, nc = N - j < SMM_NP ? N - j : SMM_NP;
            SMM_DISPATCH(smm_block_avx512, mr, nc, K, A + i * lda, lda, Bp + j * K, acc,
                         C + i * ldc + j, ldc)
        }
}

/* AVX2 with FMA: MR rows times 2 vectors of 8 floats (8 accumulators, which leaves
 * registers for the loads), a quarter of a panel at a time (P advances by 16 within
 * it); C (MR, 16) with row stride ldc. */
SMM_INLINE __attribute__((target("avx2,fma"))) void
smm_block_avx2(size_t mr, size_t K, const float *A, size_t lda, const float *P, int acc,
               float *C, size_t ldc)
{
    __m256 c[SMM_MR][2];
#pragma GCC unroll 4
    for (size_t r = 0; r < SMM_MR; r++)
#pragma GCC unroll 2
        for (int v = 0; v < 2; v++)
            c[r][v] = (acc && r < mr) ? _mm256_loadu_ps(C + r * ldc + v * 8)
                                      : _mm256_setzero_ps();
    for (size_t k = 0; k < K; k++) {
        const float *b = P + k * SMM_NP;
        __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
#pragma GCC unroll 4
        for (size_t r = 0; r < SMM_MR; r++) {
            if (r >= mr)
                break;
            __m256 a = _mm256_broadcast_ss(A + r * lda + k);
            c[r][0] = _mm256_fmadd_ps(a, b0, c[r][0]);
            c[r][1] = _mm256_fmadd_ps(a, b1, c[r][1]);
        }
    }
#pragma GCC unroll 4
    for (size_t r = 0; r < SMM_MR; r++)
        if (r < mr) {
            _mm256_storeu_ps(C + r * ldc, c[r][0]);
            _mm256_storeu_ps(C + r * ldc + 8, c[r][1]);
        }
}

__attribute__((target("avx2,fma"))) static void
smm_avx2(size_t M, size_t N, size_t K, const float *A, size_t lda, const float *Bp, int acc,
         float *C, size_t ldc)
{
    float tmp[SMM_MR * 16];
    for (size_t j = 0; j < N; j += 16)
        for (size_t i = 0; i < M; i += SMM_MR) {
            size_t mr = M - i < SMM_MR ? M - i : SMM_MR;
            const float *P = Bp + j / SMM_NP * SMM_NP * K + j % SMM_NP;
            float *c = C + i * ldc + j;
            size_t nc = N - j < 16 ? N - j : 16;
            if (nc == 16) {
                SMM_DISPATCH(smm_block_avx2, mr, K, A + i * lda, lda, P, acc, c, ldc)
                continue;
            }
            /* The last columns, short of a strip: through a whole strip of scratch (the
             * panel is padded with zero weights). */
            for (size_t r = 0; r < mr; r++)
                for (size_t t = 0; t < 16; t++)
                    tmp[r * 16 + t] = acc && t < nc ? c[r * ldc + t] : 0.0f;
            SMM_DISPATCH(smm_block_avx2, mr, K, A + i * lda, lda, P, acc, tmp, 16)
            for (size_t r = 0; r < mr; r++)
                memcpy(c + r * ldc, tmp + r * 16, nc * sizeof *c);
        }
}

/* The same products by plain loops, in the kernels' order. */
static void smm_loops(size_t M, size_t N, size_t K, const float *A, size_t lda,
                      const float *Bp, int acc, float *C, size_t ldc)
{
    for (size_t i = 0; i < M; i++)
        for (size_t j = 0; j < N; j++) {
            const float *P = Bp + j / SMM_NP * SMM_NP * K + j % SMM_NP;
            float s = acc ? C[i * ldc + j] : 0.0f;
            for (size_t k = 0; k < K; k++)
                s = fmaf(A[i * lda + k], P[k * SMM_NP], s);
            C[i * ldc + j] = s;
        }
}

typedef void (*smm_fn)(size_t M, size_t N, size_t K, const float *A, size_t lda,
                       const float *Bp, int acc, float *C, size_t ldc);

static smm_fn smm_kernel;
static pthread_once_t smm_once = PTHREAD_ONCE_INIT;

/* The kernel for this processor; QDUP_SMM_KERNEL=avx2 or generic picks a lesser one
 * (tests, benchmarks). */
static void smm_init(void)
{
    const char *want = getenv("QDUP_SMM_KERNEL");
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (__builtin_cpu_supports("avx512f") && !(want && *want))
        smm_kernel = smm_avx512;
    else if (avx2 && !(want && strcmp(want, "generic") == 0))
        smm_kernel = smm_avx2;
    else
        smm_kernel = smm_loops;
}

void qd_smm(size_t M, size_t N, size_t K, const float *A, size_t lda, const float *Bp,
            int accumulate, float *C, size_t ldc)
{
    if (M == 0 || N == 0)
        return;
    if (atomic_load_explicit(&gemm_reference, memory_order_relaxed)) {
        smm_loops(M, N, K, A, lda, Bp, accumulate, C, ldc);
        return;
    }
    pthread_once(&smm_once, smm_init);
    smm_kernel(M, N, K, A, lda, Bp, accumulate, C, ldc);
}

size_t qd_smm_packed_len(size_t N, size_t K)
{
    return (N + SMM_NP - 1) / SMM_NP * SMM_NP * K;
}

void qd_smm_pack(size_t N, size_t K, const float *W, float *Bp)
{
    for (size_t j0 = 0; j0 < N; j0 += SMM_NP)
        for (size_t k = 0; k < K; k++)
            for (size_t t = 0; t < SMM_NP; t++)
                Bp[j0 * K + k * SMM_NP + t] = j0 + t < N ? W[(j0 + t) * K + k] : 0.0f;
}

/* --- activations ------------------------------------------------------------------------ */

/* exp(x) to about 1 ulp for x in [-87, 88], written so that loops over it vectorize:
 * x = n ln2 + r with |r| <= ln2/2 (n rounded by the 1.5 * 2^23 trick, ln2 split in two
 * parts so n ln2 is exact), exp(r) by its Taylor polynomial of degree 7, 2^n by
 * building the float's exponent bits. A NaN (a model whose weights overflow the sums)
 * must not reach the float-to-int conversion, which is undefined for it: the clamps
 * are written so that NaN fails both tests and becomes -87, and NaN is returned. */
static inline float fast_exp(float x0)
{
    float x = x0 > -87.0f ? x0 : -87.0f;
    x = x < 88.0f ? x : 88.0f;
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693145751953125f;
    r = r - n * 1.428606765330187045e-06f;
    float p = 1.9841270e-4f;
    p = p * r + 1.3888889e-3f;
    p = p * r + 8.3333333e-3f;
    p = p * r + 4.1666667e-2f;
    p = p * r + 1.6666667e-1f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return x0 == x0 ? p * scale : x0;
}

static inline float fast_sigmoid(float x)
{
    return 1.0f / (1.0f + fast_exp(-x));
}

/* tanh(x) = 1 - 2 / (1 + e^{2x}); absolute error a few 1e-8 near 0. */
static inline float fast_tanh(float x)
{
    return 1.0f - 2.0f / (1.0f + fast_exp(2.0f * x));
}

QD_CLONES void qd_vsigmoid(float *y, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        y[i] = fast_sigmoid(x[i]);
}

QD_CLONES void qd_vtanh(float *y, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        y[i] = fast_tanh(x[i]);
}

/* One LSTM step for `rows` questions: g holds (rows, 4H) pre-activations without bias
 * and receives the activated gates; cprev (rows, H) with row stride cstride (0 for
 * the zero state) is the previous cell state; c and h (rows, H) receive the new state. */
QD_CLONES static void lstm_cell(float *restrict g, const float *restrict bias,
                                const float *restrict cprev, size_t cstride,
                                float *restrict c, float *restrict h, size_t rows, size_t H)
{
    for (size_t r = 0; r < rows; r++) {
        float *gi = g + r * 4 * H, *gf = gi + H, *gg = gf + H, *go = gg + H;
        const float *cp = cprev + r * cstride;
        float *cr = c + r * H, *hr = h + r * H;
        for (size_t k = 0; k < H; k++) {
            float i = fast_sigmoid(gi[k] + bias[k]);
            float f = fast_sigmoid(gf[k] + bias[H + k]);
            float u = fast_tanh(gg[k] + bias[2 * H + k]);
            float o = fast_sigmoid(go[k] + bias[3 * H + k]);
            float cn = f * cp[k] + i * u;
            gi[k] = i;
            gf[k] = f;
            gg[k] = u;
            go[k] = o;
            cr[k] = cn;
            hr[k] = o * fast_tanh(cn);
        }
    }
}

void qd_lstm_pack(const qd_model_hdr *hdr, const qd_params *p, float *wt)
{
    size_t E = hdr->emb_dim, H = hdr->hidden;
    qd_smm_pack(4 * H, E, p->wx, wt);
    qd_smm_pack(4 * H, H, p->wh, wt + qd_smm_packed_len(4 * H, E));
}

size_t qd_lstm_packed_len(const qd_model_hdr *hdr)
{
    size_t E = hdr->emb_dim, H = hdr->hidden;
    return qd_smm_packed_len(4 * H, E) + qd_smm_packed_len(4 * H, H);
}

/* --- the forward pass ------------------------------------------------------------------ */

void qd_fwd_init(qd_fwd *f)
{
    memset(f, 0, sizeof *f);
}

void qd_fwd_free(qd_fwd *f)
{
    if (!f)
        return;
    qd_free(f->order);
    qd_free(f->len);
    qd_free(f->nact);
    qd_free(f->toff);
    qd_free(f->x);
    qd_free(f->gates);
    qd_free(f->c);
    qd_free(f->h);
    qd_free(f->pooled);
    qd_free(f->argmax);
    qd_free(f->norm);
    qd_free(f->out);
    qd_free(f->zeros);
    qd_free(f->wid);
    qd_free(f->urow);
    qd_free(f->xu);
    qd_free(f->gu);
    qd_fwd_init(f);
}

static size_t max_size(size_t a, size_t b)
{
    return a > b ? a : b;
}

/* Makes room for a batch of n questions, T steps and ntok tokens. Everything is
 * reallocated together when anything is too small; capacities grow by half again so
 * a run of growing batches does not reallocate each time. */
static int reserve(qd_fwd *f, size_t n, size_t T, size_t ntok, size_t E, size_t H,
                   size_t D)
{
    if (n <= f->cap_n && T + 1 <= f->cap_t && ntok <= f->cap_tok && E == f->dim_e &&
        H == f->dim_h && D == f->dim_d)
        return 0;
    size_t cn = max_size(f->cap_n, n + n / 2 + 1), ct = max_size(f->cap_t, T + 1 + T / 2);
    size_t ctok = max_size(f->cap_tok, ntok + ntok / 2 + 1);
    float dropout = f->dropout;
    uint64_t dropout_seed = f->dropout_seed;
    const float *wt = f->wt;
    qd_wordmean *wmean = f->wmean;
    qd_fwd_free(f);
    f->dropout = dropout;
    f->dropout_seed = dropout_seed;
    f->wt = wt;
    f->wmean = wmean;
    f->order = qd_mallocarray(cn, sizeof *f->order);
    f->len = qd_mallocarray(cn, sizeof *f->len);
    f->norm = qd_mallocarray(cn, sizeof *f->norm);
    f->pooled = qd_mallocarray(cn, D * sizeof *f->pooled);
    f->argmax = qd_mallocarray(cn, H * sizeof *f->argmax);
    f->out = qd_mallocarray(cn, D * sizeof *f->out);
    f->nact = qd_mallocarray(ct, sizeof *f->nact);
    f->toff = qd_mallocarray(ct, sizeof *f->toff);
    f->x = qd_mallocarray(ctok, E * sizeof *f->x);
    f->gates = qd_mallocarray(ctok, 4 * H * sizeof *f->gates);
    f->c = qd_mallocarray(ctok, H * sizeof *f->c);
    f->h = qd_mallocarray(ctok, H * sizeof *f->h);
    f->zeros = qd_calloc(H, sizeof *f->zeros);
    if (!f->order || !f->len || !f->norm || !f->pooled || !f->argmax || !f->out ||
        !f->nact || !f->toff || !f->x || !f->gates || !f->c || !f->h || !f->zeros) {
        qd_fwd_free(f);
        return QD_ERR_NOMEM;
    }
    f->cap_n = cn;
    f->cap_t = ct;
    f->cap_tok = ctok;
    f->dim_e = E;
    f->dim_h = H;
    f->dim_d = D;
    return 0;
}

/* Inverted dropout: the multiplier (0, or 1 / (1 - p)) of component k of the input of
 * question q at step t. A hash rather than a stored mask: the backward pass recomputes
 * it, and it does not depend on how the batch is split or ordered. */
float qd_dropout_scale(uint64_t seed, size_t q, size_t t, size_t k, float p)
{
    uint64_t z = seed ^ ((uint64_t)q * 0x9E3779B97F4A7C15ULL) ^ ((uint64_t)t << 40) ^ (uint64_t)k;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    return (double)(z >> 11) * 0x1.0p-53 < p ? 0.0f : 1.0f / (1.0f - p);
}

/* Question of seqs behind batch index i. */
static inline size_t seq_of(const qd_fwd *f, size_t i)
{
    return f->sel ? f->sel[i] : i;
}

/* Sorts batch positions by length, longest first, ties by index (a counting sort:
 * lengths are bounded by max_tokens). */
static void sort_by_length(const qd_tokseqs *s, qd_fwd *f, size_t T)
{
    size_t n = f->n;
    /* cnt[l] first counts the questions of length l, then becomes the position of the
     * first of them in longest-first order. toff is free scratch until filled below. */
    uint32_t *cnt = f->toff;
    memset(cnt, 0, (T + 1) * sizeof *cnt);
    for (size_t i = 0; i < n; i++)
        cnt[qd_tokseqs_len(s, seq_of(f, i))]++;
    uint32_t pos = 0;
    for (size_t l = T + 1; l-- > 0;) {
        uint32_t c = cnt[l];
        cnt[l] = pos;
        pos += c;
    }
    for (size_t i = 0; i < n; i++) {
        uint32_t l = qd_tokseqs_len(s, seq_of(f, i));
        uint32_t at = cnt[l]++;
        f->order[at] = (uint32_t)i;
        f->len[at] = l;
    }
}

/* x (E) = the mean of embedding rows rows[0..n): the first row, plus each other in
 * order, times 1 / n (the zero vector for no rows). The cached and the uncached path
 * both come here, which keeps their vectors identical bit for bit. */
static void rows_mean(const float *emb, const int32_t *rows, size_t n, size_t E, float *x)
{
    if (n == 0) {
        memset(x, 0, E * sizeof *x);
        return;
    }
    memcpy(x, emb + (size_t)rows[0] * E, E * sizeof *x);
    for (size_t r = 1; r < n; r++) {
        const float *e = emb + (size_t)rows[r] * E;
        for (size_t k = 0; k < E; k++)
            x[k] += e[k];
    }
    if (n > 1) {
        float inv = 1.0f / (float)n;
        for (size_t k = 0; k < E; k++)
            x[k] *= inv;
    }
}

enum { WM_EMPTY = 0, WM_WRITING = 1, WM_READY = 2 };

/* 1 if word w's row of a cache (its state array) is ready to read. */
static inline int cache_ready(const atomic_uchar *state, size_t w)
{
    return atomic_load_explicit(&state[w], memory_order_acquire) == WM_READY;
}

/* Stores n floats of src as word w's row dst, if this thread is the one to claim it
 * (a row is written once; others computing it meanwhile keep their own copy). */
static void cache_publish(atomic_uchar *state, size_t w, float *dst, const float *src,
                          size_t n)
{
    unsigned char empty = WM_EMPTY;
    if (atomic_compare_exchange_strong_explicit(&state[w], &empty, WM_WRITING,
                                                memory_order_relaxed, memory_order_relaxed)) {
        memcpy(dst, src, n * sizeof *dst);
        atomic_store_explicit(&state[w], WM_READY, memory_order_release);
    }
}

/* Rows ready in a cache of nwords (its state array). */
static size_t cache_count(const atomic_uchar *state, size_t nwords)
{
    size_t n = 0;
    for (size_t w = 0; w < nwords; w++)
        n += cache_ready(state, w);
    return n;
}

/* x (E) = the mean of word w's rows rows[0..n): copied from the cache when it is
 * there; else computed, and stored by the one thread that claims the word's row. */
static void word_mean(qd_wordmean *c, uint32_t w, const float *emb, const int32_t *rows,
                      size_t n, size_t E, float *x)
{
    float *row = c->mean + (size_t)w * E;
    if (cache_ready(c->state, w)) {
        memcpy(x, row, E * sizeof *x);
        return;
    }
    rows_mean(emb, rows, n, E, x);
    cache_publish(c->state, w, row, x, E);
}

qd_wordmean *qd_wordmean_new(size_t V, size_t E, size_t G)
{
    qd_wordmean *c = qd_calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->nwords = V;
    c->dim = E;
    c->gdim = G;
    c->mean = qd_calloc(V, E * sizeof *c->mean);
    c->state = qd_calloc(V, sizeof *c->state);
    c->gates = qd_calloc(V, G * sizeof *c->gates);
    c->gstate = qd_calloc(V, sizeof *c->gstate);
    if (!c->mean || !c->state || !c->gates || !c->gstate) {
        qd_wordmean_free(c);
        return NULL;
    }
    return c;
}

void qd_wordmean_free(qd_wordmean *c)
{
    if (!c)
        return;
    qd_free(c->mean);
    qd_free(c->state);
    qd_free(c->gates);
    qd_free(c->gstate);
    qd_free(c);
}

size_t qd_wordmean_count(const qd_wordmean *c)
{
    return c ? cache_count(c->state, c->nwords) : 0;
}

size_t qd_wordmean_gates_count(const qd_wordmean *c)
{
    return c ? cache_count(c->gstate, c->nwords) : 0;
}

/* Room in f for the projection cache's rows of ntok tokens (kept apart from reserve:
 * only passes with the cache need them). */
static int reserve_wid(qd_fwd *f, size_t ntok, size_t E, size_t H)
{
    if (ntok <= f->cap_wid && E == f->dim_e && H == f->dim_h)
        return 0;
    size_t cap = max_size(f->cap_wid, ntok + ntok / 2 + 1);
    qd_free(f->wid);
    qd_free(f->urow);
    qd_free(f->xu);
    qd_free(f->gu);
    f->wid = qd_mallocarray(cap, sizeof *f->wid);
    f->urow = qd_mallocarray(cap, sizeof *f->urow);
    f->xu = qd_mallocarray(cap, E * sizeof *f->xu);
    f->gu = qd_mallocarray(cap, 4 * H * sizeof *f->gu);
    f->cap_wid = f->wid && f->urow && f->xu && f->gu ? cap : 0;
    return f->cap_wid ? 0 : QD_ERR_NOMEM;
}

/* The input projection of every token into f->gates (ntok rows, time-major), known
 * words' rows from the cache c: the other rows are gathered (into xu), projected
 * together by qd_smm (into gu) and scattered back, and the known words among them are
 * stored for the next passes by the one thread that claims each. f->wid holds each
 * row's known word, or -1. */
static void project_cached(qd_fwd *f, qd_wordmean *c, size_t ntok, size_t E, size_t G)
{
    size_t nu = 0;
    for (size_t r = 0; r < ntok; r++) {
        int32_t w = f->wid[r];
        if (w >= 0 && cache_ready(c->gstate, (size_t)w)) {
            memcpy(f->gates + r * G, c->gates + (size_t)w * G, G * sizeof *f->gates);
            continue;
        }
        memcpy(f->xu + nu * E, f->x + r * E, E * sizeof *f->xu);
        f->urow[nu++] = (uint32_t)r;
    }
    if (nu == 0)
        return;
    qd_smm(nu, G, E, f->xu, E, f->wt, 0, f->gu, G);
    for (size_t u = 0; u < nu; u++) {
        size_t r = f->urow[u];
        const float *g = f->gu + u * G;
        memcpy(f->gates + r * G, g, G * sizeof *f->gates);
        int32_t w = f->wid[r];
        if (w >= 0)
            cache_publish(c->gstate, (size_t)w, c->gates + (size_t)w * G, g, G);
    }
}

int qd_lstm_forward(const qd_model_hdr *hdr, const qd_params *p, const qd_tokseqs *s,
                    const uint32_t *sel, size_t n, qd_fwd *f)
{
    size_t E = hdr->emb_dim, H = hdr->hidden, D = qd_model_out_dim(hdr), T = 0, ntok = 0;
    if (!sel)
        n = s->n;
    for (size_t i = 0; i < n; i++) {
        size_t l = qd_tokseqs_len(s, sel ? sel[i] : i);
        ntok += l;
        if (l > T)
            T = l;
    }
    if (reserve(f, n, T, ntok, E, H, D))
        return QD_ERR_NOMEM;
    f->n = n;
    f->D = D;
    f->sel = sel;
    f->T = T;
    f->ntok = ntok;
    sort_by_length(s, f, T);

    /* Steps: questions running at t, and where step t's rows start. */
    size_t running = n;
    f->toff[0] = 0;
    for (size_t t = 0; t < T; t++) {
        while (running > 0 && f->len[running - 1] <= t)
            running--;
        f->nact[t] = (uint32_t)running;
        f->toff[t + 1] = f->toff[t] + (uint32_t)running;
    }
    QD_ASSERT(T == 0 || f->toff[T] == ntok);

    /* Embedding: each token is the mean of its rows (or a known word's cached mean).
     * With packed weights, known words' projections may come from the cache too (wid:
     * each row's word, for project_cached). */
    QD_ASSERT(!f->wmean || f->wmean->dim == E);
    qd_wordmean *gc = f->wmean && f->wt && f->dropout == 0 && f->wmean->gdim == 4 * H
                          ? f->wmean
                          : NULL;
    if (gc && reserve_wid(f, ntok, E, H))
        gc = NULL; /* without memory for it, every row is projected */
    /* A row whose projection the cache holds needs no embedding, unless the pooling
     * averages the embeddings too. */
    int skip_cached = gc && !(hdr->pool & QD_POOL_EMB);
    for (size_t t = 0; t < T; t++) {
        for (size_t j = 0; j < f->nact[t]; j++) {
            size_t tok = s->qoff[seq_of(f, f->order[j])] + t;
            float *x = f->x + (f->toff[t] + j) * E;
            uint32_t r0 = s->toff[tok], r1 = s->toff[tok + 1];
            int32_t first = r1 > r0 ? s->rows[r0] : 0;
            if (gc) {
                int32_t w = first >= QD_TOK_NRESERVED && (size_t)first < gc->nwords ? first : -1;
                f->wid[f->toff[t] + j] = w;
                if (skip_cached && w >= 0 && cache_ready(gc->gstate, (size_t)w))
                    continue; /* once ready, a cached row stays ready: project_cached
                                 takes it from the cache */
            }
            if (f->wmean && r1 - r0 > 1 && first >= QD_TOK_NRESERVED &&
                (size_t)first < f->wmean->nwords)
                word_mean(f->wmean, (uint32_t)first, p->emb, s->rows + r0, r1 - r0, E, x);
            else
                rows_mean(p->emb, s->rows + r0, r1 - r0, E, x);
            if (f->dropout > 0)
                for (size_t k = 0; k < E; k++)
                    x[k] *= qd_dropout_scale(f->dropout_seed, seq_of(f, f->order[j]), t, k,
                                          f->dropout);
        }
    }

    /* Input projection for every token at once (known words' from the cache). */
    if (gc)
        project_cached(f, gc, ntok, E, 4 * H);
    else if (f->wt)
        qd_smm(ntok, 4 * H, E, f->x, E, f->wt, 0, f->gates, 4 * H);
    else
        qd_gemm(0, 1, ntok, 4 * H, E, 1.0f, f->x, E, p->wx, E, 0.0f, f->gates, 4 * H);

    /* Recurrence. */
    for (size_t t = 0; t < T; t++) {
        size_t nt = f->nact[t], row = f->toff[t];
        float *g = f->gates + row * 4 * H;
        const float *cprev = f->zeros;
        size_t cstride = 0;
        if (t > 0) {
            size_t prev = f->toff[t - 1];
            if (f->wt)
                qd_smm(nt, 4 * H, H, f->h + prev * H, H, f->wt + qd_smm_packed_len(4 * H, E),
                       1, g, 4 * H);
            else
                qd_gemm(0, 1, nt, 4 * H, H, 1.0f, f->h + prev * H, H, p->wh, H, 1.0f, g,
                        4 * H);
            cprev = f->c + prev * H;
            cstride = H;
        }
        lstm_cell(g, p->b, cprev, cstride, f->c + row * H, f->h + row * H, nt, H);
    }

    /* Pooling over the real tokens, back in batch order: the mean of h, then (as the
     * model asks) the max of h and the mean of x. */
    int with_max = (hdr->pool & QD_POOL_MAX) != 0, with_emb = (hdr->pool & QD_POOL_EMB) != 0;
    for (size_t j = 0; j < n; j++) {
        size_t q = f->order[j], l = f->len[j];
        float *mean = f->pooled + q * D, *mx = mean + H, *xe = mean + (with_max ? 2 * H : H);
        uint32_t *arg = f->argmax + q * H;
        memset(mean, 0, D * sizeof *mean);
        if (l == 0)
            continue;
        for (size_t t = 0; t < l; t++) {
            size_t row = f->toff[t] + j;
            const float *h = f->h + row * H;
            for (size_t k = 0; k < H; k++)
                mean[k] += h[k];
            if (with_max)
                for (size_t k = 0; k < H; k++)
                    if (t == 0 || h[k] > mx[k]) {
                        mx[k] = h[k];
                        arg[k] = (uint32_t)row;
                    }
            if (with_emb) {
                const float *x = f->x + row * E;
                for (size_t k = 0; k < E; k++)
                    xe[k] += x[k];
            }
        }
        float inv = 1.0f / (float)l;
        for (size_t k = 0; k < H; k++)
            mean[k] *= inv;
        if (with_emb)
            for (size_t k = 0; k < E; k++)
                xe[k] *= inv;
    }
    for (size_t q = 0; q < n; q++) {
        float *pool = f->pooled + q * D, *out = f->out + q * D;
        double ss = 0;
        for (size_t k = 0; k < D; k++)
            ss += (double)pool[k] * pool[k];
        float norm = (float)sqrt(ss);
        f->norm[q] = norm;
        float inv = norm > 0 ? 1.0f / norm : 0.0f;
        for (size_t k = 0; k < D; k++)
            out[k] = pool[k] * inv;
    }
    return 0;
}

/* --- gradients --------------------------------------------------------------------------- */

int qd_grads_init(qd_grads *g, const qd_model_hdr *hdr)
{
    memset(g, 0, sizeof *g);
    g->nparams = qd_model_nparams(hdr);
    g->nrows = qd_model_rows(hdr);
    g->data = qd_calloc(g->nparams, sizeof *g->data);
    g->touched = qd_calloc(g->nrows, 1);
    g->rows = qd_mallocarray(g->nrows, sizeof *g->rows);
    if (!g->data || !g->touched || !g->rows) {
        qd_grads_free(g);
        return QD_ERR_NOMEM;
    }
    qd_params_point(hdr, g->data, &g->g);
    return 0;
}

void qd_grads_free(qd_grads *g)
{
    if (!g)
        return;
    qd_free(g->data);
    qd_free(g->touched);
    qd_free(g->rows);
    memset(g, 0, sizeof *g);
}

void qd_grads_zero(qd_grads *g)
{
    size_t E = (size_t)(g->g.wx - g->g.emb) / g->nrows;
    for (size_t i = 0; i < g->nrows_touched; i++) {
        memset(g->g.emb + (size_t)g->rows[i] * E, 0, E * sizeof(float));
        g->touched[g->rows[i]] = 0;
    }
    g->nrows_touched = 0;
    memset(g->g.wx, 0, (size_t)(g->data + g->nparams - g->g.wx) * sizeof(float));
}

static void touch_row(qd_grads *g, int32_t row)
{
    if (!g->touched[row]) {
        g->touched[row] = 1;
        g->rows[g->nrows_touched++] = row;
    }
}

void qd_grads_add(qd_grads *dst, const qd_grads *src)
{
    size_t E = (size_t)(src->g.wx - src->g.emb) / src->nrows;
    for (size_t i = 0; i < src->nrows_touched; i++) {
        int32_t r = src->rows[i];
        touch_row(dst, r);
        float *d = dst->g.emb + (size_t)r * E;
        const float *s = src->g.emb + (size_t)r * E;
        for (size_t k = 0; k < E; k++)
            d[k] += s[k];
    }
    size_t dense = (size_t)(src->data + src->nparams - src->g.wx);
    float *d = dst->g.wx;
    const float *s = src->g.wx;
    for (size_t i = 0; i < dense; i++)
        d[i] += s[i];
}

/* --- backward ---------------------------------------------------------------------------- */

void qd_bwd_init(qd_bwd *b)
{
    memset(b, 0, sizeof *b);
}

void qd_bwd_free(qd_bwd *b)
{
    if (!b)
        return;
    qd_free(b->dpooled);
    qd_free(b->dpool);
    qd_free(b->dh_max);
    qd_free(b->dg);
    qd_free(b->dh_rec);
    qd_free(b->dc);
    qd_free(b->hprev);
    qd_free(b->dx);
    qd_bwd_init(b);
}

static int bwd_reserve(qd_bwd *b, size_t n, size_t ntok, size_t E, size_t H, size_t D)
{
    if (n <= b->cap_n && ntok <= b->cap_tok && E == b->dim_e && H == b->dim_h &&
        D == b->dim_d)
        return 0;
    size_t cn = max_size(b->cap_n, n + n / 2 + 1);
    size_t ctok = max_size(b->cap_tok, ntok + ntok / 2 + 1);
    qd_bwd_free(b);
    b->dpooled = qd_mallocarray(cn, D * sizeof(float));
    b->dpool = qd_mallocarray(cn, H * sizeof(float));
    b->dh_max = qd_mallocarray(ctok, H * sizeof(float));
    b->dh_rec = qd_mallocarray(cn, H * sizeof(float));
    b->dc = qd_mallocarray(cn, H * sizeof(float));
    b->dg = qd_mallocarray(ctok, 4 * H * sizeof(float));
    b->hprev = qd_mallocarray(ctok, H * sizeof(float));
    b->dx = qd_mallocarray(ctok, E * sizeof(float));
    if (!b->dpooled || !b->dpool || !b->dh_max || !b->dh_rec || !b->dc || !b->dg ||
        !b->hprev || !b->dx) {
        qd_bwd_free(b);
        return QD_ERR_NOMEM;
    }
    b->cap_n = cn;
    b->cap_tok = ctok;
    b->dim_e = E;
    b->dim_h = H;
    b->dim_d = D;
    return 0;
}

void qd_l2norm_backward(size_t n, size_t D, const float *out, const float *norm,
                        const float *dout, float *dpooled)
{
    for (size_t q = 0; q < n; q++) {
        const float *o = out + q * D, *d = dout + q * D;
        float *dp = dpooled + q * D;
        if (norm[q] <= 0) {
            memset(dp, 0, D * sizeof *dp);
            continue;
        }
        double dot = 0;
        for (size_t k = 0; k < D; k++)
            dot += (double)o[k] * d[k];
        float inv = 1.0f / norm[q], fdot = (float)dot;
        for (size_t k = 0; k < D; k++)
            dp[k] = (d[k] - o[k] * fdot) * inv;
    }
}

/* Backward of one LSTM step for `rows` questions. g holds the step's activated gates,
 * c its cell states, cprev the previous ones (row stride cstride; 0: the zero state).
 * The gradient reaching h is dpool (from the mean) plus dh_rec (from step t+1) plus
 * dmax (from max pooling; row stride mstride, 0 for a row of zeros); dc holds the
 * gradient reaching c from step t+1 and is replaced by the gradient reaching c_{t-1}.
 * dg receives the gradient w.r.t. the gate pre-activations. */
QD_CLONES static void lstm_cell_backward(const float *restrict g, const float *restrict c,
                                         const float *restrict cprev, size_t cstride,
                                         const float *restrict dpool,
                                         const float *restrict dmax, size_t mstride,
                                         const float *restrict dh_rec, float *restrict dc,
                                         float *restrict dg, size_t rows, size_t H)
{
    for (size_t r = 0; r < rows; r++) {
        const float *gi = g + r * 4 * H, *gf = gi + H, *gg = gf + H, *go = gg + H;
        const float *cr = c + r * H, *cp = cprev + r * cstride, *dp = dpool + r * H;
        const float *dr = dh_rec + r * H, *dm = dmax + r * mstride;
        float *dcr = dc + r * H, *di = dg + r * 4 * H, *df = di + H, *du = df + H,
              *dO = du + H;
        for (size_t k = 0; k < H; k++) {
            float tc = fast_tanh(cr[k]);
            float dh = dp[k] + dr[k] + dm[k];
            float dcell = dcr[k] + dh * go[k] * (1.0f - tc * tc);
            float i = gi[k], f = gf[k], u = gg[k], o = go[k];
            di[k] = dcell * u * i * (1.0f - i);
            df[k] = dcell * cp[k] * f * (1.0f - f);
            du[k] = dcell * i * (1.0f - u * u);
            dO[k] = dh * tc * o * (1.0f - o);
            dcr[k] = dcell * f;
        }
    }
}

int qd_lstm_backward(const qd_model_hdr *hdr, const qd_params *p, const qd_tokseqs *s,
                     const qd_fwd *f, const float *dout, qd_bwd *b, qd_grads *grads)
{
    size_t E = hdr->emb_dim, H = hdr->hidden, D = f->D, n = f->n, ntok = f->ntok, T = f->T;
    int with_max = (hdr->pool & QD_POOL_MAX) != 0, with_emb = (hdr->pool & QD_POOL_EMB) != 0;
    size_t emb_at = with_max ? 2 * H : H; /* where the embedding mean sits in pooled */
    if (bwd_reserve(b, n, ntok, E, H, D))
        return QD_ERR_NOMEM;
    if (ntok == 0)
        return 0;

    /* Normalization, then the mean: dpool by length-order position, divided by length;
     * max pooling routes each unit's gradient to the row that held the max. */
    qd_l2norm_backward(n, D, f->out, f->norm, dout, b->dpooled);
    for (size_t j = 0; j < n; j++) {
        const float *src = b->dpooled + (size_t)f->order[j] * D;
        float *dst = b->dpool + j * H;
        float inv = f->len[j] ? 1.0f / (float)f->len[j] : 0.0f;
        for (size_t k = 0; k < H; k++)
            dst[k] = src[k] * inv;
    }
    if (with_max) {
        memset(b->dh_max, 0, ntok * H * sizeof(float));
        for (size_t q = 0; q < n; q++) {
            if (f->norm[q] <= 0)
                continue;
            const float *src = b->dpooled + q * D + H;
            const uint32_t *arg = f->argmax + q * H;
            for (size_t k = 0; k < H; k++)
                b->dh_max[(size_t)arg[k] * H + k] += src[k];
        }
    }

    /* Through time, last step first. */
    for (size_t t = T; t-- > 0;) {
        size_t nt = f->nact[t], row = f->toff[t];
        size_t nrec = t + 1 < T ? f->nact[t + 1] : 0;
        const float *cprev = f->zeros;
        size_t cstride = 0;
        if (t > 0) {
            cprev = f->c + (size_t)f->toff[t - 1] * H;
            cstride = H;
        }
        /* Questions that end at step t get nothing from step t+1. */
        memset(b->dh_rec + nrec * H, 0, (nt - nrec) * H * sizeof(float));
        memset(b->dc + nrec * H, 0, (nt - nrec) * H * sizeof(float));
        lstm_cell_backward(f->gates + row * 4 * H, f->c + row * H, cprev, cstride, b->dpool,
                           with_max ? b->dh_max + row * H : f->zeros, with_max ? H : 0,
                           b->dh_rec, b->dc, b->dg + row * 4 * H, nt, H);
        if (t > 0)
            qd_gemm(0, 0, nt, H, 4 * H, 1.0f, b->dg + row * 4 * H, 4 * H, p->wh, H, 0.0f,
                    b->dh_rec, H);
    }

    /* Weight gradients, each one product over every row of the batch. */
    size_t n0 = f->nact[0];
    for (size_t t = 1; t < T; t++)
        memcpy(b->hprev + (size_t)f->toff[t] * H, f->h + (size_t)f->toff[t - 1] * H,
               (size_t)f->nact[t] * H * sizeof(float));
    if (ntok > n0)
        qd_gemm(1, 0, 4 * H, H, ntok - n0, 1.0f, b->dg + n0 * 4 * H, 4 * H,
                b->hprev + n0 * H, H, 1.0f, grads->g.wh, H);
    qd_gemm(1, 0, 4 * H, E, ntok, 1.0f, b->dg, 4 * H, f->x, E, 1.0f, grads->g.wx, E);
    for (size_t r = 0; r < ntok; r++) {
        const float *d = b->dg + r * 4 * H;
        for (size_t k = 0; k < 4 * H; k++)
            grads->g.b[k] += d[k];
    }

    /* Embedding rows: each token's gradient (through the LSTM, and through the
     * embedding mean when pooled) shared among the rows it averaged. */
    qd_gemm(0, 0, ntok, E, 4 * H, 1.0f, b->dg, 4 * H, p->wx, E, 0.0f, b->dx, E);
    if (with_emb)
        for (size_t j = 0; j < n; j++) {
            const float *src = b->dpooled + (size_t)f->order[j] * D + emb_at;
            float inv = 1.0f / (float)(f->len[j] ? f->len[j] : 1);
            for (size_t t = 0; t < f->len[j]; t++) {
                float *dx = b->dx + ((size_t)f->toff[t] + j) * E;
                for (size_t k = 0; k < E; k++)
                    dx[k] += src[k] * inv;
            }
        }
    for (size_t t = 0; t < T; t++) {
        for (size_t j = 0; j < f->nact[t]; j++) {
            size_t tok = s->qoff[seq_of(f, f->order[j])] + t;
            float *dx = b->dx + ((size_t)f->toff[t] + j) * E;
            uint32_t r0 = s->toff[tok], r1 = s->toff[tok + 1];
            if (f->dropout > 0)
                for (size_t k = 0; k < E; k++)
                    dx[k] *= qd_dropout_scale(f->dropout_seed, seq_of(f, f->order[j]), t, k,
                                           f->dropout);
            float share = r1 > r0 ? 1.0f / (float)(r1 - r0) : 0.0f;
            for (uint32_t r = r0; r < r1; r++) {
                touch_row(grads, s->rows[r]);
                float *e = grads->g.emb + (size_t)s->rows[r] * E;
                for (size_t k = 0; k < E; k++)
                    e[k] += share * dx[k];
            }
        }
    }
    return 0;
}
