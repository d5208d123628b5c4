/* warren-server - starts one Warren node: loads configuration, opens the store, creates the
 * node's cluster membership (broker/cluster.h: checks the cluster keys and opens the cluster
 * port; a no-op when no cluster_formation nodes are configured), recovers durable state, applies
 * boot definitions, starts the cluster (rejoin or formation, with the metadata state machine of
 * broker/meta.h) and the protocol listeners, all on one libev loop. SIGTERM/SIGINT shut down
 * cleanly: first the quorum queue leaderships this node holds are handed to other members
 * (qq_set_draining; a timer waits up to SHUTDOWN_TRANSFER_WAIT for them, so a rolling restart
 * pauses confirms for a leadership transfer rather than an election timeout), then clients get
 * connection.close 320 CONNECTION_FORCED, the cluster leaves (peers see the connections close),
 * the store is flushed and closed. It also serves warrenctl drain / revive / status through
 * admin_node_ops (broker/ cannot reach the AMQP listeners itself). */
#include <cjson/cJSON.h>
#include <ev.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "amqp091/server.h"
#include "broker/admin.h"
#include "broker/broker.h"
#include "broker/cluster.h"
#include "broker/config.h"
#include "broker/hibernate.h"
#include "broker/log.h"
#include "broker/meta.h"
#include "broker/qq.h"
#include "broker/remote.h"
#include "broker/store.h"
#include "mgmt/mgmt.h"

typedef struct {
    struct ev_loop *loop;
    amqp_server_t *amqp;
    mgmt_t *mgmt; /* the management API (HTTP) */
    ev_signal sigterm, sigint;
    ev_timer shutdown_timer;
    int shutdown_ticks;
    broker_t *b;
    cfg_t *cfg;
    ev_timer handoff_timer; /* SIGTERM: waiting for quorum queue leaderships to move */
    ev_tstamp handoff_deadline;
} node_t;

#define SHUTDOWN_TRANSFER_WAIT 2.5 /* seconds SIGTERM waits for leaderships to move */

static void usage(void)
{
    fprintf(stderr, "usage: warren-server [--config FILE]\n"
                    "  Configuration keys follow RabbitMQ's rabbitmq.conf; WARREN_<KEY> environment\n"
                    "  variables (dots as underscores, upper case) override the file.\n");
}

static void shutdown_tick(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    node_t *n = w->data;
    /* Give clients up to ~2 s to answer connection.close; then stop the loop. */
    if (amqp_server_connection_count(n->amqp) == 0 || ++n->shutdown_ticks > 40) {
        ev_timer_stop(loop, w);
        ev_break(loop, EVBREAK_ALL);
    }
}

/* Closes the clients and the management API, then waits for the connections to go. */
static void close_and_stop(struct ev_loop *loop, node_t *n)
{
    amqp_server_shutdown(n->amqp);
    mgmt_shutdown(n->mgmt);
    ev_timer_init(&n->shutdown_timer, shutdown_tick, 0.05, 0.05);
    n->shutdown_timer.data = n;
    ev_timer_start(loop, &n->shutdown_timer);
}

/* Polls for the leadership hand-off SIGTERM started: done when no quorum queue is led here, or
 * at the deadline (a member that does not answer must not hold the shutdown up). */
static void handoff_tick(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    node_t *n = w->data;
    size_t left = qq_leader_count(n->b);
    if (left > 0 && ev_now(loop) < n->handoff_deadline) return;
    ev_timer_stop(loop, w);
    if (left) log_warn("shutting down with %zu quorum queue leadership(s) not handed over", left);
    else log_info("quorum queue leaderships handed over");
    close_and_stop(loop, n);
}

static void on_signal(struct ev_loop *loop, ev_signal *w, int revents)
{
    (void)revents;
    node_t *n = w->data;
    if (n->shutdown_ticks) return;
    log_info("received signal %d, shutting down", w->signum);
    n->shutdown_ticks = 1;
    /* Clients stay connected while leaderships move: their publishes reach the new leaders
     * through this node, so nothing waits for an election. */
    unsigned moving = qq_set_draining(n->b, true);
    if (moving == 0 || qq_leader_count(n->b) == 0) return close_and_stop(loop, n);
    log_info("handing %u quorum queue leadership(s) to other members before stopping", moving);
    n->handoff_deadline = ev_now(loop) + SHUTDOWN_TRANSFER_WAIT;
    ev_timer_init(&n->handoff_timer, handoff_tick, 0.02, 0.02);
    n->handoff_timer.data = n;
    ev_timer_start(loop, &n->handoff_timer);
}

/* ---- warrenctl's node operations (admin_node_ops) ---- */

static long node_maintenance(void *ctx, bool on, char *err, size_t errlen)
{
    node_t *n = ctx;
    if (n->shutdown_ticks) { /* stopping: the clients are going anyway, nothing to resume */
        if (on) return 0;
        snprintf(err, errlen, "the node is shutting down");
        return -1;
    }
    if (on) return (long)amqp_server_suspend(n->amqp);
    return amqp_server_resume(n->amqp, err, errlen);
}

static void add_listener(cJSON *arr, const char *protocol, const char *host, int port, const char *purpose)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "protocol", protocol);
    cJSON_AddStringToObject(o, "interface", host && host[0] ? host : "[::]");
    cJSON_AddNumberToObject(o, "port", port);
    cJSON_AddStringToObject(o, "purpose", purpose);
    cJSON_AddItemToArray(arr, o);
}

/* The listeners this node serves now (none for AMQP while in maintenance mode). */
static void node_listeners(void *ctx, cJSON *arr)
{
    node_t *n = ctx;
    const cfg_t *cfg = n->cfg;
    if (!admin_in_maintenance() && !n->shutdown_ticks) {
        for (int i = 0; i < cfg->n_tcp; i++)
            add_listener(arr, "amqp", cfg->tcp[i].host, cfg->tcp[i].port ? cfg->tcp[i].port : amqp_server_port(n->amqp, false),
                         "AMQP 0-9-1");
        for (int i = 0; i < cfg->n_ssl; i++)
            add_listener(arr, "amqp/ssl", cfg->ssl[i].host, cfg->ssl[i].port ? cfg->ssl[i].port : amqp_server_port(n->amqp, true),
                         "AMQP 0-9-1 over TLS");
    }
    int mport = n->mgmt ? mgmt_port(n->mgmt) : 0;
    if (mport > 0) add_listener(arr, "http", cfg->mgmt_ip, mport, "HTTP API");
}

static const struct admin_node_ops node_ops = {
    .maintenance = node_maintenance,
    .listeners = node_listeners,
};

/* Recovers the broker's durable state and boot definitions, then starts the cluster: clustered,
 * metadata changes go through it from now on and its group replays onto what was recovered. */
static int boot_state(broker_t *b, cl_t *cluster, const cfg_t *cfg, char *err, size_t errlen)
{
    if (broker_recover(b, err, errlen) != 0) return -1;
    /* Boot definitions and defaults: a single node applies them here, at every start. In a
     * cluster they are replicated metadata like the rest: only the node that founds the cluster
     * turns them into commands and submits them through the metadata log (meta.c's founded hook,
     * broker_boot_submit), so every node holds the same users, password hashes, vhosts and queue
     * uids; other nodes get them from the log or a snapshot, and nothing diverges at a restart. */
    if (!cl_clustered(cluster)) {
        if (cfg->load_definitions[0] && broker_load_definitions(b, cfg->load_definitions, err, errlen) != 0)
            return -1;
        if (broker_boot_defaults(b, err, errlen) != 0) return -1;
    }
    /* What the definitions and defaults created is on disk before any client can see it (a
     * kill -9 right after start must not lose the users a client just logged in as). */
    if (b->store) store_flush_sync(b->store);
    meta_attach(b, cluster);
    admin_attach(b, cluster); /* warrenctl's admin commands (and a single node's control port) */
    rq_attach_cluster(b, cluster); /* classic queues on other nodes: proxies to their home */
    if (cl_start(cluster, &meta_cl_ops, b, err, errlen) != 0) return -1;
    return qq_start(b, cluster, err, errlen); /* quorum queues' Raft groups on this node */
}

/* RabbitMQ's keys: log.console (true: the console, i.e. stderr, which containers join to
 * stdout) at log.level / log.console.level; log.file = PATH (false: none) at log.file.level. */
static int setup_logging(const cfg_t *cfg, char *err, size_t errlen)
{
    log_set_level((enum log_level)cfg->log_level);
    log_set_console(cfg->log_console, (enum log_level)cfg->log_level);
    if (!cfg->log_file[0]) return 0;
    int file = cfg->log_file_level >= 0 ? cfg->log_file_level : cfg->log_level;
    return log_open_file(cfg->log_file, (enum log_level)file, err, errlen);
}

static size_t amqp_connections(void *ctx) { return amqp_server_connection_count(ctx); }

/* The management API on management.tcp.port. A port it cannot bind is logged and the node runs
 * without it (several nodes of a test cluster on one host would otherwise all want 15672). */
static mgmt_t *start_mgmt(struct ev_loop *loop, broker_t *b, cl_t *cluster, const cfg_t *cfg)
{
    mgmt_t *m = mgmt_new(loop, b, cluster, cfg);
    char err[512];
    if (mgmt_listen(m, err, sizeof err) != 0) log_warn("management API disabled: %s", err);
    return m;
}

int main(int argc, char **argv)
{
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    const char *config_path = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--config") == 0 && i + 1 < argc) {
            config_path = argv[++i];
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage();
            return 0;
        } else {
            usage();
            return 2;
        }
    }
    signal(SIGPIPE, SIG_IGN);

    static cfg_t cfg;
    char err[1024];
    cfg_defaults(&cfg);
    if (!config_path && access("warren.conf", R_OK) == 0) config_path = "warren.conf";
    if (config_path && cfg_load_file(&cfg, config_path, err, sizeof err)) {
        fprintf(stderr, "warren: %s\n", err);
        return 1;
    }
    if (cfg_apply_env(&cfg, err, sizeof err)) {
        fprintf(stderr, "warren: %s\n", err);
        return 1;
    }
    if (setup_logging(&cfg, err, sizeof err) != 0) {
        fprintf(stderr, "warren: %s\n", err);
        return 1;
    }
    log_info("starting Warren node %s (config: %s)", cfg.node_name, config_path ? config_path : "defaults");

    mkdir(cfg.data_dir, 0750);
    struct ev_loop *loop = EV_DEFAULT;
    store_t *store = store_open(cfg.data_dir, loop, err, sizeof err);
    if (!store) {
        log_error("%s", err);
        return 1;
    }
    /* Before recovery, so that a bad cluster configuration or a taken cluster port stops the
     * node at once; started after it, so the metadata group replays onto the recovered registry. */
    cl_t *cluster = cl_new(loop, &cfg, store, NULL, err, sizeof err);
    if (!cluster) {
        log_error("%s", err);
        store_close(store);
        return 1;
    }
    broker_t *b = broker_new(loop, &cfg, store);
    if (!cl_clustered(cluster)) br_vhost_add(b, cfg.default_vhost); /* clustered: from the log */
    node_t node = {.loop = loop, .b = b, .cfg = &cfg};
    /* The management listener opens before AMQP's: a client that reached the AMQP port finds
     * the API up too. */
    if (boot_state(b, cluster, &cfg, err, sizeof err) != 0 || !(node.mgmt = start_mgmt(loop, b, cluster, &cfg)) ||
        !(node.amqp = amqp_server_start(loop, b, &cfg, err, sizeof err))) {
        log_error("%s", err);
        mgmt_free(node.mgmt);
        cl_free(cluster);
        broker_free(b);
        store_close(store);
        return 1;
    }
    mgmt_set_counters(node.mgmt, amqp_connections, NULL, node.amqp);
    admin_set_node_ops(&node_ops, &node);
    ev_signal_init(&node.sigterm, on_signal, SIGTERM);
    ev_signal_init(&node.sigint, on_signal, SIGINT);
    node.sigterm.data = node.sigint.data = &node;
    ev_signal_start(loop, &node.sigterm);
    ev_signal_start(loop, &node.sigint);

    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    log_info("server startup complete in %.1f ms", (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6);

    hib_start(b); /* gives back start-up-only memory once idle */
    ev_run(loop, 0);

    hib_stop();
    admin_shutdown(); /* a drain still waiting */
    amqp_server_free(node.amqp);
    qq_free(b);      /* its groups live on the cluster's Raft host */
    cl_free(cluster); /* before the broker: it calls nothing back, and stops applying to it */
    mgmt_free(node.mgmt); /* after the cluster: a change it still reported found its request */
    broker_free(b);
    store_close(store);
    log_info("stopped");
    return 0;
}
