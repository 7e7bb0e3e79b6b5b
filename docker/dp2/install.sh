#!/usr/bin/env bash
# Install DeepPrivacy2 and everything it needs into a Python environment that already holds
# anonbench. The one definition of the DP2 environment: `make dp2-env` runs it for .venv-dp2 on
# the host, docker/dp2/Dockerfile for the image.
#
#   docker/dp2/install.sh PYTHON SRC_DIR
#
# 1. torch and DP2's Python needs: requirements/dp2-requirements.txt under both constraints files
#    (requirements/constraints.txt for every package anonbench shares, dp2-constraints.txt for
#    the rest), so the DP2 environment keeps anonbench's versions.
# 2. the pinned source trees (requirements/dp2-sources.txt) unpacked and patched into SRC_DIR by
#    docker/dp2/sources.py, from DP2_SOURCES (a folder of the archives, e.g. ../shared/sources)
#    or, with DP2_SOURCES=download, from GitHub at the same commits.
# 3. detectron2 compiled from its tree (CPU build: DP2's models need none of its CUDA kernels),
#    its wheel kept in DP2_WHEELHOUSE/<key>/ and reused when the key matches (commit, patches,
#    torch, Python), so CI compiles it once for the venv and the image. Then DensePose,
#    torch_ops, DSFD, motpy and CLIP from their trees, all --no-deps (their own setups pull
#    unpinned packages; step 1 pinned what they need).
# 4. DP2 itself is not pip-installable (its setup.py pins Python <= 3.9 wheels and it must be
#    run from its tree, whose configs are relative paths): a .pth file puts SRC_DIR/deep_privacy2
#    on the path. Then an import check of every module the adapter reaches.
#
# Environment: DP2_SOURCES (required: a folder, or "download"), DP2_WHEELHOUSE (default
# SRC_DIR/.wheels), MAX_JOBS (compiler jobs, default: the cores). Prints the seconds of each step.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
python=${1:?usage: $0 PYTHON SRC_DIR}
python="$(cd "$(dirname "$python")" && pwd)/$(basename "$python")"  # absolute, not resolved: a venv
src=$(realpath -m "${2:?usage: $0 PYTHON SRC_DIR}")
wheelhouse=$(realpath -m "${DP2_WHEELHOUSE:-$src/.wheels}")
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
SECONDS=0
step() { echo "dp2/install.sh: [${SECONDS}s] $*" >&2; }
pip() { "$python" -m pip --disable-pip-version-check --no-input "$@"; }
constraints=(-c "$repo/requirements/constraints.txt" -c "$repo/requirements/dp2-constraints.txt")

case ${DP2_SOURCES:-} in
  "") echo "dp2/install.sh: set DP2_SOURCES to a folder of the pinned archives (e.g. ../shared/sources)," \
        "or to 'download' to take them from GitHub" >&2; exit 2 ;;
  download) where=(--download) ;;
  *) where=(--from "$DP2_SOURCES") ;;
esac

step "sources into $src (${where[*]})"
"$python" "$repo/docker/dp2/sources.py" "$repo/requirements/dp2-sources.txt" "$src" "${where[@]}" >/dev/null

step "torch and DP2's Python needs"
pip install -q "${constraints[@]}" -r "$repo/requirements/dp2-requirements.txt"

# The wheel's key: what it is compiled from (commit and patches) and against (torch, Python).
torch_version=$("$python" -c 'import torch; print(torch.__version__)')
py_tag=$("$python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
fingerprint=$("$python" "$repo/docker/dp2/sources.py" "$repo/requirements/dp2-sources.txt" - --fingerprint detectron2)
key="detectron2-$fingerprint-torch$torch_version-$py_tag"
wheel=$(compgen -G "$wheelhouse/$key/detectron2-*.whl" | head -n 1 || true)
if [[ -n $wheel ]]; then
  step "detectron2: the wheel built before ($wheel)"
else
  step "detectron2: compiling (CPU build, MAX_JOBS=$MAX_JOBS; 10-20 min on 2 cores)"
  rm -rf "$wheelhouse/$key.tmp" && mkdir -p "$wheelhouse/$key.tmp"
  pip wheel -q --no-build-isolation --no-deps \
    -w "$wheelhouse/$key.tmp" "$src/detectron2"
  rm -rf "$wheelhouse/$key" && mv "$wheelhouse/$key.tmp" "$wheelhouse/$key"
  wheel=$(compgen -G "$wheelhouse/$key/detectron2-*.whl" | head -n 1)
fi

step "detectron2, DensePose, torch_ops, DSFD, motpy, CLIP (--no-deps)"
pip install -q --no-deps --force-reinstall "$wheel"
pip install -q --no-deps --no-build-isolation \
  "$src/detectron2/projects/DensePose" "$src/torch_ops" "$src/DSFD-Pytorch-Inference" "$src/motpy" "$src/CLIP"

site=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$src/deep_privacy2" >"$site/deep_privacy2.pth"

step "import check"
# dp2.anonymizer reaches stylemc, clip, motpy and densepose (which needs detectron2's compiled _C).
(cd / && "$python" -c "import detectron2._C, densepose, dp2.anonymizer, dp2.detection, face_detection, tops, clip, motpy")
step "done"
