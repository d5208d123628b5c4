/* raft.c - Raft core: election (pre-vote, check-quorum), replication (pipelined, batched,
 * conflict hints), commit by quorum of current-term entries, single-server membership changes
 * with learners, snapshots and log compaction, leadership transfer, read-index, hibernation.
 * No I/O; raft.h is the contract with the caller, docs/raft.md explains the protocol.
 *
 * Invariants kept here (the simulator in tests/sim/ checks the observable ones):
 *  - log[0..log_len) holds indexes log_offset+1..; log_offset <= snap.index <= applied <= commit
 *    (a snapshot only covers applied entries, compaction keeps cfg.trailing entries below it),
 *    and applied <= persisted except right after installing a snapshot (persisted then catches
 *    up when the snapshot write is reported PERSISTED).
 *  - conf is the configuration of the last RAFT_ENTRY_CONF entry in the log, else the snapshot's,
 *    else the bootstrap peers; conf_index says which. It changes when an entry is appended or
 *    truncated, never on commit. At most one CONF entry is uncommitted (conf_index <= commit
 *    before a leader appends another), and a leader appends one only after committing an entry
 *    of its own term (the single-server change bug in Ongaro's dissertation, 2015 erratum).
 *  - Leader only: prs[] has exactly one entry per member of conf; it, the in-flight rings,
 *    pending reads, a transfer and a pending promotion are dropped on stepping down.
 *  - Entries are acknowledged (followers) and counted (leader, for itself) only once PERSISTED.
 *  - Only voters of this node's conf start elections and count in any quorum (votes, commit,
 *    check-quorum, read-index); the leader counts itself only when it is a voter.
 *
 * Planted bug for the simulator (never in production builds): -DRAFT_BUG_COMMIT_OLD_TERM makes the
 * leader commit any entry stored on a quorum, including entries of older terms (Raft paper
 * Figure 8). tests/sim/raft_buggy.c compiles this file a second time with it set. */
#include "raft/raft.h"

#include <stdlib.h>
#include <string.h>

/* A read-index request waiting for a quorum: round 0 until the leader has committed an entry of
 * its term (index is then the commit index and round the heartbeat round that must be answered). */
struct raft_pending_read {
    uint64_t ctx;
    raft_index index;
    uint64_t round;
};

/* ---- helpers ---------------------------------------------------------------------------- */

static uint64_t rng_next(uint64_t *s) { /* splitmix64 */
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

raft_index raft_last_index(const struct raft *r) { return r->log_offset + r->log_len; }

raft_term raft_term_at(const struct raft *r, raft_index i) {
    if (i == r->log_offset) return r->offset_term;
    if (i < r->log_offset || i > raft_last_index(r)) return 0;
    return r->log[i - r->log_offset - 1].term;
}

const struct raft_entry *raft_entry_at(const struct raft *r, raft_index i) {
    if (i <= r->log_offset || i > raft_last_index(r)) return NULL;
    return &r->log[i - r->log_offset - 1];
}

static raft_term last_term(const struct raft *r) { return raft_term_at(r, raft_last_index(r)); }

const char *raft_role_name(enum raft_role role) {
    switch (role) {
    case RAFT_FOLLOWER: return "follower";
    case RAFT_PRE_CANDIDATE: return "pre-candidate";
    case RAFT_CANDIDATE: return "candidate";
    case RAFT_LEADER: return "leader";
    }
    return "?";
}

const char *raft_msg_name(uint32_t type) {
    static const char *names[] = {"?",        "append",       "append-resp", "heartbeat",
                                  "heartbeat-resp", "vote",   "vote-resp",   "prevote",
                                  "prevote-resp",   "snapshot", "timeout-now"};
    return type < sizeof names / sizeof names[0] ? names[type] : "?";
}

static unsigned popcount32(uint32_t x) {
    unsigned n = 0;
    for (; x; x &= x - 1) n++;
    return n;
}

/* ---- configuration ---------------------------------------------------------------------- */

static void put_u32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v, p[1] = (uint8_t)(v >> 8), p[2] = (uint8_t)(v >> 16), p[3] = (uint8_t)(v >> 24);
}

static uint32_t get_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

size_t raft_conf_encode(const struct raft_conf *c, uint8_t buf[RAFT_CONF_MAX_ENCODED]) {
    size_t n = 0;
    put_u32(buf + n, c->n_voters), n += 4;
    put_u32(buf + n, c->n_learners), n += 4;
    for (unsigned i = 0; i < c->n_voters; i++) put_u32(buf + n, c->voters[i]), n += 4;
    for (unsigned i = 0; i < c->n_learners; i++) put_u32(buf + n, c->learners[i]), n += 4;
    return n;
}

int raft_conf_decode(struct raft_conf *c, const void *buf, size_t len) {
    const uint8_t *p = buf;
    if (len < 8) return RAFT_EINVAL;
    uint32_t nv = get_u32(p), nl = get_u32(p + 4);
    if (nv > RAFT_MAX_NODES || nl > RAFT_MAX_NODES || nv + nl > RAFT_MAX_NODES ||
        len != 8 + 4 * (size_t)(nv + nl))
        return RAFT_EINVAL;
    memset(c, 0, sizeof *c);
    c->n_voters = nv;
    c->n_learners = nl;
    for (uint32_t i = 0; i < nv; i++) c->voters[i] = get_u32(p + 8 + 4 * i);
    for (uint32_t i = 0; i < nl; i++) c->learners[i] = get_u32(p + 8 + 4 * (nv + i));
    for (uint32_t i = 0; i < nv + nl; i++) { /* ids non-zero and unique */
        raft_id id = i < nv ? c->voters[i] : c->learners[i - nv];
        if (!id) return RAFT_EINVAL;
        for (uint32_t j = 0; j < i; j++)
            if ((j < nv ? c->voters[j] : c->learners[j - nv]) == id) return RAFT_EINVAL;
    }
    return RAFT_OK;
}

static int voter_pos(const struct raft_conf *c, raft_id id) {
    for (unsigned i = 0; i < c->n_voters; i++)
        if (c->voters[i] == id) return (int)i;
    return -1;
}

static int learner_pos(const struct raft_conf *c, raft_id id) {
    for (unsigned i = 0; i < c->n_learners; i++)
        if (c->learners[i] == id) return (int)i;
    return -1;
}

bool raft_conf_is_voter(const struct raft_conf *c, raft_id id) { return voter_pos(c, id) >= 0; }

bool raft_conf_has(const struct raft_conf *c, raft_id id) {
    return voter_pos(c, id) >= 0 || learner_pos(c, id) >= 0;
}

static raft_id conf_member(const struct raft_conf *c, unsigned i) { /* voters, then learners */
    return i < c->n_voters ? c->voters[i] : c->learners[i - c->n_voters];
}

const struct raft_conf *raft_get_conf(const struct raft *r) { return &r->conf; }

static bool self_voter(const struct raft *r) { return raft_conf_is_voter(&r->conf, r->cfg.id); }

static unsigned quorum(const struct raft *r) { return r->conf.n_voters / 2 + 1; }

static void bootstrap_conf(const struct raft *r, struct raft_conf *c) {
    memset(c, 0, sizeof *c);
    for (unsigned i = 0; i < r->cfg.n_peers; i++) c->voters[c->n_voters++] = r->cfg.peers[i];
}

/* The configuration in force at index i (i >= snap.index) from the log alone: the last CONF entry
 * at or before i, else the snapshot's, else the bootstrap peers. Returns where it comes from. */
static raft_index conf_scan(const struct raft *r, raft_index i, struct raft_conf *c) {
    raft_index low = r->snap.index > r->log_offset ? r->snap.index : r->log_offset;
    for (; i > low; i--) {
        const struct raft_entry *e = raft_entry_at(r, i);
        if (e && e->type == RAFT_ENTRY_CONF && raft_conf_decode(c, e->data, e->len) == RAFT_OK) return i;
    }
    if (r->snap.index) {
        *c = r->snap.conf;
        return r->snap.index;
    }
    bootstrap_conf(r, c);
    return 0;
}

static raft_index conf_at(const struct raft *r, raft_index i, struct raft_conf *c) {
    if (r->conf_index <= i) { /* nothing changed it after conf_index */
        *c = r->conf;
        return r->conf_index;
    }
    return conf_scan(r, i, c);
}

/* ---- output ----------------------------------------------------------------------------- */

static void reset_election_timeout(struct raft *r) {
    r->election_elapsed = 0;
    r->election_timeout = r->cfg.election_ticks + (unsigned)(rng_next(&r->rng) % r->cfg.election_ticks);
}

static struct raft_msg *new_msg(struct raft *r, uint32_t type, raft_id to) {
    if (r->n_out == r->cap_out) {
        size_t cap = r->cap_out ? r->cap_out * 2 : 2; /* small: most groups are quiet */
        struct raft_msg *m = realloc(r->out_msgs, cap * sizeof *m);
        if (!m) return NULL;
        r->out_msgs = m;
        r->cap_out = cap;
    }
    struct raft_msg *m = &r->out_msgs[r->n_out++];
    memset(m, 0, sizeof *m);
    m->type = type;
    m->from = r->cfg.id;
    m->to = to;
    m->term = r->term;
    return m;
}

/* ---- leader progress -------------------------------------------------------------------- */

static struct raft_progress *progress(struct raft *r, raft_id id) {
    for (unsigned i = 0; i < r->n_prs; i++)
        if (r->prs[i].id == id) return &r->prs[i];
    return NULL;
}

static void free_progress(struct raft *r) {
    for (unsigned i = 0; i < r->n_prs; i++) free(r->prs[i].infl);
    free(r->prs);
    r->prs = NULL;
    r->n_prs = 0;
}

static void progress_init(struct raft *r, struct raft_progress *pr, raft_id id) {
    memset(pr, 0, sizeof *pr);
    pr->id = id;
    pr->next = raft_last_index(r) + 1;
    pr->recent_active = true; /* a new member gets one check-quorum period to answer */
}

/* Make prs[] hold exactly the members of conf, keeping the state of those already tracked. On
 * failure nothing changes. */
static int sync_progress(struct raft *r) {
    unsigned n = r->conf.n_voters + r->conf.n_learners;
    struct raft_progress *np = calloc(n ? n : 1, sizeof *np);
    if (!np) return RAFT_ENOMEM;
    for (unsigned i = 0; i < n; i++) {
        raft_id id = conf_member(&r->conf, i);
        struct raft_progress *old = progress(r, id);
        if (old) {
            np[i] = *old;
            continue;
        }
        progress_init(r, &np[i], id);
        if (id != r->cfg.id && !(np[i].infl = malloc(r->cfg.max_inflight * sizeof(raft_index)))) {
            for (unsigned j = 0; j <= i; j++)
                if (!progress(r, np[j].id)) free(np[j].infl);
            free(np);
            return RAFT_ENOMEM;
        }
    }
    for (unsigned i = 0; i < r->n_prs; i++) /* rings of members that stay moved to np */
        if (!raft_conf_has(&r->conf, r->prs[i].id)) free(r->prs[i].infl);
    free(r->prs);
    r->prs = np;
    r->n_prs = n;
    return RAFT_OK;
}

/* ---- log -------------------------------------------------------------------------------- */

static int log_reserve(struct raft *r, size_t n) {
    if (r->log_len + n <= r->log_cap) return RAFT_OK;
    size_t cap = r->log_cap ? r->log_cap : 8;
    while (cap < r->log_len + n) cap *= 2;
    struct raft_entry *l = realloc(r->log, cap * sizeof *l);
    if (!l) return RAFT_ENOMEM;
    r->log = l;
    r->log_cap = cap;
    return RAFT_OK;
}

/* Give memory back once the log has shrunk well below its capacity (compaction of an idle
 * group), so thousands of quiet groups do not each keep their busiest log size. */
static void log_shrink(struct raft *r) {
    if (r->log_cap <= 8 || r->log_len * 4 > r->log_cap) return;
    size_t cap = r->log_len * 2 > 8 ? r->log_len * 2 : 8;
    struct raft_entry *l = realloc(r->log, cap * sizeof *l);
    if (!l) return; /* keeping the larger block is fine */
    r->log = l;
    r->log_cap = cap;
}

static void mark_dirty(struct raft *r, raft_index i) {
    if (r->dirty_from == 0 || i < r->dirty_from) r->dirty_from = i;
}

static void become_follower(struct raft *r, raft_term term, raft_id leader);

/* A new configuration is in force from now on (appended, truncated or installed). */
static void set_conf(struct raft *r, const struct raft_conf *c, raft_index from) {
    r->conf = *c;
    r->conf_index = from;
    r->conf_dirty = true;
    if (r->role == RAFT_LEADER && sync_progress(r) != RAFT_OK)
        become_follower(r, r->term, 0); /* cannot track the members: let someone else lead */
}

/* Append one entry without looking at it (restore uses this directly). */
static int log_push(struct raft *r, raft_term term, uint32_t type, const void *data, uint32_t len) {
    if (log_reserve(r, 1)) return RAFT_ENOMEM;
    struct raft_entry *e = &r->log[r->log_len];
    e->term = term;
    e->type = type;
    e->len = len;
    e->data = NULL;
    if (len) {
        if (!(e->data = malloc(len))) return RAFT_ENOMEM;
        memcpy(e->data, data, len);
    }
    r->log_len++;
    return RAFT_OK;
}

/* Append an entry; a configuration takes effect as soon as it is in the log. */
static int log_append(struct raft *r, raft_term term, uint32_t type, const void *data, uint32_t len) {
    if (log_push(r, term, type, data, len)) return RAFT_ENOMEM;
    raft_index idx = raft_last_index(r);
    mark_dirty(r, idx);
    struct raft_conf c;
    if (type == RAFT_ENTRY_CONF && raft_conf_decode(&c, data, len) == RAFT_OK) set_conf(r, &c, idx);
    return RAFT_OK;
}

/* Drop entries at index >= from (never committed ones: from > commit). A configuration that came
 * from a dropped entry is replaced by the one in force before it. */
static void log_truncate(struct raft *r, raft_index from) {
    while (raft_last_index(r) >= from && r->log_len > 0) {
        r->log_len--;
        free(r->log[r->log_len].data);
        r->log[r->log_len].data = NULL;
    }
    if (r->persisted >= from) r->persisted = from - 1;
    if (r->ack_pending >= from) r->ack_pending = from - 1;
    mark_dirty(r, from);
    if (r->conf_index >= from) {
        struct raft_conf c;
        raft_index ci = conf_scan(r, from - 1, &c);
        set_conf(r, &c, ci);
    }
}

/* Forget entries at index <= upto (covered by a snapshot; upto <= applied). */
static void log_compact(struct raft *r, raft_index upto) {
    if (upto <= r->log_offset) return;
    size_t n = (size_t)(upto - r->log_offset);
    raft_term t = raft_term_at(r, upto);
    for (size_t i = 0; i < n; i++) free(r->log[i].data);
    memmove(r->log, r->log + n, (r->log_len - n) * sizeof *r->log);
    r->log_len -= n;
    r->log_offset = upto;
    r->offset_term = t;
    r->compacted = upto;
    log_shrink(r);
}

static void log_discard(struct raft *r) {
    for (size_t i = 0; i < r->log_len; i++) free(r->log[i].data);
    r->log_len = 0;
    log_shrink(r);
}

/* ---- roles ------------------------------------------------------------------------------ */

static void set_term(struct raft *r, raft_term term) {
    if (term != r->term) {
        r->term = term;
        r->vote = 0;
        r->hs_dirty = true;
    }
}

/* Leader-only state does not survive leadership. Pending reads are dropped: the caller retries
 * them on the new leader (they were never answered, so no read is lost or served twice). */
static void leave_leadership(struct raft *r) {
    free_progress(r);
    r->transfer_to = 0;
    r->promote_id = 0;
    r->n_reads = 0;
    r->round_wanted = false;
}

static void to_follower(struct raft *r, raft_term term, raft_id leader, bool restart_timer) {
    if (r->role == RAFT_LEADER) leave_leadership(r);
    set_term(r, term);
    if (r->role != RAFT_FOLLOWER || r->leader != leader) r->role_dirty = true;
    r->role = RAFT_FOLLOWER;
    r->leader = leader;
    r->ack_pending = 0;
    if (restart_timer) reset_election_timeout(r);
}

static void become_follower(struct raft *r, raft_term term, raft_id leader) {
    to_follower(r, term, leader, true);
}

static void send_append(struct raft *r, struct raft_progress *pr);
static void bcast_append(struct raft *r);
static void maybe_commit(struct raft *r);

static void become_leader(struct raft *r) {
    r->role = RAFT_LEADER;
    r->lease_expired = false;
    r->leader = r->cfg.id;
    r->role_dirty = true;
    r->heartbeat_elapsed = 0;
    r->election_elapsed = 0;
    free_progress(r);
    if (sync_progress(r) != RAFT_OK) {
        become_follower(r, r->term, 0);
        return;
    }
    log_append(r, r->term, RAFT_ENTRY_NOOP, NULL, 0);
    bcast_append(r);
    maybe_commit(r); /* single node: nothing to wait for but our own disk */
}

static void send_votes(struct raft *r, bool pre, bool transfer) {
    for (unsigned i = 0; i < r->conf.n_voters; i++) {
        if (r->conf.voters[i] == r->cfg.id) continue;
        struct raft_msg *m = new_msg(r, pre ? RAFT_MSG_PREVOTE : RAFT_MSG_VOTE, r->conf.voters[i]);
        if (!m) return;
        if (pre) m->term = r->term + 1;
        m->index = raft_last_index(r);
        m->log_term = last_term(r);
        m->transfer = transfer;
    }
}

/* Voters of the latest configuration may start elections, learners never. A node that the latest
 * configuration removes may still be needed until the removal commits (Ongaro's dissertation,
 * section 4.2.2): its log may be the only up-to-date one the remaining voters would accept, so
 * without it they could never elect anyone (the simulator found that deadlock). It campaigns, among
 * the voters of its latest configuration and without counting its own vote, while that
 * configuration is not known committed and it was a voter of the one before (committed before the
 * latest was appended, one change at a time; its own commit index may lag behind both). */
static bool may_campaign(const struct raft *r) {
    if (self_voter(r)) return true;
    if (learner_pos(&r->conf, r->cfg.id) >= 0 || r->conf_index <= r->commit) return false;
    struct raft_conf c;
    conf_at(r, r->conf_index - 1, &c);
    return raft_conf_is_voter(&c, r->cfg.id);
}

enum campaign_kind { CAMPAIGN_PRE, CAMPAIGN_NORMAL, CAMPAIGN_TRANSFER };

static void campaign(struct raft *r, enum campaign_kind kind) {
    if (!may_campaign(r)) return;
    int self = voter_pos(&r->conf, r->cfg.id);
    r->votes_granted = self >= 0 ? 1u << self : 0; /* its own vote counts only if it is a voter */
    r->votes_rejected = 0;
    r->leader = 0;
    r->role_dirty = true;
    reset_election_timeout(r);
    if (kind == CAMPAIGN_PRE) {
        r->role = RAFT_PRE_CANDIDATE;
    } else {
        r->role = RAFT_CANDIDATE;
        set_term(r, r->term + 1);
        r->vote = r->cfg.id;
        r->hs_dirty = true;
    }
    if (popcount32(r->votes_granted) >= quorum(r)) {
        if (kind == CAMPAIGN_PRE) campaign(r, CAMPAIGN_NORMAL);
        else become_leader(r);
        return;
    }
    send_votes(r, kind == CAMPAIGN_PRE, kind == CAMPAIGN_TRANSFER);
}

/* ---- leader: replication ---------------------------------------------------------------- */

static void infl_add(struct raft *r, struct raft_progress *pr, raft_index last) {
    pr->infl[(pr->infl_head + pr->infl_count) % r->cfg.max_inflight] = last;
    pr->infl_count++;
}

static void infl_free_to(struct raft *r, struct raft_progress *pr, raft_index match) {
    while (pr->infl_count && pr->infl[pr->infl_head] <= match) {
        pr->infl_head = (pr->infl_head + 1) % r->cfg.max_inflight;
        pr->infl_count--;
    }
}

static void infl_free_first(struct raft *r, struct raft_progress *pr) {
    if (!pr->infl_count) return;
    pr->infl_head = (pr->infl_head + 1) % r->cfg.max_inflight;
    pr->infl_count--;
}

static void to_probe(struct raft_progress *pr, raft_index next) {
    pr->replicate = false;
    pr->paused = false;
    pr->pending_snap = 0;
    pr->stall = 0;
    pr->next = next;
    pr->infl_head = pr->infl_count = 0;
}

/* The entries it needs are compacted: send the latest snapshot's meta (the caller attaches the
 * bytes) and wait for its acknowledgement. */
static void send_snapshot(struct raft *r, struct raft_progress *pr) {
    struct raft_msg *m = new_msg(r, RAFT_MSG_SNAPSHOT, pr->id);
    if (!m) return;
    m->index = r->snap.index;
    m->log_term = r->snap.term;
    m->commit = r->commit;
    m->snap = &r->snap;
    to_probe(pr, r->snap.index + 1);
    pr->paused = true;
    pr->pending_snap = r->snap.index;
}

/* One AppendEntries from pr->next; returns the number of entries sent. */
static raft_index append_msg(struct raft *r, struct raft_progress *pr) {
    raft_index last = raft_last_index(r);
    raft_index n = pr->next <= last ? last - pr->next + 1 : 0;
    if (n > r->cfg.max_batch) n = r->cfg.max_batch;
    struct raft_msg *m = new_msg(r, RAFT_MSG_APPEND, pr->id);
    if (!m) return 0;
    m->index = pr->next - 1;
    m->log_term = raft_term_at(r, pr->next - 1);
    m->commit = r->commit;
    m->n_entries = (uint32_t)n; /* entries pointer resolved in finish() */
    return n;
}

static void send_append(struct raft *r, struct raft_progress *pr) {
    if (pr->id == r->cfg.id || pr->pending_snap) return;
    if (pr->next <= r->log_offset) {
        send_snapshot(r, pr);
        return;
    }
    if (!pr->replicate) {
        if (pr->paused) return;
        append_msg(r, pr);
        pr->paused = true;
        return;
    }
    raft_index last = raft_last_index(r);
    while (pr->infl_count < r->cfg.max_inflight && pr->next <= last) {
        raft_index n = append_msg(r, pr);
        if (!n) return;
        pr->next += n;
        infl_add(r, pr, pr->next - 1);
    }
}

static void bcast_append(struct raft *r) {
    for (unsigned i = 0; i < r->n_prs; i++) send_append(r, &r->prs[i]);
}

/* A follower that holds every entry learns a newer commit index at once, in an empty
 * AppendEntries, instead of with the next heartbeat: entries then apply on every node within one
 * message delay of their commit (a metadata change made through one node is visible through the
 * others that fast). Only for followers with nothing in flight: an empty append that overtook
 * earlier ones would be rejected and send the follower back to probing. */
static void send_commit(struct raft *r, struct raft_progress *pr) {
    if (pr->id == r->cfg.id || !pr->replicate || pr->pending_snap || pr->infl_count) return;
    if (pr->match != raft_last_index(r) || pr->next != pr->match + 1) return;
    append_msg(r, pr);
}

/* Heartbeats are numbered (msg.ctx, echoed back): an answer to round k proves this node was
 * still leader after round k was sent, which confirms read-index requests, and tells which
 * commit index the follower has learned (for quiescence). */
static void bcast_heartbeat(struct raft *r) {
    r->hb_round++;
    r->round_wanted = false;
    for (unsigned i = 0; i < r->n_prs; i++) {
        struct raft_progress *pr = &r->prs[i];
        if (pr->id == r->cfg.id) continue;
        struct raft_msg *m = new_msg(r, RAFT_MSG_HEARTBEAT, pr->id);
        if (!m) return;
        m->commit = pr->match < r->commit ? pr->match : r->commit;
        m->ctx = r->hb_round;
        if (m->commit != pr->told_commit) {
            pr->told_commit = m->commit;
            pr->told_round = r->hb_round;
        }
    }
}

static void send_timeout_now(struct raft *r, raft_id to) {
    new_msg(r, RAFT_MSG_TIMEOUT_NOW, to);
}

/* Transfer: hand over as soon as the target holds the whole log. */
static void maybe_send_timeout_now(struct raft *r, const struct raft_progress *pr) {
    if (r->transfer_to == pr->id && pr->match == raft_last_index(r)) send_timeout_now(r, pr->id);
}

static bool committed_current_term(const struct raft *r) {
    return raft_term_at(r, r->commit) == r->term;
}

/* ---- leader: read-index ----------------------------------------------------------------- */

static unsigned round_acks(struct raft *r, uint64_t round) {
    unsigned n = 0;
    for (unsigned i = 0; i < r->conf.n_voters; i++) {
        raft_id id = r->conf.voters[i];
        struct raft_progress *pr = id == r->cfg.id ? NULL : progress(r, id);
        if (id == r->cfg.id || (pr && pr->hb_acked >= round)) n++;
    }
    return n;
}

static int push_read_out(struct raft *r, uint64_t ctx, raft_index index) {
    if (r->n_reads_out == r->cap_reads_out) {
        size_t cap = r->cap_reads_out ? r->cap_reads_out * 2 : 4;
        struct raft_read_state *a = realloc(r->reads_out, cap * sizeof *a);
        if (!a) return RAFT_ENOMEM;
        r->reads_out = a;
        r->cap_reads_out = cap;
    }
    r->reads_out[r->n_reads_out++] = (struct raft_read_state){ctx, index};
    return RAFT_OK;
}

/* Hand out the confirmed reads (a prefix: rounds never decrease along the queue). */
static void release_reads(struct raft *r) {
    size_t k = 0;
    while (k < r->n_reads && r->reads[k].round && round_acks(r, r->reads[k].round) >= quorum(r)) {
        if (push_read_out(r, r->reads[k].ctx, r->reads[k].index)) break;
        k++;
    }
    if (!k) return;
    memmove(r->reads, r->reads + k, (r->n_reads - k) * sizeof *r->reads);
    r->n_reads -= k;
}

/* The leader knows the commit index is final for its term: pin waiting reads to it and ask for a
 * heartbeat round to confirm it is still leader. */
static void start_reads(struct raft *r) {
    bool any = false;
    for (size_t i = 0; i < r->n_reads; i++)
        if (!r->reads[i].round) {
            r->reads[i].index = r->commit;
            r->reads[i].round = r->hb_round + 1;
            any = true;
        }
    if (!any) return;
    r->round_wanted = true;
    release_reads(r); /* a lone voter needs no round */
    if (!r->n_reads) r->round_wanted = false;
}

static int read_index(struct raft *r, uint64_t ctx) {
    if (r->role != RAFT_LEADER) return RAFT_ENOTLEADER;
    if (r->n_reads == r->cap_reads) {
        size_t cap = r->cap_reads ? r->cap_reads * 2 : 4;
        struct raft_pending_read *a = realloc(r->reads, cap * sizeof *a);
        if (!a) return RAFT_ENOMEM;
        r->reads = a;
        r->cap_reads = cap;
    }
    r->reads[r->n_reads++] = (struct raft_pending_read){ctx, 0, 0};
    /* before its first commit a new leader's commit index may lag entries committed by earlier
     * leaders, so reads wait for it (Raft dissertation section 6.4) */
    if (committed_current_term(r)) start_reads(r);
    return RAFT_OK;
}

/* ---- leader: commit and membership ------------------------------------------------------ */

static raft_index propose_conf(struct raft *r, const struct raft_conf *c);

/* A leader that removed itself leads until the removal commits, then steps down, handing over
 * to an up-to-date voter at once rather than letting the group wait for an election timeout. */
static void maybe_step_down_removed(struct raft *r) {
    if (r->role != RAFT_LEADER || self_voter(r) || r->commit < r->conf_index) return;
    bcast_heartbeat(r); /* tell everyone the commit index */
    for (unsigned i = 0; i < r->n_prs; i++) {
        struct raft_progress *pr = &r->prs[i];
        if (raft_conf_is_voter(&r->conf, pr->id) && pr->match == raft_last_index(r)) {
            send_timeout_now(r, pr->id);
            break;
        }
    }
    become_follower(r, r->term, 0);
}

/* Promote the learner being added as a voter once it has caught up, one change at a time.
 * Returns the index of the proposed CONF entry, 0 if not now. */
static raft_index maybe_promote(struct raft *r) {
    if (r->role != RAFT_LEADER || !r->promote_id) return 0;
    int pos = learner_pos(&r->conf, r->promote_id);
    if (pos < 0) { /* removed meanwhile, or already a voter */
        r->promote_id = 0;
        return 0;
    }
    if (r->transfer_to || r->conf_index > r->commit || !committed_current_term(r)) return 0;
    struct raft_progress *pr = progress(r, r->promote_id);
    if (!pr || pr->match < r->promote_at) return 0;
    struct raft_conf c = r->conf;
    c.voters[c.n_voters++] = r->promote_id;
    memmove(c.learners + pos, c.learners + pos + 1, (--c.n_learners - (unsigned)pos) * sizeof(raft_id));
    r->promote_id = 0;
    return propose_conf(r, &c);
}

static void maybe_commit(struct raft *r) {
    raft_index m[RAFT_MAX_NODES] = {0};
    unsigned n = r->conf.n_voters;
    for (unsigned i = 0; i < n; i++) {
        raft_id id = r->conf.voters[i];
        struct raft_progress *pr = progress(r, id);
        m[i] = id == r->cfg.id ? r->persisted : pr ? pr->match : 0;
    }
    for (unsigned i = 1; i < n; i++) /* insertion sort, descending */
        for (unsigned j = i; j > 0 && m[j] > m[j - 1]; j--) {
            raft_index t = m[j];
            m[j] = m[j - 1];
            m[j - 1] = t;
        }
    raft_index q = n ? m[quorum(r) - 1] : 0; /* highest index stored on a quorum */
    if (q <= r->commit) return;
#ifndef RAFT_BUG_COMMIT_OLD_TERM
    if (raft_term_at(r, q) != r->term) return; /* only current-term entries commit by counting */
#endif
    r->commit = q;
    bcast_append(r); /* tell followers the new commit index (carried by appends) */
    for (unsigned i = 0; i < r->n_prs; i++) send_commit(r, &r->prs[i]);
    if (r->n_reads && committed_current_term(r)) start_reads(r);
    maybe_step_down_removed(r);
}

/* ---- leader: responses ------------------------------------------------------------------ */

static void leader_append_reject(struct raft *r, struct raft_progress *pr, const struct raft_msg *m) {
    /* stale rejections: in replicate mode anything at or below match, in probe (or snapshot) mode
     * anything but the probe (or snapshot) we sent */
    if (pr->replicate ? m->index <= pr->match : m->index != pr->next - 1) return;
    raft_index k = m->hint_index;
    if (m->log_term) /* largest index <= hint whose term <= the follower's term there */
        while (k > 0 && raft_term_at(r, k) > m->log_term) k--; /* 0 below log_offset: stops */
    raft_index next = k + 1;
    if (next > m->index) next = m->index; /* always back up at least one */
    if (next < pr->match + 1) next = pr->match + 1;
    to_probe(pr, next);
    send_append(r, pr);
}

static void leader_append_resp(struct raft *r, const struct raft_msg *m) {
    struct raft_progress *pr = progress(r, m->from);
    if (!pr) return;
    pr->recent_active = true;
    if (m->reject) {
        leader_append_reject(r, pr, m);
        return;
    }
    if (m->index > pr->match) {
        pr->match = m->index;
        pr->stall = 0;
        if (pr->next < pr->match + 1) pr->next = pr->match + 1;
        if (pr->pending_snap && pr->match < pr->pending_snap && pr->match < r->log_offset) {
            maybe_commit(r); /* an older acknowledgement: still waiting for the snapshot */
            return;
        }
        /* (An older snapshot's acknowledgement - the follower installed one sent earlier - ends
         * the wait when the log still holds what follows it: streaming from there is cheaper.) */
        if (!pr->replicate) { /* the probe (or snapshot) found the match: stream from there */
            pr->replicate = true;
            pr->paused = false;
            pr->pending_snap = 0;
            pr->next = pr->match + 1;
            pr->infl_head = pr->infl_count = 0;
        } else {
            infl_free_to(r, pr, pr->match);
        }
        raft_index commit_before = r->commit;
        maybe_commit(r);
        if (r->role != RAFT_LEADER) return;
        /* a follower outside the quorum just caught up with entries committed earlier */
        if (r->commit == commit_before && pr->match <= r->commit) send_commit(r, pr);
        maybe_send_timeout_now(r, pr);
    } else if (!pr->replicate) {
        /* A stale acknowledgement (index <= match) does not answer the outstanding probe. Probing
         * again on each one would keep a backlog of old responses alive for ever (one new probe,
         * hence one new response, per stale one); heartbeat responses resume probing instead. */
        return;
    }
    send_append(r, pr);
}

static void leader_heartbeat_resp(struct raft *r, const struct raft_msg *m) {
    struct raft_progress *pr = progress(r, m->from);
    if (!pr) return;
    pr->recent_active = true;
    if (m->ctx > pr->hb_acked) pr->hb_acked = m->ctx;
    if (r->n_reads) release_reads(r);
    /* The recovery below runs once per regular heartbeat interval, not once per response:
     * read-index rounds (and duplicated messages) add responses, and resending a probe on each
     * of them fills the links with probes and stale answers faster than they drain. */
    if (pr->acted_round >= r->tick_round) return;
    pr->acted_round = r->tick_round;
    maybe_send_timeout_now(r, pr);
    if (pr->pending_snap) {
        /* the snapshot (or its answer) may have been lost: the follower is alive, so send it
         * again once it has been outstanding for a while */
        if (pr->stall >= r->cfg.election_ticks) {
            to_probe(pr, pr->match + 1);
            send_append(r, pr);
        }
        return;
    }
    pr->paused = false;
    /* a lost AppendEntries would otherwise hold its in-flight slot forever */
    if (pr->replicate && pr->infl_count >= r->cfg.max_inflight) infl_free_first(r, pr);
    /* no progress for several heartbeat intervals while entries are outstanding: the appends
     * were lost, fall back to probing from the last known match */
    if (pr->replicate && pr->match + 1 < pr->next && pr->stall >= r->cfg.election_ticks)
        to_probe(pr, pr->match + 1);
    if (pr->match < raft_last_index(r) || pr->match < r->commit) send_append(r, pr);
}

/* ---- follower --------------------------------------------------------------------------- */

static void commit_to(struct raft *r, raft_index c) {
    if (c > raft_last_index(r)) c = raft_last_index(r);
    if (c > r->commit) r->commit = c;
}

static void send_append_ack(struct raft *r, raft_id to, raft_index match) {
    struct raft_msg *m = new_msg(r, RAFT_MSG_APPEND_RESP, to);
    if (m) m->index = match;
}

/* Acknowledge that the log matches the leader's up to match, once that much is durable. */
static void ack_when_persisted(struct raft *r, raft_id to, raft_index match) {
    if (r->persisted >= match) send_append_ack(r, to, match);
    else if (r->ack_pending < match) r->ack_pending = match;
}

static void reject_append(struct raft *r, const struct raft_msg *m) {
    struct raft_msg *resp = new_msg(r, RAFT_MSG_APPEND_RESP, m->from);
    if (!resp) return;
    resp->reject = true;
    resp->index = m->index;
    raft_index k = m->index < raft_last_index(r) ? m->index : raft_last_index(r);
    while (k > r->commit && raft_term_at(r, k) > m->log_term) k--;
    resp->hint_index = k;
    resp->log_term = raft_term_at(r, k);
}

static void follower_append(struct raft *r, const struct raft_msg *m) {
    raft_index prev = m->index;
    raft_term prev_term = m->log_term;
    const struct raft_entry *ents = m->entries;
    uint32_t n = m->n_entries;
    if (prev < r->commit) {
        /* Our log up to commit is committed, hence in every later leader's log: skip that part
         * (it may be compacted here). A stale or duplicated append may hold nothing beyond it. */
        if (prev + n <= r->commit) {
            ack_when_persisted(r, m->from, r->commit);
            return;
        }
        raft_index skip = r->commit - prev;
        ents += skip;
        n -= (uint32_t)skip;
        prev = r->commit;
        prev_term = raft_term_at(r, prev);
    }
    if (prev > raft_last_index(r) || raft_term_at(r, prev) != prev_term) {
        reject_append(r, m);
        return;
    }
    for (uint32_t i = 0; i < n; i++) {
        raft_index idx = prev + 1 + i;
        if (idx <= raft_last_index(r)) {
            if (raft_term_at(r, idx) == ents[i].term) continue;
            if (idx <= r->commit) return; /* cannot happen in a correct cluster */
            log_truncate(r, idx);
        }
        if (log_append(r, ents[i].term, ents[i].type, ents[i].data, ents[i].len)) return;
    }
    raft_index last_new = prev + n;
    commit_to(r, m->commit < last_new ? m->commit : last_new);
    ack_when_persisted(r, m->from, last_new);
}

/* Replace the log and state machine with the leader's snapshot. */
static void install_snapshot(struct raft *r, const struct raft_snapshot_meta *s) {
    log_discard(r);
    r->log_offset = s->index;
    r->offset_term = s->term;
    r->snap = *s;
    r->commit = r->applied = s->index;
    r->persisted = 0; /* until the caller reports the snapshot write PERSISTED */
    r->dirty_from = 0;
    r->snap_installed = true;
    set_conf(r, &s->conf, s->index);
}

static void follower_snapshot(struct raft *r, const struct raft_msg *m) {
    const struct raft_snapshot_meta *s = m->snap;
    if (!s || !s->index) return;
    if (s->index <= r->commit) { /* nothing new: tell the leader where we are */
        ack_when_persisted(r, m->from, r->commit);
        return;
    }
    if (raft_term_at(r, s->index) == s->term) {
        /* We hold the entry the snapshot ends with, so our log matches up to it: keep what
         * follows and just commit (as etcd does); the entries get applied normally. */
        commit_to(r, s->index);
        ack_when_persisted(r, m->from, s->index);
        return;
    }
    install_snapshot(r, s);
    r->ack_pending = s->index; /* acknowledged once the snapshot write is durable */
}

/* ---- votes ------------------------------------------------------------------------------ */

static bool log_up_to_date(const struct raft *r, raft_index idx, raft_term t) {
    return t > last_term(r) || (t == last_term(r) && idx >= raft_last_index(r));
}

/* Any node answers, whatever its configuration says about the candidate or itself: a learner
 * (or a node that has not seen its own addition yet) may already be a voter in the candidate's
 * configuration, and the candidate counts only the voters of its own (etcd does the same). */
static void handle_vote(struct raft *r, const struct raft_msg *m) {
    bool pre = m->type == RAFT_MSG_PREVOTE;
    bool can = r->vote == m->from || (r->vote == 0 && r->leader == 0) || (pre && m->term > r->term);
    struct raft_msg *resp = new_msg(r, pre ? RAFT_MSG_PREVOTE_RESP : RAFT_MSG_VOTE_RESP, m->from);
    if (!resp) return;
    if (can && log_up_to_date(r, m->index, m->log_term)) {
        resp->term = m->term; /* a pre-vote grant carries the proposed term */
        if (!pre) {
            r->vote = m->from;
            r->hs_dirty = true;
            r->election_elapsed = 0;
        }
    } else {
        resp->reject = true;
    }
}

static void handle_vote_resp(struct raft *r, const struct raft_msg *m) {
    int pos = voter_pos(&r->conf, m->from);
    if (pos < 0) return; /* not a voter in our configuration: does not count */
    uint32_t bit = 1u << pos;
    if ((r->votes_granted | r->votes_rejected) & bit) return; /* first answer counts */
    if (m->reject) r->votes_rejected |= bit;
    else r->votes_granted |= bit;
    if (popcount32(r->votes_granted) >= quorum(r)) {
        if (r->role == RAFT_PRE_CANDIDATE) campaign(r, CAMPAIGN_NORMAL);
        else become_leader(r);
    } else if (popcount32(r->votes_rejected) >= quorum(r)) {
        become_follower(r, r->term, 0);
    }
}

/* ---- message dispatch ------------------------------------------------------------------- */

static bool is_vote_req(uint32_t t) { return t == RAFT_MSG_VOTE || t == RAFT_MSG_PREVOTE; }

static bool is_from_leader(uint32_t t) {
    return t == RAFT_MSG_APPEND || t == RAFT_MSG_HEARTBEAT || t == RAFT_MSG_SNAPSHOT ||
           t == RAFT_MSG_TIMEOUT_NOW;
}

/* Leader lease (check-quorum): a node that heard from a live leader within election_ticks (a
 * leader: whose quorum answered) ignores vote requests that would depose it. A nap ends the lease
 * (lease_expired, set by RAFT_EV_WAKE): nobody knows how long ago the leader was last heard of,
 * and a node that goes back to sleep at once would otherwise ignore every candidate for ever (found
 * by the simulator: the voter a candidate needed kept sleeping with a lease that never aged). */
static bool in_lease(const struct raft *r) {
    return r->cfg.check_quorum && r->leader != 0 && !r->lease_expired &&
           r->election_elapsed < r->cfg.election_ticks;
}

/* Term rules; false if the message must be dropped. */
static bool check_term(struct raft *r, const struct raft_msg *m) {
    if (m->term > r->term) {
        /* ignore disruptive candidates under a lease, unless the leader itself asked for this
         * election (leadership transfer) */
        if (is_vote_req(m->type) && in_lease(r) && !m->transfer) return false;
        if (m->type == RAFT_MSG_PREVOTE) {
            /* never changes our term */
        } else if (m->type == RAFT_MSG_PREVOTE_RESP && !m->reject) {
            /* the grant carries the term we would campaign at */
        } else if (m->type == RAFT_MSG_VOTE) {
            /* Raft paper: the election timer restarts on hearing from a leader or granting a
             * vote (handle_vote), not on any higher-term request. Otherwise a candidate whose
             * log is too old to win keeps restarting the timer of the node whose log would win,
             * for ever if its clock is slower (found by the simulator). */
            to_follower(r, m->term, 0, false);
        } else {
            become_follower(r, m->term, is_from_leader(m->type) ? m->from : 0);
        }
    } else if (m->term < r->term) {
        if (m->type == RAFT_MSG_APPEND || m->type == RAFT_MSG_HEARTBEAT || m->type == RAFT_MSG_SNAPSHOT) {
            /* a stale leader: tell it about the new term so it steps down */
            new_msg(r, RAFT_MSG_APPEND_RESP, m->from);
        } else if (m->type == RAFT_MSG_PREVOTE) {
            struct raft_msg *resp = new_msg(r, RAFT_MSG_PREVOTE_RESP, m->from);
            if (resp) resp->reject = true;
        }
        return false;
    }
    return true;
}

/* AppendEntries, heartbeat, snapshot or TimeoutNow from the leader of our term. Accepted from
 * any id: a new member does not know the configuration that made it one yet. */
static void from_leader(struct raft *r, const struct raft_msg *m) {
    if (r->role == RAFT_LEADER) return; /* same term, two leaders: impossible */
    if (r->role != RAFT_FOLLOWER || r->leader != m->from) become_follower(r, m->term, m->from);
    r->election_elapsed = 0;
    r->lease_expired = false;
    switch (m->type) {
    case RAFT_MSG_APPEND:
        follower_append(r, m);
        break;
    case RAFT_MSG_HEARTBEAT: {
        commit_to(r, m->commit);
        struct raft_msg *resp = new_msg(r, RAFT_MSG_HEARTBEAT_RESP, m->from);
        if (resp) resp->ctx = m->ctx;
        break;
    }
    case RAFT_MSG_SNAPSHOT:
        follower_snapshot(r, m);
        break;
    case RAFT_MSG_TIMEOUT_NOW:
        campaign(r, CAMPAIGN_TRANSFER); /* no pre-vote: the leader vouches for us */
        break;
    }
}

static void receive(struct raft *r, const struct raft_msg *m) {
    if (m->to != r->cfg.id || m->from == r->cfg.id || !m->from) return;
    if (!check_term(r, m)) return;
    switch (m->type) {
    case RAFT_MSG_VOTE:
    case RAFT_MSG_PREVOTE:
        handle_vote(r, m);
        break;
    case RAFT_MSG_VOTE_RESP:
        if (r->role == RAFT_CANDIDATE) handle_vote_resp(r, m);
        break;
    case RAFT_MSG_PREVOTE_RESP:
        if (r->role == RAFT_PRE_CANDIDATE &&
            (m->reject ? m->term == r->term : m->term == r->term + 1))
            handle_vote_resp(r, m);
        break;
    case RAFT_MSG_APPEND:
    case RAFT_MSG_HEARTBEAT:
    case RAFT_MSG_SNAPSHOT:
    case RAFT_MSG_TIMEOUT_NOW:
        from_leader(r, m);
        break;
    case RAFT_MSG_APPEND_RESP:
        if (r->role == RAFT_LEADER) leader_append_resp(r, m);
        break;
    case RAFT_MSG_HEARTBEAT_RESP:
        if (r->role == RAFT_LEADER) leader_heartbeat_resp(r, m);
        break;
    default:
        break;
    }
}

/* ---- events ----------------------------------------------------------------------------- */

static void check_quorum(struct raft *r) {
    unsigned active = 0;
    for (unsigned i = 0; i < r->conf.n_voters; i++) {
        raft_id id = r->conf.voters[i];
        struct raft_progress *pr = progress(r, id);
        if (id == r->cfg.id || (pr && pr->recent_active)) active++;
    }
    for (unsigned i = 0; i < r->n_prs; i++) r->prs[i].recent_active = false;
    if (active < quorum(r)) become_follower(r, r->term, 0);
    else r->lease_expired = false; /* a quorum answered: the lease holds again */
}

/* Stalls are counted in heartbeat intervals, not in heartbeat responses: read-index rounds add
 * heartbeats, and counting their answers made slow but healthy followers fall back to probing
 * (one append in flight) again and again. */
static void count_stalls(struct raft *r) {
    for (unsigned i = 0; i < r->n_prs; i++) {
        struct raft_progress *pr = &r->prs[i];
        bool waiting = pr->pending_snap || (pr->replicate && pr->match + 1 < pr->next);
        if (waiting && pr->stall < r->cfg.election_ticks) pr->stall++;
    }
}

static void tick(struct raft *r) {
    r->election_elapsed++;
    if (r->role == RAFT_LEADER) {
        if (++r->heartbeat_elapsed >= r->cfg.heartbeat_ticks) {
            r->heartbeat_elapsed = 0;
            count_stalls(r);
            bcast_heartbeat(r);
            r->tick_round = r->hb_round;
        }
        if (r->transfer_to && ++r->transfer_elapsed >= r->cfg.election_ticks)
            r->transfer_to = 0; /* the target did not take over in time: resume service */
        if (r->election_elapsed >= r->cfg.election_ticks) {
            r->election_elapsed = 0;
            if (r->cfg.check_quorum) check_quorum(r);
        }
        return;
    }
    if (r->election_elapsed < r->election_timeout) return;
    if (may_campaign(r)) campaign(r, r->cfg.pre_vote ? CAMPAIGN_PRE : CAMPAIGN_NORMAL);
    else reset_election_timeout(r); /* look again after another timeout */
}

/* RAFT_EV_PEER_DOWN: the leader's node is gone (the caller saw its connection close). Waiting a
 * whole election timeout (1-2 s by default) for silence to prove it would only delay the
 * election; instead the survivors campaign one tick apart in id order. */
static void leader_down(struct raft *r, raft_id id) {
    if (r->role != RAFT_FOLLOWER || r->leader != id || id == r->cfg.id) return;
    unsigned rank = 0;
    for (unsigned i = 0; i < r->conf.n_voters; i++) {
        raft_id v = r->conf.voters[i];
        if (v != id && v < r->cfg.id) rank++;
    }
    r->leader = 0; /* no lease any more: votes for a new leader are granted at once */
    unsigned wait = 1 + 2 * rank;
    if (r->election_timeout > wait && r->election_elapsed + wait < r->election_timeout)
        r->election_elapsed = r->election_timeout - wait;
}

static void persisted(struct raft *r, raft_index idx, raft_term t) {
    /* stale if the write was overtaken by a truncation or a snapshot */
    if (idx > raft_last_index(r) || idx < r->log_offset || raft_term_at(r, idx) != t || idx <= r->persisted)
        return;
    r->persisted = idx;
    if (r->role == RAFT_LEADER) {
        maybe_commit(r);
    } else if (r->role == RAFT_FOLLOWER && r->leader && r->ack_pending) {
        raft_index a = r->ack_pending < idx ? r->ack_pending : idx;
        send_append_ack(r, r->leader, a);
        if (r->ack_pending <= idx) r->ack_pending = 0;
    }
}

static int propose(struct raft *r, const void *data, uint32_t len, struct raft_update *out) {
    if (r->role != RAFT_LEADER) return RAFT_ENOTLEADER;
    if (r->transfer_to) return RAFT_EBUSY;
    if (log_append(r, r->term, RAFT_ENTRY_NORMAL, data, len)) return RAFT_ENOMEM;
    out->proposed_index = raft_last_index(r);
    out->proposed_term = r->term;
    bcast_append(r);
    return RAFT_OK;
}

/* Append a CONF entry (in force at once); returns its index, 0 if out of memory. */
static raft_index propose_conf(struct raft *r, const struct raft_conf *c) {
    uint8_t buf[RAFT_CONF_MAX_ENCODED];
    size_t len = raft_conf_encode(c, buf);
    if (log_append(r, r->term, RAFT_ENTRY_CONF, buf, (uint32_t)len)) return 0;
    raft_index idx = raft_last_index(r);
    if (r->role == RAFT_LEADER) bcast_append(r);
    return idx;
}

static int conf_change(struct raft *r, uint32_t op, raft_id id, struct raft_update *out) {
    if (r->role != RAFT_LEADER) return RAFT_ENOTLEADER;
    if (r->transfer_to || r->conf_index > r->commit || !committed_current_term(r)) return RAFT_EBUSY;
    struct raft_conf c = r->conf;
    unsigned members = c.n_voters + c.n_learners;
    int v = voter_pos(&c, id), l = learner_pos(&c, id);
    raft_index idx;
    switch (op) {
    case RAFT_CC_ADD_LEARNER:
        if (!id || v >= 0 || l >= 0 || members >= RAFT_MAX_NODES) return RAFT_EINVAL;
        c.learners[c.n_learners++] = id;
        break;
    case RAFT_CC_ADD_VOTER:
        if (!id || v >= 0 || (l < 0 && members >= RAFT_MAX_NODES)) return RAFT_EINVAL;
        if (r->promote_id) return r->promote_id == id ? RAFT_OK : RAFT_EBUSY;
        r->promote_id = id;
        r->promote_at = raft_last_index(r); /* what the leader holds now, >= its commit index */
        if (l >= 0) { /* already a learner: maybe caught up already */
            idx = maybe_promote(r);
            goto proposed;
        }
        c.learners[c.n_learners++] = id;
        r->promote_at++; /* the learner must at least hold the entry that adds it */
        break;
    case RAFT_CC_REMOVE:
        if (!id || (v < 0 && l < 0) || (v >= 0 && c.n_voters == 1)) return RAFT_EINVAL;
        if (v >= 0) memmove(c.voters + v, c.voters + v + 1, (--c.n_voters - (unsigned)v) * sizeof(raft_id));
        else memmove(c.learners + l, c.learners + l + 1, (--c.n_learners - (unsigned)l) * sizeof(raft_id));
        if (r->promote_id == id) r->promote_id = 0;
        break;
    default:
        return RAFT_EINVAL;
    }
    idx = propose_conf(r, &c);
    if (!idx) {
        if (op == RAFT_CC_ADD_VOTER) r->promote_id = 0;
        return RAFT_ENOMEM;
    }
proposed:
    if (idx) {
        out->proposed_index = idx;
        out->proposed_term = r->term;
    }
    return RAFT_OK;
}

static int transfer(struct raft *r, raft_id to) {
    if (r->role != RAFT_LEADER) return RAFT_ENOTLEADER;
    if (to == r->cfg.id || !raft_conf_is_voter(&r->conf, to)) return RAFT_EINVAL;
    if (r->transfer_to) return r->transfer_to == to ? RAFT_OK : RAFT_EBUSY;
    struct raft_progress *pr = progress(r, to);
    if (!pr) return RAFT_EINVAL;
    r->transfer_to = to;
    r->transfer_elapsed = 0;
    if (pr->match == raft_last_index(r)) send_timeout_now(r, to);
    else send_append(r, pr);
    return RAFT_OK;
}

/* The caller saved a snapshot covering [1, index]: remember its meta (to send it to followers
 * that fall behind the log) and compact the log, keeping cfg.trailing entries below it. */
static int snapshot_taken(struct raft *r, raft_index index) {
    if (index > r->applied) return RAFT_EINVAL;
    if (index <= r->snap.index) return RAFT_OK; /* an older one than we know: nothing to do */
    struct raft_snapshot_meta s = {.index = index, .term = raft_term_at(r, index)};
    conf_at(r, index, &s.conf);
    r->snap = s;
    if (index > r->cfg.trailing) log_compact(r, index - r->cfg.trailing);
    return RAFT_OK;
}

static void wake(struct raft *r) {
    r->heartbeat_elapsed = 0;
    r->lease_expired = true; /* see in_lease() */
    for (unsigned i = 0; i < r->n_prs; i++) r->prs[i].recent_active = true; /* no check-quorum
                                                                   step-down for the nap */
    if (r->role == RAFT_LEADER) r->election_elapsed = 0;
    else reset_election_timeout(r); /* a fresh random timeout: woken followers do not all fire
                                       together */
}

/* Leader: every member has the whole log and knows it is committed; nothing else pending. */
static bool leader_quiescent(const struct raft *r) {
    raft_index last = raft_last_index(r);
    if (r->n_reads || r->round_wanted || r->transfer_to || r->promote_id || r->conf_index > r->commit)
        return false;
    for (unsigned i = 0; i < r->n_prs; i++) {
        const struct raft_progress *pr = &r->prs[i];
        if (pr->id == r->cfg.id) continue;
        if (pr->match != last || pr->pending_snap || pr->told_commit != last || pr->hb_acked < pr->told_round)
            return false;
    }
    return true;
}

bool raft_quiescent(const struct raft *r) {
    raft_index last = raft_last_index(r);
    if (r->persisted != last || r->applied != last || r->commit != last) return false;
    if (r->role == RAFT_LEADER) return leader_quiescent(r);
    /* a node that may campaign and knows no leader must keep its election timer running */
    return r->role == RAFT_FOLLOWER && (r->leader || !may_campaign(r));
}

/* Free output buffers of an idle node (most groups of a multi-Raft host are idle). */
static void trim_idle(struct raft *r) {
    if (r->n_out || r->n_reads || r->n_reads_out || !raft_quiescent(r)) return;
    free(r->out_msgs);
    r->out_msgs = NULL;
    r->cap_out = 0;
    free(r->reads);
    r->reads = NULL;
    r->cap_reads = 0;
    free(r->reads_out);
    r->reads_out = NULL;
    r->cap_reads_out = 0;
}

static void finish(struct raft *r, struct raft_update *out) {
    if (r->snap_installed) {
        out->flags |= RAFT_UPD_SNAPSHOT;
        out->snapshot = r->snap;
        r->snap_installed = false;
    }
    if (r->hs_dirty) {
        out->flags |= RAFT_UPD_HARD_STATE;
        r->hs_dirty = false;
    }
    out->term = r->term;
    out->vote = r->vote;
    if (r->dirty_from && r->dirty_from > r->log_offset && r->dirty_from <= raft_last_index(r) + 1) {
        out->flags |= RAFT_UPD_ENTRIES;
        out->entries_first = r->dirty_from;
        out->entries = r->log + (r->dirty_from - r->log_offset - 1);
        out->n_entries = raft_last_index(r) + 1 - r->dirty_from;
    }
    r->dirty_from = 0;
    for (size_t i = 0; i < r->n_out; i++) {
        struct raft_msg *m = &r->out_msgs[i];
        if (m->type == RAFT_MSG_APPEND && m->n_entries) m->entries = r->log + (m->index - r->log_offset);
    }
    raft_index lim = r->commit < r->persisted ? r->commit : r->persisted;
    if (lim > r->applied) {
        out->flags |= RAFT_UPD_APPLY;
        out->apply_first = r->applied + 1;
        out->apply = r->log + (r->applied - r->log_offset);
        out->n_apply = lim - r->applied;
        r->applied = lim;
        if (r->cfg.snapshot_threshold && r->applied - r->snap.index >= r->cfg.snapshot_threshold)
            out->flags |= RAFT_UPD_SNAPSHOT_DUE;
    }
    if (r->n_reads_out) {
        out->flags |= RAFT_UPD_READS;
        out->reads = r->reads_out;
        out->n_reads = r->n_reads_out;
    }
    if (r->compacted) {
        out->flags |= RAFT_UPD_COMPACT;
        out->compact_index = r->compacted;
    }
    if (r->conf_dirty) {
        out->flags |= RAFT_UPD_CONF;
        r->conf_dirty = false;
    }
    if (r->role_dirty) {
        out->flags |= RAFT_UPD_ROLE;
        r->role_dirty = false;
    }
    out->conf = &r->conf;
    out->role = r->role;
    out->leader = r->leader;
    out->commit = r->commit;
    trim_idle(r);
    if (r->n_out) out->flags |= RAFT_UPD_MESSAGES;
    out->msgs = r->out_msgs;
    out->n_msgs = r->n_out;
}

int raft_step(struct raft *r, const struct raft_event *ev, struct raft_update *out) {
    memset(out, 0, sizeof *out);
    r->n_out = 0;
    r->n_reads_out = 0;
    r->compacted = 0;
    int rc = RAFT_OK;
    switch (ev->type) {
    case RAFT_EV_TICK: tick(r); break;
    case RAFT_EV_RECEIVE: receive(r, ev->u.msg); break;
    case RAFT_EV_PERSISTED: persisted(r, ev->u.persisted.index, ev->u.persisted.term); break;
    case RAFT_EV_PROPOSE: rc = propose(r, ev->u.propose.data, ev->u.propose.len, out); break;
    case RAFT_EV_SNAPSHOT: rc = snapshot_taken(r, ev->u.snapshot.index); break;
    case RAFT_EV_CONF_CHANGE: rc = conf_change(r, ev->u.conf.op, ev->u.conf.id, out); break;
    case RAFT_EV_TRANSFER: rc = transfer(r, ev->u.transfer.to); break;
    case RAFT_EV_READ_INDEX: rc = read_index(r, ev->u.read.ctx); break;
    case RAFT_EV_WAKE: wake(r); break;
    case RAFT_EV_PEER_DOWN: leader_down(r, ev->u.peer.id); break;
    case RAFT_EV_CAMPAIGN:
        if (r->role != RAFT_LEADER && may_campaign(r)) campaign(r, r->cfg.pre_vote ? CAMPAIGN_PRE : CAMPAIGN_NORMAL);
        break;
    default: rc = RAFT_EINVAL; break;
    }
    if (r->role == RAFT_LEADER) {
        maybe_promote(r); /* its learner may have caught up, or the previous change committed */
        if (r->round_wanted) bcast_heartbeat(r);
    }
    finish(r, out);
    return rc;
}

/* ---- lifecycle -------------------------------------------------------------------------- */

int raft_init(struct raft *r, const struct raft_config *cfg) {
    if (!cfg->id || cfg->n_peers > RAFT_MAX_NODES || !cfg->election_ticks || !cfg->heartbeat_ticks ||
        !cfg->max_batch || !cfg->max_inflight || cfg->max_inflight > RAFT_MAX_INFLIGHT)
        return RAFT_EINVAL;
    for (unsigned i = 0; i < cfg->n_peers; i++) {
        if (!cfg->peers[i]) return RAFT_EINVAL;
        for (unsigned j = 0; j < i; j++)
            if (cfg->peers[j] == cfg->peers[i]) return RAFT_EINVAL;
    }
    memset(r, 0, sizeof *r);
    r->cfg = *cfg;
    bootstrap_conf(r, &r->conf);
    r->rng = cfg->seed ^ ((uint64_t)cfg->id << 32);
    r->role = RAFT_FOLLOWER;
    reset_election_timeout(r);
    return RAFT_OK;
}

/* Where the restored log starts: its base (log_offset) must be an index whose term is known. */
static int restore_base(struct raft *r, const struct raft_snapshot_meta *snap, raft_index *first,
                        const struct raft_entry **entries, size_t *n) {
    raft_index end = *first + *n - 1; /* last index of the entries */
    if (!*n || end < snap->index) { /* no entries after the snapshot: they are of no use */
        *n = 0;
        r->log_offset = snap->index;
        r->offset_term = snap->term;
        return RAFT_OK;
    }
    if (snap->index >= *first && (*entries)[snap->index - *first].term != snap->term) return RAFT_EINVAL;
    if (*first == snap->index + 1) {
        r->log_offset = snap->index;
        r->offset_term = snap->term;
    } else if (*first > 1) { /* the first trailing entry only gives its term to the base */
        r->log_offset = *first;
        r->offset_term = (*entries)[0].term;
        (*entries)++;
        (*n)--;
        (*first)++;
    }
    return RAFT_OK;
}

int raft_restore(struct raft *r, raft_term term, raft_id vote, const struct raft_snapshot_meta *snap,
                 raft_index first, const struct raft_entry *entries, size_t n) {
    if (snap && !snap->index) snap = NULL;
    if (snap ? !first || first > snap->index + 1 : first != 1) return RAFT_EINVAL;
    r->term = term;
    r->vote = vote;
    if (snap) {
        if (restore_base(r, snap, &first, &entries, &n)) return RAFT_EINVAL;
        r->snap = *snap;
        r->commit = r->applied = snap->index;
    }
    for (size_t i = 0; i < n; i++)
        if (log_push(r, entries[i].term, entries[i].type, entries[i].data, entries[i].len))
            return RAFT_ENOMEM;
    r->persisted = raft_last_index(r);
    r->conf_index = conf_scan(r, raft_last_index(r), &r->conf);
    r->dirty_from = 0;
    return RAFT_OK;
}

void raft_free(struct raft *r) {
    for (size_t i = 0; i < r->log_len; i++) free(r->log[i].data);
    free(r->log);
    free_progress(r);
    free(r->reads);
    free(r->reads_out);
    free(r->out_msgs);
    memset(r, 0, sizeof *r);
}
