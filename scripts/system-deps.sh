#!/usr/bin/env bash
# Optional system packages some tests use, installed with apt-get when we are root and they are missing;
# otherwise those tests skip and say why. Quick (no apt-get at all) when everything is already there.
#   graphviz, chromium          plot_model, the HTML report test
#   podman, buildah, runc,      building and running the serving image (tests/ops/test_container.py;
#   mmdebstrap, curl              the base image itself is made and cached by scripts/base-image.sh)
#   prometheus                  promtool (rule unit tests) and the Prometheus server (live alert test)
# and, from PyPI into a venv of its own under $SHIPYARD_CACHE (default /var/cache/shipyard), the offline
# Kubernetes schema validator kubernetes-validate (tests/ops/test_deploy.py).
set -u
want=()
need() { command -v "$1" >/dev/null 2>&1 || want+=("$2"); }
need dot graphviz
need chromium chromium
need podman podman
need buildah buildah
need runc runc
need mmdebstrap mmdebstrap
need curl curl
need promtool prometheus
[ -f /usr/share/ca-certificates/mozilla/ISRG_Root_X1.crt ] || [ -f /etc/ssl/certs/ca-certificates.crt ] || want+=(ca-certificates)

cache="${SHIPYARD_CACHE:-/var/cache/shipyard}"
kv_version="1.37.0"
kv_venv="$cache/venvs/kubernetes-validate-$kv_version"

if [ ${#want[@]} -gt 0 ]; then
    if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "system-deps: not root or no apt-get; tests that need ${want[*]} will skip" >&2
    else
        echo "system-deps: installing ${want[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        (apt-get update -qq && apt-get install -y -qq --no-install-recommends "${want[@]}") >/tmp/shipyard-system-deps.log 2>&1 \
            || echo "system-deps: apt-get failed (see /tmp/shipyard-system-deps.log); those tests will skip" >&2
    fi
fi

if [ ! -f "$kv_venv/.installed" ]; then
    echo "system-deps: installing kubernetes-validate $kv_version into $kv_venv" >&2
    { rm -rf "$kv_venv" && mkdir -p "$cache/venvs" && python3 -m venv "$kv_venv" \
        && "$kv_venv/bin/pip" install --quiet "kubernetes-validate==$kv_version" \
        && touch "$kv_venv/.installed"; } >/tmp/shipyard-system-deps-pip.log 2>&1 \
        || { rm -rf "$kv_venv"; echo "system-deps: kubernetes-validate failed to install (see /tmp/shipyard-system-deps-pip.log); the manifest test will skip" >&2; }
fi
# ---- ARM64 emulation (tests/edge/test_arm64.py) -----------------------------------------------------------
# qemu-user-static, binfmt-support, arch-test and mmdebstrap; binfmt_misc mounted and qemu-aarch64 enabled.
# The arm64 Debian root itself is built and cached on first use by scripts/arm64-rootfs.sh.
arm=()
command -v qemu-aarch64-static >/dev/null 2>&1 || arm+=(qemu-user-static)
command -v update-binfmts >/dev/null 2>&1 || arm+=(binfmt-support)
command -v arch-test >/dev/null 2>&1 || arm+=(arch-test)
command -v mmdebstrap >/dev/null 2>&1 || arm+=(mmdebstrap)
if [ "$(id -u)" != "0" ]; then
    [ ${#arm[@]} -gt 0 ] && echo "system-deps: not root; the arm64 test will skip (needs ${arm[*]})" >&2
else
    if [ ${#arm[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "system-deps: installing ${arm[*]}" >&2
        (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${arm[@]}" \
            || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${arm[@]}"; }) \
            >/tmp/shipyard-system-deps-arm64.log 2>&1 \
            || echo "system-deps: apt-get failed (see /tmp/shipyard-system-deps-arm64.log); the arm64 test will skip" >&2
    fi
    [ -f /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null \
        || echo "system-deps: cannot mount binfmt_misc (not permitted here); the arm64 test will skip" >&2
    if command -v update-binfmts >/dev/null 2>&1 && [ -f /proc/sys/fs/binfmt_misc/register ]; then
        update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 \
            || echo "system-deps: update-binfmts --enable qemu-aarch64 failed; the arm64 test will skip" >&2
    fi
fi
# ---- end ARM64 emulation ------------------------------------------------------------------------------------
exit 0
