/*
 * sched.h - the daemon's scheduler: which waiting request runs next, and with which
 * others. No sockets, no libuv, no threads: plain data structures driven by the
 * server's loop thread, so that its policy can be tested directly (tests/test_sched.c).
 *
 * Owns: the per-client queues of waiting requests (in request order), the ring of
 * clients with waiting requests served round robin, admission against the queue
 * budget (max_queued requests, max_queued_bytes line bytes), batches for the search
 * workers capped by cost (texts, results, text bytes; a request over a cap alone goes
 * alone as a "heavy" batch, at most threads - 1 of them at once), batches for the one
 * writer (joinable writes, i.e. adds, round robin up to write_batch; any other write
 * alone), read/write ordering per client (a read waits for the client's earlier writes
 * at work, a write for its earlier reads), and the cancellation of a departed client's
 * waiting reads. The caller embeds a qd_sched_client in each connection and a
 * qd_sched_item in each request, and gets its own structures back with offsetof.
 */
#ifndef QDUP_SCHED_H
#define QDUP_SCHED_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* What an item needs to run. */
typedef enum qd_sched_kind {
    QD_SCHED_READ = 0, /* a query, get, stats: any search worker */
    QD_SCHED_WRITE,    /* add, remove, check with store: the one writer */
    QD_SCHED_PARSE,    /* a long line to parse: a search worker, and it waits for
                          nothing (parsing changes nothing) */
} qd_sched_kind;

typedef struct qd_sched_client qd_sched_client;

/* One request as the scheduler sees it (embedded in the caller's request). The caller
 * fills kind, joins, texts, results, bytes and cost before qd_sched_push. */
typedef struct qd_sched_item {
    struct qd_sched_item *next; /* the client's next waiting item (its queue) */
    qd_sched_client *owner;     /* whose it is (set by qd_sched_push) */
    int kind;                   /* a qd_sched_kind */
    int joins;                  /* a write that may share a batch with other joining
                                   writes (an add) */
    size_t texts;               /* a read's cost: texts to encode (at least 1) */
    size_t results;             /* results to rank and format (at least 1) */
    size_t bytes;               /* bytes of text to encode */
    size_t cost;                /* line bytes, counted in queued_bytes from
                                   qd_sched_push until done or cancelled */
} qd_sched_item;

/* A client as the scheduler sees it (embedded in the caller's connection, zeroed). */
struct qd_sched_client {
    qd_sched_item *head, *tail; /* its waiting items, oldest first */
    qd_sched_client *next;      /* the ring of clients with waiting items */
    qd_sched_client *prev;
    int in_ring;                /* 1 while on that ring */
    size_t reads_out;           /* its reads (and parses) at work */
    size_t writes_out;          /* its writes at work */
};

/* The policy's numbers (see qd_server_opts for their meaning and defaults). */
typedef struct qd_sched_limits {
    int threads;             /* search workers */
    size_t search_batch;     /* most texts in a read batch */
    size_t batch_results;    /* most results in a read batch */
    size_t batch_bytes;      /* most text bytes in a read batch */
    size_t write_batch;      /* most joinable writes in a write batch */
    int split;               /* 1: share what waits among the free search workers */
    size_t min_share;        /* with split: a share is at least this many items (0 or
                                1: as split says); the server sets it from the store
                                (qd_backend.search_batch) */
    size_t max_queued;       /* waiting items, all clients, before busy */
    size_t max_queued_bytes; /* line bytes waiting or at work before busy */
} qd_sched_limits;

typedef struct qd_sched {
    qd_sched_limits lim;     /* the policy */
    qd_sched_client *rcur;   /* the ring as the search workers see it: asked first */
    qd_sched_client *wcur;   /* the same ring's client the writer asks first */
    size_t nring;            /* clients on the ring */
    size_t queued;           /* items waiting */
    size_t queued_bytes;     /* line bytes of items waiting or at work */
    int reads_running;       /* read batches at work */
    int heavy_running;       /* those of them that are heavy */
    int write_running;       /* 1 while the writer is busy (a batch or a checkpoint) */
} qd_sched;

/* An empty scheduler with these limits. Nothing to free. */
void qd_sched_init(qd_sched *s, const qd_sched_limits *lim);

/* 1 if a new request of `len` line bytes from c must be refused (answered busy): the
 * waiting items are over budget and c already has some of them. A client with nothing
 * waiting is always admitted, so those filling the queue cannot starve the others. */
int qd_sched_over_budget(const qd_sched *s, const qd_sched_client *c, size_t len);

/* Appends it to c's queue; c joins the ring just behind the search workers' position,
 * so it has its turn after those already waiting. */
void qd_sched_push(qd_sched *s, qd_sched_client *c, qd_sched_item *it);

/* 1 if a search worker is free and something waits (a batch may be taken). */
int qd_sched_reads_free(const qd_sched *s);

/* A batch for a free search worker, into out (room for cap >= min(search_batch,
 * queued) items): round the ring from where the last batch stopped, the next ready
 * read of each client in turn, until the batch is full by texts, results or bytes (the
 * first item always fits) or no client has a read ready; the client whose item did not
 * fit is asked first next time. With lim.split, a batch also stops at its share of
 * what waits: ceil(queued / free search workers) items, so that eight requests and
 * two free workers make two batches of four rather than one of eight and an idle
 * worker; but a share is at least lim.min_share items, for a store whose search costs
 * about the same for that many queries as for one. Returns the items taken (0: none
 * ready or no worker free) and in *heavy whether the batch is one item over a cap. The
 * batch counts as running until qd_sched_reads_done. */
size_t qd_sched_take_reads(qd_sched *s, qd_sched_item **out, size_t cap, int *heavy);

/* A batch for the writer, if it is free, into out (room for cap >= min(write_batch,
 * queued)): a write that does not join goes alone; otherwise the next ready joining
 * write of each client in turn, up to write_batch. Returns the items taken; if any,
 * the writer is busy until qd_sched_writer_done. */
size_t qd_sched_take_writes(qd_sched *s, qd_sched_item **out, size_t cap);

/* Takes the writer for other work (a checkpoint): 1 if it was free, 0 if busy. */
int qd_sched_claim_writer(qd_sched *s);

/* An item taken by a batch is finished: its client's later items may start. */
void qd_sched_item_done(qd_sched *s, qd_sched_item *it);

/* A read batch is back (heavy as taken). */
void qd_sched_reads_done(qd_sched *s, int heavy);

/* The writer is free again. */
void qd_sched_writer_done(qd_sched *s);

/* Takes c's waiting reads and parses out of its queue (c is gone: nobody will read
 * their replies) and returns them as a list linked by `next`, their bytes no longer
 * counted; its writes stay queued (they arrived whole and are carried out). */
qd_sched_item *qd_sched_cancel_reads(qd_sched *s, qd_sched_client *c);

/* 1 if nothing waits and nothing runs. */
int qd_sched_idle(const qd_sched *s);

#ifdef __cplusplus
}
#endif

#endif
