"""DFT frames with per-atom labels (energy, forces, stress, magnetic moments) for potential training.

A frame source yields :class:`~colab_kit.sources.records.RawItem` s like any source; the worker builds each frame's
Structure and its :class:`FrameLabels` with :func:`parse_frame`, in one unit system whatever the file used:

=========  ==========================================================  =====================================
label      stored as                                                   read from
=========  ==========================================================  =====================================
energy     eV/atom (the item's target)                                 total eV (default) or eV/atom
forces     eV/Å, ``[atoms, 3]``, in the structure's site order         eV/Å
stress     GPa, ``[3, 3]``, tensile positive (CHGNet's and matgl's     eV/Å³ (ASE), GPa, or kBar (VASP,
           output: ``+160.2177 x`` ASE's stress)                       compressive positive); or a virial
magmoms    μB, ``[atoms]`` (NaN where a frame has none)                μB
=========  ==========================================================  =====================================

Each format has its conventions as defaults (:data:`FORMAT_DEFAULTS`): ASE's for extended XYZ, ASE databases and
OUTCAR; VASP's kBar for CHGNet's MPtrj JSON. Every one can be set (:class:`LabelSpec`), and the spec is part of the
store's identity, so a store is never read with other units than it was built with.

A frame whose labels cannot be trained on is skipped and recorded with its reason: a missing or non-finite energy,
forces missing, of the wrong shape or not finite, a missing stress where stresses are trained, a stress above
:data:`MAX_STRESS_GPA` (a unit that cannot be right), or a force above :data:`MAX_FORCE` (atoms on top of each
other: VASP's first steps of a bad start). A frame without magnetic moments keeps NaN moments: the loss skips them.
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np

from colab_kit.sources.base import Source
from colab_kit.sources.records import RawItem, SourceError, refuse_foreign_code, unbare

if TYPE_CHECKING:
    from pymatgen.core import Structure

EV_PER_A3_IN_GPA = 160.21766208  # 1 eV/Å³ in GPa (CHGNet's and matgl's factor)
#: a stress (GPa) above this is a unit error: the largest stresses DFT frames carry are a few hundred GPa
MAX_STRESS_GPA = 1e4
#: a force (eV/Å) above this comes from atoms nearly on top of each other, not from a structure worth fitting
MAX_FORCE = 1e3

StressUnit = Literal["eV/A3", "GPa", "kbar"]
STRESS_UNITS: tuple[str, ...] = get_args(StressUnit)
_TO_GPA = {"eV/A3": EV_PER_A3_IN_GPA, "GPa": 1.0, "kbar": 0.1}
StressSign = Literal["tensile", "compressive"]  # which sign a stretched cell's stress has in the file
STRESS_SIGNS: tuple[str, ...] = get_args(StressSign)
EnergyIs = Literal["total", "per_atom"]
ENERGY_IS: tuple[str, ...] = get_args(EnergyIs)
#: the targets a potential trains on: energy and forces always, stress (s) and magnetic moments (m) when asked
TARGETS = ("ef", "efs", "efm", "efsm")


@dataclass(frozen=True)
class LabelSpec:
    """Where a frame's labels are and in which units: a format's defaults (:data:`FORMAT_DEFAULTS`) with the user's
    settings on top. ``targets`` is what is trained; ``"auto"`` is resolved by :func:`open_frames` from the first
    frame (stress and magnetic moments when it has them)."""

    targets: str = "auto"
    energy_key: str = "energy"
    forces_key: str = "forces"
    stress_key: str = "stress"
    magmoms_key: str = "magmoms"
    energy_is: EnergyIs = "total"
    stress_unit: StressUnit = "eV/A3"
    stress_sign: StressSign = "tensile"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check(self) -> LabelSpec:
        """This spec, or a SourceError naming the setting and its allowed values."""
        for name, value, allowed in (("potential_targets", self.targets, ("auto", *TARGETS)),
                                     ("energy_is", self.energy_is, ENERGY_IS),
                                     ("stress_unit", self.stress_unit, STRESS_UNITS),
                                     ("stress_sign", self.stress_sign, STRESS_SIGNS)):
            if value not in allowed:
                raise SourceError(f"--set {name}={value!r} is not one of {allowed}")
        return self


#: the formats whose frames carry per-atom labels, with their label conventions (a setting overrides each)
FORMAT_DEFAULTS: dict[str, dict[str, Any]] = {
    "extxyz": {},  # ASE: total eV, eV/Å, eV/Å³ tensile positive
    "ase_db": {},
    "aselmdb": {},  # fairchem's LMDB ASE database (ase-db-backends' reader), ASE's units
    "vasp": {},  # read through ASE's OUTCAR reader: ASE's units
    "mptrj": {"energy_key": "corrected_total_energy", "forces_key": "force", "stress_key": "stress",
              "magmoms_key": "magmom", "stress_unit": "kbar", "stress_sign": "compressive"},
}


FRAME_FORMATS: tuple[str, ...] = tuple(FORMAT_DEFAULTS)


def label_spec(fmt: str, settings: Mapping[str, Any] | None = None) -> LabelSpec:
    """The :class:`LabelSpec` of format ``fmt`` with ``settings`` (None values keep the format's default)."""
    if fmt not in FORMAT_DEFAULTS:
        raise SourceError(f"format {fmt!r} carries no per-atom labels; potentials train from {tuple(FORMAT_DEFAULTS)}")
    fields = {f.name for f in dataclasses.fields(LabelSpec)}
    given = {("targets" if k == "potential_targets" else k): v for k, v in (settings or {}).items() if v is not None}
    return LabelSpec(**{**FORMAT_DEFAULTS[fmt], **{k: v for k, v in given.items() if k in fields}}).check()


@dataclass
class FrameLabels:
    """One frame's labels in the store's units (see the module docstring)."""

    energy: float  # eV/atom
    forces: np.ndarray  # [A, 3] eV/Å
    stress: np.ndarray  # [3, 3] GPa, tensile positive (NaN when the frame has none)
    magmoms: np.ndarray  # [A] μB (NaN when the frame has none)


# ---------------------------------------------------------------- reading labels from a frame


def _lookup(key: str, *places: Mapping[str, Any] | None) -> Any:
    for place in places:
        if place is not None and key in place:
            return place[key]
    return None


def _as_array(value: Any) -> np.ndarray | None:
    """``value`` as float64, with JSON's bare NaN / Infinity markers (:data:`~colab_kit.sources.records.BARE`) as
    their floats; None when it is missing or not numbers."""
    if value is None:
        return None
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        pass
    try:
        return np.asarray(_unbare_all(value), dtype=np.float64)
    except (TypeError, ValueError):
        return None


def _unbare_all(value: Any) -> Any:
    return [_unbare_all(v) for v in value] if isinstance(value, list) else unbare(value)


def _full_stress(value: np.ndarray) -> np.ndarray | None:
    """A 3x3 from a 3x3, 9 values, or 6 Voigt values (ASE's order: xx yy zz yz xz xy)."""
    if value.size == 9:
        return value.reshape(3, 3)
    if value.size == 6:
        xx, yy, zz, yz, xz, xy = value.reshape(6)
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    return None


def make_labels(n_atoms: int, volume: float, spec: LabelSpec, energy: Any, forces: Any, stress: Any, virial: Any,
                magmoms: Any) -> FrameLabels:
    """Check raw label values and convert them to the store's units.

    Raises:
        SourceError: a label that cannot be trained on, with what it is and what fixes it.
    """
    e = _as_array(energy)
    if e is None or e.size != 1:
        raise SourceError(f"energy ({spec.energy_key!r}) is {'missing' if energy is None else 'not one number'}; "
                          f"name the frame's energy with --set energy_key=...")
    e = float(e.reshape(()))
    if not math.isfinite(e):
        raise SourceError(f"energy ({spec.energy_key!r}) is {e}")
    f = _as_array(forces)
    if f is None:
        raise SourceError(f"forces ({spec.forces_key!r}) are missing; name them with --set forces_key=...")
    if f.shape != (n_atoms, 3):
        raise SourceError(f"forces ({spec.forces_key!r}) have shape {tuple(f.shape)}, expected ({n_atoms}, 3) for "
                          f"{n_atoms} atoms")
    if not np.isfinite(f).all():
        bad = int(np.flatnonzero(~np.isfinite(f).all(axis=1))[0])
        raise SourceError(f"forces ({spec.forces_key!r}) hold a non-finite value (atom {bad}: {f[bad].tolist()})")
    if (big := float(np.abs(f).max(initial=0.0))) > MAX_FORCE:
        raise SourceError(f"forces up to {big:.4g} eV/Å (above {MAX_FORCE:g}): atoms nearly on top of each other, "
                          "not a frame to fit")
    # a stress or moments that are not trained never cost a frame: unusable ones are kept as NaN (not known)
    try:
        s = _stress(volume, spec, stress, virial)
    except SourceError:
        if "s" in spec.targets:
            raise
        s = np.full((3, 3), np.nan)
    m = _as_array(magmoms)
    if m is not None and (m.shape != (n_atoms,) or not np.isfinite(m).all()) and "m" not in spec.targets:
        m = None
    if m is None:
        m = np.full(n_atoms, np.nan)
    elif m.shape != (n_atoms,):
        raise SourceError(f"magnetic moments ({spec.magmoms_key!r}) have shape {tuple(m.shape)}, expected "
                          f"({n_atoms},) for {n_atoms} atoms")
    elif not np.isfinite(m).all():
        raise SourceError(f"magnetic moments ({spec.magmoms_key!r}) hold a non-finite value")
    per_atom = e if spec.energy_is == "per_atom" else e / n_atoms
    return FrameLabels(per_atom, f.astype(np.float32), s.astype(np.float32), m.astype(np.float32))


def _stress(volume: float, spec: LabelSpec, stress: Any, virial: Any) -> np.ndarray:
    trained = "s" in spec.targets
    raw = _as_array(stress)
    if raw is None and virial is not None:  # a virial (eV) instead: ASE's stress is -virial / volume
        v = _as_array(virial)
        full = None if v is None else _full_stress(v)
        if full is None:
            raise SourceError(f"virial has {0 if v is None else v.size} values, expected 9")
        gpa = -full / volume * EV_PER_A3_IN_GPA
    elif raw is None:
        if trained:
            raise SourceError(f"stress ({spec.stress_key!r}) is missing and stresses are trained; name it with --set "
                              "stress_key=..., or train energies and forces only: --set potential_targets=ef")
        return np.full((3, 3), np.nan)
    else:
        full = _full_stress(raw)
        if full is None:
            raise SourceError(f"stress ({spec.stress_key!r}) has {raw.size} values, expected 6 (Voigt) or 9")
        gpa = full * _TO_GPA[spec.stress_unit] * (-1.0 if spec.stress_sign == "compressive" else 1.0)
    if not np.isfinite(gpa).all():
        raise SourceError(f"stress ({spec.stress_key!r}) holds a non-finite value")
    if (big := float(np.abs(gpa).max())) > MAX_STRESS_GPA:
        raise SourceError(f"stress of {big:.4g} GPa (read as {spec.stress_unit}) cannot be right: above "
                          f"{MAX_STRESS_GPA:g} GPa; set the file's unit with --set stress_unit= one of {STRESS_UNITS}")
    return gpa


def _from_atoms(atoms: Any, spec: LabelSpec) -> tuple[Structure, FrameLabels]:
    from pymatgen.io.ase import AseAtomsAdaptor

    if atoms.cell.rank < 3:
        raise SourceError('frame has no 3-D cell; write it with Lattice="..." pbc="T T T"')
    results = atoms.calc.results if atoms.calc is not None else None
    places = (results, atoms.info, atoms.arrays)
    stress = _lookup(spec.stress_key, *places)
    virial = _lookup("virial", *places) if stress is None else None
    labels = make_labels(len(atoms), float(atoms.get_volume()), spec, _lookup(spec.energy_key, *places),
                         _lookup(spec.forces_key, *places), stress, virial, _lookup(spec.magmoms_key, *places))
    atoms = atoms.copy()  # the adaptor copies the calculator's results into site properties: leave them out
    return AseAtomsAdaptor.get_structure(atoms), labels


def parse_frame(item: RawItem, spec: LabelSpec) -> tuple[Structure, FrameLabels]:
    """The Structure and labels of one frame (in a conversion worker).

    Raises:
        SourceError: naming ``item.id`` and why the frame cannot be used.
    """
    if item.error:
        raise SourceError(f"item {item.id!r}: {item.error}")
    try:
        if item.kind == "extxyz":
            from ase.io import read

            return _from_atoms(read(io.StringIO(item.payload), format="extxyz"), spec)
        if item.kind == "ase_atoms":
            return _from_atoms(_atoms(item.payload), spec)
        if item.kind == "mptrj":
            return _from_mptrj(item.payload, spec)
        raise SourceError(f"kind {item.kind!r} carries no per-atom labels")
    except SourceError as exc:
        raise SourceError(f"frame {item.id!r}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a parser failing on one frame fails that frame
        raise SourceError(f"frame {item.id!r} ({item.kind}): cannot read it: "
                          f"{' '.join(f'{type(exc).__name__}: {exc}'.split())[:200]}") from exc


def _atoms(payload: Mapping[str, Any]) -> Any:
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms = Atoms(numbers=payload["numbers"], positions=payload["positions"], cell=payload["cell"], pbc=payload["pbc"])
    atoms.info.update(payload.get("info", {}))
    results = {k: np.asarray(v) if isinstance(v, list) else v for k, v in payload.get("results", {}).items()}
    atoms.calc = SinglePointCalculator(atoms)
    atoms.calc.results.update(results)
    return atoms


def atoms_payload(atoms: Any) -> dict[str, Any]:
    """A picklable, JSON-able dict of an ASE Atoms and its calculator's results (what :func:`parse_frame` reads back)."""
    results = dict(atoms.calc.results) if atoms.calc is not None else {}
    return {"numbers": atoms.numbers.tolist(), "positions": atoms.positions.tolist(), "cell": atoms.cell.array.tolist(),
            "pbc": atoms.pbc.tolist(), "results": {k: (v.tolist() if isinstance(v, np.ndarray) else v)
                                                    for k, v in results.items()},
            "info": {k: v for k, v in atoms.info.items() if isinstance(v, (int, float, str, bool))}}


def _from_mptrj(frame: Mapping[str, Any], spec: LabelSpec) -> tuple[Structure, FrameLabels]:
    from pymatgen.core import Structure

    if not isinstance(frame, Mapping) or "structure" not in frame:
        raise SourceError("frame has no 'structure'; expected CHGNet's MPtrj layout {material: {frame: {structure, "
                          "corrected_total_energy, force, stress, magmom}}}")
    refuse_foreign_code(frame["structure"])
    structure = Structure.from_dict(frame["structure"])
    labels = make_labels(len(structure), float(structure.volume), spec, frame.get(spec.energy_key),
                         frame.get(spec.forces_key), frame.get(spec.stress_key), None, frame.get(spec.magmoms_key))
    return structure, labels


# ---------------------------------------------------------------- sources


class FrameSource(Source):
    """A source of frames with labels (:func:`open_frames`): ``inner``'s items, the labels spec in its identity."""

    def __init__(self, inner: Source, spec: LabelSpec) -> None:
        super().__init__(inner.path, "energy")
        self.inner, self.format = inner, inner.format
        self.spec = spec

    def identity(self) -> dict[str, Any]:
        return {**self.inner.identity(), "target_name": "energy", "potential": self.spec.to_dict()}

    def __iter__(self) -> Iterator[RawItem]:
        return iter(self.inner)

    def iter_from(self, start: int) -> Iterator[RawItem]:
        return self.inner.iter_from(start)

    def count(self) -> int | None:
        return self.inner.count()

    def resolve_targets(self) -> FrameSource:
        """With ``targets="auto"``: energy and forces, plus stress and magnetic moments where the first frame has
        them (non-zero moments)."""
        if self.spec.targets != "auto":
            return self
        first = next(iter(self), None)
        targets = "ef"
        if first is not None:
            try:
                _, labels = parse_frame(first, dataclasses.replace(self.spec, targets="ef"))
                targets += "s" * bool(np.isfinite(labels.stress).all())
                targets += "m" * bool(np.isfinite(labels.magmoms).all() and np.abs(labels.magmoms).max(initial=0) > 0)
            except SourceError:
                targets = "efs"  # a bad first frame: the safe default, each frame checked on its own
        self.spec = dataclasses.replace(self.spec, targets=targets)
        return self


class MptrjSource(Source):
    """CHGNet's MPtrj JSON layout, ``{material: {frame: {structure, corrected_total_energy, force, stress, magmom,
    ...}}}``, streamed material by material (ijson): one material's frames in memory at a time."""

    format = "mptrj"

    def __init__(self, path: str) -> None:
        super().__init__(path, "energy")
        from colab_kit.sources.streams import stream_json

        first = next(stream_json(path, "kvitems", "", what="materials"), None)
        frame = next(iter(first[1].values()), None) if first is not None and isinstance(first[1], dict) else None
        if first is not None and not (isinstance(frame, dict) and "structure" in frame):
            raise SourceError(f"{path}: not CHGNet's MPtrj layout {{material: {{frame: {{structure, "
                              f"corrected_total_energy, force, stress, magmom}}}}}} (its first key is {first[0]!r}); "
                              "--task potential trains on DFT frames: pass --data an extxyz file, MPtrj JSON, ASE "
                              "database or VASP folder")

    def __iter__(self) -> Iterator[RawItem]:
        from colab_kit.sources.streams import stream_json

        for material, frames in stream_json(self.path, "kvitems", "", what="materials"):
            if not isinstance(frames, dict):
                yield RawItem(str(material), None, None, "mptrj", f"material {material!r} is not an object of frames")
                continue
            for frame_id, frame in frames.items():
                yield RawItem(str(frame_id), frame, None, "mptrj")

    def count(self) -> int:
        """Frames, from parse events alone: the keys one level below the top (no frame is built)."""
        from colab_kit.sources.streams import stream_json

        return sum(1 for prefix, event, _ in stream_json(self.path, "parse", what="JSON events")
                   if event == "map_key" and prefix and "." not in prefix)


class AseSource(Source):
    """Frames ASE reads with their calculator's results: an ASE database (``.db``: SQLite or JSON; ``.aselmdb``: the
    LMDB database of fairchem's datasets, read by ase-db-backends, which ASE's ``connect`` uses) or a VASP
    folder tree (every ``OUTCAR[.gz]`` under the path, each ionic step a frame: ASE's ``vasp-out`` reader, whose
    energy is OUTCAR's ``energy(sigma->0)``; vasprun.xml's ``e_0_energy``, which VASP 5.4.4 writes wrong, is not
    read)."""

    def __init__(self, path: str, fmt: str) -> None:
        super().__init__(path, "energy")
        self.format = fmt
        if fmt == "aselmdb":
            try:
                import ase_db_backends.aselmdb  # noqa: F401  (ase.db.connect(type="aselmdb") imports it)
            except ImportError:
                raise SourceError(f"{path}: reading an .aselmdb database needs the package ase-db-backends (the LMDB "
                                  "backend of ASE databases that fairchem's datasets use): pip install "
                                  "ase-db-backends") from None
        if fmt == "vasp":
            from pathlib import Path

            root = Path(path)
            self._outcars = sorted(str(p) for p in ([root] if root.is_file() else root.rglob("OUTCAR*"))
                                   if p.name in ("OUTCAR", "OUTCAR.gz"))
            if not self._outcars:
                raise SourceError(f"{path}: no OUTCAR or OUTCAR.gz in this folder or below; a VASP source is the "
                                  "folder (tree) of finished VASP runs")

    def _fingerprint(self) -> dict[str, Any]:
        if self.format != "vasp":
            return super()._fingerprint()
        import hashlib
        import os

        from colab_kit.util.files import sha256_file

        digest = hashlib.sha256()
        for p in self._outcars:
            digest.update(f"{os.path.relpath(p, self.path)}\0{sha256_file(p)}\0".encode())
        return {"sha256": digest.hexdigest(), "files": len(self._outcars)}

    def __iter__(self) -> Iterator[RawItem]:
        if self.format in ("ase_db", "aselmdb"):
            import ase.db

            db = (ase.db.connect(self.path, type="aselmdb", readonly=True) if self.format == "aselmdb"
                  else ase.db.connect(self.path))
            with db:
                for row in db.select():
                    try:
                        yield RawItem(str(row.get("uid", row.id)), atoms_payload(row.toatoms()), None, "ase_atoms")
                    except Exception as exc:  # noqa: BLE001 - one unreadable row is one bad item
                        yield RawItem(str(row.id), None, None, "ase_atoms", f"cannot read the row: {exc}")
            return
        import os

        from ase.io import iread

        for path in self._outcars:
            run = os.path.relpath(os.path.dirname(path), self.path) if os.path.isdir(self.path) else os.path.basename(path)
            try:
                for step, atoms in enumerate(iread(path, ":", format="vasp-out")):
                    yield RawItem(f"{run}:{step}", atoms_payload(atoms), None, "ase_atoms")
            except Exception as exc:  # noqa: BLE001 - a cut-off OUTCAR: the steps before are kept
                yield RawItem(f"{run}:end", None, None, "ase_atoms", f"{path} cannot be read further: "
                              f"{' '.join(str(exc).split())[:160]}")


def open_frames(source: str, fmt: str | None = None, settings: Mapping[str, Any] | None = None) -> FrameSource:
    """Open DFT frames with per-atom labels: an extended XYZ file, CHGNet's MPtrj JSON, an ASE database (``.db``, or
    fairchem's ``.aselmdb`` with ase-db-backends installed), or a folder of VASP runs (OUTCAR).

    Args:
        settings: the label settings (:class:`LabelSpec` fields; ``potential_targets`` for ``targets``), None values
            keeping the format's defaults.

    Raises:
        SourceError: the path does not exist, its format carries no per-atom labels, or a setting is not allowed.
    """
    import os

    from colab_kit.sources.extxyz import ExtxyzSource
    from colab_kit.sources.streams import first_char

    if not os.path.exists(source):
        raise SourceError(f"{source}: no such file or folder; check the path (on Colab, mount Drive first)")
    name = os.path.basename(source).lower().removesuffix(".gz")
    if fmt is None:
        if os.path.isdir(source) or name.startswith("outcar"):
            fmt = "vasp"
        elif name.endswith((".extxyz", ".xyz")):
            fmt = "extxyz"
        elif name.endswith(".aselmdb"):
            fmt = "aselmdb"
        elif name.endswith((".db", ".json")) and (name.endswith(".db") or first_char(source) == "{"):
            fmt = "ase_db" if name.endswith(".db") or _is_ase_json(source) else "mptrj"
        else:
            raise SourceError(f"{source}: cannot tell a frame format from the name; frames are read from extxyz, "
                              "MPtrj JSON, an ASE .db or .aselmdb or a VASP folder: pass --format")
    spec = label_spec(fmt, settings)
    inner: Source
    if fmt == "extxyz":
        inner = ExtxyzSource(source, None)
        inner.target_name = "energy"
    elif fmt == "mptrj":
        inner = MptrjSource(source)
    else:
        inner = AseSource(source, fmt)
    return FrameSource(inner, spec).resolve_targets()


def _is_ase_json(path: str) -> bool:
    """ASE's JSON database's first key is a row number (``{"1": {...}, ..., "ids": [...]}``); MPtrj's a material id."""
    from colab_kit.sources.streams import stream_json

    for _, event, value in stream_json(path, "parse", what="JSON events"):
        if event == "map_key":
            return str(value).isdigit()
    return False
