/*
 * test_rowread.c - the row reader on its own: plain and quoted rows, the quoting
 * detection, a broken quoted row costing only itself, the line layer's byte order
 * mark, CR LF and over-long lines. (The dump readers' and pair files' tests cover it
 * through them too.)
 */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "qdup/common.h"
#include "qdup/rowread.h"
#include "testutil.h"

/* Reads all rows of text (mode, delimiter, expected field count) into a transcript:
 * "R line|f1|f2...\n" per row, "E message\n" per skipped row. Caller frees. */
static char *transcript(const char *text, qd_rowread_mode mode, char delim, size_t expect,
                        size_t max_line, qd_rowread_mode *mode_after)
{
    const char *path = qt_path(qt_tmp_dir(), "rows.txt");
    qt_write_file(path, text, strlen(text));
    int fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    qd_rowread *rr;
    assert_int_equal(qd_rowread_open(fd, "t", max_line, &rr), 0);
    qd_rowread_set_mode(rr, mode);
    qd_rowread_set_delim(rr, delim);
    qd_rowread_set_expect(rr, expect);
    static char out[4096];
    size_t k = 0;
    for (;;) {
        qd_rowread_field *f;
        size_t nf;
        uint64_t line;
        int r = qd_rowread_next(rr, &f, &nf, &line);
        if (r == 0)
            break;
        if (r == QD_ERR_FORMAT) {
            k += (size_t)snprintf(out + k, sizeof out - k, "E %s\n", qd_rowread_errmsg(rr));
            continue;
        }
        assert_int_equal(r, 1);
        k += (size_t)snprintf(out + k, sizeof out - k, "R %llu", (unsigned long long)line);
        for (size_t i = 0; i < nf; i++) {
            assert_int_equal(strlen(f[i].p), f[i].len);
            k += (size_t)snprintf(out + k, sizeof out - k, "|%s", f[i].p);
        }
        k += (size_t)snprintf(out + k, sizeof out - k, "\n");
    }
    if (mode_after)
        *mode_after = qd_rowread_get_mode(rr);
    assert_int_equal(qd_rowread_bytes_read(rr), strlen(text));
    qd_rowread_close(rr);
    close(fd);
    return qd_strndup(out, k);
}

static void expect_rows(const char *text, qd_rowread_mode mode, char delim, size_t expect,
                        const char *want)
{
    char *got = transcript(text, mode, delim, expect, 1000, NULL);
    assert_string_equal(got, want);
    qd_free(got);
}

static void test_plain(void **state)
{
    (void)state;
    /* BOM skipped, CR LF, blank lines skipped, quotes are data, a last line without LF. */
    expect_rows("\xEF\xBB\xBF"
                "a\tb\r\n\n\"x\"y\tz\nc\td",
                QD_ROWREAD_PLAIN, '\t', 2, "R 1|a|b\nR 3|\"x\"y|z\nR 4|c|d\n");
    /* The field count is checked when asked for. */
    expect_rows("a\tb\nc\nd\te\tf\n", QD_ROWREAD_PLAIN, '\t', 2,
                "R 1|a|b\nE t:2: expected 2 fields, got 1\nE t:3: expected 2 fields, got 3\n");
    expect_rows("a,b\n", QD_ROWREAD_PLAIN, ',', 0, "R 1|a|b\n");
}

static void test_quoted(void **state)
{
    (void)state;
    /* Doubled quotes, a field spanning lines (CR LF inside becomes LF), delimiters
     * inside quotes; the row is named by its first line. */
    expect_rows("1,\"say \"\"hi\"\"\"\n2,\"two\r\nlines, here\"\n3,x\n", QD_ROWREAD_QUOTED,
                ',', 2, "R 1|1|say \"hi\"\nR 2|2|two\nlines, here\nR 4|3|x\n");
    /* A stray quote costs its row; an unterminated quote costs its row only: the lines
     * it swallowed are read again. */
    expect_rows("1,a\"b\n2,\"open\n3,c\n", QD_ROWREAD_QUOTED, ',', 2,
                "E t:1: quote inside an unquoted field\n"
                "E t:2: quoted field not closed at the end of the file\nR 3|3|c\n");
}

static void test_detect(void **state)
{
    (void)state;
    qd_rowread_mode m;
    /* The first quote opens a field and the row parses quoted: the file is quoted. */
    char *got = transcript("a\tb\n\"q\tr\"\ts\n", QD_ROWREAD_DETECT, '\t', 2, 1000, &m);
    assert_string_equal(got, "R 1|a|b\nR 2|q\tr|s\n");
    assert_int_equal(m, QD_ROWREAD_QUOTED);
    qd_free(got);
    /* The first quote is inside a field: plain from there on. */
    got = transcript("a \"b\"\tc\n\"q\tr\"\ts\n", QD_ROWREAD_DETECT, '\t', 2, 1000, &m);
    assert_string_equal(got, "R 1|a \"b\"|c\nE t:2: expected 2 fields, got 3\n");
    assert_int_equal(m, QD_ROWREAD_PLAIN);
    qd_free(got);
    /* The first quote opens a field but the row is not well-formed quoted: plain, and
     * the row is read plain. */
    got = transcript("\"S\" is\tx\n\"t\"\ty\n", QD_ROWREAD_DETECT, '\t', 2, 1000, &m);
    assert_string_equal(got, "R 1|\"S\" is|x\nR 2|\"t\"|y\n");
    assert_int_equal(m, QD_ROWREAD_PLAIN);
    qd_free(got);
    /* No quote at all: still undecided. */
    got = transcript("a\tb\n", QD_ROWREAD_DETECT, '\t', 2, 1000, &m);
    assert_int_equal(m, QD_ROWREAD_DETECT);
    qd_free(got);
}

static void test_long_lines(void **state)
{
    (void)state;
    char text[200];
    snprintf(text, sizeof text, "a\tb\n%040d\tx\nc\td\n", 0);
    char *got = transcript(text, QD_ROWREAD_PLAIN, '\t', 2, 20, NULL);
    assert_string_equal(got, "R 1|a|b\nE t:2: line of 42 bytes is over the limit of 20\n"
                             "R 3|c|d\n");
    qd_free(got);
    /* A quoted record growing past the limit costs its first line only. */
    got = transcript("1,\"aaaaaaaaaa\nbbbbbbbbbbbb\n2,c\n", QD_ROWREAD_QUOTED, ',', 2, 20,
                     NULL);
    assert_string_equal(got, "E t:1: quoted field still open after 20 bytes, at line 2 "
                             "(unterminated quote?)\nE t:2: expected 2 fields, got 1\n"
                             "R 3|2|c\n");
    qd_free(got);
}

static void test_lines_and_unread(void **state)
{
    (void)state;
    const char *path = qt_path(qt_tmp_dir(), "lines.txt");
    qt_write_file(path, "first\n\nthird", 12);
    int fd = open(path, O_RDONLY);
    qd_rowread *rr;
    assert_int_equal(qd_rowread_open(fd, "t", 100, &rr), 0);
    qd_rowread_line ln;
    assert_int_equal(qd_rowread_line_next(rr, &ln), 1);
    assert_string_equal(ln.p, "first");
    assert_int_equal(qd_rowread_unread(rr, &ln), 0);
    assert_int_equal(qd_rowread_line_next(rr, &ln), 1);
    assert_string_equal(ln.p, "first");
    assert_int_equal(ln.no, 1);
    assert_int_equal(qd_rowread_line_next(rr, &ln), 1);
    assert_int_equal(ln.len, 0); /* blank lines come out as lines */
    assert_int_equal(qd_rowread_line_next(rr, &ln), 1);
    assert_string_equal(ln.p, "third");
    assert_int_equal(ln.no, 3);
    assert_int_equal(qd_rowread_line_next(rr, &ln), 0);
    qd_rowread_close(rr);
    close(fd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain),
        cmocka_unit_test(test_quoted),
        cmocka_unit_test(test_detect),
        cmocka_unit_test(test_long_lines),
        cmocka_unit_test(test_lines_and_unread),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
