"""Reading a JSON array from element k on without parsing the elements before it: how a resumed conversion seeks.

gzip can only be decompressed from its start, but zlib in C is fast (hundreds of MB/s), and so is a scan that
finds element boundaries by bracket depth alone: bytes are reduced to brackets, commas and quotes with
``bytes.translate``, strings without a bracket or comma inside are then adjacent ``""`` pairs (two ``bytes.count``
prove it), and numpy sums the depth of what is left; only the chunk holding element k (or a chunk with a backslash
or a bracket inside a string) gets the exact, position-keeping scan. zlib runs in a thread meanwhile (it lets go of
the GIL), stopped before the first element is handed out (the caller forks workers after that). ijson then parses a spliced document: ``{"data": [`` (or ``[``) followed by the bytes
from element k on, so everything after the seek reads exactly as it does in a full pass.

Only the bracket and string structure of the skipped region is read, not its syntax: a resume skips rows that the
run before it parsed (the store's fingerprint says it is the same file). Damage met while skipping (a truncated or
corrupted gzip) gives up the seek, and the caller streams from the start, so the error names the same item.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import queue
import re
import threading
import zlib
from collections.abc import Iterator
from typing import IO, Any

_CHUNK_IN = 1 << 18  # compressed bytes per decompression step (≈ 1 MB out)
_PLAIN_CHUNK = 1 << 20
_KEEP = b'"[]{},\\'
_DROP_ALL_BUT_STRUCTURE = bytes(i for i in range(256) if i not in _KEEP)
_QUOTE, _OPEN_ARRAY, _OPEN_MAP, _CLOSE, _COMMA = 1, 2, 3, 4, 5



@functools.lru_cache(maxsize=1)
def scan_tables() -> tuple[Any, Any, Any]:
    """numpy, byte -> token code, byte -> depth change (numpy is imported when a seek is made, not with the package)."""
    import numpy as np

    codes = np.zeros(256, np.int8)
    codes[[34, 91, 123, 93, 125, 44]] = [_QUOTE, _OPEN_ARRAY, _OPEN_MAP, _CLOSE, _CLOSE, _COMMA]
    step = np.zeros(256, np.int8)
    step[[91, 123]], step[[93, 125]] = 1, -1
    return np, codes, step
_ESCAPE = re.compile(rb"\\.", re.S)


class _Inflater:
    """A file's decompressed bytes in large chunks (plain files as they are); gzip's EOFError when it is cut short.

    With ``ahead``, a thread decompresses the next chunks while the caller scans this one (zlib lets go of the
    GIL); :meth:`stop` ends it before the caller forks workers, and what it had decompressed is kept.
    """

    def __init__(self, path: str, ahead: bool = False) -> None:
        self.f = open(path, "rb")  # noqa: SIM115 - closed by close()
        self.gz = self.f.read(2) == b"\x1f\x8b"
        self.f.seek(0)
        self.z = zlib.decompressobj(31) if self.gz else None
        self.out = 0
        self._pending: collections.deque[bytes | BaseException] = collections.deque()
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=4)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, daemon=True) if ahead else None
        if self._thread is not None:
            self._thread.start()

    def _produce(self) -> None:
        try:
            while not self._stop.is_set():
                data = self._next()
                self._queue.put(data)
                if not data:
                    return
        except Exception as exc:  # noqa: BLE001 - handed to the reader, raised where it reads
            self._queue.put(exc)

    def stop(self) -> None:
        """Ends the read-ahead thread; the chunks it made are read first."""
        if self._thread is None:
            return
        self._stop.set()
        while self._thread.is_alive() or not self._queue.empty():
            with contextlib.suppress(queue.Empty):
                self._pending.append(self._queue.get(timeout=0.05))
        self._thread = None

    def chunk(self) -> bytes:
        """The next decompressed bytes; b"" at the end of the file."""
        item = self._pending.popleft() if self._pending else self._queue.get() if self._thread else self._next()
        if isinstance(item, BaseException):
            raise item
        self.out += len(item)
        return item

    def _next(self) -> bytes:
        if self.z is None:
            return self.f.read(_PLAIN_CHUNK)
        while True:
            if self.z.eof:  # one gzip member ended; another may follow (``cat a.gz b.gz``)
                rest = self.z.unused_data.lstrip(b"\0") or self.f.read(_CHUNK_IN).lstrip(b"\0")
                if not rest:
                    return b""
                self.z = zlib.decompressobj(31)
                data = self.z.decompress(rest)
            else:
                raw = self.f.read(_CHUNK_IN)
                if not raw:
                    raise EOFError("Compressed file ended before the end-of-stream marker was reached")  # gzip's words
                data = self.z.decompress(raw)
            if data:
                return data

    def close(self) -> None:
        self.stop()
        self.f.close()


class _Spliced:
    """The file ijson reads after a seek: ``head`` (a synthetic start plus the bytes from element k), then the rest.

    ``tell`` counts in the original file's decompressed bytes, as an error message should.
    """

    def __init__(self, head: bytes, inflater: _Inflater) -> None:
        self.buf, self.at, self.inflater = head, 0, inflater

    def read(self, size: int = -1) -> bytes:
        if size == 0:
            return b""
        if self.at >= len(self.buf):
            self.buf, self.at = self.inflater.chunk(), 0
        end = len(self.buf) if size < 0 else self.at + size
        out, self.at = self.buf[self.at:end], min(end, len(self.buf))
        return out

    def tell(self) -> int:
        return self.inflater.out - (len(self.buf) - self.at)

    def close(self) -> None:
        self.inflater.close()

    def __enter__(self) -> _Spliced:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def seek_element(path: str, key: str | None, k: int) -> tuple[IO[bytes], int] | None:
    """A document that ijson reads as the array's elements from ``k`` on, and how many elements it skipped.

    Args:
        path: a JSON file, plain or gzip.
        key: the top-level key whose value is the array (matbench ``"data"``), or None for a top-level array (JARVIS).
        k: elements to skip (>= 1).

    Returns:
        (file, skipped): ``skipped`` is ``k``, or fewer when the array ends first (the file then starts at its
        closing bracket). None where the seek cannot be made (no such array, an array of at most one element,
        damage while skipping): read from the start instead.
    """
    inflater = _Inflater(path, ahead=True)
    try:
        found = _scan(inflater, key, k)
    except (EOFError, zlib.error, OSError):
        found = None
    finally:
        inflater.stop()
    if found is None:
        inflater.close()
        return None
    rest, skipped = found
    head = (b'{"%s": [' % key.encode() if key is not None else b"[") + rest
    return _Spliced(head, inflater), skipped


def _scan(inflater: _Inflater, key: str | None, k: int) -> tuple[bytes, int] | None:
    """Reads chunks until element ``k`` of the array: (the bytes from its start on, k), or (from its closing
    bracket, elements) when the array is shorter; None when the array is missing or has fewer than two elements."""
    array_depth = 1 if key is None else 2  # depth inside the array: 1 in [...], 2 in {"data": [...]}
    key_pattern = None if key is None else re.compile(rb'[{,]\s*"' + re.escape(key.encode()) + rb'"\s*:\s*$')
    inside = key is None  # a top-level array starts at the first byte
    np, _, step = scan_tables()
    depth, in_string, escaped, commas, tail = 0, False, False, 0, b""
    while chunk := inflater.chunk():
        reduced = None if escaped else reduced_scan(chunk, in_string)
        if reduced is not None:
            text, string_at_end = reduced
            sym = np.frombuffer(text, np.uint8)
            level = depth + np.cumsum(step[sym], dtype=np.int32)
            if inside:
                here = int(np.count_nonzero((sym == 44) & (level == array_depth)))
                ends = bool(len(level)) and int(level.min()) < array_depth
                quiet = commas + here < k and not ends
            else:
                here, quiet = 0, not np.any((sym == 91) & (level == array_depth))
            if quiet:
                depth = int(level[-1]) if len(level) else depth
                in_string, commas, tail = string_at_end, commas + here, (tail + chunk[-256:])[-256:]
                continue
        pos, code, level, outside, in_string_end, escaped_end = exact_scan(chunk, depth, in_string, escaped)
        begin = 0
        if not inside:  # the array opens at an outside "[" one level down, after `"key":`
            for j in np.flatnonzero(outside & (code == _OPEN_ARRAY) & (level == array_depth)):
                p = int(pos[j])
                if key_pattern is not None and key_pattern.search((tail + chunk[max(p - 256, 0):p])[-256:]):
                    inside, begin = True, j + 1
                    break
        if inside:
            sel = slice(begin, None)
            hits = np.flatnonzero(outside[sel] & (code[sel] == _COMMA) & (level[sel] == array_depth))
            closes = np.flatnonzero(outside[sel] & (code[sel] == _CLOSE) & (level[sel] == array_depth - 1))
            end = int(closes[0]) if len(closes) else None
            if end is not None:
                hits = hits[hits < end]
            if commas + len(hits) >= k:
                p = int(pos[begin + hits[k - commas - 1]])
                return chunk[p + 1:], k
            if end is not None:
                total = commas + len(hits)
                return (chunk[int(pos[begin + end]):], total + 1) if total else None
            commas += len(hits)
        depth = int(level[-1]) if len(level) else depth
        in_string, escaped, tail = in_string_end, escaped_end, (tail + chunk[-256:])[-256:]
    return None


def reduced_scan(chunk: bytes, in_string: bool) -> tuple[bytes, bool] | None:
    """The chunk as quotes, brackets and commas, when no string in it holds a bracket, comma or escape (else
    None), and whether it ends inside a string.

    Such strings shrink to adjacent quote pairs, so a count of ``""`` pairs (bytes.count pairs them left to right,
    as a parser would) against the count of quotes proves it without building anything.
    """
    text = chunk.translate(None, _DROP_ALL_BUT_STRUCTURE)
    if b"\\" in text:
        return None
    body = text
    if in_string:  # the first quote closes the string the last chunk opened
        if not text.startswith(b'"'):
            return None
        body = text[1:]
    quotes, pairs = body.count(b'"'), body.count(b'""')
    if quotes == 2 * pairs:
        return text, False
    if quotes == 2 * pairs + 1 and body.endswith(b'"'):  # a string opens at the very end
        return text, True
    return None


def exact_scan(chunk: bytes, depth: int, in_string: bool, escaped: bool) -> tuple[Any, ...]:
    """Every quote, bracket and comma of the chunk: positions, codes, depth after each, whether it stands outside
    strings; and the string and escape state at the chunk's end."""
    np, table, _ = scan_tables()
    codes = table[np.frombuffer(chunk, np.uint8)]
    start = 1 if escaped else 0
    escaped_end = False
    if escaped or b"\\" in chunk:
        marks = [m.end() - 1 for m in _ESCAPE.finditer(chunk, start)]
        if escaped:
            marks.append(0)
        if marks:
            codes[marks] = 0  # an escaped quote does not end its string
        escaped_end = len(chunk) > start and chunk[-1] == 92 and (len(chunk) - 1) not in marks
    pos = np.flatnonzero(codes)
    code = codes[pos]
    is_quote = code == _QUOTE
    quotes = np.cumsum(is_quote)
    outside = ~is_quote & (((quotes + in_string) & 1) == 0)
    step = np.where(outside & ((code == _OPEN_ARRAY) | (code == _OPEN_MAP)), 1, 0) - np.where(outside & (code == _CLOSE), 1, 0)
    level = depth + np.cumsum(step, dtype=np.int64)
    in_string_end = bool((int(quotes[-1]) + in_string) & 1) if len(quotes) else in_string
    return pos, code, level, outside, in_string_end, escaped_end


def _chunks(path: str) -> Iterator[bytes]:
    """Decompressed chunks of a file (for tests and benchmarks)."""
    inflater = _Inflater(path)
    try:
        while chunk := inflater.chunk():
            yield chunk
    finally:
        inflater.close()
