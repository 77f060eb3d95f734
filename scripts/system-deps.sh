#!/usr/bin/env bash
# Optional system packages some tests use (Graphviz for plot_model, Chromium for the HTML report test).
# Installed with apt-get when we are root and they are missing; otherwise those tests skip and say why.
set -u
want=()
command -v dot >/dev/null 2>&1 || want+=(graphviz)
command -v chromium >/dev/null 2>&1 || want+=(chromium)
[ ${#want[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "system-deps: not root or no apt-get; tests that need ${want[*]} will skip" >&2
    exit 0
fi
echo "system-deps: installing ${want[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
(apt-get update -qq && apt-get install -y -qq --no-install-recommends "${want[@]}") >/tmp/shipyard-system-deps.log 2>&1 \
    || echo "system-deps: apt-get failed (see /tmp/shipyard-system-deps.log); those tests will skip" >&2
exit 0
