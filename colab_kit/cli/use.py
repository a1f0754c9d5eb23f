"""The commands that use what was trained: ``predict``, ``export``, ``benchmark`` and ``head`` (parsing here, the work in
:mod:`colab_kit.use.predictor`, :mod:`colab_kit.use.trained` and :mod:`colab_kit.run.benchmark`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

EXAMPLES = {
    "predict": """examples:
  python -m colab_kit predict --run runs/<name> --data candidates.json.gz --out preds.csv
  python -m colab_kit predict --weights exported_model/ --data cifs/ --out preds.csv --set device=cpu
Re-running the same command resumes: converted shards and predicted shards are kept.
""",
    "export": """examples:
  python -m colab_kit export --run runs/<name> --out my_model/   # model.json + weights.pt (+ chgnet.pt for CHGNet)
Then: colab_kit.load("my_model").predict(structures), or for CHGNet: CHGNet.from_file("my_model/chgnet.pt").
""",
    "benchmark": """examples:
  python -m colab_kit benchmark --task matbench_mp_e_form --model cgcnn --mode full --persist-dir /content/drive/MyDrive/colab_kit
  python -m colab_kit benchmark --task matbench_phonons --data matbench_phonons.json.gz --model cgcnn --folds 0,1
The five folds run one after the other; run the same command again after a disconnect: a fold done is never redone.
""",
    "head": """examples:
  python -m colab_kit head --mode quick          # CHGNet's frozen crystal features + a small MLP, on the shipped data
  python -m colab_kit head --data matbench_phonons.json.gz --set split=matbench --set fold=0
The features are computed once (resumable) and cached beside the store; the head trains in seconds.
""",
}


def cmd_predict(args: argparse.Namespace) -> int:
    from colab_kit.cli.common import parse_override, stopped
    from colab_kit.use import Predictor, load_trained, plan_for
    from colab_kit.util.interrupt import stop_on_signals

    trained = load_trained(args.run or args.weights)
    overrides = dict(parse_override(t) for t in args.set or [])
    if args.workers is not None:
        overrides["convert_workers"] = args.workers
    if args.work_dir:
        overrides["work_dir"] = args.work_dir
    predictor = Predictor(trained, plan_for(trained, **overrides))
    print(predictor)
    from pathlib import Path

    from colab_kit.sources import resolve

    data = resolve(args.data, Path(predictor.plan.work_dir) / "downloads", progress=True,
                   sha256=predictor.plan.data_sha256)
    with stop_on_signals() as stop:
        res = predictor.predict_file(data, args.out, target=args.target, progress=True, should_stop=stop)
    if not res.complete:
        return stopped(stop.signal, f"converted and predicted shards are kept in {res.store}")
    print(f"{res.path}: {res.rows} predictions ({trained.unit or 'target units'}); {res.skipped} structures skipped, "
          f"listed in {res.path.with_name(res.path.stem + '.skipped.csv')}; graphs kept in {res.store}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from colab_kit.use import export_model

    files = export_model(args.run, args.out)
    for what, path in files.items():
        print(f"{what}: {path}")
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from colab_kit.cli.common import format_table, plan_from_args, stopped
    from colab_kit.loader import N_FOLDS
    from colab_kit.run import run_benchmark
    from colab_kit.util.interrupt import stop_on_signals

    extra: dict[str, Any] = {"data": args.data or args.task, "split": "matbench"}
    if args.persist_dir:
        extra["persist_dir"] = args.persist_dir
    sets = [t.split("=", 1)[0].strip() for t in args.set or []]
    if "n_samples" not in sets:
        extra["n_samples"] = None  # matbench's folds are over the whole task, whatever the mode's sample cap
    folds = sorted({int(f) for f in args.folds.split(",")}) if args.folds else list(range(N_FOLDS))
    with stop_on_signals() as stop:
        res = run_benchmark(args.task, lambda k: plan_from_args(args, **extra, fold=k), folds=folds, should_stop=stop)
    rows = [(str(f["fold"]), str(f["n_test"]), f"{f['mae']:.4g}", f"{f['rmse']:.4g}", f"{f['seconds']:g}")
            for f in res["folds"]]
    print(format_table(rows, header=("fold", "n_test", "MAE", "RMSE", "seconds")))
    if res["status"] == "stopped":
        return stopped(stop.signal, f"the folds done are kept in {res['dir']}")
    print(f"MAE over {len(res['folds'])} folds: {res['mae_mean']:.4g} ± {res['mae_std']:.4g}; "
          f"{res['dir'] / 'folds.csv'}" + (f"; matbench results: {res['results']}" if res["results"] else ""))
    return 0


def cmd_head(args: argparse.Namespace) -> int:
    from colab_kit.cli.common import plan_from_args, stopped_code
    from colab_kit.run import format_scores, run_head
    from colab_kit.util.interrupt import stop_on_signals
    from colab_kit.util.units import target_unit

    plan = plan_from_args(args, model="chgnet", **({"data": args.data} if args.data else {}))
    with stop_on_signals() as stop:
        res = run_head(plan, should_stop=stop)
    if res["status"] == "stopped":
        print(f"stopped; work so far is kept in {res['dir']}: run the same command again to go on", file=sys.stderr)
        return stopped_code(stop.signal)
    unit = target_unit(plan.target, plan.data, plan.unit)
    print(format_scores("test", res["test_n"], res["test_mae"], res["test_rmse"], res["mean_predictor_test_mae"], unit))
    print(f"features {res['features_seconds']} s (once, cached), head {res['head_seconds']} s; {res['files']['head']}")
    return 0


def add_commands(sub: Any, make: Any) -> None:
    """Add ``predict`` and ``export`` to the CLI's subparsers (``make(sub, name, help, epilog)`` makes one)."""
    p = make(sub, "predict", "predict a source with a trained model: resumable, chunked, memory flat",
             EXAMPLES["predict"])
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", help="run directory (or `train --out` directory) of the trained model")
    which.add_argument("--weights", help="exported model directory, or a best.pt inside a run directory")
    p.add_argument("--data", required=True, help="structures: any source `convert` reads (labels optional)")
    p.add_argument("--out", required=True, help="CSV to write: id,prediction[,target]")
    p.add_argument("--target", help="label column/key when the source has several")
    p.add_argument("--workers", type=int, help="conversion processes (default: from the plan)")
    p.add_argument("--work-dir", help="where the prediction store is kept (default: the plan's work dir)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="a plan setting, e.g. device=cpu, batch_edges=20000, eval_batch_size=256")
    p.set_defaults(func=cmd_predict)

    p = make(sub, "export", "export a trained model: weights + model.json (and a CHGNet file for CHGNet)",
             EXAMPLES["export"])
    p.add_argument("--run", required=True, help="run directory, `train --out` directory or best.pt")
    p.add_argument("--out", required=True, help="directory to write")
    p.set_defaults(func=cmd_export)

    from colab_kit.cli.common import add_plan_args

    p = make(sub, "benchmark", "matbench's protocol: train and score the task's 5 official folds (resumes)",
             EXAMPLES["benchmark"])
    p.add_argument("--task", required=True, help="a matbench task, e.g. matbench_mp_e_form, matbench_phonons")
    p.add_argument("--data", help="the task's data file (default: download it by the task's name)")
    p.add_argument("--folds", help="comma-separated folds to run (default: 0,1,2,3,4)")
    p.add_argument("--persist-dir", help="mirror the folds here (default: Google Drive when mounted)")
    add_plan_args(p, with_task=False)
    p.set_defaults(func=cmd_benchmark)

    p = make(sub, "head", "frozen CHGNet backbone: cached crystal features + a small MLP head, trained in seconds",
             EXAMPLES["head"])
    p.add_argument("--data", help="path, URL or dataset name (default: the shipped 3,000 MP set)")
    add_plan_args(p)
    p.set_defaults(func=cmd_head)
