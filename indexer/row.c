/*
 * row.c - the destructors of the store's result types (qd_store_row, qd_store_hits,
 * store.h). They live apart from the store so that every backend of the daemon's
 * request handler (the store and the in-memory index of memidx.c) hands out rows and
 * hits that one pair of functions frees, without linking the store.
 */
#include "qdup/store.h"

#include "qdup/common.h"

void qd_store_row_free(qd_store_row *r)
{
    if (!r)
        return;
    qd_free(r->ext_id);
    qd_free(r->text);
    r->ext_id = r->text = NULL;
}

void qd_store_hits_free(qd_store_hits *h)
{
    if (!h)
        return;
    for (size_t i = 0; i < h->n; i++)
        qd_store_row_free(&h->hit[i].row);
    qd_free(h->hit);
    h->hit = NULL;
    h->n = 0;
}
