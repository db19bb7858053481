#!/usr/bin/env bash
# Fill a wheelhouse for one target platform, on the controller (needs an index there):
#
#   ea-wheelhouse.sh PYTHON WHEEL DEST MACHINE PYVER GLIBC EXTRAS
#   e.g. ea-wheelhouse.sh python3 dist/emotion_agent-0.2.0-py3-none-any.whl \
#            wheelhouse/aarch64-cp38-glibc2.31-jetson aarch64 3.8 2.31 jetson
#
# Downloads the binary wheels of the agent's dependencies (with EXTRAS) and of pip for
# that machine, Python and C library (every manylinux_2_17.._2_<glibc> tag), so the
# targets install with `pip install --no-index`. The agent's own wheel is not kept: the
# role copies it next to the wheelhouse. The `jetson` extra's pycuda and jetson-stats
# exist as source distributions only: they are downloaded as such, with their build
# requirements, and built on the Jetson (which has CUDA). The result is DEST.tar (what
# the role copies); DEST/.complete-<wheel name> marks a finished run; files already in
# DEST are not downloaded again.
set -euo pipefail
PYTHON="$1" WHEEL="$2" DEST="$3" MACHINE="$4" PYVER="$5" GLIBC="$6" EXTRAS="$7"
minor="${GLIBC#*.}"
platforms=()
for ((m = minor; m >= 17; m--)); do platforms+=(--platform "manylinux_2_${m}_${MACHINE}"); done
platforms+=(--platform "manylinux2014_${MACHINE}")
if [ "$MACHINE" = x86_64 ]; then
    platforms+=(--platform manylinux2010_x86_64 --platform manylinux1_x86_64)
fi
mkdir -p "$DEST"
pip_download() {
    "$PYTHON" -m pip download --disable-pip-version-check --quiet --dest "$DEST" "$@"
}
binary=(--only-binary=:all: --python-version "$PYVER" --implementation cp "${platforms[@]}")
SDIST_ONLY=(pycuda jetson-stats)
if [[ ",$EXTRAS," == *,jetson,* ]]; then
    # Resolve the binary part without the sdist-only packages, then fetch those as sdists.
    others="$(printf '%s' "$EXTRAS" | tr ',' '\n' | grep -vx jetson | paste -sd, - || true)"
    target="$WHEEL${others:+[$others]}"
    pip_download "${binary[@]}" "$target" "numpy<2" "onnxruntime>=1.15" pip setuptools wheel
    pip_download --no-binary=:all: --no-deps "${SDIST_ONLY[@]}"
else
    pip_download "${binary[@]}" "$WHEEL[$EXTRAS]" pip
fi
rm -f "$DEST"/emotion_agent-*.whl
# DEST.tar: what the role copies (one file travels much faster than many).
find "$DEST" -maxdepth 1 -type f \( -name '*.whl' -o -name '*.tar.gz' -o -name '*.zip' \) \
    -printf '%f\n' | sort >"$DEST.list"
tar -C "$DEST" -cf "$DEST.tar.tmp" -T "$DEST.list"
mv "$DEST.tar.tmp" "$DEST.tar"
rm -f "$DEST.list"
touch "$DEST/.complete-$(basename "$WHEEL")"
echo "wheelhouse ready: $DEST.tar ($(tar -tf "$DEST.tar" | wc -l) files)"
