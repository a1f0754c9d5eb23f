"""Radius graphs built per batch on the training device, from a structure-only store (``graph_edges="device"``).

The store keeps each structure (Z, float32 fractional coordinates, lattice) and its per-atom edge counts, about a
twentieth of the edge store; :func:`complete` turns a moved batch of structures into the PyG ``Batch`` that the
stored graphs give, tensor for tensor, following :mod:`.neighbors`'s rule.

Candidates come from one of two searches, both exhaustive within their radius:

``images`` (any device; the CUDA default): every pair of atoms of a graph in every periodic image that can bring
    them within the radius (bounds from the cell's plane spacings), in torch, in chunks of at most
    :data:`MAX_PAIRS` atom pairs; no Python per graph.
``cells`` (CPU default): pymatgen's cell-list search (``find_points_in_spheres``, C), one call per graph.

With ``max_neighbors`` a first search uses a smaller radius per graph (1.5x the radius that holds k neighbours at
the graph's density): an atom with k neighbours inside it has its k nearest there. Graphs with an atom that has fewer
are searched again at the cutoff.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from colab_kit.graphs.neighbors import MARGIN, TOL, cartesian, nearest_torch, squared_lengths

MAX_PAIRS = 1 << 20  # atom pairs per chunk of the image search (each with its images: ~0.5 GB of temporaries)
SEARCHES = ("images", "cells")


def build(frac: Any, lattice: Any, atom_ptr: Any, cutoff: float, max_neighbors: int | None,
          search: str | None = None) -> tuple[Any, Any, Any]:
    """Edges of a batch of structures, on the tensors' device.

    Args:
        frac: ``[A, 3]`` float32 fractional coordinates of every atom, graph after graph.
        lattice: ``[G, 3, 3]`` float64.
        atom_ptr: ``[G + 1]`` int64, graph g's atoms are ``atom_ptr[g]:atom_ptr[g + 1]``.
        cutoff, max_neighbors: the radius graph's parameters.
        search: ``"images"`` or ``"cells"``; None picks cells on a CPU, images elsewhere.

    Returns:
        center ``[E]``, neighbor ``[E]`` (batch-wide atom indices), image ``[E, 3]`` int64, edges sorted by centre.
    """
    import torch

    search = search or ("cells" if frac.device.type == "cpu" else "images")
    if search not in SEARCHES:
        raise ValueError(f"search must be one of {SEARCHES} (got {search!r})")
    find = _cells if search == "cells" else _images
    lat = lattice.to(torch.float64)
    n_atoms = atom_ptr[1:] - atom_ptr[:-1]
    graph = torch.repeat_interleave(torch.arange(len(lat), device=frac.device), n_atoms)
    pos = cartesian(frac.to(torch.float64), lat[graph])
    every = torch.arange(len(lat), device=frac.device)
    if max_neighbors is None:
        found = find(pos, frac, lat, atom_ptr, graph, torch.full((len(lat),), cutoff + MARGIN, dtype=torch.float64,
                                                                   device=frac.device), every)
    else:
        first = _first_radius(n_atoms, lat, cutoff, max_neighbors)
        found = find(pos, frac, lat, atom_ptr, graph, first + MARGIN, every)
        c, _, _, d2 = found
        inside = torch.bincount(c[d2 <= first[graph[c]] ** 2], minlength=len(pos))
        short = (inside < max_neighbors) & (first[graph] < cutoff)  # atoms whose k nearest may lie further out
        again = torch.unique(graph[short])
        if len(again):
            redo = torch.zeros(len(lat), dtype=torch.bool, device=frac.device)
            redo[again] = True
            kept = ~redo[graph[c]]
            more = find(pos, frac, lat, atom_ptr, graph, torch.full((len(lat),), cutoff + MARGIN,
                                                                     dtype=torch.float64, device=frac.device), again)
            found = tuple(torch.cat([a[kept], b]) for a, b in zip(found, more))
    center, neighbor, image, _ = nearest_torch(*found, cutoff * cutoff, max_neighbors)
    return center, neighbor, image


def _first_radius(n_atoms: Any, lattice: Any, cutoff: float, k: int) -> Any:
    """Per graph, 1.5x the radius of a sphere holding ``k`` atoms at the graph's density, at most the cutoff."""
    volume = _volume(lattice)
    rk = (3.0 * k * volume / (4.0 * math.pi * n_atoms.to(volume.dtype))) ** (1.0 / 3.0)
    return (1.5 * rk).clamp(max=cutoff)


def _volume(lattice: Any) -> Any:
    import torch

    return torch.linalg.det(lattice).abs()


def _images(pos: Any, frac: Any, lattice: Any, atom_ptr: Any, graph: Any, radius: Any, graphs: Any) -> tuple:
    """Candidates of ``graphs`` within ``radius`` (per graph): for every pair (i, j) of a graph, every image n
    that can bring j that close. A vector whose fractional component along axis c is x is at least ``|x| * h_c``
    long (h_c: the spacing of the planes spanned by the other two axes), so with ``d = frac_j - frac_i``,
    ``-r / h_c - d_c <= n_c <= r / h_c - d_c``."""
    import torch

    lat = lattice[graphs]
    normal = torch.linalg.cross(lat[:, [1, 2, 0]], lat[:, [2, 0, 1]], dim=-1)  # row c: a_{c+1} x a_{c+2}
    reach = radius[graphs, None] / (_volume(lat)[:, None] / normal.norm(dim=-1)) * (1 + 1e-9) + 1e-9  # [g, 3]
    n_at = (atom_ptr[1:] - atom_ptr[:-1])[graphs]
    f = frac.to(torch.float64)
    out: list[tuple] = []
    bounds = _chunks((n_at * n_at).tolist(), MAX_PAIRS)
    for a, b in zip(bounds[:-1], bounds[1:]):
        out.append(_image_pairs(pos, f, lattice, atom_ptr, graphs[a:b], reach[a:b], n_at[a:b], radius))
    return tuple(torch.cat([o[k] for o in out]) for k in range(4))


def _image_pairs(pos: Any, frac: Any, lattice: Any, atom_ptr: Any, graphs: Any, reach: Any, n_at: Any,
                 radius: Any) -> tuple:
    import torch

    dev = pos.device
    # every pair (i, j) of each graph
    n_pairs = n_at * n_at
    g = torch.repeat_interleave(torch.arange(len(graphs), device=dev), n_pairs)
    local = torch.arange(len(g), device=dev) - (torch.cumsum(n_pairs, 0) - n_pairs)[g]
    a, base = n_at[g], atom_ptr[graphs][g]
    center, neighbor = base + local // a, base + local % a
    d = frac[neighbor] - frac[center]
    lo = torch.ceil(-reach[g] - d).to(torch.int64)
    span = (torch.floor(reach[g] - d).to(torch.int64) - lo + 1).clamp(min=0)
    count = span.prod(dim=1)
    # every image of each pair
    p = torch.repeat_interleave(torch.arange(len(g), device=dev), count)
    t = torch.arange(len(p), device=dev) - (torch.cumsum(count, 0) - count)[p]
    s12 = span[p, 1] * span[p, 2]
    image = torch.stack([t // s12, (t % s12) // span[p, 2], t % span[p, 2]], dim=1) + lo[p]
    center, neighbor = center[p], neighbor[p]
    shift = cartesian(image.to(torch.float64), lattice[graphs[g[p]]])
    d2 = squared_lengths(pos, shift, center, neighbor)
    near = d2 <= radius[graphs[g[p]]] ** 2
    return center[near], neighbor[near], image[near], d2[near]


def _cells(pos: Any, frac: Any, lattice: Any, atom_ptr: Any, graph: Any, radius: Any, graphs: Any) -> tuple:
    """Candidates of ``graphs`` within ``radius`` from pymatgen's cell-list search, one call per graph (CPU)."""
    import torch
    from pymatgen.optimization.neighbors import find_points_in_spheres

    pbc = np.ones(3, dtype=np.int64)
    p, lat, ptr, r = pos.numpy(), lattice.numpy(), atom_ptr.tolist(), radius.tolist()
    centers, neighbors, images = [], [], []
    for g in graphs.tolist():
        a, b = ptr[g], ptr[g + 1]
        xyz = np.ascontiguousarray(p[a:b])
        c, j, img, _ = find_points_in_spheres(xyz, xyz, r=r[g], pbc=pbc, lattice=lat[g], tol=TOL)
        centers.append(np.asarray(c, dtype=np.int64) + a)
        neighbors.append(np.asarray(j, dtype=np.int64) + a)
        images.append(np.rint(np.asarray(img)).astype(np.int64).reshape(-1, 3))
    center = torch.from_numpy(np.concatenate(centers))
    neighbor = torch.from_numpy(np.concatenate(neighbors))
    image = torch.from_numpy(np.concatenate(images))
    shift = cartesian(image.to(torch.float64), lattice[graph[center]])
    return center, neighbor, image, squared_lengths(pos, shift, center, neighbor)


def _chunks(counts: list[int], limit: int) -> list[int]:
    """Boundaries splitting consecutive items into runs of total ``<= limit`` (an item above it runs alone)."""
    bounds, total = [0], 0
    for k, c in enumerate(counts):
        if total and total + c > limit:
            bounds.append(k)
            total = 0
        total += c
    bounds.append(len(counts))
    return bounds
