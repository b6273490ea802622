/*
 * fuzz_proto.c - libFuzzer harness for qdup-daemon's request handler (proto.h).
 *
 * An input is a few request lines (split at '\n', at most MAX_LINES). Each is answered
 * by qd_proto_handle(), one line in and one reply out, against a small in-memory index
 * (memidx.h) made fresh for every input and seeded with a few questions: adds, removes
 * and queries of one input act on each other, while inputs stay independent of the
 * order the fuzzer runs them in. Every fifth line comes from a peer that may not write,
 * so the "forbidden" path is reached too.
 *
 * Every reply must be exactly one line of valid JSON: an object whose "ok" is a
 * boolean, with a known error code and a message when it is false, the request's tag
 * echoed when the request was an object with one, and result lists best first. A
 * broken rule aborts, which libFuzzer reports as a crash.
 *
 * The limits are smaller than the daemon's defaults (max_k excepted) so that every
 * "too large" path, the reply limit included, is within reach of short inputs. The
 * model is the test fixture fwd_plain.qdm (vocabulary "w2".."w39"); QDUP_FUZZ_MODEL in
 * the environment names another.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "qdup/common.h"
#include "qdup/memidx.h"
#include "qdup/model.h"
#include "qdup/proto.h"

#ifndef QDUP_FUZZ_MODEL
#define QDUP_FUZZ_MODEL "tests/fixtures/fwd_plain.qdm"
#endif

#define MAX_LINES 64
#define MAX_ROWS 256 /* the index refuses more: memory stays bounded */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static qd_model *model;
static qd_enc_ws *ws;

static void die(const char *what, const char *line, size_t len, const char *reply)
{
    fprintf(stderr, "fuzz_proto: %s\n  request (%zu bytes): %.*s\n  reply: %s\n", what, len,
            (int)(len > 2000 ? 2000 : len), line, reply ? reply : "(none)");
    abort();
}

static void setup(void)
{
    if (model)
        return;
    const char *path = getenv("QDUP_FUZZ_MODEL");
    if (!path || !*path)
        path = QDUP_FUZZ_MODEL;
    char err[QD_ERRMSG_MAX];
    if (qd_model_load(path, &model, err, sizeof err)) {
        fprintf(stderr, "fuzz_proto: %s\n", err);
        abort();
    }
    ws = qd_enc_ws_new();
    if (!ws)
        abort();
    json_object_seed(1); /* a fixed hash seed: the same input, the same run */
}

/* Questions every input starts with. */
static const char *const seed_ids[] = {"a", "b", "c", "d", "e", "f", "g", "h"};
static const char *const seed_texts[] = {
    "w3 w17 w5 ?", "w4 w4 w9", "w10 w11 w12 w13 w14", "w2", "w39 w38 w37 ?",
    "w20 w21", "w5 w17 w3", "w30 w31 w32 w33 w34 w35 w36",
};

static void seed(const qd_backend *be)
{
    enum { N = sizeof seed_ids / sizeof seed_ids[0] };
    qd_store_item items[N];
    qd_store_result res[N];
    for (size_t i = 0; i < N; i++)
        items[i] = (qd_store_item){seed_ids[i], strlen(seed_ids[i]), seed_texts[i],
                                   strlen(seed_texts[i]), NULL};
    if (be->add(be->ctx, items, N, 0, res))
        abort();
}

/* The same JSON value written the same way: tags are compared through this, since
 * the reply writes reals with 7 significant digits. */
static char *canon(const json_t *j)
{
    return json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY |
                             JSON_REAL_PRECISION(7));
}

/* Scores of one result list must be numbers (or null) in non-increasing order, and
 * every entry must carry a string id and text. */
static int results_ok(const json_t *a)
{
    if (!json_is_array(a))
        return 0;
    double prev = 2.0;
    size_t i;
    json_t *h;
    json_array_foreach(a, i, h) {
        if (!json_is_object(h) || !json_is_string(json_object_get(h, "id")) ||
            !json_is_string(json_object_get(h, "text")))
            return 0;
        json_t *s = json_object_get(h, "score");
        if (json_is_null(s))
            continue;
        if (!json_is_number(s))
            return 0;
        double x = json_number_value(s);
        if (x > prev + 1e-6)
            return 0;
        prev = x;
    }
    return 1;
}

static void check_reply(const qd_proto *p, const char *line, size_t len, const char *out,
                        size_t olen)
{
    if (!out || olen == 0 || out[olen - 1] != '\n')
        die("reply is not one line ending in a newline", line, len, out);
    if (memchr(out, '\n', olen - 1))
        die("reply holds more than one line", line, len, out);
    if (strlen(out) != olen)
        die("reply length is wrong or holds a NUL", line, len, out);
    json_error_t je;
    json_t *r = json_loadb(out, olen - 1, JSON_REJECT_DUPLICATES, &je);
    if (!r || !json_is_object(r))
        die("reply is not a JSON object", line, len, out);
    json_t *ok = json_object_get(r, "ok");
    if (!json_is_boolean(ok))
        die("reply has no boolean \"ok\"", line, len, out);
    json_t *err = json_object_get(r, "error");
    if (json_is_true(ok) == (err != NULL))
        die("\"ok\" and \"error\" disagree", line, len, out);
    if (err) {
        const char *code = json_string_value(json_object_get(err, "code"));
        int known = 0;
        for (int c = 1; code && c < QD_CODE_COUNT; c++)
            known |= strcmp(code, qd_proto_code_name(c)) == 0;
        if (!known || !json_is_string(json_object_get(err, "message")))
            die("error without a known code and a message", line, len, out);
    }
    json_t *res = json_object_get(r, "results");
    if (res) {
        int batch = json_array_size(res) > 0 && json_is_array(json_array_get(res, 0));
        size_t i;
        json_t *a;
        if (batch) {
            json_array_foreach(res, i, a) {
                if (!results_ok(a))
                    die("bad result list in a batch", line, len, out);
            }
        } else if (!results_ok(res)) {
            die("bad result list", line, len, out);
        }
    }
    json_t *dup = json_object_get(r, "duplicates");
    if (dup && !results_ok(dup))
        die("bad duplicate list", line, len, out);

    /* The tag: echoed whenever the request was a JSON object the handler parsed. */
    size_t eff = (len > 0 && line[len - 1] == '\r') ? len - 1 : len;
    if (eff <= p->lim.max_line) {
        json_t *req = json_loadb(line, eff, JSON_REJECT_DUPLICATES, &je);
        json_t *tag = json_is_object(req) ? json_object_get(req, "tag") : NULL;
        if (tag) {
            json_t *back = json_object_get(r, "tag");
            char *a = canon(tag), *b = back ? canon(back) : NULL;
            int same = a && b && strcmp(a, b) == 0;
            free(a);
            free(b);
            if (!same)
                die("the tag did not come back", line, len, out);
        }
        json_decref(req);
    }
    json_decref(r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    setup();
    qd_memidx *mi;
    if (qd_memidx_new(model, MAX_ROWS, &mi))
        abort();
    qd_backend be;
    qd_memidx_backend(mi, &be);
    seed(&be);
    qd_proto p = {.be = &be, .search_pad = 4};
    qd_proto_limits_default(&p.lim);
    p.lim.max_line = 8192;
    p.lim.max_text = 2048;
    p.lim.max_batch = 16;
    p.lim.max_id = 64;
    p.lim.max_reply = 16384;

    const char *s = (const char *)data, *end = s + size;
    for (int i = 0; i < MAX_LINES && s < end; i++) {
        const char *nl = memchr(s, '\n', (size_t)(end - s));
        size_t len = nl ? (size_t)(nl - s) : (size_t)(end - s);
        /* An exact-size copy, so that a read past the line's end is caught. */
        char *line = malloc(len ? len : 1);
        if (!line)
            abort();
        memcpy(line, s, len);
        qd_peer peer = {.known = 1, .uid = 1000, .gid = 1000, .pid = 1, .may_write = i % 5 != 4};
        char *out = NULL;
        size_t olen = 0;
        int rc = qd_proto_handle(&p, ws, line, len, &peer, &out, &olen);
        if (rc != 0)
            die("qd_proto_handle failed", line, len, NULL);
        check_reply(&p, line, len, out, olen);
        qd_free(out);
        free(line);
        s += len + (nl ? 1 : 0);
    }
    qd_memidx_free(mi);
    return 0;
}
