/* props.h - reading the message properties the core needs (headers, delivery mode, priority,
 * expiration) straight from a message's raw property bytes (content-header flags + property
 * list in AMQP 0-9-1 encoding, the core's message format as in RabbitMQ 3.x).
 * Adapters decode/encode the full property set with their own codecs. */
#ifndef WARREN_PROPS_H
#define WARREN_PROPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "broker/table.h"

typedef struct {
    bool has_headers, has_delivery_mode, has_priority, has_expiration;
    amqp_bytes_t headers; /* table content */
    uint8_t delivery_mode, priority;
    amqp_bytes_t expiration;
} props_core_t;

/* Returns 0, or -1 when the property bytes are malformed. */
int props_core_read(const uint8_t *raw, size_t len, props_core_t *out);

/* Rebuilds raw property bytes into out with the headers table replaced by new_headers (table
 * content bytes; NULL keeps the old ones; remove_headers drops the field) and, when
 * drop_expiration, without the expiration property. All other fields are copied byte-exact.
 * Returns 0 or -1 when raw is malformed. */
int props_rewrite(const uint8_t *raw, size_t len, const amqp_bytes_t *new_headers, bool remove_headers,
                  bool drop_expiration, amqp_buf_t *out);

#endif
