/* raft_buggy.c - raft/raft.c compiled a second time with a planted bug (a leader commits an
 * old-term entry by counting replicas, Raft paper Figure 8) under other symbol names, so the
 * simulator can prove it catches the bug: test_raft_sim --expect-bug. */
#define RAFT_BUG_COMMIT_OLD_TERM 1
#define raft_init raftbug_init
#define raft_restore raftbug_restore
#define raft_step raftbug_step
#define raft_free raftbug_free
#define raft_last_index raftbug_last_index
#define raft_term_at raftbug_term_at
#define raft_entry_at raftbug_entry_at
#define raft_role_name raftbug_role_name
#define raft_msg_name raftbug_msg_name
#define raft_conf_encode raftbug_conf_encode
#define raft_conf_decode raftbug_conf_decode
#define raft_conf_is_voter raftbug_conf_is_voter
#define raft_conf_has raftbug_conf_has
#define raft_get_conf raftbug_get_conf
#define raft_quiescent raftbug_quiescent
#include "raft/raft.c"

#include "tests/sim/sim.h"

const struct sim_impl sim_impl_buggy = {"buggy(commit-old-term)", raftbug_init, raftbug_restore,
                                        raftbug_step, raftbug_free};
