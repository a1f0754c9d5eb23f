"""Trust nothing on disk: a flipped byte in a shard, a checkpoint or the best weights, a damaged manifest, locally
or on the persist dir, is found before it is used; what can be rebuilt is rebuilt, and nothing damaged is trained
on or restored."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SHIPPED, run_cli

from colab_kit.graphs import get_converter
from colab_kit.plan.machine import detect
from colab_kit.plan.planner import make_plan
from colab_kit.store.build import build_store
from colab_kit.store.format import GraphStore, StoreError
from colab_kit.training.checkpoint import LATEST, PREVIOUS, load_checkpoint
from colab_kit.training.trainer import fit


def _flip_target_byte(store_dir: Path, shard: int = 0, graph: int = 3) -> None:
    """Flip the sign byte of one graph's float64 target in a shard file (same size, valid safetensors)."""
    path = store_dir / f"shard-{shard:06d}.safetensors"
    data = bytearray(path.read_bytes())
    n = int.from_bytes(data[:8], "little")
    start, _ = json.loads(data[8:8 + n])["target"]["data_offsets"]
    data[8 + n + start + 8 * graph + 7] ^= 0x80  # the byte holding the sign: -1.91 becomes 1.91
    path.write_bytes(bytes(data))


def _flip_bit(path: Path, at: float = 0.6) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.fixture
def radius_store(shipped_store: Callable[..., Path]) -> Path:
    return shipped_store("radius", limit=180, shard_size=60)  # the tests copy it before they damage it


def test_a_flipped_byte_in_a_local_shard_is_never_trained_on(radius_store: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(radius_store, store)
    _flip_target_byte(store)
    args = ["train", "--store", str(store), "--graph-kind", "radius", "--set", "epochs=1", "--out", str(tmp_path / "t")]
    res = run_cli(*args)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert f"shard {store / 'shard-000000.safetensors'} is damaged: its sha256 is not the manifest's" in res.stderr
    assert not (tmp_path / "t" / "best.pt").exists()
    # the same conversion command rebuilds exactly that shard, and the store is the undamaged one again
    conv = build_store(SHIPPED, store, get_converter("radius"), shard_size=60, limit=180, progress=False)
    assert conv.shards_reused == 2
    for f in radius_store.glob("shard-*"):
        assert (store / f.name).read_bytes() == f.read_bytes(), f.name
    assert run_cli(*args).returncode == 0
    assert GraphStore(store).targets()[3] == GraphStore(radius_store).targets()[3]


def test_a_store_opened_in_a_process_checks_each_shard_once(radius_store: Path, tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    shutil.copytree(radius_store, store_dir)
    store = GraphStore(store_dir)
    assert np.isfinite(store.targets()).all()  # every shard mapped and checked
    _flip_target_byte(store_dir, shard=1)
    fresh = GraphStore(store_dir)  # a new open, in this process: the file changed, so it is checked again
    with pytest.raises(StoreError, match="shard-000001.safetensors is damaged"):
        fresh.targets()


def _plan(**kw: object):
    return make_plan(detect(), "debug", graph_kind="radius", epochs=2, batch_size=16, batch_atoms=4000,
                     batch_edges=60000, workers=0, **kw)


def test_damaged_checkpoints_and_best_weights_are_found_and_recovered(radius_store: Path, tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    from colab_kit.training.evaluate import evaluate_weights

    store = GraphStore(radius_store)
    plan = _plan()
    fit(store, plan, tmp_path, progress=False)
    ck = tmp_path / "checkpoints"
    previous = torch.load(ck / PREVIOUS, weights_only=True)
    _flip_bit(ck / LATEST)  # one bit, same size: torch may well load it
    with caplog.at_level(logging.WARNING):
        state = load_checkpoint(ck)
    assert state["step"] == previous["step"] and "is damaged (its sha256 is not the one recorded" in caplog.text
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    ref = evaluate_weights(store, plan, tmp_path / "best.pt")
    _flip_bit(tmp_path / "best.pt", at=0.9)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        got = evaluate_weights(store, plan, tmp_path / "best.pt")
    assert "best.pt is damaged: rebuilt from the checkpoint's weights (epoch" in caplog.text
    assert got["mae"] == ref["mae"]
    again = torch.load(tmp_path / "best.pt", weights_only=True)
    assert all(torch.equal(best[k], again[k]) for k in best)
    (tmp_path / "best.pt").unlink()  # lost: the same
    assert evaluate_weights(store, plan, tmp_path / "best.pt")["mae"] == ref["mae"]
    # no checkpoint to rebuild from: one line that names what is missing (not a path to a file that does not exist)
    empty = tmp_path / "empty"
    empty.mkdir()
    res = run_cli("evaluate", "--store", str(radius_store), "--weights", str(empty / "best.pt"), "--graph-kind", "radius")
    assert res.returncode == 1 and "no model weights at" in res.stderr and "no checkpoint in" in res.stderr
    assert "Traceback" not in res.stderr
    res = run_cli("evaluate", "--store", str(radius_store), "--weights", "/etc/passwd", "--graph-kind", "radius")
    assert res.returncode == 1 and "/etc/passwd does not hold cgcnn weights" in res.stderr
    assert "Traceback" not in res.stderr and "root:" not in res.stderr


RUN = ["run", "--mode", "debug", "--graph-kind", "radius", "--set", "n_samples=120", "--set", "shard_size=30",
       "--set", "epochs=2", "--set", "convert_workers=1"]
NAME = "mp_eform_cgcnn_3000-radius-cgcnn-debug"


def test_the_persist_dir_restores_only_what_passes_its_check(tmp_path: Path) -> None:
    """A new runtime restores from Drive: a damaged persisted checkpoint and a damaged persisted manifest are left
    there (said in one line each), the run resumes from the previous checkpoint and rebuilds the store."""
    work, persist = tmp_path / "work", tmp_path / "drive"
    first = run_cli(*RUN, "--work-dir", str(work), "--persist-dir", str(persist))
    assert first.returncode == 0, first.stderr[-2000:]
    metrics = json.loads((work / NAME / "report" / "metrics.json").read_text())
    shutil.rmtree(work)  # a new runtime: /content is empty, Drive is not
    _flip_bit(persist / NAME / "checkpoints" / LATEST)
    (persist / NAME / "store" / "manifest.json").write_text('{"shards": [')  # cut short
    again = run_cli(*RUN, "--work-dir", str(work), "--persist-dir", str(persist))
    assert again.returncode == 0, again.stderr[-2000:]
    assert "persisted manifest" in again.stderr and "is damaged" in again.stderr and "not restored" in again.stderr
    assert f"persisted file {persist / NAME / 'checkpoints' / LATEST} is damaged" in again.stderr
    assert "resuming from the previous checkpoint" in again.stderr or "training already finished" in again.stderr
    assert json.loads((work / NAME / "report" / "metrics.json").read_text())["test_mae"] == metrics["test_mae"]
    # the mirror put sound files back: the persisted manifest reads, and its shards match it
    m = json.loads((persist / NAME / "store" / "manifest.json").read_text())
    assert m["complete"] and len(m["shards"]) == 4
    assert run_cli("verify", str(persist / NAME / "store")).returncode == 0


def test_a_damaged_local_manifest_is_rebuilt_by_the_same_command(radius_store: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(radius_store, store)
    (store / "manifest.json").write_text("{not json")
    with pytest.raises(StoreError, match="manifest.json is damaged .*run the same `run` or `convert` command again"):
        GraphStore(store)
    res = build_store(SHIPPED, store, get_converter("radius"), shard_size=60, limit=180, progress=False)
    assert res.complete and res.n_graphs == len(GraphStore(radius_store))
    assert (store / "manifest.json.damaged").exists()
    assert (store / "manifest.json").read_bytes() == (radius_store / "manifest.json").read_bytes()


def test_a_full_disk_is_one_line_and_loses_nothing(small_disk: Path, tmp_path: Path) -> None:
    """Conversion into a 2 MiB file system: one line naming the folder, the space needed and free, and the fix; the
    shards that fit stay valid, and the same command on a bigger disk goes on from them."""
    out = small_disk / "store"
    res = run_cli("convert", str(SHIPPED), "--graph-kind", "chgnet", "--out", str(out), "--limit", "600",
                  "--shard-size", "100", "--workers", "1")
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    line = next(ln for ln in res.stderr.splitlines() if ln.startswith("error:"))
    assert f"no space left in {out}" in line and "MB needed" in line and "free disk space or pass --work-dir" in line
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["shards"] and not manifest["complete"]
    big = tmp_path / "store"
    shutil.copytree(out, big)
    again = run_cli("convert", str(SHIPPED), "--graph-kind", "chgnet", "--out", str(big), "--limit", "600",
                    "--shard-size", "100", "--workers", "1")
    assert again.returncode == 0 and f"resuming {big}: {len(manifest['shards'])} shards already done" in again.stderr
    assert run_cli("verify", str(big)).returncode == 0


def test_a_read_only_persist_dir_stops_mirroring_once_and_the_run_goes_on(read_only_dir: Path, tmp_path: Path) -> None:
    """The persist dir turns read-only after the run started (Drive unmounted, quota): each copy fails; after three
    in a row mirroring stops for the run, said once, and the run ends normally, quickly."""
    import time

    from colab_kit.run.persist import Mirror
    from colab_kit.run_folder import RunFolder

    persist = tmp_path / "drive"
    persist.mkdir()
    run_dir = tmp_path / "run"
    (run_dir / "store").mkdir(parents=True)
    for i in range(6):
        (run_dir / "store" / f"shard-{i:06d}.safetensors").write_bytes(b"x" * 100)
    mirror = Mirror(RunFolder(run_dir), RunFolder(read_only_dir / "p"))
    t0 = time.monotonic()
    mirror.push_all()
    assert time.monotonic() - t0 < 10 and mirror.persist is None and len(mirror.failures) == 3
    assert mirror.push("store/shard-000005.safetensors")  # stopped: nothing more is tried


def test_store_and_checkpoint_files_are_readable_by_the_group(radius_store: Path, tmp_path: Path) -> None:
    import os
    import stat

    old = os.umask(0o022)
    try:
        store = tmp_path / "store"
        build_store(SHIPPED, store, get_converter("radius"), shard_size=60, limit=60, progress=False)
        fit(GraphStore(radius_store), _plan(), tmp_path / "run", progress=False)
    finally:
        os.umask(old)
    for path in [*store.iterdir(), tmp_path / "run" / "best.pt", tmp_path / "run" / "checkpoints" / LATEST]:
        if path.name.startswith(".colab_kit"):
            continue
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, (path, oct(path.stat().st_mode))
