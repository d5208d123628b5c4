#!/usr/bin/env bash
# Installs what building, running and testing Warren needs on Debian 12, and nothing that is
# already there. Usage: scripts/deps.sh [build|test|bench]
set -euo pipefail
want=${1:-test}

pkgs=(cmake make gcc pkg-config libev-dev librocksdb-dev libsodium-dev libcjson-dev libssl-dev
      libpcre2-dev openssl protobuf-c-compiler libprotobuf-c-dev libhttp-parser-dev)
if [ "$want" != build ]; then
  pkgs+=(libcmocka-dev librabbitmq-dev clang libclang-rt-14-dev python3 python3-pip)
fi
if [ "$want" = bench ]; then
  pkgs+=(rabbitmq-server)
fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing ${missing[*]}"
  $SUDO apt-get update -qq
  # Keep the rabbitmq-server package from starting its own node on 5672: the benchmark starts
  # RabbitMQ itself, on other ports.
  policy=/usr/sbin/policy-rc.d
  had_policy=0; [ -e $policy ] && had_policy=1
  if [ $had_policy = 0 ]; then printf '#!/bin/sh\nexit 101\n' | $SUDO tee $policy >/dev/null; $SUDO chmod +x $policy; fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
  [ $had_policy = 0 ] && $SUDO rm -f $policy
fi

# The browser UI's test (tests/integration/test_mgmt_ui.py) drives Debian's headless Chromium; it
# skips, rather than failing the run, when Chromium cannot be installed here.
if [ "$want" = test ]; then
  ui_missing=()
  for p in chromium chromium-driver; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || ui_missing+=("$p")
  done
  if [ ${#ui_missing[@]} -gt 0 ]; then
    echo "deps: installing ${ui_missing[*]}"
    { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
        -o DPkg::Lock::Timeout=300 --no-install-recommends "${ui_missing[@]}"; } || \
      echo "deps: could not install ${ui_missing[*]}; test_mgmt_ui.py will be skipped"
  fi
fi

# Issue 8's Docker tests need a compose tool where a Docker engine runs: Debian's docker-compose.
if [ "$want" != build ] && command -v docker >/dev/null 2>&1 && ! docker compose version >/dev/null 2>&1 \
   && ! command -v docker-compose >/dev/null 2>&1; then
  echo "deps: installing docker-compose"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends docker-compose
fi

if [ "$want" != build ]; then
  py=python3
  if ! $py -c 'import pika, amqp, pytest, aio_pika, requests, selenium, prometheus_client' 2>/dev/null; then
    echo "deps: installing Python client libraries"
    $py -m pip install -q pika amqp pytest aio-pika requests selenium prometheus_client 2>/dev/null || \
      $py -m pip install -q --break-system-packages pika amqp pytest aio-pika requests selenium prometheus_client
  fi
fi
