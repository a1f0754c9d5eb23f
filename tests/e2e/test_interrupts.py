"""Interruptions of a real ``python -m colab_kit run``: SIGKILL at 20 random points across conversion and
training (a runtime disconnect) and Ctrl-C (SIGINT) before the first checkpoint. The final store bytes,
weights and metrics equal an uninterrupted run's, and nothing is left half-written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import kill_when, run_cli, shard_count

# radius graphs + CGCNN: the fastest real pipeline; budgets fixed so both runs pack the same batches
ARGS = ["run", "--mode", "debug", "--graph-kind", "radius", "--set", "n_samples=600", "--set", "shard_size=10",
        "--set", "epochs=3", "--set", "batch_size=8", "--set", "batch_atoms=100000", "--set", "batch_edges=1000000",
        "--set", "convert_workers=1"]
RUN = "mp_eform_cgcnn_3000-radius-cgcnn-debug"


def _result(work: Path) -> dict:
    run = work / RUN
    shards = {p.name: p.read_bytes() for p in sorted((run / "store").glob("shard-*.safetensors"))}
    model = torch.load(run / "checkpoints" / "latest.pt", map_location="cpu", weights_only=True)["model"]
    best = torch.load(run / "best.pt", map_location="cpu", weights_only=True)
    metrics = [{k: v for k, v in json.loads(ln).items() if k != "seconds"}
               for ln in (run / "metrics.jsonl").read_text().splitlines()]
    return {"shards": shards, "model": model, "best": best, "metrics": metrics}


def _assert_same(a: dict, b: dict) -> None:
    assert a["shards"].keys() == b["shards"].keys() and all(a["shards"][k] == b["shards"][k] for k in a["shards"])
    for key in ("model", "best"):
        assert a[key].keys() == b[key].keys()
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), (key, k)
    assert a["metrics"] == b["metrics"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("ref")
    r = run_cli(*ARGS, "--work-dir", str(work), "--set", "checkpoint_minutes=60")
    assert r.returncode == 0, r.stderr
    return _result(work)


def _checkpoint_mtime(run: Path) -> float:
    try:
        return (run / "checkpoints" / "latest.pt").stat().st_mtime_ns
    except OSError:
        return 0


def _complete(store: Path) -> bool:
    manifest = store / "manifest.json"
    try:
        return bool(json.loads(manifest.read_text()).get("complete", False))
    except (OSError, ValueError):
        return False


@pytest.mark.long  # 2 min; the default suite keeps a SIGKILL resume per stage (convert, train, predict)
def test_sigkill_at_20_random_points_ends_identical(reference: dict, tmp_path: Path) -> None:
    rng = np.random.default_rng(20)
    work, run = tmp_path / "work", tmp_path / "work" / RUN
    args = [*ARGS, "--work-dir", str(work), "--set", "checkpoint_minutes=0.0005"]
    phases, store = [], run / "store"
    for _ in range(20):
        if not _complete(store) and phases.count("convert") < 8:  # mid-conversion: a shard more, plus a random instant
            target, delay = shard_count(store) + 1, rng.uniform(0, 0.05)

            def cond(target: int = target) -> bool:
                return shard_count(store) >= target
        else:  # during training: after one to three new checkpoints, plus a random part of the next steps
            first, n_new, delay = _checkpoint_mtime(run), int(rng.integers(1, 4)), rng.uniform(0, 0.1)
            seen: set[float] = set()

            def cond(first: float = first, n_new: int = n_new, seen: set = seen) -> bool:
                m = _checkpoint_mtime(run)
                if m and m != first:
                    seen.add(m)
                return len(seen) >= n_new
        at = [0.0]

        def delayed(cond=cond, delay=delay, at=at) -> bool:
            if not at[0] and cond():
                at[0] = time.monotonic()
            return bool(at[0]) and time.monotonic() - at[0] >= delay
        killed = kill_when(args, delayed, timeout=240)
        phases.append(("train" if _complete(store) else "convert") if killed else "finished")
    assert phases.count("convert") >= 5 and phases.count("train") >= 8 and "finished" not in phases, phases
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr
    _assert_same(reference, _result(work))
    litter = [p for p in run.rglob(".*") if p.name.endswith((".tmp", ".partial"))]
    assert litter == [], litter
    timing = json.loads((run / "timing.json").read_text())
    assert timing["calls"] == 21 and timing["train_seconds"] > 0  # every call was counted, and the compute time with them
    report = json.loads((run / "report" / "metrics.json").read_text())
    assert report["test_mae"] < report["mean_predictor_test_mae"]


def test_ctrl_c_before_the_first_checkpoint_saves_and_resumes(reference: dict, tmp_path: Path) -> None:
    """Ctrl-C a few steps into the first epoch, long before the first checkpoint is due: the steps are kept."""
    import re
    import threading

    work, run = tmp_path / "work", tmp_path / "work" / RUN
    args = [sys.executable, "-m", "colab_kit", *ARGS, "--work-dir", str(work), "--set", "checkpoint_minutes=60"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.extend(iter(lambda: proc.stderr.read(64), "")), daemon=True)
    reader.start()
    t0 = time.monotonic()
    while time.monotonic() - t0 < 240 and proc.poll() is None:  # the epoch-1 bar has counted some graphs
        done = [int(n) for n in re.findall(r"epoch 1/3:.*?\| *(\d+)/\d+", "".join(err))]
        if done and max(done) >= 40:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
    proc.wait(timeout=240)
    reader.join(timeout=10)
    text = "".join(err)
    assert proc.returncode == 130, text[-3000:]
    state = torch.load(run / "checkpoints" / "latest.pt", map_location="cpu", weights_only=True)
    assert state["epoch"] == 0 and state["sampler"]["offset"] >= 40 and state["step"] >= 5, state["sampler"]
    lines = text.splitlines()  # the messages stand on their own lines, not glued to a progress bar
    assert any(ln.startswith("stopped; work so far is saved") and "run the same command again" in ln for ln in lines), text
    assert any(ln.startswith("INFO SIGINT received") for ln in lines), text
    done = run_cli(*args[3:])
    assert done.returncode == 0, done.stderr
    assert "resuming training at epoch 1" in done.stderr
    _assert_same(reference, _result(work))
