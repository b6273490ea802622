/*
 * texts.c - a whole dump in memory (texts.h).
 *
 * Records are appended to one growing arena; their strings are found by offset while it
 * grows (realloc moves it) and turned into pointers at the end.
 */
#include "texts.h"

#include <stdio.h>
#include <string.h>

#include "qdup/common.h"

void qd_texts_free(qd_texts *t)
{
    qd_free(t->text);
    qd_free(t->len);
    qd_free(t->id);
    qd_free(t->id_len);
    qd_free(t->line);
    qd_free(t->arena);
    memset(t, 0, sizeof *t);
}

/* Room for one more record in every per-record array. */
static int grow(qd_texts *t, size_t *cap, size_t **text_off, size_t **id_off)
{
    if (t->n < *cap)
        return 0;
    size_t nc = *cap ? *cap * 2 : 4096;
    size_t *a = qd_reallocarray(t->len, nc, sizeof *a);
    if (a)
        t->len = a;
    size_t *b = qd_reallocarray(t->id_len, nc, sizeof *b);
    if (b)
        t->id_len = b;
    uint64_t *c = qd_reallocarray(t->line, nc, sizeof *c);
    if (c)
        t->line = c;
    size_t *d = qd_reallocarray(*text_off, nc, sizeof *d);
    if (d)
        *text_off = d;
    size_t *e = qd_reallocarray(*id_off, nc, sizeof *e);
    if (e)
        *id_off = e;
    if (!a || !b || !c || !d || !e)
        return QD_ERR_NOMEM;
    *cap = nc;
    return 0;
}

/* Appends s[0..n) and a NUL to the arena; its offset in *off. */
static int append(qd_texts *t, size_t *used, size_t *acap, const char *s, size_t n,
                  size_t *off)
{
    if (*used + n + 1 > *acap) {
        size_t na = *acap ? *acap : 1 << 20;
        while (na < *used + n + 1)
            na *= 2;
        char *a = qd_realloc(t->arena, na);
        if (!a)
            return QD_ERR_NOMEM;
        t->arena = a;
        *acap = na;
    }
    memcpy(t->arena + *used, s, n);
    t->arena[*used + n] = '\0';
    *off = *used;
    *used += n + 1;
    return 0;
}

int qd_texts_load(const char *prog, const char *path, const qd_dump_opts *o, qd_texts *t)
{
    memset(t, 0, sizeof *t);
    char err[QD_ERRMSG_MAX];
    qd_dump *d;
    int rc = qd_dump_open(path, o, &d, err, sizeof err);
    if (rc) {
        fprintf(stderr, "%s: %s\n", prog, err);
        return rc;
    }
    size_t cap = 0, used = 0, acap = 0;
    size_t *text_off = NULL, *id_off = NULL;
    qd_dump_rec rec;
    for (;;) {
        int r = qd_dump_next(d, &rec);
        if (r == 0)
            break;
        if (r == QD_ERR_FORMAT) {
            if (t->skipped++ < 5)
                fprintf(stderr, "%s: warning: %s (skipped)\n", prog, qd_dump_errmsg(d));
            continue;
        }
        if (r < 0) {
            fprintf(stderr, "%s: %s\n", prog, qd_dump_errmsg(d));
            rc = r;
            goto fail;
        }
        if ((rc = grow(t, &cap, &text_off, &id_off)) != 0 ||
            (rc = append(t, &used, &acap, rec.text, rec.text_len, &text_off[t->n])) != 0 ||
            (rc = append(t, &used, &acap, rec.id, rec.id_len, &id_off[t->n])) != 0) {
            fprintf(stderr, "%s: %s: out of memory\n", prog, path);
            goto fail;
        }
        t->len[t->n] = rec.text_len;
        t->id_len[t->n] = rec.id_len;
        t->line[t->n] = rec.line;
        t->n++;
    }
    qd_dump_close(d);
    d = NULL;
    if (t->n == 0) {
        fprintf(stderr, "%s: %s: no questions\n", prog, path);
        rc = QD_ERR_FORMAT;
        goto fail;
    }
    t->text = qd_mallocarray(t->n, sizeof *t->text);
    t->id = qd_mallocarray(t->n, sizeof *t->id);
    if (!t->text || !t->id) {
        fprintf(stderr, "%s: %s: out of memory\n", prog, path);
        rc = QD_ERR_NOMEM;
        goto fail;
    }
    for (size_t i = 0; i < t->n; i++) {
        t->text[i] = t->arena + text_off[i];
        t->id[i] = t->arena + id_off[i];
    }
    qd_free(text_off);
    qd_free(id_off);
    return 0;
fail:
    qd_free(text_off);
    qd_free(id_off);
    qd_dump_close(d);
    qd_texts_free(t);
    return rc;
}
