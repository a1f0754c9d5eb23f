"""convert + store: resumable build, SIGKILL resume, bad input, fingerprints, damaged shards."""

from __future__ import annotations

import gc
import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    SHIPPED,
    crystal_graph_difference,
    kill_when,
    run_cli,
    shard_count,
    shipped_records,
    write_matbench,
)

from colab_kit.graphs import get_converter
from colab_kit.sources import SourceError
from colab_kit.store.build import ConversionError, build_store
from colab_kit.store.format import GraphStore, StoreError


def _digest(store_dir: Path) -> list[tuple[int, str, int]]:
    m = json.loads((store_dir / "manifest.json").read_text())
    assert m["complete"]
    return [(e["index"], e["sha256"], e["n_graphs"]) for e in m["shards"]]


def test_store_round_trip_and_lazy_open(tmp_path: Path) -> None:
    ids, rows = shipped_records(120)
    src = write_matbench(tmp_path / "d.json.gz", ids, rows)
    conv = get_converter("chgnet")
    res = build_store(src, tmp_path / "s", conv, shard_size=50, progress=False)
    assert (res.n_graphs, res.n_shards, res.complete) == (120, 3, True)
    store = GraphStore(tmp_path / "s")
    assert len(store) == 120 and store.ids() == ids
    np.testing.assert_allclose(store.targets(), [r[1] for r in rows])
    from chgnet.graph import CrystalGraphConverter
    from pymatgen.core import Structure

    ref = CrystalGraphConverter(atom_graph_cutoff=6, bond_graph_cutoff=3)
    for i in (0, 49, 50, 119):  # first/last of a shard, across shard boundaries: the whole object is CHGNet's
        a, b = ref(Structure.from_dict(rows[i][0]), graph_id=ids[i], mp_id=ids[i]), store.get(i)
        assert crystal_graph_difference(a, b) is None, i
    atoms, edges = store.sizes()  # read from the shard pointers: must agree with every graph read back
    graphs = [store.get(i) for i in range(len(store))]
    assert atoms.tolist() == [len(r[0]["sites"]) for r in rows]
    assert edges.tolist() == [g.atom_graph.shape[0] for g in graphs] and edges.min() > 0
    assert store.verify() == []
    # shards are plain safetensors: readable by the safetensors library itself, no pickle
    from safetensors.numpy import load_file

    arrays = load_file(tmp_path / "s" / "shard-000000.safetensors")
    assert arrays["atom_ptr"][-1] == arrays["z"].shape[0] and arrays["nbr"].dtype == np.uint16


def test_second_run_reuses_everything_and_fingerprint_mismatch_refuses(tmp_path: Path) -> None:
    ids, rows = shipped_records(60)
    src = write_matbench(tmp_path / "d.json.gz", ids, rows)
    build_store(src, tmp_path / "s", get_converter("radius"), shard_size=20, progress=False)
    again = build_store(src, tmp_path / "s", get_converter("radius"), shard_size=20, progress=False)
    assert again.n_graphs == 60 and again.shards_reused == 3
    with pytest.raises(StoreError, match=r"other data or settings.*For `run`: --fresh rebuilds it, or --work-dir DIR keeps both; for `convert`: another --out"):
        build_store(src, tmp_path / "s", get_converter("radius", cutoff=5.0), shard_size=20, progress=False)
    rows[0][1] = 1.0  # same file name, different content: a different source identity
    write_matbench(tmp_path / "d.json.gz", ids, rows)
    with pytest.raises(StoreError, match="other data or settings"):
        build_store(src, tmp_path / "s", get_converter("radius"), shard_size=20, progress=False)


def test_bad_items_are_recorded_and_good_ones_kept(tmp_path: Path) -> None:
    ids, rows = shipped_records(40)
    rows[3][1] = "NaN"  # NaN label (JSON itself has no NaN literal)
    rows[5][0] = {"lattice": rows[5][0]["lattice"]}  # malformed record: no sites
    rows[7][1] = "abc"  # non-numeric label
    from pymatgen.core import Lattice, Structure

    isolated = Structure(Lattice.cubic(20.0), ["Na", "Cl", "Ar"], [[0, 0, 0], [0.1, 0, 0], [0.5, 0.5, 0.5]])
    rows[9][0] = isolated.as_dict()
    src = write_matbench(tmp_path / "bad.json.gz", ids, rows)
    res = build_store(src, tmp_path / "s", get_converter("chgnet"), shard_size=16, on_bad_structure="warn", progress=False)
    store = GraphStore(tmp_path / "s")
    failures = dict(store.failures())
    assert set(failures) == {ids[3], ids[5], ids[7], ids[9]}
    assert failures[ids[3]] == "label is NaN"
    assert "lattice" in failures[ids[5]] or "sites" in failures[ids[5]]
    assert "isolated atom" in failures[ids[9]]
    assert res.n_graphs == 36 and len(store) == 36 and ids[4] in store.ids()
    with pytest.raises(ConversionError, match=rf"structure '{ids[3]}': label is NaN.*on_bad_structure=skip"):
        build_store(src, tmp_path / "s2", get_converter("chgnet"), shard_size=16, on_bad_structure="error", progress=False)


def test_cif_that_does_not_parse(tmp_path: Path, fixture_data: Path) -> None:
    d = tmp_path / "cifs"
    shutil.copytree(fixture_data / "cif_dir", d)  # 3 real CGCNN CIFs + id_prop.csv
    good = [line.split(",")[0] for line in (d / "id_prop.csv").read_text().splitlines()]
    shutil.copy(fixture_data / "broken.cif", d / "broken.cif")
    with open(d / "id_prop.csv", "a") as f:
        f.write("broken,-1.0\n")
    build_store(d, tmp_path / "s", get_converter("radius"), progress=False, on_bad_structure="skip")
    store = GraphStore(tmp_path / "s")
    assert store.ids() == good and len(good) == 3
    (fid, reason), = store.failures()
    assert fid == "broken" and "broken" in reason


def test_truncated_gzip_keeps_completed_shards(tmp_path: Path) -> None:
    ids, rows = shipped_records(300)
    full = write_matbench(tmp_path / "full.json.gz", ids, rows).read_bytes()
    cut = tmp_path / "cut.json.gz"
    cut.write_bytes(full[: len(full) * 2 // 3])
    with pytest.raises(SourceError, match=r"cut\.json\.gz"):
        build_store(cut, tmp_path / "s", get_converter("radius"), shard_size=50, progress=False)
    m = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert not m["complete"] and len(m["shards"]) >= 2  # what was converted before the cut is kept
    with pytest.raises(StoreError, match="incomplete"):
        GraphStore(tmp_path / "s")


def test_empty_source(tmp_path: Path) -> None:
    src = write_matbench(tmp_path / "empty.json.gz", [], [])
    with pytest.raises(ConversionError, match="no structures"):
        build_store(src, tmp_path / "s", get_converter("radius"), progress=False)


def test_damaged_and_foreign_shards(tmp_path: Path) -> None:
    ids, rows = shipped_records(60)
    src = write_matbench(tmp_path / "d.json.gz", ids, rows)
    build_store(src, tmp_path / "s", get_converter("radius"), shard_size=20, progress=False)
    good = _digest(tmp_path / "s")
    shard = tmp_path / "s" / "shard-000001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])  # truncated on disk
    with pytest.raises(StoreError, match=r"shard-000001.safetensors is damaged.*`run` or `convert` command again"):
        GraphStore(tmp_path / "s").get(25)
    assert GraphStore(tmp_path / "s").get(5).num_nodes > 0  # other shards still read
    assert any("shard-000001" in p for p in GraphStore(tmp_path / "s").verify())
    # a foreign shard of the same size range: from another store built with other settings
    build_store(src, tmp_path / "other", get_converter("radius", cutoff=5.0), shard_size=20, progress=False)
    shutil.copy(tmp_path / "other" / "shard-000002.safetensors", tmp_path / "s" / "shard-000002.safetensors")
    m = json.loads((tmp_path / "s" / "manifest.json").read_text())
    m["shards"][2]["bytes"] = (tmp_path / "s" / "shard-000002.safetensors").stat().st_size
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(StoreError, match=r"shard-000002.safetensors is damaged: its sha256 is not the manifest's"):
        GraphStore(tmp_path / "s").get(45)
    m["shards"][2]["sha256"] = hashlib.sha256((tmp_path / "s" / "shard-000002.safetensors").read_bytes()).hexdigest()
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(m))  # its checksum recorded too: still not this store's
    with pytest.raises(StoreError, match=r"shard-000002.safetensors does not belong to this store"):
        GraphStore(tmp_path / "s").get(45)
    # converting again rebuilds the damaged shard and leaves the store as it was
    (tmp_path / "s" / "manifest.json").write_text(json.dumps({**m, "complete": False}))
    m["shards"][2]["bytes"] = -1
    (tmp_path / "s" / "manifest.json").write_text(json.dumps({**m, "complete": False}))
    res = build_store(src, tmp_path / "s", get_converter("radius"), shard_size=20, progress=False)
    assert res.shards_reused == 1 and _digest(tmp_path / "s") == good


def test_parts_merge_into_one_store(tmp_path: Path) -> None:
    ids, rows = shipped_records(100)
    src = write_matbench(tmp_path / "d.json.gz", ids, rows)
    conv = get_converter("radius")
    build_store(src, tmp_path / "ref", conv, shard_size=20, progress=False)
    for i in range(3):
        r = build_store(src, tmp_path / "s", conv, shard_size=20, part=(i, 3), progress=False)
        assert r.n_shards == len(range(i, 5, 3))
    merged = build_store(src, tmp_path / "s", conv, shard_size=20, progress=False)
    assert merged.shards_reused == 5 and _digest(tmp_path / "s") == _digest(tmp_path / "ref")
    assert not list((tmp_path / "s").glob("manifest.part-*"))


def test_sigkill_resume_gives_identical_store(tmp_path: Path) -> None:
    """A real `convert` subprocess killed with SIGKILL (workers included) at several points; the
    final store is byte-for-byte the store of an uninterrupted build."""
    args = [str(SHIPPED), "--graph-kind", "radius", "--limit", "2000", "--shard-size", "100", "--workers", "2",
            "--on-bad", "skip"]
    ref = run_cli("convert", *args, "--out", str(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "s"
    kills = 0
    for target in (1, 6, 12, 17):  # each rerun converts its first shard in 2 slices (shard_build)
        if kill_when(["convert", *args, "--out", str(out)], lambda t=target: shard_count(out) >= t):
            kills += 1
    assert kills >= 3
    assert 0 < shard_count(out) < 20
    done = run_cli("convert", *args, "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "reused" in done.stdout and _digest(out) == _digest(tmp_path / "ref")
    # the killed runs' temporaries (shards and manifests in flight) were removed by the run that finished
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == []
    a, b = GraphStore(out), GraphStore(tmp_path / "ref")
    assert a.ids() == b.ids() and np.array_equal(a.targets(), b.targets())
    assert math.isfinite(a.targets().sum())


def test_should_stop_commits_done_shards_and_a_rerun_finishes(tmp_path: Path) -> None:
    ids, rows = shipped_records(100)
    src = write_matbench(tmp_path / "d.json.gz", ids, rows)
    conv = get_converter("radius")
    polls = []

    def stop_after_two_chunks() -> bool:
        polls.append(1)
        return len(polls) > 2

    gc_before = gc.get_threshold()
    res = build_store(src, tmp_path / "s", conv, shard_size=20, workers=2, progress=False, should_stop=stop_after_two_chunks)
    assert not res.complete and res.n_shards == 2  # the two chunks submitted were committed, no more
    assert gc.get_threshold() == gc_before and gc.get_freeze_count() == 0  # the GC tuning is undone
    with pytest.raises(StoreError, match="incomplete"):
        GraphStore(tmp_path / "s")
    again = build_store(src, tmp_path / "s", conv, shard_size=20, workers=2, progress=False)
    assert again.complete and again.shards_reused == 2 and again.n_graphs == 100
    build_store(src, tmp_path / "ref", conv, shard_size=20, progress=False)
    assert _digest(tmp_path / "s") == _digest(tmp_path / "ref")


def _isolated_atoms() -> dict:
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice.cubic(20.0), ["Na", "Cl", "Ar"], [[0, 0, 0], [0.1, 0, 0], [0.5, 0.5, 0.5]]).as_dict()


@pytest.mark.parametrize("name", ["chgnet", "radius"])
def test_resume_with_split_first_shard_gives_identical_shards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               name: str) -> None:
    """Each call's first shard is converted in ``workers`` slices and assembled: its bytes (graphs, ids, targets,
    failures, warnings) are those of a shard one worker built whole."""
    import colab_kit.store.build as convert_module

    ids, rows = shipped_records(160)
    for i in (3, 20, 70, 90):  # failures in both slices of the split shards (0 and 2: slices of 16)
        rows[i][1] = "NaN"
    for i in (5, 25, 66, 81):  # converted with a warning, in both slices too
        rows[i][0] = _isolated_atoms()
    src = write_matbench(tmp_path / "d.json.gz", ids, rows)
    conv = get_converter(name, on_isolated_atoms="warn")
    build_store(src, tmp_path / "ref", conv, shard_size=32, workers=1, progress=False, on_bad_structure="skip")
    split: list[int] = []

    def counted(*args: object) -> dict:
        split.append(args[3])  # the shard index
        return convert_module.build_split_shard.__wrapped__(*args)

    counted.__wrapped__ = convert_module.build_split_shard
    monkeypatch.setattr(convert_module, "build_split_shard", counted)
    polls, committed = [], []
    res = build_store(src, tmp_path / "s", conv, shard_size=32, workers=2, progress=False, on_bad_structure="skip",
                      should_stop=lambda: polls.append(1) or len(polls) > 2, on_shard=committed.append)
    assert not res.complete and res.n_shards == 2 and split == [0]
    res = build_store(src, tmp_path / "s", conv, shard_size=32, workers=2, progress=False, on_bad_structure="skip",
                      on_shard=committed.append)
    assert res.complete and res.shards_reused == 2 and split == [0, 2]
    assert [e.index for e in committed[:3]] == [0, 1, 2] and committed[-1] is None  # the split first; None: complete
    assert sorted(e.index for e in committed[3:-1]) == [3, 4]  # whole shards commit as their workers finish
    assert _digest(tmp_path / "s") == _digest(tmp_path / "ref")
    store = GraphStore(tmp_path / "s")
    assert len(store.failures()) == 4 and {i for i, _ in store.warnings()} == {ids[i] for i in (5, 25, 66, 81)}
    assert [p.name for p in (tmp_path / "s").iterdir() if p.name.endswith(".tmp")] == []


def test_split_first_shard_names_the_first_bad_item_in_source_order(tmp_path: Path) -> None:
    """Under on_bad_structure='error' the split shard raises for the item a whole-shard build names, even when a
    later slice fails first (slice 2 starts with a bad label and fails at once; slice 1 meets its bad item late)."""
    ids, rows = shipped_records(64)
    rows[12][0] = {"lattice": rows[12][0]["lattice"]}  # slice [0, 16): fails after 12 conversions
    rows[16][1] = "NaN"  # slice [16, 32): fails on its first item
    src = write_matbench(tmp_path / "d.json.gz", ids, rows)
    conv = get_converter("radius")
    messages = []
    for workers in (1, 2):
        with pytest.raises(ConversionError, match=rf"structure '{ids[12]}'.*on_bad_structure=skip") as err:
            build_store(src, tmp_path / f"s{workers}", conv, shard_size=32, workers=workers, progress=False,
                        on_bad_structure="error")
        messages.append(str(err.value))
        assert shard_count(tmp_path / f"s{workers}") == 0
    assert messages[0] == messages[1]


def test_slice_bounds_cover_the_items_in_order() -> None:
    from colab_kit.store.shard_build import slice_bounds

    assert slice_bounds(1000, 2) == [(0, 500), (500, 1000)]
    assert slice_bounds(7, 3) == [(0, 2), (2, 4), (4, 7)]
    assert slice_bounds(1, 4) == [(0, 1)]
