#!/usr/bin/env bash
# rabbitmq.sh: runs a private RabbitMQ node for the benchmark and the client tests.
#
# Usage: tests/bench/rabbitmq.sh start|stop|status DIR AMQP_PORT
#
# The node is isolated from any system RabbitMQ so it can run next to one (and next to
# other private nodes) without touching /var/lib/rabbitmq or port 5672:
#   - nodename bench-<AMQP_PORT>@localhost, AMQP on 127.0.0.1:AMQP_PORT, Erlang distribution
#     on RABBITMQ_DIST_PORT (default AMQP_PORT+20000, like 5672 -> 25672);
#   - every file it writes lives under DIR: mnesia/, log/, rabbitmq.conf, enabled_plugins
#     ("[]." - no management plugin), pid files; HOME=DIR so the Erlang cookie is private too;
#   - RABBITMQ_BENCH_PLUGINS="rabbitmq_management,rabbitmq_prometheus" enables plugins, and
#     RABBITMQ_BENCH_CONF="key = value;key = value" appends rabbitmq.conf lines (their ports);
#   - /etc/rabbitmq/rabbitmq-env.conf is not read (RABBITMQ_CONF_ENV_FILE points into DIR).
# It starts the Debian package's real scripts directly (/usr/lib/rabbitmq/bin), not the
# /usr/sbin wrappers, because those switch to the rabbitmq user when run as root.
#
# start: launches the node in its own session (setsid, so the whole process tree can be
#   signalled), waits - at most 60 s (RABBITMQ_READY_TIMEOUT) - until the port answers the AMQP
#   protocol header with a connection.start frame, and prints the PID of the beam.smp process
#   (the one to watch for RSS). epmd is started first if none is running, and a marker
#   records that we did.
#   The process tree is: rabbitmq-server (a sh wrapper that turns SIGTERM into an orderly
#   shutdown; its PID is DIR/launcher.pid) -> beam.smp (DIR/rabbit.pid, written by RabbitMQ).
# stop: SIGTERM to the wrapper, which stops beam.smp and waits for it; after 30 s the node's
#   process group is SIGKILLed. Finally epmd is stopped if we started it and no node is
#   registered with it any more.
# status: prints "running PID" (exit 0) or "stopped" (exit 3).
set -euo pipefail

RMQ_SCRIPTS=${RABBITMQ_SCRIPTS:-/usr/lib/rabbitmq/bin}
EPMD_MARKER=${TMPDIR:-/tmp}/warren-bench-epmd.started
READY_TIMEOUT_S=${RABBITMQ_READY_TIMEOUT:-60} # RabbitMQ opens AMQP after load_definitions' import
STOP_TIMEOUT_S=30

die() { echo "rabbitmq.sh: $*" >&2; exit 1; }

usage() { die "usage: $0 start|stop|status DIR AMQP_PORT"; }

[ $# -eq 3 ] || usage
action=$1 dir=$2 port=$3
case "$port" in ''|*[!0-9]*) die "AMQP_PORT must be a number, got '$port'";; esac
[ "$port" -ge 1 ] && [ "$port" -le 65535 ] || die "AMQP_PORT out of range: $port"
[ "$port" != 5672 ] || die "refusing port 5672: that belongs to a system broker"

nodename=bench-$port@localhost
dist_port=${RABBITMQ_DIST_PORT:-$((port + 20000))}
[ "$dist_port" -le 65535 ] || dist_port=$((port - 10000))
launcher_pidfile=$dir/launcher.pid
beam_pidfile=$dir/rabbit.pid

# True when something answers the AMQP 0-9-1 protocol header on the port with a method frame
# (frame type 1: connection.start). A bare TCP accept is not enough: it would also be true for
# some unrelated listener.
amqp_answers() {
  local first
  first=$(timeout 2 bash -c '
      exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
      printf "AMQP\0\0\x09\x01" >&3
      head -c 1 <&3 | od -An -tx1' _ "$1" 2>/dev/null) || return 1
  [ "${first// /}" = 01 ]
}

pid_alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

read_pid() { [ -s "$1" ] && tr -dc 0-9 <"$1" || true; }

node_env() {
  export HOME=$dir
  export RABBITMQ_CONF_ENV_FILE=$dir/rabbitmq-env.conf
  export RABBITMQ_NODENAME=$nodename
  export RABBITMQ_USE_LONGNAME=false
  export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
  export RABBITMQ_NODE_PORT=$port
  export RABBITMQ_DIST_PORT=$dist_port
  export RABBITMQ_MNESIA_BASE=$dir/mnesia
  export RABBITMQ_LOG_BASE=$dir/log
  export RABBITMQ_CONFIG_FILE=$dir/rabbitmq.conf
  export RABBITMQ_ADVANCED_CONFIG_FILE=$dir/advanced.config
  export RABBITMQ_ENABLED_PLUGINS_FILE=$dir/enabled_plugins
  export RABBITMQ_PID_FILE=$dir/rabbit.pid
}

ensure_epmd() {
  if ! epmd -names >/dev/null 2>&1; then
    epmd -daemon
    touch "$EPMD_MARKER"
  fi
}

# Stops epmd only if this script started it and no node (ours or anyone's) still uses it;
# `epmd -kill` itself refuses while names are registered.
release_epmd() {
  [ -e "$EPMD_MARKER" ] || return 0
  if ! epmd -names 2>/dev/null | grep -q '^name '; then
    epmd -kill >/dev/null 2>&1 || true
    rm -f "$EPMD_MARKER"
  fi
}

print_log_tail() {
  local f
  for f in "$dir"/log/stdout.log "$dir/log/$nodename.log"; do
    [ -s "$f" ] && { echo "--- $f (tail)" >&2; tail -n 20 "$f" >&2; }
  done
  return 0
}

do_start() {
  command -v erl >/dev/null && [ -x "$RMQ_SCRIPTS/rabbitmq-server" ] ||
    die "RabbitMQ is not installed (run scripts/deps.sh bench)"
  local launcher beam
  launcher=$(read_pid "$launcher_pidfile")
  if pid_alive "$launcher"; then die "already running (launcher PID $launcher) in $dir"; fi
  if amqp_answers "$port"; then die "port $port is already taken by another AMQP server"; fi

  mkdir -p "$dir/mnesia" "$dir/log"
  dir=$(cd "$dir" && pwd)
  launcher_pidfile=$dir/launcher.pid
  beam_pidfile=$dir/rabbit.pid
  rm -f "$beam_pidfile"
  : >"$dir/rabbitmq-env.conf"
  echo "[${RABBITMQ_BENCH_PLUGINS:-}]." >"$dir/enabled_plugins"
  # Stock settings on purpose: the benchmark compares against RabbitMQ as shipped.
  printf '%s\n' '# Private benchmark node; everything else is RabbitMQ 3.10 defaults.' \
    'log.console = false' >"$dir/rabbitmq.conf"
  [ -z "${RABBITMQ_BENCH_CONF:-}" ] || tr ';' '\n' <<<"$RABBITMQ_BENCH_CONF" >>"$dir/rabbitmq.conf"
  node_env
  ensure_epmd

  setsid "$RMQ_SCRIPTS/rabbitmq-server" >"$dir/log/stdout.log" 2>&1 </dev/null &
  launcher=$!
  echo "$launcher" >"$launcher_pidfile"

  local deadline=$((SECONDS + READY_TIMEOUT_S))
  until amqp_answers "$port"; do
    if ! pid_alive "$launcher"; then
      print_log_tail
      rm -f "$launcher_pidfile"
      die "node exited during boot"
    fi
    if [ $SECONDS -ge $deadline ]; then
      print_log_tail
      do_stop >/dev/null 2>&1 || true
      die "node did not accept AMQP on port $port within ${READY_TIMEOUT_S}s"
    fi
    sleep 0.1
  done
  beam=$(read_pid "$beam_pidfile")
  if [ "$(cat "/proc/$beam/comm" 2>/dev/null)" != beam.smp ]; then
    # RabbitMQ writes its pid file early in boot, so this is only a fallback.
    beam=$(ps -o pid= -o comm= --ppid "$launcher" | awk '$2 == "beam.smp" {print $1; exit}')
    [ -n "$beam" ] || die "node answers on $port but its beam.smp process was not found"
    echo "$beam" >"$beam_pidfile"
  fi
  echo "$beam"
}

do_stop() {
  local launcher beam
  launcher=$(read_pid "$launcher_pidfile")
  beam=$(read_pid "$beam_pidfile")
  if pid_alive "$launcher"; then
    kill -TERM "$launcher" 2>/dev/null || true
  elif pid_alive "$beam"; then
    kill -TERM "$beam" 2>/dev/null || true
  fi
  local deadline=$((SECONDS + STOP_TIMEOUT_S))
  while { pid_alive "$launcher" || pid_alive "$beam"; } && [ $SECONDS -lt $deadline ]; do
    sleep 0.1
  done
  # Whatever is still there after an orderly stop failed goes now; the group id is the
  # launcher's PID because of setsid.
  if pid_alive "$launcher" || pid_alive "$beam"; then
    [ -n "$launcher" ] && kill -KILL -- "-$launcher" 2>/dev/null || true
    [ -n "$beam" ] && kill -KILL "$beam" 2>/dev/null || true
    deadline=$((SECONDS + 5))
    while pid_alive "$beam" && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
  fi
  rm -f "$launcher_pidfile" "$beam_pidfile"
  release_epmd
  echo "stopped"
}

do_status() {
  local beam
  beam=$(read_pid "$beam_pidfile")
  if pid_alive "$beam" && amqp_answers "$port"; then
    echo "running $beam"
  else
    echo "stopped"
    exit 3
  fi
}

case "$action" in
  start) do_start ;;
  stop) do_stop ;;
  status) do_status ;;
  *) usage ;;
esac
