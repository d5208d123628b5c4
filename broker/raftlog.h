/* raftlog.h - durable Raft state of many groups in the node's RocksDB store (prefix rlog_).
 *
 * Every group keeps three kinds of records in the shared store_t, so that one synced batch
 * (one fsync) can carry the writes of all groups at once:
 *
 *   STORE_LOG  'L' gid first -> [u32 count] count x ([u64 term][u8 type][u32 len][data])
 *                                                   a run of log entries: first, first + 1, ...
 *   STORE_MAIN 'H' gid       -> [u64 term][u32 vote]              the hard state
 *   STORE_LOG  'S' gid       -> [u64 index][u64 term][u32 conf_len][conf (raft_conf_encode)][data]
 *                                                   the latest snapshot: meta and bytes
 *
 * Snapshots live beside the log, not with the broker's data: a quorum queue's snapshot is
 * rewritten every few megabytes of log, and in STORE_MAIN each rewrite put the key 'S' into
 * every flushed table file next to the queue's stored bodies ('b'), so that every compaction
 * overlapped - and rewrote - the whole body table (quadratic in a growing backlog).
 *
 * gid and first are big-endian u64 (integers in the values too), so a group's runs sort by
 * their first index. A run is what one rlog_append call wrote: the host writes a group's
 * entries of one loop iteration as one run, so RocksDB sees one key per batch of entries rather
 * than one per entry (a memtable insert, a write-ahead-log record header and later a table
 * entry saved per entry).
 *
 * Reading the log back: runs are taken in key order, and a run starting at `first` replaces
 * whatever earlier runs held at first and beyond (that is how a conflicting suffix is
 * overwritten without rewriting the run it starts in). A run of count 0 only truncates.
 * Compaction deletes whole runs that lie below a snapshot, so the stored log may start a few
 * entries below what raft compacted (raft_restore keeps them as trailing entries).
 * ('m', 'i', 'Q', 'X', 'B', 'V', 'U', 'P', 'D' in STORE_MAIN belong to the broker; see
 * broker/broker.h.)
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
#define RLOG_ENTRY_KEY_LEN 17 /* tag + gid + first index of the run */
#define RLOG_GROUP_KEY_LEN 9  /* tag + gid */
#define RLOG_RUN_HDR 4        /* u32 count */
#define RLOG_ENTRY_HDR 13     /* u64 term + u8 type + u32 len */

/* What the caller keeps per group between writes, so that appends and compactions know what is
 * stored without reading it back (reads see only synced data, and cost). */
#define RLOG_STARTS 8
struct rlog_cursor {
    raft_index top;                 /* highest index a stored run covers or starts at (0: none) */
    raft_index starts[RLOG_STARTS]; /* first indexes of stored runs, ascending: all of them, or
                                       a spread-out sample when there are more (compaction can
                                       then only delete up to a known start; the rest goes at a
                                       later one) */
    uint8_t n_starts;
};

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
    struct rlog_cursor cursor;   /* for the writes that follow */
};

/* Reads a group's hard state, snapshot and entries (the runs must make a contiguous log; a gap
 * is reported as corruption). Returns 0, or -1 on a read error or a malformed record (logged;
 * *out is left empty). */
int rlog_load(store_t *s, uint64_t gid, struct rlog_state *out);
void rlog_state_free(struct rlog_state *st);

/* The latest synced snapshot of a group: meta and bytes (*data malloc'd, caller frees).
 * Returns 1 found, 0 none, -1 error. */
int rlog_load_snapshot(store_t *s, uint64_t gid, struct raft_snapshot_meta *meta, void **data,
                       size_t *len);

/* Queue writes into the store's current batch. */
void rlog_save_hard_state(store_t *s, uint64_t gid, raft_term term, raft_id vote);
/* Writes entries[0..n) at first.. as one run (RocksDB copies the bytes once, straight from
 * entries[i].data). Whatever is stored at first and beyond is replaced: runs starting after
 * first are deleted, and one that starts before is cut short by this run when read back. With
 * n == 0 this truncates the log to first - 1. Updates *c (a zeroed cursor for an empty log). */
void rlog_append(store_t *s, uint64_t gid, raft_index first, const struct raft_entry *entries,
                 size_t n, struct rlog_cursor *c);
/* Deletes the stored runs that lie wholly at or below upto (a snapshot covers them). */
void rlog_compact(store_t *s, uint64_t gid, raft_index upto, struct rlog_cursor *c);
/* Stores a snapshot (replacing the previous one). With replace_log, every stored entry of the
 * group is deleted too (a snapshot received from the leader replaces the whole log) and *c is
 * reset (c may be NULL otherwise). */
void rlog_save_snapshot(store_t *s, uint64_t gid, const struct raft_snapshot_meta *meta,
                        const void *data, size_t len, bool replace_log, struct rlog_cursor *c);
/* Deletes every record of the group. */
void rlog_destroy(store_t *s, uint64_t gid);

/* Groups with a stored hard state or snapshot, in id order (*gids malloc'd, caller frees).
 * Returns 0 or -1. */
int rlog_list_groups(store_t *s, uint64_t **gids, size_t *n);

/* Key builders, for tests that inspect the store. */
void rlog_entry_key(uint8_t key[RLOG_ENTRY_KEY_LEN], uint64_t gid, raft_index first);
void rlog_group_key(uint8_t key[RLOG_GROUP_KEY_LEN], uint8_t tag, uint64_t gid);

#endif
