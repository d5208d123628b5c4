/* metrics.c - the Prometheus endpoints of rabbitmq_prometheus (prefix prom_, entry points
 * mgmt_metrics_*): GET /metrics, /metrics/per-object and /metrics/detailed on the node's own
 * metrics listener (prometheus.tcp.port, default 15692; listener.c opens it and marks its
 * connections, router.c hands their requests here). No authentication, as RabbitMQ's.
 *
 * Output: the text exposition format 0.0.4 ("# TYPE" and "# HELP" before each family), with
 * rabbitmq_prometheus 3.10's metric names, types and help texts for the figures Warren has:
 *   - node: alarms, memory, disk, file descriptors, object counts, build and identity info;
 *   - global counters (rabbitmq_global_messages_*_total{protocol="amqp091"}) from broker_t's
 *     stat_* fields, which only grow (Warren does not split them by queue type);
 *   - queues (depth, consumers, bytes, published) and Raft groups (term, indexes).
 * The three endpoints differ in the queue and Raft families only, as RabbitMQ's do:
 *   /metrics             aggregated: one unlabelled sample per family, the sum over the queues;
 *   /metrics/per-object  one sample per queue, labelled {vhost, queue};
 *   /metrics/detailed    per queue too, named rabbitmq_detailed_*, only the families asked for
 *                        with ?family=... (queue_coarse_metrics, queue_consumer_count,
 *                        queue_metrics, queue_exchange_metrics, ra_metrics), optionally only
 *                        in the vhosts given with ?vhost=...
 *
 * Which queues a node reports (each node is scraped on its own, as RabbitMQ's): classic queues
 * homed on this node and quorum queues it leads; the Raft families cover every quorum queue
 * with a replica here.
 *
 * Data flow: one pass over the registry fills an array of per-queue figures (prom_queue), then
 * every family is printed from it into one growing buffer, answered in one write. Nothing is
 * kept between scrapes; nothing is counted per message beyond broker_t's existing counters. */
#include <dirent.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "broker/qq.h"
#include "broker/remote.h"
#include "mgmt/internal.h"
#include "mgmt/metrics.h"

#define PROM_COMPAT_VERSION "3.10.8" /* the rabbitmq_prometheus release whose names these are */
#define PROM_PRODUCT_VERSION "0.1.0"
#define PROM_CTYPE "text/plain; version=0.0.4"

/* ---- the output buffer ---- */

struct prom_buf {
    char *p;
    size_t len, cap;
};

static void prom_reserve(struct prom_buf *b, size_t more)
{
    if (b->len + more + 1 <= b->cap) return;
    size_t cap = b->cap ? b->cap : 16384;
    while (cap < b->len + more + 1) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) abort();
    b->p = p;
    b->cap = cap;
}

static void prom_printf(struct prom_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void prom_printf(struct prom_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n <= 0) return;
    prom_reserve(b, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

/* A label value with the format's escapes (backslash, double quote, newline). */
static void prom_label_value(struct prom_buf *b, const char *s)
{
    prom_reserve(b, 2 * strlen(s));
    for (; *s; s++) {
        if (*s == '\\' || *s == '"') b->p[b->len++] = '\\';
        if (*s == '\n') {
            b->p[b->len++] = '\\';
            b->p[b->len++] = 'n';
            continue;
        }
        b->p[b->len++] = *s;
    }
    b->p[b->len] = '\0';
}

static void prom_header(struct prom_buf *b, const char *prefix, const char *name, const char *type, const char *help)
{
    prom_printf(b, "# TYPE %s%s %s\n# HELP %s%s %s\n", prefix, name, type, prefix, name, help);
}

/* One unlabelled family with one sample. */
static void prom_single(struct prom_buf *b, const char *name, const char *type, const char *help, uint64_t v)
{
    prom_header(b, "rabbitmq_", name, type, help);
    prom_printf(b, "rabbitmq_%s %llu\n", name, (unsigned long long)v);
}

/* ---- node figures ---- */

static uint64_t prom_disk_free(const char *dir)
{
    struct statvfs st;
    return statvfs(dir, &st) == 0 ? (uint64_t)st.f_bavail * st.f_frsize : 0;
}

static uint64_t prom_open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d) return 0;
    uint64_t n = 0;
    for (struct dirent *e; (e = readdir(d));) n += e->d_name[0] != '.';
    closedir(d);
    return n ? n - 1 : 0; /* minus the one opendir holds */
}

static uint64_t prom_max_fds(void)
{
    struct rlimit rl;
    return getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY ? (uint64_t)rl.rlim_cur : 0;
}

static void prom_alarms(struct prom_buf *b, unsigned alarms)
{
    static const struct { const char *name, *help; unsigned bit; } kinds[] = {
        {"alarms_file_descriptor_limit", "is 1 if file descriptor limit alarm is in effect", 0},
        {"alarms_free_disk_space_watermark", "is 1 if free disk space watermark alarm is in effect", BR_ALARM_DISK},
        {"alarms_memory_used_watermark", "is 1 if VM memory watermark alarm is in effect", BR_ALARM_MEMORY},
    };
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
        prom_single(b, kinds[i].name, "untyped", kinds[i].help, (alarms & kinds[i].bit) != 0);
}

static void prom_resources(struct prom_buf *b, mgmt_t *m)
{
    prom_single(b, "process_open_fds", "gauge", "Open file descriptors", prom_open_fds());
    prom_single(b, "process_resident_memory_bytes", "gauge", "Memory used in bytes", br_memory_used());
    prom_single(b, "disk_space_available_bytes", "gauge", "Disk space available in bytes",
                prom_disk_free(m->cfg->data_dir));
    prom_single(b, "process_max_fds", "gauge", "Open file descriptors limit", prom_max_fds());
    prom_single(b, "resident_memory_limit_bytes", "gauge", "Memory high watermark in bytes", br_memory_limit(m->b));
    prom_single(b, "disk_space_available_limit_bytes", "gauge", "Free disk space low watermark in bytes",
                m->cfg->disk_free_limit_absolute);
    double started = (double)time(NULL) - (ev_now(m->loop) - m->started);
    prom_printf(b, "# TYPE process_start_time_seconds gauge\n"
                   "# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.\n"
                   "process_start_time_seconds %.0f\n", started);
}

/* ---- per-queue figures ---- */

enum {
    PQ_READY, PQ_UNACKED, PQ_MESSAGES, PQ_CONSUMERS, PQ_BYTES, PQ_READY_BYTES, PQ_UNACKED_BYTES, PQ_PUBLISHED,
    PQ_TERM, PQ_SNAPSHOT, PQ_APPLIED, PQ_COMMIT, PQ_WRITTEN, PQ_N
};

/* Families of /metrics/detailed (bit masks). */
enum { FAM_COARSE = 1, FAM_CONSUMERS = 2, FAM_QUEUE = 4, FAM_EXCHANGE = 8, FAM_RA = 16 };

struct prom_queue {
    const queue_t *q;
    bool depth; /* reported in the queue families (homed / led here) */
    bool raft;  /* reported in the Raft families (a replica here) */
    uint64_t v[PQ_N];
};

struct prom_family {
    const char *name, *type, *help;
    int field;
    unsigned families; /* detailed families it belongs to */
};

static const struct prom_family queue_families[] = {
    {"raft_term_total", "counter", "Current Raft term number", PQ_TERM, FAM_RA},
    {"raft_log_snapshot_index", "gauge", "Raft log snapshot index", PQ_SNAPSHOT, FAM_RA},
    {"raft_log_last_applied_index", "gauge", "Raft log last applied index", PQ_APPLIED, FAM_RA},
    {"raft_log_commit_index", "gauge", "Raft log commit index", PQ_COMMIT, FAM_RA},
    {"raft_log_last_written_index", "gauge", "Raft log last written index", PQ_WRITTEN, FAM_RA},
    {"queue_messages_ready", "gauge", "Messages ready to be delivered to consumers", PQ_READY, FAM_COARSE},
    {"queue_messages_unacked", "gauge", "Messages delivered to consumers but not yet acknowledged", PQ_UNACKED,
     FAM_COARSE},
    {"queue_messages", "gauge", "Sum of ready and unacknowledged messages - total queue depth", PQ_MESSAGES,
     FAM_COARSE},
    {"queue_consumers", "gauge", "Consumers on a queue", PQ_CONSUMERS, FAM_CONSUMERS | FAM_QUEUE},
    {"queue_messages_bytes", "gauge", "Size in bytes of ready and unacknowledged messages", PQ_BYTES, FAM_QUEUE},
    {"queue_messages_ready_bytes", "gauge", "Size in bytes of ready messages", PQ_READY_BYTES, FAM_QUEUE},
    {"queue_messages_unacked_bytes", "gauge", "Size in bytes of all unacknowledged messages", PQ_UNACKED_BYTES,
     FAM_QUEUE},
    {"queue_messages_published_total", "counter", "Total number of messages published to queues", PQ_PUBLISHED,
     FAM_EXCHANGE},
};

static uint32_t prom_self(const broker_t *b) { return b->self_node ? b->self_node : 1; }

static void prom_fill_quorum(struct prom_queue *pq, queue_t *q, uint32_t self)
{
    struct qq_info info;
    qq_info(q, &info);
    pq->raft = info.member;
    pq->depth = info.member && info.leader == self;
    pq->v[PQ_READY] = info.ready, pq->v[PQ_UNACKED] = info.unacked, pq->v[PQ_CONSUMERS] = info.consumers;
    pq->v[PQ_READY_BYTES] = info.ready_bytes, pq->v[PQ_UNACKED_BYTES] = info.unacked_bytes;
    pq->v[PQ_TERM] = info.term, pq->v[PQ_SNAPSHOT] = info.snapshot, pq->v[PQ_APPLIED] = info.applied;
    pq->v[PQ_COMMIT] = info.commit, pq->v[PQ_WRITTEN] = info.written;
}

static void prom_fill(struct prom_queue *pq, queue_t *q, uint32_t self)
{
    memset(pq, 0, sizeof *pq);
    pq->q = q;
    if (q->qq) {
        prom_fill_quorum(pq, q, self);
    } else if (!rq_remote(q)) {
        pq->depth = true;
        pq->v[PQ_READY] = q_message_count(q), pq->v[PQ_UNACKED] = q->unacked;
        pq->v[PQ_CONSUMERS] = q_consumer_count(q), pq->v[PQ_READY_BYTES] = q->ready_bytes;
    }
    pq->v[PQ_MESSAGES] = pq->v[PQ_READY] + pq->v[PQ_UNACKED];
    pq->v[PQ_BYTES] = pq->v[PQ_READY_BYTES] + pq->v[PQ_UNACKED_BYTES];
    pq->v[PQ_PUBLISHED] = q->stat_publish;
}

struct prom_queues {
    struct prom_queue *items;
    size_t n, cap;
};

/* Does vh pass the ?vhost= filter (none given: every vhost)? */
static bool prom_vhost_wanted(mgmt_req_t *r, const vhost_t *vh);

static void prom_collect(mgmt_req_t *r, struct prom_queues *out, bool filter)
{
    broker_t *b = r->m->b;
    uint32_t self = prom_self(b);
    size_t pos = 0;
    void *v;
    while (dict_next(&b->vhosts, &pos, NULL, NULL, &v)) {
        vhost_t *vh = v;
        if (filter && !prom_vhost_wanted(r, vh)) continue;
        size_t qp = 0;
        void *qv;
        while (dict_next(&vh->queues, &qp, NULL, NULL, &qv)) {
            if (out->n == out->cap) {
                out->cap = out->cap ? out->cap * 2 : 256;
                out->items = realloc(out->items, out->cap * sizeof *out->items);
                if (!out->items) abort();
            }
            prom_fill(&out->items[out->n++], qv, self);
        }
    }
}

static bool prom_reported(const struct prom_queue *pq, const struct prom_family *f)
{
    return f->families == FAM_RA ? pq->raft : pq->depth;
}

/* One queue family: summed (aggregated) or one sample per queue. */
static void prom_queue_family(struct prom_buf *b, const struct prom_queues *qs, const struct prom_family *f,
                              const char *prefix, bool per_object)
{
    prom_header(b, prefix, f->name, f->type, f->help);
    if (!per_object) {
        uint64_t sum = 0;
        for (size_t i = 0; i < qs->n; i++)
            if (prom_reported(&qs->items[i], f)) sum += qs->items[i].v[f->field];
        prom_printf(b, "%s%s %llu\n", prefix, f->name, (unsigned long long)sum);
        return;
    }
    for (size_t i = 0; i < qs->n; i++) {
        const struct prom_queue *pq = &qs->items[i];
        if (!prom_reported(pq, f)) continue;
        prom_printf(b, "%s%s{vhost=\"", prefix, f->name);
        prom_label_value(b, pq->q->vh->name);
        prom_printf(b, "\",queue=\"");
        prom_label_value(b, pq->q->name);
        prom_printf(b, "\"} %llu\n", (unsigned long long)pq->v[f->field]);
    }
}

/* ---- node-wide families ---- */

static void prom_objects(struct prom_buf *b, mgmt_t *m, const struct prom_queues *qs)
{
    uint64_t queues = 0, consumers = 0;
    for (size_t i = 0; i < qs->n; i++) {
        if (!qs->items[i].depth) continue;
        queues++;
        consumers += qs->items[i].v[PQ_CONSUMERS];
    }
    prom_single(b, "connections", "gauge", "Connections currently open",
                m->count_connections ? m->count_connections(m->count_ctx) : 0);
    prom_single(b, "channels", "gauge", "Channels currently open",
                m->count_channels ? m->count_channels(m->count_ctx) : 0);
    prom_single(b, "consumers", "gauge", "Consumers currently connected", consumers);
    prom_single(b, "queues", "gauge", "Queues available", queues);
    prom_header(b, "rabbitmq_", "global_consumers", "gauge", "Current number of consumers");
    prom_printf(b, "rabbitmq_global_consumers{protocol=\"amqp091\"} %llu\n", (unsigned long long)consumers);
}

static void prom_global(struct prom_buf *b, const char *name, const char *help, uint64_t v)
{
    prom_header(b, "rabbitmq_global_", name, "counter", help);
    prom_printf(b, "rabbitmq_global_%s{protocol=\"amqp091\"} %llu\n", name, (unsigned long long)v);
}

static void prom_globals(struct prom_buf *b, const broker_t *br)
{
    prom_global(b, "messages_acknowledged_total", "Total number of messages acknowledged by consumers", br->stat_ack);
    prom_global(b, "messages_confirmed_total", "Total number of messages confirmed to publishers", br->stat_confirm);
    prom_global(b, "messages_delivered_total", "Total number of messages delivered to consumers", br->stat_deliver);
    prom_global(b, "messages_received_total", "Total number of messages received from publishers", br->stat_publish);
    prom_global(b, "messages_routed_total", "Total number of messages routed to queues or streams",
                br->stat_publish - br->stat_unroutable);
    prom_global(b, "messages_unroutable_dropped_total",
                "Total number of messages published as non-mandatory into an exchange and dropped as unroutable",
                br->stat_unroutable - br->stat_returned);
    prom_global(b, "messages_unroutable_returned_total",
                "Total number of messages published as mandatory into an exchange and returned to the publisher as "
                "unroutable",
                br->stat_returned);
}

static const char *prom_cluster_name(mgmt_t *m, const char *node)
{
    return m->cfg->cluster_name[0] ? m->cfg->cluster_name : node;
}

static void prom_info(struct prom_buf *b, mgmt_t *m)
{
    prom_header(b, "rabbitmq_", "build_info", "untyped", "RabbitMQ & Erlang/OTP version info");
    prom_printf(b, "rabbitmq_build_info{rabbitmq_version=\"%s\",prometheus_plugin_version=\"%s\","
                   "product_name=\"Warren\",product_version=\"%s\"} 1\n",
                PROM_COMPAT_VERSION, PROM_COMPAT_VERSION, PROM_PRODUCT_VERSION);
    char buf[32];
    const char *node = mgmt_node_name(m, 0, buf, sizeof buf);
    const char *cluster = prom_cluster_name(m, node);
    prom_header(b, "rabbitmq_", "identity_info", "untyped", "RabbitMQ node & cluster identity info");
    prom_printf(b, "rabbitmq_identity_info{rabbitmq_node=\"");
    prom_label_value(b, node);
    prom_printf(b, "\",rabbitmq_cluster=\"");
    prom_label_value(b, cluster);
    prom_printf(b, "\",rabbitmq_cluster_permanent_id=\"warren-cluster-id-");
    prom_label_value(b, cluster);
    prom_printf(b, "\"} 1\n");
}

/* ---- endpoints ---- */

static void prom_reply(mgmt_req_t *r, struct prom_buf *b)
{
    mgmt_reply_asset(r, 200, PROM_CTYPE, b->p ? b->p : "", b->len, "");
    free(b->p);
}

/* /metrics and /metrics/per-object. */
static void prom_scrape(mgmt_req_t *r, bool per_object)
{
    mgmt_t *m = r->m;
    struct prom_queues qs = {0};
    prom_collect(r, &qs, false);
    struct prom_buf b = {0};
    prom_alarms(&b, m->b->alarms);
    prom_resources(&b, m);
    for (size_t i = 0; i < sizeof queue_families / sizeof queue_families[0]; i++)
        prom_queue_family(&b, &qs, &queue_families[i], "rabbitmq_", per_object);
    prom_objects(&b, m, &qs);
    prom_info(&b, m);
    prom_globals(&b, m->b);
    free(qs.items);
    prom_reply(r, &b);
}

static unsigned prom_family_bit(const char *name)
{
    static const struct { const char *name; unsigned bit; } names[] = {
        {"queue_coarse_metrics", FAM_COARSE}, {"queue_consumer_count", FAM_CONSUMERS},
        {"queue_metrics", FAM_QUEUE},         {"queue_exchange_metrics", FAM_EXCHANGE},
        {"ra_metrics", FAM_RA},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(names[i].name, name) == 0) return names[i].bit;
    return 0;
}

/* Calls fn on every value of a repeated query parameter (decoded). */
static void prom_each_param(const mgmt_req_t *r, const char *key, void (*fn)(const char *v, void *arg), void *arg)
{
    const char *p = r->query;
    size_t kl = strlen(key);
    while (p && *p) {
        size_t n = strcspn(p, "&");
        if (n > kl && memcmp(p, key, kl) == 0 && p[kl] == '=') {
            mgmt_req_t one = {.query = strndup(p, n)};
            if (!one.query) abort();
            char buf[512];
            const char *v = mgmt_query(&one, key, buf, sizeof buf);
            if (v) fn(v, arg);
            free(one.query);
        }
        p += n + (p[n] == '&');
    }
}

static void prom_add_family(const char *v, void *arg) { *(unsigned *)arg |= prom_family_bit(v); }

struct prom_vhost_match {
    const char *name;
    bool any, hit;
};

static void prom_match_vhost(const char *v, void *arg)
{
    struct prom_vhost_match *mv = arg;
    mv->any = true;
    mv->hit = mv->hit || strcmp(v, mv->name) == 0;
}

static bool prom_vhost_wanted(mgmt_req_t *r, const vhost_t *vh)
{
    struct prom_vhost_match mv = {vh->name, false, false};
    prom_each_param(r, "vhost", prom_match_vhost, &mv);
    return !mv.any || mv.hit;
}

/* /metrics/detailed?family=...&vhost=... */
static void prom_detailed(mgmt_req_t *r)
{
    unsigned families = 0;
    prom_each_param(r, "family", prom_add_family, &families);
    struct prom_queues qs = {0};
    if (families) prom_collect(r, &qs, true);
    struct prom_buf b = {0};
    for (size_t i = 0; i < sizeof queue_families / sizeof queue_families[0]; i++)
        if (queue_families[i].families & families)
            prom_queue_family(&b, &qs, &queue_families[i], "rabbitmq_detailed_", true);
    prom_info(&b, r->m);
    free(qs.items);
    prom_reply(r, &b);
}

void mgmt_metrics_serve(mgmt_req_t *r)
{
    const char *u = r->url ? r->url : "";
    size_t end = strcspn(u, "?#"), n = end;
    while (n > 1 && u[n - 1] == '/') n--; /* a trailing '/' */
    int which = n == 8 && memcmp(u, "/metrics", 8) == 0                ? 0
                : n == 19 && memcmp(u, "/metrics/per-object", 19) == 0 ? 1
                : n == 17 && memcmp(u, "/metrics/detailed", 17) == 0   ? 2
                                                                        : -1;
    if (which < 0) return mgmt_reply_not_found(r);
    if (u[end] == '?' && !r->query && !(r->query = strndup(u + end + 1, strcspn(u + end + 1, "#")))) abort();
    if (r->method != MGMT_GET && r->method != MGMT_HEAD) return mgmt_reply_status(r, 405);
    if (which == 2) return prom_detailed(r);
    prom_scrape(r, which == 1);
}
