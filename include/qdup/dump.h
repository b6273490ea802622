/*
 * dump.h - streaming readers for question dumps: the input of qdup-index.
 *
 * A dump is a file of records, each an external id and a question text, both UTF-8.
 * qd_dump_next() yields them one at a time while reading the file in fixed chunks, so
 * a dump may be larger than memory and may come from standard input ("-"). Four
 * formats are understood:
 *
 *   quora  Quora pair files, tab separated, header exactly
 *          "id qid1 qid2 question1 question2 is_duplicate". Both questions of a row are
 *          records, keyed by qid1 and qid2. A qid is yielded only the first time it is
 *          seen; if a later row gives a seen qid a different text (byte for byte), that
 *          question is reported as malformed ("qid 12 appears with two different
 *          texts") and the row's other question is still yielded. Two flavours share
 *          the header: the original release quotes fields RFC 4180 style (tab as
 *          delimiter, inner quotes doubled, quoted fields may span lines); the shared
 *          split files are plain TSV whose quotes are literal characters. With
 *          quoting = AUTO the first field holding a quote character decides: if the
 *          quote is not its first byte, the file is plain; if it is, the file is
 *          quoted when that row parses as a well-formed quoted row of 6 fields, and
 *          plain otherwise (the row is then read again as plain). Until a quote is
 *          seen both flavours read the same. The set of seen qids grows with the
 *          number of distinct qids (a 32-byte slot in a table at most 70% full,
 *          plus the qid's bytes).
 *   tsv    Two tab-separated columns, no quoting. The first line is a header when it
 *          names the columns (an id column: qid, id, question_id, ...; or a text
 *          column: question, text, title, ...), else it is the first question and
 *          qd_dump_note() says so.
 *   csv    RFC 4180: a header row, the id and text columns chosen by name (id_col,
 *          text_col), fields separated by commas, quoted with doubled inner quotes,
 *          quoted fields may span lines. Parsed with libcsv in strict mode; spaces
 *          are never trimmed; every row must have as many fields as the header.
 *   jsonl  One JSON object per line, {"id": ..., "text": ...}; id a string or an
 *          integer (yielded in decimal), text a string; other keys are ignored,
 *          duplicate keys make the line malformed.
 *
 * QD_DUMP_AUTO picks the format by extension (.jsonl/.ndjson: jsonl, .csv: csv) and
 * otherwise (.tsv, stdin, anything else) by the first non-blank line: a line starting
 * with '{' is jsonl, the six Quora column names are quora, two tab-separated fields
 * are tsv, a line without tabs but with commas is csv.
 *
 * Common rules. A UTF-8 byte order mark at the start of the input is skipped. Lines
 * end with LF; a CR just before the LF belongs to the line end and is dropped, also
 * inside quoted fields, so a text spanning lines holds LF newlines. Newlines inside
 * quoted texts are kept (the record of qid 4637 in the original release ends in
 * "Ahmedabad?\n"); nothing else in a text is changed. Blank lines between records are
 * ignored.
 *
 * Bad input is normal input. A malformed record is skipped and reported: next()
 * returns QD_ERR_FORMAT and qd_dump_errmsg() says "file:line: reason", the line being
 * where the record starts; the following call continues with the next record. A
 * record is malformed when it has the wrong number of fields, broken quoting (a quote
 * inside an unquoted field, text after a closing quote, a quote still open at the end
 * of the file or after max_line_bytes), an empty id or text (a text of only ASCII
 * white space counts as empty), an id or text over its length limit, invalid UTF-8 or
 * a NUL byte in the id or text, a control character in the id, a line over
 * max_line_bytes, or (jsonl) a line that is not a JSON object with a string/integer
 * "id" and a string "text". When a record spanning several lines is malformed in its
 * structure (quoting, field count, size), reading resumes at the line after the one
 * where it started, so that one stray quote does not swallow the records after it.
 * A file that cannot be opened or read, and allocation failure, are fatal: next()
 * returns that negative code (QD_ERR_IO, QD_ERR_NOMEM) from then on.
 *
 * Memory is bounded by max_line_bytes (a few buffers of at most that size and a 64
 * KiB read buffer), plus the Quora seen-qid set.
 */
#ifndef QDUP_DUMP_H
#define QDUP_DUMP_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum qd_dump_format {
    QD_DUMP_AUTO = 0, /* decide from the extension, then from the first line */
    QD_DUMP_QUORA,    /* Quora pair file (6 columns, two questions per row) */
    QD_DUMP_TSV,      /* two columns: id, text */
    QD_DUMP_CSV,      /* RFC 4180 with a header; columns chosen by name */
    QD_DUMP_JSONL,    /* one {"id": ..., "text": ...} object per line */
} qd_dump_format;

/* Values of qd_dump_opts.quoting (only Quora files have two flavours). */
enum {
    QD_DUMP_QUOTING_AUTO = 0, /* decide at the first quote character (see above) */
    QD_DUMP_QUOTING_YES = 1,  /* RFC 4180 quoting with tab as delimiter */
    QD_DUMP_QUOTING_NO = 2,   /* plain TSV: quotes are ordinary characters */
};

#define QD_DUMP_DEFAULT_MAX_TEXT (16u * 1024u)
#define QD_DUMP_DEFAULT_MAX_ID 256u
#define QD_DUMP_DEFAULT_MAX_LINE (1024u * 1024u)

/* How to read a dump. Zero limits mean the defaults; strings are copied at open. */
typedef struct qd_dump_opts {
    qd_dump_format format; /* QD_DUMP_AUTO (default) or a fixed format */
    int quoting;           /* QD_DUMP_QUOTING_*; Quora files only */
    const char *id_col;    /* csv: name of the id column; NULL means "id" */
    const char *text_col;  /* csv: name of the text column; NULL means "text" */
    size_t max_text_bytes; /* longest accepted text in bytes (default 16 KiB) */
    size_t max_id_bytes;   /* longest accepted id in bytes (default 256) */
    size_t max_line_bytes; /* longest line, and longest raw quoted record over all its
                              lines, in bytes (default 1 MiB); must hold a whole row */
} qd_dump_opts;

/* One record. The pointers stay valid until the next qd_dump_next() or
 * qd_dump_close(); both strings are NUL-terminated (neither contains a NUL). */
typedef struct qd_dump_rec {
    const char *id;   /* external id, valid UTF-8, no control characters */
    size_t id_len;    /* its length in bytes, 1..max_id_bytes */
    const char *text; /* question text, valid UTF-8, not blank */
    size_t text_len;  /* its length in bytes, 1..max_text_bytes */
    uint64_t line;    /* 1-based line where the record (the row, for Quora) starts */
} qd_dump_rec;

typedef struct qd_dump qd_dump;

/* The defaults: AUTO format, AUTO quoting, "id"/"text", the default limits. */
qd_dump_opts qd_dump_opts_default(void);

/* Opens `path` ("-" for standard input, named "<stdin>" in messages); o may be NULL
 * for the defaults. Reads the header (and, for AUTO, the first line) at once, so a
 * missing or unrecognized header fails here with QD_ERR_FORMAT. On failure *out is
 * NULL and err names the file and the reason. */
int qd_dump_open(const char *path, const qd_dump_opts *o, qd_dump **out, char *err,
                 size_t errlen);

/* Like qd_dump_open() on an already open descriptor, which is read but not closed;
 * `name` is used in messages and for the extension in AUTO mode. */
int qd_dump_open_fd(int fd, const char *name, const qd_dump_opts *o, qd_dump **out,
                    char *err, size_t errlen);

/* Next record: 1 and *rec filled; 0 at the end; QD_ERR_FORMAT for a skipped malformed
 * record (qd_dump_errmsg() says "file:line: reason"; call again to go on); any other
 * negative code is fatal and is returned again by every later call. */
int qd_dump_next(qd_dump *d, qd_dump_rec *rec);

/* The message of the last QD_ERR_FORMAT or fatal error ("" if none). */
const char *qd_dump_errmsg(const qd_dump *d);

/* 1 if the record the last QD_ERR_FORMAT refused had an empty text ("" or white space
 * only): importers count those as empty rather than malformed. */
int qd_dump_last_empty(const qd_dump *d);

/* A remark on how the file is read, to show the user ("" if none): a two-column TSV
 * without a header line ("file:1: no header line ...: the first line is read as a
 * question"). Set at open. */
const char *qd_dump_note(const qd_dump *d);

/* The format being read (never QD_DUMP_AUTO once open). */
qd_dump_format qd_dump_format_of(const qd_dump *d);

/* For Quora files: 1 if read as quoted, 0 if plain, -1 if not decided yet (no quote
 * seen so far in AUTO mode). -1 for other formats. */
int qd_dump_quoted(const qd_dump *d);

/* Bytes read from the file so far (for progress output). */
uint64_t qd_dump_bytes_read(const qd_dump *d);

/* Malformed records reported so far. */
uint64_t qd_dump_skipped(const qd_dump *d);

/* Frees everything; closes the file unless it came from qd_dump_open_fd() or is
 * standard input. NULL is a no-op. */
void qd_dump_close(qd_dump *d);

/* "auto", "quora", "tsv", "csv", "jsonl" to a format: 0, or QD_ERR_INVAL. */
int qd_dump_parse_format(const char *name, qd_dump_format *f);

/* A format's name as qd_dump_parse_format() accepts it. */
const char *qd_dump_format_name(qd_dump_format f);

#ifdef __cplusplus
}
#endif

#endif
