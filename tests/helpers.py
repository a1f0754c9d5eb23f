"""Small builders shared by tests: real structures from the shipped data written into temp files."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "colab_kit" / "data" / "mp_eform_cgcnn_3000_matbench.json.gz"
FIXTURES = REPO / "tests" / "data"  # small real structures vendored with the tests (tests/data/README.md)
SHARED_DATA = Path(os.environ.get("COLAB_KIT_SHARED_DATA") or REPO.parent / "shared" / "data")

#: Small versions of each model, for tests that train them on a CPU in seconds (model options, ``--set`` keys).
SMALL_MODELS: dict[str, dict[str, Any]] = {
    "cgcnn": {"hidden": 32},
    "chgnet": {"freeze_layers": 3},
    "comformer": {"hidden": 32, "comformer_layers": 2},
    "alignn": {"hidden": 32, "alignn_layers": 1, "gcn_layers": 1},
    "m3gnet": {"units": 16, "nblocks": 1},
    "tensornet": {"units": 16, "nblocks": 1},
}
EXTRAS_MODELS = ("alignn", "m3gnet", "tensornet")  # need colab_kit[alignn] / colab_kit[matgl]


def small_sets(model: str) -> list[str]:
    """``--set`` arguments that make ``model`` small (:data:`SMALL_MODELS`)."""
    return [a for k, v in SMALL_MODELS[model].items() for a in ("--set", f"{k}={v}")]


def shipped_records(n: int | None = None) -> tuple[list[str], list[list[Any]]]:
    with gzip.open(SHIPPED, "rt") as f:
        d = json.load(f)
    return d["index"][:n], d["data"][:n]


def write_matbench(path: Path, ids: list[str], rows: list[list[Any]], target: str = "e_form") -> Path:
    with gzip.open(path, "wt") as f:
        json.dump({"index": ids, "columns": ["structure", target], "data": rows}, f)
    return path


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "colab_kit", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, **(env or {})}, timeout=timeout)


def kill_when(args: list[str], condition: Callable[[], bool], timeout: float = 300, env: dict[str, str] | None = None) -> bool:
    """Start ``python -m colab_kit *args`` in its own process group; SIGKILL the whole group (a runtime
    disconnect) as soon as ``condition()`` is true. Returns False if the process ended first.

    The group is stopped (SIGSTOP) while ``condition()`` looks at the disk and killed from there, so what the
    condition saw is what the kill leaves: no checkpoint or shard is written between the look and the kill."""
    proc = subprocess.Popen([sys.executable, "-m", "colab_kit", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, env={**os.environ, **(env or {})})
    t0 = time.monotonic()
    try:
        while proc.poll() is None and time.monotonic() - t0 < timeout:
            os.killpg(proc.pid, signal.SIGSTOP)
            if condition():
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return True
            os.killpg(proc.pid, signal.SIGCONT)
            time.sleep(0.05)
        return False
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def shard_count(store_dir: Path) -> int:
    try:
        return len(json.loads((store_dir / "manifest.json").read_text())["shards"])
    except (OSError, ValueError, KeyError):
        return 0


FIXTURES = REPO / "tests" / "data"
# The vendored real matbench-layout fixtures (tests/data/README.md says what each covers).
FIXTURE_SETS = ("mp_eform_cgcnn_3000_sample.json.gz", "mp20_subset_sample.json.gz",
                "matsciml_devsets_sample.json.gz", "matbench_phonons_sample.json.gz")


def matbench_structures(path: Path) -> list[tuple[str, Any, float]]:
    """(id, pymatgen Structure, target) of every record of a matbench-layout json(.gz), in file order."""
    from pymatgen.core import Structure

    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as f:
        d = json.load(f)
    return [(str(i), Structure.from_dict(row[0]), row[1]) for i, row in zip(d["index"], d["data"])]


def fixture_structures(*names: str) -> list[tuple[str, Any, float]]:
    """(id, Structure, target) of the vendored fixture sets ``names`` (default: all of them)."""
    return [x for name in names or FIXTURE_SETS for x in matbench_structures(FIXTURES / name)]


CRYSTAL_GRAPH_TENSORS = ("atomic_number", "atom_frac_coord", "atom_graph", "neighbor_image", "directed2undirected",
                         "undirected2directed", "bond_graph", "lattice")
CRYSTAL_GRAPH_FIELDS = ("graph_id", "mp_id", "composition", "atom_graph_cutoff", "bond_graph_cutoff")


def crystal_graph_difference(ref: Any, mine: Any) -> str | None:
    """The first attribute in which two CHGNet ``CrystalGraph`` objects differ, or None when they are identical:
    every tensor (values, shape, dtype, requires_grad), ids, composition, cutoffs (value and type), repr."""
    import torch

    for f in CRYSTAL_GRAPH_TENSORS:
        a, b = getattr(ref, f), getattr(mine, f)
        if (a.dtype, tuple(a.shape), a.requires_grad) != (b.dtype, tuple(b.shape), b.requires_grad):
            return f"{f}: {a.dtype} {tuple(a.shape)} grad={a.requires_grad} vs {b.dtype} {tuple(b.shape)} grad={b.requires_grad}"
        if not torch.equal(a, b):
            return f"{f}: values differ"
    for f in CRYSTAL_GRAPH_FIELDS:
        a, b = getattr(ref, f), getattr(mine, f)
        if a != b or type(a) is not type(b):
            return f"{f}: {a!r} vs {b!r}"
    if repr(ref) != repr(mine):
        return f"repr: {ref!r} vs {mine!r}"
    return None


def kill_mid_epoch(args: list[str], latest: Path, first_step: int, every: int, times: int) -> list[tuple[int, int]]:
    """SIGKILL ``python -m colab_kit *args`` ``times`` times, each once its checkpoint ``latest`` is at step
    ``first_step + every * k`` or later and mid-epoch; returns the (epoch, offset) each kill left on disk."""
    import torch

    kills = []
    for k in range(times):
        def mid_epoch(k: int = k) -> bool:
            if not latest.exists():  # not yet written, or stopped between keeping it as previous and the new one
                return False
            state = torch.load(latest, map_location="cpu", weights_only=True)
            return state["step"] >= first_step + every * k and state["sampler"]["offset"] > 0
        if kill_when(args, mid_epoch):
            state = torch.load(latest, map_location="cpu", weights_only=True)
            kills.append((state["epoch"], state["sampler"]["offset"]))
    return kills


def assert_stop_resume_identical(store: Any, plan: Any, tmp: Path, steps: int) -> None:
    """``fit`` stopped after ``steps`` steps and run again equals one uninterrupted ``fit``: same best weights,
    bit for bit, and the same validation history."""
    import torch

    from colab_kit.training.trainer import fit

    ref = fit(store, plan, tmp / "ref", progress=False)
    polls = {"n": 0}

    def stop() -> bool:
        polls["n"] += 1
        return polls["n"] > steps

    assert fit(store, plan, tmp / "cut", progress=False, should_stop=stop).status == "stopped"
    res = fit(store, plan, tmp / "cut", progress=False)
    assert res.resumed_from is not None and res.resumed_from["step"] == steps
    a = torch.load(tmp / "ref" / "best.pt", weights_only=True)
    b = torch.load(tmp / "cut" / "best.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [h["val_mae"] for h in ref.history] == [h["val_mae"] for h in res.history]


def assert_sigkill_resume_identical(args: list[str], tmp: Path, first_step: int, every: int) -> tuple[dict, dict]:
    """``python -m colab_kit *args --out`` run once uninterrupted, and once SIGKILLed mid-epoch twice then rerun:
    the final weights are equal bit for bit. Returns both final checkpoints (uninterrupted, resumed)."""
    import torch

    from colab_kit.training.checkpoint import LATEST

    ref = run_cli(*args, "--out", str(tmp / "ref"))
    assert ref.returncode == 0, ref.stderr[-2000:]
    out = tmp / "killed"
    latest = out / "checkpoints" / LATEST
    kills = kill_mid_epoch([*args, "--out", str(out)], latest, first_step=first_step, every=every, times=2)
    assert kills and all(off > 0 for _, off in kills), kills
    done = run_cli(*args, "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    a = torch.load(tmp / "ref" / "checkpoints" / LATEST, map_location="cpu", weights_only=True)
    b = torch.load(latest, map_location="cpu", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    return a, b


def assert_same_batch(ref: object, new: object) -> None:
    """Two PyG batches equal tensor for tensor (dtype, shape, values), with the same slices (to_data_list works)."""
    import torch

    assert sorted(ref.keys()) == sorted(new.keys())
    for k in ref.keys():
        a, b = ref[k], new[k]
        if torch.is_tensor(a):
            assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), k
        else:
            assert a == b, k
    assert ref.num_graphs == new.num_graphs and ref.num_nodes == new.num_nodes
    for k, v in ref._slice_dict.items():
        assert torch.equal(v, new._slice_dict[k]), k
    for k, v in ref._inc_dict.items():
        assert (v is None and new._inc_dict[k] is None) or torch.equal(v, new._inc_dict[k]), k
    for d_ref, d_new in zip(ref.to_data_list(), new.to_data_list(), strict=True):  # batch[i] works as on a collated batch
        assert d_ref.num_nodes == d_new.num_nodes
        for k in set(d_ref.keys()) - {"num_nodes"}:
            assert torch.equal(d_ref[k], d_new[k]) if torch.is_tensor(d_ref[k]) else d_ref[k] == d_new[k], k
