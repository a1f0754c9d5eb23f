"""The batch budget of a training run: calibrated on this rank's device with real steps, agreed across the ranks of
a torchrun launch (the smallest wins: every rank must plan the same batches), halved after an out-of-memory step.

In one process the epoch is re-packed under the halved budget and training goes on; in a distributed launch the
other ranks wait in a gradient all-reduce, so the rank saves the halved budget beside the checkpoints
(:func:`write_oom_hint`) and stops the launch: the same command resumes with it.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from colab_kit import distributed
from colab_kit.errors import ColabKitError
from colab_kit.fsutil import atomic_write_bytes
from colab_kit.loader import dataset_and_collate
from colab_kit.memory import Budget, StepTime, calibrate, static_budget
from colab_kit.run_folder import RunFolder
from colab_kit.store import GraphStore

if TYPE_CHECKING:
    from colab_kit.plan import Plan

log = logging.getLogger(__name__)


class TrainingError(ColabKitError, RuntimeError):
    """Training cannot go on; the message says what to change."""


def read_oom_hint(folder: RunFolder) -> Budget | None:
    """The halved budget a rank saved when it ran out of memory in a distributed launch (None when there is none)."""
    try:
        return Budget(**json.loads(folder.oom_hint.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def write_oom_hint(folder: RunFolder, budget: Budget) -> None:
    """Leave ``budget`` for the next launch of this run (a distributed launch cannot shrink its budget and go on)."""
    folder.checkpoints.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder.oom_hint, json.dumps(dataclasses.asdict(budget)).encode())


def initial_budget(model: Any, store: GraphStore, splits: dict[str, np.ndarray], plan: Plan, device: torch.device,
                   amp_dtype: torch.dtype | None) -> tuple[Budget, StepTime | None]:
    """The calibrated batch budget, within ``plan.budget_cap`` x the static one (the model is left unchanged), and
    the step time measured on the same steps (None when it could not be fitted)."""
    dataset, collate = dataset_and_collate(store)  # the batches training will read, the same way
    atoms, edges = store.sizes()

    def fwd_bwd(indices: list[int]) -> None:
        batch = model.to_device(collate(dataset.__getitems__(indices)), device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = (model(batch).float() - model.targets(batch)).pow(2).mean()
        loss.backward()
        model.zero_grad(set_to_none=True)

    snapshot = copy.deepcopy(model.state_dict())  # calibration steps must not change the model
    model.train()
    cap = (int(plan.batch_atoms * plan.budget_cap), int(plan.batch_edges * plan.budget_cap))
    try:
        budget, step_time = calibrate(fwd_bwd, splits["train"], atoms, edges, device, plan.train_memory, cap=cap)
    except MemoryError as exc:  # out of memory on the smallest graphs, or the fixed cost fills the memory
        log.warning("batch budget calibration failed (%s); using the plan's static budget", exc)
        budget, step_time = static_budget(plan), None
    model.load_state_dict(snapshot)
    return budget, step_time


def agreed(budget: Budget) -> Budget:
    """The budget every rank uses: the smallest of theirs (each measured its own device), so all plan the same batches."""
    if distributed.size() == 1:
        return budget
    max_atoms, max_edges = distributed.all_min(budget.max_atoms, budget.max_edges)
    return Budget(max_atoms, max_edges, f"{budget.how}; the smallest over {distributed.size()} ranks")
