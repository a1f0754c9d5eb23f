"""Knowledge distillation on real data: a CHGNet teacher fine-tuned by colab_kit, CGCNN students trained with and
without it, and the memory of colab_kit's cached teacher column against a teacher kept in the training loop.

Every measured run is a fresh process tree watched by ``harness.TreeRss`` (summed RSS and RssAnon of the
process and its descendants every 0.2 s, each sample kept with its wall-clock time so a peak can be read over one
stage of the run, the stage's bounds taken from the timestamps of ``run.log``):

``teacher``   ``python -m colab_kit run --mode quick --model chgnet --set epochs=N --set patience=N`` on the source
              (80/10/10 split of seed 0). Its test MAE is the teacher's own; its train/val/test ids are THE split of
              every student (below).
``students``  ``python -m colab_kit run --mode quick --model cgcnn --set epochs=E --set patience=E --set seed=S``,
              without a teacher (alpha = 1) and with ``--set teacher=<teacher run> --set distill_alpha=A``, in two
              settings: ``full`` (the teacher's 2,400 training structures) and ``small`` (``--small-n`` of them,
              drawn once by ``--small-seed``), both validated and tested on the teacher's 300 + 300 structures.
``loop``      the reference "teacher in the loop" (``--child-loop``): the same CGCNN student, built and trained from
              colab_kit's public pieces on the store, split, calibrated batch budget and seed of the ``full``
              seed-``--loop-seed`` distilled run (so the same batches in the same order and the same initial
              weights), with the fine-tuned CHGNet held in memory and run (no grad) on the CHGNet graphs of the
              same structures for every training batch (``colab_kit.load(teacher).prediction_store(source)``,
              matched by id); loss ``A * MSE(label) + (1 - A) * MSE(teacher)``, AdamW, the Plan's schedule and
              clipping, a validation pass per epoch. Its validation MAE per epoch is compared with the cached run's:
              the blended target gives the same gradients, so they should agree to float rounding. Also one more
              ``run`` of that student with the cached run's column copied into its store first (same store
              fingerprint): the process never loads the teacher.

Design decisions (and why):

* **One split for teacher and students.** ``--set seed=S`` also draws the split, and a teacher fine-tuned on seed 0's
  training structures has seen most of seed 1's test structures: a student of another seed would be scored on
  structures whose labels reached it through the teacher. So every student trains on (a subset of) the teacher's
  training ids and is tested on the teacher's test ids; the seeds vary the student's initialisation and batch order
  only. Mechanism: one source file (``<workdir>/data/``, the shipped records unchanged) holds the teacher's
  structures in the order [small train, val, test, rest of train]; ``small`` converts its first items
  (``--set n_samples``), ``full`` all of it, and the split file ``store/splits-seed<S>.npz`` that colab_kit would
  draw is written beforehand with the right indices (colab_kit loads a split file that covers its store). After
  each run the script checks the run's split by id and stops if it is not the teacher's.
* **Paired by seed**: ratio = MAE(with teacher) / MAE(without), same seed, same data, mean over seeds.
* **One teacher pass per setting**: every student work dir links ``predict/`` to one shared ``<workdir>/predict``
  (colab_kit keeps the teacher's CHGNet graphs of a source and its outputs there by fingerprint), so the first
  distilled run of a setting computes the teacher's outputs (CHGNet conversion + forward: the one-off cost,
  ``== teacher`` to ``== train`` in ``run.log``) and the later ones read them. Since colab_kit ``3fa3b41`` the
  prediction store follows the student store's item limit, so ``small`` (``--set n_samples``) has its own (before
  it, both settings read the full source's).
  (Run names do not carry the seed, so each (setting, seed) has its own work dir.)
* **Memory**: a ``run``'s figure is the peak over its ``train`` stage (``== train`` to ``== evaluate`` in
  ``run.log``); the loop's is from before its models are built to the end of its last epoch. Whole-process peaks
  are recorded too.
* **Threads**: the students and the loop run with ``--threads`` torch threads, the teacher with ``--teacher-threads``
  (both default 1, through OMP_NUM_THREADS / MKL_NUM_THREADS): on the loaded 2-core machine 2 threads made CGCNN
  and CHGNet epochs 10-30x slower (bench_train.py's README saw the same). ``0`` leaves torch's default.
* **Frozen code**: ``--colab-kit-src DIR`` runs every command from another tree (e.g. a ``git archive HEAD`` export),
  so edits in the checkout cannot reach a run under way.

Results go to ``--json-out`` (default ``<workdir>/bench_distill.json``) after every run; a rerun skips the runs already
measured (``--redo`` measures again). ``--report-only`` prints the tables.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
from harness import REPO, TreeRss, loadavg, machine_info  # noqa: E402

MB = 2**20
SOURCE = REPO / "colab_kit" / "data" / "mp_eform_cgcnn_3000_matbench.json.gz"


# ================================================================ watching a process tree, reading a run

class StageRss(TreeRss):
    """:class:`TreeRss` that keeps every sample ``(unix time, rss, anon)``, so a peak can be taken over a window."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        super().__init__(pid, interval=interval, pss_every=10**9)
        self.samples: list[tuple[float, int, int]] = []

    def _run(self) -> None:
        while not self._stop.is_set():
            rss, _, anon = self.sample()
            if rss:
                self.samples.append((time.time(), rss, anon))
                self.peak_rss, self.peak_anon = max(self.peak_rss, rss), max(self.peak_anon, anon)
            self._stop.wait(self.interval)

    def peak(self, t0: float | None, t1: float | None) -> tuple[float | None, float | None]:
        """Peak (RSS, RssAnon) in MB over ``[t0, t1]`` (unix times; None = open)."""
        s = [(r, a) for t, r, a in self.samples if (t0 is None or t >= t0) and (t1 is None or t <= t1)]
        if not s:
            return None, None
        return max(r for r, _ in s) / MB, max(a for _, a in s) / MB


def watched(cmd: list[str], log: Path, src: Path, threads: int = 0) -> tuple[dict[str, Any], StageRss]:
    """Run ``cmd`` (cwd ``src``, colab_kit imported from there) in its own session; stdout+stderr to ``log``.
    ``threads`` > 0 sets OMP_NUM_THREADS / MKL_NUM_THREADS (torch's intra-op threads) in its environment."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    if threads > 0:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    load0 = loadavg()
    t0 = time.time()
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=src, env=env, start_new_session=True)
        with StageRss(proc.pid) as watch:
            rc = proc.wait()
    rec = {"cmd": " ".join(cmd), "threads": threads or None, "returncode": rc, "wall_s": round(time.time() - t0, 1), "started": t0,
           "loadavg_before": load0, "loadavg_after": loadavg(), "peak_tree_rss_mb": round(watch.peak_rss / MB),
           "peak_tree_anon_mb": round(watch.peak_anon / MB), "log": str(log)}
    if rc != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"command failed (exit {rc}): {rec['cmd']}\n--- {log} (tail) ---\n{tail}")
    return rec, watch


def stage_times(run_log: Path, since: float) -> dict[str, float]:
    """Unix time of each ``== stage:`` line of ``run.log`` written after ``since`` (this call's stages)."""
    out: dict[str, float] = {}
    for line in run_log.read_text(errors="replace").splitlines():
        m = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO +colab_kit\.runner: == (\w+):", line)
        if m:
            t = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if t >= since - 1:
                out.setdefault(m.group(2), t)
    return out


def run_dir_of(work_dir: Path, data: Path, model: str, sets: list[str], src: Path) -> Path:
    """The run directory ``python -m colab_kit run --mode quick --model M --data D --set ...`` uses (its name)."""
    code = ("import sys, json; from colab_kit.cli.common import parse_override; from colab_kit.plan.machine import detect; "
            "from colab_kit.plan import make_plan; from colab_kit.run.pipeline import run_name; "
            "a = json.loads(sys.argv[1]); "
            "print(run_name(make_plan(detect(gpu=lambda: None), 'quick', model=a['model'], data=a['data'], "
            "**dict(parse_override(s) for s in a['sets']))))")
    arg = json.dumps({"model": model, "data": str(data), "sets": sets})
    name = subprocess.run([sys.executable, "-c", code, arg], cwd=src, check=True, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(src)}).stdout.strip().splitlines()[-1]
    return work_dir / name


def epochs_of(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]


def store_split_ids(store_dir: Path, seed: int) -> dict[str, list[str]]:
    from colab_kit.store.format import GraphStore

    ids = GraphStore(store_dir).ids()
    with np.load(store_dir / f"splits-seed{seed}.npz", allow_pickle=False) as z:
        return {k: [ids[i] for i in z[k]] for k in ("train", "val", "test")}


# ================================================================ data files: the teacher's structures, split in order

def write_source(records: dict[str, Any], columns: list[str], ids: list[str], out: Path) -> None:
    """A matbench-layout JSON (``index``, ``columns``, ``data``) of ``ids``, in that order, the records unchanged."""
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"index": ids, "columns": columns, "data": [records[i] for i in ids]}
    tmp = out.with_suffix(".tmp")
    with gzip.open(tmp, "wt") as f:
        json.dump(doc, f)
    tmp.replace(out)


def place_split(store_dir: Path, seed: int, split: dict[str, np.ndarray]) -> None:
    """The ``splits-seed<seed>.npz`` colab_kit would draw, written beforehand with ``split``'s indices."""
    import io

    store_dir.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, **split)
    (store_dir / f"splits-seed{seed}.npz").write_bytes(buf.getvalue())


# ================================================================ the benchmark

class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.a = args
        self.work = Path(args.workdir)
        self.src = Path(args.colab_kit_src or REPO).resolve()
        self.out = Path(args.json_out or self.work / "bench_distill.json")
        self.res: dict[str, Any] = json.loads(self.out.read_text()) if self.out.exists() else {}
        self.res.setdefault("runs", {})
        self.res["machine"] = machine_info()
        self.py = [sys.executable]
        self.threads = args.threads

    def save(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.res, indent=1))
        tmp.replace(tmp.with_name(self.out.name))

    def done(self, key: str) -> dict[str, Any] | None:
        return None if self.a.redo else self.res["runs"].get(key)

    # ---------------------------------------------------------------- teacher
    def teacher(self) -> dict[str, Any]:
        key, n = "teacher", self.a.teacher_epochs
        w = self.work / "teacher"
        sets = [f"epochs={n}", f"patience={n}", "seed=0"]
        run_dir = run_dir_of(w, Path(self.a.source), "chgnet", sets, self.src)
        if (rec := self.done(key)) is None:
            cmd = [*self.py, "-m", "colab_kit", "run", "--mode", "quick", "--model", "chgnet", "--data",
                   str(self.a.source), "--work-dir", str(w), *[x for s in sets for x in ("--set", s)]]
            rec, _ = watched(cmd, self.work / "logs" / "teacher.log", self.src, self.a.teacher_threads)
            m = json.loads((run_dir / "report" / "metrics.json").read_text())
            rec.update(run_dir=str(run_dir), epochs=n, test_mae=m["test_mae"], test_n=m["test_n"],
                       mean_predictor_test_mae=m["mean_predictor_test_mae"], history=epochs_of(run_dir),
                       split_n={k: len(v) for k, v in store_split_ids(run_dir / "store", 0).items()})
            self.res["runs"][key] = rec
            self.save()
        print(f"teacher: test MAE {rec['test_mae']:.4f} (n={rec['test_n']}), {rec['wall_s']:.0f} s", flush=True)
        return rec

    def teacher_split(self) -> dict[str, list[str]]:
        return store_split_ids(Path(self.res["runs"]["teacher"]["run_dir"]) / "store", 0)

    # ---------------------------------------------------------------- data per setting
    def data_file(self) -> tuple[Path, int]:
        """The teacher's structures in the order [small train, val, test, rest of train]: ``full`` reads all of it,
        ``small`` its first n_small + n_val + n_test items (``--set n_samples``), so both are one source and the
        teacher's column is computed once. Returns (path, number of items)."""
        sp = self.teacher_split()
        rng = np.random.default_rng(self.a.small_seed)
        pick = set(rng.choice(len(sp["train"]), self.a.small_n, replace=False).tolist())
        small = [x for k, x in enumerate(sp["train"]) if k in pick]
        rest = [x for k, x in enumerate(sp["train"]) if k not in pick]
        ids = [*small, *sp["val"], *sp["test"], *rest]
        out = self.work / "data" / f"teacher_split_small{self.a.small_n}.json.gz"
        if not out.exists():
            with gzip.open(self.a.source, "rt") as f:
                doc = json.load(f)
            write_source(dict(zip(doc["index"], doc["data"])), doc["columns"], ids, out)
        return out, len(ids)

    def split_of(self, setting: str) -> dict[str, np.ndarray]:
        """Store indices of the train/val/test parts of :meth:`data_file` (a store keeps the source's order)."""
        sp = self.teacher_split()
        s, v, t = self.a.small_n, len(sp["val"]), len(sp["test"])
        head = {"val": np.arange(s, s + v), "test": np.arange(s + v, s + v + t)}
        if setting == "small":
            return {"train": np.arange(s), **head}
        return {"train": np.concatenate([np.arange(s), np.arange(s + v + t, s + v + t + len(sp["train"]) - s)]), **head}

    def work_dir(self, setting: str, seed: int) -> Path:
        """Per (setting, seed): run names do not carry the seed. ``predict/`` is shared by every student."""
        w = self.work / f"{setting}-s{seed}"
        w.mkdir(parents=True, exist_ok=True)
        shared = self.work / "predict"
        shared.mkdir(parents=True, exist_ok=True)
        if not (w / "predict").exists():
            (w / "predict").symlink_to(shared, target_is_directory=True)
        return w

    # ---------------------------------------------------------------- students
    def student(self, setting: str, seed: int, alpha: float, column_from: str | None = None) -> dict[str, Any]:
        """One ``run``; ``column_from``: a run whose teacher column is copied into this run's store first (the
        same store fingerprint), so this process never loads the teacher (the column already exists)."""
        key = f"{setting}/s{seed}/a{alpha:g}" + ("/column-cached" if column_from else "")
        if (rec := self.done(key)) is not None:
            return rec
        data, n_items = self.data_file()
        split = self.split_of(setting)
        w = self.work_dir(setting + ("-column-cached" if column_from else ""), seed)
        e = self.a.epochs
        n_samples = n_items if setting == "full" else sum(len(v) for v in split.values())
        sets = [f"epochs={e}", f"patience={e}", f"seed={seed}", f"n_samples={n_samples}"]
        if alpha < 1:
            sets += [f"teacher={self.res['runs']['teacher']['run_dir']}", f"distill_alpha={alpha:g}"]
        run_dir = run_dir_of(w, data, "cgcnn", sets, self.src)
        if self.a.redo and run_dir.exists():
            shutil.rmtree(run_dir)
        place_split(run_dir / "store", seed, split)
        if column_from:
            for f in (Path(column_from) / "store").glob("teacher-*.npz"):
                shutil.copy2(f, run_dir / "store" / f.name)
        cmd = [*self.py, "-m", "colab_kit", "run", "--mode", "quick", "--model", "cgcnn", "--data", str(data),
               "--work-dir", str(w), *[x for s in sets for x in ("--set", s)]]
        rec, watch = watched(cmd, self.work / "logs" / f"{key.replace('/', '_')}.log", self.src, self.threads)
        got, want = store_split_ids(run_dir / "store", seed), self.teacher_split()
        if got["test"] != want["test"] or got["val"] != want["val"] or not set(got["train"]) <= set(want["train"]):
            raise SystemExit(f"{key}: the run's split is not the teacher's (see {run_dir}/run.log)")
        m = json.loads((run_dir / "report" / "metrics.json").read_text())
        st = stage_times(run_dir / "run.log", rec["started"])
        hist = epochs_of(run_dir)
        rec.update(setting=setting, seed=seed, alpha=alpha, column_copied=bool(column_from), epochs=e, n_train=len(split["train"]), run_dir=str(run_dir),
                   test_mae=m["test_mae"], test_n=m["test_n"], mean_predictor_test_mae=m["mean_predictor_test_mae"],
                   best_epoch=min(hist, key=lambda h: h["val_mae"])["epoch"], history=hist,
                   epoch_s_median=statistics.median(h["seconds"] for h in hist),
                   epoch_s_min=min(h["seconds"] for h in hist), stages=st)
        if "train" in st:
            rec["train_peak_rss_mb"], rec["train_peak_anon_mb"] = watch.peak(st["train"], st.get("evaluate"))
        if "teacher" in st and "train" in st:
            rec["teacher_stage_s"] = round(st["train"] - st["teacher"], 1)
            rec["teacher_stage_peak_rss_mb"], rec["teacher_stage_peak_anon_mb"] = watch.peak(st["teacher"], st["train"])
        self.res["runs"][key] = rec
        self.save()
        print(f"{key}: test MAE {rec['test_mae']:.4f}, {rec['wall_s']:.0f} s, train peak RSS "
              f"{rec.get('train_peak_rss_mb') or 0:.0f} MB, load {rec['loadavg_before']}->{rec['loadavg_after']}", flush=True)
        return rec

    # ---------------------------------------------------------------- teacher in the loop
    def loop(self) -> dict[str, Any]:
        seed, alpha, e = self.a.loop_seed, self.a.alphas[0], self.a.loop_epochs or self.a.epochs
        key = f"loop/full/s{seed}/a{alpha:g}/e{e}"
        if (rec := self.done(key)) is not None:
            return rec
        cached = self.student("full", seed, alpha)
        self.student("full", seed, alpha, column_from=cached["run_dir"])
        data, _ = self.data_file()
        cfg = {"student_run": cached["run_dir"], "teacher": self.res["runs"]["teacher"]["run_dir"], "source": str(data),
               "predict_work_dir": str(self.work_dir("full", seed)), "alpha": alpha, "epochs": e, "seed": seed,
               "progress": str(self.work / "logs" / f"{key.replace('/', '_')}.progress.json")}
        cfg_path = self.work / "logs" / f"{key.replace('/', '_')}.cfg.json"
        cfg_path.parent.mkdir(parents=True, exist_ok=True)
        cfg_path.write_text(json.dumps(cfg))
        cmd = [*self.py, str(Path(__file__).resolve()), "--child-loop", str(cfg_path)]
        rec, watch = watched(cmd, self.work / "logs" / f"{key.replace('/', '_')}.log", self.src, self.threads)
        child = json.loads(Path(cfg["progress"]).read_text())
        rec.update(child)
        rec["train_peak_rss_mb"], rec["train_peak_anon_mb"] = watch.peak(child["t_setup"], child["t_end"])
        self.res["runs"][key] = rec
        self.save()
        print(f"{key}: {statistics.median(h['seconds'] for h in child['history']):.1f} s/epoch, peak RSS "
              f"{rec['train_peak_rss_mb']:.0f} MB", flush=True)
        return rec


def child_loop(cfg_path: str) -> None:
    """The reference: the CHGNet teacher in memory next to the CGCNN student, its forward on every training batch."""
    import torch

    import colab_kit
    from colab_kit.loader.batching import BudgetBatchSampler, GraphDataset, collate_fn, make_loaders
    from colab_kit.models import build_model
    from colab_kit.plan.planner import Plan
    from colab_kit.store.format import GraphStore
    from colab_kit.training.checkpoint import load_checkpoint
    from colab_kit.training.evaluate import evaluate_with_backoff
    from colab_kit.training.schedule import make_scheduler
    from colab_kit.util.reproducible import seed_everything

    cfg = json.loads(Path(cfg_path).read_text())
    rec: dict[str, Any] = {"t_setup": time.time()}
    run = Path(cfg["student_run"])
    plan = Plan.from_dict(json.loads((run / "plan.json").read_text()))
    store = GraphStore(run / "store")
    with np.load(run / "store" / f"splits-seed{plan.seed}.npz", allow_pickle=False) as z:
        splits = {k: z[k] for k in ("train", "val", "test")}
    budget = load_checkpoint(run / "checkpoints")["budget"]  # the cached run's calibrated budget: the same batches
    device = torch.device("cpu")
    seed_everything(plan.seed)
    y = store.targets()
    mean, std = float(np.mean(y[splits["train"]])), float(np.std(y[splits["train"]]) or 1.0)
    student = build_model(plan.model, target_mean=mean, target_std=std, graph_params=store.params,
                          options=plan.model_options).to(device)

    predictor = colab_kit.load(cfg["teacher"], device="cpu")
    _, tstore = predictor.prediction_store(cfg["source"], work_dir=cfg["predict_work_dir"], progress=False)
    teacher = predictor.model
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    t_index = {i: k for k, i in enumerate(tstore.ids())}
    to_teacher = [t_index.get(i, -1) for i in store.ids()]
    sds, tds, scol, tcol = GraphDataset(store), GraphDataset(tstore), collate_fn(store), collate_fn(tstore)

    atoms, edges = store.sizes()
    sampler = BudgetBatchSampler(splits["train"], atoms, edges, budget["max_atoms"], budget["max_edges"],
                                 plan.batch_size, shuffle=True, seed=plan.seed)
    val_loader = make_loaders(store, plan, splits, budget=(budget["max_atoms"], budget["max_edges"]))["val"]
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=plan.lr, weight_decay=plan.weight_decay)
    sched = make_scheduler(opt, plan)
    alpha = float(cfg["alpha"])
    rec["t_train"] = time.time()
    history = []
    for epoch in range(int(cfg["epochs"])):
        t0, t_teacher, seen = time.perf_counter(), 0.0, 0
        student.train()
        for b in sampler.batches():
            batch = student.to_device(scol([sds[i] for i in b]), device)
            tt = time.perf_counter()
            with torch.no_grad():  # the teacher, on the same structures, on every batch
                have = [k for k, i in enumerate(b) if to_teacher[i] >= 0]
                t = torch.full((len(b),), float("nan"))
                if have:
                    tb = teacher.to_device(tcol([tds[to_teacher[b[k]]] for k in have]), device)
                    t[have] = teacher(tb).float()
            t_teacher += time.perf_counter() - tt
            pred = student(batch).float()
            yb = student.targets(batch)
            t = torch.where(torch.isfinite(t), t, yb)
            loss = alpha * torch.nn.functional.mse_loss(pred / std, yb / std) + \
                (1 - alpha) * torch.nn.functional.mse_loss(pred / std, t / std)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, plan.grad_clip)
            opt.step()
            sampler.advance(len(b))
            seen += len(b)
        val = evaluate_with_backoff(student, val_loader, device, None)
        sched.step()
        sampler.next_epoch()
        history.append({"epoch": epoch + 1, "val_mae": val["mae"], "seconds": round(time.perf_counter() - t0, 2),
                        "teacher_s": round(t_teacher, 2), "graphs": seen})
        rec["history"] = history
        Path(cfg["progress"]).write_text(json.dumps(rec))
    rec["t_end"] = time.time()
    Path(cfg["progress"]).write_text(json.dumps(rec))


# ================================================================ tables

def fmt(x: float | None, p: int = 3) -> str:
    return "—" if x is None else f"{x:.{p}f}"


def mean_std(xs: list[float]) -> str:
    if not xs:
        return "—"
    return f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs):.4f}" if len(xs) > 1 else f"{xs[0]:.4f}"


def report(res: dict[str, Any]) -> None:
    runs = res["runs"]
    t = runs.get("teacher")
    if t:
        print("\n## Teacher (CHGNet fine-tuned by colab_kit)\n")
        print("| epochs | train/val/test | test MAE eV/atom | mean predictor | wall s | s/epoch | peak tree RSS MB | load avg |")
        print("|--:|---|--:|--:|--:|--:|--:|---|")
        sn = t["split_n"]
        print(f"| {t['epochs']} | {sn['train']}/{sn['val']}/{sn['test']} | **{t['test_mae']:.4f}** | "
              f"{t['mean_predictor_test_mae']:.4f} | {t['wall_s']:.0f} | "
              f"{statistics.median(h['seconds'] for h in t['history']):.0f} | {t['peak_tree_rss_mb']:,} | "
              f"{t['loadavg_before']} / {t['loadavg_after']} |")
    students = [r for k, r in runs.items() if k.count("/") == 2 and not k.startswith("loop")]
    if students:
        print(f"\n## Students (CGCNN), test MAE eV/atom on the teacher's {students[0]['test_n']} test structures\n")
        print("| setting | n train | alpha | seeds | test MAE (mean ± std) | per seed | ÷ no teacher (paired) | "
              "best epochs | epoch s (median) |")
        print("|---|--:|--:|---|--:|---|--:|---|--:|")
        for setting in ("full", "small"):
            base = {r["seed"]: r for r in students if r["setting"] == setting and r["alpha"] == 1}
            for alpha in sorted({r["alpha"] for r in students if r["setting"] == setting}, reverse=True):
                rs = sorted((r for r in students if r["setting"] == setting and r["alpha"] == alpha),
                            key=lambda r: r["seed"])
                per_seed = " ".join(f"{r['test_mae']:.4f}" for r in rs)
                ratios = [r["test_mae"] / base[r["seed"]]["test_mae"] for r in rs if r["seed"] in base]
                ratio = "1" if alpha == 1 else (f"{statistics.mean(ratios):.3f} ({', '.join(f'{x:.2f}' for x in ratios)})"
                                                if ratios else "—")
                print(f"| {setting} | {rs[0]['n_train']} | {alpha:g}{' (no teacher)' if alpha == 1 else ''} | "
                      f"{','.join(str(r['seed']) for r in rs)} | {mean_std([r['test_mae'] for r in rs])} | "
                      f"{per_seed} | {ratio} | "
                      f"{' '.join(str(r['best_epoch']) for r in rs)} | "
                      f"{statistics.median(r['epoch_s_median'] for r in rs):.1f} |")
        first = sorted((r for r in students if "teacher_stage_s" in r), key=lambda r: r["started"])
        if first:
            print("\n## The teacher stage of distilled runs (`== teacher` to `== train` in run.log)\n")
            print("| run | teacher stage s | peak tree RSS in it MB | what it did |")
            print("|---|--:|--:|---|")
            seen: set[str] = set()
            for r in first:
                # the prediction store the run's teacher stage used (one per source and item limit since 3fa3b41:
                # the small setting has its own), from run.log; the first run of each computed the outputs
                log = Path(r["run_dir"]) / "run.log"
                m = re.search(r"/predict/([^\s:]+)", log.read_text(errors="replace")) if log.exists() else None
                src = m.group(1) if m else Path(r["run_dir"]).name.split("-radius")[0]
                what = f"computed (CHGNet graphs + forward), `predict/{src}`" if src not in seen else \
                    f"read from `predict/{src}` (teacher model built, not run)"
                seen.add(src)
                print(f"| {r['setting']}/s{r['seed']}/a{r['alpha']:g} | {r['teacher_stage_s']:.1f} | "
                      f"{fmt(r.get('teacher_stage_peak_rss_mb'), 0)} | {what} |")
    loops = {k: r for k, r in runs.items() if k.startswith("loop/")}
    for k, lp in loops.items():
        _, setting, s, a, _ = k.split("/")
        c = runs.get(f"{setting}/{s}/{a}")
        print(f"\n## Memory and time: cached teacher column vs teacher in the loop ({setting}, seed {s[1:]}, alpha {a[1:]})\n")
        print("| contender | epochs | s/epoch (median) | teacher s/epoch | peak tree RSS MB (training) | "
              "peak RssAnon MB (training) | peak tree RSS MB (whole process) | val MAE after the loop's last epoch | load avg |")
        print("|---|--:|--:|--:|--:|--:|--:|--:|---|")
        rows = [("colab_kit `run`, the column made in this process's teacher stage, then training", c),
                ("colab_kit `run`, column already in the store (teacher never loaded)",
                 runs.get(f"{setting}/{s}/{a}/column-cached"))]
        k = len(lp["history"])
        for label, r in rows:
            if r:
                print(f"| {label} | {r['epochs']} | {r['epoch_s_median']:.1f} | 0 | "
                      f"{fmt(r.get('train_peak_rss_mb'), 0)} | {fmt(r.get('train_peak_anon_mb'), 0)} | "
                      f"{r['peak_tree_rss_mb']:,} | {r['history'][k - 1]['val_mae']:.4f} | "
                      f"{r['loadavg_before']} / {r['loadavg_after']} |")
        h = lp["history"]
        print(f"| reference, teacher in the loop | {len(h)} | {statistics.median(x['seconds'] for x in h):.1f} | "
              f"{statistics.median(x['teacher_s'] for x in h):.1f} | {fmt(lp['train_peak_rss_mb'], 0)} | "
              f"{fmt(lp['train_peak_anon_mb'], 0)} | {lp['peak_tree_rss_mb']:,} | {h[-1]['val_mae']:.4f} | "
              f"{lp['loadavg_before']} / {lp['loadavg_after']} |")
        if c:
            n = min(len(h), len(c["history"]))
            d = [abs(h[i]["val_mae"] - c["history"][i]["val_mae"]) for i in range(n)]
            print(f"\nval MAE per epoch, loop vs cached run, max |difference| over {n} epochs: {max(d):.2e} eV/atom")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default=str(SOURCE))
    p.add_argument("--workdir", default="/tmp/ckdistill")
    p.add_argument("--json-out")
    p.add_argument("--colab-kit-src", help="run colab_kit from this tree (e.g. a `git archive HEAD` export)")
    p.add_argument("--sections", default="teacher,students,loop")
    p.add_argument("--teacher-epochs", type=int, default=1)
    p.add_argument("--epochs", type=int, default=15, help="student epochs (every student, every setting)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--alphas", default="0.5", help="distilled alphas run for every seed (each paired with alpha 1)")
    p.add_argument("--extra-alphas", default="", help="more alphas, run only for --extra-seeds")
    p.add_argument("--extra-seeds", default="0")
    p.add_argument("--settings", default="full,small")
    p.add_argument("--small-n", type=int, default=600, help="training structures of the small setting")
    p.add_argument("--small-seed", type=int, default=0, help="which of the teacher's training structures they are")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads of the students and the loop (OMP_NUM_THREADS; 0 = torch's default)")
    p.add_argument("--teacher-threads", type=int, default=1,
                   help="torch threads of the teacher's fine-tuning run (OMP_NUM_THREADS; 0 = torch's default)")
    p.add_argument("--loop-seed", type=int, default=0)
    p.add_argument("--loop-epochs", type=int, default=0, help="epochs of the reference loop (default: --epochs)")
    p.add_argument("--redo", action="store_true")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--child-loop", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child_loop:
        child_loop(a.child_loop)
        return 0
    a.alphas = [float(x) for x in a.alphas.split(",") if x]
    b = Bench(a)
    if not a.report_only:
        sections = a.sections.split(",")
        if "teacher" in sections or "teacher" not in b.res["runs"]:
            b.teacher()
        if "students" in sections:
            seeds = [int(s) for s in a.seeds.split(",") if s]
            for seed in seeds:
                for setting in a.settings.split(","):
                    for alpha in [1.0, *a.alphas]:
                        b.student(setting, seed, alpha)
            for seed in [int(s) for s in a.extra_seeds.split(",") if s]:
                for setting in a.settings.split(","):
                    for alpha in [float(x) for x in a.extra_alphas.split(",") if x]:
                        b.student(setting, seed, alpha)
        if "loop" in sections:
            b.loop()
    report(b.res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
