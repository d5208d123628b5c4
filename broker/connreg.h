/* connreg.h - the node's registry of client connections (prefix connreg_), for warrenctl
 * list_connections and the management API's connection listings.
 *
 * A protocol adapter (amqp091/connection.c) embeds one connreg_entry_t per client connection,
 * fills the fixed fields at accept, adds it, and removes it when the connection is gone. The
 * changing figures (user, vhost, state, channels) are not kept up to date on every change: a
 * reader calls connreg_refresh first, which asks the owner (describe) for them, so the protocol
 * hot paths pay nothing. close asks the owner to close the connection (320 CONNECTION_FORCED
 * with the reason).
 *
 * Scope: one registry per process (one broker per process, as admin.c assumes); the loop thread
 * only. Entries are owned by their adapters; the registry only links them. */
#ifndef WARREN_CONNREG_H
#define WARREN_CONNREG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "broker/table.h"

typedef struct connreg_entry connreg_entry_t;
struct connreg_chan_info;
struct connreg_consumer_info;

struct connreg_entry {
    /* set at accept */
    uint64_t id;
    const char *protocol;          /* "AMQP 0-9-1" */
    char name[160];                /* RabbitMQ's "peer_host:peer_port -> host:port" */
    char peer_host[64], host[64];
    int peer_port, port;
    bool tls;
    double connected_at;           /* wall clock, seconds since the epoch */
    /* filled by describe (connreg_refresh) */
    const char *user, *vhost;      /* "" before the handshake got that far */
    const char *state;             /* "starting", "running", "blocked", "closing" */
    unsigned channels;
    char client_product[64];
    /* also filled by describe, for the management API (connreg_api.c); zeroed before */
    const char *auth_mechanism, *ssl_protocol; /* NULL when unknown / plain TCP */
    uint32_t frame_max, channel_max, heartbeat;
    uint64_t recv_oct, send_oct, recv_cnt, send_cnt, send_pend;
    amqp_bytes_t client_properties; /* field-table content, as the client sent it */
    /* the owner's callbacks */
    void (*describe)(void *ctx, connreg_entry_t *e);
    void (*close)(void *ctx, const char *reason);
    /* optional (management API): each open channel, each consumer of each open channel */
    void (*each_channel)(void *ctx, void (*fn)(void *arg, const struct connreg_chan_info *ch), void *arg);
    void (*each_consumer)(void *ctx, void (*fn)(void *arg, uint16_t channel, const struct connreg_consumer_info *ci),
                          void *arg);
    void *ctx;
    /* the rate sample (connreg_sample): counters then, and the rates computed; per channel too */
    double sampled_at;
    uint64_t prev_recv, prev_send;
    double recv_rate, send_rate;
    struct connreg_chan_rates *chan_rates; /* one per open channel at the last sample */
    size_t n_chan_rates;
    connreg_entry_t *prev, *next;
};

void connreg_add(connreg_entry_t *e);
void connreg_remove(connreg_entry_t *e);
/* The first registered entry (follow ->next), after refreshing every entry's figures. */
connreg_entry_t *connreg_refresh(void);
size_t connreg_count(void);
/* Closes the connection named name (its "name" field); false when there is none. */
bool connreg_close(const char *name, const char *reason);

/* ---- the management API's view (connreg_api.c) ------------------------------------------
 *
 * RabbitMQ 3.10's management objects for this node's connections, channels and consumers, and
 * the inter-node calls through which any node's API lists the whole cluster's. */

struct connreg_chan_info {
    uint16_t number;
    uint32_t consumers, prefetch, global_prefetch, unacked, unconfirmed, uncommitted;
    bool confirm, transactional;
    uint64_t publish, deliver, deliver_no_ack, get, get_no_ack, ack, redeliver, confirmed;
};

struct connreg_consumer_info {
    const char *tag;
    const char *queue, *vhost; /* the queue consumed from */
    bool ack_required, exclusive, active;
    uint32_t prefetch;
    int32_t priority; /* x-priority given on consume (0 = none) */
};

struct cJSON;
struct peer_reply_to;
typedef struct broker broker_t;

/* Open channels of every connection (the overview's object_totals.channels). */
size_t connreg_channel_count(void);
/* Samples the byte counters for recv_oct_details / send_oct_details (every few seconds). */
void connreg_sample(double now);
/* JSON arrays of RabbitMQ's connection / channel / consumer objects; node: this node's name. */
struct cJSON *connreg_connections_json(const char *node);
struct cJSON *connreg_channels_json(const char *node);
struct cJSON *connreg_consumers_json(const char *node);

/* Other nodes: the management API of any node calls CONNREG_CALL_LIST on every other running
 * member (b->node_call) with {"connections": true, "channels": true, "consumers": true} (the
 * lists it wants) and gets {"connections": [...], ...} back (connreg_lists_json on that node);
 * "counts": true adds {"counts": {"connections": N, "channels": M}};
 * CONNREG_CALL_CLOSE {"name", "reason"} force-closes a connection there (status 0, or
 * BR_NOT_FOUND). remote.c's mesh handler hands "connreg." calls to connreg_handle_call. */
#define CONNREG_CALL_LIST "connreg.list"
/* The management plugin's shares of cluster-wide figures, built by the hook it registers
 * (broker/ cannot: the rates live in mgmt/; NULL clears it), called with the share's name:
 *   "counts": true also carries {"overview": {...}}: this node's message_stats with rates and
 *   its listeners (the overview of any node sums / lists every member's);
 *   "objstats": true carries {"objstats": {...}}: this node's message_stats of vhosts and
 *   exchanges (summed over the members for /api/vhosts and /api/exchanges). */
typedef struct cJSON *(*connreg_share_fn)(void *ctx, const char *share);
void connreg_set_share_fn(connreg_share_fn fn, void *ctx);
#define CONNREG_CALL_CLOSE "connreg.close"
struct cJSON *connreg_lists_json(broker_t *b, const struct cJSON *req);
void connreg_handle_call(broker_t *b, uint32_t from, const char *method, const void *payload, size_t len,
                         const struct peer_reply_to *to);

#endif
