"""Periodic radius graphs for PyTorch Geometric models (CGCNN / ComFormer style).

PyG's ``radius_graph`` ignores periodic images; this keeps every neighbour within ``cutoff`` across
images, optionally the ``max_neighbors`` nearest per atom (equal distances broken by neighbour index, then image:
:mod:`.neighbors`), with the integer image offset of each neighbour so distances can be recomputed (and
differentiated) from positions at train time.

``edges="stored"`` writes the edges to the store; ``edges="device"`` writes the structures and each atom's edge
count only, and the edges are built per batch on the training device (:mod:`.radius_device`), the same edges.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from colab_kit.graphs import radius_device
from colab_kit.graphs.common import (
    ConverterError,
    base_arrays,
    check_isolated,
    check_policy,
    neighbor_cap,
    neighbor_list,
    positive_cutoff,
)
from colab_kit.graphs.neighbors import MARGIN, cartesian, nearest, squared_lengths
from colab_kit.plan import IsolatedPolicy
from colab_kit.registry import Graphs

EDGES = ("stored", "device")  # where a radius graph's edges come from: the store, or built per batch on the device

if TYPE_CHECKING:
    from pymatgen.core import Structure


def convert(structure: Structure, cutoff: float = 8.0, max_neighbors: int | None = 12,
            on_isolated_atoms: IsolatedPolicy = "error", graph_id: str | None = None,
            edges: str = "stored") -> dict[str, np.ndarray]:
    """One structure to compact radius-graph arrays.

    Args:
        structure: an ordered pymatgen Structure.
        cutoff: neighbour cutoff, Å.
        max_neighbors: keep at most this many nearest neighbours per atom (None: all).
        on_isolated_atoms: ``"error"`` (default) rejects a structure with an atom that has no neighbour within
            ``cutoff``; ``"warn"`` logs one line and keeps the graph (that atom has no edges); ``"ignore"`` keeps it.
        graph_id: the structure's id, named in the warning.
        edges: ``"stored"`` keeps ``nbr`` and ``image``; ``"device"`` leaves them to be built per batch.

    Returns:
        ``z``, ``frac``, ``lattice`` (see :func:`~colab_kit.graphs.common.base_arrays`), ``nbr_count [A]``, and with
        stored edges ``nbr [E]`` (neighbour j of each edge, edges sorted by centre i, then distance, j and image)
        and ``image [E, 3]`` (the cell of j: ``pos_j + image @ lattice``).
    """
    arrays = base_arrays(structure)
    center, neighbor, image = edges_of(structure, arrays, cutoff, max_neighbors)
    check_isolated(center, arrays["z"], cutoff, on_isolated_atoms, graph_id)
    arrays["nbr_count"] = np.bincount(center, minlength=len(arrays["z"]))
    if edges == "stored":
        arrays.update(nbr=neighbor, image=image)
    return arrays


def edges_of(structure: Structure, arrays: dict[str, np.ndarray], cutoff: float,
             max_neighbors: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(center, neighbor, image) of the structure's edges by :mod:`.neighbors`' rule, from the stored float32
    fractional coordinates; pymatgen's neighbour list (a little beyond the cutoff) only proposes the candidates."""
    center, neighbor, image, _ = neighbor_list(structure, cutoff + MARGIN)
    lattice = arrays["lattice"][None]
    pos = cartesian(arrays["frac"].astype(np.float64), lattice)
    d2 = squared_lengths(pos, cartesian(image.astype(np.float64), lattice), center, neighbor)
    return nearest(center, neighbor, image, d2, cutoff, max_neighbors)


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


def batch_from(g: Any, params: Any = None) -> Any:
    """The PyG ``Batch`` that :func:`collate` makes of the graphs' :func:`to_data`, assembled from a whole-batch read
    (:func:`colab_kit.store.batch_read.gather`) with vectorised operations: no ``Data`` per graph.

    From a structure-only store (no ``nbr``) it is a batch of structures (``z``, ``frac``, float64 ``lattice``)
    that :func:`complete` turns into that same batch on the device it is moved to (the model adapter's
    ``to_device`` does)."""
    import torch
    from torch_geometric.data import Batch

    n_atoms = g.counts["atom_ptr"]
    n_graphs, total = len(n_atoms), int(n_atoms.sum())
    graph = np.repeat(np.arange(n_graphs, dtype=np.int64), n_atoms)
    atom_ptr = np.concatenate(([0], np.cumsum(n_atoms))).astype(np.int64)
    common = dict(z=torch.from_numpy(g.arrays["z"].astype(np.int64)), y=torch.from_numpy(g.target.astype(np.float32)),
                  graph_id=list(g.ids), batch=torch.from_numpy(graph), ptr=torch.from_numpy(atom_ptr), num_nodes=total)
    if "nbr" not in g.arrays:
        batch = Batch(frac=torch.from_numpy(g.arrays["frac"].astype(np.float32)), lattice=torch.from_numpy(g.lattice),
                      **common)
        batch._num_graphs = n_graphs
        batch._device_edges = (float(params["cutoff"]), params["max_neighbors"], int(g.arrays["nbr_count"].sum()))
        return batch
    n_edges = g.counts["edge_ptr"]
    lattice = g.lattice.astype(np.float32)
    center = np.repeat(np.arange(total, dtype=np.int64), g.arrays["nbr_count"])
    neighbor = g.arrays["nbr"].astype(np.int64) + np.repeat(atom_ptr[:-1], n_edges)
    batch = Batch(
        pos=torch.from_numpy(cartesian(g.arrays["frac"].astype(np.float32), np.take(lattice, graph, axis=0))),
        cell=torch.from_numpy(lattice),
        edge_index=torch.from_numpy(np.stack([neighbor, center])),
        edge_shift=torch.from_numpy(g.arrays["image"].astype(np.float32)),
        **common,
    )
    record_slices(batch, torch.from_numpy(atom_ptr), torch.from_numpy(np.concatenate(([0], np.cumsum(n_edges)))))
    return batch


def complete(batch: Any, search: str | None = None) -> Any:
    """A batch of structures from :func:`batch_from` (on any device) made the radius-graph batch of the stored
    path there: edges built by :func:`colab_kit.graphs.radius_device.build`, positions and cells in float32.
    A batch that has its edges is returned as it is."""
    import torch


    rule = getattr(batch, "_device_edges", None)  # PyG keeps "_" attributes beside the data, through .to() and pickling
    if rule is None:
        return batch
    del batch._device_edges
    cutoff, max_neighbors, _ = rule
    frac, lattice = batch.frac, batch.lattice
    center, neighbor, image = radius_device.build(frac, lattice, batch.ptr, cutoff, max_neighbors, search)
    del batch.frac, batch.lattice
    cell = lattice.to(torch.float32)
    batch.pos = cartesian(frac, cell[batch.batch])
    batch.cell = cell
    batch.edge_index = torch.stack([neighbor, center])
    batch.edge_shift = image.to(torch.float32)
    per_graph = torch.bincount(batch.batch[center], minlength=batch._num_graphs).cpu()
    # slice records stay on the CPU, as on a collated batch moved with .to()
    record_slices(batch, batch.ptr.cpu(), torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(per_graph, 0)]))
    return batch


def record_slices(batch: Any, atom_ptr: Any, edge_ptr: Any) -> None:
    """What ``Batch.from_data_list`` records, so that ``to_data_list()`` / ``batch[i]`` / ``num_graphs`` work as
    on a collated batch."""
    import torch

    n_graphs = len(atom_ptr) - 1
    per_graph = torch.arange(n_graphs + 1, device=atom_ptr.device)
    a, e = atom_ptr.to(torch.long), edge_ptr.to(torch.long)
    batch._num_graphs = n_graphs
    batch._slice_dict = {"z": a, "pos": a, "cell": per_graph, "edge_index": e, "edge_shift": e, "y": per_graph,
                         "graph_id": per_graph}
    zero = torch.zeros(n_graphs, dtype=torch.long, device=atom_ptr.device)
    batch._inc_dict = {"z": zero, "pos": zero, "cell": zero, "edge_index": a[:-1], "edge_shift": zero, "y": zero,
                       "graph_id": None}


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


def make_params(cutoff: float | None, bond_cutoff: float | None, max_neighbors: int | None,
                on_isolated_atoms: str, edges: str = "stored", default_cutoff: float = 8.0) -> dict[str, Any]:
    """The converter parameters of a radius graph, checked (``bond_cutoff`` is not used)."""
    if edges not in EDGES:
        raise ConverterError(f"graph_edges must be one of {EDGES} (got {edges!r})")
    return {"cutoff": positive_cutoff("cutoff", cutoff, default_cutoff), "max_neighbors": neighbor_cap(max_neighbors),
            "on_isolated_atoms": check_policy(on_isolated_atoms), "edges": edges}


def to_graph(arrays: dict, target: float | None, graph_id: str | None, params: Any) -> Any:
    """One stored graph as a PyG ``Data`` (:func:`to_data`); a structure-only store's edges are built here."""
    if "nbr" not in arrays:  # a structure-only store: this graph's edges built here, by the same rule
        arrays = with_edges(arrays, params)
    return to_data(arrays, target=target, graph_id=graph_id)


def with_edges(arrays: dict[str, np.ndarray], params: Any, search: str | None = None) -> dict[str, np.ndarray]:
    """A structure-only store's arrays with ``nbr`` and ``image`` built on the CPU (:mod:`.radius_device`)."""
    import torch


    n = len(arrays["z"])
    center, neighbor, image = radius_device.build(
        torch.from_numpy(np.array(arrays["frac"], dtype=np.float32)),
        torch.from_numpy(np.array(arrays["lattice"], dtype=np.float64))[None], torch.tensor([0, n]),
        float(params["cutoff"]), params["max_neighbors"], search)
    return {**arrays, "nbr_count": np.bincount(center.numpy(), minlength=n), "nbr": neighbor.numpy(),
            "image": image.numpy()}


KIND = Graphs(name="radius", description="periodic radius graph, k nearest within the cutoff (CGCNN)",
              resolve=_resolution, make_params=make_params, convert_fn=convert, to_graph_fn=to_graph, collate_fn=collate,
              batch_fn=batch_from, device_edges=True)
