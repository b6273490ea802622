/*
 * input.h - the one rule set for the ids and texts that enter qdup.
 *
 * Every entry point applies these checks: the dump readers (dump.c), the daemon's
 * protocol (proto.c), the store (qd_store_check_item) and the in-memory backend
 * (memidx.c). Owning the rules here means a question that one door accepts is never
 * refused by another, and the error text is the same wherever it is raised.
 *
 *   id:   1..max_len bytes of valid UTF-8 (qd_utf8_decode) without a control
 *         character (U+0000..U+001F, U+007F), since ids end up in logs and in tools'
 *         one-per-line output;
 *   text: 1..max_len bytes of valid UTF-8 without a NUL byte, and not white space
 *         only (space, \t, \n, \r, \v, \f): such a text is as empty as "".
 *
 * Both return 0, QD_ERR_RANGE when the value is longer than max_len, or QD_ERR_INVAL
 * for anything else, with the reason in err ("id of 300 bytes is over the limit of
 * 256", "text is not valid UTF-8 (byte 5)"); the caller adds where (file and line,
 * request field). s may be NULL when len is 0.
 */
#ifndef QDUP_INPUT_H
#define QDUP_INPUT_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

int qd_input_check_id(const char *s, size_t len, size_t max_len, char *err, size_t errlen);
int qd_input_check_text(const char *s, size_t len, size_t max_len, char *err, size_t errlen);

/* qd_input_check_question's flags. */
enum {
    /* A text of white space only passes: for the store (and the in-memory backend),
     * whose batch add reports such a text per item as QD_STORE_EMPTY (no words), where
     * a failed check would refuse the whole batch. */
    QD_INPUT_BLANK_OK = 1,
};

/* A question: its id, then its text; the first failure is the one reported. */
int qd_input_check_question(const char *id, size_t id_len, size_t max_id, const char *text,
                            size_t text_len, size_t max_text, unsigned flags, char *err,
                            size_t errlen);

#ifdef __cplusplus
}
#endif

#endif
