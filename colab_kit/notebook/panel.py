"""The notebook control panel: widgets that build a Plan and call the same ``run`` as the CLI.

``show_panel()`` displays a :class:`ControlPanel`: mode, task (one property per structure, or an interatomic
potential: energies, forces, stresses), data source, graph kind / model, the
settings people most often change (prefilled from the Plan for this machine, the Plan's reason
beside each), Run / Resume / Stop, a live loss plot and an output area with the progress bars and
log lines. Nothing here decides anything: the panel collects overrides, asks
:func:`colab_kit.plan.make_plan` and hands the Plan to :func:`colab_kit.run.pipeline.run`.

Buttons:
    Run: run this plan. Like the CLI it continues the earlier work of the same run (same data,
        graphs, model and mode) unless "start over" is ticked, which maps to ``fresh=True``.
    Resume: run without ``fresh`` whatever the checkbox says; enabled when earlier work of this run
        exists locally or in the persist dir (e.g. on Drive after a disconnect).
    Stop: training checkpoints at its next step and returns; Resume continues from there.

ipywidgets and IPython are imported only when a panel is built: ``import colab_kit.notebook.panel`` works
without them.
"""

from __future__ import annotations

import contextvars
import html
import threading
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from colab_kit import registry
from colab_kit.errors import ColabKitError
from colab_kit.notebook.output import into_panel, render_loss_plot
from colab_kit.plan import MODES, TASKS, Plan, PlanError, detect, make_plan
from colab_kit.run import folder_for, run
from colab_kit.run_folder import RunFolder
from colab_kit.training import describe_scores

if TYPE_CHECKING:
    from colab_kit.plan import Machine
    from colab_kit.run import RunResult

#: Settings with their own input box: name -> (kind, label).
SETTINGS: dict[str, tuple[str, str]] = {
    "batch_edges": ("int", "edges / batch"), "batch_atoms": ("int", "atoms / batch"),
    "workers": ("int", "loader workers"), "cutoff": ("float", "cutoff (Å)"),
    "work_dir": ("text", "work dir"), "persist_dir": ("text", "persist dir"),
}
_INSTALL_HINT = "the colab_kit control panel needs ipywidgets and IPython: pip install ipywidgets (then restart the kernel)"


def _ipywidgets() -> Any:
    try:
        import ipywidgets
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc
    return ipywidgets


def show_panel(**kwargs: Any) -> ControlPanel:
    """Build a :class:`ControlPanel` from ``kwargs``, display it in the notebook and return it."""
    panel = ControlPanel(**kwargs)
    try:
        from IPython.display import display
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc
    display(panel.widget)
    return panel


class ControlPanel:
    """Widgets that build a :class:`~colab_kit.plan.Plan` and run it, by default in a background thread.

    Args:
        mode: initial mode, one of :data:`colab_kit.plan.MODES`.
        machine: the machine to plan for (default: :func:`colab_kit.plan.machine.detect` now).
        background: run in a thread so Stop works; False runs inside ``start()`` (tests, scripts).
        progress: show progress bars (``tqdm.auto``: widget bars in Jupyter).
        plot_interval_s: redraw the live loss plot at most this often within an epoch (seconds).
        **overrides: plan settings to start from (``task``, ``data``, ``graph_kind``, ``model``, any key of
            :data:`SETTINGS`) and fixed settings without a box (e.g. ``n_samples=60``).

    Raises:
        PlanError: a ``mode`` or override that :func:`make_plan` refuses.
        ImportError: ipywidgets is not installed.
    """

    def __init__(self, *, mode: str = "debug", machine: Machine | None = None, background: bool = True,
                 progress: bool = True, plot_interval_s: float = 2.0, **overrides: Any) -> None:
        w = _ipywidgets()
        if machine is None:

            machine = detect(extra_dirs=tuple(str(overrides[k]) for k in ("work_dir",) if overrides.get(k)))
        self.machine = machine
        base = make_plan(machine, mode, **overrides)  # refuse bad arguments here, where the caller sees them
        self.background, self.progress, self.plot_interval_s = background, progress, plot_interval_s
        self.result: RunResult | None = None
        self.error: BaseException | None = None
        self.messages: list[str] = []  # the latest run's "resume" messages
        self.plot_updates = 0
        self._extra = {k: v for k, v in overrides.items()
                       if k not in (*SETTINGS, "task", "data", "graph_kind", "model")}
        self._initial = {k: v for k, v in overrides.items() if k in SETTINGS}  # what "Reset settings" returns to
        self._user_set, self._filling, self._busy = set(self._initial), False, False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._losses: list[float] = []
        self._epochs: list[dict[str, Any]] = []
        self._last_draw = self._last_status = 0.0

        desc = {"description_width": "100px"}
        # No description on the ToggleButtons: ipywidgets 8 puts it above the buttons, 7 beside them;
        # a label of the other boxes' width lines the row up on both.
        self.mode = w.ToggleButtons(options=list(MODES), value=mode,
                                    tooltips=[f"{m}: {p['n_samples'] or 'all'} structures, {p['epochs']} epochs"
                                              for m, p in MODES.items()])
        self.task = w.ToggleButtons(options=list(TASKS), value=base.task,
                                    tooltips=["one label per structure (e.g. formation energy)",
                                              "an interatomic potential: energies, forces, stresses (and magnetic "
                                              "moments) of DFT frames"])
        self.data = w.Text(value=base.data, description="data", style=desc, continuous_update=False,
                           placeholder="path, http(s) URL, Google Drive link/id or dataset name",
                           layout=w.Layout(width="95%"))
        self.graph_kind = w.Dropdown(options=self._graph_kinds(base.task), value=base.graph_kind,
                                     description="graphs", style=desc)
        self.model = w.Dropdown(options=self._models(base.task), value=base.model, description="model", style=desc)
        self.inputs: dict[str, Any] = {}
        self.reasons: dict[str, Any] = {}
        for name, (kind, label) in SETTINGS.items():
            cls = {"int": w.IntText, "float": w.FloatText, "text": w.Text}[kind]
            self.inputs[name] = cls(description=label, style=desc, continuous_update=False, layout=w.Layout(width="360px"))
            self.inputs[name].observe(lambda change, name=name: self._on_edit(name, change), "value")
            self.reasons[name] = w.HTML()
        self.start_over = w.Checkbox(value=False, indent=False, description="start over (delete this run's earlier work)")
        self.run_button = w.Button(description="Run", button_style="success", icon="play",
                                   tooltip="run this plan; continues earlier work of the same run unless 'start over' is ticked")
        self.resume_button = w.Button(description="Resume", button_style="info", icon="repeat")
        self.stop_button = w.Button(description="Stop", button_style="danger", icon="stop", disabled=True,
                                    tooltip="save what is done (shards, a checkpoint) and stop; Resume continues")
        self.reset_button = w.Button(description="Reset settings", tooltip="forget edited settings; use the plan's values")
        self.run_button.on_click(lambda _b: self.start(fresh=self.start_over.value))
        self.resume_button.on_click(lambda _b: self.start(fresh=False))
        self.stop_button.on_click(lambda _b: self.stop())
        self.reset_button.on_click(lambda _b: self.reset_settings())
        self.error_box, self.status, self.resume_box, self.report = w.HTML(), w.HTML(), w.HTML(), w.HTML()
        self.plot = w.Image(format="png", layout=w.Layout(display="none", max_width="640px"))
        self.output = w.Output(layout=w.Layout(max_height="320px", overflow="auto", border="1px solid #ddd"))
        self.plan_table = w.HTML()
        details = w.Accordion(children=[self.plan_table], selected_index=None)
        details.set_title(0, "full plan (every setting and why)")
        fixed = ", ".join(f"{k}={v!r}" for k, v in self._extra.items())
        self.widget = w.VBox([
            w.HTML(f"<b>colab_kit</b> &mdash; {_esc(_machine_line(machine))}"),
            w.HBox([w.HTML("<div style='width:92px;text-align:right;padding-right:8px'>mode</div>"), self.mode]),
            w.HBox([w.HTML("<div style='width:92px;text-align:right;padding-right:8px'>task</div>"), self.task]),
            self.data,
            w.HBox([self.graph_kind, self.model]), *(w.HBox([self.inputs[n], self.reasons[n]]) for n in SETTINGS),
            w.HTML(_esc(f"fixed settings: {fixed}") if fixed else ""), self.error_box,
            w.HBox([self.run_button, self.resume_button, self.stop_button, self.reset_button, self.start_over]),
            self.status, self.resume_box, self.plot, self.output, self.report, details,
        ])
        self._fill(base, every_box=True)
        self.mode.observe(lambda _c: self._refresh(), "value")
        self.task.observe(self._on_task, "value")
        self.data.observe(lambda _c: self._refresh(), "value")
        self.graph_kind.observe(lambda c: self._pair(self.model, self._model_for(c["new"])), "value")
        self.model.observe(lambda c: self._pair(self.graph_kind, registry.model_graph_kind(c["new"])), "value")

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    # -- the Plan from the widgets ---------------------------------------------------------------

    def overrides(self) -> dict[str, Any]:
        """The plan overrides the widgets stand for: edited settings, changed data/graphs, fixed settings."""
        out = dict(self._extra)
        task = {"task": self.task.value} if self.task.value != "property" else {}
        out.update(task)
        default = make_plan(self.machine, self.mode.value, **task)
        if self.data.value.strip() not in ("", default.data):
            out["data"] = self.data.value.strip()
        if self.graph_kind.value != default.graph_kind:
            out["graph_kind"] = self.graph_kind.value
        if self.model.value != registry.default_model(self.graph_kind.value):
            out["model"] = self.model.value
        for name in self._user_set:
            value = self.inputs[name].value
            out[name] = (value.strip() or None) if SETTINGS[name][0] == "text" else value
        return out

    def plan(self) -> Plan | None:
        """The Plan for the widgets' values, or None after showing in the panel why it cannot be made."""
        try:
            plan = make_plan(self.machine, self.mode.value, **self.overrides())
        except PlanError as exc:
            self.error_box.value = f"<div style='color:#b00020'><b>Cannot plan:</b> {_esc(exc)}</div>"
            return None
        self.error_box.value = "".join(f"<div style='color:#a15c00'>warning: {_esc(m)}</div>" for m in plan.warnings)
        return plan

    def reset_settings(self) -> None:
        """Forget edited settings: the boxes show the Plan's values (and those the panel was built with)."""
        self._user_set = set(self._initial)
        self._filling = True
        try:
            for name, value in self._initial.items():
                self.inputs[name].value = "" if value is None else value
        finally:
            self._filling = False
        self._refresh()

    def _on_edit(self, name: str, change: dict[str, Any]) -> None:
        if self._filling:
            return
        if name == "work_dir" and not str(change["new"]).strip():
            self._user_set.discard(name)  # an empty work dir means "the plan's choice"
        else:
            self._user_set.add(name)
        self._refresh()

    @staticmethod
    def _models(task: str) -> list[str]:
        """The models the model box offers for ``task``: all, or those that train as potentials."""
        return list(registry.potential_models() if task == "potential" else registry.property_models())

    @classmethod
    def _graph_kinds(cls, task: str) -> list[str]:
        """The graph kinds the graphs box offers: those of the task's models, in the registry's order."""
        kinds = {registry.model_graph_kind(m) for m in cls._models(task)}
        return [k for k in registry.graph_kinds() if k in kinds]

    def _on_task(self, change: dict[str, Any]) -> None:
        """Offer the task's models and graph kinds, and its shipped data where the box showed the other task's."""
        old, new = change["old"], change["new"]
        before = make_plan(self.machine, self.mode.value, **({"task": old} if old != "property" else {}))
        after = make_plan(self.machine, self.mode.value, **({"task": new} if new != "property" else {}))
        self._filling = True  # one refresh at the end, not one per box
        try:
            model = self.model.value if self.model.value in self._models(new) else after.model
            self.graph_kind.options = self._graph_kinds(new)
            self.model.options = self._models(new)
            self.model.value, self.graph_kind.value = model, registry.model_graph_kind(model)
            if self.data.value.strip() in ("", before.data):
                self.data.value = after.data
        finally:
            self._filling = False
        self._refresh()

    def _model_for(self, kind: str) -> str:
        """The model to show for graph kind ``kind``: the current one if it trains on it, else the kind's first."""
        if registry.model_graph_kind(self.model.value) == kind:
            return self.model.value
        models = [m for m in self._models(self.task.value) if registry.model_graph_kind(m) == kind]
        return models[0] if models else registry.default_model(kind)

    def _pair(self, other: Any, value: str | None) -> None:
        """Keep graph kind and model consistent (a model picks its graph kind, a graph kind its first model)."""
        if value is not None and other.value != value:
            other.value = value  # fires the other observer, which refreshes
        else:
            self._refresh()

    def _refresh(self) -> None:
        if self._filling:  # several boxes change together (a new task): one refresh when they are done
            return
        plan = self.plan()
        if plan is not None:
            self._fill(plan)

    def _fill(self, plan: Plan, every_box: bool = False) -> None:
        self._filling = True
        try:
            for name, box in self.inputs.items():
                if every_box or name not in self._user_set:
                    box.value = "" if getattr(plan, name) is None else getattr(plan, name)
                reason = _esc(plan.reasons.get(name, ""))
                self.reasons[name].value = f"<span style='color:#555;font-size:90%'>{reason}</span>"
        finally:
            self._filling = False
        self.plan_table.value = _plan_html(plan)
        self._show_earlier_work(plan)

    def _show_earlier_work(self, plan: Plan) -> None:
        found = earlier_work(plan)
        self.resume_button.disabled = self._busy or not found
        self.resume_button.tooltip = ("continue: " + "; ".join(found)) if found else "no earlier work of this run yet"

    # -- running -----------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._busy

    def start(self, *, fresh: bool = False) -> bool:
        """Run the panel's Plan (in a thread when ``background``). Returns False when it did not start."""
        if self._busy:
            self._set_status("already running: press Stop first")
            return False
        plan = self.plan()
        if plan is None:
            return False
        if plan.world_size > 1:
            self.error_box.value = (
                "<div style='color:#b00020'><b>Cannot start:</b> this kernel is rank "
                f"{plan.rank} of a {plan.world_size}-rank torchrun launch; the panel trains in one process. Run "
                "<code>torchrun --nproc_per_node N -m colab_kit run --mode ...</code> in a terminal (docs/scale-out.md), "
                "or unset WORLD_SIZE / RANK for a one-process run here.</div>")
            return False
        self.result, self.error, self.messages = None, None, []
        self._stop.clear()
        self._losses, self._epochs = [], []
        self.report.value = self.resume_box.value = ""
        self.output.outputs = ()
        self._set_busy(True)
        self._set_status("starting" + (" over (fresh)" if fresh else ""))
        if not self.background:
            self._work(plan, fresh)
            return True
        # In the click's context, stray prints from the thread belong to the request that started the
        # run, not to whichever cell happens to run next.
        ctx = contextvars.copy_context()
        self._thread = threading.Thread(target=ctx.run, args=(self._work, plan, fresh), name="colab_kit-run", daemon=True)
        self._thread.start()
        return True

    def run_here(self, *, fresh: bool = False) -> RunResult | None:
        """Run the panel's Plan in this thread and return when it ends (a notebook cell, "Run all"): the panel shows
        its progress as for Run; the notebook's interrupt (■, Ctrl-C) stops it as Stop does (a checkpoint is saved,
        and running the cell again continues it). Returns the result (None when it did not start or failed)."""
        background = self.background
        self.background = False
        try:
            started = self.start(fresh=fresh)
        finally:
            self.background = background
        return self.result if started else None

    def stop(self) -> None:
        """Ask the run to stop: conversion commits its shards in flight, training saves a checkpoint at its
        next step, and the run returns; Resume continues from there."""
        if self._busy:
            self._stop.set()
            self.stop_button.disabled = True
            self._set_status("stopping: a conversion commits the shards in flight, training saves a checkpoint "
                             "at its next step")

    def wait(self, timeout: float | None = None) -> RunResult | None:
        """Block until the background run ends (or ``timeout`` seconds); returns its result, if any."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.result

    def _work(self, plan: Plan, fresh: bool) -> None:

        t0 = time.perf_counter()
        with into_panel(self.output, folder_for(plan).log):
            try:
                self.result = run(plan, fresh=fresh, progress=self.progress, callbacks=[self._on_event],
                                  should_stop=self._stop.is_set, log_to_file=False)
            except Exception as exc:  # noqa: BLE001 - shown in the panel; finished work on disk stays valid
                self.error = exc
                # a ColabKitError says what to do in one line (e.g. another run holds this run folder): no traceback
                self.output.append_stderr(f"error: {exc}\n" if isinstance(exc, ColabKitError) else traceback.format_exc())
            finally:
                if self._losses or self._epochs:
                    self._draw()
                self._set_busy(False)
                self._show_earlier_work(plan)
        # The final status comes last: when it says "done", the buttons already work again.
        if self.result is not None:
            self._show_result(self.result, time.perf_counter() - t0)
        elif self.error is not None:
            self._set_status(f"<b>failed:</b> {_esc(str(self.error) or type(self.error).__name__)}", color="#b00020")

    def _on_event(self, ev: dict[str, Any]) -> None:
        kind, now = ev.get("event"), time.monotonic()
        if kind == "stage":
            self._set_status(f"<b>{_esc(ev['stage'])}</b>: {_esc(ev.get('message', ''))}")
        elif kind == "resume":
            self.messages.append(ev["message"])
            items = "".join(f"<li>{_esc(m)}</li>" for m in self.messages)
            self.resume_box.value = ("<div style='background:#e8f5e9;padding:4px 8px'><b>Resumed: picked up earlier "
                                     f"work of this run</b><ul style='margin:2px 0'>{items}</ul></div>")
        elif kind == "step":
            self._losses.append(float(ev["loss"]))
            if now - self._last_status > 0.5:
                self._last_status = now
                self._set_status(f"<b>train</b>: epoch {ev['epoch'] + 1}, step {ev['step']}, loss {ev['loss']:.4f}")
            if now - self._last_draw > self.plot_interval_s:
                self._draw()
        elif kind == "epoch":
            self._epochs.append({**ev, "at_step": len(self._losses)})
            scores = {k.removeprefix("val_"): v for k, v in ev.items() if k.startswith("val_")}
            val = (describe_scores(scores) if "energy_mae" in scores  # a potential: each target in its unit
                   else f"MAE {ev['val_mae']:.4f}")
            self._set_status(f"<b>epoch {ev['epoch']}</b>: train loss {ev['train_loss']:.4f}, "
                             f"validation {_esc(val)} ({ev['seconds']:.1f} s)")
            self._draw()

    def _draw(self) -> None:
        self._last_draw = time.monotonic()
        unit = self.result.metrics.get("unit") if self.result is not None else None
        if self._epochs and "val_energy_mae" in self._epochs[-1]:
            unit = "weighted sum over targets"  # a potential's val_mae: the loss weights times each target's MAE
        self.plot.value = render_loss_plot(self._losses, self._epochs, mae_unit=unit)
        self.plot.layout.display = ""
        self.plot_updates += 1

    def _show_result(self, result: RunResult, seconds: float) -> None:
        m = result.metrics
        if m.get("status") == "stopped":
            self._set_status(f"<b>stopped</b>: work so far saved in {_esc(result.run_dir)}; press Resume to continue "
                             "from it", color="#a15c00")
            return
        nan, unit = float("nan"), m.get("unit") or ""
        if "potential" in m:
            self._set_status(f"<b>done</b> in {seconds:.0f} s: test on {m.get('test_n', '?')} held-out frames: "
                             f"{_esc(m['potential']['summary'])}", color="#1b5e20")
        else:
            self._set_status(f"<b>done</b> in {seconds:.0f} s: test MAE <b>{m.get('test_mae', nan):.4f} {_esc(unit)}"
                             f"</b> on {m.get('test_n', '?')} held-out structures (predicting the training mean: "
                             f"{m.get('mean_predictor_test_mae', nan):.4f})", color="#1b5e20")
        budget = m.get("budget") or {}
        for name, key in (("batch_edges", "max_edges"), ("batch_atoms", "max_atoms")):
            if budget.get(key) and name not in self._user_set:  # the box shows the static estimate
                self.reasons[name].value = (f"<span style='color:#555;font-size:90%'>static estimate; this run "
                                            f"measured and used <b>{budget[key]}</b></span>")
        summary = Path(result.files.get("summary", RunFolder(result.run_dir).report_file("summary.txt")))
        text = summary.read_text() if summary.is_file() else ""
        self.report.value = (f"<b>Report</b><pre style='white-space:pre-wrap;margin:2px 0;line-height:1.35'>{_esc(text)}</pre>"
                             f"{_files_html(result.run_dir, result.files)}")

    def _set_status(self, text_html: str, color: str = "#222") -> None:
        self.status.value = f"<div style='color:{color}'>{text_html}</div>"

    def _set_busy(self, busy: bool) -> None:
        self._busy = busy
        for box in (self.mode, self.task, self.data, self.graph_kind, self.model, self.start_over, self.run_button,
                    self.reset_button, self.resume_button, *self.inputs.values()):
            box.disabled = busy
        self.stop_button.disabled = not busy


def earlier_work(plan: Plan) -> list[str]:
    """What a run of ``plan`` would pick up: its store (either kind), checkpoint and report, locally or in the persist
    dir."""

    found = []
    for root in [plan.work_dir] + ([plan.persist_dir] if plan.persist_dir else []):
        folder = folder_for(plan, root)
        if parts := folder.found():
            found.append(f"{', '.join(parts)} in {folder.root}")
    return found


# ---------------------------------------------------------------- what the panel says, as HTML

def _files_html(run_dir: Path, files: dict[str, Any]) -> str:
    """The run dir once, then each file relative to it (full paths wrap into an unreadable list)."""
    def rel(path: Any) -> str:
        try:
            return str(Path(path).relative_to(run_dir))
        except ValueError:
            return str(path)

    names = ", ".join(f"<code title='{_esc(k)}'>{_esc(rel(v))}</code>" for k, v in files.items() if Path(v) != run_dir)
    return f"<div style='line-height:1.5'>Files in <code>{_esc(run_dir)}</code>:<br>{names}</div>"


def _plan_html(plan: Plan) -> str:
    rows = "".join(f"<tr><td><code>{_esc(k)}</code></td><td>{_esc(v)}</td><td style='color:#555'>{_esc(r)}</td></tr>"
                   for k, v, r in plan.rows())
    return f"<table><tr><th>setting</th><th>value</th><th>why</th></tr>{rows}</table>"


def _machine_line(m: Machine) -> str:
    gpu = f"{m.gpu.name} ({m.gpu.free_bytes / 1024**3:.1f} GiB free)" if m.gpu is not None else "no GPU"
    drive = ", Drive mounted" if m.drive_mounted else ""
    return (f"{'Google Colab' if m.is_colab else 'local'}, {m.cpus} CPUs, {m.ram_available / 1024**3:.1f} GiB RAM "
            f"free, {gpu}{drive}")


def _esc(text: Any) -> str:
    return html.escape(str(text))
