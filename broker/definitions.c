/* definitions.c - boot-time definitions: the default user and vhost from config, and
 * RabbitMQ's definitions JSON (users, vhosts, permissions, exchanges, queues, bindings) as
 * exported by `rabbitmqctl export_definitions` or the management API.
 *
 * JSON arguments become AMQP field tables the way RabbitMQ converts them: strings -> longstr,
 * integers -> long (l), other numbers -> double, booleans -> bool, objects -> tables, arrays ->
 * arrays, null -> void. */
#include "broker/broker.h"
#include "broker/log.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void json_value_encode(amqp_buf_t *out, const cJSON *j);

static void json_table_encode(amqp_buf_t *out, const cJSON *obj)
{
    size_t pos = amqp_table_open(out);
    for (const cJSON *c = obj ? obj->child : NULL; c; c = c->next) {
        amqp_table_put_key(out, c->string);
        json_value_encode(out, c);
    }
    amqp_table_close(out, pos);
}

static void json_value_encode(amqp_buf_t *out, const cJSON *j)
{
    if (cJSON_IsString(j)) {
        amqp_buf_put_u8(out, 'S');
        amqp_buf_put_longstr(out, AMQP_BYTES_CSTR(j->valuestring));
    } else if (cJSON_IsBool(j)) {
        amqp_buf_put_u8(out, 't');
        amqp_buf_put_u8(out, cJSON_IsTrue(j) ? 1 : 0);
    } else if (cJSON_IsNumber(j)) {
        double d = j->valuedouble;
        if (d == floor(d) && fabs(d) < 9.2e18) {
            amqp_buf_put_u8(out, 'l');
            amqp_buf_put_u64(out, (uint64_t)(int64_t)d);
        } else {
            uint64_t bits;
            memcpy(&bits, &d, sizeof bits);
            amqp_buf_put_u8(out, 'd');
            amqp_buf_put_u64(out, bits);
        }
    } else if (cJSON_IsObject(j)) {
        amqp_buf_put_u8(out, 'F');
        json_table_encode(out, j);
    } else if (cJSON_IsArray(j)) {
        amqp_buf_put_u8(out, 'A');
        size_t pos = out->len;
        amqp_buf_put_u32(out, 0);
        for (const cJSON *c = j->child; c; c = c->next) json_value_encode(out, c);
        amqp_buf_patch_u32(out, pos, (uint32_t)(out->len - pos - 4));
    } else {
        amqp_buf_put_u8(out, 'V');
    }
}

/* Encodes a JSON object as table content bytes (no length prefix) into out. */
static amqp_bytes_t json_args(amqp_buf_t *out, const cJSON *obj)
{
    out->len = 0;
    if (!cJSON_IsObject(obj) || !obj->child) return AMQP_BYTES_EMPTY;
    json_table_encode(out, obj);
    return (amqp_bytes_t){out->data + 4, out->len - 4};
}

static const char *jstr(const cJSON *o, const char *key, const char *dflt)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(j) ? j->valuestring : dflt;
}

static bool jbool(const cJSON *o, const char *key, bool dflt)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsBool(j) ? cJSON_IsTrue(j) : dflt;
}

/* "tags" is a comma-separated string in 3.x exports and a list in 4.x ones. */
static void tags_text(const cJSON *o, char *out, size_t cap)
{
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "tags");
    out[0] = '\0';
    if (cJSON_IsString(t)) {
        snprintf(out, cap, "%s", t->valuestring);
    } else if (cJSON_IsArray(t)) {
        size_t n = 0;
        for (const cJSON *c = t->child; c; c = c->next)
            if (cJSON_IsString(c)) n += (size_t)snprintf(out + n, n < cap ? cap - n : 0, "%s%s", n ? "," : "", c->valuestring);
    }
}

static int load_users(broker_t *b, const cJSON *root, char *err, size_t errlen)
{
    const cJSON *u;
    cJSON_ArrayForEach(u, cJSON_GetObjectItemCaseSensitive(root, "users"))
    {
        const char *name = jstr(u, "name", NULL);
        if (!name) continue;
        char tags[512];
        tags_text(u, tags, sizeof tags);
        const char *hash = jstr(u, "password_hash", NULL);
        const char *pw = jstr(u, "password", NULL);
        int alg = auth_hash_alg_parse(jstr(u, "hashing_algorithm", ""));
        if (alg < 0) {
            snprintf(err, errlen, "definitions: user '%s' has an unknown hashing_algorithm", name);
            return -1;
        }
        char *made = NULL;
        if (!hash && pw) hash = made = auth_hash_password(AUTH_HASH_SHA256, pw, strlen(pw)), alg = AUTH_HASH_SHA256;
        br_user_add(b, name, (auth_hash_alg_t)alg, hash && *hash ? hash : NULL, tags);
        free(made);
    }
    return 0;
}

static int load_permissions(broker_t *b, const cJSON *root, char *err, size_t errlen)
{
    const cJSON *p;
    cJSON_ArrayForEach(p, cJSON_GetObjectItemCaseSensitive(root, "permissions"))
    {
        const char *un = jstr(p, "user", ""), *vn = jstr(p, "vhost", "/");
        user_t *u = br_user(b, un, strlen(un));
        vhost_t *vh = br_vhost(b, vn, strlen(vn));
        if (!u || !vh) {
            log_warn("definitions: permissions for unknown user '%s' or vhost '%s' skipped", un, vn);
            continue;
        }
        if (br_set_permissions(b, u, vh, jstr(p, "configure", ""), jstr(p, "write", ""), jstr(p, "read", ""), err,
                               errlen))
            return -1;
    }
    return 0;
}

static int load_policies(broker_t *b, const cJSON *root, const char *key, bool is_operator, char *err,
                         size_t errlen)
{
    amqp_buf_t def = {0};
    const cJSON *o;
    int rc = 0;
    cJSON_ArrayForEach(o, cJSON_GetObjectItemCaseSensitive(root, key))
    {
        const cJSON *prio = cJSON_GetObjectItemCaseSensitive(o, "priority");
        vhost_t *vh = br_vhost_add(b, jstr(o, "vhost", "/"));
        if (br_policy_set(vh, is_operator, jstr(o, "name", ""), jstr(o, "pattern", ""), jstr(o, "apply-to", "all"),
                          cJSON_IsNumber(prio) ? prio->valueint : 0,
                          json_args(&def, cJSON_GetObjectItemCaseSensitive(o, "definition")), err, errlen)) {
            rc = -1;
            break;
        }
    }
    amqp_buf_free(&def);
    return rc;
}

static int load_topology(broker_t *b, const cJSON *root, char *err, size_t errlen)
{
    amqp_buf_t args = {0};
    br_err_t e;
    const cJSON *o;
    int rc = 0;
    cJSON_ArrayForEach(o, cJSON_GetObjectItemCaseSensitive(root, "exchanges"))
    {
        const char *name = jstr(o, "name", ""), *type = jstr(o, "type", "direct");
        vhost_t *vh = br_vhost_add(b, jstr(o, "vhost", "/"));
        if (br_exchange_declare(vh, NULL, name, strlen(name), type, strlen(type), false, jbool(o, "durable", true),
                                jbool(o, "auto_delete", false), jbool(o, "internal", false),
                                json_args(&args, cJSON_GetObjectItemCaseSensitive(o, "arguments")), &e))
            log_warn("definitions: exchange '%s': %s", name, e.text);
    }
    cJSON_ArrayForEach(o, cJSON_GetObjectItemCaseSensitive(root, "queues"))
    {
        const char *name = jstr(o, "name", "");
        vhost_t *vh = br_vhost_add(b, jstr(o, "vhost", "/"));
        queue_t *q;
        if (br_queue_declare(vh, NULL, 0, name, strlen(name), false, jbool(o, "durable", true), false,
                             jbool(o, "auto_delete", false),
                             json_args(&args, cJSON_GetObjectItemCaseSensitive(o, "arguments")), &q, &e))
            log_warn("definitions: queue '%s': %s", name, e.text);
    }
    cJSON_ArrayForEach(o, cJSON_GetObjectItemCaseSensitive(root, "bindings"))
    {
        const char *src = jstr(o, "source", ""), *dst = jstr(o, "destination", ""), *rk = jstr(o, "routing_key", "");
        vhost_t *vh = br_vhost_add(b, jstr(o, "vhost", "/"));
        bool to_queue = strcmp(jstr(o, "destination_type", "queue"), "exchange") != 0;
        if (br_bind(vh, NULL, 0, to_queue, dst, strlen(dst), src, strlen(src), rk, strlen(rk),
                    json_args(&args, cJSON_GetObjectItemCaseSensitive(o, "arguments")), &e))
            log_warn("definitions: binding %s -> %s: %s", src, dst, e.text);
    }
    amqp_buf_free(&args);
    (void)err;
    (void)errlen;
    return rc;
}

int broker_load_definitions(broker_t *b, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "cannot read definitions file %s", path);
        return -1;
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = malloc((size_t)n + 1);
    if (!text) abort();
    size_t got = fread(text, 1, (size_t)n, f);
    fclose(f);
    text[got] = '\0';
    cJSON *root = cJSON_Parse(text);
    free(text);
    if (!root) {
        snprintf(err, errlen, "definitions file %s is not valid JSON", path);
        return -1;
    }
    const cJSON *v;
    cJSON_ArrayForEach(v, cJSON_GetObjectItemCaseSensitive(root, "vhosts")) br_vhost_add(b, jstr(v, "name", "/"));
    int rc = load_users(b, root, err, errlen);
    if (!rc) rc = load_permissions(b, root, err, errlen);
    if (!rc) rc = load_policies(b, root, "policies", false, err, errlen);
    if (!rc) rc = load_policies(b, root, "operator_policies", true, err, errlen);
    if (!rc) rc = load_topology(b, root, err, errlen);
    cJSON_Delete(root);
    if (!rc) log_info("loaded definitions from %s", path);
    return rc;
}

int broker_boot_defaults(broker_t *b, char *err, size_t errlen)
{
    cfg_t *c = b->cfg;
    vhost_t *vh = br_vhost_add(b, c->default_vhost);
    /* As RabbitMQ: the default user is only created when no users were defined otherwise
     * (e.g. by boot definitions). */
    if (c->default_user[0] && dict_size(&b->users) == 0) {
        char tags[512] = "";
        size_t n = 0;
        for (int i = 0; i < c->n_default_user_tags; i++)
            n += (size_t)snprintf(tags + n, sizeof tags - n, "%s%s", i ? "," : "", c->default_user_tags[i]);
        char *hash = auth_hash_password(AUTH_HASH_SHA256, c->default_pass, strlen(c->default_pass));
        user_t *u = br_user_add(b, c->default_user, AUTH_HASH_SHA256, hash, tags);
        free(hash);
        if (br_set_permissions(b, u, vh, c->default_perm_configure, c->default_perm_write, c->default_perm_read, err,
                               errlen))
            return -1;
    }
    return 0;
}
