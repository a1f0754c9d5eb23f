"""Matbench and JARVIS JSON files (plain or gzip), streamed record by record through ijson; a resume seeks."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

from colab_kit.sources.base import Source
from colab_kit.sources.records import HOW_TO_CHOOSE, RawItem, SourceError, to_target, unbare
from colab_kit.sources.seek import seek_element
from colab_kit.sources.streams import DAMAGED, NOT_ELEMENTS, count_elements, first_char, stream_json

_ID_KEYS = ("jid", "id", "material_id")


class MatbenchSource(Source):
    format = "matbench"

    def __init__(self, path: str, target: str | None) -> None:
        layout = "expected a JSON object {index, columns, data}"
        if first_char(path) != "{":
            raise SourceError(f"{path}: not a matbench file ({layout}); {HOW_TO_CHOOSE}")
        columns, self._n_index = self._header(path)
        if columns is None:
            raise SourceError(f"{path}: not a matbench file: no \"columns\" ({layout}); {HOW_TO_CHOOSE}")
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
        for prefix, event, value in stream_json(path, "parse", what="JSON events"):
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
            elif prefix == "index.item" and n_index is not None and event not in NOT_ELEMENTS:
                n_index += 1
        return columns, n_index

    def count(self) -> int:
        return self._n_index if self._n_index is not None else count_elements(self.path, "data.item")

    def __iter__(self) -> Iterator[RawItem]:
        return self._items(0)

    def iter_from(self, start: int) -> Iterator[RawItem]:
        """The items from index ``start`` on, seeking past the rows before it (see :mod:`.seek`)."""
        return self._items(max(start, 0))

    def _items(self, start: int) -> Iterator[RawItem]:
        # ids come from a second reader of "index" in step with "data": no memory for them, in any key order
        ids = stream_json(self.path, "items", "index.item", what="index entries") if self._n_index is not None else None
        rows = _Elements(self.path, "data", start, "items")
        skipped = False
        try:
            for row in rows:
                if not skipped and ids is not None:  # the ids of the rows sought past, never built into items
                    skipped = self._skip_ids(ids, rows.n - 1)
                rid = rows.n - 1 if ids is None else next(ids, ids)
                if rid is ids:
                    raise SourceError(f"{self.path}: \"data\" has more rows than the {self._n_index} \"index\" entries; re-download the file")
                if not isinstance(row, list) or len(row) != len(self._columns):
                    yield RawItem(str(rid), None, None, "pmg_dict", f"data row {str(row)[:80]!r} does not match columns {self._columns}")
                    continue
                target, error = to_target(unbare(row[self._ti])) if self._ti is not None else (None, None)
                yield RawItem(str(rid), row[self._si], target, "pmg_dict", error)
            if ids is not None and not skipped:
                self._skip_ids(ids, rows.n)
            if ids is not None and rows.n < self._n_index:  # count, not another next(): that would scan to the end
                raise SourceError(f"{self.path}: \"index\" has {self._n_index} entries but \"data\" only {rows.n} rows; re-download the file")
        finally:
            if ids is not None:
                ids.close()

    def _skip_ids(self, ids: Iterator[Any], n: int) -> bool:
        if n and sum(1 for _ in itertools.islice(ids, n)) < n:
            raise SourceError(f"{self.path}: \"data\" has more rows than the {self._n_index} \"index\" entries; re-download the file")
        return True


class JarvisSource(Source):
    format = "jarvis"

    def __init__(self, path: str, target: str | None) -> None:
        if first_char(path) != "[":
            raise SourceError(f"{path}: not a JARVIS file (expected a JSON list of records with 'atoms'); {HOW_TO_CHOOSE}")
        if target is None:
            records = stream_json(path, "items", "item", what="records")
            first = next(records, None)
            records.close()
            labels = [k for k, v in first.items() if k not in (*_ID_KEYS, "atoms") and to_target(unbare(v))[1] is None] if isinstance(first, dict) else []
            if len(labels) > 1:
                raise SourceError(f"{path}: several label keys {labels} in the first record; choose one with target=")
            target = labels[0] if labels else ""
        super().__init__(path, target)

    def count(self) -> int:
        return count_elements(self.path, "item")

    def __iter__(self) -> Iterator[RawItem]:
        return self._items(0)

    def iter_from(self, start: int) -> Iterator[RawItem]:
        """The items from index ``start`` on, seeking past the records before it (see :mod:`.seek`)."""
        return self._items(max(start, 0))

    def _items(self, start: int) -> Iterator[RawItem]:
        records = _Elements(self.path, None, start, "records")
        for rec in records:
            rec = rec if isinstance(rec, dict) else {}
            rid = next((str(rec[k]) for k in _ID_KEYS if rec.get(k) is not None), str(records.n - 1))
            target, error = to_target(unbare(rec.get(self.target_name))) if self.target_name else (None, None)
            if not isinstance(rec.get("atoms"), dict):
                error = f"record has no 'atoms' mapping (keys {sorted(rec)[:8]}); expected jarvis Atoms.to_dict() under 'atoms'"
            yield RawItem(rid, rec.get("atoms"), target, "jarvis", error)


class _Elements:
    """The elements of a JSON array from index ``start`` on, as ijson builds them, seeking past the ones before.

    Bare NaN / Infinity: the first read goes without ``streams._BareConstants`` (files without them pay nothing);
    a parse error restarts the read at the element that failed, with it. A second error is the file's.

    Attributes:
        n: elements passed so far (the skipped ones included): inside the loop, the current element's index + 1.
    """

    def __init__(self, path: str, key: str | None, start: int, what: str) -> None:
        self.path, self.key, self.start, self.what = path, key, start, what
        self.prefix = "item" if key is None else f"{key}.item"
        self.n = 0

    def __iter__(self) -> Iterator[Any]:
        at, bare = self.start, False
        while True:
            sought = seek_element(self.path, self.key, at) if at else None
            stream, self.n = sought if sought is not None else (None, 0)
            try:
                for element in stream_json(self.path, "items", self.prefix, what=self.what, stream=stream, first=self.n, bare=bare):
                    self.n += 1
                    if self.n > at:  # elements before ``at`` come only where no seek could be made
                        yield element
                return
            except SourceError as exc:
                if bare or isinstance(exc.__cause__, DAMAGED):
                    raise
                at, bare = max(at, self.n), True
