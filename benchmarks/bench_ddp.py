"""Data-parallel scaling: the same ``train`` command on 1 rank and on N ranks under torchrun.

Contenders (each a fresh ``torchrun`` launch of ``python -m colab_kit train`` on one store, same Plan settings):

``1 rank x T threads``    torchrun --nproc_per_node 1 (the baseline; T = --threads, default 1)
``N ranks x T threads``   torchrun --nproc_per_node N: DistributedDataParallel (Gloo on CPU, NCCL on CUDA)
``1 rank x N*T threads``  on CPU only: the same cores given to one process's intra-op threads instead

Each rank trains its share of every epoch's batches (the batch budget is per rank: one optimiser step covers
N batches, so the global batch is N times larger, as in any DDP recipe). An epoch's time is rank 0's compute time
for that epoch's training *and* validation (``seconds`` in metrics.jsonl); the first epoch is warm-up and is left
out of the median. graphs/s = training graphs / median epoch seconds. The ratio column is graphs/s against the
1-rank baseline with the same threads per rank: the scaling. The final validation MAE shows the N-rank run learns
as well (it is not the same number: its steps are N times larger).

On a GPU host the script runs unchanged: ranks go one per GPU (``--ranks`` above the GPU count is refused), and
the CPU-only row is skipped.

Usage::

    python benchmarks/bench_ddp.py --source colab_kit/data/mp_eform_cgcnn_3000_matbench.json.gz --model cgcnn \\
        --ranks 1,2 --epochs 4 [--limit 3000] [--json-out ddp.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def launch(store: Path, out: Path, ranks: int, threads: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", "-m", "colab_kit",
           "train", "--store", str(store), "--out", str(out), "--model", args.model, "--set", f"epochs={args.epochs}",
           "--set", f"patience={args.epochs}", "--set", "workers=0", "--set", f"batch_size={args.batch_size}"]
    for s in args.set or []:
        cmd += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"{ranks} rank(s) x {threads} thread(s) failed:\n{res.stderr[-3000:]}")
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    seconds = [h["seconds"] for h in history[1:]] or [history[0]["seconds"]]
    return {"ranks": ranks, "threads": threads, "epoch_seconds": [h["seconds"] for h in history],
            "median_epoch_s": statistics.median(seconds), "final_val_mae": history[-1]["val_mae"],
            "best_val_mae": min(h["val_mae"] for h in history), "wall_s": round(wall, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", default=str(ROOT / "colab_kit/data/mp_eform_cgcnn_3000_matbench.json.gz"))
    ap.add_argument("--model", default="cgcnn")
    ap.add_argument("--ranks", default="1,2", help="comma-separated rank counts; the first is the baseline")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=32, help="graphs per batch per rank (upper bound)")
    ap.add_argument("--limit", type=int, default=3000)
    ap.add_argument("--set", action="append", help="extra plan settings for every contender, KEY=VALUE")
    ap.add_argument("--work", help="folder for the store and runs (default: a temporary one)")
    ap.add_argument("--json-out")
    args = ap.parse_args()

    import torch

    from colab_kit import registry
    from colab_kit.graphs import get_converter
    from colab_kit.store.build import build_store
    from colab_kit.store.format import GraphStore

    ranks = [int(r) for r in args.ranks.split(",")]
    cuda = torch.cuda.is_available()
    if cuda and max(ranks) > torch.cuda.device_count():
        sys.exit(f"--ranks {args.ranks}: this host has {torch.cuda.device_count()} GPU(s), one rank each")
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_ddp-"))
    store_dir = work / "store"
    build_store(args.source, store_dir, get_converter(registry.model_graph_kind(args.model)), limit=args.limit,
                workers=2, progress=False)
    store = GraphStore(store_dir)
    n_train = round(0.8 * len(store))
    rows = []
    contenders = [(r, args.threads) for r in ranks]
    if not cuda and max(ranks) > 1:
        contenders.append((1, max(ranks) * args.threads))
    for r, t in contenders:
        row = launch(store_dir, work / f"r{r}-t{t}", r, t, args)
        row["graphs_per_s"] = n_train / row["median_epoch_s"]
        rows.append(row)
        print(f"  {r} rank(s) x {t} thread(s): {row['median_epoch_s']:.2f} s/epoch, {row['graphs_per_s']:.0f} graphs/s",
              file=sys.stderr)
    base = rows[0]["graphs_per_s"]
    device = torch.cuda.get_device_name(0) if cuda else f"CPU, {os.cpu_count()} cores"
    print(f"\n{args.model} on {len(store)} graphs ({n_train} train), {args.epochs} epochs, batch <= {args.batch_size} "
          f"graphs per rank; {device}; torch {torch.__version__}\n")
    print("| contender | s / epoch (median, epochs 2+) | graphs/s | vs 1 rank | best val MAE | final val MAE |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['ranks']} rank(s) x {row['threads']} thread(s) | {row['median_epoch_s']:.2f} | "
              f"{row['graphs_per_s']:.0f} | {row['graphs_per_s'] / base:.2f}x | {row['best_val_mae']:.4f} | "
              f"{row['final_val_mae']:.4f} |")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"model": args.model, "n_graphs": len(store), "device": device,
                                                   "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
