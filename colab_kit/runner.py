"""``run(plan)``: the one function the CLI and the notebook call.

detect → plan (done by the caller) → get data → restore from the persist dir → convert (resuming)
→ train (resuming) → evaluate → report, each stage logging what it did and what it skipped because
an earlier run had already done it. Running it again after a disconnect continues where it stopped.

Run directory (``<work_dir>/<run name>/``, mirrored to ``<persist_dir>/<run name>/``)::

    plan.json        the Plan this run used
    run.log          everything logged, across resumes
    store/           graph shards, manifest.json, splits-seed<N>.npz
    checkpoints/     latest.pt, previous.pt
    best.pt          model weights of the best validation epoch
    metrics.jsonl/.csv  per-epoch metrics
    report/          metrics.json, loss_curve.png, parity.png, summary.txt
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from colab_kit.plan import Plan
from colab_kit.store import atomic_write_bytes

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]
    files: dict[str, str]
    resumed: list[str] = field(default_factory=list)
    persist_failures: list[str] = field(default_factory=list)


def run_name(plan: Plan) -> str:
    """A stable name for the run from data, converter, model and mode (same command → same dir)."""
    base = re.sub(r"\.(json|xyz|extxyz)(\.gz)?$", "", Path(plan.data.rstrip("/").split("?")[0]).name) or "data"
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", base)[:60]
    return f"{base}-{plan.converter}-{plan.model}-{plan.mode}"


def run(
    plan: Plan,
    *,
    fresh: bool = False,
    progress: bool = True,
    callbacks: list[Callable[[dict[str, Any]], None]] | None = None,
    should_stop: Callable[[], bool] | None = None,
    log_to_file: bool = True,
) -> RunResult:
    """Run (or resume) the whole pipeline described by ``plan``.

    Args:
        fresh: delete this run's local and persisted directories first and start over.
        callbacks: receive {"event": ...} dicts: "stage", "resume", "step", "epoch", "checkpoint".
        should_stop: polled between conversion chunks and training steps; True commits what is done
            (shards in flight, a checkpoint) and returns early (status "stopped").
    """
    from colab_kit.convert import build_store
    from colab_kit.datasets import resolve
    from colab_kit.graphs import get_converter
    from colab_kit.logs import setup_logging
    from colab_kit.persist import Mirror, restore
    from colab_kit.store import GraphStore
    from colab_kit.train import evaluate_weights, fit

    t0 = time.perf_counter()
    callbacks = list(callbacks or [])
    name = run_name(plan)
    run_dir = Path(plan.work_dir) / name
    persist = Path(plan.persist_dir) / name if plan.persist_dir else None
    if fresh:
        for d in (run_dir, persist):
            if d is not None and d.exists():
                log.info("--fresh: deleting %s", d)
                shutil.rmtree(d)
    run_dir.mkdir(parents=True, exist_ok=True)
    if log_to_file:
        setup_logging(logging.getLogger("colab_kit").getEffectiveLevel() or logging.INFO, run_dir / "run.log")

    def stage(name_: str, msg: str) -> None:
        log.info("== %s: %s", name_, msg)
        for cb in callbacks:
            cb({"event": "stage", "stage": name_, "message": msg})

    mirror = Mirror(run_dir, persist)
    resumed: list[str] = []
    if persist is not None:
        stage("restore", f"restoring earlier work from {persist}")
        restored = restore(persist, run_dir)
        if restored:
            resumed.append(f"restored {len(restored)} files from {persist}")
    atomic_write_bytes(run_dir / "plan.json", plan.to_json().encode())
    mirror.push("plan.json")

    stage("data", f"resolving {plan.data}")
    data_path = resolve(plan.data, Path(plan.work_dir) / "downloads", progress=progress)

    store_dir = run_dir / "store"
    converter = get_converter(plan.converter, cutoff=plan.cutoff, bond_cutoff=plan.bond_cutoff or None,
                              max_neighbors=plan.max_neighbors)
    if (store_dir / "manifest.json").exists():
        resumed.append("graph store found: converting only what is missing")

    def on_shard(entry: dict[str, Any]) -> None:
        if "file" in entry:
            mirror.push(f"store/{entry['file']}", "store/manifest.json")
        else:
            mirror.push("store/manifest.json")

    stage("convert", f"{data_path} -> {store_dir} ({plan.converter} graphs, {plan.convert_workers} workers)")
    conv = build_store(data_path, store_dir, converter, workers=plan.convert_workers, shard_size=plan.shard_size,
                       limit=plan.n_samples, on_bad_structure=plan.on_bad_structure, target=plan.target,
                       progress=progress, on_shard=on_shard, should_stop=should_stop)
    if not conv.complete:
        log.info("stopped during conversion (%d shards done); run again to resume", conv.n_shards)
        mirror.push_all()
        return RunResult(run_dir, {"status": "stopped"}, {}, resumed, mirror.failures)
    if conv.shards_reused:
        resumed.append(f"conversion reused {conv.shards_reused} of {conv.n_shards} shards")
    store = GraphStore(store_dir)
    mirror.push_all()

    if (run_dir / "checkpoints" / "latest.pt").exists():
        resumed.append("checkpoint found: training resumes from it")
    for msg in resumed:
        log.info("resume: %s", msg)
        for cb in callbacks:
            cb({"event": "resume", "message": msg})

    def on_train_event(ev: dict[str, Any]) -> None:
        if ev["event"] == "checkpoint":
            mirror.push("checkpoints/latest.pt", "checkpoints/previous.pt", "metrics.jsonl", "metrics.csv")
        elif ev["event"] == "best":
            mirror.push("best.pt")

    stage("train", f"{plan.model} on {len(store)} graphs, {plan.epochs} epochs, device {plan.device}")
    result = fit(store, plan, run_dir, progress=progress, callbacks=[on_train_event, *callbacks],
                 should_stop=should_stop)
    if result.status == "stopped":
        mirror.push_all()
        return RunResult(run_dir, {"status": "stopped"}, {}, resumed, mirror.failures)

    stage("evaluate", "test set with the best validation weights")
    test = evaluate_weights(store, plan, run_dir / "best.pt")
    import numpy as np

    splits = np.load(store_dir / f"splits-seed{plan.seed}.npz", allow_pickle=False)
    targets = store.targets()
    baseline = float(np.mean(np.abs(targets[splits["test"]] - targets[splits["train"]].mean())))

    from colab_kit.report import write_report

    stage("report", str(run_dir / "report"))
    metrics = write_report(run_dir / "report", plan=plan, store=store, result=result, test=test,
                           baseline_mae=baseline, seconds=time.perf_counter() - t0, data_name=plan.data)
    files = dict(metrics.pop("files"))
    files["model"] = str(run_dir / "best.pt")
    files["run_dir"] = str(run_dir)
    mirror.push_all()
    if mirror.failures:
        log.warning("%d copies to the persist dir failed; see the warnings above", len(mirror.failures))
    atomic_write_bytes(run_dir / "report" / "files.json", json.dumps(files, indent=2).encode())
    return RunResult(run_dir, metrics, files, resumed, mirror.failures)
