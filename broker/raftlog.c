/* raftlog.c - Raft log, hard state and snapshots of every group, stored through store_t.
 *
 * Role: the storage half of the multi-Raft host (broker/multiraft.c). It turns the parts of a
 * raft_update that must be durable into RocksDB writes in the store's current batch, and reads
 * a group's state back at startup. It never waits for the disk: the host learns durability
 * from store_on_synced and then tells raft (RAFT_EV_PERSISTED).
 *
 * Key layout (see raftlog.h): 'L' gid index, 'H' gid, 'S' gid, all integers big-endian.
 *
 * Invariants:
 *   - A group's stored entries are contiguous: appends overwrite from `first` and delete any
 *     stored suffix beyond the new last index (tracked by the caller in stored_last, so the
 *     common case - appending past the end - costs no range delete at all); compaction only
 *     removes a prefix.
 *   - A snapshot received from the leader replaces the whole stored log in the same batch, so
 *     a crash can never leave the new snapshot next to entries of the old history.
 *   - Everything a call writes lands in one store batch, which RocksDB writes atomically.
 */
#include "broker/raftlog.h"

#include <stdlib.h>
#include <string.h>

#include "broker/log.h"

#define RLOG_ENTRY_HDR 9  /* u64 term + u8 type */
#define RLOG_HS_LEN 12    /* u64 term + u32 vote */
#define RLOG_SNAP_HDR 20  /* u64 index + u64 term + u32 conf_len */

/* ---- encoding helpers -------------------------------------------------------------------- */

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint32_t get_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

void rlog_entry_key(uint8_t key[RLOG_ENTRY_KEY_LEN], uint64_t gid, raft_index index)
{
    key[0] = RLOG_KEY_ENTRY;
    store_put_be64(key + 1, gid);
    store_put_be64(key + 9, index);
}

void rlog_group_key(uint8_t key[RLOG_GROUP_KEY_LEN], uint8_t tag, uint64_t gid)
{
    key[0] = tag;
    store_put_be64(key + 1, gid);
}

/* Deletes the group's entries with index in [from, to). */
static void rlog_delete_entries(store_t *s, uint64_t gid, raft_index from, raft_index to)
{
    if (from >= to)
        return;
    uint8_t begin[RLOG_ENTRY_KEY_LEN], end[RLOG_ENTRY_KEY_LEN];
    rlog_entry_key(begin, gid, from);
    rlog_entry_key(end, gid, to);
    store_del_range(s, begin, sizeof begin, end, sizeof end);
}

/* Deletes every entry of the group: [gid 0, gid+1 0) covers all indexes, UINT64_MAX included. */
static void rlog_delete_all_entries(store_t *s, uint64_t gid)
{
    uint8_t begin[RLOG_GROUP_KEY_LEN], end[RLOG_GROUP_KEY_LEN];
    rlog_group_key(begin, RLOG_KEY_ENTRY, gid);
    if (gid == UINT64_MAX) { /* no gid+1: the end is the next tag */
        uint8_t tag_end = RLOG_KEY_ENTRY + 1;
        store_del_range(s, begin, sizeof begin, &tag_end, 1);
        return;
    }
    rlog_group_key(end, RLOG_KEY_ENTRY, gid + 1);
    store_del_range(s, begin, sizeof begin, end, sizeof end);
}

/* ---- writes ------------------------------------------------------------------------------ */

void rlog_save_hard_state(store_t *s, uint64_t gid, raft_term term, raft_id vote)
{
    uint8_t key[RLOG_GROUP_KEY_LEN], val[RLOG_HS_LEN];
    rlog_group_key(key, RLOG_KEY_HARD_STATE, gid);
    store_put_be64(val, term);
    put_be32(val + 8, vote);
    store_put(s, key, sizeof key, val, sizeof val);
}

/* One entry: the value is header + data; a small stack buffer avoids a malloc for most
 * entries (RocksDB copies the bytes, so the buffer can be reused at once). */
static void rlog_put_entry(store_t *s, uint64_t gid, raft_index index, const struct raft_entry *e)
{
    uint8_t key[RLOG_ENTRY_KEY_LEN];
    rlog_entry_key(key, gid, index);
    uint8_t small[2048];
    size_t vlen = RLOG_ENTRY_HDR + e->len;
    uint8_t *val = vlen <= sizeof small ? small : malloc(vlen);
    if (val == NULL) {
        log_error("raftlog: out of memory encoding a %zu byte entry", vlen);
        abort(); /* dropping a log write would break the persisted-before-ack contract */
    }
    store_put_be64(val, e->term);
    val[8] = (uint8_t)e->type;
    if (e->len > 0)
        memcpy(val + RLOG_ENTRY_HDR, e->data, e->len);
    store_put(s, key, sizeof key, val, vlen);
    if (val != small)
        free(val);
}

void rlog_append(store_t *s, uint64_t gid, raft_index first, const struct raft_entry *entries,
                 size_t n, raft_index *stored_last)
{
    raft_index new_last = first + n - 1; /* first - 1 when n == 0: a pure truncation */
    if (*stored_last > new_last)
        rlog_delete_entries(s, gid, new_last + 1, *stored_last + 1);
    for (size_t i = 0; i < n; i++)
        rlog_put_entry(s, gid, first + i, &entries[i]);
    *stored_last = new_last;
}

void rlog_compact(store_t *s, uint64_t gid, raft_index upto)
{
    rlog_delete_entries(s, gid, 0, upto + 1);
}

void rlog_save_snapshot(store_t *s, uint64_t gid, const struct raft_snapshot_meta *meta,
                        const void *data, size_t len, bool replace_log)
{
    uint8_t conf[RAFT_CONF_MAX_ENCODED];
    size_t conf_len = raft_conf_encode(&meta->conf, conf);
    size_t vlen = RLOG_SNAP_HDR + conf_len + len;
    uint8_t *val = malloc(vlen);
    if (val == NULL) {
        log_error("raftlog: out of memory encoding a %zu byte snapshot", vlen);
        abort();
    }
    store_put_be64(val, meta->index);
    store_put_be64(val + 8, meta->term);
    put_be32(val + 16, (uint32_t)conf_len);
    memcpy(val + RLOG_SNAP_HDR, conf, conf_len);
    if (len > 0)
        memcpy(val + RLOG_SNAP_HDR + conf_len, data, len);
    if (replace_log)
        rlog_delete_all_entries(s, gid);
    uint8_t key[RLOG_GROUP_KEY_LEN];
    rlog_group_key(key, RLOG_KEY_SNAPSHOT, gid);
    store_put(s, key, sizeof key, val, vlen);
    free(val);
}

void rlog_destroy(store_t *s, uint64_t gid)
{
    rlog_delete_all_entries(s, gid);
    uint8_t key[RLOG_GROUP_KEY_LEN];
    rlog_group_key(key, RLOG_KEY_HARD_STATE, gid);
    store_del(s, key, sizeof key);
    rlog_group_key(key, RLOG_KEY_SNAPSHOT, gid);
    store_del(s, key, sizeof key);
}

/* ---- reads ------------------------------------------------------------------------------- */

static int rlog_decode_snapshot(const uint8_t *val, size_t vlen, struct raft_snapshot_meta *meta,
                                const uint8_t **data, size_t *len)
{
    if (vlen < RLOG_SNAP_HDR)
        return -1;
    uint32_t conf_len = get_be32(val + 16);
    if (conf_len > vlen - RLOG_SNAP_HDR)
        return -1;
    memset(meta, 0, sizeof *meta);
    meta->index = store_get_be64(val);
    meta->term = store_get_be64(val + 8);
    if (raft_conf_decode(&meta->conf, val + RLOG_SNAP_HDR, conf_len) != RAFT_OK)
        return -1;
    *data = val + RLOG_SNAP_HDR + conf_len;
    *len = vlen - RLOG_SNAP_HDR - conf_len;
    return 0;
}

int rlog_load_snapshot(store_t *s, uint64_t gid, struct raft_snapshot_meta *meta, void **data,
                       size_t *len)
{
    uint8_t key[RLOG_GROUP_KEY_LEN];
    rlog_group_key(key, RLOG_KEY_SNAPSHOT, gid);
    void *val = NULL;
    size_t vlen = 0;
    *data = NULL;
    *len = 0;
    int rc = store_get(s, key, sizeof key, &val, &vlen);
    if (rc <= 0)
        return rc;
    const uint8_t *bytes = NULL;
    size_t n = 0;
    if (rlog_decode_snapshot(val, vlen, meta, &bytes, &n) != 0) {
        log_error("raftlog: group %llu: malformed snapshot record", (unsigned long long)gid);
        free(val);
        return -1;
    }
    /* Hand out the snapshot bytes in their own buffer (the record also holds the meta). */
    void *copy = malloc(n + 1);
    if (copy == NULL) {
        free(val);
        return -1;
    }
    if (n > 0)
        memcpy(copy, bytes, n);
    free(val);
    *data = copy;
    *len = n;
    return 1;
}

static int rlog_load_hard_state(store_t *s, uint64_t gid, struct rlog_state *out)
{
    uint8_t key[RLOG_GROUP_KEY_LEN];
    rlog_group_key(key, RLOG_KEY_HARD_STATE, gid);
    void *val = NULL;
    size_t vlen = 0;
    int rc = store_get(s, key, sizeof key, &val, &vlen);
    if (rc < 0)
        return -1;
    if (rc == 0)
        return 0;
    if (vlen != RLOG_HS_LEN) {
        log_error("raftlog: group %llu: malformed hard state", (unsigned long long)gid);
        free(val);
        return -1;
    }
    out->has_hard_state = true;
    out->term = store_get_be64(val);
    out->vote = get_be32((const uint8_t *)val + 8);
    free(val);
    return 0;
}

static int rlog_push_entry(struct rlog_state *out, size_t *cap, const uint8_t *val, size_t vlen)
{
    if (out->n == *cap) {
        size_t ncap = *cap ? *cap * 2 : 64;
        struct raft_entry *e = realloc(out->entries, ncap * sizeof *e);
        if (e == NULL)
            return -1;
        out->entries = e;
        *cap = ncap;
    }
    struct raft_entry *e = &out->entries[out->n];
    e->term = store_get_be64(val);
    e->type = val[8];
    e->len = (uint32_t)(vlen - RLOG_ENTRY_HDR);
    e->data = NULL;
    if (e->len > 0) {
        e->data = malloc(e->len);
        if (e->data == NULL)
            return -1;
        memcpy(e->data, val + RLOG_ENTRY_HDR, e->len);
    }
    out->n++;
    return 0;
}

static int rlog_load_entries(store_t *s, uint64_t gid, struct rlog_state *out)
{
    uint8_t prefix[RLOG_GROUP_KEY_LEN];
    rlog_group_key(prefix, RLOG_KEY_ENTRY, gid);
    store_iter_t *it = store_iter_prefix(s, prefix, sizeof prefix);
    if (it == NULL)
        return -1;
    size_t cap = 0;
    int rc = 0;
    const void *k, *v;
    size_t klen, vlen;
    while (rc == 0 && store_iter_next(it, &k, &klen, &v, &vlen)) {
        if (klen != RLOG_ENTRY_KEY_LEN || vlen < RLOG_ENTRY_HDR) {
            log_error("raftlog: group %llu: malformed entry record", (unsigned long long)gid);
            rc = -1;
            break;
        }
        raft_index index = store_get_be64((const uint8_t *)k + 9);
        if (out->n == 0) {
            out->first = index;
        } else if (index != out->first + out->n) {
            log_error("raftlog: group %llu: gap in the stored log at index %llu",
                      (unsigned long long)gid, (unsigned long long)(out->first + out->n));
            rc = -1;
            break;
        }
        rc = rlog_push_entry(out, &cap, v, vlen);
    }
    store_iter_free(it);
    return rc;
}

int rlog_load(store_t *s, uint64_t gid, struct rlog_state *out)
{
    memset(out, 0, sizeof *out);
    int rc = rlog_load_hard_state(s, gid, out);
    if (rc == 0) {
        int found = rlog_load_snapshot(s, gid, &out->snap, &out->snap_data, &out->snap_len);
        if (found < 0)
            rc = -1;
        out->has_snapshot = found == 1;
    }
    if (rc == 0)
        rc = rlog_load_entries(s, gid, out);
    if (rc == 0 && out->n == 0)
        out->first = out->has_snapshot ? out->snap.index + 1 : 1;
    if (rc != 0)
        rlog_state_free(out);
    return rc;
}

void rlog_state_free(struct rlog_state *st)
{
    for (size_t i = 0; i < st->n; i++)
        free(st->entries[i].data);
    free(st->entries);
    free(st->snap_data);
    memset(st, 0, sizeof *st);
}

/* ---- listing ----------------------------------------------------------------------------- */

static int rlog_collect_ids(store_t *s, uint8_t tag, uint64_t **ids, size_t *n, size_t *cap)
{
    store_iter_t *it = store_iter_prefix(s, &tag, 1);
    if (it == NULL)
        return -1;
    const void *k, *v;
    size_t klen, vlen;
    int rc = 0;
    while (store_iter_next(it, &k, &klen, &v, &vlen)) {
        if (klen != RLOG_GROUP_KEY_LEN)
            continue;
        if (*n == *cap) {
            size_t ncap = *cap ? *cap * 2 : 64;
            uint64_t *grown = realloc(*ids, ncap * sizeof *grown);
            if (grown == NULL) {
                rc = -1;
                break;
            }
            *ids = grown;
            *cap = ncap;
        }
        (*ids)[(*n)++] = store_get_be64((const uint8_t *)k + 1);
    }
    store_iter_free(it);
    return rc;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

int rlog_list_groups(store_t *s, uint64_t **gids, size_t *n)
{
    uint64_t *ids = NULL;
    size_t count = 0, cap = 0;
    if (rlog_collect_ids(s, RLOG_KEY_HARD_STATE, &ids, &count, &cap) != 0 ||
        rlog_collect_ids(s, RLOG_KEY_SNAPSHOT, &ids, &count, &cap) != 0) {
        free(ids);
        return -1;
    }
    if (count > 1)
        qsort(ids, count, sizeof *ids, cmp_u64);
    size_t unique = 0;
    for (size_t i = 0; i < count; i++)
        if (unique == 0 || ids[unique - 1] != ids[i])
            ids[unique++] = ids[i];
    *gids = ids;
    *n = unique;
    return 0;
}
