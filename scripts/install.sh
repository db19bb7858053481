#!/usr/bin/env bash
# Install emotion-agent into its own virtual environment (production layout).
#
#   sudo ./scripts/install.sh [--prefix /opt/emotion-agent] [--extras LIST] [-- PIP-ARGS...]
#
# On a Jetson (/etc/nv_tegra_release exists):
#   - the venv is created with --system-site-packages, so JetPack's OpenCV
#     (GStreamer + CUDA build) and TensorRT bindings are the ones imported;
#   - the venv gets a pip.conf whose constraints (packaging/jetson-constraints.txt)
#     make pip REFUSE opencv-python*, tensorrt and numpy>=2 wheels, so no later
#     `pip install` can shadow JetPack's libraries;
#   - extras: jetson (pycuda, jetson-stats, onnxruntime; numpy<2);
#   - afterwards `python -m agent.platform` checks that cv2 is JetPack's.
# Elsewhere: a plain venv with the cpu extra (onnxruntime, opencv-python-headless).
#
# EA_ROOT (default /) is where /etc/nv_tegra_release is looked for, and
# EA_PACKAGE what pip installs (default: this checkout): tests use them.
set -euo pipefail
SRC="$(cd "$(dirname "$0")/.." && pwd)"
PREFIX=/opt/emotion-agent
EXTRAS=""
ROOT="${EA_ROOT:-/}"
PYTHON="${PYTHON:-python3}"

while (($#)); do
    case "$1" in
        --prefix) PREFIX="$2"; shift 2 ;;
        --extras) EXTRAS="$2"; shift 2 ;;
        --) shift; break ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
    esac
done

VENV="$PREFIX/venv"
if [ -f "$ROOT/etc/nv_tegra_release" ]; then
    echo "Jetson detected ($(head -c 60 "$ROOT/etc/nv_tegra_release" | tr -d '#'))"
    EXTRAS="${EXTRAS:-jetson}"
    "$PYTHON" -m venv --system-site-packages "$VENV"
    install -m 0644 "$SRC/packaging/jetson-constraints.txt" "$VENV/jetson-constraints.txt"
    printf '[install]\nconstraint = %s\n' "$VENV/jetson-constraints.txt" > "$VENV/pip.conf"
    JETSON=1
else
    EXTRAS="${EXTRAS:-cpu}"
    "$PYTHON" -m venv "$VENV"
    JETSON=0
fi

# EA_PACKAGE: what pip installs (default: this checkout with the extras).
"$VENV/bin/python" -m pip install --disable-pip-version-check "$@" "${EA_PACKAGE:-$SRC[$EXTRAS]}"

if [ "$JETSON" = 1 ]; then
    if ! "$VENV/bin/python" -m agent.platform --root "$ROOT"; then
        echo "install.sh: WARNING: the platform check found problems (see above)" >&2
    fi
fi
VERSION="$("$VENV/bin/emotion-agent" --version)"  # fails the install if the script is missing
echo "installed: $VENV/bin/emotion-agent ($VERSION)"
