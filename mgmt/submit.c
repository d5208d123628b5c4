/* submit.c - what every write endpoint shares (prefix mgmt_): reading the request body as a
 * JSON object, and submitting a metadata change (users, vhosts, permissions, topic
 * permissions, parameters, policies, exchanges, queues) through the metadata log.
 *
 * Data flow of a change: the endpoint validates the body and builds a meta_cmd ->
 * mgmt_submit -> meta_submit (broker/meta.h: replicated through the metadata Raft group when
 * clustered, applied at once otherwise) -> the callback answers the request with the status
 * the endpoint chose (201 / 204) or with the broker's error, once the change has applied on
 * this node - so a GET right after the answer sees it, as with RabbitMQ.
 *
 * Invariant: the request is answered exactly once, from the callback (meta_submit calls it
 * exactly once, also when the change is refused or the cluster has no leader in time). */
#include <stdlib.h>

#include "broker/meta.h"
#include "mgmt/internal.h"

cJSON *mgmt_body_object(mgmt_req_t *r)
{
    cJSON *o = r->body_len ? cJSON_ParseWithLength(r->body, r->body_len) : cJSON_CreateObject();
    if (cJSON_IsObject(o)) return o;
    cJSON_Delete(o);
    mgmt_reply_error(r, 400, "bad_request", "not_json");
    return NULL;
}

struct pending {
    mgmt_req_t *r;
    int status; /* the reply once the change has applied */
};

static void applied(void *arg, const br_err_t *err)
{
    struct pending *p = arg;
    if (err) mgmt_reply_br_error(p->r, err);
    else mgmt_reply_status(p->r, p->status);
    free(p);
}

void mgmt_submit(mgmt_req_t *r, const struct meta_cmd *c, int status)
{
    struct pending *p = malloc(sizeof *p);
    if (!p) abort();
    p->r = r;
    p->status = status;
    meta_submit(r->m->b, c, applied, p);
}
