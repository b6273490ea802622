/*
 * test_tok.c - the tokenizer, the vocabulary and qd_tok_encode().
 *
 * Expected tokens come from the rules in tok.h, not from running the code: simple
 * cases are spelled out, and random text is checked against a reference split built
 * on utf8proc_map() (whole-string NFKD + case folding, with utf8proc's own canonical
 * reordering) and utf8proc_category(). n-gram rows are recomputed here with a separate
 * FNV-1a and code point walk. Every input is copied into a buffer of exactly its
 * length, so that AddressSanitizer reports any read past `len`.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <utf8proc.h>

#include "qdup/common.h"
#include "qdup/tok.h"
#include "testutil.h"

/* --- helpers ------------------------------------------------------------------------- */

/* A copy of s[0..n) in a buffer of exactly n bytes (1 for n == 0, never read). */
static char *exact_copy(const char *s, size_t n)
{
    char *p = malloc(n ? n : 1);
    assert_non_null(p);
    if (n)
        memcpy(p, s, n);
    return p;
}

/* The tokens of tb, each followed by '\n' (no token contains '\n': it separates). */
static char *joined(const qd_tokbuf *tb)
{
    size_t total = 1;
    for (size_t i = 0; i < tb->n; i++)
        total += tb->len[i] + 1;
    char *s = malloc(total), *p = s;
    assert_non_null(s);
    for (size_t i = 0; i < tb->n; i++) {
        memcpy(p, tb->text + tb->start[i], tb->len[i]);
        p += tb->len[i];
        *p++ = '\n';
    }
    *p = '\0';
    return s;
}

/* Splits text[0..len) (copied to an exact buffer) and returns the joined tokens. */
static char *split_joined(qd_tokbuf *tb, const char *text, size_t len, size_t max)
{
    char *buf = exact_copy(text, len);
    assert_int_equal(qd_tok_split(tb, buf, len, max), 0);
    free(buf);
    return joined(tb);
}

#define check_split(text, want) check_split_n(text, strlen(text), want)
static void check_split_n(const char *text, size_t len, const char *want)
{
    qd_tokbuf tb;
    qd_tokbuf_init(&tb);
    char *got = split_joined(&tb, text, len, 0);
    assert_string_equal(got, want);
    free(got);
    qd_tokbuf_free(&tb);
}

/* Strict UTF-8 check, written independently of tok.c's decoder. */
static int valid_utf8(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t k;
        uint32_t cp, min;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            k = 1, cp = c & 0x1F, min = 0x80;
        } else if ((c & 0xF0) == 0xE0) {
            k = 2, cp = c & 0x0F, min = 0x800;
        } else if ((c & 0xF8) == 0xF0) {
            k = 3, cp = c & 0x07, min = 0x10000;
        } else {
            return 0;
        }
        if (i + k >= n) /* truncated */
            return 0;
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xC0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + j] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += k + 1;
    }
    return 1;
}

/* The reference split of a valid UTF-8 string, joined like joined(): utf8proc_map() on
 * the whole string, then classes by category, words cut at QD_TOK_MAX_BYTES. */
static char *reference_split(const char *s, size_t n)
{
    utf8proc_uint8_t *norm = NULL;
    utf8proc_ssize_t nn = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &norm,
                                       UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT |
                                           UTF8PROC_CASEFOLD | UTF8PROC_IGNORE);
    assert_true(nn >= 0);
    char *out = malloc(2 * (size_t)nn + 1), *p = out;
    assert_non_null(out);
    size_t wlen = 0; /* bytes in the open word, 0: none */
    for (utf8proc_ssize_t i = 0; i < nn;) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t k = utf8proc_iterate(norm + i, nn - i, &cp);
        assert_true(k > 0);
        utf8proc_category_t cat = utf8proc_category(cp);
        int word = (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_NO);
        int sep = (cat >= UTF8PROC_CATEGORY_ZS && cat <= UTF8PROC_CATEGORY_CS);
        if (wlen && (!word || wlen + (size_t)k > QD_TOK_MAX_BYTES)) {
            *p++ = '\n';
            wlen = 0;
        }
        if (word) {
            memcpy(p, norm + i, (size_t)k);
            p += k;
            wlen += (size_t)k;
        } else if (!sep) {
            memcpy(p, norm + i, (size_t)k);
            p += k;
            *p++ = '\n';
        }
        i += k;
    }
    if (wlen)
        *p++ = '\n';
    *p = '\0';
    free(norm);
    return out;
}

/* --- splitting ----------------------------------------------------------------------- */

static void test_empty_and_blank(void **state)
{
    (void)state;
    check_split("", "");
    check_split("     ", "");
    check_split(" \t\r\n\v\f \x7f\x01\x1f", "");
    check_split_n("\0\0\0", 3, "");
    /* U+00A0 no-break space, U+3000 ideographic space, U+2028 line separator, U+0085. */
    check_split("\xc2\xa0\xe3\x80\x80\xe2\x80\xa8\xc2\x85", "");
    /* Only default-ignorable code points: soft hyphen, ZWJ, variation selector 16. */
    check_split("\xc2\xad\xe2\x80\x8d\xef\xb8\x8f", "");
}

static void test_punctuation_one_token_each(void **state)
{
    (void)state;
    check_split("?!...", "?\n!\n.\n.\n.\n");
    check_split("a,b", "a\n,\nb\n");
    check_split("What's up?", "what\n'\ns\nup\n?\n");
    check_split("(x)--[y]", "(\nx\n)\n-\n-\n[\ny\n]\n");
    /* Non-ASCII punctuation and symbols: inverted question mark, em dash, euro sign. */
    check_split("\xc2\xbfqu\xc3\xa9? \xe2\x80\x94 5\xe2\x82\xac",
                "\xc2\xbf\nque\xcc\x81\n?\n\xe2\x80\x94\n5\n\xe2\x82\xac\n");
}

static void test_case_folding(void **state)
{
    (void)state;
    qd_tokbuf tb;
    qd_tokbuf_init(&tb);
    /* É (U+00C9), é (U+00E9) and e + U+0301: one and the same token. */
    char *a = split_joined(&tb, "\xc3\x89", 2, 0);
    char *b = split_joined(&tb, "\xc3\xa9", 2, 0);
    char *c = split_joined(&tb, "e\xcc\x81", 3, 0);
    char *d = split_joined(&tb, "E\xcc\x81", 3, 0);
    assert_string_equal(a, b);
    assert_string_equal(a, c);
    assert_string_equal(a, d);
    assert_int_equal(tb.n, 1);
    free(a), free(b), free(c), free(d);

    /* Upper and lower forms of the same words, in several scripts. */
    static const char *const pairs[][2] = {
        {"HELLO World", "hello world"},
        {"STRASSE", "stra\xc3\x9f" "e"},                      /* ß folds to ss */
        {"\xce\xa3\xce\x8a\xce\xa3\xce\xa5\xce\xa6\xce\x9f\xce\xa3", /* ΣΊΣΥΦΟΣ */
         "\xcf\x83\xce\xaf\xcf\x83\xcf\x85\xcf\x86\xce\xbf\xcf\x82"}, /* σίσυφος */
        {"\xd0\x9c\xd0\x9e\xd0\xa1\xd0\x9a\xd0\x92\xd0\x90", /* МОСКВА */
         "\xd0\xbc\xd0\xbe\xd1\x81\xd0\xba\xd0\xb2\xd0\xb0"}, /* москва */
        {"\xef\xbc\xa1\xef\xbc\xa2\xef\xbc\xa3", "abc"},  /* fullwidth ＡＢＣ */
        {"\xef\xac\x81le", "file"},                        /* ﬁ ligature */
        {"\xe2\x84\xab", "\xc3\xa5"},                      /* Angstrom sign, å */
    };
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
        char *x = split_joined(&tb, pairs[i][0], strlen(pairs[i][0]), 0);
        char *y = split_joined(&tb, pairs[i][1], strlen(pairs[i][1]), 0);
        assert_string_equal(x, y);
        free(x), free(y);
    }
    check_split("\xef\xbc\xa1\xef\xbc\xa2\xef\xbc\xa3", "abc\n");
    /* The decomposed form is what the token holds: e + U+0301. */
    check_split("Caf\xc3\xa9", "cafe\xcc\x81\n");
    /* Marks in either order give the same canonical order (cedilla 202, acute 230). */
    check_split("a\xcc\xa7\xcc\x81 a\xcc\x81\xcc\xa7", "a\xcc\xa7\xcc\x81\na\xcc\xa7\xcc\x81\n");
    qd_tokbuf_free(&tb);
}

static void test_digits(void **state)
{
    (void)state;
    check_split("iphone 7", "iphone\n7\n");
    check_split("iPhone7s", "iphone7s\n");
    check_split("3.5", "3\n.\n5\n");
    check_split("10,000", "10\n,\n000\n");
    /* Arabic-Indic digits are digits (Nd); circled one (No) decomposes to "1". */
    check_split("\xd9\xa3\xd9\xa4 \xe2\x91\xa0", "\xd9\xa3\xd9\xa4\n1\n");
}

static void test_emoji(void **state)
{
    (void)state;
    /* Single code point emoji: a token each, glued to words or not. */
    check_split("\xf0\x9f\x98\x80", "\xf0\x9f\x98\x80\n");
    check_split("hi\xf0\x9f\x98\x80\xf0\x9f\x98\x82!",
                "hi\n\xf0\x9f\x98\x80\n\xf0\x9f\x98\x82\n!\n");
    /* Heart + VS16: the variation selector is ignorable, one token. */
    check_split("\xe2\x9d\xa4\xef\xb8\x8f", "\xe2\x9d\xa4\n");
    /* Thumbs up + skin tone modifier: two tokens. */
    check_split("\xf0\x9f\x91\x8d\xf0\x9f\x8f\xbd", "\xf0\x9f\x91\x8d\n\xf0\x9f\x8f\xbd\n");
    /* Family: man ZWJ woman ZWJ girl -> three people, the joiners dropped. */
    check_split("\xf0\x9f\x91\xa8\xe2\x80\x8d\xf0\x9f\x91\xa9\xe2\x80\x8d\xf0\x9f\x91\xa7",
                "\xf0\x9f\x91\xa8\n\xf0\x9f\x91\xa9\n\xf0\x9f\x91\xa7\n");
    /* Flag of France: two regional indicators. */
    check_split("\xf0\x9f\x87\xab\xf0\x9f\x87\xb7", "\xf0\x9f\x87\xab\n\xf0\x9f\x87\xb7\n");
    /* Private use and unassigned code points stand alone too. */
    check_split("a\xee\x80\x80" "b\xf0\x9f\xab\xb8", "a\n\xee\x80\x80\nb\n\xf0\x9f\xab\xb8\n");
}

static void test_nul_separates(void **state)
{
    (void)state;
    check_split_n("foo\0bar", 7, "foo\nbar\n");
    check_split_n("\0foo\0\0bar\0", 10, "foo\nbar\n");
    /* A NUL between a base and its mark still separates. */
    check_split_n("e\0\xcc\x81", 4, "e\n\xcc\x81\n");
}

static void test_invalid_utf8(void **state)
{
    (void)state;
#define R "\xef\xbf\xbd" /* U+FFFD as UTF-8 */
    /* Expected counts follow Unicode's maximal-subpart practice (the same as Python's
     * bytes.decode("utf-8", "replace")). */
    static const struct {
        const char *in;
        size_t len;
        const char *want;
    } cases[] = {
        {"\x80", 1, R "\n"},                               /* lone continuation */
        {"a\x80\xbf" "b", 4, "a\n" R "\n" R "\nb\n"},
        {"\xc3", 1, R "\n"},                               /* truncated 2-byte at end */
        {"x\xe2\x82", 3, "x\n" R "\n"},                    /* truncated 3-byte at end */
        {"\xf0\x9f\x98", 3, R "\n"},                       /* truncated 4-byte at end */
        {"\xf0\x9f", 2, R "\n"},
        {"\xe2\x82" "a", 3, R "\na\n"},                    /* truncated before ASCII */
        {"\xe2\x82\xe2\x82\xac", 5, R "\n\xe2\x82\xac\n"}, /* ... before a valid euro */
        {"\xc0\xaf", 2, R "\n" R "\n"},                    /* overlong '/' */
        {"\xc1\xbf", 2, R "\n" R "\n"},
        {"\xe0\x80\xaf", 3, R "\n" R "\n" R "\n"},
        {"\xf0\x80\x80\xaf", 4, R "\n" R "\n" R "\n" R "\n"},
        {"\xed\xa0\x80", 3, R "\n" R "\n" R "\n"},        /* surrogate U+D800 */
        {"\xed\xbf\xbf", 3, R "\n" R "\n" R "\n"},        /* surrogate U+DFFF */
        {"\xf4\x90\x80\x80", 4, R "\n" R "\n" R "\n" R "\n"}, /* above U+10FFFF */
        {"\xf8\x88\x80\x80\x80", 5, R "\n" R "\n" R "\n" R "\n" R "\n"},
        {"\xfe\xff", 2, R "\n" R "\n"},
        {"ab\xff" "cd", 5, "ab\n" R "\ncd\n"},
        {"\xef\xbf\xbd", 3, R "\n"},                       /* a real U+FFFD */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        check_split_n(cases[i].in, cases[i].len, cases[i].want);
    for (unsigned b = 0xF5; b <= 0xFF; b++) {
        char c = (char)b;
        check_split_n(&c, 1, R "\n");
    }
#undef R
}

/* Random byte strings: never a crash or an overread, always well-formed tokens. */
static void test_random_bytes(void **state)
{
    (void)state;
    uint64_t rng = 12345;
    qd_tokbuf tb;
    qd_tokbuf_init(&tb);
    for (int iter = 0; iter < 20000; iter++) {
        size_t n = qt_rand(&rng) % 48;
        char *buf = malloc(n ? n : 1);
        assert_non_null(buf);
        for (size_t i = 0; i < n; i++) {
            uint64_t r = qt_rand(&rng);
            /* Mostly high bytes, so that sequences are often almost valid. */
            buf[i] = (char)(r % 4 == 0 ? 0x80 + (r >> 8) % 0x40
                            : r % 4 == 1 ? 0xC0 + (r >> 8) % 0x40
                            : r % 4 == 2 ? 'a' + (r >> 8) % 3
                                         : (r >> 8) & 0xFF);
        }
        assert_int_equal(qd_tok_split(&tb, buf, n, 0), 0);
        for (size_t t = 0; t < tb.n; t++) {
            assert_true(tb.len[t] >= 1 && tb.len[t] <= QD_TOK_MAX_BYTES);
            assert_true(valid_utf8((const unsigned char *)tb.text + tb.start[t], tb.len[t]));
        }
        free(buf);
    }
    qd_tokbuf_free(&tb);
}

/* Random valid text from a pool of tricky code points, against the reference split. */
static void test_random_text_matches_reference(void **state)
{
    (void)state;
    static const char *const pool[] = {
        "a", "Z", "7", "\xc3\xa9", "\xc3\x89", "\xc3\x9f", "\xe1\xba\x9e", /* ẞ */
        "\xce\x90",                                /* ΐ: casefold to three code points */
        "\xef\xac\x83",                            /* ﬃ */
        "\xed\x95\x9c",                            /* 한: Hangul, decomposes to jamo */
        "\xe4\xb8\xad",                            /* 中 */
        "\xef\xbc\xa1",                            /* fullwidth A */
        "\xe2\x84\xab",                            /* Angstrom sign */
        "\xc7\x85",                                /* ǅ titlecase */
        "\xc4\xb0",                                /* İ */
        "\xe2\x91\xa0",                            /* ① */
        "\xc2\xbd",                                /* ½ */
        "\xe2\x80\xa6",                            /* … */
        "\xcc\x81", "\xcc\xa7", "\xcc\xa3", "\xcc\x96", "\xcd\x85", "\xd6\xb0", /* marks */
        "\xe2\x80\x8d", "\xef\xb8\x8f", "\xc2\xad", "\xe2\x80\x8b", /* ignorable */
        " ", "\t", "\xc2\xa0", "\xe3\x80\x80", "\xe2\x80\xa8", "\xc2\x85", "\xd8\x80",
        "?", ".", "'", "\xe2\x80\x94", "\xe2\x82\xac", "\xf0\x9f\x98\x80",
        "\xf0\x9f\x8f\xbd", "\xee\x80\x80", "\xcd\xb8", /* U+0378 unassigned */
        "\xef\xbf\xbd",
    };
    const size_t npool = sizeof pool / sizeof pool[0];
    uint64_t rng = 777;
    qd_tokbuf tb;
    qd_tokbuf_init(&tb);
    char text[1024];
    for (int iter = 0; iter < 20000; iter++) {
        size_t len = 0, run = 0, items = qt_rand(&rng) % 40;
        for (size_t k = 0; k < items; k++) {
            /* A space at least every 6 items keeps words well under QD_TOK_MAX_BYTES,
             * where a cut could separate marks that the reference would reorder. */
            const char *s = run == 6 ? " " : pool[qt_rand(&rng) % npool];
            run = (s[0] == ' ') ? 0 : run + 1;
            memcpy(text + len, s, strlen(s));
            len += strlen(s);
        }
        char *got = split_joined(&tb, text, len, 0);
        char *want = reference_split(text, len);
        if (strcmp(got, want) != 0)
            fail_msg("iteration %d: got\n%s\nwant\n%s", iter, got, want);
        free(got);
        free(want);
    }
    qd_tokbuf_free(&tb);
}

static void test_long_tokens_cut(void **state)
{
    (void)state;
    qd_tokbuf tb;
    qd_tokbuf_init(&tb);
    char text[600];

    /* 200 ASCII letters: 64 + 64 + 64 + 8. */
    memset(text, 'A', 200);
    char *got = split_joined(&tb, text, 200, 0);
    assert_int_equal(tb.n, 4);
    for (size_t i = 0; i < 3; i++)
        assert_int_equal(tb.len[i], 64);
    assert_int_equal(tb.len[3], 8);
    assert_int_equal(got[0], 'a');
    free(got);

    /* 20 four-byte letters (U+20000): 16 fit in 64 bytes, then 4. */
    for (size_t i = 0; i < 20; i++)
        memcpy(text + 4 * i, "\xf0\xa0\x80\x80", 4);
    got = split_joined(&tb, text, 80, 0);
    assert_int_equal(tb.n, 2);
    assert_int_equal(tb.len[0], 64);
    assert_int_equal(tb.len[1], 16);
    free(got);

    /* 3-byte letters: a piece never splits a code point, 21 * 3 = 63 bytes. */
    for (size_t i = 0; i < 50; i++)
        memcpy(text + 3 * i, "\xe4\xb8\xad", 3);
    got = split_joined(&tb, text, 150, 0);
    assert_int_equal(tb.n, 3);
    assert_int_equal(tb.len[0], 63);
    assert_int_equal(tb.len[1], 63);
    assert_int_equal(tb.len[2], 24);
    free(got);

    /* é precomposed grows to 3 bytes; pieces concatenate to the whole normalized word,
     * each valid UTF-8, each but the last too full to take the next code point. */
    for (size_t i = 0; i < 70; i++)
        memcpy(text + 2 * i, "\xc3\xa9", 2);
    got = split_joined(&tb, text, 140, 0);
    char *want = reference_split(text, 140);
    assert_string_equal(got, want);
    size_t total = 0;
    for (size_t t = 0; t < tb.n; t++) {
        assert_true(tb.len[t] <= QD_TOK_MAX_BYTES);
        assert_true(valid_utf8((const unsigned char *)tb.text + tb.start[t], tb.len[t]));
        if (t + 1 < tb.n)
            assert_true(tb.len[t] > QD_TOK_MAX_BYTES - 2);
        total += tb.len[t];
    }
    assert_int_equal(total, 210);
    free(got);
    free(want);
    qd_tokbuf_free(&tb);
}

/* Appends s to the generated text. */
static void gen_put(char *buf, size_t *len, const char *s, size_t n)
{
    memcpy(buf + *len, s, n);
    *len += n;
}

/* About 1 MB of text with a known number of tokens. */
static char *gen_text(size_t target, size_t *len_out, size_t *ntok_out)
{
    static const char alnum[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    static const char punct[] = "?!.,;:'\"()[]{}-_/\\@#$%^&*+=<>|~`";
    static const char seps[] = " \t\n\r\v\f\x7f";
    /* Non-ASCII items that are one token each. */
    static const char *const one[] = {
        "caf\xc3\xa9", "na\xc3\xafve", "\xef\xbc\xa6\xef\xbd\x95\xef\xbd\x8c\xef\xbd\x8c",
        "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e", "\xf0\x9f\x98\x80", "\xc2\xbf", "\xe2\x80\x93",
        "\xef\xbf\xbd", "\xff", "\xe2\x82",
    };
    uint64_t rng = 99;
    char *buf = malloc(target + 1024);
    assert_non_null(buf);
    size_t len = 0, ntok = 0;
    while (len < target) {
        uint64_t r = qt_rand(&rng) % 16;
        if (r < 9) {
            size_t n = 1 + qt_rand(&rng) % 12;
            for (size_t i = 0; i < n; i++)
                buf[len++] = alnum[qt_rand(&rng) % (sizeof alnum - 1)];
            ntok++;
        } else if (r < 12) {
            buf[len++] = punct[qt_rand(&rng) % (sizeof punct - 1)];
            ntok++;
        } else if (r < 15) {
            const char *s = one[qt_rand(&rng) % (sizeof one / sizeof one[0])];
            gen_put(buf, &len, s, strlen(s));
            ntok++;
        } else {
            size_t n = 65 + qt_rand(&rng) % 300;
            memset(buf + len, 'q', n);
            len += n;
            ntok += (n + QD_TOK_MAX_BYTES - 1) / QD_TOK_MAX_BYTES;
        }
        if (qt_rand(&rng) % 4 == 0) { /* punctuation glued on */
            buf[len++] = punct[qt_rand(&rng) % (sizeof punct - 1)];
            ntok++;
        }
        size_t ns = 1 + qt_rand(&rng) % 3;
        for (size_t i = 0; i < ns; i++)
            buf[len++] = (qt_rand(&rng) % 5 == 0) ? '\0' : seps[qt_rand(&rng) % (sizeof seps - 1)];
    }
    *len_out = len;
    *ntok_out = ntok;
    return buf;
}

static void test_megabyte(void **state)
{
    (void)state;
    size_t len, ntok;
    char *gen = gen_text(1 << 20, &len, &ntok);
    char *text = exact_copy(gen, len);
    free(gen);
    qd_tokbuf all, capped;
    qd_tokbuf_init(&all);
    qd_tokbuf_init(&capped);
    assert_int_equal(qd_tok_split(&all, text, len, 0), 0);
    assert_int_equal(all.n, ntok);
    for (size_t t = 0; t < all.n; t++)
        assert_true(all.len[t] >= 1 && all.len[t] <= QD_TOK_MAX_BYTES);

    static const size_t caps[] = {1, 2, 1000, 54321};
    for (size_t c = 0; c < sizeof caps / sizeof caps[0]; c++) {
        assert_int_equal(qd_tok_split(&capped, text, len, caps[c]), 0);
        assert_int_equal(capped.n, caps[c]);
        for (size_t t = 0; t < capped.n; t++) {
            assert_int_equal(capped.len[t], all.len[t]);
            assert_memory_equal(capped.text + capped.start[t], all.text + all.start[t],
                                all.len[t]);
        }
    }
    /* A cap above the count changes nothing. */
    assert_int_equal(qd_tok_split(&capped, text, len, ntok + 10), 0);
    assert_int_equal(capped.n, ntok);
    free(text);
    qd_tokbuf_free(&all);
    qd_tokbuf_free(&capped);
}

static void test_tokbuf_reuse_no_growth(void **state)
{
    (void)state;
    qd_tokbuf tb;
    qd_tokbuf_init(&tb);
    const char *q = "How do I learn C programming quickly? Any good books?";
    assert_int_equal(qd_tok_split(&tb, q, strlen(q), 0), 0);
    char *text = tb.text;
    uint32_t *start = tb.start;
    /* The buffers are big enough now: further calls must not allocate at all. */
    qd_alloc_fail_after(0, 1);
    for (int i = 0; i < 100; i++)
        assert_int_equal(qd_tok_split(&tb, q, strlen(q), 0), 0);
    qd_alloc_fail_after(-1, 0);
    assert_ptr_equal(tb.text, text);
    assert_ptr_equal(tb.start, start);
    qd_tokbuf_free(&tb);
    qd_tokbuf_free(NULL);
}

/* --- vocabulary ----------------------------------------------------------------------- */

static void test_vocab_basics(void **state)
{
    (void)state;
    qd_vocab *v = qd_vocab_new();
    assert_non_null(v);
    assert_int_equal(qd_vocab_size(v), QD_TOK_NRESERVED);
    size_t n = 99;
    assert_null(qd_vocab_word(v, QD_TOK_PAD, &n));
    assert_int_equal(n, 0);
    assert_null(qd_vocab_word(v, QD_TOK_UNK, NULL));
    assert_null(qd_vocab_word(v, 2, NULL));
    assert_null(qd_vocab_word(v, -5, NULL));
    assert_int_equal(qd_vocab_find(v, "the", 3), QD_TOK_UNK);

    assert_int_equal(qd_vocab_add(v, "the", 3), 2);
    assert_int_equal(qd_vocab_add(v, "cat", 3), 3);
    assert_int_equal(qd_vocab_add(v, "the", 3), 2); /* existing id */
    assert_int_equal(qd_vocab_add(v, "th", 2), 4);  /* a prefix is another word */
    assert_int_equal(qd_vocab_size(v), 5);
    assert_int_equal(qd_vocab_find(v, "the", 3), 2);
    assert_int_equal(qd_vocab_find(v, "th", 2), 4);
    assert_int_equal(qd_vocab_find(v, "t", 1), QD_TOK_UNK);
    assert_int_equal(qd_vocab_find(v, "thee", 4), QD_TOK_UNK);
    assert_string_equal(qd_vocab_word(v, 3, &n), "cat");
    assert_int_equal(n, 3);

    /* Lengths outside 1..QD_TOK_MAX_BYTES. */
    char big[QD_TOK_MAX_BYTES + 1];
    memset(big, 'x', sizeof big);
    assert_int_equal(qd_vocab_add(v, "", 0), QD_ERR_INVAL);
    assert_int_equal(qd_vocab_add(v, big, sizeof big), QD_ERR_INVAL);
    assert_int_equal(qd_vocab_find(v, big, sizeof big), QD_TOK_UNK);
    assert_int_equal(qd_vocab_find(v, "", 0), QD_TOK_UNK);
    assert_int_equal(qd_vocab_add(v, big, QD_TOK_MAX_BYTES), 5);
    assert_int_equal(qd_vocab_find(v, big, QD_TOK_MAX_BYTES), 5);

    /* Many words: every one round-trips through find and word after the rehashes. */
    char w[32];
    for (int i = 0; i < 20000; i++) {
        int k = snprintf(w, sizeof w, "w%d", i * 7919);
        assert_int_equal(qd_vocab_add(v, w, (size_t)k), 6 + i);
    }
    assert_int_equal(qd_vocab_size(v), 6 + 20000);
    for (int i = 0; i < 20000; i++) {
        int k = snprintf(w, sizeof w, "w%d", i * 7919);
        assert_int_equal(qd_vocab_find(v, w, (size_t)k), 6 + i);
        assert_string_equal(qd_vocab_word(v, 6 + i, &n), w);
        assert_int_equal(n, (size_t)k);
    }
    assert_int_equal(qd_vocab_find(v, "w1", 2), QD_TOK_UNK);
    /* Bytes are bytes: a word with a high byte and one differing in its last byte. */
    assert_int_equal(qd_vocab_add(v, "ab\xff", 3), 6 + 20000);
    assert_int_equal(qd_vocab_find(v, "ab\xfe", 3), QD_TOK_UNK);
    qd_vocab_free(v);
    qd_vocab_free(NULL);
}

static const char *const corpus[] = {
    "What is the best way to learn Python?",
    "What is the best way to learn C?",
    "How do I learn python fast?",
    "Is Python better than C for beginners?",
    "what is love?",
    "Why is the sky blue?",
    "Why is the SKY blue??",
    "",
    "Caf\xc3\xa9 or cafe\xcc\x81: same word?",
    "zebra zebra zebra apple apple mango",
};
#define NCORPUS (sizeof corpus / sizeof corpus[0])

typedef struct wordcount {
    char w[QD_TOK_MAX_BYTES + 1];
    uint32_t count;
} wordcount;

static int wc_by_word(const void *a, const void *b)
{
    return strcmp(((const wordcount *)a)->w, ((const wordcount *)b)->w);
}

static int wc_by_rank(const void *a, const void *b)
{
    const wordcount *x = a, *y = b;
    if (x->count != y->count)
        return x->count > y->count ? -1 : 1;
    return strcmp(x->w, y->w);
}

/* The expected vocabulary order, counted naively from the split tokens. */
static size_t expected_ranking(wordcount *out, size_t max, uint32_t min_count)
{
    qd_tokbuf tb;
    qd_tokbuf_init(&tb);
    size_t n = 0;
    for (size_t q = 0; q < NCORPUS; q++) {
        assert_int_equal(qd_tok_split(&tb, corpus[q], strlen(corpus[q]), 0), 0);
        for (size_t t = 0; t < tb.n; t++) {
            assert_true(n < max);
            memcpy(out[n].w, tb.text + tb.start[t], tb.len[t]);
            out[n].w[tb.len[t]] = '\0';
            out[n].count = 1;
            n++;
        }
    }
    qd_tokbuf_free(&tb);
    qsort(out, n, sizeof *out, wc_by_word);
    size_t u = 0;
    for (size_t i = 0; i < n; i++) {
        if (u && strcmp(out[u - 1].w, out[i].w) == 0)
            out[u - 1].count++;
        else
            out[u++] = out[i];
    }
    size_t k = 0;
    for (size_t i = 0; i < u; i++)
        if (out[i].count >= min_count)
            out[k++] = out[i];
    qsort(out, k, sizeof *out, wc_by_rank);
    return k;
}

/* Builds a vocabulary from the corpus, questions taken in the order of perm. */
static int build_vocab(const size_t *perm, uint32_t min_count, size_t max_words, qd_vocab **out)
{
    qd_tokbuf tb;
    qd_tokbuf_init(&tb);
    int rc = 0;
    *out = NULL;
    qd_vocab_counter *c = qd_vocab_counter_new();
    if (!c) {
        rc = QD_ERR_NOMEM;
        goto done;
    }
    for (size_t i = 0; i < NCORPUS; i++) {
        const char *q = corpus[perm ? perm[i] : i];
        if ((rc = qd_tok_split(&tb, q, strlen(q), 0)) || (rc = qd_vocab_counter_add(c, &tb)))
            goto done;
    }
    rc = qd_vocab_from_counter(c, min_count, max_words, out);
done:
    qd_vocab_counter_free(c);
    qd_tokbuf_free(&tb);
    return rc;
}

/* Asserts that v holds exactly want[0..n) as ids 2..n+1. */
static void assert_vocab_is(const qd_vocab *v, const wordcount *want, size_t n)
{
    assert_int_equal(qd_vocab_size(v), QD_TOK_NRESERVED + n);
    for (size_t i = 0; i < n; i++) {
        size_t len;
        const char *w = qd_vocab_word(v, (int32_t)(QD_TOK_NRESERVED + i), &len);
        assert_non_null(w);
        assert_string_equal(w, want[i].w);
        assert_int_equal(qd_vocab_find(v, w, len), (int32_t)(QD_TOK_NRESERVED + i));
    }
}

static void test_vocab_from_counter(void **state)
{
    (void)state;
    wordcount want[256];
    for (uint32_t min_count = 0; min_count <= 3; min_count++) {
        size_t n = expected_ranking(want, 256, min_count);
        qd_vocab *v;
        assert_int_equal(build_vocab(NULL, min_count, 0, &v), 0);
        assert_vocab_is(v, want, n);
        qd_vocab_free(v);
        /* max_words keeps the head of the same ranking. */
        assert_int_equal(build_vocab(NULL, min_count, 5, &v), 0);
        assert_vocab_is(v, want, n < 5 ? n : 5);
        qd_vocab_free(v);
    }
    /* Min count 2 drops singletons: "love" is seen once, "python" thrice. */
    qd_vocab *v;
    assert_int_equal(build_vocab(NULL, 2, 0, &v), 0);
    assert_int_equal(qd_vocab_find(v, "love", 4), QD_TOK_UNK);
    assert_true(qd_vocab_find(v, "python", 6) >= QD_TOK_NRESERVED);
    /* "Café" and "café" precomposed and decomposed are one word counted twice. */
    assert_true(qd_vocab_find(v, "cafe\xcc\x81", 6) >= QD_TOK_NRESERVED);
    qd_vocab_free(v);

    /* Determinism: any question order gives the same vocabulary. */
    size_t n = expected_ranking(want, 256, 1);
    uint64_t rng = 4242;
    size_t perm[NCORPUS];
    for (int round = 0; round < 20; round++) {
        for (size_t i = 0; i < NCORPUS; i++)
            perm[i] = i;
        for (size_t i = NCORPUS - 1; i > 0; i--) {
            size_t j = qt_rand(&rng) % (i + 1), t = perm[i];
            perm[i] = perm[j];
            perm[j] = t;
        }
        assert_int_equal(build_vocab(perm, 1, 0, &v), 0);
        assert_vocab_is(v, want, n);
        qd_vocab_free(v);
    }
    /* An empty counter gives the reserved ids only. */
    qd_vocab_counter *c = qd_vocab_counter_new();
    assert_non_null(c);
    assert_int_equal(qd_vocab_from_counter(c, 1, 0, &v), 0);
    assert_int_equal(qd_vocab_size(v), QD_TOK_NRESERVED);
    qd_vocab_free(v);
    qd_vocab_counter_free(c);
    qd_vocab_counter_free(NULL);
}

static void test_vocab_alloc_failures(void **state)
{
    (void)state;
    wordcount want[256];
    size_t n = expected_ranking(want, 256, 1);
    int failures = 0;
    for (long k = 0;; k++) {
        qd_vocab *v = NULL;
        qd_alloc_fail_after(k, 1);
        int rc = build_vocab(NULL, 1, 0, &v);
        qd_alloc_fail_after(-1, 0);
        if (rc == 0) {
            assert_vocab_is(v, want, n);
            qd_vocab_free(v);
            break;
        }
        assert_int_equal(rc, QD_ERR_NOMEM);
        assert_null(v);
        failures++;
    }
    assert_true(failures > 5);

    /* One failed allocation, then retrying the same call: a failed counter_add must
     * have counted nothing, or the counts (and so the ranking) would be off. */
    for (long k = 0; k < 200; k++) {
        qd_tokbuf tb;
        qd_tokbuf_init(&tb);
        qd_vocab_counter *c = qd_vocab_counter_new();
        assert_non_null(c);
        qd_alloc_fail_after(k, 0);
        for (size_t i = 0; i < NCORPUS; i++) {
            int rc;
            while ((rc = qd_tok_split(&tb, corpus[i], strlen(corpus[i]), 0)) == QD_ERR_NOMEM)
                ;
            assert_int_equal(rc, 0);
            while ((rc = qd_vocab_counter_add(c, &tb)) == QD_ERR_NOMEM)
                ;
            assert_int_equal(rc, 0);
        }
        qd_vocab *v;
        int rc;
        while ((rc = qd_vocab_from_counter(c, 1, 0, &v)) == QD_ERR_NOMEM)
            ;
        qd_alloc_fail_after(-1, 0);
        assert_int_equal(rc, 0);
        assert_vocab_is(v, want, n);
        qd_vocab_free(v);
        qd_vocab_counter_free(c);
        qd_tokbuf_free(&tb);
    }
    /* qd_vocab_add under failure leaves the vocabulary as it was. */
    for (long k = 0; k < 20; k++) {
        qd_vocab *v = qd_vocab_new();
        assert_non_null(v);
        char w[16];
        for (int i = 0; i < 100; i++) {
            int len = snprintf(w, sizeof w, "x%d", i);
            qd_alloc_fail_after(k, 0);
            int32_t id = qd_vocab_add(v, w, (size_t)len);
            qd_alloc_fail_after(-1, 0);
            if (id == QD_ERR_NOMEM) {
                assert_int_equal(qd_vocab_size(v), 2 + i);
                assert_int_equal(qd_vocab_find(v, w, (size_t)len), QD_TOK_UNK);
                id = qd_vocab_add(v, w, (size_t)len);
            }
            assert_int_equal(id, 2 + i);
        }
        for (int i = 0; i < 100; i++) {
            int len = snprintf(w, sizeof w, "x%d", i);
            assert_int_equal(qd_vocab_find(v, w, (size_t)len), 2 + i);
        }
        qd_vocab_free(v);
    }
}

/* --- encoding ---------------------------------------------------------------------- */

/* FNV-1a 32, written out again for the check. */
static uint32_t fnv1a32(const unsigned char *s, size_t n)
{
    uint32_t h = 0x811c9dc5u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ s[i]) * 0x01000193u;
    return h;
}

static void test_ngram_hash_known_values(void **state)
{
    (void)state;
    /* Test vectors of the FNV-1a 32-bit specification. */
    assert_int_equal(qd_tok_ngram_hash("", 0), 0x811c9dc5u);
    assert_int_equal(qd_tok_ngram_hash("a", 1), 0xe40c292cu);
    assert_int_equal(qd_tok_ngram_hash("foobar", 6), 0xbf9cf968u);
    /* Continued piece by piece (as the tokenizer does), the same hash. */
    assert_int_equal(qd_tok_ngram_hash_more(qd_tok_ngram_hash("foo", 3), "bar", 3),
                     0xbf9cf968u);
    assert_int_equal(qd_tok_ngram_hash_more(qd_tok_ngram_hash("", 0), "a", 1), 0xe40c292cu);
}

/* The rows one token should get, computed independently: code points of "<tok>" with
 * utf8proc_iterate, n-grams by start then length. Returns the count. */
static size_t expected_rows(const qd_vocab *v, const qd_tok_cfg *cfg, const char *tok,
                            size_t n, int32_t *rows)
{
    size_t r = 0;
    int32_t id = qd_vocab_find(v, tok, n);
    if (cfg->ngram_buckets == 0) {
        rows[r++] = id;
        return r;
    }
    if (id != QD_TOK_UNK)
        rows[r++] = id;
    unsigned char w[QD_TOK_MAX_BYTES + 2];
    size_t off[QD_TOK_MAX_BYTES + 3], L = 0, nb = n + 2;
    w[0] = '<';
    memcpy(w + 1, tok, n);
    w[n + 1] = '>';
    for (size_t i = 0; i < nb;) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t k = utf8proc_iterate(w + i, (utf8proc_ssize_t)(nb - i), &cp);
        assert_true(k > 0);
        off[L++] = i;
        i += (size_t)k;
    }
    off[L] = nb;
    for (size_t i = 0; i < L; i++)
        for (size_t len = cfg->ngram_min; len <= cfg->ngram_max && i + len <= L; len++)
            rows[r++] = (int32_t)(qd_vocab_size(v) +
                                  fnv1a32(w + off[i], off[i + len] - off[i]) %
                                      cfg->ngram_buckets);
    if (r == 0)
        rows[r++] = QD_TOK_UNK;
    return r;
}

static const char *const questions[] = {
    "What is the best way to learn Python?",
    "",
    "Is Python better than C for beginners?",
    "Caf\xc3\xa9 na\xc3\xafve \xf0\x9f\x98\x80 zzzunknownzzz !!",
    "a",
    "   ",
    "Xylophone?",
};
#define NQUESTIONS (sizeof questions / sizeof questions[0])

/* Checks seqs (holding questions[first..]) against an independent computation. */
static void check_seqs(const qd_vocab *v, const qd_tok_cfg *cfg, const qd_tokseqs *s,
                       size_t nq)
{
    qd_tokbuf tb;
    qd_tokbuf_init(&tb);
    int32_t want[4096];
    assert_int_equal(s->n, nq);
    assert_int_equal(s->qoff[0], 0);
    assert_int_equal(s->toff[0], 0);
    assert_int_equal(s->qoff[nq], s->ntok);
    assert_int_equal(s->toff[s->ntok], s->nrows);
    for (size_t q = 0; q < nq; q++) {
        const char *text = questions[q % NQUESTIONS];
        assert_int_equal(qd_tok_split(&tb, text, strlen(text), cfg->max_tokens), 0);
        assert_int_equal(qd_tokseqs_len(s, q), tb.n);
        for (size_t t = 0; t < tb.n; t++) {
            size_t tok = s->qoff[q] + t;
            size_t nw = expected_rows(v, cfg, tb.text + tb.start[t], tb.len[t], want);
            assert_int_equal(s->toff[tok + 1] - s->toff[tok], nw);
            assert_memory_equal(s->rows + s->toff[tok], want, nw * sizeof *want);
        }
    }
    qd_tokbuf_free(&tb);
}

static qd_vocab *small_vocab(void)
{
    qd_vocab *v = qd_vocab_new();
    assert_non_null(v);
    static const char *const words[] = {"what", "is", "the", "best", "way", "to", "learn",
                                        "python", "?", "a", "cafe\xcc\x81", "!"};
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
        assert_int_equal(qd_vocab_add(v, words[i], strlen(words[i])), (int32_t)(2 + i));
    return v;
}

static void test_encode_without_ngrams(void **state)
{
    (void)state;
    qd_vocab *v = small_vocab();
    qd_tok_cfg cfg = {0, 0, 0, 0};
    qd_tokbuf tb;
    qd_tokbuf_init(&tb);
    qd_tokseqs s;
    qd_tokseqs_init(&s);

    const char *q = "What is the best WAY to learn Rust?";
    assert_int_equal(qd_tok_encode(v, &cfg, &tb, q, strlen(q), &s), 0);
    static const int32_t want[] = {2, 3, 4, 5, 6, 7, 8, QD_TOK_UNK, 10};
    assert_int_equal(s.n, 1);
    assert_int_equal(s.ntok, 9);
    assert_int_equal(s.nrows, 9);
    for (size_t t = 0; t < 9; t++) {
        assert_int_equal(s.toff[t], t);
        assert_int_equal(s.rows[t], want[t]);
    }
    qd_tokseqs_clear(&s);
    assert_int_equal(s.n, 0);

    for (size_t q2 = 0; q2 < 3 * NQUESTIONS; q2++) {
        const char *text = questions[q2 % NQUESTIONS];
        assert_int_equal(qd_tok_encode(v, &cfg, &tb, text, strlen(text), &s), 0);
    }
    check_seqs(v, &cfg, &s, 3 * NQUESTIONS);
    assert_int_equal(qd_tokseqs_len(&s, 1), 0); /* the empty question */

    /* max_tokens applies. */
    qd_tokseqs_clear(&s);
    cfg.max_tokens = 3;
    for (size_t q2 = 0; q2 < NQUESTIONS; q2++) {
        const char *text = questions[q2];
        assert_int_equal(qd_tok_encode(v, &cfg, &tb, text, strlen(text), &s), 0);
        assert_true(qd_tokseqs_len(&s, q2) <= 3);
    }
    check_seqs(v, &cfg, &s, NQUESTIONS);
    assert_int_equal(qd_tokseqs_len(&s, 0), 3);

    qd_tokseqs_free(&s);
    qd_tokseqs_free(NULL);
    qd_tokbuf_free(&tb);
    qd_vocab_free(v);
}

static void test_encode_with_ngrams(void **state)
{
    (void)state;
    qd_vocab *v = small_vocab();
    qd_tokbuf tb;
    qd_tokbuf_init(&tb);
    qd_tokseqs s;
    qd_tokseqs_init(&s);
    static const qd_tok_cfg cfgs[] = {
        {0, 3, 6, 100000}, {0, 1, 1, 7}, {0, 2, 100, 1 << 20}, {16, 3, 5, 1000}, {0, 5, 5, 50},
    };
    for (size_t c = 0; c < sizeof cfgs / sizeof cfgs[0]; c++) {
        qd_tokseqs_clear(&s);
        for (size_t q = 0; q < 2 * NQUESTIONS; q++) {
            const char *text = questions[q % NQUESTIONS];
            assert_int_equal(qd_tok_encode(v, &cfgs[c], &tb, text, strlen(text), &s), 0);
        }
        check_seqs(v, &cfgs[c], &s, 2 * NQUESTIONS);
        for (size_t r = 0; r < s.nrows; r++)
            assert_true(s.rows[r] >= 0 &&
                        (size_t)s.rows[r] < qd_vocab_size(v) + cfgs[c].ngram_buckets);
    }

    /* A hand-checked case: "a" is known, "<a>" has n-grams "<a", "a>" (2) and "<a>" (3). */
    qd_tok_cfg cfg = {0, 2, 3, 1000};
    qd_tokseqs_clear(&s);
    assert_int_equal(qd_tok_encode(v, &cfg, &tb, "A", 1, &s), 0);
    int32_t V = (int32_t)qd_vocab_size(v);
    assert_int_equal(s.nrows, 4);
    assert_int_equal(s.rows[0], 11);
    assert_int_equal(s.rows[1], V + (int32_t)(fnv1a32((const unsigned char *)"<a", 2) % 1000));
    assert_int_equal(s.rows[2], V + (int32_t)(fnv1a32((const unsigned char *)"<a>", 3) % 1000));
    assert_int_equal(s.rows[3], V + (int32_t)(fnv1a32((const unsigned char *)"a>", 2) % 1000));
    /* An unknown one-letter word with ngram_min 4 has no n-gram: it gets UNK. */
    cfg = (qd_tok_cfg){0, 4, 6, 1000};
    qd_tokseqs_clear(&s);
    assert_int_equal(qd_tok_encode(v, &cfg, &tb, "z a", 3, &s), 0);
    assert_int_equal(s.nrows, 2);
    assert_int_equal(s.rows[0], QD_TOK_UNK);
    assert_int_equal(s.rows[1], 11);

    /* Inconsistent settings. */
    cfg = (qd_tok_cfg){0, 0, 3, 1000};
    assert_int_equal(qd_tok_encode(v, &cfg, &tb, "a", 1, &s), QD_ERR_INVAL);
    cfg = (qd_tok_cfg){0, 4, 3, 1000};
    assert_int_equal(qd_tok_encode(v, &cfg, &tb, "a", 1, &s), QD_ERR_INVAL);
    cfg = (qd_tok_cfg){0, 3, 3, UINT32_MAX};
    assert_int_equal(qd_tok_encode(v, &cfg, &tb, "a", 1, &s), QD_ERR_RANGE);
    assert_int_equal(s.n, 1); /* nothing appended by the failed calls */

    qd_tokseqs_free(&s);
    qd_tokbuf_free(&tb);
    qd_vocab_free(v);
}

static void test_encode_alloc_failures(void **state)
{
    (void)state;
    qd_vocab *v = small_vocab();
    static const qd_tok_cfg cfgs[] = {{0, 0, 0, 0}, {0, 3, 6, 1000}};
    for (size_t c = 0; c < 2; c++) {
        /* Sticky: every allocation from the k-th on fails; each call either succeeds
         * or reports QD_ERR_NOMEM with the batch unchanged. */
        for (long k = 0; k < 40; k++) {
            qd_tokbuf tb;
            qd_tokbuf_init(&tb);
            qd_tokseqs s;
            qd_tokseqs_init(&s);
            qd_alloc_fail_after(k, 1);
            size_t ok = 0;
            for (size_t q = 0; q < 60; q++) {
                const char *text = questions[q % NQUESTIONS];
                size_t n0 = s.n, t0 = s.ntok, r0 = s.nrows;
                int rc = qd_tok_encode(v, &cfgs[c], &tb, text, strlen(text), &s);
                if (rc) {
                    assert_int_equal(rc, QD_ERR_NOMEM);
                    assert_int_equal(s.n, n0);
                    assert_int_equal(s.ntok, t0);
                    assert_int_equal(s.nrows, r0);
                    break;
                }
                ok++;
            }
            qd_alloc_fail_after(-1, 0);
            /* What was appended before the failure is intact and correct. */
            if (ok)
                check_seqs(v, &cfgs[c], &s, ok);
            qd_tokseqs_free(&s);
            qd_tokbuf_free(&tb);
        }
        /* One failure at a time, retried: the batch ends up exactly right. */
        for (long k = 0; k < 40; k++) {
            qd_tokbuf tb;
            qd_tokbuf_init(&tb);
            qd_tokseqs s;
            qd_tokseqs_init(&s);
            qd_alloc_fail_after(k, 0);
            for (size_t q = 0; q < 60; q++) {
                const char *text = questions[q % NQUESTIONS];
                int rc;
                while ((rc = qd_tok_encode(v, &cfgs[c], &tb, text, strlen(text), &s)) ==
                       QD_ERR_NOMEM)
                    ;
                assert_int_equal(rc, 0);
            }
            qd_alloc_fail_after(-1, 0);
            check_seqs(v, &cfgs[c], &s, 60);
            qd_tokseqs_free(&s);
            qd_tokbuf_free(&tb);
        }
    }
    /* A failing split leaves no tokens behind. */
    qd_tokbuf tb;
    qd_tokbuf_init(&tb);
    qd_alloc_fail_after(0, 1);
    assert_int_equal(qd_tok_split(&tb, "hello world", 11, 0), QD_ERR_NOMEM);
    qd_alloc_fail_after(-1, 0);
    assert_int_equal(tb.n, 0);
    qd_tokbuf_free(&tb);
    qd_vocab_free(v);
}

/* --- the real questions -------------------------------------------------------------- */

static void test_quora_questions(void **state)
{
    (void)state;
    const char *path = qt_path(qt_data_dir(), "quora/questions.tsv");
    struct stat st;
    if (stat(path, &st) != 0) {
        print_message("skipping: %s not found\n", path);
        skip();
    }
    size_t len;
    char *data = qt_read_file(path, &len);

    /* Cut the file into questions (second column), each copied to an exact buffer. */
    size_t nq = 0, cap = 1 << 16;
    char **qs = malloc(cap * sizeof *qs);
    size_t *ql = malloc(cap * sizeof *ql);
    assert_non_null(qs);
    assert_non_null(ql);
    for (char *line = data, *end = data + len; line < end;) {
        char *nl = memchr(line, '\n', (size_t)(end - line));
        char *le = nl ? nl : end;
        char *tab = memchr(line, '\t', (size_t)(le - line));
        if (tab && strncmp(line, "qid\t", 4) != 0) {
            if (nq == cap) {
                cap *= 2;
                qs = realloc(qs, cap * sizeof *qs);
                ql = realloc(ql, cap * sizeof *ql);
                assert_non_null(qs);
                assert_non_null(ql);
            }
            ql[nq] = (size_t)(le - tab - 1);
            qs[nq] = exact_copy(tab + 1, ql[nq]);
            nq++;
        }
        line = le + 1;
    }
    free(data);
    assert_true(nq > 60000);

    qd_tokbuf tb, tb2;
    qd_tokbuf_init(&tb);
    qd_tokbuf_init(&tb2);
    qd_vocab_counter *c = qd_vocab_counter_new();
    assert_non_null(c);
    size_t ntok = 0;
    for (size_t i = 0; i < nq; i++) {
        assert_int_equal(qd_tok_split(&tb, qs[i], ql[i], 0), 0);
        ntok += tb.n;
        for (size_t t = 0; t < tb.n; t++) {
            const char *w = tb.text + tb.start[t];
            size_t n = tb.len[t];
            assert_true(n >= 1 && n <= QD_TOK_MAX_BYTES);
            assert_true(valid_utf8((const unsigned char *)w, n));
            for (size_t j = 0; j < n; j++)
                assert_false(w[j] == ' ' || (w[j] >= 'A' && w[j] <= 'Z'));
            /* Normalization is idempotent: a token splits into itself. */
            assert_int_equal(qd_tok_split(&tb2, w, n, 0), 0);
            assert_int_equal(tb2.n, 1);
            assert_int_equal(tb2.len[0], n);
            assert_memory_equal(tb2.text, w, n);
        }
        assert_int_equal(qd_vocab_counter_add(c, &tb), 0);
    }
    qd_vocab *v;
    assert_int_equal(qd_vocab_from_counter(c, 2, 0, &v), 0);
    qd_vocab_counter_free(c);

    /* Timing, printed for information only (never asserted). */
    double t0 = qd_now();
    size_t sink = 0;
    for (int rep = 0; rep < 3; rep++)
        for (size_t i = 0; i < nq; i++) {
            assert_int_equal(qd_tok_split(&tb, qs[i], ql[i], 0), 0);
            sink += tb.n;
        }
    double t1 = qd_now();
    qd_tokseqs s;
    qd_tokseqs_init(&s);
    qd_tok_cfg plain = {100, 0, 0, 0}, ngram = {100, 3, 6, 200000};
    for (size_t i = 0; i < nq; i++) {
        if (i % 256 == 0)
            qd_tokseqs_clear(&s);
        assert_int_equal(qd_tok_encode(v, &plain, &tb, qs[i], ql[i], &s), 0);
    }
    double t2 = qd_now();
    for (size_t i = 0; i < nq; i++) {
        if (i % 256 == 0)
            qd_tokseqs_clear(&s);
        assert_int_equal(qd_tok_encode(v, &ngram, &tb, qs[i], ql[i], &s), 0);
    }
    double t3 = qd_now();
    assert_int_equal(sink, 3 * ntok);
    print_message("%zu questions, %zu tokens, vocabulary (min count 2) %zu ids\n", nq, ntok,
                  qd_vocab_size(v));
    print_message("split: %.0f questions/s (%.2f us each); encode: %.0f/s; encode with "
                  "n-grams 3..6: %.0f/s\n",
                  3 * nq / (t1 - t0), (t1 - t0) / (3 * nq) * 1e6, nq / (t2 - t1),
                  nq / (t3 - t2));

    qd_tokseqs_free(&s);
    qd_vocab_free(v);
    qd_tokbuf_free(&tb);
    qd_tokbuf_free(&tb2);
    for (size_t i = 0; i < nq; i++)
        free(qs[i]);
    free(qs);
    free(ql);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty_and_blank),
        cmocka_unit_test(test_punctuation_one_token_each),
        cmocka_unit_test(test_case_folding),
        cmocka_unit_test(test_digits),
        cmocka_unit_test(test_emoji),
        cmocka_unit_test(test_nul_separates),
        cmocka_unit_test(test_invalid_utf8),
        cmocka_unit_test(test_random_bytes),
        cmocka_unit_test(test_random_text_matches_reference),
        cmocka_unit_test(test_long_tokens_cut),
        cmocka_unit_test(test_megabyte),
        cmocka_unit_test(test_tokbuf_reuse_no_growth),
        cmocka_unit_test(test_vocab_basics),
        cmocka_unit_test(test_vocab_from_counter),
        cmocka_unit_test(test_vocab_alloc_failures),
        cmocka_unit_test(test_ngram_hash_known_values),
        cmocka_unit_test(test_encode_without_ngrams),
        cmocka_unit_test(test_encode_with_ngrams),
        cmocka_unit_test(test_encode_alloc_failures),
        cmocka_unit_test(test_quora_questions),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
