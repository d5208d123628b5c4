/* props.c - see props.h. Walks the property list in flag order, skipping the fields the core
 * does not use, with bounds checks on every step. */
#include "broker/props.h"

#include <string.h>

static int skip_shortstr(const uint8_t *raw, size_t len, size_t *off, amqp_bytes_t *out)
{
    if (*off + 1 > len) return -1;
    size_t n = raw[*off];
    if (*off + 1 + n > len) return -1;
    if (out) *out = (amqp_bytes_t){raw + *off + 1, n};
    *off += 1 + n;
    return 0;
}

static int skip_longstr(const uint8_t *raw, size_t len, size_t *off, amqp_bytes_t *out)
{
    if (*off + 4 > len) return -1;
    size_t n = ((size_t)raw[*off] << 24) | ((size_t)raw[*off + 1] << 16) | ((size_t)raw[*off + 2] << 8) |
               raw[*off + 3];
    if (n > len - *off - 4) return -1;
    if (out) *out = (amqp_bytes_t){raw + *off + 4, n};
    *off += 4 + n;
    return 0;
}

int props_core_read(const uint8_t *raw, size_t len, props_core_t *out)
{
    memset(out, 0, sizeof *out);
    if (len < 2) return -1;
    uint16_t flags = (uint16_t)((raw[0] << 8) | raw[1]);
    size_t off = 2;
    if ((flags & (1 << 15)) && skip_shortstr(raw, len, &off, NULL)) return -1; /* content-type */
    if ((flags & (1 << 14)) && skip_shortstr(raw, len, &off, NULL)) return -1; /* content-encoding */
    if (flags & (1 << 13)) {
        if (skip_longstr(raw, len, &off, &out->headers)) return -1;
        out->has_headers = true;
    }
    if (flags & (1 << 12)) {
        if (off + 1 > len) return -1;
        out->delivery_mode = raw[off++];
        out->has_delivery_mode = true;
    }
    if (flags & (1 << 11)) {
        if (off + 1 > len) return -1;
        out->priority = raw[off++];
        out->has_priority = true;
    }
    if ((flags & (1 << 10)) && skip_shortstr(raw, len, &off, NULL)) return -1; /* correlation-id */
    if ((flags & (1 << 9)) && skip_shortstr(raw, len, &off, NULL)) return -1;  /* reply-to */
    if (flags & (1 << 8)) {
        if (skip_shortstr(raw, len, &off, &out->expiration)) return -1;
        out->has_expiration = true;
    }
    return 0;
}

/* Byte spans of the 14 basic properties in flag order (bit 15 first). */
static int field_spans(const uint8_t *raw, size_t len, size_t start[14], size_t end[14], uint16_t *flags)
{
    if (len < 2) return -1;
    *flags = (uint16_t)((raw[0] << 8) | raw[1]);
    size_t off = 2;
    for (int i = 0; i < 14; i++) {
        start[i] = end[i] = off;
        if (!(*flags & (1u << (15 - i)))) continue;
        switch (i) {
        case 2: /* headers */
            if (skip_longstr(raw, len, &off, NULL)) return -1;
            break;
        case 3: case 4: /* delivery-mode, priority */
            if (off + 1 > len) return -1;
            off += 1;
            break;
        case 9: /* timestamp */
            if (off + 8 > len) return -1;
            off += 8;
            break;
        default:
            if (skip_shortstr(raw, len, &off, NULL)) return -1;
        }
        end[i] = off;
    }
    return 0;
}

int props_rewrite(const uint8_t *raw, size_t len, const amqp_bytes_t *new_headers, bool remove_headers,
                  bool drop_expiration, amqp_buf_t *out)
{
    size_t start[14], end[14];
    uint16_t flags;
    if (field_spans(raw, len, start, end, &flags)) return -1;
    uint16_t nflags = flags;
    if (remove_headers) nflags &= (uint16_t)~(1u << 13);
    else if (new_headers) nflags |= (uint16_t)(1u << 13);
    if (drop_expiration) nflags &= (uint16_t)~(1u << 8);
    amqp_buf_put_u16(out, nflags);
    for (int i = 0; i < 14; i++) {
        uint16_t bit = (uint16_t)(1u << (15 - i));
        if (!(nflags & bit)) continue;
        if (i == 2 && new_headers && !remove_headers) {
            amqp_buf_put_u32(out, (uint32_t)new_headers->len);
            if (new_headers->len) amqp_buf_append(out, new_headers->ptr, new_headers->len);
            continue;
        }
        amqp_buf_append(out, raw + start[i], end[i] - start[i]);
    }
    return 0;
}
