"""Scale proof (issue #8): colab_kit on a 132,752-structure MP-like data set under a 12 GB memory ceiling.

One command runs every stage, each in a fresh interpreter watched by a memory ceiling, and records for each:
wall time, peak RSS of the whole process tree (PSS and RssAnon beside it), disk used, and the anchor (the code
people write today) side by side on the same data::

    python benchmarks/scale.py                      # 132,752 structures, ceiling 12 GB, ~45 min on 2 cores
    python benchmarks/scale.py --n 3000 --workdir /tmp/ckscale_smoke     # smoke run, ~2 min

Stages (``--stages``, default all, in this order):

``generate``     ``benchmarks/mp_like.py`` writes the data set (mean ≈ 30 sites, tail to 200+, a few structures
                 with an isolated atom) unless ``--data`` already holds ``--n`` structures (then it is reused).
``convert``      ``python -m colab_kit convert`` (the conversion ``python -m colab_kit run`` does) with the
                 workers and shard size of ``make_plan(detect(), "full")``, CHGNet graphs,
                 ``--on-bad skip``; then the radius store the cgcnn training needs (on all items, or
                 ``--radius-n``).
``resume``       the same conversion into a new directory, SIGKILLed (whole process group: a runtime
                 disconnect) as soon as the manifest lists ≥ 50 % of the items, then the same command again.
                 Records the time to the first newly committed shard, the rerun's wall time, the work lost,
                 and checks that the final store equals the uninterrupted one shard for shard (sha256).
``naive``        anchor: the "everything in a Python list" script: ``json.load`` of the whole file,
                 ``Structure.from_dict`` for each, graphs appended to a list. Runs until it passes the ceiling
                 (recorded: when, at which item, the RSS curve) or ends (then the RSS is projected to --n).
``chgnet_loop``  anchor: ``chgnet.graph.CrystalGraphConverter`` in a loop on a random sample (``--loop-sample``,
                 structures parsed beforehand), EXTRAPOLATED to --n and labelled so, against colab_kit's
                 measured end-to-end conversion.
``loader``       open the store + one full pass of ``colab_kit.loader.make_loader`` (workers and batch budget
                 from the Plan) vs one ``torch.load`` per file (CHGNet's ``CrystalGraph.save`` files written from
                 the store first, untimed), the same batches for both, each data set's pages evicted from the
                 page cache first (cold).
``train``        ``benchmarks/bench_train.py`` (a fixed number of steps with chgnet and cgcnn: colab_kit vs
                 CHGNet's Trainer) as a watched subprocess; skipped with a message while that script is absent.

Design decisions (and why):

* **Every stage is a child process in its own session** (``start_new_session``), so the measured tree is the
  stage alone (a fresh interpreter, its forked workers) and one ``killpg`` ends all of it. The orchestrator
  (this process) is the instrument and is not counted.
* **The ceiling is enforced by sampling**, always: a thread sums the RSS of the child and all its descendants
  (psutil) every 0.2 s and, above the ceiling, SIGKILLs the process group and records the time, the tree RSS and
  the child's last progress report. Summed RSS counts pages shared by forked workers once per process, so it
  overstates the real use: failing on it is conservative. PSS (``/proc/<pid>/smaps_rollup``, every 1 s) and
  RssAnon are recorded beside it. One sample interval of growth can pass before the kill (≈ 0.1 GB for the naive
  script); the recorded RSS at the kill shows it.
* **A hard kernel limit is added where one can be had without touching other processes' cgroups**
  (``--hard-limit auto``): a child cgroup v2 with ``memory.max`` = ceiling, ``memory.swap.max`` = 0 and
  ``memory.oom.group`` = 1 under this process's own cgroup when the memory controller is delegated there, else a
  ``systemd-run --scope -p MemoryMax=...`` unit when systemd answers, else none. A cgroup v1 hierarchy
  (e.g. a Firecracker VM whose memory cgroup belongs to the job runner) is deliberately not used: it is someone
  else's. ``prlimit``/``ulimit -v`` (RLIMIT_AS) is not used either: it limits virtual address space per process,
  not memory of the tree (torch alone maps several GB of address space it never touches, and each forked worker
  gets its own limit). Which enforcement was used is recorded per stage.
* **colab_kit stages must stay under the ceiling**: a kill there is a failure (non-zero exit, message). For the
  naive anchor passing the ceiling is the expected outcome and is recorded as such.
* **The naive anchor builds its graphs with colab_kit's converter** (``get_converter("chgnet")`` then
  ``to_graph``): the ``CrystalGraph`` objects are tensor-for-tensor identical to CrystalGraphConverter's (values
  and dtypes, checked by tests/graphs/test_graphs.py and bench_convert.py) but built ~15x faster, so the memory curve
  is CHGNet's while the run takes minutes, not 30 min. Its speed is therefore not CHGNet's; the chgnet_loop stage
  measures that.
* **Small --n**: a resume test needs shards to kill between, so when --n is below 20 Plan-sized shards the
  shard size becomes max(50, n // 20) (recorded with its reason; ``--shard-size`` overrides).
* **Re-runs resume**: results go to ``--json-out`` after every stage (default ``<workdir>/scale.json``); running
  again skips every stage already measured with the same settings (``--redo STAGES|all`` measures again) and a
  crash in one stage keeps the earlier results. Stores are kept in ``--workdir`` for reuse; the per-graph files
  of the loader anchor (≈ 10 GB at 132k) are deleted after the stage unless ``--keep-files``.
* **Disk**: at 132,752 the stages need ≈ 2.4 GB (chgnet store) + 0.3 GB (radius store) + 2.4 GB (resume store,
  deleted after the check) + ≈ 10 GB (per-graph files); with too little free disk the per-file anchor uses a
  random subset (sized to leave 5 GB free) and its pass time is EXTRAPOLATED linearly, labelled so.

Units: MB = 2^20 bytes, GB = 2^30 bytes (a 12 GB ceiling is 12 x 2^30 bytes).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
from harness import REPO, dir_bytes, machine_info, median, print_table, read_json, write_json_atomic  # noqa: E402
from harness.watch import (  # noqa: E402
    make_limit,
    probe_hard_limit,
    run_watched,
    tail,
)

FULL_N = 132_752
STAGES = ("generate", "convert", "resume", "naive", "chgnet_loop", "loader", "train")
from harness.machine import GB, MB  # noqa: E402

CONVERSION_TARGET_MB = 1536  # issue #8: peak RSS of the conversion <= 1.5 GB
RESUME_AT = 0.5
PER_FILE_BYTES = 80_000  # a CHGNet CrystalGraph.save file of an MP-like structure is ≈ 76-78 kB
DISK_RESERVE = 5 * GB


# ================================================================ children (run as `scale.py --child NAME CONFIG`)

class Progress:
    """A small JSON file a child keeps current (atomically) so the watcher knows how far it got."""

    def __init__(self, path: str | None) -> None:
        self.path, self.t0, self.state = path, time.perf_counter(), {"phase": "start", "items": 0, "curve": []}

    def update(self, **kw: Any) -> None:
        self.state.update(kw)
        self.state["t_s"] = round(time.perf_counter() - self.t0, 2)
        if self.path:
            write_json_atomic(self.path, self.state)


def _own_rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def child_naive(cfg: dict[str, Any]) -> dict[str, Any]:
    """The script people write: load everything, parse everything, keep every graph in a list."""
    import chgnet.graph.crystalgraph  # noqa: F401  (imported up front, as such a script does: not data memory)
    import torch  # noqa: F401
    from pymatgen.core import Structure

    from colab_kit.graphs import BadStructure, get_converter

    prog = Progress(cfg["progress"])
    conv = get_converter("chgnet")
    prog.update(phase="json.load", rss_start_mb=_own_rss() / MB)
    t0 = time.perf_counter()
    with gzip.open(cfg["data"], "rt") as f:
        data = json.load(f)
    t_json = time.perf_counter() - t0
    rss_json = _own_rss()
    prog.update(phase="convert", t_json_s=t_json, rss_after_json_mb=rss_json / MB)
    structures, graphs, targets = [], [], []
    skipped = 0
    curve = [(0, round(rss_json / MB, 1), round(time.perf_counter() - t0, 2))]
    for i, (row, gid) in enumerate(zip(data["data"], data["index"])):
        s = Structure.from_dict(row[0])
        structures.append(s)
        try:
            graphs.append(conv.to_graph(conv.convert(s), graph_id=gid))
            targets.append(row[1])
        except BadStructure:
            skipped += 1
        if (i + 1) % 250 == 0:
            curve.append((i + 1, round(_own_rss() / MB, 1), round(time.perf_counter() - t0, 2)))
            prog.update(items=i + 1, graphs=len(graphs), rss_mb=curve[-1][1], curve=curve)
    n = len(data["data"])
    curve.append((n, round(_own_rss() / MB, 1), round(time.perf_counter() - t0, 2)))
    prog.update(phase="done", items=n, graphs=len(graphs), curve=curve)
    return {"items": n, "graphs": len(graphs), "skipped": skipped, "seconds": time.perf_counter() - t0,
            "json_load_s": t_json, "rss_after_json_mb": rss_json / MB, "final_rss_mb": _own_rss() / MB,
            "curve_items_rss_mb_t": curve}


def child_chgnet_loop(cfg: dict[str, Any]) -> dict[str, Any]:
    """CHGNet's CrystalGraphConverter over a random sample, structures parsed beforehand."""
    import numpy as np
    from chgnet.graph import CrystalGraphConverter

    from colab_kit.sources import SourceError, open_source, parse_structure

    n, k = cfg["n"], min(cfg["sample"], cfg["n"])
    pick = set(np.random.default_rng(cfg["seed"]).choice(n, size=k, replace=False).tolist())
    t = time.perf_counter()
    raw = [item for i, item in enumerate(open_source(cfg["data"])) if i in pick]
    t_stream = time.perf_counter() - t
    parsed, t_parse = [], []
    for item in raw:
        t = time.perf_counter()
        try:
            s = parse_structure(item)
        except SourceError:
            continue
        t_parse.append(time.perf_counter() - t)
        parsed.append((item.id, s))
    conv = CrystalGraphConverter(atom_graph_cutoff=6, bond_graph_cutoff=3, on_isolated_atoms="ignore")
    for item in raw[:3]:  # warm-up on separately parsed copies (pymatgen caches per-Structure properties)
        try:
            conv(parse_structure(item))
        except Exception:  # noqa: BLE001, S112 - warm-up only
            continue
    times, failed = [], 0
    for gid, s in parsed:
        t = time.perf_counter()
        try:
            conv(s, graph_id=gid, mp_id=gid)
        except Exception:  # noqa: BLE001 - count and go on, as a loop over a data set has to
            failed += 1
        times.append(time.perf_counter() - t)
    sites = [len(s) for _, s in parsed]
    total = sum(times)
    return {"sample": k, "converted": len(times) - failed, "failed": failed, "algorithm": conv.algorithm,
            "stream_s": t_stream, "parse_s": sum(t_parse), "convert_s": total,
            "structures_per_s": len(times) / total, "median_ms": median(times) * 1e3,
            "mean_sites": float(np.mean(sites)), "max_sites": int(np.max(sites)),
            "extrapolated_convert_s": n * total / len(times),
            "extrapolated_parse_convert_s": n * (total + sum(t_parse)) / len(times)}


def child_write_files(cfg: dict[str, Any]) -> dict[str, Any]:
    """One CrystalGraph.save file per graph (what CHGNet's own graph cache writes), from the store."""
    import numpy as np
    from bench_loader import write_files

    from colab_kit.store.format import GraphStore

    prog = Progress(cfg["progress"])
    store = GraphStore(cfg["store"])
    idx = np.asarray(cfg["indices"], dtype=np.int64)
    out = Path(cfg["files"])
    t = time.perf_counter()
    for start in range(0, len(idx), 2000):
        write_files(store, "chgnet", idx[start:start + 2000], out)
        prog.update(items=int(min(len(idx), start + 2000)))
    ids = [store.graph_id(int(i)) for i in idx]
    targets = [store.target(int(i)) for i in idx]
    (out / "_index.json").write_text(json.dumps({"indices": idx.tolist(), "ids": ids, "targets": targets}))
    return {"files": len(idx), "seconds": time.perf_counter() - t}


def _batches_io(path: str, batches: list[list[int]] | None = None) -> list[list[int]]:
    import numpy as np

    if batches is not None:
        flat = np.concatenate([np.asarray(b, dtype=np.int64) for b in batches]) if batches else np.zeros(0, np.int64)
        ptr = np.concatenate(([0], np.cumsum([len(b) for b in batches]))).astype(np.int64)
        np.savez(path, flat=flat, ptr=ptr)
        return batches
    with np.load(path) as z:
        flat, ptr = z["flat"], z["ptr"]
    return [flat[ptr[i]:ptr[i + 1]].tolist() for i in range(len(ptr) - 1)]


def child_loader_colab_kit(cfg: dict[str, Any]) -> dict[str, Any]:
    import chgnet.graph.crystalgraph  # noqa: F401  (imports are not part of opening or the pass)
    import numpy as np
    import torch  # noqa: F401

    from colab_kit.loader.batching import BudgetBatchSampler, make_loader
    from colab_kit.store.format import GraphStore

    t0 = time.perf_counter()
    store = GraphStore(cfg["store"])
    atoms, edges = store.sizes()
    t_open = time.perf_counter() - t0
    sampler = BudgetBatchSampler(np.arange(len(store)), atoms, edges, cfg["batch_atoms"], cfg["batch_edges"],
                                 cfg["batch_size"], shuffle=True, seed=cfg["seed"])
    _batches_io(cfg["batches"], sampler.batches())  # the anchor gets the very same batches (untimed)
    loader = make_loader(store, sampler, workers=cfg["workers"], prefetch_factor=cfg["prefetch_factor"])
    seen, nb, t_pass = _timed_pass(loader)
    assert seen == len(store), (seen, len(store))
    return {"graphs": seen, "batches": nb, "open_s": t_open, "pass_s": t_pass, "graphs_per_s": seen / t_pass}


def _timed_pass(loader: Any) -> tuple[int, int, float]:
    """One pass over ``loader``: (graphs, batches, seconds)."""
    seen = nb = 0
    t1 = time.perf_counter()
    for graphs, _y in loader:
        seen += len(graphs)
        nb += 1
    return seen, nb, time.perf_counter() - t1


def child_loader_per_file(cfg: dict[str, Any]) -> dict[str, Any]:
    import chgnet.graph.crystalgraph  # noqa: F401
    import torch
    from bench_loader import FileDataset
    from torch.utils.data import DataLoader

    from colab_kit import registry

    t0 = time.perf_counter()
    files = Path(cfg["files"])
    present = set(os.listdir(files))
    index = json.loads((files / "_index.json").read_text())
    paths, targets = {}, {}
    for i, gid, tg in zip(index["indices"], index["ids"], index["targets"]):
        name = f"{gid}.pt"
        if name in present:
            paths[int(i)] = str(files / name)
            targets[int(i)] = tg
    t_open = time.perf_counter() - t0
    batches = [[i for i in b if i in paths] for b in _batches_io(cfg["batches"])]
    batches = [b for b in batches if b]
    kw: dict[str, Any] = {"num_workers": cfg["workers"]}
    if cfg["workers"] > 0:
        kw["prefetch_factor"] = cfg["prefetch_factor"] or 2
    loader = DataLoader(FileDataset(paths, targets, "chgnet"), batch_sampler=batches,  # type: ignore[arg-type]
                        collate_fn=registry.graph_kind("chgnet").collate, **kw)
    seen, nb, t_pass = _timed_pass(loader)
    assert seen == len(paths), (seen, len(paths))
    del torch
    return {"graphs": seen, "batches": nb, "open_s": t_open, "pass_s": t_pass, "graphs_per_s": seen / t_pass}


CHILDREN: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "naive": child_naive, "chgnet_loop": child_chgnet_loop, "write_files": child_write_files,
    "loader_colab_kit": child_loader_colab_kit, "loader_per_file": child_loader_per_file,
}


def run_child(name: str, cfg_path: str) -> int:
    cfg = json.loads(Path(cfg_path).read_text())
    res = CHILDREN[name](cfg)
    write_json_atomic(cfg["result"], res)
    return 0


# ================================================================ orchestration

class Ctx:
    """Settings, paths and results shared by the stages."""

    def __init__(self, args: argparse.Namespace) -> None:
        from colab_kit.plan.machine import detect
        from colab_kit.plan.planner import make_plan

        self.args = args
        machine = detect(extra_dirs=(str(args.workdir),))
        self.n: int = args.n
        self.data = Path(args.data)
        self.work = Path(args.workdir)
        self.work.mkdir(parents=True, exist_ok=True)
        self.logs = self.work / "logs"
        self.logs.mkdir(exist_ok=True)
        self.ceiling = int(args.ceiling_gb * GB)
        self.plan = make_plan(machine, "full", graph_kind="chgnet")
        if args.shard_size:
            self.shard_size, self.shard_reason = args.shard_size, "set by --shard-size"
        elif self.n < 20 * self.plan.shard_size:
            self.shard_size = max(50, self.n // 20)
            self.shard_reason = (f"--n {self.n} is below 20 Plan-sized shards ({self.plan.shard_size}): n // 20 so the "
                                 "resume stage has shards to kill between")
        else:
            self.shard_size, self.shard_reason = self.plan.shard_size, f"the Plan's: {self.plan.reasons['shard_size']}"
        self.workers = self.plan.convert_workers
        self.store = self.work / "store_chgnet"
        self.radius_store = self.work / "store_radius"
        self.resume_store = self.work / "store_resume"
        self.files = self.work / "per_graph_files"
        self.json_out = Path(args.json_out or self.work / "scale.json")
        self.probe = probe_hard_limit(args.hard_limit)
        self.failures: list[str] = []
        self.config = {"n": self.n, "data": str(self.data), "ceiling_gb": args.ceiling_gb, "shard_size": self.shard_size,
                       "workers": self.workers}
        prev = read_json(self.json_out)
        if prev and prev.get("config") == self.config:
            self.results = prev
        else:
            if prev:
                bak = self.json_out.with_name(self.json_out.name + ".bak")
                shutil.copy(self.json_out, bak)
                print(f"{self.json_out} holds results for other settings; kept as {bak}, starting afresh")
            self.results = {"config": self.config, "stages": {}}
        self.results.update({
            "machine": machine_info(), "argv": sys.argv, "colab_kit_commit": _git_commit(),
            "plan_full_chgnet": {k: v for k, v in self.plan.to_dict().items() if k != "reasons"},
            "plan_reasons": dict(self.plan.reasons), "shard_size_reason": self.shard_reason,
            "hard_limit_probe": list(self.probe), "last_started": time.strftime("%Y-%m-%d %H:%M:%S"),
        })
        self.save()

    def save(self) -> None:
        self.json_out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.json_out, self.results)

    def stage_params(self, name: str) -> dict[str, Any]:
        """The settings a stage's result depends on beyond ``config`` (a change re-measures that stage only)."""
        a = self.args
        return {"convert": {"radius_n": a.radius_n}, "chgnet_loop": {"loop_sample": a.loop_sample},
                "loader": {"files_n": a.files_n},
                "train": {"steps": a.train_steps, "warmup": a.train_warmup, "batch_size": a.train_batch_size,
                          "models": a.train_models}}.get(name, {})

    def stage_result(self, name: str) -> dict[str, Any] | None:
        return self.results["stages"].get(name)

    def watch(self, name: str, cmd: list[str], **kw: Any) -> dict[str, Any]:
        limit = make_limit(self.probe, name, self.ceiling)
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(cmd)}", flush=True)
        rec = run_watched(cmd, ceiling=self.ceiling, name=name, logdir=self.logs, limit=limit, **kw)
        rss = f"peak tree RSS {rec['peak_tree_rss_mb']:,.0f} MB"
        print(f"[{time.strftime('%H:%M:%S')}] {name}: rc {rec['returncode']} in {rec['wall_s']:.1f} s, {rss}"
              + (f", KILLED ({rec['killed_by']})" if rec["killed_by"] else ""), flush=True)
        return rec

    def child(self, name: str, cfg: dict[str, Any], **kw: Any) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Run ``scale.py --child name`` watched; returns (watch record, the child's result or None)."""
        cfg = {**cfg, "result": str(self.logs / f"{name}.result.json"), "progress": str(self.logs / f"{name}.progress.json")}
        for k in ("result", "progress"):
            Path(cfg[k]).unlink(missing_ok=True)
        cfg_path = self.logs / f"{name}.config.json"
        cfg_path.write_text(json.dumps(cfg))
        rec = self.watch(name, [sys.executable, str(Path(__file__).resolve()), "--child", name, str(cfg_path)],
                         progress_file=cfg["progress"], **kw)
        res = read_json(cfg["result"]) if rec["returncode"] == 0 else None
        rec["progress"] = read_json(cfg["progress"])
        return rec, res


def _git_commit() -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "colab_kit"], capture_output=True, text=True,
                               cwd=REPO).stdout.strip()
        return head + (" (colab_kit/ modified)" if dirty else "")
    except OSError:
        return None


def _check(rec: dict[str, Any], what: str, ctx: Ctx) -> str:
    """Status of a colab_kit child: 'ok', or 'failed' (recorded in ctx.failures with the reason)."""
    if rec["exceeded_ceiling"]:
        msg = (f"{what} went above the {ctx.args.ceiling_gb} GB ceiling (tree RSS "
               f"{(rec['exceeded'] or {}).get('tree_rss_mb', float('nan')):,.0f} MB at "
               f"{(rec['exceeded'] or {}).get('t_s', float('nan'))} s; killed by {rec['killed_by']})")
    elif rec["returncode"] != 0:
        msg = f"{what} failed (exit {rec['returncode']}); last lines of {rec['stderr']}:\n{tail(rec['stderr'])}"
    else:
        return "ok"
    ctx.failures.append(msg)
    print(f"FAILED: {msg}", file=sys.stderr, flush=True)
    return "failed"


def _manifest(store: Path) -> dict[str, Any]:
    m = read_json(store / "manifest.json")
    return m if isinstance(m, dict) else {}


def _committed(store: Path) -> tuple[int, int]:
    """(shards, items) the manifest lists as committed."""
    shards = _manifest(store).get("shards", [])
    return len(shards), sum(int(e.get("n_items", 0)) for e in shards)


def _digest(store: Path) -> list[tuple[int, str, int]]:
    return [(e["index"], e["sha256"], e["n_graphs"]) for e in _manifest(store).get("shards", [])]


def _complete(store: Path) -> bool:
    return bool(_manifest(store).get("complete"))


def _mb(path: Path) -> float:
    return dir_bytes(path)[0] / MB if path.exists() else 0.0


def _convert_cmd(ctx: Ctx, store: Path, converter: str, limit: int | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "colab_kit", "convert", str(ctx.data), "--graph-kind", converter, "--out", str(store),
           "--workers", str(ctx.workers), "--shard-size", str(ctx.shard_size), "--on-bad", "skip"]
    return cmd + (["--limit", str(limit)] if limit else [])


def _reused_from_stdout(rec: dict[str, Any]) -> int | None:
    m = re.search(r"\((\d+) reused\)", Path(rec["stdout"]).read_text(errors="replace"))
    return int(m.group(1)) if m else None


# ---------------------------------------------------------------- stages

def stage_generate(ctx: Ctx) -> dict[str, Any]:
    side = ctx.data.with_name(ctx.data.name + ".stats.json")
    if ctx.data.exists() and "generate" not in ctx.args.redo_set:
        stats = read_json(side)
        count = stats["count"] if stats else _count_items(ctx.data)
        if count != ctx.n:
            raise SystemExit(f"{ctx.data} holds {count} structures, not --n {ctx.n}: pass another --data, or delete "
                             "the file to generate a new one")
        print(f"generate: reusing {ctx.data} ({count} structures)")
        return {"status": "reused", "items": count, "disk_mb": ctx.data.stat().st_size / MB, "stats": stats,
                "note": "existing data file, not regenerated (delete it or --redo generate to time the generator)"}
    ctx.data.parent.mkdir(parents=True, exist_ok=True)
    rec = ctx.watch("generate", [sys.executable, str(HERE / "mp_like.py"), "--n", str(ctx.n), "--out", str(ctx.data),
                                 "--no-progress"])
    status = _check(rec, "mp_like.py", ctx)
    stats = None
    if status == "ok":
        text = Path(rec["stdout"]).read_text()
        stats = json.loads(text[text.index("{"):])
        write_json_atomic(side, stats)
    return {"status": status, "items": ctx.n, "disk_mb": ctx.data.stat().st_size / MB if ctx.data.exists() else 0,
            "stats": stats, "watch": rec}


def _count_items(path: Path) -> int:
    from colab_kit.sources import open_source

    return int(open_source(path).count() or 0)


def stage_convert(ctx: Ctx) -> dict[str, Any]:
    rows = []
    status = "ok"
    for kind, store, limit in (("chgnet", ctx.store, None), ("radius", ctx.radius_store, ctx.args.radius_n)):
        shutil.rmtree(store, ignore_errors=True)
        n_items = min(ctx.n, limit or ctx.n)
        rec = ctx.watch(f"convert_{kind}", _convert_cmd(ctx, store, kind, limit))
        st = _check(rec, f"colab_kit convert ({kind})", ctx)
        m = _manifest(store)
        if st == "ok" and not m.get("complete"):
            st = "failed"
            ctx.failures.append(f"convert ({kind}) exited 0 but {store} is not complete")
        status = "failed" if st != "ok" else status
        rows.append({
            "contender": f"colab_kit convert ({kind})", "converter": kind, "status": st, "items": n_items,
            "graphs": m.get("n_graphs"), "skipped": m.get("n_failed"), "shards": len(m.get("shards", [])),
            "workers": ctx.workers, "shard_size": ctx.shard_size, "wall_s": rec["wall_s"],
            "items_per_s": n_items / rec["wall_s"], "peak_tree_rss_mb": rec["peak_tree_rss_mb"],
            "peak_tree_pss_mb": rec["peak_tree_pss_mb"], "peak_tree_anon_mb": rec["peak_tree_anon_mb"],
            "disk_mb": _mb(store), "store": str(store), "watch": rec,
        })
    chg = rows[0]
    chg["rss_target_mb"] = CONVERSION_TARGET_MB
    chg["rss_target_met"] = chg["status"] == "ok" and chg["peak_tree_rss_mb"] <= CONVERSION_TARGET_MB
    return {"status": status, "rows": rows, "wall_s": sum(x["wall_s"] for x in rows),
            "peak_tree_rss_mb": max(x["peak_tree_rss_mb"] for x in rows), "disk_mb": sum(x["disk_mb"] for x in rows),
            "workers_reason": ctx.plan.reasons.get("convert_workers"),
            "shard_size_reason": ctx.shard_reason}


def stage_resume(ctx: Ctx) -> dict[str, Any]:
    store = ctx.resume_store
    shutil.rmtree(store, ignore_errors=True)
    cmd = _convert_cmd(ctx, store, "chgnet")
    n_shards_total = -(-ctx.n // ctx.shard_size)
    commits: list[tuple[float, int, int]] = []  # (t, shards, items) each time the manifest grew

    def kill_at_half(t: float) -> bool:
        shards, items = _committed(store)
        if not commits or shards != commits[-1][1]:
            commits.append((round(t, 3), shards, items))
        return items >= RESUME_AT * ctx.n

    first = ctx.watch("resume_first_run", cmd, on_tick=kill_at_half)
    killed = first["killed_by"] == "caller"
    shards_k, items_k = _committed(store)  # what the manifest holds after the kill landed
    if first["exceeded_ceiling"]:
        _check(first, "colab_kit convert (resume, first run)", ctx)
        return {"status": "failed", "first_run": None, "first_run_watch": first, "note": "exceeded the ceiling"}
    if not killed:
        ctx.failures.append("resume: the first run ended before it could be killed at 50 % "
                            f"(exit {first['returncode']}); use a larger --n or a smaller --shard-size")
        return {"status": "failed", "first_run": first, "note": "not killed"}
    last_commit_t = commits[-1][0] if commits else 0.0
    idx_done = sorted(e["index"] for e in _manifest(store).get("shards", []))
    gaps = [i for i in range(max(idx_done) + 1) if i not in set(idx_done)] if idx_done else []

    new_commit: list[float] = []

    def first_new(t: float) -> bool:
        if not new_commit and _committed(store)[0] > shards_k:
            new_commit.append(round(t, 3))
        return False

    rerun = ctx.watch("resume_rerun", cmd, on_tick=first_new)
    status = _check(rerun, "colab_kit convert (resume, rerun)", ctx)
    reused = _reused_from_stdout(rerun) if status == "ok" else None
    ref = _digest(ctx.store) if _complete(ctx.store) else None
    got = _digest(store) if _complete(store) else None
    identical = ref is not None and got == ref
    if status == "ok" and ref is None:
        print("resume: no complete uninterrupted store to compare with (run the convert stage)", file=sys.stderr)
    elif status == "ok" and not identical:
        status = "failed"
        ctx.failures.append(f"resume: the resumed store {store} differs from the uninterrupted {ctx.store}")
    conv = ctx.stage_result("convert")
    ref_wall = conv["rows"][0]["wall_s"] if conv and conv.get("rows") else None
    # Work lost to the kill: the shards the workers were converting. Every uncommitted shard below the highest
    # committed index had been started (the pool takes chunks in order); in all, at most `workers` shards are
    # being converted at any moment, each for at most (kill time - last commit) seconds.
    inflight = min(ctx.workers, n_shards_total - shards_k)
    # Estimate of the conversion thrown away: a worker starts its next shard the moment it commits one, so the
    # shards in flight at the kill were started at the last `workers` commits; their age at the kill, summed, is
    # the worker time lost; the steady-state worker time per item (from the commit timeline) turns it into items.
    events = [t for (t, s_, _), prev_s in zip(commits, [0] + [c[1] for c in commits]) for _ in range(s_ - prev_s)]
    lost_ws = sum(first["wall_s"] - t for t in events[-inflight:]) if events and inflight else 0.0
    items_first = next((i for _, s_, i in commits if s_ > 0), 0)
    ws_per_item = (ctx.workers * (events[-1] - events[0]) / (items_k - items_first)
                   if len(events) >= 3 and items_k > items_first else None)
    res = {
        "status": status, "kill_at_fraction": RESUME_AT, "killed_at_s": first["wall_s"],
        "committed_at_kill": {"shards": shards_k, "items": items_k, "fraction": items_k / ctx.n},
        "shards_total": n_shards_total, "gap_shards_at_kill": gaps,
        "inflight_shards_lost": inflight, "items_redone_max": min(inflight * ctx.shard_size, ctx.n - items_k),
        "work_lost_worker_s_est": lost_ws,
        "items_redone_est": round(lost_ws / ws_per_item) if ws_per_item else None,
        "kill_after_last_commit_s": first["wall_s"] - last_commit_t,
        "wall_s": first["wall_s"] + rerun["wall_s"], "rerun_wall_s": rerun["wall_s"], "rerun_first_new_shard_s": new_commit[0] if new_commit else None,
        "rerun_shards_reused": reused, "rerun_shards_built": n_shards_total - (reused or 0),
        "reused_all_committed": reused == shards_k, "identical_to_uninterrupted": identical,
        "uninterrupted_wall_s": ref_wall,
        "overhead_s": (first["wall_s"] + rerun["wall_s"] - ref_wall) if ref_wall else None,
        "first_run": first, "rerun": rerun, "commit_times": commits,
        "peak_tree_rss_mb": max(first["peak_tree_rss_mb"], rerun["peak_tree_rss_mb"]),
        "disk_mb": _mb(store),
    }
    if status == "ok" and not ctx.args.keep_resume_store:
        shutil.rmtree(store, ignore_errors=True)
    return res


def stage_naive(ctx: Ctx) -> dict[str, Any]:
    import numpy as np

    rec, res = ctx.child("naive", {"data": str(ctx.data)})
    prog = rec["progress"] or {}
    curve = (res or {}).get("curve_items_rss_mb_t") or prog.get("curve") or []
    out: dict[str, Any] = {"watch": rec, "result": res, "wall_s": rec["wall_s"],
                           "peak_tree_rss_mb": rec["peak_tree_rss_mb"], "disk_mb": 0.0,
                           "json_load_s": (res or prog).get("json_load_s", prog.get("t_json_s")),
                           "rss_after_json_mb": (res or prog).get("rss_after_json_mb")}
    if rec["exceeded_ceiling"]:
        ex = rec["exceeded"] or {}
        p = ex.get("progress") or prog
        out.update(status="exceeded_ceiling", outcome=(
            f"passed the {ctx.args.ceiling_gb} GB ceiling at {ex.get('t_s', rec['wall_s']):.0f} s, "
            f"{p.get('items', 0):,} of {ctx.n:,} structures done (phase: {p.get('phase')})"),
            exceeded_at_s=ex.get("t_s"), exceeded_at_items=p.get("items", 0), exceeded_phase=p.get("phase"))
    elif rec["returncode"] != 0:
        out.update(status="failed", outcome=f"exit {rec['returncode']}: {tail(rec['stderr'], 5)}")
    else:
        out.update(status="ok", outcome=f"finished all {ctx.n:,} structures without reaching the ceiling")
    pts = [(i, r) for i, r, _ in curve if i > 0]
    base, after_json = prog.get("rss_start_mb"), out["rss_after_json_mb"]
    if len(pts) >= 4 and base and after_json and rec["returncode"] == 0:
        # RSS = interpreter + json.load (∝ file size) + per-structure growth (linear fit over the second half of
        # the conversion curve); json.load scales with the file, so both terms are scaled to the full size
        xs, ys = np.array(pts[len(pts) // 2:], dtype=float).T
        slope = float(np.polyfit(xs, ys, 1)[0])
        json_per = (after_json - base) / ctx.n
        at_full = base + (json_per + slope) * FULL_N
        k = (ctx.ceiling / MB - base - json_per * FULL_N) / slope if slope > 0 else None
        out["projection"] = {
            "mb_per_structure": slope, "json_mb_per_structure": json_per, "interpreter_mb": base,
            f"projected_rss_mb_at_{FULL_N}": at_full,
            f"projected_items_at_ceiling_for_{FULL_N}": None if k is None or k > FULL_N else max(0, int(k)),
            "note": "PROJECTED from the measured curve: interpreter + json.load + linear growth per structure",
        }
    return out


def stage_chgnet_loop(ctx: Ctx) -> dict[str, Any]:
    rec, res = ctx.child("chgnet_loop", {"data": str(ctx.data), "n": ctx.n, "sample": ctx.args.loop_sample, "seed": 0})
    if res is None:
        return {"status": "failed", "watch": rec, "note": tail(rec["stderr"], 10)}
    return {"status": "ok", "watch": rec, "result": res, "peak_tree_rss_mb": rec["peak_tree_rss_mb"],
            "wall_s": rec["wall_s"], "disk_mb": 0.0,
            "note": f"EXTRAPOLATED from {res['sample']} random structures to {ctx.n:,}"}


def stage_loader(ctx: Ctx) -> dict[str, Any]:
    import numpy as np
    from bench_loader import evict

    if not _complete(ctx.store):
        raise RuntimeError(f"no complete store at {ctx.store}: run the convert stage first")
    n_graphs = int(_manifest(ctx.store)["n_graphs"])
    free = shutil.disk_usage(ctx.work).free
    existing = _mb(ctx.files) * MB if ctx.files.exists() else 0
    fit = int(max(0, free + existing - DISK_RESERVE) // PER_FILE_BYTES)
    m = min(n_graphs, fit, ctx.args.files_n or n_graphs)
    if m < min(n_graphs, 1000):
        raise RuntimeError(f"only {free / GB:.1f} GB free at {ctx.work}: not enough for the per-file anchor")
    subset = m < n_graphs
    idx = np.arange(n_graphs) if not subset else np.sort(np.random.default_rng(1).choice(n_graphs, m, replace=False))
    base = {"store": str(ctx.store), "files": str(ctx.files), "batches": str(ctx.logs / "loader_batches.npz"),
            "workers": ctx.plan.workers, "prefetch_factor": ctx.plan.prefetch_factor, "batch_atoms": ctx.plan.batch_atoms,
            "batch_edges": ctx.plan.batch_edges, "batch_size": ctx.plan.batch_size, "seed": 0}
    index = read_json(ctx.files / "_index.json")
    if index and index.get("indices") == idx.tolist():
        write_rec, write_res = None, {"files": m, "seconds": None, "reused": True}
        print(f"loader: reusing {m} per-graph files in {ctx.files}")
    else:
        shutil.rmtree(ctx.files, ignore_errors=True)
        write_rec, write_res = ctx.child("write_files", {**base, "indices": idx.tolist()})
        if write_res is None:
            _check(write_rec, "writing per-graph files", ctx)
            return {"status": "failed", "write": write_rec}
    files_mb = _mb(ctx.files)
    rows = []
    status = "ok"
    for name, method in (("loader_colab_kit", "colab_kit"), ("loader_per_file", "per_file")):
        evict(ctx.store if method == "colab_kit" else ctx.files)
        rec, res = ctx.child(name, base)
        st = _check(rec, f"loader ({method})", ctx) if method == "colab_kit" else (
            "ok" if res is not None else ("exceeded_ceiling" if rec["exceeded_ceiling"] else "failed"))
        if method == "colab_kit" and st != "ok":
            status = "failed"
        if res is None:
            rows.append({"contender": method, "status": st, "watch": rec})
            if method == "colab_kit":
                break
            continue
        row = {"contender": method, "status": st, **res, "wall_s": rec["wall_s"],
               "peak_tree_rss_mb": rec["peak_tree_rss_mb"], "peak_tree_pss_mb": rec["peak_tree_pss_mb"],
               "peak_tree_anon_mb": rec["peak_tree_anon_mb"],
               "disk_mb": _mb(ctx.store) if method == "colab_kit" else files_mb, "watch": rec}
        if method == "per_file" and subset:
            row["extrapolated_pass_s"] = res["pass_s"] * n_graphs / res["graphs"]
            row["note"] = f"EXTRAPOLATED: {res['graphs']:,} of {n_graphs:,} graphs as files (disk), pass time scaled"
        rows.append(row)
    measured = [x for x in rows if "wall_s" in x]
    out = {"status": status, "rows": rows, "n_graphs": n_graphs, "files": m, "files_subset": subset,
           "wall_s": sum(x["wall_s"] for x in measured) + ((write_rec or {}).get("wall_s") or 0.0),
           "peak_tree_rss_mb": max([x["peak_tree_rss_mb"] for x in measured]
                                   + [(write_rec or {}).get("peak_tree_rss_mb", 0.0)]),
           "disk_mb": files_mb + _mb(ctx.store),
           "write": write_res, "write_watch": write_rec, "cache": "cold (each data set's pages evicted first)",
           "workers": ctx.plan.workers, "workers_reason": ctx.plan.reasons.get("workers")}
    if not ctx.args.keep_files:
        shutil.rmtree(ctx.files, ignore_errors=True)
    return out


def stage_train(ctx: Ctx) -> dict[str, Any]:
    script = HERE / "bench_train.py"
    if not script.exists():
        msg = f"{script} does not exist (yet): training stage skipped"
        print(f"train: {msg}")
        return {"status": "skipped", "note": msg}
    for s in (ctx.store, ctx.radius_store):
        if not _complete(s):
            raise RuntimeError(f"no complete store at {s}: run the convert stage first")
    out_json = ctx.work / "bench_train.json"
    out_json.unlink(missing_ok=True)
    cmd = [sys.executable, str(script), "--source", str(ctx.data), "--chgnet-store", str(ctx.store),
           "--radius-store", str(ctx.radius_store), "--steps", str(ctx.args.train_steps), "--warmup",
           str(ctx.args.train_warmup), "--batch-size", str(ctx.args.train_batch_size),
           "--models", ctx.args.train_models, "--json-out", str(out_json)]
    rec = ctx.watch("train", cmd)
    status = _check(rec, "bench_train.py", ctx)
    print(Path(rec["stdout"]).read_text(errors="replace"))  # its own tables
    return {"status": status, "watch": rec, "wall_s": rec["wall_s"], "peak_tree_rss_mb": rec["peak_tree_rss_mb"],
            "disk_mb": 0.0, "bench_train": read_json(out_json)}


STAGE_FN: dict[str, Callable[[Ctx], dict[str, Any]]] = {
    "generate": stage_generate, "convert": stage_convert, "resume": stage_resume, "naive": stage_naive,
    "chgnet_loop": stage_chgnet_loop, "loader": stage_loader, "train": stage_train,
}


# ---------------------------------------------------------------- tables

def _f(x: Any, nd: int = 1) -> Any:
    return "-" if x is None else (round(x, nd) if isinstance(x, float) else x)


def print_stage(ctx: Ctx, name: str) -> None:
    r = ctx.stage_result(name) or {}
    st = r.get("status")
    conv = (ctx.stage_result("convert") or {}).get("rows") or [{}]
    ck = conv[0] if conv[0].get("status") == "ok" else {}
    if name == "generate":
        s = r.get("stats") or {}
        w = r.get("watch") or {}
        print_table(f"generate ({st})", ["data", "items", "wall s", "peak tree RSS MB", "disk MB", "items/s",
                                          "mean sites", "max sites", "isolated"],
                    [[str(ctx.data), r.get("items"), _f(w.get("wall_s")), _f(w.get("peak_tree_rss_mb"), 0),
                      _f(r.get("disk_mb")), _f(r["items"] / w["wall_s"], 0) if w.get("wall_s") else "-",
                      s.get("mean_sites", "-"), s.get("max_sites", "-"), s.get("n_isolated", "-")]])
    elif name == "convert":
        loop = (ctx.stage_result("chgnet_loop") or {}).get("result")
        rows = []
        for x in r.get("rows", []):
            rows.append([x["contender"], x["status"], x["items"], x.get("graphs"), x.get("skipped"), x["workers"],
                         x["shard_size"], _f(x["wall_s"]), _f(x["items_per_s"], 0), _f(x["peak_tree_rss_mb"], 0),
                         _f(x["peak_tree_pss_mb"], 0), _f(x["disk_mb"], 0)])
        print_table(f"convert: colab_kit, workers and shard size from the Plan ({st}); ceiling {ctx.args.ceiling_gb} GB",
                    ["contender", "status", "items", "graphs", "skipped", "workers", "shard size", "wall s", "items/s",
                     "peak tree RSS MB", "peak tree PSS MB", "disk MB"], rows)
        if r.get("rows"):
            c = r["rows"][0]
            print(f"conversion peak tree RSS {c['peak_tree_rss_mb']:,.0f} MB vs target {CONVERSION_TARGET_MB} MB: "
                  f"{'met' if c.get('rss_target_met') else 'NOT met'}"
                  + (f"; CrystalGraphConverter loop extrapolated: {loop['extrapolated_convert_s']:,.0f} s" if loop else ""))
    elif name == "resume":
        f, rr = r.get("first_run") or {}, r.get("rerun") or {}
        ck_ = r.get("committed_at_kill") or {}
        print_table(f"resume: SIGKILL at >= {RESUME_AT:.0%} committed, then the same command ({st})",
                    ["run", "wall s", "peak tree RSS MB", "committed shards", "committed items", "note"],
                    [["first run (killed)", _f(f.get("wall_s")), _f(f.get("peak_tree_rss_mb"), 0), ck_.get("shards"),
                      ck_.get("items"), f"killed at {ck_.get('fraction', 0):.0%} of items"],
                     ["rerun (same command)", _f(rr.get("wall_s")), _f(rr.get("peak_tree_rss_mb"), 0),
                      r.get("shards_total"), ctx.n,
                      f"first new shard after {_f(r.get('rerun_first_new_shard_s'), 2)} s; "
                      f"{r.get('rerun_shards_reused')} shards reused"],
                     ["uninterrupted (convert stage)", _f(r.get("uninterrupted_wall_s")), _f(ck.get("peak_tree_rss_mb"), 0),
                      r.get("shards_total"), ctx.n, "reference"]])
        if r.get("first_run"):
            print(f"work lost to the kill: {r.get('inflight_shards_lost')} shards in flight (≤ {r.get('items_redone_max')} "
                  f"items); estimated {_f(r.get('work_lost_worker_s_est'), 1)} worker-s ≈ {r.get('items_redone_est')} items "
                  f"of conversion redone (from the commit timeline); uncommitted shards below the last committed one: "
                  f"{r.get('gap_shards_at_kill')}; "
                  f"overhead vs uninterrupted: {_f(r.get('overhead_s'))} s; store identical to the uninterrupted one "
                  f"(shard sha256): {r.get('identical_to_uninterrupted')}")
    elif name == "naive":
        rows = [["naive list (json.load + from_dict + graphs in a list)", r.get("status"), _f(r.get("wall_s")),
                 _f(r.get("peak_tree_rss_mb"), 0), _f(r.get("rss_after_json_mb"), 0), 0, r.get("outcome")]]
        if ck:
            rows.append(["colab_kit convert (chgnet)", ck["status"], _f(ck["wall_s"]), _f(ck["peak_tree_rss_mb"], 0),
                         "-", _f(ck["disk_mb"], 0), f"all {ck['items']:,} items, graphs on disk"])
        print_table(f"naive in-memory list vs colab_kit (ceiling {ctx.args.ceiling_gb} GB)",
                    ["contender", "status", "wall s", "peak tree RSS MB", "RSS after json.load MB", "disk MB", "outcome"],
                    rows)
        p = r.get("projection")
        if p:
            k = p[f"projected_items_at_ceiling_for_{FULL_N}"]
            print(f"naive RSS: json.load {p['json_mb_per_structure'] * 1e3:,.1f} MB and graphs + structures "
                  f"{p['mb_per_structure'] * 1e3:,.1f} MB per 1,000 structures; PROJECTED {p[f'projected_rss_mb_at_{FULL_N}']:,.0f} MB "
                  f"for {FULL_N:,}" + (f", passing the ceiling at ≈ {k:,} structures" if k is not None else
                                       ", under the ceiling"))
    elif name == "chgnet_loop":
        x = r.get("result") or {}
        rows = []
        if x:
            rows.append([f"CrystalGraphConverter loop ({x['algorithm']}), convert only", "EXTRAPOLATED", x["sample"],
                         _f(x["structures_per_s"]), _f(x["extrapolated_convert_s"], 0), _f(r.get("peak_tree_rss_mb"), 0),
                         _f(x["extrapolated_convert_s"] / ck["wall_s"], 2) if ck else "-"])
            rows.append(["CrystalGraphConverter loop + Structure.from_dict", "EXTRAPOLATED", x["sample"],
                         _f(x["sample"] / (x["convert_s"] + x["parse_s"])), _f(x["extrapolated_parse_convert_s"], 0), "-",
                         _f(x["extrapolated_parse_convert_s"] / ck["wall_s"], 2) if ck else "-"])
        if ck:
            rows.append([f"colab_kit convert end to end ({ck['workers']} workers)", "measured", ck["items"],
                         _f(ck["items_per_s"], 0), _f(ck["wall_s"], 0), _f(ck["peak_tree_rss_mb"], 0), 1])
        print_table(f"conversion time for {ctx.n:,} structures: CHGNet's converter in a loop vs colab_kit",
                    ["contender", "how", "n", "structures/s", f"s for {ctx.n:,}", "peak tree RSS MB", "× colab_kit time"],
                    rows)
        if x:
            print(f"chgnet_loop sample: {x['sample']} random structures, mean {x['mean_sites']:.1f} / max "
                  f"{x['max_sites']} sites, {x['failed']} failed; single process, parsing timed separately")
    elif name == "loader":
        rows = r.get("rows", [])
        pf = next((x for x in rows if x["contender"] == "per_file" and "graphs" in x), None)
        out = []
        for x in rows:
            if "graphs" not in x:
                out.append([x["contender"], x["status"]] + ["-"] * 8)
                continue
            total = x["open_s"] + x.get("extrapolated_pass_s", x["pass_s"])
            ref = (pf["open_s"] + pf.get("extrapolated_pass_s", pf["pass_s"])) if pf else None
            out.append([x["contender"], x["status"], x["graphs"], _f(x["open_s"], 3),
                        _f(x.get("extrapolated_pass_s", x["pass_s"])), _f(x["graphs_per_s"], 0),
                        _f(ref / total, 2) if ref else "-", _f(x["peak_tree_rss_mb"], 0), _f(x["disk_mb"], 0),
                        x.get("note", "measured")])
        print_table(f"open + one pass over all graphs ({r.get('cache')}, workers={r.get('workers')}, same batches)",
                    ["loader", "status", "graphs", "open s", "pass s", "graphs/s", "× per-file (open+pass)",
                     "peak tree RSS MB", "disk MB", "note"], out)
    elif name == "train":
        if st == "skipped":
            print(f"\n## train\n{r.get('note')}")
            return
        rows = _train_rows(r.get("bench_train"))
        print_table(f"train: bench_train.py ({st}); whole stage {_f(r.get('wall_s'))} s, peak tree RSS "
                    f"{_f(r.get('peak_tree_rss_mb'), 0)} MB (the largest contender's tree; one at a time)",
                    ["contender", "steps timed", "graphs/s", "median step s", "setup s", "own peak RSS MB",
                     "graphs/s ratio"], rows or [["-"] * 7])


def _train_rows(obj: Any) -> list[list[Any]]:
    """One row per contender of bench_train's JSON (its ``results`` list): contender, steps timed, graphs/s,
    median step s, setup s, its own peak RSS, and graphs/s relative to each CHGNet Trainer anchor."""
    rows: list[list[Any]] = []
    for r in (obj or {}).get("results", []) if isinstance(obj, dict) else []:
        if not isinstance(r, dict):
            continue
        ratios = r.get("ratio_vs") or {}
        rows.append([r.get("contender", "?"), r.get("steps_timed", "-"), _f(r.get("graphs_per_s"), 2),
                     _f(r.get("median_step_s"), 3), _f(r.get("setup_s"), 1), _f(r.get("peak_rss_mb"), 0),
                     "; ".join(f"{v:.2f}x vs {k}" for k, v in ratios.items() if isinstance(v, (int, float))) or "-"])
    return rows


def headline(ctx: Ctx) -> str:
    s = ctx.results["stages"]
    parts = [f"{ctx.n:,} structures, ceiling {ctx.args.ceiling_gb} GB ({ctx.probe[0]} hard limit + tree-RSS sampler)"]
    c = (s.get("convert") or {}).get("rows") or []
    if c:
        c0 = c[0]
        parts.append(f"colab_kit convert {c0['wall_s']:,.0f} s, peak tree RSS {c0['peak_tree_rss_mb']:,.0f} MB "
                     f"({'≤' if c0.get('rss_target_met') else '>'} 1.5 GB)")
    lp = (s.get("chgnet_loop") or {}).get("result")
    if lp and c:
        parts.append(f"CrystalGraphConverter loop ≈ {lp['extrapolated_convert_s']:,.0f} s (extrapolated, "
                     f"{lp['extrapolated_convert_s'] / c[0]['wall_s']:.1f}x)")
    nv = s.get("naive")
    if nv:
        parts.append("naive list " + (f"passed the ceiling at {nv.get('exceeded_at_items', 0):,} structures"
                                      if nv.get("status") == "exceeded_ceiling" else
                                      f"peaked at {nv.get('peak_tree_rss_mb', 0):,.0f} MB"))
    rs = s.get("resume")
    if rs and rs.get("first_run"):
        parts.append(f"resume after a kill at {rs['committed_at_kill']['fraction']:.0%}: first new shard after "
                     f"{_f(rs.get('rerun_first_new_shard_s'), 1)} s, ≈ {rs.get('items_redone_est')} (≤ "
                     f"{rs.get('items_redone_max')}) items redone, "
                     f"identical store: {rs.get('identical_to_uninterrupted')}")
    ld = (s.get("loader") or {}).get("rows") or []
    if len(ld) == 2 and all("graphs" in x for x in ld):
        a, b = ld
        ta, tb = a["open_s"] + a["pass_s"], b["open_s"] + b.get("extrapolated_pass_s", b["pass_s"])
        parts.append(f"open + pass {ta:,.0f} s vs per-file {tb:,.0f} s ({tb / ta:.1f}x)")
    tr = s.get("train")
    if tr:
        res = {r.get("contender"): r for r in ((tr.get("bench_train") or {}).get("results") or []) if isinstance(r, dict)}
        ck_fit = res.get("colab_kit fit (chgnet)") or {}
        ratios = ", ".join(f"{v:.2f}x {k}" for k, v in (ck_fit.get("ratio_vs") or {}).items()
                           if isinstance(v, (int, float)))
        parts.append(f"train {tr.get('status')}" + (f": colab_kit chgnet {ck_fit['graphs_per_s']:.1f} graphs/s = {ratios}"
                                                    if ck_fit.get("graphs_per_s") and ratios else ""))
    bad = [k for k, v in s.items() if v.get("status") == "failed"]
    parts.append("ALL colab_kit stages under the ceiling" if not bad else f"FAILED stages: {', '.join(bad)}")
    return "HEADLINE: " + "; ".join(parts)


# ---------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return run_child(argv[1], argv[2])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=FULL_N, help="structures (default %(default)s, matbench_mp_e_form's size)")
    ap.add_argument("--data", default=None, help="MP-like matbench json.gz (default /tmp/mp_like_132k.json.gz for "
                    "the full size, else /tmp/mp_like_<n>.json.gz); generated when missing")
    ap.add_argument("--workdir", default="/tmp/ckscale", help="stores, logs, results (default %(default)s)")
    ap.add_argument("--ceiling-gb", type=float, default=12.0, help="memory ceiling of each stage's process tree")
    ap.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset of %(default)s")
    ap.add_argument("--redo", default="", help="stages to measure again although --json-out has them ('all')")
    ap.add_argument("--json-out", default=None, help="results (default <workdir>/scale.json), written after each stage")
    ap.add_argument("--hard-limit", choices=("auto", "cgroup2", "systemd", "none"), default="auto",
                    help="kernel memory limit beside the RSS sampler (default: whatever is available)")
    ap.add_argument("--shard-size", type=int, default=None, help="default: the Plan's (smaller for small --n)")
    ap.add_argument("--radius-n", type=int, default=None, help="items for the radius store (default all)")
    ap.add_argument("--loop-sample", type=int, default=1000, help="structures for the CrystalGraphConverter loop")
    ap.add_argument("--files-n", type=int, default=None, help="cap on per-graph files for the loader anchor "
                    "(default: all that fit on disk; fewer are extrapolated)")
    ap.add_argument("--keep-files", action="store_true", help="keep the per-graph files after the loader stage")
    ap.add_argument("--keep-resume-store", action="store_true", help="keep the resumed store after the check")
    ap.add_argument("--train-steps", type=int, default=40, help="timed training steps per contender (bench_train's default)")
    ap.add_argument("--train-warmup", type=int, default=5)
    ap.add_argument("--train-batch-size", type=int, default=16, help="graphs per batch for every contender "
                    "(bench_train's default)")
    ap.add_argument("--train-models", default="chgnet,cgcnn")
    args = ap.parse_args(argv)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = set(stages) - set(STAGES)
    if unknown:
        ap.error(f"unknown stages {sorted(unknown)}; choose from {STAGES}")
    args.redo_set = set(STAGES) if args.redo.strip() == "all" else {s.strip() for s in args.redo.split(",") if s.strip()}
    if args.data is None:
        args.data = "/tmp/mp_like_132k.json.gz" if args.n == FULL_N else f"/tmp/mp_like_{args.n}.json.gz"

    ctx = Ctx(args)
    print(json.dumps(ctx.results["machine"]))
    print(f"ceiling {args.ceiling_gb} GB per stage: tree-RSS sampler (0.2 s) + hard limit: "
          f"{ctx.probe[0]} ({ctx.probe[1]})")
    print(f"conversion: {ctx.workers} workers ({ctx.plan.reasons['convert_workers']}); shard size {ctx.shard_size} "
          f"({ctx.shard_reason}); results -> {ctx.json_out}", flush=True)
    for name in STAGES:
        if name not in stages:
            continue
        prev = ctx.stage_result(name)
        reusable = (prev and prev.get("status") in ("ok", "exceeded_ceiling", "reused") and name not in args.redo_set
                    and prev.get("params", {}) == ctx.stage_params(name))
        if reusable and name == "convert" and not (_complete(ctx.store) and _complete(ctx.radius_store)):
            reusable = False
        if reusable:
            print(f"\n{name}: already measured ({prev.get('finished')}); reusing it (--redo {name} measures again)")
        else:
            t0 = time.strftime("%Y-%m-%d %H:%M:%S")
            try:
                res = STAGE_FN[name](ctx)
            except Exception as exc:  # noqa: BLE001 - record, keep earlier results, go on with the next stage
                res = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
                ctx.failures.append(f"{name}: {type(exc).__name__}: {exc}")
                print(f"FAILED: stage {name}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            res.update(started=t0, finished=time.strftime("%Y-%m-%d %H:%M:%S"), params=ctx.stage_params(name))
            ctx.results["stages"][name] = res
            ctx.save()
        try:
            print_stage(ctx, name)
        except Exception as exc:  # noqa: BLE001 - a table must not lose the results
            print(f"(could not print the {name} table: {exc!r})")
    summary = []
    for name in STAGES:
        r = ctx.stage_result(name)
        if r is None:
            continue
        w = r.get("watch") or {}
        summary.append([name, r.get("status"), _f(r.get("wall_s", w.get("wall_s"))),
                        _f(r.get("peak_tree_rss_mb", w.get("peak_tree_rss_mb")), 0), _f(r.get("disk_mb"), 0)])
    for name, r in (("convert", ctx.stage_result("convert")), ("loader", ctx.stage_result("loader"))):
        for x in (r or {}).get("rows", []):
            summary.append([f"  {name}: {x['contender']}", x.get("status"), _f(x.get("wall_s")),
                            _f(x.get("peak_tree_rss_mb"), 0), _f(x.get("disk_mb"), 0)])
    print_table("summary (every stage in a fresh process tree under the ceiling)",
                ["stage", "status", "wall s", "peak tree RSS MB", "disk MB"], summary)
    failed = [k for k, v in ctx.results["stages"].items() if v.get("status") == "failed"]
    ctx.results["headline"] = headline(ctx)
    ctx.results["failed_stages"] = failed
    ctx.results["last_finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    ctx.save()
    print("\n" + ctx.results["headline"], flush=True)
    if failed:
        print(f"FAILED: {', '.join(failed)}; see {ctx.json_out} and {ctx.logs}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
