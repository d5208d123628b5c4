/* qgather.h - cluster-wide queue figures for the management API (prefix mgmt_qg_, mgmt_qfig).
 *
 * A request that shows queue figures (the queue listings and objects, the overview's totals,
 * the vhosts' message counts) first gathers what the other nodes know (mgmt_qg_all /
 * mgmt_qg_named: one QS_CALL_LIST call per node that matters, see broker/qstats.h), then builds
 * its answer in the done callback, where mgmt_qfig gives every queue's figures as its home (a
 * classic queue) or the whole cluster (a quorum queue's counters) reports them. See qgather.c. */
#ifndef WARREN_MGMT_QGATHER_H
#define WARREN_MGMT_QGATHER_H

#include <stdbool.h>
#include <stddef.h>

#include "broker/qstats.h"
#include "mgmt/internal.h"

struct mgmt_qfig {
    bool known;     /* depth and consumers are known (f.ready ... f.consumers) */
    bool stats;     /* counters are known (message_stats) */
    bool down;      /* homed on a node that is down or did not answer in time */
    struct qs_fig f;
};

/* q's figures: from this node, from the answers gathered for the request whose done callback is
 * running, or unknown (a classic queue homed elsewhere outside such a callback). */
void mgmt_qfig(mgmt_t *m, queue_t *q, struct mgmt_qfig *out);

typedef void (*mgmt_qg_done)(mgmt_req_t *r, void *arg);
/* Gathers the figures of every queue (of vhost; NULL: every vhost), then calls done(r, arg):
 * at once when there is nothing to ask (unclustered), else when every node asked has answered
 * or failed (a node silent for MGMT_QG_TIMEOUT seconds is left out). */
void mgmt_qg_all(mgmt_req_t *r, const char *vhost, mgmt_qg_done done, void *arg);
/* The same for the n queues listed only (pointers are not kept: done must look queues up again). */
void mgmt_qg_named(mgmt_req_t *r, queue_t *const *queues, size_t n, mgmt_qg_done done, void *arg);
/* Would the figures of q need asking another node? */
bool mgmt_qg_needed(mgmt_t *m, const queue_t *q);

/* Is this node clustered (is there anything to gather)? */
bool mgmt_qg_enabled(mgmt_t *m);

#define MGMT_QG_TIMEOUT 1.5

/* qlist.c: GET /api/queues[/{vhost}]: gathers what the page shown needs, then answers through
 * mgmt_qlist_reply or the general path. api_read.c: the general path (every queue's object
 * through paginate.c), to be called with the figures gathered. */
void mgmt_qlist_get(mgmt_req_t *r, bool scoped);
void mgmt_queues_general(mgmt_req_t *r);

#endif
