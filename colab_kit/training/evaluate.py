"""Evaluation: a chunked, no-gradient pass over a split with budgeted batches (halved after an
out-of-memory error), and saved weights loaded back into their model."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from colab_kit.errors import ColabKitError
from colab_kit.loader import make_loaders, splits_for
from colab_kit.models import build_model
from colab_kit.run_folder import RunFolder
from colab_kit.store import GraphStore
from colab_kit.training.budget import cap_gpu_memory
from colab_kit.training.checkpoint import CheckpointError, load_checkpoint, recover_best
from colab_kit.training.oom import memory_fix, retry_on_oom
from colab_kit.training.potential import Scores
from colab_kit.util import distributed
from colab_kit.util.reproducible import use_threads

if TYPE_CHECKING:
    from colab_kit.plan import Plan

log = logging.getLogger(__name__)


class EvaluationError(ColabKitError, RuntimeError):
    """Weights that cannot be evaluated as asked; the message names the file and the fix."""


def amp_dtype_for(plan: Plan, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, whether a GradScaler is needed) for the Plan's ``amp`` on ``device``."""
    if device.type != "cuda" or plan.amp == "off":
        return None, False
    return (torch.bfloat16, False) if plan.amp == "bf16" else (torch.float16, True)


def evaluate(model: Any, loader: Any, device: torch.device, amp_dtype: torch.dtype | None = None) -> dict[str, Any]:
    """MAE / RMSE over a loader, plus predictions and targets (chunked, no gradients).

    Under torchrun each rank's loader holds its share of the batches: the parts are gathered, in the order of a
    single process's batches, so every graph is counted once."""
    parts = _local_pass(model, loader, device, amp_dtype)
    if isinstance(parts, Scores):
        return _potential_scores(parts, loader)
    return _scores(*_gather(parts, loader))


def _local_pass(model: Any, loader: Any, device: torch.device, amp_dtype: torch.dtype | None) -> Any:
    """(predictions, targets) of each of this process's batches; a potential's :class:`Scores` of them."""
    model.eval()
    if getattr(model, "is_potential", False):
        return _potential_pass(model, loader, device, amp_dtype)
    parts = []
    with torch.no_grad():
        for batch in loader:
            batch = model.to_device(batch, device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                pred = model(batch)
            parts.append((pred.float().cpu(), model.targets(batch).float().cpu()))
    return parts


def _potential_pass(model: Any, loader: Any, device: torch.device, amp_dtype: torch.dtype | None) -> Scores:
    """The sums of a potential's errors over this process's batches (forces and stress are gradients: the model
    turns them on inside its forward, nothing is kept of the graph)."""
    scores = Scores(model.targets_trained)
    with torch.no_grad():
        for batch in loader:
            batch = model.to_device(batch, device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                pred = model(batch)
            scores.add({k: v.detach() for k, v in pred.items()}, model.targets(batch))
    return scores


def _potential_scores(scores: Scores, loader: Any) -> dict[str, Any]:
    """A potential's scores across ranks: the :meth:`Scores.result` figures, and the energies as ``pred`` /
    ``target`` (eV/atom) with every target's parity sample under ``parity``."""
    world = getattr(loader.batch_sampler, "world", 1)
    if world > 1 and distributed.active():
        parts = distributed.all_gather(scores)
        scores = parts[0]
        for other in parts[1:]:
            scores.merge(other)
    out = scores.result()
    parity = scores.parity_points()
    energy = parity.get("e", np.zeros((2, 0)))
    out.update(pred=energy[1], target=energy[0], parity=parity)
    return out


def _gather(parts: list[tuple[Any, Any]], loader: Any) -> tuple[Any, Any]:
    """All ranks' batches in global order (batch k of rank r is global batch k x world + r), concatenated."""
    world = getattr(loader.batch_sampler, "world", 1)
    if world > 1 and distributed.active():
        per_rank = distributed.all_gather(parts)
        parts = [per_rank[r][k] for k in range(max(map(len, per_rank))) for r in range(world) if k < len(per_rank[r])]
    p = torch.cat([a for a, _ in parts]) if parts else torch.zeros(0)
    y = torch.cat([b for _, b in parts]) if parts else torch.zeros(0)
    return p, y


def _scores(p: Any, y: Any) -> dict[str, Any]:
    err = p - y
    return {"mae": float(err.abs().mean()) if len(err) else float("nan"),
            "rmse": float(err.pow(2).mean().sqrt()) if len(err) else float("nan"),
            "pred": p.numpy(), "target": y.numpy()}


def evaluate_with_backoff(model: Any, loader: Any, device: torch.device, amp_dtype: torch.dtype | None = None) -> dict[str, Any]:
    """:func:`evaluate`, halving the loader's batches after an out-of-memory error until it fits (on every rank
    when one of several runs out: their shares are cut from the same batches)."""
    sampler = loader.batch_sampler

    def shrink(exc: BaseException) -> None:
        if sampler.max_graphs <= 1:
            raise EvaluationError(f"out of memory evaluating single graphs on {device}; {memory_fix(device)}") from exc
        sampler.set_budget(max(1, sampler.max_atoms // 2), max(1, sampler.max_edges // 2))
        sampler.max_graphs = max(1, sampler.max_graphs // 2)
        log.warning("out of memory in evaluation: batches shrunk to %d graphs / %d edges; evaluating again",
                    sampler.max_graphs, sampler.max_edges)

    parts = retry_on_oom(lambda: _local_pass(model, loader, device, amp_dtype), shrink, device,
                         agreed=getattr(sampler, "world", 1) > 1)
    if isinstance(parts, Scores):
        return _potential_scores(parts, loader)
    return _scores(*_gather(parts, loader))


def trained_model_settings(weights: str | Path) -> dict[str, Any]:
    """The model and its options the run that wrote ``weights`` (a ``best.pt``) trained, from the checkpoint beside
    it ({} when there is none): evaluating a ``--set hidden=64`` model needs no ``--set`` again."""

    try:
        saved = load_checkpoint(RunFolder(Path(weights).parent).checkpoints)
    except CheckpointError:
        return {}
    plan = (saved or {}).get("plan") or {}
    return {"model": plan["model"], **plan.get("model_options", {})} if "model" in plan else {}


def load_weights(store: GraphStore, plan: Plan, weights: str | Path) -> Any:
    """The model of ``plan.model`` for ``store`` with saved weights (``best.pt``, weights-only) loaded."""
    path = Path(weights)
    if path.name == RunFolder(path.parent).best.name and not recover_best(path.parent):  # a damaged or lost best.pt: rebuilt from a checkpoint
        raise EvaluationError(f"no model weights at {path}, and no checkpoint in {path.parent / 'checkpoints'} to "
                              "rebuild them from; train (or run) that model first, or pass the best.pt of a run")
    if not path.is_file():
        raise EvaluationError(f"no model weights at {path}; pass the best.pt of a run, or an exported weights.pt")
    potential = store.potential["targets"] if store.potential is not None else None
    model = build_model(plan.model, graph_params=store.params, options=plan.model_options, potential=potential)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - any file that is not a state dict of this model: torch raises many kinds
        raise EvaluationError(
            f"{path} does not hold {plan.model} weights for this store ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:160]}); pass the best.pt of a run with the same --model and graphs"
        ) from None
    return model.to(torch.device(plan.device))


def potential_budget(store: GraphStore, weights: str | Path) -> tuple[int, int] | None:
    """A potential's evaluation budget: the batch budget its training used (in the checkpoint beside ``weights``), for
    its evaluation steps are training-sized (forces are gradients); None for one label per structure, or when there
    is no checkpoint (then the Plan's)."""
    if store.potential is None:
        return None
    try:
        saved = load_checkpoint(RunFolder(Path(weights).parent).checkpoints)
    except CheckpointError:
        return None
    budget = (saved or {}).get("budget") or {}
    return (int(budget["max_atoms"]), int(budget["max_edges"])) if "max_atoms" in budget else None


def evaluate_weights(store: GraphStore, plan: Plan, weights: str | Path, split: str = "test") -> dict[str, Any]:
    """Load saved model weights and evaluate them on a split of ``store``."""

    use_threads(plan.threads)
    device = torch.device(plan.device)
    cap_gpu_memory(plan, device)
    model = load_weights(store, plan, weights)
    splits = splits_for(store, plan)
    loader = make_loaders(store, plan, splits, budget=potential_budget(store, weights))[split]
    amp_dtype, _ = amp_dtype_for(plan, device)
    return evaluate_with_backoff(model, loader, device, amp_dtype)


def starts_pretrained(store: GraphStore, plan: Plan) -> bool:
    """A potential fine-tuned from weights (CHGNet's pretrained ones, or a model file/directory): it has a "before"."""
    options = plan.model_options
    return store.potential is not None and bool(options.get("pretrained") or options.get("weights"))


def evaluate_shipped(store: GraphStore, plan: Plan, split: str = "test",
                     budget: tuple[int, int] | None = None) -> dict[str, Any] | None:
    """A potential's scores on a split before fine-tuning: the model as its package ships it (CHGNet's pretrained
    weights, no refit of anything), the baseline a fine-tune must beat; None for a model trained from scratch.
    ``budget``: (atoms, edges) per batch, the training run's (:func:`potential_budget`)."""
    options = dict(plan.model_options)
    if not starts_pretrained(store, plan):
        return None
    use_threads(plan.threads)
    device = torch.device(plan.device)
    model = build_model(plan.model, graph_params=store.params, options=options,
                        potential=store.potential["targets"]).to(device)
    loader = make_loaders(store, plan, splits_for(store, plan), budget=budget)[split]
    return evaluate_with_backoff(model, loader, device, amp_dtype_for(plan, device)[0])
