"""What both graph kinds share: the structure arrays kept in the store, the neighbour search, the isolated-atom
policy and the composition string."""

from __future__ import annotations

import functools
import math
import warnings
from typing import TYPE_CHECKING

import numpy as np

from colab_kit.errors import ColabKitError
from colab_kit.plan import ISOLATED_ATOM_POLICIES, IsolatedPolicy

if TYPE_CHECKING:
    from pymatgen.core import Structure




class BadStructure(ColabKitError, ValueError):
    """A structure that cannot become a graph; the message says why (recorded with its id)."""


class ConverterError(ColabKitError, ValueError):
    """A converter name or parameter that is not allowed; the message names the value and the choices."""


#: grid cells a periodic neighbour search may use (pymatgen's cell list allocates per cell): a 1,300 Å cube at 6 Å
MAX_SEARCH_CELLS = 20_000_000
#: directed edges a graph may have: ~100 neighbours for each of 1,000,000 atoms
MAX_EDGES = 100_000_000


def check_search(structure: Structure, cutoff: float) -> None:
    """Refuse a structure whose neighbour search at ``cutoff`` (Å) cannot fit in memory, before it is made.

    pymatgen's search grids the cell's periodic box into cubes of the cutoff's side: a 100,000 Å cell at 6 Å asked
    for 1.96 TB ("Memory allocation of 1955000600064 bytes failed") and took the whole conversion down. The grid
    and the edge count are estimated from the lattice's plane spacings and the atom density.

    Raises:
        BadStructure: naming the cell's size, the estimate and what to check.
    """
    lattice = structure.lattice
    volume = abs(float(lattice.volume))
    if not volume > 1e-3:
        raise BadStructure(f"the lattice has zero volume ({volume:.3g} Å³): its vectors are (nearly) parallel; fix the "
                           "lattice or drop this structure")
    matrix = lattice.matrix
    cross = [np.linalg.norm(np.cross(matrix[(i + 1) % 3], matrix[(i + 2) % 3])) for i in range(3)]
    widths = [volume / c for c in cross]  # the distances between opposite faces
    cells = float(np.prod([np.ceil((w + 2 * cutoff) / cutoff) for w in widths]))
    n = len(structure)
    edges = n * n * (4.0 / 3.0 * np.pi * cutoff**3) / volume
    if cells > MAX_SEARCH_CELLS or edges > MAX_EDGES:
        what = (f"{cells:.3g} grid cells" if cells > MAX_SEARCH_CELLS else f"~{edges:.3g} edges")
        raise BadStructure(f"a neighbour search at {cutoff:g} Å in this cell ({' x '.join(f'{w:.4g}' for w in widths)} "
                           f"Å between faces, {n} atoms) needs {what}: far beyond any crystal's graph; check the "
                           "lattice's units (Å) or the cutoff")


#: two atoms closer than this overlap: no crystal or MD frame has them (H2's bond is 0.74 Å), a file that does is
#: damaged or a relaxation's first, unphysical step (CHGNet's NbOC test run: 0.11 Å, +19,858 eV)
MIN_DISTANCE = 0.5


def check_overlap(structure: Structure) -> None:
    """Refuse a structure with two atoms closer than :data:`MIN_DISTANCE` (Å), naming them and their distance."""
    try:
        check_search(structure, 2 * MIN_DISTANCE)
    except BadStructure:
        return  # too large a cell for a fine search: the graph's own search refuses it, or finds what it finds
    center, neighbor, _, distance = structure.get_neighbor_list(r=MIN_DISTANCE, sites=structure.sites,
                                                                numerical_tol=1e-8)
    if len(distance):
        _overlapping(structure, center, neighbor, distance)


def _overlapping(structure: Structure, center: np.ndarray, neighbor: np.ndarray, distance: np.ndarray) -> None:
    k = int(np.argmin(distance))
    raise BadStructure(f"atoms {int(center[k])} ({structure[int(center[k])].specie}) and {int(neighbor[k])} "
                       f"({structure[int(neighbor[k])].specie}) are {float(distance[k]):.3f} Å apart (overlapping: less "
                       f"than {MIN_DISTANCE} Å); fix the structure or drop it")


def base_arrays(structure: Structure, cutoff: float | None = None) -> dict[str, np.ndarray]:
    """Compact structure arrays kept with every graph, enough to rebuild it with other settings.

    Args:
        cutoff: the neighbour cutoff the graph will use, Å: a structure whose search cannot fit is refused first
            (:func:`check_search`).

    Returns:
        ``z [A] uint8``, ``frac [A, 3] float32`` (what CHGNet feeds its model), ``lattice [3, 3] float64``.
    """
    if not structure.is_ordered:
        raise BadStructure("structure is disordered (partial occupancies); order it first, e.g. with OrderDisorderedStructureTransformation")
    if len(structure) == 0:
        raise BadStructure("structure has no sites")
    if cutoff is not None:
        check_search(structure, cutoff)
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
    check_search(structure, cutoff)
    center, neighbor, image, distance = structure.get_neighbor_list(
        r=cutoff, sites=structure.sites, numerical_tol=1e-8
    )
    if len(distance) and float(distance.min()) < MIN_DISTANCE:  # free here: the search found every pair anyway
        _overlapping(structure, center, neighbor, distance)
    return (
        np.asarray(center, dtype=np.int64),
        np.asarray(neighbor, dtype=np.int64),
        np.rint(np.asarray(image)).astype(np.int64).reshape(-1, 3),
        np.asarray(distance, dtype=np.float64),
    )


def check_isolated(center: np.ndarray, z: np.ndarray, cutoff: float, on_isolated_atoms: IsolatedPolicy = "error",
                   graph_id: str | None = None) -> int:
    """Apply the isolated-atom policy: an atom with no neighbour within ``cutoff`` (Å).

    Args:
        center: centre atom of each directed edge ``[E]``.
        z: atomic numbers ``[A]`` (the formula names the structure when there is no id).
        cutoff: the neighbour cutoff used, Å (named in the message).
        on_isolated_atoms: ``"error"`` raises, ``"warn"`` logs one line and keeps the graph, ``"ignore"`` keeps it.
        graph_id: the structure's id, for the warning.

    Returns:
        The number of isolated atoms (0 when there are none).

    Raises:
        BadStructure: in ``"error"`` mode, when an atom is isolated.
    """
    has = np.zeros(len(z), dtype=bool)
    has[center] = True
    if has.all():
        return 0
    missing = np.flatnonzero(~has)
    what = f"{len(missing)} isolated atom(s) (site {missing[:5].tolist()}) with no neighbour within {cutoff:g} Å"
    if on_isolated_atoms == "error":
        raise BadStructure(f"{what}; a larger cutoff would connect them, or on_isolated_atoms='warn' keeps the graph "
                           "(--set on_isolated_atoms=warn)")
    if on_isolated_atoms == "warn":
        # one line, like CHGNet's message on stderr (those atoms get no messages, so their features never
        # update); a Python warning, so a conversion records it with the item instead of printing it mid-bar
        warnings.warn(f"structure {graph_id if graph_id is not None else formula(z)} has {what}; graph kept "
                      "(on_isolated_atoms='warn'), predictions will likely be off", UserWarning, stacklevel=2)
    return len(missing)


def check_policy(on_isolated_atoms: str) -> str:
    """``on_isolated_atoms`` if it is one of :data:`ISOLATED_ATOM_POLICIES`, else a ConverterError naming the choices."""
    if on_isolated_atoms not in ISOLATED_ATOM_POLICIES:
        raise ConverterError(f"on_isolated_atoms must be one of {ISOLATED_ATOM_POLICIES} (got {on_isolated_atoms!r})")
    return on_isolated_atoms


def formula(z: np.ndarray) -> str:
    """pymatgen's ``Composition.formula`` for atomic numbers ``z [A]``, e.g. "Hf4 S2", without a Composition.

    Elements are ordered as pymatgen orders them (by Pauling electronegativity, NaN last, ties by symbol); the
    order comes from pymatgen itself (:func:`_formula_order`), so the string is the one CHGNet stores; a few µs
    per graph where a pymatgen Composition costs ~35 µs.
    """
    symbols, order = _formula_order()
    counts = np.bincount(z, minlength=len(symbols))[order]  # counts in formula order: no sort per graph
    present = np.flatnonzero(counts)
    return " ".join([symbols[a] + str(c) for a, c in zip(order[present].tolist(), counts[present].tolist())])


@functools.cache
def _formula_order() -> tuple[list[str], np.ndarray]:
    """``symbols[Z]`` and the atomic numbers 1..118 in pymatgen's formula order.

    pymatgen sorts a formula's elements with a total order (electronegativity, then symbol), so the order of
    any subset is the order of all elements restricted to it: one Composition of every element, once.
    """
    import warnings

    from pymatgen.core import Composition
    from pymatgen.core.periodic_table import Element

    symbols = [""] + [Element.from_Z(zi).symbol for zi in range(1, 119)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns for each element without an electronegativity
        order = [token.rstrip("0123456789") for token in Composition(dict.fromkeys(symbols[1:], 1)).formula.split()]
    return symbols, np.array([symbols.index(sym) for sym in order], dtype=np.int64)


def positive_cutoff(what: str, value: float | None, default: float) -> float:
    """``value`` (or ``default`` when None) as a float number of Å, checked to be finite and positive.

    Raises:
        ConverterError: naming ``what`` and the value.
    """
    x = default if value is None else float(value)
    if not (math.isfinite(x) and x > 0):
        raise ConverterError(f"{what} must be a positive number of Å (got {value!r})")
    return x


def neighbor_cap(value: int | None) -> int | None:
    """A ``max_neighbors`` value checked: a positive integer, or None for every neighbour within the cutoff."""
    if value is not None and int(value) < 1:
        raise ConverterError(f"max_neighbors must be a positive integer or None (got {value!r})")
    return None if value is None else int(value)
