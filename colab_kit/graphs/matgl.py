"""matgl's crystal graphs (M3GNet, TensorNet, ...: the ``matgl`` package, on PyTorch Geometric), from the store.

* **convert** (once, into the store): matgl's own ``Structure2Graph(element_types, cutoff).get_graph`` (pymatgen's
  ``find_points_in_spheres``, or the NVIDIA toolkit's neighbour list where matgl finds it), kept in the radius
  layout in matgl's edge order: ``nbr_count`` per source atom, ``nbr`` = destination, ``image`` = its
  ``pbc_offset``.
* **to_graph** (every read): the ``(Data, lattice [1, 3, 3], state_attr [2], labels)`` sample ``MGLDataset`` yields,
  tensor for tensor (``edge_index`` int32, ``pbc_offset``, ``node_type`` = index in ``element_types``,
  ``frac_coords``; tests/graphs/test_field_graphs.py), and batches are matgl's own ``collate_fn_graph``:
  ``(g, lattice [G, 3, 3], state_attr [G, 2], y [G])``.

``element_types`` is matgl's ``DEFAULT_ELEMENTS`` (the 89 elements of its pretrained models), so one store serves
training from scratch and a user's pretrained matgl model alike. The three-body line graph M3GNet needs is built by
the model itself, per batch (as in matgl).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import numpy as np

from colab_kit import registry
from colab_kit.graphs.common import (
    BadStructure,
    IsolatedPolicy,
    base_arrays,
    check_isolated,
    check_overlap,
    check_policy,
    positive_cutoff,
)
from colab_kit.registry import Graphs

if TYPE_CHECKING:
    from pymatgen.core import Structure

#: matgl's M3GNet / TensorNet default graph cutoff, Å
CUTOFF = 5.0


def _matgl(module: str = "matgl.ext.pymatgen") -> Any:
    return registry.require(module, "matgl", "the matgl graph kind")


@functools.cache
def element_types() -> tuple[str, ...]:
    """matgl's ``DEFAULT_ELEMENTS``: node types are positions in this tuple."""
    return tuple(_matgl("matgl.config").DEFAULT_ELEMENTS)


@functools.cache
def _node_type_of_z() -> np.ndarray:
    """``[119] int64``: the node type of element Z (-1 where matgl has none)."""
    from pymatgen.core.periodic_table import Element

    table = np.full(119, -1, dtype=np.int64)
    for i, symbol in enumerate(element_types()):
        table[Element(symbol).Z] = i
    return table


def convert(structure: Structure, cutoff: float = CUTOFF, on_isolated_atoms: IsolatedPolicy = "error",
            graph_id: str | None = None) -> dict[str, np.ndarray]:
    """One structure to matgl's graph in the store's arrays.

    Args:
        structure: an ordered pymatgen Structure.
        cutoff: matgl's graph cutoff, Å (the model's ``cutoff`` must be the same).
        on_isolated_atoms: ``"error"`` / ``"warn"`` / ``"ignore"`` an atom with no neighbour within ``cutoff``.
        graph_id: the structure's id, named in a warning.

    Returns:
        ``z``, ``frac``, ``lattice`` (:func:`~colab_kit.graphs.common.base_arrays`), ``nbr_count [A]`` (edges per
        source atom), ``nbr [E]`` (destination), ``image [E, 3]`` (``pbc_offset``), in matgl's order.

    Raises:
        BadStructure: an element matgl has no node type for, or an isolated atom in ``"error"`` mode.
    """
    arrays = base_arrays(structure, float(cutoff))
    check_overlap(structure)  # its own neighbour search does not report distances
    unknown = sorted({el.symbol for el in structure.composition.elements} - set(element_types()))
    if unknown:
        raise BadStructure(f"element(s) {unknown} are not among matgl's {len(element_types())} element types "
                           f"(H to {element_types()[-1]}); drop these structures")
    graph, _, _ = _matgl().Structure2Graph(element_types(), cutoff=float(cutoff)).get_graph(structure)
    src, dst = graph.edge_index.cpu().numpy().astype(np.int64)
    image = np.rint(graph.pbc_offset.cpu().numpy()).astype(np.int64).reshape(-1, 3)
    if np.any(np.diff(src) < 0):  # the store groups edges by source atom; keep matgl's order within each
        order = np.argsort(src, kind="stable")
        src, dst, image = src[order], dst[order], image[order]
    n_atoms = len(arrays["z"])
    check_isolated(src, arrays["z"], cutoff, on_isolated_atoms, graph_id)
    arrays.update(nbr_count=np.bincount(src, minlength=n_atoms), nbr=dst, image=image)
    return arrays


def to_graph(arrays: dict[str, Any], target: float | None = None, graph_id: str | None = None,
             params: Any = None) -> tuple[Any, Any, Any, dict[str, Any]]:
    """Store arrays to ``MGLDataset``'s sample: ``(Data, lattice [1, 3, 3], state_attr [2], {"y": target})``."""
    import torch
    from torch_geometric.data import Data

    matgl = _matgl("matgl")
    n_atoms = len(arrays["z"])
    src = np.repeat(np.arange(n_atoms, dtype=np.int64), arrays["nbr_count"])
    edge_index = torch.from_numpy(np.stack([src, np.asarray(arrays["nbr"], dtype=np.int64)])).to(matgl.int_th)
    graph = Data(num_nodes=n_atoms, edge_index=edge_index)
    graph.pbc_offset = torch.from_numpy(np.array(arrays["image"], dtype=np.float64)).to(matgl.float_th)
    graph.node_type = torch.from_numpy(_node_type_of_z()[np.asarray(arrays["z"], dtype=np.int64)])
    graph.frac_coords = torch.from_numpy(np.array(arrays["frac"], dtype=np.float32)).to(matgl.float_th)
    lattice = torch.as_tensor(np.array(arrays["lattice"])[None], dtype=matgl.float_th)
    state_attr = torch.zeros(2, dtype=matgl.float_th)
    y = float("nan") if target is None else float(target)
    return graph, lattice, state_attr, {"y": torch.tensor(y, dtype=matgl.float_th)}


def collate(items: list[tuple[Any, float]]) -> tuple[Any, Any, Any, Any]:
    """matgl's ``collate_fn_graph``: ``(g, lattice [G, 3, 3], state_attr [G, 2], y [G])``."""
    data = _matgl("matgl.graph.data")
    return data.collate_fn_graph([sample for sample, _ in items])


def _resolution(low_ram: bool) -> dict[str, tuple[Any, str]]:
    return {"cutoff": (CUTOFF, "matgl's M3GNet / TensorNet cutoff: neighbours within 5 Å"),
            "bond_cutoff": (0.0, "not a graph setting: M3GNet's three-body cutoff is a model option"),
            "max_neighbors": (None, "matgl graphs keep every neighbour within the cutoff")}


def _params(cutoff: float | None, bond_cutoff: float | None, max_neighbors: int | None,
            on_isolated_atoms: str) -> dict[str, Any]:
    del bond_cutoff, max_neighbors  # matgl's graphs have neither (ignored, as the radius kind ignores bond_cutoff)
    _matgl()  # a missing package is named before any conversion starts, not once per structure
    return {"cutoff": positive_cutoff("cutoff", cutoff, CUTOFF), "on_isolated_atoms": check_policy(on_isolated_atoms)}


def _to_graph(arrays: dict, target: float | None, graph_id: str | None, params: Any) -> Any:
    return to_graph(arrays, target=target, graph_id=graph_id, params=params)


KIND = Graphs(name="matgl", description="matgl's periodic graph (M3GNet, TensorNet; PyTorch Geometric)",
              resolve=_resolution, make_params=_params, convert_fn=convert, to_graph_fn=_to_graph, collate_fn=collate)
