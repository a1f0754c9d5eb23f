"""report + units: target units for every real dataset, score lines, plots a scientist can read, the report files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from colab_kit.graphs import get_converter
from colab_kit.plan.machine import detect
from colab_kit.plan.planner import make_plan
from colab_kit.run.report import (
    format_scores,
    format_timing,
    loss_curve_figure,
    mean_predictor_mae,
    parity_figure,
    store_target_name,
    write_report,
)
from colab_kit.run_folder import RunFolder
from colab_kit.sources import open_source
from colab_kit.store.build import build_store
from colab_kit.store.format import GraphStore
from colab_kit.training import Budget, TrainResult
from colab_kit.util.units import target_label, target_unit

# Every labelled source in shared/data: (path inside it, unit, label). The name each reader records for
# the label comes from opening the real source, so a reader that renames a column breaks this test.
SHARED_SOURCES = [
    ("mp_eform_cgcnn_3000/mp_eform_cgcnn_3000_matbench.json.gz", "eV/atom", "formation energy (eV/atom)"),
    ("mp20_subset_1355/mp20_subset_1355_matbench.json.gz", "eV/atom", "formation energy (eV/atom)"),
    ("matsciml_devsets/mp_devset_200.json.gz", "eV/atom", "formation energy (eV/atom)"),
    ("matsciml_devsets/oqmd_devset_200.json.gz", "eV/atom", "formation energy (eV/atom)"),
    ("matsciml_devsets/alexandria_devset_98.json.gz", "eV/atom", "formation energy (eV/atom)"),
    ("matsciml_devsets/carolina_devset_100.json.gz", "eV/atom", "formation energy (eV/atom)"),
    ("matbench_phonons_1265/matbench_phonons.json.gz", "cm⁻¹", "last phdos peak (cm⁻¹)"),
    ("alignn_jarvis_bandgap_50/jarvis_format_derived.json", "eV", "band gap (eV)"),
    ("alignn_jarvis_bandgap_50", "eV", "band gap (eV)"),  # POSCAR dir + id_prop.csv: column "target"
]

FIXTURE_SOURCES = [
    ("mp_eform_cgcnn_3000_sample.json.gz", "eV/atom", "formation energy (eV/atom)"),
    ("mp20_subset_sample.json.gz", "eV/atom", "formation energy (eV/atom)"),
    ("matsciml_devsets_sample.json.gz", "eV/atom", "formation energy (eV/atom)"),
    ("matbench_phonons_sample.json.gz", "cm⁻¹", "last phdos peak (cm⁻¹)"),
    ("jarvis_sample.json", "eV", "band gap (eV)"),
    # id_prop.csv folders whose name says nothing: the label is "target", shown without a unit.
    ("cif_dir", "", "target"),
    ("poscar_dir", "", "target"),
]

PLAN = make_plan(detect(), "debug", model="cgcnn", device="cpu", amp="off", epochs=3)


def _source_label(path: Path) -> tuple[str, str]:
    name = open_source(path).target_name
    return target_unit(name, str(path)), target_label(name, str(path))


@pytest.mark.parametrize(("rel", "unit", "label"), SHARED_SOURCES)
def test_unit_of_every_shared_dataset(shared_data: Path, rel: str, unit: str, label: str) -> None:
    assert _source_label(shared_data / rel) == (unit, label)


def test_shared_dataset_list_is_complete(shared_data: Path) -> None:
    listed = {rel for rel, _, _ in SHARED_SOURCES}
    found = {str(p.relative_to(shared_data)) for p in shared_data.glob("*/*.json*")}
    found |= {str(p.parent.relative_to(shared_data)) for p in shared_data.glob("*/id_prop.csv")
              if any(p.parent.glob("*.cif")) or any(p.parent.glob("POSCAR*"))}
    assert found <= listed, f"add these shared datasets to SHARED_SOURCES: {sorted(found - listed)}"


def test_extracted_cgcnn_cif_folder_is_formation_energy(shared_data: Path, tmp_path: Path) -> None:
    # cifs.tar.gz unpacks to mp_eform_cgcnn_3000/ with an id_prop.csv: the folder's name carries the meaning.
    folder = tmp_path / "mp_eform_cgcnn_3000"
    assert target_label("target", str(folder)) == "formation energy (eV/atom)"
    assert target_label("target", str(folder) + "/") == "formation energy (eV/atom)"


@pytest.mark.parametrize(("rel", "unit", "label"), FIXTURE_SOURCES)
def test_unit_of_vendored_fixtures(fixture_data: Path, rel: str, unit: str, label: str) -> None:
    assert _source_label(fixture_data / rel) == (unit, label)


@pytest.mark.parametrize(("target", "data", "unit", "label"), [
    ("e_form", None, "eV/atom", "formation energy (eV/atom)"),
    ("formation_energy_per_atom", None, "eV/atom", "formation energy (eV/atom)"),
    ("formation energy", None, "eV/atom", "formation energy (eV/atom)"),
    ("band_gap", None, "eV", "band gap (eV)"),
    ("optb88vdw_bandgap", None, "eV", "band gap (eV)"),
    ("gap pbe", "matbench_mp_gap", "eV", "band gap (eV)"),
    ("last phdos peak", "matbench_phonons", "cm⁻¹", "last phdos peak (cm⁻¹)"),
    ("e_above_hull", None, "eV/atom", "energy above hull (eV/atom)"),
    ("target", "matbench_mp_e_form", "eV/atom", "formation energy (eV/atom)"),
    ("target", "mp_eform_cgcnn_3000", "eV/atom", "formation energy (eV/atom)"),
    ("target", "/content/my_cifs", "", "target"),
    # `evaluate --store` knows only the store's path; the run folder is named after the data.
    ("target", "/content/colab_kit/alignn_jarvis_bandgap_50-radius-cgcnn-debug/store", "eV", "band gap (eV)"),
    ("target", None, "", "target"),
    (None, None, "", "target"),
    # A named column that is not known keeps its name and gets no unit, whatever the file is called:
    # the file's usual label says nothing about another column of it.
    ("energy_total", "alexandria_devset_98", "", "energy_total"),
    ("bulk modulus", None, "", "bulk modulus"),
])
def test_target_unit_and_label(target: str | None, data: str | None, unit: str, label: str) -> None:
    assert target_unit(target, data) == unit
    assert target_label(target, data) == label


def test_format_scores_line() -> None:
    line = format_scores("test", 300, 0.08123, 0.12041, 0.89312, "eV/atom")
    assert line == ("test (n=300): MAE 0.0812 eV/atom, RMSE 0.1204 eV/atom; "
                    "predicting the training mean: MAE 0.8931 eV/atom")
    assert format_scores("val", 12, 0.5, 0.7, None, "") == "val (n=12): MAE 0.5000, RMSE 0.7000"
    # Phonon frequencies in cm⁻¹: four decimals would claim a precision nobody has.
    assert format_scores("test", 127, 62.347, 101.28, 391.4, "cm⁻¹") == (
        "test (n=127): MAE 62.35 cm⁻¹, RMSE 101.3 cm⁻¹; predicting the training mean: MAE 391.4 cm⁻¹")


def test_format_timing() -> None:
    assert format_timing({"compute_seconds": 312.4, "calls": 3, "last_call_seconds": 14.2}) == (
        "312 s of compute across 3 runs of the command (this run: 14 s)")
    assert format_timing({"compute_seconds": 25, "calls": 1, "last_call_seconds": 25}) == (
        "25 s of compute in 1 run of the command (this run: 25 s)")
    assert format_timing({"compute_seconds": 11_160, "calls": 4, "last_call_seconds": 3_100}).startswith(
        "3.1 h of compute across 4 runs of the command (this run: 52 min)")


def test_mean_predictor_mae() -> None:
    y = np.array([-1.0, -2.0, -3.0, 0.5, -0.5])
    assert mean_predictor_mae(y, np.array([0, 1, 2]), np.array([3, 4])) == pytest.approx((2.5 + 1.5) / 2)


def _history(n: int) -> list[dict[str, Any]]:
    # A real-looking run: loss falling, validation MAE falling then rising after epoch ~n/2.
    e = np.arange(1, n + 1)
    val = 0.12 + 0.9 * np.exp(-e / 4) + 0.002 * np.maximum(e - n / 2, 0)
    return [{"epoch": int(i), "train_loss": float(0.9 * np.exp(-i / 5) + 0.01), "val_mae": float(v),
             "val_rmse": float(1.4 * v), "lr": 1e-3, "seconds": 3.1} for i, v in zip(e, val)]


def _xticks(ax: Any) -> np.ndarray:
    lo, hi = ax.get_xlim()
    ticks = np.asarray(ax.xaxis.get_majorticklocs())
    return ticks[(ticks >= lo) & (ticks <= hi)]


@pytest.mark.parametrize("n_epochs", [1, 2, 7, 50])
def test_loss_curve_has_integer_epochs_and_two_readable_panels(n_epochs: int) -> None:
    history = _history(n_epochs)
    best = int(np.argmin([h["val_mae"] for h in history])) + 1
    fig = loss_curve_figure(history, "eV/atom", best)
    top, bottom = fig.axes[:2]
    assert top.get_ylabel() == "train loss (MSE / std²)"
    assert bottom.get_ylabel() == "validation MAE (eV/atom)" and bottom.get_xlabel() == "epoch"
    assert top.get_shared_x_axes().joined(top, bottom)
    fig.canvas.draw()  # ticks as they will be saved
    ticks = _xticks(bottom)
    assert len(ticks) >= 1 and np.all(ticks == np.round(ticks)), ticks
    assert ticks.min() >= 1 and ticks.max() <= n_epochs
    assert 1 <= len(ticks) <= 12  # 50 epochs are not 50 crowded labels
    legend = bottom.get_legend().get_texts()[0].get_text()
    assert f"epoch {best}" in legend and "eV/atom" in legend


def test_loss_curve_without_unit_says_validation_mae() -> None:
    assert loss_curve_figure(_history(3)).axes[1].get_ylabel() == "validation MAE"


def test_parity_plot_names_target_units_and_baseline() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(-1.5, 1.1, 40)
    pred = y + rng.normal(0, 0.1, 40)
    mae = float(np.mean(np.abs(pred - y)))
    fig = parity_figure(pred, y, mae=mae, baseline_mae=0.8931, target_name="e_form", data_name="mp_eform_cgcnn_3000")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "DFT formation energy (eV/atom)"
    assert ax.get_ylabel() == "predicted formation energy (eV/atom)"
    assert ax.get_xlim() == ax.get_ylim() and ax.get_aspect() == 1.0
    assert f"MAE {mae:.4f} eV/atom" in ax.get_title() and "n=40" in ax.get_title()
    assert "predicting the training mean: MAE 0.8931 eV/atom" in ax.get_title()
    lo, hi = ax.get_xlim()
    assert lo < min(y.min(), pred.min()) and hi > max(y.max(), pred.max())  # no point on the frame

    unknown = parity_figure(pred, y, mae=mae, target_name="target").axes[0]
    assert unknown.get_xlabel() == "target (from the data)" and unknown.get_ylabel() == "predicted target"
    assert unknown.get_title() == f"test set (n=40): MAE {mae:.4f}"
    single = parity_figure(pred[:1], y[:1], mae=mae, target_name="e_form").axes[0]
    assert single.get_xlim()[1] > single.get_xlim()[0]


def _report(tmp_path: Path, source: Path, data_name: str, limit: int) -> tuple[dict[str, Any], Path, GraphStore]:
    build_store(source, tmp_path / "store", get_converter("radius"), limit=limit, progress=False)
    store = GraphStore(tmp_path / "store")
    y = store.targets()
    rng = np.random.default_rng(1)
    k = max(1, len(y) // 5)
    test_idx, train_idx = np.arange(k), np.arange(k, len(y))
    pred = y[test_idx] + rng.normal(0, 0.2 * y.std(), len(test_idx))
    test = {"mae": float(np.mean(np.abs(pred - y[test_idx]))),
            "rmse": float(np.sqrt(np.mean((pred - y[test_idx]) ** 2))),
            "pred": pred.astype(np.float32), "target": y[test_idx].astype(np.float32)}
    history = _history(3)
    result = TrainResult(tmp_path, status="finished", epochs_done=3, best_epoch=3, best_val_mae=history[-1]["val_mae"],
                         history=history, budget=Budget(5000, 60000, "calibrated"), train_seconds=250.0)
    out = tmp_path / "report"
    metrics = write_report(RunFolder(tmp_path), plan=PLAN, store=store, result=result, test=test,
                           baseline_mae=mean_predictor_mae(y, train_idx, test_idx),
                           timing={"compute_seconds": 312.4, "calls": 3, "last_call_seconds": 14.2},
                           data_name=data_name)
    return metrics, out, store


def test_write_report_formation_energy(tmp_path: Path, shipped_data: Path) -> None:
    metrics, out, store = _report(tmp_path, shipped_data, "mp_eform_cgcnn_3000", 60)
    for name in ("metrics.json", "loss_curve.png", "parity.png", "summary.txt"):
        assert (out / name).is_file(), name
    for name in ("loss_curve.png", "parity.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert store_target_name(store) == "e_form"
    saved = json.loads((out / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert saved["target"] == "e_form" and saved["unit"] == "eV/atom"
    assert saved["target_label"] == "formation energy (eV/atom)"
    assert saved["time"] == {"compute_seconds": 312.4, "calls": 3, "last_call_seconds": 14.2, "train_seconds": 250.0}
    assert saved["test_n"] == 12 and saved["n_graphs"] == len(store) == 60
    assert saved["test_mae"] < saved["mean_predictor_test_mae"]
    assert set(metrics["files"]) == {"metrics", "loss_curve", "parity", "summary"}
    summary = (out / "summary.txt").read_text().splitlines()
    assert "target: e_form = formation energy (eV/atom)" in summary
    assert format_scores("test", 12, saved["test_mae"], saved["test_rmse"], saved["mean_predictor_test_mae"],
                         "eV/atom") in summary
    assert any(line.startswith("training: finished after 3 epochs; best epoch 3 (validation MAE ")
               and line.endswith(" eV/atom)") for line in summary)
    assert "time: 312 s of compute across 3 runs of the command (this run: 14 s); training 250 s of it" in summary


def test_write_report_phonons_in_wavenumbers(tmp_path: Path, fixture_data: Path) -> None:
    metrics, out, _ = _report(tmp_path, fixture_data / "matbench_phonons_sample.json.gz", "matbench_phonons", 5)
    assert metrics["unit"] == "cm⁻¹" and metrics["target"] == "last phdos peak"
    text = (out / "summary.txt").read_text(encoding="utf-8")
    assert "target: last phdos peak = last phdos peak (cm⁻¹)" in text and "test (n=1): MAE " in text
    assert " cm⁻¹, RMSE " in text


def test_write_report_unknown_target_has_no_unit(tmp_path: Path, fixture_data: Path) -> None:
    metrics, out, _ = _report(tmp_path, fixture_data / "cif_dir", str(fixture_data / "cif_dir"), 3)
    assert metrics["unit"] == "" and metrics["target_label"] == "target"
    text = (out / "summary.txt").read_text()
    assert "target: target (unit not known: --set unit=... names it)" in text and "eV" not in text


def test_write_report_refuses_incomplete_timing(tmp_path: Path, shipped_data: Path) -> None:
    with pytest.raises(ValueError, match="last_call_seconds"):
        write_report(RunFolder(tmp_path), plan=PLAN, store=None, result=None, test={}, baseline_mae=1.0,
                     timing={"compute_seconds": 1.0, "calls": 1}, data_name="x", target_name="e_form")
