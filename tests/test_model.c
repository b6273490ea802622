/*
 * test_model.c - model files: round trips, fingerprints, and every way a file can be
 * wrong (truncated anywhere, a flipped byte, wrong magic, newer version, the other byte
 * order, sizes that lie), each refused with a message naming the problem.
 */
#include <stdlib.h>
#include <string.h>

#include "../encoder/model_impl.h"
#include "qdup/common.h"
#include "qdup/fileio.h"
#include "qdup/model.h"
#include "testutil.h"

static char err[QD_ERRMSG_MAX];

static uint8_t *fixture(size_t *len)
{
    return (uint8_t *)qt_read_file(qt_path(qt_fixtures_dir(), "fwd_plain.qdm"), len);
}

/* Re-seals a modified file with a correct CRC, so only the intended defect remains. */
static void reseal(uint8_t *d, size_t len)
{
    uint32_t crc = qd_crc32(0, d, len - 4);
    memcpy(d + len - 4, &crc, 4); /* tests run on little-endian machines */
}

static void put32(uint8_t *p, uint32_t v)
{
    memcpy(p, &v, 4);
}

static int load(const uint8_t *d, size_t len, qd_model **m)
{
    err[0] = '\0';
    return qd_model_load_mem(d, len, "test.qdm", m, err, sizeof err);
}

static void expect_refusal(const uint8_t *d, size_t len, int rc, const char *words)
{
    qd_model *m = (qd_model *)0x1;
    int got = load(d, len, &m);
    if (got != rc || !strstr(err, words) || !strstr(err, "test.qdm"))
        fail_msg("expected %d mentioning \"%s\", got %d: \"%s\"", rc, words, got, err);
    assert_null(m);
}

static void test_fixture_loads(void **state)
{
    (void)state;
    qd_model *m;
    assert_int_equal(qd_model_load(qt_path(qt_fixtures_dir(), "fwd_plain.qdm"), &m, err,
                                   sizeof err),
                     0);
    const qd_model_hdr *h = qd_model_header(m);
    assert_int_equal(h->emb_dim, 16);
    assert_int_equal(h->hidden, 12);
    assert_int_equal(h->vocab, 40);
    assert_int_equal(qd_model_dim(m), 12);
    assert_int_equal(strlen(qd_model_fingerprint(m)), 16);
    size_t n;
    const char *w = qd_vocab_word(qd_model_vocab(m), 2, &n);
    assert_non_null(w);
    assert_string_equal(w, "w2");
    assert_int_equal(qd_vocab_find(qd_model_vocab(m), "w39", 3), 39);
    qd_model_free(m);
    qd_model_free(NULL);
}

static void test_roundtrip_is_byte_exact(void **state)
{
    (void)state;
    size_t len;
    uint8_t *d = fixture(&len);
    qd_model *m;
    assert_int_equal(load(d, len, &m), 0);
    uint8_t *d2;
    size_t len2;
    assert_int_equal(qd_model_serialize(m, &d2, &len2), 0);
    assert_int_equal(len2, len);
    assert_memory_equal(d, d2, len);

    /* Saving writes the same bytes and gives the same fingerprint as loading them. */
    const char *path = qt_path(qt_tmp_dir(), "copy.qdm");
    char fp[17];
    strcpy(fp, qd_model_fingerprint(m));
    assert_int_equal(qd_model_save(m, path, err, sizeof err), 0);
    assert_string_equal(qd_model_fingerprint(m), fp);
    qd_model *m2;
    assert_int_equal(qd_model_load(path, &m2, err, sizeof err), 0);
    assert_string_equal(qd_model_fingerprint(m2), fp);

    /* A changed weight changes the fingerprint. */
    size_t np;
    qd_model_param_data(m2, &np)[np - 1] += 1.0f;
    assert_int_equal(qd_model_save(m2, path, err, sizeof err), 0);
    assert_string_not_equal(qd_model_fingerprint(m2), fp);
    qd_model_free(m2);
    qd_model_free(m);
    qd_free(d2);
    free(d);
}

static void test_truncated_anywhere(void **state)
{
    (void)state;
    size_t len;
    uint8_t *d = fixture(&len);
    /* Every prefix is refused, and the message says what is missing. */
    for (size_t cut = 0; cut < len; cut++) {
        /* An exactly sized copy, so that ASan sees any read past the end. */
        uint8_t *c = malloc(cut ? cut : 1);
        memcpy(c, d, cut);
        qd_model *m = (qd_model *)0x1;
        int rc = load(c, cut, &m);
        assert_int_not_equal(rc, 0);
        assert_null(m);
        if (cut >= 8 && !strstr(err, "truncated"))
            fail_msg("cut at %zu: message does not say truncated: %s", cut, err);
        free(c);
    }
    /* Trailing garbage is refused too. */
    uint8_t *longer = malloc(len + 3);
    memcpy(longer, d, len);
    memset(longer + len, 0, 3);
    expect_refusal(longer, len + 3, QD_ERR_FORMAT, "trailing bytes");
    free(longer);
    free(d);
}

static void test_flipped_bytes(void **state)
{
    (void)state;
    size_t len;
    uint8_t *d = fixture(&len);
    /* A flipped bit anywhere is caught: by a header check or by the checksum. */
    for (size_t at = 0; at < len; at += 7) {
        d[at] ^= 0x10;
        qd_model *m = (qd_model *)0x1;
        int rc = load(d, len, &m);
        if (rc == 0)
            fail_msg("flipped byte %zu accepted", at);
        assert_null(m);
        d[at] ^= 0x10;
    }
    d[QD_MODEL_HEADER_SIZE + 40] ^= 0x01; /* inside the vocabulary */
    expect_refusal(d, len, QD_ERR_CHECKSUM, "corrupted");
    d[QD_MODEL_HEADER_SIZE + 40] ^= 0x01;
    d[len - 100] ^= 0x80; /* inside the weights */
    expect_refusal(d, len, QD_ERR_CHECKSUM, "CRC-32");
    free(d);
}

static void test_header_defects(void **state)
{
    (void)state;
    size_t len;
    uint8_t *d = fixture(&len);
    uint8_t *c = malloc(len);

    memcpy(c, d, len);
    memcpy(c, "GGUF\0\0\0\0", 8);
    expect_refusal(c, len, QD_ERR_FORMAT, "bad magic");

    memcpy(c, d, len);
    put32(c + 8, QD_MODEL_VERSION + 1);
    reseal(c, len);
    expect_refusal(c, len, QD_ERR_VERSION, "newer");

    /* The other byte order: every field byte-swapped, as a big-endian writer would. */
    memcpy(c, d, len);
    for (size_t off = 8; off < 64; off += 4) {
        uint8_t t0 = c[off], t1 = c[off + 1];
        c[off] = c[off + 3];
        c[off + 1] = c[off + 2];
        c[off + 2] = t1;
        c[off + 3] = t0;
    }
    reseal(c, len);
    expect_refusal(c, len, QD_ERR_FORMAT, "big-endian");

    memcpy(c, d, len);
    float f = 1.0f;
    memcpy(c + 20, &f, 4);
    reseal(c, len);
    expect_refusal(c, len, QD_ERR_FORMAT, "float sentinel");

    /* Sizes that lie are refused before anything is allocated for them. */
    memcpy(c, d, len);
    put32(c + 32, 2000000000U); /* vocabulary of two billion words */
    reseal(c, len);
    expect_refusal(c, len, QD_ERR_FORMAT, "vocabulary size");

    memcpy(c, d, len);
    put32(c + 28, 13); /* hidden size that does not match the weights */
    reseal(c, len);
    expect_refusal(c, len, QD_ERR_FORMAT, "weights");

    memcpy(c, d, len);
    put32(c + 24, 0);
    reseal(c, len);
    expect_refusal(c, len, QD_ERR_FORMAT, "embedding width");

    memcpy(c, d, len);
    put32(c + 36, 3);
    reseal(c, len);
    expect_refusal(c, len, QD_ERR_UNSUPPORTED, "directions");

    /* A vocabulary entry repeating an earlier one. */
    memcpy(c, d, len);
    uint8_t *v = c + QD_MODEL_HEADER_SIZE;
    assert_int_equal(v[0], 2); /* "w2" */
    assert_int_equal(v[3], 2); /* "w3" */
    v[5] = '2';
    reseal(c, len);
    expect_refusal(c, len, QD_ERR_FORMAT, "repeats");

    /* A NaN weight. */
    memcpy(c, d, len);
    uint32_t nan = 0x7FC00000U;
    memcpy(c + len - 8, &nan, 4);
    reseal(c, len);
    expect_refusal(c, len, QD_ERR_FORMAT, "not finite");

    free(c);
    free(d);
}

static void test_missing_file_named(void **state)
{
    (void)state;
    qd_model *m;
    const char *path = qt_path(qt_tmp_dir(), "absent.qdm");
    assert_int_equal(qd_model_load(path, &m, err, sizeof err), QD_ERR_NOTFOUND);
    assert_non_null(strstr(err, "absent.qdm"));
}

static void test_load_survives_allocation_failures(void **state)
{
    (void)state;
    size_t len;
    uint8_t *d = fixture(&len);
    /* Fail each allocation in turn: every failure is reported, none leaks (ASan). */
    for (long n = 0;; n++) {
        qd_alloc_fail_after(n, 0);
        qd_model *m = NULL;
        int rc = load(d, len, &m);
        qd_alloc_fail_after(-1, 0);
        if (rc == 0) {
            assert_true(n > 2);
            qd_model_free(m);
            break;
        }
        assert_int_equal(rc, QD_ERR_NOMEM);
        assert_null(m);
    }
    free(d);
}

/* Version 3: a model with fitted scoring round-trips it exactly, keeps its encoder's
 * fingerprint, and version 1 and 2 files load with the default scoring. */
static void test_scoring_version3(void **state)
{
    (void)state;
    const char *names[2] = {"fwd_plain.qdm", "fwd_pool.qdm"};
    for (int f = 0; f < 2; f++) {
        size_t len;
        uint8_t *d = (uint8_t *)qt_read_file(qt_path(qt_fixtures_dir(), names[f]), &len);
        qd_model *m;
        assert_int_equal(load(d, len, &m), 0);
        uint32_t old_version;
        memcpy(&old_version, d + 8, 4);
        assert_true(old_version == 1 || old_version == 2);
        /* No scoring in the file: the defaults, not fitted. */
        const qd_model_scoring *sc = qd_model_get_scoring(m);
        qd_model_scoring def;
        qd_model_scoring_default(&def);
        assert_int_equal(sc->fitted, 0);
        assert_memory_equal(sc, &def, sizeof def);
        char fp[17];
        strcpy(fp, qd_model_fingerprint(m));

        qd_model_scoring s = def;
        s.fusion = 0.35f;
        s.bm25.k1 = 1.1f;
        s.bm25.b = 0.65f;
        s.candidates = 123;
        s.min_p = 0.42f;
        s.head.features = 0x5;
        s.head.w[0] = 7.5f;
        s.head.w[2] = 1.25f;
        s.head.bias = -4.0f;
        s.head.npoints = 3;
        float xs[3] = {0.1f, 0.5f, 0.9f}, ys[3] = {0.05f, 0.4f, 0.95f};
        memcpy(s.head.x, xs, sizeof xs);
        memcpy(s.head.y, ys, sizeof ys);
        assert_int_equal(qd_model_set_scoring(m, &s, err, sizeof err), 0);
        uint8_t *d3;
        size_t len3;
        assert_int_equal(qd_model_serialize(m, &d3, &len3), 0);
        uint32_t v3;
        memcpy(&v3, d3 + 8, 4);
        assert_int_equal(v3, 3);
        qd_model *m3;
        assert_int_equal(load(d3, len3, &m3), 0);
        const qd_model_scoring *got = qd_model_get_scoring(m3);
        assert_int_equal(got->fitted, 1);
        s.fitted = 1;
        assert_memory_equal(got, &s, sizeof s);
        /* Same encoder, same fingerprint, whatever the scoring. */
        assert_string_equal(qd_model_fingerprint(m3), fp);
        const char *path = qt_path(qt_tmp_dir(), "v3.qdm");
        assert_int_equal(qd_model_save(m3, path, err, sizeof err), 0);
        assert_string_equal(qd_model_fingerprint(m3), fp);
        /* Byte-exact round trip of the version 3 file. */
        uint8_t *d4;
        size_t len4;
        assert_int_equal(qd_model_serialize(m3, &d4, &len4), 0);
        assert_int_equal(len4, len3);
        assert_memory_equal(d3, d4, len3);

        /* A bad value in the scoring section is refused by name. */
        size_t at = len3 - 4 - (4 * (9 + QD_HEAD_NFEAT + 2 * 3)); /* the section's start */
        float bad = 1.5f;
        memcpy(d4 + at, &bad, 4); /* fusion */
        reseal(d4, len4);
        expect_refusal(d4, len4, QD_ERR_FORMAT, "fusion");
        memcpy(d4, d3, len3);
        put32(d4 + at + 12, 0); /* candidates */
        reseal(d4, len4);
        expect_refusal(d4, len4, QD_ERR_FORMAT, "candidates");
        memcpy(d4, d3, len3);
        put32(d4 + at + 20, 0x2); /* a head without the cosine */
        reseal(d4, len4);
        expect_refusal(d4, len4, QD_ERR_FORMAT, "cosine");
        memcpy(d4, d3, len3);
        put32(d4 + 80, 4 * (9 + QD_HEAD_NFEAT + 2 * 2)); /* section size lies */
        reseal(d4, len4);
        expect_refusal(d4, len4, QD_ERR_FORMAT, "");
        /* Every prefix of a version 3 file is refused too. */
        for (size_t cut = len3 - 80; cut < len3; cut++) {
            uint8_t *c = malloc(cut);
            memcpy(c, d3, cut);
            qd_model *x = (qd_model *)0x1;
            assert_int_not_equal(load(c, cut, &x), 0);
            assert_null(x);
            free(c);
        }
        /* An invalid scoring is refused by set_scoring, the model unchanged. */
        s.bm25.b = 2;
        assert_int_equal(qd_model_set_scoring(m3, &s, err, sizeof err), QD_ERR_FORMAT);
        assert_non_null(strstr(err, "b 2"));
        qt_assert_near(qd_model_get_scoring(m3)->bm25.b, 0.65, 1e-6);
        qd_model_free(m3);
        qd_model_free(m);
        qd_free(d3);
        qd_free(d4);
        free(d);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fixture_loads),
        cmocka_unit_test(test_roundtrip_is_byte_exact),
        cmocka_unit_test(test_scoring_version3),
        cmocka_unit_test(test_truncated_anywhere),
        cmocka_unit_test(test_flipped_bytes),
        cmocka_unit_test(test_header_defects),
        cmocka_unit_test(test_missing_file_named),
        cmocka_unit_test(test_load_survives_allocation_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
