/* sim.h - deterministic simulator for raft/: N nodes of the real library over a simulated
 * network and disk, one seeded PRNG, invariant checks after every step, and a replicated FIFO
 * queue checked against a sequential model. See docs/raft.md. */
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

extern const struct sim_impl sim_impl_real;
extern const struct sim_impl sim_impl_buggy; /* RAFT_BUG_COMMIT_OLD_TERM */

struct sim_opts {
    uint64_t seed;
    unsigned n_nodes;     /* 0: 3 or 5 chosen by the seed */
    unsigned fault_steps; /* steps with faults before the final heal-and-drain phase */
    const struct sim_impl *impl;
    bool trace_all; /* print every step to stderr */
};

struct sim_result {
    bool ok;
    char why[512];
    unsigned n_nodes;
    uint64_t steps, elections, max_term, committed, acked_enq, acked_deq, crashes, partitions;
    char trace[4096]; /* the last steps before a failure */
};

/* The PRNG (xoshiro256** seeded with splitmix64). */
struct sim_rng { uint64_t s[4]; };
void sim_rng_seed(struct sim_rng *g, uint64_t seed);
uint64_t sim_rng_next(struct sim_rng *g);
uint64_t sim_rng_below(struct sim_rng *g, uint64_t n); /* [0, n) */

/* Run one seed. Returns true when every invariant held. */
bool sim_run(const struct sim_opts *o, struct sim_result *res);

#endif
