"""Out-of-memory back-off: one predicate that recognises an allocator failure (CUDA or CPU), and a
retry wrapper around a piece of work that can be redone smaller (the shape of accelerate's
``find_executable_batch_size``: the policy lives outside the function it retries)."""

from __future__ import annotations

import gc
import logging
from typing import Callable, TypeVar

import torch

from colab_kit.util import distributed

log = logging.getLogger(__name__)
T = TypeVar("T")

# What the allocators say when they run out (torch raises some of them as plain RuntimeError).
OOM_MESSAGES = (
    "out of memory",  # CUDA, MPS
    "can't allocate memory",  # torch's DefaultCPUAllocator
    "cudnn_status_not_supported",  # cuDNN failing to get workspace
    "cublas_status_alloc_failed",
)


def is_oom(exc: BaseException) -> bool:
    """True when ``exc`` means "this step needed more memory than there is" (GPU or CPU)."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in OOM_MESSAGES)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def retry_on_oom(work: Callable[[], T], shrink: Callable[[BaseException], None], device: torch.device,
                 agreed: bool = False) -> T:
    """Run ``work()``; after each out-of-memory error free memory and call ``shrink(error)``, then run it again.

    ``shrink`` makes the next attempt smaller (a smaller batch budget) or raises when it cannot. Any
    other error propagates unchanged. ``agreed`` (work without collectives inside, on several ranks): every rank
    retries, smaller, when any one of them ran out.
    """
    while True:
        failure = None
        try:
            result = work()
        except Exception as exc:  # noqa: BLE001 - re-raised unless it is an allocator failure
            if not is_oom(exc):
                raise
            # drop the traceback: its frames hold the failed batch's tensors, which must be freed first
            failure = exc.with_traceback(None)
        if agreed:

            (anywhere,) = distributed.agree(failure is not None)
            if anywhere and failure is None:
                failure = MemoryError("another rank ran out of memory")
        if failure is None:
            return result
        free_memory(device)
        shrink(failure)


def memory_fix(device: torch.device) -> str:
    """What the user can do about running out of memory on ``device``, as one clause."""
    if device.type == "cuda":
        return "use a GPU with more memory, --set amp=bf16/fp16, a smaller cutoff (--set cutoff=5), or a smaller model"
    return "free RAM (close other programs), use a smaller cutoff (--set cutoff=5), or a smaller model"
