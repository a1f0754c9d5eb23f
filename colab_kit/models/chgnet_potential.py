"""CHGNet as an interatomic potential: its shipped pretrained weights fine-tuned on energies, forces, stresses and
magnetic moments, by CHGNet's own forward pass (``CHGNet(graphs, task="efsm")``: forces ``-dE/dr`` and stress from
the strain derivative, with ``create_graph`` so the loss trains through them).

Units are CHGNet's, which are the store's: energy eV/atom, forces eV/Å, stress GPa tensile positive, magnetic moments
μB (CHGNet predicts ``|m|``, so the labels are compared as ``|m|``, as CHGNet's own Trainer does).

Before the first step (``init_output``) the composition model's per-element energies (CHGNet's ``AtomRef``) are
shifted by a least-squares fit of the frames' energy residuals: DFT settings other than MPtrj's move every
element's energy by a constant, which is not worth a thousand gradient steps, and does not move forces or stress.
The fine-tuned potential is a plain CHGNet: :func:`export_potential` writes it as the file ``CHGNet.from_file``
loads, so CHGNet's StructOptimizer, MolecularDynamics and CHGNetCalculator use it.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from colab_kit.errors import ColabKitError
from colab_kit.models.common import ridge_per_element
from colab_kit.util.files import atomic_write_bytes

N_ELEMENTS = 94  # AtomRef's max_num_elements: CHGNet embeds Z = 1..94


class PotentialError(ColabKitError, ValueError):
    """A CHGNet that cannot be fine-tuned or exported as a potential; the message names it and the fix."""


class CHGNetPotential(nn.Module):
    """CHGNet predicting ``{"e": [G] eV/atom, "f": [N, 3], "s": [G, 3, 3], "m": [N]}`` for the trained targets.

    Args:
        targets: ``"ef"``, ``"efs"``, ``"efm"`` or ``"efsm"`` (what the store's frames train).
        pretrained: CHGNet's shipped weights (``"0.3.0"``) or None (from scratch).
        freeze_layers: freeze the embeddings and the first ``freeze_layers`` atom-conv layers.
    """

    is_potential = True

    def __init__(self, targets: str = "efs", pretrained: str | None = "0.3.0", freeze_layers: int = 0) -> None:
        super().__init__()
        from chgnet.model import CHGNet

        self.targets_trained = targets
        self.chgnet = CHGNet.load(model_name=pretrained, use_device="cpu", verbose=False) if pretrained else CHGNet()
        warnings.filterwarnings("ignore", "Converting a tensor with requires_grad=True to a scalar",
                                UserWarning, r"chgnet\.model\.model")
        if self.chgnet.composition_model is None or not hasattr(self.chgnet.composition_model, "fc"):
            raise PotentialError("this CHGNet has no per-element AtomRef composition model; fine-tune a pretrained one")
        self.chgnet.composition_model.fitted = True
        self.register_buffer("initialised", torch.tensor(False))
        if freeze_layers > 0:
            m = self.chgnet
            for module in (m.atom_embedding, m.bond_embedding, m.angle_embedding, m.bond_basis_expansion,
                           m.angle_basis_expansion, *m.atom_conv_layers[:freeze_layers]):
                for p in module.parameters():
                    p.requires_grad_(False)

    def forward(self, batch: tuple[tuple[list[Any], Any], Any]) -> dict[str, torch.Tensor]:
        (graphs, _), _ = batch
        task = "e" + "".join(t for t in "fsm" if t in self.targets_trained)
        with torch.enable_grad():  # forces and stress are gradients, in evaluation too
            out = self.chgnet(graphs, task=task)
        pred = {"e": out["e"]}
        if "f" in out:
            pred["f"] = torch.cat(out["f"])
        if "s" in out:
            pred["s"] = torch.stack(out["s"])
        if "m" in out:
            pred["m"] = torch.cat(out["m"])
        return pred

    def calculator(self, device: Any = "cpu") -> Any:
        """CHGNet's own ASE calculator around this model (stress in eV/Å³, ASE's sign)."""
        from chgnet.model.dynamics import CHGNetCalculator

        return CHGNetCalculator(model=self.chgnet.eval(), use_device=str(device))

    @torch.no_grad()
    def init_output(self, batches: list[tuple[list[Any], Any]], ridge: float = 1e-4) -> None:
        """Shift AtomRef's per-element energies by the ridge least-squares fit of ``label - prediction`` (eV/atom) on
        the atom fractions of ``batches`` (the first training batches); elements absent from them keep theirs."""
        rows, residuals = [], []
        for (graphs, _), frames in batches:
            with torch.enable_grad():
                e = self.chgnet(graphs, task="e")["e"].detach()
            rows.append(torch.stack([torch.bincount(g.atomic_number.long() - 1, minlength=N_ELEMENTS).double()
                                     / len(g.atomic_number) for g in graphs]))
            residuals.append(frames.energy.double().cpu() - e.double().cpu())
        shift, seen = ridge_per_element(torch.cat(rows), torch.cat(residuals), ridge)
        weight = self.chgnet.composition_model.fc.weight
        weight[0, seen] += shift[seen].to(weight.dtype).to(weight.device)
        self.initialised.fill_(True)

    @staticmethod
    def to_device(batch: tuple[tuple[list[Any], Any], Any], device: torch.device, non_blocking: bool = False) -> Any:
        (graphs, energy), frames = batch
        if device.type == "cpu":
            return batch
        return ([g.to(device) for g in graphs], energy.to(device)), frames.to(device, non_blocking=non_blocking)

    @staticmethod
    def targets(batch: tuple[tuple[list[Any], Any], Any]) -> Any:
        return batch[1]

    @staticmethod
    def size(batch: tuple[tuple[list[Any], Any], Any]) -> tuple[int, int, int]:
        graphs = batch[0][0]
        return len(graphs), sum(len(g.atomic_number) for g in graphs), sum(len(g.atom_graph) for g in graphs)


def build(targets: str, graph_params: dict[str, Any], pretrained: str | None, freeze_layers: int) -> CHGNetPotential:
    del graph_params  # CHGNet's cutoffs are its converter's, checked against the store by the graph kind
    return CHGNetPotential(targets=targets, pretrained=pretrained, freeze_layers=freeze_layers)


def export_potential(potential: CHGNetPotential, path: str | Path) -> Path:
    """Write the fine-tuned CHGNet as the file ``chgnet.model.CHGNet.from_file(path)`` loads (CHGNet's
    ``{"model": {"model_args", "state_dict"}}`` layout, plain tensors: ``torch.load(weights_only=True)`` reads it)."""
    if not isinstance(potential, CHGNetPotential):
        raise PotentialError(f"export_potential needs a CHGNetPotential (got {type(potential).__name__})")
    model = potential.chgnet
    state = {k: v.detach().to("cpu", copy=True).float() if v.is_floating_point() else v.detach().cpu().clone()
             for k, v in model.state_dict().items()}
    args = dict(model.model_args)
    if not isinstance(args.get("composition_model"), str):
        args["composition_model"] = "MPtrj"  # from_dict rebuilds an AtomRef; its fitted weights are in state_dict
    buf = io.BytesIO()
    torch.save({"model": {"model_args": args, "state_dict": state},
                "colab_kit": {"source": "colab_kit CHGNetPotential", "targets": potential.targets_trained}}, buf)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
