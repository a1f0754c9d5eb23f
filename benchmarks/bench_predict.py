"""Prediction at scale: ``python -m colab_kit predict`` on 20,000 MP-like structures with a trained CGCNN.

Measures, each run a fresh process tree watched by ``harness.run_watched`` (wall time, peak summed RSS of the tree,
PSS and RssAnon beside it):

``uninterrupted``  ``predict`` of the first ``--n // 2`` structures and of all ``--n``, each into a fresh work dir:
                   wall time, the conversion and the prediction pass timed apart (from the command's own log: the
                   store's "in X s" line and the pass's final tqdm rate; and from the files, below), peak RSS, and
                   the ``--n`` / ``--n // 2`` ratios (the issue's target: peak RSS within 10 %).
``kill``           the ``--n`` command SIGKILLed (whole process group, as a runtime disconnect) once mid-conversion
                   (≥ 50 % of the items in committed shards, store not complete) and once mid-prediction (store
                   complete, ≥ 50 % of the output parts committed, pass not complete), each in a fresh work dir,
                   then the same command again: its CSV must be byte-identical to the uninterrupted run's (``cmp``),
                   and its rows = inputs - the rows of ``preds.skipped.csv``.

Design decisions (and why):

* **Phases are told apart by the files, polled every 0.1 s**: the store directory appears (conversion starts),
  its ``manifest.json`` says ``complete`` (conversion done), ``outputs-*/manifest.json`` says ``complete`` (pass
  done), then the CSV. The same poll picks the kill moments (manifest shard count vs output parts count).
* **Where the memory is**: besides the tree totals, every 0.25 s the poll reads ``/proc/<pid>/status`` of the main
  process and of each descendant (RssAnon: private heap; RssFile: file-backed pages, i.e. mmap'd shards and
  libraries, reclaimable page cache) and keeps the peak of each per phase; when the main process reaches a new
  peak it also sums its ``/proc/<pid>/smaps`` Rss by mapping (the store's shards, other files, anonymous), at most
  once a second.
* **Data**: ``benchmarks/mp_like.py --n N`` (or ``--data``), the ``--n // 2`` set is that file's first half, so
  both runs predict the same first structures. Everything generated lives in a temporary directory removed at
  the end (``--workdir`` keeps it).
* **Model**: ``python -m colab_kit run --mode debug --model cgcnn`` (≈ 15-50 s) unless ``--run`` names one.
* **Shard size**: the Plan's; below 20 Plan-sized shards (a quick check) ``max(50, n // 20)`` via ``--set
  shard_size=...`` so the kills have shards to fall between.
* **A concurrent checkout**: ``--colab-kit-src DIR`` runs colab_kit from another tree (``git archive HEAD``) with
  ``python -P`` + ``PYTHONPATH=DIR``, as bench_accuracy / bench_peers do.

Usage::

    nice -n 10 python benchmarks/bench_predict.py                      # --n 20000: 21 min on 2 cores at load ≈ 7
    nice -n 10 python benchmarks/bench_predict.py --n 2000             # quick check: ≈ 2 min at load ≈ 3
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
from bench_accuracy import _commit, ck_cmd  # noqa: E402  (sibling scripts, not a package)
from harness import GB, MB, REPO, BenchRun, loadavg, print_table, read_json, run_watched  # noqa: E402  # noqa: E402

CEILING = 12 * GB  # a Colab runtime; a predict run above it is a failure
RSS_TARGET = 1.10  # the issue: peak RSS at n within 10 % of that at n / 2
KILL_AT = 0.5
PHASES = ("startup", "convert", "predict", "csv")


# ---------------------------------------------------------------- reading the run's files and /proc

def store_root(work: Path) -> Path | None:
    return next(iter(sorted((work / "predict").glob("*"))), None) if (work / "predict").exists() else None


def progress_of(work: Path) -> dict[str, Any]:
    """Where a predict run is, from its files: phase, items in committed shards, shards, parts, totals."""
    root = store_root(work)
    if root is None:
        return {"phase": "startup", "items": 0, "shards": 0, "parts": 0, "store_complete": False, "pass_complete": False}
    m = read_json(root / "manifest.json") or {}
    shards = m.get("shards", [])
    out = next(iter(root.glob("outputs-*/manifest.json")), None)
    om = (read_json(out) or {}) if out else {}
    state = {"items": sum(e.get("n_items", 0) for e in shards), "shards": len(shards),
             "parts": len(om.get("parts", {})), "store_complete": bool(m.get("complete")),
             "pass_complete": bool(om.get("complete"))}
    state["phase"] = "csv" if state["pass_complete"] else "predict" if state["store_complete"] else "convert"
    return state


def proc_mem(pid: int) -> dict[str, int]:
    """RSS, RssAnon, RssFile, RssShmem of one process, bytes (empty when it is gone)."""
    keys = {"VmRSS": "rss", "RssAnon": "anon", "RssFile": "file", "RssShmem": "shmem"}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        k, _, v = line.partition(":")
        if k in keys:
            out[keys[k]] = int(v.split()[0]) * 1024
    return out


def smaps_by_mapping(pid: int, store: Path | None) -> dict[str, float]:
    """Rss (MB) of one process summed by what is mapped: the store's shard files, the outputs, other files
    (libraries, the source), anonymous memory (heap, arenas, stacks)."""
    out = {"store shards (mmap)": 0.0, "other files (libraries, ...)": 0.0, "anonymous (heap, arenas)": 0.0}
    try:
        text = Path(f"/proc/{pid}/smaps").read_text()
    except OSError:
        return out
    kind = None
    for line in text.splitlines():
        head = line.split(None, 5)
        if len(head) >= 5 and "-" in head[0] and not head[0].endswith(":"):
            path = head[5].strip() if len(head) == 6 else ""
            kind = ("store shards (mmap)" if store is not None and path.startswith(str(store)) and "safetensors" in path
                    else "other files (libraries, ...)" if path.startswith("/") else "anonymous (heap, arenas)")
        elif line.startswith("Rss:") and kind is not None:
            out[kind] += int(line.split()[1]) / 1024
    return {k: round(v, 1) for k, v in out.items()}


class Poll:
    """The ``on_tick`` of a predict run: phase transitions, per-process memory per phase, and (optionally) the
    moment to SIGKILL (``kill``: 'convert' or 'predict')."""

    def __init__(self, work: Path, out: Path, n_items: int, n_shards: int, kill: str | None = None) -> None:
        self.work, self.out, self.n_items, self.n_shards, self.kill = work, out, n_items, n_shards, kill
        self.times: dict[str, float] = {}
        self.peaks: dict[str, dict[str, float]] = {p: {} for p in PHASES}
        self.main_map: dict[str, Any] = {}
        self.at_kill: dict[str, Any] | None = None
        self.initial: dict[str, Any] | None = None  # what the run found committed when it started
        self.pid: int | None = None
        self._last_mem = self._last_smaps = -1.0
        self._phase = "startup"

    def attach(self, pid: int) -> None:
        self.pid = pid

    def __call__(self, t: float) -> bool:
        st = progress_of(self.work)
        if self.initial is None:
            self.initial = st
        ph = st["phase"]
        if ph != self._phase:
            self.times.setdefault(f"{ph}_start_s", t)
            self._phase = ph
        if t - self._last_mem >= 0.25:
            self._last_mem = t
            self._sample(ph, t)
        if self.kill == "convert":
            fire = not st["store_complete"] and st["items"] >= KILL_AT * self.n_items
        elif self.kill == "predict":
            fire = st["store_complete"] and not st["pass_complete"] and st["parts"] >= math.ceil(KILL_AT * self.n_shards)
        else:
            fire = False
        if fire and self.at_kill is None:
            self.at_kill = {"t_s": round(t, 2), **st, "csv_exists": self.out.exists()}
            return True
        return False

    def _sample(self, ph: str, t: float) -> None:
        import psutil

        if self.pid is None:
            return
        try:
            kids = [p.pid for p in psutil.Process(self.pid).children(recursive=True)]
        except psutil.Error:
            return
        main = proc_mem(self.pid)
        others = [proc_mem(k) for k in kids]
        sample = {f"main_{k}_mb": v / MB for k, v in main.items()}
        for k in ("rss", "anon", "file"):
            sample[f"others_{k}_mb"] = sum(o.get(k, 0) for o in others) / MB
        sample["others_max_rss_mb"] = max((o.get("rss", 0) for o in others), default=0) / MB
        sample["n_others"] = len(others)
        peak = self.peaks[ph]
        new_main_peak = sample.get("main_rss_mb", 0) > peak.get("main_rss_mb", 0) + 2
        for k, v in sample.items():
            peak[k] = max(peak.get(k, 0), v)
        best = self.main_map.get("main_rss_mb", 0)
        if new_main_peak and sample.get("main_rss_mb", 0) > best + 2 and t - self._last_smaps >= 1.0:
            self._last_smaps = t
            self.main_map = {"phase": ph, "t_s": round(t, 1), "main_rss_mb": round(sample["main_rss_mb"], 1),
                             **smaps_by_mapping(self.pid, store_root(self.work))}


# ---------------------------------------------------------------- one predict run

CONVERT_LINE = re.compile(r"INFO store \S+: (\d+) graphs, (\d+) skipped, (\d+) shards \((\d+) reused\) in ([\d.]+) s")
PASS_LINE = re.compile(r"predictions: 100%\|[^|]*\| (\d+)/(\d+) \[[\d:]+<[^,\]]*, ([\d.]+)graph/s\]")


def parse_log(text: str) -> dict[str, Any]:
    """The conversion's own "in X s" line and the pass's final (average) tqdm rate."""
    text = text.replace("\r", "\n")
    out: dict[str, Any] = {}
    if m := CONVERT_LINE.search(text):
        g, sk, sh, re_, s = m.groups()
        out.update(log_graphs=int(g), log_skipped=int(sk), log_shards=int(sh), log_shards_reused=int(re_),
                   log_convert_s=float(s))
    if passes := PASS_LINE.findall(text):
        n, total, rate = passes[-1]
        out.update(log_pass_graphs=int(total), log_pass_rate=float(rate))
    return out


def csv_rows(path: Path) -> int:
    """Data rows of a CSV written by predict (one line each: ids and numbers carry no newlines)."""
    with open(path, "rb") as f:
        return sum(1 for _ in f) - 1


def same_bytes(a: Path, b: Path) -> bool:
    if shutil.which("cmp"):
        return subprocess.run(["cmp", "-s", str(a), str(b)]).returncode == 0
    return a.read_bytes() == b.read_bytes()


def predict_cmd(ctx: dict[str, Any], data: Path, out: Path, work: Path) -> list[str]:
    return ck_cmd("predict", "--run", str(ctx["run_dir"]), "--data", str(data), "--out", str(out), "--work-dir",
                  str(work), *ctx["extra"])


def predict_run(ctx: dict[str, Any], name: str, data: Path, n: int, kill: str | None = None,
                work: Path | None = None) -> dict[str, Any]:
    """One watched ``predict`` (fresh work dir unless ``work``); its record."""
    base = ctx["root"] / "runs"
    base.mkdir(parents=True, exist_ok=True)
    work = work or base / name
    out = work.with_suffix(".csv")
    n_shards = -(-n // ctx["shard_size"])
    poll = Poll(work, out, n, n_shards, kill)
    cmd = predict_cmd(ctx, data, out, work)
    attach = {"done": False}

    def tick(t: float) -> bool:
        if not attach["done"]:  # the child's pid: the newest process of this session's tree
            import psutil

            for p in psutil.Process().children():
                try:
                    if p.cmdline()[-len(cmd):] == cmd:
                        poll.attach(p.pid)
                        attach["done"] = True
                except psutil.Error:
                    continue
        return poll(t)

    print(f"[{name}] {' '.join(cmd)}" + (f"  (SIGKILL mid-{kill})" if kill else ""), flush=True)
    rec = run_watched(cmd, ceiling=CEILING, name=name, logdir=base, env=ctx["env"], on_tick=tick, tick=0.1)
    rec.pop("timeline_s_rss_mb", None)
    log = Path(rec["stdout"]).read_text(errors="replace") + Path(rec["stderr"]).read_text(errors="replace")
    rec.update(name=name, n=n, work=str(work), out=str(out), phase_times=poll.times, phase_peaks=poll.peaks,
               main_mappings=poll.main_map, at_kill=poll.at_kill, initial=poll.initial, **parse_log(log))
    if rec["exceeded_ceiling"]:
        raise SystemExit(f"[{name}] passed the {CEILING / GB:.0f} GB ceiling: {rec['exceeded']}")
    if kill is None:
        if rec["returncode"] != 0:
            raise SystemExit(f"[{name}] failed (exit {rec['returncode']}):\n{log[-3000:]}")
        skipped = out.with_name(out.stem + ".skipped.csv")
        rec.update(rows=csv_rows(out), skips=csv_rows(skipped))
        rec["rows_ok"] = rec["rows"] == n - rec["skips"]
        times = poll.times
        t_conv0, t_conv1 = times.get("convert_start_s"), times.get("predict_start_s")
        t_pass1 = times.get("csv_start_s")
        rec["files_convert_s"] = t_conv1 - t_conv0 if t_conv0 is not None and t_conv1 is not None else None
        rec["files_predict_s"] = t_pass1 - t_conv1 if t_conv1 is not None and t_pass1 is not None else None
        rec["files_csv_s"] = rec["wall_s"] - t_pass1 if t_pass1 is not None else None
        rec["startup_s"] = t_conv0
    elif poll.at_kill is None:
        raise SystemExit(f"[{name}] ended (exit {rec['returncode']}) before the mid-{kill} kill point; use a larger "
                         "--n or a smaller --shard-size")
    print(f"[{name}] {rec['wall_s']:.1f} s, peak tree RSS {rec['peak_tree_rss_mb']:.0f} MB, load "
          f"{rec['loadavg_before']} -> {rec['loadavg_after']}" + (f", killed at {poll.at_kill}" if kill else ""),
          flush=True)
    return rec


def kill_case(ctx: dict[str, Any], when: str, data: Path, n: int, ref: dict[str, Any]) -> dict[str, Any]:
    """SIGKILL mid-``when``, then the same command again; compare the CSV with the uninterrupted one."""
    name = f"kill-{when}"
    first = predict_run(ctx, name, data, n, kill=when)
    at = first["at_kill"]
    state_ok = (not at["csv_exists"] and (not at["store_complete"] and at["parts"] == 0 if when == "convert"
                                          else at["store_complete"] and 0 < at["parts"] < at.get("shards", 0)))
    second = predict_run(ctx, name + "-rerun", data, n, work=Path(first["work"]))
    identical = same_bytes(Path(second["out"]), Path(ref["out"]))
    rec = {"when": when, "first": first, "second": second, "state_ok": state_ok, "identical": identical,
           "rows": second["rows"], "skips": second["skips"], "rows_ok": second["rows_ok"]}
    print(f"[{name}] CSV identical to the uninterrupted run's: {identical}; rows {second['rows']} = {n} - "
          f"{second['skips']} skips: {second['rows_ok']}", flush=True)
    return rec


# ---------------------------------------------------------------- setup

def make_data(root: Path, n: int, given: str | None) -> tuple[Path, Path]:
    """(a file of n MP-like structures, a file of its first n // 2), under ``root`` unless ``given`` holds n."""
    full = Path(given) if given else root / f"mp_like_{n}.json.gz"
    if not given:
        subprocess.run([sys.executable, str(HERE / "mp_like.py"), "--n", str(n), "--out", str(full), "--no-progress"],
                       check=True, stdout=subprocess.DEVNULL)
    with gzip.open(full, "rt") as f:
        doc = json.load(f)
    if len(doc["data"]) < n:
        raise SystemExit(f"{full} holds {len(doc['data'])} structures; --n {n} needs at least that many")
    wanted = {n // 2: root / f"mp_like_{n // 2}.json.gz"}
    if len(doc["data"]) > n:
        full = wanted[n] = root / f"mp_like_{n}.json.gz"
    for k, path in wanted.items():
        with gzip.open(path, "wt") as f:
            json.dump({**doc, "index": doc["index"][:k], "data": doc["data"][:k]}, f)
    return full, wanted[n // 2]


def train_model(ctx: dict[str, Any]) -> Path:
    work = ctx["root"] / "train"
    cmd = ck_cmd("run", "--mode", "debug", "--model", "cgcnn", "--work-dir", str(work))
    print(f"[train] {' '.join(cmd)}", flush=True)
    rec = run_watched(cmd, ceiling=CEILING, name="train", logdir=ctx["root"], env=ctx["env"])
    if rec["returncode"] != 0:
        raise SystemExit(f"training failed:\n{Path(rec['stderr']).read_text(errors='replace')[-3000:]}")
    runs = sorted(p for p in work.glob("*cgcnn*") if (p / "best.pt").exists())
    if not runs:
        raise SystemExit(f"no trained run with best.pt under {work}")
    print(f"[train] {runs[0].name} in {rec['wall_s']:.0f} s", flush=True)
    return runs[0]


def plan_shard_size(src: Path, run_dir: Path) -> tuple[int, str]:
    sys.path.insert(0, str(src))
    from colab_kit.use.predictor import plan_for
    from colab_kit.use.trained import load_trained

    plan = plan_for(load_trained(run_dir))
    return plan.shard_size, plan.reasons.get("shard_size", "")


# ---------------------------------------------------------------- report

def _f(x: Any, nd: int = 1) -> Any:
    return "—" if x is None else round(x, nd) if isinstance(x, float) else x


def report(half: dict[str, Any], full: dict[str, Any], kills: list[dict[str, Any]]) -> dict[str, Any]:
    def conv_rate(r: dict[str, Any]) -> float | None:
        return r["log_graphs"] / r["log_convert_s"] if r.get("log_convert_s") else None

    rows = []
    for r in (half, full):
        pass_s = r["log_pass_graphs"] / r["log_pass_rate"] if r.get("log_pass_rate") else None
        r["log_pass_s"] = pass_s
        rows.append([f"{r['n']:,}", _f(r["wall_s"]), _f(r["startup_s"]), _f(r.get("log_convert_s")),
                     _f(conv_rate(r), 0), _f(pass_s), _f(r.get("log_pass_rate"), 0), _f(r["files_csv_s"]),
                     _f(r["peak_tree_rss_mb"], 0), _f(r["peak_tree_pss_mb"], 0), _f(r["peak_tree_anon_mb"], 0),
                     f"{r['rows']:,}", r["skips"], f"{r['loadavg_before']}–{r['loadavg_after']}"])
    print_table("predict, uninterrupted", ["n", "wall s", "start-up s", "convert s", "convert graphs/s",
                                           "pass s", "pass graphs/s", "after pass s", "peak tree RSS MB", "PSS MB",
                                           "RssAnon MB", "rows", "skips", "load"], rows)

    def ratio(key: str) -> float | None:
        a, b = half.get(key), full.get(key)
        return b / a if a and b else None

    ratios = {k: ratio(k) for k in ("wall_s", "log_convert_s", "log_pass_s", "peak_tree_rss_mb", "peak_tree_pss_mb",
                                    "peak_tree_anon_mb")}
    print_table(f"{full['n']:,} / {half['n']:,}", ["figure", "ratio", "note"], [
        ["wall", _f(ratios["wall_s"], 3), "2.0 = linear"],
        ["conversion time", _f(ratios["log_convert_s"], 3), "2.0 = linear"],
        ["prediction pass time", _f(ratios["log_pass_s"], 3), "2.0 = linear"],
        ["peak tree RSS", _f(ratios["peak_tree_rss_mb"], 3), f"target ≤ {RSS_TARGET}"],
        ["peak tree PSS", _f(ratios["peak_tree_pss_mb"], 3), ""],
        ["peak tree RssAnon", _f(ratios["peak_tree_anon_mb"], 3), ""]])
    mem_rows = []
    for ph in PHASES:
        a, b = half["phase_peaks"].get(ph, {}), full["phase_peaks"].get(ph, {})
        for who in ("main", "others"):
            for k in ("rss", "anon", "file"):
                key = f"{who}_{k}_mb"
                if a.get(key) or b.get(key):
                    mem_rows.append([ph, "main process" if who == "main" else "workers (sum)", k,
                                     _f(a.get(key), 0), _f(b.get(key), 0),
                                     _f(b[key] - a[key], 0) if key in a and key in b else "—"])
    print_table("where the memory is: peak per phase and process (MB)",
                ["phase", "process", "RSS kind", f"n={half['n']:,}", f"n={full['n']:,}", "difference"], mem_rows)
    maps = [half["main_mappings"], full["main_mappings"]]
    keys = [k for k in maps[1] if k not in ("phase", "t_s", "main_rss_mb")]
    print_table("main process at its sampled peak, Rss by mapping (MB)",
                ["mapping", f"n={half['n']:,} ({maps[0].get('phase')})", f"n={full['n']:,} ({maps[1].get('phase')})"],
                [[k, _f(maps[0].get(k), 0), _f(maps[1].get(k), 0)] for k in keys])
    krows = []
    for k in kills:
        at = k["first"]["at_kill"]
        krows.append([f"mid-{k['when']}", _f(at["t_s"]), f"{at['shards']} shards / {at['parts']} parts"
                      + ("" if k["state_ok"] else " (NOT the intended phase)"), _f(k["second"]["wall_s"]),
                      f"{k['second']['initial']['shards']} shards / {k['second']['initial']['parts']} parts",
                      "yes" if k["identical"] else "NO",
                      f"{k['rows']:,}", k["skips"], "yes" if k["rows_ok"] else "NO"])
    print_table(f"SIGKILL of the process group, then the same command (n={full['n']:,})",
                ["kill", "at s", "committed at kill", "rerun wall s", "found by the rerun", "CSV = uninterrupted (cmp)",
                 "rows", "skips", "rows = n - skips"], krows)
    return {"ratios": ratios, "rss_within_target": (ratios["peak_tree_rss_mb"] or 99) <= RSS_TARGET,
            "identical": [k["identical"] for k in kills], "rows_ok": [half["rows_ok"], full["rows_ok"],
                                                                      *[k["rows_ok"] for k in kills]]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000, help="structures of the large run (the small run: n // 2)")
    ap.add_argument("--data", help="an MP-like json.gz with at least --n structures (default: mp_like.py makes one)")
    ap.add_argument("--run", help="trained run directory (default: `run --mode debug --model cgcnn` trains one)")
    ap.add_argument("--workers", type=int, help="predict --workers (default: the Plan's)")
    ap.add_argument("--shard-size", type=int, help="predict --set shard_size (default: the Plan's, n // 20 if fewer)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more predict --set settings")
    ap.add_argument("--no-kill", action="store_true", help="only the uninterrupted runs")
    ap.add_argument("--colab-kit-src", default=str(REPO), help="colab_kit source tree to run (default: this checkout)")
    ap.add_argument("--workdir", help="keep everything here (default: a temporary directory, removed at the end)")
    ap.add_argument("--json-out", help="write every figure here")
    args = ap.parse_args(argv)
    src = Path(args.colab_kit_src).resolve()
    with BenchRun(args.json_out, args.workdir, "ck-bench-predict-", benchmark="bench_predict", n=args.n,
                  colab_kit_src=str(src), colab_kit_commit=_commit(src), checkout_commit=_commit(REPO)) as run:
        ctx: dict[str, Any] = {"root": run.workdir, "env": {"PYTHONPATH": str(src), "PYTHONUNBUFFERED": "1"}}
        t0 = time.perf_counter()
        full_data, half_data = make_data(run.workdir, args.n, args.data)
        run.results["data_s"] = time.perf_counter() - t0
        ctx["run_dir"] = Path(args.run).resolve() if args.run else train_model(ctx)
        plan_ss, why = plan_shard_size(src, ctx["run_dir"])
        extra = [f"--set={s}" for s in args.set]
        if args.shard_size or args.n < 20 * plan_ss:
            ctx["shard_size"] = args.shard_size or max(50, args.n // 20)
            extra += ["--set", f"shard_size={ctx['shard_size']}"]
        else:
            ctx["shard_size"] = plan_ss
        if args.workers is not None:
            extra += ["--workers", str(args.workers)]
        ctx["extra"] = extra
        run.results.update(run_dir=str(ctx["run_dir"]), shard_size=ctx["shard_size"], plan_shard_size=plan_ss,
                           plan_shard_size_reason=why, predict_extra=extra, loadavg_start=loadavg())
        print(f"shard size {ctx['shard_size']} (Plan's: {plan_ss}, {why}); model {ctx['run_dir']}", flush=True)
        half = predict_run(ctx, f"n{args.n // 2}", half_data, args.n // 2)
        full = predict_run(ctx, f"n{args.n}", full_data, args.n)
        run.results["uninterrupted"] = [half, full]
        run.save()
        kills = []
        if not args.no_kill:
            for when in ("convert", "predict"):
                kills.append(kill_case(ctx, when, full_data, args.n, full))
                run.results["kill"] = kills
                run.save()
        run.results["summary"] = summary = report(half, full, kills)
        run.results["loadavg_end"] = loadavg()
        ok = all(summary["identical"]) and all(summary["rows_ok"])
        print(f"\nverdict: CSV identical after SIGKILL: {summary['identical']}; rows = n - skips: {summary['rows_ok']}; "
              f"peak tree RSS ratio {_f(summary['ratios']['peak_tree_rss_mb'], 3)} (target ≤ {RSS_TARGET}: "
              f"{'met' if summary['rss_within_target'] else 'NOT met'})", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
