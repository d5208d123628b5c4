/* qq_sm.c - the quorum queue state machine (see qq_sm.h for the contract).
 *
 * Role: every member of a quorum queue's Raft group applies the same committed commands to its
 * own qsm_t, so this file must be a pure function of (state, command): no clocks (time is the
 * command's now_ms), no I/O, no globals, no iteration over hash tables where order could leak
 * into effects or snapshots. Hash maps here are lookup indexes only; every observable order
 * comes from an ordered structure (deque, registration array, sorted array, linked list).
 *
 * Where a message lives (qmsg_t.where), and the structures that hold it:
 *   W_READY    one of three FIFO deques (ring buffers): returns (served first), high priority,
 *              normal priority. Ready messages are not in the id map: nothing names them by id.
 *   W_CHECKED  on its consumer's doubly linked list (O(1) unlink) and in the id map, so
 *              settle/return/discard by msg_id is O(1).
 *   W_DLX      (at-least-once) on the dead-letter list, in dead-lettering order, and in the id
 *              map under its dlx id, which is simply its msg_id (unique, never 0).
 * A message leaves the state by settle, no_ack delivery, purge, at-most-once dead-lettering or
 * DLX_SETTLE; the state holds exactly one msg_t reference per qmsg_t.
 *
 * Data flow of one qsm_apply: stamp now -> drop expired heads -> the command itself (its result
 * effect first) -> drop expired heads again -> assignment (checkout: ready messages to consumers
 * with credit) -> drop-head length limits. Assignment and limits run after every command, which
 * is simpler than knowing which commands can change them and costs one empty check when nothing
 * is ready.
 *
 * Invariants (qsm_restore refuses snapshots that break them):
 *   - counters (ready, unacked, dlx and their bytes) equal the sums over the structures;
 *   - a cancelled consumer holds at least one message (it is removed when its last one goes);
 *   - dlx messages exist only while the effective strategy is at-least-once;
 *   - an enqueuer's seen seqs are strictly ascending, all > next, at most QSM_DEDUP_WINDOW.
 *
 * Costs: enqueue, settle, return, discard, dequeue and each expiry O(1) amortised; each
 * assignment scans the registered consumers once (O(consumers): queues have few consumers and
 * many messages, and a scan keeps round-robin, priority and SAC obviously right); DOWN and
 * snapshots sort the affected checked-out ids. */
#include "broker/qq_sm.h"

#include <stdlib.h>
#include <string.h>

#include "broker/dict.h"
#include "broker/props.h"

#define QSM_WIRE_VERSION 1
/* Seen-but-not-contiguous publisher seqs kept per enqueuer; beyond it the oldest hole is given
 * up (next jumps to the smallest seen seq), so a lost seq cannot grow the set forever. */
#define QSM_DEDUP_WINDOW 4096
#define NO_EXPIRY INT64_MAX

enum { W_READY = 0, W_CHECKED = 1, W_DLX = 2 };
enum { RS_REJECTED = 0, RS_EXPIRED = 1, RS_MAXLEN = 2, RS_DELIVERY_LIMIT = 3, RS_COUNT = 4 };
static const char *const reason_names[RS_COUNT] = {"rejected", "expired", "maxlen", "delivery_limit"};

typedef struct consumer consumer_t;

typedef struct qmsg {
    msg_t *m;
    uint64_t id;
    int64_t expiry;            /* NO_EXPIRY = none */
    uint32_t acquired;         /* returns (x-delivery-count) */
    uint32_t failed;           /* delivery_count: returns because the consumer went away */
    uint8_t where;             /* W_* */
    uint8_t reason;            /* RS_*, for W_DLX */
    consumer_t *owner;         /* W_CHECKED */
    struct qmsg *prev, *next;  /* the owner's checked-out list, or the dlx list */
} qmsg_t;

typedef struct { qmsg_t *head, *tail; } mlist_t;

struct consumer {
    uint32_t node;
    uint64_t chan;
    uint8_t *tag;
    size_t tag_len;
    uint32_t prefetch;
    int32_t priority;
    uint8_t flags;
    bool cancelled;            /* also: the holder of unsettled basic.get messages (tag "") */
    uint32_t n_checked;
    mlist_t checked;
};

typedef struct {
    uint32_t node;
    uint64_t chan;
    uint64_t next;             /* every seq < next has been seen */
    uint64_t *seen;            /* seen seqs > next, ascending, in seen[head .. len) */
    uint32_t head, len, cap;
} enqueuer_t;

/* A ready deque only ever gains messages at its tail and loses them at its head (FIFO), and a
 * message does not change while it is in one. So in a META snapshot, every message but the head
 * encodes exactly as it did in the previous one (relative to the same predecessor): dq_enc
 * keeps those encodings, and a snapshot of a long queue costs O(messages added since the last
 * one) instead of O(live) - at a million messages that was 80 ms of the event loop per snapshot.
 * Elements are named by push number: the element at position i has number popped + i. */
typedef struct dq_enc dq_enc_t;
typedef struct {
    qmsg_t **v;
    size_t cap, head, len; /* cap: power of two */
    uint64_t popped;       /* messages ever popped */
    dq_enc_t *enc;         /* META encodings (see above); not part of the state */
} deque_t;
typedef struct { uint64_t *keys; qmsg_t **vals; size_t cap, n; } idmap_t; /* key 0 = empty */

struct qsm {
    struct qsm_config cfg;
    uint64_t next_id;
    deque_t returns, hi, lo;
    uint8_t hi_streak;         /* high messages served since the last normal one (0..2) */
    idmap_t ids;
    consumer_t **cons;         /* registration order */
    uint32_t n_cons, cap_cons;
    int64_t rr_last;           /* index in cons of the consumer served last, -1 = none */
    dict_t con_index;          /* (node, chan, tag) -> consumer_t*, lookup only */
    enqueuer_t *enq;           /* sorted by (node, chan) */
    size_t n_enq, cap_enq;
    /* Per node, the boot its last restart DOWN kept (keep_boot): a CHECKOUT from a channel of an
     * earlier boot is a late retry of a dead channel's command and is ignored (it would register
     * a consumer nobody serves and pin the messages it is given). Ascending by node. */
    struct boot_floor { uint32_t node, boot; } *floors;
    size_t n_floors, cap_floors;
    mlist_t dlx_list;
    uint64_t ready, ready_bytes, unacked, unacked_bytes, dlx, dlx_bytes;
    uint64_t enqueued_total, delivered_total, settled_total, returned_total, dead_lettered_total;
    /* Only during qsm_apply. */
    int64_t now;
    const struct qsm_effects *fx;
};

/* ---- small helpers ------------------------------------------------------------------------- */

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) abort();
    return p;
}

static void *xcalloc(size_t n, size_t sz)
{
    void *p = calloc(n ? n : 1, sz);
    if (!p) abort();
    return p;
}

static void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n ? n : 1);
    if (!p) abort();
    return p;
}

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static int64_t sat_add(int64_t a, int64_t b) /* b >= 0 */
{
    return a > INT64_MAX - b ? INT64_MAX : a + b;
}

static uint64_t msg_size(const qmsg_t *q) { return q->m->body_len; }

static bool alo_effective(const struct qsm_config *c)
{
    return c->dlx_strategy == QSM_AT_LEAST_ONCE && c->overflow == QSM_REJECT_PUBLISH && c->dead_letter;
}

/* The broker core reads priority and persistence from msg_t fields the channel normally fills
 * in at publish; a message rebuilt from a record has them unset, so take them from the props. */
static void msg_fill_from_props(msg_t *m)
{
    props_core_t p;
    if (props_core_read(m->props, m->props_len, &p) != 0) return;
    if (p.has_priority) m->priority = p.priority;
    if (p.has_delivery_mode) m->persistent = p.delivery_mode == 2;
}

static qmsg_t *qmsg_new(msg_t *m, uint64_t id, int64_t expiry)
{
    qmsg_t *q = xcalloc(1, sizeof *q);
    q->m = m;
    q->id = id;
    m->id = id; /* the host keys the message's stored body by it */
    q->expiry = expiry;
    return q;
}

static void qmsg_free(qmsg_t *q)
{
    msg_unref(q->m);
    free(q);
}

/* A message leaves the state during qsm_apply: the host hears of it (removed effect) so that
 * it can forget the body it may have stored for it. */
static void qmsg_gone(qsm_t *s, qmsg_t *q)
{
    if (s->fx && s->fx->removed) s->fx->removed(s->fx->ud, q->id, q->m);
    qmsg_free(q);
}

/* ---- deque of ready messages --------------------------------------------------------------- */

static void dq_resize(deque_t *d, size_t ncap)
{
    qmsg_t **v = xmalloc(ncap * sizeof *v);
    for (size_t i = 0; i < d->len; i++) v[i] = d->v[(d->head + i) & (d->cap - 1)];
    free(d->v);
    d->v = v;
    d->cap = ncap;
    d->head = 0;
}

static void dq_push(deque_t *d, qmsg_t *q)
{
    if (d->len == d->cap) dq_resize(d, d->cap ? d->cap * 2 : 16);
    d->v[(d->head + d->len) & (d->cap - 1)] = q;
    d->len++;
}

static qmsg_t *dq_front(const deque_t *d) { return d->len ? d->v[d->head] : NULL; }
static qmsg_t *dq_at(const deque_t *d, size_t i) { return d->v[(d->head + i) & (d->cap - 1)]; }

static qmsg_t *dq_pop(deque_t *d)
{
    qmsg_t *q = d->v[d->head];
    d->head = (d->head + 1) & (d->cap - 1);
    d->len--;
    d->popped++;
    /* Give memory back after a large backlog drains (1M messages = 8 MB of slots). */
    if (d->cap > 64 && d->len * 8 < d->cap) dq_resize(d, d->cap / 2);
    return q;
}

static void dq_enc_free(dq_enc_t *e);

static void dq_free(deque_t *d)
{
    while (d->len) qmsg_free(dq_pop(d));
    dq_enc_free(d->enc);
    free(d->v);
    memset(d, 0, sizeof *d);
}

/* ---- id map: msg_id -> checked-out or dead-lettered message ---------------------------------- */

static void idmap_insert_raw(idmap_t *m, uint64_t k, qmsg_t *v)
{
    size_t mask = m->cap - 1, i = mix64(k) & mask;
    while (m->keys[i]) i = (i + 1) & mask;
    m->keys[i] = k;
    m->vals[i] = v;
    m->n++;
}

static void idmap_rehash(idmap_t *m, size_t ncap)
{
    uint64_t *ok = m->keys;
    qmsg_t **ov = m->vals;
    size_t ocap = m->cap;
    m->keys = xcalloc(ncap, sizeof *m->keys);
    m->vals = xcalloc(ncap, sizeof *m->vals);
    m->cap = ncap;
    m->n = 0;
    for (size_t i = 0; i < ocap; i++)
        if (ok[i]) idmap_insert_raw(m, ok[i], ov[i]);
    free(ok);
    free(ov);
}

/* k must not be present (ids are unique). */
static void idmap_put(idmap_t *m, uint64_t k, qmsg_t *v)
{
    if ((m->n + 1) * 4 > m->cap * 3) idmap_rehash(m, m->cap ? m->cap * 2 : 64);
    idmap_insert_raw(m, k, v);
}

static size_t idmap_slot(const idmap_t *m, uint64_t k)
{
    if (!m->cap || !k) return SIZE_MAX;
    size_t mask = m->cap - 1, i = mix64(k) & mask;
    while (m->keys[i]) {
        if (m->keys[i] == k) return i;
        i = (i + 1) & mask;
    }
    return SIZE_MAX;
}

static qmsg_t *idmap_get(const idmap_t *m, uint64_t k)
{
    size_t i = idmap_slot(m, k);
    return i == SIZE_MAX ? NULL : m->vals[i];
}

/* Backward-shift deletion (no tombstones, so lookups never slow down with churn). */
static void idmap_del(idmap_t *m, uint64_t k)
{
    size_t i = idmap_slot(m, k);
    if (i == SIZE_MAX) return;
    size_t mask = m->cap - 1, j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (!m->keys[j]) break;
        size_t h = mix64(m->keys[j]) & mask;
        /* The entry at j may fill the hole at i unless its home lies cyclically in (i, j]. */
        bool stays = i < j ? (h > i && h <= j) : (h > i || h <= j);
        if (!stays) {
            m->keys[i] = m->keys[j];
            m->vals[i] = m->vals[j];
            i = j;
        }
    }
    m->keys[i] = 0;
    m->vals[i] = NULL;
    m->n--;
    if (m->cap > 1024 && m->n * 8 < m->cap) idmap_rehash(m, m->cap / 2);
}

static void idmap_free(idmap_t *m)
{
    free(m->keys);
    free(m->vals);
    memset(m, 0, sizeof *m);
}

/* ---- intrusive message lists ----------------------------------------------------------------- */

static void ml_append(mlist_t *l, qmsg_t *q)
{
    q->next = NULL;
    q->prev = l->tail;
    if (l->tail) l->tail->next = q;
    else l->head = q;
    l->tail = q;
}

static void ml_unlink(mlist_t *l, qmsg_t *q)
{
    if (q->prev) q->prev->next = q->next;
    else l->head = q->next;
    if (q->next) q->next->prev = q->prev;
    else l->tail = q->prev;
    q->prev = q->next = NULL;
}

static int cmp_qmsg_id(const void *a, const void *b)
{
    uint64_t x = (*(qmsg_t *const *)a)->id, y = (*(qmsg_t *const *)b)->id;
    return x < y ? -1 : x > y;
}

/* A consumer's checked-out messages in msg_id order (the order of returns and snapshots). */
static qmsg_t **checked_sorted(const consumer_t *c)
{
    qmsg_t **v = xmalloc(c->n_checked * sizeof *v);
    size_t n = 0;
    for (qmsg_t *q = c->checked.head; q; q = q->next) v[n++] = q;
    qsort(v, n, sizeof *v, cmp_qmsg_id);
    return v;
}

/* ---- effects --------------------------------------------------------------------------------- */

static void fx_deliver(qsm_t *s, const consumer_t *c, qmsg_t *q)
{
    if (s->fx && s->fx->deliver)
        s->fx->deliver(s->fx->ud, c->node, c->chan, (amqp_bytes_t){c->tag, c->tag_len}, q->id, q->m, q->acquired,
                       q->acquired > 0);
}

static void fx_result(qsm_t *s, uint32_t node, uint64_t req, const struct qsm_result *r)
{
    if (req && s->fx && s->fx->result) s->fx->result(s->fx->ud, node, req, r);
}

static void fx_dead_letter(qsm_t *s, qmsg_t *q, uint64_t dlx_id)
{
    if (s->fx && s->fx->dead_letter) s->fx->dead_letter(s->fx->ud, q->m, reason_names[q->reason], q->acquired, dlx_id);
}

/* ---- consumers --------------------------------------------------------------------------------- */

/* Lookup key: node (4) + chan (8) + tag. Short tags use the caller's buffer. */
static uint8_t *con_key(uint8_t *buf, size_t bufsz, uint32_t node, uint64_t chan, const uint8_t *tag, size_t tag_len,
                        size_t *klen)
{
    *klen = 12 + tag_len;
    uint8_t *k = *klen <= bufsz ? buf : xmalloc(*klen);
    for (int i = 0; i < 4; i++) k[i] = (uint8_t)(node >> (24 - 8 * i));
    for (int i = 0; i < 8; i++) k[4 + i] = (uint8_t)(chan >> (56 - 8 * i));
    if (tag_len) memcpy(k + 12, tag, tag_len);
    return k;
}

static consumer_t *con_find(const qsm_t *s, uint32_t node, uint64_t chan, amqp_bytes_t tag)
{
    uint8_t buf[300];
    size_t klen;
    uint8_t *k = con_key(buf, sizeof buf, node, chan, tag.ptr, tag.len, &klen);
    consumer_t *c = dict_get(&s->con_index, k, klen);
    if (k != buf) free(k);
    return c;
}

static void con_index_set(qsm_t *s, consumer_t *c, bool add)
{
    uint8_t buf[300];
    size_t klen;
    uint8_t *k = con_key(buf, sizeof buf, c->node, c->chan, c->tag, c->tag_len, &klen);
    if (add) dict_set(&s->con_index, k, klen, c);
    else dict_del(&s->con_index, k, klen);
    if (k != buf) free(k);
}

static void con_append(qsm_t *s, consumer_t *c)
{
    if (s->n_cons == s->cap_cons) {
        s->cap_cons = s->cap_cons ? s->cap_cons * 2 : 8;
        s->cons = xrealloc(s->cons, s->cap_cons * sizeof *s->cons);
    }
    s->cons[s->n_cons++] = c;
}

static consumer_t *con_new(qsm_t *s, uint32_t node, uint64_t chan, amqp_bytes_t tag)
{
    consumer_t *c = xcalloc(1, sizeof *c);
    c->node = node;
    c->chan = chan;
    c->tag_len = tag.len;
    c->tag = tag.len ? xmalloc(tag.len) : NULL;
    if (tag.len) memcpy(c->tag, tag.ptr, tag.len);
    con_append(s, c);
    con_index_set(s, c, true);
    return c;
}

static uint32_t con_index_of(const qsm_t *s, const consumer_t *c)
{
    for (uint32_t i = 0; i < s->n_cons; i++)
        if (s->cons[i] == c) return i;
    abort(); /* every consumer is in the array */
}

/* Takes c out of the registration order, keeping the round-robin cursor on the same
 * successor: the consumer after the removed one is still the next to be served. */
static void con_detach(qsm_t *s, consumer_t *c)
{
    uint32_t i = con_index_of(s, c);
    memmove(s->cons + i, s->cons + i + 1, (s->n_cons - i - 1) * sizeof *s->cons);
    s->n_cons--;
    if (s->rr_last >= (int64_t)i) s->rr_last--;
}

/* The consumer must hold no messages. */
static void con_remove(qsm_t *s, consumer_t *c)
{
    con_detach(s, c);
    con_index_set(s, c, false);
    free(c->tag);
    free(c);
}

static void con_maybe_remove(qsm_t *s, consumer_t *c)
{
    if (c->cancelled && c->n_checked == 0) con_remove(s, c);
}

/* SAC: the earliest registered consumer that is not cancelled. */
static consumer_t *sac_active(const qsm_t *s)
{
    for (uint32_t i = 0; i < s->n_cons; i++)
        if (!s->cons[i]->cancelled) return s->cons[i];
    return NULL;
}

static bool has_credit(const consumer_t *c)
{
    return !c->cancelled && (c->prefetch == 0 || c->n_checked < c->prefetch);
}

/* The next consumer to serve: the highest priority with credit, and among equals the first
 * after the one served last (so each gets one message per turn). */
static consumer_t *next_consumer(const qsm_t *s, uint32_t *idx)
{
    if (s->cfg.single_active) {
        consumer_t *a = sac_active(s);
        if (!a || !has_credit(a)) return NULL;
        *idx = con_index_of(s, a);
        return a;
    }
    uint32_t n = s->n_cons, start = (uint32_t)((s->rr_last + 1) % (n ? n : 1));
    consumer_t *best = NULL;
    for (uint32_t k = 0; k < n; k++) {
        uint32_t i = (start + k) % n;
        consumer_t *c = s->cons[i];
        if (has_credit(c) && (!best || c->priority > best->priority)) {
            best = c;
            *idx = i;
        }
    }
    return best;
}

/* ---- enqueuers (publisher dedup) ----------------------------------------------------------------- */

static int enq_cmp(uint32_t node, uint64_t chan, const enqueuer_t *e)
{
    if (node != e->node) return node < e->node ? -1 : 1;
    if (chan != e->chan) return chan < e->chan ? -1 : 1;
    return 0;
}

/* Index of (node, chan) or of where it would be inserted; *found says which. */
static size_t enq_search(const qsm_t *s, uint32_t node, uint64_t chan, bool *found)
{
    size_t lo = 0, hi = s->n_enq;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = enq_cmp(node, chan, &s->enq[mid]);
        if (c == 0) {
            *found = true;
            return mid;
        }
        if (c < 0) hi = mid;
        else lo = mid + 1;
    }
    *found = false;
    return lo;
}

static enqueuer_t *enq_get_or_add(qsm_t *s, uint32_t node, uint64_t chan)
{
    bool found;
    size_t i = enq_search(s, node, chan, &found);
    if (found) return &s->enq[i];
    if (s->n_enq == s->cap_enq) {
        s->cap_enq = s->cap_enq ? s->cap_enq * 2 : 8;
        s->enq = xrealloc(s->enq, s->cap_enq * sizeof *s->enq);
    }
    memmove(s->enq + i + 1, s->enq + i, (s->n_enq - i) * sizeof *s->enq);
    s->n_enq++;
    s->enq[i] = (enqueuer_t){.node = node, .chan = chan, .next = 1};
    return &s->enq[i];
}

static bool seq_in_seen(const enqueuer_t *e, uint64_t seq)
{
    uint32_t lo = e->head, hi = e->len;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (e->seen[mid] == seq) return true;
        if (e->seen[mid] < seq) lo = mid + 1;
        else hi = mid;
    }
    return false;
}

static bool seq_seen(const enqueuer_t *e, uint64_t seq) { return seq < e->next || seq_in_seen(e, seq); }

/* Moves next over seen seqs that have become contiguous with it. */
static void seq_collapse(enqueuer_t *e)
{
    while (e->head < e->len && e->seen[e->head] == e->next) {
        e->head++;
        e->next++;
    }
    if (e->head == e->len) e->head = e->len = 0;
}

static void seq_mark(enqueuer_t *e, uint64_t seq)
{
    if (seq == e->next) {
        e->next++;
        seq_collapse(e);
        return;
    }
    if (e->len == e->cap) {
        if (e->head > 0) { /* reuse the consumed front before growing */
            memmove(e->seen, e->seen + e->head, (e->len - e->head) * sizeof *e->seen);
            e->len -= e->head;
            e->head = 0;
        } else {
            e->cap = e->cap ? e->cap * 2 : 16;
            e->seen = xrealloc(e->seen, e->cap * sizeof *e->seen);
        }
    }
    uint32_t pos = e->len; /* usually seqs arrive ascending: append */
    while (pos > e->head && e->seen[pos - 1] > seq) pos--;
    memmove(e->seen + pos + 1, e->seen + pos, (e->len - pos) * sizeof *e->seen);
    e->seen[pos] = seq;
    e->len++;
    if (e->len - e->head > QSM_DEDUP_WINDOW) { /* give up the oldest hole */
        e->next = e->seen[e->head];
        seq_collapse(e);
    }
}

static void enq_free(enqueuer_t *e) { free(e->seen); }

/* ---- moving messages ------------------------------------------------------------------------- */

static void ready_push(qsm_t *s, deque_t *d, qmsg_t *q)
{
    q->where = W_READY;
    q->owner = NULL;
    dq_push(d, q);
    s->ready++;
    s->ready_bytes += msg_size(q);
}

static qmsg_t *ready_pop(qsm_t *s, deque_t *d)
{
    qmsg_t *q = dq_pop(d);
    s->ready--;
    s->ready_bytes -= msg_size(q);
    return q;
}

static bool is_expired(const qsm_t *s, const qmsg_t *q) { return q->expiry <= s->now; }

/* Next ready message in service order: returns, then high/normal two to one. */
static qmsg_t *pop_next(qsm_t *s)
{
    if (s->returns.len) return ready_pop(s, &s->returns);
    bool take_hi = s->hi.len && (!s->lo.len || s->hi_streak < 2);
    if (take_hi) {
        if (s->hi_streak < 2) s->hi_streak++;
        return ready_pop(s, &s->hi);
    }
    if (s->lo.len) {
        s->hi_streak = 0;
        return ready_pop(s, &s->lo);
    }
    return NULL;
}

static void checked_detach(qsm_t *s, qmsg_t *q)
{
    consumer_t *c = q->owner;
    ml_unlink(&c->checked, q);
    c->n_checked--;
    idmap_del(&s->ids, q->id);
    s->unacked--;
    s->unacked_bytes -= msg_size(q);
    q->owner = NULL;
}

/* q is detached from every structure. At-most-once: reported (if there is a DLX) and gone.
 * At-least-once: kept, reported with its dlx id, until QSM_DLX_SETTLE. */
static void dead_letter(qsm_t *s, qmsg_t *q, int reason)
{
    s->dead_lettered_total++;
    q->reason = (uint8_t)reason;
    if (!s->cfg.dead_letter) {
        qmsg_gone(s, q);
        return;
    }
    if (alo_effective(&s->cfg)) {
        q->where = W_DLX;
        ml_append(&s->dlx_list, q);
        idmap_put(&s->ids, q->id, q);
        s->dlx++;
        s->dlx_bytes += msg_size(q);
        fx_dead_letter(s, q, q->id);
        return;
    }
    fx_dead_letter(s, q, 0);
    qmsg_gone(s, q);
}

/* A detached checked-out message goes back to the returns deque, or to the DLX when it has
 * been acquired more often than the delivery limit allows. */
static void return_msg(qsm_t *s, qmsg_t *q, bool delivery_failed)
{
    q->acquired++;
    if (delivery_failed) q->failed++;
    if (s->cfg.delivery_limit >= 0 && q->acquired > (uint64_t)s->cfg.delivery_limit) {
        dead_letter(s, q, RS_DELIVERY_LIMIT);
        return;
    }
    s->returned_total++;
    ready_push(s, &s->returns, q);
}

/* Next deliverable message; expired ones met on the way are dead-lettered. */
static qmsg_t *take_live(qsm_t *s)
{
    qmsg_t *q;
    while ((q = pop_next(s)) && is_expired(s, q)) dead_letter(s, q, RS_EXPIRED);
    return q;
}

static void expire_heads(qsm_t *s)
{
    deque_t *ds[3] = {&s->returns, &s->hi, &s->lo};
    for (int i = 0; i < 3; i++) {
        qmsg_t *q;
        while ((q = dq_front(ds[i])) && is_expired(s, q)) dead_letter(s, ready_pop(s, ds[i]), RS_EXPIRED);
    }
}

static void check_out(qsm_t *s, consumer_t *c, qmsg_t *q)
{
    q->where = W_CHECKED;
    q->owner = c;
    ml_append(&c->checked, q);
    c->n_checked++;
    idmap_put(&s->ids, q->id, q);
    s->unacked++;
    s->unacked_bytes += msg_size(q);
}

/* Hands q to c: checked out, or settled at once for no_ack. */
static void assign(qsm_t *s, consumer_t *c, qmsg_t *q)
{
    s->delivered_total++;
    if (c->flags & QSM_F_NO_ACK) {
        s->settled_total++;
        fx_deliver(s, c, q);
        qmsg_gone(s, q);
        return;
    }
    check_out(s, c, q);
    fx_deliver(s, c, q);
}

static void checkout(qsm_t *s)
{
    expire_heads(s); /* again: the command may have put an expired message at a head (a return) */
    while (s->ready) {
        uint32_t idx = 0;
        consumer_t *c = next_consumer(s, &idx);
        if (!c) return;
        qmsg_t *q = take_live(s);
        if (!q) return;
        s->rr_last = idx;
        assign(s, c, q);
    }
}

/* Limits count ready and (at-least-once) dead-lettered-but-unsettled messages. */
static bool over_limit(const qsm_t *s, bool or_at)
{
    uint64_t n = s->ready + s->dlx, b = s->ready_bytes + s->dlx_bytes;
    const struct qsm_config *c = &s->cfg;
    if (or_at)
        return (c->max_length >= 0 && n >= (uint64_t)c->max_length) ||
               (c->max_bytes >= 0 && b >= (uint64_t)c->max_bytes);
    return (c->max_length >= 0 && n > (uint64_t)c->max_length) || (c->max_bytes >= 0 && b > (uint64_t)c->max_bytes);
}

static void enforce_drop_head(qsm_t *s)
{
    if (s->cfg.overflow != QSM_DROP_HEAD) return;
    while (s->ready && over_limit(s, false)) {
        qmsg_t *q = pop_next(s);
        dead_letter(s, q, is_expired(s, q) ? RS_EXPIRED : RS_MAXLEN);
    }
}

/* ---- commands ------------------------------------------------------------------------------------ */

/* Apply reads the decoded big-endian ids, or ids_in when a caller built the command itself. */
static uint64_t cmd_id(const struct qsm_cmd *c, uint32_t i)
{
    return c->ids ? qsm_cmd_id(c, i) : c->ids_in ? c->ids_in[i] : 0;
}

static int64_t expiry_for(const qsm_t *s, const struct qsm_cmd *c)
{
    int64_t ttl = s->cfg.msg_ttl;
    if (c->expiration_ms >= 0 && (ttl < 0 || c->expiration_ms < ttl)) ttl = c->expiration_ms;
    if (ttl < 0) return NO_EXPIRY;
    /* As rabbit_fifo: TTL 0 lives through its own command, so a waiting consumer gets it. */
    return sat_add(c->now_ms, ttl ? ttl : 1);
}

static void op_enqueue(qsm_t *s, const struct qsm_cmd *c)
{
    struct qsm_result r = {.status = QSM_R_OK};
    enqueuer_t *e = enq_get_or_add(s, c->node, c->chan);
    msg_t *m = NULL;
    if (c->seq && seq_seen(e, c->seq)) r.status = QSM_R_DUPLICATE;
    else if (s->cfg.overflow == QSM_REJECT_PUBLISH && over_limit(s, true)) r.status = QSM_R_REJECTED;
    else if (!(m = msg_from_record(c->msg.ptr, c->msg.len, true))) r.status = QSM_R_REJECTED;
    if (m) {
        /* A rejected seq is not marked seen: a resend of it may be accepted, never confirmed
         * as a duplicate of a message that was not enqueued. */
        if (c->seq) seq_mark(e, c->seq);
        msg_fill_from_props(m);
        qmsg_t *q = qmsg_new(m, s->next_id++, expiry_for(s, c));
        ready_push(s, m->priority > 4 ? &s->hi : &s->lo, q);
        s->enqueued_total++;
        if (s->fx && s->fx->enqueued) s->fx->enqueued(s->fx->ud, q->id, m);
    }
    fx_result(s, c->node, c->req, &r);
}

static uint32_t boot_floor(const qsm_t *s, uint32_t node)
{
    for (size_t i = 0; i < s->n_floors; i++)
        if (s->floors[i].node == node) return s->floors[i].boot;
    return 0;
}

static void raise_boot_floor(qsm_t *s, uint32_t node, uint32_t boot)
{
    size_t i = 0;
    while (i < s->n_floors && s->floors[i].node < node) i++;
    if (i < s->n_floors && s->floors[i].node == node) {
        if (boot > s->floors[i].boot) s->floors[i].boot = boot;
        return;
    }
    if (s->n_floors == s->cap_floors)
        s->floors = xrealloc(s->floors, (s->cap_floors = s->cap_floors ? s->cap_floors * 2 : 4) * sizeof *s->floors);
    memmove(s->floors + i + 1, s->floors + i, (s->n_floors - i) * sizeof *s->floors);
    s->floors[i] = (struct boot_floor){node, boot};
    s->n_floors++;
}

static void op_checkout(qsm_t *s, const struct qsm_cmd *c)
{
    if ((uint32_t)(c->chan >> 32) < boot_floor(s, c->node)) return; /* a channel of an earlier boot */
    consumer_t *k = con_find(s, c->node, c->chan, c->tag);
    if (!k) {
        k = con_new(s, c->node, c->chan, c->tag);
    } else if (k->cancelled) {
        /* Consuming again under a cancelled (or basic.get) tag is a new registration. */
        con_detach(s, k);
        con_append(s, k);
        k->cancelled = false;
    }
    k->prefetch = c->prefetch;
    k->priority = c->priority;
    k->flags = c->flags & (QSM_F_NO_ACK | QSM_F_EXCLUSIVE);
}

static void op_cancel(qsm_t *s, const struct qsm_cmd *c)
{
    consumer_t *k = con_find(s, c->node, c->chan, c->tag);
    if (!k || k->cancelled) return;
    k->cancelled = true;
    con_maybe_remove(s, k);
}

/* SETTLE, RETURN, DISCARD: only messages checked out to a consumer of the named channel
 * (node, chan); other ids are ignored. The tag is not needed: an AMQP channel settles by
 * delivery tag, which names a message, whichever of its consumers (or basic.get) took it. */
static void op_settle_like(qsm_t *s, const struct qsm_cmd *c)
{
    for (uint32_t i = 0; i < c->n_ids; i++) {
        qmsg_t *q = idmap_get(&s->ids, cmd_id(c, i));
        if (!q || q->where != W_CHECKED || q->owner->node != c->node || q->owner->chan != c->chan) continue;
        consumer_t *k = q->owner;
        checked_detach(s, q);
        if (c->op == QSM_SETTLE) {
            s->settled_total++;
            qmsg_gone(s, q);
        } else if (c->op == QSM_RETURN) {
            return_msg(s, q, false);
        } else {
            dead_letter(s, q, RS_REJECTED);
        }
        con_maybe_remove(s, k);
    }
}

static void op_dequeue(qsm_t *s, const struct qsm_cmd *c)
{
    struct qsm_result r = {.status = QSM_R_EMPTY};
    qmsg_t *q = take_live(s);
    if (!q) {
        fx_result(s, c->node, c->req, &r);
        return;
    }
    s->delivered_total++;
    r = (struct qsm_result){.status = QSM_R_OK, .m = q->m, .msg_id = q->id, .delivery_count = q->acquired,
                            .redelivered = q->acquired > 0};
    if (c->flags & QSM_F_NO_ACK) {
        s->settled_total++;
        r.count = (uint32_t)s->ready;
        fx_result(s, c->node, c->req, &r);
        qmsg_gone(s, q);
        return;
    }
    /* Unsettled gets are held by a cancelled pseudo-consumer (node, chan, ""): never served,
     * removed with its last message, returned like any other when the channel goes down. */
    amqp_bytes_t none = {(const uint8_t *)"", 0};
    consumer_t *k = con_find(s, c->node, c->chan, none);
    if (!k) {
        k = con_new(s, c->node, c->chan, none);
        k->cancelled = true;
    }
    check_out(s, k, q);
    r.count = (uint32_t)s->ready;
    fx_result(s, c->node, c->req, &r);
}

static bool down_matches(const struct qsm_cmd *c, uint32_t node, uint64_t chan)
{
    if (node != c->node || (c->chan && chan != c->chan)) return false;
    return !(c->seq && (chan >> 32) == c->seq);
}

static void op_down(qsm_t *s, const struct qsm_cmd *c)
{
    if (c->chan == 0 && (uint32_t)c->seq) raise_boot_floor(s, c->node, (uint32_t)c->seq); /* boots are u32 */
    /* Collect the gone consumers' messages first, return them oldest first afterwards. */
    qmsg_t **back = NULL;
    size_t n = 0, cap = 0;
    for (uint32_t i = 0; i < s->n_cons;) {
        consumer_t *k = s->cons[i];
        if (!down_matches(c, k->node, k->chan)) {
            i++;
            continue;
        }
        while (k->checked.head) {
            qmsg_t *q = k->checked.head;
            checked_detach(s, q);
            if (n == cap) back = xrealloc(back, (cap = cap ? cap * 2 : 16) * sizeof *back);
            back[n++] = q;
        }
        con_remove(s, k);
    }
    if (n) qsort(back, n, sizeof *back, cmp_qmsg_id);
    for (size_t i = 0; i < n; i++) return_msg(s, back[i], true);
    free(back);
    size_t w = 0;
    for (size_t i = 0; i < s->n_enq; i++) {
        if (down_matches(c, s->enq[i].node, s->enq[i].chan)) enq_free(&s->enq[i]);
        else s->enq[w++] = s->enq[i];
    }
    s->n_enq = w;
}

static void op_purge(qsm_t *s, const struct qsm_cmd *c)
{
    struct qsm_result r = {.status = QSM_R_OK};
    deque_t *ds[3] = {&s->returns, &s->hi, &s->lo};
    for (int i = 0; i < 3; i++)
        while (ds[i]->len) {
            qmsg_gone(s, ready_pop(s, ds[i]));
            r.count++;
        }
    fx_result(s, c->node, c->req, &r);
}

static bool config_valid(const struct qsm_config *c)
{
    return c->overflow <= QSM_REJECT_PUBLISH && c->dlx_strategy <= QSM_AT_LEAST_ONCE;
}

static void op_config(qsm_t *s, const struct qsm_cmd *c)
{
    if (!config_valid(&c->config)) return; /* only a hand-built command can be invalid */
    bool was_alo = alo_effective(&s->cfg);
    s->cfg = c->config;
    if (!was_alo || alo_effective(&s->cfg)) return;
    /* Leaving at-least-once: what still waits for the DLX goes to it at most once now. */
    while (s->dlx_list.head) {
        qmsg_t *q = s->dlx_list.head;
        ml_unlink(&s->dlx_list, q);
        idmap_del(&s->ids, q->id);
        s->dlx--;
        s->dlx_bytes -= msg_size(q);
        if (s->cfg.dead_letter) fx_dead_letter(s, q, 0);
        qmsg_gone(s, q);
    }
}

static void op_dlx_settle(qsm_t *s, const struct qsm_cmd *c)
{
    for (uint32_t i = 0; i < c->n_ids; i++) {
        qmsg_t *q = idmap_get(&s->ids, cmd_id(c, i));
        if (!q || q->where != W_DLX) continue;
        ml_unlink(&s->dlx_list, q);
        idmap_del(&s->ids, q->id);
        s->dlx--;
        s->dlx_bytes -= msg_size(q);
        qmsg_gone(s, q);
    }
}

/* ---- public: lifecycle, apply, queries -------------------------------------------------------- */

void qsm_config_defaults(struct qsm_config *c)
{
    *c = (struct qsm_config){.delivery_limit = 20, .max_length = -1, .max_bytes = -1, .msg_ttl = -1,
                             .overflow = QSM_DROP_HEAD, .dlx_strategy = QSM_AT_MOST_ONCE};
}

qsm_t *qsm_new(const struct qsm_config *initial)
{
    qsm_t *s = xcalloc(1, sizeof *s);
    if (initial && config_valid(initial)) s->cfg = *initial;
    else qsm_config_defaults(&s->cfg);
    s->next_id = 1;
    s->rr_last = -1;
    dict_init(&s->con_index);
    return s;
}

void qsm_free(qsm_t *s)
{
    if (!s) return;
    dq_free(&s->returns);
    dq_free(&s->hi);
    dq_free(&s->lo);
    for (uint32_t i = 0; i < s->n_cons; i++) {
        consumer_t *c = s->cons[i];
        while (c->checked.head) {
            qmsg_t *q = c->checked.head;
            ml_unlink(&c->checked, q);
            qmsg_free(q);
        }
        free(c->tag);
        free(c);
    }
    free(s->cons);
    while (s->dlx_list.head) {
        qmsg_t *q = s->dlx_list.head;
        ml_unlink(&s->dlx_list, q);
        qmsg_free(q);
    }
    for (size_t i = 0; i < s->n_enq; i++) enq_free(&s->enq[i]);
    free(s->enq);
    free(s->floors);
    idmap_free(&s->ids);
    dict_free(&s->con_index);
    free(s);
}

void qsm_apply(qsm_t *s, const struct qsm_cmd *c, const struct qsm_effects *fx)
{
    s->now = c->now_ms;
    s->fx = fx;
    expire_heads(s);
    switch (c->op) {
    case QSM_ENQUEUE: op_enqueue(s, c); break;
    case QSM_CHECKOUT: op_checkout(s, c); break;
    case QSM_CANCEL: op_cancel(s, c); break;
    case QSM_SETTLE:
    case QSM_RETURN:
    case QSM_DISCARD: op_settle_like(s, c); break;
    case QSM_DEQUEUE: op_dequeue(s, c); break;
    case QSM_DOWN: op_down(s, c); break;
    case QSM_PURGE: op_purge(s, c); break;
    case QSM_CONFIG: op_config(s, c); break;
    case QSM_DLX_SETTLE: op_dlx_settle(s, c); break;
    case QSM_EXPIRE:
    default: break;
    }
    checkout(s);
    enforce_drop_head(s);
    s->fx = NULL;
}

void qsm_stats(const qsm_t *s, struct qsm_stats *o)
{
    memset(o, 0, sizeof *o);
    o->ready = s->ready;
    o->ready_bytes = s->ready_bytes;
    o->unacked = s->unacked;
    o->unacked_bytes = s->unacked_bytes;
    o->dlx = s->dlx;
    o->dlx_bytes = s->dlx_bytes;
    for (uint32_t i = 0; i < s->n_cons; i++) o->consumers += !s->cons[i]->cancelled;
    o->enqueuers = (uint32_t)s->n_enq;
    o->enqueued_total = s->enqueued_total;
    o->delivered_total = s->delivered_total;
    o->settled_total = s->settled_total;
    o->returned_total = s->returned_total;
    o->dead_lettered_total = s->dead_lettered_total;
    int64_t e = NO_EXPIRY;
    const deque_t *ds[3] = {&s->returns, &s->hi, &s->lo};
    for (int i = 0; i < 3; i++) {
        const qmsg_t *q = dq_front(ds[i]);
        if (q && q->expiry < e) e = q->expiry;
    }
    o->earliest_expiry = e == NO_EXPIRY ? 0 : e;
    o->over_limit = s->cfg.overflow == QSM_REJECT_PUBLISH && over_limit(s, true);
}

const struct qsm_config *qsm_config(const qsm_t *s) { return &s->cfg; }

bool qsm_has_consumer(const qsm_t *s, uint32_t node, uint64_t chan, amqp_bytes_t tag)
{
    consumer_t *c = con_find(s, node, chan, tag);
    if (!c || c->cancelled) return false;
    return !s->cfg.single_active || c == sac_active(s);
}

uint64_t qsm_next_id(const qsm_t *s) { return s->next_id; }

void qsm_each_checked(const qsm_t *s, qsm_checked_fn fn, void *ud)
{
    for (uint32_t i = 0; i < s->n_cons; i++) {
        const consumer_t *c = s->cons[i];
        if (!c->n_checked) continue;
        qmsg_t **v = checked_sorted(c);
        for (uint32_t j = 0; j < c->n_checked; j++)
            fn(ud, c->node, c->chan, (amqp_bytes_t){c->tag, c->tag_len}, v[j]->id, v[j]->m, v[j]->acquired);
        free(v);
    }
}

void qsm_each_msg(const qsm_t *s, void (*fn)(void *ud, uint64_t msg_id, msg_t *m), void *ud)
{
    const deque_t *ds[3] = {&s->returns, &s->hi, &s->lo};
    for (int i = 0; i < 3; i++)
        for (size_t j = 0; j < ds[i]->len; j++) {
            qmsg_t *q = dq_at(ds[i], j);
            fn(ud, q->id, q->m);
        }
    for (uint32_t i = 0; i < s->n_cons; i++)
        for (qmsg_t *q = s->cons[i]->checked.head; q; q = q->next) fn(ud, q->id, q->m);
    for (qmsg_t *q = s->dlx_list.head; q; q = q->next) fn(ud, q->id, q->m);
}

uint64_t qsm_live(const qsm_t *s) { return s->ready + s->unacked + s->dlx; }

/* The position of the first element of d with id >= id (d ascending by id). */
static size_t dq_lower_bound(const deque_t *d, uint64_t id)
{
    size_t lo = 0, hi = d->len;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (dq_at(d, mid)->id < id) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

static size_t ids_lower_bound(const uint64_t *ids, size_t n, uint64_t id)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (ids[mid] < id) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

void qsm_find_many(const qsm_t *s, const uint64_t *ids, size_t n, msg_t **out)
{
    for (size_t i = 0; i < n; i++) {
        qmsg_t *q = idmap_get(&s->ids, ids[i]);
        if (!q) {
            const deque_t *ds[2] = {&s->lo, &s->hi}; /* ascending: enqueue order */
            for (int k = 0; k < 2 && !q; k++) {
                size_t at = dq_lower_bound(ds[k], ids[i]);
                if (at < ds[k]->len && dq_at(ds[k], at)->id == ids[i]) q = dq_at(ds[k], at);
            }
        }
        out[i] = q ? q->m : NULL;
    }
    /* Returns are in return order: one pass over them, looking each up among the ids. */
    for (size_t j = 0; j < s->returns.len && n; j++) {
        const qmsg_t *q = dq_at(&s->returns, j);
        size_t at = ids_lower_bound(ids, n, q->id);
        if (at < n && ids[at] == q->id) out[at] = q->m;
    }
}

void qsm_dlx_each(const qsm_t *s, qsm_dlx_fn fn, void *ud)
{
    for (const qmsg_t *q = s->dlx_list.head; q; q = q->next)
        fn(ud, q->id, q->m, reason_names[q->reason], q->acquired);
}

/* ---- command wire format ------------------------------------------------------------------------- */

/* Fields each op carries, in this order after [u8 version][u8 op][i64 now_ms]. */
enum {
    F_NODE = 1 << 0,    /* u32 */
    F_CHAN = 1 << 1,    /* u64 */
    F_REQ = 1 << 2,     /* u64 */
    F_SEQ = 1 << 3,     /* u64 */
    F_EXP = 1 << 4,     /* i64 expiration_ms (>= -1) */
    F_MSG = 1 << 5,     /* u32 length + msg_record_write() bytes */
    F_TAG = 1 << 6,     /* shortstr */
    F_CONSUME = 1 << 7, /* u32 prefetch, i32 priority */
    F_FLAGS = 1 << 8,   /* u8 */
    F_IDS = 1 << 9,     /* u32 n + n x u64 */
    F_CONFIG = 1 << 10, /* i64 x4, u8 overflow, u8 strategy, u8 bits (dead_letter, single_active) */
};

static const uint16_t op_fields[] = {
    [QSM_ENQUEUE] = F_NODE | F_CHAN | F_REQ | F_SEQ | F_EXP | F_MSG,
    [QSM_CHECKOUT] = F_NODE | F_CHAN | F_TAG | F_CONSUME | F_FLAGS,
    [QSM_CANCEL] = F_NODE | F_CHAN | F_TAG,
    [QSM_SETTLE] = F_NODE | F_CHAN | F_TAG | F_IDS,
    [QSM_RETURN] = F_NODE | F_CHAN | F_TAG | F_IDS,
    [QSM_DISCARD] = F_NODE | F_CHAN | F_TAG | F_IDS,
    [QSM_DEQUEUE] = F_NODE | F_CHAN | F_REQ | F_FLAGS,
    [QSM_DOWN] = F_NODE | F_CHAN | F_SEQ,
    [QSM_PURGE] = F_NODE | F_REQ,
    [QSM_CONFIG] = F_CONFIG,
    [QSM_EXPIRE] = 0,
    [QSM_DLX_SETTLE] = F_IDS,
};
#define OP_MAX QSM_DLX_SETTLE

static uint8_t allowed_flags(uint8_t op)
{
    return op == QSM_CHECKOUT ? (QSM_F_NO_ACK | QSM_F_EXCLUSIVE) : op == QSM_DEQUEUE ? QSM_F_NO_ACK : 0;
}

static void put_config(amqp_buf_t *out, const struct qsm_config *c)
{
    amqp_buf_put_u64(out, (uint64_t)c->delivery_limit);
    amqp_buf_put_u64(out, (uint64_t)c->max_length);
    amqp_buf_put_u64(out, (uint64_t)c->max_bytes);
    amqp_buf_put_u64(out, (uint64_t)c->msg_ttl);
    amqp_buf_put_u8(out, c->overflow);
    amqp_buf_put_u8(out, c->dlx_strategy);
    amqp_buf_put_u8(out, (uint8_t)((c->dead_letter ? 1 : 0) | (c->single_active ? 2 : 0)));
}

static bool read_config(amqp_reader_t *r, struct qsm_config *c)
{
    c->delivery_limit = (int64_t)amqp_read_u64(r);
    c->max_length = (int64_t)amqp_read_u64(r);
    c->max_bytes = (int64_t)amqp_read_u64(r);
    c->msg_ttl = (int64_t)amqp_read_u64(r);
    c->overflow = amqp_read_u8(r);
    c->dlx_strategy = amqp_read_u8(r);
    uint8_t bits = amqp_read_u8(r);
    c->dead_letter = bits & 1;
    c->single_active = bits & 2;
    return !r->bad && config_valid(c) && bits <= 3;
}

void qsm_encode(amqp_buf_t *out, const struct qsm_cmd *c)
{
    amqp_buf_put_u8(out, QSM_WIRE_VERSION);
    amqp_buf_put_u8(out, c->op);
    if (c->op < 1 || c->op > OP_MAX) return; /* decodes as malformed */
    uint16_t f = op_fields[c->op];
    amqp_buf_put_u64(out, (uint64_t)c->now_ms);
    if (f & F_NODE) amqp_buf_put_u32(out, c->node);
    if (f & F_CHAN) amqp_buf_put_u64(out, c->chan);
    if (f & F_REQ) amqp_buf_put_u64(out, c->req);
    if (f & F_SEQ) amqp_buf_put_u64(out, c->seq);
    if (f & F_EXP) amqp_buf_put_u64(out, (uint64_t)c->expiration_ms);
    if (f & F_MSG) amqp_buf_put_longstr(out, c->msg);
    if (f & F_TAG) amqp_buf_put_shortstr(out, c->tag);
    if (f & F_CONSUME) {
        amqp_buf_put_u32(out, c->prefetch);
        amqp_buf_put_u32(out, (uint32_t)c->priority);
    }
    if (f & F_FLAGS) amqp_buf_put_u8(out, c->flags);
    if (f & F_IDS) {
        amqp_buf_put_u32(out, c->n_ids);
        for (uint32_t i = 0; i < c->n_ids; i++)
            amqp_buf_put_u64(out, c->ids_in ? c->ids_in[i] : c->ids ? qsm_cmd_id(c, i) : 0);
    }
    if (f & F_CONFIG) put_config(out, &c->config);
}

/* The record layout of message.h: [u8 exlen][ex][u8 rklen][rk][u32 props_len][props][body]. */
static bool record_valid(amqp_bytes_t rec)
{
    amqp_reader_t r = amqp_reader(rec.ptr, rec.len);
    amqp_read_shortstr(&r);
    amqp_read_shortstr(&r);
    amqp_read_longstr(&r);
    return !r.bad;
}

int qsm_decode(const void *buf, size_t len, struct qsm_cmd *c)
{
    memset(c, 0, sizeof *c);
    c->expiration_ms = -1;
    amqp_reader_t r = amqp_reader(buf, len);
    if (amqp_read_u8(&r) != QSM_WIRE_VERSION) return -1;
    c->op = amqp_read_u8(&r);
    if (r.bad || c->op < 1 || c->op > OP_MAX) return -1;
    uint16_t f = op_fields[c->op];
    c->now_ms = (int64_t)amqp_read_u64(&r);
    if (f & F_NODE) c->node = amqp_read_u32(&r);
    if (f & F_CHAN) c->chan = amqp_read_u64(&r);
    if (f & F_REQ) c->req = amqp_read_u64(&r);
    if (f & F_SEQ) c->seq = amqp_read_u64(&r);
    if (f & F_EXP) c->expiration_ms = (int64_t)amqp_read_u64(&r);
    if (f & F_MSG) c->msg = amqp_read_longstr(&r);
    if (f & F_TAG) c->tag = amqp_read_shortstr(&r);
    if (f & F_CONSUME) {
        c->prefetch = amqp_read_u32(&r);
        c->priority = (int32_t)amqp_read_u32(&r);
    }
    if (f & F_FLAGS) c->flags = amqp_read_u8(&r);
    if (f & F_IDS) {
        c->n_ids = amqp_read_u32(&r);
        if (!r.bad && c->n_ids > r.left / 8) return -1;
        c->ids = amqp_read_raw(&r, (size_t)c->n_ids * 8);
    }
    if ((f & F_CONFIG) && !read_config(&r, &c->config)) return -1;
    if (r.bad || r.left) return -1;
    if (c->flags & ~allowed_flags(c->op)) return -1;
    if (c->expiration_ms < -1) return -1;
    if ((f & F_MSG) && !record_valid(c->msg)) return -1;
    return 0;
}

/* ---- snapshots ------------------------------------------------------------------------------------- */
/*
 * [u8 version][config][u64 next_id][u32 rr (index + 1, 0 = none)][u8 hi_streak][u64 x5 totals]
 * [u32 n] consumers in registration order:
 *     [u32 node][u64 chan][u32 tag length][tag][u32 prefetch][i32 priority]
 *     [u8 flags][u8 cancelled][u32 n] checked-out messages in msg_id order
 * [u32 n] returns, [u32 n] high, [u32 n] normal: ready messages in deque order
 * [u32 n] dead-lettered (at-least-once) messages in dead-lettering order, each followed by u8 reason
 * [u32 n] enqueuers by (node, chan): [u32 node][u64 chan][u64 next][u32 n][u64 seen]...
 * message, FULL: [u64 id][i64 expiry][u32 acquired][u32 delivery_count][u32 length][record]
 * message, META: a local snapshot of a long queue is taken often and must stay small, so
 *     [zigzag varint id - previous message's id][u8 0, or 1 + zigzag varint expiry][varint acquired]
 *     [varint delivery_count][varint body length]
 *     [u8 0: the same record header as the previous message | 1: [u32 length][header]]
 *   (varints: LEB128, 7 bits per byte, minimal; the header is the record without its body;
 *   messages of one publisher mostly share it, so most cost 6 to 10 bytes).
 * Every count is checked against the bytes left, so hostile input cannot make us allocate big.
 * Decoding is strict (minimal varints, a repeated header always as 0), so whatever restores
 * snapshots to the same bytes.
 */

static void put_varint(amqp_buf_t *out, uint64_t v)
{
    uint8_t b[10];
    size_t n = 0;
    do {
        b[n++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
        v >>= 7;
    } while (v);
    amqp_buf_append(out, b, n);
}

/* Minimal encodings only (no trailing zero groups), at most 64 bits. */
static uint64_t read_varint(amqp_reader_t *r)
{
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        uint8_t b = amqp_read_u8(r);
        if (r->bad) return 0;
        if (shift == 63 && b > 1) break;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            if (b == 0 && shift) break; /* overlong */
            return v;
        }
    }
    r->bad = true;
    return 0;
}

static uint64_t zigzag(int64_t v) { return ((uint64_t)v << 1) ^ (uint64_t)(v >> 63); }
static int64_t unzigzag(uint64_t v) { return (int64_t)(v >> 1) ^ -(int64_t)(v & 1); }

static bool same_header(const msg_t *a, const msg_t *b)
{
    return a && a->exchange_len == b->exchange_len && a->rk_len == b->rk_len && a->props_len == b->props_len &&
           !memcmp(a->exchange, b->exchange, a->exchange_len) && !memcmp(a->rk, b->rk, a->rk_len) &&
           !memcmp(a->props, b->props, a->props_len);
}

/* How one snapshot is being written: FULL carries bodies, META only their lengths. */
typedef struct {
    amqp_buf_t *out;
    int kind;
    qsm_body_fn body;
    void *ud;
    bool failed;
    uint64_t prev_id;      /* META: the previous message's id and header */
    const msg_t *prev;
    bool fresh;            /* META: encode every message now, ignoring (and not filling) the caches */
} snapw_t;

static void put_msg_meta(snapw_t *w, const qmsg_t *q)
{
    amqp_buf_t *out = w->out;
    const msg_t *m = q->m;
    put_varint(out, zigzag((int64_t)(q->id - w->prev_id)));
    amqp_buf_put_u8(out, q->expiry != NO_EXPIRY);
    if (q->expiry != NO_EXPIRY) put_varint(out, zigzag(q->expiry));
    put_varint(out, q->acquired);
    put_varint(out, q->failed);
    put_varint(out, m->body_len);
    if (same_header(w->prev, m)) {
        amqp_buf_put_u8(out, 0);
    } else {
        size_t n = msg_record_header_size(m);
        amqp_buf_put_u8(out, 1);
        amqp_buf_put_u32(out, (uint32_t)n);
        amqp_buf_reserve(out, n);
        msg_record_write_header(m, out->data + out->len);
        out->len += n;
    }
    w->prev_id = q->id;
    w->prev = m;
    if (w->body && !w->body(w->ud, q->id, m, NULL)) w->failed = true;
}

static void put_msg(snapw_t *w, const qmsg_t *q)
{
    if (w->kind == QSM_SNAP_META) {
        put_msg_meta(w, q);
        return;
    }
    amqp_buf_t *out = w->out;
    const msg_t *m = q->m;
    amqp_buf_put_u64(out, q->id);
    amqp_buf_put_u64(out, (uint64_t)q->expiry);
    amqp_buf_put_u32(out, q->acquired);
    amqp_buf_put_u32(out, q->failed);
    size_t n = msg_record_header_size(m);
    uint64_t body_len = m->body_len;
    amqp_buf_put_u32(out, (uint32_t)(n + body_len));
    amqp_buf_reserve(out, n);
    msg_record_write_header(m, out->data + out->len);
    out->len += n;
    if (m->body) {
        amqp_buf_append(out, m->body, body_len);
    } else if (!w->body || !w->body(w->ud, q->id, m, out)) {
        w->failed = true;
    }
}

/* ---- META encodings of a ready deque, kept between snapshots (see deque_t) ----
 * bytes[start ..) holds the encodings of elements from .. to-1, each relative to its
 * predecessor in the deque; ck[i] is the byte offset of element ck_base + i * DQ_CK (from a
 * checkpoint, an element is found by skipping encodings). Elements before from are gone. */
#define DQ_CK 64
struct dq_enc {
    amqp_buf_t bytes;
    size_t start;
    uint64_t from, to;
    uint64_t ck_base;
    size_t *ck, n_ck, cap_ck;
};

static void dq_enc_free(dq_enc_t *e)
{
    if (!e) return;
    amqp_buf_free(&e->bytes);
    free(e->ck);
    free(e);
}

static void dq_enc_reset(dq_enc_t *e, uint64_t from)
{
    e->bytes.len = 0;
    e->start = 0;
    e->from = e->to = e->ck_base = from;
    e->n_ck = 0;
}

/* Length of the META encoding of one message at p (put_msg_meta wrote it; never malformed). */
static size_t meta_msg_len(const uint8_t *p)
{
    const uint8_t *q = p;
    while (*q++ & 0x80) {} /* id delta */
    if (*q++) while (*q++ & 0x80) {} /* expiry */
    for (int i = 0; i < 3; i++) while (*q++ & 0x80) {} /* acquired, delivery count, body length */
    if (*q++) q += 4 + ((size_t)q[0] << 24 | (size_t)q[1] << 16 | (size_t)q[2] << 8 | q[3]);
    return (size_t)(q - p);
}

/* Byte offset of element n (from <= n <= to; n == to: the end). */
static size_t dq_enc_offset(const dq_enc_t *e, uint64_t n)
{
    if (n == e->to) return e->bytes.len;
    size_t i = (size_t)((n - e->ck_base) / DQ_CK);
    size_t off = e->ck[i];
    for (uint64_t k = e->ck_base + (uint64_t)i * DQ_CK; k < n; k++) off += meta_msg_len(e->bytes.data + off);
    return off;
}

/* Forgets the elements before `from` (popped since); gives the bytes back once they are most. */
static void dq_enc_advance(dq_enc_t *e, uint64_t from)
{
    if (from <= e->from) return;
    if (from >= e->to) { /* every encoded element is gone */
        dq_enc_reset(e, from);
        return;
    }
    e->start = dq_enc_offset(e, from);
    e->from = from;
    if (e->start < e->bytes.len / 2 || e->start < 4096) return;
    size_t i0 = (size_t)((from - e->ck_base) / DQ_CK), cut = e->ck[i0];
    memmove(e->bytes.data, e->bytes.data + cut, e->bytes.len - cut);
    e->bytes.len -= cut;
    e->start -= cut;
    memmove(e->ck, e->ck + i0, (e->n_ck - i0) * sizeof *e->ck);
    e->n_ck -= i0;
    for (size_t i = 0; i < e->n_ck; i++) e->ck[i] -= cut;
    e->ck_base += (uint64_t)i0 * DQ_CK;
}

/* Encodes element `to` (the writer's previous message is its predecessor) into the cache. */
static void dq_enc_append(dq_enc_t *e, snapw_t *w, const qmsg_t *q)
{
    if ((e->to - e->ck_base) % DQ_CK == 0) {
        if (e->n_ck == e->cap_ck) {
            e->cap_ck = e->cap_ck ? e->cap_ck * 2 : 64;
            e->ck = xrealloc(e->ck, e->cap_ck * sizeof *e->ck);
        }
        e->ck[e->n_ck++] = e->bytes.len;
    }
    amqp_buf_t *out = w->out;
    w->out = &e->bytes;
    put_msg_meta(w, q);
    w->out = out;
    e->to++;
}

/* META: the head encoded now (its predecessor in the snapshot varies), the rest from the cache,
 * and the elements pushed since the last snapshot encoded into the cache as they are written.
 * The bytes are exactly those of encoding every element now (test_qq_sm, fuzz_qqsm check it). */
static void put_deque_meta(snapw_t *w, deque_t *d)
{
    if (!d->enc) {
        d->enc = xmalloc(sizeof *d->enc);
        memset(d->enc, 0, sizeof *d->enc);
        dq_enc_reset(d->enc, d->popped + 1);
    }
    dq_enc_t *e = d->enc;
    put_msg_meta(w, dq_at(d, 0));
    uint64_t next = d->popped + 1, end = d->popped + d->len;
    dq_enc_advance(e, next); /* elements only ever leave at the head: from <= next */
    if (e->to > next) {
        amqp_buf_append(w->out, e->bytes.data + e->start, e->bytes.len - e->start);
        const qmsg_t *last = dq_at(d, (size_t)(e->to - 1 - d->popped));
        w->prev_id = last->id;
        w->prev = last->m;
    }
    for (uint64_t n = e->to; n < end; n++) {
        size_t before = e->bytes.len;
        dq_enc_append(e, w, dq_at(d, (size_t)(n - d->popped)));
        amqp_buf_append(w->out, e->bytes.data + before, e->bytes.len - before);
    }
}

static void put_deque(snapw_t *w, const deque_t *d)
{
    amqp_buf_put_u32(w->out, (uint32_t)d->len);
    if (w->kind == QSM_SNAP_META && d->len && !w->fresh) {
        put_deque_meta(w, (deque_t *)d); /* the cache is not the state: a snapshot of a const state fills it */
        return;
    }
    for (size_t i = 0; i < d->len; i++) put_msg(w, dq_at(d, i));
}

int qsm_snapshot_ex(const qsm_t *s, amqp_buf_t *out, int kind, qsm_body_fn body, void *ud)
{
    bool fresh = kind & QSM_SNAP_UNCACHED;
    kind &= ~QSM_SNAP_UNCACHED;
    snapw_t w = {.out = out, .kind = kind, .body = body, .ud = ud, .fresh = fresh};
    amqp_buf_put_u8(out, (uint8_t)kind);
    put_config(out, &s->cfg);
    amqp_buf_put_u64(out, s->next_id);
    amqp_buf_put_u32(out, (uint32_t)(s->rr_last + 1));
    amqp_buf_put_u8(out, s->hi_streak);
    amqp_buf_put_u64(out, s->enqueued_total);
    amqp_buf_put_u64(out, s->delivered_total);
    amqp_buf_put_u64(out, s->settled_total);
    amqp_buf_put_u64(out, s->returned_total);
    amqp_buf_put_u64(out, s->dead_lettered_total);
    amqp_buf_put_u32(out, s->n_cons);
    for (uint32_t i = 0; i < s->n_cons; i++) {
        const consumer_t *c = s->cons[i];
        amqp_buf_put_u32(out, c->node);
        amqp_buf_put_u64(out, c->chan);
        amqp_buf_put_longstr(out, (amqp_bytes_t){c->tag, c->tag_len});
        amqp_buf_put_u32(out, c->prefetch);
        amqp_buf_put_u32(out, (uint32_t)c->priority);
        amqp_buf_put_u8(out, c->flags);
        amqp_buf_put_u8(out, c->cancelled);
        amqp_buf_put_u32(out, c->n_checked);
        qmsg_t **v = checked_sorted(c);
        for (uint32_t j = 0; j < c->n_checked; j++) put_msg(&w, v[j]);
        free(v);
    }
    put_deque(&w, &s->returns);
    put_deque(&w, &s->hi);
    put_deque(&w, &s->lo);
    amqp_buf_put_u32(out, (uint32_t)s->dlx);
    for (const qmsg_t *q = s->dlx_list.head; q; q = q->next) {
        put_msg(&w, q);
        amqp_buf_put_u8(out, q->reason);
    }
    amqp_buf_put_u32(out, (uint32_t)s->n_enq);
    for (size_t i = 0; i < s->n_enq; i++) {
        const enqueuer_t *e = &s->enq[i];
        amqp_buf_put_u32(out, e->node);
        amqp_buf_put_u64(out, e->chan);
        amqp_buf_put_u64(out, e->next);
        amqp_buf_put_u32(out, e->len - e->head);
        for (uint32_t j = e->head; j < e->len; j++) amqp_buf_put_u64(out, e->seen[j]);
    }
    amqp_buf_put_u32(out, (uint32_t)s->n_floors);
    for (size_t i = 0; i < s->n_floors; i++) {
        amqp_buf_put_u32(out, s->floors[i].node);
        amqp_buf_put_u32(out, s->floors[i].boot);
    }
    return w.failed ? -1 : 0;
}

void qsm_snapshot(const qsm_t *s, amqp_buf_t *out)
{
    if (qsm_snapshot_ex(s, out, QSM_SNAP_FULL, NULL, NULL) != 0) abort(); /* a body is not in memory */
}

/* Restore reads into a live qsm_t, attaching everything as soon as it exists, so one
 * qsm_free() cleans up after a failure at any point. `all` catches duplicate ids anywhere. */
typedef struct {
    amqp_reader_t r;
    qsm_t *s;
    idmap_t all;
    int kind; /* QSM_SNAP_FULL or QSM_SNAP_META */
    uint64_t prev_id;    /* META: the previous message's id and header */
    amqp_bytes_t prev_hdr;
} restore_t;

/* Counts must be plausible: each element takes at least min_bytes of input. */
static bool read_count(restore_t *x, size_t min_bytes, uint32_t *n)
{
    *n = amqp_read_u32(&x->r);
    return !x->r.bad && *n <= x->r.left / min_bytes;
}

/* The fewest bytes a message takes: META 5 varints + the header byte. */
#define MSG_MIN_BYTES(x) ((x)->kind == QSM_SNAP_META ? 6 : 8 + 8 + 4 + 4 + 4 + 6)

static msg_t *read_msg_meta(restore_t *x, uint64_t *id, int64_t *expiry, uint32_t *acquired, uint32_t *failed)
{
    *id = x->prev_id + (uint64_t)unzigzag(read_varint(&x->r));
    uint8_t has_exp = amqp_read_u8(&x->r);
    int64_t exp = has_exp == 1 ? unzigzag(read_varint(&x->r)) : NO_EXPIRY;
    uint64_t acq = read_varint(&x->r), fail = read_varint(&x->r);
    uint64_t body_len = read_varint(&x->r);
    uint8_t fresh = amqp_read_u8(&x->r);
    amqp_bytes_t hdr = x->prev_hdr;
    if (fresh == 1) hdr = amqp_read_longstr(&x->r);
    if (x->r.bad || fresh > 1 || (!fresh && !hdr.ptr) || has_exp > 1 || (has_exp && exp == NO_EXPIRY) ||
        acq > UINT32_MAX ||
        fail > UINT32_MAX || body_len > (1ull << 40))
        return NULL;
    if (fresh && x->prev_hdr.ptr && amqp_bytes_eq(hdr, x->prev_hdr)) return NULL; /* not canonical */
    msg_t *m = msg_from_record(hdr.ptr, hdr.len, false);
    if (!m) return NULL;
    if (m->body_len != 0) { /* the header has trailing bytes: not canonical */
        msg_unref(m);
        return NULL;
    }
    m->body_len = body_len; /* body NULL: the host stores it */
    x->prev_id = *id;
    x->prev_hdr = hdr;
    *expiry = exp;
    *acquired = (uint32_t)acq;
    *failed = (uint32_t)fail;
    return m;
}

static qmsg_t *read_msg(restore_t *x)
{
    uint64_t id;
    int64_t expiry;
    uint32_t acquired, failed;
    msg_t *m;
    if (x->kind == QSM_SNAP_META) {
        m = read_msg_meta(x, &id, &expiry, &acquired, &failed);
        if (!m) return NULL;
        if (id == 0 || id >= x->s->next_id || idmap_get(&x->all, id)) {
            msg_unref(m);
            return NULL;
        }
    } else {
        id = amqp_read_u64(&x->r);
        expiry = (int64_t)amqp_read_u64(&x->r);
        acquired = amqp_read_u32(&x->r);
        failed = amqp_read_u32(&x->r);
        amqp_bytes_t rec = amqp_read_longstr(&x->r);
        if (x->r.bad || id == 0 || id >= x->s->next_id || idmap_get(&x->all, id)) return NULL;
        m = msg_from_record(rec.ptr, rec.len, true);
        if (!m) return NULL;
        if (msg_record_size(m) != rec.len) { /* not canonical */
            msg_unref(m);
            return NULL;
        }
    }
    msg_fill_from_props(m);
    qmsg_t *q = qmsg_new(m, id, expiry);
    q->acquired = acquired;
    q->failed = failed;
    idmap_put(&x->all, id, q);
    return q;
}

static bool read_consumers(restore_t *x)
{
    qsm_t *s = x->s;
    uint32_t n;
    if (!read_count(x, 4 + 8 + 4 + 4 + 4 + 1 + 1 + 4, &n)) return false;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t node = amqp_read_u32(&x->r);
        uint64_t chan = amqp_read_u64(&x->r);
        amqp_bytes_t tag = amqp_read_longstr(&x->r);
        if (x->r.bad || con_find(s, node, chan, tag)) return false;
        consumer_t *c = con_new(s, node, chan, tag);
        c->prefetch = amqp_read_u32(&x->r);
        c->priority = (int32_t)amqp_read_u32(&x->r);
        c->flags = amqp_read_u8(&x->r);
        uint8_t cancelled = amqp_read_u8(&x->r);
        uint32_t nc;
        if (x->r.bad || (c->flags & ~allowed_flags(QSM_CHECKOUT)) || cancelled > 1) return false;
        c->cancelled = cancelled;
        if (!read_count(x, MSG_MIN_BYTES(x), &nc) || (c->cancelled && nc == 0)) return false;
        uint64_t prev = 0;
        for (uint32_t j = 0; j < nc; j++) {
            qmsg_t *q = read_msg(x);
            if (!q) return false;
            q->where = W_CHECKED;
            q->owner = c;
            ml_append(&c->checked, q);
            c->n_checked++;
            idmap_put(&s->ids, q->id, q);
            s->unacked++;
            s->unacked_bytes += msg_size(q);
            if (q->id <= prev) return false; /* canonical: ascending */
            prev = q->id;
        }
    }
    return true;
}

/* ascending: the priority deques hold messages in enqueue order, i.e. by ascending id (which
 * qsm_find_many relies on); the returns deque in the order they were returned. */
static bool read_ready(restore_t *x, deque_t *d, bool ascending)
{
    uint32_t n;
    if (!read_count(x, MSG_MIN_BYTES(x), &n)) return false;
    uint64_t prev = 0;
    for (uint32_t i = 0; i < n; i++) {
        qmsg_t *q = read_msg(x);
        if (!q) return false;
        ready_push(x->s, d, q);
        if (ascending && q->id <= prev) return false;
        prev = q->id;
    }
    return true;
}

static bool read_dlx(restore_t *x)
{
    qsm_t *s = x->s;
    uint32_t n;
    if (!read_count(x, MSG_MIN_BYTES(x) + 1, &n)) return false;
    if (n && !alo_effective(&s->cfg)) return false;
    for (uint32_t i = 0; i < n; i++) {
        qmsg_t *q = read_msg(x);
        if (!q) return false;
        q->where = W_DLX;
        ml_append(&s->dlx_list, q);
        idmap_put(&s->ids, q->id, q);
        s->dlx++;
        s->dlx_bytes += msg_size(q);
        q->reason = amqp_read_u8(&x->r);
        if (x->r.bad || q->reason >= RS_COUNT) return false;
    }
    return true;
}

static bool read_enqueuers(restore_t *x)
{
    qsm_t *s = x->s;
    uint32_t n;
    if (!read_count(x, 4 + 8 + 8 + 4, &n)) return false;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t node = amqp_read_u32(&x->r);
        uint64_t chan = amqp_read_u64(&x->r);
        if (x->r.bad || (s->n_enq && enq_cmp(node, chan, &s->enq[s->n_enq - 1]) <= 0)) return false;
        enqueuer_t *e = enq_get_or_add(s, node, chan); /* appended: keys ascend */
        e->next = amqp_read_u64(&x->r);
        uint32_t ns;
        if (!read_count(x, 8, &ns) || ns > QSM_DEDUP_WINDOW) return false;
        e->seen = xmalloc((size_t)ns * sizeof *e->seen);
        e->cap = ns;
        uint64_t prev = e->next;
        for (uint32_t j = 0; j < ns; j++) {
            uint64_t v = amqp_read_u64(&x->r);
            /* Strictly above next and ascending; the first may not be next itself (it would
             * have collapsed). */
            if (v <= prev) return false;
            e->seen[e->len++] = prev = v;
        }
    }
    return true;
}

static bool read_floors(restore_t *x)
{
    uint32_t n;
    if (!read_count(x, 8, &n)) return false;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t node = amqp_read_u32(&x->r), boot = amqp_read_u32(&x->r);
        const qsm_t *s = x->s;
        if (x->r.bad || boot == 0 || (s->n_floors && s->floors[s->n_floors - 1].node >= node)) return false;
        raise_boot_floor(x->s, node, boot); /* appended: nodes ascend */
    }
    return true;
}

qsm_t *qsm_restore(const void *bytes, size_t len)
{
    restore_t x = {.r = amqp_reader(bytes, len)};
    struct qsm_config cfg;
    memset(&cfg, 0, sizeof cfg); /* padding too: configs are compared and snapshotted bytewise */
    x.kind = amqp_read_u8(&x.r);
    if ((x.kind != QSM_SNAP_FULL && x.kind != QSM_SNAP_META) || !read_config(&x.r, &cfg)) return NULL;
    qsm_t *s = x.s = qsm_new(&cfg);
    s->next_id = amqp_read_u64(&x.r);
    uint32_t rr = amqp_read_u32(&x.r);
    s->hi_streak = amqp_read_u8(&x.r);
    s->enqueued_total = amqp_read_u64(&x.r);
    s->delivered_total = amqp_read_u64(&x.r);
    s->settled_total = amqp_read_u64(&x.r);
    s->returned_total = amqp_read_u64(&x.r);
    s->dead_lettered_total = amqp_read_u64(&x.r);
    bool ok = !x.r.bad && s->next_id >= 1 && s->hi_streak <= 2 && read_consumers(&x) && rr <= s->n_cons &&
              read_ready(&x, &s->returns, false) && read_ready(&x, &s->hi, true) && read_ready(&x, &s->lo, true) &&
              read_dlx(&x) &&
              read_enqueuers(&x) && read_floors(&x) && !x.r.bad && x.r.left == 0;
    s->rr_last = (int64_t)rr - 1;
    idmap_free(&x.all);
    if (!ok) {
        qsm_free(s);
        return NULL;
    }
    return s;
}
