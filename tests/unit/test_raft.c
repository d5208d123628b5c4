/* test_raft.c - unit tests of the Raft paper's rules against raft/ driven by hand-made messages. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
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
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
