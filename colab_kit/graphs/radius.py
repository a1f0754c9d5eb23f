"""Periodic radius graphs for PyTorch Geometric models (CGCNN / ComFormer style).

PyG's ``radius_graph`` ignores periodic images; this keeps every neighbour within ``cutoff`` across
images, optionally the ``max_neighbors`` nearest per atom (ties kept in pymatgen's order), with the
integer image offset of each neighbour so distances can be recomputed (and differentiated) from
positions at train time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from colab_kit.graphs.common import (
    IsolatedPolicy,
    base_arrays,
    check_isolated,
    check_policy,
    neighbor_cap,
    neighbor_list,
    positive_cutoff,
)
from colab_kit.registry import Graphs

if TYPE_CHECKING:
    from pymatgen.core import Structure


def convert(structure: Structure, cutoff: float = 8.0, max_neighbors: int | None = 12,
            on_isolated_atoms: IsolatedPolicy = "error", graph_id: str | None = None) -> dict[str, np.ndarray]:
    """One structure to compact radius-graph arrays.

    Args:
        structure: an ordered pymatgen Structure.
        cutoff: neighbour cutoff, Å.
        max_neighbors: keep at most this many nearest neighbours per atom (None: all).
        on_isolated_atoms: ``"error"`` (default) rejects a structure with an atom that has no neighbour within
            ``cutoff``; ``"warn"`` logs one line and keeps the graph (that atom has no edges); ``"ignore"`` keeps it.
        graph_id: the structure's id, named in the warning.

    Returns:
        ``z``, ``frac``, ``lattice`` (see :func:`~colab_kit.graphs.common.base_arrays`), ``nbr_count [A]``,
        ``nbr [E]`` (neighbour j of each edge, edges sorted by centre i then distance), ``image [E, 3]``
        (the cell of j: ``pos_j + image @ lattice``).
    """
    arrays = base_arrays(structure)
    n_atoms = len(arrays["z"])
    center, neighbor, image, distance = neighbor_list(structure, cutoff)
    check_isolated(center, arrays["z"], cutoff, on_isolated_atoms, graph_id)
    # sort by centre, then distance; stable so equal distances keep pymatgen's order
    order = np.lexsort((np.arange(len(center)), distance, center))
    center, neighbor, image, distance = center[order], neighbor[order], image[order], distance[order]
    if max_neighbors is not None:
        start = np.searchsorted(center, np.arange(n_atoms))
        rank = np.arange(len(center)) - start[center]
        keep = rank < max_neighbors
        center, neighbor, image = center[keep], neighbor[keep], image[keep]
    arrays.update(nbr_count=np.bincount(center, minlength=n_atoms), nbr=neighbor, image=image)
    return arrays


def to_data(g: dict[str, Any], target: float | None = None, graph_id: str | None = None) -> Any:
    """Compact arrays to a PyG ``Data``: ``z [A]``, ``pos [A, 3]`` Å, ``cell [1, 3, 3]``,
    ``edge_index [2, E]`` (row 0 neighbour j = source, row 1 centre i = target), ``edge_shift [E, 3]``
    (image of j), ``y [1]``."""
    import torch
    from torch_geometric.data import Data

    n_atoms = len(g["z"])
    lattice = np.asarray(g["lattice"], dtype=np.float32)
    center = np.repeat(np.arange(n_atoms, dtype=np.int64), g["nbr_count"])
    edge_index = np.stack([g["nbr"].astype(np.int64), center])
    data = Data(
        z=torch.from_numpy(g["z"].astype(np.int64)),
        pos=torch.from_numpy(cartesian(np.asarray(g["frac"], dtype=np.float32), lattice[None])),
        cell=torch.from_numpy(lattice).unsqueeze(0),
        edge_index=torch.from_numpy(edge_index),
        edge_shift=torch.from_numpy(g["image"].astype(np.float32)),
        num_nodes=n_atoms,
    )
    if target is not None:
        data.y = torch.tensor([target], dtype=torch.float32)
    if graph_id is not None:
        data.graph_id = graph_id
    return data


def cartesian(frac: np.ndarray, lattice: np.ndarray) -> np.ndarray:
    """Cartesian positions ``[A, 3]`` of fractional ``frac [A, 3]`` in ``lattice`` (``[A, 3, 3]`` per atom, or
    ``[1, 3, 3]``), as three element-wise products and sums: the same float32 bits whether one graph or a whole
    batch is converted (a matrix product may sum in another order)."""
    return frac[:, 0:1] * lattice[:, 0] + frac[:, 1:2] * lattice[:, 1] + frac[:, 2:3] * lattice[:, 2]


def batch_from(g: Any) -> Any:
    """The PyG ``Batch`` that :func:`collate` makes of the graphs' :func:`to_data`, assembled from a whole-batch read
    (:func:`colab_kit.batch_read.gather`) with vectorised operations: no ``Data`` per graph."""
    import torch
    from torch_geometric.data import Batch

    n_atoms, n_edges = g.counts["atom_ptr"], g.counts["edge_ptr"]
    n_graphs, total = len(n_atoms), int(n_atoms.sum())
    graph = np.repeat(np.arange(n_graphs, dtype=np.int64), n_atoms)
    lattice = g.lattice.astype(np.float32)
    atom_ptr = np.concatenate(([0], np.cumsum(n_atoms))).astype(np.int64)
    edge_ptr = np.concatenate(([0], np.cumsum(n_edges))).astype(np.int64)
    center = np.repeat(np.arange(total, dtype=np.int64), g.arrays["nbr_count"])
    neighbor = g.arrays["nbr"].astype(np.int64) + np.repeat(atom_ptr[:-1], n_edges)
    batch = Batch(
        z=torch.from_numpy(g.arrays["z"].astype(np.int64)),
        pos=torch.from_numpy(cartesian(g.arrays["frac"].astype(np.float32), np.take(lattice, graph, axis=0))),
        cell=torch.from_numpy(lattice),
        edge_index=torch.from_numpy(np.stack([neighbor, center])),
        edge_shift=torch.from_numpy(g.arrays["image"].astype(np.float32)),
        y=torch.from_numpy(g.target.astype(np.float32)),
        graph_id=list(g.ids),
        batch=torch.from_numpy(graph),
        ptr=torch.from_numpy(atom_ptr),
        num_nodes=total,
    )
    # what Batch.from_data_list records, so that to_data_list() / batch[i] / num_graphs work as on a collated batch
    per_graph = torch.arange(n_graphs + 1)
    a, e = torch.from_numpy(atom_ptr), torch.from_numpy(edge_ptr)
    batch._num_graphs = n_graphs
    batch._slice_dict = {"z": a, "pos": a, "cell": per_graph, "edge_index": e, "edge_shift": e, "y": per_graph,
                         "graph_id": per_graph}
    zero = torch.zeros(n_graphs, dtype=torch.long)
    batch._inc_dict = {"z": zero, "pos": zero, "cell": zero, "edge_index": a[:-1], "edge_shift": zero, "y": zero,
                       "graph_id": None}
    return batch


def edge_vectors(pos: Any, cell: Any, edge_index: Any, edge_shift: Any, batch: Any | None = None) -> Any:
    """Vectors from centre i to neighbour j across periodic images, ``[E, 3]`` Å (differentiable)."""
    import torch

    j, i = edge_index
    if batch is None:
        shift = edge_shift @ cell[0]
    else:
        shift = torch.bmm(edge_shift.unsqueeze(1), cell[batch[i]]).squeeze(1)
    return pos[j] + shift - pos[i]


def collate(items: list[tuple[Any, float]]) -> Any:
    """PyG ``Batch`` of ``Data`` graphs (targets in ``batch.y``)."""
    from torch_geometric.data import Batch

    return Batch.from_data_list([d for d, _ in items])


def _resolution(low_ram: bool) -> dict[str, tuple[Any, str]]:
    if low_ram:
        return {"cutoff": (6.0, "smaller graphs than the usual 8 Å"),
                "bond_cutoff": (0.0, "not used by radius graphs"),
                "max_neighbors": (8, "8 nearest neighbours instead of 12")}
    return {"cutoff": (8.0, "CGCNN's radius graph: neighbours within 8 Å"),
            "bond_cutoff": (0.0, "not used by radius graphs"),
            "max_neighbors": (12, "CGCNN's cap: the 12 nearest neighbours per atom")}


def _params(cutoff: float | None, bond_cutoff: float | None, max_neighbors: int | None,
            on_isolated_atoms: str) -> dict[str, Any]:
    return {"cutoff": positive_cutoff("cutoff", cutoff, 8.0), "max_neighbors": neighbor_cap(max_neighbors),
            "on_isolated_atoms": check_policy(on_isolated_atoms)}


def _to_graph(arrays: dict, target: float | None, graph_id: str | None, params: Any) -> Any:
    return to_data(arrays, target=target, graph_id=graph_id)


KIND = Graphs(name="radius", description="periodic radius graph, k nearest within the cutoff (CGCNN)",
              resolve=_resolution, make_params=_params, convert_fn=convert, to_graph_fn=_to_graph, collate_fn=collate,
              batch_fn=batch_from)
