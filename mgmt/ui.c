/* ui.c - serves the management plugin's browser UI (prefix mgmt_ui_).
 *
 * The files of mgmt/www/ are compiled into the binary (scripts/embed_www.cmake generates
 * mgmt_www.c with the table mgmt_ui_files), so a node needs nothing on disk to show its UI.
 * The router hands every path outside /api here. Static files need no authentication: the page
 * logs in itself, sending HTTP Basic credentials with each /api request.
 *
 *   GET/HEAD /                 index.html
 *   GET/HEAD /<file>           that file, with its content type
 *   GET/HEAD /<path w/o '.'>   index.html (bookmarks of the UI's pages land on the app)
 *   anything else             404 (405 for another method on a UI path)
 *
 * Caching: each file has a strong ETag (FNV-1a 64 of its bytes, computed once); replies say
 * "cache-control: no-cache" (http.c), so the browser revalidates and gets 304 when the node
 * still has the same build of the UI. A Content-Security-Policy keeps the page to this node. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "mgmt/internal.h"

struct mgmt_ui_file {
    const char *path;
    const unsigned char *data;
    size_t len;
};
extern const struct mgmt_ui_file mgmt_ui_files[];
extern const size_t mgmt_ui_nfiles;

#define MGMT_UI_MAX_FILES 32

static char mgmt_ui_etags[MGMT_UI_MAX_FILES][24];

static const char *mgmt_ui_ctype(const char *path)
{
    static const struct {
        const char *ext, *type;
    } types[] = {
        {".html", "text/html; charset=utf-8"},
        {".js", "text/javascript; charset=utf-8"},
        {".css", "text/css; charset=utf-8"},
        {".svg", "image/svg+xml"},
        {".png", "image/png"},
        {".ico", "image/x-icon"},
        {".json", "application/json"},
        {".txt", "text/plain; charset=utf-8"},
    };
    const char *dot = strrchr(path, '.');
    for (size_t i = 0; dot && i < sizeof types / sizeof types[0]; i++) {
        if (strcmp(dot, types[i].ext) == 0) return types[i].type;
    }
    return "application/octet-stream";
}

/* The file's ETag: cached for the first MGMT_UI_MAX_FILES files, computed into buf otherwise. */
static const char *mgmt_ui_etag(size_t i, char *buf, size_t cap)
{
    char *out = i < MGMT_UI_MAX_FILES ? mgmt_ui_etags[i] : buf;
    if (i < MGMT_UI_MAX_FILES) cap = sizeof mgmt_ui_etags[i];
    if (!out[0] || out == buf) {
        uint64_t h = 0xcbf29ce484222325ULL;
        for (size_t k = 0; k < mgmt_ui_files[i].len; k++) {
            h ^= mgmt_ui_files[i].data[k];
            h *= 0x100000001b3ULL;
        }
        snprintf(out, cap, "\"%016llx\"", (unsigned long long)h);
    }
    return out;
}

/* Does the If-None-Match header list etag (or "*")? */
static bool mgmt_ui_etag_matches(const char *inm, const char *etag)
{
    if (!inm || !etag) return false;
    size_t el = strlen(etag);
    for (const char *p = inm; *p;) {
        while (*p == ' ' || *p == ',' || *p == '\t') p++;
        if (strncmp(p, "W/", 2) == 0) p += 2;
        size_t n = strcspn(p, ",");
        size_t m = n;
        while (m && (p[m - 1] == ' ' || p[m - 1] == '\t')) m--;
        if ((m == 1 && *p == '*') || (m == el && memcmp(p, etag, el) == 0)) return true;
        p += n;
    }
    return false;
}

static long mgmt_ui_find(const char *path, size_t n)
{
    for (size_t i = 0; i < mgmt_ui_nfiles; i++) {
        const char *fp = mgmt_ui_files[i].path;
        if (strlen(fp) == n && memcmp(fp, path, n) == 0) return (long)i;
    }
    return -1;
}

void mgmt_ui_serve(mgmt_req_t *r)
{
    const char *u = r->url ? r->url : "";
    size_t n = strcspn(u, "?#");
    /* /api and /api/...: a path the router could not split (too deep, bad escape) */
    if (n >= 4 && memcmp(u, "/api", 4) == 0 && (n == 4 || u[4] == '/')) return mgmt_reply_not_found(r);
    if (n == 0 || u[0] != '/') return mgmt_reply_not_found(r);
    long i;
    if (n == 1) {
        i = mgmt_ui_find("/index.html", 11);
    } else {
        i = mgmt_ui_find(u, n);
        if (i < 0) {
            const char *last = u + n;
            while (last > u && last[-1] != '/') last--;
            bool has_ext = memchr(last, '.', (size_t)(u + n - last)) != NULL;
            if (has_ext || memchr(u, '%', n)) return mgmt_reply_not_found(r);
            i = mgmt_ui_find("/index.html", 11);
        }
    }
    if (i < 0) return mgmt_reply_not_found(r);
    if (r->method != MGMT_GET && r->method != MGMT_HEAD) return mgmt_reply_status(r, 405);
    const struct mgmt_ui_file *f = &mgmt_ui_files[i];
    char etag_buf[24];
    const char *etag = mgmt_ui_etag((size_t)i, etag_buf, sizeof etag_buf);
    /* The UI talks to this node only: a CSP that forbids loading anything from elsewhere
     * (inline style attributes are used for bars and chart legends), and no framing. */
    char extra[512];
    snprintf(extra, sizeof extra,
             "etag: %s\r\n"
             "x-content-type-options: nosniff\r\n"
             "x-frame-options: DENY\r\n"
             "referrer-policy: same-origin\r\n"
             "content-security-policy: default-src 'self'; style-src 'self' 'unsafe-inline'; "
             "img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'\r\n",
             etag);
    if (mgmt_ui_etag_matches(r->if_none_match, etag)) return mgmt_reply_asset(r, 304, NULL, NULL, 0, extra);
    mgmt_reply_asset(r, 200, mgmt_ui_ctype(f->path), f->data, f->len, extra);
}
