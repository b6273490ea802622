/*
 * proto.h - the qdup-daemon protocol: one JSON request per line in, one JSON reply per
 * line out, and the request handler behind it.
 *
 * Requests (one JSON object per line; an optional "tag" of any JSON type is echoed):
 *   {"op":"query","text":"...","k":10,"min_score":0.7,"rank":"fused"}
 *                                                       the k best stored questions
 *   {"op":"query","texts":["...","..."],"k":10}         a batch: one result list each
 *   {"op":"add","id":"...","text":"..."}                store a question
 *   {"op":"remove","id":"..."}                          remove it
 *   {"op":"get","id":"..."}                             look it up
 *   {"op":"check","id":"...","text":"...","k":5,"min_p":0.46,"store":true}
 *                                                       the k best matches of a new post,
 *                                                       each with "duplicate" (p_duplicate
 *                                                       >= min_p), then store the post
 *                                                       (unless store is false; then no
 *                                                       id is needed)
 * Each result carries id, text, score (the ranking score: fused, or the cosine with
 * "rank":"cosine"), cosine, lexical (BM25 relative to the best candidate's) and
 * p_duplicate (the model's calibrated P(duplicate); 1 for the very same text).
 * Defaults: query k 10; check k 5, min_p the model's operating point, store true; no
 * min_score (a bound on the cosine); rank the server's (fused unless qdup-daemon --rank
 * cosine). An id may be a string or a whole number (kept as its decimal text). A text
 * of white space only is refused like an empty one. A text with the same words as a
 * stored question (a repost) is stored under its own id by add and check, and check
 * reports the stored one with p_duplicate 1.
 *   {"op":"verdict","id":"NEW","of":"OLD","duplicate":true}
 *                                                       a moderator closed NEW as a
 *                                                       duplicate of OLD (false: dismissed
 *                                                       the suggestion); both must be live;
 *                                                       needs write permission; a repeated
 *                                                       verdict on the pair replaces it
 *   {"op":"reload"}                                     switch to the model staged by
 *                                                       qdup-index reembed (needs write
 *                                                       permission): {"switched":true,
 *                                                       "from":FP,"to":FP}, or
 *                                                       "switched":false when nothing is
 *                                                       staged; queries already encoded
 *                                                       finish on the old model, writes
 *                                                       wait for the switch
 *   {"op":"stats"}, {"op":"ping"}
 * Replies: {"ok":true,"tag":...,...} or
 *          {"ok":false,"tag":...,"error":{"code":"not_found","message":"..."}} with the
 * stable codes listed in qd_proto_code. Every string in a reply is produced by jansson,
 * so user bytes are always escaped and replies are always valid UTF-8 JSON on one line.
 *
 * How a request is handled, in three steps that a server runs on different threads:
 *   1. qd_proto_parse() (cheap; the event loop) checks the line and the fields against
 *      the command table and the limits, and the write permission of the peer. A
 *      request that fails here is already answered (class QD_REQ_DONE).
 *   2. qd_proto_run() (a worker thread) executes a list of requests against the
 *      backend: the texts of all queries in the list are encoded in one batch and
 *      searched in one call per distinct (k, min_score), consecutive adds are stored in
 *      one transaction, everything else one by one.
 *   3. qd_proto_reply() (the worker) formats the reply line.
 * qd_proto_handle() does all three at once: one line in, one reply out (tests, fuzzing).
 *
 * The handler never touches the store directly: it calls a qd_backend, a table of
 * functions with the store's signatures (store.h), so that it can run against the real
 * store (qd_server_store_backend, server.h) or a small in-memory index (memidx.h).
 */
#ifndef QDUP_PROTO_H
#define QDUP_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "qdup/metrics.h"
#include "qdup/model.h"
#include "qdup/store.h"

#ifdef __cplusplus
extern "C" {
#endif

/* What the handler needs from a question store. Every function has the meaning of its
 * qd_store_* namesake (store.h), with ctx as the store; all may be called from several
 * threads at once except add, remove and checkpoint, which the caller serializes. */
typedef struct qd_backend {
    void *ctx;                /* the store */
    const qd_model *model;    /* encodes questions; read-only, shared by all threads;
                                 NULL with pin (a reload frees the model): the
                                 handler encodes with the pinned one */
    int (*search)(void *ctx, const float *q, size_t nq, size_t k, float min_score,
                  const char *const *exclude, qd_store_hits *out);
    void (*hits_free)(qd_store_hits *h);
    int (*add)(void *ctx, const qd_store_item *items, size_t n, int replace,
               qd_store_result *res);
    /* Optional (may be NULL): 0 if add would accept the item, else QD_ERR_INVAL and
     * the reason in err. Adds are committed in groups and the store refuses a whole
     * group for one bad item, so each is checked first. */
    int (*check_item)(const qd_store_item *it, char *err, size_t errlen);
    int (*remove)(void *ctx, const char *ext_id, size_t ext_id_len);
    int (*get)(void *ctx, const char *ext_id, size_t ext_id_len, qd_store_row *row);
    void (*row_free)(qd_store_row *r);
    int (*info)(void *ctx, qd_store_info *info);
    int (*checkpoint)(void *ctx);
    const char *(*errmsg)(void *ctx); /* detail of the calling thread's last failure */
    /* Optional (may be NULL: search, by cosine): qd_store_search_text, the hybrid
     * ranking with the query texts. */
    int (*search_text)(void *ctx, const float *q, size_t nq, const qd_store_query *o,
                       qd_store_hits *out);
    /* Optional (may be NULL: verdicts are refused as unavailable): qd_store_verdict.
     * Serialized by the caller like add. */
    int (*verdict)(void *ctx, const char *new_id, size_t new_len, const char *old_id,
                   size_t old_len, int duplicate);
    /* Optional (both NULL: `model` is used throughout): qd_store_pin / unpin, the
     * model to encode with, held by the handler from a list's encoding to its last
     * search or add, so that a reload cannot swap the model in between. */
    const qd_model *(*pin)(void *ctx);
    void (*unpin)(void *ctx);
    /* Optional (may be NULL: reload is refused as unavailable): qd_store_reembed_switch,
     * switching to a staged model; QD_ERR_NOTFOUND when nothing is staged. Serialized
     * by the caller like add, and never called while this thread holds a pin. */
    int (*reload)(void *ctx, char *old_fp, char *new_fp);
    /* Optional (may be NULL: 1): qd_store_search_batch, how many waiting queries a
     * search worker should take together; called by the loop thread, never waits,
     * `dflt` if it cannot tell now. */
    size_t (*search_batch)(void *ctx, size_t dflt);
} qd_backend;

/* Size limits on requests and replies. */
typedef struct qd_proto_limits {
    size_t max_line;  /* longest request line in bytes, newline excluded (64 KiB) */
    size_t max_k;     /* largest k (1,000) */
    size_t max_text;  /* longest question text in bytes (16 KiB) */
    size_t max_batch; /* most texts in one query (256) */
    size_t max_id;    /* longest external id in bytes (256, the store's limit) */
    size_t max_reply; /* longest reply line in bytes; a longer one is answered with
                         too_large instead (8 MiB) */
} qd_proto_limits;

void qd_proto_limits_default(qd_proto_limits *l);

/* The handler's configuration (plain data: set the fields). */
typedef struct qd_proto {
    const qd_backend *be;   /* the store */
    qd_proto_limits lim;    /* size limits */
    size_t search_pad;      /* pad each search call of 2 or more queries to at least
                               this many (0: none). FAISS's exact search switches from
                               one scan per query to one matrix product for all of
                               them at its BLAS threshold (qd_ann_set_blas_threshold,
                               20 by default), which can make 20 queries cost what 2
                               do; at a threshold of 1 padding only adds work. */
    qd_rank_mode rank;      /* ranking of a request that names none (0: fused) */
} qd_proto;

/* The operations, in the order of the command table. */
typedef enum qd_op {
    QD_OP_QUERY = 0,
    QD_OP_ADD,
    QD_OP_REMOVE,
    QD_OP_GET,
    QD_OP_CHECK,
    QD_OP_STATS,
    QD_OP_PING,
    QD_OP_METRICS,
    QD_OP_VERDICT,
    QD_OP_RELOAD,
    QD_OP_COUNT,
    QD_OP_NONE = -1, /* the line was not a request with a known op */
} qd_op;

/* Name of an op ("query"), or "none". */
const char *qd_proto_op_name(int op);

/* Error codes: stable strings clients may test. */
typedef enum qd_proto_code {
    QD_CODE_OK = 0,
    QD_CODE_BAD_JSON,     /* "bad_json": the line is not valid JSON (or not UTF-8) */
    QD_CODE_BAD_REQUEST,  /* "bad_request": a missing, unknown or ill-typed field */
    QD_CODE_UNKNOWN_OP,   /* "unknown_op" */
    QD_CODE_TOO_LARGE,    /* "too_large": a line, text, batch or reply over its limit */
    QD_CODE_NOT_FOUND,    /* "not_found": no live question with that id */
    QD_CODE_DUP_ID,       /* "duplicate_id": the id is already live */
    QD_CODE_DUP_TEXT,     /* "duplicate_text": a live question has the same text */
    QD_CODE_BUSY,         /* "busy": too much queued work or too many clients */
    QD_CODE_FORBIDDEN,    /* "forbidden": this peer may not write */
    QD_CODE_INTERNAL,     /* "internal": the store failed (a bug, memory) */
    QD_CODE_UNAVAILABLE,  /* "unavailable": the machine refused the write (disk full,
                             read-only filesystem, I/O error): nothing was written, retry
                             later; reads keep working */
    QD_CODE_COUNT,
} qd_proto_code;

/* The code's string ("bad_json"); "ok" for QD_CODE_OK. */
const char *qd_proto_code_name(int code);

/* Who sent a request (from SO_PEERCRED) and what the server lets them do. */
typedef struct qd_peer {
    int known;        /* 1 if uid, gid and pid come from the kernel */
    uint32_t uid;     /* peer's effective uid */
    uint32_t gid;     /* peer's effective gid */
    int32_t pid;      /* peer's process id */
    int may_write;    /* 1 if add, remove, verdict, reload and check with store are
                         allowed */
} qd_peer;

/* Where a parsed request must run. */
typedef enum qd_req_class {
    QD_REQ_DONE = 0,  /* already answered (an error, a ping): just reply */
    QD_REQ_SEARCH,    /* a query: batched with other queries on any worker */
    QD_REQ_READ,      /* get, stats, check without store: any worker */
    QD_REQ_WRITE,     /* add, remove, check with store, verdict, reload: the one
                         serialized writer */
} qd_req_class;

/* Latency figures over a recent window, in milliseconds. */
typedef struct qd_proto_lat {
    size_t n;        /* requests in the window */
    double p50, p90, p99, max;
} qd_proto_lat;

/* Figures only the server knows, copied into a stats request when it is parsed. */
typedef struct qd_proto_stats {
    double uptime_s;                   /* seconds since the server started */
    uint64_t requests[QD_OP_COUNT];    /* requests by op, since start */
    uint64_t errors[QD_CODE_COUNT];    /* error replies by code, since start */
    uint64_t clients;                  /* connected now */
    uint64_t clients_total;            /* accepted since start */
    uint64_t clients_refused;          /* turned away (too many, not the owner) */
    uint64_t clients_dropped;          /* dropped for not reading their replies */
    uint64_t clients_paused;           /* not read from now: owed too many reply bytes */
    uint64_t queued;                   /* requests waiting for a worker now */
    uint64_t cancelled;                /* waiting requests dropped unrun because their
                                          client went away, since start */
    uint64_t unsaved_writes;           /* writes since the last checkpoint */
    uint64_t checkpoints;              /* checkpoints written since start */
    int threads;                       /* search workers */
    double *lat_search;                /* (n_search) recent read (query, get) latencies,
                                          ms; owned */
    size_t n_search;
    double *lat_write;                 /* (n_write) recent write latencies, ms; owned */
    size_t n_write;
    uint64_t replies[QD_OP_COUNT + 1][QD_CODE_COUNT]; /* replies by op (index op + 1;
                                          0: not a request) and code, since start */
    qd_metrics_hist hist_read;         /* latencies of reads (query, get) */
    qd_metrics_hist hist_write;        /* latencies of writes (add, remove, check) */
} qd_proto_stats;

/* A parsed request and, once run, its outcome. Strings point into `root`. */
typedef struct qd_req {
    qd_op op;                 /* what to do */
    qd_req_class cls;         /* where it runs */
    json_t *root;             /* the parsed line (owns the strings below), or NULL */
    json_t *tag;              /* the client's tag (borrowed from root), or NULL */
    const char **texts;       /* (ntexts) question texts: query, add, check */
    size_t *lens;             /* (ntexts) their lengths in bytes */
    size_t ntexts;
    int batch;                /* 1 if the query gave "texts": the reply is a list of lists */
    const char *id;           /* external id: add, remove, get, check */
    size_t id_len;
    size_t k;                 /* results wanted per text */
    float min_score;          /* smallest cosine returned (-INFINITY: no bound) */
    qd_rank_mode rank;        /* query, check: how results are ranked */
    float min_p;              /* check: p_duplicate from which a result is a duplicate */
    char id_buf[24];          /* an id given as a number, as decimal text */
    int store;                /* check: store the post after the search */
    const char *of;           /* verdict: the id of the older question */
    size_t of_len;
    char of_buf[24];          /* "of" given as a number, as decimal text */
    int duplicate;            /* verdict: 1 closed as a duplicate, 0 dismissed */
    int min_p_given;          /* check: 1 if the request set min_p (else the model's) */
    /* outcome */
    int switched;             /* reload: 1 if the model was switched */
    char from_fp[17];         /* reload: the model before (when switched) */
    char to_fp[17];           /* reload: the model after (when switched) */
    int code;                 /* qd_proto_code; QD_CODE_OK on success */
    char msg[256];            /* error message (when code != OK) */
    qd_store_hits *hits;      /* (ntexts) query and check results, or NULL */
    int64_t row;              /* add, check: row id of the stored question (-1: none) */
    int stored;               /* check: 1 if the post was stored */
    const char *not_stored;   /* check: why not ("duplicate_text", "store": false) */
    qd_store_row got;         /* get: the row (its strings owned by the backend) */
    int have_got;             /* 1 if got must be freed */
    qd_store_info *info;      /* stats: the store's figures (owned) */
    qd_proto_stats *stats;    /* stats: the server's figures (owned), or NULL */
} qd_req;

/* Parses and checks one request line (no newline; a trailing '\r' is ignored). Always
 * yields a request unless memory runs out (QD_ERR_NOMEM): one that fails a check comes
 * back answered, with class QD_REQ_DONE and an error code. */
int qd_proto_parse(const qd_proto *p, const char *line, size_t len, const qd_peer *peer,
                   qd_req **out);

/* Runs n parsed requests (classes SEARCH, READ or WRITE; DONE ones are skipped) with
 * the workspace ws of the calling thread, storing each outcome in its request. Never
 * fails as a whole: a backend failure becomes each affected request's error. */
void qd_proto_run(const qd_proto *p, qd_enc_ws *ws, qd_req **reqs, size_t n);

/* Formats the reply to r as one line ending in '\n' (and NUL-terminated, the NUL not
 * counted in *len) into a fresh buffer (qd_free). A
 * reply longer than p->lim.max_reply is replaced by a too_large error. QD_ERR_NOMEM
 * only. */
int qd_proto_reply(const qd_proto *p, const qd_req *r, char **out, size_t *len);

/* Tests only: 1 makes qd_proto_reply build every reply with jansson, including the
 * query replies it otherwise writes directly (the reference they are checked against). */
void qd_proto_reply_use_jansson(int on);

/* Formats a reply that belongs to no parsed request (a line too long, too many
 * clients): {"ok":false,"error":{"code":...,"message":...}} and '\n'. */
int qd_proto_error_line(int code, const char *msg, char **out, size_t *len);

/* Frees r and what it holds (p: the handler it was parsed by). NULL is a no-op. */
void qd_proto_req_free(const qd_proto *p, qd_req *r);

/* Parse, run and reply in one call: one line in, one reply out. */
int qd_proto_handle(const qd_proto *p, qd_enc_ws *ws, const char *line, size_t len,
                    const qd_peer *peer, char **out, size_t *outlen);

/* Percentiles of n latencies (sorted in place). */
void qd_proto_latency(double *ms, size_t n, qd_proto_lat *out);

#ifdef __cplusplus
}
#endif

#endif
