/* api_qq.c - quorum queue membership, as RabbitMQ 4.x's management API exposes it:
 *
 *   POST   /api/queues/quorum/{vhost}/{name}/replicas/add     {"node": N}   204
 *   DELETE /api/queues/quorum/{vhost}/{name}/replicas/delete  {"node": N}   202
 *   POST   /api/queues/quorum/replicas/on/{node}/grow
 *          {"strategy": "all"|"even", "vhost_pattern": re, "queue_pattern": re}   204
 *   DELETE /api/queues/quorum/replicas/on/{node}/shrink                          202
 *
 * Data flow: each change is broker/qq.h's qq_member_change (the queue's leader changes the Raft
 * configuration and submits the new member list through the metadata log), the same operation
 * warrenctl add_member / delete_member / grow use. A change refused with "try again" (no leader
 * yet, another change in progress) is retried every 0.2 s for up to 10 s per queue. grow and
 * shrink visit the matching queues one after the other and answer once all are done; a queue
 * that cannot change (already a member, its last member) is skipped, as RabbitMQ skips it.
 *
 * Errors: an unknown queue 404; not a quorum queue, a missing or unknown node, a bad pattern or
 * strategy 400 bad_request; a refused change on a single queue 400 with the reason. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker/cluster.h"
#include "broker/qq.h"
#include "mgmt/internal.h"

#define QQ_RETRY_SECONDS 10.0

/* One request's membership changes: the queues still to visit. */
struct qq_job {
    mgmt_req_t *r;
    uint32_t node;
    bool add;
    bool single;       /* replicas/add|delete: the change's outcome is the answer */
    int status;        /* the answer on success: 204 or 202 */
    ptrvec_t queues;   /* referenced queue_t* */
    size_t next;
    ev_tstamp deadline;
    ev_timer retry;
};

static void job_next(struct qq_job *j);

static void job_free(struct qq_job *j)
{
    for (size_t i = 0; i < j->queues.n; i++) q_unref(j->queues.items[i]);
    ptrvec_free(&j->queues);
    free(j);
}

static void job_done_one(void *arg, int code, const char *text);

/* The same queue again, within the deadline set when it was first tried. */
static void job_retry(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop, (void)revents;
    struct qq_job *j = w->data;
    queue_t *q = j->queues.items[j->next - 1];
    if (q->deleted || !q->qq) return job_next(j);
    qq_member_change(q, j->node, j->add, job_done_one, j);
}

static void job_done_one(void *arg, int code, const char *text)
{
    struct qq_job *j = arg;
    queue_t *q = j->queues.items[j->next - 1];
    struct ev_loop *loop = j->r->m->loop;
    if (code && text && strstr(text, "try again") && ev_now(loop) < j->deadline && !q->deleted) {
        ev_timer_init(&j->retry, job_retry, 0.2, 0);
        j->retry.data = j;
        ev_timer_start(loop, &j->retry);
        return;
    }
    if (code && j->single) {
        if (code == BR_NOT_FOUND) mgmt_reply_not_found(j->r);
        else mgmt_reply_error(j->r, 400, "bad_request", text ? text : "membership change refused");
        return job_free(j);
    }
    job_next(j);
}

static void job_next(struct qq_job *j)
{
    while (j->next < j->queues.n) {
        queue_t *q = j->queues.items[j->next++];
        if (q->deleted || !q->qq) continue;
        j->deadline = ev_now(j->r->m->loop) + QQ_RETRY_SECONDS;
        qq_member_change(q, j->node, j->add, job_done_one, j);
        return;
    }
    mgmt_reply_status(j->r, j->status);
    job_free(j);
}

static struct qq_job *job_new(mgmt_req_t *r, uint32_t node, bool add, bool single, int status)
{
    struct qq_job *j = calloc(1, sizeof *j);
    if (!j) abort();
    j->r = r, j->node = node, j->add = add, j->single = single, j->status = status;
    return j;
}

static void job_add_queue(struct qq_job *j, queue_t *q)
{
    q_ref(q);
    ptrvec_push(&j->queues, q);
}

/* ---- request parts ---- */

/* The node named name, if it is a member of the cluster (this node when unclustered). */
static bool node_id_of(mgmt_t *m, const char *name, uint32_t *id)
{
    char buf[32];
    if (!m->cl || !cl_clustered(m->cl)) {
        *id = m->b->self_node ? m->b->self_node : 1;
        return strcmp(name, mgmt_node_name(m, 0, buf, sizeof buf)) == 0;
    }
    *id = cl_node_id(name);
    const char *known = cl_node_name(m->cl, *id);
    return known && strcmp(known, name) == 0;
}

static const char *body_str(const cJSON *o, const char *key, const char *dflt)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : dflt;
}

/* ---- one queue ---- */

static void change_one(mgmt_req_t *r, bool add)
{
    vhost_t *vh = br_vhost(r->m->b, r->params[0], strlen(r->params[0]));
    queue_t *q = vh ? br_queue(vh, r->params[1], strlen(r->params[1])) : NULL;
    if (!q) return mgmt_reply_not_found(r);
    if (!q->qq) return mgmt_reply_error(r, 400, "bad_request", "not a quorum queue");
    cJSON *body = mgmt_body_object(r);
    if (!body) return;
    char node[CL_NAME_MAX];
    snprintf(node, sizeof node, "%s", body_str(body, "node", ""));
    cJSON_Delete(body);
    uint32_t id;
    if (!node[0]) return mgmt_reply_error(r, 400, "bad_request", "node is required");
    if (!node_id_of(r->m, node, &id)) return mgmt_reply_error(r, 400, "bad_request", "node is not a cluster member");
    struct qq_job *j = job_new(r, id, add, true, add ? 204 : 202);
    job_add_queue(j, q);
    job_next(j);
}

void mgmt_post_qq_replica_add(mgmt_req_t *r) { change_one(r, true); }
void mgmt_delete_qq_replica(mgmt_req_t *r) { change_one(r, false); }

/* ---- every queue on a node ---- */

static bool pattern_ok(mgmt_req_t *r, const char *pattern, auth_regex_t **out)
{
    char err[256];
    *out = auth_regex_compile(pattern, err, sizeof err);
    if (*out) return true;
    char reason[400];
    snprintf(reason, sizeof reason, "invalid regular expression '%s': %s", pattern, err);
    mgmt_reply_error(r, 400, "bad_request", reason);
    return false;
}

static bool has_member(queue_t *q, uint32_t node, unsigned *n_members)
{
    struct qq_info info;
    qq_info(q, &info);
    *n_members = info.n_members;
    for (unsigned i = 0; i < info.n_members; i++)
        if (info.members[i] == node) return true;
    return false;
}

/* grow: queues matching both patterns that lack the node (strategy even: only those with an
 * even number of members); shrink (vre, qre NULL): every queue the node is a member of, unless
 * it is the last member. */
static void collect(struct qq_job *j, broker_t *b, const auth_regex_t *vre, const auth_regex_t *qre, bool even)
{
    size_t vp = 0;
    void *vv;
    while (dict_next(&b->vhosts, &vp, NULL, NULL, &vv)) {
        vhost_t *vh = vv;
        if (vre && !auth_regex_match(vre, vh->name, strlen(vh->name))) continue;
        size_t qp = 0;
        void *qv;
        while (dict_next(&vh->queues, &qp, NULL, NULL, &qv)) {
            queue_t *q = qv;
            if (!q->qq || (qre && !auth_regex_match(qre, q->name, q->name_len))) continue;
            unsigned n;
            bool has = has_member(q, j->node, &n);
            if (j->add ? has || (even && n % 2) : !has || n <= 1) continue;
            job_add_queue(j, q);
        }
    }
}

void mgmt_post_qq_grow(mgmt_req_t *r)
{
    uint32_t id;
    if (!node_id_of(r->m, r->params[0], &id)) return mgmt_reply_error(r, 400, "bad_request", "node is not a cluster member");
    cJSON *body = mgmt_body_object(r);
    if (!body) return;
    const char *strategy = body_str(body, "strategy", "all");
    bool even = strcmp(strategy, "even") == 0;
    auth_regex_t *vre = NULL, *qre = NULL;
    if (!even && strcmp(strategy, "all") != 0) {
        mgmt_reply_error(r, 400, "bad_request", "strategy must be 'all' or 'even'");
    } else if (pattern_ok(r, body_str(body, "vhost_pattern", ".*"), &vre) &&
               pattern_ok(r, body_str(body, "queue_pattern", ".*"), &qre)) {
        struct qq_job *j = job_new(r, id, true, false, 204);
        collect(j, r->m->b, vre, qre, even);
        job_next(j);
    }
    auth_regex_free(vre);
    auth_regex_free(qre);
    cJSON_Delete(body);
}

void mgmt_delete_qq_shrink(mgmt_req_t *r)
{
    uint32_t id;
    if (!node_id_of(r->m, r->params[0], &id)) return mgmt_reply_error(r, 400, "bad_request", "node is not a cluster member");
    struct qq_job *j = job_new(r, id, false, false, 202);
    collect(j, r->m->b, NULL, NULL, false);
    job_next(j);
}
