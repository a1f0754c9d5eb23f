"""Bare NaN / Infinity / -Infinity, as Python's ``json.dump`` writes them by default: matbench and JARVIS files with
them read; such a label is a bad label (skipped and recorded), such a value in a structure a bad item, never a bad
file; the text "NaN" inside strings is left alone."""

from __future__ import annotations

import copy
import gzip
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
from helpers import shipped_records

from colab_kit.graphs import get_converter
from colab_kit.sources import RawItem, SourceError, check_target, open_source, parse_structure
from colab_kit.store.build import build_store
from colab_kit.store.format import GraphStore

pytestmark = pytest.mark.filterwarnings("ignore:Not all sites have property")  # the "note" added to one site
LABELS = {3: float("nan"), 8: float("inf"), 12: float("-inf"), 17: None, 25: float("nan")}


def dump(path: Path, obj: Any) -> Path:
    """Writes ``obj`` with json.dump's defaults (bare NaN / Infinity), gzip by the suffix."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt") as f:
        json.dump(obj, f)
    assert "NaN" in (gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()).decode()
    return path


def nan_rows(n: int = 40) -> tuple[list[str], list[list[Any]], list[list[Any]]]:
    """(ids, clean rows, rows with bare-constant labels, a NaN coordinate and "NaN" text in strings)."""
    ids, clean = shipped_records(n)
    rows = copy.deepcopy(clean)
    for i, value in LABELS.items():
        rows[i][1] = value
    rows[20][0]["sites"][0]["abc"][2] = float("nan")  # a NaN inside a structure: that item is bad
    for i in (5, 6):  # strings that hold the text of the constants stay as they are
        rows[i][0]["sites"][0]["label"] = "NaN, Infinity [-Infinity]"
        rows[i][0]["sites"][0]["properties"] = {"note": 'x": NaN, "y": Infinity'}
    return ids, clean, rows


def check_items(items: list[RawItem], ids: list[str], clean: list[list[Any]], rows: list[list[Any]]) -> None:
    assert [i.id for i in items] == ids
    for i, item in enumerate(items):
        if i in LABELS:
            value = LABELS[i]
            want = "label is missing" if value is None else "label is NaN" if math.isnan(value) else "label is infinite"
            assert check_target(item) == want, (i, item.target)
        elif i == 20:  # found in the worker, when the structure does not build: clean items pay nothing for it
            with pytest.raises(SourceError, match=re.escape(
                    f"item '{ids[20]}' (pmg_dict): the structure has a bare NaN at sites[0].abc[2] (JSON has no NaN/Infinity; "
                    "Python's json.dump writes them); fix that value or drop this record")):
                parse_structure(item)
        else:
            assert check_target(item) is None and item.target == clean[i][1] and item.payload == rows[i][0], i
            assert item.error is None
    assert items[5].payload["sites"][0]["label"] == "NaN, Infinity [-Infinity]"
    assert items[6].payload["sites"][0]["properties"] == {"note": 'x": NaN, "y": Infinity'}
    assert parse_structure(items[5]).composition == parse_structure(RawItem("c", clean[5][0], 0.0, "pmg_dict")).composition


@pytest.mark.parametrize("suffix", [".json", ".json.gz"])
def test_matbench_with_bare_nan(tmp_path: Path, suffix: str) -> None:
    ids, clean, rows = nan_rows()
    path = dump(tmp_path / f"nan{suffix}", {"index": ids, "columns": ["structure", "e_form"], "data": rows})
    src = open_source(path)
    assert src.count() == 40 and src.target_name == "e_form"
    check_items(list(src), ids, clean, rows)


@pytest.mark.parametrize("suffix", [".json", ".json.gz"])
def test_jarvis_with_bare_nan(fixture_data: Path, tmp_path: Path, suffix: str) -> None:
    records = json.loads((fixture_data / "jarvis_sample.json").read_text())
    clean = copy.deepcopy(records)
    records[0]["optb88vdw_bandgap"] = float("nan")  # the first record's label decides the target key: still found
    records[2]["optb88vdw_bandgap"] = float("inf")
    records[3]["atoms"]["coords"][0][1] = float("-inf")
    records[4]["optb88vdw_bandgap"] = None
    records[5]["note"] = "NaN"
    src = open_source(dump(tmp_path / f"j{suffix}", records))
    assert src.target_name == "optb88vdw_bandgap" and src.count() == 6
    items = list(src)
    assert [i.id for i in items] == [r["jid"] for r in records]
    assert [check_target(i) for i in items] == ["label is NaN", None, "label is infinite", None, "label is missing", None]
    assert items[1].target == clean[1]["optb88vdw_bandgap"] and items[1].payload == clean[1]["atoms"]
    with pytest.raises(SourceError, match=r"'JVASP-\d+' \(jarvis\): the structure has a bare -Infinity at coords\[0\]\[1\]"):
        parse_structure(items[3])
    assert parse_structure(items[5]) and items[5].error is None


def test_build_store_records_the_nan_items(tmp_path: Path) -> None:
    ids, clean, rows = nan_rows()
    path = dump(tmp_path / "nan.json.gz", {"index": ids, "columns": ["structure", "e_form"], "data": rows})
    res = build_store(path, tmp_path / "store", get_converter("radius"), shard_size=16, on_bad_structure="skip", progress=False)
    failures = dict(GraphStore(tmp_path / "store").failures())
    bad = {ids[i] for i in (*LABELS, 20)}
    assert set(failures) == bad and res.n_graphs == 40 - len(bad)
    assert failures[ids[3]] == "label is NaN" and failures[ids[8]] == "label is infinite" and failures[ids[17]] == "label is missing"
    assert "bare NaN at sites[0].abc[2]" in failures[ids[20]]


def test_non_finite_coordinates_are_a_bad_item(fixture_data: Path) -> None:
    """JSON cannot carry an infinite float (yajl refuses 1e999), but a POSCAR or CIF can ("nan"): the structure
    builds, and is refused for it."""
    text = next((fixture_data / "poscar_dir").glob("*.vasp")).read_text()
    lines = text.splitlines()
    first_site = next(i for i, line in enumerate(lines) if line.strip().lower().startswith("direct")) + 1
    lines[first_site] = "nan " + " ".join(lines[first_site].split()[1:])
    assert parse_structure(RawItem("ok", text, 1.0, "poscar"))
    with pytest.raises(SourceError, match=r"item 'bad' \(poscar\): the lattice or the coordinates hold NaN or infinite"):
        parse_structure(RawItem("bad", "\n".join(lines) + "\n", 1.0, "poscar"))
