/* channel.c - one AMQP 0-9-1 channel: the methods of the exchange, queue, basic, confirm and
 * tx classes, mapped onto the broker core.
 *
 * Publishing: basic.publish resolves the exchange and opens a content assembly; the header
 * frame allocates the message (refcounted, shared by every queue it routes to) and body frames
 * fill it. When complete, the message is routed and enqueued (or held until tx.commit).
 *
 * Confirms: each publish gets the next sequence number. A publish that wrote to the store is
 * confirmed only after its batch is synced: its number waits in `pending` and the channel asks
 * the store, once per loop iteration, to call back when everything written so far is durable;
 * the callback confirms every pending number up to the mark with one basic.ack (multiple).
 * Everything else is confirmed at once.
 *
 * Deliveries: consumers are core consumer_t objects owned by the channel. The core decides who
 * gets what; the channel numbers deliveries (tags are per channel, increasing) and keeps each
 * un-acked one in `dl`, a deque ordered by tag, until ack/nack/reject/recover or channel close
 * (which requeues them). */
#include "amqp091/session.h"
#include "broker/meta.h"
#include "broker/log.h"
#include "broker/props.h"
#include "broker/remote.h"
#include "broker/qq.h"
#include "broker/qq_sm.h"
#include "broker/topicperm.h"

#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const consumer_ops_t chan_consumer_ops;

#define BYTES_FMT(b) (int)(b).len, (const char *)(b).ptr

chan_t *chan_new(conn_t *c, uint16_t id)
{
    chan_t *ch = calloc(1, sizeof *ch);
    if (!ch) abort();
    ch->conn = c;
    ch->id = id;
    ch->state = CH_OPEN;
    ch->refs = 1;
    ch->next_tag = 1;
    ch->flow_active = true;
    ch->qq_chan = qq_channel_id(c->srv->broker);
    c->srv->broker->stat_chan_opened++;
    return ch;
}

#define REPLY_TO "amq.rabbitmq.reply-to"
#define REPLY_TO_PREFIX "amq.rabbitmq.reply-to."

static void reply_to_stop(chan_t *ch)
{
    if (!ch->reply_key) return;
    if (ch->conn) dict_del(&ch->conn->srv->reply_to, ch->reply_key, strlen(ch->reply_key));
    free(ch->reply_key);
    free(ch->reply_ctag);
    ch->reply_key = ch->reply_ctag = NULL;
}

static void chan_unref(chan_t *ch)
{
    if (--ch->refs) return;
    free(ch->pending);
    free(ch->dl);
    free(ch->txp);
    free(ch->txa);
    free(ch->last_queue);
    free(ch);
}

static void send(chan_t *ch, const amqp_method_t *m)
{
    if (ch->conn) conn_send_method(ch->conn, ch->id, m);
}

static void send_simple(chan_t *ch, uint32_t id)
{
    amqp_method_t m = {.id = id};
    send(ch, &m);
}

void chan_exception(chan_t *ch, int code, uint32_t method_id, const char *fmt, ...)
{
    char detail[1100], text[1200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    snprintf(text, sizeof text, "%s - %s", amqp_reply_name(code), detail);
    amqp_reply_text_fit(text);
    if (amqp_reply_is_connection_error(code)) {
        conn_exception(ch->conn, code, method_id, "%s", detail);
        return;
    }
    if (ch->state == CH_CLOSING) return;
    log_info("channel %u: error %d %s", ch->id, code, text);
    amqp_method_t m = {.id = AMQP_CHANNEL_CLOSE};
    m.u.channel_close.reply_code = (uint16_t)code;
    m.u.channel_close.reply_text = AMQP_BYTES_CSTR(text);
    m.u.channel_close.class_id = AMQP_METHOD_CLASS(method_id);
    m.u.channel_close.method_id = AMQP_METHOD_INDEX(method_id);
    send(ch, &m);
    ch->state = CH_CLOSING;
    /* Release everything now; only close-ok is still expected. */
    if (ch->pub_msg) {
        msg_unref(ch->pub_msg);
        ch->pub_msg = NULL;
    }
    ch->pub = PUB_IDLE;
}

static void fail(chan_t *ch, uint32_t method_id, const br_err_t *err)
{
    chan_exception(ch, err->code, method_id, "%s", err->text);
}

/* ---- deliveries ---- */

static delivery_t *dl_at(chan_t *ch, size_t i) { return &ch->dl[(ch->dl_head + i) % ch->dl_cap]; }

static delivery_t *dl_push(chan_t *ch)
{
    if (ch->dl_len == ch->dl_cap) {
        size_t ncap = ch->dl_cap ? ch->dl_cap * 2 : 64;
        delivery_t *nb = malloc(ncap * sizeof *nb);
        if (!nb) abort();
        for (size_t i = 0; i < ch->dl_len; i++) nb[i] = *dl_at(ch, i);
        free(ch->dl);
        ch->dl = nb;
        ch->dl_cap = ncap;
        ch->dl_head = 0;
    }
    delivery_t *d = dl_at(ch, ch->dl_len++);
    memset(d, 0, sizeof *d);
    d->at = ch->conn ? ev_now(ch->conn->srv->loop) : 0;
    return d;
}

/* Index of the delivery with this tag, or -1. */
static long dl_find(chan_t *ch, uint64_t tag)
{
    size_t lo = 0, hi = ch->dl_len;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        uint64_t t = dl_at(ch, mid)->tag;
        if (t == tag) return dl_at(ch, mid)->settled ? -1 : (long)mid;
        if (t < tag) lo = mid + 1;
        else hi = mid;
    }
    return -1;
}

static void dl_compact(chan_t *ch)
{
    while (ch->dl_len && dl_at(ch, 0)->settled) {
        ch->dl_head = (ch->dl_head + 1) % ch->dl_cap;
        ch->dl_len--;
    }
}

/* Settles one delivery: ack (remove) or requeue. */
/* How a delivery is settled: acked, returned to its queue, or rejected for good (dead-lettered). */
enum settle_how { SETTLE_ACK, SETTLE_REQUEUE, SETTLE_DISCARD };

static enum settle_how settle_mode(bool is_ack, bool requeue)
{
    return is_ack ? SETTLE_ACK : requeue ? SETTLE_REQUEUE : SETTLE_DISCARD;
}

static void settle(chan_t *ch, delivery_t *d, enum settle_how how)
{
    d->settled = true;
    if (d->c) {
        if (d->c->unacked) d->c->unacked--;
        if (d->c->q) q_schedule(d->c->q);
    }
    if (ch->unacked) ch->unacked--;
    if (how == SETTLE_ACK)
        q_ack(d->q, &d->e);
    else if (how == SETTLE_DISCARD)
        q_discard(d->q, &d->e);
    else
        q_requeue(d->q, &d->e);
    /* A channel-wide prefetch frees credit for every consumer on the channel. */
    if (ch->global_prefetch)
        for (size_t i = 0; i < ch->consumers.n; i++) {
            consumer_t *c = ch->consumers.items[i];
            if (c->q) q_schedule(c->q);
        }
    q_unref(d->q);
}

static void settle_all(chan_t *ch, enum settle_how how)
{
    for (size_t i = 0; i < ch->dl_len; i++) {
        delivery_t *d = dl_at(ch, i);
        if (!d->settled) settle(ch, d, how);
    }
    dl_compact(ch);
}

static void write_content(chan_t *ch, const msg_t *m)
{
    conn_t *c = ch->conn;
    amqp_encode_content_header(&c->out, ch->id, AMQP_CLASS_BASIC, m->body_len, m->props, m->props_len);
    amqp_encode_body(&c->out, ch->id, m->body, m->body_len, c->frame_max);
    if (c->out.len > 64 * 1024) conn_flush(c);
}

static bool consumer_can_deliver(consumer_t *cons)
{
    chan_t *ch = cons->owner;
    if (ch->state != CH_OPEN || !ch->flow_active || !ch->conn || conn_output_blocked(ch->conn)) return false;
    if (!cons->no_ack && ch->global_prefetch && ch->unacked >= ch->global_prefetch) return false;
    return true;
}

static void consumer_deliver(consumer_t *cons, queue_t *q, const qentry_t *e)
{
    chan_t *ch = cons->owner;
    uint64_t tag = ch->next_tag++;
    amqp_method_t m = {.id = AMQP_BASIC_DELIVER};
    m.u.basic_deliver.consumer_tag = (amqp_bytes_t){(const uint8_t *)cons->tag, cons->tag_len};
    m.u.basic_deliver.delivery_tag = tag;
    m.u.basic_deliver.redelivered = e->redelivered;
    m.u.basic_deliver.exchange = (amqp_bytes_t){(const uint8_t *)e->m->exchange, e->m->exchange_len};
    m.u.basic_deliver.routing_key = (amqp_bytes_t){(const uint8_t *)e->m->rk, e->m->rk_len};
    send(ch, &m);
    write_content(ch, e->m);
    if (cons->no_ack) ch->st_deliver_no_ack++;
    else ch->st_deliver++;
    if (e->redelivered) ch->st_redeliver++;
    if (!cons->no_ack) {
        delivery_t *d = dl_push(ch);
        d->tag = tag;
        d->q = q;
        q_ref(q);
        d->e = *e;
        d->c = cons;
        ch->unacked++;
    }
    /* Deliveries run from the broker's dispatch pass, outside any input handling: hand the
     * bytes to the socket layer now (it coalesces them into one send per loop iteration). */
    conn_flush(ch->conn);
}

static void forget_consumer_deliveries(chan_t *ch, consumer_t *cons)
{
    for (size_t i = 0; i < ch->dl_len; i++) {
        delivery_t *d = dl_at(ch, i);
        if (d->c == cons) d->c = NULL;
    }
}

static void consumer_free(chan_t *ch, consumer_t *cons)
{
    ptrvec_remove(&ch->consumers, cons);
    forget_consumer_deliveries(ch, cons);
    free(cons->tag);
    free(cons);
}

static void consumer_cancelled(consumer_t *cons)
{
    chan_t *ch = cons->owner;
    if (ch->conn && ch->conn->cap_cancel_notify && ch->state == CH_OPEN) {
        amqp_method_t m = {.id = AMQP_BASIC_CANCEL};
        m.u.basic_cancel.consumer_tag = (amqp_bytes_t){(const uint8_t *)cons->tag, cons->tag_len};
        m.u.basic_cancel.nowait = true;
        send(ch, &m);
    }
    consumer_free(ch, cons);
}

static const consumer_ops_t chan_consumer_ops = {
    .can_deliver = consumer_can_deliver,
    .deliver = consumer_deliver,
    .cancelled = consumer_cancelled,
};

void chan_on_drain(chan_t *ch)
{
    for (size_t i = 0; i < ch->consumers.n; i++) {
        consumer_t *c = ch->consumers.items[i];
        if (c->q) q_schedule(c->q);
    }
}

void chan_destroy(chan_t *ch)
{
    if (ch->conn) ch->conn->srv->broker->stat_chan_closed++;
    reply_to_stop(ch);
    /* Quorum queues: one DOWN per queue returns this channel's messages and drops its
     * consumers and publisher records (the per-delivery requeues below are skipped there). */
    if (ch->conn) qq_channel_closing(ch->conn->srv->broker, ch->qq_chan);
    while (ch->consumers.n) {
        consumer_t *c = ch->consumers.items[ch->consumers.n - 1];
        queue_t *q = c->q;
        if (q) q_consumer_remove(q, c); /* before freeing: a remote queue's link reads it */
        consumer_free(ch, c);
    }
    ptrvec_free(&ch->consumers);
    settle_all(ch, SETTLE_REQUEUE);
    if (ch->pub_msg) msg_unref(ch->pub_msg);
    ch->pub_msg = NULL;
    for (size_t i = 0; i < ch->txp_len; i++) msg_unref(ch->txp[i].m);
    ch->txp_len = 0;
    ch->conn = NULL;
    ch->state = CH_CLOSING;
    chan_unref(ch);
}

/* x-consumer-timeout: instead of closing the channel, the consumer is cancelled (basic.cancel,
 * when the client supports it) and its unacknowledged messages go back to the queue. */
static void cancel_timed_out_consumer(chan_t *ch, consumer_t *c)
{
    log_info("consumer '%s' on channel %u timed out: cancelled, messages returned", c->tag, ch->id);
    for (size_t i = 0; i < ch->dl_len; i++) {
        delivery_t *d = dl_at(ch, i);
        if (!d->settled && d->c == c) settle(ch, d, SETTLE_REQUEUE);
    }
    queue_t *q = c->q;
    if (ch->conn && ch->conn->cap_cancel_notify) {
        amqp_method_t m = {.id = AMQP_BASIC_CANCEL};
        m.u.basic_cancel.consumer_tag = (amqp_bytes_t){(const uint8_t *)c->tag, c->tag_len};
        m.u.basic_cancel.nowait = true;
        send(ch, &m);
    }
    if (q) q_consumer_remove(q, c);
    consumer_free(ch, c);
}

void chan_check_ack_timeout(chan_t *ch, ev_tstamp now, uint64_t timeout_ms)
{
    dl_compact(ch);
    if (ch->state != CH_OPEN || ch->dl_len == 0) return;
    /* Queues with their own consumer timeout: cancel the consumer, keep the channel. */
    for (size_t i = 0; i < ch->dl_len; i++) {
        delivery_t *d = dl_at(ch, i);
        if (d->settled || !d->c || d->q->consumer_timeout < 0) continue;
        if ((now - d->at) * 1000.0 >= (double)d->q->consumer_timeout) cancel_timed_out_consumer(ch, d->c);
    }
    dl_compact(ch);
    /* The node-wide consumer_timeout covers the rest: the oldest such delivery decides. */
    delivery_t *oldest = NULL;
    for (size_t i = 0; i < ch->dl_len && !oldest; i++) {
        delivery_t *d = dl_at(ch, i);
        if (!d->settled && d->q->consumer_timeout < 0) oldest = d;
    }
    if (!oldest || (now - oldest->at) * 1000.0 < (double)timeout_ms) return;
    chan_exception(ch, AMQP_PRECONDITION_FAILED, 0,
                   "delivery acknowledgement on channel %u timed out. Timeout value used: %llu ms. This timeout "
                   "value can be configured, see consumers doc guide to learn more",
                   ch->id, (unsigned long long)timeout_ms);
    /* RabbitMQ returns the channel's unacked messages to their queues at once. */
    settle_all(ch, SETTLE_REQUEUE);
}

/* ---- confirms ---- */

typedef struct {
    chan_t *ch;
    uint64_t upto;
} sync_token_t;

static void confirm_ack(chan_t *ch, uint64_t tag, bool multiple)
{
    amqp_method_t m = {.id = AMQP_BASIC_ACK};
    m.u.basic_ack.delivery_tag = tag;
    m.u.basic_ack.multiple = multiple;
    send(ch, &m);
    ch->st_confirm++;
    if (ch->conn) ch->conn->srv->broker->stat_confirm++;
    if (ch->conn && ch->conn->vh) ch->conn->vh->stat_confirm++;
}

static void confirm_nack(chan_t *ch, uint64_t tag)
{
    amqp_method_t n = {.id = AMQP_BASIC_NACK};
    n.u.basic_nack.delivery_tag = tag;
    send(ch, &n);
}

static pend_t *pend_at(chan_t *ch, size_t i) { return &ch->pending[(ch->pend_head + i) % ch->pend_cap]; }

/* Confirms, in publish order, every publish at the head that has nothing left to wait for:
 * a run of acks goes out as one basic.ack (multiple), a refused one as basic.nack. */
static void confirms_drain(chan_t *ch)
{
    bool live = ch->conn && ch->state == CH_OPEN;
    size_t run = 0;
    uint64_t last = 0;
    while (ch->pend_len) {
        pend_t *p = pend_at(ch, 0);
        if (p->sync || p->remote) break;
        if (p->nack) {
            if (run && live) confirm_ack(ch, last, run > 1);
            run = 0;
            if (live) confirm_nack(ch, p->seq);
        } else {
            last = p->seq;
            run++;
        }
        ch->pend_head = (ch->pend_head + 1) % ch->pend_cap;
        ch->pend_len--;
    }
    if (run && live) confirm_ack(ch, last, run > 1);
}

static void confirms_synced(void *arg)
{
    sync_token_t *t = arg;
    chan_t *ch = t->ch;
    for (size_t i = 0; i < ch->pend_len && pend_at(ch, i)->seq <= t->upto; i++) pend_at(ch, i)->sync = false;
    confirms_drain(ch);
    free(t);
    chan_unref(ch);
}

static void pending_push(chan_t *ch, pend_t p)
{
    if (ch->pend_len == ch->pend_cap) {
        size_t ncap = ch->pend_cap ? ch->pend_cap * 2 : 64;
        pend_t *nb = malloc(ncap * sizeof *nb);
        if (!nb) abort();
        for (size_t i = 0; i < ch->pend_len; i++) nb[i] = *pend_at(ch, i);
        free(ch->pending);
        ch->pending = nb;
        ch->pend_cap = ncap;
        ch->pend_head = 0;
    }
    ch->pending[(ch->pend_head + ch->pend_len++) % ch->pend_cap] = p;
}

/* A queue on another node answered for publish seq (rq_publish's callback; holds a channel
 * reference). */
static void remote_confirmed(void *arg, uint64_t seq, int result)
{
    chan_t *ch = arg;
    size_t lo = 0, hi = ch->pend_len;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (pend_at(ch, mid)->seq < seq) lo = mid + 1;
        else hi = mid;
    }
    if (lo < ch->pend_len && pend_at(ch, lo)->seq == seq) {
        pend_t *p = pend_at(ch, lo);
        if (p->remote) p->remote--;
        if (result != Q_PUB_OK) p->nack = true;
        confirms_drain(ch);
    }
    chan_unref(ch);
}

/* Called before the loop sleeps: one store callback per channel that published durably. */
void chan_register_syncs(amqp_server_t *s)
{
    while (s->sync_list) {
        chan_t *ch = s->sync_list;
        s->sync_list = ch->next_sync;
        ch->sync_wanted = false;
        sync_token_t *t = malloc(sizeof *t);
        if (!t) abort();
        t->ch = ch; /* the reference taken when it joined the list moves to the token */
        t->upto = ch->pub_seq;
        store_on_synced(s->broker->store, confirms_synced, t);
    }
}

/* result: deliver_message's Q_PUB_* flags; remote: queues on other nodes still to answer. */
static void confirm_publish(chan_t *ch, int result, unsigned remote)
{
    if (!ch->confirm) return;
    uint64_t seq = ++ch->pub_seq;
    bool rejected = result & Q_PUB_REJECTED;
    bool needs_sync = (result & Q_PUB_SYNC) && !rejected;
    if (rejected) remote = 0; /* refused already: later answers change nothing */
    if (ch->pend_len == 0 && !needs_sync && !remote) {
        /* A queue refused it (x-overflow reject-publish): basic.nack, as RabbitMQ. */
        if (rejected) confirm_nack(ch, seq);
        else confirm_ack(ch, seq, false);
        return;
    }
    /* Everything else waits its turn behind earlier unconfirmed ones. */
    pending_push(ch, (pend_t){.seq = seq, .remote = remote, .sync = needs_sync, .nack = rejected});
    if (needs_sync && !ch->sync_wanted) {
        amqp_server_t *s = ch->conn->srv;
        ch->sync_wanted = true;
        ch->refs++;
        ch->next_sync = s->sync_list;
        s->sync_list = ch;
    }
}

/* ---- publishing ---- */

static void send_return(chan_t *ch, msg_t *m, int code, const char *text)
{
    amqp_method_t r = {.id = AMQP_BASIC_RETURN};
    r.u.basic_return.reply_code = (uint16_t)code;
    r.u.basic_return.reply_text = AMQP_BYTES_CSTR(text);
    r.u.basic_return.exchange = (amqp_bytes_t){(const uint8_t *)m->exchange, m->exchange_len};
    r.u.basic_return.routing_key = (amqp_bytes_t){(const uint8_t *)m->rk, m->rk_len};
    send(ch, &r);
    write_content(ch, m);
}

/* Routes and enqueues a complete message; returns Q_PUB_* flags (store sync needed, rejected by
 * a full queue). Queues homed on other nodes get it forwarded (remote.h): with cb set, cb(arg,
 * tag, result) runs later once per such queue, and *n_remote counts them. A queue whose home is
 * down does not get it (as in RabbitMQ): if no queue took it, it is unroutable. */
static int deliver_message(chan_t *ch, msg_t *m, bool mandatory, rq_pub_cb cb, void *arg, uint64_t tag,
                           unsigned *n_remote)
{
    broker_t *b = ch->conn->srv->broker;
    vhost_t *vh = ch->conn->vh;
    if (m->exchange_len == 0 && m->rk_len > strlen(REPLY_TO_PREFIX) &&
        memcmp(m->rk, REPLY_TO_PREFIX, strlen(REPLY_TO_PREFIX)) == 0) {
        chan_t *to = dict_get(&ch->conn->srv->reply_to, m->rk, m->rk_len);
        b->stat_publish++, ch->st_publish++, vh->stat_publish++;
        if (to && to->conn && to->state == CH_OPEN) {
            amqp_method_t d = {.id = AMQP_BASIC_DELIVER};
            d.u.basic_deliver.consumer_tag = AMQP_BYTES_CSTR(to->reply_ctag);
            d.u.basic_deliver.delivery_tag = to->next_tag++;
            d.u.basic_deliver.exchange = AMQP_BYTES_EMPTY;
            d.u.basic_deliver.routing_key = (amqp_bytes_t){(const uint8_t *)m->rk, m->rk_len};
            send(to, &d);
            write_content(to, m);
            conn_flush(to->conn);
        } else if (mandatory) {
            send_return(ch, m, AMQP_NO_ROUTE, "NO_ROUTE");
        }
        return Q_PUB_OK;
    }
    exchange_t *x = br_exchange(vh, m->exchange, m->exchange_len);
    if (x && x->delayed) {
        /* x-delayed-message: held back, routed when due (no basic.return, as the plugin). */
        int64_t delay = br_delay_of(m);
        if (delay > 0) {
            b->stat_publish++, ch->st_publish++, vh->stat_publish++, x->stat_in++;
            return br_delay_publish(x, m, delay);
        }
    }
    ptrvec_t qs = {0};
    if (x) br_route(x, m, &qs);
    b->stat_publish++, ch->st_publish++, vh->stat_publish++;
    int result = Q_PUB_OK;
    msg_t *stripped = br_strip_bcc(m);
    if (stripped) m = stripped; /* BCC routes but is never delivered */
    size_t taken = 0;
    for (size_t i = 0; i < qs.n; i++) {
        queue_t *q = qs.items[i];
        if (q->qq) {
            if (!qq_publish(q, m, ch->qq_chan, cb, arg, tag)) continue;
            if (cb) (*n_remote)++;
        } else if (!rq_remote(q)) {
            result |= q_publish(q, m);
        } else if (rq_publish(q, m, cb, arg, tag)) {
            if (cb) (*n_remote)++;
        } else {
            continue; /* its home node is down */
        }
        taken++;
        conn_throttle(ch->conn, q);
    }
    if (x) x->stat_in++, x->stat_out += taken > 0;
    if (taken == 0) {
        b->stat_unroutable++;
        b->stat_returned += mandatory;
        if (mandatory) send_return(ch, m, AMQP_NO_ROUTE, "NO_ROUTE");
    }
    ptrvec_free(&qs);
    if (stripped) msg_unref(stripped);
    return result;
}

static void publish_complete(chan_t *ch)
{
    msg_t *m = ch->pub_msg;
    ch->pub_msg = NULL;
    ch->pub = PUB_IDLE;
    broker_t *b = ch->conn->srv->broker;
    m->id = b->next_msg_id++;
    if (ch->tx) {
        if (ch->txp_len == ch->txp_cap) {
            ch->txp_cap = ch->txp_cap ? ch->txp_cap * 2 : 16;
            ch->txp = realloc(ch->txp, ch->txp_cap * sizeof *ch->txp);
            if (!ch->txp) abort();
        }
        ch->txp[ch->txp_len++] = (tx_publish_t){.m = m, .mandatory = ch->pub_mandatory};
        return;
    }
    unsigned remote = 0;
    int result = deliver_message(ch, m, ch->pub_mandatory, ch->confirm ? remote_confirmed : NULL, ch,
                                 ch->pub_seq + 1, &remote);
    ch->refs += remote; /* one per remote_confirmed callback to come */
    confirm_publish(ch, result, remote);
    msg_unref(m);
}

static void handle_publish(chan_t *ch, const amqp_method_t *m)
{
    amqp_bytes_t xn = m->u.basic_publish.exchange;
    br_err_t err;
    exchange_t *x;
    if (m->u.basic_publish.immediate) {
        /* As RabbitMQ since 3.0: the immediate flag is not supported. */
        conn_exception(ch->conn, AMQP_NOT_IMPLEMENTED, m->id, "immediate=true");
        return;
    }
    amqp_bytes_t key = m->u.basic_publish.routing_key;
    if (br_publish_target(ch->conn->vh, ch->conn->user, (const char *)xn.ptr, xn.len, &x, &err) ||
        (x && tperm_check_write(ch->conn->user, ch->conn->vh, x, (const char *)key.ptr, key.len, &err))) {
        fail(ch, m->id, &err);
        return;
    }
    conn_alarm_check_publisher(ch->conn);
    ch->pub = PUB_HEADER;
    ch->pub_x = x;
    ch->pub_mandatory = m->u.basic_publish.mandatory;
    /* Keep the names for the header frame, where the message is allocated. */
    amqp_bytes_t rk = m->u.basic_publish.routing_key;
    ch->pub_exchange_len = (uint8_t)(xn.len > 255 ? 255 : xn.len);
    memcpy(ch->pub_exchange, xn.ptr, ch->pub_exchange_len);
    ch->pub_rk_len = (uint8_t)(rk.len > 255 ? 255 : rk.len);
    memcpy(ch->pub_rk, rk.ptr, ch->pub_rk_len);
}

/* RabbitMQ's names of field-table types, as its error texts print them. */
static const char *table_type_name(char t)
{
    switch (t) {
    case 't': return "bool";
    case 'b': case 's': case 'I': case 'l': case 'L': return "signedint";
    case 'B': case 'u': case 'i': return "unsignedint";
    case 'f': return "float";
    case 'd': return "double";
    case 'D': return "decimal";
    case 'S': return "longstr";
    case 'x': return "binary";
    case 'A': return "array";
    case 'T': return "timestamp";
    case 'F': return "table";
    default: return "void";
    }
}

/* CC and BCC must be arrays (sender-selected distribution); RabbitMQ refuses anything else. */
static bool cc_headers_valid(const amqp_props_t *props, char *why, size_t cap)
{
    if (!(props->flags & AMQP_P_HEADERS)) return true;
    amqp_bytes_t h = props->headers;
    if (!memmem(h.ptr, h.len, "\x02" "CC", 3) && !memmem(h.ptr, h.len, "\x03" "BCC", 4)) return true;
    amqp_table_t t;
    if (amqp_table_parse(h, &t) != 0) return true;
    bool ok = true;
    static const char *const names[] = {"CC", "BCC"};
    for (int i = 0; i < 2 && ok; i++) {
        const amqp_value_t *v = amqp_table_get(&t, names[i]);
        if (v && v->type != 'A') {
            snprintf(why, cap, "{unacceptable_type_in_header,\"%s\",%s}", names[i], table_type_name(v->type));
            ok = false;
        }
    }
    amqp_table_free(&t);
    return ok;
}

/* The expiration property as RabbitMQ parses it (Erlang string:to_integer): optional sign,
 * digits, nothing after; 0 to ten years. why gets RabbitMQ's reason text. */
static bool expiration_valid(amqp_bytes_t e, char *why, size_t cap)
{
    size_t i = 0;
    bool neg = false;
    if (i < e.len && (e.ptr[i] == '+' || e.ptr[i] == '-')) neg = e.ptr[i++] == '-';
    size_t digits = i;
    long long v = 0;
    bool huge = false;
    while (i < e.len && e.ptr[i] >= '0' && e.ptr[i] <= '9') {
        if (v > 100000000000000000LL) huge = true;
        else v = v * 10 + (e.ptr[i] - '0');
        i++;
    }
    if (i == digits) return snprintf(why, cap, "no_integer"), false;
    if (i < e.len) return snprintf(why, cap, "{leftover_string,\"%.*s\"}", (int)(e.len - i), (const char *)e.ptr + i), false;
    if (neg && v > 0) return snprintf(why, cap, "{value_negative,-%lld}", v), false;
    if (huge || v > 315360000000LL) return snprintf(why, cap, "{value_too_large,%.*s}", (int)(e.len - digits), (const char *)e.ptr + digits), false;
    return true;
}

void chan_handle_header(chan_t *ch, const amqp_frame_t *f)
{
    if (ch->state == CH_CLOSING) return;
    if (ch->pub != PUB_HEADER) {
        conn_exception(ch->conn, AMQP_UNEXPECTED_FRAME, 0,
                       "expected method frame, got non method frame instead");
        return;
    }
    uint16_t class_id;
    uint64_t body_size;
    amqp_bytes_t raw;
    amqp_props_t props;
    int rc = amqp_content_header_decode(f->payload, f->size, &class_id, &body_size, &raw, &props);
    if (rc) {
        conn_exception(ch->conn, -rc, AMQP_BASIC_PUBLISH, "malformed content header");
        return;
    }
    if (class_id != AMQP_CLASS_BASIC) {
        conn_exception(ch->conn, AMQP_UNEXPECTED_FRAME, AMQP_BASIC_PUBLISH,
                       "expected content header for class 60, got one for class %u instead", class_id);
        return;
    }
    uint64_t max = ch->conn->srv->cfg->max_message_size;
    if (max && body_size > max) {
        chan_exception(ch, AMQP_PRECONDITION_FAILED, AMQP_BASIC_PUBLISH,
                       "message size %llu is larger than configured max size %llu", (unsigned long long)body_size,
                       (unsigned long long)max);
        return;
    }
    if ((props.flags & AMQP_P_USER_ID) && !amqp_bytes_eq_cstr(props.user_id, ch->conn->user->name)) {
        chan_exception(ch, AMQP_PRECONDITION_FAILED, AMQP_BASIC_PUBLISH,
                       "user_id property set to '%.*s' but authenticated user was '%s'", BYTES_FMT(props.user_id),
                       ch->conn->user->name);
        return;
    }
    char cc_why[128];
    if (!cc_headers_valid(&props, cc_why, sizeof cc_why)) {
        chan_exception(ch, AMQP_PRECONDITION_FAILED, AMQP_BASIC_PUBLISH, "invalid message: %s", cc_why);
        return;
    }
    if (props.flags & AMQP_P_EXPIRATION) {
        char why[128];
        if (!expiration_valid(props.expiration, why, sizeof why)) {
            chan_exception(ch, AMQP_PRECONDITION_FAILED, AMQP_BASIC_PUBLISH, "invalid expiration '%.*s': %s",
                           BYTES_FMT(props.expiration), why);
            return;
        }
    }
    amqp_buf_t rewritten = {0};
    if ((props.flags & AMQP_P_REPLY_TO) && amqp_bytes_eq_cstr(props.reply_to, REPLY_TO)) {
        if (!ch->reply_key) {
            chan_exception(ch, AMQP_PRECONDITION_FAILED, AMQP_BASIC_PUBLISH, "fast reply consumer does not exist");
            return;
        }
        props.reply_to = AMQP_BYTES_CSTR(ch->reply_key);
        amqp_props_encode(&rewritten, &props);
        raw = (amqp_bytes_t){rewritten.data, rewritten.len};
    }
    msg_t *m = msg_new(ch->pub_exchange, ch->pub_exchange_len, ch->pub_rk, ch->pub_rk_len, raw.ptr, raw.len,
                       body_size);
    amqp_buf_free(&rewritten);
    m->persistent = (props.flags & AMQP_P_DELIVERY_MODE) && props.delivery_mode == 2;
    m->priority = (props.flags & AMQP_P_PRIORITY) ? props.priority : 0;
    ch->pub_msg = m;
    ch->pub_got = 0;
    ch->pub = PUB_BODY;
    if (body_size == 0) publish_complete(ch);
}

void chan_handle_body(chan_t *ch, const amqp_frame_t *f)
{
    if (ch->state == CH_CLOSING) return;
    if (ch->pub != PUB_BODY) {
        conn_exception(ch->conn, AMQP_UNEXPECTED_FRAME, 0,
                       ch->pub == PUB_HEADER ? "expected content header for class 60, got non content header frame "
                                               "instead"
                                             : "expected method frame, got non method frame instead");
        return;
    }
    msg_t *m = ch->pub_msg;
    if (f->size > m->body_len - ch->pub_got) {
        conn_exception(ch->conn, AMQP_FRAME_ERROR, AMQP_BASIC_PUBLISH, "content body exceeds declared body size");
        return;
    }
    memcpy(m->body + ch->pub_got, f->payload, f->size);
    ch->pub_got += f->size;
    if (ch->pub_got == m->body_len) publish_complete(ch);
}

/* ---- exchange and queue methods ---- */

static amqp_bytes_t queue_name_or_last(chan_t *ch, amqp_bytes_t name)
{
    if (name.len == 0 && ch->last_queue) return AMQP_BYTES_CSTR(ch->last_queue);
    return name;
}

/* ---- clustered metadata changes (broker/meta.h) ----
 *
 * In a cluster, a method that changes metadata is first validated here by a dry run of the
 * same br_* call (same errors as unclustered). If it would change nothing (a redeclare, a
 * binding that exists) it is answered from local state at once; otherwise it is submitted to
 * the metadata group and the connection's frames wait (conn_pause) until the change has been
 * applied on this node, so the reply and every later method see it. */

struct meta_req {
    chan_t *ch;
    uint32_t method;
    bool nowait;
    uint32_t msg_count;   /* queue.delete: counted here before the change */
    char *queue;          /* queue.declare: the name (server-named ones are chosen here) */
};

static bool replicated(const chan_t *ch) { return meta_clustered(ch->conn->srv->broker); }
static void declare_ok_remote(chan_t *ch, queue_t *q, bool nowait);

static void meta_reply(chan_t *ch, const struct meta_req *r)
{
    if (r->method == AMQP_QUEUE_DECLARE) {
        queue_t *q = br_queue(ch->conn->vh, r->queue, strlen(r->queue));
        free(ch->last_queue);
        ch->last_queue = strdup(r->queue);
        if (q && rq_remote(q)) { /* declared on another node first */
            declare_ok_remote(ch, q, r->nowait);
            return;
        }
        if (r->nowait) return;
        amqp_method_t ok = {.id = AMQP_QUEUE_DECLARE_OK};
        ok.u.queue_declare_ok.queue = AMQP_BYTES_CSTR(r->queue);
        ok.u.queue_declare_ok.message_count = q ? q_message_count(q) : 0;
        ok.u.queue_declare_ok.consumer_count = q ? q_consumer_count(q) : 0;
        send(ch, &ok);
        return;
    }
    if (r->nowait) return;
    if (r->method == AMQP_QUEUE_DELETE) {
        amqp_method_t ok = {.id = AMQP_QUEUE_DELETE_OK};
        ok.u.queue_delete_ok.message_count = r->msg_count;
        send(ch, &ok);
        return;
    }
    switch (r->method) {
    case AMQP_EXCHANGE_DECLARE: send_simple(ch, AMQP_EXCHANGE_DECLARE_OK); break;
    case AMQP_EXCHANGE_DELETE: send_simple(ch, AMQP_EXCHANGE_DELETE_OK); break;
    case AMQP_EXCHANGE_BIND: send_simple(ch, AMQP_EXCHANGE_BIND_OK); break;
    case AMQP_EXCHANGE_UNBIND: send_simple(ch, AMQP_EXCHANGE_UNBIND_OK); break;
    case AMQP_QUEUE_BIND: send_simple(ch, AMQP_QUEUE_BIND_OK); break;
    case AMQP_QUEUE_UNBIND: send_simple(ch, AMQP_QUEUE_UNBIND_OK); break;
    default: break;
    }
}

static void meta_done(void *arg, const br_err_t *err)
{
    struct meta_req *r = arg;
    chan_t *ch = r->ch;
    if (ch->conn && ch->state == CH_OPEN) {
        if (err) fail(ch, r->method, err); /* a hard error (541) closes the connection */
        else meta_reply(ch, r);
        if (ch->conn) conn_flush(ch->conn);
    }
    if (ch->conn) conn_resume(ch->conn);
    free(r->queue);
    free(r);
    chan_unref(ch);
}

static void meta_begin(chan_t *ch, const struct meta_cmd *cmd, uint32_t method, bool nowait, uint32_t msg_count,
                       const char *queue, size_t qlen)
{
    struct meta_req *r = calloc(1, sizeof *r);
    if (!r) abort();
    r->ch = ch;
    r->method = method;
    r->nowait = nowait;
    r->msg_count = msg_count;
    if (queue) {
        r->queue = strndup(queue, qlen);
        if (!r->queue) abort();
    }
    ch->refs++;
    conn_pause(ch->conn);
    meta_submit(ch->conn->srv->broker, cmd, meta_done, r);
}

static struct meta_cmd meta_cmd_for(chan_t *ch, uint8_t op)
{
    struct meta_cmd c = {.op = op, .conn = ch->conn->id, .vhost = AMQP_BYTES_CSTR(ch->conn->vh->name)};
    return c;
}


/* ---- queues homed on other nodes (broker/remote.h) ----
 *
 * Clustered, a queue whose home is another node answers consume, get, purge, the counts of
 * declare-ok and the if-unused / if-empty checks of delete from its home. The connection's
 * frames wait (conn_pause) while the home answers, so replies keep their order and the methods
 * after see the outcome. A queue whose home node is down fails them with 404, as in RabbitMQ. */

struct remote_req {
    chan_t *ch;
    queue_t *q; /* referenced */
    uint32_t method;
    bool nowait;
    bool flag, flag2; /* get: no_ack; delete: if_unused, if_empty */
    consumer_t *c;    /* consume: the consumer being registered */
    char *tag;        /* cancel: the consumer tag for cancel-ok */
};

static struct remote_req *remote_begin(chan_t *ch, queue_t *q, uint32_t method, bool nowait)
{
    struct remote_req *r = calloc(1, sizeof *r);
    if (!r) abort();
    r->ch = ch;
    r->q = q;
    r->method = method;
    r->nowait = nowait;
    q_ref(q);
    ch->refs++;
    conn_pause(ch->conn);
    return r;
}

static bool remote_live(const struct remote_req *r) { return r->ch->conn && r->ch->state == CH_OPEN; }

static void remote_finish(struct remote_req *r)
{
    chan_t *ch = r->ch;
    if (ch->conn) {
        conn_flush(ch->conn);
        conn_resume(ch->conn);
    }
    q_unref(r->q);
    free(r->tag);
    free(r);
    chan_unref(ch);
}

/* Raises the channel error and returns true when q's home node is down. */
static bool remote_unavailable(chan_t *ch, queue_t *q, uint32_t method)
{
    if (rq_available(q)) return false;
    br_err_t err;
    rq_unavailable(q, &err);
    fail(ch, method, &err);
    return true;
}

static void remote_declare_counted(void *arg, const br_err_t *err, uint32_t messages, uint32_t consumers)
{
    struct remote_req *r = arg;
    if (remote_live(r)) {
        if (err) {
            fail(r->ch, r->method, err);
        } else {
            amqp_method_t ok = {.id = AMQP_QUEUE_DECLARE_OK};
            ok.u.queue_declare_ok.queue = (amqp_bytes_t){(const uint8_t *)r->q->name, r->q->name_len};
            ok.u.queue_declare_ok.message_count = messages;
            ok.u.queue_declare_ok.consumer_count = consumers;
            send(r->ch, &ok);
        }
    }
    remote_finish(r);
}

/* queue.declare(-ok) of a queue homed elsewhere: the counts come from its home. */
static void declare_ok_remote(chan_t *ch, queue_t *q, bool nowait)
{
    if (remote_unavailable(ch, q, AMQP_QUEUE_DECLARE) || nowait) return;
    rq_stat(q, remote_declare_counted, remote_begin(ch, q, AMQP_QUEUE_DECLARE, false));
}

static void remote_purged(void *arg, const br_err_t *err, uint32_t messages, uint32_t consumers)
{
    (void)consumers;
    struct remote_req *r = arg;
    if (remote_live(r)) {
        if (err) {
            fail(r->ch, r->method, err);
        } else if (!r->nowait) {
            amqp_method_t ok = {.id = AMQP_QUEUE_PURGE_OK};
            ok.u.queue_purge_ok.message_count = messages;
            send(r->ch, &ok);
        }
    }
    remote_finish(r);
}

static void remote_delete_checked(void *arg, const br_err_t *err, uint32_t messages, uint32_t consumers)
{
    struct remote_req *r = arg;
    chan_t *ch = r->ch;
    queue_t *q = r->q;
    br_err_t e;
    if (!remote_live(r)) {
    } else if (err) {
        fail(ch, r->method, err);
    } else if (r->flag && consumers) {
        br_fail(&e, BR_PRECONDITION_FAILED, "queue '%s' in vhost '%s' in use", q->name, q->vh->name);
        fail(ch, r->method, &e);
    } else if (r->flag2 && messages) {
        br_fail(&e, BR_PRECONDITION_FAILED, "queue '%s' in vhost '%s' not empty", q->name, q->vh->name);
        fail(ch, r->method, &e);
    } else {
        struct meta_cmd c = meta_cmd_for(ch, META_Q_DELETE);
        c.name = (amqp_bytes_t){(const uint8_t *)q->name, q->name_len};
        meta_begin(ch, &c, r->method, r->nowait, messages, NULL, 0);
    }
    remote_finish(r);
}

/* queue.delete of a queue homed elsewhere: if-unused / if-empty are checked at its home before
 * the replicated delete is submitted. */
static void delete_remote(chan_t *ch, const amqp_method_t *m, queue_t *q)
{
    if (remote_unavailable(ch, q, m->id)) return;
    struct remote_req *r = remote_begin(ch, q, m->id, m->u.queue_delete.nowait);
    r->flag = m->u.queue_delete.if_unused;
    r->flag2 = m->u.queue_delete.if_empty;
    rq_stat(q, remote_delete_checked, r);
}

static void handle_exchange_declare(chan_t *ch, const amqp_method_t *m)
{
    const __typeof__(m->u.exchange_declare) *a = &m->u.exchange_declare;
    br_err_t err;
    broker_t *b = ch->conn->srv->broker;
    bool clustered = replicated(ch) && !a->passive;
    if (clustered) meta_dry_begin(b);
    int rc = br_exchange_declare(ch->conn->vh, ch->conn->user, (const char *)a->exchange.ptr, a->exchange.len,
                                 (const char *)a->type.ptr, a->type.len, a->passive, a->durable, a->auto_delete,
                                 a->internal, a->arguments, &err);
    if (clustered && meta_dry_end(b) && !rc) {
        struct meta_cmd c = meta_cmd_for(ch, META_X_DECLARE);
        c.flags = (a->durable ? META_F_DURABLE : 0) | (a->auto_delete ? META_F_AUTO_DELETE : 0) |
                  (a->internal ? META_F_INTERNAL : 0);
        c.name = a->exchange, c.name2 = a->type, c.args = a->arguments;
        return meta_begin(ch, &c, m->id, a->nowait, 0, NULL, 0);
    }
    if (rc) return fail(ch, m->id, &err);
    if (!a->nowait) send_simple(ch, AMQP_EXCHANGE_DECLARE_OK);
}

static void handle_exchange_delete(chan_t *ch, const amqp_method_t *m)
{
    br_err_t err;
    amqp_bytes_t n = m->u.exchange_delete.exchange;
    broker_t *b = ch->conn->srv->broker;
    bool clustered = replicated(ch);
    if (clustered) meta_dry_begin(b);
    int rc = br_exchange_delete(ch->conn->vh, ch->conn->user, (const char *)n.ptr, n.len,
                                m->u.exchange_delete.if_unused, &err);
    if (clustered && meta_dry_end(b) && !rc) {
        struct meta_cmd c = meta_cmd_for(ch, META_X_DELETE);
        c.flags = m->u.exchange_delete.if_unused ? META_F_IF_UNUSED : 0;
        c.name = n;
        return meta_begin(ch, &c, m->id, m->u.exchange_delete.nowait, 0, NULL, 0);
    }
    if (rc) return fail(ch, m->id, &err);
    if (!m->u.exchange_delete.nowait) send_simple(ch, AMQP_EXCHANGE_DELETE_OK);
}

/* A binding's key against the user's topic read pattern when the source is a topic exchange
 * (RabbitMQ's topic authorisation of queue.bind / exchange.bind and their unbinds). */
static int topic_bind_check(chan_t *ch, amqp_bytes_t src, amqp_bytes_t key, br_err_t *err)
{
    exchange_t *x = br_exchange(ch->conn->vh, (const char *)src.ptr, src.len);
    return x ? tperm_check_read(ch->conn->user, ch->conn->vh, x, (const char *)key.ptr, key.len, err) : 0;
}

static void handle_exchange_bind(chan_t *ch, const amqp_method_t *m, bool bind)
{
    const __typeof__(m->u.exchange_bind) *a = &m->u.exchange_bind;
    br_err_t err;
    broker_t *b = ch->conn->srv->broker;
    if (topic_bind_check(ch, a->source, a->routing_key, &err)) return fail(ch, m->id, &err);
    bool clustered = replicated(ch);
    if (clustered) meta_dry_begin(b);
    int rc = (bind ? br_bind : br_unbind)(ch->conn->vh, ch->conn->user, ch->conn->id, false,
                                          (const char *)a->destination.ptr, a->destination.len,
                                          (const char *)a->source.ptr, a->source.len, (const char *)a->routing_key.ptr,
                                          a->routing_key.len, a->arguments, &err);
    if (clustered && meta_dry_end(b) && !rc) {
        struct meta_cmd c = meta_cmd_for(ch, bind ? META_BIND : META_UNBIND);
        c.name = a->destination, c.name2 = a->source, c.key = a->routing_key, c.args = a->arguments;
        return meta_begin(ch, &c, m->id, a->nowait, 0, NULL, 0);
    }
    if (rc) return fail(ch, m->id, &err);
    if (!a->nowait) send_simple(ch, bind ? AMQP_EXCHANGE_BIND_OK : AMQP_EXCHANGE_UNBIND_OK);
}

static void remember_queue(chan_t *ch, const queue_t *q)
{
    free(ch->last_queue);
    ch->last_queue = strdup(q->name);
}

static void handle_queue_declare(chan_t *ch, const amqp_method_t *m)
{
    const __typeof__(m->u.queue_declare) *a = &m->u.queue_declare;
    br_err_t err;
    queue_t *q;
    amqp_bytes_t name = a->passive ? queue_name_or_last(ch, a->queue) : a->queue;
    broker_t *b = ch->conn->srv->broker;
    bool clustered = replicated(ch) && !a->passive;
    char gen[48];
    if (clustered && name.len == 0) { /* the name must be the same on every node: choose it here */
        br_server_queue_name(gen);
        name = AMQP_BYTES_CSTR(gen);
    }
    if (clustered) meta_dry_begin(b);
    /* (the dry run of a server-named declare gets the empty name: the reserved amq.* prefix is
     * only refused in names clients choose) */
    amqp_bytes_t checked = clustered && a->queue.len == 0 ? a->queue : name;
    int rc = br_queue_declare(ch->conn->vh, ch->conn->user, ch->conn->id, (const char *)checked.ptr, checked.len,
                              a->passive, a->durable, a->exclusive, a->auto_delete, a->arguments, &q, &err);
    if (clustered && meta_dry_end(b) && !rc) {
        struct meta_cmd c = meta_cmd_for(ch, META_Q_DECLARE);
        c.flags = (a->durable ? META_F_DURABLE : 0) | (a->auto_delete ? META_F_AUTO_DELETE : 0) |
                  (a->exclusive ? META_F_EXCLUSIVE : 0);
        c.home = b->self_node;
        /* The command carries the type the vhost's default gives (every node would derive the
         * same), so a quorum queue gets its members chosen here like an explicit one. */
        amqp_buf_t typed = {0};
        c.name = name;
        c.args = br_queue_args_with_default_type(ch->conn->vh, a->durable, a->exclusive, a->auto_delete, a->arguments,
                                                 &typed);
        amqp_table_t t = {0};
        amqp_buf_t members = {0};
        if (c.args.len && amqp_table_parse(c.args, &t) == 0 && qq_args_quorum(&t)) {
            qq_choose_members(b, &t, &members);
            c.key = (amqp_bytes_t){members.data, members.len};
        }
        amqp_table_free(&t);
        meta_begin(ch, &c, m->id, a->nowait, 0, (const char *)name.ptr, name.len);
        amqp_buf_free(&members);
        amqp_buf_free(&typed);
        return;
    }
    if (rc) return fail(ch, m->id, &err);
    remember_queue(ch, q);
    if (rq_remote(q)) {
        declare_ok_remote(ch, q, a->nowait);
        return;
    }
    if (a->nowait) return;
    amqp_method_t ok = {.id = AMQP_QUEUE_DECLARE_OK};
    ok.u.queue_declare_ok.queue = (amqp_bytes_t){(const uint8_t *)q->name, q->name_len};
    ok.u.queue_declare_ok.message_count = q_message_count(q);
    ok.u.queue_declare_ok.consumer_count = q_consumer_count(q);
    send(ch, &ok);
}

static void handle_queue_bind(chan_t *ch, const amqp_method_t *m, bool bind)
{
    amqp_bytes_t qn, xn, rk, args;
    bool nowait = false;
    if (bind) {
        qn = m->u.queue_bind.queue, xn = m->u.queue_bind.exchange, rk = m->u.queue_bind.routing_key;
        args = m->u.queue_bind.arguments, nowait = m->u.queue_bind.nowait;
    } else {
        qn = m->u.queue_unbind.queue, xn = m->u.queue_unbind.exchange, rk = m->u.queue_unbind.routing_key;
        args = m->u.queue_unbind.arguments;
    }
    qn = queue_name_or_last(ch, qn);
    /* RabbitMQ: an empty routing key with an empty queue name means the last queue's name. */
    if (bind && rk.len == 0 && m->u.queue_bind.queue.len == 0) rk = qn;
    br_err_t err;
    broker_t *b = ch->conn->srv->broker;
    if (topic_bind_check(ch, xn, rk, &err)) return fail(ch, m->id, &err);
    bool clustered = replicated(ch);
    if (clustered) meta_dry_begin(b);
    int rc = (bind ? br_bind : br_unbind)(ch->conn->vh, ch->conn->user, ch->conn->id, true, (const char *)qn.ptr,
                                          qn.len, (const char *)xn.ptr, xn.len, (const char *)rk.ptr, rk.len, args,
                                          &err);
    if (clustered && meta_dry_end(b) && !rc) {
        struct meta_cmd c = meta_cmd_for(ch, bind ? META_BIND : META_UNBIND);
        c.flags = META_F_DEST_QUEUE;
        c.name = qn, c.name2 = xn, c.key = rk, c.args = args;
        return meta_begin(ch, &c, m->id, nowait, 0, NULL, 0);
    }
    if (rc) return fail(ch, m->id, &err);
    if (!nowait) send_simple(ch, bind ? AMQP_QUEUE_BIND_OK : AMQP_QUEUE_UNBIND_OK);
}

static void handle_queue_purge(chan_t *ch, const amqp_method_t *m)
{
    amqp_bytes_t qn = queue_name_or_last(ch, m->u.queue_purge.queue);
    br_err_t err;
    uint32_t n;
    queue_t *q = br_queue(ch->conn->vh, (const char *)qn.ptr, qn.len);
    if (ch->conn->srv->broker->node_call || (q && q->qq)) { /* the queue may live elsewhere */
        if (br_queue_for_read(ch->conn->vh, ch->conn->user, ch->conn->id, (const char *)qn.ptr, qn.len, &q, &err))
            return fail(ch, m->id, &err);
        if (q->qq) {
            qq_purge(q, remote_purged, remote_begin(ch, q, m->id, m->u.queue_purge.nowait));
            return;
        }
        if (rq_remote(q)) {
            if (!remote_unavailable(ch, q, m->id))
                rq_purge(q, remote_purged, remote_begin(ch, q, m->id, m->u.queue_purge.nowait));
            return;
        }
    }
    if (br_queue_purge(ch->conn->vh, ch->conn->user, ch->conn->id, (const char *)qn.ptr, qn.len, &n, &err))
        return fail(ch, m->id, &err);
    if (m->u.queue_purge.nowait) return;
    amqp_method_t ok = {.id = AMQP_QUEUE_PURGE_OK};
    ok.u.queue_purge_ok.message_count = n;
    send(ch, &ok);
}

static void handle_queue_delete(chan_t *ch, const amqp_method_t *m)
{
    amqp_bytes_t qn = queue_name_or_last(ch, m->u.queue_delete.queue);
    br_err_t err;
    uint32_t n;
    broker_t *b = ch->conn->srv->broker;
    bool clustered = replicated(ch);
    if (clustered) meta_dry_begin(b);
    int rc = br_queue_delete(ch->conn->vh, ch->conn->user, ch->conn->id, (const char *)qn.ptr, qn.len,
                             m->u.queue_delete.if_unused, m->u.queue_delete.if_empty, &n, &err);
    if (clustered && meta_dry_end(b) && !rc) {
        queue_t *q = br_queue(ch->conn->vh, (const char *)qn.ptr, qn.len);
        if (q && rq_remote(q)) {
            delete_remote(ch, m, q);
            return;
        }
        struct meta_cmd c = meta_cmd_for(ch, META_Q_DELETE);
        c.name = qn;
        return meta_begin(ch, &c, m->id, m->u.queue_delete.nowait, n, NULL, 0);
    }
    if (rc) return fail(ch, m->id, &err);
    if (m->u.queue_delete.nowait) return;
    amqp_method_t ok = {.id = AMQP_QUEUE_DELETE_OK};
    ok.u.queue_delete_ok.message_count = n;
    send(ch, &ok);
}

/* ---- basic methods ---- */

static consumer_t *find_consumer(chan_t *ch, amqp_bytes_t tag)
{
    for (size_t i = 0; i < ch->consumers.n; i++) {
        consumer_t *c = ch->consumers.items[i];
        if (c->tag_len == tag.len && memcmp(c->tag, tag.ptr, tag.len) == 0) return c;
    }
    return NULL;
}

static bool consumer_priority(amqp_bytes_t args, int32_t *prio, char *bad, size_t badlen)
{
    *prio = 0;
    if (!args.len) return true;
    amqp_table_t t;
    if (amqp_table_parse(args, &t) != 0) return true;
    const amqp_value_t *v = amqp_table_get(&t, "x-priority");
    bool ok = true;
    if (v) {
        int64_t p;
        if (amqp_value_int(v, &p))
            *prio = (int32_t)p;
        else {
            ok = false;
            snprintf(bad, badlen, "\"expected integer, got %s\"", table_type_name(v->type));
        }
    }
    amqp_table_free(&t);
    return ok;
}

static void gen_tag(char *out, size_t cap, const char *prefix)
{
    uint8_t rnd[16];
    randombytes_buf(rnd, sizeof rnd);
    char b64[32];
    sodium_bin2base64(b64, sizeof b64, rnd, sizeof rnd, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    snprintf(out, cap, "%s%s", prefix, b64);
}

/* Direct reply-to: a pseudo-queue consumed in no-ack mode; replies published to the name handed
 * out in reply_to go straight to this channel, without any queue. */
static void consume_reply_to(chan_t *ch, const amqp_method_t *m)
{
    const __typeof__(m->u.basic_consume) *a = &m->u.basic_consume;
    if (!a->no_ack) {
        chan_exception(ch, AMQP_PRECONDITION_FAILED, m->id, "reply consumer cannot acknowledge");
        return;
    }
    if (ch->reply_key) {
        chan_exception(ch, AMQP_PRECONDITION_FAILED, m->id, "reply consumer already set");
        return;
    }
    char tag[300], key[128];
    if (a->consumer_tag.len)
        snprintf(tag, sizeof tag, "%.*s", BYTES_FMT(a->consumer_tag));
    else
        gen_tag(tag, sizeof tag, "amq.ctag-");
    gen_tag(key, sizeof key, REPLY_TO_PREFIX);
    ch->reply_key = strdup(key);
    ch->reply_ctag = strdup(tag);
    dict_set(&ch->conn->srv->reply_to, key, strlen(key), ch);
    if (!a->nowait) {
        amqp_method_t ok = {.id = AMQP_BASIC_CONSUME_OK};
        ok.u.basic_consume_ok.consumer_tag = AMQP_BYTES_CSTR(tag);
        send(ch, &ok);
    }
}

/* The home of the queue answered a consume from this channel. */
static void remote_consumed(void *arg, const br_err_t *err)
{
    struct remote_req *r = arg;
    chan_t *ch = r->ch;
    consumer_t *c = r->c;
    if (!err && remote_live(r)) {
        ptrvec_push(&ch->consumers, c);
        if (!r->nowait) {
            amqp_method_t ok = {.id = AMQP_BASIC_CONSUME_OK};
            ok.u.basic_consume_ok.consumer_tag = (amqp_bytes_t){(const uint8_t *)c->tag, c->tag_len};
            send(ch, &ok);
        }
    } else {
        if (!err) q_consumer_remove(c->q, c); /* registered, but the channel is gone */
        else if (remote_live(r)) fail(ch, r->method, err);
        free(c->tag);
        free(c);
    }
    remote_finish(r);
}

static void handle_consume(chan_t *ch, const amqp_method_t *m)
{
    const __typeof__(m->u.basic_consume) *a = &m->u.basic_consume;
    if (amqp_bytes_eq_cstr(a->queue, REPLY_TO)) return consume_reply_to(ch, m);
    amqp_bytes_t qn = queue_name_or_last(ch, a->queue);
    br_err_t err;
    queue_t *q;
    if (br_queue_for_read(ch->conn->vh, ch->conn->user, ch->conn->id, (const char *)qn.ptr, qn.len, &q, &err))
        return fail(ch, m->id, &err);
    bool remote = rq_remote(q);
    if (remote && remote_unavailable(ch, q, m->id)) return;
    if (q->qq && ch->global_prefetch) {
        conn_exception(ch->conn, AMQP_NOT_IMPLEMENTED, m->id, "queue '%s' in vhost '%s' does not support global qos",
                       q->name, q->vh->name);
        return;
    }
    char gen[64];
    amqp_bytes_t tag = a->consumer_tag;
    if (tag.len == 0) {
        uint8_t rnd[16];
        randombytes_buf(rnd, sizeof rnd);
        char b64[32];
        sodium_bin2base64(b64, sizeof b64, rnd, sizeof rnd, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
        snprintf(gen, sizeof gen, "amq.ctag-%s", b64);
        tag = AMQP_BYTES_CSTR(gen);
    } else if (find_consumer(ch, tag)) {
        conn_exception(ch->conn, AMQP_NOT_ALLOWED, m->id, "attempt to reuse consumer tag '%.*s'", BYTES_FMT(tag));
        return;
    }
    bool exclusive_held = false; /* a remote queue's home checks this */
    for (size_t i = 0; i < q->consumers.n && !remote; i++)
        if (((consumer_t *)q->consumers.items[i])->exclusive) exclusive_held = true;
    size_t others = q->qq ? qq_consumer_count(q) : q->consumers.n;
    if (!remote && (exclusive_held || (a->exclusive && others))) {
        chan_exception(ch, AMQP_ACCESS_REFUSED, m->id, "queue '%s' in vhost '%s' in exclusive use", q->name,
                       q->vh->name);
        return;
    }
    int32_t prio;
    char bad[128];
    if (!consumer_priority(a->arguments, &prio, bad, sizeof bad)) {
        chan_exception(ch, AMQP_PRECONDITION_FAILED, m->id, "invalid arg 'x-priority' for queue '%s' in vhost '%s': %s",
                       q->name, q->vh->name, bad);
        return;
    }
    consumer_t *c = calloc(1, sizeof *c);
    if (!c) abort();
    c->tag = malloc(tag.len + 1);
    if (!c->tag) abort();
    memcpy(c->tag, tag.ptr, tag.len);
    c->tag[tag.len] = '\0';
    c->tag_len = tag.len;
    c->no_ack = a->no_ack;
    c->exclusive = a->exclusive;
    c->priority = prio;
    c->prefetch = ch->prefetch;
    c->ops = &chan_consumer_ops;
    c->owner = ch;
    if (remote || q->qq) {
        struct remote_req *r = remote_begin(ch, q, m->id, a->nowait);
        r->c = c;
        if (q->qq) qq_consume(q, c, ch->qq_chan, remote_consumed, r);
        else rq_consume(q, c, remote_consumed, r);
        return;
    }
    ptrvec_push(&ch->consumers, c);
    if (!a->nowait) {
        amqp_method_t ok = {.id = AMQP_BASIC_CONSUME_OK};
        ok.u.basic_consume_ok.consumer_tag = tag;
        send(ch, &ok);
    }
    /* consume-ok must precede the first delivery: dispatch runs later in the loop iteration. */
    q_consumer_add(q, c);
}

/* The home of a remote consumer's queue has processed the cancel (the stat call is ordered after
 * it): now cancel-ok, so that the consumer count any node reports no longer includes it, as in
 * RabbitMQ, where the queue has removed the consumer before cancel-ok is sent. */
static void remote_cancelled(void *arg, const br_err_t *err, uint32_t messages, uint32_t consumers)
{
    (void)err, (void)messages, (void)consumers; /* a cancel succeeds whatever the home says */
    struct remote_req *r = arg;
    if (remote_live(r) && !r->nowait) {
        amqp_method_t ok = {.id = AMQP_BASIC_CANCEL_OK};
        ok.u.basic_cancel_ok.consumer_tag = AMQP_BYTES_CSTR(r->tag);
        send(r->ch, &ok);
    }
    remote_finish(r);
}

static void handle_cancel(chan_t *ch, const amqp_method_t *m)
{
    amqp_bytes_t tag = m->u.basic_cancel.consumer_tag;
    if (ch->reply_ctag && amqp_bytes_eq_cstr(tag, ch->reply_ctag)) reply_to_stop(ch);
    consumer_t *c = find_consumer(ch, tag);
    if (c && c->q && rq_remote(c->q) && rq_available(c->q)) {
        queue_t *q = c->q;
        q_consumer_remove(q, c);
        consumer_free(ch, c);
        struct remote_req *r = remote_begin(ch, q, m->id, m->u.basic_cancel.nowait);
        r->tag = strndup((const char *)tag.ptr, tag.len);
        if (!r->tag) abort();
        rq_stat(q, remote_cancelled, r);
        return;
    }
    if (!m->u.basic_cancel.nowait) {
        amqp_method_t ok = {.id = AMQP_BASIC_CANCEL_OK};
        ok.u.basic_cancel_ok.consumer_tag = tag;
        send(ch, &ok);
    }
    if (!c) return;
    queue_t *q = c->q;
    if (q) q_consumer_remove(q, c);
    consumer_free(ch, c);
}

/* basic.get-ok for an entry taken from q (no_ack: settled now). */
static void get_ok_send(chan_t *ch, queue_t *q, const qentry_t *e, uint32_t message_count, bool no_ack)
{
    uint64_t tag = ch->next_tag++;
    amqp_method_t ok = {.id = AMQP_BASIC_GET_OK};
    ok.u.basic_get_ok.delivery_tag = tag;
    ok.u.basic_get_ok.redelivered = e->redelivered;
    ok.u.basic_get_ok.exchange = (amqp_bytes_t){(const uint8_t *)e->m->exchange, e->m->exchange_len};
    ok.u.basic_get_ok.routing_key = (amqp_bytes_t){(const uint8_t *)e->m->rk, e->m->rk_len};
    ok.u.basic_get_ok.message_count = message_count;
    send(ch, &ok);
    write_content(ch, e->m);
    q->vh->broker->stat_deliver++;
    if (no_ack) ch->st_get_no_ack++;
    else ch->st_get++;
    if (e->redelivered) ch->st_redeliver++;
    if (no_ack) {
        if (rq_remote(q) || q->qq) msg_unref(e->m); /* the home / the replicated state settled it */
        else q_ack(q, e);
        return;
    }
    delivery_t *d = dl_push(ch);
    d->tag = tag;
    d->q = q;
    q_ref(q);
    d->e = *e;
    ch->unacked++;
}

static void remote_got(void *arg, const br_err_t *err, const qentry_t *e, uint32_t message_count)
{
    struct remote_req *r = arg;
    bool live = remote_live(r);
    if (err) {
        if (live) fail(r->ch, r->method, err);
    } else if (!e) {
        if (live) send_simple(r->ch, AMQP_BASIC_GET_EMPTY);
    } else if (live) {
        get_ok_send(r->ch, r->q, e, message_count, r->flag);
    } else if (r->flag) {
        msg_unref(e->m);
    } else {
        q_requeue(r->q, e); /* the channel went away meanwhile */
    }
    remote_finish(r);
}

static void handle_get(chan_t *ch, const amqp_method_t *m)
{
    amqp_bytes_t qn = queue_name_or_last(ch, m->u.basic_get.queue);
    br_err_t err;
    queue_t *q;
    if (br_queue_for_read(ch->conn->vh, ch->conn->user, ch->conn->id, (const char *)qn.ptr, qn.len, &q, &err))
        return fail(ch, m->id, &err);
    if (q->qq) {
        if (q->sac) {
            chan_exception(ch, AMQP_RESOURCE_LOCKED, m->id,
                           "cannot obtain access to locked queue '%s' in vhost '%s'. basic.get operations are not "
                           "supported by quorum queues with single active consumer",
                           q->name, q->vh->name);
            return;
        }
        struct remote_req *r = remote_begin(ch, q, m->id, false);
        r->flag = m->u.basic_get.no_ack;
        qq_get(q, r->flag, ch->qq_chan, remote_got, r);
        return;
    }
    if (rq_remote(q)) {
        if (remote_unavailable(ch, q, m->id)) return;
        struct remote_req *r = remote_begin(ch, q, m->id, false);
        r->flag = m->u.basic_get.no_ack;
        rq_get(q, r->flag, remote_got, r);
        return;
    }
    qentry_t e;
    if (!q_get(q, &e)) {
        send_simple(ch, AMQP_BASIC_GET_EMPTY);
        return;
    }
    get_ok_send(ch, q, &e, q_message_count(q), m->u.basic_get.no_ack);
}

/* Applies ack/nack/reject; returns false after raising the channel error. */
static bool apply_ack(chan_t *ch, uint32_t method_id, uint64_t tag, bool multiple, enum settle_how how)
{
    if (multiple && tag == 0) {
        settle_all(ch, how);
        return true;
    }
    long idx = dl_find(ch, tag);
    if (idx < 0) {
        chan_exception(ch, AMQP_PRECONDITION_FAILED, method_id, "unknown delivery tag %llu", (unsigned long long)tag);
        return false;
    }
    if (multiple) {
        for (long i = 0; i <= idx; i++) {
            delivery_t *d = dl_at(ch, (size_t)i);
            if (!d->settled) settle(ch, d, how);
        }
    } else {
        settle(ch, dl_at(ch, (size_t)idx), how);
    }
    dl_compact(ch);
    return true;
}

static void tx_record_ack(chan_t *ch, uint32_t method_id, uint64_t tag, bool multiple, bool requeue, bool is_ack)
{
    if (!(multiple && tag == 0) && dl_find(ch, tag) < 0) {
        chan_exception(ch, AMQP_PRECONDITION_FAILED, method_id, "unknown delivery tag %llu", (unsigned long long)tag);
        return;
    }
    if (ch->txa_len == ch->txa_cap) {
        ch->txa_cap = ch->txa_cap ? ch->txa_cap * 2 : 16;
        ch->txa = realloc(ch->txa, ch->txa_cap * sizeof *ch->txa);
        if (!ch->txa) abort();
    }
    ch->txa[ch->txa_len++] = (tx_ack_t){.tag = tag, .multiple = multiple, .requeue = requeue, .is_ack = is_ack};
}

static void handle_ack_family(chan_t *ch, const amqp_method_t *m)
{
    uint64_t tag;
    bool multiple = false, requeue = false, is_ack = false;
    if (m->id == AMQP_BASIC_ACK)
        tag = m->u.basic_ack.delivery_tag, multiple = m->u.basic_ack.multiple, is_ack = true, ch->st_ack++;
    else if (m->id == AMQP_BASIC_NACK)
        tag = m->u.basic_nack.delivery_tag, multiple = m->u.basic_nack.multiple, requeue = m->u.basic_nack.requeue;
    else
        tag = m->u.basic_reject.delivery_tag, requeue = m->u.basic_reject.requeue;
    if (ch->tx) {
        tx_record_ack(ch, m->id, tag, multiple, requeue, is_ack);
        return;
    }
    apply_ack(ch, m->id, tag, multiple, settle_mode(is_ack, requeue));
}

static void handle_recover(chan_t *ch, const amqp_method_t *m, bool requeue)
{
    if (!requeue) {
        /* RabbitMQ redelivers in place only for requeue=true. */
        chan_exception(ch, AMQP_NOT_IMPLEMENTED, m->id, "requeue=false");
        return;
    }
    settle_all(ch, SETTLE_REQUEUE);
    if (m->id == AMQP_BASIC_RECOVER) send_simple(ch, AMQP_BASIC_RECOVER_OK);
}

static void handle_qos(chan_t *ch, const amqp_method_t *m)
{
    if (m->u.basic_qos.prefetch_size != 0) {
        chan_exception(ch, AMQP_NOT_IMPLEMENTED, m->id, "prefetch_size!=0 (%u)", m->u.basic_qos.prefetch_size);
        return;
    }
    if (m->u.basic_qos.global) {
        ch->global_prefetch = m->u.basic_qos.prefetch_count;
        chan_on_drain(ch);
    } else {
        ch->prefetch = m->u.basic_qos.prefetch_count;
    }
    send_simple(ch, AMQP_BASIC_QOS_OK);
}

/* ---- tx ---- */

/* tx.commit-ok waits for the store sync of the transaction's durable messages and for the
 * answers of queues on other nodes. */
struct tx_wait {
    chan_t *ch;
    unsigned remaining;
};

static void tx_wait_done(struct tx_wait *w)
{
    if (--w->remaining) return;
    chan_t *ch = w->ch;
    if (ch->conn && ch->state == CH_OPEN) {
        send_simple(ch, AMQP_TX_COMMIT_OK);
        conn_flush(ch->conn);
    }
    chan_unref(ch);
    free(w);
}

static void tx_commit_synced(void *arg) { tx_wait_done(arg); }

static void tx_remote_done(void *arg, uint64_t tag, int result)
{
    (void)tag, (void)result;
    tx_wait_done(arg);
}

static void tx_commit(chan_t *ch, const amqp_method_t *m)
{
    if (!ch->tx) {
        chan_exception(ch, AMQP_PRECONDITION_FAILED, m->id, "channel is not transactional");
        return;
    }
    struct tx_wait *w = malloc(sizeof *w);
    if (!w) abort();
    w->ch = ch;
    w->remaining = 1; /* this function's own hold */
    ch->refs++;
    bool needs_sync = false;
    for (size_t i = 0; i < ch->txp_len; i++) {
        unsigned remote = 0;
        needs_sync |= (deliver_message(ch, ch->txp[i].m, ch->txp[i].mandatory, tx_remote_done, w, 0, &remote) &
                       Q_PUB_SYNC) != 0;
        w->remaining += remote;
        msg_unref(ch->txp[i].m);
    }
    ch->txp_len = 0;
    size_t n = ch->txa_len;
    ch->txa_len = 0;
    for (size_t i = 0; i < n; i++) {
        tx_ack_t *a = &ch->txa[i];
        if (a->multiple && a->tag == 0) {
            settle_all(ch, settle_mode(a->is_ack, a->requeue));
            continue;
        }
        if (dl_find(ch, a->tag) < 0) continue;
        apply_ack(ch, m->id, a->tag, a->multiple, settle_mode(a->is_ack, a->requeue));
    }
    broker_t *b = ch->conn->srv->broker;
    if (needs_sync && b->store) {
        /* commit-ok promises the transaction's persistent messages are on disk. */
        w->remaining++;
        store_on_synced(b->store, tx_commit_synced, w);
    }
    tx_wait_done(w);
}

static void tx_rollback(chan_t *ch, const amqp_method_t *m)
{
    if (!ch->tx) {
        chan_exception(ch, AMQP_PRECONDITION_FAILED, m->id, "channel is not transactional");
        return;
    }
    for (size_t i = 0; i < ch->txp_len; i++) msg_unref(ch->txp[i].m);
    ch->txp_len = 0;
    ch->txa_len = 0;
    send_simple(ch, AMQP_TX_ROLLBACK_OK);
}

/* ---- dispatch ---- */

void chan_handle_method(chan_t *ch, const amqp_method_t *m)
{
    if (ch->state == CH_CLOSING) {
        if (m->id == AMQP_CHANNEL_CLOSE_OK || m->id == AMQP_CHANNEL_CLOSE) {
            conn_t *c = ch->conn;
            if (m->id == AMQP_CHANNEL_CLOSE) send_simple(ch, AMQP_CHANNEL_CLOSE_OK);
            c->chans[ch->id] = NULL;
            chan_destroy(ch);
        }
        return;
    }
    if (ch->pub != PUB_IDLE) {
        conn_exception(ch->conn, AMQP_UNEXPECTED_FRAME, AMQP_BASIC_PUBLISH,
                       ch->pub == PUB_HEADER
                           ? "expected content header for class 60, got non content header frame instead"
                           : "expected content body, got non content body frame instead");
        return;
    }
    switch (m->id) {
    case AMQP_CHANNEL_CLOSE: {
        conn_t *c = ch->conn;
        send_simple(ch, AMQP_CHANNEL_CLOSE_OK);
        c->chans[ch->id] = NULL;
        chan_destroy(ch);
        return;
    }
    case AMQP_CHANNEL_CLOSE_OK:
        return;
    case AMQP_CHANNEL_FLOW: {
        if (!m->u.channel_flow.active) {
            /* As RabbitMQ: clients may not stop the server's deliveries this way. */
            conn_exception(ch->conn, AMQP_NOT_IMPLEMENTED, m->id, "active=false");
            return;
        }
        ch->flow_active = m->u.channel_flow.active;
        amqp_method_t ok = {.id = AMQP_CHANNEL_FLOW_OK};
        ok.u.channel_flow_ok.active = ch->flow_active;
        send(ch, &ok);
        if (ch->flow_active) chan_on_drain(ch);
        return;
    }
    case AMQP_CHANNEL_FLOW_OK:
        return;
    case AMQP_EXCHANGE_DECLARE: return handle_exchange_declare(ch, m);
    case AMQP_EXCHANGE_DELETE: return handle_exchange_delete(ch, m);
    case AMQP_EXCHANGE_BIND: return handle_exchange_bind(ch, m, true);
    case AMQP_EXCHANGE_UNBIND: return handle_exchange_bind(ch, m, false);
    case AMQP_QUEUE_DECLARE: return handle_queue_declare(ch, m);
    case AMQP_QUEUE_BIND: return handle_queue_bind(ch, m, true);
    case AMQP_QUEUE_UNBIND: return handle_queue_bind(ch, m, false);
    case AMQP_QUEUE_PURGE: return handle_queue_purge(ch, m);
    case AMQP_QUEUE_DELETE: return handle_queue_delete(ch, m);
    case AMQP_BASIC_QOS: return handle_qos(ch, m);
    case AMQP_BASIC_CONSUME: return handle_consume(ch, m);
    case AMQP_BASIC_CANCEL: return handle_cancel(ch, m);
    case AMQP_BASIC_PUBLISH: return handle_publish(ch, m);
    case AMQP_BASIC_GET: return handle_get(ch, m);
    case AMQP_BASIC_ACK:
    case AMQP_BASIC_NACK:
    case AMQP_BASIC_REJECT: return handle_ack_family(ch, m);
    case AMQP_BASIC_RECOVER: return handle_recover(ch, m, m->u.basic_recover.requeue);
    case AMQP_BASIC_RECOVER_ASYNC: return handle_recover(ch, m, m->u.basic_recover_async.requeue);
    case AMQP_CONFIRM_SELECT:
        if (ch->tx) {
            chan_exception(ch, AMQP_PRECONDITION_FAILED, m->id, "cannot switch from tx to confirm mode");
            return;
        }
        ch->confirm = true;
        if (!m->u.confirm_select.nowait) send_simple(ch, AMQP_CONFIRM_SELECT_OK);
        return;
    case AMQP_TX_SELECT:
        if (ch->confirm) {
            chan_exception(ch, AMQP_PRECONDITION_FAILED, m->id, "cannot switch from confirm to tx mode");
            return;
        }
        ch->tx = true;
        send_simple(ch, AMQP_TX_SELECT_OK);
        return;
    case AMQP_TX_COMMIT: return tx_commit(ch, m);
    case AMQP_TX_ROLLBACK: return tx_rollback(ch, m);
    default:
        conn_exception(ch->conn, AMQP_COMMAND_INVALID, m->id, "method %s is not valid on a channel",
                       amqp_method_name(m->id));
    }
}
