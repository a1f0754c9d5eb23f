"""Atomic checkpoints that load with ``torch.load(weights_only=True)`` and survive damage.

``latest.pt`` is written to a temporary file in the same directory, fsynced and renamed over the
old one, which is first kept as ``previous.pt``; its sha256 is recorded beside them first
(:func:`colab_kit.util.files.write_checked`). Loading checks the latest against that record and falls back to the
previous (with a warning naming the file) when it is damaged, truncated or otherwise unreadable. The best weights
(``best.pt``) are written the same way, and every checkpoint carries them too, so a damaged or lost ``best.pt`` is
rebuilt from a checkpoint (:func:`recover_best`).
"""

from __future__ import annotations

import io
import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from colab_kit.errors import ColabKitError
from colab_kit.run_folder import RunFolder
from colab_kit.util.files import is_intact, write_checked
from colab_kit.util.reproducible import seed_everything

log = logging.getLogger(__name__)
LATEST = RunFolder(Path()).latest.name
PREVIOUS = RunFolder(Path()).previous.name


class CheckpointError(ColabKitError, RuntimeError):
    """No usable checkpoint although one was expected; the message names the files."""


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) RNG states as tensors / lists: no pickled objects."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def restore_rank_rng(streams: list[dict[str, Any]], rank: int, world: int, seed: int, step: int) -> None:
    """A rank's random streams as a checkpoint left them (``streams``: one per rank that saved it); a rank the
    checkpoint had no stream for (a launch with more ranks) starts one from (seed, rank, step)."""
    if rank < len(streams) and (rank == 0 or len(streams) == world):
        set_rng_state(streams[rank])
    else:

        seed_everything(seed + 1_000_003 * rank + step)


def save_checkpoint(directory: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` as the new latest checkpoint, keeping the old one as previous."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    latest = directory / LATEST
    if latest.exists():
        os.replace(latest, directory / PREVIOUS)
    write_checked(latest, buf.getvalue())
    return latest


def save_best(out: str | Path, weights: dict[str, Any]) -> None:
    """Write the best weights (a state dict) as the run folder ``out``'s ``best.pt``, its sha256 recorded."""
    buf = io.BytesIO()
    torch.save(weights, buf)
    write_checked(RunFolder(Path(out)).best, buf.getvalue())


def best_is_intact(path: str | Path) -> bool:
    """Whether a ``best.pt`` is present and, where its folder records checksums, the bytes written."""
    path = Path(path)
    return path.is_file() and is_intact(path) is not False


def recover_best(out: str | Path) -> bool:
    """Rebuild a missing or damaged ``best.pt`` of the run folder ``out`` from its newest sound checkpoint.

    A checkpoint holds the best weights (``best_model``); one written before it did holds only the latest weights,
    which are then used, with a warning that says so. Returns whether ``best.pt`` is sound afterwards.
    """
    folder = RunFolder(Path(out))
    if best_is_intact(folder.best):
        return True
    try:
        saved = load_checkpoint(folder.checkpoints)
    except CheckpointError:
        saved = None
    if saved is None:
        return False
    best = saved.get("best_model") or {}
    what = f"epoch {saved.get('best', {}).get('epoch')}, the best" if best else f"epoch {saved.get('epoch')}, the latest"
    log.warning("%s is %s: rebuilt from the checkpoint's weights (%s)", folder.best,
                "damaged" if folder.best.exists() else "missing", what)
    save_best(folder.root, dict(best or saved["model"]))
    return True


def _try_load(path: Path, map_location: str | torch.device) -> dict[str, Any] | None:
    if not path.exists():
        return None
    if is_intact(path) is False:
        log.warning("checkpoint %s is damaged (its sha256 is not the one recorded when it was written); trying the "
                    "previous one", path)
        return None
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file means "damaged"; we report it and fall back
        log.warning("checkpoint %s is damaged (%s: %s); trying the previous one", path, type(exc).__name__, exc)
        return None
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        log.warning("checkpoint %s is incomplete (no model/epoch); trying the previous one", path)
        return None
    return state


def load_checkpoint(directory: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """The newest readable checkpoint in ``directory``, or None when there is none at all.

    Raises:
        CheckpointError: checkpoint files exist but none can be read.
    """
    directory = Path(directory)
    for name in (LATEST, PREVIOUS):
        state = _try_load(directory / name, map_location)
        if state is not None:
            if name == PREVIOUS:
                log.warning("resuming from the previous checkpoint %s", directory / name)
            return state
    present = [p.name for p in (directory / LATEST, directory / PREVIOUS) if p.exists()]
    if present:
        raise CheckpointError(
            f"every checkpoint in {directory} ({', '.join(present)}) is damaged; delete that folder to start "
            "training again from scratch (the graph store is kept)"
        )
    return None
