/*
 * hugepage.c - a process's large resident buffers on 2 MiB pages (hugepage.h).
 *
 * /proc/self/smaps lists each mapping with its resident size, its huge-page part and
 * its flags. A mapping qualifies when it is anonymous, private and writable (what
 * malloc and FAISS's vectors get), has min_bytes or more resident and is at least half
 * resident: the buffers a search reads qualify, a thread's stack or ASan's shadow
 * (terabytes reserved, little touched) does not. Each 2 MiB-aligned range of such a
 * mapping is collapsed only if /proc/self/pagemap says all its small pages are present,
 * so a range is never filled in with pages nobody wrote. (Not mincore(2): systemd's
 * @system-service filter, which qdup.service uses, does not allow it, and a call
 * outside the filter kills the process.) A range already on a huge page costs the
 * kernel a look at its page table entry; a mapping already all huge is skipped without
 * a call. The mapping's flags are left as they were (no MADV_HUGEPAGE): what it grows
 * later faults in small pages as before, and the next call collapses it.
 */
#include "qdup/hugepage.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25 /* Linux 6.1; older headers lack the name */
#endif

#define HP_SIZE ((uintptr_t)2 << 20)

/* One mapping of smaps, as far as read. */
typedef struct hp_map {
    uintptr_t lo, hi;
    int eligible;     /* anonymous, private, read-write */
    size_t rss;       /* resident bytes */
    size_t anon_huge; /* of them on huge pages */
} hp_map;

/* "Name:   N kB" -> N * 1024 in *out; 1 if line is that field. */
static int kb_field(const char *line, const char *name, size_t *out)
{
    size_t len = strlen(name);
    unsigned long long kb;
    if (strncmp(line, name, len) != 0 || sscanf(line + len, " %llu kB", &kb) != 1)
        return 0;
    *out = (size_t)kb << 10;
    return 1;
}

/* 1 if all small pages of [p, p + HP_SIZE) are present: bit 63 of each one's entry in
 * pagemap (pm), 8 bytes per page at the page's index. */
static int all_resident(int pm, uintptr_t p, size_t page)
{
    uint64_t e[HP_SIZE / 4096];
    size_t n = HP_SIZE / page;
    if (n > sizeof e / sizeof *e)
        return 0;
    ssize_t want = (ssize_t)(n * sizeof *e);
    if (pread(pm, e, (size_t)want, (off_t)(p / page * sizeof *e)) != want)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!(e[i] >> 63))
            return 0;
    return 1;
}

/* Collapses the fully resident 2 MiB ranges of m; -errno of the first refusal. */
static int collapse_map(const hp_map *m, int pm, size_t page, qd_hugepage_stats *st)
{
    uintptr_t lo = (m->lo + HP_SIZE - 1) & ~(HP_SIZE - 1), hi = m->hi & ~(HP_SIZE - 1);
    st->mappings++;
    if (hi <= lo)
        return 0;
    if (m->anon_huge >= hi - lo) {
        st->huge += m->anon_huge;
        return 0;
    }
    int err = 0;
    for (uintptr_t p = lo; p < hi; p += HP_SIZE) {
        if (!all_resident(pm, p, page))
            continue;
        if (madvise((void *)p, HP_SIZE, MADV_COLLAPSE) == 0) {
            st->huge += HP_SIZE;
            continue;
        }
        if (!err)
            err = -errno;
        st->failed += HP_SIZE;
        if (err == -EINVAL || err == -EPERM)
            break; /* not on this kernel or for this process: no use going on */
    }
    return err;
}

int qd_hugepage_collapse(size_t min_bytes, qd_hugepage_stats *st)
{
    qd_hugepage_stats none;
    if (!st)
        st = &none;
    *st = (qd_hugepage_stats){0};
    FILE *f = fopen("/proc/self/smaps", "re");
    if (!f)
        return -errno;
    int pm = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (pm < 0) {
        int e = -errno;
        fclose(f);
        return e;
    }
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    char line[512];
    hp_map m = {0};
    int have = 0, err = 0;
    while (fgets(line, sizeof line, f)) {
        uintptr_t lo, hi;
        unsigned long long ino;
        char perms[5];
        int name = 0;
        if (sscanf(line, "%" SCNxPTR "-%" SCNxPTR " %4s %*s %*s %llu %n", &lo, &hi, perms,
                   &ino, &name) == 4 && name > 0) {
            /* A mapping's first line: anonymous is no inode and no name but the
             * heap's (a named anonymous mapping, "[anon:...]", qualifies too). */
            const char *nm = line + name;
            m = (hp_map){.lo = lo, .hi = hi};
            m.eligible = perms[0] == 'r' && perms[1] == 'w' && perms[3] == 'p' && ino == 0 &&
                         (*nm == '\n' || *nm == '\0' || strncmp(nm, "[heap]", 6) == 0 ||
                          strncmp(nm, "[anon:", 6) == 0);
            have = 1;
            continue;
        }
        if (!have || kb_field(line, "Rss:", &m.rss) ||
            kb_field(line, "AnonHugePages:", &m.anon_huge))
            continue;
        if (strncmp(line, "VmFlags:", 8) != 0)
            continue;
        /* The mapping's last line. "nh": MADV_NOHUGEPAGE, whoever set it meant it. */
        have = 0;
        if (!m.eligible || m.rss < min_bytes || m.rss < (m.hi - m.lo) / 2 ||
            strstr(line, " nh") != NULL)
            continue;
        int rc = collapse_map(&m, pm, page, st);
        if (rc && !err)
            err = rc;
        if (err == -EINVAL || err == -EPERM)
            break;
    }
    close(pm);
    fclose(f);
    return err;
}
