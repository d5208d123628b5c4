/* store.h - the durable store: RocksDB behind a storage thread with group commit.
 *
 * The event loop never blocks on fsync. Writes (put/del/del_range) made on the loop thread go into
 * the *current batch*; RocksDB copies key and value bytes, so callers may free their buffers as soon
 * as a store_* call returns. Just before the loop blocks (an ev_prepare watcher), if the storage
 * thread is idle and the current batch holds writes or sync callbacks, the batch is handed to the
 * storage thread, which performs one synced rocksdb_write (WAL fsync) and reports back through an
 * ev_async. Writes that arrive while a batch is being written accumulate in the next batch, so many
 * messages share one fsync (group commit). Batches are written strictly in order.
 *
 * Durability contract: a write is durable only once a store_on_synced() callback registered after
 * it has fired. Callbacks run on the loop thread, in registration order, never from inside a
 * store_* call. A crash loses at most the batches whose callbacks never ran; since batches are
 * written in order, a surviving batch implies every earlier batch survived too.
 *
 * A failed synced write is fatal: the store logs the RocksDB error and aborts, because after a
 * failed fsync nothing can be confirmed safely; a restart recovers from the write-ahead log.
 *
 * Reads (store_get, iterators) see committed data only: what earlier batches wrote, not the
 * current, unsubmitted batch. All functions are for the loop thread (or startup/shutdown) only.
 * Callbacks may queue writes and register further callbacks, but must not call
 * store_flush_sync or store_close (a nested flush is refused with an error log).
 */
#ifndef WARREN_STORE_H
#define WARREN_STORE_H

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct store store_t;
typedef void (*store_cb)(void *arg);

/* Key spaces (RocksDB column families) of one store. Both share the write-ahead log, so one
 * batch - one fsync - still covers writes to both, atomically. They differ in tuning:
 *   STORE_MAIN  the broker's data (the plain store_* calls): small memtables, LZ4, bloom
 *               filters for point lookups;
 *   STORE_LOG   log-like data written in large records, read back only at startup and deleted
 *               by range soon after (Raft logs, broker/raftlog.c): larger memtables, so that
 *               most records are deleted before a flush would write them to a table file, and
 *               no compression or bloom filter (the few records that reach a table file are
 *               short-lived and only ever scanned). */
enum store_space { STORE_MAIN = 0, STORE_LOG = 1 };
#define STORE_SPACES 2

/* Opens (creating) a RocksDB database in dir (mkdir -p), with both key spaces. Tuned for a
 * log-like, write-heavy workload with a small memory footprint. Returns NULL and fills err on
 * failure, e.g. "data directory ./data is in use by another process". */
store_t *store_open(const char *dir, struct ev_loop *loop, char *err, size_t errlen);
/* Flushes the pending batch synchronously (waits for the storage thread), runs remaining
 * callbacks, stops the thread, closes RocksDB. Safe to call once at shutdown; NULL is a no-op.
 * Free all iterators first, and call it before ev_loop_destroy. The loop itself is left running (watchers are stopped). */
void store_close(store_t *s);

/* Benchmarks only: sync=false makes later batches skip the WAL fsync (rocksdb_write with
 * sync=false: data reaches the OS page cache, not the disk), so "durable" callbacks then only
 * mean "written". Call right after store_open, before any write. The default is sync=true. */
void store_set_sync(store_t *s, bool sync);

/* Write elision. A writer that would often write a record and delete it again shortly after
 * (a persistent message acknowledged within a millisecond) may defer the write: it calls
 * store_want_presubmit() and keeps the record aside; fn (set once with store_set_presubmit)
 * runs on the loop thread just before the current batch is handed to the storage thread -
 * also in store_flush_sync - and queues the deferred writes that are still wanted into that
 * batch. Sync callbacks registered meanwhile are in the same batch, so they still fire only
 * once those writes are durable; what was deleted before fn ran is simply never written. fn
 * must not call store_flush_sync or store_close. */
void store_set_presubmit(store_t *s, store_cb fn, void *arg);
void store_want_presubmit(store_t *s);

/* Queue writes into the current batch (loop thread only). */
void store_put(store_t *s, const void *key, size_t klen, const void *val, size_t vlen);
void store_del(store_t *s, const void *key, size_t klen);
void store_del_range(store_t *s, const void *begin, size_t blen, const void *end, size_t elen); /* [begin,end) */
/* The same in a given key space. putv stores the concatenation of parts[0..nparts) as one
 * value, copied once (no need to assemble it in a buffer first). */
void store_put_in(store_t *s, enum store_space sp, const void *key, size_t klen, const void *val,
                  size_t vlen);
void store_putv_in(store_t *s, enum store_space sp, const void *key, size_t klen, int nparts,
                   const void *const *parts, const size_t *lens);
void store_del_in(store_t *s, enum store_space sp, const void *key, size_t klen);
void store_del_range_in(store_t *s, enum store_space sp, const void *begin, size_t blen,
                        const void *end, size_t elen);
/* Compacts [begin, end) of a key space in the background (its own thread; a request made while
 * one runs is dropped): for ranges whose records were mostly deleted, so that their table files
 * go now rather than when unrelated writes trigger a compaction. store_close waits for it. */
void store_compact_range_in(store_t *s, enum store_space sp, const void *begin, size_t blen, const void *end,
                            size_t elen);
/* Calls cb(arg) on the loop thread once every write queued before this call is durable (synced). */
void store_on_synced(store_t *s, store_cb cb, void *arg);
/* Submits the current batch now if the storage thread is idle, even when no one waits for it
 * (normally the ev_prepare does it: at once when a sync callback waits, else within
 * STORE_DEFER_SECONDS). */
void store_kick(store_t *s);
/* Blocks until everything queued so far is durable and its callbacks have run. */
void store_flush_sync(store_t *s);

/* Reads see committed data (what earlier batches wrote). Loop thread or startup only. */
/* Returns 1 found (*val malloc'd, caller frees; always NUL-terminated, even when *vlen is 0),
 * 0 not found, -1 error (logged). */
int store_get(store_t *s, const void *key, size_t klen, void **val, size_t *vlen);
typedef struct store_iter store_iter_t;
/* Iterates keys with the given prefix in key order. Returns NULL on allocation failure.
 * Pointers returned by store_iter_next stay valid until the next call or store_iter_free. */
store_iter_t *store_iter_prefix(store_t *s, const void *prefix, size_t plen);
/* The same in a given key space (store_get and store_iter_prefix read STORE_MAIN). */
int store_get_in(store_t *s, enum store_space sp, const void *key, size_t klen, void **val,
                 size_t *vlen);
store_iter_t *store_iter_prefix_in(store_t *s, enum store_space sp, const void *prefix,
                                   size_t plen);
bool store_iter_next(store_iter_t *it, const void **key, size_t *klen, const void **val, size_t *vlen);
/* Positions the iterator at the first key >= key (within its prefix); the next store_iter_next
 * returns that entry. */
void store_iter_seek(store_iter_t *it, const void *key, size_t klen);
void store_iter_free(store_iter_t *it);

/* Stats for benchmarks/metrics, counting committed work: batches handed to the storage thread,
 * writes (put/del/del_range calls), bytes (key + value bytes), syncs (fsynced rocksdb_writes; a
 * batch holding only callbacks needs none). pending_ops counts writes queued but not yet durable
 * (current batch plus the one in flight). */
typedef struct {
    uint64_t batches, writes, bytes, syncs;
    uint64_t pending_ops;
    uint64_t log_trim_flushes; /* STORE_LOG memtables flushed right after a log deletion (store.c) */
} store_stats_t;
void store_get_stats(const store_t *s, store_stats_t *out);

/* Key helpers: big-endian integers so that keys sort numerically. */
void store_put_be64(uint8_t *dst, uint64_t v);
uint64_t store_get_be64(const uint8_t *src);

#endif
