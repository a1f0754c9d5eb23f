"""CPU training on a busy machine: torch's thread count against the cores other work leaves free.

A store of CGCNN radius graphs is built from the first ``--n`` shipped structures; then ``--busy`` processes that
spin on the CPU are started (other notebooks, a conversion, a second run), and the same ``train`` command runs for
``--epochs`` epochs with ``--set threads=T`` for each T in ``--threads``, interleaved ``--repeats`` times. Printed:
the training graphs/s of each (median), and the ratio to torch's default (one thread per CPU). The Plan's rule
(``threads`` = CPUs minus the 1-minute load average, at least 1) picks the row that should be fastest.

Usage::

    python benchmarks/bench_threads.py --busy 4 --threads 2,1 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHIPPED = Path(__file__).resolve().parents[1] / "colab_kit" / "data" / "mp_eform_cgcnn_3000_matbench.json.gz"


def _spin() -> None:
    while True:
        pass


def _train(store: Path, out: Path, threads: int, epochs: int) -> float:
    """Training graphs/s of one ``train`` command (its metrics: graphs seen / seconds of its epochs)."""
    env = {**os.environ}
    env.pop("OMP_NUM_THREADS", None)
    cmd = [sys.executable, "-m", "colab_kit", "train", "--store", str(store), "--model", "cgcnn", "--out", str(out),
           "--set", f"threads={threads}", "--set", f"epochs={epochs}", "--set", "calibrate=false",
           "--set", "batch_atoms=4000", "--set", "batch_edges=60000", "--set", "batch_size=32"]
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    n_train = round(0.8 * int(json.loads((store / "manifest.json").read_text())["n_graphs"]))
    return n_train * len(history) / sum(h["seconds"] for h in history)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--busy", type=int, default=4, help="spinning processes (load on the machine)")
    ap.add_argument("--threads", default="2,1")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from colab_kit.graphs import get_converter
    from colab_kit.store.build import build_store

    work = Path(tempfile.mkdtemp(prefix="bench_threads-"))
    store = work / "store"
    build_store(SHIPPED, store, get_converter("radius"), limit=args.n, workers=1, progress=False)
    threads = [int(t) for t in args.threads.split(",")]
    spinners = [mp.Process(target=_spin, daemon=True) for _ in range(args.busy)]
    for p in spinners:
        p.start()
    try:
        time.sleep(2)
        rates: dict[int, list[float]] = {t: [] for t in threads}
        for r in range(args.repeats):
            for t in threads:  # interleaved: the load is the same for each
                rates[t].append(_train(store, work / f"out-{t}-{r}", t, args.epochs))
        load = os.getloadavg()[0]
    finally:
        for p in spinners:
            p.terminate()
    base = statistics.median(rates[threads[0]])
    print(f"{os.cpu_count()} CPUs, {args.busy} spinning processes (load {load:.1f} at the end), CGCNN on {args.n} "
          f"structures, {args.epochs} epochs, {args.repeats} interleaved repeats")
    print("| threads | training graphs/s (median) | runs | vs threads=" + str(threads[0]) + " |")
    print("|---|---|---|---|")
    for t in threads:
        med = statistics.median(rates[t])
        print(f"| {t} | {med:.1f} | {', '.join(f'{x:.1f}' for x in rates[t])} | {med / base:.2f}x |")


if __name__ == "__main__":
    main()
