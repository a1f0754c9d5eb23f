"""Fine-tuning CHGNet's shipped pretrained weights on a scalar target (e.g. formation energy per atom).

The prediction is CHGNet's energy head (``model(graphs)["e"]``, eV/atom) scaled, plus a learned
per-element reference averaged over the cell's atoms: ``a * e + mean_i mu[Z_i]``. That is the form of
a formation energy (total energy minus elemental references), so a least-squares fit of ``a`` and
``mu`` on a few hundred training graphs starts fine-tuning on the target's scale.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from colab_kit.registry import Model, Option


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


def _export_chgnet(module: CHGNetRegressor, path: Any) -> Any:
    from colab_kit.export_chgnet import export_chgnet

    return export_chgnet(module, path)


SPEC = Model(
    name="chgnet", graph_kind="chgnet", description="CHGNet's pretrained weights fine-tuned on the target",
    builder=_build, bytes_per_atom=20_000, bytes_per_edge=6_000, lr=1e-3,
    epoch_scale=1, epoch_reason="pretrained: a few epochs fine-tune it", exports={"chgnet.pt": _export_chgnet},
    options={"pretrained": Option("0.3.0", "a CHGNet version such as '0.3.0', or none (from scratch)",
                                  "CHGNet's shipped pretrained weights", lambda v: v is None or isinstance(v, str)),
             "freeze_layers": Option(0, "an integer from 0 to 4", "fine-tune every layer",
                                     lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 4)},
)
