"""Mirror a run directory to a persistent place (Google Drive) and restore it on a fresh runtime.

Only few, large, completed files travel: store shards and manifest, split files, checkpoints, the
report and plan.json — never one file per graph. Each copy goes to a temporary name in the target
directory and is renamed into place, so a disconnect mid-copy leaves the old file or none. A failure
to write the persist dir (a Drive hiccup) is retried and then logged: it never stops the local run, and after a
few failures in a row mirroring stops for the run, said once. A restore copies back only what passes its check.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from colab_kit.run_folder import STORES, RunFolder
from colab_kit.store import Manifest, ManifestError
from colab_kit.util.files import CHECKSUMS, atomic_copy, has_sha256, is_intact, merge_checksums

log = logging.getLogger(__name__)

class Mirror:
    """Copies completed files of a run folder to its persisted copy (same layout).

    A copy that fails is retried (``retries`` tries, ``wait`` s apart, growing); after ``give_up`` files in a row
    failed (a read-only or full Drive) mirroring stops for this run, said once: the run goes on locally and the
    same command, run again once the persist dir is fixed, mirrors what is done."""

    def __init__(self, folder: RunFolder, persist: RunFolder | None, retries: int = 3, wait: float = 0.5,
                 give_up: int = 3) -> None:
        self.folder = folder
        self.persist = persist
        self.retries, self.wait, self.give_up = retries, wait, give_up
        self.failures: list[str] = []
        self._in_a_row = 0

    @property
    def enabled(self) -> bool:
        return self.persist is not None

    def push(self, *files: str | Path) -> bool:
        """Copy these files (paths in the run folder, or relative to it) if they changed; False if any copy failed.
        A file that is not there is skipped (the mirror copies what exists)."""
        ok = True
        for f in files:
            rel = Path(f).relative_to(self.folder.root) if Path(f).is_absolute() else Path(f)
            src = self.folder.root / rel
            if src.is_file() and self.persist is not None:
                ok &= self._copy(src, self.persist.root / rel)
        return ok

    def push_all(self) -> bool:
        if self.persist is None:
            return True
        rels = sorted({p.relative_to(self.folder.root) for pat in self.folder.kept() for p in self.folder.root.glob(pat)
                       if p.is_file()}, key=_record_first)
        return self.push(*rels)

    def _copy(self, src: Path, dst: Path) -> bool:
        try:
            if dst.exists() and dst.stat().st_size == src.stat().st_size and dst.stat().st_mtime >= src.stat().st_mtime:
                return True
        except OSError:
            pass
        last: OSError | None = None
        for attempt in range(self.retries):
            try:
                dst.parent.mkdir(parents=True, exist_ok=True)
                atomic_copy(src, dst)
                self._in_a_row = 0
                return True
            except OSError as exc:
                last = exc
                if attempt + 1 < self.retries:
                    time.sleep(self.wait * (attempt + 1))
        msg = f"could not copy {src} to {dst} after {self.retries} tries ({last}); the local run goes on"
        log.warning(msg)
        self.failures.append(msg)
        self._in_a_row += 1
        if self._in_a_row >= self.give_up:
            log.warning("mirroring to %s stops for this run: %d copies in a row failed (%s); the run goes on locally "
                        "only; fix the persist dir (or pass another --persist-dir) and run the same command again to "
                        "mirror what is done", self.persist.root if self.persist else None, self._in_a_row, last)
            self.persist = None
        return False


def _record_first(rel: Path) -> tuple[int, str]:
    """Checksum records travel before the files they list (a disconnect between leaves recorded files only)."""
    return (0 if rel.name == CHECKSUMS else 1, str(rel))


def restore(persist: RunFolder | None, folder: RunFolder) -> list[str]:
    """Copy a persisted run back into ``folder`` before any work, restoring only what passes its check.

    Store shards must match the sha256 in their persisted manifest (a store whose persisted manifest is damaged is
    not restored at all: the converter rebuilds it); checkpoints and best weights must match the sha256 recorded
    beside them (:data:`colab_kit.util.files.CHECKSUMS`, merged into the local record). A local file is kept when it
    has the persisted one's size and passes its own check. Returns what was restored.
    """
    if persist is None or not persist.root.is_dir():
        return []
    src_root, dst_root = persist.root, folder.root

    checksums: dict[tuple[str, str], tuple[int, str]] = {}  # (store dir, shard) -> size, sha256
    untrusted: set[str] = set()  # store dirs whose persisted manifest is damaged
    for mpath in (m for d in STORES for m in (src_root / d).glob("manifest*.json")):
        try:
            manifest = Manifest.read(mpath)
        except ManifestError as exc:
            log.warning("persisted manifest %s: its store is not restored; this run rebuilds it and mirrors the new one",
                        exc)
            untrusted.add(mpath.parent.name)
            continue
        for e in manifest.shards if manifest is not None else []:
            checksums[(mpath.parent.name, e.file)] = (e.bytes, e.sha256)
    for rec in sorted(src_root.rglob(CHECKSUMS)):
        merge_checksums(rec.parent, dst_root / rec.parent.relative_to(src_root))
    restored = []
    for pat in persist.kept():
        for src in sorted(src_root.glob(pat)):
            if not src.is_file() or src.name == CHECKSUMS:
                continue
            rel = src.relative_to(src_root)
            if rel.parts[0] in untrusted:
                continue
            if not _passes(src, checksums):
                log.warning("persisted file %s is damaged (its sha256 is not the one recorded); not restored", src)
                continue
            dst = dst_root / rel
            if dst.exists() and dst.stat().st_size == src.stat().st_size and _passes(dst, checksums):
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            atomic_copy(src, dst)
            restored.append(str(rel))
    if restored:
        log.info("restored %d files from %s", len(restored), src_root)
    return restored


def _passes(path: Path, checksums: dict[tuple[str, str], tuple[int, str]]) -> bool:
    """A shard against its manifest's size and sha256; a checked file (.pt) against its folder's record; others pass."""

    key = (path.parent.name, path.name)
    if key in checksums:
        size, sha = checksums[key]
        return path.stat().st_size == size and has_sha256(path, sha)
    if path.name.startswith("shard-"):  # a shard no manifest lists: never restored (the converter redoes it)
        return False
    if path.suffix == ".pt":
        return is_intact(path) is not False
    return True
