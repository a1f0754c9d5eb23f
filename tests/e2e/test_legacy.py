"""A run folder made before the packages were reorganised (colab_kit at commit 6a83702, tests/data/legacy-6a83702)
still works: its store reads the same graphs this version converts, its best weights predict what they predicted
then, and running the same command again resumes its checkpoint instead of starting over.

Made with ``python -m colab_kit run --mode debug --model cgcnn --work-dir W --set n_samples=40 --set shard_size=20
--set epochs=2 --set convert_workers=1 --set workers=0 --set hidden=16 --set n_conv=2`` in a checkout of 6a83702
(plots, run.log and checkpoints/previous.pt left out); ``predictions.json`` is that checkout's
``colab_kit.load(run).predict`` of the shipped file's first 6 structures.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, run_cli, shipped_records
from pymatgen.core import Structure

import colab_kit
from colab_kit.graphs import get_converter
from colab_kit.store.build import build_store
from colab_kit.store.format import GraphStore

LEGACY = REPO / "tests" / "data" / "legacy-6a83702"
RUN_NAME = "mp_eform_cgcnn_3000-radius-cgcnn-hidden=16-n_conv=2-debug"
COMMAND = ["run", "--mode", "debug", "--model", "cgcnn", "--set", "n_samples=40", "--set", "shard_size=20",
           "--set", "convert_workers=1", "--set", "workers=0", "--set", "hidden=16", "--set", "n_conv=2"]


@pytest.fixture
def legacy_work(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    shutil.copytree(LEGACY / "work", work)
    return work


def test_a_legacy_store_reads_the_graphs_this_version_converts(legacy_work: Path, tmp_path: Path) -> None:
    old = GraphStore(legacy_work / RUN_NAME / "store")
    plan = json.loads((legacy_work / RUN_NAME / "plan.json").read_text())
    conv = get_converter("radius", cutoff=plan["cutoff"], max_neighbors=plan["max_neighbors"])
    build_store(REPO / "colab_kit" / "data" / "mp_eform_cgcnn_3000_matbench.json.gz", tmp_path / "new", conv,
                limit=40, shard_size=20, progress=False)
    new = GraphStore(tmp_path / "new")
    assert len(old) == len(new) == 40 and old.graph_kind == new.graph_kind == "radius"
    assert old.params == new.params
    for i in range(len(old)):
        a, b = old.arrays(i), new.arrays(i)
        assert (old.graph_id(i), old.target(i)) == (new.graph_id(i), new.target(i)) and a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=f"graph {i} array {k}")


def test_legacy_best_weights_predict_what_they_predicted(legacy_work: Path) -> None:
    want = json.loads((LEGACY / "predictions.json").read_text())
    _, rows = shipped_records(max(want["rows"]) + 1)
    structures = [Structure.from_dict(rows[i][0]) for i in want["rows"]]
    got = colab_kit.load(str(legacy_work / RUN_NAME), device="cpu").predict(structures)
    np.testing.assert_allclose(got, want["predictions"], rtol=1e-5, atol=1e-6)


def test_the_same_command_resumes_a_legacy_checkpoint(legacy_work: Path) -> None:
    """Two more epochs on top of the legacy run's two: its metrics stay, its store is reused byte for byte."""
    run = legacy_work / RUN_NAME
    shards = {p.name: p.read_bytes() for p in (run / "store").glob("shard-*")}
    before = (run / "metrics.jsonl").read_text().splitlines()
    res = run_cli(*COMMAND, "--set", "epochs=4", "--work-dir", str(legacy_work), cwd=REPO)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resum" in res.stderr.lower(), res.stderr[-2000:]
    after = (run / "metrics.jsonl").read_text().splitlines()
    assert after[:2] == before and [json.loads(ln)["epoch"] for ln in after] == [1, 2, 3, 4]
    assert {p.name: p.read_bytes() for p in (run / "store").glob("shard-*")} == shards
    assert json.loads((run / "report" / "metrics.json").read_text())["epochs"] == 4
