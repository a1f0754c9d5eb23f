"""train + checkpoint: SIGKILL resume gives identical weights, damaged checkpoints, OOM back-off,
and models that learn (better than predicting the mean)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SHIPPED, run_cli

from colab_kit.graphs import get_converter
from colab_kit.plan.machine import detect
from colab_kit.plan.planner import make_plan
from colab_kit.store.build import build_store
from colab_kit.store.format import GraphStore
from colab_kit.training.checkpoint import LATEST, PREVIOUS, load_checkpoint
from colab_kit.training.trainer import fit


@pytest.fixture
def radius_store(shipped_store: Callable[..., Path]) -> Path:
    return shipped_store("radius", limit=600, shard_size=200)


def _plan(**kw):
    base = dict(graph_kind="radius", epochs=2, batch_size=16, batch_atoms=4000, batch_edges=60000, workers=0)
    return make_plan(detect(), "debug", **{**base, **kw})


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_truncated_checkpoint_falls_back_to_previous(radius_store: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = GraphStore(radius_store)
    fit(store, _plan(epochs=2), tmp_path, progress=False)
    ck = tmp_path / "checkpoints"
    prev_state = torch.load(ck / PREVIOUS, weights_only=True)
    data = (ck / LATEST).read_bytes()
    (ck / LATEST).write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING):
        state = load_checkpoint(ck)
    assert state is not None and state["step"] == prev_state["step"]
    assert f"checkpoint {ck / LATEST} is damaged" in caplog.text
    # training picks up from the previous checkpoint and finishes
    res = fit(store, _plan(epochs=2), tmp_path, progress=False)
    assert res.resumed_from is not None and res.epochs_done == 2
    (ck / PREVIOUS).write_bytes(b"garbage")
    (ck / LATEST).write_bytes(b"garbage")
    from colab_kit.training.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="every checkpoint in .* is damaged; delete that folder"):
        load_checkpoint(ck)


def test_oom_backoff_shrinks_budget_and_skips_nothing(radius_store: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = GraphStore(radius_store)
    plan = _plan(epochs=1, batch_size=64)
    limit = 6000  # "device memory": a batch with more edges than this runs out of memory

    def hook(batch) -> None:
        if batch.edge_index.shape[1] > limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated above 6000 edges)")

    seen: list[int] = []
    with caplog.at_level(logging.WARNING):
        res = fit(store, plan, tmp_path, progress=False, step_hook=hook,
                  callbacks=[lambda ev: seen.append(ev["graphs"]) if ev["event"] == "step" else None])
    n_train = len(np.load(radius_store / "splits-seed0.npz")["train"])
    assert sum(seen) == n_train  # every training graph was trained on exactly once
    assert [h["train_graphs"] for h in res.history] == [n_train]  # and the epoch's record says so (metrics.jsonl)
    assert res.budget.max_edges < 60000 and "shrunk" in res.budget.how
    assert "out of memory on a batch" in caplog.text
    state = load_checkpoint(tmp_path / "checkpoints")
    assert state["budget"]["max_edges"] == res.budget.max_edges  # a resume does not re-probe

    def always(batch) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory")

    from colab_kit.training.trainer import TrainingError

    with pytest.raises(TrainingError, match=r"out of memory \d+ times in a row, the last on a batch of 1 graph.*; free RAM .*smaller cutoff"):
        fit(store, plan, tmp_path / "never", progress=False, step_hook=always)


def _baseline(store: GraphStore, split: str) -> float:
    sp = np.load(store.root / "splits-seed0.npz")
    y = store.targets()
    return float(np.mean(np.abs(y[sp[split]] - y[sp["train"]].mean())))


@pytest.mark.long  # the default suite: every real set's radius run beats the mean predictor (tests/e2e/test_real_data.py)
def test_cgcnn_learns(radius_store: Path, tmp_path: Path) -> None:
    store = GraphStore(radius_store)
    res = fit(store, _plan(epochs=4, batch_size=16, lr=3e-3), tmp_path, progress=False)
    assert res.best_val_mae < 0.8 * _baseline(store, "val"), (res.history, _baseline(store, "val"))


@pytest.mark.long  # the default suite: the README's debug run and a real set's CHGNet run beat the mean predictor
def test_chgnet_fine_tuning_learns(tmp_path: Path) -> None:
    out = tmp_path / "store"
    build_store(SHIPPED, out, get_converter("chgnet"), workers=2, shard_size=100, limit=300, progress=False)
    store = GraphStore(out)
    plan = make_plan(detect(), "debug", epochs=1, batch_size=16, batch_atoms=4000, batch_edges=200000, workers=0)
    res = fit(store, plan, tmp_path / "run", progress=False)
    assert res.best_val_mae < 0.8 * _baseline(store, "val"), (res.history, _baseline(store, "val"))
    assert os.path.exists(tmp_path / "run" / "best.pt")


def test_schedules_per_epoch() -> None:
    from colab_kit.training.schedule import lr_factor

    cos = _plan(epochs=10, lr=1e-3)
    assert cos.schedule == "cosine"
    f = [lr_factor(e, cos) for e in range(10)]
    assert f[0] == 1.0 and all(a > b for a, b in zip(f, f[1:])) and f[-1] > 0.01
    torch_cos = torch.optim.lr_scheduler.CosineAnnealingLR(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0),
                                                           T_max=10, eta_min=0.01)
    expected = []
    for _ in range(10):
        expected.append(torch_cos.get_last_lr()[0])
        torch_cos.step()
    assert np.allclose(f, expected)  # the same curve as torch's CosineAnnealingLR
    warm = _plan(epochs=10, lr=1e-3, schedule="warmup_cosine")
    g = [lr_factor(e, warm) for e in range(10)]
    assert g[0] == 1 / 25 and g[:4] == sorted(g[:4]) and g[3] == 1.0 and all(a > b for a, b in zip(g[3:], g[4:]))
    assert make_plan(detect(), "debug", model="comformer").schedule == "warmup_cosine"


def test_a_checkpoint_from_before_schedules_resumes(radius_store: Path, tmp_path: Path) -> None:
    """Checkpoints written before schedules hold a CosineAnnealingLR state (no lr_lambdas): they still resume."""
    from colab_kit.training.checkpoint import save_checkpoint

    store, plan = GraphStore(radius_store), _plan(epochs=2)
    steps = {"n": 0}
    assert fit(store, plan, tmp_path, progress=False,
               should_stop=lambda: steps.__setitem__("n", steps["n"] + 1) or steps["n"] > 3).status == "stopped"
    state = load_checkpoint(tmp_path / "checkpoints")
    old = torch.optim.lr_scheduler.CosineAnnealingLR(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=plan.lr),
                                                     T_max=plan.epochs, eta_min=plan.lr_min).state_dict()
    state["scheduler"] = old
    save_checkpoint(tmp_path / "checkpoints", state)
    res = fit(store, plan, tmp_path, progress=False)
    assert res.status == "finished" and len(res.history) == 2


def test_cpu_calibration_measures_the_step_never_warns_with_room_and_estimates_the_time(
        radius_store: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """CGCNN on 8 GiB: calibration from the tensors a step creates gives the same budget every time (RSS growth
    gave "no room for a batch" in 6 of 12 runs), warns about nothing, and says how long training will take."""
    from colab_kit.models import build_model
    from colab_kit.training.budget import initial_budget

    store = GraphStore(radius_store)
    plan = make_plan(detect(), "debug", graph_kind="radius", train_memory=8 * 2**30, workers=0)
    splits = {"train": np.arange(len(store))}
    budgets = set()
    with caplog.at_level(logging.INFO, logger="colab_kit"):
        for _ in range(4):
            model = build_model("cgcnn", graph_params=store.params)
            budget, step_time = initial_budget(model, store, splits, plan, torch.device("cpu"), None)
            budgets.add((budget.max_atoms, budget.max_edges))
            assert budget.how.startswith("calibrated from 5 real steps (peak tensor bytes)"), budget.how
            assert step_time is not None and step_time.per_step + step_time.per_edge > 0
    edges = [b[1] for b in budgets]
    assert max(edges) <= 1.01 * min(edges) and not [r for r in caplog.records if r.levelno >= logging.WARNING]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="colab_kit"):
        fit(store, make_plan(detect(), "debug", graph_kind="radius", epochs=2, workers=0), tmp_path, progress=False)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("estimate: 2 epochs of")]
    assert said and "on this machine (from the calibration steps)" in said[0], said


def test_a_diverging_run_stops_in_one_line_and_keeps_its_last_good_checkpoint(radius_store: Path,
                                                                              tmp_path: Path) -> None:
    """--set lr=1e6: the loss turns infinite; training stops with one line (no TypeError at the end), the best
    weights and checkpoints on disk are from before it, and no NaN model is ever written as best."""
    args = ["train", "--store", str(radius_store), "--graph-kind", "radius", "--set", "epochs=4", "--set", "lr=1e6",
            "--set", "batch_size=16", "--set", "batch_atoms=4000", "--set", "batch_edges=60000",
            "--out", str(tmp_path)]
    res = run_cli(*args)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    line = next(ln for ln in res.stderr.splitlines() if ln.startswith("error:"))
    assert "training diverged: the loss is" in line and "--fresh --set lr=100000" in line
    if (tmp_path / "best.pt").exists():
        best = torch.load(tmp_path / "best.pt", weights_only=True)
        assert all(torch.isfinite(v).all() for v in best.values() if v.is_floating_point())
    state = load_checkpoint(tmp_path / "checkpoints")
    if state is not None:
        assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
