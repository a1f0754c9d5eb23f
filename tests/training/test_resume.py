"""A training run SIGKILLed mid-epoch (a Colab disconnect) and started again with the same command ends with the
weights and validation history of a run never interrupted, bit for bit, for every model: CGCNN in the default suite
(the trainer is the same for all), the others with --runlong (.ci/run), the field's packages' with their extras."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import EXTRAS_MODELS, assert_sigkill_resume_identical, small_sets

from colab_kit import registry

#: model -> (store: shipped graphs' limit and shard size, batch size, first kill after step, then every)
CASES = {
    "cgcnn": ((600, 200), 8, 8, 12),
    "chgnet": ((120, 40), 8, 4, 6),
    "comformer": ((180, 60), 8, 4, 10),
    "alignn": ((80, 40), 4, 3, 8),
    "m3gnet": ((80, 40), 4, 3, 8),
    "tensornet": ((80, 40), 4, 3, 8),
}


def _marks(model: str) -> list[pytest.MarkDecorator]:
    if model == "cgcnn":
        return []
    return [pytest.mark.long, *([pytest.mark.extras] if model in EXTRAS_MODELS else [])]


def test_every_registered_model_has_a_case() -> None:
    """Every model that trains on one label per structure; the potentials' resume: tests/e2e/test_potential.py."""
    assert set(CASES) == set(registry.property_models())


@pytest.mark.parametrize("model", [pytest.param(m, marks=_marks(m)) for m in CASES])
def test_sigkill_mid_epoch_then_the_same_command_gives_the_uninterrupted_weights(
        model: str, shipped_store: Callable[..., Path], tmp_path: Path) -> None:
    (limit, shard_size), batch_size, first_step, every = CASES[model]
    store = shipped_store(registry.model_graph_kind(model), limit=limit, shard_size=shard_size)
    args = ["train", "--store", str(store), "--model", model, *small_sets(model), "--set", "epochs=2",
            "--set", f"batch_size={batch_size}", "--set", "batch_atoms=4000", "--set", "batch_edges=200000",
            "--set", "calibrate=false", "--set", "checkpoint_minutes=0.002"]
    ref, resumed = assert_sigkill_resume_identical(args, tmp_path, first_step=first_step, every=every)
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in ref["history"]]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in resumed["history"]]
