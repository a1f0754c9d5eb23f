"""What the PyG models share: the adapter methods the trainer calls on a PyG ``Batch``, and a BatchNorm that
trains on a one-atom batch."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from colab_kit.graphs.radius import complete


def ridge_per_element(x: torch.Tensor, y: torch.Tensor, ridge: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-element values by ridge least squares of ``y [F]`` on element counts or fractions ``x [F, T]`` (float64):
    ``(fit [T] with 0 for the elements absent from every row, seen [T] bool)``. What the potentials fit before their
    first step (per-element reference energies)."""
    seen = x.sum(0) > 0
    xs = x[:, seen]
    fit = torch.zeros(x.shape[1], dtype=torch.float64)
    fit[seen] = torch.linalg.solve(xs.T @ xs + ridge * len(y) * torch.eye(int(seen.sum()), dtype=torch.float64),
                                   xs.T @ y)
    return fit, seen


class PygAdapter:
    """The trainer's batch interface for a model that consumes PyG ``Batch`` objects (targets in ``batch.y``).

    Mix in before ``nn.Module``: ``class MyModel(PygAdapter, nn.Module)``.
    """

    @staticmethod
    def to_device(batch: Any, device: torch.device, non_blocking: bool = False) -> Any:
        """The batch on ``device``; a batch of structures (a structure-only radius store) gets its edges built
        there."""
        moved = batch.to(device, non_blocking=non_blocking)
        if getattr(moved, "_device_edges", None) is not None:

            return complete(moved)
        return moved

    @staticmethod
    def targets(batch: Any) -> torch.Tensor:
        return batch.y

    @staticmethod
    def size(batch: Any) -> tuple[int, int, int]:
        """(graphs, atoms, edges) in the batch (edges as the model sees them, e.g. with ComFormer's self-loops)."""
        rule = getattr(batch, "_device_edges", None)  # a batch of structures: its edge count is known from the store
        return int(batch.num_graphs), int(batch.num_nodes), int(rule[2] if rule else batch.edge_index.shape[1])


class BatchNormAnySize(nn.BatchNorm1d):
    """BatchNorm1d that normalises a one-row input with its running statistics instead of failing, and whose
    running statistics are a plain mean over the first batches.

    In training mode ``BatchNorm1d`` needs two or more values per channel; a batch that is one single-site
    cell (real MP sets have them; an epoch's last batch or a calibration step can be just that) has one
    node. Such a step uses the running mean/variance (as in evaluation) and leaves them unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            # running statistics as the plain mean of the first 10 batches, then the usual 0.1 moving average:
            # with momentum 0.1 from the start, a short run evaluates with statistics still 40 % at their init
            self.momentum = max(0.1, 1.0 / (int(self.num_batches_tracked) + 1))
        if self.training and x.shape[0] <= 1:
            return nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                            False, 0.0, self.eps)
        return super().forward(x)
