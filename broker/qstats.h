/* qstats.h - a queue's live figures as the node that knows them reports them, and the inter-node
 * call through which any node's management API asks for them (prefix qs_).
 *
 * In a cluster only the home of a classic queue knows its depth, consumers and counters; for a
 * quorum queue every member knows its depth (replicated), but each node counts only the
 * publishes, deliveries, gets and acks of its own clients. QS_CALL_LIST asks one node for what
 * it knows; the caller (mgmt/qgather.c) merges the answers: a classic queue's figures are its
 * home's, a quorum queue's counters and counter rates are the sum over the nodes.
 *
 * Wire format (big-endian; shortstr = u8 length + bytes):
 *   request : u8 mode
 *             QS_ALL:    shortstr vhost ("" = every vhost)
 *             QS_NAMED:  u32 n, n * (shortstr vhost, shortstr queue)
 *   reply   : records until the end, each
 *             u64 uid, u8 flags (QS_F_*)
 *             QS_F_DEPTH:    u64 ready, u64 unacked, u64 ready_bytes, u64 unacked_bytes, u32 consumers
 *             QS_F_COUNTERS: u64 publish, deliver, get, ack, redeliver
 *             QS_F_RATES:    QS_RATE_N * u64 (the IEEE-754 bits of a double, per second)
 *   A node answers with its classic queues' records (always with depth) and, for quorum queues,
 *   with its own counters (when any is non-zero) and the depth when it holds a replica. Uids
 *   are the same on every node, so records are matched by uid. */
#ifndef WARREN_QSTATS_H
#define WARREN_QSTATS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "broker/broker.h"
#include "broker/peer.h"

#define QS_CALL_LIST "qstats.list"

enum { QS_ALL = 1, QS_NAMED = 2 };
enum { QS_F_DEPTH = 1, QS_F_COUNTERS = 2, QS_F_RATES = 4, QS_F_QUORUM = 8 };

/* The rates a record carries, per second: the counters' and the depths' (depth rates may be < 0). */
enum {
    QS_RATE_PUBLISH, QS_RATE_DELIVER, QS_RATE_GET, QS_RATE_DELIVER_GET, QS_RATE_ACK, QS_RATE_REDELIVER,
    QS_RATE_MESSAGES, QS_RATE_READY, QS_RATE_UNACKED, QS_RATE_N
};
#define QS_RATE_COUNTERS QS_RATE_MESSAGES /* rates below this index are the counters' */

struct qs_fig {
    uint64_t uid;
    unsigned flags; /* QS_F_* */
    uint64_t ready, unacked, ready_bytes, unacked_bytes;
    uint32_t consumers;
    uint64_t publish, deliver, get, ack, redeliver;
    double rate[QS_RATE_N];
};

/* Rates come from the management plugin's samples (mgmt/rates.c sets this when it starts;
 * NULL: rates are 0). Reads q's rates into out[QS_RATE_N]. */
typedef void (*qs_rates_fn)(void *ctx, const queue_t *q, double out[QS_RATE_N]);
void qs_set_rates(qs_rates_fn fn, void *ctx);

/* What this node knows of q: a classic queue homed here (or unclustered): everything; a quorum
 * queue: this node's counters, and the depth when it holds a replica; a classic queue homed
 * elsewhere: nothing (false). */
bool qs_local(queue_t *q, struct qs_fig *out);

/* Requests. */
void qs_request_all(amqp_buf_t *o, const char *vhost); /* vhost NULL or "": every vhost */
void qs_request_named(amqp_buf_t *o, queue_t *const *queues, size_t n);

/* Reads the next record of a reply; false at the end or on malformed input (r->bad then). */
bool qs_read(amqp_reader_t *r, struct qs_fig *out);

/* The callee's side (remote.c's mesh handler hands "qstats." calls here). */
void qs_handle_call(broker_t *b, uint32_t from, const char *method, const void *payload, size_t len,
                    const struct peer_reply_to *to);

#endif
