"""The run report: metrics.json, a loss-curve PNG, a parity-plot PNG and a short text summary.

Every number that has a unit carries it (``MAE 0.0812 eV/atom``); the unit comes from the target's
column name or the dataset's name (:mod:`colab_kit.util.units`), and an unknown target is named by its
column alone. Figures use matplotlib's ``Figure`` API (no pyplot): no global backend state, headless.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from colab_kit.run_folder import RunFolder
from colab_kit.training import NAMES, QUANTITIES, SCALE, STORE_UNITS, UNITS, describe_scores
from colab_kit.util.files import atomic_write_bytes
from colab_kit.util.logs import format_duration
from colab_kit.util.units import target_label, target_name_for_axis, target_quantity, target_unit, with_unit

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from colab_kit.plan import Plan
    from colab_kit.store import GraphStore
    from colab_kit.training import NAMES, UNITS, TrainResult, describe_scores

TIMING_KEYS = ("compute_seconds", "calls", "last_call_seconds")
_TRAIN_LOSS_LABEL = "train loss (MSE / std²)"  # the loss is on the standardised target: unitless


def format_scores(split: str, n: int, mae: float, rmse: float, baseline_mae: float | None, unit: str) -> str:
    """The one line that says how good a model is on a split, beside what predicting the mean scores.

    Args:
        split: ``"test"``, ``"val"`` or ``"train"``.
        n: structures in the split.
        mae, rmse: the model's errors, in ``unit``.
        baseline_mae: MAE of always predicting the training set's mean on the same split; ``None`` to leave it out.
        unit: the target's unit (``""`` when unknown: numbers are then printed bare).

    Returns:
        e.g. ``"test (n=300): MAE 0.0812 eV/atom, RMSE 0.1204 eV/atom; predicting the training mean: MAE 0.8931 eV/atom"``.
    """
    line = f"{split} (n={n}): MAE {with_unit(mae, unit)}, RMSE {with_unit(rmse, unit)}"
    if baseline_mae is not None:
        line += f"; predicting the training mean: MAE {with_unit(baseline_mae, unit)}"
    return line


def mean_predictor_mae(targets: np.ndarray, train_idx: np.ndarray, eval_idx: np.ndarray) -> float:
    """MAE on ``targets[eval_idx]`` of always predicting the mean of ``targets[train_idx]``: the floor to beat."""
    targets = np.asarray(targets, dtype=np.float64)
    if len(eval_idx) == 0:
        return float("nan")
    return float(np.mean(np.abs(targets[eval_idx] - targets[train_idx].mean())))


def reference_energy_mae(store: Any, train_idx: np.ndarray, eval_idx: np.ndarray, max_train: int = 20_000) -> float:
    """Energy MAE (eV/atom) on ``eval_idx`` of per-element reference energies fitted by least squares on (at most
    ``max_train`` of) the training frames: a potential's energy baseline, what composition alone explains."""
    def fraction(i: int) -> np.ndarray:
        z = np.asarray(store.arrays(int(i))["z"], np.int64)
        return np.bincount(z, minlength=119) / len(z)

    def fractions(idx: np.ndarray) -> np.ndarray:
        return np.stack([fraction(i) for i in idx]) if len(idx) else np.zeros((0, 119))

    y = store.targets()
    train = train_idx if len(train_idx) <= max_train else np.random.default_rng(0).choice(train_idx, max_train, False)
    x = fractions(train)
    seen = x.sum(0) > 0
    coef, *_ = np.linalg.lstsq(x[:, seen], y[train], rcond=None)
    return float(np.abs(fractions(eval_idx)[:, seen] @ coef - y[eval_idx]).mean()) if len(eval_idx) else float("nan")


def store_target_name(store: Any) -> str | None:
    """The label's column name that the store's source recorded (``"e_form"``; ``"target"`` for id_prop.csv)."""
    return store.manifest.target_name


def format_timing(timing: dict[str, Any]) -> str:
    """``"312 s of compute across 3 runs of the command (this run: 14 s)"``.

    Args:
        timing: ``compute_seconds`` (conversion + training + evaluation, summed over every run of the
            command), ``calls`` (how many times the command ran) and ``last_call_seconds`` (wall time of
            the latest run).
    """
    calls = int(timing["calls"])
    runs = "in 1 run of the command" if calls == 1 else f"across {calls} runs of the command"
    return (f"{format_duration(float(timing['compute_seconds']))} of compute {runs} "
            f"(this run: {format_duration(float(timing['last_call_seconds']))})")


def _integer_epochs(ax: Any, epochs: list[int]) -> None:
    from matplotlib.ticker import MaxNLocator

    # Epochs are counts: a 2-epoch run must not show ticks at 1.25 and 1.75.
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)


def loss_curve_figure(history: list[dict[str, Any]], unit: str = "", best_epoch: int | None = None,
                      title: str = "Training") -> Figure:
    """Train loss above, validation MAE below, sharing an integer epoch axis; the best epoch marked.

    Two panels rather than twin y axes: the curves have different units and scales, and on twin axes
    one hides the other and the reader has to guess which axis belongs to which line.

    Args:
        history: one dict per epoch with ``epoch`` (1-based), ``train_loss`` and ``val_mae``.
        unit: the target's unit, for the validation-MAE axis.
        best_epoch: the epoch whose weights were kept (default: the one with the lowest ``val_mae``).
        title: the figure's title.
    """
    from matplotlib.figure import Figure

    epochs = [int(h["epoch"]) for h in history]
    loss = np.array([h["train_loss"] for h in history], dtype=float)
    val = np.array([h["val_mae"] for h in history], dtype=float)
    if best_epoch is None and np.isfinite(val).any():
        best_epoch = epochs[int(np.nanargmin(val))]

    fig = Figure(figsize=(6.4, 5.2), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.plot(epochs, loss, "o-", color="tab:blue", ms=4)
    top.set_ylabel(_TRAIN_LOSS_LABEL)
    finite = loss[np.isfinite(loss) & (loss > 0)]
    if len(finite) > 1 and finite.max() / finite.min() > 30:  # a loss falling by decades reads on a log axis
        top.set_yscale("log")
    bottom.plot(epochs, val, "s-", color="tab:orange", ms=4)
    bottom.set_ylabel(f"validation MAE ({unit})" if unit else "validation MAE")
    bottom.set_xlabel("epoch")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    if best_epoch in epochs:
        i = epochs.index(best_epoch)
        for ax in (top, bottom):
            ax.axvline(best_epoch, color="0.4", ls="--", lw=1, zorder=0)
        bottom.plot([best_epoch], [val[i]], "*", color="tab:red", ms=13, zorder=3,
                    label=f"best: epoch {best_epoch}, MAE {with_unit(float(val[i]), unit)} (weights kept)")
        bottom.legend(loc="best", fontsize=8, framealpha=0.9)  # away from a curve that rises again
    _integer_epochs(bottom, epochs)
    fig.suptitle(title)
    return fig


def parity_figure(pred: np.ndarray, target: np.ndarray, *, mae: float, baseline_mae: float | None = None,
                  target_name: str | None = None, data_name: str | None = None, split: str = "test",
                  unit: str | None = None, baseline_name: str = "predicting the training mean") -> Figure:
    """Predicted against reference values on equal axes, with the y = x line, MAE and n in the title.

    Args:
        pred, target: ``[n]`` predictions and reference labels, in the target's unit.
        mae: the model's MAE on these points.
        baseline_mae: MAE of predicting the training mean on the same points (shown beside it).
        target_name: the label's column name (``"e_form"``); names the axes and finds the unit.
        data_name: the ``--data`` value, for the unit when the column name is generic.
        split: which split these points are.
        unit: the unit the user gave (``--set unit=...``), which wins over the one the names imply.
    """
    from matplotlib.figure import Figure

    pred, target = np.asarray(pred, dtype=float).ravel(), np.asarray(target, dtype=float).ravel()
    ok = np.isfinite(pred) & np.isfinite(target)
    pred, target = pred[ok], target[ok]
    quantity = target_quantity(target_name, data_name, unit)
    unit = quantity.unit if quantity else ""
    what = target_name_for_axis(target_name, data_name, unit)
    if quantity:
        xlabel, ylabel = f"{quantity.method} {what} ({unit})", f"predicted {what} ({unit})"
    else:  # no unit known: say so by naming the column and nothing more
        xlabel, ylabel = f"{what} (from the data)", f"predicted {what}"

    fig = Figure(figsize=(5.2, 5.4), layout="constrained")
    ax = fig.add_subplot()
    n = len(target)
    ax.scatter(target, pred, s=10 if n < 1000 else 3, alpha=0.6 if n < 1000 else 0.3, color="tab:blue",
               edgecolors="none", label=f"{split} structures")
    if n:
        lo, hi = float(min(target.min(), pred.min())), float(max(target.max(), pred.max()))
        pad = 0.05 * (hi - lo) or 0.5  # a single point still gets a visible square around it
        lo, hi = lo - pad, hi + pad
    else:
        lo, hi = 0.0, 1.0
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    title = f"{split} set (n={n}): MAE {with_unit(mae, unit)}"
    if baseline_mae is not None:
        title += f"\n{baseline_name}: MAE {with_unit(baseline_mae, unit)}"
    ax.set_title(title, fontsize=10)
    return fig


def save_png(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG atomically (a killed run never leaves half a picture); returns the path."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def _check_timing(timing: dict[str, Any]) -> dict[str, float | int]:
    missing = [k for k in TIMING_KEYS if k not in timing]
    if missing:
        raise ValueError(f"timing is missing {missing}; write_report needs {list(TIMING_KEYS)} (got {sorted(timing)})")
    return {"compute_seconds": round(float(timing["compute_seconds"]), 1), "calls": int(timing["calls"]),
            "last_call_seconds": round(float(timing["last_call_seconds"]), 1)}


def _short(data_name: str) -> str:
    # A title has room for the file's name, not for "/content/drive/MyDrive/.../x.json.gz".
    return Path(data_name.rstrip("/").split("?")[0]).name or data_name


def _finite(x: float | None) -> float | None:
    # json.dumps would write a bare NaN, which strict JSON readers (and jq) refuse.
    return None if x is None or not math.isfinite(x) else float(x)


def potential_scores(result: dict[str, Any]) -> dict[str, float | None]:
    """A potential's per-target scores of an evaluation ``result`` (``energy_mae``, ``force_cos``, ``*_baseline`` ...,
    in their reported units; None where not finite), without the weighted ``mae`` of the loss terms."""
    return {k: _finite(v) for k, v in result.items() if k.endswith(("_mae", "_rmse", "_cos", "_baseline"))
            and k != "mae"}


def _potential_report(store: GraphStore, test: dict[str, Any],
                      out: Any) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """A potential's test scores per target beside their baselines (and the shipped model's, when pretrained), one
    parity plot per target, and the summary's lines."""
    spec = store.potential
    scores = potential_scores(test)
    shipped = test.get("shipped")
    section: dict[str, Any] = {"targets": spec["targets"], "labels": spec, "test": scores,
                               "units": {NAMES[t]: UNITS[t] for t in spec["targets"]},
                               "summary": describe_scores(test, baselines=True)}
    lines = [f"potential: trains {', '.join(NAMES[t] for t in spec['targets'])} (energy per atom, forces eV/Å, "
             f"stress GPa tensile positive, magnetic moments μB)",
             f"test (n={len(test['target'])} frames): {describe_scores(test, baselines=True)}"]
    if shipped:
        section["shipped_test"] = {k: _finite(v) for k, v in shipped.items() if k.endswith(("_mae", "_cos"))
                                   and k != "mae"}
        lines.append(f"as shipped, before fine-tuning: {describe_scores(shipped)}")
    lines.append("baselines: energy = per-element reference energies fitted on the training frames; forces = zero; "
                 "stress and magnetic moments = their mean over the test frames")
    files = {}
    for t, points in (test.get("parity") or {}).items():
        name = NAMES[t]
        mae = (scores.get(f"{name}_mae") or float("nan")) / SCALE[t]  # the plot is in the labels' units
        base = scores.get(f"{name}_baseline")
        fig = parity_figure(points[1], points[0], mae=mae, target_name=QUANTITIES[t], unit=STORE_UNITS[t],
                            baseline_mae=None if base is None else base / SCALE[t],
                            baseline_name={"e": "per-element reference", "f": "zero forces"}.get(t, "their mean"))
        files[f"parity_{name}"] = str(save_png(fig, out(f"parity_{name}.png")))
    return section, files, lines


def write_report(folder: RunFolder, *, plan: Plan, store: GraphStore, result: TrainResult, test: dict[str, Any],
                 baseline_mae: float, timing: dict[str, Any], data_name: str,
                 target_name: str | None = None) -> dict[str, Any]:
    """Write the report files and return the metrics dict (also saved as metrics.json).

    Args:
        folder: the run folder; the report goes into its report/ (RunFolder.report_file names the files).
        plan: the Plan the run used (``mode``, ``model``, ``device``, ``amp``, ``epochs``).
        store: the GraphStore trained on.
        result: the TrainResult (``status``, ``epochs_done``, ``best_epoch``, ``best_val_mae``, ``history``,
            ``budget``, ``train_seconds``).
        test: :func:`colab_kit.training.evaluate.evaluate_weights`' dict: ``mae``, ``rmse``, ``pred``, ``target``.
        baseline_mae: test MAE of predicting the training mean (:func:`mean_predictor_mae`).
        timing: ``compute_seconds`` (accumulated across resumes), ``calls``, ``last_call_seconds``.
        data_name: what ``--data`` named.
        target_name: the label's column name; default: the one the store's source recorded.

    Returns:
        metrics.json's content plus ``"files"`` (name -> path of each file written).
    """
    folder.report.mkdir(parents=True, exist_ok=True)
    out = folder.report_file
    if target_name is None:
        target_name = plan.target or store_target_name(store)
    potential = getattr(store, "potential", None)
    given = plan.unit or ("eV/atom" if potential is not None else None)  # a potential's target: energy per atom
    unit = target_unit(target_name, data_name, given)
    time_ = _check_timing(timing)
    time_["train_seconds"] = round(float(getattr(result, "train_seconds", 0.0)), 1)
    n_test = int(len(test["target"]))
    budget = result.budget
    metrics = {
        "data": data_name,
        "target": target_name,
        "target_label": target_label(target_name, data_name, given),
        "unit": unit,
        "n_graphs": len(store),
        "n_skipped": store.manifest.n_failed,
        "graph_kind": store.graph_kind,
        "model": plan.model,
        "status": result.status,
        "epochs": result.epochs_done,
        "best_epoch": result.best_epoch,
        "best_val_mae": _finite(result.best_val_mae),
        "test_mae": _finite(test["mae"]),
        "test_rmse": _finite(test["rmse"]),
        "test_n": n_test,
        "mean_predictor_test_mae": _finite(baseline_mae),
        "budget": {"max_atoms": budget.max_atoms, "max_edges": budget.max_edges, "how": budget.how,
                   "gpu_memory": plan.gpu_memory, "peak_gpu_memory": result.peak_gpu_memory} if budget else None,
        "time": time_,
        "history": result.history,
    }
    potential_lines: list[str] = []
    if potential is not None:
        metrics["potential"], potential_files, potential_lines = _potential_report(store, test, out)
        # test_mae / test_rmse: the energy's, eV/atom (best_val_mae is the loss-weighted sum the best epoch is chosen by)
        metrics["test_mae"] = _finite(test.get("energy_mae", float("nan")) / 1000.0)
        metrics["test_rmse"] = _finite(test.get("energy_rmse", float("nan")) / 1000.0)
        metrics["best_val_mae_is"] = "the loss's weighted sum of MAEs (eV/atom, eV/Å, GPa, μB)"
    atomic_write_bytes(out("metrics.json"), json.dumps(metrics, indent=2, ensure_ascii=False).encode())
    files = {"metrics": str(out("metrics.json"))}
    if potential is not None:
        files.update(potential_files)
    if result.history:
        title = (f"{plan.model} on {_short(data_name)}: {target_name_for_axis(target_name, data_name, given)}\n"
                 f"{result.status} after {result.epochs_done} of {plan.epochs} epochs")
        fig = loss_curve_figure(result.history, unit, result.best_epoch, title=title)
        files["loss_curve"] = str(save_png(fig, out("loss_curve.png")))
    if n_test and potential is None:
        fig = parity_figure(test["pred"], test["target"], mae=test["mae"], baseline_mae=baseline_mae,
                            target_name=target_name, data_name=data_name, unit=given)
        files["parity"] = str(save_png(fig, out("parity.png")))
    b = metrics["budget"]
    summary = [
        f"data: {data_name} -> {len(store)} graphs ({store.graph_kind}), {metrics['n_skipped']} skipped",
        f"target: {target_name or 'target'}" + (f" = {metrics['target_label']}" if unit else
                                                " (unit not known: --set unit=... names it)"),
        f"plan: mode {plan.mode}, model {plan.model}, device {plan.device}, amp {plan.amp}, epochs {plan.epochs}",
        f"batch budget: {b['max_atoms'] if b else '-'} atoms / {b['max_edges'] if b else '-'} edges"
        + (f" ({budget.how})" if budget else ""),
        f"training: {result.status} after {result.epochs_done} epochs; best epoch {result.best_epoch} "
        + (f"(validation MAE {with_unit(result.best_val_mae, unit)})" if potential is None else
           f"(validation weighted MAE {result.best_val_mae:.4g}: the loss's weights over eV/atom, eV/Å, GPa, μB)"),
        *(potential_lines or [format_scores("test", n_test, test["mae"], test["rmse"], baseline_mae, unit)]),
        f"time: {format_timing(time_)}; training {format_duration(time_['train_seconds'])} of it",
    ]
    atomic_write_bytes(out("summary.txt"), ("\n".join(summary) + "\n").encode())
    files["summary"] = str(out("summary.txt"))
    metrics["files"] = files
    return metrics
