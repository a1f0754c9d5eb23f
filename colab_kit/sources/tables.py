"""Tables of structures: CSV (plain or gzip) and parquet, one structure per row.

The layout people export most (MP-20 / CDVAE's csv, an ``mp-api`` or pandas ``to_csv``): an id column, label
columns, and a structure column holding CIF text, POSCAR text or a ``Structure.as_dict()`` (a JSON string in a
CSV, a JSON string or a struct in parquet). Rows are streamed (``csv.reader`` over the file; parquet by record
batches), so memory does not grow with the number of rows.

Which column is which:

* structure: the column named ``cif``, ``structure``, ``poscar`` or ``atoms`` (in that order of preference), else
  the first column whose first value looks like a structure;
* label: ``target=`` names it; without it, the only column whose first value is a number and that is not an id
  or a count (``spacegroup.number``); several such columns are refused, naming them;
* id: ``material_id``, ``id``, ``mpid``, ``jid`` or ``name``; without one, the row number.
"""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Iterator
from typing import Any

from colab_kit.sources import streams
from colab_kit.sources.base import Source
from colab_kit.sources.records import RawItem, SourceError, to_target
from colab_kit.sources.streams import DAMAGED, damage_error

STRUCTURE_COLUMNS = ("cif", "structure", "poscar", "atoms")
ID_COLUMNS = ("material_id", "id", "mpid", "mp_id", "jid", "name", "structure_id")
#: numeric columns that are never a label: row indices pandas wrote, and integer descriptors of the structure
NOT_LABELS = ("", "index", "unnamed: 0", "spacegroup.number", "spacegroup_number", "space_group", "nsites",
              "n_sites", "natoms", "elements", "source_split", "split")
#: a structure field larger than this is refused: a CIF of a 10,000-atom cell is ~1 MB
MAX_FIELD_BYTES = 32 * 1024 * 1024
_SET_TARGET = "choose one with --set target=NAME (open_source(..., target=NAME) in Python)"


def payload_kind(value: Any) -> str | None:
    """How to parse a structure cell: ``"pmg_dict"`` (a dict), ``"pmg_json"`` (its JSON text), ``"cif"``,
    ``"poscar"``; None when the value cannot be a structure."""
    if isinstance(value, dict):
        return "pmg_dict"
    if not isinstance(value, str):
        return None
    text = value.lstrip()
    if text.startswith("{"):
        return "pmg_json"
    if "_cell_length_a" in text or text.startswith("data_"):
        return "cif"
    lines = text.splitlines()
    return "poscar" if len(lines) >= 8 else None  # comment, scale, 3 lattice rows, species, counts, mode


def _is_number(value: Any) -> bool:
    target, error = to_target(value)
    return target is not None and error is None


class _Table(Source):
    """Rows of a table: the column roles are found from the header and the first row."""

    def __init__(self, path: str, target: str | None) -> None:
        self.path = path
        header, first = self._head()
        if not header:
            raise SourceError(f"{path}: the table is empty (no header row); a {self.format} of structures needs a "
                              f"header with a structure column ({', '.join(STRUCTURE_COLUMNS)})")
        self.columns = header
        self._si = self._structure_column(header, first)
        self._ii = next((header.index(c) for c in header if c.strip().lower() in ID_COLUMNS), None)
        self._ti = self._label_column(header, first, target)
        super().__init__(path, header[self._ti] if self._ti is not None else "")

    # -- column roles ----------------------------------------------------------------------------

    def _structure_column(self, header: list[str], first: list[Any] | None) -> int:
        names = [c.strip().lower() for c in header]
        for want in STRUCTURE_COLUMNS:
            if want in names:
                return names.index(want)
        if first is not None:
            for i, value in enumerate(first):
                if payload_kind(value) is not None and not _is_number(value):
                    return i
        raise SourceError(f"{self.path}: no structure column among {header}; name the column of CIF text, POSCAR text "
                          f"or Structure.as_dict() JSON one of {STRUCTURE_COLUMNS}")

    def _label_column(self, header: list[str], first: list[Any] | None, target: str | None) -> int | None:
        if target is not None:
            if target not in header:
                raise SourceError(f"{self.path}: target={target!r} is not a column; columns: {header}")
            return header.index(target)
        skip = {self._si, self._ii}
        candidates = [i for i, c in enumerate(header) if i not in skip and c.strip().lower() not in NOT_LABELS
                      and first is not None and i < len(first) and _is_number(first[i])]
        if len(candidates) > 1:
            raise SourceError(f"{self.path}: several label columns {[header[i] for i in candidates]}; {_SET_TARGET}")
        return candidates[0] if candidates else None

    # -- rows ------------------------------------------------------------------------------------

    def _head(self) -> tuple[list[str], list[Any] | None]:
        rows = self._rows(0, with_header=True)
        try:
            header = next(rows, None)
            first = next(rows, None)
        finally:
            rows.close()
        return ([str(c) for c in header] if header else []), first

    def _rows(self, start: int, with_header: bool = False) -> Iterator[list[Any]]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[RawItem]:
        return self.iter_from(0)

    def iter_from(self, start: int) -> Iterator[RawItem]:
        """The items from row ``start`` on (rows before it are read by the table reader, never parsed as structures)."""
        for n, row in enumerate(self._rows(max(start, 0)), start=max(start, 0)):
            yield self._item(n, row)

    def _item(self, n: int, row: list[Any]) -> RawItem:
        rid = str(row[self._ii]).strip() if self._ii is not None and self._ii < len(row) and row[self._ii] else str(n)
        if len(row) != len(self.columns):
            return RawItem(rid, None, None, "cif", f"row {n} has {len(row)} fields, the header {len(self.columns)}; "
                           "fix the row (an unquoted comma or newline in a field?)")
        target, error = to_target(row[self._ti]) if self._ti is not None else (None, None)
        value = row[self._si]
        kind = payload_kind(value)
        if kind is None:
            error = error or (f"column {self.columns[self._si]!r} holds {str(value).strip()[:40]!r}, not CIF or POSCAR "
                              "text or a Structure dict")
            return RawItem(rid, None, target, "cif", error)
        return RawItem(rid, value, target, kind, error)


class CsvSource(_Table):
    format = "csv"

    def _rows(self, start: int, with_header: bool = False) -> Iterator[list[Any]]:
        csv.field_size_limit(MAX_FIELD_BYTES)
        n = 0
        try:
            with io.TextIOWrapper(streams.open_binary(self.path), encoding="utf-8-sig", errors="replace", newline="") as f:
                reader = csv.reader(f, delimiter="\t" if self.path.lower().removesuffix(".gz").endswith(".tsv") else ",")
                header = next(reader, None)
                if with_header:
                    yield header or []
                for row in reader:
                    if not row or not any(c.strip() for c in row):
                        continue
                    if n >= start:
                        yield row
                    n += 1
        except csv.Error as exc:
            raise SourceError(f"{self.path}: unreadable CSV after {n} rows ({exc}); a field larger than "
                              f"{MAX_FIELD_BYTES >> 20} MB, or an unclosed quote: fix or re-export the table") from exc
        except DAMAGED as exc:
            raise damage_error(self.path, exc, f"after {n} rows", n) from exc

    def count(self) -> int:
        return sum(1 for _ in self._rows(0))


class ParquetSource(_Table):
    """A parquet file, read by record batches with pyarrow (Colab has it; elsewhere ``pip install pyarrow``)."""

    format = "parquet"
    BATCH_ROWS = 512

    @staticmethod
    def _pq() -> Any:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise SourceError("reading parquet needs pyarrow, which is not installed; run: pip install pyarrow "
                              "(or export the table as CSV)") from None
        return pq

    def _file(self) -> Any:
        try:
            return self._pq().ParquetFile(self.path)
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise SourceError(f"{self.path}: not a readable parquet file ({' '.join(str(exc).split())[:200]}); "
                              "re-export or re-download it") from exc

    def _rows(self, start: int, with_header: bool = False) -> Iterator[list[Any]]:
        pf = self._file()
        names = list(pf.schema_arrow.names)
        if with_header:
            yield names
        sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)]
        skipped, first_group = 0, 0
        while first_group < len(sizes) and skipped + sizes[first_group] <= start:  # whole row groups never read
            skipped += sizes[first_group]
            first_group += 1
        groups = list(range(first_group, len(sizes)))
        if not groups:
            return
        batches = pf.iter_batches(batch_size=self.BATCH_ROWS, row_groups=groups)
        rows = (list(r.values()) for batch in batches for r in batch.to_pylist())
        yield from itertools.islice(rows, start - skipped, None)

    def count(self) -> int:
        return int(self._file().metadata.num_rows)
