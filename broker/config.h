/* config.h - broker configuration: rabbitmq.conf-style "key = value" file plus WARREN_* env.
 *
 * Order of precedence: cfg_defaults() < cfg_load_file() < cfg_apply_env(). Every key is known
 * in advance; an unknown key or an unparsable value is a startup error naming key and source.
 * Environment: WARREN_<KEY>, the key uppercased with '.' -> '_' (WARREN_HEARTBEAT,
 * WARREN_LISTENERS_TCP_DEFAULT, WARREN_LOOPBACK_USERS_GUEST); for the open-ended families
 * (listeners.tcp.<name>, listeners.ssl.<name>, loopback_users.<user>, default_user_tags.<tag>)
 * the suffix is lowercased to form the name. Unrelated WARREN_* variables are ignored. */
#ifndef WARREN_CONFIG_H
#define WARREN_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CFG_MAX_LISTENERS 4
#define CFG_MAX_LOOPBACK_USERS 8
#define CFG_MAX_USER_TAGS 8
#define CFG_MAX_CLUSTER_NODES 9

/* host "" = all interfaces; name is the <name> in listeners.tcp.<name> (re-setting a name
 * replaces that listener). */
typedef struct { char host[64]; int port; char name[64]; } cfg_listener_t;

/* One cluster_formation.classic_config.nodes.<n> entry: name "warren1@host", port 0 = the
 * default cluster port. */
typedef struct { int n; char name[256]; char host[64]; int port; } cfg_cluster_node_t;

typedef struct {
    cfg_listener_t tcp[CFG_MAX_LISTENERS]; int n_tcp;   /* listeners.tcp.<name>; default 5672; listeners.tcp = none disables */
    cfg_listener_t ssl[CFG_MAX_LISTENERS]; int n_ssl;   /* listeners.ssl.<name>; default 5671 */
    char ssl_certfile[512], ssl_keyfile[512], ssl_cacertfile[512];  /* ssl_options.certfile/keyfile/cacertfile */
    bool ssl_verify_peer;            /* ssl_options.verify = verify_peer | verify_none (default verify_none) */
    bool ssl_fail_if_no_peer_cert;   /* ssl_options.fail_if_no_peer_cert = true|false (default false) */
    char default_user[256], default_pass[256], default_vhost[256];  /* guest, guest, "/" */
    char default_user_tags[CFG_MAX_USER_TAGS][64]; int n_default_user_tags;  /* default_user_tags.<tag> = true; default: administrator */
    char default_perm_configure[256], default_perm_read[256], default_perm_write[256];  /* default_permissions.*; ".*" */
    char loopback_users[CFG_MAX_LOOPBACK_USERS][256]; int n_loopback_users;  /* loopback_users.<user> = true|false; default guest; loopback_users = none clears */
    int heartbeat;                   /* seconds, default 60 */
    uint32_t frame_max;              /* default 131072 */
    int channel_max;                 /* default 2047 */
    uint64_t max_message_size;       /* default 16777216; max 536870912 */
    char data_dir[512];              /* default "./data" */
    int log_level;                   /* enum log_level; log.level / log.console.level; default info */
    int log_file_level;              /* log.file.level; -1 = log_level */
    bool log_console;                /* log.console: log to the console (stderr); default true */
    char log_file[512];              /* log.file: also append to this file; "" (log.file = false) = none */
    uint64_t consumer_timeout;       /* ms, default 1800000 */
    char load_definitions[512];      /* definitions JSON path, default "" */
    char node_name[256];             /* default "warren@<hostname>" */
    uint64_t vm_memory_high_watermark_absolute;  /* bytes, 0 = unset */
    double vm_memory_high_watermark_relative;    /* default 0.6 */
    uint64_t disk_free_limit_absolute;           /* bytes, default 50000000 */
    char cluster_name[256];                      /* default "" */
    /* Clustering (issue 5). A node is clustered when cluster_formation lists nodes. */
    cfg_listener_t cluster_listener;             /* cluster.listener.port / cluster.listener.ip; default 25672 */
    char cluster_cookie[256];                    /* cluster.cookie: the shared secret */
    char cluster_cookie_file[512];               /* cluster.cookie_file: read the secret from a file */
    /* cluster_formation.classic_config.nodes.<N> = name@host[:port]; kept sorted by N */
    cfg_cluster_node_t cluster_nodes[CFG_MAX_CLUSTER_NODES];
    int n_cluster_nodes;
    uint64_t cluster_peer_timeout;               /* cluster.peer_timeout, ms without traffic before a peer is down; 5000 */
    /* Inter-node TLS (and warrenctl's connections to the cluster port): cluster.ssl = true|false
     * (default false); cluster.ssl_options.certfile/keyfile (this node's certificate, presented
     * both as server and as client), cacertfile (CAs that verify peers), verify = verify_peer |
     * verify_none (default verify_none), fail_if_no_peer_cert = true|false (default false). */
    bool cluster_ssl;
    char cluster_ssl_certfile[512], cluster_ssl_keyfile[512], cluster_ssl_cacertfile[512];
    bool cluster_ssl_verify_peer, cluster_ssl_fail_if_no_peer_cert;
    int mgmt_port;                   /* management.tcp.port / management.listener.port, default 15672 */
    char mgmt_ip[64];                /* management.tcp.ip / management.listener.ip, default "" (all) */
    int mgmt_ssl_port;               /* management.ssl.port: HTTPS listener, default 0 = none */
    char mgmt_ssl_ip[64];            /* management.ssl.ip, default "" (all) */
    char mgmt_ssl_certfile[512], mgmt_ssl_keyfile[512], mgmt_ssl_cacertfile[512]; /* management.ssl.* */
    int prom_port;                   /* prometheus.tcp.port: the metrics listener, default 15692 */
    char prom_ip[64];                /* prometheus.tcp.ip, default "" (all) */
    int mqtt_port;                   /* mqtt.listeners.tcp.default, default 1883 */
    int stomp_port;                  /* stomp.listeners.tcp.default, default 61613 */
    /* Collections still holding their built-in defaults: the first explicit entry replaces
     * the defaults instead of adding to them (as RabbitMQ's schema does). */
    bool tcp_is_default, ssl_is_default, loopback_is_default, tags_is_default;
} cfg_t;

void cfg_defaults(cfg_t *c);
/* Loads path over the current values. Returns 0, or -1 with err filled. */
int cfg_load_file(cfg_t *c, const char *path, char *err, size_t errlen);
/* Same as cfg_load_file, for in-memory text; source names it in errors. */
int cfg_load_string(cfg_t *c, const char *text, const char *source, char *err, size_t errlen);
/* Applies WARREN_* environment overrides. Returns 0 or -1 with err. */
int cfg_apply_env(cfg_t *c, char *err, size_t errlen);
/* Sets one key (used by file, env and tests). Returns 0 or -1 with err; the error names the key
 * but not the source, which callers append. */
int cfg_set(cfg_t *c, const char *key, const char *value, char *err, size_t errlen);

#endif
