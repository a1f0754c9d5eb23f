"""ALIGNN, M3GNet and TensorNet (the alignn and matgl packages' own model classes) train from the store like
colab_kit's other models: `run --model ...` end to end with calibration, exact CPU resume identity after SIGKILL,
the out-of-memory back-off, weights files written by the packages themselves, and a one-line error naming the
pip extra when a package is missing.

Small widths keep the file to a few minutes on 2 CPUs (TensorNet's SIGKILL test is `slow`: M3GNet's in-process
stop/resume covers the matgl models by default); the packages' sizes are the option defaults.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import EXTRAS_MODELS, SMALL_MODELS, assert_stop_resume_identical, run_cli, small_sets

from colab_kit.models import build_model
from colab_kit.plan.machine import detect
from colab_kit.plan.planner import make_plan
from colab_kit.registry import RegistryError, model_graph_kind
from colab_kit.store.format import GraphStore
from colab_kit.training.checkpoint import LATEST
from colab_kit.training.trainer import fit

pytestmark = pytest.mark.extras  # CI runs these in the environment with the extras; the README's command skips them
pytest.importorskip("alignn.torch_graph_builder", reason='needs pip install "colab_kit[alignn]"')
pytest.importorskip("matgl.models", reason='needs pip install "colab_kit[matgl]"')



@pytest.fixture
def stores(shipped_store: Callable[..., Path]) -> dict[str, Path]:
    return {kind: shipped_store(kind, limit=80, shard_size=40) for kind in ("alignn", "matgl")}


def _plan(model: str, **kw: object):
    base = dict(model=model, **SMALL_MODELS[model], epochs=1, batch_size=8, workers=0, calibrate=False,
                batch_atoms=4000, batch_edges=200_000)
    return make_plan(detect(), "debug", **{**base, **kw})


# alignn and m3gnet take 30-40 s each: the default suite runs tensornet's, .ci/run all three
@pytest.mark.parametrize("model", [pytest.param(m, marks=pytest.mark.long) if m != "tensornet" else m for m in EXTRAS_MODELS])
def test_run_end_to_end_with_calibration(model: str, tmp_path: Path) -> None:
    res = run_cli("run", "--model", model, "--mode", "debug", "--work-dir", str(tmp_path), *small_sets(model),
                  "--set", "n_samples=48", "--set", "epochs=1")
    assert res.returncode == 0, res.stderr[-2000:]
    (run_dir,) = [p for p in tmp_path.iterdir() if p.name.startswith(f"mp_eform_cgcnn_3000-{model_graph_kind(model)}-{model}-")]
    metrics = json.loads((run_dir / "report" / "metrics.json").read_text())
    assert metrics["model"] == model and metrics["test_n"] > 0 and np.isfinite(metrics["test_mae"])
    state = torch.load(run_dir / "checkpoints" / LATEST, map_location="cpu", weights_only=True)
    assert "calibrated" in state["budget"]["how"]  # the memory calibration ran on the package's model
    assert state["plan"]["model_options"] == {**state["plan"]["model_options"], **SMALL_MODELS[model]}


def test_m3gnet_stop_and_resume_is_identical(stores: dict[str, Path], tmp_path: Path) -> None:
    store, plan = GraphStore(stores["matgl"]), _plan("m3gnet", epochs=2)
    assert_stop_resume_identical(store, plan, tmp_path, steps=5)


@pytest.mark.parametrize("model", EXTRAS_MODELS)
def test_oom_backoff_covers_the_field_models(model: str, stores: dict[str, Path], tmp_path: Path) -> None:
    store = GraphStore(stores[model_graph_kind(model)])
    _, edges = store.sizes()
    limit = int(edges.max())  # "device memory": any one graph fits, most batches do not
    adapter = build_model(model, options=SMALL_MODELS[model])

    def hook(batch: object) -> None:
        if adapter.size(batch)[2] > limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")

    seen: list[int] = []
    res = fit(store, _plan(model), tmp_path, progress=False, step_hook=hook,
              callbacks=[lambda ev: seen.append(ev["graphs"]) if ev["event"] == "step" else None])
    assert sum(seen) == len(np.load(store.root / "splits-seed0.npz")["train"])  # each training graph once
    assert "shrunk" in res.budget.how


def _batch(store: GraphStore, n: int = 6):
    from colab_kit.loader.batching import collate_fn

    return collate_fn(store)([store.item(i) for i in range(n)])


@pytest.mark.parametrize("cls", ["M3GNet", "TensorNet"])
def test_matgl_weights_directory_from_model_save(cls: str, stores: dict[str, Path], tmp_path: Path) -> None:
    """A model matgl's own ``model.save(DIR)`` wrote starts a run, and predicts what matgl's own
    ``ModelLightningModule`` predicts with it (scaled by the same mean and std)."""
    import matgl.models
    from matgl.config import DEFAULT_ELEMENTS
    from matgl.utils.training import ModelLightningModule

    torch.manual_seed(0)
    theirs = getattr(matgl.models, cls)(element_types=DEFAULT_ELEMENTS, units=16, nblocks=1, is_intensive=True)
    theirs.save(tmp_path / "saved")
    name = cls.lower()
    ours = build_model(name, target_mean=-1.5, target_std=0.7, graph_params={"cutoff": 5.0},
                       options={**SMALL_MODELS[name], "weights": str(tmp_path / "saved")}).eval()
    store = GraphStore(stores["matgl"])
    g, lattice, state, _ = _batch(store)
    lit = ModelLightningModule(model=theirs, data_mean=-1.5, data_std=0.7).eval()
    with torch.no_grad():
        expected = lit(g=g.clone(), lat=lattice, state_attr=state).reshape(-1) * 0.7 - 1.5
        got = ours(_batch(store))
    assert torch.allclose(got, expected, atol=1e-6, rtol=1e-6)
    with pytest.raises(RegistryError, match="use a 5 Å cutoff but the store's graphs use 4 Å; convert with --set cutoff=5"):
        build_model(name, graph_params={"cutoff": 4.0}, options={"weights": str(tmp_path / "saved")})
    with pytest.raises(RegistryError, match="lacks"):
        build_model(name, graph_params={"cutoff": 5.0}, options={"weights": str(tmp_path)})


def test_alignn_weights_file_as_alignn_writes_it(stores: dict[str, Path], tmp_path: Path) -> None:
    """A state dict ALIGNNAtomWisePure wrote (best_model.pt + config.json beside it, as train_alignn.py writes
    them) gives the same predictions through colab_kit as through alignn's own model."""
    from alignn.models.alignn_atomwise_pure import ALIGNNAtomWisePure, ALIGNNAtomWisePureConfig

    from colab_kit.models.alignn import EXAMPLE_CONFIG

    torch.manual_seed(0)
    config = {**EXAMPLE_CONFIG, "alignn_layers": 1, "gcn_layers": 2, "hidden_features": 24}
    theirs = ALIGNNAtomWisePure(ALIGNNAtomWisePureConfig(name="alignn_atomwise_pure", **config)).eval()
    torch.save(theirs.state_dict(), tmp_path / "best_model.pt")
    (tmp_path / "config.json").write_text(json.dumps({"model": {"name": "alignn_atomwise_pure", **config}}))
    # options say another shape: the config.json beside the weights wins, as it made them
    ours = build_model("alignn", options={"weights": str(tmp_path / "best_model.pt"), "hidden": 256}).eval()
    batch = _batch(GraphStore(stores["alignn"]))
    with torch.no_grad():
        assert torch.equal(ours(batch), theirs((batch[0], batch[1], batch[2]))["out"].reshape(-1))
    (tmp_path / "config.json").unlink()
    with pytest.raises(RegistryError, match="do not fit an ALIGNN of this shape"):
        build_model("alignn", options={"weights": str(tmp_path / "best_model.pt")})
    with pytest.raises(RegistryError, match="does not exist"):
        build_model("alignn", options={"weights": str(tmp_path / "nope.pt")})


@pytest.mark.parametrize("model,extra", [("alignn", "alignn"), ("tensornet", "matgl")])
def test_missing_package_is_one_line_naming_the_extra(model: str, extra: str, tmp_path: Path) -> None:
    """With the package absent (a stand-in that fails to import, first on the path), `run` stops before
    converting anything with one line naming `pip install "colab_kit[<extra>]"`; `models` still lists it."""
    fake = tmp_path / "site" / extra
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(f"raise ImportError('No module named {extra} (test stand-in)')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), *sys.path])}
    res = run_cli("run", "--model", model, "--mode", "debug", "--work-dir", str(tmp_path / "w"), env=env)
    assert res.returncode != 0
    assert "Traceback" not in res.stderr, res.stderr[-2000:]
    lines = [ln for ln in res.stderr.splitlines() if f'pip install "colab_kit[{extra}]"' in ln]
    assert len(lines) == 1 and extra in lines[0], res.stderr[-2000:]
    assert not any((tmp_path / "w").rglob("shard-*"))  # nothing was converted
    listed = run_cli("models", env=env)
    assert listed.returncode == 0 and model in listed.stdout and f"colab_kit[{extra}]" in listed.stdout
