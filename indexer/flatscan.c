/*
 * flatscan.c - exact inner-product search by one pass over 8-bit codes, then exact
 * re-scoring of the best candidates from the float vectors.
 *
 * Codes: each vector x is stored as s * c with s = max |x_i| / 127 and c_i =
 * round(x_i / s) in -127..127; a query is quantized the same way (its own scale only
 * multiplies all of its scores, so it is dropped). The candidate score of a vector is
 * (float)(c_q . c_x) * s_x: an integer dot product, exact in every kernel, then one
 * float multiply, so all kernels agree bit for bit. Its error against the float inner
 * product is about 1e-3 for unit vectors of 128 components, which is why the best
 * `rescore` candidates (64 by default), not k, are scored again exactly.
 *
 * Exactness is checked, not hoped for. With q = s_q c_q + e_q and x = s_x c_x + e_x
 * (every |e_i| at most half a step), q.x - s_q s_x c_q.c_x = s_q c_q.e_x + e_q.x, so
 * a candidate score is off by at most E = s_x ||s_q c_q||_1 / 2 + s_q ||x||_1 / 2, and
 * the largest s_x and ||x||_1 held bound it for every vector. After re-scoring, if the
 * k-th exact score beats the best candidate score left out by more than E,
 * no vector left out can be in the top k and the answer is exact. Otherwise (crowded
 * neighbourhoods: many vectors within E of each other) that query is scanned again,
 * keeping every vector whose candidate score comes within E of the k-th exact score,
 * and all of those are re-scored.
 *
 * Layout: vectors are grouped in blocks of 16; inside a block the codes run by groups
 * of 4 components, and for each group the 4 bytes of vector 0, then vector 1, ... So one
 * 64-byte load holds 4 components of all 16 vectors, and a kernel multiplies it by the
 * query's 4 codes for that group broadcast to every lane: each 32-bit lane accumulates
 * one vector's dot product, and the 16 scores of a block come out in one register with
 * no horizontal sums. AVX-512 VNNI does a group in one instruction (vpdpbusd, which
 * wants an unsigned operand: the query's codes + 128, corrected afterwards by 128 times
 * the vector's code sum); AVX2 uses vpmaddubsw on |x| and sign(x) * q (at most 2 * 127 *
 * 127 per 16-bit pair, so it never saturates) and vpmaddwd to widen. The components are
 * padded with zero codes to a multiple of 4, and the last block with zero vectors, which
 * the search masks out.
 *
 * A search takes queries in a batch: for each block, every query of the batch is scored
 * against it while it sits in the L1 cache, and a query appends the candidates that beat
 * its bar to a buffer of twice the candidates it keeps, which a selection cuts back when
 * full, raising the bar (the kernel returns the mask of lanes above the bar, so most
 * blocks cost no scalar work). With several OpenMP threads the blocks are split between
 * them, each with its own buffers; all their candidates are then re-scored in double
 * precision from the float vectors, eight candidates at a time on the kernel's
 * instruction set (fs_dot is the definition every re-scoring kernel matches bit for
 * bit), and only the best k are sorted. A search that would re-score every vector skips
 * the codes (fs_search_all).
 */
#include "flatscan_impl.h"

#include <immintrin.h>
#include <stdatomic.h>
#include <math.h>
#include <omp.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "qdup/common.h"

#define FS_BLOCK 16 /* vectors per block */
#define FS_GROUP 4  /* components per group */

/* Below this many code bytes times queries a search stays on one thread: starting
 * OpenMP's team costs more than it saves. */
#define FS_PARALLEL_MIN ((size_t)1 << 21)

/* Queries scored together by the wide kernels: each load of a block serves all of them. */
#define FS_QB 4

/* Codes of more than this many bytes are taken to be read from memory, not the L2
 * cache, by every search (qd_flatscan_batch): 1 MiB, half of a recent server core's L2.
 * Streamed from memory, a pass over the codes for FS_QB queries takes about as long as
 * for one (on the machine of BENCHMARKS.md, 8.6 MB of codes in about 0.35 ms either
 * way). */
#define FS_STREAM_BYTES ((size_t)1 << 20)

/* Blocks scanned by all queries of a batch before the next ones: 256 blocks of 128
 * components are 512 KiB, which stay in the L2 cache while every query passes. */
#define FS_CHUNK 256

/* The block kernels below are inlined into a "run" per instruction set: a run scores
 * blocks b, b + 1, ... for one query (or FS_QB queries, their codes qstride bytes apart:
 * qs signed, qu + 128) and stops at the first block where some score beats its query's
 * bar, returning that block's index (b1 if none): out (16 per query) then holds that
 * block's scores and mask (one per query) the lanes above the bar. Most blocks beat
 * nothing, so the loop stays in the kernel. */
typedef size_t (*fs_run_fn)(const struct qd_flatscan *fs, size_t b, size_t b1,
                            const int8_t *qs, const uint8_t *qu, size_t qstride,
                            const float *bar, float *out, unsigned *mask);

/* Candidates re-scored together by a re-scoring kernel. */
#define FS_DOTS 8

/* A re-scoring kernel: the exact scores of FS_DOTS vectors rows[0..FS_DOTS) (dim each)
 * for the query q, out[c] for rows[c], each equal bit for bit to fs_dot's. */
typedef void (*fs_dots_fn)(const float *q, const float *const *rows, int dim, float *out);

struct fs_kernel {
    const char *name;   /* as qd_flatscan_kernel() reports it */
    fs_run_fn run;      /* one query */
    fs_run_fn run4;     /* FS_QB queries, or NULL */
    int (*runs)(void);  /* 1 if this processor can run it */
    fs_dots_fn dots;    /* the re-scoring on the same instruction set */
};

#define FS_INLINE __attribute__((always_inline)) inline

/* Defines a run of one query over the block kernel KERN with target attribute TGT. */
#define FS_DEFINE_RUN(name, tgt, kern)                                                   \
    tgt static size_t name(const struct qd_flatscan *fs, size_t b, size_t b1,           \
                           const int8_t *qs, const uint8_t *qu, size_t qstride,         \
                           const float *bar, float *out, unsigned *mask)                \
    {                                                                                    \
        (void)qstride;                                                                   \
        size_t bbytes = fs->dim4 * FS_BLOCK * FS_GROUP;                                  \
        for (; b < b1; b++)                                                              \
            if ((mask[0] = kern(fs->codes + b * bbytes, fs->dim4, qs, qu,                \
                                fs->scale + b * FS_BLOCK, fs->csum + b * FS_BLOCK,       \
                                bar[0], out)) != 0)                                      \
                break;                                                                   \
        return b;                                                                        \
    }

/* The same for FS_QB queries over KERN4. */
#define FS_DEFINE_RUN4(name, tgt, kern4)                                                 \
    tgt static size_t name(const struct qd_flatscan *fs, size_t b, size_t b1,           \
                           const int8_t *qs, const uint8_t *qu, size_t qstride,         \
                           const float *bar, float *out, unsigned *mask)                \
    {                                                                                    \
        size_t bbytes = fs->dim4 * FS_BLOCK * FS_GROUP;                                  \
        for (; b < b1; b++) {                                                            \
            kern4(fs->codes + b * bbytes, fs->dim4, qs, qu, qstride,                     \
                  fs->scale + b * FS_BLOCK, fs->csum + b * FS_BLOCK, bar, out, mask);    \
            if (mask[0] | mask[1] | mask[2] | mask[3])                                   \
                break;                                                                   \
        }                                                                                \
        return b;                                                                        \
    }

struct qd_flatscan {
    int dim;                     /* vector dimension */
    size_t dim4;                 /* groups of 4 components: ceil(dim / 4) */
    size_t n;                    /* vectors held */
    size_t cap;                  /* blocks allocated */
    int8_t *codes;               /* (cap, dim4, FS_BLOCK, FS_GROUP) codes, block layout */
    float *scale;                /* (cap * FS_BLOCK) per-vector scale, 0 past n */
    int32_t *csum;               /* (cap * FS_BLOCK) sum of each vector's codes */
    float max_scale;             /* largest scale of a vector held (0 if none) */
    float max_l1;                /* largest sum of |x_i| of a vector held (0 if none) */
    const struct fs_kernel *kern; /* kernel in use */
    atomic_size_t nsearched;     /* queries searched so far */
    atomic_size_t nsecond;       /* of which needed a second pass */
};

/* --- kernels ---------------------------------------------------------------------------- */

/* The exact score of a candidate, from its four partial sums s (components i with i % 4
 * = 0, 1, 2, 3, up to the last multiple of 4 below dim, from i0 on): the components left
 * go into s[0] one at a time, then the pairs are summed. Shared by every re-scoring
 * kernel, so all of them end alike. */
FS_INLINE static float fs_dot_finish(const double *s, const float *a, const float *b, int i0,
                                  int dim)
{
    double s0 = s[0];
    for (int i = i0; i < dim; i++)
        s0 += (double)a[i] * b[i];
    return (float)((s0 + s[1]) + (s[2] + s[3]));
}

/* The exact inner product, accumulated in double: the score returned to the caller.
 * The plain loop, and the definition the vector kernels below match bit for bit: a
 * product of two floats is exact in double (48 significant bits, no overflow or
 * underflow), so a vector lane that multiplies and adds (or fuses the two: the same
 * rounding, once, of the same exact sum) in the same order as s0, s1, s2 or s3 gets the
 * same double. */
static float fs_dot(const float *a, const float *b, int dim)
{
    double s[4] = {0, 0, 0, 0};
    int i = 0;
    for (; i + 4 <= dim; i += 4) {
        s[0] += (double)a[i] * b[i];
        s[1] += (double)a[i + 1] * b[i + 1];
        s[2] += (double)a[i + 2] * b[i + 2];
        s[3] += (double)a[i + 3] * b[i + 3];
    }
    return fs_dot_finish(s, a, b, i, dim);
}

/* The scores of FS_DOTS candidates from their partial sums s, as fs_dot_finish.
 * Inlined into each kernel, so that no call runs with the upper halves of the vector
 * registers dirty. */
FS_INLINE static void fs_dots_finish(double s[FS_DOTS][4], const float *q, const float *const *rows,
                           int i0, int dim, float *out)
{
    for (int c = 0; c < FS_DOTS; c++)
        out[c] = fs_dot_finish(s[c], q, rows[c], i0, dim);
}

static void fs_dots_generic(const float *q, const float *const *rows, int dim, float *out)
{
    for (int c = 0; c < FS_DOTS; c++)
        out[c] = fs_dot(q, rows[c], dim);
}

FS_INLINE static unsigned fs_kernel_generic(const int8_t *blk, size_t dim4, const int8_t *qs,
                                  const uint8_t *qu, const float *scale, const int32_t *csum,
                                  float bar, float *out)
{
    (void)qu;
    (void)csum;
    int32_t acc[FS_BLOCK] = {0};
    for (size_t g = 0; g < dim4; g++) {
        const int8_t *x = blk + g * FS_BLOCK * FS_GROUP;
        const int8_t *q = qs + g * FS_GROUP;
        for (int v = 0; v < FS_BLOCK; v++) {
            const int8_t *xv = x + v * FS_GROUP;
            acc[v] += xv[0] * q[0] + xv[1] * q[1] + xv[2] * q[2] + xv[3] * q[3];
        }
    }
    unsigned mask = 0;
    for (int v = 0; v < FS_BLOCK; v++) {
        out[v] = (float)acc[v] * scale[v];
        if (out[v] > bar)
            mask |= 1u << v;
    }
    return mask;
}

static int fs_runs_generic(void)
{
    return 1;
}

FS_DEFINE_RUN(fs_run_generic, , fs_kernel_generic)

#if defined(__x86_64__) || defined(__i386__)
#define FS_X86 1

FS_INLINE __attribute__((target("avx2"))) static unsigned
fs_kernel_avx2(const int8_t *blk, size_t dim4, const int8_t *qs, const uint8_t *qu,
               const float *scale, const int32_t *csum, float bar, float *out)
{
    (void)qu;
    (void)csum;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i lo = _mm256_setzero_si256(), hi = _mm256_setzero_si256();
    for (size_t g = 0; g < dim4; g++) {
        int32_t qw;
        memcpy(&qw, qs + g * FS_GROUP, sizeof qw);
        __m256i qb = _mm256_set1_epi32(qw);
        const int8_t *x = blk + g * FS_BLOCK * FS_GROUP;
        __m256i x0 = _mm256_loadu_si256((const __m256i *)x);
        __m256i x1 = _mm256_loadu_si256((const __m256i *)(x + 32));
        __m256i p0 = _mm256_maddubs_epi16(_mm256_abs_epi8(x0), _mm256_sign_epi8(qb, x0));
        __m256i p1 = _mm256_maddubs_epi16(_mm256_abs_epi8(x1), _mm256_sign_epi8(qb, x1));
        lo = _mm256_add_epi32(lo, _mm256_madd_epi16(p0, ones));
        hi = _mm256_add_epi32(hi, _mm256_madd_epi16(p1, ones));
    }
    __m256 f0 = _mm256_mul_ps(_mm256_cvtepi32_ps(lo), _mm256_loadu_ps(scale));
    __m256 f1 = _mm256_mul_ps(_mm256_cvtepi32_ps(hi), _mm256_loadu_ps(scale + 8));
    _mm256_storeu_ps(out, f0);
    _mm256_storeu_ps(out + 8, f1);
    __m256 b = _mm256_set1_ps(bar);
    return (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(f0, b, _CMP_GT_OQ)) |
           (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(f1, b, _CMP_GT_OQ)) << 8;
}

/* One query's step for a group in the AVX2 kernels: the 4 codes at q broadcast, times
 * the block's two halves, into the query's two accumulators. */
#define FS_AVX2_STEP(q, lo, hi)                                                          \
    do {                                                                                 \
        int32_t qw_;                                                                     \
        memcpy(&qw_, (q), sizeof qw_);                                                   \
        __m256i qb_ = _mm256_set1_epi32(qw_);                                            \
        lo = _mm256_add_epi32(                                                           \
            lo, _mm256_madd_epi16(_mm256_maddubs_epi16(ax0, _mm256_sign_epi8(qb_, x0)), ones)); \
        hi = _mm256_add_epi32(                                                           \
            hi, _mm256_madd_epi16(_mm256_maddubs_epi16(ax1, _mm256_sign_epi8(qb_, x1)), ones)); \
    } while (0)

/* The scores and mask of one query from its two AVX2 accumulators. */
#define FS_AVX2_FINISH(lo, hi, barv, outp, maskv)                                         \
    do {                                                                                 \
        __m256 f0_ = _mm256_mul_ps(_mm256_cvtepi32_ps(lo), s0);                          \
        __m256 f1_ = _mm256_mul_ps(_mm256_cvtepi32_ps(hi), s1);                          \
        _mm256_storeu_ps((outp), f0_);                                                   \
        _mm256_storeu_ps((outp) + 8, f1_);                                               \
        __m256 b_ = _mm256_set1_ps(barv);                                                \
        maskv = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(f0_, b_, _CMP_GT_OQ)) |       \
                (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(f1_, b_, _CMP_GT_OQ)) << 8;   \
    } while (0)

FS_INLINE __attribute__((target("avx2"))) static void
fs_kernel4_avx2(const int8_t *blk, size_t dim4, const int8_t *qs, const uint8_t *qu,
                size_t qstride, const float *scale, const int32_t *csum, const float *bar,
                float *out, unsigned *mask)
{
    (void)qu;
    (void)csum;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i l0 = _mm256_setzero_si256(), h0 = l0, l1 = l0, h1 = l0, l2 = l0, h2 = l0,
            l3 = l0, h3 = l0;
    for (size_t g = 0; g < dim4; g++) {
        const int8_t *x = blk + g * FS_BLOCK * FS_GROUP;
        __m256i x0 = _mm256_loadu_si256((const __m256i *)x);
        __m256i x1 = _mm256_loadu_si256((const __m256i *)(x + 32));
        __m256i ax0 = _mm256_abs_epi8(x0), ax1 = _mm256_abs_epi8(x1);
        const int8_t *q = qs + g * FS_GROUP;
        FS_AVX2_STEP(q, l0, h0);
        FS_AVX2_STEP(q + qstride, l1, h1);
        FS_AVX2_STEP(q + 2 * qstride, l2, h2);
        FS_AVX2_STEP(q + 3 * qstride, l3, h3);
    }
    __m256 s0 = _mm256_loadu_ps(scale), s1 = _mm256_loadu_ps(scale + 8);
    FS_AVX2_FINISH(l0, h0, bar[0], out, mask[0]);
    FS_AVX2_FINISH(l1, h1, bar[1], out + 16, mask[1]);
    FS_AVX2_FINISH(l2, h2, bar[2], out + 32, mask[2]);
    FS_AVX2_FINISH(l3, h3, bar[3], out + 48, mask[3]);
}

FS_DEFINE_RUN(fs_run_avx2, __attribute__((target("avx2"))), fs_kernel_avx2)
FS_DEFINE_RUN4(fs_run4_avx2, __attribute__((target("avx2"))), fs_kernel4_avx2)

static int fs_runs_avx2(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2");
}

FS_INLINE __attribute__((target("avx512f,avx512bw,avx512vnni"))) static unsigned
fs_kernel_avx512vnni(const int8_t *blk, size_t dim4, const int8_t *qs, const uint8_t *qu,
                     const float *scale, const int32_t *csum, float bar, float *out)
{
    (void)qs;
    /* Four accumulators: vpdpbusd's latency is several cycles, its throughput one. */
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    const int8_t *x = blk;
    size_t g = 0;
    for (; g + 4 <= dim4; g += 4, x += 4 * FS_BLOCK * FS_GROUP) {
        int32_t w[4];
        memcpy(w, qu + g * FS_GROUP, sizeof w);
        a0 = _mm512_dpbusd_epi32(a0, _mm512_set1_epi32(w[0]), _mm512_loadu_si512(x));
        a1 = _mm512_dpbusd_epi32(a1, _mm512_set1_epi32(w[1]), _mm512_loadu_si512(x + 64));
        a2 = _mm512_dpbusd_epi32(a2, _mm512_set1_epi32(w[2]), _mm512_loadu_si512(x + 128));
        a3 = _mm512_dpbusd_epi32(a3, _mm512_set1_epi32(w[3]), _mm512_loadu_si512(x + 192));
    }
    for (; g < dim4; g++, x += FS_BLOCK * FS_GROUP) {
        int32_t w;
        memcpy(&w, qu + g * FS_GROUP, sizeof w);
        a0 = _mm512_dpbusd_epi32(a0, _mm512_set1_epi32(w), _mm512_loadu_si512(x));
    }
    __m512i acc = _mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3));
    /* (c_q + 128) . c_x = c_q . c_x + 128 sum(c_x) */
    acc = _mm512_sub_epi32(acc, _mm512_slli_epi32(_mm512_loadu_si512(csum), 7));
    __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), _mm512_loadu_ps(scale));
    _mm512_storeu_ps(out, f);
    return (unsigned)_mm512_cmp_ps_mask(f, _mm512_set1_ps(bar), _CMP_GT_OQ);
}

/* One query's step for two groups in the VNNI kernel (the second into its own
 * accumulator, for two independent chains per query). */
#define FS_VNNI_STEP2(q, a, b)                                                           \
    do {                                                                                 \
        int32_t w0_, w1_;                                                                \
        memcpy(&w0_, (q), sizeof w0_);                                                   \
        memcpy(&w1_, (q) + 4, sizeof w1_);                                               \
        a = _mm512_dpbusd_epi32(a, _mm512_set1_epi32(w0_), x0);                          \
        b = _mm512_dpbusd_epi32(b, _mm512_set1_epi32(w1_), x1);                          \
    } while (0)

#define FS_VNNI_STEP1(q, a)                                                              \
    do {                                                                                 \
        int32_t w_;                                                                      \
        memcpy(&w_, (q), sizeof w_);                                                     \
        a = _mm512_dpbusd_epi32(a, _mm512_set1_epi32(w_), x0);                           \
    } while (0)

#define FS_VNNI_FINISH(a, b, barv, outp, maskv)                                          \
    do {                                                                                 \
        __m512i acc_ = _mm512_sub_epi32(_mm512_add_epi32(a, b), corr);                   \
        __m512 f_ = _mm512_mul_ps(_mm512_cvtepi32_ps(acc_), sc);                         \
        _mm512_storeu_ps((outp), f_);                                                    \
        maskv = (unsigned)_mm512_cmp_ps_mask(f_, _mm512_set1_ps(barv), _CMP_GT_OQ);      \
    } while (0)

FS_INLINE __attribute__((target("avx512f,avx512bw,avx512vnni"))) static void
fs_kernel4_avx512vnni(const int8_t *blk, size_t dim4, const int8_t *qs, const uint8_t *qu,
                      size_t qstride, const float *scale, const int32_t *csum,
                      const float *bar, float *out, unsigned *mask)
{
    (void)qs;
    __m512i a0 = _mm512_setzero_si512(), b0 = a0, a1 = a0, b1 = a0, a2 = a0, b2 = a0,
            a3 = a0, b3 = a0;
    const int8_t *x = blk;
    size_t g = 0;
    for (; g + 2 <= dim4; g += 2, x += 2 * FS_BLOCK * FS_GROUP) {
        __m512i x0 = _mm512_loadu_si512(x), x1 = _mm512_loadu_si512(x + 64);
        const uint8_t *q = qu + g * FS_GROUP;
        FS_VNNI_STEP2(q, a0, b0);
        FS_VNNI_STEP2(q + qstride, a1, b1);
        FS_VNNI_STEP2(q + 2 * qstride, a2, b2);
        FS_VNNI_STEP2(q + 3 * qstride, a3, b3);
    }
    if (g < dim4) {
        __m512i x0 = _mm512_loadu_si512(x);
        const uint8_t *q = qu + g * FS_GROUP;
        FS_VNNI_STEP1(q, a0);
        FS_VNNI_STEP1(q + qstride, a1);
        FS_VNNI_STEP1(q + 2 * qstride, a2);
        FS_VNNI_STEP1(q + 3 * qstride, a3);
    }
    /* (c_q + 128) . c_x = c_q . c_x + 128 sum(c_x) */
    __m512i corr = _mm512_slli_epi32(_mm512_loadu_si512(csum), 7);
    __m512 sc = _mm512_loadu_ps(scale);
    FS_VNNI_FINISH(a0, b0, bar[0], out, mask[0]);
    FS_VNNI_FINISH(a1, b1, bar[1], out + 16, mask[1]);
    FS_VNNI_FINISH(a2, b2, bar[2], out + 32, mask[2]);
    FS_VNNI_FINISH(a3, b3, bar[3], out + 48, mask[3]);
}

FS_DEFINE_RUN(fs_run_avx512vnni, __attribute__((target("avx512f,avx512bw,avx512vnni"))),
              fs_kernel_avx512vnni)
FS_DEFINE_RUN4(fs_run4_avx512vnni, __attribute__((target("avx512f,avx512bw,avx512vnni"))),
               fs_kernel4_avx512vnni)

static int fs_runs_avx512vnni(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vnni");
}

/* Re-scoring, AVX2: candidate c's four partial sums are the 4 double lanes of acc_c,
 * lane t summing components i + t as fs_dot's s[t] does. Eight candidates at once give
 * eight independent chains of additions, so the loop waits on the adders' throughput
 * rather than their latency, and each group of 4 query components is widened once for
 * all eight. Multiply, then add: AVX2 does not imply FMA. */
#define FS_DOT_AVX2_STEP(c)                                                              \
    acc##c = _mm256_add_pd(acc##c, _mm256_mul_pd(qv, _mm256_cvtps_pd(_mm_loadu_ps(rows[c] + i))))

__attribute__((target("avx2"))) static void fs_dots_avx2(const float *q,
                                                         const float *const *rows, int dim,
                                                         float *out)
{
    __m256d acc0 = _mm256_setzero_pd(), acc1 = acc0, acc2 = acc0, acc3 = acc0, acc4 = acc0,
            acc5 = acc0, acc6 = acc0, acc7 = acc0;
    int i = 0;
    for (; i + 4 <= dim; i += 4) {
        __m256d qv = _mm256_cvtps_pd(_mm_loadu_ps(q + i));
        FS_DOT_AVX2_STEP(0);
        FS_DOT_AVX2_STEP(1);
        FS_DOT_AVX2_STEP(2);
        FS_DOT_AVX2_STEP(3);
        FS_DOT_AVX2_STEP(4);
        FS_DOT_AVX2_STEP(5);
        FS_DOT_AVX2_STEP(6);
        FS_DOT_AVX2_STEP(7);
    }
    double s[FS_DOTS][4];
    _mm256_storeu_pd(s[0], acc0);
    _mm256_storeu_pd(s[1], acc1);
    _mm256_storeu_pd(s[2], acc2);
    _mm256_storeu_pd(s[3], acc3);
    _mm256_storeu_pd(s[4], acc4);
    _mm256_storeu_pd(s[5], acc5);
    _mm256_storeu_pd(s[6], acc6);
    _mm256_storeu_pd(s[7], acc7);
    /* Clean upper halves before the scalar finish and the return: code compiled for
     * SSE (most of the program) runs slowly after AVX code that leaves them dirty. */
    _mm256_zeroupper();
    fs_dots_finish(s, q, rows, i, dim, out);
}

/* Re-scoring, AVX-512: two candidates per register, lanes 0-3 the partial sums of
 * candidate 2j and lanes 4-7 those of 2j + 1 (8 lanes of one candidate would split each
 * of fs_dot's sums in two, and change the rounding). The 4 query components are widened
 * once into both halves; the multiply and add are fused, which rounds as fs_dot does
 * since the product is exact. */
#define FS_DOT_AVX512_STEP(j)                                                            \
    acc##j = _mm512_fmadd_pd(                                                            \
        qv,                                                                              \
        _mm512_cvtps_pd(_mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(rows[2 * (j)] + i)), \
                                             _mm_loadu_ps(rows[2 * (j) + 1] + i), 1)),  \
        acc##j)

__attribute__((target("avx512f"))) static void fs_dots_avx512(const float *q,
                                                              const float *const *rows,
                                                              int dim, float *out)
{
    __m512d acc0 = _mm512_setzero_pd(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    int i = 0;
    for (; i + 4 <= dim; i += 4) {
        __m128 q4 = _mm_loadu_ps(q + i);
        __m512d qv = _mm512_cvtps_pd(_mm256_insertf128_ps(_mm256_castps128_ps256(q4), q4, 1));
        FS_DOT_AVX512_STEP(0);
        FS_DOT_AVX512_STEP(1);
        FS_DOT_AVX512_STEP(2);
        FS_DOT_AVX512_STEP(3);
    }
    double s[FS_DOTS][4];
    _mm512_storeu_pd(s[0], acc0);
    _mm512_storeu_pd(s[2], acc1);
    _mm512_storeu_pd(s[4], acc2);
    _mm512_storeu_pd(s[6], acc3);
    _mm256_zeroupper(); /* as in fs_dots_avx2 */
    fs_dots_finish(s, q, rows, i, dim, out);
}
#endif

/* Best first: the first one this processor runs is the default. */
static const struct fs_kernel fs_kernels[] = {
#ifdef FS_X86
    {"avx512vnni", fs_run_avx512vnni, fs_run4_avx512vnni, fs_runs_avx512vnni, fs_dots_avx512},
    {"avx2", fs_run_avx2, fs_run4_avx2, fs_runs_avx2, fs_dots_avx2},
#endif
    {"generic", fs_run_generic, NULL, fs_runs_generic, fs_dots_generic},
};
#define FS_NKERNELS (sizeof fs_kernels / sizeof fs_kernels[0])

/* --- codes ------------------------------------------------------------------------------ */

void qd_flatscan_quantize(const float *x, int dim, int8_t *codes, float *scale)
{
    size_t padded = ((size_t)dim + FS_GROUP - 1) / FS_GROUP * FS_GROUP;
    float m = 0;
    for (int i = 0; i < dim; i++)
        m = fmaxf(m, fabsf(x[i]));
    float s = m / 127.0f;
    memset(codes, 0, padded);
    if (s > 0 && isfinite(s)) {
        float inv = 1.0f / s;
        for (int i = 0; i < dim; i++) {
            /* |x[i]| * inv can round to a hair over 127. */
            long c = lrintf(x[i] * inv);
            codes[i] = (int8_t)(c > 127 ? 127 : c < -127 ? -127 : c);
        }
    } else {
        s = 0;
    }
    *scale = s;
}

/* Where component group g of the vector at position pos starts. */
static int8_t *fs_slot(const qd_flatscan *fs, size_t pos, size_t g)
{
    size_t b = pos / FS_BLOCK, v = pos % FS_BLOCK;
    return fs->codes + (b * fs->dim4 + g) * FS_BLOCK * FS_GROUP + v * FS_GROUP;
}

void qd_flatscan_code(const qd_flatscan *fs, size_t pos, int8_t *codes, float *scale)
{
    QD_ASSERT(pos < fs->n);
    for (size_t g = 0; g < fs->dim4; g++)
        memcpy(codes + g * FS_GROUP, fs_slot(fs, pos, g), FS_GROUP);
    *scale = fs->scale[pos];
}

/* --- new, free, add --------------------------------------------------------------------- */

int qd_flatscan_new(int dim, qd_flatscan **out)
{
    *out = NULL;
    if (dim < 1 || dim > 65536)
        return QD_ERR_INVAL;
    qd_flatscan *fs = qd_calloc(1, sizeof *fs);
    if (!fs)
        return QD_ERR_NOMEM;
    fs->dim = dim;
    fs->dim4 = ((size_t)dim + FS_GROUP - 1) / FS_GROUP;
    for (size_t i = 0; i < FS_NKERNELS; i++)
        if (fs_kernels[i].runs()) {
            fs->kern = &fs_kernels[i];
            break;
        }
    /* For benchmarks of the kernels through the programs; ignored if it names no kernel
     * this processor runs. */
    const char *want = getenv("QDUP_FLATSCAN_KERNEL");
    if (want && *want)
        (void)qd_flatscan_set_kernel(fs, want);
    *out = fs;
    return 0;
}

void qd_flatscan_free(qd_flatscan *fs)
{
    if (!fs)
        return;
    qd_free(fs->codes);
    qd_free(fs->scale);
    qd_free(fs->csum);
    qd_free(fs);
}

/* Makes room for at least `blocks` blocks; the new space is zero (padding vectors). */
static int fs_reserve(qd_flatscan *fs, size_t blocks)
{
    if (blocks <= fs->cap)
        return 0;
    size_t cap = fs->cap ? fs->cap : 64;
    while (cap < blocks)
        cap *= 2;
    size_t bbytes = fs->dim4 * FS_BLOCK * FS_GROUP;
    if (cap > SIZE_MAX / bbytes)
        return QD_ERR_NOMEM;
    int8_t *codes = qd_realloc(fs->codes, cap * bbytes);
    if (!codes)
        return QD_ERR_NOMEM;
    fs->codes = codes;
    float *scale = qd_reallocarray(fs->scale, cap * FS_BLOCK, sizeof *scale);
    if (!scale)
        return QD_ERR_NOMEM;
    fs->scale = scale;
    int32_t *csum = qd_reallocarray(fs->csum, cap * FS_BLOCK, sizeof *csum);
    if (!csum)
        return QD_ERR_NOMEM;
    fs->csum = csum;
    memset(fs->codes + fs->cap * bbytes, 0, (cap - fs->cap) * bbytes);
    memset(fs->scale + fs->cap * FS_BLOCK, 0, (cap - fs->cap) * FS_BLOCK * sizeof *scale);
    memset(fs->csum + fs->cap * FS_BLOCK, 0, (cap - fs->cap) * FS_BLOCK * sizeof *csum);
    fs->cap = cap;
    return 0;
}

int qd_flatscan_add(qd_flatscan *fs, const float *x, size_t n)
{
    if (n == 0)
        return 0;
    /* Positions fit in 32 bits: the sort of the re-scored candidates needs it. */
    if (n > SIZE_MAX / 2 - fs->n || n > (size_t)UINT32_MAX - fs->n)
        return QD_ERR_NOMEM;
    int rc = fs_reserve(fs, (fs->n + n + FS_BLOCK - 1) / FS_BLOCK);
    if (rc != 0)
        return rc;
    int8_t *code = qd_malloc(fs->dim4 * FS_GROUP);
    if (!code)
        return QD_ERR_NOMEM;
    for (size_t i = 0; i < n; i++) {
        size_t pos = fs->n + i;
        qd_flatscan_quantize(x + i * (size_t)fs->dim, fs->dim, code, &fs->scale[pos]);
        int32_t sum = 0;
        for (size_t g = 0; g < fs->dim4; g++) {
            memcpy(fs_slot(fs, pos, g), code + g * FS_GROUP, FS_GROUP);
            for (int t = 0; t < FS_GROUP; t++)
                sum += code[g * FS_GROUP + t];
        }
        fs->csum[pos] = sum;
        float l1 = 0;
        for (int j = 0; j < fs->dim; j++)
            l1 += fabsf(x[i * (size_t)fs->dim + (size_t)j]);
        fs->max_l1 = fmaxf(fs->max_l1, l1);
        fs->max_scale = fmaxf(fs->max_scale, fs->scale[pos]);
    }
    qd_free(code);
    fs->n += n;
    return 0;
}

void qd_flatscan_clear(qd_flatscan *fs)
{
    if (fs->cap) {
        memset(fs->codes, 0, fs->cap * fs->dim4 * FS_BLOCK * FS_GROUP);
        memset(fs->scale, 0, fs->cap * FS_BLOCK * sizeof *fs->scale);
        memset(fs->csum, 0, fs->cap * FS_BLOCK * sizeof *fs->csum);
    }
    fs->n = 0;
    fs->max_scale = 0;
    fs->max_l1 = 0;
}

size_t qd_flatscan_count(const qd_flatscan *fs)
{
    return fs->n;
}

size_t qd_flatscan_batch(const qd_flatscan *fs)
{
    size_t bytes = fs->n * fs->dim4 * FS_GROUP;
    return bytes >= FS_STREAM_BYTES && fs->kern->run4 ? FS_QB : 1;
}

const char *qd_flatscan_kernel(const qd_flatscan *fs)
{
    return fs->kern->name;
}

int qd_flatscan_set_kernel(qd_flatscan *fs, const char *name)
{
    for (size_t i = 0; i < FS_NKERNELS; i++)
        if (strcmp(fs_kernels[i].name, name) == 0) {
            if (!fs_kernels[i].runs())
                return QD_ERR_UNSUPPORTED;
            fs->kern = &fs_kernels[i];
            return 0;
        }
#ifndef FS_X86
    if (strcmp(name, "avx2") == 0 || strcmp(name, "avx512vnni") == 0)
        return QD_ERR_UNSUPPORTED;
#endif
    return QD_ERR_INVAL;
}

/* --- search ------------------------------------------------------------------------------ */

/* A candidate: its score and position. */
struct fs_cand {
    float score; /* candidate score, then the exact one */
    int64_t pos; /* position of the vector */
};

/* The order of the answer is best score first, equal scores by lower position. The
 * re-scored candidates are sorted in it as 64-bit keys, larger first: the score's bits
 * made to order as unsigned integers (-0 taken as +0, to which it is equal) above the
 * complement of the position (fewer than 2^32 vectors are held). One integer
 * comparison per step lets the partition run without branches, where comparing
 * (score, position) pairs mispredicted about every other step. */
static inline uint64_t fs_key(float score, int64_t pos)
{
    uint32_t bits;
    if (score == 0)
        score = 0; /* +0 */
    memcpy(&bits, &score, sizeof bits);
    bits = bits >> 31 ? ~bits : bits | 0x80000000u;
    return (uint64_t)bits << 32 | (UINT32_MAX - (uint32_t)pos);
}

/* The candidate of a key (fs_key's inverse, but for the sign of a zero score). */
static inline struct fs_cand fs_unkey(uint64_t key)
{
    uint32_t bits = (uint32_t)(key >> 32);
    bits = bits >> 31 ? bits & 0x7fffffffu : ~bits;
    struct fs_cand c;
    memcpy(&c.score, &bits, sizeof bits);
    c.pos = (int64_t)(UINT32_MAX - (uint32_t)key);
    return c;
}

/* Larger key first. */
static int fs_key_cmp(const void *pa, const void *pb)
{
    uint64_t a = *(const uint64_t *)pa, b = *(const uint64_t *)pb;
    return (a < b) - (a > b);
}

/* Lomuto's partition of the keys a (m >= 2) around their middle element, without
 * branches (every element is swapped to the boundary, which moves on only past a larger
 * key): returns s, with a[0..s) > a[s] (the pivot) >= a(s..m). */
static size_t fs_partition(uint64_t *a, size_t m)
{
    uint64_t p = a[m / 2];
    a[m / 2] = a[m - 1];
    a[m - 1] = p;
    size_t s = 0; /* a[0..s) > p */
    for (size_t i = 0; i < m - 1; i++) {
        uint64_t x = a[i];
        a[i] = a[s];
        a[s] = x;
        s += x > p;
    }
    a[m - 1] = a[s];
    a[s] = p;
    return s;
}

/* Puts the k (>= 1) largest of the keys a (m) at a[0..min(k, m)), largest first,
 * leaving the rest in some order after them: callers use only the best k (the sort of
 * every query's candidates was most of a search of a small store, and the fused
 * ranking's 4k = 200 of them want only 50). A quicksort that sorts only the parts
 * holding some of the first k: the part before the pivot alone if it holds all of the
 * first k, else it whole and the part after for the rest; insertion sort for runs of 8
 * or fewer; past a depth of 2 log2 m, qsort itself. Keys differ (positions do), so the
 * first k are the same whichever sort finds them. */
static void fs_sort(uint64_t *a, size_t m, size_t k, int depth)
{
    QD_ASSERT(k > 0);
    while (m > 8) {
        if (depth-- <= 0) {
            qsort(a, m, sizeof *a, fs_key_cmp);
            return;
        }
        size_t s = fs_partition(a, m);
        if (k <= s) {
            m = s;
            continue;
        }
        if (s > 0)
            fs_sort(a, s, s, depth);
        if (k == s + 1)
            return;
        a += s + 1;
        m -= s + 1;
        k -= s + 1;
    }
    for (size_t i = 1; i < m; i++) {
        uint64_t x = a[i];
        size_t j = i;
        for (; j > 0 && a[j - 1] < x; j--)
            a[j] = a[j - 1];
        a[j] = x;
    }
}

/* Twice the depth a quicksort of m keys should need. */
static int fs_depth(size_t m)
{
    int depth = 0;
    for (size_t x = m; x > 1; x >>= 1)
        depth += 2;
    return depth;
}

/* Puts the k (1 <= k < m) largest of the keys a (m) at a[0..k), in some order: the same
 * partitions as fs_sort, following only the part that holds the k-th. */
static void fs_select(uint64_t *a, size_t m, size_t k)
{
    int depth = fs_depth(m);
    while (m > 8 && k < m) {
        if (depth-- <= 0)
            break; /* what is left is sorted below */
        size_t s = fs_partition(a, m);
        if (k <= s) {
            m = s;
        } else {
            if (k == s + 1)
                return;
            a += s + 1;
            m -= s + 1;
            k -= s + 1;
        }
    }
    if (k < m)
        fs_sort(a, m, k, 0);
}

/* A query's candidates during a scan, as keys (fs_key) in a buffer of 2r: a candidate
 * that beats the bar is appended, and when the buffer is full a selection keeps its best
 * r and raises the bar to the score of the weakest of them. A min-heap of r kept the bar
 * at the r-th best after every candidate, but its sift-down mispredicted at most levels
 * (a third of the scan's time with the fused ranking's r = 200): appending is a store,
 * and a selection, one per r candidates at most, a few branch-free passes over 2r keys.
 * The bar rises more slowly, so more candidates are appended than a heap took. */
struct fs_pool {
    uint64_t *key; /* (2 r) the candidates */
    size_t n;      /* how many are held */
    size_t r;      /* how many a selection keeps */
    float bar;     /* the score a candidate must beat: -INFINITY before a selection,
                      then the weakest score the last one kept (scores are finite) */
};

/* Keeps the best r of the pool's candidates (if it holds more) and sets its bar to the
 * weakest of them. */
static void fs_pool_cut(struct fs_pool *p)
{
    if (p->n <= p->r)
        return;
    fs_select(p->key, p->n, p->r);
    p->n = p->r;
    uint64_t low = p->key[0];
    for (size_t i = 1; i < p->n; i++)
        low = p->key[i] < low ? p->key[i] : low;
    p->bar = fs_unkey(low).score;
}

/* Appends the lanes of block b set in mask (its scores in out) to pool p. */
static void fs_append_lanes(const qd_flatscan *fs, struct fs_pool *p, size_t b, unsigned mask,
                            const float *out)
{
    size_t first = b * FS_BLOCK;
    if (fs->n - first < FS_BLOCK)
        mask &= (1u << (fs->n - first)) - 1; /* padding vectors of the last block */
    while (mask) {
        int v = __builtin_ctz(mask);
        mask &= mask - 1;
        p->key[p->n++] = fs_key(out[v], (int64_t)(first + (size_t)v));
        if (p->n == 2 * p->r)
            fs_pool_cut(p);
    }
}

/* Scans blocks [b0, b1) for every query, appending candidates to pools (nq): chunk by
 * chunk, every query over the chunk, FS_QB at a time where the kernel can. qs and qu
 * hold nq rounded up to FS_QB rows: a last group of two or three queries is padded with
 * rows whose bar (+INFINITY) nothing beats, since the wide kernel costs little more than
 * two passes of the narrow one, whose speed is the memory's. */
static void fs_scan(const qd_flatscan *fs, size_t b0, size_t b1, const int8_t *qs,
                    const uint8_t *qu, size_t nq, struct fs_pool *pools)
{
    size_t qbytes = fs->dim4 * FS_GROUP;
    float out[FS_QB * FS_BLOCK], bar[FS_QB];
    unsigned mask[FS_QB];
    for (size_t c0 = b0; c0 < b1; c0 += FS_CHUNK) {
        size_t c1 = b1 - c0 < FS_CHUNK ? b1 : c0 + FS_CHUNK;
        for (size_t j = 0; j < nq;) {
            size_t m = fs->kern->run4 && nq - j >= 2 ? FS_QB : 1;
            size_t real = nq - j < m ? nq - j : m;
            fs_run_fn run = m == FS_QB ? fs->kern->run4 : fs->kern->run;
            for (size_t i = real; i < m; i++)
                bar[i] = INFINITY;
            for (size_t b = c0;; b++) {
                for (size_t i = 0; i < real; i++)
                    bar[i] = pools[j + i].bar;
                b = run(fs, b, c1, qs + j * qbytes, qu + j * qbytes, qbytes, bar, out, mask);
                if (b >= c1)
                    break;
                for (size_t i = 0; i < real; i++)
                    fs_append_lanes(fs, &pools[j + i], b, mask[i], out + i * FS_BLOCK);
            }
            j += m;
        }
    }
}

int qd_flatscan_approx(const qd_flatscan *fs, const float *q, float *out)
{
    size_t qbytes = fs->dim4 * FS_GROUP;
    int8_t *qs = qd_malloc(2 * qbytes);
    if (!qs)
        return QD_ERR_NOMEM;
    uint8_t *qu = (uint8_t *)qs + qbytes;
    float qscale, blk_out[FS_BLOCK];
    qd_flatscan_quantize(q, fs->dim, qs, &qscale);
    for (size_t i = 0; i < qbytes; i++)
        qu[i] = (uint8_t)(qs[i] + 128);
    size_t nblocks = (fs->n + FS_BLOCK - 1) / FS_BLOCK;
    float bar = -INFINITY;
    unsigned mask;
    for (size_t b = 0; b < nblocks; b++) {
        /* Every score beats -INFINITY: the run stops at each block. */
        size_t at = fs->kern->run(fs, b, b + 1, qs, qu, qbytes, &bar, blk_out, &mask);
        QD_ASSERT(at == b && mask == 0xffffu);
        for (size_t v = 0; v < FS_BLOCK && b * FS_BLOCK + v < fs->n; v++)
            out[b * FS_BLOCK + v] = blk_out[v];
    }
    qd_free(qs);
    return 0;
}

/* A growable list of candidates. */
struct fs_list {
    struct fs_cand *c; /* (cap) candidates */
    size_t n;          /* how many are held */
    size_t cap;        /* how many fit */
};

static int fs_list_push(struct fs_list *l, float score, int64_t pos)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 256;
        struct fs_cand *c = qd_reallocarray(l->c, cap, sizeof *c);
        if (!c)
            return QD_ERR_NOMEM;
        l->c = c;
        l->cap = cap;
    }
    l->c[l->n++] = (struct fs_cand){score, pos};
    return 0;
}

/* The second pass for one query: every vector whose candidate score is above bar. */
static int fs_collect(const qd_flatscan *fs, const int8_t *qs, const uint8_t *qu, float bar,
                      struct fs_list *l)
{
    size_t nblocks = (fs->n + FS_BLOCK - 1) / FS_BLOCK;
    float out[FS_BLOCK];
    unsigned mask;
    l->n = 0;
    for (size_t b = 0;; b++) {
        b = fs->kern->run(fs, b, nblocks, qs, qu, 0, &bar, out, &mask);
        if (b >= nblocks)
            break;
        size_t first = b * FS_BLOCK;
        while (mask) {
            size_t v = (size_t)__builtin_ctz(mask);
            mask &= mask - 1;
            if (first + v < fs->n && fs_list_push(l, out[v], (int64_t)(first + v)) != 0)
                return QD_ERR_NOMEM;
        }
    }
    return 0;
}

/* Replaces the candidate scores in c (m) by exact ones, FS_DOTS candidates per call of
 * the kernel (a last short group repeats its last row, whose extra scores are dropped). */
static void fs_exact(const qd_flatscan *fs, const float *xb, const float *q,
                     struct fs_cand *c, size_t m)
{
    size_t dim = (size_t)fs->dim, row = dim * sizeof(float);
    const float *rows[FS_DOTS];
    float out[FS_DOTS];
    for (size_t i = 0; i < m; i += FS_DOTS) {
        size_t g = m - i < FS_DOTS ? m - i : FS_DOTS;
        /* The rows are scattered over the float array: ask for the next group's while
         * this one is scored. */
        for (size_t j = i + FS_DOTS; j < i + 2 * FS_DOTS && j < m; j++) {
            const char *next = (const char *)(xb + (size_t)c[j].pos * dim);
            for (size_t off = 0; off < row; off += 64)
                __builtin_prefetch(next + off);
        }
        for (size_t j = 0; j < FS_DOTS; j++)
            rows[j] = xb + (size_t)c[i + (j < g ? j : g - 1)].pos * dim;
        fs->kern->dots(q, rows, fs->dim, out);
        for (size_t j = 0; j < g; j++)
            c[i + j].score = out[j];
    }
}

/* Replaces the candidate scores in c (m) by exact ones and puts the best k first, best
 * first; the rest are left out. keys has room for m. */
static void fs_rescore(const qd_flatscan *fs, const float *xb, const float *q,
                       struct fs_cand *c, size_t m, size_t k, uint64_t *keys)
{
    fs_exact(fs, xb, q, c, m);
    for (size_t i = 0; i < m; i++)
        keys[i] = fs_key(c[i].score, c[i].pos);
    fs_sort(keys, m, k, fs_depth(m));
    for (size_t i = 0; i < m && i < k; i++)
        c[i] = fs_unkey(keys[i]);
}

int qd_flatscan_exact(const qd_flatscan *fs, const float *xb, const float *q,
                      const int64_t *pos, size_t m, float *out)
{
    struct fs_cand *c = qd_mallocarray(m ? m : 1, sizeof *c);
    if (!c)
        return QD_ERR_NOMEM;
    for (size_t i = 0; i < m; i++)
        c[i] = (struct fs_cand){0, pos[i]};
    fs_exact(fs, xb, q, c, m);
    for (size_t i = 0; i < m; i++)
        out[i] = c[i].score;
    qd_free(c);
    return 0;
}

/* A search that would re-score every vector (a store of a few hundred, or a rescore
 * of at least the count) skips the codes: each query scores them all exactly. */
static int fs_search_all(const qd_flatscan *fs, const float *xb, const float *q, size_t nq,
                         size_t k, float *scores, int64_t *pos)
{
    size_t n = fs->n;
    struct fs_cand *c = qd_mallocarray(n, sizeof *c);
    uint64_t *keys = qd_mallocarray(n, sizeof *keys);
    if (!c || !keys) {
        qd_free(c);
        qd_free(keys);
        return QD_ERR_NOMEM;
    }
    for (size_t j = 0; j < nq; j++) {
        for (size_t i = 0; i < n; i++)
            c[i] = (struct fs_cand){0, (int64_t)i};
        fs_rescore(fs, xb, q + j * (size_t)fs->dim, c, n, k, keys);
        for (size_t i = 0; i < n && i < k; i++) {
            scores[j * k + i] = c[i].score;
            pos[j * k + i] = c[i].pos;
        }
    }
    atomic_fetch_add_explicit((atomic_size_t *)&fs->nsearched, nq, memory_order_relaxed);
    qd_free(c);
    qd_free(keys);
    return 0;
}

int qd_flatscan_search(const qd_flatscan *fs, const float *xb, const float *q, size_t nq,
                       size_t k, size_t rescore, float *scores, int64_t *pos)
{
    if (nq == 0)
        return 0;
    if (k == 0)
        return QD_ERR_INVAL;
    if (nq > SIZE_MAX / k)
        return QD_ERR_RANGE;
    for (size_t i = 0; i < nq * k; i++) {
        scores[i] = -INFINITY;
        pos[i] = -1;
    }
    if (fs->n == 0)
        return 0;
    size_t r = rescore ? rescore : (4 * k > 64 ? 4 * k : 64);
    if (r < k)
        r = k;
    if (r > fs->n)
        r = fs->n;
    if (r == fs->n)
        return fs_search_all(fs, xb, q, nq, k, scores, pos);

    size_t nblocks = (fs->n + FS_BLOCK - 1) / FS_BLOCK;
    size_t qbytes = fs->dim4 * FS_GROUP;
    int nt = 1;
    if (fs->n * qbytes * nq >= FS_PARALLEL_MIN) {
        nt = omp_get_max_threads();
        if ((size_t)nt > nblocks)
            nt = (int)nblocks;
        if (nt < 1)
            nt = 1;
    }
    if (nq > SIZE_MAX / 4 / qbytes || nq > SIZE_MAX / (size_t)nt / r / sizeof(struct fs_cand))
        return QD_ERR_RANGE;
    size_t nqp = (nq + FS_QB - 1) / FS_QB * FS_QB; /* rows of codes, padded for fs_scan */

    int rc = QD_ERR_NOMEM;
    struct fs_list extra = {0};
    size_t nkeys = (size_t)nt * r; /* room in keys */
    uint64_t *keys = qd_mallocarray(nkeys, sizeof *keys);
    int8_t *qs = qd_calloc(2 * nqp, qbytes);
    float *qscale = qd_mallocarray(nq, 2 * sizeof *qscale);
    struct fs_pool *pools = qd_mallocarray((size_t)nt * nq, sizeof *pools);
    uint64_t *pkeys = qd_mallocarray((size_t)nt * nq * r, 2 * sizeof *pkeys);
    struct fs_cand *all = qd_mallocarray((size_t)nt * r, sizeof *all);
    if (!keys || !qs || !qscale || !pools || !pkeys || !all)
        goto out;
    uint8_t *qu = (uint8_t *)qs + nqp * qbytes;
    float *qerr = qscale + nq; /* (nq) E of each query, in exact-score units */
    for (size_t j = 0; j < nq; j++) {
        int8_t *c = qs + j * qbytes;
        qd_flatscan_quantize(q + j * (size_t)fs->dim, fs->dim, c, &qscale[j]);
        float l1 = 0;
        for (size_t i = 0; i < qbytes; i++) {
            qu[j * qbytes + i] = (uint8_t)(c[i] + 128);
            l1 += (float)abs(c[i]);
        }
        /* The bound, plus slack for the float rounding of both kinds of score. */
        float e = fs->max_scale * qscale[j] * l1 / 2 + qscale[j] * fs->max_l1 / 2;
        qerr[j] = e * 1.001f + 1e-5f;
    }
    for (size_t h = 0; h < (size_t)nt * nq; h++)
        pools[h] = (struct fs_pool){pkeys + h * 2 * r, 0, r, -INFINITY};

    if (nt == 1) {
        fs_scan(fs, 0, nblocks, qs, qu, nq, pools);
    } else {
#pragma omp parallel num_threads(nt)
        {
            size_t t = (size_t)omp_get_thread_num(), tn = (size_t)omp_get_num_threads();
            /* A smaller team than asked for leaves the later pools empty. */
            fs_scan(fs, nblocks * t / tn, nblocks * (t + 1) / tn, qs, qu, nq, pools + t * nq);
        }
    }

    /* Re-score every query's candidates exactly and keep the k best. The candidates of
     * query j sit in the pools j, nq + j, 2 nq + j, ... */
    size_t nsecond = 0;
    for (size_t j = 0; j < nq; j++) {
        size_t m = 0;
        float left_out = -INFINITY; /* at least the best candidate score left out */
        for (int t = 0; t < nt; t++) {
            struct fs_pool *p = &pools[(size_t)t * nq + j];
            fs_pool_cut(p);
            for (size_t i = 0; i < p->n; i++)
                all[m++] = fs_unkey(p->key[i]);
            /* What a pool dropped or turned away scored no more than its bar, which is
             * now the weakest score it kept (-INFINITY if it never had to drop any). */
            left_out = fmaxf(left_out, p->bar);
        }
        const float *qj = q + j * (size_t)fs->dim;
        fs_rescore(fs, xb, qj, all, m, k, keys);
        const struct fs_cand *best = all;
        if (m >= k && left_out > -INFINITY) {
            float kth = all[k - 1].score;
            if (!(left_out * qscale[j] + qerr[j] < kth)) {
                /* Not provably exact: keep every vector that could reach kth. */
                float bar = qscale[j] > 0 ? (kth - qerr[j]) / qscale[j] : -INFINITY;
                if (fs_collect(fs, qs + j * qbytes, qu + j * qbytes, bar, &extra) != 0)
                    goto out;
                if (extra.n > nkeys) {
                    uint64_t *more = qd_reallocarray(keys, extra.n, sizeof *keys);
                    if (!more)
                        goto out;
                    keys = more;
                    nkeys = extra.n;
                }
                fs_rescore(fs, xb, qj, extra.c, extra.n, k, keys);
                best = extra.c;
                m = extra.n;
                nsecond++;
            }
        }
        for (size_t i = 0; i < m && i < k; i++) {
            scores[j * k + i] = best[i].score;
            pos[j * k + i] = best[i].pos;
        }
    }
    atomic_fetch_add_explicit((atomic_size_t *)&fs->nsearched, nq, memory_order_relaxed);
    atomic_fetch_add_explicit((atomic_size_t *)&fs->nsecond, nsecond, memory_order_relaxed);
    rc = 0;
out:
    qd_free(extra.c);
    qd_free(keys);
    qd_free(all);
    qd_free(qs);
    qd_free(qscale);
    qd_free(pools);
    qd_free(pkeys);
    return rc;
}

void qd_flatscan_stats(const qd_flatscan *fs, size_t *searched, size_t *second)
{
    *searched = atomic_load(&fs->nsearched);
    *second = atomic_load(&fs->nsecond);
}
