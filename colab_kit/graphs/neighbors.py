"""The radius graph's neighbour rule, one definition for the graphs written to the store at conversion (numpy) and
the graphs built per batch on the training device from a structure-only store (torch, :mod:`.radius_device`).

The rule: atom j's image n is a neighbour of atom i when ``1e-8 Å < |pos_j + n @ L - pos_i| <= cutoff``; each atom
keeps its ``max_neighbors`` nearest, in the total order (squared distance, j, n). Every quantity is computed from
the stored float32 fractional coordinates and the float64 lattice with the explicit float64 expressions below
(products and sums element by element, never a matrix product whose summation order a BLAS may change), so numpy on
a CPU and torch on a GPU give the same bits, and equal distances are broken by index, never by a search's order.

A neighbour search (pymatgen's cell list, or :mod:`.radius_device`'s enumeration of images) only proposes
candidates, within the cutoff plus :data:`MARGIN`; which of them are edges, and in what order, is decided here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

TOL = 1e-8  # Å: closer than this is the atom itself (pymatgen's numerical_tol, as CHGNet calls it)
MARGIN = 1e-3  # Å added to a search's radius: its distances (float64 positions) and these differ by ~1e-6 Å at most
IMAGE_BASE = 256  # image components are stored as int8: n + 128 in [0, 256)


def cartesian(frac: Any, lattice: Any) -> Any:
    """Cartesian positions ``[A, 3]`` of fractional ``frac [A, 3]`` in ``lattice`` (``[A, 3, 3]`` per atom, or
    ``[1, 3, 3]``), as three element-wise products and two sums: the same bits for numpy and torch, for one graph
    and for a batch (a matrix product may sum in another order)."""
    return frac[:, 0:1] * lattice[:, 0] + frac[:, 1:2] * lattice[:, 1] + frac[:, 2:3] * lattice[:, 2]


def squared_lengths(pos: Any, shift: Any, center: Any, neighbor: Any) -> Any:
    """``|pos[neighbor] + shift - pos[center]|²`` per candidate, float64, numpy or torch alike."""
    v = (pos[neighbor] + shift) - pos[center]
    return (v[:, 0] * v[:, 0] + v[:, 1] * v[:, 1]) + v[:, 2] * v[:, 2]


def tie_key(neighbor: Any, image: Any) -> Any:
    """One int64 per candidate ordering (j, n) lexicographically: the tie-break after the distance."""
    b = IMAGE_BASE
    return ((neighbor * b + (image[:, 0] + 128)) * b + (image[:, 1] + 128)) * b + (image[:, 2] + 128)


def nearest(center: np.ndarray, neighbor: np.ndarray, image: np.ndarray, d2: np.ndarray, cutoff: float,
            max_neighbors: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The edges among candidates (numpy): within the cutoff, sorted by centre then (d², j, n), each centre's
    ``max_neighbors`` first. Returns (center, neighbor, image)."""
    order = np.flatnonzero((d2 <= cutoff * cutoff) & (d2 > TOL * TOL))
    if max_neighbors is not None and len(order):
        # first by (centre, d²) alone: only the k nearest and what ties with the k-th need the full key
        order = order[np.lexsort((d2[order], center[order]))]
        rank, run, first, length = _ranks(center[order])
        kth = d2[order][first + np.minimum(length, max_neighbors) - 1][run]
        order = order[(rank < max_neighbors) | (d2[order] == kth)]
    # np.take: numpy's fancy indexing of a 2-D array is several times slower
    order = order[np.lexsort((tie_key(neighbor[order], np.take(image, order, axis=0)), d2[order], center[order]))]
    if max_neighbors is not None and len(order):
        order = order[_ranks(center[order])[0] < max_neighbors]
    return center[order], neighbor[order], np.take(image, order, axis=0)


def _ranks(center: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For candidates sorted by centre: each one's rank within its centre, its run's number, and each run's first
    position and length."""
    first = np.flatnonzero(np.r_[True, center[1:] != center[:-1]])
    length = np.diff(np.r_[first, len(center)])
    run = np.repeat(np.arange(len(first)), length)
    return np.arange(len(center)) - first[run], run, first, length


def nearest_torch(center: Any, neighbor: Any, image: Any, d2: Any, radius2: Any, max_neighbors: int | None) -> Any:
    """:func:`nearest` in torch on any device, ``radius2`` the squared cutoff per candidate (or a number).

    Stable sorts, least significant key first, give the same total order as numpy's lexsort; as in
    :func:`nearest`, the full key is sorted only for each centre's k nearest and what ties with the k-th.
    Returns (center, neighbor, image, d2) of the kept edges."""
    import torch

    order = torch.nonzero((d2 <= radius2) & (d2 > TOL * TOL)).flatten()
    if max_neighbors is not None and len(order):
        order = order[torch.sort(d2[order], stable=True).indices]
        order = order[torch.sort(center[order], stable=True).indices]
        rank, first = _ranks_torch(center[order])
        last = torch.minimum(first + max_neighbors - 1, _run_end(center[order]))
        kth = d2[order][last]
        order = order[(rank < max_neighbors) | (d2[order] == kth)]
    order = order[torch.sort(tie_key(neighbor[order], image[order]), stable=True).indices]
    order = order[torch.sort(d2[order], stable=True).indices]
    order = order[torch.sort(center[order], stable=True).indices]
    if max_neighbors is not None and len(order):
        order = order[_ranks_torch(center[order])[0] < max_neighbors]
    return center[order], neighbor[order], image[order], d2[order]


def _ranks_torch(center: Any) -> tuple[Any, Any]:
    """For candidates sorted by centre: each one's rank within its centre and its run's first position."""
    import torch

    at = torch.arange(len(center), device=center.device)
    new = torch.ones_like(center, dtype=torch.bool)
    new[1:] = center[1:] != center[:-1]
    first = torch.cummax(torch.where(new, at, 0), dim=0).values
    return at - first, first


def _run_end(center: Any) -> Any:
    """For candidates sorted by centre: the last position of each one's run."""
    import torch

    at = torch.arange(len(center), device=center.device)
    end = torch.ones_like(center, dtype=torch.bool)
    end[:-1] = center[1:] != center[:-1]
    # the last position of a run is the first "end" at or after each position: a reverse cumulative minimum
    pos = torch.where(end, at, len(center))
    return torch.flip(torch.cummin(torch.flip(pos, [0]), dim=0).values, [0])
