"""One writer per folder: an OS file lock that a killed process releases.

Two commands writing one run folder (the panel's Run and a command-line cell, a double click) would both convert,
both train and interleave their logs. ``hold(folder)`` takes an exclusive ``flock`` on ``<folder>/.colab_kit.lock``
for as long as the block runs; a second holder, in another process or in the same one (the notebook's panel and a
cell), is refused at once with one line naming the process that holds it. The kernel drops the lock when its
holder exits or is killed, so a lock is never stale and nothing has to be cleaned up after a disconnect.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from colab_kit.errors import ColabKitError

LOCK_NAME = ".colab_kit.lock"


class FolderBusy(ColabKitError, RuntimeError):
    """Another process (or another run in this one) is writing the folder; the message names it."""


class FolderUnwritable(ColabKitError, OSError):
    """A folder that cannot be created or written; the message names it, the reason and the fix."""


def _describe(info: dict[str, object]) -> str:
    started = info.get("started")
    age = f", started {time.strftime('%H:%M:%S', time.localtime(float(started)))}" if isinstance(started, (int, float)) else ""
    host = f" on {info['host']}" if info.get("host") and info.get("host") != socket.gethostname() else ""
    return f"process {info.get('pid', '?')}{host} (`{info.get('command', '?')}`{age})"


def ensure_dir(folder: str | Path, what: str, fix: str) -> Path:
    """``folder`` created if needed and checked writable.

    Raises:
        FolderUnwritable: naming ``what`` (e.g. "the work dir"), the folder, the OS's reason and ``fix``.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise FolderUnwritable(f"cannot write {what} {folder} ({reason}); {fix}") from None
    return folder


def clear(folder: str | Path) -> None:
    """Delete everything in ``folder`` but its lock (``--fresh`` while holding it: a second command must still find
    the lock it waits on)."""
    import shutil

    for entry in Path(folder).iterdir():
        if entry.name == LOCK_NAME:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def hold_file(path: str | Path, what: str = "output") -> contextlib.AbstractContextManager[Path]:
    """:func:`hold` for one file (a predictions CSV): its lock is ``.<name>.lock`` in the same folder."""
    path = Path(path)
    return hold(path.parent, what, name=f".{path.name}.lock")


def _command() -> str:
    """What this process is, in the words a user typed: ``python -m colab_kit run --mode debug``."""
    argv = list(sys.argv)
    if argv and argv[0].endswith(os.path.join("colab_kit", "__main__.py")):
        return " ".join(["python -m colab_kit", *argv[1:]])[:300]
    if argv and "ipykernel" in argv[0]:
        return "a notebook kernel: the control panel or a cell"
    return " ".join(argv)[:300] or "python"


def _holder(fd: int) -> dict[str, object]:
    """The record the lock's holder wrote; it writes it right after taking the lock, so an empty or half-written
    one is read again for up to half a second."""
    for _ in range(10):
        try:
            info = json.loads(os.pread(fd, 4096, 0) or b"null")
        except ValueError:
            info = None
        if isinstance(info, dict):
            return info
        time.sleep(0.05)
    return {}


@contextlib.contextmanager
def hold(folder: str | Path, what: str = "folder", name: str = LOCK_NAME) -> Iterator[Path]:
    """Hold the exclusive write lock of ``folder`` (created if missing) while the block runs.

    Args:
        folder: the folder one writer at a time may change (a run folder, a store, a prediction output).
        what: how the message names it ("run folder", "store").
        name: the lock file's name in ``folder``; one file's lock (an output CSV) is ``.<file name>.lock`` beside it
            (:func:`hold_file`).

    Raises:
        FolderBusy: another holder has it; the message names its process and command.
        FolderUnwritable: the folder cannot be created.
    """
    folder = Path(folder)
    ensure_dir(folder, f"the {what}", "pass a writable directory (--work-dir / --out)")
    path = folder / name
    try:
        import fcntl
    except ImportError:  # not a POSIX system: no OS lock to take (Colab and Linux always have one)
        yield folder
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        info = _holder(fd)
        os.close(fd)
        raise FolderBusy(f"the {what} {folder if name == LOCK_NAME else folder / name[1:-5]} is in use by {_describe(info)}; wait for it to finish, or stop it "
                         f"(kill {info.get('pid', '<pid>')}) and run this again: two commands must not write one "
                         "folder") from None
    try:
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "command": _command()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        yield folder
    finally:
        os.close(fd)  # releases the lock
