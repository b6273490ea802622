/*
 * test_index.c - the qdup-index program, run as a separate process: every subcommand
 * and its --help, the dump formats, bad input reported as file:line, duplicate ids
 * and texts, add/remove/verify/compact/export round trips, verify on a tampered FAISS
 * file, a model with another fingerprint, builds and adds killed (SIGKILL) at each
 * crash-sensitive point, and, when the shared data is there, builds over the Quora
 * question dump and the original-format pair file.
 *
 * Kills are placed without timing: QDUP_INDEX_TEST_STOP makes the program stop itself
 * (SIGSTOP) at a named point; the test waits for the stop with waitpid(WUNTRACED) and
 * then sends SIGKILL, exactly as an operator's kill -9 would land at that moment.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "qdup/common.h"
#include "qdup/store.h"
#include "testmodel.h"
#include "testutil.h"

/* ------------------------------------------------------------- helpers ---------- */

/* The outcome of one run of qdup-index. */
typedef struct run_t {
    int status;   /* exit status; -1 if killed */
    int stopped;  /* 1 if it reached the requested stop point (and was killed there) */
    char *out;    /* stdout */
    char *err;    /* stderr */
} run_t;

static void run_free(run_t *r)
{
    free(r->out);
    free(r->err);
    memset(r, 0, sizeof *r);
}

/* Runs qdup-index with the given arguments (NULL-terminated). stop: a
 * QDUP_INDEX_TEST_STOP point at which the process is killed, or NULL. in: a file for
 * standard input, or NULL. */
static run_t run_v(const char *stop, const char *in, const char *const *args)
{
    char exe[4096], outp[4200], errp[4200];
    snprintf(exe, sizeof exe, "%s/qdup-index", qt_bin_dir());
    snprintf(outp, sizeof outp, "%s/run.out", qt_tmp_dir());
    snprintf(errp, sizeof errp, "%s/run.err", qt_tmp_dir());
    const char *argv[64];
    int n = 0;
    argv[n++] = exe;
    for (; args[n - 1] && n < 63; n++)
        argv[n] = args[n - 1];
    argv[n] = NULL;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int fo = open(outp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int fe = open(errp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int fi = open(in ? in : "/dev/null", O_RDONLY);
        if (fo < 0 || fe < 0 || fi < 0)
            _exit(127);
        dup2(fo, 1);
        dup2(fe, 2);
        dup2(fi, 0);
        if (stop)
            setenv("QDUP_INDEX_TEST_STOP", stop, 1);
        else
            unsetenv("QDUP_INDEX_TEST_STOP");
        execv(exe, (char *const *)argv);
        _exit(127);
    }
    run_t r = {0};
    int st;
    assert_int_equal(waitpid(pid, &st, WUNTRACED), pid);
    if (WIFSTOPPED(st)) {
        r.stopped = 1;
        kill(pid, SIGKILL);
        assert_int_equal(waitpid(pid, &st, 0), pid);
    }
    r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    r.out = qt_read_file(outp, NULL);
    r.err = qt_read_file(errp, NULL);
    return r;
}

#define RUN(...) run_v(NULL, NULL, (const char *const[]){__VA_ARGS__, NULL})
#define RUN_STOP(stop, ...) run_v(stop, NULL, (const char *const[]){__VA_ARGS__, NULL})
#define RUN_IN(in, ...) run_v(NULL, in, (const char *const[]){__VA_ARGS__, NULL})

static void expect_status(const run_t *r, int status)
{
    if (r->status != status)
        fail_msg("exit status %d, expected %d\nstdout:\n%s\nstderr:\n%s", r->status, status,
                 r->out, r->err);
}

static void expect_in(const char *hay, const char *needle)
{
    if (!strstr(hay, needle))
        fail_msg("expected \"%s\" in:\n%s", needle, hay);
}

static const char *model(void)
{
    return qt_path(qt_fixtures_dir(), "fwd_plain.qdm");
}

static const char *tmp(const char *name)
{
    static char buf[16][4096];
    static int k;
    char *b = buf[k++ % 16];
    snprintf(b, sizeof buf[0], "%s/%s", qt_tmp_dir(), name);
    return b;
}

static void write_str(const char *path, const char *s)
{
    qt_write_file(path, s, strlen(s));
}

/* Question i of the generated dumps: four words spelling i in base 38, so every one
 * has its own token sequence, plus a few more. */
static void question(size_t i, char *buf, size_t len)
{
    uint64_t st = i * 2654435761u + 1;
    size_t n = 0, v = i;
    for (int w = 0; w < 4; w++) {
        n += (size_t)snprintf(buf + n, len - n, "%sw%zu", w ? " " : "", 2 + v % 38);
        v /= 38;
    }
    int extra = (int)(qt_rand(&st) % 6);
    for (int w = 0; w < extra; w++)
        n += (size_t)snprintf(buf + n, len - n, " w%d", (int)(2 + qt_rand(&st) % 38));
    snprintf(buf + n, len - n, " ?");
}

/* Writes a two-column TSV dump of questions lo..hi-1 with ids prefix<i>. */
static void write_dump(const char *path, const char *prefix, size_t lo, size_t hi)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f, "qid\tquestion\n");
    char q[256];
    for (size_t i = lo; i < hi; i++) {
        question(i, q, sizeof q);
        fprintf(f, "%s%zu\t%s\n", prefix, i, q);
    }
    fclose(f);
}

/* The top hit's id of `search --json` for a query, into id. */
static void top_id(const char *db, const char *query, char *id, size_t len)
{
    run_t r = RUN("search", "--db", db, "-k", "3", "--json", query);
    expect_status(&r, 0);
    json_error_t je;
    json_t *o = json_loads(r.out, 0, &je);
    if (!o)
        fail_msg("search output is not JSON (%s):\n%s", je.text, r.out);
    json_t *res = json_object_get(o, "results");
    assert_true(json_array_size(res) >= 1);
    snprintf(id, len, "%s", json_string_value(json_object_get(json_array_get(res, 0), "id")));
    assert_string_equal(json_string_value(json_object_get(o, "query")), query);
    json_decref(o);
    run_free(&r);
}

static void expect_top(const char *db, const char *query, const char *want)
{
    char id[256];
    top_id(db, query, id, sizeof id);
    if (strcmp(id, want) != 0)
        fail_msg("search %s \"%s\": top %s, expected %s", db, query, id, want);
}

/* `info --json` of db. */
static json_t *info(const char *db)
{
    run_t r = RUN("info", "--db", db, "--json");
    expect_status(&r, 0);
    json_t *o = json_loads(r.out, 0, NULL);
    if (!o)
        fail_msg("info output is not JSON:\n%s", r.out);
    run_free(&r);
    return o;
}

static long long info_int(const char *db, const char *key)
{
    json_t *o = info(db);
    long long v = json_integer_value(json_object_get(o, key));
    json_decref(o);
    return v;
}

static void verify_ok(const char *db)
{
    run_t r = RUN("verify", "--db", db);
    expect_status(&r, 0);
    expect_in(r.out, "verify: OK");
    run_free(&r);
}

/* Number of directory entries beside db whose name starts with db's base + suffix. */
static int count_named(const char *db, const char *suffix)
{
    char prefix[4096];
    const char *base = strrchr(db, '/') + 1;
    snprintf(prefix, sizeof prefix, "%s%s", base, suffix);
    DIR *d = opendir(qt_tmp_dir());
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        n += strncmp(e->d_name, prefix, strlen(prefix)) == 0;
    closedir(d);
    return n;
}

/* ------------------------------------------------------------- tests ------------ */

static void test_help_and_usage(void **state)
{
    (void)state;
    run_t r = RUN("--help");
    expect_status(&r, 0);
    static const char *cmds[] = {"build", "add", "remove", "search", "info", "verify",
                                 "export", "verdicts", "compact", "reembed"};
    for (size_t i = 0; i < sizeof cmds / sizeof *cmds; i++)
        expect_in(r.out, cmds[i]);
    run_free(&r);
    for (size_t i = 0; i < sizeof cmds / sizeof *cmds; i++) {
        r = RUN(cmds[i], "--help");
        expect_status(&r, 0);
        char want[64];
        snprintf(want, sizeof want, "usage: qdup-index %s", cmds[i]);
        expect_in(r.out, want);
        run_free(&r);
    }
    r = RUN("frobnicate");
    expect_status(&r, 2);
    expect_in(r.err, "unknown command \"frobnicate\"");
    run_free(&r);
    r = RUN("info");
    expect_status(&r, 2);
    expect_in(r.err, "--db is required");
    run_free(&r);
    r = RUN("info", "--db", "x.db", "--bogus");
    expect_status(&r, 2);
    expect_in(r.err, "unknown option --bogus");
    run_free(&r);
    r = RUN("search", "--db", "x.db", "--index", "Flat", "text");
    expect_status(&r, 2);
    expect_in(r.err, "does not apply");
    run_free(&r);
    r = RUN("search", "--db", "x.db", "-k", "0", "text");
    expect_status(&r, 2);
    expect_in(r.err, "-k 0");
    run_free(&r);
    r = RUN("build", "--db", tmp("nomodel.db"), "x.tsv");
    expect_status(&r, 2);
    expect_in(r.err, "--model is required");
    run_free(&r);
    r = RUN("info", "--db", tmp("absent.db"));
    expect_status(&r, 1);
    expect_in(r.err, "absent.db");
    run_free(&r);
}

static void test_formats_round_trip(void **state)
{
    (void)state;
    struct {
        const char *file;
        const char *content;
        const char *extra[4];
        const char *query, *top;
        long long live;
    } cases[] = {
        {"two.tsv", "qid\tquestion\n1\tw3 w17 w5 ?\n2\tw4 w9 w11\n3\tw20 w21 w22 w23\n",
         {NULL}, "w4 w9 w11", "2", 3},
        /* The original release: quoted fields, one spanning two lines, CRLF. */
        {"orig.tsv",
         "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\r\n"
         "0\t1\t2\t\"w3 \"\"w5\"\" w7\"\t\"w8 w9\nw10\"\t0\r\n"
         "1\t3\t1\tw11 w12\t\"w3 \"\"w5\"\" w7\"\t1\r\n",
         {NULL}, "w8 w9 w10", "2", 3},
        {"data.csv",
         "\xEF\xBB\xBFkey,body,other\r\nk1,\"w2, w3\",x\r\nk2,\"w30 \"\"w31\"\"\",y\r\n",
         {"--id-col", "key", "--text-col", "body"}, "w30 w31", "k2", 2},
        {"data.jsonl",
         "{\"id\": \"j1\", \"text\": \"w5 w6 w7\"}\n{\"id\": 42, \"text\": \"w8 w8 w8\"}\n",
         {NULL}, "w8 w8 w8", "42", 2},
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        const char *dump = tmp(cases[c].file);
        write_str(dump, cases[c].content);
        char dbn[64];
        snprintf(dbn, sizeof dbn, "fmt%zu.db", c);
        const char *db = tmp(dbn);
        const char *args[16] = {"build", "--model", model(), "--db", db};
        int n = 5;
        for (int i = 0; i < 4 && cases[c].extra[i]; i++)
            args[n++] = cases[c].extra[i];
        args[n++] = dump;
        args[n] = NULL;
        run_t r = run_v(NULL, NULL, args);
        expect_status(&r, 0);
        expect_in(r.err, "0 malformed");
        run_free(&r);
        assert_int_equal(info_int(db, "live"), cases[c].live);
        expect_top(db, cases[c].query, cases[c].top);
        verify_ok(db);
    }
    /* The remembered model path is absolute: commands work from another directory. */
    char cwd[4096];
    assert_non_null(getcwd(cwd, sizeof cwd));
    assert_int_equal(chdir("/"), 0);
    run_t r = RUN("search", "--db", tmp("fmt0.db"), "w3", "w17", "w5", "?");
    assert_int_equal(chdir(cwd), 0);
    expect_status(&r, 0);
    assert_true(strncmp(r.out, "1.0000\t1\tw3 w17 w5 ?\n", 21) == 0 ||
                strncmp(r.out, "0.9999\t1\tw3 w17 w5 ?\n", 21) == 0);
    run_free(&r);
    /* Queries from standard input, one per line. */
    const char *qf = tmp("queries.txt");
    write_str(qf, "w4 w9 w11\nw20 w21 w22 w23\n");
    r = RUN_IN(qf, "search", "--db", tmp("fmt0.db"), "-k", "1", "-");
    expect_status(&r, 0);
    expect_in(r.out, "# w4 w9 w11\n");
    expect_in(r.out, "\t2\tw4 w9 w11\n# w20 w21 w22 w23\n");
    expect_in(r.out, "\t3\tw20 w21 w22 w23\n");
    run_free(&r);
}

static void test_bad_dumps(void **state)
{
    (void)state;
    const char *dump = tmp("bad.tsv");
    write_str(dump, "qid\tquestion\n"
                    "1\tw3 w4\n"
                    "2\tw5 w6\textra field\n"
                    "3\t\xff\xfe bad utf8\n"
                    "4\t   \n"
                    "5\tw7 w8\n"
                    "6\t\"\"\n");
    const char *db = tmp("bad.db");
    run_t r = RUN("build", "--model", model(), "--db", db, dump);
    expect_status(&r, 0);
    char want[4200];
    snprintf(want, sizeof want, "%s:3: ", dump);
    expect_in(r.err, want);
    snprintf(want, sizeof want, "%s:4: ", dump);
    expect_in(r.err, want);
    snprintf(want, sizeof want, "%s:5: ", dump);
    expect_in(r.err, want);
    /* A text of only punctuation is not empty for the tokenizer: "" is two tokens. A
     * text of white space is empty, not malformed. */
    expect_in(r.err, "6 records read from 1 file, 3 indexed, 3 skipped (2 malformed, 0 "
                     "duplicate id, 0 duplicate text, 1 empty)");
    run_free(&r);
    assert_int_equal(info_int(db, "live"), 3);

    /* --max-report 1: one line verbatim, then a count. */
    r = RUN("build", "--model", model(), "--db", db, "--max-report", "1", dump);
    expect_status(&r, 0);
    expect_in(r.err, "... and 2 more skipped records not shown");
    snprintf(want, sizeof want, "%s:4: ", dump);
    assert_null(strstr(r.err, want));
    run_free(&r);

    /* --strict: the first bad record is fatal and the existing index stays. */
    const char *dump2 = tmp("bad2.tsv");
    write_str(dump2, "qid\tquestion\n10\tw20 w21\n11\tw22\tw23\tw24\n");
    r = RUN("build", "--model", model(), "--db", db, "--strict", dump2);
    expect_status(&r, 1);
    snprintf(want, sizeof want, "%s:3: ", dump2);
    expect_in(r.err, want);
    expect_in(r.err, "is unchanged");
    run_free(&r);
    assert_int_equal(info_int(db, "live"), 3);
    expect_top(db, "w7 w8", "5");
    r = RUN("add", "--db", db, "--strict", dump2);
    expect_status(&r, 1);
    run_free(&r);
    assert_int_equal(info_int(db, "live"), 3);

    /* A dump that cannot be read: nothing is created. */
    const char *db2 = tmp("never.db");
    r = RUN("build", "--model", model(), "--db", db2, tmp("no-such-dump.tsv"));
    expect_status(&r, 1);
    expect_in(r.err, "no-such-dump.tsv");
    run_free(&r);
    assert_int_equal(access(db2, F_OK), -1);
    assert_int_equal(count_named(db2, ".tmp."), 0);
    /* An unknown header. */
    const char *dump3 = tmp("weird.tsv");
    write_str(dump3, "a\tb\tc\n1\t2\t3\n");
    r = RUN("build", "--model", model(), "--db", db2, dump3);
    expect_status(&r, 1);
    expect_in(r.err, "weird.tsv");
    run_free(&r);
    assert_int_equal(access(db2, F_OK), -1);
    /* build refuses to replace a file that is not an index. */
    const char *notdb = tmp("notes.txt");
    write_str(notdb, "precious notes, not an index\n");
    r = RUN("build", "--model", model(), "--db", notdb, dump);
    expect_status(&r, 1);
    expect_in(r.err, "not a qdup index");
    run_free(&r);
    size_t len;
    char *kept = qt_read_file(notdb, &len);
    assert_string_equal(kept, "precious notes, not an index\n");
    free(kept);
}

static void test_duplicate_ids_and_texts(void **state)
{
    (void)state;
    const char *dump = tmp("dups.tsv");
    write_str(dump, "qid\tquestion\n"
                    "1\tw3 w4 w5\n"
                    "2\tW3  w4 w5\n"    /* same text as 1 */
                    "1\tw6 w7 w8\n"     /* same id as line 2 */
                    "3\tw9 w10\n");
    const char *db = tmp("dups.db");
    run_t r = RUN("build", "--model", model(), "--db", db, dump);
    expect_status(&r, 0);
    char want[4200];
    snprintf(want, sizeof want, "%s:3: id \"2\": same text as id \"1\"", dump);
    expect_in(r.err, want);
    snprintf(want, sizeof want, "%s:4: id \"1\" repeats the one at %s:2", dump, dump);
    expect_in(r.err, want);
    expect_in(r.err, "2 indexed, 2 skipped (0 malformed, 1 duplicate id, 1 duplicate text");
    run_free(&r);
    expect_top(db, "w3 w4 w5", "1");

    /* --replace: the later record of an id wins. */
    r = RUN("build", "--model", model(), "--db", db, "--replace", dump);
    expect_status(&r, 0);
    expect_in(r.err, "1 replaced");
    run_free(&r);
    expect_top(db, "w6 w7 w8", "1");
    assert_int_equal(info_int(db, "live"), 3); /* 1 (new text), 2 (now unique), 3 */

    /* add: an id already in the index is refused unless --replace. */
    const char *more = tmp("more.tsv");
    write_str(more, "qid\tquestion\n3\tw30 w31 w32\n4\tw33 w34\n");
    r = RUN("add", "--db", db, more);
    expect_status(&r, 0);
    snprintf(want, sizeof want, "%s:2: id \"3\" is already in the index", more);
    expect_in(r.err, want);
    expect_in(r.err, "1 indexed");
    run_free(&r);
    expect_top(db, "w9 w10", "3");
    r = RUN("add", "--db", db, "--replace", more);
    expect_status(&r, 0);
    expect_in(r.err, "2 indexed, 0 skipped (0 malformed, 0 duplicate id, 0 duplicate text, 0 "
                     "empty), 2 replaced");
    run_free(&r);
    expect_top(db, "w30 w31 w32", "3");
    json_t *in = info(db);
    assert_int_equal(json_integer_value(json_object_get(in, "live")), 4);
    assert_int_equal(json_integer_value(json_object_get(in, "tombstones")), 2);
    json_decref(in);
    verify_ok(db);
}

/* The reports of skipped records come in line order, whichever pass found them: the
 * store's refusals (found last), repeated ids and malformed lines (found first). */
static void test_skip_reports_in_line_order(void **state)
{
    (void)state;
    const char *dump = tmp("order.tsv");
    write_str(dump, "qid\tquestion\n"
                    "1\tw3 w4 w5\n"
                    "2\tw3 w4 w5\n"      /* line 3: same text as 1 (the store) */
                    "1\tw6 w7 w8\n"      /* line 4: same id as line 2 (repeated ids) */
                    "no tab here\n"       /* line 5: malformed (reading) */
                    "3\tw9 w10\n");
    const char *db = tmp("order.db");
    run_t r = RUN("build", "--model", model(), "--db", db, dump);
    expect_status(&r, 0);
    char want[3][4200];
    snprintf(want[0], sizeof want[0], "%s:3: ", dump);
    snprintf(want[1], sizeof want[1], "%s:4: ", dump);
    snprintf(want[2], sizeof want[2], "%s:5: ", dump);
    const char *at[3];
    for (int i = 0; i < 3; i++) {
        at[i] = strstr(r.err, want[i]);
        if (!at[i])
            fail_msg("no report for %s in:\n%s", want[i], r.err);
    }
    if (!(at[0] < at[1] && at[1] < at[2]))
        fail_msg("reports out of line order:\n%s", r.err);
    expect_in(r.err, "1 malformed, 1 duplicate id, 1 duplicate text");
    run_free(&r);
}

static void test_add_remove_verify_compact_export(void **state)
{
    (void)state;
    const char *d1 = tmp("rt1.tsv"), *d2 = tmp("rt2.tsv");
    write_dump(d1, "a", 0, 300);
    write_dump(d2, "b", 300, 400);
    const char *db = tmp("rt.db");
    run_t r = RUN("build", "--model", model(), "--db", db, "--index", "HNSW16", d1);
    expect_status(&r, 0);
    run_free(&r);
    r = RUN("add", "--db", db, d2);
    expect_status(&r, 0);
    expect_in(r.err, "100 records read from 1 file, 100 indexed");
    run_free(&r);
    assert_int_equal(info_int(db, "live"), 400);
    char q[256];
    question(350, q, sizeof q);
    expect_top(db, q, "b350");

    r = RUN("remove", "--db", db, "b350", "a7", "nope");
    expect_status(&r, 1);
    expect_in(r.err, "no live question with id \"nope\"");
    expect_in(r.err, "2 removed, 1 not found");
    run_free(&r);
    const char *ids = tmp("ids.txt");
    write_str(ids, "a8\r\na9\n\n");
    r = RUN("remove", "--db", db, "--ids", ids);
    expect_status(&r, 0);
    run_free(&r);
    json_t *in = info(db);
    assert_int_equal(json_integer_value(json_object_get(in, "live")), 396);
    assert_int_equal(json_integer_value(json_object_get(in, "tombstones")), 4);
    assert_int_equal(json_integer_value(json_object_get(in, "faiss_count")), 400); /* HNSW */
    json_decref(in);
    char id[64];
    top_id(db, q, id, sizeof id);
    assert_string_not_equal(id, "b350");
    verify_ok(db);

    r = RUN("compact", "--db", db);
    expect_status(&r, 0);
    expect_in(r.err, "4 removed questions deleted");
    run_free(&r);
    assert_int_equal(info_int(db, "faiss_count"), 396);
    assert_int_equal(info_int(db, "tombstones"), 0);
    verify_ok(db);

    const char *out = tmp("rt.jsonl");
    r = RUN("export", "--db", db, "--out", out);
    expect_status(&r, 0);
    run_free(&r);
    FILE *f = fopen(out, "r");
    assert_non_null(f);
    char line[4096];
    int n = 0;
    while (fgets(line, sizeof line, f)) {
        json_t *o = json_loads(line, 0, NULL);
        assert_non_null(o);
        assert_non_null(json_string_value(json_object_get(o, "id")));
        assert_non_null(json_string_value(json_object_get(o, "text")));
        assert_int_equal(json_array_size(json_object_get(o, "vector")), info_int(db, "dim"));
        json_decref(o);
        n++;
        if (n == 3)
            break; /* the dimension check reruns info; three lines are enough for that */
    }
    while (fgets(line, sizeof line, f))
        n++;
    fclose(f);
    assert_int_equal(n, 396);
}

static void test_verify_tampered(void **state)
{
    (void)state;
    const char *dump = tmp("tv.tsv");
    write_dump(dump, "t", 0, 200);
    const char *db = tmp("tv.db");
    run_t r = RUN("build", "--model", model(), "--db", db, dump);
    expect_status(&r, 0);
    run_free(&r);
    verify_ok(db);
    char path[4200];
    snprintf(path, sizeof path, "%s.faiss", db);
    size_t len;
    char *bytes = qt_read_file(path, &len);
    bytes[len - 100] ^= 1;
    qt_write_file(path, bytes, len);
    free(bytes);
    r = RUN("verify", "--db", db);
    expect_status(&r, 1);
    expect_in(r.out, path);
    expect_in(r.out, "not the checkpoint");
    expect_in(r.out, "verify: FAILED: 1 problem(s)");
    run_free(&r);
    /* Searching still works, from the database's vectors. */
    char q[256];
    question(17, q, sizeof q);
    expect_top(db, q, "t17");
    r = RUN("verify", "--db", db, "--repair");
    expect_status(&r, 0);
    run_free(&r);
    verify_ok(db);
}

static void test_model_mismatch(void **state)
{
    (void)state;
    const char *dump = tmp("mm.tsv");
    write_dump(dump, "m", 0, 20);
    const char *db = tmp("mm.db");
    run_t r = RUN("build", "--model", model(), "--db", db, dump);
    expect_status(&r, 0);
    run_free(&r);
    const char *other = qt_path(qt_fixtures_dir(), "fwd_ngram.qdm");
    r = RUN("search", "--db", db, "--model", other, "w3 w4");
    expect_status(&r, 1);
    expect_in(r.err, "fingerprint");
    expect_in(r.err, "fwd_ngram.qdm");
    run_free(&r);
    r = RUN("add", "--db", db, "--model", other, dump);
    expect_status(&r, 1);
    run_free(&r);
    r = RUN("verify", "--db", db, "--model", other);
    expect_status(&r, 1);
    expect_in(r.err, "fingerprint");
    run_free(&r);
    verify_ok(db);
}

/* The old index v1 (ids "o<i>", 150 questions) is intact: opens, verifies, answers. */
static void expect_old_index(const char *db)
{
    verify_ok(db);
    assert_int_equal(info_int(db, "live"), 150);
    char q[256];
    question(42, q, sizeof q);
    expect_top(db, q, "o42");
}

static void test_interrupted_build(void **state)
{
    (void)state;
    const char *old = tmp("old.tsv"), *big = tmp("big.tsv"), *small = tmp("small.tsv");
    write_dump(old, "o", 0, 150);
    write_dump(big, "n", 1000, 121000); /* 120,000 questions */
    write_dump(small, "s", 500, 800);
    const char *db = tmp("ib.db");
    run_t r = RUN("build", "--model", model(), "--db", db, old);
    expect_status(&r, 0);
    run_free(&r);
    expect_old_index(db);

    /* Killed while encoding the big dump. */
    r = RUN_STOP("encode", "build", "--model", model(), "--db", db, "--threads", "2", big);
    assert_true(r.stopped);
    expect_in(r.err, "test stop at encode");
    run_free(&r);
    expect_old_index(db);
    assert_true(count_named(db, ".tmp.") > 0); /* what the killed build left */

    /* Killed with the new index complete under its temporary name. */
    r = RUN_STOP("built", "build", "--model", model(), "--db", db, small);
    assert_true(r.stopped);
    run_free(&r);
    expect_old_index(db);

    /* Killed while the new FAISS file was being checkpointed. */
    r = RUN_STOP("checkpoint:faiss-written", "build", "--model", model(), "--db", db, small);
    assert_true(r.stopped);
    run_free(&r);
    expect_old_index(db);

    /* The next build cleans up after the killed ones. */
    r = RUN("build", "--model", model(), "--db", db, old);
    expect_status(&r, 0);
    expect_in(r.err, "left by an interrupted build");
    run_free(&r);
    assert_int_equal(count_named(db, ".tmp."), 0);
    assert_int_equal(count_named(db, ".faiss.tmp."), 0);
    expect_old_index(db);

    /* Killed between the two renames: the new database is in place with the old FAISS
     * file, which its meta does not vouch for. It answers from the new database; verify
     * says the FAISS file is stale until a writing command rewrites it. */
    r = RUN_STOP("install:db-renamed", "build", "--model", model(), "--db", db, small);
    assert_true(r.stopped);
    run_free(&r);
    char q[256];
    question(600, q, sizeof q);
    expect_top(db, q, "s600");
    assert_int_equal(info_int(db, "live"), 300);
    r = RUN("verify", "--db", db);
    expect_status(&r, 1);
    expect_in(r.out, "not the checkpoint");
    run_free(&r);
    r = RUN("verify", "--db", db, "--repair");
    expect_status(&r, 0);
    run_free(&r);
    verify_ok(db);

    /* A killed add leaves the index as it was. */
    r = RUN_STOP("encode", "add", "--db", db, big);
    assert_true(r.stopped);
    run_free(&r);
    assert_int_equal(info_int(db, "live"), 300);
    verify_ok(db);
    expect_top(db, q, "s600");
}

/* reembed with no daemon: stages and switches; the same model again is nothing to do;
 * a model of another dimension is refused before anything is written; killed after
 * the staging, info shows the staging and the next run switches. */
static void test_reembed_cli(void **state)
{
    (void)state;
    const char *dump = tmp("re.tsv"), *db = tmp("re.db"), *m2 = tmp("re-second.qdm");
    write_dump(dump, "r", 0, 60);
    run_t r = RUN("build", "--model", model(), "--db", db, dump);
    expect_status(&r, 0);
    run_free(&r);
    qt_variant_model(model(), m2, 1);
    json_t *o = info(db);
    char fp1[32];
    snprintf(fp1, sizeof fp1, "%s", json_string_value(json_object_get(o, "model_fingerprint")));
    assert_true(json_is_null(json_object_get(o, "staged")));
    json_decref(o);

    r = RUN("reembed", "--db", db);
    expect_status(&r, 2);
    expect_in(r.err, "--model NEW is required");
    run_free(&r);
    r = RUN("reembed", "--db", db, "--model", qt_path(qt_fixtures_dir(), "fwd_ngram.qdm"));
    expect_status(&r, 1);
    expect_in(r.err, "dimension");
    run_free(&r);
    r = RUN("reembed", "--db", db, "--model", model());
    expect_status(&r, 0);
    expect_in(r.err, "nothing to do");
    run_free(&r);

    /* Killed between the staging and the switch: the old model in force, the staging
     * shown, and the next run switches. */
    r = RUN_STOP("reembed:staged", "reembed", "--db", db, "--model", m2);
    assert_true(r.stopped);
    run_free(&r);
    o = info(db);
    assert_string_equal(json_string_value(json_object_get(o, "model_fingerprint")), fp1);
    json_t *st = json_object_get(o, "staged");
    assert_true(json_is_true(json_object_get(st, "complete")));
    assert_int_equal(json_integer_value(json_object_get(st, "rows")), 60);
    json_decref(o);
    r = RUN("verify", "--reencode", "--db", db);
    expect_status(&r, 0);
    run_free(&r);

    /* Another writer holds the store, not necessarily a daemon (an add, a compact): the
     * staging is kept, and the output says how to switch in either case. */
    char err[QD_ERRMSG_MAX];
    int lock;
    assert_int_equal(qd_store_lock(db, &lock, err, sizeof err), 0);
    r = RUN("reembed", "--db", db, "--model", m2);
    qd_store_unlock(lock);
    expect_status(&r, 0);
    expect_in(r.out, "staged; send SIGHUP or {\"op\":\"reload\"} to the daemon to switch");
    expect_in(r.out, "run qdup-index reembed again");
    expect_in(r.out, "pid");
    run_free(&r);

    r = RUN("reembed", "--db", db, "--model", m2);
    expect_status(&r, 0);
    expect_in(r.out, "switched");
    run_free(&r);
    o = info(db);
    assert_string_not_equal(json_string_value(json_object_get(o, "model_fingerprint")), fp1);
    assert_true(json_is_null(json_object_get(o, "staged")));
    json_decref(o);
    r = RUN("verify", "--reencode", "--db", db);
    expect_status(&r, 0);
    expect_in(r.out, "verify: OK");
    run_free(&r);
    /* The new model is remembered: search without --model finds each question. */
    char q[128];
    question(17, q, sizeof q);
    expect_top(db, q, "r17");
}

static void test_writer_lock_cli(void **state)
{
    (void)state;
    const char *dump = tmp("lk.tsv");
    write_dump(dump, "l", 0, 30);
    const char *db = tmp("lk.db");
    run_t r = RUN("build", "--model", model(), "--db", db, dump);
    expect_status(&r, 0);
    run_free(&r);
    /* Hold the writer lock from a stopped add; build and add must refuse, read-only
     * commands still work. */
    char exe[4096];
    snprintf(exe, sizeof exe, "%s/qdup-index", qt_bin_dir());
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int fd = open("/dev/null", O_WRONLY);
        dup2(fd, 1);
        dup2(fd, 2);
        setenv("QDUP_INDEX_TEST_STOP", "encode", 1);
        execl(exe, exe, "add", "--db", db, dump, "--replace", (char *)NULL);
        _exit(127);
    }
    int st;
    assert_int_equal(waitpid(pid, &st, WUNTRACED), pid);
    assert_true(WIFSTOPPED(st));
    r = RUN("build", "--model", model(), "--db", db, dump);
    expect_status(&r, 1);
    expect_in(r.err, "open for writing by another process");
    run_free(&r);
    r = RUN("add", "--db", db, dump);
    expect_status(&r, 1);
    run_free(&r);
    verify_ok(db);
    kill(pid, SIGCONT);
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    verify_ok(db);
}

static void test_shared_data(void **state)
{
    (void)state;
    char qpath[4096], rpath[4096];
    snprintf(qpath, sizeof qpath, "%s/quora/questions.tsv", qt_data_dir());
    snprintf(rpath, sizeof rpath, "%s/quora/raw/quora_duplicate_questions.head10k.tsv",
             qt_data_dir());
    if (access(qpath, R_OK) != 0 || access(rpath, R_OK) != 0) {
        print_message("shared data not found under %s: skipped\n", qt_data_dir());
        skip();
    }
    const char *db = tmp("quora.db");
    run_t r = RUN("build", "--model", model(), "--db", db, qpath);
    expect_status(&r, 0);
    expect_in(r.err, "67033 records read from 1 file");
    expect_in(r.err, "0 malformed");
    run_free(&r);
    verify_ok(db);
    long long live = info_int(db, "live");
    assert_true(live > 60000 && live <= 67033);
    /* The fixture model knows none of these words, so only the best score says much:
     * a question finds itself (or one with an identical vector). */
    r = RUN("search", "--db", db, "-k", "2",
            "What is the step by step guide to invest in share market in india?");
    expect_status(&r, 0);
    assert_true(strncmp(r.out, "1.0000\t", 7) == 0 || strncmp(r.out, "0.9999\t", 7) == 0);
    run_free(&r);

    const char *db2 = tmp("raw.db");
    r = RUN("build", "--model", model(), "--db", db2, rpath);
    expect_status(&r, 0);
    expect_in(r.err, "0 malformed");
    run_free(&r);
    verify_ok(db2);
    assert_true(info_int(db2, "live") > 19000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_help_and_usage),
        cmocka_unit_test(test_formats_round_trip),
        cmocka_unit_test(test_bad_dumps),
        cmocka_unit_test(test_duplicate_ids_and_texts),
        cmocka_unit_test(test_skip_reports_in_line_order),
        cmocka_unit_test(test_add_remove_verify_compact_export),
        cmocka_unit_test(test_verify_tampered),
        cmocka_unit_test(test_model_mismatch),
        cmocka_unit_test(test_interrupted_build),
        cmocka_unit_test(test_writer_lock_cli),
        cmocka_unit_test(test_reembed_cli),
        cmocka_unit_test(test_shared_data),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
