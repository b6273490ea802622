/*
 * rowread.c - the row reader of rowread.h: lines from 64 KiB chunks and a replay
 * buffer, rows split plain or through libcsv (see the header for the design).
 */
#include "qdup/rowread.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <csv.h>

#include "qdup/common.h"

/* Bytes asked from read() at a time. */
#define ROWREAD_CHUNK (64u * 1024u)

/* row_quoted() in probe mode: the row is not a well-formed quoted row, its lines are
 * back in the replay buffer and nothing was reported. */
#define ROW_PROBE_FAILED 2

struct qd_rowread {
    /* The source. */
    int fd;               /* descriptor read from (not owned) */
    char *name;           /* file name in messages: the path, "<stdin>" */
    size_t max_line;      /* longest line / raw quoted record, bytes */

    /* Reading the file. */
    char *buf;            /* (ROWREAD_CHUNK + 1) bytes read from fd; +1 for a NUL */
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
    qd_rowread_mode row_mode; /* QD_ROWREAD_PLAIN, _QUOTED or _DETECT */
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
    qd_rowread_field *fields; /* (fields_cap) fields of the current row */
    size_t *offs;         /* (fields_cap) while libcsv fills a row: offset of each in fb */
    size_t nfields;       /* fields in the current row */
    size_t fields_cap;    /* fields allocated */
    int row_done;         /* set by the libcsv row callback */
    int cb_nomem;         /* set by a libcsv callback that could not allocate */
    uint64_t row_line;    /* line where the current row starts */

    /* Outcome. */
    int fatal;            /* 0, or the fatal error every later call returns */
    char errmsg[QD_ERRMSG_MAX]; /* last "file:line: reason" or fatal message */
};

/* ---------------------------------------------------------------- messages ------- */

static int set_msg(qd_rowread *rd, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Formats rd->errmsg and returns rc. */
static int set_msg(qd_rowread *rd, int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(rd->errmsg, sizeof rd->errmsg, fmt, ap);
    va_end(ap);
    return rc;
}

/* A fatal error: remembered, so that every later call returns it too. */
static int set_fatal(qd_rowread *rd, int rc)
{
    if (rc == QD_ERR_NOMEM)
        set_msg(rd, rc, "%s: out of memory", rd->name);
    rd->fatal = rc;
    return rc;
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
 * than ROWREAD_CHUNK bytes from position 0). 1: bytes came; 0: end of file; <0 fatal. */
static int fill(qd_rowread *rd)
{
    if (rd->pos == rd->end)
        rd->pos = rd->end = 0;
    QD_ASSERT(rd->end < ROWREAD_CHUNK);
    for (;;) {
        ssize_t r = read(rd->fd, rd->buf + rd->end, ROWREAD_CHUNK - rd->end);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            set_msg(rd, QD_ERR_IO, "%s: read failed: %s", rd->name, strerror(e));
            return set_fatal(rd, QD_ERR_IO);
        }
        if (r == 0) {
            rd->eof = 1;
            return 0;
        }
        rd->end += (size_t)r;
        rd->bytes_read += (uint64_t)r;
        return 1;
    }
}

/* Skips a UTF-8 byte order mark at the very start of the input. A pipe may deliver
 * fewer than three bytes per read, so keep reading until there are three or the end. */
static int skip_bom(qd_rowread *rd)
{
    rd->bom_done = 1;
    while (rd->end - rd->pos < 3 && !rd->eof) {
        int r = fill(rd);
        if (r < 0)
            return r;
    }
    if (rd->end - rd->pos >= 3 && memcmp(rd->buf + rd->pos, "\xEF\xBB\xBF", 3) == 0)
        rd->pos += 3;
    return 0;
}

/* Appends a piece of a line crossing chunks to lb, keeping at most max_line bytes
 * (a longer line is too long anyway and its bytes are never used). */
static int lb_append(qd_rowread *rd, const char *s, size_t n)
{
    size_t room = rd->lb_len < rd->max_line ? rd->max_line - rd->lb_len : 0;
    if (n > room)
        n = room;
    if (n == 0)
        return 0;
    if (grow(&rd->lb, &rd->lb_cap, rd->lb_len + n + 1) != 0)
        return QD_ERR_NOMEM;
    memcpy(rd->lb + rd->lb_len, s, n);
    rd->lb_len += n;
    return 0;
}

/* Fills *ln from bytes p[0..len) of a line whose length in the file is `full`; p[len]
 * must be writable (it holds the line end, or is spare room in lb). */
static int finish_line(qd_rowread *rd, qd_rowread_line *ln, char *p, size_t len, size_t full)
{
    ln->no = rd->next_line++;
    ln->full = full;
    ln->too_long = full > rd->max_line;
    if (ln->too_long) {
        ln->p = rd->empty;
        ln->len = 0;
        rd->empty[0] = '\0';
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
static int line_next(qd_rowread *rd, qd_rowread_line *ln)
{
    if (rd->rp_pos < rd->rp_len) {
        char *s = rd->rp + rd->rp_pos;
        char *nl = memchr(s, '\n', rd->rp_len - rd->rp_pos);
        QD_ASSERT(nl != NULL); /* replayed lines always keep their '\n' */
        size_t len = (size_t)(nl - s);
        rd->rp_pos += len + 1;
        return finish_line(rd, ln, s, len, len);
    }
    if (rd->rp_marker) {
        rd->rp_marker = 0;
        return finish_line(rd, ln, rd->empty, 0, rd->rp_marker_len);
    }
    if (!rd->bom_done) {
        int r = skip_bom(rd);
        if (r < 0)
            return r;
    }
    int partial = 0; /* 1 once part of this line went to lb */
    size_t full = 0; /* bytes of this line seen so far */
    for (;;) {
        if (rd->pos < rd->end) {
            char *s = rd->buf + rd->pos;
            size_t avail = rd->end - rd->pos;
            char *nl = memchr(s, '\n', avail);
            size_t take = nl ? (size_t)(nl - s) : avail;
            rd->pos += take + (nl != NULL);
            full += take;
            if (nl && !partial)
                return finish_line(rd, ln, s, take, take); /* in place, the common case */
            if (!partial)
                rd->lb_len = 0;
            partial = 1;
            if (lb_append(rd, s, take) != 0)
                return set_fatal(rd, QD_ERR_NOMEM);
            if (nl)
                break;
            continue;
        }
        if (rd->eof) {
            if (!partial)
                return 0;
            break; /* a last line without '\n' */
        }
        int r = fill(rd);
        if (r < 0)
            return r;
    }
    if (grow(&rd->lb, &rd->lb_cap, rd->lb_len + 1) != 0)
        return set_fatal(rd, QD_ERR_NOMEM);
    return finish_line(rd, ln, rd->lb, rd->lb_len, full);
}

/* Queues raw[from..raw_len) to be read again before everything not yet read: the
 * lines there start at line first_line. Lines still waiting in the replay buffer
 * follow them, since they come later in the file. long_line, if not NULL, is a
 * too-long line the failed row took from the input: it comes back last. */
static int replay_install(qd_rowread *rd, size_t from, uint64_t first_line,
                          const qd_rowread_line *long_line)
{
    size_t mine = rd->raw_len - from;
    size_t keep = rd->rp_len - rd->rp_pos;
    if (grow(&rd->rp2, &rd->rp2_cap, mine + keep + 1) != 0)
        return set_fatal(rd, QD_ERR_NOMEM);
    if (mine)
        memcpy(rd->rp2, rd->raw + from, mine);
    if (keep)
        memcpy(rd->rp2 + mine, rd->rp + rd->rp_pos, keep);
    char *t = rd->rp;
    size_t tcap = rd->rp_cap;
    rd->rp = rd->rp2;
    rd->rp_cap = rd->rp2_cap;
    rd->rp2 = t;
    rd->rp2_cap = tcap;
    rd->rp_len = mine + keep;
    rd->rp_pos = 0;
    rd->next_line = first_line;
    if (long_line) {
        QD_ASSERT(!rd->rp_marker); /* a pending marker comes after every line read so far */
        rd->rp_marker = 1;
        rd->rp_marker_len = long_line->full;
    }
    return 0;
}

/* -------------------------------------------------------------------- rows ------- */

/* Makes room for one more field. */
static int fields_reserve(qd_rowread *rd)
{
    if (rd->nfields < rd->fields_cap)
        return 0;
    size_t n = rd->fields_cap ? rd->fields_cap * 2 : 16;
    qd_rowread_field *f = qd_reallocarray(rd->fields, n, sizeof *f);
    if (!f)
        return QD_ERR_NOMEM;
    rd->fields = f;
    size_t *o = qd_reallocarray(rd->offs, n, sizeof *o);
    if (!o)
        return QD_ERR_NOMEM;
    rd->offs = o;
    rd->fields_cap = n;
    return 0;
}

/* Splits one line at the delimiter, in place. */
static int row_plain(qd_rowread *rd, qd_rowread_line *ln)
{
    rd->nfields = 0;
    rd->row_line = ln->no;
    char *s = ln->p, *e = ln->p + ln->len;
    for (;;) {
        char *t = memchr(s, rd->delim, (size_t)(e - s));
        if (fields_reserve(rd) != 0)
            return set_fatal(rd, QD_ERR_NOMEM);
        qd_rowread_field *f = &rd->fields[rd->nfields++];
        f->p = s;
        f->len = (size_t)((t ? t : e) - s);
        if (!t)
            break;
        *t = '\0';
        s = t + 1;
    }
    if (rd->expect && rd->nfields != rd->expect)
        return set_msg(rd, QD_ERR_FORMAT, "%s:%llu: expected %zu fields, got %zu", rd->name,
                       (unsigned long long)ln->no, rd->expect, rd->nfields);
    return 1;
}

/* libcsv field callback: copies the field to fb. */
static void csv_field_cb(void *data, size_t len, void *ud)
{
    qd_rowread *rd = ud;
    if (rd->cb_nomem)
        return;
    if (fields_reserve(rd) != 0 || grow(&rd->fb, &rd->fb_cap, rd->fb_len + len + 1) != 0) {
        rd->cb_nomem = 1;
        return;
    }
    if (len)
        memcpy(rd->fb + rd->fb_len, data, len);
    rd->fb[rd->fb_len + len] = '\0';
    rd->offs[rd->nfields] = rd->fb_len;
    rd->fields[rd->nfields++].len = len;
    rd->fb_len += len + 1;
}

/* libcsv row callback. */
static void csv_row_cb(int c, void *ud)
{
    (void)c;
    ((qd_rowread *)ud)->row_done = 1;
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
static void csv_reset(qd_rowread *rd)
{
    int opts = csv_get_opts(&rd->csv);
    csv_set_opts(&rd->csv, 0);
    csv_fini(&rd->csv, NULL, NULL, NULL);
    csv_set_opts(&rd->csv, (unsigned char)opts);
}

static int row_fail(qd_rowread *rd, uint64_t start, int probe, const qd_rowread_line *long_line,
                    const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* A quoted row that is broken in its structure. Normally: report it at its first line
 * and queue its later lines to be read again. In probe mode: queue all its lines and
 * report nothing. */
static int row_fail(qd_rowread *rd, uint64_t start, int probe, const qd_rowread_line *long_line,
                    const char *fmt, ...)
{
    csv_reset(rd);
    size_t from = probe ? 0 : rd->raw_first;
    int r = replay_install(rd, from, probe ? start : start + 1, long_line);
    if (r < 0)
        return r;
    if (probe)
        return ROW_PROBE_FAILED;
    char reason[QD_ERRMSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    return set_msg(rd, QD_ERR_FORMAT, "%s:%llu: %s", rd->name, (unsigned long long)start,
                   reason);
}

/* Reads one quoted row through libcsv, starting with line *ln (not blank, not too
 * long) and taking more lines while a quoted field is open. */
static int row_quoted(qd_rowread *rd, qd_rowread_line *ln, int probe)
{
    uint64_t start = ln->no;
    rd->raw_len = rd->raw_first = 0;
    rd->nfields = rd->fb_len = 0;
    rd->row_done = rd->cb_nomem = 0;
    for (;;) {
        if (ln->too_long)
            return row_fail(rd, start, probe, ln,
                            "quoted field still open at line %llu, which is over the "
                            "limit of %zu bytes (unterminated quote?)",
                            (unsigned long long)ln->no, rd->max_line);
        int over = rd->raw_len + ln->len > rd->max_line;
        /* Keep the line even when over the limit: it must be read again. */
        if (grow(&rd->raw, &rd->raw_cap, rd->raw_len + ln->len + 1) != 0)
            return set_fatal(rd, QD_ERR_NOMEM);
        memcpy(rd->raw + rd->raw_len, ln->p, ln->len);
        rd->raw_len += ln->len;
        rd->raw[rd->raw_len++] = '\n';
        if (ln->no == start)
            rd->raw_first = rd->raw_len;
        if (over)
            return row_fail(rd, start, probe, NULL,
                            "quoted field still open after %zu bytes, at line %llu "
                            "(unterminated quote?)",
                            rd->max_line, (unsigned long long)ln->no);
        size_t n = csv_parse(&rd->csv, ln->p, ln->len, csv_field_cb, csv_row_cb, rd);
        if (n == ln->len)
            n += csv_parse(&rd->csv, "\n", 1, csv_field_cb, csv_row_cb, rd);
        if (rd->cb_nomem || (n != ln->len + 1 && csv_error(&rd->csv) != CSV_EPARSE)) {
            csv_reset(rd);
            return set_fatal(rd, QD_ERR_NOMEM);
        }
        if (n != ln->len + 1) {
            const char *what = rd->csv.quoted
                                   ? "text after a closing quote (inner quotes must be "
                                     "doubled)"
                                   : "quote inside an unquoted field";
            if (ln->no == start)
                return row_fail(rd, start, probe, NULL, "%s", what);
            return row_fail(rd, start, probe, NULL,
                            "%s at line %llu (the quoted field may be unterminated)", what,
                            (unsigned long long)ln->no);
        }
        if (rd->row_done)
            break;
        int r = line_next(rd, ln);
        if (r < 0)
            return r;
        if (r == 0)
            return row_fail(rd, start, probe, NULL,
                            "quoted field not closed at the end of the file");
    }
    if (rd->expect && rd->nfields != rd->expect) {
        if (probe || rd->raw_len != rd->raw_first)
            return row_fail(rd, start, probe, NULL, "expected %zu fields, got %zu",
                            rd->expect, rd->nfields);
        return set_msg(rd, QD_ERR_FORMAT, "%s:%llu: expected %zu fields, got %zu", rd->name,
                       (unsigned long long)start, rd->expect, rd->nfields);
    }
    for (size_t i = 0; i < rd->nfields; i++)
        rd->fields[i].p = rd->fb + rd->offs[i];
    rd->row_line = start;
    return 1;
}

/* Next row into rd->fields: 1, 0 at the end, QD_ERR_FORMAT (a skipped row, message
 * set), or fatal. */
static int row_next(qd_rowread *rd)
{
    qd_rowread_line ln;
    for (;;) {
        int r = line_next(rd, &ln);
        if (r <= 0)
            return r;
        if (ln.too_long)
            return set_msg(rd, QD_ERR_FORMAT,
                           "%s:%llu: line of %zu bytes is over the limit of %zu", rd->name,
                           (unsigned long long)ln.no, ln.full, rd->max_line);
        if (ln.len == 0)
            continue; /* blank line */
        if (rd->row_mode == QD_ROWREAD_PLAIN)
            return row_plain(rd, &ln);
        char *q = memchr(ln.p, '"', ln.len);
        if (!q)
            return row_plain(rd, &ln); /* no quote: both readings agree */
        if (rd->row_mode == QD_ROWREAD_QUOTED)
            return row_quoted(rd, &ln, 0);
        /* QD_ROWREAD_DETECT: the first field holding a quote decides. */
        if (q != ln.p && q[-1] != rd->delim) {
            rd->row_mode = QD_ROWREAD_PLAIN;
            return row_plain(rd, &ln);
        }
        r = row_quoted(rd, &ln, 1);
        if (r == 1) {
            rd->row_mode = QD_ROWREAD_QUOTED;
            return 1;
        }
        if (r < 0)
            return r;
        rd->row_mode = QD_ROWREAD_PLAIN; /* the row's lines are queued again: read them plain */
    }
}

/* ------------------------------------------------------------------- API --------- */

int qd_rowread_open(int fd, const char *name, size_t max_line, qd_rowread **out)
{
    *out = NULL;
    qd_rowread *rd = qd_calloc(1, sizeof *rd);
    if (!rd)
        return QD_ERR_NOMEM;
    rd->fd = fd;
    rd->max_line = max_line;
    rd->next_line = 1;
    rd->row_mode = QD_ROWREAD_PLAIN;
    rd->delim = '\t';
    rd->name = qd_strndup(name, strlen(name));
    rd->buf = qd_malloc(ROWREAD_CHUNK + 1);
    if (!rd->name || !rd->buf || csv_init(&rd->csv, CSV_STRICT | CSV_STRICT_FINI) != 0) {
        qd_rowread_close(rd);
        return QD_ERR_NOMEM;
    }
    rd->csv_ready = 1;
    csv_set_realloc_func(&rd->csv, qd_realloc);
    csv_set_free_func(&rd->csv, qd_free);
    csv_set_blk_size(&rd->csv, 4096);
    csv_set_space_func(&rd->csv, csv_no_space);
    csv_set_term_func(&rd->csv, csv_is_term);
    csv_set_delim(&rd->csv, '\t');
    *out = rd;
    return 0;
}

void qd_rowread_close(qd_rowread *rd)
{
    if (!rd)
        return;
    if (rd->csv_ready)
        csv_free(&rd->csv);
    qd_free(rd->name);
    qd_free(rd->buf);
    qd_free(rd->lb);
    qd_free(rd->rp);
    qd_free(rd->rp2);
    qd_free(rd->raw);
    qd_free(rd->fb);
    qd_free(rd->fields);
    qd_free(rd->offs);
    qd_free(rd);
}

void qd_rowread_set_delim(qd_rowread *rd, char delim)
{
    rd->delim = delim;
    csv_set_delim(&rd->csv, (unsigned char)delim);
}

void qd_rowread_set_mode(qd_rowread *rd, qd_rowread_mode mode)
{
    rd->row_mode = mode;
}

qd_rowread_mode qd_rowread_get_mode(const qd_rowread *rd)
{
    return rd->row_mode;
}

void qd_rowread_set_expect(qd_rowread *rd, size_t nfields)
{
    rd->expect = nfields;
}

int qd_rowread_next(qd_rowread *rd, qd_rowread_field **fields, size_t *nfields,
                    uint64_t *line)
{
    if (rd->fatal)
        return rd->fatal;
    int r = row_next(rd);
    if (r == 1) {
        *fields = rd->fields;
        *nfields = rd->nfields;
        *line = rd->row_line;
    }
    return r;
}

int qd_rowread_line_next(qd_rowread *rd, qd_rowread_line *ln)
{
    if (rd->fatal)
        return rd->fatal;
    return line_next(rd, ln);
}

int qd_rowread_unread(qd_rowread *rd, const qd_rowread_line *ln)
{
    QD_ASSERT(!ln->too_long);
    rd->raw_len = 0;
    if (grow(&rd->raw, &rd->raw_cap, ln->len + 1) != 0)
        return set_fatal(rd, QD_ERR_NOMEM);
    memcpy(rd->raw, ln->p, ln->len);
    rd->raw[ln->len] = '\n';
    rd->raw_len = ln->len + 1;
    return replay_install(rd, 0, ln->no, NULL);
}

const char *qd_rowread_errmsg(const qd_rowread *rd)
{
    return rd ? rd->errmsg : "";
}

uint64_t qd_rowread_bytes_read(const qd_rowread *rd)
{
    return rd->bytes_read;
}
