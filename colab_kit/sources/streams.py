"""Byte streams under the file readers: gzip told by its magic bytes, damage reported with how far reading got,
and streaming JSON through ijson (its compiled backend where there is one)."""

from __future__ import annotations

import functools
import gzip
import zlib
from collections.abc import Iterator
from typing import IO, Any

from colab_kit.sources.records import SourceError

_DAMAGED = (EOFError, zlib.error, gzip.BadGzipFile)
_NOT_ELEMENTS = ("end_map", "end_array", "map_key")  # ijson events that do not start an array element


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


def _open(path: str) -> IO[bytes]:
    """``colab_kit.sources._open_binary`` looked up when called, so that replacing that name reaches every reader."""
    from colab_kit import sources

    return sources._open_binary(path)


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

    with _open(path) as f:
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
        with _open(path) as f:
            while chunk := f.read(4096):
                if text := chunk.lstrip(b" \t\r\n\xef\xbb\xbf"):
                    return chr(text[0])
            return ""
    except _DAMAGED as exc:
        raise _failure(path, exc, "after 0 items", 0) from exc
