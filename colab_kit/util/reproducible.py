"""Reproducible training: one seed for every random stream, and deterministic kernels on CPU, so a run resumed
after a disconnect equals an uninterrupted one bit for bit."""

from __future__ import annotations

import contextlib
import random
from typing import Iterator

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def reproducible_on_cpu(device: torch.device, needed: bool = True) -> Iterator[None]:
    """PyTorch's deterministic kernels while a model that ``needed`` them trains on CPU, so a resumed run equals
    an uninterrupted one bit for bit.

    The backward of advanced indexing (``x[index]``: ``index_put_`` with accumulate, which alignn's and matgl's
    models use to gather per-edge features) otherwise adds in an order that depends on thread timing: two
    identical runs of M3GNet drift apart by rounding (measured). They cost ~10-15 % per CPU step (measured,
    interleaved A/B on a loaded machine), so models that gather with ``index_select`` (colab_kit's own, CHGNet)
    go without; on a GPU the fast kernels stay (resume there is exact up to them).
    """
    if device.type != "cpu" or not needed:
        yield
        return
    before, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_only)


def use_threads(n: int) -> None:
    """torch's intra-op threads for this process (the Plan's ``threads``: the cores other work leaves free).

    A CPU run's bits depend on the thread count (reductions are split by thread): a resumed run equals an
    uninterrupted one when both use the same number, which ``--set threads=N`` (or ``OMP_NUM_THREADS``) pins."""
    if n > 0 and torch.get_num_threads() != n:
        torch.set_num_threads(n)
