"""In-memory pymatgen Structures (or ``(id, Structure, target)`` tuples) as a source."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from typing import Any

from colab_kit.sources.base import Source
from colab_kit.sources.records import RawItem, SourceError, to_target


class MemorySource(Source):
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
            target, error = to_target(value)
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
