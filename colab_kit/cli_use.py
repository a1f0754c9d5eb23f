"""The commands that use what was trained: ``predict`` and ``export`` (parsing here, the work in
:mod:`colab_kit.predictor` and :mod:`colab_kit.trained`)."""

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
}


def cmd_predict(args: argparse.Namespace) -> int:
    from colab_kit.cli import _stopped_code, parse_override
    from colab_kit.interrupt import stop_on_signals
    from colab_kit.predictor import Predictor, plan_for
    from colab_kit.trained import load_trained

    trained = load_trained(args.run or args.weights)
    overrides = dict(parse_override(t) for t in args.set or [])
    if args.workers is not None:
        overrides["convert_workers"] = args.workers
    if args.work_dir:
        overrides["work_dir"] = args.work_dir
    predictor = Predictor(trained, plan_for(trained, **overrides))
    print(predictor)
    from pathlib import Path

    from colab_kit.datasets import resolve

    data = resolve(args.data, Path(predictor.plan.work_dir) / "downloads", progress=True)
    with stop_on_signals() as stop:
        res = predictor.predict_file(data, args.out, target=args.target, progress=True, should_stop=stop)
    if not res.complete:
        print(f"{stop.signal or 'stop'} received: converted and predicted shards are kept in {res.store}; "
              "run the same command again to resume", file=sys.stderr)
        return _stopped_code(stop.signal)
    print(f"{res.path}: {res.rows} predictions ({trained.unit or 'target units'}); {res.skipped} structures skipped, "
          f"listed in {res.path.with_name(res.path.stem + '.skipped.csv')}; graphs kept in {res.store}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from colab_kit.trained import export_model

    files = export_model(args.run, args.out)
    for what, path in files.items():
        print(f"{what}: {path}")
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
