"""Command line: parse arguments, build a Plan, call the stage. Nothing else lives here."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, Sequence

from colab_kit.plan import MODES, OVERRIDABLE, PlanError, make_plan

log = logging.getLogger(__name__)

EXAMPLES = {
    "main": """examples:
  python -m colab_kit detect                      # what this machine has and what colab_kit would do
  python -m colab_kit run --mode debug            # the whole pipeline on the shipped 3,000-structure set
  python -m colab_kit convert data.json.gz --converter radius --out store/
""",
    "detect": """examples:
  python -m colab_kit detect
  python -m colab_kit detect --mode full --converter radius
  python -m colab_kit detect --json > machine.json
""",
}


def format_table(rows: Sequence[Sequence[str]], header: Sequence[str] | None = None) -> str:
    """A plain-text table with aligned columns (no dependency; also readable in Colab output)."""
    all_rows = [list(header)] if header else []
    all_rows += [list(r) for r in rows]
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(all_rows[0]))]
    lines = []
    for n, r in enumerate(all_rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if header and n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` with the value read as JSON when it parses (numbers, null, true) else a string."""
    if "=" not in text:
        raise PlanError(f"plan override {text!r} must look like key=value, e.g. batch_edges=20000")
    key, raw = text.split("=", 1)
    key = key.strip().replace("-", "_")
    if raw.lower() in ("none", "null"):
        return key, None
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    out = dict(parse_override(t) for t in getattr(args, "set", None) or [])
    for name in ("converter", "model", "workers", "work_dir", "persist_dir", "seed"):
        value = getattr(args, name, None)
        if value is not None:
            out[name] = value
    return out


def add_plan_args(p: argparse.ArgumentParser, with_mode: bool = True) -> None:
    if with_mode:
        p.add_argument("--mode", choices=tuple(MODES), default="debug", help="run size preset (default: debug)")
    p.add_argument("--converter", choices=("chgnet", "radius"), help="graph kind (default: chgnet)")
    p.add_argument("--model", choices=("chgnet", "cgcnn"), help="model (default: the one for the converter)")
    p.add_argument("--work-dir", help="local directory for the store, checkpoints and report")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help=f"override a plan setting (repeatable); keys: {', '.join(sorted(OVERRIDABLE))}",
    )


def cmd_detect(args: argparse.Namespace) -> int:
    from colab_kit.detect import detect

    machine = detect(extra_dirs=tuple(d for d in [args.work_dir] if d))
    if args.json:
        print(json.dumps(machine.to_dict(), indent=2))
        return 0
    plan = make_plan(machine, args.mode, **overrides_from_args(args))
    print("Machine")
    print(format_table(machine.rows()))
    print()
    print(f"Plan for --mode {args.mode}")
    print(format_table(plan.rows(), header=("setting", "value", "why")))
    for w in plan.warnings:
        print(f"WARNING: {w}")
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
    p.add_argument("--json", action="store_true", help="print the machine facts as JSON")
    p.set_defaults(func=cmd_detect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from colab_kit.logs import setup_logging

    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return int(args.func(args) or 0)
    except PlanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
