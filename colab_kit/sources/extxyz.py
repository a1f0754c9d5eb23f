"""Extended XYZ files (plain or gzip), split into frames without parsing atoms; the label comes from the comment line."""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterator
from typing import Any

from colab_kit.sources import streams
from colab_kit.sources.base import Source
from colab_kit.sources.records import RawItem, SourceError, to_target
from colab_kit.sources.streams import DAMAGED, damage_error

_EXTXYZ_RESERVED = frozenset({"Lattice", "Properties", "pbc"})
#: an extended XYZ line longer than this is refused: the longest real comment line (many info keys, a 3x3 stress) is
#: a few kB, and a file that is one endless line would otherwise be read into memory whole
MAX_LINE_CHARS = 1 << 20


def _bounded_lines(f: io.TextIOBase, path: str) -> Iterator[str]:
    """The lines of ``f``, refusing one longer than :data:`MAX_LINE_CHARS` before it is read whole."""
    number = 0
    while line := f.readline(MAX_LINE_CHARS + 1):
        number += 1
        if len(line) > MAX_LINE_CHARS:
            raise SourceError(f"{path} line {number}: longer than {MAX_LINE_CHARS >> 20} M characters; no extended XYZ "
                              "line is: the file is damaged or not extended XYZ")
        yield line


class ExtxyzSource(Source):
    format = "extxyz"

    def __init__(self, path: str, target: str | None) -> None:
        super().__init__(path, target or "")
        if target is None:  # the first float in the first frame's info, e.g. energy
            first = next(self._frames(), None)
            info = self._info(first[1])[0] if first else {}
            self.target_name = next((k for k, v in info.items() if isinstance(v, float) and k not in _EXTXYZ_RESERVED), "")

    def _frames(self, start: int = 0) -> Iterator[tuple[int, str, str]]:
        """(frame index, comment line, frame text), split at the atom-count lines without parsing atoms; frames
        before ``start`` are only counted through, line by line."""
        index = line_no = 0
        try:
            with io.TextIOWrapper(streams.open_binary(self.path), encoding="utf-8", errors="replace") as raw:
                f = _bounded_lines(raw, self.path)
                for line in f:
                    line_no += 1
                    if not line.strip():
                        continue
                    try:
                        n = int(line)
                    except ValueError:
                        raise SourceError(f"{self.path} line {line_no}: expected the atom count of frame {index}, got {line.strip()[:60]!r}; "
                                          "the file is not extended XYZ, or the frame before has the wrong number of atom lines") from None
                    if index < start:
                        got = sum(1 for _ in itertools.islice(f, n + 1))
                        lines = None
                    else:
                        lines = [line, *itertools.islice(f, n + 1)]
                        got = len(lines) - 1
                    line_no += got
                    if got < n + 1:
                        raise SourceError(f"{self.path}: file is truncated after {index} frames (frame {index} declares {n} atoms, "
                                          f"{max(got - 1, 0)} follow); re-download or rewrite it")
                    if lines is not None:
                        yield index, lines[1], "".join(lines)
                    index += 1
        except DAMAGED as exc:
            raise damage_error(self.path, exc, f"after {index} frames", line_no) from exc

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
        return self.iter_from(0)

    def iter_from(self, start: int) -> Iterator[RawItem]:
        """The items from index ``start`` on; the frames before it are split off by line count, never parsed."""
        for index, comment, text in self._frames(max(start, 0)):
            info, error = self._info(comment)
            rid = next((str(info[k]) for k in ("id", "material_id") if k in info), str(index))
            target, label_error = to_target(info.get(self.target_name)) if self.target_name else (None, None)
            yield RawItem(rid, text, target, "extxyz", error or label_error)
