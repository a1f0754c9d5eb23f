"""Batches of a potential's frames: the graph kind's own batch beside the labels of its graphs."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import numpy as np
import torch


class FrameBatch(NamedTuple):
    """The labels of a batch's frames, in the store's units, graph after graph.

    ``energy [G]`` eV/atom, ``forces [N, 3]`` eV/Å, ``stress [G, 3, 3]`` GPa tensile positive (NaN rows: no stress),
    ``magmom [N]`` μB (NaN: none), ``atoms [G]`` the atom count of each graph."""

    energy: torch.Tensor
    forces: torch.Tensor
    stress: torch.Tensor
    magmom: torch.Tensor
    atoms: torch.Tensor

    def to(self, device: torch.device, non_blocking: bool = False) -> FrameBatch:
        return FrameBatch(*(t.to(device, non_blocking=non_blocking) for t in self))


class FrameCollate:
    """``(graph, (energy, forces, stress, magmoms))`` items to ``(the graph kind's batch, FrameBatch)``; the kind's
    collate sees ``(graph, energy)`` items, as for one label per structure. Picklable (DataLoader workers)."""

    def __init__(self, collate: Callable[[list[tuple[Any, float]]], Any]) -> None:
        self.collate = collate

    def __call__(self, items: list[tuple[Any, tuple[float, np.ndarray, np.ndarray, np.ndarray]]]) -> tuple[Any, FrameBatch]:
        labels = [lab for _, lab in items]
        batch = self.collate([(g, lab[0]) for g, lab in items])
        frames = FrameBatch(
            energy=torch.tensor([lab[0] for lab in labels], dtype=torch.float32),
            forces=torch.from_numpy(np.concatenate([np.asarray(lab[1], np.float32) for lab in labels])),
            stress=torch.from_numpy(np.stack([np.asarray(lab[2], np.float32) for lab in labels])),
            magmom=torch.from_numpy(np.concatenate([np.asarray(lab[3], np.float32) for lab in labels])),
            atoms=torch.tensor([len(lab[1]) for lab in labels], dtype=torch.int64),
        )
        return batch, frames
