"""The quickstart notebook, executed headlessly with nbclient as a user would run it (not on Colab).

Its Colab form fields (``name = value #@param ...``) are set the way a user sets them in the form:
debug mode on the shipped data with radius graphs + CGCNN (the fastest path; tests/test_runner.py
covers the CHGNet default), a temporary work dir, the panel started by ``autostart`` and the
command-line cell switched on. Fixed batch budgets (``extra_settings``) skip the memory calibration,
which on CPU reads the process's peak RSS and so depends on what the kernel did before.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("ipywidgets")

from colab_kit.detect import COLAB_ENV_VARS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "colab_kit_quickstart.ipynb"
ARTIFACTS = REPO / "test-artifacts"
BADGE = "https://colab.research.google.com/github/colab-kit/colab_kit/blob/main/notebooks/colab_kit_quickstart.ipynb"


def set_form_fields(nb: Any, **values: Any) -> None:
    """Set Colab form fields (``name = value #@param ...`` lines) like the form does; every name must exist."""
    found = set()
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        lines = cell.source.split("\n")
        for i, line in enumerate(lines):
            m = re.match(r"^(\w+)\s*=\s*.*?\s*(#\s*@param\b.*)$", line)
            if m and m.group(1) in values:
                lines[i] = f"{m.group(1)} = {values[m.group(1)]!r} {m.group(2)}"
                found.add(m.group(1))
        cell.source = "\n".join(lines)
    assert found == set(values), f"form fields not found in the notebook: {set(values) - found}"


def _ensure_python3_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        prefix = tmp_path / "jupyter"
        subprocess.run([sys.executable, "-m", "ipykernel", "install", "--prefix", str(prefix)], check=True)
        monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))


def _texts(outputs: list[Any]) -> str:
    parts = []
    for out in outputs:
        if "text" in out:
            parts.append(out["text"])
        parts.extend(str(v) for k, v in out.get("data", {}).items() if k.startswith("text/"))
    return "".join(parts)


def test_committed_notebook_is_clean() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.cells[0].cell_type == "markdown" and BADGE in nb.cells[0].source
    assert BADGE in (REPO / "README.md").read_text()
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, "commit the notebook with outputs cleared"
            assert cell.source.startswith("#@title"), cell.source[:60]


def test_quickstart_runs_headless(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _ensure_python3_kernel(tmp_path, monkeypatch)
    for name in COLAB_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    set_form_fields(nb, mode="debug", converter="radius", work_dir=str(tmp_path / "work"), autostart=True, run_cli=True,
                    extra_settings="batch_atoms=4000 batch_edges=60000")
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()
    finally:
        ARTIFACTS.mkdir(exist_ok=True)
        nbformat.write(nb, ARTIFACTS / "quickstart_executed.ipynb")

    by_title = {c.source.split("\n", 1)[0]: c for c in nb.cells if c.cell_type == "code"}
    cells = {title.split(".")[0].removeprefix("#@title "): c for title, c in by_title.items()}
    plan_text = _texts(cells["3"].outputs)
    assert "Plan for mode debug" in plan_text and "setting" in plan_text and "why" in plan_text
    assert re.search(r"batch_edges\s+60000\s+set by user", plan_text) and re.search(r"Google Colab\s+no", plan_text)

    # The panel's progress bars and log lines live in its Output widget (saved as widget state).
    widget_state = json.dumps(nb.metadata.get("widgets", {}))
    assert "epoch 1/2" in widget_state and "graph/s" in widget_state, "no progress bars in the panel"
    assert "== train" in widget_state and "test MAE" in widget_state and "Traceback" not in widget_state
    cli_text = _texts(cells["5b"].outputs)
    assert "Plan for --mode debug" in cli_text and "Done: test MAE" in cli_text
    assert "convert" in cli_text and "nothing to convert" in cli_text  # the CLI picked up the panel's run

    images = [o for o in cells["6"].outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2, "loss curve and parity plot not shown"
    assert "test_mae" in _texts(cells["6"].outputs)
    run_dir = tmp_path / "work" / "mp_eform_cgcnn_3000-radius-cgcnn-debug"
    assert (run_dir / "report" / "metrics.json").is_file()
