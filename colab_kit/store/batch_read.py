"""Whole-batch reads: a batch's slices of the mapped shard arrays, gathered with a fixed number of numpy operations per
shard the batch touches (never per graph), then assembled into the model's batch by the graph kind's ``batch_fn``.

The per-graph path builds one graph object per item (a PyG ``Data``) and then collates them
(``Batch.from_data_list``); that Python work per graph, not the disk, is what limits a warm loader. Here the ragged
arrays of every graph in the batch are copied out of each shard with one fancy index per array (the element ranges
of all its graphs at once), into buffers laid out in the batch's order; the kind turns those into tensors with a
handful of vectorised operations (offsets from cumulative sums). Same batches, same tensors (tests/store/test_batch_read.py).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from colab_kit.store.format import RAGGED, GraphStore


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


@dataclass
class StoreIndex:
    """Per-graph facts of a whole store, read once per process from the shard pointers (about 100 bytes a graph):
    a batch's row ranges, lattices and targets then come from a few vectorised lookups, not per-shard reads."""

    first: dict[str, np.ndarray]  # per pointer: each graph's first row in its shard
    length: dict[str, np.ndarray]  # per pointer: each graph's row count
    lattice: np.ndarray  # [N, 3, 3]
    target: np.ndarray  # [N]
    shard: np.ndarray  # [N] the shard each graph is in
    ids: list[str]  # [N] (the shards' own id strings, not copies)
    names: dict[str, list[str]]  # per pointer: the ragged arrays it slices, in store.RAGGED's order

    @classmethod
    def of(cls, store: GraphStore) -> StoreIndex:
        cached = _INDEXES.get(store)
        if cached is None:
            shards = [store.shard(k) for k in range(len(store.shards))]
            pointers = sorted(shards[0].ptr) if shards else []
            first = {p: np.concatenate([s.ptr[p][:-1] for s in shards]) for p in pointers}
            length = {p: np.concatenate([np.diff(s.ptr[p]) for s in shards]) for p in pointers}
            lattice = np.concatenate([np.asarray(s.arrays["lattice"], dtype=np.float64) for s in shards])
            shard = np.repeat(np.arange(len(shards)), [len(s.ids) for s in shards])
            ids = [i for s in shards for i in s.ids]
            present = [name for name in RAGGED if shards and name in shards[0].arrays]
            names = {p: [name for name in present if RAGGED[name] == p] for p in pointers}
            cached = _INDEXES[store] = cls(first, length, lattice, store.targets(), shard, ids, names)
        return cached


#: each open store's index, made once per process (a store pickled to a DataLoader worker makes its own)
_INDEXES: weakref.WeakKeyDictionary[GraphStore, StoreIndex] = weakref.WeakKeyDictionary()


def gather(store: GraphStore, indices: Sequence[int], targets: np.ndarray | None = None) -> Gathered:
    """The arrays of graphs ``indices`` of ``store`` (``targets`` [N] replaces the stored labels, e.g. distillation).

    Row ranges, lattices, targets and ids come from the store's :class:`StoreIndex`; per shard the batch touches
    there is one ``np.take`` per ragged array, into one buffer per array; one more ``take`` per array puts the rows
    in batch order."""
    idx = np.asarray(indices, dtype=np.int64)
    n = len(idx)
    if not n:
        raise ValueError("gather needs at least one graph index")
    if idx.min() < 0 or idx.max() >= len(store):
        raise IndexError(f"graph index out of range for a store of {len(store)} graphs")
    ix = StoreIndex.of(store)
    shard_of = ix.shard[idx]
    order = np.argsort(shard_of, kind="stable")  # batch positions, grouped by shard
    grouped, sorted_shards = idx[order], shard_of[order]
    bounds = np.concatenate(([0], np.flatnonzero(np.diff(sorted_shards)) + 1, [n]))
    shards = [store.shard(k) for k in sorted_shards[bounds[:-1]].tolist()]
    inverse = np.empty(n, dtype=np.int64)  # grouped position of each batch position
    inverse[order] = np.arange(n)
    in_order = bool((np.diff(order) > 0).all())  # already grouped (one shard, or shards in ascending order)
    arrays, counts = {}, {}
    for p, names in ix.names.items():
        lengths = ix.length[p][grouped]
        rows = ranges(ix.first[p][grouped], lengths)  # shard-local rows of every graph, grouped by shard
        cut = np.concatenate(([0], np.cumsum(lengths)))
        at = cut[bounds].tolist()  # each shard's slice of ``rows``
        counts[p] = lengths[inverse]
        perm = None if in_order else ranges(cut[:-1][inverse], counts[p])
        for name in names:
            first = shards[0].arrays[name]
            buf = np.empty((at[-1],) + first.shape[1:], dtype=first.dtype)
            # np.take, not arr[rows]: numpy's fancy indexing of a 2-D array ([E, 3] images) is ~3x slower; mode
            # "clip" writes straight into ``out`` (the rows come from the shard's own pointers: always in range)
            for sh, a, b in zip(shards, at[:-1], at[1:]):
                np.take(sh.arrays[name], rows[a:b], axis=0, out=buf[a:b], mode="clip")
            arrays[name] = buf if perm is None else np.take(buf, perm, axis=0)
    target = (ix.target if targets is None else np.asarray(targets, dtype=np.float64))[idx]
    return Gathered(arrays, counts, ix.lattice[idx], target, [ix.ids[i] for i in idx.tolist()])
