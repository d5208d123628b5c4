/* raftlog.h - durable Raft state of many groups in the node's RocksDB store (prefix rlog_).
 *
 * Every group keeps three kinds of records in the shared store_t, so that one synced batch
 * (one fsync) can carry the writes of all groups at once:
 *
 *   'L' gid index -> [u64 term][u8 type][data]         one log entry
 *   'H' gid       -> [u64 term][u32 vote]              the hard state
 *   'S' gid       -> [u64 index][u64 term][u32 conf_len][conf (raft_conf_encode)][data]
 *                                                      the latest snapshot: meta and bytes
 *
 * gid and index are big-endian u64, so a group's entries sort by index and one range delete
 * drops a prefix (compaction) or a suffix (truncation) of its log. ('m', 'i', 'Q', 'X', 'B',
 * 'V', 'U', 'P', 'D' belong to the broker; see broker/broker.h.)
 *
 * Writes go into the store's current batch; they are durable once a store_on_synced callback
 * registered after them has fired (the multi-Raft host does that and then steps
 * RAFT_EV_PERSISTED). Reads (rlog_load, rlog_load_snapshot) see only synced data.
 */
#ifndef WARREN_RAFTLOG_H
#define WARREN_RAFTLOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "broker/store.h"
#include "raft/raft.h"

enum { RLOG_KEY_ENTRY = 'L', RLOG_KEY_HARD_STATE = 'H', RLOG_KEY_SNAPSHOT = 'S' };
#define RLOG_ENTRY_KEY_LEN 17 /* tag + gid + index */
#define RLOG_GROUP_KEY_LEN 9  /* tag + gid */

/* What a group left on disk, as rlog_load found it. Owned by the caller: rlog_state_free. */
struct rlog_state {
    bool has_hard_state;
    raft_term term;
    raft_id vote;
    bool has_snapshot;
    struct raft_snapshot_meta snap;
    void *snap_data; /* malloc'd snapshot bytes (NULL when has_snapshot is false) */
    size_t snap_len;
    raft_index first;            /* index of entries[0]; snap.index + 1 or 1 when n == 0 */
    struct raft_entry *entries;  /* entries[i].data malloc'd (NULL when len == 0) */
    size_t n;
};

/* Reads a group's hard state, snapshot and entries (the stored entries must be contiguous;
 * a gap is reported as corruption). Returns 0, or -1 on a read error or a malformed record
 * (logged; *out is left empty). */
int rlog_load(store_t *s, uint64_t gid, struct rlog_state *out);
void rlog_state_free(struct rlog_state *st);

/* The latest synced snapshot of a group: meta and bytes (*data malloc'd, caller frees).
 * Returns 1 found, 0 none, -1 error. */
int rlog_load_snapshot(store_t *s, uint64_t gid, struct raft_snapshot_meta *meta, void **data,
                       size_t *len);

/* Queue writes into the store's current batch. */
void rlog_save_hard_state(store_t *s, uint64_t gid, raft_term term, raft_id vote);
/* Writes entries[0..n) at first.. . *stored_last is the highest index this group has written
 * (kept by the caller between calls, 0 for none): stored entries in (first + n - 1,
 * *stored_last] are deleted first (a conflicting suffix the new entries replace), and
 * *stored_last becomes first + n - 1. With n == 0 this truncates the log to first - 1. */
void rlog_append(store_t *s, uint64_t gid, raft_index first, const struct raft_entry *entries,
                 size_t n, raft_index *stored_last);
/* Deletes stored entries at index <= upto (a snapshot covers them). */
void rlog_compact(store_t *s, uint64_t gid, raft_index upto);
/* Stores a snapshot (replacing the previous one). With replace_log, every stored entry of the
 * group is deleted too (a snapshot received from the leader replaces the whole log). */
void rlog_save_snapshot(store_t *s, uint64_t gid, const struct raft_snapshot_meta *meta,
                        const void *data, size_t len, bool replace_log);
/* Deletes every record of the group. */
void rlog_destroy(store_t *s, uint64_t gid);

/* Groups with a stored hard state or snapshot, in id order (*gids malloc'd, caller frees).
 * Returns 0 or -1. */
int rlog_list_groups(store_t *s, uint64_t **gids, size_t *n);

/* Key builders, for tests that inspect the store. */
void rlog_entry_key(uint8_t key[RLOG_ENTRY_KEY_LEN], uint64_t gid, raft_index index);
void rlog_group_key(uint8_t key[RLOG_GROUP_KEY_LEN], uint8_t tag, uint64_t gid);

#endif
