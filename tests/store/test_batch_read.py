"""Whole-batch reads give the same batches, tensor for tensor, as one graph per item and the kind's collate."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SHIPPED, assert_same_batch

from colab_kit.graphs import get_converter
from colab_kit.loader.batching import BudgetBatchSampler, GraphDataset, assembled, collate_fn, make_loader
from colab_kit.store.batch_read import gather, ranges
from colab_kit.store.build import build_store
from colab_kit.store.format import GraphStore


@pytest.fixture
def store(shipped_store: Callable[..., Path]) -> GraphStore:
    return GraphStore(shipped_store("radius", limit=400, shard_size=37))  # small shards: a batch spans many, as on a 133-shard store


def test_ranges_concatenates_aranges() -> None:
    starts, lengths = np.array([5, 0, 9, 3]), np.array([2, 0, 3, 1])
    assert ranges(starts, lengths).tolist() == [5, 6, 9, 10, 11, 3]
    assert ranges(np.array([], dtype=np.int64), np.array([], dtype=np.int64)).tolist() == []


def test_radius_batches_equal_the_per_graph_collate(store: GraphStore) -> None:
    from colab_kit.graphs.radius import batch_from

    ds = GraphDataset(store)
    collate = collate_fn(store)
    rng = np.random.default_rng(0)
    sizes = [1, 2, 7, 32, 64, len(store)]
    for n in sizes:
        idx = rng.choice(len(store), size=n, replace=False).tolist()
        assert len({store.locate(i)[0] for i in idx}) > 1 or n == 1
        assert_same_batch(collate([ds[i] for i in idx]), batch_from(gather(store, idx)))
    # replacement targets (distillation) reach the batch as they reach one item
    t = np.linspace(-3, 3, len(store))
    idx = rng.choice(len(store), size=16, replace=False).tolist()
    assert_same_batch(collate([GraphDataset(store, t)[i] for i in idx]), batch_from(gather(store, idx, t)))


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_with_batch_reads_yields_the_same_batches(store: GraphStore, workers: int) -> None:
    atoms, edges = store.sizes()
    idx = np.arange(len(store))

    def sampler() -> BudgetBatchSampler:
        return BudgetBatchSampler(idx, atoms, edges, 600, 8000, 32, seed=1)

    loader = make_loader(store, sampler(), workers=workers)
    assert loader.collate_fn is assembled and loader.dataset.batch_reads
    per_graph = torch.utils.data.DataLoader(GraphDataset(store), batch_sampler=sampler(), collate_fn=collate_fn(store))
    n = 0
    for a, b in zip(per_graph, loader, strict=True):
        assert_same_batch(a, b)
        n += a.num_graphs
    assert n == len(store)


def test_real_sets_batch_identically(tmp_path: Path, shared_data: Path) -> None:
    """Real labelled sets from ../shared/data: every graph of each, in random batches."""
    from colab_kit.graphs.radius import batch_from

    names = ("matbench_phonons_1265/matbench_phonons.json.gz", "mp20_subset_1355/mp20_subset_1355_matbench.json.gz")
    found = [shared_data / n for n in names if (shared_data / n).exists()]
    if not found:
        pytest.skip(f"no real matbench-format sets under {shared_data}")
    rng = np.random.default_rng(2)
    for src in found:
        out = tmp_path / src.name
        build_store(src, out, get_converter("radius"), limit=300, shard_size=50, progress=False, on_bad_structure="skip")
        s = GraphStore(out)
        ds, collate = GraphDataset(s), collate_fn(s)
        order = rng.permutation(len(s))
        for b in np.array_split(order, max(1, len(s) // 40)):
            assert_same_batch(collate([ds[int(i)] for i in b]), batch_from(gather(s, b.tolist())))


def test_comformer_batches_equal_the_per_graph_collate(tmp_path: Path) -> None:
    """ComFormer graphs (k nearest, undirected, six lattice loops per atom): shipped structures, and a real set
    from ../shared/data where it is present."""
    from conftest import SHARED_DATA

    from colab_kit.graphs.comformer import batch_from

    phonons = SHARED_DATA / "matbench_phonons_1265/matbench_phonons.json.gz"
    sources = [SHIPPED] + ([phonons] if phonons.exists() else [])
    rng = np.random.default_rng(5)
    for src in sources:
        build_store(src, tmp_path / src.name, get_converter("comformer"), limit=150, shard_size=23, progress=False,
                    on_bad_structure="skip")
        s = GraphStore(tmp_path / src.name)
        ds, collate = GraphDataset(s), collate_fn(s)
        for n in (1, 5, 40, len(s)):
            idx = rng.choice(len(s), size=n, replace=False).tolist()
            assert_same_batch(collate([ds[i] for i in idx]), batch_from(gather(s, idx)))
