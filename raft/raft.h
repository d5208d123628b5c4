/* raft.h - Raft consensus core with no I/O, no threads, no clock (see docs/raft.md).
 *
 * The caller owns everything that touches the outside world. It feeds the library events with
 * raft_step() (a received message, a tick, a completed storage write, a proposal) and gets back
 * a struct raft_update that says what to do next:
 *
 *   1. if RAFT_UPD_HARD_STATE: durably store (term, vote) BEFORE sending any message of this
 *      update (a vote or a term must never be forgotten once announced);
 *   2. if RAFT_UPD_ENTRIES: write entries[0..n_entries) at indexes entries_first.. to the log,
 *      first dropping any stored entry at index >= entries_first. Writes may complete
 *      asynchronously but must complete in the order they were issued; when one is durable,
 *      step RAFT_EV_PERSISTED with the index and term of its last entry;
 *   3. if RAFT_UPD_MESSAGES: send msgs[0..n_msgs) (best effort: loss, duplication and reordering
 *      are tolerated). The leader may send entries before they are durable on its own disk:
 *      it counts itself toward a quorum only once they are PERSISTED. Followers acknowledge
 *      entries only after they are PERSISTED;
 *   4. if RAFT_UPD_APPLY: apply apply[0..n_apply) (indexes apply_first..) to the state machine,
 *      in order. Only committed entries that are also durable on this node are handed out.
 *
 * Every pointer in an update (entries, msgs, apply, msgs[i].entries) points into memory owned
 * by the library and stays valid only until the next raft_step()/raft_free() on that node, so
 * serialize or copy before stepping again.
 *
 * Milestone 1 keeps the log in memory inside struct raft (the caller persists its own copy and
 * hands it back with raft_restore() after a restart). Snapshots, membership change, leadership
 * transfer and read-index are later milestones: the event and message enums have room for them.
 */
#ifndef WARREN_RAFT_H
#define WARREN_RAFT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef uint64_t raft_term;
typedef uint64_t raft_index;
typedef uint32_t raft_id; /* 0 means "none" */

#define RAFT_MAX_NODES 9
#define RAFT_MAX_INFLIGHT 64

enum raft_role { RAFT_FOLLOWER, RAFT_PRE_CANDIDATE, RAFT_CANDIDATE, RAFT_LEADER };

enum raft_entry_type {
    RAFT_ENTRY_NORMAL = 0, /* a command proposed by the caller */
    RAFT_ENTRY_NOOP = 1,   /* appended by every new leader; the state machine ignores it */
};

struct raft_entry {
    raft_term term;
    uint32_t type; /* enum raft_entry_type */
    uint32_t len;
    void *data; /* owned by whoever holds the entry (the library for its own log) */
};

enum raft_msg_type {
    RAFT_MSG_APPEND = 1,    /* index=prev_index log_term=prev_term commit entries */
    RAFT_MSG_APPEND_RESP,   /* ok: index=match; reject: index=rejected prev_index,
                               hint_index/log_term = follower's conflict hint */
    RAFT_MSG_HEARTBEAT,     /* commit = min(leader commit, follower match) */
    RAFT_MSG_HEARTBEAT_RESP,
    RAFT_MSG_VOTE,          /* index=last_log_index log_term=last_log_term */
    RAFT_MSG_VOTE_RESP,     /* reject */
    RAFT_MSG_PREVOTE,       /* term = the term the sender would campaign at */
    RAFT_MSG_PREVOTE_RESP,
    /* later milestones: RAFT_MSG_SNAPSHOT, RAFT_MSG_SNAPSHOT_RESP, RAFT_MSG_TIMEOUT_NOW */
};

struct raft_msg {
    uint32_t type; /* enum raft_msg_type */
    raft_id from, to;
    raft_term term;
    raft_index index;
    raft_term log_term;
    raft_index commit;
    raft_index hint_index;
    bool reject;
    uint32_t n_entries;
    const struct raft_entry *entries;
};

enum raft_event_type {
    RAFT_EV_TICK = 1,   /* one unit of logical time */
    RAFT_EV_RECEIVE,    /* a message from a peer */
    RAFT_EV_PERSISTED,  /* the log write ending at (index, term) is durable */
    RAFT_EV_PROPOSE,    /* leader only: append a command (data copied) */
    /* later milestones: RAFT_EV_SNAPSHOT, RAFT_EV_CONF_CHANGE, RAFT_EV_TRANSFER */
};

struct raft_event {
    uint32_t type; /* enum raft_event_type */
    union {
        const struct raft_msg *msg;
        struct { raft_index index; raft_term term; } persisted;
        struct { const void *data; uint32_t len; } propose;
    } u;
};

enum raft_update_flags {
    RAFT_UPD_HARD_STATE = 1u << 0,
    RAFT_UPD_ENTRIES = 1u << 1,
    RAFT_UPD_MESSAGES = 1u << 2,
    RAFT_UPD_APPLY = 1u << 3,
    RAFT_UPD_ROLE = 1u << 4, /* role or known leader changed */
};

struct raft_update {
    uint32_t flags;
    raft_term term; /* hard state, valid with RAFT_UPD_HARD_STATE */
    raft_id vote;
    raft_index entries_first; /* entries to persist */
    const struct raft_entry *entries;
    size_t n_entries;
    const struct raft_msg *msgs;
    size_t n_msgs;
    raft_index apply_first; /* committed entries to apply */
    const struct raft_entry *apply;
    size_t n_apply;
    enum raft_role role;
    raft_id leader;
    raft_index commit;
    raft_index proposed_index; /* RAFT_EV_PROPOSE: where the command went */
    raft_term proposed_term;
};

struct raft_config {
    raft_id id;
    raft_id peers[RAFT_MAX_NODES]; /* every voter, including id */
    unsigned n_peers;
    unsigned election_ticks;  /* base election timeout; the real one is in [e, 2e) */
    unsigned heartbeat_ticks; /* leader heartbeat interval, < election_ticks */
    unsigned max_inflight;    /* AppendEntries in flight per follower (1..RAFT_MAX_INFLIGHT) */
    unsigned max_batch;       /* entries per AppendEntries (>= 1) */
    bool pre_vote;
    bool check_quorum;
    uint64_t seed; /* seeds the randomized election timeout (deterministic) */
};

enum raft_error { RAFT_OK = 0, RAFT_ENOTLEADER = -1, RAFT_EINVAL = -2, RAFT_ENOMEM = -3 };

/* Per-follower replication state kept by a leader. */
struct raft_progress {
    raft_id id;
    raft_index next, match;
    bool replicate; /* false: probe (one AppendEntries at a time) */
    bool paused;    /* probe sent, waiting for an answer or a heartbeat response */
    bool recent_active;
    unsigned stall; /* heartbeat responses without progress while entries are in flight */
    unsigned infl_head, infl_count;
    raft_index infl[RAFT_MAX_INFLIGHT]; /* last index of each AppendEntries in flight */
};

struct raft {
    struct raft_config cfg;
    /* hard state */
    raft_term term;
    raft_id vote;
    /* log: entries log[0..log_len) hold indexes log_offset+1.. (log_offset > 0 after compaction,
     * a later milestone) */
    struct raft_entry *log;
    size_t log_len, log_cap;
    raft_index log_offset;
    raft_term offset_term;
    raft_index persisted; /* log[1..persisted] is durable and identical to the in-memory log */
    raft_index commit, applied;
    /* volatile */
    enum raft_role role;
    raft_id leader;
    unsigned election_elapsed, heartbeat_elapsed, election_timeout;
    uint64_t rng;
    raft_id votes_for[RAFT_MAX_NODES], votes_against[RAFT_MAX_NODES];
    unsigned n_for, n_against;
    raft_index ack_pending; /* follower: acknowledge up to here once persisted */
    struct raft_progress prs[RAFT_MAX_NODES];
    /* output scratch, reused between steps */
    struct raft_msg *out_msgs;
    size_t n_out, cap_out;
    raft_index dirty_from; /* lowest log index changed in this step, 0 if none */
    bool hs_dirty, role_dirty;
};

/* Set up a node with an empty log at term 0. */
int raft_init(struct raft *r, const struct raft_config *cfg);
/* After raft_init and before the first step: reload durable state after a restart. The entries
 * (indexes 1..n) are copied and count as persisted. */
int raft_restore(struct raft *r, raft_term term, raft_id vote, const struct raft_entry *entries,
                 size_t n);
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

#endif
