/*
 * fuzz_dump.c - libFuzzer harness for the dump readers (dump.h), all four formats.
 *
 * The first byte of an input chooses how it is read, the rest is the file:
 *   sel % 5        the format: auto, quora, tsv, csv, jsonl
 *   sel / 5 % 3    Quora quoting: auto, yes, no
 *   sel / 15 % 4   limits: the defaults, tiny (8-byte ids, 16-byte texts, 64-byte
 *                  lines), small (300-byte lines), or csv columns "qid"/"question"
 *   sel / 60 % 4   the file name, which auto mode reads: f.tsv, f.csv, f.jsonl, f
 * The bytes go to a memfd read through qd_dump_open_fd(), exactly as a file would be.
 * When sel >= 240, the next byte b places the file across the reader's 64 KiB read
 * boundary: its first line is followed by blank lines (which every reader skips
 * between records) so that the remaining bytes start b bytes before the boundary,
 * where a line is cut in two by the read() calls. That path is otherwise reached only
 * by inputs over 64 KiB.
 *
 * Every record must keep dump.h's promises: NUL-terminated strings of the stated
 * lengths without NULs, within the limits, valid UTF-8, no control character in the
 * id, a text not blank, line numbers not going backwards; a skipped record has a
 * message; a fatal error stays fatal; and the records number no more than the bytes
 * (a reader that loops without consuming input is caught here, not by a timeout).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "qdup/common.h"
#include "qdup/dump.h"

#define CHUNK (64u * 1024u) /* dump.c reads this much at a time */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int memfd = -1;

static void die(const char *what, const qd_dump_rec *r)
{
    if (r)
        fprintf(stderr, "fuzz_dump: %s (line %llu, id %zu bytes, text %zu bytes)\n", what,
                (unsigned long long)r->line, r->id_len, r->text_len);
    else
        fprintf(stderr, "fuzz_dump: %s\n", what);
    abort();
}

/* 1 if s[0..n) is well-formed UTF-8 (RFC 3629: no overlongs, surrogates or values
 * past U+10FFFF). */
static int utf8_ok(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t need;
        unsigned lo = 0x80, hi = 0xBF;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            need = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            if (c == 0xE0)
                lo = 0xA0;
            if (c == 0xED)
                hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            if (c == 0xF0)
                lo = 0x90;
            if (c == 0xF4)
                hi = 0x8F;
        } else {
            return 0;
        }
        if (n - i <= need)
            return 0;
        for (size_t j = 1; j <= need; j++) {
            unsigned b = s[i + j];
            if (b < (j == 1 ? lo : 0x80) || b > (j == 1 ? hi : 0xBF))
                return 0;
        }
        i += need + 1;
    }
    return 1;
}

static int blank(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!strchr(" \t\r\n\v\f", s[i]))
            return 0;
    return 1;
}

static void check_rec(const qd_dump_rec *r, const qd_dump_opts *o, uint64_t *last_line)
{
    size_t max_id = o->max_id_bytes ? o->max_id_bytes : QD_DUMP_DEFAULT_MAX_ID;
    size_t max_text = o->max_text_bytes ? o->max_text_bytes : QD_DUMP_DEFAULT_MAX_TEXT;
    if (!r->id || !r->text)
        die("NULL id or text", r);
    if (strlen(r->id) != r->id_len || strlen(r->text) != r->text_len)
        die("length disagrees with the NUL terminator", r);
    if (r->id_len < 1 || r->id_len > max_id)
        die("id length out of limits", r);
    if (r->text_len < 1 || r->text_len > max_text)
        die("text length out of limits", r);
    if (!utf8_ok((const unsigned char *)r->id, r->id_len) ||
        !utf8_ok((const unsigned char *)r->text, r->text_len))
        die("invalid UTF-8", r);
    for (size_t i = 0; i < r->id_len; i++) {
        unsigned char c = (unsigned char)r->id[i];
        if (c < 0x20 || c == 0x7F)
            die("control character in the id", r);
    }
    if (blank(r->text, r->text_len))
        die("blank text", r);
    if (r->line < 1 || r->line < *last_line)
        die("line number went backwards", r);
    *last_line = r->line;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned sel = data[0];
    data++;
    size--;
    static const char *const names[] = {"f.tsv", "f.csv", "f.jsonl", "f"};
    static const qd_dump_format formats[] = {QD_DUMP_AUTO, QD_DUMP_QUORA, QD_DUMP_TSV,
                                             QD_DUMP_CSV, QD_DUMP_JSONL};
    qd_dump_opts o = qd_dump_opts_default();
    o.format = formats[sel % 5];
    o.quoting = (int)(sel / 5 % 3);
    switch (sel / 15 % 4) {
    case 1:
        o.max_id_bytes = 8;
        o.max_text_bytes = 16;
        o.max_line_bytes = 64;
        break;
    case 2:
        o.max_line_bytes = 300;
        break;
    case 3:
        o.id_col = "qid";
        o.text_col = "question";
        break;
    default:
        break;
    }
    const char *name = names[sel / 60 % 4];

    /* The file, padded across the read boundary when asked. */
    const uint8_t *file = data;
    size_t flen = size;
    uint8_t *padded = NULL;
    if (sel >= 240 && size >= 1) {
        size_t back = data[0];
        data++;
        size--;
        const uint8_t *nl = memchr(data, '\n', size);
        size_t head = nl ? (size_t)(nl - data) + 1 : size;
        if (head + back < CHUNK) {
            size_t pad = CHUNK - back - head;
            flen = size + pad;
            padded = malloc(flen);
            if (!padded)
                abort();
            memcpy(padded, data, head);
            memset(padded + head, '\n', pad);
            memcpy(padded + head + pad, data + head, size - head);
            file = padded;
        } else {
            file = data;
            flen = size;
        }
    }

    if (memfd < 0 && (memfd = memfd_create("fuzz_dump", 0)) < 0)
        abort();
    if (ftruncate(memfd, 0) != 0 || pwrite(memfd, file, flen, 0) != (ssize_t)flen ||
        lseek(memfd, 0, SEEK_SET) != 0)
        abort();

    char err[QD_ERRMSG_MAX] = "";
    qd_dump *d = NULL;
    int rc = qd_dump_open_fd(memfd, name, &o, &d, err, sizeof err);
    if (rc != 0) {
        if (d || !err[0])
            die("a failed open left a reader or no message", NULL);
        free(padded);
        return 0;
    }
    if (qd_dump_format_of(d) == QD_DUMP_AUTO)
        die("format still auto after open", NULL);
    uint64_t last_line = 0, recs = 0, limit = (uint64_t)flen + 16;
    for (;;) {
        qd_dump_rec r;
        rc = qd_dump_next(d, &r);
        if (rc == 0)
            break;
        if (++recs > limit)
            die("more records than bytes: the reader does not advance", NULL);
        if (rc == 1) {
            check_rec(&r, &o, &last_line);
            continue;
        }
        const char *msg = qd_dump_errmsg(d);
        if (!msg || !*msg)
            die("an error without a message", NULL);
        if (rc == QD_ERR_FORMAT)
            continue;
        if (qd_dump_next(d, &r) != rc)
            die("a fatal error did not stay fatal", NULL);
        break;
    }
    if (qd_dump_skipped(d) > recs)
        die("more skipped than returned", NULL);
    qd_dump_close(d);
    free(padded);
    return 0;
}
