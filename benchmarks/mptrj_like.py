"""Generate a large synthetic dataset in CHGNet's MPtrj JSON layout for memory-scale potential-training tests.

The output imitates ``MPtrj_2022.9_full.json`` (CHGNet's training set: relaxation trajectories of Materials
Project materials, energy / force / stress / magmom labels per frame) without network access or DFT. Structures
come from :mod:`mp_like` (``benchmarks/mp_like.py``): material ``k`` is ``MPLikeGenerator.make_item(k - 1)``, an
MP-like crystal (mean ~30 sites, tail to 300) derived from the 3,000 real Materials Project seed structures.

Each material is a short relaxation trajectory of 1..12 frames (truncated geometric, mean ~4.6; the last
material is cut so that the file holds exactly ``--n`` frames). The last frame is the relaxed ``mp_like``
structure; earlier frames add a displacement field (per-site, ~0.04 A rms) and a lattice strain (within
+-1 %) scaled by ``(K-1-k)/(K-1)``, so every frame is a small perturbation of the previous one and the
minimum interatomic distance stays > 0.7 A.

Labels are synthetic (cheap, deterministic by ``--seed``; for benchmarks only), but physically shaped:

* energy: a per-element reference energy (-9..-3 eV/atom, a fixed table) averaged over the composition, plus
  the seed's formation energy, plus a relaxation excess that decays harmonically to 0 along the trajectory,
  plus N(0, 3 meV/atom) noise. ``corrected_total_energy`` adds MP2020-like anion / U corrections (approximate
  values), and ``ef_per_atom`` is the corrected energy per atom minus the composition's reference energy;
* forces ~N(0, 0.5) eV/A per component, with the mean over atoms removed (zero net force per frame);
* stress: symmetric 3x3, each independent component ~N(0, 20) kBar, VASP sign (compressive positive: CHGNet
  multiplies by -0.1 to get GPa);
* magmom: ~40 % of materials carry per-atom moments (|N(2, 1.5)| muB on transition metals, varied slightly per
  frame, 0 on every other element), the rest ``null``;
* bandgap: 0 for ~45 % of materials, otherwise Gamma(2, 1) eV (clipped to 8), small per-frame noise.

Layout (keys and units, one material shown)::

    {"mp-000001": {
        "mp-000001-0-0": {"structure": <pymatgen Structure.as_dict()>,
                          "uncorrected_total_energy": eV, "corrected_total_energy": eV,
                          "energy_per_atom": eV/atom (uncorrected; what CHGNet trains on),
                          "ef_per_atom": eV/atom, "e_per_atom_relaxed": eV/atom (corrected, relaxed),
                          "ef_per_atom_relaxed": eV/atom, "force": [[fx, fy, fz], ...] eV/A,
                          "stress": [[sxx, sxy, sxz], [...], [...]] kBar, "magmom": [muB, ...] or null,
                          "bandgap": eV, "mp_id": "mp-000001"},
        "mp-000001-0-1": {...}, ...},
     "mp-000002": {...}, ...}

The file holds only materials (no metadata key: CHGNet's ``StructureJsonData`` takes every top-level key as a
material id). Generation metadata and statistics go to a sidecar ``<base>.bad.json`` next to the output
(``<base>`` is ``--out`` without ``.json`` / ``.json.gz``), always written.

``--bad FRACTION`` injects bad labels into that fraction of frames (at least one when > 0), in four kinds used
equally often and recorded frame by frame in the sidecar (``"frames": [{"mp_id", "frame_id", "kind",
"detail"}]``):

* ``force_nan``: one force component is NaN (written as the bare token ``NaN``, which ``json.load`` accepts);
* ``force_shape``: the force array has N-1 rows instead of N;
* ``stress_missing``: the ``stress`` key is absent;
* ``stress_x1e6``: stress multiplied by 1e6 (max |component| > 1e5 kBar = 1e4 GPa, physically impossible).

Writing is streamed material by material (gzip when ``--out`` ends with ``.gz``; mtime 0, so the same
arguments give identical bytes); memory stays flat in ``--n``.

Usage::

    python benchmarks/mptrj_like.py --n 400000 --out /tmp/mptrj_like_400k.json.gz [--seed 0] [--bad 0.0]
    python benchmarks/mptrj_like.py --n 50 --out /tmp/mptrj_like_50.json --bad 0.1   # + /tmp/mptrj_like_50.bad.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
from mp_like import (  # noqa: E402
    MIN_DISTANCE,
    Buffered,
    MPLikeGenerator,
    load_seeds,
    min_distance_ok,
    structure_dict,
)

GENERATOR = "benchmarks/mptrj_like.py"

MAX_FRAMES = 12
FRAMES_P = 0.15  # truncated geometric on 1..MAX_FRAMES: P(k) ~ (1 - p)^(k - 1), mean ~4.6
TRAJ_DISPLACEMENT = 0.04  # A, rms per Cartesian component of the first frame's displacement from the relaxed one
TRAJ_STRAIN = 0.01  # first frame's lattice strain, each component within +-1 %
TRAJ_ATTEMPTS = 3  # halve the displacement this many times when a frame comes too close, then none

FORCE_SIGMA = 0.5  # eV/A
STRESS_SIGMA = 20.0  # kBar
ENERGY_NOISE = 0.003  # eV/atom per frame
MAGNETIC_PROB = 0.40
METAL_PROB = 0.45  # materials with bandgap 0
E_REF_RANGE = (-9.0, -3.0)  # eV/atom
_E_REF_TABLE_SEED = 20220901  # the element reference table is fixed (independent of --seed)

BAD_KINDS = ("force_nan", "force_shape", "stress_missing", "stress_x1e6")
BAD_STRESS_FACTOR = 1e6
BAD_KIND_DOC = {
    "force_nan": "one force component set to NaN (written as the JSON token NaN)",
    "force_shape": "force has N-1 rows instead of N (last row dropped)",
    "stress_missing": "the 'stress' key is absent",
    "stress_x1e6": "stress multiplied by 1e6: max |component| > 1e5 kBar = 1e4 GPa",
}

# MP2020-like energy corrections (eV per atom of the element; approximate values, synthetic use only).
# Anion corrections apply to those elements in any non-elemental structure; U corrections to those transition
# metals when O or F is present.
ANION_CORRECTION = {
    "O": -0.687, "F": -0.462, "Cl": -0.614, "Br": -0.534, "I": -0.379, "N": -0.361,
    "S": -0.503, "Se": -0.472, "Te": -0.422, "H": -0.179, "Sb": -0.192,
}  # fmt: skip
U_CORRECTION = {
    "Co": -1.699, "Cr": -1.999, "Fe": -2.256, "Mn": -1.668, "Mo": -3.202, "Ni": -2.541, "V": -1.700, "W": -4.660,
}  # fmt: skip


# --------------------------------------------------------------------------------------------------- labels


class MPtrjLikeGenerator:
    """Deterministic per-material generator; material ``k`` depends only on (seed, k) and, for the last one,
    on how many frames are left.

    Args:
        seed: Random seed (non-negative int).
        seeds_path: Seed matbench json.gz for :func:`mp_like.load_seeds` (default: mp_eform_cgcnn_3000).
    """

    def __init__(self, seed: int = 0, seeds_path: str | None = None) -> None:
        from pymatgen.core import Element

        self.seed = int(seed)
        self.structures = MPLikeGenerator(load_seeds(seeds_path), seed=seed)
        table = np.random.default_rng(_E_REF_TABLE_SEED).uniform(*E_REF_RANGE, size=120)
        self.e_ref: dict[str, float] = {}
        self.is_tm: dict[str, bool] = {}
        for sym in self.structures.radius:  # every symbol a structure can contain (seeds + substitution families)
            el = Element(sym)
            self.e_ref[sym] = float(table[el.Z])
            self.is_tm[sym] = bool(el.is_transition_metal)
        self.frame_probs = (1.0 - FRAMES_P) ** np.arange(MAX_FRAMES)
        self.frame_probs /= self.frame_probs.sum()

    def rng(self, k: int) -> np.random.Generator:
        """Random generator of the labels and trajectory of material ``k``."""
        return np.random.default_rng([self.seed, 10, k])

    def n_frames(self, rng: np.random.Generator) -> int:
        """Draw a trajectory length (1..MAX_FRAMES)."""
        return 1 + int(rng.choice(MAX_FRAMES, p=self.frame_probs))

    @staticmethod
    def correction_per_atom(species: list[str]) -> float:
        """MP2020-like correction (eV/atom, <= 0) of a structure with these site species."""
        present = set(species)
        if len(present) < 2:
            return 0.0
        total = sum(ANION_CORRECTION.get(el, 0.0) for el in species)
        if "O" in present or "F" in present:
            total += sum(U_CORRECTION.get(el, 0.0) for el in species)
        return total / len(species)

    def _trajectory(
        self, lattice: np.ndarray, frac: np.ndarray, n_frames: int, rng: np.random.Generator
    ) -> list[tuple[np.ndarray, np.ndarray, float]]:
        """Frames (lattice, frac, amplitude) ending at the relaxed geometry; amplitude 1 -> 0."""
        if n_frames == 1:
            return [(lattice, frac, 0.0)]
        amps = (n_frames - 1 - np.arange(n_frames)) / (n_frames - 1)
        disp = rng.normal(0.0, TRAJ_DISPLACEMENT, size=frac.shape)
        disp -= disp.mean(axis=0)  # no net translation
        eps = rng.uniform(-TRAJ_STRAIN, TRAJ_STRAIN, size=(3, 3))
        eps = np.triu(eps) + np.triu(eps, 1).T  # symmetric
        scale = 1.0
        for _attempt in range(TRAJ_ATTEMPTS + 1):
            frames = []
            for a in amps:
                lat = lattice @ (np.eye(3) + (a * scale) * eps)
                fr = np.mod(frac + (a * scale) * disp @ np.linalg.inv(lat), 1.0)
                frames.append((lat, fr, float(a)))
            if all(a == 0.0 or min_distance_ok(lat, fr, MIN_DISTANCE) for lat, fr, a in frames):
                return frames
            scale *= 0.5
        return [(lattice, frac, float(a)) for a in amps]  # fallback: the relaxed geometry throughout

    def material(self, k: int, max_frames: int | None = None) -> tuple[list[str], list[dict[str, Any]]]:
        """Build material ``k`` (1-based) as (frame ids, frame dicts) in MPtrj layout.

        Args:
            k: Material number (``mp-{k:06d}``).
            max_frames: Cap on the trajectory length (the frames left to write).

        Returns:
            The frame ids and their label dicts (clean: no bad labels injected).
        """
        item = self.structures.make_item(k - 1)
        rng = self.rng(k)
        n_frames = self.n_frames(rng)
        if max_frames is not None:
            n_frames = max(1, min(n_frames, max_frames))
        species, n = item.species, len(item.species)
        mp_id = material_id(k)

        e_ref = float(np.mean([self.e_ref[el] for el in species]))
        e_form = float(item.e_form)
        corr = self.correction_per_atom(species)
        e_relaxed = e_ref + e_form  # corrected energy per atom at the relaxed geometry
        excess0 = 0.02 + abs(rng.normal(0.0, 0.05))  # eV/atom above the relaxed energy at the first frame

        magnetic = rng.random() < MAGNETIC_PROB
        tm = np.fromiter((self.is_tm[el] for el in species), dtype=bool, count=n)
        base_mag = np.where(tm, np.abs(rng.normal(2.0, 1.5, size=n)), 0.0)
        gap = 0.0 if rng.random() < METAL_PROB else float(min(rng.gamma(2.0, 1.0), 8.0))

        ids, frames = [], []
        for f, (lat, fr, amp) in enumerate(self._trajectory(item.lattice, item.frac, n_frames, rng)):
            epa_corr = e_relaxed + excess0 * amp**2 + rng.normal(0.0, ENERGY_NOISE)
            epa = epa_corr - corr
            force = rng.normal(0.0, FORCE_SIGMA, size=(n, 3))
            force -= force.mean(axis=0)  # zero net force
            s = rng.normal(0.0, STRESS_SIGMA, size=(3, 3))
            stress = np.triu(s) + np.triu(s, 1).T
            if magnetic:
                magmom: list[float] | None = np.round(
                    np.where(tm, np.abs(base_mag + rng.normal(0.0, 0.05, size=n)), 0.0), 3
                ).tolist()
            else:
                magmom = None
            bandgap = max(0.0, gap + rng.normal(0.0, 0.01)) if gap > 0 else 0.0
            ids.append(f"{mp_id}-0-{f}")
            frames.append(
                {
                    "structure": structure_dict(lat, species, fr),
                    "uncorrected_total_energy": round(epa * n, 6),
                    "corrected_total_energy": round(epa_corr * n, 6),
                    "energy_per_atom": round(epa, 6),
                    "ef_per_atom": round(epa_corr - e_ref, 6),
                    "e_per_atom_relaxed": round(e_relaxed, 6),
                    "ef_per_atom_relaxed": round(e_form, 6),
                    "force": np.round(force, 6).tolist(),
                    "stress": np.round(stress, 6).tolist(),
                    "magmom": magmom,
                    "bandgap": round(bandgap, 4),
                    "mp_id": mp_id,
                }
            )
        return ids, frames


def inject(frame: dict[str, Any], kind: str, rng: np.random.Generator) -> dict[str, Any]:
    """Corrupt ``frame`` in place with one bad-label kind; return what was done (the sidecar's ``detail``).

    Args:
        frame: One frame dict from :meth:`MPtrjLikeGenerator.material`.
        kind: One of ``BAD_KINDS``.
        rng: Random generator (which atom / component).

    Returns:
        A JSON-able description of the injection.
    """
    force = frame["force"]
    if kind == "force_nan":
        atom, comp = int(rng.integers(len(force))), int(rng.integers(3))
        force[atom][comp] = float("nan")
        return {"atom": atom, "component": comp}
    if kind == "force_shape":
        n = len(force)
        del force[-1]
        return {"n_atoms": n, "force_rows": len(force)}
    if kind == "stress_missing":
        del frame["stress"]
        return {}
    if kind == "stress_x1e6":
        s = np.asarray(frame["stress"])
        if np.abs(s).max() < 1.0:  # keep the guarantee |stress| > 1e4 GPa even for a tiny draw
            s[0, 0] = STRESS_SIGMA
        s = s * BAD_STRESS_FACTOR
        frame["stress"] = s.tolist()
        return {"factor": BAD_STRESS_FACTOR, "max_abs_kbar": float(np.abs(s).max())}
    raise ValueError(f"unknown bad kind {kind!r}")


def choose_bad(n: int, seed: int, fraction: float) -> np.ndarray:
    """Per-frame bad-kind codes: 0 = clean, ``1 + BAD_KINDS.index(kind)`` otherwise.

    Args:
        n: Number of frames.
        seed: Random seed.
        fraction: Fraction of frames to corrupt (at least one when > 0); kinds are used equally often.

    Returns:
        (n,) int8 array.
    """
    codes = np.zeros(n, dtype=np.int8)
    if n <= 0 or fraction <= 0:
        return codes
    k = min(n, max(1, round(n * fraction)))
    rng = np.random.default_rng([int(seed), 1, n])
    picked = rng.choice(n, size=k, replace=False)
    codes[picked] = 1 + rng.permutation(np.arange(k) % len(BAD_KINDS))
    return codes


# --------------------------------------------------------------------------------------------------- output



_ID_WIDTH = 6


def material_id(k: int) -> str:
    """Return the id of material ``k`` (``mp-000042``)."""
    return f"mp-{k:0{_ID_WIDTH}d}"


def sidecar_path(out_path: str | os.PathLike[str]) -> Path:
    """Sidecar of an output file: ``x.json.gz`` / ``x.json`` -> ``x.bad.json``."""
    out = Path(out_path)
    name = out.name
    for suffix in (".json.gz", ".json", ".gz"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return out.with_name(name + ".bad.json")


def generate(
    n: int,
    out_path: str,
    seed: int = 0,
    bad: float = 0.0,
    *,
    seeds_path: str | None = None,
    progress: bool = False,
    compresslevel: int = 6,
) -> dict[str, Any]:
    """Write ``n`` frames in MPtrj layout, streaming material by material (memory stays flat in ``n``).

    Args:
        n: Number of frames (exact).
        out_path: Output path; gzip when it ends with ``.gz`` (written to ``<out_path>.tmp``, then renamed).
        seed: Random seed (non-negative int); output is deterministic for a given (n, seed, bad).
        bad: Fraction of frames with an injected bad label (recorded in the sidecar).
        seeds_path: Seed matbench json.gz; default: the 3,000-structure MP formation-energy subset.
        progress: Show a tqdm progress bar on stderr.
        compresslevel: gzip level.

    Returns:
        Stats (also stored in the sidecar): frames, materials, sites per frame, frames per material, magnetic
        materials, bad counts, bytes, seconds, frames_per_s, paths.
    """
    from tqdm import tqdm

    if n < 0:
        raise ValueError("n must be >= 0")
    if seed < 0:
        raise ValueError("seed must be >= 0")
    if not 0.0 <= bad <= 1.0:
        raise ValueError("bad must be in [0, 1]")
    t0 = time.perf_counter()
    gen = MPtrjLikeGenerator(seed=seed, seeds_path=seeds_path)
    codes = choose_bad(n, seed, bad)
    bad_rng = np.random.default_rng([int(seed), 2, n])

    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    side = sidecar_path(out)
    tmp, side_tmp = out.with_name(out.name + ".tmp"), side.with_name(side.name + ".tmp")
    sites = np.zeros(n, dtype=np.int32)
    traj_lengths: list[int] = []
    n_magnetic = 0
    bad_counts = dict.fromkeys(BAD_KINDS, 0)
    meta = {
        "generator": GENERATOR,
        "seed": int(seed),
        "n": int(n),
        "bad_fraction": float(bad),
        "data": str(out),
        "bad_kinds": BAD_KIND_DOC,
        "labels": "SYNTHETIC, for benchmarks only; structures from benchmarks/mp_like.py (Materials Project "
        "seeds, CC BY 4.0, perturbed)",
    }
    gzipped = out.name.endswith(".gz")
    with open(tmp, "wb") as raw, open(side_tmp, "w", encoding="utf-8") as sfh:
        gz = (
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=compresslevel)
            if gzipped
            else None
        )
        try:
            w = Buffered(gz if gz is not None else raw)
            sfh.write(json.dumps(meta)[:-1] + ', "frames": [')
            n_side = 0
            w.write("{")
            done, k = 0, 0
            bar = tqdm(total=n, disable=not progress, mininterval=1.0, unit="frame", desc="mptrj_like")
            while done < n:
                k += 1
                ids, frames = gen.material(k, max_frames=n - done)
                for fid, frame in zip(ids, frames, strict=True):
                    code = int(codes[done])
                    sites[done] = len(frame["structure"]["sites"])
                    if code:
                        kind = BAD_KINDS[code - 1]
                        detail = inject(frame, kind, bad_rng)
                        bad_counts[kind] += 1
                        rec = {"mp_id": frame["mp_id"], "frame_id": fid, "kind": kind, "detail": detail}
                        sfh.write((", " if n_side else "") + json.dumps(rec))
                        n_side += 1
                    done += 1
                n_magnetic += frames[0]["magmom"] is not None
                traj_lengths.append(len(frames))
                material = dict(zip(ids, frames, strict=True))
                w.write(("," if k > 1 else "") + json.dumps(material_id(k)) + ":")
                w.write(json.dumps(material, separators=(",", ":")))
                bar.update(len(frames))
            bar.close()
            w.write("}")
            w.flush()
        finally:
            if gz is not None:
                gz.close()
        seconds = time.perf_counter() - t0
        tl = np.asarray(traj_lengths, dtype=np.int32)
        stats: dict[str, Any] = {
            "path": str(out),
            "sidecar": str(side),
            "seed": int(seed),
            "frames": int(n),
            "materials": int(len(tl)),
            "mean_sites": round(float(sites.mean()), 3) if n else 0.0,
            "median_sites": float(np.median(sites)) if n else 0.0,
            "max_sites": int(sites.max()) if n else 0,
            "atoms_total": int(sites.sum()),
            "mean_frames_per_material": round(float(tl.mean()), 3) if len(tl) else 0.0,
            "max_frames_per_material": int(tl.max()) if len(tl) else 0,
            "magnetic_materials": int(n_magnetic),
            "magnetic_fraction": round(n_magnetic / len(tl), 4) if len(tl) else 0.0,
            "bad_frames": int(sum(bad_counts.values())),
            "bad_counts": bad_counts,
            "bytes": raw.tell(),
            "seconds": round(seconds, 2),
            "frames_per_s": round(n / seconds, 1) if seconds > 0 else 0.0,
        }
        sfh.write('], "stats": ' + json.dumps(stats) + "}\n")
    os.replace(tmp, out)
    os.replace(side_tmp, side)
    return stats


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: generate and print the stats as JSON.

    Args:
        argv: Arguments (default ``sys.argv[1:]``).

    Returns:
        Exit code.
    """
    ap = argparse.ArgumentParser(description="Generate a synthetic dataset in CHGNet's MPtrj JSON layout.")
    ap.add_argument("--n", type=int, required=True, help="number of frames (exact)")
    ap.add_argument("--out", required=True, help="output .json or .json.gz path")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bad", type=float, default=0.0, help="fraction of frames with an injected bad label")
    ap.add_argument("--seeds", default=None, help="seed matbench json.gz (default: mp_eform_cgcnn_3000)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    stats = generate(
        args.n, args.out, seed=args.seed, bad=args.bad, seeds_path=args.seeds, progress=not args.no_progress
    )
    print(json.dumps(stats, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
