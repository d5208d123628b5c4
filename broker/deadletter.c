/* deadletter.c - dead-lettering: a message rejected without requeue, expired, or pushed out by
 * a length limit is republished to the queue's x-dead-letter-exchange, as RabbitMQ does.
 *
 * The dead-lettered message is a new message (new id, same body and properties) whose headers
 * carry the x-death history: an array of tables, most recent first, one per (queue, reason)
 * with a count, plus x-first-death-reason/queue/exchange set on the first death. Its routing
 * key is x-dead-letter-routing-key when set, else the original one (CC/BCC headers still apply
 * when it is routed). The expiration property is removed and kept in x-death as
 * original-expiration, so a TTL cannot expire it again.
 *
 * Cycles: a message about to reach a queue it already died in is dropped there unless one of
 * its deaths was a rejection (a client decided), which is RabbitMQ's rule. A missing DLX
 * drops the message silently. */
#include "broker/broker.h"
#include "broker/log.h"
#include "broker/props.h"
#include "broker/qq.h"
#include "broker/remote.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void put_str(amqp_buf_t *b, const char *key, const char *val, size_t len)
{
    amqp_table_put_longstr(b, key, (amqp_bytes_t){(const uint8_t *)val, len});
}

static bool field_is(const amqp_field_t *f, const char *key) { return amqp_bytes_eq_cstr(f->key, key); }

/* Routing keys the message was published with: its key plus CC entries. */
static void put_routing_keys(amqp_buf_t *b, const msg_t *m, const amqp_table_t *headers)
{
    amqp_table_put_key(b, "routing-keys");
    amqp_buf_put_u8(b, 'A');
    size_t pos = b->len;
    amqp_buf_put_u32(b, 0);
    amqp_buf_put_u8(b, 'S');
    amqp_buf_put_longstr(b, (amqp_bytes_t){(const uint8_t *)m->rk, m->rk_len});
    const amqp_value_t *cc = headers ? amqp_table_get(headers, "CC") : NULL;
    if (cc && cc->type == 'A')
        for (size_t i = 0; i < cc->v.array.n; i++) amqp_value_encode(b, &cc->v.array.items[i]);
    amqp_buf_patch_u32(b, pos, (uint32_t)(b->len - pos - 4));
}

static bool death_matches(const amqp_value_t *d, const char *queue, const char *reason)
{
    if (d->type != 'F') return false;
    const amqp_value_t *q = amqp_table_get(&d->v.table, "queue"), *r = amqp_table_get(&d->v.table, "reason");
    return q && r && q->type == 'S' && r->type == 'S' && amqp_bytes_eq_cstr(q->v.str, queue) &&
           amqp_bytes_eq_cstr(r->v.str, reason);
}

/* Builds the new headers table content (without length prefix) into out. */
static void build_headers(amqp_buf_t *out, const queue_t *q, const msg_t *m, const amqp_table_t *old,
                          const char *reason, const props_core_t *p)
{
    size_t top = amqp_table_open(out);
    const amqp_value_t *deaths = old ? amqp_table_get(old, "x-death") : NULL;
    int64_t prior = 0;
    if (deaths && deaths->type == 'A')
        for (size_t i = 0; i < deaths->v.array.n; i++)
            if (death_matches(&deaths->v.array.items[i], q->name, reason)) {
                const amqp_value_t *c = amqp_table_get(&deaths->v.array.items[i].v.table, "count");
                if (c) amqp_value_int(c, &prior);
            }
    bool has_first = old && amqp_table_get(old, "x-first-death-reason");
    for (size_t i = 0; old && i < old->n; i++) {
        if (field_is(&old->fields[i], "x-death")) continue;
        /* With x-dead-letter-routing-key the CC/BCC keys no longer apply: RabbitMQ drops them. */
        if (q->dlrk && (field_is(&old->fields[i], "CC") || field_is(&old->fields[i], "BCC"))) continue;
        amqp_buf_put_shortstr(out, old->fields[i].key);
        amqp_value_encode(out, &old->fields[i].value);
    }
    /* x-death: this death first, then the others. A repeated (queue, reason) keeps its first
     * entry (time, exchange, routing keys) with the count raised, moved to the front. */
    amqp_table_put_key(out, "x-death");
    amqp_buf_put_u8(out, 'A');
    size_t arr = out->len;
    amqp_buf_put_u32(out, 0);
    amqp_buf_put_u8(out, 'F');
    size_t ent = amqp_table_open(out);
    const amqp_value_t *same = NULL;
    if (deaths && deaths->type == 'A')
        for (size_t i = 0; i < deaths->v.array.n && !same; i++)
            if (death_matches(&deaths->v.array.items[i], q->name, reason)) same = &deaths->v.array.items[i];
    if (same) {
        for (size_t i = 0; i < same->v.table.n; i++) {
            const amqp_field_t *f = &same->v.table.fields[i];
            if (field_is(f, "count")) {
                amqp_table_put_i64(out, "count", prior + 1);
                continue;
            }
            amqp_buf_put_shortstr(out, f->key);
            amqp_value_encode(out, &f->value);
        }
    } else {
        amqp_table_put_i64(out, "count", 1);
        amqp_table_put_longstr(out, "reason", AMQP_BYTES_CSTR(reason));
        put_str(out, "queue", q->name, q->name_len);
        amqp_table_put_timestamp(out, "time", (uint64_t)time(NULL));
        put_str(out, "exchange", m->exchange, m->exchange_len);
        put_routing_keys(out, m, old);
        if (p->has_expiration) amqp_table_put_longstr(out, "original-expiration", p->expiration);
    }
    amqp_table_close(out, ent);
    if (deaths && deaths->type == 'A')
        for (size_t i = 0; i < deaths->v.array.n; i++)
            if (!death_matches(&deaths->v.array.items[i], q->name, reason))
                amqp_value_encode(out, &deaths->v.array.items[i]);
    amqp_buf_patch_u32(out, arr, (uint32_t)(out->len - arr - 4));
    if (!has_first) {
        amqp_table_put_longstr(out, "x-first-death-reason", AMQP_BYTES_CSTR(reason));
        put_str(out, "x-first-death-queue", q->name, q->name_len);
        put_str(out, "x-first-death-exchange", m->exchange, m->exchange_len);
    }
    amqp_table_close(out, top);
}

/* True when target already appears in the x-death history and no death was a rejection. */
static bool is_cycle(const amqp_table_t *headers, const queue_t *target)
{
    const amqp_value_t *deaths = amqp_table_get(headers, "x-death");
    if (!deaths || deaths->type != 'A') return false;
    bool seen = false;
    for (size_t i = 0; i < deaths->v.array.n; i++) {
        const amqp_value_t *d = &deaths->v.array.items[i];
        if (d->type != 'F') continue;
        const amqp_value_t *r = amqp_table_get(&d->v.table, "reason");
        const amqp_value_t *qn = amqp_table_get(&d->v.table, "queue");
        if (r && r->type == 'S' && amqp_bytes_eq_cstr(r->v.str, "rejected")) return false;
        if (qn && qn->type == 'S' && amqp_bytes_eq_cstr(qn->v.str, target->name)) seen = true;
    }
    return seen;
}

/* A dead-lettering in progress whose sender wants to know when every copy is safe. */
struct dl_confirm {
    unsigned pending; /* targets still to answer (+1 while routing) */
    bool failed;
    void (*done)(void *arg, bool ok);
    void *arg;
};

static void dl_settle_one(struct dl_confirm *c, bool ok)
{
    if (!ok) c->failed = true;
    if (--c->pending) return;
    c->done(c->arg, !c->failed);
    free(c);
}

static void dl_target_answered(void *arg, uint64_t tag, int result)
{
    (void)tag;
    dl_settle_one(arg, result == Q_PUB_OK);
}

static void dl_target_synced(void *arg) { dl_settle_one(arg, true); }

/* Builds the dead-lettered copy of m and routes it from q's DLX; with c, every target that
 * takes it is counted in c->pending and answers through c. Returns how many queues took it. */
static unsigned dead_letter_route(queue_t *q, msg_t *m, const char *reason, struct dl_confirm *c)
{
    if (!q->dlx) return 0;
    broker_t *b = q->vh->broker;
    exchange_t *x = br_exchange(q->vh, q->dlx, strlen(q->dlx));
    if (!x) return 0;
    if (!m->body && !q_body_load(b, m)) return 0;
    props_core_t p;
    if (props_core_read(m->props, m->props_len, &p) != 0) return 0;
    amqp_table_t old = {0};
    bool have_old = p.has_headers && amqp_table_parse(p.headers, &old) == 0;
    amqp_buf_t hdr = {0}, props = {0};
    unsigned taken = 0;
    build_headers(&hdr, q, m, have_old ? &old : NULL, reason, &p);
    amqp_bytes_t hb = {hdr.data + 4, hdr.len - 4};
    if (props_rewrite(m->props, m->props_len, &hb, false, p.has_expiration, &props) != 0) goto out;
    const char *rk = q->dlrk ? q->dlrk : m->rk;
    size_t rklen = q->dlrk ? strlen(q->dlrk) : m->rk_len;
    /* Without x-dead-letter-routing-key the original BCC keys still route it. */
    msg_t *dm = msg_new_with_bcc(x->name, x->name_len, rk, rklen, props.data, props.len, m->body_len,
                                 q->dlrk ? NULL : msg_bcc(m), q->dlrk ? 0 : m->bcc_len);
    if (m->body_len) memcpy(dm->body, m->body, m->body_len);
    dm->id = b->next_msg_id++;
    dm->persistent = m->persistent;
    dm->priority = m->priority;
    amqp_table_t newh;
    if (amqp_table_parse(hb, &newh) == 0) {
        ptrvec_t qs = {0};
        br_route(x, dm, &qs);
        for (size_t i = 0; i < qs.n; i++) {
            queue_t *t = qs.items[i];
            if (is_cycle(&newh, t)) continue;
            if (!c) {
                q_publish(t, dm);
                taken++;
            } else if (t->qq) {
                if (qq_publish(t, dm, 0, dl_target_answered, c, 0)) c->pending++, taken++;
            } else if (rq_remote(t)) {
                if (rq_publish(t, dm, dl_target_answered, c, 0)) c->pending++, taken++;
            } else {
                int r = q_publish(t, dm);
                if (r & Q_PUB_REJECTED) {
                    c->failed = true;
                } else if ((r & Q_PUB_SYNC) && b->store) {
                    c->pending++;
                    store_on_synced(b->store, dl_target_synced, c);
                }
                taken++;
            }
        }
        ptrvec_free(&qs);
        amqp_table_free(&newh);
    }
    msg_unref(dm);
out:
    if (have_old) amqp_table_free(&old);
    amqp_buf_free(&hdr);
    amqp_buf_free(&props);
    return taken;
}

void q_dead_letter(queue_t *q, msg_t *m, const char *reason) { dead_letter_route(q, m, reason, NULL); }

void q_dead_letter_confirmed(queue_t *q, msg_t *m, const char *reason, void (*done)(void *arg, bool ok), void *arg)
{
    struct dl_confirm *c = calloc(1, sizeof *c);
    if (!c) abort();
    c->pending = 1; /* held while routing */
    c->done = done;
    c->arg = arg;
    if (dead_letter_route(q, m, reason, c) == 0) c->failed = true; /* no DLX, unroutable: kept, retried */
    dl_settle_one(c, true);
}
