"""Tests of the synthetic MP-like dataset generator ``benchmarks/mp_like.py`` (n=2,000, a few seconds)."""

from __future__ import annotations

import gzip
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from helpers import REPO

N = 2000


def _load_module() -> ModuleType:
    path = REPO / "benchmarks" / "mp_like.py"
    spec = importlib.util.spec_from_file_location("colab_kit_bench_mp_like", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def mp_like() -> ModuleType:
    mod = _load_module()
    try:
        mod.default_seeds_path()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    return mod


@pytest.fixture(scope="module")
def generated(mp_like: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("mp_like") / "mp_like_2k.json.gz"
    stats = mp_like.generate(N, str(out), seed=0)
    return out, stats


@pytest.fixture(scope="module")
def doc(generated: tuple[Path, dict[str, Any]]) -> dict[str, Any]:
    with gzip.open(generated[0], "rt", encoding="utf-8") as fh:
        return json.load(fh)


def test_stats(generated: tuple[Path, dict[str, Any]]) -> None:
    out, stats = generated
    assert stats["count"] == N
    assert stats["bytes"] == out.stat().st_size > 0
    assert 26 <= stats["mean_sites"] <= 34
    assert stats["max_sites"] > 100
    assert stats["max_sites"] <= 300
    assert stats["n_isolated"] == len(stats["isolated_ids"]) >= 1
    assert stats["n_elements"] >= 80
    assert not out.with_name(out.name + ".tmp").exists()


def test_streams_back_with_ijson(generated: tuple[Path, dict[str, Any]]) -> None:
    ijson = pytest.importorskip("ijson")
    out, _ = generated
    with gzip.open(out, "rb") as fh:
        top_keys = [value for prefix, event, value in ijson.parse(fh) if prefix == "" and event == "map_key"]
    assert top_keys.index("index") < top_keys.index("data")
    assert top_keys.index("columns") < top_keys.index("data")
    assert "colab_kit_synthetic" in top_keys
    with gzip.open(out, "rb") as fh:
        ids = list(ijson.items(fh, "index.item"))
    assert ids[:2] == ["mplike-000000", "mplike-000001"] and len(ids) == N
    n_rows = 0
    with gzip.open(out, "rb") as fh:
        for row in ijson.items(fh, "data.item"):
            assert len(row) == 2 and isinstance(row[0], dict)
            n_rows += 1
    assert n_rows == N


def test_layout_and_metadata(doc: dict[str, Any], generated: tuple[Path, dict[str, Any]]) -> None:
    assert list(doc)[:2] == ["index", "columns"] and list(doc)[-1] == "data"
    assert doc["columns"] == ["structure", "e_form"]
    assert len(doc["index"]) == len(doc["data"]) == N
    assert len(set(doc["index"])) == N
    meta = doc["colab_kit_synthetic"]
    assert meta["seed"] == 0 and meta["generator"] == "benchmarks/mp_like.py"
    assert meta["isolated_ids"] == generated[1]["isolated_ids"]
    e_form = np.array([row[1] for row in doc["data"]], dtype=float)
    assert np.isfinite(e_form).all() and -6 < e_form.min() and e_form.max() < 4
    sites = np.array([len(row[0]["sites"]) for row in doc["data"]])
    assert 26 <= sites.mean() <= 34
    assert 15 <= np.median(sites) <= 26
    assert (sites > 150).mean() >= 0.003  # the long tail exists
    assert sites.max() <= 300


def test_structures_read_back(mp_like: ModuleType, doc: dict[str, Any]) -> None:
    from pymatgen.core import Structure

    iso = set(doc["colab_kit_synthetic"]["isolated_ids"])
    sample = [k for k in range(0, N, 40) if doc["index"][k] not in iso]
    for k in sample:
        d = doc["data"][k][0]
        s = Structure.from_dict(d)
        assert len(s) == len(d["sites"]) and s.is_ordered
        assert [site.specie.symbol for site in s] == [x["species"][0]["element"] for x in d["sites"]]
        np.testing.assert_allclose(s.lattice.matrix, d["lattice"]["matrix"])
        np.testing.assert_allclose(s.frac_coords, [x["abc"] for x in d["sites"]])
        np.testing.assert_allclose(s.cart_coords, [x["xyz"] for x in d["sites"]], atol=1e-5)
        # min distance > 0.7 A, and (like the real seeds) no atom without a neighbour within 6 A
        assert len(s.get_neighbor_list(0.7)[0]) == 0
        assert len(set(s.get_neighbor_list(6.0)[0].tolist())) == len(s)
        # as_dict round trip of the hand-built dict
        assert Structure.from_dict(s.as_dict()) == s


def test_structure_dict_matches_pymatgen(mp_like: ModuleType) -> None:
    from pymatgen.core import Lattice, Structure

    lattice = Lattice.from_parameters(4.1, 5.2, 6.3, 80, 95, 110)
    ref = Structure(lattice, ["Fe", "O", "O"], [[0, 0, 0], [0.25, 0.5, 0.1], [0.7, 0.2, 0.9]])
    d = mp_like.structure_dict(ref.lattice.matrix, [sp.symbol for sp in ref.species], ref.frac_coords)
    back = Structure.from_dict(json.loads(json.dumps(d)))
    assert back == ref
    np.testing.assert_allclose(back.lattice.matrix, ref.lattice.matrix, atol=1e-7)
    np.testing.assert_allclose(back.cart_coords, ref.cart_coords, atol=1e-5)
    assert set(d) == set(ref.as_dict()) - {"@version"} | {"charge"}


def test_isolated_ids_really_isolated(doc: dict[str, Any]) -> None:
    from pymatgen.core import Structure

    iso = doc["colab_kit_synthetic"]["isolated_ids"]
    assert iso
    position = {x: k for k, x in enumerate(doc["index"])}
    for sid in iso:
        s = Structure.from_dict(doc["data"][position[sid]][0])
        centers = set(s.get_neighbor_list(6.0)[0].tolist())
        assert len(centers) < len(s), f"{sid} has no isolated atom"


def test_deterministic(
    mp_like: ModuleType, generated: tuple[Path, dict[str, Any]], doc: dict[str, Any], tmp_path: Path
) -> None:
    out, _ = generated
    again = tmp_path / "again.json.gz"
    mp_like.generate(N, str(again), seed=0)
    with gzip.open(out, "rb") as a, gzip.open(again, "rb") as b:
        assert a.read() == b.read()
    assert out.read_bytes() == again.read_bytes()  # gzip header has mtime 0 and no name
    other = tmp_path / "other.json.gz"
    mp_like.generate(20, str(other), seed=1, isolated_fraction=0.0)
    with gzip.open(other, "rt", encoding="utf-8") as fh:
        doc1 = json.load(fh)
    assert doc1["colab_kit_synthetic"]["isolated_ids"] == []
    assert doc1["data"][0] != doc["data"][0]  # another seed gives other items


def test_items_independent_of_n(mp_like: ModuleType) -> None:
    gen = mp_like.MPLikeGenerator(mp_like.load_seeds(), seed=3)
    a, b = gen.make_item(7), gen.make_item(7)
    np.testing.assert_array_equal(a.frac, b.frac)
    assert a.species == b.species and a.e_form == b.e_form
    assert mp_like.choose_isolated(1000, 0, 2e-4) == mp_like.choose_isolated(1000, 0, 2e-4)
    assert len(mp_like.choose_isolated(132752, 0, 2e-4)) == 27
    assert mp_like.choose_isolated(10, 0, 0.0) == []
