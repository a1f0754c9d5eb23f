"""The machine a figure was measured on, and how busy it was."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # the benchmarks import the colab_kit of this checkout
    sys.path.insert(0, str(REPO))
MB = 2**20
GB = 2**30
MP_LIKE_132K = "/tmp/mp_like_132k.json.gz"  # benchmarks/mp_like.py's full-size MP-like file, where the studies look for it


def machine_info() -> dict[str, Any]:
    """nproc, RAM, CPU model and the versions that matter for these numbers."""
    import psutil

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    for mod in ("numpy", "torch", "pymatgen.core", "chgnet", "torch_geometric", "safetensors"):
        try:
            m = __import__(mod, fromlist=["__version__"])
            info[mod.split(".")[0]] = getattr(m, "__version__", "?")
        except ImportError:
            info[mod.split(".")[0]] = None
    return info


def dir_bytes(path: str | Path) -> tuple[int, int, int]:
    """(apparent bytes, bytes allocated on disk, number of files) under ``path``."""
    apparent = allocated = n = 0
    for root, _, files in os.walk(path):
        for name in files:
            st = os.stat(os.path.join(root, name))
            apparent += st.st_size
            allocated += st.st_blocks * 512
            n += 1
    return apparent, allocated, n


def loadavg() -> float | None:
    """1-minute load average (how busy the shared machine was around a measurement)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None
