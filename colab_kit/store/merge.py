"""One store from the parts several hosts built: ``convert --shard i/N`` on each host, then ``merge``.

Each host writes its shards (every N-th, from i) and ``manifest.part-i-of-N.json`` into a folder of its own. The
merge checks that the parts belong together (one fingerprint, one N and shard size, every part present once and
complete), brings each shard into the output folder, checking its size and sha256 against the part's manifest on the
way (copied, hard-linked or moved), then writes the manifest a single-host build would have written. Shard bytes
are deterministic, so the merged store equals a single-host build file for file, byte for byte.

A merge that is killed resumes: shards already in place with the right checksum are kept.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Sequence

from colab_kit.store.format import GraphStore, StoreError
from colab_kit.store.manifest import NAME as MANIFEST
from colab_kit.store.manifest import PART_GLOB, Manifest, ManifestError, ShardEntry
from colab_kit.util.files import remove_stale_temporaries, sha256_file, temporary_name

log = logging.getLogger(__name__)
MERGE_MODES = ("copy", "link", "move")
_PART = re.compile(r"manifest\.part-(\d+)-of-(\d+)\.json$")


def find_parts(folders: Sequence[str | Path]) -> list[tuple[Path, Manifest]]:
    """(folder, part manifest) for every ``manifest.part-i-of-N.json`` in ``folders``.

    Raises:
        StoreError: a folder holds no part manifest, or a damaged one.
    """
    parts = []
    for folder in map(Path, folders):
        found = sorted(p for p in folder.glob(PART_GLOB) if _PART.search(p.name))
        if not found:
            raise StoreError(f"{folder} holds no part of a store (no manifest.part-i-of-N.json); pass the --out folders "
                             "of `python -m colab_kit convert --shard i/N` runs")
        for p in found:
            try:
                parts.append((folder, Manifest.read(p)))
            except ManifestError as exc:
                raise StoreError(f"{exc}; run its `convert --shard` again to rewrite it") from None
    return parts


def check_parts(parts: list[tuple[Path, Manifest]]) -> Manifest:
    """The manifest of the whole store the parts make, before its shards are in place.

    Raises:
        StoreError: parts of different stores, a part missing, repeated or unfinished, or a gap in the shards.
    """
    first_dir, first = parts[0]
    n = first.part[1]
    seen: dict[int, Path] = {}
    for folder, m in parts:
        if not m.same_store(first):
            key = next(k for k in ("fingerprint", "graph_kind", "params", "source", "limit", "shard_size", "format_version")
                       if getattr(m, k) != getattr(first, k))
            raise StoreError(f"{folder} and {first_dir} are parts of different stores ({key} {getattr(m, key)!r} vs "
                             f"{getattr(first, key)!r}); build every part with the same source and settings")
        i, n_i = m.part
        if n_i != n:
            raise StoreError(f"{folder} is part {i}/{n_i} but {first_dir} is a part of {n}; build all parts with the same N")
        if i in seen:
            raise StoreError(f"part {i}/{n} is in both {seen[i]} and {folder}; pass each part once")
        if not m.complete:
            raise StoreError(f"part {i}/{n} in {folder} is unfinished ({len(m.shards)} shards); run its "
                             f"`convert --shard {i}/{n}` again to finish it")
        seen[i] = folder
    missing = sorted(set(range(n)) - set(seen))
    if missing:
        raise StoreError(f"part(s) {', '.join(f'{i}/{n}' for i in missing)} missing; build them with `convert --shard "
                         f"{missing[0]}/{n}` ... and pass their folders too")
    shards = sorted((e for _, m in parts for e in m.shards), key=lambda e: e.index)
    indices = [e.index for e in shards]
    if indices != list(range(len(indices))):
        gap = next(i for i, j in enumerate(indices) if i != j) if indices else 0
        raise StoreError(f"the parts hold no shard {gap} although they are complete; rebuild part {gap % n}/{n}")
    return Manifest(fingerprint=first.fingerprint, graph_kind=first.graph_kind, params=first.params, source=first.source,
                    limit=first.limit, shard_size=first.shard_size, format_version=first.format_version,
                    part=(0, 1), shards=shards).finish()


def merge_stores(folders: Sequence[str | Path], out: str | Path, mode: str = "copy",
                 progress: bool = True) -> GraphStore:
    """Merge the parts in ``folders`` into one store at ``out`` (which may be one of them).

    Args:
        mode: ``copy`` (parts kept), ``link`` (hard links: same file system, no space used) or ``move``.

    Raises:
        StoreError: the parts do not make one store (see :func:`check_parts`), a shard's checksum does not match
            its part's manifest, or ``out`` holds another store.
    """
    from tqdm.auto import tqdm

    if mode not in MERGE_MODES:
        raise StoreError(f"merge mode must be one of {MERGE_MODES} (got {mode!r})")
    parts = find_parts(folders)
    manifest = check_parts(parts)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    try:
        have = Manifest.read(out / MANIFEST)
    except ManifestError:
        have = None  # a damaged manifest of an earlier merge: written again below
    if have is not None and have.fingerprint != manifest.fingerprint:
        raise StoreError(f"{out} holds another store (fingerprint {have.fingerprint}, the parts make "
                         f"{manifest.fingerprint}); merge into an empty folder")
    where = {e.index: folder for folder, m in parts for e in m.shards}
    size = sum(e.bytes for e in manifest.shards)
    with tqdm(total=size, unit="B", unit_scale=True, desc=f"merge ({mode})", disable=not progress) as bar:
        for e in manifest.shards:
            _place(where[e.index] / e.file, out / e.file, e, mode)
            bar.update(e.bytes)
    manifest.write(out / MANIFEST)
    for folder, m in parts:  # the parts are one store now; in `out`, their manifests would only mislead a convert
        if folder.resolve() == out.resolve():
            (out / f"manifest.part-{m.part[0]}-of-{m.part[1]}.json").unlink(missing_ok=True)
    log.info("merged %d parts into %s: %d graphs in %d shards, every checksum checked", len(parts), out,
             manifest.n_graphs, len(manifest.shards))
    return GraphStore(out)


def _place(src: Path, dst: Path, entry: ShardEntry, mode: str) -> None:
    """Put shard ``src`` at ``dst``, checked against its manifest ``entry`` (kept when already there and sound)."""
    if dst.exists() and dst.stat().st_size == entry.bytes and sha256_file(dst) == entry.sha256:
        return  # merged by an earlier, killed merge, or ``out`` is this part's own folder
    if not src.exists() or src.stat().st_size != entry.bytes:
        raise StoreError(f"shard {src} listed in its part's manifest is {'missing' if not src.exists() else 'truncated'}; "
                         "copy it again, or run that part's `convert --shard` again to rebuild it")
    tmp = temporary_name(dst)
    if mode == "copy":  # the checksum is computed on the way
        _copy_checked(src, tmp, entry)
    else:
        _check(src, entry)
        if mode == "link":
            os.link(src, tmp)
        else:
            try:
                os.replace(src, tmp)
            except OSError:  # another file system: copy, then remove the part's file
                _copy_checked(src, tmp, entry)
                src.unlink()
    os.replace(tmp, dst)


def _check(src: Path, entry: ShardEntry) -> None:
    if sha256_file(src) != entry.sha256:
        raise StoreError(f"shard {src} does not match its part's manifest (sha256 differs: damaged in transfer?); copy "
                         "it again, or delete it and run that part's `convert --shard` again")


def _copy_checked(src: Path, dst: Path, entry: ShardEntry) -> None:
    h = hashlib.sha256()
    with open(src, "rb") as f, open(dst, "wb") as g:
        while block := f.read(1 << 22):
            h.update(block)
            g.write(block)
        g.flush()
        os.fsync(g.fileno())
    if h.hexdigest() != entry.sha256:
        dst.unlink()
        _check(src, entry)  # names the damaged file
        raise StoreError(f"shard {src} changed while it was copied; merge again")
