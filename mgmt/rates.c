/* rates.c - message rates (the API's *_details.rate fields) from counters sampled every 5 s.
 *
 * Data flow: a timer on the node's loop reads the broker's counters (broker_t stat_*) and every
 * queue's (queue_t stat_*, and its depth) every MGMT_RATE_INTERVAL seconds; a rate is the change
 * since the previous sample divided by the time between them, per second, as RabbitMQ's
 * "basic" rates mode reports it. Reading a rate costs a hash lookup; the sampling costs one pass
 * over the queues per interval, nothing per message.
 *
 * Invariants: a queue's sample is keyed by its uid (the same for its whole life), an exchange's
 * by 'x' vhost \0 name, a vhost's by 'v' name (a vhost's queue counters are the sum of its
 * queues'); samples of objects that no longer exist are dropped at the next pass (generation
 * mark). A queue's first
 * sample has rate 0. Queues homed on another node have no local depth: only their counters;
 * the API shows their home's rates instead, which this node's samples serve to the other nodes
 * through broker/qstats.c (qs_set_rates: registered at start, cleared at stop). */
#include <stdlib.h>
#include <string.h>

#include "broker/connreg.h"
#include "broker/qq.h"
#include "broker/qstats.h"
#include "broker/remote.h"
#include "mgmt/internal.h"

#define MGMT_RATE_INTERVAL 5.0

struct rate_sample {
    uint64_t gen;
    uint64_t prev[MGMT_RATE_N];
    double rate[MGMT_RATE_N];
};

struct mgmt_rates {
    mgmt_t *m;
    ev_timer timer;
    ev_tstamp last;
    uint64_t gen;
    dict_t queues; /* uid (8 bytes) -> struct rate_sample* */
    dict_t objects; /* 'x' vhost \0 name / 'v' vhost -> struct rate_sample* */
    struct rate_sample node;
};

static void update(struct rate_sample *s, const uint64_t now[MGMT_RATE_N], double dt, bool first)
{
    for (int i = 0; i < MGMT_RATE_N; i++) {
        s->rate[i] = first || dt <= 0 ? 0.0 : ((double)now[i] - (double)s->prev[i]) / dt;
        if (s->rate[i] < 0 && i < MGMT_RATE_MESSAGES) s->rate[i] = 0.0; /* a counter never goes back */
        s->prev[i] = now[i];
    }
}

static void queue_counters(queue_t *q, uint64_t out[MGMT_RATE_N])
{
    memset(out, 0, sizeof(uint64_t) * MGMT_RATE_N);
    out[MGMT_RATE_PUBLISH] = q->stat_publish;
    out[MGMT_RATE_DELIVER] = q->stat_deliver;
    out[MGMT_RATE_GET] = q->stat_get;
    out[MGMT_RATE_DELIVER_GET] = q->stat_deliver + q->stat_get;
    out[MGMT_RATE_ACK] = q->stat_ack;
    out[MGMT_RATE_REDELIVER] = q->stat_redeliver;
    if (q->qq) {
        struct qq_info info;
        qq_info(q, &info);
        out[MGMT_RATE_READY] = info.ready, out[MGMT_RATE_UNACKED] = info.unacked;
    } else if (!rq_remote(q)) {
        out[MGMT_RATE_READY] = q->ready_len, out[MGMT_RATE_UNACKED] = q->unacked;
    }
    out[MGMT_RATE_MESSAGES] = out[MGMT_RATE_READY] + out[MGMT_RATE_UNACKED];
}

/* key = tag + vhost [+ \0 + name]; returns its length. */
static size_t object_key(char *key, size_t cap, char tag, const vhost_t *vh, const exchange_t *x)
{
    size_t n = (size_t)snprintf(key, cap, "%c%s", tag, vh->name);
    if (x && n + 1 + x->name_len < cap) {
        key[n++] = '\0';
        memcpy(key + n, x->name, x->name_len);
        n += x->name_len;
    }
    return n < cap ? n : cap - 1;
}

static void sample_object(struct mgmt_rates *r, const char *key, size_t klen, const uint64_t now[MGMT_RATE_N],
                          double dt)
{
    struct rate_sample *s = dict_get(&r->objects, key, klen);
    bool first = !s;
    if (first) {
        s = calloc(1, sizeof *s);
        if (!s) abort();
        dict_set(&r->objects, key, klen, s);
    }
    update(s, now, dt, first);
    s->gen = r->gen;
}

/* Exchanges' publish_in / publish_out, and vhosts' counters (their queues' summed, plus their
 * own publish and confirm counts). */
static void sample_objects(struct mgmt_rates *r, double dt)
{
    char key[600];
    size_t pos = 0;
    void *v;
    while (dict_next(&r->m->b->vhosts, &pos, NULL, NULL, &v)) {
        vhost_t *vh = v;
        size_t p2 = 0;
        void *ev;
        while (dict_next(&vh->exchanges, &p2, NULL, NULL, &ev)) {
            exchange_t *x = ev;
            uint64_t now[MGMT_RATE_N] = {0};
            now[MGMT_RATE_PUBLISH_IN] = x->stat_in;
            now[MGMT_RATE_PUBLISH_OUT] = x->stat_out;
            sample_object(r, key, object_key(key, sizeof key, 'x', vh, x), now, dt);
        }
        uint64_t sum[MGMT_RATE_N] = {0};
        mgmt_vhost_counters(vh, sum);
        sample_object(r, key, object_key(key, sizeof key, 'v', vh, NULL), sum, dt);
    }
    pos = 0;
    const char *k;
    size_t kl;
    while (dict_next(&r->objects, &pos, &k, &kl, &v)) {
        struct rate_sample *s = v;
        if (s->gen == r->gen) continue;
        dict_del(&r->objects, k, kl);
        free(s);
    }
}

void mgmt_vhost_counters(const vhost_t *vh, uint64_t out[MGMT_RATE_N])
{
    memset(out, 0, sizeof(uint64_t) * MGMT_RATE_N);
    size_t pos = 0;
    void *v;
    while (dict_next(&vh->queues, &pos, NULL, NULL, &v)) {
        uint64_t q[MGMT_RATE_N];
        queue_counters(v, q);
        for (int i = MGMT_RATE_DELIVER; i <= MGMT_RATE_REDELIVER; i++) out[i] += q[i];
    }
    out[MGMT_RATE_PUBLISH] = vh->stat_publish;
    out[MGMT_RATE_CONFIRM] = vh->stat_confirm;
}

static void sample_queues(struct mgmt_rates *r, double dt)
{
    size_t pos = 0;
    void *v;
    while (dict_next(&r->m->b->vhosts, &pos, NULL, NULL, &v)) {
        vhost_t *vh = v;
        size_t qp = 0;
        void *qv;
        while (dict_next(&vh->queues, &qp, NULL, NULL, &qv)) {
            queue_t *q = qv;
            struct rate_sample *s = dict_get(&r->queues, &q->uid, sizeof q->uid);
            bool first = !s;
            if (first) {
                s = calloc(1, sizeof *s);
                if (!s) abort();
                dict_set(&r->queues, &q->uid, sizeof q->uid, s);
            }
            uint64_t now[MGMT_RATE_N];
            queue_counters(q, now);
            update(s, now, dt, first);
            s->gen = r->gen;
        }
    }
    pos = 0;
    const char *key;
    size_t klen;
    while (dict_next(&r->queues, &pos, &key, &klen, &v)) { /* queues that are gone */
        struct rate_sample *s = v;
        if (s->gen == r->gen) continue;
        dict_del(&r->queues, key, klen);
        free(s);
    }
}

static void sample(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    struct mgmt_rates *r = w->data;
    broker_t *b = r->m->b;
    ev_tstamp now = ev_now(loop);
    double dt = now - r->last;
    bool first = r->gen == 0;
    r->last = now;
    r->gen++;
    uint64_t node[MGMT_RATE_N] = {0};
    node[MGMT_RATE_PUBLISH] = b->stat_publish;
    node[MGMT_RATE_DELIVER_GET] = b->stat_deliver;
    node[MGMT_RATE_ACK] = b->stat_ack;
    node[MGMT_RATE_CONFIRM] = b->stat_confirm;
    node[MGMT_RATE_UNROUTABLE] = b->stat_unroutable;
    update(&r->node, node, dt, first);
    sample_queues(r, dt);
    sample_objects(r, dt);
    connreg_sample(now); /* connections' recv_oct / send_oct rates */
}

/* qs_rates_fn: a queue's rates in broker/qstats.h's order, for other nodes' API requests. */
static void rates_for_peers(void *ctx, const queue_t *q, double out[QS_RATE_N])
{
    static const int which[QS_RATE_N] = {
        [QS_RATE_PUBLISH] = MGMT_RATE_PUBLISH, [QS_RATE_DELIVER] = MGMT_RATE_DELIVER,
        [QS_RATE_GET] = MGMT_RATE_GET,         [QS_RATE_DELIVER_GET] = MGMT_RATE_DELIVER_GET,
        [QS_RATE_ACK] = MGMT_RATE_ACK,         [QS_RATE_REDELIVER] = MGMT_RATE_REDELIVER,
        [QS_RATE_MESSAGES] = MGMT_RATE_MESSAGES, [QS_RATE_READY] = MGMT_RATE_READY,
        [QS_RATE_UNACKED] = MGMT_RATE_UNACKED,
    };
    for (int i = 0; i < QS_RATE_N; i++) out[i] = mgmt_rate_queue(ctx, q, which[i]);
}

void mgmt_rates_start(mgmt_t *m)
{
    struct mgmt_rates *r = calloc(1, sizeof *r);
    if (!r) abort();
    r->m = m;
    dict_init(&r->queues);
    dict_init(&r->objects);
    m->rates = r;
    qs_set_rates(rates_for_peers, m);
    if (!m->loop) return;
    r->last = ev_now(m->loop);
    ev_timer_init(&r->timer, sample, 0.0, MGMT_RATE_INTERVAL);
    r->timer.data = r;
    ev_timer_start(m->loop, &r->timer);
    ev_unref(m->loop); /* does not keep the loop alive on its own */
}

void mgmt_rates_stop(mgmt_t *m)
{
    struct mgmt_rates *r = m->rates;
    if (!r) return;
    qs_set_rates(NULL, NULL);
    if (m->loop) {
        ev_ref(m->loop);
        ev_timer_stop(m->loop, &r->timer);
    }
    size_t pos = 0;
    void *v;
    while (dict_next(&r->queues, &pos, NULL, NULL, &v)) free(v);
    dict_free(&r->queues);
    pos = 0;
    while (dict_next(&r->objects, &pos, NULL, NULL, &v)) free(v);
    dict_free(&r->objects);
    free(r);
    m->rates = NULL;
}

double mgmt_rate_node(const mgmt_t *m, int which)
{
    return m->rates ? m->rates->node.rate[which] : 0.0;
}

static double object_rate(const mgmt_t *m, char tag, const vhost_t *vh, const exchange_t *x, int which)
{
    char key[600];
    size_t klen = object_key(key, sizeof key, tag, vh, x);
    const struct rate_sample *s = m->rates ? dict_get(&m->rates->objects, key, klen) : NULL;
    return s ? s->rate[which] : 0.0;
}

double mgmt_rate_exchange(const mgmt_t *m, const exchange_t *x, int which) { return object_rate(m, 'x', x->vh, x, which); }

double mgmt_rate_vhost(const mgmt_t *m, const vhost_t *vh, int which) { return object_rate(m, 'v', vh, NULL, which); }

double mgmt_rate_queue(const mgmt_t *m, const queue_t *q, int which)
{
    const struct rate_sample *s = m->rates ? dict_get(&m->rates->queues, &q->uid, sizeof q->uid) : NULL;
    return s ? s->rate[which] : 0.0;
}
