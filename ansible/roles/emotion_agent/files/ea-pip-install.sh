#!/bin/sh
# Create RELEASE/venv and install emotion-agent into it, offline from RELEASE/wheelhouse.tar
# and RELEASE/dist (the agent's wheel), or from INDEX_URL when given; then mark the
# release installed:
#   ea-pip-install.sh PYTHON SYSTEM_SITE(yes|no) RELEASE REQUIREMENT VERSION UPGRADE_PIP(yes|no) [INDEX_URL]
# With UPGRADE_PIP and a wheelhouse, the venv is made without pip and gets the
# wheelhouse's pip straight away (Ubuntu 20.04's pip 20.0.2 cannot see the
# manylinux_2_27/2_28 wheels onnxruntime needs; skipping ensurepip is also faster).
# A pip.conf already in RELEASE/venv (the Jetson constraints) applies to every pip run.
# RELEASE/.installed is written last, only when `emotion-agent --version` prints VERSION:
# an interrupted install is redone by the next run. The wheelhouse is removed afterwards
# (it is big, and the release no longer needs it).
set -eu
PYTHON="$1" SYSTEM_SITE="$2" RELEASE="$3" REQ="$4" VERSION="$5" UPGRADE="$6" INDEX="${7:-}"
# One install at a time per release; a second one finds it done and stops.
exec 9>"$RELEASE/.install.lock"
flock 9
if [ -f "$RELEASE/.installed" ]; then
    cat "$RELEASE/.installed"
    exit 0
fi
VENV="$RELEASE/venv"
WH="$(mktemp -d "$RELEASE/wheelhouse.XXXXXX")"
venv_args=""
[ "$SYSTEM_SITE" = yes ] && venv_args="--system-site-packages"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check --no-cache-dir "$@"; }
if [ -n "$INDEX" ]; then
    set -- --index-url "$INDEX"
    "$PYTHON" -m venv $venv_args "$VENV"
    [ "$UPGRADE" = yes ] && pip install --quiet "$@" --upgrade pip
else
    tar -xf "$RELEASE/wheelhouse.tar" -C "$WH"
    set -- --no-index --find-links "$WH"
    pipwheel="$(ls "$WH"/pip-*.whl 2>/dev/null | tail -1)"
    if [ "$UPGRADE" = yes ] && [ -n "$pipwheel" ]; then
        "$PYTHON" -m venv --without-pip $venv_args "$VENV"
        "$VENV/bin/python" "$pipwheel/pip" install --quiet --disable-pip-version-check \
            --no-cache-dir "$@" pip
    else
        "$PYTHON" -m venv $venv_args "$VENV"
    fi
fi
[ -d "$RELEASE/dist" ] && set -- "$@" --find-links "$RELEASE/dist"
pip install --quiet "$@" "$REQ"
got="$("$VENV/bin/emotion-agent" --version)"
case "$got" in
    *" $VERSION") ;;
    *) echo "installed $got, expected $VERSION" >&2; exit 1 ;;
esac
rm -rf "$WH" "$RELEASE/wheelhouse.tar" "$RELEASE/dist" "$RELEASE/.install.lock"
echo "$got" >"$RELEASE/.installed"
echo "$got installed in $VENV"
