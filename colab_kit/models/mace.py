"""MACE (the ``mace-torch`` package) as an interatomic potential, trained from the store's MACE graphs.

The model is mace's own ``ScaleShiftMACE`` (from scratch, ``mace_run_train``'s defaults at a CPU-sized width) or
the model object of a local MACE model file (``--set weights=FILE``: a foundation model such as MACE-MP-0, or a
model mace's trainer saved; its ``r_max`` must be the store's cutoff). Energies, forces (``-dE/dr``) and stress (the
strain derivative) are mace's own ``forward(compute_force=True, compute_stress=True)``; nothing of the model is
re-implemented. The adapter does what mace's ``AtomicData`` does before the call: one-hot ``node_attrs`` over the
model's elements, ``edge_index`` as (sender = centre, receiver = neighbour), and Cartesian ``shifts`` from the
integer image of each neighbour (the store's radius-graph arrays, :mod:`colab_kit.graphs.mace`).

Before the first step the per-element reference energies (``E0s``) are fitted by least squares on the first training
batches (what mace's ``--E0s=average`` estimates); from scratch also the average neighbour count (mace's
``avg_num_neighbors``, kept in a buffer so that it is in every checkpoint) and the interaction energy's scale (the
RMS force, mace's ``rms_forces_scaling``). MACE has no magnetic-moment head.

A MACE model file is a pickled module (mace's format, ``torch.save(model)``): ``weights=FILE`` unpickles it, so load
only files you trust. colab_kit's own checkpoints stay state dicts; ``export`` writes ``mace.model`` for mace's
``MACECalculator`` and its tools. Importing mace sets ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` for the whole process
(mace's calculator relies on it to read those files); colab_kit's own ``torch.load`` calls pass ``weights_only=True``,
which that variable does not override, so its checkpoints still refuse a pickle.
"""

from __future__ import annotations

import os
import re
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from colab_kit import registry
from colab_kit.models.common import PygAdapter, ridge_per_element
from colab_kit.registry import Model, Option, RegistryError, int_at_least

EV_A3_TO_GPA = 160.21766208  # eV/Å³ -> GPa
ELEMENTS = tuple(range(1, 90))  # H..Ac: the z table of MACE-MP's foundation models, for a model from scratch


#: what importing mace and building its model print once per process, harmless here: e3nn's TorchScript code
#: generation, and e3nn reading its own constants while mace's TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set
_NOISE = ("The TorchScript type system doesn't support instance-level annotations",
          "Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD detected")


@contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        for text in _NOISE:
            warnings.filterwarnings("ignore", message=re.escape(text), category=UserWarning)
        yield


def _mace(module: str, what: str) -> Any:
    with _quiet():
        return registry.require(module, "mace", what)


class MacePotential(nn.Module):
    """A MACE model predicting ``{"e": [G] eV/atom, "f": [N, 3] eV/Å, "s": [G, 3, 3] GPa tensile positive}``."""

    is_potential = True

    def __init__(self, model: nn.Module, targets: str, from_file: bool = False) -> None:
        super().__init__()
        if "m" in targets:
            raise RegistryError("MACE has no magnetic-moment head: train energies, forces and stresses with --set "
                                "potential_targets=efs, or magnetic moments with --model chgnet")
        self.targets_trained = targets
        self.mace = model
        self.from_file = from_file
        numbers = model.atomic_numbers.long().cpu()
        index = torch.full((int(numbers.max()) + 1,), -1, dtype=torch.long)
        index[numbers] = torch.arange(len(numbers))
        self.register_buffer("z_index", index, persistent=False)
        self.register_buffer("avg_neighbors", torch.tensor(float(model.interactions[0].avg_num_neighbors)))
        self.register_buffer("initialised", torch.tensor(False))
        # mace keeps avg_num_neighbors as a plain attribute of each interaction: put the buffered value there whenever
        # the buffer changes (a checkpoint loaded, the fit before the first step), never once per step
        self.register_load_state_dict_post_hook(lambda module, _keys: module.forward_ready())

    def forward(self, batch: tuple[Any, Any]) -> dict[str, torch.Tensor]:
        g, _ = batch
        z = g.z.long()
        if int(z.max()) >= len(self.z_index) or bool((self.z_index[z] < 0).any()):
            known = {int(n) for n in self.mace.atomic_numbers}
            extra = sorted({int(n) for n in z.unique()} - known)
            raise RegistryError(f"this MACE model knows atomic numbers {sorted(known)}, not {extra} (in graphs "
                                f"{getattr(g, 'graph_id', '?')}); train from scratch without --set weights, or use a "
                                "model file trained on those elements")
        cell = g.cell.reshape(-1, 3, 3)
        neighbor, center = g.edge_index  # the store's radius graph: row 0 neighbour j (with its image), row 1 centre i
        unit_shifts = g.edge_shift.to(cell.dtype)
        shifts = torch.bmm(unit_shifts.unsqueeze(1), cell[g.batch[center]]).squeeze(1)
        data = {"positions": g.pos, "cell": cell.reshape(-1, 3), "edge_index": torch.stack([center, neighbor]),
                "shifts": shifts, "unit_shifts": unit_shifts,
                "node_attrs": nn.functional.one_hot(self.z_index[z], len(self.mace.atomic_numbers)).to(g.pos.dtype),
                "batch": g.batch, "ptr": g.ptr, "head": torch.zeros(int(g.num_graphs), dtype=torch.long,
                                                                    device=z.device)}
        stress = "s" in self.targets_trained
        # forces and stress are gradients, in evaluation too. TorchScript's executor re-optimises e3nn's scripted
        # modules after their first calls, which moves results by ~1e-7: a run resumed in a new process (a cold
        # executor) would then drift from the uninterrupted one. Unoptimised, a resume is exact (~5 % slower on a CPU)
        with torch.enable_grad(), torch.jit.optimized_execution(False):
            out = self.mace(data, training=self.training, compute_force=True, compute_stress=stress)
        atoms = (g.ptr[1:] - g.ptr[:-1]).to(out["energy"].dtype)
        pred = {"e": out["energy"] / atoms, "f": out["forces"]}
        if stress:  # mace: (1/V) dE/d(strain), eV/Å³: tensile positive, as the store's
            pred["s"] = out["stress"].reshape(-1, 3, 3) * EV_A3_TO_GPA
        return pred

    def calculator(self, device: Any = "cpu") -> Any:
        """mace's own ``MACECalculator`` around this model (ASE's units: eV, eV/Å, eV/Å³)."""
        calculators = _mace("mace.calculators", "a MACE model's ASE calculator")
        self.forward_ready()
        model = self.mace.eval()
        dtype = "float64" if next(model.parameters()).dtype == torch.float64 else "float32"
        return calculators.MACECalculator(models=model, device=str(device), default_dtype=dtype)

    def forward_ready(self) -> None:
        """Put the buffered average neighbour count into mace's interactions (after a load or a fit; for export)."""
        for block in self.mace.interactions:
            block.avg_num_neighbors = float(self.avg_neighbors)

    @torch.no_grad()
    def init_output(self, batches: list[Any], ridge: float = 1e-4) -> None:
        """Per-element energies (E0s) by ridge least squares of the batches' total energies on their element counts
        (elements absent from them keep 0); from scratch also the average neighbour count and the RMS force as the
        interaction energy's scale."""
        n_types = len(self.mace.atomic_numbers)
        rows, energies, edges, atoms, forces = [], [], 0, 0, []
        for g, frames in batches:
            counts = torch.zeros(len(frames.energy), n_types, dtype=torch.float64)
            counts.index_put_((g.batch.cpu(), self.z_index[g.z.long()].cpu()),
                              torch.ones(len(g.batch), dtype=torch.float64), accumulate=True)
            rows.append(counts)
            energies.append(frames.energy.double().cpu() * frames.atoms.double().cpu())
            edges, atoms = edges + int(g.edge_index.shape[1]), atoms + int(g.num_nodes)
            forces.append(frames.forces.double().cpu().reshape(-1))
        refs, _ = ridge_per_element(torch.cat(rows), torch.cat(energies), ridge)
        e0 = self.mace.atomic_energies_fn.atomic_energies
        e0.copy_(refs.to(e0.dtype).reshape(e0.shape))
        if not self.from_file:
            self.avg_neighbors.fill_(edges / max(atoms, 1))
            self.forward_ready()
            f = torch.cat(forces)
            f = f[torch.isfinite(f)]
            scale = getattr(self.mace, "scale_shift", None)
            if scale is not None and len(f):
                scale.scale.fill_(float(f.square().mean().sqrt()) or 1.0)
        self.initialised.fill_(True)

    @staticmethod
    def to_device(batch: Any, device: torch.device, non_blocking: bool = False) -> Any:
        g, frames = batch
        if device.type == "cpu":
            return batch
        return g.to(device, non_blocking=non_blocking), frames.to(device, non_blocking)

    @staticmethod
    def targets(batch: Any) -> Any:
        return batch[1]

    @staticmethod
    def size(batch: Any) -> tuple[int, int, int]:
        return PygAdapter.size(batch[0])


#: where the Python objects a MACE model file names may come from (its pickle's globals): a name elsewhere (``os``,
#: ``subprocess``, ``builtins.exec`` ...) is refused before anything is unpickled
MODEL_FILE_MODULES = ("mace.", "e3nn.", "opt_einsum_fx.", "torch.nn.", "torch.fx.", "numpy.", "collections.")


def _from_file(path: Path, cutoff: float) -> nn.Module:
    """The module in a MACE model file. The format is a pickle (``torch.save(model)``, and e3nn's ``torch.fx`` modules
    rebuild their code from it): loading one runs code, so this reads only the file the user named, and first refuses
    one whose pickle names anything outside :data:`MODEL_FILE_MODULES`."""
    if not path.is_file():
        raise RegistryError(f"MACE model file {path} does not exist; give a file mace saved (--set weights=FILE)")
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as exc:  # noqa: BLE001 - not a torch archive at all
        raise RegistryError(f"{path} is not a MACE model file ({type(exc).__name__}: {exc}); give a file mace's "
                            "trainer or torch.save(model) wrote") from None
    foreign = sorted(n for n in names if not n.startswith(MODEL_FILE_MODULES))
    if foreign:
        raise RegistryError(f"{path} names {', '.join(foreign[:3])} in its pickle, which a MACE model does not: not "
                            "loaded (it could run any code); use a model file from mace's trainer or the MACE authors")
    model = torch.load(path, map_location="cpu", weights_only=False)  # mace's format is a pickled module
    if not (isinstance(model, nn.Module) and hasattr(model, "atomic_numbers") and hasattr(model, "r_max")):
        raise RegistryError(f"{path} is not a MACE model file (it holds a {type(model).__name__}); give a file "
                            "mace's trainer or torch.save(model) wrote")
    r_max = float(model.r_max)
    if abs(r_max - cutoff) > 1e-6:
        raise RegistryError(f"MACE model {path} has r_max {r_max:g} Å but the store's graphs use {cutoff:g} Å; "
                            f"convert with --set cutoff={r_max:g}")
    return model.float()


def build_potential(targets: str, graph_params: dict[str, Any], channels: int, max_L: int, num_interactions: int,
                    correlation: int, weights: str | None) -> MacePotential:
    """A MACE potential: mace's ``ScaleShiftMACE`` from scratch, or the model in the local file ``weights``."""
    modules = _mace("mace.modules", "the MACE potential")
    cutoff = float(graph_params.get("cutoff", 5.0))
    if weights:
        return MacePotential(_from_file(Path(weights), cutoff), targets, from_file=True)
    o3 = _mace("e3nn.o3", "the MACE potential")
    with _quiet():
        model = _scale_shift_mace(modules, o3, cutoff, channels, max_L, num_interactions, correlation)
    return MacePotential(model, targets)


def _scale_shift_mace(modules: Any, o3: Any, cutoff: float, channels: int, max_L: int, num_interactions: int,
                      correlation: int) -> nn.Module:
    irreps = " + ".join(f"{channels}x{ell}{'e' if ell % 2 == 0 else 'o'}" for ell in range(max_L + 1))
    block = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    return modules.ScaleShiftMACE(
        r_max=cutoff, num_bessel=8, num_polynomial_cutoff=5, max_ell=3, interaction_cls=block,
        interaction_cls_first=block, num_interactions=num_interactions, num_elements=len(ELEMENTS),
        hidden_irreps=o3.Irreps(irreps), MLP_irreps=o3.Irreps("16x0e"),
        atomic_energies=torch.zeros(len(ELEMENTS)).numpy(), avg_num_neighbors=1.0, atomic_numbers=list(ELEMENTS),
        correlation=correlation, gate=nn.functional.silu, radial_MLP=[64, 64, 64], atomic_inter_scale=1.0,
        atomic_inter_shift=0.0)


def _property(**_: Any) -> Any:
    raise RegistryError("MACE trains as an interatomic potential only: add --task potential")


def export_model_file(potential: MacePotential, path: str | Path) -> Path:
    """The trained model as mace's model file (``torch.save`` of the module): ``MACECalculator(model_paths=...)``
    and mace's tools read it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    potential.forward_ready()
    tmp = path.with_name(path.name + ".tmp")
    torch.save(potential.mace, tmp)
    os.replace(tmp, path)
    return path


SPEC = Model(
    name="mace", graph_kind="mace", extra="mace", potential_only=True,
    description="MACE (the mace-torch package): higher-order equivariant message passing, an interatomic potential",
    # calibration measures the device's figure; these are the Plan's first guess (64 channels, L=1, fp32)
    builder=_property, bytes_per_atom=40_000, bytes_per_edge=30_000, lr=1e-2, schedule="cosine",
    schedule_reason="cosine decay over the epochs (mace_run_train's learning rate, 0.01)", epoch_scale=5,
    epoch_reason="trained from scratch: 5x the epochs of a pretrained model",
    potential_builder=build_potential, potential_exports={"mace.model": export_model_file},
    options={
        "channels": Option(64, "a positive integer", "64 channels per irrep (mace_run_train's default is 128: a "
                           "CPU-sized width)", int_at_least(1)),
        "max_L": Option(1, "0, 1 or 2", "mace_run_train's default: equivariant features up to L=1",
                        lambda v: v in (0, 1, 2)),
        "num_interactions": Option(2, "a positive integer", "mace_run_train's default: 2 interaction layers",
                                   int_at_least(1)),
        "correlation": Option(3, "a positive integer", "mace_run_train's default: body order 4 (correlation 3)",
                              int_at_least(1)),
        "weights": Option(None, "a MACE model file, or none", "from scratch; a foundation model file (e.g. "
                          "MACE-MP-0's) to fine-tune it", lambda v: v is None or isinstance(v, str)),
    },
)
