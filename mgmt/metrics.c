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
 *   - churn (connections / channels opened and closed) from broker_t's stat_conn_* and
 *     stat_chan_*, kept by amqp091 at accept / close and channel open / close;
 *   - channels (rabbitmq_channel_*: published, confirmed, delivered, acked, fetched, prefetch...)
 *     from the per-channel counters the connection registry shows (broker/connreg.h), so, as in
 *     RabbitMQ, an aggregated sum covers the channels open now; the unroutable ones come from the
 *     node's counters (broker_t has no per-channel split of them);
 *   - queues (depth, consumers, bytes, published) and Raft groups (term, indexes), and from 4.1
 *     on rabbitmq_queue_info{vhost, queue, queue_type, membership} (1 per queue reported here:
 *     RabbitMQ puts the queue type on that info metric, the per-queue families keep {vhost, queue}).
 * The three endpoints differ in the per-object families only, as RabbitMQ's do:
 *   /metrics             aggregated: one unlabelled sample per family, the sum over the objects;
 *   /metrics/per-object  one sample per queue, labelled {vhost, queue}, per channel, labelled
 *                        {channel} (RabbitMQ breaks them down by exchange / queue as well, Warren
 *                        counts per channel only), and rabbitmq_queue_info;
 *   /metrics/detailed    per object too, named rabbitmq_detailed_*, only the families asked for
 *                        with ?family=... (queue_coarse_metrics, queue_consumer_count,
 *                        queue_metrics, queue_exchange_metrics, ra_metrics, connection_churn_metrics,
 *                        channel_metrics, channel_exchange_metrics, channel_queue_metrics),
 *                        the queue ones optionally only in the vhosts given with ?vhost=...
 * Not served, for want of a source: raft_entry_commit_latency_seconds (qq.c keeps no commit
 * times), queues_declared/created/deleted_total, channel_get_empty_total, auth_attempts_*.
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
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "broker/connreg.h"
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

/* Warren's alarm.c has memory and disk alarms; the file descriptor one is the condition RabbitMQ
 * raises it on (every descriptor the limit allows is open), read from /proc at each scrape. */
static void prom_alarms(struct prom_buf *b, unsigned alarms)
{
    enum { FD_EXHAUSTED = 1u << 30 }; /* not a BR_ALARM_* bit: computed here */
    uint64_t max_fds = prom_max_fds();
    if (max_fds && prom_open_fds() >= max_fds) alarms |= FD_EXHAUSTED;
    static const struct { const char *name, *help; unsigned bit; } kinds[] = {
        {"alarms_file_descriptor_limit", "is 1 if file descriptor limit alarm is in effect", FD_EXHAUSTED},
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
enum {
    FAM_COARSE = 1, FAM_CONSUMERS = 2, FAM_QUEUE = 4, FAM_EXCHANGE = 8, FAM_RA = 16,
    FAM_CHURN = 32, FAM_CHAN = 64, FAM_CHAN_EXCHANGE = 128, FAM_CHAN_QUEUE = 256,
    FAM_QUEUES_ANY = FAM_COARSE | FAM_CONSUMERS | FAM_QUEUE, /* those that bring queue_info */
};

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

/* RabbitMQ 4.1's rabbitmq_queue_info: 1 for every queue this node reports, with its type (the
 * queue type module's name, as rabbitmq_global_* labels use) and this node's part in it. A
 * classic queue homed on another node and a quorum queue without a replica here are left out
 * (RabbitMQ's "not_a_member"). */
static void prom_queue_info(struct prom_buf *b, const struct prom_queues *qs, const char *prefix)
{
    prom_header(b, prefix, "queue_info", "gauge", "A metric with a constant '1' value and labels that provide some "
                                                  "queue details");
    for (size_t i = 0; i < qs->n; i++) {
        const struct prom_queue *pq = &qs->items[i];
        const queue_t *q = pq->q;
        bool leader = pq->depth; /* homed here (classic) / led here (quorum) */
        if (!leader && !pq->raft) continue;
        prom_printf(b, "%squeue_info{vhost=\"", prefix);
        prom_label_value(b, q->vh->name);
        prom_printf(b, "\",queue=\"");
        prom_label_value(b, q->name);
        prom_printf(b, "\",queue_type=\"%s\",membership=\"%s\"} 1\n",
                    q->qq ? "rabbit_quorum_queue" : "rabbit_classic_queue", leader ? "leader" : "follower");
    }
}

/* ---- churn: connections and channels opened / closed ---- */

static void prom_churn(struct prom_buf *b, const broker_t *br, const char *prefix)
{
    static const struct { const char *name, *help; size_t off; } fams[] = {
        {"connections_opened_total", "Total number of connections opened", offsetof(broker_t, stat_conn_opened)},
        {"connections_closed_total", "Total number of connections closed or terminated",
         offsetof(broker_t, stat_conn_closed)},
        {"channels_opened_total", "Total number of channels opened", offsetof(broker_t, stat_chan_opened)},
        {"channels_closed_total", "Total number of channels closed", offsetof(broker_t, stat_chan_closed)},
    };
    for (size_t i = 0; i < sizeof fams / sizeof fams[0]; i++) {
        uint64_t v = *(const uint64_t *)((const char *)br + fams[i].off);
        prom_header(b, prefix, fams[i].name, "counter", fams[i].help);
        prom_printf(b, "%s%s %llu\n", prefix, fams[i].name, (unsigned long long)v);
    }
}

/* ---- channels (the connection registry's per-channel figures) ---- */

enum {
    PC_PUBLISH, PC_CONFIRM, PC_GET, PC_GET_NO_ACK, PC_DELIVER, PC_DELIVER_NO_ACK, PC_REDELIVER, PC_ACK,
    PC_CONSUMERS, PC_UNACKED, PC_UNCONFIRMED, PC_UNCOMMITTED, PC_PREFETCH, PC_GLOBAL_PREFETCH, PC_N
};

struct prom_chan {
    char name[200]; /* RabbitMQ's channel name: "<connection name> (<number>)" */
    uint64_t v[PC_N];
};

struct prom_chans {
    struct prom_chan *items;
    size_t n, cap;
    const char *conn; /* the connection being walked */
};

static const struct prom_family chan_families[] = {
    {"channel_consumers", "gauge", "Consumers on a channel", PC_CONSUMERS, FAM_CHAN},
    {"channel_messages_unacked", "gauge", "Delivered but not yet acknowledged messages", PC_UNACKED, FAM_CHAN},
    {"channel_messages_unconfirmed", "gauge", "Published but not yet confirmed messages", PC_UNCONFIRMED, FAM_CHAN},
    {"channel_messages_uncommitted", "gauge", "Messages received in a transaction but not yet committed",
     PC_UNCOMMITTED, FAM_CHAN},
    {"consumer_prefetch", "gauge", "Limit of unacknowledged messages for each consumer", PC_PREFETCH, FAM_CHAN},
    {"channel_prefetch", "gauge", "Total limit of unacknowledged messages for all consumers on a channel",
     PC_GLOBAL_PREFETCH, FAM_CHAN},
    {"channel_messages_published_total", "counter", "Total number of messages published into an exchange on a channel",
     PC_PUBLISH, FAM_CHAN_EXCHANGE},
    {"channel_messages_confirmed_total", "counter",
     "Total number of messages published into an exchange and confirmed on the channel", PC_CONFIRM,
     FAM_CHAN_EXCHANGE},
    {"channel_get_ack_total", "counter", "Total number of messages fetched with basic.get in manual acknowledgement mode",
     PC_GET, FAM_CHAN_QUEUE},
    {"channel_get_total", "counter", "Total number of messages fetched with basic.get in automatic acknowledgement mode",
     PC_GET_NO_ACK, FAM_CHAN_QUEUE},
    {"channel_messages_delivered_ack_total", "counter",
     "Total number of messages delivered to consumers in manual acknowledgement mode", PC_DELIVER, FAM_CHAN_QUEUE},
    {"channel_messages_delivered_total", "counter",
     "Total number of messages delivered to consumers in automatic acknowledgement mode", PC_DELIVER_NO_ACK,
     FAM_CHAN_QUEUE},
    {"channel_messages_redelivered_total", "counter", "Total number of messages redelivered to consumers",
     PC_REDELIVER, FAM_CHAN_QUEUE},
    {"channel_messages_acked_total", "counter", "Total number of messages acknowledged by consumers", PC_ACK,
     FAM_CHAN_QUEUE},
};

static void prom_add_chan(void *arg, const struct connreg_chan_info *ci)
{
    struct prom_chans *cs = arg;
    if (cs->n == cs->cap) {
        cs->cap = cs->cap ? cs->cap * 2 : 64;
        cs->items = realloc(cs->items, cs->cap * sizeof *cs->items);
        if (!cs->items) abort();
    }
    struct prom_chan *pc = &cs->items[cs->n++];
    snprintf(pc->name, sizeof pc->name, "%s (%u)", cs->conn, (unsigned)ci->number);
    const uint64_t v[PC_N] = {
        [PC_PUBLISH] = ci->publish, [PC_CONFIRM] = ci->confirmed, [PC_GET] = ci->get,
        [PC_GET_NO_ACK] = ci->get_no_ack, [PC_DELIVER] = ci->deliver, [PC_DELIVER_NO_ACK] = ci->deliver_no_ack,
        [PC_REDELIVER] = ci->redeliver, [PC_ACK] = ci->ack, [PC_CONSUMERS] = ci->consumers,
        [PC_UNACKED] = ci->unacked, [PC_UNCONFIRMED] = ci->unconfirmed, [PC_UNCOMMITTED] = ci->uncommitted,
        [PC_PREFETCH] = ci->prefetch, [PC_GLOBAL_PREFETCH] = ci->global_prefetch,
    };
    memcpy(pc->v, v, sizeof v);
}

/* Every open channel of this node's client connections. */
static void prom_collect_chans(struct prom_chans *cs)
{
    for (connreg_entry_t *e = connreg_refresh(); e; e = e->next) {
        if (!e->each_channel) continue;
        cs->conn = e->name;
        e->each_channel(e->ctx, prom_add_chan, cs);
    }
}

static void prom_chan_family(struct prom_buf *b, const struct prom_chans *cs, const struct prom_family *f,
                             const char *prefix, bool per_object)
{
    prom_header(b, prefix, f->name, f->type, f->help);
    if (!per_object) {
        uint64_t sum = 0;
        for (size_t i = 0; i < cs->n; i++) sum += cs->items[i].v[f->field];
        prom_printf(b, "%s%s %llu\n", prefix, f->name, (unsigned long long)sum);
        return;
    }
    for (size_t i = 0; i < cs->n; i++) {
        prom_printf(b, "%s%s{channel=\"", prefix, f->name);
        prom_label_value(b, cs->items[i].name);
        prom_printf(b, "\"} %llu\n", (unsigned long long)cs->items[i].v[f->field]);
    }
}

/* The unroutable pair of channel_exchange_metrics: the node's counters (one sample either way). */
static void prom_chan_unroutable(struct prom_buf *b, const broker_t *br, const char *prefix)
{
    prom_header(b, prefix, "channel_messages_unroutable_returned_total", "counter",
                "Total number of messages published as mandatory into an exchange and returned to the publisher as "
                "unroutable");
    prom_printf(b, "%schannel_messages_unroutable_returned_total %llu\n", prefix,
                (unsigned long long)br->stat_returned);
    prom_header(b, prefix, "channel_messages_unroutable_dropped_total", "counter",
                "Total number of messages published as non-mandatory into an exchange and dropped as unroutable");
    prom_printf(b, "%schannel_messages_unroutable_dropped_total %llu\n", prefix,
                (unsigned long long)(br->stat_unroutable - br->stat_returned));
}

/* The channel families in the detailed groups given (every group: /metrics, /metrics/per-object). */
static void prom_channels(struct prom_buf *b, const broker_t *br, const char *prefix, bool per_object,
                          unsigned families)
{
    struct prom_chans cs = {0};
    prom_collect_chans(&cs);
    for (size_t i = 0; i < sizeof chan_families / sizeof chan_families[0]; i++) {
        if (!(chan_families[i].families & families)) continue;
        prom_chan_family(b, &cs, &chan_families[i], prefix, per_object);
        if (chan_families[i].field == PC_CONFIRM) prom_chan_unroutable(b, br, prefix);
    }
    free(cs.items);
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
                m->count_channels ? m->count_channels(m->count_ctx) : connreg_channel_count());
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

/* endpoint: RabbitMQ 4's rabbitmq_endpoint label ("aggregated", "per-object", "detailed"). */
static void prom_info(struct prom_buf *b, mgmt_t *m, const char *endpoint)
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
    prom_printf(b, "\",rabbitmq_endpoint=\"%s\"} 1\n", endpoint);
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
    prom_churn(&b, m->b, "rabbitmq_");
    prom_channels(&b, m->b, "rabbitmq_", per_object, FAM_CHAN | FAM_CHAN_EXCHANGE | FAM_CHAN_QUEUE);
    prom_objects(&b, m, &qs);
    if (per_object) prom_queue_info(&b, &qs, "rabbitmq_");
    prom_info(&b, m, per_object ? "per-object" : "aggregated");
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
        {"connection_churn_metrics", FAM_CHURN},
        {"channel_metrics", FAM_CHAN},
        {"channel_exchange_metrics", FAM_CHAN_EXCHANGE},
        {"channel_queue_metrics", FAM_CHAN_QUEUE},
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
    if (families & (FAM_QUEUES_ANY | FAM_EXCHANGE | FAM_RA)) prom_collect(r, &qs, true);
    struct prom_buf b = {0};
    if (families & FAM_CHURN) prom_churn(&b, r->m->b, "rabbitmq_detailed_");
    if (families & (FAM_CHAN | FAM_CHAN_EXCHANGE | FAM_CHAN_QUEUE))
        prom_channels(&b, r->m->b, "rabbitmq_detailed_", true, families);
    for (size_t i = 0; i < sizeof queue_families / sizeof queue_families[0]; i++)
        if (queue_families[i].families & families)
            prom_queue_family(&b, &qs, &queue_families[i], "rabbitmq_detailed_", true);
    if (families & FAM_QUEUES_ANY) prom_queue_info(&b, &qs, "rabbitmq_detailed_");
    prom_info(&b, r->m, "detailed");
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
