"""The batch budget: how many atoms and edges one training batch may hold.

Two ways, the second replacing the first when it can run:

* static: the Plan's estimate (a share of free GPU memory or RAM divided by bytes per edge/atom);
* calibrated: real forward + backward steps on the smallest and largest training graphs, measuring
  peak allocated CUDA memory (or, on CPU, growth of the process's peak RSS), fitted as
  ``memory ≈ a + b·atoms + c·edges`` and solved for the largest batch that fits in the usable
  memory with a safety margin.
"""

from __future__ import annotations

import logging
import resource
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from colab_kit.oom import free_memory, is_oom

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


def static_budget(plan: Any) -> Budget:
    return Budget(plan.batch_atoms, plan.batch_edges, f"static estimate from the plan ({plan.reasons.get('batch_edges', '')})")


def _peak_rss() -> int:
    """Peak resident set size of this process in bytes: ``VmHWM`` on Linux (resettable, see
    :func:`_reset_peak_rss`), else ``ru_maxrss`` (Linux reports KiB, macOS bytes)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux >= 4.0: ``5`` > /proc/self/clear_refs).
    Without it, a process that once used more memory (a notebook kernel) would measure no growth."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _trim_heap() -> None:
    """Give the C heap's free pages back to the OS (glibc ``malloc_trim``), so a step that reuses memory
    freed earlier shows as growth of the resident set instead of hiding in already-resident pages."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def measure_step(step: Callable[[list[int]], None], batch: list[int], device: torch.device) -> int:
    """Bytes a forward+backward on ``batch`` needs beyond what is already in use."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step(batch)
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    import gc

    import psutil

    gc.collect()
    _trim_heap()
    _reset_peak_rss()
    base = psutil.Process().memory_info().rss
    step(batch)
    return max(0, _peak_rss() - base)


def fit_memory(samples: list[tuple[int, int, int]]) -> tuple[float, float, float]:
    """Non-negative least squares of bytes ≈ a + b·atoms + c·edges over (atoms, edges, bytes) samples."""
    from scipy.optimize import nnls

    a = np.array([[1.0, s[0], s[1]] for s in samples])
    y = np.array([float(s[2]) for s in samples])
    scale = np.maximum(a.max(axis=0), 1.0)
    coef, _ = nnls(a / scale, y)
    coef = coef / scale
    return float(coef[0]), float(coef[1]), float(coef[2])


def calibrate(step: Callable[[list[int]], None], indices: np.ndarray, atoms: np.ndarray, edges: np.ndarray,
              device: torch.device, usable_bytes: int, margin: float = 0.3, max_graphs: int = 8,
              max_seconds: float = 60.0) -> Budget:
    """Measure real steps on the smallest and largest graphs and solve for the budget.

    Args:
        step: runs forward + backward on a list of store indices (and frees its tensors).
        indices: the training indices to choose graphs from.
        atoms, edges: per-graph counts for the whole store.
        device: where the model runs.
        usable_bytes: memory the batch may use (free GPU memory, or a share of free RAM on CPU).
        margin: fraction of ``usable_bytes`` kept free for fragmentation and outliers.
    """
    order = indices[np.argsort(edges[indices], kind="stable")]
    small, large = order[: max_graphs], order[::-1][: max_graphs]
    # increasing sizes, so the CPU peak-RSS high-water mark rises with each measurement
    trials = [[int(small[0])], list(map(int, small)), [int(large[-1])], [int(large[0])], list(map(int, large))]
    samples = []
    t0 = time.perf_counter()
    for batch in trials:
        if time.perf_counter() - t0 > max_seconds and len(samples) >= 2:
            break
        try:
            used = measure_step(step, batch, device)
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
    a, b, c = fit_memory(samples)
    ratio = float(np.median(edges[indices] / np.maximum(atoms[indices], 1)))  # edges per atom
    per_edge = c + b / max(ratio, 1e-9)
    room = usable_bytes * (1 - margin) - a
    if per_edge <= 0 or room <= 0:
        raise MemoryError(
            f"calibration found no room for a batch: fixed cost {a / 2**20:.0f} MiB, usable {usable_bytes / 2**20:.0f} MiB; "
            "free memory, use a smaller model or cutoff (--set cutoff=...), or a bigger GPU"
        )
    max_edges = int(room / per_edge)
    max_atoms = int(max_edges / max(ratio, 1e-9))
    where = "peak CUDA memory" if device.type == "cuda" else "peak RSS growth"
    how = (f"calibrated from {len(samples)} real steps ({where}): {a / 2**20:.0f} MiB + {b:.0f} B/atom + {c:.0f} B/edge, "
           f"{int(margin * 100)}% margin of {usable_bytes / 2**30:.1f} GiB")
    log.info("batch budget: %d atoms / %d edges (%s)", max_atoms, max_edges, how)
    return Budget(max(max_atoms, 1), max(max_edges, 1), how)
