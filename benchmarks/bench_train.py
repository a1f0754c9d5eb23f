"""Training step rate on CPU: colab_kit's ``fit`` against CHGNet's own ``Trainer``, same model and data.

Contenders (each measured in a fresh interpreter, ``--child`` mode of this script, so peak RSS and caches are
its own):

``colab_kit fit (chgnet)``         ``colab_kit.training.trainer.fit`` with ``model=chgnet`` (pretrained CHGNet 0.3.0 plus
                                   colab_kit's 120-parameter affine head) on the CHGNet-graph store. The Plan is
                                   made by ``make_plan`` with overrides so that only the graph count limits a
                                   batch (``batch_size=B``, atom/edge budgets of 10^9, ``calibrate_budget=False``),
                                   ``workers=0``, one epoch; steps are timed with ``callbacks`` (event "step") and
                                   ``step_hook`` (batch ready), and ``should_stop`` ends the run after
                                   warmup + steps.
``chgnet Trainer (structure)``     ``chgnet.trainer.Trainer(model=CHGNet.load(), targets="e")`` fed by
                                   ``StructureData`` (CHGNet's documented path: each graph is converted with
                                   ``CrystalGraphConverter`` in ``__getitem__``, i.e. inside the timed steps) and
                                   ``collate_graphs``.
``chgnet Trainer (graph)``         the same Trainer fed by CrystalGraphs converted beforehand (an in-memory list
                                   with ``collate_graphs``): graph conversion excluded, the most favourable data path
                                   CHGNet's trainer can have.
``colab_kit fit (cgcnn)``          ``fit`` with ``model=cgcnn`` on the radius-graph store (no CHGNet anchor exists).

Both CHGNet anchors train on exactly the graphs colab_kit trains on, in the same batches and order (the
parent plans colab_kit's batches with its own sampler and hands the matching source records to the anchors).
CHGNet's Trainer is run through ``Trainer._train`` (one epoch over a loader of exactly warmup + steps batches;
``Trainer.train`` would add validation and checkpointing after the epoch). A step's time is the interval
between the ends of consecutive optimizer steps (``optimizer.register_step_post_hook`` for CHGNet, the "step"
callback for colab_kit): it includes fetching the batch, forward, loss, backward and the optimizer step, and
each trainer's per-step bookkeeping. The time until the batch is ready is reported separately as "data".
Since every CHGNet row trains the same batches, steps are also compared pairwise (anchor / colab_kit time of
the same step), which removes the spread from batch content. Before timing, the anchors run the same no-grad
forward passes over the first 16 batches that ``fit``'s ``init_output`` runs in its setup (``--no-prewarm``
turns that off).

Output: Markdown tables; with ``--json-out`` every per-step time and loss, the machine, and per contender its
name, model, steps timed, batch size, torch threads, median / p90 step seconds, graphs/s, ratios against each
anchor, setup seconds and peak RSS (``ru_maxrss`` of the child process).

Usage::

    python benchmarks/bench_train.py --source colab_kit/data/mp_eform_cgcnn_3000_matbench.json.gz \
        [--n 2000] [--steps 40] [--warmup 5] [--batch-size 16] [--models chgnet,cgcnn] \
        [--anchors structure,graph] [--workdir DIR] [--chgnet-store DIR] [--radius-store DIR] \
        [--json-out FILE] [--threads N] [--no-prewarm]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import REPO, BenchRun, anon_bytes, loadavg, median, print_table  # noqa: E402

DEFAULT_SOURCE = str(REPO / "colab_kit" / "data" / "mp_eform_cgcnn_3000_matbench.json.gz")
MODELS = ("chgnet", "cgcnn")
ANCHORS = ("structure", "graph")
BIG_BUDGET = 10**9  # atoms / edges per batch: never binds, so batches hold exactly --batch-size graphs
NAMES = {
    ("colab_kit", "chgnet"): "colab_kit fit (chgnet)",
    ("colab_kit", "cgcnn"): "colab_kit fit (cgcnn)",
    ("structure", "chgnet"): "chgnet Trainer (structure)",
    ("graph", "chgnet"): "chgnet Trainer (graph)",
}
DIFFERENCES = [
    "Same for all: CPU, torch.set_num_threads(N), batch = B graphs (the same graphs, batches and order for the "
    "three CHGNet rows), AdamW lr 1e-3 weight_decay 1e-4, MSE loss on the energy/target only, pretrained CHGNet "
    "0.3.0 with the same 412,431 trainable parameters (its AtomRef composition model frozen in both), no workers.",
    "colab_kit fit: adds a 120-parameter affine head (scale + per-element reference, fitted by least squares "
    "before training: `init_output`, 16 forward batches, counted in setup) and clips the gradient norm (5.0); "
    "its loss is MSE of target/std; reads graphs lazily from the mmapped store; tqdm off (progress=False); "
    "time-based checkpoints pushed out of the run (checkpoint_minutes=1e6).",
    "chgnet Trainer: driven through Trainer._train (Trainer.train = _train + validation + checkpoint per epoch); "
    "per step it also computes the energy MAE and calls .item() twice (loss, MAE), moves each graph with "
    "CrystalGraph.to(device) (a new CrystalGraph per graph, no copy on CPU), and steps the cosine LR schedule "
    "every tenth of the epoch; it prints one progress line at step 1.",
    "structure anchor: StructureData converts each structure with CrystalGraphConverter (fast algorithm) inside "
    "the step and builds zero force targets (n_atoms x 3) that the energy-only loss ignores. graph anchor: "
    "graphs converted before timing and held in RAM (upper bound for CHGNet's GraphData, which torch.loads "
    "one file per graph).",
    "Pre-warm: fit's init_output runs CHGNet forward (no grad) over the first 16 training batches before its "
    "first step; the anchors do the same untimed no-grad forward over the same 16 batches (unless --no-prewarm), "
    "so both processes have met the same tensor sizes before timing (without it only colab_kit would have run "
    "the first 16 batches, and the largest of them, once before timing them).",
]


# ---------------------------------------------------------------- child: one contender in a fresh interpreter

def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _step_stats(starts: list[float], ends: list[float], graphs: list[int], warmup: int) -> dict[str, Any]:
    """Per-step seconds from consecutive step ends (step k = ends[k] - ends[k-1]); the first ``warmup`` dropped."""
    step = [ends[k] - ends[k - 1] for k in range(warmup, len(ends))]
    data = [starts[k] - ends[k - 1] for k in range(warmup, len(ends))]
    g = graphs[warmup:len(ends)]
    return {"steps_timed": len(step), "step_s": step, "data_s": data, "graphs_timed": int(sum(g)),
            "graphs_per_step": g, "median_step_s": median(step), "p90_step_s": float(np.percentile(step, 90)),
            "mean_step_s": float(np.mean(step)), "median_data_s": median(data),
            "graphs_per_s": float(sum(g) / sum(step))}


def _param_change(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    import torch

    changed = sum(1 for k in before if not torch.equal(before[k], after[k].to(before[k].dtype)))
    num = sum(float((after[k].float() - before[k].float()).pow(2).sum()) for k in before) ** 0.5
    den = sum(float(before[k].float().pow(2).sum()) for k in before) ** 0.5
    return {"tensors_compared": len(before), "tensors_changed": changed, "rel_l2_change": num / max(den, 1e-30)}


def _child_colab_kit(cfg: dict[str, Any]) -> dict[str, Any]:
    import chgnet.model  # noqa: F401  (imports are not setup)
    import torch

    from colab_kit.loader.splits import load_or_make_splits
    from colab_kit.models import build_model
    from colab_kit.plan.machine import detect
    from colab_kit.store.format import GraphStore
    from colab_kit.training.trainer import fit, seed_everything

    if cfg["model"] == "cgcnn":
        import torch_geometric.nn  # noqa: F401

    total = cfg["warmup"] + cfg["steps"]
    store = GraphStore(cfg["store"])
    plan = _plan(detect(), cfg["model"], cfg["batch_size"])
    starts: list[float] = []
    ends: list[float] = []
    losses: list[float] = []
    graphs: list[int] = []
    ids: list[list[str]] = []

    def on_event(ev: dict[str, Any]) -> None:
        if ev["event"] == "step":
            ends.append(time.perf_counter())
            losses.append(float(ev["loss"]))
            graphs.append(int(ev["graphs"]))

    def hook(batch: Any) -> None:
        starts.append(time.perf_counter())
        if cfg["model"] == "chgnet":
            ids.append([g.graph_id for g in batch[0]])
        else:
            ids.append(list(getattr(batch, "graph_id", [])))

    out = Path(cfg["out_dir"])
    t0 = time.perf_counter()
    res = fit(store, plan, out, resume=False, progress=False, callbacks=[on_event],
              should_stop=lambda: len(ends) >= total, calibrate_budget=False, step_hook=hook)
    t_end = time.perf_counter()
    peak = _peak_rss_mb()
    anon = anon_bytes(os.getpid()) / 2**20
    if len(ends) < total:
        raise RuntimeError(f"fit ran only {len(ends)} of {total} steps (status {res.status}); use a larger --n")
    # did it train? trained weights (checkpoint written when should_stop fired) against the initial ones
    state = torch.load(out / "checkpoints" / "latest.pt", map_location="cpu", weights_only=True)["model"]
    seed_everything(plan.seed)  # fit seeds the same way right before building its model
    kwargs = {"cutoff": float(store.params.get("cutoff", 8.0))} if cfg["model"] == "cgcnn" else {}
    fresh = build_model(cfg["model"], **kwargs)
    trainable = {n: p.detach().clone() for n, p in fresh.named_parameters() if p.requires_grad}
    head = {"scale", "reference"}  # colab_kit's affine head: set by init_output before training, not compared
    before = {n: p for n, p in trainable.items() if n not in head}
    splits = load_or_make_splits(store, plan.seed)
    return {"setup_s": starts[0] - t0, "run_s": t_end - t0, "peak_rss_mb": peak, "rss_anon_end_mb": anon,
            "trainable_params": int(sum(p.numel() for p in trainable.values())), "losses": losses,
            "loss_units": "MSE of target/std (normalised)", "batch_ids": ids, "status": res.status,
            "train_graphs": int(len(splits["train"])), "store_graphs": len(store),
            "param_change": _param_change(before, {n: state[n] for n in before}),
            **_step_stats(starts, ends, graphs, cfg["warmup"])}


class _Stamped:
    """Iterates a DataLoader, stamping the moment each batch is handed to the trainer (``len`` passes through:
    ``Trainer._train`` uses it to step its LR schedule)."""

    def __init__(self, loader: Any, stamps: list[float], ids: list[list[str]], graphs: list[int]) -> None:
        self.loader, self.stamps, self.ids, self.graphs = loader, stamps, ids, graphs

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Any:
        for batch in self.loader:
            self.stamps.append(time.perf_counter())
            self.ids.append([str(g.mp_id) for g in batch[0]])
            self.graphs.append(len(batch[0]))
            yield batch


def _child_chgnet(cfg: dict[str, Any]) -> dict[str, Any]:
    import torch
    from chgnet.data.dataset import StructureData, collate_graphs
    from chgnet.graph import CrystalGraphConverter
    from chgnet.model import CHGNet
    from chgnet.trainer import Trainer
    from torch.utils.data import DataLoader, Dataset

    from colab_kit.sources import parse_structure

    total = cfg["warmup"] + cfg["steps"]
    from colab_kit.sources import RawItem

    with open(cfg["items"], encoding="utf-8") as f:
        items = [RawItem(**d) for d in json.load(f)]
    t = time.perf_counter()
    structures = [parse_structure(it) for it in items]
    parse_s = time.perf_counter() - t
    energies = [float(it.target) for it in items]
    ids = [it.id for it in items]

    t0 = time.perf_counter()
    model = CHGNet.load(use_device="cpu", verbose=False)
    trainer = Trainer(model=model, targets="e", optimizer="AdamW", learning_rate=cfg["lr"], weight_decay=1e-4,
                      scheduler="CosLR", criterion="MSE", epochs=1, use_device="cpu", torch_seed=0)
    convert_s = 0.0
    conv = CrystalGraphConverter(atom_graph_cutoff=6, bond_graph_cutoff=3)
    if cfg["anchor"] == "structure":
        dataset: Any = StructureData(structures, energies, [np.zeros((len(s), 3)) for s in structures],
                                     structure_ids=ids, shuffle=False)
    else:
        t = time.perf_counter()
        pairs = [(conv(s, graph_id=str(k), mp_id=ids[k]), {"e": torch.tensor(energies[k], dtype=torch.float32)})
                 for k, s in enumerate(structures)]
        convert_s = time.perf_counter() - t

        class Graphs(Dataset):
            def __len__(self) -> int:
                return len(pairs)

            def __getitem__(self, i: int) -> Any:
                return pairs[i]

        dataset = Graphs()
    # Pre-warm, mirroring colab_kit's init_output (no-grad forward passes over the first 16 training batches,
    # inside fit's setup): the same batches go once through the model, so both processes have seen the same
    # tensor sizes before timing (allocator state). The structure anchor warms on graphs of separately parsed
    # copies, so neither StructureData's cache nor pymatgen's per-Structure caches are pre-filled.
    n_pre = min(16, len(cfg["batches"])) if cfg["prewarm"] else 0
    t = time.perf_counter()
    with torch.no_grad():
        for b in cfg["batches"][:n_pre]:
            if cfg["anchor"] == "structure":
                gs = [conv(parse_structure(items[k]), graph_id=str(k), mp_id=ids[k]) for k in b]
            else:
                gs = [pairs[k][0] for k in b]
            model(gs, task="e")
    prewarm_s = time.perf_counter() - t
    loader = DataLoader(dataset, batch_sampler=cfg["batches"][:total], collate_fn=collate_graphs, num_workers=0)
    starts: list[float] = []
    ends: list[float] = []
    graphs: list[int] = []
    batch_ids: list[list[str]] = []
    losses: list[Any] = []
    trainer.optimizer.register_step_post_hook(lambda *_: ends.append(time.perf_counter()))
    trainer.criterion.register_forward_hook(lambda _m, _i, out: losses.append(out["loss"].detach()))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    trainer._train(_Stamped(loader, starts, batch_ids, graphs), 0)
    t_end = time.perf_counter()
    peak = _peak_rss_mb()
    anon = anon_bytes(os.getpid()) / 2**20
    after = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    return {"setup_s": starts[0] - t0 - convert_s, "convert_s": convert_s, "parse_s": parse_s,
            "prewarm_batches": n_pre, "prewarm_s": prewarm_s,
            "run_s": t_end - t0, "peak_rss_mb": peak, "rss_anon_end_mb": anon,
            "trainable_params": int(sum(p.numel() for p in before.values())),
            "losses": [float(x) for x in losses], "loss_units": "MSE of energy per atom (eV^2/atom^2)",
            "batch_ids": batch_ids, "param_change": _param_change(before, after),
            **_step_stats(starts, ends, graphs, cfg["warmup"])}


def child_main(cfg_path: str) -> int:
    cfg = json.loads(Path(cfg_path).read_text())
    import torch

    torch.set_num_threads(cfg["threads"])
    res = _child_colab_kit(cfg) if cfg["contender"] == "colab_kit" else _child_chgnet(cfg)
    res["torch_threads"] = torch.get_num_threads()
    Path(cfg["result"]).write_text(json.dumps(res))
    return 0


# ---------------------------------------------------------------- parent

def _plan(machine: Any, model: str, batch_size: int) -> Any:
    """The Plan colab_kit trains with: only the graph count limits a batch, one epoch, no loader workers."""
    from colab_kit.plan.planner import make_plan

    converter = "chgnet" if model == "chgnet" else "radius"
    return make_plan(machine, "debug", graph_kind=converter, model=model, device="cpu", batch_size=batch_size,
                     batch_atoms=BIG_BUDGET, batch_edges=BIG_BUDGET, workers=0, epochs=1, checkpoint_minutes=1e6)


def ensure_store(path: str | None, model: str, source: str, n: int, workdir: Path) -> tuple[str, float | None]:
    """The given store, or one of the first ``n`` items of ``source`` built in ``workdir`` (reused if there)."""
    from colab_kit.graphs import get_converter
    from colab_kit.store.build import build_store

    if path:
        return path, None
    kind = "chgnet" if model == "chgnet" else "radius"
    out = workdir / f"store-{kind}-{n}"
    conv = get_converter("chgnet") if kind == "chgnet" else get_converter("radius", cutoff=8.0, max_neighbors=12)
    t = time.perf_counter()
    r = build_store(source, out, conv, workers=1, shard_size=1000, limit=n, on_bad_structure="skip", progress=False)
    built = time.perf_counter() - t
    print(f"{kind} store: {r.n_graphs} graphs at {out} ({built:.1f} s)", flush=True)
    return str(out), built


def plan_batches(store_path: str, model: str, batch_size: int, total: int) -> dict[str, Any]:
    """The first ``max(total, 16)`` training batches ``fit`` will draw (store indices), from colab_kit's own sampler."""
    from colab_kit.loader.batching import make_loaders
    from colab_kit.loader.splits import load_or_make_splits
    from colab_kit.plan.machine import detect
    from colab_kit.store.format import GraphStore

    store = GraphStore(store_path)
    plan = _plan(detect(), model, batch_size)
    splits = load_or_make_splits(store, plan.seed)
    sampler = make_loaders(store, plan, splits, budget=(plan.batch_atoms, plan.batch_edges))["train"].batch_sampler
    batches = [list(map(int, b)) for b in sampler.batches()]
    if len(batches) < total or any(len(b) != batch_size for b in batches[:total]):
        raise SystemExit(f"the {len(splits['train'])} training graphs of {store_path} give {len(batches)} batches of "
                         f"{batch_size}; need {total} full ones: raise --n or lower --steps/--warmup/--batch-size")
    atoms, edges = store.sizes()
    batches = batches[:max(total, 16)]  # fit's init_output runs forward over the first 16 (anchors pre-warm on them)
    return {"batches": batches, "lr": plan.lr, "train_graphs": len(splits["train"]), "store_graphs": len(store),
            "atoms_per_step": [int(atoms[b].sum()) for b in batches[:total]],
            "edges_per_step": [int(edges[b].sum()) for b in batches[:total]],
            "ids": [[store.graph_id(i) for i in b] for b in batches[:total]]}


def anchor_items(source: str, store_path: str, batches: list[list[int]], out: Path) -> list[list[int]]:
    """Pickle the source records of the graphs in ``batches`` (store indices) to ``out``; returns the batches
    as positions in that list. Store graphs are matched to source records by walking both in order (a store
    keeps the source's order, minus skipped records) and checked by id and target."""
    from colab_kit.sources import open_source
    from colab_kit.store.format import GraphStore

    store = GraphStore(store_path)
    needed = sorted({i for b in batches for i in b})
    store_ids = store.ids()
    wanted, last = set(needed), needed[-1]
    found: dict[int, Any] = {}
    j = 0
    for item in open_source(source):
        if j > last:
            break
        if item.id == store_ids[j]:
            if j in wanted:
                t = store.target(j)
                if item.target is None or abs(item.target - t) > 1e-4 * max(1.0, abs(t)):
                    raise SystemExit(f"store graph {j} ({item.id}) has target {t}, the source {item.target}: "
                                     f"is {store_path} built from {source}?")
                found[j] = item
            j += 1
    if len(found) != len(needed):
        raise SystemExit(f"only {len(found)} of {len(needed)} store graphs found in {source}: "
                         f"is {store_path} built from it?")
    pos = {i: k for k, i in enumerate(needed)}
    with open(out, "w", encoding="utf-8") as f:  # JSON, not pickle: plain records for the child
        json.dump([dataclasses.asdict(found[i]) for i in needed], f, default=float)
    return [[pos[i] for i in b] for b in batches]


def run_child(cfg: dict[str, Any], workdir: Path, tag: str) -> dict[str, Any]:
    cfg_path, result = workdir / f"config-{tag}.json", workdir / f"result-{tag}.json"
    cfg = {**cfg, "result": str(result)}
    cfg_path.write_text(json.dumps(cfg))
    result.unlink(missing_ok=True)
    la0 = loadavg()
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(cfg_path)], capture_output=True, text=True,
                          cwd=str(REPO))
    if proc.returncode != 0 or not result.exists():
        raise RuntimeError(f"{tag} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    res = json.loads(result.read_text())
    res.update(wall_s=time.perf_counter() - t, loadavg_before=la0, loadavg_after=loadavg())
    return res


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        return child_main(argv[1])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default=DEFAULT_SOURCE, help="matbench json(.gz) (default: the shipped 3,000)")
    ap.add_argument("--n", type=int, default=2000,
                    help="first N source items converted into the stores this script builds (ignored for a given store)")
    ap.add_argument("--steps", type=int, default=40, help="timed steps per contender")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps before them (>= 1)")
    ap.add_argument("--batch-size", type=int, default=16, help="graphs per batch, for every contender")
    ap.add_argument("--models", default="chgnet,cgcnn", help=f"subset of {','.join(MODELS)}")
    ap.add_argument("--anchors", default="structure,graph", help=f"subset of {','.join(ANCHORS)} ('' for none)")
    ap.add_argument("--workdir", default=None, help="stores and scratch (default: a temporary dir, removed)")
    ap.add_argument("--chgnet-store", default=None, help="existing chgnet-graph store (built from --source)")
    ap.add_argument("--radius-store", default=None, help="existing radius-graph store (built from --source)")
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch threads in every contender (default: torch's)")
    ap.add_argument("--no-prewarm", action="store_true",
                    help="skip the anchors' no-grad forward over the first 16 batches (colab_kit's init_output "
                         "does the same inside fit's setup)")
    args = ap.parse_args(argv)

    import torch

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    anchors = [a.strip() for a in args.anchors.split(",") if a.strip()]
    if set(models) - set(MODELS) or set(anchors) - set(ANCHORS):
        ap.error(f"--models from {MODELS}, --anchors from {ANCHORS}")
    if args.warmup < 1 or args.steps < 1:
        ap.error("--warmup and --steps must be >= 1 (a step is timed from the end of the one before)")
    if not Path(args.source).exists():
        ap.error(f"{args.source} missing")
    threads = args.threads or torch.get_num_threads()
    total = args.warmup + args.steps
    run = BenchRun(
        args.json_out, args.workdir, "ck-bench-train-",
        benchmark="bench_train", source=args.source, torch_threads=threads, batch_size=args.batch_size,
        warmup=args.warmup, steps=args.steps, stores={}, results=[], differences=DIFFERENCES,
        timing="step k = end of optimizer step k - end of step k-1 (includes fetching batch k); "
               "data = batch k ready - end of step k-1; graphs/s = graphs in timed steps / their summed time; "
               "ratio = colab_kit graphs/s / anchor graphs/s",
    )
    results, save, workdir = run.results, run.save, run.workdir
    with run:
        rows: list[dict[str, Any]] = []
        for model in models:
            given = args.chgnet_store if model == "chgnet" else args.radius_store
            store, built_s = ensure_store(given, model, args.source, args.n, workdir)
            pb = plan_batches(store, model, args.batch_size, total)
            results["stores"][model] = {"path": store, "graphs": pb["store_graphs"], "train_graphs": pb["train_graphs"],
                                        "built_s": built_s, "given": given is not None}
            timed = slice(args.warmup, total)
            base = {"model": model, "warmup": args.warmup, "steps": args.steps, "batch_size": args.batch_size,
                    "threads": threads, "lr": pb["lr"], "store": store,
                    "median_atoms_per_step": median(pb["atoms_per_step"][timed]),
                    "median_edges_per_step": median(pb["edges_per_step"][timed]),
                    "atoms_per_step": pb["atoms_per_step"][timed], "edges_per_step": pb["edges_per_step"][timed],
                    "prewarm": not args.no_prewarm}
            contenders = ["colab_kit"] + (anchors if model == "chgnet" else [])
            anchor_batches = None
            if model == "chgnet" and anchors:
                t = time.perf_counter()
                anchor_batches = anchor_items(args.source, store, pb["batches"], workdir / "anchor-items.json")
                print(f"anchor records: {len({i for b in pb['batches'] for i in b})} structures "
                      f"({time.perf_counter() - t:.1f} s)", flush=True)
            for c in contenders:
                cfg = {**base, "contender": c, "anchor": c if c != "colab_kit" else None,
                       "out_dir": str(workdir / f"fit-{model}"), "items": str(workdir / "anchor-items.json"),
                       "batches": anchor_batches}
                shutil.rmtree(workdir / f"fit-{model}", ignore_errors=True)
                res = run_child(cfg, workdir, f"{c}-{model}")
                ids = res.pop("batch_ids")
                if any(ids) and ids != pb["ids"]:
                    raise RuntimeError(f"{c} trained on other batches than planned: {ids[:1]} vs {pb['ids'][:1]}")
                row = {"contender": NAMES[(c, model)], "kind": c, "anchor": c != "colab_kit", **base, **res,
                       "same_batches_as_planned": bool(any(ids))}
                rows.append(row)
                results["results"] = rows
                save()
                print(f"{row['contender']}: {row['graphs_per_s']:.1f} graphs/s, median step "
                      f"{row['median_step_s'] * 1e3:.0f} ms ({row['wall_s']:.0f} s)", flush=True)
                shutil.rmtree(workdir / f"fit-{model}", ignore_errors=True)
        for r in rows:
            r["ratio_vs"], r["paired_vs"] = {}, {}
            if r["kind"] == "colab_kit" and r["model"] == "chgnet":
                for a in rows:
                    if a["anchor"]:
                        r["ratio_vs"][a["contender"]] = r["graphs_per_s"] / a["graphs_per_s"]
                        # same batch in both: anchor step time / colab_kit step time, per step
                        per = [x / y for x, y in zip(a["step_s"], r["step_s"])]
                        r["paired_vs"][a["contender"]] = {
                            "median_step_ratio": median(per), "min": min(per), "max": max(per),
                            "colab_kit_faster_steps": sum(p > 1 for p in per), "steps": len(per),
                            "median_ratio_of_medians": a["median_step_s"] / r["median_step_s"]}
        save()
        report(rows, results)
    return 0


def report(rows: list[dict[str, Any]], results: dict[str, Any]) -> None:
    anchors = [r for r in rows if r["anchor"]]

    def ratio(r: dict[str, Any], a: dict[str, Any]) -> Any:
        if r is a:
            return 1.0
        return r["ratio_vs"].get(a["contender"], "—")

    st = results["stores"]
    stores = ", ".join(f"{m}: {s['graphs']:,} graphs ({s['train_graphs']:,} train)" for m, s in st.items())
    print_table(
        f"Training step rate, CPU, {results['torch_threads']} torch threads, batch {results['batch_size']} graphs, "
        f"{results['steps']} timed steps after {results['warmup']} warm-up (stores: {stores})",
        ["contender", "model", "median step ms", "p90 step ms", "median data ms", "graphs/s",
         *[f"× {a['contender'].split('(')[-1].rstrip(')')} anchor" for a in anchors],
         "atoms/step", "setup s", "peak RSS MB", "load avg"],
        [[r["contender"], r["model"], r["median_step_s"] * 1e3, r["p90_step_s"] * 1e3, r["median_data_s"] * 1e3,
          r["graphs_per_s"], *[ratio(r, a) if r["model"] == "chgnet" else "—" for a in anchors],
          r["median_atoms_per_step"], r["setup_s"], r["peak_rss_mb"],
          f"{r['loadavg_before']}/{r['loadavg_after']}"] for r in rows],
    )

    def halves(xs: list[float]) -> str:
        h = len(xs) // 2
        return f"{np.mean(xs[:h]):.3g} → {np.mean(xs[h:]):.3g}"

    print_table(
        "Did it train? (loss: mean of the first vs second half of all steps, each trainer's own loss; weights "
        "after the run vs before, trainable tensors of the CHGNet / CGCNN network)",
        ["contender", "trainable params", "loss", "loss units", "tensors changed", "rel. L2 change"],
        [[r["contender"], f"{r['trainable_params']:,}", halves(r["losses"]), r["loss_units"],
          f"{r['param_change']['tensors_changed']}/{r['param_change']['tensors_compared']}",
          r["param_change"]["rel_l2_change"]] for r in rows],
    )
    ck = next((r for r in rows if r["kind"] == "colab_kit" and r["model"] == "chgnet"), None)
    if ck is not None and anchors:
        print_table(
            f"Paired by step (each timed step trains the same {results['batch_size']} graphs in every CHGNet row): "
            "anchor step time / colab_kit step time",
            ["colab_kit vs", "median per-step ratio", "min", "max", "steps colab_kit faster",
             "ratio of median steps", "ratio of graphs/s"],
            [[a["contender"], ck["paired_vs"][a["contender"]]["median_step_ratio"],
              ck["paired_vs"][a["contender"]]["min"], ck["paired_vs"][a["contender"]]["max"],
              f"{ck['paired_vs'][a['contender']]['colab_kit_faster_steps']}/{ck['paired_vs'][a['contender']]['steps']}",
              ck["paired_vs"][a["contender"]]["median_ratio_of_medians"], ck["ratio_vs"][a["contender"]]]
             for a in anchors],
        )
    print("\nWhat differs between the contenders:")
    for d in DIFFERENCES:
        print(f"* {d}")
    print("* setup s: colab_kit = fit() call to first batch ready (splits, model load, init_output); CHGNet = "
          "CHGNet.load + Trainer + dataset + pre-warm (prewarm_s in the JSON) to first batch ready (graph anchor: "
          "minus its up-front conversion, convert_s in the JSON). Parsing structures is excluded.")
    if any(r["model"] == "cgcnn" for r in rows):
        print("* colab_kit fit (cgcnn) has no anchor: CHGNet's Trainer only trains CHGNet.")
    sys.stdout.flush()


if __name__ == "__main__":
    raise SystemExit(main())
