#!/usr/bin/env bash
# Makes the local stand-in for a registry's Python base image: Debian bookworm minbase (debootstrap, from
# Debian's packages) with python3 and venv, imported into podman as localhost/kleinserve-base:KEY. KEY hashes
# this file, so the debootstrap runs again only when the package list here changes. Prints the image name.
set -euo pipefail
cd "$(dirname "$0")"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/containers.conf}"
SUITE=bookworm
PACKAGES=python3,python3-venv,ca-certificates
KEY=$(sha256sum base.sh | cut -c1-12)
IMAGE="localhost/kleinserve-base:$KEY"
if podman image exists "$IMAGE"; then
  echo "$IMAGE"
  exit 0
fi
ROOT=$(mktemp -d /var/tmp/kleinserve-base.XXXXXX)
trap 'rm -rf "$ROOT"' EXIT
echo "debootstrap --variant=minbase $SUITE with $PACKAGES (once per KEY $KEY)" >&2
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOT" http://deb.debian.org/debian >&2
chroot "$ROOT" apt-get clean
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/*
tar -C "$ROOT" -c . | podman import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$IMAGE" >&2
echo "$IMAGE"
