"""What every command of the CLI shares: the plan from the arguments, ``--set``, tables, exit codes."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from colab_kit import registry
from colab_kit.plan import MODES, OVERRIDABLE, TASKS, Plan, PlanError, make_plan


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
    for name in ("graph_kind", "model", "workers", "work_dir", "persist_dir", "seed"):
        value = getattr(args, name, None)
        if value is not None:
            out[name] = value
    if getattr(args, "plan_task", None) is not None:  # `benchmark --task` names a matbench task instead
        out["task"] = args.plan_task
    return out


def add_plan_args(p: argparse.ArgumentParser, with_mode: bool = True, with_task: bool = True) -> None:
    if with_mode:
        p.add_argument("--mode", choices=tuple(MODES), default="debug", help="run size preset (default: debug)")
    p.add_argument("--graph-kind", "--converter", dest="graph_kind", choices=registry.graph_kinds(),
                   help="graph kind (default: the model's; --converter is its old name)")
    p.add_argument("--model", choices=registry.models(),
                   help=f"model (default: {registry.models()[0]}, or the first that trains on --graph-kind)")
    p.add_argument("--work-dir", help="local directory for the store, checkpoints and report")
    if with_task:
        p.add_argument("--task", dest="plan_task", choices=TASKS,
                       help="property (default): one label per structure; potential: energies, forces, stresses (and "
                            "CHGNet's magnetic moments) of DFT frames (extxyz, MPtrj JSON, ASE .db / .aselmdb, VASP; "
                            "without --data: the shipped mlearn_frames_221)")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help=f"override a plan setting (repeatable); keys: {', '.join(sorted(OVERRIDABLE))}, and the model's "
             "options (`detect --model M` lists them)",
    )


def plan_from_args(args: argparse.Namespace, probe_gpu: bool = True, **extra: Any) -> Plan:
    from colab_kit.plan import detect, query_gpu

    work = getattr(args, "work_dir", None)
    # probing the GPU imports torch and initialises CUDA (~1.5 s): a command that never trains skips it
    machine = detect(extra_dirs=tuple(d for d in [work] if d), gpu=query_gpu if probe_gpu else (lambda: None))
    return make_plan(machine, getattr(args, "mode", "debug"), **{**overrides_from_args(args), **extra})


def store_settings(store: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The Plan's settings that a built store fixes: its graph settings (a Plan must describe the graphs it trains
    on) and its task (a store of frames with forces trains a potential; one label per structure, a property).

    Raises:
        PlanError: ``--task`` names the other task than the store's.
    """
    task = "potential" if store.potential is not None else "property"
    asked = getattr(args, "plan_task", None)
    if asked not in (None, task):
        held = "DFT frames with forces" if task == "potential" else "one label per structure"
        raise PlanError(f"store {store.root} holds {held}, not a {asked} task's labels: leave --task out (it follows "
                        f"the store), or convert the data again with --task {asked}")
    return {**registry.graph_kind(store.graph_kind).settings(store.params), "task": task}


def stopped_code(signal_name: str | None) -> int:
    """The shell's convention for a run ended by a signal: 128 + its number."""
    return {"SIGINT": 130, "SIGTERM": 143}.get(signal_name or "", 0)


def stopped(signal_name: str | None, kept: str) -> int:
    """Say on stderr that a stop was asked for, what of the work is ``kept``, and how to resume; the exit code."""
    print(f"{signal_name or 'stop'} received: {kept}; run the same command again to resume", file=sys.stderr)
    return stopped_code(signal_name)


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
