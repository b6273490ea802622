/*
 * harness.c - processes and files for qdup-crash-test and qdup-abuse (harness.h).
 */
#include "harness.h"

#include <errno.h>
#include <inttypes.h>
#include <fcntl.h>
#include <ftw.h>
#include <libgen.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "qdup/common.h"
#include "qdup/model.h"

const char *harness_prog = "qdup-harness";

void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", harness_prog);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

int harness_failures;

void failf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: FAIL: ", harness_prog);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    harness_failures++;
}

void sleep_s(double s)
{
    if (s <= 0)
        return;
    struct timespec ts = {(time_t)s, (long)((s - floor(s)) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

const char *path_in(const char *dir, const char *name)
{
    static char bufs[8][PATH_MAX + 64];
    static int next;
    char *b = bufs[next++ % 8];
    snprintf(b, sizeof bufs[0], "%s/%s", dir, name);
    return b;
}

pid_t spawn(char *const argv[], const char *in, const char *out, const char *err)
{
    pid_t pid = fork();
    if (pid < 0)
        die("fork: %s", strerror(errno));
    if (pid == 0) {
        int fi = open(in ? in : "/dev/null", O_RDONLY);
        int fo = open(out ? out : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int fe = open(err ? err : "/dev/null", O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fi < 0 || fo < 0 || fe < 0)
            _exit(126);
        dup2(fi, 0);
        dup2(fo, 1);
        dup2(fe, 2);
        execv(argv[0], argv);
        _exit(127);
    }
    return pid;
}

int wait_status(pid_t pid)
{
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            die("waitpid: %s", strerror(errno));
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 1 << 16, n = 0;
    char *b = malloc(cap + 1);
    size_t r;
    while (b && (r = fread(b + n, 1, cap - n, f)) > 0) {
        n += r;
        if (n == cap) {
            char *nb = realloc(b, (cap *= 2) + 1);
            if (!nb)
                free(b);
            b = nb;
        }
    }
    fclose(f);
    if (b) {
        b[n] = '\0';
        if (len)
            *len = n;
    }
    return b;
}

int file_has_from(const char *path, long from, const char *needle)
{
    char *b = slurp(path, NULL);
    if (!b)
        return 0;
    size_t n = strlen(b);
    int found = (size_t)from <= n && strstr(b + from, needle) != NULL;
    free(b);
    return found;
}

int wait_listening(pid_t pid, const char *log, long from, const char *sock, double deadline)
{
    char want[PATH_MAX + 64];
    snprintf(want, sizeof want, "listening on %s\n", sock);
    double t0 = qd_now();
    while (qd_now() - t0 < deadline) {
        if (file_has_from(log, from, want))
            return 0;
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid)
            return -1;
        sleep_s(0.002);
    }
    die("qdup-daemon did not start within %.0f s (log %s)", deadline, log);
}

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

void remove_tree(const char *dir)
{
    nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

void harness_setup(char *bin, char *model, const char *fallback, char *dir, int given)
{
    if (!bin[0]) {
        char self[PATH_MAX];
        ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
        if (n <= 0)
            die("cannot find my own directory; give --bin");
        self[n] = '\0';
        snprintf(bin, PATH_MAX, "%s", dirname(self));
    }
    if (!model[0]) {
        const char *fx = getenv("QDUP_FIXTURES");
        if (fx && *fx)
            snprintf(model, PATH_MAX, "%s/fwd_plain.qdm", fx);
        else
            snprintf(model, PATH_MAX, "%s", fallback);
    }
    char abs_model[PATH_MAX];
    if (!realpath(model, abs_model))
        die("model %s: %s", model, strerror(errno));
    snprintf(model, PATH_MAX, "%s", abs_model);
    if (!given) {
        const char *tmp = getenv("TMPDIR");
        snprintf(dir, PATH_MAX, "%s/%s.XXXXXX", tmp && *tmp ? tmp : "/tmp", harness_prog);
        if (!mkdtemp(dir))
            die("mkdtemp %s: %s", dir, strerror(errno));
    } else if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        die("%s: %s", dir, strerror(errno));
    }
}

long opt_long(const char *name, const char *v, long lo, long hi)
{
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || *end || end == v || x < lo || x > hi) {
        fprintf(stderr, "%s: --%s %s: expected a number from %ld to %ld\n", harness_prog, name,
                v, lo, hi);
        exit(2);
    }
    return x;
}

void write_dump(const char *path, const char *prefix, uint64_t k0, uint64_t k1,
                void (*text_of)(uint64_t k, char *buf, size_t len))
{
    FILE *f = fopen(path, "w");
    if (!f)
        die("%s: %s", path, strerror(errno));
    fprintf(f, "qid\tquestion\n");
    char t[256];
    for (uint64_t k = k0; k < k1; k++) {
        text_of(k, t, sizeof t);
        fprintf(f, "%s%" PRIu64 "\t%s\n", prefix, k, t);
    }
    if (fclose(f) != 0)
        die("%s: %s", path, strerror(errno));
}

void make_second_model(const char *src, const char *dst)
{
    char err[QD_ERRMSG_MAX];
    qd_model *m = NULL;
    if (qd_model_load(src, &m, err, sizeof err) != 0)
        die("%s", err);
    size_t n = 0;
    float *w = qd_model_param_data(m, &n);
    for (size_t i = 0; i < n; i++)
        w[i] = w[i] * 0.8f + 0.05f * sinf((float)i);
    if (qd_model_save(m, dst, err, sizeof err) != 0)
        die("%s", err);
    qd_model_free(m);
}
