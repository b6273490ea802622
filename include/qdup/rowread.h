/*
 * rowread.h - the one reader of delimited rows (TSV and CSV, plain or RFC 4180 quoted)
 * behind the dump readers (dump.h) and the pair files (pairs.h).
 *
 * Two layers, each pulling from the one below:
 *
 *   lines    qd_rowread_line() cuts the input into lines. It reads the file in 64 KiB
 *            chunks and hands out a line in place when it lies inside one chunk, or
 *            copies it into a line buffer when it crosses chunks. A UTF-8 byte order
 *            mark at the start is skipped and a CR before the LF dropped. A line
 *            longer than max_line is consumed to its end without being stored and
 *            comes out flagged too_long. Before the file, lines come from a replay
 *            buffer: the rows layer pushes lines back there to read them again.
 *   rows     qd_rowread_next() turns lines into rows of fields. Plain rows are one line
 *            split at the delimiter, in place. Quoted rows go through libcsv in strict
 *            mode, fed one line at a time, so that we always know on which line a row
 *            starts; a line without a quote character gives the same fields either
 *            way and takes the plain path, which is faster. A quoted row keeps a copy
 *            of its raw lines. If it turns out broken (stray quote, open quote at end
 *            of file, over max_line bytes, wrong field count), it is reported at its
 *            first line and its later lines are pushed back into the replay buffer:
 *            an unterminated quote then costs one record, not every record up to the
 *            next quote. The replay never grows past one raw record.
 *
 * QD_ROWREAD_DETECT reads plain until the first field holding a quote character: if
 * that quote is not the field's first byte the file is plain; otherwise the row is
 * tried as a quoted row, and the file is quoted when it parses with the expected
 * number of fields, plain if not (its lines are pushed back and read plain).
 *
 * Pointers handed out (lines, fields) stay valid until the next call. Errors: 0 or 1
 * as documented, QD_ERR_FORMAT for a malformed row or line that was skipped (the
 * reader goes on), or a fatal QD_ERR_NOMEM / QD_ERR_IO that every later call returns;
 * qd_rowread_errmsg() says "name:line: reason" or what was fatal.
 */
#ifndef QDUP_ROWREAD_H
#define QDUP_ROWREAD_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct qd_rowread qd_rowread;

/* How rows are cut out of lines (see above). */
typedef enum qd_rowread_mode {
    QD_ROWREAD_PLAIN,  /* split each line at the delimiter; quotes are ordinary bytes */
    QD_ROWREAD_QUOTED, /* RFC 4180 quoting through libcsv */
    QD_ROWREAD_DETECT, /* plain until the first quote decides (becomes one of the two) */
} qd_rowread_mode;

/* One line. */
typedef struct qd_rowread_line {
    char *p;      /* its bytes without the line end, NUL-terminated (p[len] == 0) */
    size_t len;   /* bytes in p */
    size_t full;  /* length in the file; over max_line when too_long */
    uint64_t no;  /* 1-based line number */
    int too_long; /* 1: over max_line; p holds nothing useful */
} qd_rowread_line;

/* One field of the current row. */
typedef struct qd_rowread_field {
    char *p;    /* its bytes, NUL-terminated */
    size_t len; /* bytes in the field */
} qd_rowread_field;

/* A reader over fd (not closed by the reader), named `name` in messages, with lines
 * and raw quoted records of at most max_line bytes. Starts in QD_ROWREAD_PLAIN with
 * delimiter '\t' and any number of fields. QD_ERR_NOMEM only. */
int qd_rowread_open(int fd, const char *name, size_t max_line, qd_rowread **out);
void qd_rowread_close(qd_rowread *r);

void qd_rowread_set_delim(qd_rowread *r, char delim);
void qd_rowread_set_mode(qd_rowread *r, qd_rowread_mode mode);
/* The current mode: DETECT until a quote decided it. */
qd_rowread_mode qd_rowread_get_mode(const qd_rowread *r);
/* Fields a row must have; 0 for any number (a header). */
void qd_rowread_set_expect(qd_rowread *r, size_t nfields);

/* Next row (blank lines skipped): 1 with the fields in *fields (nfields of them) and
 * the line it starts on in *line; 0 at the end; QD_ERR_FORMAT for a skipped row or
 * over-long line; or fatal. */
int qd_rowread_next(qd_rowread *r, qd_rowread_field **fields, size_t *nfields,
                    uint64_t *line);

/* Next line, for line-based formats (blank lines included): 1, 0 at the end, or
 * fatal. */
int qd_rowread_line_next(qd_rowread *r, qd_rowread_line *ln);
/* Pushes back the line ln that qd_rowread_line_next() just returned (not too long),
 * so that it is read again. 0 or QD_ERR_NOMEM (fatal). */
int qd_rowread_unread(qd_rowread *r, const qd_rowread_line *ln);

/* "name:line: reason" of the last QD_ERR_FORMAT, or the fatal error's detail. */
const char *qd_rowread_errmsg(const qd_rowread *r);
/* Bytes read from fd so far. */
uint64_t qd_rowread_bytes_read(const qd_rowread *r);

#ifdef __cplusplus
}
#endif

#endif
