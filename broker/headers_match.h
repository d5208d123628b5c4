/* headers_match.h - headers exchange matching (RabbitMQ rabbit_exchange_type_headers, 3.10+).
 *
 * The binding arguments carry "x-match" = "all" (default) | "any" | "all-with-x" | "any-with-x".
 * With "all"/"any" binding keys starting with "x-" are ignored; the -with-x variants include
 * them. A void-typed binding value matches when the header key is present at all. */
#ifndef WARREN_HEADERS_MATCH_H
#define WARREN_HEADERS_MATCH_H

#include <stdbool.h>
#include <stddef.h>

#include "broker/table.h"

/* True when a message with headers (NULL = no headers property) matches the binding. */
bool headers_match(const amqp_table_t *binding_args, const amqp_table_t *headers);
/* 0 if valid, else -1 and a RabbitMQ-style message in err (e.g. "Invalid x-match field value
 * <<\"foo\">>; expected all, any, all-with-x, or any-with-x"). binding_args may be NULL. */
int headers_validate_binding(const amqp_table_t *binding_args, char *err, size_t errlen);

#endif
