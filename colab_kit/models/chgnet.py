"""Fine-tuning CHGNet's shipped pretrained weights on a scalar target (e.g. formation energy per atom).

The prediction is CHGNet's energy head (``model(graphs)["e"]``, eV/atom) scaled, plus a learned
per-element reference averaged over the cell's atoms: ``a * e + mean_i mu[Z_i]``. That is the form of
a formation energy (total energy minus elemental references), so a least-squares fit of ``a`` and
``mu`` on a few hundred training graphs starts fine-tuning on the target's scale.

Export: a fine-tuned CHGNet as a plain CHGNet file (:func:`export_chgnet`): ``chgnet.model.CHGNet.from_file(path)`` loads it, so CHGNet's own
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
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from colab_kit.errors import ColabKitError
from colab_kit.models.chgnet_potential import build as build_potential
from colab_kit.models.chgnet_potential import export_potential
from colab_kit.registry import Model, Option
from colab_kit.util.files import atomic_write_bytes

N_ELEMENTS = 94  # AtomRef's max_num_elements: CHGNet embeds Z = 1..94


class CHGNetRegressor(nn.Module):
    """CHGNet + affine output map.

    Args:
        pretrained: load CHGNet's shipped weights (``"0.3.0"``) or start from scratch (``None``).
        freeze_layers: freeze the embeddings and the first ``freeze_layers`` atom-conv layers
            (0 = train everything; CHGNet's own fine-tuning example freezes the embeddings and 3).
    """

    def __init__(self, pretrained: str | None = "0.3.0", freeze_layers: int = 0,
                 target_mean: float = 0.0, target_std: float = 1.0) -> None:
        super().__init__()
        from chgnet.model import CHGNet

        self.chgnet = CHGNet.load(model_name=pretrained, use_device="cpu", verbose=False) if pretrained else CHGNet()
        # CHGNet's BatchedGraph makes its volume tensor from tensors that need grad (chgnet/model/model.py), and torch
        # warns on every run; the message is about CHGNet's own line, not the user's data
        warnings.filterwarnings("ignore", "Converting a tensor with requires_grad=True to a scalar",
                                UserWarning, r"chgnet\.model\.model")
        self.scale = nn.Parameter(torch.tensor(1.0))
        self.reference = nn.Parameter(torch.full((119,), float(target_mean)))  # per-element, by Z
        self.register_buffer("initialised", torch.tensor(False))
        self.freeze(freeze_layers)

    def freeze(self, n_layers: int) -> None:
        if n_layers <= 0:
            return
        m = self.chgnet
        frozen = [m.atom_embedding, m.bond_embedding, m.angle_embedding, m.bond_basis_expansion,
                  m.angle_basis_expansion, *m.atom_conv_layers[:n_layers]]
        for module in frozen:
            for p in module.parameters():
                p.requires_grad_(False)

    @staticmethod
    def _fractions(graphs: list[Any]) -> torch.Tensor:
        """Composition as atom fractions ``[G, 119]`` indexed by Z."""
        rows = [torch.bincount(g.atomic_number.long(), minlength=119).float() / len(g.atomic_number) for g in graphs]
        return torch.stack(rows)

    @torch.no_grad()
    def init_output(self, batches: list[tuple[list[Any], torch.Tensor]],
                    ridges: tuple[float, ...] = (1e-6, 1e-4, 1e-3, 1e-2)) -> None:
        """Least-squares ``a`` and per-element ``mu`` so ``a * chgnet_e + x @ mu`` fits the targets, with the ridge
        (``ridge * n``, towards ``a = 1``, ``mu = mean(y)``) that predicts a held-out fifth of the graphs best.

        Formation energies need a tiny ridge: ``mu`` sits at minus the elemental references, several eV/atom from any
        prior, and ridge 1e-3 fitted ``a ~ 0.02`` (composition alone, 0.33 eV/atom on MP formation energies) where 1e-6
        gives ``a ~ 0.96`` and 0.04 before training (docs/performance.md). A target CHGNet's energy says little about,
        on few graphs (50 JARVIS band gaps), needs a large one, or ``mu`` fits noise."""
        es, xs, ys = [], [], []
        for graphs, y in batches:
            es.append(self.chgnet(graphs, task="e")["e"].double().cpu())
            xs.append(self._fractions(graphs).double().cpu())
            ys.append(y.double().cpu())
        design = torch.cat([torch.cat(es).unsqueeze(1), torch.cat(xs)], dim=1)
        y = torch.cat(ys)
        held = torch.arange(len(y)) % 5 == 4
        best = min(ridges, key=lambda r: float((design[held] @ self._solve(design[~held], y[~held], r)
                                                 - y[held]).abs().mean()) if held.any() and (~held).any() else 0.0)
        sol = self._solve(design, y, best)
        self.scale.copy_(sol[0].float())
        self.reference.copy_(sol[1:].float())
        self.initialised.fill_(True)

    @staticmethod
    def _solve(design: torch.Tensor, y: torch.Tensor, ridge: float) -> torch.Tensor:
        prior = torch.cat([torch.ones(1, dtype=torch.float64), torch.full((119,), float(y.mean()), dtype=torch.float64)])
        lhs = design.T @ design + ridge * len(y) * torch.eye(120, dtype=torch.float64)
        return torch.linalg.solve(lhs, design.T @ y + ridge * len(y) * prior)

    def forward(self, batch: tuple[list[Any], torch.Tensor]) -> torch.Tensor:
        graphs, _ = batch
        e = self.chgnet(graphs, task="e")["e"]
        ref = torch.stack([self.reference[g.atomic_number.long()].mean() for g in graphs])
        return self.scale * e + ref

    @staticmethod
    def to_device(batch: tuple[list[Any], torch.Tensor], device: torch.device, non_blocking: bool = False) -> Any:
        graphs, y = batch
        if device.type == "cpu":
            return graphs, y
        return [g.to(device) for g in graphs], y.to(device, non_blocking=non_blocking)

    @staticmethod
    def targets(batch: tuple[list[Any], torch.Tensor]) -> torch.Tensor:
        return batch[1]

    @staticmethod
    def size(batch: tuple[list[Any], torch.Tensor]) -> tuple[int, int, int]:
        graphs, _ = batch
        return len(graphs), sum(len(g.atomic_number) for g in graphs), sum(len(g.atom_graph) for g in graphs)


def _build(target_mean: float, target_std: float, graph_params: dict[str, Any], pretrained: str | None,
           freeze_layers: int) -> CHGNetRegressor:
    return CHGNetRegressor(pretrained=pretrained, freeze_layers=freeze_layers, target_mean=target_mean,
                           target_std=target_std)


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


SPEC = Model(
    name="chgnet", graph_kind="chgnet", description="CHGNet's pretrained weights fine-tuned on the target",
    builder=_build, bytes_per_atom=20_000, bytes_per_edge=6_000, lr=1e-3,
    epoch_scale=1, epoch_reason="pretrained: a few epochs fine-tune it", exports={"chgnet.pt": export_chgnet},
    potential_builder=build_potential, potential_exports={"chgnet.pt": export_potential},
    options={"pretrained": Option("0.3.0", "a CHGNet version such as '0.3.0', or none (from scratch)",
                                  "CHGNet's shipped pretrained weights", lambda v: v is None or isinstance(v, str)),
             "freeze_layers": Option(0, "an integer from 0 to 4", "fine-tune every layer",
                                     lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 4)},
)
