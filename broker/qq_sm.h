/* qq_sm.h - the quorum queue state machine (prefix qsm_), in the manner of RabbitMQ's rabbit_fifo.
 *
 * A quorum queue is a Raft group (broker/multiraft.c) whose log holds the commands below; every
 * member applies them in log order to its own qsm_t and so computes the same state: the ready
 * messages, which consumer holds which message, delivery counts, the publishers' sequence
 * numbers. This file knows nothing of Raft, sockets, clocks or the broker's queue_t: it is a
 * pure, deterministic function of the commands (time enters only through each command's
 * now_ms, which the proposing leader stamps), testable on its own (tests/unit/test_qq_sm.c).
 *
 * What the host (broker/qq.c) does with it:
 *   - encodes a command with qsm_encode and proposes it to the group's leader;
 *   - on every member, for each committed entry, calls qsm_apply, which reports effects:
 *       deliver      a message was assigned to a consumer. Every member computes the same
 *                    assignment; the member on the consumer's node hands it to the client.
 *       result       the outcome of a command that carries a request id (enqueue accepted,
 *                    duplicate or rejected; basic.get's message; purge's count...). The host
 *                    that is waiting for (node, req) answers its client.
 *       dead_letter  a message left the queue dead-lettered (rejected / expired / maxlen /
 *                    delivery_limit): the leader's host republishes it to the DLX.
 *   - takes and installs snapshots (qsm_snapshot / qsm_restore).
 *
 * Semantics (RabbitMQ 4.0-4.2 quorum queues):
 *   - Ready messages are served returns first (messages given back by nack/reject requeue or by
 *     a consumer going away, in the order they were returned), then the FIFO. Two priority
 *     levels as RabbitMQ 4.0: priority > 4 is "high"; while both levels have messages, two high
 *     ones are served for each normal one. (Returns are served before either level.)
 *   - Consumers: a consumer is (node, chan, tag). Each has a prefetch (0 = unlimited) and gets
 *     messages while it holds fewer than prefetch. Higher x-priority consumers are served first;
 *     equal priorities round-robin. no_ack consumers settle at assignment (the message is gone).
 *     Single active consumer: only the earliest registered live consumer receives; when it
 *     goes, the next in registration order becomes active.
 *   - Counts (4.0-4.2): a message's acquired_count is incremented each time it is returned
 *     (requeue by nack/reject, or its consumer's channel/node going down); delivery_count only
 *     when delivery failed (channel/node down). A returned message whose acquired_count exceeds
 *     delivery_limit (delivery_limit >= 0) is dead-lettered with reason "delivery_limit" instead.
 *     Deliveries report acquired_count (the x-delivery-count header, present when > 0) and
 *     redelivered = acquired_count > 0.
 *   - basic.cancel (QSM_CANCEL) stops new assignments; messages it holds stay checked out until
 *     settled/returned or its channel goes down (QSM_DOWN).
 *   - Publisher dedup: an enqueue with seq > 0 from (node, chan) is applied once: a seq already
 *     seen is reported QSM_R_DUPLICATE (the publisher confirms it as usual). Seqs may arrive out
 *     of order (a resend after a leader change), so "seen" is exact, not "<= highest".
 *   - Limits: max_length counts ready messages, max_bytes their body bytes. drop-head: after an
 *     enqueue, the oldest ready messages are dead-lettered ("maxlen") until within both limits.
 *     reject-publish: an enqueue that finds the queue at or over a limit is QSM_R_REJECTED.
 *   - TTL: a message's expiry is its enqueue's now_ms plus min(msg_ttl, its own expiration);
 *     ready messages whose expiry <= a command's now_ms are dead-lettered ("expired") when they
 *     reach the head (each apply drops expired heads first; QSM_EXPIRE exists for the leader to
 *     make that happen on an idle queue). Checked-out messages never expire.
 *   - Dead-letter strategy at-least-once (with overflow reject-publish and a DLX; otherwise
 *     at-most-once): a dead-lettered message stays in the queue (counted in dlx_count/bytes and
 *     towards the length limits) until QSM_DLX_SETTLE names its dlx id; the dead_letter effect
 *     gives that id. At-most-once: the message is gone once the effect is reported (dlx id 0).
 *
 * Decisions the text above leaves open (qq_sm.c implements them; tests/unit/test_qq_sm.c checks):
 *   - Expiry: a TTL of 0 gives expiry now_ms + 1 (as rabbit_fifo), so a consumer waiting when
 *     the enqueue applies still gets the message. "Heads" are the heads of the returns, high and
 *     normal deques; returned messages keep their expiry. stats.earliest_expiry is the soonest
 *     expiry among those heads (the only messages a QSM_EXPIRE can drop).
 *   - Dead-lettering without a DLX (cfg.dead_letter false) drops the message silently (no
 *     effect) for every reason; dead_lettered_total still counts it. The dead_letter effect's
 *     delivery_count is the message's acquired_count. The dlx id is the message's msg_id.
 *   - Leaving at-least-once by QSM_CONFIG hands the still unsettled dead-lettered messages to
 *     the DLX at most once (dead_letter effects with dlx id 0, or dropped without a DLX).
 *   - Length limits: assignment runs before the drop-head check, and the check runs after every
 *     command (so a waiting consumer takes a message first; a returned message or a lowered
 *     QSM_CONFIG limit can also trigger drops, as in rabbit_fifo). Drops take the next message
 *     in service order (returns first).
 *   - Dedup: a seq that was QSM_R_REJECTED is not marked seen (a resend may be accepted; it is
 *     never confirmed as a duplicate of a message that was not enqueued). Per (node, chan) at most
 *     4096 seen seqs above a gap are kept; beyond that the gap is given up (its seq then counts
 *     as seen). An enqueuer record is made by any enqueue, with or without seq.
 *   - Consumers: QSM_CHECKOUT of an existing consumer updates prefetch, priority and flags in
 *     place; of a cancelled one, registers it again at the end of the order. An unsettled
 *     basic.get is held by the cancelled pseudo-consumer (node, chan, tag ""): it never receives
 *     assignments and is not counted in stats.consumers. QSM_SETTLE/RETURN/DISCARD ignore ids
 *     that no consumer of (node, chan) holds; their tag is still encoded but plays no part.
 *     QSM_DOWN returns messages in msg_id order.
 *   - QSM_PURGE removes ready messages without dead-lettering them.
 *   - QSM_ENQUEUE's msg is validated by qsm_decode; qsm_apply of a hand-built command whose
 *     record msg_from_record refuses answers QSM_R_REJECTED and changes nothing else.
 *     msg_t priority and persistent are set from the record's properties.
 *   - qsm_apply ignores a QSM_CONFIG with invalid enums; qsm_new uses the defaults for one.
 *
 * Ownership: the state holds one msg_t reference per message (m->id is set to its msg_id). Effects lend msg_t pointers for
 * the duration of the callback: take msg_ref() to keep one.
 */
#ifndef WARREN_QQ_SM_H
#define WARREN_QQ_SM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "broker/message.h"
#include "broker/table.h"

typedef struct qsm qsm_t;

enum qsm_overflow { QSM_DROP_HEAD = 0, QSM_REJECT_PUBLISH = 1 };
enum qsm_dlx_strategy { QSM_AT_MOST_ONCE = 0, QSM_AT_LEAST_ONCE = 1 };

struct qsm_config {
    int64_t delivery_limit; /* -1 = unlimited; RabbitMQ 4's default is 20 */
    int64_t max_length;     /* ready messages; -1 = none */
    int64_t max_bytes;      /* ready body bytes; -1 = none */
    int64_t msg_ttl;        /* ms; -1 = none */
    uint8_t overflow;       /* enum qsm_overflow */
    uint8_t dlx_strategy;   /* enum qsm_dlx_strategy (at-least-once only takes effect with
                               reject-publish and dead_letter) */
    bool dead_letter;       /* a dead-letter exchange is configured */
    bool single_active;     /* x-single-active-consumer */
};
/* delivery_limit 20, no limits, no TTL, drop-head, at-most-once, no DLX, no SAC. */
void qsm_config_defaults(struct qsm_config *c);

enum qsm_op {
    QSM_ENQUEUE = 1,    /* node, chan, req, seq, expiration_ms, msg */
    QSM_CHECKOUT = 2,   /* node, chan, tag, prefetch, priority, flags: register or update a consumer */
    QSM_CANCEL = 3,     /* node, chan, tag: no more assignments to it */
    QSM_SETTLE = 4,     /* node, chan, ids: ack (ids held by any consumer of the channel; tag ignored) */
    QSM_RETURN = 5,     /* node, chan, ids: nack/reject with requeue */
    QSM_DISCARD = 6,    /* node, chan, ids: reject without requeue (dead-letter "rejected") */
    QSM_DEQUEUE = 7,    /* node, chan, req, flags (QSM_F_NO_ACK): basic.get */
    QSM_DOWN = 8,       /* node, chan (0 = every channel of node), seq = keep_boot (see below) */
    QSM_PURGE = 9,      /* req: drop every ready message */
    QSM_CONFIG = 10,    /* config: the queue's effective settings (arguments + policies) */
    QSM_EXPIRE = 11,    /* only now_ms: drop expired heads */
    QSM_DLX_SETTLE = 12,/* ids: dlx ids the DLX has confirmed (at-least-once) */
};

enum {
    QSM_F_NO_ACK = 1u << 0,    /* checkout / dequeue: settled at assignment */
    QSM_F_EXCLUSIVE = 1u << 1, /* checkout: basic.consume exclusive (the host checks it) */
};

/* One command. Decoded commands point into the buffer they came from. */
struct qsm_cmd {
    uint8_t op;
    uint8_t flags;
    uint32_t node;       /* the channel's node */
    uint64_t chan;       /* node-unique channel id (the host puts its boot counter in the top
                            32 bits, so ids of a previous run never match a live channel) */
    uint64_t req;        /* request id for the result effect; 0 = no result wanted */
    int64_t now_ms;      /* leader's wall clock in ms when it proposed the command */
    uint64_t seq;        /* enqueue: publisher seq (0 = no dedup; seqs start at 1); down: keep_boot */
    int64_t expiration_ms; /* enqueue: the message's own expiration property, -1 = none */
    uint32_t prefetch;   /* checkout */
    int32_t priority;    /* checkout: x-priority */
    amqp_bytes_t tag;    /* consumer tag (encoded as a shortstr: at most 255 bytes) */
    amqp_bytes_t msg;    /* enqueue: msg_record_write() bytes */
    uint32_t n_ids;      /* settle/return/discard/dlx_settle */
    const uint8_t *ids;  /* n_ids big-endian u64 (use qsm_cmd_id); encode reads ids_in instead
                            (or ids when ids_in is NULL); apply reads ids, or ids_in when ids is NULL */
    const uint64_t *ids_in;
    struct qsm_config config; /* QSM_CONFIG */
};
static inline uint64_t qsm_cmd_id(const struct qsm_cmd *c, uint32_t i) { return amqp_get_u64(c->ids + 8 * (size_t)i); }

void qsm_encode(amqp_buf_t *out, const struct qsm_cmd *c);
/* 0, or -1 for a malformed command (never crashes on any input: a fuzz target). Strict: wrong
 * version, unknown op, truncation, trailing bytes, unknown flag bits or config enums,
 * expiration_ms < -1 or an ENQUEUE msg that is not a well-formed record are all -1. Whatever
 * decodes re-encodes to the same bytes. */
int qsm_decode(const void *buf, size_t len, struct qsm_cmd *c);

/* QSM_DOWN: removes the consumers and publisher records of (node, chan), or of every channel of
 * node when chan is 0 - except, when keep_boot (seq) is non-zero, channels whose boot (chan >> 32)
 * equals keep_boot (a restarted node clearing out its previous runs). Their checked-out messages
 * are returned (acquired_count and delivery_count +1, the delivery limit applies). */

enum qsm_status {
    QSM_R_OK = 0,
    QSM_R_DUPLICATE = 1, /* enqueue: seen before, not enqueued again */
    QSM_R_REJECTED = 2,  /* enqueue: over a limit with reject-publish */
    QSM_R_EMPTY = 3,     /* dequeue: nothing ready */
};

struct qsm_result {
    int status;              /* enum qsm_status */
    uint32_t count;          /* purge: messages purged; dequeue: ready messages left */
    msg_t *m;                /* dequeue: the message (lent) */
    uint64_t msg_id;         /* dequeue without no_ack: settle it with the consumer (node, chan, tag "") */
    uint32_t delivery_count; /* acquired_count, for x-delivery-count */
    bool redelivered;
};

struct qsm_effects {
    void *ud;
    void (*deliver)(void *ud, uint32_t node, uint64_t chan, amqp_bytes_t tag, uint64_t msg_id, msg_t *m,
                    uint32_t delivery_count, bool redelivered);
    void (*result)(void *ud, uint32_t node, uint64_t req, const struct qsm_result *r);
    /* reason: "rejected", "expired", "maxlen", "delivery_limit"; dlx_id 0 unless at-least-once */
    void (*dead_letter)(void *ud, msg_t *m, const char *reason, uint32_t delivery_count, uint64_t dlx_id);
    /* Body paging hooks (the host may keep bodies on disk, see qsm_snapshot_ex): a message was
     * enqueued with id msg_id (m->body in memory); a message left the state for good. */
    void (*enqueued)(void *ud, uint64_t msg_id, msg_t *m);
    void (*removed)(void *ud, uint64_t msg_id, msg_t *m);
};

qsm_t *qsm_new(const struct qsm_config *initial);
void qsm_free(qsm_t *s);
/* Applies one committed command (already decoded). Effects may be NULL or have NULL members. */
void qsm_apply(qsm_t *s, const struct qsm_cmd *c, const struct qsm_effects *fx);

/* Observability and host decisions. */
struct qsm_stats {
    uint64_t ready, ready_bytes;       /* messages_ready, message_bytes_ready */
    uint64_t unacked, unacked_bytes;   /* checked out */
    uint64_t dlx, dlx_bytes;           /* at-least-once dead-lettered, not yet settled */
    uint32_t consumers;                /* registered, not cancelled */
    uint32_t enqueuers;
    uint64_t enqueued_total, delivered_total, settled_total, returned_total, dead_lettered_total;
                                       /* delivered counts basic.get too; settled counts no_ack
                                          deliveries; returned counts messages put back ready
                                          (not those dead-lettered by the delivery limit) */
    int64_t earliest_expiry;           /* ms of the soonest ready expiry; 0 = none */
    bool over_limit;                   /* reject-publish: at or over a limit now */
};
void qsm_stats(const qsm_t *s, struct qsm_stats *out);
const struct qsm_config *qsm_config(const qsm_t *s);
/* Is (node, chan, tag) a registered (not cancelled) consumer? the active one under SAC?
 * (true only when registered, not cancelled and, under SAC, the active one) */
bool qsm_has_consumer(const qsm_t *s, uint32_t node, uint64_t chan, amqp_bytes_t tag);
/* At-least-once: the dead-lettered messages not settled yet, in dead-lettering order, with their
 * dlx id (a new leader hands them to the DLX again; so does a retry after a failure). */
typedef void (*qsm_dlx_fn)(void *ud, uint64_t dlx_id, msg_t *m, const char *reason, uint32_t delivery_count);
void qsm_dlx_each(const qsm_t *s, qsm_dlx_fn fn, void *ud);
/* Live messages (ready + checked out + dlx): the snapshot size in messages. */
uint64_t qsm_live(const qsm_t *s);

/* Snapshot: the whole state (messages, consumers with their checked-out ids, enqueuers,
 * config, counters). Deterministic: equal states give equal bytes. Two kinds (the first byte):
 *   QSM_SNAP_FULL  every message's body inline: what a member that has nothing else needs
 *                  (a snapshot sent to a follower);
 *   QSM_SNAP_META  bodies by length only: the host keeps them elsewhere (its own store), so
 *                  a local snapshot stays small however many bytes the queue holds.
 * Message bodies may be absent from memory (m->body NULL: the host paged them out). For each
 * message, body(ud, msg_id, m, out) is called when given: FULL calls it only for an absent body
 * and it must append the body's bytes to out; META calls it with out NULL for every message
 * (but see QSM_SNAP_UNCACHED below), so that the host can make sure the body is in its store.
 * A false return fails the snapshot (-1); 0 otherwise. qsm_snapshot is FULL with every body in memory (aborts otherwise). */
enum qsm_snap_kind { QSM_SNAP_FULL = 2, QSM_SNAP_META = 3 };
/* META keeps the encodings of ready messages between snapshots (a ready message never changes
 * and keeps its predecessor), so a snapshot costs O(messages added since the previous one) plus
 * the messages outside the ready deques, and calls body() only for the messages it encodes
 * anew: a ready message's body was seen by the snapshot that first encoded it. OR-ing
 * QSM_SNAP_UNCACHED into kind encodes (and reports) every message now: the same bytes. */
#define QSM_SNAP_UNCACHED 0x100
typedef bool (*qsm_body_fn)(void *ud, uint64_t msg_id, const msg_t *m, amqp_buf_t *out);
int qsm_snapshot_ex(const qsm_t *s, amqp_buf_t *out, int kind, qsm_body_fn body, void *ud);
void qsm_snapshot(const qsm_t *s, amqp_buf_t *out);
/* NULL for malformed bytes (never crashes: a fuzz target). Strict: whatever restores
 * snapshots to the same bytes, in the same kind (a META snapshot restores with every body
 * NULL and body_len set; m->id is the message's msg_id). */
qsm_t *qsm_restore(const void *bytes, size_t len);
/* Calls fn for every message of the state (ready, checked out, dead-lettered), in no
 * particular order. */
void qsm_each_msg(const qsm_t *s, void (*fn)(void *ud, uint64_t msg_id, msg_t *m), void *ud);
/* Calls fn for every checked-out message with its consumer, consumers in registration order,
 * each one's messages in msg_id order (a new leader re-sends what the old one relayed). */
typedef void (*qsm_checked_fn)(void *ud, uint32_t node, uint64_t chan, amqp_bytes_t tag, uint64_t msg_id, msg_t *m,
                               uint32_t delivery_count);
void qsm_each_checked(const qsm_t *s, qsm_checked_fn fn, void *ud);
/* Looks up live messages by id: out[i] is the message with id ids[i] (lent), or NULL if the
 * state does not hold it. ids ascending (no duplicates). O(n log live + returned messages). */
void qsm_find_many(const qsm_t *s, const uint64_t *ids, size_t n, msg_t **out);
/* The next msg_id: every message enqueued after the state was taken has an id >= it. */
uint64_t qsm_next_id(const qsm_t *s);

#endif
