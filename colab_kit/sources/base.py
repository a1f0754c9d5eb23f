"""The :class:`Source` base class: identity (a content fingerprint) and the iteration contract."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from typing import Any

from colab_kit.sources.records import RawItem
from colab_kit.util.files import sha256_file


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
            self._hashed = (st.st_size, st.st_mtime_ns, sha256_file(self.path))
        return {"sha256": self._hashed[2], "bytes": st.st_size}

    def __iter__(self) -> Iterator[RawItem]:
        raise NotImplementedError

    def iter_from(self, start: int) -> Iterator[RawItem]:
        """The items from index ``start`` on: the same as ``islice(iter(self), start, None)``.

        A resumed conversion calls this to skip the items of completed shards; formats that can skip
        without parsing what they skip override it.
        """
        return itertools.islice(iter(self), start, None)

    def count(self) -> int | None:
        """Number of items, learnt without parsing structures; None where that is not cheap."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(path={self.path!r}, format={self.format!r}, target_name={self.target_name!r})"
