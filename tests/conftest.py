"""Shared fixtures: real data paths, and the `slow` / `long` / `gpu` markers that skip by themselves.

Two kinds of real data:

* ``fixture_data``: small real structures vendored in ``tests/data/`` (see its README): always there, so the
  core correctness tests run on a fresh clone;
* ``shared_data``: the full shared datasets, at ``$COLAB_KIT_SHARED_DATA`` (default ``../shared/data`` beside
  the repository); tests that need a whole large set skip when it is absent.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import FIXTURES, SHARED_DATA, SHIPPED

# The Plan gives torch one thread per core that other work leaves free (the 1-min load average), and a CPU run's bits
# depend on its thread count: the tests that compare two runs' weights bit for bit pin the count, as a user does
# with --set threads=N, to torch's own default (one per usable CPU). Subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                             else os.cpu_count() or 1))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")
    parser.addoption("--runlong", action="store_true", help="also run tests marked long (.ci/run does)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run_slow = config.getoption("--runslow") or os.environ.get("COLAB_KIT_SLOW") == "1"
    run_long = run_slow or config.getoption("--runlong")
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow: pass --runslow or set COLAB_KIT_SLOW=1"))
        if "long" in item.keywords and not run_long:
            item.add_marker(pytest.mark.skip(reason="long: pass --runlong (CI runs them in a step of their own)"))
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The full shared datasets; skips the test when they are absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared datasets not found at {SHARED_DATA} (set COLAB_KIT_SHARED_DATA to their folder)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def fixture_data() -> Path:
    """The vendored real fixtures (``tests/data/``), present in every checkout."""
    return FIXTURES


@pytest.fixture(scope="session")
def shipped_data() -> Path:
    return SHIPPED


@pytest.fixture(scope="session")
def shipped_store(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``shipped_store(kind, limit=None, shard_size=1000)``: a store of the shipped data, built the first time a test
    asks for those settings and shared by every test after it. Tests read it; one that changes a store copies it
    first (``shutil.copytree``)."""
    from colab_kit.graphs import get_converter
    from colab_kit.store import build_store

    built: dict[tuple, Path] = {}

    def make(kind: str = "radius", limit: int | None = None, shard_size: int = 1000) -> Path:
        key = (kind, limit, shard_size)
        if key not in built:
            out = tmp_path_factory.mktemp(f"shipped-{kind}") / "store"
            build_store(SHIPPED, out, get_converter(kind), workers=2, shard_size=shard_size, limit=limit,
                        on_bad_structure="skip", progress=False)
            built[key] = out
        return built[key]

    return make


@pytest.fixture(autouse=True)
def _restore_colab_kit_logging() -> Iterator[None]:
    """A run in this process calls ``setup_logging`` (its handlers, ``propagate=False``); later tests that read
    logs through ``caplog`` need the logger as it was."""
    logger = logging.getLogger("colab_kit")
    state = (list(logger.handlers), logger.propagate, logger.level)
    yield
    for h in list(logger.handlers):
        if h not in state[0]:
            logger.removeHandler(h)
            h.close()
    logger.propagate, logger.level = state[1], state[2]


def _mount_tmpfs(where: Path, options: str) -> bool:
    """A tmpfs at ``where`` (root can mount one here; CI runs as root): a real read-only or small file system."""
    import subprocess

    where.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True).returncode == 0


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory on a read-only file system (EROFS on every write, whoever the user is)."""
    import subprocess

    where = tmp_path / "read-only"
    if not _mount_tmpfs(where, "ro,size=1m"):
        pytest.skip("cannot mount a read-only tmpfs here (needs root)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A directory on a 2 MiB file system: writes beyond it fail with ENOSPC."""
    import subprocess

    where = tmp_path / "small-disk"
    if not _mount_tmpfs(where, "size=2m"):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)
