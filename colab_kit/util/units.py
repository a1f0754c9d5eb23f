"""What a target column measures and in which unit, so reports and plots can say "eV/atom".

A store knows only the label's column name (``e_form``, ``optb88vdw_bandgap``, or ``target`` for a
folder with ``id_prop.csv``). Known column names map to a physical quantity; where the column name is
the generic one, the dataset's name (a known dataset or a path whose folder or file is named after one)
says what the labels are. Anything else is shown by its column name alone, without a unit: a wrong
unit on an axis misleads more than no unit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Quantity:
    """A physical quantity a target column can hold.

    Attributes:
        name: what it is, as an axis label says it, e.g. ``"formation energy"``.
        unit: its unit, e.g. ``"eV/atom"``.
        method: how the reference values were computed, for the parity plot's x axis, e.g. ``"DFT"``.
    """

    name: str
    unit: str
    method: str = "DFT"


FORMATION_ENERGY = Quantity("formation energy", "eV/atom")
BAND_GAP = Quantity("band gap", "eV")
LAST_PHDOS_PEAK = Quantity("last phdos peak", "cm⁻¹", "DFPT")  # DFPT phonons (Petretto et al. 2018)
ENERGY_ABOVE_HULL = Quantity("energy above hull", "eV/atom")

# Column / key names as the readers see them (normalised by _norm: lower case, "_" between words).
TARGET_QUANTITIES: dict[str, Quantity] = {
    "e_form": FORMATION_ENERGY,  # matbench_mp_e_form, mp20 and mp_eform_cgcnn_3000 json, matsciml devsets
    "formation_energy_per_atom": FORMATION_ENERGY,  # Materials Project API, MP-20 CSV
    "formation_energy": FORMATION_ENERGY,  # CrysXPP/CGCNN id_prop header "formation energy"
    "formation_energy_peratom": FORMATION_ENERGY,  # JARVIS dft_3d
    "delta_e": FORMATION_ENERGY,  # OQMD
    "band_gap": BAND_GAP,  # Materials Project, MP-20, OQMD
    "band_gap_ind": BAND_GAP,  # Alexandria (indirect gap)
    "optb88vdw_bandgap": BAND_GAP,  # JARVIS dft_3d, alignn examples
    "mbj_bandgap": BAND_GAP,  # JARVIS dft_3d
    "gap_pbe": BAND_GAP,  # matbench_mp_gap column "gap pbe"
    "last_phdos_peak": LAST_PHDOS_PEAK,  # matbench_phonons
    "e_above_hull": ENERGY_ABOVE_HULL,  # Materials Project, MP-20, Alexandria
    "energy_above_hull": ENERGY_ABOVE_HULL,
    "ehull": ENERGY_ABOVE_HULL,  # JARVIS dft_3d
}

# Dataset names (``--data NAME``, or the stem of a file or folder in a path) whose labels are known even
# when the column is only called "target" (id_prop.csv folders). A stem matches a name exactly or as
# "<name>_..." so "mp_eform_cgcnn_3000_matbench.json.gz" and "matbench_phonons_1265/" are found too.
DATASET_QUANTITIES: dict[str, Quantity] = {
    "mp_eform_cgcnn_3000": FORMATION_ENERGY,
    "matbench_mp_e_form": FORMATION_ENERGY,
    "matbench_mp_gap": BAND_GAP,
    "matbench_phonons": LAST_PHDOS_PEAK,
    "mp20_subset": FORMATION_ENERGY,
    "mp_20": FORMATION_ENERGY,
    "matsciml_devsets": FORMATION_ENERGY,
    "mp_devset": FORMATION_ENERGY,
    "oqmd_devset": FORMATION_ENERGY,
    "alexandria_devset": FORMATION_ENERGY,
    "carolina_devset": FORMATION_ENERGY,
    "alignn_jarvis_bandgap": BAND_GAP,
}

# What readers call a label that has no name of its own (folders: "target"; extxyz without info: "").
_GENERIC_NAMES = {"", "target"}
_SUFFIXES = re.compile(r"(\.(json|xyz|extxyz|csv|tar|zip|cif|vasp))?(\.(gz|bz2|xz))?$", re.IGNORECASE)


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", "_", name.strip().lower())


def _dataset_quantity(data_name: str | None) -> Quantity | None:
    if not data_name:
        return None
    # The innermost named part wins: ".../matsciml_devsets/mp_devset_200.json.gz" is the MP devset.
    for part in reversed([p for p in re.split(r"[/\\?#]+", data_name) if p]):
        stem = _norm(_SUFFIXES.sub("", part))
        for name, quantity in DATASET_QUANTITIES.items():
            if stem == name or stem.startswith(name + "_"):
                return quantity
    return None


def target_quantity(target_name: str | None, data_name: str | None = None, unit: str | None = None) -> Quantity | None:
    """The quantity a target column holds, or ``None`` when it is not known.

    Args:
        target_name: the label's column or key name as the store records it (``store.manifest.target_name``), or as the user named it (``--set target=...``); ``"target"``, ``""`` or ``None``
            when nothing names it.
        data_name: what the user passed as ``--data`` (a known dataset name, a path or a URL); consulted
            only when the column name is generic, because a named column says more than a file name.
        unit: the unit the user gave (``--set unit=eV/atom``): it wins over the one the names imply.
    """
    name = _norm(target_name or "")
    known = TARGET_QUANTITIES.get(name) if name not in _GENERIC_NAMES else _dataset_quantity(data_name)
    if unit:
        return Quantity(known.name if known else (target_name or "target"), unit, known.method if known else "reference")
    return known


def target_unit(target_name: str | None, data_name: str | None = None, unit: str | None = None) -> str:
    """The target's unit, e.g. ``"eV/atom"`` for ``e_form``; ``""`` when it is not known.

    Args:
        target_name: the label's column or key name (see :func:`target_quantity`).
        data_name: the ``--data`` value, used only when the column name is generic.
        unit: the unit the user gave, which wins.
    """
    quantity = target_quantity(target_name, data_name, unit)
    return quantity.unit if quantity else ""


def target_name_for_axis(target_name: str | None, data_name: str | None = None, unit: str | None = None) -> str:
    """What the target is, without its unit: ``"formation energy"``, or the column name when unknown."""
    quantity = target_quantity(target_name, data_name, unit)
    return quantity.name if quantity else (target_name or "target")


def target_label(target_name: str | None, data_name: str | None = None, unit: str | None = None) -> str:
    """An axis label: ``"formation energy (eV/atom)"``, ``"band gap (eV)"``; the column name when unknown.

    Args:
        target_name: the label's column or key name (see :func:`target_quantity`).
        data_name: the ``--data`` value, used only when the column name is generic.
    """
    quantity = target_quantity(target_name, data_name, unit)
    return f"{quantity.name} ({quantity.unit})" if quantity else (target_name or "target")


def with_unit(value: float, unit: str) -> str:
    """``0.0812 eV/atom``, ``62.3 cm⁻¹``: a value to a precision that suits its size, with its unit if known."""
    # Four decimals suit errors in eV (the README's and matbench's habit); for phonon frequencies in
    # cm⁻¹ they would claim a precision nobody has, so larger values get fewer.
    size = abs(value) if value == value else 0.0  # NaN prints as "nan"
    digits = 4 if size < 10 else 2 if size < 100 else 1
    return f"{value:.{digits}f} {unit}".rstrip()
