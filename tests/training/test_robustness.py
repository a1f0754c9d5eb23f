"""What a careful user expects beyond the happy path: one-atom batches, the Plan's own overrides,
refused resumes, CPU out-of-memory, stale temporaries, resumed-epoch metrics, one-line CLI errors."""

from __future__ import annotations

import gzip
import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SHARED_DATA, SHIPPED, run_cli

from colab_kit.graphs import get_converter
from colab_kit.plan.machine import GIB, Gpu, Machine, detect
from colab_kit.plan.planner import PlanError, make_plan
from colab_kit.store.build import build_store
from colab_kit.store.format import GraphStore
from colab_kit.util.files import remove_stale_temporaries

SINGLE_SITE = ("mp-71", "mp-81", "mp-8640")  # real one-atom cells of the shipped set


def _t4() -> Machine:
    return Machine(ram_total=int(12.7 * GIB), ram_available=int(11 * GIB), cgroup_limit=None, cpus=2,
                   gpu=Gpu("Tesla T4", 15 * GIB, int(14.5 * GIB), (7, 5)), is_colab=True, drive_mounted=False,
                   disk_free={"/content": 80 * GIB}, home_cache="/root/.cache/colab_kit")


@pytest.fixture(scope="module")
def small_sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Stores of real structures whose smallest graphs are the three one-atom cells."""
    with gzip.open(SHIPPED, "rt") as f:
        d = json.load(f)
    keep = [i for i, mid in enumerate(d["index"]) if mid in SINGLE_SITE][:3] + list(range(40))
    src = tmp_path_factory.mktemp("single") / "with_single_sites.json.gz"
    with gzip.open(src, "wt") as f:
        json.dump({"index": [d["index"][i] for i in keep], "columns": d["columns"], "data": [d["data"][i] for i in keep]}, f)
    out = {}
    for kind in ("radius", "chgnet"):
        out[kind] = src.parent / kind
        build_store(src, out[kind], get_converter(kind), progress=False)
    return out


@pytest.mark.parametrize("kind", ["radius", "chgnet"])
def test_a_batch_of_one_single_site_cell_trains(small_sets: dict[str, Path], kind: str) -> None:
    from colab_kit import registry
    from colab_kit.models import build_model

    store = GraphStore(small_sets[kind])
    ids = store.ids()
    model = build_model(registry.default_model(kind), graph_params=store.params)
    model.train()
    for mid in SINGLE_SITE:
        batch = registry.graph_kind(kind).collate([store.item(ids.index(mid))])
        loss = (model(batch) - model.targets(batch)).pow(2).mean()
        loss.backward()
        assert torch.isfinite(loss)


@pytest.mark.parametrize("kind", ["radius", "chgnet"])
def test_calibration_and_training_on_real_single_site_cells(small_sets: dict[str, Path], tmp_path: Path, kind: str) -> None:
    """The calibration's first step is the smallest graph alone: a one-atom cell (it crashed CGCNN's BatchNorm)."""
    from colab_kit.training.trainer import fit

    store = GraphStore(small_sets[kind])
    plan = make_plan(detect(), "debug", graph_kind=kind, epochs=1, batch_size=4)
    assert plan.calibrate
    res = fit(store, plan, tmp_path, progress=False)
    assert res.status == "finished" and "calibrated" in res.budget.how, res.budget


def test_plan_decides_from_its_final_values() -> None:
    cpu = make_plan(_t4(), "debug", device="cpu")
    assert (cpu.amp, cpu.pin_memory) == ("off", False)
    assert cpu.train_memory == int(min(11 * GIB * 0.4, 8 * GIB)) and "RAM" in cpu.reasons["train_memory"]
    assert cpu.batch_edges == cpu.train_memory // 6000
    gpu = make_plan(_t4(), "debug")
    assert gpu.amp == "fp16" and gpu.train_memory == int(14.5 * GIB * 0.7)
    with pytest.raises(PlanError, match="amp='fp16' needs device cuda .*--set amp=off"):
        make_plan(_t4(), "debug", device="cpu", amp="fp16")
    no_gpu = Machine(8 * GIB, 6 * GIB, None, 4, None, False, False, {"/h": 50 * GIB}, "/h")
    with pytest.raises(PlanError, match="device is 'cuda' but no CUDA GPU.*--set device=cpu"):
        make_plan(no_gpu, "debug", device="cuda")
    fixed = make_plan(_t4(), "debug", batch_edges=5000)
    assert not fixed.calibrate and "batch_edges set by you" in fixed.reasons["calibrate"]
    assert make_plan(_t4(), "debug", lr=2e-3).lr_min == pytest.approx(2e-5)
    assert make_plan(_t4(), "debug", grad_clip=1.0, weight_decay=0.0).grad_clip == 1.0


def test_resume_under_other_shape_fixing_settings_is_refused(small_sets: dict[str, Path], tmp_path: Path) -> None:
    from colab_kit.training.trainer import fit

    store = GraphStore(small_sets["radius"])
    base = dict(graph_kind="radius", epochs=1, batch_size=8, batch_atoms=4000, batch_edges=60000)
    fit(store, make_plan(detect(), "debug", **base), tmp_path, progress=False)
    with pytest.raises(PlanError, match=r"other settings \(seed 0 -> 3\).*--fresh"):
        fit(store, make_plan(detect(), "debug", seed=3, **base), tmp_path, progress=False)
    # settings that do not fix the model's shape may change: more epochs continue training
    res = fit(store, make_plan(detect(), "debug", **{**base, "epochs": 2}), tmp_path, progress=False)
    assert res.epochs_done == 2


def test_resumed_epoch_reports_the_mean_over_all_its_batches(small_sets: dict[str, Path], tmp_path: Path) -> None:
    from colab_kit.training.trainer import fit

    store = GraphStore(small_sets["radius"])
    plan = make_plan(detect(), "debug", graph_kind="radius", epochs=2, batch_size=4, batch_atoms=4000,
                     batch_edges=60000, checkpoint_minutes=1e-6)
    ref = fit(store, plan, tmp_path / "ref", progress=False)
    steps = []
    res = fit(store, plan, tmp_path / "cut", progress=False, should_stop=lambda: len(steps) >= 3,
              callbacks=[lambda ev: steps.append(1) if ev["event"] == "step" else None])
    assert res.status == "stopped"
    done = fit(store, plan, tmp_path / "cut", progress=False)
    assert done.resumed_from["offset"] == 12
    for a, b in zip(ref.history, done.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6), (ref.history, done.history)
        assert a["val_mae"] == pytest.approx(b["val_mae"], rel=1e-6)
    assert done.train_seconds > res.train_seconds > 0


def test_cpu_allocator_failure_is_out_of_memory() -> None:
    from colab_kit.training.oom import is_oom, retry_on_oom

    cpu = RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                       "you tried to allocate 8589934592 bytes. Error code 12 (Cannot allocate memory)")
    assert is_oom(cpu) and is_oom(torch.OutOfMemoryError("CUDA out of memory")) and is_oom(MemoryError())
    assert not is_oom(RuntimeError("shape mismatch")) and not is_oom(ValueError("out of memory"))
    sizes, tries = [], iter([cpu, cpu, None])

    def work() -> int:
        exc = next(tries)
        if exc is not None:
            raise exc
        return 7

    assert retry_on_oom(work, lambda e: sizes.append(str(e)[:20]), torch.device("cpu")) == 7
    assert len(sizes) == 2
    with pytest.raises(RuntimeError, match="shape mismatch"):
        retry_on_oom(lambda: (_ for _ in ()).throw(RuntimeError("shape mismatch")), lambda e: None, torch.device("cpu"))


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path: Path) -> None:
    import subprocess
    import sys

    host = socket.gethostname().replace(".", "_")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    names = {
        f".shard-000003.safetensors.{host}-{dead_pid}.k2j4_x.tmp": False,  # killed writer on this host: removed
        f".manifest.json.{host}-{os.getpid()}.abcdefgh.tmp": True,  # a live writer (this process): kept
        f".shard-000004.safetensors.otherhost-{dead_pid}.abcdefgh.tmp": True,  # another host's: kept
        "shard-000001.safetensors": True,
    }
    for n in names:
        (tmp_path / n).write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path) == 1
    assert {p.name for p in tmp_path.iterdir()} == {n for n, keep in names.items() if keep}
    # a conversion into that folder cleans up the same way
    (tmp_path / f".shard-000009.safetensors.{host}-{dead_pid}.zz.tmp").write_bytes(b"x")
    build_store(SHIPPED, tmp_path / "s", get_converter("radius"), limit=20, progress=False)
    (tmp_path / "s" / f".manifest.json.{host}-{dead_pid}.zz.tmp").write_bytes(b"x")
    build_store(SHIPPED, tmp_path / "s", get_converter("radius"), limit=20, progress=False)
    assert not list((tmp_path / "s").glob(".*.tmp"))


def test_parser_warnings_are_counted_not_printed(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """pymatgen warns once per odd CIF; the warnings go into the store's record, not the terminal."""
    import tarfile

    shared = SHARED_DATA
    tar_path = shared / "mp_eform_cgcnn_3000" / "cifs.tar.gz"
    if not tar_path.exists():
        pytest.skip(f"needs {tar_path}")
    with tarfile.open(tar_path) as tar:
        tar.extractall(tmp_path, filter="data")
    folder = tmp_path / "mp_eform_cgcnn_3000"
    res = build_store(folder, tmp_path / "store", get_converter("radius"), workers=2, progress=False, limit=1500)
    store = GraphStore(res.path)
    warned = store.warnings()
    assert warned and all(isinstance(i, str) and "Warning" in w for i, w in warned)
    assert store.manifest.n_warned == len({i for i, _ in warned})
    assert "UserWarning" not in capfd.readouterr().err


@pytest.mark.parametrize("case", ["missing_path", "misspelled_name", "no_network", "folder_without_structures",
                                  "store_missing"])
def test_bad_input_gives_one_clean_line_and_no_run_folder(tmp_path: Path, case: str) -> None:
    work = tmp_path / "work"
    if case == "missing_path":
        args, expect = ["run", "--data", str(tmp_path / "nope.json.gz")], "no such file or folder"
    elif case == "misspelled_name":
        args, expect = ["run", "--data", "mp_eform_cgcnn_300"], "not a known dataset"
    elif case == "no_network":
        with socket.socket() as s:  # a port nothing listens on: connection refused, as with no network
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        args, expect = ["run", "--data", f"http://127.0.0.1:{port}/data.json.gz"], "no network"
    elif case == "folder_without_structures":
        folder = tmp_path / "notes"
        folder.mkdir()
        (folder / "readme.txt").write_text("not a structure")
        args, expect = ["run", "--data", str(folder)], "CIF"
    else:
        args, expect = ["train", "--store", str(tmp_path / "no_store")], "no graph store"
    r = run_cli(*args, "--work-dir", str(work))
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("INFO")]
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], r.stderr
    leftovers = [p for p in work.glob("*") if p.name != "downloads"] if work.exists() else []
    assert leftovers == [], leftovers


def test_evaluate_prints_units_n_and_the_mean_predictor(small_sets: dict[str, Path], tmp_path: Path) -> None:
    from colab_kit.training.trainer import fit

    store = GraphStore(small_sets["radius"])
    fit(store, make_plan(detect(), "debug", graph_kind="radius", epochs=1, batch_atoms=4000, batch_edges=60000),
        tmp_path, progress=False)
    r = run_cli("evaluate", "--store", str(store.root), "--weights", str(tmp_path / "best.pt"), "--split", "val")
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip().splitlines()[0]
    assert "n=" in line and "eV/atom" in line and "mean" in line, line
    assert np.isfinite(float(line.split("MAE")[1].split()[0]))


@pytest.mark.gpu
def test_gpu_memory_holds_the_process_to_its_ceiling() -> None:
    """``--set gpu_memory=1GiB`` on any GPU: 0.5 GiB allocates, 2 GiB is CUDA's out-of-memory error (which the
    trainer's back-off handles), as on a GPU of 1 GiB."""
    from colab_kit.training import cap_gpu_memory

    dev = torch.device("cuda")
    plan = make_plan(detect(), "debug", device="cuda", gpu_memory="1GiB")
    cap_gpu_memory(plan, dev)
    try:
        fits = torch.empty(512 * 2**20, dtype=torch.uint8, device=dev)
        with pytest.raises(torch.OutOfMemoryError):
            torch.empty(2 * 2**30, dtype=torch.uint8, device=dev)
        del fits
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, dev)
        torch.cuda.empty_cache()
