"""The learning-rate schedules, stepped once per epoch (their state is the epoch count: a resume continues them)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from colab_kit.plan import Plan


def lr_factor(epoch: int, plan: Plan) -> float:
    """The learning rate of 0-based ``epoch`` as a fraction of ``plan.lr``: ``cosine`` from 1 to ``lr_min / lr``;
    ``warmup_cosine`` first rises from 1/25 over 30 % of the epochs (the one-cycle warm-up ComFormer's authors train
    with), then the same cosine. Stepped once per epoch, so a resume continues it exactly."""
    floor = plan.lr_min / plan.lr
    warmup = max(1, round(0.3 * plan.epochs)) if plan.schedule == "warmup_cosine" and plan.epochs > 1 else 0
    if epoch < warmup:
        return 1 / 25 + (1 - 1 / 25) * epoch / warmup
    t = min(1.0, (epoch - warmup) / max(1, plan.epochs - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))


def make_scheduler(optimizer: torch.optim.Optimizer, plan: Plan) -> torch.optim.lr_scheduler.LRScheduler:
    """The Plan's schedule, stepped once per epoch (its state is the epoch count: a resume continues it)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_factor(epoch, plan))
