"""ui: the control panel driven through its real widget callbacks (button clicks, value changes)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytest.importorskip("ipywidgets")

from helpers import REPO

from colab_kit.notebook.panel import ControlPanel, earlier_work, render_loss_plot  # noqa: E402
from colab_kit.plan.machine import GIB, Machine  # noqa: E402

RUN_NAME = "mp_eform_cgcnn_3000-radius-cgcnn-debug"


def _machine(tmp_path: Path, cpus: int = 2) -> Machine:
    """A CPU machine with plenty of RAM, so the plan does not depend on the host running the tests."""
    return Machine(ram_total=16 * GIB, ram_available=12 * GIB, cgroup_limit=None, cpus=cpus, gpu=None,
                   is_colab=False, drive_mounted=False, disk_free={str(tmp_path): 50 * GIB},
                   home_cache=str(tmp_path / "cache"))


def _panel(tmp_path: Path, **kw: object) -> ControlPanel:
    """A small, fast run: radius graphs + CGCNN on 80 shipped structures, 2 epochs.

    Fixed batch budgets skip the memory calibration, which measures the process's peak RSS and so
    depends on what earlier tests in this process did.
    """
    args = {"mode": "debug", "graph_kind": "radius", "work_dir": str(tmp_path / "work"), "n_samples": 80,
            "batch_atoms": 4000, "batch_edges": 60000, "progress": False, **kw}
    return ControlPanel(machine=_machine(tmp_path), **args)


def test_plan_follows_the_widgets(tmp_path: Path) -> None:
    panel = ControlPanel(machine=_machine(tmp_path))
    assert panel.inputs["cutoff"].value == 6.0 and panel.model.value == "chgnet"
    assert "CHGNet" in panel.reasons["cutoff"].value
    static_edges = panel.inputs["batch_edges"].value
    panel.mode.value = "quick"
    panel.graph_kind.value = "radius"  # the model follows: radius graphs train CGCNN
    assert panel.model.value == "cgcnn"
    assert panel.inputs["cutoff"].value == 8.0 and "radius" in panel.reasons["cutoff"].value
    assert panel.inputs["batch_edges"].value != static_edges  # re-filled from the CGCNN plan
    panel.inputs["workers"].value = 0
    panel.inputs["batch_atoms"].value = 1234
    plan = panel.plan()
    assert plan is not None
    assert (plan.mode, plan.graph_kind, plan.model, plan.workers, plan.batch_atoms) == ("quick", "radius", "cgcnn", 0, 1234)
    assert plan.n_samples == 3000 and plan.reasons["batch_atoms"] == "set by user"
    assert "set by user" in panel.reasons["batch_atoms"].value
    panel.model.value = "chgnet"  # and the graphs follow the model
    assert panel.graph_kind.value == "chgnet" and panel.inputs["cutoff"].value == 6.0
    assert panel.plan().batch_atoms == 1234  # an edited setting survives mode/converter changes
    panel.reset_button.click()
    assert panel.plan().reasons["batch_atoms"] != "set by user"
    panel.data.value = "/some/where/my_data.json.gz"
    assert panel.plan().data == "/some/where/my_data.json.gz"
    assert "batch_edges" in panel.plan_table.value and "why" in panel.plan_table.value


def test_task_switches_models_graphs_and_shipped_data(tmp_path: Path) -> None:
    """The task toggle offers the potential models and the shipped frames, and gives the other task's back."""
    from colab_kit import registry

    panel = ControlPanel(machine=_machine(tmp_path), graph_kind="radius")
    assert panel.task.value == "property" and panel.model.value == "cgcnn" and "cgcnn" in panel.model.options
    panel.task.value = "potential"
    assert list(panel.model.options) == list(registry.potential_models())
    assert panel.model.value == "chgnet" and panel.graph_kind.value == "chgnet"
    assert "radius" not in panel.graph_kind.options and panel.data.value == "mlearn_frames_221"
    plan = panel.plan()
    assert plan is not None and (plan.task, plan.model, plan.data) == ("potential", "chgnet", "mlearn_frames_221")
    assert "force_weight" in panel.plan_table.value and "Cannot plan" not in panel.error_box.value
    panel.model.value = "m3gnet"  # the graphs follow the model, as for a property
    assert panel.graph_kind.value == registry.model_graph_kind("m3gnet") and panel.plan().model == "m3gnet"
    panel.data.value = "/my/frames.extxyz"
    panel.task.value = "property"  # the user's data stays; the models come back
    assert "cgcnn" in panel.model.options and panel.model.value == "m3gnet" and panel.data.value == "/my/frames.extxyz"
    assert panel.plan().task == "property"


@pytest.mark.long  # CHGNet's double backward from the panel: CI runs it in its long step and with Colab's widgets
def test_potential_runs_in_the_panel(tmp_path: Path) -> None:
    """A potential trained from the panel on the shipped frames: its status gives each target's test MAE."""
    panel = ControlPanel(machine=_machine(tmp_path), background=False, progress=False, task="potential",
                         work_dir=str(tmp_path / "work"), n_samples=16, epochs=1, batch_atoms=600,
                         batch_edges=30000)  # fixed budgets: no calibration
    assert panel.start() is True
    result = panel.result
    assert result is not None and result.metrics["status"] == "finished", panel.error
    assert "energy MAE" in panel.status.value and "force MAE" in panel.status.value and "meV/Å" in panel.status.value
    assert panel._epochs and "val_force_mae" in panel._epochs[-1] and panel.plot_updates >= 1
    assert (result.run_dir / "report" / "parity_force.png").is_file()


def test_invalid_setting_is_shown_not_raised(tmp_path: Path) -> None:
    panel = _panel(tmp_path)
    panel.inputs["workers"].value = -1
    assert panel.plan() is None
    assert "workers" in panel.error_box.value and "&gt;= 0" in panel.error_box.value
    panel.inputs["workers"].value = 99  # more than the machine's 2 CPUs
    assert panel.plan() is None and "at most the 2 usable CPUs" in panel.error_box.value
    panel.run_button.click()  # refused: nothing starts
    assert not panel.running and panel.result is None
    panel.inputs["workers"].value = 0
    assert panel.plan() is not None and "Cannot plan" not in panel.error_box.value


def test_run_then_run_again_resumes(tmp_path: Path) -> None:
    panel = _panel(tmp_path)
    assert panel.resume_button.disabled  # nothing to resume yet
    panel.run_button.click()
    assert panel.wait(timeout=300) is not None, panel.error
    run_dir = tmp_path / "work" / RUN_NAME
    metrics = json.loads((run_dir / "report" / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["n_graphs"] == 80
    assert panel.result.run_dir == run_dir and "done" in panel.status.value
    assert "test MAE" in panel.status.value and "Report" in panel.report.value
    assert panel.plot_updates >= 2 and panel.plot.value[:4] == b"\x89PNG"
    assert not panel.messages and panel.resume_box.value == ""
    assert not panel.resume_button.disabled and "checkpoint" in panel.resume_button.tooltip
    assert panel.stop_button.disabled and not panel.run_button.disabled

    panel.run_button.click()  # same plan again: picks up the store and the checkpoint
    assert panel.wait(timeout=300) is not None, panel.error
    assert any("checkpoint found" in m for m in panel.messages)
    assert any("graph store found" in m for m in panel.messages)
    assert "Resumed" in panel.resume_box.value and "checkpoint found" in panel.resume_box.value

    panel.start_over.value = True  # start over: fresh=True deletes the earlier work first
    panel.run_button.click()
    assert panel.wait(timeout=300) is not None, panel.error
    assert not panel.messages and panel.result.metrics["status"] == "finished"


def test_stop_checkpoints_and_resume_continues(tmp_path: Path) -> None:
    # Many small batches so the run is still training when Stop arrives.
    panel = _panel(tmp_path, n_samples=100, epochs=50, batch_size=8, plot_interval_s=0.0)
    stepped = threading.Event()
    original = panel._on_event

    def on_event(ev: dict) -> None:
        original(ev)
        if ev.get("event") == "step" and ev["step"] >= 2:
            stepped.set()

    panel._on_event = on_event  # type: ignore[method-assign]
    panel.run_button.click()
    assert stepped.wait(timeout=300), panel.error
    assert panel.running and not panel.stop_button.disabled and panel.run_button.disabled
    panel.stop_button.click()
    result = panel.wait(timeout=300)
    assert result is not None and result.metrics["status"] == "stopped", panel.error
    assert "stopped" in panel.status.value and "Resume" in panel.status.value
    assert panel.plot_updates >= 1
    run_dir = tmp_path / "work" / RUN_NAME
    assert (run_dir / "checkpoints" / "latest.pt").is_file()
    assert not (run_dir / "report" / "metrics.json").exists()
    assert any("checkpoint" in w for w in earlier_work(panel.plan()))

    panel.stop_button.click()  # not running: nothing happens
    panel._on_event = original  # type: ignore[method-assign]
    panel._extra["epochs"] = 1  # keep the resumed run short
    panel.resume_button.click()
    assert panel.wait(timeout=300) is not None, panel.error
    assert any("checkpoint found" in m for m in panel.messages)
    assert "Resumed" in panel.resume_box.value


def test_synchronous_panel_and_plot(tmp_path: Path) -> None:
    png = render_loss_plot([1.0, 0.8, 0.7], [{"epoch": 1, "train_loss": 0.8, "val_mae": 0.9, "at_step": 3}])
    assert png[:4] == b"\x89PNG" and render_loss_plot([], [])[:4] == b"\x89PNG"
    panel = _panel(tmp_path, background=False, n_samples=40, epochs=1)
    assert panel.start() is True  # returns when the run is done
    assert not panel.running and panel.result is not None and panel.result.metrics["status"] == "finished"


def test_import_without_ipywidgets() -> None:
    code = ("import sys; sys.modules['ipywidgets'] = None; sys.modules['IPython'] = None\n"
            "import colab_kit.notebook as ui\n"
            "try:\n    ui.show_panel()\nexcept ImportError as e:\n    print('ERR', e)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "ERR" in res.stdout and "pip install ipywidgets" in res.stdout


def test_run_here_is_what_run_all_does_and_an_interrupt_stops_it_like_stop(tmp_path: Path) -> None:
    """The notebook's cell 5 with autostart: the run happens in the cell's thread; the notebook's interrupt (a SIGINT
    to the kernel) saves a checkpoint and returns; running the cell again continues and finishes."""
    import os
    import signal

    panel = _panel(tmp_path, n_samples=100, epochs=30, batch_size=8)
    original = panel._on_event

    def on_event(ev: dict) -> None:
        original(ev)
        if ev.get("event") == "step" and ev["step"] == 3:
            os.kill(os.getpid(), signal.SIGINT)  # the ■ button of a notebook

    panel._on_event = on_event  # type: ignore[method-assign]
    result = panel.run_here()
    assert result is not None and result.metrics["status"] == "stopped" and result.metrics["signal"] == "SIGINT"
    assert (tmp_path / "work" / RUN_NAME / "checkpoints" / "latest.pt").is_file()
    panel._on_event = original  # type: ignore[method-assign]
    panel._extra["epochs"] = 1
    again = panel.run_here()
    assert again is not None and again.metrics["status"] == "finished", panel.error
    assert any("checkpoint found" in m for m in panel.messages)


def test_the_notebook_offers_every_registered_model_and_trains_on_run_all() -> None:
    import re

    from colab_kit import registry

    nb = json.loads((REPO / "notebooks" / "colab_kit_quickstart.ipynb").read_text())
    source = "\n".join("".join(c["source"]) for c in nb["cells"])
    listed = re.search(r'^model = "\w+" #@param (\[.*\])$', source, re.M)
    assert listed and json.loads(listed.group(1)) == list(registry.models())
    assert re.search(r"^autostart = True #@param", source, re.M) and "panel.run_here()" in source
