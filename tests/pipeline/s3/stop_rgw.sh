#!/usr/bin/env bash
# Stop the daemons start_rgw.sh started under DIR (by their pid files) and wait for them to exit.
set -uo pipefail
DIR=$1
pids=()
for pidfile in "$DIR"/run/*.pid; do
  [[ -f $pidfile ]] && pids+=("$(cat "$pidfile")")
done
[[ ${#pids[@]} -gt 0 ]] || exit 0
kill "${pids[@]}" 2> /dev/null
for _ in $(seq 20); do
  kill -0 "${pids[@]}" 2> /dev/null || exit 0
  sleep 0.1
done
kill -9 "${pids[@]}" 2> /dev/null
exit 0
