"""What both graph kinds share: the structure arrays kept in the store and the neighbour search."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from colab_kit.errors import ColabKitError

if TYPE_CHECKING:
    from pymatgen.core import Structure


class BadStructure(ColabKitError, ValueError):
    """A structure that cannot become a graph; the message says why (recorded with its id)."""


def base_arrays(structure: Structure) -> dict[str, np.ndarray]:
    """Compact structure arrays kept with every graph, enough to rebuild it with other settings.

    Returns:
        ``z [A] uint8``, ``frac [A, 3] float32`` (what CHGNet feeds its model), ``lattice [3, 3] float64``.
    """
    if not structure.is_ordered:
        raise BadStructure("structure is disordered (partial occupancies); order it first, e.g. with OrderDisorderedStructureTransformation")
    if len(structure) == 0:
        raise BadStructure("structure has no sites")
    z = np.fromiter((site.specie.Z for site in structure), dtype=np.int64, count=len(structure))
    return {
        "z": z.astype(np.uint8),
        "frac": np.asarray(structure.frac_coords, dtype=np.float32),
        "lattice": np.asarray(structure.lattice.matrix, dtype=np.float64),
    }


def neighbor_list(structure: Structure, cutoff: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """pymatgen's periodic neighbour list, exactly as CHGNet calls it.

    Returns:
        center ``[E] int64``, neighbor ``[E] int64``, image ``[E, 3] int64``, distance ``[E] float64`` (Å).
    """
    center, neighbor, image, distance = structure.get_neighbor_list(
        r=cutoff, sites=structure.sites, numerical_tol=1e-8
    )
    return (
        np.asarray(center, dtype=np.int64),
        np.asarray(neighbor, dtype=np.int64),
        np.rint(np.asarray(image)).astype(np.int64).reshape(-1, 3),
        np.asarray(distance, dtype=np.float64),
    )


def check_isolated(center: np.ndarray, n_atoms: int, cutoff: float) -> None:
    """Raise BadStructure when an atom has no neighbour within ``cutoff`` (Å)."""
    has = np.zeros(n_atoms, dtype=bool)
    has[center] = True
    if not has.all():
        missing = np.flatnonzero(~has)
        raise BadStructure(
            f"{len(missing)} isolated atom(s) (site {missing[:5].tolist()}) with no neighbour within {cutoff:g} Å; "
            "a larger cutoff would connect them"
        )
