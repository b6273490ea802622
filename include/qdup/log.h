/*
 * log.h - qdup-daemon's log lines: one line per event on stderr, with a level and,
 * unless turned off, the time.
 *
 *   2026-12-03T08:09:10.123Z info qdup-daemon: listening on /run/qdup/qdup.sock
 *
 * Under systemd the journal records the time itself: when stderr is the journal's
 * stream (systemd sets JOURNAL_STREAM to its device and inode) the default (time
 * "auto") leaves the time out and starts each line with the kernel-style priority
 * "<6>", which journald turns into the entry's priority. Levels are syslog's numbers.
 *
 * A line is formatted whole and written with one write(2), so lines of different
 * threads never interleave. qd_log_limited() bounds a kind of line a client can
 * provoke (a refused request) to a burst per second, then says how many it dropped.
 */
#ifndef QDUP_LOG_H
#define QDUP_LOG_H

#include <stdarg.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum qd_log_level {
    QD_LOG_ERR = 3,   /* the daemon cannot do what it was asked (it may stop) */
    QD_LOG_WARN = 4,  /* something is wrong but the daemon goes on */
    QD_LOG_INFO = 6,  /* start, stop, checkpoints, refused requests */
    QD_LOG_DEBUG = 7, /* detail for finding a problem */
} qd_log_level;

typedef enum qd_log_time {
    QD_LOG_TIME_AUTO = 0, /* off when stderr is the journal's stream, else on */
    QD_LOG_TIME_ON = 1,
    QD_LOG_TIME_OFF = 2,
} qd_log_time;

/* Program name in each line, least important level written, time stamps. Call before
 * other threads log; the defaults are "qdup", QD_LOG_INFO, QD_LOG_TIME_AUTO. */
void qd_log_setup(const char *prog, int level, qd_log_time time);

/* Parses a level name (error, warn, info, debug) or a time setting (yes, no, auto);
 * 0 on success, QD_ERR_INVAL otherwise. */
int qd_log_parse_level(const char *name, int *level);
int qd_log_parse_time(const char *name, qd_log_time *time);

/* Writes one line (no trailing newline needed) if level is important enough. */
__attribute__((format(printf, 2, 3))) void qd_log(int level, const char *fmt, ...);
__attribute__((format(printf, 2, 0))) void qd_logv(int level, const char *fmt, va_list ap);

/* A limit on one kind of line: at most `burst` per second. Zero-initialize with the
 * burst set; used from one thread. */
typedef struct qd_log_limit {
    unsigned burst;       /* lines allowed per second */
    double window_start;  /* qd_now() when the current second began */
    unsigned used;        /* lines written in it */
    uint64_t suppressed;  /* lines dropped since the last one written */
} qd_log_limit;

/* qd_log() within the limit; the first line after dropped ones says how many. */
__attribute__((format(printf, 3, 4))) void qd_log_limited(qd_log_limit *lim, int level,
                                                          const char *fmt, ...);

#ifdef __cplusplus
}
#endif

#endif
