"""ComFormer trains like the other models: `run --model comformer` end to end for both variants, exact CPU
resume identity after SIGKILL, calibrated budgets, the out-of-memory back-off, and it learns.

Small sizes (hidden 32, 2 layers) keep the file within a minute or two on 2 CPUs; the reference size is
the default of the model options (docs/models.md).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_stop_resume_identical, run_cli, small_sets

from colab_kit.plan.machine import detect
from colab_kit.plan.planner import make_plan
from colab_kit.store.format import GraphStore
from colab_kit.training.checkpoint import LATEST
from colab_kit.training.trainer import fit


@pytest.fixture
def comformer_store(shipped_store: Callable[..., Path]) -> Path:
    return shipped_store("comformer", limit=180, shard_size=60)


def _plan(variant: str, **kw: object):
    base = dict(model="comformer", variant=variant, hidden=32, comformer_layers=2, epochs=2, batch_size=16,
                workers=0, calibrate=False, batch_atoms=4000, batch_edges=100_000)
    return make_plan(detect(), "debug", **{**base, **kw})


@pytest.mark.long  # 40-60 s each: ComFormer's training, calibration and OOM back-off stay in the default suite
@pytest.mark.parametrize("variant", ["invariant", "equivariant"])
def test_run_end_to_end_with_calibration(tmp_path: Path, variant: str) -> None:
    res = run_cli("run", "--model", "comformer", "--mode", "debug", "--work-dir", str(tmp_path), *small_sets("comformer"),
                  "--set", f"variant={variant}", "--set", "n_samples=60", "--set", "epochs=2")
    assert res.returncode == 0, res.stderr[-2000:]
    (run_dir,) = [p for p in tmp_path.iterdir() if p.name.startswith("mp_eform_cgcnn_3000-comformer-comformer")]
    assert (variant == "equivariant") == ("variant=equivariant" in run_dir.name)  # a variant is a run of its own
    metrics = json.loads((run_dir / "report" / "metrics.json").read_text())
    assert metrics["model"] == "comformer" and metrics["test_n"] > 0 and np.isfinite(metrics["test_mae"])
    state = torch.load(run_dir / "checkpoints" / LATEST, map_location="cpu", weights_only=True)
    assert "calibrated" in state["budget"]["how"]  # the memory calibration ran on the real model
    assert state["plan"]["model_options"]["variant"] == variant


@pytest.mark.long  # 1 min; the default suite's SIGKILL resume tests (radius, CHGNet, torchrun) use the same trainer
def test_equivariant_stop_and_resume_is_identical(comformer_store: Path, tmp_path: Path) -> None:
    store = GraphStore(comformer_store)
    plan = _plan("equivariant")
    assert_stop_resume_identical(store, plan, tmp_path, steps=3)


def test_oom_backoff_covers_comformer(comformer_store: Path, tmp_path: Path) -> None:
    store = GraphStore(comformer_store)
    atoms, edges = store.sizes()
    # "device memory": any one graph fits (its edges + 6 lattice self-loops per atom), most batches do not
    limit = int((edges + 6 * atoms).max())

    def hook(batch: object) -> None:
        if batch.edge_index.shape[1] > limit:  # type: ignore[attr-defined]
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")

    seen: list[int] = []
    res = fit(store, _plan("invariant", epochs=1), tmp_path, progress=False, step_hook=hook,
              callbacks=[lambda ev: seen.append(ev["graphs"]) if ev["event"] == "step" else None])
    assert sum(seen) == len(np.load(comformer_store / "splits-seed0.npz")["train"])  # each graph once
    assert "shrunk" in res.budget.how


def test_comformer_learns(comformer_store: Path, tmp_path: Path) -> None:
    store = GraphStore(comformer_store)
    # cosine from a high lr: 144 training graphs are too few for the default warm-up to reach a good fit in 10 epochs
    res = fit(store, _plan("invariant", epochs=10, lr=3e-3, batch_size=8, schedule="cosine"), tmp_path, progress=False)
    sp = np.load(store.root / "splits-seed0.npz")
    y = store.targets()
    baseline = float(np.mean(np.abs(y[sp["val"]] - y[sp["train"]].mean())))
    assert res.best_val_mae < 0.8 * baseline, (res.history, baseline)
