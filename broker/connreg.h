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

typedef struct connreg_entry connreg_entry_t;

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
    /* the owner's callbacks */
    void (*describe)(void *ctx, connreg_entry_t *e);
    void (*close)(void *ctx, const char *reason);
    void *ctx;
    connreg_entry_t *prev, *next;
};

void connreg_add(connreg_entry_t *e);
void connreg_remove(connreg_entry_t *e);
/* The first registered entry (follow ->next), after refreshing every entry's figures. */
connreg_entry_t *connreg_refresh(void);
size_t connreg_count(void);
/* Closes the connection named name (its "name" field); false when there is none. */
bool connreg_close(const char *name, const char *reason);

#endif
