"""benchmark / split matbench: matbench's official folds over source rows (skipped structures keep their rows),
the five folds trained and scored in turn on the real matbench_phonons task, SIGKILL mid-benchmark and the same
command again (a fold done is not redone), and the results file in matbench's layout."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import kill_when, run_cli

from colab_kit.graphs import get_converter
from colab_kit.loader.splits import matbench_folds, matbench_store_split, store_rows
from colab_kit.run.matbench import matbench_ids, read_results
from colab_kit.store.build import build_store
from colab_kit.store.format import GraphStore

TINY = ["--model", "cgcnn", "--mode", "debug", "--set", "hidden=16", "--set", "n_conv=1", "--set", "epochs=1"]
BENCH = "matbench_phonons-cgcnn-hidden=16-n_conv=1-debug"


@pytest.fixture(scope="module")
def phonons(shared_data: Path) -> Path:
    return shared_data / "matbench_phonons_1265" / "matbench_phonons.json.gz"


def test_fold_split_follows_source_rows_when_structures_are_skipped(phonons: Path, tmp_path: Path) -> None:
    with gzip.open(phonons, "rt") as f:
        d = json.load(f)
    d["index"] = matbench_ids("matbench_phonons")  # matbench's own ids: mb-phonons-0001 is row 0
    broken = [3, 700]
    for r in broken:
        d["data"][r][0] = {"not": "a structure"}
    src = tmp_path / "phonons.json.gz"
    with gzip.open(src, "wt") as f:
        json.dump(d, f)
    store = GraphStore(build_store(src, tmp_path / "store", get_converter("radius"), workers=1, shard_size=400,
                                   progress=False).path)
    rows, n_rows = store_rows(store)
    assert n_rows == 1265 and len(store) == 1263 and not set(broken) & set(rows.tolist())
    folds = matbench_folds(1265)
    for k in range(5):
        s = matbench_store_split(store, k, seed=0)
        assert sorted(rows[s["test"]].tolist()) == sorted(set(folds[k].tolist()) - set(broken))
        assert len(set(s["train"]) | set(s["val"]) | set(s["test"])) == 1263 and not set(s["train"]) & set(s["val"])
        assert (store.root / f"splits-matbench-fold{k}-seed0.npz").exists()
    assert abs(len(matbench_store_split(store, 0, seed=0)["val"]) - 0.1 * (1263 - 253)) <= 2


def _scored(root: Path) -> int:
    try:
        return len(_fold_rows(root / "folds.csv"))
    except OSError:
        return 0


def _fold_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_benchmark_runs_the_folds_resumes_after_sigkill_and_writes_matbench_results(phonons: Path, tmp_path: Path) -> None:
    args = ["benchmark", "--task", "matbench_phonons", "--data", str(phonons), *TINY]
    ref = run_cli(*args, "--work-dir", str(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert "MAE over 5 folds" in ref.stdout and "results.json.gz" in ref.stdout
    root = tmp_path / "ref" / "benchmark" / BENCH
    got = read_results(root / "results.json.gz", "matbench_phonons")
    folds = matbench_folds(1265)
    assert sorted(got) == [0, 1, 2, 3, 4]
    for k in range(5):  # each fold holds exactly its official test ids
        assert sorted(got[k]) == sorted(matbench_ids("matbench_phonons", folds[k]))
    doc = json.loads(gzip.decompress((root / "results.json.gz").read_bytes()))
    assert {"mae", "rmse", "mape", "max_error"} <= set(doc["tasks"]["matbench_phonons"]["results"]["fold_0"]["scores"])
    scores = _fold_rows(root / "folds.csv")
    assert [int(r["fold"]) for r in scores] == [0, 1, 2, 3, 4] and all(int(r["n_test"]) == 253 for r in scores)
    # one conversion: the other folds' stores are hard links of the first's
    shards = sorted(root.glob("*-fold*-debug/store/shard-000000.safetensors"))
    assert len(shards) == 5 and len({p.stat().st_ino for p in shards}) == 1

    work = tmp_path / "w"
    args_w = [*args, "--work-dir", str(work)]
    assert kill_when(args_w, lambda: _scored(work / "benchmark" / BENCH) >= 2)  # folds 0 and 1 recorded
    res = run_cli(*args_w)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "fold 0 of matbench_phonons is done" in res.stderr and "fold 1 of matbench_phonons is done" in res.stderr
    for k in range(5):  # the interrupted benchmark's predictions are the uninterrupted one's
        assert _fold_rows(work / "benchmark" / BENCH / f"fold-{k}.csv") == _fold_rows(root / f"fold-{k}.csv")


def test_benchmark_refuses_composition_tasks_and_split_needs_matbench(tmp_path: Path) -> None:
    res = run_cli("benchmark", "--task", "matbench_steels", "--work-dir", str(tmp_path))
    assert res.returncode == 1 and "compositions, not structures" in res.stderr and "Traceback" not in res.stderr
    res = run_cli("detect", "--set", "fold=2")
    assert res.returncode == 2 and "fold=2 needs split=matbench" in res.stderr
    assert np.array_equal(np.sort(np.concatenate(matbench_folds(1265))), np.arange(1265))
