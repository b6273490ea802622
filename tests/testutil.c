/*
 * testutil.c - paths, files and random numbers for the cmocka tests.
 */
#include "testutil.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *env_or(const char *name, const char *fallback)
{
    const char *v = getenv(name);
    return (v && *v) ? v : fallback;
}

const char *qt_data_dir(void)
{
    return env_or("QDUP_DATA", "../shared/data");
}

const char *qt_fixtures_dir(void)
{
    return env_or("QDUP_FIXTURES", "tests/fixtures");
}

const char *qt_bin_dir(void)
{
    return env_or("QDUP_BIN", "build");
}

static char tmp_dir[4096];

static void remove_tree(const char *path)
{
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
    if (system(cmd) != 0)
        fprintf(stderr, "warning: could not remove %s\n", path);
}

const char *qt_tmp_dir(void)
{
    if (!tmp_dir[0]) {
        const char *base = env_or("TMPDIR", "/tmp");
        snprintf(tmp_dir, sizeof tmp_dir, "%s/qdup-test.XXXXXX", base);
        if (!mkdtemp(tmp_dir)) {
            fprintf(stderr, "mkdtemp %s: %s\n", tmp_dir, strerror(errno));
            abort();
        }
    }
    return tmp_dir;
}

const char *qt_path(const char *dir, const char *name)
{
    static char bufs[8][4096];
    static int next;
    char *b = bufs[next++ % 8];
    snprintf(b, sizeof bufs[0], "%s/%s", dir, name);
    return b;
}

char *qt_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot open %s: %s", path, strerror(errno));
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    if (fread(buf, 1, (size_t)n, f) != (size_t)n)
        fail_msg("short read of %s", path);
    buf[n] = '\0';
    fclose(f);
    if (len)
        *len = (size_t)n;
    return buf;
}

void qt_write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        fail_msg("cannot create %s: %s", path, strerror(errno));
    if (fwrite(data, 1, len, f) != len)
        fail_msg("short write of %s", path);
    fclose(f);
}

uint64_t qt_rand(uint64_t *state)
{
    uint64_t x = *state ? *state : 0x9E3779B97F4A7C15ULL;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

double qt_uniform(uint64_t *state, double lo, double hi)
{
    return lo + (hi - lo) * (double)(qt_rand(state) >> 11) / 9007199254740992.0;
}

void qt_assert_near_(double a, double b, double tol, const char *sa, const char *sb,
                     const char *file, int line)
{
    double d = a - b;
    if (d < 0)
        d = -d;
    if (!(d <= tol)) {
        print_error("%s:%d: |%s - %s| = |%.9g - %.9g| = %.3g > %.3g\n", file, line, sa, sb,
                       a, b, d, tol);
        _fail(file, line);
    }
}

static void cleanup_tmp(void)
{
    if (tmp_dir[0] && !getenv("QDUP_KEEP_TMP"))
        remove_tree(tmp_dir);
}

__attribute__((constructor)) static void register_cleanup(void)
{
    atexit(cleanup_tmp);
}
