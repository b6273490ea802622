/*
 * sched.c - the daemon's scheduler (sched.h): per-client queues, the ring, admission,
 * batches capped by cost, read/write ordering per client, cancellation.
 *
 * Each client has its own queue of waiting items, in request order, and the clients
 * with waiting items form a ring. A free search worker builds its batch by going round
 * the ring from where the last batch stopped, taking the next item of each client in
 * turn (one per client per round, several rounds if there is room), so a client with
 * 64 requests waiting gets no more of a batch than one with a single query, and a
 * newcomer waits for one turn of the others, not for their queues. A batch is capped
 * by cost, not only by count: search_batch texts, batch_results results (k for each
 * text: what the search ranks and the reply formats) and batch_bytes of question text
 * (what the encoder reads). The first item of a batch always fits; an item that does
 * not fit ends the batch and its client is asked first for the next one. An item over
 * a cap on its own is heavy: it goes alone, and with several workers at most
 * threads - 1 heavy batches run at once, so a worker is always left to ordinary
 * requests. The writer goes round the same ring with its own position: consecutive
 * joining writes (adds; one per client per round) share a batch, up to write_batch;
 * any other write goes alone.
 *
 * Order. Only the head of a client's queue may start, and only if it does not
 * conflict with the client's items at work: a write waits until its earlier reads are
 * done, a read until its earlier writes are, so a pipelined "add, get" sees the add and
 * "query, remove" does not see the removal; reads of one client still run side by
 * side, and writes are in order anyway (one writer). A line to parse waits for nothing.
 */
#include "qdup/sched.h"

#include <stdint.h>
#include <string.h>

#include "qdup/common.h"

void qd_sched_init(qd_sched *s, const qd_sched_limits *lim)
{
    memset(s, 0, sizeof *s);
    s->lim = *lim;
}

int qd_sched_over_budget(const qd_sched *s, const qd_sched_client *c, size_t len)
{
    return c->head && (s->queued >= s->lim.max_queued ||
                       s->queued_bytes + len > s->lim.max_queued_bytes);
}

/* Puts c on the ring just behind the search workers' position. */
static void ring_insert(qd_sched *s, qd_sched_client *c)
{
    if (c->in_ring)
        return;
    c->in_ring = 1;
    s->nring++;
    if (!s->rcur) {
        c->next = c->prev = c;
        s->rcur = s->wcur = c;
        return;
    }
    qd_sched_client *at = s->rcur;
    c->next = at;
    c->prev = at->prev;
    at->prev->next = c;
    at->prev = c;
}

static void ring_remove(qd_sched *s, qd_sched_client *c)
{
    if (!c->in_ring)
        return;
    c->in_ring = 0;
    s->nring--;
    if (c->next == c) {
        s->rcur = s->wcur = NULL;
    } else {
        c->prev->next = c->next;
        c->next->prev = c->prev;
        if (s->rcur == c)
            s->rcur = c->next;
        if (s->wcur == c)
            s->wcur = c->next;
    }
    c->next = c->prev = NULL;
}

void qd_sched_push(qd_sched *s, qd_sched_client *c, qd_sched_item *it)
{
    it->owner = c;
    it->next = NULL;
    if (c->tail)
        c->tail->next = it;
    else
        c->head = it;
    c->tail = it;
    s->queued++;
    s->queued_bytes += it->cost;
    ring_insert(s, c);
}

/* Takes the head of c's queue (it is going to work). */
static qd_sched_item *pop(qd_sched *s, qd_sched_client *c)
{
    qd_sched_item *it = c->head;
    c->head = it->next;
    if (!c->head) {
        c->tail = NULL;
        ring_remove(s, c);
    }
    it->next = NULL;
    s->queued--;
    if (it->kind == QD_SCHED_WRITE)
        c->writes_out++;
    else
        c->reads_out++;
    return it;
}

/* c's next item if it may start now: a write for the writer (writer = 1), a read or
 * a parse for a search worker; else NULL. */
static qd_sched_item *ready_head(const qd_sched_client *c, int writer)
{
    qd_sched_item *h = c->head;
    if (!h || (h->kind == QD_SCHED_WRITE) != writer)
        return NULL;
    if (h->kind == QD_SCHED_WRITE ? c->reads_out > 0
                                  : h->kind == QD_SCHED_READ && c->writes_out > 0)
        return NULL;
    return h;
}

int qd_sched_reads_free(const qd_sched *s)
{
    return s->reads_running < s->lim.threads && s->queued > 0;
}

size_t qd_sched_take_reads(qd_sched *s, qd_sched_item **out, size_t cap, int *heavy_out)
{
    const qd_sched_limits *o = &s->lim;
    *heavy_out = 0;
    if (!qd_sched_reads_free(s))
        return 0;
    int heavy_ok = s->heavy_running < (o->threads > 1 ? o->threads - 1 : 1);
    size_t share = SIZE_MAX;
    if (o->split) {
        size_t free_workers = (size_t)(o->threads - s->reads_running);
        share = (s->queued + free_workers - 1) / free_workers;
        if (share < o->min_share)
            share = o->min_share;
    }
    size_t n = 0, texts = 0, results = 0, bytes = 0;
    for (;;) {
        int took = 0;
        for (size_t i = s->nring; i > 0 && s->rcur; i--) {
            qd_sched_client *c = s->rcur;
            qd_sched_item *h = ready_head(c, 0);
            int heavy = h && (h->texts > o->search_batch || h->results > o->batch_results ||
                              h->bytes > o->batch_bytes);
            if (!h || (heavy && !heavy_ok)) {
                s->rcur = c->next;
                continue;
            }
            if (n && (texts + h->texts > o->search_batch ||
                      results + h->results > o->batch_results ||
                      bytes + h->bytes > o->batch_bytes))
                goto out; /* c is first in line for the next batch */
            QD_ASSERT(n < cap);
            s->rcur = c->next; /* before pop, which may take c off the ring */
            out[n++] = pop(s, c);
            if (heavy) {
                *heavy_out = 1;
                goto out;
            }
            texts += h->texts;
            results += h->results;
            bytes += h->bytes;
            if (n == share)
                goto out;
            took = 1;
        }
        if (!took)
            break;
    }
out:
    if (n) {
        s->reads_running++;
        s->heavy_running += *heavy_out;
    }
    return n;
}

size_t qd_sched_take_writes(qd_sched *s, qd_sched_item **out, size_t cap)
{
    if (s->write_running)
        return 0;
    size_t n = 0;
    int joins = 0; /* 1 if the batch holds joining writes, which others may join */
    for (;;) {
        int took = 0;
        for (size_t i = s->nring; i > 0 && s->wcur; i--) {
            qd_sched_client *c = s->wcur;
            qd_sched_item *h = ready_head(c, 1);
            if (!h) {
                s->wcur = c->next;
                continue;
            }
            if (n && (!joins || !h->joins || n == s->lim.write_batch))
                goto out;
            if (!n)
                joins = h->joins;
            QD_ASSERT(n < cap);
            s->wcur = c->next;
            out[n++] = pop(s, c);
            took = 1;
        }
        if (!took)
            break;
    }
out:
    if (n)
        s->write_running = 1;
    return n;
}

int qd_sched_claim_writer(qd_sched *s)
{
    if (s->write_running)
        return 0;
    s->write_running = 1;
    return 1;
}

void qd_sched_item_done(qd_sched *s, qd_sched_item *it)
{
    qd_sched_client *c = it->owner;
    if (it->kind == QD_SCHED_WRITE)
        c->writes_out--;
    else
        c->reads_out--;
    s->queued_bytes -= it->cost;
}

void qd_sched_reads_done(qd_sched *s, int heavy)
{
    QD_ASSERT(s->reads_running > 0);
    s->reads_running--;
    s->heavy_running -= heavy;
}

void qd_sched_writer_done(qd_sched *s)
{
    s->write_running = 0;
}

qd_sched_item *qd_sched_cancel_reads(qd_sched *s, qd_sched_client *c)
{
    qd_sched_item *keep = NULL, **kp = &keep, *gone = NULL, **gp = &gone, *next;
    c->tail = NULL;
    for (qd_sched_item *it = c->head; it; it = next) {
        next = it->next;
        if (it->kind == QD_SCHED_WRITE) {
            *kp = it;
            kp = &it->next;
            c->tail = it;
            continue;
        }
        *gp = it;
        gp = &it->next;
        s->queued--;
        s->queued_bytes -= it->cost;
    }
    *kp = NULL;
    *gp = NULL;
    c->head = keep;
    if (!keep)
        ring_remove(s, c);
    return gone;
}

int qd_sched_idle(const qd_sched *s)
{
    return !s->queued && !s->reads_running && !s->write_running;
}
