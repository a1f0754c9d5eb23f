"""Matbench and JARVIS JSON files (plain or gzip), streamed record by record through ijson."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from colab_kit.sources.base import Source
from colab_kit.sources.records import _HOW_TO_CHOOSE, RawItem, SourceError, _to_target
from colab_kit.sources.streams import _NOT_ELEMENTS, _count, _first_char, _json

_ID_KEYS = ("jid", "id", "material_id")


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
