/*
 * hugepage.h - a process's large resident buffers on 2 MiB pages (hugepage.c).
 *
 * The daemon's searches read FAISS's vectors and graph, the scan's codes and the
 * model's embedding rows at random over tens to thousands of megabytes; on 4 KiB pages
 * nearly each such read also misses the TLB. qd_hugepage_collapse asks the kernel to
 * back those buffers with transparent huge pages once they are in memory.
 */
#ifndef QDUP_HUGEPAGE_H
#define QDUP_HUGEPAGE_H

#include <stddef.h>

typedef struct qd_hugepage_stats {
    size_t mappings;  /* mappings looked at: anonymous, private, read-write, at least
                         min_bytes resident and at least half resident */
    size_t huge;      /* bytes of them on 2 MiB pages afterwards (also those that were
                         already) */
    size_t failed;    /* bytes the kernel would not collapse */
} qd_hugepage_stats;

/* Collapses into transparent huge pages (MADV_COLLAPSE, Linux 6.1) every 2 MiB-aligned
 * range whose 512 small pages are all resident, in each anonymous private read-write
 * mapping of this process with at least min_bytes resident and at least half of it
 * resident. Ranges with a page not resident are left alone, so the resident size does
 * not grow (a thread's stack, an arena's unused tail). Returns 0, or -errno: of
 * reading /proc/self/smaps, or of the first range the kernel refused (EINVAL: a kernel
 * without MADV_COLLAPSE, before 6.1; EAGAIN, ENOMEM: no huge page free right now).
 * MADV_COLLAPSE does not depend on the THP setting in /sys/kernel/mm.
 * Either way nothing but the page size changes; st (may be NULL) says how much. */
int qd_hugepage_collapse(size_t min_bytes, qd_hugepage_stats *st);

#endif
