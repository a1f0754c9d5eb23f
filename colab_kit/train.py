"""The fit loop: setup, then for each epoch :func:`train_epoch` (budgeted :func:`train_step` calls wrapped
in the out-of-memory back-off, checkpoints every N minutes) and :func:`end_epoch` (:func:`validate`,
schedule, best weights, early stopping). Nothing here depends on the model: the registry's adapter
predicts, moves batches and reports their size.

Resume is the default: ``fit`` looks for a checkpoint in ``out/checkpoints`` and continues at the
next batch of the epoch it was in, with the same split, order, budget, RNG state and running
metric sums; on CPU a resumed run ends with the same weights as an uninterrupted one. The
checkpoint is the :class:`~colab_kit.train_state.TrainState`, written atomically. Evaluation lives in
:mod:`colab_kit.evaluate`.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import itertools
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from colab_kit import registry
from colab_kit.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from colab_kit.distill import distill_targets
from colab_kit.errors import ColabKitError
from colab_kit.evaluate import amp_dtype_for, evaluate_with_backoff
from colab_kit.fsutil import remove_stale_temporaries
from colab_kit.loader import GraphDataset, collate_fn, make_loaders, splits_for
from colab_kit.memory import Budget, calibrate, static_budget
from colab_kit.models import build_model
from colab_kit.oom import memory_fix, retry_on_oom
from colab_kit.reproducible import reproducible_on_cpu, seed_everything
from colab_kit.store import GraphStore, atomic_write_bytes
from colab_kit.train_state import TrainState, check_resume

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
    train_seconds: float = 0.0


def write_metrics(out: Path, history: list[dict[str, Any]]) -> None:
    """Per-epoch metrics as metrics.jsonl and metrics.csv, each replaced atomically."""
    atomic_write_bytes(out / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history).encode())
    if history:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(history[0]))
        w.writeheader()
        w.writerows(history)
        atomic_write_bytes(out / "metrics.csv", buf.getvalue().encode())


@dataclass
class _Loop:
    """What the epoch functions share: set up once by :func:`fit`."""

    plan: Any
    out: Path
    state: TrainState
    model: Any
    optimizer: Any
    scheduler: Any
    scaler: Any
    loaders: dict[str, Any]
    budget: Budget
    device: torch.device
    amp_dtype: torch.dtype | None
    std: float
    progress: bool
    callbacks: list[Callable[[dict[str, Any]], None]]
    should_stop: Callable[[], bool]
    step_hook: Callable[[Any], None] | None
    mark: float = field(default_factory=time.perf_counter)  # start of the time not yet added to the state
    last_ckpt: float = field(default_factory=time.monotonic)
    last_graphs: int = 0
    ooms: int = 0

    @property
    def sampler(self) -> Any:
        return self.loaders["train"].batch_sampler

    def emit(self, event: dict[str, Any]) -> None:
        for cb in self.callbacks:
            cb(event)


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
    calibrate_budget: bool | None = None,
    step_hook: Callable[[Any], None] | None = None,
) -> TrainResult:
    """Train ``plan.model`` on ``store``; writes checkpoints/, best.pt, metrics.jsonl/csv under ``out_dir``.

    Args:
        callbacks: called with {"event": "step"|"epoch"|"checkpoint"|"best", ...} (the notebook's live plot).
        should_stop: polled before every step; True checkpoints at the current step and returns "stopped".
        calibrate_budget: overrides ``plan.calibrate`` (measure the batch budget with real steps).
        step_hook: called with each batch before its forward pass (tests use it to inject failures).

    Raises:
        PlanError: the checkpoint in ``out_dir`` was made with other shape-fixing settings.
        TrainingError: out of memory even for a single graph.
    """
    with reproducible_on_cpu(torch.device(plan.device), getattr(registry.model(plan.model), "deterministic", False)):
        return _fit(store, plan, out_dir, model_kwargs, resume, progress, callbacks, should_stop, calibrate_budget,
                    step_hook)


def _fit(store: GraphStore, plan: Any, out_dir: str | Path, model_kwargs: dict[str, Any] | None, resume: bool,
         progress: bool, callbacks: list[Callable[[dict[str, Any]], None]] | None,
         should_stop: Callable[[], bool] | None, calibrate_budget: bool | None,
         step_hook: Callable[[Any], None] | None) -> TrainResult:
    loop = _setup(store, plan, Path(out_dir), model_kwargs or {}, resume, progress, list(callbacks or []),
                  should_stop or (lambda: False), step_hook,
                  plan.calibrate if calibrate_budget is None else calibrate_budget)
    st = loop.state
    resumed_from = None
    if st.step or st.history or st.sampler.get("offset"):
        resumed_from = {"epoch": loop.sampler.epoch, "offset": loop.sampler.offset, "step": st.step}
        if loop.sampler.epoch >= plan.epochs or st.status == "early-stopped":
            log.info("training already finished (%d epochs, step %d): nothing to train", len(st.history), st.step)
        else:
            log.info("resuming training at epoch %d, graph %d of %d (step %d)", loop.sampler.epoch + 1,
                     loop.sampler.offset, len(loop.sampler.indices), st.step)
    stopped = False
    while st.status != "early-stopped" and loop.sampler.epoch < plan.epochs:
        if not train_epoch(loop):
            stopped = True
            break
        end_epoch(loop)
    if not stopped and st.status == "training":
        st.status = "finished"
        checkpoint(loop)
    status = "stopped" if stopped else st.status
    return TrainResult(loop.out, status, len(st.history), st.best["epoch"], st.best["val_mae"], st.history,
                       loop.budget, resumed_from, st.train_seconds)


def _setup(store: GraphStore, plan: Any, out: Path, model_kwargs: dict[str, Any], resume: bool, progress: bool,
           callbacks: list[Callable[[dict[str, Any]], None]], should_stop: Callable[[], bool],
           step_hook: Callable[[Any], None] | None, calibrate_budget: bool) -> _Loop:
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out / "checkpoints"
    for d in (out, ckpt_dir):  # temporaries of a run that was killed mid-write
        remove_stale_temporaries(d)
    device = torch.device(plan.device)
    amp_dtype, use_scaler = amp_dtype_for(plan, device)
    seed_everything(plan.seed)
    splits = splits_for(store, plan)
    train_targets = distill_targets(store, plan)  # before the student is built: a teacher computed here is freed
    train_y = store.targets()[splits["train"]]
    mean, std = float(np.mean(train_y)), float(np.std(train_y) or 1.0)
    model = build_model(plan.model, target_mean=mean, target_std=std, graph_params=store.params,
                        options={**plan.model_options, **model_kwargs}).to(device)
    saved = load_checkpoint(ckpt_dir, map_location=device) if resume else None
    if saved is not None:
        check_resume(saved.get("plan", {}), plan, str(ckpt_dir))
        state = TrainState.from_dict(saved)
        budget = Budget(**state.budget)
    else:
        state = TrainState(plan=plan.to_dict())
        budget = _initial_budget(model, store, splits, plan, device, amp_dtype) if calibrate_budget else static_budget(plan)
        seed_everything(plan.seed)  # calibration must not change the run's random stream
    state.budget = dataclasses.asdict(budget)

    loaders = make_loaders(store, plan, splits, budget=(budget.max_atoms, budget.max_edges), train_targets=train_targets)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=plan.lr, weight_decay=plan.weight_decay)
    scheduler = make_scheduler(optimizer, plan)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    loop = _Loop(plan, out, state, model, optimizer, scheduler, scaler, loaders, budget, device, amp_dtype, std,
                 progress, callbacks, should_stop, step_hook)
    if saved is not None:
        model.load_state_dict(state.model)
        optimizer.load_state_dict(state.optimizer)
        if "lr_lambdas" in state.scheduler:
            scheduler.load_state_dict(state.scheduler)
        else:  # a checkpoint of a CosineAnnealingLR (before schedules): its epoch count is all the schedule needs
            scheduler.last_epoch = int(state.scheduler.get("last_epoch", 0))
        scaler.load_state_dict(state.scaler)
        loop.sampler.load_state_dict(state.sampler)
        set_rng_state(state.rng)
    elif hasattr(model, "init_output"):  # an output head fitted to the targets before the first step
        head = [model.to_device(b, device) for b in itertools.islice(iter(loaders["train"]), 16)]
        model.init_output(head)
    return loop


def lr_factor(epoch: int, plan: Any) -> float:
    """The learning rate of 0-based ``epoch`` as a fraction of ``plan.lr``: ``cosine`` from 1 to ``lr_min / lr``;
    ``warmup_cosine`` first rises from 1/25 over 30 % of the epochs (the one-cycle warm-up ComFormer's authors train
    with), then the same cosine. Stepped once per epoch, so a resume continues it exactly."""
    floor = plan.lr_min / plan.lr
    warmup = max(1, round(0.3 * plan.epochs)) if plan.schedule == "warmup_cosine" and plan.epochs > 1 else 0
    if epoch < warmup:
        return 1 / 25 + (1 - 1 / 25) * epoch / warmup
    t = min(1.0, (epoch - warmup) / max(1, plan.epochs - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))


def make_scheduler(optimizer: torch.optim.Optimizer, plan: Any) -> torch.optim.lr_scheduler.LRScheduler:
    """The Plan's schedule, stepped once per epoch (its state is the epoch count: a resume continues it)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_factor(epoch, plan))


def _initial_budget(model: Any, store: GraphStore, splits: dict[str, np.ndarray], plan: Any, device: torch.device,
                    amp_dtype: torch.dtype | None) -> Budget:
    """The calibrated batch budget, within ``plan.budget_cap`` x the static one (the model is left unchanged)."""
    dataset, collate = GraphDataset(store), collate_fn(store)
    atoms, edges = store.sizes()

    def fwd_bwd(indices: list[int]) -> None:
        batch = model.to_device(collate([dataset[i] for i in indices]), device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = (model(batch).float() - model.targets(batch)).pow(2).mean()
        loss.backward()
        model.zero_grad(set_to_none=True)

    snapshot = copy.deepcopy(model.state_dict())  # calibration steps must not change the model
    model.train()
    try:
        budget = calibrate(fwd_bwd, splits["train"], atoms, edges, device, plan.train_memory)
    except MemoryError as exc:  # no room measured, or out of memory on the smallest graphs
        log.warning("batch budget calibration failed (%s); using the plan's static budget", exc)
        budget = static_budget(plan)
    model.load_state_dict(snapshot)
    cap_atoms, cap_edges = int(plan.batch_atoms * plan.budget_cap), int(plan.batch_edges * plan.budget_cap)
    return Budget(min(budget.max_atoms, cap_atoms), min(budget.max_edges, cap_edges), budget.how)


def train_epoch(loop: _Loop) -> bool:
    """Train the rest of the current epoch; False when a stop was requested (a checkpoint is saved)."""
    st, sampler, plan = loop.state, loop.sampler, loop.plan
    from tqdm.auto import tqdm

    loop.model.train()
    n_train = len(sampler.indices)
    bar = tqdm(total=n_train, initial=sampler.offset, unit="graph", desc=f"epoch {sampler.epoch + 1}/{plan.epochs}",
               disable=not loop.progress, dynamic_ncols=True)

    def rest_of_epoch() -> bool:
        for batch in loop.loaders["train"]:
            if loop.should_stop():
                return False
            loop.last_graphs = loop.model.size(batch)[0]
            loss = train_step(loop, batch)
            loop.ooms = 0
            n = loop.last_graphs
            sampler.advance(n)
            st.step += 1
            st.epoch_loss_sum += loss * n
            st.epoch_graphs += n
            bar.update(n)
            bar.set_postfix(loss=f"{st.epoch_loss_sum / st.epoch_graphs:.4f}")
            loop.emit({"event": "step", "epoch": sampler.epoch, "step": st.step, "loss": loss, "graphs": n})
            if time.monotonic() - loop.last_ckpt > plan.checkpoint_minutes * 60:
                checkpoint(loop)
        return True

    try:
        done = retry_on_oom(rest_of_epoch, lambda exc: _shrink_budget(loop, exc), loop.device)
    finally:
        bar.close()
    if not done:
        checkpoint(loop)
        log.info("stopped: checkpoint saved at epoch %d, graph %d of %d (step %d)", sampler.epoch + 1,
                 sampler.offset, n_train, st.step)
    return done


def train_step(loop: _Loop, batch: Any) -> float:
    """One optimiser step on ``batch``; returns its loss (MSE in units of the target's std²)."""
    if loop.step_hook is not None:
        loop.step_hook(batch)
    model, plan = loop.model, loop.plan
    batch = model.to_device(batch, loop.device, non_blocking=plan.pin_memory)
    with torch.autocast(loop.device.type, dtype=loop.amp_dtype, enabled=loop.amp_dtype is not None):
        pred = model(batch)
    y = model.targets(batch)
    loss = torch.nn.functional.mse_loss(pred.float() / loop.std, y / loop.std)
    loop.optimizer.zero_grad(set_to_none=True)
    loop.scaler.scale(loss).backward()
    loop.scaler.unscale_(loop.optimizer)
    torch.nn.utils.clip_grad_norm_([p for g in loop.optimizer.param_groups for p in g["params"]], plan.grad_clip)
    loop.scaler.step(loop.optimizer)
    loop.scaler.update()
    return loss.detach().item()  # one device sync per step


def _shrink_budget(loop: _Loop, exc: BaseException) -> None:
    """After an out-of-memory step: halve the budget (the rest of the epoch is re-packed), or give up."""
    loop.optimizer.zero_grad(set_to_none=True)
    loop.ooms += 1
    n, b = loop.last_graphs, loop.budget
    if loop.ooms > MAX_OOM_RETRIES or n <= 1:
        raise TrainingError(
            f"out of memory {loop.ooms} times in a row, the last on a batch of {n} graph(s) with budget "
            f"{b.max_atoms} atoms / {b.max_edges} edges; {memory_fix(loop.device)}"
        ) from exc
    loop.budget = b.shrink(0.5)
    loop.sampler.set_budget(loop.budget.max_atoms, loop.budget.max_edges)
    loop.state.budget = dataclasses.asdict(loop.budget)
    log.warning("out of memory on a batch of %d graphs: budget shrunk to %d atoms / %d edges; retrying",
                n, loop.budget.max_atoms, loop.budget.max_edges)


def validate(loop: _Loop) -> dict[str, Any]:
    """MAE / RMSE on the validation split (eval batches shrink on out-of-memory)."""
    return evaluate_with_backoff(loop.model, loop.loaders["val"], loop.device, loop.amp_dtype)


def end_epoch(loop: _Loop) -> None:
    """Validate, step the schedule, record the epoch, keep the best weights, decide on early stopping."""
    st, sampler, plan = loop.state, loop.sampler, loop.plan
    val = validate(loop)
    loop.scheduler.step()
    epoch = sampler.epoch
    sampler.next_epoch()
    _tick(loop)
    row = {"epoch": epoch + 1, "train_loss": st.epoch_loss_sum / max(st.epoch_graphs, 1), "val_mae": val["mae"],
           "val_rmse": val["rmse"], "lr": loop.optimizer.param_groups[0]["lr"], "seconds": round(st.epoch_seconds, 2)}
    st.history.append(row)
    st.epoch_loss_sum, st.epoch_graphs, st.epoch_seconds = 0.0, 0, 0.0
    if val["mae"] < st.best["val_mae"]:
        st.best, st.bad_epochs = {"epoch": epoch + 1, "val_mae": val["mae"]}, 0
        buf = io.BytesIO()
        torch.save(loop.model.state_dict(), buf)
        atomic_write_bytes(loop.out / "best.pt", buf.getvalue())
        loop.emit({"event": "best", "epoch": epoch + 1})
    else:
        st.bad_epochs += 1
    write_metrics(loop.out, st.history)
    log.info("epoch %d: train loss %.4f, val MAE %.4f, RMSE %.4f", epoch + 1, row["train_loss"], val["mae"], val["rmse"])
    loop.emit({"event": "epoch", **row})
    if st.bad_epochs >= plan.patience and sampler.epoch < plan.epochs:
        st.status = "early-stopped"
        log.info("early stopping: no improvement for %d epochs", st.bad_epochs)
    checkpoint(loop)


def _tick(loop: _Loop) -> None:
    """Add the compute time since the last tick to the state (so it survives a resume)."""
    now = time.perf_counter()
    loop.state.epoch_seconds += now - loop.mark
    loop.state.train_seconds += now - loop.mark
    loop.mark = now


def checkpoint(loop: _Loop) -> None:
    """Save the whole :class:`TrainState` atomically (the previous checkpoint is kept)."""
    _tick(loop)
    st = loop.state
    st.model, st.optimizer = loop.model.state_dict(), loop.optimizer.state_dict()
    st.scheduler, st.scaler = loop.scheduler.state_dict(), loop.scaler.state_dict()
    st.sampler, st.epoch, st.rng = loop.sampler.state_dict(), loop.sampler.epoch, rng_state()
    save_checkpoint(loop.out / "checkpoints", st.to_dict())
    st.model = st.optimizer = st.scheduler = st.scaler = {}  # saved: hold no references to them
    loop.last_ckpt = time.monotonic()
    loop.emit({"event": "checkpoint", "epoch": loop.sampler.epoch, "step": st.step})
