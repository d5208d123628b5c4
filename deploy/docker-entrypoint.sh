#!/bin/sh
# docker-entrypoint.sh - Warren's container entrypoint. POSIX sh with shell builtins only (the
# image has dash and no other tools).
#
#   docker-entrypoint.sh [warren-server ARGS...]   start the node (the default command)
#   docker-entrypoint.sh healthcheck               the image's HEALTHCHECK: warrenctl await_startup
#   docker-entrypoint.sh COMMAND ARGS...           run another program (e.g. warrenctl list_queues)
#
# Configuration: /etc/warren/warren.conf when it exists (mount it; rabbitmq.conf syntax), then
# every WARREN_<KEY> variable of the environment (README: Configuration), which overrides the
# file. On top of those, this script turns a few convenience variables into keys:
#   WARREN_CLUSTER_NODES=a@h1,b@h2,c@h3  -> cluster_formation.classic_config.nodes.1..N
#   WARREN_COOKIE=secret                 -> cluster.cookie (warrenctl reads $WARREN_COOKIE too)
#   WARREN_COOKIE_FILE=/run/secrets/x    -> cluster.cookie_file
# WARREN_NODE_NAME, WARREN_DEFAULT_USER, WARREN_DEFAULT_PASS, WARREN_CLUSTER_NAME,
# WARREN_LOG_CONSOLE_LEVEL, ... are configuration keys already and need nothing here.
# Logs go to stdout (the node writes them to stderr; this script joins the two).
set -eu

CONF=${WARREN_CONFIG_FILE:-/etc/warren/warren.conf}

if [ -n "${WARREN_CLUSTER_NODES:-}" ]; then
  i=0
  old_ifs=$IFS
  IFS=', '
  for n in $WARREN_CLUSTER_NODES; do
    [ -n "$n" ] || continue
    i=$((i + 1))
    export "WARREN_CLUSTER_FORMATION_CLASSIC_CONFIG_NODES_$i=$n"
  done
  IFS=$old_ifs
fi
if [ -n "${WARREN_COOKIE:-}" ] && [ -z "${WARREN_CLUSTER_COOKIE:-}" ]; then
  export WARREN_CLUSTER_COOKIE="$WARREN_COOKIE"
fi
if [ -n "${WARREN_COOKIE_FILE:-}" ] && [ -z "${WARREN_CLUSTER_COOKIE_FILE:-}" ]; then
  export WARREN_CLUSTER_COOKIE_FILE="$WARREN_COOKIE_FILE"
fi

# conf_get KEY: the value of KEY in the environment (WARREN_<KEY>) or else in the config file.
conf_get() {
  key=$1
  # dash has no upper-casing builtin: the few keys read here are mapped by hand.
  case $key in
    cluster.cookie) var=WARREN_CLUSTER_COOKIE ;;
    cluster.cookie_file) var=WARREN_CLUSTER_COOKIE_FILE ;;
    cluster.listener.port) var=WARREN_CLUSTER_LISTENER_PORT ;;
    cluster.ssl) var=WARREN_CLUSTER_SSL ;;
    cluster.ssl_options.certfile) var=WARREN_CLUSTER_SSL_OPTIONS_CERTFILE ;;
    cluster.ssl_options.keyfile) var=WARREN_CLUSTER_SSL_OPTIONS_KEYFILE ;;
    cluster.ssl_options.cacertfile) var=WARREN_CLUSTER_SSL_OPTIONS_CACERTFILE ;;
    data_dir) var=WARREN_DATA_DIR ;;
    *) return 1 ;;
  esac
  eval "val=\${$var:-}"
  if [ -n "$val" ]; then printf '%s' "$val"; return 0; fi
  [ -r "$CONF" ] || return 0
  found=
  while IFS= read -r line || [ -n "$line" ]; do
    line=${line%%#*}
    case $line in *=*) ;; *) continue ;; esac
    k=${line%%=*}; v=${line#*=}
    set -f; set -- $k; k=${1:-}; set -- $v; v=${1:-}; set +f
    [ "$k" = "$key" ] && found=$v
  done < "$CONF"
  printf '%s' "$found"
}

healthcheck() {
  port=$(conf_get cluster.listener.port)
  set -- --timeout "${WARREN_HEALTHCHECK_TIMEOUT:-3}" --node "127.0.0.1:${port:-25672}"
  if [ -z "${WARREN_COOKIE:-}" ]; then
    cookie=$(conf_get cluster.cookie)
    cookie_file=$(conf_get cluster.cookie_file)
    if [ -n "$cookie" ]; then
      export WARREN_COOKIE="$cookie"
    else
      [ -n "$cookie_file" ] || cookie_file="$(conf_get data_dir)/.warren.cookie"
      case $cookie_file in /*) ;; *) cookie_file=/var/lib/warren/.warren.cookie ;; esac
      set -- "$@" --cookie-file "$cookie_file"
    fi
  fi
  if [ "$(conf_get cluster.ssl)" = true ]; then
    set -- "$@" --tls
    cert=$(conf_get cluster.ssl_options.certfile)
    key=$(conf_get cluster.ssl_options.keyfile)
    [ -n "$cert" ] && [ -n "$key" ] && set -- "$@" --cert "$cert" --key "$key"
  fi
  exec warrenctl "$@" await_startup
}

case "${1:-warren-server}" in
  healthcheck)
    healthcheck
    ;;
  warren-server|-*)
    [ "${1:-}" = warren-server ] && shift
    [ $# -eq 0 ] || [ "${1#-}" != "$1" ] || { echo "docker-entrypoint: unexpected argument $1" >&2; exit 64; }
    if [ -r "$CONF" ]; then
      exec /usr/local/bin/warren-server --config "$CONF" "$@" 2>&1
    fi
    exec /usr/local/bin/warren-server "$@" 2>&1
    ;;
  *)
    exec "$@"
    ;;
esac
