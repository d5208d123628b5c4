/* queue.c - the classic queue: a FIFO of message references with round-robin dispatch to
 * consumers, prefetch-respecting, requeue at the original position.
 *
 * Invariants:
 *  - ready is ordered by seq (arrival order); a requeued entry keeps its seq, so it goes back
 *    where it was (usually the head).
 *  - Every entry in ready holds one msg reference; a delivered entry's reference moves to the
 *    consumer's side (the adapter's delivery record) until q_ack()/q_requeue().
 *  - For a durable queue, each persistent message has an index record 'i'+uid+seq -> msg id in
 *    the store from publish until ack; the message record 'm'+id lives while any durable queue
 *    indexes it (msg->durable_refs).
 *  - Dispatch never runs re-entrantly: q_schedule() puts the queue on the broker's run list and
 *    br_dispatch_pending() (an ev_prepare, i.e. before the loop sleeps) delivers. So a burst of
 *    publishes or acks costs one dispatch pass.
 *  - Bodies of stored messages may be dropped from memory when the node holds too much (page
 *    out); q_body_load() reads them back on delivery.
 *  - Ready messages live in one deque per priority level (x-max-priority), highest served first;
 *    an entry's expiry (x-message-ttl / expiration, whichever is lower) is fixed at enqueue, and
 *    expired entries are removed when they reach the head of their level (as RabbitMQ does), by
 *    a timer armed for the earliest head, and dead-lettered when the queue has a DLX.
 *  - Length limits count ready messages only: drop-head dead-letters the head, reject-publish
 *    refuses the new message (and -dlx dead-letters it).
 *  - Clustered, a queue whose home is another node (rq_remote) holds no messages here: publish,
 *    settlements, consumer removal and dispatch go through remote.c, and only its home node
 *    runs its timers (x-expires, TTL) and decides on auto-delete. Its local consumers list holds
 *    this node's consumers of it (remote.c manages them). */
#include "broker/broker.h"
#include "broker/meta.h"
#include "broker/log.h"
#include "broker/props.h"
#include "broker/remote.h"
#include "broker/qq.h"
#include "broker/qq_sm.h"

#include <stdlib.h>
#include <string.h>

/* ---- deque ---- */

static qentry_t *dq_at(qdeque_t *d, size_t i) { return &d->buf[(d->head + i) & (d->cap - 1)]; }

static void dq_grow(qdeque_t *d)
{
    size_t ncap = d->cap ? d->cap * 2 : 64;
    qentry_t *nb = malloc(ncap * sizeof *nb);
    if (!nb) abort();
    for (size_t i = 0; i < d->len; i++) nb[i] = *dq_at(d, i);
    free(d->buf);
    d->buf = nb;
    d->cap = ncap;
    d->head = 0;
}

static void dq_push_back(qdeque_t *d, qentry_t e)
{
    if (d->len == d->cap) dq_grow(d);
    *dq_at(d, d->len++) = e;
}

static qentry_t dq_pop_front(qdeque_t *d)
{
    qentry_t e = *dq_at(d, 0);
    d->head = (d->head + 1) & (d->cap - 1);
    d->len--;
    return e;
}

/* Inserts keeping seq order; requeues nearly always land at the front. */
static void dq_insert_sorted(qdeque_t *d, qentry_t e)
{
    if (d->len == d->cap) dq_grow(d);
    if (d->len == 0 || dq_at(d, 0)->seq > e.seq) {
        d->head = (d->head - 1) & (d->cap - 1);
        d->len++;
        *dq_at(d, 0) = e;
        return;
    }
    size_t pos = d->len;
    while (pos > 0 && dq_at(d, pos - 1)->seq > e.seq) pos--;
    d->len++;
    for (size_t i = d->len - 1; i > pos; i--) *dq_at(d, i) = *dq_at(d, i - 1);
    *dq_at(d, pos) = e;
}

/* ---- ready messages across priority levels ---- */

static uint32_t entry_level(const queue_t *q, const msg_t *m)
{
    if (q->nlevels <= 1) return 0;
    return m->priority >= q->nlevels ? q->nlevels - 1 : m->priority;
}

static void ready_push(queue_t *q, qentry_t e) { dq_push_back(&q->levels[entry_level(q, e.m)], e); q->ready_len++; }

static void ready_requeue(queue_t *q, qentry_t e)
{
    dq_insert_sorted(&q->levels[entry_level(q, e.m)], e);
    q->ready_len++;
}

/* The level that delivers next, or NULL when nothing is ready. */
static qdeque_t *ready_head_level(queue_t *q)
{
    for (uint32_t i = q->nlevels; i-- > 0;)
        if (q->levels[i].len) return &q->levels[i];
    return NULL;
}

static qentry_t ready_pop(queue_t *q)
{
    qdeque_t *d = ready_head_level(q);
    q->ready_len--;
    return dq_pop_front(d);
}

/* i-th ready entry in delivery order (levels high to low). */
static qentry_t *ready_at(queue_t *q, size_t i)
{
    for (uint32_t l = q->nlevels; l-- > 0;) {
        if (i < q->levels[l].len) return dq_at(&q->levels[l], i);
        i -= q->levels[l].len;
    }
    return NULL;
}

static int64_t now_ms(const queue_t *q)
{
    struct ev_loop *loop = q->vh->broker->loop;
    return loop ? (int64_t)(ev_now(loop) * 1000.0) : 0;
}

/* ---- storage ---- */

static void index_key(uint8_t key[17], const queue_t *q, uint64_t seq)
{
    key[0] = KEY_QINDEX;
    store_put_be64(key + 1, q->uid);
    store_put_be64(key + 9, seq);
}

static bool persists(const queue_t *q, const msg_t *m)
{
    return q->durable && m->persistent && q->vh->broker->store;
}

static void store_message(broker_t *b, msg_t *m)
{
    size_t n = msg_record_size(m);
    uint8_t stackbuf[4096];
    uint8_t *rec = n <= sizeof stackbuf ? stackbuf : malloc(n);
    if (!rec) abort();
    msg_record_write(m, rec);
    uint8_t key[9];
    key[0] = KEY_MSG;
    store_put_be64(key + 1, m->id);
    store_put(b->store, key, sizeof key, rec, n);
    if (rec != stackbuf) free(rec);
    m->stored = true;
    b->stat_msg_store_writes++;
}

/* ---- write elision ----
 *
 * When consumers keep up, a persistent message is acknowledged within a millisecond or so of
 * its publish: writing its record and index entry only to delete them again would cost two
 * puts and two deletes (WAL bytes, memtable inserts) per message. So these writes wait in
 * b->deferred until the store hands its current batch to the storage thread (the presubmit
 * hook, q_write_deferred); an entry that leaves the queue before then (ack, purge, deletion,
 * expiry, drop) cancels them, and nothing is written nor deleted for it. RabbitMQ's message
 * store skips writes of messages acknowledged meanwhile the same way.
 * Durability is unchanged: the publisher's confirm is a sync callback of that same batch, so it
 * still fires only once the writes (or the acknowledgement that made them unneeded) happened.
 * An entry points at its deferred write by slot (qentry_t.defer_slot); slots are reused once
 * the writes are queued, so a cancel checks that the slot still holds this queue's entry. */

struct deferred_write {
    queue_t *q;    /* a reference (q_ref): a deleted queue's writes are skipped */
    uint64_t quid; /* with seq: which entry the slot holds */
    uint64_t seq;
    msg_t *m;      /* a reference */
    bool cancelled;
};

struct q_deferred {
    struct deferred_write *v;
    size_t n, cap;
};

static uint32_t defer_write(broker_t *b, queue_t *q, uint64_t seq, msg_t *m)
{
    struct q_deferred *d = b->deferred;
    if (!d) {
        d = b->deferred = calloc(1, sizeof *d);
        if (!d) abort();
    }
    if (d->n == d->cap) {
        d->cap = d->cap ? d->cap * 2 : 256;
        d->v = realloc(d->v, d->cap * sizeof *d->v);
        if (!d->v) abort();
    }
    q_ref(q);
    d->v[d->n++] = (struct deferred_write){.q = q, .quid = q->uid, .seq = seq, .m = msg_ref(m)};
    if (d->n == 1) store_want_presubmit(b->store);
    return (uint32_t)d->n;
}

/* True when e's writes were still waiting: they will not happen (nor need undoing). */
static bool defer_cancel(broker_t *b, const queue_t *q, const qentry_t *e)
{
    struct q_deferred *d = b->deferred;
    if (!e->defer_slot || !d || e->defer_slot > d->n) return false;
    struct deferred_write *w = &d->v[e->defer_slot - 1];
    if (w->cancelled || w->quid != q->uid || w->seq != e->seq) return false;
    w->cancelled = true;
    return true;
}

static void write_index(broker_t *b, const queue_t *q, uint64_t seq, const msg_t *m)
{
    uint8_t key[17], val[8];
    index_key(key, q, seq);
    store_put_be64(val, m->id);
    store_put(b->store, key, sizeof key, val, sizeof val);
    b->stat_index_writes++;
}

void q_write_deferred(void *arg)
{
    broker_t *b = arg;
    struct q_deferred *d = b->deferred;
    if (!d) return;
    for (size_t i = 0; i < d->n; i++) {
        struct deferred_write *w = &d->v[i];
        if (!w->cancelled && !w->q->deleted && w->q->durable) {
            if (!w->m->stored) store_message(b, w->m);
            write_index(b, w->q, w->seq, w->m);
        }
        msg_unref(w->m);
        q_unref(w->q);
    }
    d->n = 0;
}

void q_deferred_free(broker_t *b)
{
    if (!b->deferred) return;
    q_write_deferred(b);
    free(b->deferred->v);
    free(b->deferred);
    b->deferred = NULL;
}

/* Drops the disk reference of one settled/removed entry. index_present is false when the
 * queue's whole index range was already deleted (queue deletion). */
static void unstore_entry(queue_t *q, const qentry_t *e, bool index_present)
{
    msg_t *m = e->m;
    if (!persists(q, m)) return;
    store_t *s = q->vh->broker->store;
    if (defer_cancel(q->vh->broker, q, e)) index_present = false; /* never written */
    if (index_present) {
        uint8_t key[17];
        index_key(key, q, e->seq);
        store_del(s, key, sizeof key);
    }
    if (m->durable_refs && --m->durable_refs == 0 && m->stored) {
        /* Other (transient) queues may still hold it: bring the body back before the record goes. */
        if (!m->body && m->refs > 1) q_body_load(q->vh->broker, m);
        uint8_t key[9];
        key[0] = KEY_MSG;
        store_put_be64(key + 1, m->id);
        store_del(s, key, sizeof key);
        m->stored = false;
    }
}

bool q_body_load(broker_t *b, msg_t *m)
{
    if (m->body) return true;
    if (!b->store) return false;
    uint8_t key[9];
    key[0] = KEY_MSG;
    store_put_be64(key + 1, m->id);
    void *val = NULL;
    size_t vlen = 0;
    if (store_get(b->store, key, sizeof key, &val, &vlen) != 1) {
        log_error("message %llu: body missing from store", (unsigned long long)m->id);
        return false;
    }
    bool ok = msg_body_from_record(m, val, vlen);
    free(val);
    return ok;
}

/* Reads back the bodies of the next paged-out entries at the head of the queue with one
 * iterator: consecutive messages sit next to each other in the store, so this costs about one
 * block read per few messages instead of a point lookup each. */
#define PREFETCH_WINDOW 256

static int cmp_msg_id(const void *a, const void *b)
{
    uint64_t x = (*(msg_t *const *)a)->id, y = (*(msg_t *const *)b)->id;
    return x < y ? -1 : x > y;
}

static void q_prefetch_bodies(queue_t *q)
{
    broker_t *b = q->vh->broker;
    if (!b->store || q->ready_len == 0 || ready_at(q, 0)->m->body) return;
    msg_t *want[PREFETCH_WINDOW];
    size_t n = 0;
    for (size_t i = 0; i < q->ready_len && n < PREFETCH_WINDOW; i++) {
        msg_t *m = ready_at(q, i)->m;
        if (!m->body && m->stored) want[n++] = m;
    }
    qsort(want, n, sizeof want[0], cmp_msg_id);
    uint8_t prefix = KEY_MSG;
    store_iter_t *it = store_iter_prefix(b->store, &prefix, 1);
    const void *k = NULL, *v = NULL;
    size_t kl = 0, vl = 0;
    bool have = false;
    for (size_t i = 0; i < n; i++) {
        uint8_t key[9];
        key[0] = KEY_MSG;
        store_put_be64(key + 1, want[i]->id);
        /* Walk forward a little before paying for a seek. */
        for (int steps = 0; have && steps < 4 && kl == 9 && store_get_be64((const uint8_t *)k + 1) < want[i]->id;
             steps++)
            have = store_iter_next(it, &k, &kl, &v, &vl);
        if (!have || kl != 9 || store_get_be64((const uint8_t *)k + 1) < want[i]->id) {
            store_iter_seek(it, key, sizeof key);
            have = store_iter_next(it, &k, &kl, &v, &vl);
        }
        if (have && kl == 9 && memcmp(k, key, 9) == 0) msg_body_from_record(want[i], v, vl);
    }
    store_iter_free(it);
}

/* ---- page-out of stored bodies ---- */

static void pageout_synced(void *arg)
{
    ptrvec_t *v = arg;
    for (size_t i = 0; i < v->n; i++) {
        msg_t *m = v->items[i];
        /* Only a message still stored and referenced by someone besides us is worth dropping. */
        if (m->stored && m->body && m->refs > 1 && m->body_len >= 64) {
            free(m->body);
            m->body = NULL;
        }
        msg_unref(m);
    }
    ptrvec_free(v);
    free(v);
}

/* Candidates collected during one loop iteration. Their sync callback is registered only in
 * br_pageout_flush(), after all of their writes were queued, so when it fires every record is
 * durable and readable again. */
static ptrvec_t *pageout_batch;

void q_pageout_candidate(msg_t *m)
{
    if (!pageout_batch) {
        pageout_batch = calloc(1, sizeof *pageout_batch);
        if (!pageout_batch) abort();
    }
    ptrvec_push(pageout_batch, msg_ref(m));
}

static void br_pageout_flush(broker_t *b)
{
    if (!pageout_batch) return;
    store_on_synced(b->store, pageout_synced, pageout_batch);
    pageout_batch = NULL;
}

/* ---- lifecycle ---- */

static int64_t arg_int(const amqp_table_t *t, const char *key, int64_t dflt)
{
    const amqp_value_t *v = amqp_table_get(t, key);
    int64_t i;
    return v && amqp_value_int(v, &i) ? i : dflt;
}

static char *arg_str(const amqp_table_t *t, const char *key)
{
    const amqp_value_t *v = amqp_table_get(t, key);
    if (!v || (v->type != 'S' && v->type != 'x')) return NULL;
    return strndup((const char *)v->v.str.ptr, v->v.str.len);
}

static void ttl_timer_cb(struct ev_loop *loop, ev_timer *w, int revents);
static void expires_timer_cb(struct ev_loop *loop, ev_timer *w, int revents);

static int64_t value_int(const amqp_value_t *v, int64_t dflt)
{
    int64_t i;
    return v && amqp_value_int(v, &i) ? i : dflt;
}

/* RabbitMQ's resolution for numeric limits: the lowest of argument, policy and operator policy. */
static int64_t lowest(int64_t arg, const amqp_value_t *pol, const amqp_value_t *op)
{
    int64_t best = arg;
    int64_t v = value_int(pol, -1);
    if (v >= 0 && (best < 0 || v < best)) best = v;
    v = value_int(op, -1);
    if (v >= 0 && (best < 0 || v < best)) best = v;
    return best;
}

/* For the other keys the queue's own argument wins over the policy. */
static char *arg_or_policy_str(const amqp_table_t *t, const char *arg, const policy_t *p, const char *key)
{
    char *v = arg_str(t, arg);
    if (v) return v;
    const amqp_value_t *pv = br_policy_value(p, key);
    if (pv && (pv->type == 'S' || pv->type == 'x')) return strndup((const char *)pv->v.str.ptr, pv->v.str.len);
    return NULL;
}

static int overflow_parse(const amqp_value_t *v, int dflt)
{
    if (!v || v->type != 'S') return dflt;
    if (amqp_bytes_eq_cstr(v->v.str, "reject-publish")) return OVERFLOW_REJECT_PUBLISH;
    if (amqp_bytes_eq_cstr(v->v.str, "reject-publish-dlx")) return OVERFLOW_REJECT_PUBLISH_DLX;
    if (amqp_bytes_eq_cstr(v->v.str, "drop-head")) return OVERFLOW_DROP_HEAD;
    return dflt;
}

static void enforce_limits(queue_t *q);

/* Effective settings from the x-arguments (validated by broker.c at declare) and the policies in
 * effect. Called at creation and whenever policies change. */
void q_apply_settings(queue_t *q)
{
    const amqp_table_t *t = &q->args;
    const policy_t *p = br_policy_match(q->vh, false, true, q->name, q->name_len);
    const policy_t *op = br_policy_match(q->vh, true, true, q->name, q->name_len);
    q->policy = p;
    q->operator_policy = op;
    q->msg_ttl = lowest(arg_int(t, "x-message-ttl", -1), br_policy_value(p, "message-ttl"),
                        br_policy_value(op, "message-ttl"));
    q->expires = lowest(arg_int(t, "x-expires", -1), br_policy_value(p, "expires"), br_policy_value(op, "expires"));
    q->max_len = lowest(arg_int(t, "x-max-length", -1), br_policy_value(p, "max-length"),
                        br_policy_value(op, "max-length"));
    q->max_bytes = lowest(arg_int(t, "x-max-length-bytes", -1), br_policy_value(p, "max-length-bytes"),
                          br_policy_value(op, "max-length-bytes"));
    const amqp_value_t *ov = amqp_table_get(t, "x-overflow");
    q->overflow = overflow_parse(ov ? ov : br_policy_value(p, "overflow") ? br_policy_value(p, "overflow")
                                                                         : br_policy_value(op, "overflow"),
                                 OVERFLOW_DROP_HEAD);
    free(q->dlx);
    free(q->dlrk);
    q->dlx = arg_or_policy_str(t, "x-dead-letter-exchange", p, "dead-letter-exchange");
    q->dlrk = arg_or_policy_str(t, "x-dead-letter-routing-key", p, "dead-letter-routing-key");
    const amqp_value_t *sac = amqp_table_get(t, "x-single-active-consumer");
    q->sac = sac && sac->type == 't' && sac->v.b;
    q->consumer_timeout = arg_int(t, "x-consumer-timeout", -1);
    if (q->consumer_timeout < 0) q->consumer_timeout = value_int(br_policy_value(p, "consumer-timeout"), -1);
    if (q->qq) {
        qq_settings_changed(q); /* the leader proposes them to the replicas */
        return;
    }
    if (q->levels) {
        enforce_limits(q);
        q_touch(q);
    }
}

queue_t *q_new(vhost_t *vh, const char *name, size_t len, bool durable, bool exclusive, bool auto_delete,
               uint64_t owner, amqp_bytes_t args)
{
    queue_t *q = calloc(1, sizeof *q);
    if (!q) abort();
    q->vh = vh;
    q->name = malloc(len + 1);
    if (!q->name) abort();
    memcpy(q->name, name, len);
    q->name[len] = '\0';
    q->name_len = len;
    q->durable = durable;
    q->exclusive = exclusive;
    q->auto_delete = auto_delete;
    q->owner_conn = owner;
    q->home = vh->broker->meta_applying ? vh->broker->meta_home : vh->broker->self_node;
    broker_t *b = vh->broker;
    if (b->meta_applying && b->meta_uid) { /* clustered: the same uid on every node */
        q->uid = b->meta_uid;
        if (b->next_queue_uid < q->uid) b->next_queue_uid = q->uid;
    } else {
        q->uid = ++b->next_queue_uid;
    }
    q->next_seq = 1;
    if (args.len) {
        uint8_t *copy = malloc(args.len);
        if (!copy) abort();
        memcpy(copy, args.ptr, args.len);
        q->args_raw = (amqp_bytes_t){copy, args.len};
        if (amqp_table_parse(q->args_raw, &q->args) != 0) memset(&q->args, 0, sizeof q->args);
    }
    int64_t prio = arg_int(&q->args, "x-max-priority", 0);
    q->nlevels = prio > 0 ? (uint32_t)(prio > 255 ? 255 : prio) + 1 : 1;
    q_apply_settings(q);
    q->levels = calloc(q->nlevels, sizeof *q->levels);
    if (!q->levels) abort();
    ev_timer_init(&q->ttl_timer, ttl_timer_cb, 0, 0);
    q->ttl_timer.data = q;
    ev_timer_init(&q->expires_timer, expires_timer_cb, 0, 0);
    q->expires_timer.data = q;
    q->refs = 1;
    dict_set(&vh->queues, q->name, len, q);
    q_touch(q);
    return q;
}

/* Queue record: [u64 uid][u8 flags][u32 args_len][args][u32 home node, clustered or quorum]
 * [u8 n][n x u32 member node ids, quorum queues only];
 * key 'Q' vhost \0 name. */
static size_t queue_key(const queue_t *q, uint8_t **out)
{
    size_t vl = strlen(q->vh->name);
    size_t n = 1 + vl + 1 + q->name_len;
    uint8_t *k = malloc(n);
    if (!k) abort();
    k[0] = KEY_QUEUE;
    memcpy(k + 1, q->vh->name, vl);
    k[1 + vl] = 0;
    memcpy(k + 2 + vl, q->name, q->name_len);
    *out = k;
    return n;
}

void q_persist_definition(queue_t *q)
{
    store_t *s = q->vh->broker->store;
    if (!s || !q->durable) return;
    uint8_t *key;
    size_t klen = queue_key(q, &key);
    amqp_buf_t members = {0};
    if (q->qq) qq_members_encode(q, &members);
    size_t vlen = 8 + 1 + 4 + q->args_raw.len + (q->home || q->qq ? 4 : 0) + (q->qq ? 1 + members.len : 0);
    uint8_t *val = malloc(vlen);
    if (!val) abort();
    store_put_be64(val, q->uid);
    val[8] = (uint8_t)((q->auto_delete ? 1 : 0) | (q->exclusive ? 2 : 0));
    uint32_t al = (uint32_t)q->args_raw.len;
    val[9] = (uint8_t)(al >> 24); val[10] = (uint8_t)(al >> 16); val[11] = (uint8_t)(al >> 8); val[12] = (uint8_t)al;
    if (al) memcpy(val + 13, q->args_raw.ptr, al);
    if (q->home || q->qq) {
        uint8_t *h = val + 13 + al;
        h[0] = (uint8_t)(q->home >> 24); h[1] = (uint8_t)(q->home >> 16); h[2] = (uint8_t)(q->home >> 8); h[3] = (uint8_t)q->home;
    }
    if (q->qq) { /* quorum queue: [u8 count][u32 member ids] */
        val[13 + al + 4] = (uint8_t)(members.len / 4);
        if (members.len) memcpy(val + 13 + al + 5, members.data, members.len);
    }
    amqp_buf_free(&members);
    store_put(s, key, klen, val, vlen);
    free(key);
    free(val);
}

void q_ref(queue_t *q) { q->refs++; }

void q_unref(queue_t *q)
{
    if (--q->refs) return;
    free(q->name);
    free((void *)q->args_raw.ptr);
    amqp_table_free(&q->args);
    for (uint32_t i = 0; i < q->nlevels; i++) free(q->levels[i].buf);
    free(q->levels);
    free(q->dlx);
    free(q->dlrk);
    ptrvec_free(&q->consumers);
    ptrvec_free(&q->bindings_in);
    free(q);
}

/* ---- x-expires: delete the queue after a period without use ---- */

static void expires_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    queue_t *q = w->data;
    if (q->consumers.n == 0 && !q->deleted) {
        log_debug("queue '%s' in vhost '%s' expired", q->name, q->vh->name);
        q_delete(q);
    }
}

void q_touch(queue_t *q)
{
    struct ev_loop *loop = q->vh->broker->loop;
    if (q->expires < 0 || !loop || q->deleted || rq_remote(q)) return;
    /* A quorum queue's expiry runs on the node that declared it, with the replicated count. */
    if (q->qq && q->vh->broker->self_node && q->home != q->vh->broker->self_node) return;
    ev_timer_stop(loop, &q->expires_timer);
    if (q->qq ? qq_consumer_count(q) : q->consumers.n) return; /* re-armed when the last consumer goes */
    ev_timer_set(&q->expires_timer, (double)q->expires / 1000.0, 0);
    ev_timer_start(loop, &q->expires_timer);
}

/* ---- message expiry ---- */

static void take_from_ready(queue_t *q, const qentry_t *e);

static void remove_for_good(queue_t *q, qentry_t *e, const char *dead_reason)
{
    if (dead_reason) q_dead_letter(q, e->m, dead_reason);
    unstore_entry(q, e, true);
    msg_unref(e->m);
}

/* Drops expired entries at the head of every level; arms the timer for the next expiry. */
static void expire_heads(queue_t *q)
{
    struct ev_loop *loop = q->vh->broker->loop;
    int64_t now = now_ms(q), next = 0;
    for (uint32_t l = 0; l < q->nlevels; l++) {
        qdeque_t *d = &q->levels[l];
        while (d->len && dq_at(d, 0)->expires_at && dq_at(d, 0)->expires_at <= now) {
            qentry_t e = dq_pop_front(d);
            q->ready_len--;
            take_from_ready(q, &e);
            remove_for_good(q, &e, "expired");
        }
        if (d->len && dq_at(d, 0)->expires_at && (!next || dq_at(d, 0)->expires_at < next))
            next = dq_at(d, 0)->expires_at;
    }
    if (!loop || q->deleted) return;
    ev_timer_stop(loop, &q->ttl_timer);
    if (next) {
        ev_timer_set(&q->ttl_timer, (double)(next - now) / 1000.0 + 0.0005, 0);
        ev_timer_start(loop, &q->ttl_timer);
    }
}

static void ttl_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    queue_t *q = w->data;
    q_ref(q);
    expire_heads(q);
    q_unref(q);
}

uint32_t q_message_count(queue_t *q)
{
    if (q->qq) return qq_message_count(q);
    expire_heads(q);
    return (uint32_t)q->ready_len;
}

/* The message's own TTL (expiration property) and the queue's: the lower applies. */
static int64_t entry_ttl(const queue_t *q, const msg_t *m)
{
    int64_t ttl = q->msg_ttl;
    props_core_t p;
    if (!m->has_expiration || props_core_read(m->props, m->props_len, &p) != 0 || !p.has_expiration) return ttl;
    /* Validated at publish (digits with an optional '+', at most ten years). */
    int64_t v = 0;
    for (size_t i = 0; i < p.expiration.len && i < 20; i++)
        if (p.expiration.ptr[i] >= '0' && p.expiration.ptr[i] <= '9') v = v * 10 + (p.expiration.ptr[i] - '0');
    return ttl < 0 || v < ttl ? v : ttl;
}

/* ---- publish / dispatch ---- */

static bool over_limit(const queue_t *q, uint64_t extra_len, uint64_t extra_bytes)
{
    if (q->max_len >= 0 && q->ready_len + extra_len > (uint64_t)q->max_len) return true;
    if (q->max_bytes >= 0 && q->ready_bytes + extra_bytes > (uint64_t)q->max_bytes) return true;
    return false;
}

static consumer_t *next_consumer(queue_t *q);
static void deliver_entry(queue_t *q, consumer_t *c, qentry_t *e);

/* Drops (dead-letters with reason maxlen) from the head while over a length limit. */
static void enforce_limits(queue_t *q)
{
    while (over_limit(q, 0, 0) && q->ready_len) {
        qentry_t head = ready_pop(q);
        take_from_ready(q, &head);
        remove_for_good(q, &head, "maxlen");
    }
}

int q_publish(queue_t *q, msg_t *m)
{
    broker_t *b = q->vh->broker;
    if (q->qq) { /* dead-lettering, delayed messages: enqueued without a confirm */
        qq_publish(q, m, 0, NULL, NULL, 0);
        return Q_PUB_OK;
    }
    if (rq_remote(q)) { /* dead-lettering, delayed messages: forwarded without a confirm */
        rq_publish(q, m, NULL, NULL, 0);
        return Q_PUB_OK;
    }
    if (q->overflow == OVERFLOW_DROP_HEAD && over_limit(q, 1, m->body_len) && q->ready_len == 0 &&
        q->consumers.n) {
        /* Limits apply to what would be enqueued: a consumer ready right now takes it. */
        consumer_t *c = next_consumer(q);
        if (c) {
            qentry_t e = {.m = msg_ref(m), .seq = q->next_seq++};
            q->stat_publish++;
            deliver_entry(q, c, &e);
            return Q_PUB_OK;
        }
    }
    if (q->overflow != OVERFLOW_DROP_HEAD && over_limit(q, 1, m->body_len)) {
        if (q->overflow == OVERFLOW_REJECT_PUBLISH_DLX) q_dead_letter(q, m, "maxlen");
        return Q_PUB_REJECTED;
    }
    int64_t ttl = entry_ttl(q, m);
    qentry_t e = {.m = msg_ref(m), .seq = q->next_seq++, .redelivered = 0};
    q->stat_publish++;
    if (ttl == 0) {
        /* TTL 0: delivered now to a consumer that can take it, or expired at once. */
        consumer_t *c = q->ready_len == 0 && q->consumers.n ? next_consumer(q) : NULL;
        if (c) {
            deliver_entry(q, c, &e);
            return Q_PUB_OK;
        }
        q_dead_letter(q, m, "expired");
        msg_unref(m);
        return Q_PUB_OK;
    }
    if (ttl > 0) e.expires_at = now_ms(q) + ttl;
    int rc = Q_PUB_OK;
    if (persists(q, m)) {
        e.defer_slot = defer_write(b, q, e.seq, m); /* written with the next batch, unless acked first */
        m->durable_refs++;
        rc = Q_PUB_SYNC;
        if (b->mem_body_bytes > b->page_out_threshold) q_pageout_candidate(m);
    }
    ready_push(q, e);
    q->ready_bytes += m->body_len;
    b->mem_body_bytes += m->body_len;
    enforce_limits(q);
    if (e.expires_at && !ev_is_active(&q->ttl_timer)) expire_heads(q);
    if (q->consumers.n) q_schedule(q);
    return rc;
}

static void take_from_ready(queue_t *q, const qentry_t *e)
{
    q->ready_bytes -= e->m->body_len;
    q->vh->broker->mem_body_bytes -= e->m->body_len;
}

void q_schedule(queue_t *q)
{
    if (q->scheduled || q->deleted) return;
    broker_t *b = q->vh->broker;
    q->scheduled = true;
    q_ref(q);
    q->next_sched = b->sched_head;
    b->sched_head = q;
}

static bool consumer_has_credit(consumer_t *c)
{
    if (!c->no_ack && c->prefetch && c->unacked >= c->prefetch) return false;
    return c->ops->can_deliver(c);
}

/* Consumers are sorted by priority (highest first). The highest-priority consumers with
 * credit get messages, round-robin among equals; lower ones only when those are full. With
 * single active consumer, only the first registered consumer ever gets messages. */
static consumer_t *next_consumer(queue_t *q)
{
    size_t n = q->consumers.n;
    if (n == 0) return NULL;
    if (q->sac) {
        consumer_t *c = q->consumers.items[0];
        return consumer_has_credit(c) ? c : NULL;
    }
    size_t group = 0;
    while (group < n) {
        int32_t prio = ((consumer_t *)q->consumers.items[group])->priority;
        size_t end = group;
        while (end < n && ((consumer_t *)q->consumers.items[end])->priority == prio) end++;
        size_t size = end - group;
        for (size_t tried = 0; tried < size; tried++) {
            size_t idx = group + (q->rr_next + tried) % size;
            consumer_t *c = q->consumers.items[idx];
            if (!consumer_has_credit(c)) continue;
            q->rr_next = (q->rr_next + tried + 1) % size;
            return c;
        }
        group = end;
    }
    return NULL;
}

static void deliver_entry(queue_t *q, consumer_t *c, qentry_t *e)
{
    broker_t *b = q->vh->broker;
    q->stat_deliver++;
    if (e->redelivered) q->stat_redeliver++;
    b->stat_deliver++;
    if (c->no_ack) {
        c->ops->deliver(c, q, e);
        unstore_entry(q, e, true);
        msg_unref(e->m);
    } else {
        c->unacked++;
        q->unacked++;
        c->ops->deliver(c, q, e);
    }
}

static void q_dispatch(queue_t *q)
{
    broker_t *b = q->vh->broker;
    if (rq_remote(q)) {
        rq_dispatch(q);
        return;
    }
    expire_heads(q);
    /* Bounded per pass so one busy queue cannot starve the loop; reschedules itself. */
    for (int budget = 0; budget < 1024; budget++) {
        if (q->deleted || q->ready_len == 0 || q->consumers.n == 0) return;
        consumer_t *c = next_consumer(q);
        if (!c) return;
        q_prefetch_bodies(q);
        qentry_t e = ready_pop(q);
        take_from_ready(q, &e);
        if (e.expires_at && e.expires_at <= now_ms(q)) {
            remove_for_good(q, &e, "expired");
            continue;
        }
        if (!e.m->body && !q_body_load(b, e.m)) {
            /* Cannot deliver a message we cannot read: drop it rather than loop forever. */
            remove_for_good(q, &e, NULL);
            continue;
        }
        deliver_entry(q, c, &e);
    }
    q_schedule(q);
}

void br_dispatch_pending(broker_t *b)
{
    /* Dispatching may schedule more queues (a budget ran out); loop a bounded number of times. */
    for (int round = 0; round < 4 && b->sched_head; round++) {
        queue_t *list = b->sched_head;
        b->sched_head = NULL;
        while (list) {
            queue_t *q = list;
            list = q->next_sched;
            q->scheduled = false;
            q_dispatch(q);
            rq_check_drained(q);
            q_unref(q);
        }
    }
    br_pageout_flush(b);
    rq_flush(b);
}

bool q_get(queue_t *q, qentry_t *out)
{
    broker_t *b = q->vh->broker;
    if (rq_remote(q) || q->qq) return false; /* rq_get, qq_get */
    q_touch(q);
    expire_heads(q);
    while (q->ready_len) {
        q_prefetch_bodies(q);
        qentry_t e = ready_pop(q);
        take_from_ready(q, &e);
        if (e.expires_at && e.expires_at <= now_ms(q)) {
            remove_for_good(q, &e, "expired");
            continue;
        }
        if (!e.m->body && !q_body_load(b, e.m)) {
            remove_for_good(q, &e, NULL);
            continue;
        }
        q->stat_get++;
        if (e.redelivered) q->stat_redeliver++;
        q->unacked++;
        *out = e;
        return true;
    }
    return false;
}

void q_ack(queue_t *q, const qentry_t *e)
{
    if (q->qq) return qq_settle(q, e, QSM_SETTLE);
    if (rq_remote(q)) return rq_settle(q, e, RQ_ACK);
    if (q->unacked) q->unacked--;
    q->stat_ack++;
    q->vh->broker->stat_ack++;
    unstore_entry(q, e, !q->deleted);
    msg_unref(e->m);
}

void q_discard(queue_t *q, const qentry_t *e)
{
    if (q->qq) return qq_settle(q, e, QSM_DISCARD);
    if (rq_remote(q)) return rq_settle(q, e, RQ_DISCARD);
    if (!q->deleted) q_dead_letter(q, e->m, "rejected");
    q_ack(q, e);
}

void q_requeue(queue_t *q, const qentry_t *e)
{
    if (q->qq) return qq_settle(q, e, QSM_RETURN);
    if (rq_remote(q)) return rq_settle(q, e, RQ_REQUEUE);
    if (q->unacked) q->unacked--;
    if (q->deleted) {
        unstore_entry(q, e, false);
        msg_unref(e->m);
        return;
    }
    qentry_t r = *e;
    r.redelivered = 1;
    ready_requeue(q, r);
    q->ready_bytes += r.m->body_len;
    q->vh->broker->mem_body_bytes += r.m->body_len;
    /* drop-head applies to requeued messages too: the head goes first. */
    if (q->overflow == OVERFLOW_DROP_HEAD) enforce_limits(q);
    if (r.expires_at) expire_heads(q);
    if (q->consumers.n) q_schedule(q);
}

uint32_t q_purge(queue_t *q)
{
    if (rq_remote(q) || q->qq) return 0; /* rq_purge, qq_purge */
    uint32_t n = (uint32_t)q->ready_len;
    while (q->ready_len) {
        qentry_t e = ready_pop(q);
        take_from_ready(q, &e);
        unstore_entry(q, &e, true);
        msg_unref(e.m);
    }
    return n;
}

/* ---- consumers ---- */

void q_consumer_add(queue_t *q, consumer_t *c)
{
    c->q = q;
    ptrvec_push(&q->consumers, c);
    /* Keep consumers ordered by priority, highest first; equal priorities in arrival order.
     * Single-active-consumer queues keep pure arrival order: the first one is the active one. */
    if (!q->sac) {
        for (size_t i = q->consumers.n - 1; i > 0; i--) {
            consumer_t *prev = q->consumers.items[i - 1];
            if (prev->priority >= c->priority) break;
            q->consumers.items[i] = prev;
            q->consumers.items[i - 1] = c;
        }
    }
    q->had_consumer = true;
    q_touch(q);
    q_schedule(q);
}

void q_consumer_remove(queue_t *q, consumer_t *c)
{
    if (q->qq) return qq_consumer_remove(q, c);
    if (rq_remote(q)) return rq_consumer_remove(q, c);
    ptrvec_remove(&q->consumers, c);
    if (q->rr_next >= q->consumers.n) q->rr_next = 0;
    if (q->auto_delete && q->had_consumer && q->consumers.n == 0 && !q->deleted) {
        q_delete(q);
        return;
    }
    q_touch(q);
    if (q->consumers.n) q_schedule(q);
}

/* ---- deletion ---- */

static void delete_definition(queue_t *q)
{
    store_t *s = q->vh->broker->store;
    if (!s || !q->durable) return;
    uint8_t *key;
    size_t klen = queue_key(q, &key);
    store_del(s, key, klen);
    free(key);
    uint8_t begin[9], end[9];
    begin[0] = end[0] = KEY_QINDEX;
    store_put_be64(begin + 1, q->uid);
    store_put_be64(end + 1, q->uid + 1);
    store_del_range(s, begin, sizeof begin, end, sizeof end);
}

void br_binding_remove(binding_t *bd); /* exchange.c */

void q_delete(queue_t *q)
{
    if (q->deleted) return;
    /* Clustered: a deletion this node decides on its own (exclusive owner gone, auto-delete,
     * x-expires) is a metadata change like any other, so it goes through the metadata log and
     * happens here when it applies. */
    if (meta_intercept_queue_delete(q)) return;
    q->deleted = true;
    struct ev_loop *loop = q->vh->broker->loop;
    if (loop) {
        ev_timer_stop(loop, &q->ttl_timer);
        ev_timer_stop(loop, &q->expires_timer);
    }
    dict_del(&q->vh->queues, q->name, q->name_len);
    if (rq_remote(q)) rq_queue_deleted(q);
    if (q->qq) qq_detach(q); /* its group and replica go; before the consumers are cancelled */
    /* Cancel consumers: the adapter drops its consumer record in the callback. */
    while (q->consumers.n) {
        consumer_t *c = q->consumers.items[q->consumers.n - 1];
        q->consumers.n--;
        c->q = NULL;
        c->ops->cancelled(c);
    }
    while (q->bindings_in.n) br_binding_remove(q->bindings_in.items[q->bindings_in.n - 1]);
    delete_definition(q);
    while (q->ready_len) {
        qentry_t e = ready_pop(q);
        take_from_ready(q, &e);
        unstore_entry(q, &e, false);
        msg_unref(e.m);
    }
    q_unref(q);
}
