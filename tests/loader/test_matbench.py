"""matbench: the official folds (against scikit-learn and fingerprints of matbench's own frozen split file),
the validation split inside a fold, and results files in matbench's submission layout, written and reread."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from sklearn.model_selection import KFold, StratifiedKFold

from colab_kit.errors import ColabKitError
from colab_kit.loader.splits import FOLD_SEED, N_FOLDS, MatbenchError, matbench_folds, matbench_split
from colab_kit.run.matbench import MATBENCH_TASKS, is_matbench_task, matbench_ids, read_results, write_results

PHONONS = "matbench_phonons"

# sha256 of the 5 folds' test row positions (int64, fold 0 first) and the first test ids of fold 0, taken
# from matbench 0.6's matbench_v0.1_validation.json (ids "mb-<task>-<row + 1>"), not from scikit-learn.
MATBENCH_FILE = {
    "matbench_phonons": ("669c787dea4b6217aa3b83cb01ce0b3f9f9a91b5779ef8f76e91415d90eb63ac",
                         ["mb-phonons-0002", "mb-phonons-0003", "mb-phonons-0007"]),
    "matbench_mp_e_form": ("c95d5cb0195bc2f77717d4dc2e2634bf378a73a1ffe3ef4410eab285cfe8e43b",
                           ["mb-mp-e-form-000004", "mb-mp-e-form-000008", "mb-mp-e-form-000011"]),
    "matbench_steels": ("e8a252c717be097a8d1cc8f7c5c7e99f24d52c852746d2e82892f7017f6566be",
                        ["mb-steels-003", "mb-steels-005", "mb-steels-020"]),
}


@pytest.fixture(scope="module")
def phonons_targets() -> dict[str, float]:
    """matbench id -> a last phonon DOS peak (cm⁻¹) for each of matbench_phonons' 1,265 rows (seeded draws)."""
    return dict(zip(matbench_ids(PHONONS), np.random.default_rng(0).uniform(50.0, 1500.0, 1265).tolist()))


def _predictions(targets: dict[str, float], folds: list[int], noise: float = 20.0) -> dict[int, dict[str, float]]:
    rng = np.random.default_rng(1)
    all_folds = matbench_folds(len(targets))
    return {k: {i: targets[i] + float(rng.normal(0, noise)) for i in matbench_ids(PHONONS, all_folds[k])}
            for k in folds}


@pytest.mark.parametrize("n", [1265, 132752])
def test_folds_are_scikit_learns_kfold_partitioning_all_rows(n: int) -> None:
    folds = matbench_folds(n)
    expected = [t for _, t in KFold(n_splits=5, shuffle=True, random_state=18012019).split(np.zeros(n))]
    assert (FOLD_SEED, N_FOLDS) == (18012019, 5) and len(folds) == 5
    for got, want in zip(folds, expected):
        assert got.dtype == np.int64 and np.array_equal(got, want) and np.all(np.diff(got) > 0)
    assert [len(f) for f in folds] == [n // 5 + (k < n % 5) for k in range(5)]
    assert np.array_equal(np.sort(np.concatenate(folds)), np.arange(n))


@pytest.mark.parametrize("task", sorted(MATBENCH_FILE))
def test_folds_match_matbenchs_frozen_validation_file(task: str) -> None:
    folds = matbench_folds(MATBENCH_TASKS[task]["n_samples"])
    digest, first_ids = MATBENCH_FILE[task]
    assert hashlib.sha256(b"".join(f.astype(np.int64).tobytes() for f in folds)).hexdigest() == digest
    assert matbench_ids(task, folds[0][:3]) == first_ids


def test_classification_folds_are_stratified_and_need_labels() -> None:
    y = np.random.default_rng(0).random(4921) < 0.498
    folds = matbench_folds(4921, "classification", y)
    expected = [t for _, t in StratifiedKFold(5, shuffle=True, random_state=FOLD_SEED).split(np.zeros(4921), y)]
    assert all(np.array_equal(a, b) for a, b in zip(folds, expected))
    with pytest.raises(MatbenchError, match="pass y with the 4921 rows' labels"):
        matbench_folds(4921, "classification")


def test_task_metadata_and_ids() -> None:
    assert len(MATBENCH_TASKS) == 13 and is_matbench_task(PHONONS) and not is_matbench_task("phonons")
    assert MATBENCH_TASKS[PHONONS] == {"task_type": "regression", "target": "last phdos peak", "n_samples": 1265,
                                       "unit": "cm^-1", "input_type": "structure"}
    assert sorted(t for t, v in MATBENCH_TASKS.items() if v["task_type"] == "classification") == [
        "matbench_expt_is_metal", "matbench_glass", "matbench_mp_is_metal"]
    assert matbench_ids(PHONONS)[0] == "mb-phonons-0001" and matbench_ids(PHONONS)[-1] == "mb-phonons-1265"
    assert matbench_ids("matbench_mp_e_form", [0, 132751]) == ["mb-mp-e-form-000001", "mb-mp-e-form-132752"]
    with pytest.raises(MatbenchError, match="unknown matbench task 'matbench_foo'"):
        matbench_ids("matbench_foo")


@pytest.mark.parametrize("fold", range(5))
def test_split_keeps_the_official_test_fold_and_draws_val_from_its_training_rows(fold: int) -> None:
    n = 1265
    s = matbench_split(n, fold, val_fraction=0.1, seed=7)
    assert set(s) == {"train", "val", "test"}
    assert np.array_equal(s["test"], matbench_folds(n)[fold])
    for part in s.values():
        assert part.dtype == np.int64 and np.all(np.diff(part) > 0)
    assert np.array_equal(np.sort(np.concatenate(list(s.values()))), np.arange(n))
    assert len(s["val"]) == round(0.1 * (n - len(s["test"])))
    again, other = matbench_split(n, fold, 0.1, seed=7), matbench_split(n, fold, 0.1, seed=8)
    assert all(np.array_equal(s[k], again[k]) for k in s) and not np.array_equal(s["val"], other["val"])
    assert len(matbench_split(n, fold, val_fraction=0.0)["val"]) == 0


@pytest.mark.parametrize("fold", [5, -1, 1.0, True])
def test_bad_fold_names_the_value_and_the_range(fold: object) -> None:
    with pytest.raises(MatbenchError) as err:
        matbench_split(1265, fold)  # type: ignore[arg-type]
    assert isinstance(err.value, ColabKitError)
    assert str(err.value) == f"matbench fold {fold!r} does not exist; choose 0..4" and "\n" not in str(err.value)


def _read_doc(path: Path) -> dict:
    return json.loads(gzip.decompress(path.read_bytes()))


def _matbench_hash(doc: dict) -> str:
    def ordered(d: dict) -> dict:
        return {k: ordered(v) if isinstance(v, dict) else v for k, v in sorted(d.items())}
    return hashlib.sha256(json.dumps(ordered({k: v for k, v in doc.items() if k != "hash"})).encode()).hexdigest()


def test_results_file_has_matbenchs_submission_layout(tmp_path: Path, phonons_targets: dict[str, float]) -> None:
    preds = _predictions(phonons_targets, list(range(5)))
    path = write_results(tmp_path, PHONONS, preds, targets=phonons_targets, model="cgcnn",
                         parameters={"epochs": 300, "lr": 1e-3}, user_metadata={"colab_kit": "0.1.0"})
    assert path == tmp_path / "results.json.gz" and path.read_bytes()[:2] == b"\x1f\x8b"
    doc = _read_doc(path)
    assert set(doc) == {"@module", "@class", "version", "tasks", "user_metadata", "benchmark_name", "datestamp", "hash"}
    assert (doc["@module"], doc["@class"], doc["version"], doc["benchmark_name"]) == (
        "matbench.bench", "MatbenchBenchmark", "0.6", "matbench_v0.1")
    assert re.fullmatch(r"\d{4}\.\d\d\.\d\d \d\d:\d\d\.\d\d", doc["datestamp"])
    assert doc["user_metadata"] == {"colab_kit": "0.1.0", "algorithm": "cgcnn"}
    assert doc["hash"] == _matbench_hash(doc)
    task = doc["tasks"][PHONONS]
    assert list(doc["tasks"]) == [PHONONS] and task == {
        "@module": "matbench.task", "@class": "MatbenchTask", "benchmark_name": "matbench_v0.1",
        "dataset_name": PHONONS, "results": task["results"]}
    assert list(task["results"]) == [f"fold_{k}" for k in range(5)]
    folds = matbench_folds(1265)
    for k in range(5):
        fold = task["results"][f"fold_{k}"]
        assert set(fold) == {"data", "parameters", "scores", "uncertainty"} and fold["uncertainty"] is None
        assert list(fold["data"]) == matbench_ids(PHONONS, folds[k]) and fold["data"] == preds[k]
        assert fold["parameters"] == {"epochs": 300, "lr": 1e-3}
        truth = np.array([phonons_targets[i] for i in fold["data"]])
        err = np.array(list(fold["data"].values())) - truth
        assert fold["scores"] == pytest.approx({"mae": np.abs(err).mean(), "rmse": np.sqrt((err ** 2).mean()),
                                                "mape": np.mean(np.abs(err / truth)), "max_error": np.abs(err).max()})
    assert read_results(path) == preds


def test_partial_then_complete_write_replaces_the_file_atomically(tmp_path: Path,
                                                                  phonons_targets: dict[str, float]) -> None:
    path = tmp_path / "results.json.gz"
    preds = _predictions(phonons_targets, list(range(5)))
    write_results(path, PHONONS, {0: preds[0], 1: preds[1]}, targets=phonons_targets)
    assert list(_read_doc(path)["tasks"][PHONONS]["results"]) == ["fold_0", "fold_1"]
    assert read_results(path) == {0: preds[0], 1: preds[1]}
    write_results(path, PHONONS, preds, targets=phonons_targets)
    assert read_results(path) == preds and read_results(path, PHONONS) == preds
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json.gz"]  # no temporary file left


def test_plain_json_results_are_read_too(tmp_path: Path, phonons_targets: dict[str, float]) -> None:
    preds = _predictions(phonons_targets, [3])
    gz = write_results(tmp_path / "r.json.gz", PHONONS, preds, targets=phonons_targets)
    (tmp_path / "r.json").write_bytes(gzip.decompress(gz.read_bytes()))  # matbench 0.6's to_file writes plain JSON
    assert read_results(tmp_path / "r.json") == preds
    with pytest.raises(MatbenchError, match="not 'matbench_glass'; pass task= one of them"):
        read_results(gz, "matbench_glass")
    (tmp_path / "bad.json.gz").write_bytes(b"{")
    with pytest.raises(MatbenchError, match="is not a matbench results file"):
        read_results(tmp_path / "bad.json.gz")


def test_results_refuse_what_matbench_would_reject(tmp_path: Path, phonons_targets: dict[str, float]) -> None:
    preds = _predictions(phonons_targets, [2])
    wrong = dict(preds[2])
    wrong.pop(next(iter(wrong)))
    with pytest.raises(MatbenchError, match="fold 2 of matbench_phonons has 0 ids outside its test set and misses 1"):
        write_results(tmp_path, PHONONS, {2: wrong}, targets=phonons_targets)
    with pytest.raises(MatbenchError, match="fold 1 of matbench_phonons has 253 ids outside its test set"):
        write_results(tmp_path, PHONONS, {1: preds[2]}, targets=phonons_targets)
    nan = dict(preds[2], **{next(iter(preds[2])): float("nan")})
    with pytest.raises(MatbenchError, match="1 predictions are not finite numbers"):
        write_results(tmp_path, PHONONS, {2: nan}, targets=phonons_targets)
    with pytest.raises(MatbenchError, match="matbench fold 7 does not exist; choose 0..4"):
        write_results(tmp_path, PHONONS, {7: preds[2]}, targets=phonons_targets)
    with pytest.raises(MatbenchError, match="targets lacks 1 of matbench_phonons's 1265 ids"):
        write_results(tmp_path, PHONONS, preds, targets=dict(list(phonons_targets.items())[1:]))
    with pytest.raises(MatbenchError, match="must end in .json.gz"):
        write_results(tmp_path / "results.json", PHONONS, preds, targets=phonons_targets)
    with pytest.raises(MatbenchError, match="are not JSON"):
        write_results(tmp_path, PHONONS, preds, targets=phonons_targets, parameters={"x": object()})
    assert list(tmp_path.iterdir()) == []


def test_classification_results_use_stratified_folds_and_probabilities(tmp_path: Path) -> None:
    task = "matbench_glass"
    rng = np.random.default_rng(2)
    y = rng.random(5680) < 0.71
    targets = dict(zip(matbench_ids(task), y.tolist()))
    folds = matbench_folds(5680, "classification", y.astype(float))
    prob = np.clip(y * 0.4 + rng.random(5680) * 0.6, 0.0, 1.0)
    preds = {0: dict(zip(matbench_ids(task, folds[0]), prob[folds[0]].tolist()))}
    path = write_results(tmp_path, task, preds, targets=targets)
    fold = _read_doc(path)["tasks"][task]["results"]["fold_0"]
    assert set(fold["scores"]) == {"accuracy", "balanced_accuracy", "f1", "rocauc"}
    assert fold["scores"]["accuracy"] == pytest.approx(np.mean((prob[folds[0]] > 0.5) == y[folds[0]]))
    # matbench scores rocauc on the thresholded labels, where it equals the balanced accuracy
    assert fold["scores"]["rocauc"] == pytest.approx(fold["scores"]["balanced_accuracy"])
    preds[0][next(iter(preds[0]))] = 1.5
    with pytest.raises(MatbenchError, match="1 predictions are not probabilities in \\[0, 1\\]"):
        write_results(tmp_path, task, preds, targets=targets)
