"""One facade over the graph kinds: ``get_converter(name, **params)`` picks the implementation.

Each converter turns a pymatgen Structure into a dict of compact numpy arrays (what the store
writes) and back into the object its model consumes (PyG ``Data`` or CHGNet ``CrystalGraph``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from colab_kit.graphs.common import BadStructure

CONVERTERS = ("chgnet", "radius")

__all__ = ["BadStructure", "CONVERTERS", "Converter", "get_converter"]


@dataclass(frozen=True)
class Converter:
    """A named converter with its parameters (the parameters are part of the store fingerprint)."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)

    def convert(self, structure: Any) -> dict:
        return _convert_fn(self.name)(structure, **self.params)

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
        raise ValueError(f"converter must be one of {CONVERTERS} (got {name!r})")
    return convert


def get_converter(name: str, cutoff: float | None = None, bond_cutoff: float | None = None,
                  max_neighbors: int | None = 12) -> Converter:
    """The converter ``name`` with its parameters; defaults are CHGNet's 6/3 Å and CGCNN's 8 Å/12."""
    if name == "chgnet":
        return Converter("chgnet", {"atom_cutoff": float(cutoff or 6.0), "bond_cutoff": float(bond_cutoff or 3.0)})
    if name == "radius":
        return Converter("radius", {"cutoff": float(cutoff or 8.0), "max_neighbors": max_neighbors})
    raise ValueError(f"converter must be one of {CONVERTERS} (got {name!r})")
