"""Radius graphs built per batch on the device from a structure-only store equal the stored graphs, tensor for
tensor, on real structures (both neighbour searches); the rule breaks equal distances by index, on both paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SHIPPED, assert_same_batch, run_cli
from pymatgen.core import Lattice, Structure

from colab_kit.graphs import get_converter
from colab_kit.graphs.radius import batch_from, complete, with_edges
from colab_kit.loader.batching import GraphDataset, make_loader
from colab_kit.plan.machine import detect
from colab_kit.plan.planner import PlanError, make_plan
from colab_kit.store.batch_read import gather
from colab_kit.store.build import build_store
from colab_kit.store.format import GraphStore
from colab_kit.training.trainer import fit

SEARCHES = ("cells", "images")


def _pair(src: Path, out: Path, limit: int, shard_size: int, **kw) -> tuple[GraphStore, GraphStore]:
    for edges in ("stored", "device"):
        build_store(src, out / edges, get_converter("radius", edges=edges, **kw), limit=limit, shard_size=shard_size,
                    progress=False, on_bad_structure="skip")
    return GraphStore(out / "stored"), GraphStore(out / "device")


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[GraphStore, GraphStore]:
    return _pair(SHIPPED, tmp_path_factory.mktemp("device_graphs"), limit=500, shard_size=60)


def _assert_batches_equal(stored: GraphStore, device: GraphStore, batches: list[list[int]]) -> None:
    for idx in batches:
        ref = batch_from(gather(stored, idx), stored.params)
        for search in SEARCHES:
            assert_same_batch(ref, complete(batch_from(gather(device, idx), device.params), search))


def test_structure_store_keeps_structures_and_edge_counts(stores: tuple[GraphStore, GraphStore]) -> None:
    stored, device = stores
    assert device.params["edges"] == "device" and stored.params["edges"] == "stored"
    assert stored.fingerprint != device.fingerprint
    shard = device.shard(0)
    assert "nbr" not in shard.arrays and "image" not in shard.arrays and "nbr_count" in shard.arrays
    assert [a.tolist() for a in device.sizes()] == [a.tolist() for a in stored.sizes()]  # budgets see the same sizes
    size = {s: sum(p.stat().st_size for p in st.root.glob("shard-*")) for s, st in (("stored", stored), ("device", device))}
    assert size["device"] < size["stored"] / 3, size  # 3.8x smaller on the shipped set (an MP cell has ~10 atoms)


def test_device_batches_equal_stored_batches(stores: tuple[GraphStore, GraphStore]) -> None:
    stored, device = stores
    rng = np.random.default_rng(0)
    batches = [rng.choice(len(stored), size=n, replace=False).tolist() for n in (1, 2, 9, 64, 64, 200)]
    _assert_batches_equal(stored, device, batches)
    for i in rng.choice(len(stored), size=20, replace=False).tolist():  # one graph (store.get / predict per item)
        a, b = GraphDataset(stored)[i][0], GraphDataset(device)[i][0]
        assert sorted(a.keys()) == sorted(b.keys()) and all(torch.equal(a[k], b[k]) for k in ("pos", "edge_index", "edge_shift"))


def test_real_sets_build_the_stored_edges(tmp_path: Path, shared_data: Path) -> None:
    """Real labelled sets from ../shared/data, every graph, at two resolutions (CGCNN's and the low-RAM one)."""
    names = ("matbench_phonons_1265/matbench_phonons.json.gz", "mp20_subset_1355/mp20_subset_1355_matbench.json.gz")
    found = [shared_data / n for n in names if (shared_data / n).exists()]
    if not found:
        pytest.skip(f"no real matbench-format sets under {shared_data}")
    rng = np.random.default_rng(3)
    for src in found:
        for cutoff, k in ((8.0, 12), (6.0, 8)):
            stored, device = _pair(src, tmp_path / f"{src.name}-{cutoff}", limit=250, shard_size=50, cutoff=cutoff,
                                   max_neighbors=k)
            order = rng.permutation(len(stored))
            _assert_batches_equal(stored, device, [b.tolist() for b in np.array_split(order, max(1, len(order) // 48))])


def _cells() -> dict[str, Structure]:
    return {
        "single site, many images": Structure(Lattice.cubic(2.5), ["Po"], [[0, 0, 0]]),
        "bcc: the 12-cap cuts the 6-shell": Structure(Lattice.cubic(2.87), ["Fe", "Fe"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        "rocksalt: 6 of 12 second neighbours": Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"],
                                                                          [[0, 0, 0], [0.5, 0.5, 0.5]]),
        "skewed triclinic": Structure(Lattice.from_parameters(3.1, 4.2, 9.5, 61, 75, 110), ["Na", "Cl"],
                                      [[0, 0, 0], [0.4, 0.3, 0.6]]),
        "coordinates outside the cell": Structure(Lattice.hexagonal(3.2, 5.1), ["Zn", "O"], [[1.3333, -0.3333, 2.0],
                                                                                           [0.3333, 0.6667, -0.62]]),
        "flat cell, long axis": Structure(Lattice.orthorhombic(2.9, 3.1, 31.0), ["C", "C", "H"],
                                          [[0, 0, 0], [0.5, 0.5, 0.02], [0.5, 0, 0.5]]),
    }


@pytest.mark.parametrize("cutoff,k", [(8.0, 12), (6.0, 8), (5.0, None), (3.0, 4)])
def test_hard_cells_build_the_stored_edges(cutoff: float, k: int | None) -> None:
    """Cells where ties, the cap and the image search are hardest; an isolated atom (kept with 'ignore') has no
    edges either way."""
    for name, s in _cells().items():
        conv = get_converter("radius", cutoff=cutoff, max_neighbors=k, on_isolated_atoms="ignore")
        ref = conv.convert(s)
        params = {**conv.params, "edges": "device"}
        for search in SEARCHES:
            got = with_edges({n: ref[n] for n in ("z", "frac", "lattice")}, params, search)
            for key in ("nbr_count", "nbr", "image"):
                np.testing.assert_array_equal(got[key], ref[key].astype(got[key].dtype), err_msg=f"{name}: {key} ({search})")


def test_ties_are_broken_by_index_then_image() -> None:
    """bcc with 12 neighbours: all 8 first neighbours, then 4 of the 6 second ones, the lowest (j, image) first."""
    s = _cells()["bcc: the 12-cap cuts the 6-shell"]
    g = get_converter("radius", cutoff=8.0, max_neighbors=12).convert(s)
    center = np.repeat(np.arange(2), g["nbr_count"])
    first = g["nbr"][center == 0][:8], g["image"][center == 0][:8]
    assert (first[0] == 1).all()  # the body centres
    second = g["image"][center == 0][8:]
    assert (g["nbr"][center == 0][8:] == 0).all() and len(second) == 4
    keys = [tuple(x) for x in second.tolist()]
    assert keys == sorted(keys) and keys[0] == (-1, 0, 0)


def test_training_on_device_graphs_equals_stored(stores: tuple[GraphStore, GraphStore], tmp_path: Path) -> None:
    """Same batches, same tensors: CGCNN trains to the same losses bit for bit on either store."""
    base = dict(graph_kind="radius", epochs=1, batch_size=16, batch_atoms=4000, batch_edges=60000, workers=0)
    results = {}
    for name, store in zip(("stored", "device"), stores):
        plan = make_plan(detect(), "debug", graph_edges=name, **base)
        results[name] = fit(store, plan, tmp_path / name, progress=False)
    a, b = results["stored"].history, results["device"].history
    assert [h["train_loss"] for h in a] == [h["train_loss"] for h in b]
    assert [h["val_mae"] for h in a] == [h["val_mae"] for h in b]


def test_loader_workers_deliver_structure_batches(stores: tuple[GraphStore, GraphStore]) -> None:
    from colab_kit.loader.batching import BudgetBatchSampler
    from colab_kit.models.common import PygAdapter

    stored, device = stores
    atoms, edges = device.sizes()

    def sampler() -> BudgetBatchSampler:
        return BudgetBatchSampler(np.arange(200), atoms, edges, 600, 8000, 32, seed=4)

    for a, b in zip(make_loader(stored, sampler()), make_loader(device, sampler(), workers=2), strict=True):
        assert PygAdapter.size(b) == PygAdapter.size(a)
        assert_same_batch(a, PygAdapter.to_device(b, torch.device("cpu")))


def test_plan_reads_stored_edges_on_cpu_and_refuses_device_edges_for_other_kinds() -> None:
    plan = make_plan(detect(), "debug", graph_kind="radius")
    assert plan.graph_edges == "stored" and "faster" in plan.reasons["graph_edges"]
    assert make_plan(detect(), "debug", graph_kind="radius", graph_edges="device").graph_edges == "device"
    with pytest.raises(PlanError, match="graph_edges"):
        make_plan(detect(), "debug", model="chgnet", graph_edges="device")


def test_run_switched_to_device_graphs_resumes_and_mirrors(tmp_path: Path) -> None:
    """``run`` with stored edges, then the same run with graph_edges=device: the structure-only store gets its own
    folder (mirrored to the persist dir), and training resumes from the checkpoint (the graphs are the same)."""
    common = ["run", "--mode", "debug", "--model", "cgcnn", "--work-dir", str(tmp_path / "work"), "--persist-dir",
              str(tmp_path / "drive"), "--set", "n_samples=80"]
    first = run_cli(*common, "--set", "epochs=1", timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_cli(*common, "--set", "epochs=2", "--set", "graph_edges=device", timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming training at epoch 2" in second.stderr and "Done" in second.stdout + second.stderr
    run_dir = next((tmp_path / "work").glob("*-radius-cgcnn-debug"))
    assert GraphStore(run_dir / "store").params["edges"] == "stored"
    assert GraphStore(run_dir / "store-structures").params["edges"] == "device"
    assert list((tmp_path / "drive").rglob("store-structures/manifest.json"))


def test_device_feed_on_cpu_moves_each_batch_when_reached() -> None:
    from colab_kit.loader.device_feed import ahead

    seen: list[int] = []

    def move(b: int) -> int:
        seen.append(b)
        return b * 10

    out = []
    for b, moved in ahead(iter(range(4)), move, torch.device("cpu")):
        out.append((b, moved))
        assert seen[-1] == b  # nothing moved before it is reached
    assert out == [(0, 0), (1, 10), (2, 20), (3, 30)] and list(ahead([], move, torch.device("cpu"))) == []


@pytest.mark.gpu
def test_device_feed_on_cuda_overlaps_and_delivers_the_same_batches(stores: tuple[GraphStore, GraphStore]) -> None:
    """The side-stream feed gives the batches a plain move gives, edges built on the GPU included."""
    from colab_kit.loader.batching import BudgetBatchSampler
    from colab_kit.loader.device_feed import ahead
    from colab_kit.models.common import PygAdapter

    stored, device = stores
    cuda = torch.device("cuda")
    atoms, edges = device.sizes()

    def sampler() -> BudgetBatchSampler:
        return BudgetBatchSampler(np.arange(len(device)), atoms, edges, 600, 8000, 32, seed=5)

    def move(b: object) -> object:
        return PygAdapter.to_device(b, cuda, non_blocking=True)

    ref = make_loader(stored, sampler(), pin_memory=True)
    for a, (_, b) in zip(ref, ahead(make_loader(device, sampler(), pin_memory=True), move, cuda), strict=True):
        assert_same_batch(a, b.to("cpu"))


@pytest.mark.gpu
def test_graphs_built_on_cuda_equal_stored(stores: tuple[GraphStore, GraphStore]) -> None:
    """The image search on a GPU: the same edges and float32 positions as the stored graphs, bit for bit."""
    stored, device = stores
    rng = np.random.default_rng(6)
    for n in (1, 64, 200):
        idx = rng.choice(len(stored), size=n, replace=False).tolist()
        ref = batch_from(gather(stored, idx), stored.params)
        got = complete(batch_from(gather(device, idx), device.params).to("cuda"))
        assert got.edge_index.is_cuda
        assert_same_batch(ref, got.to("cpu"))
