/* message.c - see message.h. */
#include "broker/message.h"

#include <stdlib.h>
#include <string.h>

msg_t *msg_new(const char *exchange, size_t exlen, const char *rk, size_t rklen, const uint8_t *props,
               size_t props_len, uint64_t body_len)
{
    return msg_new_with_bcc(exchange, exlen, rk, rklen, props, props_len, body_len, NULL, 0);
}

msg_t *msg_new_with_bcc(const char *exchange, size_t exlen, const char *rk, size_t rklen, const uint8_t *props,
                        size_t props_len, uint64_t body_len, const uint8_t *bcc, size_t bcc_len)
{
    if (exlen > 255) exlen = 255;
    if (rklen > 255) rklen = 255;
    if (bcc_len > 65535) bcc_len = 0;
    msg_t *m = malloc(sizeof *m + exlen + 1 + rklen + 1 + props_len + bcc_len);
    if (!m) abort();
    memset(m, 0, sizeof *m);
    m->refs = 1;
    m->exchange_len = (uint8_t)exlen;
    m->rk_len = (uint8_t)rklen;
    m->props_len = (uint32_t)props_len;
    m->exchange = m->data;
    memcpy(m->exchange, exchange, exlen);
    m->exchange[exlen] = '\0';
    m->rk = m->exchange + exlen + 1;
    memcpy(m->rk, rk, rklen);
    m->rk[rklen] = '\0';
    m->props = (uint8_t *)m->rk + rklen + 1;
    if (props_len) memcpy(m->props, props, props_len);
    /* Property flags bit 8 is expiration: known without parsing, so queues only parse the
     * properties of the (few) messages that carry a TTL. */
    m->has_expiration = props_len >= 2 && (((unsigned)props[0] << 8 | props[1]) & (1u << 8));
    m->bcc_len = (uint16_t)bcc_len;
    if (bcc_len) memcpy(m->props + props_len, bcc, bcc_len);
    m->body_len = body_len;
    m->body = malloc(body_len ? body_len : 1);
    if (!m->body) abort();
    return m;
}

void msg_unref(msg_t *m)
{
    if (--m->refs) return;
    free(m->body);
    free(m);
}

size_t msg_record_size(const msg_t *m)
{
    return 1 + m->exchange_len + 1 + m->rk_len + 4 + m->props_len + m->body_len;
}

size_t msg_record_header_size(const msg_t *m) { return msg_record_size(m) - m->body_len; }

void msg_record_write_header(const msg_t *m, uint8_t *p)
{
    *p++ = m->exchange_len;
    memcpy(p, m->exchange, m->exchange_len);
    p += m->exchange_len;
    *p++ = m->rk_len;
    memcpy(p, m->rk, m->rk_len);
    p += m->rk_len;
    uint32_t pl = m->props_len;
    p[0] = (uint8_t)(pl >> 24); p[1] = (uint8_t)(pl >> 16); p[2] = (uint8_t)(pl >> 8); p[3] = (uint8_t)pl;
    p += 4;
    memcpy(p, m->props, pl);
}

void msg_record_write(const msg_t *m, uint8_t *p)
{
    *p++ = m->exchange_len;
    memcpy(p, m->exchange, m->exchange_len);
    p += m->exchange_len;
    *p++ = m->rk_len;
    memcpy(p, m->rk, m->rk_len);
    p += m->rk_len;
    uint32_t pl = m->props_len;
    p[0] = (uint8_t)(pl >> 24); p[1] = (uint8_t)(pl >> 16); p[2] = (uint8_t)(pl >> 8); p[3] = (uint8_t)pl;
    p += 4;
    memcpy(p, m->props, pl);
    p += pl;
    if (m->body_len) memcpy(p, m->body, m->body_len);
}

/* Parses the fixed part of a record; returns the offset of the body or 0 when malformed. */
static size_t record_header(const uint8_t *rec, size_t len, size_t *exoff, size_t *rkoff, size_t *propsoff,
                            uint32_t *props_len)
{
    size_t off = 0;
    if (len < 1) return 0;
    *exoff = 1;
    off = 1 + rec[0];
    if (off + 1 > len) return 0;
    *rkoff = off + 1;
    off = off + 1 + rec[off];
    if (off + 4 > len) return 0;
    uint32_t pl = ((uint32_t)rec[off] << 24) | ((uint32_t)rec[off + 1] << 16) | ((uint32_t)rec[off + 2] << 8) |
                  rec[off + 3];
    off += 4;
    if (off + pl > len) return 0;
    *propsoff = off;
    *props_len = pl;
    return off + pl;
}

msg_t *msg_from_record(const uint8_t *rec, size_t len, bool with_body)
{
    size_t exoff, rkoff, propsoff;
    uint32_t pl;
    size_t bodyoff = record_header(rec, len, &exoff, &rkoff, &propsoff, &pl);
    if (!bodyoff) return NULL;
    msg_t *m = msg_new((const char *)rec + exoff, rec[exoff - 1], (const char *)rec + rkoff, rec[rkoff - 1],
                       rec + propsoff, pl, len - bodyoff);
    if (with_body) {
        if (m->body_len) memcpy(m->body, rec + bodyoff, m->body_len);
    } else {
        free(m->body);
        m->body = NULL;
    }
    return m;
}

bool msg_body_from_record(msg_t *m, const uint8_t *rec, size_t len)
{
    size_t exoff, rkoff, propsoff;
    uint32_t pl;
    size_t bodyoff = record_header(rec, len, &exoff, &rkoff, &propsoff, &pl);
    if (!bodyoff || len - bodyoff != m->body_len) return false;
    free(m->body);
    m->body = malloc(m->body_len ? m->body_len : 1);
    if (!m->body) abort();
    if (m->body_len) memcpy(m->body, rec + bodyoff, m->body_len);
    return true;
}
