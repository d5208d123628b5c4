/* admin.h - the node's side of warrenctl's admin commands (users, vhosts, permissions, policies).
 *
 * warrenctl calls "admin.<command>" with a JSON request on the node's cluster port (clustered) or
 * on the loopback control listener of a single node (cl_control_listen). Reads are answered from
 * this node's registry; changes are validated here (RabbitMQ's error texts, no round trip for an
 * obvious mistake), become metadata commands (broker/meta.h) and are answered once they have
 * applied on this node, or with the cluster's 541 "metadata store unavailable: ..." error.
 * Passwords are hashed here (rabbit_password_hashing_sha256, random salt); only the hash travels
 * through the log and reaches the store. */
#ifndef WARREN_ADMIN_H
#define WARREN_ADMIN_H

#include "broker/broker.h"

typedef struct cl cl_t;
struct cJSON;

/* Serves admin.* calls of c for b; unclustered it also opens the control listener (a failure is
 * logged: the node runs without warrenctl access). */
void admin_attach(broker_t *b, cl_t *c);

/* What the node's server (cmd/warren-server.c) does for warrenctl where broker/ cannot reach:
 * the protocol listeners live in amqp091/, which depends on broker/, not the reverse. */
struct admin_node_ops {
    /* Maintenance mode on (drain): stop accepting AMQP clients and close every client connection
     * with 320 CONNECTION_FORCED; returns how many were open. Off (revive): accept again; -1 with
     * err when a listener cannot be reopened. */
    long (*maintenance)(void *ctx, bool on, char *err, size_t errlen);
    /* Appends this node's listeners ({"protocol", "interface", "port"}) to the JSON array. */
    void (*listeners)(void *ctx, struct cJSON *arr);
};
void admin_set_node_ops(const struct admin_node_ops *ops, void *ctx);
/* Whether warrenctl drain put this node in maintenance mode (until revive). */
bool admin_in_maintenance(void);
/* The loop has stopped (the node is shutting down): calls still waiting are dropped. */
void admin_shutdown(void);

/* definitions.c: a JSON object as AMQP field-table content in out (RabbitMQ's conversion). */
amqp_bytes_t definitions_json_table(amqp_buf_t *out, const struct cJSON *obj);

#endif
