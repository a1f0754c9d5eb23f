"""Command line: parse arguments, build a Plan, call the stage. Nothing else lives here."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from colab_kit import registry
from colab_kit.cli.common import (
    add_plan_args,
    format_table,
    one_line,
    overrides_from_args,
    plan_from_args,
    stopped,
    stopped_code,
    store_settings,
)
from colab_kit.errors import ColabKitError
from colab_kit.plan import BAD_STRUCTURE_POLICIES, PlanError, make_plan

log = logging.getLogger(__name__)

EXAMPLES = {
    "main": """examples:
  python -m colab_kit detect                      # what this machine has and what colab_kit would do
  python -m colab_kit run --mode debug            # the whole pipeline on the shipped 3,000-structure set
  python -m colab_kit convert data.json.gz --graph-kind radius --out store/
""",
    "convert": """examples:
  python -m colab_kit convert colab_kit/data/mp_eform_cgcnn_3000_matbench.json.gz --graph-kind chgnet --out store/
  python -m colab_kit convert cifs/ --graph-kind radius --out store/ --workers 2   # folder of CIFs + id_prop.csv
  python -m colab_kit convert big.json.gz --out /shared/store --shard 0/4         # host 0 of 4; then once without --shard
Re-running the same command resumes: completed shards are kept, only those in flight are redone.
""",
    "train": """examples:
  python -m colab_kit train --store store/ --model chgnet --mode quick
  python -m colab_kit train --store store/ --model cgcnn --set epochs=30 --out runs/cgcnn
Re-running the same command resumes from the last checkpoint at the next batch.
""",
    "evaluate": """examples:
  python -m colab_kit evaluate --store store/ --weights runs/cgcnn/best.pt --model cgcnn
""",
    "run": """examples:
  python -m colab_kit run --mode debug                       # shipped data, CHGNet fine-tuning, ~30 s on 2 CPUs
  python -m colab_kit run --mode quick --model cgcnn         # CGCNN (its radius graphs)
  python -m colab_kit run --mode quick --model comformer --set variant=equivariant   # eComFormer, on a GPU
  python -m colab_kit run --mode full --data matbench_mp_e_form --persist-dir /content/drive/MyDrive/colab_kit
  python -m colab_kit run --mode full --data https://example.org/my_data.json.gz --set batch_edges=50000
  python -m colab_kit run --data mp20.csv --set target=formation_energy_per_atom   # a CSV of CIFs: pick the label column
  python -m colab_kit run --data my_cifs/ --set target=formation_energy_per_atom   # name the label: eV/atom in the report
  python -m colab_kit run --data my_cifs/ --set unit=eV                            # or give its unit
After a disconnect, run the same command again: it restores from the persist dir and resumes. Naming the label
(target=, unit=) of a folder's id_prop.csv later continues the same run: only the report's words change.
Modes: debug 300 structures, 2 epochs; quick 3,000, 10 epochs; full all, 50 epochs with early stopping. Models
trained from scratch (CGCNN, ComFormer, ALIGNN, M3GNet, TensorNet) get 5x the epochs (quick: 50); training says how
long it will take on this machine before its first step.
""",
    "models": """examples:
  python -m colab_kit models          # every model: graph kind, options with defaults, learning rate
""",
    "detect": """examples:
  python -m colab_kit detect
  python -m colab_kit detect --model comformer   # the plan for ComFormer, its options among the rows
  python -m colab_kit detect --model cgcnn --data my_cifs/ --mode quick
  python -m colab_kit detect --mode full --graph-kind radius
  python -m colab_kit detect --json > machine.json
""",
}


def cmd_detect(args: argparse.Namespace) -> int:
    from colab_kit.plan import detect

    machine = detect(extra_dirs=tuple(d for d in [args.work_dir] if d))
    if args.json:
        print(json.dumps(machine.to_dict(), indent=2))
        return 0
    plan = make_plan(machine, args.mode, **overrides_from_args(args), **({"data": args.data} if args.data else {}))
    print("Machine")
    print(format_table(machine.rows()))
    print()
    print(f"Plan for --mode {args.mode}")
    print(format_table(plan.rows(), header=("setting", "value", "why")))
    for w in plan.warnings:
        print(f"WARNING: {w}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    rows = []
    for name in registry.models():
        spec = registry.model(name)
        options = ", ".join(f"{k}={o.default}" for k, o in spec.options.items()) or "-"
        extra = f" (pip install colab_kit[{spec.extra}])" if spec.extra else ""
        rows.append((name, spec.graph_kind, f"{spec.lr:g}", options, spec.description + extra))
    print(format_table(rows, header=("model", "graphs", "lr", "options (--set key=value)", "what it is")))
    print()
    print(format_table([(k, registry.graph_kind(k).description) for k in registry.graph_kinds()],
                       header=("graph kind", "what it is")))
    return 0


def _parse_part(text: str | None) -> tuple[int, int]:
    if not text:
        return (0, 1)
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise PlanError(f"--shard must look like i/N, e.g. 0/4 (got {text!r})") from None
    if not 0 <= i < n:
        raise PlanError(f"--shard i/N needs 0 <= i < N (got {text!r})")
    return i, n


def cmd_convert(args: argparse.Namespace) -> int:
    from colab_kit.graphs import get_converter
    from colab_kit.store import build_store

    extra = {k: v for k, v in (("convert_workers", args.workers), ("shard_size", args.shard_size),
                                ("on_bad_structure", args.on_bad)) if v is not None}
    plan = plan_from_args(args, probe_gpu=False, **extra)
    out = args.out or str(Path(plan.work_dir) / "stores" / f"{Path(args.source).name.split('.')[0]}-{plan.graph_kind}")
    conv = get_converter(plan.graph_kind, cutoff=plan.cutoff, bond_cutoff=plan.bond_cutoff,
                         max_neighbors=plan.max_neighbors, on_isolated_atoms=plan.on_isolated_atoms,
                         edges=plan.graph_edges)
    from colab_kit.util.interrupt import stop_on_signals
    from colab_kit.util.locks import hold

    source: Any = args.source
    if plan.task == "potential":  # frames with per-atom labels, read with the label settings
        from colab_kit.sources import open_frames

        source = open_frames(args.source, fmt=args.format, settings=plan.label_settings())
    with hold(out, "store"), stop_on_signals() as stop:
        res = build_store(source, out, conv, workers=plan.convert_workers, shard_size=plan.shard_size,
                          limit=args.limit, on_bad_structure=plan.on_bad_structure, part=_parse_part(args.shard),
                          fmt=args.format, target=args.target, should_stop=stop)
    if not res.complete:
        return stopped(stop.signal, f"{res.n_shards} shards of {res.path} are saved")
    print(f"store {res.path}: {res.n_graphs} graphs, {res.n_failed} skipped, {res.n_shards} shards "
          f"({res.shards_reused} reused), {res.seconds:.1f} s")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from colab_kit.store import GraphStore
    from colab_kit.training import fit
    from colab_kit.util.interrupt import stop_on_signals

    store = GraphStore(args.store)
    plan = plan_from_args(args, graph_kind=store.graph_kind, **store_settings(store, args))
    out = Path(args.out or Path(args.store).parent / f"train-{plan.model}-{plan.mode}")
    from colab_kit.util.distributed import refuse_fresh

    refuse_fresh(args.fresh, plan.world_size, out)
    from colab_kit.util.locks import clear, hold

    # rank 0 writes the folder; the other ranks of a torchrun launch only read what it writes
    with (hold(out, "training folder") if plan.rank == 0 else contextlib.nullcontext()), stop_on_signals() as stop:
        if args.fresh and plan.rank == 0:
            clear(out)
        targets = None
        if plan.teacher and plan.rank == 0:  # the teacher's column first: training never loads a trained model
            from colab_kit.use import distill_targets

            targets = distill_targets(store, plan)
        res = fit(store, plan, out, resume=True, should_stop=stop, train_targets=targets)
    if plan.rank != 0:  # rank 0 speaks for the launch
        return stopped_code(stop.signal) if res.status == "stopped" else 0
    if res.status == "stopped":
        return stopped(stop.signal, f"checkpoint saved in {out / 'checkpoints'}")
    print(f"training {res.status}: {res.epochs_done} epochs, best epoch {res.best_epoch} "
          f"(validation MAE {res.best_val_mae:.4f}); weights: {out / 'best.pt'}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from colab_kit.loader import splits_for
    from colab_kit.run import format_scores, mean_predictor_mae, store_target_name
    from colab_kit.store import GraphStore
    from colab_kit.training import evaluate_weights, trained_model_settings
    from colab_kit.util.units import target_unit

    store = GraphStore(args.store)
    trained = trained_model_settings(args.weights)  # what the run trained, unless --model / --set say otherwise
    if args.model and trained.get("model") != args.model:
        trained = {}
    given = overrides_from_args(args)
    plan = plan_from_args(args, graph_kind=store.graph_kind, **store_settings(store, args),
                 **{k: v for k, v in trained.items() if k not in given})
    res = evaluate_weights(store, plan, args.weights, split=args.split)
    splits = splits_for(store, plan)
    if store.potential is not None:  # per target in its unit, beside its baseline, as `run` reports a potential
        return _evaluate_potential(store, res, splits, args)
    baseline = mean_predictor_mae(store.targets(), splits["train"], splits[args.split])
    # a run's store sits in a folder named after its data
    unit = target_unit(plan.target or store_target_name(store), str(store.root), plan.unit)
    if args.json:  # the JSON alone, so that a script can parse the output
        print(json.dumps({"split": args.split, "n": int(len(res["target"])), "mae": res["mae"], "rmse": res["rmse"],
                          "mean_predictor_mae": baseline, "unit": unit}))
    else:
        print(format_scores(args.split, int(len(res["target"])), res["mae"], res["rmse"], baseline, unit))
    return 0


def _evaluate_potential(store: Any, res: dict[str, Any], splits: dict[str, Any], args: argparse.Namespace) -> int:
    from colab_kit.run import potential_scores, reference_energy_mae
    from colab_kit.training import NAMES, UNITS, describe_scores

    res["energy_baseline"] = reference_energy_mae(store, splits["train"], splits[args.split]) * 1000.0  # meV/atom
    n = int(len(res["target"]))
    if args.json:
        units = {NAMES[t]: UNITS[t] for t in store.potential["targets"]}
        print(json.dumps({"split": args.split, "n": n, "targets": store.potential["targets"], **potential_scores(res),
                          "units": units}))
    else:
        print(f"{args.split} (n={n} frames): {describe_scores(res, baselines=True)}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from colab_kit.run import run

    extra: dict[str, Any] = {}
    if args.data:
        extra["data"] = args.data
    if args.persist_dir:
        extra["persist_dir"] = args.persist_dir
    plan = plan_from_args(args, **extra)
    if plan.rank == 0:  # rank 0 speaks for a torchrun launch
        print(f"Plan for --mode {plan.mode}")
        print(format_table(plan.rows(), header=("setting", "value", "why")))
        for w in plan.warnings:
            print(f"WARNING: {w}")
    res = run(plan, fresh=args.fresh)
    if res.metrics.get("status") == "stopped":
        if plan.rank == 0:
            print(f"stopped; work so far is saved in {res.run_dir}: run the same command again to resume", file=sys.stderr)
        return stopped_code(res.metrics.get("signal"))
    if plan.rank != 0:
        return 0
    print()
    from colab_kit.run import format_scores

    m = res.metrics
    if "potential" in m:  # per target, beside its baseline (and the model as shipped)
        print(f"Done: test (n={m['test_n']} frames): {m['potential']['summary']}")
    else:
        print("Done: " + format_scores("test", m["test_n"], m["test_mae"], m["test_rmse"], m["mean_predictor_test_mae"],
                                       m.get("unit", "")))
    print(format_table([(k, v) for k, v in res.files.items()]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m colab_kit",
        description="Train crystal graph neural networks on a free Colab runtime.",
        epilog=EXAMPLES["main"],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "detect",
        help="show the machine and the plan colab_kit would use",
        epilog=EXAMPLES["detect"],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_plan_args(p)
    p.add_argument("--data", help="plan for this data (a path, URL, Drive link or dataset name; nothing is read)")
    p.add_argument("--json", action="store_true", help="print the machine facts as JSON")
    p.set_defaults(func=cmd_detect)

    p = _sub(sub, "models", "list the models and graph kinds colab_kit can train, with their options")
    p.set_defaults(func=cmd_models)

    p = _sub(sub, "run", "the whole pipeline: data, convert, train, evaluate, report (resumes)")
    add_plan_args(p)
    p.add_argument("--data", help="path, http(s) URL, Google Drive id/link or dataset name (default: shipped 3,000 MP set)")
    p.add_argument("--persist-dir", help="mirror the run here (default: Google Drive when mounted)")
    p.add_argument("--fresh", action="store_true", help="delete this run's earlier work and start over")
    p.set_defaults(func=cmd_run)

    p = _sub(sub, "convert", "convert structures into a sharded graph store (resumes)")
    add_plan_args(p, with_mode=False)
    p.add_argument("source", help="matbench json(.gz), folder of CIF/POSCAR + id_prop.csv, extxyz, JARVIS json")
    p.add_argument("--out", help="store directory (default: <work dir>/stores/<source>-<graph kind>)")
    p.add_argument("--workers", type=int, help="conversion processes (default: from the plan)")
    p.add_argument("--shard", metavar="i/N", help="build only part i of N (several hosts, one store)")
    p.add_argument("--shard-size", type=int, help="structures per shard (default: from the plan)")
    p.add_argument("--format", help="source format if it cannot be told from the path")
    p.add_argument("--target", help="label column/key (default: the source's only one)")
    p.add_argument("--limit", type=int, help="convert only the first N structures")
    p.add_argument("--on-bad", choices=BAD_STRUCTURE_POLICIES, help="what to do with a bad structure")
    p.set_defaults(func=cmd_convert, mode="debug")

    p = _sub(sub, "train", "train a model on a store (resumes)")
    add_plan_args(p)
    p.add_argument("--store", required=True, help="store directory made by `convert`")
    p.add_argument("--out", help="output directory (default: next to the store)")
    p.add_argument("--fresh", action="store_true", help="ignore earlier checkpoints in --out")
    p.set_defaults(func=cmd_train)

    p = _sub(sub, "evaluate", "evaluate saved weights on a split of a store")
    add_plan_args(p)
    p.add_argument("--store", required=True, help="store directory")
    p.add_argument("--weights", required=True, help="best.pt written by training")
    p.add_argument("--split", choices=("train", "val", "test"), default="test")
    p.add_argument("--json", action="store_true", help="print the scores as one JSON line (and nothing else)")
    p.set_defaults(func=cmd_evaluate)
    from colab_kit.cli import store as cli_store
    from colab_kit.cli import use as cli_use

    cli_use.add_commands(sub, _sub)
    cli_store.add_commands(sub, _sub)
    return parser


def _sub(sub: Any, name: str, help_: str, epilog: str | None = None) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help_, description=help_, epilog=epilog or EXAMPLES[name],
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from colab_kit.util import distributed
    from colab_kit.util.logs import setup_logging

    try:
        world = distributed.world_from_env()
    except ColabKitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # under torchrun rank 0 tells the story; the other ranks only warn
    setup_logging(logging.DEBUG if args.verbose else logging.INFO if world.is_main else logging.WARNING)
    if world.distributed and args.command in DISTRIBUTED_COMMANDS:
        try:
            distributed.die_with_launcher(world)  # no rank outlives its torchrun launcher
        except ColabKitError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    if world.distributed and args.command not in DISTRIBUTED_COMMANDS:
        print(f"error: `{args.command}` runs in one process, not under torchrun ({world.size} ranks); launch it with "
              f"`python -m colab_kit {args.command} ...` (torchrun is for {' and '.join(DISTRIBUTED_COMMANDS)})",
              file=sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except PlanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ColabKitError as exc:
        log.debug("details", exc_info=True)
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 1
    except MemoryError as exc:
        log.debug("details", exc_info=True)
        print(f"error: out of memory ({one_line(exc) or 'MemoryError'}); free RAM or use a smaller --mode / "
              "--set n_samples=...; work already saved is kept and a rerun resumes", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; completed shards and checkpoints are kept: run the same command again to resume",
              file=sys.stderr)
        return 130
    finally:
        distributed.stop()


#: commands that train with several ranks under torchrun (``detect`` shows each rank's plan)
DISTRIBUTED_COMMANDS = ("run", "train", "detect")
