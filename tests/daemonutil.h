/*
 * daemonutil.h - what the daemon's integration tests (test_daemon.c,
 * test_daemon_sched.c) share: starting and stopping qdup-daemon processes, line-based
 * connections with JSON requests, stores made with the fixture model, and the one
 * shared daemon of each test program (setup/teardown).
 */
#ifndef QDUP_DAEMONUTIL_H
#define QDUP_DAEMONUTIL_H

#include <stddef.h>
#include <sys/types.h>

#include <jansson.h>

#define DEADLINE 120.0 /* seconds: only a hung daemon gets near it */

/* A connection to a daemon. */
typedef struct conn {
    int fd;
    char *buf;     /* bytes read, not yet returned as lines */
    size_t len;
    size_t cap;
} conn;

/* The shared daemon's socket, log and store (made by setup), and its pid. */
extern char model_path[4096];
extern pid_t running[64];
extern size_t nrunning;
extern char sock1[4096], log1[4096], db1[4096];
extern pid_t pid1;

const char *bin(const char *name);
int file_has_from(const char *path, long from, const char *needle);
int file_has(const char *path, const char *needle);
long file_size(const char *path);
void forget_pid(pid_t pid);
void kill_leftovers(void);
pid_t start_daemon(const char *sock, const char *log, const char *const *args,
                          int *status);
int stop_daemon(pid_t pid, int sig);
void daemon_pause(pid_t pid);
void daemon_resume(pid_t pid);
int conn_open(conn *c, const char *sock);
void conn_close(conn *c);
int conn_send(conn *c, const char *data, size_t len);
char *conn_line(conn *c);
json_t *conn_rpc(conn *c, const char *line);
int is_ok(json_t *j);
const char *code_of(json_t *j);
void expect_code(json_t *j, const char *code);
void expect_ok(json_t *j);
void qtext(char *buf, size_t n, unsigned i);
void make_store_spec(const char *db, unsigned n, const char *spec);
void make_store(const char *db, unsigned n);
/* Writes the fixture model with its weights perturbed to dst: a second model of the
 * same dimension and vocabulary, with another fingerprint (reembed, reload). */
void make_second_model(const char *dst);
int setup(void **state);
int teardown(void **state);
json_t *rpcf(conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
