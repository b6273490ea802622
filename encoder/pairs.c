/*
 * pairs.c - loading labelled question pairs, and the pair metrics (ROC AUC, accuracy at
 * a threshold, the best threshold).
 *
 * The loader reads the whole file (pair files are small: the shared train.tsv is 4 MB),
 * finds the columns by name in the header, and copies the texts into one arena.
 *
 * Two flavours of the Quora format share one header: the shared split files are plain
 * TSV (a quote is an ordinary character), the original release quotes fields RFC 4180
 * style with tab as the delimiter (inner quotes doubled, quoted fields may span lines).
 * The loader decides as the dump readers do (dump.h, quoting AUTO): rows are read plain
 * until the first field holding a quote character; if that quote is not the field's
 * first byte the file is plain, otherwise it is quoted when that row parses as a
 * well-formed quoted row with the header's number of fields, and plain if not.
 */
#include "qdup/pairs.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qdup/common.h"
#include "qdup/fileio.h"

#define PAIRS_MAX_BYTES ((size_t)2 << 30)
#define PAIRS_MAX_COLS 32
#define PAIRS_MAX_WARNINGS 5
/* Longest quoted record, in bytes: an unterminated quote costs one row, not the file. */
#define PAIRS_MAX_QUOTED ((size_t)1 << 20)

/* How rows are split (see the top of the file). */
enum { ROWS_DETECT, ROWS_PLAIN, ROWS_QUOTED };

void qd_pairs_free(qd_pairs *p)
{
    if (!p)
        return;
    qd_free(p->q1);
    qd_free(p->q2);
    qd_free(p->len1);
    qd_free(p->len2);
    qd_free(p->dup);
    qd_free(p->qid1);
    qd_free(p->qid2);
    qd_free(p->grade);
    qd_free(p->arena);
    qd_free(p);
}

/* Splits line[0..len) at tabs into at most max fields; returns the field count (max + 1
 * if there are more). */
static size_t split_tabs(char *line, size_t len, char **field, size_t *flen, size_t max)
{
    size_t n = 0;
    char *p = line, *end = line + len;
    for (;;) {
        char *tab = memchr(p, '\t', (size_t)(end - p));
        char *stop = tab ? tab : end;
        if (n == max)
            return max + 1;
        field[n] = p;
        flen[n] = (size_t)(stop - p);
        n++;
        if (!tab)
            return n;
        p = tab + 1;
    }
}

/* Splits one quoted-style record starting at s (before end) into at most max fields,
 * unquoting into buf (at least end - s bytes); fields point into buf. A CR just before
 * an LF is dropped, inside quoted fields too. Returns the field count (max + 1 if there
 * are more) with *next at the start of the following record and *nl the newlines the
 * record holds inside quoted fields; or -1 with *why saying what is broken. */
static long split_quoted(const char *s, const char *end, char *buf, char **field,
                         size_t *flen, size_t max, const char **next, size_t *nl,
                         const char **why)
{
    const char *p = s;
    char *o = buf;
    size_t n = 0;
    *nl = 0;
    for (;;) {
        if (n == max)
            return (long)max + 1;
        field[n] = o;
        if (p < end && *p == '"') {
            for (p++;; p++) {
                if (p >= end) {
                    *why = "quoted field not closed at the end of the file";
                    return -1;
                }
                if ((size_t)(p - s) > PAIRS_MAX_QUOTED) {
                    *why = "quoted field still open after 1 MiB (unterminated quote?)";
                    return -1;
                }
                if (*p == '"') {
                    if (p + 1 < end && p[1] == '"') {
                        *o++ = '"';
                        p++;
                        continue;
                    }
                    p++;
                    break;
                }
                if (*p == '\r' && p + 1 < end && p[1] == '\n')
                    continue;
                *nl += *p == '\n';
                *o++ = *p;
            }
            if (p < end && *p == '\r' && p + 1 < end && p[1] == '\n')
                p++;
            if (p < end && *p != '\t' && *p != '\n') {
                *why = "text after a closing quote (inner quotes must be doubled)";
                return -1;
            }
        } else {
            for (; p < end && *p != '\t' && *p != '\n'; p++) {
                if (*p == '"') {
                    *why = "quote inside an unquoted field";
                    return -1;
                }
                *o++ = *p;
            }
            if (o > field[n] && o[-1] == '\r' && (p == end || *p == '\n'))
                o--;
        }
        flen[n] = (size_t)(o - field[n]);
        n++;
        if (p < end && *p == '\t') {
            p++;
            continue;
        }
        *next = p < end ? p + 1 : end;
        return (long)n;
    }
}

int qd_pairs_parse_qid(const char *s, size_t n, int64_t *out)
{
    if (n == 0 || n > 18)
        return -1;
    int64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return 0;
}

int qd_pairs_load(const char *path, void (*warn)(const char *msg, void *arg), void *arg,
                  qd_pairs **out, char *err, size_t errlen)
{
    *out = NULL;
    char *data;
    char *qbuf = NULL; /* unquoted fields of the current quoted row */
    size_t len;
    int rc = qd_file_read(path, PAIRS_MAX_BYTES, &data, &len, err, errlen);
    if (rc)
        return rc;
    qd_pairs *p = qd_calloc(1, sizeof *p);
    if (!p) {
        rc = qd_errf(err, errlen, QD_ERR_NOMEM, "%s: out of memory", path);
        goto fail;
    }
    /* Rows are at most the number of newlines + 1. */
    size_t maxrows = 1;
    for (size_t i = 0; i < len; i++)
        maxrows += data[i] == '\n';
    p->q1 = qd_calloc(maxrows, sizeof *p->q1);
    p->q2 = qd_calloc(maxrows, sizeof *p->q2);
    p->len1 = qd_calloc(maxrows, sizeof *p->len1);
    p->len2 = qd_calloc(maxrows, sizeof *p->len2);
    p->dup = qd_calloc(maxrows, sizeof *p->dup);
    p->qid1 = qd_calloc(maxrows, sizeof *p->qid1);
    p->qid2 = qd_calloc(maxrows, sizeof *p->qid2);
    p->arena = qd_malloc(len + 1);
    if (!p->q1 || !p->q2 || !p->len1 || !p->len2 || !p->dup || !p->qid1 || !p->qid2 ||
        !p->arena) {
        rc = qd_errf(err, errlen, QD_ERR_NOMEM, "%s: out of memory", path);
        goto fail;
    }

    char *field[PAIRS_MAX_COLS + 1];
    size_t flen[PAIRS_MAX_COLS + 1];
    int c_q1 = -1, c_q2 = -1, c_dup = -1, c_id1 = -1, c_id2 = -1, c_grade = -1;
    size_t ncols = 0, lineno = 0, used = 0, warned = 0;
    int rows_mode = ROWS_DETECT;
    char *pos = data, *end = data + len;
    /* Skip a UTF-8 byte order mark. */
    if (len >= 3 && memcmp(pos, "\xEF\xBB\xBF", 3) == 0)
        pos += 3;
    while (pos < end) {
        char *nl = memchr(pos, '\n', (size_t)(end - pos));
        char *line = pos;
        size_t n = (size_t)((nl ? nl : end) - pos);
        pos = nl ? nl + 1 : end;
        lineno++;
        if (n > 0 && line[n - 1] == '\r')
            n--;
        if (n == 0)
            continue;
        size_t row_line = lineno, nf = 0;
        const char *why = NULL;
        int quoted = 0;
        if (ncols > 0 && rows_mode != ROWS_PLAIN && memchr(line, '"', n)) {
            if (rows_mode == ROWS_DETECT) {
                char *q = memchr(line, '"', n);
                if (q != line && q[-1] != '\t')
                    rows_mode = ROWS_PLAIN;
            }
            if (rows_mode != ROWS_PLAIN) {
                if (!qbuf && !(qbuf = qd_malloc(len + 1))) {
                    rc = qd_errf(err, errlen, QD_ERR_NOMEM, "%s: out of memory", path);
                    goto fail;
                }
                const char *next = NULL, *qwhy = NULL;
                size_t nl_inside = 0;
                long r = split_quoted(line, end, qbuf, field, flen, PAIRS_MAX_COLS, &next,
                                      &nl_inside, &qwhy);
                if (rows_mode == ROWS_DETECT)
                    rows_mode = r >= 0 && (size_t)r == ncols ? ROWS_QUOTED : ROWS_PLAIN;
                if (rows_mode == ROWS_QUOTED) {
                    quoted = 1;
                    if (r < 0) {
                        why = qwhy; /* resume at the line after the one it started on */
                    } else {
                        nf = (size_t)r;
                        pos = (char *)next;
                        lineno += nl_inside;
                    }
                }
            }
        }
        if (!quoted)
            nf = split_tabs(line, n, field, flen, PAIRS_MAX_COLS);
        if (ncols == 0) {
            if (nf > PAIRS_MAX_COLS) {
                rc = qd_errf(err, errlen, QD_ERR_FORMAT, "%s:%zu: header has over %d columns",
                             path, lineno, PAIRS_MAX_COLS);
                goto fail;
            }
            for (size_t i = 0; i < nf; i++) {
                char name[32];
                size_t k = flen[i] < sizeof name - 1 ? flen[i] : sizeof name - 1;
                memcpy(name, field[i], k);
                name[k] = '\0';
                int *slot = !strcmp(name, "question1")      ? &c_q1
                            : !strcmp(name, "question2")    ? &c_q2
                            : !strcmp(name, "is_duplicate") ? &c_dup
                            : !strcmp(name, "qid1")         ? &c_id1
                            : !strcmp(name, "qid2")         ? &c_id2
                            : !strcmp(name, "relevance")    ? &c_grade
                                                            : NULL;
                if (slot)
                    *slot = (int)i;
            }
            if (c_q1 < 0 || c_q2 < 0 || c_dup < 0) {
                rc = qd_errf(err, errlen, QD_ERR_FORMAT,
                             "%s:%zu: header lacks question1, question2 or is_duplicate "
                             "(a Quora pair file has: id qid1 qid2 question1 question2 "
                             "is_duplicate)",
                             path, lineno);
                goto fail;
            }
            if (c_grade >= 0 && !(p->grade = qd_calloc(maxrows, sizeof *p->grade))) {
                rc = qd_errf(err, errlen, QD_ERR_NOMEM, "%s: out of memory", path);
                goto fail;
            }
            ncols = nf;
            continue;
        }
        int64_t id1 = -1, id2 = -1;
        if (why) {
            /* broken quoting, said above */
        } else if (nf != ncols)
            why = "wrong number of fields";
        else if (flen[c_dup] != 1 || (field[c_dup][0] != '0' && field[c_dup][0] != '1'))
            why = "is_duplicate is not 0 or 1";
        else if (flen[c_q1] == 0 || flen[c_q2] == 0)
            why = "empty question";
        else if ((c_id1 >= 0 && qd_pairs_parse_qid(field[c_id1], flen[c_id1], &id1)) ||
                 (c_id2 >= 0 && qd_pairs_parse_qid(field[c_id2], flen[c_id2], &id2)))
            why = "qid is not a number";
        else if (c_grade >= 0 && (flen[c_grade] != 1 || field[c_grade][0] < '0' ||
                                  field[c_grade][0] > '9'))
            why = "relevance is not a digit";
        if (why) {
            p->skipped++;
            if (warn && warned++ < PAIRS_MAX_WARNINGS) {
                char msg[QD_ERRMSG_MAX];
                snprintf(msg, sizeof msg, "%s:%zu: %s", path, row_line, why);
                warn(msg, arg);
            }
            continue;
        }
        size_t i = p->n++;
        memcpy(p->arena + used, field[c_q1], flen[c_q1]);
        p->q1[i] = p->arena + used;
        p->len1[i] = flen[c_q1];
        used += flen[c_q1];
        p->arena[used++] = '\0';
        memcpy(p->arena + used, field[c_q2], flen[c_q2]);
        p->q2[i] = p->arena + used;
        p->len2[i] = flen[c_q2];
        used += flen[c_q2];
        p->arena[used++] = '\0';
        p->dup[i] = field[c_dup][0] == '1';
        p->qid1[i] = id1;
        p->qid2[i] = id2;
        if (p->grade)
            p->grade[i] = (int8_t)(field[c_grade][0] - '0');
    }
    if (ncols == 0) {
        rc = qd_errf(err, errlen, QD_ERR_FORMAT, "%s: empty file (no header)", path);
        goto fail;
    }
    qd_free(qbuf);
    qd_free(data);
    *out = p;
    return 0;
fail:
    qd_free(qbuf);
    qd_free(data);
    qd_pairs_free(p);
    return rc;
}

/* --- metrics --------------------------------------------------------------------------- */

typedef struct scored {
    float s;     /* score */
    uint8_t y;   /* label */
} scored;

static int cmp_scored(const void *a, const void *b)
{
    float x = ((const scored *)a)->s, y = ((const scored *)b)->s;
    return (x > y) - (x < y);
}

static scored *sorted_scores(const float *scores, const uint8_t *labels, size_t n)
{
    scored *v = qd_mallocarray(n ? n : 1, sizeof *v);
    if (!v)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        v[i].s = scores[i];
        v[i].y = labels[i] != 0;
    }
    qsort(v, n, sizeof *v, cmp_scored);
    return v;
}

double qd_pairs_auc(const float *scores, const uint8_t *labels, size_t n)
{
    scored *v = sorted_scores(scores, labels, n);
    if (!v)
        return -1;
    /* Mann-Whitney U: sum of positive ranks, ties sharing their mean rank. */
    double rank_sum = 0;
    size_t npos = 0;
    for (size_t i = 0; i < n;) {
        size_t j = i;
        while (j < n && v[j].s == v[i].s)
            j++;
        double mid = (double)(i + j + 1) / 2.0; /* mean of ranks i+1 .. j */
        for (size_t k = i; k < j; k++)
            if (v[k].y) {
                rank_sum += mid;
                npos++;
            }
        i = j;
    }
    qd_free(v);
    size_t nneg = n - npos;
    if (npos == 0 || nneg == 0)
        return 0.5;
    return (rank_sum - (double)npos * (double)(npos + 1) / 2.0) / ((double)npos * (double)nneg);
}

double qd_pairs_accuracy_at(const float *scores, const uint8_t *labels, size_t n,
                            double threshold)
{
    size_t right = 0;
    for (size_t i = 0; i < n; i++)
        right += ((double)scores[i] > threshold) == (labels[i] != 0);
    return n ? (double)right / (double)n : 0;
}

double qd_pairs_best_threshold(const float *scores, const uint8_t *labels, size_t n,
                               double *acc)
{
    scored *v = sorted_scores(scores, labels, n);
    if (!v || n == 0) {
        qd_free(v);
        *acc = 0;
        return 0.5;
    }
    /* Threshold below everything: all called duplicates, right = positives. */
    size_t pos = 0;
    for (size_t i = 0; i < n; i++)
        pos += v[i].y;
    size_t right = pos, best = right;
    double thr = (double)v[0].s - 1e-6;
    for (size_t i = 0; i < n;) {
        size_t j = i;
        while (j < n && v[j].s == v[i].s) {
            /* Now called a non-duplicate: right for a negative, wrong for a positive. */
            if (v[j].y)
                right--;
            else
                right++;
            j++;
        }
        if (right > best) {
            best = right;
            thr = j < n ? ((double)v[i].s + v[j].s) / 2 : (double)v[i].s;
        }
        i = j;
    }
    qd_free(v);
    *acc = (double)best / (double)n;
    return thr;
}

typedef struct ranked {
    int64_t group; /* the list the pair belongs to (qid1) */
    float s;       /* its score */
    size_t i;      /* its place in the file, for ties */
    uint8_t rel;   /* 1 if relevant */
} ranked;

/* By group, then best score first, then file order. */
static int cmp_ranked(const void *a, const void *b)
{
    const ranked *x = a, *y = b;
    if (x->group != y->group)
        return (x->group > y->group) - (x->group < y->group);
    if (x->s != y->s)
        return (x->s < y->s) - (x->s > y->s);
    return (x->i > y->i) - (x->i < y->i);
}

double qd_pairs_map(const float *scores, const int64_t *group, const int8_t *grade, size_t n,
                    int min_grade, size_t *ngroups)
{
    if (ngroups)
        *ngroups = 0;
    ranked *v = qd_mallocarray(n + 1, sizeof *v);
    if (!v)
        return 0;
    for (size_t i = 0; i < n; i++)
        v[i] = (ranked){group[i], scores[i], i, grade[i] >= min_grade};
    qsort(v, n, sizeof *v, cmp_ranked);
    double sum = 0;
    size_t groups = 0;
    for (size_t i = 0; i < n;) {
        size_t hits = 0;
        double ap = 0;
        size_t j = i;
        for (; j < n && v[j].group == v[i].group; j++)
            if (v[j].rel)
                ap += (double)++hits / (double)(j - i + 1);
        if (hits) {
            sum += ap / (double)hits;
            groups++;
        }
        i = j;
    }
    qd_free(v);
    if (ngroups)
        *ngroups = groups;
    return groups ? sum / (double)groups : 0;
}
