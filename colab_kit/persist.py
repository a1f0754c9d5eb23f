"""Mirror a run directory to a persistent place (Google Drive) and restore it on a fresh runtime.

Only few, large, completed files travel: store shards and manifest, split files, checkpoints, the
report and plan.json — never one file per graph. Each copy goes to a temporary name in the target
directory and is renamed into place, so a disconnect mid-copy leaves the old file or none. A failure
to write the persist dir (a Drive hiccup) is retried and then logged: it never stops the local run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

log = logging.getLogger(__name__)

# what is worth keeping, relative to the run directory
STORE_DIRS = ("store", "store-structures")  # a run's graph store; its structure-only store (graph_edges=device)
PATTERNS = ("plan.json",
            *(f"{d}/{f}" for d in STORE_DIRS for f in ("manifest*.json", "shard-*.safetensors", "splits-*.npz",
                                                        "teacher-*.npz")),
            "checkpoints/*.pt", "best.pt", "metrics.jsonl", "metrics.csv", "timing.json", "report/*",
            "fold-*.csv", "folds.csv", "results.json.gz")  # the last three: a benchmark's directory


class Mirror:
    """Copies completed files of ``run_dir`` to ``persist_dir`` (same relative layout)."""

    def __init__(self, run_dir: str | Path, persist_dir: str | Path | None, retries: int = 3, wait: float = 1.0) -> None:
        self.run_dir = Path(run_dir)
        self.persist_dir = Path(persist_dir) if persist_dir else None
        self.retries, self.wait = retries, wait
        self.failures: list[str] = []

    @property
    def enabled(self) -> bool:
        return self.persist_dir is not None

    def push(self, *relative: str | Path) -> bool:
        """Copy these files (relative to the run dir) if they changed; False if any copy failed."""
        if self.persist_dir is None:
            return True
        ok = True
        for rel in relative:
            src = self.run_dir / rel
            if src.is_file():
                ok &= self._copy(src, self.persist_dir / rel)
        return ok

    def push_all(self) -> bool:
        if self.persist_dir is None:
            return True
        rels = sorted({p.relative_to(self.run_dir) for pat in PATTERNS for p in self.run_dir.glob(pat) if p.is_file()})
        return self.push(*rels)

    def _copy(self, src: Path, dst: Path) -> bool:
        try:
            if dst.exists() and dst.stat().st_size == src.stat().st_size and dst.stat().st_mtime >= src.stat().st_mtime:
                return True
        except OSError:
            pass
        last: OSError | None = None
        for attempt in range(self.retries):
            tmp = dst.with_name(f".{dst.name}.partial")
            try:
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, tmp)
                os.replace(tmp, dst)
                return True
            except OSError as exc:
                last = exc
                try:
                    tmp.unlink(missing_ok=True)
                except OSError:
                    pass
                time.sleep(self.wait * (attempt + 1))
        msg = f"could not copy {src} to {dst} after {self.retries} tries ({last}); the local run goes on"
        log.warning(msg)
        self.failures.append(msg)
        return False


def restore(persist_dir: str | Path | None, run_dir: str | Path) -> list[str]:
    """Copy a persisted run back into ``run_dir`` before any work, verifying store shards.

    Files already present locally with the same size are kept. Shards whose checksum does not match
    the persisted manifest are not restored (the converter rebuilds them). Returns what was restored.
    """
    if persist_dir is None:
        return []
    src_root, dst_root = Path(persist_dir), Path(run_dir)
    if not src_root.is_dir():
        return []
    from colab_kit.store import sha256_file

    checksums: dict[tuple[str, str], tuple[int, str]] = {}  # (store dir, shard) -> size, sha256
    for mpath in (m for d in STORE_DIRS for m in (src_root / d).glob("manifest*.json")):
        try:
            for e in json.loads(mpath.read_text()).get("shards", []):
                checksums[(mpath.parent.name, e["file"])] = (e["bytes"], e["sha256"])
        except (OSError, json.JSONDecodeError, KeyError) as exc:
            log.warning("persisted manifest %s is unreadable (%s); its shards will be rebuilt", mpath, exc)
    restored = []
    for pat in PATTERNS:
        for src in sorted(src_root.glob(pat)):
            if not src.is_file():
                continue
            rel = src.relative_to(src_root)
            dst = dst_root / rel
            if dst.exists() and dst.stat().st_size == src.stat().st_size:
                continue
            key = (src.parent.name, src.name)
            if key in checksums and (src.stat().st_size, sha256_file(src)) != checksums[key]:
                log.warning("persisted shard %s is damaged (checksum mismatch); it will be rebuilt", src)
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(f".{dst.name}.partial")
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
            restored.append(str(rel))
    if restored:
        log.info("restored %d files from %s", len(restored), src_root)
    return restored
