#!/usr/bin/env bash
# Quickstart: install emotion-agent into ./.venv and run its main job on the
# embedded default (no camera, no broker, nothing downloaded at run time).
#
#   ./scripts/demo.sh
#
# What it runs grows with the project (docs/operations.md): today the agent is
# installed and its configuration layer exercised on the annotated example
# (validate, effective config, schema). The detection -> emotion -> MQTT demo
# loop (`emotion-agent demo`) takes this place when it lands; the command stays.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq python3-venv >/dev/null
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[cpu]'
EA=.venv/bin/emotion-agent

if "$EA" --help | grep -qE '^    demo '; then
    exec "$EA" demo "$@"
fi

echo "== emotion-agent $("$EA" --version | cut -d' ' -f2) installed in .venv"
echo "== validating the annotated example configuration"
"$EA" config validate agent/config/example.yaml
echo "== effective configuration (example + your EMOTION_AGENT__* environment), secrets masked"
"$EA" --config agent/config/example.yaml config show
echo "== a configuration error, as the daemon would report it (exit code 78):"
set +e
"$EA" --config agent/config/example.yaml --set mqtt.port=70000 config validate
echo "   exit code: $?"
set -e
echo "== next: 'source .venv/bin/activate; emotion-agent --help'"
