"""Logging that keeps tqdm progress bars intact, set up only by the CLI and the runner."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from tqdm.auto import tqdm

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class TqdmHandler(logging.Handler):
    """Writes records through ``tqdm.write`` so an active bar is redrawn below, not broken."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise; delegate to logging's own reporting
            self.handleError(record)


def setup_logging(level: int = logging.INFO, log_file: str | Path | None = None) -> None:
    """Console (through tqdm) and optional file logging for the ``colab_kit`` logger tree.

    Idempotent: calling it again replaces the handlers it installed before.
    """
    root = logging.getLogger("colab_kit")
    root.setLevel(level)
    for h in list(root.handlers):
        if getattr(h, "_colab_kit", False):
            root.removeHandler(h)
            h.close()
    console = TqdmHandler()
    console.setFormatter(logging.Formatter("%(levelname)s %(message)s" if level > logging.DEBUG else FORMAT))
    handlers: list[logging.Handler] = [console]
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file)
        fh.setFormatter(logging.Formatter(FORMAT))
        handlers.append(fh)
    for h in handlers:
        h._colab_kit = True  # type: ignore[attr-defined]
        root.addHandler(h)
    root.propagate = False


def format_duration(seconds: float) -> str:
    """``"14 s"``, ``"52 min"``, ``"3.1 h"``: seconds stay seconds until minutes read better."""
    if seconds < 600:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
