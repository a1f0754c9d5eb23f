"""Conversion benchmarks: colab_kit against CHGNet's own converter and per-graph ``torch.save`` files.

Sections (``--sections``, default all):

``rate``   per-core conversion rate on one sample of structures, parsed to pymatgen beforehand so parsing is
           excluded for every contender: ``chgnet.graph.CrystalGraphConverter`` (its default ``fast`` algorithm,
           and ``legacy`` with ``--legacy``) against colab_kit's chgnet converter (``convert`` and
           ``convert`` + ``to_graph``) and its radius converter. The contenders are timed interleaved,
           structure by structure, so machine noise hits all of them alike.
``e2e``    ``build_store`` on the source file (``--n`` items, default all) with 1 and 2 workers: items/s
           including JSON streaming, parsing, conversion and shard writing.
``rss``    ``build_store`` in a fresh subprocess on the first 10,000 and on all items; the RSS of the whole
           process tree (parent + workers) is sampled every 0.2 s (PSS every ~1 s).
``bytes``  store bytes per graph against one ``torch.save`` file per graph (CHGNet's ``CrystalGraph.save``, and
           ``torch.save`` of the PyG ``Data`` for radius graphs) on the same structures.

Usage::

    python benchmarks/bench_convert.py --source /tmp/mp_like_132k.json.gz --json-out bench_convert.json \
        --store-out /tmp/ck_store_132k_chgnet
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from harness import MP_LIKE_132K, BenchRun, TreeRss, dir_bytes, loadavg, median, print_table

DEFAULT_SOURCE = MP_LIKE_132K
SECTIONS = ("rate", "e2e", "rss", "bytes")


def load_structures(source: str, n: int) -> list[tuple[str, Any, float]]:
    """The first ``n`` items of ``source`` as (id, pymatgen Structure, target); unparseable items are dropped."""
    from colab_kit.sources import SourceError, open_source, parse_structure

    out = []
    for item in itertools.islice(iter(open_source(source)), n):
        try:
            out.append((item.id, parse_structure(item), item.target))
        except SourceError:
            continue
    return out


# ---------------------------------------------------------------- rate

def bench_rate(source: str, n: int, legacy: int) -> dict[str, Any]:
    from chgnet.graph import CrystalGraphConverter

    from colab_kit.graphs import BadStructure, get_converter
    from colab_kit.sources import SourceError, open_source, parse_structure

    ck = get_converter("chgnet")
    rad = get_converter("radius", cutoff=8, max_neighbors=12)
    fast = CrystalGraphConverter(atom_graph_cutoff=6, bond_graph_cutoff=3, on_isolated_atoms="ignore")
    slow = CrystalGraphConverter(atom_graph_cutoff=6, bond_graph_cutoff=3, on_isolated_atoms="ignore", algorithm="legacy")
    contenders: dict[str, Callable[[Any], Any]] = {
        f"chgnet CrystalGraphConverter ({fast.algorithm})": fast,
        "colab_kit chgnet convert": ck.convert,
        "colab_kit chgnet convert+to_graph": lambda s: ck.to_graph(ck.convert(s)),
        "colab_kit radius convert (8 Å, 12 nbrs)": rad.convert,
    }
    if legacy:
        contenders["chgnet CrystalGraphConverter (legacy)"] = slow
    t = time.perf_counter()
    raw = list(itertools.islice(iter(open_source(source)), n))
    # every contender gets its own freshly parsed copy: pymatgen caches per-Structure properties, so a second
    # converter on the same object would run warm
    usable: list[dict[str, Any]] = []
    for item in raw:
        try:
            copies = {name: parse_structure(item) for name in contenders}
            s = next(iter(copies.values()))
            ck.convert(s.copy())  # colab_kit refuses isolated atoms that CHGNet 'ignore's: time both on the rest
            rad.convert(s.copy())
        except (SourceError, BadStructure):
            continue
        usable.append(copies)
    print(f"rate: parsed {len(raw)} items ({len(usable)} usable by every contender) in {time.perf_counter() - t:.1f} s "
          "(excluded from the timings)", flush=True)
    warm = list(itertools.islice(iter(open_source(source)), n, n + 5))
    for fn in contenders.values():  # warm-up on other structures: imports, module-level caches
        for item in warm:
            try:
                fn(parse_structure(item))
            except (SourceError, BadStructure):
                pass
    times: dict[str, list[float]] = {k: [] for k in contenders}
    names = list(contenders)
    load0 = loadavg()
    for k, copies in enumerate(usable):
        if names[-1].endswith("(legacy)") and k >= legacy:
            names = names[:-1]
        for name in names[k % len(names):] + names[: k % len(names)]:  # rotate who goes first
            fn = contenders[name]
            s = copies[name]
            t = time.perf_counter()
            fn(s)
            times[name].append(time.perf_counter() - t)
    sample = raw
    load1 = loadavg()
    anchor = next(iter(contenders))
    anchor_total = sum(times[anchor][: len(usable)])
    anchor_med = median(times[anchor])
    rows = []
    for name, ts in times.items():
        # ratios against the anchor over the same structures
        a_total = sum(times[anchor][: len(ts)])
        a_med = median(times[anchor][: len(ts)])
        rows.append({
            "contender": name, "n": len(ts), "structures_per_s": len(ts) / sum(ts), "median_ms": median(ts) * 1e3,
            "p90_ms": float(np.percentile(ts, 90)) * 1e3, "speedup_vs_chgnet_rate": a_total / sum(ts),
            "speedup_vs_chgnet_median": a_med / median(ts),
        })
    sites = [len(next(iter(c.values()))) for c in usable]
    res = {"n_sample": len(sample), "n_usable": len(usable), "mean_sites": float(np.mean(sites)),
           "max_sites": int(np.max(sites)), "anchor": anchor, "anchor_total_s": anchor_total,
           "anchor_median_ms": anchor_med * 1e3, "loadavg_before": load0, "loadavg_after": load1, "rows": rows}
    print_table(
        f"Per-core conversion rate ({len(usable)} structures, mean {res['mean_sites']:.1f} sites, parsing excluded)",
        ["contender", "n", "structures/s", "median ms", "p90 ms", "× chgnet (rate)", "× chgnet (median)"],
        [[r["contender"], r["n"], r["structures_per_s"], r["median_ms"], r["p90_ms"], r["speedup_vs_chgnet_rate"],
          r["speedup_vs_chgnet_median"]] for r in rows],
    )
    return res


# ---------------------------------------------------------------- end to end

def bench_e2e(source: str, n: int | None, workers: list[int], workdir: Path) -> dict[str, Any]:
    from colab_kit.graphs import get_converter
    from colab_kit.store.build import build_store

    rows = []
    for w in workers:
        out = workdir / f"e2e-w{w}"
        shutil.rmtree(out, ignore_errors=True)
        load0 = loadavg()
        t = time.perf_counter()
        r = build_store(source, out, get_converter("chgnet"), workers=w, shard_size=1000, limit=n,
                        on_bad_structure="skip", progress=False)
        dt = time.perf_counter() - t
        items = r.n_graphs + r.n_failed
        rows.append({"workers": w, "items": items, "graphs": r.n_graphs, "failed": r.n_failed, "seconds": dt,
                     "items_per_s": items / dt, "loadavg_before": load0, "loadavg_after": loadavg()})
        print(f"e2e: workers={w}: {items} items in {dt:.1f} s", flush=True)
        shutil.rmtree(out, ignore_errors=True)
    for r in rows:
        r["speedup_vs_1_worker"] = r["items_per_s"] / rows[0]["items_per_s"]
    print_table(
        "End-to-end build_store (chgnet graphs; JSON streaming + parsing + conversion + shard writes)",
        ["workers", "items", "graphs", "skipped", "seconds", "items/s", "× 1 worker", "load avg before/after"],
        [[r["workers"], r["items"], r["graphs"], r["failed"], r["seconds"], r["items_per_s"], r["speedup_vs_1_worker"],
          f"{r['loadavg_before']}/{r['loadavg_after']}"] for r in rows],
    )
    return {"rows": rows}


# ---------------------------------------------------------------- peak RSS

def _child_build(source: str, out: str, limit: str, workers: str) -> None:
    """Runs in a fresh interpreter: one build_store, result as JSON on the last stdout line."""
    from colab_kit.graphs import get_converter
    from colab_kit.store.build import build_store

    t = time.perf_counter()
    r = build_store(source, out, get_converter("chgnet"), workers=int(workers), shard_size=1000,
                    limit=None if limit == "all" else int(limit), on_bad_structure="skip", progress=False)
    print(json.dumps({"n_graphs": r.n_graphs, "n_failed": r.n_failed, "n_shards": r.n_shards,
                      "seconds": time.perf_counter() - t}))


def bench_rss(source: str, sizes: list[str], workers: int, workdir: Path, store_out: str | None) -> dict[str, Any]:
    rows = []
    for size in sizes:
        keep = store_out is not None and size == sizes[-1]
        out = Path(store_out) if keep else workdir / f"rss-{size}"
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, __file__, "--child-build", source, str(out), size, str(workers)]
        print(f"rss: {' '.join(cmd)}", flush=True)
        load0 = loadavg()
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        with TreeRss(proc.pid) as mon:
            stdout, stderr = proc.communicate()
        dt = time.perf_counter() - t
        if proc.returncode != 0:
            raise RuntimeError(f"child build failed ({proc.returncode}): {stderr[-2000:]}")
        res = json.loads(stdout.strip().splitlines()[-1])
        items = res["n_graphs"] + res["n_failed"]
        apparent, _, _ = dir_bytes(out)
        rows.append({"items": items, "graphs": res["n_graphs"], "failed": res["n_failed"], "workers": workers,
                     "seconds": dt, "build_seconds": res["seconds"], "items_per_s": items / res["seconds"],
                     "peak_tree_rss_mb": mon.peak_rss / 2**20, "peak_tree_pss_mb": mon.peak_pss / 2**20,
                     "peak_tree_anon_mb": mon.peak_anon / 2**20, "processes": mon.peak_procs,
                     "loadavg_before": load0, "loadavg_after": loadavg(), "store_mb": apparent / 2**20, "store": str(out) if keep else None,
                     "timeline_s_rss_mb": [(t_, r_ / 2**20) for t_, r_ in mon.timeline]})
        print(f"rss: {items} items: peak tree RSS {mon.peak_rss / 2**20:.0f} MB in {dt:.0f} s", flush=True)
        if not keep:
            shutil.rmtree(out, ignore_errors=True)
    print_table(
        f"Peak memory of build_store in a fresh process (workers={workers}, parent + workers)",
        ["items", "graphs", "skipped", "build s", "items/s", "peak tree RSS MB", "peak tree PSS MB",
         "peak tree RssAnon MB", "processes", "store MB", "load avg before/after"],
        [[r["items"], r["graphs"], r["failed"], r["build_seconds"], r["items_per_s"], r["peak_tree_rss_mb"],
          r["peak_tree_pss_mb"], r["peak_tree_anon_mb"], r["processes"], r["store_mb"],
          f"{r['loadavg_before']}/{r['loadavg_after']}"] for r in rows],
    )
    return {"rows": rows}


# ---------------------------------------------------------------- bytes per graph

def bench_bytes(source: str, n: int, workdir: Path) -> dict[str, Any]:
    import torch
    from chgnet.graph import CrystalGraphConverter

    from colab_kit.graphs import get_converter
    from colab_kit.store.build import build_store
    from colab_kit.store.format import GraphStore

    sample = {sid: s for sid, s, _ in load_structures(source, n)}
    fast = CrystalGraphConverter(atom_graph_cutoff=6, bond_graph_cutoff=3, on_isolated_atoms="ignore")
    rows = []
    for name, conv in (("chgnet", get_converter("chgnet")), ("radius", get_converter("radius", cutoff=8, max_neighbors=12))):
        store_dir = workdir / f"bytes-{name}"
        files_dir = workdir / f"bytes-{name}-files"
        for d in (store_dir, files_dir):
            shutil.rmtree(d, ignore_errors=True)
        files_dir.mkdir(parents=True)
        r = build_store(source, store_dir, conv, workers=2, shard_size=1000, limit=n, on_bad_structure="skip",
                        progress=False)
        store = GraphStore(store_dir)
        for i in range(len(store)):  # the same graphs, one torch.save file each
            gid = store.graph_id(i)
            if name == "chgnet":  # exactly what CHGNet's own pipeline writes: CrystalGraph.save
                fast(sample[gid], graph_id=gid, mp_id=gid).save(fname=f"{gid}.pt", save_dir=str(files_dir))
            else:
                torch.save(store.get(i), files_dir / f"{gid}.pt")
        s_app, s_alloc, s_files = dir_bytes(store_dir)
        by_array = shard_bytes_by_array(store_dir)
        f_app, f_alloc, f_files = dir_bytes(files_dir)
        g = r.n_graphs
        rows.append({"graphs": name, "n_graphs": g, "store_files": s_files, "store_bytes_per_graph": s_app / g,
                     "store_disk_per_graph": s_alloc / g, "torch_save_files": f_files,
                     "torch_save_bytes_per_graph": f_app / g, "torch_save_disk_per_graph": f_alloc / g,
                     "ratio_bytes": s_app / f_app, "ratio_disk": s_alloc / f_alloc,
                     "store_bytes_per_graph_by_array": {k: v / g for k, v in by_array.items()}})
        shutil.rmtree(files_dir, ignore_errors=True)
        shutil.rmtree(store_dir, ignore_errors=True)
    print_table(
        f"Bytes per graph (first {n} items): store vs one torch.save file per graph",
        ["graphs", "n", "store B/graph", "torch.save B/graph", "ratio", "store disk B/graph",
         "torch.save disk B/graph", "ratio (disk)"],
        [[r["graphs"], r["n_graphs"], r["store_bytes_per_graph"], r["torch_save_bytes_per_graph"], r["ratio_bytes"],
          r["store_disk_per_graph"], r["torch_save_disk_per_graph"], r["ratio_disk"]] for r in rows],
    )
    for r in rows:
        parts = ", ".join(f"{k} {v:,.0f}" for k, v in sorted(r["store_bytes_per_graph_by_array"].items(),
                                                               key=lambda kv: -kv[1]))
        print(f"{r['graphs']} store bytes per graph by array: {parts}")
    return {"rows": rows}


def shard_bytes_by_array(store_dir: Path) -> dict[str, int]:
    """Bytes of each named array summed over a store's shards (from the safetensors headers); 'header' is the
    JSON header itself (ids, failures, dtypes and offsets)."""
    out: dict[str, int] = {}
    for f in sorted(store_dir.glob("shard-*.safetensors")):
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        out["header"] = out.get("header", 0) + 8 + n
        for name, info in header.items():
            if name != "__metadata__":
                start, end = info["data_offsets"]
                out[name] = out.get(name, 0) + end - start
    return out


# ---------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child-build":
        _child_build(*argv[1:5])
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default=DEFAULT_SOURCE, help="matbench json(.gz) (default %(default)s)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset of %(default)s")
    ap.add_argument("--sample", type=int, default=500, help="structures for the per-core rate")
    ap.add_argument("--legacy", type=int, default=100, help="also time CHGNet's legacy algorithm on this many (0: skip)")
    ap.add_argument("--n", type=int, default=None, help="items for the end-to-end build (default: all)")
    ap.add_argument("--workers", default="1,2", help="worker counts for the end-to-end build")
    ap.add_argument("--rss-sizes", default="10000,all", help="item counts for the peak-RSS runs ('all' = whole file)")
    ap.add_argument("--rss-workers", type=int, default=2)
    ap.add_argument("--store-out", default=None, help="keep the store of the last RSS run here (for bench_loader)")
    ap.add_argument("--bytes-sample", type=int, default=2000)
    ap.add_argument("--workdir", default=None, help="scratch directory (default: a temporary one)")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args(argv)

    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    if not Path(args.source).exists():
        ap.error(f"{args.source} missing; make it with `python benchmarks/mp_like.py --n 132752 --out {args.source}`")
    with BenchRun(args.json_out, args.workdir, "ck-bench-convert-", source=args.source) as run:
        results, save, workdir = run.results, run.save, run.workdir
        if "rate" in sections:
            results["rate"] = bench_rate(args.source, args.sample, args.legacy)
            save()
        if "bytes" in sections:
            results["bytes"] = bench_bytes(args.source, args.bytes_sample, workdir)
            save()
        if "e2e" in sections:
            results["e2e"] = bench_e2e(args.source, args.n, [int(w) for w in args.workers.split(",")], workdir)
            save()
        if "rss" in sections:
            sizes = [s.strip() for s in args.rss_sizes.split(",")]
            results["rss"] = bench_rss(args.source, sizes, args.rss_workers, workdir, args.store_out)
            save()
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
