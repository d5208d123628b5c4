/* test_meta.c - the metadata state machine (broker/meta.c): command encoding, deterministic
 * apply on several brokers (same commands, same registry, same outcomes), replays at or below
 * the applied index skipped, and snapshots that bring a fresh or a diverged registry to the
 * snapshot's state. The brokers here have no loop and no store: meta.c only needs the registry. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "broker/broker.h"
#include "broker/config.h"
#include "broker/meta.h"

static cfg_t cfg;

static broker_t *new_broker(uint32_t node)
{
    broker_t *b = broker_new(NULL, &cfg, NULL);
    b->self_node = node;
    br_vhost_add(b, "/");
    return b;
}

static struct meta_cmd cmd(uint8_t op, const char *name)
{
    struct meta_cmd c = {.op = op, .vhost = AMQP_BYTES_CSTR("/"), .name = AMQP_BYTES_CSTR(name)};
    return c;
}

/* Encodes c and applies it at index on every broker; returns the first broker's code and checks
 * that all brokers agree. */
static int apply_all(broker_t **bs, int n, uint64_t index, const struct meta_cmd *c)
{
    amqp_buf_t buf = {0};
    meta_encode(&buf, c);
    int first = -1;
    for (int i = 0; i < n; i++) {
        br_err_t err;
        int rc = meta_apply(bs[i], index, buf.data, buf.len, &err);
        if (i == 0) first = rc;
        assert_int_equal(rc, first);
    }
    amqp_buf_free(&buf);
    return first;
}

/* A canonical description of a registry, for comparing brokers. */
static char *describe(broker_t *b)
{
    void *bytes;
    size_t len;
    assert_int_equal(meta_snapshot_take(b, &bytes, &len), 0);
    /* The snapshot lists records in dict order, which may differ between brokers: sort the
     * records' hex forms instead of comparing bytes. */
    const uint8_t *p = (const uint8_t *)bytes + 1 + 8;
    uint32_t n = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
    p += 4;
    char **recs = calloc(n + 1, sizeof *recs);
    for (uint32_t i = 0; i < n; i++) {
        uint32_t rl = (uint32_t)p[8] << 24 | (uint32_t)p[9] << 16 | (uint32_t)p[10] << 8 | p[11];
        size_t total = 12 + rl;
        recs[i] = malloc(2 * total + 1);
        for (size_t k = 0; k < total; k++) sprintf(recs[i] + 2 * k, "%02x", p[k]);
        p += total;
    }
    for (uint32_t i = 1; i < n; i++)
        for (uint32_t j = i; j > 0 && strcmp(recs[j], recs[j - 1]) < 0; j--) {
            char *t = recs[j];
            recs[j] = recs[j - 1];
            recs[j - 1] = t;
        }
    size_t total = 1;
    for (uint32_t i = 0; i < n; i++) total += strlen(recs[i]) + 1;
    char *out = calloc(1, total);
    for (uint32_t i = 0; i < n; i++) {
        strcat(out, recs[i]);
        strcat(out, "\n");
        free(recs[i]);
    }
    free(recs);
    free(bytes);
    return out;
}

static void assert_same_registry(broker_t *a, broker_t *b)
{
    char *da = describe(a), *db = describe(b);
    assert_string_equal(da, db);
    free(da);
    free(db);
}

static void test_encoding(void **state)
{
    (void)state;
    struct meta_cmd c = cmd(META_BIND, "q1");
    c.flags = META_F_DEST_QUEUE | META_F_DURABLE;
    c.home = 7;
    c.conn = 0x1234567890ull;
    c.name2 = AMQP_BYTES_CSTR("amq.topic");
    c.key = AMQP_BYTES_CSTR("a.*.c");
    amqp_buf_t buf = {0};
    meta_encode(&buf, &c);
    struct meta_cmd d;
    assert_int_equal(meta_decode(buf.data, buf.len, &d), 0);
    assert_int_equal(d.op, META_BIND);
    assert_int_equal(d.flags, c.flags);
    assert_int_equal(d.home, 7);
    assert_true(d.conn == c.conn);
    assert_true(amqp_bytes_eq_cstr(d.name, "q1"));
    assert_true(amqp_bytes_eq_cstr(d.name2, "amq.topic"));
    assert_true(amqp_bytes_eq_cstr(d.key, "a.*.c"));
    for (size_t cut = 0; cut < buf.len; cut++) assert_int_equal(meta_decode(buf.data, cut, &d), -1);
    buf.data[1] = 99; /* unknown op */
    assert_int_equal(meta_decode(buf.data, buf.len, &d), -1);
    amqp_buf_free(&buf);
}

static void test_apply_is_deterministic(void **state)
{
    (void)state;
    broker_t *bs[3] = {new_broker(1), new_broker(2), new_broker(3)};
    uint64_t idx = 1;
    struct meta_cmd x = cmd(META_X_DECLARE, "orders");
    x.name2 = AMQP_BYTES_CSTR("topic");
    x.flags = META_F_DURABLE;
    assert_int_equal(apply_all(bs, 3, idx++, &x), 0);
    struct meta_cmd q = cmd(META_Q_DECLARE, "q1");
    q.flags = META_F_DURABLE;
    q.home = 2;
    assert_int_equal(apply_all(bs, 3, idx++, &q), 0);
    struct meta_cmd bind = cmd(META_BIND, "q1");
    bind.flags = META_F_DEST_QUEUE;
    bind.name2 = AMQP_BYTES_CSTR("orders");
    bind.key = AMQP_BYTES_CSTR("eu.#");
    assert_int_equal(apply_all(bs, 3, idx++, &bind), 0);
    for (int i = 0; i < 3; i++) {
        queue_t *qq = br_queue(br_vhost(bs[i], "/", 1), "q1", 2);
        assert_non_null(qq);
        assert_int_equal(qq->uid, 2); /* the declare's log index, on every node */
        assert_int_equal(qq->home, 2);
    }
    /* The same name declared again with other properties: refused identically everywhere. */
    struct meta_cmd q2 = cmd(META_Q_DECLARE, "q1");
    assert_int_equal(apply_all(bs, 3, idx++, &q2), BR_PRECONDITION_FAILED);
    /* A bind to a missing exchange: 404 everywhere. */
    struct meta_cmd bad = bind;
    bad.name2 = AMQP_BYTES_CSTR("nope");
    assert_int_equal(apply_all(bs, 3, idx++, &bad), BR_NOT_FOUND);
    /* A server-named queue (amq.gen-*) chosen by the requesting node is accepted on apply. */
    struct meta_cmd gen = cmd(META_Q_DECLARE, "amq.gen-abc");
    gen.flags = META_F_EXCLUSIVE;
    gen.conn = (uint64_t)3 << 32 | 5;
    gen.home = 3;
    assert_int_equal(apply_all(bs, 3, idx++, &gen), 0);
    assert_same_registry(bs[0], bs[1]);
    assert_same_registry(bs[0], bs[2]);
    /* Replays at or below the applied index change nothing. */
    struct meta_cmd del = cmd(META_Q_DELETE, "q1");
    amqp_buf_t buf = {0};
    meta_encode(&buf, &del);
    br_err_t err;
    assert_int_equal(meta_apply(bs[0], 2, buf.data, buf.len, &err), 0);
    assert_non_null(br_queue(br_vhost(bs[0], "/", 1), "q1", 2));
    assert_int_equal(meta_apply(bs[0], idx, buf.data, buf.len, &err), 0);
    assert_null(br_queue(br_vhost(bs[0], "/", 1), "q1", 2));
    amqp_buf_free(&buf);
    for (int i = 0; i < 3; i++) broker_free(bs[i]);
}

static void test_snapshot_fresh_and_diverged(void **state)
{
    (void)state;
    broker_t *a = new_broker(1), *diverged = new_broker(2), *fresh = new_broker(3);
    broker_t *both[2] = {a, diverged};
    uint64_t idx = 1;
    struct meta_cmd x = cmd(META_X_DECLARE, "logs");
    x.name2 = AMQP_BYTES_CSTR("fanout");
    apply_all(both, 2, idx++, &x);
    struct meta_cmd q = cmd(META_Q_DECLARE, "keep");
    q.flags = META_F_DURABLE;
    q.home = 1;
    apply_all(both, 2, idx++, &q);
    struct meta_cmd b1 = cmd(META_BIND, "keep");
    b1.flags = META_F_DEST_QUEUE;
    b1.name2 = AMQP_BYTES_CSTR("logs");
    apply_all(both, 2, idx++, &b1);
    /* Only a moves on: the diverged broker misses these and has extras of its own. */
    broker_t *only_a[1] = {a};
    struct meta_cmd q2 = cmd(META_Q_DECLARE, "late");
    q2.home = 1;
    apply_all(only_a, 1, idx++, &q2);
    struct meta_cmd b2 = cmd(META_BIND, "late");
    b2.flags = META_F_DEST_QUEUE;
    b2.name2 = AMQP_BYTES_CSTR("amq.direct");
    b2.key = AMQP_BYTES_CSTR("k");
    apply_all(only_a, 1, idx++, &b2);
    struct meta_cmd ub = b1;
    ub.op = META_UNBIND;
    apply_all(only_a, 1, idx++, &ub);
    broker_t *only_d[1] = {diverged};
    struct meta_cmd extra = cmd(META_Q_DECLARE, "stale");
    apply_all(only_d, 1, 4, &extra);
    struct meta_cmd xe = cmd(META_X_DECLARE, "logs2");
    xe.name2 = AMQP_BYTES_CSTR("direct");
    apply_all(only_d, 1, 5, &xe);

    void *snap;
    size_t len;
    assert_int_equal(meta_snapshot_take(a, &snap, &len), 0);
    meta_snapshot_install(fresh, snap, len);
    meta_snapshot_install(diverged, snap, len);
    assert_same_registry(a, fresh);
    assert_same_registry(a, diverged);
    assert_int_equal(fresh->meta_applied, a->meta_applied);
    queue_t *late = br_queue(br_vhost(fresh, "/", 1), "late", 4);
    assert_non_null(late);
    assert_int_equal(late->uid, 4);
    assert_int_equal(late->home, 1);
    /* An older snapshot does not roll a registry back. */
    struct meta_cmd q3 = cmd(META_Q_DECLARE, "newer");
    apply_all(only_a, 1, idx++, &q3);
    meta_snapshot_install(a, snap, len);
    assert_non_null(br_queue(br_vhost(a, "/", 1), "newer", 5));
    /* Garbage is refused without harm. */
    meta_snapshot_install(fresh, "\x01garbage", 8);
    assert_non_null(br_queue(br_vhost(fresh, "/", 1), "late", 4));
    free(snap);
    broker_free(a);
    broker_free(diverged);
    broker_free(fresh);
}

int main(void)
{
    cfg_defaults(&cfg);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_encoding),
        cmocka_unit_test(test_apply_is_deterministic),
        cmocka_unit_test(test_snapshot_fresh_and_diverged),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
