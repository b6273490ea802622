/*
 * test_daemon.c - conversations with a real qdup-daemon (from QDUP_BIN) on a socket
 * under the test's scratch directory.
 *
 * The store is made here with qd_store_create/qd_ingest_add and the fixture model
 * (vocabulary "w2".."w39", so "w3 w17 w5 w9" style texts have distinct vectors). One
 * daemon serves most tests; restarts, kills, permissions and socket-path cases start
 * their own (a store admits one writer process, so those use their own store or the
 * --ephemeral in-memory index).
 *
 * Nothing here depends on timing: every wait is for an event (a log line, a reply, an
 * exit) with a generous deadline that only a hung daemon reaches.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "qdup/common.h"
#include "qdup/ingest.h"
#include "qdup/pairs.h"
#include "qdup/store.h"
#include "daemonutil.h"
#include "testutil.h"

/* --- tests ---------------------------------------------------------------------------- */

static void test_socket_mode(void **state)
{
    (void)state;
    struct stat st;
    assert_int_equal(lstat(sock1, &st), 0);
    assert_true(S_ISSOCK(st.st_mode));
    assert_int_equal(st.st_mode & 0777, 0660);
}

/* The hybrid answer (issue 10): every result carries score, cosine, lexical and
 * p_duplicate; check marks duplicates by min_p; a repost is stored under its own id and
 * reports the stored question with p_duplicate 1; white space only is refused; ids may
 * be numbers; check without storing needs no id; "rank":"cosine" ranks by the cosine. */
static void test_hybrid_answer(void **state)
{
    (void)state;
    conn c;
    assert_int_equal(conn_open(&c, sock1), 0);
    char t[64];
    qtext(t, sizeof t, 23);
    json_t *j = rpcf(&c, "{\"op\":\"query\",\"text\":\"%s\",\"k\":5}", t);
    json_t *res = json_object_get(j, "results");
    assert_int_equal(json_array_size(res), 5);
    for (size_t i = 0; i < 5; i++) {
        json_t *h = json_array_get(res, i);
        double score = json_number_value(json_object_get(h, "score"));
        double cosine = json_number_value(json_object_get(h, "cosine"));
        double lexical = json_number_value(json_object_get(h, "lexical"));
        double p = json_number_value(json_object_get(h, "p_duplicate"));
        assert_true(json_is_number(json_object_get(h, "p_duplicate")));
        assert_true(lexical >= 0 && lexical <= 1 && p >= 0 && p <= 1);
        assert_true(cosine >= -1 && cosine <= 1.0001);
        if (i > 0) /* fused order: scores do not increase */
            assert_true(score <= json_number_value(json_object_get(json_array_get(res, i - 1),
                                                                    "score")) + 1e-6);
        else /* the stored text itself: first, p_duplicate 1 */
            assert_true(p == 1 && score > 0.9999);
    }
    json_decref(j);
    /* Ranked by the cosine alone: non-increasing cosines, score = cosine. */
    j = rpcf(&c, "{\"op\":\"query\",\"text\":\"%s w1\",\"k\":5,\"rank\":\"cosine\"}", t);
    res = json_object_get(j, "results");
    for (size_t i = 0; i < json_array_size(res); i++) {
        json_t *h = json_array_get(res, i);
        qt_assert_near(json_number_value(json_object_get(h, "score")),
                       json_number_value(json_object_get(h, "cosine")), 1e-6);
        if (i > 0)
            assert_true(json_number_value(json_object_get(h, "cosine")) <=
                        json_number_value(json_object_get(json_array_get(res, i - 1),
                                                          "cosine")) + 1e-6);
    }
    json_decref(j);

    /* A repost: identical text under a new id is stored, and check reports the stored
     * one with p_duplicate 1 and "duplicate": true. */
    j = rpcf(&c, "{\"op\":\"check\",\"id\":\"repost-1\",\"text\":\"%s\"}", t);
    assert_true(is_ok(j));
    assert_true(json_is_true(json_object_get(j, "stored")));
    assert_true(json_is_true(json_object_get(j, "duplicate")));
    json_t *d0 = json_array_get(json_object_get(j, "duplicates"), 0);
    assert_string_equal(json_string_value(json_object_get(d0, "id")), "s23");
    qt_assert_near(json_number_value(json_object_get(d0, "p_duplicate")), 1.0, 0);
    assert_true(json_is_true(json_object_get(d0, "duplicate")));
    json_decref(j);
    j = rpcf(&c, "{\"op\":\"get\",\"id\":\"repost-1\"}");
    assert_true(is_ok(j));
    assert_string_equal(json_string_value(json_object_get(j, "text")), t);
    json_decref(j);
    /* min_p decides: at 1 only the reposts are duplicates. */
    j = rpcf(&c, "{\"op\":\"check\",\"text\":\"%s\",\"store\":false,\"min_p\":1,"
                 "\"k\":4}", t);
    assert_true(is_ok(j));
    json_t *ds = json_object_get(j, "duplicates");
    assert_int_equal(json_array_size(ds), 4);
    size_t marked = 0;
    for (size_t i = 0; i < json_array_size(ds); i++)
        marked += json_is_true(json_object_get(json_array_get(ds, i), "duplicate"));
    assert_int_equal(marked, 2); /* s23 and repost-1 */
    assert_true(json_is_false(json_object_get(j, "stored")));
    json_decref(j);
    expect_ok(rpcf(&c, "{\"op\":\"remove\",\"id\":\"repost-1\"}"));

    /* White space only is refused everywhere, like an empty text. */
    expect_code(rpcf(&c, "{\"op\":\"add\",\"id\":\"ws\",\"text\":\"   \"}"), "bad_request");
    expect_code(rpcf(&c, "{\"op\":\"query\",\"text\":\" \\t\\n \"}"), "bad_request");
    expect_code(rpcf(&c, "{\"op\":\"check\",\"id\":\"ws\",\"text\":\"   \"}"),
                "bad_request");
    /* A numeric id is kept as its decimal text. */
    expect_ok(rpcf(&c, "{\"op\":\"add\",\"id\":90210,\"text\":\"w9 w8 w7 w6 w5 w4\"}"));
    j = rpcf(&c, "{\"op\":\"get\",\"id\":\"90210\"}");
    assert_true(is_ok(j));
    json_decref(j);
    expect_ok(rpcf(&c, "{\"op\":\"remove\",\"id\":90210}"));
    /* check without storing needs no id; storing does. */
    j = rpcf(&c, "{\"op\":\"check\",\"text\":\"%s\",\"store\":false}", t);
    assert_true(is_ok(j));
    json_decref(j);
    expect_code(rpcf(&c, "{\"op\":\"check\",\"text\":\"%s\"}", t), "bad_request");
    conn_close(&c);
}

static void test_every_op(void **state)
{
    (void)state;
    conn c;
    assert_int_equal(conn_open(&c, sock1), 0);
    json_t *j = rpcf(&c, "{\"op\":\"ping\",\"tag\":\"p\"}");
    assert_true(is_ok(j));
    assert_string_equal(json_string_value(json_object_get(j, "tag")), "p");
    json_decref(j);

    /* The store's questions are there and a stored text finds itself. */
    char t[64];
    qtext(t, sizeof t, 17);
    j = rpcf(&c, "{\"op\":\"query\",\"text\":\"%s\",\"k\":3}", t);
    json_t *h = json_array_get(json_object_get(j, "results"), 0);
    assert_string_equal(json_string_value(json_object_get(h, "id")), "s17");
    assert_string_equal(json_string_value(json_object_get(h, "text")), t);
    assert_true(json_number_value(json_object_get(h, "score")) > 0.9999);
    assert_int_equal(json_array_size(json_object_get(j, "results")), 3);
    json_decref(j);

    /* A batch. */
    char t2[64];
    qtext(t2, sizeof t2, 42);
    j = rpcf(&c, "{\"op\":\"query\",\"texts\":[\"%s\",\"%s\"],\"k\":1}", t, t2);
    json_t *r = json_object_get(j, "results");
    assert_int_equal(json_array_size(r), 2);
    assert_string_equal(
        json_string_value(json_object_get(json_array_get(json_array_get(r, 1), 0), "id")), "s42");
    json_decref(j);

    /* add, get, duplicate id and text, check, remove. */
    expect_ok(rpcf(&c, "{\"op\":\"add\",\"id\":\"op-a\",\"text\":\"w39 w38 w37 w36 w35\"}"));
    j = rpcf(&c, "{\"op\":\"get\",\"id\":\"op-a\"}");
    assert_true(is_ok(j));
    assert_string_equal(json_string_value(json_object_get(j, "text")), "w39 w38 w37 w36 w35");
    json_decref(j);
    expect_code(rpcf(&c, "{\"op\":\"add\",\"id\":\"op-a\",\"text\":\"w2 w2 w2 w2 w2\"}"),
                "duplicate_id");
    /* A repost (the same words, other case and spacing) is stored under its own id. */
    j = rpcf(&c, "{\"op\":\"add\",\"id\":\"op-b\",\"text\":\"W39  w38 w37 w36 w35\"}");
    assert_true(is_ok(j));
    json_decref(j);
    expect_ok(rpcf(&c, "{\"op\":\"remove\",\"id\":\"op-b\"}"));
    j = rpcf(&c, "{\"op\":\"check\",\"id\":\"op-c\",\"text\":\"w39 w38 w37 w36 w35\","
                 "\"store\":false}");
    assert_true(is_ok(j));
    assert_string_equal(
        json_string_value(json_object_get(json_array_get(json_object_get(j, "duplicates"), 0), "id")),
        "op-a");
    assert_true(json_is_false(json_object_get(j, "stored")));
    json_decref(j);
    expect_code(rpcf(&c, "{\"op\":\"get\",\"id\":\"op-c\"}"), "not_found");
    j = rpcf(&c, "{\"op\":\"check\",\"id\":\"op-c\",\"text\":\"w39 w38 w37 w36 w34\",\"k\":2,"
                 "\"min_score\":-1}");
    assert_true(json_is_true(json_object_get(j, "stored")));
    assert_int_equal(json_array_size(json_object_get(j, "duplicates")), 2);
    json_decref(j);
    expect_ok(rpcf(&c, "{\"op\":\"get\",\"id\":\"op-c\"}"));
    expect_ok(rpcf(&c, "{\"op\":\"remove\",\"id\":\"op-a\"}"));
    expect_code(rpcf(&c, "{\"op\":\"remove\",\"id\":\"op-a\"}"), "not_found");
    expect_code(rpcf(&c, "{\"op\":\"get\",\"id\":\"op-a\"}"), "not_found");

    /* stats */
    j = rpcf(&c, "{\"op\":\"stats\"}");
    json_t *st = json_object_get(j, "stats");
    assert_true(json_integer_value(json_object_get(st, "questions")) >= 301);
    assert_true(json_integer_value(json_object_get(json_object_get(st, "requests"), "add")) >= 3);
    assert_string_equal(json_string_value(json_object_get(json_object_get(st, "index"), "spec")),
                        "Flat");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(st, "model"), "dim")), 12);
    assert_true(json_integer_value(
                    json_object_get(json_object_get(json_object_get(st, "latency_ms"), "read"), "n")) >= 2);
    json_decref(j);
    conn_close(&c);
}

/* The command-line client: readable output, --json, exit statuses. */
static void test_client(void **state)
{
    (void)state;
    char cmd[8192], out[8192];
    char t[64];
    qtext(t, sizeof t, 5);
    snprintf(cmd, sizeof cmd, "%s --socket %s query -k 2 %s", bin("qdup"), sock1, t);
    FILE *p = popen(cmd, "r");
    size_t n = fread(out, 1, sizeof out - 1, p);
    out[n] = '\0';
    assert_int_equal(pclose(p), 0);
    assert_non_null(strstr(out, "  s5  "));
    assert_non_null(strstr(out, t));

    snprintf(cmd, sizeof cmd, "%s --socket %s --json get s5", bin("qdup"), sock1);
    p = popen(cmd, "r");
    n = fread(out, 1, sizeof out - 1, p);
    out[n] = '\0';
    assert_int_equal(pclose(p), 0);
    json_t *j = json_loads(out, 0, NULL);
    assert_true(is_ok(j));
    assert_string_equal(json_string_value(json_object_get(j, "text")), t);
    json_decref(j);

    snprintf(cmd, sizeof cmd, "%s --socket %s add cli-1 w2 w3 w4 w5 w6 w7 >/dev/null", bin("qdup"),
             sock1);
    assert_int_equal(system(cmd), 0);
    snprintf(cmd, sizeof cmd, "%s --socket %s get no-such-id 2>/dev/null", bin("qdup"), sock1);
    int st = system(cmd);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 1);
    snprintf(cmd, sizeof cmd, "%s --socket %s/nowhere.sock ping 2>/dev/null", bin("qdup"),
             qt_tmp_dir());
    st = system(cmd);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 2);
}

/* Hundreds of requests in one write: replies in order, each the right one, and a
 * client's writes and reads take effect in its order. */
static void test_pipelined(void **state)
{
    (void)state;
    conn c;
    assert_int_equal(conn_open(&c, sock1), 0);
    size_t cap = 1 << 20, len = 0;
    char *all = malloc(cap);
    int n = 0;
    for (int i = 0; i < 100; i++) {
        char t[64];
        qtext(t, sizeof t, (unsigned)i);
        len += (size_t)snprintf(all + len, cap - len,
                                "{\"op\":\"query\",\"text\":\"%s\",\"k\":1,\"tag\":%d}\n"
                                "{\"op\":\"ping\",\"tag\":%d}\n"
                                "{\"op\":\"add\",\"id\":\"pl-%d\",\"text\":\"w%d w%d w2 w2 w2 w2 w2\",\"tag\":%d}\n"
                                "{\"op\":\"get\",\"id\":\"pl-%d\",\"tag\":%d}\n"
                                "{\"op\":\"remove\",\"id\":\"pl-%d\",\"tag\":%d}\n"
                                "{\"op\":\"get\",\"id\":\"pl-%d\",\"tag\":%d}\n",
                                t, n, n + 1, i, 2 + i % 38, 2 + i / 38, n + 2, i, n + 3, i,
                                n + 4, i, n + 5);
        n += 6;
    }
    assert_int_equal(conn_send(&c, all, len), 0);
    for (int k = 0; k < n; k++) {
        char *line = conn_line(&c);
        assert_non_null(line);
        json_t *j = json_loads(line, 0, NULL);
        assert_non_null(j);
        if (json_integer_value(json_object_get(j, "tag")) != k)
            fail_msg("reply %d out of order: %s", k, line);
        int i = k / 6;
        switch (k % 6) {
        case 0: {
            char want[16];
            snprintf(want, sizeof want, "s%d", i);
            assert_string_equal(json_string_value(json_object_get(
                                    json_array_get(json_object_get(j, "results"), 0), "id")),
                                want);
            break;
        }
        case 1:
        case 2:
        case 3: /* the add before it is visible */
        case 4:
            if (!is_ok(j))
                fail_msg("reply %d: %s", k, line);
            break;
        case 5: /* the remove before it is visible */
            assert_string_equal(code_of(j), "not_found");
            break;
        }
        json_decref(j);
        free(line);
    }
    free(all);
    conn_close(&c);
}

/* Bad requests get their error and the connection goes on. */
static void test_malformed(void **state)
{
    (void)state;
    static const struct {
        const char *line;
        const char *code;
    } cases[] = {
        {"this is not json", "bad_json"},
        {"{\"op\":\"query\",\"text\":\"w3\"", "bad_json"},
        {"{\"op\":\"query\",\"text\":\"\xc3\x28\"}", "bad_json"},
        {"[\"op\",\"query\"]", "bad_request"},
        {"{\"op\":\"frobnicate\"}", "unknown_op"},
        {"{\"text\":\"w3\"}", "bad_request"},
        {"{\"op\":\"query\"}", "bad_request"},
        {"{\"op\":\"query\",\"text\":[\"w3\"]}", "bad_request"},
        {"{\"op\":\"query\",\"text\":\"w3\",\"k\":\"five\"}", "bad_request"},
        {"{\"op\":\"query\",\"text\":\"w3\",\"k\":100000000}", "bad_request"},
        {"{\"op\":\"query\",\"text\":\"w3\",\"k\":-1}", "bad_request"},
        {"{\"op\":\"query\",\"text\":\"w3\",\"min_score\":true}", "bad_request"},
        {"{\"op\":\"add\",\"id\":\"x\"}", "bad_request"},
        {"{\"op\":\"add\",\"id\":5.5,\"text\":\"w3\"}", "bad_request"},
        {"{\"op\":\"remove\",\"id\":\"\"}", "bad_request"},
        {"{\"op\":\"check\",\"text\":\"w3\"}", "bad_request"},
        {"{\"op\":\"get\"}", "bad_request"},
        {"{\"op\":\"get\",\"id\":\"x\",\"bogus\":1}", "bad_request"},
    };
    conn c;
    assert_int_equal(conn_open(&c, sock1), 0);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_t *j = conn_rpc(&c, cases[i].line);
        if (!j)
            fail_msg("no reply to %s", cases[i].line);
        if (strcmp(code_of(j), cases[i].code) != 0)
            fail_msg("%s: expected %s, got %s", cases[i].line, cases[i].code, code_of(j));
        json_decref(j);
        expect_ok(rpcf(&c, "{\"op\":\"ping\"}"));
    }
    /* Blank lines are skipped without a reply; CRLF line ends work. */
    const char *blank = "\n  \r\n{\"op\":\"ping\",\"tag\":9}\r\n";
    assert_int_equal(conn_send(&c, blank, strlen(blank)), 0);
    char *line = conn_line(&c);
    assert_non_null(strstr(line, "\"tag\":9"));
    free(line);
    conn_close(&c);
}

/* A line at the limit is served; one over it is answered too_large and the connection
 * closed; others are unaffected. */
static void test_oversized_line(void **state)
{
    (void)state;
    size_t limit = 64 * 1024;
    char *big = malloc(limit + 4096);
    /* Exactly `limit` bytes: {"op":"ping","tag":"xxx...x"} */
    const char *head = "{\"op\":\"ping\",\"tag\":\"";
    size_t hl = strlen(head);
    memcpy(big, head, hl);
    memset(big + hl, 'x', limit - hl - 2);
    memcpy(big + limit - 2, "\"}", 2);
    big[limit] = '\n';
    conn c;
    assert_int_equal(conn_open(&c, sock1), 0);
    assert_int_equal(conn_send(&c, big, limit + 1), 0);
    char *line = conn_line(&c);
    assert_non_null(line);
    json_t *j = json_loads(line, 0, NULL);
    assert_true(is_ok(j));
    json_decref(j);
    free(line);

    /* At the limit with a CR before the newline: still fine. */
    memcpy(big + limit, "\r\n", 2);
    assert_int_equal(conn_send(&c, big, limit + 2), 0);
    line = conn_line(&c);
    assert_non_null(line);
    j = json_loads(line, 0, NULL);
    assert_true(is_ok(j));
    json_decref(j);
    free(line);
    conn_close(&c);

    /* One byte over, a whole line: answered too_large, then closed. */
    assert_int_equal(conn_open(&c, sock1), 0);
    memcpy(big + limit - 2, "x\"}\n", 4);
    conn_send(&c, big, limit + 2);
    line = conn_line(&c);
    assert_non_null(line);
    j = json_loads(line, 0, NULL);
    assert_string_equal(code_of(j), "too_large");
    json_decref(j);
    free(line);
    assert_null(conn_line(&c));
    conn_close(&c);

    /* Far over, no newline yet: the daemon answers as soon as it is sure. */
    assert_int_equal(conn_open(&c, sock1), 0);
    memset(big + hl, 'x', limit + 4000 - hl);
    conn_send(&c, big, limit + 4000); /* may fail once the daemon has closed */
    line = conn_line(&c);
    assert_non_null(line);
    j = json_loads(line, 0, NULL);
    assert_string_equal(code_of(j), "too_large");
    json_decref(j);
    free(line);
    assert_null(conn_line(&c)); /* then EOF (or a reset) */
    conn_close(&c);
    free(big);

    assert_int_equal(conn_open(&c, sock1), 0);
    expect_ok(rpcf(&c, "{\"op\":\"ping\"}"));
    conn_close(&c);
}

/* Clients that vanish with requests in flight, or half-way through a line, do not
 * disturb the daemon; one that only shuts its sending side still gets every reply. */
static void test_disconnects(void **state)
{
    (void)state;
    char t[64];
    qtext(t, sizeof t, 3);
    for (int round = 0; round < 20; round++) {
        conn c;
        assert_int_equal(conn_open(&c, sock1), 0);
        char req[512];
        int n = snprintf(req, sizeof req,
                         "{\"op\":\"query\",\"text\":\"%s\",\"k\":50}\n"
                         "{\"op\":\"add\",\"id\":\"dc-%d\",\"text\":\"w%d w3 w3 w3 w3 w3 w3\"}\n"
                         "{\"op\":\"query\",\"text\":\"%s",
                         t, round, 2 + round, t);
        conn_send(&c, req, (size_t)n);
        conn_close(&c);
    }
    conn c;
    assert_int_equal(conn_open(&c, sock1), 0);
    char req[64 * 60];
    size_t len = 0;
    for (int i = 0; i < 60; i++)
        len += (size_t)snprintf(req + len, sizeof req - len, "{\"op\":\"ping\",\"tag\":%d}\n", i);
    assert_int_equal(conn_send(&c, req, len), 0);
    shutdown(c.fd, SHUT_WR);
    for (int i = 0; i < 60; i++) {
        char *line = conn_line(&c);
        assert_non_null(line);
        json_t *j = json_loads(line, 0, NULL);
        assert_int_equal(json_integer_value(json_object_get(j, "tag")), i);
        json_decref(j);
        free(line);
    }
    assert_null(conn_line(&c));
    conn_close(&c);
    /* The adds of the vanished clients are carried out (they arrived whole); the
     * daemon may still be working through them, so wait for it. */
    assert_int_equal(conn_open(&c, sock1), 0);
    double end = qd_now() + DEADLINE;
    int found = 0;
    while (!found && qd_now() < end) {
        json_t *j = rpcf(&c, "{\"op\":\"get\",\"id\":\"dc-19\"}");
        found = is_ok(j);
        json_decref(j);
        if (!found)
            usleep(20000);
    }
    assert_true(found);
    conn_close(&c);
}

/* 50 clients at once, each adding its own questions and checking that queries find
 * them, and that get returns them. */
typedef struct worker {
    int id;              /* client number */
    char err[512];       /* first failure, "" if none */
} worker;

static void *client_main(void *arg)
{
    worker *w = arg;
    conn c;
    if (conn_open(&c, sock1)) {
        snprintf(w->err, sizeof w->err, "connect: %s", strerror(errno));
        return NULL;
    }
    for (int j = 0; j < 20 && !w->err[0]; j++) {
        unsigned u = 2000 + (unsigned)w->id * 20 + (unsigned)j;
        char t[64], line[512];
        qtext(t, sizeof t, u);
        snprintf(line, sizeof line, "{\"op\":\"add\",\"id\":\"cc-%u\",\"text\":\"%s\"}", u, t);
        json_t *r = conn_rpc(&c, line);
        if (!is_ok(r))
            snprintf(w->err, sizeof w->err, "add cc-%u: %s", u, r ? code_of(r) : "no reply");
        json_decref(r);
        if (w->err[0])
            break;
        snprintf(line, sizeof line, "{\"op\":\"query\",\"text\":\"%s\",\"k\":5,\"tag\":%u}", t, u);
        r = conn_rpc(&c, line);
        json_t *res = json_object_get(r, "results");
        int found = 0;
        char want[32];
        snprintf(want, sizeof want, "cc-%u", u);
        for (size_t i = 0; i < json_array_size(res); i++) {
            json_t *h = json_array_get(res, i);
            const char *id = json_string_value(json_object_get(h, "id"));
            if (id && strcmp(id, want) == 0 && json_number_value(json_object_get(h, "score")) > 0.9999)
                found = 1;
        }
        if (!found || (json_integer_value(json_object_get(r, "tag")) != u))
            snprintf(w->err, sizeof w->err, "query for %s did not find it", want);
        json_decref(r);
        if (j % 5 == 4 && !w->err[0]) {
            snprintf(line, sizeof line, "{\"op\":\"get\",\"id\":\"cc-%u\"}", u);
            r = conn_rpc(&c, line);
            const char *got = json_string_value(json_object_get(r, "text"));
            if (!got || strcmp(got, t) != 0)
                snprintf(w->err, sizeof w->err, "get %s: wrong text", want);
            json_decref(r);
        }
    }
    conn_close(&c);
    return NULL;
}

static void test_concurrent_clients(void **state)
{
    (void)state;
    enum { N = 50 };
    pthread_t th[N];
    worker w[N];
    for (int i = 0; i < N; i++) {
        w[i] = (worker){.id = i};
        assert_int_equal(pthread_create(&th[i], NULL, client_main, &w[i]), 0);
    }
    for (int i = 0; i < N; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < N; i++)
        if (w[i].err[0])
            fail_msg("client %d: %s", i, w[i].err);
    conn c;
    assert_int_equal(conn_open(&c, sock1), 0);
    json_t *j = rpcf(&c, "{\"op\":\"stats\"}");
    assert_true(json_integer_value(json_object_get(json_object_get(j, "stats"), "questions")) >=
                300 + N * 20);
    json_decref(j);
    conn_close(&c);
}

/* Past max_queued waiting requests (or max_queued_bytes of them), new ones are
 * answered busy, not queued. */
static void busy_case(const char *opt, const char *val)
{
    char sock[4096], log[4096];
    snprintf(sock, sizeof sock, "%s", qt_path(qt_tmp_dir(), "busy.sock"));
    snprintf(log, sizeof log, "%s", qt_path(qt_tmp_dir(), "busy.log"));
    const char *args[] = {"--ephemeral", "--model", model_path, opt, val,
                          "--max-inflight", "100000", "--threads", "1", NULL};
    pid_t pid = start_daemon(sock, log, args, NULL);
    conn c;
    assert_int_equal(conn_open(&c, sock), 0);
    expect_ok(rpcf(&c, "{\"op\":\"add\",\"id\":\"b1\",\"text\":\"w3 w4\"}"));
    /* Thousands of queries in one write: a read takes many at once. */
    size_t n = 3000, cap = n * 64, len = 0;
    char *all = malloc(cap);
    for (size_t i = 0; i < n; i++)
        len += (size_t)snprintf(all + len, cap - len, "{\"op\":\"query\",\"text\":\"w3 w4\"}\n");
    assert_int_equal(conn_send(&c, all, len), 0);
    size_t busy = 0, ok = 0;
    for (size_t i = 0; i < n; i++) {
        char *line = conn_line(&c);
        assert_non_null(line);
        json_t *j = json_loads(line, 0, NULL);
        if (is_ok(j))
            ok++;
        else if (strcmp(code_of(j), "busy") == 0)
            busy++;
        json_decref(j);
        free(line);
    }
    assert_int_equal(ok + busy, n);
    assert_true(busy > 0);
    assert_true(ok > 0);
    expect_ok(rpcf(&c, "{\"op\":\"ping\"}"));
    conn_close(&c);
    free(all);
    assert_int_equal(stop_daemon(pid, SIGTERM), 0);
}

/* While one client keeps the queue full, another with nothing waiting is still
 * admitted: the limit answers busy to the client that has requests waiting, not to
 * everyone. The daemon is paused while both send, so the flood is already there when
 * the other client's query is read. */
static void busy_fair_case(const char *opt, const char *val)
{
    char sock[4096], log[4096];
    snprintf(sock, sizeof sock, "%s", qt_path(qt_tmp_dir(), "busy.sock"));
    snprintf(log, sizeof log, "%s", qt_path(qt_tmp_dir(), "busy.log"));
    const char *args[] = {"--ephemeral", "--model", model_path, opt, val,
                          "--max-inflight", "100000", "--threads", "1", NULL};
    pid_t pid = start_daemon(sock, log, args, NULL);
    conn a, b;
    assert_int_equal(conn_open(&a, sock), 0);
    assert_int_equal(conn_open(&b, sock), 0);
    expect_ok(rpcf(&a, "{\"op\":\"add\",\"id\":\"b1\",\"text\":\"w3 w4\"}"));
    expect_ok(rpcf(&b, "{\"op\":\"ping\"}"));
    size_t n = 1500, cap = n * 64, len = 0;
    char *all = malloc(cap);
    for (size_t i = 0; i < n; i++)
        len += (size_t)snprintf(all + len, cap - len, "{\"op\":\"query\",\"text\":\"w3 w4\"}\n");
    daemon_pause(pid);
    assert_int_equal(conn_send(&a, all, len), 0);
    const char *q = "{\"op\":\"query\",\"text\":\"w3 w4\",\"tag\":\"b\"}\n";
    assert_int_equal(conn_send(&b, q, strlen(q)), 0);
    daemon_resume(pid);
    char *line = conn_line(&b);
    assert_non_null(line);
    json_t *j = json_loads(line, 0, NULL);
    if (!is_ok(j))
        fail_msg("a client with nothing waiting was refused: %s", line);
    json_decref(j);
    free(line);
    size_t busy = 0;
    for (size_t i = 0; i < n; i++) {
        line = conn_line(&a);
        assert_non_null(line);
        busy += strstr(line, "\"busy\"") != NULL;
        free(line);
    }
    assert_true(busy > 0);
    conn_close(&a);
    conn_close(&b);
    free(all);
    assert_int_equal(stop_daemon(pid, SIGTERM), 0);
}

static void test_busy(void **state)
{
    (void)state;
    busy_case("--max-queued", "2");
    busy_case("--max-queued-bytes", "1K");
    busy_fair_case("--max-queued", "2");
    busy_fair_case("--max-queued-bytes", "1K");
}

/* A client that never reads its replies is dropped once they pass max_output (or,
 * with others, max_output_total), and the daemon goes on serving others. */
static void slow_case(const char *opt, const char *val, const char *whose)
{
    char sock[4096], log[4096];
    snprintf(sock, sizeof sock, "%s", qt_path(qt_tmp_dir(), "slow.sock"));
    snprintf(log, sizeof log, "%s", qt_path(qt_tmp_dir(), "slow.log"));
    const char *args[] = {"--ephemeral", "--model", model_path, opt, val, NULL};
    pid_t pid = start_daemon(sock, log, args, NULL);
    conn c, other;
    assert_int_equal(conn_open(&c, sock), 0);
    assert_int_equal(conn_open(&other, sock), 0);
    for (unsigned i = 0; i < 40; i++) {
        char t[64];
        qtext(t, sizeof t, i);
        expect_ok(rpcf(&other, "{\"op\":\"add\",\"id\":\"r%u\",\"text\":\"%s\"}", i, t));
    }
    /* Each reply holds 40 results (~2.5 KB); keep sending, never read. */
    const char *q = "{\"op\":\"query\",\"text\":\"w3 w4\",\"k\":40}\n";
    int dropped = 0;
    for (int i = 0; i < 200000 && !dropped; i++)
        dropped = conn_send(&c, q, strlen(q)) != 0;
    assert_true(dropped);
    json_t *j = rpcf(&other, "{\"op\":\"stats\"}");
    assert_true(json_integer_value(json_object_get(json_object_get(json_object_get(j, "stats"),
                                                                   "clients"), "dropped")) >= 1);
    json_decref(j);
    assert_true(file_has(log, whose));
    conn_close(&c);
    conn_close(&other);
    assert_int_equal(stop_daemon(pid, SIGTERM), 0);
}

static void test_slow_reader_dropped(void **state)
{
    (void)state;
    slow_case("--max-output", "64K", "over its limit");
    slow_case("--max-output-total", "100K", "over all clients' limit");
}

/* SIGTERM: clean exit, socket removed; a restart has everything. */
static void test_sigterm_restart(void **state)
{
    (void)state;
    char db[4096], sock[4096], log[4096];
    snprintf(db, sizeof db, "%s", qt_path(qt_tmp_dir(), "term.db"));
    snprintf(sock, sizeof sock, "%s", qt_path(qt_tmp_dir(), "term.sock"));
    snprintf(log, sizeof log, "%s", qt_path(qt_tmp_dir(), "term.log"));
    make_store(db, 50);
    const char *args[] = {"--db", db, NULL};
    pid_t pid = start_daemon(sock, log, args, NULL);
    conn c;
    assert_int_equal(conn_open(&c, sock), 0);
    for (unsigned i = 0; i < 40; i++) {
        char t[64];
        qtext(t, sizeof t, 5000 + i);
        expect_ok(rpcf(&c, "{\"op\":\"add\",\"id\":\"t%u\",\"text\":\"%s\"}", i, t));
    }
    for (unsigned i = 0; i < 10; i++)
        expect_ok(rpcf(&c, "{\"op\":\"remove\",\"id\":\"s%u\"}", i));
    conn_close(&c);
    assert_int_equal(stop_daemon(pid, SIGTERM), 0);
    assert_true(file_has(log, "SIGTERM: shutting down"));
    struct stat st;
    assert_int_not_equal(lstat(sock, &st), 0); /* the socket file is gone */

    pid = start_daemon(sock, log, args, NULL);
    assert_int_equal(conn_open(&c, sock), 0);
    json_t *j = rpcf(&c, "{\"op\":\"stats\"}");
    json_t *s = json_object_get(j, "stats");
    assert_int_equal(json_integer_value(json_object_get(s, "questions")), 80);
    /* The index was saved at shutdown: nothing to replay. */
    assert_int_equal(json_integer_value(json_object_get(s, "seq")),
                     json_integer_value(json_object_get(s, "checkpoint_seq")));
    json_decref(j);
    for (unsigned i = 0; i < 40; i++) {
        char t[64];
        qtext(t, sizeof t, 5000 + i);
        j = rpcf(&c, "{\"op\":\"query\",\"text\":\"%s\",\"k\":1}", t);
        char want[16];
        snprintf(want, sizeof want, "t%u", i);
        assert_string_equal(
            json_string_value(json_object_get(json_array_get(json_object_get(j, "results"), 0), "id")),
            want);
        json_decref(j);
    }
    for (unsigned i = 0; i < 10; i++)
        expect_code(rpcf(&c, "{\"op\":\"get\",\"id\":\"s%u\"}", i), "not_found");
    expect_ok(rpcf(&c, "{\"op\":\"get\",\"id\":\"s10\"}"));
    conn_close(&c);
    assert_int_equal(stop_daemon(pid, SIGINT), 0);
    assert_true(file_has(log, "SIGINT: shutting down"));
}

/* SIGKILL in the middle of a stream of adds and removes: after a restart (which
 * replaces the stale socket) every acknowledged add is there and every acknowledged
 * remove is gone. */
static void test_sigkill_restart(void **state)
{
    (void)state;
    char db[4096], sock[4096], log[4096];
    snprintf(db, sizeof db, "%s", qt_path(qt_tmp_dir(), "kill.db"));
    snprintf(sock, sizeof sock, "%s", qt_path(qt_tmp_dir(), "kill.sock"));
    snprintf(log, sizeof log, "%s", qt_path(qt_tmp_dir(), "kill.log"));
    make_store(db, 200); /* 60 of them are removed per round */
    const char *args[] = {"--db", db, NULL};
    for (int round = 0; round < 3; round++) {
        pid_t pid = start_daemon(sock, log, args, NULL);
        conn c;
        assert_int_equal(conn_open(&c, sock), 0);
        enum { N = 600 };
        size_t cap = N * 160, len = 0;
        char *all = malloc(cap);
        for (int i = 0; i < N; i++) {
            char t[64];
            unsigned u = 10000 + (unsigned)round * N + (unsigned)i;
            qtext(t, sizeof t, u);
            if (i % 10 == 9) /* remove an original question now and then */
                len += (size_t)snprintf(all + len, cap - len,
                                        "{\"op\":\"remove\",\"id\":\"s%d\",\"tag\":%d}\n",
                                        round * (N / 10) + i / 10, i);
            else
                len += (size_t)snprintf(all + len, cap - len,
                                        "{\"op\":\"add\",\"id\":\"k%u\",\"text\":\"%s\",\"tag\":%d}\n",
                                        u, t, i);
        }
        assert_int_equal(conn_send(&c, all, len), 0);
        free(all);
        /* Read some acknowledgements, kill, then take whatever else was sent. */
        int acked[N] = {0}, nacked = 0;
        for (int i = 0; i < N; i++) {
            if (i == 150 + 100 * round)
                kill(pid, SIGKILL);
            char *line = conn_line(&c);
            if (!line)
                break;
            json_t *j = json_loads(line, 0, NULL);
            int tag = (int)json_integer_value(json_object_get(j, "tag"));
            assert_int_equal(tag, i);
            if (is_ok(j)) {
                acked[i] = 1;
                nacked++;
            }
            json_decref(j);
            free(line);
        }
        conn_close(&c);
        int st = stop_daemon(pid, SIGKILL);
        assert_int_equal(st, 128 + SIGKILL);
        assert_true(nacked >= 150);

        pid = start_daemon(sock, log, args, NULL);
        assert_int_equal(conn_open(&c, sock), 0);
        for (int i = 0; i < N; i++) {
            if (!acked[i])
                continue;
            unsigned u = 10000 + (unsigned)round * N + (unsigned)i;
            if (i % 10 == 9)
                expect_code(rpcf(&c, "{\"op\":\"get\",\"id\":\"s%d\"}", round * (N / 10) + i / 10),
                            "not_found");
            else
                expect_ok(rpcf(&c, "{\"op\":\"get\",\"id\":\"k%u\"}", u));
        }
        /* Replayed vectors are searchable, not just stored. */
        for (int i = 0; i < N; i += 37) {
            if (!acked[i] || i % 10 == 9)
                continue;
            char t[64], want[32];
            unsigned u = 10000 + (unsigned)round * N + (unsigned)i;
            qtext(t, sizeof t, u);
            snprintf(want, sizeof want, "k%u", u);
            json_t *j = rpcf(&c, "{\"op\":\"query\",\"text\":\"%s\",\"k\":1}", t);
            assert_string_equal(json_string_value(json_object_get(
                                    json_array_get(json_object_get(j, "results"), 0), "id")),
                                want);
            json_decref(j);
        }
        conn_close(&c);
        assert_int_equal(stop_daemon(pid, SIGTERM), 0);
    }
    assert_true(file_has(log, "removed stale socket"));
}

/* The socket path: another file there is an error and stays; a live daemon there is
 * not displaced. */
static void test_socket_path_guard(void **state)
{
    (void)state;
    char sock[4096], log[4096];
    snprintf(sock, sizeof sock, "%s", qt_path(qt_tmp_dir(), "notasocket"));
    snprintf(log, sizeof log, "%s", qt_path(qt_tmp_dir(), "guard.log"));
    qt_write_file(sock, "precious\n", 9);
    const char *args[] = {"--ephemeral", "--model", model_path, NULL};
    int st = 0;
    assert_int_equal(start_daemon(sock, log, args, &st), -1);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) != 0);
    size_t len;
    char *data = qt_read_file(sock, &len);
    assert_int_equal(len, 9);
    assert_memory_equal(data, "precious\n", 9);
    free(data);
    assert_true(file_has(log, "not a socket"));

    /* The shared daemon's socket is live: a second daemon must not take it. */
    assert_int_equal(start_daemon(sock1, log, args, &st), -1);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) != 0);
    assert_true(file_has(log, "another server is listening"));
    conn c;
    assert_int_equal(conn_open(&c, sock1), 0);
    expect_ok(rpcf(&c, "{\"op\":\"ping\"}"));
    conn_close(&c);
}

/* While writes come in, the index is checkpointed now and then (here every 0.1 s):
 * stats show the checkpoint and no unsaved writes, and the store's checkpoint
 * sequence catches up with its change sequence. */
static void test_periodic_checkpoint(void **state)
{
    (void)state;
    char db[4096], sock[4096], log[4096];
    snprintf(db, sizeof db, "%s", qt_path(qt_tmp_dir(), "ck.db"));
    snprintf(sock, sizeof sock, "%s", qt_path(qt_tmp_dir(), "ck.sock"));
    snprintf(log, sizeof log, "%s", qt_path(qt_tmp_dir(), "ck.log"));
    make_store(db, 10);
    char faiss[4200];
    snprintf(faiss, sizeof faiss, "%s.faiss", db);
    struct stat st0;
    assert_int_equal(stat(faiss, &st0), 0);
    ino_t ino0 = st0.st_ino;
    const char *args[] = {"--db", db, "--checkpoint-interval", "0.1", "--log-level", "debug",
                          NULL};
    pid_t pid = start_daemon(sock, log, args, NULL);
    /* The huge pages at start (after "listening on", in the writer's slot), then after
     * the checkpoint below. */
    double end = qd_now() + DEADLINE;
    while (qd_now() < end && !file_has(log, "huge pages:"))
        usleep(20000);
    assert_true(file_has(log, "huge pages:"));
    long mark = file_size(log);
    conn c;
    assert_int_equal(conn_open(&c, sock), 0);
    for (unsigned i = 0; i < 5; i++) {
        char t[64];
        qtext(t, sizeof t, 7000 + i);
        expect_ok(rpcf(&c, "{\"op\":\"add\",\"id\":\"ck%u\",\"text\":\"%s\"}", i, t));
    }
    /* Send nothing and watch the FAISS file: a checkpoint replaces it (a new inode by
     * rename), and must not need client I/O to happen. */
    end = qd_now() + DEADLINE;
    struct stat fst;
    while (qd_now() < end && (stat(faiss, &fst) != 0 || fst.st_ino == ino0))
        usleep(20000);
    assert_int_not_equal(fst.st_ino, ino0);
    int saved = 0;
    end = qd_now() + DEADLINE;
    while (!saved && qd_now() < end) {
        json_t *j = rpcf(&c, "{\"op\":\"stats\"}");
        json_t *st = json_object_get(j, "stats");
        saved = json_integer_value(json_object_get(st, "checkpoints")) >= 1 &&
                json_integer_value(json_object_get(st, "unsaved_writes")) == 0 &&
                json_integer_value(json_object_get(st, "checkpoint_seq")) ==
                    json_integer_value(json_object_get(st, "seq"));
        json_decref(j);
        if (!saved)
            usleep(20000);
    }
    assert_true(saved);
    assert_true(file_has_from(log, mark, "huge pages:"));
    conn_close(&c);
    assert_int_equal(stop_daemon(pid, SIGTERM), 0);
    /* Nothing was left to save at shutdown. */
    assert_false(file_has(log, "saving the index"));
}

/* --huge-pages no: the memory is left alone, at start and at checkpoints. */
static void test_huge_pages_off(void **state)
{
    (void)state;
    char db[4096], sock[4096], log[4096];
    snprintf(db, sizeof db, "%s", qt_path(qt_tmp_dir(), "hp.db"));
    snprintf(sock, sizeof sock, "%s", qt_path(qt_tmp_dir(), "hp.sock"));
    snprintf(log, sizeof log, "%s", qt_path(qt_tmp_dir(), "hp.log"));
    make_store(db, 10);
    const char *args[] = {"--db", db, "--checkpoint-interval", "0.1", "--log-level", "debug",
                          "--huge-pages", "no", NULL};
    pid_t pid = start_daemon(sock, log, args, NULL);
    conn c;
    assert_int_equal(conn_open(&c, sock), 0);
    expect_ok(rpcf(&c, "{\"op\":\"add\",\"id\":\"hp1\",\"text\":\"huge pages left alone\"}"));
    int saved = 0;
    double end = qd_now() + DEADLINE;
    while (!saved && qd_now() < end) {
        json_t *j = rpcf(&c, "{\"op\":\"stats\"}");
        saved = json_integer_value(json_object_get(json_object_get(j, "stats"),
                                                   "checkpoints")) >= 1;
        json_decref(j);
        if (!saved)
            usleep(20000);
    }
    assert_true(saved);
    conn_close(&c);
    assert_int_equal(stop_daemon(pid, SIGTERM), 0);
    assert_false(file_has(log, "huge pages"));
    /* A value other than yes or no is refused, naming the option. */
    char cmd[16384];
    snprintf(cmd, sizeof cmd, "%s --db %s --socket %s --huge-pages maybe 2>%s", bin("qdup-daemon"),
             db, sock, log);
    assert_int_equal(WEXITSTATUS(system(cmd)), 2);
    assert_true(file_has(log, "--huge-pages maybe: must be yes or no"));
}

/* A model other than the store's is refused at start. */
static void test_model_mismatch(void **state)
{
    (void)state;
    char db[4096], sock[4096], log[4096], other[4096];
    snprintf(db, sizeof db, "%s", qt_path(qt_tmp_dir(), "mm.db"));
    snprintf(sock, sizeof sock, "%s", qt_path(qt_tmp_dir(), "mm.sock"));
    snprintf(log, sizeof log, "%s", qt_path(qt_tmp_dir(), "mm.log"));
    snprintf(other, sizeof other, "%s", qt_path(qt_fixtures_dir(), "fwd_ngram.qdm"));
    make_store(db, 10);
    const char *args[] = {"--db", db, "--model", other, NULL};
    int st = 0;
    assert_int_equal(start_daemon(sock, log, args, &st), -1);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 1);
    assert_true(file_has(log, "fingerprint"));
    assert_true(file_has(log, "leave --model out"));
    struct stat sb;
    assert_int_not_equal(lstat(sock, &sb), 0); /* never bound */
    /* With its own model it starts. */
    const char *args2[] = {"--db", db, "--model", model_path, NULL};
    pid_t pid = start_daemon(sock, log, args2, NULL);
    assert_int_equal(stop_daemon(pid, SIGTERM), 0);
}

/* --param sets a FAISS search parameter; one the index kind does not have is refused
 * at start, naming it. */
static void test_search_param(void **state)
{
    (void)state;
    char flat[4096], hnsw[4096], sock[4096], log[4096];
    snprintf(flat, sizeof flat, "%s", qt_path(qt_tmp_dir(), "param-flat.db"));
    snprintf(hnsw, sizeof hnsw, "%s", qt_path(qt_tmp_dir(), "param-hnsw.db"));
    snprintf(sock, sizeof sock, "%s", qt_path(qt_tmp_dir(), "param.sock"));
    snprintf(log, sizeof log, "%s", qt_path(qt_tmp_dir(), "param.log"));
    make_store(flat, 10);
    make_store_spec(hnsw, 40, "HNSW8");
    const char *bad[] = {"--db", flat, "--param", "nprobe=4", NULL};
    int st = 0;
    assert_int_equal(start_daemon(sock, log, bad, &st), -1);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 1);
    assert_true(file_has(log, "--param nprobe=4: parameter nprobe does not apply"));
    const char *malformed[] = {"--db", hnsw, "--param", "efSearch", NULL};
    assert_int_equal(start_daemon(sock, log, malformed, &st), -1);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 2);
    const char *good[] = {"--db", hnsw, "--param", "efSearch=40", NULL};
    pid_t pid = start_daemon(sock, log, good, NULL);
    assert_true(file_has(log, "search parameter efSearch=40"));
    conn c;
    assert_int_equal(conn_open(&c, sock), 0);
    char t[64];
    qtext(t, sizeof t, 7);
    json_t *j = rpcf(&c, "{\"op\":\"query\",\"text\":\"%s\",\"k\":1}", t);
    assert_true(is_ok(j));
    json_t *r0 = json_array_get(json_object_get(j, "results"), 0);
    assert_string_equal(json_string_value(json_object_get(r0, "id")), "s7");
    json_decref(j);
    conn_close(&c);
    assert_int_equal(stop_daemon(pid, SIGTERM), 0);
}

/* Options from a config file; the command line wins. */
static void test_config_file(void **state)
{
    (void)state;
    char sock[4096], log[4096], cfgp[4096], text[8400];
    snprintf(sock, sizeof sock, "%s", qt_path(qt_tmp_dir(), "cfg.sock"));
    snprintf(log, sizeof log, "%s", qt_path(qt_tmp_dir(), "cfg.log"));
    snprintf(cfgp, sizeof cfgp, "%s", qt_path(qt_tmp_dir(), "daemon.conf"));
    int n = snprintf(text, sizeof text,
                     "# test config\nephemeral\nmodel = %s\nsocket-mode 0600\nmax-k = 5\n"
                     "max-text 8   # bytes\n",
                     model_path);
    qt_write_file(cfgp, text, (size_t)n);
    const char *args[] = {"--config", cfgp, "--max-text", "100", NULL};
    pid_t pid = start_daemon(sock, log, args, NULL);
    struct stat st;
    assert_int_equal(lstat(sock, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    conn c;
    assert_int_equal(conn_open(&c, sock), 0);
    expect_code(rpcf(&c, "{\"op\":\"query\",\"text\":\"w3\",\"k\":6}"), "bad_request");
    expect_ok(rpcf(&c, "{\"op\":\"query\",\"text\":\"w3 w4 w5 w6 w7\",\"k\":5}"));
    conn_close(&c);
    assert_int_equal(stop_daemon(pid, SIGTERM), 0);

    /* A bad line names the file and line. */
    qt_write_file(cfgp, "max-k lots\n", 11);
    int status;
    assert_int_equal(start_daemon(sock, log, args, &status), -1);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 2);
    char want[4200];
    snprintf(want, sizeof want, "%s line 1", cfgp);
    assert_true(file_has(log, want));
}

/* Access control: writes restricted to uids, a group, or everything to the owner. */
static void test_forbidden_writes(void **state)
{
    (void)state;
    char sock[4096], log[4096];
    snprintf(sock, sizeof sock, "%s", qt_path(qt_tmp_dir(), "acl.sock"));
    snprintf(log, sizeof log, "%s", qt_path(qt_tmp_dir(), "acl.log"));
    /* Only uid 12345 may write: this process (whatever its uid, unless 12345) may not. */
    assert_true(getuid() != 12345);
    const char *args[] = {"--ephemeral", "--model", model_path, "--write-uids", "12345", NULL};
    pid_t pid = start_daemon(sock, log, args, NULL);
    conn c;
    assert_int_equal(conn_open(&c, sock), 0);
    expect_code(rpcf(&c, "{\"op\":\"add\",\"id\":\"f1\",\"text\":\"w3 w4\"}"), "forbidden");
    expect_code(rpcf(&c, "{\"op\":\"remove\",\"id\":\"f1\"}"), "forbidden");
    expect_code(rpcf(&c, "{\"op\":\"check\",\"id\":\"f1\",\"text\":\"w3 w4\"}"), "forbidden");
    expect_ok(rpcf(&c, "{\"op\":\"check\",\"id\":\"f1\",\"text\":\"w3 w4\",\"store\":false}"));
    expect_ok(rpcf(&c, "{\"op\":\"query\",\"text\":\"w3 w4\"}"));
    expect_code(rpcf(&c, "{\"op\":\"get\",\"id\":\"f1\"}"), "not_found");
    json_t *j = rpcf(&c, "{\"op\":\"stats\"}");
    json_t *s = json_object_get(j, "stats");
    assert_int_equal(json_integer_value(json_object_get(s, "questions")), 0);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(s, "errors"), "forbidden")), 3);
    json_decref(j);
    conn_close(&c);
    assert_int_equal(stop_daemon(pid, SIGTERM), 0);
    char want[64];
    snprintf(want, sizeof want, "forbidden: uid %u", (unsigned)getuid());
    assert_true(file_has(log, want));
}

/* Moderators' verdicts through the daemon: stored with both texts, kept when a
 * question is removed, exported by qdup-index verdicts as pairs qdup-train reads. */
static void test_verdicts(void **state)
{
    (void)state;
    char db[4096], sock[4096], log[4096], out[4096], cmd[16384], err[QD_ERRMSG_MAX];
    snprintf(db, sizeof db, "%s", qt_path(qt_tmp_dir(), "verdicts.db"));
    snprintf(sock, sizeof sock, "%s", qt_path(qt_tmp_dir(), "verdicts.sock"));
    snprintf(log, sizeof log, "%s", qt_path(qt_tmp_dir(), "verdicts.log"));
    snprintf(out, sizeof out, "%s", qt_path(qt_tmp_dir(), "verdicts.tsv"));
    make_store(db, 20);
    const char *args[] = {"--db", db, NULL};
    pid_t pid = start_daemon(sock, log, args, NULL);
    conn c;
    assert_int_equal(conn_open(&c, sock), 0);
    json_t *j = rpcf(&c, "{\"op\":\"verdict\",\"id\":\"s1\",\"of\":\"s0\",\"duplicate\":true}");
    assert_true(is_ok(j));
    assert_string_equal(json_string_value(json_object_get(j, "id")), "s1");
    assert_string_equal(json_string_value(json_object_get(j, "of")), "s0");
    assert_true(json_is_true(json_object_get(j, "duplicate")));
    json_decref(j);
    expect_ok(rpcf(&c, "{\"op\":\"verdict\",\"id\":\"s2\",\"of\":\"s0\",\"duplicate\":false}"));
    expect_ok(rpcf(&c, "{\"op\":\"verdict\",\"id\":\"s3\",\"of\":\"s4\",\"duplicate\":true}"));
    /* The same pair again: the later verdict replaces the earlier. */
    expect_ok(rpcf(&c, "{\"op\":\"verdict\",\"id\":\"s3\",\"of\":\"s4\",\"duplicate\":false}"));
    expect_code(rpcf(&c, "{\"op\":\"verdict\",\"id\":\"s1\",\"of\":\"gone\",\"duplicate\":true}"),
                "not_found");
    expect_code(rpcf(&c, "{\"op\":\"verdict\",\"id\":\"s1\",\"of\":\"s1\",\"duplicate\":true}"),
                "bad_request");
    expect_code(rpcf(&c, "{\"op\":\"verdict\",\"id\":\"s1\",\"of\":\"s0\",\"duplicate\":1}"),
                "bad_request");
    expect_code(rpcf(&c, "{\"op\":\"verdict\",\"id\":\"s1\",\"duplicate\":true}"),
                "bad_request");
    expect_ok(rpcf(&c, "{\"op\":\"remove\",\"id\":\"s0\"}"));
    expect_code(rpcf(&c, "{\"op\":\"verdict\",\"id\":\"s5\",\"of\":\"s0\",\"duplicate\":true}"),
                "not_found");
    conn_close(&c);
    /* From the command line client too. */
    snprintf(cmd, sizeof cmd, "%s --socket %s verdict s5 s6 dismissed", bin("qdup"), sock);
    FILE *f = popen(cmd, "r");
    char line[256] = "";
    assert_non_null(fgets(line, sizeof line, f));
    assert_int_equal(pclose(f), 0);
    assert_string_equal(line, "dismissed: s5 of s6\n");
    snprintf(cmd, sizeof cmd, "%s --socket %s verdict s5 s6 maybe 2>/dev/null", bin("qdup"),
             sock);
    int st = system(cmd);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 2);
    assert_int_equal(stop_daemon(pid, SIGTERM), 0);

    snprintf(cmd, sizeof cmd, "%s verdicts --db %s --out %s", bin("qdup-index"), db, out);
    assert_int_equal(system(cmd), 0);
    qd_pairs *p = NULL;
    if (qd_pairs_load(out, NULL, NULL, &p, err, sizeof err))
        fail_msg("%s", err);
    assert_int_equal(p->n, 4);
    const unsigned want_new[4] = {1, 2, 3, 5}, want_old[4] = {0, 0, 4, 6};
    const int want_dup[4] = {1, 0, 0, 0};
    for (size_t i = 0; i < 4; i++) {
        char t1[64], t2[64];
        qtext(t1, sizeof t1, want_new[i]);
        qtext(t2, sizeof t2, want_old[i]);
        assert_string_equal(p->q1[i], t1);
        assert_string_equal(p->q2[i], t2); /* s0's text, though s0 was removed */
        assert_int_equal(p->dup[i], want_dup[i]);
    }
    assert_int_equal(p->qid2[0], p->qid2[1]);
    assert_true(p->qid1[0] != p->qid1[1]);
    qd_pairs_free(p);
}

/* The same against a real store holding questions: a forbidden remove of a live
 * question, add, and check with store (implicit or explicit) change nothing, neither
 * what the daemon answers nor what is on disk. */
static void test_forbidden_store_unchanged(void **state)
{
    (void)state;
    char db[4096], sock[4096], log[4096];
    snprintf(db, sizeof db, "%s", qt_path(qt_tmp_dir(), "acl-store.db"));
    snprintf(sock, sizeof sock, "%s", qt_path(qt_tmp_dir(), "acl-store.sock"));
    snprintf(log, sizeof log, "%s", qt_path(qt_tmp_dir(), "acl-store.log"));
    make_store(db, 20);
    assert_true(getuid() != 12345);
    const char *args[] = {"--db", db, "--write-uids", "12345", NULL};
    pid_t pid = start_daemon(sock, log, args, NULL);
    conn c;
    assert_int_equal(conn_open(&c, sock), 0);
    json_t *j = rpcf(&c, "{\"op\":\"stats\"}");
    json_int_t seq = json_integer_value(json_object_get(json_object_get(j, "stats"), "seq"));
    json_decref(j);
    char t3[64];
    qtext(t3, sizeof t3, 3);
    expect_code(rpcf(&c, "{\"op\":\"remove\",\"id\":\"s3\"}"), "forbidden");
    expect_code(rpcf(&c, "{\"op\":\"add\",\"id\":\"f9\",\"text\":\"w30 w31 w32\"}"),
                "forbidden");
    expect_code(rpcf(&c, "{\"op\":\"check\",\"id\":\"f10\",\"text\":\"w33 w34\",\"k\":3}"),
                "forbidden");
    expect_code(rpcf(&c, "{\"op\":\"check\",\"id\":\"f11\",\"text\":\"w35\",\"store\":true}"),
                "forbidden");
    expect_code(rpcf(&c, "{\"op\":\"verdict\",\"id\":\"s3\",\"of\":\"s2\",\"duplicate\":true}"),
                "forbidden");
    expect_ok(rpcf(&c, "{\"op\":\"get\",\"id\":\"s3\"}"));
    expect_code(rpcf(&c, "{\"op\":\"get\",\"id\":\"f9\"}"), "not_found");
    expect_code(rpcf(&c, "{\"op\":\"get\",\"id\":\"f10\"}"), "not_found");
    expect_code(rpcf(&c, "{\"op\":\"get\",\"id\":\"f11\"}"), "not_found");
    /* s3 is still found by its own text. */
    j = rpcf(&c, "{\"op\":\"query\",\"text\":\"%s\",\"k\":1}", t3);
    assert_string_equal(json_string_value(json_object_get(
                            json_array_get(json_object_get(j, "results"), 0), "id")), "s3");
    json_decref(j);
    j = rpcf(&c, "{\"op\":\"stats\"}");
    json_t *st = json_object_get(j, "stats");
    assert_int_equal(json_integer_value(json_object_get(st, "questions")), 20);
    assert_int_equal(json_integer_value(json_object_get(st, "seq")), seq);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(st, "errors"), "forbidden")), 5);
    json_decref(j);
    conn_close(&c);
    assert_int_equal(stop_daemon(pid, SIGTERM), 0);

    /* On disk too. */
    char err[QD_ERRMSG_MAX];
    qd_store_opts o = {.model_path = model_path, .threads = 1, .readonly = 1};
    qd_store *s;
    if (qd_store_open(db, &o, &s, err, sizeof err))
        fail_msg("qd_store_open: %s", err);
    qd_store_info info;
    assert_int_equal(qd_store_get_info(s, &info), 0);
    assert_int_equal(info.live, 20);
    assert_int_equal(info.tombstones, 0);
    qd_store_row row;
    assert_int_equal(qd_store_get(s, "s3", 2, &row), 0);
    qd_store_row_free(&row);
    assert_int_equal(qd_store_get(s, "f9", 2, &row), QD_ERR_NOTFOUND);
    qd_store_close(s);
}

/* As root, the same with real other users: a child process drops to uid 65534. */
static int child_as(uid_t uid, gid_t gid, const gid_t *groups, size_t ngroups,
                    const char *sock, const char *line, const char *want_code)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (setgroups(ngroups, groups) != 0 || setgid(gid) != 0 || setuid(uid) != 0)
            _exit(10);
        conn c;
        if (conn_open(&c, sock) != 0)
            _exit(11);
        json_t *j = conn_rpc(&c, line);
        if (!j)
            _exit(12);
        const char *code = is_ok(j) ? "ok" : code_of(j);
        _exit(strcmp(code, want_code) == 0 ? 0 : 13);
    }
    int st;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 100;
}

static void test_peer_credentials(void **state)
{
    (void)state;
    if (geteuid() != 0) {
        fprintf(stderr, "test_peer_credentials: not root, skipped\n");
        skip();
    }
    /* A directory others may enter, for a socket others may open. */
    char dir[4096], sock[4096], log[4096];
    snprintf(dir, sizeof dir, "%s", qt_path(qt_tmp_dir(), "shared"));
    assert_int_equal(mkdir(dir, 0755), 0);
    assert_int_equal(chmod(qt_tmp_dir(), 0711), 0);
    snprintf(sock, sizeof sock, "%s", qt_path(dir, "acl.sock"));
    snprintf(log, sizeof log, "%s", qt_path(qt_tmp_dir(), "peer.log"));
    const char *args[] = {"--ephemeral", "--model",     model_path, "--socket-mode", "0666",
                          "--write-uids", "0",          "--write-group", "4242", NULL};
    pid_t pid = start_daemon(sock, log, args, NULL);
    const char *add = "{\"op\":\"add\",\"id\":\"n1\",\"text\":\"w5 w6\"}";
    const char *add2 = "{\"op\":\"add\",\"id\":\"n2\",\"text\":\"w7 w8\"}";
    const char *add3 = "{\"op\":\"add\",\"id\":\"n3\",\"text\":\"w9 w10\"}";
    const char *query = "{\"op\":\"query\",\"text\":\"w5 w6\"}";
    gid_t none[1] = {65534}, wg[1] = {4242};
    /* nobody: may query, may not add. */
    assert_int_equal(child_as(65534, 65534, none, 1, sock, add, "forbidden"), 0);
    assert_int_equal(child_as(65534, 65534, none, 1, sock, query, "ok"), 0);
    /* nobody with the writers' group as primary group, or as a supplementary one. */
    assert_int_equal(child_as(65534, 4242, none, 1, sock, add2, "ok"), 0);
    assert_int_equal(child_as(65534, 65534, wg, 1, sock, add3, "ok"), 0);
    /* root is in the uid list. */
    assert_int_equal(child_as(0, 0, none, 0, sock, add, "ok"), 0);
    assert_int_equal(stop_daemon(pid, SIGTERM), 0);
    assert_true(file_has(log, "forbidden: uid 65534 gid 65534"));

    /* --owner-only: nobody may not even connect; the owner may. */
    const char *args2[] = {"--ephemeral", "--model", model_path, "--socket-mode", "0666",
                           "--owner-only", NULL};
    pid = start_daemon(sock, log, args2, NULL);
    assert_int_equal(child_as(65534, 65534, none, 1, sock, query, "forbidden"), 0);
    assert_int_equal(child_as(0, 0, none, 0, sock, query, "ok"), 0);
    assert_int_equal(stop_daemon(pid, SIGTERM), 0);
    assert_true(file_has(log, "forbidden: uid 65534 gid 65534 pid"));
    assert_int_equal(chmod(qt_tmp_dir(), 0700), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_socket_mode),
        cmocka_unit_test(test_every_op),
        cmocka_unit_test(test_hybrid_answer),
        cmocka_unit_test(test_client),
        cmocka_unit_test(test_pipelined),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_oversized_line),
        cmocka_unit_test(test_disconnects),
        cmocka_unit_test(test_concurrent_clients),
        cmocka_unit_test(test_busy),
        cmocka_unit_test(test_slow_reader_dropped),
        cmocka_unit_test(test_sigterm_restart),
        cmocka_unit_test(test_sigkill_restart),
        cmocka_unit_test(test_socket_path_guard),
        cmocka_unit_test(test_periodic_checkpoint),
        cmocka_unit_test(test_huge_pages_off),
        cmocka_unit_test(test_model_mismatch),
        cmocka_unit_test(test_search_param),
        cmocka_unit_test(test_config_file),
        cmocka_unit_test(test_forbidden_writes),
        cmocka_unit_test(test_forbidden_store_unchanged),
        cmocka_unit_test(test_verdicts),
        cmocka_unit_test(test_peer_credentials),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
