"""distill: a teacher's outputs computed once over the store and cached beside it, blended into the train targets
(the gradient of alpha * label MSE + (1 - alpha) * teacher MSE); same-graph and cross-graph teachers, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SHIPPED, run_cli

import colab_kit
from colab_kit.loader.batching import GraphDataset
from colab_kit.store.format import GraphStore
from colab_kit.use.distill import blended_targets, load_column

SMALL = ["--mode", "debug", "--model", "cgcnn", "--set", "hidden=16", "--set", "n_samples=150", "--set", "epochs=2"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("teacher")
    res = run_cli("run", "--mode", "debug", "--model", "cgcnn", "--set", "n_samples=150", "--set", "epochs=2",
                  "--work-dir", str(work))
    assert res.returncode == 0, res.stderr[-3000:]
    return work / "mp_eform_cgcnn_3000-radius-cgcnn-debug"


def test_blended_target_has_the_gradient_of_the_weighted_losses() -> None:
    g = torch.Generator().manual_seed(0)
    y, t = torch.randn(64, generator=g, dtype=torch.float64), torch.randn(64, generator=g, dtype=torch.float64)
    for alpha in (0.0, 0.3, 0.5, 1.0):
        p1 = torch.randn(64, generator=torch.Generator().manual_seed(1), dtype=torch.float64, requires_grad=True)
        p2 = p1.detach().clone().requires_grad_(True)
        (alpha * torch.nn.functional.mse_loss(p1, y) + (1 - alpha) * torch.nn.functional.mse_loss(p1, t)).backward()
        blend = torch.from_numpy(blended_targets(y.numpy(), t.numpy(), alpha))
        torch.nn.functional.mse_loss(p2, blend).backward()
        assert torch.allclose(p1.grad, p2.grad, atol=1e-12, rtol=0)
    assert blended_targets(np.array([1.0, 2.0]), np.array([np.nan, 4.0]), 0.5).tolist() == [1.0, 3.0]


def test_same_graph_teacher_cached_blended_and_alpha_one_is_plain_training(teacher: Path, tmp_path: Path) -> None:
    res = run_cli("run", *SMALL, "--set", f"teacher={teacher}", "--set", "distill_alpha=0", "--work-dir", str(tmp_path))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "== teacher" in res.stderr
    run_dir = next(tmp_path.glob("*-teacher*-a0-debug"))
    store = GraphStore(run_dir / "store")
    column = load_column(store, str(teacher))
    assert column is not None and column.shape == (len(store),) and np.isfinite(column).all()
    # the cached column is the teacher's own prediction of these structures
    p = colab_kit.load(teacher, device="cpu").predict(_first_structures(store, 10))
    assert np.allclose(p, column[:10], atol=1e-5)
    # alpha 0: the train loader's targets are the teacher's outputs; validation keeps the labels
    from colab_kit.loader.batching import make_loaders
    from colab_kit.plan.planner import Plan

    plan = Plan.from_dict(json.loads((run_dir / "plan.json").read_text()))
    loaders = make_loaders(store, plan, train_targets=blended_targets(store.targets(), column, 0.0))
    i = int(loaders["train"].batch_sampler.indices[0])
    assert loaders["train"].dataset[i][1] == pytest.approx(float(column[i]), abs=1e-6)
    j = int(loaders["val"].batch_sampler.indices[0])
    assert loaders["val"].dataset[j][1] == pytest.approx(store.target(j))
    # a rerun computes nothing again
    again = run_cli("run", *SMALL, "--set", f"teacher={teacher}", "--set", "distill_alpha=0", "--work-dir", str(tmp_path))
    assert again.returncode == 0 and "computing its outputs" not in again.stderr
    # alpha 1 trains on the labels alone: the weights are those of a run without a teacher
    one = run_cli("run", *SMALL, "--set", f"teacher={teacher}", "--set", "distill_alpha=1", "--work-dir", str(tmp_path))
    plain = run_cli("run", *SMALL, "--work-dir", str(tmp_path))
    assert one.returncode == 0 and plain.returncode == 0, (one.stderr[-2000:], plain.stderr[-2000:])
    a = torch.load(next(tmp_path.glob("*-a1-debug")) / "best.pt", weights_only=True)
    b = torch.load(tmp_path / "mp_eform_cgcnn_3000-radius-cgcnn-hidden=16-debug" / "best.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _first_structures(store: GraphStore, n: int) -> list:
    """The structures of the store's first ``n`` graphs, from the shipped file."""
    from helpers import matbench_structures

    by_id = {i: s for i, s, _ in matbench_structures(SHIPPED)}
    return [by_id[i] for i in store.ids()[:n]]


@pytest.mark.long  # 2 min; the same-graph teacher test stays in the default suite
def test_teacher_with_other_graphs_is_matched_by_id(tmp_path: Path) -> None:
    """A CHGNet teacher for a CGCNN student: its own CHGNet store of the same source, outputs matched by id."""
    res = run_cli("run", "--mode", "debug", "--set", "n_samples=60", "--set", "epochs=1", "--work-dir", str(tmp_path / "t"))
    assert res.returncode == 0, res.stderr[-3000:]
    chgnet_run = tmp_path / "t" / "mp_eform_cgcnn_3000-chgnet-chgnet-debug"
    res = run_cli("run", *SMALL, "--set", "n_samples=60", "--set", f"teacher={chgnet_run}", "--work-dir", str(tmp_path / "s"))
    assert res.returncode == 0, res.stderr[-3000:]
    store = GraphStore(next((tmp_path / "s").glob("*-teacher*")) / "store")
    column = load_column(store, str(chgnet_run))
    assert column is not None and np.isfinite(column).all()
    p = colab_kit.load(chgnet_run, device="cpu").predict(_first_structures(store, 10))
    assert np.allclose(p, column[:10], atol=1e-5)
    # `train --store` on a store without the column cannot convert the source for the teacher: one line, says `run`
    fresh = tmp_path / "fresh"
    assert run_cli("convert", str(SHIPPED), "--graph-kind", "radius", "--limit", "30", "--out", str(fresh)).returncode == 0
    bad = run_cli("train", "--store", str(fresh), "--model", "cgcnn", "--set", f"teacher={chgnet_run}",
                  "--out", str(tmp_path / "x"))
    assert bad.returncode == 1 and "use `python -m colab_kit run --data SOURCE" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_dataset_targets_override_pickles_with_the_dataset(teacher: Path) -> None:
    import pickle

    store = GraphStore(teacher / "store")
    t = np.arange(len(store), dtype=np.float64)
    ds = pickle.loads(pickle.dumps(GraphDataset(store, t)))  # what a DataLoader worker receives
    assert ds[5][1] == 5.0 and GraphDataset(store)[5][1] == pytest.approx(store.target(5))
