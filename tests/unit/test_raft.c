/* test_raft.c - unit tests of raft/: the Raft paper's rules driven by hand-made messages, and the
 * milestone 2 features (membership, snapshots, transfer, read-index, quiescence, memory) on single
 * nodes or on a small in-test cluster (cl_*: a FIFO network of deep-copied messages, writes that
 * complete at once unless a node is in manual mode, links that can be cut). */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "raft/raft.h"

static struct raft_update U; /* the last update */

static void mk(struct raft *r, raft_id id, unsigned n, bool pre_vote, bool check_quorum) {
    struct raft_config c = {.id = id, .n_peers = n, .election_ticks = 10, .heartbeat_ticks = 1,
                            .max_inflight = 4, .max_batch = 8, .pre_vote = pre_vote,
                            .check_quorum = check_quorum, .seed = 42};
    for (unsigned i = 0; i < n; i++) c.peers[i] = i + 1;
    assert_int_equal(raft_init(r, &c), RAFT_OK);
}

/* A node restored with a log given as a list of terms. */
static void mk_log(struct raft *r, raft_id id, unsigned n, raft_term term, const raft_term *terms,
                   size_t len) {
    mk(r, id, n, false, false);
    struct raft_entry e[32];
    for (size_t i = 0; i < len; i++) e[i] = (struct raft_entry){terms[i], RAFT_ENTRY_NOOP, 0, NULL};
    assert_int_equal(raft_restore(r, term, 0, NULL, 1, e, len), RAFT_OK);
}

static int recv(struct raft *r, struct raft_msg m) {
    m.to = r->cfg.id;
    struct raft_event ev = {.type = RAFT_EV_RECEIVE};
    ev.u.msg = &m;
    return raft_step(r, &ev, &U);
}

static void tick(struct raft *r, unsigned n) {
    struct raft_event ev = {.type = RAFT_EV_TICK};
    for (unsigned i = 0; i < n; i++) raft_step(r, &ev, &U);
}

/* Tick until the election timeout fires; U then holds the campaign's messages. */
static void timeout(struct raft *r) {
    enum raft_role role = r->role;
    struct raft_event ev = {.type = RAFT_EV_TICK};
    for (unsigned i = 0; i < 100 && r->role == role; i++) raft_step(r, &ev, &U);
    assert_int_not_equal(r->role, role);
}

static void persist_all(struct raft *r) {
    struct raft_event ev = {.type = RAFT_EV_PERSISTED};
    ev.u.persisted.index = raft_last_index(r);
    ev.u.persisted.term = raft_term_at(r, raft_last_index(r));
    raft_step(r, &ev, &U);
}

static const struct raft_msg *find(uint32_t type, raft_id to) {
    for (size_t i = 0; i < U.n_msgs; i++)
        if (U.msgs[i].type == type && U.msgs[i].to == to) return &U.msgs[i];
    return NULL;
}

static struct raft_msg vote(raft_id from, raft_term term, raft_index li, raft_term lt) {
    return (struct raft_msg){.type = RAFT_MSG_VOTE, .from = from, .term = term, .index = li, .log_term = lt};
}

/* Make node 1 of 3 leader at term (term 0 state + one election). */
static void elect(struct raft *r) {
    timeout(r);
    assert_int_equal(r->role, RAFT_CANDIDATE);
    recv(r, (struct raft_msg){.type = RAFT_MSG_VOTE_RESP, .from = 2, .term = r->term});
    assert_int_equal(r->role, RAFT_LEADER);
}

static void test_election_restriction(void **state) {
    (void)state;
    const raft_term terms[] = {1, 1, 2};
    struct raft r;
    mk_log(&r, 1, 3, 2, terms, 3);
    /* older last term: refused even with a longer log */
    recv(&r, vote(2, 3, 10, 1));
    assert_true(find(RAFT_MSG_VOTE_RESP, 2)->reject);
    assert_int_equal(r.vote, 0);
    /* same last term, shorter log: refused */
    recv(&r, vote(3, 3, 2, 2));
    assert_true(find(RAFT_MSG_VOTE_RESP, 3)->reject);
    raft_free(&r);
    mk_log(&r, 1, 3, 2, terms, 3);
    /* same last term, same length: granted, and persisted as hard state */
    recv(&r, vote(3, 3, 3, 2));
    assert_false(find(RAFT_MSG_VOTE_RESP, 3)->reject);
    assert_true(U.flags & RAFT_UPD_HARD_STATE);
    assert_int_equal(U.vote, 3);
    assert_int_equal(U.term, 3);
    raft_free(&r);
}

static void test_vote_once_per_term(void **state) {
    (void)state;
    struct raft r;
    mk(&r, 1, 3, false, false);
    recv(&r, vote(2, 1, 0, 0));
    assert_false(find(RAFT_MSG_VOTE_RESP, 2)->reject);
    recv(&r, vote(3, 1, 0, 0));
    assert_true(find(RAFT_MSG_VOTE_RESP, 3)->reject);
    recv(&r, vote(2, 1, 0, 0)); /* a retransmission to the same candidate is granted again */
    assert_false(find(RAFT_MSG_VOTE_RESP, 2)->reject);
    recv(&r, vote(3, 2, 0, 0)); /* a new term frees the vote */
    assert_false(find(RAFT_MSG_VOTE_RESP, 3)->reject);
    assert_int_equal(r.vote, 3);
    raft_free(&r);
}

static void test_higher_term_steps_down(void **state) {
    (void)state;
    struct raft r;
    mk(&r, 1, 3, false, false);
    elect(&r);
    raft_term t = r.term;
    recv(&r, (struct raft_msg){.type = RAFT_MSG_APPEND_RESP, .from = 2, .term = t + 1});
    assert_int_equal(r.role, RAFT_FOLLOWER);
    assert_int_equal(r.term, t + 1);
    assert_true(U.flags & RAFT_UPD_HARD_STATE);
    /* a candidate steps down on an AppendEntries of its own term */
    timeout(&r);
    assert_int_equal(r.role, RAFT_CANDIDATE);
    recv(&r, (struct raft_msg){.type = RAFT_MSG_HEARTBEAT, .from = 3, .term = r.term});
    assert_int_equal(r.role, RAFT_FOLLOWER);
    assert_int_equal(r.leader, 3);
    assert_int_equal(r.term, t + 2);
    raft_free(&r);
}

static void test_stale_term_rejected(void **state) {
    (void)state;
    struct raft r;
    mk(&r, 1, 3, false, false);
    recv(&r, vote(2, 5, 0, 0));
    assert_int_equal(r.term, 5);
    struct raft_entry e = {3, RAFT_ENTRY_NOOP, 0, NULL};
    recv(&r, (struct raft_msg){.type = RAFT_MSG_APPEND, .from = 3, .term = 3, .n_entries = 1, .entries = &e});
    assert_int_equal(raft_last_index(&r), 0); /* not appended */
    const struct raft_msg *m = find(RAFT_MSG_APPEND_RESP, 3);
    assert_non_null(m); /* the stale leader learns the new term */
    assert_int_equal(m->term, 5);
    recv(&r, vote(3, 4, 9, 9));
    assert_null(find(RAFT_MSG_VOTE_RESP, 3));
    assert_int_equal(r.vote, 2);
    raft_free(&r);
}

/* Figure 8: a leader must not commit an entry of an older term by counting replicas. */
static void test_commit_only_current_term(void **state) {
    (void)state;
    const raft_term terms[] = {1, 2};
    struct raft r;
    mk_log(&r, 1, 5, 3, terms, 2); /* S1 has (1,1)(2,2), now at term 3 */
    timeout(&r);
    recv(&r, (struct raft_msg){.type = RAFT_MSG_VOTE_RESP, .from = 2, .term = 4});
    recv(&r, (struct raft_msg){.type = RAFT_MSG_VOTE_RESP, .from = 3, .term = 4});
    assert_int_equal(r.role, RAFT_LEADER);
    assert_int_equal(r.term, 4);
    assert_int_equal(raft_last_index(&r), 3); /* no-op at index 3 */
    /* S2 and S3 hold index 2 (term 2) but not yet the no-op: 3 of 5 hold index 2 */
    recv(&r, (struct raft_msg){.type = RAFT_MSG_APPEND_RESP, .from = 2, .term = 4, .index = 2});
    recv(&r, (struct raft_msg){.type = RAFT_MSG_APPEND_RESP, .from = 3, .term = 4, .index = 2});
    persist_all(&r);
    assert_int_equal(r.commit, 0); /* index 2 is from term 2: not committed by counting */
    recv(&r, (struct raft_msg){.type = RAFT_MSG_APPEND_RESP, .from = 2, .term = 4, .index = 3});
    assert_int_equal(r.commit, 0);
    recv(&r, (struct raft_msg){.type = RAFT_MSG_APPEND_RESP, .from = 3, .term = 4, .index = 3});
    assert_int_equal(r.commit, 3); /* the current-term no-op commits, and index 2 with it */
    assert_true(U.flags & RAFT_UPD_APPLY);
    assert_int_equal(U.apply_first, 1);
    assert_int_equal(U.n_apply, 3);
    raft_free(&r);
}

/* The leader counts itself only once its own entries are persisted. */
static void test_leader_counts_itself_after_persist(void **state) {
    (void)state;
    struct raft r;
    mk(&r, 1, 3, false, false);
    elect(&r);
    recv(&r, (struct raft_msg){.type = RAFT_MSG_APPEND_RESP, .from = 2, .term = r.term, .index = 1});
    assert_int_equal(r.commit, 0); /* 2 of 3 needed: the leader's no-op is not on its disk yet */
    persist_all(&r);
    assert_int_equal(r.commit, 1);
    raft_free(&r);
}

static void test_log_matching_and_truncation(void **state) {
    (void)state;
    const raft_term terms[] = {1, 1, 2, 2};
    struct raft r;
    mk_log(&r, 2, 3, 2, terms, 4);
    /* prev entry mismatch: rejected with a hint, log untouched */
    struct raft_entry e[2] = {{3, RAFT_ENTRY_NOOP, 0, NULL}, {3, RAFT_ENTRY_NOOP, 0, NULL}};
    recv(&r, (struct raft_msg){.type = RAFT_MSG_APPEND, .from = 1, .term = 3, .index = 4, .log_term = 3,
                               .n_entries = 1, .entries = e});
    const struct raft_msg *m = find(RAFT_MSG_APPEND_RESP, 1);
    assert_true(m->reject);
    /* hint: the follower's last index whose term <= the leader's prev term, and that term */
    assert_int_equal(m->hint_index, 4);
    assert_int_equal(m->log_term, 2);
    assert_int_equal(raft_last_index(&r), 4);
    /* prev beyond the log: the hint is the follower's last index */
    recv(&r, (struct raft_msg){.type = RAFT_MSG_APPEND, .from = 1, .term = 3, .index = 9, .log_term = 3,
                               .n_entries = 1, .entries = e});
    m = find(RAFT_MSG_APPEND_RESP, 1);
    assert_true(m->reject);
    assert_int_equal(m->hint_index, 4);
    raft_free(&r);
}

static void test_conflict_truncation(void **state) {
    (void)state;
    const raft_term terms[] = {1, 1, 2, 2};
    struct raft r;
    mk_log(&r, 2, 3, 2, terms, 4);
    struct raft_entry e[2] = {{3, RAFT_ENTRY_NOOP, 0, NULL}, {3, RAFT_ENTRY_NOOP, 0, NULL}};
    recv(&r, (struct raft_msg){.type = RAFT_MSG_APPEND, .from = 1, .term = 3, .index = 2, .log_term = 1,
                               .n_entries = 2, .entries = e, .commit = 1});
    assert_int_equal(raft_last_index(&r), 4);
    assert_int_equal(raft_term_at(&r, 3), 3); /* entries 3-4 of term 2 replaced */
    assert_int_equal(raft_term_at(&r, 4), 3);
    assert_true(U.flags & RAFT_UPD_ENTRIES);
    assert_int_equal(U.entries_first, 3);
    assert_int_equal(U.n_entries, 2);
    /* no acknowledgement before the entries are persisted */
    assert_null(find(RAFT_MSG_APPEND_RESP, 1));
    persist_all(&r);
    const struct raft_msg *m = find(RAFT_MSG_APPEND_RESP, 1);
    assert_non_null(m);
    assert_false(m->reject);
    assert_int_equal(m->index, 4);
    /* a duplicate of an older AppendEntries does not truncate */
    recv(&r, (struct raft_msg){.type = RAFT_MSG_APPEND, .from = 1, .term = 3, .index = 2, .log_term = 1,
                               .n_entries = 1, .entries = e});
    assert_int_equal(raft_last_index(&r), 4);
    raft_free(&r);
}

static void test_prevote_keeps_term(void **state) {
    (void)state;
    struct raft r;
    mk(&r, 1, 3, true, false);
    timeout(&r);
    assert_int_equal(r.role, RAFT_PRE_CANDIDATE);
    assert_int_equal(r.term, 0);
    const struct raft_msg *m = find(RAFT_MSG_PREVOTE, 2);
    assert_non_null(m);
    assert_int_equal(m->term, 1);
    /* a receiver of a pre-vote does not bump its term either */
    struct raft f;
    mk(&f, 2, 3, true, false);
    recv(&f, (struct raft_msg){.type = RAFT_MSG_PREVOTE, .from = 1, .term = 1});
    assert_int_equal(f.term, 0);
    assert_int_equal(f.vote, 0);
    const struct raft_msg *g = find(RAFT_MSG_PREVOTE_RESP, 1);
    assert_false(g->reject);
    assert_int_equal(g->term, 1);
    /* the grant makes the pre-candidate a real candidate at term 1 */
    recv(&r, *g);
    assert_int_equal(r.role, RAFT_CANDIDATE);
    assert_int_equal(r.term, 1);
    raft_free(&r);
    raft_free(&f);
}

static void test_check_quorum_step_down(void **state) {
    (void)state;
    struct raft r;
    mk(&r, 1, 3, false, true);
    elect(&r);
    tick(&r, 10); /* first check: everyone counted active at election */
    assert_int_equal(r.role, RAFT_LEADER);
    tick(&r, 10); /* nobody answered for a whole election timeout */
    assert_int_equal(r.role, RAFT_FOLLOWER);
    assert_int_equal(r.leader, 0);
    raft_free(&r);
    /* a leader that hears from one follower stays */
    mk(&r, 1, 3, false, true);
    elect(&r);
    for (int i = 0; i < 30; i++) {
        tick(&r, 1);
        recv(&r, (struct raft_msg){.type = RAFT_MSG_HEARTBEAT_RESP, .from = 2, .term = r.term});
    }
    assert_int_equal(r.role, RAFT_LEADER);
    raft_free(&r);
}

/* ---- milestone 2: a small cluster harness ----------------------------------------------- */

/* Nodes 1..n over a FIFO network with deep-copied messages. Log and snapshot writes complete at
 * once (PERSISTED is stepped right after the update) unless the node is in manual mode, where the
 * test completes them with cl_persist(). cut[a][b] drops messages from a to b. */
#define NMAX 5
#define QMAX 4096

struct qmsg {
    struct raft_msg m;
    struct raft_entry *ents;
    struct raft_snapshot_meta snap;
};

struct cluster {
    unsigned n;
    struct raft r[NMAX + 1];
    bool manual[NMAX + 1], cut[NMAX + 1][NMAX + 1];
    raft_index w_index[NMAX + 1]; /* manual mode: the last write issued, not yet persisted */
    raft_term w_term[NMAX + 1];
    raft_index applied[NMAX + 1]; /* last index handed to the state machine (or snapshot) */
    uint32_t flags[NMAX + 1];     /* union of update flags since the test last cleared it */
    unsigned installs[NMAX + 1];
    struct raft_snapshot_meta installed[NMAX + 1];
    struct raft_read_state reads[NMAX + 1][16];
    size_t n_reads[NMAX + 1];
    raft_index compact_index[NMAX + 1];
    struct qmsg q[QMAX];
    size_t qh, qt;
};

static struct cluster CL;

static void cl_step(struct cluster *c, raft_id id, const struct raft_event *ev);

static void cl_queue(struct cluster *c, const struct raft_msg *m) {
    assert_true(c->qt < QMAX);
    struct qmsg *x = &c->q[c->qt++];
    x->m = *m;
    x->ents = NULL;
    if (m->n_entries) {
        x->ents = calloc(m->n_entries, sizeof *x->ents);
        for (uint32_t i = 0; i < m->n_entries; i++) {
            x->ents[i] = m->entries[i];
            if (m->entries[i].len) {
                x->ents[i].data = malloc(m->entries[i].len);
                memcpy(x->ents[i].data, m->entries[i].data, m->entries[i].len);
            }
        }
    }
    x->m.entries = x->ents;
    if (m->snap) {
        x->snap = *m->snap;
        x->m.snap = &x->snap;
    }
}

static void cl_process(struct cluster *c, raft_id id, int rc, const struct raft_update *u) {
    (void)rc;
    c->flags[id] |= u->flags;
    assert_non_null(u->conf); /* always set */
    for (size_t i = 0; i < u->n_msgs; i++) cl_queue(c, &u->msgs[i]);
    if (u->flags & RAFT_UPD_SNAPSHOT) {
        c->installs[id]++;
        c->installed[id] = u->snapshot;
        c->applied[id] = u->snapshot.index;
        c->w_index[id] = u->snapshot.index;
        c->w_term[id] = u->snapshot.term;
    }
    if ((u->flags & RAFT_UPD_ENTRIES) && u->n_entries) {
        c->w_index[id] = u->entries_first + u->n_entries - 1;
        c->w_term[id] = u->entries[u->n_entries - 1].term;
    }
    if (u->flags & RAFT_UPD_APPLY) {
        assert_int_equal(u->apply_first, c->applied[id] + 1); /* in order, no gap */
        c->applied[id] += u->n_apply;
    }
    for (size_t i = 0; i < u->n_reads; i++) c->reads[id][c->n_reads[id]++] = u->reads[i];
    if (u->flags & RAFT_UPD_COMPACT) c->compact_index[id] = u->compact_index;
    if (c->w_index[id] && !c->manual[id]) {
        struct raft_event ev = {.type = RAFT_EV_PERSISTED};
        ev.u.persisted.index = c->w_index[id];
        ev.u.persisted.term = c->w_term[id];
        c->w_index[id] = 0;
        cl_step(c, id, &ev);
    }
}

static void cl_step(struct cluster *c, raft_id id, const struct raft_event *ev) {
    struct raft_update u;
    int rc = raft_step(&c->r[id], ev, &u);
    cl_process(c, id, rc, &u);
}

static int cl_step_rc(struct cluster *c, raft_id id, const struct raft_event *ev) {
    struct raft_update u;
    int rc = raft_step(&c->r[id], ev, &u);
    U = u;
    cl_process(c, id, rc, &u);
    return rc;
}

static void cl_persist(struct cluster *c, raft_id id) {
    if (!c->w_index[id]) return;
    struct raft_event ev = {.type = RAFT_EV_PERSISTED};
    ev.u.persisted.index = c->w_index[id];
    ev.u.persisted.term = c->w_term[id];
    c->w_index[id] = 0;
    cl_step(c, id, &ev);
}

/* Deliver everything queued (and what that causes) until the network is quiet. */
static void cl_deliver(struct cluster *c) {
    for (unsigned k = 0; c->qh < c->qt; k++) {
        assert_true(k < 100000);
        struct qmsg x = c->q[c->qh++];
        if (x.m.snap) x.m.snap = &x.snap;
        if (x.m.to >= 1 && x.m.to <= c->n && !c->cut[x.m.from][x.m.to]) {
            struct raft_event ev = {.type = RAFT_EV_RECEIVE};
            ev.u.msg = &x.m;
            cl_step(c, x.m.to, &ev);
        }
        for (uint32_t i = 0; i < x.m.n_entries; i++) free(x.ents[i].data);
        free(x.ents);
    }
    c->qh = c->qt = 0;
}

static void cl_drop_queue(struct cluster *c) {
    for (size_t k = c->qh; k < c->qt; k++) {
        for (uint32_t i = 0; i < c->q[k].m.n_entries; i++) free(c->q[k].ents[i].data);
        free(c->q[k].ents);
    }
    c->qh = c->qt = 0;
}

static void cl_tick(struct cluster *c, raft_id id, unsigned n) {
    struct raft_event ev = {.type = RAFT_EV_TICK};
    for (unsigned i = 0; i < n; i++) cl_step(c, id, &ev);
}

/* n nodes, of which nodes 1..voters are the founding voters; the others join later (no peers). */
static void cl_init(struct cluster *c, unsigned voters, unsigned n, bool pre_vote, bool check_quorum) {
    memset(c, 0, sizeof *c);
    c->n = n;
    for (raft_id id = 1; id <= n; id++) {
        struct raft_config cfg = {.id = id, .election_ticks = 10, .heartbeat_ticks = 1,
                                  .max_inflight = 4, .max_batch = 8, .pre_vote = pre_vote,
                                  .check_quorum = check_quorum, .seed = 7};
        if (id <= voters) {
            cfg.n_peers = voters;
            for (unsigned i = 0; i < voters; i++) cfg.peers[i] = i + 1;
        }
        assert_int_equal(raft_init(&c->r[id], &cfg), RAFT_OK);
    }
}

static void cl_free(struct cluster *c) {
    cl_drop_queue(c);
    for (raft_id id = 1; id <= c->n; id++) raft_free(&c->r[id]);
}

/* One heartbeat round from the leader, answered. */
static void cl_heartbeat(struct cluster *c, raft_id id) {
    cl_tick(c, id, c->r[id].cfg.heartbeat_ticks);
    cl_deliver(c);
}

/* Node id times out, wins (everyone else is idle) and commits its no-op everywhere. */
static void cl_elect(struct cluster *c, raft_id id) {
    struct raft_event ev = {.type = RAFT_EV_TICK};
    for (unsigned i = 0; i < 100 && c->r[id].role != RAFT_LEADER; i++) {
        cl_step(c, id, &ev);
        cl_deliver(c);
    }
    assert_int_equal(c->r[id].role, RAFT_LEADER);
    cl_heartbeat(c, id);
}

static int cl_propose(struct cluster *c, raft_id id, const char *s) {
    struct raft_event ev = {.type = RAFT_EV_PROPOSE};
    ev.u.propose.data = s;
    ev.u.propose.len = (uint32_t)strlen(s);
    return cl_step_rc(c, id, &ev);
}

static int cl_conf(struct cluster *c, raft_id id, uint32_t op, raft_id who) {
    struct raft_event ev = {.type = RAFT_EV_CONF_CHANGE};
    ev.u.conf.op = op;
    ev.u.conf.id = who;
    return cl_step_rc(c, id, &ev);
}

static struct raft_conf conf_of(const raft_id *voters, unsigned nv, const raft_id *learners, unsigned nl) {
    struct raft_conf c;
    memset(&c, 0, sizeof c);
    for (unsigned i = 0; i < nv; i++) c.voters[c.n_voters++] = voters[i];
    for (unsigned i = 0; i < nl; i++) c.learners[c.n_learners++] = learners[i];
    return c;
}

static const struct raft_progress *pr_of(const struct raft *r, raft_id id) {
    for (unsigned i = 0; i < r->n_prs; i++)
        if (r->prs[i].id == id) return &r->prs[i];
    return NULL;
}

static bool conf_equal(const struct raft_conf *a, const struct raft_conf *b) {
    if (a->n_voters != b->n_voters || a->n_learners != b->n_learners) return false;
    for (unsigned i = 0; i < a->n_voters; i++)
        if (!raft_conf_is_voter(b, a->voters[i])) return false;
    for (unsigned i = 0; i < a->n_learners; i++)
        if (!raft_conf_has(b, a->learners[i]) || raft_conf_is_voter(b, a->learners[i])) return false;
    return true;
}

static int step_ev(struct raft *r, struct raft_event ev) { return raft_step(r, &ev, &U); }

/* ---- membership ------------------------------------------------------------------------- */

/* A committed entry applies on every follower within message delays, without waiting for a
 * heartbeat: caught-up followers get the new commit index in an empty append, and so does a
 * follower outside the quorum once it catches up. No tick is stepped after the proposal. */
static void test_commit_reaches_followers_without_heartbeat(void **state) {
    (void)state;
    struct cluster *c = &CL;
    cl_init(c, 3, 3, true, true);
    cl_elect(c, 1);
    raft_index base = c->r[1].commit;
    /* all three up: everyone applies the entry */
    assert_int_equal(cl_propose(c, 1, "a"), RAFT_OK);
    cl_deliver(c);
    for (raft_id id = 1; id <= 3; id++) assert_int_equal(c->applied[id], base + 1);
    /* node 3 slow: its write is durable only after the quorum (1, 2) committed the entry */
    c->manual[3] = true;
    assert_int_equal(cl_propose(c, 1, "b"), RAFT_OK);
    cl_deliver(c);
    assert_int_equal(c->r[1].commit, base + 2);
    assert_int_equal(c->applied[2], base + 2);
    assert_int_equal(c->applied[3], base + 1);
    cl_persist(c, 3); /* acknowledges; the leader answers with the commit index at once */
    cl_deliver(c);
    assert_int_equal(c->applied[3], base + 2);
    cl_free(c);
}

static void test_learner_never_campaigns_or_counts(void **state) {
    (void)state;
    raft_id v[] = {1, 2, 3}, l[] = {4};
    struct raft_conf conf = conf_of(v, 3, l, 1);
    uint8_t buf[RAFT_CONF_MAX_ENCODED];
    uint32_t len = (uint32_t)raft_conf_encode(&conf, buf);
    struct raft_entry e[2] = {{1, RAFT_ENTRY_NOOP, 0, NULL}, {1, RAFT_ENTRY_CONF, len, buf}};
    /* the learner (peers 1-3 without itself) learns its role from the log and never campaigns */
    struct raft r;
    mk(&r, 4, 3, true, true);
    assert_int_equal(raft_restore(&r, 1, 0, NULL, 1, e, 2), RAFT_OK);
    assert_true(conf_equal(raft_get_conf(&r), &conf));
    for (int i = 0; i < 100; i++) {
        tick(&r, 1);
        assert_int_equal(U.n_msgs, 0);
    }
    assert_int_equal(r.role, RAFT_FOLLOWER);
    raft_free(&r);
    /* a candidate does not count a learner's vote */
    mk(&r, 1, 3, false, false);
    assert_int_equal(raft_restore(&r, 1, 0, NULL, 1, e, 2), RAFT_OK);
    timeout(&r);
    assert_int_equal(r.role, RAFT_CANDIDATE);
    assert_null(find(RAFT_MSG_VOTE, 4)); /* nor asks for it */
    recv(&r, (struct raft_msg){.type = RAFT_MSG_VOTE_RESP, .from = 4, .term = r.term});
    assert_int_equal(r.role, RAFT_CANDIDATE);
    recv(&r, (struct raft_msg){.type = RAFT_MSG_VOTE_RESP, .from = 2, .term = r.term});
    assert_int_equal(r.role, RAFT_LEADER);
    /* the leader replicates to the learner but does not count it toward the commit quorum */
    assert_int_equal(r.n_prs, 4);
    assert_non_null(find(RAFT_MSG_APPEND, 4));
    persist_all(&r);
    raft_index last = raft_last_index(&r);
    recv(&r, (struct raft_msg){.type = RAFT_MSG_APPEND_RESP, .from = 4, .term = r.term, .index = last});
    assert_int_equal(r.commit, 0);
    recv(&r, (struct raft_msg){.type = RAFT_MSG_APPEND_RESP, .from = 2, .term = r.term, .index = last});
    assert_int_equal(r.commit, last);
    tick(&r, 1);
    assert_non_null(find(RAFT_MSG_HEARTBEAT, 4));
    raft_free(&r);
}

static void test_add_voter_promotes_after_catch_up(void **state) {
    (void)state;
    struct cluster *c = &CL;
    cl_init(c, 3, 4, true, true); /* node 4 starts with no configuration at all */
    assert_int_equal(c->r[4].conf.n_voters, 0);
    cl_elect(c, 1);
    c->cut[1][4] = true;
    assert_int_equal(cl_conf(c, 1, RAFT_CC_ADD_VOTER, 4), RAFT_OK);
    assert_int_equal(U.proposed_index, 2); /* 1 is the leader's no-op */
    assert_true(U.flags & RAFT_UPD_CONF);  /* in force once appended */
    raft_id v[] = {1, 2, 3}, l[] = {4};
    struct raft_conf learner = conf_of(v, 3, l, 1);
    assert_true(conf_equal(U.conf, &learner));
    assert_int_equal(c->r[1].n_prs, 4);
    assert_int_equal(cl_conf(c, 1, RAFT_CC_ADD_VOTER, 5), RAFT_EBUSY); /* one at a time */
    cl_deliver(c);
    assert_int_equal(c->r[1].commit, 2);
    cl_heartbeat(c, 1);
    assert_true(conf_equal(&c->r[1].conf, &learner)); /* 4 cannot catch up: stays a learner */
    assert_int_equal(raft_last_index(&c->r[1]), 2);
    c->cut[1][4] = false;
    for (int i = 0; i < 5; i++) cl_heartbeat(c, 1);
    raft_id v4[] = {1, 2, 3, 4};
    struct raft_conf voter = conf_of(v4, 4, NULL, 0);
    for (raft_id id = 1; id <= 4; id++) assert_true(conf_equal(&c->r[id].conf, &voter));
    assert_int_equal(raft_last_index(&c->r[1]), 3); /* the promotion, proposed by the leader */
    assert_int_equal(c->r[1].commit, 3);
    /* the new voter now counts: with 2 and 3 cut off, 1 and 4 are not a quorum of 4 */
    c->cut[1][2] = c->cut[1][3] = true;
    assert_int_equal(cl_propose(c, 1, "x"), RAFT_OK);
    cl_deliver(c);
    assert_int_equal(c->r[1].commit, 3);
    c->cut[1][3] = false;
    /* the lost appends are resent once heartbeats show no progress (milestone 1 rule) */
    for (int i = 0; i < 15 && c->r[1].commit < 4; i++) cl_heartbeat(c, 1);
    assert_int_equal(c->r[1].commit, 4);
    cl_free(c);
}

/* The promotion is a second configuration change: it waits for the first to commit. */
static void test_promotion_waits_for_commit(void **state) {
    (void)state;
    struct cluster *c = &CL;
    cl_init(c, 3, 4, false, false);
    cl_elect(c, 1);
    c->cut[1][2] = c->cut[1][3] = true;
    assert_int_equal(cl_conf(c, 1, RAFT_CC_ADD_VOTER, 4), RAFT_OK);
    for (int i = 0; i < 3; i++) cl_heartbeat(c, 1);
    assert_int_equal(pr_of(&c->r[1], 4)->match, 2); /* caught up... */
    assert_int_equal(c->r[1].commit, 1);             /* ...but its learner entry is uncommitted */
    assert_int_equal(raft_last_index(&c->r[1]), 2);
    assert_false(raft_conf_is_voter(&c->r[1].conf, 4));
    c->cut[1][2] = c->cut[1][3] = false;
    for (int i = 0; i < 15 && c->r[1].commit < 2; i++) cl_heartbeat(c, 1);
    assert_true(raft_conf_is_voter(&c->r[1].conf, 4));
    assert_int_equal(raft_last_index(&c->r[1]), 3);
    cl_free(c);
}

static void test_remove_follower_shrinks_quorum(void **state) {
    (void)state;
    struct raft r;
    mk(&r, 1, 4, false, false);
    timeout(&r);
    recv(&r, (struct raft_msg){.type = RAFT_MSG_VOTE_RESP, .from = 2, .term = 1});
    recv(&r, (struct raft_msg){.type = RAFT_MSG_VOTE_RESP, .from = 3, .term = 1});
    assert_int_equal(r.role, RAFT_LEADER);
    persist_all(&r);
    recv(&r, (struct raft_msg){.type = RAFT_MSG_APPEND_RESP, .from = 2, .term = 1, .index = 1});
    assert_int_equal(r.commit, 0); /* 3 of 4 needed */
    recv(&r, (struct raft_msg){.type = RAFT_MSG_APPEND_RESP, .from = 3, .term = 1, .index = 1});
    assert_int_equal(r.commit, 1);
    assert_int_equal(step_ev(&r, (struct raft_event){.type = RAFT_EV_CONF_CHANGE,
                                                     .u.conf = {RAFT_CC_REMOVE, 4}}), RAFT_OK);
    assert_int_equal(U.proposed_index, 2);
    assert_int_equal(r.conf.n_voters, 3);
    assert_int_equal(r.n_prs, 3);
    assert_null(pr_of(&r, 4));
    persist_all(&r);
    recv(&r, (struct raft_msg){.type = RAFT_MSG_APPEND_RESP, .from = 2, .term = 1, .index = 2});
    assert_int_equal(r.commit, 2); /* 2 of 3 now */
    raft_free(&r);
}

static void test_remove_leader_steps_down(void **state) {
    (void)state;
    /* the removed leader does not count itself; it steps down when the removal commits */
    struct raft r;
    mk(&r, 1, 3, false, false);
    elect(&r);
    persist_all(&r);
    recv(&r, (struct raft_msg){.type = RAFT_MSG_APPEND_RESP, .from = 2, .term = 1, .index = 1});
    assert_int_equal(r.commit, 1);
    assert_int_equal(step_ev(&r, (struct raft_event){.type = RAFT_EV_CONF_CHANGE,
                                                     .u.conf = {RAFT_CC_REMOVE, 1}}), RAFT_OK);
    assert_int_equal(r.role, RAFT_LEADER);
    assert_false(raft_conf_is_voter(&r.conf, 1));
    persist_all(&r);
    recv(&r, (struct raft_msg){.type = RAFT_MSG_APPEND_RESP, .from = 2, .term = 1, .index = 2});
    assert_int_equal(r.commit, 1); /* 2 of {2, 3}: itself does not count any more */
    assert_int_equal(r.role, RAFT_LEADER);
    recv(&r, (struct raft_msg){.type = RAFT_MSG_APPEND_RESP, .from = 3, .term = 1, .index = 2});
    assert_int_equal(r.commit, 2);
    assert_int_equal(r.role, RAFT_FOLLOWER);
    assert_true(U.flags & RAFT_UPD_ROLE);
    assert_true(find(RAFT_MSG_TIMEOUT_NOW, 2) || find(RAFT_MSG_TIMEOUT_NOW, 3)); /* hands over to an
                                                                up-to-date voter */
    assert_int_equal(r.n_prs, 0);
    for (int i = 0; i < 100; i++) { /* no election timer: it is no voter */
        tick(&r, 1);
        assert_int_equal(U.n_msgs, 0);
    }
    assert_int_equal(r.role, RAFT_FOLLOWER);
    raft_free(&r);

    /* in a cluster (lease on), the group has a new leader at once */
    struct cluster *c = &CL;
    cl_init(c, 3, 3, true, true);
    cl_elect(c, 1);
    raft_term t = c->r[1].term;
    assert_int_equal(cl_conf(c, 1, RAFT_CC_REMOVE, 1), RAFT_OK);
    cl_deliver(c);
    assert_int_equal(c->r[1].role, RAFT_FOLLOWER);
    assert_true(c->r[2].role == RAFT_LEADER || c->r[3].role == RAFT_LEADER);
    raft_id l = c->r[2].role == RAFT_LEADER ? 2 : 3;
    assert_int_equal(c->r[l].term, t + 1);
    assert_int_equal(c->r[l].conf.n_voters, 2);
    assert_int_equal(cl_propose(c, l, "after"), RAFT_OK);
    cl_deliver(c);
    cl_heartbeat(c, l);
    assert_int_equal(c->r[2].commit, raft_last_index(&c->r[l]));
    assert_int_equal(c->r[3].commit, raft_last_index(&c->r[l]));
    cl_free(c);
}

static struct raft_entry conf_entry(raft_term t, const struct raft_conf *c, uint8_t *buf) {
    return (struct raft_entry){t, RAFT_ENTRY_CONF, (uint32_t)raft_conf_encode(c, buf), buf};
}

/* A node removed by a configuration that is not known committed may still be needed (Raft
 * dissertation 4.2.2): the old leader that removed itself may hold the only log the others accept.
 * It campaigns among the new voters without counting itself, and leads until the removal commits. */
static void test_removed_node_campaigns_until_removal_commits(void **state) {
    (void)state;
    raft_id v[] = {1, 2};
    struct raft_conf c12 = conf_of(v, 2, NULL, 0);
    uint8_t buf[RAFT_CONF_MAX_ENCODED];
    struct raft_entry e[3] = {{1, RAFT_ENTRY_NOOP, 0, NULL}, conf_entry(1, &c12, buf),
                              {1, RAFT_ENTRY_NORMAL, 1, "x"}};
    struct raft r;
    mk(&r, 3, 3, false, false);
    assert_int_equal(raft_restore(&r, 1, 0, NULL, 1, e, 3), RAFT_OK);
    assert_false(raft_conf_is_voter(raft_get_conf(&r), 3));
    timeout(&r);
    assert_int_equal(r.role, RAFT_CANDIDATE);
    assert_non_null(find(RAFT_MSG_VOTE, 1));
    assert_non_null(find(RAFT_MSG_VOTE, 2));
    recv(&r, (struct raft_msg){.type = RAFT_MSG_VOTE_RESP, .from = 2, .term = r.term});
    assert_int_equal(r.role, RAFT_CANDIDATE); /* its own vote does not count: 1 of 2 */
    recv(&r, (struct raft_msg){.type = RAFT_MSG_VOTE_RESP, .from = 1, .term = r.term});
    assert_int_equal(r.role, RAFT_LEADER);
    assert_null(pr_of(&r, 3));
    persist_all(&r);
    recv(&r, (struct raft_msg){.type = RAFT_MSG_APPEND_RESP, .from = 1, .term = r.term, .index = 4});
    assert_int_equal(r.role, RAFT_LEADER);
    recv(&r, (struct raft_msg){.type = RAFT_MSG_APPEND_RESP, .from = 2, .term = r.term, .index = 4});
    assert_int_equal(r.commit, 4);
    assert_int_equal(r.role, RAFT_FOLLOWER); /* the removal committed with its no-op */
    raft_free(&r);
    /* once it knows the removal committed, it stays quiet */
    mk(&r, 3, 3, false, false);
    assert_int_equal(raft_restore(&r, 1, 0, NULL, 1, e, 3), RAFT_OK);
    recv(&r, (struct raft_msg){.type = RAFT_MSG_HEARTBEAT, .from = 1, .term = 1, .commit = 2});
    assert_int_equal(r.commit, 2);
    for (int i = 0; i < 100; i++) {
        tick(&r, 1);
        assert_int_equal(U.n_msgs, 0);
    }
    assert_int_equal(r.role, RAFT_FOLLOWER);
    raft_free(&r);
}

static void test_conf_revert_on_truncation(void **state) {
    (void)state;
    const raft_term terms[] = {1, 1};
    struct raft r;
    mk_log(&r, 2, 3, 1, terms, 2);
    raft_id v[] = {1, 2, 3}, l4[] = {4}, l45[] = {4, 5};
    struct raft_conf boot = conf_of(v, 3, NULL, 0), c4 = conf_of(v, 3, l4, 1), c45 = conf_of(v, 3, l45, 2);
    uint8_t b1[RAFT_CONF_MAX_ENCODED], b2[RAFT_CONF_MAX_ENCODED];
    struct raft_entry e[2] = {conf_entry(2, &c4, b1), conf_entry(2, &c45, b2)};
    recv(&r, (struct raft_msg){.type = RAFT_MSG_APPEND, .from = 1, .term = 2, .index = 2, .log_term = 1,
                               .n_entries = 2, .entries = e});
    assert_true(U.flags & RAFT_UPD_CONF);
    assert_true(conf_equal(U.conf, &c45)); /* in force before being committed */
    assert_int_equal(r.commit, 0);
    /* a new leader overwrites index 4: back to the configuration of index 3 */
    struct raft_entry n = {3, RAFT_ENTRY_NOOP, 0, NULL};
    recv(&r, (struct raft_msg){.type = RAFT_MSG_APPEND, .from = 3, .term = 3, .index = 3, .log_term = 2,
                               .n_entries = 1, .entries = &n});
    assert_true(U.flags & RAFT_UPD_CONF);
    assert_true(conf_equal(U.conf, &c4));
    /* and index 3: back to the bootstrap configuration */
    recv(&r, (struct raft_msg){.type = RAFT_MSG_APPEND, .from = 3, .term = 3, .index = 2, .log_term = 1,
                               .n_entries = 1, .entries = &n});
    assert_true(conf_equal(U.conf, &boot));
    assert_int_equal(raft_last_index(&r), 3);
    raft_free(&r);
}

static void test_one_conf_change_at_a_time(void **state) {
    (void)state;
    /* a new leader first commits an entry of its own term */
    struct raft r;
    mk(&r, 1, 3, false, false);
    elect(&r);
    assert_int_equal(step_ev(&r, (struct raft_event){.type = RAFT_EV_CONF_CHANGE,
                                                     .u.conf = {RAFT_CC_ADD_LEARNER, 4}}), RAFT_EBUSY);
    raft_free(&r);
    /* a single voter cannot remove itself */
    mk(&r, 1, 1, false, false);
    timeout(&r);
    persist_all(&r);
    assert_int_equal(r.commit, 1);
    assert_int_equal(step_ev(&r, (struct raft_event){.type = RAFT_EV_CONF_CHANGE,
                                                     .u.conf = {RAFT_CC_REMOVE, 1}}), RAFT_EINVAL);
    raft_free(&r);

    struct cluster *c = &CL;
    cl_init(c, 3, 3, false, false);
    cl_elect(c, 1);
    assert_int_equal(cl_conf(c, 2, RAFT_CC_ADD_LEARNER, 4), RAFT_ENOTLEADER);
    c->cut[1][2] = c->cut[1][3] = true;
    assert_int_equal(cl_conf(c, 1, RAFT_CC_ADD_LEARNER, 4), RAFT_OK);
    assert_int_equal(U.proposed_index, 2);
    assert_int_equal(U.proposed_term, c->r[1].term);
    assert_int_equal(cl_conf(c, 1, RAFT_CC_ADD_LEARNER, 5), RAFT_EBUSY);
    assert_int_equal(cl_conf(c, 1, RAFT_CC_REMOVE, 4), RAFT_EBUSY);
    cl_deliver(c);
    c->cut[1][2] = c->cut[1][3] = false;
    for (int i = 0; i < 15 && c->r[1].commit < 2; i++) cl_heartbeat(c, 1);
    assert_int_equal(c->r[1].commit, 2);
    assert_int_equal(cl_conf(c, 1, RAFT_CC_ADD_LEARNER, 4), RAFT_EINVAL); /* already a member */
    assert_int_equal(cl_conf(c, 1, RAFT_CC_ADD_VOTER, 2), RAFT_EINVAL);   /* already a voter */
    assert_int_equal(cl_conf(c, 1, RAFT_CC_REMOVE, 9), RAFT_EINVAL);      /* not a member */
    assert_int_equal(cl_conf(c, 1, RAFT_CC_ADD_LEARNER, 0), RAFT_EINVAL);
    assert_int_equal(cl_conf(c, 1, 99, 5), RAFT_EINVAL);
    assert_int_equal(cl_conf(c, 1, RAFT_CC_REMOVE, 4), RAFT_OK); /* the learner goes */
    assert_int_equal(c->r[1].n_prs, 3);
    cl_deliver(c);
    assert_int_equal(c->r[3].conf.n_learners, 0);
    cl_free(c);
}

/* ---- snapshots -------------------------------------------------------------------------- */

static void test_snapshot_compaction(void **state) {
    (void)state;
    struct cluster *c = &CL;
    cl_init(c, 1, 1, false, false);
    c->r[1].cfg.snapshot_threshold = 5;
    c->r[1].cfg.trailing = 3;
    cl_elect(c, 1);
    c->flags[1] = 0;
    for (int i = 0; i < 3; i++) assert_int_equal(cl_propose(c, 1, "abc"), RAFT_OK);
    assert_false(c->flags[1] & RAFT_UPD_SNAPSHOT_DUE); /* 4 applied */
    assert_int_equal(cl_propose(c, 1, "abc"), RAFT_OK);
    assert_true(c->flags[1] & RAFT_UPD_SNAPSHOT_DUE); /* 5 applied */
    for (int i = 0; i < 6; i++) cl_propose(c, 1, "abc");
    struct raft *r = &c->r[1];
    assert_int_equal(r->applied, 11);
    struct raft_event ev = {.type = RAFT_EV_SNAPSHOT};
    ev.u.snapshot.index = 12;
    assert_int_equal(cl_step_rc(c, 1, &ev), RAFT_EINVAL); /* beyond applied */
    c->flags[1] = 0;
    ev.u.snapshot.index = 8;
    assert_int_equal(cl_step_rc(c, 1, &ev), RAFT_OK);
    assert_true(U.flags & RAFT_UPD_COMPACT);
    assert_int_equal(U.compact_index, 5); /* 3 trailing entries kept below the snapshot */
    assert_int_equal(r->log_offset, 5);
    assert_null(raft_entry_at(r, 5));
    assert_non_null(raft_entry_at(r, 6));
    assert_int_equal(raft_term_at(r, 5), r->term);
    assert_int_equal(r->snap.index, 8);
    assert_int_equal(r->snap.term, r->term);
    assert_int_equal(r->snap.conf.n_voters, 1);
    assert_int_equal(raft_last_index(r), 11);
    assert_int_equal(cl_step_rc(c, 1, &ev), RAFT_OK); /* again: nothing more to compact */
    assert_false(U.flags & RAFT_UPD_COMPACT);
    /* the advice counts from the snapshot */
    cl_propose(c, 1, "abc");
    assert_false(U.flags & RAFT_UPD_SNAPSHOT_DUE);
    c->flags[1] = 0;
    cl_propose(c, 1, "abc"); /* 13 - 8 = 5 */
    assert_true(c->flags[1] & RAFT_UPD_SNAPSHOT_DUE);
    cl_free(c);
}

static void test_snapshot_sent_to_lagging_follower(void **state) {
    (void)state;
    struct cluster *c = &CL;
    cl_init(c, 3, 3, false, false);
    cl_elect(c, 1);
    c->cut[1][3] = c->cut[3][1] = true;
    for (int i = 0; i < 10; i++) cl_propose(c, 1, "entry");
    cl_deliver(c);
    cl_heartbeat(c, 1);
    struct raft *l = &c->r[1], *f = &c->r[3];
    assert_int_equal(l->applied, 11);
    assert_int_equal(raft_last_index(f), 1);
    l->cfg.trailing = 2;
    struct raft_event ev = {.type = RAFT_EV_SNAPSHOT};
    ev.u.snapshot.index = 11;
    cl_step(c, 1, &ev);
    assert_int_equal(l->log_offset, 9);
    /* 3 comes back; it needs entry 2, compacted: the leader sends the snapshot */
    c->manual[3] = true;
    c->cut[1][3] = c->cut[3][1] = false;
    for (int i = 0; i < 30 && !c->installs[3]; i++) cl_heartbeat(c, 1);
    assert_int_equal(c->installs[3], 1);
    assert_int_equal(c->installed[3].index, 11);
    assert_int_equal(c->installed[3].term, l->term);
    assert_int_equal(c->installed[3].conf.n_voters, 3);
    assert_int_equal(f->log_offset, 11);
    assert_int_equal(f->commit, 11);
    assert_int_equal(f->applied, 11);
    assert_int_equal(raft_last_index(f), 11);
    const struct raft_progress *pr = pr_of(l, 3);
    assert_int_equal(pr->pending_snap, 11); /* no acknowledgement before the write is durable */
    assert_true(pr->match < 11);
    cl_heartbeat(c, 1);
    assert_int_equal(c->installs[3], 1); /* not sent again meanwhile */
    cl_persist(c, 3);
    cl_deliver(c);
    pr = pr_of(l, 3);
    assert_int_equal(pr->match, 11);
    assert_int_equal(pr->pending_snap, 0);
    /* then ordinary appends */
    c->manual[3] = false;
    assert_int_equal(cl_propose(c, 1, "next"), RAFT_OK);
    cl_deliver(c);
    cl_heartbeat(c, 1);
    assert_int_equal(raft_last_index(f), 12);
    assert_int_equal(f->commit, 12);
    assert_int_equal(c->applied[3], 12);
    assert_memory_equal(raft_entry_at(f, 12)->data, "next", 4);
    cl_free(c);
}

/* A lost snapshot (or its answer) is sent again after election_ticks heartbeat answers. */
static void test_snapshot_resent_when_lost(void **state) {
    (void)state;
    struct cluster *c = &CL;
    cl_init(c, 3, 3, false, false);
    cl_elect(c, 1);
    c->cut[1][3] = true;
    for (int i = 0; i < 4; i++) cl_propose(c, 1, "e");
    cl_deliver(c);
    cl_heartbeat(c, 1);
    struct raft_event ev = {.type = RAFT_EV_SNAPSHOT};
    ev.u.snapshot.index = 5;
    cl_step(c, 1, &ev);
    c->cut[1][3] = false;
    /* the snapshot goes out, but the follower's acknowledgement is lost */
    c->manual[3] = true;
    for (int i = 0; i < 30 && !c->installs[3]; i++) cl_heartbeat(c, 1);
    assert_int_equal(c->installs[3], 1);
    c->cut[3][1] = true;
    cl_persist(c, 3);
    cl_deliver(c);
    c->manual[3] = false;
    c->cut[3][1] = false;
    assert_int_equal(pr_of(&c->r[1], 3)->pending_snap, 5);
    for (int i = 0; i < 30 && pr_of(&c->r[1], 3)->match < 5; i++) cl_heartbeat(c, 1);
    assert_int_equal(pr_of(&c->r[1], 3)->match, 5);
    assert_int_equal(c->installs[3], 1); /* the resend is acknowledged without a new install */
    cl_free(c);
}

static void test_snapshot_follower_cases(void **state) {
    (void)state;
    const raft_term terms[] = {1, 1, 1, 2, 2};
    struct raft r;
    mk_log(&r, 2, 3, 2, terms, 5);
    raft_id v[] = {1, 2, 3}, l[] = {4};
    struct raft_snapshot_meta s = {.index = 3, .term = 1, .conf = conf_of(v, 3, NULL, 0)};
    /* the log holds (3, 1): keep what follows, commit up to it */
    recv(&r, (struct raft_msg){.type = RAFT_MSG_SNAPSHOT, .from = 1, .term = 2, .index = 3, .log_term = 1,
                               .snap = &s});
    assert_false(U.flags & RAFT_UPD_SNAPSHOT);
    assert_int_equal(raft_last_index(&r), 5);
    assert_int_equal(r.commit, 3);
    const struct raft_msg *m = find(RAFT_MSG_APPEND_RESP, 1);
    assert_non_null(m);
    assert_false(m->reject);
    assert_int_equal(m->index, 3);
    assert_true(U.flags & RAFT_UPD_APPLY);
    /* an older snapshot: just say where we are */
    s.index = 2;
    recv(&r, (struct raft_msg){.type = RAFT_MSG_SNAPSHOT, .from = 1, .term = 2, .index = 2, .log_term = 1,
                               .snap = &s});
    assert_int_equal(find(RAFT_MSG_APPEND_RESP, 1)->index, 3);
    assert_false(U.flags & RAFT_UPD_SNAPSHOT);
    /* a snapshot beyond the log: install it, acknowledge once durable */
    s = (struct raft_snapshot_meta){.index = 7, .term = 2, .conf = conf_of(v, 3, l, 1)};
    recv(&r, (struct raft_msg){.type = RAFT_MSG_SNAPSHOT, .from = 1, .term = 2, .index = 7, .log_term = 2,
                               .snap = &s});
    assert_true(U.flags & RAFT_UPD_SNAPSHOT);
    assert_int_equal(U.snapshot.index, 7);
    assert_int_equal(U.snapshot.term, 2);
    assert_true(U.flags & RAFT_UPD_CONF);
    assert_true(conf_equal(U.conf, &s.conf));
    assert_false(U.flags & RAFT_UPD_APPLY);
    assert_null(find(RAFT_MSG_APPEND_RESP, 1));
    assert_int_equal(raft_last_index(&r), 7);
    assert_int_equal(r.log_len, 0);
    assert_int_equal(r.commit, 7);
    assert_false(raft_quiescent(&r));
    step_ev(&r, (struct raft_event){.type = RAFT_EV_PERSISTED, .u.persisted = {7, 2}});
    m = find(RAFT_MSG_APPEND_RESP, 1);
    assert_non_null(m);
    assert_int_equal(m->index, 7);
    assert_int_equal(r.persisted, 7);
    assert_true(raft_quiescent(&r));
    /* a stale append below the snapshot is answered with the commit index, not rejected */
    struct raft_entry e = {1, RAFT_ENTRY_NOOP, 0, NULL};
    recv(&r, (struct raft_msg){.type = RAFT_MSG_APPEND, .from = 1, .term = 2, .index = 1, .log_term = 1,
                               .n_entries = 1, .entries = &e});
    m = find(RAFT_MSG_APPEND_RESP, 1);
    assert_false(m->reject);
    assert_int_equal(m->index, 7);
    raft_free(&r);
}

static void test_restore_from_snapshot(void **state) {
    (void)state;
    raft_id v[] = {1, 2, 3}, l[] = {4}, v5[] = {1, 2, 3, 5};
    struct raft_snapshot_meta s = {.index = 10, .term = 2, .conf = conf_of(v, 3, l, 1)};
    struct raft_entry e[5] = {{2, RAFT_ENTRY_NOOP, 0, NULL}, {2, RAFT_ENTRY_NOOP, 0, NULL},
                              {2, RAFT_ENTRY_NOOP, 0, NULL}, {3, RAFT_ENTRY_NORMAL, 1, "a"},
                              {3, RAFT_ENTRY_NOOP, 0, NULL}};
    struct raft r;
    /* entries 8..12: 8 only gives the log its base term, 9 and 10 are trailing entries */
    mk(&r, 1, 3, false, false);
    assert_int_equal(raft_restore(&r, 3, 0, &s, 8, e, 5), RAFT_OK);
    assert_int_equal(r.commit, 10);
    assert_int_equal(r.applied, 10);
    assert_int_equal(r.snap.index, 10);
    assert_int_equal(raft_last_index(&r), 12);
    assert_int_equal(raft_term_at(&r, 8), 2);
    assert_non_null(raft_entry_at(&r, 9));
    assert_true(conf_equal(raft_get_conf(&r), &s.conf));
    /* as leader it sends the snapshot to a follower that has nothing, entries to one that has 9 */
    elect(&r);
    raft_index last = raft_last_index(&r);
    recv(&r, (struct raft_msg){.type = RAFT_MSG_APPEND_RESP, .from = 2, .term = r.term, .index = last - 1,
                               .reject = true, .hint_index = 0, .log_term = 0});
    const struct raft_msg *m = find(RAFT_MSG_SNAPSHOT, 2);
    assert_non_null(m);
    assert_int_equal(m->index, 10);
    assert_int_equal(m->log_term, 2);
    assert_non_null(m->snap);
    assert_int_equal(m->snap->conf.n_learners, 1);
    assert_null(m->data);
    recv(&r, (struct raft_msg){.type = RAFT_MSG_APPEND_RESP, .from = 3, .term = r.term, .index = last - 1,
                               .reject = true, .hint_index = 9, .log_term = 2});
    m = find(RAFT_MSG_APPEND, 3);
    assert_non_null(m);
    assert_int_equal(m->index, 9);
    assert_int_equal(m->n_entries, 4);
    raft_free(&r);
    /* entries starting right after the snapshot; a CONF entry after it wins */
    uint8_t buf[RAFT_CONF_MAX_ENCODED];
    struct raft_conf c5 = conf_of(v5, 4, NULL, 0);
    struct raft_entry e2[2] = {{3, RAFT_ENTRY_NORMAL, 1, "a"}, conf_entry(3, &c5, buf)};
    mk(&r, 2, 3, false, false);
    assert_int_equal(raft_restore(&r, 3, 0, &s, 11, e2, 2), RAFT_OK);
    assert_int_equal(r.log_offset, 10);
    assert_true(conf_equal(raft_get_conf(&r), &c5));
    /* losing that entry reverts to the snapshot's configuration */
    struct raft_entry n = {4, RAFT_ENTRY_NOOP, 0, NULL};
    recv(&r, (struct raft_msg){.type = RAFT_MSG_APPEND, .from = 1, .term = 4, .index = 11, .log_term = 3,
                               .n_entries = 1, .entries = &n});
    assert_true(conf_equal(U.conf, &s.conf));
    raft_free(&r);
    /* nothing but the snapshot */
    mk(&r, 2, 3, false, false);
    assert_int_equal(raft_restore(&r, 3, 0, &s, 11, NULL, 0), RAFT_OK);
    assert_int_equal(raft_last_index(&r), 10);
    assert_int_equal(raft_term_at(&r, 10), 2);
    raft_free(&r);
    /* a gap after the snapshot, or entries that contradict it */
    mk(&r, 2, 3, false, false);
    assert_int_equal(raft_restore(&r, 3, 0, &s, 12, e2, 2), RAFT_EINVAL);
    raft_free(&r);
    mk(&r, 2, 3, false, false);
    assert_int_equal(raft_restore(&r, 3, 0, &s, 9, e2, 2), RAFT_EINVAL); /* (10, 3) != (10, 2) */
    raft_free(&r);
}

/* ---- leadership transfer ---------------------------------------------------------------- */

static void test_timeout_now_campaigns_at_once(void **state) {
    (void)state;
    struct raft r;
    mk(&r, 2, 3, true, true);
    recv(&r, (struct raft_msg){.type = RAFT_MSG_HEARTBEAT, .from = 1, .term = 1});
    assert_int_equal(r.leader, 1);
    /* from someone else than the leader of a later term: ignored */
    recv(&r, (struct raft_msg){.type = RAFT_MSG_TIMEOUT_NOW, .from = 3, .term = 0});
    assert_int_equal(r.role, RAFT_FOLLOWER);
    recv(&r, (struct raft_msg){.type = RAFT_MSG_TIMEOUT_NOW, .from = 1, .term = 1});
    assert_int_equal(r.role, RAFT_CANDIDATE); /* no pre-vote, no waiting */
    assert_int_equal(r.term, 2);
    const struct raft_msg *m = find(RAFT_MSG_VOTE, 3);
    assert_non_null(m);
    assert_true(m->transfer);
    raft_free(&r);
    /* a voter under a leader lease ignores ordinary vote requests, not transfer ones */
    mk(&r, 3, 3, true, true);
    recv(&r, (struct raft_msg){.type = RAFT_MSG_HEARTBEAT, .from = 1, .term = 1});
    recv(&r, vote(2, 2, 0, 0));
    assert_null(find(RAFT_MSG_VOTE_RESP, 2));
    assert_int_equal(r.term, 1);
    struct raft_msg v = vote(2, 2, 0, 0);
    v.transfer = true;
    recv(&r, v);
    m = find(RAFT_MSG_VOTE_RESP, 2);
    assert_non_null(m);
    assert_false(m->reject);
    assert_int_equal(r.term, 2);
    raft_free(&r);
}

/* RAFT_EV_PEER_DOWN: the survivors of a dead leader elect a successor within a few ticks, the
 * lowest id first, without splitting the vote; a report about a node that is not the leader
 * changes nothing. */
static void test_peer_down_elects_successor_at_once(void **state) {
    (void)state;
    struct cluster *c = &CL;
    cl_init(c, 3, 3, true, true);
    cl_elect(c, 3);
    for (raft_id id = 1; id <= 3; id++) {
        c->cut[3][id] = c->cut[id][3] = true; /* node 3 dies */
    }
    struct raft_event down = {.type = RAFT_EV_PEER_DOWN};
    down.u.peer.id = 2; /* not the leader: ignored */
    cl_step(c, 1, &down);
    assert_int_equal(c->r[1].leader, 3);
    down.u.peer.id = 3;
    cl_step(c, 1, &down);
    cl_step(c, 2, &down);
    assert_int_equal(c->r[1].leader, 0);
    cl_tick(c, 2, 1); /* node 2 waits longer (rank 1) */
    cl_deliver(c);
    assert_int_equal(c->r[2].role, RAFT_FOLLOWER);
    cl_tick(c, 1, 1); /* node 1 (rank 0) campaigns after one tick and wins at once */
    cl_deliver(c);
    assert_int_equal(c->r[1].role, RAFT_LEADER);
    assert_int_equal(c->r[2].leader, 1);
    assert_int_equal(c->r[1].term, 2);
    cl_free(c);
}

static int cl_transfer(struct cluster *c, raft_id id, raft_id to) {
    struct raft_event ev = {.type = RAFT_EV_TRANSFER};
    ev.u.transfer.to = to;
    return cl_step_rc(c, id, &ev);
}

static void test_transfer(void **state) {
    (void)state;
    struct cluster *c = &CL;
    cl_init(c, 3, 4, true, true);
    cl_elect(c, 1);
    assert_int_equal(cl_conf(c, 1, RAFT_CC_ADD_LEARNER, 4), RAFT_OK);
    cl_deliver(c);
    raft_term t = c->r[1].term;
    assert_int_equal(cl_transfer(c, 2, 3), RAFT_ENOTLEADER);
    assert_int_equal(cl_transfer(c, 1, 1), RAFT_EINVAL);
    assert_int_equal(cl_transfer(c, 1, 4), RAFT_EINVAL); /* a learner */
    assert_int_equal(cl_transfer(c, 1, 9), RAFT_EINVAL);
    assert_int_equal(cl_transfer(c, 1, 2), RAFT_OK);
    assert_non_null(find(RAFT_MSG_TIMEOUT_NOW, 2)); /* caught up already */
    assert_int_equal(cl_propose(c, 1, "x"), RAFT_EBUSY);
    assert_int_equal(cl_conf(c, 1, RAFT_CC_REMOVE, 4), RAFT_EBUSY);
    assert_int_equal(cl_transfer(c, 1, 3), RAFT_EBUSY);
    cl_deliver(c);
    assert_int_equal(c->r[2].role, RAFT_LEADER); /* the lease of 3 did not stop it */
    assert_int_equal(c->r[2].term, t + 1);
    assert_int_equal(c->r[1].role, RAFT_FOLLOWER);
    assert_int_equal(c->r[1].leader, 2);
    assert_int_equal(c->r[1].transfer_to, 0);
    assert_int_equal(cl_propose(c, 2, "y"), RAFT_OK);
    cl_free(c);
}

static void test_transfer_waits_for_catch_up_or_gives_up(void **state) {
    (void)state;
    struct cluster *c = &CL;
    cl_init(c, 3, 3, true, true);
    cl_elect(c, 1);
    c->manual[3] = true; /* 3 receives but does not acknowledge yet */
    cl_propose(c, 1, "a");
    cl_propose(c, 1, "b");
    cl_deliver(c);
    assert_int_equal(cl_transfer(c, 1, 3), RAFT_OK);
    assert_null(find(RAFT_MSG_TIMEOUT_NOW, 3));
    cl_persist(c, 3); /* its acknowledgement catches it up: TimeoutNow follows */
    c->manual[3] = false;
    cl_deliver(c);
    assert_int_equal(c->r[3].role, RAFT_LEADER);
    assert_int_equal(c->r[1].role, RAFT_FOLLOWER);
    cl_free(c);
    /* a target that never catches up: abandoned after election_ticks ticks */
    cl_init(c, 3, 3, true, true);
    cl_elect(c, 1);
    c->cut[1][3] = true;
    cl_propose(c, 1, "a");
    cl_deliver(c);
    assert_int_equal(cl_transfer(c, 1, 3), RAFT_OK);
    for (int i = 0; i < 9; i++) cl_heartbeat(c, 1);
    assert_int_equal(cl_propose(c, 1, "b"), RAFT_EBUSY);
    cl_heartbeat(c, 1);
    assert_int_equal(c->r[1].role, RAFT_LEADER);
    assert_int_equal(cl_propose(c, 1, "b"), RAFT_OK);
    cl_free(c);
}

/* ---- read-index ------------------------------------------------------------------------- */

static int read_ev(struct raft *r, uint64_t ctx) {
    return step_ev(r, (struct raft_event){.type = RAFT_EV_READ_INDEX, .u.read.ctx = ctx});
}

static void test_read_index_single_voter(void **state) {
    (void)state;
    struct raft r;
    mk(&r, 1, 1, false, false);
    assert_int_equal(read_ev(&r, 1), RAFT_ENOTLEADER);
    timeout(&r);
    assert_int_equal(r.role, RAFT_LEADER);
    assert_int_equal(read_ev(&r, 7), RAFT_OK); /* its no-op is not committed yet: queued */
    assert_false(U.flags & RAFT_UPD_READS);
    persist_all(&r);
    assert_true(U.flags & RAFT_UPD_READS);
    assert_int_equal(U.n_reads, 1);
    assert_int_equal(U.reads[0].ctx, 7);
    assert_int_equal(U.reads[0].index, 1);
    assert_int_equal(read_ev(&r, 8), RAFT_OK); /* then answered at once */
    assert_true(U.flags & RAFT_UPD_READS);
    assert_int_equal(U.reads[0].ctx, 8);
    assert_int_equal(U.n_msgs, 0);
    raft_free(&r);
}

static void test_read_index_quorum_round(void **state) {
    (void)state;
    struct raft r;
    mk(&r, 1, 3, false, false);
    elect(&r);
    assert_int_equal(read_ev(&r, 5), RAFT_OK);
    assert_null(find(RAFT_MSG_HEARTBEAT, 2)); /* waits for a commit in its term first */
    persist_all(&r);
    recv(&r, (struct raft_msg){.type = RAFT_MSG_APPEND_RESP, .from = 2, .term = 1, .index = 1});
    assert_int_equal(r.commit, 1);
    const struct raft_msg *hb = find(RAFT_MSG_HEARTBEAT, 2);
    assert_non_null(hb); /* the confirmation round */
    uint64_t round = hb->ctx;
    assert_true(round > 0);
    assert_false(U.flags & RAFT_UPD_READS);
    recv(&r, (struct raft_msg){.type = RAFT_MSG_HEARTBEAT_RESP, .from = 3, .term = 1, .ctx = round - 1});
    assert_false(U.flags & RAFT_UPD_READS); /* an older round proves nothing */
    recv(&r, (struct raft_msg){.type = RAFT_MSG_HEARTBEAT_RESP, .from = 2, .term = 1, .ctx = round});
    assert_true(U.flags & RAFT_UPD_READS);
    assert_int_equal(U.n_reads, 1);
    assert_int_equal(U.reads[0].ctx, 5);
    assert_int_equal(U.reads[0].index, 1);
    /* a later read needs a later round */
    assert_int_equal(read_ev(&r, 6), RAFT_OK);
    assert_int_equal(find(RAFT_MSG_HEARTBEAT, 3)->ctx, round + 1);
    recv(&r, (struct raft_msg){.type = RAFT_MSG_HEARTBEAT_RESP, .from = 2, .term = 1, .ctx = round});
    assert_false(U.flags & RAFT_UPD_READS);
    recv(&r, (struct raft_msg){.type = RAFT_MSG_HEARTBEAT_RESP, .from = 3, .term = 1, .ctx = round + 1});
    assert_true(U.flags & RAFT_UPD_READS);
    assert_int_equal(U.reads[0].ctx, 6);
    /* pending reads are dropped with leadership */
    assert_int_equal(read_ev(&r, 9), RAFT_OK);
    recv(&r, (struct raft_msg){.type = RAFT_MSG_APPEND_RESP, .from = 2, .term = 2});
    assert_int_equal(r.role, RAFT_FOLLOWER);
    assert_int_equal(r.n_reads, 0);
    assert_false(U.flags & RAFT_UPD_READS);
    assert_int_equal(read_ev(&r, 10), RAFT_ENOTLEADER);
    raft_free(&r);
    /* followers echo the round */
    mk(&r, 2, 3, false, false);
    recv(&r, (struct raft_msg){.type = RAFT_MSG_HEARTBEAT, .from = 1, .term = 1, .ctx = 42});
    assert_int_equal(find(RAFT_MSG_HEARTBEAT_RESP, 1)->ctx, 42);
    raft_free(&r);
}

/* ---- hibernation and memory ------------------------------------------------------------- */

static void test_quiescent_and_wake(void **state) {
    (void)state;
    struct raft r;
    mk(&r, 1, 3, false, false);
    assert_false(raft_quiescent(&r)); /* a voter with no leader keeps its timer */
    raft_free(&r);

    struct cluster *c = &CL;
    cl_init(c, 3, 3, false, true);
    cl_elect(c, 1);
    cl_propose(c, 1, "a");
    assert_false(raft_quiescent(&c->r[1]));
    cl_deliver(c);
    assert_true(raft_quiescent(&c->r[2]));  /* the commit index came in an empty append */
    assert_false(raft_quiescent(&c->r[1])); /* but no heartbeat round has confirmed that yet */
    cl_heartbeat(c, 1);
    for (raft_id id = 1; id <= 3; id++) assert_true(raft_quiescent(&c->r[id]));
    assert_int_equal(c->r[1].cap_out, 0); /* an idle leader keeps no output buffer */
    /* a pending read is activity */
    assert_int_equal(step_ev(&c->r[1], (struct raft_event){.type = RAFT_EV_READ_INDEX, .u.read.ctx = 1}),
                     RAFT_OK);
    assert_false(raft_quiescent(&c->r[1]));
    cl_drop_queue(c);
    for (size_t i = 0; i < U.n_msgs; i++) cl_queue(c, &U.msgs[i]);
    cl_deliver(c);
    assert_true(raft_quiescent(&c->r[1]));
    /* hibernate for a long time, then wake: no election, no check-quorum step-down */
    struct raft_event wake = {.type = RAFT_EV_WAKE};
    cl_tick(c, 2, 5);
    assert_int_equal(c->r[2].election_elapsed, 5);
    for (raft_id id = 1; id <= 3; id++) cl_step(c, id, &wake);
    assert_int_equal(c->r[2].election_elapsed, 0);
    assert_true(c->r[2].election_timeout >= 10 && c->r[2].election_timeout < 20);
    for (unsigned i = 0; i < c->r[1].n_prs; i++) assert_true(c->r[1].prs[i].recent_active);
    for (int i = 0; i < 30; i++) cl_heartbeat(c, 1);
    assert_int_equal(c->r[1].role, RAFT_LEADER);
    assert_int_equal(c->r[2].role, RAFT_FOLLOWER);
    /* a follower with entries not yet durable is not quiescent */
    c->manual[2] = true;
    cl_propose(c, 1, "b");
    cl_deliver(c);
    assert_false(raft_quiescent(&c->r[2]));
    assert_false(raft_quiescent(&c->r[1]));
    cl_persist(c, 2);
    cl_deliver(c);
    cl_heartbeat(c, 1);
    for (raft_id id = 1; id <= 3; id++) assert_true(raft_quiescent(&c->r[id]));
    cl_free(c);
}

/* After a nap the leader lease has lapsed: a node put back to sleep at once must not ignore
 * candidates for ever (its lease would never age without ticks). */
static void test_wake_ends_lease(void **state) {
    (void)state;
    struct raft r;
    mk(&r, 3, 3, true, true);
    recv(&r, (struct raft_msg){.type = RAFT_MSG_HEARTBEAT, .from = 1, .term = 1});
    recv(&r, (struct raft_msg){.type = RAFT_MSG_PREVOTE, .from = 2, .term = 2});
    assert_null(find(RAFT_MSG_PREVOTE_RESP, 2)); /* under the lease */
    step_ev(&r, (struct raft_event){.type = RAFT_EV_WAKE});
    recv(&r, (struct raft_msg){.type = RAFT_MSG_PREVOTE, .from = 2, .term = 2});
    assert_non_null(find(RAFT_MSG_PREVOTE_RESP, 2));
    assert_false(find(RAFT_MSG_PREVOTE_RESP, 2)->reject);
    /* hearing from the leader renews it */
    recv(&r, (struct raft_msg){.type = RAFT_MSG_HEARTBEAT, .from = 1, .term = 1});
    recv(&r, (struct raft_msg){.type = RAFT_MSG_PREVOTE, .from = 2, .term = 2});
    assert_null(find(RAFT_MSG_PREVOTE_RESP, 2));
    raft_free(&r);
}

static size_t heap_of(const struct raft *r) {
    size_t n = r->n_prs * sizeof(struct raft_progress);
    for (unsigned i = 0; i < r->n_prs; i++)
        if (r->prs[i].infl) n += r->cfg.max_inflight * sizeof(raft_index);
    n += r->cap_out * sizeof(struct raft_msg);
    n += r->cap_reads_out * sizeof(struct raft_read_state);
    n += r->cap_reads * 24; /* struct raft_pending_read */
    return n;
}

static void test_memory_idle_group(void **state) {
    (void)state;
    struct cluster *c = &CL;
    cl_init(c, 3, 3, true, true);
    cl_elect(c, 1);
    for (int i = 0; i < 3; i++) cl_heartbeat(c, 1);
    size_t leader = sizeof(struct raft) + heap_of(&c->r[1]);
    size_t follower = sizeof(struct raft) + heap_of(&c->r[2]);
    print_message("idle 3-voter group: sizeof(struct raft) %zu, leader %zu bytes (progress %u x %zu + "
                  "rings), follower %zu bytes (excluding the log)\n",
                  sizeof(struct raft), leader, c->r[1].n_prs, sizeof(struct raft_progress), follower);
    assert_true(raft_quiescent(&c->r[1]));
    assert_true(leader <= 1536);
    assert_true(follower <= 1536);
    assert_null(c->r[2].prs); /* followers keep no progress */
    cl_free(c);
}

static void test_msg_names(void **state) {
    (void)state;
    assert_string_equal(raft_msg_name(RAFT_MSG_SNAPSHOT), "snapshot");
    assert_string_equal(raft_msg_name(RAFT_MSG_TIMEOUT_NOW), "timeout-now");
    assert_string_equal(raft_msg_name(999), "?");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_election_restriction),
        cmocka_unit_test(test_vote_once_per_term),
        cmocka_unit_test(test_higher_term_steps_down),
        cmocka_unit_test(test_stale_term_rejected),
        cmocka_unit_test(test_commit_only_current_term),
        cmocka_unit_test(test_leader_counts_itself_after_persist),
        cmocka_unit_test(test_log_matching_and_truncation),
        cmocka_unit_test(test_conflict_truncation),
        cmocka_unit_test(test_prevote_keeps_term),
        cmocka_unit_test(test_check_quorum_step_down),
        cmocka_unit_test(test_commit_reaches_followers_without_heartbeat),
        cmocka_unit_test(test_learner_never_campaigns_or_counts),
        cmocka_unit_test(test_add_voter_promotes_after_catch_up),
        cmocka_unit_test(test_promotion_waits_for_commit),
        cmocka_unit_test(test_remove_follower_shrinks_quorum),
        cmocka_unit_test(test_remove_leader_steps_down),
        cmocka_unit_test(test_removed_node_campaigns_until_removal_commits),
        cmocka_unit_test(test_conf_revert_on_truncation),
        cmocka_unit_test(test_one_conf_change_at_a_time),
        cmocka_unit_test(test_snapshot_compaction),
        cmocka_unit_test(test_snapshot_sent_to_lagging_follower),
        cmocka_unit_test(test_snapshot_resent_when_lost),
        cmocka_unit_test(test_snapshot_follower_cases),
        cmocka_unit_test(test_restore_from_snapshot),
        cmocka_unit_test(test_timeout_now_campaigns_at_once),
        cmocka_unit_test(test_peer_down_elects_successor_at_once),
        cmocka_unit_test(test_transfer),
        cmocka_unit_test(test_transfer_waits_for_catch_up_or_gives_up),
        cmocka_unit_test(test_read_index_single_voter),
        cmocka_unit_test(test_read_index_quorum_round),
        cmocka_unit_test(test_quiescent_and_wake),
        cmocka_unit_test(test_wake_ends_lease),
        cmocka_unit_test(test_memory_idle_group),
        cmocka_unit_test(test_msg_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
