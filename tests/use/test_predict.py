"""predict / load / export: a trained CGCNN predicts real structures from a file (resumable after SIGKILL, rows =
inputs - recorded skips), from Python, and from an exported model directory."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SHIPPED, kill_when, run_cli, shard_count, shipped_records, write_matbench

import colab_kit
from colab_kit.use.trained import TrainedModelError, load_trained

RUN = "mp_eform_cgcnn_3000-radius-cgcnn-hidden=32-debug"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small CGCNN trained by `run` on the shipped data (1 epoch: the weights only need to be fixed)."""
    work = tmp_path_factory.mktemp("runs")
    res = run_cli("run", "--mode", "debug", "--model", "cgcnn", "--set", "hidden=32", "--set", "epochs=1",
                  "--set", "n_samples=120", "--work-dir", str(work))
    assert res.returncode == 0, res.stderr[-3000:]
    return work / RUN


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_predict_file_rows_ids_targets_and_skips(run_dir: Path, tmp_path: Path) -> None:
    ids, rows = shipped_records(60)
    rows = [list(r) for r in rows]
    rows[7][0] = {"not": "a structure"}  # a broken record: skipped and recorded, not fatal
    rows[11][1] = None  # no label: still predicted, empty target
    src = write_matbench(tmp_path / "mixed.json.gz", ids, rows)
    out = tmp_path / "preds.csv"
    res = run_cli("predict", "--run", str(run_dir), "--data", str(src), "--out", str(out), "--work-dir", str(tmp_path / "w"))
    assert res.returncode == 0, res.stderr[-3000:]
    got = _rows(out)
    assert got[0] == ["id", "prediction", "target"]
    skipped = _rows(tmp_path / "preds.skipped.csv")
    assert skipped[0] == ["id", "reason"] and [r[0] for r in skipped[1:]] == [ids[7]]
    assert len(got) - 1 == 60 - 1  # rows = inputs - recorded skips
    assert [r[0] for r in got[1:]] == [i for k, i in enumerate(ids) if k != 7]  # source order
    by_id = {r[0]: r for r in got[1:]}
    assert by_id[ids[11]][2] == "" and float(by_id[ids[0]][2]) == pytest.approx(rows[0][1], abs=1e-6)
    assert all(np.isfinite(float(r[1])) for r in got[1:])
    # the same predictions from Python, for the same structures
    from pymatgen.core import Structure

    ok = [Structure.from_dict(r[0]) for k, r in enumerate(rows) if k != 7]
    p = colab_kit.load(run_dir, device="cpu").predict(ok)
    assert np.allclose(p, [float(r[1]) for r in got[1:]], atol=1e-6)


def test_predict_unlabelled_source_has_no_target_column(run_dir: Path, tmp_path: Path) -> None:
    ids, rows = shipped_records(20)
    src = tmp_path / "candidates.json.gz"
    with gzip.open(src, "wt") as f:
        json.dump({"index": ids, "columns": ["structure"], "data": [[r[0]] for r in rows]}, f)
    out = tmp_path / "p.csv"
    res = run_cli("predict", "--run", str(run_dir), "--data", str(src), "--out", str(out), "--work-dir", str(tmp_path / "w"))
    assert res.returncode == 0, res.stderr[-3000:]
    got = _rows(out)
    assert got[0] == ["id", "prediction"] and [r[0] for r in got[1:]] == ids


def _passes(store_root: Path) -> int:
    try:
        m = json.loads(next(store_root.glob("outputs-*/manifest.json")).read_text())
    except (StopIteration, OSError, ValueError):
        return 0
    return len(m["parts"])


def test_predict_resumes_after_sigkill_to_identical_file(run_dir: Path, tmp_path: Path) -> None:
    """SIGKILL mid-conversion, then mid-prediction; the same command then gives the uninterrupted run's file."""
    ids, rows = shipped_records(900)
    src = write_matbench(tmp_path / "first900.json.gz", ids, rows)
    common = ["predict", "--run", str(run_dir), "--data", str(src), "--set", "shard_size=90", "--workers", "1",
              "--set", "eval_batch_size=8"]
    ref = run_cli(*common, "--out", str(tmp_path / "ref.csv"), "--work-dir", str(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr[-3000:]
    work = tmp_path / "w"
    args = [*common, "--out", str(tmp_path / "p.csv"), "--work-dir", str(work)]

    def store() -> Path:
        return next((work / "predict").glob("*"), work / "none")

    assert kill_when(args, lambda: shard_count(store()) >= 3)  # mid-conversion
    assert 3 <= shard_count(store()) < 10 and not (tmp_path / "p.csv").exists()
    assert kill_when(args, lambda: _passes(store()) >= 2)  # conversion finished, prediction under way
    assert 2 <= _passes(store()) < 10 and not (tmp_path / "p.csv").exists()
    res = run_cli(*args)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "p.csv").read_bytes() == (tmp_path / "ref.csv").read_bytes()
    assert len(_rows(tmp_path / "p.csv")) - 1 == 900 - (len(_rows(tmp_path / "p.skipped.csv")) - 1)


def test_export_and_load_give_the_same_predictions(run_dir: Path, tmp_path: Path) -> None:
    res = run_cli("export", "--run", str(run_dir), "--out", str(tmp_path / "m"))
    assert res.returncode == 0, res.stderr[-3000:]
    spec = json.loads((tmp_path / "m" / "model.json").read_text())
    assert spec["model"] == "cgcnn" and spec["options"]["hidden"] == 32 and spec["graph_kind"] == "radius"
    assert spec["target"] == "e_form" and spec["unit"] == "eV/atom" and spec["graph_params"]["cutoff"] == 8.0
    torch.load(tmp_path / "m" / "weights.pt", weights_only=True)  # tensors only
    from pymatgen.core import Structure

    _, rows = shipped_records(12)
    ss = [Structure.from_dict(r[0]) for r in rows]
    a = colab_kit.load(run_dir, device="cpu").predict(ss)
    b = colab_kit.load(tmp_path / "m", device="cpu").predict(ss)
    assert np.array_equal(a, b) and np.isfinite(a).all()
    one = colab_kit.load(run_dir, device="cpu").predict(ss[3])  # one Structure, not its sites
    assert one.shape == (1,) and abs(float(one[0]) - float(a[3])) < 1e-5  # alone, not in a batch of 12: rounding
    # ASE Atoms are accepted as they are
    from pymatgen.io.ase import AseAtomsAdaptor

    c = colab_kit.load(tmp_path / "m", device="cpu").predict([AseAtomsAdaptor.get_atoms(s) for s in ss])
    assert np.allclose(a, c, atol=1e-6)


def test_bad_inputs_give_one_line_errors(run_dir: Path, tmp_path: Path) -> None:
    from pymatgen.core import Lattice, Structure

    lone = Structure(Lattice.cubic(30.0), ["Na"], [[0, 0, 0]])  # no neighbour within 8 Å: no radius graph
    p = colab_kit.load(run_dir, device="cpu")
    with pytest.raises(colab_kit.use.predictor.PredictionError, match=r"structure 0 \(Na\).*on_bad='nan'"):
        p.predict([lone])
    assert np.isnan(p.predict([lone], on_bad="nan")).all()
    with pytest.raises(TrainedModelError, match="holds no model.json, plan.json or checkpoint"):
        load_trained(tmp_path)
    res = run_cli("predict", "--run", str(tmp_path), "--data", str(SHIPPED), "--out", str(tmp_path / "x.csv"))
    assert res.returncode == 1 and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    res = run_cli("predict", "--run", str(run_dir), "--data", str(SHIPPED), "--out", str(tmp_path / "x.csv"),
                  "--set", "cutoff=5")
    assert res.returncode == 1 and "cutoff cannot be set when predicting" in res.stderr
