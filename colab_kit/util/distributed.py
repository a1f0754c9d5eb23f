"""Data-parallel training under ``torchrun``: who this process is, and the few collectives training needs.

``torchrun --nproc_per_node N -m colab_kit run|train ...`` starts N copies of the command with ``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE`` and ``LOCAL_WORLD_SIZE`` set; :func:`world_from_env` reads them into the Plan.
The process group is PyTorch's own (NCCL on CUDA, Gloo on CPU), the model is wrapped in
:class:`~torch.nn.parallel.DistributedDataParallel`, and everything here is a no-op in a single process,
so the training loop has one code path.

Rules the loop follows (docs/scale-out.md):
- every rank plans the same global batches (same seed, order, offset and agreed budget); batch ``k`` of each
  group of ``world`` batches is rank ``k``'s, so an epoch's graphs are a partition of the training split;
- a rank without a batch in the last group takes a one-graph padding batch with loss weight 0;
- stop and checkpoint decisions are agreed by all ranks at every step (one tiny all-reduce);
- rank 0 writes every file; the checkpoint it loads is broadcast, so all ranks resume from the same state.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Mapping, Sequence

from colab_kit.errors import ColabKitError

log = logging.getLogger(__name__)
ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")
#: How long a collective may wait for a slow rank before the group gives up (PyTorch's default for Gloo).
TIMEOUT = timedelta(minutes=30)


class DistributedError(ColabKitError, RuntimeError):
    """A distributed launch colab_kit cannot run; the message says what to change."""


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of a torchrun launch (all zeros and ones in a plain process)."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1
    local_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        if not self.distributed:
            return "1 process (no torchrun)"
        return f"rank {self.rank} of {self.size} (local rank {self.local_rank} of {self.local_size} on this host)"


def world_from_env(environ: Mapping[str, str] | None = None) -> World:
    """The World torchrun's environment variables describe.

    Raises:
        DistributedError: a variable is not an integer, or the values contradict each other.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, int] = {}
    for name in ENV:
        text = environ.get(name)
        if text is None:
            continue
        try:
            values[name] = int(text)
        except ValueError:
            raise DistributedError(f"environment variable {name}={text!r} is not an integer; launch with torchrun, "
                                   "which sets it, or unset it") from None
    size = values.get("WORLD_SIZE", 1)
    rank = values.get("RANK", 0)
    local_rank = values.get("LOCAL_RANK", rank if size > 1 else 0)
    local_size = values.get("LOCAL_WORLD_SIZE", size)
    if not (size >= 1 and 0 <= rank < size and 0 <= local_rank < local_size <= size):
        raise DistributedError(f"torchrun environment RANK={rank} LOCAL_RANK={local_rank} WORLD_SIZE={size} "
                               f"LOCAL_WORLD_SIZE={local_size} is inconsistent; launch with torchrun, which sets them")
    return World(rank, local_rank, size, local_size)


#: How long a rank whose launcher died waits for its clean stop (a checkpoint at the next step) before it exits.
ORPHAN_GRACE_S = 60.0


def die_with_launcher(world: World) -> None:
    """Make this rank stop when its torchrun launcher dies, never run on as an orphan.

    torchrun starts each rank in a session of its own, so killing the launcher (a closed terminal, a SIGKILL of
    its process group) leaves the ranks running: they go on writing the run folder while the same command, run
    again, starts new ones on it. Here the kernel sends this rank SIGTERM when its parent dies (Linux
    ``PR_SET_PDEATHSIG``), which stops training at the next step with a checkpoint; a watchdog exits the process
    if that has not happened within :data:`ORPHAN_GRACE_S` (a rank blocked in a collective whose peer is gone).
    Nothing in a plain process.
    """
    if not world.distributed:
        return
    import signal
    import sys
    import threading
    import time

    parent = os.getppid()
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if parent == 1 or os.getppid() != parent:  # the launcher died before the signal was armed
        raise DistributedError("the torchrun launcher of this rank has exited; run the torchrun command again")

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        time.sleep(ORPHAN_GRACE_S)
        print(f"rank {world.rank}: the torchrun launcher exited and this rank did not stop within {ORPHAN_GRACE_S:.0f} s; "
              "exiting (what is on disk is complete: run the torchrun command again to resume)", file=sys.stderr)
        os._exit(143)

    threading.Thread(target=watch, name="colab_kit-launcher-watch", daemon=True).start()


def refuse_fresh(fresh: bool, world_size: int, folder: Any) -> None:
    """``--fresh`` deletes ``folder``, which the other ranks of a torchrun launch read: refused there.

    Raises:
        DistributedError: ``fresh`` under several ranks, saying how to start over.
    """
    if fresh and world_size > 1:
        raise DistributedError(f"--fresh would delete {folder} while the other ranks of this torchrun launch use it; "
                               f"delete it first (rm -r {folder}), then launch without --fresh")


def start(world: World, device: Any) -> None:
    """Join the process group of ``world`` (NCCL on CUDA, Gloo on CPU); nothing in a single process."""
    import torch
    import torch.distributed as dist

    if not world.distributed or dist.is_initialized():
        return
    device = torch.device(device)
    if device.type == "cuda":
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DistributedError(f"local rank {world.local_rank} has no GPU: this host has {torch.cuda.device_count()}; "
                                   f"launch at most that many processes per host (torchrun --nproc_per_node "
                                   f"{torch.cuda.device_count()})")
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=TIMEOUT)
    log.info("joined the %s process group as %s", backend, world.describe())


def stop() -> None:
    """Leave the process group (at the end of a command); a command that never imported torch does not now."""
    import sys

    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    """Whether this process is one of several ranks of an initialised process group."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if active() else 0


def size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if active() else 1


def _device() -> Any:
    import torch
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def _reduce(values: Sequence[float], op: str, dtype: Any) -> list[float]:
    import torch
    import torch.distributed as dist

    if not active():
        return list(values)
    t = torch.tensor(list(values), dtype=dtype, device=_device())
    dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op])
    return t.cpu().tolist()


def agree(*flags: bool) -> tuple[bool, ...]:
    """Each flag true on any rank is true on every rank (the stop and checkpoint decisions)."""
    import torch

    return tuple(bool(v) for v in _reduce([int(f) for f in flags], "max", torch.int32))


def all_sum(*values: float) -> list[float]:
    """Sums over all ranks, in float64 (loss sums, graph counts, error sums)."""
    import torch

    return _reduce(values, "sum", torch.float64)


def all_min(*values: int) -> list[int]:
    """Minima over all ranks (a batch budget every rank's device can hold)."""
    import torch

    return [int(v) for v in _reduce(values, "min", torch.int64)]


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (in memory: nothing pickled reaches a disk)."""
    import torch.distributed as dist

    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=_device())
    return box[0]


def all_gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order."""
    import torch.distributed as dist

    if not active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    import torch.distributed as dist

    if active():
        dist.barrier()


def wrap(model: Any, device: Any) -> Any:
    """``model`` in DistributedDataParallel when several ranks train, else ``model`` itself.

    The adapter moves its batches to the device itself (``device_ids=None``: DDP leaves the inputs alone);
    its parameters are broadcast from rank 0 here, so every rank starts from rank 0's weights. ``static_graph``:
    every step uses the same parameters, and some models leave some unused (CHGNet's magnetic-moment head and
    alignn's unused layers when trained on one energy-like target); DDP then reduces only what is used, with
    no per-step search of the autograd graph (``find_unused_parameters``)."""
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=None, static_graph=True)
