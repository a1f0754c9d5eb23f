"""ComFormer's lattice-aware periodic graphs (Yan et al., ICLR 2024), in the radius kind's store layout.

Two parts, as in the reference (divelab/AIRS ``OpenMat/ComFormer/comformer/graphs.py``, its training scripts'
``max_neighbors=25, use_canonize=True, use_lattice=True``):

* **k-nearest edges.** Each atom's ``k`` nearest neighbours across periodic images, *every* neighbour tied with
  the k-th included (the reference keeps ``distance <= d_k``), so the edge set does not depend on atom order or on
  how pymatgen enumerates images; the search radius grows until every atom has ``k`` (the reference's rule: to
  the longest cell edge, then doubling), so no atom is ever isolated. The relation is then made undirected (j is
  a neighbour of i or i of j), each directed edge once. Stored like the radius kind: ``nbr_count``, ``nbr``,
  ``image``, sorted by centre then distance.
* **Lattice self-loops** (built in :func:`to_graph`, from the stored lattice only): the three shortest
  non-coplanar lattice vectors ``l1, l2, l3`` (the vectors to atom i's closest periodic duplicates; the same for
  every atom), signs fixed so that ``l1·l2 >= 0``, ``l1·l3 >= 0`` and ``det[l1, l2, l3] > 0``: a right-handed,
  unit-cell-independent frame (the paper's e_ii1..3), so a mirror image is told apart. Each atom gets six
  self-loop edges ``±l1, ±l2, ±l3``, and the graph carries ``lattice_image [1, 3, 3]`` (the three as integer
  combinations of the cell rows) for iComFormer's edge-to-lattice angles.

The reference adds duplicate edges (a pair found from both ends, a lattice loop also found as a neighbour, counts
twice in its sum aggregation); here each directed edge is kept once.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import numpy as np

from colab_kit.graphs import radius
from colab_kit.graphs.common import ConverterError, base_arrays, check_policy, neighbor_list
from colab_kit.graphs.radius import collate, record_slices, to_data
from colab_kit.plan import IsolatedPolicy
from colab_kit.registry import Graphs

if TYPE_CHECKING:
    from pymatgen.core import Structure

#: the reference's neighbour count (``max_neighbors=25`` in train_mp.py / train_jarvis.py)
K_NEIGHBORS = 25
#: Å; a neighbour this close to the k-th distance is a tie (symmetry-equal distances differ by float noise)
TIE_TOL = 1e-5
#: lattice vectors whose lengths differ by less than this fraction tie (a "119.99999°" hexagonal cell's a + b)
LENGTH_TIE_RTOL = 1e-6


def convert(structure: Structure, cutoff: float = 8.0, max_neighbors: int = K_NEIGHBORS,
            on_isolated_atoms: IsolatedPolicy = "error", graph_id: str | None = None) -> dict[str, np.ndarray]:
    """One structure to its undirected k-nearest-neighbour graph arrays.

    Args:
        structure: an ordered pymatgen Structure.
        cutoff: the first search radius, Å; grows (longest cell edge, then doubling) until every atom has
            ``max_neighbors`` neighbours, so the graph does not depend on it.
        max_neighbors: k; each atom keeps its k nearest neighbours and every one tied with the k-th.
        on_isolated_atoms: accepted for the converter interface; the growing search leaves no atom isolated.
        graph_id: unused (kept for the interface).

    Returns:
        ``z [A]``, ``frac [A, 3]``, ``lattice [3, 3]`` (see :func:`~colab_kit.graphs.common.base_arrays`),
        ``nbr_count [A]``, ``nbr [E]`` (neighbour j; edges sorted by centre i, then distance), ``image [E, 3]``
        (the cell of j: ``pos_j + image @ lattice``).
    """
    del on_isolated_atoms, graph_id
    arrays = base_arrays(structure)
    n_atoms = len(arrays["z"])
    longest = float(max(structure.lattice.abc))
    radius = float(cutoff)
    while True:
        center, neighbor, image, distance = neighbor_list(structure, radius)
        if np.bincount(center, minlength=n_atoms).min() >= max_neighbors:
            break
        radius = longest if radius < longest else 2.0 * radius
    # k nearest per centre, ties with the k-th included; stable so equal distances keep pymatgen's order
    order = np.lexsort((np.arange(len(center)), distance, center))
    center, neighbor, image, distance = center[order], neighbor[order], image[order], distance[order]
    start = np.searchsorted(center, np.arange(n_atoms))
    d_k = distance[start + max_neighbors - 1]
    keep = distance <= d_k[center] + TIE_TOL
    center, neighbor, image, distance = center[keep], neighbor[keep], image[keep], distance[keep]
    # undirected: i -> j (image I) also gives j -> i (image -I); a pair found from both ends is kept once
    center, neighbor = np.concatenate([center, neighbor]), np.concatenate([neighbor, center])
    image, distance = np.concatenate([image, -image]), np.concatenate([distance, distance])
    key = np.column_stack([center, neighbor, image])
    _, first = np.unique(key, axis=0, return_index=True)
    first = first[np.lexsort((first, distance[first], center[first]))]
    center, neighbor, image = center[first], neighbor[first], image[first]
    arrays.update(nbr_count=np.bincount(center, minlength=n_atoms), nbr=neighbor, image=image)
    return arrays


def lattice_images(lattice: np.ndarray) -> np.ndarray:
    """The three shortest non-coplanar lattice vectors, sign-fixed, as integer combinations of the cell rows.

    The reference's "lattice correction": the vectors to the closest periodic duplicates of an atom, the second
    not collinear with the first, the third not coplanar; then ``l2 -> -l2`` if ``l1·l2 < 0``, ``l3 -> -l3`` if
    ``l1·l3 < 0``, and all three negated if left-handed. Equal lengths are broken by the integer coefficients
    (rotation-invariant, unlike float noise), and an exact right angle is not flipped by noise.

    Args:
        lattice: cell rows, ``[3, 3]`` Å.

    Returns:
        ``[3, 3] int64``: row k holds the coefficients n with ``l_k = n @ lattice``.
    """
    lattice = np.asarray(lattice, dtype=np.float64)
    reach = float(np.linalg.norm(lattice, axis=1).max()) + 1e-2  # the reference's r_cut: longest edge + 0.01 Å
    # |n_k| <= reach * |column k of inv(lattice)| bounds every lattice point within reach
    bound = np.floor(reach * np.linalg.norm(np.linalg.inv(lattice), axis=0)).astype(np.int64)
    axes = [np.arange(-b, b + 1) for b in bound]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    length = np.linalg.norm(grid @ lattice, axis=1)
    ok = (length > 1e-8) & (length <= reach)
    grid, length = grid[ok], length[ok]
    by_length = np.argsort(length, kind="stable")
    group = np.concatenate([[0], np.cumsum(np.diff(length[by_length]) > LENGTH_TIE_RTOL * length[by_length][1:])])
    rank = np.empty(len(grid), dtype=np.int64)
    rank[by_length] = group
    grid = grid[np.lexsort((grid[:, 2], grid[:, 1], grid[:, 0], rank))]
    # integer tests, so collinear / coplanar is exact: l2 is the first with l1 x g != 0, l3 the first with
    # (l1 x l2) . g != 0
    first = grid[0]
    second = grid[np.flatnonzero(np.abs(np.cross(first, grid)).sum(1))[0]]
    third = grid[np.flatnonzero(grid @ np.cross(first, second))[0]]
    out = np.stack([first, second, third])
    cart = out @ lattice
    scale = np.linalg.norm(cart, axis=1)
    for k in (1, 2):
        if cart[0] @ cart[k] < -1e-8 * scale[0] * scale[k]:
            out[k], cart[k] = -out[k], -cart[k]
    if np.linalg.det(cart) < 0:
        out = -out
    return out


def lattice_loops(n_atoms: int, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Six self-loop edges per atom, to ``±l1, ±l2, ±l3``.

    Returns:
        atom of each loop ``[6 A] int64`` (sorted), image of each ``[6 A, 3] int64``.
    """
    six = np.concatenate([images, -images])
    return np.repeat(np.arange(n_atoms, dtype=np.int64), 6), np.tile(six, (n_atoms, 1))


def to_graph(arrays: dict[str, Any], target: float | None = None, graph_id: str | None = None,
             params: Any = None) -> Any:
    """Store arrays to a PyG ``Data``: the radius kind's fields (``z``, ``pos``, ``cell [1, 3, 3]``,
    ``edge_index [2, E]`` row 0 neighbour j, row 1 centre i, ``edge_shift [E, 3]``, ``y``) with the six lattice
    self-loops per atom appended to the edges, and ``lattice_image [1, 3, 3]`` (float; ``l_k = lattice_image[k]
    @ cell``)."""
    import torch

    data = to_data(arrays, target=target, graph_id=graph_id)
    n_atoms = len(arrays["z"])
    images = lattice_images(arrays["lattice"])
    loop_atom, loop_image = lattice_loops(n_atoms, images)
    # a stored self-image edge that is also a lattice loop (small cells) is dropped: each edge once
    nbr = np.asarray(arrays["nbr"], dtype=np.int64)
    img = np.asarray(arrays["image"], dtype=np.int64)
    center = np.repeat(np.arange(n_atoms, dtype=np.int64), arrays["nbr_count"])
    six = np.concatenate([images, -images])
    dup = (nbr == center) & (img[:, None, :] == six[None]).all(-1).any(-1)
    keep = torch.from_numpy(~dup)
    data.edge_index = torch.cat([data.edge_index[:, keep], torch.from_numpy(np.stack([loop_atom, loop_atom]))], 1)
    data.edge_shift = torch.cat([data.edge_shift[keep], torch.from_numpy(loop_image.astype(np.float32))])
    data.lattice_image = torch.from_numpy(images.astype(np.float32)).unsqueeze(0)
    return data


@functools.lru_cache(maxsize=1 << 18)
def _images_of(lattice: bytes) -> np.ndarray:
    """:func:`lattice_images` of a float64 lattice's bytes, computed once per lattice in a process."""
    return lattice_images(np.frombuffer(lattice, dtype=np.float64).reshape(3, 3))


def batch_from(g: Any, params: Any = None) -> Any:
    """The PyG ``Batch`` that :func:`collate` makes of the graphs' :func:`to_graph`, from a whole-batch read: the
    radius kind's batch, the stored self-image edges that are lattice loops dropped, the six loops of every atom
    appended after its graph's edges (one stable sort by graph), ``lattice_image [G, 3, 3]``. Per graph only the
    lattice's three loop vectors are looked up (computed once per lattice)."""
    import torch


    base = radius.batch_from(g)
    images = np.stack([_images_of(np.ascontiguousarray(lat, dtype=np.float64).tobytes()) for lat in g.lattice])
    six = np.concatenate([images, -images], axis=1)  # [G, 6, 3]
    atom_graph = base.batch.numpy()
    nbr, center = base.edge_index.numpy()
    edge_graph = atom_graph[center]
    image = np.asarray(g.arrays["image"], dtype=np.int64)
    dup = np.zeros(len(nbr), dtype=bool)  # a stored self-image edge that is also a lattice loop: each edge once
    own = np.flatnonzero(nbr == center)
    dup[own] = (image[own, None, :] == six[edge_graph[own]]).all(-1).any(-1)
    keep = ~dup
    loop_atom = np.repeat(np.arange(len(atom_graph), dtype=np.int64), 6)
    graph_of = np.concatenate([edge_graph[keep], atom_graph[loop_atom]])  # each edge's graph: stored ones, then loops
    order = np.argsort(graph_of, kind="stable")
    edge_index = np.concatenate([base.edge_index.numpy()[:, keep], np.stack([loop_atom, loop_atom])], axis=1)
    shift = np.concatenate([base.edge_shift.numpy()[keep], six[atom_graph].reshape(-1, 3).astype(np.float32)])
    base.edge_index = torch.from_numpy(np.ascontiguousarray(edge_index[:, order]))
    base.edge_shift = torch.from_numpy(np.ascontiguousarray(shift[order]))
    base.lattice_image = torch.from_numpy(images.astype(np.float32))
    per_graph = np.bincount(graph_of, minlength=len(images))
    record_slices(base, base.ptr, torch.from_numpy(np.concatenate(([0], np.cumsum(per_graph)))))
    base._slice_dict["lattice_image"] = torch.arange(len(images) + 1)
    base._inc_dict["lattice_image"] = torch.zeros(len(images), dtype=torch.long)
    return base


def _resolution(low_ram: bool) -> dict[str, tuple[Any, str]]:
    if low_ram:
        return {"cutoff": (8.0, "first search radius; the graph is the k nearest wherever they are"),
                "bond_cutoff": (0.0, "not used by ComFormer graphs"),
                "max_neighbors": (16, "16 nearest neighbours instead of ComFormer's 25 (smaller graphs)")}
    return {"cutoff": (8.0, "first search radius; grows until each atom has its k nearest (ComFormer)"),
            "bond_cutoff": (0.0, "not used by ComFormer graphs"),
            "max_neighbors": (K_NEIGHBORS, "ComFormer's 25 nearest neighbours per atom, ties included")}


def _params(cutoff: float | None = None, bond_cutoff: float | None = None, max_neighbors: int | None = None,
            on_isolated_atoms: str = "error") -> dict[str, Any]:
    radius = 8.0 if cutoff is None else cutoff
    try:
        radius = float(radius)
    except (TypeError, ValueError) as exc:
        raise ConverterError(f"cutoff must be a positive number of Å (got {cutoff!r})") from exc
    if not (np.isfinite(radius) and radius > 0):
        raise ConverterError(f"cutoff must be a positive number of Å (got {cutoff!r})")
    k = K_NEIGHBORS if max_neighbors is None else max_neighbors
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ConverterError(f"max_neighbors must be a positive integer for ComFormer's k-nearest graph "
                             f"(got {max_neighbors!r}); its default is {K_NEIGHBORS}")
    del bond_cutoff  # no bond graph; ignored, as the radius kind does
    return {"cutoff": radius, "max_neighbors": int(k), "on_isolated_atoms": check_policy(on_isolated_atoms)}


KIND = Graphs(name="comformer",
              description="ComFormer's graph: k=25 nearest neighbours (ties kept, undirected) + lattice self-loops",
              resolve=_resolution, make_params=_params, convert_fn=convert, to_graph_fn=to_graph, collate_fn=collate,
              batch_fn=batch_from)
