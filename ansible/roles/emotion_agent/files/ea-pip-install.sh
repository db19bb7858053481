#!/bin/sh
# Install emotion-agent into RELEASE/venv, offline from RELEASE/wheelhouse (or from
# INDEX_URL when given), then mark the release installed:
#   ea-pip-install.sh RELEASE REQUIREMENT VERSION UPGRADE_PIP(yes|no) [INDEX_URL]
# RELEASE/.installed is written last, only when `emotion-agent --version` prints VERSION:
# an interrupted install is redone by the next run. The wheelhouse is removed afterwards
# (it is big, and the release no longer needs it).
set -eu
RELEASE="$1" REQ="$2" VERSION="$3" UPGRADE="$4" INDEX="${5:-}"
VENV="$RELEASE/venv"
if [ -n "$INDEX" ]; then
    set -- --index-url "$INDEX"
else
    set -- --no-index --find-links "$RELEASE/wheelhouse"
fi
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check --no-cache-dir "$@"; }
if [ "$UPGRADE" = yes ]; then
    # Old pips (Ubuntu 20.04: 20.0.2) cannot see the manylinux_2_27/2_28 wheels.
    pip install --quiet "$@" --upgrade pip
fi
pip install --quiet "$@" "$REQ"
got="$("$VENV/bin/emotion-agent" --version)"
case "$got" in
    *" $VERSION") ;;
    *) echo "installed $got, expected $VERSION" >&2; exit 1 ;;
esac
rm -rf "$RELEASE/wheelhouse"
echo "$got" >"$RELEASE/.installed"
echo "$got installed in $VENV"
