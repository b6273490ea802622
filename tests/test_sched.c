/*
 * test_sched.c - the daemon's scheduler (sched.h) on its own, without sockets or
 * threads: round-robin fairness and where newcomers join, batches capped by texts,
 * results and bytes, heavy requests alone and never on every worker, the writer's
 * batches of adds, read/write ordering per client, admission against the queue budget,
 * the cancellation of a departed client's waiting reads, and the sharing of what waits
 * among the free workers (lim.split).
 *
 * Each test builds clients and items by hand and checks which items each batch takes,
 * in order, against what the policy in sched.c says.
 */
#include <string.h>

#include "qdup/sched.h"
#include "testutil.h"

#define NITEMS 64

static qd_sched s;
static qd_sched_client cl[4];
static qd_sched_item items[NITEMS];
static size_t nitems;

static void init(int threads, size_t search_batch, size_t batch_results, size_t batch_bytes,
                 size_t write_batch)
{
    qd_sched_limits lim = {
        .threads = threads,
        .search_batch = search_batch,
        .batch_results = batch_results,
        .batch_bytes = batch_bytes,
        .write_batch = write_batch,
        .max_queued = 1000,
        .max_queued_bytes = 1u << 20,
    };
    qd_sched_init(&s, &lim);
    memset(cl, 0, sizeof cl);
    memset(items, 0, sizeof items);
    nitems = 0;
}

/* Queues an item of `kind` for client c with the given cost; returns it. */
static qd_sched_item *push(int c, int kind, size_t texts, size_t results, size_t bytes)
{
    assert_true(nitems < NITEMS);
    qd_sched_item *it = &items[nitems++];
    it->kind = kind;
    it->texts = texts;
    it->results = results;
    it->bytes = bytes;
    it->cost = 10;
    qd_sched_push(&s, &cl[c], it);
    return it;
}

static qd_sched_item *read1(int c)
{
    return push(c, QD_SCHED_READ, 1, 10, 20);
}

static qd_sched_item *add1(int c)
{
    qd_sched_item *it = push(c, QD_SCHED_WRITE, 1, 1, 20);
    it->joins = 1;
    return it;
}

/* Takes a read batch and checks that it holds exactly `want` (n of them) in order. */
static void expect_reads(qd_sched_item *const *want, size_t n, int heavy_want)
{
    qd_sched_item *out[NITEMS];
    int heavy = -1;
    size_t got = qd_sched_take_reads(&s, out, NITEMS, &heavy);
    assert_int_equal(got, n);
    assert_int_equal(heavy, heavy_want);
    for (size_t i = 0; i < n; i++)
        assert_ptr_equal(out[i], want[i]);
}

static void expect_writes(qd_sched_item *const *want, size_t n)
{
    qd_sched_item *out[NITEMS];
    size_t got = qd_sched_take_writes(&s, out, NITEMS);
    assert_int_equal(got, n);
    for (size_t i = 0; i < n; i++)
        assert_ptr_equal(out[i], want[i]);
}

/* Finishes a batch of reads: each item, then the batch. */
static void reads_done(qd_sched_item *const *its, size_t n, int heavy)
{
    for (size_t i = 0; i < n; i++)
        qd_sched_item_done(&s, its[i]);
    qd_sched_reads_done(&s, heavy);
}

static void test_round_robin_one_per_client_per_round(void **state)
{
    (void)state;
    init(4, 4, 1000, 1000, 8);
    qd_sched_item *a[6];
    for (int i = 0; i < 6; i++)
        a[i] = read1(0); /* a client with a long queue */
    qd_sched_item *b = read1(1), *c = read1(2);
    /* One of each client per round: A, B, C, then A again while there is room. */
    qd_sched_item *w1[] = {a[0], b, c, a[1]};
    expect_reads(w1, 4, 0);
    assert_int_equal(s.queued, 4);
    assert_int_equal(s.nring, 1); /* B and C have nothing left */
    /* A newcomer waits for one turn of those already waiting, not for their queues. */
    qd_sched_item *d = read1(3);
    qd_sched_item *w2[] = {a[2], d, a[3], a[4]};
    expect_reads(w2, 4, 0);
    qd_sched_item *w3[] = {a[5]};
    expect_reads(w3, 1, 0);
    assert_int_equal(s.queued, 0);
    assert_int_equal(s.nring, 0);
    /* Every worker is busy now (4 batches out of 4 threads): nothing more is taken. */
    read1(1);
    qd_sched_item *out[NITEMS];
    int heavy;
    assert_int_equal(s.reads_running, 3);
    assert_int_equal(qd_sched_take_reads(&s, out, NITEMS, &heavy), 1);
    assert_int_equal(s.reads_running, 4);
    read1(2);
    assert_false(qd_sched_reads_free(&s));
    assert_int_equal(qd_sched_take_reads(&s, out, NITEMS, &heavy), 0);
    reads_done(w1, 4, 0);
    assert_true(qd_sched_reads_free(&s));
    assert_int_equal(qd_sched_take_reads(&s, out, NITEMS, &heavy), 1);
}

static void test_batches_capped_by_texts_results_and_bytes(void **state)
{
    (void)state;
    /* Results: 40 + 40 fit under 100, the third does not and is first next time. */
    init(2, 64, 100, 10000, 8);
    qd_sched_item *a = push(0, QD_SCHED_READ, 1, 40, 10);
    qd_sched_item *b = push(1, QD_SCHED_READ, 1, 40, 10);
    qd_sched_item *c = push(2, QD_SCHED_READ, 1, 40, 10);
    qd_sched_item *d = push(0, QD_SCHED_READ, 1, 10, 10);
    qd_sched_item *w1[] = {a, b};
    expect_reads(w1, 2, 0);
    qd_sched_item *w2[] = {c, d};
    expect_reads(w2, 2, 0);

    /* Bytes: 300 + 300 fit under 700, a third 300 does not. */
    init(2, 64, 1000, 700, 8);
    a = push(0, QD_SCHED_READ, 1, 1, 300);
    b = push(1, QD_SCHED_READ, 1, 1, 300);
    c = push(2, QD_SCHED_READ, 1, 1, 300);
    qd_sched_item *w3[] = {a, b};
    expect_reads(w3, 2, 0);
    qd_sched_item *w4[] = {c};
    expect_reads(w4, 1, 0);

    /* Texts: a batch of 3 texts each fits twice under 7 (and the first always fits). */
    init(2, 7, 1000, 10000, 8);
    a = push(0, QD_SCHED_READ, 3, 3, 10);
    b = push(1, QD_SCHED_READ, 3, 3, 10);
    c = push(2, QD_SCHED_READ, 3, 3, 10);
    qd_sched_item *w5[] = {a, b};
    expect_reads(w5, 2, 0);
    qd_sched_item *w6[] = {c};
    expect_reads(w6, 1, 0);
}

static void test_heavy_requests_go_alone_and_leave_a_worker(void **state)
{
    (void)state;
    init(2, 4, 100, 1000, 8);
    qd_sched_item *h1 = push(0, QD_SCHED_READ, 1, 500, 10); /* over batch_results */
    qd_sched_item *h2 = push(1, QD_SCHED_READ, 9, 9, 10);   /* over search_batch */
    qd_sched_item *r = read1(2);
    qd_sched_item *w1[] = {h1};
    expect_reads(w1, 1, 1);
    /* With 2 workers at most one heavy batch at a time: h2 is passed over, r runs. */
    qd_sched_item *w2[] = {r};
    expect_reads(w2, 1, 0);
    assert_int_equal(s.queued, 1);
    reads_done(w1, 1, 1);
    reads_done(w2, 1, 0);
    qd_sched_item *w3[] = {h2};
    expect_reads(w3, 1, 1);

    /* An ordinary batch ends before a heavy request; it then goes alone. */
    init(1, 4, 100, 1000, 8);
    qd_sched_item *a = read1(0);
    qd_sched_item *h = push(1, QD_SCHED_READ, 1, 500, 10);
    qd_sched_item *w4[] = {a};
    expect_reads(w4, 1, 0);
    reads_done(w4, 1, 0);
    /* One worker: a heavy batch may still use it (it is the only one). */
    qd_sched_item *w5[] = {h};
    expect_reads(w5, 1, 1);
}

static void test_writer_batches_adds_round_robin(void **state)
{
    (void)state;
    init(2, 64, 1000, 1000, 3);
    qd_sched_item *a1 = add1(0), *a2 = add1(0), *b1 = add1(1), *c1 = add1(2);
    qd_sched_item *w1[] = {a1, b1, c1}; /* one per client per round, up to write_batch */
    expect_writes(w1, 3);
    /* One writer: busy until done. */
    expect_writes(NULL, 0);
    for (int i = 0; i < 3; i++)
        qd_sched_item_done(&s, w1[i]);
    qd_sched_writer_done(&s);
    /* A write that is not an add goes alone, and ends a batch of adds. */
    qd_sched_item *rm = push(1, QD_SCHED_WRITE, 1, 1, 0);
    qd_sched_item *a3 = add1(2);
    qd_sched_item *w2[] = {a2};
    expect_writes(w2, 1);
    qd_sched_item_done(&s, a2);
    qd_sched_writer_done(&s);
    qd_sched_item *w3[] = {rm};
    expect_writes(w3, 1);
    qd_sched_item_done(&s, rm);
    qd_sched_writer_done(&s);
    /* A checkpoint takes the writer too. */
    assert_true(qd_sched_claim_writer(&s));
    assert_false(qd_sched_claim_writer(&s));
    expect_writes(NULL, 0);
    qd_sched_writer_done(&s);
    qd_sched_item *w4[] = {a3};
    expect_writes(w4, 1);
}

static void test_reads_and_writes_keep_order_per_client(void **state)
{
    (void)state;
    init(2, 64, 1000, 1000, 8);
    /* "add, get": the get waits for the add. */
    qd_sched_item *w = add1(0), *r = read1(0);
    qd_sched_item *other = read1(1);
    qd_sched_item *w1[] = {other}; /* client 0's head is a write: not for a reader */
    expect_reads(w1, 1, 0);
    qd_sched_item *w2[] = {w};
    expect_writes(w2, 1);
    qd_sched_item *out[NITEMS];
    int heavy;
    assert_int_equal(qd_sched_take_reads(&s, out, NITEMS, &heavy), 0); /* add at work */
    /* A long line to parse waits for nothing, even behind a write at work. */
    qd_sched_item *p = push(2, QD_SCHED_PARSE, 1, 1, 5000);
    qd_sched_item *w3[] = {p};
    expect_reads(w3, 1, 1); /* over batch_bytes on its own */
    qd_sched_item_done(&s, w);
    qd_sched_writer_done(&s);
    reads_done(w1, 1, 0);
    reads_done(w3, 1, 1);
    qd_sched_item *w4[] = {r};
    expect_reads(w4, 1, 0);

    /* "query, remove": the remove waits for the query; two reads run side by side. */
    init(2, 64, 1000, 1000, 8);
    qd_sched_item *q1 = read1(0), *q2 = read1(0);
    qd_sched_item *rm = push(0, QD_SCHED_WRITE, 1, 1, 0);
    qd_sched_item *w5[] = {q1, q2};
    expect_reads(w5, 2, 0);
    expect_writes(NULL, 0); /* its reads are at work */
    qd_sched_item_done(&s, q1);
    expect_writes(NULL, 0); /* one still is */
    qd_sched_item_done(&s, q2);
    qd_sched_reads_done(&s, 0);
    qd_sched_item *w6[] = {rm};
    expect_writes(w6, 1);
}

static void test_admission_budget(void **state)
{
    (void)state;
    init(2, 64, 1000, 1000, 8);
    s.lim.max_queued = 2;
    s.lim.max_queued_bytes = 25;
    read1(0); /* cost 10 each */
    assert_false(qd_sched_over_budget(&s, &cl[0], 10));
    read1(0);
    assert_int_equal(s.queued_bytes, 20);
    /* Two waiting: client 0 is refused, a client with nothing waiting is not. */
    assert_true(qd_sched_over_budget(&s, &cl[0], 1));
    assert_false(qd_sched_over_budget(&s, &cl[1], 1));
    /* By bytes: 20 + 10 > 25. */
    s.lim.max_queued = 100;
    assert_true(qd_sched_over_budget(&s, &cl[0], 10));
    assert_false(qd_sched_over_budget(&s, &cl[0], 5));
    /* Bytes stay counted while at work, and go when done. */
    qd_sched_item *out[NITEMS];
    int heavy;
    assert_int_equal(qd_sched_take_reads(&s, out, NITEMS, &heavy), 2);
    assert_int_equal(s.queued, 0);
    assert_int_equal(s.queued_bytes, 20);
    reads_done(out, 2, 0);
    assert_int_equal(s.queued_bytes, 0);
    assert_true(qd_sched_idle(&s));
}

static void test_split_shares_waiting_reads_among_free_workers(void **state)
{
    (void)state;
    init(2, 64, 1000, 1000, 8);
    s.lim.split = 1;
    qd_sched_item *r[8];
    for (int i = 0; i < 8; i++)
        r[i] = read1(i % 4);
    /* Eight waiting, two free workers: four each, round the ring as ever. */
    qd_sched_item *w1[] = {r[0], r[1], r[2], r[3]};
    expect_reads(w1, 4, 0);
    qd_sched_item *w2[] = {r[4], r[5], r[6], r[7]};
    expect_reads(w2, 4, 0);
    reads_done(w1, 4, 0);
    reads_done(w2, 4, 0);
    /* Three waiting, two free: two, then the last with the other worker. */
    for (int i = 0; i < 3; i++)
        r[i] = read1(i);
    qd_sched_item *w3[] = {r[0], r[1]};
    expect_reads(w3, 2, 0);
    /* One worker free now: it takes all that waits, up to the caps. */
    for (int i = 3; i < 6; i++)
        r[i] = read1(i % 4);
    qd_sched_item *w4[] = {r[2], r[3], r[4], r[5]};
    expect_reads(w4, 4, 0);
    assert_false(qd_sched_reads_free(&s));
    reads_done(w3, 2, 0);
    reads_done(w4, 4, 0);
    /* The caps still hold: with search_batch 3, a share of 5 stops at 3. */
    s.lim.search_batch = 3;
    for (int i = 0; i < 10; i++)
        r[i % 8] = read1(i % 4);
    qd_sched_item *out[NITEMS];
    int heavy;
    assert_int_equal(qd_sched_take_reads(&s, out, NITEMS, &heavy), 3);
    assert_int_equal(qd_sched_take_reads(&s, out, NITEMS, &heavy), 3);
    assert_int_equal(s.queued, 4);
}

/* A store whose search costs about the same for four queries as for one asks for
 * shares of at least four (min_share): fewer batches, each with more in it. */
static void test_split_share_has_a_floor(void **state)
{
    (void)state;
    init(3, 64, 1000, 1000, 8);
    s.lim.split = 1;
    s.lim.min_share = 4;
    qd_sched_item *r[8];
    for (int i = 0; i < 6; i++)
        r[i] = read1(i % 4);
    /* Six waiting, three free workers: not two each, but four, then the last two. */
    qd_sched_item *w1[] = {r[0], r[1], r[2], r[3]};
    expect_reads(w1, 4, 0);
    qd_sched_item *w2[] = {r[4], r[5]};
    expect_reads(w2, 2, 0);
    assert_int_equal(s.queued, 0);
    reads_done(w1, 4, 0);
    reads_done(w2, 2, 0);
    /* Nine waiting and three free workers: shares of three, which a floor of three
     * leaves alone; then six waiting and two free: shares of three, raised to four. */
    for (int i = 0; i < 9; i++)
        read1(i % 4);
    qd_sched_item *out[NITEMS];
    int heavy;
    s.lim.min_share = 3;
    assert_int_equal(qd_sched_take_reads(&s, out, NITEMS, &heavy), 3);
    s.lim.min_share = 4;
    assert_int_equal(qd_sched_take_reads(&s, out, NITEMS, &heavy), 4);
    assert_int_equal(qd_sched_take_reads(&s, out, NITEMS, &heavy), 2);
    assert_int_equal(s.queued, 0);
}

static void test_cancel_drops_reads_keeps_writes(void **state)
{
    (void)state;
    init(2, 64, 1000, 1000, 8);
    qd_sched_item *r1 = read1(0), *w = add1(0), *r2 = read1(0);
    qd_sched_item *p = push(0, QD_SCHED_PARSE, 1, 1, 10);
    qd_sched_item *b = read1(1);
    qd_sched_item *gone = qd_sched_cancel_reads(&s, &cl[0]);
    assert_ptr_equal(gone, r1);
    assert_ptr_equal(r1->next, r2);
    assert_ptr_equal(r2->next, p);
    assert_null(p->next);
    assert_int_equal(s.queued, 2);             /* w and b */
    assert_int_equal(s.queued_bytes, 20);
    assert_true(cl[0].in_ring);                /* w still waits */
    qd_sched_item *w1[] = {b};
    expect_reads(w1, 1, 0);
    qd_sched_item *w2[] = {w};
    expect_writes(w2, 1);
    /* A client with only reads waiting leaves the ring altogether. */
    read1(2);
    read1(2);
    assert_int_equal(s.nring, 1);
    gone = qd_sched_cancel_reads(&s, &cl[2]);
    assert_non_null(gone);
    assert_int_equal(s.nring, 0);
    assert_int_equal(s.queued, 0);
    assert_false(qd_sched_reads_free(&s));
    /* The others are served as before. */
    qd_sched_item *c = read1(3);
    qd_sched_item *w3[] = {c};
    expect_reads(w3, 1, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_robin_one_per_client_per_round),
        cmocka_unit_test(test_batches_capped_by_texts_results_and_bytes),
        cmocka_unit_test(test_heavy_requests_go_alone_and_leave_a_worker),
        cmocka_unit_test(test_writer_batches_adds_round_robin),
        cmocka_unit_test(test_reads_and_writes_keep_order_per_client),
        cmocka_unit_test(test_admission_budget),
        cmocka_unit_test(test_cancel_drops_reads_keeps_writes),
        cmocka_unit_test(test_split_shares_waiting_reads_among_free_workers),
        cmocka_unit_test(test_split_share_has_a_floor),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
