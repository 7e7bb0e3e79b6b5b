#!/usr/bin/env bash
# Build the anonbench images with immutable tags (make images calls this).
#
#   docker/build.sh [--push] [cpu] [train] [dp2]      (default: cpu train)
#
# Tags: ${IMAGE_PREFIX}anonbench-<name>:<version>-<git short sha>, plus "-dirty.<hash>" when files
# that go into the images have uncommitted changes (a dirty tag is for local use: --push
# refuses it). The tags are written to build/images.env for the pipeline (docs/containers.md).
#
# Environment:
#   BASE_IMAGE    base of the images; default debian:bookworm-slim if the daemon has it or can
#                 pull it, else local/debian:bookworm made by docker/debian_base.sh (no registry)
#   CA_BUNDLE     PEM bundle pip trusts during the build (a BuildKit secret: never in a layer);
#                 default the system bundle when /usr/local/share/ca-certificates holds extra
#                 CAs (a TLS-intercepting network); "none" to pass nothing
#   IMAGE_PREFIX  registry/namespace/ to prepend, e.g. registry.example.com/vision/
#   DOCKER        docker client (default: one whose build supports BuildKit secrets)
#   DP2_SOURCES   (dp2) folder of the pinned source archives (requirements/dp2-sources.txt); default
#                 ../shared/sources when it holds them; "download": the image build takes them
#                 from GitHub at the same commits
#   DP2_WEIGHTS   (dp2) folder of DeepPrivacy2's checkpoints to bake in (checked by md5); default none
# The dp2 build reads build/dp2-inputs/ (git-ignored): the archives, the detectron2 wheel that
# `make dp2-env` built (so it is compiled once), torch's wheels fetched once by this host's pip
# (wheels/pypi, kept between builds) and the weights (docker/dp2/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."

push=false
names=()
for arg in "$@"; do
  case $arg in
    --push) push=true ;;
    cpu | train | dp2) names+=("$arg") ;;
    *) echo "usage: $0 [--push] [cpu] [train] [dp2]" >&2; exit 2 ;;
  esac
done
[[ ${#names[@]} -gt 0 ]] || names=(cpu train)

# Debian's docker.io client builds with BuildKit on its own; a newer client needs the buildx plugin.
pick_docker() {
  if [[ -n ${DOCKER:-} ]]; then
    echo "$DOCKER"
  elif docker buildx version >/dev/null 2>&1; then
    echo docker
  elif [[ -x /usr/bin/docker ]]; then
    echo /usr/bin/docker
  else
    echo docker
  fi
}
DOCKER=$(pick_docker)
export DOCKER DOCKER_BUILDKIT=1

pick_base() {
  if [[ -n ${BASE_IMAGE:-} ]]; then
    echo "$BASE_IMAGE"
  elif "$DOCKER" image inspect debian:bookworm-slim >/dev/null 2>&1 \
    || "$DOCKER" pull -q debian:bookworm-slim >/dev/null 2>&1; then
    echo debian:bookworm-slim
  else
    echo "build.sh: debian:bookworm-slim cannot be pulled; making local/debian:bookworm" >&2
    docker/debian_base.sh local/debian:bookworm
  fi
}

secret_args=()
ca_bundle=${CA_BUNDLE:-}
if [[ -z $ca_bundle ]] && compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  ca_bundle=/etc/ssl/certs/ca-certificates.crt
fi
if [[ -n $ca_bundle && $ca_bundle != none ]]; then
  secret_args=(--secret "id=ca_bundle,src=$ca_bundle")
fi

version=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
tag="$version-$(git rev-parse --short HEAD)"
# Uncommitted changes in what goes into the images: "-dirty.<hash of those changes>", so two
# different working trees never share a tag (KFP's cache and the daemon see different strings).
context=(pyproject.toml README.md params.yaml requirements src docker .dockerignore)
if [[ -n $(git status --porcelain -- "${context[@]}") ]]; then
  changes=$( (git diff HEAD -- "${context[@]}"
    git ls-files -z --others --exclude-standard -- "${context[@]}" | xargs -0 -r cat) | sha256sum)
  tag+="-dirty.${changes:0:8}"
fi
if $push && [[ $tag == *-dirty.* ]]; then
  echo "build.sh: uncommitted changes; commit before pushing (tag would be $tag)" >&2
  exit 1
fi

# build/dp2-inputs/ for the dp2 image: what is there is used, the rest is fetched in the build.
dp2_inputs() {
  local inputs=build/dp2-inputs sources=${DP2_SOURCES:-}
  [[ -n $sources || ! -f ../shared/sources/SHA256SUMS ]] || sources=../shared/sources
  rm -rf "$inputs/sources" "$inputs/weights"
  mkdir -p "$inputs/sources" "$inputs/weights" "$inputs/wheels/pypi"
  if [[ -n $sources && $sources != download ]]; then
    [[ -d $sources ]] || { echo "build.sh: DP2_SOURCES=$sources is not a folder" >&2; exit 1; }
    awk '!/^#/ && NF == 3 {print $1 "-" substr($3, 1, 12) ".tar.gz"}' requirements/dp2-sources.txt \
      | while read -r archive; do
          [[ -f $sources/$archive ]] || { echo "build.sh: DP2 source folder $sources: $archive is missing" >&2; exit 1; }
          cp "$sources/$archive" "$inputs/sources/"
        done
  fi
  # torch and its CUDA libraries (about 3 GB): once per host, not once per cold Docker cache;
  # hard links to the wheels where this host's index is a folder on the same disk, else downloaded.
  local torch_pins=(-c requirements/constraints.txt "$(grep '^torch==' requirements/dp2-requirements.txt)"
    "$(grep '^torchvision==' requirements/dp2-requirements.txt)")
  python3 docker/dp2/link_wheels.py "$inputs/wheels/pypi" "${torch_pins[@]}" 2>&1 | grep -v 'is ignored' >&2 || true
  python3 -m pip download -q --disable-pip-version-check -d "$inputs/wheels/pypi" "${torch_pins[@]}" \
    2>&1 | grep -v 'is ignored' >&2 || true
  if [[ -n ${DP2_WEIGHTS:-} ]]; then
    [[ -d $DP2_WEIGHTS ]] || { echo "build.sh: DP2_WEIGHTS=$DP2_WEIGHTS is not a folder" >&2; exit 1; }
    cp -rL "$DP2_WEIGHTS/." "$inputs/weights/"
  fi
}

base=$(pick_base)
cpu="${IMAGE_PREFIX:-}anonbench-cpu:$tag"
# The training and DP2 images start from the CPU image of the same commit.
if [[ " ${names[*]} " =~ " "(train|dp2)" " && " ${names[*]} " != *" cpu "* ]] && ! "$DOCKER" image inspect "$cpu" >/dev/null 2>&1; then
  names=(cpu "${names[@]}")
fi
mkdir -p build
for name in "${names[@]}"; do
  image="${IMAGE_PREFIX:-}anonbench-$name:$tag"
  if [[ $name == dp2 ]]; then
    dp2_inputs
  fi
  echo "build.sh: building $image (base $base)" >&2
  "$DOCKER" build --network host -f "docker/$name/Dockerfile" \
    --build-arg "BASE_IMAGE=$base" --build-arg "CPU_IMAGE=$cpu" --build-arg "REVISION=$tag" \
    --build-arg "GIT_COMMIT=$(git rev-parse HEAD)" \
    "${secret_args[@]}" -t "$image" .
  # The digest the pipeline tags MLflow runs with: the registry's after a push, else the local image id.
  # A pushed image is named tag and digest (`name:tag@sha256:...`): pods pull exactly what was pushed.
  reference=$image
  if $push; then
    "$DOCKER" push "$image"
    digest=$("$DOCKER" image inspect --format '{{index .RepoDigests 0}}' "$image")
    echo "$digest" >&2
    digest=${digest#*@}
    reference="$image@$digest"
  else
    digest=$("$DOCKER" image inspect --format '{{.Id}}' "$image")
  fi
  key="ANONBENCH_$(tr '[:lower:]' '[:upper:]' <<<"$name")_IMAGE"
  touch build/images.env
  grep -v -e "^$key=" -e "^${key}_DIGEST=" build/images.env >build/images.env.tmp || true
  echo "$key=$reference" >>build/images.env.tmp
  echo "${key}_DIGEST=$digest" >>build/images.env.tmp
  mv build/images.env.tmp build/images.env
  echo "$image"
done
