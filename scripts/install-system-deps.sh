#!/bin/sh
# Installs the Debian packages the appliance needs (the MQTT broker and its clients;
# PostgreSQL, the shared cache of a fleet), only when they are missing. Uses sudo when not
# run as root.
set -eu
missing=""
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing="$missing mosquitto"
command -v mosquitto_pub >/dev/null 2>&1 || missing="$missing mosquitto-clients"
command -v python3.11 >/dev/null 2>&1 || missing="$missing python3.11 python3.11-venv"
# cache.backend = "postgres"; no server is started (tests run a private one)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$missing postgresql"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
echo "installing system packages:$missing"
$SUDO apt-get update -qq
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
