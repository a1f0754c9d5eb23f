"""``TrainState``: the whole state of a training run, and exactly what a checkpoint holds.

Everything in it loads with ``torch.load(weights_only=True)``: state dicts, tensors, numbers, strings,
lists and dicts of those (RNG states as tensors, see :func:`colab_kit.training.checkpoint.rng_state`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from colab_kit.plan import Plan, PlanError, with_current_names

STATUSES = ("training", "finished", "early-stopped")


@dataclass
class TrainState:
    """Progress of a run. The module/optimizer state dicts are filled in when it is checkpointed.

    Attributes:
        epoch: epochs completed (the sampler's epoch); ``sampler`` holds the position within the epoch.
        step: optimiser steps taken since the start.
        epoch_loss_sum, epoch_graphs: running sums of the current epoch (loss x graphs, graphs), so a
            resumed epoch reports the mean over all of its batches, not only those after the resume.
        epoch_seconds, train_seconds: compute time of the current epoch and of all training, across resumes.
        budget: the batch budget in force (calibrated or shrunk after an out-of-memory error).
        world_size: ranks that trained together when it was saved (a resume may have another number).
        plan: the Plan the run was started with (compared on resume: :func:`check_resume`).
    """

    model: Mapping[str, Any] = field(default_factory=dict)
    optimizer: Mapping[str, Any] = field(default_factory=dict)
    scheduler: Mapping[str, Any] = field(default_factory=dict)
    scaler: Mapping[str, Any] = field(default_factory=dict)
    sampler: Mapping[str, int] = field(default_factory=dict)
    rng: Mapping[str, Any] = field(default_factory=dict)
    plan: Mapping[str, Any] = field(default_factory=dict)
    budget: Mapping[str, Any] = field(default_factory=dict)
    epoch: int = 0
    step: int = 0
    status: str = "training"
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"epoch": -1, "val_mae": math.inf})
    bad_epochs: int = 0
    epoch_loss_sum: float = 0.0
    epoch_graphs: int = 0
    epoch_seconds: float = 0.0
    train_seconds: float = 0.0
    world_size: int = 1
    rng_ranks: list[Any] = field(default_factory=list)  # every rank's random streams (several ranks), rank order
    best_model: Mapping[str, Any] = field(default_factory=dict)  # best.pt's weights, to rebuild it if it is lost

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint dict (shallow: state dicts are not copied)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainState:
        names = {f.name for f in fields(cls)}
        state = cls(**{k: v for k, v in d.items() if k in names})
        if state.status not in STATUSES:  # "stopped" (older checkpoints): a stop is only a pause
            state.status = "training"
        state.history = list(state.history)
        state.rng_ranks = list(state.rng_ranks)
        state.best = dict(state.best)
        return state


#: Plan fields a checkpoint cannot be resumed under different values of: they fix the model's shape,
#: its graphs, or the split and batch order the checkpoint is a position in.
RESUME_FIXED = ("model", "model_options", "graph_kind", "cutoff", "bond_cutoff", "max_neighbors", "seed", "split", "fold",
                "teacher", "distill_alpha")


def check_resume(saved: Mapping[str, Any], plan: Plan, where: str) -> None:
    """Refuse to resume a checkpoint (whose Plan is ``saved``) under a Plan that changes a :data:`RESUME_FIXED` field.

    Raises:
        PlanError: naming each changed field with both values, and the two ways out.
    """
    saved = with_current_names(saved)
    changed = [f"{k} {saved[k]!r} -> {getattr(plan, k)!r}" for k in RESUME_FIXED
               if k in saved and saved[k] != getattr(plan, k)]
    if changed:
        raise PlanError(
            f"the checkpoint in {where} was trained with other settings ({', '.join(changed)}); run with the "
            "checkpoint's values to resume, or pass --fresh (a new --out for `train`) to start training again"
        )
