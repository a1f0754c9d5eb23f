"""frozen_head: CHGNet's crystal features computed by the prediction pass (equal to CHGNet's own on its own graphs),
cached, and a small head trained on them that beats the mean predictor, end to end through `head`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SHIPPED, matbench_structures, run_cli

from colab_kit.loader.splits import load_or_make_splits
from colab_kit.plan.machine import detect
from colab_kit.plan.planner import make_plan
from colab_kit.run.frozen_head import crystal_features, features_key, train_head
from colab_kit.store.format import GraphStore


@pytest.fixture
def store(shipped_store: Callable[..., Path]) -> GraphStore:
    return GraphStore(shipped_store("chgnet", limit=120, shard_size=40))


def test_features_are_chgnets_own_and_cached(store: GraphStore) -> None:
    from chgnet.graph import CrystalGraphConverter
    from chgnet.model import CHGNet

    plan = make_plan(detect(), "debug", model="chgnet", device="cpu")
    x = crystal_features(store, plan, progress=False)
    assert x.shape == (len(store), 64) and x.dtype == np.float32
    assert (store.root / f"outputs-{features_key('0.3.0')[:16]}" / "manifest.json").exists()
    ref_model = CHGNet.load(model_name="0.3.0", use_device="cpu", verbose=False).eval()
    conv = CrystalGraphConverter(atom_graph_cutoff=6, bond_graph_cutoff=3)
    by_id = {i: s for i, s, _ in matbench_structures(SHIPPED)}
    ids = store.ids()[:6]
    with torch.no_grad():
        ref = ref_model([conv(by_id[i], graph_id=i) for i in ids], task="e", return_crystal_feas=True)["crystal_fea"]
    assert np.allclose(x[:6], ref.numpy(), atol=1e-5)
    again = crystal_features(store, plan, progress=False)  # read back from the cache
    assert np.array_equal(x, again)


def test_head_beats_the_mean_and_is_reproducible(store: GraphStore) -> None:
    plan = make_plan(detect(), "debug", model="chgnet", device="cpu")
    x, y = crystal_features(store, plan, progress=False), store.targets()
    splits = load_or_make_splits(store, 0)
    head, info = train_head(x, y, splits, epochs=200, patience=30)
    head2, _ = train_head(x, y, splits, epochs=200, patience=30)
    with torch.no_grad():
        p = head(torch.as_tensor(x[splits["test"]])).numpy()
        p2 = head2(torch.as_tensor(x[splits["test"]])).numpy()
    mae = np.abs(p - y[splits["test"]]).mean()
    baseline = np.abs(y[splits["train"]].mean() - y[splits["test"]]).mean()
    assert mae < 0.6 * baseline and np.array_equal(p, p2)
    assert 1 <= info["best_epoch"] <= info["epochs"] <= 200 and torch.get_num_threads() >= 1


def test_head_command_end_to_end(tmp_path: Path) -> None:
    res = run_cli("head", "--mode", "debug", "--set", "n_samples=80", "--work-dir", str(tmp_path))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "test (n=8): MAE" in res.stdout and "eV/atom" in res.stdout and "(once, cached)" in res.stdout
    root = tmp_path / "mp_eform_cgcnn_3000-chgnet-head-debug"
    m = json.loads((root / "metrics.json").read_text())
    assert m["test_mae"] < m["mean_predictor_test_mae"] and (root / "head.pt").is_file()
    torch.load(root / "head.pt", weights_only=True)
