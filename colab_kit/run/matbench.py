"""Matbench v0.1: its official folds, a validation split inside a fold, and results in its submission layout.

The folds are matbench's by construction: matbench 0.6 froze them in ``matbench_v0.1_validation.json``
(made by ``scripts/mvb01_generate_validation.py``: ``KFold``/``StratifiedKFold(n_splits=5, shuffle=True,
random_state=18012019).split(df, df[target])``), as matbench ids of the test rows. Row ``i`` of the
task's dataframe, in matminer's order, has the id ``mb-<task>-<i + 1>`` zero-padded to
``floor(log10(n)) + 1`` digits (``data_ops.load``), so the folds are row positions 0..n-1.
scikit-learn 1.9.1's KFold reproduces that file exactly for all 10 regression tasks; KFold and
StratifiedKFold give identical folds in 1.1.3, 1.3.0, 1.6.1 and 1.9.1 (``RandomState.shuffle`` of
``arange(n)``, split into ``n // 5 (+1)`` chunks; NumPy keeps RandomState's stream fixed).
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from hashlib import sha256
from pathlib import Path
from typing import Any

import numpy as np

from colab_kit.loader import MatbenchError, check_fold, matbench_folds
from colab_kit.util.files import atomic_write_bytes

MATBENCH_VERSION = "0.6"  # matbench/constants.py VERSION; from_file only warns on another version
BENCHMARK = "matbench_v0.1"


def _t(task_type: str, target: str, n_samples: int, unit: str | None, input_type: str = "structure") -> dict[str, Any]:
    return {"task_type": task_type, "target": target, "n_samples": n_samples, "unit": unit, "input_type": input_type}


# From matbench 0.6's matbench_v0.1_dataset_metadata.json. Composition tasks have no structures, so a
# crystal graph model cannot run them.
MATBENCH_TASKS: dict[str, dict[str, Any]] = {
    "matbench_dielectric": _t("regression", "n", 4764, "unitless"),
    "matbench_expt_gap": _t("regression", "gap expt", 4604, "eV", "composition"),
    "matbench_expt_is_metal": _t("classification", "is_metal", 4921, None, "composition"),
    "matbench_glass": _t("classification", "gfa", 5680, None, "composition"),
    "matbench_jdft2d": _t("regression", "exfoliation_en", 636, "meV/atom"),
    "matbench_log_gvrh": _t("regression", "log10(G_VRH)", 10987, "log10(GPa)"),
    "matbench_log_kvrh": _t("regression", "log10(K_VRH)", 10987, "log10(GPa)"),
    "matbench_mp_e_form": _t("regression", "e_form", 132752, "eV/atom"),
    "matbench_mp_gap": _t("regression", "gap pbe", 106113, "eV"),
    "matbench_mp_is_metal": _t("classification", "is_metal", 106113, None),
    "matbench_perovskites": _t("regression", "e_form", 18928, "eV/unit cell"),
    "matbench_phonons": _t("regression", "last phdos peak", 1265, "cm^-1"),
    "matbench_steels": _t("regression", "yield strength", 312, "MPa", "composition"),
}


def is_matbench_task(name: str) -> bool:
    """Whether ``name`` is one of matbench v0.1's 13 tasks (e.g. ``"matbench_phonons"``)."""
    return name in MATBENCH_TASKS


def _task(name: str) -> dict[str, Any]:
    if name not in MATBENCH_TASKS:
        raise MatbenchError(f"unknown matbench task {name!r}; choose one of {sorted(MATBENCH_TASKS)}")
    return MATBENCH_TASKS[name]


def matbench_ids(task: str, positions: Iterable[int] | None = None) -> list[str]:
    """Matbench ids (``"mb-phonons-0001"``) of rows ``positions`` (all rows if None) of ``task``'s dataframe."""
    n = _task(task)["n_samples"]
    prefix, width = task.replace("matbench", "mb").replace("_", "-"), math.floor(math.log10(n)) + 1
    return [f"{prefix}-{int(i) + 1:0{width}d}" for i in (range(n) if positions is None else positions)]


def _scores(truth: np.ndarray, pred: np.ndarray, task_type: str) -> dict[str, float]:
    """matbench's fold scores (``data_ops.score_array``), with the same scikit-learn metrics."""
    from sklearn import metrics as m

    if task_type == "regression":
        keep = np.abs(truth) > 1e-5  # matbench's MAPE skips near-zero truths
        return {"mae": float(m.mean_absolute_error(truth, pred)),
                "rmse": math.sqrt(m.mean_squared_error(truth, pred)),
                "mape": float(np.mean(np.abs((truth[keep] - pred[keep]) / truth[keep]))),
                "max_error": float(m.max_error(truth, pred))}
    labels, truth = pred > 0.5, truth.astype(bool)
    # score_array turns the probabilities into labels before it reaches "rocauc", so matbench's rocauc is that
    # of the labels; the file records what matbench's own record() would
    return {"accuracy": float(m.accuracy_score(truth, labels)),
            "balanced_accuracy": float(m.balanced_accuracy_score(truth, labels)),
            "f1": float(m.f1_score(truth, labels)), "rocauc": float(m.roc_auc_score(truth, labels))}


def _sorted(d: dict) -> dict:
    # matbench's hash_dictionary: dicts sorted by key at every level (not inside lists), then json.dumps
    return {k: _sorted(v) if isinstance(v, dict) else v for k, v in sorted(d.items())}


def _results_path(path: str | Path) -> Path:
    path = Path(path)
    return path / "results.json.gz" if path.is_dir() else path


def _fold_record(task: str, fold: int, preds: Mapping[str, float], test: np.ndarray, y: np.ndarray,
                 parameters: dict) -> dict[str, Any]:
    """One fold's entry of matbench's task results, as ``MatbenchTask.record`` makes it (plus its scores)."""
    want = matbench_ids(task, test)
    if set(preds) != set(want):
        raise MatbenchError(f"fold {fold} of {task} has {len(set(preds) - set(want))} ids outside its test set and "
                            f"misses {len(set(want) - set(preds))}; predict exactly its {len(want)} test ids")
    pred = np.array([float(preds[i]) for i in want])
    task_type = MATBENCH_TASKS[task]["task_type"]
    ok = np.isfinite(pred) if task_type == "regression" else (pred >= 0.0) & (pred <= 1.0)
    if not ok.all():
        bad = int(np.flatnonzero(~ok)[0])
        kind = "finite numbers" if task_type == "regression" else "probabilities in [0, 1]"
        raise MatbenchError(f"fold {fold} of {task}: {int((~ok).sum())} predictions are not {kind} "
                            f"(e.g. {want[bad]}={pred[bad]}); fix the model's output")
    return {"data": dict(zip(want, pred.tolist())), "parameters": parameters,
            "scores": _scores(y[test], pred, task_type), "uncertainty": None}


def write_results(path: str | Path, task: str, fold_predictions: Mapping[int, Mapping[str, float]], *,
                  targets: Mapping[str, float], model: str = "", parameters: dict | None = None,
                  user_metadata: dict | None = None) -> Path:
    """Write the recorded folds of ``task`` atomically as matbench's ``results.json.gz``.

    Matbench's ``MatbenchBenchmark.from_file`` loads it once all 5 folds are in it (matbench rejects a
    task with a fold missing); :func:`read_results` reads partial files too.

    Args:
        path: the ``.json.gz`` file, or a folder to hold ``results.json.gz``.
        task: a matbench task name.
        fold_predictions: fold -> {matbench id: prediction (target unit; for classification the
            probability of True)}, each fold with exactly its test ids (:func:`matbench_ids` of the fold).
        targets: matbench id -> true value for every row of the task (scores and stratified folds need them).
        model: recorded as ``user_metadata["algorithm"]``, as matbench's ALIGNN submission does.
        parameters: free-form JSON, recorded as every fold's parameters.
        user_metadata: free-form JSON about the run.

    Returns:
        The path written.
    """
    path = _results_path(path)
    if not path.name.endswith(".json.gz"):
        raise MatbenchError(f"results file {path} must end in .json.gz (matbench's from_file gunzips by name)")
    ids = matbench_ids(task)
    missing = [i for i in ids if i not in targets]
    if missing:
        raise MatbenchError(f"targets lacks {len(missing)} of {task}'s {len(ids)} ids (e.g. {missing[0]!r}); "
                            "pass every row's target, keyed by matbench_ids(task)")
    y = np.array([float(targets[i]) for i in ids])
    folds = matbench_folds(len(ids), MATBENCH_TASKS[task]["task_type"], y)
    for k in fold_predictions:
        check_fold(k)
    results = {f"fold_{k}": _fold_record(task, k, p, folds[k], y, parameters or {})
               for k, p in sorted(fold_predictions.items())}
    doc = {"@module": "matbench.bench", "@class": "MatbenchBenchmark", "version": MATBENCH_VERSION,
           "tasks": {task: {"@module": "matbench.task", "@class": "MatbenchTask", "benchmark_name": BENCHMARK,
                            "dataset_name": task, "results": results}},
           "user_metadata": dict(user_metadata or {}, **({"algorithm": model} if model else {})),
           "benchmark_name": BENCHMARK, "datestamp": datetime.now(timezone.utc).strftime("%Y.%m.%d %H:%M.%S")}
    try:
        doc = json.loads(json.dumps(doc))  # hash what the reader will load (str keys, lists)
    except (TypeError, ValueError) as exc:
        raise MatbenchError(f"parameters/user_metadata for {task} are not JSON ({exc}); "
                            "pass str/int/float/bool/list/dict values") from exc
    doc["hash"] = sha256(json.dumps(_sorted(doc)).encode("utf-8")).hexdigest()
    atomic_write_bytes(path, gzip.compress(json.dumps(doc).encode("utf-8"), mtime=0))
    return path


def read_results(path: str | Path, task: str | None = None) -> dict[int, dict[str, float]]:
    """fold -> {matbench id: prediction} recorded in a matbench results file (gzipped or plain JSON), or in
    the ``results.json.gz`` of a folder; ``task`` may be omitted when the file holds one task."""
    path = _results_path(path)
    try:
        raw = path.read_bytes()
        tasks = json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)["tasks"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MatbenchError(f"{path} is not a matbench results file ({exc}); write it with write_results") from exc
    name = task if task is not None else (next(iter(tasks)) if len(tasks) == 1 else None)
    if name not in tasks:
        raise MatbenchError(f"{path} holds tasks {sorted(tasks)}, not {name!r}; pass task= one of them")
    return {int(k.split("_")[1]): dict(v["data"]) for k, v in tasks[name]["results"].items() if v.get("data")}
