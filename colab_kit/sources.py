"""Streaming readers of labelled crystal structures: cheap raw items out, parsing in the workers.

The main process streams small picklable :class:`RawItem` s in a fixed order (never a whole file);
:func:`parse_structure` builds the pymatgen ``Structure`` inside a worker. A bad record is a bad item
(its ``error`` is raised by :func:`parse_structure`), never the end of the stream; a damaged file raises
:class:`SourceError` only after every good item before the damage.
"""

from __future__ import annotations

import csv
import functools
import gzip
import hashlib
import io
import itertools
import math
import os
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from colab_kit.errors import ColabKitError

if TYPE_CHECKING:
    from pymatgen.core import Structure

FORMATS: tuple[str, ...] = ("matbench", "cif_dir", "poscar_dir", "extxyz", "jarvis", "memory")
KINDS = ("pmg_dict", "cif", "poscar", "jarvis", "extxyz", "structure")
_HOW_TO_CHOOSE = f"pass fmt= one of {FORMATS[:-1]} to open_source"
_MISSING_LABELS = frozenset({"", "na", "n/a", "none", "null"})
_STRUCTURE_SUFFIXES = (".cif", ".vasp", ".poscar")
_DIR_SUFFIXES = {"cif_dir": (".cif",), "poscar_dir": (".vasp", ".poscar")}
_ID_KEYS = ("jid", "id", "material_id")
_EXTXYZ_RESERVED = frozenset({"Lattice", "Properties", "pbc"})
_DAMAGED = (EOFError, zlib.error, gzip.BadGzipFile)
_NOT_ELEMENTS = ("end_map", "end_array", "map_key")  # ijson events that do not start an array element


class SourceError(ColabKitError, ValueError):
    """Input that cannot be read as it is; the message names the file or item, the value and the fix."""


@dataclass(frozen=True)
class RawItem:
    """One record as the main process streams it: cheap to pickle, parsed by :func:`parse_structure`.

    Attributes:
        id: material id, file stem, JARVIS id or ``str(index)``.
        payload: a ``Structure.as_dict()`` dict, CIF/POSCAR text, a JARVIS Atoms dict, one extxyz frame as
            text, or a pymatgen ``Structure`` (in-memory source).
        target: the label; ``nan`` stays ``nan``, a missing label is ``None``.
        kind: one of :data:`KINDS`, says how to parse ``payload``.
        error: why the record is unusable, found while streaming (a missing file, a label that is not a
            number); :func:`parse_structure` raises it, so it is recorded like any other bad item.
    """

    id: str
    payload: Any
    target: float | None
    kind: str
    error: str | None = None


def check_target(item: RawItem) -> str | None:
    """Why the item's label cannot be trained on (e.g. ``"label is NaN"``), or None when it is usable."""
    if item.target is None:
        return item.error if item.error and item.error.startswith("label") else "label is missing"
    if math.isnan(item.target):
        return "label is NaN"
    return "label is infinite" if math.isinf(item.target) else None


def parse_structure(item: RawItem) -> Structure:
    """Builds the pymatgen Structure of one item; runs in the conversion workers.

    Raises:
        SourceError: naming ``item.id`` and the reason, for a record found bad while streaming or any
            failure of its parser.
    """
    if item.error:
        raise SourceError(f"item {item.id!r}: {item.error}")
    try:
        return _build(item.kind, item.payload)
    except Exception as exc:  # any parser failure is this item's failure, reported with its id
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        raise SourceError(f"item {item.id!r} ({item.kind}): cannot build a structure: {reason}; fix or drop this record") from exc


def _build(kind: str, payload: Any) -> Structure:
    from pymatgen.core import Structure

    if kind == "pmg_dict":
        missing = [k for k in ("lattice", "sites") if k not in payload] if isinstance(payload, dict) else ["a mapping"]
        if missing:
            raise ValueError(f"structure dict lacks {missing}; expected Structure.as_dict()")
        return Structure.from_dict(payload)
    if kind in ("cif", "poscar"):
        return Structure.from_str(payload, fmt=kind)
    if kind == "jarvis":
        from jarvis.core.atoms import Atoms

        atoms = Atoms.from_dict(payload)  # then what Atoms.pymatgen_converter() does, which prints and returns None on error
        return Structure(atoms.lattice_mat, atoms.elements, atoms.frac_coords, coords_are_cartesian=False)
    if kind == "extxyz":
        from ase.io import read
        from pymatgen.io.ase import AseAtomsAdaptor

        atoms = read(io.StringIO(payload), format="extxyz")
        if atoms.cell.rank < 3:
            raise ValueError('frame has no 3-D cell; write it with Lattice="..." pbc="T T T"')
        return AseAtomsAdaptor.get_structure(atoms)
    if kind == "structure" and isinstance(payload, Structure):
        return payload
    raise ValueError(f"kind {kind!r} with a {type(payload).__name__} payload; kinds are {KINDS}")


def _to_target(value: Any) -> tuple[float | None, str | None]:
    """(label, None); (None, None) when it is missing; (None, reason) when it is not a number."""
    if value is None or (isinstance(value, str) and value.strip().lower() in _MISSING_LABELS):
        return None, None
    if not isinstance(value, bool):
        try:
            return float(value), None
        except (TypeError, ValueError):
            pass
    return None, f"label {value!r:.60} is not a number; fix it in the source or drop the record"


# ---------------------------------------------------------------- streaming JSON


@functools.lru_cache(maxsize=1)
def _ijson() -> Any:
    import ijson

    try:
        return ijson.get_backend("yajl2_c")
    except ImportError:  # no compiled backend on this platform: ijson's own choice
        return ijson


class _GzipFile(gzip.GzipFile):
    """``read`` returns what one decompression step gives: a truncated file loses no complete item before the cut."""

    def read(self, size: int | None = -1) -> bytes:
        return self.read1(-1 if size is None else size)


def _open_binary(path: str) -> IO[bytes]:
    """Opens a file for reading, decompressed when it is gzip (told by its magic bytes, not its name)."""
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    return _GzipFile(path, "rb") if gz else open(path, "rb")


def _failure(path: str, exc: BaseException, done: str, pos: int) -> SourceError:
    msg = " ".join(str(exc).split())[:300]
    if isinstance(exc, EOFError) or "premature EOF" in msg or "Incomplete JSON" in msg:
        return SourceError(f"{path}: file is truncated {done} ({msg}); re-download it")
    if isinstance(exc, _DAMAGED):
        return SourceError(f"{path}: file is corrupted {done} ({type(exc).__name__}: {msg}); re-download it")
    hint = "; JSON has no NaN/Infinity: write missing labels as null" if "NaN" in msg or "Infinity" in msg else ""
    return SourceError(f"{path}: malformed JSON {done}, in the JSON text before byte {pos}: {msg}{hint}; fix or re-download the file")


def _json(path: str, fn: str, *prefix: str, what: str = "items") -> Iterator[Any]:
    """ijson ``items``/``parse`` over a (gzip) file; a decoding failure becomes a SourceError saying how far it got."""
    from ijson import JSONError

    with _open_binary(path) as f:
        n = 0
        try:
            for obj in getattr(_ijson(), fn)(f, *prefix, use_float=True):
                yield obj
                n += 1
        except (*_DAMAGED, JSONError) as exc:
            raise _failure(path, exc, f"after {n} {what}", f.tell()) from exc


def _count(path: str, prefix: str) -> int:
    """Elements of the array at ``prefix``, from parse events alone (no objects are built)."""
    return sum(1 for p, event, _ in _json(path, "parse", what="JSON events") if p == prefix and event not in _NOT_ELEMENTS)


def _first_char(path: str) -> str:
    """The first non-blank character of the (decompressed) file; '' when it is empty."""
    try:
        with _open_binary(path) as f:
            while chunk := f.read(4096):
                if text := chunk.lstrip(b" \t\r\n\xef\xbb\xbf"):
                    return chr(text[0])
            return ""
    except _DAMAGED as exc:
        raise _failure(path, exc, "after 0 items", 0) from exc


def _sha256_file(path: str | Path) -> Any:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h


# ---------------------------------------------------------------- sources


class Source:
    """A labelled structure collection from :func:`open_source`; iterate it for :class:`RawItem` s.

    Every ``iter()`` streams from the beginning, in the same order.
    """

    format = ""

    def __init__(self, path: str | None, target_name: str) -> None:
        self.path, self.target_name = path, target_name
        self._hashed: tuple[int, int, str] | None = None

    def identity(self) -> dict[str, Any]:
        """JSON-able description that names the graph store: format, target name, content fingerprint."""
        return {"format": self.format, "target_name": self.target_name, **self._fingerprint()}

    def _fingerprint(self) -> dict[str, Any]:
        st = os.stat(self.path)
        if self._hashed is None or self._hashed[:2] != (st.st_size, st.st_mtime_ns):  # rehash only a changed file
            self._hashed = (st.st_size, st.st_mtime_ns, _sha256_file(self.path).hexdigest())
        return {"sha256": self._hashed[2], "bytes": st.st_size}

    def __iter__(self) -> Iterator[RawItem]:
        raise NotImplementedError

    def count(self) -> int | None:
        """Number of items, learnt without parsing structures; None where that is not cheap."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(path={self.path!r}, format={self.format!r}, target_name={self.target_name!r})"


class _Matbench(Source):
    format = "matbench"

    def __init__(self, path: str, target: str | None) -> None:
        layout = "expected a JSON object {index, columns, data}"
        if _first_char(path) != "{":
            raise SourceError(f"{path}: not a matbench file ({layout}); {_HOW_TO_CHOOSE}")
        columns, self._n_index = self._header(path)
        if columns is None:
            raise SourceError(f"{path}: not a matbench file: no \"columns\" ({layout}); {_HOW_TO_CHOOSE}")
        self._columns = [str(c) for c in columns]
        self._si = next((i for i, c in enumerate(self._columns) if "structure" in c.lower()), None)
        if self._si is None:
            raise SourceError(f"{path}: no structure column in columns {self._columns}; matbench has ['structure', '<target>']")
        labels = [c for i, c in enumerate(self._columns) if i != self._si]
        if target is not None and target not in labels:
            raise SourceError(f"{path}: target={target!r} is not a label column; choose one of {labels}")
        if target is None and len(labels) > 1:
            raise SourceError(f"{path}: several label columns {labels}; choose one with target=")
        name = target if target is not None else (labels[0] if labels else "")
        self._ti = self._columns.index(name) if name else None
        super().__init__(path, name)

    @staticmethod
    def _header(path: str) -> tuple[list[Any] | None, int | None]:
        """"columns" and the length of "index" from parse events; stops before "data" unless it comes first."""
        columns: list[Any] | None = None
        n_index: int | None = None
        ended: set[str] = set()
        for prefix, event, value in _json(path, "parse", what="JSON events"):
            if event == "start_array" and prefix == "columns":
                columns = []
            elif event == "start_array" and prefix == "index":
                n_index = 0
            elif event == "end_array" and prefix in ("columns", "index"):
                ended.add(prefix)
                if len(ended) == 2:
                    break
            elif prefix == "columns.item" and columns is not None:
                columns.append(value)
            elif prefix == "index.item" and n_index is not None and event not in _NOT_ELEMENTS:
                n_index += 1
        return columns, n_index

    def count(self) -> int:
        return self._n_index if self._n_index is not None else _count(self.path, "data.item")

    def __iter__(self) -> Iterator[RawItem]:
        # ids come from a second reader of "index" in step with "data": no memory for them, in any key order
        ids = _json(self.path, "items", "index.item", what="index entries") if self._n_index is not None else None
        rows = 0
        try:
            for rows, row in enumerate(_json(self.path, "items", "data.item"), 1):
                rid = rows - 1 if ids is None else next(ids, ids)
                if rid is ids:
                    raise SourceError(f"{self.path}: \"data\" has more rows than the {self._n_index} \"index\" entries; re-download the file")
                if not isinstance(row, list) or len(row) != len(self._columns):
                    yield RawItem(str(rid), None, None, "pmg_dict", f"data row {str(row)[:80]!r} does not match columns {self._columns}")
                    continue
                target, error = _to_target(row[self._ti]) if self._ti is not None else (None, None)
                yield RawItem(str(rid), row[self._si], target, "pmg_dict", error)
            if ids is not None and rows < self._n_index:  # count, not another next(): that would scan to the end
                raise SourceError(f"{self.path}: \"index\" has {self._n_index} entries but \"data\" only {rows} rows; re-download the file")
        finally:
            if ids is not None:
                ids.close()


class _Jarvis(Source):
    format = "jarvis"

    def __init__(self, path: str, target: str | None) -> None:
        if _first_char(path) != "[":
            raise SourceError(f"{path}: not a JARVIS file (expected a JSON list of records with 'atoms'); {_HOW_TO_CHOOSE}")
        if target is None:
            records = _json(path, "items", "item", what="records")
            first = next(records, None)
            records.close()
            labels = [k for k, v in first.items() if k not in (*_ID_KEYS, "atoms") and _to_target(v)[1] is None] if isinstance(first, dict) else []
            if len(labels) > 1:
                raise SourceError(f"{path}: several label keys {labels} in the first record; choose one with target=")
            target = labels[0] if labels else ""
        super().__init__(path, target)

    def count(self) -> int:
        return _count(self.path, "item")

    def __iter__(self) -> Iterator[RawItem]:
        for pos, rec in enumerate(_json(self.path, "items", "item", what="records")):
            rec = rec if isinstance(rec, dict) else {}
            rid = next((str(rec[k]) for k in _ID_KEYS if rec.get(k) is not None), str(pos))
            target, error = _to_target(rec.get(self.target_name)) if self.target_name else (None, None)
            if not isinstance(rec.get("atoms"), dict):
                error = f"record has no 'atoms' mapping (keys {sorted(rec)[:8]}); expected jarvis Atoms.to_dict() under 'atoms'"
            yield RawItem(rid, rec.get("atoms"), target, "jarvis", error)


class _Extxyz(Source):
    format = "extxyz"

    def __init__(self, path: str, target: str | None) -> None:
        super().__init__(path, target or "")
        if target is None:  # the first float in the first frame's info, e.g. energy
            first = next(self._frames(), None)
            info = self._info(first[1])[0] if first else {}
            self.target_name = next((k for k, v in info.items() if isinstance(v, float) and k not in _EXTXYZ_RESERVED), "")

    def _frames(self) -> Iterator[tuple[int, str, str]]:
        """(frame index, comment line, frame text), split at the atom-count lines without parsing atoms."""
        index = line_no = 0
        try:
            with io.TextIOWrapper(_open_binary(self.path), encoding="utf-8", errors="replace") as f:
                for line in f:
                    line_no += 1
                    if not line.strip():
                        continue
                    try:
                        n = int(line)
                    except ValueError:
                        raise SourceError(f"{self.path} line {line_no}: expected the atom count of frame {index}, got {line.strip()[:60]!r}; "
                                          "the file is not extended XYZ, or the frame before has the wrong number of atom lines") from None
                    lines = [line, *itertools.islice(f, n + 1)]
                    line_no += len(lines) - 1
                    if len(lines) < n + 2:
                        raise SourceError(f"{self.path}: file is truncated after {index} frames (frame {index} declares {n} atoms, "
                                          f"{max(len(lines) - 2, 0)} follow); re-download or rewrite it")
                    yield index, lines[1], "".join(lines)
                    index += 1
        except _DAMAGED as exc:
            raise _failure(self.path, exc, f"after {index} frames", line_no) from exc

    @staticmethod
    def _info(comment: str) -> tuple[dict[str, Any], str | None]:
        from ase.io.extxyz import key_val_str_to_dict

        try:
            return key_val_str_to_dict(comment), None
        except (ValueError, KeyError, IndexError, TypeError, SyntaxError) as exc:  # this frame's problem, not the file's
            return {}, f"cannot read the comment line {comment.strip()[:60]!r}: {exc}"

    def count(self) -> int:
        return sum(1 for _ in self._frames())

    def __iter__(self) -> Iterator[RawItem]:
        for index, comment, text in self._frames():
            info, error = self._info(comment)
            rid = next((str(info[k]) for k in ("id", "material_id") if k in info), str(index))
            target, label_error = _to_target(info.get(self.target_name)) if self.target_name else (None, None)
            yield RawItem(rid, text, target, "extxyz", error or label_error)


class _Folder(Source):
    """``cif_dir`` / ``poscar_dir``: structure files named by the first column of ``id_prop.csv``."""

    def __init__(self, path: str, fmt: str, target: str | None) -> None:
        self.format, self._csv = fmt, Path(path) / "id_prop.csv"
        if not self._csv.is_file():
            raise SourceError(f"{path}: no id_prop.csv (lines 'id,target', no header) in this folder; write one next to the structure files")
        super().__init__(path, target or "target")

    def _candidates(self, name: str) -> list[str]:
        return [name, *(name + s for s in _DIR_SUFFIXES[self.format])]

    def _resolve(self, name: str) -> Path | None:
        return next((p for c in self._candidates(name) if (p := Path(self.path) / c).is_file()), None)

    def _rows(self) -> Iterator[list[str]]:
        with open(self._csv, newline="", encoding="utf-8-sig") as f:
            for i, row in enumerate(csv.reader(f)):
                if not row or not row[0].strip():
                    continue
                if i == 0 and len(row) > 1 and _to_target(row[1])[1] and self._resolve(row[0].strip()) is None:
                    continue  # a header line such as "id,target"
                yield row

    def count(self) -> int:
        return sum(1 for _ in self._rows())

    def __iter__(self) -> Iterator[RawItem]:
        for row in self._rows():
            name = row[0].strip()
            stem = next((name.removesuffix(s) for s in _STRUCTURE_SUFFIXES if name.endswith(s)), name)
            target, error = _to_target(row[1]) if len(row) > 1 else (None, None)
            path = self._resolve(name)
            if path is None:
                error = f"no structure file for id {name!r} in {self.path} (tried {self._candidates(name)}); add it or remove its row from id_prop.csv"
                yield RawItem(stem, None, target, "cif" if self.format == "cif_dir" else "poscar", error)
            else:
                text = path.read_text(encoding="utf-8", errors="replace")
                yield RawItem(stem, text, target, "cif" if path.suffix.lower() == ".cif" else "poscar", error)

    def _fingerprint(self) -> dict[str, Any]:
        # id_prop.csv by content, structure files by (name, size): cheap, and changes on add / remove / resize
        h = _sha256_file(self._csv)
        with os.scandir(self.path) as entries:
            files = sorted((e.name, e.stat().st_size) for e in entries if e.is_file() and _is_structure_file(e.name))
        for name, size in files:
            h.update(f"\0{name}\0{size}".encode())
        return {"sha256": h.hexdigest(), "files": len(files)}


def _is_structure_file(name: str) -> bool:
    return name.lower().endswith(_STRUCTURE_SUFFIXES) or name.startswith(("POSCAR", "CONTCAR"))


class _Memory(Source):
    format = "memory"

    def __init__(self, items: Iterable[Any], target: str | None, name: str) -> None:
        from pymatgen.core import Structure

        super().__init__(None, target or "target")
        self.name = name
        self._rows: list[tuple[str, Structure, Any]] = []  # kept, so that a one-shot iterator re-iterates too
        for i, x in enumerate(items):
            if isinstance(x, Structure):
                self._rows.append((str(i), x, x.properties.get(target) if target else None))
            elif isinstance(x, tuple) and len(x) == 3 and isinstance(x[1], Structure):
                self._rows.append((str(x[0]), x[1], x[2]))
            else:
                raise SourceError(f"in-memory source {name!r}: item {i} is a {type(x).__name__}; pass pymatgen Structures or (id, Structure, target) tuples")

    def count(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[RawItem]:
        for rid, structure, value in self._rows:
            target, error = _to_target(value)
            yield RawItem(rid, structure, target, "structure", error)

    def _fingerprint(self) -> dict[str, Any]:
        import numpy as np

        h = hashlib.sha256()
        for rid, s, value in self._rows:  # ids, labels and the structures themselves
            h.update(f"\0{rid}\0{value!r}\0".encode())
            for array in (s.lattice.matrix, s.frac_coords):
                h.update(np.ascontiguousarray(array, dtype=np.float64).tobytes())
            h.update(np.asarray(s.atomic_numbers, dtype=np.int64).tobytes())
        return {"name": self.name, "sha256": h.hexdigest(), "count": len(self._rows)}


# ---------------------------------------------------------------- entry points


def detect_format(path: str | os.PathLike[str]) -> str:
    """Tells the format of a file or folder from its name and first bytes.

    Raises:
        SourceError: the path does not exist or fits no format (the message lists them and ``fmt=``).
    """
    p = Path(path)
    if not p.exists():
        raise SourceError(f"{p}: no such file or folder; check the path (on Colab, mount Drive first)")
    if p.is_dir():
        if not (p / "id_prop.csv").is_file():
            raise SourceError(f"{p}: a structure folder needs an id_prop.csv (lines 'id,target', no header) beside its *.cif / POSCAR files; write one, or {_HOW_TO_CHOOSE}")
        with os.scandir(p) as entries:
            first = next((e.name for e in entries if e.is_file() and _is_structure_file(e.name)), None)
        if first is not None:
            return "cif_dir" if first.lower().endswith(".cif") else "poscar_dir"
        if _Folder(str(p), "cif_dir", None).count() == 0:
            return "cif_dir"  # nothing listed and nothing to list: an empty data set, not a mistake
        raise SourceError(f"{p}: id_prop.csv lists structures but the folder has no *.cif, *.vasp or POSCAR files; add them, or {_HOW_TO_CHOOSE}")
    name = p.name.lower().removesuffix(".gz")
    if name.endswith((".extxyz", ".xyz")):
        return "extxyz"
    if name.endswith(".json"):
        first_char = _first_char(str(p))
        if first_char and first_char in "[{":
            return "jarvis" if first_char == "[" else "matbench"
        raise SourceError(f"{p}: {'starts with ' + repr(first_char) + ', not a JSON object or list' if first_char else 'is empty'}; re-download it")
    raise SourceError(f"{p}: cannot tell the format from the name {p.name!r}; supported: matbench (*.json[.gz] with index/columns/data), "
                      "jarvis (*.json[.gz], a list of records), extxyz (*.extxyz, *.xyz), cif_dir / poscar_dir (a folder with id_prop.csv); "
                      f"or {_HOW_TO_CHOOSE}")


def open_source(source: str | os.PathLike[str] | Iterable[Any], fmt: str | None = None, target: str | None = None,
                name: str | None = None) -> Source:
    """Opens a file, a folder or in-memory structures as a :class:`Source`; reads headers only.

    Args:
        source: a path (matbench json[.gz], JARVIS json, extxyz, a folder with id_prop.csv), or an iterable of
            pymatgen Structures or ``(id, Structure, target)`` tuples (a one-shot iterator is kept as a list).
        fmt: one of :data:`FORMATS`; detected from the path when None.
        target: the label: matbench column, JARVIS key, extxyz info key or ``Structure.properties`` key.
            Needed only where the source has several; for id_prop.csv it only names the second column.
        name: names an in-memory source in :meth:`Source.identity` (required for one).

    Raises:
        SourceError: the path does not exist, the format is unknown, or the header does not fit it.
    """
    if fmt is not None and fmt not in FORMATS:
        raise SourceError(f"fmt={fmt!r} is not a supported format; choose one of {FORMATS}")
    if not isinstance(source, (str, os.PathLike)):
        from pymatgen.core import Structure

        if isinstance(source, Structure) or fmt not in (None, "memory"):
            raise SourceError(f"open_source got a {type(source).__name__} with fmt={fmt!r}; pass a path, or a list of Structures (fmt='memory')")
        if not name:
            raise SourceError("in-memory structures need a name for the store: open_source(structures, name='my_set')")
        return _Memory(source, target, name)
    path = os.fspath(source)
    if not os.path.exists(path):
        raise SourceError(f"{path}: no such file or folder; check the path (on Colab, mount Drive first)")
    fmt = fmt or detect_format(path)
    if fmt == "memory" or (fmt in _DIR_SUFFIXES) != os.path.isdir(path):
        kind = "a folder with id_prop.csv" if fmt in _DIR_SUFFIXES else "a file" if fmt != "memory" else "Python objects"
        raise SourceError(f"{path}: fmt={fmt!r} reads {kind}, not this path; {_HOW_TO_CHOOSE}")
    if fmt in _DIR_SUFFIXES:
        return _Folder(path, fmt, target)
    return {"matbench": _Matbench, "jarvis": _Jarvis, "extxyz": _Extxyz}[fmt](path, target)
