/*
 * test_daemon_reload.c - switching a serving qdup-daemon to another model (issue 11):
 * `qdup-index reembed` stages the new vectors while the daemon answers queries and
 * adds, then {"op":"reload"} or SIGHUP switches it.
 *
 * What must hold: no client sees an error reply at any point; every add acknowledged
 * before, during or after the staging and the switch is there afterwards, with a
 * vector of the new model (the ones that arrived while staging ran, or after it
 * finished, included); the fingerprint the daemon reports switches; the store left
 * behind verifies, every vector re-encoded by the model in force.
 *
 * Nothing depends on timing: reembed is stopped at a named point
 * (QDUP_INDEX_TEST_STOP) while adds are made, and every wait is for an event.
 */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "qdup/common.h"
#include "qdup/store.h"
#include "daemonutil.h"
#include "testutil.h"

/* A client thread: queries or adds until told to stop, counting error replies. */
typedef struct client {
    const char *sock;     /* daemon socket */
    int adds;             /* 1: adds "bg<i>", 0: queries */
    volatile int stop;    /* set by the test */
    unsigned done;        /* requests answered ok */
    unsigned errors;      /* requests answered with an error, or not at all */
    char last_error[512]; /* the last error reply */
} client;

static void *client_run(void *arg)
{
    client *cl = arg;
    conn c;
    if (conn_open(&c, cl->sock) != 0) {
        cl->errors++;
        return NULL;
    }
    char line[256], t[64];
    for (unsigned i = 0; !cl->stop; i++) {
        qtext(t, sizeof t, (cl->adds ? 20000 : 400) + i);
        if (cl->adds)
            snprintf(line, sizeof line, "{\"op\":\"add\",\"id\":\"bg%u\",\"text\":\"%s\"}", i, t);
        else
            snprintf(line, sizeof line, "{\"op\":\"query\",\"text\":\"%s\",\"k\":3}", t);
        json_t *j = conn_rpc(&c, line);
        if (j && is_ok(j)) {
            cl->done++;
        } else {
            cl->errors++;
            char *d = j ? json_dumps(j, JSON_COMPACT) : NULL;
            snprintf(cl->last_error, sizeof cl->last_error, "%s", d ? d : "no reply");
            free(d);
        }
        json_decref(j);
    }
    conn_close(&c);
    return NULL;
}

/* The model fingerprint the daemon reports in stats. */
static void daemon_fingerprint(conn *c, char *fp, size_t len)
{
    json_t *j = rpcf(c, "{\"op\":\"stats\"}");
    assert_true(is_ok(j));
    json_t *m = json_object_get(json_object_get(j, "stats"), "model");
    const char *v = json_string_value(json_object_get(m, "fingerprint"));
    assert_non_null(v);
    snprintf(fp, len, "%s", v);
    json_decref(j);
}

/* Starts `qdup-index reembed --db db --model model` (stdout to out), stopped at `stop`
 * if not NULL: returns its pid once it has stopped there (or started). */
static pid_t reembed_start(const char *db, const char *model, const char *out,
                           const char *stop)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        FILE *f = freopen(out, "w", stdout);
        if (!f)
            _exit(126);
        if (stop)
            setenv("QDUP_INDEX_TEST_STOP", stop, 1);
        execl(bin("qdup-index"), "qdup-index", "reembed", "--quiet", "--db", db, "--model",
              model, (char *)NULL);
        _exit(127);
    }
    if (stop) {
        int st;
        assert_int_equal(waitpid(pid, &st, WUNTRACED), pid);
        assert_true(WIFSTOPPED(st));
    }
    return pid;
}

static int reembed_wait(pid_t pid)
{
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void add_ok(conn *c, const char *id, unsigned k)
{
    char t[64];
    qtext(t, sizeof t, k);
    expect_ok(rpcf(c, "{\"op\":\"add\",\"id\":\"%s\",\"text\":\"%s\"}", id, t));
}

/* Opens db read-only: its model is want, every vector is that model's encoding, verify
 * passes, and the ids given are live. */
static void store_check(const char *db, const char *want, const char *const *ids, size_t n)
{
    char err[QD_ERRMSG_MAX], report[4096] = "";
    qd_store_opts o = {.readonly = 1};
    qd_store *s = NULL;
    if (qd_store_open(db, &o, &s, err, sizeof err))
        fail_msg("open %s: %s", db, err);
    qd_store_info in;
    assert_int_equal(qd_store_get_info(s, &in), 0);
    assert_string_equal(in.model_fingerprint, want);
    FILE *f = fmemopen(report, sizeof report, "w");
    uint64_t bad = 0, problems = 0;
    int rc = qd_store_check_vectors(s, f, 10, &bad);
    int rc2 = qd_store_verify(s, f, 10, &problems);
    fclose(f);
    if (rc || rc2 || bad || problems)
        fail_msg("%s after the switch: %s", db, report);
    for (size_t i = 0; i < n; i++) {
        qd_store_row r;
        if (qd_store_get(s, ids[i], strlen(ids[i]), &r))
            fail_msg("%s: acknowledged add %s is missing", db, ids[i]);
        qd_store_row_free(&r);
    }
    qd_store_close(s);
}

/* One test's files under the scratch directory, named after it: a store of `rows`
 * questions and the second model are made there. */
typedef struct files {
    char db[4096], sock[4096], log[4096], out[4096], m2[4096];
} files;

static void files_for(files *f, const char *name, size_t rows)
{
    char n[256];
    snprintf(n, sizeof n, "%s.db", name);
    snprintf(f->db, sizeof f->db, "%s", qt_path(qt_tmp_dir(), n));
    snprintf(n, sizeof n, "%s.sock", name);
    snprintf(f->sock, sizeof f->sock, "%s", qt_path(qt_tmp_dir(), n));
    snprintf(n, sizeof n, "%s.log", name);
    snprintf(f->log, sizeof f->log, "%s", qt_path(qt_tmp_dir(), n));
    snprintf(n, sizeof n, "%s.out", name);
    snprintf(f->out, sizeof f->out, "%s", qt_path(qt_tmp_dir(), n));
    snprintf(n, sizeof n, "%s-second.qdm", name);
    snprintf(f->m2, sizeof f->m2, "%s", qt_path(qt_tmp_dir(), n));
    make_store(f->db, rows);
    make_second_model(f->m2);
}

/* Starts a daemon with args on f's socket and log, connects c to it and reads the
 * fingerprint of the model in force into fp. Returns the daemon's pid. */
static pid_t serve(const files *f, const char *const *args, conn *c, char *fp, size_t len)
{
    pid_t pid = start_daemon(f->sock, f->log, args, NULL);
    assert_int_equal(conn_open(c, f->sock), 0);
    daemon_fingerprint(c, fp, len);
    return pid;
}

static void test_reembed_while_serving(void **state)
{
    (void)state;
    static files f;
    files_for(&f, "rl", 400);
    const char *db = f.db, *sock = f.sock, *log = f.log, *out = f.out, *m2 = f.m2;
    const char *args[] = {"--db", db, "--threads", "3", "--checkpoint-interval", "0.2", NULL};
    conn c;
    char fp1[32], fp2[32], fp[32];
    pid_t pid = serve(&f, args, &c, fp1, sizeof fp1);

    /* Queries and adds from two other clients all along. */
    client q = {.sock = sock}, a = {.sock = sock, .adds = 1};
    pthread_t tq, ta;
    assert_int_equal(pthread_create(&tq, NULL, client_run, &q), 0);
    assert_int_equal(pthread_create(&ta, NULL, client_run, &a), 0);

    /* Stopped after its first chunk: adds and a removal arrive while it stages. */
    pid_t rp = reembed_start(db, m2, out, "reembed:chunk");
    add_ok(&c, "during0", 5000);
    add_ok(&c, "during1", 5001);
    expect_ok(rpcf(&c, "{\"op\":\"remove\",\"id\":\"s10\"}"));
    assert_int_equal(kill(rp, SIGCONT), 0);
    assert_int_equal(reembed_wait(rp), 0);
    /* The daemon holds the writer lock: reembed staged and left the switch to it. */
    assert_true(file_has(out, "staged; send SIGHUP or {\"op\":\"reload\"}"));
    daemon_fingerprint(&c, fp, sizeof fp);
    assert_string_equal(fp, fp1);
    /* Added after the staging finished: encoded by the switch. */
    add_ok(&c, "after0", 5002);

    json_t *j = rpcf(&c, "{\"op\":\"reload\"}");
    assert_true(is_ok(j));
    assert_true(json_is_true(json_object_get(j, "switched")));
    assert_string_equal(json_string_value(json_object_get(j, "from")), fp1);
    snprintf(fp2, sizeof fp2, "%s", json_string_value(json_object_get(j, "to")));
    json_decref(j);
    assert_string_not_equal(fp2, fp1);
    daemon_fingerprint(&c, fp, sizeof fp);
    assert_string_equal(fp, fp2);
    assert_true(file_has(log, "reload (uid "));
    add_ok(&c, "new0", 5003);
    /* Found by its own new-model vector. */
    char t[64];
    qtext(t, sizeof t, 5001);
    j = rpcf(&c, "{\"op\":\"query\",\"text\":\"%s\",\"k\":1,\"rank\":\"cosine\"}", t);
    assert_true(is_ok(j));
    json_t *top = json_array_get(json_object_get(j, "results"), 0);
    assert_string_equal(json_string_value(json_object_get(top, "id")), "during1");
    assert_true(json_real_value(json_object_get(top, "cosine")) > 0.9999);
    json_decref(j);
    /* Nothing staged now: a reload changes nothing. */
    j = rpcf(&c, "{\"op\":\"reload\"}");
    assert_true(is_ok(j));
    assert_true(json_is_false(json_object_get(j, "switched")));
    json_decref(j);

    /* Let the clients run on the new model for a while, by their own count. */
    unsigned q0 = q.done, a0 = a.done;
    double end = qd_now() + DEADLINE;
    while ((q.done < q0 + 20 || a.done < a0 + 20) && qd_now() < end && !q.errors && !a.errors)
        usleep(10000);
    q.stop = a.stop = 1;
    pthread_join(tq, NULL);
    pthread_join(ta, NULL);
    if (q.errors || a.errors)
        fail_msg("error replies: %u to queries (%s), %u to adds (%s)", q.errors, q.last_error,
                 a.errors, a.last_error);
    assert_true(q.done > 0 && a.done > 0);
    conn_close(&c);
    assert_int_equal(stop_daemon(pid, SIGTERM), 0);

    /* Every acknowledged add, with a new-model vector. */
    size_t n = 0;
    char (*bg)[32] = calloc(a.done + 8, 32);
    const char **ids = calloc(a.done + 8, sizeof *ids);
    static const char *const mine[] = {"during0", "during1", "after0", "new0", "s0", "s399"};
    for (size_t i = 0; i < sizeof mine / sizeof *mine; i++)
        ids[n++] = mine[i];
    for (unsigned i = 0; i < a.done; i++) {
        snprintf(bg[i], 32, "bg%u", i);
        ids[n++] = bg[i];
    }
    store_check(db, fp2, ids, n);
    free(bg);
    free(ids);
}

/* SIGHUP switches to a staged model (and says so), and says when nothing is staged. */
static void test_reload_on_sighup(void **state)
{
    (void)state;
    static files f;
    files_for(&f, "hup", 200);
    const char *db = f.db, *sock = f.sock, *log = f.log, *out = f.out, *m2 = f.m2;
    const char *args[] = {"--db", db, NULL};
    conn c;
    char fp1[32], fp[32];
    pid_t pid = serve(&f, args, &c, fp1, sizeof fp1);

    /* Nothing staged: logged, nothing changes, the daemon serves on. */
    long from = file_size(log);
    assert_int_equal(kill(pid, SIGHUP), 0);
    double end = qd_now() + DEADLINE;
    while (!file_has_from(log, from, "SIGHUP: no model is staged") && qd_now() < end)
        usleep(10000);
    assert_true(file_has_from(log, from, "SIGHUP: no model is staged"));

    assert_int_equal(reembed_wait(reembed_start(db, m2, out, NULL)), 0);
    assert_true(file_has(out, "staged; send SIGHUP"));
    add_ok(&c, "late", 7000);
    from = file_size(log);
    assert_int_equal(kill(pid, SIGHUP), 0);
    end = qd_now() + DEADLINE;
    while (!file_has_from(log, from, "SIGHUP: switched from model") && qd_now() < end)
        usleep(10000);
    assert_true(file_has_from(log, from, "SIGHUP: switched from model"));
    daemon_fingerprint(&c, fp, sizeof fp);
    assert_string_not_equal(fp, fp1);
    char fp2[32];
    snprintf(fp2, sizeof fp2, "%s", fp);
    /* The command-line client's reload: nothing is staged any more. */
    char cmd[8400], got[256] = "";
    snprintf(cmd, sizeof cmd, "'%s' --socket '%s' reload", bin("qdup"), sock);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    if (!fgets(got, sizeof got, p))
        got[0] = '\0';
    assert_int_equal(pclose(p), 0);
    assert_non_null(strstr(got, "not switched: no model is staged"));
    conn_close(&c);
    assert_int_equal(stop_daemon(pid, SIGTERM), 0);
    static const char *const ids[] = {"late", "s0", "s199"};
    store_check(db, fp2, ids, 3);

    /* Restarted, the daemon opens the store with the new model it remembers. */
    pid = serve(&f, args, &c, fp, sizeof fp);
    assert_string_equal(fp, fp2);
    conn_close(&c);
    assert_int_equal(stop_daemon(pid, SIGTERM), 0);
}

/* stats.checkpoint_failing as the daemon reports it. */
static int checkpoint_failing(conn *c)
{
    json_t *j = rpcf(c, "{\"op\":\"stats\"}");
    assert_true(is_ok(j));
    json_t *v = json_object_get(json_object_get(j, "stats"), "checkpoint_failing");
    assert_true(json_is_boolean(v));
    int failing = json_is_true(v);
    json_decref(j);
    return failing;
}

/* A switch on SIGHUP whose checkpoint fails (here: a directory where the FAISS file
 * goes) is saved by a later checkpoint, as a switch by the reload op is: the daemon
 * counts it as an unsaved write. Without that, with no write coming, the FAISS file
 * stays the old model's until the daemon stops, and a crash meanwhile costs a rebuild. */
static void test_sighup_switch_checkpoint_retried(void **state)
{
    (void)state;
    static files f;
    files_for(&f, "hupck", 100);
    const char *args[] = {"--db", f.db, "--checkpoint-interval", "0.2", NULL};
    conn c;
    char fp1[32], fp[32], faiss[4200], inside[4300];
    pid_t pid = serve(&f, args, &c, fp1, sizeof fp1);
    assert_int_equal(reembed_wait(reembed_start(f.db, f.m2, f.out, NULL)), 0);
    assert_true(file_has(f.out, "staged; send SIGHUP"));
    snprintf(faiss, sizeof faiss, "%s.faiss", f.db);
    snprintf(inside, sizeof inside, "%s/keep", faiss);
    assert_int_equal(unlink(faiss), 0);
    assert_int_equal(mkdir(faiss, 0755), 0);
    FILE *k = fopen(inside, "w");
    assert_non_null(k);
    fclose(k);
    long from = file_size(f.log);
    assert_int_equal(kill(pid, SIGHUP), 0);
    double end = qd_now() + DEADLINE;
    while (!file_has_from(f.log, from, "SIGHUP: switched from model") && qd_now() < end)
        usleep(10000);
    assert_true(file_has_from(f.log, from, "SIGHUP: switched from model"));
    daemon_fingerprint(&c, fp, sizeof fp);
    assert_string_not_equal(fp, fp1);
    assert_true(checkpoint_failing(&c));
    /* The way cleared, the next checkpoints save the switch. */
    assert_int_equal(unlink(inside), 0);
    assert_int_equal(rmdir(faiss), 0);
    end = qd_now() + DEADLINE;
    while (checkpoint_failing(&c) && qd_now() < end)
        usleep(20000);
    assert_false(checkpoint_failing(&c));
    conn_close(&c);
    assert_int_equal(stop_daemon(pid, SIGKILL), 128 + SIGKILL);
    /* Killed: the FAISS file the checkpoint wrote is the new model's, vouched for. */
    static const char *const ids[] = {"s0", "s99"};
    store_check(f.db, fp, ids, 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reembed_while_serving),
        cmocka_unit_test(test_reload_on_sighup),
        cmocka_unit_test(test_sighup_switch_checkpoint_retried),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
