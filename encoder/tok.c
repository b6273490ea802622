/*
 * tok.c - normalizing and splitting text, and turning tokens into embedding rows.
 *
 * qd_tok_split() makes one pass over the input bytes and writes the normalized tokens
 * straight into the qd_tokbuf. Two paths share one small state machine:
 *   - ASCII bytes (< 0x80), by far the most common, are classified through a 128-entry
 *     table and lower-cased inline. No ASCII character changes under NFKD, and case
 *     folding only maps A-Z to a-z, so this path gives exactly what utf8proc would.
 *   - Any other code point is decoded here (so that ill-formed bytes get the Unicode
 *     "maximal subpart" treatment, see utf8_decode()), then case folded, compatibility
 *     decomposed and stripped of default-ignorable code points by one call to
 *     utf8proc_decompose_char(); each resulting code point is classified by its
 *     general category and appended.
 * Classification happens after normalization, so the result is the split of the
 * normalized text: "…" becomes three "." tokens, "ﬁ" the letters "fi", and "™" the
 * letters "tm" (which join a preceding word: "apple™" is "appletm").
 *
 * NFKD also puts combining marks into canonical order. utf8proc_decompose_char() works
 * on one code point, so the reordering is done here: a mark with a non-zero combining
 * class is moved back past the marks of a higher class that precede it. Every code
 * point with a non-zero combining class is a mark (checked over all of Unicode 15 for
 * utf8proc 2.8), and marks are word characters, so the reordering only ever happens
 * inside the word being built. It stops at a cut (a word longer than QD_TOK_MAX_BYTES
 * is split into pieces, and a piece is never rewritten once closed), which only
 * matters for a run of unordered marks straddling a 64-byte boundary.
 *
 * Buffers: before a token is started the text buffer is grown so that it has room for
 * QD_TOK_MAX_BYTES more bytes; since no token (piece) is longer than that, the inner
 * loops never check capacity. Nothing is allocated once the buffers are big enough.
 *
 * qd_tok_encode() turns the tokens into the rows of a qd_tokseqs batch, adding hashed
 * character n-grams when the configuration asks for them (see n-gram notes below).
 */
#include "qdup/tok.h"

#include <string.h>

#include <utf8proc.h>

#include "qdup/common.h"

/* How a code point takes part in splitting. */
enum { C_SEP = 0, C_WORD = 1, C_ONE = 2 };

/* Class of every ASCII byte: controls (NUL included) and spaces separate, letters and
 * digits make words, everything else (punctuation, symbols) is a token by itself. */
static const uint8_t ascii_class[128] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0x00 controls */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0x10 controls */
    0, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, /* 0x20 space !"#$%&'()*+,-./ */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, /* 0x30 0-9 :;<=>? */
    2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0x40 @ A-O */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, /* 0x50 P-Z [\]^_ */
    2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0x60 ` a-o */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 0, /* 0x70 p-z {|}~ DEL */
};

/* Class of every Unicode general category. Letters, marks and numbers make words;
 * spaces, line and paragraph separators, controls and format characters separate
 * (most format characters are default-ignorable and already removed by utf8proc);
 * punctuation, symbols, private-use and unassigned code points (a newer emoji than
 * utf8proc knows is unassigned to it) stand alone. Surrogates never get here. */
static const uint8_t category_class[30] = {
    [UTF8PROC_CATEGORY_CN] = C_ONE,  [UTF8PROC_CATEGORY_LU] = C_WORD,
    [UTF8PROC_CATEGORY_LL] = C_WORD, [UTF8PROC_CATEGORY_LT] = C_WORD,
    [UTF8PROC_CATEGORY_LM] = C_WORD, [UTF8PROC_CATEGORY_LO] = C_WORD,
    [UTF8PROC_CATEGORY_MN] = C_WORD, [UTF8PROC_CATEGORY_MC] = C_WORD,
    [UTF8PROC_CATEGORY_ME] = C_WORD, [UTF8PROC_CATEGORY_ND] = C_WORD,
    [UTF8PROC_CATEGORY_NL] = C_WORD, [UTF8PROC_CATEGORY_NO] = C_WORD,
    [UTF8PROC_CATEGORY_PC] = C_ONE,  [UTF8PROC_CATEGORY_PD] = C_ONE,
    [UTF8PROC_CATEGORY_PS] = C_ONE,  [UTF8PROC_CATEGORY_PE] = C_ONE,
    [UTF8PROC_CATEGORY_PI] = C_ONE,  [UTF8PROC_CATEGORY_PF] = C_ONE,
    [UTF8PROC_CATEGORY_PO] = C_ONE,  [UTF8PROC_CATEGORY_SM] = C_ONE,
    [UTF8PROC_CATEGORY_SC] = C_ONE,  [UTF8PROC_CATEGORY_SK] = C_ONE,
    [UTF8PROC_CATEGORY_SO] = C_ONE,  [UTF8PROC_CATEGORY_ZS] = C_SEP,
    [UTF8PROC_CATEGORY_ZL] = C_SEP,  [UTF8PROC_CATEGORY_ZP] = C_SEP,
    [UTF8PROC_CATEGORY_CC] = C_SEP,  [UTF8PROC_CATEGORY_CF] = C_SEP,
    [UTF8PROC_CATEGORY_CS] = C_SEP,  [UTF8PROC_CATEGORY_CO] = C_ONE,
};

/* The normalization applied to every non-ASCII code point: NFKD, case folding, and
 * removal of default-ignorable code points (soft hyphen, zero-width joiner, variation
 * selectors, ...), as in Unicode's NFKC_Casefold but decomposed. */
#define TOK_UTF8PROC_OPTIONS \
    (UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT | UTF8PROC_CASEFOLD | UTF8PROC_IGNORE)

/* Longest decomposition of one code point with TOK_UTF8PROC_OPTIONS (U+FDFA gives 18). */
#define TOK_MAX_DECOMP 32

#define REPLACEMENT_CHAR 0xFFFD
#define NO_WORD SIZE_MAX

/* --- UTF-8 ---------------------------------------------------------------------------- */

/* Decodes one sequence (s[0] >= 0x80) as qd_utf8_decode does, an ill-formed one as
 * U+FFFD. */
static size_t utf8_decode(const unsigned char *s, size_t n, int32_t *cp)
{
    size_t len = qd_utf8_decode(s, n, cp);
    if (*cp < 0)
        *cp = REPLACEMENT_CHAR;
    return len;
}

/* Writes cp (a valid scalar value) as UTF-8 into d; returns its length. */
static size_t utf8_encode(int32_t cp, char *d)
{
    uint32_t c = (uint32_t)cp;
    if (c < 0x80) {
        d[0] = (char)c;
        return 1;
    }
    if (c < 0x800) {
        d[0] = (char)(0xC0 | (c >> 6));
        d[1] = (char)(0x80 | (c & 0x3F));
        return 2;
    }
    if (c < 0x10000) {
        d[0] = (char)(0xE0 | (c >> 12));
        d[1] = (char)(0x80 | ((c >> 6) & 0x3F));
        d[2] = (char)(0x80 | (c & 0x3F));
        return 3;
    }
    d[0] = (char)(0xF0 | (c >> 18));
    d[1] = (char)(0x80 | ((c >> 12) & 0x3F));
    d[2] = (char)(0x80 | ((c >> 6) & 0x3F));
    d[3] = (char)(0x80 | (c & 0x3F));
    return 4;
}


/* Decodes text we wrote ourselves (well-formed) at s[0..n). */
static int32_t utf8_decode_trusted(const unsigned char *s, size_t n)
{
    int32_t cp;
    if (s[0] < 0x80)
        return s[0];
    utf8_decode(s, n, &cp);
    return cp;
}

/* --- splitting ------------------------------------------------------------------------ */

void qd_tokbuf_init(qd_tokbuf *tb)
{
    memset(tb, 0, sizeof *tb);
}

void qd_tokbuf_free(qd_tokbuf *tb)
{
    if (!tb)
        return;
    qd_free(tb->text);
    qd_free(tb->start);
    qd_free(tb->len);
    memset(tb, 0, sizeof *tb);
}

/* State of one qd_tok_split() call. */
typedef struct split_state {
    qd_tokbuf *tb; /* output; tb->n counts the tokens begun, the open word included */
    size_t out;    /* bytes written to tb->text */
    size_t wstart; /* start of the word being built, or NO_WORD */
    size_t max;    /* token limit (SIZE_MAX: none) */
} split_state;

/* Result of begin_token() when max_tokens is reached; not an error. */
#define SPLIT_STOP 1

/* Closes the open word, if any. */
static inline void end_word(split_state *st)
{
    if (st->wstart != NO_WORD) {
        st->tb->len[st->tb->n - 1] = (uint32_t)(st->out - st->wstart);
        st->wstart = NO_WORD;
    }
}

/* Makes room for one more token of up to QD_TOK_MAX_BYTES bytes. */
static int split_grow(split_state *st)
{
    qd_tokbuf *tb = st->tb;
    if (tb->n == tb->cap) {
        size_t cap = tb->cap ? tb->cap * 2 : 32;
        uint32_t *start = qd_reallocarray(tb->start, cap, sizeof *start);
        if (!start)
            return QD_ERR_NOMEM;
        tb->start = start;
        uint32_t *len = qd_reallocarray(tb->len, cap, sizeof *len);
        if (!len)
            return QD_ERR_NOMEM;
        tb->len = len;
        tb->cap = cap;
    }
    if (st->out + QD_TOK_MAX_BYTES > tb->text_cap) {
        /* Token offsets are 32-bit: a question cannot normalize to 4 GiB. */
        if (st->out + QD_TOK_MAX_BYTES > UINT32_MAX)
            return QD_ERR_RANGE;
        size_t cap = tb->text_cap ? tb->text_cap * 2 : 256;
        if (cap < st->out + QD_TOK_MAX_BYTES)
            cap = st->out + QD_TOK_MAX_BYTES;
        char *text = qd_realloc(tb->text, cap);
        if (!text)
            return QD_ERR_NOMEM;
        tb->text = text;
        tb->text_cap = cap;
    }
    return 0;
}

/* Starts a token at the current output position: 0, SPLIT_STOP once max tokens are
 * there, or an error. The open word must have been closed. */
static inline int begin_token(split_state *st)
{
    qd_tokbuf *tb = st->tb;
    if (tb->n >= st->max)
        return SPLIT_STOP;
    if (tb->n == tb->cap || st->out + QD_TOK_MAX_BYTES > tb->text_cap) {
        int rc = split_grow(st);
        if (rc)
            return rc;
    }
    tb->start[tb->n++] = (uint32_t)st->out;
    return 0;
}

/* Moves the mark just written at text[out .. out+nb) (combining class ccc) back past
 * the marks of the open word with a higher class, so that marks end up in canonical
 * order (a stable sort by class, as NFKD specifies). */
static void reorder_mark(split_state *st, size_t nb, int ccc)
{
    unsigned char *text = (unsigned char *)st->tb->text;
    size_t pos = st->out; /* where the mark goes */
    while (pos > st->wstart) {
        size_t prev = pos - 1;
        while (prev > st->wstart && (text[prev] & 0xC0) == 0x80)
            prev--;
        int32_t pc = utf8_decode_trusted(text + prev, pos - prev);
        int pccc = pc < 0x80 ? 0 : utf8proc_get_property(pc)->combining_class;
        if (pccc <= ccc)
            break;
        pos = prev;
    }
    if (pos == st->out)
        return;
    unsigned char mark[4];
    memcpy(mark, text + st->out, nb);
    memmove(text + pos + nb, text + pos, st->out - pos);
    memcpy(text + pos, mark, nb);
}

/* Appends one normalized code point. Returns 0, SPLIT_STOP or an error. */
static int emit_cp(split_state *st, int32_t cp)
{
    int cls, ccc = 0, rc;
    if (cp < 0x80) {
        cls = ascii_class[cp];
    } else {
        const utf8proc_property_t *p = utf8proc_get_property(cp);
        cls = category_class[p->category];
        ccc = p->combining_class;
    }
    if (cls == C_SEP) {
        end_word(st);
        return 0;
    }
    if (cls == C_ONE) {
        end_word(st);
        if ((rc = begin_token(st)) != 0)
            return rc;
        size_t nb = utf8_encode(cp, st->tb->text + st->out);
        st->out += nb;
        st->tb->len[st->tb->n - 1] = (uint32_t)nb;
        return 0;
    }
    char enc[4];
    size_t nb = utf8_encode(cp, enc);
    if (st->wstart == NO_WORD || st->out - st->wstart + nb > QD_TOK_MAX_BYTES) {
        end_word(st);
        if ((rc = begin_token(st)) != 0)
            return rc;
        st->wstart = st->out;
    }
    memcpy(st->tb->text + st->out, enc, nb);
    if (ccc)
        reorder_mark(st, nb, ccc);
    st->out += nb;
    return 0;
}

int qd_tok_split(qd_tokbuf *tb, const char *text, size_t len, size_t max_tokens)
{
    const unsigned char *s = (const unsigned char *)text;
    split_state st = {tb, 0, NO_WORD, max_tokens ? max_tokens : SIZE_MAX};
    int rc = 0;
    size_t i = 0;
    tb->n = 0;
    while (i < len) {
        unsigned b = s[i];
        if (b < 0x80) {
            int cls = ascii_class[b];
            i++;
            if (cls == C_WORD) {
                if (st.wstart == NO_WORD || st.out - st.wstart == QD_TOK_MAX_BYTES) {
                    end_word(&st);
                    if ((rc = begin_token(&st)) != 0)
                        break;
                    st.wstart = st.out;
                }
                /* Case folding of ASCII: A-Z to a-z, nothing else. */
                st.tb->text[st.out++] = (char)(b | ((b - 'A' < 26u) << 5));
            } else {
                end_word(&st);
                if (cls == C_ONE) {
                    if ((rc = begin_token(&st)) != 0)
                        break;
                    st.tb->text[st.out++] = (char)b;
                    tb->len[tb->n - 1] = 1;
                }
            }
            continue;
        }
        int32_t cp;
        i += utf8_decode(s + i, len - i, &cp);
        if (cp == REPLACEMENT_CHAR) {
            if ((rc = emit_cp(&st, cp)) != 0)
                break;
            continue;
        }
        utf8proc_int32_t dec[TOK_MAX_DECOMP];
        int boundclass = 0;
        utf8proc_ssize_t nd =
            utf8proc_decompose_char(cp, dec, TOK_MAX_DECOMP, TOK_UTF8PROC_OPTIONS, &boundclass);
        if (nd < 0 || nd > TOK_MAX_DECOMP) {
            /* Cannot happen with utf8proc 2.8's tables; a newer table could only make
             * a decomposition longer, and then the code point stands for itself. */
            dec[0] = cp;
            nd = 1;
        }
        for (utf8proc_ssize_t k = 0; k < nd && rc == 0; k++)
            rc = emit_cp(&st, dec[k]);
        if (rc)
            break;
    }
    if (rc < 0) {
        tb->n = 0;
        return rc;
    }
    end_word(&st);
    return 0;
}

/* --- n-grams and token ids --------------------------------------------------------- */

uint32_t qd_tok_ngram_hash_more(uint32_t h, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 16777619u;
    }
    return h;
}

uint32_t qd_tok_ngram_hash(const char *s, size_t n)
{
    return qd_tok_ngram_hash_more(2166136261u, s, n); /* FNV-1a's offset basis */
}

void qd_tokseqs_init(qd_tokseqs *s)
{
    memset(s, 0, sizeof *s);
}

void qd_tokseqs_clear(qd_tokseqs *s)
{
    s->n = 0;
    s->ntok = 0;
    s->nrows = 0;
}

void qd_tokseqs_free(qd_tokseqs *s)
{
    if (!s)
        return;
    qd_free(s->qoff);
    qd_free(s->toff);
    qd_free(s->rows);
    memset(s, 0, sizeof *s);
}

/* Returns array p (elements of `size` bytes, *cap allocated) grown to hold at least
 * `need` elements, or NULL with *rc = QD_ERR_NOMEM (p is then still valid). */
static void *grow_array(void *p, size_t *cap, size_t need, size_t size, int *rc)
{
    if (need <= *cap)
        return p;
    size_t c = *cap ? *cap : 64;
    while (c < need)
        c = c > SIZE_MAX / 2 ? need : c * 2;
    void *np = qd_reallocarray(p, c, size);
    if (!np) {
        *rc = QD_ERR_NOMEM;
        return NULL;
    }
    *cap = c;
    return np;
}

/* Makes room in s for one more question of ntok tokens and nrows rows. */
static int tokseqs_reserve(qd_tokseqs *s, size_t ntok, size_t nrows)
{
    int rc = 0;
    uint32_t *q = grow_array(s->qoff, &s->cap_q, s->n + 2, sizeof *q, &rc);
    if (!q)
        return rc;
    s->qoff = q;
    uint32_t *t = grow_array(s->toff, &s->cap_t, s->ntok + ntok + 1, sizeof *t, &rc);
    if (!t)
        return rc;
    s->toff = t;
    int32_t *r = grow_array(s->rows, &s->cap_r, nrows ? nrows : 1, sizeof *r, &rc);
    if (!r)
        return rc;
    s->rows = r;
    return 0;
}

/* Number of n-grams with lengths lo..hi of a string of L code points. */
static size_t ngram_count(size_t L, size_t lo, size_t hi)
{
    size_t c = 0;
    for (size_t k = lo; k <= hi && k <= L; k++)
        c += L - k + 1;
    return c;
}

/* Writes the n-gram rows of token w[0..n) into rows (room for ngram_count() of them,
 * computed by the caller with the same L). The n-grams are those of "<" w ">" in code
 * points, taken by start position and then by length, as fastText does; every one is
 * included, the whole "<w>" too when it is short enough. Returns how many. */
static size_t ngram_rows(const char *w, size_t n, const qd_tok_cfg *cfg, int32_t v,
                         int32_t *rows)
{
    char b[QD_TOK_MAX_BYTES + 2];
    uint8_t cps[QD_TOK_MAX_BYTES + 3]; /* byte offset of each code point of b, and the end */
    size_t nb = n + 2, L = 0, r = 0;
    b[0] = '<';
    memcpy(b + 1, w, n);
    b[nb - 1] = '>';
    for (size_t i = 0; i < nb; i++)
        if (((unsigned char)b[i] & 0xC0) != 0x80)
            cps[L++] = (uint8_t)i;
    cps[L] = (uint8_t)nb;
    for (size_t i = 0; i < L; i++) {
        /* The n-gram of k code points from i continues the hash of the one of k - 1. */
        uint32_t h = qd_tok_ngram_hash("", 0);
        for (size_t k = 1; k <= cfg->ngram_max && i + k <= L; k++) {
            h = qd_tok_ngram_hash_more(h, b + cps[i + k - 1],
                                       (size_t)(cps[i + k] - cps[i + k - 1]));
            if (k >= cfg->ngram_min)
                rows[r++] = v + (int32_t)(h % cfg->ngram_buckets);
        }
    }
    return r;
}

int qd_tok_encode(const qd_vocab *v, const qd_tok_cfg *cfg, qd_tokbuf *tb, const char *text,
                  size_t len, qd_tokseqs *out)
{
    size_t vsize = qd_vocab_size(v);
    int ngrams = cfg->ngram_buckets > 0;
    if (ngrams) {
        if (cfg->ngram_min == 0 || cfg->ngram_max < cfg->ngram_min)
            return QD_ERR_INVAL;
        if (vsize + cfg->ngram_buckets > (size_t)INT32_MAX + 1)
            return QD_ERR_RANGE;
    }
    int rc = qd_tok_split(tb, text, len, cfg->max_tokens);
    if (rc)
        return rc;
    /* Offsets are 32-bit: a batch holds fewer than 2^32 tokens and rows. */
    if (tb->n > UINT32_MAX - out->ntok)
        return QD_ERR_RANGE;
    if ((rc = tokseqs_reserve(out, tb->n, out->nrows + (ngrams ? 0 : tb->n))) != 0)
        return rc;
    if (out->n == 0)
        out->qoff[0] = 0;
    if (out->ntok == 0)
        out->toff[0] = 0;

    /* Nothing below touches qoff[0..n], toff[0..ntok] or rows[0..nrows): on failure the
     * batch is as it was, only perhaps with more memory. */
    size_t r = out->nrows;
    for (size_t t = 0; t < tb->n; t++) {
        const char *w = tb->text + tb->start[t];
        size_t wn = tb->len[t];
        int32_t id = qd_vocab_find(v, w, wn);
        if (!ngrams) {
            out->rows[r++] = id;
        } else {
            size_t L = 2; /* "<" and ">" */
            for (size_t j = 0; j < wn; j++)
                L += ((unsigned char)w[j] & 0xC0) != 0x80;
            size_t need = 1 + ngram_count(L, cfg->ngram_min, cfg->ngram_max);
            if (need > UINT32_MAX - r)
                return QD_ERR_RANGE;
            if ((rc = tokseqs_reserve(out, tb->n, r + need)) != 0)
                return rc;
            size_t first = r;
            if (id != QD_TOK_UNK)
                out->rows[r++] = id;
            r += ngram_rows(w, wn, cfg, (int32_t)vsize, out->rows + r);
            /* A token is the mean of its rows, so it needs at least one: an unknown
             * word too short to have an n-gram of ngram_min code points is UNK. */
            if (r == first)
                out->rows[r++] = QD_TOK_UNK;
        }
        if (r > UINT32_MAX)
            return QD_ERR_RANGE;
        out->toff[out->ntok + t + 1] = (uint32_t)r;
    }
    out->ntok += tb->n;
    out->nrows = r;
    out->qoff[out->n + 1] = (uint32_t)out->ntok;
    out->n++;
    return 0;
}
