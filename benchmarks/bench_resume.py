"""Resume speed: how long a killed conversion takes, once run again, to commit its first new shard.

A conversion is killed (SIGKILL of its process group: a runtime disconnect) once the manifest lists ``--kill-at``
of the items; the store is copied (hard links: shards and manifests are replaced, never edited), and the same
``python -m colab_kit convert`` command is run again on each copy, ``--restart-repeats`` times per mode,
interleaved:

``before``  with every ``Source.iter_from`` replaced by the base class's ``islice(iter(self), start, None)`` (what a
            resume did before: parse every done item again);
``whole``   the readers' own ``iter_from`` (matbench json.gz seeks: :mod:`colab_kit.sources.seek`), run from
            ``--whole-rev`` (default: the tree before ``colab_kit/store/shard_build.py``), whose first shard is
            converted whole by one worker;
``after``   this checkout: the seek, and the first shard converted by every worker at once (``shard_build``).

All run the CLI through the same ``python -c`` wrapper, which also notes when ``iter_from`` gives its first
item. Each rerun is timed from its start to that first item (what the seek changes) and to the moment the
manifest gains a shard (that, plus converting one shard), and killed then, except the last ``after``, which
runs to the end: its store is compared shard for shard (sha256) with an uninterrupted ``--workers 1`` build of
the same command (every shard converted whole in one process; ``--reference`` to reuse one). Sections
(``--sections``, default all):

``seek``    in-process: seconds from ``open_source`` to the first item of ``iter_from(start)``, both ways, and that
            the items agree (the start is the first item of the shard the resume converts first).
``resume``  the kill and the reruns above.
``nan``     reading speed of the shipped 3,000-structure file (no NaN) with this checkout's sources and with the
            sources before bare-NaN support (``--baseline-rev``, default the parent of the commit that added
            ``colab_kit/sources/seek.py``), each in fresh interpreters, and of the same file with bare NaN labels.

Usage::

    python benchmarks/bench_resume.py --data /tmp/mp_like_132k.json.gz --workdir /tmp/ckresume \\
        --json-out /tmp/ckresume/bench_resume.json
    python benchmarks/bench_resume.py --n 20000 --workdir /tmp/ckresume_smoke --sections resume   # ≈ 4 minutes
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import BenchRun, loadavg, median, print_table  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "colab_kit" / "data" / "mp_eform_cgcnn_3000_matbench.json.gz"
SECTIONS = ("seek", "resume", "nan")
# The CLI with every reader's iter_from wrapped to note (in the file argv[2]) when its first item comes; with
# argv[1] == "before" the readers' own iter_from is put back to the base class's islice: the resume as it was.
TIMED_CLI = """import sys, time
import colab_kit.sources
from colab_kit.sources.base import Source
mode, mark = sys.argv[1], sys.argv[2]
def timed(orig):
    def iter_from(self, start):
        def items():
            it = orig(self, start)
            for first in it:
                with open(mark, "w") as f:
                    f.write(repr(time.time()))
                yield first
                yield from it
        return items()
    return iter_from
for c in Source.__subclasses__():
    c.iter_from = timed(Source.iter_from if mode == "before" else c.iter_from)
from colab_kit.cli.commands import main
raise SystemExit(main(sys.argv[3:]))
"""


def _manifest(store: Path) -> dict[str, Any]:
    try:
        return json.loads((store / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}


def _committed(store: Path) -> tuple[int, int]:
    shards = _manifest(store).get("shards", [])
    return len(shards), sum(int(e.get("n_items", 0)) for e in shards)


def _digest(store: Path) -> list[tuple[int, str, int]]:
    return [(e["index"], e["sha256"], e["n_graphs"]) for e in _manifest(store).get("shards", [])]


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def convert_cmd(data: Path, store: Path, args: argparse.Namespace) -> list[str]:
    return ["convert", str(data), "--graph-kind", "chgnet", "--out", str(store), "--workers", str(args.workers),
            "--shard-size", str(args.shard_size), "--on-bad", "skip"]


def watch(cmd: list[str], store: Path, log: Path, stop_when: Any = None, timeout: float = 3600,
          env: dict[str, str] | None = None, cwd: Path = REPO) -> dict[str, Any]:
    """Runs ``cmd`` in its own session; returns its wall time, exit code, the commit timeline and whether
    ``stop_when(t, shards, items)`` had it SIGKILLed."""
    start_shards = _committed(store)[0]
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd, env=env)
    commits: list[tuple[float, int, int]] = []
    killed = False
    try:
        while proc.poll() is None and time.perf_counter() - t0 < timeout:
            t = time.perf_counter() - t0
            shards, items = _committed(store)
            if shards != (commits[-1][1] if commits else start_shards):
                commits.append((round(t, 3), shards, items))
            if stop_when is not None and stop_when(t, shards, items):
                _kill(proc)
                killed = True
                break
            time.sleep(0.02)
    finally:
        _kill(proc)
    shards, items = _committed(store)
    if shards != (commits[-1][1] if commits else start_shards):
        commits.append((round(time.perf_counter() - t0, 3), shards, items))
    return {"wall_s": time.perf_counter() - t0, "returncode": proc.returncode, "killed": killed, "commits": commits,
            "first_new_shard_s": commits[0][0] if commits else None, "start_shards": start_shards, "log": str(log)}


def ensure_data(args: argparse.Namespace, workdir: Path) -> Path:
    data = Path(args.data) if args.data else workdir / f"mp_like_{args.n}.json.gz"
    if not data.exists():
        print(f"generating {args.n} MP-like structures into {data} (benchmarks/mp_like.py)", flush=True)
        subprocess.run([sys.executable, str(REPO / "benchmarks" / "mp_like.py"), "--n", str(args.n), "--out", str(data),
                        "--no-progress"], check=True, stdout=subprocess.DEVNULL)
    return data


def bench_seek(data: Path, start: int) -> dict[str, Any]:
    """Seconds to the first item at ``start``, seeking and through islice, in this process."""
    from colab_kit.sources import open_source
    from colab_kit.sources.base import Source

    rows = []
    firsts = {}
    for name, fn in (("after (seek)", lambda s: s.iter_from(start)), ("before (islice)", lambda s: Source.iter_from(s, start))):
        t0 = time.perf_counter()
        src = open_source(data)
        t_open = time.perf_counter() - t0
        it = fn(src)
        firsts[name] = [next(it) for _ in range(3)]
        t_first = time.perf_counter() - t0
        getattr(it, "close", lambda: None)()
        rows.append({"path": name, "open_s": t_open, "first_item_s": t_first, "loadavg": loadavg()})
    same = [(i.id, i.target, i.payload) for i in firsts["after (seek)"]] == [(i.id, i.target, i.payload) for i in firsts["before (islice)"]]
    print_table(f"first item at {start:,} (in-process; open_source included)", ["path", "open s", "first item s", "load"],
                [[r["path"], f"{r['open_s']:.2f}", f"{r['first_item_s']:.2f}", r["loadavg"]] for r in rows])
    print(f"same first 3 items: {same}; speed-up {rows[1]['first_item_s'] / rows[0]['first_item_s']:.1f}x", flush=True)
    return {"start": start, "rows": rows, "same_items": same}


def _archive(rev: str, dest: Path) -> Path:
    """``colab_kit/`` of git revision ``rev`` unpacked under ``dest`` (put it first on PYTHONPATH to run it)."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", rev, "colab_kit"], cwd=REPO, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def _added_in(path: str) -> str:
    """The parent of the commit that added ``path``: the tree just before it."""
    return subprocess.run(["git", "log", "--format=%H", "--diff-filter=A", "-1", "--", path], cwd=REPO,
                          capture_output=True, text=True, check=True).stdout.strip() + "^"


def bench_resume(data: Path, workdir: Path, args: argparse.Namespace, n: int) -> dict[str, Any]:
    ref = Path(args.reference) if args.reference else workdir / "store_uninterrupted"
    res: dict[str, Any] = {"reference": str(ref)}
    if not _manifest(ref).get("complete"):
        shutil.rmtree(ref, ignore_errors=True)
        # one process, every shard converted whole: the bytes a split first shard must reproduce
        print("uninterrupted reference build (--workers 1) ...", flush=True)
        ref_args = argparse.Namespace(**{**vars(args), "workers": 1})
        res["uninterrupted"] = watch([sys.executable, "-m", "colab_kit", *convert_cmd(data, ref, ref_args)], ref,
                                     workdir / "ref.log")
    killed = workdir / "store_killed"
    shutil.rmtree(killed, ignore_errors=True)
    cmd = convert_cmd(data, killed, args)
    first = watch([sys.executable, "-m", "colab_kit", *cmd], killed, workdir / "first.log",
                  stop_when=lambda t, s, items: items >= args.kill_at * n)
    res["first_run"] = first
    res["committed_at_kill"] = s0 = _committed(killed)[0]
    print(f"first run SIGKILLed at {first['wall_s']:.1f} s with {s0} shards "
          f"({_committed(killed)[1]:,} items) committed", flush=True)
    whole_rev = args.whole_rev or _added_in("colab_kit/store/shard_build.py")
    whole_tree = _archive(whole_rev, workdir / "whole_src")
    res["whole_rev"] = whole_rev
    # mode -> (TIMED_CLI mode, PYTHONPATH, cwd): cwd is put first on sys.path by `python -c`, so the archived
    # tree runs from the workdir
    modes = {"before": ("before", None, REPO), "whole": ("after", whole_tree, workdir), "after": ("after", None, REPO)}
    reruns: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    for rep in range(args.restart_repeats):  # interleaved, so machine noise hits every mode alike
        for name, (mode, pythonpath, cwd) in modes.items():
            last = name == "after" and rep == args.restart_repeats - 1  # runs to the end: the identity check
            store, mark = workdir / f"store_{name}", workdir / f"first_item_{name}.txt"
            shutil.rmtree(store, ignore_errors=True)
            shutil.copytree(killed, store, copy_function=os.link)  # shards and manifests are replaced, never edited
            mark.unlink(missing_ok=True)
            env = {**os.environ, "PYTHONPATH": str(pythonpath)} if pythonpath else None
            launched = time.time()
            r = watch([sys.executable, "-c", TIMED_CLI, mode, str(mark), *convert_cmd(data, store, args)], store,
                      workdir / f"rerun_{name}.log", stop_when=None if last else (lambda t, s, items: s > s0),
                      env=env, cwd=cwd)
            r["first_item_s"] = float(mark.read_text()) - launched if mark.exists() else None
            r["loadavg_after"] = loadavg()
            reruns[name].append(r)
            print(f"rerun {name} #{rep + 1}: first item after {r['first_item_s']:.2f} s, first new shard after "
                  f"{r['first_new_shard_s']} s, load {r['loadavg_after']}", flush=True)
            if not last:
                shutil.rmtree(store, ignore_errors=True)
    shutil.rmtree(killed, ignore_errors=True)
    after = workdir / "store_after"
    res["identical_to_uninterrupted"] = bool(_manifest(after).get("complete")) and _digest(after) == _digest(ref)
    res["n_shards"] = len(_digest(after))
    res["reruns"] = reruns
    commits = first["commits"]
    gaps = [b[0] - a[0] for a, b in zip(commits[1:], commits[2:])]
    res["first_run_median_commit_interval_s"] = median(gaps)
    res["median_first_new_shard_s"] = {k: median([r["first_new_shard_s"] for r in v]) for k, v in reruns.items()}
    labels = {"before": "before: islice, no seek", "whole": f"seek, first shard whole ({whole_rev})",
              "after": "after: seek + split first shard"}
    print_table("restart (process start) to the first item past the skip, and to the first new shard committed",
                ["rerun", "first item s (runs)", "first new shard s (runs)", "median shard s", "load after"],
                [[labels[k], " ".join(f"{r['first_item_s']:.2f}" for r in v),
                  " ".join(f"{r['first_new_shard_s']}" for r in v), f"{res['median_first_new_shard_s'][k]:.2f}",
                  " ".join(str(r["loadavg_after"]) for r in v)] for k, v in reruns.items()])
    print(f"final store identical to the uninterrupted --workers 1 build (sha256 per shard, {res['n_shards']} shards): "
          f"{res['identical_to_uninterrupted']}; first run's median seconds between commits: "
          f"{res['first_run_median_commit_interval_s']:.2f}; after rerun to the end: {reruns['after'][-1]['wall_s']:.1f} s",
          flush=True)
    if not args.keep_stores:
        shutil.rmtree(after, ignore_errors=True)
    return res


READ_CHILD = ("import sys, time\nimport numpy\nfrom colab_kit.sources import open_source\nt0 = time.perf_counter()\n"
              "items = sum(1 for _ in open_source(sys.argv[1]))\nprint(items, time.perf_counter() - t0)")


def bench_nan(workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Reading the shipped file: this checkout vs the sources before bare-NaN support; and with NaN labels."""
    rev = args.baseline_rev or _added_in("colab_kit/sources/seek.py")
    base = _archive(rev, workdir / "baseline_src")
    with gzip.open(SHIPPED, "rt") as f:
        doc = json.load(f)
    for i in range(0, len(doc["data"]), 20):  # 5 % of the labels NaN, written bare as json.dump does
        doc["data"][i][1] = float("nan")
    nan_file = workdir / "shipped_with_nan.json.gz"
    with gzip.open(nan_file, "wt") as f:
        json.dump(doc, f)
    runs: dict[str, list[float]] = {"baseline": [], "this checkout": [], "this checkout, 5 % NaN labels": []}
    for _ in range(args.repeats):  # interleaved, so machine noise hits all three alike
        for name, path, pythonpath in (("baseline", SHIPPED, base), ("this checkout", SHIPPED, REPO),
                                       ("this checkout, 5 % NaN labels", nan_file, REPO)):
            out = subprocess.run([sys.executable, "-c", READ_CHILD, str(path)], capture_output=True, text=True,
                                 env={**os.environ, "PYTHONPATH": str(pythonpath)}, cwd=workdir)
            if out.returncode:
                runs[name].append(float("nan"))
                print(f"{name}: {out.stderr.strip().splitlines()[-1]}", flush=True)
                continue
            runs[name].append(float(out.stdout.split()[1]))
    rows = [[name, f"{median(v):.3f}", f"{3000 / median(v):,.0f}", " ".join(f"{x:.2f}" for x in v)] for name, v in runs.items()]
    print_table(f"reading the shipped 3,000 structures (open_source + every RawItem, imports excluded; baseline = {rev})",
                ["sources", "median s", "items/s", "runs"], rows)
    ratio = median(runs["this checkout"]) / median(runs["baseline"])
    print(f"this checkout / baseline: {ratio:.3f}", flush=True)
    return {"baseline_rev": rev, "runs": runs, "ratio": ratio}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", help="matbench json.gz of MP-like structures (generated with --n when absent)")
    p.add_argument("--n", type=int, default=132_752)
    p.add_argument("--workdir", help="scratch dir (kept); a temporary one otherwise")
    p.add_argument("--json-out")
    p.add_argument("--sections", default=",".join(SECTIONS))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--shard-size", type=int, default=1000)
    p.add_argument("--kill-at", type=float, default=0.5, help="fraction of items committed when the first run is killed")
    p.add_argument("--reference", help="an uninterrupted store of the same command (built with --workers 1 when absent)")
    p.add_argument("--restart-repeats", type=int, default=3, help="reruns of each mode (resume section)")
    p.add_argument("--whole-rev", help="git revision whose convert builds the first shard whole (resume section; "
                   "default the parent of the commit that added colab_kit/store/shard_build.py)")
    p.add_argument("--keep-stores", action="store_true")
    p.add_argument("--baseline-rev", help="git revision of the sources before bare-NaN support (nan section)")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    sections = [s for s in args.sections.split(",") if s]
    if unknown := set(sections) - set(SECTIONS):
        p.error(f"--sections must be among {SECTIONS} (got {sorted(unknown)})")
    with BenchRun(args.json_out, args.workdir, "ck-bench-resume-", sections=sections) as run:
        work = run.workdir
        if "nan" in sections:
            run.results["nan"] = bench_nan(work, args)
            run.save()
        if {"seek", "resume"} & set(sections):
            data = ensure_data(args, work if args.workdir else Path(tempfile.gettempdir()))
            from colab_kit.sources import open_source

            n = open_source(data).count() or args.n
            run.results.update(data=str(data), items=n)
            start = int(args.kill_at * n) // args.shard_size * args.shard_size
            if "seek" in sections:
                run.results["seek"] = bench_seek(data, start)
                run.save()
            if "resume" in sections:
                run.results["resume"] = bench_resume(data, work, args, n)
                run.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
