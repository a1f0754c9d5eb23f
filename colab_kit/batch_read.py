"""Whole-batch reads: a batch's slices of the mapped shard arrays, gathered with a fixed number of numpy operations per
shard the batch touches (never per graph), then assembled into the model's batch by the graph kind's ``batch_fn``.

The per-graph path builds one graph object per item (a PyG ``Data``) and then collates them
(``Batch.from_data_list``); that Python work per graph, not the disk, is what limits a warm loader. Here the ragged
arrays of every graph in the batch are copied out of each shard with one fancy index per array (the element ranges
of all its graphs at once), into buffers laid out in the batch's order; the kind turns those into tensors with a
handful of vectorised operations (offsets from cumulative sums). Same batches, same tensors (tests/test_batch_read.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from colab_kit.store import RAGGED, GraphStore


@dataclass
class Gathered:
    """The arrays of a batch's graphs, concatenated in batch order.

    Attributes:
        arrays: each ragged store array (``z``, ``frac``, ``nbr`` ...) of all graphs, one after the other.
        counts: per graph, the length of its slice for each pointer (``atom_ptr``: atoms, ``edge_ptr``: edges ...).
        lattice: ``[G, 3, 3]`` float64.
        target: ``[G]`` float64 (the stored labels, or the replacement targets given).
        ids: the graphs' ids.
    """

    arrays: dict[str, np.ndarray]
    counts: dict[str, np.ndarray]
    lattice: np.ndarray
    target: np.ndarray
    ids: list[str]


def ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The concatenation of ``arange(s, s + n)`` for each (s, n), in two vectorised operations."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    before = np.cumsum(lengths) - lengths
    return np.repeat(np.asarray(starts, dtype=np.int64) - before, lengths) + np.arange(total, dtype=np.int64)


def gather(store: GraphStore, indices: Sequence[int], targets: np.ndarray | None = None) -> Gathered:
    """The arrays of graphs ``indices`` of ``store`` (``targets`` [N] replaces the stored labels, e.g. distillation).

    Per shard the batch touches: one range computation per pointer and one fancy index per array; then one
    concatenation and one permutation per array put the graphs back in batch order."""
    idx = np.asarray(indices, dtype=np.int64)
    n = len(idx)
    if n and (idx.min() < 0 or idx.max() >= len(store)):
        raise IndexError(f"graph index out of range for a store of {len(store)} graphs")
    if not n:
        raise ValueError("gather needs at least one graph index")
    starts = store._starts
    shard_of = np.searchsorted(starts, idx, side="right") - 1
    order = np.argsort(shard_of, kind="stable")  # batch positions, grouped by shard
    local = (idx - starts[shard_of])[order]
    cut = np.flatnonzero(np.diff(shard_of[order])) + 1
    bounds = np.concatenate(([0], cut, [n]))
    groups = [(int(shard_of[order[a]]), slice(int(a), int(b))) for a, b in zip(bounds[:-1], bounds[1:])]
    shards = [store._shard(k) for k, _ in groups]
    first = shards[0]
    pointers = sorted(first.ptr)
    names = [name for name in RAGGED if name in first.arrays]
    # in shard-grouped order: each graph's first row and row count per pointer; the rows of all graphs in one
    # vectorised step per pointer, cut into one piece per shard
    first_row: dict[str, list[np.ndarray]] = {p: [] for p in pointers}
    lengths_parts: dict[str, list[np.ndarray]] = {p: [] for p in pointers}
    for sh, (_, sl) in zip(shards, groups):
        j = local[sl]
        for p in pointers:
            ptr = sh.ptr[p]
            a = ptr[j]
            first_row[p].append(a)
            lengths_parts[p].append(ptr[j + 1] - a)
    lengths = {p: np.concatenate(lengths_parts[p]) for p in pointers}
    pieces = {}
    for p in pointers:
        rows = ranges(np.concatenate(first_row[p]), lengths[p])
        per_shard = np.add.reduceat(lengths[p], bounds[:-1]) if n else np.zeros(0, np.int64)
        pieces[p] = np.split(rows, np.cumsum(per_shard)[:-1])
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for g, sh in enumerate(shards):
        for name in names:
            parts[name].append(sh.arrays[name][pieces[RAGGED[name]][g]])
    lattice_g = np.concatenate([sh.arrays["lattice"][local[sl]] for sh, (_, sl) in zip(shards, groups)])
    target_g = np.concatenate([sh.target[local[sl]] for sh, (_, sl) in zip(shards, groups)])
    ids_g = [sh.ids[j] for sh, (_, sl) in zip(shards, groups) for j in local[sl].tolist()]
    # back to batch order: graph at batch position order[q] is the q-th in grouped order
    inverse = np.empty(n, dtype=np.int64)
    inverse[order] = np.arange(n)
    counts = {p: lengths[p][inverse] for p in pointers}
    grouped_start = {p: np.cumsum(lengths[p]) - lengths[p] for p in pointers}
    perm = {p: ranges(grouped_start[p][inverse], counts[p]) for p in pointers}
    arrays = {}
    for name in names:
        cat = np.concatenate(parts[name]) if len(parts[name]) > 1 else parts[name][0]
        arrays[name] = cat[perm[RAGGED[name]]]
    target = target_g[inverse] if targets is None else np.asarray(targets, dtype=np.float64)[idx]
    ids = [ids_g[q] for q in inverse.tolist()]
    return Gathered(arrays, counts, lattice_g[inverse], target, ids)
