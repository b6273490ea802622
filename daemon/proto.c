/*
 * proto.c - the request handler of qdup-daemon: parse a JSON line, run it against a
 * backend, format the JSON reply (see proto.h for the protocol).
 *
 * Parsing is table-driven: each op has a row {name, parser, allowed fields, where it
 * runs, whether it writes}, so adding an op is adding a row, and unknown fields are
 * refused uniformly (a misspelt "min_scor" is an error, not a silently ignored bound).
 * Every check a request can fail happens in qd_proto_parse(), on the event loop, before
 * any work is queued; qd_proto_run() only meets failures of the store itself.
 *
 * Replies are built as jansson values and serialized through a bounded buffer, so a
 * reply can never exceed max_reply bytes (it becomes a too_large error instead), and
 * every string, whether it came from the client or from the store, goes through
 * jansson's escaping. jansson refuses strings that are not valid UTF-8; store texts
 * that are not (a dump of raw bytes) are repaired with U+FFFD rather than dropped.
 * The one exception is a successful query's reply, written directly into the same
 * bounded buffer, byte for byte as jansson would (see "query replies" below).
 */
#include "qdup/proto.h"

#include <math.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qdup/common.h"
#include "qdup/input.h"

/* Compact, one line, scores with 7 significant digits. */
#define DUMP_FLAGS (JSON_COMPACT | JSON_REAL_PRECISION(7))

static const char *const code_names[QD_CODE_COUNT] = {
    [QD_CODE_OK] = "ok",
    [QD_CODE_BAD_JSON] = "bad_json",
    [QD_CODE_BAD_REQUEST] = "bad_request",
    [QD_CODE_UNKNOWN_OP] = "unknown_op",
    [QD_CODE_TOO_LARGE] = "too_large",
    [QD_CODE_NOT_FOUND] = "not_found",
    [QD_CODE_DUP_ID] = "duplicate_id",
    [QD_CODE_DUP_TEXT] = "duplicate_text",
    [QD_CODE_BUSY] = "busy",
    [QD_CODE_FORBIDDEN] = "forbidden",
    [QD_CODE_INTERNAL] = "internal",
    [QD_CODE_UNAVAILABLE] = "unavailable",
};

const char *qd_proto_code_name(int code)
{
    if (code < 0 || code >= QD_CODE_COUNT)
        return "internal";
    return code_names[code];
}

void qd_proto_limits_default(qd_proto_limits *l)
{
    l->max_line = 64 * 1024;
    l->max_k = 1000;
    l->max_text = 16 * 1024;
    l->max_batch = 256;
    l->max_id = 256;
    l->max_reply = 8 * 1024 * 1024;
}

/* --- the command table ---------------------------------------------------------------- */

static int parse_query(const qd_proto *p, qd_req *r);
static int parse_add(const qd_proto *p, qd_req *r);
static int parse_id_only(const qd_proto *p, qd_req *r);
static int parse_check(const qd_proto *p, qd_req *r);
static int parse_nothing(const qd_proto *p, qd_req *r);
static int parse_verdict(const qd_proto *p, qd_req *r);

/* One op: how to parse it, which fields it takes, where it runs. */
typedef struct cmd {
    const char *name;                           /* the "op" string */
    qd_op op;                                   /* its enum value */
    int (*parse)(const qd_proto *p, qd_req *r); /* reads the fields; 0 or fails r */
    const char *fields[8];                      /* fields allowed besides op and tag */
    qd_req_class cls;                           /* where it runs (check: see parse) */
    int writes;                                 /* 1 if it needs write permission */
} cmd;

static const cmd commands[QD_OP_COUNT] = {
    {"query", QD_OP_QUERY, parse_query, {"text", "texts", "k", "min_score", "rank"},
     QD_REQ_SEARCH, 0},
    {"add", QD_OP_ADD, parse_add, {"id", "text"}, QD_REQ_WRITE, 1},
    {"remove", QD_OP_REMOVE, parse_id_only, {"id"}, QD_REQ_WRITE, 1},
    {"get", QD_OP_GET, parse_id_only, {"id"}, QD_REQ_READ, 0},
    {"check", QD_OP_CHECK, parse_check,
     {"id", "text", "k", "min_score", "store", "rank", "min_p"}, QD_REQ_WRITE, 1},
    {"stats", QD_OP_STATS, parse_nothing, {0}, QD_REQ_READ, 0},
    {"ping", QD_OP_PING, parse_nothing, {0}, QD_REQ_DONE, 0},
    {"metrics", QD_OP_METRICS, parse_nothing, {0}, QD_REQ_READ, 0},
    {"verdict", QD_OP_VERDICT, parse_verdict, {"id", "of", "duplicate"}, QD_REQ_WRITE, 1},
    {"reload", QD_OP_RELOAD, parse_nothing, {0}, QD_REQ_WRITE, 1},
};

const char *qd_proto_op_name(int op)
{
    if (op < 0 || op >= QD_OP_COUNT)
        return "none";
    return commands[op].name;
}

/* --- parsing ------------------------------------------------------------------------ */

/* Marks r as answered with an error; returns -1 so parsers can `return fail(...)`. */
__attribute__((format(printf, 3, 4))) static int fail(qd_req *r, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->msg, sizeof r->msg, fmt, ap);
    va_end(ap);
    r->code = code;
    r->cls = QD_REQ_DONE;
    return -1;
}

/* Reads the string field `name`: required, non-empty, at most max bytes. */
static int get_string(const qd_proto *p, qd_req *r, const char *name, size_t max,
                      int too_large_code, const char **s, size_t *n)
{
    (void)p;
    json_t *v = json_object_get(r->root, name);
    if (!v)
        return fail(r, QD_CODE_BAD_REQUEST, "missing field \"%s\"", name);
    if (!json_is_string(v))
        return fail(r, QD_CODE_BAD_REQUEST, "\"%s\" must be a string", name);
    *s = json_string_value(v);
    *n = json_string_length(v);
    if (*n == 0)
        return fail(r, QD_CODE_BAD_REQUEST, "\"%s\" is empty", name);
    if (*n > max)
        return fail(r, too_large_code, "\"%s\" is %zu bytes, over the limit of %zu", name,
                    *n, max);
    return 0;
}

/* An external id in field `name`, by the rules of input.h (ids end up in logs and in
 * the output of tools that print one per line); buf (24 bytes) holds a numeric one. */
static int get_id_field(const qd_proto *p, qd_req *r, const char *name, char *buf,
                        const char **id, size_t *len)
{
    char why[QD_ERRMSG_MAX];
    json_t *v = json_object_get(r->root, name);
    if (json_is_integer(v)) {
        /* A number, as JSON Lines dumps may give it: stored as its decimal text. */
        snprintf(buf, sizeof r->id_buf, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        *id = buf;
        *len = strlen(buf);
        return 0;
    }
    if (json_is_number(v))
        return fail(r, QD_CODE_BAD_REQUEST, "\"%s\" must be a string or a whole number", name);
    if (get_string(p, r, name, SIZE_MAX, QD_CODE_BAD_REQUEST, id, len))
        return -1;
    if (qd_input_check_id(*id, *len, p->lim.max_id, why, sizeof why))
        return fail(r, QD_CODE_BAD_REQUEST, "\"%s\": %s", name, why);
    return 0;
}

static int get_id(const qd_proto *p, qd_req *r)
{
    return get_id_field(p, r, "id", r->id_buf, &r->id, &r->id_len);
}

/* A text by the rules of input.h: white space only is refused like an empty text. */
static int check_text(const qd_proto *p, qd_req *r, const char *what, const char *t,
                      size_t n)
{
    char why[QD_ERRMSG_MAX];
    if (qd_input_check_text(t, n, p->lim.max_text, why, sizeof why))
        return fail(r, QD_CODE_BAD_REQUEST, "%s: %s", what, why);
    return 0;
}

/* "rank": "fused" or "cosine" (default: the server's). */
static int get_rank(const qd_proto *p, qd_req *r)
{
    json_t *v = json_object_get(r->root, "rank");
    r->rank = p->rank;
    if (!v)
        return 0;
    if (!json_is_string(v) || qd_rank_mode_parse(json_string_value(v), &r->rank) != 0)
        return fail(r, QD_CODE_BAD_REQUEST, "\"rank\" must be \"fused\" or \"cosine\"");
    return 0;
}

/* The one text of add and check (query also takes "texts"). */
static int get_text(const qd_proto *p, qd_req *r)
{
    r->texts = qd_malloc(sizeof *r->texts);
    r->lens = qd_malloc(sizeof *r->lens);
    if (!r->texts || !r->lens)
        return fail(r, QD_CODE_INTERNAL, "out of memory");
    r->ntexts = 1;
    if (get_string(p, r, "text", p->lim.max_text, QD_CODE_TOO_LARGE, &r->texts[0],
                   &r->lens[0]))
        return -1;
    return check_text(p, r, "\"text\"", r->texts[0], r->lens[0]);
}

static int get_k(const qd_proto *p, qd_req *r, size_t dflt)
{
    json_t *v = json_object_get(r->root, "k");
    r->k = dflt;
    if (!v)
        return 0;
    if (!json_is_integer(v))
        return fail(r, QD_CODE_BAD_REQUEST, "\"k\" must be an integer");
    json_int_t k = json_integer_value(v);
    if (k < 1 || (uint64_t)k > p->lim.max_k)
        return fail(r, QD_CODE_BAD_REQUEST, "\"k\" must be from 1 to %zu", p->lim.max_k);
    r->k = (size_t)k;
    return 0;
}

static int get_min_score(qd_req *r, float dflt)
{
    json_t *v = json_object_get(r->root, "min_score");
    r->min_score = dflt;
    if (!v)
        return 0;
    if (!json_is_number(v))
        return fail(r, QD_CODE_BAD_REQUEST, "\"min_score\" must be a number");
    double x = json_number_value(v);
    if (!(x >= -1.0 && x <= 1.0))
        return fail(r, QD_CODE_BAD_REQUEST, "\"min_score\" must be from -1 to 1");
    r->min_score = (float)x;
    return 0;
}

static int parse_query(const qd_proto *p, qd_req *r)
{
    json_t *text = json_object_get(r->root, "text");
    json_t *texts = json_object_get(r->root, "texts");
    if (text && texts)
        return fail(r, QD_CODE_BAD_REQUEST, "give either \"text\" or \"texts\", not both");
    if (texts) {
        if (!json_is_array(texts))
            return fail(r, QD_CODE_BAD_REQUEST, "\"texts\" must be an array of strings");
        size_t n = json_array_size(texts);
        if (n == 0)
            return fail(r, QD_CODE_BAD_REQUEST, "\"texts\" is empty");
        if (n > p->lim.max_batch)
            return fail(r, QD_CODE_TOO_LARGE, "\"texts\" holds %zu texts, over the limit of %zu",
                        n, p->lim.max_batch);
        r->texts = qd_mallocarray(n, sizeof *r->texts);
        r->lens = qd_mallocarray(n, sizeof *r->lens);
        if (!r->texts || !r->lens)
            return fail(r, QD_CODE_INTERNAL, "out of memory");
        for (size_t i = 0; i < n; i++) {
            json_t *t = json_array_get(texts, i);
            if (!json_is_string(t))
                return fail(r, QD_CODE_BAD_REQUEST, "\"texts\"[%zu] must be a string", i);
            r->texts[i] = json_string_value(t);
            r->lens[i] = json_string_length(t);
            if (r->lens[i] == 0)
                return fail(r, QD_CODE_BAD_REQUEST, "\"texts\"[%zu] is empty", i);
            if (r->lens[i] > p->lim.max_text)
                return fail(r, QD_CODE_TOO_LARGE,
                            "\"texts\"[%zu] is %zu bytes, over the limit of %zu", i,
                            r->lens[i], p->lim.max_text);
            char what[32];
            snprintf(what, sizeof what, "\"texts\"[%zu]", i);
            if (check_text(p, r, what, r->texts[i], r->lens[i]))
                return -1;
        }
        r->ntexts = n;
        r->batch = 1;
    } else if (get_text(p, r)) {
        return -1;
    }
    if (get_k(p, r, 10) || get_min_score(r, -INFINITY) || get_rank(p, r))
        return -1;
    return 0;
}

static int parse_add(const qd_proto *p, qd_req *r)
{
    return (get_id(p, r) || get_text(p, r)) ? -1 : 0;
}

static int parse_id_only(const qd_proto *p, qd_req *r)
{
    return get_id(p, r);
}

static int parse_check(const qd_proto *p, qd_req *r)
{
    r->store = 1;
    json_t *v = json_object_get(r->root, "store");
    if (v) {
        if (!json_is_boolean(v))
            return fail(r, QD_CODE_BAD_REQUEST, "\"store\" must be true or false");
        r->store = json_is_true(v);
    }
    /* Without storing, the post needs no id (one given is still excluded). */
    if ((r->store || json_object_get(r->root, "id")) && get_id(p, r))
        return -1;
    if (get_text(p, r) || get_k(p, r, 5) || get_min_score(r, -INFINITY) || get_rank(p, r))
        return -1;
    /* Without min_p, the operating point of the model the check runs with (run_check):
     * a reload may change it between now and then. */
    v = json_object_get(r->root, "min_p");
    if (v) {
        double x = json_is_number(v) ? json_number_value(v) : -1;
        if (!(x >= 0 && x <= 1))
            return fail(r, QD_CODE_BAD_REQUEST, "\"min_p\" must be a number from 0 to 1");
        r->min_p = (float)x;
        r->min_p_given = 1;
    }
    return 0;
}

static int parse_verdict(const qd_proto *p, qd_req *r)
{
    if (get_id(p, r) || get_id_field(p, r, "of", r->of_buf, &r->of, &r->of_len))
        return -1;
    json_t *v = json_object_get(r->root, "duplicate");
    if (!json_is_boolean(v))
        return fail(r, QD_CODE_BAD_REQUEST, "\"duplicate\" must be true or false");
    r->duplicate = json_is_true(v);
    if (r->id_len == r->of_len && memcmp(r->id, r->of, r->id_len) == 0)
        return fail(r, QD_CODE_BAD_REQUEST, "\"id\" and \"of\" name the same question");
    return 0;
}

static int parse_nothing(const qd_proto *p, qd_req *r)
{
    (void)p;
    (void)r;
    return 0;
}

static const cmd *find_cmd(const char *name, size_t len)
{
    for (int i = 0; i < QD_OP_COUNT; i++)
        if (strlen(commands[i].name) == len && memcmp(commands[i].name, name, len) == 0)
            return &commands[i];
    return NULL;
}

int qd_proto_parse(const qd_proto *p, const char *line, size_t len, const qd_peer *peer,
                   qd_req **out)
{
    qd_req *r = qd_calloc(1, sizeof *r);
    *out = r;
    if (!r)
        return QD_ERR_NOMEM;
    r->op = QD_OP_NONE;
    r->row = -1;
    r->min_score = -INFINITY;
    if (len > 0 && line[len - 1] == '\r')
        len--;
    if (len > p->lim.max_line) {
        fail(r, QD_CODE_TOO_LARGE, "the request line is %zu bytes, over the limit of %zu",
             len, p->lim.max_line);
        return 0;
    }

    json_error_t je;
    r->root = json_loadb(line, len, JSON_REJECT_DUPLICATES, &je);
    if (!r->root) {
        if (json_error_code(&je) == json_error_out_of_memory)
            fail(r, QD_CODE_INTERNAL, "out of memory");
        else
            fail(r, QD_CODE_BAD_JSON, "invalid JSON at byte %d: %s", je.position, je.text);
        return 0;
    }
    if (!json_is_object(r->root)) {
        fail(r, QD_CODE_BAD_REQUEST, "a request must be a JSON object");
        return 0;
    }
    r->tag = json_object_get(r->root, "tag");

    json_t *jop = json_object_get(r->root, "op");
    if (!jop) {
        fail(r, QD_CODE_BAD_REQUEST, "missing field \"op\"");
        return 0;
    }
    if (!json_is_string(jop)) {
        fail(r, QD_CODE_BAD_REQUEST, "\"op\" must be a string");
        return 0;
    }
    const cmd *c = find_cmd(json_string_value(jop), json_string_length(jop));
    if (!c) {
        fail(r, QD_CODE_UNKNOWN_OP,
             "unknown op; the ops are query, add, remove, get, check, verdict, stats and ping");
        return 0;
    }
    r->op = c->op;
    r->cls = c->cls;

    const char *key;
    json_t *val;
    json_object_foreach(r->root, key, val) {
        if (strcmp(key, "op") == 0 || strcmp(key, "tag") == 0)
            continue;
        int known = 0;
        for (size_t i = 0; i < sizeof c->fields / sizeof c->fields[0] && c->fields[i]; i++)
            known |= strcmp(key, c->fields[i]) == 0;
        if (!known) {
            /* The name is escaped by jansson; a long one is not worth repeating. */
            if (strlen(key) <= 40)
                fail(r, QD_CODE_BAD_REQUEST, "unknown field \"%s\" for op %s", key, c->name);
            else
                fail(r, QD_CODE_BAD_REQUEST, "unknown field (a %zu-byte name) for op %s",
                     strlen(key), c->name);
            return 0;
        }
    }
    if (c->parse(p, r))
        return 0;

    int writes = c->writes && (c->op != QD_OP_CHECK || r->store);
    if (c->op == QD_OP_CHECK && !r->store)
        r->cls = QD_REQ_READ;
    if (writes && !(peer && peer->may_write)) {
        if (peer && peer->known)
            fail(r, QD_CODE_FORBIDDEN, "uid %u may not %s: writes are restricted",
                 (unsigned)peer->uid, c->name);
        else
            fail(r, QD_CODE_FORBIDDEN, "this client may not %s: writes are restricted",
                 c->name);
        return 0;
    }
    return 0;
}

/* --- running ------------------------------------------------------------------------ */

/* Maps a failure to an error on r, with the detail of whoever raised it: the backend's
 * message for a failed backend call (fail_be), NULL for a failure of proto's own (an
 * allocation, the encoder), which gets the code's static text: another call's message
 * left in the backend must never describe it. */
static void fail_rc(qd_req *r, int rc, const char *detail)
{
    if (!detail || !*detail)
        detail = qd_strerror(rc);
    switch (rc) {
    case QD_ERR_NOTFOUND:
        fail(r, QD_CODE_NOT_FOUND, "no question with this id");
        break;
    case QD_ERR_EXISTS:
        fail(r, QD_CODE_DUP_ID, "a question with this id is already stored");
        break;
    case QD_ERR_BUSY:
        fail(r, QD_CODE_BUSY, "%s", detail);
        break;
    case QD_ERR_INVAL:
    case QD_ERR_RANGE:
        fail(r, QD_CODE_BAD_REQUEST, "%s", detail);
        break;
    case QD_ERR_FORBIDDEN:
        fail(r, QD_CODE_FORBIDDEN, "%s", detail);
        break;
    case QD_ERR_UNAVAILABLE:
        fail(r, QD_CODE_UNAVAILABLE, "nothing was written, retry later: %s", detail);
        break;
    default:
        fail(r, QD_CODE_INTERNAL, "%s", detail);
        break;
    }
}

/* A failure the backend returned, with its message. */
static void fail_be(const qd_proto *p, qd_req *r, int rc)
{
    fail_rc(r, rc, p->be->errmsg ? p->be->errmsg(p->be->ctx) : NULL);
}

/* A failure of proto's own. */
static void fail_own(qd_req *r, int rc)
{
    fail_rc(r, rc, NULL);
}

static int is_zero(const float *v, int dim)
{
    for (int i = 0; i < dim; i++)
        if (v[i] != 0.0f)
            return 0;
    return 1;
}

static void hits_release(const qd_proto *p, qd_store_hits *h)
{
    if (h->hit)
        p->be->hits_free(h);
    h->hit = NULL;
    h->n = 0;
}

/* Encodes n texts into a fresh (n, dim) array. */
static int encode(const qd_proto *p, qd_enc_ws *ws, const char *const *texts,
                  const size_t *lens, size_t n, float **vec)
{
    int dim = qd_model_dim(p->be->model);
    *vec = qd_mallocarray(n ? n : 1, (size_t)dim * sizeof(float));
    if (!*vec)
        return QD_ERR_NOMEM;
    int rc = qd_enc_texts(p->be->model, ws, texts, lens, n, *vec);
    if (rc) {
        qd_free(*vec);
        *vec = NULL;
    }
    return rc;
}

/* One backend search call: the hybrid ranking with the texts when the backend has it,
 * else by cosine. */
static int be_search(const qd_proto *p, const float *q, size_t nq, size_t k, float min_score,
                     qd_rank_mode rank, const char *const *texts, const size_t *lens,
                     const char *const *exclude, qd_store_hits *out)
{
    if (!p->be->search_text)
        return p->be->search(p->be->ctx, q, nq, k, min_score, exclude, out);
    qd_store_query o = {.k = k, .min_score = min_score, .rank = rank, .texts = texts,
                        .lens = lens, .exclude = exclude};
    return p->be->search_text(p->be->ctx, q, nq, &o, out);
}

/* Searches nq vectors q (of the texts) with one backend call, padded to p->search_pad
 * queries when that is cheaper (see proto.h); out (nq) gets the results. On failure
 * *by_be says whether the backend raised it (1) or an allocation here (0). */
static int search(const qd_proto *p, const float *q, size_t nq, size_t k, float min_score,
                  qd_rank_mode rank, const char *const *texts, const size_t *lens,
                  const char *const *exclude, qd_store_hits *out, int *by_be)
{
    size_t pad = (nq >= 2 && nq < p->search_pad && !exclude) ? p->search_pad : nq;
    *by_be = 1;
    if (pad == nq)
        return be_search(p, q, nq, k, min_score, rank, texts, lens, exclude, out);
    size_t dim = (size_t)qd_model_dim(p->be->model);
    float *qp = qd_mallocarray(pad, dim * sizeof(float));
    qd_store_hits *hp = qd_calloc(pad, sizeof *hp);
    const char **tp = qd_mallocarray(pad, sizeof *tp);
    size_t *lp = qd_mallocarray(pad, sizeof *lp);
    int rc = QD_ERR_NOMEM;
    *by_be = 0;
    if (qp && hp && tp && lp) {
        *by_be = 1;
        memcpy(qp, q, nq * dim * sizeof(float));
        memcpy(tp, texts, nq * sizeof *tp);
        memcpy(lp, lens, nq * sizeof *lp);
        for (size_t i = nq; i < pad; i++) {
            memcpy(qp + i * dim, q, dim * sizeof(float));
            tp[i] = texts[0];
            lp[i] = lens[0];
        }
        rc = be_search(p, qp, pad, k, min_score, rank, tp, lp, NULL, hp);
        if (rc == 0)
            memcpy(out, hp, nq * sizeof *hp);
        for (size_t i = rc == 0 ? nq : 0; i < pad; i++)
            hits_release(p, &hp[i]);
    }
    qd_free(qp);
    qd_free(hp);
    qd_free(tp);
    qd_free(lp);
    return rc;
}

/* All queries of the list: one encoding pass, one search per distinct (k, min_score). */
static void run_searches(const qd_proto *p, qd_enc_ws *ws, qd_req **reqs, size_t n)
{
    size_t total = 0, nreq = 0;
    for (size_t i = 0; i < n; i++)
        if (reqs[i]->cls == QD_REQ_SEARCH) {
            total += reqs[i]->ntexts;
            nreq++;
        }
    if (total == 0)
        return;
    size_t dim = (size_t)qd_model_dim(p->be->model);
    const char **texts = qd_mallocarray(total, sizeof *texts);
    size_t *lens = qd_mallocarray(total, sizeof *lens);
    size_t *first = qd_mallocarray(n, sizeof *first); /* each request's first text */
    unsigned char *done = qd_calloc(n, 1);
    float *vec = NULL, *q = NULL;
    qd_store_hits *res = NULL;
    const char **qt = qd_mallocarray(total, sizeof *qt); /* the texts of one search */
    size_t *ql = qd_mallocarray(total, sizeof *ql);
    int rc = QD_ERR_NOMEM;
    if (!texts || !lens || !first || !done || !qt || !ql)
        goto fail;
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        qd_req *r = reqs[i];
        if (r->cls != QD_REQ_SEARCH)
            continue;
        first[i] = off;
        memcpy(texts + off, r->texts, r->ntexts * sizeof *texts);
        memcpy(lens + off, r->lens, r->ntexts * sizeof *lens);
        off += r->ntexts;
        r->hits = qd_calloc(r->ntexts, sizeof *r->hits);
        if (!r->hits)
            goto fail;
    }
    rc = encode(p, ws, texts, lens, total, &vec);
    q = qd_mallocarray(total, dim * sizeof(float));
    res = qd_calloc(total, sizeof *res);
    if (rc || !q || !res) {
        rc = rc ? rc : QD_ERR_NOMEM;
        goto fail;
    }

    for (size_t i = 0; i < n; i++) {
        if (reqs[i]->cls != QD_REQ_SEARCH || done[i])
            continue;
        /* Gather the requests sharing this one's k, min_score and ranking. */
        size_t k = reqs[i]->k, nq = 0;
        float ms = reqs[i]->min_score;
        qd_rank_mode rk = reqs[i]->rank;
        for (size_t j = i; j < n; j++) {
            qd_req *r = reqs[j];
            if (r->cls != QD_REQ_SEARCH || done[j] || r->k != k || r->min_score != ms ||
                r->rank != rk)
                continue;
            memcpy(q + nq * dim, vec + first[j] * dim, r->ntexts * dim * sizeof(float));
            memcpy(qt + nq, r->texts, r->ntexts * sizeof *qt);
            memcpy(ql + nq, r->lens, r->ntexts * sizeof *ql);
            nq += r->ntexts;
        }
        int by_be;
        rc = search(p, q, nq, k, ms, rk, qt, ql, NULL, res, &by_be);
        if (rc)
            for (size_t t = 0; t < nq; t++)
                hits_release(p, &res[t]);
        size_t at = 0;
        for (size_t j = i; j < n; j++) {
            qd_req *r = reqs[j];
            if (r->cls != QD_REQ_SEARCH || done[j] || r->k != k || r->min_score != ms ||
                r->rank != rk)
                continue;
            done[j] = 1;
            if (rc) {
                if (by_be)
                    fail_be(p, r, rc);
                else
                    fail_own(r, rc);
                continue;
            }
            for (size_t t = 0; t < r->ntexts; t++) {
                r->hits[t] = res[at + t];
                /* A text without a single known token is the zero vector, equally far
                 * from everything: it has no neighbours worth reporting. */
                if (is_zero(vec + (first[j] + t) * dim, (int)dim))
                    hits_release(p, &r->hits[t]);
            }
            at += r->ntexts;
        }
        memset(res, 0, total * sizeof *res);
    }
    rc = 0;
fail:
    if (rc)
        for (size_t i = 0; i < n; i++)
            if (reqs[i]->cls == QD_REQ_SEARCH && reqs[i]->code == QD_CODE_OK)
                fail_own(reqs[i], rc); /* an allocation or the encoder */
    qd_free(texts);
    qd_free(lens);
    qd_free(first);
    qd_free(done);
    qd_free(vec);
    qd_free(q);
    qd_free(res);
    qd_free(qt);
    qd_free(ql);
}

/* Consecutive adds: one encoding pass and one transaction. */
static void run_adds(const qd_proto *p, qd_enc_ws *ws, qd_req **reqs, size_t n)
{
    size_t dim = (size_t)qd_model_dim(p->be->model);
    const char **texts = qd_mallocarray(n, sizeof *texts);
    size_t *lens = qd_mallocarray(n, sizeof *lens);
    qd_store_item *items = qd_calloc(n, sizeof *items);
    qd_store_result *res = qd_calloc(n, sizeof *res);
    qd_req **who = qd_mallocarray(n, sizeof *who); /* the request of each item */
    float *vec = NULL;
    int rc = QD_ERR_NOMEM;
    if (!texts || !lens || !items || !res || !who)
        goto fail;
    for (size_t i = 0; i < n; i++) {
        texts[i] = reqs[i]->texts[0];
        lens[i] = reqs[i]->lens[0];
    }
    rc = encode(p, ws, texts, lens, n, &vec);
    if (rc)
        goto fail;
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        qd_req *r = reqs[i];
        if (is_zero(vec + i * dim, (int)dim)) {
            fail(r, QD_CODE_BAD_REQUEST, "the text has no words");
            continue;
        }
        items[m] = (qd_store_item){r->id, r->id_len, r->texts[0], r->lens[0], vec + i * dim};
        char why[QD_ERRMSG_MAX];
        if (p->be->check_item && p->be->check_item(&items[m], why, sizeof why)) {
            fail(r, QD_CODE_BAD_REQUEST, "%s", why);
            continue;
        }
        who[m++] = r;
    }
    rc = m ? p->be->add(p->be->ctx, items, m, QD_STORE_REPOSTS, res) : 0;
    for (size_t i = 0; i < m; i++) {
        qd_req *r = who[i];
        if (rc) {
            fail_be(p, r, rc);
            continue;
        }
        switch (res[i].status) {
        case QD_STORE_ADDED:
        case QD_STORE_REPLACED:
        case QD_STORE_REPOST:
            r->row = res[i].row;
            break;
        case QD_STORE_DUP_ID:
            fail(r, QD_CODE_DUP_ID, "a question with this id is already stored");
            break;
        case QD_STORE_DUP_TEXT:
            fail(r, QD_CODE_DUP_TEXT, "a question with the same text is already stored");
            break;
        default:
            fail(r, QD_CODE_BAD_REQUEST, "the text has no words");
            break;
        }
    }
    rc = 0;
fail:
    if (rc)
        for (size_t i = 0; i < n; i++)
            if (reqs[i]->code == QD_CODE_OK)
                fail_own(reqs[i], rc); /* an allocation or the encoder */
    qd_free(texts);
    qd_free(lens);
    qd_free(items);
    qd_free(res);
    qd_free(who);
    qd_free(vec);
}

/* check: the duplicates of a new post, then (with store) the post itself. */
static void run_check(const qd_proto *p, qd_enc_ws *ws, qd_req *r)
{
    float *vec = NULL;
    if (!r->min_p_given)
        r->min_p = qd_model_get_scoring(p->be->model)->min_p;
    int rc = encode(p, ws, r->texts, r->lens, 1, &vec);
    if (rc) {
        fail_own(r, rc);
        return;
    }
    if (is_zero(vec, qd_model_dim(p->be->model))) {
        fail(r, QD_CODE_BAD_REQUEST, "the text has no words");
        goto out;
    }
    r->hits = qd_calloc(1, sizeof *r->hits);
    if (!r->hits) {
        fail_own(r, QD_ERR_NOMEM);
        goto out;
    }
    /* The post's own id is excluded: re-checking a stored post must not find itself. */
    const char *exclude[1] = {r->id};
    int by_be;
    rc = search(p, vec, 1, r->k, r->min_score, r->rank, r->texts, r->lens,
                r->id ? exclude : NULL, r->hits, &by_be);
    if (rc) {
        if (by_be)
            fail_be(p, r, rc);
        else
            fail_own(r, rc);
        goto out;
    }
    if (!r->store) {
        r->not_stored = "not asked to store";
        goto out;
    }
    qd_store_item item = {r->id, r->id_len, r->texts[0], r->lens[0], vec};
    qd_store_result res = {0};
    char why[QD_ERRMSG_MAX];
    if (p->be->check_item && p->be->check_item(&item, why, sizeof why)) {
        fail(r, QD_CODE_BAD_REQUEST, "%s", why);
        goto out;
    }
    rc = p->be->add(p->be->ctx, &item, 1, QD_STORE_REPOSTS, &res);
    if (rc) {
        fail_be(p, r, rc);
        goto out;
    }
    switch (res.status) {
    case QD_STORE_ADDED:
    case QD_STORE_REPLACED:
    case QD_STORE_REPOST:
        r->stored = 1;
        r->row = res.row;
        break;
    case QD_STORE_DUP_ID:
        fail(r, QD_CODE_DUP_ID, "a question with this id is already stored");
        break;
    case QD_STORE_DUP_TEXT:
        r->not_stored = "duplicate_text";
        break;
    default:
        fail(r, QD_CODE_BAD_REQUEST, "the text has no words");
        break;
    }
out:
    qd_free(vec);
}

static void run_one(const qd_proto *p, qd_enc_ws *ws, qd_req *r)
{
    int rc;
    switch (r->op) {
    case QD_OP_REMOVE:
        rc = p->be->remove(p->be->ctx, r->id, r->id_len);
        if (rc)
            fail_be(p, r, rc);
        break;
    case QD_OP_GET:
        rc = p->be->get(p->be->ctx, r->id, r->id_len, &r->got);
        if (rc)
            fail_be(p, r, rc);
        else
            r->have_got = 1;
        break;
    case QD_OP_STATS:
    case QD_OP_METRICS:
        r->info = qd_calloc(1, sizeof *r->info);
        if (!r->info)
            fail_own(r, QD_ERR_NOMEM);
        else if ((rc = p->be->info(p->be->ctx, r->info)) != 0)
            fail_be(p, r, rc);
        break;
    case QD_OP_CHECK:
        run_check(p, ws, r);
        break;
    case QD_OP_VERDICT:
        if (!p->be->verdict)
            fail(r, QD_CODE_UNAVAILABLE, "this server keeps no verdicts");
        else if ((rc = p->be->verdict(p->be->ctx, r->id, r->id_len, r->of, r->of_len,
                                      r->duplicate)) != 0)
            fail_be(p, r, rc);
        break;
    case QD_OP_RELOAD:
        if (!p->be->reload) {
            fail(r, QD_CODE_UNAVAILABLE, "this server has no store to switch to another "
                 "model");
        } else if ((rc = p->be->reload(p->be->ctx, r->from_fp, r->to_fp)) == 0) {
            r->switched = 1;
        } else if (rc != QD_ERR_NOTFOUND) {
            /* "not found" would name a question id: say what is missing instead. */
            fail_be(p, r, rc);
        }
        break;
    default:
        /* A parsed request of another class cannot get here (class and op match). */
        QD_ASSERT(!"request of unexpected op in run_one");
    }
}

/* Runs the list with p's backend as it is, its model the one the caller pinned. */
static void run_list(const qd_proto *p, qd_enc_ws *ws, qd_req **reqs, size_t n)
{
    run_searches(p, ws, reqs, n);
    for (size_t i = 0; i < n; i++) {
        qd_req *r = reqs[i];
        if (r->cls == QD_REQ_DONE || r->cls == QD_REQ_SEARCH || r->code != QD_CODE_OK)
            continue;
        if (r->op == QD_OP_ADD) {
            size_t j = i + 1;
            while (j < n && reqs[j]->op == QD_OP_ADD && reqs[j]->cls == QD_REQ_WRITE &&
                   reqs[j]->code == QD_CODE_OK)
                j++;
            run_adds(p, ws, reqs + i, j - i);
            i = j - 1;
        } else {
            run_one(p, ws, r);
        }
    }
}

void qd_proto_run(const qd_proto *p, qd_enc_ws *ws, qd_req **reqs, size_t n)
{
    /* A reload runs alone (the scheduler joins adds only) and unpinned: it waits for
     * the pins of every other list to go. */
    int reload = 0;
    for (size_t i = 0; i < n; i++)
        reload |= reqs[i]->op == QD_OP_RELOAD && reqs[i]->code == QD_CODE_OK &&
                  reqs[i]->cls != QD_REQ_DONE;
    if (!p->be->pin || reload) {
        QD_ASSERT(!reload || n == 1);
        run_list(p, ws, reqs, n);
        return;
    }
    /* Everything of this list (encoding, searches, adds, check's min_p) sees the
     * model in force when it started, even if a reload waits meanwhile. */
    qd_backend be = *p->be;
    qd_proto pp = *p;
    be.model = p->be->pin(p->be->ctx);
    pp.be = &be;
    run_list(&pp, ws, reqs, n);
    p->be->unpin(p->be->ctx);
}

/* --- replies ------------------------------------------------------------------------ */

/* Copies s[0..n) with every ill-formed UTF-8 sequence replaced by U+FFFD (one per
 * maximal subpart, as qd_utf8_decode takes them). */
static char *utf8_repair(const char *s, size_t n, size_t *outlen)
{
    char *o = qd_mallocarray(n + 1, 3);
    if (!o)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        int32_t cp;
        size_t len = qd_utf8_decode((const unsigned char *)s + i, n - i, &cp);
        if (cp < 0) {
            memcpy(o + k, "\xEF\xBF\xBD", 3);
            k += 3;
        } else {
            memcpy(o + k, s + i, len);
            k += len;
        }
        i += len;
    }
    o[k] = '\0';
    *outlen = k;
    return o;
}

/* A JSON string of s[0..n), repaired if it is not valid UTF-8. */
static json_t *jstr(const char *s, size_t n)
{
    if (!s)
        return json_null();
    json_t *j = json_stringn(s, n);
    if (j)
        return j;
    size_t m;
    char *fixed = utf8_repair(s, n, &m);
    if (!fixed)
        return NULL;
    j = json_stringn(fixed, m);
    qd_free(fixed);
    return j;
}

/* A JSON number, or null for a value JSON cannot hold (an infinite score). */
static json_t *jreal(double x)
{
    return isfinite(x) ? json_real(x) : json_null();
}

/* Whole seconds of a unix time, 0 if it is not a plausible one. */
static json_t *jtime(double t)
{
    return json_integer(isfinite(t) && t > 0 && t < 1e15 ? (json_int_t)t : 0);
}

/* Sets o[key] = v, remembering a failure (v NULL: out of memory) in *bad. */
static void put(json_t *o, const char *key, json_t *v, int *bad)
{
    if (!v || json_object_set_new(o, key, v))
        *bad = 1;
}

/* The results; with min_p >= 0 (check) each gets "duplicate": p_duplicate >= min_p. */
static json_t *hits_json(const qd_store_hits *h, float min_p, int *bad)
{
    json_t *a = json_array();
    if (!a) {
        *bad = 1;
        return NULL;
    }
    for (size_t i = 0; h && i < h->n; i++) {
        const qd_store_hit *x = &h->hit[i];
        json_t *o = json_object();
        if (!o) {
            *bad = 1;
            break;
        }
        put(o, "id", jstr(x->row.ext_id, x->row.ext_id ? strlen(x->row.ext_id) : 0), bad);
        put(o, "text", jstr(x->row.text, x->row.text ? strlen(x->row.text) : 0), bad);
        put(o, "score", jreal(x->score), bad);
        put(o, "cosine", jreal(x->cosine), bad);
        put(o, "lexical", jreal(x->lexical), bad);
        put(o, "p_duplicate", jreal(x->p_duplicate), bad);
        if (min_p >= 0)
            put(o, "duplicate", json_boolean(x->p_duplicate >= min_p), bad);
        if (json_array_append_new(a, o))
            *bad = 1;
    }
    return a;
}

static json_t *lat_json(double *ms, size_t n, int *bad)
{
    qd_proto_lat l;
    qd_proto_latency(ms, n, &l);
    json_t *o = json_object();
    if (!o) {
        *bad = 1;
        return NULL;
    }
    put(o, "n", json_integer((json_int_t)l.n), bad);
    put(o, "p50", jreal(l.p50), bad);
    put(o, "p90", jreal(l.p90), bad);
    put(o, "p99", jreal(l.p99), bad);
    put(o, "max", jreal(l.max), bad);
    return o;
}

static json_t *stats_json(const qd_req *r, int *bad)
{
    json_t *o = json_object();
    if (!o) {
        *bad = 1;
        return NULL;
    }
    const qd_store_info *in = r->info;
    const qd_proto_stats *s = r->stats;
    if (s)
        put(o, "uptime_s", jreal(s->uptime_s), bad);
    if (in) {
        put(o, "questions", json_integer((json_int_t)in->live), bad);
        put(o, "tombstones", json_integer((json_int_t)in->tombstones), bad);
        put(o, "seq", json_integer((json_int_t)in->seq), bad);
        put(o, "checkpoint_seq", json_integer((json_int_t)in->checkpoint_seq), bad);
        /* The FAISS file lags while checkpoints fail (a full disk): served from memory. */
        put(o, "checkpoint_failing", json_boolean(in->checkpoint_failing), bad);
        put(o, "checkpoint_failures", json_integer((json_int_t)in->checkpoint_failures), bad);
        if (in->checkpoint_error[0])
            put(o, "checkpoint_error",
                jstr(in->checkpoint_error, strnlen(in->checkpoint_error,
                                                   sizeof in->checkpoint_error)),
                bad);
        put(o, "unsaved_changes", json_integer((json_int_t)in->unsaved_changes), bad);
        put(o, "unsaved_bytes", json_integer((json_int_t)in->unsaved_bytes), bad);
        put(o, "readonly", json_boolean(in->readonly), bad);
    }
    if (s) {
        json_t *req = json_object(), *err = json_object(), *cl = json_object(),
               *lat = json_object();
        uint64_t total = 0;
        for (int i = 0; req && i < QD_OP_COUNT; i++) {
            put(req, qd_proto_op_name(i), json_integer((json_int_t)s->requests[i]), bad);
            total += s->requests[i];
        }
        put(o, "requests_total", json_integer((json_int_t)total), bad);
        put(o, "requests", req, bad);
        for (int i = 1; err && i < QD_CODE_COUNT; i++)
            put(err, qd_proto_code_name(i), json_integer((json_int_t)s->errors[i]), bad);
        put(o, "errors", err, bad);
        if (cl) {
            put(cl, "connected", json_integer((json_int_t)s->clients), bad);
            put(cl, "total", json_integer((json_int_t)s->clients_total), bad);
            put(cl, "refused", json_integer((json_int_t)s->clients_refused), bad);
            put(cl, "dropped", json_integer((json_int_t)s->clients_dropped), bad);
            put(cl, "paused", json_integer((json_int_t)s->clients_paused), bad);
        }
        put(o, "clients", cl, bad);
        put(o, "queued", json_integer((json_int_t)s->queued), bad);
        put(o, "cancelled", json_integer((json_int_t)s->cancelled), bad);
        put(o, "threads", json_integer(s->threads), bad);
        put(o, "unsaved_writes", json_integer((json_int_t)s->unsaved_writes), bad);
        put(o, "checkpoints", json_integer((json_int_t)s->checkpoints), bad);
        if (lat) {
            put(lat, "read", lat_json(s->lat_search, s->n_search, bad), bad);
            put(lat, "write", lat_json(s->lat_write, s->n_write, bad), bad);
        }
        put(o, "latency_ms", lat, bad);
    }
    if (in) {
        json_t *m = json_object(), *ix = json_object();
        if (m) {
            put(m, "fingerprint", jstr(in->model_fingerprint,
                                       strnlen(in->model_fingerprint, sizeof in->model_fingerprint)),
                bad);
            put(m, "path", jstr(in->model_path, strnlen(in->model_path, sizeof in->model_path)),
                bad);
            put(m, "dim", json_integer(in->dim), bad);
        }
        put(o, "model", m, bad);
        if (ix) {
            put(ix, "spec", jstr(in->index_spec, strnlen(in->index_spec, sizeof in->index_spec)),
                bad);
            put(ix, "vectors", json_integer((json_int_t)in->faiss_count), bad);
            put(ix, "db_bytes", json_integer((json_int_t)in->db_bytes), bad);
            put(ix, "faiss_bytes", json_integer((json_int_t)in->faiss_bytes), bad);
        }
        put(o, "index", ix, bad);
    }
    return o;
}

/* The reply object of r (NULL when out of memory). */
static json_t *reply_json(const qd_req *r, int code, const char *msg)
{
    int bad = 0;
    json_t *o = json_object();
    if (!o)
        return NULL;
    put(o, "ok", json_boolean(code == QD_CODE_OK), &bad);
    if (r && r->tag && json_object_set(o, "tag", r->tag))
        bad = 1;
    if (code != QD_CODE_OK) {
        json_t *e = json_object();
        if (e) {
            put(e, "code", json_string(qd_proto_code_name(code)), &bad);
            put(e, "message", jstr(msg, strlen(msg)), &bad);
        }
        put(o, "error", e, &bad);
    } else if (r) {
        switch (r->op) {
        case QD_OP_QUERY:
            if (r->batch) {
                json_t *a = json_array();
                for (size_t i = 0; a && i < r->ntexts; i++)
                    if (json_array_append_new(a, hits_json(&r->hits[i], -1, &bad)))
                        bad = 1;
                put(o, "results", a, &bad);
            } else {
                put(o, "results", hits_json(r->hits, -1, &bad), &bad);
            }
            break;
        case QD_OP_ADD:
            put(o, "id", jstr(r->id, r->id_len), &bad);
            put(o, "row", json_integer(r->row), &bad);
            break;
        case QD_OP_REMOVE:
            put(o, "id", jstr(r->id, r->id_len), &bad);
            break;
        case QD_OP_VERDICT:
            put(o, "id", jstr(r->id, r->id_len), &bad);
            put(o, "of", jstr(r->of, r->of_len), &bad);
            put(o, "duplicate", json_boolean(r->duplicate), &bad);
            break;
        case QD_OP_RELOAD:
            put(o, "switched", json_boolean(r->switched), &bad);
            if (r->switched) {
                put(o, "from", json_string(r->from_fp), &bad);
                put(o, "to", json_string(r->to_fp), &bad);
            } else {
                put(o, "reason", json_string("no model is staged (qdup-index reembed "
                                             "stages one)"), &bad);
            }
            break;
        case QD_OP_GET:
            put(o, "id", jstr(r->got.ext_id, r->got.ext_id ? strlen(r->got.ext_id) : 0), &bad);
            put(o, "text", jstr(r->got.text, r->got.text ? strlen(r->got.text) : 0), &bad);
            put(o, "row", json_integer(r->got.row), &bad);
            put(o, "created", jtime(r->got.created), &bad);
            break;
        case QD_OP_CHECK: {
            put(o, "duplicates", hits_json(r->hits, r->min_p, &bad), &bad);
            int any = 0;
            for (size_t i = 0; r->hits && i < r->hits->n; i++)
                any |= r->hits->hit[i].p_duplicate >= r->min_p;
            put(o, "duplicate", json_boolean(any), &bad);
            put(o, "min_p", jreal(r->min_p), &bad);
            put(o, "stored", json_boolean(r->stored), &bad);
            if (r->stored)
                put(o, "row", json_integer(r->row), &bad);
            else if (r->not_stored)
                put(o, "reason", json_string(r->not_stored), &bad);
            break;
        }
        case QD_OP_STATS:
            put(o, "stats", stats_json(r, &bad), &bad);
            break;
        case QD_OP_METRICS: {
            char *text;
            size_t len;
            if (qd_metrics_format(r->info, r->stats, &text, &len) == 0) {
                put(o, "metrics", jstr(text, len), &bad);
                qd_free(text);
            } else {
                bad = 1;
            }
            break;
        }
        default:
            break;
        }
    }
    if (bad) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* Growing output buffer for json_dump_callback, refusing to pass `max` bytes. */
typedef struct obuf {
    char *p;      /* the bytes so far */
    size_t len;   /* bytes used */
    size_t cap;   /* bytes allocated */
    size_t max;   /* limit */
    int over;     /* 1 if the limit was hit */
    int nomem;    /* 1 if an allocation failed */
} obuf;

static int obuf_put(const char *b, size_t n, void *data)
{
    obuf *o = data;
    /* Sticky: jansson ignores the callback's failure on some paths (an object's key)
     * and goes on, so a later chunk must not be appended after a lost one. */
    if (o->over || o->nomem)
        return -1;
    if (o->len + n + 1 > o->max) {
        o->over = 1;
        return -1;
    }
    if (o->len + n + 1 > o->cap) {
        size_t cap = o->cap ? o->cap : 256;
        while (cap < o->len + n + 1)
            cap *= 2;
        char *p = qd_realloc(o->p, cap);
        if (!p) {
            o->nomem = 1;
            return -1;
        }
        o->p = p;
        o->cap = cap;
    }
    memcpy(o->p + o->len, b, n);
    o->len += n;
    return 0;
}

/* Serializes j plus '\n' into a fresh buffer; 1 if it would pass max. */
static int dump_line(json_t *j, size_t max, char **out, size_t *len)
{
    obuf o = {.max = max};
    int rc = json_dump_callback(j, obuf_put, &o, DUMP_FLAGS);
    if (rc != 0 || obuf_put("\n", 1, &o) || o.over || o.nomem || !o.p) {
        qd_free(o.p);
        return o.over ? 1 : QD_ERR_NOMEM;
    }
    o.p[o.len] = '\0'; /* obuf_put always leaves room for it */
    *out = o.p;
    *len = o.len;
    return 0;
}

/* The reply of last resort, when memory is short. */
static int static_line(const char *line, char **out, size_t *len)
{
    *len = strlen(line);
    *out = qd_strndup(line, *len);
    return *out ? 0 : QD_ERR_NOMEM;
}

static const char oom_line[] =
    "{\"ok\":false,\"error\":{\"code\":\"internal\",\"message\":\"out of memory\"}}\n";

/* --- query replies, written directly ------------------------------------------------- */

/* A query's reply has one fixed shape and is most of what the daemon writes, so it is
 * written straight into the buffer, byte for byte what jansson writes for the same
 * value (test_proto compares the two on random results): no tree of jansson values
 * (a dozen allocations per result) to build, walk and free. Strings are escaped as
 * jansson escapes them with DUMP_FLAGS ('"', '\\' and the control characters; other
 * characters as they are), after the same repair of invalid UTF-8; numbers as
 * jansson's dtostr writes them at precision 7. Other replies keep going through
 * jansson. */

static atomic_int reply_jansson_only;

void qd_proto_reply_use_jansson(int on)
{
    atomic_store(&reply_jansson_only, on);
}

static int ostr(obuf *o, const char *s, size_t n)
{
    return obuf_put(s, n, o);
}

/* A JSON string of s[0..n) (null for NULL), escaped as jansson escapes it. */
static int put_str(obuf *o, const char *s, size_t n)
{
    if (!s)
        return ostr(o, "null", 4);
    for (size_t i = 0; i < n;) {
        int32_t cp;
        i += qd_utf8_decode((const unsigned char *)s + i, n - i, &cp);
        if (cp < 0) {
            /* Not valid UTF-8: what jstr sends jansson instead. */
            size_t m;
            char *fixed = utf8_repair(s, n, &m);
            if (!fixed) {
                o->nomem = 1;
                return -1;
            }
            int rc = put_str(o, fixed, m);
            qd_free(fixed);
            return rc;
        }
    }
    if (ostr(o, "\"", 1))
        return -1;
    size_t run = 0; /* bytes of s before i not yet written */
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        char esc[8];
        size_t el = 2;
        esc[0] = '\\';
        switch (c) {
        case '"': esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\b': esc[1] = 'b'; break;
        case '\f': esc[1] = 'f'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        default: el = (size_t)snprintf(esc, sizeof esc, "\\u%04X", (unsigned)c); break;
        }
        if (ostr(o, s + run, i - run) || ostr(o, esc, el))
            return -1;
        run = i + 1;
    }
    return ostr(o, s + run, n - run) || ostr(o, "\"", 1) ? -1 : 0;
}

/* "%.7g" of f as glibc's printf writes it, for the scores' usual magnitudes: f = 0 or
 * 1e-4 <= |f| < 2^20 (fixed notation); -1 for any other f (the caller uses snprintf).
 * Exact, in integers: f = m 2^-k, so the seven digits are m 10^s / 2^k rounded half to
 * even (printf's rounding of the exact binary value) with s = 6 - X, X the decimal
 * exponent, itself found by exact comparisons with powers of ten. test_proto compares
 * it with snprintf on every float with few mantissa bits (the ties) and a sweep of the
 * rest. */
static int g7_float(float f, char *b)
{
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    int neg = (int)(bits >> 31), be = (int)((bits >> 23) & 0xFF);
    char *p = b;
    if (neg)
        *p++ = '-';
    if ((bits & 0x7FFFFFFFu) == 0) {
        *p++ = '0';
        return (int)(p - b);
    }
    if (be == 0 || be < 127 - 14 || be >= 127 + 20)
        return -1; /* subnormal, below 2^-14 or at least 2^20 */
    typedef unsigned __int128 u128;
    uint64_t m = (bits & 0x7FFFFFu) | 0x800000u;
    int k = 150 - be; /* f = m / 2^k, 4 <= k <= 37 */
    static const uint64_t p10[] = {1, 10, 100, 1000, 10000, 100000, 1000000, 10000000,
                                   100000000, 1000000000, 10000000000ULL};
    int X = 6;
    for (; X >= -4; X--) { /* the largest X with 10^X <= f */
        int ge = X >= 0 ? (u128)m >= (u128)p10[X] << k : (u128)m * p10[-X] >= (u128)1 << k;
        if (ge)
            break;
    }
    if (X < -4)
        return -1;
    int sc = 6 - X; /* 0..10 */
    u128 N = (u128)m * p10[sc];
    uint64_t q = (uint64_t)(N >> k);
    u128 rem = N - ((u128)q << k), half = (u128)1 << (k - 1);
    if (rem > half || (rem == half && (q & 1)))
        q++;
    if (q == p10[7]) { /* rounded up to the next power of ten */
        q = p10[6];
        X++;
    }
    char d[7];
    for (int i = 6; i >= 0; i--) {
        d[i] = (char)('0' + q % 10);
        q /= 10;
    }
    int last = 6; /* the last digit to write: trailing zeros after the point go */
    while (last > X && last > 0 && d[last] == '0')
        last--;
    if (X < 0) {
        *p++ = '0';
        *p++ = '.';
        for (int i = 0; i < -X - 1; i++)
            *p++ = '0';
        for (int i = 0; i <= last; i++)
            *p++ = d[i];
    } else {
        for (int i = 0; i <= X; i++)
            *p++ = d[i];
        if (last > X) {
            *p++ = '.';
            for (int i = X + 1; i <= last; i++)
                *p++ = d[i];
        }
    }
    return (int)(p - b);
}

/* A number as jansson writes a real at precision 7 (null if not finite, as jreal):
 * "%.7g", ".0" added when that reads as an integer, the exponent without '+' or
 * leading zeros. */
static int put_real(obuf *o, float x)
{
    if (!isfinite(x))
        return ostr(o, "null", 4);
    char b[40];
    int n = g7_float(x, b);
    if (n < 0)
        n = snprintf(b, sizeof b, "%.7g", (double)x);
    if (n <= 0 || (size_t)n >= sizeof b - 2)
        return -1;
    char *e = memchr(b, 'e', (size_t)n);
    if (!e && !memchr(b, '.', (size_t)n)) {
        memcpy(b + n, ".0", 3);
        n += 2;
    }
    if (e) {
        char *start = e + 1, *end = e + 2;
        if (*start == '-')
            start++;
        while (*end == '0')
            end++;
        if (end != start) {
            memmove(start, end, (size_t)(b + n - end) + 1);
            n -= (int)(end - start);
        }
    }
    return ostr(o, b, (size_t)n);
}

/* One list of results, as hits_json makes it (without "duplicate"). */
static int put_hits(obuf *o, const qd_store_hits *h)
{
    if (ostr(o, "[", 1))
        return -1;
    for (size_t i = 0; h && i < h->n; i++) {
        const qd_store_hit *x = &h->hit[i];
        const char *id = x->row.ext_id, *text = x->row.text;
        if (ostr(o, i ? ",{\"id\":" : "{\"id\":", i ? 7 : 6) ||
            put_str(o, id, id ? strlen(id) : 0) || ostr(o, ",\"text\":", 8) ||
            put_str(o, text, text ? strlen(text) : 0) || ostr(o, ",\"score\":", 9) ||
            put_real(o, x->score) || ostr(o, ",\"cosine\":", 10) || put_real(o, x->cosine) ||
            ostr(o, ",\"lexical\":", 11) || put_real(o, x->lexical) ||
            ostr(o, ",\"p_duplicate\":", 15) || put_real(o, x->p_duplicate) ||
            ostr(o, "}", 1))
            return -1;
    }
    return ostr(o, "]", 1);
}

/* The reply line of a successful query (see the section's comment); 1 if it would
 * pass max, QD_ERR_NOMEM. */
static int query_line(const qd_req *r, size_t max, char **out, size_t *len)
{
    obuf o = {.max = max};
    int bad = ostr(&o, "{\"ok\":true", 10);
    if (!bad && r->tag)
        bad = ostr(&o, ",\"tag\":", 7) ||
              json_dump_callback(r->tag, obuf_put, &o, DUMP_FLAGS | JSON_ENCODE_ANY) != 0;
    if (!bad)
        bad = ostr(&o, ",\"results\":", 11);
    if (!bad && r->batch) {
        bad = ostr(&o, "[", 1);
        for (size_t i = 0; !bad && i < r->ntexts; i++)
            bad = (i && ostr(&o, ",", 1)) || put_hits(&o, &r->hits[i]);
        bad = bad || ostr(&o, "]", 1);
    } else if (!bad) {
        bad = put_hits(&o, r->hits);
    }
    if (bad || ostr(&o, "}\n", 2) || o.over || o.nomem || !o.p) {
        qd_free(o.p);
        return o.over ? 1 : QD_ERR_NOMEM;
    }
    o.p[o.len] = '\0'; /* obuf_put always leaves room for it */
    *out = o.p;
    *len = o.len;
    return 0;
}

int qd_proto_reply(const qd_proto *p, const qd_req *r, char **out, size_t *len)
{
    int rc;
    if (r->code == QD_CODE_OK && r->op == QD_OP_QUERY &&
        !atomic_load_explicit(&reply_jansson_only, memory_order_relaxed)) {
        rc = query_line(r, p->lim.max_reply, out, len);
    } else {
        json_t *j = reply_json(r, r->code, r->msg);
        if (!j)
            return static_line(oom_line, out, len);
        rc = dump_line(j, p->lim.max_reply, out, len);
        json_decref(j);
    }
    if (rc == 1) {
        char msg[160];
        snprintf(msg, sizeof msg, "the reply would be over the limit of %zu bytes; ask for "
                 "fewer results", p->lim.max_reply);
        json_t *j = reply_json(r, QD_CODE_TOO_LARGE, msg);
        rc = j ? dump_line(j, SIZE_MAX, out, len) : QD_ERR_NOMEM;
        json_decref(j);
    }
    if (rc)
        return static_line(oom_line, out, len);
    return 0;
}

int qd_proto_error_line(int code, const char *msg, char **out, size_t *len)
{
    json_t *j = reply_json(NULL, code, msg);
    int rc = j ? dump_line(j, SIZE_MAX, out, len) : QD_ERR_NOMEM;
    json_decref(j);
    if (rc)
        return static_line(oom_line, out, len);
    return 0;
}

void qd_proto_req_free(const qd_proto *p, qd_req *r)
{
    if (!r)
        return;
    if (r->hits) {
        for (size_t i = 0; i < r->ntexts; i++)
            hits_release(p, &r->hits[i]);
        qd_free(r->hits);
    }
    if (r->have_got)
        p->be->row_free(&r->got);
    if (r->stats) {
        qd_free(r->stats->lat_search);
        qd_free(r->stats->lat_write);
        qd_free(r->stats);
    }
    qd_free(r->info);
    qd_free(r->texts);
    qd_free(r->lens);
    json_decref(r->root);
    qd_free(r);
}

int qd_proto_handle(const qd_proto *p, qd_enc_ws *ws, const char *line, size_t len,
                    const qd_peer *peer, char **out, size_t *outlen)
{
    qd_req *r;
    int rc = qd_proto_parse(p, line, len, peer, &r);
    if (rc)
        return rc;
    if (r->cls != QD_REQ_DONE)
        qd_proto_run(p, ws, &r, 1);
    rc = qd_proto_reply(p, r, out, outlen);
    qd_proto_req_free(p, r);
    return rc;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile of n sorted values. */
static double rank(const double *v, size_t n, double pct)
{
    size_t i = (size_t)ceil(pct / 100.0 * (double)n);
    return v[i ? i - 1 : 0];
}

void qd_proto_latency(double *ms, size_t n, qd_proto_lat *out)
{
    memset(out, 0, sizeof *out);
    out->n = n;
    if (n == 0)
        return;
    qsort(ms, n, sizeof *ms, cmp_double);
    out->p50 = rank(ms, n, 50);
    out->p90 = rank(ms, n, 90);
    out->p99 = rank(ms, n, 99);
    out->max = ms[n - 1];
}
