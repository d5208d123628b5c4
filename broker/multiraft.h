/* multiraft.h - the multi-Raft host: many Raft groups on one node (prefix mr_).
 *
 * A host drives every raft/ group of one node on the node's libev loop. It owns what raft/
 * leaves to its caller:
 *
 *   - storage: each group's log, hard state and snapshots go into the node's one store_t
 *     (broker/raftlog.c), so the appends of all groups in a loop iteration share one fsync;
 *     raft hears RAFT_EV_PERSISTED only once the store says the batch is synced;
 *   - messages: outgoing messages of all groups are collected per destination node and handed
 *     to the transport once per loop iteration (one send call per node); messages of an update
 *     that changed the hard state are held until that hard state is synced;
 *   - time: one ev_timer per host ticks the active groups only; a group that is quiescent
 *     (raft_quiescent) for a few ticks hibernates and is not ticked until a message, a
 *     proposal or mr_host_peer_down() for its leader's node wakes it;
 *   - the state machine: each group has user ops (apply, snapshots, role changes, reads) and
 *     proposals report back through a done callback.
 *
 * Raft ids are node ids: a group's members are named by the node ids that host them, and a
 * node id is what the transport routes on.
 *
 * Threading: everything runs on the loop thread. Callbacks (ops, done callbacks, transport
 * send) may call mr_propose / mr_conf_change / mr_transfer / mr_read_index on any group
 * (calls on the group being processed are queued and run right after it), but must not close
 * groups or free the host.
 */
#ifndef WARREN_MULTIRAFT_H
#define WARREN_MULTIRAFT_H

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "broker/store.h"
#include "raft/raft.h"

typedef struct mr_host mr_host_t;
typedef struct mr_group mr_group_t;

/* ---- transport --------------------------------------------------------------------------- */

/* One message of a coalesced send: which group it belongs to and the message itself. */
struct mr_outmsg {
    uint64_t group_id;
    const struct raft_msg *msg;
};

struct mr_transport {
    /* Sends msgs[0..n) to node (best effort: loss is tolerated). Everything msgs points to
     * (entries, entry data, snapshot meta and bytes) is valid only during the call: the
     * transport must serialize or copy before returning. Called once per destination node
     * per loop iteration, from the host's ev_prepare watcher. It must not call back into the
     * host (report a broken connection with mr_host_peer_down later, from the loop). */
    void (*send)(void *ctx, raft_id node, const struct mr_outmsg *msgs, size_t n);
    void *ctx;
};

/* ---- the host ---------------------------------------------------------------------------- */

struct mr_host_config {
    raft_id node_id;          /* this node (non-zero) */
    double tick_seconds;      /* length of one raft tick (default 0.1 s) */
    unsigned election_ticks;  /* default 10 */
    unsigned heartbeat_ticks; /* default 2 */
    unsigned hibernate_ticks; /* quiescent ticks before a group hibernates (default
                                 2 * heartbeat_ticks + 1, so followers hear the commit index
                                 before their leader falls silent); must stay below
                                 election_ticks */
    unsigned max_inflight;    /* default 64 */
    unsigned max_batch;       /* entries per AppendEntries, default 256 */
    unsigned snapshot_threshold; /* default 0: never */
    unsigned trailing;           /* default 0 */
};

struct mr_host_stats {
    uint64_t timer_fires;     /* host tick timer callbacks */
    uint64_t group_ticks;     /* RAFT_EV_TICK steps, over all groups */
    uint64_t sends;           /* transport send calls */
    uint64_t msgs_sent;       /* messages handed to the transport */
    uint64_t msgs_held;       /* messages held until a hard state was synced */
    uint64_t seals;           /* store_on_synced rounds registered */
    uint64_t persisted_steps; /* RAFT_EV_PERSISTED steps */
    uint64_t entries_written; /* log entries written to the store */
    uint64_t hibernations, wakeups;
    uint64_t snapshots_taken, snapshots_installed;
    size_t groups, active_groups;
};

/* Creates a host for one node. The store must outlive the host (free the host first); the
 * transport's ctx must outlive it too. Returns NULL on allocation failure or a bad config. */
mr_host_t *mr_host_new(struct ev_loop *loop, store_t *store, const struct mr_host_config *cfg,
                       const struct mr_transport *transport);
/* Stops the host: waits until every write it made is synced (store_flush_sync, so not from a
 * store callback), fails outstanding proposals with MR_ECLOSED, frees every group (their
 * storage stays) and the host. NULL is a no-op. */
void mr_host_free(mr_host_t *h);

/* An incoming message for group_id from node `from` (the transport calls this). The message
 * is only read during the call. Messages for unknown groups are dropped. */
void mr_host_receive(mr_host_t *h, raft_id from, uint64_t group_id, const struct raft_msg *msg);
/* The connection to node went down / came back: groups hibernating under a leader on that
 * node are woken so that they elect a new one, and no group hibernates under it until up. */
void mr_host_peer_down(mr_host_t *h, raft_id node);
void mr_host_peer_up(mr_host_t *h, raft_id node);

void mr_host_get_stats(const mr_host_t *h, struct mr_host_stats *out);
raft_id mr_host_node_id(const mr_host_t *h);
mr_group_t *mr_host_group(mr_host_t *h, uint64_t group_id);
/* Ids of the groups with state in this host's store (*ids malloc'd). Returns 0 or -1. */
int mr_host_stored_groups(mr_host_t *h, uint64_t **ids, size_t *n);

/* ---- groups and their state machines ----------------------------------------------------- */

enum mr_status {
    MR_OK = 0,
    MR_ENOTLEADER = -1, /* this node is not the group's leader (mr_group_leader may say who) */
    MR_ELOST = -2,      /* the entry was overwritten by another leader's: it will never apply */
    MR_EDEPOSED = -3,   /* leadership was lost before the entry applied here: it may or may
                           not commit later (the outcome is unknown) */
    MR_ECLOSED = -4,    /* the group was closed */
    MR_EINVAL = -5,     /* bad argument, or an operation raft does not support (yet) */
    MR_ENOMEM = -6,
    MR_EBUSY = -7,      /* a membership change or transfer is in progress */
};
const char *mr_status_name(int status);

/* Reports the outcome of a proposal: MR_OK once the entry is committed and applied on this
 * node (at index), or an error above. Called exactly once per accepted proposal. */
typedef void (*mr_done_cb)(mr_group_t *g, void *arg, int status, raft_index index);

/* The replicated state machine of a group. Only apply is required. */
struct mr_sm_ops {
    /* A committed command (RAFT_ENTRY_NORMAL), in log order, exactly once per index since the
     * last snapshot_install (after a restart the host replays from the stored snapshot). */
    void (*apply)(mr_group_t *g, raft_index index, const struct raft_entry *entry);
    /* Serialize the state as of `index` (everything applied so far) into *bytes (malloc'd; the
     * host frees it). Return 0, or non-zero to skip this snapshot. */
    int (*snapshot_take)(mr_group_t *g, raft_index index, void **bytes, size_t *len);
    /* Replace the state with a snapshot (from the leader, or the stored one at open). */
    void (*snapshot_install)(mr_group_t *g, raft_index index, const void *bytes, size_t len);
    /* Optional: the state machine keeps part of its state outside its snapshots (e.g. message
     * bodies in the store), so the snapshot sent to a follower differs from the stored one.
     * Serialize the current state (at the last applied index) for sending (malloc'd; the host
     * frees it); non-zero: not now (the send is dropped and raft retries). With it, a snapshot
     * installed from the leader is stored in snapshot_take's form, taken right after install. */
    int (*snapshot_send)(mr_group_t *g, void **bytes, size_t *len);
    /* Optional: a snapshot from the leader (node `from`) arrived that would replace the state
     * (raft would install it). MR_SNAP_INSTALL: install it now. MR_SNAP_LATER: the host keeps
     * the message (replacing one kept before) until mr_snapshot_resume steps it or
     * mr_snapshot_drop forgets it - e.g. while the state machine fetches what the snapshot
     * refers to and does not carry. MR_SNAP_IGNORE: drop it (the leader sends one again). */
    int (*snapshot_arriving)(mr_group_t *g, raft_id from, raft_index index, const void *bytes, size_t len);
    /* This node's role or the known leader changed (leader 0: unknown). */
    void (*role_changed)(mr_group_t *g, enum raft_role role, raft_id leader);
    /* mr_read_index(ctx) result: MR_OK once the state machine reflects every write committed
     * before the request (serve the read now), or an error. */
    void (*read_ready)(mr_group_t *g, uint64_t ctx, int status);
};

enum { MR_SNAP_INSTALL = 0, MR_SNAP_LATER = 1, MR_SNAP_IGNORE = 2 };

/* Steps the snapshot message kept by MR_SNAP_LATER as if it arrived now (raft decides again:
 * it installs it, or ignores it when a newer term or the log has overtaken it) and forgets it.
 * Returns true if one was kept. Not from inside the group's callbacks. */
bool mr_snapshot_resume(mr_group_t *g);
/* Forgets the kept snapshot message, if any. */
void mr_snapshot_drop(mr_group_t *g);

/* Opens group_id on this host: loads what the store holds for it (hard state, snapshot,
 * entries; a snapshot is handed to snapshot_install) or starts empty with the given bootstrap
 * members (node ids, the same on every founding member, this node included; ignored once
 * stored state has a configuration). A node joining a running group passes n_members = 0: it
 * learns the configuration from the leader (add it with mr_conf_change on the leader).
 * Returns NULL with *err set (MR_EINVAL: bad arguments or duplicate id, MR_ENOMEM, or a
 * storage error reported as MR_EINVAL and logged). */
mr_group_t *mr_group_open(mr_host_t *h, uint64_t group_id, const raft_id *members,
                          unsigned n_members, const struct mr_sm_ops *ops, void *user, int *err);
/* Closes a group: outstanding proposals fail with MR_ECLOSED; its storage stays. */
void mr_group_close(mr_group_t *g);
/* Closes a group and deletes its storage. */
void mr_group_destroy(mr_group_t *g);

/* Proposes a command (copied). Returns MR_OK and done is called later exactly once, or an
 * error (MR_ENOTLEADER...) and done is never called. */
int mr_propose(mr_group_t *g, const void *data, size_t len, mr_done_cb done, void *arg);
/* Membership change (leader only, one at a time); done reports when the change is applied. */
int mr_conf_change(mr_group_t *g, enum raft_conf_op op, raft_id node, mr_done_cb done, void *arg);
/* Hands leadership to node (leader only). */
int mr_transfer(mr_group_t *g, raft_id node);
/* Starts an election now (a group whose only voter is this node elects itself at once). */
int mr_campaign(mr_group_t *g);
/* Entries applied between snapshots for this group (0: never), e.g. scaled to the size of the
 * state so that the cost of snapshots stays proportional to the work done. */
void mr_group_set_snapshot_threshold(mr_group_t *g, unsigned entries);
/* Linearizable read: ops->read_ready(ctx) fires once it is safe to serve from the state
 * machine (leader only). */
int mr_read_index(mr_group_t *g, uint64_t ctx);

uint64_t mr_group_id(const mr_group_t *g);
void *mr_group_user(const mr_group_t *g);
mr_host_t *mr_group_host(const mr_group_t *g);
enum raft_role mr_group_role(const mr_group_t *g);
raft_id mr_group_leader(const mr_group_t *g);
raft_index mr_group_applied(const mr_group_t *g);
bool mr_group_hibernating(const mr_group_t *g);
const struct raft *mr_group_raft(const mr_group_t *g);
/* Heap bytes the group holds (its struct, raft's log/message buffers, queues), for the
 * memory-per-group figure. An estimate from capacities, without malloc overhead. */
size_t mr_group_memory(const mr_group_t *g);

/* ---- loopback transport (tests, benchmark) ----------------------------------------------- */

/* Connects hosts of one process: send deep-copies a batch (entries, their data, snapshot meta
 * and bytes), and an ev_check watcher delivers it to the destination host's mr_host_receive on
 * the next loop iteration. Messages to a detached node or over a cut link are dropped. */
typedef struct mr_loopback mr_loopback_t;
#define MR_LOOPBACK_MAX_NODES 16 /* node ids 1..15 */

mr_loopback_t *mr_loopback_new(struct ev_loop *loop);
void mr_loopback_free(mr_loopback_t *lb); /* drops undelivered messages */
/* The transport a host on node `node` sends with. */
struct mr_transport mr_loopback_transport(mr_loopback_t *lb, raft_id node);
void mr_loopback_attach(mr_loopback_t *lb, raft_id node, mr_host_t *host);
void mr_loopback_detach(mr_loopback_t *lb, raft_id node);
/* Cuts (up=false) or restores the one-way link from -> to. */
void mr_loopback_set_link(mr_loopback_t *lb, raft_id from, raft_id to, bool up);
uint64_t mr_loopback_delivered(const mr_loopback_t *lb);

#endif
