"""The fit loop: budgeted batches, AdamW + cosine schedule, AMP on CUDA, checkpoints, exact resume,
OOM back-off, early stopping, per-epoch metrics.

Resume is the default: ``fit`` looks for a checkpoint in ``out/checkpoints`` and continues at the
next batch of the epoch it was in, with the same split, order, budget and RNG state; on CPU a
resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from colab_kit.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from colab_kit.errors import ColabKitError
from colab_kit.loader import COLLATE, GraphDataset, load_or_make_splits, make_loaders
from colab_kit.memory import Budget, calibrate, static_budget
from colab_kit.models import build_model
from colab_kit.store import GraphStore, atomic_write_bytes

log = logging.getLogger(__name__)
MAX_OOM_RETRIES = 8


class TrainingError(ColabKitError, RuntimeError):
    """Training cannot go on; the message says what to change."""


@dataclass
class TrainResult:
    out_dir: Path
    status: str  # "finished" | "early-stopped" | "stopped"
    epochs_done: int
    best_epoch: int
    best_val_mae: float
    history: list[dict[str, Any]] = field(default_factory=list)
    budget: Budget | None = None
    resumed_from: dict[str, int] | None = None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def evaluate(model: Any, loader: Any, device: torch.device, amp_dtype: torch.dtype | None = None) -> dict[str, Any]:
    """MAE / RMSE over a loader, plus predictions and targets (chunked, no gradients)."""
    model.eval()
    preds, ys = [], []
    with torch.no_grad():
        for batch in loader:
            batch = model.to_device(batch, device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                pred = model(batch)
            preds.append(pred.float().cpu())
            ys.append(model.targets(batch).float().cpu())
    p = torch.cat(preds) if preds else torch.zeros(0)
    y = torch.cat(ys) if ys else torch.zeros(0)
    err = p - y
    return {"mae": float(err.abs().mean()) if len(err) else float("nan"),
            "rmse": float(err.pow(2).mean().sqrt()) if len(err) else float("nan"),
            "pred": p.numpy(), "target": y.numpy()}


def _amp(plan: Any, device: torch.device) -> tuple[torch.dtype | None, bool]:
    if device.type != "cuda" or plan.amp == "off":
        return None, False
    return (torch.bfloat16, False) if plan.amp == "bf16" else (torch.float16, True)


class _Metrics:
    """Per-epoch metrics appended to metrics.jsonl and metrics.csv."""

    def __init__(self, out: Path) -> None:
        self.jsonl, self.csv = out / "metrics.jsonl", out / "metrics.csv"

    def write(self, history: list[dict[str, Any]]) -> None:
        atomic_write_bytes(self.jsonl, "".join(json.dumps(h) + "\n" for h in history).encode())
        if history:
            import io

            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=list(history[0]))
            w.writeheader()
            w.writerows(history)
            atomic_write_bytes(self.csv, buf.getvalue().encode())


def fit(
    store: GraphStore,
    plan: Any,
    out_dir: str | Path,
    *,
    model_kwargs: dict[str, Any] | None = None,
    resume: bool = True,
    progress: bool = True,
    callbacks: list[Callable[[dict[str, Any]], None]] | None = None,
    should_stop: Callable[[], bool] | None = None,
    calibrate_budget: bool = True,
    step_hook: Callable[[Any], None] | None = None,
) -> TrainResult:
    """Train ``plan.model`` on ``store``; writes checkpoints/, best.pt, metrics.jsonl/csv under ``out_dir``.

    Args:
        callbacks: called with {"event": "step"|"epoch", ...} (the notebook's live plot uses this).
        should_stop: polled every step; True saves a checkpoint and returns with status "stopped".
        calibrate_budget: measure the batch budget with real steps (else the Plan's static one).
        step_hook: called with each batch before its forward pass (tests use it to inject failures).
    """
    out = Path(out_dir)
    ckpt_dir = out / "checkpoints"
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(plan.device)
    amp_dtype, use_scaler = _amp(plan, device)
    callbacks = callbacks or []
    seed_everything(plan.seed)

    splits = load_or_make_splits(store, plan.seed)
    targets_all = store.targets()
    train_y = targets_all[splits["train"]]
    mean, std = float(np.mean(train_y)), float(np.std(train_y) or 1.0)
    kwargs = dict(model_kwargs or {})
    if plan.model == "cgcnn":
        kwargs.setdefault("cutoff", float(store.params.get("cutoff", 8.0)))
    model = build_model(plan.model, target_mean=mean, target_std=std, **kwargs).to(device)
    state = load_checkpoint(ckpt_dir, map_location=device) if resume else None
    atoms, edges = store.sizes()

    dataset = GraphDataset(store)
    collate = COLLATE[store.converter_name]

    def fwd_bwd(indices: list[int]) -> None:
        batch = model.to_device(collate([dataset[i] for i in indices]), device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = (model(batch).float() - model.targets(batch)).pow(2).mean()
        loss.backward()
        model.zero_grad(set_to_none=True)

    if state is not None:
        budget = Budget(**state["budget"])
    elif calibrate_budget and "set by user" not in (plan.reasons.get("batch_edges"), plan.reasons.get("batch_atoms")):
        usable = (torch.cuda.mem_get_info(device)[0] if device.type == "cuda"
                  else _cpu_usable_bytes())
        snapshot = copy.deepcopy(model.state_dict())  # calibration steps must not change the model
        try:
            budget = calibrate(fwd_bwd, splits["train"], atoms, edges, device, usable)
        except MemoryError as exc:  # no room measured (e.g. a peak-RSS mark that cannot be reset off Linux)
            log.warning("batch budget calibration failed (%s); using the plan's static budget", exc)
            budget = static_budget(plan)
        model.load_state_dict(snapshot)
        budget = Budget(min(budget.max_atoms, plan.batch_atoms * 4), min(budget.max_edges, plan.batch_edges * 4), budget.how)
    else:
        budget = static_budget(plan)
    seed_everything(plan.seed)  # calibration must not change the run's random stream

    loaders = make_loaders(store, plan, splits, budget=(budget.max_atoms, budget.max_edges))
    sampler = loaders["train"].batch_sampler
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=plan.lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=plan.epochs, eta_min=plan.lr * 0.01)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    history: list[dict[str, Any]] = []
    best = {"epoch": -1, "val_mae": math.inf}
    bad_epochs = 0
    resumed_from = None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        sampler.load_state_dict(state["sampler"])
        history, best, bad_epochs = list(state["history"]), dict(state["best"]), int(state["bad_epochs"])
        set_rng_state(state["rng"])
        resumed_from = {"epoch": sampler.epoch, "offset": sampler.offset, "step": int(state["step"])}
        if sampler.epoch >= plan.epochs or state.get("status") == "early-stopped":
            log.info("training already finished (%d epochs, step %d): nothing to train", len(history), state["step"])
        else:
            log.info("resuming training at epoch %d, graph %d of %d (step %d)", sampler.epoch + 1, sampler.offset,
                     len(splits["train"]), state["step"])
    elif plan.model == "chgnet":
        import itertools

        head = [model.to_device(b, device) for b in itertools.islice(iter(loaders["train"]), 16)]
        model.init_output(head)
    step = int(state["step"]) if state is not None else 0
    status = "finished" if state is None or state.get("status") == "stopped" else state.get("status", "finished")
    metrics = _Metrics(out)

    def checkpoint() -> None:
        save_checkpoint(ckpt_dir, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "sampler": sampler.state_dict(), "epoch": sampler.epoch, "step": step,
            "rng": rng_state(), "plan": plan.to_dict(), "history": history, "best": best, "bad_epochs": bad_epochs,
            "budget": {"max_atoms": budget.max_atoms, "max_edges": budget.max_edges, "how": budget.how},
            "status": status,
        })
        for cb in callbacks:
            cb({"event": "checkpoint", "epoch": sampler.epoch, "step": step})

    from tqdm.auto import tqdm

    last_ckpt = time.monotonic()
    n_train = len(splits["train"])
    while sampler.epoch < plan.epochs and status == "finished":
        model.train()
        epoch = sampler.epoch
        bar = tqdm(total=n_train, initial=sampler.offset, unit="graph", desc=f"epoch {epoch + 1}/{plan.epochs}",
                   disable=not progress, dynamic_ncols=True)
        loss_sum, n_seen, t_epoch, ooms = 0.0, 0, time.perf_counter(), 0
        while sampler.offset < n_train:
            restart = False
            for batch in loaders["train"]:
                n_graphs = model.size(batch)[0]
                try:
                    if step_hook is not None:
                        step_hook(batch)
                    batch = model.to_device(batch, device, non_blocking=plan.pin_memory)
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                        pred = model(batch)
                    y = model.targets(batch)
                    loss = torch.nn.functional.mse_loss(pred.float() / std, y / std)
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, 5.0)
                    scaler.step(optimizer)
                    scaler.update()
                except (torch.OutOfMemoryError, RuntimeError) as exc:
                    if not _is_oom(exc):
                        raise
                    ooms += 1
                    del batch
                    optimizer.zero_grad(set_to_none=True)
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    if ooms > MAX_OOM_RETRIES or n_graphs == 1:
                        raise TrainingError(
                            f"out of memory {ooms} times in a row, the last on a batch of {n_graphs} graph(s) with "
                            f"budget {budget.max_atoms} atoms / {budget.max_edges} edges. Use a GPU with more memory, "
                            "--set amp=bf16/fp16, a smaller cutoff (--set cutoff=5), or a smaller model"
                        ) from exc
                    budget = budget.shrink(0.5)
                    sampler.set_budget(budget.max_atoms, budget.max_edges)
                    log.warning("out of memory on a batch of %d graphs: budget shrunk to %d atoms / %d edges; retrying",
                                n_graphs, budget.max_atoms, budget.max_edges)
                    restart = True
                    break
                ooms = 0
                sampler.advance(n_graphs)
                step += 1
                loss_value = loss.detach().item()  # one device sync per step
                loss_sum += loss_value * n_graphs
                n_seen += n_graphs
                bar.update(n_graphs)
                bar.set_postfix(loss=f"{loss_sum / n_seen:.4f}")
                for cb in callbacks:
                    cb({"event": "step", "epoch": epoch, "step": step, "loss": loss_value, "graphs": n_graphs})
                if should_stop is not None and should_stop():
                    status = "stopped"
                    break
                if time.monotonic() - last_ckpt > plan.checkpoint_minutes * 60:
                    checkpoint()
                    last_ckpt = time.monotonic()
            if status == "stopped" or not restart:
                break
        bar.close()
        if status == "stopped":
            checkpoint()
            log.info("stopped at epoch %d, graph %d; run again to resume", epoch + 1, sampler.offset)
            break
        val = evaluate(model, loaders["val"], device, amp_dtype)
        scheduler.step()
        sampler.next_epoch()
        row = {"epoch": epoch + 1, "train_loss": loss_sum / max(n_seen, 1), "val_mae": val["mae"], "val_rmse": val["rmse"],
               "lr": optimizer.param_groups[0]["lr"], "seconds": round(time.perf_counter() - t_epoch, 2)}
        history.append(row)
        if val["mae"] < best["val_mae"]:
            best, bad_epochs = {"epoch": epoch + 1, "val_mae": val["mae"]}, 0
            buf = __import__("io").BytesIO()
            torch.save(model.state_dict(), buf)
            atomic_write_bytes(out / "best.pt", buf.getvalue())
            for cb in callbacks:
                cb({"event": "best", "epoch": epoch + 1})
        else:
            bad_epochs += 1
        metrics.write(history)
        log.info("epoch %d: train loss %.4f, val MAE %.4f, RMSE %.4f", epoch + 1, row["train_loss"], val["mae"], val["rmse"])
        for cb in callbacks:
            cb({"event": "epoch", **row})
        if bad_epochs >= plan.patience and sampler.epoch < plan.epochs:
            status = "early-stopped"
            log.info("early stopping: no improvement for %d epochs", bad_epochs)
        checkpoint()
        last_ckpt = time.monotonic()
    return TrainResult(out, status, len(history), best["epoch"], best["val_mae"], history, budget, resumed_from)


def _cpu_usable_bytes() -> int:
    import psutil

    return int(psutil.virtual_memory().available * 0.4)


def evaluate_weights(store: GraphStore, plan: Any, weights: str | Path, split: str = "test") -> dict[str, Any]:
    """Load saved model weights (``best.pt``, weights-only) and evaluate them on a split of ``store``."""
    device = torch.device(plan.device)
    path = Path(weights)
    if not path.exists():
        raise TrainingError(f"no model weights at {path}; train first (`python -m colab_kit train --store ...`)")
    kwargs: dict[str, Any] = {"cutoff": float(store.params.get("cutoff", 8.0))} if plan.model == "cgcnn" else {}
    model = build_model(plan.model, **kwargs)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    model.to(device)
    splits = load_or_make_splits(store, plan.seed)
    loader = make_loaders(store, plan, splits)[split]
    amp_dtype, _ = _amp(plan, device)
    return evaluate(model, loader, device, amp_dtype)
