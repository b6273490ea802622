/*
 * fileio.h - whole-file reads, crash-safe writes and checksums.
 *
 * Crash-safe writes follow the usual recipe: write a temporary file beside the target,
 * fsync it, rename it over the target, fsync the directory. A reader therefore sees
 * either the old file or the new one, never a mixture, whatever happens in between.
 */
#ifndef QDUP_FILEIO_H
#define QDUP_FILEIO_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Reads all of `path` (at most max_bytes) into a fresh buffer, NUL-terminated for
 * convenience (the NUL is not counted in *len). On failure err names the file and
 * the reason. */
int qd_file_read(const char *path, size_t max_bytes, char **data, size_t *len, char *err,
                 size_t errlen);

/* Writes `len` bytes to `path` crash-safely (temp file, fsync, rename, fsync dir). */
int qd_file_write_atomic(const char *path, const void *data, size_t len, char *err,
                         size_t errlen);

/* fsyncs the directory holding `path`, so that a rename into it is durable. */
int qd_fsync_dir_of(const char *path, char *err, size_t errlen);

/* Makes a unique temporary name beside `path` ("path.tmp.<pid>.<n>") into buf. */
int qd_tmp_path(const char *path, char *buf, size_t buflen);

/* CRC-32 (IEEE 802.3, the zlib polynomial), continuable: start with crc = 0. */
uint32_t qd_crc32(uint32_t crc, const void *data, size_t len);

/* 64-bit FNV-1a, continuable: start with h = QD_HASH64_INIT. Not cryptographic. */
#define QD_HASH64_INIT 0xcbf29ce484222325ULL
uint64_t qd_hash64(uint64_t h, const void *data, size_t len);

#ifdef __cplusplus
}
#endif

#endif
