"""MACE's graphs: every neighbour within ``r_max`` across periodic images, no cap on their number.

That is the radius kind's graph (:mod:`.radius`: the store's ``nbr`` / ``image`` arrays, batches with ``edge_index``
and integer ``edge_shift``) with MACE's resolution: ``cutoff`` is MACE's ``r_max`` (5 Å, what ``mace_run_train``
uses by default; MACE-MP's foundation models use 6 Å, and a model file fixes its own) and ``max_neighbors`` is
None. The edges equal those of MACE's own ``mace.data.neighborhood.get_neighborhood`` (matscipy's neighbour list),
each ordered pair once per image (``tests/models/test_mace_potential.py`` checks it on real frames).
"""

from __future__ import annotations

from typing import Any

from colab_kit.graphs import radius
from colab_kit.registry import Graphs

R_MAX = 5.0  # Å, mace_run_train's default r_max


def _resolution(low_ram: bool) -> dict[str, tuple[Any, str]]:
    del low_ram  # a potential's graph is the model's: a smaller r_max is another model
    return {"cutoff": (R_MAX, "MACE's r_max (mace_run_train's default; a model file fixes its own)"),
            "bond_cutoff": (0.0, "not used by MACE graphs"),
            "max_neighbors": (None, "MACE: every neighbour within r_max")}


def make_params(cutoff: float | None, bond_cutoff: float | None, max_neighbors: int | None, on_isolated_atoms: str,
                edges: str = "stored") -> dict[str, Any]:
    return radius.make_params(cutoff, bond_cutoff, max_neighbors, on_isolated_atoms, edges, default_cutoff=R_MAX)


KIND = Graphs(name="mace", description="MACE: periodic graph of every neighbour within r_max",
              resolve=_resolution, make_params=make_params, convert_fn=radius.convert, to_graph_fn=radius.to_graph,
              collate_fn=radius.collate, batch_fn=radius.batch_from, device_edges=True)
