/* defexport.c - the registry as RabbitMQ's definitions document (prefix defx_): the one
 * exporter, behind warrenctl export_definitions and the management API's GET /api/definitions
 * (and, filtered to one vhost, GET /api/definitions/{vhost}).
 *
 * The document has RabbitMQ's shape and key order: rabbit_version, rabbitmq_version,
 * product_name, product_version, users (with their password hashes and hashing algorithm, so an
 * import elsewhere keeps the passwords), vhosts (with RabbitMQ 4's metadata: description, tags,
 * default_queue_type), permissions, topic_permissions, parameters (vhost-limits and whatever
 * other components were imported), global_parameters (cluster_name, set by configuration, and
 * any imported ones), policies, queues, exchanges, bindings. What RabbitMQ leaves out is left
 * out here too: exclusive queues, the default and amq.* exchanges, the default exchange's
 * implicit bindings. broker/definitions.c reads the same document back (boot file or
 * broker_import_definitions), so export -> import reproduces the definitions.
 *
 * Read-only: built from this node's applied registry on the loop thread. */
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "broker/admin_int.h"
#include "broker/defexport.h"
#include "broker/params.h"
#include "broker/topicperm.h"

#define DEFX_COMPAT_VERSION "3.10.8" /* the RabbitMQ release whose format this follows */
#define DEFX_PRODUCT_VERSION "0.1.0"

const char *ex_type_name(ex_type_t t); /* exchange.c */

static cJSON *raw_args_json(amqp_bytes_t raw)
{
    amqp_table_t t = {0};
    if (!raw.len || amqp_table_parse(raw, &t) != 0) return cJSON_CreateObject();
    cJSON *o = admin_table_json(&t);
    amqp_table_free(&t);
    return o;
}

cJSON *defx_tags_json(const char *tags)
{
    cJSON *arr = cJSON_CreateArray();
    for (const char *p = tags ? tags : ""; *p;) {
        while (*p == ' ' || *p == ',') p++;
        size_t n = strcspn(p, ","), m = n;
        while (m && p[m - 1] == ' ') m--;
        char *t = strndup(p, m);
        if (t && m) cJSON_AddItemToArray(arr, cJSON_CreateString(t));
        free(t);
        p += n;
    }
    return arr;
}

cJSON *defx_vhost_metadata(const vhost_t *vh)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "description", vh->description ? vh->description : "");
    cJSON_AddItemToObject(o, "tags", defx_tags_json(vh->tags));
    if (vh->default_queue_type) cJSON_AddStringToObject(o, "default_queue_type", vh->default_queue_type);
    return o;
}

static void add_users(cJSON *root, cJSON *users, cJSON *perms, broker_t *b)
{
    (void)root;
    size_t pos = 0;
    void *v;
    while (dict_next(&b->users, &pos, NULL, NULL, &v)) {
        const user_t *u = v;
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "name", u->name);
        cJSON_AddStringToObject(o, "password_hash", u->password_hash ? u->password_hash : "");
        cJSON_AddStringToObject(o, "hashing_algorithm", auth_hash_alg_name(u->hash_alg));
        cJSON_AddItemToObject(o, "tags", defx_tags_json(u->tags));
        cJSON_AddItemToObject(o, "limits", cJSON_CreateObject());
        cJSON_AddItemToArray(users, o);
        size_t pp = 0;
        const char *vh;
        size_t vlen;
        void *pv;
        while (dict_next(&u->perms, &pp, &vh, &vlen, &pv)) {
            const perm_t *p = pv;
            cJSON *po = cJSON_CreateObject();
            cJSON_AddStringToObject(po, "user", u->name);
            char *vname = strndup(vh, vlen);
            cJSON_AddStringToObject(po, "vhost", vname ? vname : "");
            free(vname);
            cJSON_AddStringToObject(po, "configure", auth_regex_pattern(p->configure));
            cJSON_AddStringToObject(po, "write", auth_regex_pattern(p->write));
            cJSON_AddStringToObject(po, "read", auth_regex_pattern(p->read));
            cJSON_AddItemToArray(perms, po);
        }
    }
}

static void add_policies(cJSON *arr, const vhost_t *vh)
{
    for (size_t i = 0; i < vh->policies.n; i++) {
        const policy_t *p = vh->policies.items[i];
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "vhost", vh->name);
        cJSON_AddStringToObject(o, "name", p->name);
        cJSON_AddStringToObject(o, "pattern", p->pattern_text);
        cJSON_AddStringToObject(o, "apply-to", p->apply_to == APPLY_QUEUES      ? "queues"
                                               : p->apply_to == APPLY_EXCHANGES ? "exchanges"
                                                                                : "all");
        cJSON_AddItemToObject(o, "definition", admin_table_json(&p->def));
        cJSON_AddNumberToObject(o, "priority", p->priority);
        cJSON_AddItemToArray(arr, o);
    }
}

static void add_queues(cJSON *arr, const vhost_t *vh)
{
    size_t pos = 0;
    void *v;
    while (dict_next(&vh->queues, &pos, NULL, NULL, &v)) {
        const queue_t *q = v;
        if (q->exclusive) continue; /* they die with their connection */
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "name", q->name);
        cJSON_AddStringToObject(o, "vhost", vh->name);
        cJSON_AddBoolToObject(o, "durable", q->durable);
        cJSON_AddBoolToObject(o, "auto_delete", q->auto_delete);
        cJSON_AddItemToObject(o, "arguments", admin_table_json(&q->args));
        cJSON_AddItemToArray(arr, o);
    }
}

static bool builtin_exchange(const exchange_t *x)
{
    return x->name_len == 0 || (x->name_len >= 4 && memcmp(x->name, "amq.", 4) == 0);
}

static cJSON *binding_json(const vhost_t *vh, const exchange_t *x, const binding_t *bd)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "source", x->name);
    cJSON_AddStringToObject(o, "vhost", vh->name);
    cJSON_AddStringToObject(o, "destination",
                            bd->dest_is_queue ? ((queue_t *)bd->dest)->name : ((exchange_t *)bd->dest)->name);
    cJSON_AddStringToObject(o, "destination_type", bd->dest_is_queue ? "queue" : "exchange");
    char *key = strndup(bd->key, bd->key_len);
    cJSON_AddStringToObject(o, "routing_key", key ? key : "");
    free(key);
    cJSON_AddItemToObject(o, "arguments", raw_args_json(bd->args_raw));
    return o;
}

static void add_exchanges(cJSON *xs, cJSON *bindings, const vhost_t *vh)
{
    size_t pos = 0;
    void *v;
    while (dict_next(&vh->exchanges, &pos, NULL, NULL, &v)) {
        const exchange_t *x = v;
        for (size_t i = 0; i < x->bindings.n; i++) cJSON_AddItemToArray(bindings, binding_json(vh, x, x->bindings.items[i]));
        if (builtin_exchange(x)) continue;
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "name", x->name);
        cJSON_AddStringToObject(o, "vhost", vh->name);
        cJSON_AddStringToObject(o, "type", x->delayed ? "x-delayed-message" : ex_type_name(x->type));
        cJSON_AddBoolToObject(o, "durable", x->durable);
        cJSON_AddBoolToObject(o, "auto_delete", x->auto_delete);
        cJSON_AddBoolToObject(o, "internal", x->internal);
        cJSON_AddItemToObject(o, "arguments", raw_args_json(x->args_raw));
        cJSON_AddItemToArray(xs, o);
    }
}

static void add_topic_permission(void *arg, const user_t *u, const tperm_t *p)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "user", u->name);
    cJSON_AddStringToObject(o, "vhost", p->vhost);
    cJSON_AddStringToObject(o, "exchange", p->exchange);
    cJSON_AddStringToObject(o, "write", p->write_text);
    cJSON_AddStringToObject(o, "read", p->read_text);
    cJSON_AddItemToArray(arg, o);
}

/* A vhost as RabbitMQ 4 exports it: name, then its metadata both flat and as "metadata". */
static cJSON *vhost_json(const vhost_t *vh)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", vh->name);
    cJSON_AddStringToObject(o, "description", vh->description ? vh->description : "");
    cJSON_AddItemToObject(o, "tags", defx_tags_json(vh->tags));
    if (vh->default_queue_type) cJSON_AddStringToObject(o, "default_queue_type", vh->default_queue_type);
    cJSON_AddItemToObject(o, "metadata", defx_vhost_metadata(vh));
    return o;
}

/* A parameter's stored JSON text as a value (null if it does not parse: it was validated). */
static cJSON *param_value(const rparam_t *p)
{
    cJSON *v = cJSON_Parse(p->value);
    return v ? v : cJSON_CreateNull();
}

cJSON *defx_param_json(const char *vhost, const rparam_t *p)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddItemToObject(o, "value", param_value(p));
    if (p->component) {
        cJSON_AddStringToObject(o, "vhost", vhost);
        cJSON_AddStringToObject(o, "component", p->component);
    }
    cJSON_AddStringToObject(o, "name", p->name);
    return o;
}

/* RabbitMQ keeps its cluster name as the global parameter cluster_name; Warren's comes from the
 * configuration (it is part of the cluster's identity on the wire), exported the same way. */
void defx_global_parameters(cJSON *arr, broker_t *b)
{
    if (b->cfg && b->cfg->cluster_name[0]) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "name", "cluster_name");
        cJSON_AddStringToObject(o, "value", b->cfg->cluster_name);
        cJSON_AddItemToArray(arr, o);
    }
    for (size_t i = 0; i < b->global_params.n; i++) {
        const rparam_t *p = b->global_params.items[i];
        if (strcmp(p->name, "cluster_name") == 0) continue;
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "name", p->name);
        cJSON_AddItemToObject(o, "value", param_value(p));
        cJSON_AddItemToArray(arr, o);
    }
}

cJSON *defx_export(broker_t *b)
{
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "rabbit_version", DEFX_COMPAT_VERSION);
    cJSON_AddStringToObject(root, "rabbitmq_version", DEFX_COMPAT_VERSION);
    cJSON_AddStringToObject(root, "product_name", "Warren");
    cJSON_AddStringToObject(root, "product_version", DEFX_PRODUCT_VERSION);
    cJSON *users = cJSON_AddArrayToObject(root, "users");
    cJSON *vhosts = cJSON_AddArrayToObject(root, "vhosts");
    cJSON *perms = cJSON_AddArrayToObject(root, "permissions");
    add_users(root, users, perms, b);
    cJSON *topic = cJSON_AddArrayToObject(root, "topic_permissions");
    size_t upos = 0;
    void *uv;
    while (dict_next(&b->users, &upos, NULL, NULL, &uv)) tperm_each(uv, NULL, add_topic_permission, topic);
    cJSON *params = cJSON_AddArrayToObject(root, "parameters");
    defx_global_parameters(cJSON_AddArrayToObject(root, "global_parameters"), b);
    cJSON *policies = cJSON_AddArrayToObject(root, "policies");
    cJSON *queues = cJSON_AddArrayToObject(root, "queues");
    cJSON *exchanges = cJSON_AddArrayToObject(root, "exchanges");
    cJSON *bindings = cJSON_AddArrayToObject(root, "bindings");
    size_t pos = 0;
    void *v;
    while (dict_next(&b->vhosts, &pos, NULL, NULL, &v)) {
        const vhost_t *vh = v;
        cJSON_AddItemToArray(vhosts, vhost_json(vh));
        for (size_t i = 0; i < vh->params.n; i++) cJSON_AddItemToArray(params, defx_param_json(vh->name, vh->params.items[i]));
        add_policies(policies, vh);
        add_queues(queues, vh);
        add_exchanges(exchanges, bindings, vh);
    }
    return root;
}
