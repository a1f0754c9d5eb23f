"""detect: cgroup parsing on real files, Colab/Drive detection, injectable reads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from colab_kit.plan.machine import GIB, Gpu, detect, read_cgroup_limit


def _write(root: Path, rel: str, text: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text + "\n")


def test_cgroup_v2_limit_and_usage(tmp_path: Path) -> None:
    _write(tmp_path, "memory.max", str(3 * GIB))
    _write(tmp_path, "memory.current", str(1 * GIB))
    assert read_cgroup_limit(tmp_path) == (3 * GIB, 1 * GIB)


def test_cgroup_v2_max_means_no_limit(tmp_path: Path) -> None:
    _write(tmp_path, "memory.max", "max")
    _write(tmp_path, "memory.current", "12345")
    assert read_cgroup_limit(tmp_path) == (None, 12345)


def test_cgroup_v1_limit(tmp_path: Path) -> None:
    _write(tmp_path, "memory/memory.limit_in_bytes", str(2 * GIB))
    _write(tmp_path, "memory/memory.usage_in_bytes", str(GIB // 2))
    assert read_cgroup_limit(tmp_path) == (2 * GIB, GIB // 2)


def test_cgroup_v1_unlimited_sentinel(tmp_path: Path) -> None:
    _write(tmp_path, "memory/memory.limit_in_bytes", "9223372036854771712")
    assert read_cgroup_limit(tmp_path)[0] is None


def test_cgroup_missing_and_garbage(tmp_path: Path) -> None:
    assert read_cgroup_limit(tmp_path / "nope") == (None, None)
    _write(tmp_path, "memory.max", "not-a-number")
    assert read_cgroup_limit(tmp_path)[0] is None


def test_detect_follows_cgroup_limit(tmp_path: Path) -> None:
    cg = tmp_path / "cg"
    _write(cg, "memory.max", str(3 * GIB))
    _write(cg, "memory.current", str(GIB))
    m = detect(
        environ={},
        memory=lambda: (64 * GIB, 60 * GIB),
        cgroup_root=cg,
        cpus=lambda: 8,
        gpu=lambda: None,
        disk_free=lambda p: 100 * GIB,
        home_cache=str(tmp_path / "cache"),
        drive_dir=str(tmp_path / "drive" / "MyDrive"),
    )
    assert m.ram_total == 3 * GIB
    assert m.ram_available == 2 * GIB  # limit - usage, not the host's 60 GiB
    assert m.cgroup_limit == 3 * GIB
    assert m.cpus == 8 and not m.is_colab and not m.drive_mounted


def test_detect_colab_from_env_and_drive_dir(tmp_path: Path) -> None:
    drive = tmp_path / "content" / "drive" / "MyDrive"
    drive.mkdir(parents=True)
    m = detect(
        environ={"COLAB_RELEASE_TAG": "release-colab_20261101-060000"},
        memory=lambda: (int(12.7 * GIB), 11 * GIB),
        cgroup_root=tmp_path / "no-cgroup",
        cpus=lambda: 2,
        gpu=lambda: Gpu("Tesla T4", 15 * GIB, 14 * GIB, (7, 5)),
        disk_free=lambda p: 80 * GIB,
        home_cache=str(tmp_path / "cache"),
        content_dir=str(tmp_path / "content"),
        drive_dir=str(drive),
    )
    assert m.is_colab and m.drive_mounted
    assert set(m.disk_free) == {str(tmp_path / "content"), str(tmp_path / "cache"), str(drive)}
    assert m.gpu is not None and not m.gpu.supports_bf16


def test_detect_cli_prints_real_values() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "colab_kit", "detect"], capture_output=True, text=True, check=True
    ).stdout
    assert "usable CPUs" in out and "Plan for --mode debug" in out and "batch_edges" in out
    js = subprocess.run(
        [sys.executable, "-m", "colab_kit", "detect", "--json"], capture_output=True, text=True, check=True
    ).stdout
    import json

    facts = json.loads(js)
    assert facts["cpus"] >= 1 and facts["ram_total"] > 0
    # the plan for a model and data of the user's (nothing is read)
    out = subprocess.run([sys.executable, "-m", "colab_kit", "detect", "--model", "cgcnn", "--data", "my_cifs/",
                          "--mode", "quick"], capture_output=True, text=True, check=True).stdout
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "my_cifs/" in rows["data"] and "cgcnn" in rows["model"] and "radius" in rows["graph_kind"]
    assert "CHGNet" not in rows["on_isolated_atoms"]  # no other model's words in a CGCNN plan
