"""Data-parallel training under torchrun (Gloo, 2 CPU ranks, real processes) and one store built by several hosts.

Every multi-rank test launches the real ``torchrun``; a kill is a SIGKILL of one rank's process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from helpers import SHIPPED, run_cli

from colab_kit.loader.batching import BudgetBatchSampler, rank_batches
from colab_kit.plan.machine import GIB, Machine, detect
from colab_kit.plan.planner import make_plan
from colab_kit.store.format import GraphStore
from colab_kit.util.distributed import DistributedError, World, world_from_env
from colab_kit.util.locks import LOCK_NAME

HERE = Path(__file__).parent
ENV = {"OMP_NUM_THREADS": "1"}  # two ranks on two cores


def torchrun(*args: str, nproc: int = 2, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args],
                          capture_output=True, text=True, env={**os.environ, **ENV}, timeout=timeout)


@pytest.fixture(scope="module")
def store_dir(shipped_store: Callable[..., Path]) -> Path:
    return shipped_store("radius", limit=300)


# ---------------------------------------------------------------- the partition rule

def test_rank_batches_partition_every_graph_once_with_equal_steps() -> None:
    rng = np.random.default_rng(0)
    for world in (2, 3, 4):
        for n_batches in range(1, 12):
            batches = [list(range(10 * b, 10 * b + int(rng.integers(1, 5)))) for b in range(n_batches)]
            shares = [rank_batches(batches, r, world) for r in range(world)]
            steps = {len(mine) for mine, _ in shares}
            assert steps == {-(-n_batches // world)}  # every rank the same number of steps
            counted = [i for mine, info in shares for b, (n, _) in zip(mine, info) for i in b[:n]]
            assert sorted(counted) == sorted(i for b in batches for i in b)  # each graph exactly once
            for mine, info in shares:
                for b, (n, _total) in zip(mine, info):
                    assert n in (0, len(b)) and (n > 0 or len(b) == 1)  # a padding batch: one graph, weight 0
            # the step's total is the same on every rank (the loss scale of one global step)
            assert len({tuple(t for _, t in info) for _, info in shares}) == 1


def test_sampler_offset_is_global_so_a_resume_repartitions(store_dir: Path) -> None:
    store = GraphStore(store_dir)
    atoms, edges = store.sizes()
    idx = np.arange(len(store))

    def sampler(rank: int, world: int) -> BudgetBatchSampler:
        return BudgetBatchSampler(idx, atoms, edges, 10_000, 100_000, 16, seed=3, rank=rank, world=world)

    two = [sampler(r, 2) for r in range(2)]
    steps = len(two[0].batches())
    assert steps == len(two[1].batches())
    consumed = 0
    for _ in range(steps // 2):  # half the epoch on 2 ranks
        for s in two:
            iter(s)
        total = two[0].step_info[0][1]
        assert total == two[1].step_info[0][1]
        for s in two:
            s.advance(total)
        consumed += total
    assert two[0].offset == two[1].offset == consumed
    one = sampler(0, 1)
    one.load_state_dict(two[0].state_dict())
    three = [sampler(r, 3) for r in range(3)]
    for s in three:
        s.load_state_dict(two[0].state_dict())
    rest = sorted(one.order()[consumed:].tolist())
    assert sorted(i for b in one.batches() for i in b) == rest
    counted = [i for s in three for b, (n, _) in zip(iter(s), s.step_info) for i in b[:n]]
    assert sorted(counted) == rest  # 3 ranks take up exactly the graphs 2 ranks had left


# ---------------------------------------------------------------- the plan knows the world

def _machine(world: World) -> Machine:
    return Machine(ram_total=16 * GIB, ram_available=12 * GIB, cgroup_limit=None, cpus=8, gpu=None, is_colab=False,
                   drive_mounted=False, home_cache="/tmp/colab_kit-test", world=world)


def test_world_from_torchrun_environment_and_plan() -> None:
    assert world_from_env({}) == World()
    w = world_from_env({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"})
    assert (w.rank, w.local_rank, w.size, w.local_size) == (3, 1, 4, 2) and w.distributed and not w.is_main
    with pytest.raises(DistributedError, match="RANK=4 .*inconsistent"):
        world_from_env({"RANK": "4", "WORLD_SIZE": "2"})
    with pytest.raises(DistributedError, match="WORLD_SIZE='two' is not an integer"):
        world_from_env({"WORLD_SIZE": "two"})
    one, two = make_plan(_machine(World()), "debug"), make_plan(_machine(w), "debug")
    assert (one.world_size, one.rank) == (1, 0) and (two.world_size, two.rank, two.local_rank) == (4, 3, 1)
    assert "torchrun: 4 ranks, 2 on this host" in two.reasons["world_size"]
    assert two.workers <= 8 // 2 and two.train_memory < one.train_memory  # the host's RAM and CPUs are shared
    assert ("torchrun", "rank 3 of 4 (local rank 1 of 2 on this host)") in _machine(w).rows()
    detected = detect(environ={"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert detected.world == World(1, 1, 2, 2)


def test_detect_says_rank_and_one_process_commands_are_refused() -> None:
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
    res = run_cli("detect", env=env)
    assert res.returncode == 0 and "rank 0 of 2 (local rank 0 of 2 on this host)" in res.stdout
    assert "world_size" in res.stdout
    res = run_cli("verify", "/nonexistent", env=env)
    assert res.returncode == 2 and "`verify` runs in one process, not under torchrun" in res.stderr
    assert "Traceback" not in res.stderr


def test_panel_refuses_a_distributed_run(tmp_path: Path) -> None:
    pytest.importorskip("ipywidgets")
    from colab_kit.notebook.panel import ControlPanel

    world = World(1, 1, 2, 2)
    panel = ControlPanel(machine=_machine(world), background=False)
    assert panel.start() is False
    assert "rank 1 of a 2-rank torchrun launch" in panel.error_box.value and "torchrun --nproc_per_node" in panel.error_box.value


# ---------------------------------------------------------------- real 2-rank runs

def test_two_ranks_partition_each_epoch_and_gather_the_evaluation(store_dir: Path, tmp_path: Path) -> None:
    res = torchrun(str(HERE / "ddp_record.py"), str(store_dir), str(tmp_path / "out"), str(tmp_path / "rec"))
    assert res.returncode == 0, res.stderr[-3000:]
    store = GraphStore(store_dir)
    ids = store.ids()
    rec = [json.loads((tmp_path / "rec" / f"rank{r}.json").read_text()) for r in range(2)]
    from colab_kit.loader.splits import splits_for

    sys.path.insert(0, str(HERE))
    from ddp_record import plan_for

    plan1 = plan_for(store)
    train = sorted(splits_for(store, plan1)["train"].tolist())
    epochs = {}
    for r in range(2):
        assert rec[r]["world"] == 2
        for it in rec[r]["iterations"]:
            assert it["world"] == 2 and it["offset"] == 0
            epochs.setdefault(it["epoch"], {})[r] = it  # the last iteration of an epoch is the one trained
    assert sorted(epochs) == [0, 1]
    for e, by_rank in epochs.items():
        assert len(by_rank[0]["batches"]) == len(by_rank[1]["batches"])
        counted = [i for it in by_rank.values() for b, (n, _) in zip(it["batches"], it["weights"]) for i in b[:n]]
        assert sorted(counted) == train, f"epoch {e}: not a partition of the training split"
    # the DataLoader fed each rank the batches its sampler planned, in order
    for r in range(2):
        planned = [[ids[i] for i in b] for e in (0, 1) for b in epochs[e][r]["batches"]]
        assert rec[r]["trained"][-len(planned):] == planned
    # evaluation gathered across ranks = one process's evaluation of the same weights, graph for graph
    from colab_kit.training.evaluate import evaluate_weights

    single = evaluate_weights(store, plan1, tmp_path / "out" / "best.pt")
    gathered = np.load(tmp_path / "rec" / "test.npz")
    assert len(gathered["target"]) == len(splits_for(store, plan1)["test"])
    np.testing.assert_array_equal(gathered["target"], single["target"])
    np.testing.assert_allclose(gathered["pred"], single["pred"], rtol=0, atol=1e-6)
    saved = torch.load(tmp_path / "out" / "checkpoints" / "latest.pt", weights_only=True)
    assert saved["world_size"] == 2 and len(saved["rng_ranks"]) == 2 and saved["status"] == "finished"


TRAIN = ("-m", "colab_kit", "train", "--model", "cgcnn", "--set", "hidden=32", "--set", "epochs=3", "--set", "batch_size=16",
         "--set", "batch_atoms=100000", "--set", "batch_edges=1000000", "--set", "checkpoint_minutes=0.0001")


def _kill_rank(args: list[str], latest: Path, rank: int, min_step: int) -> dict:
    """Launch torchrun; SIGKILL the process of ``rank`` once the checkpoint is at ``min_step`` or later, mid-epoch."""
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **ENV})
    try:
        t0 = time.monotonic()
        while proc.poll() is None and time.monotonic() - t0 < 300:
            try:
                state = torch.load(latest, map_location="cpu", weights_only=True)
            except Exception:  # noqa: BLE001 - not written yet, or being replaced
                state = None
            if state is not None and state["step"] >= min_step and state["sampler"]["offset"] > 0:
                for child in psutil.Process(proc.pid).children(recursive=True):
                    if child.environ().get("RANK") == str(rank) and "colab_kit" in " ".join(child.cmdline()):
                        child.send_signal(signal.SIGKILL)
                        proc.wait(timeout=120)
                        return state
            time.sleep(0.05)
        raise AssertionError(f"torchrun ended (rc {proc.poll()}) before step {min_step} was checkpointed")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def reference(store_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted 2-rank training run."""
    out = tmp_path_factory.mktemp("ddp-ref") / "ref"
    res = torchrun(*TRAIN, "--store", str(store_dir), "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def assert_same_weights(a_dir: Path, b_dir: Path) -> None:
    a = torch.load(a_dir / "checkpoints" / "latest.pt", weights_only=True)
    b = torch.load(b_dir / "checkpoints" / "latest.pt", weights_only=True)
    assert a["step"] == b["step"] and a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
    assert [h["val_mae"] for h in a["history"]] == [h["val_mae"] for h in b["history"]]
    best_a, best_b = (torch.load(d / "best.pt", weights_only=True) for d in (a_dir, b_dir))
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_a)


@pytest.mark.long  # 30 s; the SIGKILL-of-a-rank test stays in the default suite
def test_sigterm_to_torchrun_stops_every_rank_at_one_step_and_resumes(store_dir: Path, reference: Path, tmp_path: Path) -> None:
    args = [*TRAIN, "--store", str(store_dir), "--out", str(tmp_path / "run")]
    latest = tmp_path / "run" / "checkpoints" / "latest.pt"
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, **ENV})
    t0 = time.monotonic()
    while proc.poll() is None and time.monotonic() - t0 < 300:
        try:
            if torch.load(latest, map_location="cpu", weights_only=True)["step"] >= 4:
                break
        except Exception:  # noqa: BLE001 - not written yet, or being replaced
            pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # what a scheduler or `kill` sends; torchrun passes it to every rank
    _, err = proc.communicate(timeout=120)
    state = torch.load(latest, map_location="cpu", weights_only=True)
    assert state["status"] == "training" and len(state["rng_ranks"]) == 2, err[-2000:]
    done = torchrun(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_weights(reference, tmp_path / "run")


def test_sigkill_of_one_rank_then_the_same_command_gives_the_uninterrupted_weights(store_dir: Path, reference: Path,
                                                                                    tmp_path: Path) -> None:
    args = [*TRAIN, "--store", str(store_dir)]
    out = tmp_path / "killed"
    killed_at = _kill_rank([*args, "--out", str(out)], out / "checkpoints" / "latest.pt", rank=1, min_step=5)
    assert killed_at["sampler"]["offset"] > 0
    partial = tmp_path / "partial"
    shutil.copytree(out, partial)  # the same kill, resumed below by one process instead
    done = torchrun(*args, "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming training at epoch" in done.stderr
    assert_same_weights(reference, out)

    # another world size: one process picks up the 2-rank checkpoint and re-partitions the rest of the epoch
    solo = run_cli(*args[2:], "--out", str(partial), env=ENV)
    assert solo.returncode == 0, solo.stderr[-3000:]
    assert "written by 2 rank(s), this launch has 1" in solo.stderr
    c = torch.load(partial / "checkpoints" / "latest.pt", weights_only=True)
    assert c["status"] == "finished" and len(c["history"]) == 3 and c["world_size"] == 1


@pytest.mark.long  # 30 s; fit/evaluate under torchrun stay in the default suite
def test_run_under_torchrun_rank0_reports_every_test_graph(tmp_path: Path) -> None:
    work = tmp_path / "work"
    common = ["--mode", "debug", "--model", "cgcnn", "--work-dir", str(work), "--set", "n_samples=120", "--set", "epochs=2",
              "--set", "hidden=32"]
    res = torchrun("-m", "colab_kit", "run", *common)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("Done: test (n=12)") == 1  # rank 0 speaks; 10 % of 120 graphs, each counted once
    (run_dir,) = work.iterdir()
    metrics = json.loads((run_dir / "report" / "metrics.json").read_text())
    assert metrics["test_n"] == 12
    assert json.loads((run_dir / "plan.json").read_text())["world_size"] == 2
    refused = torchrun("-m", "colab_kit", "run", *common, "--fresh")
    assert refused.returncode != 0 and "--fresh would delete" in refused.stderr


@pytest.mark.long  # about 2 min: CHGNet's double backward on two CPU ranks
def test_potential_under_torchrun_reports_every_test_frame(tmp_path: Path) -> None:
    """A potential (CHGNet on the shipped DFT frames) trains on two ranks; every rank takes part in each gathered
    evaluation (the best weights, then CHGNet as shipped), and rank 0 reports each test frame once."""
    work = tmp_path / "work"
    res = torchrun("-m", "colab_kit", "run", "--task", "potential", "--mode", "debug", "--work-dir", str(work),
                   "--set", "n_samples=24", "--set", "epochs=1", "--set", "persist_dir=null", timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("Done: test (n=") == 1 and "force MAE" in res.stdout
    (run_dir,) = work.iterdir()
    metrics = json.loads((run_dir / "report" / "metrics.json").read_text())
    assert json.loads((run_dir / "plan.json").read_text())["world_size"] == 2
    potential = metrics["potential"]
    assert potential["test"]["force_mae"] > 0 and potential["shipped_test"]["force_mae"] > 0
    assert metrics["test_n"] == 2  # the test split of 24 frames, each frame counted once (not once per rank)


# ---------------------------------------------------------------- one store from several hosts

def test_parts_merged_equal_the_single_host_store_and_verify_finds_damage(tmp_path: Path) -> None:
    src = str(SHIPPED)
    common = ["--graph-kind", "radius", "--limit", "450", "--set", "shard_size=100"]
    for i in range(3):
        assert run_cli("convert", src, *common, "--shard", f"{i}/3", "--out", str(tmp_path / f"host{i}")).returncode == 0
    assert run_cli("convert", src, *common, "--out", str(tmp_path / "single")).returncode == 0
    missing = run_cli("merge", str(tmp_path / "host0"), str(tmp_path / "host2"), "--out", str(tmp_path / "m"))
    assert missing.returncode == 1 and "part(s) 1/3 missing" in missing.stderr and "Traceback" not in missing.stderr
    res = run_cli("merge", *(str(tmp_path / f"host{i}") for i in range(3)), "--out", str(tmp_path / "merged"))
    assert res.returncode == 0, res.stderr
    single, merged = tmp_path / "single", tmp_path / "merged"
    names = sorted(p.name for p in single.iterdir() if p.name != LOCK_NAME)  # the writer's lock is not the store
    assert names == sorted(p.name for p in merged.iterdir() if p.name != LOCK_NAME) and len(names) == 6  # 5 + manifest
    for name in names:
        assert (single / name).read_bytes() == (merged / name).read_bytes(), name
    ok = run_cli("verify", str(merged))
    assert ok.returncode == 0 and "every sha256 matches" in ok.stdout
    # a flipped byte, same size: verify names the shard, and convert rebuilds it once it is deleted
    shard = merged / "shard-000002.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    bad = run_cli("verify", str(merged))
    assert bad.returncode == 1 and "shard-000002.safetensors: checksum mismatch" in bad.stderr
    shard.unlink()
    assert run_cli("convert", src, *common, "--out", str(merged)).returncode == 0
    assert shard.read_bytes() == (single / shard.name).read_bytes()
    # parts of another store are refused, naming both folders
    assert run_cli("convert", src, "--graph-kind", "radius", "--limit", "300", "--set", "shard_size=100", "--shard", "1/3",
                   "--out", str(tmp_path / "other1")).returncode == 0
    mixed = run_cli("merge", str(tmp_path / "host0"), str(tmp_path / "other1"), str(tmp_path / "host2"), "--out", str(tmp_path / "x"))
    assert mixed.returncode == 1 and "parts of different stores" in mixed.stderr


@pytest.mark.long
def test_no_rank_outlives_a_killed_launcher_and_the_same_command_resumes(tmp_path: Path) -> None:
    """torchrun starts its ranks in sessions of their own: SIGKILL of the launcher alone (a closed terminal, a killed
    launcher script) left them running as orphans, rank 0 converting into the folder the rerun converts into (a rerun
    that failed under load). Now the kernel sends each rank SIGTERM when its launcher dies: they stop within seconds,
    and the same command resumes the conversion."""
    from helpers import shard_count

    work = tmp_path / "work"
    args = ["-m", "colab_kit", "run", "--mode", "debug", "--model", "cgcnn", "--work-dir", str(work), "--set",
            "n_samples=1500", "--set", "shard_size=25", "--set", "convert_workers=1", "--set", "epochs=1"]
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **ENV},
                            start_new_session=True)
    store = work / "mp_eform_cgcnn_3000-radius-cgcnn-debug" / "store"
    t0 = time.monotonic()
    while shard_count(store) < 3 and time.monotonic() - t0 < 300:
        time.sleep(0.05)
    ranks = [c for c in psutil.Process(proc.pid).children(recursive=True) if "colab_kit" in " ".join(c.cmdline())]
    assert len(ranks) == 2 and shard_count(store) < 60  # rank 0 mid-conversion, rank 1 waiting for it
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    t_kill = time.monotonic()
    _, alive = psutil.wait_procs(ranks, timeout=120)
    for orphan in alive:  # a failing run must not leave them behind
        orphan.kill()
    assert not alive and time.monotonic() - t_kill < 60, [p.pid for p in alive]  # stopped, not converting on
    assert shard_count(store) < 60
    again = torchrun(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming" in again.stderr and "conversion reused" in again.stderr
