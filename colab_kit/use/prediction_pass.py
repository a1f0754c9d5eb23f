"""Predictions are a pass over a store: one model output per graph, computed shard by shard in budgeted eval
batches and committed like graph shards, so a killed pass resumes at the first shard it had not finished.

Outputs live beside the store, keyed by what they depend on::

    <store>/outputs-<key>/manifest.json    {"store_fingerprint", "key", "what", "parts": {shard: {file, n, sha256}}}
    <store>/outputs-<key>/part-000000.npy  float32 [n_graphs of shard 0, ...], no pickle

``key`` is the sha256 of the weights (a model's predictions, a teacher's outputs) or of what else fixes the
output (CHGNet's crystal features). :func:`write_csv` streams the parts into one ``id,prediction[,target]`` file.
"""

from __future__ import annotations

import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from colab_kit.errors import ColabKitError
from colab_kit.loader import dataset_and_collate, pack
from colab_kit.store import GraphStore
from colab_kit.training import memory_fix, retry_on_oom
from colab_kit.util.files import (
    TMP_SUFFIX,
    atomic_write_bytes,
    atomic_write_json,
    remove_stale_temporaries,
    sha256_file,
)

log = logging.getLogger(__name__)


class PredictionError(ColabKitError, RuntimeError):
    """A prediction pass that cannot run as asked; the message says what to change."""


@dataclass(frozen=True)
class PassResult:
    path: Path
    complete: bool
    n_graphs: int
    parts_reused: int


def outputs_dir(store: GraphStore, key: str) -> Path:
    return store.root / f"outputs-{key[:16]}"


def _bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _load_manifest(path: Path, store: GraphStore, key: str, what: str) -> dict[str, Any]:
    fresh = {"store_fingerprint": store.fingerprint, "key": key, "what": what, "parts": {}}
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError):
        return fresh
    if m.get("store_fingerprint") != store.fingerprint or m.get("key") != key:
        log.warning("%s belongs to another store or model; its outputs are computed again", path)
        return fresh
    ok = {}
    for k, e in m.get("parts", {}).items():
        p = path.parent / e["file"]
        if p.exists() and p.stat().st_size == e["bytes"]:
            ok[k] = e
    m["parts"] = ok
    return m


def run_pass(store: GraphStore, model: Any, key: str, what: str, *, device: torch.device, budget: tuple[int, int, int],
             workers: int = 0, amp_dtype: torch.dtype | None = None, output: Callable[[Any, Any], torch.Tensor] | None = None,
             progress: bool = True, should_stop: Callable[[], bool] | None = None) -> PassResult:
    """Compute ``output(model, batch)`` (default: ``model(batch)``, the prediction) for every graph of ``store``.

    Args:
        key: names the outputs (e.g. the weights' sha256); outputs of another key are never reused.
        what: a description recorded in the manifest (e.g. ``"cgcnn predictions"``).
        budget: (max atoms, max edges, max graphs) of one eval batch; halved after an out-of-memory error.
        should_stop: polled between batches; True returns with the shards done so far committed.
    """
    from tqdm.auto import tqdm


    out = outputs_dir(store, key)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    mpath = out / "manifest.json"
    manifest = _load_manifest(mpath, store, key, what)
    reused = len(manifest["parts"])
    todo = [k for k in range(len(store.shards)) if str(k) not in manifest["parts"]]
    n_done = sum(e["n"] for e in manifest["parts"].values())
    limits = list(budget)
    output = output or (lambda m, b: m(b))
    model.eval()
    bar = tqdm(total=len(store), initial=n_done, unit="graph", desc=what, disable=not progress, dynamic_ncols=True)

    def commit(k: int, values: np.ndarray) -> None:
        name = f"part-{k:06d}.npy"
        data = _bytes(values)
        atomic_write_bytes(out / name, data)
        manifest["parts"][str(k)] = {"file": name, "n": int(len(values)), "bytes": len(data),
                                     "sha256": sha256_file(out / name)}
        atomic_write_json(mpath, manifest)
        todo.remove(k)

    def work() -> bool:
        for k, values in _shard_outputs(store, model, list(todo), limits, device, workers, amp_dtype, output,
                                        should_stop, bar):
            if values is None:
                return False
            commit(k, values)
            store.release(k)
        return True

    def shrink(exc: BaseException) -> None:
        if limits[2] <= 1:
            raise PredictionError(f"out of memory on single graphs of {store.root} on {device}; {memory_fix(device)}") from exc
        limits[:] = [max(1, v // 2) for v in limits]
        log.warning("out of memory: eval batches shrunk to %d graphs / %d edges; the shard is done again", limits[2], limits[1])

    try:
        with torch.no_grad():
            done = retry_on_oom(work, shrink, device)
    finally:
        bar.close()
    if done:
        manifest["complete"] = True
        atomic_write_json(mpath, manifest)
    return PassResult(out, done, len(store), reused)


def _shard_outputs(store: GraphStore, model: Any, shards: list[int], limits: list[int], device: torch.device,
                   workers: int, amp_dtype: torch.dtype | None, output: Callable[[Any, Any], torch.Tensor],
                   should_stop: Callable[[], bool] | None, bar: Any) -> Any:
    """Yields (shard, outputs) in shard order, or (shard, None) when a stop was requested."""
    from torch.utils.data import DataLoader


    atoms, edges = store.sizes()
    plan: list[tuple[int, int]] = []  # (shard, batches of it)
    batches: list[list[int]] = []
    for k in shards:
        a, b = int(store.starts[k]), int(store.starts[k + 1])
        own = pack(np.arange(a, b), atoms, edges, limits[0], limits[1], limits[2])
        plan.append((k, len(own)))
        batches += own
    kw: dict[str, Any] = {"prefetch_factor": 2} if workers > 0 else {}
    dataset, collate = dataset_and_collate(store)
    loader = iter(DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=workers, **kw)) if batches else iter(())
    for k, n_batches in plan:
        values = []
        for _ in range(n_batches):
            if should_stop is not None and should_stop():
                yield k, None
                return
            batch = model.to_device(next(loader), device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                values.append(output(model, batch).float().cpu().numpy())
            bar.update(len(values[-1]))
        yield k, (np.concatenate(values) if values else np.zeros(0, np.float32)).astype(np.float32)


def read_outputs(store: GraphStore, key: str) -> np.ndarray:
    """The complete outputs of ``key`` for every graph of ``store``, in store order."""
    out = outputs_dir(store, key)
    m = _load_manifest(out / "manifest.json", store, key, "")
    if not m.get("complete") or len(m["parts"]) != len(store.shards):
        raise PredictionError(f"outputs in {out} are incomplete; run the prediction pass again to finish them")
    parts = [np.load(out / m["parts"][str(k)]["file"], allow_pickle=False) for k in range(len(store.shards))]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def write_csv(store: GraphStore, key: str, path: str | Path, with_target: bool) -> int:
    """Stream ``id,prediction[,target]`` rows (store order) into ``path``, replaced atomically; returns the rows."""
    import csv

    out = outputs_dir(store, key)
    m = _load_manifest(out / "manifest.json", store, key, "")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")
    rows = 0
    try:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "prediction", "target"] if with_target else ["id", "prediction"])
            for k in range(len(store.shards)):
                sh = store.shard(k)
                pred = np.load(out / m["parts"][str(k)]["file"], allow_pickle=False)
                for j, gid in enumerate(sh.ids):
                    row = [gid, f"{float(pred[j]):.9g}"]
                    if with_target:
                        t = float(np.float32(sh.target[j]))
                        row.append("" if np.isnan(t) else f"{t:.9g}")
                    w.writerow(row)
                rows += len(sh.ids)
                store.release(k)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return rows
