/*
 * server_impl.h - what the files of the daemon's server share (not a public API).
 *
 * The server is three files around the scheduler (sched.c): server.c owns the loop,
 * the request dispatch to the pool, checkpoints, signals and the life cycle; conn.c
 * owns the connections (input buffers, lines, reply order, writes, back-pressure,
 * timeouts); listen.c owns the socket (binding, the stale-socket check) and access
 * control at accept. All of it runs on the loop thread except work_run (server.c).
 */
#ifndef QDUP_SERVER_IMPL_H
#define QDUP_SERVER_IMPL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <uv.h>

#include "qdup/log.h"
#include "qdup/proto.h"
#include "qdup/sched.h"
#include "qdup/server.h"

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

enum { W_READ, W_WRITE, W_CHECKPOINT, W_RELOAD, W_PAGES };

/* A unit of pool work. */
typedef struct work {
    uv_work_t w;         /* first */
    qd_server *srv;          /* owner */
    int kind;            /* W_READ, W_WRITE, W_CHECKPOINT, W_RELOAD (SIGHUP's) or
                            W_PAGES (huge pages at start) */
    int heavy;           /* W_READ: one request over a batch cap on its own */
    int pages;           /* W_CHECKPOINT, W_RELOAD: collapse huge pages after it (not
                            at shutdown, where nothing would gain from them) */
    size_t n;            /* requests */
    size_t cap;          /* room for requests */
    qd_sched_item **items; /* (cap) their slots' scheduler items, n used */
    qd_req **reqs;       /* (cap) the requests */
    uint64_t dirty;      /* checkpoint: writes it covers */
    int rc;              /* checkpoint, reload: outcome */
    char err[256];       /* checkpoint, reload: detail of a failure */
    char from_fp[17];    /* reload: the model before */
    char to_fp[17];      /* reload: the model after */
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
    uv_signal_t sig_hup;    /* SIGHUP: reload the configuration and switch to a staged
                               model */
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
    int activated;          /* 1 if the listening socket came from systemd */
    dev_t sock_dev;         /* the socket file we created, to unlink only it */
    ino_t sock_ino;         /* (with sock_dev) */
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
    int reload_wanted;      /* SIGHUP asked for a switch to a staged model */
    uint64_t dirty;         /* acknowledged writes since the last checkpoint */
    int ckpt_failed;        /* the final checkpoint failed */
    double ckpt_delay_s;    /* while checkpoints fail: the wait before the next try,
                               doubling up to a cap (0: they do not fail) */
    uint64_t ckpt_fails;    /* checkpoints failed in a row */
    int state;              /* S_RUNNING, S_DRAINING, S_FINISHED */
    double t_start;         /* qd_now() at start */
    uint64_t requests[QD_OP_COUNT]; /* by op */
    uint64_t errors[QD_CODE_COUNT]; /* by code */
    uint64_t replies[QD_OP_COUNT + 1][QD_CODE_COUNT]; /* by op (index op + 1; 0: not a
                                                         request) and code */
    qd_metrics_hist hist_read;      /* latencies of reads, for metrics */
    qd_metrics_hist hist_write;     /* latencies of writes */
    qd_log_limit refusals;          /* bounds the lines about refused requests */
    uint64_t clients_total, clients_refused, clients_dropped, checkpoints;
    uint64_t cancelled;     /* waiting requests dropped because their client left */
    lat_ring lat_search;    /* queries and other reads */
    lat_ring lat_write;     /* writes */
    pthread_mutex_t ws_mu;  /* guards the workspace pool */
    qd_enc_ws **ws_pool;    /* (ws_n) idle encoding workspaces */
    size_t ws_n, ws_cap;
    char rbuf[READ_BUF_SIZE]; /* every read lands here, then is copied per client */
};

/* The slot around a scheduler item. */
#define SLOT_OF(item) ((slot *)((char *)(item) - offsetof(slot, it)))

/* --- server.c ---------------------------------------------------------------------------- */

/* Logs one line at level info (log.h). */
void qd_server_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Takes one request line of c (not blank-checked), parsing it or queueing it to be. */
void qd_server_handle_line(client *c, const char *line, size_t len);
/* At shutdown, once nothing is queued, running or connected: the final checkpoint,
 * then closes the loop's own handles. */
void qd_server_maybe_finish(qd_server *s);

/* --- conn.c ------------------------------------------------------------------------------ */

/* A new client on the server's list, its pipe initialized (not yet accepted); NULL if
 * out of memory. It holds one reference (its handle's). */
client *qd_conn_new(qd_server *s);
/* Drops a reference; the last one frees c. */
void qd_conn_unref(client *c);
/* Closes c: cancels its waiting reads, frees its done replies, closes its handle. */
void qd_conn_close(client *c);
/* Closes c once it will send nothing more and everything it asked is written. */
void qd_conn_maybe_close(client *c);
/* Cuts and handles c's complete lines while it may take more; starts or stops reading. */
void qd_conn_process_input(client *c);
/* A new slot at the tail of c's reply list (holds a reference on c); NULL if out of
 * memory. */
slot *qd_conn_slot_new(client *c);
/* The slot's reply is ready (takes out): counted, and written when its turn comes. */
void qd_conn_slot_done(slot *sl, char *out, size_t len, int code);
/* Answers a slot with an error line at once. */
void qd_conn_slot_error(slot *sl, int code, const char *msg);
/* Unlinks a slot of a closing client from its reply list and frees it. */
void qd_conn_slot_forget(slot *sl);
/* Writes the replies of every client on the flush list. */
void qd_conn_flush_all(qd_server *s);
/* Starts closing every client. */
void qd_conn_close_all(qd_server *s);
/* The timer callback closing clients past request_timeout_s or idle_timeout_s. */
void qd_conn_on_idle_timer(uv_timer_t *t);

/* --- listen.c ---------------------------------------------------------------------------- */

/* Binds and listens on o.socket_path (a stale socket is replaced, anything else at the
 * path is an error), with o.socket_mode; new connections go through access control. */
int qd_listen_bind(qd_server *s, char *err, size_t errlen);
/* Removes the socket file if it is still the one we created. */
void qd_listen_unlink(qd_server *s);

#endif
