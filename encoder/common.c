/*
 * common.c - error text, assertion failure, allocation wrappers with fault injection.
 *
 * The allocation wrappers exist so that tests can make the Nth allocation fail and
 * check that every cleanup path frees what it took and reports QD_ERR_NOMEM. The
 * injection counter is a process-wide atomic; production code never sets it.
 */
#include "qdup/common.h"

#include <errno.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

const char *qd_strerror(int rc)
{
    switch (rc) {
    case QD_OK: return "success";
    case QD_ERR_NOMEM: return "out of memory";
    case QD_ERR_IO: return "input/output error";
    case QD_ERR_FORMAT: return "malformed input";
    case QD_ERR_VERSION: return "unsupported format version";
    case QD_ERR_CHECKSUM: return "checksum mismatch";
    case QD_ERR_INVAL: return "invalid argument";
    case QD_ERR_RANGE: return "value out of range";
    case QD_ERR_NOTFOUND: return "not found";
    case QD_ERR_EXISTS: return "already exists";
    case QD_ERR_MISMATCH: return "model and index do not match";
    case QD_ERR_DB: return "database error";
    case QD_ERR_INDEX: return "vector index error";
    case QD_ERR_UNSUPPORTED: return "not supported";
    case QD_ERR_BUSY: return "busy";
    case QD_ERR_CANCELED: return "canceled";
    case QD_ERR_FORBIDDEN: return "forbidden";
    case QD_ERR_UNAVAILABLE: return "unavailable (disk full, read-only or failing storage)";
    }
    return "unknown error";
}

int qd_err_from_errno(int e)
{
    switch (e) {
    case ENOSPC:
    case EDQUOT:
    case EROFS:
    case EIO: return QD_ERR_UNAVAILABLE;
    default: return QD_ERR_IO;
    }
}

int qd_errf(char *err, size_t errlen, int rc, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return rc;
}

void qd_assert_fail(const char *file, int line, const char *expr)
{
    fprintf(stderr, "qdup: %s:%d: assertion failed: %s\n", file, line, expr);
    fflush(stderr);
    abort();
}

/* Allocations left before the injected failure; negative means no injection. */
static atomic_long alloc_budget = -1;
static atomic_int alloc_sticky;

void qd_alloc_fail_after(long n, int sticky)
{
    atomic_store(&alloc_sticky, sticky);
    atomic_store(&alloc_budget, n);
}

/* True if this allocation is to fail. */
static int alloc_should_fail(void)
{
    long left = atomic_load(&alloc_budget);
    if (left < 0)
        return 0;
    if (left == 0) {
        if (!atomic_load(&alloc_sticky))
            atomic_store(&alloc_budget, -1);
        return 1;
    }
    atomic_fetch_sub(&alloc_budget, 1);
    return 0;
}

void *qd_malloc(size_t n)
{
    if (alloc_should_fail())
        return NULL;
    return malloc(n ? n : 1);
}

void *qd_calloc(size_t count, size_t size)
{
    if (alloc_should_fail())
        return NULL;
    if (count == 0 || size == 0)
        count = size = 1;
    return calloc(count, size);
}

void *qd_realloc(void *p, size_t n)
{
    if (alloc_should_fail())
        return NULL;
    return realloc(p, n ? n : 1);
}

void *qd_mallocarray(size_t count, size_t size)
{
    if (size && count > SIZE_MAX / size)
        return NULL;
    return qd_malloc(count * size);
}

void *qd_reallocarray(void *p, size_t count, size_t size)
{
    if (size && count > SIZE_MAX / size)
        return NULL;
    return qd_realloc(p, count * size);
}

char *qd_strndup(const char *s, size_t n)
{
    char *d = qd_malloc(n + 1);
    if (!d)
        return NULL;
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

void qd_free(void *p)
{
    free(p);
}

double qd_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

double qd_wall_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int qd_parse_size(const char *s, size_t lo, size_t hi, size_t *out)
{
    char *end;
    /* strtoull would skip spaces and take a sign: only digits may start the number. */
    if (!s || *s < '0' || *s > '9')
        return QD_ERR_INVAL;
    errno = 0;
    unsigned long long x = strtoull(s, &end, 10), mul = 1;
    if (errno)
        return QD_ERR_INVAL;
    if (*end == 'K' || *end == 'k')
        mul = 1ULL << 10, end++;
    else if (*end == 'M' || *end == 'm')
        mul = 1ULL << 20, end++;
    else if (*end == 'G' || *end == 'g')
        mul = 1ULL << 30, end++;
    if (*end || x > ULLONG_MAX / mul)
        return QD_ERR_INVAL;
    x *= mul;
    if (x < lo || x > hi)
        return QD_ERR_INVAL;
    *out = (size_t)x;
    return 0;
}

size_t qd_utf8_decode(const unsigned char *s, size_t n, int32_t *cp)
{
    unsigned b0 = s[0], lo = 0x80, hi = 0xBF;
    size_t need;
    int32_t c;
    if (b0 < 0x80) {
        *cp = (int32_t)b0;
        return 1;
    } else if (b0 >= 0xC2 && b0 <= 0xDF) {
        need = 1;
        c = (int32_t)(b0 & 0x1F);
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
        need = 2;
        c = (int32_t)(b0 & 0x0F);
        if (b0 == 0xE0)
            lo = 0xA0; /* shorter forms are overlong */
        else if (b0 == 0xED)
            hi = 0x9F; /* ED A0..BF would be a surrogate */
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
        need = 3;
        c = (int32_t)(b0 & 0x07);
        if (b0 == 0xF0)
            lo = 0x90; /* overlong */
        else if (b0 == 0xF4)
            hi = 0x8F; /* beyond U+10FFFF */
    } else {
        /* A continuation byte without a lead, C0/C1 (always overlong) or F5..FF. */
        *cp = -1;
        return 1;
    }
    for (size_t i = 1; i <= need; i++) {
        if (i >= n || s[i] < lo || s[i] > hi) {
            *cp = -1;
            return i;
        }
        c = (c << 6) | (int32_t)(s[i] & 0x3F);
        lo = 0x80;
        hi = 0xBF;
    }
    *cp = c;
    return need + 1;
}
