"""loader: budgeted batches, reproducible order, mid-epoch resume, lazy workers, flat memory."""

from __future__ import annotations

import gc
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from colab_kit.loader.batching import BudgetBatchSampler, GraphDataset, make_loader, pack
from colab_kit.loader.splits import load_or_make_splits
from colab_kit.store.format import GraphStore


@pytest.fixture
def radius_store(shipped_store: Callable[..., Path]) -> GraphStore:
    return GraphStore(shipped_store("radius", shard_size=500))


@pytest.fixture
def chgnet_store(shipped_store: Callable[..., Path]) -> GraphStore:
    return GraphStore(shipped_store("chgnet", limit=150, shard_size=50))


def test_batches_respect_budget_and_cover_each_index_once(radius_store: GraphStore, caplog: pytest.LogCaptureFixture) -> None:
    atoms, edges = radius_store.sizes()
    idx = np.arange(len(radius_store))
    max_atoms, max_edges = 120, 1400  # the largest cells (up to 184 atoms) exceed it
    s = BudgetBatchSampler(idx, atoms, edges, max_atoms, max_edges, max_graphs=64, seed=1)
    batches = list(s)
    seen = np.concatenate(batches)
    assert np.array_equal(np.sort(seen), idx)  # every index exactly once
    oversize = 0
    for b in batches:
        if len(b) == 1 and (atoms[b[0]] > max_atoms or edges[b[0]] > max_edges):
            oversize += 1
            continue
        assert atoms[b].sum() <= max_atoms and edges[b].sum() <= max_edges and len(b) <= 64
    assert oversize == int(((atoms > max_atoms) | (edges > max_edges)).sum()) > 0
    # one line for all of them, naming how many and the largest (a large set has thousands)
    lines = [r.getMessage() for r in caplog.records if "exceed the batch budget" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith(f"{oversize} graph(s) exceed the batch budget (120 atoms, 1400 edges)")
    list(s)  # the next pass over the same graphs says nothing new
    assert len([r for r in caplog.records if "exceed the batch budget" in r.getMessage()]) == 1
    # a 184-atom cell never shares a batch sized for small cells
    big = int(np.argmax(atoms))
    assert [b for b in batches if big in b][0] == [big] or atoms[[b for b in batches if big in b][0]].sum() <= max_atoms


def test_same_seed_same_batches_and_epochs_differ(radius_store: GraphStore) -> None:
    atoms, edges = radius_store.sizes()
    idx = np.arange(len(radius_store))
    a = list(BudgetBatchSampler(idx, atoms, edges, 2000, 20000, 32, seed=3))
    b = list(BudgetBatchSampler(idx, atoms, edges, 2000, 20000, 32, seed=3))
    assert a == b
    s = BudgetBatchSampler(idx, atoms, edges, 2000, 20000, 32, seed=3)
    s.next_epoch()
    assert list(s) != a


def test_state_dict_resumes_at_the_next_batch(radius_store: GraphStore) -> None:
    atoms, edges = radius_store.sizes()
    idx = np.arange(len(radius_store))
    s = BudgetBatchSampler(idx, atoms, edges, 2000, 20000, 32, seed=5)
    s.next_epoch()
    full = list(s)
    for b in full[:7]:
        s.advance(len(b))
    state = s.state_dict()
    fresh = BudgetBatchSampler(idx, atoms, edges, 1, 1, 1, seed=0)
    fresh.load_state_dict(state)
    assert list(fresh) == full[7:]
    # a smaller budget mid-epoch re-packs only what is left: nothing skipped, nothing repeated
    fresh.set_budget(500, 5000)
    rest = list(fresh)
    assert np.array_equal(np.sort(np.concatenate(full[:7] + rest)), idx)


def test_pack_oversize_graph_alone() -> None:
    atoms, edges = np.array([5, 50, 5, 5]), np.array([10, 100, 10, 10])
    assert pack(np.arange(4), atoms, edges, 20, 40, 10) == [[0], [1], [2, 3]]


def test_workers_0_and_2_give_identical_batches(radius_store: GraphStore) -> None:
    atoms, edges = radius_store.sizes()
    idx = np.arange(600)
    out = []
    for workers in (0, 2):
        s = BudgetBatchSampler(idx, atoms, edges, 1500, 15000, 32, seed=7)
        loader = make_loader(radius_store, s, workers=workers, prefetch_factor=2)
        out.append([(list(b.graph_id), b.edge_index.shape[1], float(b.pos.sum())) for b in loader])
    assert out[0] == out[1] and len(out[0]) > 5


def test_chgnet_collate_feeds_chgnet(chgnet_store: GraphStore) -> None:
    from chgnet.model import CHGNet

    atoms, edges = chgnet_store.sizes()
    s = BudgetBatchSampler(np.arange(20), atoms, edges, 10**6, 10**6, 8, shuffle=False)
    graphs, y = next(iter(make_loader(chgnet_store, s)))
    assert len(graphs) == 8 and y.shape == (8,)
    model = CHGNet.load(use_device="cpu", verbose=False)
    e = model(graphs, task="e")["e"]
    assert e.shape == (8,) and torch.isfinite(e).all()


def test_dataset_pickles_small_and_reopens_lazily(radius_store: GraphStore) -> None:
    ds = GraphDataset(radius_store)
    _ = ds[0]  # maps a shard in this process
    blob = pickle.dumps(ds)
    assert len(blob) < 500, len(blob)  # a path, no graph arrays
    clone = pickle.loads(blob)
    assert clone._store is None
    assert clone[5][0].graph_id == ds[5][0].graph_id


def test_splits_are_fixed_and_saved(radius_store: GraphStore) -> None:
    a = load_or_make_splits(radius_store, seed=11)
    assert (radius_store.root / "splits-seed11.npz").exists()
    b = load_or_make_splits(radius_store, seed=11)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    together = np.concatenate(list(a.values()))
    assert len(np.unique(together)) == len(radius_store) == len(together)


def test_one_epoch_keeps_rss_flat(radius_store: GraphStore) -> None:
    atoms, edges = radius_store.sizes()
    s = BudgetBatchSampler(np.arange(len(radius_store)), atoms, edges, 3000, 30000, 64, seed=0)
    loader = make_loader(GraphStore(radius_store.root), s)
    proc = psutil.Process()
    gc.collect()
    rss0 = proc.memory_info().rss
    n = 0
    peak = rss0
    for batch in loader:
        n += batch.num_graphs
        peak = max(peak, proc.memory_info().rss)
    assert n == len(radius_store) > 2500
    store_bytes = sum(p.stat().st_size for p in radius_store.root.glob("shard-*"))
    growth = peak - rss0
    # mapped shard pages may count as resident; everything else must stay small
    assert growth < store_bytes + 150 * 2**20, (growth / 2**20, store_bytes / 2**20)


def test_cpu_step_measurement_is_what_the_step_allocates_whatever_came_before() -> None:
    """A CPU step is measured by the tensors it creates, not by resident memory: the same step measures the same
    after the process once used far more (a notebook kernel) and when the allocator reuses freed pages."""
    from colab_kit.training.budget import measure_step

    def step(_batch: list[int]) -> None:  # 120 MiB of activations kept for the backward, a 40 MiB temporary
        x = torch.ones(120 * 2**20 // 4, requires_grad=True)
        tmp = x * 2
        del tmp
        (x * 3).sum().backward()

    first = measure_step(step, [0], torch.device("cpu"))
    big = torch.ones(400 * 2**20 // 4)  # raise the peak RSS by 400 MiB, then free it: pages the next step reuses
    del big
    gc.collect()
    again = measure_step(step, [0], torch.device("cpu"))
    assert first == again
    assert 240 * 2**20 < first < 400 * 2**20, first / 2**20  # x, 2x/3x and the gradient; not the process's RSS
