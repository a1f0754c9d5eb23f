"""Batches moved to the training device one step ahead, so that on CUDA the copy of batch k+1 (and, from a
structure-only store, the building of its edges) runs on a side stream while step k computes.

Memory safety without ``record_stream``: before each move the side stream waits for everything the main stream has
queued so far, so a block the caching allocator hands back to the side stream (a batch of an earlier step) is
overwritten only after the kernels that read it have run. At most two batches are on the device at once.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator


def ahead(batches: Iterable[Any], to_device: Callable[[Any], Any], device: Any) -> Iterator[tuple[Any, Any]]:
    """``(batch, batch on the device)`` for each batch; on CUDA the next one is moved on a side stream while the
    caller works on the current one, elsewhere each is moved when it is reached (what a plain loop does)."""
    import torch

    if getattr(device, "type", str(device)) != "cuda":
        for b in batches:
            yield b, to_device(b)
        return
    main = torch.cuda.current_stream(device)
    side = torch.cuda.Stream(device)

    def send(b: Any) -> Any:
        side.wait_stream(main)
        with torch.cuda.stream(side):
            return to_device(b)

    it = iter(batches)
    try:
        b = next(it)
    except StopIteration:
        return
    moved = send(b)
    for nxt in it:
        main.wait_stream(side)  # the current batch has arrived before its step's kernels run
        moved_next = send(nxt)
        yield b, moved
        b, moved = nxt, moved_next
    main.wait_stream(side)
    yield b, moved
