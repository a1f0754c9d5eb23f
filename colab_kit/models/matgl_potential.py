"""M3GNet and TensorNet as interatomic potentials: matgl's own ``Potential`` (``matgl.apps.pes``) around an extensive
model (``is_intensive=False``), trained from the store on energies, forces and stresses.

``Potential.forward`` computes forces (``-dE/dr``) and stress (the strain derivative, GPa, tensile positive: the
store's convention) itself, with ``create_graph`` in training mode. Its total energy is compared per atom. matgl's
models have no magnetic-moment head, so a store that trains magnetic moments is refused with the fix.

Per-element reference energies (``element_refs``) are fitted by least squares on the first training batches before
the first step (what matgl's examples do with its ``AtomRef.fit`` on the training set). The trained potential is
saved in matgl's own layout (:func:`export_potential`: ``matgl.load_model(DIR)`` reads it) and drives ASE through
matgl's ``PESCalculator``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from colab_kit import registry
from colab_kit.graphs.matgl import element_types
from colab_kit.models.common import PygAdapter, ridge_per_element
from colab_kit.registry import RegistryError

MATGL_FILES = ("model.json", "model.pt", "state.pt")  # what matgl's save() writes into a model directory


class MatglPotential(nn.Module):
    """matgl's ``Potential`` predicting ``{"e": [G] eV/atom, "f": [N, 3] eV/Å, "s": [G, 3, 3] GPa}``."""

    is_potential = True

    def __init__(self, model: nn.Module, targets: str) -> None:
        super().__init__()
        pes = registry.require("matgl.apps.pes", "matgl", "a matgl potential")
        if "m" in targets:
            raise RegistryError(f"{type(model).__name__} has no magnetic-moment head: train energies, forces and "
                                "stresses with --set potential_targets=efs, or magnetic moments with --model chgnet")
        self.targets_trained = targets
        self.pes = pes.Potential(model=model, element_refs=torch.zeros(len(element_types())),
                                       calc_forces=True, calc_stresses="s" in targets)
        self.register_buffer("initialised", torch.tensor(False))

    def forward(self, batch: tuple[tuple[Any, Any, Any, Any], Any]) -> dict[str, torch.Tensor]:
        (g, lattice, state_attr, _), _ = batch
        if lattice.dim() == 2:
            lattice = lattice.unsqueeze(0)
        with torch.enable_grad():  # forces and stress are gradients, in evaluation too
            energy, forces, stress, *_ = self.pes(g, lattice, state_attr)
        atoms = torch.bincount(g.batch, minlength=lattice.shape[0]).to(energy.dtype)
        pred = {"e": energy.reshape(-1) / atoms, "f": forces}
        if "s" in self.targets_trained:
            pred["s"] = stress.reshape(-1, 3, 3)
        return pred

    def calculator(self, device: Any = "cpu") -> Any:
        """matgl's ASE calculator around this potential, stress in eV/Å³ (ASE's unit and sign)."""
        ase = registry.require("matgl.ext.ase", "matgl", "a matgl potential's ASE calculator")
        return ase.PESCalculator(potential=self.pes.eval(), stress_unit="eV/A3")

    @torch.no_grad()
    def init_output(self, batches: list[Any], ridge: float = 1e-4) -> None:
        """``element_refs``: per-element energies from a ridge least-squares fit of the total energies of ``batches``
        on their element counts (elements absent from them get 0)."""
        n_types = len(element_types())
        rows, energies = [], []
        for (g, _, _, _), frames in batches:
            counts = torch.zeros(len(frames.energy), n_types, dtype=torch.float64)
            counts.index_put_((g.batch.cpu(), g.node_type.cpu().long()), torch.ones(len(g.batch), dtype=torch.float64),
                              accumulate=True)
            rows.append(counts)
            energies.append(frames.energy.double().cpu() * frames.atoms.double().cpu())
        refs, _ = ridge_per_element(torch.cat(rows), torch.cat(energies), ridge)
        target = self.pes.element_refs.property_offset
        target.copy_(refs.to(target.dtype).reshape(target.shape))
        self.initialised.fill_(True)

    @staticmethod
    def to_device(batch: Any, device: torch.device, non_blocking: bool = False) -> Any:
        graph_batch, frames = batch
        if device.type == "cpu":
            return batch
        return tuple(x.to(device, non_blocking=non_blocking) for x in graph_batch), frames.to(device, non_blocking)

    @staticmethod
    def targets(batch: Any) -> Any:
        return batch[1]

    @staticmethod
    def size(batch: Any) -> tuple[int, int, int]:
        return PygAdapter.size(batch[0][0])


def _scratch(cls_name: str, graph_params: dict[str, Any], weights: str | None, **kw: Any) -> nn.Module:
    models = registry.require("matgl.models", "matgl", "the matgl models (m3gnet, tensornet)")
    cls, cutoff = getattr(models, cls_name), float(graph_params.get("cutoff", 5.0))
    if weights:  # a matgl potential directory (model.save wrote it): its inner model, read locally only
        path = Path(weights)
        missing = [f for f in MATGL_FILES if not (path / f).is_file()]
        if missing:
            raise RegistryError(f"matgl directory {path} lacks {missing}; give a directory matgl's save() wrote")
        loaded = registry.require("matgl", "matgl", "a matgl potential").load_model(str(path))
        model = getattr(loaded, "model", loaded)
        if type(model).__name__ != cls_name:
            raise RegistryError(f"{path} holds a {type(model).__name__}, not a {cls_name}")
        if abs(float(model.cutoff) - cutoff) > 1e-9:
            raise RegistryError(f"{path} uses a {float(model.cutoff):g} Å cutoff but the store's graphs use "
                                f"{cutoff:g} Å; convert with --set cutoff={float(model.cutoff):g}")
        return model
    return cls(element_types=element_types(), cutoff=cutoff, is_intensive=False, **kw)


def build_m3gnet(targets: str, graph_params: dict[str, Any], units: int, nblocks: int, threebody_cutoff: float,
                 readout: str, weights: str | None) -> MatglPotential:
    del readout  # an extensive M3GNet sums its atoms' energies
    return MatglPotential(_scratch("M3GNet", graph_params, weights, units=units, dim_node_embedding=units,
                                   dim_edge_embedding=units, nblocks=nblocks, threebody_cutoff=threebody_cutoff),
                          targets)


def build_tensornet(targets: str, graph_params: dict[str, Any], units: int, nblocks: int, readout: str,
                    weights: str | None) -> MatglPotential:
    del readout
    return MatglPotential(_scratch("TensorNet", graph_params, weights, units=units, nblocks=nblocks), targets)


def export_potential(potential: MatglPotential, path: str | Path) -> Path:
    """Save the potential in matgl's layout (``model.json``, ``model.pt``, ``state.pt``) in the folder ``path``:
    ``matgl.load_model(path)`` reads it, ``matgl.ext.ase.PESCalculator`` drives ASE with it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    potential.pes.save(str(path))
    return path
