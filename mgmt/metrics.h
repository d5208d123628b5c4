/* metrics.h - the Prometheus metrics listener's seams inside mgmt/ (metrics.c, prefix
 * mgmt_metrics_): listener.c opens prometheus.tcp.ip:prometheus.tcp.port and marks the HTTP
 * connections it accepts (http.c keeps the mark on each request); router.c sends the marked
 * requests to mgmt_metrics_serve instead of the API. */
#ifndef WARREN_MGMT_METRICS_H
#define WARREN_MGMT_METRICS_H

#include "mgmt/internal.h"

/* Answers GET /metrics, /metrics/per-object, /metrics/detailed (404 / 405 otherwise). */
void mgmt_metrics_serve(mgmt_req_t *r);
/* http.c: requests on c come through the metrics listener (r->prometheus). */
void mgmt_conn_set_prometheus(mgmt_conn_t *c);

#endif
