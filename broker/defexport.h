/* defexport.h - definitions export and import at run time (warrenctl export_definitions /
 * import_definitions; usable by the management API's GET / POST /api/definitions too).
 *
 * Export (defexport.c, prefix defx_): the registry as RabbitMQ's definitions document.
 * Import (definitions.c, the same loader as the boot-time definitions file): every object of the
 * document becomes a metadata command submitted through meta_submit (the metadata log when
 * clustered, applied at once otherwise); quorum queues get their members chosen as a client's
 * declare would. */
#ifndef WARREN_DEFEXPORT_H
#define WARREN_DEFEXPORT_H

#include "broker/broker.h"

struct cJSON;

/* The definitions document (a new cJSON object; the caller deletes it). */
struct cJSON *defx_export(broker_t *b);

/* Pieces of it the management API shows elsewhere too (new cJSON values): "a,b" tags as a list;
 * a vhost's metadata object {description, tags, default_queue_type (when set)}; a runtime
 * parameter {value, vhost, component, name} (a global one: {value, name}). */
struct cJSON *defx_tags_json(const char *tags);
struct cJSON *defx_vhost_metadata(const vhost_t *vh);
struct rparam;
struct cJSON *defx_param_json(const char *vhost, const struct rparam *p);
/* Appends the global parameters {name, value} to arr: cluster_name (from the configuration,
 * when set) and the kept ones. */
void defx_global_parameters(struct cJSON *arr, broker_t *b);

/* Import finished: how many commands applied here and how many failed, with the first
 * failure's description ("queue 'q': PRECONDITION_FAILED - ...") or NULL. */
typedef void (*broker_import_cb)(void *arg, unsigned applied, unsigned failed, const char *first_error);
/* Validates root (permission regexes, policies, hashing algorithms) and, when it is valid,
 * submits its objects; done runs once all have applied here (possibly before this returns).
 * Returns 0, or -1 with err when root is invalid (nothing is submitted then, done is not
 * called). */
int broker_import_definitions(broker_t *b, const struct cJSON *root, broker_import_cb done, void *arg, char *err,
                              size_t errlen);

#endif
