#!/usr/bin/env bash
# deploy/build-base.sh - make the Debian 12 base image that deploy/Dockerfile starts FROM, on a
# machine that cannot pull images (no registry), from the Debian mirror this machine's apt uses.
#
#   deploy/build-base.sh            # builds debian:bookworm-slim unless that tag already exists
#   deploy/build-base.sh --force    # rebuilds it anyway
#
# How: debootstrap --variant=minbase (the same package set as the official slim image: the
# Essential and Required packages, apt), then the root filesystem is piped as a tar into
# `docker import` and tagged with exactly the name the Dockerfile's FROM lines use. Where the
# official image can be pulled, this script is not needed (and does nothing if the tag is there).
#
# The mirror is read at run time from /etc/apt/sources.list and /etc/apt/sources.list.d/ (the
# first entry for the bookworm suite with the main component, one-line or deb822 format);
# WARREN_DEBIAN_MIRROR overrides it. Needs root (debootstrap), debootstrap itself (installed
# with apt-get when missing) and a running Docker engine. Takes 1-3 minutes.
set -euo pipefail

TAG=${WARREN_BASE_TAG:-debian:bookworm-slim}
SUITE=bookworm
force=0
[ "${1:-}" = "--force" ] && force=1

if ! docker info >/dev/null 2>&1; then
  echo "build-base: no Docker engine answers (docker info failed)" >&2
  exit 1
fi
if [ $force = 0 ] && docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "build-base: $TAG exists already ($(docker image inspect -f '{{.Id}}' "$TAG" | cut -c1-19)); --force rebuilds it"
  exit 0
fi

SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"

# The first Debian archive apt is configured with for $SUITE/main.
find_mirror() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -r "$f" ] || continue
    # deb [options] URI SUITE COMPONENT...
    awk -v suite="$SUITE" '
      $1 == "deb" {
        i = 2
        if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
        uri = $(i); s = $(i + 1)
        if (s != suite) next
        for (j = i + 2; j <= NF; j++) if ($j == "main") { print uri; exit }
      }' "$f"
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -r "$f" ] || continue
    # deb822 stanzas separated by blank lines: Types, URIs, Suites, Components.
    awk -v suite="$SUITE" '
      function flush() {
        if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " suite " ") && (" " comps " ") ~ / main /) {
          split(uris, u, " "); if (u[1] != "") { print u[1]; found = 1; exit }
        }
        types = uris = suites = comps = ""
      }
      /^[ \t]*$/ { flush(); next }
      /^[ \t]*#/ { next }
      tolower($1) == "types:"      { $1 = ""; types = $0 }
      tolower($1) == "uris:"       { $1 = ""; uris = $0 }
      tolower($1) == "suites:"     { $1 = ""; suites = $0 }
      tolower($1) == "components:" { $1 = ""; comps = $0 }
      END { if (!found) flush() }' "$f"
  done
}

MIRROR=${WARREN_DEBIAN_MIRROR:-$(find_mirror | head -n1)}
if [ -z "$MIRROR" ]; then
  echo "build-base: no '$SUITE main' entry in /etc/apt/sources.list(.d); set WARREN_DEBIAN_MIRROR" >&2
  exit 1
fi

if ! command -v debootstrap >/dev/null 2>&1; then
  echo "build-base: installing debootstrap"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends debootstrap
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/warren-base.XXXXXX")
cleanup() { $SUDO rm -rf "$work"; }
trap cleanup EXIT
root="$work/rootfs"

echo "build-base: debootstrap $SUITE (minbase) from $MIRROR"
start=$(date +%s)
if ! $SUDO debootstrap --variant=minbase "$SUITE" "$root" "$MIRROR" >"$work/debootstrap.log" 2>&1; then
  tail -30 "$work/debootstrap.log" >&2
  [ -f "$root/debootstrap/debootstrap.log" ] && tail -30 "$root/debootstrap/debootstrap.log" >&2
  echo "build-base: debootstrap failed" >&2
  exit 1
fi

# What the official slim image does as well: no caches, no package lists, no docs or man
# pages in later installs (the dpkg excludes), apt without recommends.
$SUDO chroot "$root" apt-get clean
$SUDO rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/*.log \
  "$root"/var/cache/debconf/*-old "$root"/usr/share/man/* "$root"/usr/share/doc/*/changelog* \
  "$root"/usr/share/info/*
printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
  'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' 'path-exclude /usr/share/locale/*' \
  'path-include /usr/share/locale/locale.alias' 'path-exclude /usr/share/lintian/*' \
  | $SUDO tee "$root/etc/dpkg/dpkg.cfg.d/docker" >/dev/null
printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
  | $SUDO tee "$root/etc/apt/apt.conf.d/docker-no-recommends" >/dev/null
# Leave name resolution to the container runtime (it mounts its own hosts and resolv.conf).
$SUDO rm -f "$root/etc/hostname" "$root/etc/resolv.conf"

echo "build-base: importing as $TAG"
$SUDO tar -C "$root" --numeric-owner -c . \
  | docker import --change 'CMD ["bash"]' --change 'ENV LANG=C.UTF-8' \
      -m "debootstrap --variant=minbase $SUITE (deploy/build-base.sh)" - "$TAG" >/dev/null
echo "build-base: $TAG ready in $(( $(date +%s) - start )) s, $(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.1f MB", $1/1e6}')"
