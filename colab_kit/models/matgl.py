"""M3GNet and TensorNet, the ``matgl`` package's own model classes (PyTorch Geometric), trained from the store.

The models are ``matgl.models.M3GNet`` / ``matgl.models.TensorNet`` built as matgl builds a property model
(``is_intensive=True``, its default readout, ``element_types = DEFAULT_ELEMENTS``); nothing of them is
re-implemented. The adapter does what matgl's ``ModelLightningModule.forward`` does before calling the model
(Cartesian positions and periodic shifts from ``frac_coords`` / ``pbc_offset`` and the lattices) and what its loss
does to the output (``mean + std * prediction`` over the training targets).

matgl ships no weights in its wheel (its pretrained models are Hugging Face downloads), so models train from
scratch; ``weights=DIR`` starts from a model directory matgl's ``model.save(DIR)`` wrote (``model.json``,
``model.pt``, ``state.pt``), read locally only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from colab_kit import registry
from colab_kit.graphs.matgl import element_types
from colab_kit.models.common import PygAdapter
from colab_kit.models.matgl_potential import MATGL_FILES, export_potential
from colab_kit.models.matgl_potential import build_m3gnet as build_m3gnet_potential
from colab_kit.models.matgl_potential import build_tensornet as build_tensornet_potential
from colab_kit.registry import Model, Option, RegistryError, int_at_least


def _models() -> Any:
    return registry.require("matgl.models", "matgl", "the matgl models (m3gnet, tensornet)")


class MatglRegressor(nn.Module):
    """A matgl model on matgl's ``(g, lattice, state_attr, y)`` batches, predicting the target in its units."""

    def __init__(self, model: nn.Module, target_mean: float = 0.0, target_std: float = 1.0) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("target_mean", torch.tensor(float(target_mean)))
        self.register_buffer("target_std", torch.tensor(float(target_std)))

    def forward(self, batch: tuple[Any, Any, Any, Any]) -> torch.Tensor:
        g, lattice, state_attr, _ = batch
        if lattice.dim() == 2:
            lattice = lattice.unsqueeze(0)
        # as matgl's ModelLightningModule.forward: Cartesian positions and image shifts from the lattices
        node_lat = lattice[g.batch]
        g.pos = (g.frac_coords.unsqueeze(dim=-1) * node_lat).sum(dim=1)
        edge_lat = lattice[g.batch[g.edge_index[0]]]
        g.pbc_offshift = (g.pbc_offset.unsqueeze(dim=-1) * edge_lat).sum(dim=1)
        out = self.model(g, state_attr=state_attr).reshape(-1)
        return self.target_mean + self.target_std * out

    @staticmethod
    def to_device(batch: tuple[Any, Any, Any, Any], device: torch.device, non_blocking: bool = False) -> Any:
        if device.type == "cpu":
            return batch
        return tuple(x.to(device, non_blocking=non_blocking) for x in batch)

    @staticmethod
    def targets(batch: tuple[Any, Any, Any, Any]) -> torch.Tensor:
        return batch[3]

    @staticmethod
    def size(batch: tuple[Any, Any, Any, Any]) -> tuple[int, int, int]:
        return PygAdapter.size(batch[0])


def _from_dir(cls: Any, path: Path, cutoff: float) -> nn.Module:
    missing = [f for f in MATGL_FILES if not (path / f).is_file()]
    if missing:
        raise RegistryError(f"matgl weights directory {path} lacks {missing}; give a directory matgl's "
                            "model.save(DIR) wrote (--set weights=DIR)")
    saved = json.loads((path / "model.json").read_text())
    if saved.get("@class") != cls.__name__:
        raise RegistryError(f"matgl weights in {path} are a {saved.get('@class')}, not a {cls.__name__}; "
                            f"train it with --model {str(saved.get('@class')).lower()}")
    model = cls.load({f: str(path / f) for f in MATGL_FILES})  # a dict of local files: never the hub
    if abs(float(model.cutoff) - cutoff) > 1e-9:
        raise RegistryError(f"matgl weights in {path} use a {float(model.cutoff):g} Å cutoff but the store's "
                            f"graphs use {cutoff:g} Å; convert with --set cutoff={float(model.cutoff):g}")
    return model


def _build_m3gnet(target_mean: float, target_std: float, graph_params: dict[str, Any], units: int, nblocks: int,
                  threebody_cutoff: float, readout: str, weights: str | None) -> MatglRegressor:
    models, cutoff = _models(), float(graph_params.get("cutoff", 5.0))
    if weights:
        return MatglRegressor(_from_dir(models.M3GNet, Path(weights), cutoff), target_mean, target_std)
    if threebody_cutoff > cutoff:
        raise RegistryError(f"threebody_cutoff {threebody_cutoff:g} Å exceeds the graph cutoff {cutoff:g} Å; "
                            f"set --set threebody_cutoff=<= {cutoff:g}")
    model = models.M3GNet(element_types=_element_types(), units=units, dim_node_embedding=units,
                          dim_edge_embedding=units, nblocks=nblocks, cutoff=cutoff, threebody_cutoff=threebody_cutoff,
                          is_intensive=True, readout_type=readout)
    return MatglRegressor(model, target_mean, target_std)


def _build_tensornet(target_mean: float, target_std: float, graph_params: dict[str, Any], units: int, nblocks: int,
                     readout: str, weights: str | None) -> MatglRegressor:
    models, cutoff = _models(), float(graph_params.get("cutoff", 5.0))
    if weights:
        return MatglRegressor(_from_dir(models.TensorNet, Path(weights), cutoff), target_mean, target_std)
    model = models.TensorNet(element_types=_element_types(), units=units, nblocks=nblocks, cutoff=cutoff,
                             is_intensive=True, readout_type=readout)
    return MatglRegressor(model, target_mean, target_std)


def _element_types() -> tuple[str, ...]:

    return element_types()


def _options(nblocks: int, readouts: tuple[str, ...]) -> dict[str, Option]:
    return {
        "units": Option(64, "a positive integer", "matgl's default width: 64 features", int_at_least(1)),
        "nblocks": Option(nblocks, "a positive integer", f"matgl's default: {nblocks} interaction blocks", int_at_least(1)),
        "readout": Option("weighted_atom", f"one of {readouts}", "matgl's default readout (weighted atom sum)",
                          lambda v: v in readouts),
        "weights": Option(None, "a directory matgl's model.save() wrote, or none",
                          "from scratch (matgl ships no weights in its wheel; its pretrained ones are downloads)",
                          lambda v: v is None or isinstance(v, str)),
    }


_SCHEDULE = dict(schedule="cosine", schedule_reason="matgl's ModelLightningModule: Adam with cosine decay")
_EPOCHS = dict(epoch_scale=5, epoch_reason="trained from scratch: 5x the epochs of a pretrained model")

M3GNET = Model(
    name="m3gnet", graph_kind="matgl", extra="matgl", deterministic=True,
    description="M3GNet (the matgl package's model, PyG): many-body graph network with three-body interactions",
    # calibration measures the device's figure; these are the Plan's first guess (64 wide, fp32, with three-body
    # triplets within 4 Å per bond)
    builder=_build_m3gnet, bytes_per_atom=20_000, bytes_per_edge=12_000, lr=1e-3, **_SCHEDULE, **_EPOCHS,
    potential_builder=build_m3gnet_potential, potential_exports={"matgl_potential": export_potential},
    options={**_options(3, ("weighted_atom", "reduce_atom", "set2set")),
             "threebody_cutoff": Option(4.0, "a positive number of Å, at most the graph cutoff",
                                        "matgl's default three-body cutoff: 4 Å",
                                        lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0)},
)

TENSORNET = Model(
    name="tensornet", graph_kind="matgl", extra="matgl", deterministic=True,
    description="TensorNet (the matgl package's model, PyG): O(3)-equivariant Cartesian tensor network",
    builder=_build_tensornet, bytes_per_atom=30_000, bytes_per_edge=8_000, lr=1e-3, **_SCHEDULE, **_EPOCHS,
    potential_builder=build_tensornet_potential, potential_exports={"matgl_potential": export_potential},
    options=_options(2, ("weighted_atom", "reduce_atom")),
)
