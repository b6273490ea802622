/*
 * harness.h - processes and files for the programs that drive qdup's own programs as
 * black boxes (qdup-crash-test, qdup-abuse): start, wait, look into logs, clean up.
 */
#ifndef QDUP_TOOLS_HARNESS_H
#define QDUP_TOOLS_HARNESS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* The program's name, the prefix of die()'s messages; set it first thing in main. */
extern const char *harness_prog;

/* Prints "prog: message" to standard error and exits with status 1. */
void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

/* Checks that failed (besides a driver's own counts): failf() counts one and prints
 * "prog: FAIL: message". */
extern int harness_failures;
void failf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Sleeps s seconds (nothing if s <= 0), through signals. */
void sleep_s(double s);

/* dir/name in one of 8 rotating static buffers (so at most 8 alive at once). */
const char *path_in(const char *dir, const char *name);

/* Starts argv[0] (a path) with standard input from `in`, output to `out` (truncated)
 * and errors appended to `err`; NULL for any of them means /dev/null. */
pid_t spawn(char *const argv[], const char *in, const char *out, const char *err);

/* Waits for pid: its exit status, or 128 + the signal that killed it. */
int wait_status(pid_t pid);

/* The whole file in a malloc'd NUL-terminated buffer (NULL if unreadable); its length
 * in *len if len is not NULL. */
char *slurp(const char *path, size_t *len);

/* 1 if the file holds needle after its first `from` bytes (0 if unreadable). */
int file_has_from(const char *path, long from, const char *needle);

/* Waits until the daemon pid logs "listening on SOCK" to log after its first `from`
 * bytes: 0, or -1 if the process exited first (it is reaped). Dies past deadline
 * seconds. */
int wait_listening(pid_t pid, const char *log, long from, const char *sock, double deadline);

/* Removes dir and everything under it (symbolic links are not followed). */
void remove_tree(const char *dir);

/* Writes a two-column dump ("qid<TAB>question" header) of the questions prefix<k>
 * for k in [k0, k1), the text of k from text_of; dies on failure. */
void write_dump(const char *path, const char *prefix, uint64_t k0, uint64_t k1,
                void (*text_of)(uint64_t k, char *buf, size_t len));

/* The set-up every driver does after its options. bin: if empty, the directory of this
 * program. model: if empty, $QDUP_FIXTURES/fwd_plain.qdm or else `fallback`; then made
 * absolute (dies if it does not exist). dir: if not `given`, a new directory
 * $TMPDIR/<prog>.XXXXXX, else created if missing. Each buffer holds PATH_MAX bytes. */
void harness_setup(char *bin, char *model, const char *fallback, char *dir, int given);

/* Writes the model at src with every weight perturbed to dst: a second model of the
 * same dimension and vocabulary whose vectors differ (to switch a store to with
 * qdup-index reembed); dies on failure. */
void make_second_model(const char *src, const char *dst);

/* The number in v for option --name, which must lie in [lo, hi]: else a message and
 * exit status 2 (bad usage). */
long opt_long(const char *name, const char *v, long lo, long hi);

#endif
