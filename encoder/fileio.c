/*
 * fileio.c - whole-file reads, crash-safe writes, CRC-32 and a 64-bit hash.
 *
 * qd_file_write_atomic() is the one way qdup replaces a file: the bytes go to a
 * temporary file in the same directory, which is fsynced and renamed over the target,
 * and then the directory is fsynced so the rename itself survives a power cut.
 */
#include "qdup/fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qdup/common.h"

int qd_file_read(const char *path, size_t max_bytes, char **data, size_t *len, char *err,
                 size_t errlen)
{
    *data = NULL;
    *len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        return qd_errf(err, errlen, e == ENOENT ? QD_ERR_NOTFOUND : QD_ERR_IO,
                       "%s: %s", path, strerror(e));
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return qd_errf(err, errlen, QD_ERR_IO, "%s: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return qd_errf(err, errlen, QD_ERR_IO, "%s: not a regular file", path);
    }
    if ((uint64_t)st.st_size > max_bytes) {
        close(fd);
        return qd_errf(err, errlen, QD_ERR_RANGE, "%s: %lld bytes, over the limit of %zu",
                       path, (long long)st.st_size, max_bytes);
    }
    size_t size = (size_t)st.st_size;
    char *buf = qd_malloc(size + 1);
    if (!buf) {
        close(fd);
        return qd_errf(err, errlen, QD_ERR_NOMEM, "%s: out of memory for %zu bytes", path,
                       size);
    }
    size_t got = 0;
    while (got < size) {
        ssize_t r = read(fd, buf + got, size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            close(fd);
            qd_free(buf);
            return qd_errf(err, errlen, QD_ERR_IO, "%s: %s", path, strerror(e));
        }
        if (r == 0)
            break; /* the file shrank while we read it: take what is there */
        got += (size_t)r;
    }
    close(fd);
    buf[got] = '\0';
    *data = buf;
    *len = got;
    return 0;
}

int qd_tmp_path(const char *path, char *buf, size_t buflen)
{
    static atomic_uint counter;
    int n = snprintf(buf, buflen, "%s.tmp.%ld.%u", path, (long)getpid(),
                     atomic_fetch_add(&counter, 1));
    return (n < 0 || (size_t)n >= buflen) ? QD_ERR_RANGE : 0;
}

int qd_fsync_dir_of(const char *path, char *err, size_t errlen)
{
    char copy[4096];
    if (strlen(path) >= sizeof copy)
        return qd_errf(err, errlen, QD_ERR_RANGE, "%s: path too long", path);
    strcpy(copy, path);
    const char *dir = dirname(copy);
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        return qd_errf(err, errlen, qd_err_from_errno(e), "%s: %s", dir, strerror(e));
    }
    int rc = 0;
    if (fsync(fd) != 0 && errno != EINVAL) {
        int e = errno;
        rc = qd_errf(err, errlen, qd_err_from_errno(e), "%s: fsync: %s", dir, strerror(e));
    }
    close(fd);
    return rc;
}

int qd_file_write_atomic(const char *path, const void *data, size_t len, char *err,
                         size_t errlen)
{
    char tmp[4200];
    if (qd_tmp_path(path, tmp, sizeof tmp) != 0)
        return qd_errf(err, errlen, QD_ERR_RANGE, "%s: path too long", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
        int e = errno;
        return qd_errf(err, errlen, qd_err_from_errno(e), "%s: %s", tmp, strerror(e));
    }
    const char *p = data;
    size_t left = len;
    while (left > 0) {
        ssize_t w = write(fd, p, left);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0) {
            int e = errno;
            close(fd);
            unlink(tmp);
            return qd_errf(err, errlen, qd_err_from_errno(e), "%s: write: %s", tmp, strerror(e));
        }
        p += w;
        left -= (size_t)w;
    }
    if (fsync(fd) != 0) {
        int e = errno;
        close(fd);
        unlink(tmp);
        return qd_errf(err, errlen, qd_err_from_errno(e), "%s: fsync: %s", tmp, strerror(e));
    }
    if (close(fd) != 0) {
        int e = errno;
        unlink(tmp);
        return qd_errf(err, errlen, qd_err_from_errno(e), "%s: close: %s", tmp, strerror(e));
    }
    if (rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return qd_errf(err, errlen, qd_err_from_errno(e), "%s: rename: %s", path, strerror(e));
    }
    return qd_fsync_dir_of(path, err, errlen);
}

/* Table for the reflected CRC-32 polynomial 0xEDB88320, built on first use. */
static uint32_t crc_table[8][256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? 0xEDB88320U ^ (c >> 1) : c >> 1;
        crc_table[0][i] = c;
    }
    /* Tables 1..7 let the loop below consume 8 bytes per step ("slicing by 8"). */
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xFF];
}

uint32_t qd_crc32(uint32_t crc, const void *data, size_t len)
{
    pthread_once(&crc_once, crc_init);
    const uint8_t *p = data;
    crc = ~crc;
    while (len >= 8) {
        uint32_t lo = crc ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                             (uint32_t)p[3] << 24);
        uint32_t hi = (uint32_t)p[4] | (uint32_t)p[5] << 8 | (uint32_t)p[6] << 16 |
                      (uint32_t)p[7] << 24;
        crc = crc_table[7][lo & 0xFF] ^ crc_table[6][(lo >> 8) & 0xFF] ^
              crc_table[5][(lo >> 16) & 0xFF] ^ crc_table[4][lo >> 24] ^
              crc_table[3][hi & 0xFF] ^ crc_table[2][(hi >> 8) & 0xFF] ^
              crc_table[1][(hi >> 16) & 0xFF] ^ crc_table[0][hi >> 24];
        p += 8;
        len -= 8;
    }
    while (len--)
        crc = crc_table[0][(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

uint64_t qd_hash64(uint64_t h, const void *data, size_t len)
{
    const uint8_t *p = data;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}
