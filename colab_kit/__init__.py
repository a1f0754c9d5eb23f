"""colab_kit: train crystal graph neural networks on a free Colab runtime without running out of memory.

Importing the package does nothing but define names: no directories, probes, logging setup or
warning filters happen at import time.
"""

from __future__ import annotations

from colab_kit.version import VERSION as __version__

__all__ = ["__version__", "load"]


def load(path: str, **plan_overrides: object) -> object:
    """The trained model at ``path`` (a run directory, a ``train --out`` directory or an exported model directory)
    as a :class:`colab_kit.use.predictor.Predictor`: ``load(run_dir).predict(structures)``. ``plan_overrides`` are Plan
    settings such as ``device="cpu"``."""
    from colab_kit.use import load as _load

    return _load(path, **plan_overrides)
