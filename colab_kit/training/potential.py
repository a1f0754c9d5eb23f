"""The loss and the scores of an interatomic potential: energy per atom, forces, stress and magnetic moments.

The loss is CHGNet's Trainer's: a weighted sum over the trained targets of the mean error of each (MSE, or Huber with
``delta``), energy per atom, every force component, every stress component, every magnetic moment; default weights
energy 1, force 1, stress 0.1, magnetic moment 0.1, in the store's units (eV/atom, eV/Å, GPa, μB). Stress rows and
moments that are NaN (a frame without them) are left out of the mean.

Scores (:class:`Scores`, summed batch by batch, so a split of any size is scored in flat memory): mean absolute errors
in meV/atom, meV/Å, GPa and μB, the mean cosine between predicted and labelled force vectors, and the baselines
beside them: zero forces, the split's mean stress and mean moment (the energy's baseline, per-element reference
energies fitted on the training split, is :func:`colab_kit.run.report.reference_energy_mae`'s). ``val_mae`` (best weights, early stopping) is the
loss's weighted sum of the mean absolute errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

WEIGHTS = {"e": 1.0, "f": 1.0, "s": 0.1, "m": 0.1}  # CHGNet's Trainer's defaults
NAMES = {"e": "energy", "f": "force", "s": "stress", "m": "magmom"}
UNITS = {"e": "meV/atom", "f": "meV/Å", "s": "GPa", "m": "μB"}  # the scores' units
STORE_UNITS = {"e": "eV/atom", "f": "eV/Å", "s": "GPa", "m": "μB"}  # the labels' (and the parity points') units
SCALE = {"e": 1000.0, "f": 1000.0, "s": 1.0, "m": 1.0}  # store units to the scores' ones
QUANTITIES = {"e": "energy per atom", "f": "force component", "s": "stress component", "m": "magnetic moment"}
#: points of each target kept for parity plots (a uniform sample of the split's values)
PARITY_POINTS = 20_000


def _thin(parts: list[np.ndarray], axis: int) -> list[np.ndarray]:
    """``parts``, with every other value dropped once they hold over ``2 x PARITY_POINTS`` along ``axis``: what is
    kept for plots and baselines stays a uniform sample of bounded size however large the split."""
    if sum(p.shape[axis] for p in parts) <= 2 * PARITY_POINTS:
        return parts
    joined = np.concatenate(parts, axis=axis)
    return [joined[:, ::2] if axis == 1 else joined[::2]]


@dataclass(frozen=True)
class PotentialLoss:
    """Weights per target (only those in ``targets`` count) and the error function."""

    targets: str
    weights: dict[str, float]
    kind: str = "mse"  # or "huber"
    delta: float = 0.1

    @classmethod
    def from_plan(cls, plan: Any, targets: str) -> PotentialLoss:
        weights = {t: float(getattr(plan, f"{NAMES[t]}_weight", WEIGHTS[t])) for t in "efsm"}
        return cls(targets, weights, getattr(plan, "loss", "mse"), float(getattr(plan, "huber_delta", 0.1)))

    def _err(self, pred: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        keep = torch.isfinite(label)
        if not bool(keep.all()):
            pred, label = pred[keep], label[keep]
        if label.numel() == 0:
            return pred.sum() * 0.0  # keeps the graph: every rank's backward sees the same parameters
        if self.kind == "huber":
            return torch.nn.functional.huber_loss(pred.float(), label, delta=self.delta)
        return torch.nn.functional.mse_loss(pred.float(), label)

    def __call__(self, pred: dict[str, torch.Tensor], frames: Any) -> torch.Tensor:
        """The weighted loss of one batch (its mean over graphs, atoms or components per target)."""
        labels = _labels(frames)
        total = pred["e"].sum() * 0.0
        for t in self.targets:
            if t in pred and self.weights[t]:
                total = total + self.weights[t] * self._err(pred[t], labels[t])
        return total


def _labels(frames: Any) -> dict[str, torch.Tensor]:
    return {"e": frames.energy, "f": frames.forces, "s": frames.stress, "m": frames.magmom.abs()}


@dataclass
class Scores:
    """Sums of errors over batches; :meth:`result` gives the mean absolute errors and baselines."""

    targets: str
    weights: dict[str, float] = field(default_factory=lambda: dict(WEIGHTS))
    abs_err: dict[str, float] = field(default_factory=dict)
    sq_err: dict[str, float] = field(default_factory=dict)
    count: dict[str, int] = field(default_factory=dict)
    cos_sum: float = 0.0
    cos_n: int = 0
    force_abs: float = 0.0  # sum |label| over force components: the zero-force baseline
    label_sum: dict[str, float] = field(default_factory=dict)
    label_sq: dict[str, float] = field(default_factory=dict)
    parity: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def add(self, pred: dict[str, torch.Tensor], frames: Any) -> None:
        labels = _labels(frames)
        for t in self.targets:
            if t not in pred:
                continue
            p, y = pred[t].detach().float().cpu().reshape(-1), labels[t].detach().float().cpu().reshape(-1)
            keep = torch.isfinite(y)
            p, y = p[keep], y[keep]
            err = p - y
            self.abs_err[t] = self.abs_err.get(t, 0.0) + float(err.abs().sum())
            self.sq_err[t] = self.sq_err.get(t, 0.0) + float(err.pow(2).sum())
            self.count[t] = self.count.get(t, 0) + int(y.numel())
            self.label_sum[t] = self.label_sum.get(t, 0.0) + float(y.sum())
            self.label_sq[t] = self.label_sq.get(t, 0.0) + float(y.pow(2).sum())
            self.parity[t] = _thin([*self.parity.get(t, []), np.stack([y.numpy(), p.numpy()])], axis=1)
        if "f" in pred:
            pf, yf = pred["f"].detach().float().cpu(), frames.forces.detach().float().cpu()
            self.force_abs += float(yf.abs().sum())
            norm = pf.norm(dim=1) * yf.norm(dim=1)
            ok = norm > 1e-8
            self.cos_sum += float(((pf * yf).sum(1)[ok] / norm[ok]).sum())
            self.cos_n += int(ok.sum())

    def merge(self, other: Scores) -> None:
        for name in ("abs_err", "sq_err", "count", "label_sum", "label_sq"):
            mine, theirs = getattr(self, name), getattr(other, name)
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0) + v
        self.cos_sum += other.cos_sum
        self.cos_n += other.cos_n
        self.force_abs += other.force_abs
        for k, v in other.parity.items():
            self.parity[k] = _thin(self.parity.get(k, []) + v, axis=1)

    def result(self) -> dict[str, Any]:
        """``{"energy_mae": meV/atom, "force_mae": meV/Å, "force_cos", "stress_mae": GPa, "magmom_mae": μB, their
        ``*_rmse`` and ``*_baseline``, "mae": the weighted sum in store units}``."""
        out: dict[str, Any] = {}
        weighted = 0.0
        for t in self.targets:
            n = self.count.get(t, 0)
            if not n:
                continue
            mae = self.abs_err[t] / n
            weighted += self.weights.get(t, 0.0) * mae
            out[f"{NAMES[t]}_mae"] = mae * SCALE[t]
            out[f"{NAMES[t]}_rmse"] = (self.sq_err[t] / n) ** 0.5 * SCALE[t]
        out["mae"] = weighted if self.count else float("nan")
        out["rmse"] = out.get("energy_rmse", float("nan")) / 1000.0
        if self.cos_n:
            out["force_cos"] = self.cos_sum / self.cos_n
        out.update(self._baselines())
        return out

    def _baselines(self) -> dict[str, float]:
        out = {}  # the energy's (per-element reference energies fitted on the training split) needs the store
        if self.count.get("f"):
            out["force_baseline"] = self.force_abs / self.count["f"] * SCALE["f"]
        for t in "sm":
            parts = self.parity.get(t)
            if parts:
                y = np.concatenate([p[0] for p in parts])
                out[f"{NAMES[t]}_baseline"] = float(np.abs(y - y.mean()).mean()) * SCALE[t]
        return out

    def parity_points(self) -> dict[str, np.ndarray]:
        """``{target: [2, n] (label, prediction)}`` in the labels' units (:data:`STORE_UNITS`), at most
        :data:`PARITY_POINTS` each (a uniform sample)."""
        out = {}
        for t, parts in self.parity.items():
            both = np.concatenate(parts, axis=1)
            if both.shape[1] > PARITY_POINTS:
                both = both[:, np.linspace(0, both.shape[1] - 1, PARITY_POINTS).astype(np.int64)]
            out[t] = both
        return out


def describe_scores(scores: dict[str, Any], baselines: bool = False) -> str:
    """``energy MAE 12.3 meV/atom, force MAE 85.1 meV/Å (cos 0.93), ...`` from :meth:`Scores.result`'s dict."""
    parts = []
    for t in "efsm":
        name = NAMES[t]
        if f"{name}_mae" not in scores:
            continue
        text = f"{name} MAE {scores[f'{name}_mae']:.4g} {UNITS[t]}"
        if t == "f" and "force_cos" in scores:
            text += f" (cos {scores['force_cos']:.3f})"
        if baselines and f"{name}_baseline" in scores:
            text += f" [baseline {scores[f'{name}_baseline']:.4g}]"
        parts.append(text)
    return ", ".join(parts)
