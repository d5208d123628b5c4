/* raftlog.c - Raft log, hard state and snapshots of every group, stored through store_t.
 *
 * Role: the storage half of the multi-Raft host (broker/multiraft.c). It turns the parts of a
 * raft_update that must be durable into RocksDB writes in the store's current batch, and reads
 * a group's state back at startup. It never waits for the disk: the host learns durability
 * from store_on_synced and then tells raft (RAFT_EV_PERSISTED).
 *
 * Key layout (see raftlog.h): runs of entries 'L' gid first and snapshots 'S' gid in STORE_LOG;
 * hard states 'H' gid in STORE_MAIN; all integers big-endian. (Snapshots were in STORE_MAIN
 * before; one found there is read and moved.)
 *
 * Invariants:
 *   - Read in key order, with each run replacing what earlier runs held from its first index
 *     on, a group's runs give a contiguous log. An append at `first` deletes every run starting
 *     after first (their keys lie in (first, top]) and puts its own run at first, replacing a
 *     run that started there; a run that starts earlier and reaches first is cut short by it on
 *     reading. Appending past the end, the common case, costs no range delete at all.
 *   - A run of count 0 (a pure truncation) is only ever the last run: the next append starts
 *     at or below its key, so it is replaced or deleted.
 *   - Compaction deletes only keys below a run start b <= upto + 1 (or everything when upto
 *     covers the whole stored log): every run it deletes lies wholly at or below upto, and no
 *     entry above upto changes, since a run's entries can only be cut by later runs.
 *   - A snapshot received from the leader replaces the whole stored log in the same batch, so
 *     a crash can never leave the new snapshot next to entries of the old history.
 *   - Everything a call writes lands in one store batch, which RocksDB writes atomically.
 */
#include "broker/raftlog.h"

#include <stdlib.h>
#include <string.h>

#include "broker/log.h"

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

void rlog_entry_key(uint8_t key[RLOG_ENTRY_KEY_LEN], uint64_t gid, raft_index first)
{
    key[0] = RLOG_KEY_ENTRY;
    store_put_be64(key + 1, gid);
    store_put_be64(key + 9, first);
}

void rlog_group_key(uint8_t key[RLOG_GROUP_KEY_LEN], uint8_t tag, uint64_t gid)
{
    key[0] = tag;
    store_put_be64(key + 1, gid);
}

/* Deletes the group's runs whose first index is in [from, to). */
static void rlog_delete_runs(store_t *s, uint64_t gid, raft_index from, raft_index to)
{
    if (from >= to)
        return;
    uint8_t begin[RLOG_ENTRY_KEY_LEN], end[RLOG_ENTRY_KEY_LEN];
    rlog_entry_key(begin, gid, from);
    rlog_entry_key(end, gid, to);
    store_del_range_in(s, STORE_LOG, begin, sizeof begin, end, sizeof end);
}

/* Deletes every run of the group: [gid, gid+1) covers all indexes, UINT64_MAX included. */
static void rlog_delete_all_entries(store_t *s, uint64_t gid)
{
    uint8_t begin[RLOG_GROUP_KEY_LEN], end[RLOG_GROUP_KEY_LEN];
    rlog_group_key(begin, RLOG_KEY_ENTRY, gid);
    if (gid == UINT64_MAX) { /* no gid+1: the end is the next tag */
        uint8_t tag_end = RLOG_KEY_ENTRY + 1;
        store_del_range_in(s, STORE_LOG, begin, sizeof begin, &tag_end, 1);
        return;
    }
    rlog_group_key(end, RLOG_KEY_ENTRY, gid + 1);
    store_del_range_in(s, STORE_LOG, begin, sizeof begin, end, sizeof end);
}

/* ---- the cursor: where the stored runs start --------------------------------------------- */

/* Records a run stored at `first`: starts at or after it are gone (deleted or replaced). When
 * the array is full, the start whose removal leaves the smallest gap goes (never the oldest,
 * which compaction keys on, nor the newest), so the sample stays spread over the log. */
static void cursor_push(struct rlog_cursor *c, raft_index first)
{
    while (c->n_starts > 0 && c->starts[c->n_starts - 1] >= first)
        c->n_starts--;
    if (c->n_starts == RLOG_STARTS) {
        unsigned drop = 1;
        raft_index best = UINT64_MAX;
        for (unsigned i = 1; i < RLOG_STARTS; i++) {
            raft_index next = i + 1 < RLOG_STARTS ? c->starts[i + 1] : first;
            if (next - c->starts[i - 1] < best) {
                best = next - c->starts[i - 1];
                drop = i;
            }
        }
        memmove(&c->starts[drop], &c->starts[drop + 1],
                (RLOG_STARTS - drop - 1) * sizeof c->starts[0]);
        c->n_starts--;
    }
    c->starts[c->n_starts++] = first;
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

/* Parts of a run's value on the stack up to this many entries; beyond, one malloc. */
#define RLOG_SMALL_RUN 16

void rlog_append(store_t *s, uint64_t gid, raft_index first, const struct raft_entry *entries,
                 size_t n, struct rlog_cursor *c)
{
    if (c->top > first)
        rlog_delete_runs(s, gid, first + 1, c->top + 1);
    if (n == 0 && c->top < first)
        return; /* truncating nothing */

    /* The value is gathered from the header bytes below and the entries' own data, so RocksDB
     * copies each payload once, straight into its batch. */
    const void *small_parts[1 + 2 * RLOG_SMALL_RUN];
    size_t small_lens[1 + 2 * RLOG_SMALL_RUN];
    uint8_t small_hdr[RLOG_RUN_HDR + RLOG_SMALL_RUN * RLOG_ENTRY_HDR];
    const void **parts = small_parts;
    size_t *lens = small_lens;
    uint8_t *hdr = small_hdr;
    void *heap = NULL;
    if (n > RLOG_SMALL_RUN) {
        size_t np = 1 + 2 * n;
        heap = malloc(np * (sizeof *parts + sizeof *lens) + RLOG_RUN_HDR + n * RLOG_ENTRY_HDR);
        if (heap == NULL || np > INT32_MAX) {
            log_error("raftlog: out of memory encoding a run of %zu entries", n);
            abort(); /* dropping a log write would break the persisted-before-ack contract */
        }
        parts = heap;
        lens = (size_t *)(parts + np);
        hdr = (uint8_t *)(lens + np);
    }
    put_be32(hdr, (uint32_t)n);
    int np = 0;
    parts[np] = hdr;
    lens[np++] = RLOG_RUN_HDR;
    bool last_is_hdr = true; /* headers lie back to back in hdr: adjacent ones make one part */
    uint8_t *h = hdr + RLOG_RUN_HDR;
    for (size_t i = 0; i < n; i++, h += RLOG_ENTRY_HDR) {
        const struct raft_entry *e = &entries[i];
        store_put_be64(h, e->term);
        h[8] = (uint8_t)e->type;
        put_be32(h + 9, e->len);
        if (last_is_hdr) {
            lens[np - 1] += RLOG_ENTRY_HDR;
        } else {
            parts[np] = h;
            lens[np++] = RLOG_ENTRY_HDR;
        }
        last_is_hdr = e->len == 0;
        if (e->len > 0) {
            parts[np] = e->data;
            lens[np++] = e->len;
        }
    }
    uint8_t key[RLOG_ENTRY_KEY_LEN];
    rlog_entry_key(key, gid, first);
    store_putv_in(s, STORE_LOG, key, sizeof key, np, parts, lens);
    free(heap);
    cursor_push(c, first);
    c->top = n > 0 ? first + n - 1 : first;
}

void rlog_compact(store_t *s, uint64_t gid, raft_index upto, struct rlog_cursor *c)
{
    if (c->n_starts == 0)
        return;
    if (upto >= c->top) { /* every stored entry is covered */
        rlog_delete_runs(s, gid, 0, c->top + 1);
        c->n_starts = 0;
        c->top = 0;
        return;
    }
    /* The last known start at or below upto + 1: every run before it ends at or below upto. */
    unsigned keep = 0;
    while (keep + 1 < c->n_starts && c->starts[keep + 1] <= upto + 1)
        keep++;
    if (keep == 0)
        return;
    rlog_delete_runs(s, gid, 0, c->starts[keep]);
    memmove(&c->starts[0], &c->starts[keep], (c->n_starts - keep) * sizeof c->starts[0]);
    c->n_starts = (uint8_t)(c->n_starts - keep);
}

void rlog_save_snapshot(store_t *s, uint64_t gid, const struct raft_snapshot_meta *meta,
                        const void *data, size_t len, bool replace_log, struct rlog_cursor *c)
{
    /* Header and configuration here, the bytes where they are: the write batch copies each part
     * once (a snapshot can be megabytes). */
    uint8_t head[RLOG_SNAP_HDR + RAFT_CONF_MAX_ENCODED];
    size_t conf_len = raft_conf_encode(&meta->conf, head + RLOG_SNAP_HDR);
    store_put_be64(head, meta->index);
    store_put_be64(head + 8, meta->term);
    put_be32(head + 16, (uint32_t)conf_len);
    if (replace_log) {
        rlog_delete_all_entries(s, gid);
        if (c != NULL)
            memset(c, 0, sizeof *c);
    }
    uint8_t key[RLOG_GROUP_KEY_LEN];
    rlog_group_key(key, RLOG_KEY_SNAPSHOT, gid);
    const void *parts[2] = {head, data};
    size_t lens[2] = {RLOG_SNAP_HDR + conf_len, len};
    store_putv_in(s, STORE_LOG, key, sizeof key, len > 0 ? 2 : 1, parts, lens);
}

void rlog_destroy(store_t *s, uint64_t gid)
{
    rlog_delete_all_entries(s, gid);
    uint8_t key[RLOG_GROUP_KEY_LEN];
    rlog_group_key(key, RLOG_KEY_HARD_STATE, gid);
    store_del(s, key, sizeof key);
    rlog_group_key(key, RLOG_KEY_SNAPSHOT, gid);
    store_del_in(s, STORE_LOG, key, sizeof key);
    store_del(s, key, sizeof key); /* a snapshot stored before they moved to STORE_LOG */
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
    int rc = store_get_in(s, STORE_LOG, key, sizeof key, &val, &vlen);
    if (rc == 0) {
        /* Written by a version that kept snapshots in STORE_MAIN: move it over in the current
         * batch (until that is durable, a restart finds it here again and moves it again). */
        rc = store_get(s, key, sizeof key, &val, &vlen);
        if (rc == 1) {
            store_put_in(s, STORE_LOG, key, sizeof key, val, vlen);
            store_del(s, key, sizeof key);
        }
    }
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

/* Adds one run read back at `first` to out: it cuts what earlier runs held from first on. */
static int rlog_add_run(struct rlog_state *out, size_t *cap, uint64_t gid, raft_index first,
                        const uint8_t *val, size_t vlen)
{
    if (vlen < RLOG_RUN_HDR)
        goto malformed;
    uint32_t count = get_be32(val);
    if (out->n == 0 && out->first == 0) {
        out->first = first;
    } else if (first > out->first + out->n) {
        log_error("raftlog: group %llu: gap in the stored log at index %llu",
                  (unsigned long long)gid, (unsigned long long)(out->first + out->n));
        return -1;
    } else {
        size_t keep = (size_t)(first - out->first); /* keys ascend: first > out->first */
        for (size_t i = keep; i < out->n; i++)
            free(out->entries[i].data);
        out->n = keep;
    }
    if (out->n + count > *cap) {
        size_t ncap = *cap ? *cap : 64;
        while (ncap < out->n + count)
            ncap *= 2;
        struct raft_entry *e = realloc(out->entries, ncap * sizeof *e);
        if (e == NULL)
            return -1;
        out->entries = e;
        *cap = ncap;
    }
    size_t off = RLOG_RUN_HDR;
    for (uint32_t i = 0; i < count; i++) {
        if (vlen - off < RLOG_ENTRY_HDR)
            goto malformed;
        const uint8_t *h = val + off;
        uint32_t len = get_be32(h + 9);
        off += RLOG_ENTRY_HDR;
        if (vlen - off < len)
            goto malformed;
        struct raft_entry *e = &out->entries[out->n];
        e->term = store_get_be64(h);
        e->type = h[8];
        e->len = len;
        e->data = NULL;
        if (len > 0) {
            e->data = malloc(len);
            if (e->data == NULL)
                return -1;
            memcpy(e->data, val + off, len);
        }
        off += len;
        out->n++;
    }
    if (off != vlen)
        goto malformed;
    cursor_push(&out->cursor, first);
    out->cursor.top = count > 0 ? first + count - 1 : first; /* it cut everything after it */
    return 0;
malformed:
    log_error("raftlog: group %llu: malformed log run at index %llu", (unsigned long long)gid,
              (unsigned long long)first);
    return -1;
}

static int rlog_load_entries(store_t *s, uint64_t gid, struct rlog_state *out)
{
    uint8_t prefix[RLOG_GROUP_KEY_LEN];
    rlog_group_key(prefix, RLOG_KEY_ENTRY, gid);
    store_iter_t *it = store_iter_prefix_in(s, STORE_LOG, prefix, sizeof prefix);
    if (it == NULL)
        return -1;
    size_t cap = 0;
    int rc = 0;
    const void *k, *v;
    size_t klen, vlen;
    while (rc == 0 && store_iter_next(it, &k, &klen, &v, &vlen)) {
        if (klen != RLOG_ENTRY_KEY_LEN) {
            log_error("raftlog: group %llu: malformed log key", (unsigned long long)gid);
            rc = -1;
            break;
        }
        raft_index first = store_get_be64((const uint8_t *)k + 9);
        rc = rlog_add_run(out, &cap, gid, first, v, vlen);
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

static int rlog_collect_ids(store_t *s, enum store_space sp, uint8_t tag, uint64_t **ids,
                            size_t *n, size_t *cap)
{
    store_iter_t *it = store_iter_prefix_in(s, sp, &tag, 1);
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
    if (rlog_collect_ids(s, STORE_MAIN, RLOG_KEY_HARD_STATE, &ids, &count, &cap) != 0 ||
        rlog_collect_ids(s, STORE_LOG, RLOG_KEY_SNAPSHOT, &ids, &count, &cap) != 0 ||
        rlog_collect_ids(s, STORE_MAIN, RLOG_KEY_SNAPSHOT, &ids, &count, &cap) != 0) {
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
