#!/usr/bin/env bash
# A private Docker daemon for CI and for machines without one (needs root).
#
#   docker/daemon.sh start   start it (or reuse a running one); prints DOCKER_HOST=unix://...
#                            installs Debian's docker.io and debootstrap first if missing
#   docker/daemon.sh stop    stop it by its pid file and wait until it has exited, unless
#                            another run still uses it (holds a shared flock on USERS, below)
#   docker/daemon.sh host    print DOCKER_HOST=... if it answers, else exit 1
#
# No registry and no bridge network are needed: builds use --network host, stage runs use
# --network none. Its data and exec roots live in ANONBENCH_DOCKER_STATE (default
# /var/tmp/anonbench-docker), outside any build context; the data root survives a stop, so
# the base image and build cache are reused by the next run on the same machine.
#
# Runs that share the daemon (CI scripts, test sessions) hold a shared flock on
# $ANONBENCH_DOCKER_STATE/users.lock while they use it, and release it before calling stop;
# stop leaves a daemon that someone still uses running.
set -euo pipefail

STATE=${ANONBENCH_DOCKER_STATE:-/var/tmp/anonbench-docker}
SOCK="$STATE/docker.sock"
PIDFILE="$STATE/dockerd.pid"
LOG="$STATE/dockerd.log"
USERS="$STATE/users.lock"
DOCKER=${DOCKER:-/usr/bin/docker}

answers() { "$DOCKER" -H "unix://$SOCK" version --format '{{.Server.Version}}' >/dev/null 2>&1; }

install() {
  if command -v dockerd >/dev/null && command -v debootstrap >/dev/null && [[ -x $DOCKER ]]; then
    return
  fi
  echo "daemon.sh: installing docker.io and debootstrap" >&2
  # Error-Mode=any: an unreachable mirror is an error, not stale package lists.
  apt-get update -qq -o APT::Update::Error-Mode=any
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io debootstrap >/dev/null
}

start() {
  if answers; then
    echo "DOCKER_HOST=unix://$SOCK"
    return
  fi
  [[ $(id -u) -eq 0 ]] || { echo "daemon.sh: dockerd needs root" >&2; exit 1; }
  install
  mkdir -p "$STATE/data" "$STATE/exec"
  rm -f "$SOCK" "$PIDFILE"
  # Its own session and process group, so stopping it never touches the caller's processes.
  setsid dockerd --iptables=false --ip-masq=false --bridge=none \
    --data-root "$STATE/data" --exec-root "$STATE/exec" --pidfile "$PIDFILE" \
    --host "unix://$SOCK" >"$LOG" 2>&1 </dev/null &
  for _ in $(seq 60); do
    if answers; then
      echo "DOCKER_HOST=unix://$SOCK"
      return
    fi
    sleep 0.5
  done
  echo "daemon.sh: dockerd did not answer within 30 s; last lines of $LOG:" >&2
  tail -n 20 "$LOG" >&2
  exit 1
}

stop() {
  [[ -f $PIDFILE ]] || return 0
  local pid lock
  exec {lock}>"$USERS"
  if ! flock --exclusive --nonblock "$lock"; then
    echo "daemon.sh: another run still uses the daemon ($USERS); left running" >&2
    return 0
  fi
  pid=$(cat "$PIDFILE")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 60); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.5
  done
  echo "daemon.sh: dockerd ($pid) still running after 30 s" >&2
  exit 1
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  host) answers && echo "DOCKER_HOST=unix://$SOCK" ;;
  *) echo "usage: $0 start|stop|host" >&2; exit 2 ;;
esac
