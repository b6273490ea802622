/*
 * backend.c - the question store behind the handler's backend interface (backend.h):
 * each function passes its call to the qd_store_* namesake, the store as ctx.
 */
#include "qdup/backend.h"

#include "qdup/common.h"

static int st_search(void *ctx, const float *q, size_t nq, size_t k, float min_score,
                     const char *const *exclude, qd_store_hits *out)
{
    return qd_store_search(ctx, q, nq, k, min_score, exclude, out);
}

/* The store refuses writes with QD_ERR_FORBIDDEN only when it was opened read-only,
 * which the daemon does only when it must (a read-only filesystem): to a client that
 * is the machine refusing, "unavailable", not a permission of its own. */
static int st_write_rc(int rc)
{
    return rc == QD_ERR_FORBIDDEN ? QD_ERR_UNAVAILABLE : rc;
}

static int st_add(void *ctx, const qd_store_item *items, size_t n, int replace,
                  qd_store_result *res)
{
    return st_write_rc(qd_store_add(ctx, items, n, replace, res));
}

static int st_remove(void *ctx, const char *id, size_t len)
{
    return st_write_rc(qd_store_remove(ctx, id, len));
}

static int st_get(void *ctx, const char *id, size_t len, qd_store_row *row)
{
    return qd_store_get(ctx, id, len, row);
}

static int st_info(void *ctx, qd_store_info *info)
{
    return qd_store_get_info(ctx, info);
}

static int st_checkpoint(void *ctx)
{
    return qd_store_checkpoint(ctx);
}

static const char *st_errmsg(void *ctx)
{
    return qd_store_errmsg(ctx);
}

static int st_search_text(void *ctx, const float *q, size_t nq, const qd_store_query *o,
                          qd_store_hits *out)
{
    return qd_store_search_text(ctx, q, nq, o, out);
}

static int st_verdict(void *ctx, const char *new_id, size_t new_len, const char *old_id,
                      size_t old_len, int duplicate)
{
    return st_write_rc(qd_store_verdict(ctx, new_id, new_len, old_id, old_len, duplicate));
}

static const qd_model *st_pin(void *ctx)
{
    return qd_store_pin(ctx);
}

static void st_unpin(void *ctx)
{
    qd_store_unpin(ctx);
}

static int st_reload(void *ctx, char *old_fp, char *new_fp)
{
    return st_write_rc(qd_store_reembed_switch(ctx, old_fp, new_fp));
}

static size_t st_search_batch(void *ctx, size_t dflt)
{
    return qd_store_search_batch(ctx, dflt);
}

void qd_backend_store(qd_store *st, qd_backend *be)
{
    *be = (qd_backend){
        .ctx = st,
        .model = NULL, /* a reload frees the model: each list pins the one in force */
        .search = st_search,
        .hits_free = qd_store_hits_free,
        .add = st_add,
        .check_item = qd_store_check_item,
        .remove = st_remove,
        .get = st_get,
        .row_free = qd_store_row_free,
        .info = st_info,
        .checkpoint = st_checkpoint,
        .errmsg = st_errmsg,
        .search_text = st_search_text,
        .verdict = st_verdict,
        .pin = st_pin,
        .unpin = st_unpin,
        .reload = st_reload,
        .search_batch = st_search_batch,
    };
}
