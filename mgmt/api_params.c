/* api_params.c - runtime parameters over HTTP: vhost limits (/api/vhost-limits), parameters
 * (/api/parameters) and global parameters (/api/global-parameters).
 *
 * Reads come from this node's copy of the registry (broker/params.h keeps the parameters every
 * node applied from the metadata log). Writes are META_PARAM_SET / META_PARAM_CLEAR commands
 * through meta_submit, validated here first so a refusal costs no round trip; the request is
 * answered once the change applied on this node, as api_admin.c's writes are.
 *
 * What follows RabbitMQ 3.10.8 (checked against it): the limits' texts ("Validation failed\n\n
 * max-queues should be a number, actually was <<\"x\">>\n", "[{key_missing,value}]",
 * "vhost_not_found"); DELETE of a limit answers 204 even when it was not set and leaves an empty
 * "[]" value, which GET /api/vhost-limits/{vhost} leaves out and GET /api/vhost-limits shows;
 * parameters of a component the broker does not have are refused ("component X not found").
 * Warren acts on the vhost-limits component only, so only it can be set here (an import keeps
 * other components' parameters, which these reads show). The global parameter cluster_name is
 * Warren's configured cluster name: shown, not settable. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker/defexport.h"
#include "broker/meta.h"
#include "broker/params.h"
#include "mgmt/internal.h"

/* ---- submissions ---- */

/* vhost NULL: a global parameter. value NULL: a clear. */
static void submit_param(mgmt_req_t *r, uint8_t op, const char *vhost, const char *component, const char *name,
                         const char *value, int status)
{
    amqp_buf_t args = {0};
    struct meta_cmd c;
    meta_param_cmd(&c, &args, op, vhost, component, name, value);
    mgmt_submit(r, &c, status);
    amqp_buf_free(&args);
}

static void reply_validation(mgmt_req_t *r, const char *why)
{
    char reason[700];
    snprintf(reason, sizeof reason, "Validation failed\n\n%s\n", why);
    mgmt_reply_error(r, 400, "bad_request", reason);
}

/* ---- vhost limits ---- */

static cJSON *limits_json(const vhost_t *vh, bool with_empty)
{
    const rparam_t *p = rp_find(vh, RP_VHOST_LIMITS, RP_LIMITS_NAME);
    if (!p || (!with_empty && strcmp(p->value, "[]") == 0)) return NULL;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "vhost", vh->name);
    cJSON *v = cJSON_Parse(p->value);
    cJSON_AddItemToObject(o, "value", v ? v : cJSON_CreateObject());
    return o;
}

void mgmt_get_vhost_limits(mgmt_req_t *r)
{
    cJSON *arr = cJSON_CreateArray();
    if (r->params[0]) {
        const vhost_t *vh = br_vhost(r->m->b, r->params[0], strlen(r->params[0]));
        cJSON *o = vh ? limits_json(vh, false) : NULL;
        if (o) cJSON_AddItemToArray(arr, o);
    } else {
        size_t pos = 0;
        void *v;
        while (dict_next(&r->m->b->vhosts, &pos, NULL, NULL, &v)) {
            cJSON *o = mgmt_vhost_visible(r, v, false) ? limits_json(v, true) : NULL;
            if (o) cJSON_AddItemToArray(arr, o);
        }
    }
    mgmt_reply_list(r, arr);
}

/* Submits the vhost's limits with r->params[1] set to value (or removed). */
static void submit_limit(mgmt_req_t *r, const vhost_t *vh, long long value, bool remove)
{
    const rparam_t *cur = rp_find(vh, RP_VHOST_LIMITS, RP_LIMITS_NAME);
    char *text = rp_limits_with(cur ? cur->value : NULL, r->params[1], value, remove);
    char err[512];
    if (rp_validate(RP_VHOST_LIMITS, RP_LIMITS_NAME, text, err, sizeof err) != 0)
        reply_validation(r, err);
    else
        submit_param(r, META_PARAM_SET, vh->name, RP_VHOST_LIMITS, RP_LIMITS_NAME, text, 204);
    free(text);
}

void mgmt_put_vhost_limit(mgmt_req_t *r)
{
    const vhost_t *vh = br_vhost(r->m->b, r->params[0], strlen(r->params[0]));
    if (!vh) return mgmt_reply_error(r, 404, "not_found", "vhost_not_found");
    cJSON *body = mgmt_body_object(r);
    if (!body) return;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(body, "value");
    if (!v) {
        mgmt_reply_error(r, 400, "bad_request", "[{key_missing,value}]");
    } else if (!cJSON_IsNumber(v) || v->valuedouble != (double)(long long)v->valuedouble) {
        char term[256], why[600];
        rp_erl_term(v, term, sizeof term);
        if (strcmp(r->params[1], "max-connections") == 0 || strcmp(r->params[1], "max-queues") == 0)
            snprintf(why, sizeof why, "%s should be a number, actually was %s", r->params[1], term);
        else
            snprintf(why, sizeof why, "Unrecognised terms [{<<\"%s\">>,%s}] in limits", r->params[1], term);
        reply_validation(r, why);
    } else {
        submit_limit(r, vh, (long long)v->valuedouble, false);
    }
    cJSON_Delete(body);
}

void mgmt_delete_vhost_limit(mgmt_req_t *r)
{
    const vhost_t *vh = br_vhost(r->m->b, r->params[0], strlen(r->params[0]));
    if (!vh) return mgmt_reply_error(r, 404, "not_found", "vhost_not_found");
    submit_limit(r, vh, 0, true);
}

/* ---- parameters: /api/parameters[/{component}[/{vhost}[/{name}]]] ---- */

static void add_params(mgmt_req_t *r, cJSON *arr, const vhost_t *vh)
{
    const char *comp = r->params[0];
    for (size_t i = 0; i < vh->params.n; i++) {
        const rparam_t *p = vh->params.items[i];
        if (!comp || strcmp(p->component, comp) == 0) cJSON_AddItemToArray(arr, defx_param_json(vh->name, p));
    }
}

void mgmt_get_parameters(mgmt_req_t *r)
{
    cJSON *arr = cJSON_CreateArray();
    if (r->params[0] && r->params[1]) {
        const vhost_t *vh = br_vhost(r->m->b, r->params[1], strlen(r->params[1]));
        if (!vh) {
            cJSON_Delete(arr);
            return mgmt_reply_not_found(r);
        }
        add_params(r, arr, vh);
    } else {
        size_t pos = 0;
        void *v;
        while (dict_next(&r->m->b->vhosts, &pos, NULL, NULL, &v))
            if (mgmt_vhost_visible(r, v, false)) add_params(r, arr, v);
    }
    mgmt_reply_list(r, arr);
}

void mgmt_get_parameter(mgmt_req_t *r)
{
    const vhost_t *vh = br_vhost(r->m->b, r->params[1], strlen(r->params[1]));
    const rparam_t *p = vh ? rp_find(vh, r->params[0], r->params[2]) : NULL;
    if (!p) return mgmt_reply_not_found(r);
    mgmt_reply_json(r, 200, defx_param_json(vh->name, p));
}

void mgmt_put_parameter(mgmt_req_t *r)
{
    const char *comp = r->params[0], *vhost = r->params[1], *name = r->params[2];
    const vhost_t *vh = br_vhost(r->m->b, vhost, strlen(vhost));
    if (!vh) return mgmt_reply_error(r, 404, "not_found", "vhost_not_found");
    char why[600];
    if (strcmp(comp, RP_VHOST_LIMITS) != 0) {
        snprintf(why, sizeof why, "component %s not found", comp);
        return reply_validation(r, why);
    }
    cJSON *body = mgmt_body_object(r);
    if (!body) return;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(body, "value");
    char *text = v ? cJSON_PrintUnformatted(v) : NULL;
    if (!text) {
        mgmt_reply_error(r, 400, "bad_request", "[{key_missing,value}]");
    } else if (rp_validate(comp, name, text, why, sizeof why) != 0) {
        reply_validation(r, why);
    } else {
        submit_param(r, META_PARAM_SET, vhost, comp, name, text, rp_find(vh, comp, name) ? 204 : 201);
    }
    free(text);
    cJSON_Delete(body);
}

void mgmt_delete_parameter(mgmt_req_t *r)
{
    const vhost_t *vh = br_vhost(r->m->b, r->params[1], strlen(r->params[1]));
    if (!vh || !rp_find(vh, r->params[0], r->params[2])) return mgmt_reply_not_found(r);
    submit_param(r, META_PARAM_CLEAR, vh->name, r->params[0], r->params[2], NULL, 204);
}

/* ---- global parameters: /api/global-parameters[/{name}] ---- */

void mgmt_get_global_parameters(mgmt_req_t *r)
{
    cJSON *arr = cJSON_CreateArray();
    defx_global_parameters(arr, r->m->b);
    mgmt_reply_list(r, arr);
}

void mgmt_get_global_parameter(mgmt_req_t *r)
{
    cJSON *all = cJSON_CreateArray();
    defx_global_parameters(all, r->m->b);
    cJSON *found = NULL;
    for (cJSON *e = all->child; e && !found; e = e->next) {
        const cJSON *n = cJSON_GetObjectItemCaseSensitive(e, "name");
        if (cJSON_IsString(n) && strcmp(n->valuestring, r->params[0]) == 0) found = e;
    }
    if (!found) {
        cJSON_Delete(all);
        return mgmt_reply_not_found(r);
    }
    cJSON *o = cJSON_CreateObject(); /* (RabbitMQ 3.10.8 answers one as {value, name}) */
    cJSON_AddItemToObject(o, "value", cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(found, "value"), true));
    cJSON_AddStringToObject(o, "name", r->params[0]);
    cJSON_Delete(all);
    mgmt_reply_json(r, 200, o);
}

void mgmt_put_global_parameter(mgmt_req_t *r)
{
    const char *name = r->params[0];
    if (strcmp(name, "cluster_name") == 0)
        return mgmt_reply_error(r, 400, "bad_request", "cluster_name is set by the node's configuration");
    cJSON *body = mgmt_body_object(r);
    if (!body) return;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(body, "value");
    char *text = v ? cJSON_PrintUnformatted(v) : NULL;
    if (!text) mgmt_reply_error(r, 400, "bad_request", "[{key_missing,value}]");
    else submit_param(r, META_PARAM_SET, NULL, NULL, name, text, rp_global_find(r->m->b, name) ? 204 : 201);
    free(text);
    cJSON_Delete(body);
}

void mgmt_delete_global_parameter(mgmt_req_t *r)
{
    if (!rp_global_find(r->m->b, r->params[0])) return mgmt_reply_not_found(r);
    submit_param(r, META_PARAM_CLEAR, NULL, NULL, r->params[0], NULL, 204);
}
