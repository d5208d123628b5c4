/* sim.c - the deterministic Raft simulator (see sim.h and docs/raft.md). Everything random comes
 * from one PRNG seeded by the seed, and nothing reads a clock, so a seed replays exactly. */
#include "tests/sim/sim.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const struct sim_impl sim_impl_real = {"raft", raft_init, raft_restore, raft_step, raft_free};

/* ---- PRNG ------------------------------------------------------------------------------- */

static uint64_t splitmix(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void sim_rng_seed(struct sim_rng *g, uint64_t seed) {
    for (int i = 0; i < 4; i++) g->s[i] = splitmix(&seed);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t sim_rng_next(struct sim_rng *g) { /* xoshiro256** */
    uint64_t *s = g->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

uint64_t sim_rng_below(struct sim_rng *g, uint64_t n) { return n ? sim_rng_next(g) % n : 0; }

/* ---- the replicated FIFO queue: commands ------------------------------------------------ */

enum { OP_ENQ = 1, OP_DEQ = 2 };
struct op { uint32_t kind; uint32_t client; uint64_t id; uint64_t value; };
#define EMPTY UINT64_MAX

static struct op decode(const struct raft_entry *e) {
    struct op o = {0, 0, 0, 0};
    if (e->type == RAFT_ENTRY_NORMAL && e->len == sizeof o) memcpy(&o, e->data, sizeof o);
    return o;
}

/* ---- simulator state -------------------------------------------------------------------- */

struct write { raft_index first; struct raft_entry *ents; size_t n; };
struct pending { raft_index index; raft_term term; uint64_t op_id; uint32_t kind; uint64_t value; };
struct vec64 { uint64_t *v; size_t n, cap; };

struct node {
    raft_id id;
    bool up;
    struct raft r;
    /* durable */
    raft_term d_term;
    raft_id d_vote;
    struct raft_entry *d_log;
    size_t d_len, d_cap;
    /* in-flight disk writes, completed in order; a crash loses them */
    struct write *w;
    size_t w_head, w_n, w_cap;
    /* volatile state machine */
    struct vec64 q;
    size_t q_head;
    raft_index applied, commit_seen;
    bool was_leader;
    /* client operations proposed here and not yet acknowledged */
    struct pending *pend;
    size_t n_pend, cap_pend;
};

struct nmsg { struct raft_msg m; struct raft_entry *ents; uint64_t due, seq; };

struct lm { raft_index index; raft_term term, prev_term; uint64_t op; };

struct sim {
    const struct sim_opts *o;
    struct sim_result *res;
    struct sim_rng g;
    unsigned n;
    struct node nodes[RAFT_MAX_NODES];
    int part[RAFT_MAX_NODES];
    struct nmsg *net;
    size_t n_net, cap_net;
    uint64_t now, seq;
    unsigned reorder_pct;
    unsigned drop_pct, dup_pct, max_delay, crash_permille, part_permille;
    /* checkers */
    raft_id *leader_of_term;
    size_t n_lot;
    struct lm *lm; /* (index, term) -> (op, prev_term), open addressing */
    size_t lm_cap, lm_n;
    raft_term *gc_term; /* the committed log as first seen */
    uint64_t *gc_op;
    uint64_t *gc_result; /* the model's answer at that index */
    size_t gc_len, gc_cap;
    struct vec64 model; /* the sequential queue model */
    size_t model_head;
    struct vec64 acked_enq, dequeued;
    uint64_t next_op;
    bool failed;
    char tr[32][128];
    unsigned tr_n;
};

static void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q) {
        fprintf(stderr, "sim: out of memory\n");
        abort();
    }
    return q;
}

static void vpush(struct vec64 *v, uint64_t x) {
    if (v->n == v->cap) {
        v->cap = v->cap ? v->cap * 2 : 64;
        v->v = xrealloc(v->v, v->cap * sizeof *v->v);
    }
    v->v[v->n++] = x;
}

static void trace(struct sim *s, const char *fmt, ...) {
    char *line = s->tr[s->tr_n++ % 32];
    int k = snprintf(line, 128, "[%6llu] ", (unsigned long long)s->now);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line + k, 128 - (size_t)k, fmt, ap);
    va_end(ap);
    if (s->o->trace_all) fprintf(stderr, "%s\n", line);
}

static void fail(struct sim *s, const char *fmt, ...) {
    if (s->failed) return;
    s->failed = true;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->res->why, sizeof s->res->why, fmt, ap);
    va_end(ap);
}

static struct raft_entry copy_entry(const struct raft_entry *e) {
    struct raft_entry c = *e;
    c.data = NULL;
    if (e->len) {
        c.data = xrealloc(NULL, e->len);
        memcpy(c.data, e->data, e->len);
    }
    return c;
}

static struct raft_entry *copy_entries(const struct raft_entry *e, size_t n) {
    if (!n) return NULL;
    struct raft_entry *c = xrealloc(NULL, n * sizeof *c);
    for (size_t i = 0; i < n; i++) c[i] = copy_entry(&e[i]);
    return c;
}

static void free_entries(struct raft_entry *e, size_t n) {
    for (size_t i = 0; i < n; i++) free(e[i].data);
    free(e);
}

/* ---- invariant checks ------------------------------------------------------------------- */

static uint64_t entry_op(const struct raft_entry *e) { return e->type == RAFT_ENTRY_NORMAL ? decode(e).id : 0; }

/* Log matching: every (index, term) ever stored anywhere names one entry with one predecessor
 * term; by induction two logs sharing (index, term) are identical up to index. */
static void check_log_entry(struct sim *s, struct node *nd, raft_index i) {
    const struct raft_entry *e = raft_entry_at(&nd->r, i);
    struct lm x = {i, e->term, raft_term_at(&nd->r, i - 1), entry_op(e)};
    if (s->lm_n * 2 >= s->lm_cap) {
        size_t cap = s->lm_cap ? s->lm_cap * 2 : 1024;
        struct lm *t = calloc(cap, sizeof *t);
        if (!t) abort();
        for (size_t k = 0; k < s->lm_cap; k++) {
            if (!s->lm[k].index) continue;
            size_t h = (s->lm[k].index * 0x9E3779B97F4A7C15ull ^ s->lm[k].term * 31) & (cap - 1);
            while (t[h].index) h = (h + 1) & (cap - 1);
            t[h] = s->lm[k];
        }
        free(s->lm);
        s->lm = t;
        s->lm_cap = cap;
    }
    size_t h = (i * 0x9E3779B97F4A7C15ull ^ x.term * 31) & (s->lm_cap - 1);
    while (s->lm[h].index) {
        struct lm *y = &s->lm[h];
        if (y->index == i && y->term == x.term) {
            if (y->op != x.op || y->prev_term != x.prev_term)
                fail(s, "log matching: node %u index %llu term %llu holds op %llu prev_term %llu, "
                        "another log had op %llu prev_term %llu", nd->id, (unsigned long long)i,
                     (unsigned long long)x.term, (unsigned long long)x.op,
                     (unsigned long long)x.prev_term, (unsigned long long)y->op,
                     (unsigned long long)y->prev_term);
            return;
        }
        h = (h + 1) & (s->lm_cap - 1);
    }
    s->lm[h] = x;
    s->lm_n++;
}

static void model_apply(struct sim *s, raft_index i, const struct raft_entry *e) {
    struct op o = decode(e);
    uint64_t result = 0;
    if (o.kind == OP_ENQ) {
        vpush(&s->model, o.value);
    } else if (o.kind == OP_DEQ) {
        result = s->model_head < s->model.n ? s->model.v[s->model_head++] : EMPTY;
        if (result != EMPTY) vpush(&s->dequeued, result);
    }
    s->gc_result[i] = result;
}

/* State machine safety at the commit index: the first node to commit an index fixes it. */
static void check_commit(struct sim *s, struct node *nd, raft_index commit) {
    if (commit < nd->commit_seen)
        fail(s, "commit index of node %u went back from %llu to %llu", nd->id,
             (unsigned long long)nd->commit_seen, (unsigned long long)commit);
    for (raft_index i = nd->commit_seen + 1; i <= commit; i++) {
        const struct raft_entry *e = raft_entry_at(&nd->r, i);
        if (!e) {
            fail(s, "node %u commit %llu beyond its log", nd->id, (unsigned long long)commit);
            return;
        }
        if (i <= s->gc_len) {
            if (s->gc_term[i] != e->term || s->gc_op[i] != entry_op(e))
                fail(s, "state machine safety: index %llu committed as term %llu op %llu, node %u "
                        "commits term %llu op %llu", (unsigned long long)i,
                     (unsigned long long)s->gc_term[i], (unsigned long long)s->gc_op[i], nd->id,
                     (unsigned long long)e->term, (unsigned long long)entry_op(e));
            continue;
        }
        if (s->gc_len + 2 > s->gc_cap) {
            s->gc_cap = s->gc_cap ? s->gc_cap * 2 : 256;
            s->gc_term = xrealloc(s->gc_term, s->gc_cap * sizeof *s->gc_term);
            s->gc_op = xrealloc(s->gc_op, s->gc_cap * sizeof *s->gc_op);
            s->gc_result = xrealloc(s->gc_result, s->gc_cap * sizeof *s->gc_result);
        }
        s->gc_len = i;
        s->gc_term[i] = e->term;
        s->gc_op[i] = entry_op(e);
        model_apply(s, i, e);
        s->res->committed++;
    }
    nd->commit_seen = commit;
}

/* Leader completeness: a leader holds every committed entry. */
static void check_leader(struct sim *s, struct node *nd) {
    raft_term t = nd->r.term;
    if (t >= s->n_lot) {
        size_t cap = (t + 1) * 2;
        s->leader_of_term = xrealloc(s->leader_of_term, cap * sizeof *s->leader_of_term);
        memset(s->leader_of_term + s->n_lot, 0, (cap - s->n_lot) * sizeof *s->leader_of_term);
        s->n_lot = cap;
    }
    if (s->leader_of_term[t] && s->leader_of_term[t] != nd->id)
        fail(s, "election safety: nodes %u and %u both leaders of term %llu", s->leader_of_term[t],
             nd->id, (unsigned long long)t);
    if (!s->leader_of_term[t]) {
        s->leader_of_term[t] = nd->id;
        s->res->elections++;
        if (t > s->res->max_term) s->res->max_term = t;
    }
    if (nd->was_leader) return;
    for (raft_index i = 1; i <= s->gc_len; i++) {
        const struct raft_entry *e = raft_entry_at(&nd->r, i);
        if (!e || e->term != s->gc_term[i] || entry_op(e) != s->gc_op[i]) {
            fail(s, "leader completeness: new leader %u of term %llu lacks committed index %llu",
                 nd->id, (unsigned long long)t, (unsigned long long)i);
            return;
        }
    }
}

/* ---- applying updates ------------------------------------------------------------------- */

static void sm_apply(struct sim *s, struct node *nd, raft_index i, const struct raft_entry *e) {
    if (i != nd->applied + 1) fail(s, "node %u applied %llu after %llu", nd->id,
                                   (unsigned long long)i, (unsigned long long)nd->applied);
    nd->applied = i;
    if (i > s->gc_len || s->gc_term[i] != e->term || s->gc_op[i] != entry_op(e)) {
        fail(s, "node %u applies index %llu that differs from the committed log", nd->id,
             (unsigned long long)i);
        return;
    }
    struct op o = decode(e);
    uint64_t result = 0;
    if (o.kind == OP_ENQ) {
        vpush(&nd->q, o.value);
    } else if (o.kind == OP_DEQ) {
        result = nd->q_head < nd->q.n ? nd->q.v[nd->q_head++] : EMPTY;
    }
    if (result != s->gc_result[i])
        fail(s, "node %u: queue result at index %llu is %llu, the model says %llu", nd->id,
             (unsigned long long)i, (unsigned long long)result, (unsigned long long)s->gc_result[i]);
    /* client acknowledgement: the op was applied on the node that accepted it */
    for (size_t k = 0; k < nd->n_pend; k++) {
        struct pending *p = &nd->pend[k];
        if (p->index != i) continue;
        if (p->term == e->term && p->op_id == o.id) {
            if (p->kind == OP_ENQ) {
                vpush(&s->acked_enq, p->value);
                s->res->acked_enq++;
            } else {
                s->res->acked_deq++;
            }
        }
        nd->pend[k] = nd->pend[--nd->n_pend];
        break;
    }
}

static void process(struct sim *s, struct node *nd, const struct raft_update *u) {
    if (u->flags & RAFT_UPD_HARD_STATE) { /* synchronous and durable */
        if (u->term < nd->d_term) fail(s, "node %u term went back", nd->id);
        nd->d_term = u->term;
        nd->d_vote = u->vote;
    }
    if (u->flags & RAFT_UPD_ENTRIES) {
        if (nd->w_n == nd->w_cap) {
            size_t cap = nd->w_cap ? nd->w_cap * 2 : 16;
            struct write *w = xrealloc(NULL, cap * sizeof *w);
            for (size_t k = 0; k < nd->w_n; k++) w[k] = nd->w[(nd->w_head + k) % nd->w_cap];
            free(nd->w);
            nd->w = w;
            nd->w_cap = cap;
            nd->w_head = 0;
        }
        struct write *w = &nd->w[(nd->w_head + nd->w_n++) % nd->w_cap];
        w->first = u->entries_first;
        w->n = u->n_entries;
        w->ents = copy_entries(u->entries, u->n_entries);
        for (size_t k = 0; k < u->n_entries; k++) check_log_entry(s, nd, u->entries_first + k);
    }
    for (size_t k = 0; k < u->n_msgs; k++) {
        const struct raft_msg *m = &u->msgs[k];
        if (s->n_net == s->cap_net) {
            s->cap_net = s->cap_net ? s->cap_net * 2 : 256;
            s->net = xrealloc(s->net, s->cap_net * sizeof *s->net);
        }
        struct nmsg *x = &s->net[s->n_net++];
        x->m = *m;
        x->ents = copy_entries(m->entries, m->n_entries);
        x->m.entries = x->ents;
        x->due = s->now + sim_rng_below(&s->g, s->max_delay + 1);
        x->seq = ++s->seq;
    }
    if (u->flags & RAFT_UPD_ROLE)
        trace(s, "n%u %s term %llu leader %u last %llu", nd->id, raft_role_name(u->role),
              (unsigned long long)nd->r.term, u->leader, (unsigned long long)raft_last_index(&nd->r));
    if (u->role == RAFT_LEADER) check_leader(s, nd);
    nd->was_leader = u->role == RAFT_LEADER;
    if (u->commit != nd->commit_seen) check_commit(s, nd, u->commit);
    for (size_t k = 0; k < u->n_apply; k++) sm_apply(s, nd, u->apply_first + k, &u->apply[k]);
}

static void step(struct sim *s, struct node *nd, const struct raft_event *ev) {
    struct raft_update u;
    s->o->impl->step(&nd->r, ev, &u);
    process(s, nd, &u);
    s->res->steps++;
}

/* ---- faults ----------------------------------------------------------------------------- */

static struct raft_config node_config(struct sim *s, raft_id id, uint64_t knobs) {
    struct raft_config c;
    memset(&c, 0, sizeof c);
    c.id = id;
    c.n_peers = s->n;
    for (unsigned i = 0; i < s->n; i++) c.peers[i] = i + 1;
    c.election_ticks = 4 + (unsigned)(knobs % 6);
    c.heartbeat_ticks = 1 + (unsigned)(knobs >> 8) % 2;
    c.max_inflight = 1 + (unsigned)(knobs >> 16) % 8;
    c.max_batch = 1 + (unsigned)(knobs >> 24) % 6;
    c.pre_vote = (knobs >> 32) % 4 != 0;
    c.check_quorum = (knobs >> 40) % 4 != 0;
    c.seed = s->o->seed * 1000003u + id;
    return c;
}

static uint64_t g_knobs;

static void node_start(struct sim *s, struct node *nd) {
    struct raft_config c = node_config(s, nd->id, g_knobs);
    if (s->o->impl->init(&nd->r, &c) || s->o->impl->restore(&nd->r, nd->d_term, nd->d_vote, NULL, 1, nd->d_log, nd->d_len))
        fail(s, "node %u: init failed", nd->id);
    nd->up = true;
    nd->applied = nd->commit_seen = 0;
    nd->q.n = 0;
    nd->q_head = 0;
    nd->was_leader = false;
}

static void node_crash(struct sim *s, struct node *nd) {
    trace(s, "n%u CRASH (loses %zu unsynced writes)", nd->id, nd->w_n);
    for (size_t k = 0; k < nd->w_n; k++) {
        struct write *w = &nd->w[(nd->w_head + k) % nd->w_cap];
        free_entries(w->ents, w->n);
    }
    nd->w_n = nd->w_head = 0;
    nd->n_pend = 0;
    s->o->impl->free(&nd->r);
    nd->up = false;
    s->res->crashes++;
}

/* An fsync: the oldest `count` pending writes become durable, in order; the library hears
 * about the last one (which covers the ones before it). */
static void disk_complete(struct sim *s, struct node *nd, size_t count) {
    raft_index idx = 0;
    raft_term term = 0;
    for (size_t c = 0; c < count && nd->w_n; c++) {
        struct write *w = &nd->w[nd->w_head];
        nd->w_head = (nd->w_head + 1) % nd->w_cap;
        nd->w_n--;
        /* truncate the durable log at w->first, then append */
        while (nd->d_len >= w->first && nd->d_len > 0) free(nd->d_log[--nd->d_len].data);
        if (nd->d_len + 1 < w->first)
            fail(s, "node %u: write at %llu leaves a hole after %zu", nd->id,
                 (unsigned long long)w->first, nd->d_len);
        if (nd->d_len + w->n > nd->d_cap) {
            nd->d_cap = (nd->d_len + w->n) * 2;
            nd->d_log = xrealloc(nd->d_log, nd->d_cap * sizeof *nd->d_log);
        }
        for (size_t k = 0; k < w->n; k++) nd->d_log[nd->d_len++] = w->ents[k];
        free(w->ents);
        if (w->n) {
            idx = nd->d_len;
            term = nd->d_log[nd->d_len - 1].term;
        }
    }
    if (idx) {
        struct raft_event ev = {.type = RAFT_EV_PERSISTED};
        ev.u.persisted.index = idx;
        ev.u.persisted.term = term;
        step(s, nd, &ev);
    }
}

static void deliver(struct sim *s, size_t k, bool faults) {
    struct nmsg x = s->net[k];
    bool dup = faults && sim_rng_below(&s->g, 100) < s->dup_pct;
    if (dup) { /* deliver a copy now, keep the original for later */
        x.ents = copy_entries(s->net[k].ents, s->net[k].m.n_entries);
        x.m.entries = x.ents;
        s->net[k].due = s->now + sim_rng_below(&s->g, s->max_delay + 1);
    } else {
        s->net[k] = s->net[--s->n_net];
    }
    struct node *to = &s->nodes[x.m.to - 1];
    bool drop = (faults && sim_rng_below(&s->g, 100) < s->drop_pct) || !to->up ||
                s->part[x.m.from - 1] != s->part[x.m.to - 1];
    if (!drop) {
        if (s->o->trace_all)
            trace(s, "n%u -> n%u %s t%llu i%llu lt%llu c%llu n%u%s", x.m.from, x.m.to,
                  raft_msg_name(x.m.type), (unsigned long long)x.m.term, (unsigned long long)x.m.index,
                  (unsigned long long)x.m.log_term, (unsigned long long)x.m.commit, x.m.n_entries,
                  x.m.reject ? " reject" : "");
        struct raft_event ev = {.type = RAFT_EV_RECEIVE};
        ev.u.msg = &x.m;
        step(s, to, &ev);
    }
    free_entries(x.ents, x.m.n_entries);
}

static struct node *random_up(struct sim *s) {
    unsigned start = (unsigned)sim_rng_below(&s->g, s->n);
    for (unsigned k = 0; k < s->n; k++) {
        struct node *nd = &s->nodes[(start + k) % s->n];
        if (nd->up) return nd;
    }
    return NULL;
}

static struct node *leader(struct sim *s) {
    struct node *best = NULL;
    for (unsigned i = 0; i < s->n; i++) {
        struct node *nd = &s->nodes[i];
        if (nd->up && nd->r.role == RAFT_LEADER && (!best || nd->r.term > best->r.term)) best = nd;
    }
    return best;
}

static void propose(struct sim *s, struct node *nd, uint32_t kind) {
    struct op o = {kind, (uint32_t)sim_rng_below(&s->g, 8), ++s->next_op, 0};
    if (kind == OP_ENQ) o.value = o.id;
    struct raft_event ev = {.type = RAFT_EV_PROPOSE};
    ev.u.propose.data = &o;
    ev.u.propose.len = sizeof o;
    struct raft_update u;
    int rc = s->o->impl->step(&nd->r, &ev, &u);
    s->res->steps++;
    if (rc == RAFT_OK) {
        if (nd->n_pend == nd->cap_pend) {
            nd->cap_pend = nd->cap_pend ? nd->cap_pend * 2 : 16;
            nd->pend = xrealloc(nd->pend, nd->cap_pend * sizeof *nd->pend);
        }
        nd->pend[nd->n_pend++] = (struct pending){u.proposed_index, u.proposed_term, o.id, kind, o.value};
        if (s->o->trace_all)
            trace(s, "n%u propose %s #%llu at %llu", nd->id, kind == OP_ENQ ? "enq" : "deq",
                  (unsigned long long)o.id, (unsigned long long)u.proposed_index);
    }
    process(s, nd, &u);
}

/* One random action. */
static void action(struct sim *s, bool faults) {
    unsigned r = (unsigned)sim_rng_below(&s->g, 1000);
    s->now++;
    if (r < 550) { /* deliver a due message, picked at random (reordering) */
        if (!s->n_net) return;
        size_t k = sim_rng_below(&s->g, s->n_net);
        for (size_t j = 0; j < s->n_net; j++, k = (k + 1) % s->n_net)
            if (s->net[k].due <= s->now) {
                /* links are FIFO (like TCP) unless this delivery is a reordering fault */
                if (!faults || sim_rng_below(&s->g, 100) >= s->reorder_pct)
                    for (size_t i = 0; i < s->n_net; i++)
                        if (s->net[i].m.from == s->net[k].m.from && s->net[i].m.to == s->net[k].m.to &&
                            s->net[i].seq < s->net[k].seq)
                            k = i;
                deliver(s, k, faults);
                break;
            }
        return;
    }
    if (r < 700) { /* a disk write completes */
        unsigned start = (unsigned)sim_rng_below(&s->g, s->n);
        for (unsigned k = 0; k < s->n; k++) {
            struct node *nd = &s->nodes[(start + k) % s->n];
            if (nd->up && nd->w_n) {
                disk_complete(s, nd, 1 + sim_rng_below(&s->g, nd->w_n));
                return;
            }
        }
        return;
    }
    if (r < 800) { /* a tick on one node (clocks drift independently) */
        struct node *nd = random_up(s);
        if (nd) {
            struct raft_event ev = {.type = RAFT_EV_TICK};
            step(s, nd, &ev);
        }
        return;
    }
    if (r < 900 && r >= 800) { /* a client: enqueue or dequeue, sent to the leader or anyone */
        if (!faults && s->model_head == s->model.n && sim_rng_below(&s->g, 50)) return;
        struct node *nd = sim_rng_below(&s->g, 4) ? leader(s) : random_up(s);
        if (!nd) return;
        /* clients wait for answers: bounded outstanding work */
        if (raft_last_index(&nd->r) > nd->r.commit + (faults ? 64 : 8)) return;
        propose(s, nd, faults ? (sim_rng_below(&s->g, 3) ? OP_ENQ : OP_DEQ) : OP_DEQ);
        return;
    }
    if (!faults) return;
    r -= 900;
    if (r < s->crash_permille) { /* crash or restart */
        struct node *nd = &s->nodes[sim_rng_below(&s->g, s->n)];
        if (nd->up && sim_rng_below(&s->g, 2) && leader(s)) nd = leader(s); /* leaders crash more */
        if (nd->up) {
            unsigned down = 0;
            for (unsigned i = 0; i < s->n; i++) down += !s->nodes[i].up;
            if (down < (s->n + 1) / 2 || sim_rng_below(&s->g, 4) == 0) node_crash(s, nd);
        } else {
            trace(s, "n%u RESTART term %llu log %zu", nd->id, (unsigned long long)nd->d_term, nd->d_len);
            node_start(s, nd);
        }
    } else if (r < s->crash_permille + s->part_permille) {
        if (sim_rng_below(&s->g, 2)) {
            for (unsigned i = 0; i < s->n; i++) s->part[i] = (int)sim_rng_below(&s->g, 2);
            trace(s, "PARTITION %d%d%d%d%d", s->part[0], s->part[1], s->part[2], s->part[3], s->part[4]);
            s->res->partitions++;
        } else {
            memset(s->part, 0, sizeof s->part);
            trace(s, "HEAL");
        }
    }
}

static void cleanup(struct sim *s) {
    for (unsigned i = 0; i < s->n; i++) {
        struct node *nd = &s->nodes[i];
        if (nd->up) node_crash(s, nd);
        for (size_t k = 0; k < nd->d_len; k++) free(nd->d_log[k].data);
        free(nd->d_log);
        free(nd->w);
        free(nd->q.v);
        free(nd->pend);
    }
    for (size_t k = 0; k < s->n_net; k++) free_entries(s->net[k].ents, s->net[k].m.n_entries);
    free(s->net);
    free(s->leader_of_term);
    free(s->lm);
    free(s->gc_term);
    free(s->gc_op);
    free(s->gc_result);
    free(s->model.v);
    free(s->acked_enq.v);
    free(s->dequeued.v);
}

static int cmp64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* End of run: every acknowledged enqueue was dequeued exactly once, in FIFO order (the model
 * dequeues in commit order; check nothing acknowledged is missing or duplicated). */
static void check_queue(struct sim *s) {
    if (!s->dequeued.n) vpush(&s->dequeued, EMPTY); /* keeps qsort/bsearch off NULL */
    qsort(s->dequeued.v, s->dequeued.n, sizeof(uint64_t), cmp64);
    for (size_t k = 1; k < s->dequeued.n; k++)
        if (s->dequeued.v[k] == s->dequeued.v[k - 1])
            fail(s, "queue: value %llu dequeued twice", (unsigned long long)s->dequeued.v[k]);
    for (size_t k = 0; k < s->acked_enq.n; k++)
        if (!bsearch(&s->acked_enq.v[k], s->dequeued.v, s->dequeued.n, sizeof(uint64_t), cmp64))
            fail(s, "queue: acknowledged enqueue %llu was never dequeued",
                 (unsigned long long)s->acked_enq.v[k]);
    /* FIFO order holds by construction of the model (it pops in commit order); every node's
     * dequeue results, and so every client's, were compared with the model's in sm_apply() */
}

bool sim_run(const struct sim_opts *o, struct sim_result *res) {
    struct sim *s = calloc(1, sizeof *s);
    if (!s) abort();
    memset(res, 0, sizeof *res);
    s->o = o;
    s->res = res;
    sim_rng_seed(&s->g, o->seed);
    s->n = o->n_nodes ? o->n_nodes : (o->seed % 2 ? 5 : 3);
    res->n_nodes = s->n;
    g_knobs = sim_rng_next(&s->g);
    s->drop_pct = (unsigned)sim_rng_below(&s->g, 15);
    s->dup_pct = (unsigned)sim_rng_below(&s->g, 6);
    s->max_delay = 1 + (unsigned)sim_rng_below(&s->g, 12);
    s->reorder_pct = (unsigned)sim_rng_below(&s->g, 30);
    s->crash_permille = (unsigned)sim_rng_below(&s->g, 50);
    s->part_permille = (unsigned)sim_rng_below(&s->g, 25);
    for (unsigned i = 0; i < s->n; i++) {
        s->nodes[i].id = i + 1;
        node_start(s, &s->nodes[i]);
    }
    unsigned fault_steps = o->fault_steps ? o->fault_steps : 4000;
    for (unsigned k = 0; k < fault_steps && !s->failed; k++) action(s, true);
    /* heal everything, restart everyone, then drain the queue with dequeues */
    memset(s->part, 0, sizeof s->part);
    for (unsigned i = 0; i < s->n; i++)
        if (!s->nodes[i].up) node_start(s, &s->nodes[i]);
    trace(s, "HEAL ALL, drain");
    bool drained = false;
    for (unsigned k = 0; k < 30000 && !s->failed; k++) {
        action(s, false);
        struct node *l = leader(s);
        if (l && l->r.commit == raft_last_index(&l->r) && l->applied == l->r.commit &&
            s->model_head == s->model.n && s->gc_len && l->r.term == s->gc_term[s->gc_len]) {
            drained = true;
            break;
        }
    }
    if (!drained && !s->failed) {
        fail(s, "liveness: queue not drained after healing");
        for (unsigned i = 0; i < s->n; i++) {
            struct raft *r = &s->nodes[i].r;
            trace(s, "n%u %s t%llu last %llu commit %llu persisted %llu ackp %llu", i + 1,
                  raft_role_name(r->role), (unsigned long long)r->term,
                  (unsigned long long)raft_last_index(r), (unsigned long long)r->commit,
                  (unsigned long long)r->persisted, (unsigned long long)r->ack_pending);
            if (r->role == RAFT_LEADER)
                for (unsigned j = 0; j < s->n; j++)
                    trace(s, "   pr n%u next %llu match %llu repl %d paused %d infl %u", r->prs[j].id,
                          (unsigned long long)r->prs[j].next, (unsigned long long)r->prs[j].match,
                          r->prs[j].replicate, r->prs[j].paused, r->prs[j].infl_count);
        }
    }
    if (!s->failed) check_queue(s);
    res->ok = !s->failed;
    if (s->failed) {
        size_t off = 0;
        unsigned first = s->tr_n > 32 ? s->tr_n - 32 : 0;
        for (unsigned k = first; k < s->tr_n && off < sizeof res->trace - 130; k++)
            off += (size_t)snprintf(res->trace + off, sizeof res->trace - off, "  %s\n", s->tr[k % 32]);
    }
    cleanup(s);
    free(s);
    return res->ok;
}
