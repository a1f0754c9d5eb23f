"""Byte streams under the file readers: gzip told by its magic bytes, damage reported with how far reading got,
and streaming JSON through ijson (its compiled backend where there is one), bare NaN / Infinity included."""

from __future__ import annotations

import functools
import gzip
import itertools
import re
import zlib
from collections.abc import Iterator
from typing import IO, Any

from colab_kit.sources.records import SourceError
from colab_kit.sources.seek import exact_scan, reduced_scan, scan_tables

DAMAGED = (EOFError, zlib.error, gzip.BadGzipFile)
NOT_ELEMENTS = ("end_map", "end_array", "map_key")  # ijson events that do not start an array element


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


def open_binary(path: str) -> IO[bytes]:
    """Opens a file for reading, decompressed when it is gzip (told by its magic bytes, not its name). Every reader
    opens its files through this name, looked up when called (``streams.open_binary``)."""
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    return _GzipFile(path, "rb") if gz else open(path, "rb")


def damage_error(path: str, exc: BaseException, done: str, pos: int) -> SourceError:
    msg = " ".join(str(exc).split())[:300]
    if isinstance(exc, EOFError) or "premature EOF" in msg or "Incomplete JSON" in msg:
        return SourceError(f"{path}: file is truncated {done} ({msg}); re-download it")
    if isinstance(exc, DAMAGED):
        return SourceError(f"{path}: file is corrupted {done} ({type(exc).__name__}: {msg}); re-download it")
    hint = "; JSON has no NaN/Infinity: write missing labels as null" if "NaN" in msg or "Infinity" in msg else ""
    return SourceError(f"{path}: malformed JSON {done}, in the JSON text before byte {pos}: {msg}{hint}; fix or re-download the file")


# Bare NaN / Infinity / -Infinity (records.BARE says why) become these marker strings, which ijson can parse.
_BARE_OUT = {b"NaN": b'"\\u0000NaN"', b"Infinity": b'"\\u0000Infinity"', b"-Infinity": b'"\\u0000-Infinity"'}
_BARE_SCAN = re.compile(rb'\\.|"|-?Infinity|NaN', re.S)
_ESCAPE = re.compile(rb"\\.", re.S)
_CONSTANT = re.compile(rb"-?Infinity|NaN")
_TOKENS = (b"NaN", b"Infinity", b"-Infinity")


class _BareConstants:
    """File-like filter in front of ijson: rewrites bare NaN / Infinity / -Infinity outside strings into markers.

    Bytes without those words pass through after a count of their quotes (to know, when one comes, whether it
    stands inside a string); a read that fails returns what is held back first, so no item before damage is lost.

    Attributes:
        replaced: how many bare constants were rewritten so far.
    """

    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.replaced = f, 0
        self._carry, self._in_string, self._escaped = b"", False, False
        self._error: BaseException | None = None

    def read(self, size: int = -1) -> bytes:
        if size == 0:  # ijson asks for 0 bytes to tell bytes from text
            return b""
        while True:
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            try:
                new = self.f.read(size)
            except DAMAGED as exc:
                if not self._carry:
                    raise
                self._error, new = exc, b""
            data, self._carry = self._carry + new, b""
            if new:  # a constant may be cut at the end of this read: keep its start for the next
                hold = next((len(data) - i for i in range(max(len(data) - 9, 0), len(data))
                             if any(t.startswith(data[i:]) for t in _TOKENS)), 0)
                if hold:
                    data, self._carry = data[:-hold], data[-hold:]
            if data or not new:
                return self._rewrite(data) if (b"NaN" in data or b"Infinity" in data) else self._pass(data)

    def _pass(self, data: bytes) -> bytes:
        quotes = data.count(b'"')
        if self._escaped or b"\\" in data:
            start = 1 if self._escaped else 0
            escaped = [m.end() - 1 for m in _ESCAPE.finditer(data, start)]
            quotes -= sum(1 for i in escaped if data[i] == 34) + (1 if self._escaped and data[:1] == b'"' else 0)
            self._escaped = len(data) > start and data[-1] == 92 and (not escaped or escaped[-1] != len(data) - 1)
        self._in_string ^= bool(quotes & 1)
        return data

    def _rewrite(self, data: bytes) -> bytes:
        if self._escaped or b"\\" in data:
            return self._rewrite_escaped(data)
        out: list[bytes] = []
        last = counted = 0
        for m in _CONSTANT.finditer(data):  # whether one stands in a string: the parity of the quotes before it
            self._in_string ^= bool(data.count(b'"', counted, m.start()) & 1)
            counted = m.start()
            if not self._in_string:
                out += (data[last:m.start()], _BARE_OUT[m.group()])
                last = m.end()
                self.replaced += 1
        self._in_string ^= bool(data.count(b'"', counted) & 1)
        return b"".join((*out, data[last:]))

    def _rewrite_escaped(self, data: bytes) -> bytes:
        out: list[bytes] = []
        start = pair_end = 1 if self._escaped else 0
        last = 0
        for m in _BARE_SCAN.finditer(data, start):
            token = m.group()
            if token[0] == 92:  # an escape pair (inside a string): nothing to count
                pair_end = m.end()
            elif token == b'"':
                self._in_string = not self._in_string
            elif not self._in_string:
                out += (data[last:m.start()], _BARE_OUT[token])
                last = m.end()
                self.replaced += 1
        self._escaped = len(data) > start and data[-1] == 92 and pair_end != len(data)
        return b"".join((*out, data[last:]))

    def tell(self) -> int:
        return self.f.tell() - len(self._carry)


#: JSON nested deeper than this is refused while it streams: a structure record is ~10 levels deep, and ijson builds
#: every level (a 400 KB file nested 200,000 deep reached 22 GB)
MAX_DEPTH = 64
#: one string: no structure record holds a long one, and ijson's cost grows with the square of a string's length
#: (8 MB: 0.5 s, 64 MB: 21 s; a 2 GB string in 1.9 MB of gzip ran for 27 min); and one record
MAX_STRING_BYTES = 8 << 20
MAX_ITEM_BYTES = 256 << 20


class _Guard:
    """File-like filter in front of ijson: refuses JSON that is too deeply nested, a string or a record too large,
    as the bytes arrive (a SourceError naming the byte), before ijson builds what they describe.

    The scan is :mod:`.seek`'s: bytes reduced to quotes, brackets and commas (numpy), the exact position-keeping
    scan only for chunks with escapes or brackets inside strings. A record is a container nested deeper than
    ``item_depth`` (2 for matbench's ``data`` rows, 1 for a JSON list's records); its size is counted per chunk.
    """

    def __init__(self, f: IO[bytes], path: str, item_depth: int) -> None:
        self.f, self.path, self.item_depth = f, path, item_depth
        self.depth, self.in_string, self.escaped = 0, False, False
        self.string_run = self.item_run = self.offset = 0

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size)
        if data:
            self._check(data)
        return data

    def tell(self) -> int:
        return self.f.tell()

    def _check(self, chunk: bytes) -> None:

        np, _, step = scan_tables()
        reduced = None if self.escaped else reduced_scan(chunk, self.in_string)
        if reduced is not None:
            text, in_string_end = reduced
            level = self.depth + np.cumsum(step[np.frombuffer(text, np.uint8)], dtype=np.int64)
            escaped_end = False
        else:
            _, _, level, _, in_string_end, escaped_end = exact_scan(chunk, self.depth, self.in_string, self.escaped)
        top, low, end = ((int(level.max()), int(level.min()), int(level[-1])) if len(level)
                         else (self.depth, self.depth, self.depth))
        at = self.offset + len(chunk)
        if top > MAX_DEPTH:
            raise SourceError(f"{self.path}: JSON nested more than {MAX_DEPTH} levels deep (before byte {at:,}); no "
                              "structure record is: the file is damaged or not a dataset")
        if in_string_end:
            last = chunk.rfind(b'"')
            self.string_run = self.string_run + len(chunk) if last < 0 else len(chunk) - 1 - last
            if self.string_run > MAX_STRING_BYTES:
                raise SourceError(f"{self.path}: a string longer than {MAX_STRING_BYTES >> 20} MB (before byte {at:,}); "
                                  "no structure record holds one: the file is damaged or not a dataset")
        else:
            self.string_run = 0
        if min(low, self.depth) > self.item_depth:  # one record all through this chunk
            self.item_run += len(chunk)
        else:
            self.item_run = len(chunk) if end > self.item_depth else 0
        if self.item_run > MAX_ITEM_BYTES:
            raise SourceError(f"{self.path}: a record larger than {MAX_ITEM_BYTES >> 20} MB (before byte {at:,}); no "
                              "structure record is that large: the file is damaged or not a dataset")
        self.depth, self.in_string, self.escaped, self.offset = end, in_string_end, escaped_end, at


def stream_json(path: str, fn: str, *prefix: str, what: str = "items", stream: IO[bytes] | None = None, first: int = 0,
          bare: bool | None = None) -> Iterator[Any]:
    """ijson ``items``/``parse`` over a (gzip) file; a decoding failure becomes a SourceError saying how far it got.

    Args:
        stream: read this (a document spliced after a seek) instead of opening ``path``.
        first: items that came before the stream (counted in the error message).
        bare: rewrite bare NaN / Infinity (:class:`_BareConstants`); None: read without, and on a parse error
            read again with it, past the items already given (a file without them pays nothing).
    """
    from ijson import JSONError

    n = first
    with stream if stream is not None else open_binary(path) as f:
        # a stream that starts after a seek starts inside the array: its records are one level up
        guarded = _Guard(f, path, max(1, prefix[0].count(".") + 1 if prefix else 1) - (stream is not None))
        src = _BareConstants(guarded) if bare else guarded
        try:
            for obj in getattr(_ijson(), fn)(src, *prefix, use_float=True):
                yield obj
                n += 1
            return
        except (*DAMAGED, JSONError) as exc:
            if bare is not None or stream is not None or isinstance(exc, DAMAGED):
                raise damage_error(path, exc, f"after {n} {what}", src.tell()) from exc
    again = stream_json(path, fn, *prefix, what=what, bare=True)
    yield from itertools.islice(again, n - first, None)


def count_elements(path: str, prefix: str) -> int:
    """Elements of the array at ``prefix``, from parse events alone (no objects are built)."""
    return sum(1 for p, event, _ in stream_json(path, "parse", what="JSON events") if p == prefix and event not in NOT_ELEMENTS)


def first_char(path: str) -> str:
    """The first non-blank character of the (decompressed) file; '' when it is empty."""
    try:
        with open_binary(path) as f:
            while chunk := f.read(4096):
                if text := chunk.lstrip(b" \t\r\n\xef\xbb\xbf"):
                    return chr(text[0])
            return ""
    except DAMAGED as exc:
        raise damage_error(path, exc, "after 0 items", 0) from exc
