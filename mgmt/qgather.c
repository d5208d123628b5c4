/* qgather.c - queue figures gathered cluster-wide for one management request (see qgather.h).
 *
 * Why a gather per request rather than a digest pushed every 5 s: the figures must be the same
 * whichever node is asked, right after a publish or an ack (RabbitMQ's API answers so), and a
 * request only pays for what it shows - qlist.c asks for the figures of one page's queues, a
 * single queue's object for that queue, and only the listings that need every queue (no
 * paging, other sort keys, the overview, the vhosts) ask for all of them. Records are compact
 * binary (broker/qstats.h: about 50 bytes for an idle queue, 160 with rates), so even 10,000
 * queues make a reply of a few hundred KB, built in one pass over the registry by the callee.
 * Unclustered, or when no queue shown is homed elsewhere or quorum, nothing is asked and the
 * request is answered at once as before.
 *
 * Data flow: mgmt_qg_* -> one QS_CALL_LIST per other running node that matters (homes of the
 * classic queues shown; every node when a quorum queue is shown, since each node counts its
 * own clients' publishes, deliveries and acks) -> answers merged into a uid -> record map (a
 * classic queue's record is its home's; quorum counters and counter rates are summed, the
 * depth taken from any replica) -> done(r, arg), during which mgmt_qfig reads the map through
 * `current` -> the map is freed. A node that fails or stays silent for MGMT_QG_TIMEOUT is left
 * out: its classic queues are shown with state "down" and no figures, as RabbitMQ shows queues
 * whose node does not answer; its share of quorum counters is missing.
 *
 * Invariants: done runs exactly once (the peer layer calls each callback exactly once: reply,
 * timeout or connection loss); no queue pointer is kept across the wait (queues may be deleted
 * meanwhile: done looks them up again); `current` is set only while a done callback runs (and
 * restored after it, so gathers may nest), on the loop thread. */
#include "mgmt/qgather.h"

#include <stdlib.h>
#include <string.h>

#include "broker/cluster.h"
#include "broker/remote.h"

struct qg {
    mgmt_req_t *r;
    mgmt_qg_done done;
    void *arg;
    unsigned waiting;                  /* calls not answered yet, + 1 while calls go out */
    dict_t figs;                       /* uid (8 bytes) -> struct qs_fig* (other nodes' figures) */
    uint32_t asked[RAFT_MAX_NODES];    /* nodes called */
    uint32_t answered[RAFT_MAX_NODES]; /* nodes whose answer arrived */
    unsigned n_asked, n_answered;
};

static struct qg *current; /* the gather whose done callback runs (mgmt_qfig reads it) */

static bool clustered(const mgmt_t *m) { return m->cl && cl_clustered(m->cl) && m->b->node_call; }

bool mgmt_qg_enabled(mgmt_t *m) { return clustered(m); }

bool mgmt_qg_needed(mgmt_t *m, const queue_t *q) { return clustered(m) && (q->qq || rq_remote(q)); }

/* ---- merging answers ---- */

static void add_counters(struct qs_fig *to, const struct qs_fig *from)
{
    to->publish += from->publish, to->deliver += from->deliver, to->get += from->get;
    to->ack += from->ack, to->redeliver += from->redeliver;
    for (int i = 0; i < QS_RATE_COUNTERS; i++) to->rate[i] += from->rate[i];
}

static void take_depth(struct qs_fig *to, const struct qs_fig *from)
{
    to->ready = from->ready, to->unacked = from->unacked, to->consumers = from->consumers;
    to->ready_bytes = from->ready_bytes, to->unacked_bytes = from->unacked_bytes;
    for (int i = QS_RATE_COUNTERS; i < QS_RATE_N; i++) to->rate[i] = from->rate[i];
}

/* A quorum queue's record from one more node: its counters add up, its depth is the replica's
 * (every replica has the same; the first one that came is kept). */
static void merge_quorum(struct qs_fig *to, const struct qs_fig *from)
{
    add_counters(to, from);
    if ((from->flags & QS_F_DEPTH) && !(to->flags & QS_F_DEPTH)) take_depth(to, from);
    to->flags |= from->flags;
}

static void merge_record(struct qg *g, const struct qs_fig *rec)
{
    struct qs_fig *have = dict_get(&g->figs, &rec->uid, sizeof rec->uid);
    if (have && (rec->flags & QS_F_QUORUM)) return merge_quorum(have, rec);
    if (have) return; /* a classic queue has one home: a second record is not trusted */
    struct qs_fig *f = malloc(sizeof *f);
    if (!f) abort();
    *f = *rec;
    dict_set(&g->figs, &f->uid, sizeof f->uid, f);
}

static void merge_answer(struct qg *g, const void *payload, size_t len)
{
    amqp_reader_t rd = amqp_reader(payload, len);
    struct qs_fig rec;
    while (qs_read(&rd, &rec)) merge_record(g, &rec);
}

static bool in_list(const uint32_t *ids, unsigned n, uint32_t node)
{
    for (unsigned i = 0; i < n; i++)
        if (ids[i] == node) return true;
    return false;
}

/* Was node asked and did it fail or stay silent? (A node not asked - not running, or not
 * needed for the page planned - is judged by the transport's view alone.) */
static bool went_silent(const struct qg *g, uint32_t node)
{
    return in_list(g->asked, g->n_asked, node) && !in_list(g->answered, g->n_answered, node);
}

/* ---- the request's life ---- */

static void finish(struct qg *g)
{
    struct qg *outer = current; /* a done callback may finish another gather at once */
    current = g;
    g->done(g->r, g->arg);
    current = outer;
    size_t pos = 0;
    void *v;
    while (dict_next(&g->figs, &pos, NULL, NULL, &v)) free(v);
    dict_free(&g->figs);
    free(g);
}

struct qg_call {
    struct qg *g;
    uint32_t node;
};

static void answered(void *arg, int status, const char *error, const void *payload, size_t len)
{
    (void)error;
    struct qg_call *c = arg;
    struct qg *g = c->g;
    if (status == 0) {
        merge_answer(g, payload, len);
        if (g->n_answered < RAFT_MAX_NODES) g->answered[g->n_answered++] = c->node;
    }
    free(c);
    if (--g->waiting == 0) finish(g);
}

static void call_node(struct qg *g, uint32_t node, const amqp_buf_t *payload)
{
    broker_t *b = g->r->m->b;
    struct qg_call *c = malloc(sizeof *c);
    if (!c) abort();
    *c = (struct qg_call){g, node};
    if (g->n_asked < RAFT_MAX_NODES) g->asked[g->n_asked++] = node;
    g->waiting++; /* before the call: a failed call never calls back */
    if (b->node_call(b->node_ctx, node, QS_CALL_LIST, payload->data, payload->len, MGMT_QG_TIMEOUT, answered, c) != 0) {
        g->waiting--;
        free(c);
    }
}

/* The other running members; wanted(arg, id) picks those worth asking. */
static void call_members(struct qg *g, const amqp_buf_t *payload, bool (*wanted)(const void *arg, uint32_t id),
                         const void *arg)
{
    mgmt_t *m = g->r->m;
    if (!clustered(m)) return;
    struct cl_status *st = calloc(1, sizeof *st);
    if (!st) abort();
    cl_status(m->cl, st);
    for (unsigned i = 0; i < st->n_members; i++) {
        uint32_t id = st->members[i].id;
        if (id == st->node_id || !st->members[i].running || (wanted && !wanted(arg, id))) continue;
        call_node(g, id, payload);
    }
    free(st);
}

static struct qg *qg_new(mgmt_req_t *r, mgmt_qg_done done, void *arg)
{
    struct qg *g = calloc(1, sizeof *g);
    if (!g) abort();
    g->r = r, g->done = done, g->arg = arg;
    dict_init(&g->figs);
    g->waiting = 1; /* this function's own share: nothing finishes while calls go out */
    return g;
}

void mgmt_qg_all(mgmt_req_t *r, const char *vhost, mgmt_qg_done done, void *arg)
{
    struct qg *g = qg_new(r, done, arg);
    amqp_buf_t payload = {0};
    qs_request_all(&payload, vhost);
    call_members(g, &payload, NULL, NULL);
    amqp_buf_free(&payload);
    if (--g->waiting == 0) finish(g);
}

/* The nodes a list of queues needs: every node for a quorum queue, else the homes. */
struct qg_targets {
    bool every;
    uint32_t homes[RAFT_MAX_NODES];
    unsigned n;
};

static void target_add(struct qg_targets *t, const queue_t *q)
{
    if (q->qq) t->every = true;
    for (unsigned i = 0; i < t->n; i++)
        if (t->homes[i] == q->home) return;
    if (t->n < RAFT_MAX_NODES) t->homes[t->n++] = q->home;
    else t->every = true;
}

static bool target_wanted(const void *arg, uint32_t id)
{
    const struct qg_targets *t = arg;
    if (t->every) return true;
    for (unsigned i = 0; i < t->n; i++)
        if (t->homes[i] == id) return true;
    return false;
}

void mgmt_qg_named(mgmt_req_t *r, queue_t *const *queues, size_t n, mgmt_qg_done done, void *arg)
{
    struct qg *g = qg_new(r, done, arg);
    queue_t **asked = malloc((n ? n : 1) * sizeof *asked);
    if (!asked) abort();
    size_t k = 0;
    struct qg_targets t = {0};
    for (size_t i = 0; i < n; i++) {
        if (!mgmt_qg_needed(r->m, queues[i])) continue;
        asked[k++] = queues[i];
        target_add(&t, queues[i]);
    }
    if (k) {
        amqp_buf_t payload = {0};
        qs_request_named(&payload, asked, k);
        call_members(g, &payload, target_wanted, &t);
        amqp_buf_free(&payload);
    }
    free(asked);
    if (--g->waiting == 0) finish(g);
}

/* ---- reading the figures ---- */

static const struct qs_fig *gathered(const queue_t *q)
{
    return current ? dict_get(&current->figs, &q->uid, sizeof q->uid) : NULL;
}

void mgmt_qfig(mgmt_t *m, queue_t *q, struct mgmt_qfig *out)
{
    memset(out, 0, sizeof *out);
    const struct qs_fig *g = gathered(q);
    if (rq_remote(q)) { /* homed elsewhere: its home's figures, or none */
        out->f.uid = q->uid;
        if (g && (g->flags & QS_F_DEPTH)) {
            out->f = *g;
            out->known = out->stats = true;
        } else {
            out->down = !rq_node_is_up(m->b, q->home) || (current && went_silent(current, q->home));
        }
        return;
    }
    qs_local(q, &out->f); /* homed here, or quorum: this node's own share */
    out->stats = true;
    if (q->qq && g) merge_quorum(&out->f, g);
    out->known = (out->f.flags & QS_F_DEPTH) != 0;
}
