"""Tables of structures: the MP-20 / CDVAE csv layout (a CIF column among label columns), what pandas and mp-api
exports give (a Structure.as_dict() JSON column, POSCAR text), gzip, parquet; streamed, resumable by row, and
refused in one line when the label column is ambiguous."""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
from pathlib import Path

import pytest
from helpers import FIXTURES
from pymatgen.core import Composition

from colab_kit.graphs import get_converter
from colab_kit.sources import SourceError, detect_format, open_source, parse_structure
from colab_kit.store.format import GraphStore

MP20_CSV = FIXTURES / "mp20_sample.csv"  # 10 real MP-20 rows, copied unchanged (tests/data/README.md)


def _rows() -> tuple[list[str], list[list[str]]]:
    with open(MP20_CSV, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def test_mp20_csv_needs_a_label_choice_and_reads_every_row() -> None:
    assert detect_format(MP20_CSV) == "csv"
    with pytest.raises(SourceError, match=r"several label columns \['formation_energy_per_atom', 'band_gap', "
                                          r"'e_above_hull'\]; choose one with --set target=NAME"):
        open_source(MP20_CSV)
    with pytest.raises(SourceError, match=r"target='e_form' is not a column; columns: \['', 'material_id'"):
        open_source(MP20_CSV, target="e_form")
    header, rows = _rows()
    src = open_source(MP20_CSV, target="formation_energy_per_atom")
    items = list(src)
    assert src.count() == len(items) == len(rows) == 10
    assert [i.id for i in items] == [r[1] for r in rows]  # material_id, not pandas' index column
    assert [i.target for i in items] == [float(r[2]) for r in rows]
    ci = header.index("cif")
    for item, row in zip(items, rows):
        assert item.kind == "cif" and item.payload == row[ci]
        s = parse_structure(item)
        assert s.composition.reduced_composition == Composition(row[header.index("pretty_formula")]).reduced_composition
    # a resume starts at a row without parsing the structures before it
    for start in (0, 3, 9, 10):
        assert [i.id for i in src.iter_from(start)] == [i.id for i in itertools.islice(src, start, None)]


def _write_csv(path: Path, header: list[str], rows: list[list[str]], gz: bool = False) -> Path:
    buf = io.StringIO(newline="")
    csv.writer(buf).writerows([header, *rows])
    data = buf.getvalue().encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def test_structure_dict_and_poscar_columns_gzip_and_one_label(tmp_path: Path) -> None:
    """An mp-api / pandas export: material_id, a label, and the structure as Structure.as_dict() JSON; and a POSCAR
    column; gzip told by its bytes; the only numeric column is the label."""
    header, rows = _rows()
    cif = [parse_structure(it) for it in open_source(MP20_CSV, target="band_gap")]
    as_json = [[r[1], r[3], json.dumps(s.as_dict())] for r, s in zip(rows, cif)]
    src = open_source(_write_csv(tmp_path / "export.csv.gz", ["material_id", "band_gap", "structure"], as_json, gz=True))
    assert src.format == "csv" and src.target_name == "band_gap"
    items = list(src)
    assert [i.kind for i in items] == ["pmg_json"] * 10
    assert all(parse_structure(i) == s for i, s in zip(items, cif))

    poscars = [[r[1], s.to(fmt="poscar"), r[5]] for r, s in zip(rows, cif)]
    items = list(open_source(_write_csv(tmp_path / "p.csv", ["id", "poscar", "e_above_hull"], poscars)))
    assert [i.kind for i in items] == ["poscar"] * 10
    assert [i.target for i in items] == [float(r[5]) for r in rows]
    assert parse_structure(items[3]).composition == cif[3].composition


def test_bad_rows_are_items_not_the_end_of_the_table(tmp_path: Path) -> None:
    header, rows = _rows()
    bad = [row[:] for row in rows[:4]]
    bad[1][header.index("cif")] = "not a structure"
    bad[2] = bad[2][:3]  # a row cut short
    bad[3][2] = "n/a"  # a missing label
    src = open_source(_write_csv(tmp_path / "bad.csv", header, bad), target="formation_energy_per_atom")
    items = list(src)
    assert [i.error is None for i in items] == [True, False, False, True]
    assert "holds 'not a structure', not CIF or POSCAR text" in items[1].error
    assert "row 2 has 3 fields, the header 11" in items[2].error
    assert items[3].target is None  # recorded as "label is missing" by conversion


def test_a_table_without_structures_is_refused(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "props.csv", ["material_id", "e_form"], [["mp-1", "0.1"]])
    with pytest.raises(SourceError, match=r"no structure column among \['material_id', 'e_form'\]"):
        open_source(path)


def test_parquet_reads_the_same_items_by_row_group(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow", reason="parquet needs pyarrow (Colab has it)")
    df = pd.read_csv(MP20_CSV)
    path = tmp_path / "mp20.parquet"
    df.to_parquet(path, row_group_size=3)
    pq = open_source(path, target="formation_energy_per_atom")
    csv_items = list(open_source(MP20_CSV, target="formation_energy_per_atom"))
    assert pq.format == "parquet" and pq.count() == 10
    assert [(i.id, i.target, i.payload) for i in pq] == [(i.id, i.target, i.payload) for i in csv_items]
    for start in (2, 3, 7, 10):  # inside and at the edges of row groups
        assert [i.id for i in pq.iter_from(start)] == [i.id for i in csv_items[start:]]


def test_csv_converts_into_a_store(tmp_path: Path) -> None:
    from colab_kit.store.build import build_store

    res = build_store(MP20_CSV, tmp_path / "store", get_converter("radius"), target="formation_energy_per_atom",
                      progress=False, on_bad_structure="skip")
    store = GraphStore(res.path)
    assert res.complete and res.n_graphs + res.n_failed == 10 and res.n_graphs >= 8
    assert store.manifest.source["format"] == "csv"
    assert store.manifest.target_name == "formation_energy_per_atom"
