#!/usr/bin/env bash
# rabbitmq_cluster.sh: runs a private three-node RabbitMQ 3.10 cluster on this machine, for
# the issue 5 cluster benchmark (tests/bench/cluster_run.sh).
#
# Usage: tests/bench/rabbitmq_cluster.sh start|stop|status DIR BASE_PORT
#
# Node i (1..3) is started by tests/bench/rabbitmq.sh in DIR/node<i> with AMQP on
# 127.0.0.1:BASE_PORT+i-1, so each node gets rabbitmq.sh's isolation unchanged: nodename
# bench-<port>@localhost, mnesia/logs/config under its own dir, HOME = its dir, no plugins,
# /etc/rabbitmq not read. Erlang distribution uses RABBITMQ_DIST_BASE_PORT+i-1 (default
# BASE_PORT+20000+i-1, as rabbitmq.sh would choose).
# The nodes can cluster because every node dir receives the same .erlang.cookie before the
# node starts (Erlang reads $HOME/.erlang.cookie, and HOME is the node dir); the cookie is
# kept in DIR/cookie. rabbitmqctl (/usr/lib/rabbitmq/bin/rabbitmqctl, not the /usr/sbin
# wrapper that switches users) runs with HOME = DIR/node1, so it presents that cookie.
#
# start: wipes any old mnesia state under DIR/node<i> (every start is a fresh cluster), starts
#   the three nodes in parallel (each bounded by rabbitmq.sh's 60 s), then for nodes 2 and 3:
#   stop_app, join_cluster <node 1>, start_app; waits - at most CLUSTER_TIMEOUT_S - until
#   `rabbitmqctl cluster_status` on node 1 lists 3 running nodes and every AMQP port answers,
#   and prints the three beam.smp PIDs on one line (node 1 first). On any failure it stops
#   whatever it started and exits 1.
# stop: stops the three nodes in parallel (rabbitmq.sh stop: SIGTERM, SIGKILL after 30 s),
#   then epmd, if rabbitmq.sh started it and no node uses it any more.
# status: prints "running PID1 PID2 PID3 (3 running nodes)" (exit 0) or "stopped ..." (exit 3).
#
# Environment: RABBITMQ_DIST_BASE_PORT (see above), RABBITMQ_SCRIPTS (/usr/lib/rabbitmq/bin),
#   CLUSTER_TIMEOUT_S (90: bound on joining and on waiting for the cluster to form).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
RABBITMQ_SH=$HERE/rabbitmq.sh
RMQ_SCRIPTS=${RABBITMQ_SCRIPTS:-/usr/lib/rabbitmq/bin}
CTL=$RMQ_SCRIPTS/rabbitmqctl
CLUSTER_TIMEOUT_S=${CLUSTER_TIMEOUT_S:-90}
CTL_TIMEOUT_S=60          # per rabbitmqctl call
NODES=3

die() { echo "rabbitmq_cluster.sh: $*" >&2; exit 1; }
usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
}

case "${1:-}" in -h|--help) usage ;; esac
[ $# -eq 3 ] || usage
action=$1 dir=$2 base=$3
case "$base" in ''|*[!0-9]*) die "BASE_PORT must be a number, got '$base'";; esac
[ "$base" -ge 1 ] && [ $((base + NODES - 1)) -le 65535 ] || die "BASE_PORT out of range: $base"
case "$CLUSTER_TIMEOUT_S" in ''|*[!0-9]*|0) die "CLUSTER_TIMEOUT_S must be a positive integer";; esac
dist_base=${RABBITMQ_DIST_BASE_PORT:-$((base + 20000))}
case "$dist_base" in ''|*[!0-9]*) die "RABBITMQ_DIST_BASE_PORT must be a number";; esac
[ $((dist_base + NODES - 1)) -le 65535 ] || dist_base=$((base - 10000))

node_port() { echo $((base + $1 - 1)); }
node_dist_port() { echo $((dist_base + $1 - 1)); }
node_dir() { echo "$dir/node$1"; }
node_name() { echo "bench-$(node_port "$1")@localhost"; }

# rabbitmq.sh for node i, with that node's distribution port.
node_sh() {   # node_sh ACTION I
  RABBITMQ_DIST_PORT=$(node_dist_port "$2") "$RABBITMQ_SH" "$1" "$(node_dir "$2")" "$(node_port "$2")"
}

# rabbitmqctl against node i, bounded, with node 1's HOME (the shared cookie).
ctl() {   # ctl I ARGS...
  local i=$1; shift
  HOME=$(node_dir 1) RABBITMQ_CONF_ENV_FILE=$(node_dir 1)/rabbitmq-env.conf \
    RABBITMQ_USE_LONGNAME=false \
    timeout --kill-after=5 "$CTL_TIMEOUT_S" "$CTL" -n "$(node_name "$i")" "$@"
}

# Number of running nodes node 1 reports (0 if it does not answer).
running_nodes() {
  local json
  json=$(ctl 1 cluster_status --formatter json 2>/dev/null) || { echo 0; return 0; }
  python3 -c '
import json, sys
try:
    print(len(json.loads(sys.argv[1]).get("running_nodes", [])))
except Exception:
    print(0)' "$json"
}

amqp_answers() {
  local first
  first=$(timeout 2 bash -c '
      exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
      printf "AMQP\0\0\x09\x01" >&3
      head -c 1 <&3 | od -An -tx1' _ "$1" 2>/dev/null) || return 1
  [ "${first// /}" = 01 ]
}

do_stop() {
  local i pids=()
  # In parallel (each rabbitmq.sh stop is bounded: SIGTERM, SIGKILL after 30 s). Each also
  # tries to release epmd, but while the others still run it sees their names, so one more
  # (no-op) stop of node 1 afterwards releases epmd once all three are gone.
  for i in 1 2 3; do
    [ -d "$(node_dir "$i")" ] || continue
    node_sh stop "$i" >/dev/null 2>&1 &
    pids+=($!)
  done
  for i in "${pids[@]}"; do wait "$i" || echo "rabbitmq_cluster.sh: stopping a node failed" >&2; done
  [ -d "$(node_dir 1)" ] && { node_sh stop 1 >/dev/null 2>&1 || true; }
  echo "stopped"
}

fail_start() {
  echo "rabbitmq_cluster.sh: $*" >&2
  local i f
  [ -s "$dir/ctl.log" ] && { echo "--- $dir/ctl.log (tail)" >&2; tail -n 20 "$dir/ctl.log" >&2; }
  for i in 1 2 3; do
    f=$(node_dir "$i")/start.out
    [ -s "$f" ] && { echo "--- node $i: $f" >&2; tail -n 10 "$f" >&2; }
  done
  do_stop >/dev/null 2>&1 || true
  exit 1
}

do_start() {
  command -v python3 >/dev/null || die "python3 is needed to read cluster_status"
  [ -x "$CTL" ] || die "RabbitMQ is not installed (run scripts/deps.sh bench)"
  local i pids=() rc
  for i in 1 2 3; do
    if node_sh status "$i" >/dev/null 2>&1; then die "node $i is already running in $(node_dir "$i")"; fi
  done
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  # One cookie for the three nodes and for rabbitmqctl.
  if [ ! -s "$dir/cookie" ]; then
    (umask 077; head -c 24 /dev/urandom | od -An -tx1 | tr -dc 0-9a-f | tr a-f A-F >"$dir/cookie")
  fi
  for i in 1 2 3; do
    local d
    d=$(node_dir "$i")
    rm -rf "$d/mnesia"
    mkdir -p "$d"
    rm -f "$d/.erlang.cookie"
    (umask 077; cp "$dir/cookie" "$d/.erlang.cookie")
    chmod 400 "$d/.erlang.cookie"
  done

  # Boot in parallel; each rabbitmq.sh start is bounded by its own 60 s.
  for i in 1 2 3; do
    node_sh start "$i" >"$(node_dir "$i")/start.out" 2>&1 &
    pids+=($!)
  done
  rc=0
  for i in 1 2 3; do wait "${pids[$((i - 1))]}" || rc=$?; done
  [ $rc -eq 0 ] || fail_start "a node failed to start"

  local first
  first=$(node_name 1)
  : >"$dir/ctl.log"
  # rabbitmqctl's output (including log lines the nodes print while joining) goes to
  # DIR/ctl.log, shown if something fails.
  for i in 2 3; do
    ctl "$i" stop_app >>"$dir/ctl.log" 2>&1 || fail_start "node $i: stop_app failed"
    ctl "$i" join_cluster "$first" >>"$dir/ctl.log" 2>&1 || fail_start "node $i: join_cluster $first failed"
    ctl "$i" start_app >>"$dir/ctl.log" 2>&1 || fail_start "node $i: start_app failed"
  done

  local deadline=$((SECONDS + CLUSTER_TIMEOUT_S)) n=0
  while :; do
    n=$(running_nodes)
    if [ "$n" -eq "$NODES" ]; then
      local all=1
      for i in 1 2 3; do amqp_answers "$(node_port "$i")" || all=0; done
      [ $all = 1 ] && break
    fi
    [ $SECONDS -lt $deadline ] || fail_start "cluster not formed within ${CLUSTER_TIMEOUT_S}s ($n running nodes)"
    sleep 0.5
  done
  local out=()
  for i in 1 2 3; do out+=("$(tr -dc 0-9 <"$(node_dir "$i")/rabbit.pid")"); done
  echo "${out[*]}"
}

do_status() {
  local i line out=() ok=1 n
  for i in 1 2 3; do
    if line=$(node_sh status "$i" 2>/dev/null); then out+=("${line#running }"); else out+=(-); ok=0; fi
  done
  n=0
  [ $ok = 1 ] && n=$(running_nodes)
  if [ $ok = 1 ] && [ "$n" -eq "$NODES" ]; then
    echo "running ${out[*]} ($n running nodes)"
  else
    echo "stopped (node PIDs: ${out[*]}; $n running nodes)"
    exit 3
  fi
}

case "$action" in
  start) do_start ;;
  stop) do_stop ;;
  status) do_status ;;
  *) usage ;;
esac
