#!/usr/bin/env bash
# Make (or reuse) a local Debian base image and print its reference:
#   scripts/base-image.sh          the Dockerfile's BASE_IMAGE: python3 (3.11), venv, useradd
#   scripts/base-image.sh bento    docker.base_image for `bentoml containerize`: also pip and CA certificates
#                                  (BentoML's generated Dockerfile runs `pip install uv` in the base's Python)
#
# Where no container registry is reachable, the official python:3.11-slim cannot be pulled: this builds a
# Debian bookworm root with python3 (3.11) and the venv module from the Debian mirror with
# `mmdebstrap --variant=minbase` into a tarball and `podman import`s it. Both are cached, keyed on a hash
# of the recipe below, so a fresh clone on the same machine reuses them:
#   tarball  $SHIPYARD_CACHE/base-<key>.tar   (SHIPYARD_CACHE default /var/cache/shipyard)
#   image    localhost/shipyard-base:<key> (bento: localhost/shipyard-bento-base:<key>)
# Exit status 0 and the image reference on stdout; 77 with the reason on stdout when the tools are missing.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"
cache="${SHIPYARD_CACHE:-/var/cache/shipyard}"
suite="${SHIPYARD_BASE_SUITE:-bookworm}"
mirror="${SHIPYARD_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
flavour="${1:-serve}"
case "$flavour" in
    serve) name=shipyard-base include=python3,python3-venv,passwd changes=() ;;
    # Debian's pip refuses to install into the system Python (PEP 668) unless told; uv reads SSL_CERT_FILE
    bento) name=shipyard-bento-base include=python3,python3-venv,python3-pip,ca-certificates,passwd
           changes=(--change "ENV=PIP_BREAK_SYSTEM_PACKAGES=1" --change "ENV=SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt") ;;
    *) echo "unknown flavour $flavour: give serve or bento" >&2; exit 2 ;;
esac
recipe=(
    --variant=minbase
    "--include=$include"
    "--dpkgopt=path-exclude=/usr/share/doc/*"
    "--dpkgopt=path-exclude=/usr/share/man/*"
    "--dpkgopt=path-exclude=/usr/share/locale/*"
    --format=tar
)
for tool in mmdebstrap podman; do
    command -v "$tool" >/dev/null 2>&1 || { echo "$tool is not installed (bash scripts/system-deps.sh installs it as root)"; exit 77; }
done
key="$(printf '%s\n' "recipe-v1" "${recipe[@]}" "$suite" "$mirror" "${changes[@]}" | sha256sum | cut -c1-16)"
image="localhost/$name:$key"
if podman image exists "$image"; then
    echo "$image"
    exit 0
fi
mkdir -p "$cache"
tarball="$cache/$name-$key.tar"
if [ ! -s "$tarball" ]; then
    echo "base-image: making $tarball with mmdebstrap (about 2 minutes, once)" >&2
    tmp="$tarball.tmp.$$"
    trap 'rm -f "$tmp"' EXIT
    if ! mmdebstrap --quiet "${recipe[@]}" "$suite" "$tmp" "$mirror" >&2; then
        echo "mmdebstrap could not build a Debian $suite root from $mirror (see the lines above)"
        exit 77
    fi
    mv "$tmp" "$tarball"
fi
podman import --quiet "${changes[@]}" "$tarball" "$image" >/dev/null
echo "$image"
