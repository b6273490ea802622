/*
 * test_hugepage.c - qd_hugepage_collapse (hugepage.h) on mappings of the test's own:
 * a fully written one ends up on 2 MiB pages with its bytes intact; one written in part
 * gets no page that was not written; a mostly unwritten one and one marked
 * MADV_NOHUGEPAGE are left alone. Where the kernel cannot collapse (before Linux 6.1,
 * or a sandbox that forbids the call) the tests are skipped,
 * after checking that the call says so and changes nothing.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "qdup/hugepage.h"
#include "testutil.h"

#define MIB ((size_t)1 << 20)
#define REGION (16 * MIB)

/* The mapping's AnonHugePages from /proc/self/smaps, in bytes (0 if not found). */
static size_t anon_huge(const void *addr)
{
    FILE *f = fopen("/proc/self/smaps", "re");
    assert_non_null(f);
    char line[512];
    int in = 0;
    size_t huge = 0;
    uintptr_t a = (uintptr_t)addr;
    while (fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2) { /* a mapping's first line */
            in = a >= lo && a < hi;
            continue;
        }
        unsigned long long kb;
        if (in && sscanf(line, "AnonHugePages: %llu kB", &kb) == 1) {
            huge = (size_t)kb << 10;
            break;
        }
    }
    fclose(f);
    return huge;
}

/* Resident bytes of [p, p + len) by mincore. */
static size_t resident(const void *p, size_t len)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE), n = len / page, r = 0;
    unsigned char *vec = test_malloc(n);
    assert_int_equal(mincore((void *)p, len, vec), 0);
    for (size_t i = 0; i < n; i++)
        r += vec[i] & 1;
    test_free(vec);
    return r * page;
}

static unsigned char *map_region(void)
{
    void *p = mmap(NULL, REGION, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(p != MAP_FAILED);
    return p;
}

static void fill(unsigned char *p, size_t len)
{
    for (size_t i = 0; i < len; i++)
        p[i] = (unsigned char)(i * 131 + (i >> 12));
}

static int intact(const unsigned char *p, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (p[i] != (unsigned char)(i * 131 + (i >> 12)))
            return 0;
    return 1;
}

/* 1 if the kernel collapses here; a refusal must say why and change nothing. */
static int can_collapse(void)
{
    unsigned char *p = map_region();
    fill(p, REGION);
    qd_hugepage_stats st;
    int rc = qd_hugepage_collapse(REGION / 2, &st);
    int ok = rc != -EINVAL && rc != -EPERM;
    if (!ok) {
        fprintf(stderr, "test_hugepage: the kernel does not collapse here (%s)\n",
                strerror(-rc));
        assert_true(intact(p, REGION));
    }
    munmap(p, REGION);
    return ok;
}

/* A buffer written through: on huge pages afterwards, every byte as it was. */
static void test_collapse_written(void **state)
{
    (void)state;
    if (!can_collapse())
        skip();
    unsigned char *p = map_region();
    fill(p, REGION);
    qd_hugepage_stats st;
    int rc = qd_hugepage_collapse(4 * MIB, &st);
    /* No huge page free right now is the machine's state, not a fault of the call. */
    if (rc == -EAGAIN || rc == -ENOMEM) {
        munmap(p, REGION);
        skip();
    }
    assert_int_equal(rc, 0);
    /* 16 MiB anywhere hold at least 7 aligned 2 MiB ranges. */
    assert_true(anon_huge(p) >= 14 * MIB);
    assert_true(st.huge >= 14 * MIB);
    assert_true(st.mappings >= 1);
    assert_true(intact(p, REGION));
    /* A second call finds it done. */
    assert_int_equal(qd_hugepage_collapse(4 * MIB, &st), 0);
    assert_true(anon_huge(p) >= 14 * MIB);
    munmap(p, REGION);
}

/* Written in part (10 of 16 MiB): the written ranges collapse, no unwritten page is
 * made resident. */
static void test_partial_stays_partial(void **state)
{
    (void)state;
    if (!can_collapse())
        skip();
    unsigned char *p = map_region();
    fill(p, 10 * MIB);
    size_t before = resident(p, REGION);
    assert_true(before >= 10 * MIB && before < 11 * MIB);
    qd_hugepage_stats st;
    int rc = qd_hugepage_collapse(4 * MIB, &st);
    assert_true(rc == 0 || rc == -EAGAIN || rc == -ENOMEM);
    assert_true(resident(p + 11 * MIB, 5 * MIB) == 0);
    assert_true(resident(p, REGION) <= before + 2 * MIB);
    if (rc == 0)
        assert_true(anon_huge(p) >= 6 * MIB);
    assert_true(intact(p, 10 * MIB));
    munmap(p, REGION);
}

/* Less than half written, or marked MADV_NOHUGEPAGE: left alone. */
static void test_left_alone(void **state)
{
    (void)state;
    if (!can_collapse())
        skip();
    unsigned char *sparse = map_region(), *nohuge = map_region();
    fill(sparse, 6 * MIB);
    assert_int_equal(madvise(nohuge, REGION, MADV_NOHUGEPAGE), 0);
    fill(nohuge, REGION);
    size_t huge_sparse = anon_huge(sparse);
    assert_int_equal(anon_huge(nohuge), 0);
    qd_hugepage_stats st;
    int rc = qd_hugepage_collapse(4 * MIB, &st);
    assert_true(rc == 0 || rc == -EAGAIN || rc == -ENOMEM);
    assert_int_equal(anon_huge(sparse), huge_sparse); /* THP "always" may have some */
    assert_int_equal(anon_huge(nohuge), 0);
    assert_true(resident(sparse + 7 * MIB, 9 * MIB) == 0);
    assert_true(intact(sparse, 6 * MIB));
    assert_true(intact(nohuge, REGION));
    munmap(sparse, REGION);
    munmap(nohuge, REGION);
}

/* A threshold above every mapping: nothing is looked at. */
static void test_threshold(void **state)
{
    (void)state;
    qd_hugepage_stats st = {.mappings = 99};
    assert_int_equal(qd_hugepage_collapse((size_t)1 << 50, &st), 0);
    assert_int_equal(st.mappings, 0);
    assert_int_equal(st.huge, 0);
    assert_int_equal(st.failed, 0);
    assert_int_equal(qd_hugepage_collapse((size_t)1 << 50, NULL), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_collapse_written),
        cmocka_unit_test(test_partial_stays_partial),
        cmocka_unit_test(test_left_alone),
        cmocka_unit_test(test_threshold),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
