/*
 * metrics.h - qdup-daemon's figures in the Prometheus text exposition format (version
 * 0.0.4), for {"op":"metrics"} and `qdup stats --prometheus`.
 *
 * Names follow Prometheus's conventions: a qdup_ prefix, base units (seconds, bytes),
 * counters ending in _total, facts that are strings (the index kind, the model) as
 * labels of an _info gauge of value 1. Every family has # HELP and # TYPE lines, label
 * values are escaped (\\, \", \n), and the text ends with a newline.
 *
 * Latencies are kept as a histogram of fixed buckets (cumulative in the output): a
 * scraper can compute any quantile over any window, which the percentiles of a window
 * of recent requests in "stats" cannot give.
 */
#ifndef QDUP_METRICS_H
#define QDUP_METRICS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define QD_METRICS_BUCKETS 13

/* Upper bounds of the latency buckets, in seconds (a last +Inf bucket is implied). */
extern const double qd_metrics_bucket_s[QD_METRICS_BUCKETS];

/* A latency histogram. */
typedef struct qd_metrics_hist {
    uint64_t bucket[QD_METRICS_BUCKETS + 1]; /* observations per bucket, not cumulative;
                                                the last is above every bound */
    uint64_t count;                          /* observations */
    double sum_s;                            /* their sum, seconds */
} qd_metrics_hist;

/* Counts one latency in milliseconds. */
void qd_metrics_hist_add(qd_metrics_hist *h, double ms);

struct qd_store_info;
struct qd_proto_stats;

/* The exposition text of a store's figures (in) and a server's (st, may be NULL):
 * *out is a NUL-terminated string of *len bytes, freed with qd_free(). 0 or
 * QD_ERR_NOMEM. */
int qd_metrics_format(const struct qd_store_info *in, const struct qd_proto_stats *st,
                      char **out, size_t *len);

#ifdef __cplusplus
}
#endif

#endif
