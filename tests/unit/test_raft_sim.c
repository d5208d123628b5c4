/* test_raft_sim.c - runs the deterministic Raft simulator over many seeds (plain main, no cmocka).
 *
 *   test_raft_sim [--seeds N] [--first S]   run seeds S..S+N-1 (3 nodes for even seeds, 5 for odd)
 *   test_raft_sim --seed S [--trace]        replay one seed (--trace prints every step)
 *   test_raft_sim --expect-bug [--seeds N]  run the library built with RAFT_BUG_COMMIT_OLD_TERM and
 *                                           succeed only if some seed catches the bug
 * Without arguments (ctest): the default seed count, then a short --expect-bug run. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tests/sim/sim.h"

#define DEFAULT_SEEDS 6000
#define DEFAULT_BUG_SEEDS 5000

static void report_failure(uint64_t seed, const struct sim_result *r) {
    printf("seed %llu FAILED (%u nodes): %s\nlast steps:\n%s", (unsigned long long)seed, r->n_nodes,
           r->why, r->trace);
    printf("replay: test_raft_sim --seed %llu --trace\n", (unsigned long long)seed);
}

static int run_seeds(uint64_t first, uint64_t n, const struct sim_impl *impl) {
    uint64_t passed = 0, failed = 0, commits = 0, elections = 0, crashes = 0, acked = 0;
    clock_t t0 = clock();
    for (uint64_t seed = first; seed < first + n; seed++) {
        struct sim_opts o = {.seed = seed, .impl = impl};
        struct sim_result r;
        if (sim_run(&o, &r)) {
            passed++;
        } else {
            failed++;
            if (failed <= 3) report_failure(seed, &r);
        }
        commits += r.committed;
        elections += r.elections;
        crashes += r.crashes;
        acked += r.acked_enq + r.acked_deq;
        if (n >= 10000 && (seed - first + 1) % (n / 10) == 0)
            fprintf(stderr, "  %llu/%llu seeds\n", (unsigned long long)(seed - first + 1), (unsigned long long)n);
    }
    printf("%s: seeds %llu..%llu: %llu committed entries, %llu acked client ops, %llu leaders, "
           "%llu crashes, %.1fs\n", impl->name, (unsigned long long)first,
           (unsigned long long)(first + n - 1), (unsigned long long)commits, (unsigned long long)acked,
           (unsigned long long)elections, (unsigned long long)crashes,
           (double)(clock() - t0) / CLOCKS_PER_SEC);
    printf("%llu passed, %llu failed\n", (unsigned long long)passed, (unsigned long long)failed);
    return failed ? 1 : 0;
}

/* The planted bug must be caught: returns 0 when some seed fails. */
static int expect_bug(uint64_t first, uint64_t n) {
    for (uint64_t seed = first; seed < first + n; seed++) {
        struct sim_opts o = {.seed = seed, .impl = &sim_impl_buggy};
        struct sim_result r;
        if (!sim_run(&o, &r)) {
            printf("planted bug caught by seed %llu (%u nodes) after %llu seeds: %s\n",
                   (unsigned long long)seed, r.n_nodes, (unsigned long long)(seed - first + 1), r.why);
            return 0;
        }
    }
    printf("planted bug NOT caught in %llu seeds\n", (unsigned long long)n);
    return 1;
}

int main(int argc, char **argv) {
    uint64_t seeds = DEFAULT_SEEDS, first = 1, one = 0;
    int have_one = 0, trace = 0, bug = 0, explicit_seeds = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--seeds") && i + 1 < argc) {
            seeds = strtoull(argv[++i], NULL, 10);
            explicit_seeds = 1;
        } else if (!strcmp(argv[i], "--first") && i + 1 < argc) {
            first = strtoull(argv[++i], NULL, 10);
        } else if (!strcmp(argv[i], "--seed") && i + 1 < argc) {
            one = strtoull(argv[++i], NULL, 10);
            have_one = 1;
        } else if (!strcmp(argv[i], "--trace")) {
            trace = 1;
        } else if (!strcmp(argv[i], "--expect-bug")) {
            bug = 1;
        } else {
            fprintf(stderr, "usage: %s [--seeds N] [--first S] [--seed S [--trace]] [--expect-bug]\n", argv[0]);
            return 2;
        }
    }
    if (have_one) {
        struct sim_opts o = {.seed = one, .impl = bug ? &sim_impl_buggy : &sim_impl_real, .trace_all = trace};
        struct sim_result r;
        if (!sim_run(&o, &r)) {
            report_failure(one, &r);
            printf("0 passed, 1 failed\n");
            return 1;
        }
        printf("seed %llu (%u nodes): %llu steps, %llu committed, %llu leaders, max term %llu, "
               "%llu crashes, %llu partitions, %llu acked enqueues, %llu acked dequeues\n",
               (unsigned long long)one, r.n_nodes, (unsigned long long)r.steps,
               (unsigned long long)r.committed, (unsigned long long)r.elections,
               (unsigned long long)r.max_term, (unsigned long long)r.crashes,
               (unsigned long long)r.partitions, (unsigned long long)r.acked_enq,
               (unsigned long long)r.acked_deq);
        printf("1 passed, 0 failed\n");
        return 0;
    }
    if (bug) return expect_bug(first, explicit_seeds ? seeds : DEFAULT_BUG_SEEDS);
    /* ctest mode also proves the checker bites; the summary line stays last */
    if (!explicit_seeds && expect_bug(1, DEFAULT_BUG_SEEDS) != 0) {
        printf("0 passed, 1 failed\n");
        return 1;
    }
    return run_seeds(first, seeds, &sim_impl_real);
}
