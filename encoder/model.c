/*
 * model.c - model files (.qdm): layout, loading with every size checked, saving.
 *
 * The loader trusts nothing in a file until it has been checked: it reads the fixed
 * header, checks magic, version, sentinels and every dimension against hard bounds,
 * computes the exact file length those dimensions imply and compares it with the real
 * length, verifies the CRC-32 trailer, and only then allocates the vocabulary and the
 * weights. Every refusal names the file and the reason. See model.h for the layout.
 */
#include "qdup/model.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "lstm_impl.h"
#include "model_impl.h"
#include "qdup/common.h"
#include "qdup/fileio.h"

/* Fixed part of the header that version 1 defines; header_size may be larger. */
#define HDR_FIXED 80
/* Version 3 adds the scoring section's byte size (u64) at offset 80. */
#define HDR_FIXED_V3 88
/* Scoring section: 9 fixed 4-byte fields, the weights, 2 per isotonic point. */
#define SCORING_BYTES(nfeat, npoints) (4 * (9 + (size_t)(nfeat) + 2 * (size_t)(npoints)))
/* A model file larger than this is refused before it is read. */
#define MODEL_MAX_BYTES ((size_t)8 << 30)

size_t qd_model_nparams(const qd_model_hdr *h)
{
    if (h->emb_dim == 0 || h->emb_dim > QD_MODEL_MAX_DIM || h->hidden == 0 ||
        h->hidden > QD_MODEL_MAX_DIM || h->vocab < QD_TOK_NRESERVED ||
        h->vocab > QD_MODEL_MAX_VOCAB || h->tok.ngram_buckets > QD_MODEL_MAX_BUCKETS ||
        h->dirs != 1)
        return 0;
    size_t E = h->emb_dim, H = h->hidden;
    return qd_model_rows(h) * E + 4 * H * E + 4 * H * H + 4 * H;
}

int qd_model_hdr_check(const qd_model_hdr *h, char *err, size_t errlen)
{
    if (h->emb_dim == 0 || h->emb_dim > QD_MODEL_MAX_DIM)
        return qd_errf(err, errlen, QD_ERR_RANGE, "embedding width %" PRIu32
                       " is outside 1..%d", h->emb_dim, QD_MODEL_MAX_DIM);
    if (h->hidden == 0 || h->hidden > QD_MODEL_MAX_DIM)
        return qd_errf(err, errlen, QD_ERR_RANGE, "hidden size %" PRIu32 " is outside 1..%d",
                       h->hidden, QD_MODEL_MAX_DIM);
    if (h->vocab < QD_TOK_NRESERVED || h->vocab > QD_MODEL_MAX_VOCAB)
        return qd_errf(err, errlen, QD_ERR_RANGE, "vocabulary size %" PRIu32
                       " is outside %d..%d", h->vocab, QD_TOK_NRESERVED, QD_MODEL_MAX_VOCAB);
    if (h->dirs != 1)
        return qd_errf(err, errlen, QD_ERR_UNSUPPORTED, "%" PRIu32
                       " LSTM directions: this build supports 1", h->dirs);
    if (h->pool & ~(uint32_t)QD_POOL_ALL)
        return qd_errf(err, errlen, QD_ERR_UNSUPPORTED, "unknown pooling 0x%" PRIx32, h->pool);
    if (h->tok.ngram_buckets > QD_MODEL_MAX_BUCKETS)
        return qd_errf(err, errlen, QD_ERR_RANGE, "%" PRIu32 " n-gram buckets, over %d",
                       h->tok.ngram_buckets, QD_MODEL_MAX_BUCKETS);
    if (h->tok.ngram_buckets &&
        (h->tok.ngram_min == 0 || h->tok.ngram_max < h->tok.ngram_min || h->tok.ngram_max > 16))
        return qd_errf(err, errlen, QD_ERR_RANGE, "n-gram lengths %" PRIu32 "..%" PRIu32
                       " are not within 1..16", h->tok.ngram_min, h->tok.ngram_max);
    if (h->tok.max_tokens == 0 || h->tok.max_tokens > 65536)
        return qd_errf(err, errlen, QD_ERR_RANGE, "max_tokens %" PRIu32 " is outside 1..65536",
                       h->tok.max_tokens);
    return 0;
}

void qd_params_point(const qd_model_hdr *h, float *buf, qd_params *p)
{
    size_t E = h->emb_dim, H = h->hidden;
    p->emb = buf;
    p->wx = p->emb + qd_model_rows(h) * E;
    p->wh = p->wx + 4 * H * E;
    p->b = p->wh + 4 * H * H;
}

/* --- little-endian byte access, independent of the host's byte order ---------------- */

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get_u64(const uint8_t *p)
{
    return (uint64_t)get_u32(p) | (uint64_t)get_u32(p + 4) << 32;
}

static float get_f32(const uint8_t *p)
{
    uint32_t u = get_u32(p);
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static void put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static void put_u64(uint8_t *p, uint64_t v)
{
    put_u32(p, (uint32_t)v);
    put_u32(p + 4, (uint32_t)(v >> 32));
}

static void put_f32(uint8_t *p, float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    put_u32(p, u);
}

static void set_fingerprint(qd_model *m, const void *data, size_t len)
{
    snprintf(m->fingerprint, sizeof m->fingerprint, "%016" PRIx64,
             qd_hash64(QD_HASH64_INIT, data, len));
}

/* --- construction --------------------------------------------------------------------- */

int qd_model_new(const qd_model_hdr *hdr, qd_vocab *vocab, qd_model **out, char *err,
                 size_t errlen)
{
    *out = NULL;
    int rc = qd_model_hdr_check(hdr, err, errlen);
    if (rc)
        goto fail;
    if (!vocab || qd_vocab_size(vocab) != hdr->vocab) {
        rc = qd_errf(err, errlen, QD_ERR_INVAL, "vocabulary has %zu ids, header says %" PRIu32,
                     vocab ? qd_vocab_size(vocab) : 0, hdr->vocab);
        goto fail;
    }
    qd_model *m = qd_calloc(1, sizeof *m);
    if (!m) {
        rc = qd_errf(err, errlen, QD_ERR_NOMEM, "out of memory");
        goto fail;
    }
    m->hdr = *hdr;
    m->vocab = vocab;
    qd_model_scoring_default(&m->scoring);
    m->nparams = qd_model_nparams(hdr);
    m->param_data = qd_calloc(m->nparams, sizeof(float));
    if (!m->param_data) {
        size_t want = m->nparams;
        qd_model_free(m); /* frees vocab too */
        return qd_errf(err, errlen, QD_ERR_NOMEM, "out of memory for %zu weights", want);
    }
    qd_params_point(hdr, m->param_data, &m->p);
    *out = m;
    return 0;
fail:
    qd_vocab_free(vocab);
    return rc;
}

void qd_model_free(qd_model *m)
{
    if (!m)
        return;
    qd_vocab_free(m->vocab);
    qd_free(m->param_data);
    qd_wordmean_free(m->wmean);
    qd_free(m);
}

/* --- loading ------------------------------------------------------------------------- */

/* Checks and decodes the fixed header; on success *hdr_size, *vocab_bytes and *nparams
 * hold the sizes of the sections that follow. */
static int parse_header(const uint8_t *d, size_t len, const char *name, qd_model_hdr *h,
                        size_t *hdr_size, size_t *vocab_bytes, size_t *nparams,
                        size_t *scoring_bytes, char *err, size_t errlen)
{
    if (len < 16 || memcmp(d, QD_MODEL_MAGIC, 8) != 0) {
        if (len >= 8 && memcmp(d, QD_MODEL_MAGIC, 8) == 0)
            return qd_errf(err, errlen, QD_ERR_FORMAT,
                           "%s: truncated: %zu bytes, a model header alone has %d", name, len,
                           QD_MODEL_HEADER_SIZE);
        return qd_errf(err, errlen, QD_ERR_FORMAT,
                       "%s: not a qdup model file (bad magic; expected \"%s\")", name,
                       QD_MODEL_MAGIC);
    }
    uint32_t version = get_u32(d + 8);
    if (version == 0 || version > 0x00FFFFFF) {
        /* The byte order sentinel is at 16..19: a 16-byte file has none to look at. */
        if (len >= 20 && get_u32(d + 16) == 0x0D0C0B0AU)
            return qd_errf(err, errlen, QD_ERR_FORMAT,
                           "%s: written on a machine of the other byte order (big-endian); "
                           "qdup model files are little-endian", name);
        return qd_errf(err, errlen, QD_ERR_FORMAT, "%s: invalid format version %" PRIu32, name,
                       version);
    }
    if (version > QD_MODEL_VERSION)
        return qd_errf(err, errlen, QD_ERR_VERSION,
                       "%s: format version %" PRIu32
                       " was written by a newer qdup; this build reads version %d",
                       name, version, QD_MODEL_VERSION);
    uint32_t hsize = get_u32(d + 12);
    if (hsize < HDR_FIXED || hsize > 65536)
        return qd_errf(err, errlen, QD_ERR_FORMAT, "%s: header size %" PRIu32
                       " is outside %d..65536", name, hsize, HDR_FIXED);
    if (len < hsize)
        return qd_errf(err, errlen, QD_ERR_FORMAT,
                       "%s: truncated: %zu bytes, the header alone has %" PRIu32, name, len,
                       hsize);
    if (version >= 3 && hsize < HDR_FIXED_V3)
        return qd_errf(err, errlen, QD_ERR_FORMAT, "%s: header size %" PRIu32
                       " is below %d, which format version 3 needs", name, hsize,
                       HDR_FIXED_V3);
    if (version == 1 && get_u32(d + 40) != QD_POOL_MEAN)
        return qd_errf(err, errlen, QD_ERR_FORMAT,
                       "%s: format version 1 has mean pooling only, the header says %" PRIu32,
                       name, get_u32(d + 40));
    uint32_t endian = get_u32(d + 16);
    if (endian != QD_MODEL_ENDIAN)
        return qd_errf(err, errlen, QD_ERR_FORMAT,
                       "%s: byte order sentinel is 0x%08" PRIX32 ", expected 0x%08X%s", name,
                       endian, QD_MODEL_ENDIAN,
                       endian == 0x0D0C0B0AU ? " (a big-endian file)" : "");
    float fcheck = get_f32(d + 20);
    if (fcheck != QD_MODEL_FLOATCHECK)
        return qd_errf(err, errlen, QD_ERR_FORMAT,
                       "%s: float sentinel is %g, expected %g (not IEEE-754 binary32?)", name,
                       (double)fcheck, (double)QD_MODEL_FLOATCHECK);
    h->emb_dim = get_u32(d + 24);
    h->hidden = get_u32(d + 28);
    h->vocab = get_u32(d + 32);
    h->dirs = get_u32(d + 36);
    h->pool = get_u32(d + 40);
    h->tok.max_tokens = get_u32(d + 44);
    h->tok.ngram_min = get_u32(d + 48);
    h->tok.ngram_max = get_u32(d + 52);
    h->tok.ngram_buckets = get_u32(d + 56);
    char why[QD_ERRMSG_MAX];
    int rc = qd_model_hdr_check(h, why, sizeof why);
    if (rc)
        return qd_errf(err, errlen, rc == QD_ERR_UNSUPPORTED ? rc : QD_ERR_FORMAT, "%s: %s",
                       name, why);
    uint64_t vbytes = get_u64(d + 64), np = get_u64(d + 72);
    size_t want = qd_model_nparams(h);
    if (np != want)
        return qd_errf(err, errlen, QD_ERR_FORMAT,
                       "%s: header says %" PRIu64 " weights, its dimensions need %zu", name, np,
                       want);
    /* Each word takes 2..65 bytes; anything else cannot be a valid vocabulary. */
    uint64_t words = h->vocab - QD_TOK_NRESERVED;
    if (vbytes < 2 * words || vbytes > (uint64_t)(QD_TOK_MAX_BYTES + 1) * words)
        return qd_errf(err, errlen, QD_ERR_FORMAT,
                       "%s: vocabulary section of %" PRIu64 " bytes cannot hold %" PRIu64
                       " words", name, vbytes, words);
    uint64_t sbytes = version >= 3 ? get_u64(d + 80) : 0;
    if (version >= 3 && (sbytes < SCORING_BYTES(0, 0) || sbytes > SCORING_BYTES(
                             QD_HEAD_NFEAT, QD_HEAD_MAX_POINTS) || sbytes % 4))
        return qd_errf(err, errlen, QD_ERR_FORMAT, "%s: scoring section of %" PRIu64
                       " bytes is not a size it can have", name, sbytes);
    uint64_t total = (uint64_t)hsize + vbytes + np * sizeof(float) + sbytes + 4;
    if (len != total)
        return qd_errf(err, errlen, QD_ERR_FORMAT,
                       "%s: %s: the header implies %" PRIu64 " bytes (%zu weights), the file has "
                       "%zu", name, len < total ? "truncated" : "trailing bytes", total, want,
                       len);
    *hdr_size = hsize;
    *vocab_bytes = (size_t)vbytes;
    *nparams = want;
    *scoring_bytes = (size_t)sbytes;
    return 0;
}

/* Reads the scoring section (n bytes at p) into s, checking every field. */
static int parse_scoring(const uint8_t *p, size_t n, const char *name, qd_model_scoring *s,
                         char *err, size_t errlen)
{
    memset(s, 0, sizeof *s);
    s->fitted = 1;
    s->fusion = get_f32(p);
    s->bm25.k1 = get_f32(p + 4);
    s->bm25.b = get_f32(p + 8);
    s->candidates = get_u32(p + 12);
    s->min_p = get_f32(p + 16);
    s->head.features = get_u32(p + 20);
    uint32_t nfeat = get_u32(p + 24);
    if (nfeat > QD_HEAD_NFEAT)
        return qd_errf(err, errlen, QD_ERR_UNSUPPORTED, "%s: the duplicate head reads %" PRIu32
                       " features; this build knows %d", name, nfeat, QD_HEAD_NFEAT);
    if (n < SCORING_BYTES(nfeat, 0))
        return qd_errf(err, errlen, QD_ERR_FORMAT, "%s: scoring section too short", name);
    const uint8_t *q = p + 28;
    for (uint32_t i = 0; i < nfeat; i++, q += 4)
        s->head.w[i] = get_f32(q);
    s->head.bias = get_f32(q);
    s->head.npoints = get_u32(q + 4);
    q += 8;
    if (s->head.npoints > QD_HEAD_MAX_POINTS ||
        n != SCORING_BYTES(nfeat, s->head.npoints))
        return qd_errf(err, errlen, QD_ERR_FORMAT, "%s: scoring section of %zu bytes does not "
                       "hold %" PRIu32 " isotonic points", name, n, s->head.npoints);
    for (uint32_t i = 0; i < s->head.npoints; i++, q += 4)
        s->head.x[i] = get_f32(q);
    for (uint32_t i = 0; i < s->head.npoints; i++, q += 4)
        s->head.y[i] = get_f32(q);
    char why[QD_ERRMSG_MAX];
    if (qd_model_scoring_check(s, why, sizeof why) != 0)
        return qd_errf(err, errlen, QD_ERR_FORMAT, "%s: %s", name, why);
    return 0;
}

/* The fingerprint of a version 3 file: that of the version 1 or 2 file of the same
 * encoder (the header with the older version number and no scoring size, the
 * vocabulary and weights, their CRC-32), computed without building that file. */
static void set_encoder_fingerprint(qd_model *m, const uint8_t *d, size_t hsize, size_t body)
{
    /* The header in five pieces: bytes 8..11 and 80..87 replaced. */
    uint8_t ver[4], zero[8] = {0};
    put_u32(ver, m->hdr.pool == QD_POOL_MEAN ? 1 : 2);
    const uint8_t *piece[5] = {d, ver, d + 12, zero, d + 88};
    size_t plen[5] = {8, 4, 80 - 12, 8, hsize - 88};
    uint32_t crc = 0;
    uint64_t f = QD_HASH64_INIT;
    for (int i = 0; i < 5; i++) {
        crc = qd_crc32(crc, piece[i], plen[i]);
        f = qd_hash64(f, piece[i], plen[i]);
    }
    crc = qd_crc32(crc, d + hsize, body);
    f = qd_hash64(f, d + hsize, body);
    uint8_t c[4];
    put_u32(c, crc);
    f = qd_hash64(f, c, 4);
    snprintf(m->fingerprint, sizeof m->fingerprint, "%016" PRIx64, f);
}

int qd_model_load_mem(const void *data, size_t len, const char *name, qd_model **out,
                      char *err, size_t errlen)
{
    *out = NULL;
    const uint8_t *d = data;
    qd_model_hdr h;
    memset(&h, 0, sizeof h);
    size_t hsize = 0, vbytes = 0, np = 0, sbytes = 0;
    int rc = parse_header(d, len, name, &h, &hsize, &vbytes, &np, &sbytes, err, errlen);
    if (rc)
        return rc;
    uint32_t stored = get_u32(d + len - 4), computed = qd_crc32(0, d, len - 4);
    if (stored != computed)
        return qd_errf(err, errlen, QD_ERR_CHECKSUM,
                       "%s: corrupted: CRC-32 is %08" PRIx32 ", the trailer says %08" PRIx32,
                       name, computed, stored);

    qd_vocab *v = qd_vocab_new();
    if (!v)
        return qd_errf(err, errlen, QD_ERR_NOMEM, "%s: out of memory", name);
    const uint8_t *p = d + hsize, *end = p + vbytes;
    for (uint32_t id = QD_TOK_NRESERVED; id < h.vocab; id++) {
        size_t n = p < end ? *p : 0;
        if (p >= end || n == 0 || n > QD_TOK_MAX_BYTES || (size_t)(end - p - 1) < n) {
            qd_vocab_free(v);
            return qd_errf(err, errlen, QD_ERR_FORMAT,
                           "%s: vocabulary entry %" PRIu32 " is malformed", name, id);
        }
        int32_t got = qd_vocab_add(v, (const char *)p + 1, n);
        if (got != (int32_t)id) {
            qd_vocab_free(v);
            if (got < 0)
                return qd_errf(err, errlen, got, "%s: reading vocabulary: %s", name,
                               qd_strerror(got));
            return qd_errf(err, errlen, QD_ERR_FORMAT,
                           "%s: vocabulary entry %" PRIu32 " repeats entry %" PRId32, name, id,
                           got);
        }
        p += 1 + n;
    }
    if (p != end) {
        qd_vocab_free(v);
        return qd_errf(err, errlen, QD_ERR_FORMAT,
                       "%s: vocabulary section has %zu bytes left over", name,
                       (size_t)(end - p));
    }

    qd_model *m;
    rc = qd_model_new(&h, v, &m, err, errlen);
    if (rc)
        return rc;
    for (size_t i = 0; i < np; i++) {
        float w = get_f32(end + 4 * i);
        if (!isfinite(w)) {
            qd_model_free(m);
            return qd_errf(err, errlen, QD_ERR_FORMAT, "%s: weight %zu is not finite", name, i);
        }
        m->param_data[i] = w;
    }
    if (sbytes) {
        rc = parse_scoring(end + 4 * np, sbytes, name, &m->scoring, err, errlen);
        if (rc) {
            qd_model_free(m);
            return rc;
        }
        set_encoder_fingerprint(m, d, hsize, vbytes + 4 * np);
    } else {
        set_fingerprint(m, d, len);
    }
    /* A loaded model is read-only, so its words' mean embeddings can be kept. Without
     * memory for them, encoding reads every row, as it would anyway. */
    m->wmean = qd_wordmean_new(h.vocab, h.emb_dim, 4 * (size_t)h.hidden);
    *out = m;
    return 0;
}

int qd_model_load(const char *path, qd_model **out, char *err, size_t errlen)
{
    char *data;
    size_t len;
    *out = NULL;
    int rc = qd_file_read(path, MODEL_MAX_BYTES, &data, &len, err, errlen);
    if (rc)
        return rc;
    rc = qd_model_load_mem(data, len, path, out, err, errlen);
    qd_free(data);
    return rc;
}

/* --- saving -------------------------------------------------------------------------- */

int qd_model_serialize(const qd_model *m, uint8_t **data, size_t *len)
{
    *data = NULL;
    *len = 0;
    size_t vbytes = 0;
    for (uint32_t id = QD_TOK_NRESERVED; id < m->hdr.vocab; id++) {
        size_t n;
        qd_vocab_word(m->vocab, (int32_t)id, &n);
        vbytes += 1 + n;
    }
    const qd_model_scoring *sc = &m->scoring;
    size_t sbytes = sc->fitted ? SCORING_BYTES(QD_HEAD_NFEAT, sc->head.npoints) : 0;
    size_t total = QD_MODEL_HEADER_SIZE + vbytes + m->nparams * sizeof(float) + sbytes + 4;
    uint8_t *d = qd_calloc(1, total);
    if (!d)
        return QD_ERR_NOMEM;
    memcpy(d, QD_MODEL_MAGIC, 8);
    /* A course model is written as version 1, which every qdup reads; version 3 only
     * when there is a scoring section. */
    put_u32(d + 8, sbytes ? 3 : m->hdr.pool == QD_POOL_MEAN ? 1 : 2);
    put_u32(d + 12, QD_MODEL_HEADER_SIZE);
    put_u32(d + 16, QD_MODEL_ENDIAN);
    put_f32(d + 20, QD_MODEL_FLOATCHECK);
    put_u32(d + 24, m->hdr.emb_dim);
    put_u32(d + 28, m->hdr.hidden);
    put_u32(d + 32, m->hdr.vocab);
    put_u32(d + 36, m->hdr.dirs);
    put_u32(d + 40, m->hdr.pool);
    put_u32(d + 44, m->hdr.tok.max_tokens);
    put_u32(d + 48, m->hdr.tok.ngram_min);
    put_u32(d + 52, m->hdr.tok.ngram_max);
    put_u32(d + 56, m->hdr.tok.ngram_buckets);
    put_u64(d + 64, vbytes);
    put_u64(d + 72, m->nparams);
    if (sbytes)
        put_u64(d + 80, sbytes);
    uint8_t *p = d + QD_MODEL_HEADER_SIZE;
    for (uint32_t id = QD_TOK_NRESERVED; id < m->hdr.vocab; id++) {
        size_t n;
        const char *w = qd_vocab_word(m->vocab, (int32_t)id, &n);
        *p++ = (uint8_t)n;
        memcpy(p, w, n);
        p += n;
    }
    for (size_t i = 0; i < m->nparams; i++, p += 4)
        put_f32(p, m->param_data[i]);
    if (sbytes) {
        put_f32(p, sc->fusion);
        put_f32(p + 4, sc->bm25.k1);
        put_f32(p + 8, sc->bm25.b);
        put_u32(p + 12, sc->candidates);
        put_f32(p + 16, sc->min_p);
        put_u32(p + 20, sc->head.features);
        put_u32(p + 24, QD_HEAD_NFEAT);
        p += 28;
        for (int i = 0; i < QD_HEAD_NFEAT; i++, p += 4)
            put_f32(p, sc->head.w[i]);
        put_f32(p, sc->head.bias);
        put_u32(p + 4, sc->head.npoints);
        p += 8;
        for (uint32_t i = 0; i < sc->head.npoints; i++, p += 4)
            put_f32(p, sc->head.x[i]);
        for (uint32_t i = 0; i < sc->head.npoints; i++, p += 4)
            put_f32(p, sc->head.y[i]);
    }
    put_u32(p, qd_crc32(0, d, total - 4));
    *data = d;
    *len = total;
    return 0;
}

int qd_model_save(qd_model *m, const char *path, char *err, size_t errlen)
{
    uint8_t *data;
    size_t len;
    int rc = qd_model_serialize(m, &data, &len);
    if (rc)
        return qd_errf(err, errlen, rc, "%s: %s", path, qd_strerror(rc));
    rc = qd_file_write_atomic(path, data, len, err, errlen);
    if (rc == 0 && m->scoring.fitted)
        set_encoder_fingerprint(m, data, QD_MODEL_HEADER_SIZE, len - QD_MODEL_HEADER_SIZE -
                                4 - SCORING_BYTES(QD_HEAD_NFEAT, m->scoring.head.npoints));
    else if (rc == 0)
        set_fingerprint(m, data, len);
    qd_free(data);
    return rc;
}

/* --- accessors ----------------------------------------------------------------------- */

const qd_model_hdr *qd_model_header(const qd_model *m) { return &m->hdr; }
const qd_vocab *qd_model_vocab(const qd_model *m) { return m->vocab; }
const qd_params *qd_model_cparams(const qd_model *m) { return &m->p; }
const char *qd_model_fingerprint(const qd_model *m) { return m->fingerprint; }
const qd_model_scoring *qd_model_get_scoring(const qd_model *m) { return &m->scoring; }

/* --- scoring ----------------------------------------------------------------------- */

void qd_model_scoring_default(qd_model_scoring *s)
{
    memset(s, 0, sizeof *s);
    s->fusion = 0.6f;
    s->bm25.k1 = 0.9f;
    s->bm25.b = 0.4f;
    s->candidates = 50;
    /* Platt scaling of the cosine, fitted on the shared valid.tsv with the shared
     * default model (qdup-train's fit there chose these); its operating point. */
    s->head.features = 1;
    s->head.w[QD_HEAD_COSINE] = QD_MODEL_DEFAULT_PLATT_W;
    s->head.bias = QD_MODEL_DEFAULT_PLATT_B;
    s->min_p = QD_MODEL_DEFAULT_MIN_P;
}

int qd_model_scoring_check(const qd_model_scoring *s, char *err, size_t errlen)
{
    if (!(s->fusion >= 0 && s->fusion <= 1))
        return qd_errf(err, errlen, QD_ERR_FORMAT, "fusion weight %g is outside 0..1",
                       (double)s->fusion);
    if (!(s->bm25.k1 >= 0 && s->bm25.k1 <= 100))
        return qd_errf(err, errlen, QD_ERR_FORMAT, "BM25 k1 %g is outside 0..100",
                       (double)s->bm25.k1);
    if (!(s->bm25.b >= 0 && s->bm25.b <= 1))
        return qd_errf(err, errlen, QD_ERR_FORMAT, "BM25 b %g is outside 0..1",
                       (double)s->bm25.b);
    if (s->candidates < 1 || s->candidates > QD_MODEL_MAX_CANDIDATES)
        return qd_errf(err, errlen, QD_ERR_FORMAT, "%" PRIu32 " candidates, outside 1..%d",
                       s->candidates, QD_MODEL_MAX_CANDIDATES);
    if (!(s->min_p >= 0 && s->min_p <= 1))
        return qd_errf(err, errlen, QD_ERR_FORMAT, "operating point min_p %g is outside 0..1",
                       (double)s->min_p);
    return qd_head_check(&s->head, err, errlen);
}

int qd_model_set_scoring(qd_model *m, const qd_model_scoring *s, char *err, size_t errlen)
{
    int rc = qd_model_scoring_check(s, err, errlen);
    if (rc)
        return rc;
    m->scoring = *s;
    m->scoring.fitted = 1;
    return 0;
}
int qd_model_dim(const qd_model *m) { return (int)qd_model_out_dim(&m->hdr); }

size_t qd_model_out_dim(const qd_model_hdr *h)
{
    size_t d = h->hidden;
    if (h->pool & QD_POOL_MAX)
        d += h->hidden;
    if (h->pool & QD_POOL_EMB)
        d += h->emb_dim;
    return d;
}

float *qd_model_param_data(qd_model *m, size_t *n)
{
    /* The caller may change the weights: means cached from the old ones would be
     * wrong. */
    qd_wordmean_free(m->wmean);
    m->wmean = NULL;
    if (n)
        *n = m->nparams;
    return m->param_data;
}
