"""Results as JSON: one record per benchmark invocation, saved after every section, and medians."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness.machine import machine_info


class BenchRun:
    """One benchmark invocation: its results dict (machine, argv, start and end time), written to ``json_out``
    after every section with :meth:`save`, and its scratch directory (a temporary one unless given, removed
    on exit). Use as a context manager around the sections."""

    def __init__(self, json_out: str | None, workdir: str | None, prefix: str, **info: Any) -> None:
        self.json_out, self.keep = json_out, workdir is not None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=prefix))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.results: dict[str, Any] = {"machine": machine_info(), "argv": sys.argv,
                                        "started": time.strftime("%Y-%m-%d %H:%M:%S"), **info}
        print(json.dumps(self.results["machine"]), flush=True)

    def save(self) -> None:
        if self.json_out:
            Path(self.json_out).write_text(json.dumps(self.results, indent=1))

    def __enter__(self) -> BenchRun:
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if exc_type is None:
            self.results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
            self.save()


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def read_json(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def write_json_atomic(path: str | Path, obj: Any) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)
