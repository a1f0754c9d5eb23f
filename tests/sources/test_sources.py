"""colab_kit.sources on the real data sets in shared/data: every format, laziness, identity and bad input."""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import math
import pickle
import re
import shutil
import tarfile
import time
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import ijson
import pytest
from helpers import run_cli

from colab_kit.sources import (
    FORMATS,
    RawItem,
    SourceError,
    check_target,
    detect_format,
    open_source,
    parse_structure,
    streams,
)

MB3000 = "mp_eform_cgcnn_3000/mp_eform_cgcnn_3000_matbench.json.gz"
MATBENCH_FILES = [
    (MB3000, "e_form"),
    ("matbench_phonons_1265/matbench_phonons.json.gz", "last phdos peak"),
    ("mp20_subset_1355/mp20_subset_1355_matbench.json.gz", "e_form"),
    ("matsciml_devsets/mp_devset_200.json.gz", "e_form"),
    ("matsciml_devsets/oqmd_devset_200.json.gz", "e_form"),
    ("matsciml_devsets/alexandria_devset_98.json.gz", "e_form"),
    ("matsciml_devsets/carolina_devset_100.json.gz", "e_form"),
]
DEVSET = "matsciml_devsets/mp_devset_200.json.gz"
ALIGNN = "alignn_jarvis_bandgap_50"


def load_matbench(path: Path) -> dict[str, Any]:
    with gzip.open(path, "rt") as f:
        return json.load(f)


def write_matbench(path: Path, doc: dict[str, Any]) -> Path:
    with gzip.open(path, "wt") as f:
        json.dump(doc, f)
    return path


def same_label(a: float | None, b: Any) -> bool:
    return (a is None and b is None) or (b is not None and (a == float(b) or math.isnan(a) and math.isnan(float(b))))


def sample(n: int, k: int = 25) -> list[int]:
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)}) if n > k else list(range(n))


@pytest.fixture(scope="module")
def cif_dir(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cifs")
    with tarfile.open(shared_data / "mp_eform_cgcnn_3000" / "cifs.tar.gz") as tar:
        tar.extractall(root, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    return root / "mp_eform_cgcnn_3000"


# ---------------------------------------------------------------- each format reads what a plain load reads


@pytest.mark.parametrize("rel, target", MATBENCH_FILES)
def test_matbench_matches_json_load(shared_data: Path, rel: str, target: str) -> None:
    from pymatgen.core import Structure

    path = shared_data / rel
    doc = load_matbench(path)
    src = open_source(path)
    assert (src.format, src.target_name, src.path) == ("matbench", target, str(path))
    assert src.count() == len(doc["index"])
    items = list(src)
    assert [i.id for i in items] == [str(x) for x in doc["index"]]
    assert all(same_label(i.target, row[1]) for i, row in zip(items, doc["data"], strict=True))
    assert {i.kind for i in items} == {"pmg_dict"} and all(i.error is None for i in items)
    for k in sample(len(items)):
        structure = parse_structure(pickle.loads(pickle.dumps(items[k])))  # what a worker receives
        assert structure.composition == Structure.from_dict(doc["data"][k][0]).composition
    assert [i.id for i in src][:3] == [i.id for i in items[:3]]  # re-iterable from the start


def test_cif_dir_matches_id_prop_and_matbench(shared_data: Path, cif_dir: Path) -> None:
    assert detect_format(cif_dir) == "cif_dir"
    with open(cif_dir / "id_prop.csv") as f:
        rows = list(csv.reader(f))
    src = open_source(cif_dir, target="e_form")
    assert src.count() == len(rows) == 3000
    items = list(src)
    assert [(i.id, i.target) for i in items] == [(r[0], float(r[1])) for r in rows]
    assert {i.kind for i in items} == {"cif"}
    with open(shared_data / "mp_eform_cgcnn_3000" / "material_id_hash.csv") as f:
        mp_id = dict(csv.reader(f))
    doc = load_matbench(shared_data / MB3000)
    by_mp = dict(zip(doc["index"], doc["data"], strict=True))
    from pymatgen.core import Structure

    for k in sample(len(items), 15):
        want = Structure.from_dict(by_mp[mp_id[items[k].id]][0]).composition
        assert parse_structure(items[k]).composition.almost_equals(want)


def test_poscar_dir_and_jarvis_json_agree(shared_data: Path) -> None:
    folder = shared_data / ALIGNN
    with open(folder / "id_prop.csv") as f:
        rows = list(csv.reader(f))
    records = json.loads((folder / "jarvis_format_derived.json").read_text())
    poscars = open_source(folder)
    jarvis = open_source(folder / "jarvis_format_derived.json")
    assert (poscars.format, jarvis.format, jarvis.target_name) == ("poscar_dir", "jarvis", "optb88vdw_bandgap")
    assert poscars.count() == jarvis.count() == len(rows) == len(records) == 50
    p_items, j_items = list(poscars), list(jarvis)
    assert [(i.id, i.target) for i in p_items] == [(r[0].removesuffix(".vasp"), float(r[1])) for r in rows]
    assert [(i.id, i.target) for i in j_items] == [(r["jid"], r["optb88vdw_bandgap"]) for r in records]
    by_jid = {i.id: parse_structure(i) for i in j_items}
    for item in p_items:
        assert item.kind == "poscar"
        assert parse_structure(item).composition == by_jid[item.id.removeprefix("POSCAR-")].composition


@pytest.fixture(scope="module")
def devset_structures(shared_data: Path) -> list[tuple[str, Any, float]]:
    from pymatgen.core import Structure

    doc = load_matbench(shared_data / DEVSET)
    return [(i, Structure.from_dict(row[0]), row[1]) for i, row in list(zip(doc["index"], doc["data"], strict=True))[:30]]


def write_extxyz(path: Path, rows: list[tuple[str, Any, float]], with_ids: bool = True) -> Path:
    from ase.io import write
    from pymatgen.io.ase import AseAtomsAdaptor

    frames = []
    for rid, structure, value in rows:
        atoms = AseAtomsAdaptor.get_atoms(structure)
        atoms.info.update({"e_form": value, "natoms_x2": 2.0 * len(atoms)})
        if with_ids:
            atoms.info["material_id"] = rid
        frames.append(atoms)
    write(path, frames, format="extxyz")
    return path


def test_extxyz_frames(tmp_path: Path, devset_structures: list[tuple[str, Any, float]]) -> None:
    path = write_extxyz(tmp_path / "dev.extxyz", devset_structures)
    assert detect_format(path) == "extxyz"
    src = open_source(path)
    assert src.target_name == "e_form"  # the first float in the info line
    assert src.count() == len(devset_structures)
    items = list(src)
    assert [(i.id, i.target) for i in items] == [(r, v) for r, _, v in devset_structures]
    for item, (_, structure, _) in zip(items, devset_structures, strict=True):
        assert parse_structure(item).composition == structure.composition
    other = open_source(path, target="natoms_x2")
    assert [i.target for i in other] == [2.0 * len(s) for _, s, _ in devset_structures]
    no_ids = open_source(write_extxyz(tmp_path / "plain.xyz", devset_structures[:3], with_ids=False))
    assert [i.id for i in no_ids] == ["0", "1", "2"]


def test_memory_source(devset_structures: list[tuple[str, Any, float]]) -> None:
    structures = [s for _, s, _ in devset_structures]
    with pytest.raises(SourceError, match="name="):
        open_source(structures)
    with pytest.raises(SourceError, match="list of Structures"):
        open_source(structures[0], name="one")
    plain = open_source(iter(structures), name="dev")  # a one-shot iterator still re-iterates
    assert plain.format == "memory" and plain.count() == len(structures)
    assert [i.id for i in plain] == [str(k) for k in range(len(structures))] == [i.id for i in plain]
    assert all(i.target is None and i.kind == "structure" for i in plain)
    assert parse_structure(next(iter(plain))) is structures[0]
    tuples = open_source(devset_structures, name="dev", target="e_form")
    assert [(i.id, i.target) for i in tuples] == [(r, v) for r, _, v in devset_structures]
    structures[0].properties["e_form"] = -1.25
    assert next(iter(open_source(structures, name="dev", target="e_form"))).target == -1.25
    ident = tuples.identity()
    assert ident == open_source(devset_structures, name="dev", target="e_form").identity()
    assert ident["name"] == "dev" and json.dumps(ident)
    moved = [(r, s.copy(), v) for r, s, v in devset_structures]
    moved[5][1].translate_sites([0], [0.01, 0, 0])
    assert open_source(moved, name="dev", target="e_form").identity() != ident
    with pytest.raises(SourceError, match="item 1 is a str"):
        open_source([structures[0], "POSCAR"], name="x")


# ---------------------------------------------------------------- streaming is lazy


class CountingFile:
    """Stands in for the decompressed stream and counts the bytes handed to the parser."""

    def __init__(self, f: Any) -> None:
        self.f, self.pos = f, 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.pos += len(data)
        return data

    def tell(self) -> int:
        return self.pos

    def __enter__(self) -> CountingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.f.close()


def test_first_item_does_not_read_the_file(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = shared_data / MB3000
    total = len(gzip.open(path).read())
    opened: list[CountingFile] = []
    real_open = streams.open_binary
    monkeypatch.setattr(streams, "open_binary", lambda p: opened.append(CountingFile(real_open(p))) or opened[-1])
    src = open_source(path)
    tracemalloc.start()
    t0 = time.perf_counter()
    it = iter(src)
    first = next(it)
    elapsed = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    it.close()
    assert first.id == "mp-10010" and first.target == pytest.approx(-0.5396881919999998)
    read = sum(f.pos for f in opened)
    assert read < 0.05 * total, f"read {read} of {total} decompressed bytes for one item"
    assert peak < 20e6 and elapsed < 1.0


# ---------------------------------------------------------------- identity


def test_identity_is_deterministic_and_tracks_content(shared_data: Path, tmp_path: Path) -> None:
    doc = load_matbench(shared_data / DEVSET)
    a = write_matbench(tmp_path / "a.json.gz", doc)
    ident = open_source(a).identity()
    assert ident == open_source(a).identity() and json.loads(json.dumps(ident)) == ident
    assert ident["format"] == "matbench" and ident["target_name"] == "e_form"
    moved = tmp_path / "elsewhere" / "b.json.gz"
    moved.parent.mkdir()
    shutil.copy(a, moved)
    assert open_source(moved).identity() == ident  # a copy (e.g. restored from Drive) is the same data
    doc["data"][7][1] += 0.5
    write_matbench(a, doc)
    assert open_source(a).identity() != ident


def test_folder_identity_tracks_files(shared_data: Path, tmp_path: Path) -> None:
    folder = tmp_path / "alignn"
    shutil.copytree(shared_data / ALIGNN, folder)
    ident = open_source(folder).identity()
    assert ident == open_source(folder).identity() and ident["files"] == 50
    (folder / "POSCAR-JVASP-10.vasp").write_text((folder / "POSCAR-JVASP-10.vasp").read_text() + "\n")
    resized = open_source(folder).identity()
    assert resized != ident
    (folder / "POSCAR-JVASP-10.vasp").unlink()
    assert open_source(folder).identity() not in (ident, resized)
    (folder / "id_prop.csv").write_text((shared_data / ALIGNN / "id_prop.csv").read_text().replace("0.000000", "0.1", 1))
    assert open_source(folder).identity()["sha256"] != resized["sha256"]


# ---------------------------------------------------------------- detection and bad input


def test_detect_format(shared_data: Path, tmp_path: Path) -> None:
    assert detect_format(shared_data / MB3000) == "matbench"
    assert detect_format(shared_data / ALIGNN / "jarvis_format_derived.json") == "jarvis"
    assert detect_format(shared_data / ALIGNN) == "poscar_dir"
    assert set(FORMATS) == {"matbench", "cif_dir", "poscar_dir", "extxyz", "jarvis", "csv", "parquet", "memory"}
    assert detect_format(shared_data / "mp20_subset_1355" / "mp20_subset_1355.csv") == "csv"
    with pytest.raises(SourceError, match=r"README\.md.*matbench.*extxyz.*fmt="):
        detect_format(shared_data / ALIGNN / "README.md")
    with pytest.raises(SourceError, match="id_prop.csv"):
        open_source(tmp_path)
    missing = tmp_path / "nowhere" / "mp.json.gz"
    with pytest.raises(SourceError, match=r"nowhere/mp\.json\.gz: no such file"):
        open_source(missing)
    with pytest.raises(SourceError, match="fmt='cifs'.*matbench"):
        open_source(shared_data / MB3000, fmt="cifs")
    with pytest.raises(SourceError, match="not a JARVIS file.*fmt="):
        open_source(shared_data / MB3000, fmt="jarvis")


def test_truncated_gzip_keeps_the_items_before(shared_data: Path, tmp_path: Path) -> None:
    data = (shared_data / MB3000).read_bytes()
    cut = tmp_path / "cut.json.gz"
    cut.write_bytes(data[: len(data) // 2])
    src = open_source(cut)
    got: list[RawItem] = []
    with pytest.raises(SourceError) as err:
        for item in src:
            got.append(item)
    whole_rows = 0  # rows complete in what can still be decompressed: every one of them must come out
    with contextlib.suppress(Exception):
        for _ in ijson.items(io.BytesIO(zlib.decompressobj(31).decompress(data[: len(data) // 2])), "data.item"):
            whole_rows += 1
    assert len(got) == whole_rows and 1000 < whole_rows < 2000
    assert [i.id for i in got] == load_matbench(shared_data / MB3000)["index"][: len(got)]
    msg = str(err.value)
    assert "cut.json.gz" in msg and f"truncated after {len(got)} items" in msg and "re-download" in msg
    parse_structure(got[-1])  # the last item before the cut is whole


def test_malformed_records_are_bad_items_not_a_crash(shared_data: Path, tmp_path: Path) -> None:
    doc = load_matbench(shared_data / DEVSET)
    del doc["data"][3][0]["lattice"]
    doc["data"][5][1] = "abc"
    doc["data"][6][1] = None
    doc["data"][8] = [doc["data"][8][0]]
    items = list(open_source(write_matbench(tmp_path / "bad.json.gz", doc)))
    assert len(items) == 200
    ids = doc["index"]
    with pytest.raises(SourceError, match=rf"{ids[3]}.*'lattice'"):
        parse_structure(items[3])
    with pytest.raises(SourceError, match=rf"{ids[5]}.*'abc' is not a number"):
        parse_structure(items[5])
    with pytest.raises(SourceError, match=rf"{ids[8]}.*does not match columns"):
        parse_structure(items[8])
    assert check_target(items[5]).startswith("label 'abc'")
    assert items[6].target is None and check_target(items[6]) == "label is missing"
    assert check_target(items[4]) is None and check_target(RawItem("x", None, float("nan"), "cif")) == "label is NaN"
    assert parse_structure(items[4]).composition.num_atoms > 0 and parse_structure(items[9])


def test_malformed_json_names_file_and_position(shared_data: Path, tmp_path: Path) -> None:
    text = json.dumps(load_matbench(shared_data / DEVSET))
    at = text.index('"lattice"', len(text) // 2)
    broken = tmp_path / "broken.json"
    broken.write_text(text[:at] + "lattice" + text[at + 9 :])  # an unquoted key
    got: list[RawItem] = []
    with pytest.raises(SourceError, match=r"broken\.json: malformed JSON after \d+ items, in the JSON text before byte \d+") as err:
        got.extend(open_source(broken))
    assert f"after {len(got)} items" in str(err.value) and 0 < len(got) < 200
    nan = tmp_path / "nan.json"  # bare NaN (json.dump's default) is read, not a malformed file: tests/test_sources_nan.py
    nan.write_text(json.dumps({"index": ["a"], "columns": ["structure", "y"], "data": [[{}, float("nan")]]}))
    (item,) = open_source(nan)
    assert check_target(item) == "label is NaN"
    empty = tmp_path / "empty.json"
    empty.write_text("")
    with pytest.raises(SourceError, match="empty.json: is empty"):
        open_source(empty)


def test_several_label_columns_need_target(shared_data: Path, tmp_path: Path) -> None:
    doc = load_matbench(shared_data / DEVSET)
    doc["columns"].append("band_gap")
    doc["data"] = [row + [0.0] for row in doc["data"]]
    path = write_matbench(tmp_path / "two.json.gz", doc)
    with pytest.raises(SourceError, match=r"two\.json\.gz: several label columns \['e_form', 'band_gap'\]; choose one with target="):
        open_source(path)
    assert open_source(path, target="band_gap").target_name == "band_gap"
    with pytest.raises(SourceError, match="target='gap' is not a label column"):
        open_source(path, target="gap")
    doc = {"data": doc["data"][:2], "columns": doc["columns"], "index": doc["index"][:2]}  # keys in another order
    src = open_source(write_matbench(tmp_path / "order.json.gz", doc), target="e_form")
    assert src.count() == 2 and [i.id for i in src] == doc["index"]
    doc["index"].append("mp-extra")
    src = open_source(write_matbench(tmp_path / "long.json.gz", doc), target="e_form")
    with pytest.raises(SourceError, match=r"long\.json\.gz: \"index\" has 3 entries but \"data\" only 2 rows"):
        list(src)


def test_folder_bad_items(shared_data: Path, tmp_path: Path) -> None:
    folder = tmp_path / "alignn"
    shutil.copytree(shared_data / ALIGNN, folder)
    rows = (folder / "id_prop.csv").read_text().splitlines()
    good = (folder / "POSCAR-JVASP-10.vasp").read_text()
    (folder / "POSCAR-bad.vasp").write_text(good.replace("direct", "direct\n0.0 0.0"))  # garbled coordinates
    (folder / "id_prop.csv").write_text("\n".join([*rows[:2], "POSCAR-JVASP-0.vasp,1.0", "POSCAR-bad.vasp,nan", *rows[2:]]) + "\n")
    items = list(open_source(folder))
    assert len(items) == 52 and items[1].id == rows[1].split(",")[0].removesuffix(".vasp")
    with pytest.raises(SourceError, match=r"'POSCAR-JVASP-0'.*POSCAR-JVASP-0\.vasp.*id_prop\.csv"):
        parse_structure(items[2])
    with pytest.raises(SourceError, match="'POSCAR-bad' \\(poscar\\): cannot build a structure"):
        parse_structure(items[3])
    assert check_target(items[3]) == "label is NaN"
    assert all(parse_structure(i) for i in items[4:8])


def test_truncated_extxyz(tmp_path: Path, devset_structures: list[tuple[str, Any, float]]) -> None:
    path = write_extxyz(tmp_path / "dev.extxyz", devset_structures[:5])
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-2]))
    got: list[RawItem] = []
    with pytest.raises(SourceError, match=r"dev\.extxyz: file is truncated after 4 frames"):
        got.extend(open_source(path))
    assert [i.id for i in got] == [r for r, _, _ in devset_structures[:4]]
    first_frame = lines[: 2 + int(lines[0])]
    path.write_text("".join(first_frame) + "xx\n")
    with pytest.raises(SourceError, match=rf"dev\.extxyz line {len(first_frame) + 1}: expected the atom count of frame 1, got 'xx'"):
        list(open_source(path))


def test_empty_sources(tmp_path: Path) -> None:
    write_matbench(tmp_path / "empty.json.gz", {"index": [], "columns": ["structure", "e_form"], "data": []})
    (tmp_path / "empty.json").write_text("[]")
    (tmp_path / "empty.extxyz").write_text("")
    for name in ("empty.json.gz", "empty.json", "empty.extxyz"):
        src = open_source(tmp_path / name)
        assert src.count() == 0 and list(src) == [], name
        assert src.identity()["sha256"]
    jarvis = tmp_path / "j.json"
    jarvis.write_text(json.dumps([{"jid": "J-1", "atoms": {"lattice_mat": 1}, "gap": "na"}, {"jid": "J-2", "gap": 2}]))
    items = list(open_source(jarvis, target="gap"))
    assert items[0].target is None and check_target(items[0]) == "label is missing"
    with pytest.raises(SourceError, match="'J-1' \\(jarvis\\)"):
        parse_structure(items[0])
    with pytest.raises(SourceError, match="'J-2'.*no 'atoms'"):
        parse_structure(items[1])


def test_folder_without_structures_says_what_is_read(shared_data: Path, tmp_path: Path) -> None:
    """An empty folder, one of .txt files, or an id_prop.csv alone: one line that reads right after `--data FOLDER`
    too (no fmt= / open_source advice), naming what the folder holds and the layouts that are read."""
    layouts = r"a data source is a folder of \*\.cif or POSCAR / \*\.vasp files with an id_prop\.csv.*matbench \.json\(\.gz\), a JARVIS \.json list or an \.extxyz file$"
    cases = {"empty": ({}, "it is empty"), "txt": ({"notes.txt": "x", "b.txt": "y"}, "2 other files, e.g. 'b.txt'"),
             "csv_only": ({"id_prop.csv": "JVASP-1,1.0\n"}, "only an id_prop.csv")}
    for name, (files, found) in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        for fname, text in files.items():
            (folder / fname).write_text(text)
        for call in (detect_format, open_source):
            with pytest.raises(SourceError, match=rf"{name}: the folder holds no CIF or POSCAR files \({re.escape(found)}\); {layouts}") as err:
                call(folder)
            assert "fmt=" not in str(err.value) and "open_source" not in str(err.value) and "\n" not in str(err.value)
    no_csv = tmp_path / "no_csv"
    shutil.copytree(shared_data / ALIGNN, no_csv, ignore=shutil.ignore_patterns("id_prop.csv"))
    with pytest.raises(SourceError, match=r"needs an id_prop\.csv .*\(e\.g\. 'POSCAR-JVASP-10\.vasp'\); write one$"):
        open_source(no_csv)
    res = run_cli("convert", str(tmp_path / "txt"), "--graph-kind", "radius", "--out", str(tmp_path / "store"))
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr
    assert any("the folder holds no CIF or POSCAR files (2 other files" in line and "extxyz" in line for line in lines), res.stderr
