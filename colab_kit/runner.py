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
    """A stable name for the run from data, converter, model, the model options set away from their defaults,
    and mode (same command → same dir; another model variant → another dir, not a refused resume)."""
    base = re.sub(r"\.(json|xyz|extxyz)(\.gz)?$", "", Path(plan.data.rstrip("/").split("?")[0]).name) or "data"
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", base)[:60]
    name = re.sub(r"[^A-Za-z0-9_.=-]+", "_", f"{base}-{plan.converter}-{plan.model}{variant_suffix(plan)}-{plan.mode}")
    if len(name) > 150:  # e.g. --set weights=<a long path>: a file name stays well under the usual 255-byte limit
        name = f"{name[:120]}-{hashlib.sha256(name.encode()).hexdigest()[:12]}-{plan.mode}"
    return name


def store_folder(plan: Plan) -> str:
    """The run's store folder: ``store``, or ``store-structures`` for a structure-only store (graph_edges=device).
    Both give the same graphs, so a run switched between them resumes from its checkpoint."""
    from colab_kit.persist import STORE_DIRS

    return STORE_DIRS[1] if getattr(plan, "graph_edges", "stored") == "device" else STORE_DIRS[0]


def variant_suffix(plan: Plan) -> str:
    """``-key=value`` for each model option set away from its default, the label column when it picks one, then the
    split's fold and the teacher."""
    spec = registry.model(plan.model)
    out = "".join(f"-{k}={v}" for k, v in plan.model_options.items() if k in spec.options and v != spec.options[k].default)
    if plan.target and not Path(plan.data).expanduser().is_dir():  # it picks the data's column: other labels
        out += f"-target={plan.target}"  # (a folder's id_prop.csv has one: there it is only the label's name)
    if getattr(plan, "split", "random") == "matbench":
        out += f"-fold{plan.fold or 0}"
    if getattr(plan, "teacher", None):
        out += f"-teacher{hashlib.sha256(str(Path(plan.teacher).resolve()).encode()).hexdigest()[:8]}-a{plan.distill_alpha:g}"
    return out


class Timing:
    """Compute time of a run across every call of the same command, in ``<run dir>/timing.json``.

    Conversion time is added as each shard commits and training time comes from the checkpoint, so a
    killed call loses only the time of the work it lost; ``last_call_seconds`` is the latest call's wall time.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "timing.json"
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
    from colab_kit.interrupt import stop_on_signals

    with stop_on_signals(should_stop) as stop:
        result = _run(plan, fresh, progress, list(callbacks or []), stop, log_to_file)
    if result.metrics.get("status") == "stopped":
        why = f"{stop.signal} received" if stop.signal else "stop requested"
        log.info("%s: work so far is saved in %s; run the same command again to resume", why, result.run_dir)
        result.metrics["signal"] = stop.signal
    return result


def _run(plan: Plan, fresh: bool, progress: bool, callbacks: list[Callable[[dict[str, Any]], None]],
         should_stop: Callable[[], bool], log_to_file: bool) -> RunResult:
    from colab_kit.datasets import resolve
    from colab_kit.sources import open_source

    t0 = time.perf_counter()
    name = run_name(plan)
    run_dir = Path(plan.work_dir) / name
    persist = Path(plan.persist_dir) / name if plan.persist_dir else None

    def stage(name_: str, msg: str) -> None:
        log.info("== %s: %s", name_, msg)
        for cb in callbacks:
            cb({"event": "stage", "stage": name_, "message": msg})

    if plan.world_size > 1:
        from colab_kit.distributed import refuse_fresh

        refuse_fresh(fresh, plan.world_size, run_dir)
        if plan.rank != 0:
            return _follow(plan, run_dir, should_stop)
    from colab_kit.folder_lock import clear, ensure_dir, hold

    ensure_dir(plan.work_dir, "the work dir", "pass --work-dir on a writable disk (on Colab, /content/...)")
    if plan.persist_dir:
        ensure_dir(plan.persist_dir, "the persist dir", "pass a writable --persist-dir (Drive mounted read-write), "
                   "or --set persist_dir=null to run without mirroring")
    created = not run_dir.exists() and not (persist is not None and persist.exists())
    with hold(run_dir, "run folder"):  # one writer per run folder: a second command stops here, in one line
        if fresh:
            for d in (run_dir, persist):
                if d is not None and d.exists():
                    log.info("--fresh: deleting %s", d)
                    clear(d)
        elif not created:
            _announce_earlier_run(run_dir, persist, callbacks)
        try:
            # the data first: a misspelled name or a missing file must not leave an empty run folder behind
            stage("data", f"resolving {plan.data}")
            data_path = resolve(plan.data, Path(plan.work_dir) / "downloads", progress=progress, sha256=plan.data_sha256)
            open_source(data_path, target=plan.target)  # reads headers only: a wrong format fails here
            return _pipeline(plan, run_dir, persist, data_path, progress, callbacks, should_stop, log_to_file, stage,
                             t0)
        except ColabKitError:
            if created and not _holds_work(run_dir):
                shutil.rmtree(run_dir, ignore_errors=True)
            raise


def _announce_earlier_run(run_dir: Path, persist: Path | None,
                          callbacks: list[Callable[[dict[str, Any]], None]]) -> None:
    """Say which earlier run this command continues (its folder and age) and how to start fresh instead: the default
    work dir is shared by every checkout and environment of this user."""
    from colab_kit.logs import format_duration

    where = next((d for d in (run_dir, persist) if d is not None and (d / "timing.json").is_file()), None)
    if where is None:  # nothing ran here yet (a folder an earlier, failed start left)
        return
    try:
        started = json.loads((where / "timing.json").read_text()).get("started")
    except (OSError, ValueError, AttributeError):
        started = None
    try:
        last = max(p.stat().st_mtime for p in where.iterdir())
    except (OSError, ValueError):
        return
    now = time.time()
    age = f"started {format_duration(now - started)} ago, " if isinstance(started, (int, float)) else ""
    msg = (f"continuing the earlier run in {where} ({age}last written {format_duration(max(now - last, 0))} ago); "
           "--fresh starts it over, --work-dir DIR keeps a separate one")
    log.info(msg)
    for cb in callbacks:
        cb({"event": "resume", "message": msg})


def _holds_work(run_dir: Path) -> bool:
    """Whether a run folder holds anything worth keeping: a store shard or a checkpoint."""
    return any(run_dir.glob("store/shard-*")) or any(run_dir.glob("checkpoints/*.pt"))


def _pipeline(plan: Plan, run_dir: Path, persist: Path | None, data_path: Path, progress: bool,
              callbacks: list[Callable[[dict[str, Any]], None]], should_stop: Callable[[], bool],
              log_to_file: bool, stage: Callable[[str, str], None], t0: float) -> RunResult:
    from colab_kit.convert import build_store
    from colab_kit.fsutil import remove_stale_temporaries
    from colab_kit.graphs import get_converter
    from colab_kit.logs import setup_logging
    from colab_kit.persist import Mirror, restore
    from colab_kit.store import GraphStore
    from colab_kit.train import fit

    if log_to_file:
        setup_logging(logging.getLogger("colab_kit").getEffectiveLevel() or logging.INFO, run_dir / "run.log")
    mirror = Mirror(run_dir, persist)
    resumed: list[str] = []
    if persist is not None:
        stage("restore", f"restoring earlier work from {persist}")
        restored = restore(persist, run_dir)
        if restored:
            resumed.append(f"restored {len(restored)} files from {persist}")
    for d in (run_dir, run_dir / "report"):
        remove_stale_temporaries(d)
    timing = Timing(run_dir)
    atomic_write_bytes(run_dir / "plan.json", plan.to_json().encode())
    mirror.push("plan.json")

    store_dir = run_dir / store_folder(plan)
    converter = get_converter(plan.converter, cutoff=plan.cutoff, bond_cutoff=plan.bond_cutoff,
                              max_neighbors=plan.max_neighbors, on_isolated_atoms=plan.on_isolated_atoms,
                              edges=plan.graph_edges)
    if (store_dir / "manifest.json").exists():
        resumed.append("graph store found: converting only what is missing")

    def on_shard(entry: dict[str, Any]) -> None:
        timing.add("convert_seconds")
        if "file" in entry:
            mirror.push(f"store/{entry['file']}", "store/manifest.json", "timing.json")
        else:
            mirror.push("store/manifest.json", "timing.json")

    stage("convert", f"{data_path} -> {store_dir} ({plan.converter} graphs, {plan.convert_workers} workers)")
    conv = build_store(data_path, store_dir, converter, workers=plan.convert_workers, shard_size=plan.shard_size,
                       limit=plan.n_samples, on_bad_structure=plan.on_bad_structure, target=plan.target,
                       progress=progress, on_shard=on_shard, should_stop=should_stop)
    if not conv.complete:
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
        if ev["event"] == "checkpoint":  # each folder's checksum record travels before the files it lists
            mirror.push("checkpoints/checksums.json", "checkpoints/latest.pt", "checkpoints/previous.pt",
                        "metrics.jsonl", "metrics.csv")
        elif ev["event"] == "best":
            mirror.push("checksums.json", "best.pt")

    if plan.teacher:
        from colab_kit.distill import teacher_column

        stage("teacher", f"outputs of {plan.teacher} over the {len(store)} graphs (computed once, then cached)")
        if teacher_column(store, plan, data_path, progress=progress, should_stop=should_stop) is None:
            mirror.push_all()
            return RunResult(run_dir, {"status": "stopped"}, {}, resumed, mirror.failures)
    if plan.world_size > 1:  # the other ranks have waited for this
        from colab_kit.fsutil import atomic_write_json

        atomic_write_json(run_dir / PREPARED, _prepared_key(plan))
    ranks = f" x {plan.world_size} ranks" if plan.world_size > 1 else ""
    stage("train", f"{plan.model} on {len(store)} graphs, {plan.epochs} epochs, device {plan.device}{ranks}")
    result = fit(store, plan, run_dir, progress=progress, callbacks=[on_train_event, *callbacks],
                 should_stop=should_stop)
    timing.set_train(result.train_seconds)
    mirror.push("timing.json")
    if result.status == "stopped":
        mirror.push_all()
        return RunResult(run_dir, {"status": "stopped"}, {}, resumed, mirror.failures)
    return _finish(plan, run_dir, store, result, timing, mirror, resumed, stage, t0)


PREPARED = "prepared.json"  # rank 0 of a torchrun launch: the store (and teacher outputs) are ready


def _prepared_key(plan: Plan) -> dict[str, Any]:
    return {"run": run_name(plan), "data": plan.data, "n_samples": plan.n_samples, "teacher": plan.teacher,
            "distill_alpha": plan.distill_alpha, "world_size": plan.world_size}


def _follow(plan: Plan, run_dir: Path, should_stop: Callable[[], bool]) -> RunResult:
    """A rank other than 0 of a torchrun launch: wait until rank 0 has the data, store and teacher outputs ready
    (its ``prepared.json`` names this run and the store is complete), then train and evaluate its share. Rank 0
    writes every file and the report; a stale marker of an earlier launch of the same run is safe to follow, because
    what it marks is complete and rank 0 only reuses it."""
    from colab_kit.evaluate import evaluate_weights
    from colab_kit.store import GraphStore, StoreError
    from colab_kit.train import fit

    want = _prepared_key(plan)
    log.info("rank %d: waiting for rank 0 to prepare %s", plan.rank, run_dir / store_folder(plan))
    while True:
        if should_stop():
            return RunResult(run_dir, {"status": "stopped"}, {})
        try:
            if json.loads((run_dir / PREPARED).read_text()) == want:
                store = GraphStore(run_dir / store_folder(plan))
                break
        except (OSError, ValueError, StoreError):
            pass
        time.sleep(0.5)
    result = fit(store, plan, run_dir, progress=False, should_stop=should_stop)
    if result.status == "stopped":
        return RunResult(run_dir, {"status": "stopped"}, {})
    test = evaluate_weights(store, plan, run_dir / "best.pt")  # gathered: rank 0 has every graph's prediction
    return RunResult(run_dir, {"status": result.status, "rank": plan.rank, "test_mae": test["mae"]}, {})


def _finish(plan: Plan, run_dir: Path, store: Any, result: Any, timing: Timing, mirror: Any, resumed: list[str],
            stage: Callable[[str, str], None], t0: float) -> RunResult:
    """Test-set evaluation with the best weights, the mean-predictor baseline, and the report."""

    from colab_kit.evaluate import evaluate_weights
    from colab_kit.loader import splits_for
    from colab_kit.report import mean_predictor_mae, write_report

    stage("evaluate", "test set with the best validation weights")
    test = evaluate_weights(store, plan, run_dir / "best.pt")
    splits = splits_for(store, plan)
    baseline = mean_predictor_mae(store.targets(), splits["train"], splits["test"])
    stage("report", str(run_dir / "report"))
    _write_item_records(run_dir / "report", store)
    timing.add("evaluate_seconds")
    metrics = write_report(run_dir / "report", plan=plan, store=store, result=result, test=test,
                           baseline_mae=baseline, timing=timing.summary(time.perf_counter() - t0),
                           data_name=plan.data)
    files = dict(metrics.pop("files"))
    files["model"] = str(run_dir / "best.pt")
    files["run_dir"] = str(run_dir)
    mirror.push_all()
    if mirror.failures:
        log.warning("%d copies to the persist dir failed; see the warnings above", len(mirror.failures))
    atomic_write_bytes(run_dir / "report" / "files.json", json.dumps(files, indent=2).encode())
    return RunResult(run_dir, metrics, files, resumed, mirror.failures)


def _write_item_records(report_dir: Path, store: Any) -> None:
    """report/skipped.csv (id, reason) and report/warnings.csv (id, warning): the structures conversion
    dropped, and those it kept although their parser warned."""
    import csv
    import io

    report_dir.mkdir(parents=True, exist_ok=True)
    for name, rows, header in (("skipped.csv", store.failures(), ("id", "reason")),
                               ("warnings.csv", store.warnings(), ("id", "warning"))):
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(header)
        w.writerows(rows)
        atomic_write_bytes(report_dir / name, buf.getvalue().encode())
