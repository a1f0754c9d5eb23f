"""plan: concrete decisions on fixture machines, override validation, purity."""

from __future__ import annotations

import dataclasses

import pytest
from helpers import run_cli

from colab_kit.plan.machine import GIB, Gpu, Machine
from colab_kit.plan.planner import MODES, PlanError, make_plan


def colab_free(drive: bool = True) -> Machine:
    return Machine(
        ram_total=int(12.7 * GIB), ram_available=int(11.5 * GIB), cgroup_limit=None, cpus=2,
        gpu=Gpu("Tesla T4", 15 * GIB, int(14.5 * GIB), (7, 5)), is_colab=True, drive_mounted=drive,
        disk_free={"/content": 80 * GIB, "/root/.cache/colab_kit": 80 * GIB}, home_cache="/root/.cache/colab_kit",
    )


def colab_pro_a100() -> Machine:
    return Machine(
        ram_total=51 * GIB, ram_available=49 * GIB, cgroup_limit=None, cpus=8,
        gpu=Gpu("NVIDIA A100-SXM4-40GB", 40 * GIB, 39 * GIB, (8, 0)), is_colab=True, drive_mounted=False,
        disk_free={"/content": 160 * GIB}, home_cache="/root/.cache/colab_kit",
    )


def colab_pro_l4() -> Machine:
    return Machine(
        ram_total=51 * GIB, ram_available=50 * GIB, cgroup_limit=None, cpus=8,
        gpu=Gpu("NVIDIA L4", 22 * GIB, 22 * GIB, (8, 9)), is_colab=True, drive_mounted=True,
        disk_free={"/content": 200 * GIB}, home_cache="/root/.cache/colab_kit",
    )


def laptop_8gb() -> Machine:
    return Machine(
        ram_total=8 * GIB, ram_available=5 * GIB, cgroup_limit=None, cpus=4, gpu=None, is_colab=False,
        drive_mounted=False, disk_free={"/home/u/.cache/colab_kit": 50 * GIB}, home_cache="/home/u/.cache/colab_kit",
    )


def container_3gb() -> Machine:
    # what detect() returns for a 64 GiB host with a 3 GiB cgroup limit (see test_detect)
    return Machine(
        ram_total=3 * GIB, ram_available=int(2.5 * GIB), cgroup_limit=3 * GIB, cpus=16, gpu=None, is_colab=False,
        drive_mounted=False, disk_free={"/root/.cache/colab_kit": 500 * GIB}, home_cache="/root/.cache/colab_kit",
    )


def test_colab_free_t4() -> None:
    p = make_plan(colab_free(), "debug")
    assert p.device == "cuda" and p.amp == "fp16"  # T4 has no bf16
    assert p.work_dir == "/content/colab_kit"
    assert p.persist_dir == "/content/drive/MyDrive/colab_kit"
    assert p.workers == 0 and p.pin_memory and not p.persistent_workers and p.prefetch_factor is None
    assert "16x faster" in p.reasons["workers"]  # chgnet graphs: receiving from workers costs more than reading
    assert make_plan(colab_free(), "debug", graph_kind="radius").workers == 0  # 2 CPUs
    assert p.batch_edges == int(14.5 * GIB * 0.7) // 6000
    assert p.eval_batch_size == 4 * p.batch_size == 256
    assert p.convert_workers == 2
    assert (p.cutoff, p.bond_cutoff, p.max_neighbors) == (6.0, 3.0, None)
    assert (p.n_samples, p.epochs) == (300, 2)
    assert all(p.reasons[name] for name, _, _ in p.rows())


def test_colab_without_drive_does_not_persist() -> None:
    p = make_plan(colab_free(drive=False), "quick")
    assert p.persist_dir is None and p.work_dir == "/content/colab_kit"
    assert (p.n_samples, p.epochs) == (3000, 10)


def test_colab_pro_a100_and_l4_use_bf16() -> None:
    a = make_plan(colab_pro_a100(), "full")
    assert a.amp == "bf16" and a.workers == 0 and a.convert_workers == 8  # chgnet graphs: main process
    assert make_plan(colab_pro_a100(), "full", graph_kind="radius").workers == 4
    assert a.n_samples is None and a.epochs == MODES["full"]["epochs"]
    assert a.batch_edges == int(39 * GIB * 0.7) // 6000
    l4 = make_plan(colab_pro_l4(), "full", graph_kind="radius")
    assert l4.amp == "bf16" and l4.model == "cgcnn" and (l4.cutoff, l4.max_neighbors) == (8.0, 12)
    assert l4.persist_dir == "/content/drive/MyDrive/colab_kit"


def test_cpu_laptop_8gb() -> None:
    assert make_plan(laptop_8gb(), "quick", graph_kind="radius").workers == 2  # 4 CPUs: half load data
    p = make_plan(laptop_8gb(), "quick")
    assert p.device == "cpu" and p.amp == "off" and not p.pin_memory
    assert p.workers == 0 and not p.persistent_workers  # chgnet graphs load in the main process
    assert p.work_dir == "/home/u/.cache/colab_kit" and p.persist_dir is None
    assert p.batch_edges == int(5 * GIB * 0.4) // 6000
    assert p.convert_workers == 4


def test_container_follows_cgroup_not_host() -> None:
    p = make_plan(container_3gb(), "full", graph_kind="radius")
    assert p.workers == 0 and not p.persistent_workers and p.prefetch_factor is None  # 2.5 GiB < 4 GiB
    assert p.convert_workers == 3  # (2.5 GiB - 1 GiB) / 450 MB, not 16 CPUs
    assert (p.cutoff, p.max_neighbors) == (6.0, 8)  # low RAM: coarser radius graphs
    assert p.batch_edges == int(2.5 * GIB * 0.4) // 2000


def test_low_disk_moves_work_dir_or_shrinks_shards() -> None:
    m = Machine(
        ram_total=16 * GIB, ram_available=14 * GIB, cgroup_limit=None, cpus=4, gpu=None, is_colab=False,
        drive_mounted=False, disk_free={"/root/.cache/colab_kit": int(1.5 * GIB), "/mnt/big": 40 * GIB},
        home_cache="/root/.cache/colab_kit",
    )
    p = make_plan(m, "debug")
    assert p.work_dir == "/mnt/big" and p.shard_size == 1000
    assert any("1.5 GiB free" in w for w in p.warnings)
    m2 = Machine(**{**m.__dict__, "disk_free": {"/root/.cache/colab_kit": int(1.5 * GIB)}})
    p2 = make_plan(m2, "debug")
    assert p2.work_dir == "/root/.cache/colab_kit" and p2.shard_size == 200
    assert any("--work-dir" in w for w in p2.warnings)


def test_overrides_validated_and_recorded() -> None:
    p = make_plan(colab_free(), "debug", batch_edges=5000, workers=1, cutoff=5.0, graph_kind="radius")
    assert (p.batch_edges, p.workers, p.cutoff, p.model) == (5000, 1, 5.0, "cgcnn")
    assert p.reasons["batch_edges"] == "set by user"
    with pytest.raises(PlanError, match="unknown plan setting 'batch'.*batch_edges"):
        make_plan(colab_free(), "debug", batch=3)
    with pytest.raises(PlanError, match=r"graph_kind must be one of \('chgnet', 'radius'.*\) \(got 'megnet'\)"):
        make_plan(colab_free(), "debug", graph_kind="megnet")
    with pytest.raises(PlanError, match="workers must be at most the 2 usable CPUs"):
        make_plan(colab_free(), "debug", workers=3)
    with pytest.raises(PlanError, match="mode must be one of"):
        make_plan(colab_free(), "huge")
    with pytest.raises(PlanError, match="model 'chgnet' trains on 'chgnet' graphs, not 'radius'; use --graph-kind chgnet"):
        make_plan(colab_free(), "debug", graph_kind="radius", model="chgnet")


def test_plan_is_pure_and_round_trips() -> None:
    a, b = make_plan(colab_free(), "quick"), make_plan(colab_free(), "quick")
    assert a == b and a.to_dict() == b.to_dict()
    from colab_kit.plan.planner import Plan

    assert Plan.from_dict(a.to_dict()) == a


def test_converter_is_the_graph_kinds_old_name() -> None:
    """``--set converter=`` / ``--converter`` and a plan.json saved with "converter" still mean graph_kind."""
    from colab_kit.plan.planner import Plan
    from colab_kit.training.state import check_resume

    plan = make_plan(colab_free(), "debug", converter="radius")
    assert (plan.graph_kind, plan.model) == ("radius", "cgcnn")
    old = {("converter" if k == "graph_kind" else k): v for k, v in plan.to_dict().items()}
    assert Plan.from_dict(old) == plan
    check_resume(old, plan, "run/")  # the same graphs: resumes
    with pytest.raises(PlanError, match="graph_kind 'chgnet' -> 'radius'"):
        check_resume({**old, "converter": "chgnet"}, plan, "run/")
    with pytest.raises(PlanError, match="converter and graph_kind are the same setting"):
        make_plan(colab_free(), "debug", converter="radius", graph_kind="chgnet")
    assert "--converter" in run_cli("convert", "--help").stdout


def test_threads_follow_the_free_cores() -> None:
    """A busy machine gets fewer torch threads (2 cores at load 6: 1 thread), never more than the free cores;
    OMP_NUM_THREADS and --set threads= win; more threads than CPUs are refused."""
    base = colab_free(drive=False).__dict__ | {"gpu": None, "is_colab": False}
    idle = make_plan(Machine(**{**base, "load": 0.1}), "debug")
    busy = make_plan(Machine(**{**base, "load": 6.0}), "debug")
    half = make_plan(Machine(**{**base, "cpus": 8, "load": 3.4}), "debug")
    assert (idle.threads, busy.threads, half.threads) == (2, 1, 5)
    assert "2 CPUs, 6.0 busy (1-min load average): one thread per free core" in busy.reasons["threads"]
    omp = make_plan(Machine(**{**base, "load": 6.0, "omp_threads": 2}), "debug")
    assert omp.threads == 2 and omp.reasons["threads"] == "OMP_NUM_THREADS=2 in the environment"
    assert make_plan(Machine(**{**base, "load": 6.0}), "debug", threads=2).reasons["threads"] == "set by user"
    with pytest.raises(PlanError, match="threads must be at most the 2 usable CPUs of this rank"):
        make_plan(Machine(**base), "debug", threads=3)


def test_gpu_memory_plans_a_large_gpu_as_a_t4() -> None:
    h100 = dataclasses.replace(colab_pro_a100(), gpu=Gpu("NVIDIA H100 80GB HBM3", 80 * GIB, 79 * GIB, (9, 0)))
    whole = make_plan(h100, "debug")
    capped = make_plan(h100, "debug", gpu_memory="15GiB", amp="fp16")
    t4 = make_plan(colab_free(), "debug")
    assert whole.gpu_memory is None and capped.gpu_memory == 15 * GIB  # normalised to bytes, saved in plan.json
    assert whole.train_memory == int(79 * GIB * 0.7) and capped.train_memory == int(15 * GIB * 0.7)
    assert capped.batch_edges == capped.train_memory // 6000 and capped.batch_edges < whole.batch_edges
    assert t4.train_memory <= capped.train_memory < 1.04 * t4.train_memory  # the T4 has 14.5 of 15 GiB free
    assert "15.0 GiB of NVIDIA H100 80GB HBM3's 80.0 GiB" in capped.reasons["gpu_memory"]
    assert "capped at 15.0 GiB" in capped.reasons["train_memory"]
    assert capped.amp == "fp16" and not capped.warnings
    for spelled in ("16106127360", "15 GiB", "15360MiB", 15 * GIB):
        assert make_plan(h100, "debug", gpu_memory=spelled).gpu_memory == 15 * GIB
    assert make_plan(h100, "debug", gpu_memory="15GB").gpu_memory == 15 * 10**9
    # above the GPU's size: the whole GPU, said in a warning
    big = make_plan(h100, "debug", gpu_memory="100GiB")
    assert big.train_memory == whole.train_memory and "the whole GPU is used" in big.warnings[0]


def test_gpu_memory_on_a_cpu_is_said_to_do_nothing_and_bad_sizes_are_refused() -> None:
    p = make_plan(laptop_8gb(), "debug", gpu_memory="15GiB")
    assert p.warnings == ("gpu_memory=15.0 GiB has no effect: this run trains on cpu",)
    assert p.train_memory == make_plan(laptop_8gb(), "debug").train_memory
    for bad in ("15 potatoes", "100MiB", "-1GiB", True, "GiB"):
        with pytest.raises(PlanError, match=r"plan setting gpu_memory must be a size such as 15GiB.*got"):
            make_plan(laptop_8gb(), "debug", gpu_memory=bad)


def test_gpu_memory_from_the_command_line(tmp_path) -> None:
    r = run_cli("detect", "--set", "gpu_memory=15GiB", "--set", "device=cpu", "--work-dir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "gpu_memory" in r.stdout and "has no effect: this run trains on cpu" in r.stdout + r.stderr
    r = run_cli("detect", "--set", "gpu_memory=lots", "--work-dir", str(tmp_path))
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1
    assert "plan setting gpu_memory must be a size such as 15GiB" in r.stderr and "'lots'" in r.stderr
