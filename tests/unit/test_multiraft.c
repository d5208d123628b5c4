/* test_multiraft.c - the multi-Raft host (broker/multiraft.c) and its storage (broker/raftlog.c).
 *
 * Three hosts (node ids 1..3) run in one process on one libev loop, each with its own store_t
 * in a temporary directory, connected by the loopback transport. Every group's state machine
 * is a list of the 8-byte values applied, so order and contents can be compared across nodes.
 * A wrapping transport checks on every message a node sends that the hard state it relies on
 * is already in the sender's store (hard state durable before messages).
 *
 * Every wait is bounded (TEST_DEADLINE_SEC); a pacer timer keeps EVRUN_ONCE from blocking for
 * long when all groups hibernate.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <ev.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "broker/log.h"
#include "broker/multiraft.h"
#include "broker/raftlog.h"
#include "broker/store.h"

#define TEST_DEADLINE_SEC 20.0
#define NODES 3
#define MAX_GROUPS 64
#define GID(i) (1000u + (uint64_t)(i))

/* One group's state machine on one node. */
struct sm {
    uint64_t *vals;
    size_t n, cap;
    raft_index last_index;
    unsigned installs;
    unsigned order_errors;
    uint64_t reads_ok, reads_failed;
    uint64_t last_read_ctx;
    size_t n_at_read; /* values applied when the last read was served */
    /* snapshot_arriving: with hold_snapshots, the first snapshot is kept (MR_SNAP_LATER) and
     * later ones ignored until the test resumes it */
    bool hold_snapshots, kept;
    unsigned arrivals;
};

struct fx;

/* The transport a node's host sends with: checks, then forwards to the loopback. */
struct wrap {
    struct fx *f;
    raft_id node;
    struct mr_transport inner;
};

struct node {
    raft_id id;
    char dir[160];
    store_t *store;
    mr_host_t *host;
    struct sm sm[MAX_GROUPS];
};

struct fx {
    char tmp[64];
    struct ev_loop *loop;
    ev_timer pacer;
    mr_loopback_t *lb;
    struct wrap wrap[NODES + 1];
    struct node nodes[NODES + 1]; /* 1-based */
    unsigned n_groups;
    struct mr_host_config cfg;
    raft_id members[NODES];
    unsigned n_members;
    unsigned hs_violations;
    unsigned done_ok, done_err;
    /* closed-loop proposer (test_elect_replicate_in_order) */
    unsigned chain_target;
};

static double now_sec(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* ---- the state machine ------------------------------------------------------------------- */

static void sm_push(struct sm *sm, uint64_t v)
{
    if (sm->n == sm->cap) {
        sm->cap = sm->cap ? sm->cap * 2 : 64;
        sm->vals = realloc(sm->vals, sm->cap * sizeof *sm->vals);
        assert_non_null(sm->vals);
    }
    sm->vals[sm->n++] = v;
}

static void sm_reset(struct sm *sm)
{
    free(sm->vals);
    memset(sm, 0, sizeof *sm);
}

static void sm_apply(mr_group_t *g, raft_index index, const struct raft_entry *e)
{
    struct sm *sm = mr_group_user(g);
    if (index <= sm->last_index || e->len != 8)
        sm->order_errors++;
    sm->last_index = index;
    uint64_t v;
    memcpy(&v, e->data, 8);
    sm_push(sm, v);
}

static int sm_snapshot_take(mr_group_t *g, raft_index index, void **bytes, size_t *len)
{
    (void)index;
    struct sm *sm = mr_group_user(g);
    *len = sm->n * sizeof(uint64_t);
    *bytes = malloc(*len + 1);
    if (sm->n > 0)
        memcpy(*bytes, sm->vals, *len);
    return 0;
}

static void sm_snapshot_install(mr_group_t *g, raft_index index, const void *bytes, size_t len)
{
    struct sm *sm = mr_group_user(g);
    sm->n = 0;
    for (size_t i = 0; i + 8 <= len; i += 8) {
        uint64_t v;
        memcpy(&v, (const uint8_t *)bytes + i, 8);
        sm_push(sm, v);
    }
    sm->last_index = index;
    sm->installs++;
}

static void sm_read_ready(mr_group_t *g, uint64_t ctx, int status)
{
    struct sm *sm = mr_group_user(g);
    if (status == MR_OK) {
        sm->reads_ok++;
        sm->last_read_ctx = ctx;
        sm->n_at_read = sm->n;
    } else {
        sm->reads_failed++;
    }
}

static int sm_snapshot_arriving(mr_group_t *g, raft_id from, raft_index index, const void *bytes, size_t len)
{
    (void)from, (void)index, (void)bytes, (void)len;
    struct sm *sm = mr_group_user(g);
    sm->arrivals++;
    if (!sm->hold_snapshots)
        return MR_SNAP_INSTALL;
    if (sm->kept)
        return MR_SNAP_IGNORE;
    sm->kept = true;
    return MR_SNAP_LATER;
}

static const struct mr_sm_ops sm_ops = {
    .apply = sm_apply,
    .snapshot_take = sm_snapshot_take,
    .snapshot_install = sm_snapshot_install,
    .snapshot_arriving = sm_snapshot_arriving,
    .read_ready = sm_read_ready,
};

/* ---- the checking transport -------------------------------------------------------------- */

/* The sender's stored hard state must already cover what the message announces. */
static void check_hard_state(struct fx *f, raft_id node, uint64_t gid, const struct raft_msg *m)
{
    if (m->type == RAFT_MSG_PREVOTE || m->type == RAFT_MSG_PREVOTE_RESP || m->term == 0)
        return;
    uint8_t key[RLOG_GROUP_KEY_LEN];
    rlog_group_key(key, RLOG_KEY_HARD_STATE, gid);
    void *val = NULL;
    size_t vlen = 0;
    int rc = store_get(f->nodes[node].store, key, sizeof key, &val, &vlen);
    raft_term term = rc == 1 && vlen == 12 ? store_get_be64(val) : 0;
    uint32_t vote = 0;
    if (rc == 1 && vlen == 12)
        vote = (uint32_t)((const uint8_t *)val)[8] << 24 | (uint32_t)((const uint8_t *)val)[9] << 16 |
               (uint32_t)((const uint8_t *)val)[10] << 8 | ((const uint8_t *)val)[11];
    free(val);
    bool ok = term >= m->term;
    if (m->type == RAFT_MSG_VOTE_RESP && !m->reject)
        ok = ok && term == m->term && vote == m->to;
    if (m->type == RAFT_MSG_VOTE && !m->transfer)
        ok = ok && term == m->term && vote == node;
    if (!ok) {
        f->hs_violations++;
        print_error("node %u group %llu sent %s at term %llu, stored term %llu vote %u\n", node,
                    (unsigned long long)gid, raft_msg_name(m->type),
                    (unsigned long long)m->term, (unsigned long long)term, vote);
    }
}

static void wrap_send(void *ctx, raft_id node, const struct mr_outmsg *msgs, size_t n)
{
    struct wrap *w = ctx;
    for (size_t i = 0; i < n; i++)
        check_hard_state(w->f, w->node, msgs[i].group_id, msgs[i].msg);
    w->inner.send(w->inner.ctx, node, msgs, n);
}

/* ---- nodes ------------------------------------------------------------------------------- */

static mr_group_t *grp(struct fx *f, raft_id node, unsigned gi)
{
    if (f->nodes[node].host == NULL)
        return NULL;
    return mr_host_group(f->nodes[node].host, GID(gi));
}

static void open_group(struct fx *f, raft_id id, unsigned gi, const raft_id *members, unsigned n)
{
    int err = 0;
    mr_group_t *g = mr_group_open(f->nodes[id].host, GID(gi), members, n, &sm_ops,
                                  &f->nodes[id].sm[gi], &err);
    if (g == NULL)
        fail_msg("mr_group_open(node %u, group %u): %s", id, gi, mr_status_name(err));
}

static void node_start(struct fx *f, raft_id id)
{
    struct node *nd = &f->nodes[id];
    char err[256] = "";
    nd->id = id;
    char dir[sizeof nd->dir];
    snprintf(dir, sizeof dir, "%s/node%u", f->tmp, id);
    memcpy(nd->dir, dir, sizeof dir);
    nd->store = store_open(nd->dir, f->loop, err, sizeof err);
    if (nd->store == NULL)
        fail_msg("store_open: %s", err);
    struct mr_host_config cfg = f->cfg;
    cfg.node_id = id;
    f->wrap[id] = (struct wrap){f, id, mr_loopback_transport(f->lb, id)};
    struct mr_transport t = {wrap_send, &f->wrap[id]};
    nd->host = mr_host_new(f->loop, nd->store, &cfg, &t);
    assert_non_null(nd->host);
    mr_loopback_attach(f->lb, id, nd->host);
    for (unsigned gi = 0; gi < f->n_groups; gi++)
        open_group(f, id, gi, f->members, f->n_members);
}

/* Stops a node as a crash would look to the others (its durable state stays on disk); its
 * state machines start empty again, as a restarted process's would. */
static void node_stop(struct fx *f, raft_id id)
{
    struct node *nd = &f->nodes[id];
    mr_loopback_detach(f->lb, id);
    mr_host_free(nd->host);
    nd->host = NULL;
    store_close(nd->store);
    nd->store = NULL;
    for (unsigned gi = 0; gi < MAX_GROUPS; gi++)
        sm_reset(&nd->sm[gi]);
}

static void pacer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)w;
    (void)revents;
}

static void fx_init(struct fx *f, unsigned n_groups)
{
    snprintf(f->tmp, sizeof f->tmp, "/tmp/warren-mr-test-XXXXXX");
    assert_non_null(mkdtemp(f->tmp));
    f->loop = ev_loop_new(EVFLAG_AUTO);
    assert_non_null(f->loop);
    ev_timer_init(&f->pacer, pacer_cb, 0.001, 0.001);
    ev_timer_start(f->loop, &f->pacer);
    f->lb = mr_loopback_new(f->loop);
    assert_non_null(f->lb);
    f->n_groups = n_groups;
    f->cfg.tick_seconds = 0.01;
    f->cfg.election_ticks = 10;
    f->cfg.heartbeat_ticks = 2;
    f->n_members = NODES;
    for (unsigned i = 0; i < NODES; i++)
        f->members[i] = i + 1;
}

static void fx_start_all(struct fx *f)
{
    for (raft_id id = 1; id <= NODES; id++)
        node_start(f, id);
}

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof *f);
    assert_non_null(f);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    for (raft_id id = 1; id <= NODES; id++)
        if (f->nodes[id].host != NULL)
            node_stop(f, id);
    for (raft_id id = 1; id <= NODES; id++)
        for (unsigned gi = 0; gi < MAX_GROUPS; gi++)
            sm_reset(&f->nodes[id].sm[gi]);
    mr_loopback_free(f->lb);
    if (f->loop != NULL) {
        ev_timer_stop(f->loop, &f->pacer);
        ev_loop_destroy(f->loop);
    }
    if (f->tmp[0] != '\0')
        nftw(f->tmp, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    assert_int_equal(f->hs_violations, 0);
    free(f);
    return 0;
}

/* Runs the loop until cond holds or the deadline passes; returns whether it holds. */
static bool drive(struct fx *f, bool (*cond)(struct fx *, void *), void *arg, double secs)
{
    double deadline = now_sec() + secs;
    while (!cond(f, arg)) {
        if (now_sec() > deadline)
            return false;
        ev_run(f->loop, EVRUN_ONCE);
    }
    return true;
}

static void drive_for(struct fx *f, double secs)
{
    double deadline = now_sec() + secs;
    while (now_sec() < deadline)
        ev_run(f->loop, EVRUN_ONCE);
}

/* The leader of group gi if exactly one live node leads it and every live node agrees. */
static raft_id group_leader(struct fx *f, unsigned gi)
{
    raft_id leader = 0;
    for (raft_id id = 1; id <= NODES; id++) {
        mr_group_t *g = grp(f, id, gi);
        if (g != NULL && mr_group_role(g) == RAFT_LEADER) {
            if (leader != 0)
                return 0;
            leader = id;
        }
    }
    for (raft_id id = 1; leader != 0 && id <= NODES; id++) {
        mr_group_t *g = grp(f, id, gi);
        if (g != NULL && mr_group_leader(g) != leader)
            return 0;
    }
    return leader;
}

/* The live node that considers itself leader of group gi with the highest term (0: none). */
static raft_id leader_of(struct fx *f, unsigned gi)
{
    raft_id leader = 0;
    raft_term best = 0;
    for (raft_id id = 1; id <= NODES; id++) {
        mr_group_t *g = grp(f, id, gi);
        if (g != NULL && mr_group_role(g) == RAFT_LEADER && mr_group_raft(g)->term > best) {
            best = mr_group_raft(g)->term;
            leader = id;
        }
    }
    return leader;
}

static bool all_led(struct fx *f, void *arg)
{
    (void)arg;
    for (unsigned gi = 0; gi < f->n_groups; gi++)
        if (group_leader(f, gi) == 0)
            return false;
    return true;
}

static void wait_leaders(struct fx *f)
{
    if (!drive(f, all_led, NULL, TEST_DEADLINE_SEC))
        fail_msg("not every group elected a leader in time");
}

struct applied_want {
    unsigned gi_first, gi_end;
    size_t n;
};

/* Every live node applied at least want->n values in groups [gi_first, gi_end). */
static bool all_applied(struct fx *f, void *arg)
{
    const struct applied_want *w = arg;
    for (raft_id id = 1; id <= NODES; id++) {
        if (f->nodes[id].host == NULL)
            continue;
        for (unsigned gi = w->gi_first; gi < w->gi_end; gi++)
            if (f->nodes[id].sm[gi].n < w->n)
                return false;
    }
    return true;
}

static void wait_applied(struct fx *f, unsigned gi_first, unsigned gi_end, size_t n)
{
    struct applied_want w = {gi_first, gi_end, n};
    if (!drive(f, all_applied, &w, TEST_DEADLINE_SEC))
        fail_msg("groups %u..%u did not apply %zu entries everywhere in time", gi_first,
                 gi_end - 1, n);
}

static void on_done(mr_group_t *g, void *arg, int status, raft_index index)
{
    (void)g;
    (void)index;
    struct fx *f = arg;
    if (status == MR_OK)
        f->done_ok++;
    else
        f->done_err++;
}

static uint64_t value(unsigned gi, unsigned k) { return (uint64_t)gi << 32 | k; }

static void propose_value(struct fx *f, unsigned gi, unsigned k)
{
    raft_id leader = leader_of(f, gi);
    assert_true(leader != 0);
    uint64_t v = value(gi, k);
    int rc = mr_propose(grp(f, leader, gi), &v, sizeof v, on_done, f);
    if (rc != MR_OK)
        fail_msg("mr_propose(group %u): %s", gi, mr_status_name(rc));
}

/* Values 0..n-1 of group gi, in order, on every live node. */
static void assert_sequence(struct fx *f, unsigned gi, unsigned n)
{
    for (raft_id id = 1; id <= NODES; id++) {
        if (f->nodes[id].host == NULL)
            continue;
        struct sm *sm = &f->nodes[id].sm[gi];
        assert_int_equal(sm->order_errors, 0);
        assert_int_equal(sm->n, n);
        for (unsigned k = 0; k < n; k++)
            if (sm->vals[k] != value(gi, k))
                fail_msg("node %u group %u: value %u is %llx", id, gi, k,
                         (unsigned long long)sm->vals[k]);
    }
}

static bool all_hibernating(struct fx *f, void *arg)
{
    (void)arg;
    for (raft_id id = 1; id <= NODES; id++) {
        if (f->nodes[id].host == NULL)
            continue;
        struct mr_host_stats st;
        mr_host_get_stats(f->nodes[id].host, &st);
        if (st.active_groups != 0)
            return false;
    }
    return true;
}

static void totals(struct fx *f, struct mr_host_stats *sum)
{
    memset(sum, 0, sizeof *sum);
    for (raft_id id = 1; id <= NODES; id++) {
        if (f->nodes[id].host == NULL)
            continue;
        struct mr_host_stats st;
        mr_host_get_stats(f->nodes[id].host, &st);
        sum->timer_fires += st.timer_fires;
        sum->group_ticks += st.group_ticks;
        sum->sends += st.sends;
        sum->msgs_sent += st.msgs_sent;
        sum->msgs_held += st.msgs_held;
        sum->entries_written += st.entries_written;
        sum->wakeups += st.wakeups;
        sum->snapshots_taken += st.snapshots_taken;
        sum->snapshots_installed += st.snapshots_installed;
    }
}

/* ---- tests: storage ---------------------------------------------------------------------- */

static struct raft_entry entry(raft_term term, uint64_t v, uint64_t *buf)
{
    *buf = v;
    return (struct raft_entry){term, RAFT_ENTRY_NORMAL, 8, buf};
}

/* A fixture with no nodes and one store in its directory, for the raftlog tests. */
static store_t *open_raftlog_store(struct fx *f)
{
    fx_init(f, 0);
    char err[256] = "", dir[160];
    snprintf(dir, sizeof dir, "%s/db", f->tmp);
    store_t *s = store_open(dir, f->loop, err, sizeof err);
    assert_non_null(s);
    return s;
}

static void test_raftlog_roundtrip(void **state)
{
    store_t *s = open_raftlog_store(*state);

    uint64_t bufs[10];
    struct raft_entry ents[10];
    for (unsigned i = 0; i < 10; i++)
        ents[i] = entry(1, 100 + i, &bufs[i]);
    struct rlog_cursor cur = {0};
    rlog_save_hard_state(s, 7, 3, 2);
    rlog_append(s, 7, 1, ents, 10, &cur);
    assert_int_equal(cur.top, 10);
    /* A conflicting suffix: 6..7 rewritten at term 2, 8..10 must go. */
    uint64_t rbufs[2];
    struct raft_entry repl[2] = {entry(2, 600, &rbufs[0]), entry(2, 700, &rbufs[1])};
    rlog_append(s, 7, 6, repl, 2, &cur);
    assert_int_equal(cur.top, 7);
    assert_int_equal(cur.n_starts, 2);
    rlog_append(s, 8, 1, ents + 2, 3, &(struct rlog_cursor){0}); /* another group, untouched */
    store_flush_sync(s);

    struct rlog_state st;
    assert_int_equal(rlog_load(s, 7, &st), 0);
    assert_true(st.has_hard_state);
    assert_int_equal(st.term, 3);
    assert_int_equal(st.vote, 2);
    assert_false(st.has_snapshot);
    assert_int_equal(st.first, 1);
    assert_int_equal(st.n, 7);
    assert_int_equal(st.entries[4].term, 1);
    assert_int_equal(st.entries[5].term, 2);
    uint64_t v;
    memcpy(&v, st.entries[4].data, 8);
    assert_int_equal(v, 104);
    memcpy(&v, st.entries[6].data, 8);
    assert_int_equal(v, 700);
    assert_int_equal(st.cursor.top, 7);
    assert_int_equal(st.cursor.n_starts, 2);
    rlog_state_free(&st);

    /* Compaction below a snapshot deletes whole runs only: up to 3 keeps the run 1..5. */
    struct raft_snapshot_meta meta = {.index = 5, .term = 1};
    meta.conf.n_voters = 3;
    meta.conf.voters[0] = 1, meta.conf.voters[1] = 2, meta.conf.voters[2] = 3;
    rlog_save_snapshot(s, 7, &meta, "state", 5, false, NULL);
    rlog_compact(s, 7, 3, &cur);
    store_flush_sync(s);
    assert_int_equal(rlog_load(s, 7, &st), 0);
    assert_int_equal(st.first, 1);
    assert_int_equal(st.n, 7);
    rlog_state_free(&st);
    /* Up to 5, the run 1..5 is covered: the log starts with the run at 6. */
    rlog_compact(s, 7, 5, &cur);
    assert_int_equal(cur.n_starts, 1);
    store_flush_sync(s);
    assert_int_equal(rlog_load(s, 7, &st), 0);
    assert_true(st.has_snapshot);
    assert_int_equal(st.snap.index, 5);
    assert_int_equal(st.snap.conf.n_voters, 3);
    assert_int_equal(st.snap_len, 5);
    assert_memory_equal(st.snap_data, "state", 5);
    assert_int_equal(st.first, 6);
    assert_int_equal(st.n, 2);
    rlog_state_free(&st);

    /* A leader's snapshot replaces the whole log. */
    meta.index = 20;
    meta.term = 4;
    rlog_save_snapshot(s, 7, &meta, "new", 3, true, &cur);
    assert_int_equal(cur.top, 0);
    assert_int_equal(cur.n_starts, 0);
    store_flush_sync(s);
    assert_int_equal(rlog_load(s, 7, &st), 0);
    assert_int_equal(st.n, 0);
    assert_int_equal(st.first, 21);
    rlog_state_free(&st);

    uint64_t *ids = NULL;
    size_t n = 0;
    assert_int_equal(rlog_list_groups(s, &ids, &n), 0);
    assert_int_equal(n, 1); /* group 8 has entries only: no hard state, not listed */
    assert_int_equal(ids[0], 7);
    free(ids);

    rlog_destroy(s, 7);
    store_flush_sync(s);
    assert_int_equal(rlog_load(s, 7, &st), 0);
    assert_false(st.has_hard_state);
    assert_false(st.has_snapshot);
    assert_int_equal(st.n, 0);
    rlog_state_free(&st);
    assert_int_equal(rlog_load(s, 8, &st), 0);
    assert_int_equal(st.n, 3);
    rlog_state_free(&st);
    store_close(s);
}

/* Snapshots are stored in STORE_LOG, beside the log, so that rewriting one never touches the
 * broker's key space (where it made every compaction of stored bodies rewrite them all); one
 * left in STORE_MAIN by an older version is still found, listed, and moved over on load. */
static void test_raftlog_snapshot_space(void **state)
{
    store_t *s = open_raftlog_store(*state);
    struct raft_snapshot_meta meta = {.index = 9, .term = 2};
    meta.conf.n_voters = 1;
    meta.conf.voters[0] = 1;
    rlog_save_snapshot(s, 5, &meta, "snap-bytes", 10, false, NULL);
    store_flush_sync(s);
    uint8_t key[RLOG_GROUP_KEY_LEN];
    rlog_group_key(key, RLOG_KEY_SNAPSHOT, 5);
    void *val = NULL;
    size_t vlen = 0;
    assert_int_equal(store_get(s, key, sizeof key, &val, &vlen), 0); /* not in STORE_MAIN */
    assert_int_equal(store_get_in(s, STORE_LOG, key, sizeof key, &val, &vlen), 1);
    free(val);

    /* A record as an older version wrote it: the same bytes under STORE_MAIN (header: u64
     * index, u64 term, u32 conf_len, as raftlog.h documents the record). */
    enum { RLOG_SNAP_HDR_LEN = 20 };
    uint8_t old[RLOG_SNAP_HDR_LEN + RAFT_CONF_MAX_ENCODED + 3];
    size_t conf_len = raft_conf_encode(&meta.conf, old + RLOG_SNAP_HDR_LEN);
    store_put_be64(old, 30);
    store_put_be64(old + 8, 3);
    old[16] = old[17] = old[18] = 0;
    old[19] = (uint8_t)conf_len;
    memcpy(old + RLOG_SNAP_HDR_LEN + conf_len, "old", 3);
    rlog_group_key(key, RLOG_KEY_SNAPSHOT, 6);
    store_put(s, key, sizeof key, old, RLOG_SNAP_HDR_LEN + conf_len + 3);
    store_flush_sync(s);
    uint64_t *ids = NULL;
    size_t n = 0;
    assert_int_equal(rlog_list_groups(s, &ids, &n), 0);
    assert_int_equal(n, 2);
    assert_int_equal(ids[0], 5);
    assert_int_equal(ids[1], 6);
    free(ids);
    struct rlog_state st;
    assert_int_equal(rlog_load(s, 6, &st), 0);
    assert_true(st.has_snapshot);
    assert_int_equal(st.snap.index, 30);
    assert_int_equal(st.snap.term, 3);
    assert_int_equal(st.snap_len, 3);
    assert_memory_equal(st.snap_data, "old", 3);
    assert_int_equal(st.first, 31);
    rlog_state_free(&st);
    store_flush_sync(s); /* the move was written in that batch */
    assert_int_equal(store_get(s, key, sizeof key, &val, &vlen), 0);
    assert_int_equal(store_get_in(s, STORE_LOG, key, sizeof key, &val, &vlen), 1);
    free(val);
    assert_int_equal(rlog_load(s, 6, &st), 0);
    assert_int_equal(st.snap.index, 30);
    rlog_state_free(&st);
    store_close(s);
}

/* Loads group gid and checks that it holds first..first+n-1 with term terms[i] and value
 * base + index (the values test_raftlog_runs writes). */
static void assert_log(store_t *s, uint64_t gid, raft_index first, size_t n, const raft_term *terms)
{
    struct rlog_state st;
    assert_int_equal(rlog_load(s, gid, &st), 0);
    assert_int_equal(st.first, first);
    assert_int_equal(st.n, n);
    for (size_t i = 0; i < n; i++) {
        uint64_t v;
        assert_int_equal(st.entries[i].len, 8);
        memcpy(&v, st.entries[i].data, 8);
        assert_int_equal(st.entries[i].term, terms[i]);
        assert_int_equal(v, terms[i] * 1000 + first + i);
    }
    rlog_state_free(&st);
}

/* Appends count entries of term t at first (value t * 1000 + index) as one run. */
static void append_run(store_t *s, uint64_t gid, raft_index first, size_t count, raft_term t,
                       struct rlog_cursor *c)
{
    uint64_t bufs[64];
    struct raft_entry ents[64];
    assert_true(count <= 64);
    for (size_t i = 0; i < count; i++)
        ents[i] = entry(t, t * 1000 + first + i, &bufs[i]);
    rlog_append(s, gid, first, ents, count, c);
}

/* Runs: a run replaces what earlier runs hold from its first index on, truncations leave a
 * marker, compaction deletes whole runs (every run when the snapshot covers the log), the
 * cursor read back continues correctly, and a gap is reported. */
static void test_raftlog_runs(void **state)
{
    store_t *s = open_raftlog_store(*state);
    raft_term t[32];

    struct rlog_cursor c = {0};
    append_run(s, 1, 1, 10, 1, &c);
    append_run(s, 1, 4, 2, 2, &c); /* cuts the first run at 3 */
    store_flush_sync(s);
    t[0] = t[1] = t[2] = 1, t[3] = t[4] = 2;
    assert_log(s, 1, 1, 5, t);
    append_run(s, 1, 6, 3, 2, &c);
    rlog_append(s, 1, 8, NULL, 0, &c); /* truncate to 7: a marker at 8 */
    assert_int_equal(c.top, 8);
    store_flush_sync(s);
    t[5] = t[6] = 2;
    assert_log(s, 1, 1, 7, t);
    /* A lower truncation deletes the marker too (a run starting at 3, replacing 3..). */
    append_run(s, 1, 3, 1, 3, &c);
    store_flush_sync(s);
    t[2] = 3;
    assert_log(s, 1, 1, 3, t);
    /* Appending past the end; then the loaded cursor carries on where c is. */
    append_run(s, 1, 4, 4, 3, &c);
    store_flush_sync(s);
    t[3] = t[4] = t[5] = t[6] = 3;
    assert_log(s, 1, 1, 7, t);
    struct rlog_state st;
    assert_int_equal(rlog_load(s, 1, &st), 0);
    struct rlog_cursor loaded = st.cursor;
    rlog_state_free(&st);
    assert_int_equal(loaded.top, c.top);
    append_run(s, 1, 6, 1, 4, &loaded);
    store_flush_sync(s);
    t[5] = 4;
    assert_log(s, 1, 1, 6, t);
    /* Truncating beyond the end writes nothing. */
    store_stats_t before, after;
    store_get_stats(s, &before);
    rlog_append(s, 1, 10, NULL, 0, &loaded);
    store_flush_sync(s);
    store_get_stats(s, &after);
    assert_int_equal(after.writes, before.writes);
    /* Compaction covering the whole log deletes every run. */
    rlog_compact(s, 1, 6, &loaded);
    assert_int_equal(loaded.n_starts, 0);
    store_flush_sync(s);
    assert_log(s, 1, 1, 0, t); /* no snapshot stored: an empty log starts at 1 */

    /* Many runs: the cursor keeps a spread sample, always the oldest; compaction deletes up to
     * a known start and never an entry above the compaction point. */
    struct rlog_cursor m = {0};
    for (raft_index i = 1; i <= 30; i++)
        append_run(s, 2, i, 1, 1, &m);
    assert_int_equal(m.n_starts, RLOG_STARTS);
    assert_int_equal(m.starts[0], 1);
    assert_int_equal(m.starts[RLOG_STARTS - 1], 30);
    rlog_compact(s, 2, 20, &m);
    store_flush_sync(s);
    assert_int_equal(rlog_load(s, 2, &st), 0);
    assert_true(st.first <= 21);
    assert_int_equal(st.first, m.starts[0]);
    assert_int_equal(st.first + st.n - 1, 30);
    rlog_state_free(&st);
    /* A run read back with the whole sample: thinned the same way. */
    assert_int_equal(rlog_load(s, 2, &st), 0);
    assert_int_equal(st.cursor.top, 30);
    assert_int_equal(st.cursor.starts[0], st.first);
    rlog_state_free(&st);

    /* A gap between runs is corruption. */
    append_run(s, 3, 1, 3, 1, &(struct rlog_cursor){0});
    append_run(s, 3, 10, 3, 1, &(struct rlog_cursor){0});
    store_flush_sync(s);
    assert_int_equal(rlog_load(s, 3, &st), -1);
    assert_int_equal(st.n, 0);
    store_close(s);
}

/* ---- tests: the host --------------------------------------------------------------------- */

/* Closed loop: each completion proposes the next value from inside the done callback (so the
 * host must defer it: the group is being handled). */
static void on_chain_done(mr_group_t *g, void *arg, int status, raft_index index)
{
    (void)index;
    struct fx *f = arg;
    if (status != MR_OK) {
        f->done_err++;
        return;
    }
    f->done_ok++;
    unsigned gi = (unsigned)(mr_group_id(g) - GID(0));
    struct sm *sm = mr_group_user(g);
    unsigned next = (unsigned)sm->n; /* the leader applied everything it proposed so far */
    if (next < f->chain_target) {
        uint64_t v = value(gi, next);
        assert_int_equal(mr_propose(g, &v, sizeof v, on_chain_done, f), MR_OK);
    }
}

static void test_elect_replicate_in_order(void **state)
{
    struct fx *f = *state;
    fx_init(f, 8);
    fx_start_all(f);
    wait_leaders(f);
    /* Groups 0..3: 30 proposals in one go; groups 4..7: a chain of 30 from done callbacks. */
    for (unsigned gi = 0; gi < 4; gi++)
        for (unsigned k = 0; k < 30; k++)
            propose_value(f, gi, k);
    f->chain_target = 30;
    for (unsigned gi = 4; gi < 8; gi++) {
        uint64_t v = value(gi, 0);
        raft_id leader = group_leader(f, gi);
        assert_int_equal(mr_propose(grp(f, leader, gi), &v, 8, on_chain_done, f), MR_OK);
    }
    wait_applied(f, 0, 8, 30);
    for (unsigned gi = 0; gi < 8; gi++)
        assert_sequence(f, gi, 30);
    assert_int_equal(f->done_err, 0);
    assert_int_equal(f->done_ok, 8 * 30);

    /* A follower refuses proposals. */
    raft_id leader = group_leader(f, 0);
    raft_id follower = leader % NODES + 1;
    uint64_t v = 1;
    assert_int_equal(mr_propose(grp(f, follower, 0), &v, 8, on_done, f), MR_ENOTLEADER);

    struct mr_host_stats sum;
    totals(f, &sum);
    assert_true(sum.msgs_held > 0); /* votes waited for their hard state */
    assert_true(sum.msgs_sent > sum.sends); /* several messages per transport call */
}

static void test_restart_recovers_log(void **state)
{
    struct fx *f = *state;
    fx_init(f, 2);
    fx_start_all(f);
    wait_leaders(f);
    for (unsigned k = 0; k < 20; k++) {
        propose_value(f, 0, k);
        propose_value(f, 1, k);
    }
    wait_applied(f, 0, 2, 20);

    raft_id leader = group_leader(f, 0);
    raft_id victim = leader % NODES + 1;
    raft_term term_before = mr_group_raft(grp(f, victim, 0))->term;
    raft_index last_before = raft_last_index(mr_group_raft(grp(f, victim, 0)));
    node_stop(f, victim);
    /* Group 1 may have lost its leader with the victim: wait for one among the others. */
    wait_leaders(f);
    for (unsigned k = 20; k < 40; k++)
        propose_value(f, 0, k);
    wait_applied(f, 0, 1, 40);

    node_start(f, victim);
    const struct raft *r = mr_group_raft(grp(f, victim, 0));
    assert_true(r->term >= term_before);
    assert_int_equal(raft_last_index(r), last_before); /* the log came back from the store */
    wait_applied(f, 0, 2, 20);
    wait_applied(f, 0, 1, 40);
    assert_sequence(f, 0, 40);
    assert_sequence(f, 1, 20);
    assert_int_equal(f->done_err, 0);
}

/* Cuts a node off (or reconnects it), telling the others as a transport would, so that their
 * hibernating groups wake and elect. */
static void cut_node(struct fx *f, raft_id node, bool up)
{
    for (raft_id id = 1; id <= NODES; id++) {
        if (id == node)
            continue;
        mr_loopback_set_link(f->lb, node, id, up);
        mr_loopback_set_link(f->lb, id, node, up);
        if (up)
            mr_host_peer_up(f->nodes[id].host, node);
        else
            mr_host_peer_down(f->nodes[id].host, node);
    }
}

/* A live node other than `not` leads group 0 at a term above `term`. */
struct new_leader_want {
    raft_id not;
    raft_term term;
};

static bool new_leader(struct fx *f, void *arg)
{
    const struct new_leader_want *w = arg;
    raft_id l = leader_of(f, 0);
    return l != 0 && l != w->not && mr_group_raft(grp(f, l, 0))->term > w->term;
}

/* Every live node except `not` applied at least n values of group 0. */
struct applied_except_want {
    raft_id not;
    size_t n;
};

static bool applied_except(struct fx *f, void *arg)
{
    const struct applied_except_want *w = arg;
    for (raft_id id = 1; id <= NODES; id++)
        if (id != w->not && f->nodes[id].host != NULL && f->nodes[id].sm[0].n < w->n)
            return false;
    return true;
}

/* An isolated leader's unreplicated entries are replaced by the next leader's: the host writes
 * the new entries over its stored suffix, and after a restart the node reads back the log
 * everyone agrees on, not its own lost entries. */
static void test_conflicting_suffix_replaced(void **state)
{
    struct fx *f = *state;
    fx_init(f, 1);
    fx_start_all(f);
    wait_leaders(f);
    for (unsigned k = 0; k < 5; k++)
        propose_value(f, 0, k);
    wait_applied(f, 0, 1, 5);

    raft_id old = group_leader(f, 0);
    raft_term old_term = mr_group_raft(grp(f, old, 0))->term;
    cut_node(f, old, false);
    for (unsigned k = 0; k < 6; k++) { /* only the old leader ever stores these */
        uint64_t v = 0xdead0000u + k;
        assert_int_equal(mr_propose(grp(f, old, 0), &v, sizeof v, on_done, f), MR_OK);
    }
    struct new_leader_want nl = {old, old_term};
    if (!drive(f, new_leader, &nl, TEST_DEADLINE_SEC))
        fail_msg("the connected nodes did not elect a new leader");
    for (unsigned k = 5; k < 12; k++)
        propose_value(f, 0, k);
    struct applied_except_want ae = {old, 12};
    if (!drive(f, applied_except, &ae, TEST_DEADLINE_SEC))
        fail_msg("the new leader did not commit");
    assert_true(raft_last_index(mr_group_raft(grp(f, old, 0))) >= 12); /* 5 + noop + 6 */

    cut_node(f, old, true);
    wait_applied(f, 0, 1, 12);
    assert_sequence(f, 0, 12);
    raft_id leader = leader_of(f, 0);
    assert_int_equal(raft_last_index(mr_group_raft(grp(f, old, 0))),
                     raft_last_index(mr_group_raft(grp(f, leader, 0))));
    assert_int_equal(f->done_err, 6); /* the lost proposals, reported as such */

    node_stop(f, old);
    node_start(f, old);
    wait_applied(f, 0, 1, 12);
    assert_sequence(f, 0, 12);
    const struct raft *r = mr_group_raft(grp(f, old, 0));
    for (raft_index i = r->log_offset + 1; i <= raft_last_index(r); i++) {
        const struct raft_entry *e = raft_entry_at(r, i);
        assert_non_null(e);
        if (e->len == 8) {
            uint64_t v;
            memcpy(&v, e->data, 8);
            assert_true(v >> 16 != 0xdead);
        }
    }
}

static void test_one_fsync_many_groups(void **state)
{
    struct fx *f = *state;
    fx_init(f, 40);
    fx_start_all(f);
    wait_leaders(f);
    drive_for(f, 0.1);

    uint64_t syncs0 = 0;
    for (raft_id id = 1; id <= NODES; id++) {
        store_stats_t st;
        store_get_stats(f->nodes[id].store, &st);
        syncs0 += st.syncs;
    }
    struct mr_host_stats before, after;
    totals(f, &before);
    for (unsigned gi = 0; gi < f->n_groups; gi++) /* all in one loop iteration */
        propose_value(f, gi, 0);
    wait_applied(f, 0, f->n_groups, 1);
    /* Let the last acknowledgements settle (followers' commit index). */
    drive_for(f, 0.05);
    totals(f, &after);
    uint64_t syncs = 0;
    for (raft_id id = 1; id <= NODES; id++) {
        store_stats_t st;
        store_get_stats(f->nodes[id].store, &st);
        syncs += st.syncs;
    }
    syncs -= syncs0;
    uint64_t entries = after.entries_written - before.entries_written;
    print_message("40 groups x 3 nodes: %llu entries written with %llu fsyncs\n",
                  (unsigned long long)entries, (unsigned long long)syncs);
    assert_true(entries >= 3 * f->n_groups);
    /* One fsync per node per round would be 2 rounds (leader append, follower append) per
     * node; allow some slack for batches split by timing, but far below one per entry. */
    assert_true(syncs * 8 <= entries);
    for (unsigned gi = 0; gi < f->n_groups; gi++)
        assert_sequence(f, gi, 1);
}

static void test_hibernation(void **state)
{
    struct fx *f = *state;
    fx_init(f, 20);
    fx_start_all(f);
    wait_leaders(f);
    if (!drive(f, all_hibernating, NULL, TEST_DEADLINE_SEC))
        fail_msg("groups did not hibernate");

    struct mr_host_stats a, b;
    totals(f, &a);
    drive_for(f, 0.5); /* 50 tick periods */
    totals(f, &b);
    assert_int_equal(b.group_ticks, a.group_ticks);
    assert_int_equal(b.timer_fires, a.timer_fires);
    for (unsigned gi = 0; gi < f->n_groups; gi++)
        assert_true(group_leader(f, gi) != 0); /* leaders stay known while asleep */

    /* A proposal wakes its group only; it commits and the group goes back to sleep. */
    propose_value(f, 3, 0);
    wait_applied(f, 3, 4, 1);
    if (!drive(f, all_hibernating, NULL, TEST_DEADLINE_SEC))
        fail_msg("the woken group did not hibernate again");
    totals(f, &b);
    print_message("one group woke: %llu group ticks, %llu wakeups\n",
                  (unsigned long long)(b.group_ticks - a.group_ticks),
                  (unsigned long long)(b.wakeups - a.wakeups));
    /* One group on three nodes (a follower may doze off before the leader's last heartbeat
     * and wake once more). */
    assert_true(b.wakeups - a.wakeups >= 1 && b.wakeups - a.wakeups <= 9);
    /* Only one group of 20 was ticked, for a few hibernate periods on each node (20 groups
     * ticking for the 0.5 s above alone would have been 3,000 ticks). */
    assert_true(b.group_ticks - a.group_ticks <= 3 * 60);
    assert_sequence(f, 3, 1);
}

static void test_peer_down_elects_new_leader(void **state)
{
    struct fx *f = *state;
    fx_init(f, 6);
    fx_start_all(f);
    wait_leaders(f);
    for (unsigned gi = 0; gi < f->n_groups; gi++)
        propose_value(f, gi, 0);
    wait_applied(f, 0, f->n_groups, 1);
    if (!drive(f, all_hibernating, NULL, TEST_DEADLINE_SEC))
        fail_msg("groups did not hibernate");

    raft_id dead = group_leader(f, 0);
    bool led[MAX_GROUPS];
    for (unsigned gi = 0; gi < f->n_groups; gi++)
        led[gi] = group_leader(f, gi) == dead;
    node_stop(f, dead);

    /* Hibernating followers do not notice on their own... */
    drive_for(f, 0.4);
    for (unsigned gi = 0; gi < f->n_groups; gi++)
        if (led[gi])
            for (raft_id id = 1; id <= NODES; id++)
                if (id != dead)
                    assert_int_equal(mr_group_leader(grp(f, id, gi)), dead);

    /* ...until the transport reports the node down. */
    for (raft_id id = 1; id <= NODES; id++)
        if (id != dead)
            mr_host_peer_down(f->nodes[id].host, dead);
    wait_leaders(f);
    for (unsigned gi = 0; gi < f->n_groups; gi++) {
        assert_true(group_leader(f, gi) != dead);
        propose_value(f, gi, 1);
    }
    wait_applied(f, 0, f->n_groups, 2);

    /* It comes back and catches up. */
    node_start(f, dead);
    for (raft_id id = 1; id <= NODES; id++)
        if (id != dead)
            mr_host_peer_up(f->nodes[id].host, dead);
    wait_applied(f, 0, f->n_groups, 2);
    for (unsigned gi = 0; gi < f->n_groups; gi++)
        assert_sequence(f, gi, 2);
    assert_int_equal(f->done_err, 0);
}

/* Last index that the group's first stored run still provides (cut by the next run's start),
 * 0 if nothing is stored: compaction must have deleted every run wholly below a snapshot. */
static raft_index first_run_end(store_t *s, uint64_t gid)
{
    uint8_t prefix[RLOG_GROUP_KEY_LEN];
    rlog_group_key(prefix, RLOG_KEY_ENTRY, gid);
    store_iter_t *it = store_iter_prefix_in(s, STORE_LOG, prefix, sizeof prefix);
    assert_non_null(it);
    const void *k, *v;
    size_t kl, vl;
    raft_index end = 0;
    if (store_iter_next(it, &k, &kl, &v, &vl)) {
        assert_true(vl >= RLOG_RUN_HDR);
        const uint8_t *c = v;
        raft_index first = store_get_be64((const uint8_t *)k + 9);
        uint32_t count = (uint32_t)c[0] << 24 | (uint32_t)c[1] << 16 | (uint32_t)c[2] << 8 | c[3];
        end = first + count - 1;
        if (store_iter_next(it, &k, &kl, &v, &vl)) {
            raft_index next = store_get_be64((const uint8_t *)k + 9);
            if (next - 1 < end)
                end = next - 1;
        }
    }
    store_iter_free(it);
    return end;
}

struct compacted_want {
    raft_index snap_at_least;
};

/* Every live node stored a snapshot and deleted the entries it covers (trailing kept). */
static bool compacted(struct fx *f, void *arg)
{
    const struct compacted_want *w = arg;
    for (raft_id id = 1; id <= NODES; id++) {
        if (f->nodes[id].host == NULL)
            continue;
        const struct raft *r = mr_group_raft(grp(f, id, 0));
        if (r->snap.index < w->snap_at_least)
            return false;
        raft_index end = first_run_end(f->nodes[id].store, GID(0));
        if (end != 0 && end <= r->snap.index - f->cfg.trailing)
            return false;
        struct raft_snapshot_meta meta;
        void *data = NULL;
        size_t len = 0;
        int found = rlog_load_snapshot(f->nodes[id].store, GID(0), &meta, &data, &len);
        free(data);
        if (found != 1 || meta.index < w->snap_at_least || meta.conf.n_voters != NODES)
            return false;
    }
    return true;
}

static bool node_applied(struct fx *f, void *arg)
{
    const size_t *want = arg; /* [node, n] */
    return f->nodes[want[0]].sm[0].n >= want[1];
}

/* Cuts (or restores) every link to and from node. */
static void set_links_of(struct fx *f, raft_id node, bool up)
{
    for (raft_id id = 1; id <= NODES; id++) {
        mr_loopback_set_link(f->lb, id, node, up);
        mr_loopback_set_link(f->lb, node, id, up);
    }
}

/* One group on every node that snapshots every 10 entries and keeps 2 below a snapshot. */
static void start_snapshotting_group(struct fx *f)
{
    fx_init(f, 1);
    f->cfg.snapshot_threshold = 10;
    f->cfg.trailing = 2;
    fx_start_all(f);
    wait_leaders(f);
}

static void test_snapshot_and_compaction(void **state)
{
    struct fx *f = *state;
    start_snapshotting_group(f);
    for (unsigned k = 0; k < 35; k++)
        propose_value(f, 0, k);
    wait_applied(f, 0, 1, 35);
    struct compacted_want w = {20};
    if (!drive(f, compacted, &w, TEST_DEADLINE_SEC))
        fail_msg("snapshots were not stored and the log not compacted");

    /* A restarted follower starts from its snapshot and replays the entries after it. */
    raft_id leader = group_leader(f, 0);
    raft_id victim = leader % NODES + 1;
    node_stop(f, victim);
    node_start(f, victim);
    assert_int_equal(f->nodes[victim].sm[0].installs, 1);
    size_t want[2] = {victim, 35};
    if (!drive(f, node_applied, want, TEST_DEADLINE_SEC))
        fail_msg("restarted node did not catch up");
    assert_sequence(f, 0, 35);

    /* A follower cut off while the leader compacts past it gets the snapshot. */
    wait_leaders(f);
    leader = group_leader(f, 0);
    raft_id lagger = leader % NODES + 1;
    set_links_of(f, lagger, false);
    for (unsigned k = 35; k < 70; k++) {
        uint64_t v = value(0, k);
        assert_int_equal(mr_propose(grp(f, leader, 0), &v, 8, on_done, f), MR_OK);
    }
    struct applied_want aw = {0, 1, 70};
    double deadline = now_sec() + TEST_DEADLINE_SEC;
    while (now_sec() < deadline) { /* the two connected nodes */
        bool done = true;
        for (raft_id id = 1; id <= NODES; id++)
            if (id != lagger && f->nodes[id].sm[0].n < aw.n)
                done = false;
        if (done)
            break;
        ev_run(f->loop, EVRUN_ONCE);
    }
    w.snap_at_least = 50;
    struct sm *lag_sm = &f->nodes[lagger].sm[0];
    unsigned installs_before = lag_sm->installs;
    if (!drive(f, all_led, NULL, TEST_DEADLINE_SEC))
        fail_msg("no leader among the connected nodes");
    set_links_of(f, lagger, true);
    size_t want2[2] = {lagger, 70};
    if (!drive(f, node_applied, want2, TEST_DEADLINE_SEC))
        fail_msg("lagging node did not catch up");
    assert_true(lag_sm->installs > installs_before);
    assert_sequence(f, 0, 70);
    if (!drive(f, compacted, &w, TEST_DEADLINE_SEC))
        fail_msg("not compacted after the catch-up");
    struct mr_host_stats sum;
    totals(f, &sum);
    assert_true(sum.snapshots_installed >= 1);
}

static bool snapshot_kept(struct fx *f, void *arg)
{
    const raft_id *node = arg;
    return f->nodes[*node].sm[0].kept;
}

static bool never(struct fx *f, void *arg)
{
    (void)f, (void)arg;
    return false;
}

/* A state machine may keep a leader's snapshot aside (MR_SNAP_LATER, e.g. to fetch what it
 * refers to): nothing is installed or applied meanwhile, later snapshots can be ignored, and
 * mr_snapshot_resume installs the kept one, after which the follower catches up from the log. */
static void test_snapshot_kept_until_resumed(void **state)
{
    struct fx *f = *state;
    start_snapshotting_group(f);
    for (unsigned k = 0; k < 20; k++)
        propose_value(f, 0, k);
    wait_applied(f, 0, 1, 20);
    raft_id leader = group_leader(f, 0);
    raft_id lagger = leader % NODES + 1;
    struct sm *lag_sm = &f->nodes[lagger].sm[0];
    set_links_of(f, lagger, false);
    lag_sm->hold_snapshots = true;
    for (unsigned k = 20; k < 60; k++) {
        uint64_t v = value(0, k);
        assert_int_equal(mr_propose(grp(f, leader, 0), &v, 8, on_done, f), MR_OK);
    }
    double deadline = now_sec() + TEST_DEADLINE_SEC;
    while (now_sec() < deadline && f->nodes[leader].sm[0].n < 60)
        ev_run(f->loop, EVRUN_ONCE);
    drive(f, never, NULL, 0.3); /* the leader snapshots and compacts past the lagger */
    unsigned installs_before = lag_sm->installs;
    size_t applied_before = lag_sm->n;
    set_links_of(f, lagger, true);
    if (!drive(f, snapshot_kept, &lagger, TEST_DEADLINE_SEC))
        fail_msg("no snapshot reached the lagging node");
    drive(f, never, NULL, 1.0);
    assert_int_equal(lag_sm->installs, installs_before);
    assert_int_equal(lag_sm->n, applied_before); /* no entry applied over a kept snapshot */
    assert_true(mr_snapshot_resume(grp(f, lagger, 0)));
    assert_false(mr_snapshot_resume(grp(f, lagger, 0))); /* stepped once */
    assert_int_equal(lag_sm->installs, installs_before + 1);
    size_t want[2] = {lagger, 60};
    if (!drive(f, node_applied, want, TEST_DEADLINE_SEC))
        fail_msg("the lagging node did not catch up after the resumed snapshot");
    assert_sequence(f, 0, 60);
}

static bool read_served(struct fx *f, void *arg)
{
    const raft_id *node = arg;
    return f->nodes[*node].sm[0].reads_ok + f->nodes[*node].sm[0].reads_failed > 0;
}

static bool leader_is(struct fx *f, void *arg)
{
    return group_leader(f, 0) == *(const raft_id *)arg;
}

static void test_read_index_and_transfer(void **state)
{
    struct fx *f = *state;
    fx_init(f, 1);
    fx_start_all(f);
    wait_leaders(f);
    for (unsigned k = 0; k < 5; k++)
        propose_value(f, 0, k);
    wait_applied(f, 0, 1, 5);
    assert_int_equal(f->done_ok, 5);
    raft_id leader = group_leader(f, 0);
    /* A read after acknowledged writes must see them (it waits for a heartbeat round). */
    assert_int_equal(mr_read_index(grp(f, leader, 0), 42), MR_OK);
    if (!drive(f, read_served, &leader, TEST_DEADLINE_SEC))
        fail_msg("read not served");
    struct sm *sm = &f->nodes[leader].sm[0];
    assert_int_equal(sm->reads_ok, 1);
    assert_int_equal(sm->last_read_ctx, 42);
    assert_int_equal(sm->n_at_read, 5);
    raft_id follower = leader % NODES + 1;
    assert_int_equal(mr_read_index(grp(f, follower, 0), 43), MR_ENOTLEADER);

    assert_int_equal(mr_transfer(grp(f, leader, 0), follower), MR_OK);
    if (!drive(f, leader_is, &follower, TEST_DEADLINE_SEC))
        fail_msg("leadership was not transferred");
    propose_value(f, 0, 5);
    wait_applied(f, 0, 1, 6);
    assert_sequence(f, 0, 6);
}

static void on_conf_done(mr_group_t *g, void *arg, int status, raft_index index)
{
    (void)g;
    (void)index;
    int *out = arg;
    *out = status == MR_OK ? 1 : -1;
}

static bool flag_set(struct fx *f, void *arg)
{
    (void)f;
    return *(int *)arg != 0;
}

static void test_conf_change_adds_node(void **state)
{
    struct fx *f = *state;
    fx_init(f, 1);
    f->n_members = 2; /* nodes 1 and 2 found the group; node 3 joins later */
    node_start(f, 1);
    node_start(f, 2);
    wait_leaders(f);
    for (unsigned k = 0; k < 10; k++)
        propose_value(f, 0, k);
    wait_applied(f, 0, 1, 10);

    f->n_members = 0;
    node_start(f, 3);
    raft_id leader = leader_of(f, 0);
    assert_true(leader == 1 || leader == 2);
    int done = 0;
    assert_int_equal(mr_conf_change(grp(f, leader, 0), RAFT_CC_ADD_VOTER, 3, on_conf_done, &done),
                     MR_OK);
    if (!drive(f, flag_set, &done, TEST_DEADLINE_SEC))
        fail_msg("conf change not applied");
    assert_int_equal(done, 1);
    wait_applied(f, 0, 1, 10);
    propose_value(f, 0, 10);
    wait_applied(f, 0, 1, 11);
    assert_sequence(f, 0, 11);
    const struct raft_conf *c = raft_get_conf(mr_group_raft(grp(f, 3, 0)));
    assert_true(raft_conf_is_voter(c, 3));
}

int main(void)
{
    log_set_level(LOG_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_raftlog_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_raftlog_runs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_raftlog_snapshot_space, setup, teardown),
        cmocka_unit_test_setup_teardown(test_elect_replicate_in_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_restart_recovers_log, setup, teardown),
        cmocka_unit_test_setup_teardown(test_conflicting_suffix_replaced, setup, teardown),
        cmocka_unit_test_setup_teardown(test_one_fsync_many_groups, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hibernation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_peer_down_elects_new_leader, setup, teardown),
        cmocka_unit_test_setup_teardown(test_snapshot_and_compaction, setup, teardown),
        cmocka_unit_test_setup_teardown(test_snapshot_kept_until_resumed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_read_index_and_transfer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_conf_change_adds_node, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
