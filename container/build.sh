#!/usr/bin/env bash
# Builds kleinserve's image here with podman, from a locally made Debian base (container/base.sh: no registry
# is needed), e.g. `bash container/build.sh` -> localhost/kleinserve:local. Env: IMAGE (tag), TORCH_VARIANT.
#
# pip inside the build gets this machine's pip configuration (find-links, extra index URLs: local
# directories are bind-mounted read-only for the RUN steps alone) as build arguments of the build stages,
# and its CA bundle as the build secret `ca`; the final stage copies the venv only, so none of it is in the
# image. podman runs with container/containers.conf (runc; no ulimits) and builds on the host network.
set -euo pipefail
cd "$(dirname "$0")/.."
export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/container/containers.conf}"
IMAGE="${IMAGE:-localhost/kleinserve:local}"

# What this needs, from Debian's packages (as .ci/run installs its own tools): podman with runc, rootless
# networking and storage helpers, and debootstrap for the base.
missing=()
for tool in podman:podman runc:runc debootstrap:debootstrap newuidmap:uidmap slirp4netns:slirp4netns \
            fuse-overlayfs:fuse-overlayfs; do
  command -v "${tool%%:*}" >/dev/null || command -v "/usr/sbin/${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

BASE="$(bash container/base.sh)"

pip_setting() {  # an environment variable, else pip's configuration file
  local from_env="${!1:-}"
  if [ -n "$from_env" ]; then echo "$from_env"; else pip config get "$2" 2>/dev/null || true; fi
}
FIND_LINKS="$(pip_setting PIP_FIND_LINKS global.find-links)"
# TORCH_VARIANT=pypi wants PyPI's (CUDA) torch; local wheel folders may hold a +cpu build of the same version,
# which pip would rank above it, so they are left out of that build.
[ "${TORCH_VARIANT:-cpu}" = pypi ] && FIND_LINKS=""
INDEX_URL="$(pip_setting PIP_INDEX_URL global.index-url)"
EXTRA_INDEX_URL="$(pip_setting PIP_EXTRA_INDEX_URL global.extra-index-url)"
CERT="$(pip_setting PIP_CERT global.cert)"

args=(--format docker --network host --build-arg "BASE=$BASE" --build-arg "TORCH_INDEX_URL="
      --build-arg "TORCH_VARIANT=${TORCH_VARIANT:-cpu}")
mounted=()
mount_dirs=()
for entry in $FIND_LINKS; do mount_dirs+=("${entry#file://}"); done
for entry in $INDEX_URL $EXTRA_INDEX_URL; do  # a local index's pages link files beside it: its parent
  [[ "$entry" == file://* ]] && mount_dirs+=("$(dirname "${entry#file://}")")
done
for path in "${mount_dirs[@]}"; do  # local directories are mounted at the same path
  if [ -d "$path" ] && [[ " ${mounted[*]-} " != *" $path "* ]]; then
    args+=(--volume "$path:$path:ro"); mounted+=("$path")
  fi
done
[ -n "$FIND_LINKS" ] && args+=(--build-arg "PIP_FIND_LINKS=$FIND_LINKS")
[ -n "$INDEX_URL" ] && args+=(--build-arg "PIP_INDEX_URL=$INDEX_URL")
[ -n "$EXTRA_INDEX_URL" ] && args+=(--build-arg "PIP_EXTRA_INDEX_URL=$EXTRA_INDEX_URL")
[ -n "$CERT" ] && args+=(--secret "id=ca,src=$CERT")

start=$(date +%s)
podman build "${args[@]}" -f Containerfile -t "$IMAGE" .
echo "built $IMAGE from $BASE in $(( $(date +%s) - start )) s"
podman image inspect --format "{{.Size}}" "$IMAGE" \
  | awk -v image="$IMAGE" '{printf "image size: %s %.0f MB (%.0f bytes)\n", image, $1 / 1e6, $1}'
