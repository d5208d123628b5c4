/* api_defs.c - definitions import (POST /api/definitions, POST /api/definitions/{vhost}) and
 * the single-vhost export (GET /api/definitions/{vhost}).
 *
 * Data flow: the JSON document goes to broker_import_definitions (broker/defexport.h), the
 * loader the boot-time definitions file and warrenctl import_definitions use: a validation
 * pass first (nothing is submitted when the document is invalid), then one metadata command
 * per object through meta_submit, i.e. through the metadata log when clustered; the request is
 * answered once every command has applied on this node.
 *
 * RabbitMQ 3.10's rules: the import merges (what exists and is not in the document stays);
 * objects that exist with other properties (queues, exchanges, bindings) keep their existing
 * definition rather than failing the import; unknown top-level keys are skipped; parameters of
 * every component are kept (vhost-limits is validated and enforced; others have no effect here)
 * and global parameters too, except cluster_name (configuration). 204 on success (an empty body imports nothing); 400 {"error": "bad_request",
 * "reason": ...} for a body that is not a JSON object or a document that does not validate; an
 * unknown vhost is 404 for a POST and 400 for a GET, as RabbitMQ 3.10.8 answers. The per-vhost forms read and write
 * only that vhost's policies, queues, exchanges and bindings, without their "vhost" fields. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker/defexport.h"
#include "mgmt/internal.h"

/* The sections of a per-vhost document, and of the full one that belong to a vhost. */
static const char *const vhost_sections[] = {"policies", "queues", "exchanges", "bindings", "parameters"};
#define N_VHOST_SECTIONS (sizeof vhost_sections / sizeof vhost_sections[0])

/* ---- import ---- */

static void imported(void *arg, unsigned applied, unsigned failed, const char *first_error)
{
    (void)applied;
    mgmt_req_t *r = arg;
    /* An object that exists with other properties keeps its definition (RabbitMQ ignores the
     * conflict; the apply's text is RabbitMQ's "inequivalent arg ..."); other failures (e.g. a
     * permission for a user that does not exist) fail the request. Only the first failure is
     * known here, so a later real failure behind a conflict goes unreported. */
    if (failed && first_error && !strstr(first_error, "inequivalent arg"))
        return mgmt_reply_error(r, 400, "bad_request", first_error);
    mgmt_reply_status(r, 204);
}

static void import_root(mgmt_req_t *r, const cJSON *root)
{
    char err[1024];
    if (broker_import_definitions(r->m->b, root, imported, r, err, sizeof err) != 0)
        mgmt_reply_error(r, 400, "bad_request", err);
}

void mgmt_post_definitions(mgmt_req_t *r)
{
    cJSON *root = mgmt_body_object(r);
    if (!root) return;
    import_root(r, root);
    cJSON_Delete(root);
}

/* A per-vhost document: its objects go to the path's vhost, whatever they say; users, vhosts
 * and permissions are not part of it. */
void mgmt_post_vhost_definitions(mgmt_req_t *r)
{
    if (!br_vhost(r->m->b, r->params[0], strlen(r->params[0])))
        return mgmt_reply_error(r, 404, "not_found", "vhost_not_found"); /* RabbitMQ 3.10.8's answer */
    cJSON *root = mgmt_body_object(r);
    if (!root) return;
    cJSON *doc = cJSON_CreateObject();
    for (size_t i = 0; i < N_VHOST_SECTIONS; i++) {
        cJSON *list = cJSON_DetachItemFromObjectCaseSensitive(root, vhost_sections[i]);
        if (!cJSON_IsArray(list)) {
            cJSON_Delete(list);
            continue;
        }
        for (cJSON *o = list->child; o; o = o->next) {
            if (!cJSON_IsObject(o)) continue;
            cJSON_DeleteItemFromObjectCaseSensitive(o, "vhost");
            cJSON_AddStringToObject(o, "vhost", r->params[0]);
        }
        cJSON_AddItemToObject(doc, vhost_sections[i], list);
    }
    cJSON_Delete(root);
    import_root(r, doc);
    cJSON_Delete(doc);
}

/* ---- per-vhost export ---- */

/* Moves the items of vhost from section into the per-vhost document, without "vhost". */
static void take_vhost_items(cJSON *from, cJSON *to, const char *vhost)
{
    cJSON *e = from ? from->child : NULL;
    while (e) {
        cJSON *next = e->next;
        const cJSON *vn = cJSON_GetObjectItemCaseSensitive(e, "vhost");
        if (cJSON_IsString(vn) && strcmp(vn->valuestring, vhost) == 0) {
            cJSON_DetachItemViaPointer(from, e);
            cJSON_DeleteItemFromObjectCaseSensitive(e, "vhost");
            cJSON_AddItemToArray(to, e);
        }
        e = next;
    }
}

void mgmt_get_vhost_definitions(mgmt_req_t *r)
{
    if (!br_vhost(r->m->b, r->params[0], strlen(r->params[0])))
        return mgmt_reply_error(r, 400, "bad_request", "vhost_not_found"); /* (sic) RabbitMQ 3.10.8 */
    cJSON *all = defx_export(r->m->b);
    cJSON *doc = cJSON_CreateObject();
    const cJSON *version = cJSON_GetObjectItemCaseSensitive(all, "rabbit_version");
    cJSON_AddStringToObject(doc, "rabbit_version", cJSON_IsString(version) ? version->valuestring : "3.10.8");
    for (size_t i = 0; i < N_VHOST_SECTIONS; i++) {
        cJSON *to = cJSON_AddArrayToObject(doc, vhost_sections[i]);
        take_vhost_items(cJSON_GetObjectItemCaseSensitive(all, vhost_sections[i]), to, r->params[0]);
    }
    cJSON_Delete(all);
    mgmt_reply_json(r, 200, doc);
}
