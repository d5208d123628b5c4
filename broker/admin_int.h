/* admin_int.h - what admin.c shares with the files that serve more of warrenctl's "admin.*"
 * calls (admin_maint.c: status, drain, revive; admin_topo.c: exchanges, bindings, connections,
 * queue deletion and purge, definitions export and import). Private to broker/admin*.c.
 *
 * Every handler gets the request's JSON object and answers exactly once, now or later, through
 * admin_reply_json / admin_reply_error (or admin_submit, which answers when a metadata command
 * has applied on this node). */
#ifndef WARREN_ADMIN_INT_H
#define WARREN_ADMIN_INT_H

#include "broker/admin.h"
#include "broker/cluster.h"
#include "broker/meta.h"
#include "broker/peer.h"

struct admin {
    broker_t *b;
    cl_t *c;
    const struct admin_node_ops *ops; /* the server's side (listeners, connections); may be NULL */
    void *ops_ctx;
    double started;                   /* ev_now at admin_attach: the node's uptime */
    bool maintenance;                 /* drained (warrenctl drain) until revived */
    struct drain *drains;             /* drain calls still waiting for leaderships to move */
};

typedef void (*admin_handler_fn)(struct admin *a, const struct peer_reply_to *to, const struct cJSON *req);

/* Answers: a JSON payload (taken over and freed), or an AMQP-style code with a text. */
void admin_reply_json(struct admin *a, const struct peer_reply_to *to, struct cJSON *payload);
void admin_reply_error(struct admin *a, const struct peer_reply_to *to, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Submits c through the metadata log; answers {"result":"ok"} or the apply's error. */
void admin_submit(struct admin *a, const struct peer_reply_to *to, const struct meta_cmd *c);
/* A string field of the request, dflt when absent or not a string. */
const char *admin_field(const struct cJSON *req, const char *key, const char *dflt);
/* A node id as its name (this node's name for 0 / its own id). Returns a new cJSON string. */
struct cJSON *admin_node_name_json(struct admin *a, uint32_t id);

/* A field table as JSON, the inverse of definitions_json_table (new cJSON object). */
struct cJSON *admin_table_json(const amqp_table_t *t);

/* admin_maint.c */
void maint_status(struct admin *a, const struct peer_reply_to *to, const struct cJSON *req);
void maint_drain(struct admin *a, const struct peer_reply_to *to, const struct cJSON *req);
void maint_revive(struct admin *a, const struct peer_reply_to *to, const struct cJSON *req);
/* The node is stopping: waiting drains are dropped unanswered (the caller sees the node go). */
void maint_shutdown(struct admin *a);

/* admin_topo.c */
void topo_list_exchanges(struct admin *a, const struct peer_reply_to *to, const struct cJSON *req);
void topo_list_bindings(struct admin *a, const struct peer_reply_to *to, const struct cJSON *req);
void topo_list_connections(struct admin *a, const struct peer_reply_to *to, const struct cJSON *req);
void topo_close_connection(struct admin *a, const struct peer_reply_to *to, const struct cJSON *req);
void topo_delete_queue(struct admin *a, const struct peer_reply_to *to, const struct cJSON *req);
void topo_purge_queue(struct admin *a, const struct peer_reply_to *to, const struct cJSON *req);
void topo_export_definitions(struct admin *a, const struct peer_reply_to *to, const struct cJSON *req);
void topo_import_definitions(struct admin *a, const struct peer_reply_to *to, const struct cJSON *req);

#endif
