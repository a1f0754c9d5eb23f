"""ALIGNN's crystal graph and line graph (the ``alignn`` package's pure-torch graphs: no DGL), from the store.

What ``alignn``'s own pipeline does per structure (``Graph.atom_dgl_multigraph(neighbor_strategy="pure_torch")``,
which calls ``alignn.torch_graph_builder.build_pure_torch_graph``), split in two:

* **convert** (once, into the store): jarvis-tools' ``pmg_to_atoms`` of the pymatgen structure, then alignn's own
  periodic neighbour list ``torch_neighbor_list`` on the float32 Cartesian positions and lattice, as its builder
  calls it (``max_neighbors`` nearest per atom within ``cutoff``; matscipy's topology when matscipy is installed,
  as in alignn). Stored: the radius layout (``nbr_count``, ``nbr`` = dst, ``image`` = the integer cell shift)
  plus ``pos``, the float32 positions alignn computes its bond vectors from (``frac`` in float32 cannot give
  the same bits back).
* **to_graph** (every read): the bond vectors ``r = pos[dst] - pos[src] + shift @ lattice``, the 92 CGCNN atom
  features of jarvis-tools by element, the cell volume, and the line graph over bonds no longer than
  ``three_body_cutoff`` with its bond-angle cosines, all with alignn's own functions: the same ``TorchGraph``
  pair (``g``, ``lg``) alignn's LMDB dataset pickles, tensor for tensor (tests/graphs/test_field_graphs.py). The line
  graph, the largest part, is never stored: it is rebuilt in a few vectorised torch operations.

Batches are alignn's ``batch_torch_graph_pairs`` plus the stacked lattices: ``(g, lg, lattice [G, 3, 3], y [G])``,
what its ``PureTorchLMDBDataset.collate_line_graph`` returns.
"""

from __future__ import annotations

import contextlib
import functools
import io
from typing import TYPE_CHECKING, Any

import numpy as np

from colab_kit import registry
from colab_kit.graphs.common import (
    ConverterError,
    base_arrays,
    check_isolated,
    check_overlap,
    check_policy,
    neighbor_cap,
    positive_cutoff,
)
from colab_kit.plan import IsolatedPolicy
from colab_kit.registry import Graphs

if TYPE_CHECKING:
    from pymatgen.core import Structure

#: ALIGNN's example configuration (alignn/examples/sample_data/config_example.json) and the paper: 12 nearest
#: neighbours within 8 Å; the pure-torch line graph joins bonds up to TrainingConfig's three_body_cutoff, 3.5 Å
CUTOFF, MAX_NEIGHBORS, THREE_BODY_CUTOFF = 8.0, 12, 3.5


def _builder() -> Any:
    return registry.require("alignn.torch_graph_builder", "alignn", "the alignn graph kind")


def convert(structure: Structure, cutoff: float = CUTOFF, max_neighbors: int | None = MAX_NEIGHBORS,
            three_body_cutoff: float = THREE_BODY_CUTOFF, on_isolated_atoms: IsolatedPolicy = "error",
            graph_id: str | None = None) -> dict[str, np.ndarray]:
    """One structure to alignn's neighbour list in the store's arrays.

    Args:
        structure: an ordered pymatgen Structure.
        cutoff: alignn's two-body cutoff, Å.
        max_neighbors: the nearest neighbours kept per atom (alignn's ``max_neighbors``; None keeps all within
            ``cutoff``: alignn then lists edges by image, here they are grouped by centre, a permutation).
        three_body_cutoff: used at read time (part of the parameters so the fingerprint names it).
        on_isolated_atoms: ``"error"`` / ``"warn"`` / ``"ignore"`` an atom with no neighbour within ``cutoff``.
        graph_id: the structure's id, named in a warning.

    Returns:
        ``z``, ``frac``, ``lattice`` (:func:`~colab_kit.graphs.common.base_arrays`), ``pos [A, 3] float32`` Å,
        ``nbr_count [A]``, ``nbr [E]`` (alignn's dst), ``image [E, 3]`` (its integer shift), in alignn's order.
    """
    import torch
    from jarvis.core.atoms import pmg_to_atoms

    del three_body_cutoff
    tgb = _builder()
    arrays = base_arrays(structure, float(cutoff))
    check_overlap(structure)  # its own neighbour search does not report distances
    atoms = pmg_to_atoms(structure)
    dtype = torch.get_default_dtype()
    positions = torch.as_tensor(np.asarray(atoms.cart_coords), dtype=dtype)
    lattice = torch.as_tensor(np.asarray(atoms.lattice_mat), dtype=dtype)
    with torch.no_grad():
        src, dst, shift, _ = tgb.torch_neighbor_list(positions=positions, lattice=lattice, cutoff=float(cutoff),
                                                     max_neighbors=max_neighbors, atoms=atoms,
                                                     use_matscipy_topology=True)
    src, dst = src.numpy(), dst.numpy()
    image = np.rint(shift.numpy()).astype(np.int64)
    if np.any(np.diff(src) < 0):  # alignn's top-k groups edges by centre; without a cap they come by image
        order = np.argsort(src, kind="stable")
        src, dst, image = src[order], dst[order], image[order]
    n_atoms = len(arrays["z"])
    check_isolated(src, arrays["z"], cutoff, on_isolated_atoms, graph_id)
    arrays.update(pos=positions.numpy(), nbr_count=np.bincount(src, minlength=n_atoms), nbr=dst, image=image)
    return arrays


@functools.cache
def atom_features() -> np.ndarray:
    """``[119, 92] float64``: jarvis-tools' CGCNN features of element Z in row Z (what alignn's ``cgcnn`` means).

    Elements jarvis-tools has no CGCNN row for get what its ``get_node_attributes`` gives them (element 100's,
    with a printed warning there: silenced here, once per element, instead of once per atom).
    """
    from jarvis.core.specie import get_node_attributes
    from pymatgen.core.periodic_table import Element

    rows = [np.zeros(92)]
    with contextlib.redirect_stdout(io.StringIO()):
        rows += [np.asarray(get_node_attributes(Element.from_Z(z).symbol, atom_features="cgcnn"), dtype=np.float64)
                 for z in range(1, 119)]
    return np.stack(rows)


def to_graph(arrays: dict[str, Any], target: float | None = None, graph_id: str | None = None,
             params: Any = None) -> tuple[Any, Any, Any, float]:
    """Store arrays to alignn's ``(g, lg, lattice [3, 3], target)`` sample, as its pure LMDB dataset yields it."""
    import torch

    tgb = _builder()
    params = dict(params or {})
    cutoff = float(params.get("cutoff", CUTOFF))
    three_body = float(params.get("three_body_cutoff", THREE_BODY_CUTOFF))
    dtype = torch.get_default_dtype()
    n_atoms = len(arrays["z"])
    z = torch.from_numpy(np.array(arrays["z"], dtype=np.int64))
    positions = torch.from_numpy(np.array(arrays["pos"], dtype=np.float32)).to(dtype)
    lattice = torch.as_tensor(np.array(arrays["lattice"]), dtype=dtype)
    src = torch.from_numpy(np.repeat(np.arange(n_atoms, dtype=np.int64), arrays["nbr_count"]))
    dst = torch.from_numpy(np.array(arrays["nbr"], dtype=np.int64))
    shift = torch.from_numpy(np.array(arrays["image"], dtype=np.float32)).to(dtype)
    r = positions[dst] - positions[src] + shift @ lattice  # alignn's torch_neighbor_list, the same expression
    g = tgb.TorchGraph(num_nodes=n_atoms, src=src, dst=dst, ndata={
        "atom_features": torch.as_tensor(atom_features()[z.numpy()], dtype=dtype),
        "frac_coords": torch.from_numpy(np.array(arrays["frac"], dtype=np.float32)).to(dtype),
        "V": torch.abs(torch.det(lattice)).expand(n_atoms),
        "Z": z,
    }, edata={"r": r, "images": shift})
    allowed = r.norm(dim=1) <= three_body if three_body < cutoff else None
    lg_src, lg_dst = tgb._line_graph_edges(src, dst, n_atoms, allowed=allowed)
    lg = tgb.TorchGraph(num_nodes=g.num_edges, src=lg_src, dst=lg_dst, ndata={"r": r, "images": shift},
                        edata={"h": tgb.torch_bond_cosines(r[lg_src], r[lg_dst])})
    return g, lg, lattice, (float("nan") if target is None else float(target))


def collate(items: list[tuple[Any, float]]) -> tuple[Any, Any, Any, Any]:
    """alignn's batch: ``(g, lg, lattice [G, 3, 3], y [G])`` (``batch_torch_graph_pairs`` + stacked lattices)."""
    import torch

    tgb = _builder()
    samples = [sample for sample, _ in items]
    g, lg = tgb.batch_torch_graph_pairs([(s[0], s[1]) for s in samples])
    return g, lg, torch.stack([s[2] for s in samples]), torch.tensor([t for _, t in items],
                                                                     dtype=torch.get_default_dtype())


def _resolution(low_ram: bool) -> dict[str, tuple[Any, str]]:
    if low_ram:
        return {"cutoff": (6.0, "smaller graphs than ALIGNN's 8 Å"),
                "bond_cutoff": (3.0, "line graph over bonds up to 3 Å (fewer angles than alignn's 3.5)"),
                "max_neighbors": (8, "8 nearest neighbours instead of ALIGNN's 12")}
    return {"cutoff": (CUTOFF, "ALIGNN's graph: neighbours within 8 Å"),
            "bond_cutoff": (THREE_BODY_CUTOFF, "alignn's three_body_cutoff: angles between bonds up to 3.5 Å"),
            "max_neighbors": (MAX_NEIGHBORS, "ALIGNN's 12 nearest neighbours per atom")}


def _params(cutoff: float | None, bond_cutoff: float | None, max_neighbors: int | None,
            on_isolated_atoms: str) -> dict[str, Any]:
    _builder()  # a missing package is named before any conversion starts, not once per structure
    two = positive_cutoff("cutoff", cutoff, CUTOFF)
    three = two if bond_cutoff is None else positive_cutoff("bond_cutoff", bond_cutoff, THREE_BODY_CUTOFF)
    if three > two:
        raise ConverterError(f"bond_cutoff (alignn's three_body_cutoff, {three:g} Å) must not exceed the cutoff "
                             f"({two:g} Å); set --set bond_cutoff=<= {two:g}")
    return {"cutoff": two, "max_neighbors": neighbor_cap(max_neighbors), "three_body_cutoff": three,
            "on_isolated_atoms": check_policy(on_isolated_atoms)}


def _to_graph(arrays: dict, target: float | None, graph_id: str | None, params: Any) -> Any:
    return to_graph(arrays, target=target, graph_id=graph_id, params=params)


KIND = Graphs(name="alignn", description="ALIGNN's bond graph + line graph of bond angles (the alignn package's, "
                                         "no DGL)",
              resolve=_resolution, make_params=_params, convert_fn=convert, to_graph_fn=_to_graph, collate_fn=collate,
              plan_names={"three_body_cutoff": "bond_cutoff"},
              needs=("z", "frac", "pos", "lattice", "nbr_count", "nbr", "image"))
