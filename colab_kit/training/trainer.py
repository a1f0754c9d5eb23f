"""The fit loop: setup, then for each epoch :func:`train_epoch` (budgeted :func:`train_step` calls wrapped
in the out-of-memory back-off, checkpoints every N minutes) and :func:`end_epoch` (:func:`validate`,
schedule, best weights, early stopping). Nothing here depends on the model: the registry's adapter
predicts, moves batches and reports their size.

Resume is the default: ``fit`` looks for a checkpoint in ``out/checkpoints`` and continues at the
next batch of the epoch it was in, with the same split, order, budget, RNG state and running
metric sums; on CPU a resumed run ends with the same weights as an uninterrupted one. The
checkpoint is the :class:`~colab_kit.training.state.TrainState`, written atomically. Evaluation lives in
:mod:`colab_kit.training.evaluate`.
"""

from __future__ import annotations

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
from colab_kit.loader import device_feed, make_loaders, splits_for
from colab_kit.models import build_model
from colab_kit.plan import Plan
from colab_kit.run_folder import RunFolder
from colab_kit.store import GraphStore
from colab_kit.training.budget import (
    Budget,
    TrainingError,
    agreed,
    cap_gpu_memory,
    initial_budget,
    peak_gpu_memory,
    read_oom_hint,
    static_budget,
    write_oom_hint,
)
from colab_kit.training.checkpoint import (
    load_checkpoint,
    recover_best,
    restore_rank_rng,
    rng_state,
    save_best,
    save_checkpoint,
)
from colab_kit.training.evaluate import amp_dtype_for, evaluate_with_backoff
from colab_kit.training.oom import memory_fix, retry_on_oom
from colab_kit.training.potential import PotentialLoss, describe_scores
from colab_kit.training.schedule import make_scheduler
from colab_kit.training.state import TrainState, check_resume
from colab_kit.util import distributed
from colab_kit.util.files import atomic_write_bytes, remove_stale_temporaries
from colab_kit.util.logs import format_duration
from colab_kit.util.reproducible import reproducible_on_cpu, seed_everything, use_threads

log = logging.getLogger(__name__)


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
    peak_gpu_memory: int | None = None  # bytes CUDA's allocator held at most while training (None on a CPU)


def write_metrics(folder: RunFolder, history: list[dict[str, Any]]) -> None:
    """Per-epoch metrics as metrics.jsonl and metrics.csv, each replaced atomically."""
    atomic_write_bytes(folder.metrics_jsonl, "".join(json.dumps(h) + "\n" for h in history).encode())
    if history:
        buf = io.StringIO()
        # every column any epoch has (an epoch recorded by an older version may lack one), in order of appearance
        w = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for h in history for k in h)), restval="")
        w.writeheader()
        w.writerows(history)
        atomic_write_bytes(folder.metrics_csv, buf.getvalue().encode())


@dataclass
class TrainLoop:
    """What the epoch functions share: set up once by :func:`fit`."""

    plan: Plan
    folder: RunFolder
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
    forward: Any = None  # the model in DistributedDataParallel under torchrun, else the model itself
    loss_fn: PotentialLoss | None = None  # a potential's loss (energies, forces, ...); None: MSE of one target
    world: int = 1  # ranks training together
    main: bool = True  # rank 0: the one that writes files
    mark: float = field(default_factory=time.perf_counter)  # start of the time not yet added to the state
    last_ckpt: float = field(default_factory=time.monotonic)
    last_graphs: int = 0
    ooms: int = 0
    pending: tuple[float, int] = (0.0, 0)  # (loss sum, graphs) of this rank's last step, not yet in the state
    bad_steps: int = 0  # steps in a row whose loss was not finite

    @property
    def sampler(self) -> Any:
        return self.loaders["train"].batch_sampler

    def emit(self, event: dict[str, Any]) -> None:
        if self.main:  # callbacks write files (the Drive mirror, the notebook's plot): rank 0's job
            for cb in self.callbacks:
                cb(event)


@dataclass
class FitOptions:
    """How :func:`fit` runs, beside the store, the Plan and the folder (see its arguments)."""

    model_kwargs: dict[str, Any] = field(default_factory=dict)
    resume: bool = True
    progress: bool = True
    callbacks: list[Callable[[dict[str, Any]], None]] = field(default_factory=list)
    should_stop: Callable[[], bool] = lambda: False
    calibrate: bool = True
    step_hook: Callable[[Any], None] | None = None
    train_targets: np.ndarray | None = None


def fit(
    store: GraphStore,
    plan: Plan,
    out_dir: str | Path,
    *,
    model_kwargs: dict[str, Any] | None = None,
    resume: bool = True,
    progress: bool = True,
    callbacks: list[Callable[[dict[str, Any]], None]] | None = None,
    should_stop: Callable[[], bool] | None = None,
    calibrate_budget: bool | None = None,
    step_hook: Callable[[Any], None] | None = None,
    train_targets: np.ndarray | None = None,
) -> TrainResult:
    """Train ``plan.model`` on ``store``; writes checkpoints/, best.pt, metrics.jsonl/csv under ``out_dir``
    (a :class:`~colab_kit.run_folder.RunFolder`'s training part).

    Args:
        callbacks: called with {"event": "step"|"epoch"|"checkpoint"|"best", ...} (the notebook's live plot).
        should_stop: polled before every step; True checkpoints at the current step and returns "stopped".
        calibrate_budget: overrides ``plan.calibrate`` (measure the batch budget with real steps).
        step_hook: called with each batch before its forward pass (tests use it to inject failures).
        train_targets: ``[N]`` targets that replace the stored labels in the training split (a teacher's blend,
            :func:`colab_kit.use.distill.distill_targets`); validation and test see the labels. Under torchrun rank 0's
            are used on every rank.

    Under torchrun (``plan.world_size`` > 1) every rank calls this with the same arguments: each trains on its
    share of every epoch's batches in DistributedDataParallel, and rank 0 writes the files (:mod:`colab_kit.util.distributed`).

    Raises:
        PlanError: the checkpoint in ``out_dir`` was made with other shape-fixing settings.
        TrainingError: out of memory even for a single graph, or the loss diverged.
    """
    options = FitOptions(dict(model_kwargs or {}), resume, progress, list(callbacks or []),
                         should_stop or (lambda: False), plan.calibrate if calibrate_budget is None else calibrate_budget,
                         step_hook, train_targets)
    distributed.start(distributed.World(plan.rank, plan.local_rank, plan.world_size, plan.world_size), plan.device)
    use_threads(plan.threads)
    with reproducible_on_cpu(torch.device(plan.device), getattr(registry.model(plan.model), "deterministic", False)):
        return _fit(store, plan, RunFolder(Path(out_dir)), options)


def _fit(store: GraphStore, plan: Plan, folder: RunFolder, options: FitOptions) -> TrainResult:
    loop = _setup(store, plan, folder, options)
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
    return TrainResult(folder.root, status, len(st.history), st.best["epoch"], st.best["val_mae"], st.history,
                       loop.budget, resumed_from, st.train_seconds, peak_gpu_memory(loop.device))


def _setup(store: GraphStore, plan: Plan, folder: RunFolder, options: FitOptions) -> TrainLoop:
    main = distributed.rank() == 0
    folder.checkpoints.mkdir(parents=True, exist_ok=True)
    if main:
        for d in (folder.root, folder.checkpoints):  # temporaries of a run that was killed mid-write
            remove_stale_temporaries(d)
    device = torch.device(plan.device)
    cap_gpu_memory(plan, device)
    amp_dtype, use_scaler = amp_dtype_for(plan, device)
    seed_everything(plan.seed)
    # rank 0 reads (or makes) the split and the checkpoint, and has the targets; the others receive them
    splits = distributed.broadcast(splits_for(store, plan) if main else None)
    train_targets = distributed.broadcast(options.train_targets if main else None)
    train_y = store.targets()[splits["train"]]
    mean, std = float(np.mean(train_y)), float(np.std(train_y) or 1.0)
    potential = store.potential["targets"] if store.potential is not None else None
    if potential is not None:
        std = 1.0  # a potential's loss is in the labels' own units (eV/atom, eV/Å, GPa, μB), as CHGNet's Trainer's
    model = build_model(plan.model, target_mean=mean, target_std=std, graph_params=store.params,
                        options={**plan.model_options, **options.model_kwargs}, potential=potential).to(device)
    step_time = None
    saved, hint = distributed.broadcast((load_checkpoint(folder.checkpoints) if options.resume else None,
                                         read_oom_hint(folder))
                                        if main else None)
    if saved is not None:
        check_resume(saved.get("plan", {}), plan, str(folder.checkpoints))
        state = TrainState.from_dict(saved)
        budget = Budget(**state.budget)
        if state.world_size != distributed.size():
            log.info("the checkpoint was written by %d rank(s), this launch has %d: the rest of epoch %d (from graph "
                     "%d) is re-partitioned across %d", state.world_size, distributed.size(), state.sampler["epoch"] + 1,
                     state.sampler["offset"], distributed.size())
    else:
        # the targets the store's frames train, not "auto": the run folder then says what its weights predict
        state = TrainState(plan={**plan.to_dict(), **({"potential_targets": potential} if potential else {})})
        budget, step_time = (initial_budget(model, store, splits, plan, device, amp_dtype) if options.calibrate
                             else (static_budget(plan), None))
        budget = agreed(budget)
        seed_everything(plan.seed)  # calibration must not change the run's random stream
    if hint is not None and (hint.max_atoms < budget.max_atoms or hint.max_edges < budget.max_edges):
        budget = hint
        log.warning("a rank ran out of memory in the last launch: the batch budget is now %d atoms / %d edges",
                    budget.max_atoms, budget.max_edges)
    state.budget = dataclasses.asdict(budget)

    loaders = make_loaders(store, plan, splits, budget=(budget.max_atoms, budget.max_edges), train_targets=train_targets)
    if main:
        _say_how_long(plan, state, loaders, step_time)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=plan.lr, weight_decay=plan.weight_decay)
    scheduler = make_scheduler(optimizer, plan)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    loop = TrainLoop(plan, folder, state, model, optimizer, scheduler, scaler, loaders, budget, device, amp_dtype, std,
                     options.progress and main, options.callbacks, options.should_stop, options.step_hook,
                     world=distributed.size(), main=main,
                     loss_fn=PotentialLoss.from_plan(plan, potential) if potential is not None else None)
    if saved is not None:
        model.load_state_dict(state.model)
        optimizer.load_state_dict(state.optimizer)
        if "lr_lambdas" in state.scheduler:
            scheduler.load_state_dict(state.scheduler)
        else:  # a checkpoint of a CosineAnnealingLR (before schedules): its epoch count is all the schedule needs
            scheduler.last_epoch = int(state.scheduler.get("last_epoch", 0))
        scaler.load_state_dict(state.scaler)
        loop.sampler.load_state_dict(state.sampler)
        loop.sampler.set_budget(budget.max_atoms, budget.max_edges)
        restore_rank_rng(state.rng_ranks or [state.rng], distributed.rank(), distributed.size(), plan.seed, state.step)
        if main and state.history and state.best.get("epoch", -1) > 0:
            recover_best(folder.root)  # a damaged or lost best.pt comes back from the checkpoint before it is needed
    elif hasattr(model, "init_output"):  # an output head fitted to the targets before the first step
        head = [model.to_device(b, device) for b in itertools.islice(iter(loaders["train"]), 16)]
        model.init_output(head)
    loop.forward = distributed.wrap(model, device)  # rank 0's weights (and output head) on every rank
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # the peak training reaches, not calibration's
    return loop


def _say_how_long(plan: Plan, state: TrainState, loaders: dict[str, Any], step_time: Any) -> None:
    """Log, before the first step, how long training will take on this machine: from the calibration steps' times
    (a new run), or from the epochs done so far (a resumed one)."""

    left = plan.epochs - int(state.sampler.get("epoch", 0))
    if left <= 0 or state.status == "early-stopped":
        return
    if state.history:
        per_epoch = float(np.mean([h["seconds"] for h in state.history]))
        log.info("about %s of training left: %d of %d epochs at ~%s each (the epochs done so far)",
                 format_duration(per_epoch * left), left, plan.epochs, format_duration(per_epoch))
        return
    if step_time is None:
        return
    sampler = loaders["train"].batch_sampler
    edges = sampler.edges
    train = np.array([int(edges[b].sum()) for b in sampler.global_batches()])
    val = np.array([int(edges[b].sum()) for b in loaders["val"].batch_sampler.global_batches()])
    per_epoch = (step_time.seconds(train) + step_time.seconds(val) / 3) / max(1, distributed.size())
    log.info("estimate: %d epochs of %d training graphs (%d batches) ≈ %s on this machine (from the calibration steps); "
             "--set epochs=N changes it", plan.epochs, len(sampler.indices), len(train),
             format_duration(per_epoch * plan.epochs))


def train_epoch(loop: TrainLoop) -> bool:
    """Train the rest of the current epoch; False when a stop was requested (a checkpoint is saved)."""
    st, sampler, plan = loop.state, loop.sampler, loop.plan
    from tqdm.auto import tqdm

    loop.model.train()
    n_train = len(sampler.indices)
    bar = tqdm(total=n_train, initial=sampler.offset, unit="graph", desc=f"epoch {sampler.epoch + 1}/{plan.epochs}",
               disable=not loop.progress, dynamic_ncols=True)

    def move(b: Any) -> Any:
        return loop.model.to_device(b, loop.device, non_blocking=plan.pin_memory)

    def rest_of_epoch() -> bool:
        # on CUDA the next batch is copied (and a structure batch's edges built) on a side stream during this step
        for k, (batch, moved) in enumerate(device_feed.ahead(loop.loaders["train"], move, loop.device)):
            # one agreement per step: stop and checkpoint together on every rank (and the last step's loss in)
            stop, due = _sync(loop, loop.should_stop(), time.monotonic() - loop.last_ckpt > plan.checkpoint_minutes * 60)
            if due:
                checkpoint(loop)
            if stop:
                return False
            n, n_step = sampler.step_info[k]  # graphs of this batch that count; of the whole step across ranks
            loop.last_graphs = loop.model.size(batch)[0]
            loss_sum = train_step(loop, batch, n, n_step, moved)
            loop.ooms = 0
            sampler.advance(n_step)
            st.step += 1
            loop.pending = (loss_sum, n)
            bar.update(n_step)
            bar.set_postfix(loss=f"{(st.epoch_loss_sum + loss_sum) / max(st.epoch_graphs + n, 1):.4f}")
            loop.emit({"event": "step", "epoch": sampler.epoch, "step": st.step, "loss": loss_sum / max(n, 1), "graphs": n_step})
        _sync(loop, False, False)
        return True

    try:
        done = retry_on_oom(rest_of_epoch, lambda exc: shrink_budget(loop, exc), loop.device)
    finally:
        bar.close()
    if not done:
        checkpoint(loop)
        log.info("stopped: checkpoint saved at epoch %d, graph %d of %d (step %d)", sampler.epoch + 1,
                 sampler.offset, n_train, st.step)
    return done


MAX_OOM_RETRIES = 8


def shrink_budget(loop: TrainLoop, exc: BaseException) -> None:
    """After an out-of-memory step: halve the budget (the rest of the epoch is re-packed), or give up."""
    loop.optimizer.zero_grad(set_to_none=True)
    loop.ooms += 1
    n, b = loop.last_graphs, loop.budget
    if loop.world > 1:  # the other ranks wait in a gradient all-reduce: this launch cannot go on
        half = b.shrink(0.5)
        write_oom_hint(loop.folder, half)
        raise TrainingError(
            f"out of memory on rank {distributed.rank()} on a batch of {n} graph(s) with budget {b.max_atoms} atoms / "
            f"{b.max_edges} edges; run the same command again: it resumes from the last checkpoint with the budget "
            f"halved ({half.max_atoms} atoms / {half.max_edges} edges)"
        ) from exc
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


def _sync(loop: TrainLoop, stop: bool, due: bool) -> tuple[bool, bool]:
    """Add the last step's loss of every rank to the state; (stop, checkpoint due) true on any rank."""
    st = loop.state
    flag_stop, flag_due, loss_sum, graphs = distributed.all_sum(float(stop), float(due), *loop.pending) \
        if loop.world > 1 else (stop, due, *loop.pending)
    if not math.isfinite(loss_sum):  # every rank sees the same sum: all stop here, before any checkpoint
        raise _diverged(loop, loss_sum)
    st.epoch_loss_sum += loss_sum
    st.epoch_graphs += int(graphs)
    loop.pending = (0.0, 0)
    return bool(flag_stop), bool(flag_due)


def train_step(loop: TrainLoop, batch: Any, n: int | None = None, n_step: int | None = None, moved: Any = None) -> float:
    """One optimiser step on ``batch``; returns the sum over its ``n`` counted graphs of the squared error in units
    of the target's std² (the loss is its mean).

    With several ranks the loss is that sum x ``world / n_step`` (0 for a padding batch): DistributedDataParallel
    averages gradients over ranks, so the step follows the mean over all ``n_step`` graphs of the step.
    ``moved`` is the batch already on the device (:func:`colab_kit.loader.device_feed.ahead`)."""
    if loop.step_hook is not None:
        loop.step_hook(batch)
    model, plan = loop.model, loop.plan
    n = model.size(batch)[0] if n is None else n
    batch = moved if moved is not None else model.to_device(batch, loop.device, non_blocking=plan.pin_memory)
    with torch.autocast(loop.device.type, dtype=loop.amp_dtype, enabled=loop.amp_dtype is not None):
        pred = loop.forward(batch) if loop.forward is not None else model(batch)
    y = model.targets(batch)
    if loop.loss_fn is not None:  # a potential: the weighted loss over energies, forces, stresses, moments
        mean_loss = loop.loss_fn(pred, y)
        value = mean_loss.detach().item() * n if n else 0.0
        loss = mean_loss if loop.world == 1 else mean_loss * (n * loop.world / n_step if n else 0.0)
    elif loop.world == 1:
        loss = torch.nn.functional.mse_loss(pred.float() / loop.std, y / loop.std)
        value = loss.detach().item() * n  # one device sync per step
    else:
        sq = ((pred.float() - y) / loop.std).pow(2)
        loss = sq.sum() * (loop.world / n_step if n else 0.0)
        value = sq.detach().sum().item() if n else 0.0
    loop.optimizer.zero_grad(set_to_none=True)
    if loop.world == 1 and not math.isfinite(value):  # a diverging run: no step on it (ranks agree in _sync)
        loop.bad_steps += 1
        if loop.bad_steps >= MAX_BAD_STEPS:
            raise _diverged(loop, value)
        log.warning("the loss is %s on this batch (step %d): step skipped", value, loop.state.step + 1)
        return 0.0
    loop.bad_steps = 0
    loop.scaler.scale(loss).backward()
    loop.scaler.unscale_(loop.optimizer)
    torch.nn.utils.clip_grad_norm_([p for g in loop.optimizer.param_groups for p in g["params"]], plan.grad_clip)
    loop.scaler.step(loop.optimizer)
    loop.scaler.update()
    return value


#: steps in a row with a loss that is not finite before a run is called diverged
MAX_BAD_STEPS = 3


def _diverged(loop: TrainLoop, value: float) -> TrainingError:
    st, plan = loop.state, loop.plan
    last = st.history[-1]["epoch"] if st.history else 0
    return TrainingError(
        f"training diverged: the loss is {value} at epoch {loop.sampler.epoch + 1}, step {st.step + 1} (lr "
        f"{loop.optimizer.param_groups[0]['lr']:g}); the checkpoints and best weights on disk are from before it "
        f"(last finished epoch: {last}); start over with a smaller learning rate: --fresh --set lr={plan.lr / 10:g}")


def validate(loop: TrainLoop) -> dict[str, Any]:
    """MAE / RMSE on the validation split (eval batches shrink on out-of-memory)."""
    return evaluate_with_backoff(loop.model, loop.loaders["val"], loop.device, loop.amp_dtype)


def end_epoch(loop: TrainLoop) -> None:
    """Validate, step the schedule, record the epoch, keep the best weights, decide on early stopping."""
    st, sampler, plan = loop.state, loop.sampler, loop.plan
    val = validate(loop)
    loop.scheduler.step()
    epoch = sampler.epoch
    sampler.next_epoch()
    _tick(loop)
    row = {"epoch": epoch + 1, "train_loss": st.epoch_loss_sum / max(st.epoch_graphs, 1), "val_mae": val["mae"],
           "val_rmse": val["rmse"], "lr": loop.optimizer.param_groups[0]["lr"], "seconds": round(st.epoch_seconds, 2),
           "train_graphs": st.epoch_graphs}
    row.update({f"val_{k}": v for k, v in val.items() if k.endswith(("_mae", "_cos")) and k != "mae"})  # a potential's
    st.history.append(row)
    st.epoch_loss_sum, st.epoch_graphs, st.epoch_seconds = 0.0, 0, 0.0
    if not math.isfinite(val["mae"]):
        raise _diverged(loop, val["mae"])  # never a best model, never a checkpoint, from weights that predict NaN
    if val["mae"] < st.best["val_mae"]:
        st.best, st.bad_epochs = {"epoch": epoch + 1, "val_mae": val["mae"]}, 0
        # kept in every checkpoint too: a damaged or lost best.pt is rebuilt from one (checkpoint.recover_best)
        st.best_model = {k: v.detach().to("cpu", copy=True) for k, v in loop.model.state_dict().items()}
        if loop.main:
            save_best(loop.folder.root, st.best_model)
        loop.emit({"event": "best", "epoch": epoch + 1})
    else:
        st.bad_epochs += 1
    if loop.main:
        write_metrics(loop.folder, st.history)
    if loop.loss_fn is not None:
        log.info("epoch %d: train loss %.4f, val %s", epoch + 1, row["train_loss"], describe_scores(val))
    else:
        log.info("epoch %d: train loss %.4f, val MAE %.4f, RMSE %.4f", epoch + 1, row["train_loss"], val["mae"], val["rmse"])
    loop.emit({"event": "epoch", **row})
    if st.bad_epochs >= plan.patience and sampler.epoch < plan.epochs:
        st.status = "early-stopped"
        log.info("early stopping: no improvement for %d epochs", st.bad_epochs)
    checkpoint(loop)


def _tick(loop: TrainLoop) -> None:
    """Add the compute time since the last tick to the state (so it survives a resume)."""
    now = time.perf_counter()
    loop.state.epoch_seconds += now - loop.mark
    loop.state.train_seconds += now - loop.mark
    loop.mark = now


def checkpoint(loop: TrainLoop) -> None:
    """Save the whole :class:`TrainState` atomically (the previous checkpoint is kept); with several ranks, rank 0
    saves it with every rank's random streams."""
    _tick(loop)
    st = loop.state
    streams = distributed.all_gather(rng_state())
    if loop.main:
        st.model, st.optimizer = loop.model.state_dict(), loop.optimizer.state_dict()
        st.scheduler, st.scaler = loop.scheduler.state_dict(), loop.scaler.state_dict()
        st.sampler, st.epoch, st.rng = loop.sampler.state_dict(), loop.sampler.epoch, streams[0]
        st.rng_ranks, st.world_size = (streams if loop.world > 1 else []), loop.world
        save_checkpoint(loop.folder.checkpoints, st.to_dict())
        st.model = st.optimizer = st.scheduler = st.scaler = {}  # saved: hold no references to them
        loop.folder.oom_hint.unlink(missing_ok=True)  # its budget is in the checkpoint now
    loop.last_ckpt = time.monotonic()
    loop.emit({"event": "checkpoint", "epoch": loop.sampler.epoch, "step": st.step})
