/* http.c - one HTTP/1.1 server connection, independent of the transport under it.
 *
 * Data flow: the transport hands bytes to mgmt_conn_feed; they are appended to c->in and run
 * through Debian's http-parser (libhttp-parser). Its callbacks copy what a request needs (the
 * URL, the Authorization header, the body) into c->req; on_message_complete pauses the parser,
 * so exactly one request is complete when http_parser_execute returns, and the rest of the
 * input (pipelined requests) stays in c->in. The request is then routed (router.c). Its reply
 * (mgmt_reply_*) is serialized and written through the transport; then the next request in
 * c->in is parsed, or the connection is closed when the request did not keep it alive.
 *
 * Limits: the request line plus headers may not exceed MGMT_MAX_HEADER_BYTES (431) and a body
 * MGMT_MAX_BODY (413, refused from Content-Length before it is read); a malformed request gets
 * 400. Each of these answers closes the connection.
 *
 * Invariants:
 *  - at most one request is in flight per connection (c->busy from routing to its reply); while
 *    a reply is pending (a metadata change) the transport does not read and nothing is parsed;
 *  - the connection outlives its transport while a reply is pending (c->gone): the reply is
 *    then dropped and the connection freed;
 *  - the transport never reports itself gone from inside mgmt_conn_feed or a write (net.c's
 *    on_close runs from its own loop callbacks), so a connection is freed only from
 *    mgmt_conn_gone or from the late reply of its pending request;
 *  - parse_pending never recurses: a reply given during routing only marks the request done,
 *    and the loop in parse_pending goes on with the next one. */
#include <http_parser.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "mgmt/internal.h"
#include "mgmt/metrics.h"

#define OUT_PAUSE_BYTES (4 * 1024 * 1024) /* unsent output above this: stop reading */

enum { HDR_OTHER, HDR_AUTH, HDR_INM };

struct mgmt_conn {
    mgmt_t *m;
    const mgmt_io_t *io;
    void *ud;
    http_parser p;
    mgmt_req_t req;
    bool peer_loopback;
    bool prometheus; /* accepted by the metrics listener */
    /* header assembly */
    size_t hdr_bytes;
    char field[32];
    size_t field_len;
    bool in_value;
    int hdr_kind;
    int error_status; /* 400 / 413 / 431 found by a callback */
    /* unparsed input */
    char *in;
    size_t in_len, in_cap;
    bool busy;     /* a request is routed and not answered yet */
    bool parsing;  /* inside parse_pending */
    bool closing;  /* the transport was asked to close */
    bool gone;     /* the transport is gone */
    bool paused;   /* the transport's reading is paused */
    mgmt_conn_t *next;
};

/* ---- small buffers ---- */

static bool append(char **buf, size_t *len, const char *data, size_t n)
{
    char *p = realloc(*buf, *len + n + 1);
    if (!p) return false;
    memcpy(p + *len, data, n);
    *len += n;
    p[*len] = '\0';
    *buf = p;
    return true;
}

static void req_reset(mgmt_conn_t *c)
{
    mgmt_req_t *r = &c->req;
    free(r->url);
    free(r->auth);
    free(r->if_none_match);
    free(r->body);
    free(r->x_reason);
    for (int i = 0; i < r->nsegs; i++) free(r->segs[i]);
    free(r->query);
    memset(r, 0, sizeof *r);
    r->m = c->m;
    r->conn = c;
    r->peer_loopback = c->peer_loopback;
    r->prometheus = c->prometheus;
    c->hdr_bytes = 0;
    c->field_len = 0;
    c->in_value = false;
    c->hdr_kind = HDR_OTHER;
}

/* ---- http-parser callbacks ---- */

static mgmt_conn_t *conn_of(http_parser *p) { return p->data; }

static int count_header(mgmt_conn_t *c, size_t n)
{
    c->hdr_bytes += n;
    if (c->hdr_bytes <= MGMT_MAX_HEADER_BYTES) return 0;
    c->error_status = 431;
    return -1;
}

static int on_message_begin(http_parser *p)
{
    req_reset(conn_of(p));
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t n)
{
    mgmt_conn_t *c = conn_of(p);
    if (count_header(c, n)) return -1;
    return append(&c->req.url, &c->req.url_len, at, n) ? 0 : -1;
}

static int on_header_field(http_parser *p, const char *at, size_t n)
{
    mgmt_conn_t *c = conn_of(p);
    if (count_header(c, n)) return -1;
    if (c->in_value) { /* a new header starts */
        c->in_value = false;
        c->field_len = 0;
    }
    for (size_t i = 0; i < n && c->field_len < sizeof c->field - 1; i++) c->field[c->field_len++] = at[i];
    c->field[c->field_len] = '\0';
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t n)
{
    mgmt_conn_t *c = conn_of(p);
    if (count_header(c, n)) return -1;
    if (strcasecmp(c->field, "x-reason") == 0) { /* a forced connection close's reason */
        size_t l = c->req.x_reason ? strlen(c->req.x_reason) : 0;
        return append(&c->req.x_reason, &l, at, n) ? 0 : -1;
    }
    if (!c->in_value) {
        c->in_value = true;
        c->hdr_kind = strcasecmp(c->field, "authorization") == 0   ? HDR_AUTH
                      : strcasecmp(c->field, "if-none-match") == 0 ? HDR_INM
                                                                   : HDR_OTHER;
        if (c->hdr_kind == HDR_AUTH && c->req.auth) { /* a repeated Authorization header */
            c->error_status = 400;
            return -1;
        }
        if (c->hdr_kind == HDR_INM && c->req.if_none_match) { /* repeated: one list */
            size_t l = strlen(c->req.if_none_match);
            if (!append(&c->req.if_none_match, &l, ", ", 2)) return -1;
        }
    }
    if (c->hdr_kind == HDR_INM) { /* ui.c's revalidation of static assets */
        size_t l = c->req.if_none_match ? strlen(c->req.if_none_match) : 0;
        return append(&c->req.if_none_match, &l, at, n) ? 0 : -1;
    }
    if (c->hdr_kind != HDR_AUTH) return 0;
    if (!c->req.auth && !append(&c->req.auth, &c->req.auth_len, "", 0)) return -1;
    return append(&c->req.auth, &c->req.auth_len, at, n) ? 0 : -1;
}

static int on_headers_complete(http_parser *p)
{
    mgmt_conn_t *c = conn_of(p);
    if (p->content_length != ULLONG_MAX && p->content_length > MGMT_MAX_BODY) {
        c->error_status = 413;
        return -1;
    }
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t n)
{
    mgmt_conn_t *c = conn_of(p);
    if (c->req.body_len + n > MGMT_MAX_BODY) {
        c->error_status = 413;
        return -1;
    }
    return append(&c->req.body, &c->req.body_len, at, n) ? 0 : -1;
}

static int on_message_complete(http_parser *p)
{
    http_parser_pause(p, 1); /* one request at a time: execute returns here */
    return 0;
}

static const http_parser_settings parser_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* ---- output ---- */

static const char *status_text(int status)
{
    switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 413: return "Content Too Large";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Unknown";
    }
}

static void conn_write(mgmt_conn_t *c, const void *data, size_t len)
{
    if (c->gone || c->closing || !len) return;
    c->io->write(c->ud, data, len);
}

/* Is the peer behind on reading our output? */
static bool out_backlogged(mgmt_conn_t *c)
{
    return c->io->pending && c->io->pending(c->ud) > OUT_PAUSE_BYTES;
}

static void conn_pause(mgmt_conn_t *c, bool paused)
{
    if (c->paused == paused || c->gone || c->closing) return;
    c->paused = paused;
    if (c->io->pause) c->io->pause(c->ud, paused);
}

static void conn_close(mgmt_conn_t *c)
{
    if (c->gone || c->closing) return;
    c->closing = true;
    c->io->close(c->ud);
}

/* Writes a complete response. keep_alive false: "connection: close" and close after it.
 * extra: more header lines ("name: value\r\n"), or "". ctype: the body's content type (NULL:
 * JSON). */
static void write_response(mgmt_conn_t *c, int status, const char *body, size_t blen, bool keep_alive,
                           const char *extra, const char *ctype)
{
    char head[6600];
    bool http10 = c->p.http_major == 1 && c->p.http_minor == 0;
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\n"
                     "server: Warren\r\n"
                     "cache-control: no-cache\r\n"
                     "vary: accept, accept-encoding, origin\r\n"
                     "%s%s%s%s%s%s"
                     "content-length: %zu\r\n\r\n",
                     status, status_text(status), extra, blen || ctype ? "content-type: " : "",
                     blen || ctype ? (ctype ? ctype : "application/json") : "", blen || ctype ? "\r\n" : "",
                     status == 401 ? "www-authenticate: Basic realm=\"RabbitMQ Management\"\r\n" : "",
                     !keep_alive ? "connection: close\r\n" : http10 ? "connection: keep-alive\r\n" : "", blen);
    conn_write(c, head, (size_t)n);
    if (body && c->req.method != MGMT_HEAD) conn_write(c, body, blen);
    if (!keep_alive) conn_close(c);
}

/* ---- requests ---- */

static enum mgmt_method method_of(unsigned m)
{
    switch (m) {
    case HTTP_GET: return MGMT_GET;
    case HTTP_PUT: return MGMT_PUT;
    case HTTP_DELETE: return MGMT_DELETE;
    case HTTP_POST: return MGMT_POST;
    case HTTP_HEAD: return MGMT_HEAD;
    default: return MGMT_OTHER;
    }
}

static void conn_free(mgmt_conn_t *c)
{
    req_reset(c);
    free(c->in);
    free(c);
}

static void dispatch(mgmt_conn_t *c)
{
    c->busy = true;
    c->req.method = method_of(c->p.method);
    mgmt_route(&c->req);
    if (c->busy) conn_pause(c, true); /* the reply comes later */
}

/* Parses and routes the buffered requests until one is pending, the input is used up, or the
 * connection closes. */
static void parse_pending(mgmt_conn_t *c)
{
    if (c->parsing) return;
    c->parsing = true;
    while (!c->busy && !c->closing && !c->gone && c->in_len) {
        size_t n = http_parser_execute(&c->p, &parser_settings, c->in, c->in_len);
        enum http_errno e = HTTP_PARSER_ERRNO(&c->p);
        memmove(c->in, c->in + n, c->in_len - n);
        c->in_len -= n;
        if (e == HPE_PAUSED) {
            http_parser_pause(&c->p, 0);
            dispatch(c);
        } else if (e != HPE_OK) {
            int status = c->error_status ? c->error_status : 400;
            const char *body = status == 413   ? "{\"error\":\"bad_request\",\"reason\":\"request body too large\"}"
                               : status == 431 ? "{\"error\":\"bad_request\",\"reason\":\"request headers too large\"}"
                                               : "{\"error\":\"bad_request\",\"reason\":\"malformed HTTP request\"}";
            write_response(c, status, body, strlen(body), false, "", NULL);
        } else if (n == 0) {
            break;
        }
    }
    c->parsing = false;
}

/* The pending request was answered. */
static void request_done(mgmt_conn_t *c, bool keep_alive)
{
    c->busy = false;
    c->req.answered = true;
    if (c->gone) {
        if (!c->parsing) conn_free(c);
        return;
    }
    if (!keep_alive) {
        conn_close(c);
        return;
    }
    if (!out_backlogged(c)) conn_pause(c, false);
    if (!c->parsing) parse_pending(c);
}

static void reply_typed(mgmt_req_t *r, int status, const char *body, size_t blen, const char *extra,
                        const char *ctype)
{
    mgmt_conn_t *c = r->conn;
    if (!c || r->answered) return;
    bool keep_alive = http_should_keep_alive(&c->p) && !c->m->shutting_down;
    write_response(c, status, body, blen, keep_alive, extra, ctype);
    request_done(c, keep_alive);
}

static void reply_with(mgmt_req_t *r, int status, const char *body, size_t blen, const char *extra)
{
    reply_typed(r, status, body, blen, extra, NULL);
}

void mgmt_reply_asset(mgmt_req_t *r, int status, const char *ctype, const void *body, size_t len,
                      const char *extra)
{
    reply_typed(r, status, body, len, extra, ctype);
}

static void reply_raw(mgmt_req_t *r, int status, const char *body, size_t blen)
{
    reply_with(r, status, body, blen, "");
}

void mgmt_reply_created(mgmt_req_t *r, const char *location)
{
    char extra[6100];
    int n = snprintf(extra, sizeof extra, "location: %s\r\n", location);
    reply_with(r, 201, NULL, 0, n > 0 && (size_t)n < sizeof extra ? extra : "");
}

void mgmt_reply_json(mgmt_req_t *r, int status, cJSON *body)
{
    char *text = body ? cJSON_PrintUnformatted(body) : NULL;
    cJSON_Delete(body);
    if (body && !text) {
        const char *oom = "{\"error\":\"internal_server_error\",\"reason\":\"out of memory\"}";
        reply_raw(r, 500, oom, strlen(oom));
        return;
    }
    reply_raw(r, status, text, text ? strlen(text) : 0);
    free(text);
}

void mgmt_reply_status(mgmt_req_t *r, int status) { reply_raw(r, status, NULL, 0); }

void mgmt_reply_error(mgmt_req_t *r, int status, const char *error, const char *reason)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "error", error);
    cJSON_AddStringToObject(o, "reason", reason);
    mgmt_reply_json(r, status, o);
}

void mgmt_reply_not_found(mgmt_req_t *r) { mgmt_reply_error(r, 404, "Object Not Found", "Not Found"); }

void mgmt_reply_br_error(mgmt_req_t *r, const br_err_t *err)
{
    switch (err->code) {
    case BR_NOT_FOUND: return mgmt_reply_not_found(r);
    case BR_ACCESS_REFUSED: return mgmt_reply_error(r, 401, "not_authorised", "Access refused.");
    case BR_NOT_ALLOWED: return mgmt_reply_error(r, 401, "not_authorised", err->text);
    case BR_INTERNAL_ERROR: return mgmt_reply_error(r, 503, "service_unavailable", err->text);
    default: return mgmt_reply_error(r, 400, "bad_request", err->text);
    }
}

/* ---- the connection's life ---- */

mgmt_conn_t *mgmt_conn_new(mgmt_t *m, const mgmt_io_t *io, void *ud, bool peer_loopback)
{
    mgmt_conn_t *c = calloc(1, sizeof *c);
    if (!c) abort();
    c->m = m;
    c->io = io;
    c->ud = ud;
    c->peer_loopback = peer_loopback;
    http_parser_init(&c->p, HTTP_REQUEST);
    c->p.data = c;
    req_reset(c);
    return c;
}

void mgmt_conn_feed(mgmt_conn_t *c, const void *data, size_t len)
{
    if (c->closing || c->gone || !len) return;
    if (c->in_len + len > c->in_cap) {
        size_t cap = c->in_cap ? c->in_cap : 4096;
        while (cap < c->in_len + len) cap *= 2;
        char *p = realloc(c->in, cap);
        if (!p) abort();
        c->in = p;
        c->in_cap = cap;
    }
    memcpy(c->in + c->in_len, data, len);
    c->in_len += len;
    if (out_backlogged(c)) conn_pause(c, true); /* the peer is not reading its replies */
    parse_pending(c);
    if (!c->gone && c->in_len == 0 && c->in_cap > 65536) { /* keep idle connections small */
        free(c->in);
        c->in = NULL;
        c->in_cap = 0;
    }
}

void mgmt_conn_drained(mgmt_conn_t *c)
{
    if (!c->busy && !out_backlogged(c)) conn_pause(c, false);
}

void mgmt_conn_gone(mgmt_conn_t *c)
{
    c->gone = true;
    if (!c->busy && !c->parsing) conn_free(c);
}

void mgmt_conn_set_prometheus(mgmt_conn_t *c) { c->prometheus = c->req.prometheus = true; }
mgmt_conn_t *mgmt_conn_next(mgmt_conn_t *c) { return c->next; }
void mgmt_conn_link(mgmt_conn_t *c, mgmt_conn_t *next) { c->next = next; }
void *mgmt_conn_ud(mgmt_conn_t *c) { return c->ud; }
