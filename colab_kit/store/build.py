"""Resumable, parallel conversion of a structure source into a graph store.

The main process only streams raw items (cheap dicts / texts) and hands chunks of ``shard_size``
to a bounded pool of worker processes; each worker parses, converts and writes one whole shard,
then reports a few numbers back, except the first shard of each call, which every worker converts a slice of
(:mod:`colab_kit.store.shard_build`), so a resume commits sooner. At most ``2 x workers`` chunks are in flight, so memory stays flat
however large the source. Re-running the same conversion skips every shard the manifest lists and
redoes only those that were in flight. ``part=(i, n)`` builds every n-th shard so n hosts can build
one store together; a final run without ``part`` adopts their shards and finishes the manifest.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import time
import warnings
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from colab_kit.errors import ColabKitError
from colab_kit.graphs import BadStructure, Converter
from colab_kit.plan import BAD_STRUCTURE_POLICIES
from colab_kit.sources import (
    FrameSource,
    LabelSpec,
    RawItem,
    Source,
    SourceError,
    check_target,
    open_source,
    parse_frame,
    parse_structure,
)
from colab_kit.store.format import GraphStore, StoreError, fingerprint, narrow, write_shard
from colab_kit.store.manifest import NAME as MANIFEST
from colab_kit.store.manifest import PART_GLOB, Manifest, ManifestError, ShardEntry, part_name
from colab_kit.store.shard_build import build_split_shard
from colab_kit.store.worker_pool import calm_gc, make_pool, restore_gc
from colab_kit.util.files import has_sha256, remove_stale_temporaries

log = logging.getLogger(__name__)


class ConversionError(ColabKitError, RuntimeError):
    """Conversion stopped; completed shards are kept and a re-run resumes after them."""


@dataclass(frozen=True)
class ConvertResult:
    path: Path
    n_graphs: int
    n_failed: int
    n_shards: int
    shards_reused: int
    seconds: float
    complete: bool


def convert_items(items: list[RawItem], converter: Converter, policy: str,
                  labels: str = "required", frames: LabelSpec | None = None) -> tuple[list, list, list, list, list]:
    """Convert raw items; returns (graphs, ids, targets, failures, warned). ``policy='error'`` raises on the
    first bad item; ``labels='optional'`` keeps an item without a usable label (target NaN: for prediction). Warnings the parsers raise (pymatgen warns once per odd CIF) are captured per item
    into ``warned`` as (id, message) instead of flooding the output.

    With ``frames`` (a potential's frames) each item's labels are read with that spec: the target is the energy per
    atom, and the graph carries the forces, magnetic moments and stress (a frame with unusable labels is a failure
    with its reason)."""
    graphs, ids, targets, failures, warned = [], [], [], [], []
    for item in items:
        reason = check_target(item) if labels == "required" and frames is None else None
        if reason is None:
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    if frames is None:
                        graph = narrow(converter.convert(parse_structure(item), graph_id=item.id))
                        target = float(item.target) if item.target is not None else float("nan")
                    else:
                        structure, frame = parse_frame(item, frames)
                        graph = narrow(converter.convert(structure, graph_id=item.id))
                        graph.update(forces=frame.forces, magmom=frame.magmoms, stress=frame.stress)
                        target = frame.energy
                warned.extend((item.id, _warning_text(w)) for w in caught)
                graphs.append(graph)
                ids.append(item.id)
                targets.append(target)
                continue
            except (SourceError, BadStructure) as exc:
                reason = str(exc)
            except Exception as exc:  # noqa: BLE001 - a library choking on one odd structure (ZeroDivisionError in
                # pymatgen's search of a flat cell, MemoryError, ...) fails that structure, recorded with its
                # exception's type; never the conversion
                reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        if policy == "error":
            raise ConversionError(
                f"structure {item.id!r}: {reason}. Fix or remove it, or pass --set on_bad_structure=skip to skip bad structures"
            )
        failures.append((item.id, reason))
    return graphs, ids, targets, failures, warned


def _warning_text(w: warnings.WarningMessage) -> str:
    return " ".join(f"{w.category.__name__}: {w.message}".split())[:300]


def _build_shard(root: str, index: int, first_item: int, items: list[RawItem], converter: Converter,
                 policy: str, fp: str, labels: str = "required",
                 frames: LabelSpec | None = None) -> tuple[ShardEntry, list[tuple[str, str]]]:
    """Convert and write one shard; (its manifest entry, the first failures: for the main process's log only, the
    shard holds them all)."""
    graphs, ids, targets, failures, warned = convert_items(items, converter, policy, labels, frames)
    entry = write_shard(root, index, graphs, ids, targets, failures, fp, first_item, len(items), warned)
    return entry, failures[:50]


def _chunks(it: Iterable[RawItem], size: int) -> Iterator[list[RawItem]]:
    it = iter(it)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def _usable_entries(root: Path, manifest: Manifest | None, fp: str) -> dict[int, ShardEntry]:
    """Shards a manifest lists whose files are present with the recorded size and sha256 (a damaged one is rebuilt;
    the sha256 checked here is not checked again when this process maps the shard)."""
    if manifest is None or manifest.fingerprint != fp:
        return {}
    ok = {}
    for e in manifest.shards:
        p = root / e.file
        if p.exists() and p.stat().st_size == e.bytes and has_sha256(p, e.sha256):
            ok[e.index] = e
        else:
            log.warning("shard %s is %s; it will be rebuilt", p, "damaged (its sha256 is not the manifest's)"
                        if p.exists() else "missing")
    return ok


def build_store(
    source: str | Path | Source | Iterable[Any],
    out: str | Path,
    converter: Converter,
    *,
    workers: int = 1,
    shard_size: int = 1000,
    limit: int | None = None,
    on_bad_structure: str = "warn",
    part: tuple[int, int] = (0, 1),
    fmt: str | None = None,
    target: str | None = None,
    progress: bool = True,
    on_shard: Callable[[ShardEntry | None], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    labels: str = "required",
) -> ConvertResult:
    """Convert ``source`` into a store at ``out``, resuming whatever an earlier run completed.

    Args:
        source: a path/URL-free source (see :func:`colab_kit.sources.open_source`) or an open Source.
        out: store directory.
        converter: from :func:`colab_kit.graphs.get_converter`.
        workers: conversion processes (1 = in this process).
        shard_size: source items per shard.
        limit: convert only the first ``limit`` items of the source.
        on_bad_structure: skip (record), warn (record + log) or error (stop).
        part: (i, n): build only shards with index % n == i (several hosts, one store).
        on_shard: called with each shard's manifest entry once it is committed (the runner mirrors
            it to Google Drive), and with None when the store completes.
        should_stop: polled before each chunk; True commits the shards in flight and returns an
            incomplete result (``complete=False``) that a later call resumes.
        labels: "required" skips (and records) items without a usable label; "optional" keeps them with a NaN
            target, for a store that is only predicted on (a separate store: its fingerprint says so).

    Raises:
        StoreError: ``out`` holds a store built from other data or settings.
        ConversionError: ``on_bad_structure='error'`` met a bad structure, or nothing converted.
    """
    if on_bad_structure not in BAD_STRUCTURE_POLICIES:
        raise ConversionError(f"on_bad_structure must be one of {BAD_STRUCTURE_POLICIES} (got {on_bad_structure!r})")
    if labels not in ("required", "optional"):
        raise ConversionError(f"labels must be 'required' or 'optional' (got {labels!r})")
    i_part, n_parts = part
    if not (n_parts >= 1 and 0 <= i_part < n_parts):
        raise ConversionError(f"part must be i/N with 0 <= i < N (got {i_part}/{n_parts})")
    t0 = time.perf_counter()
    src = source if isinstance(source, Source) else open_source(source, fmt=fmt, target=target)
    frames = src.spec if isinstance(src, FrameSource) else None
    identity = src.identity() if labels == "required" else {**src.identity(), "labels": labels}
    fp = fingerprint(converter.name, converter.params, identity, limit)
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    if n_stale := remove_stale_temporaries(root):
        log.info("removed %d temporary file(s) left in %s by a conversion that was killed", n_stale, root)
    mpath = root / part_name(i_part, n_parts)
    whole = _load_manifest(root / MANIFEST)
    if whole is not None and whole.fingerprint != fp:
        raise StoreError(
            f"{root} holds a store built with other data or settings (graph kind {whole.graph_kind}, "
            f"params {whole.params}, source {whole.target_name!r} of {whole.source.get('format')}, fingerprint "
            f"{whole.fingerprint}; this one needs {fp}). "
            "For `run`: --fresh rebuilds it, or --work-dir DIR keeps both; for `convert`: another --out"
        )
    if whole is not None and whole.complete:
        lost = len(whole.shards) - len(_usable_entries(root, whole, fp))
        if not lost:
            log.info("store %s is complete (%d graphs): nothing to convert", root, whole.n_graphs)
            return _result(root, whole, len(whole.shards), t0)
        log.warning("%d shard(s) of the complete store %s are missing or damaged: rebuilding them", lost, root)
    own = _load_manifest(mpath) if mpath != root / MANIFEST else whole
    done = _usable_entries(root, own, fp)
    if n_parts == 1:  # adopt shards that parallel parts built into this directory
        for p in sorted(root.glob(PART_GLOB)):
            done.update(_usable_entries(root, _load_manifest(p), fp))
    manifest = Manifest(fingerprint=fp, graph_kind=converter.name, params=converter.params, source=identity,
                        limit=limit, shard_size=shard_size, part=(i_part, n_parts),
                        shards=sorted(done.values(), key=lambda e: e.index))
    if own is not None and own.shard_size != shard_size and done:
        raise StoreError(f"{root} was started with shard_size={own.shard_size}; resume with the same shard size")
    reused = len(done)
    if reused:
        log.info("resuming %s: %d shards already done, redoing the rest", root, reused)
    total = src.count()
    total = min(total, limit) if (total is not None and limit is not None) else (total if limit is None else limit)
    # Seek past the leading shards that are done (or belong to other hosts' parts) instead of streaming them:
    # a source that can skip items without parsing them makes a resume start at once.
    first = 0
    while first in done or first % n_parts != i_part:
        first += 1
    start = first * shard_size if limit is None else min(first * shard_size, limit)
    items = src.iter_from(start)
    if limit is not None:
        items = itertools.islice(items, limit - start)

    pending: dict[Future, int] = {}
    n_failed_warned = 0
    stopped = False
    bar = _bar(total, progress)
    gc_state = calm_gc()  # before the pool: forked workers inherit it
    pool = None
    # The call's first shard is converted by every worker at once (idle pool, nothing else in flight) and the
    # main process reads no further until it commits: on 2 cores, reading ahead would take CPU from the slices.
    split_next = workers > 1
    try:
        pool = make_pool(workers)
        bar.update(min(start, total) if total is not None else start)
        for index, chunk in enumerate(_chunks(items, shard_size), start=first):
            if should_stop is not None and should_stop():
                stopped = True
                break
            first_item = index * shard_size
            if index in done or index % n_parts != i_part:
                bar.update(len(chunk))
                continue
            if pool is None or split_next:
                entry = (_build_shard(str(root), index, first_item, chunk, converter, on_bad_structure, fp, labels, frames)
                         if pool is None
                         else build_split_shard(pool, functools.partial(convert_items, labels=labels, frames=frames),
                                                str(root), index, first_item, chunk, converter,
                                                on_bad_structure, fp, workers))
                split_next = False
                n_failed_warned = _commit(mpath, manifest, entry, on_bad_structure, n_failed_warned, bar, on_shard)
                continue
            while len(pending) >= 2 * workers:
                n_failed_warned = _drain(pending, mpath, manifest, on_bad_structure, n_failed_warned, bar, on_shard)
            pending[pool.submit(_build_shard, str(root), index, first_item, chunk, converter, on_bad_structure, fp,
                                labels, frames)] = len(chunk)
        while pending:
            n_failed_warned = _drain(pending, mpath, manifest, on_bad_structure, n_failed_warned, bar, on_shard)
    except BaseException:
        for f in pending:
            f.cancel()
        raise
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        restore_gc(gc_state)
    if stopped:
        log.info("conversion stopped with %d shards done; run again to resume", len(manifest.shards))
        return _result(root, manifest, reused, t0)

    manifest.finish()
    if n_parts == 1 and manifest.n_items == 0:
        raise ConversionError(f"source {src.path or src.format} has no structures; check the file or --format")
    if n_parts == 1 and manifest.n_graphs == 0:
        raise ConversionError(
            f"none of the {manifest.n_items} structures could be converted; see the warnings above "
            "(e.g. isolated atoms: try a larger --set cutoff=...)"
        )
    manifest.write(mpath)
    if n_parts == 1:
        for p in root.glob(PART_GLOB):
            p.unlink()
    if on_shard is not None:
        on_shard(None)
    log.info("store %s: %d graphs, %d skipped, %d shards (%d reused) in %.1f s", root, manifest.n_graphs,
             manifest.n_failed, len(manifest.shards), reused, time.perf_counter() - t0)
    if manifest.n_warned:
        log.info("%d structures converted although their parser warned (e.g. %s); each is listed with its warning "
                 "by GraphStore(%r).warnings()", manifest.n_warned, _first_warning(root), str(root))
    return _result(root, manifest, reused, t0)


def _commit(mpath: Path, manifest: Manifest, built: tuple[ShardEntry, list[tuple[str, str]]], policy: str,
            warned: int, bar: Any, on_shard: Callable[[ShardEntry | None], None] | None = None) -> int:
    entry, failures = built
    manifest.add(entry)
    manifest.write(mpath)
    if on_shard is not None:
        on_shard(entry)
    bar.update(entry.n_items)
    for item_id, reason in failures:
        if policy == "warn" and warned < 20:
            log.warning("skipped structure %s: %s", item_id, reason)
        elif policy == "warn" and warned == 20:
            log.warning("more structures skipped; every one is recorded in the store (GraphStore.failures())")
        else:
            log.debug("skipped structure %s: %s", item_id, reason)
        warned += 1
    return warned


def _drain(pending: dict[Future, int], mpath: Path, manifest: Manifest, policy: str, warned: int, bar: Any,
           on_shard: Callable[[ShardEntry | None], None] | None = None) -> int:
    finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
    for fut in finished:
        pending.pop(fut)
        warned = _commit(mpath, manifest, fut.result(), policy, warned, bar, on_shard)
    return warned


def _first_warning(root: Path) -> str:
    """One warning from the store, quoted, for the summary line."""

    warned = GraphStore(root).warnings()
    if warned:
        item, text = warned[0]
        return f"{item}: {text[:120]!r}"
    return "-"


def _bar(total: int | None, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="struct", desc="convert", disable=not enabled, smoothing=0.1, dynamic_ncols=True)


def _load_manifest(path: Path) -> Manifest | None:
    """The manifest at ``path``; None when there is none, or when it is damaged (it is moved aside to
    ``<name>.damaged`` and the store is rebuilt: without a readable commit record no shard can be trusted)."""
    try:
        return Manifest.read(path)
    except ManifestError as exc:
        aside = path.with_name(path.name + ".damaged")
        os.replace(path, aside)
        log.warning("%s; moved to %s, the store is rebuilt", exc, aside.name)
        return None


def _result(root: Path, manifest: Manifest, reused: int, t0: float) -> ConvertResult:
    return ConvertResult(
        path=root, n_graphs=manifest.n_graphs, n_failed=manifest.n_failed, n_shards=len(manifest.shards),
        shards_reused=reused, seconds=time.perf_counter() - t0, complete=manifest.complete,
    )
