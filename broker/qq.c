/* qq.c - quorum queues: the broker's queue operations as commands of a per-queue Raft group.
 *
 * Role: the host side of broker/qq_sm.c (see qq.h for the whole picture). One struct qq per
 * quorum queue record on this node; one struct qq_state per node.
 *
 * Data flow of an operation that needs an answer (publish, consume, get, purge):
 *
 *   caller -> op (encoded command, callback, req id) -> the queue's outbox
 *   -> flush (ev_prepare, once per loop iteration):
 *        this node leads the group:  mr_propose(command)           (arg = req id)
 *        another node leads it:      one "qq.p" call with every command of the outbox
 *        no leader known:            kept; a retry timer flushes again shortly
 *   -> the command commits and every member applies it (qsm_apply); its result effect carries
 *      (origin node, req): on the origin node it completes the op (the callback runs); on a
 *      leader serving a forwarded command it is kept for the reply to the origin.
 *   A failed attempt (deposed leader, lost call, timeout) puts the op back in the outbox.
 *
 * Invariants:
 *   - An op lives in s->ops (by req) from creation to completion and is completed exactly
 *     once. Everything else refers to it by req, never by pointer, except the outbox, which
 *     frees an op completed while queued when it pops it.
 *   - Callbacks of ops never run inside the qq_* call that created them.
 *   - The state machine's initial settings come from the queue's arguments only (immutable,
 *     the same on every member and at every replay); policies reach it as CONFIG commands
 *     proposed by the leader, so a replay after a restart computes the same state.
 *   - Deliveries: every member computes every assignment; only the consumer's own node acts on
 *     it. A consumer's deliveries are held until its consume-ok has gone out.
 *   - Dead-lettering (an effect) is done by the leader only.
 */
#include "broker/qq.h"

#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "broker/cluster.h"
#include "broker/log.h"
#include "broker/meta.h"
#include "broker/multiraft.h"
#include "broker/props.h"
#include "broker/qq_sm.h"

#define QQ_CALL_TIMEOUT 5.0    /* a forwarded batch waits this long for the leader's answer */
#define QQ_OP_TIMEOUT 15.0     /* consume / get / purge give up after this long */
#define QQ_RETRY_INTERVAL 0.05 /* no leader known: look again after this long */
#define QQ_DEFAULT_GROUP_SIZE 3
/* Bodies of quorum queue messages kept in memory, node-wide: the most recently enqueued (or
 * read back) ones; older bodies live in the replica's body store until delivered. The
 * environment variable WARREN_QQ_BODY_MEMORY (bytes) overrides it (tests use a small one). */
#define QQ_BODY_MEMORY_DEFAULT (16u << 20)
#define QQ_BODY_MEMORY (s->body_memory)
/* Log bytes applied since the last snapshot that make the next one due, whatever the entry
 * count: Raft keeps the log since the last snapshot in memory. (24 MB while a snapshot cost
 * O(live) of CPU; now that ready messages' encodings are kept, 16 MB: 1M x 1 KB backlog, peak
 * RSS per node 415 -> 381 MB at the same publish rate.) */
#define QQ_LOG_BYTES (16u << 20)
/* ... and at least a small multiple of the snapshot it costs (a META snapshot takes 6-10 bytes
 * per live message), so that snapshots write a fraction of the log they let go. */
#define QQ_SNAP_BYTES_PER_MSG 16
/* Catching up through a leader's snapshot: body bytes asked for in one "qq.b" call, calls in
 * flight, and how long one may take. */
#define QQ_FETCH_BYTES (1u << 20)
#define QQ_FETCH_INFLIGHT 2
#define QQ_FETCH_TIMEOUT 10.0
/* Stored bodies deleted before a drained queue asks for its range to be compacted. */
#define QQ_COMPACT_AFTER 10000

enum { QQ_BODY_NONE = 0, QQ_BODY_QUEUED = 1, QQ_BODY_DURABLE = 2 }; /* msg_t.qq_body */

enum op_kind { OP_PLAIN, OP_PUBLISH, OP_CONSUME, OP_GET, OP_PURGE };

typedef struct qq qq_t;

struct qq_op {
    struct qq_op *next; /* in the outbox */
    qq_t *qq;
    uint64_t req;
    uint8_t kind;
    bool queued;   /* in the outbox */
    bool finished; /* completed while queued: freed when popped */
    ev_tstamp deadline; /* 0 = retry until the queue goes */
    amqp_buf_t cmd;
    union {
        struct { rq_pub_cb cb; void *arg; uint64_t tag; } pub;
        struct { rq_done_cb cb; void *arg; struct qcons *qc; } consume;
        struct { rq_get_cb cb; void *arg; uint64_t chan; bool no_ack; } get;
        struct { rq_count_cb cb; void *arg; } count;
    } u;
};

/* A consumer on this node: its deliveries are held until consume-ok went out. */
struct qcons {
    consumer_t *c;
    uint64_t chan;
    bool ready;
    qentry_t *held;
    size_t nheld, capheld;
};

struct chanrec {
    uint64_t next_seq; /* the channel's last enqueue sequence number for this queue */
};

/* Settlements of one channel collected during a loop iteration. */
struct acc {
    uint8_t op;
    uint64_t chan;
    uint64_t *ids;
    uint32_t n, cap;
};

struct qq {
    queue_t *q;
    struct qq_state *s;
    uint64_t gid;
    raft_id members[RAFT_MAX_NODES];
    unsigned n_members;
    mr_group_t *g; /* open on a member once qq_start ran */
    qsm_t *sm;
    uint32_t leader_hint;
    unsigned rr; /* non-member: which member to try next */
    struct qq_op *out_head, *out_tail;
    struct acc *accs;
    size_t n_accs, cap_accs;
    bool dirty;
    qq_t *next_dirty;
    qq_t *next_grave; /* detached, waiting for flush to destroy its group */
    dict_t chans; /* chan id (8 bytes) -> struct chanrec* */
    dict_t cons;  /* chan id (8 bytes) + tag -> struct qcons* */
    dict_t relayed; /* non-member: chan (8) + msg id (8) of relayed deliveries not settled yet,
                       so that a new leader's re-sends are not delivered twice */
    ev_timer expire_w, campaign_w;
    ev_timer dlx_w;  /* at-least-once: retries dead-letterings that failed */
    dict_t dlx_out;  /* at-least-once: dlx ids being dead-lettered now (8-byte keys) */
    int campaigns_left;
    bool is_new;        /* created at runtime (not recovered): campaign at once */
    bool transfer_done; /* client-local leader placement done */
    bool detached;
    bool joining;  /* added by a membership change: opens without bootstrap members */
    bool removing; /* removed from the members: the group goes at the next flush */
    bool changing; /* a membership change is in progress (one at a time) */
    uint64_t applied_since_check;
    uint64_t log_bytes;   /* entry bytes applied since the last snapshot */
    size_t last_snap_len; /* bytes of the last local snapshot */
    uint64_t res_bytes;   /* bodies of this queue in the resident ring (message_bytes_ram) */
    bool snap_forced;     /* the threshold was lowered because of log_bytes */
    uint64_t deleted_bodies; /* stored bodies deleted since the last compaction request */
    uint64_t *dead_ids;   /* msg ids whose stored body goes with the next local snapshot */
    size_t n_dead, cap_dead;
    struct catchup *cu;   /* a leader's snapshot waiting for its bodies (see "catching up") */
    /* Bodies fetched for a leader's snapshot and durable in the store, not yet accounted for
     * by the state (kept across attempts: a new attempt fetches only what these lack). */
    uint64_t *fetched;
    size_t n_fetched, cap_fetched;
    uint64_t installs; /* snapshots installed */
    /* Messages installed from a leader's snapshot without their body: they had left the queue
     * on the serving node (removed by a committed entry after the snapshot, which this node
     * applies next); id (8 bytes) -> nothing. Nothing delivers them: body_load says no. */
    dict_t tombs;
};

/* A forwarded batch being served by this node as leader. */
struct rslot {
    struct rbatch *batch;
    uint32_t origin;
    uint64_t req;
    bool retry, has_result;
    struct qsm_result r; /* r.m holds a reference */
};
struct rbatch {
    struct qq_state *s;
    struct peer_reply_to to;
    uint32_t n, left;
    struct rslot slots[];
};

/* A forwarded batch sent by this node. */
struct fbatch {
    struct qq_state *s;
    uint64_t gid;
    uint32_t n;
    uint64_t reqs[];
};

struct qq_state {
    broker_t *b;
    cl_t *cl;
    mr_host_t *host;
    bool own_host;
    bool started;
    bool draining; /* qq_set_draining: lead nothing */
    raft_id self;
    uint32_t boot;
    uint32_t chan_counter;
    uint64_t next_req;
    dict_t groups; /* gid (8 bytes) -> qq_t* (every attached quorum queue) */
    dict_t ops;    /* req (8 bytes) -> struct qq_op* */
    dict_t rwait;  /* origin (4) + req (8) -> struct rslot* */
    qq_t *dirty;
    qq_t *graveyard; /* detached queues: groups are destroyed outside the host's callbacks */
    ev_prepare flush_w;
    ev_timer retry_w;
    uint64_t closing_chan;
    struct relay { uint32_t node; amqp_buf_t buf; uint32_t n; } *relays; /* deliveries to relay */
    size_t n_relays, cap_relays;
    /* Bodies in memory (see "message bodies" below): a ring in the order they came in. */
    struct resident { msg_t *m; uint64_t gid; } *res;
    size_t res_head, res_len, res_cap;
    size_t res_spilled;      /* the first res_spilled entries were considered for writing */
    uint64_t res_bytes, res_spill_bytes;
    uint64_t body_memory;    /* QQ_BODY_MEMORY */
    uint64_t dropped_bytes;  /* body bytes dropped from memory since the last malloc_trim */
    ptrvec_t body_writes;    /* messages whose body write is in the store's current batch */
    uint64_t catchups;       /* catch-up attempts started (each one's number) */
};

static const struct mr_sm_ops qq_sm_ops;
static void flush_all(struct qq_state *s);
static void settle_fetched(qq_t *qq);

/* ---- small helpers ------------------------------------------------------------------------ */

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8) p[i] = (uint8_t)v;
}

static void put_be32(uint8_t *p, uint32_t v)
{
    for (int i = 3; i >= 0; i--, v >>= 8) p[i] = (uint8_t)v;
}

static struct qq_state *state_of(broker_t *b)
{
    if (!b->qq) {
        struct qq_state *s = calloc(1, sizeof *s);
        if (!s) abort();
        s->b = b;
        dict_init(&s->groups);
        dict_init(&s->ops);
        dict_init(&s->rwait);
        s->next_req = 1;
        b->qq = s;
    }
    return b->qq;
}

static raft_id self_id(const broker_t *b) { return b->self_node ? b->self_node : 1; }

static bool is_member(const qq_t *qq, raft_id id)
{
    for (unsigned i = 0; i < qq->n_members; i++)
        if (qq->members[i] == id) return true;
    return false;
}

static bool node_up(struct qq_state *s, uint32_t node)
{
    broker_t *b = s->b;
    if (node == s->self) return true;
    return b->node_is_up ? b->node_is_up(b->node_ctx, node) : b->node_call != NULL;
}

static bool is_leader(const qq_t *qq) { return qq->g && mr_group_role(qq->g) == RAFT_LEADER; }

static const amqp_value_t *setting(const queue_t *q, const char *arg, const char *policy_key)
{
    const amqp_value_t *v = amqp_table_get(&q->args, arg);
    if (v) return v;
    if (policy_key && q->operator_policy) {
        v = br_policy_value(q->operator_policy, policy_key);
        if (v) return v;
    }
    return policy_key && q->policy ? br_policy_value(q->policy, policy_key) : NULL;
}

static int64_t int_setting(const queue_t *q, const char *arg, const char *policy_key, int64_t dflt)
{
    const amqp_value_t *v = setting(q, arg, policy_key);
    int64_t i;
    return v && amqp_value_int(v, &i) ? i : dflt;
}

static bool str_setting_is(const queue_t *q, const char *arg, const char *policy_key, const char *want)
{
    const amqp_value_t *v = setting(q, arg, policy_key);
    return v && v->type == 'S' && amqp_bytes_eq_cstr(v->v.str, want);
}

/* The state machine's settings: from the arguments only (with_policies false: the initial
 * settings, identical at every replay) or arguments plus policies (what the leader proposes). */
static void config_of(const queue_t *q, bool with_policies, struct qsm_config *c)
{
    const queue_t *src = q;
    queue_t bare;
    if (!with_policies) {
        bare = *q;
        bare.policy = bare.operator_policy = NULL;
        src = &bare;
    }
    qsm_config_defaults(c);
    c->delivery_limit = int_setting(src, "x-delivery-limit", "delivery-limit", 20);
    if (c->delivery_limit < 0) c->delivery_limit = -1;
    c->max_length = int_setting(src, "x-max-length", "max-length", -1);
    c->max_bytes = int_setting(src, "x-max-length-bytes", "max-length-bytes", -1);
    c->msg_ttl = int_setting(src, "x-message-ttl", "message-ttl", -1);
    c->overflow = str_setting_is(src, "x-overflow", "overflow", "reject-publish") ||
                          str_setting_is(src, "x-overflow", "overflow", "reject-publish-dlx")
                      ? QSM_REJECT_PUBLISH
                      : QSM_DROP_HEAD;
    c->dlx_strategy = str_setting_is(src, "x-dead-letter-strategy", "dead-letter-strategy", "at-least-once")
                          ? QSM_AT_LEAST_ONCE
                          : QSM_AT_MOST_ONCE;
    const amqp_value_t *dlx = setting(src, "x-dead-letter-exchange", "dead-letter-exchange");
    c->dead_letter = dlx && dlx->type == 'S';
    const amqp_value_t *sac = amqp_table_get(&q->args, "x-single-active-consumer");
    c->single_active = sac && sac->type == 't' && sac->v.b;
}

static bool config_equal(const struct qsm_config *a, const struct qsm_config *b)
{
    return a->delivery_limit == b->delivery_limit && a->max_length == b->max_length && a->max_bytes == b->max_bytes &&
           a->msg_ttl == b->msg_ttl && a->overflow == b->overflow && a->dlx_strategy == b->dlx_strategy &&
           a->dead_letter == b->dead_letter && a->single_active == b->single_active;
}

/* ---- declaration ---------------------------------------------------------------------------- */

bool qq_args_quorum(const amqp_table_t *args)
{
    const amqp_value_t *t = args ? amqp_table_get(args, "x-queue-type") : NULL;
    return t && t->type == 'S' && amqp_bytes_eq_cstr(t->v.str, "quorum");
}

/* Arguments RabbitMQ knows but refuses on a quorum queue (declared for other queue types);
 * unknown x- arguments are accepted and ignored, as RabbitMQ does. */
static const char *const qq_refused_arguments[] = {
    "x-max-priority", "x-queue-mode", "x-queue-version", "x-queue-master-locator", "x-max-age",
    "x-stream-max-segment-size-bytes", "x-initial-cluster-size", "x-stream-filter-size-bytes",
};

static bool str_in(const amqp_value_t *v, const char *const *set, size_t n)
{
    for (size_t i = 0; v && v->type == 'S' && i < n; i++)
        if (amqp_bytes_eq_cstr(v->v.str, set[i])) return true;
    return false;
}

int qq_check_declare(vhost_t *vh, const char *name, size_t len, bool server_named, bool durable, bool exclusive,
                     bool auto_delete, const amqp_table_t *args, br_err_t *err)
{
    if (server_named)
        return br_fail(err, BR_PRECONDITION_FAILED,
                       "Cannot declare a server-named queue for type rabbit_quorum_queue");
    const char *prop = auto_delete ? "auto-delete" : exclusive ? "exclusive-owner" : !durable ? "non-durable" : NULL;
    if (prop)
        return br_fail(err, BR_PRECONDITION_FAILED, "invalid property '%s' for queue '%.*s' in vhost '%s'", prop,
                       (int)len, name, vh->name);
    for (size_t k = 0; k < sizeof qq_refused_arguments / sizeof qq_refused_arguments[0]; k++)
        if (amqp_table_get(args, qq_refused_arguments[k]))
            return br_fail(err, BR_PRECONDITION_FAILED,
                           "invalid arg '%s' for queue '%.*s' in vhost '%s' of queue type rabbit_quorum_queue",
                           qq_refused_arguments[k], (int)len, name, vh->name);
    const amqp_value_t *gs = amqp_table_get(args, "x-quorum-initial-group-size");
    int64_t n;
    if (gs && (!amqp_value_int(gs, &n) || n <= 0))
        return br_fail(err, BR_PRECONDITION_FAILED,
                       "invalid arg 'x-quorum-initial-group-size' for queue '%.*s' in vhost '%s': %s", (int)len,
                       name, vh->name, !amqp_value_int(gs, &n) ? "{unacceptable_type,longstr}" : n == 0 ? "{value_zero,0}" : "{value_negative,-1}");
    const amqp_value_t *dl = amqp_table_get(args, "x-delivery-limit");
    if (dl && !amqp_value_int(dl, &n))
        return br_fail(err, BR_PRECONDITION_FAILED, "invalid arg 'x-delivery-limit' for queue '%.*s' in vhost '%s'",
                       (int)len, name, vh->name);
    static const char *const strategies[] = {"at-most-once", "at-least-once"};
    const amqp_value_t *st = amqp_table_get(args, "x-dead-letter-strategy");
    if (st && !str_in(st, strategies, 2))
        return br_fail(err, BR_PRECONDITION_FAILED,
                       "invalid arg 'x-dead-letter-strategy' for queue '%.*s' in vhost '%s': invalid_dlx_strategy",
                       (int)len, name, vh->name);
    static const char *const locators[] = {"client-local", "balanced", "random", "least-leaders"};
    const amqp_value_t *ll = amqp_table_get(args, "x-queue-leader-locator");
    if (ll && !str_in(ll, locators, 4))
        return br_fail(err, BR_PRECONDITION_FAILED,
                       "invalid arg 'x-queue-leader-locator' for queue '%.*s' in vhost '%s': invalid_queue_locator_arg",
                       (int)len, name, vh->name);
    return 0;
}

void qq_choose_members(broker_t *b, const amqp_table_t *args, amqp_buf_t *out)
{
    struct qq_state *s = state_of(b);
    int64_t want = QQ_DEFAULT_GROUP_SIZE;
    const amqp_value_t *gs = args ? amqp_table_get(args, "x-quorum-initial-group-size") : NULL;
    if (gs) amqp_value_int(gs, &want);
    if (want < 1) want = 1;
    if (want > RAFT_MAX_NODES) want = RAFT_MAX_NODES;
    uint32_t ids[RAFT_MAX_NODES];
    unsigned n = 0;
    ids[n++] = self_id(b);
    if (s->cl && cl_clustered(s->cl)) {
        struct cl_status st;
        cl_status(s->cl, &st);
        /* Running voters first, then the others, each in the order the cluster lists them. */
        for (int pass = 0; pass < 2 && n < want; pass++)
            for (unsigned i = 0; i < st.n_members && n < want; i++) {
                const struct cl_member *m = &st.members[i];
                if (m->id == self_id(b) || !m->voter || m->running != (pass == 0)) continue;
                ids[n++] = m->id;
            }
    }
    /* The first member is the preferred leader: this node (client-local, the default), or with
     * x-queue-leader-locator balanced the member leading the fewest quorum queues this node
     * knows of. */
    const amqp_value_t *ll = args ? amqp_table_get(args, "x-queue-leader-locator") : NULL;
    static const char *const balanced[] = {"balanced", "random", "least-leaders"};
    if (str_in(ll, balanced, 3) && n > 1) {
        unsigned best = 0;
        size_t best_count = (size_t)-1;
        for (unsigned i = 0; i < n; i++) {
            size_t count = 0, pos = 0;
            void *v;
            while (dict_next(&s->groups, &pos, NULL, NULL, &v)) {
                qq_t *qq = v;
                if (qq->g && mr_group_leader(qq->g) == ids[i]) count++;
            }
            if (count < best_count) best = i, best_count = count;
        }
        uint32_t t = ids[0];
        ids[0] = ids[best];
        ids[best] = t;
    }
    for (unsigned i = 0; i < n; i++) amqp_buf_put_u32(out, ids[i]);
}

void qq_members_encode(const queue_t *q, amqp_buf_t *out)
{
    const qq_t *qq = q->qq;
    for (unsigned i = 0; qq && i < qq->n_members; i++) amqp_buf_put_u32(out, qq->members[i]);
}

/* ---- ops ------------------------------------------------------------------------------------ */

static void mark_dirty(qq_t *qq)
{
    if (qq->dirty || qq->detached) return;
    qq->dirty = true;
    qq->next_dirty = qq->s->dirty;
    qq->s->dirty = qq;
}

static void flush_accs(qq_t *qq);

/* Appends an op; settlements collected before it go first, so commands keep the order in
 * which the channel issued them (a reject with requeue, then a basic.get, must find it). */
static void outbox_push(qq_t *qq, struct qq_op *op)
{
    if (qq->n_accs) flush_accs(qq);
    op->next = NULL;
    op->queued = true;
    if (qq->out_tail) qq->out_tail->next = op;
    else qq->out_head = op;
    qq->out_tail = op;
    mark_dirty(qq);
}

static struct qq_op *op_new(qq_t *qq, uint8_t kind, struct qsm_cmd *cmd, double timeout)
{
    struct qq_state *s = qq->s;
    struct qq_op *op = calloc(1, sizeof *op);
    if (!op) abort();
    op->qq = qq;
    op->kind = kind;
    op->req = s->next_req++;
    op->deadline = timeout > 0 ? ev_now(s->b->loop) + timeout : 0;
    cmd->node = s->self;
    cmd->now_ms = wall_ms();
    if (kind != OP_PLAIN) cmd->req = op->req;
    qsm_encode(&op->cmd, cmd);
    uint8_t key[8];
    put_be64(key, op->req);
    dict_set(&s->ops, key, 8, op);
    return op;
}

static void op_free(struct qq_op *op)
{
    amqp_buf_free(&op->cmd);
    free(op);
}

static struct qq_op *op_find(struct qq_state *s, uint64_t req)
{
    uint8_t key[8];
    put_be64(key, req);
    return dict_get(&s->ops, key, 8);
}

static qentry_t entry_for(msg_t *m, uint64_t msg_id, uint64_t chan, uint32_t delivery_count, bool redelivered);
static void qcons_ready(qq_t *qq, struct qcons *qc);
static void qcons_drop(qq_t *qq, struct qcons *qc, bool cancel);

/* Completes an op exactly once: err NULL with the result (may be NULL for commands without
 * one), or an error. */
static void op_complete(struct qq_op *op, const br_err_t *err, const struct qsm_result *r)
{
    struct qq_state *s = op->qq->s;
    uint8_t key[8];
    put_be64(key, op->req);
    dict_del(&s->ops, key, 8);
    qq_t *qq = op->qq;
    switch (op->kind) {
    case OP_PUBLISH:
        /* Counted where the publisher is (each node its own clients', as deliveries and acks;
         * the management API sums the nodes), member of the group or not. */
        if (!err && r && r->status != QSM_R_REJECTED) qq->q->stat_publish++;
        if (op->u.pub.cb)
            op->u.pub.cb(op->u.pub.arg, op->u.pub.tag,
                         err ? RQ_PUB_FAILED : r && r->status == QSM_R_REJECTED ? Q_PUB_REJECTED : Q_PUB_OK);
        break;
    case OP_CONSUME: {
        struct qcons *qc = op->u.consume.qc;
        if (err && qc) qcons_drop(qq, qc, false); /* not registered: forget it here too */
        rq_done_cb cb = op->u.consume.cb;
        void *arg = op->u.consume.arg;
        if (!err && qc) qc->ready = true;
        cb(arg, err);
        /* The callback may have removed the consumer (its channel went meanwhile). */
        if (!err && qc) {
            uint8_t ck[8 + 256];
            put_be64(ck, qc->chan);
            size_t tl = qc->c->tag_len < 256 ? qc->c->tag_len : 255;
            memcpy(ck + 8, qc->c->tag, tl);
            if (dict_get(&qq->cons, ck, 8 + tl) == qc) qcons_ready(qq, qc);
        }
        break;
    }
    case OP_GET:
        if (err) {
            op->u.get.cb(op->u.get.arg, err, NULL, 0);
        } else if (!r || r->status == QSM_R_EMPTY || !r->m) {
            op->u.get.cb(op->u.get.arg, NULL, NULL, 0);
        } else {
            qentry_t e = entry_for(r->m, r->msg_id, op->u.get.chan, r->delivery_count, r->redelivered);
            qq->q->stat_get++;
            op->u.get.cb(op->u.get.arg, NULL, &e, r->count);
        }
        break;
    case OP_PURGE:
        op->u.count.cb(op->u.count.arg, err, r ? r->count : 0, 0);
        break;
    default:
        break;
    }
    if (op->queued) op->finished = true;
    else op_free(op);
}

static void op_fail(struct qq_op *op, int code, const char *text)
{
    br_err_t err;
    br_fail(&err, code, "%s", text);
    op_complete(op, &err, NULL);
}

/* Puts an op whose attempt failed back in its queue's outbox. */
static void op_retry(struct qq_state *s, uint64_t req)
{
    struct qq_op *op = op_find(s, req);
    if (op && !op->queued) outbox_push(op->qq, op);
}

/* ---- the group: apply and effects ----------------------------------------------------------- */

/* ---- message bodies ---------------------------------------------------------------------------
 *
 * Every member holds every message of the queue, but not every body in memory: a backlog of
 * millions would not fit. A body is in memory when its message arrives (the enqueue entry
 * carries it) and joins the resident ring (node-wide, in arrival order). Once the ring holds
 * more than QQ_BODY_MEMORY, its oldest bodies are written to this replica's body store
 * (KEY_QQ_BODY + gid + msg id) and, once that write is durable, dropped from memory.
 * Delivering, relaying, dead-lettering or handing out (basic.get) a message whose body is out
 * reads it back first (and it joins the ring again).
 *
 * The body store and the Raft log together always hold every live body:
 *   - a local snapshot is META (bodies by length only): taking one writes, in the same batch,
 *     the body of every live message not stored yet, so the log entries it covers can go;
 *   - a message that leaves the queue keeps its stored body until the next local snapshot (its
 *     id waits in dead_ids): the previous snapshot, which a restart would restore, lists it;
 *   - restoring the stored snapshot deletes the bodies stored for ids it had not issued yet:
 *     the log's tail is applied again and stores them again if needed, so none is left behind
 *     by a message that the tail also removes;
 *   - a snapshot from the leader (FULL: bodies inline) replaces every stored body of the group,
 *     and a snapshot sent to a follower is made FULL from the current state.
 * A message restored from a META snapshot has no body in memory and qq_body NONE: a missing
 * body always means "in the store". Messages of a queue whose consumers keep up are mostly
 * acknowledged while still in memory and never reach the body store at all. */

static qq_t *qq_by_gid(struct qq_state *s, uint64_t gid);

static void body_key(uint8_t key[17], uint64_t gid, uint64_t id)
{
    key[0] = KEY_QQ_BODY;
    put_be64(key + 1, gid);
    put_be64(key + 9, id);
}

/* Queues the write of m's body (in memory) into the store's current batch. */
static void body_store(struct qq_state *s, uint64_t gid, msg_t *m)
{
    uint8_t key[17];
    body_key(key, gid, m->id);
    store_put(s->b->store, key, sizeof key, m->body, m->body_len);
    m->qq_body = QQ_BODY_QUEUED;
    ptrvec_push(&s->body_writes, msg_ref(m));
}

/* Every stored body of the group with msg id >= from. */
static void bodies_delete_from(struct qq_state *s, uint64_t gid, uint64_t from)
{
    if (!s->b->store) return;
    uint8_t begin[17], end[9];
    body_key(begin, gid, from);
    end[0] = KEY_QQ_BODY;
    put_be64(end + 1, gid + 1); /* gids are queue uids, never UINT64_MAX */
    store_del_range(s->b->store, begin, sizeof begin, end, sizeof end);
}

static struct resident *res_at(struct qq_state *s, size_t i) { return &s->res[(s->res_head + i) & (s->res_cap - 1)]; }

static void res_push(struct qq_state *s, uint64_t gid, msg_t *m)
{
    if (!m->body || !s->b->store) return;
    if (s->res_len == s->res_cap) {
        size_t ncap = s->res_cap ? s->res_cap * 2 : 1024;
        struct resident *v = malloc(ncap * sizeof *v);
        if (!v) abort();
        for (size_t i = 0; i < s->res_len; i++) v[i] = *res_at(s, i);
        free(s->res);
        s->res = v;
        s->res_cap = ncap;
        s->res_head = 0;
    }
    s->res[(s->res_head + s->res_len++) & (s->res_cap - 1)] = (struct resident){msg_ref(m), gid};
    s->res_bytes += m->body_len;
    qq_t *qq = qq_by_gid(s, gid);
    if (qq) qq->res_bytes += m->body_len;
}

/* Keeps the ring within QQ_BODY_MEMORY: drops the front bodies that are durable in the store
 * (or no longer needed), and queues the writes of as many of the next ones as the ring is over
 * budget, to drop them once durable. Runs once per loop iteration and after each sync. */
static void bodies_trim(struct qq_state *s)
{
    while (s->res_len && s->res_bytes > QQ_BODY_MEMORY) {
        struct resident *e = res_at(s, 0);
        msg_t *m = e->m;
        bool needed = m->refs > 1 && m->body;
        if (needed && m->qq_body != QQ_BODY_DURABLE) break; /* its write is not durable yet */
        if (needed) {
            free(m->body);
            m->body = NULL;
        }
        s->res_bytes -= m->body_len;
        qq_t *qq = qq_by_gid(s, e->gid);
        if (qq && qq->res_bytes >= m->body_len) qq->res_bytes -= m->body_len;
        if (s->res_spilled) {
            s->res_spilled--;
            s->res_spill_bytes -= m->body_len;
        }
        s->dropped_bytes += m->body_len;
        msg_unref(m);
        s->res_head = (s->res_head + 1) & (s->res_cap - 1);
        s->res_len--;
    }
    /* Freed bodies sit in malloc's free lists, scattered between live metadata: give their
     * pages back to the system now and then (malloc_trim walks the free chunks: milliseconds). */
    if (s->dropped_bytes >= QQ_BODY_MEMORY / 2) {
        s->dropped_bytes = 0;
        malloc_trim(0);
    }
    uint64_t over = s->res_bytes > QQ_BODY_MEMORY ? s->res_bytes - QQ_BODY_MEMORY : 0;
    while (s->res_spilled < s->res_len && s->res_spill_bytes < over) {
        struct resident *e = res_at(s, s->res_spilled++);
        msg_t *m = e->m;
        s->res_spill_bytes += m->body_len;
        if (m->refs == 1 || !m->body || m->qq_body != QQ_BODY_NONE) continue;
        qq_t *qq = qq_by_gid(s, e->gid);
        if (qq && !qq->detached && qq->g) body_store(s, e->gid, m);
        else m->qq_body = QQ_BODY_DURABLE; /* its queue (replica) is gone: nothing reads it again */
    }
}

struct body_sync {
    broker_t *b;
    ptrvec_t v;
};

static void bodies_synced(void *arg)
{
    struct body_sync *x = arg;
    for (size_t i = 0; i < x->v.n; i++) {
        msg_t *m = x->v.items[i];
        if (m->qq_body == QQ_BODY_QUEUED) m->qq_body = QQ_BODY_DURABLE;
        msg_unref(m);
    }
    ptrvec_free(&x->v);
    if (x->b->qq) bodies_trim(x->b->qq);
    free(x);
}

/* Once per loop iteration: trim, and learn when this iteration's body writes are durable. */
static void bodies_flush(struct qq_state *s)
{
    bodies_trim(s);
    if (!s->body_writes.n) return;
    struct body_sync *x = malloc(sizeof *x);
    if (!x) abort();
    x->b = s->b;
    x->v = s->body_writes;
    memset(&s->body_writes, 0, sizeof s->body_writes);
    store_on_synced(s->b->store, bodies_synced, x);
}

/* Brings m's body back into memory from the body store. */
static bool body_load(qq_t *qq, msg_t *m)
{
    if (m->body) return true;
    struct qq_state *s = qq->s;
    uint8_t key[17];
    put_be64(key, m->id);
    if (dict_size(&qq->tombs) && dict_get(&qq->tombs, key, 8)) return false; /* left the queue: see tombs */
    body_key(key, qq->gid, m->id);
    void *val = NULL;
    size_t vlen = 0;
    if (!s->b->store || store_get(s->b->store, key, sizeof key, &val, &vlen) != 1 || vlen != m->body_len) {
        free(val);
        log_error("quorum queue '%s' in vhost '%s': the body of message %llu is missing from the store",
                  qq->q->name, qq->q->vh->name, (unsigned long long)m->id);
        return false;
    }
    m->body = val;
    m->qq_body = QQ_BODY_DURABLE;
    res_push(s, qq->gid, m);
    return true;
}

static void fx_enqueued(void *ud, uint64_t msg_id, msg_t *m)
{
    (void)msg_id;
    qq_t *qq = ud;
    res_push(qq->s, qq->gid, m);
}

/* Its stored body (if any) goes with the next local snapshot. */
static void fx_removed(void *ud, uint64_t msg_id, msg_t *m)
{
    qq_t *qq = ud;
    if (dict_size(&qq->tombs)) {
        uint8_t key[8];
        put_be64(key, msg_id);
        dict_del(&qq->tombs, key, 8);
    }
    if (m->qq_body == QQ_BODY_NONE && m->body) return; /* never stored */
    if (qq->n_dead == qq->cap_dead) {
        qq->cap_dead = qq->cap_dead ? qq->cap_dead * 2 : 256;
        qq->dead_ids = realloc(qq->dead_ids, qq->cap_dead * sizeof *qq->dead_ids);
        if (!qq->dead_ids) abort();
    }
    qq->dead_ids[qq->n_dead++] = msg_id;
}

/* META snapshot: every live body must be in the store by the time the snapshot is. */
static bool snap_body_keep(void *ud, uint64_t msg_id, const msg_t *m, amqp_buf_t *out)
{
    (void)msg_id, (void)out;
    qq_t *qq = ud;
    if (m->qq_body == QQ_BODY_NONE && m->body) body_store(qq->s, qq->gid, (msg_t *)m);
    return true;
}

/* FULL snapshot: the bodies not in memory, read from the store. */
static bool snap_body_append(void *ud, uint64_t msg_id, const msg_t *m, amqp_buf_t *out)
{
    qq_t *qq = ud;
    uint8_t key[17];
    body_key(key, qq->gid, msg_id);
    void *val = NULL;
    size_t vlen = 0;
    if (!qq->s->b->store || store_get(qq->s->b->store, key, sizeof key, &val, &vlen) != 1 || vlen != m->body_len) {
        free(val);
        return false;
    }
    amqp_buf_append(out, val, vlen);
    free(val);
    return true;
}

static void res_push_restored(void *ud, uint64_t msg_id, msg_t *m)
{
    (void)msg_id;
    qq_t *qq = ud;
    res_push(qq->s, qq->gid, m);
}

static qq_t *qq_of_group(mr_group_t *g) { return mr_group_user(g); }

/* The message as a consumer gets it: with x-delivery-count when it was delivered before (as
 * RabbitMQ 4 adds it), else the shared message itself. Returns a new reference. */
static msg_t *with_delivery_count(msg_t *m, uint32_t count)
{
    if (count == 0) return msg_ref(m);
    props_core_t p;
    if (props_core_read(m->props, m->props_len, &p) != 0) return msg_ref(m);
    amqp_table_t old = {0};
    bool have_old = p.has_headers && amqp_table_parse(p.headers, &old) == 0;
    amqp_buf_t hdr = {0}, props = {0};
    size_t pos = amqp_table_open(&hdr);
    for (size_t i = 0; have_old && i < old.n; i++) {
        if (amqp_bytes_eq_cstr(old.fields[i].key, "x-delivery-count")) continue;
        amqp_buf_put_shortstr(&hdr, old.fields[i].key);
        amqp_value_encode(&hdr, &old.fields[i].value);
    }
    amqp_table_put_i64(&hdr, "x-delivery-count", count);
    amqp_table_close(&hdr, pos);
    amqp_bytes_t hb = {hdr.data + pos + 4, hdr.len - pos - 4};
    msg_t *dm = NULL;
    if (props_rewrite(m->props, m->props_len, &hb, false, false, &props) == 0) {
        dm = msg_new(m->exchange, m->exchange_len, m->rk, m->rk_len, props.data, props.len, m->body_len);
        if (m->body_len) memcpy(dm->body, m->body, m->body_len);
        dm->id = m->id;
        dm->persistent = m->persistent;
        dm->priority = m->priority;
        dm->has_expiration = m->has_expiration;
    }
    if (have_old) amqp_table_free(&old);
    amqp_buf_free(&hdr);
    amqp_buf_free(&props);
    return dm ? dm : msg_ref(m);
}

static qentry_t entry_for(msg_t *m, uint64_t msg_id, uint64_t chan, uint32_t delivery_count, bool redelivered)
{
    qentry_t e = {0};
    e.m = with_delivery_count(m, delivery_count);
    e.seq = msg_id;
    e.qq_chan = chan;
    e.redelivered = redelivered;
    return e;
}

static struct qcons *cons_find(qq_t *qq, uint64_t chan, amqp_bytes_t tag)
{
    uint8_t key[8 + 256];
    put_be64(key, chan);
    size_t tl = tag.len < 256 ? tag.len : 255;
    memcpy(key + 8, tag.ptr, tl);
    return dict_get(&qq->cons, key, 8 + tl);
}

static void accumulate(qq_t *qq, uint8_t op, uint64_t chan, uint64_t id);

static void relay_add(qq_t *qq, uint32_t node, uint64_t chan, amqp_bytes_t tag, uint64_t msg_id, msg_t *m,
                      uint32_t delivery_count, bool redelivered);

/* A delivery for a consumer of this node (from this node's replica, or relayed by the leader
 * for a node that holds no replica). */
static void deliver_local(qq_t *qq, uint64_t chan, amqp_bytes_t tag, uint64_t msg_id, msg_t *m,
                          uint32_t delivery_count, bool redelivered)
{
    struct qcons *qc = cons_find(qq, chan, tag);
    if (!qc) {
        /* Its consumer is gone here but its channel lives (a cancel on its way, or a late
         * retry of its checkout registered it again): give the message back, and make sure
         * the consumer is cancelled so that it is given nothing more. */
        uint8_t key[8];
        put_be64(key, chan);
        if (dict_get(&qq->chans, key, 8)) {
            accumulate(qq, QSM_RETURN, chan, msg_id);
            struct qsm_cmd cmd = {.op = QSM_CANCEL, .chan = chan, .tag = tag};
            outbox_push(qq, op_new(qq, OP_PLAIN, &cmd, 0));
        }
        return;
    }
    if (!body_load(qq, m)) {
        accumulate(qq, QSM_RETURN, chan, msg_id); /* not deliverable here: give it back */
        return;
    }
    qentry_t e = entry_for(m, msg_id, chan, delivery_count, redelivered);
    if (!qc->ready) {
        if (qc->nheld == qc->capheld) {
            qc->capheld = qc->capheld ? qc->capheld * 2 : 16;
            qc->held = realloc(qc->held, qc->capheld * sizeof *qc->held);
            if (!qc->held) abort();
        }
        qc->held[qc->nheld++] = e;
        return;
    }
    queue_t *q = qq->q;
    q->stat_deliver++;
    if (redelivered) q->stat_redeliver++;
    q->vh->broker->stat_deliver++;
    bool no_ack = qc->c->no_ack;
    qc->c->ops->deliver(qc->c, q, &e);
    if (no_ack) msg_unref(e.m); /* settled at assignment: the consumer keeps no reference */
}

static void fx_deliver(void *ud, uint32_t node, uint64_t chan, amqp_bytes_t tag, uint64_t msg_id, msg_t *m,
                       uint32_t delivery_count, bool redelivered)
{
    qq_t *qq = ud;
    if (node == qq->s->self) deliver_local(qq, chan, tag, msg_id, m, delivery_count, redelivered);
    /* A consumer on a node without a replica: its node hears of it from the leader. */
    else if (!is_member(qq, node) && is_leader(qq)) relay_add(qq, node, chan, tag, msg_id, m, delivery_count, redelivered);
}

static void fx_result(void *ud, uint32_t node, uint64_t req, const struct qsm_result *r)
{
    qq_t *qq = ud;
    struct qq_state *s = qq->s;
    if (r->m && (node == s->self || is_leader(qq))) body_load(qq, r->m);
    if (node == s->self) {
        struct qq_op *op = op_find(s, req);
        if (op && op->qq == qq) op_complete(op, NULL, r);
        return;
    }
    uint8_t key[12];
    put_be32(key, node);
    put_be64(key + 4, req);
    struct rslot *slot = dict_del(&s->rwait, key, 12);
    if (!slot) return;
    slot->has_result = true;
    slot->r = *r;
    if (r->m) msg_ref(r->m);
}

/* At-least-once dead-lettering (as RabbitMQ's dlx worker on the leader): the message stays in
 * the source queue until every queue its copy reached has confirmed it; then DLX_SETTLE. A copy
 * that reached no queue (no DLX, unroutable) or was refused is tried again later; a new leader
 * starts over with every unsettled one (duplicates are possible, as in RabbitMQ). */
struct dlx_ctx {
    broker_t *b; /* not the qq_state: a late answer may come after qq_free (b->qq NULL then) */
    uint64_t gid, id;
};

static qq_t *qq_by_gid(struct qq_state *s, uint64_t gid);

static void dlx_done(void *arg, bool ok)
{
    struct dlx_ctx *x = arg;
    qq_t *qq = x->b->qq ? qq_by_gid(x->b->qq, x->gid) : NULL;
    if (qq) {
        uint8_t key[8];
        put_be64(key, x->id);
        dict_del(&qq->dlx_out, key, 8);
        if (ok) {
            struct qsm_cmd cmd = {.op = QSM_DLX_SETTLE, .n_ids = 1, .ids_in = &x->id};
            outbox_push(qq, op_new(qq, OP_PLAIN, &cmd, 0));
        } else if (!ev_is_active(&qq->dlx_w)) {
            ev_timer_set(&qq->dlx_w, 5.0, 0);
            ev_timer_start(x->b->loop, &qq->dlx_w);
        }
    }
    free(x);
}

static void dlx_send(void *ud, uint64_t id, msg_t *m, const char *reason, uint32_t delivery_count)
{
    (void)delivery_count;
    qq_t *qq = ud;
    uint8_t key[8];
    put_be64(key, id);
    if (dict_get(&qq->dlx_out, key, 8)) return; /* on its way already */
    if (!body_load(qq, m)) return;
    dict_set(&qq->dlx_out, key, 8, qq);
    struct dlx_ctx *x = malloc(sizeof *x);
    if (!x) abort();
    *x = (struct dlx_ctx){qq->s->b, qq->gid, id};
    q_dead_letter_confirmed(qq->q, m, reason, dlx_done, x);
}

static void dlx_retry_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop, (void)revents;
    qq_t *qq = w->data;
    if (is_leader(qq)) qsm_dlx_each(qq->sm, dlx_send, qq);
}

static void fx_dead_letter(void *ud, msg_t *m, const char *reason, uint32_t delivery_count, uint64_t dlx_id)
{
    qq_t *qq = ud;
    if (!is_leader(qq) || !body_load(qq, m)) return;
    if (dlx_id) dlx_send(qq, dlx_id, m, reason, delivery_count);
    else q_dead_letter(qq->q, m, reason);
}

static void arm_expiry(qq_t *qq)
{
    struct qsm_stats st;
    qsm_stats(qq->sm, &st);
    struct ev_loop *loop = qq->s->b->loop;
    if (!st.earliest_expiry || !is_leader(qq)) {
        ev_timer_stop(loop, &qq->expire_w);
        return;
    }
    double after = (double)(st.earliest_expiry - wall_ms()) / 1000.0 + 0.001;
    if (after < 0.001) after = 0.001;
    if (ev_is_active(&qq->expire_w) && ev_timer_remaining(loop, &qq->expire_w) <= after) return;
    ev_timer_stop(loop, &qq->expire_w);
    ev_timer_set(&qq->expire_w, after, 0);
    ev_timer_start(loop, &qq->expire_w);
}

static void expire_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop, (void)revents;
    qq_t *qq = w->data;
    if (!is_leader(qq)) return;
    struct qsm_cmd cmd = {.op = QSM_EXPIRE};
    outbox_push(qq, op_new(qq, OP_PLAIN, &cmd, 0));
}

/* The leader took this node for dead (it was paused, or cut off longer than the peer timeout)
 * and removed its consumers: they are alive, so they register again (the messages they held
 * were returned and will be redelivered, as after a partition in RabbitMQ). */
static void reregister(qq_t *qq)
{
    size_t pos = 0;
    void *v;
    while (dict_next(&qq->cons, &pos, NULL, NULL, &v)) {
        struct qcons *qc = v;
        consumer_t *c = qc->c;
        struct qsm_cmd cmd = {.op = QSM_CHECKOUT,
                              .chan = qc->chan,
                              .tag = {(const uint8_t *)c->tag, c->tag_len},
                              .prefetch = c->prefetch,
                              .priority = c->priority,
                              .flags = (uint8_t)((c->no_ack ? QSM_F_NO_ACK : 0) | (c->exclusive ? QSM_F_EXCLUSIVE : 0))};
        outbox_push(qq, op_new(qq, OP_PLAIN, &cmd, 0));
    }
    if (dict_size(&qq->cons))
        log_info("quorum queue '%s' in vhost '%s': consumers of this node re-registered (the leader had taken it for "
                 "down)", qq->q->name, qq->q->vh->name);
}

static void sm_apply(mr_group_t *g, raft_index index, const struct raft_entry *entry)
{
    (void)index;
    qq_t *qq = qq_of_group(g);
    if (qq->detached || qq->removing) return;
    struct qsm_cmd cmd;
    if (qsm_decode(entry->data, entry->len, &cmd) != 0) {
        log_warn("quorum queue '%s': malformed command at index %llu ignored", qq->q->name,
                 (unsigned long long)index);
        return;
    }
    struct qsm_effects fx = {.ud = qq,
                             .deliver = fx_deliver,
                             .result = fx_result,
                             .dead_letter = fx_dead_letter,
                             .enqueued = fx_enqueued,
                             .removed = fx_removed};
    qsm_apply(qq->sm, &cmd, &fx);
    if (cmd.op == QSM_DOWN && cmd.node == qq->s->self && cmd.chan == 0 && cmd.seq == 0) reregister(qq);
    if (is_leader(qq)) arm_expiry(qq);
    /* Snapshots every max(4096, 2 x live messages) entries: their cost stays proportional to
     * the commands applied, and the log behind them (disk, recovery time) to the live state.
     * But Raft holds the log since the last snapshot in memory: QQ_LOG_BYTES of it make one
     * due whatever the count (a snapshot costs O(live) without bodies, which stay stored). */
    qq->log_bytes += entry->len;
    if (qq->log_bytes >= QQ_LOG_BYTES && qq->log_bytes >= qsm_live(qq->sm) * QQ_SNAP_BYTES_PER_MSG &&
        !qq->snap_forced) {
        qq->snap_forced = true;
        mr_group_set_snapshot_threshold(g, 1);
    } else if (++qq->applied_since_check >= 1024 && !qq->snap_forced) {
        qq->applied_since_check = 0;
        uint64_t live = qsm_live(qq->sm);
        uint64_t thr = live * 2 > 4096 ? live * 2 : 4096;
        mr_group_set_snapshot_threshold(g, thr > 0x7fffffff ? 0x7fffffff : (unsigned)thr);
    }
}

/* A queue that was drained after holding many stored bodies: their deletions (and its log's)
 * are compacted away now, so that the disk space comes back while the queue sits empty. */
static void compact_drained(qq_t *qq)
{
    store_t *st = qq->s->b->store;
    qq->deleted_bodies = 0;
    uint8_t begin[9], end[9];
    begin[0] = end[0] = KEY_QQ_BODY;
    put_be64(begin + 1, qq->gid);
    put_be64(end + 1, qq->gid + 1);
    store_compact_range_in(st, STORE_MAIN, begin, sizeof begin, end, sizeof end);
}

/* The local snapshot (META): live bodies not stored yet are written in the same batch, and
 * the stored bodies of messages gone since the previous one are deleted. */
static int sm_snapshot_take(mr_group_t *g, raft_index index, void **bytes, size_t *len)
{
    (void)index;
    qq_t *qq = qq_of_group(g);
    struct qq_state *s = qq->s;
    amqp_buf_t out = {0};
    /* About the size of the last one: no doubling overshoot or copies while a large one grows. */
    amqp_buf_reserve(&out, qq->last_snap_len + qq->last_snap_len / 8 + 256);
    if (qsm_snapshot_ex(qq->sm, &out, s->b->store ? QSM_SNAP_META : QSM_SNAP_FULL, snap_body_keep, qq) != 0) {
        amqp_buf_free(&out);
        return -1;
    }
    settle_fetched(qq); /* an abandoned catch-up the log made unnecessary */
    for (size_t i = 0; i < qq->n_dead && s->b->store; i++) {
        uint8_t key[17];
        body_key(key, qq->gid, qq->dead_ids[i]);
        store_del(s->b->store, key, sizeof key);
    }
    qq->deleted_bodies += qq->n_dead;
    qq->n_dead = 0;
    if (qq->deleted_bodies >= QQ_COMPACT_AFTER && qsm_live(qq->sm) == 0 && s->b->store) compact_drained(qq);
    qq->log_bytes = 0;
    if (qq->snap_forced) {
        qq->snap_forced = false;
        qq->applied_since_check = 1024; /* the entry-count threshold again at the next apply */
        mr_group_set_snapshot_threshold(g, 4096);
    }
    qq->last_snap_len = out.len;
    *bytes = out.data;
    *len = out.len;
    return 0;
}

/* What a follower that lags behind the log gets: the current state, bodies by length only (it
 * fetches the ones it lacks before installing it: see "catching up"); with every body inline
 * only when there is no body store (a store-less test host). */
static int sm_snapshot_send(mr_group_t *g, void **bytes, size_t *len)
{
    qq_t *qq = qq_of_group(g);
    amqp_buf_t out = {0};
    bool meta = qq->s->b->store != NULL;
    amqp_buf_reserve(&out, qq->last_snap_len + qq->last_snap_len / 8 + 256);
    if (qsm_snapshot_ex(qq->sm, &out, meta ? QSM_SNAP_META : QSM_SNAP_FULL, meta ? snap_body_keep : snap_body_append,
                        qq) != 0) {
        log_warn("quorum queue '%s' in vhost '%s': a snapshot for a follower could not read every body; "
                 "trying again later", qq->q->name, qq->q->vh->name);
        amqp_buf_free(&out);
        return -1;
    }
    *bytes = out.data;
    *len = out.len;
    return 0;
}

/* Messages checked out to consumers of this node, keyed by channel + msg id: the ones this node
 * has delivered (or holds) and not yet seen settled. */
struct redeliver { qq_t *qq; dict_t had; unsigned n; };

static void local_checked_key(uint8_t key[16], uint64_t chan, uint64_t msg_id)
{
    put_be64(key, chan);
    put_be64(key + 8, msg_id);
}

static void collect_local(void *ud, uint32_t node, uint64_t chan, amqp_bytes_t tag, uint64_t msg_id, msg_t *m,
                          uint32_t delivery_count)
{
    (void)tag, (void)m, (void)delivery_count;
    struct redeliver *x = ud;
    if (node != x->qq->s->self) return;
    uint8_t key[16];
    local_checked_key(key, chan, msg_id);
    dict_set(&x->had, key, sizeof key, x);
}

static void redeliver_local(void *ud, uint32_t node, uint64_t chan, amqp_bytes_t tag, uint64_t msg_id, msg_t *m,
                            uint32_t delivery_count)
{
    struct redeliver *x = ud;
    if (node != x->qq->s->self) return;
    uint8_t key[16];
    local_checked_key(key, chan, msg_id);
    if (dict_get(&x->had, key, sizeof key)) return; /* delivered here already */
    deliver_local(x->qq, chan, tag, msg_id, m, delivery_count, delivery_count > 0);
    x->n++;
}

/* Messages of a state by ascending id (for qsm_find_many). */
struct idvec {
    uint64_t *ids;
    msg_t **ms;
    size_t n;
};

struct id_msg { uint64_t id; msg_t *m; };
struct id_msgs { struct id_msg *v; size_t n, cap; };

static void id_msgs_add(void *ud, uint64_t msg_id, msg_t *m)
{
    struct id_msgs *p = ud;
    if (p->n < p->cap) p->v[p->n++] = (struct id_msg){msg_id, m}; /* cap = qsm_live: every message */
}

static int cmp_id_msg(const void *a, const void *b)
{
    uint64_t x = ((const struct id_msg *)a)->id, y = ((const struct id_msg *)b)->id;
    return x < y ? -1 : x > y;
}

static void idvec_of(const qsm_t *sm, struct idvec *v)
{
    size_t live = qsm_live(sm);
    struct id_msgs p = {malloc((live ? live : 1) * sizeof *p.v), 0, live};
    v->ids = malloc((live ? live : 1) * sizeof *v->ids);
    v->ms = malloc((live ? live : 1) * sizeof *v->ms);
    if (!p.v || !v->ids || !v->ms) abort();
    qsm_each_msg(sm, id_msgs_add, &p);
    qsort(p.v, p.n, sizeof *p.v, cmp_id_msg);
    for (size_t i = 0; i < p.n; i++) {
        v->ids[i] = p.v[i].id;
        v->ms[i] = p.v[i].m;
    }
    v->n = p.n;
    free(p.v);
}

static void idvec_free(struct idvec *v)
{
    free(v->ids);
    free(v->ms);
}

/* A META snapshot (bodies in the store) replaces old. Messages of both whose body old holds in
 * memory get a copy of it (old's go with old; a body not written yet would otherwise be lost);
 * stored bodies of old's messages that the snapshot no longer holds - and of those removed
 * since old's last snapshot - are deleted. */
static void carry_bodies(qq_t *qq, const qsm_t *old, const qsm_t *sm)
{
    store_t *st = qq->s->b->store;
    struct idvec nv, ov;
    idvec_of(sm, &nv);
    idvec_of(old, &ov);
    size_t most = nv.n > ov.n ? nv.n : ov.n;
    msg_t **found = malloc((most ? most : 1) * sizeof *found);
    if (!found) abort();
    qsm_find_many(old, nv.ids, nv.n, found);
    for (size_t i = 0; i < nv.n; i++) {
        msg_t *was = found[i], *m = nv.ms[i];
        if (!was || !was->body || m->body || was->body_len != m->body_len) continue;
        m->body = malloc(m->body_len ? m->body_len : 1);
        if (!m->body) abort();
        memcpy(m->body, was->body, m->body_len);
        m->qq_body = was->qq_body == QQ_BODY_DURABLE ? QQ_BODY_DURABLE : QQ_BODY_NONE;
        res_push(qq->s, qq->gid, m);
    }
    qsm_find_many(sm, ov.ids, ov.n, found);
    uint8_t key[17];
    for (size_t i = 0; i < ov.n; i++) {
        const msg_t *m = ov.ms[i];
        if (found[i] || (m->body && m->qq_body == QQ_BODY_NONE)) continue; /* kept, or never stored */
        body_key(key, qq->gid, ov.ids[i]);
        store_del(st, key, sizeof key);
    }
    for (size_t i = 0; i < qq->n_dead; i++) {
        body_key(key, qq->gid, qq->dead_ids[i]);
        store_del(st, key, sizeof key);
    }
    free(found);
    idvec_free(&nv);
    idvec_free(&ov);
}

static void sm_snapshot_install(mr_group_t *g, raft_index index, const void *bytes, size_t len)
{
    qq_t *qq = qq_of_group(g);
    qsm_t *sm = qsm_restore(bytes, len);
    if (!sm) {
        log_error("quorum queue '%s': unreadable snapshot at index %llu ignored", qq->q->name,
                  (unsigned long long)index);
        return;
    }
    qq->installs++;
    struct redeliver x = {.qq = qq};
    dict_init(&x.had);
    if (dict_size(&qq->cons)) qsm_each_checked(qq->sm, collect_local, &x);
    bool full = len > 0 && ((const uint8_t *)bytes)[0] == QSM_SNAP_FULL;
    if (!full && qq->s->b->store) carry_bodies(qq, qq->sm, sm);
    qsm_free(qq->sm);
    qq->sm = sm;
    qq->n_dead = 0;
    /* FULL (from the leader, or stored by an older version): its bodies replace every stored
     * one. META (ours): bodies stored for ids it had not issued belong to the log's tail. */
    bodies_delete_from(qq->s, qq->gid, full ? 0 : qsm_next_id(sm));
    if (full) qsm_each_msg(sm, res_push_restored, qq);
    /* A member that fell behind and gets the leader's snapshot never applies the entries it
     * covers: checkouts to this node's consumers among them were never delivered here, and their
     * messages would stay assigned until the consumer goes. Deliver those now: every message the
     * snapshot has checked out to a consumer of this node that the replaced state had not. */
    if (dict_size(&qq->cons)) {
        qsm_each_checked(sm, redeliver_local, &x);
        log_info("quorum queue '%s' in vhost '%s': installed the leader's snapshot at index %llu; %u message(s) it "
                 "checked out to consumers on this node delivered", qq->q->name, qq->q->vh->name,
                 (unsigned long long)index, x.n);
    }
    dict_free(&x.had);
}

/* ---- catching up through a leader's snapshot ---------------------------------------------------
 *
 * A member that fell behind the leader's compacted log gets its snapshot: META, bodies by length
 * only (sm_snapshot_send), so that neither side holds the queue's bodies in memory at once. The
 * member keeps the snapshot message aside (MR_SNAP_LATER), fetches from the node that sent it
 * the bodies it does not have - those of messages enqueued after its own state (any older live
 * message is in its state too: both are states of the same log) - in calls of about
 * QQ_FETCH_BYTES ("qq.b", QQ_FETCH_INFLIGHT at a time), writes them to its body store, and once
 * every one is durable steps the snapshot into Raft, which installs it and only then
 * acknowledges it to the leader. A message that has left the queue on the serving node by the
 * time it is asked for was removed by a committed entry after the snapshot: it is installed
 * without its body and marked (qq->tombs) so that nothing delivers it before this node applies
 * that entry. An error or a timeout abandons the attempt: the leader sends a newer snapshot
 * after a while and the next attempt fetches only what the fetched bodies lack.
 *
 * Invariants: an id is in qq->fetched only once its body is durable here; bodies fetched and
 * not part of the state the node ends up with are deleted when no attempt is running
 * (settle_fetched); qq->cu exists exactly while a snapshot is kept aside. */

struct catchup {
    raft_index index; /* the kept snapshot's */
    uint32_t from;    /* the node that sent it: bodies are asked from it */
    uint64_t attempt; /* answers for an abandoned attempt are ignored */
    struct want { uint64_t id; uint32_t len; } *want; /* bodies to fetch, ascending ids */
    size_t n_want, next;      /* next: the first not asked for yet */
    unsigned inflight;        /* calls waiting for an answer */
    size_t syncing;           /* answered, waiting for their store batch to be durable */
    size_t done;              /* durable, or answered as gone */
    uint64_t *gone;           /* answered as having left the queue there (see qq->tombs) */
    size_t n_gone, cap_gone;
    uint64_t bytes;
    ev_tstamp started;
};

/* An outstanding fetch, or a fetched batch waiting to be durable. */
struct fetch_ctx {
    broker_t *b; /* its quorum queue state may be gone by the time the answer or sync comes */
    uint64_t gid, attempt;
    size_t first, n; /* want[first .. first + n) */
    size_t n_ids;    /* bodies among them written to the store */
    uint64_t ids[];  /* their ids (for the sync) */
};

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Sorts qq->fetched and drops duplicates (attempts may fetch a body twice). */
static void fetched_normalize(qq_t *qq)
{
    if (!qq->n_fetched) return;
    qsort(qq->fetched, qq->n_fetched, sizeof *qq->fetched, cmp_u64);
    size_t k = 0;
    for (size_t i = 0; i < qq->n_fetched; i++)
        if (k == 0 || qq->fetched[k - 1] != qq->fetched[i]) qq->fetched[k++] = qq->fetched[i];
    qq->n_fetched = k;
}

static bool fetched_has(const qq_t *qq, uint64_t id)
{
    size_t lo = 0, hi = qq->n_fetched;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (qq->fetched[mid] < id) lo = mid + 1;
        else hi = mid;
    }
    return lo < qq->n_fetched && qq->fetched[lo] == id;
}

/* No attempt running: fetched bodies of messages the state holds stay (they are its stored
 * bodies now; one it also holds in memory is marked stored, so that its removal deletes it),
 * the others are deleted. */
static void settle_fetched(qq_t *qq)
{
    if (!qq->n_fetched || qq->cu) return;
    fetched_normalize(qq);
    msg_t **found = malloc(qq->n_fetched * sizeof *found);
    if (!found) abort();
    qsm_find_many(qq->sm, qq->fetched, qq->n_fetched, found);
    uint8_t key[17];
    for (size_t i = 0; i < qq->n_fetched; i++) {
        msg_t *m = found[i];
        if (m && m->body && m->qq_body == QQ_BODY_NONE) m->qq_body = QQ_BODY_DURABLE;
        if (m) continue;
        body_key(key, qq->gid, qq->fetched[i]);
        store_del(qq->s->b->store, key, sizeof key);
    }
    free(found);
    free(qq->fetched);
    qq->fetched = NULL;
    qq->n_fetched = qq->cap_fetched = 0;
}

static void catchup_free(qq_t *qq)
{
    if (!qq->cu) return;
    free(qq->cu->want);
    free(qq->cu->gone);
    free(qq->cu);
    qq->cu = NULL;
}

static void catchup_abandon(qq_t *qq, const char *why)
{
    struct catchup *cu = qq->cu;
    log_warn("quorum queue '%s' in vhost '%s': catching up to the leader's snapshot at index %llu abandoned after "
             "%zu of %zu bodies: %s; the next snapshot the leader sends is tried", qq->q->name, qq->q->vh->name,
             (unsigned long long)cu->index, cu->done, cu->n_want, why);
    catchup_free(qq);
    if (qq->g) mr_snapshot_drop(qq->g);
}

static void catchup_finish(qq_t *qq)
{
    struct catchup *cu = qq->cu;
    log_info("quorum queue '%s' in vhost '%s': fetched %zu message bodies (%llu bytes) from node %u in %.2f s for "
             "the leader's snapshot at index %llu (%zu more had left the queue there since)", qq->q->name,
             qq->q->vh->name, cu->done - cu->n_gone, (unsigned long long)cu->bytes, cu->from,
             ev_now(qq->s->b->loop) - cu->started, (unsigned long long)cu->index, cu->n_gone);
    uint64_t *gone = cu->gone;
    size_t n_gone = cu->n_gone;
    cu->gone = NULL;
    catchup_free(qq);
    uint64_t installs = qq->installs;
    if (qq->g) mr_snapshot_resume(qq->g); /* Raft installs it (sm_snapshot_install), or has moved on */
    if (qq->installs != installs) {
        uint8_t key[8];
        for (size_t i = 0; i < n_gone; i++) {
            put_be64(key, gone[i]);
            dict_set(&qq->tombs, key, 8, qq);
        }
        settle_fetched(qq);
    }
    /* Not installed (a newer term came): the fetched bodies serve the next attempt, or are
     * settled by the next local snapshot if the log catches the node up instead. */
    free(gone);
}

static void fetch_more(qq_t *qq);

static void fetch_synced(void *arg)
{
    struct fetch_ctx *f = arg;
    qq_t *qq = f->b->qq ? qq_by_gid(f->b->qq, f->gid) : NULL;
    if (qq && qq->g) {
        if (qq->n_fetched + f->n_ids > qq->cap_fetched) {
            qq->cap_fetched = (qq->n_fetched + f->n_ids) * 2;
            qq->fetched = realloc(qq->fetched, qq->cap_fetched * sizeof *qq->fetched);
            if (!qq->fetched) abort();
        }
        memcpy(qq->fetched + qq->n_fetched, f->ids, f->n_ids * sizeof *f->ids);
        qq->n_fetched += f->n_ids;
        struct catchup *cu = qq->cu;
        if (cu && cu->attempt == f->attempt) {
            cu->syncing -= f->n_ids;
            cu->done += f->n_ids;
            if (cu->done == cu->n_want) catchup_finish(qq);
        }
    }
    free(f);
}

static void fetch_reply(void *arg, int status, const char *error, const void *payload, size_t len)
{
    struct fetch_ctx *f = arg;
    qq_t *qq = f->b->qq ? qq_by_gid(f->b->qq, f->gid) : NULL;
    struct catchup *cu = qq ? qq->cu : NULL;
    if (!cu || cu->attempt != f->attempt) {
        free(f);
        return;
    }
    cu->inflight--;
    char why[160];
    if (status != 0) {
        snprintf(why, sizeof why, "node %u answered %d (%s)", cu->from, status, error ? error : "no reason");
        free(f);
        catchup_abandon(qq, why);
        return;
    }
    amqp_reader_t r = amqp_reader(payload, len);
    uint32_t n = amqp_read_u32(&r);
    if (r.bad || n != f->n) {
        free(f);
        catchup_abandon(qq, "malformed answer");
        return;
    }
    store_t *st = qq->s->b->store;
    uint8_t key[17];
    for (size_t i = 0; i < f->n; i++) {
        const struct want *w = &cu->want[f->first + i];
        bool has = amqp_read_u8(&r) != 0;
        amqp_bytes_t body = has ? amqp_read_longstr(&r) : (amqp_bytes_t){0};
        if (r.bad || (has && body.len != w->len)) {
            snprintf(why, sizeof why, "message %llu came malformed from node %u", (unsigned long long)w->id,
                     cu->from);
            free(f);
            catchup_abandon(qq, why);
            return;
        }
        if (!has) {
            /* It left the queue there after the snapshot: a committed entry this node applies
             * after installing removes it. Until then nothing may deliver it (qq->tombs). (Not
             * a reason to give up: under a steady flow the oldest messages of every newer
             * snapshot would be consumed while being fetched, and no attempt would finish.) */
            if (cu->n_gone == cu->cap_gone) {
                cu->cap_gone = cu->cap_gone ? cu->cap_gone * 2 : 64;
                cu->gone = realloc(cu->gone, cu->cap_gone * sizeof *cu->gone);
                if (!cu->gone) abort();
            }
            cu->gone[cu->n_gone++] = w->id;
            cu->done++;
            continue;
        }
        body_key(key, qq->gid, w->id);
        store_put(st, key, sizeof key, body.ptr, body.len);
        f->ids[f->n_ids++] = w->id;
        cu->bytes += body.len;
    }
    if (f->n_ids) {
        cu->syncing += f->n_ids;
        store_on_synced(st, fetch_synced, f); /* f now waits for the batch */
    } else {
        free(f);
    }
    if (cu->done == cu->n_want) {
        catchup_finish(qq); /* the rest was durable already */
        return;
    }
    fetch_more(qq);
}

/* Keeps QQ_FETCH_INFLIGHT calls going while bodies are left to ask for. */
static void fetch_more(qq_t *qq)
{
    struct catchup *cu = qq->cu;
    broker_t *b = qq->s->b;
    while (cu && cu->inflight < QQ_FETCH_INFLIGHT && cu->next < cu->n_want) {
        size_t first = cu->next, n = 0;
        uint64_t bytes = 0;
        while (first + n < cu->n_want && (n == 0 || bytes + cu->want[first + n].len <= QQ_FETCH_BYTES)) {
            bytes += cu->want[first + n].len;
            n++;
        }
        amqp_buf_t out = {0};
        amqp_buf_put_u64(&out, qq->gid);
        amqp_buf_put_u32(&out, (uint32_t)n);
        for (size_t i = 0; i < n; i++) amqp_buf_put_u64(&out, cu->want[first + i].id);
        struct fetch_ctx *f = malloc(sizeof *f + n * sizeof f->ids[0]);
        if (!f) abort();
        *f = (struct fetch_ctx){.b = b, .gid = qq->gid, .attempt = cu->attempt, .first = first, .n = n};
        int rc = b->node_call ? b->node_call(b->node_ctx, cu->from, "qq.b", out.data, out.len, QQ_FETCH_TIMEOUT,
                                             fetch_reply, f)
                              : -1;
        amqp_buf_free(&out);
        if (rc != 0) {
            free(f);
            catchup_abandon(qq, "the call could not be sent");
            return;
        }
        cu->next += n;
        cu->inflight++;
    }
}

struct want_vec {
    const qq_t *qq;
    uint64_t from_id; /* ids below it are in this node's state */
    struct want *v;
    size_t n, cap;
    uint64_t bytes;
};

static void want_add(void *ud, uint64_t msg_id, msg_t *m)
{
    struct want_vec *w = ud;
    if (msg_id < w->from_id || fetched_has(w->qq, msg_id)) return;
    if (w->n == w->cap) {
        w->cap = w->cap ? w->cap * 2 : 1024;
        w->v = realloc(w->v, w->cap * sizeof *w->v);
        if (!w->v) abort();
    }
    w->v[w->n++] = (struct want){msg_id, (uint32_t)m->body_len};
    w->bytes += m->body_len;
}

static int cmp_want(const void *a, const void *b)
{
    uint64_t x = ((const struct want *)a)->id, y = ((const struct want *)b)->id;
    return x < y ? -1 : x > y;
}

static int sm_snapshot_arriving(mr_group_t *g, raft_id from, raft_index index, const void *bytes, size_t len)
{
    qq_t *qq = qq_of_group(g);
    struct qq_state *s = qq->s;
    if (!s->b->store || len == 0 || ((const uint8_t *)bytes)[0] != QSM_SNAP_META) return MR_SNAP_INSTALL;
    if (qq->cu) return MR_SNAP_IGNORE; /* busy with an earlier one */
    qsm_t *t = qsm_restore(bytes, len);
    if (!t) return MR_SNAP_INSTALL; /* refused (and logged) there */
    fetched_normalize(qq);
    struct want_vec w = {.qq = qq, .from_id = qsm_next_id(qq->sm)};
    qsm_each_msg(t, want_add, &w);
    qsm_free(t);
    if (w.n == 0) {
        free(w.v);
        return MR_SNAP_INSTALL;
    }
    qsort(w.v, w.n, sizeof *w.v, cmp_want);
    struct catchup *cu = calloc(1, sizeof *cu);
    if (!cu) abort();
    *cu = (struct catchup){.index = index, .from = (uint32_t)from, .attempt = ++s->catchups, .want = w.v, .n_want = w.n,
                           .started = ev_now(s->b->loop)};
    qq->cu = cu;
    log_info("quorum queue '%s' in vhost '%s': catching up to the leader's snapshot at index %llu: fetching %zu "
             "message bodies (%llu bytes) from node %u", qq->q->name, qq->q->vh->name, (unsigned long long)index,
             w.n, (unsigned long long)w.bytes, (unsigned)from);
    fetch_more(qq);
    return qq->cu ? MR_SNAP_LATER : MR_SNAP_IGNORE; /* abandoned at once: the message goes too */
}

/* Reads stored bodies of one group in ascending id order with one iterator: a run of adjacent
 * keys costs a step each instead of a lookup each (a fetch asks for ~1,000 mostly consecutive
 * ids; point lookups made the serving node's loop the bottleneck of a catch-up). */
struct body_cursor {
    uint64_t gid;
    store_iter_t *it;
    bool have;     /* cur_id/val hold the entry the iterator returned last */
    uint64_t cur_id;
    amqp_bytes_t val;
};

static bool body_cursor_step(struct body_cursor *c)
{
    const void *k, *v;
    size_t klen, vlen;
    c->have = store_iter_next(c->it, &k, &klen, &v, &vlen) && klen == 17;
    if (c->have) {
        c->cur_id = store_get_be64((const uint8_t *)k + 9);
        c->val = (amqp_bytes_t){v, vlen};
    }
    return c->have;
}

/* The stored body of id (valid until the next call), ids asked in ascending order. */
static bool body_cursor_find(struct body_cursor *c, store_t *st, uint64_t id, amqp_bytes_t *out)
{
    if (!st) return false;
    if (!c->it) {
        uint8_t prefix[9];
        prefix[0] = KEY_QQ_BODY;
        put_be64(prefix + 1, c->gid);
        if (!(c->it = store_iter_prefix(st, prefix, sizeof prefix))) return false;
        c->have = false;
    }
    for (int steps = 0; c->have && c->cur_id < id && steps < 8; steps++) body_cursor_step(c);
    if (!c->have || c->cur_id < id) { /* far behind, or nothing read yet: seek */
        uint8_t key[17];
        body_key(key, c->gid, id);
        store_iter_seek(c->it, key, sizeof key);
        body_cursor_step(c);
    }
    if (!c->have || c->cur_id != id) return false;
    *out = c->val;
    return true;
}

/* "qq.b": the bodies of the named messages of a queue this node holds a replica of, from memory
 * or the body store; a message the state no longer holds is answered as absent. */
static void bodies_serve(struct qq_state *s, const void *payload, size_t len, const struct peer_reply_to *to)
{
    broker_t *b = s->b;
    amqp_reader_t r = amqp_reader(payload, len);
    uint64_t gid = amqp_read_u64(&r);
    uint32_t n = amqp_read_u32(&r);
    qq_t *qq = r.bad ? NULL : qq_by_gid(s, gid);
    if (r.bad || n > r.left / 8 || !qq || !qq->g) {
        if (b->node_reply) b->node_reply(b->node_ctx, to, BR_NOT_FOUND, "no replica of that queue here", NULL, 0);
        return;
    }
    uint64_t *ids = malloc((n ? n : 1) * sizeof *ids);
    msg_t **found = malloc((n ? n : 1) * sizeof *found);
    if (!ids || !found) abort();
    bool ascending = true;
    for (uint32_t i = 0; i < n; i++) {
        ids[i] = amqp_read_u64(&r);
        if (i && ids[i] <= ids[i - 1]) ascending = false;
    }
    if (!ascending) {
        free(ids);
        free(found);
        if (b->node_reply) b->node_reply(b->node_ctx, to, BR_PRECONDITION_FAILED, "ids not ascending", NULL, 0);
        return;
    }
    qsm_find_many(qq->sm, ids, n, found);
    amqp_buf_t out = {0};
    amqp_buf_put_u32(&out, n);
    struct body_cursor cur = {.gid = gid};
    for (uint32_t i = 0; i < n; i++) {
        const msg_t *m = found[i];
        amqp_bytes_t body = m && m->body ? (amqp_bytes_t){m->body, m->body_len} : (amqp_bytes_t){0};
        if (m && !m->body && (!body_cursor_find(&cur, b->store, ids[i], &body) || body.len != m->body_len))
            m = NULL; /* paged out, and not in the store: cannot happen (logged by body_load when it does) */
        amqp_buf_put_u8(&out, m != NULL);
        if (m) amqp_buf_put_longstr(&out, body);
    }
    if (cur.it) store_iter_free(cur.it);
    if (b->node_reply) b->node_reply(b->node_ctx, to, 0, NULL, out.data, out.len);
    amqp_buf_free(&out);
    free(ids);
    free(found);
}

static void propose_down(qq_t *qq, uint32_t node, uint64_t chan, uint64_t keep_boot)
{
    struct qsm_cmd cmd = {.op = QSM_DOWN, .chan = chan, .seq = keep_boot};
    struct qq_op *op = op_new(qq, OP_PLAIN, &cmd, 0);
    /* op_new stamped this node as the command's node: DOWN names the node that went */
    amqp_buf_free(&op->cmd);
    cmd.node = node;
    qsm_encode(&op->cmd, &cmd);
    outbox_push(qq, op);
}

static void relay_again(void *ud, uint32_t node, uint64_t chan, amqp_bytes_t tag, uint64_t msg_id, msg_t *m,
                        uint32_t delivery_count)
{
    qq_t *qq = ud;
    if (!is_member(qq, node) && node_up(qq->s, node))
        relay_add(qq, node, chan, tag, msg_id, m, delivery_count, delivery_count > 0);
}

static void leader_duties(qq_t *qq)
{
    struct qq_state *s = qq->s;
    queue_t *q = qq->q;
    /* Policies: the settings in force reach the replicas as a command. */
    struct qsm_config want;
    config_of(q, true, &want);
    if (!config_equal(&want, qsm_config(qq->sm))) {
        struct qsm_cmd cmd = {.op = QSM_CONFIG, .config = want};
        outbox_push(qq, op_new(qq, OP_PLAIN, &cmd, 0));
    }
    /* At-least-once: dead-letterings the previous leader had not finished. */
    qsm_dlx_each(qq->sm, dlx_send, qq);
    /* Deliveries the previous leader relayed to consumers on nodes without a replica may have
     * died with it: send them all again (their nodes drop the ones they already have). */
    qsm_each_checked(qq->sm, relay_again, qq);
    /* Consumers of nodes that are down get their messages back. */
    for (unsigned i = 0; i < qq->n_members; i++)
        if (qq->members[i] != s->self && !node_up(s, qq->members[i])) propose_down(qq, qq->members[i], 0, 0);
    /* Placement: the preferred leader (the first member) leads a new queue - only in its first
     * term: a leadership won later was handed over on purpose (a drain, the old leader's own
     * removal) or taken from a failed node, and giving it back would undo that. */
    if (!qq->transfer_done) {
        qq->transfer_done = true;
        uint32_t want = qq->members[0];
        if (qq->is_new && want != s->self && node_up(s, want) && mr_group_raft(qq->g)->term <= 1 &&
            !s->draining)
            mr_transfer(qq->g, want);
    }
    arm_expiry(qq);
}

/* Hands this node's leadership of the queue to another member that is up, the next one after
 * the queue's rotation point so that drained leaderships spread over the other nodes. */
static bool transfer_away(qq_t *qq)
{
    struct qq_state *s = qq->s;
    for (unsigned k = 0; k < qq->n_members; k++) {
        raft_id to = qq->members[(qq->rr + k) % qq->n_members];
        if (to == s->self || !node_up(s, (uint32_t)to)) continue;
        qq->rr = (qq->rr + k + 1) % qq->n_members;
        if (mr_transfer(qq->g, to) == 0) return true;
    }
    return false;
}

static void sm_role_changed(mr_group_t *g, enum raft_role role, raft_id leader)
{
    qq_t *qq = qq_of_group(g);
    if (qq->detached || qq->removing) return;
    if (leader) qq->leader_hint = (uint32_t)leader;
    if (role == RAFT_LEADER) {
        log_info("quorum queue '%s' in vhost '%s': leader on this node (term %llu)", qq->q->name, qq->q->vh->name,
                 (unsigned long long)mr_group_raft(g)->term);
        leader_duties(qq);
        if (qq->s->draining) transfer_away(qq);
    }
    else ev_timer_stop(qq->s->b->loop, &qq->expire_w);
    mark_dirty(qq); /* waiting commands can go to the (new) leader */
}

static const struct mr_sm_ops qq_sm_ops = {
    .apply = sm_apply,
    .snapshot_take = sm_snapshot_take,
    .snapshot_install = sm_snapshot_install,
    .snapshot_send = sm_snapshot_send,
    .snapshot_arriving = sm_snapshot_arriving,
    .role_changed = sm_role_changed,
};

/* A new group elects its first leader at once rather than after an election timeout. */
static void campaign_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    qq_t *qq = w->data;
    if (!qq->g || mr_group_leader(qq->g) || qq->campaigns_left-- <= 0) {
        ev_timer_stop(loop, w);
        return;
    }
    mr_campaign(qq->g);
}

static void group_open(qq_t *qq)
{
    struct qq_state *s = qq->s;
    if (qq->g || qq->detached || !s->started || !is_member(qq, s->self)) return;
    int err = 0;
    /* A member added to a running group learns the configuration from its leader. */
    qq->g = mr_group_open(s->host, qq->gid, qq->members, qq->joining ? 0 : qq->n_members, &qq_sm_ops, qq, &err);
    if (!qq->g) {
        log_error("quorum queue '%s' in vhost '%s': cannot open its Raft group (%s)", qq->q->name, qq->q->vh->name,
                  mr_status_name(err));
        return;
    }
    if (qq->n_members == 1 || (qq->is_new && qq->members[0] == s->self)) {
        mr_campaign(qq->g);
        qq->campaigns_left = 20;
        ev_timer_start(s->b->loop, &qq->campaign_w);
    }
    if (!qq->is_new) {
        /* Restarted: consumers of this node's previous runs are gone. */
        propose_down(qq, s->self, 0, s->boot);
    }
}

/* ---- attach / detach ------------------------------------------------------------------------ */

void qq_attach(queue_t *q, amqp_bytes_t members)
{
    broker_t *b = q->vh->broker;
    struct qq_state *s = state_of(b);
    qq_t *qq = calloc(1, sizeof *qq);
    if (!qq) abort();
    qq->q = q;
    qq->s = s;
    qq->gid = q->uid;
    for (size_t i = 0; i + 4 <= members.len && qq->n_members < RAFT_MAX_NODES; i += 4)
        qq->members[qq->n_members++] = amqp_get_u32(members.ptr + i);
    if (qq->n_members == 0) qq->members[qq->n_members++] = self_id(b);
    dict_init(&qq->chans);
    dict_init(&qq->cons);
    dict_init(&qq->relayed);
    dict_init(&qq->tombs);
    ev_timer_init(&qq->expire_w, expire_cb, 0, 0);
    qq->expire_w.data = qq;
    ev_timer_init(&qq->campaign_w, campaign_cb, 0.1, 0.1);
    qq->campaign_w.data = qq;
    ev_timer_init(&qq->dlx_w, dlx_retry_cb, 5.0, 0);
    qq->dlx_w.data = qq;
    dict_init(&qq->dlx_out);
    struct qsm_config cfg;
    config_of(q, false, &cfg);
    qq->sm = qsm_new(&cfg);
    qq->is_new = s->started;
    q->qq = qq;
    uint8_t key[8];
    put_be64(key, qq->gid);
    dict_set(&s->groups, key, 8, qq);
    /* Opened by the next flush: this may run inside a callback of the Raft host. */
    if (s->started && is_member(qq, s->self)) mark_dirty(qq);
}

static void qcons_free_held(struct qcons *qc)
{
    for (size_t i = 0; i < qc->nheld; i++) msg_unref(qc->held[i].m);
    free(qc->held);
    qc->held = NULL;
    qc->nheld = qc->capheld = 0;
}

void qq_detach(queue_t *q)
{
    qq_t *qq = q->qq;
    if (!qq || qq->detached) return;
    struct qq_state *s = qq->s;
    qq->detached = true;
    struct ev_loop *loop = s->b->loop;
    ev_timer_stop(loop, &qq->expire_w);
    ev_timer_stop(loop, &qq->campaign_w);
    ev_timer_stop(loop, &qq->dlx_w);
    dict_free(&qq->dlx_out);
    dict_init(&qq->dlx_out);
    /* Fail what waits for this queue. */
    size_t pos = 0;
    void *v;
    ptrvec_t mine = {0};
    while (dict_next(&s->ops, &pos, NULL, NULL, &v))
        if (((struct qq_op *)v)->qq == qq) ptrvec_push(&mine, v);
    for (size_t i = 0; i < mine.n; i++) {
        struct qq_op *op = mine.items[i];
        if (op->kind == OP_PUBLISH) op_complete(op, NULL, NULL); /* confirmed: gone with the queue */
        else op_fail(op, BR_NOT_FOUND, "queue deleted");
    }
    ptrvec_free(&mine);
    while (qq->out_head) {
        struct qq_op *op = qq->out_head;
        qq->out_head = op->next;
        op->queued = false;
        if (op->finished) op_free(op);
        else {
            uint8_t key[8];
            put_be64(key, op->req);
            dict_del(&s->ops, key, 8);
            op_free(op);
        }
    }
    qq->out_tail = NULL;
    for (size_t i = 0; i < qq->n_accs; i++) free(qq->accs[i].ids);
    free(qq->accs);
    qq->accs = NULL;
    qq->n_accs = qq->cap_accs = 0;
    pos = 0;
    while (dict_next(&qq->cons, &pos, NULL, NULL, &v)) {
        struct qcons *qc = v;
        qcons_free_held(qc);
        qc->c->remote = NULL;
        free(qc);
    }
    dict_free(&qq->cons);
    dict_init(&qq->cons);
    dict_free(&qq->relayed);
    dict_init(&qq->relayed);
    dict_free(&qq->tombs);
    dict_init(&qq->tombs);
    pos = 0;
    while (dict_next(&qq->chans, &pos, NULL, NULL, &v)) free(v);
    dict_free(&qq->chans);
    dict_init(&qq->chans);
    uint8_t key[8];
    put_be64(key, qq->gid);
    if (dict_get(&s->groups, key, 8) == qq) dict_del(&s->groups, key, 8);
    /* This may run inside a callback of the Raft host (the metadata group applying the
     * deletion), where groups must not be closed: the flush watcher destroys it. */
    q->qq = NULL;
    qq->next_grave = s->graveyard;
    s->graveyard = qq;
}

/* Destroys detached queues' groups (and their storage) and frees them. */
static void bury(struct qq_state *s)
{
    while (s->graveyard) {
        qq_t *qq = s->graveyard;
        s->graveyard = qq->next_grave;
        if (qq->g) {
            mr_group_destroy(qq->g);
            bodies_delete_from(s, qq->gid, 0);
        }
        qq->g = NULL;
        qsm_free(qq->sm);
        free(qq->dead_ids);
        catchup_free(qq);
        free(qq->fetched);
        free(qq);
    }
}

/* ---- channels and consumers ----------------------------------------------------------------- */

uint64_t qq_channel_id(broker_t *b)
{
    struct qq_state *s = state_of(b);
    return ((uint64_t)s->boot << 32) | ++s->chan_counter;
}

static struct chanrec *chan_rec(qq_t *qq, uint64_t chan)
{
    uint8_t key[8];
    put_be64(key, chan);
    struct chanrec *r = dict_get(&qq->chans, key, 8);
    if (!r) {
        r = calloc(1, sizeof *r);
        if (!r) abort();
        dict_set(&qq->chans, key, 8, r);
    }
    return r;
}

/* The relayed deliveries of a closing channel: its consumers are gone with it. */
static void forget_relayed(qq_t *qq, uint64_t chan)
{
    if (!dict_size(&qq->relayed)) return;
    size_t pos = 0;
    const char *k;
    size_t kl;
    while (dict_next(&qq->relayed, &pos, &k, &kl, NULL)) {
        if (kl != 16 || amqp_get_u64((const uint8_t *)k) != chan) continue;
        uint8_t rk[16];
        memcpy(rk, k, 16);
        dict_del(&qq->relayed, rk, 16); /* deleting the current entry is allowed */
    }
}

void qq_channel_closing(broker_t *b, uint64_t chan)
{
    if (!b->qq || !chan) return;
    struct qq_state *s = b->qq;
    s->closing_chan = chan;
    uint8_t key[8];
    put_be64(key, chan);
    size_t pos = 0;
    void *v;
    while (dict_next(&s->groups, &pos, NULL, NULL, &v)) {
        qq_t *qq = v;
        forget_relayed(qq, chan);
        struct chanrec *r = dict_del(&qq->chans, key, 8);
        if (!r) continue;
        free(r);
        propose_down(qq, s->self, chan, 0);
    }
}

static void qcons_key(const struct qcons *qc, uint8_t *key, size_t *klen)
{
    put_be64(key, qc->chan);
    size_t tl = qc->c->tag_len < 256 ? qc->c->tag_len : 255;
    memcpy(key + 8, qc->c->tag, tl);
    *klen = 8 + tl;
}

static void qcons_ready(qq_t *qq, struct qcons *qc)
{
    /* Deliveries that arrived before consume-ok went out, in order. */
    size_t n = qc->nheld;
    qentry_t *held = qc->held;
    qc->held = NULL;
    qc->nheld = qc->capheld = 0;
    for (size_t i = 0; i < n; i++) {
        queue_t *q = qq->q;
        q->stat_deliver++;
        q->vh->broker->stat_deliver++;
        bool no_ack = qc->c->no_ack;
        qc->c->ops->deliver(qc->c, q, &held[i]);
        if (no_ack) msg_unref(held[i].m);
    }
    free(held);
}

/* Forgets a local consumer; with cancel, the replicated state is told (basic.cancel). */
static void qcons_drop(qq_t *qq, struct qcons *qc, bool cancel)
{
    uint8_t key[8 + 256];
    size_t klen;
    qcons_key(qc, key, &klen);
    dict_del(&qq->cons, key, klen);
    consumer_t *c = qc->c;
    ptrvec_remove(&qq->q->consumers, c);
    if (cancel) {
        struct qsm_cmd cmd = {.op = QSM_CANCEL, .chan = qc->chan, .tag = {(const uint8_t *)c->tag, c->tag_len}};
        outbox_push(qq, op_new(qq, OP_PLAIN, &cmd, 0));
    }
    for (size_t i = 0; i < qc->nheld; i++) accumulate(qq, QSM_RETURN, qc->chan, qc->held[i].seq);
    qcons_free_held(qc);
    c->remote = NULL;
    free(qc);
}

void qq_consume(queue_t *q, consumer_t *c, uint64_t chan, rq_done_cb done, void *arg)
{
    qq_t *qq = q->qq;
    struct qcons *qc = calloc(1, sizeof *qc);
    if (!qc) abort();
    qc->c = c;
    qc->chan = chan;
    c->q = q;
    c->remote = qc;
    uint8_t key[8 + 256];
    size_t klen;
    qcons_key(qc, key, &klen);
    dict_set(&qq->cons, key, klen, qc);
    ptrvec_push(&q->consumers, c);
    chan_rec(qq, chan);
    struct qsm_cmd cmd = {.op = QSM_CHECKOUT,
                          .chan = chan,
                          .tag = {(const uint8_t *)c->tag, c->tag_len},
                          .prefetch = c->prefetch,
                          .priority = c->priority,
                          .flags = (uint8_t)((c->no_ack ? QSM_F_NO_ACK : 0) | (c->exclusive ? QSM_F_EXCLUSIVE : 0))};
    struct qq_op *op = op_new(qq, OP_CONSUME, &cmd, QQ_OP_TIMEOUT);
    op->u.consume.cb = done;
    op->u.consume.arg = arg;
    op->u.consume.qc = qc;
    outbox_push(qq, op);
    q_touch(q);
}

void qq_consumer_remove(queue_t *q, consumer_t *c)
{
    qq_t *qq = q->qq;
    struct qcons *qc = c->remote;
    if (!qq || !qc) {
        ptrvec_remove(&q->consumers, c);
        return;
    }
    /* A consume still waiting for its answer: the op forgets the consumer too. */
    size_t pos = 0;
    void *v;
    while (dict_next(&qq->s->ops, &pos, NULL, NULL, &v)) {
        struct qq_op *op = v;
        if (op->kind == OP_CONSUME && op->u.consume.qc == qc) op->u.consume.qc = NULL;
    }
    qcons_drop(qq, qc, qc->chan != qq->s->closing_chan);
}

/* ---- publish, get, purge, settle ------------------------------------------------------------ */

static int64_t expiration_of(const msg_t *m)
{
    props_core_t p;
    if (!m->has_expiration || props_core_read(m->props, m->props_len, &p) != 0 || !p.has_expiration) return -1;
    int64_t v = 0;
    for (size_t i = 0; i < p.expiration.len && i < 20; i++)
        if (p.expiration.ptr[i] >= '0' && p.expiration.ptr[i] <= '9') v = v * 10 + (p.expiration.ptr[i] - '0');
    return v;
}

bool qq_publish(queue_t *q, msg_t *m, uint64_t chan, rq_pub_cb cb, void *arg, uint64_t tag)
{
    qq_t *qq = q->qq;
    if (!qq || qq->detached || !m->body) return false;
    size_t rl = msg_record_size(m);
    uint8_t *rec = malloc(rl ? rl : 1);
    if (!rec) abort();
    msg_record_write(m, rec);
    struct qsm_cmd cmd = {.op = QSM_ENQUEUE,
                          .chan = chan,
                          .seq = chan ? ++chan_rec(qq, chan)->next_seq : 0,
                          .expiration_ms = expiration_of(m),
                          .msg = {rec, rl}};
    struct qq_op *op = op_new(qq, OP_PUBLISH, &cmd, 0);
    free(rec);
    op->u.pub.cb = cb;
    op->u.pub.arg = arg;
    op->u.pub.tag = tag;
    outbox_push(qq, op);
    return true;
}

void qq_get(queue_t *q, bool no_ack, uint64_t chan, rq_get_cb cb, void *arg)
{
    qq_t *qq = q->qq;
    chan_rec(qq, chan);
    struct qsm_cmd cmd = {.op = QSM_DEQUEUE, .chan = chan, .flags = no_ack ? QSM_F_NO_ACK : 0};
    struct qq_op *op = op_new(qq, OP_GET, &cmd, QQ_OP_TIMEOUT);
    op->u.get.cb = cb;
    op->u.get.arg = arg;
    op->u.get.chan = chan;
    op->u.get.no_ack = no_ack;
    outbox_push(qq, op);
    q_touch(q);
}

void qq_purge(queue_t *q, rq_count_cb cb, void *arg)
{
    qq_t *qq = q->qq;
    struct qsm_cmd cmd = {.op = QSM_PURGE};
    struct qq_op *op = op_new(qq, OP_PURGE, &cmd, QQ_OP_TIMEOUT);
    op->u.count.cb = cb;
    op->u.count.arg = arg;
    outbox_push(qq, op);
}

static void accumulate(qq_t *qq, uint8_t op, uint64_t chan, uint64_t id)
{
    if (qq->detached) return;
    struct acc *a = qq->n_accs ? &qq->accs[qq->n_accs - 1] : NULL;
    if (!a || a->op != op || a->chan != chan) {
        if (qq->n_accs == qq->cap_accs) {
            qq->cap_accs = qq->cap_accs ? qq->cap_accs * 2 : 4;
            qq->accs = realloc(qq->accs, qq->cap_accs * sizeof *qq->accs);
            if (!qq->accs) abort();
        }
        a = &qq->accs[qq->n_accs++];
        memset(a, 0, sizeof *a);
        a->op = op;
        a->chan = chan;
    }
    if (a->n == a->cap) {
        a->cap = a->cap ? a->cap * 2 : 16;
        a->ids = realloc(a->ids, a->cap * sizeof *a->ids);
        if (!a->ids) abort();
    }
    a->ids[a->n++] = id;
    mark_dirty(qq);
}

void qq_settle(queue_t *q, const qentry_t *e, int op)
{
    qq_t *qq = q->qq;
    if (op == QSM_SETTLE) {
        q->stat_ack++;
        q->vh->broker->stat_ack++;
    }
    if (qq && !qq->detached && e->qq_chan != qq->s->closing_chan) accumulate(qq, (uint8_t)op, e->qq_chan, e->seq);
    if (qq && dict_size(&qq->relayed)) {
        uint8_t rk[16];
        put_be64(rk, e->qq_chan);
        put_be64(rk + 8, e->seq);
        dict_del(&qq->relayed, rk, 16);
    }
    msg_unref(e->m);
}

uint32_t qq_message_count(queue_t *q)
{
    if (!q->qq || !q->qq->sm || !q->qq->g) return 0;
    struct qsm_stats st;
    qsm_stats(q->qq->sm, &st);
    return (uint32_t)st.ready;
}

uint32_t qq_consumer_count(queue_t *q)
{
    if (!q->qq || !q->qq->sm || !q->qq->g) return (uint32_t)q->consumers.n;
    struct qsm_stats st;
    qsm_stats(q->qq->sm, &st);
    return st.consumers;
}

void qq_settings_changed(queue_t *q)
{
    qq_t *qq = q->qq;
    if (qq && !qq->detached && qq->sm && is_leader(qq)) {
        struct qsm_config want;
        config_of(q, true, &want);
        if (!config_equal(&want, qsm_config(qq->sm))) {
            struct qsm_cmd cmd = {.op = QSM_CONFIG, .config = want};
            outbox_push(qq, op_new(qq, OP_PLAIN, &cmd, 0));
        }
    }
}

void qq_info(queue_t *q, struct qq_info *out)
{
    memset(out, 0, sizeof *out);
    qq_t *qq = q->qq;
    if (!qq) return;
    out->n_members = qq->n_members < 16 ? qq->n_members : 16;
    memcpy(out->members, qq->members, out->n_members * sizeof out->members[0]);
    out->leader = qq->leader_hint;
    if (!qq->g) return;
    out->member = true;
    out->leader = (uint32_t)mr_group_leader(qq->g);
    const struct raft *r = mr_group_raft(qq->g);
    out->term = r->term;
    out->commit = r->commit;
    out->applied = mr_group_applied(qq->g);
    out->snapshot = r->snap.index;
    out->written = r->persisted ? r->persisted : r->snap.index;
    struct qsm_stats st;
    qsm_stats(qq->sm, &st);
    out->ready = st.ready;
    out->ready_bytes = st.ready_bytes;
    out->unacked = st.unacked;
    out->unacked_bytes = st.unacked_bytes;
    out->dlx = st.dlx;
    out->consumers = st.consumers;
    out->bytes_ram = qq->res_bytes;
}

/* ---- membership ------------------------------------------------------------------------------
 *
 * Adding a member: the leader adds it to the Raft configuration as a learner (promoted to voter
 * once caught up through snapshot + log), then the new member list goes through the metadata
 * log, which makes the new node open the group (until then the leader's messages to it are
 * dropped and retried); if that fails the learner is removed again.
 * Removing one: out of the Raft configuration first, then out of the metadata (the node then
 * deletes its replica). Both run on the group's leader; other nodes forward the request
 * ("qq.m": u64 gid, u32 node, u8 add; answered with a status and a text). */

struct mchange {
    struct qq_state *s;
    uint64_t gid;
    uint32_t node;
    bool add;
    qq_member_cb cb; /* local request */
    void *arg;
    bool remote;     /* forwarded: answer to `to` */
    struct peer_reply_to to;
};

static qq_t *qq_by_gid(struct qq_state *s, uint64_t gid)
{
    uint8_t key[8];
    put_be64(key, gid);
    return dict_get(&s->groups, key, 8);
}

static void mchange_finish(struct mchange *mc, int code, const char *text)
{
    qq_t *qq = qq_by_gid(mc->s, mc->gid);
    if (qq) qq->changing = false;
    if (mc->remote) {
        broker_t *b = mc->s->b;
        if (b->node_reply) b->node_reply(b->node_ctx, &mc->to, code, code ? text : NULL, NULL, 0);
    } else {
        mc->cb(mc->arg, code, code ? text : "");
    }
    free(mc);
}

static void drop_replica(qq_t *qq)
{
    qq->removing = false;
    if (qq->g) {
        mr_group_destroy(qq->g);
        bodies_delete_from(qq->s, qq->gid, 0);
    }
    qq->g = NULL;
    qq->n_dead = 0;
    qq->n_fetched = 0; /* deleted with the rest */
    catchup_free(qq);
    dict_free(&qq->tombs);
    dict_init(&qq->tombs);
    ev_timer_stop(qq->s->b->loop, &qq->expire_w);
    struct qsm_config cfg;
    config_of(qq->q, false, &cfg);
    qsm_free(qq->sm);
    qq->sm = qsm_new(&cfg);
    log_info("quorum queue '%s' in vhost '%s': this node is no longer a member", qq->q->name, qq->q->vh->name);
}

void qq_set_members(queue_t *q, amqp_bytes_t members)
{
    qq_t *qq = q->qq;
    if (!qq) return;
    struct qq_state *s = qq->s;
    bool was = is_member(qq, s->self);
    qq->n_members = 0;
    for (size_t i = 0; i + 4 <= members.len && qq->n_members < RAFT_MAX_NODES; i += 4)
        qq->members[qq->n_members++] = amqp_get_u32(members.ptr + i);
    bool now = is_member(qq, s->self);
    if (now && !was) {
        qq->joining = true;
        if (s->started) mark_dirty(qq);
    } else if (was && !now && qq->g) {
        qq->removing = true; /* the group cannot be destroyed inside the metadata apply */
        mark_dirty(qq);
    }
}

static void submit_members(struct mchange *mc, qq_t *qq, void (*done)(void *, const br_err_t *))
{
    amqp_buf_t members = {0};
    for (unsigned i = 0; i < qq->n_members; i++)
        if (mc->add || qq->members[i] != mc->node) amqp_buf_put_u32(&members, qq->members[i]);
    if (mc->add) amqp_buf_put_u32(&members, mc->node);
    struct meta_cmd c = {.op = META_Q_MEMBERS,
                         .vhost = AMQP_BYTES_CSTR(qq->q->vh->name),
                         .name = {(const uint8_t *)qq->q->name, qq->q->name_len},
                         .key = {members.data, members.len}};
    meta_submit(mc->s->b, &c, done, mc);
    amqp_buf_free(&members);
}

static void removed_from_meta(void *arg, const br_err_t *err)
{
    struct mchange *mc = arg;
    mchange_finish(mc, err ? err->code : 0, err ? err->text : "");
}

static const char *conf_error(int status)
{
    return status == MR_EBUSY ? "a membership change is in progress: try again"
           : status == MR_ENOTLEADER || status == MR_EDEPOSED ? "the queue's leader changed: try again"
                                                               : mr_status_name(status);
}

static void rollback_done(mr_group_t *g, void *arg, int status, raft_index index)
{
    (void)g, (void)arg, (void)status, (void)index;
}

static void added_to_meta(void *arg, const br_err_t *err)
{
    struct mchange *mc = arg;
    qq_t *qq = qq_by_gid(mc->s, mc->gid);
    if (err && qq && qq->g) /* the node would never open the group: take the learner out again */
        mr_conf_change(qq->g, RAFT_CC_REMOVE, mc->node, rollback_done, NULL);
    mchange_finish(mc, err ? err->code : 0, err ? err->text : "");
}

static void conf_done(mr_group_t *g, void *arg, int status, raft_index index)
{
    (void)g, (void)index;
    struct mchange *mc = arg;
    if (status != MR_OK) {
        mchange_finish(mc, BR_INTERNAL_ERROR, conf_error(status));
        return;
    }
    qq_t *qq = qq_by_gid(mc->s, mc->gid);
    if (!qq) mchange_finish(mc, BR_NOT_FOUND, "queue deleted meanwhile");
    else submit_members(mc, qq, mc->add ? added_to_meta : removed_from_meta);
}

static void mchange_forwarded(void *arg, int status, const char *error, const void *payload, size_t len)
{
    (void)payload, (void)len;
    struct mchange *mc = arg;
    mchange_finish(mc, status < 0 ? BR_INTERNAL_ERROR : status,
                   status < 0 ? "the queue's leader did not answer" : error ? error : "");
}

/* On any node: the leader does the change; elsewhere it is forwarded to the leader. */
static void mchange_start(struct mchange *mc)
{
    struct qq_state *s = mc->s;
    qq_t *qq = qq_by_gid(s, mc->gid);
    broker_t *b = s->b;
    if (!qq) return mchange_finish(mc, BR_NOT_FOUND, "no such quorum queue");
    if (!b->meta_submit) return mchange_finish(mc, BR_PRECONDITION_FAILED, "not clustered: a quorum queue has one member");
    uint32_t leader = qq->g ? (uint32_t)mr_group_leader(qq->g) : qq->leader_hint;
    for (unsigned i = 0; !leader && !mc->remote && i < qq->n_members; i++) /* leader unknown here: ask a member */
        if (qq->members[i] != s->self && node_up(s, qq->members[i])) leader = qq->members[i];
    if (leader && leader != s->self) {
        if (mc->remote) return mchange_finish(mc, BR_INTERNAL_ERROR, "not the leader: try again");
        uint8_t payload[13];
        put_be64(payload, mc->gid);
        put_be32(payload + 8, mc->node);
        payload[12] = mc->add;
        if (b->node_call(b->node_ctx, leader, "qq.m", payload, sizeof payload, 30.0, mchange_forwarded, mc) != 0)
            mchange_finish(mc, BR_INTERNAL_ERROR, "the queue's leader is unreachable");
        return;
    }
    if (!leader || !is_leader(qq)) return mchange_finish(mc, BR_INTERNAL_ERROR, "the queue has no leader now: try again");
    if (qq->changing) return mchange_finish(mc, BR_INTERNAL_ERROR, "a membership change is in progress: try again");
    bool member = is_member(qq, mc->node);
    if (mc->add && member) return mchange_finish(mc, BR_PRECONDITION_FAILED, "already a member");
    if (!mc->add && !member) return mchange_finish(mc, BR_NOT_FOUND, "not a member");
    if (!mc->add && qq->n_members == 1) return mchange_finish(mc, BR_PRECONDITION_FAILED, "last_node: the only member cannot be removed");
    if (mc->add && qq->n_members >= RAFT_MAX_NODES) return mchange_finish(mc, BR_PRECONDITION_FAILED, "too many members");
    if (mc->add && !node_up(s, mc->node)) return mchange_finish(mc, BR_PRECONDITION_FAILED, "the node is not running");
    if (!mc->add && mc->node == s->self) {
        /* A leader removing itself would be deposed mid-change: hand over first. */
        for (unsigned i = 0; i < qq->n_members; i++)
            if (qq->members[i] != s->self && node_up(s, qq->members[i])) {
                mr_transfer(qq->g, qq->members[i]);
                break;
            }
        return mchange_finish(mc, BR_INTERNAL_ERROR, "leadership is moving to another member: try again");
    }
    qq->changing = true;
    int rc = mr_conf_change(qq->g, mc->add ? RAFT_CC_ADD_VOTER : RAFT_CC_REMOVE, mc->node, conf_done, mc);
    if (rc != MR_OK) mchange_finish(mc, BR_INTERNAL_ERROR, conf_error(rc));
}

void qq_member_change(queue_t *q, uint32_t node, bool add, qq_member_cb cb, void *arg)
{
    struct mchange *mc = calloc(1, sizeof *mc);
    if (!mc) abort();
    mc->s = state_of(q->vh->broker);
    mc->gid = q->qq ? q->qq->gid : 0;
    mc->node = node;
    mc->add = add;
    mc->cb = cb;
    mc->arg = arg;
    mchange_start(mc);
}

static void mchange_serve(struct qq_state *s, const void *payload, size_t len, const struct peer_reply_to *to)
{
    struct mchange *mc = calloc(1, sizeof *mc);
    if (!mc) abort();
    mc->s = s;
    mc->remote = true;
    mc->to = *to;
    if (len != 13) return mchange_finish(mc, BR_INTERNAL_ERROR, "malformed request");
    const uint8_t *p = payload;
    mc->gid = amqp_get_u64(p);
    mc->node = amqp_get_u32(p + 8);
    mc->add = p[12] != 0;
    mchange_start(mc);
}

/* ---- relayed deliveries ---------------------------------------------------------------------
 *
 * "qq.d" payload: u32 count, then per delivery [u64 gid][u64 chan][shortstr tag][u64 msg id]
 * [u32 delivery count][u8 redelivered][longstr message record]. One call per node and loop
 * iteration, answered with nothing. A new leader sends every delivery of such consumers again
 * (a leader that dies may have taken some with it); the consumer's node keeps the (chan, msg id)
 * of each relayed delivery until it is settled and drops re-sends of those it has. */

static void relay_add(qq_t *qq, uint32_t node, uint64_t chan, amqp_bytes_t tag, uint64_t msg_id, msg_t *m,
                      uint32_t delivery_count, bool redelivered)
{
    struct qq_state *s = qq->s;
    if (!s->b->node_call || !body_load(qq, m)) return;
    struct relay *r = NULL;
    for (size_t i = 0; i < s->n_relays && !r; i++)
        if (s->relays[i].node == node) r = &s->relays[i];
    if (!r) {
        if (s->n_relays == s->cap_relays) {
            s->cap_relays = s->cap_relays ? s->cap_relays * 2 : 4;
            s->relays = realloc(s->relays, s->cap_relays * sizeof *s->relays);
            if (!s->relays) abort();
        }
        r = &s->relays[s->n_relays++];
        memset(r, 0, sizeof *r);
        r->node = node;
        amqp_buf_put_u32(&r->buf, 0);
    }
    amqp_buf_put_u64(&r->buf, qq->gid);
    amqp_buf_put_u64(&r->buf, chan);
    amqp_buf_put_shortstr(&r->buf, tag);
    amqp_buf_put_u64(&r->buf, msg_id);
    amqp_buf_put_u32(&r->buf, delivery_count);
    amqp_buf_put_u8(&r->buf, redelivered);
    size_t rl = msg_record_size(m);
    amqp_buf_put_u32(&r->buf, (uint32_t)rl);
    amqp_buf_reserve(&r->buf, rl);
    msg_record_write(m, r->buf.data + r->buf.len);
    r->buf.len += rl;
    amqp_buf_patch_u32(&r->buf, 0, ++r->n);
}

static void relay_sent(void *arg, int status, const char *error, const void *payload, size_t len)
{
    (void)arg, (void)status, (void)error, (void)payload, (void)len;
}

static void relay_flush(struct qq_state *s)
{
    for (size_t i = 0; i < s->n_relays; i++) {
        struct relay *r = &s->relays[i];
        broker_t *b = s->b;
        if (b->node_call) b->node_call(b->node_ctx, r->node, "qq.d", r->buf.data, r->buf.len, QQ_CALL_TIMEOUT, relay_sent, NULL);
        amqp_buf_free(&r->buf);
    }
    s->n_relays = 0;
}

static void relay_receive(struct qq_state *s, const void *payload, size_t len)
{
    amqp_reader_t r = amqp_reader(payload, len);
    uint32_t n = amqp_read_u32(&r);
    for (uint32_t i = 0; i < n && !r.bad; i++) {
        uint64_t gid = amqp_read_u64(&r);
        uint64_t chan = amqp_read_u64(&r);
        amqp_bytes_t tag = amqp_read_shortstr(&r);
        uint64_t msg_id = amqp_read_u64(&r);
        uint32_t count = amqp_read_u32(&r);
        bool redelivered = amqp_read_u8(&r) != 0;
        amqp_bytes_t rec = amqp_read_longstr(&r);
        if (r.bad) break;
        uint8_t gk[8];
        put_be64(gk, gid);
        qq_t *qq = dict_get(&s->groups, gk, 8);
        uint8_t rk[16];
        put_be64(rk, chan);
        put_be64(rk + 8, msg_id);
        if (!qq || dict_get(&qq->relayed, rk, 16)) continue; /* a new leader's re-send of one we have */
        msg_t *m = msg_from_record(rec.ptr, rec.len, true);
        if (!m) continue;
        if (cons_find(qq, chan, tag)) dict_set(&qq->relayed, rk, 16, qq);
        deliver_local(qq, chan, tag, msg_id, m, count, redelivered);
        msg_unref(m);
    }
}

/* ---- flushing: proposals here, forwarded batches to the leader ------------------------------ */

static void local_done(mr_group_t *g, void *arg, int status, raft_index index)
{
    (void)index;
    qq_t *qq = qq_of_group(g);
    uint64_t req = (uint64_t)(uintptr_t)arg;
    struct qq_op *op = op_find(qq->s, req);
    if (!op) return; /* completed by its result already */
    if (status == MR_OK) op_complete(op, NULL, NULL);
    else if (!op->queued) outbox_push(op->qq, op);
}

static void fwd_reply(void *arg, int status, const char *error, const void *payload, size_t len)
{
    (void)error;
    struct fbatch *fb = arg;
    struct qq_state *s = fb->s;
    amqp_reader_t r = amqp_reader(payload, status == 0 ? len : 0);
    uint8_t code = status == 0 ? amqp_read_u8(&r) : 1;
    uint32_t leader = status == 0 ? amqp_read_u32(&r) : 0;
    uint32_t n = status == 0 ? amqp_read_u32(&r) : 0;
    uint8_t gk[8];
    put_be64(gk, fb->gid);
    qq_t *qq = s->b->qq ? dict_get(&s->groups, gk, 8) : NULL;
    if (qq && code != 0) qq->leader_hint = leader && leader != s->self ? leader : 0;
    if (qq && !qq->g && code != 0 && !leader) qq->rr++;
    for (uint32_t i = 0; i < fb->n; i++) {
        bool retry = true;
        struct qsm_result res = {0};
        bool has = false;
        msg_t *m = NULL;
        if (code == 0 && !r.bad && i < n) {
            retry = amqp_read_u8(&r) != 0;
            has = amqp_read_u8(&r) != 0;
            if (has) {
                res.status = amqp_read_u8(&r);
                res.count = amqp_read_u32(&r);
                res.msg_id = amqp_read_u64(&r);
                res.delivery_count = amqp_read_u32(&r);
                res.redelivered = amqp_read_u8(&r) != 0;
                amqp_bytes_t rec = amqp_read_longstr(&r);
                if (!r.bad && rec.len) m = msg_from_record(rec.ptr, rec.len, true);
                res.m = m;
            }
            if (r.bad) retry = true;
        }
        struct qq_op *op = op_find(s, fb->reqs[i]);
        if (op) {
            if (retry) {
                if (!op->queued) outbox_push(op->qq, op);
            } else {
                op_complete(op, NULL, has ? &res : NULL);
            }
        }
        if (m) msg_unref(m);
    }
    if (qq && code != 0 && qq->out_head) {
        /* No leader there: look again after a pause rather than at once. */
        ev_timer_again(s->b->loop, &s->retry_w);
    }
    free(fb);
}

static void send_batch(qq_t *qq, uint32_t to)
{
    struct qq_state *s = qq->s;
    size_t n = 0;
    for (struct qq_op *op = qq->out_head; op; op = op->next) n++;
    struct fbatch *fb = malloc(sizeof *fb + n * sizeof fb->reqs[0]);
    if (!fb) abort();
    fb->s = s;
    fb->gid = qq->gid;
    fb->n = 0;
    amqp_buf_t out = {0};
    amqp_buf_put_u64(&out, qq->gid);
    size_t count_at = out.len;
    amqp_buf_put_u32(&out, 0);
    while (qq->out_head) {
        struct qq_op *op = qq->out_head;
        qq->out_head = op->next;
        op->queued = false;
        if (op->finished) {
            op_free(op);
            continue;
        }
        fb->reqs[fb->n++] = op->req;
        amqp_buf_put_longstr(&out, (amqp_bytes_t){op->cmd.data, op->cmd.len});
    }
    qq->out_tail = NULL;
    amqp_buf_patch_u32(&out, count_at, fb->n);
    broker_t *b = s->b;
    int rc = fb->n ? b->node_call(b->node_ctx, to, "qq.p", out.data, out.len, QQ_CALL_TIMEOUT, fwd_reply, fb) : -1;
    amqp_buf_free(&out);
    if (rc != 0) {
        for (uint32_t i = 0; i < fb->n; i++) op_retry(s, fb->reqs[i]);
        free(fb);
        if (qq->out_head) ev_timer_again(b->loop, &s->retry_w);
    }
}

static void flush_accs(qq_t *qq)
{
    size_t n = qq->n_accs;
    qq->n_accs = 0; /* before pushing: outbox_push flushes pending settlements first */
    for (size_t i = 0; i < n; i++) {
        struct acc *a = &qq->accs[i];
        struct qsm_cmd cmd = {.op = a->op, .chan = a->chan, .n_ids = a->n, .ids_in = a->ids};
        outbox_push(qq, op_new(qq, OP_PLAIN, &cmd, 0));
        free(a->ids);
    }
}

static void expire_ops(qq_t *qq, ev_tstamp now)
{
    for (struct qq_op *op = qq->out_head; op; op = op->next)
        if (!op->finished && op->deadline && op->deadline <= now)
            op_fail(op, BR_INTERNAL_ERROR, "quorum queue unavailable: no leader could be reached in time");
}

static void flush_one(qq_t *qq)
{
    struct qq_state *s = qq->s;
    flush_accs(qq);
    if (!qq->out_head) return;
    expire_ops(qq, ev_now(s->b->loop));
    uint32_t leader = qq->g ? (uint32_t)mr_group_leader(qq->g) : qq->leader_hint;
    if (qq->g && leader == s->self) {
        while (qq->out_head) {
            struct qq_op *op = qq->out_head;
            qq->out_head = op->next;
            op->queued = false;
            if (op->finished) {
                op_free(op);
                continue;
            }
            int rc = mr_propose(qq->g, op->cmd.data, op->cmd.len, local_done, (void *)(uintptr_t)op->req);
            if (rc != MR_OK) { /* lost leadership meanwhile: try again shortly */
                op->next = qq->out_head;
                op->queued = true;
                qq->out_head = op;
                break;
            }
        }
        if (!qq->out_head) qq->out_tail = NULL;
        else ev_timer_again(s->b->loop, &s->retry_w);
        return;
    }
    if (!leader && !qq->g && qq->n_members) { /* not a member: ask the members in turn */
        for (unsigned i = 0; i < qq->n_members && !leader; i++) {
            uint32_t m = qq->members[(qq->rr + i) % qq->n_members];
            if (m != s->self && node_up(s, m)) leader = m;
        }
    }
    if (leader && leader != s->self && s->b->node_call && node_up(s, leader)) {
        send_batch(qq, leader);
        return;
    }
    ev_timer_again(s->b->loop, &s->retry_w); /* no leader yet */
}

static void flush_all(struct qq_state *s)
{
    while (s->dirty) {
        qq_t *qq = s->dirty;
        s->dirty = qq->next_dirty;
        qq->dirty = false;
        if (qq->detached) continue;
        if (qq->removing) drop_replica(qq);
        if (!qq->g) group_open(qq); /* attached inside a host callback: opened here */
        flush_one(qq);
    }
}

static void flush_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
    (void)loop, (void)revents;
    flush_all(w->data);
    relay_flush(w->data);
    bury(w->data);
    bodies_flush(w->data);
}

static void retry_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    struct qq_state *s = w->data;
    ev_timer_stop(loop, w);
    size_t pos = 0;
    void *v;
    while (dict_next(&s->groups, &pos, NULL, NULL, &v)) {
        qq_t *qq = v;
        if (qq->out_head) mark_dirty(qq);
    }
}

/* ---- serving forwarded batches (this node leads) -------------------------------------------- */

static void rbatch_reply(struct rbatch *rb)
{
    struct qq_state *s = rb->s;
    amqp_buf_t out = {0};
    amqp_buf_put_u8(&out, 0);
    amqp_buf_put_u32(&out, 0);
    amqp_buf_put_u32(&out, rb->n);
    for (uint32_t i = 0; i < rb->n; i++) {
        struct rslot *sl = &rb->slots[i];
        amqp_buf_put_u8(&out, sl->retry);
        amqp_buf_put_u8(&out, sl->has_result);
        if (sl->has_result) {
            amqp_buf_put_u8(&out, (uint8_t)sl->r.status);
            amqp_buf_put_u32(&out, sl->r.count);
            amqp_buf_put_u64(&out, sl->r.msg_id);
            amqp_buf_put_u32(&out, sl->r.delivery_count);
            amqp_buf_put_u8(&out, sl->r.redelivered);
            if (sl->r.m) {
                size_t rl = msg_record_size(sl->r.m);
                amqp_buf_put_u32(&out, (uint32_t)rl);
                amqp_buf_reserve(&out, rl);
                msg_record_write(sl->r.m, out.data + out.len);
                out.len += rl;
                msg_unref(sl->r.m);
            } else {
                amqp_buf_put_u32(&out, 0);
            }
        }
    }
    if (s->b->node_reply) s->b->node_reply(s->b->node_ctx, &rb->to, 0, NULL, out.data, out.len);
    amqp_buf_free(&out);
    free(rb);
}

static void remote_done(mr_group_t *g, void *arg, int status, raft_index index)
{
    (void)g, (void)index;
    struct rslot *sl = arg;
    struct rbatch *rb = sl->batch;
    if (status != MR_OK) sl->retry = true;
    if (sl->req) { /* a result that never came (e.g. the queue is gone) */
        uint8_t key[12];
        put_be32(key, sl->origin);
        put_be64(key + 4, sl->req);
        if (dict_get(&rb->s->rwait, key, 12) == sl) dict_del(&rb->s->rwait, key, 12);
    }
    if (--rb->left == 0) rbatch_reply(rb);
}

static void reply_not_leader(struct qq_state *s, const struct peer_reply_to *to, uint32_t leader)
{
    amqp_buf_t out = {0};
    amqp_buf_put_u8(&out, 1);
    amqp_buf_put_u32(&out, leader);
    amqp_buf_put_u32(&out, 0);
    if (s->b->node_reply) s->b->node_reply(s->b->node_ctx, to, 0, NULL, out.data, out.len);
    amqp_buf_free(&out);
}

void qq_handle_call(broker_t *b, uint32_t from, const char *method, const void *payload, size_t len,
                    const struct peer_reply_to *to)
{
    struct qq_state *s = state_of(b);
    if (strcmp(method, "qq.m") == 0 && from != PEER_CLIENT_ID) {
        mchange_serve(s, payload, len, to);
        return;
    }
    if (strcmp(method, "qq.b") == 0 && from != PEER_CLIENT_ID) {
        bodies_serve(s, payload, len, to);
        return;
    }
    if (strcmp(method, "qq.d") == 0 && from != PEER_CLIENT_ID) {
        relay_receive(s, payload, len);
        if (b->node_reply) b->node_reply(b->node_ctx, to, 0, NULL, NULL, 0);
        return;
    }
    if (strcmp(method, "qq.p") != 0 || from == PEER_CLIENT_ID) {
        if (b->node_reply) b->node_reply(b->node_ctx, to, BR_NOT_IMPLEMENTED, "no handler for this call", NULL, 0);
        return;
    }
    amqp_reader_t r = amqp_reader(payload, len);
    uint64_t gid = amqp_read_u64(&r);
    uint32_t n = amqp_read_u32(&r);
    uint8_t gk[8];
    put_be64(gk, gid);
    qq_t *qq = dict_get(&s->groups, gk, 8);
    if (r.bad || n > r.left / 4 || !qq || !qq->g || !is_leader(qq)) {
        reply_not_leader(s, to, qq && qq->g ? (uint32_t)mr_group_leader(qq->g) : 0);
        return;
    }
    struct rbatch *rb = calloc(1, sizeof *rb + (n ? n : 1) * sizeof rb->slots[0]);
    if (!rb) abort();
    rb->s = s;
    rb->to = *to;
    rb->n = n;
    rb->left = n + 1; /* +1: held until every proposal is in */
    for (uint32_t i = 0; i < n; i++) {
        struct rslot *sl = &rb->slots[i];
        sl->batch = rb;
        amqp_bytes_t cmdb = amqp_read_longstr(&r);
        struct qsm_cmd cmd;
        if (r.bad || qsm_decode(cmdb.ptr, cmdb.len, &cmd) != 0) {
            sl->retry = false; /* malformed: answered as done, with no result */
            rb->left--;
            continue;
        }
        sl->origin = cmd.node;
        sl->req = cmd.req;
        if (cmd.req) {
            uint8_t key[12];
            put_be32(key, cmd.node);
            put_be64(key + 4, cmd.req);
            dict_set(&s->rwait, key, 12, sl);
        }
        if (mr_propose(qq->g, cmdb.ptr, cmdb.len, remote_done, sl) != MR_OK) remote_done(qq->g, sl, MR_ENOTLEADER, 0);
    }
    if (--rb->left == 0) rbatch_reply(rb);
}

/* ---- nodes ---------------------------------------------------------------------------------- */

void qq_node_down(broker_t *b, uint32_t node)
{
    if (!b->qq) return;
    struct qq_state *s = b->qq;
    size_t pos = 0;
    void *v;
    while (dict_next(&s->groups, &pos, NULL, NULL, &v)) {
        qq_t *qq = v;
        if (is_leader(qq)) propose_down(qq, node, 0, 0);
        if (qq->leader_hint == node) qq->leader_hint = 0;
        if (qq->out_head) mark_dirty(qq);
    }
}

void qq_node_up(broker_t *b, uint32_t node)
{
    (void)node;
    if (!b->qq) return;
    size_t pos = 0;
    void *v;
    while (dict_next(&b->qq->groups, &pos, NULL, NULL, &v)) {
        qq_t *qq = v;
        if (qq->out_head) mark_dirty(qq);
    }
}

unsigned qq_set_draining(broker_t *b, bool on)
{
    if (!b->qq) return 0;
    struct qq_state *s = b->qq;
    s->draining = on;
    unsigned started = 0;
    size_t pos = 0;
    void *v;
    while (on && dict_next(&s->groups, &pos, NULL, NULL, &v)) {
        qq_t *qq = v;
        if (!qq->detached && !qq->removing && is_leader(qq) && transfer_away(qq)) started++;
    }
    return started;
}

size_t qq_leader_count(broker_t *b)
{
    if (!b->qq) return 0;
    size_t n = 0, pos = 0;
    void *v;
    while (dict_next(&b->qq->groups, &pos, NULL, NULL, &v)) {
        qq_t *qq = v;
        if (!qq->detached && !qq->removing && is_leader(qq)) n++;
    }
    return n;
}

/* ---- start / stop --------------------------------------------------------------------------- */

static void no_send(void *ctx, raft_id node, const struct mr_outmsg *msgs, size_t n)
{
    (void)ctx, (void)node, (void)msgs, (void)n; /* unclustered: one-member groups send nothing */
}

static uint32_t bump_boot(store_t *st)
{
    static const uint8_t key[] = {CL_KEY_LOCAL, 'q', 'q', 'b', 'o', 'o', 't'};
    uint32_t boot = 0;
    void *val;
    size_t vlen;
    if (st && store_get(st, key, sizeof key, &val, &vlen) == 1) {
        if (vlen == 4) boot = amqp_get_u32(val);
        free(val);
    }
    boot++;
    if (st) {
        uint8_t v[4];
        put_be32(v, boot);
        store_put(st, key, sizeof key, v, sizeof v);
    }
    return boot;
}

int qq_start(broker_t *b, cl_t *c, char *err, size_t errlen)
{
    struct qq_state *s = state_of(b);
    s->cl = c && cl_clustered(c) ? c : NULL;
    s->self = self_id(b);
    s->boot = bump_boot(b->store);
    const char *bm = getenv("WARREN_QQ_BODY_MEMORY");
    s->body_memory = bm && *bm ? strtoull(bm, NULL, 10) : QQ_BODY_MEMORY_DEFAULT;
    if (s->cl) {
        s->host = cl_host(c);
    } else if (b->store) {
        struct mr_host_config hc = {.node_id = s->self};
        struct mr_transport tr = {.send = no_send};
        s->host = mr_host_new(b->loop, b->store, &hc, &tr);
        s->own_host = true;
    }
    if (!s->host) {
        snprintf(err, errlen, "quorum queues: cannot start the Raft host");
        return -1;
    }
    ev_prepare_init(&s->flush_w, flush_cb);
    s->flush_w.data = s;
    ev_prepare_start(b->loop, &s->flush_w);
    ev_unref(b->loop); /* the flush watcher alone must not keep the loop running */
    ev_init(&s->retry_w, retry_cb);
    s->retry_w.repeat = QQ_RETRY_INTERVAL;
    s->retry_w.data = s;
    s->started = true;
    size_t pos = 0;
    void *v;
    while (dict_next(&s->groups, &pos, NULL, NULL, &v)) group_open(v);
    return 0;
}

void qq_free(broker_t *b)
{
    struct qq_state *s = b->qq;
    if (!s) return;
    if (s->started) {
        ev_ref(b->loop);
        ev_prepare_stop(b->loop, &s->flush_w);
        ev_timer_stop(b->loop, &s->retry_w);
    }
    /* Queues still attached: close their groups (storage stays) and free their state. */
    size_t pos = 0;
    void *v;
    while (dict_next(&s->groups, &pos, NULL, NULL, &v)) {
        qq_t *qq = v;
        if (qq->g) mr_group_close(qq->g);
        qq->g = NULL;
    }
    pos = 0;
    while (dict_next(&s->ops, &pos, NULL, NULL, &v)) {
        struct qq_op *op = v;
        op->queued = false;
        op_free(op);
    }
    dict_free(&s->ops);
    pos = 0;
    while (dict_next(&s->groups, &pos, NULL, NULL, &v)) {
        qq_t *qq = v;
        ev_timer_stop(b->loop, &qq->expire_w);
        ev_timer_stop(b->loop, &qq->campaign_w);
        ev_timer_stop(b->loop, &qq->dlx_w);
        dict_free(&qq->dlx_out);
        for (size_t i = 0; i < qq->n_accs; i++) free(qq->accs[i].ids);
        free(qq->accs);
        size_t p2 = 0;
        void *v2;
        while (dict_next(&qq->cons, &p2, NULL, NULL, &v2)) {
            struct qcons *qc = v2;
            qcons_free_held(qc);
            qc->c->remote = NULL;
            free(qc);
        }
        dict_free(&qq->cons);
        dict_free(&qq->relayed);
        dict_free(&qq->tombs);
        p2 = 0;
        while (dict_next(&qq->chans, &p2, NULL, NULL, &v2)) free(v2);
        dict_free(&qq->chans);
        qsm_free(qq->sm);
        qq->q->qq = NULL;
        free(qq->dead_ids);
        catchup_free(qq);
        free(qq->fetched);
        free(qq);
    }
    dict_free(&s->groups);
    for (size_t i = 0; i < s->res_len; i++) msg_unref(res_at(s, i)->m);
    free(s->res);
    for (size_t i = 0; i < s->body_writes.n; i++) msg_unref(s->body_writes.items[i]);
    ptrvec_free(&s->body_writes);
    dict_free(&s->rwait);
    bury(s);
    for (size_t i = 0; i < s->n_relays; i++) amqp_buf_free(&s->relays[i].buf);
    free(s->relays);
    if (s->own_host) mr_host_free(s->host);
    free(s);
    b->qq = NULL;
}
