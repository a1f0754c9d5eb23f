"""The quickstart notebook, executed headlessly with nbclient as a user would run it (not on Colab).

Its Colab form fields (``name = value #@param ...``) are set the way a user sets them in the form:
debug mode on the shipped data with radius graphs + CGCNN (the fastest path; tests/test_runner.py
covers the CHGNet default), a temporary work dir, the panel started by ``autostart`` and the
command-line cell switched on (autostart is what "Run all" does: cell 5 trains and waits). Fixed batch budgets
(``extra_settings``) skip the memory calibration, to keep the run short.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import venv
import zipfile
from pathlib import Path
from typing import Any

import pytest
from helpers import REPO

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("ipywidgets")

from colab_kit.plan.machine import COLAB_ENV_VARS  # noqa: E402

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
    set_form_fields(nb, mode="debug", model="cgcnn", work_dir=str(tmp_path / "work"), autostart=True, run_cli=True,
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
    assert re.search(r"epoch 1/\d+", widget_state) and "graph/s" in widget_state, "no progress bars in the panel"
    assert "== train" in widget_state and "test MAE" in widget_state and "Traceback" not in widget_state
    cli_text = _texts(cells["5b"].outputs)
    assert "Plan for --mode debug" in cli_text and re.search(r"Done: test \(n=\d+\): MAE \d", cli_text), cli_text[-1500:]
    assert "convert" in cli_text and "nothing to convert" in cli_text  # the CLI picked up the panel's run

    images = [o for o in cells["6"].outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2, "loss curve and parity plot not shown"
    assert "test_mae" in _texts(cells["6"].outputs)
    use_text = _texts(cells["7"].outputs)  # the trained model, loaded, predicts the first structures of the data
    assert "Predictor(cgcnn" in use_text and "predicted (eV/atom)" in use_text and "Traceback" not in use_text
    run_dir = tmp_path / "work" / "mp_eform_cgcnn_3000-radius-cgcnn-debug"
    assert (run_dir / "report" / "metrics.json").is_file()


def _wheel(folder: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> Path:
    """A minimal pure-Python wheel: ``import name`` gives ``__version__ == version``."""
    module, info = name.replace("-", "_"), f"{name.replace('-', '_')}-{version}.dist-info"
    files = {f"{module}/__init__.py": f"__version__ = {version!r}\n",
             f"{info}/METADATA": "Metadata-Version: 2.1\n" f"Name: {name}\nVersion: {version}\n"
             + "".join(f"Requires-Dist: {r}\n" for r in requires),
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b'=').decode()},"
                     f"{len(text.encode())}\n" for path, text in files.items()) + f"{info}/RECORD,,\n"
    path = folder / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name_, text in {**files, f"{info}/RECORD": record}.items():
            zf.writestr(name_, text)
    return path


def test_install_cell_adds_only_shows_progress_and_asks_for_restart_once(tmp_path: Path) -> None:
    """Cell 1 in a Colab-like kernel without colab_kit: real pip, local wheels standing in for PyPI.

    ``probe-dep`` 1.0 is installed and imported before the cell runs (as Colab imports its own
    packages). A colab_kit that needs ``probe-dep>=1`` is only added; one that needs ``>=2`` replaces
    it, and the cell says once that a restart is needed.
    """
    nb = nbformat.read(NOTEBOOK, as_version=4)
    cell = next(c.source for c in nb.cells if c.cell_type == "code" and c.source.startswith("#@title 1."))
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    probe1, _ = _wheel(wheels, "probe-dep", "1.0"), _wheel(wheels, "probe-dep", "2.0")
    adds, needs2 = tmp_path / "adds", tmp_path / "needs2"
    adds.mkdir(), needs2.mkdir()
    kit_adds = _wheel(adds, "colab_kit", "0.0.1", ("probe-dep>=1",))
    kit_needs2 = _wheel(needs2, "colab_kit", "0.0.2", ("probe-dep>=2",))
    venv.EnvBuilder(with_pip=True).create(tmp_path / "kernel")
    python = str(tmp_path / "kernel" / "bin" / "python")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PIP_")}, "PIP_NO_INDEX": "1",
           "PIP_FIND_LINKS": str(wheels), "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_CONFIG_FILE": os.devnull}
    subprocess.run([python, "-m", "pip", "install", "-q", str(probe1)], check=True, env=env)
    # A Colab kernel: google.colab imported at start, and so is one of its packages.
    prelude = "import sys, types; sys.modules['google.colab'] = types.ModuleType('google.colab'); import probe_dep\n"

    def run_cell(source: Path) -> str:
        res = subprocess.run([python, "-c", prelude + cell], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                             env={**env, "COLAB_KIT_SOURCE": str(source)})
        assert res.returncode == 0, res.stdout + res.stderr
        return res.stdout

    first = run_cell(kit_adds)
    assert "stay as they are" in first and re.search(r"\[\s*\d+ s\] Successfully installed colab.kit-0.0.1", first)
    assert "RESTART" not in first and "Replaced" not in first
    assert "colab_kit 0.0.1 is installed on Google Colab" in first
    again = run_cell(kit_adds)  # idempotent: nothing is installed the second time
    assert again.strip() == "colab_kit 0.0.1 is installed on Google Colab", again

    subprocess.run([python, "-m", "pip", "uninstall", "-y", "-q", "colab_kit"], check=True, env=env)
    upgrade = run_cell(kit_needs2)
    assert "probe-dep==1.0" in upgrade and "Installing it anyway" in upgrade  # pip's conflict, named
    assert upgrade.count("RESTART NEEDED") == 1 and "probe-dep 1.0 -> 2.0" in upgrade
    assert "colab_kit 0.0.2 is installed" in upgrade
    after = run_cell(kit_needs2)  # after the restart: the cell does nothing and says nothing more
    assert "RESTART" not in after and after.strip() == "colab_kit 0.0.2 is installed on Google Colab"
