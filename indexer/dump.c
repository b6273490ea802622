/*
 * dump.c - streaming readers for question dumps (Quora pairs, TSV, CSV, JSON Lines).
 *
 * Three layers, each pulling from the one below:
 *
 *   lines    line_next() cuts the input into lines. It reads the file in 64 KiB chunks
 *            and hands out a line in place when it lies inside one chunk, or copies it
 *            into a line buffer when it crosses chunks. A line longer than
 *            max_line_bytes is consumed to its end without being stored and comes out
 *            flagged too_long. Before the file, lines come from a replay buffer: the
 *            rows layer pushes lines back there to read them again (see below).
 *   rows     row_next() turns lines into rows of fields. Plain rows are one line split
 *            at the delimiter, in place. Quoted rows (CSV, quoted Quora) go through
 *            libcsv in strict mode, fed one line at a time, so that we always know on
 *            which line a row starts; a line without a quote character gives the same
 *            fields either way and takes the plain path, which is faster. A quoted row
 *            keeps a copy of its raw lines. If it turns out broken (stray quote, open
 *            quote at end of file, over max_line_bytes, wrong field count), it is
 *            reported at its first line and its later lines are pushed back into the
 *            replay buffer: an unterminated quote then costs one record, not every
 *            record up to the next quote. The replay never grows past one raw record,
 *            since a failing record only re-queues lines it took from the file or the
 *            replay itself, minus its first line. The Quora quoting auto-detection uses
 *            the same mechanism: it tries the first row holding a quote as a quoted
 *            row, and if that fails, pushes all its lines back and reads them as plain.
 *   records  one function per format maps rows (or, for JSON Lines, lines) to records
 *            and checks ids and texts. Quora rows give up to two records and up to two
 *            errors, so they go through a small queue of events.
 *
 * Pointers handed out stay valid until the next call because every buffer they point
 * into (the read chunk, the line buffer, the replay buffer, the field buffer, the
 * current JSON document) is only touched again by the next call.
 */
#include "qdup/dump.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <csv.h>
#include <jansson.h>

#include "qdup/common.h"
#include "qdup/fileio.h"
#include "qdup/input.h"

/* Bytes asked from read() at a time. */
#define DUMP_CHUNK (64u * 1024u)

/* How rows are cut out of lines. */
enum {
    ROW_PLAIN,  /* split each line at the delimiter; quotes are ordinary bytes */
    ROW_QUOTED, /* RFC 4180 quoting through libcsv */
    ROW_DETECT, /* Quora AUTO: plain until the first quote decides */
};

/* row_quoted() in probe mode: the row is not a well-formed quoted row, its lines are
 * back in the replay buffer and nothing was reported. */
#define ROW_PROBE_FAILED 2

/* One line from line_next(). */
typedef struct dump_line {
    char *p;      /* its bytes without the line end, NUL-terminated (p[len] == 0) */
    size_t len;   /* bytes in p */
    size_t full;  /* length in the file; over max_line when too_long */
    uint64_t no;  /* 1-based line number */
    int too_long; /* 1: over max_line_bytes; p holds nothing useful */
} dump_line;

/* One field of the current row. */
typedef struct dump_field {
    char *p;    /* its bytes, NUL-terminated; set once the row is complete */
    size_t off; /* while libcsv fills the row: offset of the bytes in fb */
    size_t len; /* bytes in the field */
} dump_field;

/* A Quora row's outcome for one of its questions, queued for qd_dump_next(). */
typedef struct dump_event {
    int is_err;              /* 1: a malformed question (msg); 0: a record (rec) */
    qd_dump_rec rec;         /* the record; its pointers go into the row's fields */
    char msg[QD_ERRMSG_MAX]; /* "file:line: reason" */
} dump_event;

/* One slot of the Quora seen-qid set (open addressing, linear probing). */
typedef struct dump_seen_slot {
    uint64_t hash;      /* hash of the qid; 0 marks an empty slot */
    uint64_t text_hash; /* hash of the text the qid came with the first time */
    uint64_t key_off;   /* the qid is seen_keys[key_off .. key_off + key_len) */
    uint64_t key_len;   /* bytes of the qid */
} dump_seen_slot;

struct qd_dump {
    /* The source and the options. */
    int fd;               /* descriptor read from */
    int own_fd;           /* 1 if qd_dump_close() closes fd */
    char *name;           /* file name in messages: the path, "<stdin>" */
    qd_dump_format format; /* the format being read (resolved from AUTO at open) */
    int quoting;          /* Quora: QD_DUMP_QUOTING_YES/NO once decided, AUTO before */
    size_t max_text;      /* longest text accepted, bytes */
    size_t max_id;        /* longest id accepted, bytes */
    size_t max_line;      /* longest line / raw quoted record, bytes */
    char *id_col;         /* csv: name of the id column */
    char *text_col;       /* csv: name of the text column */

    /* Reading the file. */
    char *buf;            /* (DUMP_CHUNK + 1) bytes read from fd; +1 for a NUL */
    size_t pos;           /* next unread byte of buf */
    size_t end;           /* bytes of buf holding data */
    int eof;              /* 1 once read() returned 0 */
    int bom_done;         /* 1 once the start was checked for a byte order mark */
    uint64_t bytes_read;  /* bytes read from fd so far */
    uint64_t next_line;   /* number of the line line_next() returns next */
    char *lb;             /* a line crossing chunks, copied (at most max_line bytes) */
    size_t lb_len;        /* bytes in lb */
    size_t lb_cap;        /* bytes allocated for lb */
    char empty[1];        /* "" for a too-long line replayed from the marker */

    /* Lines pushed back to be read again, before anything else. */
    char *rp;             /* whole lines, each ending in '\n' */
    size_t rp_len;        /* bytes in rp */
    size_t rp_pos;        /* next unread byte of rp */
    size_t rp_cap;        /* bytes allocated for rp */
    char *rp2;            /* spare buffer the next replay is built in, then swapped */
    size_t rp2_cap;       /* bytes allocated for rp2 */
    int rp_marker;        /* 1: after rp, a too-long line comes back (its bytes are gone) */
    size_t rp_marker_len; /* that line's length in the file */

    /* The row being read. */
    int row_mode;         /* ROW_PLAIN, ROW_QUOTED or ROW_DETECT */
    char delim;           /* field delimiter: '\t' or ',' */
    size_t expect;        /* fields a row must have; 0 for any number (headers) */
    struct csv_parser csv; /* libcsv state for quoted rows */
    int csv_ready;        /* 1 once csv_init() succeeded (csv_free() due) */
    char *raw;            /* raw lines of the current quoted row, each ending in '\n' */
    size_t raw_len;       /* bytes in raw */
    size_t raw_cap;       /* bytes allocated for raw */
    size_t raw_first;     /* bytes of raw taken by the row's first line */
    char *fb;             /* field bytes of a quoted row, each field NUL-terminated */
    size_t fb_len;        /* bytes in fb */
    size_t fb_cap;        /* bytes allocated for fb */
    dump_field *fields;   /* (fields_cap) fields of the current row */
    size_t nfields;       /* fields in the current row */
    size_t fields_cap;    /* fields allocated */
    int row_done;         /* set by the libcsv row callback */
    int cb_nomem;         /* set by a libcsv callback that could not allocate */
    uint64_t row_line;    /* line where the current row starts */

    /* Per format. */
    size_t csv_id;        /* csv: index of the id column */
    size_t csv_text;      /* csv: index of the text column */
    dump_event ev[2];     /* quora: outcomes of the current row's two questions */
    int ev_n;             /* quora: events queued */
    int ev_i;             /* quora: events handed out */
    dump_seen_slot *seen; /* quora: (seen_cap) slots of the seen-qid set */
    size_t seen_cap;      /* quora: slots, a power of two (0 before the first qid) */
    size_t seen_used;     /* quora: qids in the set */
    char *seen_keys;      /* quora: the qids' bytes, back to back */
    size_t seen_keys_len; /* quora: bytes used in seen_keys */
    size_t seen_keys_cap; /* quora: bytes allocated for seen_keys */
    json_t *json;         /* jsonl: the current line's document (owns rec's bytes) */
    char idnum[32];       /* jsonl: an integer id in decimal */

    /* Outcome. */
    int fatal;            /* 0, or the fatal error every later call returns */
    uint64_t skipped;     /* malformed records reported */
    char errmsg[QD_ERRMSG_MAX]; /* last "file:line: reason" or fatal message */
};

static const char *const quora_header[6] = {"id",        "qid1",      "qid2",
                                             "question1", "question2", "is_duplicate"};

/* ---------------------------------------------------------------- messages ------- */

static int set_msg(qd_dump *d, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Formats d->errmsg and returns rc. */
static int set_msg(qd_dump *d, int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->errmsg, sizeof d->errmsg, fmt, ap);
    va_end(ap);
    return rc;
}

/* A fatal error: remembered, so that every later call returns it too. */
static int set_fatal(qd_dump *d, int rc)
{
    if (rc == QD_ERR_NOMEM)
        set_msg(d, rc, "%s: out of memory", d->name);
    d->fatal = rc;
    return rc;
}

/* Copies at most `max` bytes of untrusted input into out for a message, replacing
 * anything that is not printable ASCII with '?', so that a message never carries
 * control characters or broken UTF-8. */
static const char *printable(const char *s, size_t n, char *out, size_t outlen, size_t max)
{
    size_t k = 0;
    QD_ASSERT(outlen > 4);
    for (size_t i = 0; i < n && k + 4 < outlen; i++) {
        if (i == max) {
            memcpy(out + k, "...", 3);
            k += 3;
            break;
        }
        unsigned char c = (unsigned char)s[i];
        out[k++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    out[k] = '\0';
    return out;
}

/* ------------------------------------------------------------------ buffers ------ */

/* Makes *buf hold at least `need` bytes, growing geometrically. */
static int grow(char **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t n = *cap ? *cap : 256;
    while (n < need)
        n = n > SIZE_MAX / 2 ? need : n * 2;
    char *p = qd_realloc(*buf, n);
    if (!p)
        return QD_ERR_NOMEM;
    *buf = p;
    *cap = n;
    return 0;
}

/* ------------------------------------------------------------------- lines ------- */

/* Reads more of the file into buf (which must be consumed up to end, or hold less
 * than DUMP_CHUNK bytes from position 0). 1: bytes came; 0: end of file; <0 fatal. */
static int fill(qd_dump *d)
{
    if (d->pos == d->end)
        d->pos = d->end = 0;
    QD_ASSERT(d->end < DUMP_CHUNK);
    for (;;) {
        ssize_t r = read(d->fd, d->buf + d->end, DUMP_CHUNK - d->end);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            set_msg(d, QD_ERR_IO, "%s: read failed: %s", d->name, strerror(e));
            return set_fatal(d, QD_ERR_IO);
        }
        if (r == 0) {
            d->eof = 1;
            return 0;
        }
        d->end += (size_t)r;
        d->bytes_read += (uint64_t)r;
        return 1;
    }
}

/* Skips a UTF-8 byte order mark at the very start of the input. A pipe may deliver
 * fewer than three bytes per read, so keep reading until there are three or the end. */
static int skip_bom(qd_dump *d)
{
    d->bom_done = 1;
    while (d->end - d->pos < 3 && !d->eof) {
        int r = fill(d);
        if (r < 0)
            return r;
    }
    if (d->end - d->pos >= 3 && memcmp(d->buf + d->pos, "\xEF\xBB\xBF", 3) == 0)
        d->pos += 3;
    return 0;
}

/* Appends a piece of a line crossing chunks to lb, keeping at most max_line bytes
 * (a longer line is too long anyway and its bytes are never used). */
static int lb_append(qd_dump *d, const char *s, size_t n)
{
    size_t room = d->lb_len < d->max_line ? d->max_line - d->lb_len : 0;
    if (n > room)
        n = room;
    if (n == 0)
        return 0;
    if (grow(&d->lb, &d->lb_cap, d->lb_len + n + 1) != 0)
        return QD_ERR_NOMEM;
    memcpy(d->lb + d->lb_len, s, n);
    d->lb_len += n;
    return 0;
}

/* Fills *ln from bytes p[0..len) of a line whose length in the file is `full`; p[len]
 * must be writable (it holds the line end, or is spare room in lb). */
static int finish_line(qd_dump *d, dump_line *ln, char *p, size_t len, size_t full)
{
    ln->no = d->next_line++;
    ln->full = full;
    ln->too_long = full > d->max_line;
    if (ln->too_long) {
        ln->p = d->empty;
        ln->len = 0;
        d->empty[0] = '\0';
        return 1;
    }
    if (len > 0 && p[len - 1] == '\r')
        len--;
    p[len] = '\0';
    ln->p = p;
    ln->len = len;
    return 1;
}

/* Next line: 1 and *ln filled, 0 at the end of the input, <0 fatal. */
static int line_next(qd_dump *d, dump_line *ln)
{
    if (d->rp_pos < d->rp_len) {
        char *s = d->rp + d->rp_pos;
        char *nl = memchr(s, '\n', d->rp_len - d->rp_pos);
        QD_ASSERT(nl != NULL); /* replayed lines always keep their '\n' */
        size_t len = (size_t)(nl - s);
        d->rp_pos += len + 1;
        return finish_line(d, ln, s, len, len);
    }
    if (d->rp_marker) {
        d->rp_marker = 0;
        return finish_line(d, ln, d->empty, 0, d->rp_marker_len);
    }
    if (!d->bom_done) {
        int r = skip_bom(d);
        if (r < 0)
            return r;
    }
    int partial = 0; /* 1 once part of this line went to lb */
    size_t full = 0; /* bytes of this line seen so far */
    for (;;) {
        if (d->pos < d->end) {
            char *s = d->buf + d->pos;
            size_t avail = d->end - d->pos;
            char *nl = memchr(s, '\n', avail);
            size_t take = nl ? (size_t)(nl - s) : avail;
            d->pos += take + (nl != NULL);
            full += take;
            if (nl && !partial)
                return finish_line(d, ln, s, take, take); /* in place, the common case */
            if (!partial)
                d->lb_len = 0;
            partial = 1;
            if (lb_append(d, s, take) != 0)
                return set_fatal(d, QD_ERR_NOMEM);
            if (nl)
                break;
            continue;
        }
        if (d->eof) {
            if (!partial)
                return 0;
            break; /* a last line without '\n' */
        }
        int r = fill(d);
        if (r < 0)
            return r;
    }
    if (grow(&d->lb, &d->lb_cap, d->lb_len + 1) != 0)
        return set_fatal(d, QD_ERR_NOMEM);
    return finish_line(d, ln, d->lb, d->lb_len, full);
}

/* Queues raw[from..raw_len) to be read again before everything not yet read: the
 * lines there start at line first_line. Lines still waiting in the replay buffer
 * follow them, since they come later in the file. long_line, if not NULL, is a
 * too-long line the failed row took from the input: it comes back last. */
static int replay_install(qd_dump *d, size_t from, uint64_t first_line,
                          const dump_line *long_line)
{
    size_t mine = d->raw_len - from;
    size_t keep = d->rp_len - d->rp_pos;
    if (grow(&d->rp2, &d->rp2_cap, mine + keep + 1) != 0)
        return set_fatal(d, QD_ERR_NOMEM);
    if (mine)
        memcpy(d->rp2, d->raw + from, mine);
    if (keep)
        memcpy(d->rp2 + mine, d->rp + d->rp_pos, keep);
    char *t = d->rp;
    size_t tcap = d->rp_cap;
    d->rp = d->rp2;
    d->rp_cap = d->rp2_cap;
    d->rp2 = t;
    d->rp2_cap = tcap;
    d->rp_len = mine + keep;
    d->rp_pos = 0;
    d->next_line = first_line;
    if (long_line) {
        QD_ASSERT(!d->rp_marker); /* a pending marker comes after every line read so far */
        d->rp_marker = 1;
        d->rp_marker_len = long_line->full;
    }
    return 0;
}

/* -------------------------------------------------------------------- rows ------- */

/* Makes room for one more field. */
static int fields_reserve(qd_dump *d)
{
    if (d->nfields < d->fields_cap)
        return 0;
    size_t n = d->fields_cap ? d->fields_cap * 2 : 16;
    dump_field *f = qd_reallocarray(d->fields, n, sizeof *f);
    if (!f)
        return QD_ERR_NOMEM;
    d->fields = f;
    d->fields_cap = n;
    return 0;
}

/* Splits one line at the delimiter, in place. */
static int row_plain(qd_dump *d, dump_line *ln)
{
    d->nfields = 0;
    d->row_line = ln->no;
    char *s = ln->p, *e = ln->p + ln->len;
    for (;;) {
        char *t = memchr(s, d->delim, (size_t)(e - s));
        if (fields_reserve(d) != 0)
            return set_fatal(d, QD_ERR_NOMEM);
        dump_field *f = &d->fields[d->nfields++];
        f->p = s;
        f->len = (size_t)((t ? t : e) - s);
        if (!t)
            break;
        *t = '\0';
        s = t + 1;
    }
    if (d->expect && d->nfields != d->expect)
        return set_msg(d, QD_ERR_FORMAT, "%s:%llu: expected %zu fields, got %zu", d->name,
                       (unsigned long long)ln->no, d->expect, d->nfields);
    return 1;
}

/* libcsv field callback: copies the field to fb. */
static void csv_field_cb(void *data, size_t len, void *ud)
{
    qd_dump *d = ud;
    if (d->cb_nomem)
        return;
    if (fields_reserve(d) != 0 || grow(&d->fb, &d->fb_cap, d->fb_len + len + 1) != 0) {
        d->cb_nomem = 1;
        return;
    }
    if (len)
        memcpy(d->fb + d->fb_len, data, len);
    d->fb[d->fb_len + len] = '\0';
    dump_field *f = &d->fields[d->nfields++];
    f->off = d->fb_len;
    f->len = len;
    d->fb_len += len + 1;
}

/* libcsv row callback. */
static void csv_row_cb(int c, void *ud)
{
    (void)c;
    ((qd_dump *)ud)->row_done = 1;
}

/* libcsv: spaces around unquoted fields are data (RFC 4180), not trimmed. */
static int csv_no_space(unsigned char c)
{
    (void)c;
    return 0;
}

/* libcsv: rows end only at LF. The line layer drops a CR before it, and a lone CR is
 * data, so that line numbers and rows always agree. */
static int csv_is_term(unsigned char c)
{
    return c == '\n';
}

/* Brings libcsv back to the start of a row after an error. csv_fini() resets the
 * state, but not when strict options make it report an open quote, so drop the
 * options around the call. */
static void csv_reset(qd_dump *d)
{
    int opts = csv_get_opts(&d->csv);
    csv_set_opts(&d->csv, 0);
    csv_fini(&d->csv, NULL, NULL, NULL);
    csv_set_opts(&d->csv, (unsigned char)opts);
}

static int row_fail(qd_dump *d, uint64_t start, int probe, const dump_line *long_line,
                    const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* A quoted row that is broken in its structure. Normally: report it at its first line
 * and queue its later lines to be read again. In probe mode: queue all its lines and
 * report nothing. */
static int row_fail(qd_dump *d, uint64_t start, int probe, const dump_line *long_line,
                    const char *fmt, ...)
{
    csv_reset(d);
    size_t from = probe ? 0 : d->raw_first;
    int r = replay_install(d, from, probe ? start : start + 1, long_line);
    if (r < 0)
        return r;
    if (probe)
        return ROW_PROBE_FAILED;
    char reason[QD_ERRMSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    return set_msg(d, QD_ERR_FORMAT, "%s:%llu: %s", d->name, (unsigned long long)start,
                   reason);
}

/* Reads one quoted row through libcsv, starting with line *ln (not blank, not too
 * long) and taking more lines while a quoted field is open. */
static int row_quoted(qd_dump *d, dump_line *ln, int probe)
{
    uint64_t start = ln->no;
    d->raw_len = d->raw_first = 0;
    d->nfields = d->fb_len = 0;
    d->row_done = d->cb_nomem = 0;
    for (;;) {
        if (ln->too_long)
            return row_fail(d, start, probe, ln,
                            "quoted field still open at line %llu, which is over the "
                            "limit of %zu bytes (unterminated quote?)",
                            (unsigned long long)ln->no, d->max_line);
        int over = d->raw_len + ln->len > d->max_line;
        /* Keep the line even when over the limit: it must be read again. */
        if (grow(&d->raw, &d->raw_cap, d->raw_len + ln->len + 1) != 0)
            return set_fatal(d, QD_ERR_NOMEM);
        memcpy(d->raw + d->raw_len, ln->p, ln->len);
        d->raw_len += ln->len;
        d->raw[d->raw_len++] = '\n';
        if (ln->no == start)
            d->raw_first = d->raw_len;
        if (over)
            return row_fail(d, start, probe, NULL,
                            "quoted field still open after %zu bytes, at line %llu "
                            "(unterminated quote?)",
                            d->max_line, (unsigned long long)ln->no);
        size_t n = csv_parse(&d->csv, ln->p, ln->len, csv_field_cb, csv_row_cb, d);
        if (n == ln->len)
            n += csv_parse(&d->csv, "\n", 1, csv_field_cb, csv_row_cb, d);
        if (d->cb_nomem || (n != ln->len + 1 && csv_error(&d->csv) != CSV_EPARSE)) {
            csv_reset(d);
            return set_fatal(d, QD_ERR_NOMEM);
        }
        if (n != ln->len + 1) {
            const char *what = d->csv.quoted
                                   ? "text after a closing quote (inner quotes must be "
                                     "doubled)"
                                   : "quote inside an unquoted field";
            if (ln->no == start)
                return row_fail(d, start, probe, NULL, "%s", what);
            return row_fail(d, start, probe, NULL,
                            "%s at line %llu (the quoted field may be unterminated)", what,
                            (unsigned long long)ln->no);
        }
        if (d->row_done)
            break;
        int r = line_next(d, ln);
        if (r < 0)
            return r;
        if (r == 0)
            return row_fail(d, start, probe, NULL,
                            "quoted field not closed at the end of the file");
    }
    if (d->expect && d->nfields != d->expect) {
        if (probe || d->raw_len != d->raw_first)
            return row_fail(d, start, probe, NULL, "expected %zu fields, got %zu",
                            d->expect, d->nfields);
        return set_msg(d, QD_ERR_FORMAT, "%s:%llu: expected %zu fields, got %zu", d->name,
                       (unsigned long long)start, d->expect, d->nfields);
    }
    for (size_t i = 0; i < d->nfields; i++)
        d->fields[i].p = d->fb + d->fields[i].off;
    d->row_line = start;
    return 1;
}

/* Next row into d->fields: 1, 0 at the end, QD_ERR_FORMAT (a skipped row, message
 * set), or fatal. */
static int row_next(qd_dump *d)
{
    dump_line ln;
    for (;;) {
        int r = line_next(d, &ln);
        if (r <= 0)
            return r;
        if (ln.too_long)
            return set_msg(d, QD_ERR_FORMAT,
                           "%s:%llu: line of %zu bytes is over the limit of %zu", d->name,
                           (unsigned long long)ln.no, ln.full, d->max_line);
        if (ln.len == 0)
            continue; /* blank line */
        if (d->row_mode == ROW_PLAIN)
            return row_plain(d, &ln);
        char *q = memchr(ln.p, '"', ln.len);
        if (!q)
            return row_plain(d, &ln); /* no quote: both readings agree */
        if (d->row_mode == ROW_QUOTED)
            return row_quoted(d, &ln, 0);
        /* ROW_DETECT: the first field holding a quote decides. */
        if (q != ln.p && q[-1] != d->delim) {
            d->row_mode = ROW_PLAIN;
            d->quoting = QD_DUMP_QUOTING_NO;
            return row_plain(d, &ln);
        }
        r = row_quoted(d, &ln, 1);
        if (r == 1) {
            d->row_mode = ROW_QUOTED;
            d->quoting = QD_DUMP_QUOTING_YES;
            return 1;
        }
        if (r < 0)
            return r;
        d->row_mode = ROW_PLAIN; /* the row's lines are queued again: read them plain */
        d->quoting = QD_DUMP_QUOTING_NO;
    }
}

/* ------------------------------------------------------------------ checks ------- */

/* Checks an id and its text by the rules of input.h. NULL if fine, else the reason,
 * written into why. */
static const char *check_question(const qd_dump *d, const char *id, size_t id_len,
                                  const char *text, size_t text_len, char *why, size_t whylen)
{
    return qd_input_check_question(id, id_len, d->max_id, text, text_len, d->max_text, 0,
                                   why, whylen)
               ? why
               : NULL;
}

/* Checks id and text; fills rec or reports the record at `line`. */
static int make_rec(qd_dump *d, qd_dump_rec *rec, const char *id, size_t id_len,
                    const char *text, size_t text_len, uint64_t line)
{
    char why[256];
    const char *bad = check_question(d, id, id_len, text, text_len, why, sizeof why);
    if (bad)
        return set_msg(d, QD_ERR_FORMAT, "%s:%llu: %s", d->name, (unsigned long long)line,
                       bad);
    rec->id = id;
    rec->id_len = id_len;
    rec->text = text;
    rec->text_len = text_len;
    rec->line = line;
    return 1;
}

/* ------------------------------------------------------------------- quora ------- */

/* Looks the qid up in the seen set and adds it if new. *status: 0 new, 1 seen with
 * the same text, 2 seen with another text. */
static int seen_check(qd_dump *d, const char *id, size_t len, uint64_t text_hash,
                      int *status)
{
    uint64_t h = qd_hash64(QD_HASH64_INIT, id, len);
    if (h == 0)
        h = 1;
    if ((d->seen_used + 1) * 10 > d->seen_cap * 7) {
        size_t ncap = d->seen_cap ? d->seen_cap * 2 : 1024;
        dump_seen_slot *ns = qd_calloc(ncap, sizeof *ns);
        if (!ns)
            return QD_ERR_NOMEM;
        for (size_t i = 0; i < d->seen_cap; i++) {
            if (!d->seen[i].hash)
                continue;
            size_t j = (size_t)d->seen[i].hash & (ncap - 1);
            while (ns[j].hash)
                j = (j + 1) & (ncap - 1);
            ns[j] = d->seen[i];
        }
        qd_free(d->seen);
        d->seen = ns;
        d->seen_cap = ncap;
    }
    size_t j = (size_t)h & (d->seen_cap - 1);
    while (d->seen[j].hash) {
        dump_seen_slot *s = &d->seen[j];
        if (s->hash == h && s->key_len == len &&
            memcmp(d->seen_keys + s->key_off, id, len) == 0) {
            *status = s->text_hash == text_hash ? 1 : 2;
            return 0;
        }
        j = (j + 1) & (d->seen_cap - 1);
    }
    if (grow(&d->seen_keys, &d->seen_keys_cap, d->seen_keys_len + len) != 0)
        return QD_ERR_NOMEM;
    memcpy(d->seen_keys + d->seen_keys_len, id, len);
    d->seen[j].hash = h;
    d->seen[j].text_hash = text_hash;
    d->seen[j].key_off = d->seen_keys_len;
    d->seen[j].key_len = len;
    d->seen_keys_len += len;
    d->seen_used++;
    *status = 0;
    return 0;
}

/* Turns the current Quora row into events: a record for each new qid, an error for
 * each bad question or qid seen before with another text. */
static int quora_row(qd_dump *d)
{
    d->ev_n = d->ev_i = 0;
    for (int q = 0; q < 2; q++) {
        dump_field *id = &d->fields[1 + q], *text = &d->fields[3 + q];
        dump_event *ev = &d->ev[d->ev_n];
        char why[256], shown[64];
        const char *bad = check_question(d, id->p, id->len, text->p, text->len, why, sizeof why);
        if (bad) {
            ev->is_err = 1;
            snprintf(ev->msg, sizeof ev->msg, "%s:%llu: question%d: %s", d->name,
                     (unsigned long long)d->row_line, q + 1, bad);
            d->ev_n++;
            continue;
        }
        int status;
        if (seen_check(d, id->p, id->len, qd_hash64(QD_HASH64_INIT, text->p, text->len),
                       &status) != 0)
            return set_fatal(d, QD_ERR_NOMEM);
        if (status == 1)
            continue;
        if (status == 2) {
            ev->is_err = 1;
            snprintf(ev->msg, sizeof ev->msg,
                     "%s:%llu: qid %s appears with two different texts", d->name,
                     (unsigned long long)d->row_line,
                     printable(id->p, id->len, shown, sizeof shown, 40));
            d->ev_n++;
            continue;
        }
        ev->is_err = 0;
        ev->rec.id = id->p;
        ev->rec.id_len = id->len;
        ev->rec.text = text->p;
        ev->rec.text_len = text->len;
        ev->rec.line = d->row_line;
        d->ev_n++;
    }
    return 0;
}

static int quora_next(qd_dump *d, qd_dump_rec *rec)
{
    for (;;) {
        if (d->ev_i < d->ev_n) {
            dump_event *ev = &d->ev[d->ev_i++];
            if (ev->is_err) {
                memcpy(d->errmsg, ev->msg, sizeof d->errmsg);
                return QD_ERR_FORMAT;
            }
            *rec = ev->rec;
            return 1;
        }
        d->ev_n = d->ev_i = 0;
        int r = row_next(d);
        if (r <= 0)
            return r;
        r = quora_row(d);
        if (r < 0)
            return r;
    }
}

/* ------------------------------------------------------------ tsv, csv ----------- */

static int tsv_next(qd_dump *d, qd_dump_rec *rec)
{
    int r = row_next(d);
    if (r <= 0)
        return r;
    return make_rec(d, rec, d->fields[0].p, d->fields[0].len, d->fields[1].p,
                    d->fields[1].len, d->row_line);
}

static int csv_next(qd_dump *d, qd_dump_rec *rec)
{
    int r = row_next(d);
    if (r <= 0)
        return r;
    dump_field *id = &d->fields[d->csv_id], *text = &d->fields[d->csv_text];
    return make_rec(d, rec, id->p, id->len, text->p, text->len, d->row_line);
}

/* ------------------------------------------------------------------- jsonl ------- */

static int jsonl_next(qd_dump *d, qd_dump_rec *rec)
{
    dump_line ln;
    int r;
    do {
        r = line_next(d, &ln);
        if (r <= 0)
            return r;
    } while (!ln.too_long && ln.len == 0);
    unsigned long long no = (unsigned long long)ln.no;
    if (ln.too_long)
        return set_msg(d, QD_ERR_FORMAT, "%s:%llu: line of %zu bytes is over the limit of %zu",
                       d->name, no, ln.full, d->max_line);
    json_error_t je;
    json_t *j = json_loadb(ln.p, ln.len, JSON_REJECT_DUPLICATES, &je);
    if (!j) {
        if (json_error_code(&je) == json_error_out_of_memory)
            return set_fatal(d, QD_ERR_NOMEM);
        char shown[160]; /* jansson quotes the input near the error: keep it printable */
        return set_msg(d, QD_ERR_FORMAT, "%s:%llu: invalid JSON at column %d: %s", d->name,
                       no, je.column,
                       printable(je.text, strlen(je.text), shown, sizeof shown, 120));
    }
    d->json = j; /* freed at the next call: the record points into it */
    if (!json_is_object(j))
        return set_msg(d, QD_ERR_FORMAT, "%s:%llu: not a JSON object", d->name, no);
    json_t *id = json_object_get(j, "id"), *text = json_object_get(j, "text");
    if (!id || !text)
        return set_msg(d, QD_ERR_FORMAT, "%s:%llu: no \"%s\" key", d->name, no,
                       id ? "text" : "id");
    const char *ids;
    size_t idn;
    if (json_is_string(id)) {
        ids = json_string_value(id);
        idn = json_string_length(id);
    } else if (json_is_integer(id)) {
        int n = snprintf(d->idnum, sizeof d->idnum, "%" JSON_INTEGER_FORMAT,
                         json_integer_value(id));
        ids = d->idnum;
        idn = (size_t)n;
    } else {
        return set_msg(d, QD_ERR_FORMAT, "%s:%llu: \"id\" must be a string or an integer",
                       d->name, no);
    }
    if (!json_is_string(text))
        return set_msg(d, QD_ERR_FORMAT, "%s:%llu: \"text\" must be a string", d->name, no);
    return make_rec(d, rec, ids, idn, json_string_value(text), json_string_length(text),
                    ln.no);
}

/* ------------------------------------------------------------ open, close -------- */

qd_dump_opts qd_dump_opts_default(void)
{
    qd_dump_opts o;
    memset(&o, 0, sizeof o);
    o.format = QD_DUMP_AUTO;
    o.quoting = QD_DUMP_QUOTING_AUTO;
    o.id_col = "id";
    o.text_col = "text";
    o.max_text_bytes = QD_DUMP_DEFAULT_MAX_TEXT;
    o.max_id_bytes = QD_DUMP_DEFAULT_MAX_ID;
    o.max_line_bytes = QD_DUMP_DEFAULT_MAX_LINE;
    return o;
}

static const char *const format_names[] = {"auto", "quora", "tsv", "csv", "jsonl"};

int qd_dump_parse_format(const char *name, qd_dump_format *f)
{
    for (int i = 0; i < (int)(sizeof format_names / sizeof format_names[0]); i++) {
        if (name && strcmp(name, format_names[i]) == 0) {
            *f = (qd_dump_format)i;
            return 0;
        }
    }
    return QD_ERR_INVAL;
}

const char *qd_dump_format_name(qd_dump_format f)
{
    if ((int)f < 0 || (int)f >= (int)(sizeof format_names / sizeof format_names[0]))
        return "unknown";
    return format_names[f];
}

/* 1 if name ends in ext, ignoring case. */
static int has_ext(const char *name, const char *ext)
{
    size_t n = strlen(name), e = strlen(ext);
    return n > e && strcasecmp(name + n - e, ext) == 0;
}

/* Fields of a header line split at delim (no quoting), at most max, into f. */
static size_t split_header(char *s, size_t len, char delim, char **f, size_t *flen, size_t max)
{
    size_t n = 0;
    char *e = s + len;
    for (;;) {
        char *t = memchr(s, delim, (size_t)(e - s));
        if (n < max) {
            f[n] = s;
            flen[n] = (size_t)((t ? t : e) - s);
        }
        n++;
        if (!t)
            return n;
        s = t + 1;
    }
}

/* AUTO without a telling extension: looks at the first non-blank line, then queues
 * it to be read again. */
static int sniff_format(qd_dump *d)
{
    dump_line ln;
    int r;
    do {
        r = line_next(d, &ln);
        if (r < 0)
            return r;
        if (r == 0)
            return set_msg(d, QD_ERR_FORMAT,
                           "%s: empty input: cannot tell its format (give one)", d->name);
    } while (!ln.too_long && ln.len == 0);
    if (ln.too_long)
        return set_msg(d, QD_ERR_FORMAT,
                       "%s:%llu: first line of %zu bytes is over the limit of %zu", d->name,
                       (unsigned long long)ln.no, ln.full, d->max_line);
    /* Queue the line again before looking at it (splitting below writes into it). */
    d->raw_len = 0;
    if (grow(&d->raw, &d->raw_cap, ln.len + 1) != 0)
        return set_fatal(d, QD_ERR_NOMEM);
    memcpy(d->raw, ln.p, ln.len);
    d->raw[ln.len] = '\n';
    d->raw_len = ln.len + 1;
    char *f[6];
    size_t flen[6];
    size_t ntab = split_header(ln.p, ln.len, '\t', f, flen, 6);
    int is_quora = ntab == 6;
    for (size_t i = 0; is_quora && i < 6; i++)
        is_quora = flen[i] == strlen(quora_header[i]) &&
                   memcmp(f[i], quora_header[i], flen[i]) == 0;
    if (ln.p[0] == '{')
        d->format = QD_DUMP_JSONL;
    else if (is_quora)
        d->format = QD_DUMP_QUORA;
    else if (ntab == 2)
        d->format = QD_DUMP_TSV;
    else if (ntab == 1 && memchr(d->raw, ',', ln.len))
        d->format = QD_DUMP_CSV;
    else {
        char shown[64];
        return set_msg(d, QD_ERR_FORMAT,
                       "%s:%llu: cannot tell the format from the first line \"%s\" "
                       "(give one)",
                       d->name, (unsigned long long)ln.no,
                       printable(d->raw, ln.len, shown, sizeof shown, 48));
    }
    r = replay_install(d, 0, ln.no, NULL);
    return r < 0 ? r : 0;
}

/* Reads and checks the header row of quora, tsv and csv files. */
static int read_header(qd_dump *d)
{
    d->expect = 0;
    int r = row_next(d);
    if (r < 0)
        return r;
    if (r == 0)
        return set_msg(d, QD_ERR_FORMAT, "%s: empty input: no header line", d->name);
    unsigned long long no = (unsigned long long)d->row_line;
    if (d->format == QD_DUMP_QUORA) {
        int ok = d->nfields == 6;
        for (size_t i = 0; ok && i < 6; i++)
            ok = strcmp(d->fields[i].p, quora_header[i]) == 0;
        if (!ok)
            return set_msg(d, QD_ERR_FORMAT,
                           "%s:%llu: not a Quora pair file: expected the tab-separated "
                           "header \"id qid1 qid2 question1 question2 is_duplicate\"",
                           d->name, no);
        d->expect = 6;
    } else if (d->format == QD_DUMP_TSV) {
        if (d->nfields != 2)
            return set_msg(d, QD_ERR_FORMAT,
                           "%s:%llu: a two-column TSV header (id, text) has 2 fields, "
                           "this one %zu",
                           d->name, no, d->nfields);
        d->expect = 2;
    } else {
        int id_at = -1, text_at = -1;
        for (size_t i = 0; i < d->nfields; i++) {
            const char *name = d->fields[i].p;
            int *at = strcmp(name, d->id_col) == 0     ? &id_at
                      : strcmp(name, d->text_col) == 0 ? &text_at
                                                       : NULL;
            if (!at)
                continue;
            if (*at >= 0)
                return set_msg(d, QD_ERR_FORMAT, "%s:%llu: column \"%s\" appears twice",
                               d->name, no, name);
            *at = (int)i;
        }
        if (id_at < 0 || text_at < 0) {
            char shown[64];
            const char *missing = id_at < 0 ? d->id_col : d->text_col;
            return set_msg(d, QD_ERR_FORMAT, "%s:%llu: no column \"%s\" in the header",
                           d->name, no,
                           printable(missing, strlen(missing), shown, sizeof shown, 40));
        }
        d->csv_id = (size_t)id_at;
        d->csv_text = (size_t)text_at;
        d->expect = d->nfields;
    }
    return 0;
}

/* Opens a reader over fd; on failure closes fd if owned. */
static int open_common(int fd, int own_fd, const char *name, const qd_dump_opts *o,
                       qd_dump **out, char *err, size_t errlen)
{
    qd_dump_opts def = qd_dump_opts_default();
    if (!o)
        o = &def;
    *out = NULL;
    if ((int)o->format < QD_DUMP_AUTO || o->format > QD_DUMP_JSONL ||
        o->quoting < QD_DUMP_QUOTING_AUTO || o->quoting > QD_DUMP_QUOTING_NO ||
        (o->id_col && !*o->id_col) || (o->text_col && !*o->text_col)) {
        if (own_fd)
            close(fd);
        return qd_errf(err, errlen, QD_ERR_INVAL, "%s: invalid dump options", name);
    }
    int rc = QD_ERR_NOMEM;
    qd_dump *d = qd_calloc(1, sizeof *d);
    if (!d) {
        if (own_fd)
            close(fd);
        return qd_errf(err, errlen, QD_ERR_NOMEM, "%s: out of memory", name);
    }
    d->fd = fd;
    d->own_fd = own_fd;
    d->format = o->format;
    d->quoting = o->quoting;
    d->max_text = o->max_text_bytes ? o->max_text_bytes : QD_DUMP_DEFAULT_MAX_TEXT;
    d->max_id = o->max_id_bytes ? o->max_id_bytes : QD_DUMP_DEFAULT_MAX_ID;
    d->max_line = o->max_line_bytes ? o->max_line_bytes : QD_DUMP_DEFAULT_MAX_LINE;
    d->next_line = 1;
    d->name = qd_strndup(name, strlen(name));
    d->id_col = qd_strndup(o->id_col ? o->id_col : "id", strlen(o->id_col ? o->id_col : "id"));
    const char *tc = o->text_col ? o->text_col : "text";
    d->text_col = qd_strndup(tc, strlen(tc));
    d->buf = qd_malloc(DUMP_CHUNK + 1);
    if (!d->name || !d->id_col || !d->text_col || !d->buf)
        goto fail_nomem;
    if (csv_init(&d->csv, CSV_STRICT | CSV_STRICT_FINI) != 0)
        goto fail_nomem;
    d->csv_ready = 1;
    csv_set_realloc_func(&d->csv, qd_realloc);
    csv_set_free_func(&d->csv, qd_free);
    csv_set_blk_size(&d->csv, 4096);
    csv_set_space_func(&d->csv, csv_no_space);
    csv_set_term_func(&d->csv, csv_is_term);

    if (d->format == QD_DUMP_AUTO) {
        int stdin_like = strcmp(name, "<stdin>") == 0;
        if (!stdin_like && (has_ext(name, ".jsonl") || has_ext(name, ".ndjson")))
            d->format = QD_DUMP_JSONL;
        else if (!stdin_like && has_ext(name, ".csv"))
            d->format = QD_DUMP_CSV;
        else if ((rc = sniff_format(d)) != 0)
            goto fail;
    }
    switch (d->format) {
    case QD_DUMP_QUORA:
        d->delim = '\t';
        d->row_mode = ROW_PLAIN; /* the header has no quotes either way */
        break;
    case QD_DUMP_TSV:
        d->delim = '\t';
        d->row_mode = ROW_PLAIN;
        d->quoting = QD_DUMP_QUOTING_AUTO;
        break;
    case QD_DUMP_CSV:
        d->delim = ',';
        d->row_mode = ROW_QUOTED;
        d->quoting = QD_DUMP_QUOTING_AUTO;
        csv_set_delim(&d->csv, ',');
        break;
    default:
        d->quoting = QD_DUMP_QUOTING_AUTO;
        break;
    }
    if (d->format != QD_DUMP_JSONL && (rc = read_header(d)) != 0)
        goto fail;
    if (d->format == QD_DUMP_QUORA) {
        csv_set_delim(&d->csv, '\t');
        d->row_mode = d->quoting == QD_DUMP_QUOTING_YES  ? ROW_QUOTED
                      : d->quoting == QD_DUMP_QUOTING_NO ? ROW_PLAIN
                                                         : ROW_DETECT;
    }
    *out = d;
    return 0;

fail_nomem:
    rc = QD_ERR_NOMEM;
    snprintf(d->errmsg, sizeof d->errmsg, "%s: out of memory", name);
fail:
    qd_errf(err, errlen, rc, "%s", d->errmsg);
    qd_dump_close(d);
    return rc;
}

int qd_dump_open_fd(int fd, const char *name, const qd_dump_opts *o, qd_dump **out,
                    char *err, size_t errlen)
{
    QD_ASSERT(out != NULL);
    return open_common(fd, 0, name ? name : "<fd>", o, out, err, errlen);
}

int qd_dump_open(const char *path, const qd_dump_opts *o, qd_dump **out, char *err,
                 size_t errlen)
{
    QD_ASSERT(path != NULL && out != NULL);
    *out = NULL;
    if (strcmp(path, "-") == 0)
        return open_common(STDIN_FILENO, 0, "<stdin>", o, out, err, errlen);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        return qd_errf(err, errlen, e == ENOENT ? QD_ERR_NOTFOUND : QD_ERR_IO, "%s: %s", path,
                       strerror(e));
    }
    struct stat st;
    int e = fstat(fd, &st) != 0 ? errno : S_ISDIR(st.st_mode) ? EISDIR : 0;
    if (e) {
        close(fd);
        return qd_errf(err, errlen, QD_ERR_IO, "%s: %s", path, strerror(e));
    }
    return open_common(fd, 1, path, o, out, err, errlen);
}

int qd_dump_next(qd_dump *d, qd_dump_rec *rec)
{
    QD_ASSERT(d != NULL && rec != NULL);
    if (d->fatal)
        return d->fatal;
    if (d->json) {
        json_decref(d->json);
        d->json = NULL;
    }
    int r;
    switch (d->format) {
    case QD_DUMP_QUORA: r = quora_next(d, rec); break;
    case QD_DUMP_TSV: r = tsv_next(d, rec); break;
    case QD_DUMP_CSV: r = csv_next(d, rec); break;
    case QD_DUMP_JSONL: r = jsonl_next(d, rec); break;
    default: QD_ASSERT(!"format resolved at open"); return QD_ERR_INVAL;
    }
    if (r == QD_ERR_FORMAT)
        d->skipped++;
    else if (r < 0 && !d->fatal)
        set_fatal(d, r);
    return r;
}

const char *qd_dump_errmsg(const qd_dump *d)
{
    return d ? d->errmsg : "";
}

qd_dump_format qd_dump_format_of(const qd_dump *d)
{
    return d->format;
}

int qd_dump_quoted(const qd_dump *d)
{
    if (d->format != QD_DUMP_QUORA || d->quoting == QD_DUMP_QUOTING_AUTO)
        return -1;
    return d->quoting == QD_DUMP_QUOTING_YES;
}

uint64_t qd_dump_bytes_read(const qd_dump *d)
{
    return d->bytes_read;
}

uint64_t qd_dump_skipped(const qd_dump *d)
{
    return d->skipped;
}

void qd_dump_close(qd_dump *d)
{
    if (!d)
        return;
    if (d->own_fd)
        close(d->fd);
    if (d->csv_ready)
        csv_free(&d->csv);
    if (d->json)
        json_decref(d->json);
    qd_free(d->name);
    qd_free(d->id_col);
    qd_free(d->text_col);
    qd_free(d->buf);
    qd_free(d->lb);
    qd_free(d->rp);
    qd_free(d->rp2);
    qd_free(d->raw);
    qd_free(d->fb);
    qd_free(d->fields);
    qd_free(d->seen);
    qd_free(d->seen_keys);
    qd_free(d);
}
