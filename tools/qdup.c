/*
 * qdup.c - the command-line client of qdup-daemon.
 *
 * Sends one request (proto.h) over the daemon's Unix socket, waits for its one-line
 * reply and prints it: readable by default, the reply line itself with --json (for
 * scripts). The exit status says what happened, so scripts need not parse: 0 for an
 * ok reply, 1 for an error reply (its code and message on stderr), 2 for a usage,
 * connection or protocol failure.
 *
 * The request is built with jansson, so any text (quotes, newlines, non-ASCII) is
 * escaped properly; words given as several arguments are joined with spaces, and "-"
 * reads the text from standard input.
 */
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "qdup/common.h"

enum { EXIT_ERR_REPLY = 1, EXIT_FAIL = 2 };

static void usage(FILE *f)
{
    fprintf(f,
            "usage: qdup [--socket PATH] [--json] [--timeout SECONDS] COMMAND [ARGS]\n\n"
            "Talks to qdup-daemon over its Unix socket (--socket, or $QDUP_SOCKET).\n\n"
            "commands:\n"
            "  query [-k N] [--min-score X] TEXT...   the k stored questions most like TEXT\n"
            "  add ID TEXT...                          store a question under ID\n"
            "  remove ID                               remove it\n"
            "  get ID                                  show it\n"
            "  verdict NEW OLD duplicate|dismissed     a moderator closed NEW as a duplicate\n"
            "                                          of OLD, or dismissed the suggestion\n"
            "                                          (kept for qdup-index verdicts)\n"
            "  check [-k N] [--min-score X] [--no-store] ID TEXT...\n"
            "                                          the k best matches of a new post, a\n"
            "                                          \"*\" marking duplicates (p_duplicate\n"
            "                                          >= the model's min_p), then store it\n"
            "  reload                                  switch to the model qdup-index reembed\n"
            "                                          staged (as SIGHUP does)\n"
            "  stats [--prometheus]                    the daemon's counters and latencies;\n"
            "                                          --prometheus: the Prometheus text\n"
            "                                          format (op \"metrics\")\n"
            "  ping                                    is the daemon there?\n\n"
            "TEXT may be several words (joined with spaces) or \"-\" to read standard input.\n"
            "options:\n"
            "  --socket PATH       the daemon's socket\n"
            "  --json              print the reply line as it came (one JSON object)\n"
            "  --timeout SECONDS   give up waiting for the reply (default 60)\n"
            "  -k N                results wanted (query: 10, check: 5)\n"
            "  --min-score X       only results whose cosine is >= X (-1 .. 1)\n"
            "  --no-store          check: only look for duplicates\n"
            "  --help              this text\n\n"
            "exit status: 0 ok, 1 the daemon answered with an error, 2 anything else\n");
}

/* The words joined by spaces, or standard input for "-". */
static char *join_text(char **words, int n)
{
    if (n == 1 && strcmp(words[0], "-") == 0) {
        size_t cap = 4096, len = 0;
        char *buf = malloc(cap);
        size_t got;
        while (buf && (got = fread(buf + len, 1, cap - len - 1, stdin)) > 0) {
            len += got;
            if (cap - len - 1 == 0) {
                char *p = realloc(buf, cap * 2);
                if (!p) {
                    free(buf);
                    return NULL;
                }
                buf = p;
                cap *= 2;
            }
        }
        if (!buf)
            return NULL;
        while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r'))
            len--;
        buf[len] = '\0';
        return buf;
    }
    size_t len = 0;
    for (int i = 0; i < n; i++)
        len += strlen(words[i]) + 1;
    char *s = malloc(len + 1);
    if (!s)
        return NULL;
    s[0] = '\0';
    for (int i = 0; i < n; i++) {
        if (i)
            strcat(s, " ");
        strcat(s, words[i]);
    }
    return s;
}

static int connect_to(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path) {
        fprintf(stderr, "qdup: socket path too long: %s\n", path);
        return -1;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        fprintf(stderr, "qdup: socket: %s\n", strerror(errno));
        return -1;
    }
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        int e = errno;
        fprintf(stderr, "qdup: cannot connect to %s: %s%s\n", path, strerror(e),
                e == ENOENT || e == ECONNREFUSED ? " (is qdup-daemon running?)" : "");
        close(fd);
        return -1;
    }
    return fd;
}

/* Sends the line and reads one reply line (malloc'd, without the newline). */
static char *exchange(int fd, const char *line, size_t len, double timeout)
{
    size_t off = 0;
    while (off < len) {
        ssize_t w = send(fd, line + off, len - off, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EPIPE || errno == ECONNRESET)
                break; /* the daemon hung up; it may have said why: read on */
            fprintf(stderr, "qdup: send: %s\n", strerror(errno));
            return NULL;
        }
        off += (size_t)w;
    }
    size_t cap = 65536, n = 0;
    char *buf = malloc(cap);
    if (!buf)
        return NULL;
    double deadline = qd_now() + timeout;
    for (;;) {
        char *nl = n ? memchr(buf, '\n', n) : NULL;
        if (nl) {
            *nl = '\0';
            return buf;
        }
        double left = deadline - qd_now();
        if (left <= 0) {
            fprintf(stderr, "qdup: no reply within %.0f s\n", timeout);
            break;
        }
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int pr = poll(&p, 1, (int)(left * 1000) + 1);
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr <= 0)
            continue;
        if (n + 1 >= cap) {
            char *b = realloc(buf, cap * 2);
            if (!b)
                break;
            buf = b;
            cap *= 2;
        }
        ssize_t r = recv(fd, buf + n, cap - n - 1, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            fprintf(stderr, "qdup: the daemon closed the connection%s%s\n",
                    r < 0 ? ": " : "", r < 0 ? strerror(errno) : "");
            break;
        }
        n += (size_t)r;
    }
    free(buf);
    return NULL;
}

/* The string member `key` of o, or dflt. */
static const char *str_or(json_t *o, const char *key, const char *dflt)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : dflt;
}

static void print_hits(json_t *a)
{
    size_t i;
    json_t *h;
    if (!json_is_array(a) || json_array_size(a) == 0) {
        printf("(no results)\n");
        return;
    }
    json_array_foreach(a, i, h) {
        json_t *sc = json_object_get(h, "score"), *p = json_object_get(h, "p_duplicate");
        printf("%.4f  p=%.2f%s  %s  %s\n", json_is_number(sc) ? json_number_value(sc) : 0.0,
               json_is_number(p) ? json_number_value(p) : 0.0,
               json_is_true(json_object_get(h, "duplicate")) ? " *" : "",
               str_or(h, "id", "?"), str_or(h, "text", ""));
    }
}

/* Prints a stats object as "a.b.c: value" lines. */
static void print_flat(const char *prefix, json_t *v)
{
    if (json_is_object(v)) {
        const char *k;
        json_t *x;
        json_object_foreach(v, k, x) {
            char key[256];
            snprintf(key, sizeof key, "%s%s%s", prefix, *prefix ? "." : "", k);
            print_flat(key, x);
        }
        return;
    }
    char *s = json_is_string(v) ? NULL : json_dumps(v, JSON_ENCODE_ANY | JSON_REAL_PRECISION(6));
    printf("%s: %s\n", prefix, s ? s : json_string_value(v));
    free(s);
}

static void print_reply(const char *cmd, json_t *r, const char *id)
{
    if (strcmp(cmd, "query") == 0) {
        print_hits(json_object_get(r, "results"));
    } else if (strcmp(cmd, "add") == 0) {
        printf("added %s (row %lld)\n", id,
               (long long)json_integer_value(json_object_get(r, "row")));
    } else if (strcmp(cmd, "remove") == 0) {
        printf("removed %s\n", id);
    } else if (strcmp(cmd, "verdict") == 0) {
        printf("%s %s of %s\n", json_is_true(json_object_get(r, "duplicate")) ? "duplicate:"
                                                                               : "dismissed:",
               id, str_or(r, "of", "?"));
    } else if (strcmp(cmd, "get") == 0) {
        time_t t = (time_t)json_integer_value(json_object_get(r, "created"));
        char when[64] = "?";
        struct tm tm;
        if (gmtime_r(&t, &tm))
            strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S UTC", &tm);
        printf("id:      %s\ntext:    %s\nrow:     %lld\ncreated: %s\n",
               str_or(r, "id", "?"), str_or(r, "text", ""),
               (long long)json_integer_value(json_object_get(r, "row")), when);
    } else if (strcmp(cmd, "check") == 0) {
        json_t *d = json_object_get(r, "duplicates");
        if (json_array_size(d) == 0)
            printf("no duplicates found\n");
        else
            print_hits(d);
        if (json_is_true(json_object_get(r, "stored")))
            printf("stored %s (row %lld)\n", id,
                   (long long)json_integer_value(json_object_get(r, "row")));
        else
            printf("not stored: %s\n", str_or(r, "reason", "not asked to"));
    } else if (strcmp(cmd, "reload") == 0) {
        if (json_is_true(json_object_get(r, "switched")))
            printf("switched from model %s to %s\n", str_or(r, "from", "?"),
                   str_or(r, "to", "?"));
        else
            printf("not switched: %s\n", str_or(r, "reason", "nothing staged"));
    } else if (strcmp(cmd, "stats") == 0) {
        print_flat("", json_object_get(r, "stats"));
    } else if (strcmp(cmd, "metrics") == 0) {
        fputs(str_or(r, "metrics", ""), stdout);
    } else {
        printf("ok\n");
    }
}

int main(int argc, char **argv)
{
    const char *socket_path = getenv("QDUP_SOCKET");
    int json_out = 0, store = 1, prometheus = 0;
    long k = -1;
    double min_score = 2, timeout = 60;
    static const struct option lopts[] = {
        {"socket", required_argument, NULL, 's'},
        {"json", no_argument, NULL, 'j'},
        {"timeout", required_argument, NULL, 't'},
        {"min-score", required_argument, NULL, 'm'},
        {"no-store", no_argument, NULL, 'n'},
        {"prometheus", no_argument, NULL, 'p'},
        {"help", no_argument, NULL, 'h'},
        {0, 0, 0, 0},
    };
    int ch;
    char *end;
    while ((ch = getopt_long(argc, argv, "k:h", lopts, NULL)) != -1) {
        switch (ch) {
        case 's':
            socket_path = optarg;
            break;
        case 'j':
            json_out = 1;
            break;
        case 't':
            timeout = strtod(optarg, &end);
            if (*end || !(timeout > 0)) {
                fprintf(stderr, "qdup: --timeout: not a positive number of seconds\n");
                return EXIT_FAIL;
            }
            break;
        case 'k':
            k = strtol(optarg, &end, 10);
            if (*end || k < 1) {
                fprintf(stderr, "qdup: -k: not a positive number\n");
                return EXIT_FAIL;
            }
            break;
        case 'm':
            min_score = strtod(optarg, &end);
            if (*end || !(min_score >= -1 && min_score <= 1)) {
                fprintf(stderr, "qdup: --min-score: not a number from -1 to 1\n");
                return EXIT_FAIL;
            }
            break;
        case 'n':
            store = 0;
            break;
        case 'p':
            prometheus = 1;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return EXIT_FAIL;
        }
    }
    if (optind >= argc) {
        usage(stderr);
        return EXIT_FAIL;
    }
    if (!socket_path || !*socket_path) {
        fprintf(stderr, "qdup: no socket: give --socket PATH or set QDUP_SOCKET\n");
        return EXIT_FAIL;
    }
    const char *cmd = argv[optind++];
    if (prometheus && strcmp(cmd, "stats") != 0) {
        fprintf(stderr, "qdup: --prometheus goes with stats\n");
        return EXIT_FAIL;
    }
    if (prometheus)
        cmd = "metrics";
    char **args = argv + optind;
    int nargs = argc - optind;

    json_t *req = json_object();
    const char *id = NULL;
    char *text = NULL;
    int need_id = 0, need_text = 0, verdict = 0;
    if (strcmp(cmd, "query") == 0) {
        need_text = 1;
    } else if (strcmp(cmd, "add") == 0 || strcmp(cmd, "check") == 0) {
        need_id = need_text = 1;
    } else if (strcmp(cmd, "remove") == 0 || strcmp(cmd, "get") == 0) {
        need_id = 1;
    } else if (strcmp(cmd, "verdict") == 0) {
        need_id = 1;
        verdict = 2; /* OLD and the decision */
    } else if (strcmp(cmd, "stats") != 0 && strcmp(cmd, "ping") != 0 &&
               strcmp(cmd, "metrics") != 0 && strcmp(cmd, "reload") != 0) {
        fprintf(stderr, "qdup: unknown command \"%s\" (see --help)\n", cmd);
        return EXIT_FAIL;
    }
    if (nargs < need_id + need_text + verdict ||
        (!need_text && nargs > need_id + verdict)) {
        fprintf(stderr, "qdup: %s: wrong number of arguments (see --help)\n", cmd);
        return EXIT_FAIL;
    }
    json_object_set_new(req, "op", json_string(cmd));
    if (need_id) {
        id = args[0];
        json_t *jid = json_string(id);
        if (!jid) {
            fprintf(stderr, "qdup: the id is not valid UTF-8\n");
            return EXIT_FAIL;
        }
        json_object_set_new(req, "id", jid);
    }
    if (verdict) {
        json_t *of = json_string(args[1]);
        int dup = strcmp(args[2], "duplicate") == 0;
        if (!of || (!dup && strcmp(args[2], "dismissed") != 0)) {
            fprintf(stderr, "qdup: verdict NEW OLD duplicate|dismissed (OLD valid UTF-8)\n");
            json_decref(of);
            json_decref(req);
            return EXIT_FAIL;
        }
        json_object_set_new(req, "of", of);
        json_object_set_new(req, "duplicate", json_boolean(dup));
    }
    if (need_text) {
        text = join_text(args + need_id, nargs - need_id);
        json_t *jt = text ? json_string(text) : NULL;
        if (!jt) {
            fprintf(stderr, "qdup: the text is not valid UTF-8 (or holds a NUL byte)\n");
            return EXIT_FAIL;
        }
        json_object_set_new(req, "text", jt);
    }
    if (k > 0 && (strcmp(cmd, "query") == 0 || strcmp(cmd, "check") == 0))
        json_object_set_new(req, "k", json_integer(k));
    if (min_score <= 1 && (strcmp(cmd, "query") == 0 || strcmp(cmd, "check") == 0))
        json_object_set_new(req, "min_score", json_real(min_score));
    if (!store && strcmp(cmd, "check") == 0)
        json_object_set_new(req, "store", json_false());

    char *line = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    free(text);
    if (!line) {
        fprintf(stderr, "qdup: out of memory\n");
        return EXIT_FAIL;
    }
    size_t len = strlen(line);
    char *withnl = malloc(len + 2);
    if (!withnl)
        return EXIT_FAIL;
    memcpy(withnl, line, len);
    withnl[len] = '\n';
    free(line);

    int fd = connect_to(socket_path);
    if (fd < 0) {
        free(withnl);
        return EXIT_FAIL;
    }
    char *reply = exchange(fd, withnl, len + 1, timeout);
    close(fd);
    free(withnl);
    if (!reply)
        return EXIT_FAIL;

    json_error_t je;
    json_t *r = json_loads(reply, 0, &je);
    if (!json_is_object(r)) {
        fprintf(stderr, "qdup: the daemon's reply is not a JSON object: %s\n", je.text);
        free(reply);
        json_decref(r);
        return EXIT_FAIL;
    }
    int ok = json_is_true(json_object_get(r, "ok"));
    if (json_out) {
        printf("%s\n", reply);
    } else if (ok) {
        print_reply(cmd, r, id);
    } else {
        json_t *e = json_object_get(r, "error");
        fprintf(stderr, "qdup: %s: %s\n", str_or(e, "code", "error"),
                str_or(e, "message", ""));
    }
    free(reply);
    json_decref(r);
    return ok ? 0 : EXIT_ERR_REPLY;
}
