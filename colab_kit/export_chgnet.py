"""A fine-tuned CHGNet as a plain CHGNet file: ``chgnet.model.CHGNet.from_file(path)`` loads it, so CHGNet's own
StructOptimizer, MolecularDynamics and CHGNetCalculator run the fine-tuned model.

The regressor predicts ``scale * e + mean_i reference[Z_i]`` (eV/atom), ``e`` being CHGNet's energy per atom:
``readout / n_atoms + mean_i w[Z_i - 1]`` (``is_intensive``), where ``readout`` sums the last ``nn.Linear`` of
``chgnet.mlp`` over atoms (``mlp_first``; otherwise ``n_atoms`` times it on the pooled feature) and ``w`` is AtomRef's
per-element weight (a bias-free linear map of atom fractions). Both terms are linear in those weights, so folding is
exact to float32 rounding: that Linear's weight and bias become ``scale *`` themselves, and ``w`` becomes
``scale * w + reference[1:95]`` (Z = 1..94: all CHGNet embeds).
"""

from __future__ import annotations

import copy
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from colab_kit.errors import ColabKitError
from colab_kit.fsutil import atomic_write_bytes
from colab_kit.models.chgnet import CHGNetRegressor

N_ELEMENTS = 94  # AtomRef's max_num_elements: CHGNet embeds Z = 1..94


class ExportError(ColabKitError, ValueError):
    """A model or weights file that cannot be written as a CHGNet file; the message names it and the fix."""


def export_chgnet(regressor: CHGNetRegressor, path: str | Path) -> Path:
    """Write ``regressor`` as a CHGNet file whose energy per atom is the regressor's prediction.

    The structure-dependent energy is multiplied by ``scale`` and the composition term is position-independent, so
    forces (eV/Å) and stress (GPa) are ``scale`` times those of ``regressor.chgnet``; magnetic moments (μB, from a
    head before the readout) are unchanged; site energies (``mlp_first``) are ``scale * site + reference[Z]``.

    Args:
        regressor: a colab_kit ``CHGNetRegressor`` (any device; the file holds CPU tensors).
        path: the file to write (CHGNet's ``{"model": {"model_args", "state_dict"}}`` layout, plain tensors,
            loadable with ``torch.load(weights_only=True)``); written atomically.

    Returns:
        ``path`` as a Path.

    Raises:
        ExportError: ``regressor`` is not a CHGNetRegressor, or its CHGNet is extensive or has another readout.
    """
    if not isinstance(regressor, CHGNetRegressor):
        raise ExportError(f"export_chgnet needs a CHGNetRegressor (got {type(regressor).__name__}): "
                          "pass the model of a chgnet run, or its best.pt to export_chgnet_weights")
    model = copy.deepcopy(regressor.chgnet).cpu().float()
    if not model.is_intensive:
        raise ExportError("CHGNet is_intensive=False cannot hold a per-atom mean reference: export an intensive "
                          "CHGNet (the pretrained ones are)")
    scale = regressor.scale.detach().float().cpu()
    reference = regressor.reference.detach().float().cpu()[1:N_ELEMENTS + 1]
    args = dict(model.model_args)
    with torch.no_grad():
        last = _readout_linear(model)
        last.weight.mul_(scale)
        if last.bias is not None:
            last.bias.mul_(scale)
        atom_ref = _atom_ref(model, args)
        atom_ref.fc.weight.mul_(scale).add_(reference.view(1, -1))
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    payload = {"model": {"model_args": args, "state_dict": state},
               "colab_kit": {"folded_scale": float(scale), "source": "colab_kit CHGNetRegressor"}}
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # a model_args value that is an object, not data
        raise ExportError(f"CHGNet model_args {args!r} do not load with weights_only=True: build the CHGNet "
                          "from plain arguments") from exc
    atomic_write_bytes(path, data)
    return Path(path)


def export_chgnet_weights(weights: str | Path | Mapping[str, Any], path: str | Path,
                          pretrained: str | None = "0.3.0") -> Path:
    """Write a chgnet run's weights (``best.pt``, a ``CHGNetRegressor.state_dict()``) as a CHGNet file.

    Args:
        weights: the state dict, or the file it was saved to with ``torch.save``.
        path: the CHGNet file to write (see :func:`export_chgnet`).
        pretrained: the ``pretrained`` option of the run (its CHGNet's architecture).

    Raises:
        ExportError: the file does not load, is not a CHGNetRegressor state dict, or does not fit ``pretrained``.
    """
    name = str(weights) if isinstance(weights, str | Path) else "state dict"
    if isinstance(weights, str | Path):
        try:
            weights = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ExportError(f"weights file {name} does not load ({type(exc).__name__}): pass the best.pt "
                              "of a chgnet run") from exc
    keys = [str(k) for k in weights] if isinstance(weights, Mapping) else []
    found = {"scale": "scale" in keys, "reference": "reference" in keys,
             "chgnet.*": any(k.startswith("chgnet.") for k in keys)}
    missing = [k for k, ok in found.items() if not ok]
    if missing:
        raise ExportError(f"weights {name} are not a CHGNetRegressor state dict (no {', '.join(missing)}): "
                          "pass the best.pt of a chgnet run")
    regressor = CHGNetRegressor(pretrained=pretrained)
    try:
        regressor.load_state_dict(weights)
    except RuntimeError as exc:
        raise ExportError(f"weights {name} do not fit CHGNet pretrained={pretrained!r}: pass the pretrained "
                          "option the run used") from exc
    return export_chgnet(regressor, path)


def _readout_linear(model: nn.Module) -> nn.Linear:
    """The ``nn.Linear`` that ends ``model.mlp`` (its output is the energy before pooling)."""
    leaves = [m for m in model.mlp.modules() if not list(m.children())]
    last = leaves[-1] if leaves else None
    if not isinstance(last, nn.Linear) or last.out_features != 1:
        raise ExportError(f"CHGNet readout ends with {type(last).__name__}, not a Linear with one output: "
                          "export a CHGNet with final_mlp='MLP' or 'GatedMLP'")
    return last


def _atom_ref(model: nn.Module, args: dict[str, Any]) -> nn.Module:
    """The model's AtomRef, made (zero weights) when it has none; sets ``args`` so ``from_dict`` rebuilds it."""
    from chgnet.model.composition_model import AtomRef

    if model.composition_model is None:
        model.composition_model = AtomRef(is_intensive=True)
        model.composition_model.fc.weight.zero_()
    ref = model.composition_model
    if not isinstance(ref, AtomRef) or ref.fc.weight.shape != (1, N_ELEMENTS) or not ref.is_intensive:
        raise ExportError(f"CHGNet composition_model is {type(ref).__name__}, not an intensive 94-element AtomRef: "
                          "export a CHGNet built with composition_model='MPtrj' (or another AtomRef dataset)")
    if not isinstance(args.get("composition_model"), str):
        args["composition_model"] = "MPtrj"  # any dataset name: from_dict rebuilds an AtomRef, the weights follow
    ref.fitted = True
    return ref
