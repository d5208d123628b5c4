/* cluster.h - node identity, cluster formation and the replicated metadata group (prefix cl_).
 *
 * A cl_t is this node's membership in a Warren cluster (docs/cluster.md tells the whole story):
 *
 *   - identity: the node's name (node_name, rabbit@host style) and its Raft/transport id, derived
 *     from the name (cl_node_id), so every node computes every other node's id from its name;
 *   - the inter-node mesh (broker/peer.c) on the cluster port, authenticated with the cookie;
 *   - the multi-Raft host (broker/multiraft.c) on the node's store, with the metadata group
 *     (group id CL_META_GROUP) that spans every member node;
 *   - formation: a fresh node asks the configured peers whether a cluster exists and joins it
 *     through its metadata leader; if none exists the first configured node founds it; a node
 *     with stored state reopens its group and catches up (rejoin);
 *   - metadata submission (cl_meta_submit): a command goes through the metadata group from any
 *     node; its callback runs once the command has been applied on THIS node;
 *   - operations: status (members, which are running, the leader) and forgetting a stopped node.
 *
 * Not clustered (no cluster_formation nodes in the config): the same API works as a one-node
 * "cluster" without Raft, sockets or timers; cl_meta_submit applies the command at once and
 * calls back SYNCHRONOUSLY, before it returns (single-node behaviour and speed as before).
 * Clustered, callbacks never run inside the cl_* call that registered them, except where a
 * function says otherwise.
 *
 * Threading: the loop thread only. cl_free must not be called from a cl callback.
 */
#ifndef WARREN_CLUSTER_H
#define WARREN_CLUSTER_H

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "broker/config.h"
#include "broker/multiraft.h"
#include "broker/peer.h"
#include "broker/store.h"

typedef struct cl cl_t;

#define CL_META_GROUP 0      /* the metadata Raft group's id on every node */
#define CL_UNAVAILABLE 541   /* AMQP INTERNAL_ERROR: what a refused metadata change gets */
#define CL_NAME_MAX 256
#define CL_KEY_LOCAL 'C'     /* this node's own records in the store (boot counter, membership) */

/* A node name's id: FNV-1a 32-bit of the name, with 0 and PEER_CLIENT_ID mapped to 1. */
uint32_t cl_node_id(const char *name);

/* The metadata state machine, supplied by the broker. Every node applies the same commands in
 * the same (log) order, so apply must be deterministic: it may depend only on the command and
 * the state earlier commands built. */
struct cl_meta_ops {
    /* A committed command at log index `index` (0 when not clustered). Set *code to 0 for
     * success or an AMQP reply code, with a NUL-terminated text (at most textlen bytes, *code
     * and text[0] are zeroed before the call). Runs exactly once per command on each node
     * (retried duplicates are filtered out before it), and again after a restart for the
     * commands the stored snapshot does not cover. */
    void (*apply)(void *ud, uint64_t index, const void *cmd, size_t len, int *code, char *text,
                  size_t textlen);
    /* Serialize the state as of `index` into *bytes (malloc'd; cl frees it). Return 0, or
     * non-zero to skip this snapshot. NULL: the group never snapshots (the log keeps growing). */
    int (*snapshot_take)(void *ud, uint64_t index, void **bytes, size_t *len);
    /* Replace the state with a snapshot taken at `index` (from the leader, or the stored one
     * when the group opens). len may be 0 (a snapshot taken before any state existed). */
    void (*snapshot_install)(void *ud, uint64_t index, const void *bytes, size_t len);
};

/* Optional: fn(ud) runs when this node has just founded the cluster (or restarted as its founder
 * before its earlier boot submissions committed). It submits the cluster's boot state
 * (cl_meta_submit) from inside the call; the node reports formed (cl_formed) only once those
 * commands have applied. Set it before cl_start. */
void cl_set_founded_hook(cl_t *c, void (*fn)(void *ud), void *ud);

/* Timing and sizes; zeroes and cl_options_defaults() mean the defaults below. */
struct cl_options {
    double submit_timeout;      /* how long a metadata change waits for a quorum: 5 s */
    double retry_interval;      /* period of the formation / retry timer: 0.2 s */
    double discovery_window;    /* the first node founds the cluster after this long if no peer
                                   answered (sooner if all of them said they are fresh): 5 s */
    double tick_seconds;        /* Raft tick: 0.1 s */
    unsigned election_ticks;    /* 10 */
    unsigned heartbeat_ticks;   /* 2 */
    unsigned snapshot_threshold;/* entries applied between snapshots: 4096 */
    double ping_interval;       /* mesh pings: peer timeout / 5 */
    double down_after;          /* silence that makes a peer down: cluster.peer_timeout */
    double backoff_min, backoff_max; /* reconnect delays: 0.1 s and 5 s */
    int listen_port;            /* > 0: overrides the port (tests); default: see cl_new */
    SSL_CTX *tls_server;        /* both set: TLS on every inter-node connection (the mesh takes */
    SSL_CTX *tls_client;        /* its own references); both NULL: plain TCP */
};
void cl_options_defaults(struct cl_options *o);

/* Creates this node's cluster membership from the configuration, without starting Raft yet:
 * checks the cluster keys (node_name must be one of cluster_formation's nodes; names must map to
 * distinct ids; a cookie from cluster.cookie or cluster.cookie_file is required), bumps the boot
 * counter in the store, and opens the cluster listener: on the port this node's own
 * cluster_formation entry names, else cluster.listener.port. Peers listed without a port are
 * dialed at cluster.listener.port. Not clustered: nothing of that, no network.
 * opt may be NULL. Returns NULL with err filled on a configuration or listener error. The store
 * must outlive the cl_t. */
cl_t *cl_new(struct ev_loop *loop, const cfg_t *cfg, store_t *store, const struct cl_options *opt,
             char *err, size_t errlen);
/* Starts formation with the given state machine (ops may be NULL: commands are then accepted and
 * ignored, with code 0): a node whose store holds the metadata group reopens it (its stored
 * snapshot goes to ops->snapshot_install now; later commands apply as the group commits them);
 * a fresh node starts discovery. Returns 0, or -1 with err filled (a storage error). */
int cl_start(cl_t *c, const struct cl_meta_ops *ops, void *ud, char *err, size_t errlen);
/* Leaves: closes the group (its storage stays), the mesh and the host. Pending submissions and
 * operations are dropped WITHOUT their callbacks; no ops callback runs. NULL is a no-op. Free
 * the cl_t before closing the store. */
void cl_free(cl_t *c);

bool cl_clustered(const cl_t *c);
uint32_t cl_self_id(const cl_t *c);
const char *cl_self_name(const cl_t *c);
int cl_listen_port(const cl_t *c);      /* 0 when not clustered */
/* true: this node is a voting member and knows a metadata leader (what await_startup waits for). */
bool cl_formed(const cl_t *c);
/* For later users of the mesh and the host (queue traffic, quorum queues); NULL when not
 * clustered. Calls whose method does not start with "cl." go to the fallback handler (else they
 * are answered with PEER_ENOHANDLER). */
peer_mesh_t *cl_mesh(cl_t *c);
mr_host_t *cl_host(cl_t *c);
void cl_set_call_fallback(cl_t *c, void (*fn)(void *ud, uint32_t from, const struct peer_call_in *in), void *ud);
/* Calls whose method starts with "admin." (warrenctl's admin commands, broker/admin.c), from
 * command-line clients and nodes; answer them with peer_reply on cl_mesh(). */
void cl_set_admin_handler(cl_t *c, void (*fn)(void *ud, uint32_t from, const struct peer_call_in *in), void *ud);
/* Unclustered only: opens the control listener, so warrenctl can reach a single node. It listens
 * on 127.0.0.1 at cluster.listener.port (never another interface: a single node has no peers)
 * and authenticates clients with cluster.cookie / cluster.cookie_file, or else with a cookie
 * generated once into <data_dir>/.warren.cookie (mode 0600, like RabbitMQ's .erlang.cookie).
 * Returns 0, or -1 with err (port in use, unreadable cookie): the node then runs without it. */
int cl_control_listen(cl_t *c, const cfg_t *cfg, char *err, size_t errlen);
/* Also tells ud when a node's connection comes up or goes down (after the mesh's state changed,
 * so peer_is_up agrees; after the Raft host heard of it). Either may be NULL. */
void cl_set_peer_watch(cl_t *c, void (*up)(void *ud, uint32_t node), void (*down)(void *ud, uint32_t node),
                       void *ud);
/* A node's name: this node, a registered or configured node, or one connected (its Hello);
 * NULL if unknown. */
const char *cl_node_name(cl_t *c, uint32_t id);

/* ---- metadata changes -------------------------------------------------------------------- */

/* code 0: applied on this node, with the state machine's outcome in code/text (text "" or
 * NULL when code is 0); else CL_UNAVAILABLE (541) with a reason such as "metadata store
 * unavailable: no quorum (1 of 3 nodes reachable)". text is valid during the call only. */
typedef void (*cl_submit_cb)(void *arg, int code, const char *text);

/* Submits a command (copied) to the metadata group: proposed here if this node leads the
 * group, else forwarded to the leader. cb runs exactly once: after the command has been
 * applied on this node (with that apply's outcome), or with 541 when no leader could commit
 * it within submit_timeout (the command may still apply later: its outcome is then unknown).
 * A command retried after a lost reply or a leader change applies at most once.
 * Not clustered: applies now and calls cb before returning. Returns 0, or -1 (cb not called)
 * for a command larger than the frame limit or out of memory. */
int cl_meta_submit(cl_t *c, const void *cmd, size_t len, cl_submit_cb cb, void *arg);

/* ---- status and operations --------------------------------------------------------------- */

struct cl_member {
    char name[CL_NAME_MAX];
    uint32_t id;
    bool voter;    /* false: a learner (joined, being caught up before promotion) */
    bool running;  /* this node, or a node with a live authenticated connection */
};

struct cl_status {
    bool clustered;
    const char *state;          /* "standalone", "discovering", "joining", "member", "removed" */
    bool formed;                /* cl_formed() */
    char node[CL_NAME_MAX];     /* this node */
    uint32_t node_id;
    char cluster_name[CL_NAME_MAX];
    char leader[CL_NAME_MAX];   /* the metadata leader's name, "" if none is known */
    uint32_t leader_id;
    unsigned n_members;         /* the metadata group's members, voters first */
    struct cl_member members[RAFT_MAX_NODES];
    uint64_t term, commit, applied; /* of the metadata group (0 when not clustered) */
};
void cl_status(cl_t *c, struct cl_status *out);
/* The status as a JSON object (malloc'd, caller frees; NULL on allocation failure). */
char *cl_status_json(cl_t *c);

/* status 0: done; else a reason (text). CL_OP_RETRY: try again (no leader, change in progress);
 * CL_OP_REFUSED: refused for good (e.g. the node is running). */
enum { CL_OP_OK = 0, CL_OP_RETRY = 1, CL_OP_REFUSED = 2 };
typedef void (*cl_op_cb)(void *arg, int status, const char *text);
/* Removes a stopped node from the cluster for good (like rabbitmqctl forget_cluster_node):
 * the metadata leader removes it from the group and every node stops dialing it. A running
 * node is refused. Runs on the leader (forwarded there from other nodes). cb may run before
 * this returns (an immediate refusal). Returns 0, or -1 when not clustered (cb not called). */
int cl_forget_node(cl_t *c, const char *name, cl_op_cb cb, void *arg);

#endif
