"""One facade over the graph kinds: ``get_converter(name, **params)`` picks the implementation.

Each converter turns a pymatgen Structure into a dict of compact numpy arrays (what the store
writes) and back into the object its model consumes (PyG ``Data`` or CHGNet ``CrystalGraph``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from colab_kit.graphs.common import ISOLATED_POLICIES, BadStructure, ConverterError, check_policy

CONVERTERS = ("chgnet", "radius")

__all__ = ["BadStructure", "CONVERTERS", "Converter", "ConverterError", "ISOLATED_POLICIES", "get_converter"]


@dataclass(frozen=True)
class Converter:
    """A named converter with its parameters (the parameters are part of the store fingerprint)."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)

    def convert(self, structure: Any, graph_id: str | None = None) -> dict:
        """One structure to the store's arrays; ``graph_id`` names it in an isolated-atom warning."""
        return _convert_fn(self.name)(structure, **self.params, graph_id=graph_id)

    def to_graph(self, arrays: dict, target: float | None = None, graph_id: str | None = None) -> Any:
        """Store arrays to the model's graph object (CrystalGraph for chgnet, Data for radius)."""
        if self.name == "chgnet":
            from colab_kit.graphs.chgnet import to_crystal_graph

            return to_crystal_graph(arrays, graph_id=graph_id, mp_id=graph_id,
                                    atom_cutoff=self.params["atom_cutoff"], bond_cutoff=self.params["bond_cutoff"])
        from colab_kit.graphs.radius import to_data

        return to_data(arrays, target=target, graph_id=graph_id)


def _convert_fn(name: str) -> Callable[..., dict]:
    if name == "chgnet":
        from colab_kit.graphs.chgnet import convert
    elif name == "radius":
        from colab_kit.graphs.radius import convert
    else:
        raise ConverterError(f"converter must be one of {CONVERTERS} (got {name!r})")
    return convert


def _cutoff(what: str, value: float | None, default: float) -> float:
    x = default if value is None else float(value)
    if not (math.isfinite(x) and x > 0):
        raise ConverterError(f"{what} must be a positive number of Å (got {value!r})")
    return x


def get_converter(name: str, cutoff: float | None = None, bond_cutoff: float | None = 3.0,
                  max_neighbors: int | None = 12, on_isolated_atoms: str = "error") -> Converter:
    """The converter ``name`` with its parameters.

    Args:
        name: one of :data:`CONVERTERS`.
        cutoff: neighbour cutoff, Å; None gives the kind's default (CHGNet's 6, CGCNN's 8).
        bond_cutoff: chgnet only: bond-graph cutoff, Å (CHGNet's default 3); None means the atom cutoff, as
            ``CrystalGraphConverter(bond_graph_cutoff=None)`` does.
        max_neighbors: radius only: the nearest neighbours kept per atom (None: all within the cutoff).
        on_isolated_atoms: a structure with an atom that has no neighbour within the cutoff: ``"error"``
            rejects it (recorded as a skipped item), ``"warn"`` logs one line and keeps its graph, ``"ignore"``
            keeps it. CHGNet's modes and default; the same for both kinds, since an atom without neighbours
            is as suspect for a radius graph (CGCNN pads it with nothing) as for CHGNet.

    Raises:
        ConverterError: an unknown name, a non-positive cutoff or an unknown policy.
    """
    policy = check_policy(on_isolated_atoms)
    if name == "chgnet":
        atom = _cutoff("cutoff", cutoff, 6.0)
        bond = atom if bond_cutoff is None else _cutoff("bond_cutoff", bond_cutoff, 3.0)
        return Converter("chgnet", {"atom_cutoff": atom, "bond_cutoff": bond, "on_isolated_atoms": policy})
    if name == "radius":
        if max_neighbors is not None and int(max_neighbors) < 1:
            raise ConverterError(f"max_neighbors must be a positive integer or None (got {max_neighbors!r})")
        return Converter("radius", {"cutoff": _cutoff("cutoff", cutoff, 8.0),
                                    "max_neighbors": None if max_neighbors is None else int(max_neighbors),
                                    "on_isolated_atoms": policy})
    raise ConverterError(f"converter must be one of {CONVERTERS} (got {name!r})")
