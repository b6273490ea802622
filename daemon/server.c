/*
 * server.c - the libuv server of qdup-daemon (server.h): the loop, the request dispatch
 * to the thread pool, checkpoints, signals and the life cycle. Connections are conn.c's,
 * the socket and access control listen.c's, the scheduling policy sched.c's.
 *
 * Threads. The loop thread owns every handle and every client; the pool threads only
 * run qd_proto_run() and qd_proto_reply() on requests handed to them (and
 * qd_proto_parse() on long lines), and the after-work callback (loop thread again)
 * takes the replies back. A uv_check handle runs after each round of I/O, so one
 * dispatch sees every request that round read, and the free workers share them (each
 * takes its share, up to the batch caps): under load, batches grow by themselves, and
 * no worker idles while another has a batch it could have split. The loop parses lines up to 4 KiB itself;
 * a longer one (up to max_line, most of a millisecond of JSON) waits in its client's
 * queue to be parsed by a worker like any other request, so a client flooding long
 * lines cannot hold the loop that everyone's reads and replies go through; the
 * client's later lines are not taken until it is parsed, so its queue keeps request
 * order.
 *
 * Scheduling (sched.c, with no sockets). Each client has its own queue of waiting
 * requests and the clients with waiting requests form a ring: a free search worker
 * takes the next request of each client in turn into a batch capped by texts, results
 * and text bytes (a request over a cap alone goes alone, never on every worker); the
 * one writer batches consecutive adds the same way. This file turns those batches into
 * pool work (take_batch, dispatch) and their results back into replies (work_done).
 *
 * Shutdown (SIGTERM, SIGINT): close the listener and unlink the socket, stop reading,
 * let queued work finish and replies drain (at most drain_s), checkpoint if anything
 * changed, close every handle; uv_loop_close() must then succeed. A second signal
 * drops the clients at once (cancelling their waiting reads).
 */
#include "qdup/server.h"

#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <uv.h>

#include "qdup/common.h"
#include "qdup/hugepage.h"
#include "qdup/log.h"
#include "qdup/sched.h"
#include "server_impl.h"

void qd_server_log(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    qd_logv(QD_LOG_INFO, fmt, ap);
    va_end(ap);
}

void qd_server_opts_default(qd_server_opts *o)
{
    memset(o, 0, sizeof *o);
    o->socket_mode = 0660;
    /* One worker more than the processors: a worker whose clients are between a reply
     * and their next request would leave its processor idle (BENCHMARKS.md, the
     * daemon under load: 3 workers on 2 processors serve 10 to 20% more than 2). */
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    o->threads = ncpu < 1 ? 2 : ncpu >= 63 ? 64 : (int)ncpu + 1;
    o->max_clients = 1024;
    o->max_queued = 4096;
    o->max_inflight = 64;
    o->max_output = 8u * 1024 * 1024;
    o->max_output_total = 256u * 1024 * 1024;
    o->max_queued_bytes = 64u * 1024 * 1024;
    o->search_batch = 64;
    o->batch_results = 1000;
    o->batch_bytes = 4096;
    o->pause_output = 256u * 1024;
    o->write_batch = 256;
    o->checkpoint_s = 30;
    o->drain_s = 10;
    o->request_timeout_s = 30;
    o->idle_timeout_s = 0;
    o->huge_pages = 1;
    qd_proto_limits_default(&o->limits);
    o->limits.max_reply = 4u * 1024 * 1024; /* below max_output: a reply alone never
                                               gets a reading client dropped */
}

/* A copy of the ring's latencies (caller frees). */
static double *lat_copy(const lat_ring *r, size_t *n)
{
    *n = r->n < LAT_WINDOW ? r->n : LAT_WINDOW;
    double *c = qd_mallocarray(*n ? *n : 1, sizeof *c);
    if (!c) {
        *n = 0;
        return NULL;
    }
    memcpy(c, r->ms, *n * sizeof *c);
    return c;
}

static qd_enc_ws *ws_get(qd_server *s)
{
    qd_enc_ws *ws = NULL;
    pthread_mutex_lock(&s->ws_mu);
    if (s->ws_n)
        ws = s->ws_pool[--s->ws_n];
    pthread_mutex_unlock(&s->ws_mu);
    return ws ? ws : qd_enc_ws_new();
}

static void ws_put(qd_server *s, qd_enc_ws *ws)
{
    if (!ws)
        return;
    pthread_mutex_lock(&s->ws_mu);
    if (s->ws_n == s->ws_cap) {
        size_t cap = s->ws_cap ? 2 * s->ws_cap : 8;
        qd_enc_ws **p = qd_reallocarray(s->ws_pool, cap, sizeof *p);
        if (p) {
            s->ws_pool = p;
            s->ws_cap = cap;
        }
    }
    if (s->ws_n < s->ws_cap) {
        s->ws_pool[s->ws_n++] = ws;
        ws = NULL;
    }
    pthread_mutex_unlock(&s->ws_mu);
    qd_enc_ws_free(ws);
}

/* --- the scheduler's side (sched.h) --------------------------------------------------- */

/* Queues a request (or a long line to parse) in its client's queue, with what the
 * scheduler needs to batch it: `len` bytes of line. */
static void wait_push(qd_server *s, slot *sl, size_t len)
{
    qd_sched_item *it = &sl->it;
    const qd_req *r = sl->req;
    it->kind = sl->cls == CLS_PARSE       ? QD_SCHED_PARSE
               : sl->cls == QD_REQ_WRITE ? QD_SCHED_WRITE
                                          : QD_SCHED_READ;
    it->joins = r && r->op == QD_OP_ADD;
    it->cost = len;
    /* A line to parse, a get or stats: one text's worth, its line as its bytes. */
    it->texts = 1;
    it->results = 1;
    it->bytes = len;
    if (sl->cls != CLS_PARSE && r->ntexts) {
        it->texts = r->ntexts;
        it->results = r->ntexts * r->k;
        it->bytes = 0;
        for (size_t j = 0; j < r->ntexts; j++)
            it->bytes += r->lens[j];
    }
    qd_sched_push(&s->sched, &sl->c->q, it);
}

/* --- requests ------------------------------------------------------------------------ */

static int is_blank(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != ' ' && p[i] != '\t' && p[i] != '\r')
            return 0;
    return 1;
}

/* The server's figures for a stats request. */
static qd_proto_stats *stats_snapshot(qd_server *s)
{
    qd_proto_stats *st = qd_calloc(1, sizeof *st);
    if (!st)
        return NULL;
    st->uptime_s = qd_now() - s->t_start;
    memcpy(st->requests, s->requests, sizeof st->requests);
    memcpy(st->errors, s->errors, sizeof st->errors);
    st->clients = s->nclients;
    st->clients_total = s->clients_total;
    st->clients_refused = s->clients_refused;
    st->clients_dropped = s->clients_dropped;
    for (client *c = s->clients; c; c = c->next)
        st->clients_paused += !c->closing && c->out_paused;
    st->queued = s->sched.queued;
    st->cancelled = s->cancelled;
    st->unsaved_writes = s->dirty;
    st->checkpoints = s->checkpoints;
    st->threads = s->o.threads;
    st->lat_search = lat_copy(&s->lat_search, &st->n_search);
    st->lat_write = lat_copy(&s->lat_write, &st->n_write);
    memcpy(st->replies, s->replies, sizeof st->replies);
    st->hist_read = s->hist_read;
    st->hist_write = s->hist_write;
    return st;
}

/* The size of r's reply as back-pressure counts it before it is made. */
static size_t reply_estimate(const qd_req *r)
{
    return EST_REPLY_BASE + r->ntexts * r->k * EST_RESULT;
}

/* 1 if a request of `len` line bytes must be answered busy: the waiting requests are
 * over budget and this client already has some of them (qd_sched_over_budget). */
static int over_budget(const client *c, size_t len)
{
    return qd_sched_over_budget(&c->srv->sched, &c->q, len);
}

/* Takes a parsed request (parsed here or by a worker): counts it, answers it at once
 * if it needs no worker, else queues it. `queued` is 1 if it already waited as a line
 * for a worker to parse (the budget checked; its bytes no longer counted). */
static void admit(client *c, slot *sl, qd_req *r, size_t len, int queued)
{
    qd_server *s = c->srv;
    sl->op = r->op;
    if (r->op >= 0)
        s->requests[r->op]++;
    if (r->cls != QD_REQ_DONE && r->cls != QD_REQ_WRITE && c->closing) {
        /* Parsed for a client that has gone: a read is not worth running. */
        qd_proto_req_free(&s->proto, r);
        s->cancelled++;
        qd_conn_slot_forget(sl);
        return;
    }
    if (r->cls != QD_REQ_DONE && !queued && over_budget(c, len)) {
        qd_proto_req_free(&s->proto, r);
        qd_conn_slot_error(sl, QD_CODE_BUSY, "too many requests are waiting; try again later");
        return;
    }
    if (r->cls == QD_REQ_DONE) {
        char *out = NULL;
        size_t olen = 0;
        qd_proto_reply(&s->proto, r, &out, &olen);
        int code = r->code;
        qd_proto_req_free(&s->proto, r);
        qd_conn_slot_done(sl, out, olen, code);
        return;
    }
    if ((r->op == QD_OP_STATS || r->op == QD_OP_METRICS) && r->cls == QD_REQ_READ)
        r->stats = stats_snapshot(s);
    sl->req = r;
    sl->cls = r->cls;
    c->owed -= sl->owed;
    sl->owed = reply_estimate(r);
    c->owed += sl->owed;
    wait_push(s, sl, len);
}

void qd_server_handle_line(client *c, const char *line, size_t len)
{
    qd_server *s = c->srv;
    if (is_blank(line, len))
        return;
    slot *sl = qd_conn_slot_new(c);
    if (!sl) {
        qd_conn_close(c);
        return;
    }
    if (len > PARSE_INLINE_MAX) {
        /* A long line: a worker parses it (see the header). Until it is back, the
         * client's later lines wait, so that its queue stays in request order. */
        if (over_budget(c, len)) {
            qd_conn_slot_error(sl, QD_CODE_BUSY, "too many requests are waiting; try again later");
            return;
        }
        if (!(sl->line = qd_malloc(len))) {
            qd_conn_slot_error(sl, QD_CODE_INTERNAL, "out of memory");
            return;
        }
        memcpy(sl->line, line, len);
        sl->cls = CLS_PARSE;
        sl->owed = EST_REPLY_BASE;
        c->owed += sl->owed;
        c->parsing = 1;
        wait_push(s, sl, len);
        return;
    }
    qd_req *r;
    if (qd_proto_parse(&s->proto, line, len, &c->peer, &r)) {
        qd_conn_slot_error(sl, QD_CODE_INTERNAL, "out of memory");
        return;
    }
    admit(c, sl, r, len, 0);
}

/* --- work ----------------------------------------------------------------------------- */

/* The index's and the model's memory on 2 MiB pages (hugepage.h), on a pool thread in
 * the writer's slot, if configured (the loop thread decides: work.pages, W_PAGES): at
 * start, and again after each checkpoint and switch of model while running, since a
 * write that grows FAISS's vectors or a new model's tables moves them to new small
 * pages; not after the checkpoint at shutdown. Buffers below 4 MiB are left alone: few
 * TLB misses to spare there. A kernel that cannot collapse (before 6.1) is said once, at
 * start; the pages stay small, nothing else changes. */
static void server_huge_pages(int at_start)
{
    qd_hugepage_stats st;
    double t0 = qd_now();
    int rc = qd_hugepage_collapse((size_t)4 << 20, &st);
    double ms = (qd_now() - t0) * 1e3;
    qd_log(at_start ? QD_LOG_INFO : QD_LOG_DEBUG,
           "huge pages: %zu MiB of %zu large buffers on 2 MiB pages, %zu MiB not (%s), "
           "%.0f ms", st.huge >> 20, st.mappings, st.failed >> 20,
           rc ? strerror(-rc) : "ok", ms);
}

static void work_run(uv_work_t *req)
{
    work *w = (work *)req;
    qd_server *s = w->srv;
    if (w->kind == W_PAGES) {
        server_huge_pages(1);
        return;
    }
    if (w->kind == W_CHECKPOINT || w->kind == W_RELOAD) {
        w->rc = w->kind == W_CHECKPOINT ? s->be.checkpoint(s->be.ctx)
                                        : s->be.reload(s->be.ctx, w->from_fp, w->to_fp);
        if (w->rc == 0 && w->pages)
            server_huge_pages(0);
        if (w->rc) {
            const char *m = s->be.errmsg ? s->be.errmsg(s->be.ctx) : NULL;
            snprintf(w->err, sizeof w->err, "%s", m && *m ? m : qd_strerror(w->rc));
        }
        return;
    }
    /* Lines to parse go back to the loop parsed (work_done), to be queued like any
     * other request; the rest run together. */
    size_t m = 0;
    for (size_t i = 0; i < w->n; i++) {
        slot *sl = SLOT_OF(w->items[i]);
        if (sl->cls != CLS_PARSE) {
            w->reqs[m++] = sl->req;
            continue;
        }
        if (qd_proto_parse(&s->proto, sl->line, sl->it.cost, &sl->c->peer, &sl->req))
            sl->req = NULL; /* out of memory: answered on the loop */
        qd_free(sl->line);
        sl->line = NULL;
    }
    if (m == 0)
        return;
    qd_enc_ws *ws = ws_get(s);
    if (ws)
        qd_proto_run(&s->proto, ws, w->reqs, m);
    for (size_t i = 0, j = 0; i < w->n; i++) {
        slot *sl = SLOT_OF(w->items[i]);
        if (sl->cls == CLS_PARSE)
            continue;
        qd_req *r = w->reqs[j];
        w->reqs[j++] = NULL;
        /* A switch of model is an operator's event: logged like SIGHUP's. */
        if (ws && r->op == QD_OP_RELOAD && r->switched)
            qd_server_log("reload (uid %u): switched from model %s to %s",
                          (unsigned)sl->c->peer.uid, r->from_fp, r->to_fp);
        if (ws) {
            sl->code = r->code;
            qd_proto_reply(&s->proto, r, &sl->out, &sl->len);
        } else {
            sl->code = QD_CODE_INTERNAL;
            qd_proto_error_line(QD_CODE_INTERNAL, "out of memory", &sl->out, &sl->len);
        }
        qd_proto_req_free(&s->proto, r);
        sl->req = NULL;
    }
    ws_put(s, ws);
}

static void work_free(work *w)
{
    qd_free(w->items);
    qd_free(w->reqs);
    qd_free(w);
}

static void on_ckpt_timer(uv_timer_t *t);

/* The periodic checkpoint timer at the configured interval. */
static void ckpt_timer_regular(qd_server *s)
{
    if (s->o.checkpoint_s <= 0)
        return;
    uint64_t ms = (uint64_t)(s->o.checkpoint_s * 1e3);
    uv_timer_start(&s->ckpt_timer, on_ckpt_timer, ms ? ms : 1, ms ? ms : 1);
}

/* A checkpoint failed while running (a full disk, an I/O error): the index in memory
 * serves and SQLite holds every change, so nothing is lost; the next try comes after a
 * wait that doubles with each failure in a row, up to 32 intervals (at most 5 minutes
 * unless the interval itself is longer), so a full disk is not hammered. */
static void ckpt_backoff(qd_server *s, const char *err)
{
    s->ckpt_fails++;
    double base = s->o.checkpoint_s > 0 ? s->o.checkpoint_s : 30;
    double cap = 32 * base < 300 ? 32 * base : base > 300 ? base : 300;
    s->ckpt_delay_s = s->ckpt_delay_s > 0 ? 2 * s->ckpt_delay_s : 2 * base;
    if (s->ckpt_delay_s > cap)
        s->ckpt_delay_s = cap;
    qd_log(QD_LOG_WARN, "checkpoint failed (%llu in a row): %s; serving from memory, %llu changes "
                  "not yet in the index file; next try in %.1f s",
                  (unsigned long long)s->ckpt_fails, err, (unsigned long long)s->dirty,
                  s->ckpt_delay_s);
    if (s->o.checkpoint_s > 0)
        uv_timer_start(&s->ckpt_timer, on_ckpt_timer, (uint64_t)(s->ckpt_delay_s * 1e3), 0);
}

/* A checkpoint succeeded: after failures, back to the regular interval. */
static void ckpt_recovered(qd_server *s)
{
    if (!s->ckpt_fails)
        return;
    qd_server_log("checkpoint succeeded after %llu failures", (unsigned long long)s->ckpt_fails);
    s->ckpt_fails = 0;
    s->ckpt_delay_s = 0;
    ckpt_timer_regular(s);
}

/* The least share of what waits that a search worker takes (qd_sched_limits.min_share),
 * as the store says: it changes with the store's size, so it is asked again after each
 * write (loop thread). */
static void update_min_share(qd_server *s)
{
    if (s->be.search_batch)
        s->sched.lim.min_share = s->be.search_batch(s->be.ctx, s->sched.lim.min_share);
}

static void work_done(uv_work_t *req, int status)
{
    work *w = (work *)req;
    qd_server *s = w->srv;
    (void)status; /* nothing is ever canceled */
    if (w->kind == W_RELOAD) {
        qd_sched_writer_done(&s->sched);
        /* A switch is a write the FAISS file must get, like the reload op's: should
         * the switch's own checkpoint fail, the next ones retry it. */
        if (w->rc == 0) {
            s->dirty++;
            update_min_share(s);
            qd_server_log("SIGHUP: switched from model %s to %s", w->from_fp, w->to_fp);
        }
        else if (w->rc == QD_ERR_NOTFOUND)
            qd_server_log("SIGHUP: no model is staged; the model is unchanged");
        else
            qd_log(QD_LOG_ERR, "SIGHUP: the switch to the staged model failed: %s; the "
                   "model is unchanged", w->err);
        work_free(w);
        qd_server_maybe_finish(s);
        return;
    }
    if (w->kind == W_PAGES) {
        qd_sched_writer_done(&s->sched);
        work_free(w);
        qd_server_maybe_finish(s);
        return;
    }
    if (w->kind == W_CHECKPOINT) {
        qd_sched_writer_done(&s->sched);
        if (w->rc) {
            if (s->state != S_RUNNING) {
                qd_log(QD_LOG_ERR, "checkpoint failed: %s", w->err);
                s->ckpt_failed = 1;
            } else {
                ckpt_backoff(s, w->err);
            }
        } else {
            s->dirty -= w->dirty;
            s->checkpoints++;
            ckpt_recovered(s);
        }
        work_free(w);
        qd_server_maybe_finish(s);
        return;
    }
    if (w->kind == W_WRITE) {
        qd_sched_writer_done(&s->sched);
        update_min_share(s);
    } else {
        qd_sched_reads_done(&s->sched, w->heavy);
    }
    for (size_t i = 0; i < w->n; i++) {
        slot *sl = SLOT_OF(w->items[i]);
        /* The client's next request may now be free to start: the check handle's
         * dispatch, after this round, sees it. */
        qd_sched_item_done(&s->sched, &sl->it);
        if (sl->cls == CLS_PARSE) {
            /* A long line, parsed: queue it (or answer it), then take the client's
             * later lines. The reference keeps c while its slot may be freed. */
            client *c = sl->c;
            qd_req *r = sl->req;
            sl->req = NULL;
            c->parsing = 0;
            c->refs++;
            if (r)
                admit(c, sl, r, sl->it.cost, 1);
            else
                qd_conn_slot_error(sl, QD_CODE_INTERNAL, "out of memory");
            if (!c->closing)
                qd_conn_process_input(c);
            qd_conn_unref(c);
            continue;
        }
        if (w->kind == W_WRITE && sl->code == QD_CODE_OK)
            s->dirty++;
        qd_conn_slot_done(sl, sl->out, sl->len, sl->code);
    }
    work_free(w);
    qd_server_maybe_finish(s);
}

static work *work_new(qd_server *s, int kind, size_t n)
{
    work *w = qd_calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->srv = s;
    w->kind = kind;
    w->w.data = s;
    w->cap = n;
    if (n) {
        w->items = qd_mallocarray(n, sizeof *w->items);
        w->reqs = qd_mallocarray(n, sizeof *w->reqs);
        if (!w->items || !w->reqs) {
            work_free(w);
            return NULL;
        }
    }
    return w;
}

static int work_submit(qd_server *s, work *w)
{
    int rc = uv_queue_work(&s->loop, &w->w, work_run, work_done);
    QD_ASSERT(rc == 0); /* only fails for a NULL work callback */
    return rc;
}

/* A batch from the scheduler into a new work item of `kind` (W_READ or W_WRITE), its
 * requests beside their items; NULL if none is ready (or out of memory: everything
 * stays queued for the next try). */
static work *take_batch(qd_server *s, int kind)
{
    size_t lim = kind == W_READ ? s->o.search_batch : s->o.write_batch;
    /* At most one request per text of the batch, and no more than wait. */
    size_t cap = lim < s->sched.queued ? lim : s->sched.queued;
    if (cap == 0)
        return NULL;
    work *w = work_new(s, kind, cap);
    if (!w)
        return NULL;
    w->n = kind == W_READ ? qd_sched_take_reads(&s->sched, w->items, cap, &w->heavy)
                          : qd_sched_take_writes(&s->sched, w->items, cap);
    if (w->n == 0) {
        work_free(w);
        return NULL;
    }
    for (size_t i = 0; i < w->n; i++)
        w->reqs[i] = SLOT_OF(w->items[i])->req;
    return w;
}

/* Hands waiting requests to free workers (loop thread). */
static void dispatch(qd_server *s)
{
    work *w;
    while (qd_sched_reads_free(&s->sched) && (w = take_batch(s, W_READ)) != NULL)
        work_submit(s, w);
    if (s->sched.write_running)
        return;
    if (s->ckpt_wanted && s->dirty) {
        if (!(w = work_new(s, W_CHECKPOINT, 0)))
            return;
        w->pages = s->o.huge_pages;
        s->ckpt_wanted = 0;
        w->dirty = s->dirty;
        qd_sched_claim_writer(&s->sched);
        work_submit(s, w);
        return;
    }
    s->ckpt_wanted = 0;
    /* SIGHUP's switch waits for the writer like any write; requests that arrived
     * before it was asked for may go first. */
    if (s->reload_wanted && s->state == S_RUNNING) {
        if (!(w = work_new(s, W_RELOAD, 0)))
            return;
        w->pages = s->o.huge_pages;
        s->reload_wanted = 0;
        qd_sched_claim_writer(&s->sched);
        work_submit(s, w);
        return;
    }
    if ((w = take_batch(s, W_WRITE)) != NULL)
        work_submit(s, w);
}

/* --- the loop's own handles ----------------------------------------------------------- */

static void on_check(uv_check_t *h)
{
    qd_server *s = h->data;
    qd_conn_flush_all(s);
    dispatch(s);
    qd_server_maybe_finish(s);
}

static void on_ckpt_timer(uv_timer_t *t)
{
    qd_server *s = t->data;
    if (s->dirty) {
        s->ckpt_wanted = 1;
        /* Now, not at the next check: with no I/O the loop would sleep until the
         * next timer before running the check handle. */
        dispatch(s);
    }
}

static void on_drain_timer(uv_timer_t *t)
{
    qd_server *s = t->data;
    if (s->nclients)
        qd_server_log("shutdown: dropping %zu clients that did not take their replies",
              s->nclients);
    qd_conn_close_all(s);
}

static void on_signal(uv_signal_t *h, int signum)
{
    qd_server *s = h->data;
    if (s->state == S_RUNNING) {
        qd_server_log("%s: shutting down (%zu requests queued, %zu clients)",
              signum == SIGTERM ? "SIGTERM" : "SIGINT", s->sched.queued, s->nclients);
        s->state = S_DRAINING;
        uv_close((uv_handle_t *)&s->listener, NULL);
        qd_listen_unlink(s);
        uv_timer_stop(&s->ckpt_timer);
        uv_timer_stop(&s->idle_timer);
        uint64_t ms = s->o.drain_s > 0 ? (uint64_t)(s->o.drain_s * 1e3) : 0;
        uv_timer_start(&s->drain_timer, on_drain_timer, ms, 0);
        for (client *c = s->clients; c; c = c->next) {
            if (c->closing)
                continue;
            c->input_closed = 1;
            c->in_len = 0;
            qd_conn_process_input(c); /* stops reading */
            qd_conn_maybe_close(c);
        }
    } else if (s->state == S_DRAINING) {
        qd_server_log("second signal: dropping clients now");
        qd_conn_close_all(s);
    }
}

/* The timer that closes clients past their timeouts, at a pace set by the options. */
static void sweep_timer_start(qd_server *s)
{
    const qd_server_opts *o = &s->o;
    uv_timer_stop(&s->idle_timer);
    if (o->request_timeout_s > 0 || o->idle_timeout_s > 0) {
        /* A sweep every quarter of the shorter timeout (at most a second), so a client
         * is closed at most 25% (or a second) after its time is up. */
        double t = o->request_timeout_s > 0 ? o->request_timeout_s : o->idle_timeout_s;
        if (o->idle_timeout_s > 0 && o->idle_timeout_s < t)
            t = o->idle_timeout_s;
        uint64_t ms = (uint64_t)(t * 250);
        ms = ms < 10 ? 10 : ms > 1000 ? 1000 : ms;
        uv_timer_start(&s->idle_timer, qd_conn_on_idle_timer, ms, ms);
    }
}

/* 1 if the options are within what the server can work with. */
static int opts_valid(const qd_server_opts *o)
{
    return o->socket_path && *o->socket_path && o->threads >= 1 && o->threads <= 256 &&
           o->max_clients >= 1 && o->max_inflight >= 1 && o->search_batch >= 1 &&
           o->write_batch >= 1 && o->max_queued >= 1 && o->batch_results >= 1 &&
           o->batch_bytes >= 1 && o->pause_output >= 1 && o->limits.max_line >= 16 &&
           o->limits.max_k >= 1 && o->limits.max_text >= 1 && o->limits.max_batch >= 1 &&
           o->limits.max_reply >= 256 && o->socket_mode <= 0777;
}

/* SIGHUP: the options again, applied where they can change while serving (server.h),
 * and the switch to a staged model (run by the writer).
 * The handler's limits are plain words that workers read while parsing long lines
 * and formatting replies; each is replaced whole, and a request sees the old or the
 * new value. */
static void on_hup(uv_signal_t *h, int signum)
{
    (void)signum;
    qd_server *s = h->data;
    if (s->state != S_RUNNING)
        return;
    /* A model staged by qdup-index reembed is switched to by the writer (dispatch),
     * while queries go on. */
    if (s->be.reload)
        s->reload_wanted = 1;
    if (!s->o.reload) {
        qd_server_log("SIGHUP: no configuration to reload");
        return;
    }
    qd_server_opts n = s->o;
    if (s->o.reload(s->o.reload_ctx, &n) != 0 || !opts_valid(&n)) {
        qd_log(QD_LOG_ERR, "SIGHUP: the configuration has errors; keeping the current "
               "configuration");
        return;
    }
    uint32_t *uids = NULL;
    if (n.n_write_uids) {
        uids = qd_mallocarray(n.n_write_uids, sizeof *uids);
        if (!uids) {
            qd_log(QD_LOG_ERR, "SIGHUP: out of memory; keeping the current configuration");
            return;
        }
        memcpy(uids, n.write_uids, n.n_write_uids * sizeof *uids);
    }
    if (strcmp(n.socket_path, s->socket_path) != 0)
        qd_log(QD_LOG_WARN, "socket: changed in the configuration; takes effect at the next start");
    if (n.socket_mode != s->o.socket_mode)
        qd_log(QD_LOG_WARN, "socket-mode: changed in the configuration; takes effect at the "
               "next start");
    if (n.threads != s->o.threads)
        qd_log(QD_LOG_WARN, "threads: changed in the configuration; takes effect at the next start");
    n.socket_path = s->socket_path;
    n.socket_mode = s->o.socket_mode;
    n.threads = s->o.threads;
    n.write_uids = uids;
    qd_free(s->write_uids);
    s->write_uids = uids;
    s->o = n;
    s->proto.lim = n.limits;
    s->proto.search_pad = n.search_pad;
    s->sched.lim.search_batch = n.search_batch;
    s->sched.lim.split = !n.whole_batches;
    s->sched.lim.batch_results = n.batch_results;
    s->sched.lim.batch_bytes = n.batch_bytes;
    s->sched.lim.write_batch = n.write_batch;
    s->sched.lim.max_queued = n.max_queued;
    s->sched.lim.max_queued_bytes = n.max_queued_bytes;
    /* A checkpoint backing off after failures keeps its wait; the new interval applies
     * once one succeeds. */
    if (!s->ckpt_fails) {
        uv_timer_stop(&s->ckpt_timer);
        ckpt_timer_regular(s);
    }
    sweep_timer_start(s);
    qd_server_log("SIGHUP: configuration reloaded");
}

/* At shutdown, once nothing is queued, running or connected: checkpoint if needed,
 * then close the loop's own handles so that uv_run returns. */
void qd_server_maybe_finish(qd_server *s)
{
    if (s->state != S_DRAINING || !qd_sched_idle(&s->sched) || s->nclients || s->flush_list)
        return;
    if (s->dirty && !s->ckpt_failed) {
        work *w = work_new(s, W_CHECKPOINT, 0);
        if (w) {
            qd_server_log("saving the index (%llu changes since the last checkpoint)",
                  (unsigned long long)s->dirty);
            w->dirty = s->dirty;
            qd_sched_claim_writer(&s->sched);
            work_submit(s, w);
            return;
        }
        s->ckpt_failed = 1;
    }
    s->state = S_FINISHED;
    uv_close((uv_handle_t *)&s->check, NULL);
    uv_close((uv_handle_t *)&s->ckpt_timer, NULL);
    uv_close((uv_handle_t *)&s->drain_timer, NULL);
    uv_close((uv_handle_t *)&s->idle_timer, NULL);
    uv_close((uv_handle_t *)&s->sig_term, NULL);
    uv_close((uv_handle_t *)&s->sig_int, NULL);
    uv_close((uv_handle_t *)&s->sig_hup, NULL);
}

/* --- life cycle --------------------------------------------------------------------- */

int qd_server_new(const qd_server_opts *o, const qd_backend *be, qd_server **out,
                  char *err, size_t errlen)
{
    *out = NULL;
    if (!o->socket_path || !*o->socket_path)
        return qd_errf(err, errlen, QD_ERR_INVAL, "no socket path given");
    if (!opts_valid(o))
        return qd_errf(err, errlen, QD_ERR_INVAL, "server option out of range");

    int rc = QD_ERR_NOMEM;
    qd_server *s = qd_calloc(1, sizeof *s);
    if (!s)
        return qd_errf(err, errlen, QD_ERR_NOMEM, "out of memory");
    s->o = *o;
    s->be = *be;
    s->owner = geteuid();
    s->t_start = qd_now();
    s->refusals.burst = 10;
    pthread_mutex_init(&s->ws_mu, NULL);
    s->socket_path = qd_strndup(o->socket_path, strlen(o->socket_path));
    if (o->n_write_uids) {
        s->write_uids = qd_mallocarray(o->n_write_uids, sizeof *s->write_uids);
        if (s->write_uids)
            memcpy(s->write_uids, o->write_uids, o->n_write_uids * sizeof *s->write_uids);
    }
    if (!s->socket_path || (o->n_write_uids && !s->write_uids)) {
        qd_errf(err, errlen, QD_ERR_NOMEM, "out of memory");
        goto fail;
    }
    s->o.socket_path = s->socket_path;
    s->o.write_uids = s->write_uids;
    s->proto.be = &s->be;
    s->proto.lim = o->limits;
    s->proto.search_pad = o->search_pad;
    s->proto.rank = o->rank;
    qd_sched_limits lim = {
        .threads = o->threads,
        .search_batch = o->search_batch,
        .split = !o->whole_batches,
        .batch_results = o->batch_results,
        .batch_bytes = o->batch_bytes,
        .write_batch = o->write_batch,
        .max_queued = o->max_queued,
        .max_queued_bytes = o->max_queued_bytes,
    };
    qd_sched_init(&s->sched, &lim);
    update_min_share(s);

    /* The pool: one thread per search worker and one for the writer. libuv reads this
     * when the first work item is queued. */
    char nthreads[16];
    snprintf(nthreads, sizeof nthreads, "%d", o->threads + 1);
    setenv("UV_THREADPOOL_SIZE", nthreads, 1);
    /* A client that disconnects must cost an EPIPE, not the process. */
    struct sigaction sa = {.sa_handler = SIG_IGN};
    sigaction(SIGPIPE, &sa, NULL);
    /* jansson seeds its hash function on first use; do it before threads race to. */
    json_object_seed(0);

    int urc = uv_loop_init(&s->loop);
    if (urc < 0) {
        rc = qd_errf(err, errlen, QD_ERR_IO, "uv_loop_init: %s", uv_strerror(urc));
        goto fail;
    }
    s->loop_ready = 1;
    uv_pipe_init(&s->loop, &s->listener, 0);
    uv_check_init(&s->loop, &s->check);
    uv_timer_init(&s->loop, &s->ckpt_timer);
    uv_timer_init(&s->loop, &s->drain_timer);
    uv_timer_init(&s->loop, &s->idle_timer);
    uv_signal_init(&s->loop, &s->sig_term);
    uv_signal_init(&s->loop, &s->sig_int);
    uv_signal_init(&s->loop, &s->sig_hup);
    s->handles_ready = 1;
    s->listener.data = s;
    s->check.data = s;
    s->ckpt_timer.data = s;
    s->drain_timer.data = s;
    s->idle_timer.data = s;
    s->sig_term.data = s;
    s->sig_int.data = s;
    s->sig_hup.data = s;

    if ((rc = qd_listen_bind(s, err, errlen)) != 0)
        goto fail;
    uv_check_start(&s->check, on_check);
    uv_signal_start(&s->sig_term, on_signal, SIGTERM);
    uv_signal_start(&s->sig_int, on_signal, SIGINT);
    uv_signal_start(&s->sig_hup, on_hup, SIGHUP);
    ckpt_timer_regular(s);
    /* Changes the FAISS file lacks from before this start (its checkpoint at open
     * failed: a full disk) are saved like this run's own. */
    qd_store_info info;
    if (s->be.info && s->be.info(s->be.ctx, &info) == 0) {
        s->dirty = info.unsaved_changes;
        s->ckpt_fails = info.checkpoint_failing ? info.checkpoint_failures : 0;
    }
    sweep_timer_start(s);
    /* Huge pages at start, in the writer's slot: searches are served meanwhile (on
     * small pages), writes wait for it (about 3 ms per MiB collapsed). */
    work *pw = s->o.huge_pages ? work_new(s, W_PAGES, 0) : NULL;
    if (pw) {
        qd_sched_claim_writer(&s->sched);
        work_submit(s, pw);
    }
    /* The readiness line scripts and tests wait for. */
    qd_server_log("listening on %s%s", s->socket_path,
                  s->activated ? " (socket from systemd)" : "");
    *out = s;
    return 0;
fail:
    qd_server_free(s);
    return rc;
}

int qd_server_run(qd_server *s)
{
    uv_run(&s->loop, UV_RUN_DEFAULT);
    int rc = s->ckpt_failed ? QD_ERR_IO : 0;
    int lrc = uv_loop_close(&s->loop);
    if (lrc != 0) {
        qd_log(QD_LOG_ERR, "uv_loop_close: %s", uv_strerror(lrc));
        rc = QD_ERR_IO;
    } else {
        s->loop_ready = 0;
    }
    uint64_t served = 0;
    for (int op = 0; op < QD_OP_COUNT; op++)
        served += s->requests[op];
    qd_server_log("stopped: %llu requests served, %llu checkpoints",
          (unsigned long long)served,
          (unsigned long long)s->checkpoints);
    return rc;
}

static void close_any(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

void qd_server_free(qd_server *s)
{
    if (!s)
        return;
    if (s->loop_ready) {
        /* Only reached when new failed or run did not finish: close what is open. */
        qd_listen_unlink(s);
        uv_walk(&s->loop, close_any, NULL);
        uv_run(&s->loop, UV_RUN_DEFAULT);
        uv_loop_close(&s->loop);
    }
    qd_listen_unlink(s);
    for (size_t i = 0; i < s->ws_n; i++)
        qd_enc_ws_free(s->ws_pool[i]);
    qd_free(s->ws_pool);
    pthread_mutex_destroy(&s->ws_mu);
    qd_free(s->write_uids);
    qd_free(s->socket_path);
    qd_free(s);
}
