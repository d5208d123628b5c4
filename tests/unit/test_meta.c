/* test_meta.c - the metadata state machine (broker/meta.c): command encoding, deterministic
 * apply on several brokers (same commands, same registry, same outcomes), replays at or below
 * the applied index skipped, and snapshots that bring a fresh or a diverged registry to the
 * snapshot's state. The brokers here have no loop and no store: meta.c only needs the registry.
 * The registry records (vhosts, users, permissions, policies) are commands too: encoded,
 * applied identically on several brokers (outcomes and registries equal), and part of the
 * snapshot, whose install prunes what it does not hold. */
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
#include "broker/params.h"

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

/* ---- vhosts, users, permissions, policies ------------------------------------------------- */

static char *hash_of(const char *pw)
{
    static const uint8_t salt[AUTH_SALT_LEN] = {1, 2, 3, 4};
    return auth_hash_password_with_salt(AUTH_HASH_SHA256, salt, pw, strlen(pw));
}

static int apply_user(broker_t **bs, int n, uint64_t idx, uint8_t op, const char *user, const char *pw, const char *tags)
{
    amqp_buf_t args = {0};
    struct meta_cmd c;
    char *hash = pw ? hash_of(pw) : NULL;
    meta_user_cmd(&c, &args, op, user, hash, hash ? AUTH_HASH_SHA256 : -1, tags);
    int rc = apply_all(bs, n, idx, &c);
    amqp_buf_free(&args);
    free(hash);
    return rc;
}

static int apply_perm(broker_t **bs, int n, uint64_t idx, const char *vhost, const char *user, const char *re)
{
    amqp_buf_t args = {0};
    struct meta_cmd c;
    meta_perm_cmd(&c, &args, vhost, user, re, re, re);
    int rc = apply_all(bs, n, idx, &c);
    amqp_buf_free(&args);
    return rc;
}

/* A policy whose definition is {"max-length": max_len}. */
static int apply_policy(broker_t **bs, int n, uint64_t idx, const char *vhost, const char *name, const char *pattern,
                        int64_t max_len)
{
    amqp_buf_t def = {0}, args = {0};
    amqp_table_open(&def);
    amqp_table_put_i64(&def, "max-length", max_len);
    amqp_table_close(&def, 0);
    struct meta_cmd c;
    meta_policy_cmd(&c, &args, vhost, false, name, pattern, "queues", 1, (amqp_bytes_t){def.data + 4, def.len - 4});
    int rc = apply_all(bs, n, idx, &c);
    amqp_buf_free(&def);
    amqp_buf_free(&args);
    return rc;
}

static void test_registry_encoding(void **state)
{
    (void)state;
    amqp_buf_t args = {0}, buf = {0};
    struct meta_cmd c, d;
    meta_user_cmd(&c, &args, META_USER_ADD, "bob", "aGFzaA==", AUTH_HASH_SHA512, "administrator,monitoring");
    meta_encode(&buf, &c);
    assert_int_equal(meta_decode(buf.data, buf.len, &d), 0);
    assert_int_equal(d.op, META_USER_ADD);
    assert_true(amqp_bytes_eq_cstr(d.name, "bob"));
    amqp_table_t t;
    assert_int_equal(amqp_table_parse(d.args, &t), 0);
    const amqp_value_t *v = amqp_table_get(&t, "hashing_algorithm");
    assert_non_null(v);
    assert_true(amqp_bytes_eq_cstr(v->v.str, "rabbit_password_hashing_sha512"));
    assert_true(amqp_bytes_eq_cstr(amqp_table_get(&t, "tags")->v.str, "administrator,monitoring"));
    amqp_table_free(&t);
    /* An update that names only the tags carries no password fields at all. */
    meta_user_cmd(&c, &args, META_USER_UPDATE, "bob", NULL, -1, "x");
    assert_int_equal(amqp_table_parse(c.args, &t), 0);
    assert_null(amqp_table_get(&t, "password_hash"));
    assert_null(amqp_table_get(&t, "hashing_algorithm"));
    amqp_table_free(&t);
    /* A policy: operator flag, definition as a nested table. */
    amqp_buf_t def = {0};
    amqp_table_open(&def);
    amqp_table_put_i64(&def, "max-length", 2);
    amqp_table_close(&def, 0);
    meta_policy_cmd(&c, &args, "v1", true, "p", "^q", "queues", -3, (amqp_bytes_t){def.data + 4, def.len - 4});
    buf.len = 0;
    meta_encode(&buf, &c);
    assert_int_equal(meta_decode(buf.data, buf.len, &d), 0);
    assert_int_equal(d.op, META_POLICY_SET);
    assert_int_equal(d.flags, META_F_OPERATOR);
    assert_true(amqp_bytes_eq_cstr(d.vhost, "v1"));
    assert_int_equal(amqp_table_parse(d.args, &t), 0);
    int64_t prio;
    assert_true(amqp_value_int(amqp_table_get(&t, "priority"), &prio));
    assert_int_equal(prio, -3);
    assert_int_equal(amqp_table_get(&t, "definition")->type, 'F');
    amqp_table_free(&t);
    /* The op range check knows the last op and nothing past it. */
    buf.data[1] = META_OP_LAST;
    assert_int_equal(meta_decode(buf.data, buf.len, &d), 0);
    buf.data[1] = META_OP_LAST + 1;
    assert_int_equal(meta_decode(buf.data, buf.len, &d), -1);
    amqp_buf_free(&def);
    amqp_buf_free(&args);
    amqp_buf_free(&buf);
}

static void test_registry_apply_is_deterministic(void **state)
{
    (void)state;
    broker_t *bs[3] = {new_broker(1), new_broker(2), new_broker(3)};
    uint64_t idx = 1;
    struct meta_cmd vh = {.op = META_VHOST_ADD, .vhost = AMQP_BYTES_CSTR("v1")};
    assert_int_equal(apply_all(bs, 3, idx++, &vh), 0);
    assert_int_equal(apply_all(bs, 3, idx++, &vh), 0); /* idempotent */
    assert_int_equal(apply_user(bs, 3, idx++, META_USER_ADD, "bob", "secret", "monitoring"), 0);
    assert_int_equal(apply_user(bs, 3, idx++, META_USER_ADD, "bob", "other", ""), BR_PRECONDITION_FAILED);
    assert_int_equal(apply_user(bs, 3, idx++, META_USER_UPDATE, "nobody", "x", NULL), BR_NOT_FOUND);
    assert_int_equal(apply_perm(bs, 3, idx++, "v1", "bob", ".*"), 0);
    assert_int_equal(apply_perm(bs, 3, idx++, "v1", "nobody", ".*"), BR_NOT_FOUND);
    assert_int_equal(apply_perm(bs, 3, idx++, "nope", "bob", ".*"), BR_NOT_FOUND);
    assert_int_equal(apply_perm(bs, 3, idx++, "v1", "bob", "("), BR_PRECONDITION_FAILED); /* bad regex */
    assert_int_equal(apply_policy(bs, 3, idx++, "v1", "lim", "^q", 2), 0);
    struct meta_cmd q = {.op = META_Q_DECLARE, .vhost = AMQP_BYTES_CSTR("v1"), .name = AMQP_BYTES_CSTR("q1"),
                         .flags = META_F_DURABLE, .home = 1};
    assert_int_equal(apply_all(bs, 3, idx++, &q), 0);
    for (int i = 0; i < 3; i++) {
        assert_non_null(br_authenticate(bs[i], "bob", 3, "secret", 6));
        vhost_t *v = br_vhost(bs[i], "v1", 2);
        assert_int_equal(br_queue(v, "q1", 2)->max_len, 2); /* the policy applies everywhere */
        br_err_t err;
        assert_int_equal(br_check_vhost_access(bs[i], br_user(bs[i], "bob", 3), "v1", 2, &v, &err), 0);
    }
    /* Tags only: the password stays. A new password: the old one stops working. */
    assert_int_equal(apply_user(bs, 3, idx++, META_USER_UPDATE, "bob", NULL, "administrator"), 0);
    assert_non_null(br_authenticate(bs[1], "bob", 3, "secret", 6));
    assert_string_equal(br_user(bs[1], "bob", 3)->tags, "administrator");
    assert_int_equal(apply_user(bs, 3, idx++, META_USER_UPDATE, "bob", "new", NULL), 0);
    assert_null(br_authenticate(bs[2], "bob", 3, "secret", 6));
    assert_non_null(br_authenticate(bs[2], "bob", 3, "new", 3));
    assert_string_equal(br_user(bs[2], "bob", 3)->tags, "administrator");
    assert_same_registry(bs[0], bs[1]);
    assert_same_registry(bs[0], bs[2]);
    /* Clearing: the policy (queue limit lifted), the permissions, then deletions. */
    struct meta_cmd pc = {.op = META_POLICY_CLEAR, .vhost = AMQP_BYTES_CSTR("v1"), .name = AMQP_BYTES_CSTR("lim")};
    assert_int_equal(apply_all(bs, 3, idx++, &pc), 0);
    assert_int_equal(apply_all(bs, 3, idx++, &pc), BR_NOT_FOUND);
    assert_int_equal(br_queue(br_vhost(bs[0], "v1", 2), "q1", 2)->max_len, -1);
    struct meta_cmd clr = {.op = META_PERM_CLEAR, .vhost = AMQP_BYTES_CSTR("v1"), .name = AMQP_BYTES_CSTR("bob")};
    assert_int_equal(apply_all(bs, 3, idx++, &clr), 0);
    assert_null(dict_get(&br_user(bs[0], "bob", 3)->perms, "v1", 2));
    user_t *bob = br_user(bs[0], "bob", 3); /* a connection's pointer stays valid after delete */
    struct meta_cmd du = {.op = META_USER_DELETE, .name = AMQP_BYTES_CSTR("bob")};
    assert_int_equal(apply_all(bs, 3, idx++, &du), 0);
    assert_int_equal(apply_all(bs, 3, idx++, &du), BR_NOT_FOUND);
    assert_null(br_authenticate(bs[0], "bob", 3, "new", 3));
    assert_string_equal(bob->name, "bob");
    vhost_t *v1 = br_vhost(bs[0], "v1", 2);
    struct meta_cmd dv = {.op = META_VHOST_DELETE, .vhost = AMQP_BYTES_CSTR("v1")};
    assert_int_equal(apply_all(bs, 3, idx++, &dv), 0);
    assert_int_equal(apply_all(bs, 3, idx++, &dv), BR_NOT_FOUND);
    for (int i = 0; i < 3; i++) assert_null(br_vhost(bs[i], "v1", 2));
    /* A connection still on the deleted vhost is closed with 320 at its next operation. */
    br_err_t err;
    queue_t *out;
    assert_int_equal(br_queue_declare(v1, NULL, 0, "x", 1, false, false, false, false, AMQP_BYTES_EMPTY, &out, &err), 320);
    assert_same_registry(bs[0], bs[1]);
    assert_same_registry(bs[0], bs[2]);
    for (int i = 0; i < 3; i++) broker_free(bs[i]);
}

static void test_registry_snapshot(void **state)
{
    (void)state;
    broker_t *a = new_broker(1), *diverged = new_broker(2), *fresh = broker_new(NULL, &cfg, NULL);
    broker_t *both[2] = {a, diverged}, *only_a[1] = {a}, *only_d[1] = {diverged};
    uint64_t idx = 1;
    struct meta_cmd vh = {.op = META_VHOST_ADD, .vhost = AMQP_BYTES_CSTR("shared")};
    apply_all(both, 2, idx++, &vh);
    apply_user(both, 2, idx++, META_USER_ADD, "alice", "pw", "administrator");
    apply_perm(both, 2, idx++, "shared", "alice", "^a");
    apply_perm(both, 2, idx++, "/", "alice", ".*");
    apply_policy(both, 2, idx++, "shared", "p1", ".*", 5);
    /* a moves on; the diverged broker has extras the snapshot must remove. */
    vh.vhost = AMQP_BYTES_CSTR("late");
    apply_all(only_a, 1, idx++, &vh);
    apply_user(only_a, 1, idx++, META_USER_PUT, "carol", "pw2", "");
    apply_policy(only_a, 1, idx++, "late", "p2", "^x", 7);
    vh.vhost = AMQP_BYTES_CSTR("stale");
    apply_all(only_d, 1, 6, &vh);
    apply_user(only_d, 1, 7, META_USER_ADD, "mallory", "pw", "");
    apply_perm(only_d, 1, 8, "shared", "mallory", ".*");
    apply_policy(only_d, 1, 9, "shared", "extra", "^e", 1);
    struct meta_cmd clr = {.op = META_PERM_CLEAR, .vhost = AMQP_BYTES_CSTR("/"), .name = AMQP_BYTES_CSTR("alice")};
    apply_all(only_a, 1, idx++, &clr); /* a dropped a permission the diverged broker still has */
    vh.vhost = AMQP_BYTES_CSTR("later");
    apply_all(only_a, 1, idx++, &vh); /* a is past everything the diverged broker applied */

    void *snap;
    size_t len;
    assert_int_equal(meta_snapshot_take(a, &snap, &len), 0);
    assert_int_equal(((uint8_t *)snap)[0], 2);
    meta_snapshot_install(fresh, snap, len);
    meta_snapshot_install(diverged, snap, len);
    assert_same_registry(a, fresh);
    assert_same_registry(a, diverged);
    assert_null(br_vhost(diverged, "stale", 5));
    assert_null(br_user(diverged, "mallory", 7));
    assert_null(dict_get(&br_user(diverged, "alice", 5)->perms, "/", 1));
    assert_non_null(br_authenticate(fresh, "carol", 5, "pw2", 3));
    assert_int_equal(br_vhost(fresh, "late", 4)->policies.n, 1);
    assert_int_equal(br_vhost(diverged, "shared", 6)->policies.n, 1);
    /* A version 1 snapshot (topology only) leaves users and vhosts alone. */
    broker_t *old = new_broker(4);
    broker_t *only_old[1] = {old};
    apply_user(only_old, 1, 1, META_USER_ADD, "keeper", "pw", "");
    uint8_t *v1 = malloc(len);
    memcpy(v1, snap, len);
    v1[0] = 1;
    meta_snapshot_install(old, v1, len);
    assert_non_null(br_user(old, "keeper", 6));
    free(v1);
    free(snap);
    broker_free(a);
    broker_free(diverged);
    broker_free(fresh);
    broker_free(old);
}

static int apply_param(broker_t **bs, int n, uint64_t idx, uint8_t op, const char *vhost, const char *comp,
                       const char *name, const char *value)
{
    amqp_buf_t args = {0};
    struct meta_cmd c;
    meta_param_cmd(&c, &args, op, vhost, comp, name, value);
    int rc = apply_all(bs, n, idx, &c);
    amqp_buf_free(&args);
    return rc;
}

/* Vhost metadata and runtime parameters: applied alike everywhere (limits read into the vhost),
 * carried by snapshots, pruned from a diverged registry. */
static void test_params_and_vhost_metadata(void **state)
{
    (void)state;
    broker_t *a = new_broker(1), *diverged = new_broker(2), *fresh = broker_new(NULL, &cfg, NULL);
    broker_t *both[2] = {a, diverged}, *only_a[1] = {a}, *only_d[1] = {diverged};
    amqp_buf_t args = {0};
    struct meta_cmd c;
    meta_vhost_cmd(&c, &args, META_VHOST_SET, "v", "described", "a,b", "quorum");
    apply_all(both, 2, 1, &c);
    assert_string_equal(br_vhost(a, "v", 1)->description, "described");
    assert_string_equal(br_vhost(diverged, "v", 1)->default_queue_type, "quorum");
    /* VHOST_ADD on an existing vhost leaves its metadata alone; VHOST_SET with "" clears the type */
    meta_vhost_cmd(&c, &args, META_VHOST_ADD, "v", "other", NULL, NULL);
    apply_all(both, 2, 2, &c);
    assert_string_equal(br_vhost(a, "v", 1)->description, "described");
    assert_int_equal(apply_param(both, 2, 3, META_PARAM_SET, "v", RP_VHOST_LIMITS, RP_LIMITS_NAME,
                                 "{\"max-queues\":2,\"max-connections\":-1}"), 0);
    assert_int_equal(br_vhost(a, "v", 1)->max_queues, 2);
    assert_int_equal(br_vhost(a, "v", 1)->max_connections, BR_NO_LIMIT);
    assert_int_equal(apply_param(both, 2, 4, META_PARAM_SET, "v", RP_VHOST_LIMITS, RP_LIMITS_NAME,
                                 "{\"max-queues\":\"x\"}"), BR_PRECONDITION_FAILED);
    assert_int_equal(apply_param(both, 2, 5, META_PARAM_SET, "nope", "federation-upstream", "u", "{}"), BR_NOT_FOUND);
    assert_int_equal(apply_param(both, 2, 6, META_PARAM_CLEAR, "v", "federation-upstream", "u", NULL), BR_NOT_FOUND);
    /* the queue limit: a client declare over it fails, a replicated one (apply) does not check */
    br_err_t err;
    queue_t *q;
    vhost_t *va = br_vhost(a, "v", 1);
    assert_int_equal(br_queue_declare(va, NULL, 0, "q1", 2, false, true, false, false, AMQP_BYTES_EMPTY, &q, &err), 0);
    assert_string_equal(q->qq ? "quorum" : "classic", "quorum"); /* the vhost's default type */
    assert_int_equal(br_queue_declare(va, NULL, 0, "q2", 2, false, false, false, false, AMQP_BYTES_EMPTY, &q, &err), 0);
    assert_null(q->qq); /* transient: classic */
    assert_int_equal(br_queue_declare(va, NULL, 0, "q3", 2, false, false, false, false, AMQP_BYTES_EMPTY, &q, &err),
                     BR_PRECONDITION_FAILED);
    assert_string_equal(err.text, "cannot declare queue 'q3': queue limit in vhost 'v' (2) is reached");
    /* a diverges: extra parameters, other metadata; a moves on */
    apply_param(only_d, 1, 7, META_PARAM_SET, "v", "federation-upstream", "stale", "{\"uri\":\"amqp://x\"}");
    apply_param(only_d, 1, 8, META_PARAM_SET, NULL, NULL, "stale_global", "1");
    meta_vhost_cmd(&c, &args, META_VHOST_SET, "v", "diverged", "", "");
    apply_all(only_d, 1, 9, &c);
    apply_param(only_a, 1, 7, META_PARAM_SET, "v", "shovel", "s", "{\"src-uri\":\"amqp://\"}");
    apply_param(only_a, 1, 8, META_PARAM_SET, NULL, NULL, "my_global", "{\"k\":[1,2]}");
    apply_param(only_a, 1, 9, META_PARAM_SET, "/", RP_VHOST_LIMITS, RP_LIMITS_NAME, "{\"max-connections\":0}");
    apply_param(only_a, 1, 10, META_PARAM_CLEAR, "v", RP_VHOST_LIMITS, RP_LIMITS_NAME, NULL);
    assert_int_equal(br_vhost(a, "v", 1)->max_queues, BR_NO_LIMIT);
    void *snap;
    size_t len;
    assert_int_equal(meta_snapshot_take(a, &snap, &len), 0);
    meta_snapshot_install(fresh, snap, len);
    meta_snapshot_install(diverged, snap, len);
    free(snap);
    for (int i = 0; i < 2; i++) {
        broker_t *b = i ? diverged : fresh;
        vhost_t *v = br_vhost(b, "v", 1);
        assert_string_equal(v->description, "described");
        assert_string_equal(v->tags, "a,b");
        assert_string_equal(v->default_queue_type, "quorum");
        assert_null(rp_find(v, "federation-upstream", "stale"));
        assert_non_null(rp_find(v, "shovel", "s"));
        assert_null(rp_global_find(b, "stale_global"));
        assert_string_equal(rp_global_find(b, "my_global")->value, "{\"k\":[1,2]}");
        assert_int_equal(br_vhost(b, "/", 1)->max_connections, 0);
        assert_int_equal(v->max_queues, BR_NO_LIMIT);
    }
    /* (the installed queues exceed no limit check: apply does not enforce it) */
    assert_same_registry(a, fresh);
    assert_same_registry(a, diverged);
    amqp_buf_free(&args);
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
        cmocka_unit_test(test_registry_encoding),
        cmocka_unit_test(test_registry_apply_is_deterministic),
        cmocka_unit_test(test_registry_snapshot),
        cmocka_unit_test(test_params_and_vhost_metadata),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
