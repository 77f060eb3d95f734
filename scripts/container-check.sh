#!/usr/bin/env bash
# Build the serving image with podman and prove it works:
#   scripts/container-check.sh --store DIR --model NAME:VERSION --image FILE [--bento] [--tag IMAGE] [--port PORT]
# builds the image (on the official slim Python base, or with BASE_IMAGE unset and no registry reachable, on
# a Debian base made locally by scripts/base-image.sh), starts it with a readable copy of the model NAME from
# the BentoML model store DIR mounted read-only, waits for /readyz, classifies FILE, and checks that the
# server runs as the image's non-root user, that TensorFlow is absent from the image and that the
# HEALTHCHECK reports healthy. The container and the copy are removed on exit, however it ends.
#
# With --bento it checks the other route instead: `bentoml build` (bentofile.yaml, with the model packed and
# docker.base_image set to the local base) then `bentoml containerize --backend podman`; that image runs as
# BentoML's user (bentoml) and has no HEALTHCHECK. PYTHON is the interpreter with BentoML (default python3).
#
# Exit status: 0 when every check passed; 77 when this machine cannot run containers (the reason is the
# last line of stdout, starting with "SKIP:"); anything else is a failure.
# Environment: BASE_IMAGE (skip the local base), CONTAINERS_CONF (default scripts/containers.conf),
# SHIPYARD_CACHE (base image cache, default /var/cache/shipyard), HOST_CA_BUNDLE (default the system bundle:
# mounted into the build for pip where TLS goes through a proxy with its own authority).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"

store="" model="" image_file="" tag="" port="" bento=""
while [ $# -gt 0 ]; do
    case "$1" in
        --store) store="$2"; shift 2 ;;
        --model) model="$2"; shift 2 ;;
        --image) image_file="$2"; shift 2 ;;
        --tag) tag="$2"; shift 2 ;;
        --port) port="$2"; shift 2 ;;
        --bento) bento=1; shift ;;
        *) echo "unknown argument $1; see the header of $0" >&2; exit 2 ;;
    esac
done
[ -n "$store" ] && [ -n "$model" ] && [ -f "$image_file" ] \
    || { echo "give --store DIR --model NAME:VERSION --image FILE" >&2; exit 2; }
name="${model%%:*}"
flavour=serve user=shipyard
[ -n "$bento" ] && flavour=bento user=bentoml
[ -n "$tag" ] || tag="localhost/shipyard-$flavour:check"
[ -d "$store/$name" ] || { echo "no model $name in the store $store" >&2; exit 2; }

skip() { echo "SKIP: $*"; exit 77; }
step() { echo "--- $*"; }
elapsed() { echo "$(( $(date +%s) - started ))s"; }
started=$(date +%s)

# -- can this machine run containers? -------------------------------------------------------------------
for tool in podman runc curl; do
    command -v "$tool" >/dev/null 2>&1 || skip "$tool is not installed (bash scripts/system-deps.sh installs it as root)"
done
[ "$(id -u)" = "0" ] || skip "podman runs here only as root (rootless needs subuid maps and fuse-overlayfs); run as root"
podman info >/dev/null 2>&1 || skip "podman cannot start: $(podman info 2>&1 | tail -1)"
if [ -z "${BASE_IMAGE:-}" ]; then
    set +e
    BASE_IMAGE="$(bash "$here/base-image.sh" "$flavour")"
    rc=$?
    set -e
    [ $rc -eq 0 ] || { [ $rc -eq 77 ] && skip "no base image: $BASE_IMAGE"; echo "base-image.sh failed ($rc)"; exit 1; }
fi
step "base image $BASE_IMAGE ($(elapsed))"

# -- build ----------------------------------------------------------------------------------------------
work="$(mktemp -d /tmp/shipyard-container-check.XXXXXX)"
container="shipyard-check-$$"
cleanup() {
    podman rm --force --time 5 "$container" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
ca="${HOST_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
if [ -z "$bento" ]; then
    ca_args=()
    [ -f "$ca" ] && ca_args=(--volume "$ca:/etc/ssl/certs/host-ca.crt:ro" --build-arg PIP_CERT=/etc/ssl/certs/host-ca.crt)
    # --format docker keeps the HEALTHCHECK (the OCI image format has no field for it)
    podman build --quiet --format docker --build-arg "BASE_IMAGE=$BASE_IMAGE" "${ca_args[@]}" -t "$tag" "$root" >/dev/null
else
    # a BentoML home of its own holding only the model, packed into the Bento
    mkdir -p "$work/home/models"
    cp -r "$store/$name" "$work/home/models/$name"
    "${PYTHON:-python3}" - "$root/bentofile.yaml" "$BASE_IMAGE" "$work/bentofile.yaml" <<'PY'
import sys, yaml
spec = yaml.safe_load(open(sys.argv[1]))
spec["docker"]["base_image"] = sys.argv[2]  # BentoML ignores python_version with a base image
spec["docker"].pop("python_version", None)
yaml.safe_dump(spec, open(sys.argv[3], "w"))
PY
    bento_tag="$(cd "$root" && BENTOML_HOME="$work/home" SHIPYARD_MODEL="$model" BENTOML_DO_NOT_TRACK=True \
        "${PYTHON:-python3}" -m bentoml build -f "$work/bentofile.yaml" -o tag | tail -1)"
    bento_tag="${bento_tag#__tag__:}"
    ca_opts=()
    [ -f "$ca" ] && ca_opts=(--opt "volume=$ca:/etc/ssl/certs/ca-certificates.crt:ro")
    BENTOML_HOME="$work/home" BENTOML_DO_NOT_TRACK=True "${PYTHON:-python3}" -m bentoml containerize \
        --backend podman "$bento_tag" -t "$tag" "${ca_opts[@]}" >"$work/containerize.log" 2>&1 \
        || { tail -30 "$work/containerize.log"; echo "FAIL: bentoml containerize failed"; exit 1; }
fi
step "built $tag ($(elapsed))"

# -- run with a readable copy of the model ---------------------------------------------------------------
run_args=()
if [ -z "$bento" ]; then
    # the store is private to its owner (0700 root); the image's user (uid 10001) needs to read it
    mkdir -p "$work/models"
    cp -r "$store/$name" "$work/models/$name"
    chmod -R a+rX "$work/models"
    run_args=(--volume "$work/models:/home/shipyard/bentoml/models:ro")
fi
[ -n "$port" ] || port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
podman run --detach --name "$container" --publish "127.0.0.1:$port:3000" \
    --env "SHIPYARD_MODEL=$model" "${run_args[@]}" "$tag" >/dev/null
url="http://127.0.0.1:$port"
ready=""
for _ in $(seq 1 240); do
    if curl -fsS -o /dev/null "$url/readyz" 2>/dev/null; then ready=1; break; fi
    [ "$(podman inspect --format '{{.State.Running}}' "$container")" = "true" ] || break
    sleep 0.5
done
if [ -z "$ready" ]; then
    echo "FAIL: $url/readyz did not answer 200 within 120 s; the container's log ends with:"
    podman logs --tail 30 "$container" 2>&1
    exit 1
fi
step "ready on $url ($(elapsed))"

fail() { echo "FAIL: $*"; podman logs --tail 30 "$container" 2>&1; exit 1; }

answer="$(curl -fsS -F "image=@$image_file" "$url/classify")" || fail "POST /classify failed"
echo "$answer" | python3 -c '
import json, sys
body = json.load(sys.stdin)
top = body["predictions"][0]
assert body["model"] == sys.argv[1], body
print("--- classified: %s (%.3f) by %s %s" % (top["label"], top["probability"], body["model"], body["variant"]))
' "$model" || fail "unexpected answer from /classify: $answer"

# every process of the container runs as the non-root user
users="$(podman top "$container" user | tail -n +2 | sort -u | tr '\n' ' ')"
[ "$users" = "$user " ] || fail "processes run as: $users (expected only $user)"
step "runs as: $users"

podman exec "$container" python -c "import importlib.util as u, sys; sys.exit(u.find_spec('tensorflow') is not None)" \
    || fail "TensorFlow is importable in the image"
if podman exec "$container" python -c "import importlib.metadata as m; print([d.name for d in m.distributions() if 'tensorflow' in d.name.lower()])" | grep -q "'"; then
    fail "a tensorflow distribution is installed in the image"
fi
step "no TensorFlow in the image"

if [ -n "$bento" ]; then
    step "HEALTHCHECK: none (BentoML's generated Dockerfile declares none; probe /readyz)"
    echo "OK: the Bento image $tag built and served $model in $(elapsed)"
    exit 0
fi
# podman runs HEALTHCHECKs from systemd timers; without systemd, run the image's check now
podman healthcheck run "$container" >/dev/null || fail "the HEALTHCHECK failed"
health="$(podman inspect --format '{{.State.Health.Status}}' "$container" 2>/dev/null \
    || podman inspect --format '{{.State.Healthcheck.Status}}' "$container")"
[ "$health" = "healthy" ] || fail "health status is $health"
step "HEALTHCHECK: $health"
echo "OK: the image $tag built and served $model in $(elapsed)"
