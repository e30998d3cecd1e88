#!/bin/sh
# Builds the container image from ./Dockerfile with podman, starts it, waits for its health
# check, sends a prompt over MQTT and checks that a clip comes back (docs/operations.md,
# "Container"). Not part of `make test`: it installs podman and mmdebstrap when missing and
# downloads Debian and PyPI packages (several minutes, a few GB of disk).
#
# No image registry is needed: the base image is made from Debian's own packages (mmdebstrap
# into a tarball, `podman import`) and tagged localhost/debian:bookworm-slim, which the build
# uses instead of the registry's debian:bookworm-slim. pip inside the build uses the host's pip
# settings (index, extra index, find-links, CA bundle), local directories mounted read-only.
#
# Usage: sh scripts/container-smoke.sh        (as root; rootful podman)
# Environment: IMAGE (tag to build), BASE_IMAGE (an existing base to use), DEBIAN_MIRROR,
# KEEP=1 (leave the container running after the check).
set -eu
cd "$(dirname "$0")/.."

IMAGE="${IMAGE:-localhost/audiogen-appliance:smoke}"
BASE_IMAGE="${BASE_IMAGE:-localhost/debian:bookworm-slim}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
NAME="audiogen-smoke-$$"
PIP="${PIP:-.venv/bin/pip}"
[ -x "$PIP" ] || PIP="python3 -m pip"

say() { echo "container-smoke: $*" >&2; }
now() { date +%s; }

# 1. Tools: podman (rootful: needs no user namespaces) and mmdebstrap for the base image.
# runc, not Debian's default crun, where cgroups are mounted in hybrid mode (v1 controllers
# plus an empty v2 tree): crun refuses that ("cgroups in hybrid mode not supported").
runtime=""
[ -d /sys/fs/cgroup/unified ] && runtime=runc
missing=""
command -v podman >/dev/null 2>&1 || missing="$missing podman"
command -v mmdebstrap >/dev/null 2>&1 || missing="$missing mmdebstrap"
[ -z "$runtime" ] || command -v runc >/dev/null 2>&1 || missing="$missing runc"
if [ -n "$missing" ]; then
    say "installing$missing"
    apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
fi

# No systemd here to manage cgroups. Resource limits: podman asks for its own defaults
# (nofile 1048576, nproc from the host), which a process without CAP_SYS_RESOURCE may not
# set ("error setting rlimit ... operation not permitted"): ask for values below the host's.
podman() { command podman --cgroup-manager cgroupfs ${runtime:+--runtime "$runtime"} "$@"; }
nofile=$(ulimit -Hn)
if [ "$nofile" = unlimited ] || [ "$nofile" -gt 65536 ]; then nofile=65536; fi
ulimits="--ulimit nofile=$nofile:$nofile --ulimit nproc=8192:8192"

# 2. The base image, from Debian packages (minbase: what debian:*-slim is), once.
if ! podman image exists "$BASE_IMAGE"; then
    say "making $BASE_IMAGE with mmdebstrap from $DEBIAN_MIRROR"
    started=$(now)
    mmdebstrap --variant=minbase --format=tar \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        bookworm - \
        "deb $DEBIAN_MIRROR bookworm main" \
        "deb $DEBIAN_MIRROR bookworm-updates main" \
        "deb ${DEBIAN_MIRROR%/debian}/debian-security bookworm-security main" \
        | podman import --change 'CMD ["bash"]' - "$BASE_IMAGE" >/dev/null
    say "base image made in $(( $(now) - started )) s"
fi

# 3. pip settings of this host, handed to the build as build arguments (the Dockerfile's ARGs);
# local paths are mounted read-only at the same place. Collected in "$@" (values hold spaces).
pip_setting() {  # pip_setting NAME: the environment's PIP_<NAME>, else pip's config (<section>.<name>)
    var="PIP_$(echo "$1" | tr 'a-z-' 'A-Z_')"
    eval "value=\${$var:-}"
    if [ -z "$value" ]; then
        value=$($PIP config list 2>/dev/null | sed -n "s/^[a-z]*\.$1='\(.*\)'\$/\1/p" | head -n 1)
    fi
    printf '%s' "$value" | tr '\n' ' ' | sed 's/  */ /g; s/^ //; s/ $//'
}
set -- --build-arg "BASE_IMAGE=$BASE_IMAGE"
for setting in index-url extra-index-url find-links; do
    value=$(pip_setting "$setting")
    [ -n "$value" ] || continue
    set -- "$@" --build-arg "PIP_$(echo "$setting" | tr 'a-z-' 'A-Z_')=$value"
    for entry in $value; do
        path="${entry#file://}"
        path="${path%/}"
        case "$path" in */simple) path="${path%/simple}" ;; esac  # an index links to ../files
        case "$path" in /*) [ -e "$path" ] && set -- "$@" -v "$path:$path:ro" ;; esac
    done
done
cert=$(pip_setting cert)
if [ -n "$cert" ] && [ -f "$cert" ]; then  # a proxy's CA, say: pip in the build must trust it too
    set -- "$@" -v "$cert:/run/host-ca.pem:ro" --build-arg PIP_CERT=/run/host-ca.pem
fi

# 4. Build. Docker format: an OCI image would drop the HEALTHCHECK. Host network: the build's
# apt and pip reach what this host reaches, and no bridge (iptables) is needed.
say "building $IMAGE from $BASE_IMAGE: podman build $*"
started=$(now)
# shellcheck disable=SC2086
podman build --format docker --network host --pull=never $ulimits "$@" -f Dockerfile -t "$IMAGE" .
build_s=$(( $(now) - started ))
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
say "built in ${build_s} s; image size ${size} bytes ($(( size / 1048576 )) MiB)"

# 5. Run it on free loopback ports with its own (embedded) broker, then ask for a clip.
ports=$(python3 -c 'import socket
for _ in range(2):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
mqtt_port=$(echo "$ports" | sed -n 1p)
http_port=$(echo "$ports" | sed -n 2p)
cleanup() { [ "${KEEP:-0}" = 1 ] || podman rm -f "$NAME" >/dev/null 2>&1 || true; }
trap cleanup EXIT
# shellcheck disable=SC2086
podman run -d --name "$NAME" --network host $ulimits \
    -e APPLIANCE_NODE__ID=smoke \
    -e APPLIANCE_BROKER__PORT="$mqtt_port" -e APPLIANCE_BROKER__EMBEDDED=true \
    -e APPLIANCE_HTTP__HOST=127.0.0.1 -e APPLIANCE_HTTP__PORT="$http_port" \
    "$IMAGE" >/dev/null
wait_until() {  # wait_until SECONDS COMMAND...: COMMAND succeeded in time, the container running
    deadline=$(( $(now) + $1 )); shift
    while [ "$(now)" -lt "$deadline" ]; do
        "$@" >/dev/null 2>&1 && return 0
        [ "$(podman inspect --format '{{.State.Running}}' "$NAME")" = true ] || return 1
        sleep 2
    done
    return 1
}
fail() { podman logs "$NAME" 2>&1 | tail -n 40 >&2; say "FAIL: $*"; exit 1; }
readyz() { python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)' \
    "http://127.0.0.1:$http_port/readyz"; }
started=$(now)
# Without systemd podman runs no health check timer ("unable to get systemd connection"):
# run the image's HEALTHCHECK command here, as the timer would.
wait_until 180 podman healthcheck run "$NAME" || fail "the container never passed its health check"
health_s=$(( $(now) - started ))
say "healthy after ${health_s} s; status: $(podman inspect --format '{{.State.Health.Status}}' "$NAME")"
# Healthy is liveness (/healthz); a request needs readiness: the broker up, the node's status
# published and a worker with its (tiny, built on first start) model loaded.
wait_until 300 readyz || fail "the appliance never became ready (/readyz)"
ready_s=$(( $(now) - started ))
say "ready (/readyz 200 from the host) after ${ready_s} s"

started=$(now)
# over MQTT (the image's own client and broker), audio in the reply; MP3 from the extension
podman exec "$NAME" appliance request "rain on a tin roof" --duration 2 \
    --out /var/lib/audiogen/smoke.mp3 --timeout 600 --config /etc/audiogen/appliance.toml >&2
request_s=$(( $(now) - started ))
clip=$(podman exec "$NAME" python -c 'import soundfile
info = soundfile.info("/var/lib/audiogen/smoke.mp3")
assert info.format == "MP3" and info.channels == 2 and info.duration > 1.5, info
print(f"{info.format} {info.samplerate} Hz {info.channels} ch {info.duration:.2f} s")') \
    || fail "the clip is not a 2 s stereo MP3"
say "clip ($clip) in ${request_s} s"
echo "build_s=$build_s image_bytes=$size healthy_s=$health_s ready_s=$ready_s first_clip_s=$request_s"
