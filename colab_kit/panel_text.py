"""What the control panel says, as HTML: the plan table, the machine line, the list of report files."""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from colab_kit.detect import Machine
    from colab_kit.plan import Plan


def files_html(run_dir: Path, files: dict[str, Any]) -> str:
    """The run dir once, then each file relative to it (full paths wrap into an unreadable list)."""
    def rel(path: Any) -> str:
        try:
            return str(Path(path).relative_to(run_dir))
        except ValueError:
            return str(path)

    names = ", ".join(f"<code title='{esc(k)}'>{esc(rel(v))}</code>" for k, v in files.items() if Path(v) != run_dir)
    return f"<div style='line-height:1.5'>Files in <code>{esc(run_dir)}</code>:<br>{names}</div>"


def plan_html(plan: Plan) -> str:
    rows = "".join(f"<tr><td><code>{esc(k)}</code></td><td>{esc(v)}</td><td style='color:#555'>{esc(r)}</td></tr>"
                   for k, v, r in plan.rows())
    return f"<table><tr><th>setting</th><th>value</th><th>why</th></tr>{rows}</table>"


def machine_line(m: Machine) -> str:
    gpu = f"{m.gpu.name} ({m.gpu.free_bytes / 1024**3:.1f} GiB free)" if m.gpu is not None else "no GPU"
    drive = ", Drive mounted" if m.drive_mounted else ""
    return (f"{'Google Colab' if m.is_colab else 'local'}, {m.cpus} CPUs, {m.ram_available / 1024**3:.1f} GiB RAM "
            f"free, {gpu}{drive}")


def esc(text: Any) -> str:
    return html.escape(str(text))
