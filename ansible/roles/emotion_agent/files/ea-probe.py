"""What the role needs to know about a target, as one JSON object (stdlib only).

Run with the Python the release's venv is made with; Python 3.6 and up.
"""

import json
import os
import platform
import sys


def read(path):
    try:
        with open(path, "rb") as handle:
            return handle.read().decode("utf-8", "replace").replace("\x00", "").strip()
    except OSError:
        return ""


def link(path):
    try:
        return os.readlink(path)
    except OSError:
        return ""


prefix = sys.argv[1]
tegra = read("/etc/nv_tegra_release")
model = read("/proc/device-tree/model")
libc, libc_version = platform.libc_ver()
releases = os.path.join(prefix, "releases")
try:
    installed = sorted(
        name
        for name in os.listdir(releases)
        if os.path.isfile(os.path.join(releases, name, ".installed"))
    )
except OSError:
    installed = []
print(
    json.dumps(
        {
            "machine": platform.machine(),
            "python": "{}.{}".format(*sys.version_info[:2]),
            "libc": libc,
            "libc_version": libc_version,
            "jetson": bool(tegra) or "jetson" in model.lower(),
            "tegra_release": tegra.splitlines()[0][:120] if tegra else "",
            "model": model,
            "current": os.path.basename(link(os.path.join(prefix, "current"))),
            "previous": os.path.basename(link(os.path.join(prefix, "previous"))),
            "installed": installed,
        }
    )
)
