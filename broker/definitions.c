/* definitions.c - boot-time definitions: the default user and vhost from config, and
 * RabbitMQ's definitions JSON (users, vhosts with their metadata, permissions, runtime
 * parameters and global parameters, policies, exchanges, queues, bindings) as exported by
 * `rabbitmqctl export_definitions` or the management API.
 *
 * Parameters: every component is kept (META_PARAM_SET), vhost-limits is validated as RabbitMQ
 * validates it; the global parameter cluster_name is skipped (Warren's comes from the
 * configuration: it identifies the cluster on the wire), other global ones are kept.
 *
 * Data flow: the JSON and the defaults become metadata commands (broker/meta.h), handed to a
 * sink. A single node applies them at once (meta_apply, as a submitted command would be). In a
 * cluster only the founding node turns its boot state into commands, and submits them through
 * the metadata log (broker_boot_submit, from the cluster's founded hook), so every node gets the
 * same users (with the same password hashes), vhosts, policies and queue uids from the log or a
 * snapshot; other nodes apply no boot state of their own (cmd/warren-server.c).
 *
 * Invariants: what can be checked without the registry (hashing algorithms, permission regexes,
 * policies) is checked before anything is emitted, and is a boot error, as before; what depends
 * on the registry (a permission for an unknown user, a queue that exists with other properties)
 * is the apply's outcome and only logged. A password in clear is hashed here (SHA-256, a random
 * salt) once, so the command carries the hash, never the password.
 *
 * JSON arguments become AMQP field tables the way RabbitMQ converts them: strings -> longstr,
 * integers -> long (l), other numbers -> double, booleans -> bool, objects -> tables, arrays ->
 * arrays, null -> void.
 *
 * Run-time import (broker_import_definitions, defexport.h): the same loader, first as a dry pass
 * that only validates (so a bad document submits nothing), then submitting every command through
 * meta_submit and counting the answers; the caller is told once the last one has applied. */
#include "broker/broker.h"
#include "broker/admin.h"
#include "broker/defexport.h"
#include "broker/log.h"
#include "broker/meta.h"
#include "broker/params.h"
#include "broker/qq.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
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

amqp_bytes_t definitions_json_table(amqp_buf_t *out, const cJSON *obj) { return json_args(out, obj); }

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

/* A run-time import in progress: the commands submitted and answered so far. */
struct import {
    unsigned submitted, answered, failed;
    bool emitting; /* still submitting: an early last answer must not finish the import */
    char first_error[2048]; /* what (512) + ": " + the error text (1024) */
    broker_import_cb done;
    void *arg;
};

/* Where the commands go: applied here (a single node) or submitted to the cluster (founder),
 * nowhere (dry: validation only), or submitted and counted (imp: a run-time import). */
struct sink {
    broker_t *b;
    bool submit;
    bool dry;
    struct import *imp;
    unsigned users; /* user commands emitted (the default user is only made when none are) */
};

/* One submitted command of an import. */
struct import_cmd {
    struct import *imp;
    char what[512];
};

static void import_finish_if_done(struct import *imp)
{
    if (imp->emitting || imp->answered < imp->submitted) return;
    imp->done(imp->arg, imp->answered - imp->failed, imp->failed, imp->failed ? imp->first_error : NULL);
    free(imp);
}

static void import_answered(void *arg, const br_err_t *err)
{
    struct import_cmd *ic = arg;
    struct import *imp = ic->imp;
    imp->answered++;
    if (err && imp->failed++ == 0) snprintf(imp->first_error, sizeof imp->first_error, "%s: %s", ic->what, err->text);
    free(ic);
    import_finish_if_done(imp);
}

static void submitted(void *arg, const br_err_t *err)
{
    char *what = arg;
    if (err) log_warn("definitions: %s: %s", what, err->text);
    free(what);
}

static void emit(struct sink *k, const struct meta_cmd *c, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void emit(struct sink *k, const struct meta_cmd *c, const char *fmt, ...)
{
    char what[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    if (c->op == META_USER_PUT) k->users++;
    if (k->dry) return;
    if (k->imp) {
        struct import_cmd *ic = malloc(sizeof *ic);
        if (!ic) abort();
        ic->imp = k->imp;
        snprintf(ic->what, sizeof ic->what, "%s", what);
        k->imp->submitted++;
        meta_submit(k->b, c, import_answered, ic);
        return;
    }
    if (k->submit) {
        meta_submit(k->b, c, submitted, strdup(what));
        return;
    }
    amqp_buf_t buf = {0};
    meta_encode(&buf, c);
    br_err_t err;
    if (meta_apply(k->b, 0, buf.data, buf.len, &err)) log_warn("definitions: %s: %s", what, err.text);
    amqp_buf_free(&buf);
}

static void emit_vhost(struct sink *k, const char *name)
{
    struct meta_cmd c = {.op = META_VHOST_ADD, .vhost = AMQP_BYTES_CSTR(name)};
    emit(k, &c, "vhost '%s'", name);
}

/* A vhost entry: RabbitMQ 4 writes its metadata flat and under "metadata"; 3.x only the name.
 * With metadata it replaces the vhost's (VHOST_SET), without it only makes sure it exists. */
static void load_vhost(struct sink *k, const cJSON *v)
{
    const char *name = jstr(v, "name", "/");
    const cJSON *meta = cJSON_GetObjectItemCaseSensitive(v, "metadata");
    const cJSON *src = cJSON_GetObjectItemCaseSensitive(v, "description") ? v : meta;
    if (!cJSON_IsObject(src)) return emit_vhost(k, name);
    char tags[1024];
    tags_text(cJSON_GetObjectItemCaseSensitive(v, "tags") ? v : src, tags, sizeof tags);
    const char *dqt = jstr(v, "default_queue_type", jstr(meta, "default_queue_type", ""));
    if (strcmp(dqt, "undefined") == 0) dqt = ""; /* an unset type as some exports write it */
    amqp_buf_t args = {0};
    struct meta_cmd c;
    meta_vhost_cmd(&c, &args, META_VHOST_SET, name, jstr(src, "description", ""), tags, dqt);
    emit(k, &c, "vhost '%s'", name);
    amqp_buf_free(&args);
}

/* A parameter's value as JSON text (malloc'd). */
static char *value_text(const cJSON *o)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "value");
    char *t = v ? cJSON_PrintUnformatted(v) : strdup("null");
    if (!t) abort();
    return t;
}

/* parameters [{value, vhost, component, name}] and global_parameters [{name, value}]. */
static int load_parameters(struct sink *k, const cJSON *root, char *err, size_t errlen)
{
    amqp_buf_t args = {0};
    const cJSON *o;
    int rc = 0;
    cJSON_ArrayForEach(o, cJSON_GetObjectItemCaseSensitive(root, "parameters"))
    {
        const char *vn = jstr(o, "vhost", "/"), *comp = jstr(o, "component", ""), *name = jstr(o, "name", "");
        char *value = value_text(o), why[512];
        if (rp_validate(comp, name, value, why, sizeof why) != 0) {
            snprintf(err, errlen, "definitions: parameter '%s' of component '%s' in vhost '%s': %s", name, comp, vn, why);
            free(value);
            rc = -1;
            break;
        }
        emit_vhost(k, vn);
        struct meta_cmd c;
        meta_param_cmd(&c, &args, META_PARAM_SET, vn, comp, name, value);
        emit(k, &c, "parameter '%s' of component '%s' in vhost '%s'", name, comp, vn);
        free(value);
    }
    const cJSON *globals = rc ? NULL : cJSON_GetObjectItemCaseSensitive(root, "global_parameters");
    cJSON_ArrayForEach(o, globals)
    {
        const char *name = jstr(o, "name", "");
        if (strcmp(name, "cluster_name") == 0) continue; /* set by configuration */
        char *value = value_text(o);
        struct meta_cmd c;
        meta_param_cmd(&c, &args, META_PARAM_SET, NULL, NULL, name, value);
        emit(k, &c, "global parameter '%s'", name);
        free(value);
    }
    amqp_buf_free(&args);
    return rc;
}

static int load_users(struct sink *k, const cJSON *root, char *err, size_t errlen)
{
    amqp_buf_t args = {0};
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
            amqp_buf_free(&args);
            return -1;
        }
        char *made = NULL;
        if (!hash && pw) hash = made = auth_hash_password(AUTH_HASH_SHA256, pw, strlen(pw)), alg = AUTH_HASH_SHA256;
        struct meta_cmd c;
        meta_user_cmd(&c, &args, META_USER_PUT, name, hash ? hash : "", alg, tags);
        emit(k, &c, "user '%s'", name);
        free(made);
    }
    amqp_buf_free(&args);
    return 0;
}

/* A permission regex that does not compile stops the boot, as before. */
static int check_regex(const char *pattern, char *err, size_t errlen)
{
    auth_regex_t *re = auth_regex_compile(pattern, err, errlen);
    if (!re) return -1;
    auth_regex_free(re);
    return 0;
}

static int load_permissions(struct sink *k, const cJSON *root, char *err, size_t errlen)
{
    amqp_buf_t args = {0};
    const cJSON *p;
    int rc = 0;
    cJSON_ArrayForEach(p, cJSON_GetObjectItemCaseSensitive(root, "permissions"))
    {
        const char *un = jstr(p, "user", ""), *vn = jstr(p, "vhost", "/");
        const char *cf = jstr(p, "configure", ""), *wr = jstr(p, "write", ""), *rd = jstr(p, "read", "");
        if (check_regex(cf, err, errlen) || check_regex(wr, err, errlen) || check_regex(rd, err, errlen)) {
            rc = -1;
            break;
        }
        struct meta_cmd c;
        meta_perm_cmd(&c, &args, vn, un, cf, wr, rd);
        emit(k, &c, "permissions of user '%s' in vhost '%s' skipped", un, vn);
    }
    amqp_buf_free(&args);
    return rc;
}

/* topic_permissions [{user, vhost, exchange, write, read}] (broker/topicperm.h). */
static int load_topic_permissions(struct sink *k, const cJSON *root, char *err, size_t errlen)
{
    amqp_buf_t args = {0};
    const cJSON *p;
    int rc = 0;
    cJSON_ArrayForEach(p, cJSON_GetObjectItemCaseSensitive(root, "topic_permissions"))
    {
        const char *un = jstr(p, "user", ""), *vn = jstr(p, "vhost", "/"), *xn = jstr(p, "exchange", "");
        const char *wr = jstr(p, "write", ""), *rd = jstr(p, "read", "");
        if (check_regex(wr, err, errlen) || check_regex(rd, err, errlen)) {
            rc = -1;
            break;
        }
        struct meta_cmd c;
        meta_topic_perm_cmd(&c, &args, vn, un, xn, wr, rd);
        emit(k, &c, "topic permissions of user '%s' in vhost '%s'", un, vn);
    }
    amqp_buf_free(&args);
    return rc;
}

static int load_policies(struct sink *k, const cJSON *root, const char *key, bool is_operator, char *err,
                         size_t errlen)
{
    amqp_buf_t def = {0}, args = {0};
    const cJSON *o;
    int rc = 0;
    cJSON_ArrayForEach(o, cJSON_GetObjectItemCaseSensitive(root, key))
    {
        const cJSON *prio = cJSON_GetObjectItemCaseSensitive(o, "priority");
        const char *vn = jstr(o, "vhost", "/"), *name = jstr(o, "name", ""), *pattern = jstr(o, "pattern", "");
        const char *apply_to = jstr(o, "apply-to", "all");
        amqp_bytes_t d = json_args(&def, cJSON_GetObjectItemCaseSensitive(o, "definition"));
        if (br_policy_check(name, pattern, apply_to, d, err, errlen)) {
            rc = -1;
            break;
        }
        emit_vhost(k, vn);
        struct meta_cmd c;
        meta_policy_cmd(&c, &args, vn, is_operator, name, pattern, apply_to, cJSON_IsNumber(prio) ? prio->valueint : 0, d);
        emit(k, &c, "policy '%s' in vhost '%s'", name, vn);
    }
    amqp_buf_free(&def);
    amqp_buf_free(&args);
    return rc;
}

/* A run-time import declares quorum queues as a client would: members chosen now (at boot an
 * empty list means this node alone, as before). */
static amqp_bytes_t quorum_members(broker_t *b, amqp_bytes_t args, amqp_buf_t *out)
{
    amqp_table_t t = {0};
    if (args.len && amqp_table_parse(args, &t) == 0 && qq_args_quorum(&t)) qq_choose_members(b, &t, out);
    amqp_table_free(&t);
    return (amqp_bytes_t){out->data, out->len};
}

static void load_topology(struct sink *k, const cJSON *root)
{
    amqp_buf_t args = {0};
    const cJSON *o;
    cJSON_ArrayForEach(o, cJSON_GetObjectItemCaseSensitive(root, "exchanges"))
    {
        const char *name = jstr(o, "name", ""), *vn = jstr(o, "vhost", "/");
        emit_vhost(k, vn);
        struct meta_cmd c = {.op = META_X_DECLARE, .vhost = AMQP_BYTES_CSTR(vn), .name = AMQP_BYTES_CSTR(name),
                             .name2 = AMQP_BYTES_CSTR(jstr(o, "type", "direct")), .home = k->b->self_node};
        c.flags = (jbool(o, "durable", true) ? META_F_DURABLE : 0) | (jbool(o, "auto_delete", false) ? META_F_AUTO_DELETE : 0) |
                  (jbool(o, "internal", false) ? META_F_INTERNAL : 0);
        c.args = json_args(&args, cJSON_GetObjectItemCaseSensitive(o, "arguments"));
        emit(k, &c, "exchange '%s'", name);
    }
    cJSON_ArrayForEach(o, cJSON_GetObjectItemCaseSensitive(root, "queues"))
    {
        const char *name = jstr(o, "name", ""), *vn = jstr(o, "vhost", "/");
        emit_vhost(k, vn);
        struct meta_cmd c = {.op = META_Q_DECLARE, .vhost = AMQP_BYTES_CSTR(vn), .name = AMQP_BYTES_CSTR(name),
                             .home = k->b->self_node};
        c.flags = (jbool(o, "durable", true) ? META_F_DURABLE : 0) | (jbool(o, "auto_delete", false) ? META_F_AUTO_DELETE : 0);
        c.args = json_args(&args, cJSON_GetObjectItemCaseSensitive(o, "arguments"));
        amqp_buf_t members = {0};
        if (k->imp) c.key = quorum_members(k->b, c.args, &members);
        emit(k, &c, "queue '%s' in vhost '%s'", name, vn);
        amqp_buf_free(&members);
    }
    cJSON_ArrayForEach(o, cJSON_GetObjectItemCaseSensitive(root, "bindings"))
    {
        const char *src = jstr(o, "source", ""), *dst = jstr(o, "destination", ""), *vn = jstr(o, "vhost", "/");
        emit_vhost(k, vn);
        bool to_queue = strcmp(jstr(o, "destination_type", "queue"), "exchange") != 0;
        struct meta_cmd c = {.op = META_BIND, .vhost = AMQP_BYTES_CSTR(vn), .name = AMQP_BYTES_CSTR(dst),
                             .name2 = AMQP_BYTES_CSTR(src), .key = AMQP_BYTES_CSTR(jstr(o, "routing_key", "")),
                             .flags = to_queue ? META_F_DEST_QUEUE : 0};
        c.args = json_args(&args, cJSON_GetObjectItemCaseSensitive(o, "arguments"));
        emit(k, &c, "binding %s -> %s", src, dst);
    }
    amqp_buf_free(&args);
}

/* Names are AMQP short strings: at most 255 bytes, and only some may be empty. */
static int check_name(const cJSON *o, const char *key, const char *dflt, bool may_be_empty, const char *what,
                      char *err, size_t errlen)
{
    const char *name = jstr(o, key, dflt);
    size_t n = strlen(name);
    if ((n || may_be_empty) && n <= 255) return 0;
    snprintf(err, errlen, "definitions: %s %s \"%.64s%s\" %s", what, key, name, n > 64 ? "..." : "",
             n ? "is longer than 255 bytes" : "is empty");
    return -1;
}

/* Every name the document uses, checked before anything is emitted. */
static int check_names(const cJSON *root, char *err, size_t errlen)
{
    static const struct {
        const char *section, *key, *dflt;
        bool may_be_empty;
    } rules[] = {
        {"vhosts", "name", "/", false},          {"users", "name", "x", false},
        {"parameters", "vhost", "/", false},     {"parameters", "name", "", false},
        {"parameters", "component", "", false},  {"global_parameters", "name", "", false},
        {"permissions", "user", "", false},      {"permissions", "vhost", "/", false},
        {"policies", "name", "", false},         {"policies", "vhost", "/", false},
        {"operator_policies", "name", "", false}, {"operator_policies", "vhost", "/", false},
        {"exchanges", "name", "", false},        {"exchanges", "vhost", "/", false},
        {"queues", "name", "", false},           {"queues", "vhost", "/", false},
        {"bindings", "source", "", false},       {"bindings", "destination", "", false},
        {"bindings", "vhost", "/", false},       {"bindings", "routing_key", "", true},
    };
    for (size_t i = 0; i < sizeof rules / sizeof rules[0]; i++) {
        const cJSON *o;
        cJSON_ArrayForEach(o, cJSON_GetObjectItemCaseSensitive(root, rules[i].section))
        {
            if (check_name(o, rules[i].key, rules[i].dflt, rules[i].may_be_empty, rules[i].section, err, errlen))
                return -1;
        }
    }
    return 0;
}

static int definitions_emit_root(struct sink *k, const cJSON *root, char *err, size_t errlen)
{
    if (!cJSON_IsObject(root)) {
        snprintf(err, errlen, "definitions must be a JSON object");
        return -1;
    }
    if (check_names(root, err, errlen) != 0) return -1;
    const cJSON *v;
    cJSON_ArrayForEach(v, cJSON_GetObjectItemCaseSensitive(root, "vhosts")) load_vhost(k, v);
    int rc = load_users(k, root, err, errlen);
    if (!rc) rc = load_permissions(k, root, err, errlen);
    if (!rc) rc = load_topic_permissions(k, root, err, errlen);
    if (!rc) rc = load_parameters(k, root, err, errlen);
    if (!rc) rc = load_policies(k, root, "policies", false, err, errlen);
    if (!rc) rc = load_policies(k, root, "operator_policies", true, err, errlen);
    if (!rc) load_topology(k, root);
    return rc;
}

static int definitions_emit(struct sink *k, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "cannot read definitions file %s", path);
        return -1;
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (!text) {
        fclose(f);
        snprintf(err, errlen, "cannot read definitions file %s", path);
        return -1;
    }
    size_t got = fread(text, 1, (size_t)n, f);
    fclose(f);
    text[got] = '\0';
    cJSON *root = cJSON_Parse(text);
    free(text);
    if (!root) {
        snprintf(err, errlen, "definitions file %s is not valid JSON", path);
        return -1;
    }
    int rc = definitions_emit_root(k, root, err, errlen);
    cJSON_Delete(root);
    if (!rc) log_info("%s definitions from %s", k->submit ? "submitted" : "loaded", path);
    return rc;
}

int broker_import_definitions(broker_t *b, const cJSON *root, broker_import_cb done, void *arg, char *err,
                              size_t errlen)
{
    struct sink dry = {.b = b, .dry = true};
    if (definitions_emit_root(&dry, root, err, errlen) != 0) return -1;
    struct import *imp = calloc(1, sizeof *imp);
    if (!imp) abort();
    imp->done = done;
    imp->arg = arg;
    imp->emitting = true;
    struct sink k = {.b = b, .imp = imp};
    definitions_emit_root(&k, root, err, errlen); /* validated above: cannot fail now */
    log_info("importing definitions: %u command(s) submitted", imp->submitted);
    imp->emitting = false;
    import_finish_if_done(imp);
    return 0;
}

/* The default vhost, and the default user with its permissions when add_user says so. */
static int defaults_emit(struct sink *k, bool add_user, char *err, size_t errlen)
{
    cfg_t *c = k->b->cfg;
    /* RabbitMQ's description for it, given on the first boot (when the default user is made
     * too: the server may have created the bare vhost already); later boots leave it as it is. */
    amqp_buf_t vargs = {0};
    struct meta_cmd vc;
    meta_vhost_cmd(&vc, &vargs, add_user ? META_VHOST_SET : META_VHOST_ADD, c->default_vhost, "Default virtual host",
                   NULL, NULL);
    emit(k, &vc, "vhost '%s'", c->default_vhost);
    amqp_buf_free(&vargs);
    if (!add_user || !c->default_user[0]) return 0;
    char tags[512] = "";
    size_t n = 0;
    for (int i = 0; i < c->n_default_user_tags; i++)
        n += (size_t)snprintf(tags + n, sizeof tags - n, "%s%s", i ? "," : "", c->default_user_tags[i]);
    if (check_regex(c->default_perm_configure, err, errlen) || check_regex(c->default_perm_write, err, errlen) ||
        check_regex(c->default_perm_read, err, errlen))
        return -1;
    char *hash = auth_hash_password(AUTH_HASH_SHA256, c->default_pass, strlen(c->default_pass));
    amqp_buf_t args = {0};
    struct meta_cmd cmd;
    meta_user_cmd(&cmd, &args, META_USER_PUT, c->default_user, hash, AUTH_HASH_SHA256, tags);
    emit(k, &cmd, "default user '%s'", c->default_user);
    meta_perm_cmd(&cmd, &args, c->default_vhost, c->default_user, c->default_perm_configure, c->default_perm_write,
                  c->default_perm_read);
    emit(k, &cmd, "permissions of the default user");
    amqp_buf_free(&args);
    free(hash);
    return 0;
}

int broker_load_definitions(broker_t *b, const char *path, char *err, size_t errlen)
{
    struct sink k = {.b = b};
    return definitions_emit(&k, path, err, errlen);
}

int broker_boot_defaults(broker_t *b, char *err, size_t errlen)
{
    /* As RabbitMQ: the default user is only created when no users were defined otherwise
     * (e.g. by boot definitions, or stored from an earlier run). */
    struct sink k = {.b = b};
    return defaults_emit(&k, dict_size(&b->users) == 0, err, errlen);
}

int broker_boot_submit(broker_t *b, char *err, size_t errlen)
{
    struct sink k = {.b = b, .submit = true};
    if (b->cfg->load_definitions[0] && definitions_emit(&k, b->cfg->load_definitions, err, errlen) != 0) return -1;
    return defaults_emit(&k, k.users == 0, err, errlen);
}
