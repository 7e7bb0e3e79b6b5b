#!/usr/bin/env bash
# Make a Debian base image locally where no registry can be reached (needs root, debootstrap).
#
#   DOCKER_HOST=... docker/debian_base.sh [TAG]     (default TAG local/debian:bookworm)
#
# debootstrap --variant=minbase from the Debian mirror apt already uses, then `docker import`.
# The root file system is kept as a tarball in ANONBENCH_DOCKER_STATE, so a fresh daemon
# imports it again in seconds instead of bootstrapping (about 25 s plus the downloads).
set -euo pipefail

TAG=${1:-local/debian:bookworm}
SUITE=${DEBIAN_SUITE:-bookworm}
STATE=${ANONBENCH_DOCKER_STATE:-/var/tmp/anonbench-docker}
TARBALL="$STATE/debian-$SUITE-minbase.tar"
DOCKER=${DOCKER:-/usr/bin/docker}

if "$DOCKER" image inspect "$TAG" >/dev/null 2>&1; then
  echo "$TAG"
  exit 0
fi

# The first Debian mirror in apt's sources (deb822 or one-line format), else deb.debian.org.
mirror() {
  local uri
  uri=$(grep -hoE '^(URIs:[[:space:]]*|deb[[:space:]]+(\[[^]]*\][[:space:]]+)?)[a-z]+://[^[:space:]]+/debian/?([[:space:]]|$)' \
    /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list /etc/apt/sources.list 2>/dev/null \
    | grep -oE '[a-z]+://[^[:space:]]+' | head -n 1 || true)
  echo "${uri:-http://deb.debian.org/debian}"
}

if [[ ! -s $TARBALL ]]; then
  [[ $(id -u) -eq 0 ]] || { echo "debian_base.sh: debootstrap needs root" >&2; exit 1; }
  rootfs=$(mktemp -d "$STATE/rootfs.XXXXXX")
  trap 'rm -rf "$rootfs"' EXIT
  debootstrap --variant=minbase "$SUITE" "$rootfs" "$(mirror)" >"$STATE/debootstrap.log" 2>&1 \
    || { tail -n 20 "$STATE/debootstrap.log" >&2; exit 1; }
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -cf "$TARBALL.tmp" . && mv "$TARBALL.tmp" "$TARBALL"
fi
"$DOCKER" import --change 'CMD ["bash"]' "$TARBALL" "$TAG" >/dev/null
echo "$TAG"
