"""CHGNet crystal graphs, vectorised: the same tensors as ``chgnet.graph.CrystalGraphConverter``.

CHGNet builds its bond (line) graph edge by edge in Python objects (~17 ms for an MP-like cell);
the neighbour search itself is ~0.2 ms. Here the pairing of directed edges into undirected bonds
and the line graph are array operations, reproducing CHGNet's edge order exactly:

* directed edge k is pymatgen's k-th neighbour pair (centre-sorted);
* edges are paired with their reverse (j, i, -image); an undirected bond is numbered when its first
  directed edge appears, and ``undirected2directed`` points at that first edge;
* for every bond no longer than ``bond_cutoff``, for its two ends in turn, the angles are the other
  directed edges leaving that end atom shorter than ``bond_cutoff``, visited neighbour by neighbour
  in order of first appearance (CHGNet's per-node dict order) and by edge index within a neighbour.

The stored form is compact: neighbour index per edge (centres implied by per-atom counts),
image as int8, edge→bond map, and angles as (first, second) directed-edge pairs; the remaining
columns of CHGNet's ``bond_graph`` are gathers done at read time (:func:`to_crystal_graph`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from colab_kit.graphs.common import (
    BadStructure,
    base_arrays,
    check_isolated,
    check_policy,
    formula,
    neighbor_list,
    positive_cutoff,
)
from colab_kit.plan import IsolatedPolicy
from colab_kit.registry import Graphs

if TYPE_CHECKING:
    from pymatgen.core import Structure


def convert(structure: Structure, atom_cutoff: float = 6.0, bond_cutoff: float = 3.0,
            on_isolated_atoms: IsolatedPolicy = "error", graph_id: str | None = None) -> dict[str, np.ndarray]:
    """One structure to the compact CHGNet graph arrays.

    Args:
        structure: an ordered pymatgen Structure.
        atom_cutoff: atom-graph cutoff, Å (CHGNet default 6).
        bond_cutoff: bond-graph cutoff, Å (CHGNet default 3).
        on_isolated_atoms: CHGNet's modes: ``"error"`` (default) rejects a structure with an atom that has no
            neighbour within ``atom_cutoff``; ``"warn"`` logs one line and builds the graph; ``"ignore"`` builds it.
        graph_id: the structure's id, named in the warning.

    Returns:
        ``z [A] uint8``, ``frac [A, 3] float32``, ``lattice [3, 3] float64``, ``nbr_count [A]``,
        ``nbr [E]``, ``image [E, 3] int8``, ``d2u [E]``, ``angles [T, 2]`` (directed-edge pairs).

    Raises:
        BadStructure: isolated atoms (``"error"`` mode), or a neighbour list without a reverse for every edge.
    """
    arrays = base_arrays(structure)
    n_atoms = len(arrays["z"])
    center, neighbor, image, distance = neighbor_list(structure, atom_cutoff)
    check_isolated(center, arrays["z"], atom_cutoff, on_isolated_atoms, graph_id)
    if np.any(np.diff(center) < 0):  # pymatgen returns centre-sorted pairs; the store relies on it
        raise BadStructure("neighbour list is not sorted by centre atom (unexpected pymatgen output)")
    n_edges = len(center)

    partner = _reverse_edges(center, neighbor, image, n_atoms)
    if np.any(partner < 0):
        k = int(np.flatnonzero(partner < 0)[0])
        raise BadStructure(
            f"edge {center[k]}->{neighbor[k]} (image {image[k].tolist()}, {distance[k]:.6f} Å) has no reverse "
            "edge: an atom sits on the cutoff sphere; CHGNet cannot build this bond graph"
        )
    idx = np.arange(n_edges)
    opener = partner > idx  # first directed edge of its undirected bond
    u2d = np.flatnonzero(opener)
    d2u = np.empty(n_edges, dtype=np.int64)
    d2u[u2d] = np.arange(len(u2d))
    d2u[~opener] = d2u[partner[~opener]]

    angles = _line_graph(center, neighbor, distance, partner, u2d, n_atoms, bond_cutoff)
    arrays.update(
        nbr_count=np.bincount(center, minlength=n_atoms),
        nbr=neighbor,
        image=image,
        d2u=d2u,
        angles=angles,
    )
    return arrays


def _reverse_edges(center: np.ndarray, neighbor: np.ndarray, image: np.ndarray, n_atoms: int) -> np.ndarray:
    """For each edge (i, j, img) the index of (j, i, -img), or -1."""
    if len(center) == 0:
        return np.zeros(0, dtype=np.int64)
    m = int(np.abs(image).max())
    base = 2 * m + 1

    def code(c: np.ndarray, n: np.ndarray, img: np.ndarray) -> np.ndarray:
        s = img + m
        return ((c * n_atoms + n) * base + s[:, 0]) * base * base + s[:, 1] * base + s[:, 2]

    fwd = code(center, neighbor, image)
    rev = code(neighbor, center, -image)
    order = np.argsort(fwd, kind="stable")
    pos = np.searchsorted(fwd, rev, sorter=order)
    pos = np.minimum(pos, len(fwd) - 1)
    cand = order[pos]
    return np.where(fwd[cand] == rev, cand, -1)


def _line_graph(
    center: np.ndarray,
    neighbor: np.ndarray,
    distance: np.ndarray,
    partner: np.ndarray,
    u2d: np.ndarray,
    n_atoms: int,
    cutoff: float,
) -> np.ndarray:
    """Angles as [T, 2] (incoming directed edge, other directed edge), in CHGNet's order."""
    n_edges = len(center)
    if n_edges == 0:
        return np.zeros((0, 2), dtype=np.int64)
    # CHGNet's per-node neighbour dict: grouped by neighbour in order of first appearance.
    pair = center * n_atoms + neighbor
    _, first, inverse = np.unique(pair, return_index=True, return_inverse=True)
    node_order = np.lexsort((np.arange(n_edges), first[inverse], center))
    short = node_order[distance[node_order] < cutoff]  # candidates, grouped by centre atom
    count = np.bincount(center[short], minlength=n_atoms)
    start = np.concatenate(([0], np.cumsum(count)[:-1]))

    bonds = u2d[distance[u2d] <= cutoff]  # CHGNet skips bonds longer than the cutoff
    # two slots per bond: (end atom, directed edge leaving it), first end then second end
    slot_edge = np.stack([bonds, partner[bonds]], axis=1).reshape(-1)
    slot_atom = center[slot_edge]
    n_cand = count[slot_atom]
    total = int(n_cand.sum())
    if total == 0:
        return np.zeros((0, 2), dtype=np.int64)
    slot = np.repeat(np.arange(len(slot_edge)), n_cand)
    offset = np.arange(total) - np.repeat(np.cumsum(n_cand) - n_cand, n_cand)
    other = short[start[slot_atom][slot] + offset]
    first_edge = slot_edge[slot]
    keep = other != first_edge
    return np.stack([first_edge[keep], other[keep]], axis=1)


def to_crystal_graph(g: dict[str, Any], graph_id: str | None = None, mp_id: str | None = None,
                     atom_cutoff: float = 6.0, bond_cutoff: float = 3.0) -> Any:
    """Compact arrays (as read from the store) to a ``chgnet.graph.CrystalGraph``.

    Every attribute equals what ``CrystalGraphConverter(atom_graph_cutoff=6, bond_graph_cutoff=3)(structure,
    graph_id, mp_id)`` gives: the 8 tensors (values, shapes, dtypes, ``requires_grad``), ids, the composition
    string (pymatgen's ``structure.composition.formula``) and the cutoffs, so ``repr`` is the same too. A whole
    number of Å is given as an int, as CHGNet's defaults and its pretrained model's converter hold them (6 and 3).
    """
    import torch
    from chgnet.graph.crystalgraph import CrystalGraph

    n_atoms = len(g["z"])
    center = np.repeat(np.arange(n_atoms, dtype=np.int32), g["nbr_count"])
    nbr = g["nbr"].astype(np.int32)
    d2u = g["d2u"].astype(np.int32)
    if len(d2u):
        seen = np.maximum.accumulate(np.concatenate(([-1], d2u[:-1])))
        u2d = np.flatnonzero(d2u > seen).astype(np.int32)
    else:
        u2d = np.zeros(0, dtype=np.int32)
    angles = g["angles"]
    if len(angles):
        e1 = angles[:, 0].astype(np.int32)
        e2 = angles[:, 1].astype(np.int32)
        bond_graph = torch.from_numpy(np.stack([center[e1], d2u[e1], e1, d2u[e2], e2], axis=1))
    else:
        bond_graph = torch.zeros(0, dtype=torch.int32)  # CHGNet's torch.tensor([]) shape
    atom_graph = torch.from_numpy(np.stack([center, nbr], axis=1)) if len(nbr) else torch.zeros(0, dtype=torch.int32)
    return CrystalGraph(
        atomic_number=torch.from_numpy(g["z"].astype(np.int32)),
        atom_frac_coord=torch.from_numpy(np.array(g["frac"], dtype=np.float32)).requires_grad_(True),
        atom_graph=atom_graph,
        neighbor_image=torch.from_numpy(g["image"].astype(np.float32)),
        directed2undirected=torch.from_numpy(d2u),
        undirected2directed=torch.from_numpy(u2d),
        bond_graph=bond_graph,
        lattice=torch.from_numpy(g["lattice"].astype(np.float32)).requires_grad_(True),
        graph_id=graph_id,
        mp_id=mp_id,
        composition=formula(g["z"]),
        atom_graph_cutoff=_as_given(atom_cutoff),
        bond_graph_cutoff=_as_given(bond_cutoff),
    )


def _as_given(cutoff: float) -> float:
    """6.0 -> 6, 5.5 -> 5.5: the store keeps floats (one fingerprint for 6 and 6.0), CHGNet's defaults are ints."""
    return int(cutoff) if float(cutoff).is_integer() else float(cutoff)


def collate(items: list[tuple[Any, float]]) -> tuple[list[Any], Any]:
    """CHGNet's batch format: the list of ``CrystalGraph`` its model batches itself, and the targets ``[G]``."""
    import torch

    return [g for g, _ in items], torch.tensor([t for _, t in items], dtype=torch.float32)


def _resolution(low_ram: bool) -> dict[str, tuple[Any, str]]:
    return {"cutoff": (6.0, "CHGNet's pretrained atom-graph cutoff"),
            "bond_cutoff": (3.0, "CHGNet's pretrained bond-graph cutoff"),
            "max_neighbors": (None, "CHGNet graphs keep every neighbour within the cutoff")}


def _params(cutoff: float | None, bond_cutoff: float | None, max_neighbors: int | None,
            on_isolated_atoms: str) -> dict[str, Any]:
    """``bond_cutoff=None`` means the atom cutoff, as ``CrystalGraphConverter(bond_graph_cutoff=None)`` does."""
    atom = positive_cutoff("cutoff", cutoff, 6.0)
    bond = atom if bond_cutoff is None else positive_cutoff("bond_cutoff", bond_cutoff, 3.0)
    return {"atom_cutoff": atom, "bond_cutoff": bond, "on_isolated_atoms": check_policy(on_isolated_atoms)}


def _to_graph(arrays: dict, target: float | None, graph_id: str | None, params: Any) -> Any:
    return to_crystal_graph(arrays, graph_id=graph_id, mp_id=graph_id, atom_cutoff=params["atom_cutoff"],
                            bond_cutoff=params["bond_cutoff"])


KIND = Graphs(name="chgnet", description="CHGNet's atom + bond graphs (fine-tunes the pretrained CHGNet)",
              resolve=_resolution, make_params=_params, convert_fn=convert, to_graph_fn=_to_graph, collate_fn=collate,
              loader_workers=(0, "CHGNet graphs are ~8 tensors each: the main process reads them from the store "
                                 "~16x faster than it can receive them from worker processes"),
              plan_names={"atom_cutoff": "cutoff"},
              needs=("z", "frac", "lattice", "nbr_count", "nbr", "image", "d2u", "angles"))
