/*
 * test_dump.c - the question-dump readers: every format, quoting, malformed records,
 * streaming (stdin, chunk boundaries, bounded buffering), allocation failures, and the
 * shared Quora files when they are present.
 *
 * Most tests write a small input, read it completely and compare a log of what came
 * out ("R line|id|text" per record, "E message" per skipped record, "END rc") with
 * the expected log. The real-data tests compare against independent readers written
 * here (a plain split, a small RFC 4180 state machine).
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "qdup/common.h"
#include "qdup/dump.h"
#include "testutil.h"

/* ------------------------------------------------------------- helpers ---------- */

/* A growable string. */
typedef struct sbuf {
    char *s;    /* bytes, NUL-terminated */
    size_t len; /* bytes used */
    size_t cap; /* bytes allocated */
} sbuf;

static void sb_add(sbuf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t c = b->cap ? b->cap : 256;
        while (c < b->len + n + 1)
            c *= 2;
        b->s = realloc(b->s, c);
        assert_non_null(b->s);
        b->cap = c;
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
}

static void sb_str(sbuf *b, const char *s)
{
    sb_add(b, s, strlen(s));
}

/* Appends text with '\n' written as "\n" and '\\' as "\\", so a log line is one line. */
static void sb_esc(sbuf *b, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\n')
            sb_str(b, "\\n");
        else if (s[i] == '\\')
            sb_str(b, "\\\\");
        else
            sb_add(b, s + i, 1);
    }
}

/* Checks what every record promises: lengths within limits, NUL-terminated, no NUL
 * inside. */
static void check_rec_invariants(const qd_dump_rec *r)
{
    assert_true(r->id_len > 0 && r->id_len <= QD_DUMP_DEFAULT_MAX_ID);
    assert_true(r->text_len > 0 && r->text_len <= QD_DUMP_DEFAULT_MAX_TEXT);
    assert_int_equal(r->id[r->id_len], '\0');
    assert_int_equal(r->text[r->text_len], '\0');
    assert_int_equal(strlen(r->id), r->id_len);
    assert_int_equal(strlen(r->text), r->text_len);
    assert_true(r->line >= 1);
}

/* Reads d to the end into a log. */
static char *drain(qd_dump *d)
{
    sbuf b = {0};
    char tmp[64];
    sb_str(&b, "");
    for (;;) {
        qd_dump_rec r;
        int rc = qd_dump_next(d, &r);
        if (rc == 1) {
            check_rec_invariants(&r);
            snprintf(tmp, sizeof tmp, "R %llu|", (unsigned long long)r.line);
            sb_str(&b, tmp);
            sb_esc(&b, r.id, r.id_len);
            sb_str(&b, "|");
            sb_esc(&b, r.text, r.text_len);
            sb_str(&b, "\n");
        } else if (rc == QD_ERR_FORMAT) {
            sb_str(&b, "E ");
            sb_str(&b, qd_dump_errmsg(d));
            sb_str(&b, "\n");
        } else {
            snprintf(tmp, sizeof tmp, "END %d\n", rc);
            sb_str(&b, tmp);
            if (rc < 0) /* fatal errors stick */
                assert_int_equal(qd_dump_next(d, &r), rc);
            return b.s;
        }
    }
}

/* Writes `content` to a scratch file; returns its path (static rotating buffer). */
static const char *put(const char *name, const char *content, size_t len)
{
    const char *path = qt_path(qt_tmp_dir(), name);
    qt_write_file(path, content, len);
    return path;
}

/* Writes content to a scratch file, opens it through qd_dump_open_fd() under `name`
 * (so that messages read "name:line: ..."), reads everything. Returns the log, or
 * "OPEN rc message" if open failed. */
static char *run_n(const char *name, const char *content, size_t len, const qd_dump_opts *o)
{
    const char *path = put("input", content, len);
    int fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    char err[QD_ERRMSG_MAX] = "";
    qd_dump *d = NULL;
    int rc = qd_dump_open_fd(fd, name, o, &d, err, sizeof err);
    char *log;
    if (rc != 0) {
        assert_null(d);
        sbuf b = {0};
        char tmp[32];
        snprintf(tmp, sizeof tmp, "OPEN %d ", rc);
        sb_str(&b, tmp);
        sb_str(&b, err);
        log = b.s;
    } else {
        log = drain(d);
        qd_dump_close(d);
    }
    close(fd);
    return log;
}

static char *run(const char *name, const char *content, const qd_dump_opts *o)
{
    return run_n(name, content, strlen(content), o);
}

/* Runs and compares the log with `want`. */
#define expect_log(name, content, o, want)                                               \
    do {                                                                                 \
        char *got_ = run(name, content, o);                                              \
        assert_string_equal(got_, want);                                                 \
        free(got_);                                                                      \
    } while (0)

/* ------------------------------------------------------------- names ------------ */

static void test_format_names(void **state)
{
    (void)state;
    const char *names[] = {"auto", "quora", "tsv", "csv", "jsonl"};
    for (int i = 0; i < 5; i++) {
        qd_dump_format f = QD_DUMP_AUTO;
        assert_int_equal(qd_dump_parse_format(names[i], &f), 0);
        assert_int_equal(f, i);
        assert_string_equal(qd_dump_format_name(f), names[i]);
    }
    qd_dump_format f;
    assert_int_equal(qd_dump_parse_format("TSV", &f), QD_ERR_INVAL);
    assert_int_equal(qd_dump_parse_format("", &f), QD_ERR_INVAL);
    qd_dump_opts o = qd_dump_opts_default();
    assert_int_equal(o.format, QD_DUMP_AUTO);
    assert_int_equal(o.max_text_bytes, 16384);
    assert_string_equal(o.id_col, "id");
    assert_string_equal(o.text_col, "text");
}

/* ------------------------------------------------------------- tsv -------------- */

static void test_tsv_basic(void **state)
{
    (void)state;
    /* Auto by header, LF, a blank line, no final newline. */
    expect_log("q.tsv", "qid\tquestion\n1\tHow?\n\n22\tWhy is \"x\" so?\n7\tlast", NULL,
               "R 2|1|How?\nR 4|22|Why is \"x\" so?\nR 5|7|last\nEND 0\n");
    /* BOM, CRLF, any two-column header, stdin-like name, lone CR kept as data. */
    expect_log("<stdin>", "\xEF\xBB\xBFid\ttext\r\n1\ta\rb\r\n2\t  spaced  \r\n", NULL,
               "R 2|1|a\rb\nR 3|2|  spaced  \nEND 0\n");
    /* Forced format on a file with another extension. */
    qd_dump_opts o = qd_dump_opts_default();
    o.format = QD_DUMP_TSV;
    expect_log("x.jsonl", "qid\tquestion\n5\tfive\n", &o, "R 2|5|five\nEND 0\n");
    /* Header only: no records. */
    expect_log("q.tsv", "qid\tquestion\n", NULL, "END 0\n");
}

/* Reads name/content and returns the note set at open (static buffer). */
static const char *note_of(const char *name, const char *content)
{
    static char note[QD_ERRMSG_MAX];
    const char *path = put("note-input", content, strlen(content));
    int fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    char err[QD_ERRMSG_MAX];
    qd_dump *d = NULL;
    assert_int_equal(qd_dump_open_fd(fd, name, NULL, &d, err, sizeof err), 0);
    snprintf(note, sizeof note, "%s", qd_dump_note(d));
    qd_dump_close(d);
    close(fd);
    return note;
}

/* A first line is a header only when it names the columns; else it is a question
 * (never lost) and the note says so. */
static void test_tsv_header_detection(void **state)
{
    (void)state;
    /* Data from the first line: both records, and a note naming file and line. */
    expect_log("d.tsv", "1\tHow?\n2\tWhy?\n", NULL, "R 1|1|How?\nR 2|2|Why?\nEND 0\n");
    assert_string_equal(note_of("d.tsv", "1\tHow?\n2\tWhy?\n"),
                        "d.tsv:1: no header line (its columns are not named like "
                        "qid<TAB>question): the first line is read as a question");
    /* Ids that are words: still data. */
    expect_log("w.tsv", "abc\tWhat is this?\n", NULL, "R 1|abc|What is this?\nEND 0\n");
    /* Named columns, any case, CRLF: a header, no note. */
    expect_log("h.tsv", "QID\tQuestion\r\n5\tfive\r\n", NULL, "R 2|5|five\nEND 0\n");
    assert_string_equal(note_of("h.tsv", "QID\tQuestion\r\n5\tfive\r\n"), "");
    expect_log("t.tsv", "post\ttitle\n5\tfive\n", NULL, "R 2|5|five\nEND 0\n");
    expect_log("i.tsv", "question_id\tsomething\n5\tfive\n", NULL, "R 2|5|five\nEND 0\n");
    /* An empty text is told apart from other refusals (the import counts it as empty). */
    {
        const char *in = "qid\tquestion\n1\t \n2\n";
        const char *path = put("e.tsv", in, strlen(in));
        qd_dump *d = NULL;
        char err[QD_ERRMSG_MAX];
        qd_dump_rec r;
        assert_int_equal(qd_dump_open(path, NULL, &d, err, sizeof err), 0);
        assert_int_equal(qd_dump_next(d, &r), QD_ERR_FORMAT);
        assert_int_equal(qd_dump_last_empty(d), 1);
        assert_int_equal(qd_dump_next(d, &r), QD_ERR_FORMAT); /* one field: malformed */
        assert_int_equal(qd_dump_last_empty(d), 0);
        qd_dump_close(d);
    }
    /* Given as TSV, a first line of three fields is a malformed first record, not a
     * header. */
    qd_dump_opts o = qd_dump_opts_default();
    o.format = QD_DUMP_TSV;
    expect_log("x.tsv", "1\ta\tb\n2\tok\n", &o,
               "E x.tsv:1: expected 2 fields, got 3\nR 2|2|ok\nEND 0\n");
}

static void test_tsv_malformed(void **state)
{
    (void)state;
    qd_dump_opts o = qd_dump_opts_default();
    o.max_text_bytes = 10;
    o.max_id_bytes = 4;
    o.max_line_bytes = 40;
    const char *in = "qid\tquestion\n"
                     "1\tok\n"                           /* 2 */
                     "2\n"                               /* 3: missing column */
                     "3\ta\tb\n"                         /* 4: extra column */
                     "4\t\n"                             /* 5: empty text */
                     "\tno id\n"                         /* 6: empty id */
                     "6\t \t\n"                          /* 7: 3 fields */
                     "7\t  \n"                           /* 8: blank text */
                     "8\tbad \xC3(\n"                    /* 9: invalid UTF-8 */
                     "9\xFF\tx\n"                        /* 10: invalid UTF-8 in id */
                     "10\t0123456789A\n"                 /* 11: 11 bytes > 10 */
                     "11111\tx\n"                        /* 12: id of 5 bytes > 4 */
                     "12\tthis line is far longer than forty bytes\n" /* 13 */
                     "13\t\xED\xA0\x80\n"                /* 14: a surrogate */
                     "14\tover\xC0\xAF\n"                /* 15: overlong */
                     "15\tfine \xC3\xA9\n";              /* 16 */
    expect_log("t.tsv", in, &o,
               "R 2|1|ok\n"
               "E t.tsv:3: expected 2 fields, got 1\n"
               "E t.tsv:4: expected 2 fields, got 3\n"
               "E t.tsv:5: empty text\n"
               "E t.tsv:6: empty id\n"
               "E t.tsv:7: expected 2 fields, got 3\n"
               "E t.tsv:8: empty text (only white space)\n"
               "E t.tsv:9: text is not valid UTF-8 (byte 5)\n"
               "E t.tsv:10: id is not valid UTF-8 (byte 2)\n"
               "E t.tsv:11: text of 11 bytes is over the limit of 10\n"
               "E t.tsv:12: id of 5 bytes is over the limit of 4\n"
               "E t.tsv:13: line of 43 bytes is over the limit of 40\n"
               "E t.tsv:14: text is not valid UTF-8 (byte 1)\n"
               "E t.tsv:15: text is not valid UTF-8 (byte 5)\n"
               "R 16|15|fine \xC3\xA9\n"
               "END 0\n");
    /* A NUL byte and a control character in an id. */
    static const char nul[] = "qid\tquestion\n1\ta\0b\n2\x01\tc\n3\td\n";
    char *got = run_n("n.tsv", nul, sizeof nul - 1, NULL);
    assert_string_equal(got, "E n.tsv:2: NUL byte in the text\n"
                             "E n.tsv:3: control character in the id (byte 2)\n"
                             "R 4|3|d\nEND 0\n");
    free(got);
}

/* ------------------------------------------------------------- csv -------------- */

static void test_csv_quoting(void **state)
{
    (void)state;
    const char *in = "\xEF\xBB\xBF"
                     "lang,text,id\r\n"
                     "en,\"He said \"\"hi\"\", then left\",a1\r\n"  /* 2: doubled quotes */
                     "en,\"two\r\nlines, \"\"quoted\"\"\",a2\r\n"  /* 3-4: spans lines */
                     "en,\"tab\there\",a3\r\n"                   /* 5: tab inside */
                     "en,  spaces kept  ,a4\r\n"                 /* 6 */
                     "\r\n"                                      /* 7: blank */
                     "en,\"\n\nthree\",a5\n"                     /* 8-10 */
                     "en,plain,\"a6\"\n";                        /* 11: quoted id */
    expect_log("d.csv", in, NULL,
               "R 2|a1|He said \"hi\", then left\n"
               "R 3|a2|two\\nlines, \"quoted\"\n"
               "R 5|a3|tab\there\n"
               "R 6|a4|  spaces kept  \n"
               "R 8|a5|\\n\\nthree\n"
               "R 11|a6|plain\n"
               "END 0\n");
    /* Columns chosen by name. */
    qd_dump_opts o = qd_dump_opts_default();
    o.id_col = "key";
    o.text_col = "question";
    expect_log("d.csv", "question,key\n\"Why, though?\",k1\n", &o,
               "R 2|k1|Why, though?\nEND 0\n");
    /* No text column, duplicate columns: the header is rejected at open. */
    expect_log("d.csv", "id,body\n1,x\n", NULL,
               "OPEN -3 d.csv:1: no column \"text\" in the header");
    expect_log("d.csv", "id,text,id\n1,x,2\n", NULL,
               "OPEN -3 d.csv:1: column \"id\" appears twice");
    /* Auto detection of CSV from the first line of stdin. */
    expect_log("<stdin>", "id,text\n1,one\n", NULL, "R 2|1|one\nEND 0\n");
}

static void test_csv_malformed(void **state)
{
    (void)state;
    const char *in = "id,text\n"
                     "1,one\n"               /* 2 */
                     "2\n"                   /* 3: missing column */
                     "3,x,y\n"               /* 4: extra column */
                     "4,ab\"c\n"             /* 5: quote inside unquoted field */
                     "5,\"ab\"c\n"           /* 6: text after closing quote */
                     "6,\"open\n"            /* 7: unterminated, middle ... */
                     "7,seven\n"             /* 8 */
                     "8,\"eight\"\n"         /* 9: ... the quote here ends it badly */
                     "9,\"multi\nline\",x\n" /* 10-11: 3 fields over two lines */
                     "10,\"\"\n"             /* 12: empty quoted text */
                     "11,eleven\n"           /* 13 */
                     "12,\"never closed\n"   /* 14: unterminated at the end */
                     "13,thirteen\n";        /* 15 */
    expect_log("m.csv", in, NULL,
               "R 2|1|one\n"
               "E m.csv:3: expected 2 fields, got 1\n"
               "E m.csv:4: expected 2 fields, got 3\n"
               "E m.csv:5: quote inside an unquoted field\n"
               "E m.csv:6: text after a closing quote (inner quotes must be doubled)\n"
               "E m.csv:7: text after a closing quote (inner quotes must be doubled) at "
               "line 9 (the quoted field may be unterminated)\n"
               /* reading resumes at line 8, right after the broken record's start */
               "R 8|7|seven\n"
               "R 9|8|eight\n"
               "E m.csv:10: expected 2 fields, got 3\n"
               /* line 11 is read again on its own: a stray quote there */
               "E m.csv:11: quote inside an unquoted field\n"
               "E m.csv:12: empty text\n"
               "R 13|11|eleven\n"
               "E m.csv:14: quoted field not closed at the end of the file\n"
               "R 15|13|thirteen\n"
               "END 0\n");
    /* Unterminated at the very end, no newline. */
    expect_log("e.csv", "id,text\n1,\"abc", NULL,
               "E e.csv:2: quoted field not closed at the end of the file\nEND 0\n");
}

/* An open quote at the start of a large file ends in an error once max_line_bytes is
 * passed, long before the file is read, and the records after it are still read. */
static void test_csv_unterminated_large(void **state)
{
    (void)state;
    const int n = 60000;
    sbuf b = {0};
    sb_str(&b, "id,text\n1,\"this quote is never closed\n");
    char line[64];
    for (int i = 2; i < n; i++) {
        snprintf(line, sizeof line, "%d,question number %d\n", i, i);
        sb_str(&b, line);
    }
    const char *path = put("big.csv", b.s, b.len);
    qd_dump_opts o = qd_dump_opts_default();
    o.max_line_bytes = 64 * 1024;
    qd_dump *d;
    char err[QD_ERRMSG_MAX];
    assert_int_equal(qd_dump_open(path, &o, &d, err, sizeof err), 0);
    qd_dump_rec r;
    assert_int_equal(qd_dump_next(d, &r), QD_ERR_FORMAT);
    assert_non_null(
        strstr(qd_dump_errmsg(d), "big.csv:2: quoted field still open after 65536 bytes"));
    assert_true(qd_dump_bytes_read(d) < b.len / 4); /* it did not swallow the file */
    int want = 2, rc;
    while ((rc = qd_dump_next(d, &r)) == 1) {
        snprintf(line, sizeof line, "%d", want);
        assert_string_equal(r.id, line);
        assert_int_equal(r.line, (uint64_t)want + 1);
        want++;
    }
    assert_int_equal(rc, 0);
    assert_int_equal(want, n);
    assert_int_equal(qd_dump_skipped(d), 1);
    assert_int_equal(qd_dump_bytes_read(d), b.len);
    qd_dump_close(d);
    free(b.s);
}

/* ------------------------------------------------------------- jsonl ------------ */

static void test_jsonl(void **state)
{
    (void)state;
    const char *in = "{\"id\": \"a\", \"text\": \"caf\\u00e9 \\\"q\\\"\", \"extra\": [1]}\n"
                     "{\"text\": \"int id\", \"id\": 42}\n"
                     "\n"
                     "{\"id\": -7, \"text\": \"neg\"}\r\n"
                     "garbage\n"
                     "[1, 2]\n"
                     "{\"id\": \"b\"}\n"
                     "{\"text\": \"t\"}\n"
                     "{\"id\": 1.5, \"text\": \"t\"}\n"
                     "{\"id\": true, \"text\": \"t\"}\n"
                     "{\"id\": \"c\", \"text\": 3}\n"
                     "{\"id\": \"d\", \"text\": \"\"}\n"
                     "{\"id\": \"e\", \"text\": \"x\", \"text\": \"y\"}\n"
                     "{\"id\": \"f\", \"text\": \"bad \xC3(\"}\n"
                     "{\"id\": \"g\", \"text\": \"nul \\u0000\"}\n"
                     "{\"id\": \"h\", \"text\": \"end\"}";
    char *got = run("d.jsonl", in, NULL);
    /* The column and jansson's own words after "invalid JSON" vary between jansson
     * versions: cut them off, after checking that they are printable ASCII. */
    for (char *e = strstr(got, "invalid JSON"); e; e = strstr(e, "invalid JSON")) {
        char *cut = e + strlen("invalid JSON"), *nl = strchr(e, '\n');
        assert_non_null(strstr(cut, " at column "));
        for (char *c = cut; c < nl; c++)
            assert_true(*c >= 0x20 && *c < 0x7f);
        memmove(cut, nl, strlen(nl) + 1);
        e = cut;
    }
    assert_string_equal(got, "R 1|a|caf\xC3\xA9 \"q\"\n"
                             "R 2|42|int id\n"
                             "R 4|-7|neg\n"
                             "E d.jsonl:5: invalid JSON\n"
                             "E d.jsonl:6: not a JSON object\n"
                             "E d.jsonl:7: no \"text\" key\n"
                             "E d.jsonl:8: no \"id\" key\n"
                             "E d.jsonl:9: \"id\" must be a string or an integer\n"
                             "E d.jsonl:10: \"id\" must be a string or an integer\n"
                             "E d.jsonl:11: \"text\" must be a string\n"
                             "E d.jsonl:12: empty text\n"
                             "E d.jsonl:13: invalid JSON\n" /* duplicate key */
                             "E d.jsonl:14: invalid JSON\n" /* bad UTF-8 */
                             "E d.jsonl:15: invalid JSON\n" /* \u0000 */
                             "R 16|h|end\n"
                             "END 0\n");
    free(got);
    /* Line limit; sniffing '{' on stdin. */
    qd_dump_opts o = qd_dump_opts_default();
    o.max_line_bytes = 30;
    expect_log("<stdin>",
               "{\"id\":1,\"text\":\"short\"}\n{\"id\":2,\"text\":\"this one is too long\"}\n"
               "{\"id\":3,\"text\":\"ok\"}\n",
               &o,
               "R 1|1|short\nE <stdin>:2: line of 38 bytes is over the limit of 30\n"
               "R 3|3|ok\nEND 0\n");
}

/* ------------------------------------------------------------- quora ------------ */

#define QH "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"

static void test_quora_plain_and_seen(void **state)
{
    (void)state;
    const char *in = QH "0\t1\t2\tWhat is A?\tWhat is B?\t0\n"
                        "1\t1\t3\tWhat is A?\tWhat is C?\t1\n"   /* qid 1 again, same */
                        "2\t2\t4\tWhat is b?\tWhat is D?\t0\n"   /* qid 2, other text */
                        "3\t5\t6\tE?\t\t0\n"                     /* empty question2 */
                        "4\t6\t7\tF?\tG?\n"                      /* 5 fields */
                        "5\t6\t7\tF \"quoted\"?\tG?\t0\n";        /* 6 seen bad: new */
    expect_log("p.tsv", in, NULL,
               "R 2|1|What is A?\nR 2|2|What is B?\n"
               "R 3|3|What is C?\n"
               "E p.tsv:4: qid 2 appears with two different texts\n"
               "R 4|4|What is D?\n"
               "R 5|5|E?\n"
               "E p.tsv:5: question2: empty text\n"
               "E p.tsv:6: expected 6 fields, got 5\n"
               "R 7|6|F \"quoted\"?\nR 7|7|G?\n"
               "END 0\n");
    /* Not the Quora header: refused when the format is forced. */
    qd_dump_opts o = qd_dump_opts_default();
    o.format = QD_DUMP_QUORA;
    char *got = run("p.tsv", "id\tqid1\tqid2\tq1\tq2\tdup\n", &o);
    assert_non_null(strstr(got, "OPEN -3 p.tsv:1: not a Quora pair file"));
    free(got);
}

/* The quoted flavour: doubled quotes, quoted fields with tabs and newlines, and line
 * numbers that stay right after a row spanning lines. */
static const char quoted_in[] =
    QH "0\t1\t2\tPlain one?\tPlain two?\t0\n"                        /* 2 */
       "1\t3\t4\t\"Use \"\"&\"\" or \"\"and\"\"?\"\tWhy?\t0\n"      /* 3 */
       "2\t5\t6\t\"Best RO purifier in Ahmedabad?\n\"\t\"a\tb\"\t0\n" /* 4-5 */
       "3\t7\t8\tSeven?\tEight?\t1\n";                                /* 6 */

static void test_quora_quoted(void **state)
{
    (void)state;
    const char *want = "R 2|1|Plain one?\nR 2|2|Plain two?\n"
                       "R 3|3|Use \"&\" or \"and\"?\nR 3|4|Why?\n"
                       "R 4|5|Best RO purifier in Ahmedabad?\\n\nR 4|6|a\tb\n"
                       "R 6|7|Seven?\nR 6|8|Eight?\n"
                       "END 0\n";
    expect_log("r.tsv", quoted_in, NULL, want);
    qd_dump_opts o = qd_dump_opts_default();
    o.quoting = QD_DUMP_QUOTING_YES;
    expect_log("r.tsv", quoted_in, &o, want);
    /* Forced plain: quotes are text, the tab inside the quotes splits the row. */
    o.quoting = QD_DUMP_QUOTING_NO;
    expect_log("r.tsv", quoted_in, &o,
               "R 2|1|Plain one?\nR 2|2|Plain two?\n"
               "R 3|3|\"Use \"\"&\"\" or \"\"and\"\"?\"\nR 3|4|Why?\n"
               "E r.tsv:4: expected 6 fields, got 4\n"
               "E r.tsv:5: expected 6 fields, got 4\n"
               "R 6|7|Seven?\nR 6|8|Eight?\n"
               "END 0\n");
    /* Broken quoting in the quoted flavour: reported, and reading resumes after. */
    const char *bad = QH "0\t1\t2\t\"ok\"\tfine\t0\n"
                         "1\t3\t4\t\"open\tx\t0\n"
                         "2\t5\t6\tfive\tsix\t0\n";
    expect_log("b.tsv", bad, NULL,
               "R 2|1|ok\nR 2|2|fine\n"
               "E b.tsv:3: quoted field not closed at the end of the file\n"
               "R 4|5|five\nR 4|6|six\n"
               "END 0\n");
}

/* Which flavour AUTO picks, and when. */
static void test_quora_detection(void **state)
{
    (void)state;
    qd_dump *d;
    char err[QD_ERRMSG_MAX];
    qd_dump_rec r;
    /* Quoted: undecided until the first quote, then quoted. */
    const char *path = put("det1.tsv", quoted_in, sizeof quoted_in - 1);
    assert_int_equal(qd_dump_open(path, NULL, &d, err, sizeof err), 0);
    assert_int_equal(qd_dump_format_of(d), QD_DUMP_QUORA);
    assert_int_equal(qd_dump_quoted(d), -1);
    assert_int_equal(qd_dump_next(d, &r), 1);
    assert_int_equal(qd_dump_quoted(d), -1);
    assert_int_equal(qd_dump_next(d, &r), 1);
    assert_int_equal(qd_dump_next(d, &r), 1);
    assert_int_equal(qd_dump_quoted(d), 1);
    qd_dump_close(d);

    /* Plain: the question starts with a quote that is not a quoting quote. Its row
     * is read again as plain, without any error. */
    const char *sorry = QH "0\t1\t2\tA?\tB?\t0\n"
                           "1\t3\t4\tC?\t\"I am sorry\" vs \"excuse me\": When?\t0\n"
                           "2\t5\t6\t\"Whole\"\t\"Why \"\"x\"\"?\"\t0\n";
    path = put("det2.tsv", sorry, strlen(sorry));
    assert_int_equal(qd_dump_open(path, NULL, &d, err, sizeof err), 0);
    char *got = drain(d);
    assert_int_equal(qd_dump_quoted(d), 0);
    qd_dump_close(d);
    assert_string_equal(got, "R 2|1|A?\nR 2|2|B?\nR 3|3|C?\n"
                             "R 3|4|\"I am sorry\" vs \"excuse me\": When?\n"
                             "R 4|5|\"Whole\"\nR 4|6|\"Why \"\"x\"\"?\"\n"
                             "END 0\n");
    free(got);

    /* Plain: the first quote is inside a field, so later well-formed quoted-looking
     * fields stay literal (the shared split files are like this). */
    const char *mid = QH "0\t1\t2\tUse \"x\"?\tB?\t0\n"
                         "1\t3\t4\t\"Why \"\"y\"\"?\"\tD?\t0\n";
    path = put("det3.tsv", mid, strlen(mid));
    assert_int_equal(qd_dump_open(path, NULL, &d, err, sizeof err), 0);
    got = drain(d);
    assert_int_equal(qd_dump_quoted(d), 0);
    qd_dump_close(d);
    assert_string_equal(got, "R 2|1|Use \"x\"?\nR 2|2|B?\n"
                             "R 3|3|\"Why \"\"y\"\"?\"\nR 3|4|D?\n"
                             "END 0\n");
    free(got);

    /* An opening quote that never closes: tried as quoted (spanning the rest of the
     * file), fails, and the rows are read plain. */
    const char *open_q = QH "0\t1\t2\t\"Unclosed?\tB?\t0\n"
                            "1\t3\t4\tC?\tD?\t0\n";
    expect_log("det4.tsv", open_q, NULL,
               "R 2|1|\"Unclosed?\nR 2|2|B?\nR 3|3|C?\nR 3|4|D?\nEND 0\n");
}

/* ------------------------------------------------------------- streams ---------- */

/* Standard input through "-": a pipe written a few bytes at a time by a child, so
 * that the BOM, lines and quoted rows arrive in pieces. */
static void test_stdin_pipe(void **state)
{
    (void)state;
    const char *in = "\xEF\xBB\xBF" QH "0\t1\t2\t\"multi\nline\"\tB?\t0\n"
                     "1\t3\t4\tC?\tD\xC3\xA9?\t0\n"
                     "2\t5\t6\tE?\t\xFF?\t0\n";
    int p[2];
    assert_int_equal(pipe(p), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(p[0]);
        size_t n = strlen(in);
        for (size_t i = 0; i < n; i += 3) {
            size_t k = n - i < 3 ? n - i : 3;
            if (write(p[1], in + i, k) != (ssize_t)k)
                _exit(1);
            usleep(200);
        }
        _exit(0);
    }
    close(p[1]);
    int saved = dup(STDIN_FILENO);
    assert_true(saved >= 0);
    assert_int_equal(dup2(p[0], STDIN_FILENO), STDIN_FILENO);
    close(p[0]);
    qd_dump *d;
    char err[QD_ERRMSG_MAX];
    assert_int_equal(qd_dump_open("-", NULL, &d, err, sizeof err), 0);
    char *got = drain(d);
    qd_dump_close(d); /* must not close fd 0 */
    assert_int_equal(fcntl(STDIN_FILENO, F_GETFD), 0);
    assert_int_equal(dup2(saved, STDIN_FILENO), STDIN_FILENO);
    close(saved);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_string_equal(got, "R 2|1|multi\\nline\nR 2|2|B?\nR 4|3|C?\nR 4|4|D\xC3\xA9?\n"
                             "R 5|5|E?\nE <stdin>:5: question2: text is not valid UTF-8 "
                             "(byte 1)\nEND 0\n");
    free(got);
}

/* Many records of varied lengths, so that lines and quoted rows cross the 64 KiB read
 * chunks at every possible offset; every record must come back exactly. */
static void test_chunk_boundaries(void **state)
{
    (void)state;
    uint64_t seed = 12345;
    const int n = 20000;
    sbuf tsv = {0}, csv = {0};
    sb_str(&tsv, "qid\tquestion\n");
    sb_str(&csv, "id,text\n");
    char **texts = calloc((size_t)n, sizeof *texts);
    assert_non_null(texts);
    uint64_t csv_line = 2;
    uint64_t *csv_lines = calloc((size_t)n, sizeof *csv_lines);
    assert_non_null(csv_lines);
    for (int i = 0; i < n; i++) {
        size_t len = 1 + qt_rand(&seed) % 300;
        char *t = malloc(len + 1);
        assert_non_null(t);
        for (size_t k = 0; k < len; k++)
            t[k] = "abcdefgh ,.?\"\n"[qt_rand(&seed) % 14];
        t[0] = 'Q';
        t[len] = '\0';
        texts[i] = t;
        char idb[32];
        snprintf(idb, sizeof idb, "%d\t", i);
        /* TSV cannot hold tabs or newlines: write those bytes as spaces there. */
        sb_str(&tsv, idb);
        for (size_t k = 0; k < len; k++)
            sb_add(&tsv, t[k] == '\n' ? " " : t + k, 1);
        sb_str(&tsv, "\n");
        snprintf(idb, sizeof idb, "%d,\"", i);
        sb_str(&csv, idb);
        csv_lines[i] = csv_line;
        for (size_t k = 0; k < len; k++) {
            if (t[k] == '"')
                sb_str(&csv, "\"");
            if (t[k] == '\n')
                csv_line++;
            sb_add(&csv, t + k, 1);
        }
        sb_str(&csv, "\"\r\n");
        csv_line++;
    }
    for (int pass = 0; pass < 2; pass++) {
        const sbuf *b = pass ? &csv : &tsv;
        const char *path = put(pass ? "chunks.csv" : "chunks.tsv", b->s, b->len);
        qd_dump *d;
        char err[QD_ERRMSG_MAX];
        assert_int_equal(qd_dump_open(path, NULL, &d, err, sizeof err), 0);
        qd_dump_rec r;
        for (int i = 0; i < n; i++) {
            assert_int_equal(qd_dump_next(d, &r), 1);
            assert_int_equal(atoi(r.id), i);
            assert_int_equal(r.text_len, strlen(texts[i]));
            for (size_t k = 0; k < r.text_len; k++) {
                char want = texts[i][k];
                if (!pass && want == '\n')
                    want = ' ';
                assert_int_equal(r.text[k], want);
            }
            assert_int_equal(r.line, pass ? csv_lines[i] : (uint64_t)i + 2);
        }
        assert_int_equal(qd_dump_next(d, &r), 0);
        assert_int_equal(qd_dump_bytes_read(d), b->len);
        qd_dump_close(d);
    }
    for (int i = 0; i < n; i++)
        free(texts[i]);
    free(texts);
    free(csv_lines);
    free(tsv.s);
    free(csv.s);
}

/* Random bytes and random mutations of valid inputs, in every format: the reader must
 * end (EOF) with only records and skipped records, whose invariants hold (checked in
 * drain()); under ASan this also checks that nothing is read out of bounds. */
static void test_garbage(void **state)
{
    (void)state;
    static const char *const seeds[] = {
        QH "0\t1\t2\t\"a\"\"b\"\tc\t0\n1\t3\t4\t\"x\ny\"\tz\t1\n",
        "id,text\n1,\"a,b\"\n2,\"c\r\nd\"\n3,e\n",
        "{\"id\":1,\"text\":\"a\"}\n{\"id\":\"b\",\"text\":\"\\u00e9\"}\n",
        "qid\tquestion\n1\ta\n2\tb\n",
    };
    static const char *const names[] = {"g.tsv", "g.csv", "g.jsonl", "g.tsv"};
    uint64_t seed = 777;
    qd_dump_opts o = qd_dump_opts_default();
    o.max_line_bytes = 64;
    for (int iter = 0; iter < 2000; iter++) {
        int s = iter % 4;
        size_t len = strlen(seeds[s]);
        char buf[256];
        memcpy(buf, seeds[s], len);
        /* Mutate bytes after the header so the format stays recognizable. */
        const char *hdr_end = strchr(seeds[s], '\n');
        size_t from = s == 2 ? 0 : (size_t)(hdr_end - seeds[s]) + 1;
        int muts = 1 + (int)(qt_rand(&seed) % 6);
        for (int m = 0; m < muts; m++) {
            size_t at = from + qt_rand(&seed) % (len - from);
            switch (qt_rand(&seed) % 4) {
            case 0: buf[at] = (char)(qt_rand(&seed) & 0xff); break;
            case 1: buf[at] = "\"\t\n\r,{}\\"[qt_rand(&seed) % 8]; break;
            case 2: len = at; break; /* truncate */
            default:
                if (len < sizeof buf - 1) { /* insert a quote */
                    memmove(buf + at + 1, buf + at, len - at);
                    buf[at] = '"';
                    len++;
                }
            }
            if (len <= from)
                break;
        }
        char *got = run_n(names[s], buf, len, &o);
        size_t gl = strlen(got);
        if (strncmp(got, "OPEN ", 5) != 0)
            assert_string_equal(got + gl - 6, "END 0\n");
        free(got);
    }
    /* Pure noise, any format. */
    for (int iter = 0; iter < 300; iter++) {
        char buf[512];
        size_t len = qt_rand(&seed) % sizeof buf;
        for (size_t k = 0; k < len; k++)
            buf[k] = (char)(qt_rand(&seed) % 4 ? "a\t\n\",{"[qt_rand(&seed) % 6]
                                               : (int)(qt_rand(&seed) & 0xff));
        qd_dump_opts f = o;
        f.format = (qd_dump_format)(1 + iter % 4);
        char *got = run_n("noise", buf, len, &f);
        free(got);
    }
}

/* ------------------------------------------------------------- errors ----------- */

static void test_open_errors(void **state)
{
    (void)state;
    qd_dump *d = (qd_dump *)1;
    char err[QD_ERRMSG_MAX];
    const char *missing = qt_path(qt_tmp_dir(), "no-such-dump.tsv");
    assert_int_equal(qd_dump_open(missing, NULL, &d, err, sizeof err), QD_ERR_NOTFOUND);
    assert_null(d);
    assert_non_null(strstr(err, "no-such-dump.tsv"));
    assert_int_equal(qd_dump_open(qt_tmp_dir(), NULL, &d, err, sizeof err), QD_ERR_IO);
    assert_non_null(strstr(err, qt_tmp_dir()));
    /* Empty input: no header, nothing to sniff. An empty JSON Lines file is fine. */
    expect_log("e.tsv", "", NULL,
               "OPEN -3 e.tsv: empty input: cannot tell its format (give one)");
    expect_log("e.jsonl", "", NULL, "END 0\n");
    qd_dump_opts o = qd_dump_opts_default();
    o.format = QD_DUMP_CSV;
    expect_log("e", "\n\n", &o, "OPEN -3 e: empty input: no header line");
    expect_log("x.txt", "a\tb\tc\n", NULL,
               "OPEN -3 x.txt:1: cannot tell the format from the first line \"a?b?c\" "
               "(give one)");
    o = qd_dump_opts_default();
    o.quoting = 7;
    expect_log("x.tsv", "qid\tq\n", &o, "OPEN -6 x.tsv: invalid dump options");
    /* A descriptor that cannot be read: fatal, naming the file, and sticky. */
    int fd = open(qt_tmp_dir(), O_RDONLY | O_DIRECTORY);
    assert_true(fd >= 0);
    o = qd_dump_opts_default();
    o.format = QD_DUMP_JSONL;
    assert_int_equal(qd_dump_open_fd(fd, "dir.jsonl", &o, &d, err, sizeof err), 0);
    qd_dump_rec r;
    assert_int_equal(qd_dump_next(d, &r), QD_ERR_IO);
    assert_non_null(strstr(qd_dump_errmsg(d), "dir.jsonl: read failed"));
    assert_int_equal(qd_dump_next(d, &r), QD_ERR_IO);
    qd_dump_close(d);
    o.format = QD_DUMP_TSV;
    assert_int_equal(qd_dump_open_fd(fd, "dir.tsv", &o, &d, err, sizeof err), QD_ERR_IO);
    assert_non_null(strstr(err, "dir.tsv: read failed"));
    close(fd);
    qd_dump_close(NULL);
}

/* Every allocation on the way fails in turn: open or next returns QD_ERR_NOMEM, and
 * nothing leaks (LeakSanitizer checks that in the ASan build). */
static void test_alloc_failures(void **state)
{
    (void)state;
    static const char *const inputs[] = {quoted_in, "id,text\n1,\"a\nb\"\n2,c\n",
                                         "qid\tquestion\n1\ta\n",
                                         "{\"id\":1,\"text\":\"x\"}\n"};
    static const char *const names[] = {"a.tsv", "a.csv", "a.tsv", "a.jsonl"};
    static const long want_records[] = {8, 2, 1, 1};
    for (int s = 0; s < 4; s++) {
        const char *path = put(names[s], inputs[s], strlen(inputs[s]));
        int completed = 0;
        for (long n = 0; n < 200 && !completed; n++) {
            for (int sticky = 0; sticky < 2; sticky++) {
                qd_dump *d = NULL;
                char err[QD_ERRMSG_MAX];
                qd_alloc_fail_after(n, sticky);
                int rc = qd_dump_open(path, NULL, &d, err, sizeof err);
                long records = 0;
                if (rc == 0) {
                    qd_dump_rec r;
                    while ((rc = qd_dump_next(d, &r)) == 1 || rc == QD_ERR_FORMAT)
                        records += rc == 1;
                    qd_dump_close(d);
                } else {
                    assert_null(d);
                    assert_non_null(strstr(err, "out of memory"));
                }
                qd_alloc_fail_after(-1, 0);
                assert_true(rc == 0 || rc == QD_ERR_NOMEM);
                if (rc == 0 && sticky)
                    completed = 1; /* no allocation left to fail */
                if (rc == 0) /* a failure absorbed on the way must not lose records */
                    assert_int_equal(records, want_records[s]);
            }
        }
        assert_true(completed);
    }
}

/* ------------------------------------------------------------- real data -------- */

/* Independent reader of the shared split files: a plain split of each line. Appends
 * "R line|qid|text" for each new qid and counts qids seen again with another text. */
static char *oracle_plain_quora(const char *data, size_t *conflicts)
{
    sbuf b = {0};
    sb_str(&b, "");
    /* qid -> first text, in an open-addressing table of owned strings. */
    size_t cap = 1 << 18, used = 0;
    char **keys = calloc(cap, sizeof *keys), **vals = calloc(cap, sizeof *vals);
    assert_non_null(keys);
    assert_non_null(vals);
    *conflicts = 0;
    const char *p = strchr(data, '\n') + 1;
    uint64_t line = 2;
    char tmp[32];
    while (*p) {
        const char *e = strchr(p, '\n');
        assert_non_null(e);
        const char *f[6];
        size_t fl[6];
        int nf = 0;
        const char *s = p;
        for (;;) {
            const char *t = memchr(s, '\t', (size_t)(e - s));
            assert_true(nf < 6);
            f[nf] = s;
            fl[nf++] = (size_t)((t ? t : e) - s);
            if (!t)
                break;
            s = t + 1;
        }
        assert_int_equal(nf, 6);
        for (int q = 0; q < 2; q++) {
            char *k = strndup(f[1 + q], fl[1 + q]), *v = strndup(f[3 + q], fl[3 + q]);
            uint64_t h = 1469598103934665603ULL;
            for (char *c = k; *c; c++)
                h = (h ^ (unsigned char)*c) * 1099511628211ULL;
            size_t j = (size_t)h & (cap - 1);
            while (keys[j] && strcmp(keys[j], k) != 0)
                j = (j + 1) & (cap - 1);
            if (keys[j]) {
                *conflicts += strcmp(vals[j], v) != 0;
                free(k);
                free(v);
                continue;
            }
            keys[j] = k;
            vals[j] = v;
            assert_true(++used < cap / 2);
            snprintf(tmp, sizeof tmp, "R %llu|", (unsigned long long)line);
            sb_str(&b, tmp);
            sb_str(&b, k);
            sb_str(&b, "|");
            sb_esc(&b, v, strlen(v));
            sb_str(&b, "\n");
        }
        p = e + 1;
        line++;
    }
    for (size_t j = 0; j < cap; j++) {
        free(keys[j]);
        free(vals[j]);
    }
    free(keys);
    free(vals);
    return b.s;
}

/* Reads a file to the end, keeping records only ("R ..." lines) in a log and counting
 * skipped records. */
static char *read_records(const char *path, const qd_dump_opts *o, size_t *skipped,
                          size_t *nrec)
{
    qd_dump *d;
    char err[QD_ERRMSG_MAX];
    int rc = qd_dump_open(path, o, &d, err, sizeof err);
    if (rc != 0)
        fail_msg("%s", err);
    char *log = drain(d);
    *skipped = qd_dump_skipped(d);
    qd_dump_close(d);
    sbuf b = {0};
    sb_str(&b, "");
    *nrec = 0;
    for (char *l = log; *l;) {
        char *e = strchr(l, '\n');
        if (l[0] == 'R') {
            sb_add(&b, l, (size_t)(e - l) + 1);
            (*nrec)++;
        } else if (strncmp(l, "E ", 2) == 0) {
            /* Every report on the shared files is a qid conflict. */
            assert_non_null(strstr(l, "appears with two different texts"));
        } else {
            assert_string_equal(l, "END 0\n");
        }
        l = e + 1;
    }
    free(log);
    return b.s;
}

static int have_data(const char *rel)
{
    struct stat st;
    return stat(qt_path(qt_data_dir(), rel), &st) == 0;
}

static void test_real_split_files(void **state)
{
    (void)state;
    if (!have_data("quora/train.tsv"))
        skip();
    const char *files[] = {"quora/train.tsv", "quora/valid.tsv", "quora/test.tsv"};
    for (int i = 0; i < 3; i++) {
        const char *path = qt_path(qt_data_dir(), files[i]);
        char *data = qt_read_file(path, NULL);
        size_t conflicts, skipped, nrec;
        char *want = oracle_plain_quora(data, &conflicts);
        char *got = read_records(path, NULL, &skipped, &nrec);
        assert_string_equal(got, want);
        assert_int_equal(skipped, conflicts);
        if (i == 0) {
            size_t rows = 0;
            for (const char *c = data; *c; c++)
                rows += *c == '\n';
            rows--; /* header */
            assert_int_equal(rows, 30288);
            /* Read speed, for information only (nothing depends on timing). */
            qd_dump *d;
            char err[QD_ERRMSG_MAX];
            qd_dump_rec r;
            assert_int_equal(qd_dump_open(path, NULL, &d, err, sizeof err), 0);
            double t0 = qd_now();
            size_t n = 0;
            int rc;
            while ((rc = qd_dump_next(d, &r)) == 1 || rc == QD_ERR_FORMAT)
                n += rc == 1;
            double secs = qd_now() - t0;
            qd_dump_close(d);
            assert_int_equal(n, nrec);
            print_message("train.tsv: %zu rows, %zu records (2 x rows minus repeated "
                          "qids), %zu qids with two texts; read at %.0f records/s\n",
                          rows, nrec, skipped, (double)n / (secs > 0 ? secs : 1e-9));
        }
        free(got);
        free(want);
        free(data);
    }
}

/* Independent RFC 4180 reader (tab delimiter) for the original release: rows of
 * fields with the line each row starts on. */
static char *oracle_quoted_quora(const char *data, size_t *rows)
{
    sbuf b = {0}, field = {0};
    sb_str(&b, "");
    char *f[6] = {0};
    int nf = 0;
    size_t cap = 1 << 16, used = 0;
    char **keys = calloc(cap, sizeof *keys);
    assert_non_null(keys);
    uint64_t line = 1, row_line = 0;
    int in_quotes = 0, header = 1;
    *rows = 0;
    sb_str(&field, "");
    for (const char *p = data;; p++) {
        char c = *p;
        if (in_quotes) {
            assert_true(c != '\0');
            if (c == '"' && p[1] == '"') {
                sb_add(&field, "\"", 1);
                p++;
            } else if (c == '"') {
                in_quotes = 0;
            } else {
                line += c == '\n';
                sb_add(&field, p, 1);
            }
            continue;
        }
        if (c == '"' && field.len == 0) {
            in_quotes = 1;
            continue;
        }
        if (c == '\t' || c == '\n' || c == '\0') {
            if (c == '\0' && nf == 0 && field.len == 0)
                break;
            assert_true(nf < 6);
            if (nf == 0)
                row_line = line;
            f[nf++] = strdup(field.s);
            field.len = 0;
            field.s[0] = '\0';
            if (c != '\t') {
                assert_int_equal(nf, 6);
                if (!header) {
                    (*rows)++;
                    for (int q = 0; q < 2; q++) {
                        uint64_t h = 1469598103934665603ULL;
                        for (char *k = f[1 + q]; *k; k++)
                            h = (h ^ (unsigned char)*k) * 1099511628211ULL;
                        size_t j = (size_t)h & (cap - 1);
                        while (keys[j] && strcmp(keys[j], f[1 + q]) != 0)
                            j = (j + 1) & (cap - 1);
                        if (keys[j])
                            continue;
                        keys[j] = strdup(f[1 + q]);
                        assert_true(++used < cap / 2);
                        char tmp[32];
                        snprintf(tmp, sizeof tmp, "R %llu|", (unsigned long long)row_line);
                        sb_str(&b, tmp);
                        sb_str(&b, f[1 + q]);
                        sb_str(&b, "|");
                        sb_esc(&b, f[3 + q], strlen(f[3 + q]));
                        sb_str(&b, "\n");
                    }
                }
                header = 0;
                for (int k = 0; k < nf; k++)
                    free(f[k]);
                nf = 0;
                line++;
            }
            if (c == '\0')
                break;
            continue;
        }
        sb_add(&field, p, 1);
    }
    for (size_t j = 0; j < cap; j++)
        free(keys[j]);
    free(keys);
    free(field.s);
    return b.s;
}

static void test_real_original_release(void **state)
{
    (void)state;
    const char *rel = "quora/raw/quora_duplicate_questions.head10k.tsv";
    if (!have_data(rel))
        skip();
    const char *path = qt_path(qt_data_dir(), rel);
    char *data = qt_read_file(path, NULL);
    size_t rows, skipped, nrec;
    char *want = oracle_quoted_quora(data, &rows);
    assert_int_equal(rows, 9998);
    char *got = read_records(path, NULL, &skipped, &nrec);
    assert_string_equal(got, want);
    assert_int_equal(skipped, 0);
    /* Row id 2332 (line 2334): question1 spans two lines and keeps its newline. */
    assert_non_null(strstr(got, "R 2334|4637|Which is the best RO water purifier in "
                                "Ahmedabad?\\n\n"));
    assert_non_null(strstr(got, "R 2334|4638|What is the best water purifier available in "
                                "India?\n"));
    /* The row after it is numbered from the physical line. */
    assert_non_null(strstr(got, "R 2336|4639|"));
    /* Forcing quoting gives the same; forcing plain breaks row 2332 apart. */
    qd_dump_opts o = qd_dump_opts_default();
    o.quoting = QD_DUMP_QUOTING_YES;
    char *forced = read_records(path, &o, &skipped, &nrec);
    assert_string_equal(forced, want);
    free(forced);
    free(got);
    free(want);
    free(data);
}

static void test_real_questions(void **state)
{
    (void)state;
    if (!have_data("quora/questions.tsv"))
        skip();
    const char *path = qt_path(qt_data_dir(), "quora/questions.tsv");
    qd_dump *d;
    char err[QD_ERRMSG_MAX];
    assert_int_equal(qd_dump_open(path, NULL, &d, err, sizeof err), 0);
    assert_int_equal(qd_dump_format_of(d), QD_DUMP_TSV);
    /* Independently: one record per line after the header, ids in file order. */
    char *data = qt_read_file(path, NULL);
    const char *p = strchr(data, '\n') + 1;
    qd_dump_rec r;
    int rc;
    long n = 0;
    while ((rc = qd_dump_next(d, &r)) == 1) {
        n++;
        const char *tab = strchr(p, '\t'), *nl = strchr(p, '\n');
        assert_int_equal(r.line, (uint64_t)n + 1);
        assert_int_equal(r.id_len, (size_t)(tab - p));
        assert_memory_equal(r.id, p, r.id_len);
        assert_int_equal(r.text_len, (size_t)(nl - tab - 1));
        assert_memory_equal(r.text, tab + 1, r.text_len);
        p = nl + 1;
    }
    assert_int_equal(rc, 0);
    assert_int_equal(*p, '\0');
    assert_int_equal(n, 67033);
    qd_dump_close(d);
    free(data);
}

int main(void)
{
    /* A failed write to a closed pipe must not kill the test. */
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_format_names),
        cmocka_unit_test(test_tsv_basic),
        cmocka_unit_test(test_tsv_header_detection),
        cmocka_unit_test(test_tsv_malformed),
        cmocka_unit_test(test_csv_quoting),
        cmocka_unit_test(test_csv_malformed),
        cmocka_unit_test(test_csv_unterminated_large),
        cmocka_unit_test(test_jsonl),
        cmocka_unit_test(test_quora_plain_and_seen),
        cmocka_unit_test(test_quora_quoted),
        cmocka_unit_test(test_quora_detection),
        cmocka_unit_test(test_stdin_pipe),
        cmocka_unit_test(test_chunk_boundaries),
        cmocka_unit_test(test_garbage),
        cmocka_unit_test(test_open_errors),
        cmocka_unit_test(test_alloc_failures),
        cmocka_unit_test(test_real_split_files),
        cmocka_unit_test(test_real_original_release),
        cmocka_unit_test(test_real_questions),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
