/* internal.h - what the files of mgmt/ share: the management context, one HTTP request, the
 * reply functions, the router's entry point and the JSON builders (prefix mgmt_).
 *
 * Layers inside mgmt/: listener.c (TCP via amqp091/net.c) -> http.c (bytes -> requests with
 * Debian's http-parser, responses -> bytes; limits, keep-alive, pipelining) -> router.c (path
 * and method -> handler, Basic auth and RabbitMQ's tag rules) -> api_read.c / api_write.c
 * (the endpoints) -> broker/. json.c turns broker objects into RabbitMQ's JSON shapes.
 *
 * A request is answered exactly once, with mgmt_reply_*: at once, or later (a change that
 * waits for the metadata log); until then its connection parses nothing further. */
#ifndef WARREN_MGMT_INTERNAL_H
#define WARREN_MGMT_INTERNAL_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "broker/broker.h"
#include "mgmt/mgmt.h"

#define MGMT_MAX_HEADER_BYTES (16 * 1024) /* request line + headers; more -> 431 */
#define MGMT_MAX_BODY (1024 * 1024)       /* more -> 413 */
#define MGMT_MAX_SEGS 8                   /* path segments kept; deeper paths are not routed */
#define MGMT_MAX_PARAMS 4

typedef struct mgmt_conn mgmt_conn_t;
struct net_listener;

struct mgmt {
    struct ev_loop *loop;
    broker_t *b;
    cl_t *cl;
    const cfg_t *cfg;
    struct net_listener *listener, *tls_listener;
    struct net_listener *prom_listener; /* prometheus.tcp.*: the metrics (metrics.c) */
    int prom_port;                      /* its bound port (0: not listening) */
    int port, tls_port; /* bound ports (0: not listening) */
    struct ssl_ctx_st *tls; /* management.ssl.*: the HTTPS listener's context */
    size_t (*count_connections)(void *ctx);
    size_t (*count_channels)(void *ctx);
    void *count_ctx;
    mgmt_conn_t *conns; /* every open HTTP connection (listener.c's list) */
    ev_tstamp started;  /* for the node's uptime */
    struct mgmt_rates *rates; /* rates.c's samples */
    uint64_t qq_chan;         /* the channel id of the API's quorum queue gets (0 until used) */
    bool shutting_down;
};

enum mgmt_method { MGMT_GET, MGMT_PUT, MGMT_DELETE, MGMT_POST, MGMT_HEAD, MGMT_OTHER };

/* One parsed request. Strings are NUL-terminated and owned by the request. */
typedef struct mgmt_req {
    mgmt_t *m;
    mgmt_conn_t *conn;
    enum mgmt_method method;
    char *url;              /* as received: path and query */
    size_t url_len;
    char *auth;             /* the Authorization header, or NULL */
    size_t auth_len;
    char *if_none_match;    /* the If-None-Match header (ui.c's ETags), or NULL */
    char *x_reason;         /* the X-Reason header (a forced connection close), or NULL */
    char *body;             /* NULL when empty */
    size_t body_len;
    bool peer_loopback;
    bool prometheus;        /* came through the metrics listener (metrics.c answers it) */
    /* routing: the path's percent-decoded segments (without "/api") and the route's captures */
    char *segs[MGMT_MAX_SEGS];
    int nsegs;
    const char *params[MGMT_MAX_PARAMS];
    char *query;            /* after '?', raw; NULL when none */
    user_t *user;           /* set once authenticated */
    bool answered;
} mgmt_req_t;

/* ---- http.c: the transport-independent HTTP connection ---- */

/* The byte stream under a connection (listener.c: a net_conn_t; the fuzzer: a sink). */
typedef struct {
    void (*write)(void *ud, const void *data, size_t len);
    void (*close)(void *ud);              /* close once what was written is sent */
    void (*pause)(void *ud, bool paused); /* stop / resume reading (may be NULL) */
    size_t (*pending)(void *ud);          /* output bytes not sent yet (may be NULL) */
} mgmt_io_t;

mgmt_conn_t *mgmt_conn_new(mgmt_t *m, const mgmt_io_t *io, void *ud, bool peer_loopback);
/* Bytes from the peer: parsed, and every complete request is routed. */
void mgmt_conn_feed(mgmt_conn_t *c, const void *data, size_t len);
/* The transport is gone: frees the connection now, or once its pending request is answered. */
void mgmt_conn_gone(mgmt_conn_t *c);
/* The transport drained its output (resume reading if it was paused for back-pressure). */
void mgmt_conn_drained(mgmt_conn_t *c);
/* For listener.c's list of connections. */
mgmt_conn_t *mgmt_conn_next(mgmt_conn_t *c);
void mgmt_conn_link(mgmt_conn_t *c, mgmt_conn_t *next);
void *mgmt_conn_ud(mgmt_conn_t *c);

/* Replies (exactly one per request). body: taken over (NULL = no body). */
void mgmt_reply_json(mgmt_req_t *r, int status, cJSON *body);
void mgmt_reply_status(mgmt_req_t *r, int status); /* no body (204, 405, ...) */
void mgmt_reply_created(mgmt_req_t *r, const char *location); /* 201 with a location header */
void mgmt_reply_error(mgmt_req_t *r, int status, const char *error, const char *reason);
/* The request body as a JSON object (an empty body is {}); NULL after answering 400 "not_json". */
cJSON *mgmt_body_object(mgmt_req_t *r);
/* Submits a metadata change through the metadata log (broker/meta.h) and answers the request
 * once it has applied on this node: status, or the broker's error (mgmt/submit.c). */
struct meta_cmd;
void mgmt_submit(mgmt_req_t *r, const struct meta_cmd *c, int status);
void mgmt_reply_not_found(mgmt_req_t *r);          /* RabbitMQ's 404 "Object Not Found" */
/* A non-JSON body (ui.c's static files) with its content type; extra: header lines or "". */
void mgmt_reply_asset(mgmt_req_t *r, int status, const char *ctype, const void *body, size_t len,
                      const char *extra);
/* A listing (paginate.c): applies sort, sort_reverse, columns, and page, page_size, name,
 * use_regex as RabbitMQ does, then answers 200 (or 400 for bad parameters). Takes arr. */
void mgmt_reply_list(mgmt_req_t *r, cJSON *arr);
/* paginate.c's pieces for listings answered without one cJSON array (qlist.c): the page of n
 * items that page / page_size select (false after answering RabbitMQ's 400), and "columns". */
struct mgmt_page {
    long page, size, pages, filtered, first, count;
};
bool mgmt_page_slice(mgmt_req_t *r, const char *page_s, const char *size_s, long n, struct mgmt_page *pg);
void mgmt_keep_columns(cJSON *arr, const char *columns);
/* qlist.c: GET /api/queues[/{vhost}] streamed (sorted by vhost/name, filtered and paged before
 * any JSON is built); false when the parameters need mgmt_reply_list's general path. */
bool mgmt_qlist_reply(mgmt_req_t *r, bool scoped);
/* A broker reply code and text as RabbitMQ's management answers it (406 -> 400 bad_request,
 * 403 -> 401 not_authorised, 404 -> 404, 541 -> 503, ...). */
void mgmt_reply_br_error(mgmt_req_t *r, const br_err_t *err);

/* ---- router.c ---- */

/* Routes one complete request (authenticates, authorizes, calls the endpoint). */
void mgmt_route(mgmt_req_t *r);
/* Query parameter value (decoded into buf), or NULL. */
const char *mgmt_query(const mgmt_req_t *r, const char *key, char *buf, size_t buflen);
bool mgmt_user_has_tag(const user_t *u, const char *tag);
bool mgmt_user_is_monitor(const user_t *u); /* monitoring or administrator: sees every vhost */
/* May r's user see vh in listings? Administrators always; others with permissions there;
 * monitoring users too when monitor_sees_all (the vhost list, the overview's totals). */
bool mgmt_vhost_visible(const mgmt_req_t *r, const vhost_t *vh, bool monitor_sees_all);

/* ---- ui.c: the browser UI's static files (mgmt/www/, embedded at build time) ---- */

/* Answers a request outside /api: GET/HEAD of "/" or an asset, without authentication; any
 * other path without a file extension gets index.html (the UI routes with #fragments); the
 * rest 404 (405 for other methods). A path under /api that the router could not split: 404. */
void mgmt_ui_serve(mgmt_req_t *r);

/* ---- endpoints (api_read.c, api_write.c) ---- */

void mgmt_get_overview(mgmt_req_t *r);
void mgmt_get_whoami(mgmt_req_t *r);
void mgmt_get_vhosts(mgmt_req_t *r);
void mgmt_get_vhost(mgmt_req_t *r);
void mgmt_get_users(mgmt_req_t *r);
void mgmt_get_user(mgmt_req_t *r);
void mgmt_get_permissions(mgmt_req_t *r);
void mgmt_get_exchanges(mgmt_req_t *r);
void mgmt_get_exchange(mgmt_req_t *r);
void mgmt_get_queues(mgmt_req_t *r);
void mgmt_get_queue(mgmt_req_t *r);
void mgmt_get_bindings(mgmt_req_t *r);
void mgmt_get_definitions(mgmt_req_t *r);
void mgmt_get_health_alarms(mgmt_req_t *r);
void mgmt_get_aliveness(mgmt_req_t *r);
void mgmt_put_queue(mgmt_req_t *r);
void mgmt_delete_queue(mgmt_req_t *r);
void mgmt_put_exchange(mgmt_req_t *r);
void mgmt_delete_exchange(mgmt_req_t *r);
void mgmt_delete_queue_contents(mgmt_req_t *r);
void mgmt_get_queue_bindings(mgmt_req_t *r);
void mgmt_get_exchange_bindings_source(mgmt_req_t *r);
void mgmt_get_exchange_bindings_destination(mgmt_req_t *r);
/* api_bindings.c */
void mgmt_get_bindings_between(mgmt_req_t *r);
void mgmt_post_binding(mgmt_req_t *r);
void mgmt_get_binding(mgmt_req_t *r);
void mgmt_delete_binding(mgmt_req_t *r);
/* api_message.c */
void mgmt_post_publish(mgmt_req_t *r);
void mgmt_post_get(mgmt_req_t *r);
uint64_t mgmt_qq_channel(mgmt_t *m);
/* api_admin.c */
void mgmt_put_user(mgmt_req_t *r);
void mgmt_delete_user(mgmt_req_t *r);
void mgmt_get_user_permissions(mgmt_req_t *r);
void mgmt_put_vhost(mgmt_req_t *r);
void mgmt_delete_vhost(mgmt_req_t *r);
void mgmt_get_vhost_permissions(mgmt_req_t *r);
void mgmt_get_permission(mgmt_req_t *r);
void mgmt_put_permission(mgmt_req_t *r);
void mgmt_delete_permission(mgmt_req_t *r);
void mgmt_get_policies(mgmt_req_t *r);
void mgmt_get_policy(mgmt_req_t *r);
void mgmt_put_policy(mgmt_req_t *r);
void mgmt_delete_policy(mgmt_req_t *r);
/* api_node.c */
void mgmt_get_nodes(mgmt_req_t *r);
void mgmt_get_node(mgmt_req_t *r);
void mgmt_get_cluster_name(mgmt_req_t *r);
void mgmt_get_extensions(mgmt_req_t *r);
void mgmt_get_health_local_alarms(mgmt_req_t *r);
void mgmt_get_health_vhosts(mgmt_req_t *r);
void mgmt_get_health_port(mgmt_req_t *r);
void mgmt_get_health_protocol(mgmt_req_t *r);
void mgmt_get_health_quorum_critical(mgmt_req_t *r);

/* api_conns.c: connections, channels and consumers of every node (broker/connreg.h) */
void mgmt_get_connections(mgmt_req_t *r);
void mgmt_get_vhost_connections(mgmt_req_t *r);
void mgmt_get_connection(mgmt_req_t *r);
void mgmt_delete_connection(mgmt_req_t *r);
void mgmt_get_connection_channels(mgmt_req_t *r);
void mgmt_get_channels(mgmt_req_t *r);
void mgmt_get_vhost_channels(mgmt_req_t *r);
void mgmt_get_channel(mgmt_req_t *r);
void mgmt_get_consumers(mgmt_req_t *r);
/* This node's shares of cluster-wide figures (registered with connreg_set_share_fn; ctx is the
 * mgmt_t): "overview" (its message_stats with rates, its listeners) and "objstats" ({"vhosts":
 * {vhost: message_stats}, "exchanges": {vhost: {exchange: message_stats}}}, non-zero only). */
cJSON *mgmt_node_share(void *ctx, const char *share);
/* Gathers every member's "objstats" share and calls done with their sum (done owns sums);
 * unclustered, at once with this node's. */
typedef void (*mgmt_objstats_done)(mgmt_req_t *r, cJSON *sums, void *arg);
void mgmt_gather_objstats(mgmt_req_t *r, mgmt_objstats_done done, void *arg);
/* While sums (from mgmt_gather_objstats) is set, mgmt_json_vhost_stats / _exchange_stats show
 * the cluster's message_stats from it instead of this node's; NULL: this node's again. */
void mgmt_objstats_use(const cJSON *sums);
/* Answers the overview o once object_totals.connections / channels count every node's, its
 * message_stats sum every node's and its listeners list every node's. */
void mgmt_reply_overview(mgmt_req_t *r, cJSON *o);
/* Answers /api/nodes (an array) or /api/nodes/{name} (an object) once the other running
 * members have sent their figures (mem_used, disk_free, fd_used, uptime...). */
void mgmt_reply_nodes(mgmt_req_t *r, cJSON *nodes);
/* Answers one queue's object o with consumer_details: its consumers on every node. */
void mgmt_reply_queue(mgmt_req_t *r, cJSON *o);

/* api_defs.c: definitions import, and the export of one vhost */
void mgmt_post_definitions(mgmt_req_t *r);
void mgmt_post_vhost_definitions(mgmt_req_t *r);
void mgmt_get_vhost_definitions(mgmt_req_t *r);
/* api_qq.c: quorum queue membership (RabbitMQ 4.x's replicas/add|delete, grow, shrink) */
void mgmt_post_qq_replica_add(mgmt_req_t *r);
void mgmt_delete_qq_replica(mgmt_req_t *r);
void mgmt_post_qq_grow(mgmt_req_t *r);
void mgmt_delete_qq_shrink(mgmt_req_t *r);

/* api_topic.c: topic permissions */
void mgmt_get_topic_permissions(mgmt_req_t *r);
void mgmt_get_user_topic_permissions(mgmt_req_t *r);
void mgmt_get_vhost_topic_permissions(mgmt_req_t *r);
void mgmt_get_topic_permission(mgmt_req_t *r);
void mgmt_put_topic_permission(mgmt_req_t *r);
void mgmt_delete_topic_permission(mgmt_req_t *r);

/* ---- rates.c: *_details.rate from counters sampled every 5 s ---- */

enum {
    MGMT_RATE_PUBLISH, MGMT_RATE_DELIVER, MGMT_RATE_GET, MGMT_RATE_DELIVER_GET, MGMT_RATE_ACK,
    MGMT_RATE_REDELIVER, MGMT_RATE_CONFIRM, MGMT_RATE_UNROUTABLE, /* counters */
    MGMT_RATE_PUBLISH_IN, MGMT_RATE_PUBLISH_OUT,                  /* exchanges' counters */
    MGMT_RATE_MESSAGES, MGMT_RATE_READY, MGMT_RATE_UNACKED,       /* depths (rates may be < 0) */
    MGMT_RATE_N
};
void mgmt_rates_start(mgmt_t *m);
void mgmt_rates_stop(mgmt_t *m);
double mgmt_rate_node(const mgmt_t *m, int which);
double mgmt_rate_queue(const mgmt_t *m, const queue_t *q, int which);
double mgmt_rate_exchange(const mgmt_t *m, const exchange_t *x, int which);
double mgmt_rate_vhost(const mgmt_t *m, const vhost_t *vh, int which);
/* A vhost's counters: publish and confirm its own, deliver..redeliver summed over its queues. */
void mgmt_vhost_counters(const vhost_t *vh, uint64_t out[MGMT_RATE_N]);
/* message_stats of an exchange (publish_in/out) and a vhost, added to o when there was traffic,
 * as RabbitMQ adds them. */
void mgmt_json_exchange_stats(mgmt_t *m, cJSON *o, const exchange_t *x);
void mgmt_json_vhost_stats(mgmt_t *m, cJSON *o, const vhost_t *vh);
/* This node's own figures only (its share, whatever mgmt_objstats_use says). */
void mgmt_json_exchange_stats_local(mgmt_t *m, cJSON *o, const exchange_t *x);
void mgmt_json_vhost_stats_local(mgmt_t *m, cJSON *o, const vhost_t *vh);
/* Adds name: n and name_details: {rate} to o. */
void mgmt_json_count(cJSON *o, const char *name, uint64_t n, double rate);

/* ---- json.c ---- */

cJSON *mgmt_json_table(const amqp_table_t *t);
cJSON *mgmt_json_table_raw(amqp_bytes_t raw); /* field-table content -> object ({} if bad) */
cJSON *mgmt_json_tags(const char *tags);
cJSON *mgmt_json_node_name(mgmt_t *m, uint32_t id); /* 0 = this node */
const char *mgmt_node_name(mgmt_t *m, uint32_t id, char *buf, size_t len);
cJSON *mgmt_json_queue(mgmt_t *m, queue_t *q);
cJSON *mgmt_json_exchange(const exchange_t *x);
cJSON *mgmt_json_user(const user_t *u);
/* RabbitMQ's name for an exchange in paths: "" is "amq.default". */
const char *mgmt_exchange_type_name(const exchange_t *x);
/* RabbitMQ's properties_key of a binding: the routing key URL-encoded ("~" when empty), with
 * arguments followed by "~" and a digest of them. out holds at least 1600 bytes. */
void mgmt_properties_key(const char *key, size_t klen, amqp_bytes_t args, char *out, size_t cap);
/* URL-encodes s (unreserved characters kept, space as '+'). */
void mgmt_url_encode(const char *s, size_t len, char *out, size_t cap);
/* Appends every binding of vh (the default exchange's implicit ones first) to arr. */
void mgmt_json_bindings(cJSON *arr, vhost_t *vh);

#endif
