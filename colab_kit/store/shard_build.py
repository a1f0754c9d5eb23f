"""One shard converted by every worker at once, written as the shard one worker would have written.

A conversion commits shard by shard, and each shard is normally converted whole by one worker. That is the
best use of the pool once it is busy, but the first commit of a call then waits for one worker to convert a
whole shard (≈ 2.6 s for 1,000 MP-like structures on an idle core) while the others convert later shards, and
a resumed conversion's first commit (issue 12, ≤ 5 s from the restart) is bound by exactly that. So the first
shard a call builds is cut into ``workers`` contiguous slices, converted in parallel with the same function a
whole shard uses, and put back together in slice order before :func:`~colab_kit.store.format.write_shard`: graphs,
ids, targets, failures and warnings come in source order, so the bytes are those of a shard built whole.
"""

from __future__ import annotations

from concurrent.futures import Executor, wait
from typing import Callable

from colab_kit.graphs import Converter
from colab_kit.sources import RawItem
from colab_kit.store.format import write_shard
from colab_kit.store.manifest import ShardEntry

ConvertFn = Callable[[list[RawItem], Converter, str], tuple[list, list, list, list, list]]


def slice_bounds(n: int, parts: int) -> list[tuple[int, int]]:
    """``[start, end)`` of ``parts`` contiguous, near-equal, non-empty slices of ``n`` items, in order."""
    parts = max(1, min(parts, n))
    edges = [n * k // parts for k in range(parts + 1)]
    return list(zip(edges[:-1], edges[1:]))


def build_split_shard(pool: Executor, convert: ConvertFn, root: str, index: int, first_item: int,
                      items: list[RawItem], converter: Converter, policy: str, fp: str,
                      parts: int) -> tuple[ShardEntry, list[tuple[str, str]]]:
    """Convert ``items`` in ``parts`` slices on ``pool`` and write them as shard ``index``; returns its entry and its
    first failures (for the main process's log), as a whole-shard build does.

    Args:
        pool: an idle pool of ``parts`` workers (an idle one, or the slices queue behind other work).
        convert: :func:`colab_kit.store.build.convert_items` (passed in: that module imports this one).
        root, index, first_item, fp: as :func:`colab_kit.store.format.write_shard` takes them.
        items: the shard's raw items, in source order.
        converter, policy: as for ``convert``.
        parts: number of slices.

    Raises:
        ConversionError: from the first slice, in source order, that met a bad item under
            ``policy='error'``: the item a whole-shard build names, even if a later slice failed sooner.
    """
    futures = [pool.submit(convert, items[a:b], converter, policy) for a, b in slice_bounds(len(items), parts)]
    try:
        wait(futures)
    except BaseException:  # KeyboardInterrupt while waiting: the caller shuts the pool down
        for f in futures:
            f.cancel()
        raise
    graphs: list = []
    ids: list = []
    targets: list = []
    failures: list = []
    warned: list = []
    for fut in futures:  # slice order is source order; result() re-raises a slice's error in that order
        g, i, t, f, w = fut.result()
        graphs += g
        ids += i
        targets += t
        failures += f
        warned += w
    entry = write_shard(root, index, graphs, ids, targets, failures, fp, first_item, len(items), warned)
    return entry, failures[:50]
