/* raft.c - Raft core: election (pre-vote, check-quorum), replication (pipelined, batched,
 * conflict hints), commit by quorum of current-term entries. No I/O; see raft.h.
 *
 * Planted bug for the simulator (never in production builds): -DRAFT_BUG_COMMIT_OLD_TERM makes the
 * leader commit any entry stored on a quorum, including entries of older terms (Raft paper
 * Figure 8). tests/sim/raft_buggy.c compiles this file a second time with it set. */
#include "raft/raft.h"

#include <stdlib.h>
#include <string.h>

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
    static const char *names[] = {"?", "append", "append-resp", "heartbeat", "heartbeat-resp",
                                  "vote", "vote-resp", "prevote", "prevote-resp"};
    return type < sizeof names / sizeof names[0] ? names[type] : "?";
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

bool raft_conf_is_voter(const struct raft_conf *c, raft_id id) {
    for (unsigned i = 0; i < c->n_voters; i++)
        if (c->voters[i] == id) return true;
    return false;
}

bool raft_conf_has(const struct raft_conf *c, raft_id id) {
    if (raft_conf_is_voter(c, id)) return true;
    for (unsigned i = 0; i < c->n_learners; i++)
        if (c->learners[i] == id) return true;
    return false;
}

const struct raft_conf *raft_get_conf(const struct raft *r) { return &r->conf; }

bool raft_quiescent(const struct raft *r) { /* TODO(issue 4): leader-side checks */
    raft_index last = raft_last_index(r);
    return r->persisted == last && r->applied == last && r->commit == last && r->role != RAFT_CANDIDATE &&
           r->role != RAFT_PRE_CANDIDATE;
}

static unsigned quorum(const struct raft *r) { return r->cfg.n_peers / 2 + 1; }

static struct raft_progress *progress(struct raft *r, raft_id id) {
    for (unsigned i = 0; i < r->cfg.n_peers; i++)
        if (r->prs[i].id == id) return &r->prs[i];
    return NULL;
}

static void reset_election_timeout(struct raft *r) {
    r->election_elapsed = 0;
    r->election_timeout = r->cfg.election_ticks + (unsigned)(rng_next(&r->rng) % r->cfg.election_ticks);
}

static struct raft_msg *new_msg(struct raft *r, uint32_t type, raft_id to) {
    if (r->n_out == r->cap_out) {
        size_t cap = r->cap_out ? r->cap_out * 2 : 16;
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

/* ---- log -------------------------------------------------------------------------------- */

static int log_reserve(struct raft *r, size_t n) {
    if (r->log_len + n <= r->log_cap) return RAFT_OK;
    size_t cap = r->log_cap ? r->log_cap : 64;
    while (cap < r->log_len + n) cap *= 2;
    struct raft_entry *l = realloc(r->log, cap * sizeof *l);
    if (!l) return RAFT_ENOMEM;
    r->log = l;
    r->log_cap = cap;
    return RAFT_OK;
}

static void mark_dirty(struct raft *r, raft_index i) {
    if (r->dirty_from == 0 || i < r->dirty_from) r->dirty_from = i;
}

static int log_append(struct raft *r, raft_term term, uint32_t type, const void *data, uint32_t len) {
    if (log_reserve(r, 1)) return RAFT_ENOMEM;
    struct raft_entry *e = &r->log[r->log_len];
    e->term = term;
    e->type = type;
    e->len = len;
    e->data = NULL;
    if (len) {
        e->data = malloc(len);
        if (!e->data) return RAFT_ENOMEM;
        memcpy(e->data, data, len);
    }
    r->log_len++;
    mark_dirty(r, raft_last_index(r));
    return RAFT_OK;
}

/* Drop entries at index >= from. */
static void log_truncate(struct raft *r, raft_index from) {
    while (raft_last_index(r) >= from && r->log_len > 0) {
        r->log_len--;
        free(r->log[r->log_len].data);
        r->log[r->log_len].data = NULL;
    }
    if (r->persisted >= from) r->persisted = from - 1;
    if (r->ack_pending >= from) r->ack_pending = from - 1;
    mark_dirty(r, from);
}

/* ---- roles ------------------------------------------------------------------------------ */

static void set_term(struct raft *r, raft_term term) {
    if (term != r->term) {
        r->term = term;
        r->vote = 0;
        r->hs_dirty = true;
    }
}

static void become_follower(struct raft *r, raft_term term, raft_id leader) {
    set_term(r, term);
    if (r->role != RAFT_FOLLOWER || r->leader != leader) r->role_dirty = true;
    r->role = RAFT_FOLLOWER;
    r->leader = leader;
    r->ack_pending = 0;
    reset_election_timeout(r);
}

static void send_append(struct raft *r, struct raft_progress *pr);
static void bcast_append(struct raft *r);
static void maybe_commit(struct raft *r);

static void become_leader(struct raft *r) {
    r->role = RAFT_LEADER;
    r->leader = r->cfg.id;
    r->role_dirty = true;
    r->heartbeat_elapsed = 0;
    r->election_elapsed = 0;
    raft_index next = raft_last_index(r) + 1;
    for (unsigned i = 0; i < r->cfg.n_peers; i++) {
        struct raft_progress *pr = &r->prs[i];
        raft_id id = pr->id;
        memset(pr, 0, sizeof *pr);
        pr->id = id;
        pr->next = next;
        pr->recent_active = true;
    }
    log_append(r, r->term, RAFT_ENTRY_NOOP, NULL, 0);
    bcast_append(r);
    maybe_commit(r); /* single node: nothing to wait for but our own disk */
}

static void send_votes(struct raft *r, bool pre) {
    for (unsigned i = 0; i < r->cfg.n_peers; i++) {
        if (r->prs[i].id == r->cfg.id) continue;
        struct raft_msg *m = new_msg(r, pre ? RAFT_MSG_PREVOTE : RAFT_MSG_VOTE, r->prs[i].id);
        if (!m) return;
        if (pre) m->term = r->term + 1;
        m->index = raft_last_index(r);
        m->log_term = last_term(r);
    }
}

static void campaign(struct raft *r, bool pre) {
    r->n_for = r->n_against = 0;
    r->votes_for[r->n_for++] = r->cfg.id;
    r->leader = 0;
    r->role_dirty = true;
    reset_election_timeout(r);
    if (pre) {
        r->role = RAFT_PRE_CANDIDATE;
    } else {
        r->role = RAFT_CANDIDATE;
        set_term(r, r->term + 1);
        r->vote = r->cfg.id;
        r->hs_dirty = true;
    }
    if (r->n_for >= quorum(r)) {
        if (pre) campaign(r, false);
        else become_leader(r);
        return;
    }
    send_votes(r, pre);
}

/* ---- leader: replication ---------------------------------------------------------------- */

static void infl_add(struct raft_progress *pr, raft_index last) {
    pr->infl[(pr->infl_head + pr->infl_count) % RAFT_MAX_INFLIGHT] = last;
    pr->infl_count++;
}

static void infl_free_to(struct raft_progress *pr, raft_index match) {
    while (pr->infl_count && pr->infl[pr->infl_head] <= match) {
        pr->infl_head = (pr->infl_head + 1) % RAFT_MAX_INFLIGHT;
        pr->infl_count--;
    }
}

static void infl_free_first(struct raft_progress *pr) {
    if (!pr->infl_count) return;
    pr->infl_head = (pr->infl_head + 1) % RAFT_MAX_INFLIGHT;
    pr->infl_count--;
}

static void to_probe(struct raft_progress *pr, raft_index next) {
    pr->replicate = false;
    pr->paused = false;
    pr->next = next;
    pr->infl_head = pr->infl_count = 0;
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
    if (pr->id == r->cfg.id) return;
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
        infl_add(pr, pr->next - 1);
    }
}

static void bcast_append(struct raft *r) {
    for (unsigned i = 0; i < r->cfg.n_peers; i++) send_append(r, &r->prs[i]);
}

static void bcast_heartbeat(struct raft *r) {
    for (unsigned i = 0; i < r->cfg.n_peers; i++) {
        struct raft_progress *pr = &r->prs[i];
        if (pr->id == r->cfg.id) continue;
        struct raft_msg *m = new_msg(r, RAFT_MSG_HEARTBEAT, pr->id);
        if (!m) return;
        m->commit = pr->match < r->commit ? pr->match : r->commit;
    }
}

static void maybe_commit(struct raft *r) {
    raft_index m[RAFT_MAX_NODES] = {0};
    unsigned n = r->cfg.n_peers;
    for (unsigned i = 0; i < n; i++)
        m[i] = r->prs[i].id == r->cfg.id ? r->persisted : r->prs[i].match;
    for (unsigned i = 1; i < n; i++) /* insertion sort, descending */
        for (unsigned j = i; j > 0 && m[j] > m[j - 1]; j--) {
            raft_index t = m[j];
            m[j] = m[j - 1];
            m[j - 1] = t;
        }
    raft_index q = m[quorum(r) - 1]; /* highest index stored on a quorum */
    if (q <= r->commit) return;
#ifndef RAFT_BUG_COMMIT_OLD_TERM
    if (raft_term_at(r, q) != r->term) return; /* only current-term entries commit by counting */
#endif
    r->commit = q;
    bcast_append(r); /* tell followers the new commit index (carried by appends) */
}

static void leader_append_resp(struct raft *r, const struct raft_msg *m) {
    struct raft_progress *pr = progress(r, m->from);
    if (!pr) return;
    pr->recent_active = true;
    if (m->reject) {
        /* stale rejections: in replicate mode anything at or below match, in probe mode
         * anything but the probe we sent */
        if (pr->replicate ? m->index <= pr->match : m->index != pr->next - 1) return;
        raft_index k = m->hint_index;
        if (m->log_term) /* largest index <= hint whose term <= the follower's term there */
            while (k > 0 && raft_term_at(r, k) > m->log_term) k--;
        raft_index next = k + 1;
        if (next > m->index) next = m->index; /* always back up at least one */
        if (next < pr->match + 1) next = pr->match + 1;
        to_probe(pr, next);
        send_append(r, pr);
        return;
    }
    if (m->index > pr->match) {
        pr->match = m->index;
        pr->stall = 0;
        if (pr->next < pr->match + 1) pr->next = pr->match + 1;
        if (!pr->replicate) {
            pr->replicate = true;
            pr->paused = false;
            pr->next = pr->match + 1;
            pr->infl_head = pr->infl_count = 0;
        } else {
            infl_free_to(pr, pr->match);
        }
        maybe_commit(r);
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
    pr->paused = false;
    /* a lost AppendEntries would otherwise hold its in-flight slot forever */
    if (pr->replicate && pr->infl_count >= r->cfg.max_inflight) infl_free_first(pr);
    /* no progress for several heartbeats while entries are outstanding: the appends were lost,
     * fall back to probing from the last known match */
    if (pr->replicate && pr->match + 1 < pr->next && ++pr->stall >= r->cfg.election_ticks) {
        pr->stall = 0;
        to_probe(pr, pr->match + 1);
    }
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

static void follower_append(struct raft *r, const struct raft_msg *m) {
    raft_index prev = m->index;
    if (prev > raft_last_index(r) || raft_term_at(r, prev) != m->log_term) {
        struct raft_msg *resp = new_msg(r, RAFT_MSG_APPEND_RESP, m->from);
        if (!resp) return;
        resp->reject = true;
        resp->index = prev;
        raft_index k = prev < raft_last_index(r) ? prev : raft_last_index(r);
        while (k > r->commit && raft_term_at(r, k) > m->log_term) k--;
        resp->hint_index = k;
        resp->log_term = raft_term_at(r, k);
        return;
    }
    for (uint32_t i = 0; i < m->n_entries; i++) {
        raft_index idx = prev + 1 + i;
        const struct raft_entry *e = &m->entries[i];
        if (idx <= raft_last_index(r)) {
            if (raft_term_at(r, idx) == e->term) continue;
            if (idx <= r->commit) return; /* cannot happen in a correct cluster */
            log_truncate(r, idx);
        }
        if (log_append(r, e->term, e->type, e->data, e->len)) return;
    }
    raft_index last_new = prev + m->n_entries;
    commit_to(r, m->commit < last_new ? m->commit : last_new);
    if (r->persisted >= last_new) send_append_ack(r, m->from, last_new);
    else if (r->ack_pending < last_new) r->ack_pending = last_new;
}

/* ---- votes ------------------------------------------------------------------------------ */

static bool log_up_to_date(const struct raft *r, raft_index idx, raft_term t) {
    return t > last_term(r) || (t == last_term(r) && idx >= raft_last_index(r));
}

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

static bool record_vote(raft_id *set, unsigned *n, raft_id id) {
    for (unsigned i = 0; i < *n; i++)
        if (set[i] == id) return false;
    set[(*n)++] = id;
    return true;
}

static void handle_vote_resp(struct raft *r, const struct raft_msg *m) {
    bool pre = m->type == RAFT_MSG_PREVOTE_RESP;
    if (pre != (r->role == RAFT_PRE_CANDIDATE)) return;
    if (!progress(r, m->from)) return;
    if (m->reject) {
        for (unsigned i = 0; i < r->n_for; i++)
            if (r->votes_for[i] == m->from) return;
        record_vote(r->votes_against, &r->n_against, m->from);
    } else {
        for (unsigned i = 0; i < r->n_against; i++)
            if (r->votes_against[i] == m->from) return;
        record_vote(r->votes_for, &r->n_for, m->from);
    }
    if (r->n_for >= quorum(r)) {
        if (pre) campaign(r, false);
        else become_leader(r);
    } else if (r->n_against >= quorum(r)) {
        become_follower(r, r->term, 0);
    }
}

/* ---- message dispatch ------------------------------------------------------------------- */

static bool is_vote_req(uint32_t t) { return t == RAFT_MSG_VOTE || t == RAFT_MSG_PREVOTE; }

static void receive(struct raft *r, const struct raft_msg *m) {
    if (m->to != r->cfg.id || m->from == r->cfg.id || !progress(r, m->from)) return;
    if (m->term > r->term) {
        if (is_vote_req(m->type) && r->cfg.check_quorum && r->leader != 0 &&
            r->election_elapsed < r->cfg.election_ticks)
            return; /* we heard from a live leader recently: ignore disruptive candidates */
        if (m->type == RAFT_MSG_PREVOTE) {
            /* never changes our term */
        } else if (m->type == RAFT_MSG_PREVOTE_RESP && !m->reject) {
            /* the grant carries the term we would campaign at */
        } else {
            bool from_leader = m->type == RAFT_MSG_APPEND || m->type == RAFT_MSG_HEARTBEAT;
            become_follower(r, m->term, from_leader ? m->from : 0);
        }
    } else if (m->term < r->term) {
        if (m->type == RAFT_MSG_APPEND || m->type == RAFT_MSG_HEARTBEAT) {
            /* a stale leader: tell it about the new term so it steps down */
            new_msg(r, RAFT_MSG_APPEND_RESP, m->from);
        } else if (m->type == RAFT_MSG_PREVOTE) {
            struct raft_msg *resp = new_msg(r, RAFT_MSG_PREVOTE_RESP, m->from);
            if (resp) resp->reject = true;
        }
        return;
    }

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
        if (r->role == RAFT_LEADER) break; /* same term, two leaders: impossible */
        if (r->role != RAFT_FOLLOWER || r->leader != m->from) become_follower(r, m->term, m->from);
        r->election_elapsed = 0;
        if (m->type == RAFT_MSG_APPEND) {
            follower_append(r, m);
        } else {
            commit_to(r, m->commit);
            new_msg(r, RAFT_MSG_HEARTBEAT_RESP, m->from);
        }
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

static void tick(struct raft *r) {
    r->election_elapsed++;
    if (r->role == RAFT_LEADER) {
        if (++r->heartbeat_elapsed >= r->cfg.heartbeat_ticks) {
            r->heartbeat_elapsed = 0;
            bcast_heartbeat(r);
        }
        if (r->election_elapsed >= r->cfg.election_ticks) {
            r->election_elapsed = 0;
            if (r->cfg.check_quorum) {
                unsigned active = 0;
                for (unsigned i = 0; i < r->cfg.n_peers; i++) {
                    struct raft_progress *pr = &r->prs[i];
                    if (pr->id == r->cfg.id || pr->recent_active) active++;
                    pr->recent_active = false;
                }
                if (active < quorum(r)) become_follower(r, r->term, 0);
            }
        }
        return;
    }
    if (r->election_elapsed >= r->election_timeout) campaign(r, r->cfg.pre_vote);
}

static void persisted(struct raft *r, raft_index idx, raft_term t) {
    /* stale if the write was overtaken by a truncation */
    if (idx > raft_last_index(r) || raft_term_at(r, idx) != t || idx <= r->persisted) return;
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
    if (log_append(r, r->term, RAFT_ENTRY_NORMAL, data, len)) return RAFT_ENOMEM;
    out->proposed_index = raft_last_index(r);
    out->proposed_term = r->term;
    bcast_append(r);
    return RAFT_OK;
}

static void finish(struct raft *r, struct raft_update *out) {
    if (r->hs_dirty) {
        out->flags |= RAFT_UPD_HARD_STATE;
        r->hs_dirty = false;
    }
    out->term = r->term;
    out->vote = r->vote;
    if (r->dirty_from && r->dirty_from <= raft_last_index(r) + 1) {
        out->flags |= RAFT_UPD_ENTRIES;
        out->entries_first = r->dirty_from;
        out->entries = r->log + (r->dirty_from - r->log_offset - 1);
        out->n_entries = raft_last_index(r) + 1 - r->dirty_from;
    }
    r->dirty_from = 0;
    for (size_t i = 0; i < r->n_out; i++) {
        struct raft_msg *m = &r->out_msgs[i];
        if (m->type == RAFT_MSG_APPEND && m->n_entries)
            m->entries = r->log + (m->index + 1 - r->log_offset - 1);
    }
    if (r->n_out) out->flags |= RAFT_UPD_MESSAGES;
    out->msgs = r->out_msgs;
    out->n_msgs = r->n_out;
    raft_index lim = r->commit < r->persisted ? r->commit : r->persisted;
    if (lim > r->applied) {
        out->flags |= RAFT_UPD_APPLY;
        out->apply_first = r->applied + 1;
        out->apply = r->log + (r->applied - r->log_offset);
        out->n_apply = lim - r->applied;
        r->applied = lim;
    }
    if (r->role_dirty) {
        out->flags |= RAFT_UPD_ROLE;
        r->role_dirty = false;
    }
    out->conf = &r->conf;
    out->role = r->role;
    out->leader = r->leader;
    out->commit = r->commit;
}

int raft_step(struct raft *r, const struct raft_event *ev, struct raft_update *out) {
    memset(out, 0, sizeof *out);
    r->n_out = 0;
    int rc = RAFT_OK;
    switch (ev->type) {
    case RAFT_EV_TICK: tick(r); break;
    case RAFT_EV_RECEIVE: receive(r, ev->u.msg); break;
    case RAFT_EV_PERSISTED: persisted(r, ev->u.persisted.index, ev->u.persisted.term); break;
    case RAFT_EV_PROPOSE: rc = propose(r, ev->u.propose.data, ev->u.propose.len, out); break;
    default: rc = RAFT_EINVAL; break;
    }
    finish(r, out);
    return rc;
}

/* ---- lifecycle -------------------------------------------------------------------------- */

int raft_init(struct raft *r, const struct raft_config *cfg) {
    if (!cfg->id || !cfg->n_peers || cfg->n_peers > RAFT_MAX_NODES || !cfg->election_ticks ||
        !cfg->heartbeat_ticks || !cfg->max_batch || !cfg->max_inflight ||
        cfg->max_inflight > RAFT_MAX_INFLIGHT)
        return RAFT_EINVAL;
    memset(r, 0, sizeof *r);
    r->cfg = *cfg;
    bool self = false;
    for (unsigned i = 0; i < cfg->n_peers; i++) {
        r->prs[i].id = cfg->peers[i];
        self |= cfg->peers[i] == cfg->id;
        r->conf.voters[r->conf.n_voters++] = cfg->peers[i];
    }
    if (!self) return RAFT_EINVAL;
    r->rng = cfg->seed ^ ((uint64_t)cfg->id << 32);
    r->role = RAFT_FOLLOWER;
    reset_election_timeout(r);
    return RAFT_OK;
}

int raft_restore(struct raft *r, raft_term term, raft_id vote, const struct raft_snapshot_meta *snap,
                 raft_index first, const struct raft_entry *entries, size_t n) {
    if (snap || first != 1) return RAFT_EINVAL; /* TODO(issue 4): snapshots */
    r->term = term;
    r->vote = vote;
    for (size_t i = 0; i < n; i++)
        if (log_append(r, entries[i].term, entries[i].type, entries[i].data, entries[i].len))
            return RAFT_ENOMEM;
    r->persisted = raft_last_index(r);
    r->dirty_from = 0;
    return RAFT_OK;
}

void raft_free(struct raft *r) {
    for (size_t i = 0; i < r->log_len; i++) free(r->log[i].data);
    free(r->log);
    free(r->out_msgs);
    memset(r, 0, sizeof *r);
}
