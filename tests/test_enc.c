/*
 * test_enc.c - the forward pass against PyTorch, and against itself.
 *
 * tests/fixtures/fwd_*.{qdm,txt} were written by tools/torch_ref.py: small random
 * models, questions given as embedding rows, and the unit vectors PyTorch computes.
 * The C forward pass must agree to 1e-5 (max abs difference), through BLAS and through
 * the plain-loop reference product. Then: a question's vector does not depend on the
 * batch it is encoded in, an empty question gives the zero vector, the activation
 * kernels are accurate, and the parallel driver agrees with the serial one. Last, the
 * cache of word means gives the vectors of reading every row, bit for bit.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../encoder/lstm_impl.h"
#include "../encoder/model_impl.h"
#include "qdup/common.h"
#include "qdup/model.h"
#include "testutil.h"

static char err[QD_ERRMSG_MAX];

/* A fixture: a model, its questions as a qd_tokseqs, and the expected vectors. */
typedef struct fixture {
    qd_model *m;
    qd_tokseqs seqs;   /* built by hand: does not depend on the tokenizer */
    float *expect;     /* (n, H) PyTorch's vectors */
} fixture;

static void load_fixture(const char *name, fixture *fx)
{
    char file[256];
    snprintf(file, sizeof file, "%s.qdm", name);
    if (qd_model_load(qt_path(qt_fixtures_dir(), file), &fx->m, err, sizeof err) != 0)
        fail_msg("%s", err);
    size_t H = (size_t)qd_model_dim(fx->m);
    snprintf(file, sizeof file, "%s.txt", name);
    char *text = qt_read_file(qt_path(qt_fixtures_dir(), file), NULL);
    /* Sizes: generous upper bounds from the file size. */
    size_t cap = strlen(text);
    qd_tokseqs *s = &fx->seqs;
    memset(s, 0, sizeof *s);
    s->qoff = calloc(cap, sizeof *s->qoff);
    s->toff = calloc(cap, sizeof *s->toff);
    s->rows = calloc(cap, sizeof *s->rows);
    fx->expect = calloc(cap, sizeof *fx->expect);
    size_t nv = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        char *p = line + 2;
        if (line[0] == 'q') {
            s->qoff[s->n++] = (uint32_t)s->ntok;
        } else if (line[0] == 't') {
            s->toff[s->ntok++] = (uint32_t)s->nrows;
            char *end;
            for (long r = strtol(p, &end, 10); end != p; r = strtol(p, &end, 10)) {
                s->rows[s->nrows++] = (int32_t)r;
                p = end;
            }
        } else if (line[0] == 'v') {
            for (size_t k = 0; k < H; k++) {
                char *end;
                fx->expect[nv * H + k] = strtof(p, &end);
                assert_true(end != p);
                p = end;
            }
            nv++;
        }
    }
    s->qoff[s->n] = (uint32_t)s->ntok;
    s->toff[s->ntok] = (uint32_t)s->nrows;
    assert_int_equal(nv, s->n);
    assert_true(s->n >= 10);
    free(text);
}

static void free_fixture(fixture *fx)
{
    qd_model_free(fx->m);
    free(fx->seqs.qoff);
    free(fx->seqs.toff);
    free(fx->seqs.rows);
    free(fx->expect);
}

static double max_abs_diff(const float *a, const float *b, size_t n)
{
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (d > worst || isnan(d))
            worst = isnan(d) ? INFINITY : d;
    }
    return worst;
}

static void check_against_pytorch(const char *name, int reference_gemm)
{
    fixture fx;
    load_fixture(name, &fx);
    size_t H = (size_t)qd_model_dim(fx.m), n = fx.seqs.n;
    float *out = calloc(n * H, sizeof *out);
    qd_enc_ws *ws = qd_enc_ws_new();
    qd_gemm_use_reference(reference_gemm);
    assert_int_equal(qd_enc_forward(fx.m, ws, &fx.seqs, out), 0);
    qd_gemm_use_reference(0);
    double d = max_abs_diff(out, fx.expect, n * H);
    printf("# %s (%s): max abs difference from PyTorch %.3g\n", name,
           reference_gemm ? "plain loops" : "BLAS", d);
    if (!(d < 1e-5))
        fail_msg("%s: max abs difference from PyTorch is %.3g", name, d);
    /* Unit vectors. */
    for (size_t q = 0; q < n; q++) {
        double ss = 0;
        for (size_t k = 0; k < H; k++)
            ss += (double)out[q * H + k] * out[q * H + k];
        qt_assert_near(ss, 1.0, 1e-5);
    }
    qd_enc_ws_free(ws);
    free(out);
    free_fixture(&fx);
}

static void test_plain_model_matches_pytorch(void **state)
{
    (void)state;
    check_against_pytorch("fwd_plain", 0);
}

static void test_plain_model_reference_gemm_matches_pytorch(void **state)
{
    (void)state;
    check_against_pytorch("fwd_plain", 1);
}

static void test_ngram_model_matches_pytorch(void **state)
{
    (void)state;
    check_against_pytorch("fwd_ngram", 0);
    check_against_pytorch("fwd_ngram", 1);
}

/* Format version 2: max pooling and the embedding path, concatenated after the mean. */
static void test_pooled_model_matches_pytorch(void **state)
{
    (void)state;
    check_against_pytorch("fwd_pool", 0);
    check_against_pytorch("fwd_pool", 1);
}

/* The BLAS product and the plain loops agree on random shapes, all transpositions. */
static void test_gemm_blas_vs_loops(void **state)
{
    (void)state;
    uint64_t rng = 42;
    for (int trial = 0; trial < 40; trial++) {
        size_t M = 1 + qt_rand(&rng) % 37, N = 1 + qt_rand(&rng) % 41, K = 1 + qt_rand(&rng) % 29;
        int ta = (int)(qt_rand(&rng) & 1), tb = (int)(qt_rand(&rng) & 1);
        float beta = (trial % 3) * 0.5f;
        float *A = malloc(M * K * sizeof *A), *B = malloc(K * N * sizeof *B);
        float *C1 = malloc(M * N * sizeof *C1), *C2 = malloc(M * N * sizeof *C2);
        for (size_t i = 0; i < M * K; i++)
            A[i] = (float)qt_uniform(&rng, -1, 1);
        for (size_t i = 0; i < K * N; i++)
            B[i] = (float)qt_uniform(&rng, -1, 1);
        for (size_t i = 0; i < M * N; i++)
            C1[i] = C2[i] = (float)qt_uniform(&rng, -1, 1);
        size_t lda = ta ? M : K, ldb = tb ? K : N;
        qd_gemm_use_reference(1);
        qd_gemm(ta, tb, M, N, K, 0.7f, A, lda, B, ldb, beta, C1, N);
        qd_gemm_use_reference(0);
        qd_gemm(ta, tb, M, N, K, 0.7f, A, lda, B, ldb, beta, C2, N);
        assert_true(max_abs_diff(C1, C2, M * N) < 1e-5);
        free(A);
        free(B);
        free(C1);
        free(C2);
    }
}

/* The small-batch product (the kernel this processor or QDUP_SMM_KERNEL picks) agrees
 * bit for bit with its plain loops, which sum in the same order, and with the double
 * precision reference to rounding; shapes cover partial panels and strips. */
static void test_smm_vs_loops(void **state)
{
    (void)state;
    uint64_t rng = 7;
    for (int trial = 0; trial < 60; trial++) {
        size_t M = 1 + qt_rand(&rng) % 37, N = 1 + qt_rand(&rng) % 150,
               K = 1 + qt_rand(&rng) % 70;
        int acc = (int)(qt_rand(&rng) & 1);
        float *A = malloc(M * K * sizeof *A), *W = malloc(N * K * sizeof *W);
        float *P = malloc(qd_smm_packed_len(N, K) * sizeof *P);
        float *C0 = malloc(M * N * sizeof *C0), *C1 = malloc(M * N * sizeof *C1),
              *C2 = malloc(M * N * sizeof *C2);
        for (size_t i = 0; i < M * K; i++)
            A[i] = (float)qt_uniform(&rng, -1, 1);
        for (size_t i = 0; i < N * K; i++)
            W[i] = (float)qt_uniform(&rng, -1, 1);
        for (size_t i = 0; i < M * N; i++)
            C0[i] = C1[i] = C2[i] = (float)qt_uniform(&rng, -1, 1);
        qd_smm_pack(N, K, W, P);
        qd_gemm_use_reference(1);
        qd_gemm(0, 1, M, N, K, 1.0f, A, K, W, K, acc ? 1.0f : 0.0f, C0, N);
        qd_smm(M, N, K, A, K, P, acc, C1, N);
        qd_gemm_use_reference(0);
        qd_smm(M, N, K, A, K, P, acc, C2, N);
        assert_true(max_abs_diff(C0, C1, M * N) < 1e-5);
        if (memcmp(C1, C2, M * N * sizeof *C1) != 0)
            fail_msg("M %zu N %zu K %zu: the kernel differs from its loops by %.3g", M, N, K,
                     max_abs_diff(C1, C2, M * N));
        free(A);
        free(W);
        free(P);
        free(C0);
        free(C1);
        free(C2);
    }
}

static void test_activations_accurate(void **state)
{
    (void)state;
    enum { N = 20001 };
    float *x = malloc(N * sizeof *x), *y = malloc(N * sizeof *y);
    for (int i = 0; i < N; i++)
        x[i] = -100.0f + 200.0f * (float)i / (N - 1);
    qd_vsigmoid(y, x, N);
    for (int i = 0; i < N; i++)
        qt_assert_near(y[i], 1.0 / (1.0 + exp(-(double)x[i])), 2e-7);
    qd_vtanh(y, x, N);
    for (int i = 0; i < N; i++)
        qt_assert_near(y[i], tanh((double)x[i]), 3e-7);
    free(x);
    free(y);
}

/* Encoding questions one at a time, in the fixture's batch, or in a batch with the
 * order reversed gives the same vectors: lengths are masked, not padded. */
static void test_batch_composition_does_not_matter(void **state)
{
    (void)state;
    fixture fx;
    load_fixture("fwd_pool", &fx);
    size_t H = (size_t)qd_model_dim(fx.m), n = fx.seqs.n;
    float *all = calloc(n * H, sizeof *all);
    qd_enc_ws *ws = qd_enc_ws_new();
    assert_int_equal(qd_enc_forward(fx.m, ws, &fx.seqs, all), 0);
    qd_fwd f;
    qd_fwd_init(&f);
    const qd_model_hdr *hdr = qd_model_header(fx.m);
    const qd_params *p = qd_model_cparams(fx.m);
    for (uint32_t q = 0; q < n; q++) {
        assert_int_equal(qd_lstm_forward(hdr, p, &fx.seqs, &q, 1, &f), 0);
        assert_true(max_abs_diff(f.out, all + q * H, H) < 1e-6);
    }
    uint32_t *rev = malloc(n * sizeof *rev);
    for (uint32_t i = 0; i < n; i++)
        rev[i] = (uint32_t)(n - 1 - i);
    assert_int_equal(qd_lstm_forward(hdr, p, &fx.seqs, rev, n, &f), 0);
    for (size_t i = 0; i < n; i++)
        assert_true(max_abs_diff(f.out + i * H, all + rev[i] * H, H) < 1e-6);
    free(rev);
    qd_fwd_free(&f);
    qd_enc_ws_free(ws);
    free(all);
    free_fixture(&fx);
}

static void test_empty_question_is_zero_vector(void **state)
{
    (void)state;
    fixture fx;
    load_fixture("fwd_plain", &fx);
    size_t H = (size_t)qd_model_dim(fx.m);
    /* Questions: empty, the fixture's first, empty. */
    uint32_t qoff[4] = {0, 0, fx.seqs.qoff[1], fx.seqs.qoff[1]};
    qd_tokseqs s = fx.seqs;
    s.n = 3;
    s.qoff = qoff;
    s.ntok = fx.seqs.qoff[1];
    float *out = calloc(3 * H, sizeof *out);
    qd_enc_ws *ws = qd_enc_ws_new();
    assert_int_equal(qd_enc_forward(fx.m, ws, &s, out), 0);
    for (size_t k = 0; k < H; k++) {
        assert_true(out[k] == 0.0f);
        assert_true(out[2 * H + k] == 0.0f);
    }
    assert_true(max_abs_diff(out + H, fx.expect, H) < 1e-5);
    /* A batch of nothing but empty questions. */
    uint32_t qoff0[3] = {0, 0, 0};
    s.n = 2;
    s.qoff = qoff0;
    s.ntok = 0;
    assert_int_equal(qd_enc_forward(fx.m, ws, &s, out), 0);
    for (size_t k = 0; k < 2 * H; k++)
        assert_true(out[k] == 0.0f);
    qd_enc_ws_free(ws);
    free(out);
    free_fixture(&fx);
}

/* Texts through the tokenizer: the parallel driver on several threads gives exactly
 * the serial result, whatever the thread count and batch size. */
static void test_parallel_matches_serial(void **state)
{
    (void)state;
    qd_model *m;
    assert_int_equal(qd_model_load(qt_path(qt_fixtures_dir(), "fwd_plain.qdm"), &m, err,
                                   sizeof err),
                     0);
    size_t H = (size_t)qd_model_dim(m);
    enum { N = 1500 };
    char **texts = malloc(N * sizeof *texts);
    size_t *lens = malloc(N * sizeof *lens);
    uint64_t rng = 9;
    for (size_t i = 0; i < N; i++) {
        char buf[512];
        size_t len = 0, words = qt_rand(&rng) % 25;
        for (size_t w = 0; w < words; w++)
            len += (size_t)snprintf(buf + len, sizeof buf - len, "w%d%s ",
                                    (int)(qt_rand(&rng) % 45), (w % 5 == 4) ? " ?" : "");
        texts[i] = strdup(buf);
        lens[i] = len;
    }
    float *serial = calloc(N * H, sizeof *serial);
    qd_enc_ws *ws = qd_enc_ws_new();
    for (size_t i = 0; i < N; i++)
        assert_int_equal(qd_enc_texts(m, ws, (const char *const *)&texts[i], &lens[i], 1,
                                      serial + i * H),
                         0);
    float *par = calloc(N * H, sizeof *par);
    int threads[] = {1, 2, 4};
    size_t batches[] = {1, 7, 256};
    for (int t = 0; t < 3; t++) {
        memset(par, 0xFF, N * H * sizeof *par);
        assert_int_equal(qd_enc_texts_parallel(m, (const char *const *)texts, lens, N,
                                               threads[t], batches[t], NULL, NULL, par),
                         0);
        double d = max_abs_diff(par, serial, N * H);
        if (!(d < 1e-6))
            fail_msg("threads %d batch %zu: differs from serial by %.3g", threads[t],
                     batches[t], d);
    }
    for (size_t i = 0; i < N; i++)
        free(texts[i]);
    free(texts);
    free(lens);
    free(serial);
    free(par);
    qd_enc_ws_free(ws);
    qd_model_free(m);
}

/* --- the cache of word means ------------------------------------------------------- */

/* A model whose n-grams start at 4 code points, saved and loaded (a loaded model has the
 * cache): a one-letter word then has no n-gram, so a known one is its id's row alone
 * and an unknown one is QD_TOK_UNK. */
static qd_model *load_ngram4_model(void)
{
    static const char *const words[] = {"a", "is", "what", "the", "how", "sourdough"};
    qd_vocab *v = qd_vocab_new();
    assert_non_null(v);
    for (size_t i = 0; i < sizeof words / sizeof *words; i++)
        assert_true(qd_vocab_add(v, words[i], strlen(words[i])) >= 0);
    qd_model_hdr h = {.emb_dim = 8, .hidden = 6, .vocab = (uint32_t)qd_vocab_size(v),
                      .dirs = 1, .pool = QD_POOL_ALL,
                      .tok = {.max_tokens = 64, .ngram_min = 4, .ngram_max = 5,
                              .ngram_buckets = 97}};
    qd_model *m;
    if (qd_model_new(&h, v, &m, err, sizeof err))
        fail_msg("%s", err);
    uint64_t rs = 11;
    size_t n;
    float *w = qd_model_param_data(m, &n);
    for (size_t i = 0; i < n; i++)
        w[i] = (float)qt_uniform(&rs, -0.5, 0.5);
    const char *path = qt_path(qt_tmp_dir(), "ngram4.qdm");
    if (qd_model_save(m, path, err, sizeof err))
        fail_msg("%s", err);
    qd_model_free(m);
    if (qd_model_load(path, &m, err, sizeof err))
        fail_msg("%s", err);
    return m;
}

/* Texts for a model: every vocabulary word alone, all of them in one text, a word
 * repeated, and words the vocabulary lacks (long, one letter, punctuation, accented,
 * an emoji). */
static size_t word_texts(const qd_model *m, char ***texts, size_t **lens)
{
    const qd_vocab *v = qd_model_vocab(m);
    size_t V = qd_vocab_size(v), n = 0, cap = V + 8, all = 0;
    *texts = calloc(cap, sizeof **texts);
    *lens = calloc(cap, sizeof **lens);
    char *joined = calloc(V, QD_TOK_MAX_BYTES + 1);
    for (int32_t id = QD_TOK_NRESERVED; (size_t)id < V; id++) {
        size_t wn;
        const char *w = qd_vocab_word(v, id, &wn);
        (*texts)[n++] = strndup(w, wn);
        memcpy(joined + all, w, wn);
        all += wn;
        joined[all++] = ' ';
    }
    (*texts)[n++] = joined;
    static const char *const more[] = {
        "zzyzx quux", "q", "x ? y !", "caf\xC3\xA9 na\xC3\xAFve", "\xF0\x9F\x91\x8D ok",
        "what what what is is the q", "",
    };
    for (size_t i = 0; i < sizeof more / sizeof *more; i++)
        (*texts)[n++] = strdup(more[i]);
    for (size_t i = 0; i < n; i++)
        (*lens)[i] = strlen((*texts)[i]);
    return n;
}

/* The projection cache (passes with packed weights, as qd_enc_texts's): m's was filled
 * by one qd_enc_texts pass over the n texts, whose vectors b are qd_enc_forward's
 * (every row read and projected). A pass reading only the cache, and on a fresh copy
 * of the model a pass mixing a cached word and new ones, give b bit for bit; a cached row
 * is what the pass uses (changing it changes the vector). */
static void check_gates_cache(const char *path, qd_model *m, qd_enc_ws *ws, char **texts,
                              const size_t *lens, size_t n, const float *b)
{
    size_t D = (size_t)qd_model_dim(m), G = m->wmean->gdim;
    size_t known = qd_wordmean_gates_count(m->wmean);
    assert_int_equal(known, qd_model_header(m)->vocab - QD_TOK_NRESERVED);
    float *a = calloc(n * D, sizeof *a);
    assert_int_equal(qd_enc_texts(m, ws, (const char *const *)texts, lens, n, a), 0);
    assert_memory_equal(a, b, n * D * sizeof *a);

    qd_model *fresh;
    if (qd_model_load(path, &fresh, err, sizeof err))
        fail_msg("%s", err);
    qd_enc_ws *fws = qd_enc_ws_new();
    /* texts[0] is the first word alone: then every text, one word cached already. */
    assert_int_equal(qd_enc_texts(fresh, fws, (const char *const *)texts, lens, 1, a), 0);
    assert_memory_equal(a, b, D * sizeof *a);
    assert_int_equal(qd_wordmean_gates_count(fresh->wmean), 1);
    assert_int_equal(qd_enc_texts(fresh, fws, (const char *const *)texts, lens, n, a), 0);
    assert_memory_equal(a, b, n * D * sizeof *a);
    assert_int_equal(qd_wordmean_gates_count(fresh->wmean), known);

    /* Its cached row is the one read. */
    float *row = fresh->wmean->gates + (size_t)QD_TOK_NRESERVED * G;
    for (size_t k = 0; k < G; k++)
        row[k] += 0.5f;
    assert_int_equal(qd_enc_texts(fresh, fws, (const char *const *)texts, lens, 1, a), 0);
    assert_memory_not_equal(a, b, D * sizeof *a);
    qd_enc_ws_free(fws);
    qd_model_free(fresh);
    free(a);
}

/* One model: the token embeddings and vectors of a pass that fills the cache, and of
 * one that reads it, are those of a pass reading every row, bit for bit; so are
 * qd_enc_texts's (cached) and qd_enc_forward's (every row), and the parallel
 * driver's on a fresh copy of the model filled by three threads at once. Afterwards
 * the cache holds `cached` words. */
static void check_word_cache(const char *path, qd_model *m, size_t cached)
{
    const qd_model_hdr *hdr = qd_model_header(m);
    const qd_params *p = qd_model_cparams(m);
    size_t E = hdr->emb_dim, D = (size_t)qd_model_dim(m);
    assert_non_null(m->wmean);
    assert_int_equal(qd_wordmean_count(m->wmean), 0);
    char **texts;
    size_t *lens;
    size_t n = word_texts(m, &texts, &lens);
    qd_tokbuf tb;
    qd_tokbuf_init(&tb);
    qd_tokseqs seqs;
    qd_tokseqs_init(&seqs);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(qd_tok_encode(qd_model_vocab(m), &hdr->tok, &tb, texts[i], lens[i],
                                       &seqs),
                         0);

    qd_fwd rows, fast;
    qd_fwd_init(&rows);
    qd_fwd_init(&fast);
    assert_int_equal(qd_lstm_forward(hdr, p, &seqs, NULL, 0, &rows), 0);
    fast.wmean = m->wmean;
    for (int pass = 0; pass < 2; pass++) {
        assert_int_equal(qd_lstm_forward(hdr, p, &seqs, NULL, 0, &fast), 0);
        assert_memory_equal(fast.x, rows.x, seqs.ntok * E * sizeof *rows.x);
        assert_memory_equal(fast.out, rows.out, n * D * sizeof *rows.out);
        assert_int_equal(qd_wordmean_count(m->wmean), cached);
    }

    float *a = calloc(n * D, sizeof *a), *b = calloc(n * D, sizeof *b);
    qd_enc_ws *ws = qd_enc_ws_new();
    assert_int_equal(qd_enc_texts(m, ws, (const char *const *)texts, lens, n, a), 0);
    assert_int_equal(qd_enc_forward(m, ws, &seqs, b), 0);
    assert_memory_equal(a, b, n * D * sizeof *a);
    check_gates_cache(path, m, ws, texts, lens, n, b);

    qd_model *fresh;
    if (qd_model_load(path, &fresh, err, sizeof err))
        fail_msg("%s", err);
    memset(a, 0xFF, n * D * sizeof *a);
    assert_int_equal(qd_enc_texts_parallel(fresh, (const char *const *)texts, lens, n, 3, 1,
                                           NULL, NULL, a),
                     0);
    assert_memory_equal(a, b, n * D * sizeof *a);
    assert_int_equal(qd_wordmean_count(fresh->wmean), cached);
    qd_model_free(fresh);

    qd_enc_ws_free(ws);
    free(a);
    free(b);
    qd_fwd_free(&rows);
    qd_fwd_free(&fast);
    qd_tokseqs_free(&seqs);
    qd_tokbuf_free(&tb);
    for (size_t i = 0; i < n; i++)
        free(texts[i]);
    free(texts);
    free(lens);
}

static void test_word_cache_matches_rows(void **state)
{
    (void)state;
    /* n-grams of 3 and 4: every word (w2 .. w29) has several rows, all are cached. */
    const char *path = qt_path(qt_fixtures_dir(), "fwd_pool.qdm");
    qd_model *m;
    if (qd_model_load(path, &m, err, sizeof err))
        fail_msg("%s", err);
    check_word_cache(path, m, qd_model_header(m)->vocab - QD_TOK_NRESERVED);
    qd_model_free(m);

    /* No n-grams: a token is one row, nothing worth caching. */
    path = qt_path(qt_fixtures_dir(), "fwd_plain.qdm");
    if (qd_model_load(path, &m, err, sizeof err))
        fail_msg("%s", err);
    check_word_cache(path, m, 0);
    qd_model_free(m);

    /* n-grams from 4: all but the one-letter "a" have n-grams. */
    m = load_ngram4_model();
    check_word_cache(qt_path(qt_tmp_dir(), "ngram4.qdm"), m, 5);
    qd_model_free(m);
}

/* A model whose weights are handed out for writing drops the cache, and encodes with
 * the new weights. */
static void test_word_cache_dropped_on_write(void **state)
{
    (void)state;
    qd_model *m = load_ngram4_model();
    const char *text = "what is sourdough";
    size_t len = strlen(text), D = (size_t)qd_model_dim(m);
    float *before = calloc(D, sizeof *before), *after = calloc(D, sizeof *after);
    qd_enc_ws *ws = qd_enc_ws_new();
    assert_int_equal(qd_enc_texts(m, ws, &text, &len, 1, before), 0);
    assert_int_equal(qd_wordmean_count(m->wmean), 3);
    size_t n;
    float *w = qd_model_param_data(m, &n);
    assert_null(m->wmean);
    const qd_model_hdr *hdr = qd_model_header(m);
    int32_t id = qd_vocab_find(qd_model_vocab(m), "sourdough", 9);
    w[(size_t)id * hdr->emb_dim] += 1.0f; /* the word's own row moves its mean */
    assert_int_equal(qd_enc_texts(m, ws, &text, &len, 1, after), 0);
    assert_memory_not_equal(before, after, D * sizeof *after);
    qd_enc_ws_free(ws);
    free(before);
    free(after);
    qd_model_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain_model_matches_pytorch),
        cmocka_unit_test(test_plain_model_reference_gemm_matches_pytorch),
        cmocka_unit_test(test_ngram_model_matches_pytorch),
        cmocka_unit_test(test_pooled_model_matches_pytorch),
        cmocka_unit_test(test_gemm_blas_vs_loops),
        cmocka_unit_test(test_smm_vs_loops),
        cmocka_unit_test(test_activations_accurate),
        cmocka_unit_test(test_batch_composition_does_not_matter),
        cmocka_unit_test(test_empty_question_is_zero_vector),
        cmocka_unit_test(test_parallel_matches_serial),
        cmocka_unit_test(test_word_cache_matches_rows),
        cmocka_unit_test(test_word_cache_dropped_on_write),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
