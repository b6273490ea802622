/*
 * daemonutil.c - the helpers of the daemon's integration tests (daemonutil.h).
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
#include "testmodel.h"
#include "testutil.h"

/* --- processes ------------------------------------------------------------------------ */

char model_path[4096];

const char *bin(const char *name)
{
    static char buf[4][4096];
    static int next;
    char *b = buf[next++ % 4];
    snprintf(b, sizeof buf[0], "%s/%s", qt_bin_dir(), name);
    return b;
}

/* 1 if the file holds `needle` after its first `from` bytes. */
int file_has_from(const char *path, long from, const char *needle)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return 0;
    static char buf[1 << 20];
    size_t n = 0;
    buf[0] = '\n'; /* so that a needle starting with a newline matches the first line */
    if (fseek(f, from, SEEK_SET) == 0)
        n = fread(buf + 1, 1, sizeof buf - 2, f);
    fclose(f);
    buf[n + 1] = '\0';
    return strstr(buf, needle) != NULL;
}

int file_has(const char *path, const char *needle)
{
    return file_has_from(path, 0, needle);
}

long file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : 0;
}

/* Daemons started and not yet stopped: a failing assertion leaves a test early, and
 * these must not outlive the test program. */
pid_t running[64];
size_t nrunning;

void forget_pid(pid_t pid)
{
    for (size_t i = 0; i < nrunning; i++)
        if (running[i] == pid)
            running[i] = running[--nrunning];
}

void kill_leftovers(void)
{
    while (nrunning) {
        pid_t pid = running[--nrunning];
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
    }
}

/* Starts qdup-daemon with the given arguments (NULL-terminated), stderr to log; waits
 * for "listening on SOCK". Returns the pid, or -1 if the daemon exited first (its
 * status in *status if not NULL). */
pid_t start_daemon(const char *sock, const char *log, const char *const *args,
                          int *status)
{
    const char *argv[64];
    int n = 0;
    argv[n++] = bin("qdup-daemon");
    argv[n++] = "--socket";
    argv[n++] = sock;
    for (int i = 0; args[i]; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    long from = file_size(log); /* a log may be shared by several runs */
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid > 0 && nrunning < sizeof running / sizeof running[0])
        running[nrunning++] = pid;
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd < 0)
            _exit(126);
        dup2(fd, 2);
        dup2(fd, 1);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    /* The whole message: "another server is listening on PATH" must not match. */
    char want[4200];
    snprintf(want, sizeof want, ": listening on %s\n", sock);
    double end = qd_now() + DEADLINE;
    while (qd_now() < end) {
        if (file_has_from(log, from, want))
            return pid;
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            forget_pid(pid);
            if (status)
                *status = st;
            return -1;
        }
        usleep(20000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    forget_pid(pid);
    fail_msg("qdup-daemon did not start within %.0f s (log %s)", DEADLINE, log);
    return -1;
}

/* Signals the daemon and waits for it; returns its exit code, or 128 + signal. */
int stop_daemon(pid_t pid, int sig)
{
    kill(pid, sig);
    int st;
    double end = qd_now() + DEADLINE;
    while (waitpid(pid, &st, WNOHANG) != pid) {
        if (qd_now() > end) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            forget_pid(pid);
            fail_msg("qdup-daemon did not stop within %.0f s", DEADLINE);
        }
        usleep(10000);
    }
    forget_pid(pid);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* Stops the daemon (and waits until it is stopped), so that requests sent meanwhile
 * all wait in its socket buffers when it goes on: the order it then serves them in
 * shows its scheduling, not the timing of the sends. */
void daemon_pause(pid_t pid)
{
    int st;
    assert_int_equal(kill(pid, SIGSTOP), 0);
    assert_int_equal(waitpid(pid, &st, WUNTRACED), pid);
    assert_true(WIFSTOPPED(st));
}

void daemon_resume(pid_t pid)
{
    assert_int_equal(kill(pid, SIGCONT), 0);
}

/* --- connections ------------------------------------------------------------------------ */

int conn_open(conn *c, const char *sock)
{
    memset(c, 0, sizeof *c);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", sock);
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        return -1;
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(c->fd);
        c->fd = -1;
        return -1;
    }
    c->cap = 1 << 16;
    c->buf = malloc(c->cap);
    return 0;
}

void conn_close(conn *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    free(c->buf);
    c->buf = NULL;
}

/* Writes everything; 0, or -1 if the peer is gone. */
int conn_send(conn *c, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t w = send(c->fd, data, len, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        data += w;
        len -= (size_t)w;
    }
    return 0;
}

/* The next line (malloc'd, without '\n'), or NULL at EOF, on error or after the
 * deadline. */
char *conn_line(conn *c)
{
    double end = qd_now() + DEADLINE;
    for (;;) {
        char *nl = c->len ? memchr(c->buf, '\n', c->len) : NULL;
        if (nl) {
            size_t n = (size_t)(nl - c->buf);
            char *line = malloc(n + 1);
            memcpy(line, c->buf, n);
            line[n] = '\0';
            memmove(c->buf, nl + 1, c->len - n - 1);
            c->len -= n + 1;
            return line;
        }
        double left = end - qd_now();
        if (left <= 0)
            return NULL;
        struct pollfd p = {.fd = c->fd, .events = POLLIN};
        int pr = poll(&p, 1, (int)(left * 1000) + 1);
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr <= 0)
            continue;
        if (c->len == c->cap) {
            c->cap *= 2;
            c->buf = realloc(c->buf, c->cap);
        }
        ssize_t r = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return NULL;
        c->len += (size_t)r;
    }
}

/* Sends one request line and parses its reply (NULL if none came). */
json_t *conn_rpc(conn *c, const char *line)
{
    size_t n = strlen(line);
    char *l = malloc(n + 2);
    memcpy(l, line, n);
    l[n] = '\n';
    /* A failed send is not the end: a daemon that refuses a connection says why
     * first, and that line is waiting to be read. */
    conn_send(c, l, n + 1);
    free(l);
    char *reply = conn_line(c);
    if (!reply)
        return NULL;
    json_t *j = json_loads(reply, 0, NULL);
    free(reply);
    return j;
}

json_t *rpcf(conn *c, const char *fmt, ...)
{
    char line[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    json_t *j = conn_rpc(c, line);
    if (!j)
        fail_msg("no reply to %s", line);
    return j;
}

int is_ok(json_t *j)
{
    return json_is_true(json_object_get(j, "ok"));
}

const char *code_of(json_t *j)
{
    const char *s = json_string_value(json_object_get(json_object_get(j, "error"), "code"));
    return s ? s : "";
}

void expect_code(json_t *j, const char *code)
{
    if (strcmp(code_of(j), code) != 0) {
        char *s = json_dumps(j, JSON_COMPACT);
        fail_msg("expected %s, got %s", code, s);
    }
    json_decref(j);
}

void expect_ok(json_t *j)
{
    if (!is_ok(j)) {
        char *s = json_dumps(j, JSON_COMPACT);
        fail_msg("expected ok, got %s", s);
    }
    json_decref(j);
}

/* --- the store ---------------------------------------------------------------------- */

/* Distinct texts for distinct i (< 38^3): three words from i's base-38 digits. */
void qtext(char *buf, size_t n, unsigned i)
{
    snprintf(buf, n, "w%u w%u w%u w%u", 2 + i % 38, 2 + (i / 38) % 38, 2 + (i / 1444) % 38,
             2 + (i * 7 + 1) % 38);
}

/* A store of n questions qtext(0..n-1), ids s0.., with index kind spec (NULL: Flat). */
void make_store_spec(const char *db, unsigned n, const char *spec)
{
    char err[QD_ERRMSG_MAX];
    qd_store_opts o = {.model_path = model_path, .index_spec = spec, .threads = 1};
    qd_store *s;
    if (qd_store_create(db, &o, &s, err, sizeof err))
        fail_msg("qd_store_create: %s", err);
    qd_store_item *items = calloc(n, sizeof *items);
    char (*ids)[32] = calloc(n, 32), (*texts)[64] = calloc(n, 64);
    for (unsigned i = 0; i < n; i++) {
        snprintf(ids[i], 32, "s%u", i);
        qtext(texts[i], 64, i);
        items[i] = (qd_store_item){ids[i], strlen(ids[i]), texts[i], strlen(texts[i]), NULL};
    }
    qd_store_result *res = calloc(n, sizeof *res);
    assert_int_equal(qd_ingest_add(s, items, n, 0, 1, NULL, NULL, res, err, sizeof err), 0);
    for (unsigned i = 0; i < n; i++)
        assert_int_equal(res[i].status, QD_STORE_ADDED);
    qd_store_close(s);
    free(items);
    free(ids);
    free(texts);
    free(res);
}

void make_store(const char *db, unsigned n)
{
    make_store_spec(db, n, NULL);
}

void make_second_model(const char *dst)
{
    qt_variant_model(model_path, dst, 1);
}

/* --- the shared daemon ---------------------------------------------------------------- */

char sock1[4096], log1[4096], db1[4096];
pid_t pid1 = -1;

int setup(void **state)
{
    (void)state;
    snprintf(model_path, sizeof model_path, "%s", qt_path(qt_fixtures_dir(), "fwd_plain.qdm"));
    if (model_path[0] != '/') {
        char cwd[2048];
        if (getcwd(cwd, sizeof cwd))
            snprintf(model_path, sizeof model_path, "%s/%s", cwd,
                     qt_path(qt_fixtures_dir(), "fwd_plain.qdm"));
    }
    signal(SIGPIPE, SIG_IGN);
    atexit(kill_leftovers);
    snprintf(db1, sizeof db1, "%s", qt_path(qt_tmp_dir(), "one.db"));
    snprintf(sock1, sizeof sock1, "%s", qt_path(qt_tmp_dir(), "one.sock"));
    snprintf(log1, sizeof log1, "%s", qt_path(qt_tmp_dir(), "one.log"));
    make_store(db1, 300);
    const char *args[] = {"--db", db1, "--threads", "2", NULL};
    pid1 = start_daemon(sock1, log1, args, NULL);
    return pid1 > 0 ? 0 : -1;
}

int teardown(void **state)
{
    (void)state;
    int rc = 0;
    if (pid1 > 0 && (rc = stop_daemon(pid1, SIGTERM)) != 0)
        fprintf(stderr, "qdup-daemon exited with %d; log %s\n", rc, log1);
    kill_leftovers(); /* those of tests that failed half-way */
    return rc ? -1 : 0;
}
