/* mgmt.h - the management plugin: RabbitMQ's HTTP API on the node's event loop (prefix mgmt_).
 *
 * mgmt/ is an adapter over broker/, like amqp091/: it reads the registry (vhosts, users,
 * exchanges, queues, bindings, counters) and changes it through the same br_* operations and,
 * in a cluster, the same metadata log (broker/meta.h) as AMQP declares. broker/ never includes
 * mgmt/. The HTTP transport reuses amqp091/net.c's TCP connection layer.
 *
 * Everything runs on the loop thread. */
#ifndef WARREN_MGMT_H
#define WARREN_MGMT_H

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>

#include "broker/broker.h"

typedef struct mgmt mgmt_t;
typedef struct cl cl_t;

/* Creates the management context for b (cl: the node's cluster membership, for node names;
 * may be NULL) without listening. */
mgmt_t *mgmt_new(struct ev_loop *loop, broker_t *b, cl_t *cl, const cfg_t *cfg);
/* Listens on management.tcp.ip:management.tcp.port. Returns 0, or -1 with err. */
int mgmt_listen(mgmt_t *m, char *err, size_t errlen);
/* The bound port (0 when not listening). */
int mgmt_port(const mgmt_t *m);
/* Where object_totals.connections / channels come from (the AMQP server); NULL = 0. */
void mgmt_set_counters(mgmt_t *m, size_t (*connections)(void *ctx), size_t (*channels)(void *ctx), void *ctx);
/* Shutdown: stops listening and closes every HTTP connection. */
void mgmt_shutdown(mgmt_t *m);
void mgmt_free(mgmt_t *m);

#endif
