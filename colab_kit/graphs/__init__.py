"""One facade over the graph kinds: ``get_converter(name, **params)`` picks the registered kind.

Each kind (``graphs/<kind>.py``, listed in :mod:`colab_kit.registry`) turns a pymatgen Structure into a
dict of compact numpy arrays (what the store writes) and back into the object its model consumes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from colab_kit import registry
from colab_kit.graphs import matgl, radius
from colab_kit.graphs.common import BadStructure, ConverterError, check_policy

__all__ = ["BadStructure", "Converter", "ConverterError", "get_converter", "matgl", "radius"]  # models read two kinds' helpers

_KIND_DEFAULT: Any = object()  # "the kind's own default" (None means something for bond_cutoff and max_neighbors)


@dataclass(frozen=True)
class Converter:
    """A graph kind's name with its parameters (the parameters are part of the store fingerprint).

    Holds only the name, so it pickles to conversion workers; the kind is looked up in the registry.
    """

    name: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> registry.GraphKind:
        return registry.graph_kind(self.name)

    def convert(self, structure: Any, graph_id: str | None = None) -> dict:
        """One structure to the store's arrays; ``graph_id`` names it in an isolated-atom warning."""
        return self.kind.convert(structure, self.params, graph_id)

    def to_graph(self, arrays: dict, target: float | None = None, graph_id: str | None = None) -> Any:
        """Store arrays to the model's graph object (e.g. CrystalGraph for chgnet, PyG Data for radius)."""
        return self.kind.to_graph(arrays, target, graph_id, self.params)


def get_converter(name: str, cutoff: float | None = None, bond_cutoff: Any = _KIND_DEFAULT,
                  max_neighbors: Any = _KIND_DEFAULT, on_isolated_atoms: str = "error",
                  edges: str = "stored") -> Converter:
    """The converter for graph kind ``name`` with its parameters.

    Args:
        name: a registered graph kind (:func:`colab_kit.registry.graph_kinds`).
        cutoff: neighbour cutoff, Å; None gives the kind's default (CHGNet's 6, CGCNN's 8).
        bond_cutoff: chgnet only: bond-graph cutoff, Å (default 3); None means the atom cutoff, as
            ``CrystalGraphConverter(bond_graph_cutoff=None)`` does.
        max_neighbors: the nearest neighbours kept per atom (None: all within the cutoff; default: the kind's).
        on_isolated_atoms: a structure with an atom that has no neighbour within the cutoff: ``"error"``
            rejects it (recorded as a skipped item), ``"warn"`` logs one line and keeps its graph, ``"ignore"``
            keeps it. CHGNet's modes and default, for every kind: an atom without neighbours is as suspect for
            a radius graph (CGCNN pads it with nothing) as for CHGNet.
        edges: ``"stored"`` (default) writes the edges to the store; ``"device"`` (radius graphs) keeps the
            structures only and builds each batch's edges on the training device.

    Raises:
        ConverterError: an unknown name, a non-positive cutoff or an unknown policy.
    """
    if name not in registry.graph_kinds():
        raise ConverterError(f"converter must be one of {registry.graph_kinds()} (got {name!r})")
    kind = registry.graph_kind(name)
    defaults = {k: v for k, (v, _) in kind.resolution(False).items()}
    check_policy(on_isolated_atoms)
    return Converter(name, kind.params(
        cutoff=cutoff,
        bond_cutoff=defaults.get("bond_cutoff") if bond_cutoff is _KIND_DEFAULT else bond_cutoff,
        max_neighbors=defaults.get("max_neighbors") if max_neighbors is _KIND_DEFAULT else max_neighbors,
        on_isolated_atoms=on_isolated_atoms, edges=edges))
