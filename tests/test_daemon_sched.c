/*
 * test_daemon_sched.c - the scheduling and limits of a real qdup-daemon (from QDUP_BIN)
 * on a socket under the test's scratch directory: fair dispatch, cancellation, paused
 * non-readers, long lines, the BLAS threshold. Helpers in daemonutil.c.
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

/* --- scheduling ------------------------------------------------------------------------- */

/* stats.<a>.<b> (b NULL: stats.<a>) of a stats reply. */
static json_int_t stat_of(json_t *j, const char *a, const char *b)
{
    json_t *v = json_object_get(json_object_get(j, "stats"), a);
    if (b)
        v = json_object_get(v, b);
    if (!json_is_integer(v))
        fail_msg("stats has no integer %s%s%s", a, b ? "." : "", b ? b : "");
    return json_integer_value(v);
}

/* Reads n replies, which must carry tags 0..n-1 in order; returns the last. */
static json_t *replies_in_order(conn *c, int n)
{
    json_t *last = NULL;
    for (int i = 0; i < n; i++) {
        char *line = conn_line(c);
        assert_non_null(line);
        json_t *j = json_loads(line, 0, NULL);
        assert_non_null(j);
        if (json_integer_value(json_object_get(j, "tag")) != i)
            fail_msg("reply %d out of order: %s", i, line);
        free(line);
        json_decref(last);
        last = j;
    }
    return last;
}

/* One worker taking one text at a time: a flooder's 50 queued queries do not hold up
 * another client's single query. The witness is the order of two adds: each client
 * ends with an add, which waits for that client's queries (a write waits for the
 * client's earlier reads), and the single writer gives rows in commit order. Under
 * round robin the good client's query runs first or second, so its add commits while
 * the flooder's still waits for 50 queries; with one queue for everyone it would run
 * 51st, after the flooder's add was free to go. Then the same for writes: the good
 * client's one add is committed among the first, not after the flooder's 50. */
static void test_fair_dispatch(void **state)
{
    (void)state;
    char sock[4096], log[4096];
    snprintf(sock, sizeof sock, "%s", qt_path(qt_tmp_dir(), "fair.sock"));
    snprintf(log, sizeof log, "%s", qt_path(qt_tmp_dir(), "fair.log"));
    const char *args[] = {"--ephemeral", "--model",       model_path, "--threads", "1",
                          "--search-batch", "1", "--write-batch", "1", NULL};
    pid_t pid = start_daemon(sock, log, args, NULL);
    conn f, g;
    assert_int_equal(conn_open(&f, sock), 0);
    assert_int_equal(conn_open(&g, sock), 0);
    for (unsigned i = 0; i < 20; i++) {
        char t[64];
        qtext(t, sizeof t, i);
        expect_ok(rpcf(&f, "{\"op\":\"add\",\"id\":\"seed%u\",\"text\":\"%s\"}", i, t));
    }
    expect_ok(rpcf(&g, "{\"op\":\"ping\"}"));

    /* Reads. */
    char buf[16384];
    size_t len = 0;
    for (int i = 0; i < 50; i++)
        len += (size_t)snprintf(buf + len, sizeof buf - len,
                                "{\"op\":\"query\",\"text\":\"w3 w4 w5\",\"k\":5,\"tag\":%d}\n", i);
    len += (size_t)snprintf(buf + len, sizeof buf - len,
                            "{\"op\":\"add\",\"id\":\"f-after\",\"text\":\"w30 w31 w32\",\"tag\":50}\n");
    const char *good = "{\"op\":\"query\",\"text\":\"w3 w4 w5\",\"k\":5,\"tag\":0}\n"
                       "{\"op\":\"add\",\"id\":\"g-after\",\"text\":\"w33 w34 w35\",\"tag\":1}\n";
    daemon_pause(pid);
    assert_int_equal(conn_send(&f, buf, len), 0);
    assert_int_equal(conn_send(&g, good, strlen(good)), 0);
    daemon_resume(pid);
    json_t *gj = replies_in_order(&g, 2);
    json_t *fj = replies_in_order(&f, 51);
    assert_true(is_ok(gj) && is_ok(fj));
    json_int_t grow = json_integer_value(json_object_get(gj, "row"));
    json_int_t frow = json_integer_value(json_object_get(fj, "row"));
    if (grow >= frow)
        fail_msg("the good client's add (row %lld) waited for the flooder's 50 queries "
                 "(its add: row %lld)", (long long)grow, (long long)frow);
    json_decref(gj);
    json_decref(fj);

    /* Writes. */
    len = 0;
    for (int i = 0; i < 50; i++) {
        char t[64];
        qtext(t, sizeof t, 500 + (unsigned)i);
        len += (size_t)snprintf(buf + len, sizeof buf - len,
                                "{\"op\":\"add\",\"id\":\"fw%d\",\"text\":\"%s\",\"tag\":%d}\n", i, t, i);
    }
    char gline[256], t[64];
    qtext(t, sizeof t, 900);
    snprintf(gline, sizeof gline, "{\"op\":\"add\",\"id\":\"gw\",\"text\":\"%s\",\"tag\":0}\n", t);
    daemon_pause(pid);
    assert_int_equal(conn_send(&f, buf, len), 0);
    assert_int_equal(conn_send(&g, gline, strlen(gline)), 0);
    daemon_resume(pid);
    gj = replies_in_order(&g, 1);
    assert_true(is_ok(gj));
    grow = json_integer_value(json_object_get(gj, "row"));
    json_int_t fmin = -1;
    for (int i = 0; i < 50; i++) {
        char *line = conn_line(&f);
        assert_non_null(line);
        json_t *j = json_loads(line, 0, NULL);
        assert_true(is_ok(j));
        assert_int_equal(json_integer_value(json_object_get(j, "tag")), i);
        if (i == 0)
            fmin = json_integer_value(json_object_get(j, "row"));
        json_decref(j);
        free(line);
    }
    if (grow > fmin + 4)
        fail_msg("the good client's add got row %lld, the flooder's first %lld: it waited "
                 "behind the flooder's queue", (long long)grow, (long long)fmin);
    json_decref(gj);
    conn_close(&f);
    conn_close(&g);
    assert_int_equal(stop_daemon(pid, SIGTERM), 0);
}

/* A client that sends 50 queries and hangs up: its queries that have not started are
 * cancelled, not run (stats.cancelled), and what ran plus what was cancelled is all
 * of them. With one worker taking one query at a time, only the first one or two run
 * before the failed write of the first reply shows the client gone. */
static void test_cancel_on_close(void **state)
{
    (void)state;
    char sock[4096], log[4096];
    snprintf(sock, sizeof sock, "%s", qt_path(qt_tmp_dir(), "cancel.sock"));
    snprintf(log, sizeof log, "%s", qt_path(qt_tmp_dir(), "cancel.log"));
    const char *args[] = {"--ephemeral", "--model", model_path, "--threads", "1",
                          "--search-batch", "1", NULL};
    pid_t pid = start_daemon(sock, log, args, NULL);
    conn obs, x;
    assert_int_equal(conn_open(&obs, sock), 0);
    expect_ok(rpcf(&obs, "{\"op\":\"add\",\"id\":\"c1\",\"text\":\"w3 w4 w5\"}"));
    assert_int_equal(conn_open(&x, sock), 0);
    expect_ok(rpcf(&x, "{\"op\":\"ping\"}"));
    char buf[8192];
    size_t len = 0;
    for (int i = 0; i < 50; i++)
        len += (size_t)snprintf(buf + len, sizeof buf - len,
                                "{\"op\":\"query\",\"text\":\"w3 w4\",\"k\":5}\n");
    daemon_pause(pid);
    assert_int_equal(conn_send(&x, buf, len), 0);
    conn_close(&x);
    daemon_resume(pid);
    /* Wait until all 50 are accounted for: answered (a read latency each) or
     * cancelled. */
    json_int_t ran = 0, cancelled = 0;
    double end = qd_now() + DEADLINE;
    while (qd_now() < end) {
        json_t *j = rpcf(&obs, "{\"op\":\"stats\"}");
        ran = json_integer_value(json_object_get(
            json_object_get(json_object_get(json_object_get(j, "stats"), "latency_ms"), "read"),
            "n"));
        cancelled = stat_of(j, "cancelled", NULL);
        json_int_t queued = stat_of(j, "queued", NULL);
        json_decref(j);
        if (ran + cancelled >= 50 && queued == 0)
            break;
        usleep(10000);
    }
    assert_int_equal(ran + cancelled, 50);
    if (cancelled < 40)
        fail_msg("only %lld of the 50 queries of a client that hung up were cancelled",
                 (long long)cancelled);
    expect_ok(rpcf(&obs, "{\"op\":\"query\",\"text\":\"w3 w4\"}"));
    conn_close(&obs);
    assert_int_equal(stop_daemon(pid, SIGTERM), 0);
}

/* A client that pipelines queries and never reads the replies stops being read once
 * it is owed pause_output bytes: the daemon neither runs its queries on and on nor
 * drops it (its replies stay far below max_output), and it is listed as paused. */
typedef struct nonreader {
    int fd;        /* its connection */
    int lines;     /* lines to send */
    const char *line;
} nonreader;

static void *nonreader_main(void *arg)
{
    nonreader *n = arg;
    size_t len = strlen(n->line);
    for (int i = 0; i < n->lines; i++) {
        const char *p = n->line;
        size_t left = len;
        while (left > 0) {
            ssize_t w = send(n->fd, p, left, MSG_NOSIGNAL);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0)
                return NULL; /* shut down by the test, or dropped */
            p += w;
            left -= (size_t)w;
        }
    }
    return NULL;
}

static void test_nonreader_paused(void **state)
{
    (void)state;
    char sock[4096], log[4096];
    snprintf(sock, sizeof sock, "%s", qt_path(qt_tmp_dir(), "pause.sock"));
    snprintf(log, sizeof log, "%s", qt_path(qt_tmp_dir(), "pause.log"));
    const char *args[] = {"--ephemeral", "--model", model_path, NULL}; /* max-output 8M */
    pid_t pid = start_daemon(sock, log, args, NULL);
    conn obs, c;
    assert_int_equal(conn_open(&obs, sock), 0);
    for (unsigned i = 0; i < 60; i++) {
        char t[64];
        qtext(t, sizeof t, i);
        expect_ok(rpcf(&obs, "{\"op\":\"add\",\"id\":\"p%u\",\"text\":\"%s\"}", i, t));
    }
    const char *q = "{\"op\":\"query\",\"text\":\"w3 w4\",\"k\":60}\n";
    json_t *j = conn_rpc(&obs, "{\"op\":\"query\",\"text\":\"w3 w4\",\"k\":60}");
    char *one = json_dumps(j, JSON_COMPACT);
    size_t reply = strlen(one) + 1; /* the size of each of its replies */
    free(one);
    json_decref(j);
    /* Enough lines for 40 MB of replies: five times max_output. */
    nonreader n = {.lines = (int)(40u * 1024 * 1024 / reply), .line = q};
    assert_int_equal(conn_open(&c, sock), 0);
    n.fd = c.fd;
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, nonreader_main, &n), 0);
    json_int_t paused = 0;
    double end = qd_now() + DEADLINE;
    while (!paused && qd_now() < end) {
        j = rpcf(&obs, "{\"op\":\"stats\"}");
        paused = stat_of(j, "clients", "paused");
        json_decref(j);
        if (!paused)
            usleep(20000);
    }
    assert_int_equal(paused, 1);
    j = rpcf(&obs, "{\"op\":\"stats\"}");
    assert_int_equal(stat_of(j, "clients", "dropped"), 0);
    json_int_t taken = stat_of(j, "requests", "query") - 1;
    json_decref(j);
    /* It was paused long before its replies could reach the drop bound. */
    if ((size_t)taken * reply > 4u * 1024 * 1024)
        fail_msg("%lld queries of %zu-byte replies were taken from a client that reads "
                 "nothing", (long long)taken, reply);
    assert_true(taken < n.lines);
    /* Still not dropped, still served to others. */
    expect_ok(rpcf(&obs, "{\"op\":\"query\",\"text\":\"w3 w4\"}"));
    shutdown(c.fd, SHUT_RDWR); /* ends the sender's blocked send */
    pthread_join(th, NULL);
    conn_close(&c);
    conn_close(&obs);
    assert_int_equal(stop_daemon(pid, SIGTERM), 0);
}

/* Lines over 4 KiB are parsed by a worker; they keep their place in the client's
 * order among short lines: replies in order, a short get after a long add sees it, a
 * long malformed line is bad_json, a long tag comes back whole. */
static void test_long_lines(void **state)
{
    (void)state;
    enum { T = 5000 };
    char *txt = malloc(T + 1), *tag = malloc(T + 1);
    size_t n = 0;
    for (unsigned i = 0; n + 4 < T; i++)
        n += (size_t)snprintf(txt + n, T + 1 - n, "w%u ", 2 + (i * 7) % 38);
    txt[n] = '\0';
    memset(tag, 'x', T);
    tag[T] = '\0';
    size_t cap = 8 * T + 4096, len = 0;
    char *all = malloc(cap);
    /* 0: a long batch query; 1: ping; 2: long add; 3: get it; 4: long bad JSON;
     * 5: long ping (tag); 6: remove; 7: long get (not found). */
    len += (size_t)snprintf(all + len, cap - len,
                            "{\"op\":\"query\",\"k\":2,\"texts\":[\"%s\",\"w3 w4\"],\"tag\":0}\n"
                            "{\"op\":\"ping\",\"tag\":1}\n"
                            "{\"op\":\"add\",\"id\":\"long-1\",\"text\":\"%s\",\"tag\":2}\n"
                            "{\"op\":\"get\",\"id\":\"long-1\",\"tag\":3}\n"
                            "{\"op\":\"ping\",\"tag\":4,\"x\":\"%s\"\n"
                            "{\"op\":\"ping\",\"tag\":\"%s\"}\n"
                            "{\"op\":\"remove\",\"id\":\"long-1\",\"tag\":6}\n"
                            "{\"op\":\"get\",\"id\":\"long-1\",\"tag\":7,\"pad\":\"%s\"}\n",
                            txt, txt, tag, tag, tag);
    conn c;
    assert_int_equal(conn_open(&c, sock1), 0);
    assert_int_equal(conn_send(&c, all, len), 0);
    for (int k = 0; k < 8; k++) {
        char *line = conn_line(&c);
        assert_non_null(line);
        json_t *j = json_loads(line, 0, NULL);
        assert_non_null(j);
        json_t *tg = json_object_get(j, "tag");
        if (k == 4) {
            assert_string_equal(code_of(j), "bad_json");
        } else if (k == 5) {
            assert_true(is_ok(j));
            assert_string_equal(json_string_value(tg), tag);
        } else {
            if (json_integer_value(tg) != k)
                fail_msg("reply %d out of order: %.200s", k, line);
            if (k == 7)
                assert_string_equal(code_of(j), "bad_request"); /* "pad" is unknown */
            else if (!is_ok(j))
                fail_msg("reply %d: %.300s", k, line);
        }
        if (k == 0)
            assert_int_equal(json_array_size(json_object_get(j, "results")), 2);
        if (k == 3)
            assert_string_equal(json_string_value(json_object_get(j, "text")), txt);
        json_decref(j);
        free(line);
    }
    expect_code(rpcf(&c, "{\"op\":\"get\",\"id\":\"long-1\"}"), "not_found");
    conn_close(&c);
    free(txt);
    free(tag);
    free(all);
}

/* --blas-threshold changes how FAISS computes exact search (one matrix product per
 * call or one loop per query), never what it finds: single and batched queries give
 * the same ids and scores under FAISS's default threshold of 20 and qdup's 1. */
static json_t *blas_run(const char *db, const char *thr, const char *want_log)
{
    char sock[4096], log[4096];
    snprintf(sock, sizeof sock, "%s", qt_path(qt_tmp_dir(), "blas.sock"));
    snprintf(log, sizeof log, "%s", qt_path(qt_tmp_dir(), "blas.log"));
    const char *args[] = {"--db", db, thr ? "--blas-threshold" : NULL, thr, NULL};
    long from = file_size(log);
    pid_t pid = start_daemon(sock, log, args, NULL);
    assert_true(file_has_from(log, from, want_log));
    conn c;
    assert_int_equal(conn_open(&c, sock), 0);
    json_t *all = json_array();
    char line[4096];
    size_t n = 0;
    n += (size_t)snprintf(line + n, sizeof line - n, "{\"op\":\"query\",\"k\":7,\"texts\":[");
    for (unsigned i = 0; i < 8; i++) {
        char t[64];
        qtext(t, sizeof t, 1000 + 37 * i); /* not stored: scores below 1 */
        n += (size_t)snprintf(line + n, sizeof line - n, "%s\"%s\"", i ? "," : "", t);
        json_t *j = rpcf(&c, "{\"op\":\"query\",\"text\":\"%s\",\"k\":7}", t);
        assert_true(is_ok(j));
        json_array_append(all, json_object_get(j, "results"));
        json_decref(j);
    }
    snprintf(line + n, sizeof line - n, "]}");
    json_t *j = conn_rpc(&c, line);
    assert_true(is_ok(j));
    json_array_extend(all, json_object_get(j, "results"));
    json_decref(j);
    conn_close(&c);
    assert_int_equal(stop_daemon(pid, SIGTERM), 0);
    return all; /* 8 single results, then the batch's 8 */
}

/* Two result lists agree: the same scores rank by rank (1e-5: float rounding), and
 * the same ids except among results whose scores tie. */
static void same_results(json_t *ra, json_t *rb)
{
    size_t n = json_array_size(ra);
    assert_int_equal(json_array_size(rb), n);
    for (size_t r = 0; r < n; r++) {
        json_t *ha = json_array_get(ra, r), *hb = json_array_get(rb, r);
        double sa = json_number_value(json_object_get(ha, "score"));
        qt_assert_near(sa, json_number_value(json_object_get(hb, "score")), 1e-5);
        double prev = r > 0 ? json_number_value(json_object_get(json_array_get(ra, r - 1), "score")) : 2;
        double next = r + 1 < n ? json_number_value(json_object_get(json_array_get(ra, r + 1), "score")) : -2;
        if (prev - sa > 1e-5 && sa - next > 1e-5)
            assert_string_equal(json_string_value(json_object_get(ha, "id")),
                                json_string_value(json_object_get(hb, "id")));
    }
}

static void test_blas_threshold(void **state)
{
    (void)state;
    char db[4096];
    snprintf(db, sizeof db, "%s", qt_path(qt_tmp_dir(), "blas.db"));
    make_store(db, 300);
    json_t *a = blas_run(db, "20", "BLAS threshold 20 queries per call, searches padded to 20");
    json_t *b = blas_run(db, NULL, "BLAS threshold 1 queries per call, searches padded to 0");
    assert_int_equal(json_array_size(a), 16);
    assert_int_equal(json_array_size(b), 16);
    for (size_t i = 0; i < 16; i++) {
        assert_int_equal(json_array_size(json_array_get(a, i)), 7);
        same_results(json_array_get(a, i), json_array_get(b, i));
        if (i < 8) /* a text alone and in the batch */
            same_results(json_array_get(b, i), json_array_get(b, i + 8));
    }
    json_decref(a);
    json_decref(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fair_dispatch),
        cmocka_unit_test(test_cancel_on_close),
        cmocka_unit_test(test_nonreader_paused),
        cmocka_unit_test(test_long_lines),
        cmocka_unit_test(test_blas_threshold),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
