/*
 * memidx.c - the in-memory question index (memidx.h): an array of rows scanned in
 * full by every search, under a reader-writer lock.
 *
 * Rows are only appended; a removal marks the row (a tombstone), so row ids are
 * positions and never reused, like the store's. A search keeps the k best live rows of
 * each query in a small sorted array (insertion), which is all a test-sized index needs.
 */
#include "qdup/memidx.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "qdup/common.h"
#include "qdup/input.h"

/* One stored question. */
typedef struct mrow {
    char *ext_id;   /* external id (NUL-terminated copy) */
    size_t id_len;  /* its length in bytes */
    char *text;     /* question text (NUL-terminated copy) */
    size_t text_len;
    float *vec;     /* (dim) its vector */
    double created; /* unix time */
    double removed; /* unix time; 0 while live */
} mrow;

struct qd_memidx {
    const qd_model *m;        /* encodes items added without a vector; not owned */
    int dim;                  /* vector width */
    size_t max_rows;          /* most rows ever stored (0: no limit) */
    pthread_rwlock_t lock;    /* readers: search, get, info; writers: add, remove */
    mrow *rows;               /* (n) every row ever added, by row id */
    size_t n;                 /* rows used */
    size_t cap;               /* rows allocated */
    size_t live;              /* rows not removed */
    uint64_t seq;             /* changes made */
    qd_enc_ws *ws;            /* encodes vector-less adds (under the write lock) */
};

/* Detail of the last failure, per thread as the backend contract asks. */
static _Thread_local char last_err[256];

static int set_err(int rc, const char *msg)
{
    snprintf(last_err, sizeof last_err, "%s", msg);
    return rc;
}

int qd_memidx_new(const qd_model *m, size_t max_rows, qd_memidx **out)
{
    *out = NULL;
    qd_memidx *mi = qd_calloc(1, sizeof *mi);
    if (!mi)
        return QD_ERR_NOMEM;
    mi->m = m;
    mi->dim = qd_model_dim(m);
    mi->max_rows = max_rows;
    if (pthread_rwlock_init(&mi->lock, NULL) != 0) {
        qd_free(mi);
        return QD_ERR_NOMEM;
    }
    *out = mi;
    return 0;
}

void qd_memidx_free(qd_memidx *mi)
{
    if (!mi)
        return;
    for (size_t i = 0; i < mi->n; i++) {
        qd_free(mi->rows[i].ext_id);
        qd_free(mi->rows[i].text);
        qd_free(mi->rows[i].vec);
    }
    qd_free(mi->rows);
    qd_enc_ws_free(mi->ws);
    pthread_rwlock_destroy(&mi->lock);
    qd_free(mi);
}

/* The live row with this id, or -1. Caller holds the lock. */
static long find_live(const qd_memidx *mi, const char *id, size_t len)
{
    for (size_t i = mi->n; i-- > 0;) {
        const mrow *r = &mi->rows[i];
        if (!r->removed && r->id_len == len && memcmp(r->ext_id, id, len) == 0)
            return (long)i;
    }
    return -1;
}

static long find_text(const qd_memidx *mi, const char *text, size_t len)
{
    for (size_t i = 0; i < mi->n; i++) {
        const mrow *r = &mi->rows[i];
        if (!r->removed && r->text_len == len && memcmp(r->text, text, len) == 0)
            return (long)i;
    }
    return -1;
}

/* A copy of row i for the caller. */
static int copy_row(const qd_memidx *mi, size_t i, qd_store_row *out)
{
    const mrow *r = &mi->rows[i];
    out->row = (int64_t)i;
    out->ext_id = qd_strndup(r->ext_id, r->id_len);
    out->text = qd_strndup(r->text, r->text_len);
    out->created = r->created;
    out->removed = r->removed;
    if (!out->ext_id || !out->text) {
        qd_free(out->ext_id);
        qd_free(out->text);
        out->ext_id = out->text = NULL;
        return QD_ERR_NOMEM;
    }
    return 0;
}

static int mi_search(void *ctx, const float *q, size_t nq, size_t k, float min_score,
                     const char *const *exclude, qd_store_hits *out)
{
    qd_memidx *mi = ctx;
    if (k == 0)
        return set_err(QD_ERR_INVAL, "k must be at least 1");
    size_t cap = k;
    float *best = qd_mallocarray(cap, sizeof *best);
    size_t *who = qd_mallocarray(cap, sizeof *who);
    if (!best || !who) {
        qd_free(best);
        qd_free(who);
        return set_err(QD_ERR_NOMEM, "out of memory");
    }
    int rc = 0;
    size_t done = 0;
    pthread_rwlock_rdlock(&mi->lock);
    for (; done < nq; done++) {
        const float *v = q + done * (size_t)mi->dim;
        const char *ex = exclude ? exclude[done] : NULL;
        size_t exlen = ex ? strlen(ex) : 0;
        size_t nb = 0;
        for (size_t i = 0; i < mi->n; i++) {
            const mrow *r = &mi->rows[i];
            if (r->removed || (ex && r->id_len == exlen && memcmp(r->ext_id, ex, exlen) == 0))
                continue;
            float s = 0;
            for (int d = 0; d < mi->dim; d++)
                s += v[d] * r->vec[d];
            if (!(s >= min_score) || (nb == cap && s <= best[nb - 1]))
                continue;
            size_t at = nb < cap ? nb++ : nb - 1;
            while (at > 0 && best[at - 1] < s) {
                best[at] = best[at - 1];
                who[at] = who[at - 1];
                at--;
            }
            best[at] = s;
            who[at] = i;
        }
        out[done].n = 0;
        out[done].hit = nb ? qd_calloc(nb, sizeof *out[done].hit) : NULL;
        if (nb && !out[done].hit) {
            rc = set_err(QD_ERR_NOMEM, "out of memory");
            break;
        }
        for (size_t j = 0; j < nb; j++) {
            if (copy_row(mi, who[j], &out[done].hit[j].row)) {
                rc = set_err(QD_ERR_NOMEM, "out of memory");
                break;
            }
            out[done].hit[j].score = best[j];
            out[done].n++;
        }
        if (rc)
            break;
    }
    pthread_rwlock_unlock(&mi->lock);
    if (rc)
        for (size_t i = 0; i <= done && i < nq; i++)
            qd_store_hits_free(&out[i]);
    qd_free(best);
    qd_free(who);
    return rc;
}

static int zero_vec(const float *v, int dim)
{
    for (int d = 0; d < dim; d++)
        if (v[d] != 0.0f)
            return 0;
    return 1;
}

static int mi_add(void *ctx, const qd_store_item *items, size_t n, int replace,
                  qd_store_result *res)
{
    qd_memidx *mi = ctx;
    int rc = 0;
    size_t n0;
    float *tmp = NULL;
    pthread_rwlock_wrlock(&mi->lock);
    n0 = mi->n;
    size_t i;
    for (i = 0; i < n; i++) {
        const qd_store_item *it = &items[i];
        res[i] = (qd_store_result){QD_STORE_ADDED, -1, -1};
        if (it->ext_id_len == 0 || it->ext_id_len > 256) {
            rc = set_err(QD_ERR_INVAL, "an id must be 1 to 256 bytes");
            break;
        }
        const float *vec = it->vec;
        if (!vec) {
            if (!tmp)
                tmp = qd_mallocarray((size_t)mi->dim, sizeof *tmp);
            if (!mi->ws)
                mi->ws = qd_enc_ws_new();
            if (!tmp || !mi->ws) {
                rc = set_err(QD_ERR_NOMEM, "out of memory");
                break;
            }
            rc = qd_enc_texts(mi->m, mi->ws, &it->text, &it->text_len, 1, tmp);
            if (rc) {
                set_err(rc, "encoding failed");
                break;
            }
            vec = tmp;
        }
        if (zero_vec(vec, mi->dim)) {
            res[i].status = QD_STORE_EMPTY;
            continue;
        }
        long other = find_live(mi, it->ext_id, it->ext_id_len);
        if (other >= 0 && !(replace & QD_STORE_REPLACE)) {
            res[i].status = QD_STORE_DUP_ID;
            res[i].other_row = other;
            continue;
        }
        long same = find_text(mi, it->text, it->text_len);
        if (same >= 0 && same != other && !(replace & QD_STORE_REPOSTS)) {
            res[i].status = QD_STORE_DUP_TEXT;
            res[i].other_row = same;
            continue;
        }
        if (same >= 0 && same != other) {
            res[i].status = QD_STORE_REPOST; /* stored below, like the store does */
            res[i].other_row = same;
        }
        if (mi->max_rows && mi->n >= mi->max_rows) {
            rc = set_err(QD_ERR_BUSY, "the in-memory index is full");
            break;
        }
        if (mi->n == mi->cap) {
            size_t cap = mi->cap ? 2 * mi->cap : 64;
            mrow *rows = qd_reallocarray(mi->rows, cap, sizeof *rows);
            if (!rows) {
                rc = set_err(QD_ERR_NOMEM, "out of memory");
                break;
            }
            mi->rows = rows;
            mi->cap = cap;
        }
        mrow *r = &mi->rows[mi->n];
        r->ext_id = qd_strndup(it->ext_id, it->ext_id_len);
        r->text = qd_strndup(it->text, it->text_len);
        r->vec = qd_mallocarray((size_t)mi->dim, sizeof *r->vec);
        if (!r->ext_id || !r->text || !r->vec) {
            qd_free(r->ext_id);
            qd_free(r->text);
            qd_free(r->vec);
            rc = set_err(QD_ERR_NOMEM, "out of memory");
            break;
        }
        r->id_len = it->ext_id_len;
        r->text_len = it->text_len;
        memcpy(r->vec, vec, (size_t)mi->dim * sizeof *r->vec);
        r->created = qd_wall_now();
        r->removed = 0;
        if (other >= 0) {
            mi->rows[other].removed = r->created;
            mi->live--;
            res[i].status = QD_STORE_REPLACED;
            res[i].other_row = other;
        }
        res[i].row = (int64_t)mi->n;
        mi->n++;
        mi->live++;
    }
    if (rc) {
        /* All or nothing, like the store's transaction: forget this batch's rows and
         * bring back the rows it replaced. */
        while (mi->n > n0) {
            mrow *r = &mi->rows[--mi->n];
            qd_free(r->ext_id);
            qd_free(r->text);
            qd_free(r->vec);
        }
        for (size_t j = 0; j < i; j++)
            if (res[j].status == QD_STORE_REPLACED && (size_t)res[j].other_row < n0)
                mi->rows[res[j].other_row].removed = 0;
        mi->live = 0;
        for (size_t j = 0; j < mi->n; j++)
            mi->live += mi->rows[j].removed == 0;
    } else {
        mi->seq += n;
    }
    pthread_rwlock_unlock(&mi->lock);
    qd_free(tmp);
    return rc;
}

static int mi_remove(void *ctx, const char *id, size_t len)
{
    qd_memidx *mi = ctx;
    int rc = 0;
    pthread_rwlock_wrlock(&mi->lock);
    long i = find_live(mi, id, len);
    if (i < 0) {
        rc = set_err(QD_ERR_NOTFOUND, "no question with this id");
    } else {
        mi->rows[i].removed = qd_wall_now();
        mi->live--;
        mi->seq++;
    }
    pthread_rwlock_unlock(&mi->lock);
    return rc;
}

static int mi_get(void *ctx, const char *id, size_t len, qd_store_row *row)
{
    qd_memidx *mi = ctx;
    int rc;
    pthread_rwlock_rdlock(&mi->lock);
    long i = find_live(mi, id, len);
    if (i < 0)
        rc = set_err(QD_ERR_NOTFOUND, "no question with this id");
    else if ((rc = copy_row(mi, (size_t)i, row)) != 0)
        set_err(rc, "out of memory");
    pthread_rwlock_unlock(&mi->lock);
    return rc;
}

static int mi_info(void *ctx, qd_store_info *info)
{
    qd_memidx *mi = ctx;
    memset(info, 0, sizeof *info);
    pthread_rwlock_rdlock(&mi->lock);
    info->live = mi->live;
    info->tombstones = mi->n - mi->live;
    info->faiss_count = mi->live;
    info->seq = mi->seq;
    info->checkpoint_seq = mi->seq;
    pthread_rwlock_unlock(&mi->lock);
    info->dim = mi->dim;
    snprintf(info->index_spec, sizeof info->index_spec, "memory");
    snprintf(info->model_fingerprint, sizeof info->model_fingerprint, "%s",
             qd_model_fingerprint(mi->m));
    return 0;
}

static int mi_checkpoint(void *ctx)
{
    (void)ctx;
    return 0; /* nothing is saved */
}

/* The store's item rules (qd_store_check_item, input.h), which the handler applies
 * before an add. add itself takes any bytes, as a store opened on an old dump would
 * hold them (the protocol tests store such texts directly). */
static int mi_check_item(const qd_store_item *it, char *err, size_t errlen)
{
    return qd_input_check_question(it->ext_id, it->ext_id_len, QD_STORE_MAX_ID, it->text,
                                   it->text_len, QD_STORE_MAX_TEXT, QD_INPUT_BLANK_OK, err,
                                   errlen)
               ? QD_ERR_INVAL
               : 0;
}

static const char *mi_errmsg(void *ctx)
{
    (void)ctx;
    return last_err;
}

void qd_memidx_backend(qd_memidx *mi, qd_backend *be)
{
    *be = (qd_backend){
        .ctx = mi,
        .model = mi->m,
        .search = mi_search,
        .hits_free = qd_store_hits_free,
        .add = mi_add,
        .check_item = mi_check_item,
        .remove = mi_remove,
        .get = mi_get,
        .row_free = qd_store_row_free,
        .info = mi_info,
        .checkpoint = mi_checkpoint,
        .errmsg = mi_errmsg,
    };
}
