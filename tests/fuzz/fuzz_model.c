/*
 * fuzz_model.c - libFuzzer harness for the model-file loader (qd_model_load_mem).
 *
 * The first byte of an input is a selector, the rest is the file. A file's CRC-32
 * trailer is checked before the vocabulary and the weights are read, so random bytes
 * would almost never get past it: with bit 0 of the selector set, the harness writes
 * the right CRC into the last four bytes first, and the parser behind the checksum is
 * fuzzed as well. Bits 1..7 pick a text to encode with a model that loads.
 *
 * A refused file must come with a message. A loaded model must round-trip: its
 * serialization loads again and serializes to the same bytes; and it must encode
 * texts (fixed ones and the input's own bytes, so the tokenizer sees arbitrary bytes
 * too) into vectors of unit length, or zero for a text without a known token; finite
 * unless its weights are absurdly large (see SANE_WEIGHT).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qdup/common.h"
#include "qdup/fileio.h"
#include "qdup/model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void die(const char *what, const char *detail)
{
    fprintf(stderr, "fuzz_model: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    abort();
}

/* Largest weight magnitude for which encodings must be finite. The loader accepts any
 * finite weight, and a file with weights near FLT_MAX (CRC-valid, so written on
 * purpose) overflows in the sums of the forward pass: such vectors are NaN, which the
 * store refuses with a clear error ("vector component is not finite"). A trained model
 * is nowhere near: with |w| <= 1e3, no sum of the forward pass can overflow. */
#define SANE_WEIGHT 1e3f

static int sane_weights(qd_model *m)
{
    size_t n;
    const float *w = qd_model_param_data(m, &n);
    for (size_t i = 0; i < n; i++)
        if (!(fabsf(w[i]) <= SANE_WEIGHT))
            return 0;
    return 1;
}

static void check_encode(const qd_model *m, int sane, const char *text, size_t len)
{
    int dim = qd_model_dim(m);
    if (dim < 1 || dim > 3 * QD_MODEL_MAX_DIM)
        die("dimension out of range", NULL);
    qd_enc_ws *ws = qd_enc_ws_new();
    float *v = malloc((size_t)dim * sizeof *v);
    if (!ws || !v)
        abort();
    int rc = qd_enc_texts(m, ws, &text, &len, 1, v);
    if (rc == 0) {
        double n2 = 0;
        int finite = 1;
        for (int i = 0; i < dim; i++) {
            finite &= isfinite(v[i]) != 0;
            n2 += (double)v[i] * v[i];
        }
        if (!finite && sane)
            die("encoding is not finite", NULL);
        if (!finite)
            n2 = 0;
        /* A unit vector, or zero (no known token, or a degenerate model whose
         * pooled state is zero). */
        if (n2 != 0 && fabs(n2 - 1.0) > 1e-3)
            die("encoding is not of unit length", NULL);
    } else if (rc != QD_ERR_NOMEM && rc != QD_ERR_RANGE && rc != QD_ERR_INVAL) {
        die("encoding failed", qd_strerror(rc));
    }
    free(v);
    qd_enc_ws_free(ws);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned sel = data[0];
    size_t len = size - 1;
    /* An exact-size copy: a read past the end of the file is caught. */
    uint8_t *file = malloc(len ? len : 1);
    if (!file)
        abort();
    memcpy(file, data + 1, len);
    if ((sel & 1) && len >= 4) {
        uint32_t crc = qd_crc32(0, file, len - 4);
        for (int i = 0; i < 4; i++)
            file[len - 4 + (size_t)i] = (uint8_t)(crc >> (8 * i));
    }

    char err[QD_ERRMSG_MAX] = "";
    qd_model *m = NULL;
    int rc = qd_model_load_mem(file, len, "fuzz.qdm", &m, err, sizeof err);
    if (rc != 0) {
        if (m || !err[0])
            die("a refused file left a model or no message", NULL);
        free(file);
        return 0;
    }

    uint8_t *s1 = NULL, *s2 = NULL;
    size_t n1 = 0, n2 = 0;
    if (qd_model_serialize(m, &s1, &n1))
        die("serialize failed", NULL);
    qd_model *m2 = NULL;
    if (qd_model_load_mem(s1, n1, "again.qdm", &m2, err, sizeof err))
        die("a serialized model does not load", err);
    if (qd_model_serialize(m2, &s2, &n2))
        die("serialize failed", NULL);
    if (n1 != n2 || memcmp(s1, s2, n1) != 0)
        die("serialization does not round-trip", NULL);
    if (qd_model_dim(m) != qd_model_dim(m2))
        die("dimension changed in the round trip", NULL);

    static const char *const texts[] = {
        "w3 w17 w5 ?", "", "What is the best way to learn C?", "\xc3\xa9t\xc3\xa9 2024 !!",
    };
    const char *t = texts[(sel >> 1) % 4];
    int sane = sane_weights(m);
    check_encode(m, sane, t, strlen(t));
    check_encode(m, sane, (const char *)file, len < 256 ? len : 256);

    qd_free(s1);
    qd_free(s2);
    qd_model_free(m2);
    qd_model_free(m);
    free(file);
    return 0;
}
