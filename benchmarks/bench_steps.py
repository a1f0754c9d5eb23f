"""Per model: graphs/s the loader delivers vs graphs/s one training step consumes, on the same batches.

For each model, a store of its graph kind is built from the first ``--n`` shipped structures; the same batches
(colab_kit's ``BudgetBatchSampler`` at the Plan's static budget, capped at ``--batch-size`` graphs) are
  loader: read and assembled by colab_kit's DataLoader (workers 0; warm: the store was just read),
  step:   moved to the device, forward, MSE loss, backward, AdamW step (the median step of ``--steps`` after 2
          warm-up steps; CHGNet/alignn/matgl steps include their graph objects' own work).
``loader / step`` > 1 means the loader keeps up with training on this device. Runs unchanged on a GPU (``--device
cuda``), where the step is much faster and the ratio is the figure that matters.
``--feed`` adds, per model, graphs/s of the three together on a fresh pass (read, move, step), with the next batch
moved while the current one steps (``colab_kit.loader.device_feed.ahead``: a side stream on CUDA) and without.

Usage::

    python benchmarks/bench_steps.py --models cgcnn,comformer,chgnet --json-out bench_steps.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import BenchRun, median, print_table  # noqa: E402

DEFAULT_MODELS = ("cgcnn", "comformer", "chgnet", "m3gnet", "tensornet", "alignn")
SHIPPED = Path(__file__).resolve().parents[1] / "colab_kit" / "data" / "mp_eform_cgcnn_3000_matbench.json.gz"


def bench_model(name: str, n: int, batch_size: int, steps: int, device: str, workdir: Path, edges: str,
                feed: bool = False) -> dict:
    import torch

    from colab_kit import registry
    from colab_kit.graphs import get_converter
    from colab_kit.loader.batching import BudgetBatchSampler, make_loader
    from colab_kit.models import build_model
    from colab_kit.plan.machine import detect
    from colab_kit.plan.planner import make_plan
    from colab_kit.store.build import build_store
    from colab_kit.store.format import GraphStore

    kind = registry.model(name).graph_kind
    plan = make_plan(detect(), "quick", model=name, device=device, batch_size=batch_size,
                     **({"graph_edges": edges} if kind == "radius" else {}))
    out = workdir / f"store-{kind}-{plan.graph_edges}"
    if not (out / "manifest.json").exists():
        build_store(SHIPPED, out, get_converter(kind, cutoff=plan.cutoff, bond_cutoff=plan.bond_cutoff,
                                                max_neighbors=plan.max_neighbors, edges=plan.graph_edges),
                    limit=n, workers=2, progress=False, on_bad_structure="skip")
    store = GraphStore(out)
    atoms, edges_per = store.sizes()
    sampler = BudgetBatchSampler(np.arange(len(store)), atoms, edges_per, plan.batch_atoms, plan.batch_edges,
                                 plan.batch_size, seed=0)
    n_graphs = sum(len(b) for b in sampler)
    loader = make_loader(store, sampler)
    for _ in loader:  # warm the page cache and the store index
        pass
    t = time.perf_counter()
    batches = list(loader)
    t_load = time.perf_counter() - t
    torch.manual_seed(0)
    dev = torch.device(device)
    y = store.targets()
    model = build_model(name, float(y.mean()), float(y.std()), store.params, plan.model_options).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times, graphs = [], []
    for k, batch in enumerate(batches[: steps + 2]):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        b = model.to_device(batch, dev)
        loss = torch.nn.functional.mse_loss(model(b), model.targets(b))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()
        if k >= 2:
            times.append(time.perf_counter() - t)
            graphs.append(model.size(batch)[0])
    step_gps = float(np.sum(graphs) / np.sum(times))
    load_gps = n_graphs / t_load
    fed = {}
    if feed:  # the live loader, the copy and the step together, the next batch moved ahead on a side stream or not
        for how in ("ahead", "plain"):
            fed[f"feed_{how}_graphs_per_s"] = _fed_rate(loader, model, opt, dev, steps, how == "ahead")
    return {"model": name, "graphs": kind, "edges": plan.graph_edges, "device": device, "n_graphs": n_graphs,
            "batches": len(batches), "graphs_per_batch": n_graphs / len(batches), "loader_graphs_per_s": load_gps,
            "step_graphs_per_s": step_gps, "median_step_s": median(times), "loader_vs_step": load_gps / step_gps, **fed}


def _fed_rate(loader: Any, model: Any, opt: Any, dev: Any, steps: int, ahead: bool) -> float:
    """Graphs/s of read + move + step over the first ``steps`` batches of a fresh pass of ``loader``; with ``ahead``
    each next batch is moved by :func:`colab_kit.loader.device_feed.ahead` (a side stream on CUDA)."""
    import torch

    from colab_kit.loader import device_feed

    def move(b: Any) -> Any:
        return model.to_device(b, dev, non_blocking=dev.type == "cuda")

    pairs = device_feed.ahead(loader, move, dev) if ahead else ((b, move(b)) for b in loader)
    n, t = 0, time.perf_counter()
    for k, (batch, moved) in enumerate(pairs):
        if k == steps:
            break
        loss = torch.nn.functional.mse_loss(model(moved), model.targets(moved))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += model.size(batch)[0]
    loss.item()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS))
    ap.add_argument("--n", type=int, default=800, help="shipped structures per store")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--edges", default="stored,device", help="radius graphs: stored and/or device")
    ap.add_argument("--feed", action="store_true", help="also: read + move + step graphs/s with the side-stream "
                    "feed (colab_kit.loader.device_feed) on and off")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    with BenchRun(args.json_out, args.workdir, "ck-bench-steps-") as run:
        rows = []
        for name in [m for m in args.models.split(",") if m]:
            for edges in args.edges.split(",") if name == "cgcnn" else ["stored"]:
                r = bench_model(name, args.n, args.batch_size, args.steps, args.device, run.workdir, edges, args.feed)
                rows.append(r)
                print(f"{name} ({r['edges']} edges): loader {r['loader_graphs_per_s']:,.0f} graphs/s, step "
                      f"{r['step_graphs_per_s']:,.1f} graphs/s", flush=True)
                run.results["rows"] = rows
                run.save()
        print_table(f"Loader vs training step on {args.device}, same batches (1 torch thread)",
                    ["model", "graphs", "edges", "graphs/batch", "loader graphs/s", "step graphs/s", "loader / step"],
                    [[r["model"], r["graphs"], r["edges"], r["graphs_per_batch"], r["loader_graphs_per_s"],
                      r["step_graphs_per_s"], r["loader_vs_step"]] for r in rows])
        if args.feed:
            print_table(f"Read + move + step on {args.device}: next batch moved ahead (side stream on CUDA) or not",
                        ["model", "edges", "ahead graphs/s", "plain graphs/s", "ahead / plain"],
                        [[r["model"], r["edges"], r["feed_ahead_graphs_per_s"], r["feed_plain_graphs_per_s"],
                          r["feed_ahead_graphs_per_s"] / r["feed_plain_graphs_per_s"]] for r in rows])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
