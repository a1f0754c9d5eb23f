"""The control panel in a real browser: JupyterLab + headless Chromium (Playwright), Run clicked by the mouse.

Needs the Debian packages ``chromium`` (and ``chromium-driver``), ``pip install jupyterlab playwright``
(no ``playwright install``: the system Chromium is used). Skipped when any of them is missing.
Leaves a screenshot in ``test-artifacts/browser_run.png``.
"""

from __future__ import annotations

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
from typing import Iterator

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
RUN_NAME = "mp_eform_cgcnn_3000-radius-cgcnn-debug"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _panel_notebook(path: Path, work_dir: Path) -> None:
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    code = ("from colab_kit.ui import show_panel\n\n"
            f"panel = show_panel(mode='debug', converter='radius', work_dir={str(work_dir)!r}, n_samples=200,\n"
            "                   batch_atoms=4000, batch_edges=60000)  # fixed budgets: no calibration, same every time")
    nb = new_notebook(cells=[new_code_cell(code)],
                      metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(nb, path)


@pytest.fixture()
def jupyterlab(tmp_path: Path) -> Iterator[str]:
    """JupyterLab serving ``tmp_path/nb`` on 127.0.0.1, no token; yields its base URL."""
    root = tmp_path / "nb"
    root.mkdir()
    port = _free_port()
    settings = tmp_path / "lab-settings"
    notify = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notify.parent.mkdir(parents=True)
    notify.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))  # no news pop-up over the page
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(settings), "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "ws"),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config")}
    for name in ("COLAB_RELEASE_TAG", "COLAB_GPU", "COLAB_BACKEND_VERSION", "COLAB_JUPYTER_IP"):
        env.pop(name, None)
    log = (tmp_path / "jupyterlab.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--ServerApp.port={port}",
         "--ServerApp.ip=127.0.0.1", "--IdentityProvider.token=", "--ServerApp.password=",
         "--ServerApp.port_retries=0", f"--ServerApp.root_dir={root}", "--LabApp.news_url=None"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/status", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not start: {(tmp_path / 'jupyterlab.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and the kernels it started
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_panel_run_in_jupyterlab(tmp_path: Path, jupyterlab: str) -> None:
    if not (Path(CHROMIUM).exists() and shutil.which("chromedriver")):
        pytest.skip("needs Debian's chromium and chromium-driver: apt-get install -y chromium chromium-driver")
    pytest.importorskip("jupyterlab_widgets")  # the widget manager JupyterLab needs to render ipywidgets
    sync_api = pytest.importorskip("playwright.sync_api")
    work = tmp_path / "work"
    _panel_notebook(tmp_path / "nb" / "panel.ipynb", work)
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "browser_run.png"
    console: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 2000})
        page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
        try:
            page.goto(f"{jupyterlab}/lab/tree/panel.ipynb", timeout=120_000)
            page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=120_000)
            page.get_by_text(re.compile(r"\|\s*Idle")).first.wait_for(timeout=120_000)  # status bar: kernel started
            page.locator(".jp-Notebook .jp-Cell .cm-content").first.click()
            page.keyboard.press("Shift+Enter")
            run = page.locator("button.jupyter-button", has_text=re.compile(r"^\s*Run\s*$"))
            run.wait_for(timeout=120_000)
            panel = page.locator(".jp-OutputArea-output .widget-vbox").first
            run.click()
            output = panel.locator(".widget-output")
            output.get_by_text("epoch 1/2", exact=False).first.wait_for(timeout=300_000)  # a tqdm bar in the panel
            done = panel.locator(".widget-html", has_text=re.compile(r"^\s*done in \d+ s"))
            done.first.wait_for(timeout=300_000)  # the status line once the run has finished
            status = done.first.inner_text()
            report = panel.locator(".widget-html", has_text=re.compile(r"^\s*Report")).first.inner_text()
            bars = output.locator(".widget-hprogress").count()
            log_text = output.inner_text()
            panel.scroll_into_view_if_needed()
            page.screenshot(path=str(shot), full_page=True)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "browser_failure.png"), full_page=True)
            print("\n".join(console[-50:]))
            raise
        finally:
            browser.close()
    assert "done" in status and "test MAE" in status
    assert bars >= 3, "convert and two epoch progress bars expected in the panel's output area"
    assert "== train" in log_text and "epoch 2: train loss" in log_text
    assert "test: MAE" in report and "200 graphs (radius)" in report
    assert (work / RUN_NAME / "report" / "metrics.json").is_file()
    assert shot.stat().st_size > 10_000
