/*
 * train_main.c - qdup-train: trains the encoder on Quora-format pairs and writes a
 * model file.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qdup/common.h"
#include "qdup/dump.h"
#include "qdup/finetune.h"
#include "qdup/fit.h"
#include "qdup/model.h"
#include "qdup/pairs.h"
#include "qdup/train.h"

static const char usage[] =
    "usage: qdup-train --train FILE --valid FILE --out MODEL [options]\n"
    "\n"
    "Trains qdup's Siamese LSTM encoder on labelled question pairs (tab-separated,\n"
    "header: id qid1 qid2 question1 question2 is_duplicate) and writes a model file\n"
    "(written to a temporary file and renamed into place when complete).\n"
    "\n"
    "Each step takes B duplicate pairs (A_i, P_i): A_i is the anchor, P_i its positive,\n"
    "every other candidate a negative. --loss triplet is the course's loss: with\n"
    "S = A C^T and margin a, loss_i = max(0, a - S_ii + mean_{j!=i} S_ij)\n"
    "+ max(0, a - S_ii + closest_i), closest_i the largest S_ij below S_ii (computed as\n"
    "the course's code does); --loss softmax is -log softmax(S_i / temperature)_i.\n"
    "Candidates C: the other positives; with --hard-negatives M also both questions of\n"
    "M labelled non-duplicate pairs, plus a ranking loss mean_{i,m} max(0, a - S_ii + s_m)\n"
    "(s_m the cosine of non-duplicate pair m); with --mine N also one mined negative per\n"
    "anchor. Only A is the anchor unless --symmetric: then each P_i is also an anchor\n"
    "against the A's, and the two directions' losses are summed.\n"
    "After each epoch the validation ROC AUC is measured; the best epoch is kept\n"
    "(fine-tuning with --head-share above 0 judges by the duplicate head instead,\n"
    "see --init).\n"
    "Then the model's scoring is fitted on the validation pairs and stored in it: the\n"
    "fusion weight, BM25's k1 and b and the candidates re-scored per query (by\n"
    "retrieval MRR@10), the duplicate head P(duplicate | pair) and its operating point\n"
    "min_p (the p that maximizes validation accuracy).\n"
    "\n"
    "options:\n"
    "  --train FILE          training pairs (required)\n"
    "  --valid FILE          validation pairs, for early stopping (required)\n"
    "  --out MODEL           model file to write (required)\n"
    "  --recipe NAME         seed: the course's settings (E = H = 128, batch 256,\n"
    "                        Adam lr 0.01, margin 0.25, duplicate pairs only, in-batch\n"
    "                        negatives, 8 epochs); default (the default): what the\n"
    "                        validation set chose: --loss softmax --temperature 0.1\n"
    "                        --symmetric --hard-negatives 256 --mine 10\n"
    "                        --ngrams 2:4:200000 --min-count 2 --epochs 10 --patience 3\n"
    "  --epochs N            epochs (recipe's value otherwise)\n"
    "  --threads N           worker threads (default: all cores); results are\n"
    "                        reproducible for a given seed and thread count\n"
    "  --seed N              random seed (default 1)\n"
    "  --batch N             duplicate pairs per step\n"
    "  --lr X                Adam learning rate\n"
    "  --margin X            triplet margin\n"
    "  --loss NAME           triplet (the course's) or softmax (cross-entropy of each\n"
    "                        anchor's positive among the batch's candidates, InfoNCE)\n"
    "  --temperature X       softmax loss temperature\n"
    "  --emb N, --hidden N   embedding width E, LSTM hidden size H\n"
    "  --pool PARTS          what the vector is made of: mean (the course's: mean of the\n"
    "                        LSTM states), or mean plus max (their max) and/or emb (the\n"
    "                        mean of the token embeddings), e.g. mean,max,emb\n"
    "  --min-count N         keep words seen at least N times in training\n"
    "  --max-tokens N        tokens kept per question\n"
    "  --ngrams MIN:MAX:BUCKETS  hashed character n-grams (0:0:0 for none)\n"
    "  --hard-negatives M    labelled non-duplicate pairs per step\n"
    "  --vocab-corpus DUMP   unlabelled questions (any dump qdup-index reads, e.g. the\n"
    "                        questions to be indexed) whose words also enter the\n"
    "                        vocabulary\n"
    "  --pretrain N          pre-train the word vectors (skip-gram with negative\n"
    "                        sampling) for N epochs on the training questions and the\n"
    "                        --vocab-corpus questions (0: none)\n"
    "  --mine N              from epoch 2, add to each anchor a negative drawn among the\n"
    "                        N training questions the model puts nearest it, outside its\n"
    "                        duplicate cluster (0: none)\n"
    "  --symmetric / --no-symmetric   also use P as anchor\n"
    "  --weight-decay X      Adam L2 weight decay\n"
    "  --dropout P           dropout on the token embeddings while training\n"
    "  --lr-decay X          multiply the learning rate by X after each epoch\n"
    "  --clip X              clip gradients to global norm X (0: no clipping)\n"
    "  --patience N          stop after N epochs without a better validation AUC\n"
    "                        (0: never stop early)\n"
    "  --refit MODEL         train nothing: re-fit MODEL's scoring on --valid (with\n"
    "                        --train's questions as documents) and write it to --out;\n"
    "                        the vectors and the fingerprint stay the same\n"
    "  --no-fit              keep the default scoring (no fit after training)\n"
    "  --quiet               no progress output\n"
    "\n"
    "fine-tuning (teaching a trained model a forum: its words and its duplicates):\n"
    "  --init MODEL          start from MODEL's shape and weights instead of a new\n"
    "                        model; words of --train and --vocab-corpus it lacks (seen\n"
    "                        --min-count times) are added, each starting from the\n"
    "                        n-grams MODEL read it with. Without --recipe the recipe\n"
    "                        is finetune: the default recipe with --epochs 8\n"
    "                        --patience 0 --lr 0.001 --batch 16 --hard-negatives 64\n"
    "                        (chosen on the SemEval dev split, see BENCHMARKS.md).\n"
    "                        Each epoch is judged by what the daemon would answer\n"
    "                        with: the duplicate head fitted on the --head-share\n"
    "                        groups, scoring --valid by P(duplicate); MODEL itself\n"
    "                        is epoch 0, with the head fitted on all of --train\n"
    "                        (what --head-only gives), and an epoch replaces it only\n"
    "                        if its AUC and (for a graded file) MAP on --valid are\n"
    "                        both higher: the epoch whose smaller gain is largest is\n"
    "                        kept; if none, MODEL is written as it is, its scoring\n"
    "                        re-fitted (the same fingerprint)\n"
    "  --duplicate-grades G  for a graded --train file (a 7th column relevance): the\n"
    "                        grades that count as duplicates, e.g. 2 or 1,2 (default:\n"
    "                        its is_duplicate column); --valid is scored by its\n"
    "                        is_duplicate column\n"
    "  --skip-grades G       leave the --train pairs of these grades out, e.g. 1\n"
    "  --head-only           train nothing: re-fit MODEL's scoring (the duplicate head,\n"
    "                        the fusion weight, BM25's parameters, min_p) on the --train\n"
    "                        pairs, in seconds; the vectors and the fingerprint stay the\n"
    "                        same, so no index needs re-embedding\n"
    "  --head-share X        fine-tuning: the share of --train's qid1 groups held out of\n"
    "                        the encoder's training to fit the scoring on (cosines it\n"
    "                        was not trained to raise; default 0.5; 0: fit on --valid)\n"
    "  --mix-pairs FILE      pairs to mix into --train, e.g. the starting model's own\n"
    "                        training pairs, so that it keeps what it knew\n"
    "  --mix X               how many: X times the number of --train pairs, drawn at\n"
    "                        random (default 1 when --mix-pairs is given)\n"
    "  -h, --help            this help\n";

typedef struct progress_state {
    int tty;    /* stderr is a terminal: redraw one line */
    int quiet;  /* print nothing */
    int head;   /* epochs are judged by the duplicate head (judge_by_head) */
} progress_state;

static void fmt_time(double s, char *buf, size_t n)
{
    long t = (long)(s + 0.5);
    snprintf(buf, n, "%ld:%02ld", t / 60, t % 60);
}

static void on_progress(const qd_train_progress *p, void *arg)
{
    progress_state *st = arg;
    if (st->quiet)
        return;
    const char *what = st->head ? "valid P(duplicate) gain over epoch 0 (the smaller of AUC's "
                                  "and MAP's)" : "valid AUC";
    if (p->epoch_done && p->epoch == 0) {
        fprintf(stderr, "epoch 0 (the starting model): %s %.4f\n", what, p->valid_auc);
        return;
    }
    if (p->epoch_done) {
        fprintf(stderr, "%sepoch %d/%d: loss %.4f, %.0f pairs/s, %s %.4f%s\n",
                st->tty ? "\r\033[K" : "", p->epoch, p->epochs, p->loss, p->pairs_per_s,
                what, p->valid_auc, p->best ? " (best so far)" : "");
        return;
    }
    if (!st->tty)
        return;
    char eta[32];
    fmt_time(p->eta_s, eta, sizeof eta);
    fprintf(stderr, "\r\033[Kepoch %d/%d batch %zu/%zu loss %.4f %.0f pairs/s ETA %s",
            p->epoch, p->epochs, p->step, p->steps, p->loss, p->pairs_per_s, eta);
}

static void on_warning(const char *msg, void *arg)
{
    (void)arg;
    fprintf(stderr, "qdup-train: warning: %s (skipped)\n", msg);
}

static int parse_long(const char *opt, const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *s == '\0' || *end != '\0' || v < lo || v > hi) {
        fprintf(stderr, "qdup-train: %s: expected a whole number from %ld to %ld, got \"%s\"\n",
                opt, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_float(const char *opt, const char *s, double lo, double hi, float *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *s == '\0' || *end != '\0' || !(v >= lo && v <= hi)) {
        fprintf(stderr, "qdup-train: %s: expected a number from %g to %g, got \"%s\"\n", opt, lo,
                hi, s);
        return -1;
    }
    *out = (float)v;
    return 0;
}

/* "mean", "mean,max", "mean,emb", "mean,max,emb" to enum qd_pool bits. */
static int parse_pool(const char *s, uint32_t *pool)
{
    char buf[64];
    snprintf(buf, sizeof buf, "%s", s);
    uint32_t bits = 0;
    int mean = 0;
    for (char *save, *part = strtok_r(buf, ",", &save); part; part = strtok_r(NULL, ",", &save)) {
        if (strcmp(part, "mean") == 0)
            mean = 1;
        else if (strcmp(part, "max") == 0)
            bits |= QD_POOL_MAX;
        else if (strcmp(part, "emb") == 0)
            bits |= QD_POOL_EMB;
        else
            mean = -1;
    }
    if (mean != 1) {
        fprintf(stderr, "qdup-train: --pool: expected mean, optionally with max and emb "
                        "(e.g. mean,max), got \"%s\"\n", s);
        return -1;
    }
    *pool = bits;
    return 0;
}

/* Unlabelled questions read from a dump. */
typedef struct corpus {
    char **texts;   /* (n) owned copies */
    size_t *lens;   /* (n) */
    size_t n, cap;  /* used and allocated entries */
} corpus;

static void corpus_free(corpus *c)
{
    for (size_t i = 0; i < c->n; i++)
        qd_free(c->texts[i]);
    qd_free(c->texts);
    qd_free(c->lens);
}

static int load_corpus(const char *path, corpus *c, char *err, size_t errlen)
{
    qd_dump *d;
    int rc = qd_dump_open(path, NULL, &d, err, errlen);
    if (rc)
        return rc;
    qd_dump_rec rec;
    while ((rc = qd_dump_next(d, &rec)) != 0) {
        if (rc == QD_ERR_FORMAT)
            continue; /* a malformed row: the words of the others are enough */
        if (rc < 0)
            break;
        if (c->n == c->cap) {
            size_t cap = c->cap ? 2 * c->cap : 1024;
            char **t = qd_reallocarray(c->texts, cap, sizeof *t);
            if (t)
                c->texts = t;
            size_t *l = qd_reallocarray(c->lens, cap, sizeof *l);
            if (l)
                c->lens = l;
            if (!t || !l) {
                rc = QD_ERR_NOMEM;
                break;
            }
            c->cap = cap;
        }
        c->texts[c->n] = qd_strndup(rec.text, rec.text_len);
        if (!c->texts[c->n]) {
            rc = QD_ERR_NOMEM;
            break;
        }
        c->lens[c->n++] = rec.text_len;
    }
    if (rc < 0)
        qd_errf(err, errlen, rc, "%s: %s", path,
                *qd_dump_errmsg(d) ? qd_dump_errmsg(d) : qd_strerror(rc));
    qd_dump_close(d);
    if (rc < 0) {
        corpus_free(c);
        memset(c, 0, sizeof *c);
    }
    return rc < 0 ? rc : 0;
}

/* --duplicate-grades, --skip-grades: the training pairs' labels from their grades. */
static int prepare_grades(qd_pairs *p, const char *path, unsigned grades, unsigned skip,
                          char *err, size_t errlen)
{
    if (qd_finetune_relabel(p, grades, skip) != 0)
        return qd_errf(err, errlen, QD_ERR_INVAL, "%s: --duplicate-grades and --skip-grades "
                       "need a graded file (a column named relevance), this one has none",
                       path);
    return 0;
}

/* --head-share: *train keeps the groups the encoder learns from, *held gets those the
 * scoring is fitted on, *all all of them (as *train was). */
static int hold_out(qd_pairs **train, qd_pairs **held, qd_pairs **all, float share,
                    uint64_t seed, int quiet, char *err, size_t errlen)
{
    qd_pairs *kept;
    int rc = qd_finetune_split(*train, share, seed, &kept, held);
    if (rc)
        return qd_errf(err, errlen, rc, "splitting the training pairs: %s", qd_strerror(rc));
    if (!quiet)
        fprintf(stderr, "qdup-train: %zu training pairs for the encoder, %zu (their qid1 groups "
                        "drawn with probability %g) held out to fit the scoring on\n",
                kept->n, (*held)->n, (double)share);
    *all = *train;
    *train = kept;
    return 0;
}

/* How a fine-tuning epoch is judged when part of the training groups is held out: by
 * the duplicate head the model would be given (fitted on the held-out groups; at epoch
 * 0, whose encoder has seen none of the training pairs, on all of them, as --head-only
 * fits it), scoring --valid through P(duplicate), what the daemon reports: its ROC AUC
 * and, for a graded file, its MAP over the qid1 groups. The score is the smaller of the
 * two gains over epoch 0's, so an epoch replaces the starting model only if it is
 * better by both measures (their sum let epochs trade 0.02 of AUC for MAP). The
 * cosine's AUC alone is not what is served: an epoch can raise it and lower
 * P(duplicate)'s. */
typedef struct head_judge {
    const qd_pairs *all;    /* the forum's training pairs: epoch 0's head */
    const qd_pairs *held;   /* the groups held out of training: the other epochs' heads */
    const qd_pairs *valid;  /* the pairs judged */
    qd_lex_stats *st;       /* term statistics of the pair signals (--vocab-corpus, or
                               --valid's questions) */
    int threads;            /* encoding threads (0: all cores) */
    int quiet;              /* print nothing */
    double auc0, map0;      /* epoch 0's P(duplicate) AUC and MAP (set when judged) */
} head_judge;

static int judge_by_head(const qd_model *m, int epoch, void *arg, double *score)
{
    head_judge *j = arg;
    char err[QD_ERRMSG_MAX];
    qd_head h;
    int rc = qd_fit_head(m, epoch == 0 ? j->all : j->held, j->threads, &h, err, sizeof err);
    if (rc) {
        fprintf(stderr, "qdup-train: epoch %d: %s\n", epoch, err);
        return rc;
    }
    size_t n = j->valid->n;
    float *cos = qd_mallocarray(n + 1, sizeof *cos), *p = qd_mallocarray(n + 1, sizeof *p);
    rc = cos && p ? qd_score_pairs(m, j->valid, j->threads, cos) : QD_ERR_NOMEM;
    if (rc == 0)
        rc = qd_fit_pairs_prob(&h, j->st, j->valid, cos, p);
    if (rc == 0) {
        double auc = qd_pairs_auc(p, j->valid->dup, n), map = 0;
        if (j->valid->grade)
            map = qd_pairs_map(p, j->valid->qid1, j->valid->grade, n, 1, NULL);
        if (epoch == 0) {
            j->auc0 = auc;
            j->map0 = map;
        }
        *score = qd_finetune_gain(auc, map, j->auc0, j->map0, j->valid->grade != NULL);
        if (!j->quiet)
            fprintf(stderr, "qdup-train: epoch %d: valid P(duplicate) AUC %.4f%s%.4f (head "
                            "fitted on %zu pairs), cosine AUC %.4f\n", epoch, auc,
                    j->valid->grade ? ", MAP " : "", j->valid->grade ? map : auc,
                    (epoch == 0 ? j->all : j->held)->n, qd_pairs_auc(cos, j->valid->dup, n));
    }
    qd_free(cos);
    qd_free(p);
    return rc;
}

/* The term statistics the judge scores --valid with: the corpus's questions when there
 * are any (the forum's collection, as qdup-eval --pairs-collection), else --valid's. */
static int judge_stats(const qd_pairs *valid, const char *const *texts, const size_t *lens,
                       size_t ncorpus, qd_lex_stats **st)
{
    if (ncorpus > 0)
        return qd_fit_stats(texts, lens, ncorpus, st);
    const char **t = qd_mallocarray(2 * valid->n + 1, sizeof *t);
    size_t *l = qd_mallocarray(2 * valid->n + 1, sizeof *l);
    int rc = t && l ? 0 : QD_ERR_NOMEM;
    for (size_t i = 0; rc == 0 && i < valid->n; i++) {
        t[2 * i] = valid->q1[i];
        l[2 * i] = valid->len1[i];
        t[2 * i + 1] = valid->q2[i];
        l[2 * i + 1] = valid->len2[i];
    }
    if (rc == 0)
        rc = qd_fit_stats(t, l, 2 * valid->n, st);
    qd_free(t);
    qd_free(l);
    return rc;
}

/* --mix-pairs: *train becomes itself plus share times as many pairs of path. */
static int mix_in(qd_pairs **train, const char *path, float share, uint64_t seed, char *err,
                  size_t errlen)
{
    qd_pairs *other, *mixed;
    int rc = qd_pairs_load(path, on_warning, NULL, &other, err, errlen);
    if (rc)
        return rc;
    rc = qd_finetune_mix(*train, other, share, seed, &mixed);
    qd_pairs_free(other);
    if (rc)
        return qd_errf(err, errlen, rc, "mixing in %s: %s", path, qd_strerror(rc));
    fprintf(stderr, "qdup-train: %zu training pairs with %zu of %s mixed in\n", mixed->n,
            mixed->n - (*train)->n, path);
    qd_pairs_free(*train);
    *train = mixed;
    return 0;
}

enum {
    OPT_TRAIN = 256, OPT_VALID, OPT_OUT, OPT_RECIPE, OPT_EPOCHS, OPT_THREADS, OPT_SEED,
    OPT_BATCH, OPT_LR, OPT_MARGIN, OPT_EMB, OPT_HIDDEN, OPT_MIN_COUNT, OPT_MAX_TOKENS,
    OPT_NGRAMS, OPT_HARD, OPT_SYM, OPT_NOSYM, OPT_WD, OPT_CLIP, OPT_PATIENCE, OPT_QUIET,
    OPT_LOSS, OPT_TEMP, OPT_POOL, OPT_MINE, OPT_CORPUS, OPT_PRETRAIN, OPT_DROPOUT,
    OPT_LRDECAY, OPT_INIT, OPT_GRADES, OPT_SKIP_GRADES, OPT_MIX_PAIRS, OPT_MIX, OPT_REFIT,
    OPT_NOFIT, OPT_HEAD_ONLY, OPT_HEAD_SHARE,
};

/* Fits m's scoring on the pairs and stores it in m; prints what was measured. */
static int fit_and_set(qd_model *m, const qd_pairs *train, const qd_pairs *valid, int threads,
                       int quiet)
{
    char err[QD_ERRMSG_MAX];
    qd_model_scoring sc;
    qd_fit_report r;
    if (!quiet)
        fprintf(stderr, "qdup-train: fitting the ranking and the duplicate head on the "
                        "validation pairs\n");
    int rc = qd_fit_scoring(m, train, valid, threads, &sc, &r, err, sizeof err);
    if (rc == 0)
        rc = qd_model_set_scoring(m, &sc, err, sizeof err);
    if (rc) {
        fprintf(stderr, "qdup-train: %s\n", err);
        return rc;
    }
    static const char *const forms[] = {"platt", "logistic", "isotonic", "logistic+isotonic"};
    if (!quiet) {
        fprintf(stderr,
                "qdup-train: ranking (valid MRR@10 over %zu queries, %zu documents): cosine "
                "%.4f, BM25 %.4f, fused %.4f with a = %.2f, k1 = %.2f, b = %.2f, %u "
                "candidates\n",
                r.queries, r.documents, r.mrr_cosine, r.mrr_bm25, r.mrr_fused,
                (double)sc.fusion, (double)sc.bm25.k1, (double)sc.bm25.b, sc.candidates);
        static const size_t cand[QD_FIT_NCAND] = QD_FIT_CANDIDATES;
        fprintf(stderr, "qdup-train: best fused MRR@10 by candidates:");
        for (int i = 0; i < QD_FIT_NCAND; i++)
            fprintf(stderr, " %zu: %.4f", cand[i], r.mrr_by_cand[i]);
        fputc('\n', stderr);
        fprintf(stderr, "qdup-train: duplicate head: 5-fold Brier");
        for (int i = 0; i < 4; i++)
            fprintf(stderr, " %s %.5f", forms[i], r.head.cv_brier[i]);
        fprintf(stderr, "; kept %s; min_p %.4f (valid accuracy %.4f, ECE %.4f, Brier %.4f); "
                        "%.1f s\n",
                qd_head_form(&sc.head), (double)sc.min_p, r.acc_at_min_p, r.ece, r.brier,
                r.seconds);
    }
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"train", required_argument, 0, OPT_TRAIN},
        {"valid", required_argument, 0, OPT_VALID},
        {"out", required_argument, 0, OPT_OUT},
        {"recipe", required_argument, 0, OPT_RECIPE},
        {"epochs", required_argument, 0, OPT_EPOCHS},
        {"threads", required_argument, 0, OPT_THREADS},
        {"seed", required_argument, 0, OPT_SEED},
        {"batch", required_argument, 0, OPT_BATCH},
        {"lr", required_argument, 0, OPT_LR},
        {"margin", required_argument, 0, OPT_MARGIN},
        {"emb", required_argument, 0, OPT_EMB},
        {"hidden", required_argument, 0, OPT_HIDDEN},
        {"min-count", required_argument, 0, OPT_MIN_COUNT},
        {"max-tokens", required_argument, 0, OPT_MAX_TOKENS},
        {"ngrams", required_argument, 0, OPT_NGRAMS},
        {"hard-negatives", required_argument, 0, OPT_HARD},
        {"symmetric", no_argument, 0, OPT_SYM},
        {"no-symmetric", no_argument, 0, OPT_NOSYM},
        {"weight-decay", required_argument, 0, OPT_WD},
        {"clip", required_argument, 0, OPT_CLIP},
        {"patience", required_argument, 0, OPT_PATIENCE},
        {"quiet", no_argument, 0, OPT_QUIET},
        {"loss", required_argument, 0, OPT_LOSS},
        {"temperature", required_argument, 0, OPT_TEMP},
        {"pool", required_argument, 0, OPT_POOL},
        {"mine", required_argument, 0, OPT_MINE},
        {"vocab-corpus", required_argument, 0, OPT_CORPUS},
        {"pretrain", required_argument, 0, OPT_PRETRAIN},
        {"dropout", required_argument, 0, OPT_DROPOUT},
        {"lr-decay", required_argument, 0, OPT_LRDECAY},
        {"init", required_argument, 0, OPT_INIT},
        {"duplicate-grades", required_argument, 0, OPT_GRADES},
        {"skip-grades", required_argument, 0, OPT_SKIP_GRADES},
        {"mix-pairs", required_argument, 0, OPT_MIX_PAIRS},
        {"mix", required_argument, 0, OPT_MIX},
        {"refit", required_argument, 0, OPT_REFIT},
        {"head-only", no_argument, 0, OPT_HEAD_ONLY},
        {"head-share", required_argument, 0, OPT_HEAD_SHARE},
        {"no-fit", no_argument, 0, OPT_NOFIT},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    /* Two passes: the recipe first, so that other options override it wherever they
     * stand on the command line. */
    const char *recipe = NULL;
    int finetune = 0;
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--recipe") == 0 && i + 1 < argc)
            recipe = argv[i + 1];
        else if (strncmp(argv[i], "--recipe=", 9) == 0)
            recipe = argv[i] + 9;
        else if (strcmp(argv[i], "--init") == 0 || strncmp(argv[i], "--init=", 7) == 0)
            finetune = 1;
    qd_train_opts o;
    if (!recipe && finetune)
        qd_finetune_recipe(&o);
    else if (qd_train_recipe(recipe ? recipe : "default", &o) != 0) {
        fprintf(stderr, "qdup-train: --recipe: unknown recipe \"%s\" (seed, default)\n", recipe);
        return 2;
    }
    const char *train_path = NULL, *valid_path = NULL, *out_path = NULL, *corpus_path = NULL;
    const char *init_path = NULL, *mix_path = NULL;
    unsigned grades = 0, skip = 0;
    int max_tokens_set = 0;
    float mix = 1;
    const char *refit_path = NULL;
    int head_only = 0;
    float head_share = 0.5f;
    int fit = 1;
    progress_state st = {.tty = isatty(2)};
    long v;
    int c;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case OPT_TRAIN: train_path = optarg; break;
        case OPT_VALID: valid_path = optarg; break;
        case OPT_OUT: out_path = optarg; break;
        case OPT_RECIPE: break;
        case OPT_EPOCHS:
            if (parse_long("--epochs", optarg, 1, 100000, &v)) return 2;
            o.epochs = (int)v;
            break;
        case OPT_THREADS:
            if (parse_long("--threads", optarg, 0, 256, &v)) return 2;
            o.threads = (int)v;
            break;
        case OPT_SEED:
            if (parse_long("--seed", optarg, 0, 0x7FFFFFFFL, &v)) return 2;
            o.seed = (uint64_t)v;
            break;
        case OPT_BATCH:
            if (parse_long("--batch", optarg, 2, 65536, &v)) return 2;
            o.batch = (size_t)v;
            break;
        case OPT_LR:
            if (parse_float("--lr", optarg, 1e-7, 10, &o.lr)) return 2;
            break;
        case OPT_MARGIN:
            if (parse_float("--margin", optarg, 0, 2, &o.margin)) return 2;
            break;
        case OPT_EMB:
            if (parse_long("--emb", optarg, 1, QD_MODEL_MAX_DIM, &v)) return 2;
            o.emb_dim = (uint32_t)v;
            break;
        case OPT_HIDDEN:
            if (parse_long("--hidden", optarg, 1, QD_MODEL_MAX_DIM, &v)) return 2;
            o.hidden = (uint32_t)v;
            break;
        case OPT_MIN_COUNT:
            if (parse_long("--min-count", optarg, 1, 1000000, &v)) return 2;
            o.min_count = (uint32_t)v;
            break;
        case OPT_MAX_TOKENS:
            if (parse_long("--max-tokens", optarg, 1, 65536, &v)) return 2;
            o.max_tokens = (uint32_t)v;
            max_tokens_set = 1;
            break;
        case OPT_NGRAMS: {
            unsigned a, b, n;
            char tail;
            if (sscanf(optarg, "%u:%u:%u%c", &a, &b, &n, &tail) != 3 ||
                (n && (a == 0 || b < a || b > 16)) || n > QD_MODEL_MAX_BUCKETS) {
                fprintf(stderr, "qdup-train: --ngrams: expected MIN:MAX:BUCKETS with "
                                "1 <= MIN <= MAX <= 16, got \"%s\"\n", optarg);
                return 2;
            }
            o.ngram_min = a;
            o.ngram_max = b;
            o.ngram_buckets = n;
            break;
        }
        case OPT_HARD:
            if (parse_long("--hard-negatives", optarg, 0, 65536, &v)) return 2;
            o.hard_negatives = (size_t)v;
            break;
        case OPT_SYM: o.symmetric = 1; break;
        case OPT_NOSYM: o.symmetric = 0; break;
        case OPT_WD:
            if (parse_float("--weight-decay", optarg, 0, 1, &o.weight_decay)) return 2;
            break;
        case OPT_CLIP:
            if (parse_float("--clip", optarg, 0, 1e9, &o.clip)) return 2;
            break;
        case OPT_PATIENCE:
            if (parse_long("--patience", optarg, 0, 100000, &v)) return 2;
            o.patience = (int)v;
            break;
        case OPT_QUIET: st.quiet = 1; break;
        case OPT_LOSS:
            if (strcmp(optarg, "triplet") == 0)
                o.loss = QD_LOSS_TRIPLET;
            else if (strcmp(optarg, "softmax") == 0)
                o.loss = QD_LOSS_SOFTMAX;
            else {
                fprintf(stderr, "qdup-train: --loss: expected triplet or softmax, got \"%s\"\n",
                        optarg);
                return 2;
            }
            break;
        case OPT_CORPUS: corpus_path = optarg; break;
        case OPT_INIT: init_path = optarg; break;
        case OPT_MIX_PAIRS: mix_path = optarg; break;
        case OPT_MIX:
            if (parse_float("--mix", optarg, 0, 1000, &mix)) return 2;
            break;
        case OPT_SKIP_GRADES:
            if (qd_finetune_parse_grades(optarg, &skip)) {
                fprintf(stderr, "qdup-train: --skip-grades: expected grades 0-9 separated "
                                "by commas (e.g. 1), got \"%s\"\n", optarg);
                return 2;
            }
            break;
        case OPT_GRADES:
            if (qd_finetune_parse_grades(optarg, &grades) || grades == 0) {
                fprintf(stderr, "qdup-train: --duplicate-grades: expected grades 0-9 separated "
                                "by commas (e.g. 2 or 1,2), got \"%s\"\n", optarg);
                return 2;
            }
            break;
        case OPT_REFIT: refit_path = optarg; break;
        case OPT_HEAD_ONLY: head_only = 1; break;
        case OPT_HEAD_SHARE:
            if (parse_float("--head-share", optarg, 0, 0.9, &head_share)) return 2;
            break;
        case OPT_NOFIT: fit = 0; break;
        case OPT_DROPOUT:
            if (parse_float("--dropout", optarg, 0, 0.9, &o.dropout)) return 2;
            break;
        case OPT_LRDECAY:
            if (parse_float("--lr-decay", optarg, 0.01, 1, &o.lr_decay)) return 2;
            break;
        case OPT_PRETRAIN:
            if (parse_long("--pretrain", optarg, 0, 1000, &v)) return 2;
            o.pretrain_epochs = (int)v;
            break;
        case OPT_MINE:
            if (parse_long("--mine", optarg, 0, 64, &v)) return 2;
            o.mine_top = (size_t)v;
            break;
        case OPT_POOL:
            if (parse_pool(optarg, &o.pool)) return 2;
            break;
        case OPT_TEMP:
            if (parse_float("--temperature", optarg, 1e-3, 10, &o.temperature)) return 2;
            break;
        case 'h': fputs(usage, stdout); return 0;
        default: fputs(usage, stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "qdup-train: unexpected argument \"%s\"\n", argv[optind]);
        return 2;
    }
    if (!train_path || !valid_path || !out_path) {
        fprintf(stderr, "qdup-train: --train, --valid and --out are required (see --help)\n");
        return 2;
    }

    if (head_only && (!init_path || refit_path)) {
        fprintf(stderr, "qdup-train: --head-only needs --init MODEL (and no --refit)\n");
        return 2;
    }
    if (init_path && o.pretrain_epochs > 0) {
        fprintf(stderr, "qdup-train: --pretrain would overwrite the word vectors --init "
                        "starts from: use one or the other\n");
        return 2;
    }
    char err[QD_ERRMSG_MAX];
    qd_pairs *train = NULL, *valid = NULL;
    qd_model *init = NULL;
    qd_pairs *held = NULL; /* --head-share: the pairs the scoring is fitted on */
    qd_pairs *all = NULL;  /* --head-share: the training pairs before the split */
    if (qd_pairs_load(train_path, on_warning, NULL, &train, err, sizeof err) != 0 ||
        qd_pairs_load(valid_path, on_warning, NULL, &valid, err, sizeof err) != 0 ||
        (init_path && qd_model_load(init_path, &init, err, sizeof err) != 0) ||
        ((grades || skip) &&
         prepare_grades(train, train_path, grades, skip, err, sizeof err) != 0) ||
        (init_path && !head_only && !refit_path && head_share > 0 &&
         hold_out(&train, &held, &all, head_share, o.seed, st.quiet, err, sizeof err) != 0) ||
        (mix_path && mix_in(&train, mix_path, mix, o.seed, err, sizeof err) != 0)) {
        fprintf(stderr, "qdup-train: %s\n", err);
        qd_pairs_free(train);
        qd_pairs_free(valid);
        qd_pairs_free(held);
        qd_pairs_free(all);
        qd_model_free(init);
        return 1;
    }
    if (head_only)
        refit_path = init_path; /* --refit, fitted on the forum's own pairs */
    if (refit_path) {
        qd_model *rm = NULL;
        int status = 1;
        if (qd_model_load(refit_path, &rm, err, sizeof err) != 0)
            fprintf(stderr, "qdup-train: %s\n", err);
        else if (fit_and_set(rm, train, head_only ? train : valid, o.threads, st.quiet) == 0) {
            if (qd_model_save(rm, out_path, err, sizeof err) != 0)
                fprintf(stderr, "qdup-train: %s\n", err);
            else {
                printf("wrote %s: fingerprint %s (the encoder of %s, scoring re-fitted)\n",
                       out_path, qd_model_fingerprint(rm), refit_path);
                status = 0;
            }
        }
        qd_model_free(rm);
        qd_pairs_free(train);
        qd_pairs_free(valid);
        qd_model_free(init);
        return status;
    }
    if (init) {
        /* The starting model's shape and tokenizer, whatever the recipe says. */
        const qd_model_hdr *ih = qd_model_header(init);
        o.init = init;
        o.emb_dim = ih->emb_dim;
        o.hidden = ih->hidden;
        o.pool = ih->pool;
        if (!max_tokens_set)
            o.max_tokens = ih->tok.max_tokens;
        o.ngram_min = ih->tok.ngram_min;
        o.ngram_max = ih->tok.ngram_max;
        o.ngram_buckets = ih->tok.ngram_buckets;
    }
    if (!st.quiet)
        fprintf(stderr,
                "qdup-train: recipe %s: %zu training pairs (%zu skipped), %zu validation "
                "pairs; E=%u H=%u batch %zu lr %g margin %g epochs %d\n",
                o.recipe, train->n, train->skipped, valid->n, o.emb_dim, o.hidden, o.batch,
                (double)o.lr, (double)o.margin, o.epochs);
    corpus cp = {0};
    if (corpus_path) {
        if (load_corpus(corpus_path, &cp, err, sizeof err) != 0) {
            fprintf(stderr, "qdup-train: %s\n", err);
            qd_pairs_free(train);
            qd_pairs_free(valid);
            qd_pairs_free(held);
            qd_model_free(init);
            return 1;
        }
        o.corpus = (const char *const *)cp.texts;
        o.corpus_lens = cp.lens;
        o.ncorpus = cp.n;
    }
    head_judge hj = {.all = all, .held = held, .valid = valid, .threads = o.threads,
                     .quiet = st.quiet};
    int rc = 0;
    if (held && fit) {
        rc = judge_stats(valid, o.corpus, o.corpus_lens, o.ncorpus, &hj.st);
        if (rc)
            snprintf(err, sizeof err, "term statistics for judging the epochs: %s",
                     qd_strerror(rc));
        o.judge = judge_by_head;
        o.judge_arg = &hj;
        st.head = 1;
    }
    qd_model *m = NULL;
    qd_train_result r = {0};
    if (rc == 0)
        rc = qd_train(&o, train, valid, on_progress, &st, &m, &r, err, sizeof err);
    corpus_free(&cp);
    qd_lex_stats_free(hj.st);
    if (rc == 0 && init && r.best_epoch == 0) {
        /* No epoch beat the starting model: write it with its own vocabulary (the words
         * added changed no vector) and so its own fingerprint, and no index built with
         * it needs re-embedding. */
        qd_model_free(m);
        m = NULL;
        rc = qd_model_load(init_path, &m, err, sizeof err);
    }
    /* The head of the epoch kept: fitted on all the training pairs if it is the starting
     * model (which saw none of them), on the held-out groups otherwise. */
    const qd_pairs *fit_on = held && r.best_epoch == 0 ? all : held;
    if (rc == 0 && fit &&
        fit_and_set(m, held ? fit_on : train, held ? fit_on : valid, o.threads, st.quiet) != 0) {
        qd_model_free(m);
        rc = QD_ERR_INVAL;
        snprintf(err, sizeof err, "no model written");
    }
    qd_pairs_free(train);
    qd_pairs_free(valid);
    qd_pairs_free(held);
    qd_pairs_free(all);
    qd_model_free(init);
    if (rc) {
        fprintf(stderr, "\nqdup-train: %s\n", err);
        return 1;
    }
    rc = qd_model_save(m, out_path, err, sizeof err);
    if (rc) {
        fprintf(stderr, "qdup-train: %s\n", err);
        qd_model_free(m);
        return 1;
    }
    printf("wrote %s: fingerprint %s, vocabulary %zu, best epoch %d of %d (valid %s %.4f), "
           "%.1f s, %.0f pairs/s\n",
           out_path, qd_model_fingerprint(m), (size_t)qd_model_header(m)->vocab, r.best_epoch,
           r.epochs_run, st.head ? "P(duplicate) gain over epoch 0" : "AUC", r.best_valid_auc,
           r.seconds, r.pairs_per_s);
    if (r.stopped_early)
        printf("stopped early after epoch %d of %d: no better validation AUC for %d "
               "epoch%s (--patience)\n", r.epochs_run, o.epochs, o.patience,
               o.patience == 1 ? "" : "s");
    if (init_path && r.best_epoch == 0)
        printf("no epoch scored better on --valid than %s: written as it is, only its "
               "scoring re-fitted (the same vectors and fingerprint)\n", init_path);
    else if (init_path)
        printf("fine-tuned from %s: %zu words added to its vocabulary\n", init_path,
               r.words_added);
    qd_model_free(m);
    return 0;
}
