/* config.c - broker configuration: defaults, rabbitmq.conf-style file, WARREN_* environment.
 *
 * Role: produce one filled cfg_t at startup. Every setting goes through cfg_set(key, value),
 * whether it came from the file, the environment or a test, so parsing and validation live in
 * one place. Settings are described by a table (key -> setter + field offset + limits); four
 * open-ended families (listeners.tcp.<name>, listeners.ssl.<name>, loopback_users.<user>,
 * default_user_tags.<tag>) are recognized by prefix.
 *
 * File syntax follows RabbitMQ's (cuttlefish) format: one "key = value" per line, surrounding
 * whitespace ignored, blank lines ignored, and '#' starts a comment anywhere on a line (so a
 * value cannot contain '#', exactly as in rabbitmq.conf). Unknown keys and bad values are
 * errors that name the key, the file and the line: a typo must stop startup, not be ignored.
 *
 * Collections with built-in defaults (TCP listener on 5672, SSL listener on 5671, loopback
 * user "guest", default user tag "administrator") are replaced, not extended, by the first
 * explicit entry; re-setting the same name replaces that entry; "= false" removes a user or
 * tag; "listeners.tcp = none" / "loopback_users = none" clear the list.
 *
 * vm_memory_high_watermark.relative and .absolute are two spellings of one RabbitMQ setting:
 * the last one set wins (setting relative clears absolute; a non-zero absolute takes
 * precedence wherever the limit is computed). */
#include "broker/config.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#include "broker/log.h"

typedef struct cfg_key cfg_key_t;
typedef int (*cfg_setter_t)(cfg_t *c, const cfg_key_t *k, const char *value, const char **why);

/* One fixed key. Setters return 0, or -1 with *why describing what was expected. */
struct cfg_key {
    const char *name;
    cfg_setter_t set;
    size_t off;           /* offset of the field in cfg_t */
    size_t size;          /* string fields: buffer size */
    uint64_t min, max;    /* numeric fields: inclusive range */
};

#define FIELD(c, k, type) ((type *)((char *)(c) + (k)->off))

static void errf(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void errf(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* Appends " (where)" to an error message already in err. */
static void err_locate(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void err_locate(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen) return;
    size_t used = strlen(err);
    if (used + 1 >= errlen) return;
    char where[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(where, sizeof where, fmt, ap);
    va_end(ap);
    snprintf(err + used, errlen - used, " (%s)", where);
}

/* ---- value parsers ---------------------------------------------------------------------- */

/* Decimal digits only, no sign, no overflow. */
static bool parse_u64(const char *s, uint64_t *out) {
    if (!*s) return false;
    uint64_t v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9') return false;
        unsigned d = (unsigned)(*s - '0');
        if (v > (UINT64_MAX - d) / 10) return false;
        v = v * 10 + d;
    }
    *out = v;
    return true;
}

static bool parse_bool(const char *s, bool *out) {
    if (strcmp(s, "true") == 0) { *out = true; return true; }
    if (strcmp(s, "false") == 0) { *out = false; return true; }
    return false;
}

/* RabbitMQ information units (3.13+ meaning): k/M/G/T/P (with optional B) are powers of 1000,
 * Ki/Mi/Gi/Ti/Pi (with optional B) powers of 1024; letters are case-insensitive. */
static bool parse_bytes(const char *s, uint64_t *out) {
    const char *p = s;
    while (*p >= '0' && *p <= '9') p++;
    if (p == s) return false;
    char digits[32];
    if ((size_t)(p - s) >= sizeof digits) return false;
    memcpy(digits, s, (size_t)(p - s));
    digits[p - s] = '\0';
    uint64_t n;
    if (!parse_u64(digits, &n)) return false;
    if (!*p) { *out = n; return true; }
    static const char prefixes[] = "kmgtp";
    const char *at = strchr(prefixes, tolower((unsigned char)*p));
    if (!at) return false;
    p++;
    bool binary = false;
    if (tolower((unsigned char)*p) == 'i') { binary = true; p++; }
    if (tolower((unsigned char)*p) == 'b') p++;
    if (*p) return false;
    uint64_t mult = 1;
    for (const char *q = prefixes; q <= at; q++) mult *= binary ? 1024 : 1000;
    if (n > UINT64_MAX / mult) return false;
    *out = n * mult;
    return true;
}

static bool parse_double(const char *s, double *out) {
    if (!*s || isspace((unsigned char)*s)) return false;
    char *end;
    errno = 0;
    double d = strtod(s, &end);
    if (*end || errno || !isfinite(d)) return false;
    *out = d;
    return true;
}

static int parse_log_level(const char *s) {
    int lvl = log_level_parse(s);
    if (lvl >= 0) return lvl;
    /* RabbitMQ also accepts syslog-style names; fold them onto our four levels. */
    if (strcmp(s, "notice") == 0) return LOG_INFO;
    if (strcmp(s, "critical") == 0 || strcmp(s, "alert") == 0 || strcmp(s, "emergency") == 0) return LOG_ERROR;
    return -1;
}

/* ---- fixed-key setters ------------------------------------------------------------------ */

static int set_str(cfg_t *c, const cfg_key_t *k, const char *v, const char **why) {
    size_t n = strlen(v);
    if (n >= k->size) { *why = "value too long"; return -1; }
    memcpy(FIELD(c, k, char), v, n + 1);
    return 0;
}

static int get_ranged(const cfg_key_t *k, const char *v, uint64_t *out, const char **why) {
    static _Thread_local char msg[96];
    if (parse_u64(v, out) && *out >= k->min && *out <= k->max) return 0;
    snprintf(msg, sizeof msg, "expected an integer from %llu to %llu",
             (unsigned long long)k->min, (unsigned long long)k->max);
    *why = msg;
    return -1;
}

static int set_int(cfg_t *c, const cfg_key_t *k, const char *v, const char **why) {
    uint64_t n;
    if (get_ranged(k, v, &n, why)) return -1;
    *FIELD(c, k, int) = (int)n;
    return 0;
}

static int set_u64(cfg_t *c, const cfg_key_t *k, const char *v, const char **why) {
    uint64_t n;
    if (get_ranged(k, v, &n, why)) return -1;
    *FIELD(c, k, uint64_t) = n;
    return 0;
}

static int set_frame_max(cfg_t *c, const cfg_key_t *k, const char *v, const char **why) {
    uint64_t n;
    /* 0 means "no limit"; otherwise AMQP requires at least frame-min-size (4096). */
    if (!parse_u64(v, &n) || (n != 0 && n < 4096) || n > UINT32_MAX) {
        *why = "expected 0 or an integer from 4096 to 4294967295";
        return -1;
    }
    *FIELD(c, k, uint32_t) = (uint32_t)n;
    return 0;
}

static int set_bool(cfg_t *c, const cfg_key_t *k, const char *v, const char **why) {
    if (parse_bool(v, FIELD(c, k, bool))) return 0;
    *why = "expected true or false";
    return -1;
}

static int set_bytes(cfg_t *c, const cfg_key_t *k, const char *v, const char **why) {
    uint64_t n;
    if (parse_bytes(v, &n)) { *FIELD(c, k, uint64_t) = n; return 0; }
    *why = "expected a byte count such as 1073741824, 512MB or 1GiB";
    return -1;
}

/* log.file: false (no file, RabbitMQ's way of turning it off) or the file's path. */
static int set_log_file(cfg_t *c, const cfg_key_t *k, const char *v, const char **why) {
    char *out = FIELD(c, k, char);
    if (strcmp(v, "false") == 0) v = "";
    if (strcmp(v, "true") == 0) return *why = "expected false or a file path", -1;
    if (strlen(v) >= sizeof c->log_file) return *why = "path too long", -1;
    strcpy(out, v);
    return 0;
}

static int set_log_level(cfg_t *c, const cfg_key_t *k, const char *v, const char **why) {
    int lvl = parse_log_level(v);
    if (lvl < 0) { *why = "expected debug, info, warning, error or none"; return -1; }
    *FIELD(c, k, int) = lvl;
    return 0;
}

static int set_verify(cfg_t *c, const cfg_key_t *k, const char *v, const char **why) {
    (void)k;
    if (strcmp(v, "verify_peer") == 0) c->ssl_verify_peer = true;
    else if (strcmp(v, "verify_none") == 0) c->ssl_verify_peer = false;
    else { *why = "expected verify_peer or verify_none"; return -1; }
    return 0;
}

static int set_cluster_verify(cfg_t *c, const cfg_key_t *k, const char *v, const char **why) {
    (void)k;
    if (strcmp(v, "verify_peer") == 0) c->cluster_ssl_verify_peer = true;
    else if (strcmp(v, "verify_none") == 0) c->cluster_ssl_verify_peer = false;
    else { *why = "expected verify_peer or verify_none"; return -1; }
    return 0;
}

static int set_mem_relative(cfg_t *c, const cfg_key_t *k, const char *v, const char **why) {
    (void)k;
    double d;
    if (!parse_double(v, &d) || d < 0.0 || d > 1.0) {
        *why = "expected a fraction of total memory from 0 to 1, such as 0.6";
        return -1;
    }
    c->vm_memory_high_watermark_relative = d;
    c->vm_memory_high_watermark_absolute = 0;   /* one setting, two spellings: last wins */
    return 0;
}

static int set_mem_absolute(cfg_t *c, const cfg_key_t *k, const char *v, const char **why) {
    (void)k;
    uint64_t n;
    if (!parse_bytes(v, &n) || n == 0) {
        *why = "expected a non-zero byte count such as 1073741824, 512MB or 1GiB";
        return -1;
    }
    c->vm_memory_high_watermark_absolute = n;
    return 0;
}

/* "listeners.tcp = none" / "listeners.ssl = none": no listeners of that kind. */
static int set_listeners_none(cfg_t *c, const cfg_key_t *k, const char *v, const char **why) {
    if (strcmp(v, "none") != 0) { *why = "expected none (use listeners.<kind>.<name> = PORT)"; return -1; }
    if (k->off == offsetof(cfg_t, tcp)) { c->n_tcp = 0; c->tcp_is_default = false; }
    else { c->n_ssl = 0; c->ssl_is_default = false; }
    return 0;
}

static int set_loopback_none(cfg_t *c, const cfg_key_t *k, const char *v, const char **why) {
    (void)k;
    if (strcmp(v, "none") != 0) { *why = "expected none (use loopback_users.<user> = true|false)"; return -1; }
    c->n_loopback_users = 0;
    c->loopback_is_default = false;
    return 0;
}

static int set_cluster_ip(cfg_t *c, const cfg_key_t *k, const char *v, const char **why) {
    (void)k;
    if (strlen(v) >= sizeof c->cluster_listener.host) { *why = "address too long"; return -1; }
    snprintf(c->cluster_listener.host, sizeof c->cluster_listener.host, "%s", v);
    return 0;
}

static int set_mgmt_ip(cfg_t *c, const cfg_key_t *k, const char *v, const char **why) {
    (void)k;
    if (strlen(v) >= sizeof c->mgmt_ip) { *why = "address too long"; return -1; }
    snprintf(c->mgmt_ip, sizeof c->mgmt_ip, "%s", v);
    return 0;
}

#define STR(key, field) { key, set_str, offsetof(cfg_t, field), sizeof(((cfg_t *)0)->field), 0, 0 }
#define INT(key, field, lo, hi) { key, set_int, offsetof(cfg_t, field), 0, lo, hi }
#define U64(key, field, lo, hi) { key, set_u64, offsetof(cfg_t, field), 0, lo, hi }
#define FN(key, fn, field) { key, fn, offsetof(cfg_t, field), 0, 0, 0 }

static const cfg_key_t cfg_keys[] = {
    FN("listeners.tcp", set_listeners_none, tcp),
    FN("listeners.ssl", set_listeners_none, ssl),
    STR("ssl_options.certfile", ssl_certfile),
    STR("ssl_options.keyfile", ssl_keyfile),
    STR("ssl_options.cacertfile", ssl_cacertfile),
    FN("ssl_options.verify", set_verify, ssl_verify_peer),
    FN("ssl_options.fail_if_no_peer_cert", set_bool, ssl_fail_if_no_peer_cert),
    STR("default_user", default_user),
    STR("default_pass", default_pass),
    STR("default_vhost", default_vhost),
    STR("default_permissions.configure", default_perm_configure),
    STR("default_permissions.read", default_perm_read),
    STR("default_permissions.write", default_perm_write),
    FN("loopback_users", set_loopback_none, loopback_users),
    INT("heartbeat", heartbeat, 0, 65535),
    FN("frame_max", set_frame_max, frame_max),
    INT("channel_max", channel_max, 0, 65535),
    U64("max_message_size", max_message_size, 1, 536870912),
    STR("data_dir", data_dir),
    FN("log.level", set_log_level, log_level),
    FN("log.console.level", set_log_level, log_level),
    FN("log.file.level", set_log_level, log_file_level),
    FN("log.console", set_bool, log_console),
    FN("log.file", set_log_file, log_file),
    U64("consumer_timeout", consumer_timeout, 1, UINT64_MAX / 2),
    STR("load_definitions", load_definitions),
    STR("node_name", node_name),
    FN("vm_memory_high_watermark.relative", set_mem_relative, vm_memory_high_watermark_relative),
    FN("vm_memory_high_watermark.absolute", set_mem_absolute, vm_memory_high_watermark_absolute),
    FN("disk_free_limit.absolute", set_bytes, disk_free_limit_absolute),
    STR("cluster_name", cluster_name),
    INT("cluster.listener.port", cluster_listener.port, 1, 65535),
    FN("cluster.listener.ip", set_cluster_ip, cluster_listener),
    STR("cluster.cookie", cluster_cookie),
    STR("cluster.cookie_file", cluster_cookie_file),
    U64("cluster.peer_timeout", cluster_peer_timeout, 100, 3600000),
    FN("cluster.ssl", set_bool, cluster_ssl),
    STR("cluster.ssl_options.certfile", cluster_ssl_certfile),
    STR("cluster.ssl_options.keyfile", cluster_ssl_keyfile),
    STR("cluster.ssl_options.cacertfile", cluster_ssl_cacertfile),
    FN("cluster.ssl_options.verify", set_cluster_verify, cluster_ssl_verify_peer),
    FN("cluster.ssl_options.fail_if_no_peer_cert", set_bool, cluster_ssl_fail_if_no_peer_cert),
    INT("management.tcp.port", mgmt_port, 1, 65535),
    INT("management.listener.port", mgmt_port, 1, 65535),
    FN("management.tcp.ip", set_mgmt_ip, mgmt_ip),
    FN("management.listener.ip", set_mgmt_ip, mgmt_ip),
    INT("management.ssl.port", mgmt_ssl_port, 1, 65535),
    STR("management.ssl.ip", mgmt_ssl_ip),
    STR("management.ssl.certfile", mgmt_ssl_certfile),
    STR("management.ssl.keyfile", mgmt_ssl_keyfile),
    STR("management.ssl.cacertfile", mgmt_ssl_cacertfile),
    INT("prometheus.tcp.port", prom_port, 1, 65535),
    STR("prometheus.tcp.ip", prom_ip),
    INT("mqtt.listeners.tcp.default", mqtt_port, 1, 65535),
    INT("stomp.listeners.tcp.default", stomp_port, 1, 65535),
};

#define N_CFG_KEYS (sizeof cfg_keys / sizeof cfg_keys[0])

/* ---- open-ended families ---------------------------------------------------------------- */

static bool host_char_ok(char ch) {
    return isalnum((unsigned char)ch) || ch == '.' || ch == '-' || ch == ':' || ch == '_' || ch == '%';
}

/* PORT | HOST:PORT | [IPv6]:PORT | IPv6:PORT (RabbitMQ's "::1:5672" form). */
static int parse_listener(const char *v, cfg_listener_t *out, const char **why) {
    const char *port_str = v, *host = "";
    size_t hostlen = 0;
    if (v[0] == '[') {
        const char *close = strchr(v, ']');
        if (!close || close[1] != ':') { *why = "expected [IPv6]:PORT"; return -1; }
        host = v + 1;
        hostlen = (size_t)(close - host);
        port_str = close + 2;
    } else {
        const char *colon = strrchr(v, ':');
        if (colon) {
            host = v;
            hostlen = (size_t)(colon - v);
            port_str = colon + 1;
        }
    }
    uint64_t port;
    if (!parse_u64(port_str, &port) || port < 1 || port > 65535) {
        *why = "expected PORT, HOST:PORT or [IPv6]:PORT with a port from 1 to 65535";
        return -1;
    }
    if (port_str != v && hostlen == 0) {
        *why = "empty host before ':'";
        return -1;
    }
    if (hostlen >= sizeof out->host) { *why = "host name too long"; return -1; }
    for (size_t i = 0; i < hostlen; i++)
        if (!host_char_ok(host[i])) { *why = "invalid character in host"; return -1; }
    memcpy(out->host, host, hostlen);
    out->host[hostlen] = '\0';
    out->port = (int)port;
    return 0;
}

static int set_listener(cfg_t *c, bool ssl, const char *name, const char *v, const char **why) {
    cfg_listener_t *list = ssl ? c->ssl : c->tcp;
    int *n = ssl ? &c->n_ssl : &c->n_tcp;
    bool *is_default = ssl ? &c->ssl_is_default : &c->tcp_is_default;
    cfg_listener_t l = { "", 0, "" };
    if (strlen(name) >= sizeof l.name) { *why = "listener name too long"; return -1; }
    if (parse_listener(v, &l, why)) return -1;
    strcpy(l.name, name);
    if (*is_default) { *n = 0; *is_default = false; }
    for (int i = 0; i < *n; i++)
        if (strcmp(list[i].name, name) == 0) { list[i] = l; return 0; }
    if (*n == CFG_MAX_LISTENERS) { *why = "too many listeners (at most 4 per kind)"; return -1; }
    list[(*n)++] = l;
    return 0;
}

/* Adds (true) or removes (false) name in a fixed-size string list with default semantics. */
static int set_member(char *list, size_t stride, int cap, int *n, bool *is_default,
                      const char *name, const char *v, const char **why) {
    bool on;
    if (!parse_bool(v, &on)) { *why = "expected true or false"; return -1; }
    if (strlen(name) >= stride) { *why = "name too long"; return -1; }
    if (*is_default) { *n = 0; *is_default = false; }
    int at = -1;
    for (int i = 0; i < *n; i++)
        if (strcmp(list + (size_t)i * stride, name) == 0) at = i;
    if (on && at < 0) {
        if (*n == cap) { *why = "too many entries"; return -1; }
        strcpy(list + (size_t)(*n)++ * stride, name);
    } else if (!on && at >= 0) {
        memmove(list + (size_t)at * stride, list + (size_t)(at + 1) * stride, (size_t)(*n - at - 1) * stride);
        (*n)--;
    }
    return 0;
}

/* cluster_formation.classic_config.nodes.<N> = name@host[:port] (RabbitMQ's classic peer
 * discovery lists rabbit@host; the optional port lets several nodes share one host). */
static int set_cluster_node(cfg_t *c, const char *index, const char *v, const char **why) {
    uint64_t n;
    if (!parse_u64(index, &n) || n < 1 || n > 1000) { *why = "expected nodes.<1..1000>"; return -1; }
    const char *at = strchr(v, '@');
    if (!at || at == v || !at[1]) { *why = "expected name@host or name@host:port"; return -1; }
    const char *colon = strrchr(at, ':');
    size_t hostlen = colon ? (size_t)(colon - at - 1) : strlen(at + 1);
    uint64_t port = 0;
    if (colon && (!parse_u64(colon + 1, &port) || port < 1 || port > 65535)) {
        *why = "port must be from 1 to 65535";
        return -1;
    }
    size_t namelen = (size_t)(at - v) + 1 + hostlen;
    if (hostlen == 0 || hostlen >= sizeof c->cluster_nodes[0].host || namelen >= sizeof c->cluster_nodes[0].name) {
        *why = "host name missing or too long";
        return -1;
    }
    for (size_t i = 0; i < hostlen; i++)
        if (!host_char_ok(at[1 + i])) { *why = "invalid character in host"; return -1; }
    int slot = c->n_cluster_nodes;
    for (int i = 0; i < c->n_cluster_nodes; i++)
        if (c->cluster_nodes[i].n == (int)n) slot = i;
    if (slot == c->n_cluster_nodes) {
        if (slot == CFG_MAX_CLUSTER_NODES) { *why = "too many cluster nodes (at most 9)"; return -1; }
        c->n_cluster_nodes++;
    }
    c->cluster_nodes[slot].n = (int)n;
    snprintf(c->cluster_nodes[slot].name, sizeof c->cluster_nodes[slot].name, "%.*s", (int)namelen, v);
    snprintf(c->cluster_nodes[slot].host, sizeof c->cluster_nodes[slot].host, "%.*s", (int)hostlen, at + 1);
    c->cluster_nodes[slot].port = (int)port;
    for (int i = 1; i < c->n_cluster_nodes; i++) /* keep sorted by N */
        for (int j = i; j > 0 && c->cluster_nodes[j].n < c->cluster_nodes[j - 1].n; j--) {
            cfg_cluster_node_t t = c->cluster_nodes[j];
            c->cluster_nodes[j] = c->cluster_nodes[j - 1];
            c->cluster_nodes[j - 1] = t;
        }
    for (int i = 0; i < c->n_cluster_nodes; i++)
        for (int j = 0; j < i; j++)
            if (strcmp(c->cluster_nodes[i].name, c->cluster_nodes[j].name) == 0) {
                *why = "the same node is listed twice";
                return -1;
            }
    return 0;
}

/* Recognizes "<prefix><name>" keys; returns 1 if handled (rc in *rc), 0 if not a family key. */
static int set_family(cfg_t *c, const char *key, const char *v, int *rc, const char **why) {
    static const char cluster_prefix[] = "cluster_formation.classic_config.nodes.";
    if (strncmp(key, cluster_prefix, sizeof cluster_prefix - 1) == 0) {
        *rc = set_cluster_node(c, key + sizeof cluster_prefix - 1, v, why);
        return 1;
    }
    static const char *const prefixes[] = { "listeners.tcp.", "listeners.ssl.", "loopback_users.",
                                            "default_user_tags." };
    for (int f = 0; f < 4; f++) {
        size_t plen = strlen(prefixes[f]);
        if (strncmp(key, prefixes[f], plen) != 0 || key[plen] == '\0') continue;
        const char *name = key + plen;
        if (f <= 1) *rc = set_listener(c, f == 1, name, v, why);
        else if (f == 2)
            *rc = set_member(&c->loopback_users[0][0], sizeof c->loopback_users[0], CFG_MAX_LOOPBACK_USERS,
                             &c->n_loopback_users, &c->loopback_is_default, name, v, why);
        else
            *rc = set_member(&c->default_user_tags[0][0], sizeof c->default_user_tags[0], CFG_MAX_USER_TAGS,
                             &c->n_default_user_tags, &c->tags_is_default, name, v, why);
        return 1;
    }
    return 0;
}

/* ---- public API ------------------------------------------------------------------------- */

static void default_node_name(char *out, size_t size) {
    char host[200] = "";   /* short enough that "warren@" + host always fits */
    if (gethostname(host, sizeof host - 1) != 0 || !host[0]) strcpy(host, "localhost");
    host[strcspn(host, ".")] = '\0';   /* short name, like rabbit@<shortname> */
    snprintf(out, size, "warren@%s", host);
}

void cfg_defaults(cfg_t *c) {
    memset(c, 0, sizeof *c);
    c->tcp[0] = (cfg_listener_t){ "", 5672, "default" };
    c->n_tcp = 1;
    c->tcp_is_default = true;
    c->ssl[0] = (cfg_listener_t){ "", 5671, "default" };
    c->n_ssl = 1;
    c->ssl_is_default = true;
    strcpy(c->default_user, "guest");
    strcpy(c->default_pass, "guest");
    strcpy(c->default_vhost, "/");
    strcpy(c->default_user_tags[0], "administrator");
    c->n_default_user_tags = 1;
    c->tags_is_default = true;
    strcpy(c->default_perm_configure, ".*");
    strcpy(c->default_perm_read, ".*");
    strcpy(c->default_perm_write, ".*");
    strcpy(c->loopback_users[0], "guest");
    c->n_loopback_users = 1;
    c->loopback_is_default = true;
    c->heartbeat = 60;
    c->frame_max = 131072;
    c->channel_max = 2047;
    c->max_message_size = 16777216;
    strcpy(c->data_dir, "./data");
    c->log_level = LOG_INFO;
    c->log_file_level = -1;
    c->log_console = true;
    c->consumer_timeout = 1800000;
    default_node_name(c->node_name, sizeof c->node_name);
    c->cluster_listener = (cfg_listener_t){ "", 25672, "cluster" };
    c->cluster_peer_timeout = 5000;
    c->vm_memory_high_watermark_relative = 0.6;
    c->disk_free_limit_absolute = 50000000;
    c->mgmt_port = 15672;
    c->prom_port = 15692;
    c->mqtt_port = 1883;
    c->stomp_port = 61613;
}

int cfg_set(cfg_t *c, const char *key, const char *value, char *err, size_t errlen) {
    if (!c || !key || !value) { errf(err, errlen, "missing configuration key or value"); return -1; }
    const char *why = "invalid";
    int rc = 0;
    bool known = false;
    for (size_t i = 0; i < N_CFG_KEYS && !known; i++) {
        if (strcmp(cfg_keys[i].name, key) == 0) {
            known = true;
            rc = cfg_keys[i].set(c, &cfg_keys[i], value, &why);
        }
    }
    if (!known && !set_family(c, key, value, &rc, &why)) {
        errf(err, errlen, "unknown configuration key '%s'", key);
        return -1;
    }
    if (rc != 0) {
        /* Quote at most 80 bytes of the value so the reason still fits in the message. */
        int shown = strlen(value) > 80 ? 77 : 80;
        errf(err, errlen, "invalid value '%.*s%s' for '%s': %s", shown, value,
             strlen(value) > 80 ? "..." : "", key, why);
    }
    return rc;
}

static char *trim(char *s) {
    while (isspace((unsigned char)*s)) s++;
    char *end = s + strlen(s);
    while (end > s && isspace((unsigned char)end[-1])) *--end = '\0';
    return s;
}

/* Applies one line; lineno and source only feed error messages. */
static int cfg_apply_line(cfg_t *c, char *line, const char *source, int lineno, char *err, size_t errlen) {
    line[strcspn(line, "#")] = '\0';
    char *s = trim(line);
    if (!*s) return 0;
    char *eq = strchr(s, '=');
    if (!eq) {
        errf(err, errlen, "syntax error: expected 'key = value' (%s line %d)", source, lineno);
        return -1;
    }
    *eq = '\0';
    char *key = trim(s), *value = trim(eq + 1);
    if (!*key) {
        errf(err, errlen, "syntax error: missing key before '=' (%s line %d)", source, lineno);
        return -1;
    }
    if (!*value) {
        errf(err, errlen, "missing value for '%s' (%s line %d)", key, source, lineno);
        return -1;
    }
    if (cfg_set(c, key, value, err, errlen) != 0) {
        err_locate(err, errlen, "%s line %d", source, lineno);
        return -1;
    }
    return 0;
}

int cfg_load_string(cfg_t *c, const char *text, const char *source, char *err, size_t errlen) {
    if (!text) return 0;
    if (!source) source = "configuration";
    int lineno = 0;
    const char *p = text;
    while (*p) {
        const char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        char *line = malloc(len + 1);
        if (!line) { errf(err, errlen, "out of memory reading %s", source); return -1; }
        memcpy(line, p, len);
        line[len] = '\0';
        int rc = cfg_apply_line(c, line, source, ++lineno, err, errlen);
        free(line);
        if (rc) return -1;
        if (!nl) break;
        p = nl + 1;
    }
    return 0;
}

int cfg_load_file(cfg_t *c, const char *path, char *err, size_t errlen) {
    FILE *f = fopen(path, "r");
    if (!f) {
        errf(err, errlen, "cannot open configuration file '%s': %s", path, strerror(errno));
        return -1;
    }
    char *line = NULL;
    size_t cap = 0;
    int lineno = 0, rc = 0;
    ssize_t got;
    while ((got = getline(&line, &cap, f)) >= 0) {
        ++lineno;
        if ((size_t)got != strlen(line)) {   /* a NUL byte would silently cut the line short */
            errf(err, errlen, "NUL byte in configuration (%s line %d)", path, lineno);
            rc = -1;
            break;
        }
        if ((rc = cfg_apply_line(c, line, path, lineno, err, errlen)) != 0) break;
    }
    if (rc == 0 && ferror(f)) {
        errf(err, errlen, "error reading configuration file '%s': %s", path, strerror(errno));
        rc = -1;
    }
    free(line);
    fclose(f);
    return rc;
}

/* "listeners.tcp.default" -> "WARREN_LISTENERS_TCP_DEFAULT". */
static void env_name(const char *key, char *out, size_t size) {
    size_t n = (size_t)snprintf(out, size, "WARREN_");
    for (; *key && n + 1 < size; key++)
        out[n++] = *key == '.' ? '_' : (char)toupper((unsigned char)*key);
    out[n] = '\0';
}

static int env_apply(cfg_t *c, const char *key, const char *var, const char *value, char *err, size_t errlen) {
    if (cfg_set(c, key, value, err, errlen) == 0) return 0;
    err_locate(err, errlen, "environment variable %s", var);
    return -1;
}

/* WARREN_<FAMILY>_<NAME>=value for the open-ended families; NAME is lowercased. */
static int env_apply_families(cfg_t *c, char *err, size_t errlen) {
    static const char *const families[] = { "listeners.tcp.", "listeners.ssl.", "loopback_users.",
                                            "default_user_tags.", "cluster_formation.classic_config.nodes." };
    for (char **e = environ; e && *e; e++) {
        for (int f = 0; f < 5; f++) {
            char prefix[64];
            env_name(families[f], prefix, sizeof prefix);   /* ends in '_' */
            size_t plen = strlen(prefix);
            const char *eq = strchr(*e, '=');
            if (!eq || strncmp(*e, prefix, plen) != 0 || (size_t)(eq - *e) <= plen) continue;
            char key[512], var[512];
            size_t namelen = (size_t)(eq - *e) - plen;
            if (namelen + strlen(families[f]) >= sizeof key) continue;
            snprintf(var, sizeof var, "%.*s", (int)(eq - *e), *e);
            size_t k = (size_t)snprintf(key, sizeof key, "%s", families[f]);
            for (size_t i = 0; i < namelen; i++) key[k++] = (char)tolower((unsigned char)(*e)[plen + i]);
            key[k] = '\0';
            if (env_apply(c, key, var, eq + 1, err, errlen)) return -1;
        }
    }
    return 0;
}

int cfg_apply_env(cfg_t *c, char *err, size_t errlen) {
    for (size_t i = 0; i < N_CFG_KEYS; i++) {
        char var[128];
        env_name(cfg_keys[i].name, var, sizeof var);
        const char *value = getenv(var);
        if (value && env_apply(c, cfg_keys[i].name, var, value, err, errlen)) return -1;
    }
    return env_apply_families(c, err, errlen);
}
