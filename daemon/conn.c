/*
 * conn.c - the daemon's connections (server_impl.h): per-client input buffers cut into
 * lines, the reply list that keeps request order, writes to the socket, back-pressure,
 * timeouts and the client's lifetime. What a line asks is server.c's business
 * (qd_server_handle_line); which request runs when is sched.c's.
 *
 * Order. Each request gets a slot at the tail of its client's reply list when its
 * line is read; work fills slots in any order, and a flush writes the done slots from
 * the head, so replies leave in request order however the work finished. The
 * scheduler starts a client's requests in order and keeps its reads and writes from
 * overtaking each other (a pipelined "add, get" sees the add).
 *
 * Back-pressure and limits. A client is not read from while it has max_inflight
 * unanswered requests, or while the reply bytes it is owed pass pause_output: those
 * handed to libuv and not yet taken by the socket, those made and waiting for an
 * earlier reply, and an estimate (64 bytes a result) for each reply not yet made. So
 * a client that does not read its replies stops being read after a few hundred KiB,
 * and one asking k=1000 has only a handful of such queries queued; its unread bytes
 * stay in the kernel. Lines are cut from a per-client buffer holding at most one
 * partial line (max_line) plus one read; a longer line is answered too_large and the
 * connection closed. Past max_output unsent bytes (replies of requests already
 * queued can still pile up) the client is dropped; over all clients, past
 * max_output_total the client with the most unsent bytes is dropped, so a thousand
 * such clients cannot add up. Past max_queued waiting requests, or max_queued_bytes of
 * their lines, new ones are answered busy, except that a client with nothing waiting
 * is always admitted (so abusers filling the queue cannot starve the others; this
 * adds at most one line per client); past max_clients, new connections are answered
 * busy. So memory is bounded by max_clients lines (partial or queued), the queued
 * bytes, the output budget and the work in flight, whatever the clients do.
 *
 * Timeouts. A request line must be complete within request_timeout_s of its first
 * byte (counted only while the server is reading from the client, so back-pressure is
 * never held against it); past that the client is answered bad_request and closed, so
 * a client sending a byte a second (a "slow loris") cannot keep its slot and its line
 * buffer for long. With idle_timeout_s, a client that has sent nothing and is owed
 * nothing for that long is closed too (off by default: pooled connections of a forum
 * may rightly sit idle, and max_clients bounds them anyway). One timer sweeps the
 * clients a few times per timeout.
 *
 * Lifetime. A client is freed when its handle is closed and no slot of it is at work
 * or waiting: a count of references (the handle, each slot) decides. When a client is
 * closed (gone, dropped, timed out), its waiting reads (and a long line not yet
 * parsed) are cancelled and freed at once, counted in stats as "cancelled"; its
 * waiting writes still run, since they arrived whole (as a write already at work
 * does), but their replies are dropped.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "qdup/common.h"
#include "server_impl.h"

static void client_flush_later(client *c);
static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf);

client *qd_conn_new(qd_server *s)
{
    client *c = qd_calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->srv = s;
    c->refs = 1;
    uv_pipe_init(&s->loop, &c->pipe, 0);
    c->next = s->clients;
    if (s->clients)
        s->clients->prev = c;
    s->clients = c;
    s->nclients++;
    return c;
}

void qd_conn_unref(client *c)
{
    QD_ASSERT(c->refs > 0);
    if (--c->refs == 0) {
        qd_free(c->in);
        qd_free(c);
    }
}

static void on_client_closed(uv_handle_t *h)
{
    client *c = (client *)h;
    qd_server *s = c->srv;
    if (c->prev)
        c->prev->next = c->next;
    else
        s->clients = c->next;
    if (c->next)
        c->next->prev = c->prev;
    s->nclients--;
    qd_conn_unref(c);
    qd_server_maybe_finish(s);
}

/* Frees a slot and its reply, dropping its reference on the client. */
static void slot_free(slot *sl)
{
    client *c = sl->c;
    c->owed -= sl->owed;
    qd_free(sl->out);
    qd_free(sl->line);
    qd_free(sl);
    c->inflight--;
    qd_conn_unref(c);
}

static void lat_push(lat_ring *r, double ms)
{
    r->ms[r->n % LAT_WINDOW] = ms;
    r->n++;
}

/* Drops the reads waiting in c's queue (c is closing: nobody will read the replies).
 * Its writes stay: they arrived whole and are carried out. */
static void cancel_waiting(client *c)
{
    qd_server *s = c->srv;
    qd_sched_item *it = qd_sched_cancel_reads(&s->sched, &c->q), *next;
    for (; it; it = next) {
        next = it->next;
        slot *sl = SLOT_OF(it);
        qd_proto_req_free(&s->proto, sl->req);
        sl->req = NULL;
        sl->cancelled = 1;
        s->cancelled++;
    }
}

void qd_conn_close(client *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    c->input_closed = 1;
    cancel_waiting(c);
    /* Replies that are ready but unsent go now, with the cancelled requests; those
     * still at work or waiting (writes) are dropped when they come back (qd_conn_slot_done
     * sees `closing`). The handle's reference keeps c alive meanwhile. */
    slot *keep = NULL, **kp = &keep, *next;
    c->tail = NULL;
    for (slot *sl = c->head; sl; sl = next) {
        next = sl->next;
        if (sl->done || sl->cancelled) {
            slot_free(sl);
        } else {
            *kp = sl;
            kp = &sl->next;
            c->tail = sl;
        }
    }
    *kp = NULL;
    c->head = keep;
    uv_close((uv_handle_t *)&c->pipe, on_client_closed);
}

/* Closes a client that will send nothing more once everything it asked is answered
 * and written. */
void qd_conn_maybe_close(client *c)
{
    if (!c->closing && c->input_closed && c->inflight == 0 && c->writes == 0)
        qd_conn_close(c);
}

/* Unlinks a slot of a closing client from its reply list and frees it. */
void qd_conn_slot_forget(slot *sl)
{
    client *c = sl->c;
    slot **pp = &c->head;
    while (*pp != sl)
        pp = &(*pp)->next;
    *pp = sl->next;
    c->tail = NULL;
    for (slot *x = c->head; x; x = x->next)
        c->tail = x;
    slot_free(sl);
}

/* A slot's reply is ready (loop thread). */
void qd_conn_slot_done(slot *sl, char *out, size_t len, int code)
{
    client *c = sl->c;
    qd_server *s = c->srv;
    sl->out = out;
    sl->len = len;
    sl->code = code;
    sl->done = 1;
    c->owed = c->owed - sl->owed + len; /* the estimate gives way to the real size */
    sl->owed = len;
    if (code > 0 && code < QD_CODE_COUNT) {
        s->errors[code]++;
        /* One line per refused or bad request (forbidden ones too), bounded: a client
         * can provoke them. The reply's error object is JSON, so it is safe to log. */
        const char *e = out ? strstr(out, "\"error\":") : NULL;
        qd_log_limited(&s->refusals, QD_LOG_INFO, "%s: uid %u gid %u pid %d, op %s: %.300s",
                       qd_proto_code_name(code), (unsigned)c->peer.uid,
                       (unsigned)c->peer.gid, (int)c->peer.pid, qd_proto_op_name(sl->op),
                       e ? e + 8 : "");
    }
    if (code >= 0 && code < QD_CODE_COUNT && sl->op >= QD_OP_NONE && sl->op < QD_OP_COUNT)
        s->replies[sl->op + 1][code]++;
    double ms = (qd_now() - sl->t0) * 1e3;
    if (sl->op == QD_OP_ADD || sl->op == QD_OP_REMOVE || sl->op == QD_OP_CHECK ||
        sl->op == QD_OP_VERDICT || sl->op == QD_OP_RELOAD) {
        lat_push(&s->lat_write, ms);
        qd_metrics_hist_add(&s->hist_write, ms);
    } else if (sl->op == QD_OP_QUERY || sl->op == QD_OP_GET) {
        lat_push(&s->lat_search, ms);
        qd_metrics_hist_add(&s->hist_read, ms);
    }
    if (c->closing) {
        qd_conn_slot_forget(sl); /* the client is gone: forget the reply */
        return;
    }
    client_flush_later(c);
}

/* Answers a request right away (errors found while parsing, ping). */
void qd_conn_slot_error(slot *sl, int code, const char *msg)
{
    char *out = NULL;
    size_t len = 0;
    qd_proto_error_line(code, msg, &out, &len);
    qd_conn_slot_done(sl, out, len, code);
}

slot *qd_conn_slot_new(client *c)
{
    slot *sl = qd_calloc(1, sizeof *sl);
    if (!sl)
        return NULL;
    sl->c = c;
    sl->op = QD_OP_NONE;
    sl->t0 = qd_now();
    if (c->tail)
        c->tail->next = sl;
    else
        c->head = sl;
    c->tail = sl;
    c->inflight++;
    c->refs++;
    return sl;
}

/* Frees w and the reply lines it holds. */
static void wreq_free(wreq *w)
{
    for (size_t i = 0; i < w->n; i++)
        qd_free(w->outs[i]);
    qd_free(w);
}

static void on_write(uv_write_t *req, int status)
{
    wreq *w = (wreq *)req;
    client *c = (client *)req->handle;
    c->out_pending -= w->bytes;
    c->srv->out_total -= w->bytes;
    wreq_free(w);
    c->writes--;
    c->t_active = qd_now();
    if (status < 0 && !c->closing) {
        qd_conn_close(c); /* EPIPE, ECONNRESET: the peer is gone */
        return;
    }
    /* The peer took some replies: if their bytes held its input back, read again. */
    if (!c->closing && c->out_paused)
        qd_conn_process_input(c);
    qd_conn_maybe_close(c);
}

/* Drops a client that does not read its replies. */
static void client_drop(client *c, const char *whose)
{
    qd_log(QD_LOG_WARN, "dropping client (uid %u, pid %d): %zu bytes of replies not read, over %s limit",
          (unsigned)c->peer.uid, (int)c->peer.pid, c->out_pending, whose);
    c->srv->clients_dropped++;
    qd_conn_close(c);
}

/* Writes the done slots at the head of the list (loop thread). */
static void client_flush(client *c)
{
    qd_server *s = c->srv;
    while (!c->closing && c->head && c->head->done) {
        wreq *w = qd_calloc(1, sizeof *w);
        if (!w) {
            qd_conn_close(c);
            return;
        }
        uv_buf_t bufs[MAX_BUFS_PER_WRITE];
        while (w->n < MAX_BUFS_PER_WRITE && c->head && c->head->done) {
            slot *sl = c->head;
            if (!sl->out) {
                /* No memory even for an error line: the order cannot be kept. */
                break;
            }
            bufs[w->n] = uv_buf_init(sl->out, (unsigned)sl->len);
            w->bytes += sl->len;
            w->outs[w->n++] = sl->out;
            sl->out = NULL;
            c->head = sl->next;
            if (!c->head)
                c->tail = NULL;
            slot_free(sl);
        }
        if (w->n == 0) {
            qd_free(w);
            qd_conn_close(c);
            return;
        }
        /* Most replies fit the socket's buffer at once: write them now, and queue only
         * what it would not take (a queued uv_write costs a callback and, in libuv, an
         * epoll_ctl for every reply). uv_try_write takes nothing while earlier writes
         * are queued, so the order holds. */
        int sent = uv_try_write((uv_stream_t *)&c->pipe, bufs, (unsigned)w->n);
        if (sent < 0 && sent != UV_EAGAIN) {
            wreq_free(w);
            qd_conn_close(c); /* EPIPE, ECONNRESET: the peer is gone */
            return;
        }
        size_t first = 0;
        if (sent > 0) {
            c->t_active = qd_now();
            size_t left = (size_t)sent;
            w->bytes -= left;
            while (first < w->n && left >= bufs[first].len)
                left -= bufs[first++].len;
            if (first < w->n) {
                bufs[first].base += left;
                bufs[first].len -= (unsigned)left;
            }
        }
        if (first == w->n) {
            wreq_free(w);
            continue;
        }
        int rc = uv_write(&w->req, (uv_stream_t *)&c->pipe, bufs + first,
                          (unsigned)(w->n - first), on_write);
        if (rc < 0) {
            wreq_free(w);
            qd_conn_close(c);
            return;
        }
        c->writes++;
        c->out_pending += w->bytes;
        s->out_total += w->bytes;
        if (c->pipe.write_queue_size > s->o.max_output) {
            client_drop(c, "its");
            return;
        }
        if (s->out_total > s->o.max_output_total) {
            /* Over the budget of all clients: the one holding the most goes. */
            client *worst = c;
            for (client *x = s->clients; x; x = x->next)
                if (!x->closing && x->out_pending > worst->out_pending)
                    worst = x;
            client_drop(worst, "all clients'");
            if (worst == c)
                return;
        }
    }
    /* Answers went out: the client may send more. */
    qd_conn_process_input(c);
    qd_conn_maybe_close(c);
}

static void client_flush_later(client *c)
{
    if (c->flush_queued)
        return;
    c->flush_queued = 1;
    c->refs++;
    c->fnext = c->srv->flush_list;
    c->srv->flush_list = c;
}

void qd_conn_flush_all(qd_server *s)
{
    while (s->flush_list) {
        client *c = s->flush_list;
        s->flush_list = c->fnext;
        c->flush_queued = 0;
        if (!c->closing)
            client_flush(c);
        qd_conn_unref(c);
    }
}

/* 1 if c may have more of its lines taken: room for more requests in flight and not
 * owed too many reply bytes (see the header). */
static int may_take(const client *c)
{
    const qd_server_opts *o = &c->srv->o;
    return c->inflight < o->max_inflight &&
           c->owed + c->pipe.write_queue_size <= o->pause_output;
}

/* Cuts complete lines out of the input buffer and handles them, as long as the client
 * has room for more requests in flight (and no line of it is being parsed by a
 * worker); then decides whether to read more. */
void qd_conn_process_input(client *c)
{
    qd_server *s = c->srv;
    size_t max_line = s->o.limits.max_line;
    size_t off = 0;
    while (!c->input_closed && !c->parsing && may_take(c) && off < c->in_len) {
        char *start = c->in + off;
        size_t rem = c->in_len - off;
        char *nl = memchr(start, '\n', rem);
        size_t len = nl ? (size_t)(nl - start) : rem;
        /* A whole line is measured without its '\r'; a partial one may still get a
         * '\r' before its newline. */
        size_t eff = (len > 0 && start[len - 1] == '\r') ? len - 1 : len;
        if ((nl || c->eof) ? eff > max_line : len > max_line + 1) {
            slot *sl = qd_conn_slot_new(c);
            if (sl) {
                char msg[128];
                snprintf(msg, sizeof msg, "the request line is over the limit of %zu bytes",
                         s->o.limits.max_line);
                qd_conn_slot_error(sl, QD_CODE_TOO_LARGE, msg);
            }
            c->input_closed = 1;
            off = c->in_len;
            break;
        }
        if (!nl && !c->eof)
            break; /* a partial line: wait for the rest */
        qd_server_handle_line(c, start, len);
        off += nl ? len + 1 : len;
        if (c->closing)
            return;
    }
    if (off) {
        memmove(c->in, c->in + off, c->in_len - off);
        c->in_len -= off;
    }
    if (c->input_closed)
        c->in_len = 0;
    if (c->eof && c->in_len == 0)
        c->input_closed = 1;
    /* The unfinished line's clock: it starts with the line's first byte, so it restarts
     * whenever complete lines were taken out in front of it. */
    if (c->in_len == 0)
        c->t_partial = 0;
    else if (off || c->t_partial == 0)
        c->t_partial = qd_now();
    if (c->in_len == 0 && c->in_cap > 16384) {
        /* A long line is over: idle clients keep no large buffers. */
        qd_free(c->in);
        c->in = NULL;
        c->in_cap = 0;
    }

    int open = !c->input_closed && !c->eof && s->state == S_RUNNING;
    int want = open && !c->parsing && may_take(c);
    c->out_paused = open && c->inflight < s->o.max_inflight && !may_take(c);
    if (want && !c->reading) {
        if (uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read) == 0)
            c->reading = 1;
        /* Time spent not being read was the server's choice, not the client's. */
        if (c->t_partial)
            c->t_partial = qd_now();
    } else if (!want && c->reading) {
        uv_read_stop((uv_stream_t *)&c->pipe);
        c->reading = 0;
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    client *c = (client *)h;
    /* One buffer serves every client: its bytes are copied out before the next read. */
    *buf = uv_buf_init(c->srv->rbuf, sizeof c->srv->rbuf);
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    (void)buf;
    client *c = (client *)st;
    if (nread == 0)
        return; /* EAGAIN: nothing this time */
    if (nread < 0) {
        uv_read_stop(st);
        c->reading = 0;
        if (nread == UV_EOF) {
            /* The peer may only have shut its sending side: answer what it asked. */
            c->eof = 1;
            qd_conn_process_input(c);
            qd_conn_maybe_close(c);
        } else {
            qd_conn_close(c);
        }
        return;
    }
    c->t_active = qd_now();
    if (c->input_closed)
        return;
    size_t need = c->in_len + (size_t)nread;
    if (need > c->in_cap) {
        size_t cap = c->in_cap ? c->in_cap : 4096;
        while (cap < need)
            cap *= 2;
        char *p = qd_realloc(c->in, cap);
        if (!p) {
            qd_conn_close(c);
            return;
        }
        c->in = p;
        c->in_cap = cap;
    }
    memcpy(c->in + c->in_len, c->srv->rbuf, (size_t)nread);
    c->in_len = need;
    qd_conn_process_input(c);
}

/* Closes clients whose request line is overdue (answered first) or that idled too
 * long. Closing only starts here: each stays in the list until its close callback. */
void qd_conn_on_idle_timer(uv_timer_t *t)
{
    qd_server *s = t->data;
    double now = qd_now(), rt = s->o.request_timeout_s, it = s->o.idle_timeout_s;
    size_t overdue = 0, idle = 0;
    for (client *c = s->clients; c; c = c->next) {
        if (c->closing || c->input_closed)
            continue;
        if (rt > 0 && c->reading && c->t_partial > 0 && now - c->t_partial > rt) {
            char msg[128];
            snprintf(msg, sizeof msg, "the request line was not finished within %g s", rt);
            c->input_closed = 1;
            c->in_len = 0;
            c->t_partial = 0;
            slot *sl = qd_conn_slot_new(c);
            if (sl)
                qd_conn_slot_error(sl, QD_CODE_BAD_REQUEST, msg);
            else
                qd_conn_close(c);
            if (!c->closing)
                qd_conn_process_input(c); /* stops reading; closes once the answer is out */
            overdue++;
        } else if (it > 0 && c->inflight == 0 && c->writes == 0 && c->in_len == 0 &&
                   now - c->t_active > it) {
            qd_conn_close(c);
            idle++;
        }
    }
    if (overdue || idle)
        qd_server_log("closed %zu clients whose request line was not finished within %g s and %zu "
              "idle for %g s", overdue, rt, idle, it);
    /* The answers go now: with no other I/O the loop would sleep before its check. */
    if (overdue)
        qd_conn_flush_all(s);
}

void qd_conn_close_all(qd_server *s)
{
    for (client *c = s->clients; c; c = c->next)
        qd_conn_close(c);
}
