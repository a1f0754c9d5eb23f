"""Notebook output for the control panel: log lines and progress bars routed into the panel's
Output from a background thread, and the live loss plot rendered to PNG bytes."""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from colab_kit.util.logs import FORMAT


def render_loss_plot(losses: Sequence[float], epochs: Sequence[dict[str, Any]], mae_unit: str | None = None) -> bytes:
    """PNG of the training loss per step and per epoch, and the validation MAE per epoch (headless Agg).

    Both axes start at 0, so a change of 0.001 in the MAE does not fill the plot as if it were a jump;
    the legend sits under the axes, where it cannot hide a curve.

    Args:
        losses: the training loss of each step so far, in order.
        epochs: epoch rows so far ({"train_loss", "val_mae", "at_step"}: the step count at the epoch's end).
        mae_unit: the target's unit (e.g. "eV/atom") for the MAE axis, when known.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.0), dpi=80)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if losses:
        stride = max(1, len(losses) // 2000)  # keep redraws cheap on long runs
        ax.plot(range(1, len(losses) + 1, stride), losses[::stride], color="tab:blue", alpha=0.35, lw=0.8,
                label="train loss, each step")
    if epochs:
        at = [max(e["at_step"], 1) for e in epochs]
        ax.plot(at, [e["train_loss"] for e in epochs], "o-", color="tab:blue", label="train loss, epoch mean")
        ax2 = ax.twinx()  # MAE is in the target's unit, the loss is not
        ax2.plot(at, [e["val_mae"] for e in epochs], "s-", color="tab:orange", label="validation MAE (right axis)")
        ax2.set_ylabel("validation MAE" + (f" ({mae_unit})" if mae_unit else ""), color="tab:orange")
        ax2.set_ylim(0, 1.15 * max(e["val_mae"] for e in epochs) or 1.0)
    ax.set_xlabel("training step (this session)")
    ax.set_ylabel("train loss (MSE / std²)", color="tab:blue")
    if losses or epochs:
        ax.set_ylim(0, 1.05 * max([*losses, *(e["train_loss"] for e in epochs)]) or 1.0)
    ax.grid(alpha=0.3)
    if losses or epochs:
        fig.legend(loc="lower center", ncol=3, fontsize="small", frameon=False)
        fig.tight_layout(rect=(0, 0.08, 1, 1))
    else:
        ax.text(0.5, 0.5, "the loss appears here once training starts", ha="center", va="center",
                transform=ax.transAxes, color="#777")
        fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


@contextlib.contextmanager
def into_panel(output: Any, log_file: Path) -> Iterator[None]:
    """Send one run's log lines and progress bars to ``output``, and its log lines to ``log_file``.

    ``with output:`` would tag output with the request current when the run started; for a click
    handled in a thread that request is over before the run prints, and JupyterLab drops such
    output. So the panel appends to the widget itself: log records through a handler, and the
    progress bars ``tqdm.auto`` displays through the kernel's (thread-local) display hook.
    """

    logger = logging.getLogger("colab_kit")
    handlers = [_LineHandler(output.append_stdout, "%(levelname)s %(message)s"), _LineHandler(_appender(log_file), FORMAT)]
    level = logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    for h in handlers:
        logger.addHandler(h)

    def hook(msg: dict[str, Any]) -> dict[str, Any] | None:
        if msg.get("msg_type") != "display_data":
            return msg
        data, metadata = msg["content"]["data"], msg["content"].get("metadata", {})
        output.outputs += ({"output_type": "display_data", "data": data, "metadata": metadata},)
        return None

    try:
        from IPython import get_ipython

        publisher = getattr(get_ipython(), "display_pub", None)
    except ImportError:
        publisher = None
    hooked = hasattr(publisher, "register_hook")  # ipykernel's publisher (not a plain IPython shell)
    if hooked:
        publisher.register_hook(hook)
    try:
        yield
    finally:
        if hooked:
            publisher.unregister_hook(hook)
        for h in handlers:
            logger.removeHandler(h)
            h.close()
        logger.setLevel(level)


class _LineHandler(logging.Handler):
    """Hands each record, formatted as one line, to ``write`` (an Output widget or a file; any thread)."""

    def __init__(self, write: Callable[[str], Any], fmt: str) -> None:
        super().__init__(logging.INFO)
        self.write = write
        self.setFormatter(logging.Formatter(fmt))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write(self.format(record) + "\n")
        except OSError:
            self.handleError(record)


def _appender(path: Path) -> Callable[[str], None]:
    """Appends to ``path``, opening it for each line: a fresh run deletes the run dir while it runs."""

    def write(line: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(line)

    return write
