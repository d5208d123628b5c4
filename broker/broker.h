/* broker.h - the protocol-independent core: vhosts, users, exchanges, bindings, queues,
 * consumers and messages, and their durability.
 *
 * Adapters (amqp091/, later mqtt/, stomp/, mgmt/) call the br_* operations below, which
 * enforce RabbitMQ's rules (permissions, exclusivity, equivalence) and return RabbitMQ reply
 * codes with reply texts (without the "NAME - " prefix, which each protocol adds its own way).
 *
 * Data flow of a message: an adapter builds a msg_t (message.h), asks br_route() for the
 * set of destination queues, and calls q_publish() on each; every queue holds a reference to
 * the same msg_t (never a copy). Queues hand messages to consumers through consumer_ops_t;
 * the adapter keeps each delivery until it is settled with q_ack()/q_requeue().
 *
 * Everything runs on the node's single event loop; only store.c has a second thread. */
#ifndef WARREN_BROKER_H
#define WARREN_BROKER_H

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "broker/auth.h"
#include "broker/config.h"
#include "broker/dict.h"
#include "broker/message.h"
#include "broker/store.h"
#include "broker/table.h"
#include "broker/topic.h"

/* Reply codes shared by all protocols (RabbitMQ uses the AMQP 0-9-1 ones internally too). */
enum {
    BR_OK = 0,
    BR_ACCESS_REFUSED = 403,
    BR_NOT_FOUND = 404,
    BR_RESOURCE_LOCKED = 405,
    BR_PRECONDITION_FAILED = 406,
    BR_COMMAND_INVALID = 503,
    BR_NOT_ALLOWED = 530,
    BR_NOT_IMPLEMENTED = 540,
    BR_INTERNAL_ERROR = 541,
};

typedef struct {
    int code;
    char text[1024];
} br_err_t;
int br_fail(br_err_t *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

typedef struct broker broker_t;
typedef struct vhost vhost_t;
typedef struct exchange exchange_t;
typedef struct queue queue_t;
typedef struct binding binding_t;
typedef struct consumer consumer_t;
typedef struct user user_t;

/* A growable array of pointers. */
typedef struct {
    void **items;
    size_t n, cap;
} ptrvec_t;
void ptrvec_push(ptrvec_t *v, void *p);
bool ptrvec_remove(ptrvec_t *v, void *p); /* order-preserving */
void ptrvec_free(ptrvec_t *v);

/* ---- users, vhosts, permissions ---- */

typedef struct {
    auth_regex_t *configure, *write, *read;
} perm_t;

struct user {
    char *name;
    auth_hash_alg_t hash_alg;
    char *password_hash; /* base64, as RabbitMQ stores it */
    char *tags;          /* comma-separated, e.g. "administrator" */
    dict_t perms;        /* vhost name -> perm_t* */
    ptrvec_t topic_perms; /* tperm_t* (broker/topicperm.h) */
};

enum perm_kind { PERM_CONFIGURE, PERM_WRITE, PERM_READ };

/* A policy (or operator policy): definition keys applied to the queues/exchanges whose name
 * matches pattern; the highest priority matching policy wins (policy.c). */
typedef enum { APPLY_ALL, APPLY_QUEUES, APPLY_EXCHANGES } apply_to_t;
typedef struct {
    char *name;
    char *pattern_text;
    auth_regex_t *pattern;
    apply_to_t apply_to;
    int priority;
    amqp_bytes_t def_raw; /* definition as field-table content (owned) */
    amqp_table_t def;
} policy_t;

struct vhost {
    broker_t *broker;
    char *name;
    dict_t exchanges; /* name -> exchange_t* */
    dict_t queues;    /* name -> queue_t* */
    ptrvec_t policies, operator_policies; /* policy_t* */
    bool deleted; /* removed by br_vhost_delete; kept alive for connections still pointing at it */
    uint64_t stat_publish, stat_confirm; /* messages published into it, confirms sent (mgmt rates) */
    /* metadata (RabbitMQ 4's vhost metadata): description and tags ("" when none; tags
     * comma-separated), default_queue_type (NULL = not set) */
    char *description, *tags, *default_queue_type;
    /* runtime parameters of the vhost (broker/params.h: rparam_t*), and the limits read from its
     * "vhost-limits" one: BR_NO_LIMIT when absent or negative */
    ptrvec_t params;
    int64_t max_connections, max_queues;
    uint32_t connections; /* this node's open client connections to it (the AMQP adapter counts) */
};
#define BR_NO_LIMIT (-1)

/* ---- exchanges and bindings ---- */

typedef enum { EX_DIRECT, EX_FANOUT, EX_TOPIC, EX_HEADERS, EX_DELAYED /* declare-time only */ } ex_type_t;

struct binding {
    exchange_t *src;
    bool dest_is_queue;
    void *dest; /* queue_t* or exchange_t* */
    char *key;
    size_t key_len;
    amqp_bytes_t args_raw; /* owned copy of the arguments table content */
    amqp_table_t args;     /* parsed, points into args_raw */
};

struct exchange {
    vhost_t *vh;
    char *name;
    size_t name_len;
    ex_type_t type;     /* routing type (for x-delayed-message: its x-delayed-type) */
    bool delayed;       /* an x-delayed-message exchange: x-delay header holds messages back */
    bool durable, auto_delete, internal, deleted;
    amqp_bytes_t args_raw;
    ptrvec_t bindings;  /* bindings whose source is this exchange */
    ptrvec_t incoming;  /* exchange-to-exchange bindings whose destination is this exchange */
    dict_t direct;      /* EX_DIRECT: routing key -> ptrvec_t* of bindings */
    topic_trie_t *trie; /* EX_TOPIC */
    uint64_t route_mark;
    uint64_t stat_in, stat_out; /* published to it; of those, routed to at least one queue */
};

/* ---- queues and consumers ---- */

/* One message in a queue. seq orders the queue (FIFO by arrival; requeued messages go back
 * to their original place). */
typedef struct {
    msg_t *m;
    uint64_t seq;
    union {
        int64_t expires_at; /* ms (ev_now based); 0 = never */
        uint64_t qq_chan;   /* a quorum queue's delivery: the channel it was checked out to */
    };
    uint32_t redelivered : 1;
    uint32_t defer_slot; /* its store writes wait in b->deferred[defer_slot - 1]; 0: none (queue.c) */
} qentry_t;

typedef struct {
    qentry_t *buf;
    size_t head, len, cap;
} qdeque_t;

typedef struct consumer_ops {
    /* May this consumer take one more message now (channel credit, socket back-pressure)? */
    bool (*can_deliver)(consumer_t *c);
    /* Hands over one entry; the consumer now owns the entry's msg reference and must settle it
     * with q_ack()/q_requeue() unless c->no_ack. */
    void (*deliver)(consumer_t *c, queue_t *q, const qentry_t *e);
    /* The queue was deleted: the consumer is removed (server-side basic.cancel). */
    void (*cancelled)(consumer_t *c);
} consumer_ops_t;

struct consumer {
    queue_t *q;
    char *tag;
    size_t tag_len;
    bool no_ack, exclusive;
    int32_t priority;
    uint32_t prefetch; /* 0 = unlimited */
    uint32_t unacked;
    const consumer_ops_t *ops;
    void *owner;  /* adapter's channel */
    void *remote; /* remote.c: the link of a consumer of a queue homed on another node */
};

struct queue {
    vhost_t *vh;
    char *name;
    size_t name_len;
    uint64_t uid; /* stable id used in storage keys */
    bool durable, exclusive, auto_delete, deleted;
    uint64_t owner_conn; /* exclusive owner (cluster-wide connection id in a cluster) */
    uint32_t home;       /* node id of the node that holds the messages (0 = this one, unclustered);
                            quorum queue: the node that declared it */
    struct qq *qq;       /* a quorum queue (qq.h), NULL for a classic queue */
    bool delete_pending; /* clustered: a replicated delete has been submitted */
    bool remote_deep;    /* remote.c flow control: homed elsewhere, its home said it is deep; homed
                            here, some node was told so (and hears when it drained) */
    amqp_bytes_t args_raw;
    amqp_table_t args;

    /* ready messages: one deque per priority level (one level unless x-max-priority) */
    qdeque_t *levels;
    uint32_t nlevels;
    size_t ready_len;
    uint64_t next_seq;
    uint64_t ready_bytes;

    /* arguments in effect (x-message-ttl, x-expires, limits, dead-lettering, ...) */
    int64_t msg_ttl;   /* ms, -1 = none */
    int64_t expires;   /* ms, -1 = none */
    int64_t max_len, max_bytes; /* -1 = none */
    enum { OVERFLOW_DROP_HEAD, OVERFLOW_REJECT_PUBLISH, OVERFLOW_REJECT_PUBLISH_DLX } overflow;
    char *dlx;  /* NULL = no dead-lettering */
    char *dlrk; /* NULL = keep the message's routing keys */
    bool sac;   /* single active consumer */
    int64_t consumer_timeout; /* ms, -1 = node default (x-consumer-timeout / consumer-timeout policy) */
    const policy_t *policy, *operator_policy; /* in effect, or NULL */
    ev_timer ttl_timer, expires_timer;
    uint32_t unacked;
    ptrvec_t consumers; /* consumer_t*, sorted by priority (highest first) */
    size_t rr_next;     /* round-robin cursor */
    bool had_consumer;
    ptrvec_t bindings_in; /* bindings whose destination is this queue */

    uint32_t refs;         /* held by the vhost table and by each outstanding delivery */
    bool scheduled;        /* in the broker's dispatch run list */
    queue_t *next_sched;
    uint64_t route_mark;

    /* counters for management and metrics */
    uint64_t stat_publish, stat_deliver, stat_get, stat_ack, stat_redeliver;
};

/* ---- the broker ---- */

/* How the broker hands a metadata command to the cluster (cluster.c provides it): cb(arg, code,
 * text) runs once the command has been committed and applied on this node (code 0), or failed
 * (an AMQP reply code and text, e.g. 541 without a quorum). */
typedef void (*meta_submit_cb)(void *arg, int code, const char *text);
typedef int (*meta_submit_fn)(void *ctx, const void *cmd, size_t len, meta_submit_cb cb, void *arg);

/* How the broker reaches other nodes for classic queues homed elsewhere (remote.c; the cluster
 * glue provides these, see broker/remote.h for the exact contract). They mirror peer_call /
 * peer_reply / peer_is_up / peer_node_name of broker/peer.h. */
struct peer_reply_to;
typedef void (*br_node_reply_cb)(void *arg, int status, const char *error, const void *payload, size_t len);
typedef int (*br_node_call_fn)(void *ctx, uint32_t node, const char *method, const void *payload, size_t len,
                               double timeout, br_node_reply_cb cb, void *arg);
typedef int (*br_node_reply_fn)(void *ctx, const struct peer_reply_to *to, int status, const char *error,
                                const void *payload, size_t len);
typedef bool (*br_node_up_fn)(void *ctx, uint32_t node);
typedef const char *(*br_node_name_fn)(void *ctx, uint32_t node);
struct rq_state;

struct broker {
    struct ev_loop *loop;
    cfg_t *cfg;
    store_t *store; /* NULL = no durability (unit tests) */
    dict_t vhosts;  /* name -> vhost_t* */
    dict_t users;   /* name -> user_t* */
    uint64_t next_msg_id;
    uint64_t next_queue_uid;
    uint64_t route_gen;
    queue_t *sched_head;
    ev_prepare dispatch_watcher;
    uint64_t mem_body_bytes;    /* bodies held in memory by queued messages */
    uint64_t page_out_threshold; /* above this, stored bodies are dropped from memory */
    struct q_deferred *deferred; /* persistent messages' store writes not queued yet (queue.c) */
    uint64_t stat_msg_store_writes, stat_index_writes; /* message records / index entries written */
    uint64_t stat_publish, stat_deliver, stat_ack, stat_confirm, stat_unroutable;
    uint64_t stat_returned; /* of stat_unroutable, those returned to the publisher (mandatory) */
    /* churn (Prometheus connections/channels_opened/closed_total): client connections accepted and
     * gone, channels opened and closed, by the protocol adapters; they only grow */
    uint64_t stat_conn_opened, stat_conn_closed, stat_chan_opened, stat_chan_closed;
    unsigned alarms; /* BR_ALARM_* bits in effect */
    /* delayed messages (delayed.c): a min-heap by due time, one timer for the earliest */
    struct delay_entry *delays;
    size_t ndelays, delays_cap;
    uint64_t delay_seq;
    ev_timer delay_timer;
    /* metadata replication (meta.c): set when the node is part of a cluster */
    meta_submit_fn meta_submit; /* NULL: not clustered, changes apply at once */
    void *meta_submit_ctx;
    uint32_t self_node;       /* this node's id in the cluster (0 unclustered) */
    bool meta_dry_run;        /* br_* mutators validate only and set meta_would_mutate */
    bool meta_would_mutate;
    bool meta_applying;       /* inside meta_apply: mutations are the replicated ones */
    uint64_t meta_uid;        /* meta_apply: queue uid to use for a queue it creates */
    uint32_t meta_home;       /* meta_apply: home node of a queue it creates */
    amqp_bytes_t meta_members;/* meta_apply: members of a quorum queue it creates (u32 ids) */
    uint64_t meta_applied;    /* highest metadata log index reflected in the stored registry */
    /* classic queues homed on other nodes (remote.c): set by the cluster glue; node_call NULL =
     * every queue is served locally (unclustered) */
    br_node_call_fn node_call;
    br_node_reply_fn node_reply;
    br_node_up_fn node_is_up;     /* NULL: up unless rq_node_down said otherwise */
    br_node_name_fn node_name;    /* NULL: nodes are named by their id */
    void *node_ctx;
    struct rq_state *rq;          /* remote.c's state, created on first use */
    struct qq_state *qq;          /* qq.c's state (quorum queues), created on first use */
    /* Deleted users and vhosts: connections hold pointers to them (amqp091/session.h), so they
     * are unlinked from the registry at once but freed only with the broker. */
    ptrvec_t dead_users, dead_vhosts;
    ptrvec_t global_params; /* global runtime parameters (broker/params.h: rparam_t*) */
};

/* ---- delayed messages (delayed.c) ---- */

/* Holds m back for delay_ms, then routes it through x (an x-delayed-message exchange). Durable
 * exchange + persistent message: stored, and Q_PUB_SYNC is returned. */
int br_delay_publish(exchange_t *x, msg_t *m, int64_t delay_ms);
/* The x-delay header of m in ms (0 when absent or not an integer). */
int64_t br_delay_of(const msg_t *m);
/* Recovery: a stored delayed message (already counted in m->durable_refs by the caller). */
void br_delay_restore(broker_t *b, vhost_t *vh, msg_t *m, int64_t due_ms, uint64_t seq);
void br_delays_free(broker_t *b);

/* Resource alarms (alarm.c): publishers are blocked while one is in effect. */
enum { BR_ALARM_MEMORY = 1, BR_ALARM_DISK = 2 };
/* Re-evaluates memory use against the high watermark and free disk space against the limit;
 * returns the alarm bits now in effect (also stored in b->alarms). */
unsigned br_check_alarms(broker_t *b);
/* RabbitMQ's connection.blocked reason for a set of alarms ("low on memory", ...). */
const char *br_alarm_reason(unsigned alarms);
uint64_t br_memory_used(void);
uint64_t br_memory_limit(const broker_t *b);

broker_t *broker_new(struct ev_loop *loop, cfg_t *cfg, store_t *store);
/* Loads durable state from the store (vhosts, users, exchanges, queues, bindings, messages). */
int broker_recover(broker_t *b, char *err, size_t errlen);
/* Creates the default vhost/user from config when absent and the standard exchanges. */
int broker_boot_defaults(broker_t *b, char *err, size_t errlen);
/* Loads a RabbitMQ definitions JSON file (users, vhosts, permissions, exchanges, queues, bindings). */
int broker_load_definitions(broker_t *b, const char *path, char *err, size_t errlen);
/* Clustered, on the node that founds the cluster: submits the boot state (definitions file,
 * default vhost, and the default user unless the definitions had users) through the metadata
 * log instead of applying it locally. Returns 0, or -1 with err (unreadable or invalid file). */
int broker_boot_submit(broker_t *b, char *err, size_t errlen);
void broker_free(broker_t *b);

vhost_t *br_vhost(broker_t *b, const char *name, size_t len);
vhost_t *br_vhost_add(broker_t *b, const char *name);
user_t *br_user(broker_t *b, const char *name, size_t len);
user_t *br_user_add(broker_t *b, const char *name, auth_hash_alg_t alg, const char *hash, const char *tags);
int br_set_permissions(broker_t *b, user_t *u, vhost_t *vh, const char *configure, const char *write,
                       const char *read, char *err, size_t errlen);
/* Removes u's permissions on vh (and their record); false when it had none. */
bool br_clear_permissions(broker_t *b, user_t *u, const vhost_t *vh);
/* Deletes a user: unlinked from the registry with its permissions and records. Its connections
 * keep their pointer (freed with the broker) but it has no permissions left. */
void br_user_delete(broker_t *b, user_t *u);
/* Deletes a vhost and everything in it (queues, exchanges, bindings, policies, permissions), as
 * RabbitMQ's delete_vhost does. The struct lives on, marked deleted, for its connections. */
void br_vhost_delete(broker_t *b, vhost_t *vh);
/* Sets a vhost's metadata (NULL leaves a field as it is; default_queue_type "" clears it) and
 * stores it with the vhost's record. */
void br_vhost_set_metadata(vhost_t *vh, const char *description, const char *tags, const char *default_queue_type);
/* Recovery: the metadata stored with the 'V' records and the runtime parameters ('R', 'G'),
 * after the vhosts were recovered. */
void br_vhosts_recover_metadata(broker_t *b);
/* connection.open: 0 when the vhost's max-connections allows one more connection of this node,
 * else BR_NOT_ALLOWED with RabbitMQ's text (an unknown vhost passes: access is checked next). */
int br_check_vhost_connection_limit(broker_t *b, const user_t *u, const char *vhost, size_t len, br_err_t *err);
/* Verifies a password; NULL when the user is unknown or the password is wrong. */
user_t *br_authenticate(broker_t *b, const char *name, size_t nlen, const char *pw, size_t pwlen);
bool br_user_is_loopback_only(broker_t *b, const user_t *u);
/* 0 when the user may use the vhost, else BR_NOT_ALLOWED with text. */
int br_check_vhost_access(broker_t *b, user_t *u, const char *vhost, size_t len, vhost_t **out, br_err_t *err);
int br_check_perm(user_t *u, vhost_t *vh, enum perm_kind kind, bool is_queue, const char *name, size_t len,
                  br_err_t *err);

/* ---- operations (all check permissions; user NULL = internal, no checks) ---- */

exchange_t *br_exchange(vhost_t *vh, const char *name, size_t len);
int br_exchange_declare(vhost_t *vh, user_t *u, const char *name, size_t len, const char *type, size_t tlen,
                        bool passive, bool durable, bool auto_delete, bool internal, amqp_bytes_t args,
                        br_err_t *err);
int br_exchange_delete(vhost_t *vh, user_t *u, const char *name, size_t len, bool if_unused, br_err_t *err);

queue_t *br_queue(vhost_t *vh, const char *name, size_t len);
/* name may be empty: a server-named "amq.gen-..." queue is created. */
int br_queue_declare(vhost_t *vh, user_t *u, uint64_t conn_id, const char *name, size_t len, bool passive,
                     bool durable, bool exclusive, bool auto_delete, amqp_bytes_t args, queue_t **out,
                     br_err_t *err);
/* RabbitMQ 4's default queue type: the arguments of a declare without x-queue-type in a vhost
 * with a default_queue_type get x-queue-type (that type, or "classic" for a quorum default when
 * the queue cannot be one: transient, exclusive or auto-delete). Returns args itself, or bytes
 * in buf (the caller frees buf). br_queue_declare applies it; adapters call it to see the type. */
amqp_bytes_t br_queue_args_with_default_type(const vhost_t *vh, bool durable, bool exclusive, bool auto_delete,
                                             amqp_bytes_t args, amqp_buf_t *buf);
int br_queue_delete(vhost_t *vh, user_t *u, uint64_t conn_id, const char *name, size_t len, bool if_unused,
                    bool if_empty, uint32_t *msg_count, br_err_t *err);
int br_queue_purge(vhost_t *vh, user_t *u, uint64_t conn_id, const char *name, size_t len, uint32_t *msg_count,
                   br_err_t *err);
/* Finds a queue for consume/get: NOT_FOUND, RESOURCE_LOCKED (exclusive), read permission. */
int br_queue_for_read(vhost_t *vh, user_t *u, uint64_t conn_id, const char *name, size_t len, queue_t **out,
                      br_err_t *err);
int br_bind(vhost_t *vh, user_t *u, uint64_t conn_id, bool dest_is_queue, const char *dest, size_t dlen,
            const char *src, size_t slen, const char *key, size_t klen, amqp_bytes_t args, br_err_t *err);
int br_unbind(vhost_t *vh, user_t *u, uint64_t conn_id, bool dest_is_queue, const char *dest, size_t dlen,
              const char *src, size_t slen, const char *key, size_t klen, amqp_bytes_t args, br_err_t *err);
/* Publishing: resolves the exchange (404), refuses internal ones (403) and checks write. */
int br_publish_target(vhost_t *vh, user_t *u, const char *name, size_t len, exchange_t **out, br_err_t *err);
/* Appends the distinct destination queues of m (routing key rk) to out. */
void br_route(exchange_t *x, msg_t *m, ptrvec_t *out);
/* A copy of m without the BCC header (sender-selected distribution), or NULL when it has none. */
msg_t *br_strip_bcc(msg_t *m);
/* A fresh server-generated queue name, "amq.gen-..." (out holds at least 48 bytes). */
void br_server_queue_name(char *out);
/* A connection went away: delete its exclusive queues. */
void br_connection_closed(broker_t *b, uint64_t conn_id);

/* ---- policies (policy.c) ---- */

/* Adds or replaces a policy; definition is field-table content. Re-applies policies to every
 * queue of the vhost at once. Returns 0 or -1 with err (bad pattern, apply-to, definition). */
int br_policy_set(vhost_t *vh, bool is_operator, const char *name, const char *pattern, const char *apply_to,
                  int priority, amqp_bytes_t definition, char *err, size_t errlen);
int br_policy_clear(vhost_t *vh, bool is_operator, const char *name);
/* The policy in effect for a queue or exchange name, or NULL. */
const policy_t *br_policy_match(const vhost_t *vh, bool is_operator, bool is_queue, const char *name, size_t len);
/* A key of a policy definition, or NULL. */
const amqp_value_t *br_policy_value(const policy_t *p, const char *key);
void br_policies_free(vhost_t *vh);
/* Validates a policy as br_policy_set would, without setting it: 0, or -1 with err. */
int br_policy_check(const char *name, const char *pattern, const char *apply_to, amqp_bytes_t definition, char *err,
                    size_t errlen);
/* Deletes every policy of vh with its stored record (vhost deletion). */
void br_policies_delete_all(vhost_t *vh);
/* Recovery: the stored policies ('O' records). Returns how many. */
int br_policies_recover(broker_t *b);
/* Recomputes a queue's effective settings from its arguments and policies. */
void q_apply_settings(queue_t *q);

/* ---- queue operations (queue.c) ---- */

/* Enqueues m (takes a new reference). Persistent messages in durable queues are written to the
 * store: Q_PUB_SYNC says that write must be synced before confirming. Q_PUB_REJECTED: the queue
 * is full with x-overflow reject-publish(-dlx); the publisher gets basic.nack. */
enum { Q_PUB_OK = 0, Q_PUB_SYNC = 1, Q_PUB_REJECTED = 2 };
int q_publish(queue_t *q, msg_t *m);
/* A delivered entry rejected without requeue: dead-lettered (reason "rejected") or dropped. */
void q_discard(queue_t *q, const qentry_t *e);
/* Dead-letters m from q with reason ("rejected", "expired", "maxlen") when q has a DLX. */
void q_dead_letter(queue_t *q, msg_t *m, const char *reason);
/* At-least-once dead-lettering: done(arg, ok) once every queue the copy reached has it safely
 * (confirmed / synced): ok false when one refused it or it reached none (no DLX, unroutable). */
void q_dead_letter_confirmed(queue_t *q, msg_t *m, const char *reason, void (*done)(void *arg, bool ok), void *arg);
/* Marks the queue used (resets its x-expires timer). */
void q_touch(queue_t *q);
void q_consumer_add(queue_t *q, consumer_t *c);
void q_consumer_remove(queue_t *q, consumer_t *c); /* may auto-delete the queue */
/* Pops the head for basic.get; false when empty. */
bool q_get(queue_t *q, qentry_t *out);
/* Settles a delivered entry: removes it for good. */
void q_ack(queue_t *q, const qentry_t *e);
/* Returns a delivered entry to the queue at its original position, marked redelivered. */
void q_requeue(queue_t *q, const qentry_t *e);
uint32_t q_purge(queue_t *q);
uint32_t q_message_count(queue_t *q); /* drops expired messages first */
static inline uint32_t q_consumer_count(const queue_t *q) { return (uint32_t)q->consumers.n; }
/* Schedules a dispatch pass (runs before the loop next sleeps). */
void q_schedule(queue_t *q);
void q_ref(queue_t *q);
void q_unref(queue_t *q);
/* Removes the queue from its vhost, cancels consumers, drops messages and its bindings. */
void q_delete(queue_t *q);
/* Drops m's body from memory once its stored record is synced (page out). */
void q_pageout_candidate(msg_t *m);
/* The store's presubmit hook (arg: the broker): queues the deferred writes of persistent
 * messages still in their queues (write elision, queue.c). q_deferred_free queues the last
 * ones and frees the list (shutdown, before the queues go). */
void q_write_deferred(void *arg);
void q_deferred_free(broker_t *b);
/* Loads a message body back from the store when it was paged out; false on failure. */
bool q_body_load(broker_t *b, msg_t *m);
queue_t *q_new(vhost_t *vh, const char *name, size_t len, bool durable, bool exclusive, bool auto_delete,
               uint64_t owner, amqp_bytes_t args);
void q_persist_definition(queue_t *q);
void br_dispatch_pending(broker_t *b);

/* storage keys */
enum { KEY_MSG = 'm', KEY_QINDEX = 'i', KEY_QUEUE = 'Q', KEY_EXCHANGE = 'X', KEY_BINDING = 'B', KEY_VHOST = 'V',
       KEY_USER = 'U', KEY_PERM = 'P', KEY_DELAY = 'D', KEY_META_APPLIED = 'A', KEY_POLICY = 'O',
       KEY_QQ_BODY = 'b' /* broker/qq.c: 'b' + gid + msg id -> a quorum queue message's body */,
       KEY_PARAM = 'R' /* broker/params.c: vhost \0 component \0 name -> value (JSON) */,
       KEY_GLOBAL_PARAM = 'G' /* broker/params.c: name -> value (JSON) */ };

#endif
