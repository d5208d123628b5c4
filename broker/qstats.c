/* qstats.c - the figures this node knows of its queues, and its answers to QS_CALL_LIST (see
 * qstats.h for the wire format and for who knows what).
 *
 * Role: the callee's half of the management API's cluster-wide queue listing. A call is
 * answered at once from the registry (one pass over the asked vhosts' queues, or one lookup per
 * named queue): nothing is cached and nothing is counted per message here; the rates are the
 * management plugin's 5 s samples, read through the callback it registers (qs_set_rates).
 *
 * Invariants: records are only ever built from this node's own knowledge - a classic queue's
 * by its home, a quorum queue's counters by the node that counted them - so the caller can sum
 * quorum counters over nodes without counting anything twice. Idle quorum queues this node
 * holds no replica of produce no record (nothing to add), which keeps answers small. */
#include "broker/qstats.h"

#include <stdlib.h>
#include <string.h>

#include "broker/qq.h"
#include "broker/remote.h"

static qs_rates_fn rates_fn; /* one broker (and one management plugin) per process */
static void *rates_ctx;

void qs_set_rates(qs_rates_fn fn, void *ctx)
{
    rates_fn = fn;
    rates_ctx = ctx;
}

static void local_counters(const queue_t *q, struct qs_fig *out)
{
    out->publish = q->stat_publish, out->deliver = q->stat_deliver, out->get = q->stat_get;
    out->ack = q->stat_ack, out->redeliver = q->stat_redeliver;
    if (out->publish | out->deliver | out->get | out->ack | out->redeliver) out->flags |= QS_F_COUNTERS;
}

static void local_rates(const queue_t *q, struct qs_fig *out)
{
    if (!rates_fn) return;
    rates_fn(rates_ctx, q, out->rate);
    for (int i = 0; i < QS_RATE_N; i++)
        if (out->rate[i] != 0.0) out->flags |= QS_F_RATES;
}

bool qs_local(queue_t *q, struct qs_fig *out)
{
    memset(out, 0, sizeof *out);
    out->uid = q->uid;
    if (q->qq) {
        struct qq_info info;
        qq_info(q, &info);
        out->flags |= QS_F_QUORUM;
        if (info.member) {
            out->flags |= QS_F_DEPTH;
            out->ready = info.ready, out->unacked = info.unacked, out->consumers = info.consumers;
            out->ready_bytes = info.ready_bytes, out->unacked_bytes = info.unacked_bytes;
        }
    } else if (rq_remote(q)) {
        return false;
    } else {
        out->flags |= QS_F_DEPTH;
        out->ready = q_message_count(q), out->unacked = q->unacked, out->consumers = q_consumer_count(q);
        out->ready_bytes = q->ready_bytes; /* unacknowledged bytes are not tracked for classic queues */
    }
    local_counters(q, out);
    local_rates(q, out);
    return true;
}

/* ---- encoding ---- */

static amqp_bytes_t str_bytes(const char *s, size_t n) { return (amqp_bytes_t){(const uint8_t *)s, n}; }

void qs_request_all(amqp_buf_t *o, const char *vhost)
{
    amqp_buf_put_u8(o, QS_ALL);
    amqp_buf_put_shortstr(o, AMQP_BYTES_CSTR(vhost ? vhost : ""));
}

void qs_request_named(amqp_buf_t *o, queue_t *const *queues, size_t n)
{
    amqp_buf_put_u8(o, QS_NAMED);
    amqp_buf_put_u32(o, (uint32_t)n);
    for (size_t i = 0; i < n; i++) {
        amqp_buf_put_shortstr(o, AMQP_BYTES_CSTR(queues[i]->vh->name));
        amqp_buf_put_shortstr(o, str_bytes(queues[i]->name, queues[i]->name_len));
    }
}

static void put_double(amqp_buf_t *o, double d)
{
    uint64_t bits;
    memcpy(&bits, &d, sizeof bits);
    amqp_buf_put_u64(o, bits);
}

static double read_double(amqp_reader_t *r)
{
    uint64_t bits = amqp_read_u64(r);
    double d;
    memcpy(&d, &bits, sizeof d);
    return d;
}

static void put_fig(amqp_buf_t *o, const struct qs_fig *f)
{
    amqp_buf_put_u64(o, f->uid);
    amqp_buf_put_u8(o, (uint8_t)f->flags);
    if (f->flags & QS_F_DEPTH) {
        amqp_buf_put_u64(o, f->ready);
        amqp_buf_put_u64(o, f->unacked);
        amqp_buf_put_u64(o, f->ready_bytes);
        amqp_buf_put_u64(o, f->unacked_bytes);
        amqp_buf_put_u32(o, f->consumers);
    }
    if (f->flags & QS_F_COUNTERS) {
        amqp_buf_put_u64(o, f->publish);
        amqp_buf_put_u64(o, f->deliver);
        amqp_buf_put_u64(o, f->get);
        amqp_buf_put_u64(o, f->ack);
        amqp_buf_put_u64(o, f->redeliver);
    }
    if (f->flags & QS_F_RATES)
        for (int i = 0; i < QS_RATE_N; i++) put_double(o, f->rate[i]);
}

bool qs_read(amqp_reader_t *r, struct qs_fig *out)
{
    memset(out, 0, sizeof *out);
    if (r->bad || r->left == 0) return false;
    out->uid = amqp_read_u64(r);
    out->flags = amqp_read_u8(r);
    if (out->flags & QS_F_DEPTH) {
        out->ready = amqp_read_u64(r);
        out->unacked = amqp_read_u64(r);
        out->ready_bytes = amqp_read_u64(r);
        out->unacked_bytes = amqp_read_u64(r);
        out->consumers = amqp_read_u32(r);
    }
    if (out->flags & QS_F_COUNTERS) {
        out->publish = amqp_read_u64(r);
        out->deliver = amqp_read_u64(r);
        out->get = amqp_read_u64(r);
        out->ack = amqp_read_u64(r);
        out->redeliver = amqp_read_u64(r);
    }
    if (out->flags & QS_F_RATES)
        for (int i = 0; i < QS_RATE_N; i++) out->rate[i] = read_double(r);
    return !r->bad;
}

/* ---- answering ---- */

/* Appends q's record when this node has something to say about it. */
static void answer_queue(amqp_buf_t *o, queue_t *q)
{
    struct qs_fig f;
    if (!qs_local(q, &f)) return;
    if ((f.flags & QS_F_QUORUM) && !(f.flags & (QS_F_DEPTH | QS_F_COUNTERS | QS_F_RATES))) return;
    put_fig(o, &f);
}

static void answer_vhost(amqp_buf_t *o, vhost_t *vh)
{
    size_t pos = 0;
    void *v;
    while (dict_next(&vh->queues, &pos, NULL, NULL, &v)) answer_queue(o, v);
}

static int answer_all(broker_t *b, amqp_reader_t *r, amqp_buf_t *o)
{
    amqp_bytes_t vhost = amqp_read_shortstr(r);
    if (r->bad) return -1;
    if (vhost.len) {
        vhost_t *vh = br_vhost(b, (const char *)vhost.ptr, vhost.len);
        if (vh) answer_vhost(o, vh);
        return 0;
    }
    size_t pos = 0;
    void *v;
    while (dict_next(&b->vhosts, &pos, NULL, NULL, &v)) answer_vhost(o, v);
    return 0;
}

static int answer_named(broker_t *b, amqp_reader_t *r, amqp_buf_t *o)
{
    uint32_t n = amqp_read_u32(r);
    for (uint32_t i = 0; i < n && !r->bad; i++) {
        amqp_bytes_t vhost = amqp_read_shortstr(r), name = amqp_read_shortstr(r);
        if (r->bad) break;
        vhost_t *vh = br_vhost(b, (const char *)vhost.ptr, vhost.len);
        queue_t *q = vh ? br_queue(vh, (const char *)name.ptr, name.len) : NULL;
        if (q) answer_queue(o, q);
    }
    return r->bad ? -1 : 0;
}

void qs_handle_call(broker_t *b, uint32_t from, const char *method, const void *payload, size_t len,
                    const struct peer_reply_to *to)
{
    if (from == 0 || from == PEER_CLIENT_ID || strcmp(method, QS_CALL_LIST) != 0) {
        b->node_reply(b->node_ctx, to, BR_NOT_IMPLEMENTED, "no handler for this call", NULL, 0);
        return;
    }
    amqp_reader_t r = amqp_reader(payload, len);
    amqp_buf_t o = {0};
    uint8_t mode = amqp_read_u8(&r);
    int rc = mode == QS_ALL ? answer_all(b, &r, &o) : mode == QS_NAMED ? answer_named(b, &r, &o) : -1;
    if (rc) b->node_reply(b->node_ctx, to, BR_COMMAND_INVALID, "malformed request", NULL, 0);
    else b->node_reply(b->node_ctx, to, 0, NULL, o.data, o.len);
    amqp_buf_free(&o);
}
