/*
 * model.h - the Siamese encoder: model files and the forward pass.
 *
 * A question becomes a unit vector in four steps, the same for every question (one set
 * of weights, hence "Siamese"):
 *   embedding: each token is the mean of its embedding rows (tok.h)      (T, E)
 *   LSTM:      one layer, hidden size H, gates in PyTorch's order i f g o (T, H)
 *   pooling:   mean of the hidden states over the real (non-pad) tokens   (H)
 *              [version 2: optionally followed by their element-wise max (H) and
 *              by the mean of the token embeddings (E), see enum qd_pool]
 *   normalize: divided by its L2 norm, so cosine similarity is a dot product.
 *
 * A loaded qd_model is read-only: any number of threads may encode with it at once,
 * each with its own qd_enc_ws workspace. (Inside, it keeps the mean embedding of each
 * word once a text has used it, filled with atomics, V x E floats at most: 7.7 MB for
 * the default model's 15,132 words of 128; its pages take memory only as words come.)
 *
 * Model files (.qdm) are little-endian:
 *   header    QD_MODEL_HEADER_SIZE bytes: magic "QDUPMODL", format version, header size,
 *             an endianness sentinel (0x0A0B0C0D), a float sentinel (-1.75f), then the
 *             dimensions and tokenizer settings of struct qd_model_hdr, the byte size of
 *             the vocabulary section and the number of weights
 *   vocabulary the words of ids 2 .. V-1, each a length byte and its bytes
 *   weights   n_params float32 in the order of struct qd_params
 *   scoring   [version 3] how results are ranked and judged: the fusion weight, BM25's
 *             parameters, the number of candidates re-scored, the operating point and
 *             the duplicate head (struct qd_model_scoring); its byte size is a u64 at
 *             header offset 80
 *   trailer   CRC-32 of everything before it
 * A version 1 or 2 file has no scoring section and loads with qd_model_scoring_default()
 * (fitted = 0); a model with fitted scoring is written as version 3, any other as the
 * lowest version that holds it.
 * The loader checks every size against the file length before it allocates, and names
 * what is wrong with a file it refuses. A model's fingerprint (64-bit FNV-1a of the
 * whole file, as 16 hex digits) identifies its encoder to the index and the daemon: for
 * a version 3 file it is the fingerprint of the version 1 or 2 file the same encoder
 * makes without the scoring section, so re-fitting the scoring of a model leaves its
 * vectors, its fingerprint and the stores built with it valid.
 */
#ifndef QDUP_MODEL_H
#define QDUP_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "qdup/head.h"
#include "qdup/lex.h"
#include "qdup/tok.h"

#ifdef __cplusplus
extern "C" {
#endif

#define QD_MODEL_MAGIC "QDUPMODL"
#define QD_MODEL_VERSION 3   /* 1: the course's model (mean pooling only); 2: qd_pool;
                                3: the scoring section */
#define QD_MODEL_HEADER_SIZE 128
#define QD_MODEL_ENDIAN 0x0A0B0C0DU
#define QD_MODEL_FLOATCHECK (-1.75f)

/* Upper bounds the loader enforces before trusting any size in a file. */
#define QD_MODEL_MAX_DIM 4096        /* E and H */
#define QD_MODEL_MAX_VOCAB 10000000  /* V */
#define QD_MODEL_MAX_BUCKETS 16777216

/* How the hidden states become one vector: the mean over the real tokens, and with
 * these bits set, concatenated after it (then the whole is normalized):
 *   QD_POOL_MAX  the element-wise max of the hidden states over the real tokens (H)
 *   QD_POOL_EMB  the mean of the token embeddings, a bag-of-words skip path (E)
 * Version 1 files are always QD_POOL_MEAN. */
enum qd_pool {
    QD_POOL_MEAN = 0, /* mean only: the course's model */
    QD_POOL_MAX = 1,  /* + max of the hidden states */
    QD_POOL_EMB = 2,  /* + mean of the token embeddings */
};
#define QD_POOL_ALL (QD_POOL_MAX | QD_POOL_EMB)

/* Shape of a model, as stored in the file header. */
typedef struct qd_model_hdr {
    uint32_t emb_dim;    /* E: embedding width */
    uint32_t hidden;     /* H: LSTM hidden size */
    uint32_t vocab;      /* V: vocabulary ids, the 2 reserved ones included */
    uint32_t dirs;       /* LSTM directions: 1 (2 is reserved for a bidirectional LSTM) */
    uint32_t pool;       /* enum qd_pool bits */
    qd_tok_cfg tok;      /* tokenizer settings */
} qd_model_hdr;

/* Named views into one contiguous float buffer (the layout of the file's weights).
 * R = V + tok.ngram_buckets embedding rows. */
typedef struct qd_params {
    float *emb;  /* (R, E) embedding rows; row QD_TOK_PAD is never read */
    float *wx;   /* (4H, E) input-to-hidden weights, gates i f g o */
    float *wh;   /* (4H, H) hidden-to-hidden weights */
    float *b;    /* (4H) bias (PyTorch's b_ih + b_hh) */
} qd_params;

typedef struct qd_model qd_model;

/* How a model's results are ranked and judged: fitted by qdup-train on the validation
 * split (a version 3 file), or the defaults of qd_model_scoring_default(). */
typedef struct qd_model_scoring {
    int fitted;            /* 1: fitted on validation pairs; 0: the defaults */
    float fusion;          /* a: score = a * cosine + (1 - a) * lexical, 0..1 */
    qd_bm25_params bm25;   /* BM25's k1 and b for the lexical score */
    uint32_t candidates;   /* nearest vectors re-scored per query, 1..QD_MODEL_MAX_CANDIDATES */
    float min_p;           /* operating point: p_duplicate >= min_p means duplicate */
    qd_head head;          /* P(duplicate | pair) */
} qd_model_scoring;

#define QD_MODEL_MAX_CANDIDATES 10000
/* The default head's Platt coefficients and operating point (see below). */
#define QD_MODEL_DEFAULT_PLATT_W 6.5356f
#define QD_MODEL_DEFAULT_PLATT_B (-4.7028f)
#define QD_MODEL_DEFAULT_MIN_P 0.4615f

/* The scoring of a model that has none fitted: a = 0.6, k1 = 0.9, b = 0.4, 50
 * candidates (what qdup-train chose with the shared default model), and a head of
 * Platt scaling fitted on the shared validation split with that model; only a
 * starting point: a model's own fitted scoring replaces all of it. */
void qd_model_scoring_default(qd_model_scoring *s);
/* Checks every field's range; QD_ERR_FORMAT with err naming the field. */
int qd_model_scoring_check(const qd_model_scoring *s, char *err, size_t errlen);

/* Number of floats the weights of hdr take (0 if hdr is out of bounds). */
size_t qd_model_nparams(const qd_model_hdr *hdr);
/* Checks a header's fields against the bounds above; err says which field. */
int qd_model_hdr_check(const qd_model_hdr *hdr, char *err, size_t errlen);
/* Carves params out of buf (qd_model_nparams(hdr) floats). */
void qd_params_point(const qd_model_hdr *hdr, float *buf, qd_params *p);

/* Loads a model file. On failure err names the file and what is wrong with it. */
int qd_model_load(const char *path, qd_model **out, char *err, size_t errlen);
/* Same, from bytes in memory (copied; `name` is used in messages). */
int qd_model_load_mem(const void *data, size_t len, const char *name, qd_model **out,
                      char *err, size_t errlen);
/* A new model owning `vocab` (taken over, even on failure) with zeroed weights. */
int qd_model_new(const qd_model_hdr *hdr, qd_vocab *vocab, qd_model **out, char *err,
                 size_t errlen);
void qd_model_free(qd_model *m);

/* Serializes m into a fresh buffer (the bytes of a .qdm file). */
int qd_model_serialize(const qd_model *m, uint8_t **data, size_t *len);
/* Writes m crash-safely to path (temp file, fsync, rename). */
int qd_model_save(qd_model *m, const char *path, char *err, size_t errlen);

const qd_model_hdr *qd_model_header(const qd_model *m);
const qd_vocab *qd_model_vocab(const qd_model *m);
/* The weights (the trainer writes them through qd_model_param_data, which drops the
 * cache of word means: call it while no other thread encodes with m). */
const qd_params *qd_model_cparams(const qd_model *m);
float *qd_model_param_data(qd_model *m, size_t *n);
/* The model's scoring (never NULL). */
const qd_model_scoring *qd_model_get_scoring(const qd_model *m);
/* Replaces it (checked first: QD_ERR_FORMAT with err); sets fitted = 1, so that the
 * model is saved as version 3. */
int qd_model_set_scoring(qd_model *m, const qd_model_scoring *s, char *err, size_t errlen);
/* Width of the vectors the model makes. */
int qd_model_dim(const qd_model *m);
/* Width of the vectors a model of this shape makes: H, + H with max pooling, + E with
 * the embedding path. */
size_t qd_model_out_dim(const qd_model_hdr *hdr);
/* 16 lower-case hex digits; set by load and by save. "" for a model never saved. */
const char *qd_model_fingerprint(const qd_model *m);

/* --- inference ------------------------------------------------------------------- */

/* Per-thread scratch for encoding; grows to the largest batch seen. */
typedef struct qd_enc_ws qd_enc_ws;

qd_enc_ws *qd_enc_ws_new(void);
void qd_enc_ws_free(qd_enc_ws *ws);

/* Embeds n questions of a token batch into out (n, qd_model_dim(m)), row-major. A
 * question with no tokens gets the zero vector. The batch may be made any way, so
 * every token's rows are read: texts are faster through qd_enc_texts, which takes a
 * known word's mean from the model's cache (the same vectors, bit for bit). */
int qd_enc_forward(const qd_model *m, qd_enc_ws *ws, const qd_tokseqs *seqs, float *out);

/* Tokenizes and embeds n texts (texts[i] of lens[i] bytes) into out. */
int qd_enc_texts(const qd_model *m, qd_enc_ws *ws, const char *const *texts,
                 const size_t *lens, size_t n, float *out);

/* Embeds n texts on nthreads threads (0: all cores) in length-sorted batches of up to
 * batch questions; calls progress(done, arg) now and then from the calling thread if
 * progress is not NULL. out is (n, dim). */
int qd_enc_texts_parallel(const qd_model *m, const char *const *texts, const size_t *lens,
                          size_t n, int nthreads, size_t batch,
                          void (*progress)(size_t done, void *arg), void *arg, float *out);

#ifdef __cplusplus
}
#endif

#endif
