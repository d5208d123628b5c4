/* peer.h - the inter-node transport: one authenticated connection per peer node, on the loop.
 *
 * A peer mesh is this node's end of the cluster network: a listener on the cluster port, and for
 * each other node at most one live connection, dialed by the node with the smaller id (the other
 * one waits for it). Connections carry length-prefixed Frames (broker/raftwire.h): Raft batches,
 * pings, and calls (a request with a method name and bytes, answered by one reply).
 *
 * Authentication: both ends prove knowledge of the cluster cookie with an HMAC-SHA256 challenge
 * and response in each direction (see broker/cluster.proto); the cookie never crosses the wire.
 * A node with another cookie, another cluster name, or a node id that clashes is refused with a
 * log line and never reported up. Any node that proves the cookie is accepted, configured or not
 * (that is how a new node joins); nodes added with peer_add_node are also dialed when their id is
 * larger than ours.
 *
 * Liveness: every ping_interval each live connection gets a Ping; a peer from which nothing was
 * received for down_after seconds is declared down and its connection closed. The dialing side
 * reconnects with exponential backoff (backoff_min doubling to backoff_max, with jitter).
 *
 * Delivery: Raft batches are best effort (Raft tolerates loss): sending to a node that is down,
 * or whose send buffer is full (max_out), drops the batch and says so in the return code. Calls
 * fail at once in those cases (the reply callback is then never called); otherwise the reply
 * callback runs exactly once: with the reply, or PEER_ETIMEDOUT, or PEER_EDOWN when the
 * connection is lost first. Frames are delivered in order per connection.
 *
 * Command-line clients (warrenctl): a connection whose Hello claims node id PEER_CLIENT_ID is a
 * client, not a node. It authenticates with the cookie like a node (its cluster name is not
 * checked: a tool does not know it), may then only make calls and answer pings, is never reported
 * up or down and never dialed. Its calls reach the call callback with from = PEER_CLIENT_ID.
 *
 * Threading and re-entrancy: everything runs on the loop thread. Callbacks run from loop
 * callbacks only, never from inside a peer_* call, with two documented exceptions:
 * peer_remove_node reports the node down (and fails its calls) before returning, and so does
 * nothing else. peer_mesh_free calls no callback at all and must not be called from one. */
#ifndef WARREN_PEER_H
#define WARREN_PEER_H

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>

#include "broker/raftwire.h"

typedef struct peer_mesh peer_mesh_t;

/* The node id a command-line client claims (raftwire refuses id 0 in a Hello). No node may use it. */
#define PEER_CLIENT_ID 0xffffffffu

enum peer_status {
    PEER_OK = 0,
    PEER_EDOWN = -1,      /* no authenticated connection to that node right now */
    PEER_ENODE = -2,      /* no such node */
    PEER_ETIMEDOUT = -3,  /* the call got no reply in time */
    PEER_ETOOBIG = -4,    /* larger than the frame size either end accepts */
    PEER_EBUSY = -5,      /* the connection's send buffer is full */
    PEER_EINVAL = -6,
    PEER_ENOMEM = -7,
    PEER_ENOHANDLER = -8, /* reply status: the callee has no call handler */
};
const char *peer_strerror(int status);

/* Where a reply goes: the calling node, the connection the call came on, the call's id. If that
 * connection is gone by the time the reply is ready, the caller has already been told. */
struct peer_reply_to {
    uint32_t node;
    uint64_t conn;
    uint64_t id;
};

/* An incoming call; method and payload are valid only during the callback. */
struct peer_call_in {
    struct peer_reply_to reply_to;
    const char *method;
    const void *payload;
    size_t len;
};

struct peer_callbacks {
    void (*up)(void *ud, uint32_t node);   /* an authenticated connection to node is ready */
    void (*down)(void *ud, uint32_t node); /* ... and is gone */
    /* A Raft batch from node. Return true to keep it (the callee then calls rw_frame_free), false
     * to let the transport free it when the callback returns. NULL: batches are dropped. */
    bool (*raft)(void *ud, uint32_t from, struct rw_frame *batch);
    /* A call from node; answer with peer_reply(), now or later. NULL: every call is answered
     * with PEER_ENOHANDLER. */
    void (*call)(void *ud, uint32_t from, const struct peer_call_in *call);
};

struct peer_config {
    uint32_t node_id;           /* non-zero, not PEER_CLIENT_ID, unique in the cluster */
    const char *node_name;      /* e.g. rabbit@host; shown in peers' logs */
    const char *cluster_name;   /* peers must have the same one ("" is a name too) */
    const char *cookie;         /* the shared secret, non-empty */
    const char *listen_host;    /* NULL or "" = all interfaces */
    int listen_port;            /* 0 = any free port (see peer_listen_port) */
    double ping_interval;       /* seconds between pings (default 1) */
    double down_after;          /* silence that makes a peer down (default 5, >= 2 pings) */
    double backoff_min, backoff_max; /* reconnect delays (default 0.1 and 5 s) */
    double handshake_timeout;   /* connect + TLS + authentication (default 5 s) */
    size_t max_frame;           /* largest frame accepted and sent (default 64 MiB) */
    size_t max_out;             /* unsent bytes per connection before sends are refused
                                   (default 2 * max_frame; one frame is always accepted) */
    SSL_CTX *tls_server;        /* both set: TLS on every connection; both NULL: plain TCP. */
    SSL_CTX *tls_client;        /* The mesh takes its own reference on each. */
    struct peer_callbacks cb;
    void *ud;                   /* passed to every callback */
};
void peer_config_defaults(struct peer_config *c); /* zeroes c, then sets the defaults above */

/* Starts listening. NULL with err filled on failure (bad config, port in use). */
peer_mesh_t *peer_mesh_new(struct ev_loop *loop, const struct peer_config *cfg, char *err, size_t errlen);
/* Closes everything; pending calls are dropped without their callbacks. */
void peer_mesh_free(peer_mesh_t *m);
int peer_listen_port(const peer_mesh_t *m);

/* Adds a known node (or sets the address of one that connected by itself). Dialing starts on
 * the next loop iteration if id > our id. host is a name or an address literal. */
int peer_add_node(peer_mesh_t *m, uint32_t id, const char *host, int port);
/* Forgets a node: closes its connection (reporting it down) and stops dialing it. */
int peer_remove_node(peer_mesh_t *m, uint32_t id);
/* always = true: dial the node (added with its address) even though its id is smaller than ours.
 * A node joining a cluster whose members do not know its address yet needs this; if both ends
 * dial, the duplicate rule keeps one connection. */
int peer_set_dial_always(peer_mesh_t *m, uint32_t id, bool always);
bool peer_is_up(const peer_mesh_t *m, uint32_t id);
const char *peer_node_name(const peer_mesh_t *m, uint32_t id); /* from its Hello; NULL if unknown */

/* Queues Raft messages for node, in as many frames as the frame size requires. PEER_OK, or the
 * reason they were dropped (all of them, or for PEER_EBUSY possibly only the later ones). */
int peer_send_raft(peer_mesh_t *m, uint32_t node, const struct rw_out *msgs, size_t n);

/* status: the callee's status (>= 0 by convention, 0 = ok) or a negative peer_status. error and
 * payload are valid only during the callback. */
typedef void (*peer_reply_cb)(void *arg, int status, const char *error, const void *payload, size_t len);
/* Sends a call; timeout <= 0 means 30 s. PEER_OK and *call_id (may be NULL) set, then cb runs
 * exactly once later; or an error and cb never runs. */
int peer_call(peer_mesh_t *m, uint32_t node, const char *method, const void *payload, size_t len,
              double timeout, peer_reply_cb cb, void *arg, uint64_t *call_id);
/* true: the call was pending and its callback will not run. */
bool peer_call_cancel(peer_mesh_t *m, uint64_t call_id);
/* Answers an incoming call; status must be >= 0. PEER_EDOWN if the caller's connection is gone
 * (the reply is dropped: the caller was already failed). A reply too large to send is replaced
 * by a PEER_ETOOBIG status so the caller is not left waiting. */
int peer_reply(peer_mesh_t *m, const struct peer_reply_to *to, int32_t status, const char *error,
               const void *payload, size_t len);

struct peer_stats {
    unsigned connections;    /* open TCP connections, authenticated or not */
    unsigned nodes_up;
    unsigned clients;        /* authenticated command-line client connections */
    uint64_t auth_failures;  /* cookie mismatches seen by this node */
    uint64_t refused;        /* connections closed for a protocol violation (bad or large frame...) */
    uint64_t raft_dropped;   /* Raft messages not sent (peer down, buffer full, too large) */
    uint64_t frames_in, frames_out;
};
void peer_get_stats(const peer_mesh_t *m, struct peer_stats *s);

/* The handshake proof: HMAC-SHA256 keyed by the cookie over a role label, both nonces and both
 * node ids. Exposed for tests and tools that speak the protocol. */
void peer_auth_mac(const char *cookie, bool acceptor, const uint8_t dialer_nonce[RW_NONCE_LEN],
                   const uint8_t acceptor_nonce[RW_NONCE_LEN], uint32_t dialer_id, uint32_t acceptor_id,
                   uint8_t out[RW_MAC_LEN]);

#endif
