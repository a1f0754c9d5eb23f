"""A command run in its own session and watched: the summed RSS, RssAnon and PSS of its whole process tree sampled
while it runs, an optional ceiling that kills the tree above it (and a kernel limit behind it: a cgroup v2 or a
systemd scope), a caller's kill switch (a simulated disconnect) and a timeout."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable

from harness.machine import MB, REPO, loadavg
from harness.records import read_json


def anon_bytes(pid: int) -> int:
    """RssAnon of a process (its private, non-file-backed resident memory: what cannot be reclaimed)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def pss_bytes(pid: int) -> int:
    """PSS of a process from /proc/<pid>/smaps_rollup (cheap even for a 12 GB process); 0 if unavailable."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class TreeRss:
    """Samples the summed RSS and RssAnon (and, less often, PSS) of a process and all its descendants.

    Summed RSS counts pages shared by forked workers (imports, the page cache of mapped files) once per
    process, so it overstates the memory the tree really needs; PSS splits shared pages between their
    sharers and RssAnon leaves out file-backed pages (reclaimable page cache) altogether.
    """

    def __init__(self, pid: int, interval: float = 0.2, pss_every: int = 5) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.interval, self.pss_every = interval, pss_every
        self.peak_rss = self.peak_pss = self.peak_anon = 0
        self.peak_procs = 0
        self.timeline: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.perf_counter()

    def __enter__(self) -> TreeRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self, with_pss: bool = False) -> tuple[int, int, int]:
        import psutil

        try:
            procs = [self.proc, *self.proc.children(recursive=True)]
        except psutil.Error:
            return 0, 0, 0
        rss = pss = anon = 0
        for p in procs:
            try:
                rss += p.memory_info().rss
            except psutil.Error:
                continue
            anon += anon_bytes(p.pid)
            if with_pss:
                pss += pss_bytes(p.pid)
        self.peak_procs = max(self.peak_procs, len(procs))
        return rss, pss, anon

    def _run(self) -> None:
        k = 0
        while not self._stop.is_set():
            rss, pss, anon = self.sample(with_pss=k % self.pss_every == 0)
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_anon = max(self.peak_anon, anon)
            self.peak_pss = max(self.peak_pss, pss)
            if k % 25 == 0:
                self.timeline.append((round(time.perf_counter() - self._t0, 1), rss))
            k += 1
            self._stop.wait(self.interval)


def kill_tree(pid: int) -> None:
    """SIGKILL the process group led by ``pid`` (the child runs in its own session) and, to be sure, every
    descendant found, whatever its group."""
    import psutil

    try:
        kids = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        kids = []
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for p in kids:
        try:
            p.kill()
        except psutil.Error:
            pass
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class CeilingWatch(TreeRss):
    """:class:`bench_convert.TreeRss` that also enforces a ceiling: when the summed RSS of the process and all its
    descendants goes above ``ceiling`` bytes it kills the whole tree and records when, how high, and the child's
    last progress report (``progress()``)."""

    def __init__(self, pid: int, ceiling: int, interval: float = 0.2, pss_every: int = 5,
                 progress: Callable[[], Any] | None = None, timeline_every: int = 10) -> None:
        super().__init__(pid, interval=interval, pss_every=pss_every)
        self.ceiling, self.progress, self.timeline_every = ceiling, progress, timeline_every
        self.exceeded: dict[str, Any] | None = None
        self.last_rss = 0

    def _run(self) -> None:
        k = 0
        while not self._stop.is_set():
            rss, pss, anon = self.sample(with_pss=k % self.pss_every == 0)
            self.last_rss = rss
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_anon = max(self.peak_anon, anon)
            self.peak_pss = max(self.peak_pss, pss)
            t = round(time.perf_counter() - self._t0, 2)
            if k % self.timeline_every == 0:
                self.timeline.append((t, rss))
            if rss > self.ceiling and self.exceeded is None:
                prog = None
                if self.progress is not None:
                    try:
                        prog = self.progress()
                    except Exception as exc:  # noqa: BLE001 - a bad progress file must not stop the kill
                        prog = {"error": repr(exc)}
                kill_tree(self.proc.pid)
                self.exceeded = {"t_s": t, "tree_rss_mb": rss / MB, "ceiling_mb": self.ceiling / MB, "progress": prog}
                self.timeline.append((t, rss))
            k += 1
            self._stop.wait(self.interval)


class HardLimit:
    """No kernel limit: the sampler alone enforces the ceiling."""

    kind = "none"

    def __init__(self, reason: str = "") -> None:
        self.reason = reason

    def prefix(self) -> list[str]:
        return []

    def attach(self, pid: int) -> None:
        pass

    def report(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return f"none ({self.reason})" if self.reason else "none"


class Cgroup2Limit(HardLimit):
    """A child cgroup v2 with memory.max = ceiling (swap off, OOM kills the whole group)."""

    kind = "cgroup2"

    def __init__(self, parent: Path, name: str, ceiling: int) -> None:
        super().__init__()
        self.dir = parent / name
        self.dir.mkdir()
        (self.dir / "memory.max").write_text(str(ceiling))
        for f, v in (("memory.swap.max", "0"), ("memory.oom.group", "1")):
            try:
                (self.dir / f).write_text(v)
            except OSError:
                pass

    def attach(self, pid: int) -> None:
        # the child is still starting its interpreter: everything it and its workers allocate is charged here
        (self.dir / "cgroup.procs").write_text(str(pid))

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {"cgroup": str(self.dir)}
        try:
            for line in (self.dir / "memory.events").read_text().splitlines():
                k, v = line.split()
                if k in ("max", "oom", "oom_kill"):
                    out[f"events_{k}"] = int(v)
        except OSError:
            pass
        try:  # includes the page cache the tree caused, so it is not comparable with RSS
            out["cgroup_peak_mb"] = int((self.dir / "memory.peak").read_text()) / MB
        except (OSError, ValueError):
            pass
        return out

    def close(self) -> None:
        try:
            for pid in (self.dir / "cgroup.procs").read_text().split():
                kill_tree(int(pid))
        except OSError:
            pass
        for _ in range(50):
            try:
                self.dir.rmdir()
                return
            except OSError:
                time.sleep(0.1)

    def describe(self) -> str:
        return f"cgroup v2 memory.max at {self.dir}"


class SystemdLimit(HardLimit):
    kind = "systemd-run"

    def __init__(self, ceiling: int, user: bool) -> None:
        super().__init__()
        self.ceiling, self.user = ceiling, user

    def prefix(self) -> list[str]:
        return ["systemd-run", *(["--user"] if self.user else []), "--scope", "--quiet", "--collect",
                "-p", f"MemoryMax={self.ceiling}", "-p", "MemorySwapMax=0", "--"]

    def describe(self) -> str:
        return f"systemd-run --scope -p MemoryMax={self.ceiling}"


def _own_cgroup2_dir() -> tuple[Path | None, str]:
    """This process's cgroup v2 directory, or None and why not."""
    try:
        rel = next(line.split("::", 1)[1].strip() for line in Path("/proc/self/cgroup").read_text().splitlines()
                   if line.startswith("0::"))
    except (OSError, StopIteration):
        return None, "no cgroup v2 membership in /proc/self/cgroup"
    mount = None
    try:
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            left, _, right = line.partition(" - ")
            if right.split()[:1] == ["cgroup2"]:
                fields = left.split()
                root, mount = fields[3], fields[4]
                if root != "/" and rel.startswith(root):
                    rel = rel[len(root):]
                break
    except OSError:
        pass
    if mount is None:
        return None, "no cgroup2 file system mounted"
    return Path(mount) / rel.lstrip("/"), ""


def probe_hard_limit(mode: str) -> tuple[str, str]:
    """Which kernel limit can back the ceiling: ('cgroup2', parent dir) / ('systemd', 'user'|'system') /
    ('none', why). Probes without writing anywhere except, for cgroup2, enabling the memory controller for the
    children of this process's own cgroup when it is delegated but not yet enabled."""
    reasons = []
    if mode in ("auto", "cgroup2"):
        d, why = _own_cgroup2_dir()
        if d is not None:
            try:
                ctrl = (d / "cgroup.controllers").read_text().split()
                if "memory" not in ctrl:
                    why = f"memory controller not available in cgroup v2 {d} (controllers: {' '.join(ctrl) or 'none'})"
                elif not os.access(d, os.W_OK):
                    why = f"{d} is not writable"
                else:
                    sub = (d / "cgroup.subtree_control").read_text().split()
                    if "memory" not in sub:
                        (d / "cgroup.subtree_control").write_text("+memory")
                    return "cgroup2", str(d)
            except OSError as exc:
                why = f"cgroup v2 at {d} not usable ({exc})"
        reasons.append(why)
    if mode in ("auto", "systemd") and shutil.which("systemd-run"):
        user = os.geteuid() != 0
        probe = ["systemd-run", *(["--user"] if user else []), "--scope", "--quiet", "--collect",
                 "-p", "MemoryMax=256M", "true"]
        try:
            r = subprocess.run(probe, capture_output=True, text=True, timeout=20)
            if r.returncode == 0:
                return "systemd", "user" if user else "system"
            reasons.append(f"systemd-run unusable ({(r.stderr.strip().splitlines() or ['rc ' + str(r.returncode)])[0]})")
        except (OSError, subprocess.TimeoutExpired) as exc:
            reasons.append(f"systemd-run unusable ({exc})")
    elif mode in ("auto", "systemd"):
        reasons.append("no systemd-run")
    if mode not in ("auto", "none") and mode in ("cgroup2", "systemd"):
        raise SystemExit(f"--hard-limit {mode} is not available here: {'; '.join(reasons)}")
    return "none", "; ".join(r for r in reasons if r) or "not requested"


def make_limit(probe: tuple[str, str], name: str, ceiling: int) -> HardLimit:
    kind, detail = probe
    if kind == "cgroup2":
        try:
            return Cgroup2Limit(Path(detail), f"ckscale-{os.getpid()}-{name}", ceiling)
        except OSError as exc:
            return HardLimit(f"could not create a cgroup under {detail}: {exc}")
    if kind == "systemd":
        return SystemdLimit(ceiling, user=detail == "user")
    return HardLimit(detail)


def run_watched(cmd: list[str], *, ceiling: int, name: str = "child", logdir: str | Path | None = None,
                progress_file: str | Path | None = None, on_tick: Callable[[float], bool] | None = None,
                tick: float = 0.05, interval: float = 0.2, limit: HardLimit | None = None,
                timeout: float | None = None, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``cmd`` in its own session under the tree-RSS ceiling (and ``limit``, a kernel limit, if any).

    ``on_tick(t)`` is polled every ``tick`` seconds while the child runs; returning True SIGKILLs the tree (the
    resume stage's "disconnect"). ``progress_file``: JSON the child keeps up to date, read when the ceiling kills.

    Returns a record: returncode, wall_s, peak tree RSS/PSS/RssAnon (MB), processes, exceeded_ceiling,
    exceeded (when / how high / the child's progress), killed_by (None, 'ceiling', 'cgroup_oom', 'caller',
    'timeout'), enforcement, the RSS timeline and the paths of the child's stdout/stderr.
    """
    limit = limit or HardLimit()
    logdir = Path(logdir) if logdir else Path(os.environ.get("TMPDIR", "/tmp"))
    logdir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = logdir / f"{name}.out", logdir / f"{name}.err"
    full_cmd = [*limit.prefix(), *cmd]
    progress = (lambda: read_json(progress_file)) if progress_file else None
    killed_by = None
    load0 = loadavg()
    with open(out_path, "wb") as out_f, open(err_path, "wb") as err_f:
        t0 = time.perf_counter()
        proc = subprocess.Popen(full_cmd, stdout=out_f, stderr=err_f, start_new_session=True, cwd=REPO,
                                env={**os.environ, **(env or {})})
        try:
            limit.attach(proc.pid)
            with CeilingWatch(proc.pid, ceiling, interval=interval, progress=progress) as watch:
                while proc.poll() is None:
                    t = time.perf_counter() - t0
                    if killed_by is None and on_tick is not None and on_tick(t):
                        kill_tree(proc.pid)
                        killed_by = "caller"
                    if killed_by is None and timeout is not None and t > timeout:
                        kill_tree(proc.pid)
                        killed_by = "timeout"
                    time.sleep(tick)
            wall = time.perf_counter() - t0
        finally:
            if proc.poll() is None:
                kill_tree(proc.pid)
                proc.wait()
            kernel = limit.report()
            limit.close()
    if watch.exceeded is not None:
        killed_by = "ceiling"
    elif kernel.get("events_oom_kill", 0) > 0 or (limit.kind == "systemd" and proc.returncode == -signal.SIGKILL
                                                   and killed_by is None):
        killed_by = "cgroup_oom"
    return {
        "cmd": full_cmd, "returncode": proc.returncode, "wall_s": wall,
        "peak_tree_rss_mb": watch.peak_rss / MB, "peak_tree_pss_mb": watch.peak_pss / MB,
        "peak_tree_anon_mb": watch.peak_anon / MB, "processes": watch.peak_procs,
        "ceiling_mb": ceiling / MB, "exceeded_ceiling": killed_by in ("ceiling", "cgroup_oom"),
        "exceeded": watch.exceeded, "killed_by": killed_by,
        "enforcement": f"tree-RSS sampler every {interval} s + hard limit: {limit.describe()}", "kernel": kernel,
        "loadavg_before": load0, "loadavg_after": loadavg(),
        "timeline_s_rss_mb": [(t, round(r / MB, 1)) for t, r in watch.timeline],
        "stdout": str(out_path), "stderr": str(err_path),
    }


def tail(path: str | Path, n: int = 25) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""
