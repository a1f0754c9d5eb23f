"""``cif_dir`` / ``poscar_dir``: a folder of structure files listed, with their labels, in ``id_prop.csv``."""

from __future__ import annotations

import csv
import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from colab_kit.sources.base import Source
from colab_kit.sources.records import RawItem, SourceError, to_target
from colab_kit.util.files import hash_file

_STRUCTURE_SUFFIXES = (".cif", ".vasp", ".poscar")
#: a structure file larger than this is refused unread: a CIF of a 10,000-atom cell is ~1 MB
MAX_FILE_BYTES = 64 << 20
DIR_SUFFIXES = {"cif_dir": (".cif",), "poscar_dir": (".vasp", ".poscar")}
LAYOUTS = ("a folder of *.cif or POSCAR / *.vasp files with an id_prop.csv ('id,target' lines), "
            "a matbench .json(.gz), a JARVIS .json list or an .extxyz file")


class FolderSource(Source):
    """``cif_dir`` / ``poscar_dir``: structure files named by the first column of ``id_prop.csv``."""

    def __init__(self, path: str, fmt: str, target: str | None) -> None:
        self.format, self._csv = fmt, Path(path) / "id_prop.csv"
        if not self._csv.is_file():
            raise SourceError(f"{path}: no id_prop.csv (lines 'id,target', no header) in this folder; write one next to the structure files")
        # the label's name is only its name here (id_prop.csv has no header to choose a column from): it stays out
        # of the store's identity, so naming it (--set target=formation_energy_per_atom) later resumes the same store
        super().__init__(path, "target")
        self.label = target or "target"

    def _candidates(self, name: str) -> list[str]:
        return [name, *(name + s for s in DIR_SUFFIXES[self.format])]

    def _resolve(self, name: str) -> Path | None:
        """The structure file an id_prop.csv row names: a file inside this folder, never outside it (a row such as
        ``../../etc/passwd`` or an absolute path names nothing)."""
        root = Path(self.path).resolve()
        for c in self._candidates(name):
            p = (Path(self.path) / c).resolve()
            if p.is_file() and p.is_relative_to(root):
                return p
        return None

    def _rows(self) -> Iterator[list[str]]:
        with open(self._csv, newline="", encoding="utf-8-sig") as f:
            for i, row in enumerate(csv.reader(f)):
                if not row or not row[0].strip():
                    continue
                if i == 0 and len(row) > 1 and to_target(row[1])[1] and self._resolve(row[0].strip()) is None:
                    continue  # a header line such as "id,target"
                yield row

    def count(self) -> int:
        return sum(1 for _ in self._rows())

    def __iter__(self) -> Iterator[RawItem]:
        return self.iter_from(0)

    def iter_from(self, start: int) -> Iterator[RawItem]:
        """The items from index ``start`` on: rows of id_prop.csv before it are passed over, their files never read."""
        for row in itertools.islice(self._rows(), max(start, 0), None):
            name = row[0].strip()
            stem = next((name.removesuffix(s) for s in _STRUCTURE_SUFFIXES if name.endswith(s)), name)
            target, error = to_target(row[1]) if len(row) > 1 else (None, None)
            path = self._resolve(name)
            kind = "cif" if self.format == "cif_dir" else "poscar"
            if path is None:
                error = f"no structure file for id {name!r} in {self.path} (tried {self._candidates(name)}); add it or remove its row from id_prop.csv"
                yield RawItem(stem, None, target, kind, error)
            elif path.stat().st_size > MAX_FILE_BYTES:
                yield RawItem(stem, None, target, kind, f"{path.name} is {path.stat().st_size >> 20} MB, more than any "
                              f"crystal's file ({MAX_FILE_BYTES >> 20} MB at most); fix it or remove its row")
            else:
                text = path.read_text(encoding="utf-8", errors="replace")
                yield RawItem(stem, text, target, "cif" if path.suffix.lower() == ".cif" else "poscar", error)

    def _fingerprint(self) -> dict[str, Any]:
        # id_prop.csv and every structure file by content: a cell edited in place (same name, same size) is another
        # store. Reading the files is cheap next to parsing them (~1 s for 10,000 CIFs of an MP-like set)
        h = hash_file(self._csv)
        with os.scandir(self.path) as entries:
            files = sorted(e.name for e in entries if e.is_file() and is_structure_file(e.name))
        for name in files:
            h.update(f"\0{name}\0".encode())
            hash_file(Path(self.path) / name, h)
        return {"sha256": h.hexdigest(), "files": len(files), "content": True}


def is_structure_file(name: str) -> bool:
    return name.lower().endswith(_STRUCTURE_SUFFIXES) or name.startswith(("POSCAR", "CONTCAR"))
