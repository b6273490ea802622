/*
 * pairs.c - loading labelled question pairs, and the pair metrics (ROC AUC, accuracy at
 * a threshold, the best threshold).
 *
 * The loader reads the file's rows with the row reader the dumps use (rowread.h),
 * finds the columns by name in the header, and copies the texts into one arena.
 *
 * Two flavours of the Quora format share one header: the shared split files are plain
 * TSV (a quote is an ordinary character), the original release quotes fields RFC 4180
 * style with tab as the delimiter (inner quotes doubled, quoted fields may span lines).
 * The reader decides which (QD_ROWREAD_DETECT, as the dump readers' quoting AUTO): rows
 * are read plain until the first field holding a quote character; if that quote is not
 * the field's first byte the file is plain, otherwise it is quoted when that row parses
 * as a well-formed quoted row with the header's number of fields, and plain if not. A
 * broken quoted row costs that row only (a warning), not the rest of the file.
 */
#include "qdup/pairs.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qdup/common.h"
#include "qdup/rowread.h"

#define PAIRS_MAX_COLS 32
#define PAIRS_MAX_WARNINGS 5
/* Longest line or quoted record, in bytes: an unterminated quote costs one row. */
#define PAIRS_MAX_LINE ((size_t)1 << 20)

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

/* Makes room for one more pair in every per-pair array (the grades too when the file
 * has them). */
static int pairs_reserve(qd_pairs *p, size_t *cap)
{
    if (p->n < *cap)
        return 0;
    size_t n = *cap ? *cap * 2 : 1024;
    size_t *l1 = qd_reallocarray(p->len1, n, sizeof *l1);
    if (l1)
        p->len1 = l1;
    size_t *l2 = qd_reallocarray(p->len2, n, sizeof *l2);
    if (l2)
        p->len2 = l2;
    uint8_t *dup = qd_reallocarray(p->dup, n, sizeof *dup);
    if (dup)
        p->dup = dup;
    int64_t *id1 = qd_reallocarray(p->qid1, n, sizeof *id1);
    if (id1)
        p->qid1 = id1;
    int64_t *id2 = qd_reallocarray(p->qid2, n, sizeof *id2);
    if (id2)
        p->qid2 = id2;
    int8_t *grade = p->grade ? qd_reallocarray(p->grade, n, sizeof *grade) : NULL;
    if (grade)
        p->grade = grade;
    if (!l1 || !l2 || !dup || !id1 || !id2 || (p->grade && !grade))
        return QD_ERR_NOMEM;
    *cap = n;
    return 0;
}

/* Appends s[0..n) and a NUL to the arena. */
static int arena_add(qd_pairs *p, size_t *used, size_t *cap, const char *s, size_t n)
{
    if (*used + n + 1 > *cap) {
        size_t c = *cap ? *cap : 64 * 1024;
        while (c < *used + n + 1)
            c *= 2;
        char *a = qd_realloc(p->arena, c);
        if (!a)
            return QD_ERR_NOMEM;
        p->arena = a;
        *cap = c;
    }
    memcpy(p->arena + *used, s, n);
    p->arena[*used + n] = '\0';
    *used += n + 1;
    return 0;
}

/* Reads the header: the columns' positions by name. */
static int read_header(qd_rowread *rr, const char *path, int col[6], size_t *ncols, char *err,
                       size_t errlen)
{
    static const char *const names[6] = {"question1", "question2", "is_duplicate",
                                         "qid1",      "qid2",      "relevance"};
    qd_rowread_field *field;
    size_t nf;
    uint64_t line;
    int r;
    while ((r = qd_rowread_next(rr, &field, &nf, &line)) == QD_ERR_FORMAT)
        ; /* an over-long line before the header: skipped like any bad row */
    if (r < 0)
        return qd_errf(err, errlen, r, "%s", qd_rowread_errmsg(rr));
    if (r == 0)
        return qd_errf(err, errlen, QD_ERR_FORMAT, "%s: empty file (no header)", path);
    if (nf > PAIRS_MAX_COLS)
        return qd_errf(err, errlen, QD_ERR_FORMAT, "%s:%llu: header has over %d columns",
                       path, (unsigned long long)line, PAIRS_MAX_COLS);
    for (int c = 0; c < 6; c++)
        col[c] = -1;
    for (size_t i = 0; i < nf; i++)
        for (int c = 0; c < 6; c++)
            if (strcmp(field[i].p, names[c]) == 0)
                col[c] = (int)i;
    if (col[0] < 0 || col[1] < 0 || col[2] < 0)
        return qd_errf(err, errlen, QD_ERR_FORMAT,
                       "%s:%llu: header lacks question1, question2 or is_duplicate "
                       "(a Quora pair file has: id qid1 qid2 question1 question2 "
                       "is_duplicate)",
                       path, (unsigned long long)line);
    *ncols = nf;
    return 0;
}

int qd_pairs_load(const char *path, void (*warn)(const char *msg, void *arg), void *arg,
                  qd_pairs **out, char *err, size_t errlen)
{
    *out = NULL;
    qd_rowread *rr = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        return qd_errf(err, errlen, e == ENOENT ? QD_ERR_NOTFOUND : QD_ERR_IO, "%s: %s", path,
                       strerror(e));
    }
    int rc;
    qd_pairs *p = qd_calloc(1, sizeof *p);
    if (!p || qd_rowread_open(fd, path, PAIRS_MAX_LINE, &rr) != 0) {
        rc = qd_errf(err, errlen, QD_ERR_NOMEM, "%s: out of memory", path);
        goto fail;
    }
    int col[6]; /* question1, question2, is_duplicate, qid1, qid2, relevance; -1: absent */
    size_t ncols = 0, cap = 0, used = 0, arena_cap = 0, warned = 0;
    if ((rc = read_header(rr, path, col, &ncols, err, errlen)) != 0)
        goto fail;
    int c_q1 = col[0], c_q2 = col[1], c_dup = col[2], c_id1 = col[3], c_id2 = col[4],
        c_grade = col[5];
    if (c_grade >= 0 && !(p->grade = qd_malloc(1))) {
        rc = qd_errf(err, errlen, QD_ERR_NOMEM, "%s: out of memory", path);
        goto fail;
    }
    qd_rowread_set_expect(rr, ncols);
    qd_rowread_set_mode(rr, QD_ROWREAD_DETECT);
    for (;;) {
        qd_rowread_field *field;
        size_t nf;
        uint64_t line;
        int r = qd_rowread_next(rr, &field, &nf, &line);
        if (r == 0)
            break;
        if (r < 0 && r != QD_ERR_FORMAT) {
            rc = qd_errf(err, errlen, r, "%s", qd_rowread_errmsg(rr));
            goto fail;
        }
        const char *why = NULL;
        int64_t id1 = -1, id2 = -1;
        if (r < 0)
            why = qd_rowread_errmsg(rr); /* "path:line: reason" already */
        else if (field[c_dup].len != 1 || (field[c_dup].p[0] != '0' && field[c_dup].p[0] != '1'))
            why = "is_duplicate is not 0 or 1";
        else if (field[c_q1].len == 0 || field[c_q2].len == 0)
            why = "empty question";
        else if ((c_id1 >= 0 && qd_pairs_parse_qid(field[c_id1].p, field[c_id1].len, &id1)) ||
                 (c_id2 >= 0 && qd_pairs_parse_qid(field[c_id2].p, field[c_id2].len, &id2)))
            why = "qid is not a number";
        else if (c_grade >= 0 && (field[c_grade].len != 1 || field[c_grade].p[0] < '0' ||
                                  field[c_grade].p[0] > '9'))
            why = "relevance is not a digit";
        if (why) {
            p->skipped++;
            if (warn && warned++ < PAIRS_MAX_WARNINGS) {
                char msg[QD_ERRMSG_MAX];
                if (r < 0)
                    snprintf(msg, sizeof msg, "%s", why);
                else
                    snprintf(msg, sizeof msg, "%s:%llu: %s", path, (unsigned long long)line,
                             why);
                warn(msg, arg);
            }
            continue;
        }
        if (pairs_reserve(p, &cap) != 0 ||
            arena_add(p, &used, &arena_cap, field[c_q1].p, field[c_q1].len) != 0 ||
            arena_add(p, &used, &arena_cap, field[c_q2].p, field[c_q2].len) != 0) {
            rc = qd_errf(err, errlen, QD_ERR_NOMEM, "%s: out of memory", path);
            goto fail;
        }
        size_t i = p->n++;
        p->len1[i] = field[c_q1].len;
        p->len2[i] = field[c_q2].len;
        p->dup[i] = field[c_dup].p[0] == '1';
        p->qid1[i] = id1;
        p->qid2[i] = id2;
        if (p->grade)
            p->grade[i] = (int8_t)(field[c_grade].p[0] - '0');
    }
    /* The texts' pointers, now that the arena has stopped moving: q1 then q2 per pair. */
    p->q1 = qd_calloc(p->n, sizeof *p->q1);
    p->q2 = qd_calloc(p->n, sizeof *p->q2);
    if (!p->q1 || !p->q2) {
        rc = qd_errf(err, errlen, QD_ERR_NOMEM, "%s: out of memory", path);
        goto fail;
    }
    for (size_t i = 0, at = 0; i < p->n; i++) {
        p->q1[i] = p->arena + at;
        at += p->len1[i] + 1;
        p->q2[i] = p->arena + at;
        at += p->len2[i] + 1;
    }
    qd_rowread_close(rr);
    close(fd);
    *out = p;
    return 0;
fail:
    qd_rowread_close(rr);
    close(fd);
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
