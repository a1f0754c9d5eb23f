"""The matbench protocol: a store split by matbench's official folds, and ``benchmark``, which trains and scores the
five folds one after the other through :func:`colab_kit.run.pipeline.run` (each fold a run of its own, resumable; a fold
whose predictions are recorded is never redone) and writes per-fold scores and matbench's ``results.json.gz``.

Layout (``<work_dir>/benchmark/<task>-<model>[-options]-<mode>/``)::

    <run name>-fold<k>-<mode>/   fold k's run directory (store, checkpoints, best.pt, report/); the first fold's
                       store is hard-linked into the others (the folds only split it)
    fold-<k>.csv       its test predictions (matbench id, row, prediction, target), written when the fold is done
    folds.csv          fold, n_test, mae, rmse, seconds
    results.json.gz    matbench's submission layout (when the data is the whole task and all 5 folds are done)
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from colab_kit.loader import N_FOLDS, MatbenchError, splits_for, store_rows
from colab_kit.run.matbench import MATBENCH_TASKS, matbench_ids, write_results
from colab_kit.run.persist import Mirror, restore
from colab_kit.run.pipeline import folder_for, run, variant_suffix
from colab_kit.run_folder import RunFolder
from colab_kit.store import GraphStore, read_manifest
from colab_kit.training import evaluate_weights
from colab_kit.util.files import atomic_write_bytes, atomic_write_json

if TYPE_CHECKING:
    from colab_kit.plan import Plan

log = logging.getLogger(__name__)
_MB_ID = re.compile(r"^mb-[a-z0-9-]+-(\d+)$")


def bench_dir(plan: Plan, task: str) -> Path:

    name = re.sub(r"[^A-Za-z0-9_.=-]+", "_", f"{task}-{plan.model}{variant_suffix(plan)}-{plan.mode}")
    return Path(plan.work_dir) / "benchmark" / name.replace("-fold0", "")


def _seed_store(root: Path, folder: RunFolder) -> None:
    """Give a fold's run the store another fold converted (the same data and graphs: folds only split it), by hard
    links where the file system has them, so five folds convert once."""

    dst = folder.store
    if (dst / "manifest.json").exists():
        return
    name = dst.name
    done = [m.parent for m in root.glob(f"*/{name}/manifest.json") if getattr(read_manifest(m), "complete", False)]
    if not done:
        return
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(done[0].glob("shard-*.safetensors")) + [done[0] / "manifest.json"]:  # the manifest last
        try:
            os.link(f, dst / f.name)
        except OSError:
            shutil.copyfile(f, dst / f.name)


def run_benchmark(task: str, make: Callable[[int], Any], *, folds: list[int] | None = None, progress: bool = True,
                  should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Train and score matbench ``task``'s folds in turn; ``make(k)`` is fold k's Plan (split matbench, fold k).

    Returns:
        {"dir", "folds": [{fold, n_test, mae, rmse, seconds}], "mae_mean", "mae_std", "results", "status"}.
    """

    if task not in MATBENCH_TASKS:
        raise MatbenchError(f"unknown matbench task {task!r}; choose one of {sorted(MATBENCH_TASKS)}")
    if MATBENCH_TASKS[task]["input_type"] != "structure":
        raise MatbenchError(f"{task} has compositions, not structures: a crystal graph model cannot train on it")
    first = make(0)
    root = bench_dir(first, task)
    root.mkdir(parents=True, exist_ok=True)
    persist = RunFolder(Path(first.persist_dir) / "benchmark" / root.name) if first.persist_dir else None
    restore(persist, RunFolder(root))
    mirror = Mirror(RunFolder(root), persist)
    scores = _read_scores(root)
    for k in folds if folds is not None else range(N_FOLDS):
        if k in scores and (root / f"fold-{k}.csv").exists():
            log.info("fold %d of %s is done (MAE %.4g): not redone", k, task, scores[k]["mae"])
            continue
        plan = make(k).replace("benchmark", work_dir=str(root),
                               persist_dir=str(persist.root / "runs") if persist is not None else None)
        _seed_store(root, folder_for(plan))
        t0 = time.perf_counter()
        res = run(plan, progress=progress, should_stop=should_stop, log_to_file=True)
        if res.metrics.get("status") == "stopped":
            return {"dir": root, "status": "stopped", "folds": [scores[f] for f in sorted(scores)]}
        folder = folder_for(plan)
        store = GraphStore(folder.store)
        test = evaluate_weights(store, plan, folder.best)
        _write_fold(root, k, store, plan, test)
        scores[k] = {"fold": k, "n_test": int(len(test["target"])), "mae": test["mae"], "rmse": test["rmse"],
                     "seconds": round(res.metrics.get("time", {}).get("compute_seconds", time.perf_counter() - t0), 1)}
        _write_scores(root, scores)
        mirror.push(f"fold-{k}.csv", "folds.csv")
        log.info("fold %d of %s: test MAE %.4g on %d structures", k, task, test["mae"], len(test["target"]))
    maes = [scores[f]["mae"] for f in sorted(scores)]
    out = {"dir": root, "status": "finished", "folds": [scores[f] for f in sorted(scores)],
           "mae_mean": float(np.mean(maes)), "mae_std": float(np.std(maes)), "results": None}
    if len(scores) == N_FOLDS:
        out["results"] = _submission(root, task, first)
        mirror.push("results.json.gz")
    atomic_write_json(root / "summary.json", {k: (str(v) if isinstance(v, Path) else v) for k, v in out.items()})
    return out


def _write_fold(root: Path, k: int, store: GraphStore, plan: Plan, test: dict[str, Any]) -> None:
    rows, _ = store_rows(store)
    idx = splits_for(store, plan)["test"]
    ids = store.ids()
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["id", "row", "prediction", "target"])
    for i, p, t in zip(idx, test["pred"], test["target"]):
        w.writerow([ids[i], int(rows[i]), f"{float(p):.9g}", f"{float(t):.9g}"])
    atomic_write_bytes(root / f"fold-{k}.csv", buf.getvalue().encode())


def _read_scores(root: Path) -> dict[int, dict[str, Any]]:
    try:
        with open(root / "folds.csv", newline="") as f:
            return {int(r["fold"]): {"fold": int(r["fold"]), "n_test": int(r["n_test"]), "mae": float(r["mae"]),
                                     "rmse": float(r["rmse"]), "seconds": float(r["seconds"])} for r in csv.DictReader(f)}
    except OSError:
        return {}


def _write_scores(root: Path, scores: dict[int, dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["fold", "n_test", "mae", "rmse", "seconds"])
    w.writeheader()
    w.writerows(scores[k] for k in sorted(scores))
    atomic_write_bytes(root / "folds.csv", buf.getvalue().encode())


def _submission(root: Path, task: str, plan: Plan) -> Path | None:
    """matbench's results.json.gz from the fold files, when they cover the whole task; else None (logged)."""
    n = MATBENCH_TASKS[task]["n_samples"]
    preds: dict[int, dict[str, float]] = {}
    targets: dict[str, float] = {}
    for k in range(N_FOLDS):
        with open(root / f"fold-{k}.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        preds[k] = {}
        for r in rows:
            mb = matbench_ids(task, [int(r["row"])])[0]
            preds[k][mb], targets[mb] = float(r["prediction"]), float(r["target"])
    if len(targets) != n:
        log.warning("no results.json.gz: the folds hold %d of %s's %d rows (a subset, or skipped structures), so "
                    "this is not a matbench submission; per-fold scores are in %s", len(targets), task, n,
                    root / "folds.csv")
        return None
    params = {"model": plan.model, "model_options": dict(plan.model_options), "epochs": plan.epochs, "seed": plan.seed}
    return write_results(root / "results.json.gz", task, preds, targets=targets, model=f"colab_kit {plan.model}",
                         parameters=params, user_metadata={"colab_kit_mode": plan.mode})
