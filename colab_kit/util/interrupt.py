"""Ctrl-C and SIGTERM as a request to stop cleanly: the loops finish the step (or the shards) in
flight, commit them, and return; a second Ctrl-C or SIGTERM aborts at once (every write is atomic anyway)."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from typing import Any, Callable, Iterator

log = logging.getLogger(__name__)
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Callable flag polled by conversion and training (``should_stop``): true once a stop was asked
    for, by a signal or by ``also`` (e.g. the notebook's Stop button)."""

    def __init__(self, also: Callable[[], bool] | None = None) -> None:
        self.signal: str | None = None
        self.also = also

    def __call__(self) -> bool:
        return self.signal is not None or (self.also is not None and bool(self.also()))


@contextlib.contextmanager
def stop_on_signals(also: Callable[[], bool] | None = None) -> Iterator[StopRequest]:
    """Within the block, SIGINT / SIGTERM set the returned :class:`StopRequest` instead of killing.

    Outside the main thread (a notebook's background run) signals cannot be caught; the request then
    only follows ``also``.
    """
    request = StopRequest(also)
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous: dict[int, Any] = {}

    def on_signal(signum: int, _frame: Any) -> None:
        if request.signal is not None:
            raise KeyboardInterrupt  # a second Ctrl-C or SIGTERM: the sender does not want to wait
        request.signal = signal.Signals(signum).name
        # nothing is written here: the loop that sees the flag reports it on its own line, between bars

    for s in _SIGNALS:
        previous[s] = signal.signal(s, on_signal)
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
