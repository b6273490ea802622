/*
 * input.c - the id and text rules of input.h.
 *
 * The checks run in a fixed order (empty, too long, NUL, UTF-8, then the id's control
 * characters or the text's white space) so that a value breaking several rules is
 * always reported for the same one, whichever entry point sees it.
 */
#include "qdup/input.h"

#include <stdint.h>
#include <string.h>

#include "qdup/common.h"

/* Offset of the first byte of s[0..n) that does not begin a well-formed UTF-8
 * sequence, or n. */
static size_t utf8_bad_at(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        if (p[i] < 0x80) {
            i++;
            continue;
        }
        int32_t cp;
        size_t k = qd_utf8_decode(p + i, n - i, &cp);
        if (cp < 0)
            return i;
        i += k;
    }
    return n;
}

/* The rules the two kinds share; what names "id" or "text" in the messages. */
static int check_common(const char *what, const char *s, size_t n, size_t max, char *err,
                        size_t errlen)
{
    size_t bad;
    if (!s || n == 0)
        return qd_errf(err, errlen, QD_ERR_INVAL, "empty %s", what);
    if (n > max)
        return qd_errf(err, errlen, QD_ERR_RANGE, "%s of %zu bytes is over the limit of %zu",
                       what, n, max);
    if (memchr(s, '\0', n))
        return qd_errf(err, errlen, QD_ERR_INVAL, "NUL byte in the %s", what);
    if ((bad = utf8_bad_at(s, n)) != n)
        return qd_errf(err, errlen, QD_ERR_INVAL, "%s is not valid UTF-8 (byte %zu)", what,
                       bad + 1);
    return 0;
}

int qd_input_check_id(const char *s, size_t len, size_t max_len, char *err, size_t errlen)
{
    int rc = check_common("id", s, len, max_len, err, errlen);
    if (rc)
        return rc;
    /* Bytes of a multi-byte sequence are all >= 0x80, so a byte scan finds exactly the
     * code points U+0001..U+001F and U+007F (NUL was refused above). */
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f)
            return qd_errf(err, errlen, QD_ERR_INVAL, "control character in the id (byte %zu)",
                           i + 1);
    }
    return 0;
}

/* qd_input_check_text, the white-space rule only if blank_ok is 0. */
static int check_text(const char *s, size_t len, size_t max_len, int blank_ok, char *err,
                      size_t errlen)
{
    int rc = check_common("text", s, len, max_len, err, errlen);
    if (rc || blank_ok)
        return rc;
    for (size_t i = 0; i < len; i++)
        if (!strchr(" \t\n\r\v\f", s[i]))
            return 0;
    return qd_errf(err, errlen, QD_ERR_INVAL, "empty text (only white space)");
}

int qd_input_check_text(const char *s, size_t len, size_t max_len, char *err, size_t errlen)
{
    return check_text(s, len, max_len, 0, err, errlen);
}

int qd_input_check_question(const char *id, size_t id_len, size_t max_id, const char *text,
                            size_t text_len, size_t max_text, unsigned flags, char *err,
                            size_t errlen)
{
    int rc = qd_input_check_id(id, id_len, max_id, err, errlen);
    return rc ? rc
              : check_text(text, text_len, max_text, (flags & QD_INPUT_BLANK_OK) != 0, err,
                           errlen);
}
