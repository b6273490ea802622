/*
 * metrics.c - the Prometheus text format of qdup-daemon's figures (metrics.h).
 *
 * The text is appended to a growing buffer, one family at a time: HELP, TYPE, then its
 * samples. Every string that becomes a label value (op and code names are fixed; the
 * index kind and model path come from the store) goes through label_value(), which
 * escapes what the format requires.
 */
#include "qdup/metrics.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "qdup/common.h"
#include "qdup/proto.h"

const double qd_metrics_bucket_s[QD_METRICS_BUCKETS] = {
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
};

void qd_metrics_hist_add(qd_metrics_hist *h, double ms)
{
    double s = ms / 1e3;
    size_t i = 0;
    while (i < QD_METRICS_BUCKETS && s > qd_metrics_bucket_s[i])
        i++;
    h->bucket[i]++;
    h->count++;
    h->sum_s += s;
}

/* The output so far. */
typedef struct mbuf {
    char *p;    /* the text */
    size_t len; /* bytes used */
    size_t cap; /* bytes allocated */
    int nomem;  /* 1 once an allocation failed */
} mbuf;

__attribute__((format(printf, 2, 3))) static void put(mbuf *b, const char *fmt, ...)
{
    if (b->nomem)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->nomem = 1;
            return;
        }
        if (b->p && b->len + (size_t)n < b->cap) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap ? b->cap : 4096;
        while (cap <= b->len + (size_t)n)
            cap *= 2;
        char *p = qd_realloc(b->p, cap);
        if (!p) {
            b->nomem = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
}

/* A label value with \, " and newline escaped, at most 1023 bytes of the input. */
static const char *label_value(const char *v, size_t vlen, char *out, size_t outlen)
{
    size_t n = 0;
    for (size_t i = 0; i < vlen && v[i] && n + 3 < outlen; i++) {
        char ch = v[i];
        if (ch == '\\' || ch == '"') {
            out[n++] = '\\';
            out[n++] = ch;
        } else if (ch == '\n') {
            out[n++] = '\\';
            out[n++] = 'n';
        } else {
            out[n++] = ch;
        }
    }
    out[n] = '\0';
    return out;
}

static void family(mbuf *b, const char *name, const char *type, const char *help)
{
    put(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void gauge(mbuf *b, const char *name, const char *help, double v)
{
    family(b, name, "gauge", help);
    put(b, "%s %.17g\n", name, v);
}

static void counter(mbuf *b, const char *name, const char *help, uint64_t v)
{
    family(b, name, "counter", help);
    put(b, "%s %llu\n", name, (unsigned long long)v);
}

static void hist(mbuf *b, const char *name, const char *kind, const qd_metrics_hist *h)
{
    uint64_t cum = 0;
    for (size_t i = 0; i < QD_METRICS_BUCKETS; i++) {
        cum += h->bucket[i];
        put(b, "%s_bucket{kind=\"%s\",le=\"%g\"} %llu\n", name, kind, qd_metrics_bucket_s[i],
            (unsigned long long)cum);
    }
    cum += h->bucket[QD_METRICS_BUCKETS];
    put(b, "%s_bucket{kind=\"%s\",le=\"+Inf\"} %llu\n", name, kind, (unsigned long long)cum);
    put(b, "%s_sum{kind=\"%s\"} %.17g\n", name, kind, h->sum_s);
    put(b, "%s_count{kind=\"%s\"} %llu\n", name, kind, (unsigned long long)h->count);
}

int qd_metrics_format(const qd_store_info *in, const qd_proto_stats *st, char **out,
                      size_t *len)
{
    mbuf b = {0};
    char v1[1100], v2[1100];
    *out = NULL;
    *len = 0;
    if (st) {
        family(&b, "qdup_requests_total", "counter",
               "Requests answered, by op and reply code (op \"none\": not a request).");
        for (int op = -1; op < QD_OP_COUNT; op++)
            for (int code = 0; code < QD_CODE_COUNT; code++) {
                uint64_t n = st->replies[op + 1][code];
                /* Every op's ok line is always there, so rate() sees it from zero. */
                if (n || (code == QD_CODE_OK && op >= 0))
                    put(&b, "qdup_requests_total{op=\"%s\",code=\"%s\"} %llu\n",
                        qd_proto_op_name(op), qd_proto_code_name(code),
                        (unsigned long long)n);
            }
        family(&b, "qdup_request_duration_seconds", "histogram",
               "Time from a request's line read to its reply made: reads (query, get) "
               "and writes (add, remove, check).");
        hist(&b, "qdup_request_duration_seconds", "read", &st->hist_read);
        hist(&b, "qdup_request_duration_seconds", "write", &st->hist_write);
        gauge(&b, "qdup_queue_depth", "Requests waiting for a worker.", (double)st->queued);
        gauge(&b, "qdup_clients", "Connected clients.", (double)st->clients);
        gauge(&b, "qdup_clients_paused", "Clients not read from: owed too many reply bytes.",
              (double)st->clients_paused);
        counter(&b, "qdup_clients_accepted_total", "Connections accepted.", st->clients_total);
        counter(&b, "qdup_clients_refused_total",
                "Connections turned away (too many, not allowed).", st->clients_refused);
        counter(&b, "qdup_clients_dropped_total",
                "Clients dropped for not reading their replies.", st->clients_dropped);
        counter(&b, "qdup_requests_cancelled_total",
                "Waiting requests dropped because their client left.", st->cancelled);
        counter(&b, "qdup_checkpoints_total", "Index checkpoints written.", st->checkpoints);
        gauge(&b, "qdup_unsaved_writes", "Writes since the last index checkpoint.",
              (double)st->unsaved_writes);
        gauge(&b, "qdup_worker_threads", "Search workers.", (double)st->threads);
        gauge(&b, "qdup_uptime_seconds", "Seconds since the daemon started.", st->uptime_s);
    }
    if (in) {
        gauge(&b, "qdup_questions", "Questions stored.", (double)in->live);
        gauge(&b, "qdup_tombstones", "Removed questions not yet compacted.",
              (double)in->tombstones);
        gauge(&b, "qdup_index_vectors", "Vectors in the FAISS index.", (double)in->faiss_count);
        family(&b, "qdup_index_info", "gauge", "The index kind (FAISS factory string).");
        put(&b, "qdup_index_info{kind=\"%s\"} 1\n",
            label_value(in->index_spec, sizeof in->index_spec, v1, sizeof v1));
        family(&b, "qdup_model_info", "gauge", "The model: its fingerprint, path and dimension.");
        put(&b, "qdup_model_info{fingerprint=\"%s\",path=\"%s\",dim=\"%d\"} 1\n",
            label_value(in->model_fingerprint, sizeof in->model_fingerprint, v1, sizeof v1),
            label_value(in->model_path, sizeof in->model_path, v2, sizeof v2), in->dim);
        gauge(&b, "qdup_db_bytes", "Size of the SQLite database with its WAL.",
              (double)in->db_bytes);
        gauge(&b, "qdup_faiss_bytes", "Size of the FAISS file.", (double)in->faiss_bytes);
        gauge(&b, "qdup_checkpoint_failing",
              "1 while saving the FAISS file fails (a full disk): served from memory.",
              (double)in->checkpoint_failing);
        counter(&b, "qdup_checkpoint_failures_total", "Index checkpoints that failed.",
                in->checkpoint_failures);
        gauge(&b, "qdup_unsaved_bytes",
              "Estimated bytes of changes not yet in the FAISS file (in SQLite).",
              (double)in->unsaved_bytes);
        gauge(&b, "qdup_readonly", "1 if the store is open read-only (writes refused).",
              (double)in->readonly);
    }
    if (!b.p)
        put(&b, "%s", "");
    if (b.nomem) {
        qd_free(b.p);
        return QD_ERR_NOMEM;
    }
    *out = b.p;
    *len = b.len;
    return 0;
}
