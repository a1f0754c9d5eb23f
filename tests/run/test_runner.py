"""runner: the whole pipeline in a subprocess, disconnect + restore from the persist dir, Colab plan."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import kill_when, run_cli, shard_count

from colab_kit.plan.machine import GIB, Gpu, detect
from colab_kit.plan.planner import make_plan
from colab_kit.run.persist import Mirror, restore
from colab_kit.run_folder import RunFolder
from colab_kit.store.manifest import Manifest, ShardEntry


def test_run_debug_end_to_end(tmp_path: Path) -> None:
    res = run_cli("run", "--mode", "debug", "--work-dir", str(tmp_path))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Plan for --mode debug" in res.stdout and "Done: test (n=30): MAE" in res.stdout and "eV/atom" in res.stdout
    assert "Warning" not in res.stderr, res.stderr[-3000:]  # CHGNet's requires_grad warning no longer on every run
    run_dir = tmp_path / "mp_eform_cgcnn_3000-chgnet-chgnet-debug"
    for rel in ("plan.json", "run.log", "best.pt", "store/manifest.json", "checkpoints/latest.pt",
                "report/metrics.json", "report/loss_curve.png", "report/parity.png", "report/summary.txt"):
        assert (run_dir / rel).is_file(), rel
    m = json.loads((run_dir / "report" / "metrics.json").read_text())
    assert m["n_graphs"] == 300 and m["test_mae"] < m["mean_predictor_test_mae"]
    assert (run_dir / "report" / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    again = run_cli("run", "--mode", "debug", "--work-dir", str(tmp_path))
    assert again.returncode == 0 and "nothing to convert" in again.stderr and "training already finished" in again.stderr
    # a rerun that redoes nothing keeps the run's compute time and says how long it took itself
    m2 = json.loads((run_dir / "report" / "metrics.json").read_text())
    assert m2["time"]["calls"] == 2 and m2["time"]["compute_seconds"] >= m["time"]["compute_seconds"] > 0
    assert m2["time"]["train_seconds"] == m["time"]["train_seconds"]
    assert m2["time"]["last_call_seconds"] < m["time"]["last_call_seconds"]


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "latest.pt", map_location="cpu", weights_only=True)["model"]


def _shards(run_dir: Path) -> list[tuple[int, str]]:
    m = json.loads((run_dir / "store" / "manifest.json").read_text())
    return [(e["index"], e["sha256"]) for e in m["shards"]]


def test_disconnect_restore_from_persist_dir(tmp_path: Path) -> None:
    """SIGKILL during conversion, then during training; then the work dir is wiped (a new runtime);
    the same command restores from the persist dir and ends with the uninterrupted run's store and weights."""
    common = ["run", "--mode", "debug", "--graph-kind", "radius", "--set", "n_samples=800", "--set", "shard_size=20",
              "--set", "convert_workers=1", "--set", "epochs=2", "--set", "batch_size=16", "--set", "batch_atoms=4000",
              "--set", "batch_edges=60000", "--set", "checkpoint_minutes=0.002"]
    ref = run_cli(*common, "--work-dir", str(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr[-3000:]
    name = "mp_eform_cgcnn_3000-radius-cgcnn-debug"
    work, persist = tmp_path / "work", tmp_path / "drive"
    args = [*common, "--work-dir", str(work), "--persist-dir", str(persist)]
    store = work / name / "store"
    assert kill_when(args, lambda: shard_count(store) >= 5)  # mid-conversion
    assert 5 <= shard_count(store) < 40 and shard_count(persist / name / "store") >= 4
    latest = work / name / "checkpoints" / "latest.pt"

    def mid_training() -> bool:
        try:
            state = torch.load(latest, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError):
            return False
        return state["step"] >= 10 and state["sampler"]["offset"] > 0
    assert kill_when(args, mid_training)  # mid-epoch
    assert (persist / name / "checkpoints" / "latest.pt").exists()
    shutil.rmtree(work)  # the runtime is gone; only Drive survives
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "restored" in done.stderr and "resuming training" in done.stderr
    assert _shards(work / name) == _shards(tmp_path / "ref" / name)
    a, b = _final_weights(tmp_path / "ref" / name), _final_weights(work / name)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (persist / name / "report" / "parity.png").exists()


def test_persist_failure_is_not_fatal_and_damaged_shards_not_restored(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "store").mkdir(parents=True)
    (run_dir / "plan.json").write_text("{}")
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("x")
    m = Mirror(RunFolder(run_dir), RunFolder(blocker / "sub"), retries=2, wait=0.01)  # no dir under a file
    assert m.push("plan.json") is False and "could not copy" in m.failures[0]
    # a persisted shard whose checksum does not match its manifest is not restored
    p = tmp_path / "drive"
    (p / "store").mkdir(parents=True)
    (p / "store" / "shard-000000.safetensors").write_bytes(b"corrupted")
    Manifest(fingerprint="f", graph_kind="radius", params={}, source={}, limit=None, shard_size=10, shards=[
        ShardEntry(0, "shard-000000.safetensors", 0, 10, 10, 0, 100, 1000, 9, "0" * 64)]).write(p / "store" / "manifest.json")
    got = restore(RunFolder(p), RunFolder(tmp_path / "fresh"))
    assert got == ["store/manifest.json"]


def test_colab_machine_plans_local_work_and_drive_persistence(tmp_path: Path) -> None:
    content = tmp_path / "content"
    drive = content / "drive" / "MyDrive"
    drive.mkdir(parents=True)
    m = detect(environ={"COLAB_RELEASE_TAG": "release-colab_20261101", "COLAB_GPU": "1"},
               memory=lambda: (int(12.7 * GIB), int(11.8 * GIB)), cgroup_root=tmp_path / "none", cpus=lambda: 2,
               gpu=lambda: Gpu("Tesla T4", 15 * GIB, 14 * GIB, (7, 5)), disk_free=lambda p: 80 * GIB,
               home_cache=str(tmp_path / "cache"), content_dir=str(content), drive_dir=str(drive))
    plan = make_plan(m, "full")
    assert plan.work_dir == str(content / "colab_kit") and not plan.work_dir.startswith(str(drive))
    assert plan.persist_dir == str(drive / "colab_kit")
    assert np.isclose(plan.batch_edges, int(14 * GIB * 0.7) // 6000)


def test_stop_during_conversion_returns_stopped_with_shards_kept(tmp_path: Path) -> None:
    from colab_kit.run.pipeline import run

    plan = make_plan(detect(), "debug", graph_kind="radius", shard_size=50,
                     convert_workers=1, work_dir=str(tmp_path))
    polls = []
    res = run(plan, progress=False, log_to_file=False, should_stop=lambda: polls.append(1) or len(polls) > 3)
    assert res.metrics["status"] == "stopped"
    assert shard_count(res.run_dir / "store") == 3 and not (res.run_dir / "checkpoints").exists()


def test_a_structure_only_store_reaches_the_persist_dir_shard_by_shard(tmp_path: Path) -> None:
    """graph_edges=device keeps its store in store-structures/: each committed shard is mirrored at once (before,
    only store/ was, so a disconnect during conversion lost every shard), and a new runtime restores them."""
    work, persist = tmp_path / "work", tmp_path / "drive"
    args = ["run", "--mode", "debug", "--graph-kind", "radius", "--set", "graph_edges=device", "--set", "n_samples=600",
            "--set", "shard_size=20", "--set", "convert_workers=1", "--set", "epochs=1",
            "--work-dir", str(work), "--persist-dir", str(persist)]
    name = "mp_eform_cgcnn_3000-radius-cgcnn-debug"
    local, mirrored = work / name / "store-structures", persist / name / "store-structures"
    assert kill_when(args, lambda: shard_count(mirrored) >= 5)  # mid-conversion: a runtime disconnect
    n = shard_count(mirrored)
    assert 5 <= n < 30 and not (persist / name / "store").exists()
    kept = {p.name: p.read_bytes() for p in mirrored.glob("shard-*")}
    shutil.rmtree(work)  # a new runtime: /content is empty
    again = run_cli(*args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resuming {local}: {n} shards already done" in again.stderr  # restored, not rebuilt
    for f, data in kept.items():
        assert (local / f).read_bytes() == data


def test_a_run_keeps_its_graph_resolution_when_free_ram_changes(tmp_path: Path) -> None:
    """A radius graph's cutoff shrinks when less than 4 GiB RAM is free; a run whose first call planned 8 Å on a
    roomy machine must go on with its 8 Å store when a later call finds RAM tight (a benchmark's next fold, a
    Colab session with other work), not fail on a store 'built with other settings'."""
    import dataclasses

    from colab_kit.run import folder_for, run

    roomy = dataclasses.replace(detect(), gpu=None, ram_available=16 * GIB)
    tight = dataclasses.replace(roomy, ram_available=3 * GIB)
    sets = dict(model="cgcnn", device="cpu", work_dir=str(tmp_path), persist_dir=None, n_samples=40, epochs=1,
                hidden=16, n_conv=1, convert_workers=1)
    first = make_plan(roomy, "debug", **sets)
    later = make_plan(tight, "debug", **{**sets, "epochs": 2})
    assert (first.cutoff, first.max_neighbors) == (8.0, 12) and (later.cutoff, later.max_neighbors) == (6.0, 8)
    assert run(first, progress=False).metrics["status"] == "finished"
    res = run(later, progress=False)
    assert res.metrics["status"] == "finished" and res.metrics["epochs"] == 2  # resumed its checkpoint
    saved = json.loads(folder_for(later).plan.read_text())
    assert (saved["cutoff"], saved["max_neighbors"]) == (8.0, 12)
    assert saved["reasons"]["cutoff"].startswith("kept from this run's store")
    # a resolution the user asks for is not overridden: the store refuses it, in one line
    asked = make_plan(roomy, "debug", **{**sets, "cutoff": 5.0})
    with pytest.raises(Exception, match="holds a store built with other data or settings"):
        run(asked, progress=False)
