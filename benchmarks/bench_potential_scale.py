"""Peak memory of a potential's conversion and training against the number of frames: MPtrj-shaped frames
(``mptrj_like.py``, CHGNet's MPtrj JSON layout, mean ~30 atoms) at each ``--sizes``, converted to CHGNet graphs
with their labels (``convert --task potential``), then CHGNet fine-tuned on the store for ``--steps`` optimiser
steps (an epoch of 400,000 CHGNet frames is days on a 2-core CPU: the steps are the epoch's first, with the whole
store's split, sampler and loaders in place, which is what could grow with the frame count).

Each stage is a subprocess watched by the harness: peak RSS of its process tree, wall time. Memory flat in the
number of frames means the peaks at every size agree within the run-to-run noise.

Usage::

    python benchmarks/bench_potential_scale.py --sizes 25000,100000 --steps 30 --out /tmp/potential_scale.json
"""

from __future__ import annotations

import argparse
import sys
import textwrap

from harness import GB, REPO, BenchRun, dir_bytes, print_table, run_watched, tail

TRAIN = textwrap.dedent("""
    import sys, json
    from colab_kit.plan import detect, make_plan
    from colab_kit.store import GraphStore
    from colab_kit.training import fit

    store_dir, out, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    store = GraphStore(store_dir)
    plan = make_plan(detect(), "full", model="chgnet", task="potential", epochs=1, checkpoint_minutes=1e3)
    polls = {"n": 0}

    def stop():
        polls["n"] += 1
        return polls["n"] > steps

    res = fit(store, plan, out, progress=False, should_stop=stop)
    print(json.dumps({"status": res.status, "graphs": len(store), "budget": res.budget.__dict__}))
""")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="25000,100000")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--ceiling-gb", type=float, default=20.0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    with BenchRun(args.out, args.workdir, "ck-potential-scale-", benchmark="bench_potential_scale",
                  sizes=args.sizes, steps=args.steps) as bench:
        res, work = bench.results, bench.workdir
        rows = []
        for n in (int(s) for s in args.sizes.split(",")):
            data = work / f"mptrj_{n}.json.gz"
            gen = run_watched([sys.executable, str(REPO / "benchmarks" / "mptrj_like.py"), "--n", str(n), "--out",
                               str(data), "--no-progress"], ceiling=args.ceiling_gb * GB, name=f"gen-{n}",
                              logdir=work / "logs")
            if gen["returncode"] != 0:
                raise SystemExit(f"mptrj_like --n {n} failed:\n{tail(gen['stderr'])}")
            store = work / f"store_{n}"
            conv = run_watched([sys.executable, "-m", "colab_kit", "convert", str(data), "--task", "potential",
                                "--out", str(store), "--workers", str(args.workers)],
                               ceiling=args.ceiling_gb * GB, name=f"convert-{n}", logdir=work / "logs")
            if conv["returncode"] != 0:
                raise SystemExit(f"convert of {n} frames failed:\n{tail(conv['stderr'])}")
            train = run_watched([sys.executable, "-c", TRAIN, str(store), str(work / f"train_{n}"), str(args.steps)],
                                ceiling=args.ceiling_gb * GB, name=f"train-{n}", logdir=work / "logs")
            if train["returncode"] != 0:
                raise SystemExit(f"training on {n} frames failed:\n{tail(train['stderr'])}")
            res[str(n)] = {"generate": {k: gen[k] for k in ("wall_s", "peak_tree_rss_mb")},
                           "convert": {k: conv[k] for k in ("wall_s", "peak_tree_rss_mb")},
                           "train": {k: train[k] for k in ("wall_s", "peak_tree_rss_mb")},
                           "store_bytes": dir_bytes(store)[0], "convert_tail": tail(conv["stderr"], 3)}
            bench.save()
            rows.append([n, round(conv["wall_s"]), round(conv["peak_tree_rss_mb"]), round(dir_bytes(store)[0] / 1e6),
                         round(train["wall_s"]), round(train["peak_tree_rss_mb"])])
            print(f"{n} frames: convert {conv['wall_s']:.0f} s, peak {conv['peak_tree_rss_mb']:.0f} MB; "
                  f"{args.steps} steps: {train['wall_s']:.0f} s, peak {train['peak_tree_rss_mb']:.0f} MB", flush=True)
        print_table(f"MPtrj-shaped frames: peak RSS of conversion and of {args.steps} training steps (CHGNet efs)",
                    ["frames", "convert s", "convert peak MB (tree)", "store MB", "train s", "train peak MB"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
