"""Streaming readers of labelled crystal structures: cheap raw items out, parsing in the workers.

The main process streams small picklable :class:`RawItem` s in a fixed order (never a whole file);
:func:`parse_structure` builds the pymatgen ``Structure`` inside a worker. A bad record is a bad item
(its ``error`` is raised by :func:`parse_structure`), never the end of the stream; a damaged file raises
:class:`SourceError` only after every good item before the damage.

Modules: :mod:`.records` (RawItem, labels, parsing), :mod:`.base` (the Source class), :mod:`.streams` (gzip,
damage, ijson), one per format (:mod:`.json_files`, :mod:`.folders`, :mod:`.extxyz`, :mod:`.tables`, :mod:`.memory`); this one
tells the format and opens a source.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from colab_kit.sources.base import Source
from colab_kit.sources.datasets import resolve
from colab_kit.sources.extxyz import ExtxyzSource
from colab_kit.sources.folders import DIR_SUFFIXES, LAYOUTS, FolderSource, is_structure_file
from colab_kit.sources.frames import (
    FRAME_FORMATS,
    FrameLabels,
    FrameSource,
    LabelSpec,
    label_spec,
    open_frames,
    parse_frame,
)
from colab_kit.sources.json_files import JarvisSource, MatbenchSource
from colab_kit.sources.memory import MemorySource
from colab_kit.sources.records import (
    FORMATS,
    HOW_TO_CHOOSE,
    KINDS,
    RawItem,
    SourceError,
    check_target,
    parse_structure,
)
from colab_kit.sources.streams import first_char
from colab_kit.sources.tables import CsvSource, ParquetSource

__all__ = ["FORMATS", "FRAME_FORMATS", "FrameLabels", "FrameSource", "KINDS", "LabelSpec", "label_spec", "open_frames",
           "parse_frame", "RawItem", "Source", "SourceError", "check_target", "detect_format", "open_source",
           "parse_structure", "resolve"]


def detect_format(path: str | os.PathLike[str]) -> str:
    """Tells the format of a file or folder from its name and first bytes.

    Raises:
        SourceError: the path does not exist or fits no format (the message lists them and ``fmt=``).
    """
    p = Path(path)
    if not p.exists():
        raise SourceError(f"{p}: no such file or folder; check the path (on Colab, mount Drive first)")
    if p.is_dir():
        with os.scandir(p) as entries:
            names = sorted(e.name for e in entries if e.is_file())
        first = next((n for n in names if is_structure_file(n)), None)
        if first is None:  # said so that it reads right after `--data FOLDER` as well as after open_source(FOLDER)
            others = [n for n in names if n != "id_prop.csv"]
            found = (f"{len(others)} other file{'s' * (len(others) > 1)}, e.g. {others[0]!r}" if others else
                     "only an id_prop.csv" if names else "it is empty")
            raise SourceError(f"{p}: the folder holds no CIF or POSCAR files ({found}); a data source is {LAYOUTS}")
        if not (p / "id_prop.csv").is_file():
            raise SourceError(f"{p}: a structure folder needs an id_prop.csv (lines 'id,target', no header) beside its "
                              f"*.cif / POSCAR files (e.g. {first!r}); write one")
        return "cif_dir" if first.lower().endswith(".cif") else "poscar_dir"
    name = p.name.lower().removesuffix(".gz")
    if name.endswith((".extxyz", ".xyz")):
        return "extxyz"
    if name.endswith((".csv", ".tsv")):
        return "csv"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith(".json"):
        first = first_char(str(p))
        if first and first in "[{":
            return "jarvis" if first == "[" else "matbench"
        raise SourceError(f"{p}: {'starts with ' + repr(first) + ', not a JSON object or list' if first else 'is empty'}; re-download it")
    raise SourceError(f"{p}: cannot tell the format from the name {p.name!r}; supported: matbench (*.json[.gz] with index/columns/data), "
                      "jarvis (*.json[.gz], a list of records), extxyz (*.extxyz, *.xyz), csv / parquet (a table with a CIF, POSCAR "
                      "or structure-dict column), cif_dir / poscar_dir (a folder with id_prop.csv); "
                      f"or {HOW_TO_CHOOSE}")


def open_source(source: str | os.PathLike[str] | Iterable[Any], fmt: str | None = None, target: str | None = None,
                name: str | None = None) -> Source:
    """Opens a file, a folder or in-memory structures as a :class:`Source`; reads headers only.

    Args:
        source: a path (matbench json[.gz], JARVIS json, extxyz, a CSV or parquet table with a structure column, a
            folder with id_prop.csv), or an iterable of
            pymatgen Structures or ``(id, Structure, target)`` tuples (a one-shot iterator is kept as a list).
        fmt: one of :data:`FORMATS`; detected from the path when None.
        target: the label: matbench or table column, JARVIS key, extxyz info key or ``Structure.properties`` key.
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
        return MemorySource(source, target, name)
    path = os.fspath(source)
    if not os.path.exists(path):
        raise SourceError(f"{path}: no such file or folder; check the path (on Colab, mount Drive first)")
    fmt = fmt or detect_format(path)
    if fmt == "memory" or (fmt in DIR_SUFFIXES) != os.path.isdir(path):
        kind = "a folder with id_prop.csv" if fmt in DIR_SUFFIXES else "a file" if fmt != "memory" else "Python objects"
        raise SourceError(f"{path}: fmt={fmt!r} reads {kind}, not this path; {HOW_TO_CHOOSE}")
    if fmt in DIR_SUFFIXES:
        return FolderSource(path, fmt, target)
    return {"matbench": MatbenchSource, "jarvis": JarvisSource, "extxyz": ExtxyzSource, "csv": CsvSource, "parquet": ParquetSource}[fmt](path, target)
