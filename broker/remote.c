/* remote.c - classic queues homed on another node: the proxy side (a client node forwarding
 * publishes, consumes, gets and settlements to the queue's home) and the home side (serving the
 * queue to other nodes). See remote.h for the semantics and for what the cluster glue does.
 *
 * Per other node there is one rq_peer_t holding both roles:
 *   - as a client of the peer's queues: `out`, the "q.batch" being built this loop iteration
 *     (publishes, settlements, credit, cancels, in the order they happened), its publish
 *     waiters (one per queue of each publish record, answered by the reply's result bytes),
 *     `acons` (our consumers of the peer's queues, by consumer id);
 *   - as the home of queues the peer uses: `dout`, the "q.dlv" being built (deliveries and
 *     consumer cancellations), `proxies` (the peer's consumers, by its consumer id) and `dels`
 *     (deliveries the peer has not settled yet, by delivery id).
 *
 * Wire format (big-endian; shortstr = u8 length + bytes, longstr = u32 length + bytes):
 *   queue ref  : shortstr vhost, shortstr queue, u64 uid (uids are the same on every node)
 *   message    : shortstr exchange, shortstr routing key, longstr properties, longstr body
 *   "q.batch"  : records, each a kind byte and its fields:
 *                'P' u8 flags(1 = persistent) u8 priority shortstr vhost message
 *                    u16 bcc_len bcc u16 nq nq * (shortstr queue, u64 uid)
 *                'S' u8 how (rq_settle_how) u64 delivery id
 *                'C' u64 consumer id u32 messages u64 bytes   (credit: handed to the client)
 *                'X' u64 consumer id                           (cancel)
 *                reply: one result byte per queue of every 'P' record (RES_*, | RES_DEEP when
 *                the queue is deep), sent once the home's store synced the batch's writes.
 *   "q.dlv"    : 'D' u64 consumer id u64 delivery id u8 redelivered message
 *                'X' u64 consumer id (the home cancelled it: queue deleted)
 *                'U' queue ref (a queue reported deep has drained); reply empty.
 *   "q.consume": queue ref, u64 consumer id, shortstr tag, u8 flags (1 no_ack, 2 exclusive),
 *                u32 priority (int32), u32 prefetch; reply empty (status 0) or an error.
 *   "q.get"    : queue ref, u8 no_ack; reply empty (get-empty) or u64 delivery id,
 *                u8 redelivered, u32 message count, message.
 *   "q.stat" / "q.purge": queue ref; reply u32 messages (purged), u32 consumers.
 * Error replies carry an AMQP reply code as status and RabbitMQ's text as error.
 *
 * Invariants:
 *   - A message crosses to a node once per publish whatever the number of its queues there:
 *     consecutive rq_publish calls for the same msg_t extend the last 'P' record.
 *   - Calls other than the batches first flush the peer's batch, so a client sees its own
 *     earlier publishes/acks when it gets, purges or counts (one connection keeps order).
 *   - Home side: a proxy consumer behaves as a local consumer of the queue (priority, single
 *     active consumer, prefetch through consumer_t.prefetch/unacked); at most RQ_WINDOW
 *     deliveries / RQ_WINDOW_BYTES are in transit to the peer's client until it credits them,
 *     so a slow client holds back its home queue instead of filling memory.
 *   - Client side: deliveries its channel cannot take now are held in the consumer's link and
 *     handed over from rq_dispatch (the local record's dispatch pass), never dropped; credit is
 *     returned when a delivery is handed to the client; acks name the home's delivery ids
 *     (qentry_t.seq of the local copy), which the home ignores when unknown (delivery ids start
 *     at a random value, so acks from before a restart do not match anything).
 *   - Node down: the transport fails in-flight calls; unsent publishes fail here; every other
 *     structure of that peer is released (consumers cancelled, deliveries requeued).
 *   - Bad input from a peer is answered with an error and never trusted further.
 */
#include "broker/remote.h"
#include "broker/qq.h"
#include "broker/connreg.h"
#include "broker/qstats.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker/cluster.h"
#include "broker/meta.h"
#include "broker/log.h"

#define RQ_TIMEOUT 30.0
#define RQ_BATCH_MAX (1u << 20) /* a batch is sent early once it holds this many bytes */
#define RQ_WINDOW 1000          /* deliveries in transit to a client node before it credits */
#define RQ_WINDOW_BYTES (4u << 20)
#define RQ_RETRY 0.002          /* resend of a batch the transport refused (send buffer full) */

enum { RES_OK = 0, RES_REJECTED = 1, RES_GONE = 2, RES_DEEP = 0x80 };

/* ---- u64 -> pointer map (open addressing, linear probing, backward-shift deletion) ---- */

typedef struct {
    uint64_t *keys; /* 0 = empty: ids are never 0 */
    void **vals;
    size_t cap, n;
} u64map_t;

static size_t slot_of(uint64_t k, size_t cap)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    return (size_t)k & (cap - 1);
}

static void *map_get(const u64map_t *m, uint64_t k)
{
    if (!m->cap) return NULL;
    for (size_t i = slot_of(k, m->cap);; i = (i + 1) & (m->cap - 1)) {
        if (m->keys[i] == k) return m->vals[i];
        if (!m->keys[i]) return NULL;
    }
}

static void map_put(u64map_t *m, uint64_t k, void *v);

static void map_grow(u64map_t *m)
{
    u64map_t old = *m;
    m->cap = old.cap ? old.cap * 2 : 16;
    m->n = 0;
    m->keys = calloc(m->cap, sizeof *m->keys);
    m->vals = calloc(m->cap, sizeof *m->vals);
    if (!m->keys || !m->vals) abort();
    for (size_t i = 0; i < old.cap; i++)
        if (old.keys[i]) map_put(m, old.keys[i], old.vals[i]);
    free(old.keys);
    free(old.vals);
}

static void map_put(u64map_t *m, uint64_t k, void *v)
{
    if ((m->n + 1) * 4 > m->cap * 3) map_grow(m);
    size_t i = slot_of(k, m->cap);
    while (m->keys[i] && m->keys[i] != k) i = (i + 1) & (m->cap - 1);
    if (!m->keys[i]) m->n++;
    m->keys[i] = k;
    m->vals[i] = v;
}

static void *map_del(u64map_t *m, uint64_t k)
{
    if (!m->cap) return NULL;
    size_t mask = m->cap - 1, i = slot_of(k, m->cap);
    while (m->keys[i] != k) {
        if (!m->keys[i]) return NULL;
        i = (i + 1) & mask;
    }
    void *v = m->vals[i];
    for (size_t j = (i + 1) & mask; m->keys[j]; j = (j + 1) & mask) {
        size_t h = slot_of(m->keys[j], m->cap);
        /* Move j back to the hole unless its home slot lies cyclically in (i, j]. */
        bool stays = i <= j ? (h > i && h <= j) : (h > i || h <= j);
        if (stays) continue;
        m->keys[i] = m->keys[j];
        m->vals[i] = m->vals[j];
        i = j;
    }
    m->keys[i] = 0;
    m->vals[i] = NULL;
    m->n--;
    return v;
}

/* Moves every value into out and empties the map. */
static void map_drain(u64map_t *m, ptrvec_t *out)
{
    for (size_t i = 0; i < m->cap; i++)
        if (m->keys[i]) ptrvec_push(out, m->vals[i]);
    free(m->keys);
    free(m->vals);
    memset(m, 0, sizeof *m);
}

/* The keys, for walks whose steps may remove entries (look each one up again). */
static uint64_t *map_keys(const u64map_t *m, size_t *n)
{
    uint64_t *k = malloc((m->n ? m->n : 1) * sizeof *k);
    if (!k) abort();
    *n = 0;
    for (size_t i = 0; i < m->cap; i++)
        if (m->keys[i]) k[(*n)++] = m->keys[i];
    return k;
}

/* ---- state ---- */

typedef struct {
    queue_t *q; /* referenced */
    rq_pub_cb cb;
    void *arg;
    uint64_t tag;
} waiter_t;

typedef struct rq_peer rq_peer_t;

/* Client side: our consumer of a queue homed on p. */
typedef struct {
    rq_peer_t *p;
    consumer_t *c;
    uint64_t id;
    bool pending; /* registration not answered yet */
    qentry_t *held; /* deliveries the channel could not take yet (FIFO) */
    size_t held_head, held_len, held_cap;
    uint32_t owed_n; /* credit to return: handed to the client since the last flush */
    uint64_t owed_bytes;
    bool owes;
} acons_t;

/* Home side: p's consumer of one of our queues. */
typedef struct {
    consumer_t c; /* c.owner = this */
    rq_peer_t *p;
    uint64_t id; /* p's consumer id */
    uint32_t refs; /* registration + unsettled deliveries */
    bool removed;
    uint32_t transit_n;
    uint64_t transit_bytes;
} pcons_t;

/* Home side: a delivery p has not settled. */
typedef struct {
    queue_t *q;   /* referenced */
    qentry_t e;   /* holds the message reference */
    pcons_t *pc;  /* referenced; NULL for basic.get */
} rdel_t;

struct rq_peer {
    struct rq_state *s;
    uint32_t node;
    bool down; /* tracked from rq_node_down/up (when the glue gives no node_is_up) */
    /* client side */
    amqp_buf_t out;
    waiter_t *w;
    size_t wn, wcap;
    msg_t *last_msg;     /* the 'P' record at the end of out is this message's (referenced) */
    size_t last_nq_off;  /* offset of its u16 queue count */
    bool busy, dbusy;    /* the transport refused the batch: retry from the timer */
    uint64_t inflight;   /* bytes of batches sent and not answered */
    u64map_t acons;
    ptrvec_t owing;      /* acons_t* with credit to return */
    /* home side */
    amqp_buf_t dout;
    u64map_t proxies;
    u64map_t dels;
};

/* A reply callback to run from the timer: a call the transport refused at once. */
typedef struct {
    br_node_reply_cb cb;
    void *arg;
    int status;
} deferred_t;

/* A batch reply waiting for the store to sync. */
typedef struct sync_reply {
    struct rq_state *s; /* NULL once the broker is gone */
    struct peer_reply_to to;
    amqp_buf_t res;
    struct sync_reply *prev, *next;
} sync_reply_t;

struct rq_state {
    broker_t *b;
    rq_peer_t **peers;
    size_t npeers;
    uint64_t next_id;
    ev_timer timer;
    deferred_t *def;
    size_t ndef, defcap;
    sync_reply_t *syncs;
    bool closing; /* broker_free: the transport is gone, send nothing */
};

static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents);

static struct rq_state *state(broker_t *b)
{
    if (b->rq) return b->rq;
    struct rq_state *s = calloc(1, sizeof *s);
    if (!s) abort();
    s->b = b;
    uint64_t r;
    randombytes_buf(&r, sizeof r);
    s->next_id = (r >> 2) | 1;
    ev_timer_init(&s->timer, timer_cb, RQ_RETRY, 0);
    s->timer.data = s;
    b->rq = s;
    return s;
}

static uint64_t new_id(struct rq_state *s)
{
    if (++s->next_id == 0) s->next_id = 1;
    return s->next_id;
}

static rq_peer_t *peer_find(struct rq_state *s, uint32_t node)
{
    for (size_t i = 0; i < s->npeers; i++)
        if (s->peers[i]->node == node) return s->peers[i];
    return NULL;
}

static rq_peer_t *peer_get(struct rq_state *s, uint32_t node)
{
    rq_peer_t *p = peer_find(s, node);
    if (p) return p;
    p = calloc(1, sizeof *p);
    rq_peer_t **np = realloc(s->peers, (s->npeers + 1) * sizeof *np);
    if (!p || !np) abort();
    p->s = s;
    p->node = node;
    s->peers = np;
    s->peers[s->npeers++] = p;
    return p;
}

static void arm_timer(struct rq_state *s)
{
    if (s->b->loop && !ev_is_active(&s->timer)) ev_timer_start(s->b->loop, &s->timer);
}

static void defer_reply(struct rq_state *s, br_node_reply_cb cb, void *arg, int status)
{
    if (s->ndef == s->defcap) {
        s->defcap = s->defcap ? s->defcap * 2 : 8;
        s->def = realloc(s->def, s->defcap * sizeof *s->def);
        if (!s->def) abort();
    }
    s->def[s->ndef++] = (deferred_t){cb, arg, status};
    arm_timer(s);
}

static void run_deferred(struct rq_state *s)
{
    while (s->ndef) {
        deferred_t d = s->def[0];
        memmove(s->def, s->def + 1, --s->ndef * sizeof *s->def);
        d.cb(d.arg, d.status, NULL, NULL, 0);
    }
}

/* Sends a call; a refusal reaches cb from the timer, never from inside this call. */
static void call_node(struct rq_state *s, uint32_t node, const char *method, const amqp_buf_t *pl,
                      br_node_reply_cb cb, void *arg)
{
    broker_t *b = s->b;
    int rc = s->closing ? PEER_EDOWN : b->node_call(b->node_ctx, node, method, pl->data, pl->len, RQ_TIMEOUT, cb, arg);
    if (rc) defer_reply(s, cb, arg, rc < 0 ? rc : PEER_EINVAL);
}

static void reply(broker_t *b, const struct peer_reply_to *to, int status, const char *error, const amqp_buf_t *pl)
{
    if (b->node_reply && !(b->rq && b->rq->closing)) b->node_reply(b->node_ctx, to, status, error, pl ? pl->data : NULL, pl ? pl->len : 0);
}

/* ---- node names and availability ---- */

bool rq_node_is_up(broker_t *b, uint32_t node)
{
    if (b->node_is_up) return b->node_is_up(b->node_ctx, node);
    rq_peer_t *p = b->rq ? peer_find(b->rq, node) : NULL;
    return !p || !p->down;
}

bool rq_available(queue_t *q) { return rq_node_is_up(q->vh->broker, q->home); }

int rq_unavailable(queue_t *q, br_err_t *err)
{
    broker_t *b = q->vh->broker;
    const char *name = b->node_name ? b->node_name(b->node_ctx, q->home) : NULL;
    char id[16];
    if (!name) {
        snprintf(id, sizeof id, "%u", q->home);
        name = id;
    }
    return br_fail(err, BR_NOT_FOUND, "home node '%s' of durable queue '%s' in vhost '%s' is down or inaccessible",
                   name, q->name, q->vh->name);
}

/* The error for a failed call: the home's own (status > 0) or unreachable (transport). */
static const br_err_t *call_error(br_err_t *err, queue_t *q, int status, const char *error)
{
    if (status < 0) rq_unavailable(q, err);
    else br_fail(err, status, "%s", error && *error ? error : "request failed on the home node");
    return err;
}

/* ---- encoding ---- */

static amqp_bytes_t str_bytes(const char *s, size_t len) { return (amqp_bytes_t){(const uint8_t *)s, len}; }

static void put_qref(amqp_buf_t *o, const queue_t *q)
{
    amqp_buf_put_shortstr(o, AMQP_BYTES_CSTR(q->vh->name));
    amqp_buf_put_shortstr(o, str_bytes(q->name, q->name_len));
    amqp_buf_put_u64(o, q->uid);
}

static void put_msg(amqp_buf_t *o, const msg_t *m)
{
    amqp_buf_put_shortstr(o, str_bytes(m->exchange, m->exchange_len));
    amqp_buf_put_shortstr(o, str_bytes(m->rk, m->rk_len));
    amqp_buf_put_longstr(o, (amqp_bytes_t){m->props, m->props_len});
    amqp_buf_put_longstr(o, (amqp_bytes_t){m->body, (size_t)m->body_len});
}

typedef struct {
    amqp_bytes_t ex, rk, props, body;
} wire_msg_t;

static bool read_msg(amqp_reader_t *r, wire_msg_t *w)
{
    w->ex = amqp_read_shortstr(r);
    w->rk = amqp_read_shortstr(r);
    w->props = amqp_read_longstr(r);
    w->body = amqp_read_longstr(r);
    return !r->bad;
}

static msg_t *msg_of(const wire_msg_t *w, const uint8_t *bcc, size_t bcc_len)
{
    msg_t *m = msg_new_with_bcc((const char *)w->ex.ptr, w->ex.len, (const char *)w->rk.ptr, w->rk.len, w->props.ptr,
                                w->props.len, w->body.len, bcc, bcc_len);
    if (w->body.len) memcpy(m->body, w->body.ptr, w->body.len);
    return m;
}

/* ---- client side: the batch to a home node ---- */

static void end_coalesce(rq_peer_t *p)
{
    if (!p->last_msg) return;
    msg_unref(p->last_msg);
    p->last_msg = NULL;
}

static void put_record(rq_peer_t *p, uint8_t kind)
{
    end_coalesce(p);
    amqp_buf_put_u8(&p->out, kind);
}

static void waiter_push(rq_peer_t *p, queue_t *q, rq_pub_cb cb, void *arg, uint64_t tag)
{
    if (p->wn == p->wcap) {
        p->wcap = p->wcap ? p->wcap * 2 : 64;
        p->w = realloc(p->w, p->wcap * sizeof *p->w);
        if (!p->w) abort();
    }
    q_ref(q);
    p->w[p->wn++] = (waiter_t){q, cb, arg, tag};
}

static void fail_waiters(waiter_t *w, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        w[i].q->remote_deep = false;
        if (w[i].cb) w[i].cb(w[i].arg, w[i].tag, RQ_PUB_FAILED);
        q_unref(w[i].q);
    }
}

typedef struct {
    rq_peer_t *p;
    waiter_t *w;
    size_t wn;
    size_t bytes;
} batch_call_t;

static void batch_replied(void *arg, int status, const char *error, const void *payload, size_t len)
{
    (void)error;
    batch_call_t *bc = arg;
    bc->p->inflight -= bc->bytes;
    const uint8_t *res = payload;
    if (status != 0) log_debug("forwarded publishes to node %u failed (%d)", bc->p->node, status);
    if (status != 0 || len < bc->wn) {
        fail_waiters(bc->w, bc->wn);
    } else {
        for (size_t i = 0; i < bc->wn; i++) {
            waiter_t *w = &bc->w[i];
            w->q->remote_deep = res[i] & RES_DEEP;
            if (w->cb) w->cb(w->arg, w->tag, (res[i] & ~RES_DEEP) == RES_REJECTED ? Q_PUB_REJECTED : Q_PUB_OK);
            q_unref(w->q);
        }
    }
    free(bc->w);
    free(bc);
}

static void batch_send(rq_peer_t *p)
{
    struct rq_state *s = p->s;
    broker_t *b = s->b;
    end_coalesce(p);
    if (!p->out.len || p->busy || s->closing) return;
    batch_call_t *bc = malloc(sizeof *bc);
    if (!bc) abort();
    *bc = (batch_call_t){p, p->w, p->wn, p->out.len};
    int rc = b->node_call(b->node_ctx, p->node, "q.batch", p->out.data, p->out.len, RQ_TIMEOUT, batch_replied, bc);
    if (rc == PEER_EBUSY) {
        free(bc);
        p->busy = true;
        arm_timer(s);
        return;
    }
    p->w = NULL;
    p->wn = p->wcap = 0;
    p->out.len = 0;
    p->inflight += bc->bytes;
    if (rc) defer_reply(s, batch_replied, bc, rc < 0 ? rc : PEER_EINVAL);
}

static void dlv_replied(void *arg, int status, const char *error, const void *payload, size_t len)
{
    (void)arg, (void)error, (void)payload, (void)len;
    if (status != 0) log_debug("deliveries to another node failed (%d)", status);
}

static void dlv_send(rq_peer_t *p)
{
    broker_t *b = p->s->b;
    if (!p->dout.len || p->dbusy || p->s->closing) return;
    int rc = b->node_call(b->node_ctx, p->node, "q.dlv", p->dout.data, p->dout.len, RQ_TIMEOUT, dlv_replied, NULL);
    if (rc == PEER_EBUSY) {
        p->dbusy = true;
        arm_timer(p->s);
        return;
    }
    /* Any other failure means the node is going down: rq_node_down requeues what was sent. */
    if (rc) log_warn("deliveries to node %u not sent (%d)", p->node, rc);
    p->dout.len = 0;
}

static void put_credit(rq_peer_t *p)
{
    for (size_t i = 0; i < p->owing.n; i++) {
        acons_t *a = p->owing.items[i];
        put_record(p, 'C');
        amqp_buf_put_u64(&p->out, a->id);
        amqp_buf_put_u32(&p->out, a->owed_n);
        amqp_buf_put_u64(&p->out, a->owed_bytes);
        a->owed_n = 0;
        a->owed_bytes = 0;
        a->owes = false;
    }
    p->owing.n = 0;
}

static void flush_peer(rq_peer_t *p)
{
    put_credit(p);
    batch_send(p);
    dlv_send(p);
}

void rq_flush(broker_t *b)
{
    struct rq_state *s = b->rq;
    if (!s) return;
    for (size_t i = 0; i < s->npeers; i++) flush_peer(s->peers[i]);
}

static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop, (void)revents;
    struct rq_state *s = w->data;
    run_deferred(s);
    for (size_t i = 0; i < s->npeers; i++) s->peers[i]->busy = s->peers[i]->dbusy = false;
    rq_flush(s->b);
}

bool rq_publish(queue_t *q, msg_t *m, rq_pub_cb cb, void *arg, uint64_t tag)
{
    broker_t *b = q->vh->broker;
    if (!rq_available(q)) return false;
    if ((!m->body && !q_body_load(b, m)) || m->body_len > UINT32_MAX) return false;
    rq_peer_t *p = peer_get(state(b), q->home);
    uint8_t *nq = p->last_msg == m ? p->out.data + p->last_nq_off : NULL;
    if (nq && ((unsigned)nq[0] << 8 | nq[1]) == 0xffff) nq = NULL;
    if (!nq) {
        put_record(p, 'P');
        amqp_buf_put_u8(&p->out, m->persistent ? 1 : 0);
        amqp_buf_put_u8(&p->out, m->priority);
        amqp_buf_put_shortstr(&p->out, AMQP_BYTES_CSTR(q->vh->name));
        put_msg(&p->out, m);
        amqp_buf_put_u16(&p->out, m->bcc_len);
        amqp_buf_append(&p->out, msg_bcc(m), m->bcc_len);
        p->last_nq_off = p->out.len;
        amqp_buf_put_u16(&p->out, 0);
        p->last_msg = msg_ref(m);
        nq = p->out.data + p->last_nq_off;
    }
    unsigned n = ((unsigned)nq[0] << 8 | nq[1]) + 1;
    nq[0] = (uint8_t)(n >> 8);
    nq[1] = (uint8_t)n;
    amqp_buf_put_shortstr(&p->out, str_bytes(q->name, q->name_len));
    amqp_buf_put_u64(&p->out, q->uid);
    waiter_push(p, q, cb, arg, tag);
    if (p->out.len >= RQ_BATCH_MAX) batch_send(p);
    return true;
}

uint64_t rq_backlog(const queue_t *q)
{
    broker_t *b = q->vh->broker;
    rq_peer_t *p = b->rq ? peer_find(b->rq, q->home) : NULL;
    return p ? p->out.len + p->inflight : 0;
}

/* ---- client side: consumers ---- */

static void owing_forget(acons_t *a)
{
    if (a->owes) ptrvec_remove(&a->p->owing, a);
    a->owes = false;
}

/* Releases a consumer link: held deliveries go back to the home (requeued there), and with
 * send_cancel the home removes its consumer. */
static void acons_drop(acons_t *a, bool send_cancel)
{
    rq_peer_t *p = a->p;
    for (size_t i = 0; i < a->held_len; i++) {
        qentry_t *e = &a->held[(a->held_head + i) % a->held_cap];
        if (!a->c->no_ack) {
            put_record(p, 'S');
            amqp_buf_put_u8(&p->out, RQ_REQUEUE);
            amqp_buf_put_u64(&p->out, e->seq);
        }
        msg_unref(e->m);
    }
    if (send_cancel && !a->pending) {
        put_record(p, 'X');
        amqp_buf_put_u64(&p->out, a->id);
    }
    owing_forget(a);
    map_del(&p->acons, a->id);
    a->c->remote = NULL;
    free(a->held);
    free(a);
}

static void held_push(acons_t *a, qentry_t e)
{
    if (a->held_len == a->held_cap) {
        size_t ncap = a->held_cap ? a->held_cap * 2 : 16;
        qentry_t *nb = malloc(ncap * sizeof *nb);
        if (!nb) abort();
        for (size_t i = 0; i < a->held_len; i++) nb[i] = a->held[(a->held_head + i) % a->held_cap];
        free(a->held);
        a->held = nb;
        a->held_cap = ncap;
        a->held_head = 0;
    }
    a->held[(a->held_head + a->held_len++) % a->held_cap] = e;
}

static void hand_over(acons_t *a, qentry_t e)
{
    consumer_t *c = a->c;
    queue_t *q = c->q;
    a->owed_n++;
    a->owed_bytes += e.m->body_len;
    if (!a->owes) {
        a->owes = true;
        ptrvec_push(&a->p->owing, a);
    }
    q->stat_deliver++;
    if (e.redelivered) q->stat_redeliver++;
    q->vh->broker->stat_deliver++;
    if (c->no_ack) {
        c->ops->deliver(c, q, &e);
        msg_unref(e.m);
    } else {
        c->unacked++;
        c->ops->deliver(c, q, &e);
    }
}

static void acons_pump(acons_t *a)
{
    while (a->held_len && a->c->q && a->c->ops->can_deliver(a->c)) {
        qentry_t e = a->held[a->held_head];
        a->held_head = (a->held_head + 1) % a->held_cap;
        a->held_len--;
        hand_over(a, e);
    }
}

/* The home cancelled the consumer (queue deleted there) or its node went down. */
static void cancel_from_home(acons_t *a)
{
    consumer_t *c = a->c;
    queue_t *q = c->q;
    acons_drop(a, false);
    if (q) {
        ptrvec_remove(&q->consumers, c);
        if (q->rr_next >= q->consumers.n) q->rr_next = 0;
        c->q = NULL;
    }
    c->ops->cancelled(c);
}

typedef struct {
    queue_t *q;
    consumer_t *c;
    rq_done_cb done;
    void *arg;
} consume_call_t;

static void consume_replied(void *arg, int status, const char *error, const void *payload, size_t len)
{
    (void)payload, (void)len;
    consume_call_t *cc = arg;
    queue_t *q = cc->q;
    consumer_t *c = cc->c;
    acons_t *a = c->remote; /* NULL: dropped meanwhile (home node down) */
    br_err_t err;
    const br_err_t *e = NULL;
    if (status == 0 && a && !q->deleted) {
        a->pending = false;
        c->q = q;
        ptrvec_push(&q->consumers, c);
        q->had_consumer = true;
    } else {
        if (status != 0) call_error(&err, q, status, error);
        else if (!a) rq_unavailable(q, &err);
        else br_fail(&err, BR_NOT_FOUND, "no queue '%s' in vhost '%s'", q->name, q->vh->name);
        if (a) {
            a->pending = status != 0; /* registered there (queue deleted here meanwhile): cancel */
            acons_drop(a, true);
        }
        e = &err;
    }
    cc->done(cc->arg, e);
    q_unref(q);
    free(cc);
}

void rq_consume(queue_t *q, consumer_t *c, rq_done_cb done, void *arg)
{
    struct rq_state *s = state(q->vh->broker);
    rq_peer_t *p = peer_get(s, q->home);
    acons_t *a = calloc(1, sizeof *a);
    consume_call_t *cc = malloc(sizeof *cc);
    if (!a || !cc) abort();
    a->p = p;
    a->c = c;
    a->id = new_id(s);
    a->pending = true;
    map_put(&p->acons, a->id, a);
    c->remote = a;
    q_ref(q);
    *cc = (consume_call_t){q, c, done, arg};
    amqp_buf_t pl = {0};
    put_qref(&pl, q);
    amqp_buf_put_u64(&pl, a->id);
    amqp_buf_put_shortstr(&pl, str_bytes(c->tag, c->tag_len));
    amqp_buf_put_u8(&pl, (uint8_t)((c->no_ack ? 1 : 0) | (c->exclusive ? 2 : 0)));
    amqp_buf_put_u32(&pl, (uint32_t)c->priority);
    amqp_buf_put_u32(&pl, c->prefetch);
    flush_peer(p);
    call_node(s, q->home, "q.consume", &pl, consume_replied, cc);
    amqp_buf_free(&pl);
}

void rq_consumer_remove(queue_t *q, consumer_t *c)
{
    ptrvec_remove(&q->consumers, c);
    if (q->rr_next >= q->consumers.n) q->rr_next = 0;
    if (c->remote) acons_drop(c->remote, true);
}

void rq_dispatch(queue_t *q)
{
    for (size_t i = 0; i < q->consumers.n; i++) {
        consumer_t *c = q->consumers.items[i];
        if (c->remote) acons_pump(c->remote);
    }
}

void rq_queue_deleted(queue_t *q)
{
    for (size_t i = 0; i < q->consumers.n; i++) {
        consumer_t *c = q->consumers.items[i];
        if (c->remote) acons_drop(c->remote, true);
    }
}

void rq_settle(queue_t *q, const qentry_t *e, enum rq_settle_how how)
{
    broker_t *b = q->vh->broker;
    msg_unref(e->m);
    if (!b->rq || !rq_available(q)) return; /* the home requeues what its down peer held */
    rq_peer_t *p = peer_get(b->rq, q->home);
    put_record(p, 'S');
    amqp_buf_put_u8(&p->out, (uint8_t)how);
    amqp_buf_put_u64(&p->out, e->seq);
}

/* ---- client side: get, stat, purge ---- */

typedef struct {
    queue_t *q;
    rq_get_cb get;
    rq_count_cb count;
    void *arg;
} op_call_t;

static op_call_t *op_begin(queue_t *q, rq_get_cb get, rq_count_cb count, void *arg, amqp_buf_t *pl)
{
    op_call_t *oc = malloc(sizeof *oc);
    if (!oc) abort();
    *oc = (op_call_t){q, get, count, arg};
    q_ref(q);
    put_qref(pl, q);
    flush_peer(peer_get(state(q->vh->broker), q->home));
    return oc;
}

static void get_replied(void *arg, int status, const char *error, const void *payload, size_t len)
{
    op_call_t *oc = arg;
    br_err_t err;
    if (status != 0) {
        oc->get(oc->arg, call_error(&err, oc->q, status, error), NULL, 0);
    } else if (len == 0) {
        oc->get(oc->arg, NULL, NULL, 0);
    } else {
        amqp_reader_t r = amqp_reader(payload, len);
        uint64_t id = amqp_read_u64(&r);
        uint8_t red = amqp_read_u8(&r);
        uint32_t count = amqp_read_u32(&r);
        wire_msg_t w;
        if (!read_msg(&r, &w) || r.left) {
            br_fail(&err, BR_INTERNAL_ERROR, "malformed reply from the home node of queue '%s'", oc->q->name);
            oc->get(oc->arg, &err, NULL, 0);
        } else {
            qentry_t e = {.m = msg_of(&w, NULL, 0), .seq = id, .redelivered = red ? 1 : 0};
            oc->q->stat_get++;
            oc->get(oc->arg, NULL, &e, count);
        }
    }
    q_unref(oc->q);
    free(oc);
}

void rq_get(queue_t *q, bool no_ack, rq_get_cb cb, void *arg)
{
    amqp_buf_t pl = {0};
    op_call_t *oc = op_begin(q, cb, NULL, arg, &pl);
    amqp_buf_put_u8(&pl, no_ack ? 1 : 0);
    call_node(q->vh->broker->rq, q->home, "q.get", &pl, get_replied, oc);
    amqp_buf_free(&pl);
}

static void count_replied(void *arg, int status, const char *error, const void *payload, size_t len)
{
    op_call_t *oc = arg;
    br_err_t err;
    amqp_reader_t r = amqp_reader(payload, len);
    uint32_t messages = amqp_read_u32(&r), consumers = amqp_read_u32(&r);
    if (status != 0) oc->count(oc->arg, call_error(&err, oc->q, status, error), 0, 0);
    else if (r.bad) oc->count(oc->arg, call_error(&err, oc->q, BR_INTERNAL_ERROR, "malformed reply"), 0, 0);
    else oc->count(oc->arg, NULL, messages, consumers);
    q_unref(oc->q);
    free(oc);
}

static void count_call(queue_t *q, const char *method, rq_count_cb cb, void *arg)
{
    amqp_buf_t pl = {0};
    op_call_t *oc = op_begin(q, NULL, cb, arg, &pl);
    call_node(q->vh->broker->rq, q->home, method, &pl, count_replied, oc);
    amqp_buf_free(&pl);
}

void rq_stat(queue_t *q, rq_count_cb cb, void *arg) { count_call(q, "q.stat", cb, arg); }
void rq_purge(queue_t *q, rq_count_cb cb, void *arg) { count_call(q, "q.purge", cb, arg); }

/* ---- client side: what the home sends ("q.dlv") ---- */

static void rx_delivery(rq_peer_t *p, uint64_t cid, uint64_t did, bool redelivered, const wire_msg_t *w)
{
    acons_t *a = map_get(&p->acons, cid);
    if (!a || a->pending) {
        /* Cancelled meanwhile: give it back (the home ignores this for no-ack deliveries). */
        put_record(p, 'S');
        amqp_buf_put_u8(&p->out, RQ_REQUEUE);
        amqp_buf_put_u64(&p->out, did);
        return;
    }
    held_push(a, (qentry_t){.m = msg_of(w, NULL, 0), .seq = did, .redelivered = redelivered ? 1 : 0});
    acons_pump(a);
}

static int rx_dlv(rq_peer_t *p, amqp_reader_t *r)
{
    while (r->left) {
        uint8_t kind = amqp_read_u8(r);
        if (kind == 'U') {
            amqp_bytes_t vn = amqp_read_shortstr(r), qn = amqp_read_shortstr(r);
            uint64_t uid = amqp_read_u64(r);
            if (r->bad) return -1;
            vhost_t *vh = br_vhost(p->s->b, (const char *)vn.ptr, vn.len);
            queue_t *q = vh ? br_queue(vh, (const char *)qn.ptr, qn.len) : NULL;
            if (q && q->uid == uid && rq_remote(q)) q->remote_deep = false;
            continue;
        }
        uint64_t cid = amqp_read_u64(r);
        if (kind == 'D') {
            uint64_t did = amqp_read_u64(r);
            uint8_t red = amqp_read_u8(r);
            wire_msg_t w;
            if (!read_msg(r, &w)) return -1;
            rx_delivery(p, cid, did, red, &w);
        } else if (kind == 'X' && !r->bad) {
            acons_t *a = map_get(&p->acons, cid);
            if (a && !a->pending) cancel_from_home(a);
        } else {
            return -1;
        }
    }
    return 0;
}

/* ---- home side: proxy consumers ---- */

static void pc_unref(pcons_t *pc)
{
    if (!pc || --pc->refs) return;
    free(pc->c.tag);
    free(pc);
}

static bool pc_can_deliver(consumer_t *c)
{
    pcons_t *pc = c->owner;
    return !pc->removed && pc->transit_n < RQ_WINDOW && pc->transit_bytes < RQ_WINDOW_BYTES;
}

static void pc_deliver(consumer_t *c, queue_t *q, const qentry_t *e)
{
    pcons_t *pc = c->owner;
    rq_peer_t *p = pc->p;
    uint64_t id = new_id(p->s);
    amqp_buf_put_u8(&p->dout, 'D');
    amqp_buf_put_u64(&p->dout, pc->id);
    amqp_buf_put_u64(&p->dout, id);
    amqp_buf_put_u8(&p->dout, e->redelivered ? 1 : 0);
    put_msg(&p->dout, e->m);
    pc->transit_n++;
    pc->transit_bytes += e->m->body_len;
    if (!c->no_ack) {
        rdel_t *d = malloc(sizeof *d);
        if (!d) abort();
        q_ref(q);
        pc->refs++;
        *d = (rdel_t){q, *e, pc};
        map_put(&p->dels, id, d);
    }
    if (p->dout.len >= RQ_BATCH_MAX) dlv_send(p);
}

/* The queue was deleted here: tell the consumer's node. */
static void pc_cancelled(consumer_t *c)
{
    pcons_t *pc = c->owner;
    rq_peer_t *p = pc->p;
    pc->removed = true;
    amqp_buf_put_u8(&p->dout, 'X');
    amqp_buf_put_u64(&p->dout, pc->id);
    map_del(&p->proxies, pc->id);
    pc_unref(pc);
}

static const consumer_ops_t pc_ops = {
    .can_deliver = pc_can_deliver,
    .deliver = pc_deliver,
    .cancelled = pc_cancelled,
};

/* Removes a proxy consumer from its queue and drops its registration. Once out of the queue's
 * list, an auto-delete the removal triggers cannot reach it again. */
static void pc_remove(pcons_t *pc)
{
    if (pc->removed) return;
    pc->removed = true;
    map_del(&pc->p->proxies, pc->id);
    queue_t *q = pc->c.q;
    pc->c.q = NULL;
    if (q) q_consumer_remove(q, &pc->c);
    pc_unref(pc);
}

static void rx_settle(rq_peer_t *p, uint64_t id, uint8_t how)
{
    rdel_t *d = map_del(&p->dels, id);
    if (!d) return;
    pcons_t *pc = d->pc;
    if (pc && !pc->removed && pc->c.unacked) pc->c.unacked--;
    if (how == RQ_ACK) q_ack(d->q, &d->e);
    else if (how == RQ_DISCARD) q_discard(d->q, &d->e);
    else q_requeue(d->q, &d->e);
    q_schedule(d->q);
    q_unref(d->q);
    pc_unref(pc);
    free(d);
}

static void rx_credit(rq_peer_t *p, uint64_t id, uint32_t n, uint64_t bytes)
{
    pcons_t *pc = map_get(&p->proxies, id);
    if (!pc) return;
    pc->transit_n = n < pc->transit_n ? pc->transit_n - n : 0;
    pc->transit_bytes = bytes < pc->transit_bytes ? pc->transit_bytes - bytes : 0;
    if (pc->c.q) q_schedule(pc->c.q);
}

static void rx_cancel(rq_peer_t *p, uint64_t id)
{
    pcons_t *pc = map_get(&p->proxies, id);
    if (pc) pc_remove(pc);
}

void rq_drained(queue_t *q)
{
    broker_t *b = q->vh->broker;
    q->remote_deep = false;
    if (!b->rq) return;
    for (size_t i = 0; i < b->rq->npeers; i++) {
        rq_peer_t *p = b->rq->peers[i];
        if (!rq_node_is_up(b, p->node)) continue;
        amqp_buf_put_u8(&p->dout, 'U');
        put_qref(&p->dout, q);
    }
}

/* ---- home side: requests ---- */

static queue_t *rx_queue(broker_t *b, amqp_reader_t *r, br_err_t *err)
{
    amqp_bytes_t vn = amqp_read_shortstr(r), qn = amqp_read_shortstr(r);
    uint64_t uid = amqp_read_u64(r);
    if (r->bad) {
        br_fail(err, BR_COMMAND_INVALID, "malformed request");
        return NULL;
    }
    vhost_t *vh = br_vhost(b, (const char *)vn.ptr, vn.len);
    queue_t *q = vh ? br_queue(vh, (const char *)qn.ptr, qn.len) : NULL;
    if (!q || q->uid != uid || q->deleted || rq_remote(q)) {
        br_fail(err, BR_NOT_FOUND, "no queue '%.*s' in vhost '%.*s'", (int)qn.len, (const char *)qn.ptr, (int)vn.len,
                (const char *)vn.ptr);
        return NULL;
    }
    return q;
}

static void rx_consume(rq_peer_t *p, amqp_reader_t *r, const struct peer_reply_to *to)
{
    broker_t *b = p->s->b;
    br_err_t err;
    queue_t *q = rx_queue(b, r, &err);
    uint64_t id = amqp_read_u64(r);
    amqp_bytes_t tag = amqp_read_shortstr(r);
    uint8_t flags = amqp_read_u8(r);
    int32_t prio = (int32_t)amqp_read_u32(r);
    uint32_t prefetch = amqp_read_u32(r);
    if (q && (r->bad || r->left || !id || map_get(&p->proxies, id))) {
        br_fail(&err, BR_COMMAND_INVALID, "malformed consume request");
        q = NULL;
    }
    if (!q) return reply(b, to, err.code, err.text, NULL);
    bool held = false;
    for (size_t i = 0; i < q->consumers.n; i++)
        if (((consumer_t *)q->consumers.items[i])->exclusive) held = true;
    if (held || ((flags & 2) && q->consumers.n)) {
        br_fail(&err, BR_ACCESS_REFUSED, "queue '%s' in vhost '%s' in exclusive use", q->name, q->vh->name);
        return reply(b, to, err.code, err.text, NULL);
    }
    pcons_t *pc = calloc(1, sizeof *pc);
    if (!pc) abort();
    pc->p = p;
    pc->id = id;
    pc->refs = 1;
    pc->c.tag = strndup((const char *)tag.ptr, tag.len);
    if (!pc->c.tag) abort();
    pc->c.tag_len = tag.len;
    pc->c.no_ack = flags & 1;
    pc->c.exclusive = flags & 2;
    pc->c.priority = prio;
    pc->c.prefetch = prefetch;
    pc->c.ops = &pc_ops;
    pc->c.owner = pc;
    map_put(&p->proxies, id, pc);
    reply(b, to, 0, NULL, NULL); /* before any delivery: those go out with this iteration's batch */
    q_consumer_add(q, &pc->c);
}

static void rx_get(rq_peer_t *p, amqp_reader_t *r, const struct peer_reply_to *to)
{
    broker_t *b = p->s->b;
    br_err_t err;
    queue_t *q = rx_queue(b, r, &err);
    bool no_ack = amqp_read_u8(r);
    if (q && (r->bad || r->left)) {
        br_fail(&err, BR_COMMAND_INVALID, "malformed get request");
        q = NULL;
    }
    if (!q) return reply(b, to, err.code, err.text, NULL);
    qentry_t e;
    if (!q_get(q, &e)) return reply(b, to, 0, NULL, NULL);
    uint64_t id = new_id(p->s);
    amqp_buf_t pl = {0};
    amqp_buf_put_u64(&pl, id);
    amqp_buf_put_u8(&pl, e.redelivered ? 1 : 0);
    amqp_buf_put_u32(&pl, q_message_count(q));
    put_msg(&pl, e.m);
    if (no_ack) {
        q_ack(q, &e);
    } else {
        rdel_t *d = malloc(sizeof *d);
        if (!d) abort();
        q_ref(q);
        *d = (rdel_t){q, e, NULL};
        map_put(&p->dels, id, d);
    }
    reply(b, to, 0, NULL, &pl);
    amqp_buf_free(&pl);
}

static void rx_count(rq_peer_t *p, amqp_reader_t *r, const struct peer_reply_to *to, bool purge)
{
    broker_t *b = p->s->b;
    br_err_t err;
    queue_t *q = rx_queue(b, r, &err);
    if (q && r->left) {
        br_fail(&err, BR_COMMAND_INVALID, "malformed request");
        q = NULL;
    }
    if (!q) return reply(b, to, err.code, err.text, NULL);
    amqp_buf_t pl = {0};
    if (purge) {
        amqp_buf_put_u32(&pl, q_purge(q));
        rq_check_drained(q);
    } else {
        q_touch(q);
        amqp_buf_put_u32(&pl, q_message_count(q));
    }
    amqp_buf_put_u32(&pl, q_consumer_count(q));
    reply(b, to, 0, NULL, &pl);
    amqp_buf_free(&pl);
}

/* One forwarded publish: enqueued as a local publish would be, one result byte per queue. */
static bool rx_publish(broker_t *b, amqp_reader_t *r, amqp_buf_t *res, bool *sync)
{
    uint8_t flags = amqp_read_u8(r), prio = amqp_read_u8(r);
    amqp_bytes_t vn = amqp_read_shortstr(r);
    wire_msg_t w;
    if (!read_msg(r, &w)) return false;
    uint16_t bcc_len = amqp_read_u16(r);
    amqp_bytes_t bcc = amqp_read_bytes(r, bcc_len);
    uint16_t nq = amqp_read_u16(r);
    if (r->bad) return false;
    vhost_t *vh = br_vhost(b, (const char *)vn.ptr, vn.len);
    msg_t *m = msg_of(&w, bcc.ptr, bcc.len);
    m->persistent = flags & 1;
    m->priority = prio;
    m->id = b->next_msg_id++;
    for (unsigned i = 0; i < nq; i++) {
        amqp_bytes_t qn = amqp_read_shortstr(r);
        uint64_t uid = amqp_read_u64(r);
        if (r->bad) break;
        queue_t *q = vh ? br_queue(vh, (const char *)qn.ptr, qn.len) : NULL;
        uint8_t result = RES_GONE;
        if (q && q->uid == uid && !q->deleted && !rq_remote(q)) {
            int rc = q_publish(q, m);
            if (rc & Q_PUB_SYNC) *sync = true;
            result = rc & Q_PUB_REJECTED ? RES_REJECTED : RES_OK;
            if (q->consumers.n && q->ready_len >= RQ_DEEP) {
                result |= RES_DEEP;
                q->remote_deep = true; /* rq_drained tells when it no longer is */
            }
        }
        amqp_buf_put_u8(res, result);
    }
    msg_unref(m);
    return !r->bad;
}

static void sync_unlink(struct rq_state *s, sync_reply_t *sr)
{
    if (sr->prev) sr->prev->next = sr->next;
    else s->syncs = sr->next;
    if (sr->next) sr->next->prev = sr->prev;
}

static void batch_synced(void *arg)
{
    sync_reply_t *sr = arg;
    if (sr->s) {
        sync_unlink(sr->s, sr);
        reply(sr->s->b, &sr->to, 0, NULL, &sr->res);
    }
    amqp_buf_free(&sr->res);
    free(sr);
}

static void rx_batch(rq_peer_t *p, amqp_reader_t *r, const struct peer_reply_to *to)
{
    struct rq_state *s = p->s;
    broker_t *b = s->b;
    amqp_buf_t res = {0};
    bool sync = false, ok = true;
    while (ok && r->left) {
        uint8_t kind = amqp_read_u8(r);
        if (kind == 'P') {
            ok = rx_publish(b, r, &res, &sync);
        } else if (kind == 'S') {
            uint8_t how = amqp_read_u8(r);
            uint64_t id = amqp_read_u64(r);
            ok = !r->bad && how <= RQ_DISCARD;
            if (ok) rx_settle(p, id, how);
        } else if (kind == 'C') {
            uint64_t id = amqp_read_u64(r);
            uint32_t n = amqp_read_u32(r);
            uint64_t bytes = amqp_read_u64(r);
            ok = !r->bad;
            if (ok) rx_credit(p, id, n, bytes);
        } else if (kind == 'X') {
            uint64_t id = amqp_read_u64(r);
            ok = !r->bad;
            if (ok) rx_cancel(p, id);
        } else {
            ok = false;
        }
    }
    if (!ok) {
        log_warn("malformed queue batch from node %u ignored from the bad record on", p->node);
        reply(b, to, BR_COMMAND_INVALID, "malformed batch", NULL);
        amqp_buf_free(&res);
        return;
    }
    if (!sync || !b->store) {
        reply(b, to, 0, NULL, &res);
        amqp_buf_free(&res);
        return;
    }
    /* Durable writes: answer once they are synced (confirms mean on disk, as for local queues). */
    sync_reply_t *sr = calloc(1, sizeof *sr);
    if (!sr) abort();
    sr->s = s;
    sr->to = *to;
    sr->res = res;
    sr->next = s->syncs;
    if (s->syncs) s->syncs->prev = sr;
    s->syncs = sr;
    store_on_synced(b->store, batch_synced, sr);
}

void rq_handle_call(broker_t *b, uint32_t from, const char *method, const void *payload, size_t len,
                    const struct peer_reply_to *reply_to)
{
    if (from == 0 || from == PEER_CLIENT_ID || from == b->self_node)
        return reply(b, reply_to, BR_ACCESS_REFUSED, "queue operations are for cluster nodes", NULL);
    rq_peer_t *p = peer_get(state(b), from);
    amqp_reader_t r = amqp_reader(payload, len);
    if (strcmp(method, "q.batch") == 0) return rx_batch(p, &r, reply_to);
    if (strcmp(method, "q.dlv") == 0) {
        int rc = rx_dlv(p, &r);
        if (rc) log_warn("malformed deliveries from node %u ignored from the bad record on", from);
        return reply(b, reply_to, rc ? BR_COMMAND_INVALID : 0, rc ? "malformed deliveries" : NULL, NULL);
    }
    if (strcmp(method, "q.consume") == 0) return rx_consume(p, &r, reply_to);
    if (strcmp(method, "q.get") == 0) return rx_get(p, &r, reply_to);
    if (strcmp(method, "q.stat") == 0) return rx_count(p, &r, reply_to, false);
    if (strcmp(method, "q.purge") == 0) return rx_count(p, &r, reply_to, true);
    reply(b, reply_to, BR_NOT_IMPLEMENTED, "unknown queue method", NULL);
}

/* ---- node up / down ---- */

/* The node held our consumers / publishes for its queues. */
static void client_side_down(rq_peer_t *p)
{
    end_coalesce(p);
    waiter_t *w = p->w;
    size_t wn = p->wn, n;
    p->w = NULL;
    p->wn = p->wcap = 0;
    uint64_t *ids = map_keys(&p->acons, &n);
    for (size_t i = 0; i < n; i++) {
        acons_t *a = map_get(&p->acons, ids[i]);
        if (!a) continue;
        if (a->pending) acons_drop(a, false); /* its registration call fails by itself */
        else cancel_from_home(a);
    }
    free(ids);
    p->owing.n = 0;
    p->out.len = 0; /* requeues of held deliveries included: the home requeues them anyway */
    p->busy = false;
    fail_waiters(w, wn);
    free(w);
}

/* The node consumed from our queues: remove its consumers, requeue what it had not settled. */
static void home_side_down(rq_peer_t *p)
{
    size_t n;
    uint64_t *ids = map_keys(&p->proxies, &n);
    for (size_t i = 0; i < n; i++) {
        pcons_t *pc = map_get(&p->proxies, ids[i]); /* an auto-delete may have cancelled it */
        if (pc) pc_remove(pc);
    }
    free(ids);
    ptrvec_t v = {0};
    map_drain(&p->dels, &v);
    for (size_t i = 0; i < v.n; i++) {
        rdel_t *d = v.items[i];
        q_requeue(d->q, &d->e);
        q_unref(d->q);
        pc_unref(d->pc);
        free(d);
    }
    ptrvec_free(&v);
    p->dout.len = 0;
    p->dbusy = false;
}

void rq_node_down(broker_t *b, uint32_t node)
{
    if (!b->node_call && !b->rq) return;
    rq_peer_t *p = peer_get(state(b), node);
    p->down = true;
    log_info("queues: node %u down: its consumers and deliveries released", node);
    client_side_down(p);
    home_side_down(p);
    meta_node_down(b, node); /* its transient and exclusive queues go, as in RabbitMQ */
}

void rq_node_up(broker_t *b, uint32_t node)
{
    rq_peer_t *p = b->rq ? peer_find(b->rq, node) : NULL;
    if (p) p->down = false;
}

/* ---- glue over a peer mesh ---- */

static int mesh_call(void *ctx, uint32_t node, const char *method, const void *payload, size_t len, double timeout,
                     br_node_reply_cb cb, void *arg)
{
    return peer_call(ctx, node, method, payload, len, timeout, cb, arg, NULL);
}

static int mesh_reply(void *ctx, const struct peer_reply_to *to, int status, const char *error, const void *payload,
                      size_t len)
{
    return peer_reply(ctx, to, status, error, payload, len);
}

static bool mesh_is_up(void *ctx, uint32_t node) { return peer_is_up(ctx, node); }
static const char *mesh_name(void *ctx, uint32_t node) { return peer_node_name(ctx, node); }

void rq_attach_mesh(broker_t *b, peer_mesh_t *mesh)
{
    if (!mesh) return;
    b->node_ctx = mesh;
    b->node_reply = mesh_reply;
    b->node_is_up = mesh_is_up;
    b->node_name = mesh_name;
    b->node_call = mesh_call;
    log_info("classic queues: served from their home node to every node of the cluster");
}

void rq_mesh_call(void *ud, uint32_t from, const struct peer_call_in *in)
{
    broker_t *b = ud;
    if (strncmp(in->method, "qq.", 3) == 0) /* quorum queues share the mesh */
        return qq_handle_call(b, from, in->method, in->payload, in->len, &in->reply_to);
    if (strncmp(in->method, "connreg.", 8) == 0) /* the connection registry (management API) */
        return connreg_handle_call(b, from, in->method, in->payload, in->len, &in->reply_to);
    if (strncmp(in->method, "qstats.", 7) == 0) /* queue figures (management API, broker/qstats.c) */
        return qs_handle_call(b, from, in->method, in->payload, in->len, &in->reply_to);
    if (!rq_is_method(in->method)) return reply(b, &in->reply_to, BR_NOT_IMPLEMENTED, "no handler for this call", NULL);
    rq_handle_call(b, from, in->method, in->payload, in->len, &in->reply_to);
}

void rq_mesh_up(void *ud, uint32_t node)
{
    rq_node_up(ud, node);
    qq_node_up(ud, node);
}

void rq_mesh_down(void *ud, uint32_t node)
{
    rq_node_down(ud, node);
    qq_node_down(ud, node);
}

/* Over a cl_t: the mesh it owns, and the names it knows (configured nodes too, even down). */
static int cl_call(void *ctx, uint32_t node, const char *method, const void *payload, size_t len, double timeout,
                   br_node_reply_cb cb, void *arg)
{
    return peer_call(cl_mesh(ctx), node, method, payload, len, timeout, cb, arg, NULL);
}

static int cl_reply(void *ctx, const struct peer_reply_to *to, int status, const char *error, const void *payload,
                    size_t len)
{
    return peer_reply(cl_mesh(ctx), to, status, error, payload, len);
}

static bool cl_is_up(void *ctx, uint32_t node) { return peer_is_up(cl_mesh(ctx), node); }
static const char *cl_name(void *ctx, uint32_t node) { return cl_node_name(ctx, node); }

void rq_attach_cluster(broker_t *b, cl_t *c)
{
    if (!c || !cl_clustered(c) || !cl_mesh(c)) return;
    b->node_ctx = c;
    b->node_reply = cl_reply;
    b->node_is_up = cl_is_up;
    b->node_name = cl_name;
    b->node_call = cl_call;
    cl_set_call_fallback(c, rq_mesh_call, b);
    cl_set_peer_watch(c, rq_mesh_up, rq_mesh_down, b);
    log_info("classic queues: served from their home node to every node of the cluster");
}

/* ---- teardown ---- */

void rq_close(broker_t *b)
{
    if (b->rq) b->rq->closing = true;
    else b->node_call = NULL; /* nothing was ever forwarded: the records are plain ones now */
}

void rq_free(broker_t *b)
{
    struct rq_state *s = b->rq;
    if (!s) return;
    run_deferred(s);
    if (b->loop) ev_timer_stop(b->loop, &s->timer);
    for (sync_reply_t *sr = s->syncs; sr; sr = sr->next) sr->s = NULL; /* freed by their callback */
    for (size_t i = 0; i < s->npeers; i++) {
        rq_peer_t *p = s->peers[i];
        end_coalesce(p);
        fail_waiters(p->w, p->wn);
        free(p->w);
        ptrvec_t v = {0};
        map_drain(&p->acons, &v);
        for (size_t j = 0; j < v.n; j++) {
            acons_t *a = v.items[j];
            for (size_t k = 0; k < a->held_len; k++) msg_unref(a->held[(a->held_head + k) % a->held_cap].m);
            a->c->remote = NULL;
            free(a->held);
            free(a);
        }
        v.n = 0;
        map_drain(&p->dels, &v);
        for (size_t j = 0; j < v.n; j++) {
            rdel_t *d = v.items[j];
            msg_unref(d->e.m);
            q_unref(d->q);
            pc_unref(d->pc);
            free(d);
        }
        v.n = 0;
        map_drain(&p->proxies, &v); /* queues were deleted: their consumers are gone already */
        for (size_t j = 0; j < v.n; j++) pc_unref(v.items[j]);
        ptrvec_free(&v);
        ptrvec_free(&p->owing);
        amqp_buf_free(&p->out);
        amqp_buf_free(&p->dout);
        free(p);
    }
    free(s->peers);
    free(s->def);
    free(s);
    b->rq = NULL;
}
