/*
 * ann.c - the vector index: FAISS, reached only through its C API, behind qd_ann.
 *
 * qd_ann_new asks FAISS's index_factory for the spec as given and looks at what it
 * built: an IVF (possibly under pre-transforms like PCA) stores caller ids itself and
 * is kept as is; anything else stores vectors by position, so it is rebuilt as
 * "IDMap2,<spec>", a wrapper that keeps one id per vector plus a hash map from id to
 * position (which is what makes qd_ann_get possible). FAISS has no way to ask "can
 * this index remove vectors?", so qd_ann asks once, when the index is made or loaded,
 * by removing an empty id set: kinds without removal (HNSW) throw, the rest remove
 * nothing.
 *
 * Files: qd_ann_save writes FAISS's own format followed by a 24-byte trailer (magic,
 * version, CRC-32 and length of the FAISS bytes). FAISS's reader stops where its data
 * ends, so FAISS tools still read the file. qd_ann_load insists on the trailer and
 * checks the CRC before FAISS parses a byte, because FAISS's reader is not made for
 * damaged input: it trusts the sizes stored in the file (a flipped bit can make it
 * allocate terabytes or build an HNSW graph pointing outside its arrays), and in
 * 1.7.3 it leaks the partly built index whenever a read fails. Saving goes through
 * our own FILE*, not faiss_write_index_fname, because FAISS's file writer ignores
 * the result of fclose(), which is where a full disk shows up.
 *
 * Exact search: an IDMap2 over a flat index also keeps 8-bit codes of its vectors in a
 * qd_flatscan (flatscan.h), which answers searches, whole batches of queries in one
 * pass, and re-scores its best candidates from the float vectors FAISS holds: FAISS's
 * own exact search reads all the floats once per query, or goes through BLAS, both far
 * slower for the few queries at a time a server sees. The codes follow every add and
 * are rebuilt after a removal; if memory for them runs out, the index drops them and
 * searches through FAISS again. "flatscan" = 0 (qd_ann_set_param) switches to FAISS's
 * search, "rescore" sets how many candidates per query are re-scored.
 *
 * Errors: FAISS keeps its last error per thread and the next FAISS call overwrites
 * it, so a failing path copies it at once into this file's per-thread buffer, which
 * qd_ann_errmsg returns. The buffer is per thread rather than per object because
 * searches run concurrently on one object and must not write to it.
 */
#include "qdup/ann.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <omp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <faiss/c_api/AutoTune_c.h>
#include <faiss/c_api/IndexFlat_c.h>
#include <faiss/c_api/IndexIVF_c.h>
#include <faiss/c_api/IndexPreTransform_c.h>
#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/MetaIndexes_c.h>
#include <faiss/c_api/error_c.h>
#include <faiss/c_api/impl/AuxIndexStructures_c.h>
#include <faiss/c_api/index_factory_c.h>
#include <faiss/c_api/index_io_c.h>
#include <faiss/c_api/utils/distances_c.h>

#include "qdup/common.h"
#include "qdup/fileio.h"
#include "qdup/flatscan.h"

/* How the index relates ids to vectors, which decides what it can do. */
enum ann_idmode {
    ANN_IDMAP2,     /* IDMap2 wrapper: ids plus reverse map; get works */
    ANN_IDMAP,      /* IDMap wrapper (only if given explicitly): ids, no reverse map */
    ANN_NATIVE,     /* IVF, possibly under pre-transforms: stores ids in its lists */
    ANN_POSITIONAL, /* ids are insertion positions: not usable with caller ids */
};

struct qd_ann {
    FaissIndex *index; /* owned; the IDMap2 wrapper or the native-id (IVF) index */
    int dim;           /* vector dimension, 1..QD_ANN_MAX_DIM */
    int can_remove;    /* 1 if FAISS accepted removing an empty id set */
    int can_get;       /* 1 if reconstruct by id works (IDMap2 over a non-IVF index) */
    char *spec;        /* factory string as given ("Flat" for NULL/""); NULL if loaded */
    qd_flatscan *scan; /* 8-bit codes answering exact searches (IDMap2 over a flat
                        * index), positions as in FAISS's arrays; NULL otherwise */
    int use_scan;      /* 1 to search through scan (the default), 0 through FAISS */
    size_t rescore;    /* candidates re-scored per query by scan; 0: its default */
};

/* --- errors ------------------------------------------------------------------------ */

/* Detail of the last failing qd_ann call in this thread. */
static _Thread_local char ann_err[QD_ERRMSG_MAX];

/* Records a detail message for qd_ann_errmsg and returns rc. */
static int ann_fail(int rc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int ann_fail(int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ann_err, sizeof ann_err, fmt, ap);
    va_end(ap);
    return rc;
}

/* Every public call that can fail starts here, so that qd_ann_errmsg never shows
 * an earlier call's message as if it were this one's. */
static void ann_enter(void)
{
    ann_err[0] = '\0';
}

const char *qd_ann_errmsg(const qd_ann *a)
{
    (void)a;
    return ann_err;
}

/* Copies FAISS's last error into buf at once (the next FAISS call would overwrite
 * it), without the prefixes FAISS puts on its own exceptions ("Error in <function
 * signature> at <file>:<line>: ", "Error: '<condition>' failed: "): they are long
 * and tell a user nothing. */
static const char *faiss_detail(char *buf, size_t len)
{
    const char *m = faiss_get_last_error();
    if (!m || !*m)
        m = "FAISS gave no detail";
    if (strncmp(m, "Error in ", 9) == 0) {
        /* Find " at <file>:<digits>: "; the message text itself may contain " at ". */
        for (const char *p = strstr(m, " at "); p; p = strstr(p + 1, " at ")) {
            const char *q = p + 4;
            while (*q && *q != ' ' && *q != ':')
                q++;
            if (*q != ':' || q[1] < '0' || q[1] > '9')
                continue;
            q++;
            while (*q >= '0' && *q <= '9')
                q++;
            if (q[0] == ':' && q[1] == ' ') {
                m = q + 2;
                break;
            }
        }
    }
    /* A failed FAISS_THROW_IF_NOT then reads "Error: '<condition>' failed: <text>". */
    if (strncmp(m, "Error: '", 8) == 0) {
        const char *p = strstr(m, "' failed: ");
        if (p)
            m = p + 10;
    }
    snprintf(buf, len, "%s", m);
    return buf;
}

/* --- OpenMP threads ---------------------------------------------------------------- */

/* Threads FAISS may use per call; 0 means OpenMP's default. */
static atomic_int ann_threads;
/* The value applied in this thread so far (0: never changed here). */
static _Thread_local int ann_threads_applied;
/* omp_get_max_threads() in this thread before qd_ann first changed it. */
static _Thread_local int ann_threads_default;

void qd_ann_set_threads(int n)
{
    atomic_store(&ann_threads, n > 0 ? n : 0);
}

/* --- exact search: scans or matrix products ------------------------------------------ */

void qd_ann_set_blas_threshold(int nq)
{
    faiss_set_distance_compute_blas_threshold(nq > 0 ? nq : 20);
}

/* OpenMP keeps the thread count per calling thread (a libuv worker does not inherit
 * what main() set), so every call that runs FAISS work applies the wanted value in
 * its own thread first. Costs one thread-local compare when nothing changed. */
static void ann_apply_threads(void)
{
    int want = atomic_load_explicit(&ann_threads, memory_order_relaxed);
    if (want == ann_threads_applied)
        return;
    if (ann_threads_default == 0)
        ann_threads_default = omp_get_max_threads();
    omp_set_num_threads(want > 0 ? want : ann_threads_default);
    ann_threads_applied = want;
}

/* --- what kind of index is this ---------------------------------------------------- */

/* The index under any pre-transforms (PCA, OPQ, ...). */
static FaissIndex *ann_peel(FaissIndex *ix)
{
    FaissIndexPreTransform *pt;
    while ((pt = faiss_IndexPreTransform_cast(ix)) != NULL)
        ix = faiss_IndexPreTransform_index(pt);
    return ix;
}

static enum ann_idmode ann_classify(FaissIndex *ix)
{
    if (faiss_IndexIDMap2_cast(ix))
        return ANN_IDMAP2;
    if (faiss_IndexIDMap_cast(ix))
        return ANN_IDMAP;
    if (faiss_IndexIVF_cast(ann_peel(ix)))
        return ANN_NATIVE;
    return ANN_POSITIONAL;
}

/* Asks FAISS whether this index can remove vectors, by removing none. Kinds without
 * removal throw before touching anything. Costs one pass over the index. */
static int ann_probe_remove(FaissIndex *ix)
{
    int64_t dummy = -1;
    FaissIDSelectorBatch *sel = NULL;
    if (faiss_IDSelectorBatch_new(&sel, 0, &dummy) != 0)
        return 0;
    size_t n = 0;
    int rc = faiss_Index_remove_ids(ix, (const FaissIDSelector *)sel, &n);
    faiss_IDSelector_free((FaissIDSelector *)sel);
    return rc == 0;
}

/* The flat index under an IDMap2 wrapper, or NULL if the index is not one. */
static FaissIndexFlat *ann_flat(const qd_ann *a)
{
    if (!faiss_IndexIDMap2_cast(a->index))
        return NULL;
    return faiss_IndexFlat_cast(faiss_IndexIDMap_sub_index(a->index));
}

/* (Re)computes the codes of every vector of a flat index into a->scan. On failure the
 * scan is dropped (searches go through FAISS) and QD_ERR_NOMEM returned. */
static int ann_scan_rebuild(qd_ann *a)
{
    FaissIndexFlat *flat = ann_flat(a);
    float *xb;
    size_t nf;
    faiss_IndexFlat_xb(flat, &xb, &nf);
    int rc = 0;
    if (!a->scan)
        rc = qd_flatscan_new(a->dim, &a->scan);
    if (rc == 0) {
        qd_flatscan_clear(a->scan);
        rc = qd_flatscan_add(a->scan, xb, nf / (size_t)a->dim);
    }
    if (rc != 0) {
        qd_flatscan_free(a->scan);
        a->scan = NULL;
    }
    return rc;
}

/* Checks an index (made or loaded) and fills the fields derived from it. On failure
 * returns a QD_ERR_* with the reason in why. */
static int ann_adopt(qd_ann *a, FaissIndex *ix, char *why, size_t whylen)
{
    if (faiss_Index_metric_type(ix) != METRIC_INNER_PRODUCT)
        return qd_errf(why, whylen, QD_ERR_FORMAT, "metric is not inner product");
    int d = faiss_Index_d(ix);
    if (d < 1 || d > QD_ANN_MAX_DIM)
        return qd_errf(why, whylen, QD_ERR_FORMAT, "dimension %d out of range", d);
    enum ann_idmode mode = ann_classify(ix);
    if (mode == ANN_POSITIONAL)
        return qd_errf(why, whylen, QD_ERR_FORMAT,
                       "index stores vectors by position, not by id (no IDMap, not IVF)");
    int64_t ntotal = faiss_Index_ntotal(ix);
    int over_ivf = 0;
    if (mode == ANN_IDMAP2 || mode == ANN_IDMAP) {
        /* A loaded wrapper must agree with itself, or ids and vectors would not pair. */
        int64_t *map;
        size_t nmap;
        faiss_IndexIDMap_id_map(ix, &map, &nmap);
        FaissIndex *sub = faiss_IndexIDMap_sub_index(ix);
        if (ntotal < 0 || nmap != (size_t)ntotal || faiss_Index_ntotal(sub) != ntotal)
            return qd_errf(why, whylen, QD_ERR_FORMAT,
                           "id map holds %zu ids for %" PRId64 " vectors", nmap, ntotal);
        /* IDMap over IVF (only if someone asked for it explicitly) corrupts the id map
         * on removal, and IVF cannot reconstruct by id: allow neither. */
        over_ivf = faiss_IndexIVF_cast(ann_peel(sub)) != NULL;
    }
    a->index = ix;
    a->dim = d;
    a->can_get = mode == ANN_IDMAP2 && !over_ivf;
    a->can_remove = !over_ivf && ann_probe_remove(ix);
    a->use_scan = 1;
    if (mode == ANN_IDMAP2 && ann_flat(a) && ann_scan_rebuild(a) != 0)
        return qd_errf(why, whylen, QD_ERR_NOMEM, "out of memory for the index's codes");
    return 0;
}

/* --- new, free ----------------------------------------------------------------------- */

int qd_ann_new(int dim, const char *spec, qd_ann **out, char *err, size_t errlen)
{
    char detail[QD_ERRMSG_MAX];
    char why[QD_ERRMSG_MAX];
    char *wrapped = NULL;
    FaissIndex *ix = NULL;
    qd_ann *a = NULL;
    int rc;

    *out = NULL;
    if (!spec || !*spec)
        spec = "Flat";
    if (dim < 1 || dim > QD_ANN_MAX_DIM)
        return qd_errf(err, errlen, QD_ERR_INVAL, "index dimension %d not in 1..%d", dim,
                       QD_ANN_MAX_DIM);
    a = qd_calloc(1, sizeof *a);
    if (!a)
        return qd_errf(err, errlen, QD_ERR_NOMEM, "out of memory for the index");
    a->spec = qd_strndup(spec, strlen(spec));
    if (!a->spec) {
        rc = qd_errf(err, errlen, QD_ERR_NOMEM, "out of memory for the index");
        goto fail;
    }
    if (faiss_index_factory(&ix, dim, spec, METRIC_INNER_PRODUCT) != 0) {
        rc = qd_errf(err, errlen, QD_ERR_INVAL, "index spec \"%s\": %s", spec,
                     faiss_detail(detail, sizeof detail));
        goto fail;
    }
    if (ann_classify(ix) == ANN_POSITIONAL) {
        /* Rebuild with an id map in front; FAISS parses the prefix itself. */
        faiss_Index_free(ix);
        ix = NULL;
        size_t n = strlen(spec) + sizeof "IDMap2,";
        wrapped = qd_malloc(n);
        if (!wrapped) {
            rc = qd_errf(err, errlen, QD_ERR_NOMEM, "out of memory for the index");
            goto fail;
        }
        snprintf(wrapped, n, "IDMap2,%s", spec);
        if (faiss_index_factory(&ix, dim, wrapped, METRIC_INNER_PRODUCT) != 0) {
            rc = qd_errf(err, errlen, QD_ERR_INVAL, "index spec \"%s\": %s", wrapped,
                         faiss_detail(detail, sizeof detail));
            goto fail;
        }
    }
    rc = ann_adopt(a, ix, why, sizeof why);
    if (rc != 0) {
        rc = qd_errf(err, errlen, rc == QD_ERR_NOMEM ? rc : QD_ERR_INVAL,
                     "index spec \"%s\": %s", spec, why);
        goto fail;
    }
    qd_free(wrapped);
    *out = a;
    return 0;

fail:
    if (ix)
        faiss_Index_free(ix);
    qd_free(wrapped);
    if (a) {
        qd_flatscan_free(a->scan);
        qd_free(a->spec);
    }
    qd_free(a);
    return rc;
}

void qd_ann_free(qd_ann *a)
{
    if (!a)
        return;
    if (a->index)
        faiss_Index_free(a->index);
    qd_flatscan_free(a->scan);
    qd_free(a->spec);
    qd_free(a);
}

/* --- files ----------------------------------------------------------------------- */

/* The trailer after the FAISS bytes, little-endian:
 *   0  8  magic "QDANNCRC"
 *   8  4  version (1)
 *  12  4  CRC-32 of the FAISS bytes
 *  16  8  length of the FAISS bytes (the trailer's own offset)
 * The length doubles as a sentinel: it must equal the file size minus 24. */
#define ANN_TRAILER_MAGIC "QDANNCRC"
#define ANN_TRAILER_VERSION 1u
#define ANN_TRAILER_SIZE 24

static void put_le32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void put_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get_le32(const unsigned char *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static uint64_t get_le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

/* CRC-32 of the first len bytes of fd, read with pread (the FILE position is left
 * alone). On failure returns -1 with errno set; ENODATA if the file is shorter. */
static int crc_of_fd(int fd, uint64_t len, uint32_t *crc)
{
    unsigned char buf[16384];
    uint32_t c = 0;
    uint64_t off = 0;
    while (off < len) {
        size_t want = len - off < sizeof buf ? (size_t)(len - off) : sizeof buf;
        ssize_t r = pread(fd, buf, want, (off_t)off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -1;
        if (r == 0) {
            errno = ENODATA;
            return -1;
        }
        c = qd_crc32(c, buf, (size_t)r);
        off += (uint64_t)r;
    }
    *crc = c;
    return 0;
}

int qd_ann_save(const qd_ann *a, const char *path, char *err, size_t errlen)
{
    char tmp[4200];
    char detail[QD_ERRMSG_MAX];
    FILE *f = NULL;
    int rc, e;

    if (qd_tmp_path(path, tmp, sizeof tmp) != 0)
        return qd_errf(err, errlen, QD_ERR_RANGE, "%s: path too long", path);
    int fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
        e = errno;
        return qd_errf(err, errlen, qd_err_from_errno(e), "%s: %s", tmp, strerror(e));
    }
    f = fdopen(fd, "w+b");
    if (!f) {
        e = errno;
        close(fd);
        rc = qd_errf(err, errlen, qd_err_from_errno(e), "%s: %s", tmp, strerror(e));
        goto fail;
    }
    errno = 0;
    if (faiss_write_index(a->index, f) != 0) {
        e = errno; /* FAISS's writer fails on a short fwrite, which sets errno */
        rc = qd_errf(err, errlen, e ? qd_err_from_errno(e) : QD_ERR_IO,
                     "%s: writing the index: %s", tmp,
                     faiss_detail(detail, sizeof detail));
        goto fail;
    }
    /* Flush before checksumming: the CRC is computed from the file, so it covers
     * exactly what reached it. */
    if (fflush(f) != 0) {
        e = errno;
        rc = qd_errf(err, errlen, qd_err_from_errno(e), "%s: write: %s", tmp, strerror(e));
        goto fail;
    }
    off_t len = ftello(f);
    uint32_t crc;
    if (len < 0 || crc_of_fd(fd, (uint64_t)len, &crc) != 0) {
        e = errno;
        rc = qd_errf(err, errlen, qd_err_from_errno(e), "%s: reading back: %s", tmp, strerror(e));
        goto fail;
    }
    unsigned char trailer[ANN_TRAILER_SIZE];
    memcpy(trailer, ANN_TRAILER_MAGIC, 8);
    put_le32(trailer + 8, ANN_TRAILER_VERSION);
    put_le32(trailer + 12, crc);
    put_le64(trailer + 16, (uint64_t)len);
    if (fwrite(trailer, 1, sizeof trailer, f) != sizeof trailer || fflush(f) != 0) {
        e = errno;
        rc = qd_errf(err, errlen, qd_err_from_errno(e), "%s: write: %s", tmp, strerror(e));
        goto fail;
    }
    if (fsync(fd) != 0) {
        e = errno;
        rc = qd_errf(err, errlen, qd_err_from_errno(e), "%s: fsync: %s", tmp, strerror(e));
        goto fail;
    }
    int closed = fclose(f);
    f = NULL;
    if (closed != 0) {
        e = errno;
        rc = qd_errf(err, errlen, qd_err_from_errno(e), "%s: close: %s", tmp, strerror(e));
        goto fail;
    }
    if (rename(tmp, path) != 0) {
        e = errno;
        rc = qd_errf(err, errlen, qd_err_from_errno(e), "%s: rename: %s", path, strerror(e));
        goto fail;
    }
    return qd_fsync_dir_of(path, err, errlen);

fail:
    if (f)
        fclose(f);
    unlink(tmp);
    return rc;
}

/* Verifies the trailer of an open index file and sets *faiss_len to the length of
 * the FAISS part before it. */
static int ann_check_trailer(int fd, const char *path, uint64_t size, uint64_t *faiss_len,
                             char *err, size_t errlen)
{
    unsigned char t[ANN_TRAILER_SIZE];
    if (size < ANN_TRAILER_SIZE)
        return qd_errf(err, errlen, QD_ERR_FORMAT,
                       "%s: %" PRIu64 " bytes: too short for an index file", path, size);
    ssize_t r;
    do
        r = pread(fd, t, sizeof t, (off_t)(size - ANN_TRAILER_SIZE));
    while (r < 0 && errno == EINTR);
    if (r != (ssize_t)sizeof t) {
        int e = r < 0 ? errno : ENODATA;
        return qd_errf(err, errlen, QD_ERR_IO, "%s: %s", path, strerror(e));
    }
    if (memcmp(t, ANN_TRAILER_MAGIC, 8) != 0)
        return qd_errf(err, errlen, QD_ERR_FORMAT,
                       "%s: no qd_ann trailer at the end: truncated, damaged, or not "
                       "written by qd_ann_save",
                       path);
    uint32_t version = get_le32(t + 8);
    if (version != ANN_TRAILER_VERSION)
        return qd_errf(err, errlen, QD_ERR_VERSION,
                       "%s: index file trailer version %" PRIu32 ", expected %u", path,
                       version, ANN_TRAILER_VERSION);
    uint64_t len = get_le64(t + 16);
    if (len != size - ANN_TRAILER_SIZE)
        return qd_errf(err, errlen, QD_ERR_FORMAT,
                       "%s: index file truncated or extended: trailer says %" PRIu64
                       " bytes of index, file has %" PRIu64,
                       path, len, size - ANN_TRAILER_SIZE);
    uint32_t crc;
    if (crc_of_fd(fd, len, &crc) != 0) {
        int e = errno;
        return qd_errf(err, errlen, QD_ERR_IO, "%s: %s", path, strerror(e));
    }
    if (crc != get_le32(t + 12))
        return qd_errf(err, errlen, QD_ERR_CHECKSUM,
                       "%s: index file corrupt: CRC-32 %08" PRIx32 ", trailer says %08" PRIx32,
                       path, crc, get_le32(t + 12));
    *faiss_len = len;
    return 0;
}

int qd_ann_load(const char *path, qd_ann **out, char *err, size_t errlen)
{
    char detail[QD_ERRMSG_MAX];
    char why[QD_ERRMSG_MAX];
    FaissIndex *ix = NULL;
    qd_ann *a = NULL;
    FILE *f = NULL;
    int rc, e;

    *out = NULL;
    f = fopen(path, "rb");
    if (!f) {
        e = errno;
        return qd_errf(err, errlen, e == ENOENT ? QD_ERR_NOTFOUND : QD_ERR_IO, "%s: %s",
                       path, strerror(e));
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0) {
        e = errno;
        rc = qd_errf(err, errlen, QD_ERR_IO, "%s: %s", path, strerror(e));
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = qd_errf(err, errlen, QD_ERR_IO, "%s: not a regular file", path);
        goto fail;
    }
    uint64_t faiss_len = 0;
    rc = ann_check_trailer(fileno(f), path, (uint64_t)st.st_size, &faiss_len, err, errlen);
    if (rc != 0)
        goto fail;
    if (faiss_read_index(f, 0, &ix) != 0) {
        rc = qd_errf(err, errlen, QD_ERR_FORMAT, "%s: not a readable FAISS index: %s", path,
                     faiss_detail(detail, sizeof detail));
        goto fail;
    }
    /* FAISS must have consumed exactly the bytes the trailer covers. */
    off_t used = ftello(f);
    if (used < 0 || (uint64_t)used != faiss_len) {
        rc = qd_errf(err, errlen, QD_ERR_FORMAT,
                     "%s: the FAISS index ends at byte %lld, the trailer says %" PRIu64, path,
                     (long long)used, faiss_len);
        goto fail;
    }
    fclose(f);
    f = NULL;
    a = qd_calloc(1, sizeof *a);
    if (!a) {
        rc = qd_errf(err, errlen, QD_ERR_NOMEM, "%s: out of memory", path);
        goto fail;
    }
    rc = ann_adopt(a, ix, why, sizeof why);
    if (rc != 0) {
        rc = qd_errf(err, errlen, rc, "%s: %s", path, why);
        goto fail;
    }
    *out = a;
    return 0;

fail:
    if (f)
        fclose(f);
    if (ix)
        faiss_Index_free(ix);
    if (a)
        qd_flatscan_free(a->scan);
    qd_free(a);
    return rc;
}

/* --- training and writing ------------------------------------------------------------ */

/* Checks that n vectors of a->dim floats are all finite and that n fits FAISS's idx_t. */
static int ann_check_vectors(const qd_ann *a, const float *x, size_t n, const char *what)
{
    if (n > (size_t)INT64_MAX || n > SIZE_MAX / (size_t)a->dim)
        return ann_fail(QD_ERR_RANGE, "%zu %s vectors: too many", n, what);
    size_t total = n * (size_t)a->dim;
    for (size_t i = 0; i < total; i++)
        if (!isfinite(x[i]))
            return ann_fail(QD_ERR_INVAL, "%s vector %zu: component %zu is not finite", what,
                            i / (size_t)a->dim, i % (size_t)a->dim);
    return 0;
}

int qd_ann_needs_training(const qd_ann *a)
{
    return !faiss_Index_is_trained(a->index);
}

int qd_ann_train(qd_ann *a, const float *x, size_t n)
{
    ann_enter();
    char detail[QD_ERRMSG_MAX];
    if (n == 0)
        return ann_fail(QD_ERR_INVAL, "training needs at least one vector");
    if (faiss_Index_ntotal(a->index) > 0)
        return ann_fail(QD_ERR_INVAL,
                        "index already holds %" PRId64 " vectors; train before adding",
                        faiss_Index_ntotal(a->index));
    int rc = ann_check_vectors(a, x, n, "training");
    if (rc != 0)
        return rc;
    ann_apply_threads();
    if (faiss_Index_train(a->index, (int64_t)n, x) != 0)
        return ann_fail(QD_ERR_INDEX, "training on %zu vectors: %s", n,
                        faiss_detail(detail, sizeof detail));
    return 0;
}

int qd_ann_add(qd_ann *a, const float *x, const int64_t *ids, size_t n)
{
    ann_enter();
    char detail[QD_ERRMSG_MAX];
    if (n == 0)
        return 0;
    if (!faiss_Index_is_trained(a->index))
        return ann_fail(QD_ERR_INVAL, "the index must be trained before vectors are added");
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0)
            return ann_fail(QD_ERR_INVAL, "vector %zu: id %" PRId64 " is negative", i, ids[i]);
    int rc = ann_check_vectors(a, x, n, "added");
    if (rc != 0)
        return rc;
    ann_apply_threads();
    if (faiss_Index_add_with_ids(a->index, (int64_t)n, x, ids) != 0) {
        faiss_detail(detail, sizeof detail);
        /* Part of the batch may be in: make the codes match what FAISS holds. */
        if (a->scan)
            ann_scan_rebuild(a);
        return ann_fail(QD_ERR_INDEX, "adding %zu vectors: %s", n, detail);
    }
    if (a->scan && qd_flatscan_add(a->scan, x, n) != 0) {
        /* The vectors are in FAISS; without their codes, search through FAISS. */
        qd_flatscan_free(a->scan);
        a->scan = NULL;
    }
    return 0;
}

int qd_ann_can_remove(const qd_ann *a)
{
    return a->can_remove;
}

int qd_ann_remove(qd_ann *a, const int64_t *ids, size_t n, size_t *nremoved)
{
    ann_enter();
    char detail[QD_ERRMSG_MAX];
    if (nremoved)
        *nremoved = 0;
    if (!a->can_remove)
        return ann_fail(QD_ERR_UNSUPPORTED,
                        "this kind of index cannot remove vectors (tombstone them instead)");
    if (n == 0)
        return 0;
    FaissIDSelectorBatch *sel = NULL;
    if (faiss_IDSelectorBatch_new(&sel, n, ids) != 0)
        return ann_fail(QD_ERR_NOMEM, "selecting %zu ids: %s", n,
                        faiss_detail(detail, sizeof detail));
    ann_apply_threads();
    size_t got = 0;
    int frc = faiss_Index_remove_ids(a->index, (const FaissIDSelector *)sel, &got);
    if (frc != 0)
        faiss_detail(detail, sizeof detail); /* before faiss_IDSelector_free */
    faiss_IDSelector_free((FaissIDSelector *)sel);
    /* FAISS compacts its arrays, also when it fails part way: recompute the codes. */
    if (a->scan)
        ann_scan_rebuild(a);
    if (frc != 0)
        return ann_fail(QD_ERR_INDEX, "removing %zu ids: %s", n, detail);
    if (nremoved)
        *nremoved = got;
    return 0;
}

int qd_ann_set_param(qd_ann *a, const char *name, double value)
{
    ann_enter();
    char detail[QD_ERRMSG_MAX];
    if (!name || !*name)
        return ann_fail(QD_ERR_INVAL, "empty parameter name");
    if (!isfinite(value))
        return ann_fail(QD_ERR_INVAL, "parameter %s: value is not finite", name);
    if ((strcmp(name, "nprobe") == 0 || strcmp(name, "efSearch") == 0 ||
         strcmp(name, "rescore") == 0) &&
        (value < 1 || value > 1e9 || value != floor(value)))
        return ann_fail(QD_ERR_INVAL, "parameter %s: %g is not an integer in 1..1e9", name,
                        value);
    if (strcmp(name, "rescore") == 0 || strcmp(name, "flatscan") == 0) {
        if (!ann_flat(a))
            return ann_fail(QD_ERR_INVAL, "parameter %s applies to the exact (Flat) index only",
                            name);
        if (strcmp(name, "rescore") == 0) {
            a->rescore = (size_t)value;
        } else if (value == 0 || value == 1) {
            a->use_scan = (int)value;
        } else {
            return ann_fail(QD_ERR_INVAL, "parameter flatscan: %g is not 0 or 1", value);
        }
        return 0;
    }
    FaissParameterSpace *ps = NULL;
    if (faiss_ParameterSpace_new(&ps) != 0)
        return ann_fail(QD_ERR_NOMEM, "parameter %s: %s", name,
                        faiss_detail(detail, sizeof detail));
    int frc = faiss_ParameterSpace_set_index_parameter(ps, a->index, name, value);
    if (frc != 0)
        faiss_detail(detail, sizeof detail);
    faiss_ParameterSpace_free(ps);
    if (frc != 0)
        return ann_fail(QD_ERR_INVAL, "parameter %s does not apply to this index: %s", name,
                        detail);
    return 0;
}

/* --- reading ------------------------------------------------------------------------ */

/* Exact search through the codes; positions become ids through the IDMap2's map. */
static int ann_scan_search(const qd_ann *a, const float *q, size_t nq, size_t k,
                           float *scores, int64_t *ids)
{
    float *xb;
    size_t nf, nmap;
    int64_t *map;
    faiss_IndexFlat_xb(ann_flat(a), &xb, &nf);
    faiss_IndexIDMap_id_map(a->index, &map, &nmap);
    QD_ASSERT(nmap == qd_flatscan_count(a->scan) && nf == nmap * (size_t)a->dim);
    int rc = qd_flatscan_search(a->scan, xb, q, nq, k, a->rescore, scores, ids);
    if (rc != 0)
        return ann_fail(rc, "searching %zu queries: %s", nq, qd_strerror(rc));
    for (size_t i = 0; i < nq * k; i++)
        if (ids[i] >= 0)
            ids[i] = map[ids[i]];
    return 0;
}

int qd_ann_search(const qd_ann *a, const float *q, size_t nq, size_t k, float *scores,
                  int64_t *ids)
{
    ann_enter();
    char detail[QD_ERRMSG_MAX];
    if (nq == 0)
        return 0;
    if (k == 0)
        return ann_fail(QD_ERR_INVAL, "search for k = 0 results");
    if (k > (size_t)INT64_MAX || nq > SIZE_MAX / k)
        return ann_fail(QD_ERR_RANGE, "search for %zu x %zu results: too many", nq, k);
    int rc = ann_check_vectors(a, q, nq, "query");
    if (rc != 0)
        return rc;
    ann_apply_threads();
    if (a->scan && a->use_scan)
        return ann_scan_search(a, q, nq, k, scores, ids);
    if (faiss_Index_search(a->index, (int64_t)nq, q, (int64_t)k, scores, ids) != 0)
        return ann_fail(QD_ERR_INDEX, "searching %zu queries: %s", nq,
                        faiss_detail(detail, sizeof detail));
    /* FAISS pads missing results with id -1 and the most negative float; make the
     * padding a value no real score can equal. */
    for (size_t i = 0; i < nq * k; i++)
        if (ids[i] < 0) {
            ids[i] = -1;
            scores[i] = -INFINITY;
        }
    return 0;
}

int qd_ann_can_get(const qd_ann *a)
{
    return a->can_get;
}

/* 1 if id is in the id map of an IDMap-wrapped index (a linear scan: only for telling
 * "absent" from a real failure after reconstruct failed). */
static int ann_has_id(const qd_ann *a, int64_t id)
{
    int64_t *map;
    size_t n;
    faiss_IndexIDMap_id_map(a->index, &map, &n);
    for (size_t i = 0; i < n; i++)
        if (map[i] == id)
            return 1;
    return 0;
}

int qd_ann_get(const qd_ann *a, int64_t id, float *vec)
{
    ann_enter();
    char detail[QD_ERRMSG_MAX];
    if (!a->can_get)
        return ann_fail(QD_ERR_UNSUPPORTED,
                        "this kind of index (IVF) cannot look up a vector by id");
    if (id < 0)
        return ann_fail(QD_ERR_NOTFOUND, "id %" PRId64 " is not in the index", id);
    if (faiss_Index_reconstruct(a->index, id, vec) == 0)
        return 0;
    faiss_detail(detail, sizeof detail);
    if (!ann_has_id(a, id))
        return ann_fail(QD_ERR_NOTFOUND, "id %" PRId64 " is not in the index", id);
    return ann_fail(QD_ERR_INDEX, "reconstructing id %" PRId64 ": %s", id, detail);
}

size_t qd_ann_search_batch(const qd_ann *a)
{
    return a->scan && a->use_scan ? qd_flatscan_batch(a->scan) : 1;
}

size_t qd_ann_count(const qd_ann *a)
{
    return (size_t)faiss_Index_ntotal(a->index);
}

int qd_ann_dim(const qd_ann *a)
{
    return a->dim;
}

const char *qd_ann_spec(const qd_ann *a)
{
    return a->spec;
}
