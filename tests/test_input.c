/*
 * test_input.c - the id and text rules (input.h): each rule on its own, the order in
 * which they are reported, and UTF-8 validity against an independent oracle (the
 * table of well-formed byte sequences of Unicode 15, section 3.9, table 3-7).
 */
#include <stdio.h>
#include <string.h>

#include "qdup/common.h"
#include "qdup/input.h"
#include "testutil.h"

/* One case: the value, the limit, what is expected (0, or the code and the exact
 * message). */
typedef struct input_case {
    const char *s;   /* the value (may hold NULs: n gives its length) */
    size_t n;        /* its length */
    size_t max;      /* the limit */
    int rc;          /* expected result */
    const char *msg; /* expected message when rc != 0 */
} input_case;

#define C(lit, max, rc, msg) {lit, sizeof lit - 1, max, rc, msg}

static void run_cases(const input_case *cases, size_t n,
                      int (*check)(const char *, size_t, size_t, char *, size_t))
{
    for (size_t i = 0; i < n; i++) {
        char err[QD_ERRMSG_MAX] = "";
        int rc = check(cases[i].s, cases[i].n, cases[i].max, err, sizeof err);
        if (rc != cases[i].rc)
            fail_msg("case %zu: rc %d, expected %d (%s)", i, rc, cases[i].rc, err);
        if (rc)
            assert_string_equal(err, cases[i].msg);
    }
}

static void test_id_rules(void **state)
{
    (void)state;
    static const input_case cases[] = {
        C("q1", 256, 0, NULL),
        C("\xc3\xa9t\xc3\xa9", 8, 0, NULL),          /* "été": 5 bytes */
        C("abcd", 4, 0, NULL),                       /* exactly at the limit */
        C("with space", 256, 0, NULL),               /* spaces are fine in an id */
        C("\xc2\x85", 256, 0, NULL),                 /* C1 controls are not refused */
        C("", 256, QD_ERR_INVAL, "empty id"),
        C("abcde", 4, QD_ERR_RANGE, "id of 5 bytes is over the limit of 4"),
        C("a\0b", 256, QD_ERR_INVAL, "NUL byte in the id"),
        C("9\xff", 256, QD_ERR_INVAL, "id is not valid UTF-8 (byte 2)"),
        C("ab\xc0\xaf", 256, QD_ERR_INVAL, "id is not valid UTF-8 (byte 3)"), /* overlong */
        C("a\nb", 256, QD_ERR_INVAL, "control character in the id (byte 2)"),
        C("ab\x7f", 256, QD_ERR_INVAL, "control character in the id (byte 3)"),
        C("\t", 256, QD_ERR_INVAL, "control character in the id (byte 1)"),
        /* Several rules broken: the earlier in the order is the one reported. */
        C("a\0\xff\n", 2, QD_ERR_RANGE, "id of 4 bytes is over the limit of 2"),
        C("\n\xff", 256, QD_ERR_INVAL, "id is not valid UTF-8 (byte 2)"),
        C("\n\0", 256, QD_ERR_INVAL, "NUL byte in the id"),
    };
    run_cases(cases, sizeof cases / sizeof cases[0], qd_input_check_id);
    char err[64];
    assert_int_equal(qd_input_check_id(NULL, 0, 10, err, sizeof err), QD_ERR_INVAL);
    assert_string_equal(err, "empty id");
    /* err may be NULL: only the code comes back. */
    assert_int_equal(qd_input_check_id("a\n", 2, 10, NULL, 0), QD_ERR_INVAL);
}

static void test_text_rules(void **state)
{
    (void)state;
    static const input_case cases[] = {
        C("How do I learn Python?", 100, 0, NULL),
        C("  x  ", 5, 0, NULL),
        C("line one\nline two\t", 100, 0, NULL),     /* controls are fine in a text */
        C("\xe2\x80\x83", 100, 0, NULL),             /* U+2003: only ASCII blanks count */
        C("\xf0\x9f\x98\x80", 4, 0, NULL),
        C("", 100, QD_ERR_INVAL, "empty text"),
        C("   ", 100, QD_ERR_INVAL, "empty text (only white space)"),
        C(" \t\n\r\v\f", 100, QD_ERR_INVAL, "empty text (only white space)"),
        C("hello world", 10, QD_ERR_RANGE, "text of 11 bytes is over the limit of 10"),
        C("a\0", 100, QD_ERR_INVAL, "NUL byte in the text"),
        C("bad \xc3(", 100, QD_ERR_INVAL, "text is not valid UTF-8 (byte 5)"),
        C("\xed\xa0\x80", 100, QD_ERR_INVAL, "text is not valid UTF-8 (byte 1)"), /* surrogate */
        C("ok \xe2\x82", 100, QD_ERR_INVAL, "text is not valid UTF-8 (byte 4)"),  /* truncated */
        C("\xf4\x90\x80\x80", 100, QD_ERR_INVAL, "text is not valid UTF-8 (byte 1)"),
        C(" \0", 100, QD_ERR_INVAL, "NUL byte in the text"),
        C(" \xff", 100, QD_ERR_INVAL, "text is not valid UTF-8 (byte 2)"),
    };
    run_cases(cases, sizeof cases / sizeof cases[0], qd_input_check_text);
}

static void test_question_reports_the_id_first(void **state)
{
    (void)state;
    char err[QD_ERRMSG_MAX];
    assert_int_equal(qd_input_check_question("q", 1, 8, "text", 4, 8, 0, err, sizeof err), 0);
    assert_int_equal(qd_input_check_question("", 0, 8, "", 0, 8, 0, err, sizeof err),
                     QD_ERR_INVAL);
    assert_string_equal(err, "empty id");
    assert_int_equal(qd_input_check_question("q", 1, 8, "  ", 2, 8, 0, err, sizeof err),
                     QD_ERR_INVAL);
    assert_string_equal(err, "empty text (only white space)");
    /* QD_INPUT_BLANK_OK lets a blank text through, and only that. */
    assert_int_equal(
        qd_input_check_question("q", 1, 8, "  ", 2, 8, QD_INPUT_BLANK_OK, err, sizeof err), 0);
    assert_int_equal(
        qd_input_check_question("q", 1, 8, " \0", 2, 8, QD_INPUT_BLANK_OK, err, sizeof err),
        QD_ERR_INVAL);
    assert_string_equal(err, "NUL byte in the text");
    assert_int_equal(
        qd_input_check_question("q\n", 2, 8, "  ", 2, 8, QD_INPUT_BLANK_OK, err, sizeof err),
        QD_ERR_INVAL);
    assert_int_equal(qd_input_check_question("q", 1, 8, "123456789", 9, 8, 0, err, sizeof err),
                     QD_ERR_RANGE);
    assert_string_equal(err, "text of 9 bytes is over the limit of 8");
}

/* Length of the well-formed sequence at s[0..n) by table 3-7, or 0 if none. */
static size_t table37_len(const unsigned char *s, size_t n)
{
    static const struct {
        unsigned char lo[4], hi[4];
        size_t len;
    } rows[] = {
        {{0x00}, {0x7F}, 1},
        {{0xC2, 0x80}, {0xDF, 0xBF}, 2},
        {{0xE0, 0xA0, 0x80}, {0xE0, 0xBF, 0xBF}, 3},
        {{0xE1, 0x80, 0x80}, {0xEC, 0xBF, 0xBF}, 3},
        {{0xED, 0x80, 0x80}, {0xED, 0x9F, 0xBF}, 3},
        {{0xEE, 0x80, 0x80}, {0xEF, 0xBF, 0xBF}, 3},
        {{0xF0, 0x90, 0x80, 0x80}, {0xF0, 0xBF, 0xBF, 0xBF}, 4},
        {{0xF1, 0x80, 0x80, 0x80}, {0xF3, 0xBF, 0xBF, 0xBF}, 4},
        {{0xF4, 0x80, 0x80, 0x80}, {0xF4, 0x8F, 0xBF, 0xBF}, 4},
    };
    for (size_t r = 0; r < sizeof rows / sizeof rows[0]; r++) {
        size_t k = rows[r].len, i;
        if (k > n)
            continue;
        for (i = 0; i < k && s[i] >= rows[r].lo[i] && s[i] <= rows[r].hi[i]; i++)
            ;
        if (i == k)
            return k;
    }
    return 0;
}

/* Random texts built from bytes that make UTF-8 interesting: the text check accepts
 * exactly those the table accepts (apart from NUL and all-blank, checked first here),
 * and names the byte where the table first fails. */
static void test_utf8_against_table(void **state)
{
    (void)state;
    static const unsigned char pool[] = {'a', ' ', 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0,
                                         0xBF, 0xC0, 0xC2, 0xDF, 0xE0, 0xE1, 0xED, 0xEF,
                                         0xF0, 0xF1, 0xF4, 0xF5, 0xFF};
    uint64_t rng = 42;
    unsigned char buf[12];
    int valid = 0, invalid = 0;
    for (int iter = 0; iter < 200000; iter++) {
        size_t n = 1 + qt_rand(&rng) % sizeof buf;
        buf[0] = 'x'; /* never blank-only, never NUL */
        for (size_t i = 1; i < n; i++)
            buf[i] = pool[qt_rand(&rng) % sizeof pool];
        size_t at = 0, k;
        while (at < n && (k = table37_len(buf + at, n - at)) != 0)
            at += k;
        char err[QD_ERRMSG_MAX], want[64];
        int rc = qd_input_check_text((const char *)buf, n, sizeof buf, err, sizeof err);
        if (at == n) {
            assert_int_equal(rc, 0);
            valid++;
        } else {
            assert_int_equal(rc, QD_ERR_INVAL);
            snprintf(want, sizeof want, "text is not valid UTF-8 (byte %zu)", at + 1);
            assert_string_equal(err, want);
            invalid++;
        }
    }
    /* Both outcomes were exercised many times. */
    assert_true(valid > 1000 && invalid > 1000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_id_rules),
        cmocka_unit_test(test_text_rules),
        cmocka_unit_test(test_question_reports_the_id_first),
        cmocka_unit_test(test_utf8_against_table),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
