"""ALIGNN (Choudhary & DeCost 2021), the ``alignn`` package's own pure-torch model class, trained from the store.

The model is ``alignn.models.alignn_atomwise_pure.ALIGNNAtomWisePure`` as alignn builds it for a property (its
``examples/sample_data/config_example.json``: 4 ALIGNN + 4 GCN layers, 256 hidden features, CGCNN atom features,
``calculate_gradient = False``); nothing of it is re-implemented here. colab_kit adds what every model of it gets:
the prediction is ``mean + std * out`` over the training targets (alignn itself trains on raw targets), and a
``weights`` file written by alignn (its ``best_model.pt`` / ``current_model.pt`` state dict) starts from those weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from colab_kit import registry
from colab_kit.registry import Model, Option, RegistryError, int_at_least

#: alignn/examples/sample_data/config_example.json's model section (the property-model defaults), minus its name
EXAMPLE_CONFIG: dict[str, Any] = {
    "alignn_layers": 4, "gcn_layers": 4, "atom_input_features": 92, "edge_input_features": 80,
    "triplet_input_features": 40, "embedding_features": 64, "hidden_features": 256, "output_features": 1,
    "calculate_gradient": False, "energy_mult_natoms": False, "penalty_factor": 0.1,
}


def _pure() -> Any:
    return registry.require("alignn.models.alignn_atomwise_pure", "alignn", "model alignn")


class ALIGNNRegressor(nn.Module):
    """``ALIGNNAtomWisePure`` on alignn's ``(g, lg, lattice, y)`` batches, predicting the target in its units.

    Args:
        config: the model section of an alignn config (``ALIGNNAtomWisePureConfig`` fields).
        weights: an alignn state-dict file (``best_model.pt``) to start from; a ``config.json`` beside it (as
            ``train_alignn.py`` writes) gives the model's shape instead of ``config``.
    """

    def __init__(self, config: dict[str, Any], target_mean: float = 0.0, target_std: float = 1.0,
                 weights: str | None = None) -> None:
        super().__init__()
        pure = _pure()
        state = None
        if weights:
            config, state = _load_weights(Path(weights), config)
        self.alignn = pure.ALIGNNAtomWisePure(pure.ALIGNNAtomWisePureConfig(name="alignn_atomwise_pure", **config))
        if state is not None:
            try:
                self.alignn.load_state_dict(state)
            except RuntimeError as exc:
                raise RegistryError(f"weights {weights} do not fit an ALIGNN of this shape "
                                    f"({str(exc).splitlines()[0]}); set alignn_layers / gcn_layers / hidden as the "
                                    "run that wrote them, or put its config.json beside the file") from None
        self.register_buffer("target_mean", torch.tensor(float(target_mean)))
        self.register_buffer("target_std", torch.tensor(float(target_std)))

    def forward(self, batch: tuple[Any, Any, Any, Any]) -> torch.Tensor:
        g, lg, lattice, _ = batch
        out = self.alignn((g, lg, lattice))["out"].reshape(-1)
        return self.target_mean + self.target_std * out

    @staticmethod
    def to_device(batch: tuple[Any, Any, Any, Any], device: torch.device, non_blocking: bool = False) -> Any:
        g, lg, lattice, y = batch
        if device.type == "cpu":
            return batch
        return g.to(device), lg.to(device), lattice.to(device, non_blocking=non_blocking), y.to(
            device, non_blocking=non_blocking)

    @staticmethod
    def targets(batch: tuple[Any, Any, Any, Any]) -> torch.Tensor:
        return batch[3]

    @staticmethod
    def size(batch: tuple[Any, Any, Any, Any]) -> tuple[int, int, int]:
        g = batch[0]
        return g.batch_size, g.num_nodes, g.num_edges


def _load_weights(path: Path, config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    if not path.is_file():
        raise RegistryError(f"alignn weights file {path} does not exist; give the best_model.pt alignn wrote "
                            "(--set weights=PATH)")
    beside = path.parent / "config.json"
    if beside.is_file():
        model = json.loads(beside.read_text()).get("model", {})
        shape = {k: v for k, v in model.items() if k in EXAMPLE_CONFIG or k == "three_body_cutoff"}
        config = {**config, **shape}
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file: one line naming it
        raise RegistryError(f"alignn weights file {path} could not be read as a state dict ({exc})") from None
    return config, state


def _build(target_mean: float, target_std: float, graph_params: dict[str, Any], alignn_layers: int,
           gcn_layers: int, hidden: int, weights: str | None) -> ALIGNNRegressor:
    config = {**EXAMPLE_CONFIG, "alignn_layers": alignn_layers, "gcn_layers": gcn_layers, "hidden_features": hidden}
    if "three_body_cutoff" in graph_params:  # the model's copy (used only by its forward_tensors) matches the graph
        config["three_body_cutoff"] = float(graph_params["three_body_cutoff"])
    return ALIGNNRegressor(config, target_mean=target_mean, target_std=target_std, weights=weights)


SPEC = Model(
    name="alignn", graph_kind="alignn", extra="alignn", deterministic=True,
    description="ALIGNN (the alignn package's pure-torch model): bond graph + line graph of angles, from scratch",
    # measured on mp_eform_cgcnn_3000 batches (autograd's saved tensors, 256 wide, fp32): the line graph's
    # ~5 angles per bond dominate; calibration measures the device's real figure
    builder=_build, bytes_per_atom=60_000, bytes_per_edge=60_000, lr=1e-3, schedule="warmup_cosine",
    schedule_reason="alignn trains with AdamW and a one-cycle schedule (its config_example.json): warm-up, then decay",
    epoch_scale=5, epoch_reason="trained from scratch: 5x the epochs of a pretrained model (alignn's example: 300)",
    options={
        "alignn_layers": Option(4, "an integer >= 0", "alignn's example config: 4 ALIGNN layers", int_at_least(0)),
        "gcn_layers": Option(4, "an integer >= 0", "alignn's example config: 4 edge-gated graph conv layers",
                             int_at_least(0)),
        "hidden": Option(256, "a positive integer", "alignn's hidden_features: 256", int_at_least(1)),
        "weights": Option(None, "a path to an alignn state-dict file (best_model.pt), or none",
                          "from scratch (alignn ships no weights in its wheel; its pretrained ones are downloads)",
                          lambda v: v is None or isinstance(v, str)),
    },
)
