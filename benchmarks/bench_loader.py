"""Reading benchmarks: a colab_kit graph store against one ``torch.save`` file per graph and PyG's InMemoryDataset.

Sections (``--sections``, default all):

``open``    ``GraphStore(dir)``, ``len`` and ``sizes()`` timed separately, each repeat in a fresh interpreter
            (so RSS after open is clean); the page cache is warm (the store was just built or read).
``read``    random-access read: ``store.get(i)`` (a ready ``CrystalGraph`` / PyG ``Data``) for random ``i`` over the
            whole store, against ``torch.load(file, weights_only=False)`` of per-graph files holding the same graphs
            (``CrystalGraph.save`` for chgnet, ``torch.save(Data)`` for radius).
``loader``  passes of a DataLoader over the same random graphs, workers 0 and 2, with the same batches
            (planned by colab_kit's ``BudgetBatchSampler``): colab_kit ``make_loader`` (whole-batch reads where
            the graph kind has a ``batch_fn``: radius) vs colab_kit one graph per item + the kind's collate (the
            path before batch reads) vs a per-file ``torch.load`` Dataset vs (radius) a PyG ``InMemoryDataset``
            holding every graph in RAM. Each configuration runs in a fresh interpreter; the first pass is cold
            (the files it reads were evicted from the page cache first), the warm figure is the median of the
            passes after it; peak RSS is of that process tree (main + workers).

Usage::

    python benchmarks/bench_loader.py --store /tmp/ck_store_132k_chgnet --json-out bench_loader.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import MP_LIKE_132K, REPO, BenchRun, TreeRss, loadavg, median, print_table  # noqa: E402

DEFAULT_SOURCE = MP_LIKE_132K

SECTIONS = ("open", "read", "loader")
KINDS = ("chgnet", "radius")


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _status_mb() -> dict[str, float]:
    """RssAnon / RssFile of this process, MB (file pages are the reclaimable page cache of mapped shards)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("RssAnon:", "RssFile:")):
            out[line.split(":")[0]] = int(line.split()[1]) / 1024
    return out


def evict(path: str | Path) -> None:
    """Drop the page cache of the files under ``path`` only (posix_fadvise DONTNEED): a cold open of *this*
    store without touching the rest of the machine."""
    for f in Path(path).iterdir():
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _evict_file(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def build_if_missing(path: str | None, kind: str, source: str, n: int | None, workdir: Path, edges: str = "stored") -> str:
    """The store at ``path``, or a new one of the first ``n`` items of ``source`` in ``workdir`` (``edges="device"``:
    a structure-only radius store)."""
    from colab_kit.graphs import get_converter
    from colab_kit.store.build import build_store

    if path:
        return path
    out = workdir / (f"store-{kind}" + ("-structures" if edges == "device" else ""))
    conv = get_converter("chgnet") if kind == "chgnet" else get_converter("radius", cutoff=8, max_neighbors=12,
                                                                           edges=edges)
    t = time.perf_counter()
    r = build_store(source, out, conv, workers=2, shard_size=1000, limit=n, on_bad_structure="skip", progress=False)
    print(f"built {kind} store of {r.n_graphs} graphs at {out} in {time.perf_counter() - t:.0f} s", flush=True)
    return str(out)


# ---------------------------------------------------------------- open

def _child_open(store: str) -> None:
    import numpy  # noqa: F401  (imports are not part of opening)

    from colab_kit.store.format import GraphStore

    rss0, st0 = _rss_mb(), _status_mb()
    t0 = time.perf_counter()
    s = GraphStore(store)
    t1 = time.perf_counter()
    n = len(s)
    t2 = time.perf_counter()
    atoms, edges = s.sizes()
    t3 = time.perf_counter()
    st1 = _status_mb()
    print(json.dumps({"n": n, "open_s": t1 - t0, "len_s": t2 - t1, "sizes_s": t3 - t2, "total_s": t3 - t0,
                      "rss_before_mb": rss0, "rss_open_mb": _rss_mb(), "shards": len(s.shards),
                      "anon_added_mb": st1["RssAnon"] - st0["RssAnon"], "file_added_mb": st1["RssFile"] - st0["RssFile"],
                      "atoms": int(atoms.sum()), "edges": int(edges.sum())}))


def bench_open(stores: dict[str, str], repeats: int) -> dict[str, Any]:
    rows = []
    for kind, store in stores.items():
        for cache in ("cold", "warm"):
            runs = []
            for _ in range(repeats):
                if cache == "cold":
                    evict(store)
                out = subprocess.run([sys.executable, __file__, "--child-open", store], capture_output=True,
                                     text=True, check=True)
                runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            row = {"graphs": kind, "cache": cache, "store": store, "n": runs[0]["n"], "shards": runs[0]["shards"],
                   "repeats": repeats, "loadavg": loadavg()}
            for k in ("open_s", "len_s", "sizes_s", "total_s", "rss_before_mb", "rss_open_mb", "anon_added_mb",
                      "file_added_mb"):
                row[k] = median([r[k] for r in runs])
                row[k + "_all"] = [r[k] for r in runs]
            rows.append(row)
    print_table(
        f"Opening a store (fresh interpreter each time, median of {repeats}; cold = this store's pages evicted)",
        ["graphs", "cache", "n graphs", "shards", "GraphStore() ms", "len() ms", "sizes() ms", "total ms",
         "RSS after open MB", "RssAnon added MB", "RssFile added MB"],
        [[r["graphs"], r["cache"], r["n"], r["shards"], r["open_s"] * 1e3, r["len_s"] * 1e3, r["sizes_s"] * 1e3,
          r["total_s"] * 1e3, r["rss_open_mb"], r["anon_added_mb"], r["file_added_mb"]] for r in rows],
    )
    return {"rows": rows}


# ---------------------------------------------------------------- per-graph files

def write_files(store: Any, kind: str, idx: np.ndarray, out: Path) -> dict[int, str]:
    """One torch.save file per graph, as CHGNet (``CrystalGraph.save``) / a plain PyG user would write them."""
    import torch

    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for i in idx.tolist():
        g = store.get(i)
        name = f"{store.graph_id(i)}.pt"
        if kind == "chgnet":
            g.save(fname=name, save_dir=str(out))
        else:
            torch.save(g, out / name)
        paths[i] = str(out / name)
    return paths


# ---------------------------------------------------------------- random reads

def bench_read(stores: dict[str, str], n_reads: int, n_files: int, workdir: Path, seed: int) -> dict[str, Any]:
    import torch
    from chgnet.graph.crystalgraph import CrystalGraph

    from colab_kit.store.format import GraphStore

    rows = []
    for kind, path in stores.items():
        store = GraphStore(path)
        rng = np.random.default_rng(seed)
        n = len(store)
        warm, reads = rng.integers(0, n, 1000), rng.integers(0, n, n_reads)
        for i in warm.tolist():
            store.get(i)
        t_get = []
        for i in reads.tolist():
            t = time.perf_counter()
            store.get(i)
            t_get.append(time.perf_counter() - t)
        t_arr = []
        for i in reads.tolist():
            t = time.perf_counter()
            store.arrays(i)
            t_arr.append(time.perf_counter() - t)
        file_idx = rng.choice(n, size=min(n_files, n), replace=False)
        files_dir = workdir / f"files-read-{kind}"
        shutil.rmtree(files_dir, ignore_errors=True)
        paths = list(write_files(store, kind, file_idx, files_dir).values())
        order = rng.permutation(len(paths))
        for k in order[:200].tolist():  # warm-up
            torch.load(paths[k], weights_only=False)
        t_load, t_full = [], []
        for k in order.tolist():
            t = time.perf_counter()
            obj = torch.load(paths[k], weights_only=False)
            t_load.append(time.perf_counter() - t)
            if kind == "chgnet":  # CHGNet keeps dicts on disk; a model needs the CrystalGraph back
                t = time.perf_counter()
                CrystalGraph.from_dict(obj)
                t_full.append(t_load[-1] + time.perf_counter() - t)
        shutil.rmtree(files_dir, ignore_errors=True)
        row = {"graphs": kind, "store_graphs": n, "reads": len(t_get), "files": len(paths), "loadavg": loadavg(),
               "store_get_us": median(t_get) * 1e6, "store_arrays_us": median(t_arr) * 1e6,
               "torch_load_us": median(t_load) * 1e6,
               "torch_load_from_dict_us": median(t_full) * 1e6 if t_full else None}
        row["ratio_get_vs_load"] = row["store_get_us"] / row["torch_load_us"]
        row["ratio_arrays_vs_load"] = row["store_arrays_us"] / row["torch_load_us"]
        rows.append(row)
        print(f"read {kind}: get {row['store_get_us']:.0f} µs, torch.load {row['torch_load_us']:.0f} µs", flush=True)
    print_table(
        "Random read per graph (median µs; warm page cache)",
        ["graphs", "store graphs", "store.get µs", "store.arrays µs", "torch.load µs", "torch.load+from_dict µs",
         "get / load", "arrays / load"],
        [[r["graphs"], r["store_graphs"], r["store_get_us"], r["store_arrays_us"], r["torch_load_us"],
          r["torch_load_from_dict_us"] if r["torch_load_from_dict_us"] is not None else "-", r["ratio_get_vs_load"],
          r["ratio_arrays_vs_load"]] for r in rows],
    )
    return {"rows": rows}


# ---------------------------------------------------------------- DataLoader

class FileDataset:
    """Graph ``i`` from its own ``torch.save`` file (what per-graph caches such as CHGNet's GraphData do)."""

    def __init__(self, paths: dict[int, str], targets: dict[int, float], kind: str) -> None:
        self.paths, self.targets, self.kind = paths, targets, kind

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Any, float]:
        import torch

        obj = torch.load(self.paths[i], weights_only=False)
        if self.kind == "chgnet":
            from chgnet.graph.crystalgraph import CrystalGraph

            obj = CrystalGraph.from_dict(obj)
        return obj, self.targets[i]


def _child_loader(config_path: str) -> None:
    """One DataLoader configuration in a fresh interpreter: pass times and the peak RSS of its process tree."""
    import chgnet.graph.crystalgraph  # noqa: F401  (imports are not part of a pass, nor of the data's memory)
    import torch
    import torch_geometric.data  # noqa: F401
    from torch.utils.data import DataLoader

    from colab_kit import registry
    from colab_kit.loader.batching import BudgetBatchSampler, make_loader
    from colab_kit.models.common import PygAdapter
    from colab_kit.store.format import GraphStore

    rss_base = _rss_mb()  # an interpreter with torch, PyG and chgnet imported, no data yet
    cfg = json.loads(Path(config_path).read_text())
    kind, method, workers = cfg["kind"], cfg["method"], cfg["workers"]
    batches: list[list[int]] = cfg["batches"]
    n_graphs = sum(len(b) for b in batches)
    kw: dict[str, Any] = {"num_workers": workers}
    finish = None
    if method in ("colab_kit", "colab_kit_per_graph", "colab_kit_device_graphs"):
        store = GraphStore(cfg["device_store"] if method == "colab_kit_device_graphs" else cfg["store"])
        atoms, edges = store.sizes()
        sampler = BudgetBatchSampler(np.asarray(cfg["indices"]), atoms, edges, cfg["max_atoms"], cfg["max_edges"],
                                     cfg["max_graphs"], shuffle=True, seed=cfg["seed"])
        assert [list(map(int, b)) for b in sampler] == batches, "sampler and planned batches differ"

        if method in ("colab_kit", "colab_kit_device_graphs"):
            def make() -> Any:
                return make_loader(store, sampler, workers=workers)
        else:
            from colab_kit.loader.batching import GraphDataset, collate_fn

            def make() -> Any:
                return DataLoader(GraphDataset(store), batch_sampler=sampler, collate_fn=collate_fn(store), **kw)
        if method == "colab_kit_device_graphs":  # a batch of structures: its edges built where it is moved
            def finish(batch: Any) -> Any:
                return PygAdapter.to_device(batch, torch.device("cpu"))
    elif method == "per_file":
        paths = {int(k): v for k, v in cfg["paths"].items()}
        targets = {int(k): v for k, v in cfg["targets"].items()}
        ds = FileDataset(paths, targets, kind)

        def make() -> Any:
            return DataLoader(ds, batch_sampler=batches, collate_fn=registry.graph_kind(kind).collate, **kw)  # type: ignore[arg-type]
    else:  # PyG InMemoryDataset: every graph in RAM, loaded the standard way from its processed file
        from torch_geometric.data import InMemoryDataset
        from torch_geometric.loader import DataLoader as PygLoader

        ds = InMemoryDataset()
        ds.load(cfg["inmemory"])
        pos = {int(i): k for k, i in enumerate(cfg["indices"])}
        mapped = [[pos[i] for i in b] for b in batches]

        def make() -> Any:
            return PygLoader(ds, batch_sampler=mapped, **kw)

    torch.set_num_threads(1)
    for path in cfg.get("evict", []):  # the first pass reads from disk
        evict(path) if Path(path).is_dir() else _evict_file(path)
    rss0 = _rss_mb()
    passes = []
    with TreeRss(os.getpid()) as mon:
        for _ in range(cfg["passes"]):
            seen = 0
            t = time.perf_counter()
            for batch in make():
                if finish is not None:
                    batch = finish(batch)
                seen += batch.num_graphs if hasattr(batch, "num_graphs") else len(batch[0])
            passes.append(time.perf_counter() - t)
            assert seen == n_graphs, (seen, n_graphs)
    print(json.dumps({"passes_s": passes, "graphs": n_graphs, "batches": len(batches), "rss_start_mb": rss0,
                      "rss_base_mb": rss_base,
                      "peak_tree_rss_mb": mon.peak_rss / 2**20, "peak_tree_pss_mb": mon.peak_pss / 2**20,
                      "peak_tree_anon_mb": mon.peak_anon / 2**20}))


def bench_loader(stores: dict[str, str], n_graphs: int, workers: list[int], passes: int, workdir: Path,
                 seed: int, device_store: str | None = None) -> dict[str, Any]:
    from colab_kit.loader.batching import BudgetBatchSampler
    from colab_kit.store.format import GraphStore

    rows = []
    for kind, path in stores.items():
        store = GraphStore(path)
        rng = np.random.default_rng(seed + 1)
        indices = np.sort(rng.choice(len(store), size=min(n_graphs, len(store)), replace=False))
        atoms, edges = store.sizes()
        budget = {"max_atoms": 2000, "max_edges": 100_000 if kind == "chgnet" else 30_000, "max_graphs": 64}
        sampler = BudgetBatchSampler(indices, atoms, edges, budget["max_atoms"], budget["max_edges"],
                                     budget["max_graphs"], shuffle=True, seed=seed)
        batches = [list(map(int, b)) for b in sampler]
        files_dir = workdir / f"files-loader-{kind}"
        shutil.rmtree(files_dir, ignore_errors=True)
        t = time.perf_counter()
        paths = write_files(store, kind, indices, files_dir)
        print(f"loader {kind}: wrote {len(paths)} per-graph files in {time.perf_counter() - t:.0f} s", flush=True)
        targets = {i: store.target(i) for i in indices.tolist()}
        base = {"kind": kind, "store": path, "indices": indices.tolist(), "batches": batches, "seed": seed,
                "passes": passes, **budget}
        methods = ["colab_kit", "colab_kit_per_graph", "per_file"]
        if kind == "radius":
            from torch_geometric.data import InMemoryDataset

            inmem = workdir / "inmemory-radius.pt"
            InMemoryDataset.save([store.get(i) for i in indices.tolist()], str(inmem))
            base["inmemory"] = str(inmem)
            methods.append("pyg_inmemory")
            if device_store:
                base["device_store"] = device_store
                methods.insert(1, "colab_kit_device_graphs")
        for w in workers:
            for method in methods:
                evict_paths = ([device_store] if method == "colab_kit_device_graphs" else [path]
                               if method.startswith("colab_kit") else [files_dir] if method == "per_file"
                               else [base["inmemory"]])
                cfg = {**base, "method": method, "workers": w, "evict": [str(x) for x in evict_paths],
                       "paths": {str(k): v for k, v in paths.items()} if method == "per_file" else {},
                       "targets": {str(k): v for k, v in targets.items()} if method == "per_file" else {}}
                cfg_path = workdir / "loader-config.json"
                cfg_path.write_text(json.dumps(cfg))
                out = subprocess.run([sys.executable, __file__, "--child-loader", str(cfg_path)], capture_output=True,
                                     text=True)
                if out.returncode != 0:
                    raise RuntimeError(f"{kind}/{method}/w{w} failed: {out.stderr[-3000:]}")
                res = json.loads(out.stdout.strip().splitlines()[-1])
                t_pass = median(res["passes_s"][1:] or res["passes_s"])  # warm: the passes after the cold one
                rows.append({"graphs": kind, "method": method, "workers": w, "n_graphs": res["graphs"],
                             "batches": res["batches"], "passes_s": res["passes_s"], "median_pass_s": t_pass,
                             "graphs_per_s": res["graphs"] / t_pass, "cold_graphs_per_s": res["graphs"] / res["passes_s"][0],
                             "rss_start_mb": res["rss_start_mb"], "rss_base_mb": res["rss_base_mb"],
                             "data_mb": res["peak_tree_rss_mb"] - res["rss_base_mb"],
                             "peak_tree_rss_mb": res["peak_tree_rss_mb"], "peak_tree_pss_mb": res["peak_tree_pss_mb"],
                             "peak_tree_anon_mb": res["peak_tree_anon_mb"], "loadavg": loadavg()})
                print(f"loader {kind}/{method}/workers={w}: {res['graphs'] / t_pass:,.0f} graphs/s", flush=True)
        shutil.rmtree(files_dir, ignore_errors=True)
    for r in rows:
        ref = next(x for x in rows if x["graphs"] == r["graphs"] and x["workers"] == r["workers"]
                   and x["method"] == "per_file")
        r["speedup_vs_per_file"] = r["graphs_per_s"] / ref["graphs_per_s"]
        mem = next((x for x in rows if x["graphs"] == r["graphs"] and x["workers"] == r["workers"]
                    and x["method"] == "pyg_inmemory"), None)
        r["vs_inmemory"] = r["graphs_per_s"] / mem["graphs_per_s"] if mem else float("nan")
        r["rss_vs_inmemory"] = r["peak_tree_rss_mb"] / mem["peak_tree_rss_mb"] if mem else float("nan")
        r["data_vs_inmemory"] = r["data_mb"] / mem["data_mb"] if mem else float("nan")
    print_table(
        f"DataLoader over {n_graphs} random graphs: cold = first pass after evicting the files it reads, warm = median "
        f"of the {passes - 1} passes after it (fresh process per row)",
        ["graphs", "loader", "workers", "batches", "warm graphs/s", "cold graphs/s", "× per-file (warm)",
         "× in-memory (warm)", "peak tree RSS MB", "RSS / in-memory", "data MB", "data / in-memory",
         "peak tree RssAnon MB", "load avg"],
        [[r["graphs"], r["method"], r["workers"], r["batches"], r["graphs_per_s"], r["cold_graphs_per_s"],
          r["speedup_vs_per_file"], r["vs_inmemory"], r["peak_tree_rss_mb"], r["rss_vs_inmemory"], r["data_mb"],
          r["data_vs_inmemory"], r["peak_tree_anon_mb"], r["loadavg"]] for r in rows],
    )
    return {"rows": rows}


# ---------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child-open":
        _child_open(argv[1])
        return 0
    if argv and argv[0] == "--child-loader":
        _child_loader(argv[1])
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default=None, help="chgnet store (e.g. bench_convert's --store-out); built if absent")
    ap.add_argument("--radius-store", default=None, help="radius store; built from --source if absent")
    ap.add_argument("--radius-structures", default=None,
                    help="structure-only radius store (graph_edges=device); built from --source if absent")
    ap.add_argument("--source", default=DEFAULT_SOURCE)
    ap.add_argument("--build-n", type=int, default=None, help="items for a chgnet store built here (default all)")
    ap.add_argument("--radius-n", type=int, default=20_000, help="items for a radius store built here")
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--sections", default=",".join(SECTIONS))
    ap.add_argument("--open-repeats", type=int, default=7)
    ap.add_argument("--reads", type=int, default=5000)
    ap.add_argument("--files", type=int, default=2000, help="per-graph torch.save files for the read anchor")
    ap.add_argument("--loader-graphs", type=int, default=5000)
    ap.add_argument("--loader-workers", default="0,2")
    ap.add_argument("--passes", type=int, default=4, help="passes per configuration: 1 cold, then warm ones")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args(argv)

    sections = [s for s in args.sections.split(",") if s]
    kinds = [k for k in args.kinds.split(",") if k]
    with BenchRun(args.json_out, args.workdir, "ck-bench-loader-") as run:
        results, save, workdir = run.results, run.save, run.workdir
        stores = {}
        if "chgnet" in kinds:
            stores["chgnet"] = build_if_missing(args.store, "chgnet", args.source, args.build_n, workdir)
        if "radius" in kinds:
            stores["radius"] = build_if_missing(args.radius_store, "radius", args.source, args.radius_n, workdir)
            device_store = build_if_missing(args.radius_structures, "radius", args.source, args.radius_n, workdir,
                                            edges="device")
            results["radius_structures"] = device_store
        results["stores"] = stores
        if "open" in sections:
            results["open"] = bench_open(stores, args.open_repeats)
            save()
        if "read" in sections:
            results["read"] = bench_read(stores, args.reads, args.files, workdir, args.seed)
            save()
        if "loader" in sections:
            results["loader"] = bench_loader(stores, args.loader_graphs,
                                             [int(w) for w in args.loader_workers.split(",")], args.passes, workdir,
                                             args.seed, results.get("radius_structures"))
            save()
    return 0

if __name__ == "__main__":
    assert REPO.exists()
    raise SystemExit(main())
