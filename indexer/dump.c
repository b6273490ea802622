/*
 * dump.c - streaming readers for question dumps (Quora pairs, TSV, CSV, JSON Lines).
 *
 * Records come from rows (or, for JSON Lines, lines) of the row reader (rowread.h),
 * which reads the file in chunks, splits rows plain or RFC 4180 quoted and turns a
 * broken quoted row into one skipped record. One function per format maps rows to
 * records and checks ids and texts (input.h). Quora rows give up to two records and up
 * to two errors, so they go through a small queue of events.
 *
 * Pointers handed out stay valid until the next call because every buffer they point
 * into (the row reader's, the current JSON document) is only touched again by the
 * next call.
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

#include <jansson.h>

#include "qdup/common.h"
#include "qdup/fileio.h"
#include "qdup/input.h"
#include "qdup/rowread.h"

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
    qd_rowread *rr;       /* lines and rows */
    qd_rowread_field *fields; /* fields of the current row (the reader's) */
    size_t nfields;       /* fields in the current row */
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
    char note[QD_ERRMSG_MAX];   /* how the file was read, for the user ("" if nothing) */
    int last_empty;             /* 1 if the last record refused had an empty text */
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

/* -------------------------------------------------------------------- rows ------- */

/* Next row into d->fields: 1, 0 at the end, QD_ERR_FORMAT (a skipped row, message
 * set), or fatal. */
static int row_next(qd_dump *d)
{
    int r = qd_rowread_next(d->rr, &d->fields, &d->nfields, &d->row_line);
    if (r < 0)
        snprintf(d->errmsg, sizeof d->errmsg, "%s", qd_rowread_errmsg(d->rr));
    return r;
}

/* Next line (JSON Lines, format sniffing): as qd_rowread_line_next. */
static int line_next(qd_dump *d, qd_rowread_line *ln)
{
    int r = qd_rowread_line_next(d->rr, ln);
    if (r < 0)
        snprintf(d->errmsg, sizeof d->errmsg, "%s", qd_rowread_errmsg(d->rr));
    return r;
}

/* ------------------------------------------------------------------ checks ------- */

/* 1 if the n bytes at s are all white space (input.h's: such a text is empty). */
static int all_blank(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!strchr(" \t\n\r\v\f", s[i]) || s[i] == '\0')
            return 0;
    return 1;
}

/* Checks an id and its text by the rules of input.h. NULL if fine, else the reason,
 * written into why; notes whether the reason is an empty text (counted apart). */
static const char *check_question(qd_dump *d, const char *id, size_t id_len,
                                  const char *text, size_t text_len, char *why, size_t whylen)
{
    if (!qd_input_check_question(id, id_len, d->max_id, text, text_len, d->max_text, 0, why,
                                 whylen))
        return NULL;
    d->last_empty = all_blank(text, text_len) &&
                    qd_input_check_id(id, id_len, d->max_id, NULL, 0) == 0;
    return why;
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
    if (d->seen_keys_len + len > d->seen_keys_cap) {
        size_t cap = d->seen_keys_cap ? d->seen_keys_cap : 4096;
        while (cap < d->seen_keys_len + len)
            cap *= 2;
        char *k = qd_realloc(d->seen_keys, cap);
        if (!k)
            return QD_ERR_NOMEM;
        d->seen_keys = k;
        d->seen_keys_cap = cap;
    }
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
        qd_rowread_field *id = &d->fields[1 + q], *text = &d->fields[3 + q];
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
        if (d->quoting == QD_DUMP_QUOTING_AUTO) {
            qd_rowread_mode m = qd_rowread_get_mode(d->rr);
            if (m != QD_ROWREAD_DETECT)
                d->quoting = m == QD_ROWREAD_QUOTED ? QD_DUMP_QUOTING_YES : QD_DUMP_QUOTING_NO;
        }
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
    qd_rowread_field *id = &d->fields[d->csv_id], *text = &d->fields[d->csv_text];
    return make_rec(d, rec, id->p, id->len, text->p, text->len, d->row_line);
}

/* ------------------------------------------------------------------- jsonl ------- */

static int jsonl_next(qd_dump *d, qd_dump_rec *rec)
{
    qd_rowread_line ln;
    int r;
    do { /* blank lines, white space only included, are skipped */
        r = line_next(d, &ln);
        if (r <= 0)
            return r;
    } while (!ln.too_long && all_blank(ln.p, ln.len));
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

/* The first non-empty line into ln; at the end of the input, QD_ERR_FORMAT with
 * "NAME: empty input: " and `why`. */
static int first_line(qd_dump *d, qd_rowread_line *ln, const char *why)
{
    int r;
    do {
        r = line_next(d, ln);
        if (r < 0)
            return r;
        if (r == 0)
            return set_msg(d, QD_ERR_FORMAT, "%s: empty input: %s", d->name, why);
    } while (!ln->too_long && ln->len == 0);
    return 0;
}

/* AUTO without a telling extension: looks at the first non-blank line, then queues
 * it to be read again. */
static int sniff_format(qd_dump *d)
{
    qd_rowread_line ln;
    int r = first_line(d, &ln, "cannot tell its format (give one)");
    if (r < 0)
        return r;
    if (ln.too_long)
        return set_msg(d, QD_ERR_FORMAT,
                       "%s:%llu: first line of %zu bytes is over the limit of %zu", d->name,
                       (unsigned long long)ln.no, ln.full, d->max_line);
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
    else if (ntab == 1 && memchr(ln.p, ',', ln.len))
        d->format = QD_DUMP_CSV;
    else {
        char shown[64];
        return set_msg(d, QD_ERR_FORMAT,
                       "%s:%llu: cannot tell the format from the first line \"%s\" "
                       "(give one)",
                       d->name, (unsigned long long)ln.no,
                       printable(ln.p, ln.len, shown, sizeof shown, 48));
    }
    /* The line is read again as the header (or first record). */
    if (qd_rowread_unread(d->rr, &ln) != 0)
        return set_fatal(d, QD_ERR_NOMEM);
    return 0;
}

/* 1 if s (len bytes) is one of the NULL-terminated names, ignoring case. */
static int is_name(const char *s, size_t len, const char *const *names)
{
    for (; *names; names++)
        if (strlen(*names) == len && strncasecmp(s, *names, len) == 0)
            return 1;
    return 0;
}

/* A two-column TSV's first line is a header only when it names its columns: an id
 * column (qid, id, ...) or a text column (question, text, ...). Anything else is the
 * first question, read again as a record, and the note says so: taking it for a
 * header would lose a question without a word (ids and texts are free text, so no
 * other reading of one line can tell). */
static int tsv_header(qd_dump *d)
{
    static const char *const id_names[] = {"id", "qid", "qid1", "question_id", "questionid",
                                           "post_id", "key", NULL};
    static const char *const text_names[] = {"question", "text", "title", "body", "question1",
                                             "question_text", "content", NULL};
    qd_rowread_line ln;
    int r = first_line(d, &ln, "no header line");
    if (r < 0)
        return r;
    qd_rowread_set_expect(d->rr, 2);
    if (ln.too_long) /* not a header: reported as the first record's error */
        return 0;
    char *f[3];
    size_t flen[3];
    size_t n = split_header(ln.p, ln.len, '\t', f, flen, 3);
    if (n == 2 && flen[1] > 0 && f[1][flen[1] - 1] == '\r')
        flen[1]--;
    if (n == 2 && (is_name(f[0], flen[0], id_names) || is_name(f[1], flen[1], text_names)))
        return 0; /* a header: consumed */
    snprintf(d->note, sizeof d->note,
             "%s:%llu: no header line (its columns are not named like qid<TAB>question): "
             "the first line is read as a question",
             d->name, (unsigned long long)ln.no);
    if (qd_rowread_unread(d->rr, &ln) != 0)
        return set_fatal(d, QD_ERR_NOMEM);
    return 0;
}

/* Reads and checks the header row of quora, tsv and csv files. */
static int read_header(qd_dump *d)
{
    if (d->format == QD_DUMP_TSV)
        return tsv_header(d);
    qd_rowread_set_expect(d->rr, 0);
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
        qd_rowread_set_expect(d->rr, 6);
    } else if (d->format == QD_DUMP_TSV) {
        if (d->nfields != 2)
            return set_msg(d, QD_ERR_FORMAT,
                           "%s:%llu: a two-column TSV header (id, text) has 2 fields, "
                           "this one %zu",
                           d->name, no, d->nfields);
        qd_rowread_set_expect(d->rr, 2);
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
        qd_rowread_set_expect(d->rr, d->nfields);
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
    d->name = qd_strndup(name, strlen(name));
    d->id_col = qd_strndup(o->id_col ? o->id_col : "id", strlen(o->id_col ? o->id_col : "id"));
    const char *tc = o->text_col ? o->text_col : "text";
    d->text_col = qd_strndup(tc, strlen(tc));
    if (!d->name || !d->id_col || !d->text_col ||
        qd_rowread_open(fd, name, d->max_line, &d->rr) != 0)
        goto fail_nomem;

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
        /* Tab, plain: the header has no quotes either way (the reader's defaults). */
        break;
    case QD_DUMP_TSV:
        d->quoting = QD_DUMP_QUOTING_AUTO;
        break;
    case QD_DUMP_CSV:
        qd_rowread_set_delim(d->rr, ',');
        qd_rowread_set_mode(d->rr, QD_ROWREAD_QUOTED);
        d->quoting = QD_DUMP_QUOTING_AUTO;
        break;
    default:
        d->quoting = QD_DUMP_QUOTING_AUTO;
        break;
    }
    if (d->format != QD_DUMP_JSONL && (rc = read_header(d)) != 0)
        goto fail;
    if (d->format == QD_DUMP_QUORA) {
        qd_rowread_set_mode(d->rr, d->quoting == QD_DUMP_QUOTING_YES  ? QD_ROWREAD_QUOTED
                                   : d->quoting == QD_DUMP_QUOTING_NO ? QD_ROWREAD_PLAIN
                                                                      : QD_ROWREAD_DETECT);
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
    d->last_empty = 0;
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

const char *qd_dump_note(const qd_dump *d)
{
    return d ? d->note : "";
}

int qd_dump_last_empty(const qd_dump *d)
{
    return d && d->last_empty;
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
    return qd_rowread_bytes_read(d->rr);
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
    qd_rowread_close(d->rr);
    if (d->json)
        json_decref(d->json);
    qd_free(d->name);
    qd_free(d->id_col);
    qd_free(d->text_col);
    qd_free(d->seen);
    qd_free(d->seen_keys);
    qd_free(d);
}
