"""``run(plan)``: the one function the CLI and the notebook call.

detect → plan (done by the caller) → get data → restore from the persist dir → convert (resuming)
→ train (resuming) → evaluate → report, each stage logging what it did and what it skipped because
an earlier run had already done it. Running it again after a disconnect continues where it stopped.

The run folder (``<work_dir>/<run name>/``, mirrored to ``<persist_dir>/<run name>/``) and every path in it are
:class:`colab_kit.run_folder.RunFolder`'s.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from colab_kit import registry
from colab_kit.errors import ColabKitError
from colab_kit.graphs import get_converter
from colab_kit.loader import splits_for
from colab_kit.plan import Plan
from colab_kit.run.persist import Mirror, restore
from colab_kit.run.report import mean_predictor_mae, reference_energy_mae, write_report
from colab_kit.run_folder import RunFolder
from colab_kit.sources import open_frames, open_source, resolve
from colab_kit.store import GraphStore, ShardEntry, StoreError, build_store, read_manifest
from colab_kit.training import evaluate_shipped, evaluate_weights, fit, potential_budget, starts_pretrained
from colab_kit.use import blended_targets, teacher_column
from colab_kit.util.distributed import refuse_fresh
from colab_kit.util.files import atomic_write_bytes, atomic_write_json, remove_stale_temporaries
from colab_kit.util.interrupt import stop_on_signals
from colab_kit.util.locks import clear, ensure_dir, hold
from colab_kit.util.logs import format_duration, setup_logging

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]
    files: dict[str, str]
    resumed: list[str] = field(default_factory=list)
    persist_failures: list[str] = field(default_factory=list)


def run_name(plan: Plan) -> str:
    """A stable name for the run from data, graph kind, model, the model options set away from their defaults,
    and mode (same command → same dir; another model variant → another dir, not a refused resume)."""
    base = re.sub(r"\.(json|xyz|extxyz)(\.gz)?$", "", Path(plan.data.rstrip("/").split("?")[0]).name) or "data"
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", base)[:60]
    task = "-potential" if plan.task == "potential" else ""  # another task on the same data: another folder
    name = re.sub(r"[^A-Za-z0-9_.=-]+", "_",
                  f"{base}-{plan.graph_kind}-{plan.model}{task}{variant_suffix(plan)}-{plan.mode}")
    if len(name) > 150:  # e.g. --set weights=<a long path>: a file name stays well under the usual 255-byte limit
        name = f"{name[:120]}-{hashlib.sha256(name.encode()).hexdigest()[:12]}-{plan.mode}"
    return name


def folder_for(plan: Plan, base: str | Path | None = None) -> RunFolder:
    """The run folder of ``plan`` under ``base`` (default: its work dir; the persist dir for the mirror)."""
    return RunFolder(Path(base if base is not None else plan.work_dir) / run_name(plan), plan.graph_edges == "device")


def variant_suffix(plan: Plan) -> str:
    """``-key=value`` for each model option set away from its default, the label column when it picks one, then the
    split's fold and the teacher."""
    spec = registry.model(plan.model)
    out = "".join(f"-{k}={v}" for k, v in plan.model_options.items() if k in spec.options and v != spec.options[k].default)
    if plan.target and not Path(plan.data).expanduser().is_dir():  # it picks the data's column: other labels
        out += f"-target={plan.target}"  # (a folder's id_prop.csv has one: there it is only the label's name)
    if plan.split == "matbench":
        out += f"-fold{plan.fold or 0}"
    if plan.teacher:
        out += f"-teacher{hashlib.sha256(str(Path(plan.teacher).resolve()).encode()).hexdigest()[:8]}-a{plan.distill_alpha:g}"
    return out


class Timing:
    """Compute time of a run across every call of the same command, in ``<run dir>/timing.json``.

    Conversion time is added as each shard commits and training time comes from the checkpoint, so a
    killed call loses only the time of the work it lost; ``last_call_seconds`` is the latest call's wall time.
    """

    def __init__(self, folder: RunFolder) -> None:
        self.path = folder.timing
        try:
            self.data: dict[str, Any] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.data = {}
        self.data["calls"] = int(self.data.get("calls", 0)) + 1
        self.data.setdefault("started", time.time())  # when the run's first call began (said when it is continued)
        for k in ("convert_seconds", "evaluate_seconds"):
            self.data[k] = float(self.data.get(k, 0.0))
        self.data.setdefault("train_seconds", 0.0)
        self._mark = time.perf_counter()
        self.save()  # this call counts even if it is killed before any work completes

    def add(self, key: str) -> None:
        """Add the time since the last mark to ``key`` and save."""
        now = time.perf_counter()
        self.data[key] += now - self._mark
        self._mark = now
        self.save()

    def set_train(self, seconds: float) -> None:
        self.data["train_seconds"] = float(seconds)
        self._mark = time.perf_counter()
        self.save()

    def save(self) -> None:
        atomic_write_bytes(self.path, json.dumps(self.data, indent=1).encode())

    def summary(self, call_seconds: float) -> dict[str, Any]:
        d = dict(self.data)
        d["compute_seconds"] = round(d["convert_seconds"] + d["train_seconds"] + d["evaluate_seconds"], 1)
        d["last_call_seconds"] = round(call_seconds, 1)
        return d


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

    Ctrl-C or SIGTERM (when called in the main thread) asks for a clean stop: the shards in flight or
    a checkpoint at the current step are committed, and the result's status is "stopped".

    Args:
        fresh: delete this run's local and persisted directories first and start over.
        callbacks: receive {"event": ...} dicts: "stage", "resume", "step", "epoch", "checkpoint".
        should_stop: polled between conversion chunks and training steps; True commits what is done
            (shards in flight, a checkpoint) and returns early (status "stopped").

    Raises:
        ColabKitError: the data cannot be had or read, or training cannot go on; a run folder that
            this call created for nothing is removed first.
    """

    with stop_on_signals(should_stop) as stop:
        result = _run(plan, fresh, progress, list(callbacks or []), stop, log_to_file)
    if result.metrics.get("status") == "stopped":
        why = f"{stop.signal} received" if stop.signal else "stop requested"
        log.info("%s: work so far is saved in %s; run the same command again to resume", why, result.run_dir)
        result.metrics["signal"] = stop.signal
    return result


def _run(plan: Plan, fresh: bool, progress: bool, callbacks: list[Callable[[dict[str, Any]], None]],
         should_stop: Callable[[], bool], log_to_file: bool) -> RunResult:

    t0 = time.perf_counter()
    folder = folder_for(plan)
    persist = folder_for(plan, plan.persist_dir) if plan.persist_dir else None

    def stage(name_: str, msg: str) -> None:
        log.info("== %s: %s", name_, msg)
        for cb in callbacks:
            cb({"event": "stage", "stage": name_, "message": msg})

    if plan.world_size > 1:

        refuse_fresh(fresh, plan.world_size, folder.root)
        if plan.rank != 0:
            return _follow(plan, folder, should_stop)

    ensure_dir(plan.work_dir, "the work dir", "pass --work-dir on a writable disk (on Colab, /content/...)")
    if plan.persist_dir:
        ensure_dir(plan.persist_dir, "the persist dir", "pass a writable --persist-dir (Drive mounted read-write), "
                   "or --set persist_dir=null to run without mirroring")
    created = not folder.root.exists() and not (persist is not None and persist.root.exists())
    with hold(folder.root, "run folder"):  # one writer per run folder: a second command stops here, in one line
        if fresh:
            for d in (folder, persist):
                if d is not None and d.root.exists():
                    log.info("--fresh: deleting %s", d.root)
                    clear(d.root)
        elif not created:
            _announce_earlier_run(folder, persist, callbacks)
        try:
            # the data first: a misspelled name or a missing file must not leave an empty run folder behind
            stage("data", f"resolving {plan.data}")
            data_path = resolve(plan.data, Path(plan.work_dir) / "downloads", progress=progress, sha256=plan.data_sha256)
            source = open_data(plan, data_path)  # reads headers only: a wrong format fails here
            return _pipeline(plan, folder, persist, data_path, source, progress, callbacks, should_stop, log_to_file, stage,
                             t0)
        except ColabKitError:
            if created and not folder.holds_work():
                shutil.rmtree(folder.root, ignore_errors=True)
            raise


def open_data(plan: Plan, data_path: Path) -> Any:
    """The run's source: DFT frames with their labels (``task=potential``), or structures with one label each."""
    if plan.task == "potential":
        return open_frames(str(data_path), settings=plan.label_settings())
    return open_source(data_path, target=plan.target)


def _announce_earlier_run(folder: RunFolder, persist: RunFolder | None,
                          callbacks: list[Callable[[dict[str, Any]], None]]) -> None:
    """Say which earlier run this command continues (its folder and age) and how to start fresh instead: the default
    work dir is shared by every checkout and environment of this user."""

    where = next((d for d in (folder, persist) if d is not None and d.timing.is_file()), None)
    if where is None:  # nothing ran here yet (a folder an earlier, failed start left)
        return
    try:
        started = json.loads(where.timing.read_text()).get("started")
    except (OSError, ValueError, AttributeError):
        started = None
    try:
        last = max(p.stat().st_mtime for p in where.root.iterdir())
    except (OSError, ValueError):
        return
    now = time.time()
    age = f"started {format_duration(now - started)} ago, " if isinstance(started, (int, float)) else ""
    msg = (f"continuing the earlier run in {where.root} ({age}last written {format_duration(max(now - last, 0))} ago); "
           "--fresh starts it over, --work-dir DIR keeps a separate one")
    log.info(msg)
    for cb in callbacks:
        cb({"event": "resume", "message": msg})


def keep_store_resolution(plan: Plan, store_dir: Path) -> Plan:
    """``plan`` with the graph resolution of the store this run folder already holds, where the Plan chose another
    only because this machine changed since (free RAM below 4 GiB shrinks a radius graph's cutoff): a run's
    resolution is decided once, by its first call. A resolution the user set is left as set: the store then refuses
    it in one line."""
    manifest = read_manifest(store_dir / "manifest.json")
    if manifest is None or manifest.graph_kind != plan.graph_kind:
        return plan
    stored = registry.graph_kind(plan.graph_kind).settings(manifest.params)
    changes = {k: v for k, v in stored.items() if getattr(plan, k) != v and plan.reasons.get(k) != "set by user"}
    if not changes:
        return plan
    log.info("graph resolution kept from this run's store: %s (this machine's plan said %s)",
             ", ".join(f"{k}={v}" for k, v in changes.items()), ", ".join(f"{k}={getattr(plan, k)}" for k in changes))
    return plan.replace("kept from this run's store: a run's graph resolution is decided by its first call", **changes)


def _pipeline(plan: Plan, folder: RunFolder, persist: RunFolder | None, data_path: Path, source: Any, progress: bool,
              callbacks: list[Callable[[dict[str, Any]], None]], should_stop: Callable[[], bool],
              log_to_file: bool, stage: Callable[[str, str], None], t0: float) -> RunResult:

    if log_to_file:
        setup_logging(logging.getLogger("colab_kit").getEffectiveLevel() or logging.INFO, folder.log)
    mirror = Mirror(folder, persist)
    resumed: list[str] = []
    if persist is not None:
        stage("restore", f"restoring earlier work from {persist.root}")
        restored = restore(persist, folder)
        if restored:
            resumed.append(f"restored {len(restored)} files from {persist.root}")
    for d in (folder.root, folder.report):
        remove_stale_temporaries(d)
    timing = Timing(folder)
    plan = keep_store_resolution(plan, folder.store)
    atomic_write_bytes(folder.plan, plan.to_json().encode())
    mirror.push(folder.plan)

    store_dir = folder.store
    converter = get_converter(plan.graph_kind, cutoff=plan.cutoff, bond_cutoff=plan.bond_cutoff,
                              max_neighbors=plan.max_neighbors, on_isolated_atoms=plan.on_isolated_atoms,
                              edges=plan.graph_edges)
    if (store_dir / "manifest.json").exists():
        resumed.append("graph store found: converting only what is missing")

    def on_shard(entry: ShardEntry | None) -> None:  # each shard reaches the persist dir as soon as it is committed
        timing.add("convert_seconds")
        shard = [store_dir / entry.file] if entry is not None else []
        mirror.push(*shard, store_dir / "manifest.json", folder.timing)

    stage("convert", f"{data_path} -> {store_dir} ({plan.graph_kind} graphs, {plan.convert_workers} workers)")
    conv = build_store(source, store_dir, converter, workers=plan.convert_workers, shard_size=plan.shard_size,
                       limit=plan.n_samples, on_bad_structure=plan.on_bad_structure, target=plan.target,
                       progress=progress, on_shard=on_shard, should_stop=should_stop)
    if not conv.complete:
        mirror.push_all()
        return RunResult(folder.root, {"status": "stopped"}, {}, resumed, mirror.failures)
    if conv.shards_reused:
        resumed.append(f"conversion reused {conv.shards_reused} of {conv.n_shards} shards")
    store = GraphStore(store_dir)
    mirror.push_all()

    if folder.latest.exists():
        resumed.append("checkpoint found: training resumes from it")
    for msg in resumed:
        log.info("resume: %s", msg)
        for cb in callbacks:
            cb({"event": "resume", "message": msg})

    def on_train_event(ev: dict[str, Any]) -> None:
        if ev["event"] == "checkpoint":  # each folder's checksum record travels before the files it lists
            mirror.push(folder.checkpoints / "checksums.json", folder.latest, folder.previous, folder.metrics_jsonl,
                        folder.metrics_csv)
        elif ev["event"] == "best":
            mirror.push(folder.root / "checksums.json", folder.best)

    train_targets = None
    if plan.teacher:  # the teacher's column, computed (or read) here: training never loads a trained model itself

        stage("teacher", f"outputs of {plan.teacher} over the {len(store)} graphs (computed once, then cached)")
        column = teacher_column(store, plan, data_path, progress=progress, should_stop=should_stop)
        if column is None:
            mirror.push_all()
            return RunResult(folder.root, {"status": "stopped"}, {}, resumed, mirror.failures)
        train_targets = blended_targets(store.targets(), column, plan.distill_alpha)
    if plan.world_size > 1:  # the other ranks have waited for this
        atomic_write_json(folder.prepared, _prepared_key(plan))
    ranks = f" x {plan.world_size} ranks" if plan.world_size > 1 else ""
    stage("train", f"{plan.model} on {len(store)} graphs, {plan.epochs} epochs, device {plan.device}{ranks}")
    result = fit(store, plan, folder.root, progress=progress, callbacks=[on_train_event, *callbacks],
                 should_stop=should_stop, train_targets=train_targets)
    timing.set_train(result.train_seconds)
    mirror.push(folder.timing)
    if result.status == "stopped":
        mirror.push_all()
        return RunResult(folder.root, {"status": "stopped"}, {}, resumed, mirror.failures)
    return _finish(plan, folder, store, result, timing, mirror, resumed, stage, t0)


def _prepared_key(plan: Plan) -> dict[str, Any]:
    return {"run": run_name(plan), "data": plan.data, "n_samples": plan.n_samples, "teacher": plan.teacher,
            "distill_alpha": plan.distill_alpha, "world_size": plan.world_size}


def _follow(plan: Plan, folder: RunFolder, should_stop: Callable[[], bool]) -> RunResult:
    """A rank other than 0 of a torchrun launch: wait until rank 0 has the data, store and teacher outputs ready
    (its ``prepared.json`` names this run and the store is complete), then train and evaluate its share. Rank 0
    writes every file and the report, and hands every rank the teacher's targets; a stale marker of an earlier
    launch of the same run is safe to follow, because what it marks is complete and rank 0 only reuses it."""

    want = _prepared_key(plan)
    log.info("rank %d: waiting for rank 0 to prepare %s", plan.rank, folder.store)
    while True:
        if should_stop():
            return RunResult(folder.root, {"status": "stopped"}, {})
        try:
            if json.loads(folder.prepared.read_text()) == want:
                store = GraphStore(folder.store)
                break
        except (OSError, ValueError, StoreError):
            pass
        time.sleep(0.5)
    result = fit(store, plan, folder.root, progress=False, should_stop=should_stop)
    if result.status == "stopped":
        return RunResult(folder.root, {"status": "stopped"}, {})
    test = evaluate_weights(store, plan, folder.best)  # gathered: rank 0 has every graph's prediction
    if starts_pretrained(store, plan):  # rank 0 scores the potential as shipped too: this rank's share, gathered there
        evaluate_shipped(store, plan, budget=potential_budget(store, folder.best))
    return RunResult(folder.root, {"status": result.status, "rank": plan.rank, "test_mae": test["mae"]}, {})


def _finish(plan: Plan, folder: RunFolder, store: Any, result: Any, timing: Timing, mirror: Any, resumed: list[str],
            stage: Callable[[str, str], None], t0: float) -> RunResult:
    """Test-set evaluation with the best weights, the mean-predictor baseline, and the report."""


    stage("evaluate", "test set with the best validation weights")
    test = evaluate_weights(store, plan, folder.best)
    splits = splits_for(store, plan)
    baseline = mean_predictor_mae(store.targets(), splits["train"], splits["test"])
    if store.potential is not None:  # eV/atom: per-element reference energies fitted on the training frames
        baseline = reference_energy_mae(store, splits["train"], splits["test"])
        test["energy_baseline"] = baseline * 1000.0
        if starts_pretrained(store, plan):
            stage("evaluate", f"test set with {plan.model} as shipped (before fine-tuning)")
            test["shipped"] = evaluate_shipped(store, plan, budget=potential_budget(store, folder.best))
    stage("report", str(folder.report))
    _write_item_records(folder, store)
    timing.add("evaluate_seconds")
    metrics = write_report(folder, plan=plan, store=store, result=result, test=test, baseline_mae=baseline,
                           timing=timing.summary(time.perf_counter() - t0), data_name=plan.data)
    files = dict(metrics.pop("files"))
    files["model"] = str(folder.best)
    files["run_dir"] = str(folder.root)
    mirror.push_all()
    if mirror.failures:
        log.warning("%d copies to the persist dir failed; see the warnings above", len(mirror.failures))
    atomic_write_bytes(folder.report_file("files.json"), json.dumps(files, indent=2).encode())
    return RunResult(folder.root, metrics, files, resumed, mirror.failures)


def _write_item_records(folder: RunFolder, store: Any) -> None:
    """report/skipped.csv (id, reason) and report/warnings.csv (id, warning): the structures conversion
    dropped, and those it kept although their parser warned."""
    import csv
    import io

    folder.report.mkdir(parents=True, exist_ok=True)
    for name, rows, header in (("skipped.csv", store.failures(), ("id", "reason")),
                               ("warnings.csv", store.warnings(), ("id", "warning"))):
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(header)
        w.writerows(rows)
        atomic_write_bytes(folder.report_file(name), buf.getvalue().encode())
