/* test_qq_sm.c - the quorum queue state machine (broker/qq_sm.c), one RabbitMQ behaviour per test.
 *
 * Every command goes through qsm_encode -> qsm_decode before qsm_apply, so the codec is exercised
 * by every test, and every effect is recorded (deliveries, results, dead letters) with the
 * message body as text, so tests read like "c1 got m1, m2". The last tests feed two states the
 * same long random command stream and check they stay byte-identical (snapshots, effects), also
 * across a snapshot/restore in the middle, and that the stats add up. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker/qq_sm.h"

/* ---- recording effects ------------------------------------------------------------------------ */

#define MAXE 4096

typedef struct {
    uint32_t node;
    uint64_t chan;
    char tag[32];
    uint64_t id;
    char body[32];
    uint32_t dc;
    bool redelivered;
} dlv_t;

typedef struct {
    uint32_t node;
    uint64_t req;
    int status;
    uint32_t count;
    char body[32];
    uint64_t msg_id;
    uint32_t dc;
    bool redelivered;
} res_t;

typedef struct {
    char body[32];
    char reason[32];
    uint32_t dc;
    uint64_t dlx_id;
} dl_t;

typedef struct {
    dlv_t dlv[MAXE];
    size_t n_dlv;
    res_t res[MAXE];
    size_t n_res;
    dl_t dl[MAXE];
    size_t n_dl;
    uint64_t hash; /* FNV-1a over every effect, for the determinism tests */
} rec_t;

static void hash_bytes(rec_t *r, const void *p, size_t n)
{
    const uint8_t *b = p;
    if (!r->hash) r->hash = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) r->hash = (r->hash ^ b[i]) * 1099511628211ULL;
}

static void body_text(const msg_t *m, char out[32])
{
    size_t n = m->body_len < 31 ? m->body_len : 31;
    memcpy(out, m->body, n);
    out[n] = 0;
}

static void on_deliver(void *ud, uint32_t node, uint64_t chan, amqp_bytes_t tag, uint64_t msg_id, msg_t *m,
                       uint32_t dc, bool redelivered)
{
    rec_t *r = ud;
    hash_bytes(r, "D", 1);
    hash_bytes(r, &node, sizeof node);
    hash_bytes(r, &chan, sizeof chan);
    hash_bytes(r, tag.ptr, tag.len);
    hash_bytes(r, &msg_id, sizeof msg_id);
    hash_bytes(r, m->body, m->body_len);
    hash_bytes(r, &dc, sizeof dc);
    hash_bytes(r, &redelivered, 1);
    if (r->n_dlv == MAXE) return;
    dlv_t *d = &r->dlv[r->n_dlv++];
    *d = (dlv_t){.node = node, .chan = chan, .id = msg_id, .dc = dc, .redelivered = redelivered};
    snprintf(d->tag, sizeof d->tag, "%.*s", (int)tag.len, (const char *)tag.ptr);
    body_text(m, d->body);
}

static void on_result(void *ud, uint32_t node, uint64_t req, const struct qsm_result *q)
{
    rec_t *r = ud;
    hash_bytes(r, "R", 1);
    hash_bytes(r, &node, sizeof node);
    hash_bytes(r, &req, sizeof req);
    hash_bytes(r, &q->status, sizeof q->status);
    hash_bytes(r, &q->count, sizeof q->count);
    hash_bytes(r, &q->msg_id, sizeof q->msg_id);
    if (q->m) hash_bytes(r, q->m->body, q->m->body_len);
    if (r->n_res == MAXE) return;
    res_t *x = &r->res[r->n_res++];
    *x = (res_t){.node = node, .req = req, .status = q->status, .count = q->count, .msg_id = q->msg_id,
                 .dc = q->delivery_count, .redelivered = q->redelivered};
    if (q->m) body_text(q->m, x->body);
}

static void on_dead_letter(void *ud, msg_t *m, const char *reason, uint32_t dc, uint64_t dlx_id)
{
    rec_t *r = ud;
    hash_bytes(r, "X", 1);
    hash_bytes(r, reason, strlen(reason));
    hash_bytes(r, m->body, m->body_len);
    hash_bytes(r, &dc, sizeof dc);
    hash_bytes(r, &dlx_id, sizeof dlx_id);
    if (r->n_dl == MAXE) return;
    dl_t *x = &r->dl[r->n_dl++];
    *x = (dl_t){.dc = dc, .dlx_id = dlx_id};
    snprintf(x->reason, sizeof x->reason, "%s", reason);
    body_text(m, x->body);
}

static rec_t *rec_new(void) { return calloc(1, sizeof(rec_t)); }
static void rec_clear(rec_t *r) { r->n_dlv = r->n_res = r->n_dl = 0; }

/* ---- building and applying commands ----------------------------------------------------------- */

/* Encodes, decodes (checking the round trip) and applies. */
static void apply(qsm_t *s, rec_t *r, struct qsm_cmd *c)
{
    amqp_buf_t b = {0};
    qsm_encode(&b, c);
    struct qsm_cmd d;
    assert_int_equal(qsm_decode(b.data, b.len, &d), 0);
    amqp_buf_t b2 = {0};
    qsm_encode(&b2, &d);
    assert_int_equal(b.len, b2.len);
    assert_memory_equal(b.data, b2.data, b.len);
    struct qsm_effects fx = {.ud = r, .deliver = on_deliver, .result = on_result, .dead_letter = on_dead_letter};
    qsm_apply(s, &d, r ? &fx : NULL);
    amqp_buf_free(&b);
    amqp_buf_free(&b2);
}

/* A record for body with an optional priority property (prio < 0: no properties). */
static void make_record(amqp_buf_t *out, const char *body, int prio)
{
    uint8_t props[3] = {0x08, 0x00, (uint8_t)(prio < 0 ? 0 : prio)};
    msg_t *m = msg_new("ex", 2, "rk", 2, props, prio < 0 ? 0 : 3, strlen(body));
    memcpy(m->body, body, strlen(body));
    size_t n = msg_record_size(m);
    amqp_buf_reserve(out, n);
    msg_record_write(m, out->data);
    out->len = n;
    msg_unref(m);
}

static int64_t T = 1000; /* the default now_ms of commands */

static void enq_full(qsm_t *s, rec_t *r, int64_t now, uint32_t node, uint64_t chan, uint64_t seq, uint64_t req,
                     const char *body, int prio, int64_t expiration)
{
    amqp_buf_t rec = {0};
    make_record(&rec, body, prio);
    struct qsm_cmd c = {.op = QSM_ENQUEUE, .node = node, .chan = chan, .seq = seq, .req = req, .now_ms = now,
                        .expiration_ms = expiration, .msg = {rec.data, rec.len}};
    apply(s, r, &c);
    amqp_buf_free(&rec);
}

static void enq(qsm_t *s, rec_t *r, const char *body) { enq_full(s, r, T, 1, 1, 0, 0, body, -1, -1); }

static void consume(qsm_t *s, rec_t *r, uint32_t node, uint64_t chan, const char *tag, uint32_t prefetch,
                    int32_t prio, uint8_t flags)
{
    struct qsm_cmd c = {.op = QSM_CHECKOUT, .node = node, .chan = chan, .tag = AMQP_BYTES_CSTR(tag),
                        .prefetch = prefetch, .priority = prio, .flags = flags, .now_ms = T};
    apply(s, r, &c);
}

static void cancel(qsm_t *s, rec_t *r, uint32_t node, uint64_t chan, const char *tag)
{
    struct qsm_cmd c = {.op = QSM_CANCEL, .node = node, .chan = chan, .tag = AMQP_BYTES_CSTR(tag), .now_ms = T};
    apply(s, r, &c);
}

static void ids_op(qsm_t *s, rec_t *r, uint8_t op, uint32_t node, uint64_t chan, const char *tag, uint64_t id)
{
    struct qsm_cmd c = {.op = op, .node = node, .chan = chan, .tag = AMQP_BYTES_CSTR(tag), .now_ms = T,
                        .n_ids = 1, .ids_in = &id};
    apply(s, r, &c);
}
#define settle(s, r, n, ch, t, id) ids_op(s, r, QSM_SETTLE, n, ch, t, id)
#define ret(s, r, n, ch, t, id) ids_op(s, r, QSM_RETURN, n, ch, t, id)
#define discard(s, r, n, ch, t, id) ids_op(s, r, QSM_DISCARD, n, ch, t, id)

static void down(qsm_t *s, rec_t *r, uint32_t node, uint64_t chan, uint64_t keep_boot)
{
    struct qsm_cmd c = {.op = QSM_DOWN, .node = node, .chan = chan, .seq = keep_boot, .now_ms = T};
    apply(s, r, &c);
}

static void dequeue(qsm_t *s, rec_t *r, uint32_t node, uint64_t chan, uint64_t req, bool no_ack)
{
    struct qsm_cmd c = {.op = QSM_DEQUEUE, .node = node, .chan = chan, .req = req,
                        .flags = no_ack ? QSM_F_NO_ACK : 0, .now_ms = T};
    apply(s, r, &c);
}

static void simple(qsm_t *s, rec_t *r, uint8_t op, int64_t now, uint64_t req)
{
    struct qsm_cmd c = {.op = op, .node = 1, .req = req, .now_ms = now};
    apply(s, r, &c);
}

static void set_config(qsm_t *s, rec_t *r, const struct qsm_config *cfg)
{
    struct qsm_cmd c = {.op = QSM_CONFIG, .config = *cfg, .now_ms = T};
    apply(s, r, &c);
}

static qsm_t *new_q(void (*tweak)(struct qsm_config *))
{
    struct qsm_config cfg;
    qsm_config_defaults(&cfg);
    if (tweak) tweak(&cfg);
    return qsm_new(&cfg);
}

static struct qsm_stats stats(const qsm_t *s)
{
    struct qsm_stats st;
    qsm_stats(s, &st);
    return st;
}

/* Bodies delivered to tag, joined by spaces. */
static const char *got(const rec_t *r, const char *tag)
{
    static char out[4096];
    out[0] = 0;
    for (size_t i = 0; i < r->n_dlv; i++) {
        if (strcmp(r->dlv[i].tag, tag)) continue;
        if (out[0]) strcat(out, " ");
        strcat(out, r->dlv[i].body);
    }
    return out;
}

static const dlv_t *find_dlv(const rec_t *r, const char *body)
{
    for (size_t i = r->n_dlv; i-- > 0;)
        if (!strcmp(r->dlv[i].body, body)) return &r->dlv[i];
    fail_msg("no delivery of %s", body);
    return NULL;
}

static void snapshot_roundtrip(const qsm_t *s)
{
    amqp_buf_t a = {0}, b = {0};
    qsm_snapshot(s, &a);
    qsm_t *t = qsm_restore(a.data, a.len);
    assert_non_null(t);
    qsm_snapshot(t, &b);
    assert_int_equal(a.len, b.len);
    assert_memory_equal(a.data, b.data, a.len);
    qsm_free(t);
    amqp_buf_free(&a);
    amqp_buf_free(&b);
}

/* ---- consumers and ordering ------------------------------------------------------------------- */

static void test_fifo_order(void **st)
{
    (void)st;
    qsm_t *s = new_q(NULL);
    rec_t *r = rec_new();
    enq(s, r, "m1");
    enq(s, r, "m2");
    enq(s, r, "m3");
    assert_int_equal(stats(s).ready, 3);
    assert_int_equal(stats(s).ready_bytes, 6);
    consume(s, r, 1, 1, "c1", 0, 0, 0);
    assert_string_equal(got(r, "c1"), "m1 m2 m3");
    assert_false(r->dlv[0].redelivered);
    assert_int_equal(r->dlv[0].dc, 0);
    assert_true(r->dlv[0].id < r->dlv[1].id && r->dlv[1].id < r->dlv[2].id);
    enq(s, r, "m4");
    assert_string_equal(got(r, "c1"), "m1 m2 m3 m4");
    assert_int_equal(stats(s).unacked, 4);
    assert_int_equal(stats(s).ready, 0);
    snapshot_roundtrip(s);
    qsm_free(s);
    free(r);
}

static void test_prefetch_and_credit(void **st)
{
    (void)st;
    qsm_t *s = new_q(NULL);
    rec_t *r = rec_new();
    for (int i = 1; i <= 5; i++) {
        char b[8];
        snprintf(b, sizeof b, "m%d", i);
        enq(s, r, b);
    }
    consume(s, r, 1, 1, "c1", 2, 0, 0);
    assert_string_equal(got(r, "c1"), "m1 m2");
    assert_int_equal(stats(s).unacked, 2);
    assert_int_equal(stats(s).ready, 3);
    settle(s, r, 1, 1, "c1", r->dlv[0].id);
    assert_string_equal(got(r, "c1"), "m1 m2 m3");
    /* a settle of an id the consumer does not hold changes nothing */
    settle(s, r, 1, 1, "c1", 999);
    settle(s, r, 1, 2, "c1", r->dlv[1].id); /* another channel: not its message */
    settle(s, r, 2, 1, "c1", r->dlv[1].id); /* another node */
    assert_string_equal(got(r, "c1"), "m1 m2 m3");
    /* raising the prefetch with a new checkout gives credit at once */
    consume(s, r, 1, 1, "c1", 4, 0, 0);
    assert_string_equal(got(r, "c1"), "m1 m2 m3 m4 m5");
    assert_int_equal(stats(s).settled_total, 1);
    assert_int_equal(stats(s).consumers, 1);
    /* settling is per channel (delivery tags are): the consumer tag plays no part */
    settle(s, r, 1, 1, "whatever", r->dlv[1].id);
    assert_int_equal(stats(s).settled_total, 2);
    qsm_free(s);
    free(r);
}

static void test_no_ack(void **st)
{
    (void)st;
    qsm_t *s = new_q(NULL);
    rec_t *r = rec_new();
    enq(s, r, "m1");
    enq(s, r, "m2");
    consume(s, r, 1, 1, "c1", 1, 0, QSM_F_NO_ACK); /* prefetch does not limit no_ack */
    assert_string_equal(got(r, "c1"), "m1 m2");
    struct qsm_stats x = stats(s);
    assert_int_equal(x.unacked, 0);
    assert_int_equal(x.ready, 0);
    assert_int_equal(qsm_live(s), 0);
    assert_int_equal(x.settled_total, 2);
    assert_int_equal(x.delivered_total, 2);
    qsm_free(s);
    free(r);
}

static void test_round_robin(void **st)
{
    (void)st;
    qsm_t *s = new_q(NULL);
    rec_t *r = rec_new();
    consume(s, r, 1, 1, "c1", 0, 0, 0);
    consume(s, r, 1, 2, "c2", 0, 0, 0);
    for (int i = 1; i <= 6; i++) {
        char b[8];
        snprintf(b, sizeof b, "m%d", i);
        enq(s, r, b);
    }
    assert_string_equal(got(r, "c1"), "m1 m3 m5");
    assert_string_equal(got(r, "c2"), "m2 m4 m6");
    /* a backlog is shared one message per consumer per turn too */
    qsm_t *s2 = new_q(NULL);
    rec_t *r2 = rec_new();
    for (int i = 1; i <= 6; i++) {
        char b[8];
        snprintf(b, sizeof b, "m%d", i);
        enq(s2, r2, b);
    }
    consume(s2, r2, 1, 1, "c1", 2, 0, 0);
    consume(s2, r2, 1, 2, "c2", 0, 0, 0);
    assert_string_equal(got(r2, "c1"), "m1 m2");
    assert_string_equal(got(r2, "c2"), "m3 m4 m5 m6");
    qsm_free(s);
    qsm_free(s2);
    free(r);
    free(r2);
}

static void test_consumer_priority(void **st)
{
    (void)st;
    qsm_t *s = new_q(NULL);
    rec_t *r = rec_new();
    consume(s, r, 1, 1, "low", 0, 0, 0);
    consume(s, r, 1, 2, "high", 2, 5, 0);
    for (int i = 1; i <= 4; i++) {
        char b[8];
        snprintf(b, sizeof b, "m%d", i);
        enq(s, r, b);
    }
    /* high takes what its prefetch allows, low gets the rest */
    assert_string_equal(got(r, "high"), "m1 m2");
    assert_string_equal(got(r, "low"), "m3 m4");
    settle(s, r, 1, 2, "high", find_dlv(r, "m1")->id);
    enq(s, r, "m5");
    assert_string_equal(got(r, "high"), "m1 m2 m5");
    qsm_free(s);
    free(r);
}

static void sac_cfg(struct qsm_config *c) { c->single_active = true; }

static void test_single_active_consumer(void **st)
{
    (void)st;
    qsm_t *s = new_q(sac_cfg);
    rec_t *r = rec_new();
    consume(s, r, 1, 1, "c1", 0, 0, 0);
    consume(s, r, 1, 2, "c2", 0, 0, 0);
    consume(s, r, 2, 3, "c3", 0, 0, 0);
    assert_true(qsm_has_consumer(s, 1, 1, AMQP_BYTES_CSTR("c1")));
    assert_false(qsm_has_consumer(s, 1, 2, AMQP_BYTES_CSTR("c2")));
    enq(s, r, "m1");
    enq(s, r, "m2");
    assert_string_equal(got(r, "c1"), "m1 m2");
    assert_string_equal(got(r, "c2"), "");
    assert_int_equal(stats(s).consumers, 3);
    /* cancel: the next in registration order becomes active; c1 keeps its unacked */
    cancel(s, r, 1, 1, "c1");
    assert_true(qsm_has_consumer(s, 1, 2, AMQP_BYTES_CSTR("c2")));
    assert_int_equal(stats(s).unacked, 2);
    enq(s, r, "m3");
    assert_string_equal(got(r, "c2"), "m3");
    /* down: c2's channel goes, c3 becomes active and gets c2's returned message */
    down(s, r, 1, 2, 0);
    assert_true(qsm_has_consumer(s, 2, 3, AMQP_BYTES_CSTR("c3")));
    assert_string_equal(got(r, "c3"), "m3");
    assert_true(find_dlv(r, "m3")->redelivered);
    snapshot_roundtrip(s);
    qsm_free(s);
    free(r);
}

static void test_cancel_keeps_checked_out(void **st)
{
    (void)st;
    qsm_t *s = new_q(NULL);
    rec_t *r = rec_new();
    consume(s, r, 1, 1, "c1", 0, 0, 0);
    enq(s, r, "m1");
    enq(s, r, "m2");
    cancel(s, r, 1, 1, "c1");
    assert_false(qsm_has_consumer(s, 1, 1, AMQP_BYTES_CSTR("c1")));
    assert_int_equal(stats(s).consumers, 0);
    enq(s, r, "m3");
    assert_string_equal(got(r, "c1"), "m1 m2"); /* no new assignments */
    assert_int_equal(stats(s).unacked, 2);
    settle(s, r, 1, 1, "c1", find_dlv(r, "m1")->id); /* still settles */
    assert_int_equal(stats(s).unacked, 1);
    ret(s, r, 1, 1, "c1", find_dlv(r, "m2")->id);
    assert_int_equal(stats(s).unacked, 0);
    assert_int_equal(stats(s).ready, 2);
    /* the consumer record is gone now: a settle under its name does nothing */
    snapshot_roundtrip(s);
    consume(s, r, 1, 2, "c2", 0, 0, 0);
    assert_string_equal(got(r, "c2"), "m2 m3"); /* the returned message first */
    qsm_free(s);
    free(r);
}

static void test_return_redelivery(void **st)
{
    (void)st;
    qsm_t *s = new_q(NULL);
    rec_t *r = rec_new();
    enq(s, r, "m1");
    enq(s, r, "m2");
    enq(s, r, "m3");
    consume(s, r, 1, 1, "c1", 1, 0, 0);
    assert_string_equal(got(r, "c1"), "m1");
    uint64_t id1 = r->dlv[0].id;
    ret(s, r, 1, 1, "c1", id1); /* nack requeue: served again before m2 */
    assert_string_equal(got(r, "c1"), "m1 m1");
    assert_true(r->dlv[1].redelivered);
    assert_int_equal(r->dlv[1].dc, 1);
    assert_int_equal(r->dlv[1].id, id1); /* the msg_id stays */
    ret(s, r, 1, 1, "c1", id1);
    assert_int_equal(r->dlv[2].dc, 2);
    assert_int_equal(stats(s).returned_total, 2);
    settle(s, r, 1, 1, "c1", id1);
    assert_string_equal(got(r, "c1"), "m1 m1 m1 m2");
    assert_false(r->dlv[3].redelivered);
    qsm_free(s);
    free(r);
}

static void dlx_cfg(struct qsm_config *c) { c->dead_letter = true; }
static void limit2_cfg(struct qsm_config *c)
{
    c->dead_letter = true;
    c->delivery_limit = 2;
}
static void unlimited_cfg(struct qsm_config *c)
{
    c->dead_letter = true;
    c->delivery_limit = -1;
}

/* Returns the message m1 over and over; returns how many deliveries it got. */
static int deliveries_until_dead(qsm_t *s, rec_t *r, int max)
{
    enq(s, r, "m1");
    consume(s, r, 1, 1, "c1", 1, 0, 0);
    int n = 0;
    while (r->n_dl == 0 && n < max) {
        assert_int_equal(r->n_dlv, (size_t)n + 1);
        n++;
        ret(s, r, 1, 1, "c1", r->dlv[r->n_dlv - 1].id);
    }
    return n;
}

static void test_delivery_limit(void **st)
{
    (void)st;
    qsm_t *s = new_q(limit2_cfg);
    rec_t *r = rec_new();
    assert_int_equal(deliveries_until_dead(s, r, 100), 3);
    assert_string_equal(r->dl[0].reason, "delivery_limit");
    assert_string_equal(r->dl[0].body, "m1");
    assert_int_equal(r->dl[0].dc, 3);
    assert_int_equal(r->dl[0].dlx_id, 0);
    assert_int_equal(qsm_live(s), 0);
    qsm_free(s);

    s = new_q(dlx_cfg); /* default: 20 */
    rec_clear(r);
    assert_int_equal(qsm_config(s)->delivery_limit, 20);
    assert_int_equal(deliveries_until_dead(s, r, 100), 21);
    qsm_free(s);

    s = new_q(unlimited_cfg);
    rec_clear(r);
    assert_int_equal(deliveries_until_dead(s, r, 200), 200);
    assert_int_equal(r->n_dl, 0);
    qsm_free(s);
    free(r);
}

static void test_discard_rejected(void **st)
{
    (void)st;
    qsm_t *s = new_q(dlx_cfg);
    rec_t *r = rec_new();
    enq(s, r, "m1");
    consume(s, r, 1, 1, "c1", 0, 0, 0);
    discard(s, r, 1, 1, "c1", r->dlv[0].id);
    assert_int_equal(r->n_dl, 1);
    assert_string_equal(r->dl[0].reason, "rejected");
    assert_int_equal(r->dl[0].dc, 0);
    assert_int_equal(qsm_live(s), 0);
    assert_int_equal(stats(s).dead_lettered_total, 1);
    qsm_free(s);
    /* without a DLX the message is dropped silently */
    s = new_q(NULL);
    rec_clear(r);
    enq(s, r, "m1");
    consume(s, r, 1, 1, "c1", 0, 0, 0);
    discard(s, r, 1, 1, "c1", r->dlv[0].id);
    assert_int_equal(r->n_dl, 0);
    assert_int_equal(qsm_live(s), 0);
    qsm_free(s);
    free(r);
}

static void test_down_channel(void **st)
{
    (void)st;
    qsm_t *s = new_q(NULL);
    rec_t *r = rec_new();
    enq_full(s, r, T, 1, 7, 1, 0, "m1", -1, -1); /* channel 7 publishes too */
    enq(s, r, "m2");
    enq(s, r, "m3");
    assert_int_equal(stats(s).enqueuers, 2);
    consume(s, r, 1, 7, "c1", 0, 0, 0);
    consume(s, r, 1, 7, "c1b", 0, 0, 0);
    assert_int_equal(stats(s).unacked, 3);
    consume(s, r, 2, 9, "other", 0, 0, 0);
    down(s, r, 1, 7, 0);
    /* all three come back (acquired +1) and go to the remaining consumer, oldest first */
    assert_string_equal(got(r, "other"), "m1 m2 m3");
    for (size_t i = r->n_dlv - 3; i < r->n_dlv; i++) {
        assert_true(r->dlv[i].redelivered);
        assert_int_equal(r->dlv[i].dc, 1);
    }
    assert_false(qsm_has_consumer(s, 1, 7, AMQP_BYTES_CSTR("c1")));
    assert_int_equal(stats(s).consumers, 1);
    assert_int_equal(stats(s).enqueuers, 1);
    /* the enqueuer record went with it: seq 1 from channel 7 is new again */
    rec_clear(r);
    enq_full(s, r, T, 1, 7, 1, 5, "m1again", -1, -1);
    assert_int_equal(r->res[0].status, QSM_R_OK);
    snapshot_roundtrip(s);
    qsm_free(s);
    free(r);
}

static void test_down_node_keep_boot(void **st)
{
    (void)st;
    qsm_t *s = new_q(NULL);
    rec_t *r = rec_new();
    uint64_t old = (1ull << 32) | 5, cur = (2ull << 32) | 5;
    consume(s, r, 3, old, "old", 0, 0, 0);
    consume(s, r, 3, cur, "cur", 0, 0, 0);
    consume(s, r, 4, 1, "elsewhere", 0, 0, 0);
    enq(s, r, "m1");
    enq(s, r, "m2");
    enq(s, r, "m3");
    assert_string_equal(got(r, "old"), "m1");
    /* node 3 restarted as boot 2: everything of boot 1 goes, boot 2 stays */
    down(s, r, 3, 0, 2);
    assert_false(qsm_has_consumer(s, 3, old, AMQP_BYTES_CSTR("old")));
    assert_true(qsm_has_consumer(s, 3, cur, AMQP_BYTES_CSTR("cur")));
    assert_int_equal(stats(s).consumers, 2);
    assert_int_equal(stats(s).unacked, 3);
    assert_string_equal(got(r, "cur"), "m2 m1"); /* round-robin goes on after "elsewhere" */
    /* a whole node down (no keep_boot): cur's two come back, in msg_id order */
    down(s, r, 3, 0, 0);
    assert_int_equal(stats(s).consumers, 1);
    assert_int_equal(stats(s).unacked, 3);
    assert_int_equal(stats(s).returned_total, 3);
    assert_string_equal(got(r, "elsewhere"), "m3 m1 m2");
    assert_int_equal(find_dlv(r, "m1")->dc, 2);
    qsm_free(s);
    free(r);
}

/* ---- basic.get, purge ------------------------------------------------------------------------- */

static void test_dequeue(void **st)
{
    (void)st;
    qsm_t *s = new_q(NULL);
    rec_t *r = rec_new();
    dequeue(s, r, 1, 1, 10, false);
    assert_int_equal(r->n_res, 1);
    assert_int_equal(r->res[0].status, QSM_R_EMPTY);
    enq(s, r, "m1");
    enq(s, r, "m2");
    enq(s, r, "m3");
    dequeue(s, r, 1, 1, 11, true); /* no_ack: gone */
    assert_int_equal(r->res[1].status, QSM_R_OK);
    assert_string_equal(r->res[1].body, "m1");
    assert_int_equal(r->res[1].count, 2);
    assert_int_equal(r->res[1].req, 11);
    assert_int_equal(stats(s).unacked, 0);
    dequeue(s, r, 1, 1, 12, false); /* unsettled: held by (1, 1, "") */
    assert_string_equal(r->res[2].body, "m2");
    assert_int_equal(r->res[2].count, 1);
    assert_int_equal(stats(s).unacked, 1);
    assert_int_equal(stats(s).consumers, 0);
    assert_int_equal(r->n_dlv, 0);
    snapshot_roundtrip(s);
    /* returned, it is fetched again redelivered */
    ret(s, r, 1, 1, "", r->res[2].msg_id);
    dequeue(s, r, 1, 1, 13, false);
    assert_string_equal(r->res[3].body, "m2");
    assert_true(r->res[3].redelivered);
    assert_int_equal(r->res[3].dc, 1);
    settle(s, r, 1, 1, "", r->res[3].msg_id);
    assert_int_equal(stats(s).unacked, 0);
    assert_int_equal(stats(s).ready, 1);
    /* an unsettled get comes back when its channel goes down */
    dequeue(s, r, 1, 1, 14, false);
    assert_int_equal(stats(s).unacked, 1);
    down(s, r, 1, 1, 0);
    assert_int_equal(stats(s).ready, 1);
    assert_int_equal(stats(s).delivered_total, 4);
    qsm_free(s);
    free(r);
}

static void test_purge(void **st)
{
    (void)st;
    qsm_t *s = new_q(dlx_cfg);
    rec_t *r = rec_new();
    for (int i = 0; i < 5; i++) enq(s, r, "m");
    consume(s, r, 1, 1, "c1", 2, 0, 0);
    cancel(s, r, 1, 1, "c1");
    simple(s, r, QSM_PURGE, T, 77);
    assert_int_equal(r->res[0].status, QSM_R_OK);
    assert_int_equal(r->res[0].count, 3);
    assert_int_equal(r->res[0].req, 77);
    assert_int_equal(r->n_dl, 0); /* purged, not dead-lettered */
    assert_int_equal(stats(s).ready, 0);
    assert_int_equal(stats(s).unacked, 2);
    qsm_free(s);
    free(r);
}

/* ---- publisher dedup ----------------------------------------------------------------------------- */

static int enq_seq(qsm_t *s, rec_t *r, uint64_t chan, uint64_t seq)
{
    size_t n = r->n_res;
    char b[16];
    snprintf(b, sizeof b, "s%llu", (unsigned long long)seq);
    if (n == MAXE) n = r->n_res = 0;
    enq_full(s, r, T, 1, chan, seq, 100 + seq, b, -1, -1);
    assert_int_equal(r->n_res, n + 1);
    return r->res[n].status;
}

static void test_dedup(void **st)
{
    (void)st;
    qsm_t *s = new_q(NULL);
    rec_t *r = rec_new();
    assert_int_equal(enq_seq(s, r, 1, 1), QSM_R_OK);
    assert_int_equal(enq_seq(s, r, 1, 1), QSM_R_DUPLICATE);
    assert_int_equal(stats(s).ready, 1);
    /* out of order: 4, 2, 3 are all new, each once */
    assert_int_equal(enq_seq(s, r, 1, 4), QSM_R_OK);
    assert_int_equal(enq_seq(s, r, 1, 2), QSM_R_OK);
    assert_int_equal(enq_seq(s, r, 1, 4), QSM_R_DUPLICATE);
    assert_int_equal(enq_seq(s, r, 1, 3), QSM_R_OK);
    assert_int_equal(enq_seq(s, r, 1, 2), QSM_R_DUPLICATE);
    assert_int_equal(enq_seq(s, r, 1, 1), QSM_R_DUPLICATE);
    assert_int_equal(stats(s).ready, 4);
    /* another channel has its own seqs */
    assert_int_equal(enq_seq(s, r, 2, 1), QSM_R_OK);
    /* 3, 1, 2 on a fresh channel, then 1 again */
    assert_int_equal(enq_seq(s, r, 3, 3), QSM_R_OK);
    assert_int_equal(enq_seq(s, r, 3, 1), QSM_R_OK);
    assert_int_equal(enq_seq(s, r, 3, 2), QSM_R_OK);
    assert_int_equal(enq_seq(s, r, 3, 1), QSM_R_DUPLICATE);
    assert_int_equal(stats(s).ready, 8);
    snapshot_roundtrip(s);
    /* a gap that never fills is given up after 4096 later seqs */
    for (uint64_t q = 10; q < 10 + 4097; q++) enq_seq(s, r, 4, q);
    snapshot_roundtrip(s);
    assert_int_equal(enq_seq(s, r, 4, 4000), QSM_R_DUPLICATE);
    assert_int_equal(enq_seq(s, r, 4, 2), QSM_R_DUPLICATE); /* below the given-up gap */
    assert_int_equal(enq_seq(s, r, 4, 10 + 4097), QSM_R_OK);
    /* seq 0: no dedup */
    enq_full(s, r, T, 1, 9, 0, 0, "a", -1, -1);
    enq_full(s, r, T, 1, 9, 0, 0, "a", -1, -1);
    assert_int_equal(stats(s).ready, 8 + 4097 + 1 + 2);
    qsm_free(s);
    free(r);
}

/* ---- limits ------------------------------------------------------------------------------------------- */

static void maxlen2_cfg(struct qsm_config *c)
{
    c->max_length = 2;
    c->dead_letter = true;
}

static void test_maxlen_drop_head(void **st)
{
    (void)st;
    qsm_t *s = new_q(maxlen2_cfg);
    rec_t *r = rec_new();
    enq(s, r, "m1");
    enq(s, r, "m2");
    enq(s, r, "m3");
    enq(s, r, "m4");
    assert_int_equal(stats(s).ready, 2);
    assert_int_equal(r->n_dl, 2);
    assert_string_equal(r->dl[0].body, "m1");
    assert_string_equal(r->dl[0].reason, "maxlen");
    assert_string_equal(r->dl[1].body, "m2");
    assert_false(stats(s).over_limit); /* drop-head never reports over_limit */
    consume(s, r, 1, 1, "c1", 0, 0, 0);
    assert_string_equal(got(r, "c1"), "m3 m4");
    /* checked-out messages do not count */
    enq(s, r, "m5");
    enq(s, r, "m6");
    assert_int_equal(r->n_dl, 2);
    qsm_free(s);
    free(r);
}

static void reject_cfg(struct qsm_config *c)
{
    c->max_length = 2;
    c->overflow = QSM_REJECT_PUBLISH;
}

static void test_reject_publish(void **st)
{
    (void)st;
    qsm_t *s = new_q(reject_cfg);
    rec_t *r = rec_new();
    assert_int_equal(enq_seq(s, r, 1, 1), QSM_R_OK);
    assert_false(stats(s).over_limit);
    assert_int_equal(enq_seq(s, r, 1, 2), QSM_R_OK);
    assert_true(stats(s).over_limit);
    assert_int_equal(enq_seq(s, r, 1, 3), QSM_R_REJECTED);
    assert_int_equal(stats(s).ready, 2);
    assert_int_equal(r->n_dl, 0);
    /* consume one: room again, and the rejected seq may be sent again */
    dequeue(s, r, 1, 1, 9, true);
    assert_false(stats(s).over_limit);
    assert_int_equal(enq_seq(s, r, 1, 3), QSM_R_OK);
    assert_int_equal(enq_seq(s, r, 1, 4), QSM_R_REJECTED);
    assert_int_equal(enq_seq(s, r, 1, 3), QSM_R_DUPLICATE); /* dedup before the limit */
    qsm_free(s);
    free(r);
}

static void maxbytes_cfg(struct qsm_config *c)
{
    c->max_bytes = 10;
    c->dead_letter = true;
}

static void test_max_bytes(void **st)
{
    (void)st;
    qsm_t *s = new_q(maxbytes_cfg);
    rec_t *r = rec_new();
    enq(s, r, "aaaa");
    enq(s, r, "bbbb");
    enq(s, r, "cccc"); /* 12 bytes: the oldest goes */
    assert_int_equal(stats(s).ready_bytes, 8);
    assert_int_equal(r->n_dl, 1);
    assert_string_equal(r->dl[0].body, "aaaa");
    assert_string_equal(r->dl[0].reason, "maxlen");
    /* reject-publish: at or over the byte limit rejects */
    struct qsm_config cfg = *qsm_config(s);
    cfg.overflow = QSM_REJECT_PUBLISH;
    set_config(s, r, &cfg);
    enq_full(s, r, T, 1, 1, 0, 1, "dd", -1, -1); /* 8 < 10: accepted, now 10 */
    assert_int_equal(r->res[0].status, QSM_R_OK);
    assert_true(stats(s).over_limit);
    enq_full(s, r, T, 1, 1, 0, 2, "e", -1, -1);
    assert_int_equal(r->res[1].status, QSM_R_REJECTED);
    qsm_free(s);
    free(r);
}

/* ---- TTL --------------------------------------------------------------------------------------------- */

static void ttl_cfg(struct qsm_config *c)
{
    c->msg_ttl = 100;
    c->dead_letter = true;
}

static void test_ttl(void **st)
{
    (void)st;
    qsm_t *s = new_q(ttl_cfg);
    rec_t *r = rec_new();
    enq_full(s, r, 1000, 1, 1, 0, 0, "q", -1, -1);    /* expires 1100 (queue TTL) */
    enq_full(s, r, 1000, 1, 1, 0, 0, "own", -1, 50);  /* expires 1050 (its own, smaller) */
    enq_full(s, r, 1000, 1, 1, 0, 0, "big", -1, 500); /* expires 1100 (the queue's, smaller) */
    assert_int_equal(stats(s).earliest_expiry, 1100); /* heads only: "q" is the head */
    /* nothing happens until a command with a later now_ms */
    simple(s, r, QSM_EXPIRE, 1099, 0);
    assert_int_equal(stats(s).ready, 3);
    simple(s, r, QSM_EXPIRE, 1100, 0);
    /* q, then own (1050), then big (1100) reach the head expired */
    assert_int_equal(stats(s).ready, 0);
    assert_int_equal(r->n_dl, 3);
    assert_string_equal(r->dl[0].body, "q");
    assert_string_equal(r->dl[0].reason, "expired");
    assert_string_equal(r->dl[1].body, "own");
    assert_int_equal(stats(s).earliest_expiry, 0);

    /* an expired message is never delivered, even to a consumer arriving later */
    enq_full(s, r, 2000, 1, 1, 0, 0, "late", -1, -1);
    T = 2200;
    consume(s, r, 1, 1, "c1", 1, 0, 0);
    assert_string_equal(got(r, "c1"), "");
    assert_string_equal(r->dl[3].body, "late");

    /* checked-out messages never expire, returned ones keep their expiry */
    enq_full(s, r, 2200, 1, 1, 0, 0, "held", -1, -1); /* expires 2300 */
    assert_string_equal(got(r, "c1"), "held");
    simple(s, r, QSM_EXPIRE, 5000, 0);
    assert_int_equal(stats(s).unacked, 1);
    T = 5000;
    cancel(s, r, 1, 1, "c1");
    ret(s, r, 1, 1, "c1", find_dlv(r, "held")->id);
    assert_int_equal(stats(s).ready, 0); /* back at the head, expired: dead-lettered at once */
    assert_string_equal(r->dl[r->n_dl - 1].body, "held");

    /* TTL 0: delivered to a waiting consumer, else expired by the next command */
    consume(s, r, 1, 2, "c2", 0, 0, 0);
    enq_full(s, r, 6000, 1, 1, 0, 0, "zero", -1, 0);
    assert_string_equal(got(r, "c2"), "zero");
    cancel(s, r, 1, 2, "c2");
    enq_full(s, r, 6000, 1, 1, 0, 0, "zero2", -1, 0);
    assert_int_equal(stats(s).ready, 1);
    simple(s, r, QSM_EXPIRE, 6001, 0);
    assert_int_equal(stats(s).ready, 0);
    T = 1000;
    qsm_free(s);
    free(r);
}

/* ---- at-least-once dead-lettering ------------------------------------------------------------------ */

static void alo_cfg(struct qsm_config *c)
{
    c->dead_letter = true;
    c->overflow = QSM_REJECT_PUBLISH;
    c->dlx_strategy = QSM_AT_LEAST_ONCE;
    c->max_length = 2;
}

static void test_at_least_once(void **st)
{
    (void)st;
    qsm_t *s = new_q(alo_cfg);
    rec_t *r = rec_new();
    enq(s, r, "m1");
    enq(s, r, "m2");
    consume(s, r, 1, 1, "c1", 1, 0, 0);
    discard(s, r, 1, 1, "c1", find_dlv(r, "m1")->id);
    assert_int_equal(r->n_dl, 1);
    uint64_t dlx_id = r->dl[0].dlx_id;
    assert_true(dlx_id != 0);
    struct qsm_stats x = stats(s);
    assert_int_equal(x.dlx, 1);
    assert_int_equal(x.dlx_bytes, 2);
    assert_int_equal(qsm_live(s), 2); /* m2 (checked out) + m1 (dlx) */
    enq(s, r, "m3");                  /* ready m3 + dlx m1 = 2: at the limit */
    assert_true(stats(s).over_limit);
    enq_full(s, r, T, 1, 1, 0, 5, "m4", -1, -1);
    assert_int_equal(r->res[0].status, QSM_R_REJECTED);
    snapshot_roundtrip(s);
    /* the DLX confirms: it leaves, and there is room again */
    struct qsm_cmd c = {.op = QSM_DLX_SETTLE, .n_ids = 1, .ids_in = &dlx_id, .now_ms = T};
    apply(s, r, &c);
    assert_int_equal(stats(s).dlx, 0);
    assert_false(stats(s).over_limit);
    enq_full(s, r, T, 1, 1, 0, 6, "m4", -1, -1);
    assert_int_equal(r->res[1].status, QSM_R_OK);
    /* a settle of an unknown dlx id changes nothing */
    apply(s, r, &c);
    /* leaving at-least-once hands pending dead letters to the DLX at most once */
    discard(s, r, 1, 1, "c1", find_dlv(r, "m2")->id);
    assert_int_equal(stats(s).dlx, 1);
    struct qsm_config cfg = *qsm_config(s);
    cfg.dlx_strategy = QSM_AT_MOST_ONCE;
    set_config(s, r, &cfg);
    assert_int_equal(stats(s).dlx, 0);
    assert_string_equal(r->dl[r->n_dl - 1].body, "m2");
    assert_int_equal(r->dl[r->n_dl - 1].dlx_id, 0);
    assert_string_equal(r->dl[r->n_dl - 1].reason, "rejected");
    qsm_free(s);
    free(r);
}

/* ---- message priorities --------------------------------------------------------------------------- */

static void test_priorities(void **st)
{
    (void)st;
    qsm_t *s = new_q(NULL);
    rec_t *r = rec_new();
    for (int i = 1; i <= 3; i++) {
        char b[8];
        snprintf(b, sizeof b, "n%d", i);
        enq_full(s, r, T, 1, 1, 0, 0, b, 0, -1);
    }
    for (int i = 1; i <= 6; i++) {
        char b[8];
        snprintf(b, sizeof b, "h%d", i);
        enq_full(s, r, T, 1, 1, 0, 0, b, 9, -1);
    }
    enq_full(s, r, T, 1, 1, 0, 0, "p4", 4, -1); /* 4 is still normal */
    consume(s, r, 1, 1, "c1", 1, 0, 0);
    for (int i = 0; i < 10; i++) settle(s, r, 1, 1, "c1", r->dlv[r->n_dlv - 1].id);
    assert_string_equal(got(r, "c1"), "h1 h2 n1 h3 h4 n2 h5 h6 n3 p4");
    /* returns go before both levels */
    enq_full(s, r, T, 1, 1, 0, 0, "h7", 9, -1);
    enq_full(s, r, T, 1, 1, 0, 0, "n4", 0, -1);
    ret(s, r, 1, 1, "c1", find_dlv(r, "h7")->id);
    assert_string_equal(r->dlv[r->n_dlv - 1].body, "h7");
    assert_true(r->dlv[r->n_dlv - 1].redelivered);
    qsm_free(s);
    free(r);
}

/* ---- runtime config ---------------------------------------------------------------------------------- */

static void test_config_runtime(void **st)
{
    (void)st;
    qsm_t *s = new_q(dlx_cfg);
    rec_t *r = rec_new();
    for (int i = 1; i <= 5; i++) {
        char b[8];
        snprintf(b, sizeof b, "m%d", i);
        enq(s, r, b);
    }
    struct qsm_config cfg = *qsm_config(s);
    cfg.max_length = 3; /* lowered: the oldest go at once */
    set_config(s, r, &cfg);
    assert_int_equal(stats(s).ready, 3);
    assert_int_equal(r->n_dl, 2);
    assert_string_equal(r->dl[1].body, "m2");
    cfg.overflow = QSM_REJECT_PUBLISH;
    set_config(s, r, &cfg);
    enq_full(s, r, T, 1, 1, 0, 1, "m6", -1, -1);
    assert_int_equal(r->res[0].status, QSM_R_REJECTED);
    cfg.max_length = -1;
    cfg.msg_ttl = 10; /* applies to messages enqueued from now on */
    cfg.delivery_limit = 0;
    set_config(s, r, &cfg);
    assert_int_equal(qsm_config(s)->msg_ttl, 10);
    enq_full(s, r, T, 1, 1, 0, 2, "m7", -1, -1);
    assert_int_equal(r->res[1].status, QSM_R_OK);
    simple(s, r, QSM_EXPIRE, T + 10, 0);
    assert_int_equal(stats(s).ready, 4); /* m7 is behind unexpired heads */
    consume(s, r, 1, 1, "c1", 1, 0, 0);
    ret(s, r, 1, 1, "c1", find_dlv(r, "m3")->id); /* delivery_limit 0: first return dead-letters */
    assert_string_equal(r->dl[r->n_dl - 1].reason, "delivery_limit");
    /* SAC switched on at runtime */
    consume(s, r, 1, 2, "c2", 0, 0, 0);
    cfg.single_active = true;
    set_config(s, r, &cfg);
    assert_false(qsm_has_consumer(s, 1, 2, AMQP_BYTES_CSTR("c2")));
    qsm_free(s);
    free(r);
}

/* ---- codec ---------------------------------------------------------------------------------------------- */

static void test_codec(void **st)
{
    (void)st;
    amqp_buf_t rec = {0};
    make_record(&rec, "body", 7);
    uint64_t ids[3] = {1, 2, 0xffffffffffffffffULL};
    struct qsm_cmd cmds[] = {
        {.op = QSM_ENQUEUE, .node = 7, .chan = 1ull << 40, .req = 9, .seq = 3, .expiration_ms = 5, .now_ms = -4,
         .msg = {rec.data, rec.len}},
        {.op = QSM_CHECKOUT, .node = 1, .chan = 2, .tag = AMQP_BYTES_CSTR("ctag"), .prefetch = 10, .priority = -3,
         .flags = QSM_F_NO_ACK | QSM_F_EXCLUSIVE, .now_ms = 1},
        {.op = QSM_CANCEL, .node = 1, .chan = 2, .tag = AMQP_BYTES_CSTR("x")},
        {.op = QSM_SETTLE, .node = 1, .chan = 2, .tag = AMQP_BYTES_CSTR("x"), .n_ids = 3, .ids_in = ids},
        {.op = QSM_RETURN, .node = 1, .chan = 2, .n_ids = 0},
        {.op = QSM_DISCARD, .node = 1, .chan = 2, .n_ids = 1, .ids_in = ids},
        {.op = QSM_DEQUEUE, .node = 3, .chan = 4, .req = 5, .flags = QSM_F_NO_ACK},
        {.op = QSM_DOWN, .node = 3, .chan = 0, .seq = 2},
        {.op = QSM_PURGE, .node = 3, .req = 8},
        {.op = QSM_CONFIG, .config = {.delivery_limit = -1, .max_length = 5, .max_bytes = -1, .msg_ttl = 0,
                                      .overflow = 1, .dlx_strategy = 1, .dead_letter = true, .single_active = true}},
        {.op = QSM_EXPIRE, .now_ms = 123456789},
        {.op = QSM_DLX_SETTLE, .n_ids = 2, .ids_in = ids},
    };
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        amqp_buf_t b = {0};
        qsm_encode(&b, &cmds[i]);
        struct qsm_cmd d;
        assert_int_equal(qsm_decode(b.data, b.len, &d), 0);
        assert_int_equal(d.op, cmds[i].op);
        assert_int_equal(d.node, cmds[i].node);
        assert_int_equal(d.now_ms, cmds[i].now_ms);
        assert_int_equal(d.n_ids, cmds[i].n_ids);
        for (uint32_t k = 0; k < d.n_ids; k++) assert_int_equal(qsm_cmd_id(&d, k), ids[k]);
        if (d.op == QSM_ENQUEUE) {
            assert_int_equal(d.chan, 1ull << 40);
            assert_int_equal(d.req, 9);
            assert_int_equal(d.seq, 3);
            assert_int_equal(d.expiration_ms, 5);
            assert_int_equal(d.msg.len, rec.len);
            assert_memory_equal(d.msg.ptr, rec.data, rec.len);
        }
        if (d.op == QSM_CHECKOUT) {
            assert_int_equal(d.prefetch, 10);
            assert_int_equal(d.priority, -3);
            assert_int_equal(d.flags, QSM_F_NO_ACK | QSM_F_EXCLUSIVE);
            assert_true(amqp_bytes_eq_cstr(d.tag, "ctag"));
        }
        if (d.op == QSM_CONFIG) assert_memory_equal(&d.config, &cmds[i].config, sizeof d.config);
        if (d.op == QSM_DOWN) assert_int_equal(d.seq, 2);
        /* every strict prefix is truncated, one more byte is trailing */
        for (size_t n = 0; n < b.len; n++) assert_int_equal(qsm_decode(b.data, n, &d), -1);
        amqp_buf_put_u8(&b, 0);
        assert_int_equal(qsm_decode(b.data, b.len, &d), -1);
        /* wrong version */
        b.data[0] = 2;
        assert_int_equal(qsm_decode(b.data, b.len - 1, &d), -1);
        amqp_buf_free(&b);
    }
    /* invalid enums, flags, expiration, records and id counts */
    struct qsm_cmd bad[] = {
        {.op = 0},
        {.op = 13},
        {.op = QSM_CHECKOUT, .flags = 4},
        {.op = QSM_DEQUEUE, .flags = QSM_F_EXCLUSIVE},
        {.op = QSM_CONFIG, .config = {.overflow = 2}},
        {.op = QSM_CONFIG, .config = {.dlx_strategy = 2}},
        {.op = QSM_ENQUEUE, .expiration_ms = -2, .msg = {rec.data, rec.len}},
        {.op = QSM_ENQUEUE, .expiration_ms = -1, .msg = {rec.data, 3}},
        {.op = QSM_ENQUEUE, .expiration_ms = -1, .msg = {NULL, 0}},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        amqp_buf_t b = {0};
        qsm_encode(&b, &bad[i]);
        struct qsm_cmd d;
        assert_int_equal(qsm_decode(b.data, b.len, &d), -1);
        amqp_buf_free(&b);
    }
    uint8_t huge[] = {1, QSM_DLX_SETTLE, 0, 0, 0, 0, 0, 0, 0, 0, 0x20, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8};
    struct qsm_cmd d;
    assert_int_equal(qsm_decode(huge, sizeof huge, &d), -1);
    struct qsm_cmd cc = {.op = QSM_CONFIG};
    amqp_buf_t bits = {0};
    qsm_encode(&bits, &cc);
    bits.data[bits.len - 1] = 4; /* an unknown config bit */
    assert_int_equal(qsm_decode(bits.data, bits.len, &d), -1);
    bits.data[bits.len - 1] = 3;
    assert_int_equal(qsm_decode(bits.data, bits.len, &d), 0);
    assert_true(d.config.dead_letter && d.config.single_active);
    amqp_buf_free(&bits);
    amqp_buf_free(&rec);
}

/* A CHECKOUT of a channel from a node's earlier boot, committed after that node's restart DOWN
 * (a late retry), registers nothing: otherwise a consumer nobody serves would pin messages. */
static void test_checkout_from_an_earlier_boot_ignored(void **st)
{
    (void)st;
    qsm_t *s = new_q(NULL);
    rec_t *r = rec_new();
    down(s, r, 7, 0, 3); /* node 7 restarted: boot 3 */
    consume(s, r, 7, (2ull << 32) | 5, "old", 10, 0, 0);
    enq(s, r, "m1");
    assert_int_equal(r->n_dlv, 0);
    assert_int_equal(stats(s).consumers, 0);
    consume(s, r, 7, (3ull << 32) | 1, "new", 10, 0, 0);
    assert_int_equal(r->n_dlv, 1);
    /* the floor survives a snapshot */
    amqp_buf_t a = {0}, b = {0};
    qsm_snapshot(s, &a);
    qsm_t *t = qsm_restore(a.data, a.len);
    assert_non_null(t);
    qsm_snapshot(t, &b);
    assert_int_equal(a.len, b.len);
    assert_memory_equal(a.data, b.data, a.len);
    rec_t *r2 = rec_new();
    consume(t, r2, 7, (2ull << 32) | 9, "old2", 10, 0, 0);
    assert_int_equal(stats(t).consumers, 1);
    amqp_buf_free(&a);
    amqp_buf_free(&b);
    qsm_free(t);
    qsm_free(s);
    free(r);
    free(r2);
}

/* ---- snapshots -------------------------------------------------------------------------------------------- */

static void test_snapshot_restore(void **st)
{
    (void)st;
    qsm_t *s = new_q(alo_cfg);
    rec_t *r = rec_new();
    struct qsm_config cfg = *qsm_config(s);
    cfg.max_length = -1;
    set_config(s, r, &cfg);
    for (int i = 0; i < 6; i++) enq_full(s, r, T, 1, 1, (uint64_t)i + 1, 0, "m", i % 2 ? 9 : 0, 5000);
    enq_seq(s, r, 2, 7); /* a seen seq above a gap */
    consume(s, r, 1, 1, "a", 2, 1, 0);
    consume(s, r, 1, 2, "b", 1, 0, 0);
    ret(s, r, 1, 1, "a", r->dlv[0].id);
    discard(s, r, 1, 2, "b", r->dlv[1].id);
    dequeue(s, r, 3, 3, 1, false);
    cancel(s, r, 1, 1, "a");
    struct qsm_stats before = stats(s);
    amqp_buf_t a = {0};
    qsm_snapshot(s, &a);
    qsm_t *t = qsm_restore(a.data, a.len);
    assert_non_null(t);
    struct qsm_stats after = stats(t);
    assert_memory_equal(&before, &after, sizeof before);
    assert_memory_equal(qsm_config(s), qsm_config(t), sizeof(struct qsm_config));
    /* the restored state behaves the same */
    rec_t *r2 = rec_new();
    rec_clear(r);
    r->hash = r2->hash = 0;
    consume(s, r, 4, 4, "z", 0, 0, 0);
    consume(t, r2, 4, 4, "z", 0, 0, 0);
    assert_int_equal(r->hash, r2->hash);
    assert_true(r->n_dlv > 0);
    /* malformed: every truncation, trailing bytes, and flipped bytes never crash */
    for (size_t n = 0; n < a.len; n++) assert_null(qsm_restore(a.data, n));
    amqp_buf_put_u8(&a, 0);
    assert_null(qsm_restore(a.data, a.len));
    a.len--;
    for (size_t i = 0; i < a.len; i++) {
        a.data[i] ^= 0x41;
        qsm_t *x = qsm_restore(a.data, a.len);
        if (x) {
            amqp_buf_t b = {0};
            qsm_snapshot(x, &b); /* what restores snapshots to the same bytes */
            assert_int_equal(b.len, a.len);
            assert_memory_equal(b.data, a.data, a.len);
            amqp_buf_free(&b);
            qsm_free(x);
        }
        a.data[i] ^= 0x41;
    }
    amqp_buf_free(&a);
    qsm_free(s);
    qsm_free(t);
    free(r);
    free(r2);
}

/* ---- determinism and stats under a random command stream ------------------------------------------------- */

static uint64_t rng_state;
static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}
static uint32_t rndn(uint32_t n) { return (uint32_t)(rnd() % n); }

static const char *const TAGS[] = {"a", "b", "c", ""};

/* Picks a plausible command: ids come from recent deliveries and dead letters, so most settles,
 * returns and discards hit a held message. */
static void random_cmd(struct qsm_cmd *c, uint64_t *ids, amqp_buf_t *rec, const rec_t *seen, int64_t now)
{
    memset(c, 0, sizeof *c);
    c->now_ms = now;
    c->node = 1 + rndn(3);
    c->chan = ((uint64_t)(1 + rndn(2)) << 32) | (1 + rndn(3));
    uint32_t k = rndn(100);
    if (k < 35) {
        char body[16];
        snprintf(body, sizeof body, "b%u", rndn(1000));
        rec->len = 0;
        make_record(rec, body, rndn(4) == 0 ? 9 : -1);
        *c = (struct qsm_cmd){.op = QSM_ENQUEUE, .node = c->node, .chan = c->chan, .now_ms = now,
                              .seq = rndn(3) ? rndn(200) : 0, .req = rnd() % 5, .msg = {rec->data, rec->len},
                              .expiration_ms = rndn(4) == 0 ? (int64_t)rndn(300) : -1};
    } else if (k < 43) {
        c->op = QSM_CHECKOUT;
        c->tag = AMQP_BYTES_CSTR(TAGS[rndn(3)]);
        c->prefetch = rndn(4);
        c->priority = (int32_t)rndn(3);
        c->flags = rndn(6) == 0 ? QSM_F_NO_ACK : 0;
    } else if (k < 46) {
        c->op = QSM_CANCEL;
        c->tag = AMQP_BYTES_CSTR(TAGS[rndn(4)]);
    } else if (k < 78 && seen->n_dlv + seen->n_res) {
        static const uint8_t ops[] = {QSM_SETTLE, QSM_SETTLE, QSM_SETTLE, QSM_RETURN, QSM_DISCARD};
        c->op = ops[rndn(5)];
        c->n_ids = 1 + rndn(3);
        c->ids_in = ids;
        bool use_get = seen->n_res && rndn(4) == 0;
        for (uint32_t i = 0; i < c->n_ids; i++) {
            if (use_get) {
                const res_t *x = &seen->res[seen->n_res - 1 - rndn((uint32_t)(seen->n_res < 8 ? seen->n_res : 8))];
                c->node = x->node;
                ids[i] = x->msg_id;
                c->tag = AMQP_BYTES_CSTR("");
            } else if (seen->n_dlv) {
                const dlv_t *d = &seen->dlv[seen->n_dlv - 1 - rndn((uint32_t)(seen->n_dlv < 16 ? seen->n_dlv : 16))];
                c->node = d->node;
                c->chan = d->chan;
                ids[i] = d->id;
                c->tag = AMQP_BYTES_CSTR(TAGS[d->tag[0] ? d->tag[0] - 'a' : 3]);
            }
        }
    } else if (k < 86) {
        c->op = QSM_DEQUEUE;
        c->req = 1 + rndn(4);
        c->flags = rndn(2) ? QSM_F_NO_ACK : 0;
    } else if (k < 89) {
        c->op = QSM_DOWN;
        if (rndn(2)) c->chan = 0;
        c->seq = rndn(3) ? 0 : 1 + rndn(2);
    } else if (k < 90) {
        c->op = QSM_PURGE;
        c->req = 1;
    } else if (k < 93) {
        c->op = QSM_CONFIG;
        qsm_config_defaults(&c->config);
        c->config.delivery_limit = (int64_t)rndn(5) - 1;
        c->config.max_length = rndn(3) ? -1 : (int64_t)rndn(30);
        c->config.max_bytes = rndn(4) ? -1 : (int64_t)rndn(100);
        c->config.msg_ttl = rndn(3) ? -1 : (int64_t)rndn(500);
        c->config.overflow = (uint8_t)rndn(2);
        c->config.dlx_strategy = (uint8_t)rndn(2);
        c->config.dead_letter = rndn(3) != 0;
        c->config.single_active = rndn(4) == 0;
    } else if (k < 96) {
        c->op = QSM_EXPIRE;
    } else {
        c->op = QSM_DLX_SETTLE;
        c->n_ids = seen->n_dl ? 1 + rndn(2) : 0;
        c->ids_in = ids;
        for (uint32_t i = 0; i < c->n_ids; i++)
            ids[i] = seen->dl[seen->n_dl - 1 - rndn((uint32_t)(seen->n_dl < 8 ? seen->n_dl : 8))].dlx_id;
    }
}

static bool snapshots_equal(const qsm_t *a, const qsm_t *b)
{
    amqp_buf_t x = {0}, y = {0};
    qsm_snapshot(a, &x);
    qsm_snapshot(b, &y);
    bool eq = x.len == y.len && memcmp(x.data, y.data, x.len) == 0;
    amqp_buf_free(&x);
    amqp_buf_free(&y);
    return eq;
}

/* Every message enqueued is exactly one of: ready, checked out, settled, purged, dead-lettered. */
static void check_conservation(const qsm_t *s, uint64_t purged)
{
    struct qsm_stats x = stats(s);
    assert_int_equal(x.enqueued_total, x.ready + x.unacked + x.settled_total + purged + x.dead_lettered_total);
    assert_int_equal(qsm_live(s), x.ready + x.unacked + x.dlx);
    assert_true(x.dlx <= x.dead_lettered_total);
    if (x.ready == 0) assert_int_equal(x.ready_bytes, 0);
}

static void test_determinism(void **st)
{
    (void)st;
    enum { N = 20000, SPLIT = 9000, CHECK_EVERY = 1000 };
    rng_state = 0x9e3779b97f4a7c15ULL;
    qsm_t *a = new_q(dlx_cfg), *b = new_q(dlx_cfg), *c = NULL;
    rec_t *ra = rec_new(), *rb = rec_new(), *rc = rec_new();
    amqp_buf_t rec = {0};
    uint64_t ids[4], purged = 0, hash_a_after_split = 0;
    int64_t now = 1000;
    size_t enq_ok = 0;
    for (int i = 0; i < N; i++) {
        now += rndn(20);
        struct qsm_cmd cmd;
        random_cmd(&cmd, ids, &rec, ra, now);
        if (ra->n_dlv > MAXE - 64 || ra->n_res > MAXE - 64 || ra->n_dl > MAXE - 64) {
            /* keep the recent tails, which is what random_cmd draws from */
            uint64_t h = ra->hash;
            memmove(ra->dlv, ra->dlv + ra->n_dlv - 16, 16 * sizeof *ra->dlv);
            memmove(ra->res, ra->res + (ra->n_res >= 8 ? ra->n_res - 8 : 0), 8 * sizeof *ra->res);
            memmove(ra->dl, ra->dl + (ra->n_dl >= 8 ? ra->n_dl - 8 : 0), 8 * sizeof *ra->dl);
            ra->n_dlv = 16;
            ra->n_res = ra->n_res >= 8 ? 8 : ra->n_res;
            ra->n_dl = ra->n_dl >= 8 ? 8 : ra->n_dl;
            ra->hash = h;
        }
        if (i == SPLIT) {
            amqp_buf_t snap = {0};
            qsm_snapshot(a, &snap);
            c = qsm_restore(snap.data, snap.len);
            assert_non_null(c);
            amqp_buf_free(&snap);
            hash_a_after_split = ra->hash;
            rc->hash = ra->hash; /* c continues a's effect stream */
        }
        size_t nres = ra->n_res;
        apply(a, ra, &cmd);
        apply(b, rb, &cmd);
        if (c) apply(c, rc, &cmd);
        for (size_t k = nres; k < ra->n_res; k++) {
            if (cmd.op == QSM_PURGE) purged += ra->res[k].count;
            if (cmd.op == QSM_ENQUEUE && ra->res[k].status == QSM_R_OK) enq_ok++;
        }
        assert_int_equal(ra->hash, rb->hash);
        check_conservation(a, purged);
        if (i % CHECK_EVERY == 0) {
            assert_true(snapshots_equal(a, b));
            snapshot_roundtrip(a);
        }
    }
    assert_true(snapshots_equal(a, b));
    assert_true(snapshots_equal(a, c));
    assert_int_equal(ra->hash, rc->hash);
    assert_true(ra->hash != hash_a_after_split);
    /* the stream did exercise the machine */
    struct qsm_stats x = stats(a);
    assert_true(x.enqueued_total > 1000);
    assert_true(x.delivered_total > 1000);
    assert_true(x.settled_total > 100);
    assert_true(x.returned_total > 100);
    assert_true(x.dead_lettered_total > 100);
    assert_true(enq_ok > 0);
    amqp_buf_free(&rec);
    qsm_free(a);
    qsm_free(b);
    qsm_free(c);
    free(ra);
    free(rb);
    free(rc);
}

/* A large backlog: a million messages in and out, as the design is for. */
static void test_scale(void **st)
{
    (void)st;
    qsm_t *s = new_q(NULL);
    enum { N = 200000 };
    amqp_buf_t rec = {0};
    make_record(&rec, "x", -1);
    for (int i = 0; i < N; i++) {
        struct qsm_cmd c = {.op = QSM_ENQUEUE, .node = 1, .chan = 1, .seq = (uint64_t)i + 1, .now_ms = T,
                            .expiration_ms = -1, .msg = {rec.data, rec.len}};
        qsm_apply(s, &c, NULL);
    }
    assert_int_equal(stats(s).ready, N);
    struct qsm_cmd co = {.op = QSM_CHECKOUT, .node = 1, .chan = 2, .tag = AMQP_BYTES_CSTR("c"), .prefetch = 0};
    qsm_apply(s, &co, NULL);
    assert_int_equal(stats(s).unacked, N);
    for (uint64_t id = 1; id <= N; id++) {
        struct qsm_cmd c = {.op = QSM_SETTLE, .node = 1, .chan = 2, .tag = AMQP_BYTES_CSTR("c"), .n_ids = 1,
                            .ids_in = &id};
        qsm_apply(s, &c, NULL);
    }
    assert_int_equal(qsm_live(s), 0);
    amqp_buf_free(&rec);
    qsm_free(s);
}

/* The local (META) snapshot: bodies by length only, a few bytes per message when messages share
 * their header; restores with every body absent and snapshots back to the same bytes; the body
 * hook sees every message. */
static unsigned meta_calls;
static bool count_meta(void *ud, uint64_t id, const msg_t *m, amqp_buf_t *out)
{
    (void)ud, (void)id, (void)m;
    assert_null(out);
    meta_calls++;
    return true;
}

static void test_meta_snapshot(void **st)
{
    (void)st;
    rec_t *r = rec_new();
    qsm_t *s = new_q(NULL);
    enum { N = 1000 };
    for (int i = 0; i < N; i++) enq(s, r, "same header, body of some length");
    enq_full(s, r, T, 1, 1, 0, 0, "expires", 9, 5000);     /* another header, an expiry */
    enq_full(s, r, -T, 2, 7, 0, 0, "from the past", -1, 0); /* a negative expiry */
    consume(s, r, 1, 5, "c", 3, 0, 0);
    ids_op(s, r, QSM_RETURN, 1, 5, "c", 2); /* acquired 1, back in the returns deque */
    amqp_buf_t a = {0}, b = {0};
    meta_calls = 0;
    assert_int_equal(qsm_snapshot_ex(s, &a, QSM_SNAP_META, count_meta, NULL), 0);
    assert_int_equal(meta_calls, N + 2);
    assert_true(a.len < 200 + (N + 2) * 12);
    qsm_t *t = qsm_restore(a.data, a.len);
    assert_non_null(t);
    assert_int_equal(qsm_live(t), N + 2);
    assert_int_equal(qsm_snapshot_ex(t, &b, QSM_SNAP_META, NULL, NULL), 0);
    assert_int_equal(a.len, b.len);
    assert_memory_equal(a.data, b.data, a.len);
    /* a FULL snapshot needs the bodies: without a body hook it fails */
    amqp_buf_t c = {0};
    assert_int_equal(qsm_snapshot_ex(t, &c, QSM_SNAP_FULL, NULL, NULL), -1);
    /* a repeated header written out again is not canonical */
    a.data[a.len - 1] ^= 0x80;
    qsm_t *bad = qsm_restore(a.data, a.len);
    if (bad) qsm_free(bad);
    amqp_buf_free(&a);
    amqp_buf_free(&b);
    amqp_buf_free(&c);
    qsm_free(t);
    qsm_free(s);
    free(r);
}

/* META snapshots keep the encodings of ready messages between snapshots: each one is byte for
 * byte what encoding everything now gives, through appends, pops from the head (gets, deliveries,
 * purges), returns and enough traffic to move the kept bytes; and a snapshot after appends only
 * encodes (and reports to the body hook) the head and the new messages. */
static void test_meta_snapshot_cache(void **st)
{
    (void)st;
    rec_t *r = rec_new();
    qsm_t *s = new_q(NULL);
    amqp_buf_t a = {0}, b = {0};
    unsigned cached_calls = 0, fresh_calls = 0;
    uint64_t next_tag = 1;
    for (int round = 0; round < 60; round++) {
        int adds = 50 + (round * 37) % 400;
        for (int i = 0; i < adds; i++) {
            if (i % 97 == 5) enq_full(s, r, T, 2, 3, 0, 0, "other header", 4, 0); /* priority: hi deque */
            else if (i % 131 == 7) enq_full(s, r, T, 1, 1, 0, 0, "expiring", -1, 100000);
            else enq(s, r, "same header, body of some length");
        }
        if (round % 3 == 1)
            for (int i = 0; i < 40 + round * 5; i++) dequeue(s, r, 1, 9, next_tag++, true);
        if (round % 7 == 3) {
            consume(s, r, 1, 5, "c", 30, 0, 0);
            for (uint64_t id = 0; id < 4000; id += 13) ret(s, r, 1, 5, "c", id); /* the checked-out ones go back */
            cancel(s, r, 1, 5, "c");
        }
        if (round % 10 == 9) /* drain most: the kept bytes move down */
            while (stats(s).ready > 600) dequeue(s, r, 1, 9, next_tag++, true);
        if (round == 45) simple(s, r, QSM_PURGE, T, 77);
        a.len = b.len = 0;
        meta_calls = 0;
        assert_int_equal(qsm_snapshot_ex(s, &a, QSM_SNAP_META, count_meta, NULL), 0);
        cached_calls += meta_calls;
        meta_calls = 0;
        assert_int_equal(qsm_snapshot_ex(s, &b, QSM_SNAP_META | QSM_SNAP_UNCACHED, count_meta, NULL), 0);
        fresh_calls += meta_calls;
        assert_int_equal(meta_calls, qsm_live(s));
        assert_int_equal(a.len, b.len);
        assert_memory_equal(a.data, b.data, a.len);
    }
    assert_true(cached_calls < fresh_calls / 2);
    /* Appends only: the head and the new messages are encoded, and the checked-out ones. */
    a.len = 0;
    assert_int_equal(qsm_snapshot_ex(s, &a, QSM_SNAP_META, NULL, NULL), 0);
    for (int i = 0; i < 100; i++) enq(s, r, "same header, body of some length");
    a.len = 0;
    meta_calls = 0;
    assert_int_equal(qsm_snapshot_ex(s, &a, QSM_SNAP_META, count_meta, NULL), 0);
    assert_int_equal(meta_calls, 1 + 100 + stats(s).unacked); /* checked-out messages: encoded each time */
    qsm_t *t = qsm_restore(a.data, a.len);
    assert_non_null(t);
    b.len = 0;
    assert_int_equal(qsm_snapshot_ex(t, &b, QSM_SNAP_META, NULL, NULL), 0);
    assert_int_equal(a.len, b.len);
    assert_memory_equal(a.data, b.data, a.len);
    qsm_free(t);
    amqp_buf_free(&a);
    amqp_buf_free(&b);
    qsm_free(s);
    free(r);
}

struct id_truth { msg_t *by_id[400]; };

static void note_msg(void *ud, uint64_t msg_id, msg_t *m)
{
    struct id_truth *t = ud;
    assert_true(msg_id < 400);
    t->by_id[msg_id] = m;
}

/* qsm_find_many finds every live message wherever it is (ready in either priority deque,
 * returned, checked out, dead-lettered at least once) and nothing that has left. */
static void test_find_many(void **st)
{
    (void)st;
    rec_t *r = rec_new();
    qsm_t *s = new_q(NULL);
    char body[32];
    for (int i = 0; i < 300; i++) {
        snprintf(body, sizeof body, "m%d", i);
        enq_full(s, r, T, 1, 1, 0, 0, body, i % 10 == 3 ? 7 : -1, -1);
    }
    consume(s, r, 1, 5, "c", 40, 0, 0);                            /* ids 1..40-ish checked out */
    for (uint64_t id = 40; id >= 2; id -= 3) ret(s, r, 1, 5, "c", id); /* back, in descending order */
    cancel(s, r, 1, 5, "c");
    for (uint64_t id = 1; id < 60; id += 7) settle(s, r, 1, 5, "c", id);
    for (int i = 0; i < 25; i++) dequeue(s, r, 1, 9, 100 + i, true); /* returns, then the heads go */
    struct id_truth t = {0};
    qsm_each_msg(s, note_msg, &t);
    uint64_t ids[400];
    msg_t *found[400];
    for (uint64_t i = 0; i < 400; i++) ids[i] = i;
    qsm_find_many(s, ids, 400, found);
    unsigned live = 0;
    for (int i = 0; i < 400; i++) {
        assert_ptr_equal(found[i], t.by_id[i]);
        live += found[i] != NULL;
    }
    assert_int_equal(live, qsm_live(s));
    assert_true(live > 200 && live < 300);
    /* A sparse, ascending subset gets the same answers. */
    uint64_t few[] = {2, 5, 39, 150, 299, 300, 399};
    msg_t *ffew[7];
    qsm_find_many(s, few, 7, ffew);
    for (int i = 0; i < 7; i++) assert_ptr_equal(ffew[i], t.by_id[few[i]]);
    qsm_free(s);
    free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_meta_snapshot),
        cmocka_unit_test(test_meta_snapshot_cache),
        cmocka_unit_test(test_find_many),
        cmocka_unit_test(test_fifo_order),
        cmocka_unit_test(test_prefetch_and_credit),
        cmocka_unit_test(test_no_ack),
        cmocka_unit_test(test_round_robin),
        cmocka_unit_test(test_consumer_priority),
        cmocka_unit_test(test_single_active_consumer),
        cmocka_unit_test(test_cancel_keeps_checked_out),
        cmocka_unit_test(test_return_redelivery),
        cmocka_unit_test(test_delivery_limit),
        cmocka_unit_test(test_discard_rejected),
        cmocka_unit_test(test_down_channel),
        cmocka_unit_test(test_down_node_keep_boot),
        cmocka_unit_test(test_checkout_from_an_earlier_boot_ignored),
        cmocka_unit_test(test_dequeue),
        cmocka_unit_test(test_purge),
        cmocka_unit_test(test_dedup),
        cmocka_unit_test(test_maxlen_drop_head),
        cmocka_unit_test(test_reject_publish),
        cmocka_unit_test(test_max_bytes),
        cmocka_unit_test(test_ttl),
        cmocka_unit_test(test_at_least_once),
        cmocka_unit_test(test_priorities),
        cmocka_unit_test(test_config_runtime),
        cmocka_unit_test(test_codec),
        cmocka_unit_test(test_snapshot_restore),
        cmocka_unit_test(test_determinism),
        cmocka_unit_test(test_scale),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
