/*
 * testutil.h - what every cmocka test needs: where the data, fixtures and scratch
 * directory are, and a few assertions cmocka lacks.
 *
 * ctest sets QDUP_DATA, QDUP_FIXTURES, QDUP_BIN and TMPDIR (tests/CMakeLists.txt); run
 * by hand, a test falls back to ../shared/data, tests/fixtures and /tmp.
 */
#ifndef QDUP_TESTUTIL_H
#define QDUP_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

/* Directory of the shared data (holding quora/). */
const char *qt_data_dir(void);
/* Directory of the committed fixtures (tests/fixtures). */
const char *qt_fixtures_dir(void);
/* Build directory holding the programs. */
const char *qt_bin_dir(void);
/* A fresh, empty scratch directory for this test (under TMPDIR), made on first call
 * and removed by qt_cleanup() at exit if the test passed. */
const char *qt_tmp_dir(void);
/* dir/name into a static rotating buffer (8 slots). */
const char *qt_path(const char *dir, const char *name);
/* Reads a whole file (fails the test if it cannot). Caller frees. */
char *qt_read_file(const char *path, size_t *len);
/* Writes a whole file (fails the test if it cannot). */
void qt_write_file(const char *path, const void *data, size_t len);
/* Deterministic pseudo-random numbers for tests (xorshift64*). */
uint64_t qt_rand(uint64_t *state);
/* Uniform in [lo, hi). */
double qt_uniform(uint64_t *state, double lo, double hi);

/* Fails with both values printed if |a - b| > tol. */
#define qt_assert_near(a, b, tol) qt_assert_near_(a, b, tol, #a, #b, __FILE__, __LINE__)
void qt_assert_near_(double a, double b, double tol, const char *sa, const char *sb,
                     const char *file, int line);

#endif
