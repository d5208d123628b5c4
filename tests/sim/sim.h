/* sim.h - deterministic simulator for raft/: nodes of the real library over a simulated network
 * (delay, loss, duplication, reordering, symmetric and one-way partitions) and a simulated disk
 * (a checksummed write-ahead log per node: a crash loses unsynced writes and may tear the record
 * being written), one seeded PRNG, invariant checks after every step, and a replicated FIFO queue
 * checked against a sequential model. Optional per-seed features (sim_opts.features): snapshots
 * and log compaction, membership changes with brand-new nodes, leadership transfer, read-index
 * reads, hibernation. See sim.c's opening comment and docs/raft.md. */
#ifndef WARREN_SIM_H
#define WARREN_SIM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "raft/raft.h"

/* The implementation under test: the real library, or the same source compiled with a planted
 * bug (tests/sim/raft_buggy.c). */
struct sim_impl {
    const char *name;
    int (*init)(struct raft *r, const struct raft_config *cfg);
    int (*restore)(struct raft *r, raft_term term, raft_id vote, const struct raft_snapshot_meta *snap,
                   raft_index first, const struct raft_entry *e, size_t n);
    int (*step)(struct raft *r, const struct raft_event *ev, struct raft_update *out);
    void (*free)(struct raft *r);
};
/* Read-only helpers (raft_entry_at, raft_get_conf, raft_quiescent...) come from the real library
 * for both: the buggy copy shares struct raft and differs only in how it commits. */

extern const struct sim_impl sim_impl_real;
extern const struct sim_impl sim_impl_buggy; /* RAFT_BUG_COMMIT_OLD_TERM */

/* Features, toggled per seed. Without any, a seed runs the base fault model: a fixed 3- or
 * 5-node cluster, network faults, crashes that lose unsynced writes, client enqueue/dequeue. */
enum sim_feature {
    SIM_F_TORN = 1u << 0,       /* a crash may leave the record being written half on disk */
    SIM_F_ASYM = 1u << 1,       /* besides two sides: an isolated node (often the leader),
                                   one-way partitions, single-link cuts; partitions last
                                   50..1550 steps (long enough for elections) */
    SIM_F_SNAPSHOT = 1u << 2,   /* snapshots (advised and at random), compaction, InstallSnapshot */
    SIM_F_MEMBERSHIP = 1u << 3, /* add learner / add voter / remove (incl. the leader), new ids */
    SIM_F_TRANSFER = 1u << 4,   /* leadership transfer to random targets */
    SIM_F_READS = 1u << 5,      /* read-index reads, checked for linearizability */
    SIM_F_HIBERNATE = 1u << 6,  /* stop ticking quiescent nodes; wake on message or later */
    SIM_F_REPLAY = 1u << 7,     /* old messages (votes, snapshots, TimeoutNow... above all) come
                                   back much later, within or across terms */
};
#define SIM_F_ALL 0xffu

/* The feature sets test_raft_sim uses (see sim_suite_features). */
enum sim_suite {
    SIM_SUITE_BASIC = 0,  /* no features: the fault model the planted bug is tuned against */
    SIM_SUITE_MIXED,      /* every fault, transfer, reads, hibernation on 1/3 of seeds,
                             snapshots on 2/3 of seeds; fixed membership */
    SIM_SUITE_MEMBERSHIP, /* all of the above plus membership changes, always with snapshots */
    SIM_SUITE_AUTO,       /* MIXED or MEMBERSHIP by the seed (bit 1), as `--seeds` runs */
};
unsigned sim_suite_features(enum sim_suite suite, uint64_t seed);
const char *sim_features_name(unsigned features, char *buf, size_t len);

struct sim_opts {
    uint64_t seed;
    unsigned n_nodes;     /* initial voters; 0: 3 for even seeds, 5 for odd ones */
    unsigned fault_steps; /* steps with faults before the final heal-and-drain phase (0: 4000) */
    unsigned features;    /* enum sim_feature */
    const struct sim_impl *impl;
    bool trace_all; /* print every step to stderr */
};

struct sim_result {
    bool ok;
    char why[512];
    unsigned n_nodes, features;
    uint64_t steps, elections, max_term, committed, acked_enq, acked_deq, acked_ack, crashes, partitions;
    uint64_t torn;          /* torn records found (and cut off) by recovery */
    uint64_t snapshots;     /* snapshots taken (made durable) */
    uint64_t installs;      /* snapshots installed from a leader */
    uint64_t compactions;   /* log compactions carried out on disk */
    uint64_t conf_changes;  /* configuration entries committed */
    uint64_t nodes_added;   /* brand-new node ids brought in */
    uint64_t transfers;     /* leadership transfers accepted */
    uint64_t reads;         /* read-index reads served and checked */
    uint64_t hibernations;  /* times a node stopped ticking */
    uint64_t replays;       /* old messages delivered again */
    char trace[6144];       /* the last steps before a failure */
};

/* The PRNG (xoshiro256** seeded with splitmix64). */
struct sim_rng { uint64_t s[4]; };
void sim_rng_seed(struct sim_rng *g, uint64_t seed);
uint64_t sim_rng_next(struct sim_rng *g);
uint64_t sim_rng_below(struct sim_rng *g, uint64_t n); /* [0, n) */

/* Run one seed. Returns true when every invariant held. */
bool sim_run(const struct sim_opts *o, struct sim_result *res);

#endif
