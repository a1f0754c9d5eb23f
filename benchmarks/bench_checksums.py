"""What checking every shard's sha256 costs (issue 27): on a store (the 132,752-structure one of ``scale.py``), cold.

Three timed passes, each in a fresh interpreter with the store's pages evicted from the page cache first:

``hash``      every shard's sha256 against the manifest, in the order a conversion that reuses the store checks
              them (``convert``/``run``: what a resumed run pays before training);
``epoch``     open + one pass over every graph through colab_kit's DataLoader (the Plan's budget), as the first
              epoch of ``train --store`` reads it: each shard is checked the first time the process maps it;
``no-check``  the same pass with the check switched off (the process's record of checked files is made to say
              every shard was checked): the pass before this issue.

``epoch - no-check`` is the cost in the first epoch; later epochs pay nothing (a shard is checked once per
process). The figures go to ``--json-out`` and are printed as a Markdown table.

Usage::

    python benchmarks/scale.py --stages generate,convert      # builds /tmp/ckscale/store-chgnet (once)
    python benchmarks/bench_checksums.py --store /tmp/ckscale/store-chgnet --repeats 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

CHILD = r"""
import json, sys, time
from pathlib import Path
sys.path.insert(0, {bench!r})
from bench_loader import evict
store_dir, what = {store!r}, {what!r}
evict(store_dir)
t0 = time.perf_counter()
if what == "hash":
    from colab_kit.util.files import has_sha256
    m = json.loads((Path(store_dir) / "manifest.json").read_text())
    bad = [e["file"] for e in m["shards"] if not has_sha256(Path(store_dir) / e["file"], e["sha256"])]
    assert not bad, bad
    n = m["n_graphs"]
else:
    from colab_kit.util.files import mark_checked
    from colab_kit.plan.machine import detect
    from colab_kit.loader.batching import BudgetBatchSampler, make_loader
    from colab_kit.plan.planner import make_plan
    from colab_kit.store.format import GraphStore
    import numpy as np
    store = GraphStore(store_dir)
    if what == "no-check":
        for e in store.shards:  # this process "has checked" every shard: the pass as it was before the check
            mark_checked(Path(store_dir) / e.file, e.sha256)
    plan = make_plan(detect(), "full", graph_kind=store.graph_kind)
    atoms, edges = store.sizes()
    sampler = BudgetBatchSampler(np.arange(len(store)), atoms, edges, plan.batch_atoms, plan.batch_edges,
                                 plan.batch_size, seed=0)
    n = 0
    for batch in make_loader(store, sampler):
        n += len(batch[0]) if isinstance(batch, tuple) else int(batch.num_graphs)
print(json.dumps({{"what": what, "seconds": time.perf_counter() - t0, "graphs": n}}))
"""


def run(store: Path, what: str) -> dict:
    code = CHILD.format(bench=str(Path(__file__).resolve().parent), store=str(store), what=what)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True, type=Path)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args()
    manifest = json.loads((args.store / "manifest.json").read_text())
    size = sum(e["bytes"] for e in manifest["shards"])
    results: dict[str, list[float]] = {"hash": [], "epoch": [], "no-check": []}
    graphs = 0
    for _ in range(args.repeats):  # interleaved, so that the machine's load falls on each alike
        for what in ("no-check", "epoch", "hash"):
            rec = run(args.store, what)
            results[what].append(rec["seconds"])
            graphs = max(graphs, rec["graphs"])
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"store {args.store}: {manifest['n_graphs']:,} graphs, {len(manifest['shards'])} shards, "
          f"{size / 2**30:.2f} GB; cold page cache; median of {args.repeats} ({time.strftime('%Y-%m-%d')})")
    print("| pass | seconds (median) | runs |")
    print("|---|---|---|")
    for what, label in (("hash", "sha256 of every shard (a conversion reusing the store)"),
                        ("no-check", "open + one loader pass, no check (before)"),
                        ("epoch", "open + one loader pass, each shard checked on first map (now)")):
        print(f"| {label} | {med[what]:.1f} | {', '.join(f'{x:.1f}' for x in results[what])} |")
    print(f"first-epoch cost of the check: {med['epoch'] - med['no-check']:+.1f} s "
          f"({(med['epoch'] / med['no-check'] - 1) * 100:+.0f} % of the read pass); sha256 at "
          f"{size / 2**20 / med['hash']:.0f} MB/s cold")
    if args.json_out:
        args.json_out.write_text(json.dumps({"results": results, "median": med, "bytes": size,
                                             "graphs": manifest["n_graphs"]}, indent=1))


if __name__ == "__main__":
    main()
