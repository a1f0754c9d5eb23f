"""The batch budget: how many atoms and edges one training batch may hold.

Two ways, the second replacing the first when it can run:

* static: the Plan's estimate (a share of free GPU memory or RAM divided by bytes per edge/atom);
* calibrated: real forward + backward steps on the smallest and largest training graphs, measuring
  peak allocated CUDA memory (or, on CPU, the peak of the tensors the step creates), fitted as
  ``memory ≈ a + b·atoms + c·edges`` and solved for the largest batch that fits in the usable
  memory with a safety margin.

A training run's budget (:func:`initial_budget`) is calibrated on this rank's device, agreed across the ranks of
a torchrun launch (the smallest wins: every rank must plan the same batches), and halved after an out-of-memory step.
In one process the epoch is re-packed under the halved budget and training goes on; in a distributed launch the
other ranks wait in a gradient all-reduce, so the rank saves the halved budget beside the checkpoints
(:func:`write_oom_hint`) and stops the launch: the same command resumes with it.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from colab_kit.errors import ColabKitError
from colab_kit.loader import dataset_and_collate
from colab_kit.run_folder import RunFolder
from colab_kit.store import GraphStore
from colab_kit.training.oom import free_memory, is_oom
from colab_kit.training.potential import PotentialLoss
from colab_kit.util import distributed
from colab_kit.util.files import atomic_write_bytes

if TYPE_CHECKING:
    from colab_kit.plan import Plan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Budget:
    """Per-batch limits and how they were found."""

    max_atoms: int
    max_edges: int
    how: str

    def shrink(self, factor: float = 0.7) -> Budget:
        return Budget(max(1, int(self.max_atoms * factor)), max(1, int(self.max_edges * factor)),
                      f"shrunk x{factor} after an out-of-memory error (was {self.max_atoms} atoms / {self.max_edges} edges)")


def cap_gpu_memory(plan: Plan, device: torch.device) -> None:
    """Hold this process to ``plan.gpu_memory`` bytes of ``device`` (CUDA's per-process memory fraction): an
    allocation beyond it is an out-of-memory error, as it would be on a GPU of that size. Nothing on a CPU."""
    if plan.gpu_memory is None or device.type != "cuda":
        return
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, plan.gpu_memory / total), device)


def peak_gpu_memory(device: torch.device) -> int | None:
    """The most bytes CUDA's allocator has held on ``device`` since the last reset (None on a CPU)."""
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def static_budget(plan: Plan) -> Budget:
    return Budget(plan.batch_atoms, plan.batch_edges, f"static estimate from the plan ({plan.reasons.get('batch_edges', '')})")


class TensorBytes:
    """Counts the bytes of the CPU tensors created while it is active and still alive, and their peak: what a
    training step allocates, measured exactly (a ``TorchDispatchMode`` sees every op's outputs, the backward's
    included; a tensor's storage is counted once and uncounted when it is freed).

    Resident memory is no measure of a step on a CPU: the allocator hands the step pages that earlier steps freed,
    so the process's RSS may not grow at all, and calibration then found "no room for a batch" with gigabytes free
    (6 of 12 CGCNN runs on an 8 GiB machine). Tensor bytes do not depend on what the allocator did before.
    """

    def __init__(self) -> None:
        self.live = 0
        self.peak = 0
        self._sizes: dict[int, int] = {}

    def _track(self, t: Any) -> None:
        if not isinstance(t, torch.Tensor) or t.device.type != "cpu" or t.layout != torch.strided:
            return
        storage = t.untyped_storage()
        key, n = storage.data_ptr(), storage.nbytes()
        if n == 0 or key in self._sizes:  # a view of a storage already counted
            return
        self._sizes[key] = n
        self.live += n
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._freed, key)

    def _freed(self, key: int) -> None:
        self.live -= self._sizes.pop(key, 0)

    def __enter__(self) -> TensorBytes:
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_map

        tracker = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
                out = func(*args, **(kwargs or {}))
                tree_map(tracker._track, out)
                return out

        self._mode = _Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._mode.__exit__(*exc)


def measure_step(step: Callable[[list[int]], None], batch: list[int], device: torch.device) -> int:
    """Bytes a forward+backward on ``batch`` needs beyond what is already in use: the peak of CUDA's allocator,
    or on a CPU the peak of the tensors the step creates (:class:`TensorBytes`)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step(batch)
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    with TensorBytes() as tracker:
        step(batch)
    return tracker.peak


def fit_memory(samples: list[tuple[int, int, int]]) -> tuple[float, float, float]:
    """Non-negative least squares of bytes ≈ a + b·atoms + c·edges over (atoms, edges, bytes) samples."""
    from scipy.optimize import nnls

    a = np.array([[1.0, s[0], s[1]] for s in samples])
    y = np.array([float(s[2]) for s in samples])
    scale = np.maximum(a.max(axis=0), 1.0)
    coef, _ = nnls(a / scale, y)
    coef = coef / scale
    return float(coef[0]), float(coef[1]), float(coef[2])


@dataclass(frozen=True)
class StepTime:
    """Seconds of one training step on this machine, ``per_step + per_edge · edges``, fitted on calibration steps:
    how :func:`colab_kit.training.trainer` says, before training starts, how long the run will take."""

    per_step: float
    per_edge: float

    def seconds(self, edges_per_batch: np.ndarray) -> float:
        return float(len(edges_per_batch) * self.per_step + self.per_edge * float(np.sum(edges_per_batch)))


def _fit_time(points: list[tuple[int, float]]) -> StepTime | None:
    """A line through (edges, seconds) points (non-negative coefficients); None without two distinct sizes."""
    if len({e for e, _ in points}) < 2:
        return None
    from scipy.optimize import nnls

    a = np.array([[1.0, float(e)] for e, _ in points])
    scale = np.maximum(a.max(axis=0), 1.0)
    coef, _ = nnls(a / scale, np.array([t for _, t in points]))
    coef = coef / scale
    return StepTime(float(coef[0]), float(coef[1]))


def calibrate(step: Callable[[list[int]], None], indices: np.ndarray, atoms: np.ndarray, edges: np.ndarray,
              device: torch.device, usable_bytes: int, margin: float = 0.3, max_graphs: int = 8,
              max_seconds: float = 60.0, cap: tuple[int, int] | None = None,
              rss_factor: float = 1.0) -> tuple[Budget, StepTime | None]:
    """Measure real steps on the smallest and largest graphs and solve for the budget; time them too.

    Args:
        step: runs forward + backward on a list of store indices (and frees its tensors).
        indices: the training indices to choose graphs from.
        atoms, edges: per-graph counts for the whole store.
        device: where the model runs.
        usable_bytes: memory the batch may use (free GPU memory, or a share of free RAM on CPU).
        margin: fraction of ``usable_bytes`` kept free for fragmentation and outliers.
        cap: (atoms, edges) the budget may not exceed; also the budget when memory does not grow with the batch
            (a small model: then memory is not what limits a batch).
        rss_factor: the process's memory over the tensor bytes measured on a CPU (a potential's double backward:
            :data:`POTENTIAL_CPU_FACTOR`): the budget is solved for the measured bytes times it, and a trial predicted
            above the usable memory is skipped.

    Returns:
        The budget, and the step time fitted on the same steps (None when too few ran).

    Raises:
        MemoryError: the smallest steps ran out of memory, or the fixed cost alone fills the usable memory.
    """
    order = indices[np.argsort(edges[indices], kind="stable")]
    small, large = order[: max_graphs], order[::-1][: max_graphs]
    trials = [[int(small[0])], list(map(int, small)), [int(large[-1])], [int(large[0])], list(map(int, large))]
    samples, times = [], []
    ran: list[list[int]] = []  # the trials that ran, in order
    t0 = time.perf_counter()
    for batch in trials:
        if time.perf_counter() - t0 > max_seconds and len(samples) >= 2:
            break
        if len(samples) >= 2 and device.type != "cuda":
            # a CPU has no out-of-memory error to catch, only the kernel's OOM killer: a trial the steps so far
            # say would not fit is not run (eight of MPtrj's largest cells in a potential's step: ~45 GB)
            a, b, c = (x * rss_factor for x in fit_memory(samples))
            guess = a + b * int(atoms[batch].sum()) + c * int(edges[batch].sum())
            if guess > usable_bytes * (1 - margin):
                log.info("calibration: skipping a step on %d graphs of %d edges (about %.1f GiB, more than the "
                         "%.1f GiB usable)", len(batch), int(edges[batch].sum()), guess / 2**30, usable_bytes / 2**30)
                continue
        try:
            t_step = time.perf_counter()
            used = measure_step(step, batch, device)
            if device.type == "cuda":  # measured without overhead: the step's own time
                times.append((int(edges[batch].sum()), time.perf_counter() - t_step))
        except Exception as exc:  # noqa: BLE001 - only out-of-memory is expected here; anything else re-raised
            if not is_oom(exc):
                raise
            free_memory(device)
            if len(samples) < 2:
                raise MemoryError(f"out of memory in a calibration step on {len(batch)} graph(s) of "
                                  f"{int(edges[batch].sum())} edges") from None
            log.info("calibration: out of memory on %d graphs of %d edges; fitting the steps that ran",
                     len(batch), int(edges[batch].sum()))
            break
        samples.append((int(atoms[batch].sum()), int(edges[batch].sum()), used))
        ran.append(batch)
    if device.type != "cuda":  # the tracked steps run slower: time the smallest and largest batch untracked
        for batch in (ran[1], ran[-1])[: len(samples) // 2]:
            runs = []
            for _ in range(2):  # the faster of two: a busy machine's noise only ever adds time
                t_step = time.perf_counter()
                step(batch)
                runs.append(time.perf_counter() - t_step)
            times.append((int(edges[batch].sum()), min(runs)))
    a, b, c = (x * rss_factor for x in fit_memory(samples))  # the memory the process will hold
    ratio = float(np.median(edges[indices] / np.maximum(atoms[indices], 1)))  # edges per atom
    per_edge = c + b / max(ratio, 1e-9)
    room = usable_bytes * (1 - margin) - a
    if room <= 0:
        raise MemoryError(
            f"calibration found no room for a batch: fixed cost {a / 2**20:.0f} MiB, usable {usable_bytes / 2**20:.0f} MiB; "
            "free memory, use a smaller model or cutoff (--set cutoff=...), or a bigger GPU"
        )
    where = "peak CUDA memory" if device.type == "cuda" else "peak tensor bytes"
    fitted = f"{a / 2**20:.0f} MiB + {b:.0f} B/atom + {c:.0f} B/edge"
    if rss_factor != 1.0:
        fitted += f" (the measured bytes x {rss_factor:g}: RSS over tensor bytes of this step on a CPU)"
    if per_edge <= 0:  # the steps' memory does not grow with the batch: memory does not limit it
        if cap is None:
            raise MemoryError(f"calibration measured no growth of memory with the batch ({fitted}) and has no cap")
        how = (f"calibrated from {len(samples)} real steps ({where}): {fitted}, no growth with the batch, so the cap "
               f"({cap[0]} atoms / {cap[1]} edges) applies")
        log.info("batch budget: %d atoms / %d edges (%s)", cap[0], cap[1], how)
        return Budget(cap[0], cap[1], how), _fit_time(times)
    max_edges = int(room / per_edge)
    max_atoms = int(max_edges / max(ratio, 1e-9))
    if cap is not None:
        max_atoms, max_edges = min(max_atoms, cap[0]), min(max_edges, cap[1])
    how = (f"calibrated from {len(samples)} real steps ({where}): {fitted}, "
           f"{int(margin * 100)}% margin of {usable_bytes / 2**30:.1f} GiB")
    log.info("batch budget: %d atoms / %d edges (%s)", max_atoms, max_edges, how)
    return Budget(max(max_atoms, 1), max(max_edges, 1), how), _fit_time(times)


class TrainingError(ColabKitError, RuntimeError):
    """Training cannot go on; the message says what to change."""


def read_oom_hint(folder: RunFolder) -> Budget | None:
    """The halved budget a rank saved when it ran out of memory in a distributed launch (None when there is none)."""
    try:
        return Budget(**json.loads(folder.oom_hint.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def write_oom_hint(folder: RunFolder, budget: Budget) -> None:
    """Leave ``budget`` for the next launch of this run (a distributed launch cannot shrink its budget and go on)."""
    folder.checkpoints.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder.oom_hint, json.dumps(dataclasses.asdict(budget)).encode())


#: RSS over tensor bytes of a potential's training step on a CPU: CHGNet efs on 107-atom mlearn cells planned 29,162
#: edges per batch from 206 kB/edge of tensors and peaked at 19.0 GB RSS (3.2x), the allocator keeping the many
#: short-lived gradient buffers of the double backward
POTENTIAL_CPU_FACTOR = 3


def initial_budget(model: Any, store: GraphStore, splits: dict[str, np.ndarray], plan: Plan, device: torch.device,
                   amp_dtype: torch.dtype | None) -> tuple[Budget, StepTime | None]:
    """The calibrated batch budget, within ``plan.budget_cap`` x the static one (the model is left unchanged), and
    the step time measured on the same steps (None when it could not be fitted)."""
    dataset, collate = dataset_and_collate(store)  # the batches training will read, the same way
    atoms, edges = store.sizes()

    # a potential's step is its loss through forces and stresses (a double backward: several times the memory of an
    # energy-only step): calibration measures that step
    potential = PotentialLoss.from_plan(plan, model.targets_trained) if getattr(model, "is_potential", False) else None

    def fwd_bwd(indices: list[int]) -> None:
        batch = model.to_device(collate(dataset.__getitems__(indices)), device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            pred = model(batch)
            loss = (potential(pred, model.targets(batch)) if potential is not None
                    else (pred.float() - model.targets(batch)).pow(2).mean())
        loss.backward()
        model.zero_grad(set_to_none=True)

    snapshot = copy.deepcopy(model.state_dict())  # calibration steps must not change the model
    model.train()
    cap = (int(plan.batch_atoms * plan.budget_cap), int(plan.batch_edges * plan.budget_cap))
    try:
        rss_factor = POTENTIAL_CPU_FACTOR if potential is not None and device.type == "cpu" else 1.0
        budget, step_time = calibrate(fwd_bwd, splits["train"], atoms, edges, device, plan.train_memory, cap=cap,
                                      rss_factor=rss_factor)
    except MemoryError as exc:  # out of memory on the smallest graphs, or the fixed cost fills the memory
        log.warning("batch budget calibration failed (%s); using the plan's static budget", exc)
        budget, step_time = static_budget(plan), None
    model.load_state_dict(snapshot)
    return budget, step_time


def agreed(budget: Budget) -> Budget:
    """The budget every rank uses: the smallest of theirs (each measured its own device), so all plan the same batches."""
    if distributed.size() == 1:
        return budget
    max_atoms, max_edges = distributed.all_min(budget.max_atoms, budget.max_edges)
    return Budget(max_atoms, max_edges, f"{budget.how}; the smallest over {distributed.size()} ranks")
