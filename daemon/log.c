/*
 * log.c - qdup-daemon's log lines (log.h).
 *
 * Each line is built in a stack buffer (prefix, message, newline) and written with a
 * single write(2) to stderr: POSIX keeps such writes whole for pipes up to PIPE_BUF
 * and the journal's stream socket takes them as one record, so threads need no lock.
 * A message longer than the buffer is cut (and says so).
 */
#include "qdup/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "qdup/common.h"

static const char *log_prog = "qdup";
static int log_level = QD_LOG_INFO;
static int log_time = 1;    /* 1: ISO 8601 UTC time first */
static int log_journal = 0; /* 1: "<N>" priority prefix for journald */

/* 1 if stderr is the stream systemd's journal gave us (JOURNAL_STREAM=dev:ino). */
static int stderr_is_journal(void)
{
    const char *js = getenv("JOURNAL_STREAM");
    unsigned long long dev, ino;
    struct stat st;
    if (!js || sscanf(js, "%llu:%llu", &dev, &ino) != 2 || fstat(STDERR_FILENO, &st) != 0)
        return 0;
    return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

void qd_log_setup(const char *prog, int level, qd_log_time time)
{
    log_prog = prog;
    log_level = level;
    log_journal = stderr_is_journal();
    log_time = time == QD_LOG_TIME_ON || (time == QD_LOG_TIME_AUTO && !log_journal);
}

static const char *const level_names[8] = {
    [QD_LOG_ERR] = "error", [QD_LOG_WARN] = "warn", [QD_LOG_INFO] = "info",
    [QD_LOG_DEBUG] = "debug",
};

int qd_log_parse_level(const char *name, int *level)
{
    for (int i = 0; i < 8; i++)
        if (level_names[i] && strcmp(name, level_names[i]) == 0) {
            *level = i;
            return 0;
        }
    return QD_ERR_INVAL;
}

int qd_log_parse_time(const char *name, qd_log_time *time)
{
    if (strcmp(name, "yes") == 0 || strcmp(name, "on") == 0)
        *time = QD_LOG_TIME_ON;
    else if (strcmp(name, "no") == 0 || strcmp(name, "off") == 0)
        *time = QD_LOG_TIME_OFF;
    else if (strcmp(name, "auto") == 0)
        *time = QD_LOG_TIME_AUTO;
    else
        return QD_ERR_INVAL;
    return 0;
}

static void log_va(int level, const char *fmt, va_list ap)
{
    char line[2048];
    size_t n = 0;
    if (level < 0 || level > 7)
        level = QD_LOG_ERR;
    const char *name = level_names[level] ? level_names[level] : "info";
    if (log_journal && !log_time) {
        n += (size_t)snprintf(line, sizeof line, "<%d>", level);
    } else if (log_time) {
        struct timespec ts;
        struct tm tm;
        clock_gettime(CLOCK_REALTIME, &ts);
        gmtime_r(&ts.tv_sec, &tm);
        n += strftime(line, sizeof line, "%Y-%m-%dT%H:%M:%S", &tm);
        n += (size_t)snprintf(line + n, sizeof line - n, ".%03ldZ %s ",
                              ts.tv_nsec / 1000000, name);
    } else {
        n += (size_t)snprintf(line, sizeof line, "%s ", name);
    }
    n += (size_t)snprintf(line + n, sizeof line - n, "%s: ", log_prog);
    int m = vsnprintf(line + n, sizeof line - n, fmt, ap);
    if (m < 0)
        m = 0;
    n += (size_t)m;
    const char cut[] = " [cut]";
    if (n > sizeof line - sizeof cut - 1) {
        n = sizeof line - sizeof cut - 1;
        memcpy(line + n, cut, sizeof cut - 1);
        n += sizeof cut - 1;
    }
    line[n++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, n);
    (void)w; /* nowhere left to report a failed log write */
}

void qd_logv(int level, const char *fmt, va_list ap)
{
    if (level <= log_level)
        log_va(level, fmt, ap);
}

void qd_log(int level, const char *fmt, ...)
{
    if (level > log_level)
        return;
    va_list ap;
    va_start(ap, fmt);
    log_va(level, fmt, ap);
    va_end(ap);
}

void qd_log_limited(qd_log_limit *lim, int level, const char *fmt, ...)
{
    if (level > log_level)
        return;
    double now = qd_now();
    if (now - lim->window_start >= 1.0) {
        lim->window_start = now;
        lim->used = 0;
    }
    if (lim->used >= lim->burst) {
        lim->suppressed++;
        return;
    }
    lim->used++;
    if (lim->suppressed) {
        qd_log(level, "(%llu similar lines not logged: over %u a second)",
               (unsigned long long)lim->suppressed, lim->burst);
        lim->suppressed = 0;
    }
    va_list ap;
    va_start(ap, fmt);
    log_va(level, fmt, ap);
    va_end(ap);
}
