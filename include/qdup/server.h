/*
 * server.h - qdup-daemon's libuv server: a Unix socket, many clients, the protocol of
 * proto.h, work on libuv's thread pool.
 *
 * One event loop thread owns every handle: it accepts clients, reads and parses their
 * lines, queues the work, and writes the replies back in request order. Each client
 * has its own queue; a free search worker takes the next request of each client in
 * turn (round robin) into one batch, capped by texts, results and text bytes, and
 * runs it as one encoding pass and one search per (k, min_score); writes (add,
 * remove, check with store) go through a single writer, round robin too, consecutive
 * adds in one transaction, so that no more than one pool thread ever waits on the
 * store's write lock. A client that does not read its replies stops being read.
 * Files: server.c (the loop, dispatch to the pool, checkpoints, signals, shutdown),
 * sched.c (the scheduling policy, no sockets: sched.h), conn.c (connections, lines,
 * reply order, back-pressure, limits, timeouts), listen.c (the socket, access control);
 * their shared internals are in daemon/server_impl.h.
 */
#ifndef QDUP_SERVER_H
#define QDUP_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "qdup/proto.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct qd_server_opts {
    const char *socket_path;  /* where to listen (required) */
    unsigned socket_mode;     /* permission bits of the socket file (0660) */
    int threads;              /* search workers (processors + 1, at most 64); the
                                 writer has one more thread */
    size_t max_clients;       /* connections at once; more are answered busy (1024) */
    size_t max_queued;        /* requests waiting for a worker, all clients together;
                                 more are answered busy (4096) */
    size_t max_inflight;      /* a client's requests not yet answered; past it the
                                 server stops reading from that client (64) */
    size_t max_output;        /* a client's reply bytes not yet taken by the socket;
                                 past it the client is dropped (8 MiB) */
    size_t max_output_total;  /* the same over all clients; past it the client with
                                 the most is dropped (256 MiB) */
    size_t max_queued_bytes;  /* line bytes of the requests waiting, all clients;
                                 past it new ones are answered busy (64 MiB) */
    size_t search_batch;      /* most texts encoded and searched together (64) */
    int whole_batches;        /* 1: a free worker takes all that waits, up to the caps;
                                 0 (default): what waits is shared among the free
                                 workers (sched.h, qd_sched_take_reads) */
    size_t batch_results;     /* most results (k for each text) in one batch, unless
                                 a single request asks for more (1000) */
    size_t batch_bytes;       /* most bytes of question text in one batch, unless a
                                 single request has more (4 KiB) */
    size_t pause_output;      /* a client owed more reply bytes than this (unsent,
                                 or estimated for requests not yet answered) is not
                                 read from until it takes some (256 KiB) */
    size_t write_batch;       /* most adds committed together (256) */
    double checkpoint_s;      /* seconds between checkpoints while there are writes
                                 (30; 0: only at shutdown) */
    double drain_s;           /* at shutdown, seconds to wait for clients to take
                                 their replies (10) */
    double request_timeout_s; /* a request line must be complete this many seconds
                                 after its first byte, or the client is answered
                                 bad_request and closed (30; 0: no limit) */
    double idle_timeout_s;    /* a client with nothing sent, owed or pending for this
                                 many seconds is closed (0: never, the default) */
    int owner_only;           /* 1: only the daemon's own uid may connect at all */
    const uint32_t *write_uids; /* (n_write_uids) uids that may write */
    size_t n_write_uids;
    int write_group_set;      /* 1: members of write_gid may write */
    uint32_t write_gid;       /* the writers' group */
    qd_proto_limits limits;   /* request and reply sizes (max_reply 4 MiB here) */
    size_t search_pad;        /* see qd_proto.search_pad */
    /* SIGHUP: fills *o with the options as configured now (the current ones on entry)
     * and returns 0, or returns nonzero (having said why) to keep the current ones.
     * NULL: SIGHUP is only logged. See qd_server_run for what changes live. */
    int (*reload)(void *ctx, struct qd_server_opts *o);
    void *reload_ctx;         /* reload's first argument */
    qd_rank_mode rank;        /* see qd_proto.rank (0: fused) */
    int huge_pages;           /* 1 (default): the process's large buffers are put on
                                 2 MiB pages (hugepage.h) at start, in the writer's
                                 slot, and after each checkpoint and switch of model */
} qd_server_opts;

/* The defaults above (socket_path NULL). */
void qd_server_opts_default(qd_server_opts *o);

typedef struct qd_server qd_server;

/* Binds the socket (replacing a stale socket file nobody answers on; any other file
 * at the path is an error, left alone), sets its mode and prepares the loop. be must
 * outlive the server. Sets UV_THREADPOOL_SIZE, so call it before anything else in the
 * process uses libuv's thread pool. Logs "listening on PATH" when ready. */
int qd_server_new(const qd_server_opts *o, const qd_backend *be, qd_server **out,
                  char *err, size_t errlen);

/* Serves until SIGTERM or SIGINT, then stops accepting, finishes the queued work,
 * writes the remaining replies (for at most drain_s seconds), checkpoints, closes
 * every handle and removes the socket file. Returns 0, or QD_ERR_IO if the final
 * checkpoint failed or the loop could not be closed cleanly. */
int qd_server_run(qd_server *s);
/* On SIGHUP it asks o.reload for the options again and applies them at once: limits,
 * timeouts, batch sizes, checkpoint interval and write permissions (for connections
 * accepted from then on). The socket, its mode and the number of threads are fixed at
 * start: a change of those is logged as waiting for the next start. Options that fail
 * the checks of qd_server_new are refused whole and the current ones kept. SIGHUP also
 * asks the writer to switch the backend to a model staged by qdup-index reembed
 * (qd_backend.reload, as the reload op does): queries go on meanwhile, and the
 * outcome is logged ("no model is staged" when there is none). */

/* Frees the server; NULL is a no-op. */
void qd_server_free(qd_server *s);

#ifdef __cplusplus
}
#endif

#endif
