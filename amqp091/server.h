/* server.h - the AMQP 0-9-1 listener: accepts TCP and TLS connections and runs the protocol
 * over the broker core. */
#ifndef WARREN_AMQP_SERVER_H
#define WARREN_AMQP_SERVER_H

#include <ev.h>

#include "broker/broker.h"

typedef struct amqp_server amqp_server_t;

/* Starts listening on every configured listener. NULL + err when a listener cannot start. */
amqp_server_t *amqp_server_start(struct ev_loop *loop, broker_t *b, cfg_t *cfg, char *err, size_t errlen);
/* Bound port of the first TCP / TLS listener (0 when none). */
int amqp_server_port(const amqp_server_t *s, bool tls);
/* Shutdown: closes every connection with 320 CONNECTION_FORCED and stops listening. */
void amqp_server_shutdown(amqp_server_t *s);
/* Maintenance mode (warrenctl drain): stops listening and closes every connection with 320
 * CONNECTION_FORCED "Node was put into maintenance mode", as RabbitMQ; returns how many were
 * open. resume (revive) listens again; -1 with err when a listener cannot be reopened. */
size_t amqp_server_suspend(amqp_server_t *s);
int amqp_server_resume(amqp_server_t *s, char *err, size_t errlen);
void amqp_server_free(amqp_server_t *s);
size_t amqp_server_connection_count(const amqp_server_t *s);

#endif
