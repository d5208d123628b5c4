/* admin_maint.c - warrenctl's node commands: status, drain and revive (prefix maint_).
 *
 * status answers from this node's own figures (uptime since admin_attach, memory, alarms, the
 * listeners the server reports through admin_node_ops, maintenance state, quorum queue
 * leaderships).
 *
 * drain puts the node in maintenance mode, as rabbitmq-upgrade drain does: the server stops
 * accepting AMQP clients and closes the open ones with 320 CONNECTION_FORCED (management stays
 * up, as RabbitMQ's does), then every quorum queue leadership held here is handed to another
 * member (qq_set_draining; leaderships won later while draining are handed on too). The call
 * answers once no leadership that could move is left here - every quorum queue this node leads
 * has no other member up - or when its bounded wait ends (a timer on the loop, never a blocking
 * wait), with how many transfers started and how many leaderships remain.
 *
 * revive leaves maintenance mode: listeners open again and this node may lead again (nothing
 * moves back by itself; RabbitMQ rebalances on request only).
 *
 * Invariant: at most one drain waits at a time per call; each keeps its own timer and answers
 * exactly once. Maintenance is not persisted: a restarted node serves clients again, as a
 * restarted RabbitMQ node does. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "broker/admin_int.h"
#include "broker/log.h"
#include "broker/qq.h"

#define MAINT_VERSION "0.1.0"
#define MAINT_DEFAULT_WAIT 10.0 /* seconds a drain waits for leaderships to move */
#define MAINT_MAX_WAIT 300.0
#define MAINT_POLL 0.05

/* ---- status ------------------------------------------------------------------------------- */

static cJSON *alarms_json(unsigned alarms)
{
    cJSON *arr = cJSON_CreateArray();
    if (alarms & BR_ALARM_MEMORY) cJSON_AddItemToArray(arr, cJSON_CreateString("memory"));
    if (alarms & BR_ALARM_DISK) cJSON_AddItemToArray(arr, cJSON_CreateString("disk"));
    return arr;
}

static cJSON *listeners_json(struct admin *a)
{
    cJSON *arr = cJSON_CreateArray();
    if (a->ops && a->ops->listeners) a->ops->listeners(a->ops_ctx, arr);
    int cport = cl_listen_port(a->c);
    if (cport > 0) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "protocol", "clustering");
        cJSON_AddStringToObject(o, "interface", "[::]");
        cJSON_AddNumberToObject(o, "port", cport);
        cJSON_AddStringToObject(o, "purpose", "inter-node and CLI tool communication");
        cJSON_AddItemToArray(arr, o);
    }
    return arr;
}

void maint_status(struct admin *a, const struct peer_reply_to *to, const cJSON *req)
{
    (void)req;
    broker_t *b = a->b;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "node", cl_self_name(a->c));
    cJSON_AddStringToObject(o, "product_name", "Warren");
    cJSON_AddStringToObject(o, "product_version", MAINT_VERSION);
    cJSON_AddNumberToObject(o, "pid", (double)getpid());
    cJSON_AddNumberToObject(o, "uptime", ev_now(b->loop) - a->started);
    cJSON *mem = cJSON_AddObjectToObject(o, "memory");
    cJSON_AddNumberToObject(mem, "used", (double)br_memory_used());
    cJSON_AddNumberToObject(mem, "limit", (double)br_memory_limit(b));
    cJSON_AddItemToObject(o, "alarms", alarms_json(b->alarms));
    cJSON_AddItemToObject(o, "listeners", listeners_json(a));
    cJSON_AddBoolToObject(o, "is_under_maintenance", a->maintenance);
    cJSON_AddNumberToObject(o, "quorum_queue_leaders", (double)qq_leader_count(b));
    cJSON_AddStringToObject(o, "data_directory", b->cfg->data_dir);
    admin_reply_json(a, to, o);
}

/* ---- drain / revive ----------------------------------------------------------------------- */

/* Is some member of the queue other than this node up (able to take its leadership)? */
static bool other_member_up(struct admin *a, const struct qq_info *info)
{
    broker_t *b = a->b;
    for (unsigned i = 0; i < info->n_members; i++) {
        uint32_t m = info->members[i];
        if (m == b->self_node) continue;
        if (!b->node_is_up || b->node_is_up(b->node_ctx, m)) return true;
    }
    return false;
}

/* Quorum queues led here whose leadership could still move (another member is up). */
static size_t movable_leaders(struct admin *a)
{
    broker_t *b = a->b;
    if (!cl_clustered(a->c)) return 0; /* one-member groups: nowhere to go */
    size_t n = 0, vp = 0;
    void *vv;
    while (dict_next(&b->vhosts, &vp, NULL, NULL, &vv)) {
        size_t qp = 0;
        void *qv;
        while (dict_next(&((vhost_t *)vv)->queues, &qp, NULL, NULL, &qv)) {
            queue_t *q = qv;
            if (!q->qq) continue;
            struct qq_info info;
            qq_info(q, &info);
            if (info.member && info.leader == b->self_node && other_member_up(a, &info)) n++;
        }
    }
    return n;
}

struct drain {
    struct drain *next; /* in a->drains */
    struct admin *a;
    struct peer_reply_to to;
    ev_timer poll;
    ev_tstamp started, deadline;
    long closed;
    unsigned transfers;
};

static void drain_unlink(struct drain *d)
{
    struct drain **p = &d->a->drains;
    while (*p && *p != d) p = &(*p)->next;
    if (*p) *p = d->next;
}

static void drain_answer(struct drain *d)
{
    struct admin *a = d->a;
    drain_unlink(d);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "result", "ok");
    cJSON_AddStringToObject(o, "node", cl_self_name(a->c));
    cJSON_AddBoolToObject(o, "is_under_maintenance", true);
    cJSON_AddNumberToObject(o, "connections_closed", (double)d->closed);
    cJSON_AddNumberToObject(o, "leader_transfers", d->transfers);
    cJSON_AddNumberToObject(o, "leaders_remaining", (double)qq_leader_count(a->b));
    cJSON_AddNumberToObject(o, "leaders_movable", (double)movable_leaders(a));
    cJSON_AddNumberToObject(o, "seconds", ev_now(a->b->loop) - d->started);
    admin_reply_json(a, &d->to, o);
    log_info("maintenance mode: %ld client connection(s) closed, %u quorum queue leadership transfer(s), "
             "%zu leadership(s) left here", d->closed, d->transfers, qq_leader_count(a->b));
    free(d);
}

static void drain_poll(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    struct drain *d = w->data;
    if (movable_leaders(d->a) > 0 && ev_now(loop) < d->deadline) return;
    ev_timer_stop(loop, w);
    drain_answer(d);
}

static double wait_seconds(const cJSON *req)
{
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(req, "timeout");
    if (!cJSON_IsNumber(t) || !(t->valuedouble >= 0)) return MAINT_DEFAULT_WAIT;
    return t->valuedouble > MAINT_MAX_WAIT ? MAINT_MAX_WAIT : t->valuedouble;
}

void maint_drain(struct admin *a, const struct peer_reply_to *to, const cJSON *req)
{
    struct ev_loop *loop = a->b->loop;
    struct drain *d = calloc(1, sizeof *d);
    if (!d) abort();
    d->a = a;
    d->to = *to;
    d->started = ev_now(loop);
    d->deadline = d->started + wait_seconds(req);
    if (!a->maintenance) log_info("entering maintenance mode (warrenctl drain)");
    a->maintenance = true;
    char err[256] = "";
    if (a->ops && a->ops->maintenance) d->closed = a->ops->maintenance(a->ops_ctx, true, err, sizeof err);
    d->transfers = qq_set_draining(a->b, true);
    ev_timer_init(&d->poll, drain_poll, MAINT_POLL, MAINT_POLL);
    d->poll.data = d;
    ev_timer_start(loop, &d->poll);
    d->next = a->drains;
    a->drains = d;
}

void maint_shutdown(struct admin *a)
{
    while (a->drains) {
        struct drain *d = a->drains;
        a->drains = d->next;
        ev_timer_stop(a->b->loop, &d->poll);
        free(d);
    }
}

void maint_revive(struct admin *a, const struct peer_reply_to *to, const cJSON *req)
{
    (void)req;
    char err[256] = "";
    if (a->ops && a->ops->maintenance && a->ops->maintenance(a->ops_ctx, false, err, sizeof err) < 0)
        return admin_reply_error(a, to, BR_INTERNAL_ERROR, "cannot resume client service: %s", err);
    qq_set_draining(a->b, false);
    if (a->maintenance) log_info("leaving maintenance mode (warrenctl revive)");
    a->maintenance = false;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "result", "ok");
    cJSON_AddStringToObject(o, "node", cl_self_name(a->c));
    cJSON_AddBoolToObject(o, "is_under_maintenance", false);
    admin_reply_json(a, to, o);
}
