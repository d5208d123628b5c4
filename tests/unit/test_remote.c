/* test_remote.c - classic queues homed on another node (broker/remote.c).
 *
 * Three brokers (node ids 1..3) run in one process on one libev loop, each with its own store in
 * a temporary directory. They get the same topology by applying the same encoded metadata
 * commands (meta_apply), as the cluster would, so every node holds every queue record and the
 * queue's home decides where its messages live. A loopback transport stands in for the peer
 * mesh: a call or a reply is delivered on a later loop iteration, in order; a link can be cut
 * (in-flight calls then fail with PEER_EDOWN and both brokers get rq_node_down) and restored.
 *
 * The tests drive the broker API directly: route + publish on one node, consumers with fake
 * consumer_ops, acks, basic.get, purge, counts, node down/up and the publish results that drive
 * publisher confirms. Every wait is bounded (TEST_DEADLINE).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <ev.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "broker/broker.h"
#include "broker/log.h"
#include "broker/meta.h"
#include "broker/remote.h"
#include "broker/store.h"

#define TEST_DEADLINE 10.0
#define N 3

/* ---- loopback transport ---- */

enum { LB_CALL, LB_REPLY, LB_FAIL };

struct lbmsg {
    struct lbmsg *next;
    int kind;
    uint32_t from, to;
    uint64_t call_id;
    char method[32];
    uint8_t *pl;
    size_t len;
    int status;
    char error[512];
};

struct lbcall {
    struct lbcall *next;
    uint64_t id;
    uint32_t caller, callee;
    br_node_reply_cb cb;
    void *arg;
};

struct fx;
struct ep {
    struct fx *f;
    uint32_t node;
};

struct fx {
    char tmp[64];
    struct ev_loop *loop;
    ev_timer pacer, lb_timer;
    cfg_t cfg;
    store_t *store[N + 1];
    broker_t *b[N + 1];
    struct ep ep[N + 1];
    bool up[N + 1][N + 1];
    struct lbmsg *head, *tail;
    struct lbcall *calls;
    uint64_t next_call;
    uint64_t meta_index;
    unsigned batches[N + 1]; /* "q.batch" calls received per node */
    unsigned bad_replies;    /* error replies to q.batch / q.dlv */
};

static double now_sec(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

#define WAIT_FOR(f, cond)                                                                                    \
    do {                                                                                                     \
        double dl_ = now_sec() + TEST_DEADLINE;                                                              \
        while (!(cond) && now_sec() < dl_) ev_run((f)->loop, EVRUN_ONCE);                                    \
        assert_true(cond);                                                                                   \
    } while (0)

static void run_for(struct fx *f, double secs)
{
    double dl = now_sec() + secs;
    while (now_sec() < dl) ev_run(f->loop, EVRUN_ONCE);
}

static void lb_push(struct fx *f, struct lbmsg *m)
{
    m->next = NULL;
    if (f->tail) f->tail->next = m;
    else f->head = m;
    f->tail = m;
    if (!ev_is_active(&f->lb_timer)) {
        ev_timer_set(&f->lb_timer, 0, 0);
        ev_timer_start(f->loop, &f->lb_timer);
    }
}

static struct lbmsg *lb_msg(int kind, uint32_t from, uint32_t to, const void *pl, size_t len)
{
    struct lbmsg *m = calloc(1, sizeof *m);
    assert_non_null(m);
    m->kind = kind;
    m->from = from;
    m->to = to;
    if (len) {
        m->pl = malloc(len);
        assert_non_null(m->pl);
        memcpy(m->pl, pl, len);
    }
    m->len = len;
    return m;
}

static int lb_call(void *ctx, uint32_t node, const char *method, const void *payload, size_t len, double timeout,
                   br_node_reply_cb cb, void *arg)
{
    (void)timeout;
    struct ep *ep = ctx;
    struct fx *f = ep->f;
    if (node < 1 || node > N) return PEER_ENODE;
    if (!f->up[ep->node][node]) return PEER_EDOWN;
    struct lbcall *c = calloc(1, sizeof *c);
    assert_non_null(c);
    *c = (struct lbcall){f->calls, ++f->next_call, ep->node, node, cb, arg};
    f->calls = c;
    struct lbmsg *m = lb_msg(LB_CALL, ep->node, node, payload, len);
    m->call_id = c->id;
    snprintf(m->method, sizeof m->method, "%s", method);
    lb_push(f, m);
    return 0;
}

static int lb_reply(void *ctx, const struct peer_reply_to *to, int status, const char *error, const void *payload,
                    size_t len)
{
    struct ep *ep = ctx;
    struct fx *f = ep->f;
    if (!f->up[ep->node][to->node]) return PEER_EDOWN;
    struct lbmsg *m = lb_msg(LB_REPLY, ep->node, to->node, payload, len);
    m->call_id = to->id;
    m->status = status;
    snprintf(m->error, sizeof m->error, "%s", error ? error : "");
    lb_push(f, m);
    return 0;
}

static bool lb_is_up(void *ctx, uint32_t node)
{
    struct ep *ep = ctx;
    return node >= 1 && node <= N && ep->f->up[ep->node][node];
}

static const char *lb_name(void *ctx, uint32_t node)
{
    (void)ctx;
    static const char *names[] = {"?", "rabbit@n1", "rabbit@n2", "rabbit@n3"};
    return node <= N ? names[node] : NULL;
}

static struct lbcall *call_take(struct fx *f, uint64_t id)
{
    for (struct lbcall **pp = &f->calls; *pp; pp = &(*pp)->next) {
        struct lbcall *c = *pp;
        if (c->id != id) continue;
        *pp = c->next;
        return c;
    }
    return NULL;
}

static void lb_deliver(struct fx *f, struct lbmsg *m)
{
    if (m->kind == LB_CALL) {
        if (!f->up[m->from][m->to]) return; /* failed by the link cut */
        if (strcmp(m->method, "q.batch") == 0) f->batches[m->to]++;
        struct peer_reply_to to = {.node = m->from, .conn = 1, .id = m->call_id};
        rq_handle_call(f->b[m->to], m->from, m->method, m->pl, m->len, &to);
        return;
    }
    struct lbcall *c = call_take(f, m->call_id);
    if (!c) return;
    if (m->kind == LB_REPLY && m->status != 0) f->bad_replies++;
    c->cb(c->arg, m->kind == LB_FAIL ? PEER_EDOWN : m->status, m->error, m->pl, m->len);
    free(c);
}

static void lb_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop, (void)revents;
    struct fx *f = w->data;
    struct lbmsg *list = f->head; /* what arrived later waits for the next iteration */
    f->head = f->tail = NULL;
    while (list) {
        struct lbmsg *m = list;
        list = m->next;
        lb_deliver(f, m);
        free(m->pl);
        free(m);
    }
}

static void lb_drop_all(struct fx *f)
{
    while (f->head) {
        struct lbmsg *m = f->head;
        f->head = m->next;
        free(m->pl);
        free(m);
    }
    f->tail = NULL;
    while (f->calls) {
        struct lbcall *c = f->calls;
        f->calls = c->next;
        free(c);
    }
}

/* Cuts the link between two nodes: in-flight calls fail with PEER_EDOWN (later, from the loop),
 * then each side is told the other is down. */
static void link_down(struct fx *f, uint32_t a, uint32_t b)
{
    f->up[a][b] = f->up[b][a] = false;
    for (struct lbcall *c = f->calls; c; c = c->next) {
        if (!((c->caller == a && c->callee == b) || (c->caller == b && c->callee == a))) continue;
        struct lbmsg *m = lb_msg(LB_FAIL, c->callee, c->caller, NULL, 0);
        m->call_id = c->id;
        lb_push(f, m);
    }
    rq_node_down(f->b[a], b);
    rq_node_down(f->b[b], a);
}

static void link_up(struct fx *f, uint32_t a, uint32_t b)
{
    f->up[a][b] = f->up[b][a] = true;
    rq_node_up(f->b[a], b);
    rq_node_up(f->b[b], a);
}

/* ---- fixture ---- */

static void pacer_cb(struct ev_loop *loop, ev_timer *w, int revents) { (void)loop, (void)w, (void)revents; }

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof *f);
    assert_non_null(f);
    snprintf(f->tmp, sizeof f->tmp, "/tmp/warren-rq-test-XXXXXX");
    assert_non_null(mkdtemp(f->tmp));
    f->loop = ev_loop_new(EVFLAG_AUTO);
    ev_timer_init(&f->pacer, pacer_cb, 0.001, 0.001);
    ev_timer_start(f->loop, &f->pacer);
    ev_timer_init(&f->lb_timer, lb_timer_cb, 0, 0);
    f->lb_timer.data = f;
    cfg_defaults(&f->cfg);
    for (uint32_t i = 1; i <= N; i++) {
        char dir[128], err[256];
        snprintf(dir, sizeof dir, "%s/n%u", f->tmp, i);
        f->store[i] = store_open(dir, f->loop, err, sizeof err);
        assert_non_null(f->store[i]);
        broker_t *b = broker_new(f->loop, &f->cfg, f->store[i]);
        br_vhost_add(b, "/");
        b->self_node = i;
        f->ep[i] = (struct ep){f, i};
        b->node_call = lb_call;
        b->node_reply = lb_reply;
        b->node_is_up = lb_is_up;
        b->node_name = lb_name;
        b->node_ctx = &f->ep[i];
        f->b[i] = b;
        for (uint32_t j = 1; j <= N; j++) f->up[i][j] = true;
    }
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    /* Settle what is in flight, then stop the transport before the brokers go. */
    run_for(f, 0.02);
    for (uint32_t i = 1; i <= N; i++) {
        broker_free(f->b[i]);
        f->b[i] = NULL;
    }
    lb_drop_all(f);
    for (uint32_t i = 1; i <= N; i++) store_close(f->store[i]);
    ev_timer_stop(f->loop, &f->pacer);
    ev_timer_stop(f->loop, &f->lb_timer);
    ev_loop_destroy(f->loop);
    nftw(f->tmp, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

/* Applies one metadata command on every node at the same log index, as the cluster does. */
static void apply_all(struct fx *f, const struct meta_cmd *c)
{
    amqp_buf_t buf = {0};
    meta_encode(&buf, c);
    f->meta_index++;
    for (uint32_t i = 1; i <= N; i++) {
        br_err_t err;
        int rc = meta_apply(f->b[i], f->meta_index, buf.data, buf.len, &err);
        if (rc) fail_msg("meta_apply on node %u: %d %s", i, rc, err.text);
    }
    amqp_buf_free(&buf);
}

static void declare_queue(struct fx *f, const char *name, uint32_t home, bool durable, amqp_bytes_t args)
{
    struct meta_cmd c = {.op = META_Q_DECLARE, .flags = durable ? META_F_DURABLE : 0, .home = home,
                         .vhost = AMQP_BYTES_CSTR("/"), .name = AMQP_BYTES_CSTR(name), .args = args};
    apply_all(f, &c);
}

static void delete_queue(struct fx *f, const char *name)
{
    struct meta_cmd c = {.op = META_Q_DELETE, .vhost = AMQP_BYTES_CSTR("/"), .name = AMQP_BYTES_CSTR(name)};
    apply_all(f, &c);
}

static void bind_queue(struct fx *f, const char *queue, const char *exchange, const char *key)
{
    struct meta_cmd c = {.op = META_BIND, .flags = META_F_DEST_QUEUE, .vhost = AMQP_BYTES_CSTR("/"),
                         .name = AMQP_BYTES_CSTR(queue), .name2 = AMQP_BYTES_CSTR(exchange),
                         .key = AMQP_BYTES_CSTR(key)};
    apply_all(f, &c);
}

static queue_t *Q(struct fx *f, uint32_t node, const char *name)
{
    vhost_t *vh = br_vhost(f->b[node], "/", 1);
    return br_queue(vh, name, strlen(name));
}

/* ---- publishing ---- */

struct results {
    unsigned ok, rejected, failed;
};

static void pub_done(void *arg, uint64_t tag, int result)
{
    (void)tag;
    struct results *r = arg;
    if (result == Q_PUB_OK) r->ok++;
    else if (result == Q_PUB_REJECTED) r->rejected++;
    else r->failed++;
}

static msg_t *mk_msg(broker_t *b, const char *exchange, const char *rk, const char *body, bool persistent)
{
    static const uint8_t transient[] = {0x00, 0x00}, durable[] = {0x10, 0x00, 0x02};
    const uint8_t *props = persistent ? durable : transient;
    size_t plen = persistent ? sizeof durable : sizeof transient;
    msg_t *m = msg_new(exchange, strlen(exchange), rk, strlen(rk), props, plen, strlen(body));
    memcpy(m->body, body, strlen(body));
    m->persistent = persistent;
    m->id = b->next_msg_id++;
    return m;
}

/* Routes on `node` and publishes as the AMQP channel does: local queues with q_publish, remote
 * ones with rq_publish (results in r). Returns the number of queues it went to. */
static unsigned publish(struct fx *f, uint32_t node, const char *exchange, const char *rk, const char *body,
                        bool persistent, struct results *r)
{
    broker_t *b = f->b[node];
    vhost_t *vh = br_vhost(b, "/", 1);
    exchange_t *x = br_exchange(vh, exchange, strlen(exchange));
    assert_non_null(x);
    msg_t *m = mk_msg(b, exchange, rk, body, persistent);
    ptrvec_t qs = {0};
    br_route(x, m, &qs);
    unsigned n = 0;
    for (size_t i = 0; i < qs.n; i++) {
        queue_t *q = qs.items[i];
        if (!rq_remote(q)) {
            q_publish(q, m);
            n++;
        } else if (rq_publish(q, m, r ? pub_done : NULL, r, i)) {
            n++;
        }
    }
    ptrvec_free(&qs);
    msg_unref(m);
    return n;
}

static bool body_is(const msg_t *m, const char *body)
{
    return m->body && m->body_len == strlen(body) && memcmp(m->body, body, m->body_len) == 0;
}

/* ---- fake consumers ---- */

#define MAXGOT 256

struct fc {
    consumer_t c;
    bool can;
    qentry_t got[MAXGOT];
    queue_t *gotq[MAXGOT];
    unsigned n;        /* deliveries received */
    unsigned cancelled;
    bool done;         /* rq_consume answered */
    br_err_t err;
};

static bool fc_can(consumer_t *c) { return ((struct fc *)c->owner)->can; }

static void fc_deliver(consumer_t *c, queue_t *q, const qentry_t *e)
{
    struct fc *fc = c->owner;
    if (c->no_ack) { /* the first ones are kept for a look */
        if (fc->n < MAXGOT) fc->got[fc->n] = *e, msg_ref(e->m);
        fc->n++;
        return;
    }
    assert_true(fc->n < MAXGOT);
    fc->got[fc->n] = *e; /* as a channel: the entry and a queue reference until settled */
    q_ref(q);
    fc->gotq[fc->n++] = q;
}

static void fc_cancelled(consumer_t *c) { ((struct fc *)c->owner)->cancelled++; }

static const consumer_ops_t fc_ops = {fc_can, fc_deliver, fc_cancelled};

static void fc_init(struct fc *fc, const char *tag, uint32_t prefetch, bool no_ack)
{
    memset(fc, 0, sizeof *fc);
    fc->can = true;
    fc->c.tag = strdup(tag);
    fc->c.tag_len = strlen(tag);
    fc->c.prefetch = prefetch;
    fc->c.no_ack = no_ack;
    fc->c.ops = &fc_ops;
    fc->c.owner = fc;
}

static void fc_release(struct fc *fc)
{
    /* no-ack copies are the test's own references; acked ones were released by q_ack */
    if (fc->c.no_ack)
        for (unsigned i = 0; i < fc->n && i < MAXGOT; i++) msg_unref(fc->got[i].m);
    free(fc->c.tag);
}

/* Settles delivery i as the channel does: consumer credit back, then the queue operation. */
static void fc_settle(struct fc *fc, unsigned i, int how)
{
    if (fc->c.unacked) fc->c.unacked--;
    if (fc->c.q) q_schedule(fc->c.q);
    if (how == RQ_ACK) q_ack(fc->gotq[i], &fc->got[i]);
    else if (how == RQ_REQUEUE) q_requeue(fc->gotq[i], &fc->got[i]);
    else q_discard(fc->gotq[i], &fc->got[i]);
    q_unref(fc->gotq[i]);
}

static void consume_done(void *arg, const br_err_t *err)
{
    struct fc *fc = arg;
    fc->done = true;
    if (err) fc->err = *err;
}

static void consume_remote(struct fx *f, queue_t *q, struct fc *fc)
{
    rq_consume(q, &fc->c, consume_done, fc);
    WAIT_FOR(f, fc->done);
}

/* ---- get / counts ---- */

struct op {
    bool done, got;
    br_err_t err;
    qentry_t e;
    uint32_t messages, consumers;
};

static void get_done(void *arg, const br_err_t *err, const qentry_t *e, uint32_t count)
{
    struct op *o = arg;
    o->done = true;
    if (err) o->err = *err;
    if (e) o->got = true, o->e = *e;
    o->messages = count;
}

static void count_done(void *arg, const br_err_t *err, uint32_t messages, uint32_t consumers)
{
    struct op *o = arg;
    o->done = true;
    if (err) o->err = *err;
    o->messages = messages;
    o->consumers = consumers;
}

static struct op stat_of(struct fx *f, queue_t *q)
{
    struct op o = {0};
    rq_stat(q, count_done, &o);
    WAIT_FOR(f, o.done);
    return o;
}

/* ---- tests ---- */

/* A publish through node 1 lands in the queue homed on node 2 and is confirmed; persistent
 * messages to a durable queue are confirmed only once the home's store has the index entry. */
static void test_publish_forwarded(void **state)
{
    struct fx *f = *state;
    declare_queue(f, "q2", 2, true, AMQP_BYTES_EMPTY);
    assert_true(rq_remote(Q(f, 1, "q2")));
    assert_false(rq_remote(Q(f, 2, "q2")));
    struct results r = {0};
    assert_int_equal(publish(f, 1, "", "q2", "hello", true, &r), 1);
    assert_int_equal(publish(f, 1, "", "q2", "world", false, &r), 1);
    assert_int_equal(r.ok, 0); /* never synchronously */
    WAIT_FOR(f, r.ok == 2);
    queue_t *q = Q(f, 2, "q2");
    assert_int_equal(q->ready_len, 2);
    assert_int_equal(Q(f, 1, "q2")->ready_len, 0);
    /* The confirmed durable message is readable from the home's store. */
    uint8_t key[17];
    key[0] = KEY_QINDEX;
    store_put_be64(key + 1, q->uid);
    store_put_be64(key + 9, 1);
    void *val = NULL;
    size_t vlen = 0;
    assert_int_equal(store_get(f->store[2], key, sizeof key, &val, &vlen), 1);
    free(val);
    qentry_t e;
    assert_true(q_get(q, &e));
    assert_true(body_is(e.m, "hello"));
    assert_true(e.m->persistent);
    q_ack(q, &e);
    assert_true(q_get(q, &e));
    assert_true(body_is(e.m, "world"));
    q_ack(q, &e);
    assert_int_equal(f->bad_replies, 0);
}

/* One message routed to two queues on node 2 and one on node 3: one batch per node, the
 * message once per node, shared by both queues there. */
static void test_publish_coalesced(void **state)
{
    struct fx *f = *state;
    declare_queue(f, "a2", 2, false, AMQP_BYTES_EMPTY);
    declare_queue(f, "b2", 2, false, AMQP_BYTES_EMPTY);
    declare_queue(f, "c3", 3, false, AMQP_BYTES_EMPTY);
    declare_queue(f, "d1", 1, false, AMQP_BYTES_EMPTY);
    bind_queue(f, "a2", "amq.fanout", "");
    bind_queue(f, "b2", "amq.fanout", "");
    bind_queue(f, "c3", "amq.fanout", "");
    bind_queue(f, "d1", "amq.fanout", "");
    struct results r = {0};
    for (int i = 0; i < 10; i++) assert_int_equal(publish(f, 1, "amq.fanout", "", "fan", false, &r), 4);
    WAIT_FOR(f, r.ok == 30);
    assert_int_equal(f->batches[2], 1);
    assert_int_equal(f->batches[3], 1);
    assert_int_equal(Q(f, 1, "d1")->ready_len, 10);
    assert_int_equal(Q(f, 2, "a2")->ready_len, 10);
    assert_int_equal(Q(f, 2, "b2")->ready_len, 10);
    assert_int_equal(Q(f, 3, "c3")->ready_len, 10);
    qentry_t ea, eb;
    assert_true(q_get(Q(f, 2, "a2"), &ea));
    assert_true(q_get(Q(f, 2, "b2"), &eb));
    assert_ptr_equal(ea.m, eb.m);
    q_ack(Q(f, 2, "a2"), &ea);
    q_ack(Q(f, 2, "b2"), &eb);
}

/* x-overflow reject-publish at the home gives Q_PUB_REJECTED (basic.nack). */
static void test_publish_rejected(void **state)
{
    struct fx *f = *state;
    amqp_buf_t args = {0};
    size_t pos = amqp_table_open(&args);
    amqp_table_put_i64(&args, "x-max-length", 1);
    amqp_table_put_longstr(&args, "x-overflow", AMQP_BYTES_CSTR("reject-publish"));
    amqp_table_close(&args, pos);
    declare_queue(f, "lim", 2, false, (amqp_bytes_t){args.data + 4, args.len - 4});
    amqp_buf_free(&args);
    struct results r = {0};
    publish(f, 1, "", "lim", "one", false, &r);
    publish(f, 1, "", "lim", "two", false, &r);
    WAIT_FOR(f, r.ok + r.rejected == 2);
    assert_int_equal(r.ok, 1);
    assert_int_equal(r.rejected, 1);
    assert_int_equal(Q(f, 2, "lim")->ready_len, 1);
}

/* A consumer on node 1 of a queue on node 2: prefetch holds at the home, acks return credit,
 * a requeue comes back redelivered, cancel removes the home's consumer. */
static void test_consume_prefetch_ack_requeue(void **state)
{
    struct fx *f = *state;
    declare_queue(f, "cq", 2, true, AMQP_BYTES_EMPTY);
    queue_t *qa = Q(f, 1, "cq"), *qb = Q(f, 2, "cq");
    for (int i = 0; i < 5; i++) {
        char body[16];
        snprintf(body, sizeof body, "m%d", i);
        publish(f, 2, "", "cq", body, false, NULL); /* on the home itself */
    }
    struct fc fc;
    fc_init(&fc, "ctag", 2, false);
    consume_remote(f, qa, &fc);
    assert_int_equal(fc.err.code, 0);
    assert_ptr_equal(fc.c.q, qa);
    assert_int_equal(qb->consumers.n, 1);
    WAIT_FOR(f, fc.n == 2);
    run_for(f, 0.02);
    assert_int_equal(fc.n, 2); /* prefetch 2 */
    assert_true(body_is(fc.got[0].m, "m0"));
    assert_true(body_is(fc.got[1].m, "m1"));
    assert_false(fc.got[0].redelivered);
    assert_int_equal(qb->unacked, 2);
    struct op o = stat_of(f, qa);
    assert_int_equal(o.messages, 3);
    assert_int_equal(o.consumers, 1);
    fc_settle(&fc, 0, RQ_ACK);
    WAIT_FOR(f, fc.n == 3);
    assert_true(body_is(fc.got[2].m, "m2"));
    fc_settle(&fc, 1, RQ_REQUEUE); /* goes back to the head at the home: redelivered */
    WAIT_FOR(f, fc.n == 4);
    assert_true(body_is(fc.got[3].m, "m1"));
    assert_true(fc.got[3].redelivered);
    fc_settle(&fc, 2, RQ_ACK);
    fc_settle(&fc, 3, RQ_ACK);
    WAIT_FOR(f, fc.n == 6);
    fc_settle(&fc, 4, RQ_ACK);
    fc_settle(&fc, 5, RQ_ACK);
    WAIT_FOR(f, qb->unacked == 0 && qb->ready_len == 0);
    /* Cancel: the home drops its consumer. */
    q_consumer_remove(qa, &fc.c);
    WAIT_FOR(f, qb->consumers.n == 0);
    assert_int_equal(fc.cancelled, 0);
    fc_release(&fc);
}

/* Deliveries the client side cannot take yet are held and handed over once it can; credit keeps
 * the home from sending more than its window meanwhile. */
static void test_consume_held_and_credit(void **state)
{
    struct fx *f = *state;
    declare_queue(f, "hq", 2, false, AMQP_BYTES_EMPTY);
    queue_t *qa = Q(f, 1, "hq"), *qb = Q(f, 2, "hq");
    struct fc fc;
    fc_init(&fc, "noack", 0, true);
    fc.can = false;
    consume_remote(f, qa, &fc);
    assert_int_equal(fc.err.code, 0);
    for (int i = 0; i < 1500; i++) publish(f, 1, "", "hq", "x", false, NULL);
    run_for(f, 0.1);
    assert_int_equal(fc.n, 0);
    /* The window stops the home: the rest waits there. */
    assert_true(qb->ready_len >= 500 - 1);
    fc.can = true;
    q_schedule(qa);
    WAIT_FOR(f, fc.n == 1500);
    assert_int_equal(qb->ready_len, 0);
    q_consumer_remove(qa, &fc.c);
    fc_release(&fc);
}

/* basic.get through node 1: message or empty; acked and requeued through the home. */
static void test_get(void **state)
{
    struct fx *f = *state;
    declare_queue(f, "gq", 2, false, AMQP_BYTES_EMPTY);
    queue_t *qa = Q(f, 1, "gq"), *qb = Q(f, 2, "gq");
    struct op o = {0};
    rq_get(qa, false, get_done, &o);
    WAIT_FOR(f, o.done);
    assert_false(o.got);
    assert_int_equal(o.err.code, 0);
    publish(f, 1, "", "gq", "g1", false, NULL);
    publish(f, 1, "", "gq", "g2", false, NULL);
    memset(&o, 0, sizeof o);
    rq_get(qa, false, get_done, &o); /* the publishes go first: same connection, in order */
    WAIT_FOR(f, o.done);
    assert_true(o.got);
    assert_true(body_is(o.e.m, "g1"));
    assert_int_equal(o.messages, 1);
    assert_int_equal(qb->unacked, 1);
    q_requeue(qa, &o.e);
    WAIT_FOR(f, qb->unacked == 0 && qb->ready_len == 2);
    memset(&o, 0, sizeof o);
    rq_get(qa, true, get_done, &o); /* no-ack: settled at the home at once */
    WAIT_FOR(f, o.done);
    assert_true(o.got);
    assert_true(o.e.redelivered);
    assert_true(body_is(o.e.m, "g1"));
    assert_int_equal(qb->unacked, 0);
    msg_unref(o.e.m);
    memset(&o, 0, sizeof o);
    rq_get(qa, false, get_done, &o);
    WAIT_FOR(f, o.done);
    assert_true(body_is(o.e.m, "g2"));
    q_ack(qa, &o.e);
    WAIT_FOR(f, qb->unacked == 0 && qb->ready_len == 0);
}

/* queue.purge and the counts of a remote queue. */
static void test_purge_and_stat(void **state)
{
    struct fx *f = *state;
    declare_queue(f, "pq", 3, false, AMQP_BYTES_EMPTY);
    queue_t *qa = Q(f, 1, "pq");
    for (int i = 0; i < 7; i++) publish(f, 1, "", "pq", "p", false, NULL);
    struct op o = stat_of(f, qa);
    assert_int_equal(o.messages, 7);
    assert_int_equal(o.consumers, 0);
    memset(&o, 0, sizeof o);
    rq_purge(qa, count_done, &o);
    WAIT_FOR(f, o.done);
    assert_int_equal(o.messages, 7);
    assert_int_equal(Q(f, 3, "pq")->ready_len, 0);
}

/* Node down: consumers of its queues are cancelled, unsent/in-flight publishes fail, the queue
 * is unavailable with RabbitMQ's text; its home requeues what the down node had unacked. After
 * the link returns everything works again. */
static void test_node_down_and_up(void **state)
{
    struct fx *f = *state;
    declare_queue(f, "dq", 2, true, AMQP_BYTES_EMPTY);
    queue_t *qa = Q(f, 1, "dq"), *qb = Q(f, 2, "dq");
    struct fc fc;
    fc_init(&fc, "c1", 10, false);
    consume_remote(f, qa, &fc);
    for (int i = 0; i < 3; i++) publish(f, 1, "", "dq", "d", true, NULL);
    WAIT_FOR(f, fc.n == 3);
    assert_int_equal(qb->unacked, 3);
    struct results r = {0};
    publish(f, 1, "", "dq", "lost?", false, &r); /* queued for this iteration's batch */
    link_down(f, 1, 2);
    assert_int_equal(fc.cancelled, 1);
    assert_null(fc.c.q);
    assert_int_equal(r.failed, 1);
    /* The home requeued the unacked ones, redelivered. */
    assert_int_equal(qb->consumers.n, 0);
    assert_int_equal(qb->unacked, 0);
    assert_int_equal(qb->ready_len, 3);
    qentry_t e;
    assert_true(q_get(qb, &e));
    assert_true(e.redelivered);
    q_requeue(qb, &e);
    /* Acks for deliveries of the old link are dropped. */
    for (unsigned i = 0; i < 3; i++) fc_settle(&fc, i, RQ_ACK);
    /* Unavailable: RabbitMQ's 404. */
    assert_false(rq_available(qa));
    br_err_t err;
    assert_int_equal(rq_unavailable(qa, &err), BR_NOT_FOUND);
    assert_string_equal(err.text,
                        "home node 'rabbit@n2' of durable queue 'dq' in vhost '/' is down or inaccessible");
    assert_int_equal(publish(f, 1, "", "dq", "dropped", false, &r), 0);
    struct op o = {0};
    rq_stat(qa, count_done, &o); /* refused by the transport: fails later, not inside */
    assert_false(o.done);
    WAIT_FOR(f, o.done);
    assert_int_equal(o.err.code, BR_NOT_FOUND);
    /* Node 3 is unaffected. */
    assert_true(rq_available(Q(f, 3, "dq")));
    fc_release(&fc);
    /* Back up: publishing and consuming work again; the durable messages are still there. */
    link_up(f, 1, 2);
    memset(&r, 0, sizeof r);
    publish(f, 1, "", "dq", "again", true, &r);
    WAIT_FOR(f, r.ok == 1);
    struct fc fc2;
    fc_init(&fc2, "c2", 0, false);
    consume_remote(f, qa, &fc2);
    assert_int_equal(fc2.err.code, 0);
    WAIT_FOR(f, fc2.n == 4);
    assert_true(fc2.got[0].redelivered);
    assert_true(body_is(fc2.got[3].m, "again"));
    for (unsigned i = 0; i < 4; i++) fc_settle(&fc2, i, RQ_ACK);
    WAIT_FOR(f, qb->unacked == 0);
    q_consumer_remove(qa, &fc2.c);
    fc_release(&fc2);
}

/* A remote consumer's queue is deleted (replicated delete): the consumer gets cancelled. */
static void test_queue_deleted_cancels(void **state)
{
    struct fx *f = *state;
    declare_queue(f, "xq", 2, false, AMQP_BYTES_EMPTY);
    struct fc fc;
    fc_init(&fc, "c", 0, false);
    consume_remote(f, Q(f, 1, "xq"), &fc);
    publish(f, 1, "", "xq", "z", false, NULL);
    WAIT_FOR(f, fc.n == 1);
    delete_queue(f, "xq");
    assert_int_equal(fc.cancelled, 1);
    fc_settle(&fc, 0, RQ_ACK); /* settling after the delete is harmless */
    run_for(f, 0.02);
    fc_release(&fc);
}

/* Exclusive consumers are checked at the home, across nodes; x-priority orders consumers of
 * different nodes; single active consumer serves only the first one. */
static void test_exclusive_priority_sac(void **state)
{
    struct fx *f = *state;
    declare_queue(f, "eq", 2, false, AMQP_BYTES_EMPTY);
    struct fc local, remote;
    fc_init(&local, "local", 0, false);
    local.c.exclusive = true;
    q_consumer_add(Q(f, 2, "eq"), &local.c);
    fc_init(&remote, "remote", 0, false);
    consume_remote(f, Q(f, 1, "eq"), &remote);
    assert_int_equal(remote.err.code, BR_ACCESS_REFUSED);
    assert_string_equal(remote.err.text, "queue 'eq' in vhost '/' in exclusive use");
    assert_null(remote.c.remote);
    q_consumer_remove(Q(f, 2, "eq"), &local.c);
    fc_release(&local);
    fc_release(&remote);

    /* Priorities: the remote consumer with x-priority 5 gets everything while it has credit. */
    declare_queue(f, "pq", 2, false, AMQP_BYTES_EMPTY);
    fc_init(&local, "low", 0, false);
    q_consumer_add(Q(f, 2, "pq"), &local.c);
    fc_init(&remote, "high", 3, false);
    remote.c.priority = 5;
    consume_remote(f, Q(f, 1, "pq"), &remote);
    for (int i = 0; i < 5; i++) publish(f, 3, "", "pq", "p", false, NULL);
    WAIT_FOR(f, remote.n + local.n == 5);
    assert_int_equal(remote.n, 3);
    assert_int_equal(local.n, 2);
    for (unsigned i = 0; i < remote.n; i++) fc_settle(&remote, i, RQ_ACK);
    for (unsigned i = 0; i < local.n; i++) fc_settle(&local, i, RQ_ACK);
    q_consumer_remove(Q(f, 1, "pq"), &remote.c);
    q_consumer_remove(Q(f, 2, "pq"), &local.c);
    fc_release(&local);
    fc_release(&remote);

    /* Single active consumer: the first registered (remote) one is the active one. */
    amqp_buf_t args = {0};
    size_t pos = amqp_table_open(&args);
    amqp_table_put_bool(&args, "x-single-active-consumer", true);
    amqp_table_close(&args, pos);
    declare_queue(f, "sq", 2, false, (amqp_bytes_t){args.data + 4, args.len - 4});
    amqp_buf_free(&args);
    fc_init(&remote, "first", 0, false);
    consume_remote(f, Q(f, 3, "sq"), &remote);
    fc_init(&local, "second", 0, false);
    q_consumer_add(Q(f, 2, "sq"), &local.c);
    for (int i = 0; i < 4; i++) publish(f, 1, "", "sq", "s", false, NULL);
    WAIT_FOR(f, remote.n == 4);
    run_for(f, 0.02);
    assert_int_equal(local.n, 0);
    for (unsigned i = 0; i < remote.n; i++) fc_settle(&remote, i, RQ_ACK);
    q_consumer_remove(Q(f, 3, "sq"), &remote.c);
    q_consumer_remove(Q(f, 2, "sq"), &local.c);
    fc_release(&local);
    fc_release(&remote);
}

/* A message rejected on its home is dead-lettered there, through an exchange whose queue lives
 * on a third node. */
static void test_dead_letter_across_nodes(void **state)
{
    struct fx *f = *state;
    declare_queue(f, "dead3", 3, false, AMQP_BYTES_EMPTY);
    bind_queue(f, "dead3", "amq.direct", "dl");
    amqp_buf_t args = {0};
    size_t pos = amqp_table_open(&args);
    amqp_table_put_longstr(&args, "x-dead-letter-exchange", AMQP_BYTES_CSTR("amq.direct"));
    amqp_table_put_longstr(&args, "x-dead-letter-routing-key", AMQP_BYTES_CSTR("dl"));
    amqp_table_close(&args, pos);
    declare_queue(f, "src2", 2, false, (amqp_bytes_t){args.data + 4, args.len - 4});
    amqp_buf_free(&args);
    publish(f, 1, "", "src2", "bad", false, NULL);
    struct op o = {0};
    rq_get(Q(f, 1, "src2"), false, get_done, &o);
    WAIT_FOR(f, o.done);
    assert_true(o.got);
    q_discard(Q(f, 1, "src2"), &o.e); /* basic.reject requeue=false through node 1 */
    WAIT_FOR(f, Q(f, 3, "dead3")->ready_len == 1);
}

/* Garbage from a peer is answered with an error and changes nothing. */
static void test_malformed_input(void **state)
{
    struct fx *f = *state;
    declare_queue(f, "mq", 2, false, AMQP_BYTES_EMPTY);
    struct peer_reply_to to = {.node = 1, .conn = 1, .id = 999999};
    static const uint8_t junk[][12] = {
        {'P', 1, 2, 200, 'x'}, {'S', 9, 0, 0, 0, 0, 0, 0, 0, 1}, {'Z'}, {'D', 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0},
        {'C', 0, 0}, {0xff, 0xff, 0xff, 0xff},
    };
    const char *methods[] = {"q.batch", "q.dlv", "q.consume", "q.get", "q.stat", "q.purge", "q.nope"};
    log_set_level(LOG_ERROR); /* one warning per bad batch */
    for (size_t m = 0; m < sizeof methods / sizeof methods[0]; m++)
        for (size_t j = 0; j < sizeof junk / sizeof junk[0]; j++)
            for (size_t len = 0; len <= sizeof junk[j]; len++)
                rq_handle_call(f->b[2], 1, methods[m], junk[j], len, &to);
    rq_handle_call(f->b[2], PEER_CLIENT_ID, "q.stat", "", 0, &to);
    log_set_level(LOG_WARN);
    run_for(f, 0.02);
    assert_int_equal(Q(f, 2, "mq")->ready_len, 0);
    assert_int_equal(Q(f, 2, "mq")->consumers.n, 0);
}

/* Many publishes: batches stay bounded in size and every message arrives, in order. */
static void test_publish_volume_in_order(void **state)
{
    struct fx *f = *state;
    declare_queue(f, "vq", 2, false, AMQP_BYTES_EMPTY);
    struct results r = {0};
    char body[2048];
    memset(body, 'v', sizeof body - 1);
    body[sizeof body - 1] = 0;
    for (int i = 0; i < 2000; i++) {
        snprintf(body, 16, "%08d", i);
        body[8] = 'v';
        publish(f, 1, "", "vq", body, false, &r);
    }
    WAIT_FOR(f, r.ok == 2000);
    assert_true(f->batches[2] >= 3); /* ~4 MB: split at the batch size limit */
    queue_t *q = Q(f, 2, "vq");
    assert_int_equal(q->ready_len, 2000);
    for (int i = 0; i < 2000; i++) {
        qentry_t e;
        assert_true(q_get(q, &e));
        char want[16];
        snprintf(want, sizeof want, "%08d", i);
        assert_memory_equal(e.m->body, want, 8);
        q_ack(q, &e);
    }
}

/* Flow control: the home reports a deep consumed queue to the publishing node, and tells it
 * when the queue has drained. */
static void test_deep_and_drained(void **state)
{
    struct fx *f = *state;
    declare_queue(f, "fq", 2, false, AMQP_BYTES_EMPTY);
    queue_t *qa = Q(f, 1, "fq"), *qb = Q(f, 2, "fq");
    struct fc fc;
    fc_init(&fc, "slow", 0, true);
    fc.can = false;
    q_consumer_add(qb, &fc.c);
    struct results r = {0};
    for (int i = 0; i < RQ_DEEP + 10; i++) publish(f, 1, "", "fq", "x", false, &r);
    WAIT_FOR(f, r.ok == RQ_DEEP + 10);
    assert_true(qa->remote_deep);
    assert_true(rq_backlog(qa) == 0);
    fc.can = true;
    q_schedule(qb);
    WAIT_FOR(f, !qa->remote_deep);
    WAIT_FOR(f, qb->ready_len == 0);
    q_consumer_remove(qb, &fc.c);
    fc_release(&fc);
}

int main(void)
{
    log_set_level(LOG_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_publish_forwarded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_publish_coalesced, setup, teardown),
        cmocka_unit_test_setup_teardown(test_publish_rejected, setup, teardown),
        cmocka_unit_test_setup_teardown(test_consume_prefetch_ack_requeue, setup, teardown),
        cmocka_unit_test_setup_teardown(test_consume_held_and_credit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_get, setup, teardown),
        cmocka_unit_test_setup_teardown(test_purge_and_stat, setup, teardown),
        cmocka_unit_test_setup_teardown(test_node_down_and_up, setup, teardown),
        cmocka_unit_test_setup_teardown(test_queue_deleted_cancels, setup, teardown),
        cmocka_unit_test_setup_teardown(test_exclusive_priority_sac, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dead_letter_across_nodes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_malformed_input, setup, teardown),
        cmocka_unit_test_setup_teardown(test_publish_volume_in_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deep_and_drained, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
