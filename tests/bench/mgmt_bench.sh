#!/usr/bin/env bash
# mgmt_bench.sh: issue 7's management benchmark - Warren's management API versus RabbitMQ 3.10's
# management plugin with 10,000 idle classic queues, same machine, same run.
#
# Usage: tests/bench/mgmt_bench.sh            (normally `make bench-mgmt`, which builds first;
#        WARREN_BIN=path overrides $BUILD/warren-server)
#
# For each side in turn (Warren, then RabbitMQ): a fresh node loads MGMT_BENCH_QUEUES (10,000)
# durable classic queues from a definitions file (load_definitions), is waited for until
# /api/queues lists them all, and tests/bench/mgmt_bench.py measures it: the node's CPU time
# while idle (MGMT_BENCH_IDLE s after MGMT_BENCH_SETTLE s), then the latency of
# MGMT_BENCH_REQUESTS GETs of the whole /api/queues and of ?page=1&page_size=100. The node is
# stopped before the next side starts. RabbitMQ runs through tests/bench/rabbitmq.sh with
# rabbitmq_management enabled on its own ports.
# Prints the figures and ratios, and rewrites the "Management (issue 7)" section of
# docs/performance.md (BENCH_OUT to write elsewhere). Bounded: a watchdog stops everything after
# MGMT_BENCH_LIMIT (1800) s.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${BUILD:-build}
BIN=${WARREN_BIN:-$REPO/$BUILD/warren-server}
QUEUES=${MGMT_BENCH_QUEUES:-10000}
REQUESTS=${MGMT_BENCH_REQUESTS:-50}
IDLE=${MGMT_BENCH_IDLE:-60}
SETTLE=${MGMT_BENCH_SETTLE:-15}
LIMIT=${MGMT_BENCH_LIMIT:-1800}
OUT=${BENCH_OUT:-$REPO/docs/performance.md}

log() { echo "[mgmt-bench] $*" >&2; }
die() { log "$*"; exit 1; }
# shellcheck source=tests/bench/lib.sh
. "$REPO/tests/bench/lib.sh"

[ -x "$BIN" ] || die "$BIN missing (make bench-mgmt builds it)"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/warren-mgmt-bench.XXXXXX")
cp "$BIN" "$WORK/warren-server" # a rebuild during the run changes nothing
WARREN_PID="" RMQ_DIR=""

cleanup() {
  [ -z "$WARREN_PID" ] || { kill -TERM "$WARREN_PID" 2>/dev/null || true; wait "$WARREN_PID" 2>/dev/null || true; }
  [ -z "$RMQ_DIR" ] || "$REPO/tests/bench/rabbitmq.sh" stop "$RMQ_DIR" "$RMQ_PORT" >/dev/null 2>&1 || true
  [ -z "${WATCHDOG_PID:-}" ] || kill "$WATCHDOG_PID" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM
start_watchdog "$LIMIT" mgmt-bench

python3 "$REPO/tests/bench/mgmt_bench.py" defs "$QUEUES" "$WORK/defs.json"

# ---- Warren ----
pick_block 4
W_AMQP=$PICKED_PORT W_MGMT=$((PICKED_PORT + 1)) W_PROM=$((PICKED_PORT + 2)) W_CLUSTER=$((PICKED_PORT + 3))
cat >"$WORK/warren.conf" <<EOF
listeners.tcp.default = 127.0.0.1:$W_AMQP
listeners.ssl = none
data_dir = $WORK/warren-data
management.tcp.port = $W_MGMT
management.tcp.ip = 127.0.0.1
prometheus.tcp.port = $W_PROM
prometheus.tcp.ip = 127.0.0.1
cluster.listener.port = $W_CLUSTER
cluster.listener.ip = 127.0.0.1
load_definitions = $WORK/defs.json
log.console.level = warning
EOF
log "Warren: loading $QUEUES queues"
"$WORK/warren-server" --config "$WORK/warren.conf" >"$WORK/warren.log" 2>&1 &
WARREN_PID=$!
python3 "$REPO/tests/bench/mgmt_bench.py" wait "$W_MGMT" "$QUEUES" 120
log "Warren: measuring (idle ${IDLE}s after ${SETTLE}s, then ${REQUESTS} requests of each listing)"
python3 "$REPO/tests/bench/mgmt_bench.py" measure "$W_MGMT" "$WARREN_PID" "$REQUESTS" "$IDLE" "$SETTLE" \
  "$WORK/warren.json"
kill -TERM "$WARREN_PID"
wait "$WARREN_PID" 2>/dev/null || true
WARREN_PID=""

# ---- RabbitMQ ----
pick_block 2
RMQ_PORT=$PICKED_PORT R_MGMT=$((PICKED_PORT + 1))
RMQ_DIR=$WORK/rabbitmq
# cowboy drops a request that computes for longer than its idle timeout (60 s) without answering
R_TIMEOUTS="management.tcp.idle_timeout = 600000;management.tcp.inactivity_timeout = 600000"
R_TIMEOUTS="$R_TIMEOUTS;management.tcp.request_timeout = 600000"
log "RabbitMQ: starting with rabbitmq_management, loading $QUEUES queues"
RMQ_PID=$(RABBITMQ_BENCH_PLUGINS=rabbitmq_management RABBITMQ_READY_TIMEOUT=900 \
  RABBITMQ_BENCH_CONF="management.tcp.port = $R_MGMT;management.tcp.ip = 127.0.0.1;$R_TIMEOUTS;load_definitions = $WORK/defs.json" \
  "$REPO/tests/bench/rabbitmq.sh" start "$RMQ_DIR" "$RMQ_PORT")
python3 "$REPO/tests/bench/mgmt_bench.py" wait "$R_MGMT" "$QUEUES" 600
log "RabbitMQ: measuring (beam.smp $RMQ_PID)"
python3 "$REPO/tests/bench/mgmt_bench.py" measure "$R_MGMT" "$RMQ_PID" "$REQUESTS" "$IDLE" "$SETTLE" \
  "$WORK/rabbitmq.json"
"$REPO/tests/bench/rabbitmq.sh" stop "$RMQ_DIR" "$RMQ_PORT" >/dev/null
RMQ_DIR=""

python3 "$REPO/tests/bench/mgmt_bench.py" report "$WORK/warren.json" "$WORK/rabbitmq.json" "$OUT"
rm -rf "$WORK"
