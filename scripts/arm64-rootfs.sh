#!/usr/bin/env bash
# Build (once) an arm64 Debian root with Python and the edge runtime's aarch64 wheels, for the emulated
# ARM64 test (tests/edge/test_arm64.py). Prints the root's path on stdout.
#
# Needs root, mmdebstrap, qemu-user-static and binfmt_misc with qemu-aarch64 enabled (scripts/system-deps.sh
# installs them), the Debian mirror, and PyPI through the host's pip ($PYTHON -m pip, default python3). The root is cached outside the checkout, keyed on this
# script and scripts/arm64-requirements.txt: $SHIPYARD_CACHE (default /var/cache/shipyard)/arm64-root-<key>.
# First build: a few minutes for the Debian root (mmdebstrap) and the wheels.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
req="$here/arm64-requirements.txt"
suite=${SHIPYARD_ARM64_SUITE:-bookworm}
mirror=${SHIPYARD_ARM64_MIRROR:-http://deb.debian.org/debian}
cache=${SHIPYARD_CACHE:-/var/cache/shipyard}
key=$( (cat "${BASH_SOURCE[0]}" "$req"; echo "$suite $mirror") | sha256sum | cut -c1-16)
root="$cache/arm64-root-$key"
if [ -f "$root/.shipyard-complete" ]; then
    echo "$root"
    exit 0
fi
mkdir -p "$cache"
exec 9>"$cache/arm64-root.lock"
flock 9  # two test runs at once: the second waits for the first build
if [ -f "$root/.shipyard-complete" ]; then
    echo "$root"
    exit 0
fi
rm -rf "$root"
if [ ! -f "$root.tmp/.shipyard-debian" ]; then
    rm -rf "$root.tmp"
    echo "arm64-rootfs: building $root (mmdebstrap $suite, arm64)" >&2
    mmdebstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,ca-certificates \
        "$suite" "$root.tmp" "$mirror" >&2
    touch "$root.tmp/.shipyard-debian"
fi
# The aarch64 wheels are fetched by the host's pip (its index, proxy and certificates; no pip under
# emulation), then installed offline inside the root.
wheels="$root.tmp/tmp/wheels"
rm -rf "$wheels" && mkdir -p "$wheels"
"${PYTHON:-python3}" -m pip download -q --no-deps --only-binary=:all: -d "$wheels" \
    --implementation cp --python-version 3.11 --abi cp311 --abi abi3 --abi none \
    --platform manylinux_2_27_aarch64 --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64 \
    --platform manylinux2014_aarch64 --platform any -r "$req" >&2
# no /sys in the chroot: LiteRT under qemu segfaults when it can read the host's /sys
chroot "$root.tmp" /usr/bin/python3 -m venv /opt/edge >&2
chroot "$root.tmp" /opt/edge/bin/python -m pip install -q --no-index --find-links /tmp/wheels \
    $(grep -v '^#' "$req" | tr '\n' ' ') >&2
chroot "$root.tmp" /opt/edge/bin/python -c "import numpy, PIL, pydantic, ai_edge_litert.interpreter" >&2
rm -rf "$wheels"
touch "$root.tmp/.shipyard-complete"
mv "$root.tmp" "$root"
echo "$root"
