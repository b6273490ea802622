/*
 * bench.c - qdup-bench: the speed of qdup's encoder and trainer, each measured against
 * the PyTorch reference of the course's model in the same run.
 *
 * Both comparisons give PyTorch exactly qdup's input: qdup tokenizes the questions with
 * the model's tokenizer and vocabulary and writes the token rows to a file under
 * $TMPDIR (format in tools/torch_bench.py), and tools/torch_bench.py reads them, so
 * only the model code differs. The script runs as a child process (Debian's
 * /usr/bin/python3 by default) after qdup's own measurement, never at the same time,
 * so the two do not compete for the cores; its progress goes to our standard error and
 * it reports back on one "RESULT {json}" line on its standard output.
 *
 *   encode: one warm-up pass of qd_enc_texts_parallel over the whole dump, then --runs
 *           timed passes; the median rate is the headline (the best is printed too).
 *           The same model file is loaded by PyTorch (torch_ref.read_qdm) and timed the
 *           same way; the vectors of the first --check questions are compared.
 *   train:  qd_train with the seed recipe, then torch_bench.py train on the same token
 *           ids (the C-trained model's vocabulary), each reporting per-epoch pairs per
 *           second and validation AUC, and test AUC and accuracy at 0.7 of its best
 *           epoch.
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "qdup/common.h"
#include "qdup/dump.h"
#include "qdup/fileio.h"
#include "qdup/model.h"
#include "qdup/parallel.h"
#include "qdup/pairs.h"
#include "qdup/tok.h"
#include "qdup/train.h"

#include "bench.h"
#include "texts.h"

#define PROG "qdup-bench"

#ifndef QDUP_TOOLS_DIR
#define QDUP_TOOLS_DIR "tools"
#endif

extern char **environ;

static const char usage[] =
    "usage: " PROG " encode --model MODEL --input FILE [--threads N] [--batch N] [--runs N]\n"
    "                  [--check N] [--no-torch] [--torch-script PATH] [--python PATH]\n"
    "       " PROG " train [--data DIR] [--epochs N] [--threads N] [--seed N] [--out MODEL]\n"
    "                  [--torch-lstm packed|padded] [--no-torch] [--torch-script PATH]\n"
    "                  [--python PATH]\n"
    "       " PROG " search --db DB --queries FILE [-n N] [-k K] [--param NAME=V]...\n"
    "                  (latency and recall of a store's index: " PROG " search --help)\n"
    "\n"
    "encode: embeds every question of a dump (e.g. ../shared/data/quora/questions.tsv)\n"
    "  with qd_enc_texts_parallel: one warm-up pass, then --runs timed passes (default 3);\n"
    "  the median rate is reported (the best too). Then the PyTorch reference\n"
    "  (tools/torch_bench.py encode) embeds the same questions with the same model file:\n"
    "  the token rows qdup's tokenizer gives, torch.inference_mode, torch.set_num_threads(N),\n"
    "  length-sorted batches of 512 padded to each batch's longest question, masked mean;\n"
    "  timed the same way, the padded batches built before the clock starts. qdup's time\n"
    "  includes tokenizing the text; PyTorch's does not. The vectors of the first --check\n"
    "  questions (default 500) are compared (max abs difference). The output ends with the\n"
    "  line \"questions_per_second: N\" (qdup's median rate).\n"
    "    --model MODEL       model file (required)\n"
    "    --input FILE        question dump, any format qdup-index reads (required)\n"
    "    --batch N           qdup's questions per forward pass (default: the library's)\n"
    "    --runs N            timed runs per side (default 3)\n"
    "    --check N           questions whose vectors are compared (default 500)\n"
    "\n"
    "train: trains the seed recipe (the course's model and settings: E = H = 128, batch 256\n"
    "  duplicate pairs of DIR/train.tsv, Adam lr 0.01, margin 0.25, in-batch negatives)\n"
    "  with qd_train, then the PyTorch reference of the course's model the same way\n"
    "  (tools/torch_bench.py train: torch_ref.Encoder with PyTorch's default init, the\n"
    "  course's triplet loss, Adam lr 0.01, 256 duplicate pairs per step shuffled every\n"
    "  epoch) on the same token ids (qdup's tokenizer and the C-trained vocabulary). Each\n"
    "  reports per epoch its training pairs per second (validation excluded) and its\n"
    "  validation AUC, keeps its best epoch by validation AUC and scores it on test.tsv\n"
    "  (ROC AUC, accuracy at 0.7). Prints both side by side and the speed ratio; the\n"
    "  output ends with the line \"pairs_per_second: N\" (qdup's rate over all epochs).\n"
    "  PyTorch runs its LSTM over packed sequences (the padding steps skipped; the same\n"
    "  loss and gradients) unless --torch-lstm padded.\n"
    "    --data DIR          holds train.tsv, valid.tsv, test.tsv (default:\n"
    "                        $QDUP_DATA/quora, QDUP_DATA defaulting to ../shared/data)\n"
    "    --epochs N          epochs for both sides (default 8; PyTorch takes ~1 minute each)\n"
    "    --seed N            seed for both sides (default 1)\n"
    "    --out MODEL         also save the C-trained model\n"
    "    --torch-lstm MODE   packed (default) or padded\n"
    "\n"
    "common options:\n"
    "  --threads N           threads for both sides (encode default: all cores; train\n"
    "                        default: 2)\n"
    "  --no-torch            measure qdup only\n"
    "  --torch-script PATH   the reference script (default " QDUP_TOOLS_DIR "/torch_bench.py)\n"
    "  --python PATH         its interpreter (default /usr/bin/python3)\n"
    "  --keep-tmp            keep the token files given to PyTorch (say where)\n"
    "  -h, --help            this help\n"
    "\n"
    "The reference script sets OMP_WAIT_POLICY=PASSIVE unless the environment sets it:\n"
    "with other jobs on the cores, spinning OpenMP threads make PyTorch many times\n"
    "slower. If the interpreter or PyTorch is missing, that is said and qdup's result\n"
    "still printed (exit status 0). Exit status: 0 on success, 1 on failure (the C result\n"
    "is still printed when only the PyTorch side failed), 2 for bad options.\n";

/* Options of both subcommands. */
typedef struct bench_opts {
    const char *model;       /* encode: model file */
    const char *input;       /* encode: question dump */
    const char *data;        /* train: directory of the splits */
    const char *out;         /* train: where to save the C model, or NULL */
    const char *script;      /* torch_bench.py */
    const char *python;      /* its interpreter */
    int threads;             /* both sides */
    size_t batch;            /* encode: qdup's batch (0: library default) */
    int runs;                /* encode: timed runs */
    size_t check;            /* encode: vectors compared */
    int epochs;              /* train */
    long seed;               /* train */
    int torch;               /* 0 with --no-torch */
    int keep_tmp;            /* keep the token files for a look */
    const char *torch_lstm;  /* train: "packed" or "padded" (torch_bench.py --lstm) */
} bench_opts;

/* --- scratch directory ----------------------------------------------------------------- */

static char tmp_dir[4096];   /* made by make_tmp_dir, removed by remove_tmp_dir */

static int make_tmp_dir(void)
{
    const char *t = getenv("TMPDIR");
    snprintf(tmp_dir, sizeof tmp_dir, "%s/qdup-bench-XXXXXX", t && *t ? t : "/tmp");
    if (!mkdtemp(tmp_dir)) {
        int e = errno;
        fprintf(stderr, PROG ": cannot make a scratch directory %s: %s\n", tmp_dir,
                strerror(e));
        tmp_dir[0] = '\0';
        return QD_ERR_IO;
    }
    return 0;
}

static const char *tmp_file(const char *name, char *buf, size_t n)
{
    snprintf(buf, n, "%s/%s", tmp_dir, name);
    return buf;
}

static void remove_tmp_dir(int keep)
{
    if (keep && tmp_dir[0]) {
        fprintf(stderr, PROG ": token files kept in %s\n", tmp_dir);
        return;
    }
    static const char *const names[] = {"tokens.bin", "check.f32", "train.bin", "valid.bin",
                                        "test.bin"};
    if (!tmp_dir[0])
        return;
    char p[4200];
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        unlink(tmp_file(names[i], p, sizeof p));
    rmdir(tmp_dir);
    tmp_dir[0] = '\0';
}

/* --- the token file (format in tools/torch_bench.py) --------------------------------------- */

static int write_tokens(const char *path, const qd_tokseqs *s, const uint8_t *labels,
                        size_t nlabels)
{
    FILE *f = fopen(path, "wb");
    if (!f) {
        int e = errno;
        fprintf(stderr, PROG ": %s: %s\n", path, strerror(e));
        return QD_ERR_IO;
    }
    uint32_t h32[2] = {0x01020304u, 48};
    uint64_t h64[4] = {s->n, s->ntok, s->nrows, nlabels};
    static const uint32_t zero = 0;
    int ok = fwrite("QDTOKS01", 1, 8, f) == 8 && fwrite(h32, sizeof h32, 1, f) == 1 &&
             fwrite(h64, sizeof h64, 1, f) == 1;
    /* An empty batch has no offset arrays yet: write their single 0. */
    if (ok)
        ok = s->qoff ? fwrite(s->qoff, sizeof *s->qoff, s->n + 1, f) == s->n + 1
                     : fwrite(&zero, sizeof zero, 1, f) == 1;
    if (ok)
        ok = s->toff ? fwrite(s->toff, sizeof *s->toff, s->ntok + 1, f) == s->ntok + 1
                     : fwrite(&zero, sizeof zero, 1, f) == 1;
    if (ok && s->nrows)
        ok = fwrite(s->rows, sizeof *s->rows, s->nrows, f) == s->nrows;
    if (ok && nlabels)
        ok = fwrite(labels, 1, nlabels, f) == nlabels;
    int e = errno;
    if (fclose(f) != 0 && ok) {
        e = errno;
        ok = 0;
    }
    if (!ok) {
        fprintf(stderr, PROG ": writing %s: %s\n", path, strerror(e));
        return QD_ERR_IO;
    }
    return 0;
}

/* Tokenizes n texts with m's tokenizer into s. */
static int tokenize(const qd_model *m, const char *const *qs, const size_t *lens, size_t n,
                    qd_tokseqs *s)
{
    qd_tokbuf tb;
    qd_tokbuf_init(&tb);
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++)
        rc = qd_tok_encode(qd_model_vocab(m), &qd_model_header(m)->tok, &tb, qs[i], lens[i],
                           s);
    qd_tokbuf_free(&tb);
    if (rc)
        fprintf(stderr, PROG ": tokenizing: %s\n", qd_strerror(rc));
    return rc;
}

/* --- running the reference script ------------------------------------------------------------ */

/* What became of the PyTorch side. */
enum { TORCH_OK = 0, TORCH_MISSING = 1, TORCH_FAILED = 2 };

/* Runs python script args..., collecting its standard output (its standard error is
 * ours), and parses its "RESULT " line into *result. */
static int run_torch(const bench_opts *o, const char *const *args, json_t **result)
{
    *result = NULL;
    if (access(o->python, X_OK) != 0) {
        fprintf(stderr, PROG ": PyTorch side skipped: %s is not there (or not executable)\n",
                o->python);
        return TORCH_MISSING;
    }
    if (access(o->script, R_OK) != 0) {
        fprintf(stderr, PROG ": %s: cannot read the reference script (--torch-script)\n",
                o->script);
        return TORCH_FAILED;
    }
    const char *argv[40];
    size_t na = 0;
    argv[na++] = o->python;
    argv[na++] = o->script;
    for (size_t i = 0; args[i] && na < 39; i++)
        argv[na++] = args[i];
    argv[na] = NULL;

    int fd[2];
    if (pipe(fd) != 0) {
        fprintf(stderr, PROG ": pipe: %s\n", strerror(errno));
        return TORCH_FAILED;
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fd[1], 1);
    posix_spawn_file_actions_addclose(&fa, fd[0]);
    posix_spawn_file_actions_addclose(&fa, fd[1]);
    pid_t pid;
    int e = posix_spawn(&pid, o->python, &fa, NULL, (char *const *)argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(fd[1]);
    if (e != 0) {
        close(fd[0]);
        fprintf(stderr, PROG ": cannot run %s: %s\n", o->python, strerror(e));
        return TORCH_FAILED;
    }
    char *out = NULL;
    size_t len = 0, cap = 0;
    int nomem = 0;
    for (;;) {
        if (len + 4096 + 1 > cap) {
            size_t nc = cap ? cap * 2 : 65536;
            char *p = qd_realloc(out, nc);
            if (!p) {
                nomem = 1;
                break;
            }
            out = p;
            cap = nc;
        }
        ssize_t r = read(fd[0], out + len, 4096);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        len += (size_t)r;
    }
    close(fd[0]);
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (nomem) {
        qd_free(out);
        fprintf(stderr, PROG ": out of memory reading the PyTorch output\n");
        return TORCH_FAILED;
    }
    if (out)
        out[len] = '\0';
    if (WIFEXITED(status) && WEXITSTATUS(status) == 3) {
        qd_free(out);
        fprintf(stderr, PROG ": PyTorch side skipped: %s cannot import torch (see above)\n",
                o->python);
        return TORCH_MISSING;
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        qd_free(out);
        if (WIFEXITED(status))
            fprintf(stderr, PROG ": %s failed (exit status %d; its messages are above)\n",
                    o->script, WEXITSTATUS(status));
        else
            fprintf(stderr, PROG ": %s was killed by signal %d\n", o->script,
                    WIFSIGNALED(status) ? WTERMSIG(status) : 0);
        return TORCH_FAILED;
    }
    /* The last line starting with "RESULT ". */
    const char *res = NULL;
    for (char *p = out; p && *p;) {
        char *nl = strchr(p, '\n');
        if (nl)
            *nl = '\0';
        if (strncmp(p, "RESULT ", 7) == 0)
            res = p + 7;
        p = nl ? nl + 1 : NULL;
    }
    json_error_t je;
    json_t *j = res ? json_loads(res, 0, &je) : NULL;
    qd_free(out);
    if (!j || !json_is_object(j)) {
        json_decref(j);
        fprintf(stderr, PROG ": %s printed no RESULT line that parses as a JSON object\n",
                o->script);
        return TORCH_FAILED;
    }
    *result = j;
    return TORCH_OK;
}

static double jnum(const json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_number(v) ? json_number_value(v) : NAN;
}

static const char *jstr(const json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : "?";
}

/* --- encode -------------------------------------------------------------------------------- */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static int cmd_encode(const bench_opts *o)
{
    char err[QD_ERRMSG_MAX];
    qd_model *m = NULL;
    qd_texts t = {0};
    float *out = NULL;
    double *rates = NULL;
    json_t *tr = NULL;
    qd_tokseqs s;
    qd_tokseqs_init(&s);
    int status = 1;
    if (qd_model_load(o->model, &m, err, sizeof err) != 0) {
        fprintf(stderr, PROG ": %s\n", err);
        goto done;
    }
    if (qd_texts_load(PROG, o->input, NULL, &t) != 0)
        goto done;
    int threads = qd_parallel_workers(SIZE_MAX, o->threads); /* 0: one per core */
    const qd_model_hdr *h = qd_model_header(m);
    size_t H = (size_t)qd_model_dim(m);
    out = qd_mallocarray(t.n, H * sizeof *out);
    rates = qd_calloc((size_t)o->runs, sizeof *rates);
    if (!out || !rates) {
        fprintf(stderr, PROG ": out of memory for %zu vectors\n", t.n);
        goto done;
    }
    printf("encode: %zu questions of %s%s; model %s (E=%u H=%u, vocabulary %u); %d threads\n",
           t.n, o->input, t.skipped ? " (some records skipped)" : "", o->model, h->emb_dim,
           h->hidden, h->vocab, threads);
    fflush(stdout);
    /* Warm-up: pages, caches, thread start-up. */
    int rc = qd_enc_texts_parallel(m, t.text, t.len, t.n, threads, o->batch, NULL, NULL, out);
    for (int r = 0; rc == 0 && r < o->runs; r++) {
        double t0 = qd_now();
        rc = qd_enc_texts_parallel(m, t.text, t.len, t.n, threads, o->batch, NULL, NULL, out);
        double dt = qd_now() - t0;
        rates[r] = (double)t.n / dt;
        fprintf(stderr, "qdup encode run %d/%d: %.3f s, %.0f questions/s\n", r + 1, o->runs, dt,
                rates[r]);
    }
    if (rc) {
        fprintf(stderr, PROG ": encoding failed: %s\n", qd_strerror(rc));
        goto done;
    }
    double best = 0;
    for (int r = 0; r < o->runs; r++)
        best = rates[r] > best ? rates[r] : best;
    double c_rate = median(rates, o->runs);
    printf("qdup:    %10.0f questions/s (median of %d runs after a warm-up; best %.0f; "
           "tokenizing included)\n", c_rate, o->runs, best);
    fflush(stdout);

    int torch = o->torch ? TORCH_FAILED : TORCH_MISSING;
    if (o->torch) {
        char tok_path[4200], chk_path[4200], thr[16], runs[16], check[24];
        if (make_tmp_dir() != 0)
            goto torch_done;
        tmp_file("tokens.bin", tok_path, sizeof tok_path);
        tmp_file("check.f32", chk_path, sizeof chk_path);
        if (tokenize(m, t.text, t.len, t.n, &s) != 0 || write_tokens(tok_path, &s, NULL, 0) != 0)
            goto torch_done;
        snprintf(thr, sizeof thr, "%d", threads);
        snprintf(runs, sizeof runs, "%d", o->runs);
        snprintf(check, sizeof check, "%zu", o->check < t.n ? o->check : t.n);
        const char *args[] = {"encode", "--model", o->model, "--tokens", tok_path, "--threads",
                              thr, "--batch", "512", "--runs", runs, "--check", check,
                              "--check-out", chk_path, NULL};
        torch = run_torch(o, args, &tr);
        if (torch != TORCH_OK)
            goto torch_done;
        double t_rate = jnum(tr, "median_qps");
        printf("PyTorch: %10.0f questions/s (median of %d runs after a warm-up; best %.0f; "
               "torch %s, %d threads, OMP_WAIT_POLICY=%s, length-sorted batches of 512, "
               "built beforehand in %.2f s)\n",
               t_rate, o->runs, jnum(tr, "best_qps"), jstr(tr, "torch"),
               (int)jnum(tr, "threads"), jstr(tr, "omp_wait_policy"), jnum(tr, "prep_seconds"));
        printf("ratio:   %10.2f (qdup / PyTorch, medians)\n", c_rate / t_rate);
        /* Do both sides compute the same vectors? */
        size_t k = o->check < t.n ? o->check : t.n;
        char *buf = NULL;
        size_t blen = 0;
        if (qd_file_read(chk_path, (size_t)1 << 34, &buf, &blen, err, sizeof err) != 0 ||
            blen != k * H * sizeof(float)) {
            fprintf(stderr, PROG ": %s: expected %zu vectors of %zu floats from PyTorch\n",
                    chk_path, k, H);
            qd_free(buf);
            torch = TORCH_FAILED;
            goto torch_done;
        }
        double maxd = 0;
        const float *tv = (const float *)(void *)buf;
        for (size_t i = 0; i < k * H; i++) {
            double d = fabs((double)tv[i] - (double)out[i]);
            if (!(d <= maxd)) /* NaN counts too */
                maxd = d;
        }
        qd_free(buf);
        printf("check:   max abs difference between the qdup and PyTorch vectors of the first "
               "%zu questions: %.3g%s\n", k, maxd, maxd < 1e-4 ? "" : "  (TOO LARGE)");
        if (!(maxd < 1e-4))
            torch = TORCH_FAILED;
    }
torch_done:
    if (o->torch && torch == TORCH_MISSING)
        printf("PyTorch: skipped (see the message above)\n");
    printf("questions_per_second: %.0f\n", c_rate);
    status = o->torch && torch == TORCH_FAILED ? 1 : 0;
done:
    json_decref(tr);
    remove_tmp_dir(o->keep_tmp);
    qd_tokseqs_free(&s);
    qd_free(rates);
    qd_free(out);
    qd_texts_free(&t);
    qd_model_free(m);
    return status;
}

/* --- train --------------------------------------------------------------------------------- */

/* What the C trainer reported per epoch. */
typedef struct epoch_log {
    int n;                  /* epochs logged */
    double *pairs_per_s;    /* (epochs) */
    double *valid_auc;      /* (epochs) */
    double *loss;           /* (epochs) */
    int tty;                /* stderr is a terminal: show batches too */
} epoch_log;

static void on_train_progress(const qd_train_progress *p, void *arg)
{
    epoch_log *l = arg;
    if (p->epoch_done) {
        if (l->tty)
            fputs("\r\033[K", stderr);
        fprintf(stderr, "qdup epoch %d/%d: loss %.4f, %.0f pairs/s, valid AUC %.4f%s\n",
                p->epoch, p->epochs, p->loss, p->pairs_per_s, p->valid_auc,
                p->best ? " (best so far)" : "");
        int i = p->epoch - 1;
        l->pairs_per_s[i] = p->pairs_per_s;
        l->valid_auc[i] = p->valid_auc;
        l->loss[i] = p->loss;
        l->n = p->epoch;
    } else if (l->tty) {
        fprintf(stderr, "\r\033[Kqdup epoch %d/%d batch %zu/%zu loss %.4f %.0f pairs/s",
                p->epoch, p->epochs, p->step, p->steps, p->loss, p->pairs_per_s);
    }
}

static void on_pair_warning(const char *msg, void *arg)
{
    (void)arg;
    fprintf(stderr, PROG ": warning: %s (row skipped)\n", msg);
}

/* Writes the pairs of p, tokenized with m, as a pair token file. */
static int write_pair_tokens(const qd_model *m, const qd_pairs *p, const char *path)
{
    const char **tx = qd_mallocarray(2 * p->n + 1, sizeof *tx);
    size_t *ln = qd_mallocarray(2 * p->n + 1, sizeof *ln);
    qd_tokseqs s;
    qd_tokseqs_init(&s);
    int rc = QD_ERR_NOMEM;
    if (!tx || !ln) {
        fprintf(stderr, PROG ": out of memory\n");
        goto done;
    }
    for (size_t i = 0; i < p->n; i++) {
        tx[2 * i] = p->q1[i];
        ln[2 * i] = p->len1[i];
        tx[2 * i + 1] = p->q2[i];
        ln[2 * i + 1] = p->len2[i];
    }
    rc = tokenize(m, tx, ln, 2 * p->n, &s);
    if (rc == 0)
        rc = write_tokens(path, &s, p->dup, p->n);
done:
    qd_tokseqs_free(&s);
    qd_free(tx);
    qd_free(ln);
    return rc;
}

static int cmd_train(const bench_opts *o)
{
    char err[QD_ERRMSG_MAX], path[3][4200];
    static const char *const split[3] = {"train", "valid", "test"};
    qd_pairs *p[3] = {NULL, NULL, NULL};
    qd_model *m = NULL;
    float *ts = NULL;
    json_t *tr = NULL;
    epoch_log log = {.tty = isatty(2)};
    int status = 1;
    log.pairs_per_s = qd_calloc((size_t)o->epochs, sizeof *log.pairs_per_s);
    log.valid_auc = qd_calloc((size_t)o->epochs, sizeof *log.valid_auc);
    log.loss = qd_calloc((size_t)o->epochs, sizeof *log.loss);
    if (!log.pairs_per_s || !log.valid_auc || !log.loss) {
        fprintf(stderr, PROG ": out of memory\n");
        goto done;
    }
    for (int i = 0; i < 3; i++) {
        snprintf(path[i], sizeof path[i], "%s/%s.tsv", o->data, split[i]);
        if (qd_pairs_load(path[i], on_pair_warning, NULL, &p[i], err, sizeof err) != 0) {
            fprintf(stderr, PROG ": %s\n", err);
            goto done;
        }
    }
    qd_train_opts to;
    qd_train_recipe("seed", &to);
    to.epochs = o->epochs;
    to.threads = o->threads;
    to.seed = (uint64_t)o->seed;
    size_t ndups = 0;
    for (size_t i = 0; i < p[0]->n; i++)
        ndups += p[0]->dup[i];
    printf("train: seed recipe (E=%u H=%u, batch %zu duplicate pairs, Adam lr %g, margin %g, "
           "in-batch negatives), %d epochs, %d threads, seed %ld\n",
           to.emb_dim, to.hidden, to.batch, (double)to.lr, (double)to.margin, o->epochs,
           o->threads, o->seed);
    printf("data: %s: %zu pairs, %zu duplicates (%zu steps of %zu per epoch); %s: %zu pairs; "
           "%s: %zu pairs\n", path[0], p[0]->n, ndups, ndups / to.batch, to.batch, path[1],
           p[1]->n, path[2], p[2]->n);
    fflush(stdout);

    qd_train_result res;
    if (qd_train(&to, p[0], p[1], on_train_progress, &log, &m, &res, err, sizeof err) != 0) {
        fprintf(stderr, "%s" PROG ": training: %s\n", log.tty ? "\n" : "", err);
        goto done;
    }
    ts = qd_mallocarray(p[2]->n, sizeof *ts);
    if (!ts || qd_score_pairs(m, p[2], o->threads, ts) != 0) {
        fprintf(stderr, PROG ": scoring %s failed\n", path[2]);
        goto done;
    }
    double c_auc = qd_pairs_auc(ts, p[2]->dup, p[2]->n);
    double c_acc = qd_pairs_accuracy_at(ts, p[2]->dup, p[2]->n, 0.7);
    if (o->out && qd_model_save(m, o->out, err, sizeof err) != 0) {
        fprintf(stderr, PROG ": %s\n", err);
        goto done;
    }

    int torch = TORCH_MISSING;
    if (o->torch) {
        char tp[3][4200], rows[24], E[16], H[16], ep[16], thr[16], seed[24];
        torch = TORCH_FAILED;
        if (make_tmp_dir() != 0)
            goto report;
        for (int i = 0; i < 3; i++) {
            char name[32];
            snprintf(name, sizeof name, "%s.bin", split[i]);
            tmp_file(name, tp[i], sizeof tp[i]);
            if (write_pair_tokens(m, p[i], tp[i]) != 0)
                goto report;
        }
        const qd_model_hdr *h = qd_model_header(m);
        snprintf(rows, sizeof rows, "%u", h->vocab + h->tok.ngram_buckets);
        snprintf(E, sizeof E, "%u", h->emb_dim);
        snprintf(H, sizeof H, "%u", h->hidden);
        snprintf(ep, sizeof ep, "%d", o->epochs);
        snprintf(thr, sizeof thr, "%d", o->threads);
        snprintf(seed, sizeof seed, "%ld", o->seed);
        char lr[32], margin[32], batch[32];
        snprintf(lr, sizeof lr, "%g", (double)to.lr);
        snprintf(margin, sizeof margin, "%g", (double)to.margin);
        snprintf(batch, sizeof batch, "%zu", to.batch);
        const char *args[] = {"train", "--train", tp[0], "--valid", tp[1], "--test", tp[2],
                              "--rows", rows, "--emb", E, "--hidden", H, "--epochs", ep,
                              "--batch", batch, "--lr", lr, "--margin", margin, "--threads",
                              thr, "--seed", seed, "--lstm", o->torch_lstm, NULL};
        torch = run_torch(o, args, &tr);
    }
report:;
    json_t *te = tr ? json_object_get(tr, "epochs") : NULL;
    printf("\n%-6s %14s %14s %16s %18s\n", "epoch", "qdup pairs/s", "qdup valid AUC",
           "PyTorch pairs/s", "PyTorch valid AUC");
    for (int i = 0; i < log.n; i++) {
        json_t *e = json_is_array(te) ? json_array_get(te, (size_t)i) : NULL;
        printf("%-6d %14.0f %14.4f", i + 1, log.pairs_per_s[i], log.valid_auc[i]);
        if (e)
            printf(" %16.0f %18.4f", jnum(e, "pairs_per_s"), jnum(e, "valid_auc"));
        putchar('\n');
    }
    printf("\n%-34s %12s %12s\n", "", "qdup", tr ? "PyTorch" : "");
    if (tr) {
        printf("%-34s %12d %12d\n", "best epoch (by validation AUC)", res.best_epoch,
               (int)jnum(tr, "best_epoch"));
        printf("%-34s %12.4f %12.4f\n", "validation AUC of the best epoch", res.best_valid_auc,
               jnum(tr, "best_valid_auc"));
        printf("%-34s %12.4f %12.4f\n", "test ROC AUC", c_auc, jnum(tr, "test_auc"));
        printf("%-34s %12.4f %12.4f\n", "test accuracy at 0.7", c_acc,
               jnum(tr, "test_acc_at_0_7"));
        printf("%-34s %12.0f %12.0f\n", "training pairs/s (all epochs)", res.pairs_per_s,
               jnum(tr, "pairs_per_s"));
        printf("%-34s %12.1f %12.1f\n", "training seconds (no validation)",
               (double)(ndups / to.batch * to.batch) * log.n / res.pairs_per_s,
               jnum(tr, "train_seconds"));
        printf("\nPyTorch: torch %s, %d threads, OMP_WAIT_POLICY=%s, LSTM over the %s batch\n",
               jstr(tr, "torch"), (int)jnum(tr, "threads"), jstr(tr, "omp_wait_policy"),
               strcmp(jstr(tr, "lstm"), "packed") == 0 ? "packed" : "padded");
        printf("speed ratio (qdup / PyTorch pairs/s): %.2f\n",
               res.pairs_per_s / jnum(tr, "pairs_per_s"));
        printf("test AUC difference (qdup - PyTorch): %+.4f\n", c_auc - jnum(tr, "test_auc"));
    } else {
        printf("%-34s %12d\n", "best epoch (by validation AUC)", res.best_epoch);
        printf("%-34s %12.4f\n", "validation AUC of the best epoch", res.best_valid_auc);
        printf("%-34s %12.4f\n", "test ROC AUC", c_auc);
        printf("%-34s %12.4f\n", "test accuracy at 0.7", c_acc);
        printf("%-34s %12.0f\n", "training pairs/s (all epochs)", res.pairs_per_s);
        if (o->torch)
            printf("PyTorch: %s (see the message above)\n",
                   torch == TORCH_MISSING ? "skipped" : "failed");
    }
    printf("pairs_per_second: %.0f\n", res.pairs_per_s);
    status = o->torch && torch == TORCH_FAILED ? 1 : 0;
done:
    json_decref(tr);
    remove_tmp_dir(o->keep_tmp);
    qd_free(ts);
    qd_model_free(m);
    for (int i = 0; i < 3; i++)
        qd_pairs_free(p[i]);
    qd_free(log.pairs_per_s);
    qd_free(log.valid_auc);
    qd_free(log.loss);
    return status;
}

/* --- main ---------------------------------------------------------------------------------- */

static int parse_long(const char *opt, const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *s == '\0' || *end != '\0' || v < lo || v > hi) {
        fprintf(stderr, PROG ": %s: expected a whole number from %ld to %ld, got \"%s\"\n", opt,
                lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

enum {
    OPT_MODEL = 256, OPT_INPUT, OPT_DATA, OPT_OUT, OPT_THREADS, OPT_BATCH, OPT_RUNS,
    OPT_CHECK, OPT_EPOCHS, OPT_SEED, OPT_NOTORCH, OPT_SCRIPT, OPT_PYTHON, OPT_KEEP,
    OPT_TORCH_LSTM,
};

int main(int argc, char **argv)
{
    /* In the order of the enum: the stray-option check below names them by index. */
    static const struct option longopts[] = {
        {"model", required_argument, 0, OPT_MODEL},
        {"input", required_argument, 0, OPT_INPUT},
        {"data", required_argument, 0, OPT_DATA},
        {"out", required_argument, 0, OPT_OUT},
        {"threads", required_argument, 0, OPT_THREADS},
        {"batch", required_argument, 0, OPT_BATCH},
        {"runs", required_argument, 0, OPT_RUNS},
        {"check", required_argument, 0, OPT_CHECK},
        {"epochs", required_argument, 0, OPT_EPOCHS},
        {"seed", required_argument, 0, OPT_SEED},
        {"no-torch", no_argument, 0, OPT_NOTORCH},
        {"torch-script", required_argument, 0, OPT_SCRIPT},
        {"python", required_argument, 0, OPT_PYTHON},
        {"keep-tmp", no_argument, 0, OPT_KEEP},
        {"torch-lstm", required_argument, 0, OPT_TORCH_LSTM},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    if (argc >= 2 && (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0)) {
        fputs(usage, stdout);
        return 0;
    }
    if (argc >= 2 && strcmp(argv[1], "search") == 0)
        return bench_search_main(argc - 1, argv + 1);
    if (argc < 2 || (strcmp(argv[1], "encode") != 0 && strcmp(argv[1], "train") != 0)) {
        fprintf(stderr, PROG ": expected a command, encode, train or search%s%s%s (see --help)\n",
                argc >= 2 ? ", got \"" : "", argc >= 2 ? argv[1] : "", argc >= 2 ? "\"" : "");
        return 2;
    }
    int is_train = strcmp(argv[1], "train") == 0;
    bench_opts o = {.script = QDUP_TOOLS_DIR "/torch_bench.py", .python = "/usr/bin/python3",
                    .threads = is_train ? 2 : 0, .runs = 3, .check = 500, .epochs = 8,
                    .seed = 1, .torch = 1, .torch_lstm = "packed"};
    long v;
    int c;
    unsigned long given = 0; /* bit (opt - OPT_MODEL) for each option seen */
    optind = 2;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        if (c >= OPT_MODEL && c <= OPT_TORCH_LSTM)
            given |= 1UL << (c - OPT_MODEL);
        switch (c) {
        case OPT_MODEL: o.model = optarg; break;
        case OPT_INPUT: o.input = optarg; break;
        case OPT_DATA: o.data = optarg; break;
        case OPT_OUT: o.out = optarg; break;
        case OPT_THREADS:
            if (parse_long("--threads", optarg, is_train ? 1 : 0, 256, &v)) return 2;
            o.threads = (int)v;
            break;
        case OPT_BATCH:
            if (parse_long("--batch", optarg, 1, 65536, &v)) return 2;
            o.batch = (size_t)v;
            break;
        case OPT_RUNS:
            if (parse_long("--runs", optarg, 1, 1000, &v)) return 2;
            o.runs = (int)v;
            break;
        case OPT_CHECK:
            if (parse_long("--check", optarg, 0, 1000000000L, &v)) return 2;
            o.check = (size_t)v;
            break;
        case OPT_EPOCHS:
            if (parse_long("--epochs", optarg, 1, 1000, &v)) return 2;
            o.epochs = (int)v;
            break;
        case OPT_SEED:
            if (parse_long("--seed", optarg, 0, 0x7FFFFFFFL, &v)) return 2;
            o.seed = v;
            break;
        case OPT_NOTORCH: o.torch = 0; break;
        case OPT_SCRIPT: o.script = optarg; break;
        case OPT_PYTHON: o.python = optarg; break;
        case OPT_KEEP: o.keep_tmp = 1; break;
        case OPT_TORCH_LSTM:
            if (strcmp(optarg, "packed") != 0 && strcmp(optarg, "padded") != 0) {
                fprintf(stderr, PROG ": --torch-lstm: expected packed or padded, got \"%s\"\n",
                        optarg);
                return 2;
            }
            o.torch_lstm = optarg;
            break;
        case 'h': fputs(usage, stdout); return 0;
        default: fputs(usage, stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, PROG ": unexpected argument \"%s\" (see --help)\n", argv[optind]);
        return 2;
    }
    /* Options that belong to the other command are mistakes, not silently ignored. */
    static const int encode_only[] = {OPT_MODEL, OPT_INPUT, OPT_BATCH, OPT_RUNS, OPT_CHECK};
    static const int train_only[] = {OPT_DATA, OPT_OUT, OPT_EPOCHS, OPT_SEED, OPT_TORCH_LSTM};
    const int *other = is_train ? encode_only : train_only;
    size_t nother = is_train ? sizeof encode_only / sizeof *encode_only
                             : sizeof train_only / sizeof *train_only;
    for (size_t i = 0; i < nother; i++)
        if (given & (1UL << (other[i] - OPT_MODEL))) {
            fprintf(stderr, PROG ": --%s is not an option of %s (see --help)\n",
                    longopts[other[i] - OPT_MODEL].name, argv[1]);
            return 2;
        }
    if (is_train) {
        char dir[4096];
        if (!o.data) {
            const char *root = getenv("QDUP_DATA");
            snprintf(dir, sizeof dir, "%s/quora", root && *root ? root : "../shared/data");
            o.data = dir;
        }
        return cmd_train(&o);
    }
    if (!o.model || !o.input) {
        fprintf(stderr, PROG ": encode needs --model and --input (see --help)\n");
        return 2;
    }
    return cmd_encode(&o);
}
