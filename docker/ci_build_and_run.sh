#!/usr/bin/env bash
# CI for the images (tests/pipeline/test_docker.py runs it; needs root):
#   1. start a private daemon (docker/daemon.sh; it installs docker.io and debootstrap if missing)
#   2. lint every Dockerfile with hadolint
#   3. make the Debian base locally (debootstrap + import, cached) and build the CPU image;
#      CPU images older than a day and build cache beyond 6 GB are pruned
#   4. a run without the data mount must fail naming the missing path
#   5. run fetch, prepare, anonymize --method mask and ssim --variant mask on coco-mini inside
#      the container (data read-only, outputs in a mounted folder, no network) and the same
#      stages outside it, then compare the two output trees (docker/compare_outputs.py)
#   6. stop the daemon if this script started it
#
#   docker/ci_build_and_run.sh WORKDIR
#
# Environment: ANONBENCH_COCO_MINI (the coco-mini folder, required), PYTHON (default
# .venv/bin/python), ANONBENCH_DOCKER_STATE (daemon state, see docker/daemon.sh).
# Prints the seconds each step took, for the CI budget.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
work=$(realpath -m "${1:?usage: $0 WORKDIR}")
coco=$(realpath "${ANONBENCH_COCO_MINI:?set ANONBENCH_COCO_MINI to the coco-mini folder}")
PYTHON=${PYTHON:-$repo/.venv/bin/python}
export DOCKER=/usr/bin/docker
# The CLI's stage runs, the same inside and outside the container (one command a line).
STAGES=(
  "fetch"
  "prepare"
  "anonymize --method mask"
  "ssim --variant mask"
)

SECONDS=0
step() { echo "ci_build_and_run: [${SECONDS}s] $*" >&2; }
rm -rf "$work" && mkdir -p "$work/host" && install -d -o 10001 -g 0 "$work/container"

started=false
if ! docker/daemon.sh host >/dev/null; then
  started=true
fi
eval "export $(docker/daemon.sh start)"
# Use it under a shared lock (docker/daemon.sh): a concurrent run that started it leaves it running.
users_lock="$(dirname "${DOCKER_HOST#unix://}")/users.lock"
exec {users}>"$users_lock"
flock --shared "$users"
stop_daemon() {
  exec {users}>&-
  if $started; then docker/daemon.sh stop; fi
}
trap stop_daemon EXIT
step "daemon at $DOCKER_HOST"

step "hadolint"
"$(dirname "$PYTHON")/hadolint" --config .hadolint.yaml docker/*/Dockerfile examples/*/Dockerfile

step "base image"
base=$(docker/debian_base.sh local/debian:bookworm)
step "building the CPU image from $base"
image=$(BASE_IMAGE=$base docker/build.sh cpu 2>"$work/build.log" | tail -n 1) \
  || { tail -n 40 "$work/build.log" >&2; exit 1; }
step "built $image"
# The daemon's state outlives the run (layer cache): keep it bounded. CPU images unused for a day
# go (not newer ones: a concurrent run may be using its own), as does build cache beyond 6 GB.
"$DOCKER" image prune -af --filter label=org.opencontainers.image.title=anonbench-cpu --filter until=24h >/dev/null
"$DOCKER" builder prune -f --keep-storage 6GB >/dev/null

step "a run without the data mount"
if "$DOCKER" run --rm --network none "$image" anonbench fetch >"$work/nomount.log" 2>&1; then
  echo "ci_build_and_run: fetch without the data mount succeeded" >&2
  exit 1
fi
grep -q "the local copy /data/coco-mini .* does not exist" "$work/nomount.log" \
  || { echo "ci_build_and_run: the error does not name /data/coco-mini:" >&2; cat "$work/nomount.log" >&2; exit 1; }

for stage in "${STAGES[@]}"; do
  step "container: anonbench $stage"
  # shellcheck disable=SC2086  # a stage line is a command and its options
  "$DOCKER" run --rm --network none -v "$coco:/data/coco-mini:ro" -v "$work/container:/workspace/run" \
    -w /workspace/run "$image" anonbench $stage --params /workspace/params.yaml
  step "host: anonbench $stage"
  # shellcheck disable=SC2086
  (cd "$work/host" && env -u MLFLOW_TRACKING_URI ANONBENCH_COCO_MINI="$coco" \
    "$(dirname "$PYTHON")/anonbench" $stage --params "$repo/params.yaml")
done

step "comparing outputs"
"$PYTHON" docker/compare_outputs.py "$work/host/data" "$work/container/data"
step "done"
