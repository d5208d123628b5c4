/* params.h - runtime parameters (prefix rp_): RabbitMQ's per-vhost "parameters" (component,
 * name, JSON value) and global parameters (name, JSON value).
 *
 * Warren acts on one component, "vhost-limits" (name "limits", value {"max-connections": N,
 * "max-queues": N}): setting it updates the vhost's max_connections / max_queues, which the AMQP
 * adapter and br_queue_declare enforce. Every other component and every global parameter is
 * kept as it was given (so definitions that carry, say, federation upstreams survive an export /
 * import round trip) without effect. Values are kept as JSON text.
 *
 * Changes arrive as metadata commands (META_PARAM_SET / META_PARAM_CLEAR, broker/meta.c), so
 * every node holds the same parameters; each change writes its record ('R' vhost \0 component
 * \0 name, or 'G' name -> the JSON text) in the same store batch. */
#ifndef WARREN_PARAMS_H
#define WARREN_PARAMS_H

#include <stdbool.h>
#include <stddef.h>

#include "broker/broker.h"

typedef struct rparam {
    char *component; /* NULL for a global parameter */
    char *name;
    char *value;     /* JSON text */
} rparam_t;

#define RP_VHOST_LIMITS "vhost-limits"
#define RP_LIMITS_NAME "limits"

/* Checks a parameter as RabbitMQ validates it: 0, or -1 with the reason (RabbitMQ's text, e.g.
 * "max-queues should be a number, actually was <<\"x\">>"). Components other than vhost-limits
 * only need a JSON value. */
int rp_validate(const char *component, const char *name, const char *value, char *err, size_t errlen);

/* Adds or replaces a vhost's parameter (validated by the caller); returns 0 or -1 with err. */
int rp_set(vhost_t *vh, const char *component, const char *name, const char *value, char *err, size_t errlen);
/* Removes one; false when there was none. */
bool rp_clear(vhost_t *vh, const char *component, const char *name);
const rparam_t *rp_find(const vhost_t *vh, const char *component, const char *name);
/* Vhost deletion: every parameter of vh and its record. */
void rp_delete_all(vhost_t *vh);

void rp_global_set(broker_t *b, const char *name, const char *value);
bool rp_global_clear(broker_t *b, const char *name);
const rparam_t *rp_global_find(const broker_t *b, const char *name);

/* Frees a list of parameters (shutdown; no records touched). */
void rp_free_all(ptrvec_t *list);
/* Recovery: the stored 'R' and 'G' records (the vhosts exist by then). */
void rp_recover(broker_t *b);
/* A JSON value the way RabbitMQ prints the Erlang term in its validation messages
 * (<<"text">> for strings), for the texts of the API and of warrenctl alike. */
struct cJSON;
void rp_erl_term(const struct cJSON *j, char *out, size_t cap);

/* A vhost-limits value with one limit changed (value >= 0 or -1) or removed (remove): the new
 * JSON text (malloc'd), the changed key first, as RabbitMQ's update_limit orders it; removing
 * the last key leaves "[]", as RabbitMQ 3.10 shows it. */
char *rp_limits_with(const char *current, const char *key, long long value, bool remove);

#endif
