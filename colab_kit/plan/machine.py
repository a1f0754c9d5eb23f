"""Facts about the machine: RAM, CPUs, GPU, disks, Colab, Google Drive.

Nothing here decides anything (that is :mod:`colab_kit.plan`); every read goes through an
injectable function or path so tests can describe any machine with fixtures.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from colab_kit.util.distributed import World, world_from_env

GIB = 1024**3

#: Environment variables that Colab sets in the kernel *and* in `!python -m ...` children.
COLAB_ENV_VARS = ("COLAB_RELEASE_TAG", "COLAB_GPU", "COLAB_BACKEND_VERSION", "COLAB_JUPYTER_IP")
COLAB_CONTENT = "/content"
DRIVE_MYDRIVE = "/content/drive/MyDrive"

# cgroup v1 reports "no limit" as a huge page-aligned number rather than "max".
_CGROUP_V1_UNLIMITED = 1 << 60


@dataclass(frozen=True)
class Gpu:
    """One CUDA device. Memory in bytes; ``capability`` is (major, minor)."""

    name: str
    total_bytes: int
    free_bytes: int
    capability: tuple[int, int]

    @property
    def supports_bf16(self) -> bool:
        return self.capability >= (8, 0)


@dataclass(frozen=True)
class Machine:
    """What this runtime has. Memory and disk in bytes.

    Attributes:
        ram_total: usable RAM: min(physical RAM, cgroup limit).
        ram_available: RAM free for new work: min(psutil available, cgroup limit - cgroup usage).
        cgroup_limit: the container's memory limit, or None when there is none.
        cpus: CPUs this process may run on (``os.sched_getaffinity``).
        gpu: the first CUDA device, or None.
        is_colab: running on Google Colab (from environment variables).
        drive_mounted: Google Drive is mounted at ``drive_dir``.
        disk_free: free bytes for each candidate directory (local work dir, cache dir, Drive).
        home_cache: the per-user cache directory used off Colab.
        content_dir: Colab's local disk (only meaningful when ``is_colab``).
        drive_dir: where Google Drive's "MyDrive" is mounted.
        world: this process's rank among those of a torchrun launch (torchrun's environment variables).
        load: the 1-minute load average when this was read (runnable processes; 0.0 where unknown): how many of the
            CPUs other work is using.
        omp_threads: ``OMP_NUM_THREADS`` when it is set to a number (the user's thread count), else None.
    """

    ram_total: int
    ram_available: int
    cgroup_limit: int | None
    cpus: int
    gpu: Gpu | None
    is_colab: bool
    drive_mounted: bool
    disk_free: Mapping[str, int] = field(default_factory=dict)
    home_cache: str = ""
    content_dir: str = COLAB_CONTENT
    drive_dir: str = DRIVE_MYDRIVE
    world: World = field(default_factory=World)
    load: float = 0.0
    omp_threads: int | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def rows(self) -> list[tuple[str, str]]:
        """(name, value) pairs for a human-readable table."""
        gpu = "none (CPU only)"
        if self.gpu is not None:
            g = self.gpu
            gpu = (
                f"{g.name}, {g.total_bytes / GIB:.1f} GiB total, {g.free_bytes / GIB:.1f} GiB free,"
                f" compute {g.capability[0]}.{g.capability[1]}"
            )
        cg = "none" if self.cgroup_limit is None else f"{self.cgroup_limit / GIB:.1f} GiB"
        rows = [
            ("RAM total", f"{self.ram_total / GIB:.1f} GiB"),
            ("RAM available", f"{self.ram_available / GIB:.1f} GiB"),
            ("cgroup memory limit", cg),
            ("usable CPUs", str(self.cpus)),
            ("load (1-min average)", f"{self.load:.2f}"),
            ("GPU", gpu),
            ("Google Colab", "yes" if self.is_colab else "no"),
            ("Google Drive mounted", "yes" if self.drive_mounted else "no"),
            ("torchrun", self.world.describe()),
        ]
        rows += [(f"free disk at {p}", f"{b / GIB:.1f} GiB") for p, b in self.disk_free.items()]
        return rows


def read_cgroup_limit(root: str | Path = "/sys/fs/cgroup") -> tuple[int | None, int | None]:
    """Read the memory limit and current usage of this process's cgroup.

    Tries cgroup v2 (``memory.max`` / ``memory.current``) then v1
    (``memory/memory.limit_in_bytes`` / ``memory/memory.usage_in_bytes``).

    Returns:
        (limit, usage) in bytes; ``limit`` is None when unlimited ("max", the v1 sentinel) or
        unreadable, ``usage`` is None when unreadable.
    """
    root = Path(root)
    for limit_file, usage_file in (
        (root / "memory.max", root / "memory.current"),
        (root / "memory" / "memory.limit_in_bytes", root / "memory" / "memory.usage_in_bytes"),
        (root / "memory.limit_in_bytes", root / "memory.usage_in_bytes"),
    ):
        try:
            text = limit_file.read_text().strip()
        except OSError:
            continue
        usage = _read_int(usage_file)
        if text == "max":
            return None, usage
        try:
            limit = int(text)
        except ValueError:
            return None, usage
        return (None if limit >= _CGROUP_V1_UNLIMITED else limit), usage
    return None, None


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def is_colab_env(environ: Mapping[str, str]) -> bool:
    """Colab sets these variables for the kernel and every child process it starts."""
    return any(environ.get(k) for k in COLAB_ENV_VARS)


def query_gpu() -> Gpu | None:
    """The first CUDA device via torch, or None (no torch, no CUDA, or a broken driver)."""
    try:
        import torch
    except ImportError:
        return None
    try:
        if not torch.cuda.is_available():
            return None
        free, total = torch.cuda.mem_get_info(0)
        props = torch.cuda.get_device_properties(0)
        return Gpu(props.name, int(total), int(free), (props.major, props.minor))
    except RuntimeError:  # driver present but unusable: treat as CPU-only
        return None


def _disk_free(path: str) -> int | None:
    """Free bytes on the filesystem that holds ``path`` (or its nearest existing parent)."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def _psutil_memory() -> tuple[int, int]:
    import psutil

    vm = psutil.virtual_memory()
    return int(vm.total), int(vm.available)


def detect(
    *,
    environ: Mapping[str, str] | None = None,
    memory: Callable[[], tuple[int, int]] = _psutil_memory,
    cgroup_root: str | Path = "/sys/fs/cgroup",
    cpus: Callable[[], int] | None = None,
    gpu: Callable[[], Gpu | None] = query_gpu,
    disk_free: Callable[[str], int | None] = _disk_free,
    home_cache: str | None = None,
    content_dir: str = COLAB_CONTENT,
    drive_dir: str = DRIVE_MYDRIVE,
    extra_dirs: tuple[str, ...] = (),
    load: Callable[[], float] | None = None,
) -> Machine:
    """Read the facts about this runtime. Every source is injectable for tests.

    Args:
        environ: environment variables (default ``os.environ``).
        memory: returns (total, available) physical RAM in bytes.
        cgroup_root: where the cgroup filesystem is mounted.
        cpus: returns the number of CPUs usable by this process.
        gpu: returns the first CUDA device or None.
        disk_free: free bytes for a path.
        home_cache: per-user cache dir (default ``platformdirs.user_cache_dir("colab_kit")``).
        content_dir: Colab's local disk.
        drive_dir: Google Drive's MyDrive mount point.
        extra_dirs: more directories to report free space for (e.g. an explicit --work-dir).
        load: returns the 1-minute load average (default ``os.getloadavg``).
    """
    environ = os.environ if environ is None else environ
    total, available = memory()
    limit, usage = read_cgroup_limit(cgroup_root)
    if limit is not None:
        total = min(total, limit)
        available = min(available, max(limit - (usage or 0), 0))
    if cpus is None:
        cpus = _usable_cpus
    if home_cache is None:
        import platformdirs

        home_cache = platformdirs.user_cache_dir("colab_kit")
    colab = is_colab_env(environ)
    drive = Path(drive_dir).is_dir()
    candidates = ([content_dir] if colab else []) + [home_cache] + ([drive_dir] if drive else [])
    candidates += [d for d in extra_dirs if d not in candidates]
    free = {d: b for d in candidates if (b := disk_free(d)) is not None}
    omp = environ.get("OMP_NUM_THREADS", "").strip()
    return Machine(
        load=float((load or _load_average)()),
        omp_threads=int(omp) if omp.isdigit() and int(omp) > 0 else None,
        ram_total=int(total),
        ram_available=int(available),
        cgroup_limit=limit,
        cpus=max(1, int(cpus())),
        gpu=gpu(),
        is_colab=colab,
        drive_mounted=drive,
        world=world_from_env(environ),
        disk_free=free,
        home_cache=home_cache,
        content_dir=content_dir,
        drive_dir=drive_dir,
    )


def _load_average() -> float:
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):  # not on this platform
        return 0.0


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS / Windows
        return os.cpu_count() or 1
