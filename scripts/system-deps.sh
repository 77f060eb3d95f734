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
exit 0
