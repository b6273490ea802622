/*
 * server.c - the libuv server of qdup-daemon (server.h).
 *
 * Threads. The loop thread owns every handle and every client; the pool threads only
 * run qd_proto_run() and qd_proto_reply() on requests handed to them (and
 * qd_proto_parse() on long lines), and the after-work callback (loop thread again)
 * takes the replies back. A uv_check handle runs after each round of I/O, so one
 * dispatch sees every request that round read, and a free worker takes many at once:
 * under load, batches grow by themselves. The loop parses lines up to 4 KiB itself;
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
 *
 * Access. At accept the peer's uid, gid (SO_PEERCRED) and groups (SO_PEERGROUPS)
 * decide whether it may connect at all (owner_only) and whether it may write; the
 * handler refuses writes of a peer that may not with "forbidden", logged with the uid.
 *
 * Shutdown (SIGTERM, SIGINT): close the listener and unlink the socket, stop reading,
 * let queued work finish and replies drain (at most drain_s), checkpoint if anything
 * changed, close every handle; uv_loop_close() must then succeed. A second signal
 * drops the clients at once (cancelling their waiting reads).
 */
#include "qdup/server.h"

#include <errno.h>
#include <grp.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <uv.h>

#include "qdup/common.h"
#include "qdup/sched.h"

#define READ_BUF_SIZE (64 * 1024)
#define PARSE_INLINE_MAX 4096   /* longer lines are parsed by a worker */

/* A slot's class while its line waits for a worker to parse it (the qd_req_class
 * values are 0 and up). */
enum { CLS_PARSE = -1 };
#define LAT_WINDOW 8192 /* latencies kept for the percentiles in stats */
#define MAX_BUFS_PER_WRITE 64
#define EST_REPLY_BASE 128 /* bytes of a reply before its results (an estimate) */
#define EST_RESULT 64      /* bytes of one result in a reply: a low estimate, so that
                              back-pressure never comes early for a client that reads */

typedef struct client client;

/* One request's place in its client's reply order. */
typedef struct slot {
    qd_sched_item it;    /* its place in the scheduler (it.cost: bytes of its line) */
    struct slot *next;   /* the client's next request */
    client *c;           /* whose request (holds a reference) */
    qd_req *req;         /* the parsed request until it is run */
    char *line;          /* CLS_PARSE: a copy of the line, for a worker to parse */
    char *out;           /* the reply line once done (NULL: could not be made) */
    size_t len;          /* its length */
    int done;            /* 1 when out is set */
    int cancelled;       /* 1 if dropped unrun because its client went away */
    int code;            /* the reply's qd_proto_code */
    int op;              /* the request's qd_op (QD_OP_NONE if unparsed) */
    int cls;             /* its qd_req_class, or CLS_PARSE */
    size_t owed;         /* bytes counted for it in its client's `owed`: the reply's
                            estimated size until done, then its real size until
                            handed to libuv */
    double t0;           /* when the line was read (qd_now) */
} slot;

/* A connection. */
struct client {
    uv_pipe_t pipe;      /* first: libuv hands this pointer back */
    qd_server *srv;          /* owner */
    client *prev, *next; /* the server's list of open clients */
    client *fnext;       /* the server's list of clients to flush */
    qd_peer peer;        /* who it is and whether it may write */
    char *in;            /* bytes read and not yet cut into lines */
    size_t in_len;       /* bytes in `in` */
    size_t in_cap;       /* bytes allocated */
    slot *head, *tail;   /* requests not yet written back, oldest first */
    size_t inflight;     /* slots in head..tail */
    size_t writes;       /* uv_write requests not yet completed */
    size_t out_pending;  /* bytes of those requests */
    qd_sched_client q;   /* its queue of requests not yet at work, and those at work */
    size_t owed;         /* reply bytes owed and not yet handed to libuv (the sum of
                            its slots' `owed`) */
    int out_paused;      /* 1 while not read because owed + unsent > pause_output */
    int reading;         /* 1 while uv_read_start is in effect */
    int eof;             /* the peer will send nothing more */
    int input_closed;    /* no more requests will be taken from this client */
    int closing;         /* uv_close has been called */
    int flush_queued;    /* on the flush list */
    int parsing;         /* 1 while a line of it waits for a worker to parse it: its
                            later lines are not taken until then */
    int refs;            /* the handle until its close callback, plus each slot */
    double t_partial;    /* when the unfinished line in `in` began (qd_now; 0: none) */
    double t_active;     /* when bytes last came in or a reply last went out */
};

enum { W_READ, W_WRITE, W_CHECKPOINT };

/* A unit of pool work. */
typedef struct work {
    uv_work_t w;         /* first */
    qd_server *srv;          /* owner */
    int kind;            /* W_READ, W_WRITE or W_CHECKPOINT */
    int heavy;           /* W_READ: one request over a batch cap on its own */
    size_t n;            /* requests */
    size_t cap;          /* room for requests */
    qd_sched_item **items; /* (cap) their slots' scheduler items, n used */
    qd_req **reqs;       /* (cap) the requests */
    uint64_t dirty;      /* checkpoint: writes it covers */
    int rc;              /* checkpoint: outcome */
    char err[256];       /* checkpoint: detail of a failure */
} work;

/* A uv_write and the reply buffers it owns. */
typedef struct wreq {
    uv_write_t req;      /* first */
    size_t n;            /* buffers */
    size_t bytes;        /* their total size */
    char *outs[MAX_BUFS_PER_WRITE]; /* (n) reply lines, freed in the callback */
} wreq;

/* Recent latencies in a ring. */
typedef struct lat_ring {
    double ms[LAT_WINDOW]; /* the last min(n, LAT_WINDOW) latencies */
    size_t n;              /* latencies ever recorded */
} lat_ring;

enum { S_RUNNING, S_DRAINING, S_FINISHED };

struct qd_server {
    uv_loop_t loop;         /* the event loop */
    uv_pipe_t listener;     /* the listening socket */
    uv_signal_t sig_term;   /* SIGTERM */
    uv_signal_t sig_int;    /* SIGINT */
    uv_check_t check;       /* dispatch and flush, after each round of I/O */
    uv_timer_t ckpt_timer;  /* periodic checkpoints */
    uv_timer_t drain_timer; /* bounds the wait for clients at shutdown */
    uv_timer_t idle_timer;  /* closes clients past request_timeout_s / idle_timeout_s */
    int loop_ready;         /* 1 once uv_loop_init succeeded */
    int handles_ready;      /* 1 once every handle above is initialized */
    qd_server_opts o;       /* options (write_uids and socket_path copied below) */
    uint32_t *write_uids;   /* (o.n_write_uids) copy */
    char *socket_path;      /* copy */
    int socket_bound;       /* 1 if the socket file is ours to unlink */
    dev_t sock_dev;         /* the socket file we created, to unlink only it */
    ino_t sock_ino;
    uid_t owner;            /* the daemon's effective uid */
    qd_backend be;          /* the store */
    qd_proto proto;         /* the handler */
    client *clients;        /* open clients */
    size_t nclients;        /* clients not yet closed */
    client *flush_list;     /* clients with replies to write */
    qd_sched sched;         /* the clients' queues and the workers' batches */
    size_t out_total;       /* reply bytes handed to libuv and not yet written, all
                               clients */
    int ckpt_wanted;        /* the timer asked for a checkpoint */
    uint64_t dirty;         /* acknowledged writes since the last checkpoint */
    int ckpt_failed;        /* the final checkpoint failed */
    int state;              /* S_RUNNING, S_DRAINING, S_FINISHED */
    double t_start;         /* qd_now() at start */
    uint64_t requests[QD_OP_COUNT]; /* by op */
    uint64_t errors[QD_CODE_COUNT]; /* by code */
    uint64_t clients_total, clients_refused, clients_dropped, checkpoints;
    uint64_t cancelled;     /* waiting requests dropped because their client left */
    lat_ring lat_search;    /* queries and other reads */
    lat_ring lat_write;     /* writes */
    pthread_mutex_t ws_mu;  /* guards the workspace pool */
    qd_enc_ws **ws_pool;    /* (ws_n) idle encoding workspaces */
    size_t ws_n, ws_cap;
    char rbuf[READ_BUF_SIZE]; /* every read lands here, then is copied per client */
};

/* --- small helpers -------------------------------------------------------------------- */

__attribute__((format(printf, 1, 2))) static void qd_server_log(const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    fprintf(stderr, "qdup-daemon: %s\n", buf);
}

void qd_server_opts_default(qd_server_opts *o)
{
    memset(o, 0, sizeof *o);
    o->socket_mode = 0660;
    o->threads = 2;
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
    qd_proto_limits_default(&o->limits);
    o->limits.max_reply = 4u * 1024 * 1024; /* below max_output: a reply alone never
                                               gets a reading client dropped */
}

static void lat_push(lat_ring *r, double ms)
{
    r->ms[r->n % LAT_WINDOW] = ms;
    r->n++;
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

/* --- clients ------------------------------------------------------------------------ */

static void client_flush_later(client *c);
static void client_close(client *c);
static void process_input(client *c);
static void maybe_finish(qd_server *s);
static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf);

static void client_unref(client *c)
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
    client_unref(c);
    maybe_finish(s);
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
    client_unref(c);
}

/* --- the scheduler's side (sched.h) --------------------------------------------------- */

#define SLOT_OF(item) ((slot *)((char *)(item) - offsetof(slot, it)))

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

static void client_close(client *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    c->input_closed = 1;
    cancel_waiting(c);
    /* Replies that are ready but unsent go now, with the cancelled requests; those
     * still at work or waiting (writes) are dropped when they come back (slot_done
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
static void client_maybe_close(client *c)
{
    if (!c->closing && c->input_closed && c->inflight == 0 && c->writes == 0)
        client_close(c);
}

/* Unlinks a slot of a closing client from its reply list and frees it. */
static void slot_forget(slot *sl)
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
static void slot_done(slot *sl, char *out, size_t len, int code)
{
    client *c = sl->c;
    qd_server *s = c->srv;
    sl->out = out;
    sl->len = len;
    sl->code = code;
    sl->done = 1;
    c->owed = c->owed - sl->owed + len; /* the estimate gives way to the real size */
    sl->owed = len;
    if (code > 0 && code < QD_CODE_COUNT)
        s->errors[code]++;
    double ms = (qd_now() - sl->t0) * 1e3;
    if (sl->op == QD_OP_ADD || sl->op == QD_OP_REMOVE || sl->op == QD_OP_CHECK)
        lat_push(&s->lat_write, ms);
    else if (sl->op == QD_OP_QUERY || sl->op == QD_OP_GET)
        lat_push(&s->lat_search, ms);
    if (c->closing) {
        slot_forget(sl); /* the client is gone: forget the reply */
        return;
    }
    client_flush_later(c);
}

/* Answers a request right away (errors found while parsing, ping). */
static void slot_reply_error(slot *sl, int code, const char *msg)
{
    char *out = NULL;
    size_t len = 0;
    qd_proto_error_line(code, msg, &out, &len);
    slot_done(sl, out, len, code);
}

static slot *slot_new(client *c)
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

static void on_write(uv_write_t *req, int status)
{
    wreq *w = (wreq *)req;
    client *c = (client *)req->handle;
    for (size_t i = 0; i < w->n; i++)
        qd_free(w->outs[i]);
    c->out_pending -= w->bytes;
    c->srv->out_total -= w->bytes;
    qd_free(w);
    c->writes--;
    c->t_active = qd_now();
    if (status < 0 && !c->closing) {
        client_close(c); /* EPIPE, ECONNRESET: the peer is gone */
        return;
    }
    /* The peer took some replies: if their bytes held its input back, read again. */
    if (!c->closing && c->out_paused)
        process_input(c);
    client_maybe_close(c);
}

/* Drops a client that does not read its replies. */
static void client_drop(client *c, const char *whose)
{
    qd_server_log("dropping client (uid %u, pid %d): %zu bytes of replies not read, over %s limit",
          (unsigned)c->peer.uid, (int)c->peer.pid, c->out_pending, whose);
    c->srv->clients_dropped++;
    client_close(c);
}

/* Writes the done slots at the head of the list (loop thread). */
static void client_flush(client *c)
{
    qd_server *s = c->srv;
    while (!c->closing && c->head && c->head->done) {
        wreq *w = qd_calloc(1, sizeof *w);
        if (!w) {
            client_close(c);
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
            client_close(c);
            return;
        }
        int rc = uv_write(&w->req, (uv_stream_t *)&c->pipe, bufs, (unsigned)w->n, on_write);
        if (rc < 0) {
            for (size_t i = 0; i < w->n; i++)
                qd_free(w->outs[i]);
            qd_free(w);
            client_close(c);
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
    process_input(c);
    client_maybe_close(c);
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

static void flush_all(qd_server *s)
{
    while (s->flush_list) {
        client *c = s->flush_list;
        s->flush_list = c->fnext;
        c->flush_queued = 0;
        if (!c->closing)
            client_flush(c);
        client_unref(c);
    }
}

/* --- reading requests ----------------------------------------------------------------- */

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
    return st;
}

/* The size of r's reply as back-pressure counts it before it is made. */
static size_t reply_estimate(const qd_req *r)
{
    return EST_REPLY_BASE + r->ntexts * r->k * EST_RESULT;
}

/* 1 if c may have more of its lines taken: room for more requests in flight and not
 * owed too many reply bytes (see the header). */
static int may_take(const client *c)
{
    const qd_server_opts *o = &c->srv->o;
    return c->inflight < o->max_inflight &&
           c->owed + c->pipe.write_queue_size <= o->pause_output;
}

/* 1 if a request of `len` line bytes must be answered busy: the waiting requests are
 * over budget and this client already has some of them (see the header). */
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
    if (r->code == QD_CODE_FORBIDDEN)
        qd_server_log("forbidden: uid %u gid %u pid %d may not %s", (unsigned)c->peer.uid,
              (unsigned)c->peer.gid, (int)c->peer.pid, qd_proto_op_name(r->op));
    if (r->cls != QD_REQ_DONE && r->cls != QD_REQ_WRITE && c->closing) {
        /* Parsed for a client that has gone: a read is not worth running. */
        qd_proto_req_free(&s->proto, r);
        s->cancelled++;
        slot_forget(sl);
        return;
    }
    if (r->cls != QD_REQ_DONE && !queued && over_budget(c, len)) {
        qd_proto_req_free(&s->proto, r);
        slot_reply_error(sl, QD_CODE_BUSY, "too many requests are waiting; try again later");
        return;
    }
    if (r->cls == QD_REQ_DONE) {
        char *out = NULL;
        size_t olen = 0;
        qd_proto_reply(&s->proto, r, &out, &olen);
        int code = r->code;
        qd_proto_req_free(&s->proto, r);
        slot_done(sl, out, olen, code);
        return;
    }
    if (r->op == QD_OP_STATS && r->cls == QD_REQ_READ)
        r->stats = stats_snapshot(s);
    sl->req = r;
    sl->cls = r->cls;
    c->owed -= sl->owed;
    sl->owed = reply_estimate(r);
    c->owed += sl->owed;
    wait_push(s, sl, len);
}

static void handle_line(client *c, const char *line, size_t len)
{
    qd_server *s = c->srv;
    if (is_blank(line, len))
        return;
    slot *sl = slot_new(c);
    if (!sl) {
        client_close(c);
        return;
    }
    if (len > PARSE_INLINE_MAX) {
        /* A long line: a worker parses it (see the header). Until it is back, the
         * client's later lines wait, so that its queue stays in request order. */
        if (over_budget(c, len)) {
            slot_reply_error(sl, QD_CODE_BUSY, "too many requests are waiting; try again later");
            return;
        }
        if (!(sl->line = qd_malloc(len))) {
            slot_reply_error(sl, QD_CODE_INTERNAL, "out of memory");
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
        slot_reply_error(sl, QD_CODE_INTERNAL, "out of memory");
        return;
    }
    admit(c, sl, r, len, 0);
}

/* Cuts complete lines out of the input buffer and handles them, as long as the client
 * has room for more requests in flight (and no line of it is being parsed by a
 * worker); then decides whether to read more. */
static void process_input(client *c)
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
            slot *sl = slot_new(c);
            if (sl) {
                char msg[128];
                snprintf(msg, sizeof msg, "the request line is over the limit of %zu bytes",
                         s->o.limits.max_line);
                slot_reply_error(sl, QD_CODE_TOO_LARGE, msg);
            }
            c->input_closed = 1;
            off = c->in_len;
            break;
        }
        if (!nl && !c->eof)
            break; /* a partial line: wait for the rest */
        handle_line(c, start, len);
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
            process_input(c);
            client_maybe_close(c);
        } else {
            client_close(c);
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
            client_close(c);
            return;
        }
        c->in = p;
        c->in_cap = cap;
    }
    memcpy(c->in + c->in_len, c->srv->rbuf, (size_t)nread);
    c->in_len = need;
    process_input(c);
}

/* --- access control ------------------------------------------------------------------- */

static int peer_in_group(int fd, const struct ucred *cr, gid_t gid)
{
    if (cr->gid == gid)
        return 1;
#ifdef SO_PEERGROUPS
    gid_t small[64], *g = small;
    socklen_t len = sizeof small;
    int found = 0;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, g, &len) != 0) {
        if (errno != ERANGE)
            return 0;
        g = qd_malloc(len);
        if (!g || getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, g, &len) != 0) {
            qd_free(g);
            return 0;
        }
    }
    for (size_t i = 0; i < len / sizeof *g; i++)
        found |= g[i] == gid;
    if (g != small)
        qd_free(g);
    return found;
#else
    return 0;
#endif
}

/* Reads the peer's credentials and decides what it may do. */
static void peer_identify(qd_server *s, client *c)
{
    uv_os_fd_t fd;
    struct ucred cr;
    socklen_t len = sizeof cr;
    int restricted = s->o.n_write_uids > 0 || s->o.write_group_set;
    c->peer = (qd_peer){.may_write = !restricted};
    if (uv_fileno((uv_handle_t *)&c->pipe, &fd) != 0 ||
        getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) != 0)
        return; /* unknown peer: may read, may not write when writes are restricted */
    c->peer.known = 1;
    c->peer.uid = cr.uid;
    c->peer.gid = cr.gid;
    c->peer.pid = cr.pid;
    int may = !restricted;
    for (size_t i = 0; !may && i < s->o.n_write_uids; i++)
        may = s->write_uids[i] == cr.uid;
    if (!may && s->o.write_group_set)
        may = peer_in_group(fd, &cr, s->o.write_gid);
    c->peer.may_write = may;
}

static void on_connection(uv_stream_t *server, int status)
{
    qd_server *s = server->data;
    if (status < 0) {
        qd_server_log("accept: %s", uv_strerror(status));
        return;
    }
    client *c = qd_calloc(1, sizeof *c);
    if (!c) {
        qd_server_log("accept: out of memory");
        return;
    }
    c->srv = s;
    c->refs = 1;
    uv_pipe_init(&s->loop, &c->pipe, 0);
    c->next = s->clients;
    if (s->clients)
        s->clients->prev = c;
    s->clients = c;
    s->nclients++;
    if (uv_accept(server, (uv_stream_t *)&c->pipe) != 0) {
        client_close(c);
        return;
    }
    s->clients_total++;
    c->t_active = qd_now();
    peer_identify(s, c);

    const char *refuse = NULL;
    int code = QD_CODE_BUSY;
    char msg[160];
    if (s->state != S_RUNNING) {
        refuse = "the server is shutting down";
    } else if (s->nclients > s->o.max_clients) {
        snprintf(msg, sizeof msg, "too many clients (at most %zu); try again later",
                 s->o.max_clients);
        refuse = msg;
    } else if (s->o.owner_only && (!c->peer.known || c->peer.uid != s->owner)) {
        snprintf(msg, sizeof msg, "uid %u may not connect: only uid %u may",
                 (unsigned)c->peer.uid, (unsigned)s->owner);
        refuse = msg;
        code = QD_CODE_FORBIDDEN;
        qd_server_log("forbidden: uid %u gid %u pid %d may not connect", (unsigned)c->peer.uid,
              (unsigned)c->peer.gid, (int)c->peer.pid);
    }
    if (refuse) {
        s->clients_refused++;
        c->input_closed = 1;
        slot *sl = slot_new(c);
        if (!sl) {
            client_close(c);
            return;
        }
        slot_reply_error(sl, code, refuse);
        return;
    }
    process_input(c); /* starts reading */
}

/* --- work ----------------------------------------------------------------------------- */

static void work_run(uv_work_t *req)
{
    work *w = (work *)req;
    qd_server *s = w->srv;
    if (w->kind == W_CHECKPOINT) {
        w->rc = s->be.checkpoint(s->be.ctx);
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

static void work_done(uv_work_t *req, int status)
{
    work *w = (work *)req;
    qd_server *s = w->srv;
    (void)status; /* nothing is ever canceled */
    if (w->kind == W_CHECKPOINT) {
        qd_sched_writer_done(&s->sched);
        if (w->rc) {
            qd_server_log("checkpoint failed: %s", w->err);
            if (s->state != S_RUNNING)
                s->ckpt_failed = 1;
        } else {
            s->dirty -= w->dirty;
            s->checkpoints++;
        }
        work_free(w);
        maybe_finish(s);
        return;
    }
    if (w->kind == W_WRITE)
        qd_sched_writer_done(&s->sched);
    else
        qd_sched_reads_done(&s->sched, w->heavy);
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
                slot_reply_error(sl, QD_CODE_INTERNAL, "out of memory");
            if (!c->closing)
                process_input(c);
            client_unref(c);
            continue;
        }
        if (w->kind == W_WRITE && sl->code == QD_CODE_OK)
            s->dirty++;
        slot_done(sl, sl->out, sl->len, sl->code);
    }
    work_free(w);
    maybe_finish(s);
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
        s->ckpt_wanted = 0;
        w->dirty = s->dirty;
        qd_sched_claim_writer(&s->sched);
        work_submit(s, w);
        return;
    }
    s->ckpt_wanted = 0;
    if ((w = take_batch(s, W_WRITE)) != NULL)
        work_submit(s, w);
}

/* --- the loop's own handles ----------------------------------------------------------- */

static void on_check(uv_check_t *h)
{
    qd_server *s = h->data;
    flush_all(s);
    dispatch(s);
    maybe_finish(s);
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

/* Closes clients whose request line is overdue (answered first) or that idled too
 * long. Closing only starts here: each stays in the list until its close callback. */
static void on_idle_timer(uv_timer_t *t)
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
            slot *sl = slot_new(c);
            if (sl)
                slot_reply_error(sl, QD_CODE_BAD_REQUEST, msg);
            else
                client_close(c);
            if (!c->closing)
                process_input(c); /* stops reading; closes once the answer is out */
            overdue++;
        } else if (it > 0 && c->inflight == 0 && c->writes == 0 && c->in_len == 0 &&
                   now - c->t_active > it) {
            client_close(c);
            idle++;
        }
    }
    if (overdue || idle)
        qd_server_log("closed %zu clients whose request line was not finished within %g s and %zu "
              "idle for %g s", overdue, rt, idle, it);
    /* The answers go now: with no other I/O the loop would sleep before its check. */
    if (overdue)
        flush_all(s);
}

static void close_all_clients(qd_server *s)
{
    for (client *c = s->clients; c; c = c->next)
        client_close(c);
}

static void on_drain_timer(uv_timer_t *t)
{
    qd_server *s = t->data;
    if (s->nclients)
        qd_server_log("shutdown: dropping %zu clients that did not take their replies",
              s->nclients);
    close_all_clients(s);
}

static void unlink_socket(qd_server *s)
{
    struct stat st;
    if (s->socket_bound && lstat(s->socket_path, &st) == 0 && st.st_dev == s->sock_dev &&
        st.st_ino == s->sock_ino)
        unlink(s->socket_path);
    s->socket_bound = 0;
}

static void on_signal(uv_signal_t *h, int signum)
{
    qd_server *s = h->data;
    if (s->state == S_RUNNING) {
        qd_server_log("%s: shutting down (%zu requests queued, %zu clients)",
              signum == SIGTERM ? "SIGTERM" : "SIGINT", s->sched.queued, s->nclients);
        s->state = S_DRAINING;
        uv_close((uv_handle_t *)&s->listener, NULL);
        unlink_socket(s);
        uv_timer_stop(&s->ckpt_timer);
        uv_timer_stop(&s->idle_timer);
        uint64_t ms = s->o.drain_s > 0 ? (uint64_t)(s->o.drain_s * 1e3) : 0;
        uv_timer_start(&s->drain_timer, on_drain_timer, ms, 0);
        for (client *c = s->clients; c; c = c->next) {
            if (c->closing)
                continue;
            c->input_closed = 1;
            c->in_len = 0;
            process_input(c); /* stops reading */
            client_maybe_close(c);
        }
    } else if (s->state == S_DRAINING) {
        qd_server_log("second signal: dropping clients now");
        close_all_clients(s);
    }
}

/* At shutdown, once nothing is queued, running or connected: checkpoint if needed,
 * then close the loop's own handles so that uv_run returns. */
static void maybe_finish(qd_server *s)
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
}

/* --- the socket --------------------------------------------------------------------- */

/* Makes way for binding at path: nothing there is fine; a socket nobody answers on is
 * stale and removed; anything else is an error and is left alone. */
static int clear_socket_path(const char *path, char *err, size_t errlen)
{
    struct stat st;
    if (lstat(path, &st) != 0) {
        if (errno == ENOENT)
            return 0;
        return qd_errf(err, errlen, QD_ERR_IO, "%s: %s", path, strerror(errno));
    }
    if (!S_ISSOCK(st.st_mode))
        return qd_errf(err, errlen, QD_ERR_EXISTS,
                       "%s exists and is not a socket; not replacing it", path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return qd_errf(err, errlen, QD_ERR_IO, "socket: %s", strerror(errno));
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int rc = connect(fd, (struct sockaddr *)&sa, sizeof sa);
    int e = errno;
    close(fd);
    if (rc == 0)
        return qd_errf(err, errlen, QD_ERR_EXISTS,
                       "another server is listening on %s", path);
    if (e != ECONNREFUSED)
        return qd_errf(err, errlen, QD_ERR_IO, "%s: cannot tell whether it is in use: %s",
                       path, strerror(e));
    if (unlink(path) != 0 && errno != ENOENT)
        return qd_errf(err, errlen, QD_ERR_IO, "cannot remove stale socket %s: %s", path,
                       strerror(errno));
    qd_server_log("removed stale socket %s", path);
    return 0;
}

static int bind_socket(qd_server *s, char *err, size_t errlen)
{
    const char *path = s->socket_path;
    struct sockaddr_un sa;
    if (strlen(path) >= sizeof sa.sun_path)
        return qd_errf(err, errlen, QD_ERR_INVAL,
                       "socket path %s is %zu bytes; at most %zu fit", path, strlen(path),
                       sizeof sa.sun_path - 1);
    int rc = clear_socket_path(path, err, errlen);
    if (rc)
        return rc;
    /* Created with no more permission than asked for, then set exactly. */
    mode_t old = umask(0777 & ~(mode_t)s->o.socket_mode);
    int urc = uv_pipe_bind(&s->listener, path);
    umask(old);
    if (urc < 0)
        return qd_errf(err, errlen, QD_ERR_IO, "bind %s: %s", path, uv_strerror(urc));
    struct stat st;
    if (chmod(path, (mode_t)s->o.socket_mode) != 0 || lstat(path, &st) != 0) {
        int e = errno;
        unlink(path);
        return qd_errf(err, errlen, QD_ERR_IO, "chmod %s: %s", path, strerror(e));
    }
    s->socket_bound = 1;
    s->sock_dev = st.st_dev;
    s->sock_ino = st.st_ino;
    urc = uv_listen((uv_stream_t *)&s->listener, 1024, on_connection);
    if (urc < 0)
        return qd_errf(err, errlen, QD_ERR_IO, "listen %s: %s", path, uv_strerror(urc));
    return 0;
}

/* --- life cycle --------------------------------------------------------------------- */

int qd_server_new(const qd_server_opts *o, const qd_backend *be, qd_server **out,
                  char *err, size_t errlen)
{
    *out = NULL;
    if (!o->socket_path || !*o->socket_path)
        return qd_errf(err, errlen, QD_ERR_INVAL, "no socket path given");
    if (o->threads < 1 || o->threads > 256 || o->max_clients < 1 || o->max_inflight < 1 ||
        o->search_batch < 1 || o->write_batch < 1 || o->max_queued < 1 ||
        o->batch_results < 1 || o->batch_bytes < 1 || o->pause_output < 1 ||
        o->limits.max_line < 16 || o->limits.max_k < 1 || o->limits.max_text < 1 ||
        o->limits.max_batch < 1 || o->limits.max_reply < 256 || o->socket_mode > 0777)
        return qd_errf(err, errlen, QD_ERR_INVAL, "server option out of range");

    int rc = QD_ERR_NOMEM;
    qd_server *s = qd_calloc(1, sizeof *s);
    if (!s)
        return qd_errf(err, errlen, QD_ERR_NOMEM, "out of memory");
    s->o = *o;
    s->be = *be;
    s->owner = geteuid();
    s->t_start = qd_now();
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
    qd_sched_limits lim = {
        .threads = o->threads,
        .search_batch = o->search_batch,
        .batch_results = o->batch_results,
        .batch_bytes = o->batch_bytes,
        .write_batch = o->write_batch,
        .max_queued = o->max_queued,
        .max_queued_bytes = o->max_queued_bytes,
    };
    qd_sched_init(&s->sched, &lim);

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
    s->handles_ready = 1;
    s->listener.data = s;
    s->check.data = s;
    s->ckpt_timer.data = s;
    s->drain_timer.data = s;
    s->idle_timer.data = s;
    s->sig_term.data = s;
    s->sig_int.data = s;

    if ((rc = bind_socket(s, err, errlen)) != 0)
        goto fail;
    uv_check_start(&s->check, on_check);
    uv_signal_start(&s->sig_term, on_signal, SIGTERM);
    uv_signal_start(&s->sig_int, on_signal, SIGINT);
    if (o->checkpoint_s > 0) {
        uint64_t ms = (uint64_t)(o->checkpoint_s * 1e3);
        uv_timer_start(&s->ckpt_timer, on_ckpt_timer, ms ? ms : 1, ms ? ms : 1);
    }
    if (o->request_timeout_s > 0 || o->idle_timeout_s > 0) {
        /* A sweep every quarter of the shorter timeout (at most a second), so a client
         * is closed at most 25% (or a second) after its time is up. */
        double t = o->request_timeout_s > 0 ? o->request_timeout_s : o->idle_timeout_s;
        if (o->idle_timeout_s > 0 && o->idle_timeout_s < t)
            t = o->idle_timeout_s;
        uint64_t ms = (uint64_t)(t * 250);
        ms = ms < 10 ? 10 : ms > 1000 ? 1000 : ms;
        uv_timer_start(&s->idle_timer, on_idle_timer, ms, ms);
    }
    /* The readiness line scripts and tests wait for. */
    fprintf(stderr, "listening on %s\n", s->socket_path);
    fflush(stderr);
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
        qd_server_log("uv_loop_close: %s", uv_strerror(lrc));
        rc = QD_ERR_IO;
    } else {
        s->loop_ready = 0;
    }
    qd_server_log("stopped: %llu requests served, %llu checkpoints",
          (unsigned long long)(s->requests[QD_OP_QUERY] + s->requests[QD_OP_ADD] +
                               s->requests[QD_OP_REMOVE] + s->requests[QD_OP_GET] +
                               s->requests[QD_OP_CHECK] + s->requests[QD_OP_STATS] +
                               s->requests[QD_OP_PING]),
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
        unlink_socket(s);
        uv_walk(&s->loop, close_any, NULL);
        uv_run(&s->loop, UV_RUN_DEFAULT);
        uv_loop_close(&s->loop);
    }
    unlink_socket(s);
    for (size_t i = 0; i < s->ws_n; i++)
        qd_enc_ws_free(s->ws_pool[i]);
    qd_free(s->ws_pool);
    pthread_mutex_destroy(&s->ws_mu);
    qd_free(s->write_uids);
    qd_free(s->socket_path);
    qd_free(s);
}
