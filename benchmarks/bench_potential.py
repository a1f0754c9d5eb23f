"""colab_kit's potential training side by side with the anchors' own pipelines: same frames, same split, same
epochs, batch size and learning rate.

1. ``--n`` frames drawn (seeded) from ``--frames`` (at most ``--max-atoms`` atoms each: CHGNet's own Trainer needs
   about 2 GB per 108-atom cell in a training step on a CPU), written as one extxyz file;
2. ``python -m colab_kit run --task potential --model chgnet`` (and ``--model m3gnet``) on it;
3. the split that run used (its store's ids are the frames' indices), written as JSON;
4. ``benchmarks/potential_anchors.py --anchor chgnet`` (CHGNet's ``Trainer(targets="efs")``, its notebook's recipe)
   and ``--anchor matgl`` (matgl's ``PotentialLightningModule``, M3GNet from scratch) on that split.

Every run is a subprocess watched by the harness (peak RSS of its process tree). Printed: test energy / force /
stress MAE (colab_kit: its best-validation weights; the anchors: the weights after the last epoch, and CHGNet's
Trainer's own best-validation-energy checkpoint), seconds per epoch, peak RSS, and colab_kit's ratios to each anchor.

Seed spread: ``--train-seed K`` runs both sides again with seed K (colab_kit's split, initialisation and batch
order; the anchors get that split and K as their own seed), on the same frames.

Usage::

    python benchmarks/bench_potential.py --n 200 --epochs 3 --batch-size 4 --out /tmp/bench_potential.json
    python benchmarks/bench_potential.py --n 200 --epochs 3 --batch-size 4 --train-seed 1 --out /tmp/bench_potential_s1.json
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
from harness import GB, REPO, BenchRun, print_table, read_json, run_watched, tail, write_json_atomic

MLEARN = REPO.parent / "shared" / "data" / "mlearn_unary_1566" / "mlearn_train.extxyz.gz"


def subset(path: Path, n: int, max_atoms: int, seed: int, out: Path) -> int:
    import ase.io

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        frames = ase.io.read(io.StringIO(f.read()), ":", format="extxyz")
    pool = [a for a in frames if len(a) <= max_atoms]
    pick = np.random.default_rng(seed).choice(len(pool), size=min(n, len(pool)), replace=False)
    ase.io.write(out, [pool[i] for i in sorted(pick)], format="extxyz")
    return len(pick)


def colab_kit_run(model: str, data: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "colab_kit", "run", "--task", "potential", "--model", model, "--mode", "quick",
           "--data", str(data), "--work-dir", str(work), "--set", f"epochs={args.epochs}",
           "--set", f"batch_size={args.batch_size}", "--set", f"lr={args.lr}", "--set", "persist_dir=null",
           "--set", f"threads={args.threads}", "--set", "patience=1000", "--set", f"seed={args.train_seed}"]
    rec = run_watched(cmd, ceiling=args.ceiling_gb * GB, name=f"colab_kit-{model}", logdir=work / "logs")
    if rec["returncode"] != 0:
        raise SystemExit(f"colab_kit {model} failed:\n{tail(rec['stderr'])}")
    run = next(p for p in work.iterdir() if p.is_dir() and p.name.endswith("-potential-quick"))
    metrics = read_json(run / "report" / "metrics.json")
    test = metrics["potential"]["test"]
    return {"run": str(run), "test": {"energy": test["energy_mae"], "force": test["force_mae"],
                                      "stress": test.get("stress_mae")},
            "sec_per_epoch": statistics.median(h["seconds"] for h in metrics["history"]),
            "peak_rss_mb": rec["peak_tree_rss_mb"], "wall_s": rec["wall_s"], "budget": metrics["budget"]}


def split_of(run: Path) -> dict[str, list[int]]:
    """The frame indices of the run's train / val / test split (an extxyz frame's id is its index)."""
    from colab_kit.loader import splits_for
    from colab_kit.plan import Plan
    from colab_kit.store import GraphStore

    store = GraphStore(run / "store")
    plan = Plan.from_dict(json.loads((run / "plan.json").read_text()))
    ids = store.ids()
    return {k: [int(ids[i]) for i in v] for k, v in splits_for(store, plan).items()}


def anchor(name: str, data: Path, split: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    out = work / f"anchor-{name}.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "potential_anchors.py"), "--anchor", name, "--frames", str(data),
           "--split", str(split), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
           "--lr", str(args.lr), "--threads", str(args.threads), "--seed", str(args.train_seed), "--out", str(out)]
    rec = run_watched(cmd, ceiling=args.ceiling_gb * GB, name=f"anchor-{name}", logdir=work / "logs")
    if rec["returncode"] != 0:
        return {"failed": rec["killed_by"] or rec["returncode"], "peak_rss_mb": rec["peak_tree_rss_mb"],
                "stderr": tail(rec["stderr"], 8)}
    res = read_json(out)
    best = res.get("test_trainer_model", res["test"])
    return {"test": {"energy": res["test"]["energy_mae_mev_atom"], "force": res["test"]["force_mae_mev_A"],
                     "stress": res["test"]["stress_mae_gpa"]},
            "test_best": {"energy": best["energy_mae_mev_atom"], "force": best["force_mae_mev_A"],
                          "stress": best["stress_mae_gpa"]},
            "sec_per_epoch": res["sec_per_epoch"], "peak_rss_mb": rec["peak_tree_rss_mb"], "wall_s": rec["wall_s"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=Path, default=MLEARN)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--max-atoms", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0, help="which frames are drawn")
    ap.add_argument("--train-seed", type=int, default=0,
                    help="colab_kit's seed (its split, initialisation and order); the anchors get that split and "
                         "this seed for their own torch / data order")
    ap.add_argument("--ceiling-gb", type=float, default=20.0)
    ap.add_argument("--pairs", default="chgnet,m3gnet", help="chgnet (vs CHGNet's Trainer), m3gnet (vs matgl's)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()

    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("out", "workdir")}
    with BenchRun(args.out, args.workdir, "ck-bench-potential-", benchmark="bench_potential", **settings) as bench:
        res, work = bench.results, bench.workdir
        data = work / "frames.extxyz"
        res["n_frames"] = subset(args.frames, args.n, args.max_atoms, args.seed, data)
        rows, ratios = [], []
        for pair in args.pairs.split(","):
            ours = colab_kit_run(pair, data, work / f"ck-{pair}", args)
            split = work / f"split-{pair}.json"
            write_json_atomic(split, split_of(Path(ours["run"])))
            theirs = anchor("chgnet" if pair == "chgnet" else "matgl", data, split, work, args)
            res[pair] = {"colab_kit": ours, "anchor": theirs}
            bench.save()
            name = "CHGNet Trainer" if pair == "chgnet" else "matgl PotentialLightningModule"
            rows.append([f"colab_kit {pair}", *ours["test"].values(), ours["sec_per_epoch"], ours["peak_rss_mb"]])
            if "failed" in theirs:
                rows.append([name, "failed", theirs["failed"], "", "", theirs["peak_rss_mb"]])
                continue
            rows.append([f"{name} (last epoch)", *theirs["test"].values(), theirs["sec_per_epoch"], theirs["peak_rss_mb"]])
            rows.append([f"{name} (its best-val)", *theirs["test_best"].values(), "", ""])
            ratios.append([pair, theirs["sec_per_epoch"] / ours["sec_per_epoch"],
                           theirs["peak_rss_mb"] / ours["peak_rss_mb"]])
        print_table(f"test MAE on {res['n_frames']} frames ({args.epochs} epochs, batch {args.batch_size}, lr {args.lr})",
                    ["pipeline", "E meV/atom", "F meV/Å", "S GPa", "s/epoch", "peak RSS MB"], rows)
        print_table("colab_kit against the anchor", ["pair", "speed-up per epoch", "anchor RSS / colab_kit RSS"], ratios)
        res["ratios"] = ratios
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
