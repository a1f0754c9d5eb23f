"""The whole GPU check: one short call on a lent CUDA machine (about 8 minutes), or its dry run on a CPU.

Each step runs in subprocesses of its own, time-boxed: a slow step is killed and recorded as ``timeout`` and the
steps after it still run. ``gpu_check.json`` and ``gpu_check.md`` in ``--out`` are rewritten after every step, so
what a call measured comes back even when the call itself is cut short.

``gpu-tests``   the tests marked ``gpu`` (side-stream batch feed, radius graphs built on CUDA equal the stored ones).
``debug-runs``  ``python -m colab_kit run --mode debug`` for every model the installed packages allow (chgnet, cgcnn,
                comformer invariant and equivariant, alignn, m3gnet, tensornet), each to the end, under the GPU
                memory ceiling ``--gpu-memory`` (15 GiB: a T4 stand-in) with fp16: test MAE vs the mean predictor,
                training graphs/s, the calibrated budget, and the peak ``max_memory_allocated`` against the ceiling.
``forced-oom``  CGCNN with a budget far above what a small ceiling holds and calibration off: the out-of-memory
                back-off halves the budget and every epoch still trains each training graph once.
``steps``       per model, graphs/s of the loader vs of a training step, stored vs device-built radius graphs, and
                the side-stream feed on vs off (``bench_steps.py``).
``resume``      a CGCNN run killed with SIGKILL once it has a checkpoint, then the same command again: it resumes,
                and its final weights are compared with an uninterrupted run's (max |difference|).
``precision``   bf16 vs fp16 (the T4's) loss curves of CHGNet and CGCNN: finite, and not diverging from each other.

On a CPU (``--device cpu``) the same steps run on tiny sizes (``--tiny``): the ceiling has no effect there, and
``forced-oom`` and ``precision`` are skipped with the reason (no CUDA allocator to cap, no CUDA autocast). The test
suite runs this dry run, so the script is known to work before a GPU ever runs it.

Usage::

    python benchmarks/gpu_check.py --out "$OUT"                                   # on the GPU machine
    python benchmarks/gpu_check.py --device cpu --tiny --models cgcnn --out /tmp/gpu-check-dry
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys
import time
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Callable

from harness import REPO, machine_info, read_json, run_watched, tail, write_json_atomic

ALL_MODELS = ("chgnet", "cgcnn", "comformer", "comformer:equivariant", "alignn", "m3gnet", "tensornet")
# the package each model needs beyond colab_kit's own requirements
NEEDS = {"alignn": "alignn", "m3gnet": "matgl", "tensornet": "matgl"}
# model options that make each model small for --tiny (a CPU dry run checks the script, not the models)
TINY_OPTIONS: dict[str, dict[str, Any]] = {
    "cgcnn": {"hidden": 32}, "chgnet": {"freeze_layers": 3}, "comformer": {"hidden": 32, "comformer_layers": 1},
    "alignn": {"hidden": 32, "alignn_layers": 1, "gcn_layers": 1}, "m3gnet": {"units": 16, "nblocks": 1},
    "tensornet": {"units": 16, "nblocks": 1},
}
# each step's share of the time budget
SHARES = {"gpu-tests": 0.08, "debug-runs": 0.42, "forced-oom": 0.1, "steps": 0.14, "resume": 0.14, "precision": 0.12}


class Check:
    """The call's settings, its clock, and its record (saved after every step)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = args.device
        self.cuda = args.device.startswith("cuda")
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(args.workdir or self.out / "work")
        self.work.mkdir(parents=True, exist_ok=True)
        self.t0 = time.monotonic()
        self.models = [m for m in args.models.split(",") if m]
        self.record: dict[str, Any] = {"machine": machine_info(), "gpu": gpu_info(), "argv": sys.argv,
                                       "device": args.device, "gpu_memory": args.gpu_memory, "tiny": args.tiny,
                                       "budget_s": args.budget_s, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                                       "steps": []}

    def left(self) -> float:
        return self.args.budget_s - (time.monotonic() - self.t0)

    def box(self, step: str) -> float:
        """This step's time: its share of the budget, at most what is left (a few seconds kept for the report)."""
        return max(1.0, min(self.args.budget_s * SHARES[step], self.left() - 5))

    def save(self) -> None:
        self.record["seconds"] = round(time.monotonic() - self.t0, 1)
        write_json_atomic(self.out / "gpu_check.json", self.record)
        (self.out / "gpu_check.md").write_text(markdown(self.record))

    def run(self, name: str, cmd: list[str], timeout: float, env: dict[str, str] | None = None,
            until: Callable[[], bool] | None = None) -> dict[str, Any]:
        """``cmd`` in a session of its own (harness.run_watched), its output in ``logs/<name>.out`` / ``.err``; killed
        (SIGKILL, the whole tree) at ``timeout`` or as soon as ``until()`` is true. Returns rc (None when killed),
        seconds, killed ("timeout" / "until" / None), peak tree RSS, the stderr log's path, and the last lines of both."""
        import psutil

        r = run_watched(cmd, ceiling=psutil.virtual_memory().total, name=name, logdir=self.out / "logs",
                        on_tick=(lambda _t: until()) if until is not None else None, timeout=timeout,
                        env={"PYTHONUNBUFFERED": "1", **(env or {})})
        killed = {"caller": "until", "timeout": "timeout"}.get(r["killed_by"] or "", r["killed_by"])
        log = Path(r["stderr"])  # colab_kit logs to stderr
        return {"rc": None if killed else r["returncode"], "killed": killed, "seconds": round(r["wall_s"], 1),
                "peak_rss_mb": round(r["peak_tree_rss_mb"]), "log": str(log.relative_to(self.out)),
                "tail": (tail(r["stdout"], 6) + "\n" + tail(log, 6)).strip().splitlines()}

    def colab_kit_run(self, name: str, model: str, workdir: Path, timeout: float, sets: dict[str, Any],
                      until: Callable[[], bool] | None = None) -> dict[str, Any]:
        """``python -m colab_kit run --mode debug`` for ``model`` (``comformer:equivariant`` names a variant)."""
        base, _, variant = model.partition(":")
        options = {**(TINY_OPTIONS.get(base, {}) if self.args.tiny else {}), **({"variant": variant} if variant else {})}
        if self.args.tiny:
            options.update(n_samples=self.args.tiny_samples, epochs=2)
        options.update({"device": self.device, "amp": "fp16" if self.cuda else "off", "gpu_memory": self.args.gpu_memory,
                        "workers": 0})
        options.update(sets)
        cmd = [sys.executable, "-m", "colab_kit", "run", "--mode", "debug", "--model", base, "--work-dir", str(workdir)]
        for k, v in options.items():
            cmd += ["--set", f"{k}={json.dumps(v) if not isinstance(v, str) else v}"]
        return self.run(name, cmd, timeout, until=until)


def gpu_info() -> dict[str, Any] | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    p = torch.cuda.get_device_properties(0)
    return {"name": p.name, "total_gib": round(p.total_memory / 2**30, 1), "capability": list(torch.cuda.get_device_capability(0)),
            "torch": torch.__version__, "cuda": torch.version.cuda}


def run_folder(workdir: Path) -> Path | None:
    """The one run folder under ``workdir`` (the folder with plan.json)."""
    found = sorted(glob.glob(str(workdir / "**" / "plan.json"), recursive=True))
    return Path(found[0]).parent if found else None


def run_figures(workdir: Path) -> dict[str, Any]:
    """What a finished run's metrics.json says, as one row."""
    folder = run_folder(workdir)
    m = read_json(folder / "report" / "metrics.json") if folder else None
    if not m:
        return {}
    hist = m.get("history") or []
    graphs = sum(int(h.get("train_graphs", 0)) for h in hist)
    train_s = (m.get("time") or {}).get("train_seconds") or 0
    budget = m.get("budget") or {}
    return {"status": m.get("status"), "epochs": m.get("epochs"), "n_graphs": m.get("n_graphs"),
            "test_mae": m.get("test_mae"), "mean_predictor_test_mae": m.get("mean_predictor_test_mae"),
            "train_graphs_per_s": round(graphs / train_s, 1) if graphs and train_s else None,
            "budget_atoms": budget.get("max_atoms"), "budget_edges": budget.get("max_edges"),
            "budget_how": budget.get("how"), "peak_gpu_memory": budget.get("peak_gpu_memory"),
            "gpu_memory_cap": budget.get("gpu_memory"), "history": hist}


# ---------------------------------------------------------------------------------------------------- the steps


def step_gpu_tests(c: Check) -> dict[str, Any]:
    files = sorted(str(f.relative_to(REPO)) for f in (REPO / "tests").rglob("test_*.py") if "mark.gpu" in f.read_text())
    r = c.run("gpu-tests", [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", *files],
              c.box("gpu-tests"))
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error)", "\n".join(r["tail"]))}
    ok = r["rc"] == 0 and not counts.get("failed") and not counts.get("error")
    why = "" if c.cuda else "no CUDA: the gpu tests skip themselves"
    return {"status": "ok" if ok else _failed(r), "why": why, "rows": [{**counts, "seconds": r["seconds"]}], "runs": [r]}


def step_debug_runs(c: Check) -> dict[str, Any]:
    rows, runs = [], []
    models = [m for m in c.models if m in ALL_MODELS and _installed(m)]
    missing = [m for m in c.models if m not in models]
    end = time.monotonic() + c.box("debug-runs")
    for k, model in enumerate(models):
        # the time left, less 20 s kept for each run after this one (at least an even share): a slow first model
        # (CHGNet loads its pretrained weights) may use what the fast ones leave
        left, after = end - time.monotonic(), len(models) - k - 1
        box = max(1.0, left / (after + 1), left - 20 * after)
        wd = c.work / f"debug-{model.replace(':', '-')}"
        r = c.colab_kit_run(f"debug-{model.replace(':', '-')}", model, wd, box, {})
        runs.append(r)
        f = run_figures(wd)
        f.pop("history", None)
        cap, peak = f.get("gpu_memory_cap"), f.get("peak_gpu_memory")
        rows.append({"model": model, "rc": r["rc"], "killed": r["killed"], "seconds": r["seconds"],
                     "peak_rss_mb": r["peak_rss_mb"], **f,
                     "peak_vs_cap": round(peak / cap, 3) if peak and cap else None,
                     "beats_mean": (f["test_mae"] < f["mean_predictor_test_mae"])
                     if f.get("test_mae") is not None and f.get("mean_predictor_test_mae") is not None else None})
        c.record["partial"] = {"debug-runs": rows}
        c.save()
    failed = [r["model"] for r in rows if r["rc"] != 0 or r.get("status") not in ("finished", "early-stopped")]
    over = [r["model"] for r in rows if r.get("peak_vs_cap") is not None and r["peak_vs_cap"] > 1]
    why = "; ".join(filter(None, [f"not installed: {', '.join(missing)}" if missing else "",
                                  f"failed: {', '.join(failed)}" if failed else "",
                                  f"peak above the ceiling: {', '.join(over)}" if over else ""]))
    status = "timeout" if any(r["killed"] for r in runs) else "failed" if failed or over else "ok"
    return {"status": status, "why": why, "rows": rows, "runs": runs}


def step_forced_oom(c: Check) -> dict[str, Any]:
    if not c.cuda:
        return {"status": "skipped", "why": "needs CUDA: a CPU has no allocator a ceiling caps", "rows": []}
    wd = c.work / "forced-oom"
    # A wide CGCNN (hidden 512: ~2 GB for the debug run's whole training split in one batch), a budget of about that
    # split (8,192 atoms / 131,072 edges; calibration off) and the smallest ceiling (256 MiB): CUDA runs out of
    # memory, and about three halvings fit, well within the back-off's 8 in a row.
    r = c.colab_kit_run("forced-oom", "cgcnn", wd, c.box("forced-oom"),
                        {"gpu_memory": "256MiB", "calibrate": False, "batch_atoms": 8192, "batch_edges": 131072,
                         "batch_size": 4096, "hidden": 512, "epochs": 2})
    f = run_figures(wd)
    log = (run_folder(wd) / "run.log") if run_folder(wd) else None
    text = log.read_text(errors="replace") if log and log.exists() else ""
    backoffs = re.findall(r"out of memory on a batch of (\d+) graphs: budget shrunk to (\d+) atoms / (\d+) edges", text)
    per_epoch = [h.get("train_graphs") for h in f.get("history", [])]
    n_train = _n_train(wd)
    every_once = bool(per_epoch) and n_train is not None and all(g == n_train for g in per_epoch)
    row = {"rc": r["rc"], "backoffs": len(backoffs), "budgets": [f"{a} atoms / {e} edges" for _, a, e in backoffs],
           "train_graphs_per_epoch": per_epoch, "train_split": n_train, "every_graph_once": every_once,
           "status": f.get("status"), "test_mae": f.get("test_mae")}
    ok = r["rc"] == 0 and backoffs and every_once
    why = "" if ok else ("no out-of-memory happened" if not backoffs else
                         "an epoch did not train each graph once" if not every_once else "the run failed")
    return {"status": "timeout" if r["killed"] else "ok" if ok else "failed", "why": why, "rows": [row], "runs": [r]}


def step_steps(c: Check) -> dict[str, Any]:
    models = [m for m in ("cgcnn", "comformer", "chgnet") if m in {x.partition(":")[0] for x in c.models}]
    if not models:
        return {"status": "skipped", "why": "none of cgcnn, comformer, chgnet in --models", "rows": []}
    js = c.out / "bench_steps.json"
    n, steps, size = (c.args.tiny_samples, 3, 16) if c.args.tiny else (1500, 30, 64)
    r = c.run("steps", [sys.executable, "benchmarks/bench_steps.py", "--device", c.device, "--models", ",".join(models),
                        "--n", str(n), "--batch-size", str(size), "--steps", str(steps), "--feed",
                        "--workdir", str(c.work / "steps"), "--json-out", str(js)], c.box("steps"))
    rows = (read_json(js) or {}).get("rows", [])
    slow = [f"{x['model']} ({x['edges']})" for x in rows if x.get("loader_vs_step", 2) < 1]
    why = f"the loader is slower than the step for: {', '.join(slow)}" if slow else ""
    return {"status": "timeout" if r["killed"] else "ok" if r["rc"] == 0 else "failed", "why": why, "rows": rows,
            "runs": [r]}


def step_resume(c: Check) -> dict[str, Any]:
    end = time.monotonic() + c.box("resume")
    # a checkpoint every ~0.3 s of a 30-epoch run: the first exists long before training ends, even on a fast GPU
    sets = {"checkpoint_minutes": 0.005, "epochs": 30}
    whole, cut = c.work / "resume-whole", c.work / "resume-killed"
    runs = [c.colab_kit_run("resume-whole", "cgcnn", whole, (end - time.monotonic()) / 3, sets)]

    def has_checkpoint() -> bool:
        folder = run_folder(cut)
        return folder is not None and (folder / "checkpoints" / "latest.pt").exists()

    runs.append(c.colab_kit_run("resume-killed", "cgcnn", cut, (end - time.monotonic()) / 2, sets, until=has_checkpoint))
    runs.append(c.colab_kit_run("resume-again", "cgcnn", cut, end - time.monotonic(), sets))
    again = Path(c.out / runs[2]["log"]).read_text(errors="replace") if (c.out / runs[2]["log"]).exists() else ""
    row: dict[str, Any] = {"killed_at_checkpoint": runs[1]["killed"] == "until",
                           "resumed": "resuming training at epoch" in again, "rc_again": runs[2]["rc"]}
    row.update(_weights_diff(run_folder(whole), run_folder(cut)))
    row["test_mae_whole"], row["test_mae_resumed"] = run_figures(whole).get("test_mae"), run_figures(cut).get("test_mae")
    ok = runs[0]["rc"] == 0 and row["killed_at_checkpoint"] and row["resumed"] and runs[2]["rc"] == 0
    late = "training already finished" in again  # the kill came after the last checkpoint: nothing to resume
    why = "" if ok else ("the run finished before a checkpoint appeared to kill it at" if not row["killed_at_checkpoint"]
                         else "killed only after training had finished" if late
                         else "the second run did not resume" if not row["resumed"] else "a run failed")
    if ok and row.get("max_abs_diff") not in (0, 0.0, None):
        why = f"resumed; weights differ from the uninterrupted run's by at most {row['max_abs_diff']:.3g}"
    status = "timeout" if any(r["killed"] == "timeout" for r in runs) else "ok" if ok else "failed"
    return {"status": status, "why": why, "rows": [row], "runs": runs}


def step_precision(c: Check) -> dict[str, Any]:
    if not c.cuda:
        return {"status": "skipped", "why": "needs CUDA: fp16/bf16 autocast is a CUDA setting (the Plan refuses it on a CPU)",
                "rows": []}
    models = [m for m in ("chgnet", "cgcnn") if m in c.models]
    end = time.monotonic() + c.box("precision")
    rows, runs = [], []
    jobs = [(m, amp) for m in models for amp in ("bf16", "fp16")]
    for k, (model, amp) in enumerate(jobs):
        wd = c.work / f"precision-{model}-{amp}"
        runs.append(c.colab_kit_run(f"precision-{model}-{amp}", model, wd, (end - time.monotonic()) / (len(jobs) - k),
                                    {"amp": amp}))
        hist = run_figures(wd).get("history", [])
        rows.append({"model": model, "amp": amp, "train_loss": [h.get("train_loss") for h in hist],
                     "val_mae": [h.get("val_mae") for h in hist]})
    bad = [f"{r['model']} {r['amp']}" for r in rows
           if not r["val_mae"] or any(v is None or v != v for v in r["val_mae"] + r["train_loss"])]
    apart = []
    for model in models:
        v = {r["amp"]: r["val_mae"][-1] for r in rows if r["model"] == model and r["val_mae"]}
        if len(v) == 2 and None not in v.values() and max(v.values()) > 1.5 * min(v.values()):
            apart.append(f"{model}: last val MAE bf16 {v['bf16']:.4g} vs fp16 {v['fp16']:.4g}")
    status = "timeout" if any(r["killed"] for r in runs) else "failed" if bad or apart else "ok"
    return {"status": status, "why": "; ".join(([f"not finite or missing: {', '.join(bad)}"] if bad else []) + apart),
            "rows": rows, "runs": runs}


STEPS: dict[str, Callable[[Check], dict[str, Any]]] = {
    "gpu-tests": step_gpu_tests, "debug-runs": step_debug_runs, "forced-oom": step_forced_oom, "steps": step_steps,
    "resume": step_resume, "precision": step_precision,
}


def _failed(r: dict[str, Any]) -> str:
    return "timeout" if r["killed"] == "timeout" else "failed"


def _installed(model: str) -> bool:
    need = NEEDS.get(model.partition(":")[0])
    return need is None or find_spec(need) is not None


def _n_train(workdir: Path) -> int | None:
    """The training split's size, from the split the run saved beside its store (``splits-seed<seed>.npz``)."""
    import numpy as np

    folder = run_folder(workdir)
    found = sorted(glob.glob(str(folder / "**" / "splits-*.npz"), recursive=True)) if folder else []
    if not found:
        return None
    with np.load(found[0], allow_pickle=False) as d:
        return int(len(d["train"])) if "train" in d else None


def _weights_diff(a: Path | None, b: Path | None) -> dict[str, Any]:
    """Max |difference| of the final checkpoints' weights of two run folders."""
    if a is None or b is None:
        return {"max_abs_diff": None}
    import torch

    from colab_kit.training import load_checkpoint

    sa, sb = load_checkpoint(a / "checkpoints"), load_checkpoint(b / "checkpoints")
    if not sa or not sb:
        return {"max_abs_diff": None}
    diffs = [float((sa["model"][k].float() - sb["model"][k].float()).abs().max()) for k in sa["model"]
             if torch.is_tensor(sa["model"][k]) and sa["model"][k].numel()]
    return {"max_abs_diff": max(diffs) if diffs else 0.0, "steps_whole": sa.get("step"), "steps_resumed": sb.get("step")}


# ---------------------------------------------------------------------------------------------------- the report


def markdown(rec: dict[str, Any]) -> str:
    gpu = rec.get("gpu") or {}
    lines = [f"# GPU check ({rec['device']}{', tiny' if rec.get('tiny') else ''})", "",
             f"- device: {gpu['name'] + ' ' + str(gpu['total_gib']) + ' GiB' if gpu else 'no CUDA GPU'}; ceiling {rec['gpu_memory']}; "
             f"torch {rec['machine'].get('torch')}; started {rec['started']}; {rec.get('seconds', 0)} s of {rec['budget_s']} s",
             "", "| step | status | seconds | note |", "|---|---|---|---|"]
    lines += [f"| {s['step']} | {s['status']} | {s['seconds']} | {s.get('why', '')} |" for s in rec["steps"]]
    for s in rec["steps"]:
        rows = [{k: v for k, v in r.items() if not isinstance(v, (list, dict))} for r in s.get("rows", [])]
        if not rows:
            continue
        keys = list(dict.fromkeys(k for r in rows for k in r))
        lines += ["", f"## {s['step']}", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(_cell(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v).replace("|", "/")


def main(argv: list[str] | None = None) -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=os.environ.get("OUT") or "gpu-check", help="where the JSON and Markdown go ($OUT)")
    ap.add_argument("--workdir", default=None, help="run folders and stores (default: <out>/work)")
    ap.add_argument("--budget-s", type=float, default=480.0, help="seconds for all steps together")
    ap.add_argument("--gpu-memory", default="15GiB", help="the GPU memory ceiling (15GiB: a Colab T4)")
    ap.add_argument("--models", default=",".join(ALL_MODELS))
    ap.add_argument("--steps", default=",".join(STEPS), help=f"which steps, of {', '.join(STEPS)}")
    ap.add_argument("--tiny", action="store_true", help="tiny models and data: a dry run of the script")
    ap.add_argument("--tiny-samples", type=int, default=120)
    args = ap.parse_args(argv)
    unknown = [s for s in args.steps.split(",") if s not in STEPS]
    if unknown:
        ap.error(f"unknown step(s) {unknown}; steps: {', '.join(STEPS)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda but torch sees no CUDA GPU; use --device cpu --tiny for a dry run")
    c = Check(args)
    c.save()
    for name in args.steps.split(","):
        t = time.monotonic()
        print(f"[gpu_check] {name} ({c.box(name):.0f} s at most)", flush=True)
        if c.left() < 10:
            result = {"status": "skipped", "why": "no time left in --budget-s", "rows": []}
        else:
            try:
                result = STEPS[name](c)
            except Exception as exc:  # noqa: BLE001 - one broken step must not lose the others' figures
                result = {"status": "failed", "why": f"{type(exc).__name__}: {exc}", "rows": []}
        c.record["steps"].append({"step": name, **result, "seconds": round(time.monotonic() - t, 1)})
        c.record.pop("partial", None)
        c.save()
        print(f"[gpu_check] {name}: {result['status']} {result.get('why', '')}", flush=True)
    print((c.out / "gpu_check.md").read_text())
    return 0 if all(s["status"] in ("ok", "skipped") for s in c.record["steps"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
