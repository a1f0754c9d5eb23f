"""Files that are never seen half-written: atomic replace with fsync, cleanup of what killed writers left,
and sha256 of a file. Every module writes through these (store shards, manifests, checkpoints, reports)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

TMP_SUFFIX = ".tmp"
_HOST = socket.gethostname().replace(".", "_")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never a part.

    The temporary file is ``.<name>.<host>-<pid>.<random>.tmp`` beside it: a writer that is killed leaves
    it behind, and :func:`remove_stale_temporaries` can tell it from a live writer's.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_HOST}-{os.getpid()}.", suffix=TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def temporary_name(path: str | Path) -> Path:
    """A not-yet-created temporary path beside ``path`` in the form :func:`remove_stale_temporaries` recognises
    (for a file put in place by ``os.link`` / ``os.replace`` rather than written)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{_HOST}-{os.getpid()}.{os.urandom(4).hex()}{TMP_SUFFIX}")


def remove_stale_temporaries(directory: str | Path, legacy_age_s: float = 600.0) -> int:
    """Delete the temporary files that killed writers on this host left in ``directory``; returns how many.

    A temporary file names its writer (host and pid); it is stale when that process is gone. Files of
    other hosts (a store on a shared disk built by several) are left alone; unnamed ones (older
    versions) go once they are ``legacy_age_s`` old.
    """
    removed = 0
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return 0
    for e in entries:
        if not (e.name.startswith(".") and e.name.endswith(TMP_SUFFIX) and e.is_file(follow_symlinks=False)):
            continue
        parts = e.name.split(".")  # "", <name parts>, <host>-<pid>, <random>, "tmp"
        owner = re.fullmatch(r"(.+)-(\d+)", parts[-3]) if len(parts) >= 5 else None
        if owner and owner[1] == _HOST:
            stale = not _alive(int(owner[2]))
        elif owner:
            stale = False
        else:
            try:
                stale = time.time() - e.stat().st_mtime > legacy_age_s
            except OSError:
                continue
        if stale:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(e.path)
                removed += 1
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1, sort_keys=True).encode())


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # not supported on this platform/filesystem
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
