#!/usr/bin/env bash
# The checks that need a real NVIDIA GPU (tests/gpu): pycuda's memory paths, the CUDA
# owner across threads and restarts, and the TensorRT backend's buffer/stream code.
#
#   scripts/gpu-check.sh --fetch   on a machine with network access: download what
#                                  the GPU machine lacks into .gpu/ (ignored by git)
#   scripts/gpu-check.sh           on the GPU machine (CUDA with nvcc, Python 3.12,
#                                  numpy, setuptools, wheel; no network): build pycuda
#                                  from .gpu/, run tests/gpu, write logs and a summary
#   scripts/gpu-check.sh --fingerprint   the hash of the tested files the summary names
#
# The GPU machine needs the working tree with .gpu/ in it. Logs and summary.txt go to
# $OUT (default: build/gpu-check). Exit status: 0 when every check passed, 1 when a
# check failed, 2 when the environment is unusable (no GPU, no nvcc, missing .gpu/).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
REPO=$(pwd)
GPU_DIR="$REPO/.gpu"
PYCUDA_VERSION=2026.1
# Wheels for CPython 3.12, manylinux x86-64: pycuda's own dependencies, what the tested
# modules import (engines: numpy is there; pydantic, PyYAML), and pytest.
WHEELS=(
    "pytools==2026.1.1" "platformdirs==4.14.9" "mako==1.4.3" "markupsafe==3.0.4"
    "siphash24==1.9" "typing_extensions==4.16.0"
    "pydantic==2.14.4" "pydantic-core==2.50.5" "annotated-types==0.8.0"
    "typing-inspection==0.4.5" "pyyaml==6.0.4"
    "pytest==9.2.0" "iniconfig==2.3.1" "pluggy==1.7.0" "packaging==26.4" "pygments==2.21.0"
)

say() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }

fetch() {
    local python="${PYTHON:-python3}"
    mkdir -p "$GPU_DIR/wheels"
    say "pycuda $PYCUDA_VERSION source into $GPU_DIR"
    "$python" -m pip download -q --disable-pip-version-check --no-deps \
        --no-binary pycuda "pycuda==$PYCUDA_VERSION" -d "$GPU_DIR" || return 1
    say "wheels for CPython 3.12 manylinux x86-64 into $GPU_DIR/wheels"
    "$python" -m pip download -q --disable-pip-version-check --no-deps \
        --only-binary :all: --implementation cp --python-version 3.12 --abi cp312 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux_2_28_x86_64 \
        -d "$GPU_DIR/wheels" "${WHEELS[@]}" || return 1
    ls -l "$GPU_DIR" "$GPU_DIR/wheels"
    say "total: $(du -sh "$GPU_DIR" | cut -f1) (the GPU machine takes 64 MiB of carried files)"
}

fingerprint() {  # what was tested, independent of the .git that travelled with the tree
    find engines tests/gpu scripts/gpu-check.sh tools/bench_cuda_owner.py -type f \
        \( -name '*.py' -o -name '*.sh' \) -not -path '*/__pycache__/*' | LC_ALL=C sort \
        | xargs sha256sum | sha256sum | cut -c1-12
}

if [ "${1:-}" = "--fetch" ]; then
    fetch
    exit $?
elif [ "${1:-}" = "--fingerprint" ]; then
    fingerprint
    exit 0
elif [ $# -gt 0 ]; then
    echo "usage: $0 [--fetch | --fingerprint]" >&2
    exit 2
fi

OUT="${OUT:-$REPO/build/gpu-check}"
mkdir -p "$OUT"
WORK="${GPU_CHECK_WORK:-/tmp/emotion-agent-gpu-check}"
SUMMARY="$OUT/summary.txt"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
: > "$SUMMARY"
note() { printf '%s\n' "$*" | tee -a "$SUMMARY"; }
give_up() {  # give_up STATUS MESSAGE [LOG]
    note "RESULT: $2"
    if [ -n "${3:-}" ] && [ -f "$3" ]; then
        echo "--- last lines of $3 ---"
        tail -n 40 "$3"
    fi
    exit "$1"
}

HEAD_COMMIT=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
if git -C "$REPO" diff --quiet HEAD -- engines tests/gpu scripts tools 2>/dev/null; then
    TREE="= git HEAD $HEAD_COMMIT"
else
    TREE="differs from the git HEAD found ($HEAD_COMMIT)"
fi
note "emotion-agent GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
note "tested files: fingerprint $(fingerprint) (scripts/gpu-check.sh --fingerprint in a checkout gives the same for the same files), tree $TREE"

# -- the machine ------------------------------------------------------------------
command -v nvidia-smi >/dev/null 2>&1 || give_up 2 "no nvidia-smi: not a GPU machine"
GPU_LINE=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -1)
note "gpu: $GPU_LINE"
note "driver CUDA version: $(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9.]*\).*/\1/p' | head -1)"
NVCC=$(command -v nvcc)
if [ -z "$NVCC" ]; then
    for candidate in /usr/local/cuda/bin/nvcc /usr/local/cuda-*/bin/nvcc; do
        [ -x "$candidate" ] && NVCC=$candidate && break
    done
fi
[ -n "$NVCC" ] || give_up 2 "no nvcc found (PATH, /usr/local/cuda*/bin)"
CUDA_ROOT=$(dirname "$(dirname "$(readlink -f "$NVCC")")")
export PATH="$CUDA_ROOT/bin:$PATH"  # pycuda's SourceModule runs nvcc from PATH
note "nvcc: $("$NVCC" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p') at $CUDA_ROOT"
PYTHON="${PYTHON:-python3}"
note "python: $("$PYTHON" --version 2>&1) at $(command -v "$PYTHON")"
"$PYTHON" -c 'import numpy, setuptools; print("numpy", numpy.__version__, "setuptools", setuptools.__version__)' \
    2>&1 | tee -a "$SUMMARY" || give_up 2 "numpy and setuptools are needed to build pycuda"

SDIST="$GPU_DIR/pycuda-$PYCUDA_VERSION.tar.gz"
[ -f "$SDIST" ] || give_up 2 "$SDIST is missing: run 'scripts/gpu-check.sh --fetch' where there is network, and carry .gpu"
ls "$GPU_DIR"/wheels/*.whl >/dev/null 2>&1 || give_up 2 "$GPU_DIR/wheels has no wheels: run --fetch"

# -- dependencies and pycuda ---------------------------------------------------------
rm -rf "$WORK"
mkdir -p "$WORK/site"
say "installing the carried wheels into $WORK/site"
"$PYTHON" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile \
    --target "$WORK/site" "$GPU_DIR"/wheels/*.whl > "$OUT/wheels.log" 2>&1 \
    || give_up 2 "installing the wheels failed" "$OUT/wheels.log"

say "building pycuda $PYCUDA_VERSION against $CUDA_ROOT"
tar xzf "$SDIST" -C "$WORK" || give_up 2 "cannot unpack $SDIST"
SRC="$WORK/pycuda-$PYCUDA_VERSION"
LIBDIRS="$CUDA_ROOT/lib64/stubs,$CUDA_ROOT/lib64"
(cd "$SRC" && PYTHONPATH="$WORK/site" "$PYTHON" configure.py --cuda-root="$CUDA_ROOT" \
    --cudadrv-lib-dir="$LIBDIRS" --cudart-lib-dir="$CUDA_ROOT/lib64") > "$OUT/configure.log" 2>&1 \
    || give_up 2 "pycuda's configure.py failed" "$OUT/configure.log"
started=$(date +%s)
(cd "$SRC" && PYTHONPATH="$WORK/site" timeout 420 "$PYTHON" setup.py build_ext --inplace -j 16) \
    > "$OUT/build.log" 2>&1
status=$?
note "pycuda build: exit $status in $(($(date +%s) - started)) s"
if [ "$status" -ne 0 ]; then
    grep -m 10 -i -E "error|fatal" "$OUT/build.log"
    give_up 2 "pycuda did not build" "$OUT/build.log"
fi
export PYTHONPATH="$SRC:$WORK/site:$REPO"
"$PYTHON" - > "$OUT/pycuda.log" 2>&1 <<'EOF' || give_up 2 "the built pycuda does not import or initialise" "$OUT/pycuda.log"
import pycuda
import pycuda.driver as cuda
cuda.init()
device = cuda.Device(0)
print("pycuda:", pycuda.VERSION_TEXT, "| compiled for CUDA", ".".join(map(str, cuda.get_version())),
      "| driver API", cuda.get_driver_version())
print("device 0:", device.name(), "compute capability", "%d.%d" % device.compute_capability(),
      "| integrated", device.get_attribute(cuda.device_attribute.INTEGRATED),
      "| can map host memory", device.get_attribute(cuda.device_attribute.CAN_MAP_HOST_MEMORY))
EOF
tee -a "$SUMMARY" < "$OUT/pycuda.log"

# -- the checks ---------------------------------------------------------------------------
say "running tests/gpu"
(PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 timeout 300 "$PYTHON" -m pytest tests/gpu \
    --confcutdir=tests/gpu -p no:cacheprovider -o addopts="" -v -rA \
    --junitxml="$OUT/junit.xml") > "$OUT/pytest.log" 2>&1
status=$?
"$PYTHON" - "$OUT/junit.xml" >> "$SUMMARY" 2>&1 <<'EOF'
import sys
import xml.etree.ElementTree as ET

cases = ET.parse(sys.argv[1]).getroot().iter("testcase")
for case in cases:
    outcome = "PASS"
    detail = ""
    for tag, name in (("failure", "FAIL"), ("error", "ERROR"), ("skipped", "SKIP")):
        found = case.find(tag)
        if found is not None:
            outcome = name
            detail = " - " + (found.get("message") or "").splitlines()[0][:200] if (found.get("message") or "") else ""
            break
    print(f"{outcome:5} {case.get('name')} ({float(case.get('time', 0)):.2f} s){detail}")
EOF
tail -n 1 "$OUT/pytest.log" | tee -a "$SUMMARY"
say "measuring the CUDA owner hand-off (tools/bench_cuda_owner.py; informational)"
timeout 120 "$PYTHON" tools/bench_cuda_owner.py --count 3000 > "$OUT/bench.log" 2>&1 \
    || echo "(the hand-off measurement failed: see bench.log)" >> "$OUT/bench.log"
tee -a "$SUMMARY" < "$OUT/bench.log"
if [ "$status" -eq 0 ]; then
    note "RESULT: every check passed"
    exit 0
fi
give_up 1 "pytest exit $status (see pytest.log)" "$OUT/pytest.log"
