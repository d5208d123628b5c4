/* qq.h - quorum queues: a queue_t whose state is a Raft group (prefix qq_).
 *
 * A quorum queue's record (queue_t, replicated like every queue record by the metadata group)
 * names its members: the nodes that hold a replica. On each member this module opens the
 * queue's Raft group (broker/multiraft.c, group id = the queue's uid) whose state machine is
 * broker/qq_sm.c, and turns the broker's queue operations into commands:
 *
 *   publish          ENQUEUE, proposed to the leader; the publisher's confirm (rq_pub_cb) comes
 *                    once it is committed on a majority and applied by the leader, or by this
 *                    node's own replica, whichever is first;
 *   consume/cancel   CHECKOUT / CANCEL; consume-ok once the consumer is in the replicated
 *                    state; deliveries then come from THIS node's replica as it applies the
 *                    log (every member computes the same assignment, so whichever node leads,
 *                    a consumer keeps receiving, and a leader change is invisible to it);
 *   ack/nack/reject  SETTLE / RETURN / DISCARD, batched per loop iteration and channel;
 *   basic.get, purge DEQUEUE / PURGE with their result;
 *   channel closed   DOWN (its checked-out messages are returned, counted as failed deliveries);
 *   node down        DOWN for every channel of that node, proposed by the leader.
 *
 * Commands from a node that does not lead the group are forwarded to the leader in one call per
 * queue and loop iteration ("qq.p"); when the leader is unknown or changes they are retried
 * (enqueues carry the channel's sequence number, so a retried publish is enqueued once).
 * Commands are stamped with the proposing node's clock (TTL).
 *
 * Unclustered, quorum queues still work: one-member groups on a local multi-Raft host.
 *
 * Threading: the loop thread only.
 */
#ifndef WARREN_QQ_H
#define WARREN_QQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "broker/broker.h"
#include "broker/remote.h"

typedef struct cl cl_t;

/* Is x-queue-type "quorum" in these arguments? */
bool qq_args_quorum(const amqp_table_t *args);
/* RabbitMQ's declare-time rules for a new quorum queue (406 texts); 0 when it may be created. */
int qq_check_declare(vhost_t *vh, const char *name, size_t len, bool server_named, bool durable, bool exclusive,
                     bool auto_delete, const amqp_table_t *args, br_err_t *err);
/* The members of a quorum queue declared through this node: this node first, then other
 * running cluster members up to x-quorum-initial-group-size (default 3), as u32 big-endian ids. */
void qq_choose_members(broker_t *b, const amqp_table_t *args, amqp_buf_t *out);

/* A quorum queue record was created (declare, metadata apply, recovery; q->uid final): members
 * as from qq_choose_members (empty: this node alone). Opens the group when this node is a member
 * and qq_start has run. */
void qq_attach(queue_t *q, amqp_bytes_t members);
/* The queue is being deleted: its group and its storage go, waiting operations fail. */
void qq_detach(queue_t *q);
/* Members as stored in the queue record. */
void qq_members_encode(const queue_t *q, amqp_buf_t *out);

/* Starts quorum queues on this node (after recovery and cl_start): c clustered = groups on
 * the cluster's host, calls over its mesh; else a local host. Opens every attached group. */
int qq_start(broker_t *b, cl_t *c, char *err, size_t errlen);
void qq_free(broker_t *b);

/* A node-unique channel id for a new channel (the boot counter in the top 32 bits). */
uint64_t qq_channel_id(broker_t *b);
/* The channel is closing: DOWN on every quorum queue it used; until the next call, settles
 * and consumer removals of that channel are dropped here (DOWN covers them). */
void qq_channel_closing(broker_t *b, uint64_t chan);

/* Operations (q->qq != NULL), with remote.h's callback contracts. */
bool qq_publish(queue_t *q, msg_t *m, uint64_t chan, rq_pub_cb cb, void *arg, uint64_t tag);
void qq_consume(queue_t *q, consumer_t *c, uint64_t chan, rq_done_cb done, void *arg);
void qq_consumer_remove(queue_t *q, consumer_t *c);
void qq_get(queue_t *q, bool no_ack, uint64_t chan, rq_get_cb cb, void *arg);
void qq_purge(queue_t *q, rq_count_cb cb, void *arg);
/* ack (QSM_SETTLE), requeue (QSM_RETURN) or reject (QSM_DISCARD) a delivered entry; drops
 * e->m's reference. */
void qq_settle(queue_t *q, const qentry_t *e, int op);
/* Ready messages and consumers as this node's replica sees them (0 on a non-member). */
uint32_t qq_message_count(queue_t *q);
uint32_t qq_consumer_count(queue_t *q);
/* The queue's arguments or policies changed: the leader proposes the new settings. */
void qq_settings_changed(queue_t *q);

/* Membership (like rabbitmq-queues add_member / delete_member), from any node: the queue's
 * leader does it. cb(arg, code, text) once done: code 0, or a reply code with a reason
 * ("already a member", "not a member", "last_node: ...", "... try again"). */
typedef void (*qq_member_cb)(void *arg, int code, const char *text);
void qq_member_change(queue_t *q, uint32_t node, bool add, qq_member_cb cb, void *arg);
/* META_Q_MEMBERS applied: the queue's member list is now `members` (u32 ids). */
void qq_set_members(queue_t *q, amqp_bytes_t members);

/* The cluster glue (remote.c's mesh handlers): incoming "qq." calls, node up / down. */
struct peer_reply_to;
void qq_handle_call(broker_t *b, uint32_t from, const char *method, const void *payload, size_t len,
                    const struct peer_reply_to *to);
void qq_node_down(broker_t *b, uint32_t node);
void qq_node_up(broker_t *b, uint32_t node);

/* Maintenance (drain) and graceful shutdown: with draining on, every quorum queue this node
 * leads hands its leadership to another member that is up (Raft leadership transfer), and a
 * leadership won later while draining is handed on again. Returns how many transfers started.
 * Off: this node may lead again (nothing moves back by itself). */
unsigned qq_set_draining(broker_t *b, bool on);
/* Quorum queues this node leads now (a drain is done when it reaches 0, or when no other
 * member is up to take them). */
size_t qq_leader_count(broker_t *b);

/* Observability (management, CLI). */
struct qq_info {
    bool member;            /* this node holds a replica */
    uint32_t leader;        /* node id, 0 = unknown */
    unsigned n_members;
    uint32_t members[16];
    uint64_t term, commit, applied;
    uint64_t snapshot, written; /* the latest snapshot's index; the last index durably written */
    uint64_t ready, unacked, dlx, ready_bytes, unacked_bytes;
    uint64_t bytes_ram;     /* message bodies of the queue held in memory (the rest are stored) */
    uint32_t consumers;
};
void qq_info(queue_t *q, struct qq_info *out);

#endif
