"""Lazy datasets, fixed splits and memory-budgeted batches over a graph store.

Nothing but the current batches is in RAM: the Dataset holds a path, each process maps the store on
first use, and the batch sampler plans batches from per-graph atom and edge counts (read from the
shard pointers, not from graphs). Batches are packed up to a budget of atoms *and* edges, so a
200-atom cell gets a batch to itself instead of crashing a batch sized for 20-atom cells.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
from torch.utils.data import DataLoader, Dataset, Sampler

from colab_kit import registry
from colab_kit.errors import ColabKitError
from colab_kit.loader.frames import FrameCollate
from colab_kit.loader.splits import splits_for
from colab_kit.store import GraphStore, gather
from colab_kit.util import distributed

if TYPE_CHECKING:
    from colab_kit.plan import Plan

log = logging.getLogger(__name__)


class LoaderError(ColabKitError, ValueError):
    """A store that cannot be split or batched as asked; the message says what to change."""


class GraphDataset(Dataset):
    """Graph ``i`` of a store, as its model consumes it. Pickles to a path: workers reopen lazily.

    With ``batch_reads`` a DataLoader's batch comes from :meth:`__getitems__` already assembled (one read of its
    slices, :mod:`colab_kit.store.batch_read`), and its collate function is :func:`assembled`."""

    def __init__(self, store: GraphStore | str | Path, targets: np.ndarray | None = None, batch_reads: bool = False) -> None:
        self.root = str(store.root if isinstance(store, GraphStore) else store)
        self._store = store if isinstance(store, GraphStore) else None
        self.targets = targets  # [N] replacing the stored targets (distillation), or None
        self.batch_reads = batch_reads

    @property
    def store(self) -> GraphStore:
        if self._store is None:
            self._store = GraphStore(self.root)
        return self._store

    def __getstate__(self) -> dict[str, Any]:
        return {"root": self.root, "_store": None, "targets": self.targets, "batch_reads": self.batch_reads}

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        i = int(i)
        if self.store.potential is not None:  # (graph, (energy, forces, stress, magmoms))
            return self.store.frame(i)
        return self.store.item(i, None if self.targets is None else float(self.targets[i]))

    def __getitems__(self, indices: list[int]) -> Any:
        """A batch: assembled from one read of its graphs' slices (``batch_reads``), else the list of its items."""
        if self.batch_reads:

            kind = registry.graph_kind(self.store.graph_kind)
            return kind.batch_fn(gather(self.store, indices, self.targets), self.store.params)
        return [self[i] for i in indices]


# ---------------------------------------------------------------- batching

def pack(order: np.ndarray, atoms: np.ndarray, edges: np.ndarray, max_atoms: int, max_edges: int,
         max_graphs: int) -> list[list[int]]:
    """Greedy packing of ``order`` into batches within the budgets; an oversize graph goes alone."""
    batches: list[list[int]] = []
    cur: list[int] = []
    a_sum = e_sum = 0
    for i in order.tolist():
        a, e = int(atoms[i]), int(edges[i])
        if cur and (a_sum + a > max_atoms or e_sum + e > max_edges or len(cur) >= max_graphs):
            batches.append(cur)
            cur, a_sum, e_sum = [], 0, 0
        cur.append(i)
        a_sum += a
        e_sum += e
    if cur:
        batches.append(cur)
    return batches


class BudgetBatchSampler(Sampler[list[int]]):
    """Batches of store indices whose atoms and edges stay within a budget.

    The epoch's order is a permutation drawn from ``(seed, epoch)``; batches are packed greedily
    from ``offset`` (graphs already consumed this epoch), so resuming at an offset, or changing the
    budget mid-epoch (OOM back-off), re-packs only what is left and never skips or repeats a graph.

    With ``world`` ranks every rank packs the same global batches and takes batch ``rank`` of each group of
    ``world`` (:func:`rank_batches`); ``offset`` counts the graphs of all ranks, so it is the same on every rank
    and a checkpoint resumes under another world size by re-partitioning what is left.

    The trainer calls :meth:`advance` after each step and :meth:`next_epoch` at the epoch's end;
    ``state_dict()`` holds (epoch, offset, budget) for checkpoints.
    """

    def __init__(self, indices: np.ndarray, atoms: np.ndarray, edges: np.ndarray, max_atoms: int,
                 max_edges: int, max_graphs: int, shuffle: bool = True, seed: int = 0, rank: int = 0,
                 world: int = 1, equal_steps: bool = True) -> None:
        self.indices = np.asarray(indices, dtype=np.int64)
        self.atoms, self.edges = atoms, edges
        self.max_atoms, self.max_edges, self.max_graphs = int(max_atoms), int(max_edges), int(max_graphs)
        self.shuffle, self.seed = shuffle, seed
        self.rank, self.world, self.equal_steps = int(rank), int(world), equal_steps
        self.epoch = 0
        self.offset = 0
        #: (graphs of this rank's batch that count, graphs of the whole step across ranks) for each batch of
        #: the iteration in progress (set by ``__iter__``)
        self.step_info: list[tuple[int, int]] = []
        self._warned: set[int] = set()

    def order(self, epoch: int | None = None) -> np.ndarray:
        epoch = self.epoch if epoch is None else epoch
        if not self.shuffle:
            return self.indices
        return self.indices[np.random.default_rng([self.seed, epoch]).permutation(len(self.indices))]

    def global_batches(self) -> list[list[int]]:
        """The rest of this epoch's batches across all ranks, from the current offset."""
        rest = self.order()[self.offset:]
        batches = pack(rest, self.atoms, self.edges, self.max_atoms, self.max_edges, self.max_graphs)
        alone = [b[0] for b in batches if len(b) == 1 and b[0] not in self._warned
                 and (self.atoms[b[0]] > self.max_atoms or self.edges[b[0]] > self.max_edges)]
        if alone:  # one line for all of them: a large dataset can have thousands
            self._warned.update(alone)
            big = max(alone, key=lambda i: (self.edges[i], self.atoms[i]))
            log.warning("%d graph(s) exceed the batch budget (%d atoms, %d edges) and go alone, one per step (the "
                        "largest: graph %d, %d atoms, %d edges); a larger budget batches them (--set batch_edges=...)",
                        len(alone), self.max_atoms, self.max_edges, big, self.atoms[big], self.edges[big])
        return batches

    def _plan(self) -> tuple[list[list[int]], list[tuple[int, int]]]:
        glob = self.global_batches()
        if self.world == 1:
            return glob, [(len(b), len(b)) for b in glob]
        if not self.equal_steps:  # evaluation: no collective inside a batch, so ranks may differ by one batch
            mine = glob[self.rank::self.world]
            return mine, [(len(b), len(b)) for b in mine]
        return rank_batches(glob, self.rank, self.world)

    def batches(self) -> list[list[int]]:
        """This rank's rest of the epoch."""
        return self._plan()[0]

    def __iter__(self) -> Iterator[list[int]]:
        batches, self.step_info = self._plan()
        return iter(batches)

    def __len__(self) -> int:
        return len(self.batches())

    def advance(self, n_graphs: int) -> None:
        """``n_graphs`` (of all ranks) were consumed."""
        self.offset += n_graphs

    def next_epoch(self) -> None:
        self.epoch += 1
        self.offset = 0

    def set_budget(self, max_atoms: int, max_edges: int) -> None:
        self.max_atoms, self.max_edges = int(max_atoms), int(max_edges)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset, "max_atoms": self.max_atoms,
                "max_edges": self.max_edges, "max_graphs": self.max_graphs, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])
        self.max_atoms, self.max_edges = int(state["max_atoms"]), int(state["max_edges"])
        self.max_graphs, self.seed = int(state["max_graphs"]), int(state["seed"])


def rank_batches(batches: list[list[int]], rank: int, world: int) -> tuple[list[list[int]], list[tuple[int, int]]]:
    """Rank ``rank``'s share of the global ``batches``: batch ``rank`` of each group of ``world``, with the
    (counted graphs, graphs of the whole group) of each step.

    Every rank takes the same number of steps (DistributedDataParallel needs each rank in every gradient
    all-reduce). When the last group has fewer than ``world`` batches, a rank without one gets a padding batch:
    the first graph of the group's last batch, counted 0 times (its loss weight is 0), so across ranks an epoch
    still uses each training graph exactly once.
    """
    mine: list[list[int]] = []
    info: list[tuple[int, int]] = []
    for g in range(0, len(batches), world):
        group = batches[g:g + world]
        total = sum(len(b) for b in group)
        if rank < len(group):
            mine.append(group[rank])
            info.append((len(group[rank]), total))
        else:
            mine.append(group[-1][:1])
            info.append((0, total))
    return mine, info


def collate_fn(store: GraphStore) -> Any:
    """The store's graph kind's collate: ``(graph, target)`` items to its model's batch."""
    return registry.graph_kind(store.graph_kind).collate


def assembled(batch: Any) -> Any:
    """The collate function of a dataset whose ``__getitems__`` already assembles the batch."""
    return batch


def dataset_and_collate(store: GraphStore, targets: np.ndarray | None = None) -> tuple[GraphDataset, Any]:
    """The Dataset and collate function a DataLoader over ``store`` uses: whole-batch reads when the store's graph
    kind can assemble a batch from them (``batch_fn``), else one graph per item and the kind's collate; a potential's
    store batches its graphs with their labels (:class:`~colab_kit.loader.frames.FrameBatch`)."""
    if store.potential is not None:
        if targets is not None:
            raise LoaderError("a potential's store trains on its own labels: distillation targets replace one "
                              "label per structure; leave --set teacher unset")
        return GraphDataset(store), FrameCollate(registry.graph_kind(store.graph_kind).collate)
    if getattr(registry.graph_kind(store.graph_kind), "batch_fn", None) is not None:
        return GraphDataset(store, targets, batch_reads=True), assembled
    return GraphDataset(store, targets), collate_fn(store)


def make_loader(store: GraphStore, sampler: BudgetBatchSampler, workers: int = 0, pin_memory: bool = False,
                prefetch_factor: int | None = None, persistent_workers: bool = False,
                targets: np.ndarray | None = None) -> DataLoader:
    """A DataLoader over ``store`` driven by ``sampler`` (batches planned in the main process)."""
    kw: dict[str, Any] = {}
    if workers > 0:
        kw.update(prefetch_factor=prefetch_factor or 2, persistent_workers=persistent_workers)
    dataset, collate = dataset_and_collate(store, targets)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                      num_workers=workers, pin_memory=pin_memory, **kw)


def make_loaders(store: GraphStore, plan: Plan, splits: dict[str, np.ndarray] | None = None,
                 budget: tuple[int, int] | None = None, train_targets: np.ndarray | None = None) -> dict[str, DataLoader]:
    """train / val / test loaders with the Plan's settings; eval batches are ``eval_batch_size /
    batch_size`` times larger (no gradients). ``budget`` = (max_atoms, max_edges) overrides the Plan's;
    ``train_targets`` [N] replace the labels in the train loader only (distillation: validation and test see labels).
    In a torchrun launch each loader yields this rank's share of the batches."""

    splits = splits or splits_for(store, plan)
    atoms, edges = store.sizes()
    rank, world = distributed.rank(), distributed.size()
    max_atoms, max_edges = budget or (plan.batch_atoms, plan.batch_edges)
    # evaluation batches are larger (no gradients), except a potential's: its forces and stresses are gradients
    factor = 1 if store.potential is not None else max(1, plan.eval_batch_size // plan.batch_size)
    loaders = {}
    for name, idx in splits.items():
        train = name == "train"
        f = 1 if train else factor
        graphs = plan.batch_size if train or store.potential is not None else plan.eval_batch_size
        sampler = BudgetBatchSampler(idx, atoms, edges, max_atoms * f, max_edges * f, graphs, shuffle=train, seed=plan.seed,
                                     rank=rank, world=world, equal_steps=train)
        loaders[name] = make_loader(store, sampler, plan.workers, plan.pin_memory, plan.prefetch_factor,
                                    plan.persistent_workers and train, train_targets if train else None)
    return loaders
