"""``Source.iter_from``: a resumed conversion seeks instead of re-reading, and gets exactly what a full pass gives.

Every format is checked against ``islice(iter(source), k, None)`` (the base class's definition) on the real files in
shared/data, on JSON built to trip a bracket scanner (brackets, commas, quotes and backslashes inside strings, keys in
another order, chunk boundaries anywhere) and on damaged files.
"""

from __future__ import annotations

import gzip
import itertools
import json
import math
import tarfile
from pathlib import Path
from typing import Any

import ijson
import pytest

from colab_kit import sources
from colab_kit.sources import RawItem, Source, SourceError, json_files, open_source, seek

MATBENCH = ["mp_eform_cgcnn_3000/mp_eform_cgcnn_3000_matbench.json.gz", "matbench_phonons_1265/matbench_phonons.json.gz",
            "mp20_subset_1355/mp20_subset_1355_matbench.json.gz", "matsciml_devsets/mp_devset_200.json.gz",
            "matsciml_devsets/oqmd_devset_200.json.gz", "matsciml_devsets/alexandria_devset_98.json.gz",
            "matsciml_devsets/carolina_devset_100.json.gz"]
ALIGNN = "alignn_jarvis_bandgap_50"


def same(a: RawItem, b: RawItem) -> bool:
    labels = a.target == b.target or (a.target is not None and b.target is not None and math.isnan(a.target) and math.isnan(b.target))
    return (a.id, a.kind, a.error, a.payload) == (b.id, b.kind, b.error, b.payload) and labels


def assert_seeks_like_islice(src: Source, starts: list[int] | None = None) -> list[RawItem]:
    full = list(src)
    n = len(full)
    for k in starts if starts is not None else sorted({0, 1, 2, n // 3, n // 2, n - 1, n, n + 7}):
        got = list(src.iter_from(k))
        assert len(got) == len(full[k:]), (src, k)
        bad = next((i for i, (a, b) in enumerate(zip(got, full[k:])) if not same(a, b)), None)
        assert bad is None, f"{src} iter_from({k}): item {k + bad} differs: {got[bad]} != {full[k + bad]}"
    return full


def outcome(it: Any) -> tuple[list[RawItem], str | None]:
    got: list[RawItem] = []
    try:
        for item in it:
            got.append(item)
    except SourceError as exc:
        return got, str(exc)
    return got, None


@pytest.mark.parametrize("rel", MATBENCH)
def test_matbench_iter_from_is_islice(shared_data: Path, rel: str) -> None:
    assert_seeks_like_islice(open_source(shared_data / rel))


def test_jarvis_poscar_cif_extxyz_iter_from_is_islice(shared_data: Path, tmp_path: Path) -> None:
    assert_seeks_like_islice(open_source(shared_data / ALIGNN / "jarvis_format_derived.json"))
    assert_seeks_like_islice(open_source(shared_data / ALIGNN))
    with tarfile.open(shared_data / "mp_eform_cgcnn_3000" / "cifs.tar.gz") as tar:
        members = [m for m in tar.getmembers() if m.name.endswith("id_prop.csv")]
        rows = tar.extractfile(members[0]).read().decode().splitlines()[:120]
        folder = tmp_path / "cifs"
        folder.mkdir()
        (folder / "id_prop.csv").write_text("\n".join(rows) + "\n")
        names = {r.split(",")[0] + ".cif" for r in rows}
        for m in tar.getmembers():
            if Path(m.name).name in names:
                (folder / Path(m.name).name).write_bytes(tar.extractfile(m).read())
    (folder / f"{rows[5].split(',')[0]}.cif").unlink()  # a missing file is a bad item, in both paths
    assert_seeks_like_islice(open_source(folder))
    _write_extxyz(shared_data / MATBENCH[3], tmp_path / "dev.extxyz", 40)
    assert_seeks_like_islice(open_source(tmp_path / "dev.extxyz"))


def test_seek_builds_no_skipped_row(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rows before ``start`` are never parsed: ijson reads a document spliced at row ``start``."""
    calls: list[tuple[Any, int]] = []
    real = json_files.stream_json

    def spy(path: str, fn: str, *prefix: str, **kw: Any) -> Any:
        calls.append((prefix, kw.get("stream"), kw.get("first", 0)))
        return real(path, fn, *prefix, **kw)

    monkeypatch.setattr(json_files, "stream_json", spy)
    src = open_source(shared_data / MATBENCH[0])
    first = next(src.iter_from(2500))
    assert same(first, next(itertools.islice(iter(src), 2500, None)))
    data = [c for c in calls if c[0] == ("data.item",)]
    assert isinstance(data[0][1], seek._Spliced) and data[0][2] == 2500


def test_tricky_json_every_chunk_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Brackets, commas, quotes and backslashes inside strings and keys; data before index; chunks of a few bytes
    (so strings, escapes and the "data" key are cut anywhere): the seek still lands on row k."""
    ids, rows = _tricky_rows(23)
    docs = {"index_first.json": {"index": ids, "columns": ["structure", "y"], "data": rows},
            "data_first.json": {"data": rows, "note": "data: [ , ] ", "columns": ["structure", "y"], "index": ids}}
    for name, doc in docs.items():
        (tmp_path / name).write_text(json.dumps(doc, indent=1 if name.startswith("data") else None))
        with gzip.open(tmp_path / (name + ".gz"), "wt") as f:
            json.dump(doc, f)
    (tmp_path / "jarvis.json").write_text(json.dumps([{"jid": i, "atoms": r[0], "gap": r[1]} for i, r in zip(ids, rows)]))
    for size in (1, 7, 1 << 20):
        monkeypatch.setattr(seek, "_PLAIN_CHUNK", size)
        monkeypatch.setattr(seek, "_CHUNK_IN", max(size // 4, 1))
        for name in (*docs, *(n + ".gz" for n in docs), "jarvis.json"):
            full = assert_seeks_like_islice(open_source(tmp_path / name), [1, 2, 7, 22, 23, 30])
            assert [i.id for i in full] == ids and full[4].payload == rows[4][0], name
            key, prefix = (None, "item") if name == "jarvis.json" else ("data", "data.item")
            for k in (1, 5, 11, 22, 23):  # the seek itself lands (no fall back to a full pass)
                stream, skipped = seek.seek_element(str(tmp_path / name), key, k)
                with stream:
                    after = list(ijson.items(stream, prefix))
                assert skipped == k and [r if key else [r["atoms"], r["gap"]] for r in after] == rows[k:], (name, k, size)


def _tricky_rows(n: int) -> tuple[list[str], list[list[Any]]]:
    texts = ['a]b', '{[,', 'q"uote', 'back\\slash', 'end\\', '\\"]', '"[{', 'NaN-ish', ',', '', ']]}}', 'x' * 70]
    ids = [f"id-{i}-{texts[i % len(texts)]}" for i in range(n)]
    rows = []
    for i in range(n):
        t = texts[i % len(texts)]
        structure = {"lattice": {"matrix": [[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]}, "label": t, t: [t, {"k": t}],
                     "sites": [{"species": [{"element": "N", "occu": 1}], "abc": [0.0, 0.5, 0.25], "properties": {"p": t}}]}
        rows.append([structure, float(i) if i % 5 else [1, "[", {"a": t}]])  # some labels are not numbers
    return ids, rows


def test_truncated_gzip_same_items_and_error(shared_data: Path, tmp_path: Path) -> None:
    data = (shared_data / MATBENCH[0]).read_bytes()
    cut = tmp_path / "cut.json.gz"
    cut.write_bytes(data[: len(data) // 2])
    src = open_source(cut)
    got, error = outcome(iter(src))
    assert error is not None and f"truncated after {len(got)} items" in error
    for k in (1, len(got) // 2, len(got) - 1, len(got), len(got) + 10):
        sought, err = outcome(src.iter_from(k))
        assert err == error, k
        assert len(sought) == len(got[k:]) and all(same(a, b) for a, b in zip(sought, got[k:])), k


def test_damaged_after_the_seek_point(shared_data: Path, tmp_path: Path) -> None:
    """A gzip that is corrupted (not cut) past row k, and a plain file with a syntax error past row k."""
    raw = gzip.decompress((shared_data / MATBENCH[3]).read_bytes())
    comp = bytearray(gzip.compress(raw, mtime=0))
    comp[len(comp) * 3 // 4] ^= 0xFF
    (tmp_path / "flip.json.gz").write_bytes(bytes(comp))
    broken = raw.decode()
    at = broken.index('"lattice"', len(broken) * 2 // 3)
    (tmp_path / "syntax.json").write_text(broken[:at] + "lattice" + broken[at + 9:])
    for name in ("flip.json.gz", "syntax.json"):
        src = open_source(tmp_path / name)
        got, error = outcome(iter(src))
        assert error is not None and 10 < len(got) < 200, name
        for k in (1, 50, len(got)):
            sought, err = outcome(src.iter_from(k))
            assert len(sought) == len(got[k:]) and all(same(a, b) for a, b in zip(sought, got[k:])), (name, k)
            head = error.split(" in the JSON text before byte")[0].split(" (")[0]
            assert err is not None and err.startswith(head), (name, k, err, error)


def test_row_count_mismatches_are_reported_the_same(shared_data: Path, tmp_path: Path) -> None:
    raw = json.loads(gzip.decompress((shared_data / MATBENCH[3]).read_bytes()))
    long_index = {**raw, "index": raw["index"] + ["extra-1", "extra-2"]}
    short_index = {**raw, "index": raw["index"][:150]}
    for name, doc in (("long.json", long_index), ("short.json", short_index)):
        (tmp_path / name).write_text(json.dumps(doc))
        src = open_source(tmp_path / name)
        got, error = outcome(iter(src))
        assert error is not None, name
        for k in (1, 100, 149, 150, 151, 199, 200, 201, 250):
            sought, err = outcome(src.iter_from(k))
            assert err == error and len(sought) == len(got[k:]), (name, k, err)


def test_bare_nan_after_and_before_the_seek_point(shipped_data: Path, tmp_path: Path) -> None:
    with gzip.open(shipped_data, "rt") as f:
        doc = json.load(f)
    doc = {"index": doc["index"][:300], "columns": doc["columns"], "data": doc["data"][:300]}
    for i in (10, 150, 290):
        doc["data"][i][1] = float("nan")
    doc["data"][200][0]["sites"][0]["abc"][1] = float("inf")
    (tmp_path / "nan.json").write_text(json.dumps(doc))
    src = open_source(tmp_path / "nan.json")
    full = assert_seeks_like_islice(src, [1, 10, 11, 100, 151, 200, 201, 299, 300])
    assert [i for i, item in enumerate(full) if item.target is not None and math.isnan(item.target)] == [10, 150, 290]
    with pytest.raises(SourceError, match=r"bare Infinity at sites\[0\]\.abc\[1\]"):
        sources.parse_structure(full[200])


def test_folders_and_extxyz_skip_without_reading(shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A structure folder never opens the files of the rows it skips; extxyz never parses a skipped frame."""
    from colab_kit.sources import extxyz

    folder = open_source(shared_data / ALIGNN)
    names = [i.id for i in folder]
    read: list[str] = []
    real_read = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **kw: read.append(self.stem) or real_read(self, *a, **kw))
    assert [i.id for i in folder.iter_from(45)] == names[45:] and read == names[45:]
    monkeypatch.undo()

    _write_extxyz(shared_data / MATBENCH[3], tmp_path / "dev.extxyz", 40)
    src = open_source(tmp_path / "dev.extxyz")
    parsed: list[str] = []
    real_info = extxyz.ExtxyzSource._info
    monkeypatch.setattr(extxyz.ExtxyzSource, "_info", staticmethod(lambda comment: parsed.append(comment) or real_info(comment)))
    got = list(src.iter_from(30))
    assert len(parsed) == 10  # the comment lines of the 10 frames it gives, no other
    monkeypatch.undo()
    assert [i.id for i in got] == [i.id for i in itertools.islice(open_source(tmp_path / "dev.extxyz"), 30, None)]


def test_multi_member_gzip(shared_data: Path, tmp_path: Path) -> None:
    """A gzip of several members (``cat a.gz b.gz``), cut inside a row: the seek reads on across members."""
    raw = gzip.decompress((shared_data / MATBENCH[3]).read_bytes())
    cuts = [0, len(raw) // 3 + 17, 2 * len(raw) // 3 + 5, len(raw)]
    path = tmp_path / "members.json.gz"
    path.write_bytes(b"".join(gzip.compress(raw[a:b], mtime=0) for a, b in zip(cuts, cuts[1:])))
    assert_seeks_like_islice(open_source(path), [1, 60, 66, 67, 133, 134, 199, 200])
    stream, skipped = seek.seek_element(str(path), "data", 150)  # the seek itself, not a fall back to a full pass
    stream.close()
    assert skipped == 150


def _write_extxyz(source: Path, out: Path, n: int) -> Path:
    """The first ``n`` real structures of ``source`` as an extxyz file (id and label in each frame's info)."""
    from ase.io import write
    from pymatgen.io.ase import AseAtomsAdaptor

    frames = []
    for item in itertools.islice(open_source(source), n):
        atoms = AseAtomsAdaptor.get_atoms(sources.parse_structure(item))
        atoms.info.update({"material_id": item.id, "e_form": item.target})
        frames.append(atoms)
    write(out, frames, format="extxyz")
    return out
