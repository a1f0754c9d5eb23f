"""Generate a large synthetic "MP-like" crystal dataset for scale benchmarks.

The output imitates matbench_mp_e_form (132,752 structures, mean ~30 sites per cell, median ~20-24, a tail to
200+ sites, 86+ elements) without network access. Every item is derived from one of the 3,000 real Materials
Project structures in ``mp_eform_cgcnn_3000_matbench.json.gz`` by:

* element substitution inside small families of chemically similar elements (same group / oxidation state),
  with the lattice rescaled by the ratio of atomic radii (clipped to 0.92-1.12);
* a random symmetric lattice strain (diagonal within +-3 %, shear within +-1.5 %);
* random site displacements (uniform in a ball of radius 0.05 A);
* for about 10 % of items a supercell (x2, x3 along one axis or 2x2 in a plane), never above 300 sites.

After perturbation the minimum interatomic distance (periodic images included) is checked to be > 0.7 A; an
item that fails is redrawn and, after a few failures, falls back to the unperturbed seed geometry.

A few items (``isolated_fraction``) deliberately contain an isolated atom (no neighbour within 6 A): a lone atom
in a vacuum box, a small cell stretched so every spacing exceeds 6 A, or a slab with an adatom in the vacuum.
They exercise the converters' bad-structure policy; their ids are recorded in the output.

Targets are the seed's formation energy (eV/atom) plus small Gaussian noise (more when elements were
substituted), i.e. synthetic labels for benchmarking only.

The file is written in matbench layout, streamed through gzip so memory stays flat::

    {"index": ["mplike-000000", ...], "columns": ["structure", "e_form"],
     "colab_kit_synthetic": {"seed": 0, "generator": "benchmarks/mp_like.py", "isolated_ids": [...], ...},
     "data": [[<pymatgen Structure dict>, <e_form>], ...]}

Usage::

    python benchmarks/mp_like.py --n 132752 --out /tmp/mp_like_132k.json.gz [--seed 0]
"""

from __future__ import annotations

import argparse
import functools
import gzip
import itertools
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

GENERATOR = "benchmarks/mp_like.py"
COLUMNS = ["structure", "e_form"]
ISOLATION_RADIUS = 6.0
MIN_DISTANCE = 0.7
MAX_SITES = 300

_REPO = Path(__file__).resolve().parents[1]
SEED_CANDIDATES = (
    _REPO / "colab_kit" / "data" / "mp_eform_cgcnn_3000_matbench.json.gz",
    _REPO.parent / "shared" / "data" / "mp_eform_cgcnn_3000" / "mp_eform_cgcnn_3000_matbench.json.gz",
)

# Substitution families: elements of one tuple may replace each other (same group and/or usual oxidation state).
# Elements absent from every tuple are never substituted.
FAMILIES: tuple[tuple[str, ...], ...] = (
    ("Li", "Na", "K", "Rb", "Cs"),
    ("Mg", "Ca", "Sr", "Ba"),
    ("Sc", "Y", "Lu"),
    ("La", "Ce", "Pr", "Nd", "Pm", "Sm", "Gd", "Tb", "Dy", "Ho", "Er", "Tm"),
    ("Eu", "Yb"),
    ("Ti", "Zr", "Hf"),
    ("V", "Nb", "Ta"),
    ("Cr", "Mo", "W"),
    ("Mn", "Tc", "Re"),
    ("Fe", "Ru", "Os"),
    ("Co", "Rh", "Ir"),
    ("Ni", "Pd", "Pt"),
    ("Cu", "Ag", "Au"),
    ("Zn", "Cd", "Hg"),
    ("Al", "Ga", "In"),
    ("Si", "Ge", "Sn"),
    ("P", "As", "Sb", "Bi"),
    ("S", "Se", "Te"),
    ("Cl", "Br", "I"),
    ("Ne", "Ar", "Kr", "Xe"),
    ("Th", "U", "Np", "Pu"),
)

# Supercell policy (tuned on the seed site counts: mean ~30, median ~21, ~1.3 % > 150 sites, max 300).
SUPERCELL_PROB = 0.10
SUPERCELL_MULTS = (2, 3, 4)
SUPERCELL_WEIGHTS = (0.60, 0.15, 0.25)
SUBSTITUTION_PROB = 0.6
SUBSTITUTE_ELEMENT_PROB = 0.5
STRAIN_DIAG = 0.03
STRAIN_SHEAR = 0.015
MAX_DISPLACEMENT = 0.05
MAX_ATTEMPTS = 4

_PBC = np.ones(3, dtype=np.int64)


@dataclass(frozen=True)
class Seed:
    """One real seed structure as plain arrays.

    Attributes:
        lattice: (3, 3) lattice matrix, rows are lattice vectors (A).
        species: Element symbol of each site.
        frac: (n, 3) fractional coordinates.
        e_form: Formation energy (eV/atom).
    """

    lattice: np.ndarray
    species: tuple[str, ...]
    frac: np.ndarray
    e_form: float


@dataclass
class _Item:
    lattice: np.ndarray
    species: list[str]
    frac: np.ndarray
    e_form: float
    substituted: bool = False
    supercell: int = 1
    fallback: bool = False


# --------------------------------------------------------------------------------------------------- geometry


def _neighbor_pairs(lattice: np.ndarray, frac: np.ndarray, r: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (center, neighbour, distance) of all non-self pairs within ``r`` (periodic images included)."""
    from pymatgen.optimization.neighbors import find_points_in_spheres

    lat = np.ascontiguousarray(lattice, dtype=float)
    cart = np.ascontiguousarray(frac @ lat, dtype=float)
    c_idx, n_idx, images, dist = find_points_in_spheres(cart, cart, r=float(r), pbc=_PBC, lattice=lat, tol=1e-8)
    keep = (c_idx != n_idx) | np.any(images != 0, axis=1)
    return c_idx[keep], n_idx[keep], dist[keep]


def min_distance_ok(lattice: np.ndarray, frac: np.ndarray, dmin: float = MIN_DISTANCE) -> bool:
    """Whether every interatomic distance (periodic images included) is larger than ``dmin``.

    Args:
        lattice: (3, 3) lattice matrix.
        frac: (n, 3) fractional coordinates.
        dmin: Distance threshold (A).

    Returns:
        True when no pair of sites is closer than ``dmin``.
    """
    return _neighbor_pairs(lattice, frac, dmin)[0].size == 0


def isolated_sites(lattice: np.ndarray, frac: np.ndarray, r: float = ISOLATION_RADIUS) -> np.ndarray:
    """Boolean mask of sites with no neighbour (periodic images included) within ``r``.

    Args:
        lattice: (3, 3) lattice matrix.
        frac: (n, 3) fractional coordinates.
        r: Radius (A).

    Returns:
        (n,) bool array, True for isolated sites.
    """
    centers = _neighbor_pairs(lattice, frac, r)[0]
    mask = np.ones(len(frac), dtype=bool)
    mask[centers] = False
    return mask


def _nearest_distance(lattice: np.ndarray, frac: np.ndarray) -> float:
    """Smallest non-self distance, periodic images included."""
    r = float(np.linalg.norm(lattice, axis=1).min()) + 0.01  # the shortest basis vector is a self-image distance
    return float(_neighbor_pairs(lattice, frac, r)[2].min())


# --------------------------------------------------------------------------------------------------- seeds


def default_seeds_path() -> Path:
    """Return the first existing copy of the 3,000-structure seed file.

    Returns:
        Path of ``mp_eform_cgcnn_3000_matbench.json.gz``.

    Raises:
        FileNotFoundError: When no copy is found.
    """
    for cand in SEED_CANDIDATES:
        if cand.is_file():
            return cand
    raise FileNotFoundError(f"seed file not found; looked at {[str(c) for c in SEED_CANDIDATES]}")


def load_seeds(path: str | os.PathLike[str] | None = None) -> tuple[Seed, ...]:
    """Load the ordered seed structures of a matbench-layout json.gz (small: read at once, cached per path).

    Disordered sites and structures with a pair closer than ``MIN_DISTANCE`` are skipped.

    Args:
        path: Seed file; ``None`` uses :func:`default_seeds_path`.

    Returns:
        The seeds, in file order.
    """
    resolved = Path(path) if path is not None else default_seeds_path()
    return _load_seeds_cached(str(resolved.resolve()))


@functools.lru_cache(maxsize=2)
def _load_seeds_cached(path: str) -> tuple[Seed, ...]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        doc = json.load(fh)
    col_s, col_e = doc["columns"].index("structure"), doc["columns"].index("e_form")
    seeds: list[Seed] = []
    for row in doc["data"]:
        sd = row[col_s]
        species: list[str] = []
        frac: list[list[float]] = []
        ordered = True
        for site in sd["sites"]:
            sp = site["species"]
            if len(sp) != 1 or abs(float(sp[0]["occu"]) - 1.0) > 1e-6 or "oxidation_state" in sp[0]:
                ordered = False
                break
            species.append(sp[0]["element"])
            frac.append(site["abc"])
        if not ordered or not species:
            continue
        lattice = np.asarray(sd["lattice"]["matrix"], dtype=float)
        frac_arr = np.asarray(frac, dtype=float)
        if not min_distance_ok(lattice, frac_arr):
            continue
        frac_arr.setflags(write=False)
        lattice.setflags(write=False)
        seeds.append(Seed(lattice, tuple(species), frac_arr, float(row[col_e])))
    del doc
    return tuple(seeds)


def _radius_table(symbols: set[str]) -> dict[str, float]:
    from pymatgen.core import Element

    table: dict[str, float] = {}
    for sym in sorted(symbols):
        rad = Element(sym).atomic_radius
        table[sym] = float(rad) if rad is not None else 1.5
    return table


# --------------------------------------------------------------------------------------------------- generator


class MPLikeGenerator:
    """Deterministic per-item generator; item ``i`` depends only on (seed, i, whether it is isolated).

    Args:
        seeds: Seed structures from :func:`load_seeds`.
        seed: Random seed (non-negative int).
    """

    def __init__(self, seeds: Sequence[Seed], seed: int = 0) -> None:
        if not seeds:
            raise ValueError("no usable seed structures")
        self.seeds = seeds
        self.seed = int(seed)
        self.family_of: dict[str, tuple[str, ...]] = {el: fam for fam in FAMILIES for el in fam}
        symbols = {el for s in seeds for el in s.species} | set(self.family_of)
        self.radius = _radius_table(symbols)
        self.small = [k for k, s in enumerate(seeds) if len(s.species) <= 4]
        self.slab_ok = [k for k, s in enumerate(seeds) if len(s.species) <= 16]

    def rng(self, i: int) -> np.random.Generator:
        """Random generator of item ``i``."""
        return np.random.default_rng([self.seed, 0, i])

    # ---------------------------------------------------------------- perturbations
    def _substitute(self, species: tuple[str, ...], rng: np.random.Generator) -> tuple[list[str], float, bool]:
        present = sorted(set(species))
        used = set(present)
        mapping: dict[str, str] = {}
        for el in present:
            fam = self.family_of.get(el)
            if fam is None or rng.random() >= SUBSTITUTE_ELEMENT_PROB:
                continue
            choices = [x for x in fam if x not in used]
            if not choices:
                continue
            new = choices[int(rng.integers(len(choices)))]
            mapping[el] = new
            used.add(new)
        if not mapping:
            return list(species), 1.0, False
        new_species = [mapping.get(el, el) for el in species]
        old_r = sum(self.radius[el] for el in species)
        new_r = sum(self.radius[el] for el in new_species)
        scale = float(np.clip(new_r / old_r, 0.92, 1.12))
        return new_species, scale, True

    @staticmethod
    def _supercell(
        lattice: np.ndarray, species: list[str], frac: np.ndarray, mult: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, list[str], np.ndarray]:
        lengths = np.linalg.norm(lattice, axis=1)
        weights = 1.0 / lengths**2  # prefer short axes: keeps cells compact
        weights /= weights.sum()
        diag = [1, 1, 1]
        if mult in (2, 3):
            diag[int(rng.choice(3, p=weights))] = mult
        elif mult == 4:
            for ax in rng.choice(3, size=2, replace=False, p=weights):
                diag[int(ax)] = 2
        else:
            raise ValueError(f"unsupported supercell multiplier {mult}")
        d = np.asarray(diag, dtype=float)
        shifts = np.asarray(list(itertools.product(*(range(k) for k in diag))), dtype=float)
        new_frac = ((frac[None, :, :] + shifts[:, None, :]) / d).reshape(-1, 3)
        return lattice * d[:, None], species * len(shifts), new_frac

    @staticmethod
    def _strain(rng: np.random.Generator) -> np.ndarray:
        eps = np.zeros((3, 3))
        eps[np.diag_indices(3)] = rng.uniform(-STRAIN_DIAG, STRAIN_DIAG, 3)
        off = rng.uniform(-STRAIN_SHEAR, STRAIN_SHEAR, 3)
        eps[0, 1] = eps[1, 0] = off[0]
        eps[0, 2] = eps[2, 0] = off[1]
        eps[1, 2] = eps[2, 1] = off[2]
        return np.eye(3) + eps

    @staticmethod
    def _displace(lattice: np.ndarray, frac: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n = len(frac)
        vec = rng.normal(size=(n, 3))
        vec /= np.maximum(np.linalg.norm(vec, axis=1, keepdims=True), 1e-12)
        vec *= MAX_DISPLACEMENT * np.cbrt(rng.random((n, 1)))  # uniform in a ball of radius MAX_DISPLACEMENT
        return frac + vec @ np.linalg.inv(lattice)

    # ---------------------------------------------------------------- items
    def make_item(self, i: int) -> _Item:
        """Build the ordinary (non-isolated) item ``i``.

        Args:
            i: Item number.

        Returns:
            The perturbed structure and its synthetic target.
        """
        rng = self.rng(i)
        seed = self.seeds[int(rng.integers(len(self.seeds)))]
        n0 = len(seed.species)
        mult = 1
        if rng.random() < SUPERCELL_PROB:
            mult = int(rng.choice(SUPERCELL_MULTS, p=SUPERCELL_WEIGHTS))
            while mult > 1 and n0 * mult > MAX_SITES:
                mult -= 1
        do_sub = rng.random() < SUBSTITUTION_PROB
        for _attempt in range(MAX_ATTEMPTS):
            if do_sub:
                species, scale, substituted = self._substitute(seed.species, rng)
            else:
                species, scale, substituted = list(seed.species), 1.0, False
            lattice, frac = seed.lattice * scale, seed.frac
            if mult > 1:
                lattice, species, frac = self._supercell(lattice, species, frac, mult, rng)
            lattice = lattice @ self._strain(rng)
            frac = np.mod(self._displace(lattice, frac, rng), 1.0)
            if min_distance_ok(lattice, frac):
                noise = rng.normal(0.0, 0.02) + (rng.normal(0.0, 0.08) if substituted else 0.0)
                return _Item(lattice, species, frac, seed.e_form + noise, substituted, mult)
        # Fallback: the unperturbed seed geometry (seeds are filtered to pass the distance check).
        lattice, species, frac = seed.lattice, list(seed.species), seed.frac
        if mult > 1:
            lattice, species, frac = self._supercell(lattice, species, frac, mult, rng)
        return _Item(lattice, species, frac, seed.e_form + rng.normal(0.0, 0.02), False, mult, fallback=True)

    def make_isolated_item(self, i: int) -> _Item:
        """Build item ``i`` as a bad structure that contains at least one atom with no neighbour within 6 A.

        Args:
            i: Item number.

        Returns:
            The structure and its synthetic target.

        Raises:
            RuntimeError: If the construction did not produce an isolated atom (should not happen).
        """
        rng = self.rng(i)
        kind = int(rng.integers(3))
        item: _Item | None = None
        if kind == 1 and self.small:
            item = self._stretched(rng)
        elif kind == 2 and self.slab_ok:
            item = self._slab_adatom(rng)
        if item is None:
            item = self._lone_atom(rng)
        if not isolated_sites(item.lattice, item.frac).any():
            raise RuntimeError(f"item {i}: isolated-atom construction failed")
        return item

    def _lone_atom(self, rng: np.random.Generator) -> _Item:
        seed = self.seeds[int(rng.integers(len(self.seeds)))]
        el = seed.species[int(rng.integers(len(seed.species)))]
        lattice = np.diag(rng.uniform(ISOLATION_RADIUS + 0.5, ISOLATION_RADIUS + 3.0, 3))
        frac = rng.random((1, 3))
        return _Item(lattice, [el], frac, seed.e_form + rng.normal(0.0, 0.02))

    def _stretched(self, rng: np.random.Generator) -> _Item:
        seed = self.seeds[self.small[int(rng.integers(len(self.small)))]]
        d = _nearest_distance(seed.lattice, seed.frac)
        factor = rng.uniform(ISOLATION_RADIUS + 0.3, ISOLATION_RADIUS + 1.5) / d
        return _Item(seed.lattice * factor, list(seed.species), seed.frac.copy(), seed.e_form + rng.normal(0.0, 0.02))

    def _slab_adatom(self, rng: np.random.Generator) -> _Item | None:
        seed = self.seeds[self.slab_ok[int(rng.integers(len(self.slab_ok)))]]
        a, b, c = seed.lattice
        ka = max(1, int(np.ceil((ISOLATION_RADIUS + 0.5) / np.linalg.norm(a))))
        kb = max(1, int(np.ceil((ISOLATION_RADIUS + 0.5) / np.linalg.norm(b))))
        n_sites = len(seed.species) * ka * kb + 1
        if n_sites > MAX_SITES:
            return None
        normal = np.cross(a, b)
        normal /= np.linalg.norm(normal)
        if np.dot(normal, c) < 0:
            normal = -normal
        vacuum = rng.uniform(2 * ISOLATION_RADIUS + 2.0, 2 * ISOLATION_RADIUS + 4.0)
        shifts = np.asarray(list(itertools.product(range(ka), range(kb))), dtype=float)
        cart = (seed.frac[None, :, :2] + shifts[:, None, :]).reshape(-1, 2) @ np.stack([a, b])
        cart += np.tile(seed.frac[:, 2:3], (len(shifts), 1)) * c
        lattice = np.stack([a * ka, b * kb, c + normal * vacuum])
        adatom = 0.5 * lattice[0] + 0.5 * lattice[1] + c + normal * (vacuum / 2)
        cart = np.vstack([cart, adatom])
        frac = np.mod(cart @ np.linalg.inv(lattice), 1.0)
        species = list(seed.species) * len(shifts) + [seed.species[int(rng.integers(len(seed.species)))]]
        if not isolated_sites(lattice, frac)[-1] or not min_distance_ok(lattice, frac):
            return None
        return _Item(lattice, species, frac, seed.e_form + rng.normal(0.0, 0.05))


# --------------------------------------------------------------------------------------------------- output


def structure_dict(lattice: np.ndarray, species: list[str], frac: np.ndarray) -> dict[str, Any]:
    """Build a pymatgen ``Structure.as_dict()``-layout dict directly (much faster than ``as_dict``).

    Fractional coordinates are rounded to 1e-8, Cartesian ones to 1e-6 A, the lattice to 1e-8 A.

    Args:
        lattice: (3, 3) lattice matrix (rows are vectors, A).
        species: Element symbol of each site.
        frac: (n, 3) fractional coordinates.

    Returns:
        A dict that ``pymatgen.core.Structure.from_dict`` reads back.
    """
    lat = np.round(lattice, 8)
    f = np.round(frac, 8)
    abc = f.tolist()
    xyz = np.round(f @ lat, 6).tolist()
    sites = [
        {"species": [{"element": el, "occu": 1}], "abc": p, "xyz": x, "label": el, "properties": {}}
        for el, p, x in zip(species, abc, xyz, strict=True)
    ]
    return {
        "@module": "pymatgen.core.structure",
        "@class": "Structure",
        "charge": 0,
        "lattice": {"matrix": lat.tolist(), "pbc": [True, True, True]},
        "properties": {},
        "sites": sites,
    }


class Buffered:
    """Collect text chunks and hand them to a binary stream in ~1 MB blocks."""

    def __init__(self, fh: Any, limit: int = 1 << 20) -> None:
        self.fh, self.limit, self.parts, self.size = fh, limit, [], 0

    def write(self, text: str) -> None:
        self.parts.append(text)
        self.size += len(text)
        if self.size >= self.limit:
            self.flush()

    def flush(self) -> None:
        if self.parts:
            self.fh.write("".join(self.parts).encode("utf-8"))
            self.parts, self.size = [], 0


def item_id(i: int, width: int = 6) -> str:
    """Return the id of item ``i`` (``mplike-000042``)."""
    return f"mplike-{i:0{width}d}"


def choose_isolated(n: int, seed: int, isolated_fraction: float) -> list[int]:
    """Pick the item numbers that get an isolated atom (at least one when the fraction is > 0).

    Args:
        n: Number of items.
        seed: Random seed.
        isolated_fraction: Fraction of items to make isolated.

    Returns:
        Sorted item numbers.
    """
    if n <= 0 or isolated_fraction <= 0:
        return []
    k = min(n, max(1, round(n * isolated_fraction)))
    rng = np.random.default_rng([int(seed), 1, n])
    return sorted(int(x) for x in rng.choice(n, size=k, replace=False))


def generate(
    n: int,
    out_path: str,
    seed: int = 0,
    isolated_fraction: float = 2e-4,
    *,
    seeds_path: str | None = None,
    progress: bool = False,
    compresslevel: int = 6,
) -> dict[str, Any]:
    """Write ``n`` MP-like structures to a matbench-layout json.gz, streaming (memory stays flat).

    The gzip stream is written with mtime 0 and no file name, so the same arguments give identical bytes.

    Args:
        n: Number of structures.
        out_path: Output ``.json.gz`` path (written to ``<out_path>.tmp`` then renamed).
        seed: Random seed (non-negative int); output is deterministic for a given seed.
        isolated_fraction: Fraction of items containing an atom with no neighbour within 6 A (at least one
            item when > 0).
        seeds_path: Seed matbench json.gz; default: the 3,000-structure MP formation-energy subset.
        progress: Show a tqdm progress bar on stderr.
        compresslevel: gzip level.

    Returns:
        Stats: count, mean/median/p99/max/min sites, n_gt_150, n_isolated, isolated_ids, n_elements,
        n_substituted, n_supercell, n_fallback, bytes, seconds, path, seed.
    """
    from tqdm import tqdm

    if n < 0:
        raise ValueError("n must be >= 0")
    if seed < 0:
        raise ValueError("seed must be >= 0")
    t0 = time.perf_counter()
    gen = MPLikeGenerator(load_seeds(seeds_path), seed=seed)
    isolated = choose_isolated(n, seed, isolated_fraction)
    isolated_set = set(isolated)
    width = max(6, len(str(max(n - 1, 0))))
    isolated_ids = [item_id(i, width) for i in isolated]

    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    counts = np.zeros(n, dtype=np.int32)
    elements: set[str] = set()
    n_sub = n_super = n_fallback = 0
    meta = {
        "seed": int(seed),
        "generator": GENERATOR,
        "isolated_ids": isolated_ids,
        "isolated_radius_angstrom": ISOLATION_RADIUS,
        "n": int(n),
        "target": "e_form (eV/atom): seed formation energy + Gaussian noise; SYNTHETIC, for benchmarks only",
        "seed_data": "mp_eform_cgcnn_3000 (Materials Project, CC BY 4.0), perturbed",
    }
    with (
        open(tmp, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=compresslevel) as gz,
    ):
        w = Buffered(gz)
        w.write('{"index": [')
        for start in range(0, n, 10000):
            ids = (item_id(i, width) for i in range(start, min(n, start + 10000)))
            w.write((", " if start else "") + ", ".join(f'"{x}"' for x in ids))
        w.write('], "columns": ' + json.dumps(COLUMNS))
        w.write(', "colab_kit_synthetic": ' + json.dumps(meta))
        w.write(', "data": [')
        for i in tqdm(range(n), disable=not progress, mininterval=1.0, unit="struct", desc="mp_like"):
            item = gen.make_isolated_item(i) if i in isolated_set else gen.make_item(i)
            row = [structure_dict(item.lattice, item.species, item.frac), round(float(item.e_form), 6)]
            w.write((", " if i else "") + json.dumps(row, separators=(",", ":")))
            counts[i] = len(item.species)
            elements.update(item.species)
            n_sub += item.substituted
            n_super += item.supercell > 1
            n_fallback += item.fallback
        w.write("]}")
        w.flush()
    os.replace(tmp, out)

    stats: dict[str, Any] = {
        "path": str(out),
        "seed": int(seed),
        "count": int(n),
        "mean_sites": round(float(counts.mean()), 3) if n else 0.0,
        "median_sites": float(np.median(counts)) if n else 0.0,
        "p99_sites": float(np.percentile(counts, 99)) if n else 0.0,
        "max_sites": int(counts.max()) if n else 0,
        "min_sites": int(counts.min()) if n else 0,
        "n_gt_150": int((counts > 150).sum()),
        "n_isolated": len(isolated_ids),
        "isolated_ids": isolated_ids,
        "n_elements": len(elements),
        "n_substituted": int(n_sub),
        "n_supercell": int(n_super),
        "n_fallback": int(n_fallback),
        "bytes": out.stat().st_size,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return stats


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: generate and print the stats as JSON.

    Args:
        argv: Arguments (default ``sys.argv[1:]``).

    Returns:
        Exit code.
    """
    ap = argparse.ArgumentParser(description="Generate a synthetic MP-like crystal dataset (matbench json.gz).")
    ap.add_argument("--n", type=int, default=132752, help="number of structures (default: matbench_mp_e_form size)")
    ap.add_argument("--out", required=True, help="output .json.gz path")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--isolated-fraction", type=float, default=2e-4)
    ap.add_argument("--seeds", default=None, help="seed matbench json.gz (default: mp_eform_cgcnn_3000)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    stats = generate(
        args.n,
        args.out,
        seed=args.seed,
        isolated_fraction=args.isolated_fraction,
        seeds_path=args.seeds,
        progress=not args.no_progress,
    )
    print(json.dumps(stats, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
