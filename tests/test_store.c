/*
 * test_store.c - the question store (indexer/store.c) through its API: add, search,
 * remove, replace and duplicate rules, reopen, crash recovery (a forked child that
 * dies without closing, or between writing the FAISS file and recording it), verify
 * catching damaged and inconsistent FAISS files, tombstones with HNSW and compaction,
 * IVF and SQ8, model fingerprints, schema versions (the version 1 -> 2 migration), the
 * writer lock, export, moderators' verdicts and their pair file,
 * concurrent searches during adds, and allocation failures.
 *
 * Questions are made from the fixture model's vocabulary ("w2".."w39"), so every
 * question has its own vector; a question's expected nearest neighbour is itself.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>
#include <sqlite3.h>

#include "../indexer/store_impl.h"
#include "qdup/ann.h"
#include "qdup/common.h"
#include "qdup/fileio.h"
#include "qdup/ingest.h"
#include "qdup/model.h"
#include "qdup/pairs.h"
#include "qdup/store.h"
#include "testmodel.h"
#include "testutil.h"

/* ------------------------------------------------------------- helpers ---------- */

/* Adds items as qdup-index does: the store takes vectors, and the ingest step
 * encodes those of the items it will keep. */
static int store_add(qd_store *s, const qd_store_item *it, size_t n, int replace,
                     qd_store_result *res)
{
    char err[QD_ERRMSG_MAX];
    return qd_ingest_add(s, it, n, replace, 2, NULL, NULL, res, err, sizeof err);
}

static const char *model_path(void)
{
    return qt_path(qt_fixtures_dir(), "fwd_plain.qdm");
}

/* A fresh database path in the scratch directory. */
static const char *new_db(const char *name)
{
    static char buf[8][4096];
    static int k;
    char *b = buf[k++ % 8];
    snprintf(b, sizeof buf[0], "%s/%s.db", qt_tmp_dir(), name);
    return b;
}

/* Question i: its first three words spell i in base 38 (so no two questions share a
 * token sequence), then up to four more words and sometimes a question mark. */
static void question(size_t i, char *buf, size_t len)
{
    uint64_t st = i * 7919 + 17;
    size_t n = 0, v = i;
    for (int w = 0; w < 3; w++) {
        n += (size_t)snprintf(buf + n, len - n, "%sw%zu", w ? " " : "", 2 + v % 38);
        v /= 38;
    }
    int extra = (int)(qt_rand(&st) % 5);
    for (int w = 0; w < extra; w++)
        n += (size_t)snprintf(buf + n, len - n, " w%d", (int)(2 + qt_rand(&st) % 38));
    if (qt_rand(&st) % 2)
        snprintf(buf + n, len - n, " ?");
}

/* Ids and texts of questions lo..hi-1, as items (strings owned by the batch). */
typedef struct batch {
    qd_store_item *it;   /* (n) */
    char (*id)[32];      /* (n) ids "q<i>" */
    char (*text)[128];   /* (n) texts */
    size_t n;
} batch;

static batch make_batch(size_t lo, size_t hi)
{
    batch b = {0};
    b.n = hi - lo;
    b.it = calloc(b.n, sizeof *b.it);
    b.id = calloc(b.n, sizeof *b.id);
    b.text = calloc(b.n, sizeof *b.text);
    assert_non_null(b.it);
    for (size_t i = 0; i < b.n; i++) {
        snprintf(b.id[i], sizeof b.id[i], "q%zu", lo + i);
        question(lo + i, b.text[i], sizeof b.text[i]);
        b.it[i] = (qd_store_item){b.id[i], strlen(b.id[i]), b.text[i], strlen(b.text[i]), NULL};
    }
    return b;
}

static void free_batch(batch *b)
{
    free(b->it);
    free(b->id);
    free(b->text);
}

static qd_store *create(const char *db, const char *spec)
{
    char err[QD_ERRMSG_MAX];
    qd_store_opts o = {.model_path = model_path(), .index_spec = spec, .threads = 2};
    qd_store *s = NULL;
    int rc = qd_store_create(db, &o, &s, err, sizeof err);
    if (rc)
        fail_msg("create %s: %s", db, err);
    return s;
}

static qd_store *open_rw(const char *db)
{
    char err[QD_ERRMSG_MAX];
    qd_store_opts o = {.threads = 2};
    qd_store *s = NULL;
    if (qd_store_open(db, &o, &s, err, sizeof err))
        fail_msg("open %s: %s", db, err);
    return s;
}

static qd_store *open_ro(const char *db)
{
    char err[QD_ERRMSG_MAX];
    qd_store_opts o = {.readonly = 1};
    qd_store *s = NULL;
    if (qd_store_open(db, &o, &s, err, sizeof err))
        fail_msg("open %s read-only: %s", db, err);
    return s;
}

static void add_ok(qd_store *s, batch *b)
{
    qd_store_result *res = calloc(b->n, sizeof *res);
    int rc = store_add(s, b->it, b->n, 0, res);
    if (rc)
        fail_msg("add: %s", qd_store_errmsg(s));
    for (size_t i = 0; i < b->n; i++) {
        if (res[i].status != QD_STORE_ADDED)
            fail_msg("item %zu (%s \"%s\"): status %d", i, b->id[i], b->text[i], res[i].status);
        assert_true(res[i].row >= 1);
    }
    free(res);
}

/* The vector the store's model gives text. */
static void encode(qd_store *s, const char *text, float *v)
{
    qd_enc_ws *ws = qd_enc_ws_new();
    size_t len = strlen(text);
    assert_int_equal(qd_enc_texts(qd_store_model(s), ws, &text, &len, 1, v), 0);
    qd_enc_ws_free(ws);
}

/* The top-k ids for a text, into ids (k strings of 32 bytes); returns the count. */
static size_t search_text(qd_store *s, const char *text, size_t k, const char *exclude,
                          char (*ids)[32], float *scores)
{
    float v[64];
    assert_true(qd_model_dim(qd_store_model(s)) <= 64);
    encode(s, text, v);
    qd_store_hits h;
    const char *ex[1] = {exclude};
    int rc = qd_store_search(s, v, 1, k, -INFINITY, exclude ? ex : NULL, &h);
    if (rc)
        fail_msg("search: %s", qd_store_errmsg(s));
    for (size_t i = 0; i < h.n; i++) {
        snprintf(ids[i], 32, "%s", h.hit[i].row.ext_id);
        if (scores)
            scores[i] = h.hit[i].score;
        if (i > 0)
            assert_true(h.hit[i].score <= h.hit[i - 1].score);
    }
    size_t n = h.n;
    qd_store_hits_free(&h);
    return n;
}

static void expect_top(qd_store *s, const char *text, const char *id)
{
    char ids[1][32];
    float sc[1];
    assert_int_equal(search_text(s, text, 1, NULL, ids, sc), 1);
    if (strcmp(ids[0], id) != 0)
        fail_msg("search \"%s\": top hit %s, expected %s", text, ids[0], id);
    qt_assert_near(sc[0], 1.0, 1e-4);
}

static uint64_t verify_problems(qd_store *s, char *report, size_t len)
{
    FILE *f = fmemopen(report, len, "w");
    assert_non_null(f);
    uint64_t problems = 0;
    int rc = qd_store_verify(s, f, 50, &problems);
    fclose(f);
    report[len - 1] = '\0';
    assert_true(rc == 0 || rc == QD_ERR_MISMATCH);
    assert_int_equal(rc == 0, problems == 0);
    return problems;
}

static void verify_clean(qd_store *s)
{
    char report[4096] = "";
    if (verify_problems(s, report, sizeof report) != 0)
        fail_msg("verify found problems:\n%s", report);
}

static qd_store_info info_of(qd_store *s)
{
    qd_store_info in;
    assert_int_equal(qd_store_get_info(s, &in), 0);
    return in;
}

/* Runs SQL with parameters bound from the varargs ('i' int64, 't' text) on a database
 * file directly, as someone tampering with it would. */
static void sql(const char *db, const char *stmt, const char *types, ...)
{
    sqlite3 *h = NULL;
    assert_int_equal(sqlite3_open(db, &h), SQLITE_OK);
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(h, stmt, -1, &st, NULL) != SQLITE_OK)
        fail_msg("%s: %s", stmt, sqlite3_errmsg(h));
    va_list ap;
    va_start(ap, types);
    for (int i = 0; types[i]; i++) {
        if (types[i] == 'i')
            sqlite3_bind_int64(st, i + 1, va_arg(ap, int64_t));
        else
            sqlite3_bind_text(st, i + 1, va_arg(ap, const char *), -1, SQLITE_TRANSIENT);
    }
    va_end(ap);
    int rc = sqlite3_step(st);
    assert_true(rc == SQLITE_DONE || rc == SQLITE_ROW);
    sqlite3_finalize(st);
    assert_int_equal(sqlite3_close(h), SQLITE_OK);
}

/* Replaces the store's FAISS file by `a` and makes meta vouch for it, as if the store
 * itself had checkpointed it: a FAISS file the store trusts but that disagrees with
 * the database. */
static void plant_faiss(const char *db, qd_ann *a)
{
    char err[QD_ERRMSG_MAX], path[4200];
    snprintf(path, sizeof path, "%s.faiss", db);
    assert_int_equal(qd_ann_save(a, path, err, sizeof err), 0);
    size_t len;
    char *bytes = qt_read_file(path, &len);
    uint32_t crc = qd_crc32(0, bytes, len);
    free(bytes);
    sql(db, "UPDATE meta SET value = ?1 WHERE key = 'faiss_crc'", "i", (int64_t)crc);
    sql(db, "UPDATE meta SET value = ?1 WHERE key = 'faiss_size'", "i", (int64_t)len);
}

static qd_ann *load_faiss(const char *db)
{
    char err[QD_ERRMSG_MAX], path[4200];
    snprintf(path, sizeof path, "%s.faiss", db);
    qd_ann *a = NULL;
    if (qd_ann_load(path, &a, err, sizeof err))
        fail_msg("%s", err);
    return a;
}

/* ------------------------------------------------------------- tests ------------ */

static void test_schema_embedded(void **state)
{
    (void)state;
    /* The compiled-in schema is the top-level file, byte for byte. */
    char path[4096];
    const char *src = getenv("QDUP_SOURCE");
    snprintf(path, sizeof path, "%s/schema.sql", src ? src : ".");
    size_t len;
    char *text = qt_read_file(path, &len);
    assert_int_equal(strlen(qd_store_schema_sql), len);
    assert_memory_equal(qd_store_schema_sql, text, len);
    free(text);
    /* And its version is the header's. */
    const char *db = new_db("schema");
    qd_store *s = create(db, NULL);
    qd_store_close(s);
    sqlite3 *h;
    assert_int_equal(sqlite3_open(db, &h), SQLITE_OK);
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(h, "SELECT value FROM meta WHERE key = 'schema_version'",
                                        -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(st, 0), QD_STORE_SCHEMA_VERSION);
    sqlite3_finalize(st);
    assert_int_equal(sqlite3_prepare_v2(h, "PRAGMA journal_mode", -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(st, 0), "wal");
    sqlite3_finalize(st);
    sqlite3_close(h);
}

static void test_add_search_get(void **state)
{
    (void)state;
    const char *db = new_db("basic");
    qd_store *s = create(db, NULL);
    batch b = make_batch(0, 300);
    add_ok(s, &b);
    qd_store_info in = info_of(s);
    assert_int_equal(in.live, 300);
    assert_int_equal(in.faiss_count, 300);
    assert_int_equal(in.tombstones, 0);
    assert_int_equal(in.dim, qd_model_dim(qd_store_model(s)));
    assert_string_equal(in.index_spec, "Flat");
    assert_string_equal(in.model_fingerprint, qd_model_fingerprint(qd_store_model(s)));
    assert_true(in.model_path[0] == '/');
    assert_true(in.can_remove);
    for (size_t i = 0; i < 300; i += 13)
        expect_top(s, b.text[i], b.id[i]);
    /* k results, best first, all distinct. */
    char ids[20][32];
    assert_int_equal(search_text(s, b.text[5], 20, NULL, ids, NULL), 20);
    for (int i = 0; i < 20; i++)
        for (int j = 0; j < i; j++)
            assert_string_not_equal(ids[i], ids[j]);
    /* Exclusion and min_score. */
    assert_int_equal(search_text(s, b.text[5], 3, b.id[5], ids, NULL), 3);
    for (int i = 0; i < 3; i++)
        assert_string_not_equal(ids[i], b.id[5]);
    float v[64];
    encode(s, b.text[7], v);
    qd_store_hits h;
    assert_int_equal(qd_store_search(s, v, 1, 10, 0.9999f, NULL, &h), 0);
    assert_int_equal(h.n, 1);
    assert_string_equal(h.hit[0].row.ext_id, b.id[7]);
    assert_string_equal(h.hit[0].row.text, b.text[7]);
    assert_true(h.hit[0].row.created > 1e9);
    assert_true(h.hit[0].row.removed == 0);
    qd_store_hits_free(&h);
    /* Bad k and a non-finite query are refused. */
    assert_int_equal(qd_store_search(s, v, 1, 0, 0, NULL, &h), QD_ERR_INVAL);
    v[3] = NAN;
    assert_int_equal(qd_store_search(s, v, 1, 5, 0, NULL, &h), QD_ERR_INVAL);
    assert_int_equal(h.n, 0);
    /* get and get_row. */
    qd_store_row r;
    assert_int_equal(qd_store_get(s, "q42", 3, &r), 0);
    assert_string_equal(r.text, b.text[42]);
    int64_t row = r.row;
    qd_store_row_free(&r);
    assert_int_equal(qd_store_get_row(s, row, &r), 0);
    assert_string_equal(r.ext_id, "q42");
    qd_store_row_free(&r);
    assert_int_equal(qd_store_get(s, "nope", 4, &r), QD_ERR_NOTFOUND);
    assert_non_null(strstr(qd_store_errmsg(s), "nope"));
    assert_int_equal(qd_store_get_row(s, 123456, &r), QD_ERR_NOTFOUND);
    /* Each message belongs to the call that raised it: a later call that succeeds
     * leaves none, one that fails its own. */
    assert_non_null(strstr(qd_store_errmsg(s), "123456"));
    assert_int_equal(qd_store_get(s, "q42", 3, &r), 0);
    qd_store_row_free(&r);
    assert_string_equal(qd_store_errmsg(s), "");
    assert_int_equal(qd_store_get(s, "nope", 4, &r), QD_ERR_NOTFOUND);
    assert_int_equal(qd_store_checkpoint(s), 0);
    assert_string_equal(qd_store_errmsg(s), "");
    /* A batch search sees the same as single searches. */
    float q[3 * 64];
    int dim = qd_model_dim(qd_store_model(s));
    for (int i = 0; i < 3; i++)
        encode(s, b.text[100 + i], q + i * dim);
    qd_store_hits hs[3];
    assert_int_equal(qd_store_search(s, q, 3, 1, -1, NULL, hs), 0);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(hs[i].n, 1);
        assert_string_equal(hs[i].hit[0].row.ext_id, b.id[100 + i]);
        qd_store_hits_free(&hs[i]);
    }
    verify_clean(s);
    qd_store_close(s);

    /* Reopened read-only: the same answers, from the checkpointed FAISS file. */
    s = open_ro(db);
    in = info_of(s);
    assert_int_equal(in.live, 300);
    assert_int_equal(in.seq, in.checkpoint_seq);
    assert_string_equal(in.faiss_note, "");
    assert_true(in.readonly);
    for (size_t i = 0; i < 300; i += 29)
        expect_top(s, b.text[i], b.id[i]);
    qd_store_result res[1];
    assert_int_equal(store_add(s, b.it, 1, 0, res), QD_ERR_FORBIDDEN);
    assert_int_equal(qd_store_remove(s, "q1", 2), QD_ERR_FORBIDDEN);
    assert_int_equal(qd_store_checkpoint(s), QD_ERR_FORBIDDEN);
    verify_clean(s);
    qd_store_close(s);
    free_batch(&b);
}

static void test_duplicates_and_replace(void **state)
{
    (void)state;
    const char *db = new_db("dups");
    qd_store *s = create(db, NULL);
    batch b = make_batch(0, 10);
    add_ok(s, &b);
    qd_store_row r;
    assert_int_equal(qd_store_get(s, "q3", 2, &r), 0);
    int64_t row3 = r.row;
    qd_store_row_free(&r);
    assert_int_equal(qd_store_get(s, "q4", 2, &r), 0);
    int64_t row4 = r.row;
    qd_store_row_free(&r);

    char variant[160];
    /* Upper case and extra spaces: the same token sequence as q3's text. */
    snprintf(variant, sizeof variant, "  %s  ", b.text[3]);
    for (char *p = variant; *p; p++)
        if (*p == 'w')
            *p = 'W';
    char t_new1[128], t_new2[128], t_new3[128];
    question(1001, t_new1, sizeof t_new1);
    question(1002, t_new2, sizeof t_new2);
    question(1003, t_new3, sizeof t_new3);
    qd_store_item it[] = {
        {"a1", 2, variant, strlen(variant), NULL},       /* 0: same text as q3 */
        {"q5", 2, t_new1, strlen(t_new1), NULL},         /* 1: live id */
        {"a2", 2, " \t\r\n ", 5, NULL},                  /* 2: no tokens */
        {"a3", 2, t_new2, strlen(t_new2), NULL},         /* 3: added */
        {"a3", 2, t_new3, strlen(t_new3), NULL},         /* 4: id twice in the batch */
        {"a4", 2, t_new2, strlen(t_new2), NULL},         /* 5: text twice in the batch */
        {"a5", 2, t_new3, strlen(t_new3), NULL},         /* 6: added (4 was refused) */
    };
    size_t n = sizeof it / sizeof *it;
    qd_store_result chk[7], res[7];
    qd_store_info before = info_of(s);
    assert_int_equal(qd_store_check(s, it, n, 0, chk), 0);
    assert_int_equal(info_of(s).live, before.live); /* a dry run stores nothing */
    assert_int_equal(info_of(s).seq, before.seq);
    assert_int_equal(store_add(s, it, n, 0, res), 0);
    const qd_store_status want[] = {QD_STORE_DUP_TEXT, QD_STORE_DUP_ID, QD_STORE_EMPTY,
                                    QD_STORE_ADDED,    QD_STORE_DUP_ID, QD_STORE_DUP_TEXT,
                                    QD_STORE_ADDED};
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(res[i].status, want[i]);
        assert_int_equal(chk[i].status, want[i]);
        assert_int_equal(chk[i].row, -1);
    }
    assert_int_equal(res[0].other_row, row3);
    assert_int_equal(chk[0].other_row, row3);
    assert_int_equal(res[1].other_row, qd_store_get(s, "q5", 2, &r) == 0 ? r.row : -2);
    qd_store_row_free(&r);
    assert_int_equal(res[2].other_row, -1);
    assert_int_equal(res[4].other_row, res[3].row);
    assert_int_equal(res[5].other_row, res[3].row);
    assert_int_equal(chk[4].other_row, -1); /* batch rows have no id in a dry run */
    assert_true(res[6].row > res[3].row);
    assert_int_equal(info_of(s).live, 12);

    /* Replace: q4 gets a new text and a new row; the old row becomes a tombstone. */
    char t_new4[128];
    question(1004, t_new4, sizeof t_new4);
    qd_store_item rep[] = {
        {"q4", 2, t_new4, strlen(t_new4), NULL},
        {"q6", 2, b.text[7], strlen(b.text[7]), NULL}, /* text of another live row */
        {"b1", 2, b.text[4], strlen(b.text[4]), NULL}, /* q4's old text: free now */
    };
    assert_int_equal(store_add(s, rep, 3, 0, res), 0);
    assert_int_equal(res[0].status, QD_STORE_DUP_ID);
    assert_int_equal(res[0].other_row, row4);
    assert_int_equal(res[2].status, QD_STORE_DUP_TEXT);
    assert_int_equal(store_add(s, rep, 3, 1, res), 0);
    assert_int_equal(res[0].status, QD_STORE_REPLACED);
    assert_true(res[0].row > row4);
    assert_int_equal(res[1].status, QD_STORE_DUP_TEXT);
    assert_int_equal(res[2].status, QD_STORE_ADDED);
    assert_int_equal(qd_store_get(s, "q4", 2, &r), 0);
    assert_string_equal(r.text, t_new4);
    assert_int_equal(r.row, res[0].row);
    qd_store_row_free(&r);
    assert_int_equal(qd_store_get_row(s, row4, &r), 0);
    assert_true(r.removed > 0);
    qd_store_row_free(&r);
    expect_top(s, t_new4, "q4");
    expect_top(s, b.text[4], "b1");
    qd_store_info in = info_of(s);
    assert_int_equal(in.live, 13);
    assert_int_equal(in.tombstones, 1);
    assert_int_equal(in.faiss_count, 13);
    verify_clean(s);

    /* Invalid items fail the whole call and store nothing. */
    qd_store_item bad[] = {
        {"ok", 2, "w3 w4", 5, NULL},
        {"b\xff", 2, "w5 w6", 5, NULL},
    };
    assert_int_equal(store_add(s, bad, 2, 0, res), QD_ERR_INVAL);
    assert_non_null(strstr(qd_store_errmsg(s), "item 1"));
    bad[1] = (qd_store_item){"b2", 2, "w5\0w6", 5, NULL};
    assert_int_equal(store_add(s, bad, 2, 0, res), QD_ERR_INVAL);
    bad[1] = (qd_store_item){"b\t2", 3, "w5 w6", 5, NULL};
    assert_int_equal(store_add(s, bad, 2, 0, res), QD_ERR_INVAL);
    char longid[QD_STORE_MAX_ID + 2];
    memset(longid, 'x', sizeof longid);
    bad[1] = (qd_store_item){longid, sizeof longid, "w5 w6", 5, NULL};
    assert_int_equal(store_add(s, bad, 2, 0, res), QD_ERR_INVAL);
    assert_int_equal(info_of(s).live, in.live);
    assert_int_equal(info_of(s).seq, in.seq);
    char err[256];
    assert_int_equal(qd_store_check_item(&bad[0], err, sizeof err), 0);
    assert_int_equal(qd_store_check_item(&bad[1], err, sizeof err), QD_ERR_INVAL);
    assert_non_null(strstr(err, "256"));

    /* A vector given by the caller is stored as given. */
    int dim = qd_model_dim(qd_store_model(s));
    float v[64] = {0};
    v[0] = 1;
    qd_store_item pre = {"vec", 3, "w38 w38 w38 w38", 15, v};
    assert_int_equal(store_add(s, &pre, 1, 0, res), 0);
    assert_int_equal(res[0].status, QD_STORE_ADDED);
    qd_store_hits h;
    assert_int_equal(qd_store_search(s, v, 1, 1, -1, NULL, &h), 0);
    assert_string_equal(h.hit[0].row.ext_id, "vec");
    qt_assert_near(h.hit[0].score, 1.0, 1e-6);
    qd_store_hits_free(&h);
    /* The store itself does not encode: an item it would keep must bring its vector
     * (the batch fails, storing nothing); one it refuses needs none. */
    qd_store_info in2 = info_of(s);
    qd_store_item novec = {"nv1", 3, "w30 w31 w30", 11, NULL};
    assert_int_equal(qd_store_add(s, &novec, 1, 0, res), QD_ERR_INVAL);
    assert_non_null(strstr(qd_store_errmsg(s), "no vector"));
    novec.ext_id = "vec"; /* a live id: refused as a duplicate */
    assert_int_equal(qd_store_add(s, &novec, 1, 0, res), 0);
    assert_int_equal(res[0].status, QD_STORE_DUP_ID);
    assert_int_equal(info_of(s).seq, in2.seq);
    float nanv[64] = {0};
    nanv[dim - 1] = NAN;
    qd_store_item nanit = {"nan", 3, "w37 w37", 7, nanv};
    assert_int_equal(store_add(s, &nanit, 1, 0, res), QD_ERR_INVAL);
    assert_non_null(strstr(qd_store_errmsg(s), "not finite"));
    /* Given and encoded vectors in one batch land on the right rows. */
    qd_store_item mix[] = {{"m1", 2, "w36 w35 w34", 11, NULL},
                           {"m2", 2, "w36 w35 w33", 11, v},
                           {"m3", 2, "w36 w35 w32", 11, NULL}};
    v[0] = 0;
    v[1] = 1;
    assert_int_equal(store_add(s, mix, 3, 0, res), 0);
    expect_top(s, "w36 w35 w34", "m1");
    expect_top(s, "w36 w35 w32", "m3");
    assert_int_equal(qd_store_search(s, v, 1, 1, -1, NULL, &h), 0);
    assert_string_equal(h.hit[0].row.ext_id, "m2");
    qd_store_hits_free(&h);
    v[1] = 2;
    mix[1].ext_id = "m4";
    assert_int_equal(store_add(s, &mix[1], 1, 0, res), QD_ERR_INVAL);
    assert_non_null(strstr(qd_store_errmsg(s), "unit vector"));
    verify_clean(s);
    qd_store_close(s);
    free_batch(&b);
}

static void test_text_key(void **state)
{
    (void)state;
    const char *db = new_db("key");
    qd_store *s = create(db, NULL);
    uint64_t a = qd_store_text_key(s, "How do I learn C?", 17);
    assert_int_not_equal(a, 0);
    assert_int_equal(qd_store_text_key(s, "how  do i LEARN c ?", 19), a);
    assert_int_equal(qd_store_text_key(s, "\xEF\xBC\xA8ow do I learn C?", 19), a); /* fullwidth H */
    assert_int_not_equal(qd_store_text_key(s, "How do I learn C#?", 18), a);
    assert_int_not_equal(qd_store_text_key(s, "ab c", 4), qd_store_text_key(s, "a bc", 4));
    assert_int_equal(qd_store_text_key(s, " \t\n", 3), 0);
    qd_store_close(s);
}

static void test_remove(void **state)
{
    (void)state;
    const char *db = new_db("remove");
    qd_store *s = create(db, NULL);
    batch b = make_batch(0, 50);
    add_ok(s, &b);
    qd_store_row r;
    assert_int_equal(qd_store_get(s, "q10", 3, &r), 0);
    int64_t old_row = r.row;
    qd_store_row_free(&r);
    assert_int_equal(qd_store_remove(s, "q10", 3), 0);
    assert_int_equal(qd_store_remove(s, "q10", 3), QD_ERR_NOTFOUND);
    assert_int_equal(qd_store_remove(s, "zzz", 3), QD_ERR_NOTFOUND);
    assert_int_equal(qd_store_get(s, "q10", 3, &r), QD_ERR_NOTFOUND);
    char ids[50][32];
    size_t n = search_text(s, b.text[10], 50, NULL, ids, NULL);
    assert_int_equal(n, 49);
    for (size_t i = 0; i < n; i++)
        assert_string_not_equal(ids[i], "q10");
    qd_store_info in = info_of(s);
    assert_int_equal(in.live, 49);
    assert_int_equal(in.tombstones, 1);
    assert_int_equal(in.faiss_count, 49);

    /* Many at once: unknown and repeated ids are skipped and flagged. */
    const char *rm[] = {"q1", "nope", "q2", "q1", "q10"};
    size_t lens[] = {2, 4, 2, 2, 3};
    int found[5];
    size_t removed;
    assert_int_equal(qd_store_remove_many(s, rm, lens, 5, found, &removed), 0);
    assert_int_equal(removed, 2);
    int want_found[] = {1, 0, 1, 0, 0};
    for (int i = 0; i < 5; i++)
        assert_int_equal(found[i], want_found[i]);
    assert_int_equal(info_of(s).live, 47);

    /* A removed id and its text may come back, as a new row. */
    qd_store_result res;
    assert_int_equal(store_add(s, &b.it[10], 1, 0, &res), 0);
    assert_int_equal(res.status, QD_STORE_ADDED);
    assert_true(res.row > old_row);
    expect_top(s, b.text[10], "q10");
    verify_clean(s);
    qd_store_close(s);

    s = open_ro(db);
    assert_int_equal(info_of(s).live, 48);
    assert_int_equal(info_of(s).tombstones, 3);
    expect_top(s, b.text[10], "q10");
    assert_int_equal(qd_store_get(s, "q1", 2, &r), QD_ERR_NOTFOUND);
    verify_clean(s);
    qd_store_close(s);

    /* compact deletes the tombstones; the removed rows are gone for good. */
    s = open_rw(db);
    assert_int_equal(qd_store_compact(s), 0);
    in = info_of(s);
    assert_int_equal(in.tombstones, 0);
    assert_int_equal(in.live, 48);
    assert_int_equal(in.seq, in.checkpoint_seq);
    assert_int_equal(qd_store_get_row(s, old_row, &r), QD_ERR_NOTFOUND);
    verify_clean(s);
    qd_store_close(s);
    free_batch(&b);
}

/* Child of the crash tests: what it does, then it dies without closing. */
static void die_now(const char *point)
{
    (void)point;
    _exit(0);
}

static void test_crash_replay(void **state)
{
    (void)state;
    const char *db = new_db("crash");
    qd_store *s = create(db, NULL);
    batch b = make_batch(0, 200);
    batch b2 = make_batch(200, 260);
    add_ok(s, &b);
    qd_store_close(s);

    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        /* Commits a batch and two removals, then dies: the FAISS file on disk still
         * reflects the state before them. */
        char err[QD_ERRMSG_MAX];
        qd_store *c = NULL;
        qd_store_opts o = {.threads = 1};
        qd_store_result res[60];
        if (qd_store_open(db, &o, &c, err, sizeof err) ||
            store_add(c, b2.it, b2.n, 0, res) || qd_store_remove(c, "q5", 2) ||
            qd_store_remove(c, "q210", 4))
            _exit(3);
        _exit(0);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);

    s = open_ro(db);
    qd_store_info in = info_of(s);
    assert_true(in.checkpoint_seq < in.seq);
    assert_string_equal(in.faiss_note, ""); /* the file was trusted and replayed onto */
    assert_int_equal(in.live, 258);
    assert_int_equal(in.faiss_count, 258);
    expect_top(s, b2.text[0], "q200");
    expect_top(s, b2.text[59], "q259");
    qd_store_row r;
    assert_int_equal(qd_store_get(s, "q5", 2, &r), QD_ERR_NOTFOUND);
    assert_int_equal(qd_store_get(s, "q210", 4, &r), QD_ERR_NOTFOUND);
    verify_clean(s);
    qd_store_close(s);

    /* A writable open checkpoints what it replayed. */
    s = open_rw(db);
    in = info_of(s);
    assert_int_equal(in.checkpoint_seq, in.seq);
    qd_store_close(s);

    /* Killed between writing the FAISS file and recording it in meta: the file on
     * disk is newer than meta says, and must not be trusted. */
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        char err[QD_ERRMSG_MAX];
        qd_store *c = NULL;
        qd_store_opts o = {.threads = 1};
        if (qd_store_open(db, &o, &c, err, sizeof err) || qd_store_remove(c, "q7", 2))
            _exit(3);
        qd_store_set_test_hook(die_now);
        qd_store_checkpoint(c);
        _exit(4);
    }
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    s = open_ro(db);
    in = info_of(s);
    assert_non_null(strstr(in.faiss_note, "not the checkpoint"));
    assert_int_equal(in.live, 257);
    assert_int_equal(qd_store_get(s, "q7", 2, &r), QD_ERR_NOTFOUND);
    expect_top(s, b.text[8], "q8");
    char report[4096];
    assert_true(verify_problems(s, report, sizeof report) >= 1);
    assert_non_null(strstr(report, ".faiss"));
    qd_store_close(s);
    s = open_rw(db); /* repairs: rebuilds and checkpoints */
    qd_store_close(s);
    s = open_ro(db);
    assert_string_equal(info_of(s).faiss_note, "");
    verify_clean(s);
    qd_store_close(s);

    /* Killed during a compaction, after the tombstones were deleted and before the new
     * FAISS file was recorded: the old file names rows that no longer exist, so meta
     * must no longer vouch for it. */
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        char err[QD_ERRMSG_MAX];
        qd_store *c = NULL;
        qd_store_opts o = {.threads = 1};
        if (qd_store_open(db, &o, &c, err, sizeof err))
            _exit(3);
        qd_store_set_test_hook(die_now);
        qd_store_compact(c);
        _exit(4);
    }
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    s = open_ro(db);
    in = info_of(s);
    assert_non_null(strstr(in.faiss_note, "records no checkpoint"));
    assert_int_equal(in.tombstones, 0);
    assert_int_equal(in.live, 257);
    assert_int_equal(in.faiss_count, 257);
    expect_top(s, b2.text[3], "q203");
    qd_store_close(s);
    s = open_rw(db);
    verify_clean(s);
    qd_store_close(s);
    free_batch(&b);
    free_batch(&b2);
}

/* The FAISS file cannot be written (a directory stands in its way, as a full disk
 * would refuse it): closing loses nothing, and the next writable open serves from
 * memory, reports the failing checkpoint, and recovers once the file can be written. */
static void test_checkpoint_failing(void **state)
{
    (void)state;
    const char *db = new_db("ckfail");
    char faiss[4200];
    snprintf(faiss, sizeof faiss, "%s.faiss", db);
    qd_store *s = create(db, NULL);
    batch b = make_batch(0, 50);
    add_ok(s, &b);
    assert_int_equal(unlink(faiss), 0);
    assert_int_equal(mkdir(faiss, 0700), 0);
    assert_int_not_equal(qd_store_checkpoint(s), 0);
    qd_store_info in = info_of(s);
    assert_true(in.checkpoint_failing);
    assert_int_equal(in.checkpoint_failures, 1);
    assert_true(in.checkpoint_error[0] != '\0');
    assert_true(in.unsaved_changes > 0);
    assert_true(in.unsaved_bytes >= in.unsaved_changes * (uint64_t)in.dim * sizeof(float));
    qd_store_close(s); /* its checkpoint fails too: nothing is lost */

    s = open_rw(db); /* rebuilt from SQLite; the checkpoint at open fails, the open not */
    in = info_of(s);
    assert_true(in.checkpoint_failing);
    assert_int_equal(in.live, 50);
    assert_int_equal(in.faiss_count, 50);
    expect_top(s, b.text[7], "q7");
    batch b2 = make_batch(50, 60);
    add_ok(s, &b2); /* writes go on: the database has room */
    expect_top(s, b2.text[3], "q53");

    assert_int_equal(rmdir(faiss), 0); /* the room comes back */
    assert_int_equal(qd_store_checkpoint(s), 0);
    in = info_of(s);
    assert_false(in.checkpoint_failing);
    assert_int_equal(in.unsaved_changes, 0);
    assert_int_equal(in.unsaved_bytes, 0);
    assert_string_equal(in.checkpoint_error, "");
    verify_clean(s);
    qd_store_close(s);
    free_batch(&b);
    free_batch(&b2);
}

static void test_verify_tampered_file(void **state)
{
    (void)state;
    const char *db = new_db("tamper");
    qd_store *s = create(db, NULL);
    batch b = make_batch(0, 100);
    add_ok(s, &b);
    qd_store_close(s);
    char path[4200];
    snprintf(path, sizeof path, "%s.faiss", db);
    size_t len;
    char *bytes = qt_read_file(path, &len);
    bytes[len / 2] ^= 0x40;
    qt_write_file(path, bytes, len);
    s = open_ro(db);
    /* Searching still works (rebuilt from the database), but verify says the file is
     * not what the database recorded. */
    expect_top(s, b.text[3], "q3");
    char report[4096];
    assert_int_equal(verify_problems(s, report, sizeof report), 1);
    assert_non_null(strstr(report, path));
    assert_non_null(strstr(report, "not the checkpoint"));
    qd_store_close(s);
    /* Truncated, and missing. */
    qt_write_file(path, bytes, len / 3);
    s = open_ro(db);
    assert_true(verify_problems(s, report, sizeof report) >= 1);
    qd_store_close(s);
    unlink(path);
    s = open_ro(db);
    assert_true(verify_problems(s, report, sizeof report) >= 1);
    assert_non_null(strstr(report, "missing"));
    expect_top(s, b.text[50], "q50");
    qd_store_close(s);
    free(bytes);
    free_batch(&b);
}

static void test_verify_inconsistent_index(void **state)
{
    (void)state;
    const char *db = new_db("inconsistent");
    qd_store *s = create(db, NULL);
    batch b = make_batch(0, 60);
    add_ok(s, &b);
    qd_store_row r;
    assert_int_equal(qd_store_get(s, "q5", 2, &r), 0);
    int64_t row5 = r.row;
    qd_store_row_free(&r);
    assert_int_equal(qd_store_get(s, "q6", 2, &r), 0);
    int64_t row6 = r.row;
    qd_store_row_free(&r);
    int dim = qd_model_dim(qd_store_model(s));
    qd_store_close(s);
    char report[8192];

    /* A FAISS file missing row 5, vouched for by meta. */
    qd_ann *a = load_faiss(db);
    assert_int_equal(qd_ann_remove(a, &row5, 1, NULL), 0);
    plant_faiss(db, a);
    s = open_ro(db);
    assert_int_equal(verify_problems(s, report, sizeof report), 1);
    char want[64];
    snprintf(want, sizeof want, "row %" PRId64 " (id \"q5\"): missing", row5);
    assert_non_null(strstr(report, want));
    qd_store_close(s);

    /* Row 6 with another vector, and a vector under an id no row has. */
    float v[64];
    assert_int_equal(qd_ann_get(a, row6, v), 0);
    assert_int_equal(qd_ann_remove(a, &row6, 1, NULL), 0);
    for (int d = 0; d < dim; d++)
        v[d] = -v[d];
    assert_int_equal(qd_ann_add(a, v, &row6, 1), 0);
    int64_t stray = 999999;
    assert_int_equal(qd_ann_add(a, v, &stray, 1), 0);
    plant_faiss(db, a);
    qd_ann_free(a);
    s = open_ro(db);
    assert_int_equal(verify_problems(s, report, sizeof report), 3);
    snprintf(want, sizeof want, "row %" PRId64 " (id \"q6\"): the FAISS index holds a different",
             row6);
    assert_non_null(strstr(report, want));
    assert_non_null(strstr(report, "1 vector(s) that belong to no"));
    /* Searches never return the stray id: it names no row. */
    qd_store_hits h;
    assert_int_equal(qd_store_search(s, v, 1, 60, -INFINITY, NULL, &h), 0);
    for (size_t i = 0; i < h.n; i++)
        assert_true(h.hit[i].row.row != stray);
    qd_store_hits_free(&h);
    qd_store_close(s);

    /* A stored vector damaged in SQLite. */
    sql(db, "UPDATE questions SET vec = zeroblob(8) WHERE ext_id = 'q9'", "");
    sql(db, "UPDATE questions SET text_key = 12345 WHERE ext_id = 'q11'", "");
    s = open_ro(db);
    uint64_t np = verify_problems(s, report, sizeof report);
    assert_true(np >= 5);
    assert_non_null(strstr(report, "id \"q9\"): stored vector has 8 bytes"));
    assert_non_null(strstr(report, "id \"q11\"): stored text key"));
    qd_store_close(s);
    free_batch(&b);
}

static void test_model_mismatch(void **state)
{
    (void)state;
    char err[QD_ERRMSG_MAX];
    const char *db = new_db("mismatch");
    qd_store *s = create(db, NULL);
    char fp[17];
    snprintf(fp, sizeof fp, "%s", qd_model_fingerprint(qd_store_model(s)));
    qd_store_close(s);
    qd_store_opts o = {.model_path = qt_path(qt_fixtures_dir(), "fwd_ngram.qdm"),
                       .readonly = 1};
    assert_int_equal(qd_store_open(db, &o, &s, err, sizeof err), QD_ERR_MISMATCH);
    assert_null(s);
    assert_non_null(strstr(err, fp));
    assert_non_null(strstr(err, "fwd_ngram.qdm"));
    o.readonly = 0;
    assert_int_equal(qd_store_open(db, &o, &s, err, sizeof err), QD_ERR_MISMATCH);
    /* A missing model, given or remembered, is named. */
    o.model_path = "/nonexistent/m.qdm";
    assert_int_equal(qd_store_open(db, &o, &s, err, sizeof err), QD_ERR_NOTFOUND);
    assert_non_null(strstr(err, "/nonexistent/m.qdm"));
    sql(db, "UPDATE meta SET value = '/nonexistent/gone.qdm' WHERE key = 'model_path'", "");
    o.model_path = NULL;
    assert_int_equal(qd_store_open(db, &o, &s, err, sizeof err), QD_ERR_NOTFOUND);
    assert_non_null(strstr(err, "gone.qdm"));
    assert_non_null(strstr(err, "--model"));
    /* --model with the right file works and is remembered again. */
    o.model_path = model_path();
    assert_int_equal(qd_store_open(db, &o, &s, err, sizeof err), 0);
    qd_store_close(s);
    o.model_path = NULL;
    assert_int_equal(qd_store_open(db, &o, &s, err, sizeof err), 0);
    qd_store_close(s);
    /* create refuses an existing path and a missing model. */
    qd_store_opts c = {.model_path = model_path()};
    assert_int_equal(qd_store_create(db, &c, &s, err, sizeof err), QD_ERR_EXISTS);
    c.model_path = "/nonexistent/m.qdm";
    assert_int_equal(qd_store_create(new_db("nomodel"), &c, &s, err, sizeof err),
                     QD_ERR_NOTFOUND);
    assert_int_equal(access(new_db("nomodel"), F_OK), -1); /* nothing left behind */
    c.model_path = model_path();
    c.index_spec = "NoSuchIndex42";
    assert_int_equal(qd_store_create(new_db("badspec"), &c, &s, err, sizeof err), QD_ERR_INVAL);
    assert_non_null(strstr(err, "NoSuchIndex42"));
    assert_int_equal(access(new_db("badspec"), F_OK), -1);
}

static void test_not_a_store(void **state)
{
    (void)state;
    char err[QD_ERRMSG_MAX];
    qd_store *s = NULL;
    qd_store_opts o = {.readonly = 1};
    assert_int_equal(qd_store_open(new_db("missing"), &o, &s, err, sizeof err), QD_ERR_NOTFOUND);
    const char *txt = new_db("text");
    qt_write_file(txt, "hello, this is not a database at all, just some text....", 56);
    assert_int_equal(qd_store_open(txt, &o, &s, err, sizeof err), QD_ERR_FORMAT);
    assert_non_null(strstr(err, "not a qdup index"));
    const char *other = new_db("other");
    sql(other, "CREATE TABLE t (x)", "");
    assert_int_equal(qd_store_open(other, &o, &s, err, sizeof err), QD_ERR_FORMAT);
    assert_non_null(strstr(err, "application id"));
    /* A newer schema version is refused. */
    const char *db = new_db("newer");
    s = create(db, NULL);
    qd_store_close(s);
    sql(db, "UPDATE meta SET value = 3 WHERE key = 'schema_version'", "");
    assert_int_equal(qd_store_open(db, &o, &s, err, sizeof err), QD_ERR_VERSION);
    assert_non_null(strstr(err, "schema version 3"));
}

static void test_writer_lock(void **state)
{
    (void)state;
    char err[QD_ERRMSG_MAX];
    const char *db = new_db("lock");
    qd_store *s = create(db, NULL);
    qd_store *t = NULL;
    qd_store_opts o = {0};
    assert_int_equal(qd_store_open(db, &o, &t, err, sizeof err), QD_ERR_BUSY);
    char pid[32];
    snprintf(pid, sizeof pid, "pid %ld", (long)getpid());
    assert_non_null(strstr(err, pid));
    o.readonly = 1;
    assert_int_equal(qd_store_open(db, &o, &t, err, sizeof err), 0);
    qd_store_close(t);
    int fd;
    assert_int_equal(qd_store_lock(db, &fd, err, sizeof err), QD_ERR_BUSY);
    qd_store_close(s);
    assert_int_equal(qd_store_lock(db, &fd, err, sizeof err), 0);
    qd_store_unlock(fd);
    s = open_rw(db);
    qd_store_close(s);
}

static void test_hnsw_tombstones(void **state)
{
    (void)state;
    const char *db = new_db("hnsw");
    qd_store *s = create(db, "HNSW16");
    batch b = make_batch(0, 400);
    add_ok(s, &b);
    assert_false(info_of(s).can_remove);
    /* Remove every question but one of a run of neighbours of q100: its nearest
     * neighbours, so that searches must look past many tombstones. */
    char ids[60][32];
    size_t n = search_text(s, b.text[100], 60, NULL, ids, NULL);
    assert_int_equal(n, 60);
    assert_string_equal(ids[0], "q100");
    const char *rm[59];
    size_t lens[59];
    for (int i = 0; i < 59; i++) {
        rm[i] = ids[i + 1];
        lens[i] = strlen(rm[i]);
    }
    char removed[59][32];
    memcpy(removed, ids + 1, sizeof removed);
    size_t got;
    assert_int_equal(qd_store_remove_many(s, rm, lens, 59, NULL, &got), 0);
    assert_int_equal(got, 59);
    qd_store_info in = info_of(s);
    assert_int_equal(in.live, 341);
    assert_int_equal(in.tombstones, 59);
    assert_int_equal(in.faiss_count, 400); /* tombstones stay in FAISS */

    char ids2[10][32];
    assert_int_equal(search_text(s, b.text[100], 10, NULL, ids2, NULL), 10);
    assert_string_equal(ids2[0], "q100");
    for (int i = 0; i < 10; i++)
        for (int j = 0; j < 59; j++)
            assert_string_not_equal(ids2[i], removed[j]);
    /* A removed question's own text finds other questions only. */
    assert_int_equal(search_text(s, b.text[atoi(removed[0] + 1)], 10, NULL, ids2, NULL), 10);
    for (int i = 0; i < 10; i++)
        assert_string_not_equal(ids2[i], removed[0]);
    verify_clean(s);
    qd_store_close(s);

    /* The file holds the tombstones; reopening keeps filtering them. */
    s = open_ro(db);
    assert_int_equal(info_of(s).faiss_count, 400);
    assert_int_equal(search_text(s, b.text[100], 10, NULL, ids2, NULL), 10);
    for (int i = 0; i < 10; i++)
        for (int j = 0; j < 59; j++)
            assert_string_not_equal(ids2[i], removed[j]);
    verify_clean(s);
    qd_store_close(s);

    s = open_rw(db);
    assert_int_equal(qd_store_compact(s), 0);
    in = info_of(s);
    assert_int_equal(in.faiss_count, 341);
    assert_int_equal(in.tombstones, 0);
    expect_top(s, b.text[100], "q100");
    expect_top(s, b.text[399], "q399");
    verify_clean(s);
    assert_int_equal(qd_store_set_param(s, "efSearch", 64), 0);
    assert_int_equal(qd_store_set_param(s, "nprobe", 4), QD_ERR_INVAL);
    qd_store_close(s);
    s = open_ro(db);
    assert_int_equal(info_of(s).faiss_count, 341);
    verify_clean(s);
    qd_store_close(s);
    free_batch(&b);
}

static void test_ivf_and_sq8(void **state)
{
    (void)state;
    static const char *specs[] = {"IVF4,Flat", "SQ8"};
    for (int k = 0; k < 2; k++) {
        char name[32];
        snprintf(name, sizeof name, "kind%d", k);
        const char *db = new_db(name);
        qd_store *s = create(db, specs[k]);
        batch b = make_batch(0, 300);
        add_ok(s, &b); /* trains on this first batch */
        assert_true(info_of(s).can_remove);
        assert_int_equal(qd_store_remove(s, "q3", 2), 0);
        assert_int_equal(info_of(s).faiss_count, 299);
        if (k == 0)
            assert_int_equal(qd_store_set_param(s, "nprobe", 4), 0);
        for (size_t i = 10; i < 300; i += 37) {
            char ids[1][32];
            assert_int_equal(search_text(s, b.text[i], 1, NULL, ids, NULL), 1);
            assert_string_equal(ids[0], b.id[i]);
        }
        verify_clean(s);
        qd_store_close(s);
        s = open_ro(db);
        verify_clean(s);
        qd_store_close(s);
        s = open_rw(db);
        assert_int_equal(qd_store_compact(s), 0); /* retrains from the database */
        assert_int_equal(info_of(s).faiss_count, 299);
        verify_clean(s);
        qd_store_close(s);
        free_batch(&b);
    }
}

static void test_export(void **state)
{
    (void)state;
    const char *db = new_db("export");
    qd_store *s = create(db, NULL);
    batch b = make_batch(0, 40);
    strcpy(b.text[3], "w3 \"quoted\" w4 \\ w5\nline two \xC3\xA9");
    b.it[3].text_len = strlen(b.text[3]);
    add_ok(s, &b);
    assert_int_equal(qd_store_remove(s, "q7", 2), 0);
    const char *path = qt_path(qt_tmp_dir(), "export.jsonl");
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(qd_store_export(s, f), 0);
    fclose(f);
    f = fopen(path, "r");
    int dim = qd_model_dim(qd_store_model(s));
    char line[8192];
    int lines = 0;
    while (fgets(line, sizeof line, f)) {
        json_error_t je;
        json_t *o = json_loads(line, 0, &je);
        if (!o)
            fail_msg("line %d: %s", lines + 1, je.text);
        const char *id = json_string_value(json_object_get(o, "id"));
        const char *text = json_string_value(json_object_get(o, "text"));
        json_t *vec = json_object_get(o, "vector");
        assert_non_null(id);
        assert_string_not_equal(id, "q7");
        int i = atoi(id + 1);
        assert_string_equal(text, b.text[i]);
        assert_int_equal(json_array_size(vec), dim);
        float v[64];
        encode(s, text, v);
        for (int d = 0; d < dim; d++)
            assert_true((float)json_number_value(json_array_get(vec, (size_t)d)) == v[d]);
        json_decref(o);
        lines++;
    }
    fclose(f);
    assert_int_equal(lines, 39);
    qd_store_close(s);
    free_batch(&b);
}

/* --- verdicts and the schema version 1 -> 2 migration ------------------------------- */

/* Column 0 of the first row of a query on a database file, as text ("" if none). */
static void sql_text(const char *db, const char *stmt, char *buf, size_t len)
{
    sqlite3 *h = NULL;
    assert_int_equal(sqlite3_open(db, &h), SQLITE_OK);
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(h, stmt, -1, &st, NULL) != SQLITE_OK)
        fail_msg("%s: %s", stmt, sqlite3_errmsg(h));
    const unsigned char *t = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_text(st, 0) : NULL;
    snprintf(buf, len, "%s", t ? (const char *)t : "");
    sqlite3_finalize(st);
    assert_int_equal(sqlite3_close(h), SQLITE_OK);
}

/* Every schema object but the verdicts table, one line each, in name order. */
#define SCHEMA_V1_OBJECTS                                                                 \
    "SELECT group_concat(type || ' ' || name || ': ' || ifnull(sql, ''), char(10)) FROM " \
    "(SELECT * FROM sqlite_master WHERE name <> 'verdicts' ORDER BY name)"

/* The version 1 schema as it was released (schema.sql before verdicts), kept here so
 * the migration is tested on what version 1 stores really hold. */
static const char schema_v1[] =
    "PRAGMA application_id = 1363432784;\n"
    "CREATE TABLE meta (\n    key   TEXT PRIMARY KEY NOT NULL,\n    value              -- any "
    "type; NULL where the comment above allows it\n) WITHOUT ROWID;\n"
    "INSERT INTO meta (key, value) VALUES ('schema_version', 1);\n"
    "CREATE TABLE questions (\n"
    "    -- Also the FAISS id. AUTOINCREMENT: ids are never reused, even after compaction\n"
    "    -- deleted the highest ones, so a stale FAISS file can never name the wrong row.\n"
    "    row         INTEGER PRIMARY KEY AUTOINCREMENT,\n"
    "    ext_id      TEXT NOT NULL CHECK (length(CAST(ext_id AS BLOB)) BETWEEN 1 AND 256),\n"
    "    text        TEXT NOT NULL CHECK (length(CAST(text AS BLOB)) >= 1),\n"
    "    -- qd_store_text_key() of text (64-bit hash of its token sequence), as a signed\n"
    "    -- integer: exact duplicates are refused by comparing these.\n"
    "    text_key    INTEGER NOT NULL,\n"
    "    -- dim float32 values, little-endian: 4 * dim bytes.\n"
    "    vec         BLOB NOT NULL,\n"
    "    created     REAL NOT NULL,   -- unix time, seconds\n"
    "    removed     REAL,            -- unix time of removal; NULL while live\n"
    "    seq         INTEGER NOT NULL CHECK (seq >= 1),  -- the change that added it\n"
    "    removed_seq INTEGER,         -- the change that removed it; NULL while live\n"
    "    CHECK ((removed IS NULL) = (removed_seq IS NULL))\n);\n"
    "CREATE UNIQUE INDEX questions_live_id ON questions (ext_id) WHERE removed IS NULL;\n"
    "CREATE INDEX questions_seq ON questions (seq);\n"
    "CREATE INDEX questions_removed_seq ON questions (removed_seq) WHERE removed_seq IS NOT "
    "NULL;\n";

static void verdict_ok(qd_store *s, const char *a, const char *b, int dup)
{
    if (qd_store_verdict(s, a, strlen(a), b, strlen(b), dup) != 0)
        fail_msg("verdict %s of %s: %s", a, b, qd_store_errmsg(s));
}

/* Exports the verdicts to a file and reads it back with the pair reader qdup-train
 * uses. */
static qd_pairs *export_pairs(qd_store *s, const char *name)
{
    char err[QD_ERRMSG_MAX];
    const char *path = qt_path(qt_tmp_dir(), name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(qd_store_export_verdicts(s, f), 0);
    assert_int_equal(fclose(f), 0);
    qd_pairs *p = NULL;
    if (qd_pairs_load(path, NULL, NULL, &p, err, sizeof err))
        fail_msg("%s", err);
    assert_int_equal(p->skipped, 0);
    return p;
}

static void test_verdicts(void **state)
{
    (void)state;
    const char *db = new_db("verdicts");
    qd_store *s = create(db, NULL);
    batch b = make_batch(0, 10);
    strcpy(b.text[3], "w3 \"quoted\"\tw4 w5\nline two");
    b.it[3].text_len = strlen(b.text[3]);
    add_ok(s, &b);
    verdict_ok(s, "q1", "q0", 1);
    verdict_ok(s, "q2", "q0", 0);
    verdict_ok(s, "q3", "q9", 1);
    verdict_ok(s, "q1", "q0", 0); /* replaces the first */
    assert_int_equal(qd_store_verdict(s, "q1", 2, "nope", 4, 1), QD_ERR_NOTFOUND);
    assert_non_null(strstr(qd_store_errmsg(s), "nope"));
    assert_int_equal(qd_store_verdict(s, "q1", 2, "q1", 2, 1), QD_ERR_INVAL);
    /* Removing a question keeps what was learned from it, but takes no new verdict. */
    assert_int_equal(qd_store_remove(s, "q0", 2), 0);
    assert_int_equal(qd_store_verdict(s, "q4", 2, "q0", 2, 1), QD_ERR_NOTFOUND);
    assert_int_equal(qd_store_compact(s), 0);

    qd_pairs *p = export_pairs(s, "verdicts.tsv");
    assert_int_equal(p->n, 3);
    /* Oldest first: the replaced verdict counts from when it was replaced. */
    const int want_new[3] = {2, 3, 1}, want_old[3] = {0, 9, 0}, want_dup[3] = {0, 1, 0};
    for (size_t i = 0; i < 3; i++) {
        assert_string_equal(p->q1[i], b.text[want_new[i]]);
        assert_string_equal(p->q2[i], b.text[want_old[i]]);
        assert_int_equal(p->dup[i], want_dup[i]);
        assert_true(p->qid1[i] >= 1 && p->qid2[i] >= 1);
    }
    /* One question, one qid; different questions, different qids. */
    assert_int_equal(p->qid2[0], p->qid2[2]);
    assert_true(p->qid1[0] != p->qid1[1] && p->qid1[0] != p->qid1[2] &&
                p->qid1[1] != p->qid1[2] && p->qid2[0] != p->qid2[1] &&
                p->qid1[0] != p->qid2[0]);
    qd_pairs_free(p);
    qd_store_close(s);

    /* Read-only: exported, never written. */
    s = open_ro(db);
    assert_int_equal(qd_store_verdict(s, "q4", 2, "q5", 2, 1), QD_ERR_FORBIDDEN);
    p = export_pairs(s, "verdicts-ro.tsv");
    assert_int_equal(p->n, 3);
    qd_pairs_free(p);
    qd_store_close(s);
    free_batch(&b);
}

/* Another model of the fixture's dimension and vocabulary (variant 1, 2, ...). */
static const char *variant_model(int v)
{
    static char path[2][4200];
    char *out = path[v % 2];
    snprintf(out, sizeof path[0], "%s/variant%d.qdm", qt_tmp_dir(), v);
    qt_variant_model(model_path(), out, v);
    return out;
}

static const char *second_model(void)
{
    return variant_model(1);
}

static uint64_t reencode_problems(qd_store *s)
{
    uint64_t bad = 99;
    int rc = qd_store_check_vectors(s, NULL, 0, &bad);
    assert_true(rc == 0 || rc == QD_ERR_MISMATCH);
    assert_int_equal(rc == 0, bad == 0);
    return bad;
}

/* The hook of test_reembed_taken_over: a second staging, of another model, starts while
 * the first is between two chunks. */
static const char *takeover_db;
static void stage_other(const char *point)
{
    char err[QD_ERRMSG_MAX];
    if (strcmp(point, "reembed:chunk") != 0 || !takeover_db)
        return;
    const char *db = takeover_db;
    takeover_db = NULL; /* once: the nested staging passes here too */
    assert_int_equal(qd_store_reembed_stage(db, variant_model(2), 2, NULL, NULL, NULL, err,
                                            sizeof err), 0);
}

/* Two stagings of different models never mix their vectors: the one taken over fails
 * (busy) and leaves the other's complete set, which switches cleanly. */
static void test_reembed_taken_over(void **state)
{
    (void)state;
    const char *db = new_db("takeover");
    char err[QD_ERRMSG_MAX], fp2[17];
    qd_store *s = create(db, "Flat");
    batch b = make_batch(0, 300);
    add_ok(s, &b);
    qd_store_close(s);
    takeover_db = db;
    qd_store_set_test_hook(stage_other);
    int rc = qd_store_reembed_stage(db, variant_model(1), 2, NULL, NULL, NULL, err, sizeof err);
    qd_store_set_test_hook(NULL);
    assert_int_equal(rc, QD_ERR_BUSY);
    assert_non_null(strstr(err, "taken over"));
    s = open_rw(db);
    qd_store_staged sg;
    assert_int_equal(qd_store_reembed_status(s, &sg), 0);
    assert_true(sg.staged && sg.complete);
    assert_int_equal(sg.rows, 300);
    assert_int_equal(qd_store_reembed_switch(s, NULL, fp2), 0);
    assert_string_equal(fp2, sg.fingerprint);
    assert_int_equal(reencode_problems(s), 0);
    qd_store_close(s);
    free_batch(&b);
}

/* The hook of test_reembed_stage_after_switch: the writer switches to the staged model
 * after a second staging of the same model read the store's model and before it
 * starts. */
static qd_store *switch_store;
static void switch_meanwhile(const char *point)
{
    if (strcmp(point, "reembed:begin") != 0 || !switch_store)
        return;
    qd_store *s = switch_store;
    switch_store = NULL;
    assert_int_equal(qd_store_reembed_switch(s, NULL, NULL), 0);
}

/* A staging of the model the store switched to meanwhile has nothing to do: it says
 * so (exists) and leaves no staging behind for a later reload to "switch" to the model
 * already in force. */
static void test_reembed_stage_after_switch(void **state)
{
    (void)state;
    const char *db = new_db("stagelate");
    char err[QD_ERRMSG_MAX];
    qd_store *s = create(db, "Flat");
    batch b = make_batch(0, 50);
    add_ok(s, &b);
    const char *m2 = second_model();
    assert_int_equal(qd_store_reembed_stage(db, m2, 2, NULL, NULL, NULL, err, sizeof err), 0);
    switch_store = s;
    qd_store_set_test_hook(switch_meanwhile);
    int rc = qd_store_reembed_stage(db, m2, 2, NULL, NULL, NULL, err, sizeof err);
    qd_store_set_test_hook(NULL);
    assert_null(switch_store); /* the switch ran */
    if (rc != QD_ERR_EXISTS)
        fail_msg("staging the model in force: %s (%s)", qd_strerror(rc), err);
    assert_non_null(strstr(err, "already uses"));
    qd_store_staged sg;
    assert_int_equal(qd_store_reembed_status(s, &sg), 0);
    assert_false(sg.staged);
    assert_int_equal(qd_store_reembed_switch(s, NULL, NULL), QD_ERR_NOTFOUND);
    assert_int_equal(reencode_problems(s), 0);
    qd_store_close(s);
    free_batch(&b);
}

/* reembed: staging beside an open writer, rows added and removed after the staging
 * encoded with the new model at the switch, the switch remembered at reopen. */
static void test_reembed(void **state)
{
    (void)state;
    const char *db = new_db("reembed");
    const char *m2 = second_model();
    char err[QD_ERRMSG_MAX], fp1[17], oldfp[17], newfp[17];
    qd_store *s = create(db, "Flat");
    batch b = make_batch(0, 300), late = make_batch(300, 310);
    add_ok(s, &b);
    assert_int_equal(qd_store_remove(s, "q7", 2), 0);
    snprintf(fp1, sizeof fp1, "%s", qd_model_fingerprint(qd_store_model(s)));

    /* Nothing staged: nothing to switch to. */
    assert_int_equal(qd_store_reembed_switch(s, NULL, NULL), QD_ERR_NOTFOUND);
    /* The model in force, or one of another dimension, is refused. */
    assert_int_equal(qd_store_reembed_stage(db, model_path(), 2, NULL, NULL, NULL, err,
                                            sizeof err), QD_ERR_EXISTS);
    assert_int_equal(qd_store_reembed_stage(db, qt_path(qt_fixtures_dir(), "fwd_ngram.qdm"),
                                            2, NULL, NULL, NULL, err, sizeof err),
                     QD_ERR_MISMATCH);
    assert_non_null(strstr(err, "dimension"));

    /* Staged while s stays open for writing (as a daemon would). */
    qd_store_staged sg;
    assert_int_equal(qd_store_reembed_stage(db, m2, 2, NULL, NULL, &sg, err, sizeof err), 0);
    assert_true(sg.staged && sg.complete);
    assert_int_equal(sg.rows, 300);
    assert_int_equal(qd_store_reembed_status(s, &sg), 0);
    assert_true(sg.staged && sg.complete);
    assert_string_not_equal(sg.fingerprint, fp1);
    /* Staging changed nothing in force. */
    assert_string_equal(info_of(s).model_fingerprint, fp1);
    assert_int_equal(reencode_problems(s), 0);

    /* Changes after the staging: adds (encoded with the old model) and a removal. */
    add_ok(s, &late);
    assert_int_equal(qd_store_remove(s, "q8", 2), 0);
    const qd_model *old = qd_store_pin(s);
    qd_store_unpin(s);

    assert_int_equal(qd_store_reembed_switch(s, oldfp, newfp), 0);
    assert_string_equal(oldfp, fp1);
    assert_string_equal(newfp, sg.fingerprint);
    assert_ptr_not_equal(qd_store_model(s), old);
    qd_store_info in = info_of(s);
    assert_string_equal(in.model_fingerprint, newfp);
    assert_int_equal(in.live, 308);
    assert_int_equal(in.checkpoint_seq, in.seq);
    assert_int_equal(reencode_problems(s), 0);
    verify_clean(s);
    /* Every question, the late ones included, is found by its new-model vector. */
    expect_top(s, b.text[100], "q100");
    expect_top(s, late.text[5], "q305");
    assert_int_equal(qd_store_reembed_status(s, &sg), 0);
    assert_false(sg.staged);
    assert_int_equal(qd_store_reembed_switch(s, NULL, NULL), QD_ERR_NOTFOUND);
    qd_store_close(s);

    /* Reopened: the new model is remembered. */
    s = open_rw(db);
    assert_string_equal(info_of(s).model_fingerprint, newfp);
    assert_int_equal(info_of(s).faiss_note[0], '\0');
    assert_int_equal(reencode_problems(s), 0);

    /* A staging not finished (as if killed) is refused by the switch, and resumed. */
    assert_int_equal(qd_store_reembed_stage(db, model_path(), 2, NULL, NULL, &sg, err,
                                            sizeof err), 0);
    sql(db, "UPDATE meta SET value = 0 WHERE key = 'reembed_complete'", "");
    sql(db, "DELETE FROM reembed WHERE row > 150", "");
    assert_int_equal(qd_store_reembed_switch(s, NULL, NULL), QD_ERR_BUSY);
    assert_non_null(strstr(qd_store_errmsg(s), "not finished"));
    assert_string_equal(info_of(s).model_fingerprint, newfp);
    assert_int_equal(qd_store_reembed_stage(db, model_path(), 2, NULL, NULL, &sg, err,
                                            sizeof err), 0);
    assert_int_equal(sg.rows, 310);
    assert_int_equal(qd_store_reembed_switch(s, NULL, NULL), 0);
    assert_string_equal(info_of(s).model_fingerprint, fp1);
    assert_int_equal(reencode_problems(s), 0);
    /* The check itself sees a vector of the other model. */
    qd_store_close(s);
    sql(db, "UPDATE questions SET vec = (SELECT vec FROM questions WHERE row = 2) "
            "WHERE row = 3", "");
    s = open_ro(db);
    assert_int_equal(reencode_problems(s), 1);
    qd_store_close(s);
    free_batch(&b);
    free_batch(&late);
}

/* Search parameters set on the index in force stay set on the indexes a compaction
 * and a switch of model build: with nprobe = the number of lists, IVF searches every
 * list and finds 50 neighbours for every question; at its default nprobe 1 it searches
 * one list of about 25 and comes up short. Returns the questions that came up short. */
static size_t short_lists(qd_store *s, batch *b)
{
    size_t n = 0;
    for (size_t i = 0; i < b->n; i += 7) {
        char ids[50][32];
        n += search_text(s, b->text[i], 50, NULL, ids, NULL) < 50;
    }
    return n;
}

static void test_params_survive_rebuild(void **state)
{
    (void)state;
    const char *db = new_db("params");
    char err[QD_ERRMSG_MAX];
    qd_store *s = create(db, "IVF16,Flat");
    batch b = make_batch(0, 400);
    add_ok(s, &b);
    assert_true(short_lists(s, &b) > 0); /* nprobe 1: the check can fail */
    assert_int_equal(qd_store_set_param(s, "nprobe", 16), 0);
    assert_int_equal(short_lists(s, &b), 0);
    assert_int_equal(qd_store_compact(s), 0);
    assert_int_equal(short_lists(s, &b), 0);
    assert_int_equal(qd_store_reembed_stage(db, second_model(), 2, NULL, NULL, NULL, err,
                                            sizeof err), 0);
    assert_int_equal(qd_store_reembed_switch(s, NULL, NULL), 0);
    assert_int_equal(short_lists(s, &b), 0);
    qd_store_close(s);
    free_batch(&b);
}

static void test_migrate_v1(void **state)
{
    (void)state;
    char was[8192], now[8192], fresh_sql[2048], migrated_sql[2048], v[64];
    /* A blank database with the version 1 schema: what a version 1 store holds. */
    const char *ref = new_db("schema-v1");
    sqlite3 *h = NULL;
    assert_int_equal(sqlite3_open(ref, &h), SQLITE_OK);
    assert_int_equal(sqlite3_exec(h, schema_v1, NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_close(h), SQLITE_OK);
    sql_text(ref, SCHEMA_V1_OBJECTS, was, sizeof was);

    /* A store made by today's code, rewritten to exactly version 1. */
    const char *db = new_db("migrate");
    qd_store *s = create(db, NULL);
    batch b = make_batch(0, 30);
    add_ok(s, &b);
    assert_int_equal(qd_store_remove(s, "q5", 2), 0);
    qd_store_close(s);
    sql_text(db, "SELECT sql FROM sqlite_master WHERE name = 'verdicts'", fresh_sql,
             sizeof fresh_sql);
    assert_non_null(strstr(fresh_sql, "CREATE TABLE verdicts"));
    sql(db, "DROP TABLE verdicts", "");
    sql(db, "UPDATE meta SET value = 1 WHERE key = 'schema_version'", "");
    sql_text(db, SCHEMA_V1_OBJECTS, now, sizeof now);
    assert_string_equal(now, was);

    /* Read-only, it stays version 1 and works: no verdicts yet. */
    s = open_ro(db);
    assert_int_equal(info_of(s).live, 29);
    expect_top(s, b.text[7], "q7");
    qd_pairs *p = export_pairs(s, "verdicts-v1.tsv");
    assert_int_equal(p->n, 0);
    qd_pairs_free(p);
    qd_store_close(s);
    sql_text(db, "SELECT value FROM meta WHERE key = 'schema_version'", v, sizeof v);
    assert_string_equal(v, "1");

    /* Opened for writing, it becomes version 2 with all its questions. */
    s = open_rw(db);
    sql_text(db, "SELECT value FROM meta WHERE key = 'schema_version'", v, sizeof v);
    assert_string_equal(v, "2");
    sql_text(db, "SELECT sql FROM sqlite_master WHERE name = 'verdicts'", migrated_sql,
             sizeof migrated_sql);
    assert_string_equal(migrated_sql, fresh_sql);
    assert_int_equal(info_of(s).live, 29);
    for (size_t i = 0; i < b.n; i++) {
        qd_store_row r;
        assert_int_equal(qd_store_get(s, b.id[i], strlen(b.id[i]), &r),
                         i == 5 ? QD_ERR_NOTFOUND : 0);
        if (i != 5)
            assert_string_equal(r.text, b.text[i]);
        qd_store_row_free(&r);
    }
    verdict_ok(s, "q8", "q7", 1);
    verify_clean(s);
    qd_store_close(s);
    s = open_rw(db); /* a version 2 store opens as it is */
    p = export_pairs(s, "verdicts-v2.tsv");
    assert_int_equal(p->n, 1);
    assert_string_equal(p->q1[0], b.text[8]);
    assert_int_equal(p->dup[0], 1);
    qd_pairs_free(p);
    qd_store_close(s);
    free_batch(&b);
}

/* --- concurrency ------------------------------------------------------------------- */

#define CB 16    /* rows per batch */
#define NB 24    /* batches added while the searchers run */

typedef struct conc {
    qd_store *s;
    float *vec;           /* (NB * CB, dim) each batch row's vector */
    char (*id)[32];       /* (NB * CB) their ids */
    int dim;
    volatile int done;    /* set by the writer when all batches are in */
    int partial;          /* searches that saw part of a batch (must stay 0) */
    int bad;              /* other wrong answers */
    pthread_mutex_t mu;   /* guards partial and bad */
} conc;

static void *searcher(void *arg)
{
    conc *c = arg;
    uint64_t st = (uint64_t)pthread_self() | 1;
    int last = 0;
    while (!last) {
        last = c->done;
        size_t bi = qt_rand(&st) % NB;
        qd_store_hits h[CB];
        int rc = qd_store_search(c->s, c->vec + bi * CB * (size_t)c->dim, CB, 1, -1, NULL, h);
        int found = 0, bad = rc != 0;
        for (int i = 0; i < CB && !rc; i++) {
            if (h[i].n == 1 && strcmp(h[i].hit[0].row.ext_id, c->id[bi * CB + i]) == 0)
                found++;
            if (h[i].n != 1)
                bad = 1;
            qd_store_hits_free(&h[i]);
        }
        qd_store_row r;
        if (qd_store_get(c->s, "base0", 5, &r) != 0)
            bad = 1;
        qd_store_row_free(&r);
        pthread_mutex_lock(&c->mu);
        c->partial += found != 0 && found != CB;
        c->bad += bad;
        /* After the writer finished, every batch is in. */
        c->bad += last && found != CB;
        pthread_mutex_unlock(&c->mu);
    }
    return NULL;
}

static void test_concurrent_search_during_add(void **state)
{
    (void)state;
    const char *db = new_db("conc");
    qd_store *s = create(db, NULL);
    batch base = make_batch(5000, 5400);
    for (size_t i = 0; i < base.n; i++) {
        snprintf(base.id[i], sizeof base.id[i], "base%zu", i);
        base.it[i].ext_id_len = strlen(base.id[i]);
    }
    add_ok(s, &base);
    conc c = {.s = s, .dim = qd_model_dim(qd_store_model(s))};
    pthread_mutex_init(&c.mu, NULL);
    batch b = make_batch(0, NB * CB);
    c.vec = calloc((size_t)NB * CB * (size_t)c.dim, sizeof(float));
    c.id = b.id;
    for (size_t i = 0; i < b.n; i++)
        encode(s, b.text[i], c.vec + i * (size_t)c.dim);
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&th[i], NULL, searcher, &c), 0);
    for (int k = 0; k < NB; k++) {
        qd_store_result res[CB];
        assert_int_equal(store_add(s, b.it + k * CB, CB, 0, res), 0);
        for (int i = 0; i < CB; i++)
            assert_int_equal(res[i].status, QD_STORE_ADDED);
        if (k % 5 == 4) {
            /* A removal and a checkpoint among the adds. */
            char id[32];
            snprintf(id, sizeof id, "base%d", 100 + k);
            assert_int_equal(qd_store_remove(s, id, strlen(id)), 0);
            assert_int_equal(qd_store_checkpoint(s), 0);
        }
    }
    c.done = 1;
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(c.partial, 0);
    assert_int_equal(c.bad, 0);
    verify_clean(s);
    qd_store_close(s);
    pthread_mutex_destroy(&c.mu);
    free(c.vec);
    free_batch(&b);
    free_batch(&base);
}

/* Searchers that pin the model, encode a stored question's text, search and unpin,
 * while the store switches model back and forth: each finds its question with cosine
 * 1, which a query encoded with one model and searched in the other's index would not
 * (qd_store_pin: queries in flight finish on the model they started with). */
typedef struct pinned {
    qd_store *s;          /* the store */
    batch *b;             /* its questions */
    volatile int done;    /* set by the test */
    int searches;         /* searches made (under mu) */
    int bad;              /* searches that did not find their question exactly (mu) */
    pthread_mutex_t mu;   /* guards the counts */
} pinned;

/* Pins s's model, encodes text with it, calls wait(arg) if not NULL, searches for the
 * nearest question and unpins: 1 if that is `id` with cosine 1 (*cosine, if not NULL,
 * gets the cosine found, -2 for none). */
static int pinned_finds(qd_store *s, qd_enc_ws *ws, const char *text, const char *id,
                        void (*wait)(void *), void *arg, float *cosine)
{
    float v[64];
    size_t len = strlen(text);
    const qd_model *m = qd_store_pin(s);
    int rc = ws ? qd_enc_texts(m, ws, &text, &len, 1, v) : QD_ERR_NOMEM;
    if (wait)
        wait(arg);
    qd_store_hits h = {0, NULL};
    if (!rc)
        rc = qd_store_search(s, v, 1, 1, -INFINITY, NULL, &h);
    qd_store_unpin(s);
    int found = !rc && h.n == 1 && strcmp(h.hit[0].row.ext_id, id) == 0;
    float c = found ? h.hit[0].cosine : -2;
    qd_store_hits_free(&h);
    if (cosine)
        *cosine = c;
    return c > 0.9999f;
}

static void *pinned_searcher(void *arg)
{
    pinned *p = arg;
    qd_enc_ws *ws = qd_enc_ws_new();
    for (size_t i = 0; !p->done; i = (i + 7) % p->b->n) {
        int ok = pinned_finds(p->s, ws, p->b->text[i], p->b->id[i], NULL, NULL, NULL);
        pthread_mutex_lock(&p->mu);
        p->searches++;
        p->bad += !ok;
        pthread_mutex_unlock(&p->mu);
    }
    qd_enc_ws_free(ws);
    return NULL;
}

static void test_switch_under_searches(void **state)
{
    (void)state;
    const char *db = new_db("pinned");
    char err[QD_ERRMSG_MAX];
    qd_store *s = create(db, "Flat");
    batch b = make_batch(0, 300);
    add_ok(s, &b);
    const char *models[2] = {variant_model(1), model_path()};
    pinned p = {.s = s, .b = &b};
    pthread_mutex_init(&p.mu, NULL);
    pthread_t th[3];
    for (int i = 0; i < 3; i++)
        assert_int_equal(pthread_create(&th[i], NULL, pinned_searcher, &p), 0);
    for (int k = 0; k < 4; k++) {
        assert_int_equal(qd_store_reembed_stage(db, models[k % 2], 2, NULL, NULL, NULL, err,
                                                sizeof err), 0);
        assert_int_equal(qd_store_reembed_switch(s, NULL, NULL), 0);
    }
    p.done = 1;
    for (int i = 0; i < 3; i++)
        pthread_join(th[i], NULL);
    assert_true(p.searches > 0);
    assert_int_equal(p.bad, 0);
    assert_int_equal(reencode_problems(s), 0);
    qd_store_close(s);
    pthread_mutex_destroy(&p.mu);
    free_batch(&b);
}

/* A search that pinned the old model while a switch runs, on a compressed kind, which
 * re-scores its candidates from the vectors in SQLite: it must see the old vectors
 * there too, so the switch may not commit the new ones while any pin of the old model
 * is held. The searcher goes once the switch has committed or waits for the pins,
 * whichever comes first. */
typedef struct pin_race {
    qd_store *s;          /* the store */
    const char *text;     /* a stored question's text */
    const char *id;       /* its id */
    int pinned, go;       /* steps (under mu) */
    float cosine;         /* the cosine the search found the question with (-2: not) */
    pthread_mutex_t mu;   /* guards the steps */
    pthread_cond_t cv;    /* signals them */
} pin_race;

static pin_race *pin_race_now;

static void pin_race_hook(const char *point)
{
    pin_race *p = pin_race_now;
    if (!p || (strcmp(point, "reembed:committed") != 0 && strcmp(point, "reembed:pins") != 0))
        return;
    pthread_mutex_lock(&p->mu);
    p->go = 1;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

/* pinned_finds's wait: says it has pinned, and waits for the switch. */
static void pin_race_wait(void *arg)
{
    pin_race *p = arg;
    pthread_mutex_lock(&p->mu);
    p->pinned = 1;
    pthread_cond_broadcast(&p->cv);
    while (!p->go)
        pthread_cond_wait(&p->cv, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

static void *pin_race_searcher(void *arg)
{
    pin_race *p = arg;
    qd_enc_ws *ws = qd_enc_ws_new();
    pinned_finds(p->s, ws, p->text, p->id, pin_race_wait, p, &p->cosine);
    qd_enc_ws_free(ws);
    return NULL;
}

static void test_switch_rescore_pinned(void **state)
{
    (void)state;
    const char *db = new_db("pinrescore");
    char err[QD_ERRMSG_MAX];
    qd_store *s = create(db, "SQ8");
    batch b = make_batch(0, 200);
    add_ok(s, &b);
    assert_int_equal(qd_store_reembed_stage(db, variant_model(1), 2, NULL, NULL, NULL, err,
                                            sizeof err), 0);
    pin_race p = {.s = s, .text = b.text[17], .id = b.id[17]};
    pthread_mutex_init(&p.mu, NULL);
    pthread_cond_init(&p.cv, NULL);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, pin_race_searcher, &p), 0);
    pthread_mutex_lock(&p.mu);
    while (!p.pinned)
        pthread_cond_wait(&p.cv, &p.mu);
    pthread_mutex_unlock(&p.mu);
    pin_race_now = &p;
    qd_store_set_test_hook(pin_race_hook);
    int rc = qd_store_reembed_switch(s, NULL, NULL);
    qd_store_set_test_hook(NULL);
    pin_race_now = NULL;
    pthread_join(th, NULL);
    assert_int_equal(rc, 0);
    if (!(p.cosine > 0.9999f))
        fail_msg("the pinned search scored its own question %g: vectors of the new model "
                 "against a query of the old", (double)p.cosine);
    qd_store_close(s);
    pthread_cond_destroy(&p.cv);
    pthread_mutex_destroy(&p.mu);
    free_batch(&b);
}

/* --- allocation failures ------------------------------------------------------------ */

static void test_alloc_failures(void **state)
{
    (void)state;
    const char *db = new_db("alloc");
    qd_store *s = create(db, NULL);
    batch b = make_batch(0, 30);
    add_ok(s, &b);
    qd_store_close(s);
    char err[QD_ERRMSG_MAX];

    /* Every allocation of an open, failed in turn. */
    int opened = 0;
    for (long n = 0; n < 100000 && !opened; n++) {
        qd_store_opts o = {.threads = 1};
        qd_alloc_fail_after(n, 0);
        int rc = qd_store_open(db, &o, &s, err, sizeof err);
        qd_alloc_fail_after(-1, 0);
        if (rc == 0) {
            opened = 1;
            break;
        }
        if (rc != QD_ERR_NOMEM)
            fail_msg("open with allocation %ld failing: %s (%s)", n, qd_strerror(rc), err);
        assert_null(s);
    }
    assert_true(opened);
    verify_clean(s);

    /* Every allocation of an add: fails as a whole or succeeds, never half. */
    batch more = make_batch(30, 40);
    qd_store_result res[10];
    int added = 0;
    for (long n = 0; n < 100000 && !added; n++) {
        qd_store_info before = info_of(s);
        qd_alloc_fail_after(n, 0);
        int rc = store_add(s, more.it, more.n, 0, res);
        qd_alloc_fail_after(-1, 0);
        if (rc == 0) {
            added = 1;
            break;
        }
        assert_int_equal(rc, QD_ERR_NOMEM);
        qd_store_info after = info_of(s);
        assert_int_equal(after.live, before.live);
        assert_int_equal(after.seq, before.seq);
    }
    assert_true(added);
    assert_int_equal(info_of(s).live, 40);
    for (size_t i = 0; i < more.n; i++)
        expect_top(s, more.text[i], more.id[i]);
    /* And of a search. */
    float v[64];
    encode(s, more.text[2], v);
    for (long n = 0; n < 1000; n++) {
        qd_store_hits h;
        qd_alloc_fail_after(n, 0);
        int rc = qd_store_search(s, v, 1, 5, -1, NULL, &h);
        qd_alloc_fail_after(-1, 0);
        if (rc == 0) {
            assert_int_equal(h.n, 5);
            qd_store_hits_free(&h);
            break;
        }
        assert_int_equal(rc, QD_ERR_NOMEM);
        assert_int_equal(h.n, 0);
    }
    verify_clean(s);
    qd_store_close(s);
    free_batch(&b);
    free_batch(&more);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_schema_embedded),
        cmocka_unit_test(test_add_search_get),
        cmocka_unit_test(test_duplicates_and_replace),
        cmocka_unit_test(test_text_key),
        cmocka_unit_test(test_remove),
        cmocka_unit_test(test_crash_replay),
        cmocka_unit_test(test_checkpoint_failing),
        cmocka_unit_test(test_verify_tampered_file),
        cmocka_unit_test(test_verify_inconsistent_index),
        cmocka_unit_test(test_model_mismatch),
        cmocka_unit_test(test_not_a_store),
        cmocka_unit_test(test_writer_lock),
        cmocka_unit_test(test_hnsw_tombstones),
        cmocka_unit_test(test_ivf_and_sq8),
        cmocka_unit_test(test_export),
        cmocka_unit_test(test_verdicts),
        cmocka_unit_test(test_migrate_v1),
        cmocka_unit_test(test_reembed),
        cmocka_unit_test(test_reembed_taken_over),
        cmocka_unit_test(test_reembed_stage_after_switch),
        cmocka_unit_test(test_params_survive_rebuild),
        cmocka_unit_test(test_concurrent_search_during_add),
        cmocka_unit_test(test_switch_under_searches),
        cmocka_unit_test(test_switch_rescore_pinned),
        cmocka_unit_test(test_alloc_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
