/*
 * tok.h - from UTF-8 text to the embedding rows the encoder reads.
 *
 * Three steps, each usable alone:
 *   1. qd_tok_split(): normalize and split. The text is decoded as UTF-8 (each invalid
 *      sequence becomes U+FFFD, so any byte string is accepted and nothing is read
 *      past `len`), case folded and compatibility decomposed with utf8proc (É, é and
 *      e + U+0301 are one letter), and cut into tokens: a word is a run of letters,
 *      combining marks and digits; every other visible character (punctuation, a
 *      symbol, an emoji, U+FFFD) is a token by itself; white space, control
 *      characters and NUL bytes only separate. At most max_tokens tokens are kept.
 *   2. A vocabulary (qd_vocab) maps token strings to ids. Ids 0 and 1 are reserved:
 *      QD_TOK_PAD pads a batch, QD_TOK_UNK stands for any word not in the vocabulary.
 *      Vocabularies are built from training text by counting (qd_vocab_counter) and
 *      keeping the words seen at least min_count times, most frequent first.
 *   3. qd_tok_encode() appends a question to a qd_tokseqs batch: for each token, the
 *      embedding rows to average. Without n-grams that is the one row of the token's
 *      id. With hashed character n-grams (cfg.ngram_buckets > 0) each token also gets
 *      the rows V + hash(g) % buckets of the n-grams g of "<token>" with lengths
 *      ngram_min..ngram_max, and an unknown word is represented by its n-grams alone,
 *      so a misspelt or rare word lands near its neighbours.
 *
 * The exact rules (a reference implementation in another language must follow them):
 *   - Decoding: an ill-formed UTF-8 sequence becomes one U+FFFD per *maximal subpart*
 *     (Unicode 15 section 3.9; Python's bytes.decode("utf-8", "replace") does the
 *     same): a truncated sequence ("E2 82" at the end, or before a non-continuation
 *     byte) is one U+FFFD; a lone continuation byte, C0, C1, F5..FF, and each byte of
 *     an overlong form ("C0 AF", "E0 80 AF") or of an encoded surrogate ("ED A0 80")
 *     is one U+FFFD each.
 *   - Normalization, per code point: utf8proc_decompose_char() with UTF8PROC_DECOMPOSE
 *     | COMPAT | CASEFOLD | IGNORE (NFKD + case folding + removal of default-ignorable
 *     code points such as U+00AD soft hyphen, U+200B..U+200D, U+FE0F), then marks are
 *     put in canonical order within a word. Tokens therefore hold decomposed text:
 *     "é" is the 3 bytes "e" U+0301. "ＡＢＣ" is "abc", "ß" is "ss", "…" is "." "." ".".
 *   - Classes, by the general category of each *normalized* code point: L*, M*, N*
 *     make words; Z*, Cc, Cf separate; P*, S*, Co (private use) and Cn (unassigned,
 *     e.g. an emoji newer than utf8proc's tables) are tokens by themselves.
 *   - Emoji: each emoji code point is its own token. A multi-code-point emoji loses its
 *     joiners and variation selectors (default-ignorable) and keeps the rest as
 *     separate tokens: "❤️" (U+2764 U+FE0F) is the one token "❤"; "👍🏽" (thumbs up +
 *     skin tone modifier) is two tokens; the family "👨‍👩‍👧" (three people joined by
 *     U+200D) is three; a flag is its two regional indicator letters.
 *   - A word longer than QD_TOK_MAX_BYTES bytes is cut into pieces of at most that
 *     many bytes, each cut at a code point boundary (so a piece may be shorter, and
 *     may begin with a combining mark); every piece is a token.
 *   - n-grams: the n-grams of "<" token ">" are taken in code points, by start
 *     position and then by length (fastText's order); all of them are included, the
 *     whole "<token>" too when its length is within ngram_min..ngram_max. A known
 *     token's rows are [id, n-gram rows...]; an unknown one's just its n-gram rows, or
 *     [QD_TOK_UNK] if it has none (fewer than ngram_min - 2 code points), since a
 *     token is the mean of its rows and needs at least one.
 */
#ifndef QDUP_TOK_H
#define QDUP_TOK_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { QD_TOK_PAD = 0, QD_TOK_UNK = 1, QD_TOK_NRESERVED = 2 };

/* Longest token kept, in bytes; longer words are cut into pieces of at most this size
 * (at code point boundaries). Also the longest word a vocabulary holds. */
#define QD_TOK_MAX_BYTES 64

/* Tokenizer settings. They are part of a model file: a model is only meaningful with
 * the tokenizer it was trained with. */
typedef struct qd_tok_cfg {
    uint32_t max_tokens;    /* tokens kept per question; later ones are dropped */
    uint32_t ngram_min;     /* shortest character n-gram, in code points (0: none) */
    uint32_t ngram_max;     /* longest character n-gram, in code points */
    uint32_t ngram_buckets; /* hashed n-gram rows after the vocabulary (0: none) */
} qd_tok_cfg;

/* Scratch space for qd_tok_split(), reused across calls to avoid allocations. One per
 * thread. Tokens are (start, len) spans into `text`, which holds the normalized
 * question; token i is text[start[i] .. start[i] + len[i]). */
typedef struct qd_tokbuf {
    char *text;        /* normalized UTF-8 of the current question */
    size_t text_cap;   /* bytes allocated for text */
    uint32_t *start;   /* (n) byte offset of each token in text */
    uint32_t *len;     /* (n) byte length of each token */
    size_t n;          /* tokens in the current question */
    size_t cap;        /* entries allocated in start and len */
} qd_tokbuf;

void qd_tokbuf_init(qd_tokbuf *tb);
void qd_tokbuf_free(qd_tokbuf *tb);

/* Normalizes and splits text[0..len) into tb (replacing what was there). Stops after
 * max_tokens tokens (0 means no limit). Returns 0, QD_ERR_NOMEM, or QD_ERR_RANGE if the
 * normalized text would reach 4 GiB; on error tb holds no tokens (tb->n == 0). Token
 * bytes are well-formed UTF-8, 1..QD_TOK_MAX_BYTES long, and not NUL-terminated. */
int qd_tok_split(qd_tokbuf *tb, const char *text, size_t len, size_t max_tokens);

/* --- vocabulary ----------------------------------------------------------------- */

typedef struct qd_vocab qd_vocab;

/* An empty vocabulary holding only the reserved ids. */
qd_vocab *qd_vocab_new(void);
void qd_vocab_free(qd_vocab *v);
/* Number of ids, the reserved ones included. */
size_t qd_vocab_size(const qd_vocab *v);
/* The id of s[0..n), or QD_TOK_UNK (also for n == 0 or n > QD_TOK_MAX_BYTES). */
int32_t qd_vocab_find(const qd_vocab *v, const char *s, size_t n);
/* Appends a word (or returns its existing id). Returns the id or a negative QD_ERR_*:
 * QD_ERR_INVAL unless 1 <= n <= QD_TOK_MAX_BYTES, QD_ERR_NOMEM (v unchanged),
 * QD_ERR_RANGE past INT32_MAX ids. Any bytes are accepted (no UTF-8 check). */
int32_t qd_vocab_add(qd_vocab *v, const char *s, size_t n);
/* The word of id (NUL-terminated; its length in *n if n is not NULL), or NULL (and
 * *n = 0) for a reserved or unknown id. */
const char *qd_vocab_word(const qd_vocab *v, int32_t id, size_t *n);

/* Counting words to build a vocabulary from training text. */
typedef struct qd_vocab_counter qd_vocab_counter;
qd_vocab_counter *qd_vocab_counter_new(void);
void qd_vocab_counter_free(qd_vocab_counter *c);
/* Counts every token of one question (already split). On QD_ERR_NOMEM nothing of the
 * question is counted. */
int qd_vocab_counter_add(qd_vocab_counter *c, const qd_tokbuf *tb);
/* Keeps the words counted at least min_count times, at most max_words of them (0: no
 * limit), most frequent first, ties broken by byte order, so the result depends only
 * on the counts. Ids are given in that order from QD_TOK_NRESERVED on. */
int qd_vocab_from_counter(const qd_vocab_counter *c, uint32_t min_count, size_t max_words,
                          qd_vocab **out);

/* --- token ids for the encoder ------------------------------------------------------ */

/* A batch of questions as embedding rows (CSR twice over):
 * question q has tokens qoff[q] .. qoff[q+1]-1, token t averages the embedding rows
 * rows[toff[t] .. toff[t+1]-1]. A question may have no tokens (an empty text); a
 * token always has at least one row. qoff and toff are NULL until the first question is
 * appended (qoff[0] and toff[0] are then 0). */
typedef struct qd_tokseqs {
    size_t n;          /* questions */
    uint32_t *qoff;    /* (n + 1) first token of each question */
    size_t ntok;       /* tokens in all questions */
    uint32_t *toff;    /* (ntok + 1) first row of each token */
    size_t nrows;      /* rows in all tokens */
    int32_t *rows;     /* (nrows) embedding rows */
    size_t cap_q, cap_t, cap_r; /* allocated entries of qoff, toff, rows */
} qd_tokseqs;

void qd_tokseqs_init(qd_tokseqs *s);
void qd_tokseqs_clear(qd_tokseqs *s); /* keeps the memory */
void qd_tokseqs_free(qd_tokseqs *s);
/* Number of tokens of question q. */
static inline uint32_t qd_tokseqs_len(const qd_tokseqs *s, size_t q)
{
    return s->qoff[q + 1] - s->qoff[q];
}

/* Splits text with tb and appends it to out as one question. Returns 0, QD_ERR_NOMEM
 * or QD_ERR_RANGE (out then unchanged, apart from perhaps more memory), or QD_ERR_INVAL
 * for n-grams with ngram_min == 0 or ngram_max < ngram_min. */
int qd_tok_encode(const qd_vocab *v, const qd_tok_cfg *cfg, qd_tokbuf *tb, const char *text,
                  size_t len, qd_tokseqs *out);

/* The hash that picks an n-gram's bucket: FNV-1a 32-bit of its bytes. The tokenizer
 * extends an n-gram one code point at a time, so it continues the hash of the shorter
 * one: qd_tok_ngram_hash_more(qd_tok_ngram_hash(a, n), b, m) is the hash of a then b. */
uint32_t qd_tok_ngram_hash(const char *s, size_t n);
uint32_t qd_tok_ngram_hash_more(uint32_t h, const char *s, size_t n);

#ifdef __cplusplus
}
#endif

#endif
