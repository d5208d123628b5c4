/* nodeinfo.h - this node's resource figures for the management API's /api/nodes (see nodeinfo.c). */
#ifndef WARREN_NODEINFO_H
#define WARREN_NODEINFO_H

#include <cjson/cJSON.h>

#include "broker/broker.h"

/* Adds mem_used, mem_limit, mem_alarm, disk_free, disk_free_limit, disk_free_alarm, fd_used,
 * fd_total, uptime (ms), processors, os_pid and rates_mode to o. */
void ni_add_figures(broker_t *b, cJSON *o);

#endif
