/*
 * vocab.c - the vocabulary (token bytes to id) and the word counter that builds one.
 *
 * Both are open-addressing hash tables with linear probing over a power-of-two slot
 * array kept at most half full. A slot is one 64-bit word: the upper 32 bits of the
 * key's hash as a tag, so that a probe rarely has to compare bytes, and in the lower
 * 32 bits the id (vocabulary) or entry index + 1 (counter); 0 marks an empty slot,
 * which works because id 0 (QD_TOK_PAD) never has a word. Words live back to back in
 * one arena, each followed by a NUL so that qd_vocab_word() can hand out C strings.
 *
 * Every insertion first makes room in all arrays and only then changes anything, so a
 * failed allocation leaves the table exactly as it was.
 *
 * The hash is 64-bit FNV-1a (qd_hash64) followed by a multiply-xorshift finalizer:
 * FNV-1a's low bits, which pick the slot, mix poorly for short keys that differ only
 * in their last byte.
 */
#include "qdup/tok.h"

#include <stdlib.h>
#include <string.h>

#include "qdup/common.h"
#include "qdup/fileio.h"

struct qd_vocab {
    char *arena;       /* words back to back, each followed by a NUL */
    size_t arena_len;  /* bytes used in arena */
    size_t arena_cap;  /* bytes allocated for arena */
    uint32_t *off;     /* (cap) arena offset of each id's word (0 for reserved ids) */
    uint8_t *wlen;     /* (cap) byte length of each id's word (0 for reserved ids) */
    size_t n;          /* ids, the reserved ones included */
    size_t cap;        /* entries allocated in off and wlen */
    uint64_t *slots;   /* (mask + 1) hash tag << 32 | id; 0 is an empty slot */
    size_t mask;       /* slot count - 1; the slot count is a power of two */
};

struct qd_vocab_counter {
    char *arena;       /* counted words back to back, no separators */
    size_t arena_len;  /* bytes used in arena */
    size_t arena_cap;  /* bytes allocated for arena */
    struct centry {
        uint64_t count; /* occurrences so far */
        size_t off;     /* arena offset of the word */
        uint32_t len;   /* byte length of the word */
    } *ent;            /* (cap) one per distinct word, in order of first sight */
    size_t n;          /* distinct words */
    size_t cap;        /* entries allocated in ent */
    uint64_t *slots;   /* (mask + 1) hash tag << 32 | (entry index + 1); 0 is empty */
    size_t mask;       /* slot count - 1 */
};

static inline uint64_t word_hash(const char *s, size_t n)
{
    uint64_t h = qd_hash64(QD_HASH64_INIT, s, n);
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    return h;
}

static inline uint64_t slot_tag(uint64_t h)
{
    return h & 0xffffffff00000000ULL;
}

/* Smallest power-of-two slot count keeping `entries` at most half the slots. */
static size_t slots_for(size_t entries)
{
    size_t ns = 64;
    while (ns / 2 < entries)
        ns *= 2;
    return ns;
}

/* Grows a byte or element array to at least max(need, 1) elements and returns it, or
 * NULL (p untouched) on failure; never NULL on success, even for need == 0. */
static void *grow(void *p, size_t *cap, size_t need, size_t size, size_t initial)
{
    if (need == 0)
        need = 1;
    if (need <= *cap)
        return p;
    size_t c = *cap ? *cap : initial;
    while (c < need)
        c = c > SIZE_MAX / 2 ? need : c * 2;
    void *np = qd_reallocarray(p, c, size);
    if (np)
        *cap = c;
    return np;
}

/* --- vocabulary ----------------------------------------------------------------------- */

/* Rebuilds v's slot array with nslots slots (a power of two). */
static int vocab_rehash(qd_vocab *v, size_t nslots)
{
    uint64_t *slots = qd_calloc(nslots, sizeof *slots);
    if (!slots)
        return QD_ERR_NOMEM;
    size_t mask = nslots - 1;
    for (size_t id = QD_TOK_NRESERVED; id < v->n; id++) {
        uint64_t h = word_hash(v->arena + v->off[id], v->wlen[id]);
        size_t i = (size_t)h & mask;
        while (slots[i])
            i = (i + 1) & mask;
        slots[i] = slot_tag(h) | id;
    }
    qd_free(v->slots);
    v->slots = slots;
    v->mask = mask;
    return 0;
}

qd_vocab *qd_vocab_new(void)
{
    qd_vocab *v = qd_calloc(1, sizeof *v);
    if (!v)
        return NULL;
    v->n = QD_TOK_NRESERVED;
    v->cap = 64;
    v->arena_cap = 1024;
    if (!(v->off = qd_calloc(v->cap, sizeof *v->off)) ||
        !(v->wlen = qd_calloc(v->cap, sizeof *v->wlen)) ||
        !(v->arena = qd_malloc(v->arena_cap)) || vocab_rehash(v, slots_for(0)) != 0)
        goto fail;
    return v;
fail:
    qd_vocab_free(v);
    return NULL;
}

void qd_vocab_free(qd_vocab *v)
{
    if (!v)
        return;
    qd_free(v->arena);
    qd_free(v->off);
    qd_free(v->wlen);
    qd_free(v->slots);
    qd_free(v);
}

size_t qd_vocab_size(const qd_vocab *v)
{
    return v->n;
}

/* The id of s[0..n) given its hash, or QD_TOK_UNK; *slot is where it is or would go. */
static inline int32_t vocab_lookup(const qd_vocab *v, const char *s, size_t n, uint64_t h,
                                   size_t *slot)
{
    uint64_t tag = slot_tag(h);
    size_t i = (size_t)h & v->mask;
    for (;;) {
        uint64_t e = v->slots[i];
        if (!e)
            break;
        uint32_t id = (uint32_t)e;
        if ((e & 0xffffffff00000000ULL) == tag && v->wlen[id] == n &&
            memcmp(v->arena + v->off[id], s, n) == 0) {
            *slot = i;
            return (int32_t)id;
        }
        i = (i + 1) & v->mask;
    }
    *slot = i;
    return QD_TOK_UNK;
}

int32_t qd_vocab_find(const qd_vocab *v, const char *s, size_t n)
{
    if (n == 0 || n > QD_TOK_MAX_BYTES)
        return QD_TOK_UNK;
    size_t slot;
    return vocab_lookup(v, s, n, word_hash(s, n), &slot);
}

int32_t qd_vocab_add(qd_vocab *v, const char *s, size_t n)
{
    if (n == 0 || n > QD_TOK_MAX_BYTES)
        return QD_ERR_INVAL;
    uint64_t h = word_hash(s, n);
    size_t slot;
    int32_t id = vocab_lookup(v, s, n, h, &slot);
    if (id != QD_TOK_UNK)
        return id;
    /* Ids are int32 and arena offsets uint32. */
    if (v->n >= (size_t)INT32_MAX || v->arena_len + n + 1 > UINT32_MAX)
        return QD_ERR_RANGE;

    /* Make room everywhere before changing anything. */
    size_t cap_off = v->cap, cap_len = v->cap;
    uint32_t *off = grow(v->off, &cap_off, v->n + 1, sizeof *off, 64);
    if (!off)
        return QD_ERR_NOMEM;
    v->off = off;
    uint8_t *wlen = grow(v->wlen, &cap_len, v->n + 1, sizeof *wlen, 64);
    if (!wlen)
        return QD_ERR_NOMEM;
    v->wlen = wlen;
    v->cap = cap_len; /* == cap_off: both grew the same way from v->cap */
    char *arena = grow(v->arena, &v->arena_cap, v->arena_len + n + 1, 1, 1024);
    if (!arena)
        return QD_ERR_NOMEM;
    v->arena = arena;
    if ((v->n + 1 - QD_TOK_NRESERVED) > (v->mask + 1) / 2) {
        int rc = vocab_rehash(v, (v->mask + 1) * 2);
        if (rc)
            return rc;
        vocab_lookup(v, s, n, h, &slot); /* the empty slot moved */
    }

    id = (int32_t)v->n++;
    v->off[id] = (uint32_t)v->arena_len;
    v->wlen[id] = (uint8_t)n;
    memcpy(v->arena + v->arena_len, s, n);
    v->arena[v->arena_len + n] = '\0';
    v->arena_len += n + 1;
    v->slots[slot] = slot_tag(h) | (uint32_t)id;
    return id;
}

const char *qd_vocab_word(const qd_vocab *v, int32_t id, size_t *n)
{
    if (id < QD_TOK_NRESERVED || (size_t)id >= v->n) {
        if (n)
            *n = 0;
        return NULL;
    }
    if (n)
        *n = v->wlen[id];
    return v->arena + v->off[id];
}

/* --- counting ------------------------------------------------------------------------- */

qd_vocab_counter *qd_vocab_counter_new(void)
{
    qd_vocab_counter *c = qd_calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->mask = slots_for(0) - 1;
    if (!(c->slots = qd_calloc(c->mask + 1, sizeof *c->slots))) {
        qd_free(c);
        return NULL;
    }
    return c;
}

void qd_vocab_counter_free(qd_vocab_counter *c)
{
    if (!c)
        return;
    qd_free(c->arena);
    qd_free(c->ent);
    qd_free(c->slots);
    qd_free(c);
}

/* Rebuilds c's slot array with nslots slots. */
static int counter_rehash(qd_vocab_counter *c, size_t nslots)
{
    uint64_t *slots = qd_calloc(nslots, sizeof *slots);
    if (!slots)
        return QD_ERR_NOMEM;
    size_t mask = nslots - 1;
    for (size_t k = 0; k < c->n; k++) {
        uint64_t h = word_hash(c->arena + c->ent[k].off, c->ent[k].len);
        size_t i = (size_t)h & mask;
        while (slots[i])
            i = (i + 1) & mask;
        slots[i] = slot_tag(h) | (k + 1);
    }
    qd_free(c->slots);
    c->slots = slots;
    c->mask = mask;
    return 0;
}

int qd_vocab_counter_add(qd_vocab_counter *c, const qd_tokbuf *tb)
{
    /* Reserve room for every token being new, so that the question is either counted
     * whole or (on QD_ERR_NOMEM) not at all. */
    size_t bytes = 0;
    for (size_t t = 0; t < tb->n; t++) {
        if (tb->len[t] == 0 || tb->len[t] > QD_TOK_MAX_BYTES)
            return QD_ERR_INVAL;
        bytes += tb->len[t];
    }
    if (c->n + tb->n >= UINT32_MAX)
        return QD_ERR_RANGE;
    struct centry *ent = grow(c->ent, &c->cap, c->n + tb->n, sizeof *ent, 256);
    if (!ent)
        return QD_ERR_NOMEM;
    c->ent = ent;
    char *arena = grow(c->arena, &c->arena_cap, c->arena_len + bytes, 1, 4096);
    if (!arena)
        return QD_ERR_NOMEM;
    c->arena = arena;
    size_t ns = slots_for(c->n + tb->n);
    if (ns > c->mask + 1) {
        int rc = counter_rehash(c, ns);
        if (rc)
            return rc;
    }

    for (size_t t = 0; t < tb->n; t++) {
        const char *s = tb->text + tb->start[t];
        size_t n = tb->len[t];
        uint64_t h = word_hash(s, n), tag = slot_tag(h);
        size_t i = (size_t)h & c->mask;
        for (;;) {
            uint64_t e = c->slots[i];
            if (!e) {
                struct centry *ne = &c->ent[c->n];
                ne->count = 1;
                ne->off = c->arena_len;
                ne->len = (uint32_t)n;
                memcpy(c->arena + c->arena_len, s, n);
                c->arena_len += n;
                c->slots[i] = tag | (c->n + 1);
                c->n++;
                break;
            }
            struct centry *ce = &c->ent[(uint32_t)e - 1];
            if ((e & 0xffffffff00000000ULL) == tag && ce->len == n &&
                memcmp(c->arena + ce->off, s, n) == 0) {
                ce->count++;
                break;
            }
            i = (i + 1) & c->mask;
        }
    }
    return 0;
}

/* A counted word, for sorting. */
typedef struct ranked {
    const char *s;  /* word bytes (in the counter's arena) */
    uint64_t count; /* occurrences */
    uint32_t len;   /* byte length */
} ranked;

/* Count descending, then bytes ascending (a proper prefix first): a total order on
 * distinct words, so the vocabulary does not depend on hash or insertion order. */
static int ranked_cmp(const void *pa, const void *pb)
{
    const ranked *a = pa, *b = pb;
    if (a->count != b->count)
        return a->count > b->count ? -1 : 1;
    size_t m = a->len < b->len ? a->len : b->len;
    int c = memcmp(a->s, b->s, m);
    if (c)
        return c;
    return (a->len > b->len) - (a->len < b->len);
}

int qd_vocab_from_counter(const qd_vocab_counter *c, uint32_t min_count, size_t max_words,
                          qd_vocab **out)
{
    *out = NULL;
    ranked *r = qd_mallocarray(c->n ? c->n : 1, sizeof *r);
    if (!r)
        return QD_ERR_NOMEM;
    size_t k = 0;
    for (size_t i = 0; i < c->n; i++) {
        if (c->ent[i].count >= min_count) {
            r[k].s = c->arena + c->ent[i].off;
            r[k].count = c->ent[i].count;
            r[k].len = c->ent[i].len;
            k++;
        }
    }
    qsort(r, k, sizeof *r, ranked_cmp);
    if (max_words && k > max_words)
        k = max_words;

    int rc = 0;
    qd_vocab *v = qd_vocab_new();
    if (!v) {
        rc = QD_ERR_NOMEM;
        goto fail;
    }
    for (size_t i = 0; i < k; i++) {
        int32_t id = qd_vocab_add(v, r[i].s, r[i].len);
        if (id < 0) {
            rc = id;
            goto fail;
        }
    }
    qd_free(r);
    *out = v;
    return 0;
fail:
    qd_vocab_free(v);
    qd_free(r);
    return rc;
}
