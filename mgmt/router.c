/* router.c - from a complete request to an endpoint: path decoding, route table, HTTP Basic
 * authentication against the broker's users, and RabbitMQ's authorization by user tags.
 *
 * Order, as RabbitMQ's management plugin (cowboy REST) does it: an unknown path is 404 and a
 * known path with another method 405, before any authentication; then the credentials (none:
 * 401 with an empty body; wrong: 401 "Login failed"); then the tags (no management tag: 401
 * "Not management user"; administrator-only endpoints: 401 "Not administrator user"); then, for
 * endpoints scoped to a vhost, a vhost that does not exist is 404 and one a user other than an
 * administrator has no permissions on is 401 "User not authorised to access virtual host".
 *
 * Visibility (RabbitMQ 3.10.8's observed behaviour): administrators see every vhost and object;
 * the vhost list and the overview's totals also show monitoring users everything; object
 * listings (queues, exchanges, bindings) show other users only the vhosts they have
 * permissions on.
 *
 * Paths: "/api/queues/%2F/q" -> segments {"queues", "/", "q"}, each percent-decoded on its own,
 * so names may contain '/'. A route pattern's "*" segments are captured into r->params in order;
 * a trailing "/" is ignored. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mgmt/internal.h"
#include "mgmt/metrics.h"

/* Handlers declared here rather than in internal.h (api_params.c: runtime parameters). */
void mgmt_get_vhost_limits(mgmt_req_t *r);
void mgmt_put_vhost_limit(mgmt_req_t *r);
void mgmt_delete_vhost_limit(mgmt_req_t *r);
void mgmt_get_parameters(mgmt_req_t *r);
void mgmt_get_parameter(mgmt_req_t *r);
void mgmt_put_parameter(mgmt_req_t *r);
void mgmt_delete_parameter(mgmt_req_t *r);
void mgmt_get_global_parameters(mgmt_req_t *r);
void mgmt_get_global_parameter(mgmt_req_t *r);
void mgmt_put_global_parameter(mgmt_req_t *r);
void mgmt_delete_global_parameter(mgmt_req_t *r);

enum auth_level {
    AUTH_MGMT,  /* any user with a management tag */
    AUTH_ADMIN, /* administrator */
    AUTH_VHOST, /* management tag and permissions on the vhost in params[0] */
    AUTH_MONITOR, /* monitoring or administrator */
    AUTH_POLICY,  /* policymaker or administrator, and AUTH_VHOST */
    AUTH_ADMIN_VHOST, /* administrator, and the vhost in params[0] exists */
};

struct route {
    enum mgmt_method method;
    const char *pattern; /* segments after "/api", '*' = a captured name */
    void (*fn)(mgmt_req_t *r);
    enum auth_level auth;
};

static const struct route routes[] = {
    {MGMT_GET, "overview", mgmt_get_overview, AUTH_MGMT},
    {MGMT_GET, "whoami", mgmt_get_whoami, AUTH_MGMT},
    {MGMT_GET, "vhosts", mgmt_get_vhosts, AUTH_MGMT},
    {MGMT_GET, "vhosts/*", mgmt_get_vhost, AUTH_ADMIN},
    {MGMT_PUT, "vhosts/*", mgmt_put_vhost, AUTH_ADMIN},
    {MGMT_DELETE, "vhosts/*", mgmt_delete_vhost, AUTH_ADMIN},
    {MGMT_GET, "vhosts/*/permissions", mgmt_get_vhost_permissions, AUTH_ADMIN},
    {MGMT_GET, "vhost-limits", mgmt_get_vhost_limits, AUTH_MGMT},
    {MGMT_GET, "vhost-limits/*", mgmt_get_vhost_limits, AUTH_VHOST},
    {MGMT_PUT, "vhost-limits/*/*", mgmt_put_vhost_limit, AUTH_ADMIN},
    {MGMT_DELETE, "vhost-limits/*/*", mgmt_delete_vhost_limit, AUTH_ADMIN},
    {MGMT_GET, "parameters", mgmt_get_parameters, AUTH_ADMIN},
    {MGMT_GET, "parameters/*", mgmt_get_parameters, AUTH_ADMIN},
    {MGMT_GET, "parameters/*/*", mgmt_get_parameters, AUTH_ADMIN},
    {MGMT_GET, "parameters/*/*/*", mgmt_get_parameter, AUTH_ADMIN},
    {MGMT_PUT, "parameters/*/*/*", mgmt_put_parameter, AUTH_ADMIN},
    {MGMT_DELETE, "parameters/*/*/*", mgmt_delete_parameter, AUTH_ADMIN},
    {MGMT_GET, "global-parameters", mgmt_get_global_parameters, AUTH_ADMIN},
    {MGMT_GET, "global-parameters/*", mgmt_get_global_parameter, AUTH_ADMIN},
    {MGMT_PUT, "global-parameters/*", mgmt_put_global_parameter, AUTH_ADMIN},
    {MGMT_DELETE, "global-parameters/*", mgmt_delete_global_parameter, AUTH_ADMIN},
    {MGMT_GET, "users", mgmt_get_users, AUTH_ADMIN},
    {MGMT_GET, "users/*", mgmt_get_user, AUTH_ADMIN},
    {MGMT_PUT, "users/*", mgmt_put_user, AUTH_ADMIN},
    {MGMT_DELETE, "users/*", mgmt_delete_user, AUTH_ADMIN},
    {MGMT_GET, "users/*/permissions", mgmt_get_user_permissions, AUTH_ADMIN},
    {MGMT_GET, "permissions", mgmt_get_permissions, AUTH_ADMIN},
    {MGMT_GET, "permissions/*/*", mgmt_get_permission, AUTH_ADMIN},
    {MGMT_PUT, "permissions/*/*", mgmt_put_permission, AUTH_ADMIN},
    {MGMT_DELETE, "permissions/*/*", mgmt_delete_permission, AUTH_ADMIN},
    {MGMT_GET, "topic-permissions", mgmt_get_topic_permissions, AUTH_ADMIN},
    {MGMT_GET, "topic-permissions/*/*", mgmt_get_topic_permission, AUTH_ADMIN},
    {MGMT_PUT, "topic-permissions/*/*", mgmt_put_topic_permission, AUTH_ADMIN},
    {MGMT_DELETE, "topic-permissions/*/*", mgmt_delete_topic_permission, AUTH_ADMIN},
    {MGMT_GET, "users/*/topic-permissions", mgmt_get_user_topic_permissions, AUTH_ADMIN},
    {MGMT_GET, "vhosts/*/topic-permissions", mgmt_get_vhost_topic_permissions, AUTH_ADMIN_VHOST},
    {MGMT_GET, "policies", mgmt_get_policies, AUTH_MGMT},
    {MGMT_GET, "policies/*", mgmt_get_policies, AUTH_VHOST},
    {MGMT_GET, "policies/*/*", mgmt_get_policy, AUTH_VHOST},
    {MGMT_PUT, "policies/*/*", mgmt_put_policy, AUTH_POLICY},
    {MGMT_DELETE, "policies/*/*", mgmt_delete_policy, AUTH_POLICY},
    {MGMT_GET, "nodes", mgmt_get_nodes, AUTH_MONITOR},
    {MGMT_GET, "nodes/*", mgmt_get_node, AUTH_MONITOR},
    {MGMT_GET, "cluster-name", mgmt_get_cluster_name, AUTH_MGMT},
    {MGMT_GET, "extensions", mgmt_get_extensions, AUTH_MGMT},
    {MGMT_GET, "exchanges", mgmt_get_exchanges, AUTH_MGMT},
    {MGMT_GET, "exchanges/*", mgmt_get_exchanges, AUTH_VHOST},
    {MGMT_GET, "exchanges/*/*", mgmt_get_exchange, AUTH_VHOST},
    {MGMT_PUT, "exchanges/*/*", mgmt_put_exchange, AUTH_VHOST},
    {MGMT_DELETE, "exchanges/*/*", mgmt_delete_exchange, AUTH_VHOST},
    {MGMT_POST, "exchanges/*/*/publish", mgmt_post_publish, AUTH_VHOST},
    {MGMT_GET, "exchanges/*/*/bindings/source", mgmt_get_exchange_bindings_source, AUTH_VHOST},
    {MGMT_GET, "exchanges/*/*/bindings/destination", mgmt_get_exchange_bindings_destination, AUTH_VHOST},
    {MGMT_GET, "queues", mgmt_get_queues, AUTH_MGMT},
    {MGMT_GET, "queues/*", mgmt_get_queues, AUTH_VHOST},
    {MGMT_GET, "queues/*/*", mgmt_get_queue, AUTH_VHOST},
    {MGMT_PUT, "queues/*/*", mgmt_put_queue, AUTH_VHOST},
    {MGMT_DELETE, "queues/*/*", mgmt_delete_queue, AUTH_VHOST},
    {MGMT_GET, "queues/*/*/bindings", mgmt_get_queue_bindings, AUTH_VHOST},
    {MGMT_POST, "queues/*/*/get", mgmt_post_get, AUTH_VHOST},
    {MGMT_DELETE, "queues/*/*/contents", mgmt_delete_queue_contents, AUTH_VHOST},
    {MGMT_GET, "bindings", mgmt_get_bindings, AUTH_MGMT},
    {MGMT_GET, "bindings/*", mgmt_get_bindings, AUTH_VHOST},
    {MGMT_GET, "bindings/*/e/*/q/*", mgmt_get_bindings_between, AUTH_VHOST},
    {MGMT_POST, "bindings/*/e/*/q/*", mgmt_post_binding, AUTH_VHOST},
    {MGMT_GET, "bindings/*/e/*/q/*/*", mgmt_get_binding, AUTH_VHOST},
    {MGMT_DELETE, "bindings/*/e/*/q/*/*", mgmt_delete_binding, AUTH_VHOST},
    {MGMT_GET, "bindings/*/e/*/e/*", mgmt_get_bindings_between, AUTH_VHOST},
    {MGMT_POST, "bindings/*/e/*/e/*", mgmt_post_binding, AUTH_VHOST},
    {MGMT_GET, "bindings/*/e/*/e/*/*", mgmt_get_binding, AUTH_VHOST},
    {MGMT_DELETE, "bindings/*/e/*/e/*/*", mgmt_delete_binding, AUTH_VHOST},
    {MGMT_GET, "connections", mgmt_get_connections, AUTH_MGMT},
    {MGMT_GET, "connections/*", mgmt_get_connection, AUTH_MGMT},
    {MGMT_DELETE, "connections/*", mgmt_delete_connection, AUTH_MGMT},
    {MGMT_GET, "connections/*/channels", mgmt_get_connection_channels, AUTH_MGMT},
    {MGMT_GET, "vhosts/*/connections", mgmt_get_vhost_connections, AUTH_VHOST},
    {MGMT_GET, "channels", mgmt_get_channels, AUTH_MGMT},
    {MGMT_GET, "channels/*", mgmt_get_channel, AUTH_MGMT},
    {MGMT_GET, "vhosts/*/channels", mgmt_get_vhost_channels, AUTH_VHOST},
    {MGMT_GET, "consumers", mgmt_get_consumers, AUTH_MGMT},
    {MGMT_GET, "consumers/*", mgmt_get_consumers, AUTH_MGMT},
    {MGMT_GET, "definitions", mgmt_get_definitions, AUTH_ADMIN},
    {MGMT_POST, "definitions", mgmt_post_definitions, AUTH_ADMIN},
    {MGMT_GET, "definitions/*", mgmt_get_vhost_definitions, AUTH_ADMIN},
    {MGMT_POST, "definitions/*", mgmt_post_vhost_definitions, AUTH_ADMIN},
    {MGMT_POST, "queues/quorum/*/*/replicas/add", mgmt_post_qq_replica_add, AUTH_ADMIN_VHOST},
    {MGMT_DELETE, "queues/quorum/*/*/replicas/delete", mgmt_delete_qq_replica, AUTH_ADMIN_VHOST},
    {MGMT_POST, "queues/quorum/replicas/on/*/grow", mgmt_post_qq_grow, AUTH_ADMIN},
    {MGMT_DELETE, "queues/quorum/replicas/on/*/shrink", mgmt_delete_qq_shrink, AUTH_ADMIN},
    {MGMT_GET, "health/checks/alarms", mgmt_get_health_alarms, AUTH_MGMT},
    {MGMT_GET, "health/checks/local-alarms", mgmt_get_health_local_alarms, AUTH_MGMT},
    {MGMT_GET, "health/checks/virtual-hosts", mgmt_get_health_vhosts, AUTH_MGMT},
    {MGMT_GET, "health/checks/port-listener/*", mgmt_get_health_port, AUTH_MGMT},
    {MGMT_GET, "health/checks/protocol-listener/*", mgmt_get_health_protocol, AUTH_MGMT},
    {MGMT_GET, "health/checks/node-is-quorum-critical", mgmt_get_health_quorum_critical, AUTH_MGMT},
    {MGMT_GET, "aliveness-test/*", mgmt_get_aliveness, AUTH_VHOST},
};

/* ---- path decoding ---- */

static int hexval(int ch)
{
    if (ch >= '0' && ch <= '9') return ch - '0';
    ch = tolower(ch);
    return ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
}

/* Percent-decodes s[0..n) (plus_space: '+' is a space, as in query strings). NULL when it
 * decodes to a NUL byte or has a bad escape. */
static char *pct_decode(const char *s, size_t n, bool plus_space)
{
    char *out = malloc(n + 1);
    if (!out) abort();
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        int ch = (unsigned char)s[i];
        if (ch == '%') {
            if (i + 2 >= n) goto bad;
            int hi = hexval((unsigned char)s[i + 1]), lo = hexval((unsigned char)s[i + 2]);
            if (hi < 0 || lo < 0) goto bad;
            ch = hi * 16 + lo;
            i += 2;
        } else if (ch == '+' && plus_space) {
            ch = ' ';
        }
        if (ch == 0) goto bad;
        out[k++] = (char)ch;
    }
    out[k] = '\0';
    return out;
bad:
    free(out);
    return NULL;
}

/* Splits the URL into decoded path segments after "/api" and the query. False: not an API
 * path, too deep, or badly encoded. */
static bool split_url(mgmt_req_t *r)
{
    const char *u = r->url ? r->url : "";
    size_t n = strcspn(u, "?#");
    if (u[n] == '?') {
        size_t qn = strcspn(u + n + 1, "#");
        r->query = strndup(u + n + 1, qn);
        if (!r->query) abort();
    }
    if (n < 4 || memcmp(u, "/api", 4) != 0 || (n > 4 && u[4] != '/')) return false;
    const char *p = u + 4, *end = u + n;
    if (p < end) p++; /* the '/' after "/api" */
    while (p < end) {
        const char *slash = memchr(p, '/', (size_t)(end - p));
        const char *stop = slash ? slash : end;
        if (!slash && stop == p) break; /* a trailing '/' */
        if (r->nsegs == MGMT_MAX_SEGS) return false;
        char *seg = pct_decode(p, (size_t)(stop - p), false);
        if (!seg) return false;
        r->segs[r->nsegs++] = seg;
        p = slash ? slash + 1 : end;
    }
    return true;
}

/* Does the route's pattern match the segments? Captures into r->params. */
static bool pattern_match(const char *pattern, mgmt_req_t *r)
{
    int i = 0, np = 0;
    const char *p = pattern;
    while (*p) {
        size_t n = strcspn(p, "/");
        if (i >= r->nsegs) return false;
        if (n == 1 && *p == '*') {
            if (np == MGMT_MAX_PARAMS) return false;
            r->params[np++] = r->segs[i];
        } else if (strlen(r->segs[i]) != n || memcmp(r->segs[i], p, n) != 0) {
            return false;
        }
        i++;
        p += n;
        if (*p == '/') p++;
    }
    return i == r->nsegs;
}

/* ---- authentication ---- */

static int b64val(int ch)
{
    if (ch >= 'A' && ch <= 'Z') return ch - 'A';
    if (ch >= 'a' && ch <= 'z') return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9') return ch - '0' + 52;
    if (ch == '+') return 62;
    if (ch == '/') return 63;
    return -1;
}

/* Decodes standard base64 (padding optional); NULL when malformed. *outlen excludes the NUL. */
static char *b64_decode(const char *s, size_t n, size_t *outlen)
{
    while (n && s[n - 1] == '=') n--;
    char *out = malloc(n * 3 / 4 + 2);
    if (!out) abort();
    size_t k = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        int v = b64val((unsigned char)s[i]);
        if (v < 0) {
            free(out);
            return NULL;
        }
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[k++] = (char)((acc >> bits) & 0xff);
        }
    }
    out[k] = '\0';
    *outlen = k;
    return out;
}

/* Authenticates r from its Authorization header; on failure answers it and returns false. */
static bool authenticate(mgmt_req_t *r)
{
    if (!r->auth) {
        mgmt_reply_status(r, 401);
        return false;
    }
    const char *a = r->auth;
    while (*a == ' ' || *a == '\t') a++;
    size_t dlen = 0;
    char *creds = NULL;
    if (strncasecmp(a, "Basic ", 6) == 0) {
        a += 6;
        while (*a == ' ') a++;
        size_t n = strlen(a);
        while (n && (a[n - 1] == ' ' || a[n - 1] == '\t')) n--;
        creds = b64_decode(a, n, &dlen);
    }
    char *colon = creds ? memchr(creds, ':', dlen) : NULL;
    user_t *u = NULL;
    if (colon) {
        u = br_authenticate(r->m->b, creds, (size_t)(colon - creds), colon + 1, dlen - (size_t)(colon - creds) - 1);
    }
    free(creds);
    if (!u) {
        mgmt_reply_error(r, 401, "not_authorized", "Login failed");
        return false;
    }
    if (br_user_is_loopback_only(r->m->b, u) && !r->peer_loopback) {
        mgmt_reply_error(r, 401, "not_authorised", "User can only log in via localhost");
        return false;
    }
    r->user = u;
    return true;
}

/* ---- tags ---- */

bool mgmt_user_has_tag(const user_t *u, const char *tag)
{
    size_t tl = strlen(tag);
    const char *p = u && u->tags ? u->tags : "";
    while (*p) {
        while (*p == ' ' || *p == ',') p++;
        size_t n = strcspn(p, ",");
        size_t m = n;
        while (m && p[m - 1] == ' ') m--;
        if (m == tl && memcmp(p, tag, tl) == 0) return true;
        p += n;
    }
    return false;
}

bool mgmt_user_is_monitor(const user_t *u)
{
    return mgmt_user_has_tag(u, "administrator") || mgmt_user_has_tag(u, "monitoring");
}

static bool is_mgmt_user(const user_t *u)
{
    return mgmt_user_is_monitor(u) || mgmt_user_has_tag(u, "management") || mgmt_user_has_tag(u, "policymaker");
}

static bool has_vhost_perms(const user_t *u, const vhost_t *vh)
{
    return dict_get(&u->perms, vh->name, strlen(vh->name)) != NULL;
}

bool mgmt_vhost_visible(const mgmt_req_t *r, const vhost_t *vh, bool monitor_sees_all)
{
    if (mgmt_user_has_tag(r->user, "administrator")) return true;
    return (monitor_sees_all && mgmt_user_is_monitor(r->user)) || has_vhost_perms(r->user, vh);
}

static bool authorize(mgmt_req_t *r, enum auth_level level)
{
    if (!is_mgmt_user(r->user)) {
        mgmt_reply_error(r, 401, "not_authorised", "Not management user");
        return false;
    }
    bool admin = mgmt_user_has_tag(r->user, "administrator");
    if (level == AUTH_ADMIN && !admin) {
        mgmt_reply_error(r, 401, "not_authorised", "Not administrator user");
        return false;
    }
    if (level == AUTH_MONITOR && !mgmt_user_is_monitor(r->user)) {
        mgmt_reply_error(r, 401, "not_authorised", "Not monitor user");
        return false;
    }
    if (level == AUTH_ADMIN_VHOST && !admin) {
        mgmt_reply_error(r, 401, "not_authorised", "Not administrator user");
        return false;
    }
    if (level == AUTH_VHOST || level == AUTH_POLICY || level == AUTH_ADMIN_VHOST) {
        vhost_t *vh = br_vhost(r->m->b, r->params[0], strlen(r->params[0]));
        if (!vh) {
            mgmt_reply_not_found(r);
            return false;
        }
        if (!admin && !has_vhost_perms(r->user, vh)) {
            mgmt_reply_error(r, 401, "not_authorised", "User not authorised to access virtual host");
            return false;
        }
        if (level == AUTH_POLICY && !admin && !mgmt_user_has_tag(r->user, "policymaker")) {
            mgmt_reply_error(r, 401, "not_authorised", "User not authorised to access object");
            return false;
        }
    }
    return true;
}

/* ---- query strings ---- */

const char *mgmt_query(const mgmt_req_t *r, const char *key, char *buf, size_t buflen)
{
    const char *p = r->query;
    size_t kl = strlen(key);
    while (p && *p) {
        size_t n = strcspn(p, "&");
        size_t eq = strcspn(p, "=");
        size_t name_len = eq < n ? eq : n;
        if (name_len == kl && memcmp(p, key, kl) == 0) {
            const char *v = eq < n ? p + eq + 1 : p + n;
            size_t vl = eq < n ? n - eq - 1 : 0;
            char *d = pct_decode(v, vl, true);
            if (!d) return NULL;
            snprintf(buf, buflen, "%s", d);
            free(d);
            return buf;
        }
        p += n;
        if (*p == '&') p++;
    }
    return NULL;
}

/* ---- dispatch ---- */

void mgmt_route(mgmt_req_t *r)
{
    if (r->prometheus) return mgmt_metrics_serve(r); /* the metrics listener: metrics.c */
    if (!split_url(r)) return mgmt_ui_serve(r); /* not an API path: ui.c */
    enum mgmt_method method = r->method == MGMT_HEAD ? MGMT_GET : r->method;
    const struct route *hit = NULL;
    bool path_known = false;
    for (size_t i = 0; i < sizeof routes / sizeof routes[0] && !hit; i++) {
        if (!pattern_match(routes[i].pattern, r)) continue;
        path_known = true;
        if (routes[i].method == method) hit = &routes[i];
    }
    if (!hit) {
        if (path_known) return mgmt_reply_status(r, 405);
        return mgmt_reply_not_found(r);
    }
    if (!authenticate(r) || !authorize(r, hit->auth)) return;
    hit->fn(r);
}
