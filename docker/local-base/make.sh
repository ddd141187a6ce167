#!/usr/bin/env bash
# Makes the local base images that stand in for the public ones on a machine that cannot pull
# from a registry but reaches Debian's package mirror (bin/test-deploy runs it):
#   autopay-local/debian:bookworm   debootstrap (minbase) + docker import
#   autopay-local/python:3.11       Debian's python3.11      (for PYTHON_IMAGE)
#   autopay-local/postgres:15       Debian's postgresql-15   (for POSTGRES_IMAGE)
#   autopay-local/redis:7           Debian's redis-server 7  (for REDIS_IMAGE)
# Each image carries a label with a hash of its recipe and is rebuilt only when that changes,
# so later runs take no time. Needs root (debootstrap), docker and apt-get.
# Usage: docker/local-base/make.sh [--rebuild]
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
WORK="${AUTOPAY_LOCAL_BASE_WORKDIR:-$HERE/../../var/local-base}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
SUITE=bookworm
DEBIAN_IMAGE=autopay-local/debian:$SUITE
LABEL=org.autopay.recipe
rebuild=0
[ "${1:-}" = "--rebuild" ] && rebuild=1

log() { printf '    local-base: %s\n' "$*" >&2; }

recipe_of() {  # recipe_of FILE... -> short hash of the files and of this script
  cat "$@" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-16
}

current_recipe() {
  docker image inspect -f "{{index .Config.Labels \"$LABEL\"}}" "$1" 2>/dev/null || true
}

make_debian() {
  local recipe rootfs
  recipe="$(printf '%s %s %s' "$SUITE" "$MIRROR" "$(recipe_of /dev/null)" | sha256sum | cut -c1-16)"
  if [ "$rebuild" = 0 ] && [ "$(current_recipe "$DEBIAN_IMAGE")" = "$recipe" ]; then
    log "$DEBIAN_IMAGE is up to date"; return 0
  fi
  command -v debootstrap >/dev/null || {
    log "installing debootstrap"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  }
  rootfs="$WORK/rootfs"
  rm -rf "$rootfs"
  mkdir -p "$WORK"
  log "debootstrap $SUITE (minbase) from $MIRROR"
  if ! debootstrap --variant=minbase "$SUITE" "$rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1; then
    tail -20 "$WORK/debootstrap.log" >&2
    echo "debootstrap failed (log: $WORK/debootstrap.log)" >&2
    return 1
  fi
  # Slim like the public -slim images: no documentation, manuals or translations, no
  # recommended packages, no package cache left behind.
  cat > "$rootfs/etc/dpkg/dpkg.cfg.d/docker-slim" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
CFG
  cat > "$rootfs/etc/apt/apt.conf.d/docker-slim" <<'CFG'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
CFG
  cat > "$rootfs/etc/apt/sources.list" <<LIST
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
LIST
  find "$rootfs/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete 2>/dev/null || true
  rm -rf "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/* \
    "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/* "$rootfs"/tmp/*
  log "importing $DEBIAN_IMAGE"
  tar -C "$rootfs" --numeric-owner -c . \
    | docker import -c 'CMD ["bash"]' -c 'ENV LANG=C.UTF-8' -c "LABEL $LABEL=$recipe" - "$DEBIAN_IMAGE" >/dev/null
  rm -rf "$rootfs"
}

make_image() {  # make_image TAG DOCKERFILE [extra files of the recipe...]
  local tag="$1" dockerfile="$HERE/$2" recipe
  shift 2
  recipe="$(printf '%s %s' "$(current_recipe "$DEBIAN_IMAGE")" \
    "$(recipe_of "$dockerfile" "${@/#/$HERE/}")" | sha256sum | cut -c1-16)"
  if [ "$rebuild" = 0 ] && [ "$(current_recipe "$tag")" = "$recipe" ]; then
    log "$tag is up to date"; return 0
  fi
  log "building $tag"
  mkdir -p "$WORK"
  local logfile="$WORK/build-${tag//[\/:]/_}.log"
  if ! DOCKER_BUILDKIT=0 docker build --build-arg DEBIAN_IMAGE="$DEBIAN_IMAGE" \
    --label "$LABEL=$recipe" -t "$tag" -f "$dockerfile" "$HERE" >"$logfile" 2>&1; then
    tail -30 "$logfile" >&2
    echo "building $tag failed (log: $logfile)" >&2
    return 1
  fi
}

make_debian
# The three are independent: build them side by side (mostly waiting on the package mirror).
pids=()
make_image autopay-local/python:3.11 python.Dockerfile & pids+=($!)
make_image autopay-local/postgres:15 postgres.Dockerfile postgres-entrypoint.sh & pids+=($!)
make_image autopay-local/redis:7 redis.Dockerfile redis-entrypoint.sh & pids+=($!)
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit "$status"
