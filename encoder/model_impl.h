/*
 * model_impl.h - the inside of a qd_model, shared by model.c (files), enc.c (forward
 * pass) and the trainer. Not part of the public API.
 */
#ifndef QDUP_MODEL_IMPL_H
#define QDUP_MODEL_IMPL_H

#include "qdup/model.h"

/* Element-wise loops built for AVX-512, AVX2 and plain x86-64, the best chosen at load
 * time (GCC's function multi-versioning; not under ASan, which it trips). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define QD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define QD_CLONES
#endif

struct qd_model {
    qd_model_hdr hdr;     /* dimensions and tokenizer settings */
    qd_vocab *vocab;      /* ids 0 .. V-1 */
    float *param_data;    /* (nparams) every weight, in file order */
    size_t nparams;       /* floats in param_data */
    qd_params p;          /* named views into param_data */
    char fingerprint[17]; /* hex FNV-1a of the encoder's file bytes (version 1 or 2
                             form); "" until saved or loaded */
    qd_model_scoring scoring; /* ranking and duplicate decision (fitted or defaults) */
    struct qd_wordmean *wmean; /* (V, E) the mean embedding of each word, filled as
                                  words are encoded (lstm_impl.h); made by the loader,
                                  dropped by qd_model_param_data; NULL: none */
};

/* Embedding rows: vocabulary ids followed by n-gram buckets. */
static inline size_t qd_model_rows(const qd_model_hdr *h)
{
    return (size_t)h->vocab + h->tok.ngram_buckets;
}

#endif
