"""Files that are never seen half-written, and never trusted unchecked: atomic replace with fsync, cleanup of what
killed writers left, sha256 of a file (checked once per process per file version), a per-folder record of the
sha256 of every file written there, and one-line errors for a full disk. Every module writes through these (store
shards, manifests, checkpoints, reports)."""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from colab_kit.errors import ColabKitError

TMP_SUFFIX = ".tmp"
_HOST = socket.gethostname().replace(".", "_")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never a part.

    The temporary file is ``.<name>.<host>-<pid>.<random>.tmp`` beside it: a writer that is killed leaves
    it behind, and :func:`remove_stale_temporaries` can tell it from a live writer's.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_HOST}-{os.getpid()}.", suffix=TMP_SUFFIX)
    except OSError as exc:
        raise disk_error(exc, path, len(data)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600: a shared Drive folder needs others to read it
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise disk_error(exc, path, len(data)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_copy(src: str | Path, dst: str | Path) -> None:
    """Copy ``src`` to ``dst`` so that readers see the old file or the whole copy, through a temporary file that
    :func:`remove_stale_temporaries` recognises (removed here when the copy fails)."""
    dst = Path(dst)
    tmp = temporary_name(dst)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class DiskFullError(ColabKitError, OSError):
    """A write failed for lack of space (or of write permission): the message names the folder, what was needed and
    what is free, and the fix. What was completed before it stays valid."""


def disk_error(exc: OSError, path: str | Path, size: int) -> OSError:
    """``exc`` as a one-line :class:`DiskFullError` when the disk is full or read-only, else ``exc`` itself."""
    folder = Path(path).parent
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            free = f"{os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize / 2**20:.0f} MB free"
        except OSError:
            free = "free space unknown"
        return DiskFullError(f"no space left in {folder} writing {Path(path).name} ({size / 2**20:.1f} MB needed, "
                             f"{free}); free disk space or pass --work-dir on a bigger disk, then run the same command "
                             "again: what was completed is kept")
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return DiskFullError(f"cannot write {path} ({exc.strerror}); pass a writable directory, then run the same "
                             "command again: what was completed is kept")
    return exc


@functools.cache
def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


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


def hash_file(path: str | Path, h: Any = None, chunk: int = 1 << 22) -> Any:
    """``h`` (a new sha256 by default) updated with the bytes of ``path``, read in chunks."""
    h = hashlib.sha256() if h is None else h
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h


def sha256_file(path: str | Path) -> str:
    """The sha256 of a file's content, hex: the one way every module hashes a file."""
    return hash_file(path).hexdigest()


# (path, device, inode, size, mtime, ctime) of files whose sha256 this process has checked, with that sha256: a
# file is hashed once per version per process (forked DataLoader workers inherit what their parent checked)
_CHECKED: dict[tuple[Any, ...], str] = {}


def _version(path: Path) -> tuple[Any, ...]:
    st = os.stat(path)
    return (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def mark_checked(path: str | Path, sha256: str) -> None:
    """Record that this process has verified ``path`` (its current version) as ``sha256``: later checks of that
    version pass without reading it (benchmarks/bench_checksums.py times the read path this way without the check)."""
    _CHECKED[_version(Path(path))] = sha256


def has_sha256(path: str | Path, expected: str) -> bool:
    """Whether ``path``'s content has sha256 ``expected``; each version of a file is hashed once per process."""
    path = Path(path)
    key = _version(path)
    if _CHECKED.get(key) == expected:
        return True
    actual = sha256_file(path)
    _CHECKED[key] = actual
    return actual == expected


#: Per folder: the sha256 of every checked file written there lately (checkpoints, best weights), so that a file
#: that was damaged afterwards (a flipped bit, a truncated copy on Drive) is recognised before it is loaded.
CHECKSUMS = "checksums.json"
_KEEP = 32


def _recorded(folder: Path) -> list[str] | None:
    try:
        data = json.loads((folder / CHECKSUMS).read_text())
        return [str(h) for h in data["sha256"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_checked(path: str | Path, data: bytes) -> str:
    """Write ``data`` atomically and record its sha256 in the folder's :data:`CHECKSUMS` first (a kill between the
    two leaves the old file, whose sha256 is still recorded). Returns the sha256."""
    path = Path(path)
    digest = hashlib.sha256(data).hexdigest()
    known = _recorded(path.parent)
    if known is None:  # the first checked write here: files already present are taken as they are
        known = [sha256_file(p) for p in sorted(path.parent.glob("*.pt")) if p.is_file()]
    atomic_write_json(path.parent / CHECKSUMS, {"sha256": ([digest] + [h for h in known if h != digest])[:_KEEP]})
    atomic_write_bytes(path, data)
    return digest


def is_intact(path: str | Path, record_folder: str | Path | None = None) -> bool | None:
    """Whether ``path`` holds bytes that were written by :func:`write_checked`: True, False (damaged or replaced),
    or None when its folder records no checksums (a file written before they were recorded).

    Args:
        record_folder: where the record is (default: the file's folder).
    """
    path = Path(path)
    known = _recorded(Path(record_folder) if record_folder is not None else path.parent)
    if known is None:
        return None
    key = _version(path)
    if _CHECKED.get(key) in known:
        return True
    actual = sha256_file(path)
    _CHECKED[key] = actual
    return actual in known


def merge_checksums(src_folder: str | Path, dst_folder: str | Path) -> None:
    """Add the checksums recorded in ``src_folder`` to ``dst_folder``'s record (a restore from the persist dir)."""
    src, dst = _recorded(Path(src_folder)), _recorded(Path(dst_folder))
    if src is None:
        return
    merged = list(dict.fromkeys([*(dst or []), *src]))[-2 * _KEEP:]
    Path(dst_folder).mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(dst_folder) / CHECKSUMS, {"sha256": merged})
