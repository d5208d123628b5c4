/* raft.h - Raft consensus core with no I/O, no threads, no clock (see docs/raft.md).
 *
 * The caller owns everything that touches the outside world. It feeds the library events with
 * raft_step() (a received message, a tick, a completed storage write, a proposal, a snapshot it
 * took, a membership change, a leadership transfer, a read request) and gets back a struct
 * raft_update that says what to do next, in this order:
 *
 *   0. if RAFT_UPD_SNAPSHOT (follower, after a RAFT_MSG_SNAPSHOT): replace the state machine and
 *      the stored log with the snapshot that came with the message just stepped (its meta is in
 *      update.snapshot; its bytes are the msg's data/data_len, which the caller still holds).
 *      This is a storage write like the entries below: it is durable when the caller steps
 *      RAFT_EV_PERSISTED with (snapshot.index, snapshot.term), and writes complete in issue order;
 *   1. if RAFT_UPD_HARD_STATE: durably store (term, vote) BEFORE sending any message of this
 *      update (a vote or a term must never be forgotten once announced);
 *   2. if RAFT_UPD_ENTRIES: write entries[0..n_entries) at indexes entries_first.. to the log,
 *      first dropping any stored entry at index >= entries_first. Writes may complete
 *      asynchronously but must complete in the order they were issued; when one is durable,
 *      step RAFT_EV_PERSISTED with the index and term of its last entry;
 *   3. if RAFT_UPD_MESSAGES: send msgs[0..n_msgs) (best effort: loss, duplication and reordering
 *      are tolerated). The leader may send entries before they are durable on its own disk:
 *      it counts itself toward a quorum only once they are PERSISTED. Followers acknowledge
 *      entries only after they are PERSISTED. A RAFT_MSG_SNAPSHOT leaves data/data_len empty:
 *      the caller attaches the bytes of its latest durable snapshot, whose meta it also puts in
 *      msg.snap/index/log_term (any snapshot at or after the one named is correct to send);
 *   4. if RAFT_UPD_APPLY: apply apply[0..n_apply) (indexes apply_first..) to the state machine,
 *      in order. Only committed entries that are also durable on this node are handed out.
 *      RAFT_ENTRY_NOOP and RAFT_ENTRY_CONF entries are not commands (the library has already
 *      acted on CONF entries; update.conf says what is in force);
 *   5. if RAFT_UPD_READS: reads[0..n_reads) are linearizable once the state machine has applied
 *      up to read.index; serve each then;
 *   6. if RAFT_UPD_COMPACT: stored entries at index <= compact_index are no longer needed (a
 *      snapshot covers them) and may be deleted.
 *   RAFT_UPD_SNAPSHOT_DUE is advice: cfg.snapshot_threshold entries were applied since the last
 *   snapshot; take one (at index `applied`) and report it with RAFT_EV_SNAPSHOT.
 *
 * Every pointer in an update (entries, msgs, apply, reads, msgs[i].entries, msgs[i].snap) points
 * into memory owned by the library and stays valid only until the next raft_step()/raft_free()
 * on that node, so serialize or copy before stepping again.
 *
 * The library keeps the log since its last compaction in memory (the caller persists its own
 * copy and hands it back with raft_restore() after a restart); RAFT_EV_SNAPSHOT bounds it.
 *
 * Membership changes one server at a time (Raft dissertation section 4.1): a configuration takes
 * effect on every node as soon as its RAFT_ENTRY_CONF entry is in that node's log, and only one
 * may be uncommitted at a time. Learners receive the log but neither vote nor count toward a
 * quorum; RAFT_CC_ADD_VOTER adds a learner that the leader promotes by itself once it has caught
 * up. A leader that removes itself steps down once the removal is committed.
 *
 * Details of the contract (milestone 2):
 *  - RAFT_EV_CONF_CHANGE returns RAFT_EBUSY while a CONF entry is uncommitted, a transfer is
 *    pending, or the leader has not yet committed an entry of its own term (a new leader must,
 *    or single-server changes are unsafe); also for a second ADD_VOTER while a promotion waits.
 *    RAFT_EINVAL: id 0, adding a member, removing a non-member or the last voter, a full group.
 *    ADD_VOTER of a new id proposes it as a learner (proposed_index = that entry); the promotion
 *    is proposed by the library later, once the learner's match reaches the leader's last index
 *    right after the request (>= its commit index then) and the previous change committed; it
 *    appears as an ordinary RAFT_UPD_ENTRIES write (no proposed_index). ADD_VOTER of an existing
 *    learner proposes the promotion at once if it is caught up (proposed_index set), else later
 *    (proposed_index 0). A waiting promotion is forgotten if leadership is lost: repeat the
 *    ADD_VOTER on the new leader. Removing the learner cancels it.
 *  - A node added to a running group starts with no bootstrap peers (see raft_config.peers);
 *    appends, heartbeats and snapshots are accepted from any leader whatever the local
 *    configuration says. Any node answers vote requests (a learner may already be a voter in the
 *    candidate's newer configuration); a candidate counts only the voters of its own.
 *  - Learners never campaign. A node missing from its latest configuration campaigns only while
 *    that configuration is not known committed and it was a voter before (Raft dissertation
 *    4.2.2: the voters left may need its log), among the new voters and without counting its own
 *    vote; if elected it leads until the removal commits, then steps down like a leader that
 *    removed itself (handing over with TIMEOUT_NOW to a caught-up voter).
 *  - RAFT_EV_SNAPSHOT: RAFT_EINVAL if index > applied; no effect at or below the latest snapshot.
 *    The log keeps cfg.trailing entries below it (RAFT_UPD_COMPACT says how far it shrank).
 *    A follower acknowledges an installed snapshot with APPEND_RESP index = snapshot.index.
 *  - RAFT_EV_TRANSFER: RAFT_EINVAL unless the target is another voter; RAFT_EBUSY while a
 *    transfer to another target is pending (the same target: RAFT_OK). Proposals and conf
 *    changes get RAFT_EBUSY until the transfer ends (leadership lost, or election_ticks ticks).
 *  - RAFT_EV_READ_INDEX: reads not yet in update.reads when the node stops being leader are
 *    dropped silently; the caller retries them on the new leader (after a timeout, or when
 *    RAFT_UPD_ROLE reports the change). Every heartbeat carries a round number in msg.ctx.
 */
#ifndef WARREN_RAFT_H
#define WARREN_RAFT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef uint64_t raft_term;
typedef uint64_t raft_index;
typedef uint32_t raft_id; /* 0 means "none" */

#define RAFT_MAX_NODES 9 /* voters + learners of one group */
#define RAFT_MAX_INFLIGHT 64

enum raft_role { RAFT_FOLLOWER, RAFT_PRE_CANDIDATE, RAFT_CANDIDATE, RAFT_LEADER };

enum raft_entry_type {
    RAFT_ENTRY_NORMAL = 0, /* a command proposed by the caller */
    RAFT_ENTRY_NOOP = 1,   /* appended by every new leader; the state machine ignores it */
    RAFT_ENTRY_CONF = 2,   /* a configuration (raft_conf_encode); in force once appended */
};

struct raft_entry {
    raft_term term;
    uint32_t type; /* enum raft_entry_type */
    uint32_t len;
    void *data; /* owned by whoever holds the entry (the library for its own log) */
};

/* A group's membership. Ids are unique across both lists. */
struct raft_conf {
    unsigned n_voters, n_learners;
    raft_id voters[RAFT_MAX_NODES];
    raft_id learners[RAFT_MAX_NODES];
};
#define RAFT_CONF_MAX_ENCODED (8 + 4 * 2 * RAFT_MAX_NODES)
/* Encoding used in RAFT_ENTRY_CONF entries (little-endian u32 counts then ids). encode returns
 * the byte count; decode returns RAFT_OK or RAFT_EINVAL for malformed input. */
size_t raft_conf_encode(const struct raft_conf *c, uint8_t buf[RAFT_CONF_MAX_ENCODED]);
int raft_conf_decode(struct raft_conf *c, const void *buf, size_t len);
bool raft_conf_is_voter(const struct raft_conf *c, raft_id id);
bool raft_conf_has(const struct raft_conf *c, raft_id id); /* voter or learner */

/* What a snapshot covers: the state machine after applying every entry up to index. */
struct raft_snapshot_meta {
    raft_index index;
    raft_term term;
    struct raft_conf conf; /* the configuration in force at index */
};

enum raft_msg_type {
    RAFT_MSG_APPEND = 1,    /* index=prev_index log_term=prev_term commit entries */
    RAFT_MSG_APPEND_RESP,   /* ok: index=match; reject: index=rejected prev_index,
                               hint_index/log_term = follower's conflict hint */
    RAFT_MSG_HEARTBEAT,     /* commit = min(leader commit, follower match); ctx = read-index round */
    RAFT_MSG_HEARTBEAT_RESP,/* ctx echoed */
    RAFT_MSG_VOTE,          /* index=last_log_index log_term=last_log_term; transfer: campaign
                               caused by TIMEOUT_NOW (receivers ignore their leader lease) */
    RAFT_MSG_VOTE_RESP,     /* reject */
    RAFT_MSG_PREVOTE,       /* term = the term the sender would campaign at */
    RAFT_MSG_PREVOTE_RESP,
    RAFT_MSG_SNAPSHOT,      /* index/log_term = snap->index/term; snap = meta; data/data_len =
                               snapshot bytes, attached by the caller (see step 3 above) */
    RAFT_MSG_TIMEOUT_NOW,   /* leadership transfer: the target campaigns at once, without pre-vote */
};

struct raft_msg {
    uint32_t type; /* enum raft_msg_type */
    raft_id from, to;
    raft_term term;
    raft_index index;
    raft_term log_term;
    raft_index commit;
    raft_index hint_index;
    uint64_t ctx;
    bool reject;
    bool transfer;
    uint32_t n_entries;
    const struct raft_entry *entries;
    const struct raft_snapshot_meta *snap; /* RAFT_MSG_SNAPSHOT */
    const void *data;                      /* RAFT_MSG_SNAPSHOT, caller-owned */
    size_t data_len;
};

enum raft_conf_op {
    RAFT_CC_ADD_LEARNER = 1, /* join as a non-voting member */
    RAFT_CC_ADD_VOTER,       /* join as a learner, promoted by the leader once caught up
                                (or promote an existing learner the same way) */
    RAFT_CC_REMOVE,          /* voter or learner, possibly the leader itself */
};

enum raft_event_type {
    RAFT_EV_TICK = 1,   /* one unit of logical time */
    RAFT_EV_RECEIVE,    /* a message from a peer */
    RAFT_EV_PERSISTED,  /* the log (or snapshot) write ending at (index, term) is durable */
    RAFT_EV_PROPOSE,    /* leader only: append a command (data copied) */
    RAFT_EV_SNAPSHOT,   /* the caller durably saved a snapshot at snapshot.index (<= applied) */
    RAFT_EV_CONF_CHANGE,/* leader only: conf.op on conf.id; RAFT_EBUSY while another is pending */
    RAFT_EV_TRANSFER,   /* leader only: hand leadership to transfer.to */
    RAFT_EV_READ_INDEX, /* leader only: a linearizable read tagged read.ctx (answered in reads) */
    RAFT_EV_WAKE,       /* the caller stopped ticking this group for a while (hibernation) and
                           resumes now: restart timers, treat peers as recently active; the
                           leader lease (check_quorum) lapses until the leader is heard from
                           again (a follower) or a quorum answers (a leader) */
    RAFT_EV_PEER_DOWN,  /* the caller's transport lost node u.peer.id (its connection closed): a
                           follower whose leader that was stops trusting it (no lease) and
                           campaigns after 1 + rank ticks, rank = how many of the other
                           surviving voters have a lower id, so they do not split the vote */
    RAFT_EV_CAMPAIGN,   /* start an election now instead of waiting for the election timeout
                           (like etcd's MsgHup): a group whose only voter is this node elects
                           itself at once. No effect on a leader or a non-voter. */
};

struct raft_event {
    uint32_t type; /* enum raft_event_type */
    union {
        const struct raft_msg *msg;
        struct { raft_index index; raft_term term; } persisted;
        struct { const void *data; uint32_t len; } propose;
        struct { raft_index index; } snapshot;
        struct { uint32_t op; raft_id id; } conf;
        struct { raft_id to; } transfer;
        struct { raft_id id; } peer;
        struct { uint64_t ctx; } read;
    } u;
};

enum raft_update_flags {
    RAFT_UPD_HARD_STATE = 1u << 0,
    RAFT_UPD_ENTRIES = 1u << 1,
    RAFT_UPD_MESSAGES = 1u << 2,
    RAFT_UPD_APPLY = 1u << 3,
    RAFT_UPD_ROLE = 1u << 4, /* role or known leader changed */
    RAFT_UPD_SNAPSHOT = 1u << 5,     /* install update.snapshot (see step 0) */
    RAFT_UPD_COMPACT = 1u << 6,      /* entries <= compact_index may be deleted */
    RAFT_UPD_READS = 1u << 7,        /* reads[0..n_reads) */
    RAFT_UPD_CONF = 1u << 8,         /* the configuration in force changed (update.conf) */
    RAFT_UPD_SNAPSHOT_DUE = 1u << 9, /* advice: take a snapshot */
};

struct raft_read_state {
    uint64_t ctx;
    raft_index index; /* serve the read once applied >= index */
};

struct raft_update {
    uint32_t flags;
    raft_term term; /* hard state, valid with RAFT_UPD_HARD_STATE */
    raft_id vote;
    struct raft_snapshot_meta snapshot; /* RAFT_UPD_SNAPSHOT */
    raft_index entries_first; /* entries to persist */
    const struct raft_entry *entries;
    size_t n_entries;
    const struct raft_msg *msgs;
    size_t n_msgs;
    raft_index apply_first; /* committed entries to apply */
    const struct raft_entry *apply;
    size_t n_apply;
    const struct raft_read_state *reads;
    size_t n_reads;
    raft_index compact_index;
    const struct raft_conf *conf; /* always set: the configuration in force */
    enum raft_role role;
    raft_id leader;
    raft_index commit;
    raft_index proposed_index; /* RAFT_EV_PROPOSE / RAFT_EV_CONF_CHANGE: where the entry went */
    raft_term proposed_term;
};

struct raft_config {
    raft_id id;
    raft_id peers[RAFT_MAX_NODES]; /* bootstrap voters, the same on every founding member and
                                      including id (ignored when restoring from a snapshot or a
                                      log holding a CONF entry). A node added to a running group
                                      later starts with n_peers = 0 (or peers without id): it is
                                      no voter, never campaigns, and learns the configuration
                                      from the leader's log or snapshot. */
    unsigned n_peers;
    unsigned election_ticks;  /* base election timeout; the real one is in [e, 2e) */
    unsigned heartbeat_ticks; /* leader heartbeat interval, < election_ticks */
    unsigned max_inflight;    /* AppendEntries in flight per follower (1..RAFT_MAX_INFLIGHT) */
    unsigned max_batch;       /* entries per AppendEntries (>= 1) */
    bool pre_vote;
    bool check_quorum;
    uint64_t seed; /* seeds the randomized election timeout (deterministic) */
    unsigned snapshot_threshold; /* applied entries since the last snapshot before
                                    RAFT_UPD_SNAPSHOT_DUE; 0 = never advise */
    unsigned trailing;           /* entries kept below a snapshot for slow followers */
};

enum raft_error {
    RAFT_OK = 0,
    RAFT_ENOTLEADER = -1,
    RAFT_EINVAL = -2,
    RAFT_ENOMEM = -3,
    RAFT_EBUSY = -4, /* a membership change or leadership transfer is in progress */
};

/* Per-member replication state, kept only while leader (one entry per voter and learner of the
 * configuration in force, the leader's own included). */
struct raft_progress {
    raft_id id;
    bool replicate; /* false: probe (one AppendEntries at a time) */
    bool paused;    /* probe or snapshot sent, waiting for an answer or a heartbeat response */
    bool recent_active;
    raft_index next, match;
    raft_index pending_snap; /* snapshot sent at this index, not yet acknowledged (0: none) */
    uint64_t hb_acked;       /* highest heartbeat round it answered (read-index, quiescence) */
    uint64_t acted_round;    /* tick_round when heartbeat answers last drove recovery */
    uint64_t told_round;     /* the heartbeat round that first carried commit = told_commit */
    raft_index told_commit;
    unsigned stall; /* heartbeat intervals without progress (entries or snapshot in flight) */
    unsigned infl_head, infl_count;
    raft_index *infl; /* ring of cfg.max_inflight: last index of each AppendEntries in flight */
};

struct raft_pending_read; /* internal to raft.c */

struct raft {
    struct raft_config cfg;
    struct raft_conf conf;          /* membership in force */
    raft_index conf_index;          /* where conf comes from: its CONF entry, the snapshot index,
                                       or 0 for the bootstrap peers */
    struct raft_snapshot_meta snap; /* the latest snapshot (index 0: none) */
    /* hard state */
    raft_term term;
    raft_id vote;
    /* log: entries log[0..log_len) hold indexes log_offset+1..; offset_term is the term at
     * log_offset (everything at or below it is covered by the snapshot) */
    struct raft_entry *log;
    size_t log_len, log_cap;
    raft_index log_offset;
    raft_term offset_term;
    raft_index persisted; /* log[..persisted] is durable and identical to the in-memory log
                             (0 after installing a snapshot, until its write is PERSISTED) */
    raft_index commit, applied;
    /* volatile */
    enum raft_role role;
    raft_id leader;
    unsigned election_elapsed, heartbeat_elapsed, election_timeout;
    uint64_t rng;
    uint32_t votes_granted, votes_rejected; /* candidate: bit i stands for conf.voters[i] */
    raft_index ack_pending; /* follower: acknowledge up to here once persisted */
    /* leader only */
    struct raft_progress *prs; /* n_prs entries: the members of conf (heap, freed on step-down) */
    unsigned n_prs;
    raft_id transfer_to; /* leadership transfer target (0: none) */
    unsigned transfer_elapsed;
    raft_id promote_id; /* learner to promote once its match reaches promote_at (0: none) */
    raft_index promote_at;
    uint64_t hb_round; /* heartbeat rounds broadcast so far (never reset; carried in msg.ctx) */
    uint64_t tick_round; /* the round of the last regular (tick) heartbeat */
    bool round_wanted; /* a read waits for a new round: broadcast one at the end of this step */
    struct raft_pending_read *reads; /* read-index requests not yet confirmed, FIFO */
    size_t n_reads, cap_reads;
    /* output scratch, reused between steps (freed when the node is idle) */
    struct raft_read_state *reads_out;
    size_t n_reads_out, cap_reads_out;
    struct raft_msg *out_msgs;
    size_t n_out, cap_out;
    raft_index dirty_from; /* lowest log index changed in this step, 0 if none */
    raft_index compacted;  /* log compacted up to here in this step, 0 if not */
    bool lease_expired; /* woken from hibernation: ignore the leader lease until it is renewed */
    bool hs_dirty, role_dirty, conf_dirty, snap_installed;
};

/* Set up a node with an empty log at term 0. */
int raft_init(struct raft *r, const struct raft_config *cfg);
/* After raft_init and before the first step: reload durable state after a restart: the hard
 * state, the latest durable snapshot's meta (NULL if none; the caller restores its state machine
 * from the snapshot bytes itself, and applying resumes after snap->index), and the stored entries
 * at indexes first..first+n-1 (first <= snap->index + 1, or 1 without a snapshot; entries below
 * the snapshot are kept for slow followers, except that when first > 1 is below the snapshot the
 * first entry only gives the log its base term). Entries are copied and count as persisted.
 * RAFT_EINVAL if the entries leave a gap after the snapshot or disagree with its term. */
int raft_restore(struct raft *r, raft_term term, raft_id vote, const struct raft_snapshot_meta *snap,
                 raft_index first, const struct raft_entry *entries, size_t n);
/* Feed one event; fills *out. Returns RAFT_OK, or RAFT_ENOTLEADER for a proposal on a non-leader
 * (out is still valid and may carry messages), RAFT_ENOMEM. */
int raft_step(struct raft *r, const struct raft_event *ev, struct raft_update *out);
void raft_free(struct raft *r);

/* Small read-only helpers. */
raft_index raft_last_index(const struct raft *r);
raft_term raft_term_at(const struct raft *r, raft_index i); /* 0 if unknown */
const struct raft_entry *raft_entry_at(const struct raft *r, raft_index i); /* NULL if absent */
const char *raft_role_name(enum raft_role role);
const char *raft_msg_name(uint32_t type);
const struct raft_conf *raft_get_conf(const struct raft *r); /* the configuration in force */
/* True when nothing is in flight: a leader whose followers have every entry and know the commit
 * index, with no pending read, transfer or membership change; a follower whose log is fully
 * persisted and applied. A multi-Raft host may stop ticking a quiescent group (hibernate) until
 * it has something to do, then step RAFT_EV_WAKE before the next tick. */
bool raft_quiescent(const struct raft *r);

#endif
