/* paginate.c - RabbitMQ's list parameters, applied to any JSON array an endpoint built:
 * sort / sort_reverse, columns, and with page: name / use_regex filtering and pagination.
 *
 * Data flow: endpoint -> cJSON array -> mgmt_reply_list: sorted (by default on vhost, then
 * name, as RabbitMQ lists), filtered and cut into a page when "page" is given, answered as
 * RabbitMQ's page object {filtered_count, item_count, items, page, page_count, page_size,
 * total_count} (bindings, which have no name: by source, routing key, destination kind and
 * destination, as RabbitMQ lists them); "columns" keeps only the named fields (dotted paths
 * reach into objects).
 *
 * Errors as RabbitMQ 3.10.8: 400 invalid_pagination_parameters (page < 1, page_size outside
 * 1..500), 400 page_out_of_range, 400 bad_request for unparsable numbers or a bad regex.
 *
 * mgmt_page_slice and mgmt_keep_columns are shared with qlist.c, which answers large queue
 * listings without building one cJSON tree for all of them. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mgmt/internal.h"

#define MGMT_PAGE_SIZE_DEFAULT 100
#define MGMT_PAGE_SIZE_MAX 500

/* The value at a dotted path ("message_stats.publish"), or NULL. */
static const cJSON *at_path(const cJSON *o, const char *path)
{
    char key[256];
    while (o && *path) {
        size_t n = strcspn(path, ".");
        if (n >= sizeof key) return NULL;
        memcpy(key, path, n);
        key[n] = '\0';
        o = cJSON_IsObject(o) ? cJSON_GetObjectItemCaseSensitive(o, key) : NULL;
        path += n + (path[n] == '.');
    }
    return o;
}

/* Missing values first, then numbers by value, then strings by bytes. */
static int cmp_values(const cJSON *a, const cJSON *b)
{
    int ka = !a ? 0 : cJSON_IsNumber(a) ? 1 : cJSON_IsString(a) ? 2 : 3;
    int kb = !b ? 0 : cJSON_IsNumber(b) ? 1 : cJSON_IsString(b) ? 2 : 3;
    if (ka != kb) return ka < kb ? -1 : 1;
    if (ka == 1) return a->valuedouble < b->valuedouble ? -1 : a->valuedouble > b->valuedouble;
    if (ka == 2) return strcmp(a->valuestring, b->valuestring);
    return 0;
}

struct sort_item {
    cJSON *item;
    size_t index; /* keeps equal items in their order */
};

static const char *sort_key;
static bool sort_reverse;
/* Bindings have no name: RabbitMQ lists them in its route table's order (source, routing key,
 * destination kind, destination); other objects have none of these fields. */
static const char *const binding_keys[] = {"source", "routing_key", "destination_type", "destination"};

static int cmp_items(const void *pa, const void *pb)
{
    const struct sort_item *a = pa, *b = pb;
    int c;
    if (sort_key) {
        c = cmp_values(at_path(a->item, sort_key), at_path(b->item, sort_key));
    } else {
        c = cmp_values(at_path(a->item, "vhost"), at_path(b->item, "vhost"));
        if (!c) c = cmp_values(at_path(a->item, "name"), at_path(b->item, "name"));
        for (size_t k = 0; !c && k < sizeof binding_keys / sizeof binding_keys[0]; k++)
            c = cmp_values(at_path(a->item, binding_keys[k]), at_path(b->item, binding_keys[k]));
    }
    if (sort_reverse) c = -c;
    return c ? c : (a->index < b->index ? -1 : 1);
}

static void sort_array(cJSON *arr, const char *key, bool reverse)
{
    size_t n = (size_t)cJSON_GetArraySize(arr);
    if (n < 2) return;
    struct sort_item *v = malloc(n * sizeof *v);
    if (!v) abort();
    size_t i = 0;
    for (cJSON *c = arr->child; c; c = c->next, i++) v[i] = (struct sort_item){c, i};
    sort_key = key;
    sort_reverse = reverse;
    qsort(v, n, sizeof *v, cmp_items); /* the loop thread only: the statics are safe */
    sort_key = NULL;
    for (i = 0; i < n; i++) cJSON_DetachItemViaPointer(arr, v[i].item);
    for (i = 0; i < n; i++) cJSON_AddItemToArray(arr, v[i].item);
    free(v);
}

/* Copies the value at path from src into dst, creating the objects on the way. */
static void copy_path(cJSON *dst, const cJSON *src, const char *path)
{
    const cJSON *v = at_path(src, path);
    if (!v) return;
    char key[256];
    const char *p = path;
    for (;;) {
        size_t n = strcspn(p, ".");
        if (n >= sizeof key) return;
        memcpy(key, p, n);
        key[n] = '\0';
        if (!p[n]) break;
        cJSON *next = cJSON_GetObjectItemCaseSensitive(dst, key);
        if (!next) next = cJSON_AddObjectToObject(dst, key);
        if (!cJSON_IsObject(next)) return;
        dst = next;
        p += n + 1;
    }
    if (!cJSON_GetObjectItemCaseSensitive(dst, key)) cJSON_AddItemToObject(dst, key, cJSON_Duplicate(v, true));
}

void mgmt_keep_columns(cJSON *arr, const char *columns)
{
    for (cJSON *c = arr->child; c; c = c->next) {
        cJSON *kept = cJSON_CreateObject();
        const char *p = columns;
        while (*p) {
            size_t n = strcspn(p, ",");
            char path[256];
            if (n && n < sizeof path) {
                memcpy(path, p, n);
                path[n] = '\0';
                copy_path(kept, c, path);
            }
            p += n + (p[n] == ',');
        }
        cJSON_ReplaceItemViaPointer(arr, c, kept);
        c = kept;
    }
}

static bool parse_uint(const char *s, long *out)
{
    char *end;
    if (!*s) return false;
    long v = strtol(s, &end, 10);
    if (*end || v < -1000000000L || v > 1000000000L) return false;
    *out = v;
    return true;
}

/* Drops the items whose name does not match (substring, or regex with use_regex=true). */
static bool filter_by_name(mgmt_req_t *r, cJSON *arr, const char *pattern, bool regex)
{
    auth_regex_t *re = NULL;
    if (regex) {
        char err[256];
        if (!(re = auth_regex_compile(pattern, err, sizeof err))) {
            mgmt_reply_error(r, 400, "bad_request", err);
            return false;
        }
    }
    for (cJSON *c = arr->child; c;) {
        cJSON *next = c->next;
        const cJSON *name = at_path(c, "name");
        const char *s = cJSON_IsString(name) ? name->valuestring : "";
        bool keep = regex ? auth_regex_match(re, s, strlen(s)) : strstr(s, pattern) != NULL;
        if (!keep) cJSON_Delete(cJSON_DetachItemViaPointer(arr, c));
        c = next;
    }
    if (re) auth_regex_free(re);
    return true;
}

bool mgmt_page_slice(mgmt_req_t *r, const char *page_s, const char *size_s, long n, struct mgmt_page *pg)
{
    long page, size = MGMT_PAGE_SIZE_DEFAULT;
    if (!parse_uint(page_s, &page) || (size_s && !parse_uint(size_s, &size))) {
        mgmt_reply_error(r, 400, "bad_request", "Pagination parameters are invalid");
        return false;
    }
    if (page < 1 || size < 1 || size > MGMT_PAGE_SIZE_MAX) {
        char reason[160];
        snprintf(reason, sizeof reason, "Invalid pagination parameters: page number %ld, page size %s", page,
                 size_s ? size_s : "undefined");
        mgmt_reply_error(r, 400, "invalid_pagination_parameters", reason);
        return false;
    }
    long pages = (n + size - 1) / size;
    if (page > pages && !(page == 1 && n == 0)) {
        char reason[160];
        snprintf(reason, sizeof reason, "Page out of range, page: %ld page size: %ld, len: %ld", page, size, n);
        mgmt_reply_error(r, 400, "page_out_of_range", reason);
        return false;
    }
    pg->page = page, pg->size = size, pg->pages = pages, pg->filtered = n;
    pg->first = (page - 1) * size;
    pg->count = n - pg->first < size ? n - pg->first : size;
    if (pg->count < 0) pg->count = 0;
    return true;
}

/* Cuts arr into the page; false after answering an error. */
static bool paginate(mgmt_req_t *r, cJSON **arr, const char *page_s, const char *size_s)
{
    struct mgmt_page pg;
    if (!mgmt_page_slice(r, page_s, size_s, cJSON_GetArraySize(*arr), &pg)) return false;
    cJSON *items = cJSON_CreateArray();
    long i = 0;
    for (cJSON *c = (*arr)->child; c; i++) {
        cJSON *next = c->next;
        if (i >= pg.first && i < pg.first + pg.count) cJSON_AddItemToArray(items, cJSON_DetachItemViaPointer(*arr, c));
        c = next;
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "filtered_count", (double)pg.filtered);
    cJSON_AddNumberToObject(o, "item_count", cJSON_GetArraySize(items));
    cJSON_AddItemToObject(o, "items", items);
    cJSON_AddNumberToObject(o, "page", (double)pg.page);
    cJSON_AddNumberToObject(o, "page_count", (double)pg.pages);
    cJSON_AddNumberToObject(o, "page_size", (double)pg.size);
    cJSON_Delete(*arr);
    *arr = o;
    return true;
}

void mgmt_reply_list(mgmt_req_t *r, cJSON *arr)
{
    char sort[256], reverse[16], columns[1024], page[32], size[32], name[512], regex[16];
    const char *sort_by = mgmt_query(r, "sort", sort, sizeof sort);
    const char *rev = mgmt_query(r, "sort_reverse", reverse, sizeof reverse);
    sort_array(arr, sort_by && *sort_by ? sort_by : NULL, rev && strcmp(rev, "true") == 0);
    const char *page_s = mgmt_query(r, "page", page, sizeof page);
    if (page_s) {
        long total = cJSON_GetArraySize(arr);
        const char *pattern = mgmt_query(r, "name", name, sizeof name);
        const char *use_regex = mgmt_query(r, "use_regex", regex, sizeof regex);
        if (pattern && *pattern && !filter_by_name(r, arr, pattern, use_regex && strcmp(use_regex, "true") == 0)) {
            cJSON_Delete(arr);
            return;
        }
        if (!paginate(r, &arr, page_s, mgmt_query(r, "page_size", size, sizeof size))) {
            cJSON_Delete(arr);
            return;
        }
        cJSON_AddNumberToObject(arr, "total_count", (double)total);
    }
    const char *cols = mgmt_query(r, "columns", columns, sizeof columns);
    if (cols && *cols) mgmt_keep_columns(page_s ? cJSON_GetObjectItem(arr, "items") : arr, cols);
    mgmt_reply_json(r, 200, arr);
}
