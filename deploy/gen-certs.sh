#!/usr/bin/env bash
# deploy/gen-certs.sh - TLS certificates for the docker-compose cluster (deploy/docker-compose.yml).
#
#   deploy/gen-certs.sh [DIR] [NODES...]     default: deploy/certs, warren1 warren2 warren3
#
# Writes into DIR (created; existing files are kept unless FORCE=1):
#   ca.pem, ca.key                 a self-made CA (10 years; keep ca.key private or delete it)
#   <node>.pem, <node>.key         per-node certificate and key, signed by the CA, valid for
#                                  TLS server and client use (extendedKeyUsage serverAuth,
#                                  clientAuth: the nodes present it on AMQPS and to each other),
#                                  subjectAltName DNS:<node>, DNS:<node>.cluster, DNS:localhost,
#                                  IP:127.0.0.1
#   client.pem, client.key         a client certificate (for peer verification tests / tools)
#
# The nodes run as uid 999 (the image's user warren), so the files must be readable by it: as
# root the keys are chowned to 999 and mode 0600; otherwise they are mode 0644 (fine for a
# local cluster; use Docker secrets or your own PKI in production). Needs openssl.
set -euo pipefail

dir=${1:-$(dirname "$0")/certs}
shift || true
nodes=("$@")
[ ${#nodes[@]} -gt 0 ] || nodes=(warren1 warren2 warren3)
days=${DAYS:-3650}
command -v openssl >/dev/null || { echo "gen-certs: openssl is not installed" >&2; exit 1; }
mkdir -p "$dir"
cd "$dir"

if [ "${FORCE:-0}" = 1 ] || [ ! -f ca.pem ] || [ ! -f ca.key ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days "$days" -subj "/CN=Warren test CA" \
    -keyout ca.key -out ca.pem \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  echo "gen-certs: CA $dir/ca.pem"
fi

issue() { # name, subjectAltName
  local name=$1 san=$2
  if [ "${FORCE:-0}" != 1 ] && [ -f "$name.pem" ] && [ -f "$name.key" ]; then return; fi
  local ext
  ext=$(mktemp)
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=%s\n' \
    "$san" > "$ext"
  openssl req -newkey rsa:2048 -nodes -sha256 -subj "/CN=$name" -keyout "$name.key" -out "$name.csr" 2>/dev/null
  openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days "$days" -sha256 \
    -extfile "$ext" -out "$name.pem" 2>/dev/null
  rm -f "$name.csr" "$ext"
  echo "gen-certs: $dir/$name.pem ($san)"
}

for n in "${nodes[@]}"; do
  issue "$n" "DNS:$n,DNS:$n.cluster,DNS:localhost,IP:127.0.0.1"
done
issue client "DNS:client"
rm -f ca.srl

if [ "$(id -u)" = 0 ]; then
  chown 999:999 ./*.key ./*.pem
  chmod 0600 ./*.key
  chmod 0644 ./*.pem
else
  chmod 0644 ./*.key ./*.pem
fi
