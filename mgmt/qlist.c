/* qlist.c - GET /api/queues[/{vhost}] for many queues (prefix qlist_, entry mgmt_qlist_reply).
 *
 * Why: the general listing path (api_read.c -> paginate.c) builds one cJSON object per queue
 * (about a hundred allocations each), sorts, filters and pages that tree, then prints it; with
 * 10,000 queues the allocator dominates and a page of 100 costs as much as the whole list.
 *
 * Data flow here: the visible queues are collected as pointers, sorted by RabbitMQ's default
 * order (vhost, then name) or by the "name" / "vhost" sort key, filtered by name and cut into
 * the page before any JSON exists; then each queue of the answer is built by json.c
 * (mgmt_json_queue, the same shape as the general path), trimmed to "columns", printed into
 * one buffer and freed at once, so the allocator only ever holds one queue's tree.
 *
 * Invariant: the answer is byte-for-byte what mgmt_reply_list would give for the same
 * parameters (same order - ties keep the registry's order -, same page object, same 400s).
 * Other sort keys are left to the general path (mgmt_qlist_reply returns false).
 *
 * In a cluster (mgmt_qlist_get) the figures of queues homed on other nodes, and the other
 * nodes' share of quorum queue counters, are gathered first (qgather.c). Since the fast path's
 * order needs no figures, a paged request is planned with the same collect / sort / filter /
 * page steps and only that page's queues are asked for; the answer is then built by running
 * the steps again once the figures are in (queue pointers are never kept across the wait; a
 * queue created meanwhile that slides into the page just shows without remote figures).
 * Unpaged requests and other sort keys need every queue's figures: all are asked for. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mgmt/internal.h"
#include "mgmt/qgather.h"

struct qlist_item {
    queue_t *q;
    size_t index; /* collection order: keeps ties where the general path keeps them */
};

struct qlist {
    struct qlist_item *items;
    size_t n, cap;
};

enum qlist_order { QLIST_DEFAULT, QLIST_NAME, QLIST_VHOST };

struct qlist_params {
    char sort[256], reverse[16], columns[1024], page[32], size[32], name[512], regex[16];
    const char *sort_s, *rev_s, *cols_s, *page_s, *size_s, *name_s, *regex_s;
};

static void qlist_read_params(mgmt_req_t *r, struct qlist_params *p)
{
    p->sort_s = mgmt_query(r, "sort", p->sort, sizeof p->sort);
    p->rev_s = mgmt_query(r, "sort_reverse", p->reverse, sizeof p->reverse);
    p->cols_s = mgmt_query(r, "columns", p->columns, sizeof p->columns);
    p->page_s = mgmt_query(r, "page", p->page, sizeof p->page);
    p->size_s = mgmt_query(r, "page_size", p->size, sizeof p->size);
    p->name_s = mgmt_query(r, "name", p->name, sizeof p->name);
    p->regex_s = mgmt_query(r, "use_regex", p->regex, sizeof p->regex);
}

/* The order asked for, or -1 when only the general path knows it. */
static int qlist_order(const struct qlist_params *p)
{
    if (!p->sort_s || !*p->sort_s) return QLIST_DEFAULT;
    if (strcmp(p->sort_s, "name") == 0) return QLIST_NAME;
    if (strcmp(p->sort_s, "vhost") == 0) return QLIST_VHOST;
    return -1;
}

static void qlist_push(struct qlist *l, queue_t *q)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 1024;
        l->items = realloc(l->items, l->cap * sizeof *l->items);
        if (!l->items) abort();
    }
    l->items[l->n] = (struct qlist_item){q, l->n};
    l->n++;
}

static void qlist_add_vhost(struct qlist *l, vhost_t *vh)
{
    size_t pos = 0;
    void *v;
    while (dict_next(&vh->queues, &pos, NULL, NULL, &v)) qlist_push(l, v);
}

/* The same vhosts, in the same order, as api_read.c's each_vhost for object listings. */
static void qlist_collect(mgmt_req_t *r, bool scoped, struct qlist *l)
{
    if (scoped) {
        vhost_t *vh = br_vhost(r->m->b, r->params[0], strlen(r->params[0]));
        if (vh) qlist_add_vhost(l, vh);
        return;
    }
    size_t pos = 0;
    void *v;
    while (dict_next(&r->m->b->vhosts, &pos, NULL, NULL, &v))
        if (mgmt_vhost_visible(r, v, false)) qlist_add_vhost(l, v);
}

static enum qlist_order qlist_sort_by;
static bool qlist_sort_reverse;

static int qlist_cmp(const void *pa, const void *pb)
{
    const struct qlist_item *a = pa, *b = pb;
    int c = 0;
    if (qlist_sort_by != QLIST_NAME) c = strcmp(a->q->vh->name, b->q->vh->name);
    if (!c && qlist_sort_by != QLIST_VHOST) c = strcmp(a->q->name, b->q->name);
    if (qlist_sort_reverse) c = -c;
    return c ? c : (a->index < b->index ? -1 : 1);
}

static void qlist_sort(struct qlist *l, enum qlist_order by, bool reverse)
{
    qlist_sort_by = by;
    qlist_sort_reverse = reverse;
    if (l->n > 1) /* qsort with a NULL base (no queues) is undefined behaviour: UBSan stops the node */
        qsort(l->items, l->n, sizeof *l->items, qlist_cmp); /* the loop thread only: statics are safe */
}

/* Keeps the queues whose name matches (substring, or regex); false after answering a 400. */
static bool qlist_filter(mgmt_req_t *r, struct qlist *l, const char *pattern, bool regex)
{
    auth_regex_t *re = NULL;
    char err[256];
    if (regex && !(re = auth_regex_compile(pattern, err, sizeof err))) {
        mgmt_reply_error(r, 400, "bad_request", err);
        return false;
    }
    size_t k = 0;
    for (size_t i = 0; i < l->n; i++) {
        const char *name = l->items[i].q->name;
        bool keep = regex ? auth_regex_match(re, name, strlen(name)) : strstr(name, pattern) != NULL;
        if (keep) l->items[k++] = l->items[i];
    }
    l->n = k;
    if (re) auth_regex_free(re);
    return true;
}

/* ---- output ---- */

struct qlist_buf {
    char *p;
    size_t len, cap;
};

static void qlist_append(struct qlist_buf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 65536;
        while (cap < b->len + n + 1) cap *= 2;
        b->p = realloc(b->p, cap);
        if (!b->p) abort();
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void qlist_appendf(struct qlist_buf *b, const char *key, long v)
{
    char num[64];
    int n = snprintf(num, sizeof num, "\"%s\":%ld", key, v);
    qlist_append(b, num, (size_t)n);
}

/* Prints items[first, first+count) as a JSON array, one queue tree at a time. */
static void qlist_print_items(mgmt_t *m, const struct qlist *l, size_t first, size_t count, const char *cols,
                              struct qlist_buf *b)
{
    qlist_append(b, "[", 1);
    for (size_t i = first; i < first + count; i++) {
        cJSON *o = mgmt_json_queue(m, l->items[i].q);
        if (cols) { /* trimmed as mgmt_reply_list trims: through a one-item array */
            cJSON *one = cJSON_CreateArray();
            cJSON_AddItemToArray(one, o);
            mgmt_keep_columns(one, cols);
            o = cJSON_DetachItemFromArray(one, 0);
            cJSON_Delete(one);
        }
        char *text = cJSON_PrintUnformatted(o);
        cJSON_Delete(o);
        if (!text) abort();
        if (i > first) qlist_append(b, ",", 1);
        qlist_append(b, text, strlen(text));
        free(text);
    }
    qlist_append(b, "]", 1);
}

/* The page object, keys in cJSON's order of the general path. */
static void qlist_print_page(mgmt_t *m, const struct qlist *l, const struct mgmt_page *pg, long total,
                             const char *cols, struct qlist_buf *b)
{
    qlist_append(b, "{", 1);
    qlist_appendf(b, "filtered_count", pg->filtered);
    qlist_append(b, ",", 1);
    qlist_appendf(b, "item_count", pg->count);
    qlist_append(b, ",\"items\":", 9);
    qlist_print_items(m, l, (size_t)pg->first, (size_t)pg->count, cols, b);
    qlist_append(b, ",", 1);
    qlist_appendf(b, "page", pg->page);
    qlist_append(b, ",", 1);
    qlist_appendf(b, "page_count", pg->pages);
    qlist_append(b, ",", 1);
    qlist_appendf(b, "page_size", pg->size);
    qlist_append(b, ",", 1);
    qlist_appendf(b, "total_count", total);
    qlist_append(b, "}", 1);
}

/* Filters and pages l as mgmt_reply_list would, into b; false after answering an error. */
static bool qlist_paged(mgmt_req_t *r, struct qlist *l, const struct qlist_params *p, const char *cols,
                        struct qlist_buf *b)
{
    long total = (long)l->n;
    bool regex = p->regex_s && strcmp(p->regex_s, "true") == 0;
    if (p->name_s && *p->name_s && !qlist_filter(r, l, p->name_s, regex)) return false;
    struct mgmt_page pg;
    if (!mgmt_page_slice(r, p->page_s, p->size_s, (long)l->n, &pg)) return false;
    qlist_print_page(r->m, l, &pg, total, cols, b);
    return true;
}

bool mgmt_qlist_reply(mgmt_req_t *r, bool scoped)
{
    struct qlist_params p;
    qlist_read_params(r, &p);
    int order = qlist_order(&p);
    if (order < 0) return false;
    struct qlist l = {0};
    qlist_collect(r, scoped, &l);
    qlist_sort(&l, (enum qlist_order)order, p.rev_s && strcmp(p.rev_s, "true") == 0);
    const char *cols = p.cols_s && *p.cols_s ? p.cols_s : NULL;
    struct qlist_buf b = {0};
    bool ok = true;
    if (p.page_s) ok = qlist_paged(r, &l, &p, cols, &b);
    else qlist_print_items(r->m, &l, 0, l.n, cols, &b);
    if (ok) mgmt_reply_asset(r, 200, "application/json", b.p, b.len, "");
    free(b.p);
    free(l.items);
    return true;
}

/* ---- cluster: gather the figures, then answer ---- */

static void qlist_gathered(mgmt_req_t *r, void *arg)
{
    (void)arg;
    if (!mgmt_qlist_reply(r, r->params[0] != NULL)) mgmt_queues_general(r);
}

/* page / page_size as paginate.c reads them; false when they are not a valid page (the answer
 * built afterwards gives the 400, or the empty page, itself). */
static bool qlist_plan_page(const struct qlist_params *p, size_t n, size_t *first, size_t *count)
{
    char *end;
    long page = strtol(p->page_s, &end, 10), size = 100;
    if (end == p->page_s || *end || page < 1) return false;
    if (p->size_s && ((size = strtol(p->size_s, &end, 10)) < 1 || end == p->size_s || *end)) return false;
    if ((size_t)(page - 1) * (size_t)size >= n) return false;
    *first = (size_t)(page - 1) * (size_t)size;
    *count = n - *first < (size_t)size ? n - *first : (size_t)size;
    return true;
}

/* The queues of the requested page, in the order the answer shows them; false when the fast
 * path cannot tell them (other sort keys, no paging, bad parameters). */
static bool qlist_plan(mgmt_req_t *r, bool scoped, struct qlist *l, size_t *first, size_t *count)
{
    struct qlist_params p;
    qlist_read_params(r, &p);
    int order = qlist_order(&p);
    if (order < 0 || !p.page_s) return false;
    qlist_collect(r, scoped, l);
    qlist_sort(l, (enum qlist_order)order, p.rev_s && strcmp(p.rev_s, "true") == 0);
    if (p.name_s && *p.name_s) {
        bool regex = p.regex_s && strcmp(p.regex_s, "true") == 0;
        if (regex) return false; /* matching is cheap, but a bad pattern must give its 400 */
        size_t k = 0;
        for (size_t i = 0; i < l->n; i++)
            if (strstr(l->items[i].q->name, p.name_s)) l->items[k++] = l->items[i];
        l->n = k;
    }
    return qlist_plan_page(&p, l->n, first, count);
}

void mgmt_qlist_get(mgmt_req_t *r, bool scoped)
{
    struct qlist l = {0};
    size_t first = 0, count = 0;
    if (!mgmt_qg_enabled(r->m)) {
        qlist_gathered(r, NULL);
    } else if (qlist_plan(r, scoped, &l, &first, &count)) {
        queue_t **page = malloc((count ? count : 1) * sizeof *page);
        if (!page) abort();
        for (size_t i = 0; i < count; i++) page[i] = l.items[first + i].q;
        mgmt_qg_named(r, page, count, qlist_gathered, NULL);
        free(page);
    } else {
        mgmt_qg_all(r, scoped ? r->params[0] : NULL, qlist_gathered, NULL);
    }
    free(l.items);
}
