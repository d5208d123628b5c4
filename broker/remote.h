/* remote.h - classic queues homed on another node (prefix rq_).
 *
 * In a cluster every node holds every queue record (metadata is replicated), but a classic
 * queue's messages live on one node only: its home (queue_t.home, the node that declared it).
 * On every other node the record is a proxy: publishing, consuming, basic.get, acks, purge and
 * counts are forwarded to the home node over the inter-node transport, with RabbitMQ's
 * semantics (see remote.c for the protocol and the invariants):
 *
 *   - publish: routing happens on the publishing node; messages for one node are coalesced into
 *     one call per loop iteration ("q.batch"), each message once per node whatever the number of
 *     its queues there; the home enqueues with q_publish (TTL, limits, DLX, priorities apply
 *     there) and answers once its store has synced what needs syncing, with one result per
 *     queue (accepted / rejected by x-overflow reject-publish), which drives publisher confirms.
 *   - consume: the home registers a proxy consumer (tag, prefetch, no-ack, exclusive, priority)
 *     whose deliveries are batched back ("q.dlv") under a credit window; the consuming node hands
 *     them to its client and forwards acks/nacks/rejects/requeues and cancels in the batch.
 *   - basic.get, queue.purge and counts: one call each ("q.get", "q.purge", "q.stat").
 *   - node down: consumers of the down node's queues are cancelled (basic.cancel for clients
 *     that asked for cancel notifications), unsent and in-flight publishes fail (basic.nack),
 *     and operations on its queues fail with 404 "home node ... is down or inaccessible"; on
 *     the home side, consumers of the down node are removed and their unacked messages are
 *     requeued (redelivered).
 *
 * Unclustered (b->node_call == NULL) nothing here is used and rq_remote() is false.
 *
 * ---- What the cluster glue must do --------------------------------------------------------
 *
 * Provide, on the broker_t (all on the loop thread; ctx = b->node_ctx):
 *   b->node_call(ctx, node, method, payload, len, timeout, cb, arg)
 *       = peer_call(mesh, node, method, payload, len, timeout, cb, arg, NULL): returns 0 and
 *       cb(arg, status, error, payload, len) runs exactly once LATER (never inside node_call):
 *       with the callee's reply status (>= 0) or a negative peer_status (PEER_EDOWN when the
 *       connection is lost, PEER_ETIMEDOUT); or returns a negative peer_status and cb never
 *       runs. PEER_EBUSY (send buffer full) is retried here; every other error is a failure.
 *   b->node_reply(ctx, reply_to, status, error, payload, len)
 *       = peer_reply(mesh, reply_to, status, error, payload, len).
 *   b->node_is_up(ctx, node) = peer_is_up(mesh, node)   (optional: see rq_node_is_up)
 *   b->node_name(ctx, node)  = the node's name (e.g. "rabbit@b"), NULL if unknown (optional:
 *       error texts then name the node by its id).
 *   b->node_ctx = the mesh (or the cl_t).
 * and set b->node_call only once b->self_node is set (queue records carry home node ids).
 *
 * Call into this module:
 *   - every incoming call whose method starts with "q." (rq_is_method):
 *       rq_handle_call(b, from, in->method, in->payload, in->len, &in->reply_to);
 *     it answers through b->node_reply, now or later (calls from PEER_CLIENT_ID are refused);
 *   - rq_node_down(b, node) from the mesh's down callback, rq_node_up(b, node) from its up
 *     callback (both after the mesh state changed, so node_is_up agrees);
 *   - at shutdown: stop the transport so that no callback into this module runs any more (the
 *     mesh drops pending calls without calling them), then broker_free (which calls rq_free).
 *
 * With broker/cluster.h all of that is one call, after meta_attach (which sets self_node):
 *     rq_attach_cluster(b, cluster);
 * (node_call etc. over cl_mesh, names from cl_node_name, cl_set_call_fallback(rq_mesh_call),
 * cl_set_peer_watch(rq_mesh_up, rq_mesh_down)). Over a bare peer mesh, with the helpers below
 * (ud = the broker): rq_attach_mesh(b, mesh), rq_mesh_call as the mesh's call handler for
 * "q." methods, rq_mesh_up / rq_mesh_down from its up/down callbacks.
 */
#ifndef WARREN_REMOTE_H
#define WARREN_REMOTE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "broker/broker.h"
#include "broker/peer.h"

/* Is q served by another node? */
static inline bool rq_remote(const queue_t *q)
{
    const broker_t *b = q->vh->broker;
    return b->node_call && q->home && q->home != b->self_node && !q->qq; /* quorum queues: qq.h */
}

/* ---- the glue's entry points ---- */

static inline bool rq_is_method(const char *method) { return method[0] == 'q' && method[1] == '.'; }
void rq_handle_call(broker_t *b, uint32_t from, const char *method, const void *payload, size_t len,
                    const struct peer_reply_to *reply_to);
void rq_node_down(broker_t *b, uint32_t node);
void rq_node_up(broker_t *b, uint32_t node);
/* b->node_is_up when set; otherwise up unless rq_node_down was called (and no rq_node_up since). */
bool rq_node_is_up(broker_t *b, uint32_t node);
/* broker_free: from now on nothing is sent (the transport may be gone already), then after the
 * queues are deleted rq_free releases everything. */
void rq_close(broker_t *b);
void rq_free(broker_t *b);

/* The whole glue for a cluster (no-op when c is not clustered). */
struct cl;
void rq_attach_cluster(broker_t *b, struct cl *c);
/* Glue over a peer mesh: node_call/node_reply/node_is_up/node_name = peer_call/peer_reply/
 * peer_is_up/peer_node_name on mesh (names the glue knows better may replace node_name). */
void rq_attach_mesh(broker_t *b, peer_mesh_t *mesh);
/* Handlers with the mesh's callback signatures, ud = the broker_t. rq_mesh_call answers calls
 * that are not "q." with BR_NOT_IMPLEMENTED. */
void rq_mesh_call(void *ud, uint32_t from, const struct peer_call_in *in);
void rq_mesh_up(void *ud, uint32_t node);
void rq_mesh_down(void *ud, uint32_t node);

/* ---- operations on a queue with rq_remote(q) (adapters, queue.c) ---- */

/* Is q's home node reachable? When not, *err gets RabbitMQ's 404 ("home node 'rabbit@b' of
 * durable queue 'q' in vhost '/' is down or inaccessible") and the code is returned. */
bool rq_available(queue_t *q);
int rq_unavailable(queue_t *q, br_err_t *err);

/* Publish results passed to rq_pub_cb: Q_PUB_OK (enqueued, synced when it had to be, or the
 * queue no longer exists there), Q_PUB_REJECTED (x-overflow reject-publish) or RQ_PUB_FAILED
 * (home node down or unreachable: the message may or may not have been enqueued). */
enum { RQ_PUB_FAILED = 8 };
typedef void (*rq_pub_cb)(void *arg, uint64_t tag, int result);
/* Forwards m (shared, not copied) to q's home in this loop iteration's batch. true: cb (may be
 * NULL) runs exactly once, later, never inside an rq_* call except rq_node_down/rq_free. false:
 * not forwarded (home down or m unreadable): dropped, cb never runs. */
bool rq_publish(queue_t *q, msg_t *m, rq_pub_cb cb, void *arg, uint64_t tag);

typedef void (*rq_done_cb)(void *arg, const br_err_t *err);
/* Registers c (filled in by the adapter: tag, no_ack, exclusive, priority, prefetch, ops, owner)
 * as a consumer of q at its home. done runs later: err NULL = registered (c->q == q, c is in
 * q->consumers and gets deliveries through c->ops; remove it with q_consumer_remove as for a
 * local queue); else the home's error (403 exclusive use, 404 ...) and c is not registered. */
void rq_consume(queue_t *q, consumer_t *c, rq_done_cb done, void *arg);

/* basic.get: e NULL = empty. Otherwise the callee owns e->m's reference: settle it with
 * q_ack/q_requeue/q_discard on q (no_ack false) or msg_unref it (no_ack true). */
typedef void (*rq_get_cb)(void *arg, const br_err_t *err, const qentry_t *e, uint32_t message_count);
void rq_get(queue_t *q, bool no_ack, rq_get_cb cb, void *arg);

/* Counts at the home: rq_stat gives messages ready and consumers (and marks the queue used, as
 * a passive declare does); rq_purge gives the number of messages purged. */
typedef void (*rq_count_cb)(void *arg, const br_err_t *err, uint32_t messages, uint32_t consumers);
void rq_stat(queue_t *q, rq_count_cb cb, void *arg);
void rq_purge(queue_t *q, rq_count_cb cb, void *arg);

/* Publisher flow control: bytes forwarded to q's home and not answered yet; and q->remote_deep,
 * set from the home's answers while the queue has consumers and at least RQ_DEEP messages
 * ready (the local throttle's rule, applied at the home). */
uint64_t rq_backlog(const queue_t *q);
#define RQ_BACKLOG_HIGH (8u << 20)
#define RQ_BACKLOG_LOW (2u << 20)
#define RQ_DEEP 2000
#define RQ_DRAINED (RQ_DEEP / 2)
/* Home side: q (remote_deep) drained below RQ_DRAINED: tell the other nodes. */
void rq_drained(queue_t *q);

/* ---- queue.c's hooks for remote queues ---- */

enum rq_settle_how { RQ_ACK = 0, RQ_REQUEUE = 1, RQ_DISCARD = 2 };
void rq_settle(queue_t *q, const qentry_t *e, enum rq_settle_how how); /* drops e->m's reference */
void rq_consumer_remove(queue_t *q, consumer_t *c);
void rq_dispatch(queue_t *q);      /* deliveries held back by the consumers' channels */
static inline void rq_check_drained(queue_t *q) /* after a dispatch pass of a local queue */
{
    if (q->remote_deep && (q->ready_len <= RQ_DRAINED || !q->consumers.n) && !rq_remote(q)) rq_drained(q);
}
void rq_queue_deleted(queue_t *q); /* before q_delete cancels the local consumers */
void rq_flush(broker_t *b);        /* end of br_dispatch_pending: sends this iteration's batches */

#endif
