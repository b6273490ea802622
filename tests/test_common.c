/*
 * test_common.c - error text, allocation fault injection, files and checksums.
 */
#include <errno.h>
#include <string.h>
#include <time.h>

#include "qdup/common.h"
#include "qdup/fileio.h"
#include "testutil.h"

static void test_strerror_names_every_code(void **state)
{
    (void)state;
    for (int rc = QD_ERR_UNAVAILABLE; rc <= 0; rc++)
        assert_string_not_equal(qd_strerror(rc), "unknown error");
    assert_string_equal(qd_strerror(-999), "unknown error");
}

static void test_alloc_injection(void **state)
{
    (void)state;
    qd_alloc_fail_after(2, 0);
    void *a = qd_malloc(8), *b = qd_malloc(8), *c = qd_malloc(8), *d = qd_malloc(8);
    assert_non_null(a);
    assert_non_null(b);
    assert_null(c);
    assert_non_null(d); /* not sticky: only one failure */
    qd_free(a);
    qd_free(b);
    qd_free(d);
    assert_null(qd_mallocarray(SIZE_MAX / 2, 4)); /* overflow is a failure, not a wrap */
}

static void test_crc32_known_values(void **state)
{
    (void)state;
    /* The standard check value of CRC-32/ISO-HDLC. */
    assert_int_equal(qd_crc32(0, "123456789", 9), 0xCBF43926U);
    assert_int_equal(qd_crc32(0, "", 0), 0);
    /* Continuation over any split gives the same result as one call. */
    const char *s = "The quick brown fox jumps over the lazy dog";
    uint32_t whole = qd_crc32(0, s, strlen(s));
    assert_int_equal(whole, 0x414FA339U);
    for (size_t cut = 0; cut <= strlen(s); cut++)
        assert_int_equal(qd_crc32(qd_crc32(0, s, cut), s + cut, strlen(s) - cut), whole);
}

static void test_hash64_known_values(void **state)
{
    (void)state;
    assert_true(qd_hash64(QD_HASH64_INIT, "", 0) == 0xcbf29ce484222325ULL);
    assert_true(qd_hash64(QD_HASH64_INIT, "a", 1) == 0xaf63dc4c8601ec8cULL);
}

/* Decodes all of s (n bytes) into cps/lens; returns the number of sequences. */
static size_t decode_all(const char *s, size_t n, int32_t *cps, size_t *lens)
{
    size_t k = 0;
    for (size_t i = 0; i < n; k++) {
        lens[k] = qd_utf8_decode((const unsigned char *)s + i, n - i, &cps[k]);
        assert_true(lens[k] >= 1 && lens[k] <= n - i);
        i += lens[k];
    }
    return k;
}

static void test_utf8_decode(void **state)
{
    (void)state;
    int32_t cp[16];
    size_t len[16];
    /* Well-formed: one to four bytes, the last scalar value. */
    assert_int_equal(decode_all("a\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80\xF4\x8F\xBF\xBF", 14, cp, len), 5);
    int32_t want[] = {'a', 0xE9, 0x20AC, 0x1F600, 0x10FFFF};
    size_t wlen[] = {1, 2, 3, 4, 4};
    for (int i = 0; i < 5; i++) {
        assert_int_equal(cp[i], want[i]);
        assert_int_equal(len[i], wlen[i]);
    }
    /* A truncated sequence is one maximal subpart, also at the end of the input. */
    assert_int_equal(decode_all("\xE2\x82" "b", 3, cp, len), 2);
    assert_int_equal(cp[0], -1);
    assert_int_equal(len[0], 2);
    assert_int_equal(cp[1], 'b');
    assert_int_equal(decode_all("\xF0\x9F\x98", 3, cp, len), 1);
    assert_int_equal(len[0], 3);
    /* Overlong, surrogate, past U+10FFFF, stray continuation, F5..FF: one per byte. */
    const char *bad[] = {"\xC0\xAF", "\xED\xA0\x80", "\xF4\x90\x80\x80", "\x80\xBF", "\xF5\xFF"};
    size_t nbad[] = {2, 3, 4, 2, 2};
    for (int i = 0; i < 5; i++) {
        assert_int_equal(decode_all(bad[i], nbad[i], cp, len), nbad[i]);
        for (size_t j = 0; j < nbad[i]; j++)
            assert_int_equal(cp[j], -1);
    }
    /* NUL is a code point like any other. */
    assert_int_equal(decode_all("\0", 1, cp, len), 1);
    assert_int_equal(cp[0], 0);
}

static void test_atomic_write_and_read(void **state)
{
    (void)state;
    char err[QD_ERRMSG_MAX];
    const char *path = qt_path(qt_tmp_dir(), "atomic.bin");
    assert_int_equal(qd_file_write_atomic(path, "hello", 5, err, sizeof err), 0);
    assert_int_equal(qd_file_write_atomic(path, "bye", 3, err, sizeof err), 0);
    char *data;
    size_t len;
    assert_int_equal(qd_file_read(path, 100, &data, &len, err, sizeof err), 0);
    assert_int_equal(len, 3);
    assert_memory_equal(data, "bye", 3);
    qd_free(data);
    /* Limits and missing files are reported with the path. */
    assert_int_equal(qd_file_read(path, 2, &data, &len, err, sizeof err), QD_ERR_RANGE);
    assert_non_null(strstr(err, "atomic.bin"));
    assert_int_equal(qd_file_read(qt_path(qt_tmp_dir(), "nope"), 100, &data, &len, err,
                                  sizeof err),
                     QD_ERR_NOTFOUND);
    assert_non_null(strstr(err, "nope"));
    /* A directory that does not exist: an error, not a crash. */
    assert_int_equal(qd_file_write_atomic(qt_path(qt_tmp_dir(), "no/such/dir"), "x", 1, err,
                                          sizeof err),
                     QD_ERR_IO);
    /* The machine's faults are "unavailable" (retry later), the rest plain I/O errors. */
    assert_int_equal(qd_err_from_errno(ENOSPC), QD_ERR_UNAVAILABLE);
    assert_int_equal(qd_err_from_errno(EROFS), QD_ERR_UNAVAILABLE);
    assert_int_equal(qd_err_from_errno(EIO), QD_ERR_UNAVAILABLE);
    assert_int_equal(qd_err_from_errno(EACCES), QD_ERR_IO);
}

static void test_parse_size(void **state)
{
    (void)state;
    static const struct {
        const char *s; /* input */
        size_t lo, hi; /* range */
        int ok;        /* accepted */
        size_t want;   /* value when accepted */
    } cases[] = {
        {"0", 0, 10, 1, 0},
        {"10", 0, 10, 1, 10},
        {"11", 0, 10, 0, 0},
        {"0", 1, 10, 0, 0},
        {"16K", 0, SIZE_MAX, 1, 16384},
        {"16k", 0, SIZE_MAX, 1, 16384},
        {"3M", 0, SIZE_MAX, 1, 3u << 20},
        {"2g", 0, SIZE_MAX, 1, 2ull << 30},
        {"1K", 0, 1023, 0, 0},
        {"", 0, 10, 0, 0},
        {"-1", 0, SIZE_MAX, 0, 0},
        {"+1", 0, 10, 0, 0},
        {" 1", 0, 10, 0, 0},
        {"1 ", 0, 10, 0, 0},
        {"1KB", 0, SIZE_MAX, 0, 0},
        {"K", 0, SIZE_MAX, 0, 0},
        {"0x10", 0, SIZE_MAX, 0, 0},
        {"18446744073709551616", 0, SIZE_MAX, 0, 0}, /* 2^64 */
        {"18014398509481984K", 0, SIZE_MAX, 0, 0},   /* 2^54 K = 2^64 */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t v = 12345;
        int rc = qd_parse_size(cases[i].s, cases[i].lo, cases[i].hi, &v);
        if (cases[i].ok) {
            assert_int_equal(rc, 0);
            assert_int_equal(v, cases[i].want);
        } else {
            assert_int_equal(rc, QD_ERR_INVAL);
            assert_int_equal(v, 12345); /* untouched */
        }
    }
    assert_int_equal(qd_parse_size(NULL, 0, 10, &(size_t){0}), QD_ERR_INVAL);
}

static void test_wall_now_is_unix_time(void **state)
{
    (void)state;
    /* time() reads the coarse clock, which may lag the precise one by a tick; compare
     * with the precise clock itself. */
    struct timespec a, b;
    clock_gettime(CLOCK_REALTIME, &a);
    double t = qd_wall_now();
    clock_gettime(CLOCK_REALTIME, &b);
    double before = (double)a.tv_sec + a.tv_nsec * 1e-9, after = (double)b.tv_sec + b.tv_nsec * 1e-9;
    assert_true(t >= before - 1e-6 && t <= after + 1e-6);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_strerror_names_every_code),
        cmocka_unit_test(test_alloc_injection),
        cmocka_unit_test(test_crc32_known_values),
        cmocka_unit_test(test_hash64_known_values),
        cmocka_unit_test(test_atomic_write_and_read),
        cmocka_unit_test(test_utf8_decode),
        cmocka_unit_test(test_parse_size),
        cmocka_unit_test(test_wall_now_is_unix_time),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
