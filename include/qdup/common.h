/*
 * common.h - error codes, assertions and small helpers shared by every qdup module.
 *
 * Every fallible function returns an int: 0 on success or a negative QD_ERR_* code.
 * qd_strerror() turns a code into static text; the detail of what went wrong (which
 * file, which line, which field) lives in the object that failed (qd_db_errmsg()) or,
 * for constructors, in a caller-supplied buffer of QD_ERRMSG_MAX bytes.
 */
#ifndef QDUP_COMMON_H
#define QDUP_COMMON_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum qd_err {
    QD_OK = 0,
    QD_ERR_NOMEM = -1,       /* an allocation failed */
    QD_ERR_IO = -2,          /* a read, write, rename or fsync failed */
    QD_ERR_FORMAT = -3,      /* bytes that do not follow the expected format */
    QD_ERR_VERSION = -4,     /* a file written by a newer (or unknown) version */
    QD_ERR_CHECKSUM = -5,    /* stored and computed checksums differ */
    QD_ERR_INVAL = -6,       /* an argument or option out of its domain */
    QD_ERR_RANGE = -7,       /* a size or count over a limit */
    QD_ERR_NOTFOUND = -8,    /* no such id, file or key */
    QD_ERR_EXISTS = -9,      /* the id or file is already there */
    QD_ERR_MISMATCH = -10,   /* model and index (or two files) do not belong together */
    QD_ERR_DB = -11,         /* SQLite reported an error */
    QD_ERR_INDEX = -12,      /* FAISS reported an error */
    QD_ERR_UNSUPPORTED = -13, /* valid, but not something this build can do */
    QD_ERR_BUSY = -14,       /* a queue or limit is full; try again later */
    QD_ERR_CANCELED = -15,   /* stopped on request (a signal, a shutdown) */
    QD_ERR_FORBIDDEN = -16,  /* the caller may not do this */
    QD_ERR_UNAVAILABLE = -17, /* the machine refused: disk full, read-only filesystem, I/O
                                 error; nothing was written, retry later */
};

/* The QD_ERR_* for a failed system call's errno: QD_ERR_UNAVAILABLE for the faults of
 * the machine rather than of the program or its input (ENOSPC, EDQUOT, EROFS, EIO),
 * else QD_ERR_IO. For writes: a read keeps its own mapping (ENOENT is "not found"). */
int qd_err_from_errno(int e);

/* Room for one detail message ("model.qdm: truncated: expected 5469056 bytes"). */
#define QD_ERRMSG_MAX 512

/* Static, never NULL text for a QD_ERR_* code. */
const char *qd_strerror(int rc);

/* Formats a detail message into err (if err is not NULL) and returns rc, so that a
 * failing path can read `return qd_errf(err, errlen, QD_ERR_FORMAT, "...", ...);`. */
int qd_errf(char *err, size_t errlen, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Aborts with file and line. Only for a programmer's bug: never for anything that
 * input (a file, a socket, a flag) can reach. */
#define QD_ASSERT(x)                                                      \
    do {                                                                  \
        if (!(x))                                                         \
            qd_assert_fail(__FILE__, __LINE__, #x);                       \
    } while (0)

_Noreturn void qd_assert_fail(const char *file, int line, const char *expr);

/* Allocation wrappers. Every qdup allocation goes through them so that tests can fail
 * the Nth one (qd_alloc_fail_after) and walk every cleanup path. */
void *qd_malloc(size_t n);
void *qd_calloc(size_t count, size_t size);
void *qd_realloc(void *p, size_t n);
/* n * size with an overflow check; NULL on overflow or failure. */
void *qd_mallocarray(size_t count, size_t size);
void *qd_reallocarray(void *p, size_t count, size_t size);
char *qd_strndup(const char *s, size_t n);
void qd_free(void *p);

/* Tests only: make the allocation after `n` more successful ones fail (and all after
 * it when `sticky`); n < 0 turns injection off. */
void qd_alloc_fail_after(long n, int sticky);

/* Monotonic clock in seconds (for durations). */
double qd_now(void);

/* Unix time in seconds (CLOCK_REALTIME), for timestamps that are stored or shown. */
double qd_wall_now(void);

/* Parses a size for a command-line option: decimal digits with an optional binary
 * suffix K, M or G (either case: 16K is 16384), no sign and no spaces, within
 * [lo, hi]. 0 and the value in *out, or QD_ERR_INVAL (out untouched). */
int qd_parse_size(const char *s, size_t lo, size_t hi, size_t *out);

/* Decodes the UTF-8 sequence at s[0] (n >= 1 bytes available) and returns the bytes
 * it takes, with the code point in *cp, or -1 in *cp for an ill-formed sequence. An
 * ill-formed sequence takes its maximal subpart (Unicode 15, section 3.9, "U+FFFD
 * Substitution of Maximal Subparts", what Python's and the WHATWG decoders replace as
 * one): the longest prefix that could still begin a well-formed sequence, so a
 * truncated "E2 82" is one, while an overlong "C0 AF", a surrogate "ED A0 80" or any
 * byte F5..FF is one per byte. Never reads s[n] or beyond. The one UTF-8 decoder of
 * the tokenizer, the store's checks and the daemon's replies. */
size_t qd_utf8_decode(const unsigned char *s, size_t n, int32_t *cp);

#ifdef __cplusplus
}
#endif

#endif
