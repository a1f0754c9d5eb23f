"""benchmarks/gpu_check.py, the one call a lent GPU gets, run as its CPU dry run: every step runs (or says why it
is skipped) and the JSON + Markdown report holds real figures, so the script is known to work before a GPU runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO


def dry_run(tmp_path: Path, models: str, budget_s: int) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--tiny", "--models", models,
                        "--budget-s", str(budget_s), "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                       timeout=budget_s + 120)
    return p, json.loads((out / "gpu_check.json").read_text())


def test_the_gpu_check_runs_on_a_cpu(tmp_path: Path) -> None:
    p, rec = dry_run(tmp_path, "cgcnn", 900)  # a ceiling only (it takes ~35 s): each step's box is wide on a loaded machine
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    steps = {s["step"]: s for s in rec["steps"]}
    assert list(steps) == ["gpu-tests", "debug-runs", "forced-oom", "steps", "resume", "precision"]
    assert steps["forced-oom"]["status"] == steps["precision"]["status"] == "skipped"
    assert "CUDA" in steps["forced-oom"]["why"] and "CUDA" in steps["precision"]["why"]
    # the gpu tests were found and skip themselves without CUDA
    assert steps["gpu-tests"]["status"] == "ok" and steps["gpu-tests"]["rows"][0].get("skipped", 0) >= 1
    run = steps["debug-runs"]["rows"][0]
    assert run["model"] == "cgcnn" and run["status"] == "finished" and run["rc"] == 0
    assert run["test_mae"] > 0 and run["mean_predictor_test_mae"] > 0 and run["train_graphs_per_s"] > 0
    assert run["budget_atoms"] > 0 and run["gpu_memory_cap"] == 15 * 2**30  # the ceiling is recorded, without effect
    assert run["peak_gpu_memory"] is None  # no CUDA: nothing to measure
    row = steps["steps"]["rows"][0]
    assert row["loader_graphs_per_s"] > 0 and row["step_graphs_per_s"] > 0
    assert row["feed_ahead_graphs_per_s"] > 0 and row["feed_plain_graphs_per_s"] > 0
    resume = steps["resume"]["rows"][0]
    assert resume["killed_at_checkpoint"] and resume["resumed"] and resume["rc_again"] == 0
    assert resume["max_abs_diff"] == 0.0  # on a CPU the resumed run's weights are the uninterrupted run's
    md = (tmp_path / "out" / "gpu_check.md").read_text()
    assert "| debug-runs | ok |" in md and "| resume | ok |" in md and "## steps" in md


@pytest.mark.long
def test_the_gpu_check_runs_every_installed_model_on_a_cpu(tmp_path: Path) -> None:
    p, rec = dry_run(tmp_path, "chgnet,cgcnn,comformer,comformer:equivariant,alignn,m3gnet,tensornet", 900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    runs = {r["model"]: r for s in rec["steps"] if s["step"] == "debug-runs" for r in s["rows"]}
    assert {"chgnet", "cgcnn", "comformer", "comformer:equivariant"} <= set(runs)
    assert all(r["status"] == "finished" for r in runs.values())
