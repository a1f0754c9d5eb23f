"""The run report: metrics.json, a loss-curve PNG, a parity-plot PNG and a short text summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from colab_kit.store import atomic_write_bytes


def _save_png(fig: Any, path: Path) -> None:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def loss_curve(history: list[dict[str, Any]], path: Path) -> Path:
    from matplotlib.figure import Figure  # no pyplot: no global backend state, works headless

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], "o-", label="train loss (MSE / std²)")
    ax2 = ax.twinx()
    ax2.plot(epochs, [h["val_mae"] for h in history], "s-", color="tab:orange", label="validation MAE")
    ax.set_xlabel("epoch")
    ax.set_ylabel("train loss")
    ax2.set_ylabel("validation MAE")
    fig.legend(loc="upper right", bbox_to_anchor=(0.85, 0.85))
    ax.set_title("Training")
    _save_png(fig, path)
    return path


def parity_plot(pred: np.ndarray, target: np.ndarray, mae: float, path: Path, unit: str = "") -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.add_subplot()
    ax.scatter(target, pred, s=6, alpha=0.6)
    lo = float(min(target.min(initial=0), pred.min(initial=0)))
    hi = float(max(target.max(initial=0), pred.max(initial=0)))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set_xlabel(f"target {unit}".strip())
    ax.set_ylabel(f"prediction {unit}".strip())
    ax.set_title(f"Test set: MAE {mae:.4f} {unit}".strip())
    _save_png(fig, path)
    return path


def write_report(out: str | Path, *, plan: Any, store: Any, result: Any, test: dict[str, Any],
                 baseline_mae: float, seconds: float, data_name: str) -> dict[str, Any]:
    """Write report/ files and return the metrics dict (also saved as metrics.json)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    metrics = {
        "data": data_name,
        "n_graphs": len(store),
        "n_skipped": int(store.manifest.get("n_failed", 0)),
        "converter": store.converter_name,
        "model": plan.model,
        "status": result.status,
        "epochs": result.epochs_done,
        "best_epoch": result.best_epoch,
        "best_val_mae": result.best_val_mae,
        "test_mae": test["mae"],
        "test_rmse": test["rmse"],
        "test_n": int(len(test["target"])),
        "mean_predictor_test_mae": baseline_mae,
        "budget": {"max_atoms": result.budget.max_atoms, "max_edges": result.budget.max_edges, "how": result.budget.how}
        if result.budget else None,
        "seconds": round(seconds, 1),
        "history": result.history,
    }
    atomic_write_bytes(out / "metrics.json", json.dumps(metrics, indent=2).encode())
    files = {"metrics": str(out / "metrics.json")}
    if result.history:
        files["loss_curve"] = str(loss_curve(result.history, out / "loss_curve.png"))
    if len(test["target"]):
        files["parity"] = str(parity_plot(test["pred"], test["target"], test["mae"], out / "parity.png"))
    summary = [
        f"data: {data_name} -> {len(store)} graphs ({store.converter_name}), {metrics['n_skipped']} skipped",
        f"plan: mode {plan.mode}, model {plan.model}, device {plan.device}, amp {plan.amp}, epochs {plan.epochs}",
        f"batch budget: {metrics['budget']['max_atoms'] if metrics['budget'] else '-'} atoms / "
        f"{metrics['budget']['max_edges'] if metrics['budget'] else '-'} edges"
        + (f" ({result.budget.how})" if result.budget else ""),
        f"training: {result.status} after {result.epochs_done} epochs; best epoch {result.best_epoch} "
        f"(validation MAE {result.best_val_mae:.4f})",
        f"test: MAE {test['mae']:.4f}, RMSE {test['rmse']:.4f} on {metrics['test_n']} structures "
        f"(mean predictor MAE {baseline_mae:.4f})",
        f"time: {seconds:.0f} s",
    ]
    atomic_write_bytes(out / "summary.txt", ("\n".join(summary) + "\n").encode())
    files["summary"] = str(out / "summary.txt")
    metrics["files"] = files
    return metrics
