"""A trained model as a file set: what rebuilds it (model, options, graph kind and parameters, target) and its
weights, read from a run directory, a training output directory or an exported model directory.

An exported model directory (:func:`export_model`)::

    model.json    {"format": "colab_kit.model", "model", "options", "graph_kind", "graph_params", "target", "unit",
                   "weights_sha256", "colab_kit"}
    weights.pt    the model's state dict (tensors only: loads with ``torch.load(weights_only=True)``)
    chgnet.pt     CHGNet models only: a plain CHGNet that ``chgnet.model.CHGNet.from_file`` loads
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from colab_kit import registry
from colab_kit.errors import ColabKitError
from colab_kit.graphs import get_converter
from colab_kit.models import build_model
from colab_kit.run_folder import RunFolder
from colab_kit.store import read_manifest
from colab_kit.training import CheckpointError, load_checkpoint, recover_best
from colab_kit.util.files import atomic_write_bytes, atomic_write_json, sha256_file
from colab_kit.util.units import target_unit
from colab_kit.version import VERSION

SPEC_FILE = "model.json"
WEIGHTS_FILE = "weights.pt"
SPEC_FORMAT = "colab_kit.model"


class TrainedModelError(ColabKitError, ValueError):
    """A path that does not hold a trained model colab_kit can rebuild; the message says what it needs."""


@dataclass(frozen=True)
class TrainedModel:
    """Everything needed to rebuild a trained model and make its graphs.

    Attributes:
        model: registered model name, e.g. ``"cgcnn"``.
        options: the model's options as trained (``Plan.model_options``).
        graph_kind: the graph kind it reads, e.g. ``"radius"``.
        graph_params: the graph kind's parameters (cutoff, Å, ...), as the training store was built.
        weights: path of the state dict (a ``best.pt`` or an export's ``weights.pt``).
        target: the label's name in the training data (``"e_form"``), or None.
        unit: the target's unit (``"eV/atom"``), or ``""`` when unknown.
    """

    model: str
    options: dict[str, Any]
    graph_kind: str
    graph_params: dict[str, Any]
    weights: Path
    target: str | None = None
    unit: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    potential: str | None = None  # an interatomic potential's trained targets ("efs", ...); None: one label

    @property
    def is_potential(self) -> bool:
        return self.potential is not None

    @property
    def weights_sha256(self) -> str:
        return sha256_file(self.weights)

    def build(self, device: str | torch.device = "cpu") -> Any:
        """The model with its trained weights, in eval mode on ``device``."""

        module = build_model(self.model, graph_params=self.graph_params, options=self.options, potential=self.potential)
        if self.weights == RunFolder(self.weights.parent).best:

            recover_best(self.weights.parent)  # damaged since it was found: rebuilt from a checkpoint
        try:
            module.load_state_dict(torch.load(self.weights, map_location="cpu", weights_only=True))
        except Exception as exc:  # noqa: BLE001 - a file that is not this model's state dict: torch raises many kinds
            raise TrainedModelError(
                f"{self.weights} does not hold {self.model} weights with options {self.options} "
                f"({' '.join(str(exc).split())[:200]}); pass the run directory that wrote it") from exc
        return module.to(torch.device(device)).eval()

    def graph_settings(self) -> dict[str, Any]:
        """The Plan's graph settings (cutoff, ...) for these graph parameters."""

        return registry.graph_kind(self.graph_kind).settings(self.graph_params)


def load_trained(path: str | Path) -> TrainedModel:
    """The trained model at ``path``: a ``run`` directory, a ``train --out`` directory, an exported model directory,
    or a ``best.pt`` / ``weights.pt`` inside one of them.

    Raises:
        TrainedModelError: nothing there says which model and graphs the weights belong to.
    """
    path = Path(path)
    if not path.exists():
        raise TrainedModelError(f"{path}: no such run directory or weights file; pass a run directory "
                                "(e.g. runs/<name>) or an exported model directory")
    root, weights = (path.parent, path) if path.is_file() else (path, None)
    if (root / SPEC_FILE).exists():
        return _from_spec(root, weights)
    plan = _saved_plan(root)
    if plan is None:
        raise TrainedModelError(
            f"{path} holds no {SPEC_FILE}, plan.json or checkpoint: colab_kit cannot tell which model these weights "
            "are; pass the run directory that trained them, or export one with `python -m colab_kit export`")
    folder = RunFolder(root)
    weights = weights or folder.best

    if weights == RunFolder(weights.parent).best and not recover_best(weights.parent):
        raise TrainedModelError(f"{root} has no best.pt yet, and no checkpoint to rebuild it from: training has not "
                                "finished a validation epoch; run the same training command again to continue it")

    conv = get_converter(plan.get("graph_kind", plan.get("converter")), cutoff=plan["cutoff"], bond_cutoff=plan["bond_cutoff"],
                         max_neighbors=plan["max_neighbors"], on_isolated_atoms=plan.get("on_isolated_atoms", "error"))
    target = plan.get("target") or _store_target(root)
    potential = None
    if plan.get("task") == "potential":  # a checkpoint's plan names the trained targets; a run's plan.json says "auto"
        named = plan.get("potential_targets")
        potential = named if named and named != "auto" else _store_potential(root)
    unit = "eV/atom" if potential else target_unit(target, plan.get("data"), plan.get("unit"))
    return TrainedModel(plan["model"], dict(plan.get("model_options", {})), conv.name, conv.params, weights,
                        target, unit, {"data": plan.get("data"), "seed": plan.get("seed")}, potential)


def _from_spec(root: Path, weights: Path | None) -> TrainedModel:
    try:
        spec = json.loads((root / SPEC_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise TrainedModelError(f"{root / SPEC_FILE} is not readable JSON ({exc}); export the model again") from exc
    if spec.get("format") != SPEC_FORMAT:
        raise TrainedModelError(f"{root / SPEC_FILE} is not a colab_kit model file (format {spec.get('format')!r})")
    return TrainedModel(spec["model"], spec["options"], spec.get("graph_kind", spec.get("converter")), spec["graph_params"],
                        weights or root / WEIGHTS_FILE, spec.get("target"), spec.get("unit", ""), spec.get("extra", {}),
                        spec.get("potential"))


def _saved_plan(root: Path) -> dict[str, Any] | None:
    """The Plan a run directory (plan.json) or a training directory (its checkpoint) trained with."""
    folder = RunFolder(root)
    if folder.plan.exists():
        return json.loads(folder.plan.read_text())

    try:
        saved = load_checkpoint(folder.checkpoints)
    except CheckpointError:
        return None
    return (saved or {}).get("plan") or None


def _store_target(root: Path) -> str | None:

    for store in RunFolder(root).stores:
        manifest = read_manifest(store / "manifest.json")
        if manifest is not None:
            return manifest.target_name
    return None


def _store_potential(root: Path) -> str | None:
    """The trained targets of a potential's run, from its store's label spec."""
    for store in RunFolder(root).stores:
        manifest = read_manifest(store / "manifest.json")
        if manifest is not None and manifest.source.get("potential"):
            return manifest.source["potential"]["targets"]
    raise TrainedModelError(f"{root} trained a potential but its store is gone: the store's label spec says what "
                            "it trained; run the same command again to rebuild the store")


def export_model(path: str | Path, out: str | Path) -> dict[str, Path]:
    """Write the trained model at ``path`` (see :func:`load_trained`) as an exported model directory ``out``.

    Returns:
        {"spec": model.json, "weights": weights.pt}, plus each file the model's spec exports for its own package
        (CHGNet's ``chgnet.pt``, keyed by its stem); ``colab_kit.load(out)`` rebuilds the model.
    """
    trained = load_trained(path)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"weights": out / WEIGHTS_FILE, "spec": out / SPEC_FILE}
    if trained.weights.resolve() != files["weights"].resolve():
        atomic_write_bytes(files["weights"], trained.weights.read_bytes())

    spec_ = registry.model(trained.model)
    exports = getattr(spec_, "potential_exports" if trained.is_potential else "exports", {})
    if exports:
        module = trained.build("cpu")
        for name, write in exports.items():  # files for the model's own package (CHGNet.from_file, matgl.load_model)
            files[name.split(".")[0]] = Path(write(module, out / name))

    spec = {k: v for k, v in asdict(trained).items() if k != "weights"}
    spec.update(format=SPEC_FORMAT, weights_sha256=sha256_file(files["weights"]), colab_kit=VERSION)
    spec["weights"] = WEIGHTS_FILE
    atomic_write_json(files["spec"], spec)
    return files
