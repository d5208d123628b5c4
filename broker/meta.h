/* meta.h - metadata changes as replicated commands (prefix meta_).
 *
 * In a cluster every node holds the whole registry (vhosts, exchanges, queue records,
 * bindings) as the applied state of the metadata Raft group. A change a client asks for on any
 * node is validated there first (a dry run of the same br_* function that will apply it, so
 * errors are RabbitMQ's, with no round trip), then encoded as a command, committed through the
 * group (meta_submit -> the cluster), and applied on every node in log order by meta_apply,
 * which runs the br_* mutator again. Because every node applies the same commands to the same
 * state, every node computes the same outcome; the requesting node answers its client with its
 * own outcome once its apply has run, so the client then sees its change on that node.
 *
 * The registry's other records are commands too: vhosts, users, permissions and policies (the
 * META_VHOST_* .. META_POLICY_* ops). warrenctl's admin commands (broker/admin.c) and the boot
 * definitions of the node that founds a cluster go through meta_submit like a client's declare.
 *
 * Unclustered (b->meta_submit == NULL) the AMQP adapters call br_* directly; meta_submit then
 * applies the command at once (meta_apply at index 0) and calls back before it returns.
 */
#ifndef WARREN_META_H
#define WARREN_META_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "broker/broker.h"

enum meta_op {
    META_X_DECLARE = 1,
    META_X_DELETE = 2,
    META_Q_DECLARE = 3,
    META_Q_DELETE = 4,
    META_BIND = 5,
    META_UNBIND = 6,
    /* The registry's other records. Fields used (see meta.c for the args tables' keys):
     *   VHOST_ADD/DELETE    vhost                        (add is idempotent)
     *   USER_ADD/PUT/UPDATE name = user, args {password_hash, hashing_algorithm, tags}
     *                       (ADD: must not exist; PUT: create or replace; UPDATE: must exist,
     *                       changes only the keys present)
     *   USER_DELETE         name = user
     *   PERM_SET/CLEAR      vhost, name = user, args {configure, write, read}
     *   POLICY_SET/CLEAR    vhost, name = policy, args {pattern, apply-to, priority, definition},
     *                       flags META_F_OPERATOR for an operator policy */
    META_VHOST_ADD = 7,
    META_VHOST_DELETE = 8,
    META_USER_ADD = 9,
    META_USER_PUT = 10,
    META_USER_UPDATE = 11,
    META_USER_DELETE = 12,
    META_PERM_SET = 13,
    META_PERM_CLEAR = 14,
    META_POLICY_SET = 15,
    META_POLICY_CLEAR = 16,
    /* A quorum queue's members changed (qq_member_change): vhost, name = queue, key = the new
     * member ids (u32 each). */
    META_Q_MEMBERS = 17,
    /* Topic permissions (broker/topicperm.h): vhost, name = user, key = exchange, args {write,
     * read}; CLEAR with an empty key clears all of the user's in the vhost. */
    META_TOPIC_PERM_SET = 18,
    META_TOPIC_PERM_CLEAR = 19,
    /* A vhost's metadata (created when missing): vhost, args {description, tags,
     * default_queue_type}, each optional (absent: unchanged; default_queue_type "": none).
     * VHOST_ADD may carry the same args: they apply only when it creates the vhost. */
    META_VHOST_SET = 20,
    /* Runtime parameters (broker/params.h): vhost ("" = a global parameter), name2 = component
     * ("" for a global one), name, args {value: JSON text}. */
    META_PARAM_SET = 21,
    META_PARAM_CLEAR = 22,
    META_OP_LAST = META_PARAM_CLEAR,
};

enum {
    META_F_DURABLE = 1u << 0,
    META_F_AUTO_DELETE = 1u << 1,
    META_F_INTERNAL = 1u << 2,
    META_F_EXCLUSIVE = 1u << 3,
    META_F_DEST_QUEUE = 1u << 4, /* bind/unbind: the destination is a queue */
    META_F_IF_UNUSED = 1u << 5,
    META_F_IF_EMPTY = 1u << 6,
    META_F_OPERATOR = 1u << 7,   /* policy set/clear: an operator policy */
};

/* One command. Decoded commands point into the buffer they were decoded from. */
struct meta_cmd {
    uint8_t op;            /* enum meta_op */
    uint8_t flags;         /* META_F_* */
    uint32_t home;         /* queue.declare: the node that holds the queue's messages */
    uint64_t conn;         /* cluster-wide connection id (exclusive ownership) */
    amqp_bytes_t vhost;
    amqp_bytes_t name;     /* exchange or queue; bind/unbind: the destination */
    amqp_bytes_t name2;    /* exchange.declare: the type; bind/unbind: the source exchange */
    amqp_bytes_t key;      /* bind/unbind: the routing key */
    amqp_bytes_t args;     /* raw AMQP field table */
};

void meta_encode(amqp_buf_t *out, const struct meta_cmd *c);
/* Returns 0, or -1 for a malformed command. */
int meta_decode(const void *buf, size_t len, struct meta_cmd *c);

static inline bool meta_clustered(const broker_t *b) { return b->meta_submit != NULL; }

/* Builders of the registry commands: the args table is written into *buf, which c points into
 * (buf must outlive c; free it with amqp_buf_free). NULL strings are left out (USER_UPDATE:
 * unchanged); alg < 0 leaves hashing_algorithm out. */
void meta_user_cmd(struct meta_cmd *c, amqp_buf_t *buf, uint8_t op, const char *user, const char *hash, int alg,
                   const char *tags);
void meta_perm_cmd(struct meta_cmd *c, amqp_buf_t *buf, const char *vhost, const char *user, const char *configure,
                   const char *write, const char *read);
void meta_topic_perm_cmd(struct meta_cmd *c, amqp_buf_t *buf, const char *vhost, const char *user,
                         const char *exchange, const char *write, const char *read);
void meta_vhost_cmd(struct meta_cmd *c, amqp_buf_t *buf, uint8_t op, const char *vhost, const char *description,
                    const char *tags, const char *default_queue_type);
/* vhost NULL: a global parameter (component ignored). */
void meta_param_cmd(struct meta_cmd *c, amqp_buf_t *buf, uint8_t op, const char *vhost, const char *component,
                    const char *name, const char *value);
void meta_policy_cmd(struct meta_cmd *c, amqp_buf_t *buf, const char *vhost, bool is_operator, const char *name,
                     const char *pattern, const char *apply_to, int priority, amqp_bytes_t definition);

/* Sends c through the cluster; done(arg, err) runs once it has been applied on this node
 * (err NULL: it succeeded here) or has failed (err: the reply code and text). done may run
 * before meta_submit returns (always does unclustered: the command applies at once). */
typedef void (*meta_done_cb)(void *arg, const br_err_t *err);
void meta_submit(broker_t *b, const struct meta_cmd *c, meta_done_cb done, void *arg);

/* Applies a committed command at log index `index` (every node, in log order). Indexes at or
 * below b->meta_applied are already reflected in the stored registry (a replay after a
 * restart) and are skipped. Returns 0 or the reply code, with err filled. */
int meta_apply(broker_t *b, uint64_t index, const void *cmd, size_t len, br_err_t *err);
/* Reads the applied index stored with the registry (boot, before the group replays). */
void meta_recover(broker_t *b);

/* The metadata group's snapshot: the registry as the commands that rebuild it (exchanges,
 * queues with their uids and home nodes, bindings) and the index it reflects. take returns 0
 * with *bytes malloc'd; install brings the registry to the snapshot's state (deleting what it
 * does not hold, creating what is missing) unless the registry is already at or past it. */
int meta_snapshot_take(broker_t *b, void **bytes, size_t *len);
void meta_snapshot_install(broker_t *b, const void *bytes, size_t len);

/* Wiring to the cluster (broker/cluster.h): the metadata group's state machine (ud = the
 * broker) for cl_start, and meta_attach, which routes this broker's changes through c when c is
 * clustered (and sets b->self_node); unclustered it leaves the broker as it is. */
struct cl_meta_ops;
typedef struct cl cl_t;
extern const struct cl_meta_ops meta_cl_ops;
void meta_attach(broker_t *b, cl_t *c);

/* The ids of the other members of the cluster that are running (at most cap; 0 when not
 * clustered through a cl_t), e.g. to ask each for its share of a cluster-wide count. */
size_t meta_running_peers(broker_t *b, uint32_t *ids, size_t cap);

/* A node left (its connection is down): as RabbitMQ does, its non-durable and exclusive queues
 * are deleted cluster-wide. The metadata leader submits the deletions (other nodes do nothing),
 * so a node that was the leader itself leaves them to a later pass. */
void meta_node_down(broker_t *b, uint32_t node);

/* q_delete's hook: clustered and outside meta_apply, a queue deletion this node decided on
 * (owner gone, auto-delete, expiry) is submitted instead of done; returns true then. */
bool meta_intercept_queue_delete(queue_t *q);

/* Dry run of a br_* mutator: meta_dry_begin(b); rc = br_...(...); mutates = meta_dry_end(b).
 * In between, mutators validate and stop right before changing anything; meta_dry_end says
 * whether the call passed validation and would have changed the registry. */
static inline void meta_dry_begin(broker_t *b) { b->meta_dry_run = true; b->meta_would_mutate = false; }
static inline bool meta_dry_end(broker_t *b) { b->meta_dry_run = false; return b->meta_would_mutate; }

#endif
