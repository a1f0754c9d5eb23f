"""DFT frames with per-atom labels, read from every format into the store's units, on the real frames in
../shared/data: mlearn (extxyz, ASE units), CHGNet's VASP runs (OUTCAR), and the same frames rewritten as CHGNet's
MPtrj JSON (VASP kBar, compressive positive) and as an ASE database; bad labels are skipped with their reasons."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import numpy as np
import pytest

from colab_kit.graphs import get_converter
from colab_kit.sources import SourceError, open_frames, parse_frame
from colab_kit.store import GraphStore, build_store

GPA = 160.21766208  # GPa per eV/Å³


def _mlearn(shared_data: Path, n: int) -> list:
    import ase.io

    text = gzip.open(shared_data / "mlearn_unary_1566" / "mlearn_test.extxyz.gz", "rt").read()
    frames = ase.io.read(io.StringIO(text), ":", format="extxyz")
    return sorted(frames, key=len)[:n]  # the smallest cells: quick to convert


def _write_extxyz(frames: list, path: Path) -> Path:
    import ase.io

    ase.io.write(path, frames, format="extxyz")
    return path


def _mptrj(frames: list, path: Path, edit: dict | None = None) -> Path:
    """The frames in CHGNet's MPtrj layout: total energy, forces, stress in VASP kBar (compressive positive)."""
    from pymatgen.io.ase import AseAtomsAdaptor

    data: dict = {}
    for i, a in enumerate(frames):
        frame = {"structure": AseAtomsAdaptor.get_structure(a.copy()).as_dict(),
                 "corrected_total_energy": a.get_potential_energy(), "force": a.get_forces().tolist(),
                 "stress": (-10 * GPA * a.get_stress(voigt=False)).tolist(), "magmom": None}
        frame.update((edit or {}).get(i, {}))
        frame = {k: v for k, v in frame.items() if v is not ...}
        data.setdefault(f"mp-{i // 2}", {})[f"mp-{i // 2}-0-{i % 2}"] = frame
    from monty.json import MontyEncoder

    path.write_text(json.dumps(data, cls=MontyEncoder))
    return path


def _store(source, out: Path):
    build_store(source, out, get_converter("chgnet"), workers=1, shard_size=4, progress=False, on_bad_structure="skip")
    return GraphStore(out)


def test_extxyz_frames_are_stored_in_ev_per_atom_ev_per_a_and_gpa_tensile_positive(shared_data: Path,
                                                                                     tmp_path: Path) -> None:
    frames = _mlearn(shared_data, 6)
    src = open_frames(str(_write_extxyz(frames, tmp_path / "f.extxyz")))
    assert src.spec.targets == "efs"  # stress in the first frame, no magnetic moments
    store = _store(src, tmp_path / "store")
    assert store.potential["stress_unit"] == "eV/A3" and store.potential["targets"] == "efs"
    for i, a in enumerate(frames):
        graph, (energy, forces, stress, magmom) = store.frame(i)
        assert energy == pytest.approx(a.get_potential_energy() / len(a), rel=1e-12)
        np.testing.assert_allclose(forces, a.get_forces(), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(stress, GPA * a.get_stress(voigt=False), rtol=1e-5, atol=1e-5)
        assert np.isnan(magmom).all() and len(magmom) == len(a)
        assert len(graph.atomic_number) == len(a)


def test_mptrj_json_in_kbar_gives_the_same_labels_as_the_extxyz(shared_data: Path, tmp_path: Path) -> None:
    frames = _mlearn(shared_data, 6)
    a = _store(open_frames(str(_write_extxyz(frames, tmp_path / "f.extxyz"))), tmp_path / "a")
    src = open_frames(str(_mptrj(frames, tmp_path / "mptrj.json")))
    assert src.format == "mptrj" and src.spec.stress_unit == "kbar" and src.spec.stress_sign == "compressive"
    b = _store(src, tmp_path / "b")
    assert len(a) == len(b) == 6
    for i in range(6):
        la, lb = a.frame(i)[1], b.frame(i)[1]
        assert la[0] == pytest.approx(lb[0], rel=1e-12)
        for x, y in zip(la[1:3], lb[1:3]):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)


def test_vasp_runs_are_read_from_outcar_with_the_right_energies_and_the_bad_first_step_skipped(
        shared_data: Path, tmp_path: Path) -> None:
    import ase.io

    root = shared_data / "chgnet_vasp_outputs_50"
    src = open_frames(str(root / "original"))
    assert src.format == "vasp"
    store = _store(src, tmp_path / "vasp")
    reasons = dict(store.failures())
    assert list(reasons) == ["parse-vasp-no-magmoms:1"] and "forces up to 1.666e+04 eV/Å" in reasons[
        "parse-vasp-no-magmoms:1"]
    assert len(store) == 49
    # energies are OUTCAR's E(sigma->0), as the verified extxyz has them (vasprun's e_0_energy of VASP 5.4.4 is wrong)
    by_step = {a.info["config_type"] + ":" + str(a.info["ionic_step"]): a
               for a in ase.io.read(root / "chgnet_vasp_outputs.extxyz", ":")}
    ids = store.ids()
    for i, gid in enumerate(ids):
        ref = by_step.get(gid)
        if ref is None:
            continue
        _, (energy, forces, stress, magmom) = store.frame(i)
        assert energy == pytest.approx(ref.get_potential_energy() / len(ref), abs=1e-6), gid
        np.testing.assert_allclose(stress, GPA * ref.get_stress(voigt=False), atol=1e-3)
    licl = ids.index("parse-vasp-with-magmoms:0")
    assert np.isfinite(store.frame(licl)[1][3]).all()  # OUTCAR's magnetic moments (all ~0 for LiCl)


def test_an_ase_database_reads_like_its_frames(shared_data: Path, tmp_path: Path) -> None:
    import ase.db

    frames = _mlearn(shared_data, 3)
    with ase.db.connect(tmp_path / "frames.db") as db:
        for a in frames:
            db.write(a)
    store = _store(open_frames(str(tmp_path / "frames.db")), tmp_path / "db")
    assert len(store) == 3
    for i, a in enumerate(frames):
        np.testing.assert_allclose(store.frame(i)[1][1], a.get_forces(), atol=1e-6)


@pytest.mark.extras  # needs ase-db-backends (.ci/run installs it with the model extras)
def test_a_fairchem_aselmdb_database_reads_like_its_frames(shared_data: Path, tmp_path: Path) -> None:
    """fairchem's datasets are LMDB ASE databases (``.aselmdb``); ASE reads them through ase-db-backends."""
    pytest.importorskip("ase_db_backends.aselmdb", reason="needs pip install ase-db-backends")
    import ase.db

    frames = _mlearn(shared_data, 3)
    with ase.db.connect(tmp_path / "frames.aselmdb", type="aselmdb") as db:
        for a in frames:
            db.write(a)
    source = open_frames(str(tmp_path / "frames.aselmdb"))
    assert source.format == "aselmdb" and source.spec.targets == "efs"
    store = _store(source, tmp_path / "lmdb")
    assert len(store) == 3 and store.potential["targets"] == "efs"
    for i, a in enumerate(frames):
        structure, (energy, forces, stress, _) = store.frame(i)
        assert energy == pytest.approx(a.get_potential_energy() / len(a), abs=1e-6)
        np.testing.assert_allclose(forces, a.get_forces(), atol=1e-6)
        np.testing.assert_allclose(stress, GPA * a.get_stress(voigt=False), atol=1e-4)


def test_without_ase_db_backends_an_aselmdb_is_refused_in_one_line(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "ase_db_backends.aselmdb", None)  # what an environment without it imports
    (tmp_path / "frames.aselmdb").write_bytes(b"")
    with pytest.raises(SourceError, match=r"needs the package ase-db-backends .*: pip install ase-db-backends$"):
        open_frames(str(tmp_path / "frames.aselmdb"))


def test_bad_labels_are_skipped_and_recorded_with_their_reasons(shared_data: Path, tmp_path: Path) -> None:
    frames = _mlearn(shared_data, 8)
    n0 = len(frames[0])
    nan_forces = np.zeros((len(frames[1]), 3)).tolist()
    nan_forces[0][1] = float("nan")
    edits = {1: {"force": nan_forces},
             2: {"force": np.zeros((len(frames[2]) - 1, 3)).tolist()},
             3: {"stress": ...},  # absent
             4: {"stress": (np.eye(3) * 2e6).tolist()},  # kBar x 1e6: 2e5 GPa
             5: {"corrected_total_energy": None}}
    store = _store(open_frames(str(_mptrj(frames, tmp_path / "bad.json", edits))), tmp_path / "bad")
    reasons = {fid.rsplit("-", 3)[1] + fid[-1]: r for fid, r in store.failures()}
    assert len(store) == 3 and len(reasons) == 5, reasons
    text = " | ".join(r for _, r in sorted(store.failures()))
    assert "non-finite value (atom 0" in text
    assert f"have shape ({len(frames[2]) - 1}, 3), expected ({len(frames[2])}, 3)" in text
    assert "stress ('stress') is missing and stresses are trained" in text and "potential_targets=ef" in text
    assert "stress of 2e+05 GPa (read as kbar) cannot be right" in text
    assert "energy ('corrected_total_energy') is missing" in text
    assert n0 == len(frames[0])


def test_a_unit_setting_is_checked_and_recorded_in_the_store(shared_data: Path, tmp_path: Path) -> None:
    path = _write_extxyz(_mlearn(shared_data, 2), tmp_path / "f.extxyz")
    with pytest.raises(SourceError, match="stress_unit='bar' is not one of"):
        open_frames(str(path), settings={"stress_unit": "bar"})
    src = open_frames(str(path), settings={"potential_targets": "ef", "stress_unit": "GPa"})
    item = next(iter(src))
    _, labels = parse_frame(item, src.spec)
    assert np.abs(labels.stress).max() < 1  # eV/Å³ values read as GPa: the user's setting, kept as set
    store = _store(src, tmp_path / "s")
    assert store.potential["stress_unit"] == "GPa" and store.potential["targets"] == "ef"


def test_labels_that_are_not_trained_never_cost_a_frame(shared_data: Path, tmp_path: Path) -> None:
    frames = _mlearn(shared_data, 3)
    edits = {1: {"stress": (np.eye(3) * 2e6).tolist(), "magmom": [0.5]}}  # impossible stress, moments of one atom
    path = _mptrj(frames, tmp_path / "f.json", edits)
    store = _store(open_frames(str(path), settings={"potential_targets": "ef"}), tmp_path / "ef")
    assert len(store) == 3 and not store.failures()
    _, (_, _, stress, magmom) = store.frame(1)
    assert np.isnan(stress).all() and np.isnan(magmom).all()
    trained = _store(open_frames(str(path), settings={"potential_targets": "efsm"}), tmp_path / "efsm")
    assert len(trained) == 2 and "cannot be right" in trained.failures()[0][1]


def test_a_file_without_frames_is_refused_in_one_line(shipped_data: Path) -> None:
    with pytest.raises(SourceError, match=r"not CHGNet's MPtrj layout .*its first key is 'index'.*pass --data an extxyz"):
        open_frames(str(shipped_data))
