"""What a source yields: :class:`RawItem`, its label, and :func:`parse_structure` that builds it in a worker."""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from colab_kit.errors import ColabKitError

if TYPE_CHECKING:
    from pymatgen.core import Structure

FORMATS: tuple[str, ...] = ("matbench", "cif_dir", "poscar_dir", "extxyz", "jarvis", "csv", "parquet", "memory")
KINDS = ("pmg_dict", "pmg_json", "cif", "poscar", "jarvis", "extxyz", "structure")
HOW_TO_CHOOSE = f"pass fmt= one of {FORMATS[:-1]} to open_source"
_MISSING_LABELS = frozenset({"", "na", "n/a", "none", "null"})


class SourceError(ColabKitError, ValueError):
    """Input that cannot be read as it is; the message names the file or item, the value and the fix."""


@dataclass(frozen=True)
class RawItem:
    """One record as the main process streams it: cheap to pickle, parsed by :func:`parse_structure`.

    Attributes:
        id: material id, file stem, JARVIS id or ``str(index)``.
        payload: a ``Structure.as_dict()`` dict (or its JSON text), CIF/POSCAR text, a JARVIS Atoms dict, one extxyz frame as
            text, or a pymatgen ``Structure`` (in-memory source).
        target: the label; ``nan`` stays ``nan``, a missing label is ``None``.
        kind: one of :data:`KINDS`, says how to parse ``payload``.
        error: why the record is unusable, found while streaming (a missing file, a label that is not a
            number); :func:`parse_structure` raises it, so it is recorded like any other bad item.
    """

    id: str
    payload: Any
    target: float | None
    kind: str
    error: str | None = None


def check_target(item: RawItem) -> str | None:
    """Why the item's label cannot be trained on (e.g. ``"label is NaN"``), or None when it is usable."""
    if item.target is None:
        return item.error if item.error and item.error.startswith("label") else "label is missing"
    if math.isnan(item.target):
        return "label is NaN"
    return "label is infinite" if math.isinf(item.target) else None


# Python's json.dump writes NaN / Infinity / -Infinity bare, which JSON (and so ijson) has no token for; the JSON
# readers rewrite them outside strings into these marker strings (see streams._BareConstants). A label marker
# becomes its float while streaming; one inside a structure is found here, in the worker, only when the
# structure fails to build, so files without them pay nothing.
BARE = {"\0NaN": math.nan, "\0Infinity": math.inf, "\0-Infinity": -math.inf}


def unbare(value: Any) -> Any:
    """A bare-constant marker back to its float; anything else as it is."""
    return BARE.get(value, value) if type(value) is str else value


def _bare_in(obj: Any, where: str = "") -> tuple[str, str] | None:
    """(where, marker) of the first bare-constant marker in ``obj`` (where like ``sites[2].abc[0]``), or None."""
    if type(obj) is str:
        return (where or "the value", obj) if obj in BARE else None
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, value in items:
        if (found := _bare_in(value, f"{where}[{key}]" if type(key) is int else f"{where}.{key}".lstrip("."))) is not None:
            return found
    return None


def parse_structure(item: RawItem) -> Structure:
    """Builds the pymatgen Structure of one item; runs in the conversion workers.

    Raises:
        SourceError: naming ``item.id`` and the reason, for a record found bad while streaming or any
            failure of its parser.
    """
    if item.error:
        raise SourceError(f"item {item.id!r}: {item.error}")
    try:
        structure = _build(item.kind, item.payload)
    except SourceError as exc:
        raise SourceError(f"item {item.id!r} ({item.kind}): {exc}") from None
    except Exception as exc:  # any parser failure is this item's failure, reported with its id
        if item.kind in ("pmg_dict", "pmg_json", "jarvis") and (bare := _bare_in(item.payload)) is not None:
            raise SourceError(f"item {item.id!r} ({item.kind}): the structure has a bare {bare[1][1:]} at {bare[0]} "
                              "(JSON has no NaN/Infinity; Python's json.dump writes them); fix that value or drop this record") from exc
        reason = _scrub(" ".join(f"{type(exc).__name__}: {exc}".split()), item.payload)[:300]
        raise SourceError(f"item {item.id!r} ({item.kind}): cannot build a structure: {reason}; fix or drop this record") from exc
    import numpy as np

    if not (np.isfinite(structure.lattice.matrix).all() and np.isfinite(structure.frac_coords).all()):
        raise SourceError(f"item {item.id!r} ({item.kind}): the lattice or the coordinates hold NaN or infinite values; "
                          "fix or drop this record")
    return structure


#: the only code a structure dict may name (``"@module"``) for monty to import while decoding it
DECODABLE = ("pymatgen.", "numpy")


def refuse_foreign_code(obj: Any) -> None:
    """Raise when a structure dict names a module other than pymatgen's (or numpy's, for arrays) under ``@module``.

    ``Structure.from_dict`` decodes site properties with monty's ``MontyDecoder``, which imports whatever module a
    dict names and calls into it: a dataset could make the converter run any installed code. Such a record is
    refused (and recorded) before pymatgen sees it.
    """
    stack, seen = [(obj, "")], 0
    while stack:
        node, where = stack.pop()
        seen += 1
        if isinstance(node, dict):
            module = node.get("@module")
            if module is not None and not (isinstance(module, str) and (module.startswith(DECODABLE[0]) or
                                                                          module == DECODABLE[1])):
                raise SourceError(f"the structure names the module {str(module)[:60]!r} (\"@module\" at "
                                  f"{where or 'the top'}): only pymatgen objects are decoded; this record is refused")
            stack.extend((v, f"{where}.{k}".lstrip(".")) for k, v in node.items() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(node) if isinstance(v, (dict, list)))


def _scrub(message: str, payload: Any) -> str:
    """A parser's message without text of the file it parsed (a reason is written to skipped.csv and the log: what
    a file holds, e.g. a file that was never a structure, must not leak through it)."""
    if not isinstance(payload, str) or not payload:
        return message

    def quoted(m: re.Match[str]) -> str:
        return f"{m.group(1)}...{m.group(1)}" if len(m.group(2)) >= 3 and m.group(2) in payload else m.group(0)

    out = re.sub(r"(['\"])(.*?)\1", quoted, message)
    for line in {ln.strip() for ln in payload.splitlines()}:
        if len(line) >= 12 and line in out:
            out = out.replace(line, "...")
    return out


def _build(kind: str, payload: Any) -> Structure:
    from pymatgen.core import Structure

    if kind == "pmg_json":
        import json

        kind, payload = "pmg_dict", json.loads(payload)
    if kind == "pmg_dict":
        missing = [k for k in ("lattice", "sites") if k not in payload] if isinstance(payload, dict) else ["a mapping"]
        if missing:
            raise ValueError(f"structure dict lacks {missing}; expected Structure.as_dict()")
        refuse_foreign_code(payload)
        return Structure.from_dict(payload)
    if kind in ("cif", "poscar"):
        return Structure.from_str(payload, fmt=kind)
    if kind == "jarvis":
        from jarvis.core.atoms import Atoms

        atoms = Atoms.from_dict(payload)  # then what Atoms.pymatgen_converter() does, which prints and returns None on error
        return Structure(atoms.lattice_mat, atoms.elements, atoms.frac_coords, coords_are_cartesian=False)
    if kind == "extxyz":
        from ase.io import read
        from pymatgen.io.ase import AseAtomsAdaptor

        atoms = read(io.StringIO(payload), format="extxyz")
        if atoms.cell.rank < 3:
            raise ValueError('frame has no 3-D cell; write it with Lattice="..." pbc="T T T"')
        return AseAtomsAdaptor.get_structure(atoms)
    if kind == "structure" and isinstance(payload, Structure):
        return payload
    raise ValueError(f"kind {kind!r} with a {type(payload).__name__} payload; kinds are {KINDS}")


def to_target(value: Any) -> tuple[float | None, str | None]:
    """(label, None); (None, None) when it is missing; (None, reason) when it is not a number."""
    if value is None or (isinstance(value, str) and value.strip().lower() in _MISSING_LABELS):
        return None, None
    if not isinstance(value, bool):
        try:
            return float(value), None
        except (TypeError, ValueError):
            pass
    return None, f"label {value!r:.60} is not a number; fix it in the source or drop the record"
