/* sim.c - the deterministic Raft simulator (see sim.h and docs/raft.md).
 *
 * Role: run nodes of the real raft/ library against a simulated network and disk, inject faults
 * chosen by one seeded PRNG, and check after every step that Raft's safety properties hold.
 * Nothing reads a clock or depends on addresses, so a seed replays exactly
 * (test_raft_sim --seed S --trace).
 *
 * The world:
 * - Nodes live in slots 0..MAX_SLOTS-1 with ids 1..MAX_SLOTS. The first n bootstrap the cluster
 *   (cfg.peers = 1..n). With SIM_F_MEMBERSHIP, brand-new ids join later with an empty log and no
 *   configuration and must learn everything from a leader (appends or InstallSnapshot). A node
 *   that no member's configuration names any more may be retired: shut down and its disk erased.
 *   A retired id never comes back: a voter that forgot its vote could vote twice in a term.
 * - Network: each message gets a due time; links are FIFO except for reordering faults; loss,
 *   duplication, partitions into two sides (with SIM_F_ASYM also an isolated node, one-way
 *   partitions and random single-link cuts); messages to a down or retired node are lost.
 * - Disk: the hard state (term, vote) is written synchronously (a small atomic file). All else
 *   is a record in a per-node write-ahead log, framed as [u32 length][u32 crc32][payload]:
 *   entries (which first drop the stored entries from their first index on), and snapshots (meta
 *   and state machine bytes in one record, so a snapshot is all or nothing; an installed snapshot
 *   also empties the log; a compaction rewrites the log atomically as one snapshot record plus
 *   one entries record, like writing a new file and renaming it). Writes queue up and complete in
 *   issue order when an "fsync" happens; only then does the library hear RAFT_EV_PERSISTED (or
 *   RAFT_EV_SNAPSHOT). A crash keeps a random prefix of the queued writes (a write may reach the
 *   disk without being reported, which is harmless) and, with SIM_F_TORN, may leave the next one
 *   torn: cut short, or full length with garbage at its end. Recovery scans the log, stops at the
 *   first record whose length or checksum is wrong, truncates the log there and replays the rest.
 *   A torn write was never reported durable, so nothing acknowledged is lost; the simulator
 *   checks that recovery finds a damaged record exactly when a write was torn, and that the
 *   replayed log equals what it knew to be durable.
 * - State machine: a FIFO queue of u64 with AMQP-style acknowledgements (enqueue; dequeue hands
 *   out the head, which stays unacknowledged; ack removes it), plus the configuration at the
 *   applied index (from applied CONF entries) so that a snapshot can carry it. A snapshot
 *   serializes the queue and the unacknowledged set. The model keeps, for every committed index,
 *   the queue's extent and the unacknowledged set's size and order-independent digest, so any
 *   snapshot or read can be compared with the state at its index.
 *
 * Invariants (a violation fails the seed with a message and the last trace lines):
 * - election safety: at most one leader per term; a learner is never elected, and a node missing
 *   from its own configuration only while that configuration is uncommitted (dissertation 4.2.2);
 * - log matching: every (index, term) ever written anywhere names one entry and one previous
 *   term, so by induction two logs sharing (index, term) are identical up to there;
 * - leader completeness: a new leader of term T holds every entry committed in a term before T
 *   (or a snapshot covering it);
 * - state machine safety: the first node to commit an index fixes it; every other commit, apply
 *   and snapshot agrees. Snapshots (taken, installed, recovered) are compared with the sequential
 *   model's state at their index, and their configuration with the committed one there;
 * - commit durability: when a leader's commit index advances, the entry is durable on a quorum
 *   of the voters of the configuration in force (before or after that step);
 * - membership: a leader appends a configuration only once an entry of its term and the previous
 *   configuration are committed, and each one changes at most one voter and one member; the
 *   configuration a node reports matches the last CONF entry in its log;
 * - queue linearizability: every node's results (dequeued value, ack found or not) equal the
 *   model's (the committed log applied in order); a client op is acknowledged when applied at the
 *   index and term where it was proposed; a read-index read served at applied index a returns
 *   the model's state at a (length, head, unacknowledged count),
 *   and both a and the read index the leader gave are at least the highest index any client saw
 *   acknowledged or read before this read was issued (nothing older, nothing uncommitted); at the
 *   end, every acknowledged enqueue was dequeued exactly once;
 * - contracts: applies are contiguous; an installed snapshot never moves a state machine back;
 *   compaction never passes the durable snapshot; the library never names a snapshot newer than
 *   the durable one; the durable log never gets a hole; commit indexes never go back;
 * - liveness (weak): after healing, restarting every node and retiring removed ones, a leader
 *   commits everything, the queue drains and every member catches up, within 30,000 steps.
 */
#include "tests/sim/sim.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const struct sim_impl sim_impl_real = {"raft", raft_init, raft_restore, raft_step, raft_free};

#define MAX_SLOTS 24 /* node ids ever used in one run (members are at most RAFT_MAX_NODES) */
#define TRACE_LINES 48
#define TRACE_LEN 160
#define HIST 48 /* delivered messages remembered for replay faults */

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

/* ---- feature sets ----------------------------------------------------------------------- */

unsigned sim_suite_features(enum sim_suite suite, uint64_t seed) {
    /* hash the seed so that hibernation/snapshot choices do not follow its low bits, which
     * already pick the node count (bit 0) and the AUTO suite (bit 1) */
    uint64_t x = seed, h = splitmix(&x);
    unsigned base = SIM_F_TORN | SIM_F_ASYM | SIM_F_TRANSFER | SIM_F_READS | SIM_F_REPLAY, f;
    switch (suite) {
    case SIM_SUITE_MIXED:
        f = base;
        if (h % 3 == 0) f |= SIM_F_HIBERNATE;
        if ((h >> 8) % 3 != 0) f |= SIM_F_SNAPSHOT;
        return f;
    case SIM_SUITE_MEMBERSHIP:
        f = base | SIM_F_SNAPSHOT | SIM_F_MEMBERSHIP;
        if (h % 3 == 0) f |= SIM_F_HIBERNATE;
        return f;
    case SIM_SUITE_AUTO:
        return sim_suite_features((seed >> 1) & 1 ? SIM_SUITE_MEMBERSHIP : SIM_SUITE_MIXED, seed);
    case SIM_SUITE_BASIC:
    default:
        return 0;
    }
}

const char *sim_features_name(unsigned f, char *buf, size_t len) {
    static const char *names[] = {"torn", "asym", "snapshot", "membership", "transfer", "reads",
                                  "hibernate", "replay"};
    size_t off = 0;
    buf[0] = 0;
    for (unsigned i = 0; i < sizeof names / sizeof names[0]; i++)
        if (f & (1u << i) && off < len)
            off += (size_t)snprintf(buf + off, len - off, "%s%s", off ? "," : "", names[i]);
    if (!f) snprintf(buf, len, "basic");
    return buf;
}

/* ---- small utilities -------------------------------------------------------------------- */

static void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q) {
        fprintf(stderr, "sim: out of memory\n");
        abort();
    }
    return q;
}

#define GROW(arr, n, cap)                                                                          \
    do {                                                                                           \
        if ((n) >= (cap)) {                                                                        \
            (cap) = (cap) ? (cap) * 2 : 16;                                                        \
            if ((cap) <= (n)) (cap) = (n) + 1;                                                     \
            (arr) = xrealloc((arr), (cap) * sizeof *(arr));                                        \
        }                                                                                          \
    } while (0)

struct vec64 { uint64_t *v; size_t n, cap; };

static void vpush(struct vec64 *v, uint64_t x) {
    GROW(v->v, v->n, v->cap);
    v->v[v->n++] = x;
}

/* Byte buffers (little-endian) for records and snapshots. */
struct buf { uint8_t *b; size_t n, cap; };

static void put(struct buf *w, const void *p, size_t n) {
    if (w->n + n > w->cap) {
        w->cap = (w->n + n) * 2 + 64;
        w->b = xrealloc(w->b, w->cap);
    }
    if (n) memcpy(w->b + w->n, p, n);
    w->n += n;
}

static void wr32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void wr64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t rd32(const uint8_t *p) {
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--) v = v << 8 | p[i];
    return v;
}
static uint64_t rd64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}
static void put8(struct buf *w, uint8_t v) { put(w, &v, 1); }
static void put32(struct buf *w, uint32_t v) {
    uint8_t b[4];
    wr32(b, v);
    put(w, b, 4);
}
static void put64(struct buf *w, uint64_t v) {
    uint8_t b[8];
    wr64(b, v);
    put(w, b, 8);
}

/* A bounds-checked reader: any overrun sets bad and returns zeros. */
struct reader { const uint8_t *p; size_t n, off; bool bad; };

static const uint8_t *take(struct reader *r, size_t n) {
    if (r->bad || n > r->n - r->off) {
        r->bad = true;
        return NULL;
    }
    const uint8_t *p = r->p + r->off;
    r->off += n;
    return p;
}
static uint8_t get8(struct reader *r) {
    const uint8_t *p = take(r, 1);
    return p ? *p : 0;
}
static uint32_t get32(struct reader *r) {
    const uint8_t *p = take(r, 4);
    return p ? rd32(p) : 0;
}
static uint64_t get64(struct reader *r) {
    const uint8_t *p = take(r, 8);
    return p ? rd64(p) : 0;
}

static uint32_t crc_table[256];

static uint32_t crc32(const uint8_t *p, size_t n) { /* IEEE 802.3, reflected */
    if (!crc_table[1])
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            crc_table[i] = c;
        }
    uint32_t c = ~0u;
    while (n--) c = crc_table[(c ^ *p++) & 0xff] ^ (c >> 8);
    return ~c;
}

static uint64_t fnv(const void *p, size_t n) {
    const uint8_t *b = p;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

/* Reference-counted immutable bytes: a snapshot is shared by the node's durable copy, queued
 * writes and messages in flight (duplicates included). */
struct blob { unsigned ref; size_t len; uint8_t b[]; };

static struct blob *blob_new(size_t len) {
    struct blob *x = xrealloc(NULL, sizeof *x + len);
    x->ref = 1;
    x->len = len;
    return x;
}
static struct blob *blob_ref(struct blob *x) {
    if (x) x->ref++;
    return x;
}
static void blob_unref(struct blob *x) {
    if (x && !--x->ref) free(x);
}

/* ---- configurations --------------------------------------------------------------------- */

static bool conf_voter(const struct raft_conf *c, raft_id id) {
    for (unsigned i = 0; i < c->n_voters; i++)
        if (c->voters[i] == id) return true;
    return false;
}
static bool conf_learner(const struct raft_conf *c, raft_id id) {
    for (unsigned i = 0; i < c->n_learners; i++)
        if (c->learners[i] == id) return true;
    return false;
}
static bool conf_has(const struct raft_conf *c, raft_id id) { return conf_voter(c, id) || conf_learner(c, id); }

static bool conf_same(const struct raft_conf *a, const struct raft_conf *b) {
    if (a->n_voters != b->n_voters || a->n_learners != b->n_learners) return false;
    for (unsigned i = 0; i < a->n_voters; i++)
        if (!conf_voter(b, a->voters[i])) return false;
    for (unsigned i = 0; i < a->n_learners; i++)
        if (!conf_learner(b, a->learners[i])) return false;
    return true;
}

/* Servers whose voting right differs, and servers in one configuration but not the other. */
static unsigned voter_diff(const struct raft_conf *a, const struct raft_conf *b) {
    unsigned d = 0;
    for (unsigned i = 0; i < a->n_voters; i++) d += !conf_voter(b, a->voters[i]);
    for (unsigned i = 0; i < b->n_voters; i++) d += !conf_voter(a, b->voters[i]);
    return d;
}
static unsigned member_diff(const struct raft_conf *a, const struct raft_conf *b) {
    unsigned d = 0;
    for (unsigned i = 0; i < a->n_voters; i++) d += !conf_has(b, a->voters[i]);
    for (unsigned i = 0; i < a->n_learners; i++) d += !conf_has(b, a->learners[i]);
    for (unsigned i = 0; i < b->n_voters; i++) d += !conf_has(a, b->voters[i]);
    for (unsigned i = 0; i < b->n_learners; i++) d += !conf_has(a, b->learners[i]);
    return d;
}

static const char *conf_str(const struct raft_conf *c, char *buf, size_t len) {
    size_t off = (size_t)snprintf(buf, len, "{v");
    for (unsigned i = 0; i < c->n_voters && off < len; i++)
        off += (size_t)snprintf(buf + off, len - off, "%s%u", i ? "," : "", c->voters[i]);
    if (c->n_learners && off < len) off += (size_t)snprintf(buf + off, len - off, " l");
    for (unsigned i = 0; i < c->n_learners && off < len; i++)
        off += (size_t)snprintf(buf + off, len - off, "%s%u", i ? "," : "", c->learners[i]);
    if (off < len) snprintf(buf + off, len - off, "}");
    return buf;
}

struct sim;
static const struct raft_conf *boot_conf(const struct sim *s);

/* The configuration a node may hold where `want` is in force: `want`, or, on a node that joined
 * later (no bootstrap peers), none where the bootstrap configuration is in force, which it has
 * no way to know (it is in no log; only snapshots taken by others carry it). Either way such a
 * node is no voter there. */
static bool conf_ok(const struct sim *s, bool joined, const struct raft_conf *got, const struct raft_conf *want) {
    return conf_same(got, want) ||
           (joined && !got->n_voters && !got->n_learners && conf_same(want, boot_conf(s)));
}

static void put_conf(struct buf *w, const struct raft_conf *c) {
    put32(w, c->n_voters);
    put32(w, c->n_learners);
    for (unsigned i = 0; i < c->n_voters; i++) put32(w, c->voters[i]);
    for (unsigned i = 0; i < c->n_learners; i++) put32(w, c->learners[i]);
}

static void get_conf(struct reader *r, struct raft_conf *c) {
    memset(c, 0, sizeof *c);
    c->n_voters = get32(r);
    c->n_learners = get32(r);
    if (c->n_voters > RAFT_MAX_NODES || c->n_learners > RAFT_MAX_NODES) {
        r->bad = true;
        c->n_voters = c->n_learners = 0;
        return;
    }
    for (unsigned i = 0; i < c->n_voters; i++) c->voters[i] = get32(r);
    for (unsigned i = 0; i < c->n_learners; i++) c->learners[i] = get32(r);
}

/* ---- the replicated FIFO queue: commands ------------------------------------------------ */

/* AMQP-like: a dequeue hands out the head message, which stays unacknowledged until an ACK of
 * its value removes it (ACK answers 1, or 0 for a value not unacknowledged: a second ack, a bogus
 * one). */
enum { OP_ENQ = 1, OP_DEQ = 2, OP_ACK = 3 };
struct op { uint32_t kind; uint32_t client; uint64_t id; uint64_t value; };
#define EMPTY UINT64_MAX

static const char *op_name(uint32_t kind) { return kind == OP_ENQ ? "enq" : kind == OP_DEQ ? "deq" : "ack"; }

/* The unacknowledged set is small: a vector with swap-remove. Its digest (a sum of mixed values)
 * does not depend on order, so the model can keep one per index. */
static bool set_remove(struct vec64 *v, uint64_t x) {
    for (size_t k = 0; k < v->n; k++)
        if (v->v[k] == x) {
            v->v[k] = v->v[--v->n];
            return true;
        }
    return false;
}

static uint64_t umix(uint64_t v) { return splitmix(&v); }

static int cmp64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static struct op decode(const struct raft_entry *e) {
    struct op o = {0, 0, 0, 0};
    if (e->type == RAFT_ENTRY_NORMAL && e->len == sizeof o) memcpy(&o, e->data, sizeof o);
    return o;
}

/* What an entry is, for comparing logs: the op id of a command, a hash of a configuration
 * (top bit set), 0 for a no-op. */
static uint64_t entry_op(const struct raft_entry *e) {
    if (e->type == RAFT_ENTRY_NORMAL) return decode(e).id;
    if (e->type == RAFT_ENTRY_CONF) return (1ull << 63) | fnv(e->data, e->len);
    return 0;
}

/* ---- simulator state -------------------------------------------------------------------- */

/* A write issued to a node's disk and not yet durable. */
enum { PW_ENTRIES = 1, PW_SNAP_LOCAL, PW_SNAP_INSTALL, PW_COMPACT };
struct pwrite {
    int kind;
    struct buf rec;                     /* the framed record (not for PW_COMPACT) */
    raft_index first;                   /* PW_ENTRIES: entries first..first+n-1 with terms */
    size_t n;
    raft_term *terms;
    struct raft_snapshot_meta meta;     /* snapshots */
    struct blob *blob;
    raft_index compact;                 /* PW_COMPACT */
};

enum { REC_ENTRIES = 1, REC_SNAP = 2 };

/* A client operation proposed on a node and not yet acknowledged. */
struct pending { raft_index index; raft_term term; uint64_t op_id; uint32_t kind; uint64_t value; };

/* A read-index read: issued on a node (incarnation), answered with an index, then served. */
enum { RD_ISSUED, RD_ANSWERED, RD_DONE };
struct rdreq { raft_id node; unsigned inc; uint64_t must; raft_index index; int st; };

enum { NS_UNUSED, NS_UP, NS_DOWN, NS_RETIRED };

struct node {
    raft_id id;
    int st;
    bool joined;      /* added after bootstrap: no configuration of its own at first */
    unsigned inc;     /* incarnation: bumped at each start */
    struct raft r;
    /* durable: the hard state, and the write-ahead log */
    raft_term d_term;
    raft_id d_vote;
    struct buf wal;
    bool torn_made;   /* the last crash tore a record: recovery must find it */
    /* what the write-ahead log holds (kept alongside to check recovery and commit durability):
     * the latest durable snapshot, and the terms of durable entries dt_first.. */
    bool has_dsnap;
    struct raft_snapshot_meta dsnap;
    struct blob *dsnap_blob;
    raft_index dt_first;
    struct vec64 dt;
    /* issued, not yet durable writes, in issue order */
    struct pwrite *pw;
    size_t n_pw, cap_pw;
    raft_index snap_queued; /* highest snapshot index taken, installed or being written */
    /* volatile: the state machine */
    struct vec64 q;
    size_t q_head;
    struct vec64 unacked; /* dequeued, not yet acknowledged */
    raft_index applied;
    raft_term applied_term;
    struct raft_conf sm_conf; /* configuration at `applied` */
    /* volatile: what the checkers saw last */
    raft_index commit_seen;
    bool was_leader;
    raft_term lead_term;
    struct raft_conf last_conf;
    raft_index conf_checked; /* highest CONF entry appended as leader already checked */
    raft_index seen_last;    /* its last log index after the previous step */
    bool asleep;
    unsigned sleep_ticks, sleep_limit;
    struct pending *pend;
    size_t n_pend, cap_pend;
    uint64_t *rwait; /* read ctxs answered by the library, waiting for applied >= index */
    size_t n_rwait, cap_rwait;
};

struct nmsg {
    struct raft_msg m;
    struct raft_entry *ents;
    struct blob *blob;              /* RAFT_MSG_SNAPSHOT: the attached snapshot */
    struct raft_snapshot_meta meta; /* its meta (m.snap is pointed here at delivery) */
    uint64_t due, seq;
};

struct lm { raft_index index; raft_term term, prev_term; uint64_t op; };
struct gconf { raft_index index; struct raft_conf c; };

struct sim {
    const struct sim_opts *o;
    struct sim_result *res;
    struct sim_rng g;
    unsigned features;
    unsigned n0;      /* bootstrap voters */
    unsigned n_slots; /* slots ever started */
    struct node nodes[MAX_SLOTS];
    bool cut[MAX_SLOTS][MAX_SLOTS]; /* [from][to]: messages on that link are lost */
    struct nmsg *net;
    size_t n_net, cap_net;
    uint64_t now, seq, knobs, knobs2;
    uint64_t heal_at; /* the current partition ends then (0: none) */
    unsigned reorder_pct, drop_pct, dup_pct, max_delay, crash_permille, part_permille;
    unsigned cc_permille, transfer_permille, snap_permille;
    unsigned cc_wanted; /* membership changes the operator still wants to make (no leader yet) */
    unsigned replay_permille;
    struct nmsg hist[HIST];     /* delivered messages kept for replays: 1 in 8 appends,
                                   heartbeats and their answers */
    struct nmsg hist_ctl[HIST]; /* votes, snapshots, TimeoutNow: the rare, dangerous kind */
    unsigned hist_n, hist_ctl_n;
    const struct raft_msg *cur_msg; /* the message being stepped (for RAFT_UPD_SNAPSHOT) */
    struct blob *cur_blob;
    bool vote_check, vote_ok; /* the message being stepped asks for a vote; may it get one? */
    /* checkers */
    raft_id *leader_of_term;
    size_t n_lot;
    struct lm *lm; /* (index, term) -> (op, prev_term), open addressing */
    size_t lm_cap, lm_n;
    /* the committed log as first seen, indexes 0..gc_len, and the model's state after each */
    raft_term *gc_term;
    raft_term *gc_cterm; /* the term in which the index was committed (its committing leader's) */
    uint64_t *gc_op, *gc_result;
    size_t *gc_head, *gc_tail; /* the model queue is model.v[head..tail) after that index */
    size_t *gc_ucnt;           /* and its unacknowledged set has this many values */
    uint64_t *gc_uhash;        /* with this digest */
    size_t gc_len, gc_cap;
    struct gconf *gconf; /* committed configurations, by index */
    size_t n_gconf, cap_gconf;
    struct raft_conf boot;
    struct vec64 model; /* every value ever enqueued by a committed entry, in order */
    size_t model_head;
    struct vec64 munacked; /* the model's unacknowledged values */
    uint64_t munacked_hash;
    struct vec64 to_ack;   /* values clients got from acknowledged dequeues and will ack */
    struct vec64 acked_enq, dequeued;
    struct rdreq *rd;
    size_t n_rd, cap_rd;
    uint64_t max_observed; /* highest index a client has seen acknowledged or read */
    uint64_t next_op;
    bool failed;
    char tr[TRACE_LINES][TRACE_LEN];
    unsigned tr_n;
};

static void trace(struct sim *s, const char *fmt, ...) {
    char *line = s->tr[s->tr_n++ % TRACE_LINES];
    int k = snprintf(line, TRACE_LEN, "[%6llu] ", (unsigned long long)s->now);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line + k, TRACE_LEN - (size_t)k, fmt, ap);
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
    trace(s, "FAIL: %s", s->res->why);
}

#define ULL(x) ((unsigned long long)(x))

static struct node *node_by_id(struct sim *s, raft_id id) {
    return id >= 1 && id <= MAX_SLOTS ? &s->nodes[id - 1] : NULL;
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

/* ---- the model: committed log, queue state per index, configurations -------------------- */

static void gc_ensure(struct sim *s, size_t i) {
    if (i < s->gc_cap) return;
    size_t cap = s->gc_cap ? s->gc_cap : 256;
    while (cap <= i) cap *= 2;
    s->gc_term = xrealloc(s->gc_term, cap * sizeof *s->gc_term);
    s->gc_cterm = xrealloc(s->gc_cterm, cap * sizeof *s->gc_cterm);
    s->gc_op = xrealloc(s->gc_op, cap * sizeof *s->gc_op);
    s->gc_result = xrealloc(s->gc_result, cap * sizeof *s->gc_result);
    s->gc_head = xrealloc(s->gc_head, cap * sizeof *s->gc_head);
    s->gc_tail = xrealloc(s->gc_tail, cap * sizeof *s->gc_tail);
    s->gc_ucnt = xrealloc(s->gc_ucnt, cap * sizeof *s->gc_ucnt);
    s->gc_uhash = xrealloc(s->gc_uhash, cap * sizeof *s->gc_uhash);
    s->gc_cap = cap;
}

static const struct raft_conf *boot_conf(const struct sim *s) { return &s->boot; }

/* The committed configuration in force at index i. */
static const struct raft_conf *conf_at(const struct sim *s, raft_index i) {
    for (size_t k = s->n_gconf; k > 0; k--)
        if (s->gconf[k - 1].index <= i) return &s->gconf[k - 1].c;
    return &s->boot;
}

static void model_apply(struct sim *s, raft_index i, const struct raft_entry *e) {
    struct op o = decode(e);
    uint64_t result = 0;
    if (o.kind == OP_ENQ) {
        vpush(&s->model, o.value);
    } else if (o.kind == OP_DEQ) {
        result = s->model_head < s->model.n ? s->model.v[s->model_head++] : EMPTY;
        if (result != EMPTY) {
            vpush(&s->dequeued, result);
            vpush(&s->munacked, result);
            s->munacked_hash += umix(result);
        }
    } else if (o.kind == OP_ACK) {
        result = set_remove(&s->munacked, o.value);
        if (result) s->munacked_hash -= umix(o.value);
    }
    s->gc_result[i] = result;
    s->gc_head[i] = s->model_head;
    s->gc_tail[i] = s->model.n;
    s->gc_ucnt[i] = s->munacked.n;
    s->gc_uhash[i] = s->munacked_hash;
    if (e->type == RAFT_ENTRY_CONF) {
        struct raft_conf c;
        if (raft_conf_decode(&c, e->data, e->len)) {
            fail(s, "index %llu commits a malformed configuration", ULL(i));
            return;
        }
        GROW(s->gconf, s->n_gconf, s->cap_gconf);
        s->gconf[s->n_gconf++] = (struct gconf){i, c};
        s->res->conf_changes++;
        char b[96];
        trace(s, "COMMITTED conf at %llu: %s", ULL(i), conf_str(&c, b, sizeof b));
    }
}

/* A snapshot of the queue: [u64 n][n x u64 queued values, head first][u64 u][u x u64
 * unacknowledged values, ascending]. */
static struct blob *sm_serialize(const struct node *nd) {
    size_t cnt = nd->q.n - nd->q_head, ucnt = nd->unacked.n;
    struct blob *b = blob_new(16 + 8 * cnt + 8 * ucnt);
    wr64(b->b, cnt);
    for (size_t k = 0; k < cnt; k++) wr64(b->b + 8 + 8 * k, nd->q.v[nd->q_head + k]);
    uint64_t *u = xrealloc(NULL, (ucnt + 1) * sizeof *u);
    if (ucnt) memcpy(u, nd->unacked.v, ucnt * sizeof *u);
    qsort(u, ucnt, sizeof *u, cmp64);
    uint8_t *p = b->b + 8 + 8 * cnt;
    wr64(p, ucnt);
    for (size_t k = 0; k < ucnt; k++) wr64(p + 8 + 8 * k, u[k]);
    free(u);
    return b;
}

/* Does the blob hold a well-formed snapshot: counts that fit, unacknowledged values ascending? */
static bool snap_parse(const struct blob *b, uint64_t *cnt, uint64_t *ucnt) {
    if (!b || b->len < 16) return false;
    *cnt = rd64(b->b);
    if (*cnt > (b->len - 16) / 8) return false;
    *ucnt = rd64(b->b + 8 + 8 * *cnt);
    if (b->len != 16 + 8 * *cnt + 8 * *ucnt) return false;
    const uint8_t *u = b->b + 16 + 8 * *cnt;
    for (size_t k = 1; k < *ucnt; k++)
        if (rd64(u + 8 * k) <= rd64(u + 8 * (k - 1))) return false;
    return true;
}

/* The model's state at index i, against a snapshot: the queue exactly, the unacknowledged set by
 * size and digest. */
static bool model_matches(const struct sim *s, raft_index i, const struct blob *b) {
    uint64_t cnt, ucnt, h = 0;
    if (i > s->gc_len || !snap_parse(b, &cnt, &ucnt)) return false;
    if (cnt != s->gc_tail[i] - s->gc_head[i] || ucnt != s->gc_ucnt[i]) return false;
    for (size_t k = 0; k < cnt; k++)
        if (rd64(b->b + 8 + 8 * k) != s->model.v[s->gc_head[i] + k]) return false;
    for (size_t k = 0; k < ucnt; k++) h += umix(rd64(b->b + 16 + 8 * cnt + 8 * k));
    return h == s->gc_uhash[i];
}

/* Replace a node's state machine with a snapshot (already checked against the model). */
static void sm_load(struct node *nd, const struct raft_snapshot_meta *m, const struct blob *b) {
    nd->q.n = 0;
    nd->q_head = 0;
    nd->unacked.n = 0;
    uint64_t cnt, ucnt;
    if (snap_parse(b, &cnt, &ucnt)) {
        for (size_t k = 0; k < cnt; k++) vpush(&nd->q, rd64(b->b + 8 + 8 * k));
        for (size_t k = 0; k < ucnt; k++) vpush(&nd->unacked, rd64(b->b + 16 + 8 * cnt + 8 * k));
    }
    nd->applied = m->index;
    nd->applied_term = m->term;
    nd->sm_conf = m->conf;
}

/* A snapshot's checks against the model: committed (index, term), conf, bytes. */
static bool check_snapshot(struct sim *s, struct node *nd, const char *what,
                           const struct raft_snapshot_meta *m, const struct blob *b) {
    char c1[96], c2[96];
    if (m->index > s->gc_len || s->gc_term[m->index] != m->term) {
        fail(s, "node %u: %s snapshot at %llu term %llu is not the committed entry (committed %llu, "
                "term there %llu)", nd->id, what, ULL(m->index), ULL(m->term), ULL(s->gc_len),
             ULL(m->index <= s->gc_len ? s->gc_term[m->index] : 0));
        return false;
    }
    if (!conf_same(&m->conf, conf_at(s, m->index))) {
        fail(s, "node %u: %s snapshot at %llu carries conf %s, the committed one there is %s", nd->id,
             what, ULL(m->index), conf_str(&m->conf, c1, sizeof c1),
             conf_str(conf_at(s, m->index), c2, sizeof c2));
        return false;
    }
    if (!model_matches(s, m->index, b)) {
        fail(s, "node %u: %s snapshot at %llu differs from the model's queue there", nd->id, what,
             ULL(m->index));
        return false;
    }
    return true;
}

/* ---- invariant checks ------------------------------------------------------------------- */

/* Log matching: every (index, term) ever stored anywhere names one entry with one predecessor
 * term; by induction two logs sharing (index, term) are identical up to index. */
static void check_log_entry(struct sim *s, struct node *nd, raft_index i) {
    const struct raft_entry *e = raft_entry_at(&nd->r, i);
    if (!e) {
        fail(s, "node %u: written entry %llu is not in its log", nd->id, ULL(i));
        return;
    }
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
                fail(s, "log matching: node %u index %llu term %llu holds op %llx prev_term %llu, "
                        "another log had op %llx prev_term %llu", nd->id, ULL(i), ULL(x.term),
                     ULL(x.op), ULL(x.prev_term), ULL(y->op), ULL(y->prev_term));
            return;
        }
        h = (h + 1) & (s->lm_cap - 1);
    }
    s->lm[h] = x;
    s->lm_n++;
}

/* State machine safety at the commit index: the first node to commit an index fixes it. */
static void check_commit(struct sim *s, struct node *nd, raft_index commit) {
    if (commit < nd->commit_seen) {
        fail(s, "commit index of node %u went back from %llu to %llu", nd->id, ULL(nd->commit_seen),
             ULL(commit));
        return;
    }
    for (raft_index i = nd->commit_seen + 1; i <= commit && !s->failed; i++) {
        const struct raft_entry *e = raft_entry_at(&nd->r, i);
        if (!e) {
            if (i <= nd->r.log_offset && i <= s->gc_len) continue; /* under its snapshot */
            fail(s, "node %u commits %llu, which is %s", nd->id, ULL(i),
                 i <= nd->r.log_offset ? "compacted but was never committed anywhere"
                                       : "beyond its log");
            return;
        }
        if (i <= s->gc_len) {
            if (s->gc_term[i] != e->term || s->gc_op[i] != entry_op(e))
                fail(s, "state machine safety: index %llu committed as term %llu op %llx, node %u "
                        "commits term %llu op %llx", ULL(i), ULL(s->gc_term[i]), ULL(s->gc_op[i]),
                     nd->id, ULL(e->term), ULL(entry_op(e)));
            continue;
        }
        gc_ensure(s, i);
        s->gc_len = i;
        s->gc_term[i] = e->term;
        /* commit knowledge starts at the leader that decides it, so the first node to report
         * an index committed is that leader, in its term */
        s->gc_cterm[i] = nd->r.term;
        s->gc_op[i] = entry_op(e);
        model_apply(s, i, e);
        s->res->committed++;
    }
    nd->commit_seen = commit;
}

/* Does node nd hold (i, t) durably? An index under its durable snapshot is committed, and
 * state machine safety (checked separately) makes it the committed entry. */
static bool durable_has(const struct node *nd, raft_index i, raft_term t) {
    if (nd->st == NS_UNUSED || nd->st == NS_RETIRED) return false;
    if (nd->has_dsnap && i <= nd->dsnap.index) return true;
    return i >= nd->dt_first && i < nd->dt_first + nd->dt.n && nd->dt.v[i - nd->dt_first] == t;
}

static bool durable_quorum(struct sim *s, const struct raft_conf *c, raft_index i, raft_term t) {
    unsigned have = 0;
    for (unsigned k = 0; k < c->n_voters; k++) {
        const struct node *v = node_by_id(s, c->voters[k]);
        have += v && durable_has(v, i, t);
    }
    return c->n_voters && have * 2 > c->n_voters;
}

/* Election safety and leader completeness, when a node reports itself leader. */
static void check_leader(struct sim *s, struct node *nd, const struct raft_update *u) {
    raft_term t = nd->r.term;
    if (t >= s->n_lot) {
        size_t cap = (t + 1) * 2;
        s->leader_of_term = xrealloc(s->leader_of_term, cap * sizeof *s->leader_of_term);
        memset(s->leader_of_term + s->n_lot, 0, (cap - s->n_lot) * sizeof *s->leader_of_term);
        s->n_lot = cap;
    }
    if (s->leader_of_term[t] && s->leader_of_term[t] != nd->id)
        fail(s, "election safety: nodes %u and %u both leaders of term %llu", s->leader_of_term[t],
             nd->id, ULL(t));
    if (!s->leader_of_term[t]) {
        s->leader_of_term[t] = nd->id;
        s->res->elections++;
        if (t > s->res->max_term) s->res->max_term = t;
    }
    if (nd->was_leader && nd->lead_term == t) return; /* checked when it was elected */
    nd->lead_term = t;
    /* A learner never leads. A server missing from its own latest configuration may (Raft
     * dissertation 4.2.2: it may be needed until that configuration commits, and does not count
     * its own vote), but not once it knows the configuration is committed. */
    char b[96];
    if (u->conf && !conf_voter(u->conf, nd->id) &&
        (conf_learner(u->conf, nd->id) || nd->r.conf_index <= nd->r.commit))
        fail(s, "election safety: node %u became leader of term %llu but is not a voter of %s "
                "(from index %llu, commit %llu)", nd->id, ULL(t), conf_str(u->conf, b, sizeof b),
             ULL(nd->r.conf_index), ULL(nd->r.commit));
    /* Leader completeness is about later terms: an entry committed in term U must be in the
     * log of every leader of a term after U. A candidate of an older term can still win with
     * votes granted back then (delayed or replayed answers) and need not hold it. */
    raft_index off = nd->r.log_offset;
    for (raft_index i = off > 1 ? off : 1; i <= s->gc_len; i++) {
        if (s->gc_cterm[i] >= t && i != off) continue;
        if (i == off) { /* its snapshot covers 1..off; the term there must be the committed one */
            if (raft_term_at(&nd->r, i) != s->gc_term[i]) {
                fail(s, "leader completeness: new leader %u of term %llu has a snapshot at %llu of "
                        "term %llu, committed term %llu", nd->id, ULL(t), ULL(i),
                     ULL(raft_term_at(&nd->r, i)), ULL(s->gc_term[i]));
                return;
            }
            continue;
        }
        const struct raft_entry *e = raft_entry_at(&nd->r, i);
        if (!e || e->term != s->gc_term[i] || entry_op(e) != s->gc_op[i]) {
            fail(s, "leader completeness: new leader %u of term %llu lacks committed index %llu",
                 nd->id, ULL(t), ULL(i));
            return;
        }
    }
}

/* A leader appended configuration entry idx (Raft dissertation 4.1 and its erratum: one server
 * at a time, only once the previous configuration and an entry of the current term are
 * committed). Commit indexes only grow within a term, so checking after the step is exact. */
static void check_conf_append(struct sim *s, struct node *nd, raft_index idx, const struct raft_entry *e) {
    struct raft_conf c, pc;
    char b1[96], b2[96];
    if (raft_conf_decode(&c, e->data, e->len)) {
        fail(s, "membership: leader %u appended a malformed configuration at %llu", nd->id, ULL(idx));
        return;
    }
    struct raft *r = &nd->r;
    if (raft_term_at(r, r->commit) != r->term)
        fail(s, "membership: leader %u of term %llu appended a configuration at %llu before committing "
                "an entry of its term (commit %llu, term %llu)", nd->id, ULL(r->term), ULL(idx),
             ULL(r->commit), ULL(raft_term_at(r, r->commit)));
    const struct raft_conf *prev = &nd->last_conf;
    for (raft_index p = idx - 1; p > r->log_offset; p--) {
        const struct raft_entry *q = raft_entry_at(r, p);
        if (!q || q->type != RAFT_ENTRY_CONF) continue;
        if (p > r->commit)
            fail(s, "membership: leader %u appended a configuration at %llu while the one at %llu is "
                    "uncommitted (commit %llu)", nd->id, ULL(idx), ULL(p), ULL(r->commit));
        if (!raft_conf_decode(&pc, q->data, q->len)) prev = &pc;
        break;
    }
    if (voter_diff(prev, &c) > 1 || member_diff(prev, &c) > 1)
        fail(s, "membership: leader %u changes more than one server at %llu: %s -> %s", nd->id,
             ULL(idx), conf_str(prev, b1, sizeof b1), conf_str(&c, b2, sizeof b2));
    trace(s, "n%u appends conf at %llu: %s -> %s", nd->id, ULL(idx), conf_str(prev, b1, sizeof b1),
          conf_str(&c, b2, sizeof b2));
}

/* The configuration a node reports is the last CONF entry of its log; without one, the
 * committed configuration at its base: its snapshot's index or the start of its log, whichever
 * is higher (both are committed), or with neither the bootstrap configuration (see conf_ok for
 * nodes that joined later). */
static void check_conf_in_force(struct sim *s, struct node *nd, const struct raft_conf *c) {
    struct raft *r = &nd->r;
    char b1[96], b2[96];
    for (raft_index p = raft_last_index(r); p > r->log_offset; p--) {
        const struct raft_entry *q = raft_entry_at(r, p);
        if (!q || q->type != RAFT_ENTRY_CONF) continue;
        struct raft_conf lc;
        if (!raft_conf_decode(&lc, q->data, q->len) && !conf_same(&lc, c))
            fail(s, "membership: node %u reports conf %s but the last in its log (at %llu) is %s",
                 nd->id, conf_str(c, b1, sizeof b1), ULL(p), conf_str(&lc, b2, sizeof b2));
        return;
    }
    raft_index base = r->snap.index > r->log_offset ? r->snap.index : r->log_offset;
    const struct raft_conf *want = base ? conf_at(s, base) : &s->boot;
    if (!conf_ok(s, nd->joined, c, want))
        fail(s, "membership: node %u reports conf %s but its log (base %llu) has no CONF entry and the "
                "configuration there is %s", nd->id, conf_str(c, b1, sizeof b1), ULL(base),
             conf_str(want, b2, sizeof b2));
}

/* ---- disk ------------------------------------------------------------------------------- */

static size_t rec_open(struct buf *w) {
    size_t at = w->n;
    put64(w, 0); /* length and checksum, filled by rec_close */
    return at;
}

static void rec_close(struct buf *w, size_t at) {
    uint32_t len = (uint32_t)(w->n - at - 8);
    wr32(w->b + at, len);
    wr32(w->b + at + 4, crc32(w->b + at + 8, len));
}

static void enc_entries(struct buf *w, raft_index first, const struct raft_entry *e, size_t n) {
    size_t at = rec_open(w);
    put8(w, REC_ENTRIES);
    put64(w, first);
    put32(w, (uint32_t)n);
    for (size_t k = 0; k < n; k++) {
        put64(w, e[k].term);
        put32(w, e[k].type);
        put32(w, e[k].len);
        put(w, e[k].data, e[k].len);
    }
    rec_close(w, at);
}

/* reset_first != 0: the log is emptied and restarts at reset_first (installed snapshot, or the
 * checkpoint a compaction writes); 0: the log is kept (a snapshot the node took itself). */
static void enc_snap(struct buf *w, const struct raft_snapshot_meta *m, raft_index reset_first,
                     const struct blob *b) {
    size_t at = rec_open(w);
    put8(w, REC_SNAP);
    put64(w, m->index);
    put64(w, m->term);
    put_conf(w, &m->conf);
    put64(w, reset_first);
    put64(w, b->len);
    put(w, b->b, b->len);
    rec_close(w, at);
}

/* The log as recovery rebuilds it from the write-ahead log. */
struct replay {
    bool has_snap;
    struct raft_snapshot_meta meta;
    struct blob *blob;
    raft_index first;
    struct raft_entry *ents;
    size_t n, cap;
    size_t good_len; /* bytes of whole, valid records */
};

static void replay_free(struct replay *rp) {
    for (size_t k = 0; k < rp->n; k++) free(rp->ents[k].data);
    free(rp->ents);
    blob_unref(rp->blob);
}

/* Scan the write-ahead log up to the first damaged record; replay the valid ones. */
static void replay(struct sim *s, struct node *nd, struct replay *rp) {
    memset(rp, 0, sizeof *rp);
    rp->first = 1;
    const uint8_t *w = nd->wal.b;
    size_t off = 0, len_all = nd->wal.n;
    while (off < len_all && !s->failed) {
        if (len_all - off < 8) break;
        uint32_t len = rd32(w + off), crc = rd32(w + off + 4);
        if (len > len_all - off - 8 || crc32(w + off + 8, len) != crc) break;
        struct reader r = {w + off + 8, len, 0, false};
        uint8_t type = get8(&r);
        if (type == REC_ENTRIES) {
            raft_index first = get64(&r);
            uint32_t n = get32(&r);
            if (first < rp->first || first > rp->first + rp->n) {
                fail(s, "disk: node %u's log record at %llu leaves a hole or rewrites compacted entries "
                        "(log %llu..%llu)", nd->id, ULL(first), ULL(rp->first), ULL(rp->first + rp->n - 1));
                return;
            }
            while (rp->n > first - rp->first) free(rp->ents[--rp->n].data);
            for (uint32_t k = 0; k < n && !r.bad; k++) {
                struct raft_entry e;
                e.term = get64(&r);
                e.type = get32(&r);
                e.len = get32(&r);
                const uint8_t *d = take(&r, e.len);
                if (r.bad) break;
                e.data = (void *)(uintptr_t)d;
                GROW(rp->ents, rp->n, rp->cap);
                rp->ents[rp->n++] = copy_entry(&e);
            }
        } else if (type == REC_SNAP) {
            struct raft_snapshot_meta m;
            memset(&m, 0, sizeof m);
            m.index = get64(&r);
            m.term = get64(&r);
            get_conf(&r, &m.conf);
            raft_index reset_first = get64(&r);
            uint64_t dl = get64(&r);
            const uint8_t *d = take(&r, dl);
            if (!r.bad && (reset_first || !rp->has_snap || m.index > rp->meta.index)) {
                blob_unref(rp->blob);
                rp->blob = blob_new(dl);
                memcpy(rp->blob->b, d, dl);
                rp->meta = m;
                rp->has_snap = true;
            }
            if (!r.bad && reset_first) {
                while (rp->n) free(rp->ents[--rp->n].data);
                rp->first = reset_first;
            }
        } else {
            r.bad = true;
        }
        if (r.bad || r.off != len) {
            fail(s, "disk: node %u has a malformed record with a valid checksum at byte %zu", nd->id, off);
            return;
        }
        off += 8 + len;
    }
    rp->good_len = off;
}

/* A write reached the disk: append it to the log and update the durable view. */
static void checkpoint(struct sim *s, struct node *nd, raft_index ci);

static void dv_commit(struct sim *s, struct node *nd, struct pwrite *p) {
    if (p->kind == PW_COMPACT) {
        checkpoint(s, nd, p->compact);
        return;
    }
    put(&nd->wal, p->rec.b, p->rec.n);
    if (p->kind == PW_ENTRIES) {
        if (p->first < nd->dt_first || p->first > nd->dt_first + nd->dt.n) {
            fail(s, "disk: node %u writes entries at %llu, leaving a hole or rewriting compacted "
                    "entries (stored %llu..%llu)", nd->id, ULL(p->first), ULL(nd->dt_first),
                 ULL(nd->dt_first + nd->dt.n - 1));
            return;
        }
        nd->dt.n = p->first - nd->dt_first;
        for (size_t k = 0; k < p->n; k++) vpush(&nd->dt, p->terms[k]);
        return;
    }
    bool reset = p->kind == PW_SNAP_INSTALL;
    if (reset || !nd->has_dsnap || p->meta.index > nd->dsnap.index) {
        blob_unref(nd->dsnap_blob);
        nd->dsnap_blob = blob_ref(p->blob);
        nd->dsnap = p->meta;
        nd->has_dsnap = true;
    }
    if (reset) {
        nd->dt.n = 0;
        nd->dt_first = p->meta.index + 1;
    }
}

/* Compaction: rewrite the log atomically as [snapshot, entries after ci]. */
static void checkpoint(struct sim *s, struct node *nd, raft_index ci) {
    if (!nd->has_dsnap || nd->dsnap.index < ci) {
        fail(s, "node %u: compaction to %llu but its durable snapshot is at %llu", nd->id, ULL(ci),
             ULL(nd->has_dsnap ? nd->dsnap.index : 0));
        return;
    }
    struct replay rp;
    replay(s, nd, &rp);
    if (s->failed) {
        replay_free(&rp);
        return;
    }
    raft_index keep = ci + 1 > rp.first ? ci + 1 : rp.first;
    struct buf w = {NULL, 0, 0};
    enc_snap(&w, &rp.meta, keep, rp.blob);
    size_t skip = keep - rp.first < rp.n ? keep - rp.first : rp.n;
    enc_entries(&w, keep, rp.ents + skip, rp.n - skip);
    free(nd->wal.b);
    nd->wal = w;
    replay_free(&rp);
    /* the durable view drops the same prefix */
    size_t drop = keep - nd->dt_first < nd->dt.n ? keep - nd->dt_first : nd->dt.n;
    memmove(nd->dt.v, nd->dt.v + drop, (nd->dt.n - drop) * sizeof *nd->dt.v);
    nd->dt.n -= drop;
    nd->dt_first = keep;
    s->res->compactions++;
}

static void pw_free(struct pwrite *p) {
    free(p->rec.b);
    free(p->terms);
    blob_unref(p->blob);
}

static struct pwrite *pw_new(struct node *nd, int kind) {
    GROW(nd->pw, nd->n_pw, nd->cap_pw);
    struct pwrite *p = &nd->pw[nd->n_pw++];
    memset(p, 0, sizeof *p);
    p->kind = kind;
    return p;
}

static void queue_snapshot(struct node *nd, int kind, const struct raft_snapshot_meta *m, struct blob *b) {
    struct pwrite *p = pw_new(nd, kind);
    p->meta = *m;
    p->blob = blob_ref(b);
    enc_snap(&p->rec, m, kind == PW_SNAP_INSTALL ? m->index + 1 : 0, b);
    if (nd->snap_queued < m->index) nd->snap_queued = m->index;
}

/* ---- applying updates ------------------------------------------------------------------- */

static void sm_apply(struct sim *s, struct node *nd, raft_index i, const struct raft_entry *e) {
    if (i != nd->applied + 1)
        fail(s, "node %u applied %llu after %llu", nd->id, ULL(i), ULL(nd->applied));
    nd->applied = i;
    nd->applied_term = e->term;
    if (i > s->gc_len || s->gc_term[i] != e->term || s->gc_op[i] != entry_op(e)) {
        fail(s, "node %u applies index %llu that differs from the committed log", nd->id, ULL(i));
        return;
    }
    if (e->type == RAFT_ENTRY_CONF && raft_conf_decode(&nd->sm_conf, e->data, e->len))
        fail(s, "node %u applies a malformed configuration at %llu", nd->id, ULL(i));
    struct op o = decode(e);
    uint64_t result = 0;
    if (o.kind == OP_ENQ) {
        vpush(&nd->q, o.value);
    } else if (o.kind == OP_DEQ) {
        result = nd->q_head < nd->q.n ? nd->q.v[nd->q_head++] : EMPTY;
        if (result != EMPTY) vpush(&nd->unacked, result);
    } else if (o.kind == OP_ACK) {
        result = set_remove(&nd->unacked, o.value);
    }
    if (result != s->gc_result[i])
        fail(s, "node %u: queue result at index %llu is %llu, the model says %llu", nd->id, ULL(i),
             ULL(result), ULL(s->gc_result[i]));
    /* client acknowledgement: the op was applied on the node that accepted it */
    for (size_t k = 0; k < nd->n_pend; k++) {
        struct pending *p = &nd->pend[k];
        if (p->index != i) continue;
        if (p->term == e->term && p->op_id == o.id) {
            if (p->kind == OP_ENQ) {
                vpush(&s->acked_enq, p->value);
                s->res->acked_enq++;
            } else if (p->kind == OP_DEQ) {
                s->res->acked_deq++;
                if (result != EMPTY) vpush(&s->to_ack, result); /* the client will ack it */
            } else {
                s->res->acked_ack++;
                set_remove(&s->to_ack, p->value); /* answered: done with it either way */
            }
            if (s->max_observed < i) s->max_observed = i;
        }
        nd->pend[k] = nd->pend[--nd->n_pend];
        break;
    }
}

/* Step 0 of an update: install the snapshot that came with the message being stepped. */
static void install(struct sim *s, struct node *nd, const struct raft_update *u) {
    const struct raft_snapshot_meta *m = &u->snapshot;
    const struct raft_msg *msg = s->cur_msg;
    if (!msg || msg->type != RAFT_MSG_SNAPSHOT || !msg->snap || msg->snap->index != m->index ||
        msg->snap->term != m->term) {
        fail(s, "node %u: RAFT_UPD_SNAPSHOT at %llu without a matching snapshot message", nd->id,
             ULL(m->index));
        return;
    }
    if (!check_snapshot(s, nd, "installed", m, s->cur_blob)) return;
    if (m->index < nd->applied) {
        fail(s, "node %u installs a snapshot at %llu below its applied index %llu", nd->id,
             ULL(m->index), ULL(nd->applied));
        return;
    }
    sm_load(nd, m, s->cur_blob);
    for (size_t k = 0; k < nd->n_pend;) /* proposals under the snapshot will not be applied here */
        if (nd->pend[k].index <= m->index) nd->pend[k] = nd->pend[--nd->n_pend];
        else k++;
    queue_snapshot(nd, PW_SNAP_INSTALL, m, s->cur_blob);
    s->res->installs++;
    trace(s, "n%u INSTALL snapshot %llu/%llu from n%u (%zu queued)", nd->id, ULL(m->index),
          ULL(m->term), msg->from, (size_t)(s->cur_blob->len / 8 - 1));
}

/* A snapshot of the state machine at `applied`, written like any other record. */
static void take_snapshot(struct sim *s, struct node *nd) {
    if (!nd->applied || nd->applied <= nd->snap_queued) return;
    struct raft_snapshot_meta m;
    memset(&m, 0, sizeof m);
    m.index = nd->applied;
    m.term = nd->applied_term;
    m.conf = nd->sm_conf;
    struct blob *b = sm_serialize(nd);
    if (check_snapshot(s, nd, "its own", &m, b)) {
        queue_snapshot(nd, PW_SNAP_LOCAL, &m, b);
        if (s->o->trace_all) trace(s, "n%u takes snapshot %llu", nd->id, ULL(m.index));
    }
    blob_unref(b);
}

static void serve_reads(struct sim *s, struct node *nd) {
    for (size_t k = 0; k < nd->n_rwait;) {
        struct rdreq *q = &s->rd[nd->rwait[k] - 1];
        if (q->index > nd->applied) {
            k++;
            continue;
        }
        raft_index a = nd->applied;
        size_t len = nd->q.n - nd->q_head;
        uint64_t head = len ? nd->q.v[nd->q_head] : EMPTY;
        if (a < q->must)
            fail(s, "linearizability: read %llu on node %u served at %llu, below %llu acknowledged "
                    "before it was issued", ULL(nd->rwait[k]), nd->id, ULL(a), ULL(q->must));
        else if (a > s->gc_len)
            fail(s, "linearizability: read %llu served at uncommitted index %llu", ULL(nd->rwait[k]), ULL(a));
        else if (len != s->gc_tail[a] - s->gc_head[a] || (len && head != s->model.v[s->gc_head[a]]) ||
                 nd->unacked.n != s->gc_ucnt[a])
            fail(s, "linearizability: read %llu on node %u at %llu sees length %zu head %llu unacked "
                    "%zu, the model has length %zu unacked %zu", ULL(nd->rwait[k]), nd->id, ULL(a), len,
                 ULL(head), nd->unacked.n, s->gc_tail[a] - s->gc_head[a], s->gc_ucnt[a]);
        if (s->max_observed < a) s->max_observed = a;
        q->st = RD_DONE;
        s->res->reads++;
        nd->rwait[k] = nd->rwait[--nd->n_rwait];
    }
}

static void process(struct sim *s, struct node *nd, const struct raft_update *u) {
    if (u->flags & RAFT_UPD_SNAPSHOT) install(s, nd, u);
    if (u->flags & RAFT_UPD_HARD_STATE) { /* synchronous and durable */
        if (u->term < nd->d_term) fail(s, "node %u term went back", nd->id);
        nd->d_term = u->term;
        nd->d_vote = u->vote;
    }
    if (u->flags & RAFT_UPD_ENTRIES) {
        struct pwrite *p = pw_new(nd, PW_ENTRIES);
        p->first = u->entries_first;
        p->n = u->n_entries;
        p->terms = xrealloc(NULL, (u->n_entries + 1) * sizeof *p->terms);
        for (size_t k = 0; k < u->n_entries; k++) p->terms[k] = u->entries[k].term;
        enc_entries(&p->rec, u->entries_first, u->entries, u->n_entries);
        for (size_t k = 0; k < u->n_entries; k++) {
            raft_index idx = u->entries_first + k;
            check_log_entry(s, nd, idx);
            const struct raft_entry *e = &u->entries[k];
            if (u->role == RAFT_LEADER && e->type == RAFT_ENTRY_CONF && e->term == nd->r.term &&
                idx > nd->conf_checked) {
                nd->conf_checked = idx;
                check_conf_append(s, nd, idx, e);
            }
        }
    }
    for (size_t k = 0; k < u->n_msgs; k++) {
        const struct raft_msg *m = &u->msgs[k];
        if (m->from != nd->id || !node_by_id(s, m->to) || m->to == nd->id) {
            fail(s, "node %u sends %s from %u to %u", nd->id, raft_msg_name(m->type), m->from, m->to);
            continue;
        }
        if (m->type == RAFT_MSG_SNAPSHOT && (!nd->has_dsnap || (m->snap && m->snap->index > nd->dsnap.index))) {
            fail(s, "node %u sends a snapshot at %llu but its latest durable one is at %llu", nd->id,
                 ULL(m->snap ? m->snap->index : 0), ULL(nd->has_dsnap ? nd->dsnap.index : 0));
            continue;
        }
        if (m->type == RAFT_MSG_SNAPSHOT && m->snap) { /* the library's meta must be right too */
            char b1[96], b2[96];
            if (m->snap->index > s->gc_len || m->snap->term != s->gc_term[m->snap->index] ||
                !conf_ok(s, nd->joined, &m->snap->conf, conf_at(s, m->snap->index)))
                fail(s, "node %u names snapshot %llu term %llu conf %s; committed: term %llu conf %s",
                     nd->id, ULL(m->snap->index), ULL(m->snap->term), conf_str(&m->snap->conf, b1, sizeof b1),
                     ULL(m->snap->index <= s->gc_len ? s->gc_term[m->snap->index] : 0),
                     conf_str(conf_at(s, m->snap->index), b2, sizeof b2));
        }
        if (s->vote_check && !s->vote_ok && !m->reject && m->to == s->cur_msg->from &&
            (m->type == RAFT_MSG_VOTE_RESP || m->type == RAFT_MSG_PREVOTE_RESP))
            fail(s, "election restriction: node %u grants a %s to n%u whose log (%llu, term %llu) is "
                    "behind its own", nd->id, raft_msg_name(s->cur_msg->type), m->to,
                 ULL(s->cur_msg->index), ULL(s->cur_msg->log_term));
        GROW(s->net, s->n_net, s->cap_net);
        struct nmsg *x = &s->net[s->n_net++];
        memset(x, 0, sizeof *x);
        x->m = *m;
        x->ents = copy_entries(m->entries, m->n_entries);
        x->m.entries = NULL;
        x->m.snap = NULL;
        if (m->type == RAFT_MSG_SNAPSHOT) { /* attach the latest durable snapshot */
            x->meta = nd->dsnap;
            x->blob = blob_ref(nd->dsnap_blob);
            x->m.index = x->meta.index;
            x->m.log_term = x->meta.term;
        }
        x->due = s->now + sim_rng_below(&s->g, s->max_delay + 1);
        x->seq = ++s->seq;
    }
    if (u->flags & RAFT_UPD_ROLE)
        trace(s, "n%u %s term %llu leader %u last %llu commit %llu", nd->id, raft_role_name(u->role),
              ULL(nd->r.term), u->leader, ULL(raft_last_index(&nd->r)), ULL(u->commit));
    if (u->role == RAFT_LEADER) check_leader(s, nd, u);
    /* commit durability: only a leader that stays leader decides commits with its own conf */
    if (u->role == RAFT_LEADER && nd->was_leader && u->commit > nd->commit_seen) {
        raft_term t = raft_term_at(&nd->r, u->commit);
        char b[96];
        if (!durable_quorum(s, &nd->last_conf, u->commit, t) &&
            !(u->conf && durable_quorum(s, u->conf, u->commit, t)))
            fail(s, "commit durability: leader %u commits %llu (term %llu), durable on no quorum of %s",
                 nd->id, ULL(u->commit), ULL(t), conf_str(&nd->last_conf, b, sizeof b));
    }
    nd->was_leader = u->role == RAFT_LEADER;
    if (u->commit != nd->commit_seen) check_commit(s, nd, u->commit);
    for (size_t k = 0; k < u->n_apply; k++) sm_apply(s, nd, u->apply_first + k, &u->apply[k]);
    for (size_t k = 0; k < u->n_reads; k++) {
        uint64_t ctx = u->reads[k].ctx;
        struct rdreq *q = ctx && ctx <= s->n_rd ? &s->rd[ctx - 1] : NULL;
        if (!q || q->node != nd->id || q->inc != nd->inc || q->st != RD_ISSUED) {
            fail(s, "node %u answers read %llu that it was not asked (or answers it twice)", nd->id, ULL(ctx));
            continue;
        }
        if (u->reads[k].index < q->must)
            fail(s, "linearizability: node %u gives read %llu index %llu, below %llu acknowledged "
                    "before it was issued", nd->id, ULL(ctx), ULL(u->reads[k].index), ULL(q->must));
        q->index = u->reads[k].index;
        q->st = RD_ANSWERED;
        GROW(nd->rwait, nd->n_rwait, nd->cap_rwait);
        nd->rwait[nd->n_rwait++] = ctx;
    }
    if (nd->n_rwait) serve_reads(s, nd);
    if (u->flags & RAFT_UPD_COMPACT) {
        if (u->compact_index > nd->applied)
            fail(s, "node %u compacts to %llu beyond applied %llu", nd->id, ULL(u->compact_index),
                 ULL(nd->applied));
        pw_new(nd, PW_COMPACT)->compact = u->compact_index;
    }
    if (u->conf) {
        /* checked on every change of the log's configuration part, flagged or not: a truncated
         * CONF entry must take its configuration with it */
        bool conf_touched = false;
        if (u->flags & RAFT_UPD_ENTRIES) {
            conf_touched = u->entries_first <= nd->seen_last;
            for (size_t k = 0; k < u->n_entries && !conf_touched; k++)
                conf_touched = u->entries[k].type == RAFT_ENTRY_CONF;
        }
        if (u->flags & RAFT_UPD_CONF || conf_touched) check_conf_in_force(s, nd, u->conf);
        if (u->flags & RAFT_UPD_CONF) {
            char b[96];
            trace(s, "n%u conf %s", nd->id, conf_str(u->conf, b, sizeof b));
        }
        nd->last_conf = *u->conf;
    }
    nd->seen_last = raft_last_index(&nd->r);
    if (u->flags & RAFT_UPD_SNAPSHOT_DUE && s->features & SIM_F_SNAPSHOT) take_snapshot(s, nd);
}

static int step(struct sim *s, struct node *nd, const struct raft_event *ev) {
    struct raft_update u;
    int rc = s->o->impl->step(&nd->r, ev, &u);
    s->res->steps++;
    if (rc == RAFT_ENOMEM) fail(s, "node %u: out of memory", nd->id);
    process(s, nd, &u);
    return rc;
}

static void wake(struct sim *s, struct node *nd) {
    if (!nd->asleep) return;
    nd->asleep = false;
    if (s->o->trace_all) trace(s, "n%u WAKE", nd->id);
    struct raft_event ev = {.type = RAFT_EV_WAKE};
    step(s, nd, &ev);
}

/* ---- nodes: start, crash, retire ---------------------------------------------------------- */

static struct raft_config node_config(struct sim *s, struct node *nd) {
    struct raft_config c;
    memset(&c, 0, sizeof c);
    uint64_t k = s->knobs, k2 = s->knobs2;
    c.id = nd->id;
    if (!nd->joined) { /* bootstrap voters; a joining node has no configuration of its own */
        c.n_peers = s->n0;
        for (unsigned i = 0; i < s->n0; i++) c.peers[i] = i + 1;
    }
    c.election_ticks = 4 + (unsigned)(k % 6);
    c.heartbeat_ticks = 1 + (unsigned)(k >> 8) % 2;
    c.max_inflight = 1 + (unsigned)(k >> 16) % 8;
    c.max_batch = 1 + (unsigned)(k >> 24) % 6;
    c.pre_vote = (k >> 32) % 4 != 0;
    c.check_quorum = (k >> 40) % 4 != 0;
    c.seed = s->o->seed * 1000003u + nd->id;
    if (s->features & SIM_F_SNAPSHOT) {
        c.snapshot_threshold = k2 % 4 ? 4 + (unsigned)(k2 >> 8) % 60 : 0; /* 0: random ones only */
        c.trailing = (unsigned)(k2 >> 16) % 16;
    }
    return c;
}

/* Start (or restart) a node from its disk: recover the write-ahead log, restore the library. */
static void node_start(struct sim *s, struct node *nd) {
    struct raft_config c = node_config(s, nd);
    struct replay rp;
    replay(s, nd, &rp);
    if (rp.good_len < nd->wal.n) {
        s->res->torn++;
        trace(s, "n%u recovery: damaged record at byte %zu, %zu bytes cut", nd->id, rp.good_len,
              nd->wal.n - rp.good_len);
        if (!nd->torn_made) fail(s, "disk: node %u's recovery found damage but no write was torn", nd->id);
        nd->wal.n = rp.good_len;
    } else if (nd->torn_made) {
        fail(s, "disk: node %u's torn write went undetected", nd->id);
    }
    nd->torn_made = false;
    /* what was reported durable (and what reached the disk unreported) must all be there */
    bool same = rp.has_snap == nd->has_dsnap && rp.first == nd->dt_first && rp.n == nd->dt.n &&
                (!rp.has_snap || (rp.meta.index == nd->dsnap.index && rp.meta.term == nd->dsnap.term));
    for (size_t k = 0; same && k < rp.n; k++) same = rp.ents[k].term == nd->dt.v[k];
    if (!same)
        fail(s, "disk: node %u recovered snapshot %llu log %llu+%zu, durable was snapshot %llu log %llu+%zu",
             nd->id, ULL(rp.has_snap ? rp.meta.index : 0), ULL(rp.first), rp.n,
             ULL(nd->has_dsnap ? nd->dsnap.index : 0), ULL(nd->dt_first), nd->dt.n);
    int rc = s->o->impl->init(&nd->r, &c);
    if (!rc)
        rc = s->o->impl->restore(&nd->r, nd->d_term, nd->d_vote, rp.has_snap ? &rp.meta : NULL, rp.first,
                                 rp.ents, rp.n);
    if (rc) fail(s, "node %u: init/restore failed (%d)", nd->id, rc);
    nd->st = NS_UP;
    nd->inc++;
    nd->q.n = 0;
    nd->q_head = 0;
    nd->unacked.n = 0;
    nd->applied = 0;
    nd->applied_term = 0;
    nd->sm_conf = s->boot; /* the configuration at index 0, for every node */
    if (rp.has_snap) {
        if (check_snapshot(s, nd, "recovered", &rp.meta, rp.blob)) sm_load(nd, &rp.meta, rp.blob);
        nd->snap_queued = rp.meta.index;
    } else {
        nd->snap_queued = 0;
    }
    nd->commit_seen = rc ? 0 : nd->r.commit;
    nd->was_leader = false;
    nd->lead_term = 0;
    nd->last_conf = *raft_get_conf(&nd->r);
    nd->conf_checked = 0;
    nd->seen_last = raft_last_index(&nd->r);
    nd->asleep = false;
    replay_free(&rp);
}

/* Power loss: a prefix of the queued writes made it to disk, maybe with the next one torn. */
static void node_crash(struct sim *s, struct node *nd) {
    size_t landed = nd->n_pw && !sim_rng_below(&s->g, 3) ? sim_rng_below(&s->g, nd->n_pw + 1) : 0;
    for (size_t k = 0; k < landed; k++) dv_commit(s, nd, &nd->pw[k]);
    bool torn = s->features & SIM_F_TORN && landed < nd->n_pw && nd->pw[landed].kind != PW_COMPACT &&
                sim_rng_below(&s->g, 2);
    if (torn) {
        const struct buf *rec = &nd->pw[landed].rec;
        if (sim_rng_below(&s->g, 2)) { /* cut short */
            put(&nd->wal, rec->b, 1 + sim_rng_below(&s->g, rec->n - 1));
        } else { /* full length, but the last sectors never made it: garbage at the end */
            size_t at = nd->wal.n, k = 1 + sim_rng_below(&s->g, rec->n - 8 < 16 ? rec->n - 8 : 16);
            put(&nd->wal, rec->b, rec->n);
            for (size_t i = 0; i < k; i++) nd->wal.b[at + rec->n - 1 - i] ^= (uint8_t)(1 + sim_rng_below(&s->g, 255));
        }
        nd->torn_made = true;
    }
    trace(s, "n%u CRASH (%zu unsynced writes: %zu land%s)", nd->id, nd->n_pw, landed,
          torn ? ", next one torn" : "");
    for (size_t k = 0; k < nd->n_pw; k++) pw_free(&nd->pw[k]);
    nd->n_pw = 0;
    nd->n_pend = 0;
    nd->n_rwait = 0; /* answered reads die with the node (the clients get no reply) */
    s->o->impl->free(&nd->r);
    nd->st = NS_DOWN;
    nd->asleep = false;
    s->res->crashes++;
}

static void node_erase(struct node *nd) {
    for (size_t k = 0; k < nd->n_pw; k++) pw_free(&nd->pw[k]);
    free(nd->pw);
    free(nd->wal.b);
    free(nd->dt.v);
    blob_unref(nd->dsnap_blob);
    free(nd->q.v);
    free(nd->unacked.v);
    free(nd->pend);
    free(nd->rwait);
    raft_id id = nd->id;
    memset(nd, 0, sizeof *nd);
    nd->id = id;
}

static void node_retire(struct sim *s, struct node *nd) {
    trace(s, "n%u RETIRED (shut down, disk erased)", nd->id);
    if (nd->st == NS_UP) s->o->impl->free(&nd->r);
    node_erase(nd);
    nd->st = NS_RETIRED;
}

/* A node can be shut down for good once neither the committed configuration nor the last one
 * any member of it has held names it. Members that are down count too: one may hold an
 * uncommitted configuration that adds the node, get elected after its restart and commit it. */
static bool retirable(struct sim *s, const struct node *nd) {
    const struct raft_conf *cc = conf_at(s, s->gc_len);
    if ((nd->st != NS_UP && nd->st != NS_DOWN) || conf_has(cc, nd->id)) return false;
    for (unsigned i = 0; i < s->n_slots; i++) {
        const struct node *m = &s->nodes[i];
        if (m == nd || (m->st != NS_UP && m->st != NS_DOWN) || !conf_has(cc, m->id)) continue;
        if (conf_has(&m->last_conf, nd->id) || (m->st == NS_UP && conf_has(raft_get_conf(&m->r), nd->id)))
            return false;
    }
    return true;
}

/* ---- network ---------------------------------------------------------------------------- */

static void deliver(struct sim *s, size_t k, bool faults) {
    struct nmsg x = s->net[k];
    bool dup = faults && sim_rng_below(&s->g, 100) < s->dup_pct;
    if (dup) { /* deliver a copy now, keep the original for later: soon, or (1 in 8) much
                  later, as a replay of an old message within or across terms */
        x.ents = copy_entries(s->net[k].ents, s->net[k].m.n_entries);
        blob_ref(x.blob);
        s->net[k].due = s->now + (sim_rng_below(&s->g, 8) ? sim_rng_below(&s->g, s->max_delay + 1)
                                                           : 50 + sim_rng_below(&s->g, 2000));
    } else {
        s->net[k] = s->net[--s->n_net];
    }
    x.m.entries = x.ents;
    if (x.blob) {
        x.m.snap = &x.meta;
        x.m.data = x.blob->b;
        x.m.data_len = x.blob->len;
    }
    if (s->features & SIM_F_REPLAY && faults) {
        /* remember it for a later replay: control messages always (they are rare, and an old
         * vote, snapshot or TimeoutNow is the dangerous kind), appends and heartbeats 1 in 8 */
        uint32_t t = x.m.type;
        bool common = t == RAFT_MSG_APPEND || t == RAFT_MSG_APPEND_RESP || t == RAFT_MSG_HEARTBEAT ||
                      t == RAFT_MSG_HEARTBEAT_RESP;
        if (!common || !sim_rng_below(&s->g, 8)) {
            struct nmsg *h = common ? &s->hist[s->hist_n++ % HIST] : &s->hist_ctl[s->hist_ctl_n++ % HIST];
            free_entries(h->ents, h->m.n_entries);
            blob_unref(h->blob);
            *h = x;
            h->ents = copy_entries(x.ents, x.m.n_entries);
            blob_ref(h->blob);
        }
    }
    struct node *to = node_by_id(s, x.m.to);
    bool drop = (faults && sim_rng_below(&s->g, 100) < s->drop_pct) || to->st != NS_UP ||
                s->cut[x.m.from - 1][x.m.to - 1];
    if (!drop) {
        if (s->o->trace_all)
            trace(s, "n%u -> n%u %s t%llu i%llu lt%llu c%llu n%u%s", x.m.from, x.m.to,
                  raft_msg_name(x.m.type), ULL(x.m.term), ULL(x.m.index), ULL(x.m.log_term),
                  ULL(x.m.commit), x.m.n_entries, x.m.reject ? " reject" : "");
        wake(s, to); /* a hibernating node wakes up on a message */
        struct raft_event ev = {.type = RAFT_EV_RECEIVE};
        ev.u.msg = &x.m;
        s->cur_msg = &x.m;
        s->cur_blob = x.blob;
        /* election restriction (Raft 5.4.1): a vote or pre-vote goes only to a candidate whose
         * log is at least as up-to-date as the voter's, transfer or not */
        raft_index li = raft_last_index(&to->r);
        raft_term lt = raft_term_at(&to->r, li);
        s->vote_check = x.m.type == RAFT_MSG_VOTE || x.m.type == RAFT_MSG_PREVOTE;
        s->vote_ok = x.m.log_term > lt || (x.m.log_term == lt && x.m.index >= li);
        step(s, to, &ev);
        s->vote_check = false;
        s->cur_msg = NULL;
        s->cur_blob = NULL;
    }
    free_entries(x.ents, x.m.n_entries);
    blob_unref(x.blob);
}

static struct node *leader(struct sim *s);

static void partition(struct sim *s) {
    memset(s->cut, 0, sizeof s->cut);
    unsigned n = s->n_slots, kind = s->features & SIM_F_ASYM ? (unsigned)sim_rng_below(&s->g, 4) : 0;
    int side[MAX_SLOTS];
    char b[MAX_SLOTS + 1];
    for (unsigned i = 0; i < n; i++) side[i] = (int)sim_rng_below(&s->g, 2);
    if (kind == 1) { /* isolate one node, the leader half the time: it may go on believing it
                        leads (without check-quorum, until it hears of a newer term) while the
                        others elect a new one, the case read-index and leases must get right */
        unsigned v = (unsigned)sim_rng_below(&s->g, n);
        struct node *l = sim_rng_below(&s->g, 2) ? leader(s) : NULL;
        if (l) v = l->id - 1;
        for (unsigned i = 0; i < n; i++) side[i] = i == v;
    }
    for (unsigned i = 0; i < n; i++) {
        b[i] = (char)('0' + side[i]);
        for (unsigned j = 0; j < n; j++) {
            if (kind == 3) s->cut[i][j] = i != j && sim_rng_below(&s->g, 4) == 0;
            else if (kind == 2) s->cut[i][j] = side[i] == 1 && side[j] == 0; /* 1 -> 0 lost only */
            else s->cut[i][j] = side[i] != side[j];
        }
    }
    b[n] = 0;
    static const char *kinds[] = {"two sides", "isolate", "one-way 1->0", "random links"};
    trace(s, "PARTITION %s %s", kinds[kind], kind == 3 ? "" : b);
    s->res->partitions++;
}

/* A message delivered long ago comes back (a network that duplicates with unbounded delay). */
static void replay_old(struct sim *s) {
    bool ctl = s->hist_ctl_n && (!s->hist_n || sim_rng_below(&s->g, 2));
    unsigned n = ctl ? s->hist_ctl_n : s->hist_n, have = n < HIST ? n : HIST;
    if (!have) return;
    const struct nmsg *ring = ctl ? s->hist_ctl : s->hist, *h = &ring[sim_rng_below(&s->g, have)];
    if (ctl) { /* a type first, then a message of it: elections would crowd out the rest */
        uint32_t types[16];
        unsigned nt = 0;
        for (unsigned k = 0; k < have; k++) {
            unsigned t = 0;
            while (t < nt && types[t] != ring[k].m.type) t++;
            if (t == nt && nt < 16) types[nt++] = ring[k].m.type;
        }
        uint32_t want = types[sim_rng_below(&s->g, nt)];
        unsigned start = (unsigned)sim_rng_below(&s->g, have);
        for (unsigned k = 0; k < have; k++)
            if (ring[(start + k) % have].m.type == want) {
                h = &ring[(start + k) % have];
                break;
            }
    }
    GROW(s->net, s->n_net, s->cap_net);
    struct nmsg *x = &s->net[s->n_net++];
    *x = *h;
    x->ents = copy_entries(h->ents, h->m.n_entries);
    blob_ref(x->blob);
    x->m.entries = NULL;
    x->m.snap = NULL;
    x->due = s->now + sim_rng_below(&s->g, s->max_delay + 1);
    x->seq = ++s->seq;
    s->res->replays++;
    if (s->o->trace_all)
        trace(s, "REPLAY n%u -> n%u %s t%llu i%llu", x->m.from, x->m.to, raft_msg_name(x->m.type),
              ULL(x->m.term), ULL(x->m.index));
}

static void heal(struct sim *s) {
    memset(s->cut, 0, sizeof s->cut);
    s->heal_at = 0;
    trace(s, "HEAL");
}

/* ---- actions ---------------------------------------------------------------------------- */

static struct node *random_up(struct sim *s) {
    unsigned start = (unsigned)sim_rng_below(&s->g, s->n_slots);
    for (unsigned k = 0; k < s->n_slots; k++) {
        struct node *nd = &s->nodes[(start + k) % s->n_slots];
        if (nd->st == NS_UP) return nd;
    }
    return NULL;
}

static struct node *leader(struct sim *s) {
    struct node *best = NULL;
    for (unsigned i = 0; i < s->n_slots; i++) {
        struct node *nd = &s->nodes[i];
        if (nd->st == NS_UP && nd->r.role == RAFT_LEADER && (!best || nd->r.term > best->r.term)) best = nd;
    }
    return best;
}

static void propose(struct sim *s, struct node *nd, uint32_t kind) {
    struct op o = {kind, (uint32_t)sim_rng_below(&s->g, 8), ++s->next_op, 0};
    if (kind == OP_ENQ) o.value = o.id;
    if (kind == OP_ACK) /* a value the client got (again, if its first ack is in flight), or 1 in
                           8 times one it never got */
        o.value = s->to_ack.n && sim_rng_below(&s->g, 8) ? s->to_ack.v[sim_rng_below(&s->g, s->to_ack.n)]
                                                         : 1 + sim_rng_below(&s->g, s->next_op);
    wake(s, nd);
    struct raft_event ev = {.type = RAFT_EV_PROPOSE};
    ev.u.propose.data = &o;
    ev.u.propose.len = sizeof o;
    struct raft_update u;
    int rc = s->o->impl->step(&nd->r, &ev, &u);
    s->res->steps++;
    if (rc == RAFT_OK) {
        GROW(nd->pend, nd->n_pend, nd->cap_pend);
        nd->pend[nd->n_pend++] = (struct pending){u.proposed_index, u.proposed_term, o.id, kind, o.value};
        if (s->o->trace_all)
            trace(s, "n%u propose %s #%llu at %llu", nd->id, op_name(kind), ULL(o.id),
                  ULL(u.proposed_index));
    }
    process(s, nd, &u);
}

/* The node that believes it leads in the oldest term: a deposed leader that has not noticed yet
 * if there is one (a client with an old view of the cluster; its read-index round must fail). */
static struct node *stale_leader(struct sim *s) {
    struct node *best = NULL;
    for (unsigned i = 0; i < s->n_slots; i++) {
        struct node *nd = &s->nodes[i];
        if (nd->st == NS_UP && nd->r.role == RAFT_LEADER && (!best || nd->r.term < best->r.term)) best = nd;
    }
    return best;
}

static void read_index(struct sim *s) {
    unsigned pick = (unsigned)sim_rng_below(&s->g, 4);
    struct node *nd = pick == 0 ? random_up(s) : pick == 1 ? stale_leader(s) : leader(s);
    if (!nd) return;
    wake(s, nd);
    GROW(s->rd, s->n_rd, s->cap_rd);
    s->rd[s->n_rd++] = (struct rdreq){nd->id, nd->inc, s->max_observed, 0, RD_ISSUED};
    struct raft_event ev = {.type = RAFT_EV_READ_INDEX};
    ev.u.read.ctx = s->n_rd;
    if (s->o->trace_all) trace(s, "n%u read #%zu (must see %llu)", nd->id, s->n_rd, ULL(s->max_observed));
    step(s, nd, &ev);
}

static void transfer(struct sim *s) {
    struct node *l = leader(s);
    if (!l) return;
    const struct raft_conf *c = raft_get_conf(&l->r);
    raft_id to = sim_rng_below(&s->g, 8) && c->n_voters
                     ? c->voters[sim_rng_below(&s->g, c->n_voters)]
                     : (raft_id)(1 + sim_rng_below(&s->g, s->n_slots + 1)); /* anyone, even unknown */
    wake(s, l);
    struct raft_event ev = {.type = RAFT_EV_TRANSFER};
    ev.u.transfer.to = to;
    int rc = step(s, l, &ev);
    if (rc == RAFT_OK) s->res->transfers++;
    trace(s, "n%u TRANSFER to n%u: %d", l->id, to, rc);
}

/* Propose a random membership change on the leader: add a learner or a voter (a brand-new id
 * or a running non-member), promote a learner, remove a member (the leader itself 1/3 of the
 * time); members stay between 1 voter and RAFT_MAX_NODES servers. Or retire a removed node.
 * Returns false when there is no leader to ask (the operator tries again later). */
static bool membership(struct sim *s) {
    struct node *l = leader(s);
    if (!l) return false;
    if (!sim_rng_below(&s->g, 4)) {
        unsigned i = (unsigned)sim_rng_below(&s->g, s->n_slots);
        if (retirable(s, &s->nodes[i])) node_retire(s, &s->nodes[i]);
        return true;
    }
    const struct raft_conf *c = raft_get_conf(&l->r);
    unsigned members = c->n_voters + c->n_learners, roll = (unsigned)sim_rng_below(&s->g, 100);
    unsigned add_pct = c->n_voters <= 2 ? 60 : c->n_voters >= 6 ? 15 : 35;
    uint32_t op;
    raft_id id = 0;
    bool fresh = false;
    if (roll < add_pct && members < RAFT_MAX_NODES) {
        if (sim_rng_below(&s->g, 3)) { /* a running non-member, if any */
            unsigned start = (unsigned)sim_rng_below(&s->g, s->n_slots);
            for (unsigned k = 0; k < s->n_slots && !id; k++) {
                struct node *nd = &s->nodes[(start + k) % s->n_slots];
                if ((nd->st == NS_UP || nd->st == NS_DOWN) && !conf_has(c, nd->id)) id = nd->id;
            }
        }
        if (!id && s->n_slots < MAX_SLOTS) {
            id = s->n_slots + 1;
            fresh = true;
        }
        if (!id) return true;
        op = sim_rng_below(&s->g, 2) ? RAFT_CC_ADD_VOTER : RAFT_CC_ADD_LEARNER;
    } else if (roll < add_pct + 20 && c->n_learners) {
        op = RAFT_CC_ADD_VOTER;
        id = c->learners[sim_rng_below(&s->g, c->n_learners)];
    } else {
        op = RAFT_CC_REMOVE;
        id = sim_rng_below(&s->g, 3) == 0 || !members ? l->id
                                                     : (sim_rng_below(&s->g, members) < c->n_voters
                                                            ? c->voters[sim_rng_below(&s->g, c->n_voters)]
                                                            : c->learners[sim_rng_below(&s->g, c->n_learners)]);
        if (conf_voter(c, id) && c->n_voters <= 1) return true;
    }
    wake(s, l);
    struct raft_event ev = {.type = RAFT_EV_CONF_CHANGE};
    ev.u.conf.op = op;
    ev.u.conf.id = id;
    int rc = step(s, l, &ev);
    static const char *ops[] = {"?", "add-learner", "add-voter", "remove"};
    trace(s, "n%u CONF CHANGE %s n%u%s: %d", l->id, ops[op], id, fresh ? " (new)" : "", rc);
    if (rc == RAFT_OK && fresh) {
        struct node *nd = &s->nodes[id - 1];
        nd->joined = true;
        s->n_slots++;
        s->res->nodes_added++;
        node_start(s, nd);
    }
    return true;
}

/* One tick on one node, or (hibernation) a quiescent node stops ticking until a message, a
 * client or its host's periodic check (sleep_limit skipped ticks) wakes it. */
static void tick(struct sim *s) {
    struct node *nd = random_up(s);
    if (!nd) return;
    if (s->features & SIM_F_HIBERNATE) {
        if (nd->asleep) {
            if (++nd->sleep_ticks < nd->sleep_limit) return;
            wake(s, nd);
        } else if (raft_quiescent(&nd->r) && !sim_rng_below(&s->g, 4)) {
            nd->asleep = true;
            nd->sleep_ticks = 0;
            nd->sleep_limit = nd->r.cfg.election_ticks * (2 + (unsigned)sim_rng_below(&s->g, 8));
            s->res->hibernations++;
            if (s->o->trace_all) trace(s, "n%u HIBERNATE (%s)", nd->id, raft_role_name(nd->r.role));
            return;
        }
    }
    struct raft_event ev = {.type = RAFT_EV_TICK};
    step(s, nd, &ev);
}

/* An fsync: the oldest `count` queued writes become durable, in order; the library hears about
 * each run of entry writes once (its last entry), and about each snapshot. */
static void disk_complete(struct sim *s, struct node *nd, size_t count) {
    if (count > nd->n_pw) count = nd->n_pw;
    struct pwrite *done = xrealloc(NULL, count * sizeof *done);
    memcpy(done, nd->pw, count * sizeof *done);
    memmove(nd->pw, nd->pw + count, (nd->n_pw - count) * sizeof *nd->pw);
    nd->n_pw -= count;
    for (size_t k = 0; k < count; k++) dv_commit(s, nd, &done[k]);
    raft_index idx = 0;
    raft_term term = 0;
    for (size_t k = 0; k <= count && nd->st == NS_UP; k++) {
        struct pwrite *p = k < count ? &done[k] : NULL;
        if (p && p->kind == PW_ENTRIES) {
            if (p->n) idx = p->first + p->n - 1, term = p->terms[p->n - 1];
            continue;
        }
        if (p && p->kind == PW_COMPACT) continue;
        if (idx) {
            struct raft_event ev = {.type = RAFT_EV_PERSISTED};
            ev.u.persisted.index = idx;
            ev.u.persisted.term = term;
            step(s, nd, &ev);
            idx = 0;
        }
        if (p && p->kind == PW_SNAP_INSTALL) {
            struct raft_event ev = {.type = RAFT_EV_PERSISTED};
            ev.u.persisted.index = p->meta.index;
            ev.u.persisted.term = p->meta.term;
            step(s, nd, &ev);
        } else if (p && p->kind == PW_SNAP_LOCAL) {
            struct raft_event ev = {.type = RAFT_EV_SNAPSHOT};
            ev.u.snapshot.index = p->meta.index;
            s->res->snapshots++;
            trace(s, "n%u snapshot %llu durable", nd->id, ULL(p->meta.index));
            step(s, nd, &ev);
        }
    }
    for (size_t k = 0; k < count; k++) pw_free(&done[k]);
    free(done);
}

/* The voters of the committed configuration that are down. */
static unsigned down_voters(struct sim *s, unsigned *n_voters) {
    const struct raft_conf *c = conf_at(s, s->gc_len);
    unsigned down = 0;
    for (unsigned k = 0; k < c->n_voters; k++) {
        const struct node *v = node_by_id(s, c->voters[k]);
        down += !v || v->st != NS_UP;
    }
    *n_voters = c->n_voters;
    return down;
}

/* One random action. */
/* A node's transport reports a peer's connection lost (RAFT_EV_PEER_DOWN): mostly about the
 * leader it follows, sometimes about another node, and often wrongly (the peer is fine): it
 * may only speed up elections, never break safety. */
static void peer_down_report(struct sim *s) {
    struct node *nd = random_up(s);
    if (!nd) return;
    raft_id about = nd->r.leader && sim_rng_below(&s->g, 4) ? nd->r.leader
                                                             : (raft_id)(1 + sim_rng_below(&s->g, s->n_slots));
    if (s->o->trace_all) trace(s, "n%u PEER_DOWN %u", nd->id, (unsigned)about);
    wake(s, nd);
    struct raft_event ev = {.type = RAFT_EV_PEER_DOWN};
    ev.u.peer.id = about;
    step(s, nd, &ev);
}

static void action(struct sim *s, bool faults) {
    unsigned r = (unsigned)sim_rng_below(&s->g, 1000);
    s->now++;
    if (s->heal_at && s->now >= s->heal_at) heal(s);
    if (faults && s->cc_wanted && s->now % 16 == 0 && membership(s)) /* a retry found a leader */
        s->cc_wanted--;
    if (r < 550) { /* deliver due messages, picked at random (reordering) */
        /* the network's capacity grows with its backlog: one delivery per action would be a
         * bottleneck that no real network has once many members each answer every heartbeat
         * round (each read-index read starts one), and a backlog of stale messages would then
         * starve the live ones for ever */
        for (size_t burst = 1 + s->n_net / 16; burst > 0 && s->n_net; burst--) {
            size_t k = sim_rng_below(&s->g, s->n_net), j;
            for (j = 0; j < s->n_net && s->net[k].due > s->now; j++) k = (k + 1) % s->n_net;
            if (j == s->n_net) return; /* nothing due */
            /* links are FIFO (like TCP) unless this delivery is a reordering fault */
            if (!faults || sim_rng_below(&s->g, 100) >= s->reorder_pct)
                for (size_t i = 0; i < s->n_net; i++)
                    if (s->net[i].m.from == s->net[k].m.from && s->net[i].m.to == s->net[k].m.to &&
                        s->net[i].seq < s->net[k].seq)
                        k = i;
            deliver(s, k, faults);
        }
        return;
    }
    if (r < 700) { /* a disk write completes */
        unsigned start = (unsigned)sim_rng_below(&s->g, s->n_slots);
        for (unsigned k = 0; k < s->n_slots; k++) {
            struct node *nd = &s->nodes[(start + k) % s->n_slots];
            if (nd->st == NS_UP && nd->n_pw) {
                disk_complete(s, nd, 1 + sim_rng_below(&s->g, nd->n_pw));
                return;
            }
        }
        return;
    }
    if (r < 800) { /* a tick on one node (clocks drift independently) */
        if (faults && sim_rng_below(&s->g, 16) == 0) {
            peer_down_report(s);
            return;
        }
        tick(s);
        return;
    }
    if (r < 900) { /* a client: a read, or an enqueue or dequeue to the leader or anyone */
        if (s->features & SIM_F_READS && r < 820) {
            read_index(s);
            return;
        }
        if (!faults && s->model_head == s->model.n && sim_rng_below(&s->g, 50)) return;
        struct node *nd = sim_rng_below(&s->g, 4) ? leader(s) : random_up(s);
        if (!nd) return;
        /* clients wait for answers: bounded outstanding work */
        if (raft_last_index(&nd->r) > nd->r.commit + (faults ? 64 : 8)) return;
        unsigned k = (unsigned)sim_rng_below(&s->g, 8); /* 1/2 enqueue, 1/4 dequeue, 1/4 ack */
        propose(s, nd, !faults ? OP_DEQ : k < 4 ? OP_ENQ : k < 6 || !s->to_ack.n ? OP_DEQ : OP_ACK);
        return;
    }
    r -= 900; /* [0, 100): faults and administration */
    if (s->features & SIM_F_SNAPSHOT && r < s->snap_permille) {
        struct node *nd = random_up(s);
        if (nd) take_snapshot(s, nd);
        return;
    }
    if (!faults) return;
    r -= s->features & SIM_F_SNAPSHOT ? s->snap_permille : 0;
    if (r < s->crash_permille) { /* crash or restart */
        struct node *nd = &s->nodes[sim_rng_below(&s->g, s->n_slots)];
        if (nd->st == NS_UP && sim_rng_below(&s->g, 2) && leader(s)) nd = leader(s); /* leaders crash more */
        if (nd->st == NS_UP) {
            unsigned nv, down = down_voters(s, &nv);
            if (down < (nv + 1) / 2 || sim_rng_below(&s->g, 4) == 0) node_crash(s, nd);
        } else if (nd->st == NS_DOWN) {
            trace(s, "n%u RESTART term %llu wal %zu bytes", nd->id, ULL(nd->d_term), nd->wal.n);
            node_start(s, nd);
        }
        return;
    }
    r -= s->crash_permille;
    if (r < s->part_permille) {
        /* a partition lasts long enough for elections on either side (ticks are 1 action in 10,
         * spread over the nodes; election timeouts are 4..17 ticks), unless healed early */
        if (!(s->features & SIM_F_ASYM)) { /* the base model: partitions and heals at random,
                                              so leaders change often (Figure 8 needs that) */
            if (sim_rng_below(&s->g, 2)) partition(s);
            else heal(s);
        } else if (!s->heal_at) {
            partition(s);
            s->heal_at = s->now + 50 + sim_rng_below(&s->g, 1500);
        } else if (sim_rng_below(&s->g, 4) == 0) {
            heal(s);
        }
        return;
    }
    r -= s->part_permille;
    if (s->features & SIM_F_MEMBERSHIP && r < s->cc_permille) {
        if (!membership(s) && s->cc_wanted < 4) s->cc_wanted++;
        return;
    }
    r -= s->features & SIM_F_MEMBERSHIP ? s->cc_permille : 0;
    if (s->features & SIM_F_TRANSFER && r < s->transfer_permille) {
        transfer(s);
        return;
    }
    r -= s->features & SIM_F_TRANSFER ? s->transfer_permille : 0;
    if (s->features & SIM_F_REPLAY && r < s->replay_permille) replay_old(s);
}

/* ---- the run ---------------------------------------------------------------------------- */

static void cleanup(struct sim *s) {
    for (unsigned i = 0; i < MAX_SLOTS; i++) {
        struct node *nd = &s->nodes[i];
        if (nd->st == NS_UP) s->o->impl->free(&nd->r);
        node_erase(nd);
    }
    for (size_t k = 0; k < s->n_net; k++) {
        free_entries(s->net[k].ents, s->net[k].m.n_entries);
        blob_unref(s->net[k].blob);
    }
    free(s->net);
    for (unsigned k = 0; k < HIST; k++) {
        free_entries(s->hist[k].ents, s->hist[k].m.n_entries);
        blob_unref(s->hist[k].blob);
        free_entries(s->hist_ctl[k].ents, s->hist_ctl[k].m.n_entries);
        blob_unref(s->hist_ctl[k].blob);
    }
    free(s->leader_of_term);
    free(s->lm);
    free(s->gc_term);
    free(s->gc_cterm);
    free(s->gc_op);
    free(s->gc_result);
    free(s->gc_head);
    free(s->gc_tail);
    free(s->gc_ucnt);
    free(s->gc_uhash);
    free(s->munacked.v);
    free(s->to_ack.v);
    free(s->gconf);
    free(s->model.v);
    free(s->acked_enq.v);
    free(s->dequeued.v);
    free(s->rd);
}

/* End of run: every acknowledged enqueue was dequeued exactly once, in FIFO order (the model
 * dequeues in commit order; check nothing acknowledged is missing or duplicated). */
static void check_queue(struct sim *s) {
    if (!s->dequeued.n) vpush(&s->dequeued, EMPTY); /* keeps qsort/bsearch off NULL */
    qsort(s->dequeued.v, s->dequeued.n, sizeof(uint64_t), cmp64);
    for (size_t k = 1; k < s->dequeued.n; k++)
        if (s->dequeued.v[k] == s->dequeued.v[k - 1])
            fail(s, "queue: value %llu dequeued twice", ULL(s->dequeued.v[k]));
    for (size_t k = 0; k < s->acked_enq.n; k++)
        if (!bsearch(&s->acked_enq.v[k], s->dequeued.v, s->dequeued.n, sizeof(uint64_t), cmp64))
            fail(s, "queue: acknowledged enqueue %llu was never dequeued", ULL(s->acked_enq.v[k]));
    /* FIFO order holds by construction of the model (it pops in commit order); every node's
     * dequeue results, and so every client's, were compared with the model's in sm_apply() */
}

/* After healing: a leader has committed all its log in its term, the queue is empty, and every
 * running member of its configuration has applied everything. */
static bool drained(struct sim *s) {
    struct node *l = leader(s);
    if (!l || l->r.commit != raft_last_index(&l->r) || l->applied != l->r.commit ||
        s->model_head != s->model.n || !s->gc_len || l->r.term != s->gc_term[s->gc_len])
        return false;
    const struct raft_conf *c = raft_get_conf(&l->r);
    for (unsigned k = 0; k < c->n_voters + c->n_learners; k++) {
        raft_id id = k < c->n_voters ? c->voters[k] : c->learners[k - c->n_voters];
        struct node *nd = node_by_id(s, id);
        if (nd && nd->st == NS_UP && nd->applied < l->r.commit) return false;
    }
    return true;
}

static void retire_removed(struct sim *s) {
    for (unsigned i = 0; i < s->n_slots; i++)
        if (retirable(s, &s->nodes[i])) node_retire(s, &s->nodes[i]);
}

bool sim_run(const struct sim_opts *o, struct sim_result *res) {
    struct sim *s = calloc(1, sizeof *s);
    if (!s) abort();
    memset(res, 0, sizeof *res);
    s->o = o;
    s->res = res;
    s->features = o->features;
    res->features = o->features;
    sim_rng_seed(&s->g, o->seed);
    s->n0 = o->n_nodes ? o->n_nodes : (o->seed % 2 ? 5 : 3);
    if (s->n0 > RAFT_MAX_NODES) s->n0 = RAFT_MAX_NODES;
    res->n_nodes = s->n0;
    s->knobs = sim_rng_next(&s->g);
    s->drop_pct = (unsigned)sim_rng_below(&s->g, 15);
    s->dup_pct = (unsigned)sim_rng_below(&s->g, 6);
    s->max_delay = 1 + (unsigned)sim_rng_below(&s->g, 12);
    s->reorder_pct = (unsigned)sim_rng_below(&s->g, 30);
    s->crash_permille = (unsigned)sim_rng_below(&s->g, 50);
    s->part_permille = (unsigned)sim_rng_below(&s->g, 25);
    if (s->features) { /* drawn only with features, so the base model keeps its sequence */
        s->knobs2 = sim_rng_next(&s->g);
        s->snap_permille = 1 + (unsigned)sim_rng_below(&s->g, 4);
        s->cc_permille = 2 + (unsigned)sim_rng_below(&s->g, 7);
        s->transfer_permille = 1 + (unsigned)sim_rng_below(&s->g, 4);
        s->replay_permille = 1 + (unsigned)sim_rng_below(&s->g, 6);
    }
    s->boot.n_voters = s->n0;
    for (unsigned i = 0; i < s->n0; i++) s->boot.voters[i] = i + 1;
    gc_ensure(s, 0);
    s->gc_term[0] = s->gc_cterm[0] = 0;
    s->gc_head[0] = s->gc_tail[0] = s->gc_ucnt[0] = 0;
    s->gc_uhash[0] = 0;
    for (unsigned i = 0; i < MAX_SLOTS; i++) {
        s->nodes[i].id = i + 1;
        s->nodes[i].dt_first = 1;
    }
    s->n_slots = s->n0;
    for (unsigned i = 0; i < s->n0; i++) node_start(s, &s->nodes[i]);
    unsigned fault_steps = o->fault_steps ? o->fault_steps : 4000;
    for (unsigned k = 0; k < fault_steps && !s->failed; k++) action(s, true);
    /* heal everything, restart everyone, wake everyone, retire removed nodes, then drain */
    memset(s->cut, 0, sizeof s->cut);
    s->heal_at = 0;
    for (unsigned i = 0; i < s->n_slots && !s->failed; i++)
        if (s->nodes[i].st == NS_DOWN) node_start(s, &s->nodes[i]);
    for (unsigned i = 0; i < s->n_slots && !s->failed; i++)
        if (s->nodes[i].st == NS_UP) wake(s, &s->nodes[i]);
    retire_removed(s);
    trace(s, "HEAL ALL, drain");
    bool ok = false;
    for (unsigned k = 0; k < 30000 && !s->failed; k++) {
        action(s, false);
        if (k % 1000 == 999) retire_removed(s);
        if (drained(s)) {
            ok = true;
            break;
        }
    }
    if (!ok && !s->failed) {
        fail(s, "liveness: queue not drained or members not caught up after healing");
        trace(s, "%zu messages in flight", s->n_net);
        for (unsigned i = 0; i < s->n_slots; i++) {
            struct node *nd = &s->nodes[i];
            if (nd->st != NS_UP) {
                trace(s, "n%u %s", nd->id, nd->st == NS_RETIRED ? "retired" : "down");
                continue;
            }
            struct raft *r = &nd->r;
            char b[96];
            trace(s, "n%u %s t%llu last %llu commit %llu applied %llu persisted %llu conf %s%s", nd->id,
                  raft_role_name(r->role), ULL(r->term), ULL(raft_last_index(r)), ULL(r->commit),
                  ULL(nd->applied), ULL(r->persisted), conf_str(raft_get_conf(r), b, sizeof b),
                  nd->asleep ? " asleep" : "");
            if (r->role == RAFT_LEADER)
                for (unsigned j = 0; j < r->n_prs; j++)
                        trace(s, "   pr n%u next %llu match %llu repl %d paused %d infl %u snap %llu stall %u",
                              r->prs[j].id, ULL(r->prs[j].next), ULL(r->prs[j].match), r->prs[j].replicate,
                              r->prs[j].paused, r->prs[j].infl_count, ULL(r->prs[j].pending_snap),
                              r->prs[j].stall);
        }
    }
    if (!s->failed) check_queue(s);
    res->ok = !s->failed;
    if (s->failed) {
        size_t off = 0;
        unsigned first = s->tr_n > TRACE_LINES ? s->tr_n - TRACE_LINES : 0;
        for (unsigned k = first; k < s->tr_n && off + TRACE_LEN + 4 < sizeof res->trace; k++)
            off += (size_t)snprintf(res->trace + off, sizeof res->trace - off, "  %s\n",
                                    s->tr[k % TRACE_LINES]);
    }
    cleanup(s);
    free(s);
    return res->ok;
}
