"""The shipped quickstart notebook in a real browser: headless Chromium (Playwright) drives Jupyter.

The notebook is opened as shipped (a copy, so autosave cannot touch the committed file; in the
classic-Notebook run one form field is changed, see ``FORM``), every cell is run from the menu ("Run all": cell 5
trains the chosen mode by itself), and the test waits for the progress bars, the finished status line and the report;
then it clicks Run in the panel with the mouse, and the run continues the finished one. Nothing is set by hand:
default mode, data, graphs and model, and the batch budget from the memory calibration. The run
dir is the plan's default one under ``$XDG_CACHE_HOME``, pointed at a temporary folder.

The front end follows the installed ipywidgets, as users meet it: ipywidgets 8 in JupyterLab 4
(VS Code, local Jupyter); ipywidgets 7.7.1 in classic Notebook 6.5 with widgetsnbextension 3.6,
Colab's own pins (JupyterLab 4 cannot render ipywidgets 7: "Module @jupyter-widgets/controls,
version ^1.5.0 is not registered").

Needs Debian's ``chromium`` and ``chromium-driver`` and ``pip install playwright`` (no
``playwright install``: the system Chromium is used), plus ``jupyterlab`` (ipywidgets 8) or
``notebook`` 6 (ipywidgets 7). Skipped when any is missing, and without ``--runslow``; ``.ci/run``
installs them and runs it once in each of its two environments.
Leaves ``test-artifacts/panel-ipywidgets<major>.png`` (the panel) and ``browser-ipywidgets<major>.png``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
from helpers import REPO

pytestmark = pytest.mark.slow  # minutes: .ci/run runs it with --runslow in each environment

ipywidgets = pytest.importorskip("ipywidgets")

NOTEBOOK = REPO / "notebooks" / "colab_kit_quickstart.ipynb"
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
# The network is closed: nothing in the browser may try to reach out (QUIC, sync, component updates).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WIDGETS_MAJOR = int(ipywidgets.__version__.split(".")[0])
# JupyterLab runs the notebook's defaults (CHGNet fine-tuning); the classic-Notebook run picks CGCNN in the
# form's model dropdown, as a user would, so CGCNN and its memory calibration are seen in a browser too.
FORM = {} if WIDGETS_MAJOR >= 8 else {"model": "cgcnn"}
GRAPHS = "radius" if FORM else "chgnet"
RUN_NAME = f"mp_eform_cgcnn_3000-{GRAPHS}-{FORM.get('model', 'chgnet')}-debug"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_command(port: int, root: Path) -> list[str]:
    common = ["--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}", "--port-retries=0"]
    if WIDGETS_MAJOR >= 8:
        if importlib.util.find_spec("jupyterlab") is None:
            pytest.skip("ipywidgets 8 is shown in JupyterLab: pip install jupyterlab")
        return [sys.executable, "-m", "jupyterlab", *common, "--IdentityProvider.token=", "--ServerApp.password=",
                f"--ServerApp.root_dir={root}", "--LabApp.news_url=None"]
    try:
        from notebook import __version__ as nb_version
    except ImportError:
        pytest.skip("ipywidgets 7 is shown in classic Notebook 6: pip install notebook==6.5.7 widgetsnbextension==3.6.10")
    if int(nb_version.split(".")[0]) >= 7:
        pytest.skip(f"ipywidgets 7 needs classic Notebook 6 (Colab's 6.5.7), not notebook {nb_version}")
    return [sys.executable, "-m", "notebook", *common, "--NotebookApp.token=", "--NotebookApp.password=",
            f"--NotebookApp.notebook_dir={root}"]


@pytest.fixture()
def jupyter(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A Jupyter server on 127.0.0.1 (no token) serving a copy of the shipped notebook.

    Yields:
        (the notebook's URL, the colab_kit cache dir the kernel's plan uses).
    """
    root = tmp_path / "nb"
    root.mkdir()
    shutil.copy2(NOTEBOOK, root / NOTEBOOK.name)
    if FORM:
        import nbformat
        from test_notebook import set_form_fields

        nb = nbformat.read(root / NOTEBOOK.name, as_version=4)
        set_form_fields(nb, **FORM)
        nbformat.write(nb, root / NOTEBOOK.name)
    port = _free_port()
    cmd = _server_command(port, root)
    settings = tmp_path / "lab-settings"
    notify = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notify.parent.mkdir(parents=True)
    notify.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))  # no news pop-up over the page
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(settings), "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "ws"),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    for name in ("COLAB_RELEASE_TAG", "COLAB_GPU", "COLAB_BACKEND_VERSION", "COLAB_JUPYTER_IP"):
        env.pop(name, None)
    log_path = tmp_path / "jupyter.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=root)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/status", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"{cmd[2]} did not start: {log_path.read_text()[-3000:]}")
                time.sleep(0.5)
        page = "lab/tree" if WIDGETS_MAJOR >= 8 else "notebooks"
        yield f"{base}/{page}/{NOTEBOOK.name}", tmp_path / "cache" / "colab_kit"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and the kernels it started
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copy(log_path, ARTIFACTS / f"jupyter-ipywidgets{WIDGETS_MAJOR}.log")


def _run_all_cells(page: Any) -> None:
    """Run every cell from the menu, as a user does, once the kernel is idle."""
    if WIDGETS_MAJOR >= 8:
        page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=120_000)
        page.get_by_text(re.compile(r"\|\s*Idle")).first.wait_for(timeout=120_000)  # status bar: kernel started
        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
        page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
    else:
        page.locator("#notebook .cell").first.wait_for(timeout=120_000)
        page.locator("#kernel_indicator_icon.kernel_idle_icon").wait_for(state="attached", timeout=120_000)
        page.locator("#celllink").click()  # the "Cell" menu
        page.locator("#run_all_cells > a").click()


def test_quickstart_notebook_in_a_browser(tmp_path: Path, jupyter: tuple[str, Path]) -> None:
    if not (Path(CHROMIUM).exists() and shutil.which("chromedriver")):
        pytest.skip("needs Debian's chromium and chromium-driver: apt-get install -y chromium chromium-driver")
    sync_api = pytest.importorskip("playwright.sync_api")
    url, cache = jupyter
    if not FORM:
        assert (tmp_path / "nb" / NOTEBOOK.name).read_bytes() == NOTEBOOK.read_bytes()
    ARTIFACTS.mkdir(exist_ok=True)
    panel_shot = ARTIFACTS / f"panel-ipywidgets{WIDGETS_MAJOR}.png"
    page_shot = ARTIFACTS / f"browser-ipywidgets{WIDGETS_MAJOR}.png"
    console: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1280, "height": 1800})
        page = browser.pages[0] if browser.pages else browser.new_page()
        page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
        try:
            page.goto(url, timeout=120_000)
            _run_all_cells(page)
            run = page.locator("button.jupyter-button", has_text=re.compile(r"^\s*Run\s*$"))
            run.wait_for(timeout=300_000)  # cell 5 has displayed the panel
            panel = page.locator(".widget-vbox", has=run).last
            install_text = page.get_by_text(re.compile(r"colab_kit \S+ is installed")).first
            install_text.wait_for(timeout=60_000)
            panel.scroll_into_view_if_needed()
            output = panel.locator(".widget-output, .jupyter-widgets-output-area")  # ipywidgets 8 / 7 class names
            output.locator(".widget-hprogress").first.wait_for(timeout=300_000)  # a live tqdm bar in the panel
            done = panel.locator(".widget-html", has_text=re.compile(r"^\s*done in \d+ s"))
            done.first.wait_for(timeout=600_000)  # the status line once the run has finished
            status = done.first.inner_text()
            report = panel.locator(".widget-html", has_text=re.compile(r"^\s*Report")).first.inner_text()
            bars = output.locator(".widget-hprogress").count()
            log_text = output.inner_text()
            header = panel.locator(".widget-html").first.inner_text()
            panel.screenshot(path=str(panel_shot))
            page.screenshot(path=str(page_shot), full_page=True)
            run.click()  # the panel's Run after "Run all": the same run, continued (nothing to redo)
            again = panel.locator(".widget-html", has_text=re.compile(r"Resumed: picked up earlier work"))
            again.first.wait_for(timeout=300_000)
            done.first.wait_for(timeout=300_000)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / f"browser-failure-ipywidgets{WIDGETS_MAJOR}.png"), full_page=True)
            print("\n".join(console[-50:]))
            raise
        finally:
            browser.close()
    assert "colab_kit" in header and "CPUs" in header
    assert "done" in status and "test MAE" in status, status
    assert bars >= 3, "convert and two epoch progress bars expected in the panel's output area"
    assert "convert" in log_text and re.search(r"epoch\s2/\d+", log_text), log_text[-2000:]  # the bars' labels (tqdm writes &nbsp;)
    assert "== train" in log_text and "epoch 2: train loss" in log_text, log_text[-2000:]
    assert "test (n=" in report and f"300 graphs ({GRAPHS})" in report and "Files in" in report, report
    assert (cache / RUN_NAME / "report" / "metrics.json").is_file()
    assert panel_shot.stat().st_size > 10_000
    widget_errors = ("is not registered", "Failed to load model class", "Could not create a model", "Could not create view")
    assert not [c for c in console if any(e in c for e in widget_errors)], console
