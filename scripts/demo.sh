#!/usr/bin/env bash
# Quickstart: install emotion-agent into ./.venv and run its main job on the
# embedded default (no camera, no broker, nothing downloaded at run time).
#
#   ./scripts/demo.sh [--seconds 10] [--frames N] [--json] [--keep] [--port N]
#
# It runs `emotion-agent demo`: the real loop (detector, landmarks, emotion,
# tracking) on the bundled sample photos, published through the durable outbox
# to an embedded MQTT broker, and every message printed as a subscriber sees it
# (docs/mqtt.md). Arguments go to `emotion-agent demo`.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq python3-venv >/dev/null
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[cpu]'
EA=.venv/bin/emotion-agent

exec "$EA" demo "$@"
