/*
 * test_proto.c - the daemon's request handler (proto.h) against a real store on a
 * temporary database (store.h through backend.h; built again as test_proto_memidx
 * against the in-memory index of --ephemeral, memidx.h, with the same assertions) and
 * the fixture model: parsing and every error code, each op's reply,
 * batched runs equal to one-by-one runs, group commits, write permission, escaping,
 * reply limits, random and mutated input, and allocation failures on every path.
 *
 * The fixture model's vocabulary is "w2".."w39", so texts like "w3 w17 w5" have
 * distinct vectors; a text without such words still has tokens (unknown words), but
 * one of only spaces has none.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qdup/common.h"
#include "qdup/proto.h"
#ifdef QT_PROTO_MEMIDX
#include "qdup/memidx.h"
#else
#include <sqlite3.h>

#include "qdup/ann.h"
#include "qdup/backend.h"
#endif
#include "testutil.h"

static qd_model *model;
static qd_backend be;

#ifdef QT_PROTO_MEMIDX
static qd_memidx *mi;

/* A fresh, empty index behind be. */
static void backend_open(void)
{
    assert_int_equal(qd_memidx_new(model, 0, &mi), 0);
    qd_memidx_backend(mi, &be);
}

static void backend_close(void)
{
    qd_memidx_free(mi);
    mi = NULL;
}

/* Stores an item whatever its text (the in-memory index checks nothing). */
static int store_unchecked(const qd_store_item *it)
{
    qd_store_result res;
    return be.add(be.ctx, it, 1, 0, &res);
}
#else
static qd_store *store;

/* A fresh, empty store (Flat, the fixture model) behind be. */
static void backend_open(void)
{
    char err[QD_ERRMSG_MAX];
    const char *db = qt_path(qt_tmp_dir(), "proto.db");
    qd_store_discard(db);
    qd_store_opts o = {.model_path = qt_path(qt_fixtures_dir(), "fwd_plain.qdm"),
                       .index_spec = "Flat", .threads = 1};
    if (qd_store_create(db, &o, &store, err, sizeof err))
        fail_msg("%s", err);
    qd_backend_store(store, &be);
    /* As qdup-daemon sets it for a Flat index (daemon/main.c): every search through
     * the matrix product, so one query alone and in a batch are computed alike. */
    qd_ann_set_blas_threshold(1);
}

static void backend_close(void)
{
    qd_store_close(store);
    store = NULL;
    qd_store_discard(qt_path(qt_tmp_dir(), "proto.db"));
}

/* Stores an item whatever its text, as a store written before today's checks may hold
 * it: the item goes in with a placeholder text, which is then replaced in the database
 * behind the closed store's back, and the store opened again. */
static int store_unchecked(const qd_store_item *it)
{
    qd_store_item ph = *it;
    ph.text = "placeholder";
    ph.text_len = strlen(ph.text);
    qd_store_result res;
    int rc = be.add(be.ctx, &ph, 1, 0, &res);
    if (rc)
        return rc;
    const char *db = qt_path(qt_tmp_dir(), "proto.db");
    qd_store_close(store);
    store = NULL;
    sqlite3 *h = NULL;
    sqlite3_stmt *st = NULL;
    if (sqlite3_open(db, &h) != SQLITE_OK ||
        sqlite3_prepare_v2(h, "UPDATE questions SET text = ?1 WHERE ext_id = ?2", -1, &st,
                           NULL) != SQLITE_OK)
        fail_msg("%s: %s", db, sqlite3_errmsg(h));
    sqlite3_bind_text(st, 1, it->text, (int)it->text_len, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, it->ext_id, (int)it->ext_id_len, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE || sqlite3_changes(h) != 1)
        fail_msg("%s: %s", db, sqlite3_errmsg(h));
    sqlite3_finalize(st);
    sqlite3_close(h);
    char err[QD_ERRMSG_MAX];
    qd_store_opts o = {.model_path = qt_path(qt_fixtures_dir(), "fwd_plain.qdm"), .threads = 1};
    if (qd_store_open(db, &o, &store, err, sizeof err))
        fail_msg("%s", err);
    qd_backend_store(store, &be);
    return 0;
}
#endif
static qd_proto proto;
static qd_enc_ws *ws;
static const qd_peer writer = {1, 1000, 1000, 42, 1};
static const qd_peer reader = {1, 1234, 1234, 43, 0};

static int setup(void **state)
{
    (void)state;
    char err[QD_ERRMSG_MAX];
    if (qd_model_load(qt_path(qt_fixtures_dir(), "fwd_plain.qdm"), &model, err, sizeof err))
        fail_msg("%s", err);
    backend_open();
    memset(&proto, 0, sizeof proto);
    proto.be = &be;
    qd_proto_limits_default(&proto.lim);
    ws = qd_enc_ws_new();
    assert_non_null(ws);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    qd_enc_ws_free(ws);
    backend_close();
    qd_model_free(model);
    return 0;
}

/* Handles one line as `peer` and returns the parsed reply, checking that it is one
 * line of JSON holding an object with a boolean "ok". */
static json_t *handle_as(const qd_peer *peer, const char *line, size_t len)
{
    char *out = NULL;
    size_t olen = 0;
    assert_int_equal(qd_proto_handle(&proto, ws, line, len, peer, &out, &olen), 0);
    assert_non_null(out);
    assert_true(olen >= 2);
    assert_int_equal(out[olen - 1], '\n');
    assert_null(memchr(out, '\n', olen - 1));
    json_error_t je;
    json_t *j = json_loadb(out, olen - 1, 0, &je);
    if (!j)
        fail_msg("reply is not JSON (%s): %.*s", je.text, (int)olen, out);
    assert_true(json_is_object(j));
    assert_true(json_is_boolean(json_object_get(j, "ok")));
    qd_free(out);
    return j;
}

static json_t *handle(const char *line)
{
    return handle_as(&writer, line, strlen(line));
}

static const char *err_code(json_t *j)
{
    return json_string_value(json_object_get(json_object_get(j, "error"), "code"));
}

/* Asserts that line[0..len) gets the error `code`. */
static void expect_error_n(const char *line, size_t len, const char *code)
{
    json_t *j = handle_as(&writer, line, len);
    if (json_is_true(json_object_get(j, "ok")) || !err_code(j) || strcmp(err_code(j), code))
        fail_msg("%.*s: expected %s, got %s", (int)len, line, code,
                 err_code(j) ? err_code(j) : "ok");
    assert_non_null(json_string_value(json_object_get(json_object_get(j, "error"), "message")));
    json_decref(j);
}

static void expect_error(const char *line, const char *code)
{
    expect_error_n(line, strlen(line), code);
}

static void expect_ok(const char *line)
{
    json_t *j = handle(line);
    if (!json_is_true(json_object_get(j, "ok")))
        fail_msg("%s: expected ok, got %s: %s", line, err_code(j),
                 json_string_value(json_object_get(json_object_get(j, "error"), "message")));
    json_decref(j);
}

/* A fresh, empty index for tests that count what is stored. */
static void reset_index(void)
{
    backend_close();
    backend_open();
}

/* --- parsing -------------------------------------------------------------------------- */

static void test_error_codes(void **state)
{
    (void)state;
    static const struct {
        const char *line;
        const char *code;
    } cases[] = {
        {"garbage", "bad_json"},
        {"{\"op\":\"ping\"", "bad_json"},
        {"{\"op\":\"ping\"} trailing", "bad_json"},
        {"{\"op\":\"ping\",\"op\":\"ping\"}", "bad_json"},
        {"{\"op\":\"query\",\"text\":\"a\\u0000b\"}", "bad_json"},
        {"\"just a string\"", "bad_json"},
        {"[1,2,3]", "bad_request"},
        {"{}", "bad_request"},
        {"{\"op\":7}", "bad_request"},
        {"{\"op\":null}", "bad_request"},
        {"{\"op\":\"nope\"}", "unknown_op"},
        {"{\"op\":\"QUERY\",\"text\":\"w3\"}", "unknown_op"},
        {"{\"op\":\"query\"}", "bad_request"},
        {"{\"op\":\"query\",\"text\":5}", "bad_request"},
        {"{\"op\":\"query\",\"text\":\"\"}", "bad_request"},
        {"{\"op\":\"query\",\"text\":\"w3\",\"k\":\"10\"}", "bad_request"},
        {"{\"op\":\"query\",\"text\":\"w3\",\"k\":10.5}", "bad_request"},
        {"{\"op\":\"query\",\"text\":\"w3\",\"k\":0}", "bad_request"},
        {"{\"op\":\"query\",\"text\":\"w3\",\"k\":-3}", "bad_request"},
        {"{\"op\":\"query\",\"text\":\"w3\",\"k\":1001}", "bad_request"},
        {"{\"op\":\"query\",\"text\":\"w3\",\"k\":9223372036854775807}", "bad_request"},
        {"{\"op\":\"query\",\"text\":\"w3\",\"k\":99999999999999999999999}", "bad_json"},
        {"{\"op\":\"query\",\"text\":\"w3\",\"min_score\":1.5}", "bad_request"},
        {"{\"op\":\"query\",\"text\":\"w3\",\"min_score\":\"0.5\"}", "bad_request"},
        {"{\"op\":\"query\",\"text\":\"w3\",\"texts\":[\"w4\"]}", "bad_request"},
        {"{\"op\":\"query\",\"texts\":[]}", "bad_request"},
        {"{\"op\":\"query\",\"texts\":\"w3\"}", "bad_request"},
        {"{\"op\":\"query\",\"texts\":[\"w3\",7]}", "bad_request"},
        {"{\"op\":\"query\",\"texts\":[\"w3\",\"\"]}", "bad_request"},
        {"{\"op\":\"query\",\"text\":\"w3\",\"min_scor\":0.5}", "bad_request"},
        {"{\"op\":\"add\",\"text\":\"w3\"}", "bad_request"},
        {"{\"op\":\"add\",\"id\":\"x\"}", "bad_request"},
        {"{\"op\":\"add\",\"id\":17.5,\"text\":\"w3\"}", "bad_request"},
        {"{\"op\":\"add\",\"id\":\"ws\",\"text\":\" \\t \"}", "bad_request"},
        {"{\"op\":\"query\",\"texts\":[\"w3\",\"  \"]}", "bad_request"},
        {"{\"op\":\"check\",\"text\":\"w3\"}", "bad_request"},
        {"{\"op\":\"check\",\"id\":\"c\",\"text\":\"w3\",\"min_p\":2}", "bad_request"},
        {"{\"op\":\"query\",\"text\":\"w3\",\"rank\":\"bm25\"}", "bad_request"},
        {"{\"op\":\"add\",\"id\":\"\",\"text\":\"w3\"}", "bad_request"},
        {"{\"op\":\"add\",\"id\":\"a\\nb\",\"text\":\"w3\"}", "bad_request"},
        {"{\"op\":\"add\",\"id\":\"x\",\"text\":\"w3\",\"k\":3}", "bad_request"},
        {"{\"op\":\"remove\"}", "bad_request"},
        {"{\"op\":\"get\",\"id\":[\"x\"]}", "bad_request"},
        {"{\"op\":\"check\",\"id\":\"x\",\"text\":\"w3\",\"store\":\"yes\"}", "bad_request"},
        {"{\"op\":\"ping\",\"extra\":1}", "bad_request"},
        {"{\"op\":\"stats\",\"k\":1}", "bad_request"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        expect_error(cases[i].line, cases[i].code);

    /* Bytes that are not UTF-8 never reach a reply: jansson refuses them. */
    const char bad_utf8[] = "{\"op\":\"query\",\"text\":\"\xff\xfe\"}";
    expect_error_n(bad_utf8, sizeof bad_utf8 - 1, "bad_json");
    /* A NUL byte inside the line. */
    const char nul[] = "{\"op\":\"ping\"}\0junk";
    expect_error_n(nul, sizeof nul - 1, "bad_json");
}

static void test_limits(void **state)
{
    (void)state;
    qd_proto_limits saved = proto.lim;
    proto.lim.max_text = 10;
    proto.lim.max_batch = 2;
    proto.lim.max_id = 4;
    proto.lim.max_line = 100;
    expect_error("{\"op\":\"query\",\"text\":\"w3 w4 w5 w6\"}", "too_large");
    expect_ok("{\"op\":\"query\",\"text\":\"w3 w4 w5\"}");
    expect_error("{\"op\":\"query\",\"texts\":[\"w3\",\"w4\",\"w5\"]}", "too_large");
    expect_error("{\"op\":\"add\",\"id\":\"abcde\",\"text\":\"w3\"}", "bad_request");
    char line[200];
    int n = snprintf(line, sizeof line, "{\"op\":\"ping\",\"tag\":\"%080d\"}", 0);
    expect_error_n(line, (size_t)n, "too_large");
    proto.lim.max_line = 1000;
    /* The same line under the limit is fine, and a trailing CR is not counted. */
    line[n] = '\r';
    json_t *j = handle_as(&writer, line, (size_t)n + 1);
    assert_true(json_is_true(json_object_get(j, "ok")));
    json_decref(j);
    proto.lim = saved;
}

/* --- each op ------------------------------------------------------------------------ */

static void test_ops(void **state)
{
    (void)state;
    reset_index();
    json_t *j = handle("{\"op\":\"ping\",\"tag\":{\"n\":[1,2]}}");
    assert_true(json_is_true(json_object_get(j, "ok")));
    json_t *want = json_pack("{s:[i,i]}", "n", 1, 2);
    assert_true(json_equal(json_object_get(j, "tag"), want));
    json_decref(want);
    json_decref(j);

    expect_ok("{\"op\":\"add\",\"id\":\"a\",\"text\":\"w3 w17 w5 ?\"}");
    expect_ok("{\"op\":\"add\",\"id\":\"b\",\"text\":\"w4 w9 w22\"}");
    expect_ok("{\"op\":\"add\",\"id\":\"c\",\"text\":\"w30 w31 w32 w33\"}");
    expect_error("{\"op\":\"add\",\"id\":\"a\",\"text\":\"w8 w8\"}", "duplicate_id");
    /* The same text under another id is a repost: stored. */
    expect_ok("{\"op\":\"add\",\"id\":\"z\",\"text\":\"w4 w9 w22\"}");
    expect_ok("{\"op\":\"remove\",\"id\":\"z\"}");
    const char blank[] = "{\"op\":\"add\",\"id\":\"e\",\"text\":\"   \"}";
    expect_error(blank, "bad_request");

    /* get */
    j = handle("{\"op\":\"get\",\"id\":\"b\",\"tag\":\"t\"}");
    assert_true(json_is_true(json_object_get(j, "ok")));
    assert_string_equal(json_string_value(json_object_get(j, "tag")), "t");
    assert_string_equal(json_string_value(json_object_get(j, "id")), "b");
    assert_string_equal(json_string_value(json_object_get(j, "text")), "w4 w9 w22");
    assert_true(json_integer_value(json_object_get(j, "created")) > 1600000000);
    json_decref(j);
    expect_error("{\"op\":\"get\",\"id\":\"nope\"}", "not_found");

    /* query: a stored text finds itself first, with score 1; k bounds the list;
     * scores are best first. */
    j = handle("{\"op\":\"query\",\"text\":\"w3 w17 w5 ?\",\"k\":2}");
    json_t *res = json_object_get(j, "results");
    assert_int_equal(json_array_size(res), 2);
    json_t *h0 = json_array_get(res, 0), *h1 = json_array_get(res, 1);
    assert_string_equal(json_string_value(json_object_get(h0, "id")), "a");
    assert_string_equal(json_string_value(json_object_get(h0, "text")), "w3 w17 w5 ?");
    qt_assert_near(json_number_value(json_object_get(h0, "score")), 1.0, 1e-5);
    assert_true(json_number_value(json_object_get(h1, "score")) <=
                json_number_value(json_object_get(h0, "score")));
    json_decref(j);

    /* min_score bounds the list: only the question itself is above 0.999. */
    j = handle("{\"op\":\"query\",\"text\":\"w3 w17 w5 ?\",\"k\":10,\"min_score\":0.999}");
    assert_int_equal(json_array_size(json_object_get(j, "results")), 1);
    json_decref(j);

    /* batch: one list per text, in order. */
    j = handle("{\"op\":\"query\",\"texts\":[\"w4 w9 w22\",\"w30 w31 w32 w33\"],\"k\":1}");
    res = json_object_get(j, "results");
    assert_int_equal(json_array_size(res), 2);
    assert_string_equal(
        json_string_value(json_object_get(json_array_get(json_array_get(res, 0), 0), "id")), "b");
    assert_string_equal(
        json_string_value(json_object_get(json_array_get(json_array_get(res, 1), 0), "id")), "c");
    json_decref(j);

    /* A text of white space only is refused like an empty one. */
    expect_error("{\"op\":\"query\",\"text\":\" \"}", "bad_request");

    /* check without store: finds the near-duplicate, stores nothing. */
    j = handle("{\"op\":\"check\",\"id\":\"d\",\"text\":\"w3 w17 w5 ?\",\"store\":false,"
               "\"min_score\":0.99}");
    assert_true(json_is_true(json_object_get(j, "ok")));
    assert_int_equal(json_array_size(json_object_get(j, "duplicates")), 1);
    assert_true(json_is_false(json_object_get(j, "stored")));
    json_decref(j);
    expect_error("{\"op\":\"get\",\"id\":\"d\"}", "not_found");

    /* check with store: duplicates first, then stored; its own id is never a duplicate
     * of itself when checked again. */
    j = handle("{\"op\":\"check\",\"id\":\"d\",\"text\":\"w3 w17 w6\",\"min_score\":-1,\"k\":5}");
    assert_true(json_is_true(json_object_get(j, "stored")));
    assert_int_equal(json_array_size(json_object_get(j, "duplicates")), 3);
    json_decref(j);
    expect_ok("{\"op\":\"get\",\"id\":\"d\"}");
    j = handle("{\"op\":\"check\",\"id\":\"d\",\"text\":\"w3 w17 w6\",\"min_score\":-1,"
               "\"store\":false}");
    json_t *d = json_object_get(j, "duplicates");
    for (size_t i = 0; i < json_array_size(d); i++)
        assert_string_not_equal(json_string_value(json_object_get(json_array_get(d, i), "id")),
                                "d");
    json_decref(j);
    /* check of an id already stored (with store) is an error. */
    expect_error("{\"op\":\"check\",\"id\":\"d\",\"text\":\"w20 w21\"}", "duplicate_id");
    /* Same text as a stored post (a repost): stored under its own id, the stored one
     * reported first. */
    j = handle("{\"op\":\"check\",\"id\":\"f\",\"text\":\"w30 w31 w32 w33\"}");
    assert_true(json_is_true(json_object_get(j, "ok")));
    assert_true(json_is_true(json_object_get(j, "stored")));
    assert_string_equal(json_string_value(json_object_get(
                            json_array_get(json_object_get(j, "duplicates"), 0), "id")), "c");
    json_decref(j);
    expect_ok("{\"op\":\"get\",\"id\":\"f\"}");
    /* Ids may be whole numbers, kept as their decimal text; check without storing
     * needs no id. */
    expect_ok("{\"op\":\"add\",\"id\":4711,\"text\":\"w40 w41\"}");
    j = handle("{\"op\":\"get\",\"id\":\"4711\"}");
    assert_string_equal(json_string_value(json_object_get(j, "id")), "4711");
    json_decref(j);
    j = handle("{\"op\":\"check\",\"text\":\"w40 w41\",\"store\":false}");
    assert_true(json_is_true(json_object_get(j, "ok")));
    assert_true(json_is_false(json_object_get(j, "stored")));
    json_decref(j);

    /* remove */
    expect_ok("{\"op\":\"remove\",\"id\":\"a\"}");
    expect_error("{\"op\":\"remove\",\"id\":\"a\"}", "not_found");
    expect_error("{\"op\":\"get\",\"id\":\"a\"}", "not_found");
    j = handle("{\"op\":\"query\",\"text\":\"w3 w17 w5 ?\",\"k\":10}");
    res = json_object_get(j, "results");
    for (size_t i = 0; i < json_array_size(res); i++)
        assert_string_not_equal(
            json_string_value(json_object_get(json_array_get(res, i), "id")), "a");
    json_decref(j);
    /* A removed id may be used again. */
    expect_ok("{\"op\":\"add\",\"id\":\"a\",\"text\":\"w3 w17 w5 ?\"}");

    /* stats without server figures: the store's part. */
    j = handle("{\"op\":\"stats\"}");
    /* 6 with the repost f and 4711; tombstones 2 with z. */
    json_t *st = json_object_get(j, "stats");
    assert_int_equal(json_integer_value(json_object_get(st, "questions")), 6);
    assert_int_equal(json_integer_value(json_object_get(st, "tombstones")), 2);
    assert_string_equal(json_string_value(json_object_get(json_object_get(st, "model"),
                                                          "fingerprint")),
                        qd_model_fingerprint(model));
    assert_int_equal(json_integer_value(json_object_get(json_object_get(st, "model"), "dim")),
                     qd_model_dim(model));
    json_decref(j);
}

/* Stats with the server's figures attached, as the server does. */
static void test_stats_server_part(void **state)
{
    (void)state;
    qd_req *r;
    assert_int_equal(qd_proto_parse(&proto, "{\"op\":\"stats\"}", 14, &reader, &r), 0);
    assert_int_equal(r->cls, QD_REQ_READ);
    r->stats = qd_calloc(1, sizeof *r->stats);
    r->stats->requests[QD_OP_QUERY] = 7;
    r->stats->errors[QD_CODE_BUSY] = 3;
    r->stats->clients = 2;
    r->stats->clients_paused = 1;
    r->stats->cancelled = 5;
    r->stats->lat_search = qd_mallocarray(4, sizeof(double));
    double lat[4] = {4, 1, 3, 2};
    memcpy(r->stats->lat_search, lat, sizeof lat);
    r->stats->n_search = 4;
    qd_proto_run(&proto, ws, &r, 1);
    char *out;
    size_t len;
    assert_int_equal(qd_proto_reply(&proto, r, &out, &len), 0);
    qd_proto_req_free(&proto, r);
    json_t *j = json_loadb(out, len, 0, NULL);
    qd_free(out);
    json_t *st = json_object_get(j, "stats");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(st, "requests"), "query")), 7);
    assert_int_equal(json_integer_value(json_object_get(st, "requests_total")), 7);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(st, "errors"), "busy")), 3);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(st, "clients"), "connected")), 2);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(st, "clients"), "paused")), 1);
    assert_int_equal(json_integer_value(json_object_get(st, "cancelled")), 5);
    json_t *q = json_object_get(json_object_get(st, "latency_ms"), "read");
    assert_int_equal(json_integer_value(json_object_get(q, "n")), 4);
    qt_assert_near(json_number_value(json_object_get(q, "p50")), 2.0, 1e-9);
    qt_assert_near(json_number_value(json_object_get(q, "max")), 4.0, 1e-9);
    json_decref(j);
}

static void test_latency_percentiles(void **state)
{
    (void)state;
    double v[100];
    for (int i = 0; i < 100; i++)
        v[i] = 100 - i; /* 100 .. 1, unsorted */
    qd_proto_lat l;
    qd_proto_latency(v, 100, &l);
    assert_int_equal(l.n, 100);
    qt_assert_near(l.p50, 50, 0);
    qt_assert_near(l.p90, 90, 0);
    qt_assert_near(l.p99, 99, 0);
    qt_assert_near(l.max, 100, 0);
    qd_proto_latency(v, 0, &l);
    assert_int_equal(l.n, 0);
    double one = 7;
    qd_proto_latency(&one, 1, &l);
    qt_assert_near(l.p50, 7, 0);
    qt_assert_near(l.p99, 7, 0);
}

/* --- permissions -------------------------------------------------------------------- */

/* reload with nothing staged: answered, nothing switched (the real store); the
 * in-memory index has no model to switch to. Fields are refused like any op's. */
static void test_reload_nothing_staged(void **state)
{
    (void)state;
    json_t *j = handle("{\"op\":\"reload\",\"tag\":7}");
#ifdef QT_PROTO_MEMIDX
    assert_string_equal(err_code(j), "unavailable");
#else
    assert_true(json_is_true(json_object_get(j, "ok")));
    assert_true(json_is_false(json_object_get(j, "switched")));
    assert_non_null(json_object_get(j, "reason"));
#endif
    assert_int_equal(json_integer_value(json_object_get(j, "tag")), 7);
    json_decref(j);
    expect_error("{\"op\":\"reload\",\"model\":\"x.qdm\"}", "bad_request");
}

static void test_forbidden(void **state)
{
    (void)state;
    reset_index();
    static const char *const writes[] = {
        "{\"op\":\"add\",\"id\":\"p\",\"text\":\"w5 w6\"}",
        "{\"op\":\"remove\",\"id\":\"p\"}",
        "{\"op\":\"check\",\"id\":\"p\",\"text\":\"w5 w6\"}",
        "{\"op\":\"check\",\"id\":\"p\",\"text\":\"w5 w6\",\"store\":true}",
        "{\"op\":\"reload\"}",
    };
    for (size_t i = 0; i < sizeof writes / sizeof writes[0]; i++) {
        json_t *j = handle_as(&reader, writes[i], strlen(writes[i]));
        assert_string_equal(err_code(j), "forbidden");
        const char *msg =
            json_string_value(json_object_get(json_object_get(j, "error"), "message"));
        assert_non_null(strstr(msg, "uid 1234"));
        json_decref(j);
    }
    /* Nothing was stored. */
    expect_error("{\"op\":\"get\",\"id\":\"p\"}", "not_found");
    /* Reads stay open. */
    static const char *const reads[] = {
        "{\"op\":\"query\",\"text\":\"w5 w6\"}",
        "{\"op\":\"check\",\"id\":\"p\",\"text\":\"w5 w6\",\"store\":false}",
        "{\"op\":\"stats\"}",
        "{\"op\":\"ping\"}",
    };
    for (size_t i = 0; i < sizeof reads / sizeof reads[0]; i++) {
        json_t *j = handle_as(&reader, reads[i], strlen(reads[i]));
        assert_true(json_is_true(json_object_get(j, "ok")));
        json_decref(j);
    }
    /* No peer at all is treated as one that may not write. */
    json_t *j = handle_as(NULL, writes[0], strlen(writes[0]));
    assert_string_equal(err_code(j), "forbidden");
    json_decref(j);
}

/* A backend whose writes fail as the machine's fault (a full disk): the add and
 * remove of the real index, replaced by these. */
static int add_unavailable(void *ctx, const qd_store_item *items, size_t n, int replace,
                           qd_store_result *res)
{
    (void)ctx, (void)items, (void)n, (void)replace, (void)res;
    return QD_ERR_UNAVAILABLE;
}

static int remove_unavailable(void *ctx, const char *ext_id, size_t ext_id_len)
{
    (void)ctx, (void)ext_id, (void)ext_id_len;
    return QD_ERR_UNAVAILABLE;
}

static void test_unavailable(void **state)
{
    (void)state;
    reset_index();
    expect_ok("{\"op\":\"add\",\"id\":\"p\",\"text\":\"w5 w6\"}");
    qd_backend saved = be;
    be.add = add_unavailable;
    be.remove = remove_unavailable;
    static const char *const writes[] = {
        "{\"op\":\"add\",\"id\":\"q\",\"text\":\"w7 w8\"}",
        "{\"op\":\"remove\",\"id\":\"p\"}",
        "{\"op\":\"check\",\"id\":\"q\",\"text\":\"w7 w8\"}",
    };
    for (size_t i = 0; i < sizeof writes / sizeof writes[0]; i++) {
        json_t *j = handle(writes[i]);
        assert_string_equal(err_code(j), "unavailable");
        const char *msg =
            json_string_value(json_object_get(json_object_get(j, "error"), "message"));
        assert_non_null(strstr(msg, "retry later"));
        json_decref(j);
    }
    /* Reads go on, and nothing was written. */
    expect_ok("{\"op\":\"get\",\"id\":\"p\"}");
    expect_ok("{\"op\":\"query\",\"text\":\"w5 w6\"}");
    be = saved;
    expect_error("{\"op\":\"get\",\"id\":\"q\"}", "not_found");
    expect_ok("{\"op\":\"add\",\"id\":\"q\",\"text\":\"w7 w8\"}");
}

/* --- batched runs ------------------------------------------------------------------- */

static void fill_index(size_t n)
{
    reset_index();
    uint64_t rng = 7;
    for (size_t i = 0; i < n; i++) {
        char line[256];
        int len = snprintf(line, sizeof line, "{\"op\":\"add\",\"id\":\"q%zu\",\"text\":\"w%d w%d w%d w%d\"}",
                           i, 2 + (int)(qt_rand(&rng) % 38), 2 + (int)(qt_rand(&rng) % 38),
                           2 + (int)(qt_rand(&rng) % 38), (int)i % 38 + 2);
        json_t *j = handle_as(&writer, line, (size_t)len);
        json_decref(j); /* a duplicate text now and then is fine */
    }
}

static char *run_alone(const char *line)
{
    char *out;
    size_t len;
    assert_int_equal(qd_proto_handle(&proto, ws, line, strlen(line), &writer, &out, &len), 0);
    return out;
}

/* Queries of mixed k and min_score run as one batch (with and without padding) give
 * exactly the replies they get one at a time. */
static void test_batch_equals_single(void **state)
{
    (void)state;
    fill_index(200);
    static const char *const lines[] = {
        "{\"op\":\"query\",\"text\":\"w3 w4 w5\",\"k\":3,\"tag\":1}",
        "{\"op\":\"query\",\"text\":\"w10 w11\",\"k\":5}",
        "{\"op\":\"query\",\"texts\":[\"w7\",\"w8 w9\",\"w20 w21 w22\"],\"k\":3}",
        "{\"op\":\"query\",\"text\":\"w30\",\"k\":3,\"min_score\":0.5}",
        "{\"op\":\"get\",\"id\":\"q5\"}",
        "{\"op\":\"query\",\"text\":\"  \",\"k\":3}",
        "{\"op\":\"query\",\"text\":\"w3 w4 w5\",\"k\":3}",
    };
    size_t n = sizeof lines / sizeof lines[0];
    char *alone[16];
    for (size_t i = 0; i < n; i++)
        alone[i] = run_alone(lines[i]);
    for (size_t pad = 0; pad <= 20; pad += 20) {
        proto.search_pad = pad;
        qd_req *reqs[16];
        for (size_t i = 0; i < n; i++)
            assert_int_equal(qd_proto_parse(&proto, lines[i], strlen(lines[i]), &writer, &reqs[i]), 0);
        qd_proto_run(&proto, ws, reqs, n);
        for (size_t i = 0; i < n; i++) {
            char *out;
            size_t len;
            assert_int_equal(qd_proto_reply(&proto, reqs[i], &out, &len), 0);
            if (strcmp(out, alone[i]) != 0)
                fail_msg("pad %zu, request %zu:\n batch: %s alone: %s", pad, i, out, alone[i]);
            qd_free(out);
            qd_proto_req_free(&proto, reqs[i]);
        }
    }
    proto.search_pad = 0;
    for (size_t i = 0; i < n; i++)
        qd_free(alone[i]);
}

/* Consecutive adds commit together; each still gets its own outcome, the first of two
 * items with one id wins, and a bad item does not sink the others. */
static void test_group_add(void **state)
{
    (void)state;
    reset_index();
    static const struct {
        const char *line;
        const char *code; /* NULL: ok */
    } cases[] = {
        {"{\"op\":\"add\",\"id\":\"g1\",\"text\":\"w2 w3\"}", NULL},
        {"{\"op\":\"add\",\"id\":\"g2\",\"text\":\"w4 w5\"}", NULL},
        {"{\"op\":\"add\",\"id\":\"g1\",\"text\":\"w6 w7\"}", "duplicate_id"},
        {"{\"op\":\"add\",\"id\":\"g3\",\"text\":\"\\u00ad\"}", "bad_request"},
        {"{\"op\":\"add\",\"id\":\"g4\",\"text\":\"w4 w5\"}", NULL}, /* a repost */
        {"{\"op\":\"add\",\"id\":\"g5\",\"text\":\"w8 w9\"}", NULL},
    };
    size_t n = sizeof cases / sizeof cases[0];
    qd_req *reqs[8];
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(qd_proto_parse(&proto, cases[i].line, strlen(cases[i].line), &writer,
                                        &reqs[i]), 0);
        assert_int_equal(reqs[i]->cls, QD_REQ_WRITE);
    }
    qd_proto_run(&proto, ws, reqs, n);
    for (size_t i = 0; i < n; i++) {
        char *out;
        size_t len;
        assert_int_equal(qd_proto_reply(&proto, reqs[i], &out, &len), 0);
        json_t *j = json_loadb(out, len, 0, NULL);
        if (cases[i].code)
            assert_string_equal(err_code(j), cases[i].code);
        else
            assert_true(json_is_true(json_object_get(j, "ok")));
        json_decref(j);
        qd_free(out);
        qd_proto_req_free(&proto, reqs[i]);
    }
    json_t *j = handle("{\"op\":\"get\",\"id\":\"g1\"}");
    assert_string_equal(json_string_value(json_object_get(j, "text")), "w2 w3");
    json_decref(j);
    j = handle("{\"op\":\"stats\"}");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "stats"), "questions")), 4);
    json_decref(j);
}

/* --- output -------------------------------------------------------------------------- */

/* Whatever the client sends or the store holds, replies are valid JSON: tags come back
 * equal, and stored bytes that are not UTF-8 come back repaired. */
static void test_escaping(void **state)
{
    (void)state;
    reset_index();
    const char line[] = "{\"op\":\"ping\",\"tag\":\"q\\\"uote\\nnew\\u2028line\\\\ \\u00e9 \\ud83d\\ude00\"}";
    json_t *j = handle(line);
    assert_string_equal(json_string_value(json_object_get(j, "tag")),
                        "q\"uote\nnew\xe2\x80\xa8line\\ \xc3\xa9 \xf0\x9f\x98\x80");
    json_decref(j);

    /* A stored text with invalid bytes (what an older store may hold). */
    float vec[64] = {0};
    assert_true(qd_model_dim(model) <= 64);
    vec[0] = 1;
    const char raw[] = "bad \xff\xfe bytes \xe2\x82";
    qd_store_item it = {"raw", 3, raw, sizeof raw - 1, vec};
    assert_int_equal(store_unchecked(&it), 0);
    j = handle("{\"op\":\"get\",\"id\":\"raw\"}");
    assert_string_equal(json_string_value(json_object_get(j, "text")),
                        "bad \xef\xbf\xbd\xef\xbf\xbd bytes \xef\xbf\xbd");
    json_decref(j);
}

static void test_reply_limit(void **state)
{
    (void)state;
    fill_index(50);
    size_t saved = proto.lim.max_reply;
    proto.lim.max_reply = 400;
    json_t *j = handle("{\"op\":\"query\",\"text\":\"w3 w4\",\"k\":50,\"tag\":\"big\"}");
    assert_string_equal(err_code(j), "too_large");
    assert_string_equal(json_string_value(json_object_get(j, "tag")), "big");
    json_decref(j);
    expect_ok("{\"op\":\"query\",\"text\":\"w3 w4\",\"k\":1}");
    proto.lim.max_reply = saved;
}

/* --- hostile input ----------------------------------------------------------------------- */

/* Random bytes and random mutations of valid requests: every line gets a well-formed
 * reply (checked by handle_as), and the process survives (and, under ASan, stays clean). */
static void test_random_lines(void **state)
{
    (void)state;
    fill_index(30);
    static const char *const seeds[] = {
        "{\"op\":\"query\",\"text\":\"w3 w4 w5\",\"k\":3,\"min_score\":0.1,\"tag\":[1]}",
        "{\"op\":\"add\",\"id\":\"m1\",\"text\":\"w7 w8\"}",
        "{\"op\":\"check\",\"id\":\"m2\",\"text\":\"w9\",\"k\":2,\"store\":false}",
        "{\"op\":\"query\",\"texts\":[\"w3\",\"w4 w5\"],\"k\":2}",
        "{\"op\":\"remove\",\"id\":\"q3\"}",
        "{\"op\":\"get\",\"id\":\"q4\"}",
    };
    uint64_t rng = 12345;
    char line[512];
    for (int iter = 0; iter < 3000; iter++) {
        size_t len;
        if (iter % 3 == 0) {
            len = qt_rand(&rng) % 64;
            for (size_t i = 0; i < len; i++)
                line[i] = (char)(qt_rand(&rng) & 0xff);
        } else {
            const char *s = seeds[qt_rand(&rng) % (sizeof seeds / sizeof seeds[0])];
            len = strlen(s);
            memcpy(line, s, len);
            int muts = 1 + (int)(qt_rand(&rng) % 4);
            for (int m = 0; m < muts && len > 0; m++) {
                size_t at = qt_rand(&rng) % len;
                switch (qt_rand(&rng) % 3) {
                case 0: /* flip a byte */
                    line[at] = (char)(qt_rand(&rng) & 0xff);
                    break;
                case 1: /* cut */
                    len = at;
                    break;
                default: /* duplicate a span */
                    if (len + 16 < sizeof line) {
                        memmove(line + at + 16, line + at, len - at);
                        len += 16;
                    }
                    break;
                }
            }
        }
        if (len > 0 && memchr(line, '\n', len))
            continue; /* a server cuts lines at newlines; the handler gets one line */
        json_t *j = handle_as(&writer, line, len);
        json_decref(j);
    }
}

/* Every allocation failing in turn, on each kind of request: no crash, no leak, and the
 * reply is either the normal one or an "internal" error. */
static void test_alloc_failures(void **state)
{
    (void)state;
    fill_index(20);
    static const char *const lines[] = {
        "{\"op\":\"query\",\"texts\":[\"w3 w4\",\"w5\"],\"k\":3,\"tag\":\"x\"}",
        "{\"op\":\"add\",\"id\":\"af\",\"text\":\"w11 w12 w13\"}",
        "{\"op\":\"check\",\"id\":\"ag\",\"text\":\"w14 w15\",\"k\":2,\"min_score\":-1}",
        "{\"op\":\"get\",\"id\":\"q2\"}",
        "{\"op\":\"stats\"}",
        "{\"op\":\"remove\",\"id\":\"af\"}",
    };
    for (size_t l = 0; l < sizeof lines / sizeof lines[0]; l++) {
        int completed = 0;
        for (long n = 0; n < 400 && !completed; n++) {
            char *out = NULL;
            size_t len = 0;
            qd_alloc_fail_after(n, 0);
            int rc = qd_proto_handle(&proto, ws, lines[l], strlen(lines[l]), &writer, &out, &len);
            qd_alloc_fail_after(-1, 0);
            if (rc) {
                assert_int_equal(rc, QD_ERR_NOMEM);
                assert_null(out);
                continue;
            }
            json_t *j = json_loadb(out, len, 0, NULL);
            if (!j)
                fail_msg("allocation %ld: reply is not JSON: %.*s", n, (int)len, out);
            if (json_is_true(json_object_get(j, "ok"))) {
                completed = 1;
            } else {
                const char *code = err_code(j);
                /* Under failure, only "internal"; once the add went through, the later
                 * remove of the same id may see it gone (not_found) when retried. */
                if (strcmp(code, "internal") != 0 && strcmp(code, "not_found") != 0 &&
                    strcmp(code, "duplicate_id") != 0)
                    fail_msg("%s with allocation %ld failing: %s", lines[l], n, code);
                if (strcmp(code, "internal") != 0)
                    completed = 1;
            }
            json_decref(j);
            qd_free(out);
        }
        assert_true(completed);
    }
}

/* --- who said it ---------------------------------------------------------------------- */

/* A backend that delegates to the real one, notes whether a call failed, can fail
 * stats on demand, and whose message is always one left over from some earlier call:
 * proto must use it for the failures the backend returns and for no others. */
static qd_backend inner;
static int be_failed, fail_info;
#define STALE "message left from an earlier backend call"

static int w_search(void *ctx, const float *q, size_t nq, size_t k, float min_score,
                    const char *const *exclude, qd_store_hits *out)
{
    int rc = inner.search(ctx, q, nq, k, min_score, exclude, out);
    be_failed |= rc != 0;
    return rc;
}

static int w_search_text(void *ctx, const float *q, size_t nq, const qd_store_query *o,
                         qd_store_hits *out)
{
    int rc = inner.search_text(ctx, q, nq, o, out);
    be_failed |= rc != 0;
    return rc;
}

static int w_add(void *ctx, const qd_store_item *items, size_t n, int replace,
                 qd_store_result *res)
{
    int rc = inner.add(ctx, items, n, replace, res);
    be_failed |= rc != 0;
    return rc;
}

static int w_remove(void *ctx, const char *id, size_t len)
{
    int rc = inner.remove(ctx, id, len);
    be_failed |= rc != 0;
    return rc;
}

static int w_get(void *ctx, const char *id, size_t len, qd_store_row *row)
{
    int rc = inner.get(ctx, id, len, row);
    be_failed |= rc != 0;
    return rc;
}

static int w_info(void *ctx, qd_store_info *info)
{
    int rc = fail_info ? QD_ERR_IO : inner.info(ctx, info);
    be_failed |= rc != 0;
    return rc;
}

static const char *w_errmsg(void *ctx)
{
    (void)ctx;
    return STALE;
}

static const char *err_message(json_t *j)
{
    return json_string_value(json_object_get(json_object_get(j, "error"), "message"));
}

static void test_errors_attributed(void **state)
{
    (void)state;
    fill_index(20);
    inner = be;
    qd_backend wrapped = be;
    wrapped.search = w_search;
    wrapped.search_text = inner.search_text ? w_search_text : NULL;
    wrapped.add = w_add;
    wrapped.remove = w_remove;
    wrapped.get = w_get;
    wrapped.info = w_info;
    wrapped.errmsg = w_errmsg;
    proto.be = &wrapped;

    /* A failure the backend returns carries its message. */
    fail_info = 1;
    json_t *j = handle("{\"op\":\"stats\"}");
    assert_string_equal(err_code(j), "internal");
    assert_non_null(strstr(err_message(j), STALE));
    json_decref(j);
    fail_info = 0;

    /* Failures of the handler's own (its allocations) never do. */
    static const char *const lines[] = {
        "{\"op\":\"query\",\"texts\":[\"w3 w4\",\"w5\"],\"k\":3}",
        "{\"op\":\"add\",\"id\":\"wa\",\"text\":\"w11 w12 w13\"}",
        "{\"op\":\"check\",\"id\":\"wb\",\"text\":\"w14 w15\",\"k\":2}",
        "{\"op\":\"stats\"}",
    };
    size_t own = 0;
    for (size_t l = 0; l < sizeof lines / sizeof lines[0]; l++) {
        for (long n = 0; n < 400; n++) {
            char *out = NULL;
            size_t len = 0;
            be_failed = 0;
            qd_alloc_fail_after(n, 0);
            int rc = qd_proto_handle(&proto, ws, lines[l], strlen(lines[l]), &writer, &out, &len);
            qd_alloc_fail_after(-1, 0);
            if (rc)
                continue;
            j = json_loadb(out, len, 0, NULL);
            assert_non_null(j);
            qd_free(out);
            int ok = json_is_true(json_object_get(j, "ok"));
            if (!ok && !be_failed) {
                own++;
                if (strstr(err_message(j), STALE))
                    fail_msg("%s, allocation %ld failing: the handler's own failure was "
                             "described by the backend's old message: %s", lines[l], n,
                             err_message(j));
            }
            json_decref(j);
            if (ok)
                break;
        }
    }
    assert_true(own > 0); /* the handler's own failures were reached */
    proto.be = &be;
}

/* qd_proto_reply's line for r is the one jansson makes (qd_proto_reply_use_jansson). */
static void expect_reply_as_jansson(const qd_proto *p, const qd_req *r, const char *what)
{
    char *direct, *ref;
    size_t dlen, rlen;
    assert_int_equal(qd_proto_reply(p, r, &direct, &dlen), 0);
    qd_proto_reply_use_jansson(1);
    assert_int_equal(qd_proto_reply(p, r, &ref, &rlen), 0);
    qd_proto_reply_use_jansson(0);
    if (dlen != rlen || memcmp(direct, ref, rlen) != 0)
        fail_msg("%s:\n direct %s jansson %s", what, direct, ref);
    assert_true(direct[dlen] == '\0' && direct[dlen - 1] == '\n');
    free(direct);
    free(ref);
}

/* A random string for test_query_reply_writer: letters, the characters JSON escapes,
 * control characters, multi-byte UTF-8 and ill-formed bytes. */
static char *random_text(uint64_t *rng)
{
    static const char *const parts[] = {
        "a", "Why", " ", "\"", "\\", "/", "\b", "\f", "\n", "\r", "\t", "\x01", "\x1f",
        "\x7f", "\xC3\xA9", "\xE2\x82\xAC", "\xF0\x9F\x98\x80", "\xE2\x80\xA8", "\x80",
        "\xC0\xAF", "\xED\xA0\x80", "\xF5", "\xE2\x82", "\xEF\xBF\xBD", "u0041", "?"};
    size_t nparts = sizeof parts / sizeof parts[0], n = qt_rand(rng) % 12;
    char *t = calloc(n * 5 + 1, 1); /* no part is longer than 5 bytes */
    for (size_t i = 0; i < n; i++)
        strcat(t, parts[qt_rand(rng) % nparts]);
    return t;
}

/* A random score: plain ones, every magnitude a float has, and the awkward values. */
static float random_score(uint64_t *rng)
{
    static const float special[] = {0.0f, -0.0f, 1.0f, 0.5f, 1e-5f, 1e-4f, 123456.7f,
                                    1234567.0f, 12345678.0f, 1e7f, 0.1f, 1e38f,
                                    1.4e-45f, 3.4028235e38f, NAN, INFINITY, -INFINITY};
    switch (qt_rand(rng) % 3) {
    case 0:
        return special[qt_rand(rng) % (sizeof special / sizeof special[0])];
    case 1:
        return (float)qt_uniform(rng, -1, 1);
    default:
        return (float)(qt_uniform(rng, -1, 1) * pow(10.0, qt_uniform(rng, -45, 38)));
    }
}

/* Query replies are written directly (proto.c), the rest by jansson: the direct writer
 * gives exactly jansson's bytes for random results, tags and limits. */
static void test_query_reply_writer(void **state)
{
    (void)state;
    uint64_t rng = 11;
    qd_proto p = {0};
    qd_proto_limits_default(&p.lim);
    for (int trial = 0; trial < 400; trial++) {
        qd_req r;
        memset(&r, 0, sizeof r);
        r.op = QD_OP_QUERY;
        r.code = QD_CODE_OK;
        r.batch = (int)(qt_rand(&rng) % 2);
        r.ntexts = r.batch ? qt_rand(&rng) % 4 : 1;
        r.hits = calloc(r.ntexts ? r.ntexts : 1, sizeof *r.hits);
        for (size_t t = 0; t < r.ntexts; t++) {
            qd_store_hits *h = &r.hits[t];
            h->n = qt_rand(&rng) % 5;
            h->hit = calloc(h->n ? h->n : 1, sizeof *h->hit);
            for (size_t i = 0; i < h->n; i++) {
                qd_store_hit *x = &h->hit[i];
                x->row.ext_id = qt_rand(&rng) % 8 ? random_text(&rng) : NULL;
                x->row.text = qt_rand(&rng) % 8 ? random_text(&rng) : NULL;
                x->score = random_score(&rng);
                x->cosine = random_score(&rng);
                x->lexical = random_score(&rng);
                x->p_duplicate = random_score(&rng);
            }
        }
        if (trial % 3 == 0)
            r.tag = json_pack("{s:s, s:f, s:[i, b]}", "t", "x\"\n\xC3\xA9", "f",
                              qt_uniform(&rng, -1e6, 1e6), "a", trial, trial % 2);
        else if (trial % 3 == 1)
            r.tag = json_real(qt_uniform(&rng, -2, 2));
        p.lim.max_reply = trial % 5 == 0 ? 40 + qt_rand(&rng) % 400 : 4u << 20;
        char what[32];
        snprintf(what, sizeof what, "trial %d", trial);
        expect_reply_as_jansson(&p, &r, what);
        json_decref(r.tag);
        for (size_t t = 0; t < r.ntexts; t++) {
            for (size_t i = 0; i < r.hits[t].n; i++) {
                free(r.hits[t].hit[i].row.ext_id);
                free(r.hits[t].hit[i].row.text);
            }
            free(r.hits[t].hit);
        }
        free(r.hits);
    }
}

/* Compares the direct writer's numbers with jansson's for the floats in v (n of
 * them), 20 to a reply. */
static void compare_numbers(const float *v, size_t n)
{
    qd_proto p = {0};
    qd_proto_limits_default(&p.lim);
    qd_store_hit hit[5];
    qd_store_hits h = {5, hit};
    qd_req r;
    memset(&r, 0, sizeof r);
    memset(hit, 0, sizeof hit);
    r.op = QD_OP_QUERY;
    r.code = QD_CODE_OK;
    r.ntexts = 1;
    r.hits = &h;
    for (size_t at = 0; at < n; at += 20) {
        for (size_t i = 0; i < 20; i++) {
            float x = v[at + i < n ? at + i : n - 1];
            float *f = i % 4 == 0   ? &hit[i / 4].score
                       : i % 4 == 1 ? &hit[i / 4].cosine
                       : i % 4 == 2 ? &hit[i / 4].lexical
                                    : &hit[i / 4].p_duplicate;
            *f = x;
        }
        char what[48];
        snprintf(what, sizeof what, "numbers from %.9g", (double)v[at]);
        expect_reply_as_jansson(&p, &r, what);
    }
}

static float float_of(uint32_t bits)
{
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* The direct writer formats most scores itself (g7_float in proto.c) instead of by
 * snprintf: the same text as jansson for every float with at most 8 significant bits
 * (where exact ties of the rounding are), the floats around each power of ten, and a
 * sweep through the rest of the range it takes, with signs. */
static void test_query_reply_numbers(void **state)
{
    (void)state;
    size_t cap = 400000, n = 0;
    float *v = malloc(cap * sizeof *v);
    uint32_t lo = 0x38800000u, hi = 0x49800000u; /* 2^-14 .. 2^20 */
    for (uint32_t b = lo - (1u << 23); b < hi + (1u << 23); b += 1u << 16)
        v[n++] = float_of(b);
    for (int x = -6; x <= 7; x++) {
        float f = (float)pow(10.0, x);
        for (int d = -3; d <= 3; d++) {
            uint32_t b;
            memcpy(&b, &f, sizeof b);
            v[n++] = float_of(b + (uint32_t)d);
        }
    }
    for (uint32_t b = lo; b < hi && n + 2 < cap; b += 997)
        v[n++] = float_of(b);
    size_t half = n;
    for (size_t i = 0; i < half && n + 2 < cap; i++)
        v[n++] = -v[i];
    v[n++] = 0.0f;
    v[n++] = -0.0f;
    compare_numbers(v, n);
    free(v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_error_codes),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_ops),
        cmocka_unit_test(test_stats_server_part),
        cmocka_unit_test(test_latency_percentiles),
        cmocka_unit_test(test_forbidden),
        cmocka_unit_test(test_reload_nothing_staged),
        cmocka_unit_test(test_unavailable),
        cmocka_unit_test(test_batch_equals_single),
        cmocka_unit_test(test_group_add),
        cmocka_unit_test(test_escaping),
        cmocka_unit_test(test_reply_limit),
        cmocka_unit_test(test_query_reply_writer),
        cmocka_unit_test(test_query_reply_numbers),
        cmocka_unit_test(test_random_lines),
        cmocka_unit_test(test_alloc_failures),
        cmocka_unit_test(test_errors_attributed),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
