"""detect and plan on Google Colab as it really is: the free GPU runtime's published facts.

Facts (Google's googlecolab/backend-info, ``../shared/colab/os-info-gpu.txt``, and what the free
runtime reports): Ubuntu 22.04, Python 3.13, a Tesla T4 (15 GB, compute 7.5, no bfloat16),
12.7 GB RAM, 2 CPUs, the local disk at /content, Google Drive mounted at /content/drive.
``detect`` reads them through its injectable sources; ``make_plan`` decides from the result.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

from colab_kit.plan.machine import COLAB_ENV_VARS, GIB, Gpu, Machine, detect
from colab_kit.plan.planner import make_plan

OS_INFO = REPO.parent / "shared" / "colab" / "os-info-gpu.txt"

COLAB_OS, COLAB_PYTHON = "Ubuntu 22.04", (3, 13)
#: psutil.virtual_memory().total on the free runtime (Colab's RAM gauge: "12.7 GB").
COLAB_RAM = 13_609_451_520
#: torch.cuda.mem_get_info() total of Colab's T4 ("15 GB" in the resource panel); a fresh runtime
#: has ~0.1 GiB of it taken by the CUDA context.
T4 = Gpu("Tesla T4", 15_828_320_256, 15_720_000_000, (7, 5))
COLAB_ENV = {"COLAB_RELEASE_TAG": "release-colab-external_20260819-060052_RC00", "COLAB_GPU": "1",
             "COLAB_BACKEND_VERSION": "next", "COLAB_JUPYTER_IP": "172.28.0.12"}


def colab_t4(tmp_path: Path, *, drive: bool = True) -> Machine:
    """What ``detect()`` returns on a free Colab GPU runtime, with /content under ``tmp_path``."""
    content = tmp_path / "content"
    (content / "drive" / "MyDrive" if drive else content).mkdir(parents=True)
    return detect(environ=COLAB_ENV, memory=lambda: (COLAB_RAM, int(11.9 * GIB)), cgroup_root=tmp_path / "no-cgroup",
                  cpus=lambda: 2, gpu=lambda: T4, disk_free=lambda p: 107 * GIB, home_cache="/root/.cache/colab_kit",
                  content_dir=str(content), drive_dir=str(content / "drive" / "MyDrive"))


def at_real_paths(m: Machine) -> Machine:
    """The same machine with Colab's real /content and /content/drive paths (they do not exist here)."""
    free = {p.replace(m.content_dir, "/content"): b for p, b in m.disk_free.items()}
    return dataclasses.replace(m, content_dir="/content", drive_dir="/content/drive/MyDrive", disk_free=free)


def test_fixture_matches_googles_published_colab() -> None:
    if not OS_INFO.is_file():
        pytest.skip(f"Colab's os-info not found at {OS_INFO}")
    text = OS_INFO.read_text()
    assert COLAB_OS in text, f"os-info-gpu.txt no longer says {COLAB_OS}: update this fixture"
    m = re.search(r"^Python (\d+)\.(\d+)", text, re.M)
    assert m and (int(m.group(1)), int(m.group(2))) == COLAB_PYTHON, f"Colab's Python changed: {m and m.group(0)}"
    setup = (REPO / "setup.py").read_text()
    minimum = re.search(r'python_requires=">=3\.(\d+)"', setup)
    assert minimum and int(minimum.group(1)) <= COLAB_PYTHON[1], "setup.py's python_requires rules out Colab's Python"


def test_detect_reads_colab_facts(tmp_path: Path) -> None:
    m = colab_t4(tmp_path)
    assert m.is_colab and m.drive_mounted and m.cpus == 2 and m.cgroup_limit is None
    assert m.ram_total == COLAB_RAM and f"{m.ram_total / GIB:.1f}" == "12.7"  # the gauge's "12.7 GB" is GiB
    assert m.gpu == T4 and not m.gpu.supports_bf16
    assert set(m.disk_free) == {m.content_dir, "/root/.cache/colab_kit", m.drive_dir}
    rows = dict(m.rows())
    assert rows["Google Colab"] == "yes" and rows["Google Drive mounted"] == "yes"
    assert rows["GPU"].startswith("Tesla T4, 14.7 GiB total") and "compute 7.5" in rows["GPU"]
    assert not colab_t4(tmp_path / "nodrive", drive=False).drive_mounted


@pytest.mark.parametrize("mode", ["debug", "quick", "full"])
def test_plan_on_colab_t4(tmp_path: Path, mode: str) -> None:
    m = at_real_paths(colab_t4(tmp_path))
    p = make_plan(m, mode)
    assert p.device == "cuda" and p.amp == "fp16", "a T4 has no bfloat16: float16 with loss scaling"
    assert p.work_dir == "/content/colab_kit", "the store belongs on Colab's local disk"
    assert p.persist_dir == "/content/drive/MyDrive/colab_kit" and not p.work_dir.startswith("/content/drive")
    assert p.workers == 0 and p.convert_workers <= 2  # 2 CPUs
    assert p.pin_memory and 0 < p.batch_edges <= T4.free_bytes // 1000
    assert all(p.reasons[name] for name, _, _ in p.rows())
    radius = make_plan(m, mode, graph_kind="radius")
    assert radius.model == "cgcnn" and radius.amp == "fp16" and radius.workers == 0


def test_plan_on_colab_without_drive_or_gpu(tmp_path: Path) -> None:
    m = at_real_paths(colab_t4(tmp_path, drive=False))
    p = make_plan(m, "debug")
    assert p.persist_dir is None and p.work_dir == "/content/colab_kit"
    cpu = make_plan(dataclasses.replace(m, gpu=None), "debug")  # a CPU runtime
    assert cpu.device == "cpu" and cpu.amp == "off" and cpu.work_dir == "/content/colab_kit"


def test_bang_python_child_sees_colab(tmp_path: Path) -> None:
    """``!python -m colab_kit detect`` in a Colab cell: the child inherits Colab's variables."""
    env = {k: v for k, v in os.environ.items() if k not in COLAB_ENV_VARS} | COLAB_ENV
    out = subprocess.run([sys.executable, "-m", "colab_kit", "detect"], capture_output=True, text=True, env=env,
                         timeout=300, check=True).stdout
    assert re.search(r"Google Colab\s+yes", out), out
    assert re.search(r"work_dir\s+/content/colab_kit\s", out), out
