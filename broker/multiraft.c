/* multiraft.c - the multi-Raft host: drives many raft/ groups of one node on its libev loop.
 *
 * Role: raft/ is I/O-free; this file carries out what its updates ask (see the order in
 * raft/raft.h) for every group of the node, sharing the expensive resources between groups:
 * one store_t (so one fsync covers the appends of all groups in a batch), one transport send
 * per destination node per loop iteration, one tick timer that only visits active groups.
 *
 * Data flow of one loop iteration:
 *
 *   mr_host_receive / mr_propose / tick  ->  group_step: raft_step + group_handle:
 *       (a leader's snapshot that raft would install goes to ops->snapshot_arriving first,
 *        which may have it kept aside, copied, until mr_snapshot_resume steps it)
 *       snapshot, hard state, compaction -> raftlog writes into the store's current batch;
 *       entries -> only noted (pend_from..pend_last): raft's log holds them until the seal;
 *                  either way the group goes on the host's dirty list
 *       messages -> queued in the destination node's outbox (an append's entries by
 *                   reference to raft's log; everything else copied), or copied into the
 *                   group's held queue while a hard state it wrote is not yet synced
 *       apply / reads / role           -> user ops, done callbacks
 *   ev_prepare (before the store's own prepare, which runs at EV_MINPRI and submits the batch):
 *       host_seal:  each dirty group writes the entries it appended in this iteration as one
 *                   run (raftlog.h: one RocksDB record instead of one per entry); then one
 *                   store_on_synced for all of them, recording for each the last (index,
 *                   term) it wrote, the snapshot it installed or took, its hard state
 *       host_flush: one transport send per node with that node's outbox, the entries it
 *                   refers to looked up in raft's logs again (dropped if gone)
 *   store synced callback (host_on_synced): release held messages whose hard state is now
 *       durable, step RAFT_EV_PERSISTED / RAFT_EV_SNAPSHOT for each recorded group, and seal
 *       again (callbacks may have written; the store submits right after its callbacks).
 *
 * Invariants:
 *   - A group's messages are held (g->hold) from the moment it writes a hard state until the
 *     seal that carried the latest such write has synced: no message announces a term or vote
 *     that a crash could forget.
 *   - Every pointer taken from a raft_update is used before the group is stepped again: user
 *     calls that would step the group being handled (g->busy) are deferred to the end.
 *   - A group is either on the active list (ticked) or hibernating (not ticked, quiescent).
 *   - A closed group's memory lives on while a pending seal or the dirty list refers to it.
 *   - Raft's memory is valid only until the next step, so outboxes and held queues hold copies,
 *     except for an append's entries in an outbox: those are named by (index, term) and taken
 *     from raft's log again right before the send, as are a group's pending entries at the
 *     seal (an entry is fixed by its index and term, and unpersisted entries are never
 *     compacted). Queue arrays are linked by offsets, so growing them never invalidates
 *     anything, and pointers are resolved only right before the transport reads them.
 * Who frees: the host owns groups, outboxes, seals; the transport copies what it sends; the
 * user owns snapshot bytes it hands in (snapshot_take's buffer is freed here).
 */
#include "broker/multiraft.h"

#include <stdlib.h>
#include <string.h>

#include "broker/log.h"
#include "broker/raftlog.h"

/* ---- message queues (outboxes and held messages) ----------------------------------------- */

struct mr_qmsg {
    struct raft_msg msg; /* entries/snap/data pointers are set by msgq_resolve; type 0: dropped */
    uint64_t gid;
    size_t ent_off;  /* first entry in q->ents */
    size_t snap_off; /* snapshot meta in q->bytes, SIZE_MAX if none */
    size_t data_off; /* snapshot bytes in q->bytes */
    raft_term ref_term; /* non-zero: the entries were not copied; they are the group's log at
                           msg.index + 1.., whose last one has this term (see msgq_push) */
};

struct mr_msgq {
    struct mr_qmsg *msgs;
    size_t n, cap;
    struct raft_entry *ents; /* data pointers set by msgq_resolve */
    size_t *ent_data_off;    /* where each entry's data is in bytes */
    size_t n_ents, cap_ents;
    uint8_t *bytes;
    size_t n_bytes, cap_bytes;
    unsigned slack_rounds; /* consecutive resets that found the arena mostly unused */
};

#define MR_ALIGN 16
#define MR_SLACK_ROUNDS 64 /* ... before it shrinks */

static mr_group_t *table_find(const mr_host_t *h, uint64_t id);

static void *mr_xrealloc(void *p, size_t size)
{
    void *q = realloc(p, size);
    if (q == NULL && size > 0) {
        /* A lost message is tolerated by raft, but a half-copied one is not; the host has no
         * way to report this from the event loop, so stop like the store does. */
        log_error("multiraft: out of memory allocating %zu bytes", size);
        abort();
    }
    return q;
}

static size_t grow_cap(size_t cap, size_t need, size_t first)
{
    size_t c = cap ? cap : first;
    while (c < need)
        c *= 2;
    return c;
}

/* Reserves len bytes (aligned) in the byte arena; returns the offset. */
static size_t msgq_bytes(struct mr_msgq *q, size_t len)
{
    size_t off = (q->n_bytes + MR_ALIGN - 1) & ~(size_t)(MR_ALIGN - 1);
    if (off + len > q->cap_bytes) {
        q->cap_bytes = grow_cap(q->cap_bytes, off + len, 4096);
        q->bytes = mr_xrealloc(q->bytes, q->cap_bytes);
    }
    q->n_bytes = off + len;
    return off;
}

/* Copies m (with its entries and snapshot) to the end of q. With r (the sender's raft, for an
 * outbox), the entries of an append are not copied but looked up again in r's log when the
 * outbox is sent (msgq_resolve): the leader's log holds them anyway, and copying every entry
 * into the outbox (besides the transport's own copy) was a large part of the loop's work.
 * (index, term) names an entry for good, so finding the last one's term at its index then
 * proves the log still holds the same entries; if not, the message is dropped (raft resends). */
static void msgq_push(struct mr_msgq *q, uint64_t gid, const struct raft_msg *m,
                      const struct raft *r)
{
    if (q->n == q->cap) {
        q->cap = grow_cap(q->cap, q->n + 1, 16);
        q->msgs = mr_xrealloc(q->msgs, q->cap * sizeof *q->msgs);
    }
    if (q->n_ents + m->n_entries > q->cap_ents) {
        q->cap_ents = grow_cap(q->cap_ents, q->n_ents + m->n_entries, 64);
        q->ents = mr_xrealloc(q->ents, q->cap_ents * sizeof *q->ents);
        q->ent_data_off = mr_xrealloc(q->ent_data_off, q->cap_ents * sizeof *q->ent_data_off);
    }
    struct mr_qmsg *qm = &q->msgs[q->n++];
    qm->msg = *m;
    qm->gid = gid;
    qm->ent_off = q->n_ents;
    qm->snap_off = SIZE_MAX;
    qm->data_off = 0;
    qm->ref_term = 0;
    if (r != NULL && m->type == RAFT_MSG_APPEND && m->n_entries > 0 &&
        raft_term_at(r, m->index + m->n_entries) == m->entries[m->n_entries - 1].term &&
        m->entries[m->n_entries - 1].term != 0) {
        qm->ref_term = m->entries[m->n_entries - 1].term;
        q->n_ents += m->n_entries; /* slots filled by msgq_resolve */
        return; /* an append has no snapshot */
    }
    for (uint32_t i = 0; i < m->n_entries; i++) {
        const struct raft_entry *e = &m->entries[i];
        size_t off = msgq_bytes(q, e->len);
        if (e->len > 0)
            memcpy(q->bytes + off, e->data, e->len);
        q->ents[q->n_ents] = *e;
        q->ent_data_off[q->n_ents] = off;
        q->n_ents++;
    }
    if (m->snap != NULL) {
        qm->snap_off = msgq_bytes(q, sizeof *m->snap);
        memcpy(q->bytes + qm->snap_off, m->snap, sizeof *m->snap);
    }
    if (m->data_len > 0) {
        qm->data_off = msgq_bytes(q, m->data_len);
        memcpy(q->bytes + qm->data_off, m->data, m->data_len);
    }
}

/* Looks a message's entries up in its group's log again (see msgq_push); false if they are
 * gone (the group closed, or raft truncated or compacted them since). */
static bool msgq_resolve_ref(struct mr_msgq *q, struct mr_qmsg *qm, const mr_host_t *h)
{
    mr_group_t *g = h != NULL ? table_find(h, qm->gid) : NULL;
    if (g == NULL)
        return false;
    const struct raft *r = mr_group_raft(g);
    raft_index first = qm->msg.index + 1, last = qm->msg.index + qm->msg.n_entries;
    if (raft_term_at(r, last) != qm->ref_term)
        return false;
    for (raft_index i = first; i <= last; i++) {
        const struct raft_entry *e = raft_entry_at(r, i);
        if (e == NULL)
            return false;
        q->ents[qm->ent_off + (i - first)] = *e;
    }
    return true;
}

/* Points every queued message at its copies, or at the log entries it refers to (host h; NULL
 * for a queue without such references). Valid until the next push, reset or raft step. */
static void msgq_resolve(struct mr_msgq *q, const mr_host_t *h)
{
    for (size_t i = 0; i < q->n; i++) {
        struct mr_qmsg *qm = &q->msgs[i];
        if (qm->ref_term != 0) {
            if (!msgq_resolve_ref(q, qm, h))
                qm->msg.type = 0; /* dropped: loss is tolerated, raft resends */
        } else {
            for (size_t e = qm->ent_off; e < qm->ent_off + qm->msg.n_entries; e++)
                q->ents[e].data = q->ents[e].len > 0 ? q->bytes + q->ent_data_off[e] : NULL;
        }
        qm->msg.entries = qm->msg.n_entries > 0 ? &q->ents[qm->ent_off] : NULL;
        qm->msg.snap = qm->snap_off != SIZE_MAX
                           ? (const struct raft_snapshot_meta *)(q->bytes + qm->snap_off)
                           : NULL;
        qm->msg.data = qm->msg.data_len > 0 ? q->bytes + qm->data_off : NULL;
    }
}

/* Empties q; a byte arena much larger than what the last MR_SLACK_ROUNDS rounds used shrinks,
 * so that one burst does not pin megabytes forever (shrinking at once made bursty traffic
 * free and fault in fresh pages round after round). */
static void msgq_reset(struct mr_msgq *q)
{
    if (q->cap_bytes > (1u << 20) && q->n_bytes < q->cap_bytes / 8) {
        if (++q->slack_rounds >= MR_SLACK_ROUNDS) {
            q->cap_bytes /= 2;
            q->bytes = mr_xrealloc(q->bytes, q->cap_bytes);
            q->slack_rounds = 0;
        }
    } else {
        q->slack_rounds = 0;
    }
    q->n = 0;
    q->n_ents = 0;
    q->n_bytes = 0;
}

static void msgq_free(struct mr_msgq *q)
{
    if (q == NULL)
        return;
    free(q->msgs);
    free(q->ents);
    free(q->ent_data_off);
    free(q->bytes);
    memset(q, 0, sizeof *q);
}

static size_t msgq_memory(const struct mr_msgq *q)
{
    if (q == NULL)
        return 0;
    return sizeof *q + q->cap * sizeof *q->msgs +
           q->cap_ents * (sizeof *q->ents + sizeof *q->ent_data_off) + q->cap_bytes;
}

/* ---- per-group queues: proposals, reads, deferred calls ---------------------------------- */

struct mr_prop {
    raft_index index;
    raft_term term;
    mr_done_cb done;
    void *arg;
};

/* Proposals awaiting their apply, in index order (a ring). */
struct mr_pending {
    size_t head, n, cap;
    struct mr_prop items[];
};

struct mr_read {
    uint64_t ctx;
    raft_index index;
    bool answered; /* raft returned its read index */
};

struct mr_reads {
    size_t n, cap;
    struct mr_read items[];
};

enum mr_defer_type { DEFER_PROPOSE, DEFER_CONF, DEFER_TRANSFER, DEFER_READ, DEFER_CAMPAIGN };

/* A user call on a group that was being handled; run right after. */
struct mr_deferred {
    struct mr_deferred *next;
    enum mr_defer_type type;
    mr_done_cb done;
    void *arg;
    uint64_t ctx;   /* DEFER_READ */
    uint32_t op;    /* DEFER_CONF */
    raft_id node;   /* DEFER_CONF, DEFER_TRANSFER */
    size_t len;     /* DEFER_PROPOSE */
    uint8_t data[]; /* DEFER_PROPOSE */
};

/* ---- host and group ---------------------------------------------------------------------- */

struct mr_group {
    struct raft raft;
    mr_host_t *host;
    uint64_t id;
    const struct mr_sm_ops *ops;
    void *user;

    mr_group_t *active_prev, *active_next; /* ticked groups */
    mr_group_t *dirty_next;                /* wrote since the last seal */

    struct rlog_cursor log; /* where its stored runs of entries start (raftlog.h) */
    /* Entries appended since the last seal, written as one run when it is sealed: indexes
     * pend_from..pend_last of raft's log (pend_last = pend_from - 1: a pure truncation). */
    raft_index pend_from; /* 0: none */
    raft_index pend_last;
    raft_index applied;     /* last index handed to the state machine (or snapshot) */

    /* Writes since the last seal, acknowledged to raft when that seal syncs. */
    raft_index wr_index; /* last entry written, 0 if none */
    raft_term wr_term;
    raft_index wr_snap_index; /* snapshot from the leader installed, 0 if none */
    raft_term wr_snap_term;
    raft_index wr_own_snap; /* own snapshot saved at this index, 0 if none */

    uint64_t hs_seal;      /* seal carrying the latest hard state, 0 once synced */
    struct mr_msgq *held;  /* messages waiting for the hard state (NULL when empty) */
    struct mr_pending *pending;
    struct mr_reads *reads;
    struct mr_deferred *deferred_head, *deferred_tail;
    struct mr_kept_snap *kept_snap; /* ops->snapshot_arriving said MR_SNAP_LATER */

    uint32_t seal_refs;   /* pending seals that name this group */
    uint16_t quiet_ticks; /* consecutive ticks found quiescent */
    uint8_t role;         /* enum raft_role, as last reported */
    bool dirty;           /* on the host's dirty list */
    bool hs_unsealed;     /* wrote a hard state not yet in a seal */
    bool hold;            /* messages go to held */
    bool hibernating;
    bool busy;            /* inside group_step */
    bool draining;        /* running deferred calls */
    bool snapshotting;    /* own snapshot written, RAFT_EV_SNAPSHOT not yet stepped */
    bool closed;
};

/* A leader's snapshot message kept for later (ops->snapshot_arriving), with its own copies. */
struct mr_kept_snap {
    struct raft_msg msg;
    struct raft_snapshot_meta meta;
    void *data;
};

struct mr_peer {
    raft_id node;
    bool down;
    struct mr_msgq outbox;
};

struct mr_seal_item {
    mr_group_t *g;
    raft_index index;
    raft_term term;
    raft_index snap_index;
    raft_term snap_term;
    raft_index own_snap;
};

/* One store_on_synced round: what each dirty group wrote before it was registered. */
struct mr_seal {
    mr_host_t *host;
    uint64_t seq;
    size_t n;
    struct mr_seal_item items[];
};

struct mr_host {
    struct ev_loop *loop;
    store_t *store;
    struct mr_host_config cfg;
    struct mr_transport transport;
    ev_timer tick_timer;
    ev_prepare prepare;

    mr_group_t **table; /* open addressing by group id, linear probing */
    size_t table_cap, n_groups;

    mr_group_t *active; /* doubly linked, ticked each tick */
    size_t n_active;
    mr_group_t *tick_cursor; /* next group the running tick visits */
    mr_group_t *dirty;       /* singly linked via dirty_next */
    size_t n_dirty;

    uint64_t seal_seq;
    size_t seals_outstanding;

    struct mr_peer *peers;
    size_t n_peers;
    struct mr_outmsg *out_scratch;
    size_t out_cap;
    struct raft_entry *ent_scratch; /* a pending run's entries, gathered for rlog_append */
    size_t ent_cap;

    bool closing;
    struct mr_host_stats stats;
};

static int group_step(mr_group_t *g, const struct raft_event *ev, const struct raft_msg *in,
                      mr_done_cb done, void *done_arg);
static void group_maybe_free(mr_group_t *g);

const char *mr_status_name(int status)
{
    switch (status) {
    case MR_OK: return "ok";
    case MR_ENOTLEADER: return "not leader";
    case MR_ELOST: return "entry lost to another leader";
    case MR_EDEPOSED: return "leadership lost (outcome unknown)";
    case MR_ECLOSED: return "group closed";
    case MR_EINVAL: return "invalid or unsupported";
    case MR_ENOMEM: return "out of memory";
    case MR_EBUSY: return "busy";
    default: return "unknown";
    }
}

static int mr_status_from_raft(int rc)
{
    switch (rc) {
    case RAFT_OK: return MR_OK;
    case RAFT_ENOTLEADER: return MR_ENOTLEADER;
    case RAFT_ENOMEM: return MR_ENOMEM;
    case RAFT_EBUSY: return MR_EBUSY;
    default: return MR_EINVAL;
    }
}

/* ---- group table ------------------------------------------------------------------------- */

static size_t table_slot(const mr_host_t *h, uint64_t id)
{
    return (size_t)((id * 0x9E3779B97F4A7C15ull) >> 17) & (h->table_cap - 1);
}

static mr_group_t *table_find(const mr_host_t *h, uint64_t id)
{
    if (h->table_cap == 0)
        return NULL;
    for (size_t i = table_slot(h, id);; i = (i + 1) & (h->table_cap - 1)) {
        mr_group_t *g = h->table[i];
        if (g == NULL || g->id == id)
            return g;
    }
}

static void table_put(mr_host_t *h, mr_group_t *g)
{
    size_t i = table_slot(h, g->id);
    while (h->table[i] != NULL)
        i = (i + 1) & (h->table_cap - 1);
    h->table[i] = g;
}

/* Keeps the load factor at or below 1/2. */
static int table_reserve(mr_host_t *h, size_t n)
{
    if (2 * n <= h->table_cap)
        return 0;
    size_t cap = h->table_cap ? h->table_cap : 16;
    while (2 * n > cap)
        cap *= 2;
    mr_group_t **old = h->table;
    size_t old_cap = h->table_cap;
    h->table = calloc(cap, sizeof *h->table);
    if (h->table == NULL) {
        h->table = old;
        return -1;
    }
    h->table_cap = cap;
    for (size_t i = 0; i < old_cap; i++)
        if (old[i] != NULL)
            table_put(h, old[i]);
    free(old);
    return 0;
}

/* Removal with backward shift: later members of the probe run move up into the hole. */
static void table_remove(mr_host_t *h, const mr_group_t *g)
{
    size_t mask = h->table_cap - 1, i = table_slot(h, g->id);
    while (h->table[i] != g)
        i = (i + 1) & mask;
    h->table[i] = NULL;
    for (size_t j = (i + 1) & mask; h->table[j] != NULL; j = (j + 1) & mask) {
        size_t home = table_slot(h, h->table[j]->id);
        /* h->table[j] may fill the hole at i if its home is not in (i, j] cyclically */
        bool stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (!stays) {
            h->table[i] = h->table[j];
            h->table[j] = NULL;
            i = j;
        }
    }
}

/* ---- peers and outboxes ------------------------------------------------------------------ */

static struct mr_peer *peer_get(mr_host_t *h, raft_id node)
{
    for (size_t i = 0; i < h->n_peers; i++)
        if (h->peers[i].node == node)
            return &h->peers[i];
    h->peers = mr_xrealloc(h->peers, (h->n_peers + 1) * sizeof *h->peers);
    struct mr_peer *p = &h->peers[h->n_peers++];
    memset(p, 0, sizeof *p);
    p->node = node;
    return p;
}

static bool peer_is_down(const mr_host_t *h, raft_id node)
{
    for (size_t i = 0; i < h->n_peers; i++)
        if (h->peers[i].node == node)
            return h->peers[i].down;
    return false;
}

/* Hands every outbox to the transport: one send per destination node. */
static void host_flush(mr_host_t *h)
{
    for (size_t p = 0; p < h->n_peers; p++) {
        struct mr_msgq *q = &h->peers[p].outbox;
        if (q->n == 0)
            continue;
        if (q->n > h->out_cap) {
            h->out_cap = grow_cap(h->out_cap, q->n, 64);
            h->out_scratch = mr_xrealloc(h->out_scratch, h->out_cap * sizeof *h->out_scratch);
        }
        msgq_resolve(q, h);
        size_t n = 0;
        for (size_t i = 0; i < q->n; i++)
            if (q->msgs[i].msg.type != 0)
                h->out_scratch[n++] = (struct mr_outmsg){q->msgs[i].gid, &q->msgs[i].msg};
        if (n > 0) {
            h->stats.sends++;
            h->stats.msgs_sent += n;
            h->transport.send(h->transport.ctx, h->peers[p].node, h->out_scratch, n);
        }
        msgq_reset(&h->peers[p].outbox); /* after send: it may shrink the arena used above */
    }
}

/* ---- active list and hibernation --------------------------------------------------------- */

static void host_timer_update(mr_host_t *h)
{
    bool want = h->active != NULL && !h->closing;
    if (want && !ev_is_active(&h->tick_timer))
        ev_timer_again(h->loop, &h->tick_timer);
    else if (!want && ev_is_active(&h->tick_timer))
        ev_timer_stop(h->loop, &h->tick_timer);
}

static void active_add(mr_group_t *g)
{
    mr_host_t *h = g->host;
    g->active_prev = NULL;
    g->active_next = h->active;
    if (h->active != NULL)
        h->active->active_prev = g;
    h->active = g;
    h->n_active++;
    host_timer_update(h);
}

static void active_remove(mr_group_t *g)
{
    mr_host_t *h = g->host;
    if (h->tick_cursor == g)
        h->tick_cursor = g->active_next;
    if (g->active_prev != NULL)
        g->active_prev->active_next = g->active_next;
    else
        h->active = g->active_next;
    if (g->active_next != NULL)
        g->active_next->active_prev = g->active_prev;
    g->active_prev = g->active_next = NULL;
    h->n_active--;
}

static bool group_has_work(const mr_group_t *g)
{
    return g->dirty || g->seal_refs > 0 || g->hold || g->snapshotting ||
           (g->pending != NULL && g->pending->n > 0) || (g->reads != NULL && g->reads->n > 0) ||
           g->deferred_head != NULL;
}

/* A group may stop being ticked when raft has nothing in flight (raft_quiescent: for a voting
 * follower that includes knowing a leader), its leader's node is not known to be down, and the
 * host has nothing pending for it. */
static bool group_can_hibernate(const mr_group_t *g)
{
    const struct raft *r = &g->raft;
    if (!raft_quiescent(r) || group_has_work(g))
        return false;
    return r->role == RAFT_LEADER || r->leader == 0 || !peer_is_down(g->host, r->leader);
}

static void group_hibernate(mr_group_t *g)
{
    active_remove(g);
    g->hibernating = true;
    g->quiet_ticks = 0;
    free(g->pending); /* empty: group_can_hibernate checked */
    g->pending = NULL;
    free(g->reads);
    g->reads = NULL;
    g->host->stats.hibernations++;
}

/* Resumes ticking: raft is told with RAFT_EV_WAKE so it restarts its timers instead of
 * treating the silence as a failure. */
static void group_wake(mr_group_t *g)
{
    if (!g->hibernating)
        return;
    g->hibernating = false;
    g->quiet_ticks = 0;
    active_add(g);
    g->host->stats.wakeups++;
    struct raft_event ev = {.type = RAFT_EV_WAKE};
    group_step(g, &ev, NULL, NULL, NULL);
}

static void group_tick(mr_group_t *g)
{
    struct raft_event ev = {.type = RAFT_EV_TICK};
    g->host->stats.group_ticks++;
    group_step(g, &ev, NULL, NULL, NULL);
    if (!group_can_hibernate(g)) {
        g->quiet_ticks = 0;
    } else if (++g->quiet_ticks >= g->host->cfg.hibernate_ticks) {
        group_hibernate(g);
    }
}

static void host_on_tick(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    mr_host_t *h = w->data;
    h->stats.timer_fires++;
    for (mr_group_t *g = h->active; g != NULL; g = h->tick_cursor) {
        h->tick_cursor = g->active_next; /* active_remove moves the cursor past removed groups */
        group_tick(g);
    }
    h->tick_cursor = NULL;
    host_timer_update(h);
}

/* ---- storage: writes and their acknowledgement ------------------------------------------- */

static void group_mark_dirty(mr_group_t *g)
{
    if (g->dirty)
        return;
    g->dirty = true;
    g->dirty_next = g->host->dirty;
    g->host->dirty = g;
    g->host->n_dirty++;
}

/* Writes the entries the group appended since the last seal as one run. They are read from
 * raft's log, where they still are: raft only compacts entries below its snapshot, which no
 * unpersisted entry is, and a truncation or a snapshot install since then updated (or
 * cleared) the pending range. Pointers from raft_entry_at are used at once (RocksDB copies). */
static void group_flush_log(mr_group_t *g)
{
    if (g->pend_from == 0)
        return;
    mr_host_t *h = g->host;
    raft_index from = g->pend_from;
    size_t n = g->pend_last + 1 - from;
    g->pend_from = 0;
    if (n > h->ent_cap) {
        h->ent_cap = grow_cap(h->ent_cap, n, 256);
        h->ent_scratch = mr_xrealloc(h->ent_scratch, h->ent_cap * sizeof *h->ent_scratch);
    }
    for (size_t i = 0; i < n; i++) {
        const struct raft_entry *e = raft_entry_at(&g->raft, from + i);
        if (e == NULL) { /* cannot happen (see above); never acknowledge what was not written */
            log_error("multiraft: group %llu: entry %llu to store is not in raft's log",
                      (unsigned long long)g->id, (unsigned long long)(from + i));
            g->wr_index = 0;
            g->wr_term = 0;
            return;
        }
        h->ent_scratch[i] = *e;
    }
    rlog_append(h->store, g->id, from, h->ent_scratch, n, &g->log);
}

/* Registers one synced callback covering every write the dirty groups made so far. */
static void host_on_synced(void *arg);

static void host_seal(mr_host_t *h)
{
    if (h->n_dirty == 0 || h->closing)
        return;
    struct mr_seal *s = mr_xrealloc(NULL, sizeof *s + h->n_dirty * sizeof s->items[0]);
    s->host = h;
    s->seq = ++h->seal_seq;
    s->n = 0;
    mr_group_t *next;
    for (mr_group_t *g = h->dirty; g != NULL; g = next) {
        next = g->dirty_next;
        g->dirty = false;
        g->dirty_next = NULL;
        if (g->closed) {
            group_maybe_free(g);
            continue;
        }
        group_flush_log(g);
        s->items[s->n++] = (struct mr_seal_item){g, g->wr_index, g->wr_term, g->wr_snap_index,
                                                 g->wr_snap_term, g->wr_own_snap};
        g->wr_index = g->wr_snap_index = g->wr_own_snap = 0;
        g->wr_term = g->wr_snap_term = 0;
        if (g->hs_unsealed) {
            g->hs_seal = s->seq;
            g->hs_unsealed = false;
        }
        g->seal_refs++;
    }
    h->dirty = NULL;
    h->n_dirty = 0;
    h->seals_outstanding++;
    h->stats.seals++;
    store_on_synced(h->store, host_on_synced, s);
}

/* Moves the held messages to the outboxes: their hard state is durable now. */
static void group_release_held(mr_group_t *g)
{
    g->hold = false;
    struct mr_msgq *q = g->held;
    if (q == NULL)
        return;
    g->held = NULL;
    msgq_resolve(q, NULL);
    for (size_t i = 0; i < q->n; i++)
        msgq_push(&peer_get(g->host, q->msgs[i].msg.to)->outbox, g->id, &q->msgs[i].msg,
                  NULL);
    msgq_free(q);
    free(q);
}

static void group_synced(mr_group_t *g, const struct mr_seal_item *it, uint64_t seq)
{
    /* Released first: they are older than anything the steps below produce. */
    if (g->hs_seal == seq && !g->hs_unsealed) {
        g->hs_seal = 0;
        group_release_held(g);
    }
    struct raft_event ev = {.type = RAFT_EV_PERSISTED};
    if (it->snap_index != 0) {
        ev.u.persisted.index = it->snap_index;
        ev.u.persisted.term = it->snap_term;
        g->host->stats.persisted_steps++;
        group_step(g, &ev, NULL, NULL, NULL);
    }
    if (it->own_snap != 0) {
        struct raft_event snap = {.type = RAFT_EV_SNAPSHOT};
        snap.u.snapshot.index = it->own_snap;
        g->snapshotting = false;
        group_step(g, &snap, NULL, NULL, NULL);
    }
    if (it->index != 0) {
        ev.u.persisted.index = it->index;
        ev.u.persisted.term = it->term;
        g->host->stats.persisted_steps++;
        group_step(g, &ev, NULL, NULL, NULL);
    }
}

static void host_on_synced(void *arg)
{
    struct mr_seal *s = arg;
    mr_host_t *h = s->host;
    h->seals_outstanding--;
    for (size_t i = 0; i < s->n; i++) {
        mr_group_t *g = s->items[i].g;
        g->seal_refs--;
        if (g->closed)
            group_maybe_free(g);
        else if (!h->closing)
            group_synced(g, &s->items[i], s->seq);
    }
    free(s);
    /* The store submits its next batch right after its callbacks: include what ours wrote. */
    host_seal(h);
}

static void host_on_prepare(struct ev_loop *loop, ev_prepare *w, int revents)
{
    (void)loop;
    (void)revents;
    mr_host_t *h = w->data;
    host_seal(h);
    host_flush(h);
}

/* ---- handling an update ------------------------------------------------------------------ */

/* The configuration in force at index (for a snapshot's meta): raft's current one if nothing
 * changed it since, else the last CONF entry at or below index, else the latest snapshot's,
 * else the bootstrap members. */
static void group_conf_at(const mr_group_t *g, raft_index index, struct raft_conf *out)
{
    const struct raft *r = &g->raft;
    if (r->conf_index <= index) {
        *out = r->conf;
        return;
    }
    raft_index low = r->snap.index > r->log_offset ? r->snap.index : r->log_offset;
    for (raft_index i = index; i > low; i--) {
        const struct raft_entry *e = raft_entry_at(r, i);
        if (e != NULL && e->type == RAFT_ENTRY_CONF &&
            raft_conf_decode(out, e->data, e->len) == RAFT_OK)
            return;
    }
    if (r->snap.index > 0) {
        *out = r->snap.conf;
        return;
    }
    memset(out, 0, sizeof *out);
    for (unsigned i = 0; i < r->cfg.n_peers; i++)
        out->voters[out->n_voters++] = r->cfg.peers[i];
}

/* RAFT_UPD_SNAPSHOT_DUE: serialize the state machine at `applied` and store it; raft hears
 * RAFT_EV_SNAPSHOT once that write is synced, and then allows compaction. */
static void group_take_snapshot(mr_group_t *g)
{
    raft_index index = g->applied;
    if (g->snapshotting || g->ops->snapshot_take == NULL || index <= g->raft.snap.index)
        return;
    struct raft_snapshot_meta meta = {.index = index, .term = raft_term_at(&g->raft, index)};
    if (meta.term == 0)
        return; /* not in the log (cannot happen above the snapshot): skip this round */
    group_conf_at(g, index, &meta.conf);
    void *bytes = NULL;
    size_t len = 0;
    if (g->ops->snapshot_take(g, index, &bytes, &len) != 0) {
        free(bytes);
        return;
    }
    rlog_save_snapshot(g->host->store, g->id, &meta, bytes, len, false, NULL);
    free(bytes);
    g->wr_own_snap = index;
    g->snapshotting = true;
    g->host->stats.snapshots_taken++;
    group_mark_dirty(g);
}

static void pending_fail_all(mr_group_t *g, int status)
{
    struct mr_pending *p = g->pending;
    while (p != NULL && p->n > 0) {
        struct mr_prop prop = p->items[p->head];
        p->head = (p->head + 1) % p->cap;
        p->n--;
        prop.done(g, prop.arg, status, prop.index);
    }
}

static void reads_fail_unanswered(mr_group_t *g, int status)
{
    struct mr_reads *rd = g->reads;
    if (rd == NULL)
        return;
    size_t kept = 0;
    for (size_t i = 0; i < rd->n; i++) {
        struct mr_read r = rd->items[i];
        if (r.answered) {
            rd->items[kept++] = r;
        } else if (g->ops->read_ready != NULL) {
            g->ops->read_ready(g, r.ctx, status);
        }
    }
    rd->n = kept;
}

/* RAFT_UPD_SNAPSHOT (follower): the leader's snapshot replaces state machine and log. */
static void group_install(mr_group_t *g, const struct raft_update *u, const struct raft_msg *in)
{
    if (in == NULL || in->type != RAFT_MSG_SNAPSHOT) {
        log_error("multiraft: group %llu: snapshot install without a snapshot message",
                  (unsigned long long)g->id);
        return;
    }
    if (g->ops->snapshot_install != NULL)
        g->ops->snapshot_install(g, u->snapshot.index, in->data, in->data_len);
    /* A state machine that sends another form than it stores saves its own form of it. */
    void *local = NULL;
    size_t local_len = 0;
    bool own_form = g->ops->snapshot_send != NULL && g->ops->snapshot_take != NULL &&
                    g->ops->snapshot_take(g, u->snapshot.index, &local, &local_len) == 0;
    rlog_save_snapshot(g->host->store, g->id, &u->snapshot, own_form ? local : in->data,
                       own_form ? local_len : in->data_len, true, &g->log);
    free(local);
    g->pend_from = 0; /* entries appended before it are gone with the old log */
    g->applied = u->snapshot.index;
    g->wr_index = 0; /* superseded: the snapshot replaced those entries */
    g->wr_term = 0;
    g->wr_snap_index = u->snapshot.index;
    g->wr_snap_term = u->snapshot.term;
    g->host->stats.snapshots_installed++;
    group_mark_dirty(g);
    pending_fail_all(g, MR_EDEPOSED);
}

/* The write itself waits for the seal (group_flush_log), so that all of a loop iteration's
 * appends of the group become one run; until then raft's log holds the entries. */
static void group_write_entries(mr_group_t *g, const struct raft_update *u)
{
    if (g->pend_from == 0 || u->entries_first < g->pend_from)
        g->pend_from = u->entries_first;
    g->pend_last = u->entries_first + u->n_entries - 1;
    if (u->n_entries > 0) {
        g->wr_index = u->entries_first + u->n_entries - 1;
        g->wr_term = u->entries[u->n_entries - 1].term;
    } else if (g->wr_index >= u->entries_first) {
        g->wr_index = 0; /* truncated away: nothing left to acknowledge */
        g->wr_term = 0;
    }
    g->host->stats.entries_written += u->n_entries;
    group_mark_dirty(g);
}

/* A state machine with snapshot_send: the current state, at the last applied index (committed,
 * and at or after the snapshot raft names, so correct to send). */
static bool group_send_current(mr_group_t *g, struct raft_msg *m, struct raft_snapshot_meta *meta,
                               void **data)
{
    raft_index index = g->applied;
    memset(meta, 0, sizeof *meta);
    meta->index = index;
    meta->term = raft_term_at(&g->raft, index);
    if (index < m->index || meta->term == 0)
        return false;
    group_conf_at(g, index, &meta->conf);
    size_t len = 0;
    if (g->ops->snapshot_send(g, data, &len) != 0) {
        free(*data);
        *data = NULL;
        return false;
    }
    m->snap = meta;
    m->index = meta->index;
    m->log_term = meta->term;
    m->data = *data;
    m->data_len = len;
    return true;
}

/* A RAFT_MSG_SNAPSHOT goes out with the latest durable snapshot attached. */
static bool group_attach_snapshot(mr_group_t *g, struct raft_msg *m,
                                  struct raft_snapshot_meta *meta, void **data)
{
    if (g->ops->snapshot_send != NULL)
        return group_send_current(g, m, meta, data);
    size_t len = 0;
    if (rlog_load_snapshot(g->host->store, g->id, meta, data, &len) != 1) {
        log_error("multiraft: group %llu: raft asked to send a snapshot but none is stored",
                  (unsigned long long)g->id);
        return false;
    }
    if (meta->index < m->index) {
        /* The one raft names is not synced yet (a snapshot installed moments ago): an older
         * one would be wrong to send. Drop the message; raft sends it again later. */
        free(*data);
        *data = NULL;
        return false;
    }
    m->snap = meta;
    m->index = meta->index;
    m->log_term = meta->term;
    m->data = *data;
    m->data_len = len;
    return true;
}

static void group_send(mr_group_t *g, const struct raft_msg *msg)
{
    struct raft_msg m = *msg;
    struct raft_snapshot_meta meta;
    void *snap_data = NULL;
    if (m.type == RAFT_MSG_SNAPSHOT && !group_attach_snapshot(g, &m, &meta, &snap_data))
        return;
    if (g->hold) {
        if (g->held == NULL) {
            g->held = mr_xrealloc(NULL, sizeof *g->held);
            memset(g->held, 0, sizeof *g->held);
        }
        msgq_push(g->held, g->id, &m, NULL);
        g->host->stats.msgs_held++;
    } else {
        msgq_push(&peer_get(g->host, m.to)->outbox, g->id, &m, &g->raft);
    }
    free(snap_data);
}

/* Completes proposals up to index: ours if the applied entry has the term we proposed at,
 * lost otherwise (another leader's entry took the index). */
static void pending_complete(mr_group_t *g, raft_index index, raft_term term)
{
    struct mr_pending *p = g->pending;
    while (p != NULL && p->n > 0 && p->items[p->head].index <= index) {
        struct mr_prop prop = p->items[p->head];
        p->head = (p->head + 1) % p->cap;
        p->n--;
        bool ours = prop.index == index && prop.term == term;
        prop.done(g, prop.arg, ours ? MR_OK : MR_ELOST, prop.index);
    }
}

static void group_apply(mr_group_t *g, const struct raft_update *u)
{
    for (size_t i = 0; i < u->n_apply; i++) {
        raft_index index = u->apply_first + i;
        const struct raft_entry *e = &u->apply[i];
        if (e->type == RAFT_ENTRY_NORMAL)
            g->ops->apply(g, index, e);
        g->applied = index;
        pending_complete(g, index, e->term);
    }
}

static struct mr_reads *reads_reserve(mr_group_t *g)
{
    struct mr_reads *rd = g->reads;
    if (rd != NULL && rd->n < rd->cap)
        return rd;
    size_t cap = rd != NULL ? rd->cap * 2 : 4;
    rd = realloc(rd, sizeof *rd + cap * sizeof rd->items[0]);
    if (rd == NULL)
        return NULL;
    if (g->reads == NULL)
        rd->n = 0;
    rd->cap = cap;
    g->reads = rd;
    return rd;
}

static void reads_answer(mr_group_t *g, const struct raft_read_state *states, size_t n)
{
    struct mr_reads *rd = g->reads;
    for (size_t s = 0; s < n && rd != NULL; s++) {
        for (size_t i = 0; i < rd->n; i++) {
            if (!rd->items[i].answered && rd->items[i].ctx == states[s].ctx) {
                rd->items[i].answered = true;
                rd->items[i].index = states[s].index;
                break;
            }
        }
    }
}

/* Serves answered reads whose index the state machine has reached. */
static void reads_serve(mr_group_t *g)
{
    struct mr_reads *rd = g->reads;
    if (rd == NULL || rd->n == 0)
        return;
    size_t kept = 0, n = rd->n;
    for (size_t i = 0; i < n; i++) {
        struct mr_read r = rd->items[i];
        if (r.answered && r.index <= g->applied) {
            if (g->ops->read_ready != NULL)
                g->ops->read_ready(g, r.ctx, MR_OK);
        } else {
            rd->items[kept++] = r;
        }
    }
    rd->n = kept;
}

static void group_role(mr_group_t *g, const struct raft_update *u)
{
    bool was_leader = g->role == RAFT_LEADER;
    g->role = (uint8_t)u->role;
    if (was_leader && u->role != RAFT_LEADER) {
        pending_fail_all(g, MR_EDEPOSED);
        reads_fail_unanswered(g, MR_EDEPOSED);
    }
    if (g->ops->role_changed != NULL)
        g->ops->role_changed(g, u->role, u->leader);
}

/* Carries out one update in the order raft.h prescribes. `in` is the message just stepped. */
static void group_handle(mr_group_t *g, const struct raft_update *u, const struct raft_msg *in)
{
    store_t *store = g->host->store;
    if (u->flags & RAFT_UPD_SNAPSHOT)
        group_install(g, u, in);
    if (u->flags & RAFT_UPD_HARD_STATE) {
        rlog_save_hard_state(store, g->id, u->term, u->vote);
        g->hs_unsealed = true;
        g->hold = true;
        group_mark_dirty(g);
    }
    if (u->flags & RAFT_UPD_ENTRIES)
        group_write_entries(g, u);
    if (u->flags & RAFT_UPD_MESSAGES)
        for (size_t i = 0; i < u->n_msgs; i++)
            group_send(g, &u->msgs[i]);
    if (u->flags & RAFT_UPD_APPLY)
        group_apply(g, u);
    if (u->flags & RAFT_UPD_READS)
        reads_answer(g, u->reads, u->n_reads);
    reads_serve(g);
    if (u->flags & RAFT_UPD_COMPACT) {
        rlog_compact(store, g->id, u->compact_index, &g->log);
        group_mark_dirty(g);
    }
    if (u->flags & RAFT_UPD_ROLE)
        group_role(g, u);
    if (u->flags & RAFT_UPD_SNAPSHOT_DUE)
        group_take_snapshot(g);
}

/* ---- stepping ---------------------------------------------------------------------------- */

static int pending_reserve(mr_group_t *g)
{
    struct mr_pending *p = g->pending;
    if (p != NULL && p->n < p->cap)
        return 0;
    size_t cap = p != NULL ? p->cap * 2 : 8;
    struct mr_pending *np = malloc(sizeof *np + cap * sizeof np->items[0]);
    if (np == NULL)
        return -1;
    np->head = 0;
    np->n = 0;
    np->cap = cap;
    for (size_t i = 0; p != NULL && i < p->n; i++)
        np->items[np->n++] = p->items[(p->head + i) % p->cap];
    free(p);
    g->pending = np;
    return 0;
}

static void group_run_deferred(mr_group_t *g);

/* Steps raft and handles the update. With done set (a proposal or conf change), the entry is
 * registered for completion before anything can apply it. The caller reserved pending room. */
static int group_step(mr_group_t *g, const struct raft_event *ev, const struct raft_msg *in,
                      mr_done_cb done, void *done_arg)
{
    struct raft_update u;
    g->busy = true;
    int rc = raft_step(&g->raft, ev, &u);
    if (rc == RAFT_OK && done != NULL) {
        struct mr_pending *p = g->pending;
        p->items[(p->head + p->n) % p->cap] =
            (struct mr_prop){u.proposed_index, u.proposed_term, done, done_arg};
        p->n++;
    }
    if (rc == RAFT_ENOMEM)
        log_error("multiraft: group %llu: raft out of memory", (unsigned long long)g->id);
    group_handle(g, &u, in);
    g->busy = false;
    group_run_deferred(g);
    return rc;
}

static int group_propose_now(mr_group_t *g, const void *data, size_t len, mr_done_cb done,
                             void *arg)
{
    if (g->raft.role != RAFT_LEADER)
        return MR_ENOTLEADER;
    group_wake(g);
    if (done != NULL && pending_reserve(g) != 0)
        return MR_ENOMEM;
    struct raft_event ev = {.type = RAFT_EV_PROPOSE};
    ev.u.propose.data = data;
    ev.u.propose.len = (uint32_t)len;
    return mr_status_from_raft(group_step(g, &ev, NULL, done, arg));
}

static int group_conf_now(mr_group_t *g, uint32_t op, raft_id node, mr_done_cb done, void *arg)
{
    if (g->raft.role != RAFT_LEADER)
        return MR_ENOTLEADER;
    group_wake(g);
    if (done != NULL && pending_reserve(g) != 0)
        return MR_ENOMEM;
    struct raft_event ev = {.type = RAFT_EV_CONF_CHANGE};
    ev.u.conf.op = op;
    ev.u.conf.id = node;
    return mr_status_from_raft(group_step(g, &ev, NULL, done, arg));
}

static int group_transfer_now(mr_group_t *g, raft_id node)
{
    if (g->raft.role != RAFT_LEADER)
        return MR_ENOTLEADER;
    group_wake(g);
    struct raft_event ev = {.type = RAFT_EV_TRANSFER};
    ev.u.transfer.to = node;
    return mr_status_from_raft(group_step(g, &ev, NULL, NULL, NULL));
}

static int group_campaign_now(mr_group_t *g)
{
    if (g->raft.role == RAFT_LEADER)
        return MR_OK;
    group_wake(g);
    struct raft_event ev = {.type = RAFT_EV_CAMPAIGN};
    return mr_status_from_raft(group_step(g, &ev, NULL, NULL, NULL));
}

static int group_read_now(mr_group_t *g, uint64_t ctx)
{
    if (g->raft.role != RAFT_LEADER)
        return MR_ENOTLEADER;
    group_wake(g);
    struct mr_reads *rd = reads_reserve(g);
    if (rd == NULL)
        return MR_ENOMEM;
    rd->items[rd->n++] = (struct mr_read){ctx, 0, false};
    struct raft_event ev = {.type = RAFT_EV_READ_INDEX};
    ev.u.read.ctx = ctx;
    int rc = mr_status_from_raft(group_step(g, &ev, NULL, NULL, NULL));
    if (rc != MR_OK) { /* not registered with raft: forget it (the last unanswered one) */
        rd = g->reads;
        for (size_t i = rd->n; i-- > 0;) {
            if (!rd->items[i].answered && rd->items[i].ctx == ctx) {
                memmove(&rd->items[i], &rd->items[i + 1], (rd->n - i - 1) * sizeof rd->items[0]);
                rd->n--;
                break;
            }
        }
    }
    return rc;
}

static int group_defer(mr_group_t *g, enum mr_defer_type type, const void *data, size_t len,
                       mr_done_cb done, void *arg)
{
    struct mr_deferred *d = malloc(sizeof *d + len);
    if (d == NULL)
        return MR_ENOMEM;
    memset(d, 0, sizeof *d);
    d->type = type;
    d->done = done;
    d->arg = arg;
    d->len = len;
    if (len > 0)
        memcpy(d->data, data, len);
    if (g->deferred_tail != NULL)
        g->deferred_tail->next = d;
    else
        g->deferred_head = d;
    g->deferred_tail = d;
    return MR_OK;
}

/* Runs a deferred call; failures go to its callback since the caller already got MR_OK. */
static void deferred_run(mr_group_t *g, struct mr_deferred *d)
{
    int rc = MR_OK;
    switch (d->type) {
    case DEFER_PROPOSE:
        rc = group_propose_now(g, d->data, d->len, d->done, d->arg);
        if (rc != MR_OK && d->done != NULL)
            d->done(g, d->arg, rc, 0);
        break;
    case DEFER_CONF:
        rc = group_conf_now(g, d->op, d->node, d->done, d->arg);
        if (rc != MR_OK && d->done != NULL)
            d->done(g, d->arg, rc, 0);
        break;
    case DEFER_TRANSFER:
        group_transfer_now(g, d->node);
        break;
    case DEFER_CAMPAIGN:
        group_campaign_now(g);
        break;
    case DEFER_READ:
        rc = group_read_now(g, d->ctx);
        if (rc != MR_OK && g->ops->read_ready != NULL)
            g->ops->read_ready(g, d->ctx, rc);
        break;
    }
}

static void group_run_deferred(mr_group_t *g)
{
    if (g->draining || g->deferred_head == NULL)
        return;
    g->draining = true;
    struct mr_deferred *d;
    while (!g->closed && (d = g->deferred_head) != NULL) {
        g->deferred_head = d->next;
        if (g->deferred_head == NULL)
            g->deferred_tail = NULL;
        deferred_run(g, d);
        free(d);
    }
    g->draining = false;
}

static void deferred_fail_all(mr_group_t *g)
{
    struct mr_deferred *d;
    while ((d = g->deferred_head) != NULL) {
        g->deferred_head = d->next;
        if ((d->type == DEFER_PROPOSE || d->type == DEFER_CONF) && d->done != NULL)
            d->done(g, d->arg, MR_ECLOSED, 0);
        else if (d->type == DEFER_READ && g->ops->read_ready != NULL)
            g->ops->read_ready(g, d->ctx, MR_ECLOSED);
        free(d);
    }
    g->deferred_tail = NULL;
}

/* ---- public: groups ---------------------------------------------------------------------- */

static void group_config(const mr_host_t *h, uint64_t gid, const raft_id *members, unsigned n,
                         struct raft_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->id = h->cfg.node_id;
    if (n > 0)
        memcpy(cfg->peers, members, n * sizeof *members);
    cfg->n_peers = n;
    cfg->election_ticks = h->cfg.election_ticks;
    cfg->heartbeat_ticks = h->cfg.heartbeat_ticks;
    cfg->max_inflight = h->cfg.max_inflight;
    cfg->max_batch = h->cfg.max_batch;
    cfg->pre_vote = true;    /* a woken or restarted node must not disrupt a working leader */
    cfg->check_quorum = true;
    cfg->seed = (gid + 1) * 0x9E3779B97F4A7C15ull;
    cfg->snapshot_threshold = h->cfg.snapshot_threshold;
    cfg->trailing = h->cfg.trailing;
}

/* Hands raft what the store holds for the group; installs a stored snapshot. */
static int group_restore(mr_group_t *g)
{
    struct rlog_state st;
    if (rlog_load(g->host->store, g->id, &st) != 0)
        return MR_EINVAL;
    int rc = MR_OK;
    if (st.has_hard_state || st.has_snapshot || st.n > 0) {
        int rrc = raft_restore(&g->raft, st.term, st.vote, st.has_snapshot ? &st.snap : NULL,
                               st.first, st.entries, st.n);
        if (rrc != RAFT_OK) {
            log_error("multiraft: group %llu: raft_restore failed (%d)",
                      (unsigned long long)g->id, rrc);
            rc = mr_status_from_raft(rrc);
        }
    }
    if (rc == MR_OK && st.has_snapshot) {
        if (g->ops->snapshot_install != NULL)
            g->ops->snapshot_install(g, st.snap.index, st.snap_data, st.snap_len);
        g->applied = st.snap.index;
    }
    g->log = st.cursor;
    rlog_state_free(&st);
    return rc;
}

mr_group_t *mr_group_open(mr_host_t *h, uint64_t group_id, const raft_id *members,
                          unsigned n_members, const struct mr_sm_ops *ops, void *user, int *err)
{
    int dummy;
    if (err == NULL)
        err = &dummy;
    *err = MR_EINVAL;
    if (h == NULL || h->closing || ops == NULL || ops->apply == NULL ||
        (members == NULL && n_members > 0) || n_members > RAFT_MAX_NODES ||
        table_find(h, group_id) != NULL)
        return NULL;
    *err = MR_ENOMEM;
    if (table_reserve(h, h->n_groups + 1) != 0)
        return NULL;
    mr_group_t *g = calloc(1, sizeof *g);
    if (g == NULL)
        return NULL;
    g->host = h;
    g->id = group_id;
    g->ops = ops;
    g->user = user;
    g->role = RAFT_FOLLOWER;
    struct raft_config cfg;
    group_config(h, group_id, members, n_members, &cfg);
    int rc = mr_status_from_raft(raft_init(&g->raft, &cfg));
    if (rc == MR_OK)
        rc = group_restore(g);
    if (rc != MR_OK) {
        raft_free(&g->raft);
        free(g);
        *err = rc;
        return NULL;
    }
    table_put(h, g);
    h->n_groups++;
    active_add(g);
    *err = MR_OK;
    return g;
}

static void group_free_mem(mr_group_t *g)
{
    free(g->pending);
    free(g->reads);
    msgq_free(g->held);
    free(g->held);
    free(g);
}

/* A closed group is freed once nothing refers to it any more. */
static void group_maybe_free(mr_group_t *g)
{
    if (g->closed && !g->dirty && g->seal_refs == 0 && !g->busy)
        group_free_mem(g);
}

static void group_close(mr_group_t *g, bool destroy)
{
    if (g == NULL || g->closed)
        return;
    mr_host_t *h = g->host;
    if (destroy) {
        g->pend_from = 0;
        rlog_destroy(h->store, g->id);
    } else {
        group_flush_log(g); /* what raft appended is written as it would have been */
    }
    table_remove(h, g);
    h->n_groups--;
    if (!g->hibernating)
        active_remove(g);
    g->closed = true;
    pending_fail_all(g, MR_ECLOSED);
    reads_fail_unanswered(g, MR_ECLOSED);
    if (g->reads != NULL) /* answered but not yet served */
        for (size_t i = 0; i < g->reads->n; i++)
            if (g->ops->read_ready != NULL)
                g->ops->read_ready(g, g->reads->items[i].ctx, MR_ECLOSED);
    deferred_fail_all(g);
    mr_snapshot_drop(g);
    raft_free(&g->raft);
    host_timer_update(h);
    group_maybe_free(g);
}

void mr_group_close(mr_group_t *g) { group_close(g, false); }
void mr_group_destroy(mr_group_t *g) { group_close(g, true); }

int mr_propose(mr_group_t *g, const void *data, size_t len, mr_done_cb done, void *arg)
{
    if (g->closed || g->host->closing)
        return MR_ECLOSED;
    if (len > UINT32_MAX || (len > 0 && data == NULL))
        return MR_EINVAL;
    if (g->busy)
        return g->raft.role == RAFT_LEADER ? group_defer(g, DEFER_PROPOSE, data, len, done, arg)
                                           : MR_ENOTLEADER;
    return group_propose_now(g, data, len, done, arg);
}

int mr_conf_change(mr_group_t *g, enum raft_conf_op op, raft_id node, mr_done_cb done, void *arg)
{
    if (g->closed || g->host->closing)
        return MR_ECLOSED;
    if (node == 0)
        return MR_EINVAL;
    if (g->busy) {
        int rc = group_defer(g, DEFER_CONF, NULL, 0, done, arg);
        if (rc == MR_OK)
            g->deferred_tail->op = op, g->deferred_tail->node = node;
        return rc;
    }
    return group_conf_now(g, op, node, done, arg);
}

int mr_transfer(mr_group_t *g, raft_id node)
{
    if (g->closed || g->host->closing)
        return MR_ECLOSED;
    if (g->busy) {
        int rc = group_defer(g, DEFER_TRANSFER, NULL, 0, NULL, NULL);
        if (rc == MR_OK)
            g->deferred_tail->node = node;
        return rc;
    }
    return group_transfer_now(g, node);
}

int mr_campaign(mr_group_t *g)
{
    if (g->closed || g->host->closing)
        return MR_ECLOSED;
    if (g->busy)
        return group_defer(g, DEFER_CAMPAIGN, NULL, 0, NULL, NULL);
    return group_campaign_now(g);
}

void mr_group_set_snapshot_threshold(mr_group_t *g, unsigned entries)
{
    g->raft.cfg.snapshot_threshold = entries;
}

int mr_read_index(mr_group_t *g, uint64_t ctx)
{
    if (g->closed || g->host->closing)
        return MR_ECLOSED;
    if (g->busy) {
        int rc = group_defer(g, DEFER_READ, NULL, 0, NULL, NULL);
        if (rc == MR_OK)
            g->deferred_tail->ctx = ctx;
        return rc;
    }
    return group_read_now(g, ctx);
}

uint64_t mr_group_id(const mr_group_t *g) { return g->id; }
void *mr_group_user(const mr_group_t *g) { return g->user; }
mr_host_t *mr_group_host(const mr_group_t *g) { return g->host; }
enum raft_role mr_group_role(const mr_group_t *g) { return g->raft.role; }
raft_id mr_group_leader(const mr_group_t *g) { return g->raft.leader; }
raft_index mr_group_applied(const mr_group_t *g) { return g->applied; }
bool mr_group_hibernating(const mr_group_t *g) { return g->hibernating; }
const struct raft *mr_group_raft(const mr_group_t *g) { return &g->raft; }

size_t mr_group_memory(const mr_group_t *g)
{
    const struct raft *r = &g->raft;
    size_t bytes = sizeof *g + 2 * sizeof(mr_group_t *); /* + its share of the id table */
    bytes += r->log_cap * sizeof *r->log + r->cap_out * sizeof *r->out_msgs;
    for (size_t i = 0; i < r->log_len; i++)
        bytes += r->log[i].len;
    if (g->pending != NULL)
        bytes += sizeof *g->pending + g->pending->cap * sizeof g->pending->items[0];
    if (g->reads != NULL)
        bytes += sizeof *g->reads + g->reads->cap * sizeof g->reads->items[0];
    return bytes + msgq_memory(g->held);
}

/* ---- public: host ------------------------------------------------------------------------ */

static void host_config_defaults(struct mr_host_config *c)
{
    if (c->tick_seconds <= 0)
        c->tick_seconds = 0.1;
    if (c->election_ticks == 0)
        c->election_ticks = 10;
    if (c->heartbeat_ticks == 0)
        c->heartbeat_ticks = 2;
    if (c->hibernate_ticks == 0)
        c->hibernate_ticks = 2 * c->heartbeat_ticks + 1;
    if (c->hibernate_ticks >= c->election_ticks)
        c->hibernate_ticks = c->election_ticks > 1 ? c->election_ticks - 1 : 1;
    if (c->max_inflight == 0)
        c->max_inflight = RAFT_MAX_INFLIGHT;
    if (c->max_batch == 0)
        c->max_batch = 256;
}

mr_host_t *mr_host_new(struct ev_loop *loop, store_t *store, const struct mr_host_config *cfg,
                       const struct mr_transport *transport)
{
    if (loop == NULL || store == NULL || cfg == NULL || cfg->node_id == 0 ||
        transport == NULL || transport->send == NULL)
        return NULL;
    mr_host_t *h = calloc(1, sizeof *h);
    if (h == NULL)
        return NULL;
    h->loop = loop;
    h->store = store;
    h->cfg = *cfg;
    host_config_defaults(&h->cfg);
    h->transport = *transport;

    ev_init(&h->tick_timer, host_on_tick);
    h->tick_timer.repeat = h->cfg.tick_seconds;
    h->tick_timer.data = h;
    /* Default priority: runs before the store's EV_MINPRI prepare, which submits the batch. */
    ev_prepare_init(&h->prepare, host_on_prepare);
    h->prepare.data = h;
    ev_prepare_start(loop, &h->prepare);
    ev_unref(loop); /* the host alone must not keep the loop alive */
    return h;
}

void mr_host_free(mr_host_t *h)
{
    if (h == NULL)
        return;
    /* Every write made so far becomes durable and every seal callback runs (doing nothing but
     * bookkeeping now that closing is set), so no store callback outlives the host. */
    h->closing = true;
    for (mr_group_t *g = h->dirty; g != NULL; g = g->dirty_next)
        if (!g->closed)
            group_flush_log(g); /* entries appended since the last seal: written now */
    store_flush_sync(h->store);
    if (h->seals_outstanding != 0)
        log_error("multiraft: %zu seal callbacks outstanding at host free",
                  h->seals_outstanding);
    /* The dirty list dies with the host (closed groups on it are freed now). */
    mr_group_t *next;
    for (mr_group_t *g = h->dirty; g != NULL; g = next) {
        next = g->dirty_next;
        g->dirty = false;
        g->dirty_next = NULL;
        group_maybe_free(g);
    }
    h->dirty = NULL;
    h->n_dirty = 0;
    /* Collected first: closing removes from the table, which shifts its entries. */
    mr_group_t **groups = mr_xrealloc(NULL, (h->n_groups + 1) * sizeof *groups);
    size_t n = 0;
    for (size_t i = 0; i < h->table_cap; i++)
        if (h->table[i] != NULL)
            groups[n++] = h->table[i];
    for (size_t i = 0; i < n; i++)
        group_close(groups[i], false);
    free(groups);
    ev_timer_stop(h->loop, &h->tick_timer);
    ev_ref(h->loop);
    ev_prepare_stop(h->loop, &h->prepare);
    for (size_t i = 0; i < h->n_peers; i++)
        msgq_free(&h->peers[i].outbox);
    free(h->peers);
    free(h->out_scratch);
    free(h->ent_scratch);
    free(h->table);
    free(h);
}

/* Would stepping m make raft replace the log and state with m's snapshot? (follower_snapshot) */
static bool snapshot_would_install(const mr_group_t *g, const struct raft_msg *m)
{
    const struct raft *r = &g->raft;
    return m->type == RAFT_MSG_SNAPSHOT && m->snap != NULL && m->snap->index > 0 && m->term >= r->term &&
           m->snap->index > r->commit && raft_term_at(r, m->snap->index) != m->snap->term;
}

/* The state machine's say on a snapshot that would be installed: true if it was kept or dropped. */
static bool snapshot_held_back(mr_group_t *g, const struct raft_msg *m)
{
    if (g->ops->snapshot_arriving == NULL || !snapshot_would_install(g, m))
        return false;
    int verdict = g->ops->snapshot_arriving(g, m->from, m->snap->index, m->data, m->data_len);
    if (verdict == MR_SNAP_INSTALL)
        return false;
    if (verdict == MR_SNAP_LATER) {
        mr_snapshot_drop(g);
        struct mr_kept_snap *k = mr_xrealloc(NULL, sizeof *k);
        k->msg = *m;
        k->meta = *m->snap;
        k->data = mr_xrealloc(NULL, m->data_len ? m->data_len : 1);
        if (m->data_len)
            memcpy(k->data, m->data, m->data_len);
        k->msg.snap = &k->meta;
        k->msg.data = k->data;
        k->msg.entries = NULL;
        k->msg.n_entries = 0;
        g->kept_snap = k;
    }
    return true;
}

void mr_snapshot_drop(mr_group_t *g)
{
    if (g->kept_snap == NULL)
        return;
    free(g->kept_snap->data);
    free(g->kept_snap);
    g->kept_snap = NULL;
}

bool mr_snapshot_resume(mr_group_t *g)
{
    struct mr_kept_snap *k = g->kept_snap;
    if (k == NULL || g->closed || g->busy || g->host->closing)
        return false;
    g->kept_snap = NULL;
    group_wake(g);
    struct raft_event ev = {.type = RAFT_EV_RECEIVE};
    ev.u.msg = &k->msg;
    group_step(g, &ev, &k->msg, NULL, NULL);
    free(k->data);
    free(k);
    return true;
}

void mr_host_receive(mr_host_t *h, raft_id from, uint64_t group_id, const struct raft_msg *msg)
{
    (void)from; /* msg->from names the sender within the group */
    if (h->closing)
        return;
    mr_group_t *g = table_find(h, group_id);
    if (g == NULL || g->busy)
        return;
    group_wake(g);
    if (snapshot_held_back(g, msg))
        return;
    struct raft_event ev = {.type = RAFT_EV_RECEIVE};
    ev.u.msg = msg;
    group_step(g, &ev, msg, NULL, NULL);
}

void mr_host_peer_down(mr_host_t *h, raft_id node)
{
    peer_get(h, node)->down = true;
    for (size_t i = 0; i < h->table_cap; i++) {
        mr_group_t *g = h->table[i];
        if (g == NULL || g->raft.leader != node)
            continue;
        if (g->hibernating)
            group_wake(g);
        if (!g->busy && !g->closed) { /* elect a successor now, not after an election timeout */
            struct raft_event ev = {.type = RAFT_EV_PEER_DOWN};
            ev.u.peer.id = node;
            group_step(g, &ev, NULL, NULL, NULL);
        }
    }
}

void mr_host_peer_up(mr_host_t *h, raft_id node)
{
    peer_get(h, node)->down = false;
}

void mr_host_get_stats(const mr_host_t *h, struct mr_host_stats *out)
{
    *out = h->stats;
    out->groups = h->n_groups;
    out->active_groups = h->n_active;
}

raft_id mr_host_node_id(const mr_host_t *h) { return h->cfg.node_id; }
mr_group_t *mr_host_group(mr_host_t *h, uint64_t group_id) { return table_find(h, group_id); }

int mr_host_stored_groups(mr_host_t *h, uint64_t **ids, size_t *n)
{
    return rlog_list_groups(h->store, ids, n);
}

/* ---- loopback transport ------------------------------------------------------------------ */

/* One send call's messages, deep-copied into a single allocation (reused: see lb_alloc). */
struct lb_batch {
    struct lb_batch *next;
    raft_id from, to;
    size_t n;
    size_t cap;             /* bytes of the allocation */
    struct mr_outmsg *msgs; /* points into the same allocation */
};

#define LB_SPARES 8 /* delivered batches kept for reuse: no mmap/munmap per send */

struct lb_endpoint {
    mr_loopback_t *lb;
    raft_id node;
    mr_host_t *host;
};

struct mr_loopback {
    struct ev_loop *loop;
    ev_check deliver;
    ev_idle keep_awake; /* active while batches wait: the loop must not block */
    struct lb_endpoint ep[MR_LOOPBACK_MAX_NODES];
    bool cut[MR_LOOPBACK_MAX_NODES][MR_LOOPBACK_MAX_NODES];
    struct lb_batch *head, *tail;
    struct lb_batch *spare; /* free list, at most LB_SPARES long */
    unsigned n_spare;
    uint64_t delivered;
};

static size_t lb_align(size_t n) { return (n + MR_ALIGN - 1) & ~(size_t)(MR_ALIGN - 1); }

static size_t lb_batch_size(const struct mr_outmsg *msgs, size_t n)
{
    size_t size = lb_align(sizeof(struct lb_batch)) + lb_align(n * sizeof(struct mr_outmsg)) +
                  lb_align(n * sizeof(struct raft_msg));
    for (size_t i = 0; i < n; i++) {
        const struct raft_msg *m = msgs[i].msg;
        size += lb_align(m->n_entries * sizeof(struct raft_entry));
        for (uint32_t e = 0; e < m->n_entries; e++)
            size += lb_align(m->entries[e].len);
        if (m->snap != NULL)
            size += lb_align(sizeof *m->snap);
        size += lb_align(m->data_len);
    }
    return size;
}

/* Copies len bytes to *cursor and advances it. */
static void *lb_copy(uint8_t **cursor, const void *src, size_t len)
{
    void *dst = *cursor;
    if (len > 0)
        memcpy(dst, src, len);
    *cursor += lb_align(len);
    return dst;
}

/* A buffer of at least size bytes: a spare one that is big enough, else a new one. */
static struct lb_batch *lb_alloc(mr_loopback_t *lb, size_t size)
{
    for (struct lb_batch **p = &lb->spare; *p != NULL; p = &(*p)->next) {
        if ((*p)->cap >= size) {
            struct lb_batch *b = *p;
            *p = b->next;
            lb->n_spare--;
            return b;
        }
    }
    struct lb_batch *b = mr_xrealloc(NULL, size);
    b->cap = size;
    return b;
}

/* Keeps a delivered buffer for reuse, replacing the smallest spare when the list is full. */
static void lb_release(mr_loopback_t *lb, struct lb_batch *b)
{
    if (lb->n_spare == LB_SPARES) {
        struct lb_batch **smallest = &lb->spare;
        for (struct lb_batch **p = &lb->spare; *p != NULL; p = &(*p)->next)
            if ((*p)->cap < (*smallest)->cap)
                smallest = p;
        if ((*smallest)->cap >= b->cap) {
            free(b);
            return;
        }
        struct lb_batch *drop = *smallest;
        *smallest = drop->next;
        free(drop);
        lb->n_spare--;
    }
    b->next = lb->spare;
    lb->spare = b;
    lb->n_spare++;
}

static struct lb_batch *lb_batch_copy(mr_loopback_t *lb, const struct mr_outmsg *msgs, size_t n)
{
    struct lb_batch *b = lb_alloc(lb, lb_batch_size(msgs, n));
    uint8_t *mem = (uint8_t *)b;
    uint8_t *cur = mem + lb_align(sizeof *b);
    b->n = n;
    b->next = NULL;
    b->msgs = (struct mr_outmsg *)cur;
    cur += lb_align(n * sizeof(struct mr_outmsg));
    struct raft_msg *copies = (struct raft_msg *)cur;
    cur += lb_align(n * sizeof(struct raft_msg));
    for (size_t i = 0; i < n; i++) {
        const struct raft_msg *m = msgs[i].msg;
        struct raft_msg *c = &copies[i];
        *c = *m;
        struct raft_entry *ents = lb_copy(&cur, m->entries, m->n_entries * sizeof *ents);
        for (uint32_t e = 0; e < m->n_entries; e++)
            ents[e].data = m->entries[e].len > 0 ? lb_copy(&cur, m->entries[e].data,
                                                           m->entries[e].len)
                                                 : NULL;
        c->entries = m->n_entries > 0 ? ents : NULL;
        c->snap = m->snap != NULL ? lb_copy(&cur, m->snap, sizeof *m->snap) : NULL;
        c->data = m->data_len > 0 ? lb_copy(&cur, m->data, m->data_len) : NULL;
        b->msgs[i] = (struct mr_outmsg){msgs[i].group_id, c};
    }
    return b;
}

static void lb_send(void *ctx, raft_id node, const struct mr_outmsg *msgs, size_t n)
{
    struct lb_endpoint *ep = ctx;
    mr_loopback_t *lb = ep->lb;
    if (node == 0 || node >= MR_LOOPBACK_MAX_NODES || lb->cut[ep->node][node] || n == 0)
        return;
    struct lb_batch *b = lb_batch_copy(lb, msgs, n);
    b->from = ep->node;
    b->to = node;
    if (lb->tail != NULL)
        lb->tail->next = b;
    else
        lb->head = b;
    lb->tail = b;
    if (!ev_is_active(&lb->keep_awake))
        ev_idle_start(lb->loop, &lb->keep_awake);
}

static void lb_on_idle(struct ev_loop *loop, ev_idle *w, int revents)
{
    (void)loop;
    (void)w;
    (void)revents; /* only keeps the loop from blocking; delivery is in lb_on_check */
}

/* Delivers the batches queued before this call; batches sent meanwhile wait for the next. */
static void lb_on_check(struct ev_loop *loop, ev_check *w, int revents)
{
    (void)revents;
    mr_loopback_t *lb = w->data;
    struct lb_batch *b = lb->head;
    lb->head = lb->tail = NULL;
    while (b != NULL) {
        struct lb_batch *next = b->next;
        mr_host_t *host = lb->ep[b->to].host;
        bool link_up = !lb->cut[b->from][b->to];
        for (size_t i = 0; host != NULL && link_up && i < b->n; i++) {
            mr_host_receive(host, b->from, b->msgs[i].group_id, b->msgs[i].msg);
            lb->delivered++;
        }
        lb_release(lb, b);
        b = next;
    }
    if (lb->head == NULL && ev_is_active(&lb->keep_awake))
        ev_idle_stop(loop, &lb->keep_awake);
}

mr_loopback_t *mr_loopback_new(struct ev_loop *loop)
{
    mr_loopback_t *lb = calloc(1, sizeof *lb);
    if (lb == NULL)
        return NULL;
    lb->loop = loop;
    for (raft_id i = 0; i < MR_LOOPBACK_MAX_NODES; i++)
        lb->ep[i] = (struct lb_endpoint){lb, i, NULL};
    ev_check_init(&lb->deliver, lb_on_check);
    lb->deliver.data = lb;
    ev_check_start(loop, &lb->deliver);
    ev_unref(loop);
    ev_idle_init(&lb->keep_awake, lb_on_idle);
    return lb;
}

void mr_loopback_free(mr_loopback_t *lb)
{
    if (lb == NULL)
        return;
    ev_ref(lb->loop);
    ev_check_stop(lb->loop, &lb->deliver);
    ev_idle_stop(lb->loop, &lb->keep_awake);
    while (lb->head != NULL) {
        struct lb_batch *next = lb->head->next;
        free(lb->head);
        lb->head = next;
    }
    while (lb->spare != NULL) {
        struct lb_batch *next = lb->spare->next;
        free(lb->spare);
        lb->spare = next;
    }
    free(lb);
}

struct mr_transport mr_loopback_transport(mr_loopback_t *lb, raft_id node)
{
    struct mr_transport t = {NULL, NULL}; /* a bad node id: mr_host_new refuses it */
    if (node > 0 && node < MR_LOOPBACK_MAX_NODES)
        t = (struct mr_transport){lb_send, &lb->ep[node]};
    return t;
}

void mr_loopback_attach(mr_loopback_t *lb, raft_id node, mr_host_t *host)
{
    if (node > 0 && node < MR_LOOPBACK_MAX_NODES)
        lb->ep[node].host = host;
}

void mr_loopback_detach(mr_loopback_t *lb, raft_id node) { mr_loopback_attach(lb, node, NULL); }

void mr_loopback_set_link(mr_loopback_t *lb, raft_id from, raft_id to, bool up)
{
    if (from < MR_LOOPBACK_MAX_NODES && to < MR_LOOPBACK_MAX_NODES)
        lb->cut[from][to] = !up;
}

uint64_t mr_loopback_delivered(const mr_loopback_t *lb) { return lb->delivered; }
