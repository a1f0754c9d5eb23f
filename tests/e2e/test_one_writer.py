"""One writer per folder: two identical `run` commands started together, a killed holder, the panel and a cell in
one kernel, `convert` and `predict` on one output; and folders that cannot be written, said in one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO, run_cli

from colab_kit.util.locks import LOCK_NAME, FolderBusy, hold

SMALL = ["--mode", "debug", "--graph-kind", "radius", "--set", "n_samples=80", "--set", "epochs=1",
         "--set", "convert_workers=1"]
RUN_NAME = "mp_eform_cgcnn_3000-radius-cgcnn-debug"


def _popen(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "colab_kit", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def test_two_identical_runs_started_together_one_trains_one_exits_in_one_line(tmp_path: Path) -> None:
    args = ["run", *SMALL, "--work-dir", str(tmp_path)]
    procs = [_popen(*args), _popen(*args)]
    outs = [p.communicate(timeout=600) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 1], [o[1][-1500:] for o in outs]
    loser = next(o for p, o in zip(procs, outs) if p.returncode == 1)
    winner = next(p for p in procs if p.returncode == 0)
    lines = [ln for ln in loser[1].splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in loser[1], loser[1][-2000:]
    assert f"is in use by process {winner.pid} (`python -m colab_kit run --mode debug" in lines[0]
    assert "wait for it to finish, or stop it" in lines[0]
    run_dir = tmp_path / RUN_NAME
    log = (run_dir / "run.log").read_text()
    assert log.count("== convert:") == 1 and log.count("== train:") == 1  # one writer's story, not two interleaved
    # the folder is as after one run: the reported test MAE is that of the saved best weights
    m = json.loads((run_dir / "report" / "metrics.json").read_text())
    assert m["time"]["calls"] == 1
    ev = run_cli("evaluate", "--store", str(run_dir / "store"), "--weights", str(run_dir / "best.pt"), "--json",
                 "--work-dir", str(tmp_path))
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert json.loads(ev.stdout)["mae"] == pytest.approx(m["test_mae"], rel=1e-6)  # --json prints the JSON alone


def test_a_killed_holder_releases_the_folder(tmp_path: Path) -> None:
    args = ["run", *SMALL, "--set", "n_samples=300", "--work-dir", str(tmp_path)]
    proc = _popen(*args)
    lock = tmp_path / RUN_NAME / LOCK_NAME
    t0 = time.monotonic()
    while not (lock.is_file() and lock.stat().st_size) and time.monotonic() - t0 < 120:
        time.sleep(0.05)
    busy = run_cli(*args)
    assert busy.returncode == 1 and f"in use by process {proc.pid}" in busy.stderr
    os.killpg(proc.pid, signal.SIGKILL)  # a runtime disconnect: the kernel drops the lock with the process
    proc.wait()
    again = run_cli(*args)
    assert again.returncode == 0, again.stderr[-2000:]
    # the default work dir is shared by every checkout: a continued run says which one, how old, and how to start over
    assert f"continuing the earlier run in {tmp_path / RUN_NAME} (started " in again.stderr
    assert "ago); --fresh starts it over, --work-dir DIR keeps a separate one" in again.stderr


def test_the_same_process_cannot_hold_one_folder_twice(tmp_path: Path) -> None:
    """The panel's Run and a cell's run() in one kernel: the second is refused, and the folder is free after."""
    with hold(tmp_path / "run", "run folder"):
        with pytest.raises(FolderBusy, match=rf"run folder {tmp_path / 'run'} is in use by process {os.getpid()}"):
            with hold(tmp_path / "run", "run folder"):
                pass
    with hold(tmp_path / "run", "run folder"):
        pass


def test_convert_and_predict_refuse_a_busy_output(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with hold(store, "store"):
        res = run_cli("convert", "colab_kit/data/mp_eform_cgcnn_3000_matbench.json.gz", "--graph-kind", "radius",
                      "--out", str(store), "--limit", "20", cwd=REPO)
    assert res.returncode == 1 and f"the store {store} is in use by process {os.getpid()}" in res.stderr
    assert "Traceback" not in res.stderr and not (store / "manifest.json").exists()
    from colab_kit.util.locks import hold_file

    out = tmp_path / "preds.csv"
    with hold_file(out, "predictions file"):
        with pytest.raises(FolderBusy, match=rf"predictions file {out} is in use"):
            with hold_file(out, "predictions file"):
                pass


def _one_line_error(res: subprocess.CompletedProcess, *needles: str) -> None:
    assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr[-2000:]
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, res.stderr[-2000:]
    for n in needles:
        assert n in errors[0], errors[0]


def test_unwritable_work_persist_and_cache_dirs_are_one_line(read_only_dir: Path, tmp_path: Path) -> None:
    work = read_only_dir / "work"
    _one_line_error(run_cli("run", *SMALL, "--work-dir", str(work)),
                    f"cannot write the work dir {work} (Read-only file system)", "--work-dir")
    # the default work dir is the user cache dir: read-only there too
    res = run_cli("run", *SMALL, env={"XDG_CACHE_HOME": str(read_only_dir)})
    _one_line_error(res, f"cannot write the work dir {read_only_dir / 'colab_kit'}")
    persist = read_only_dir / "drive"
    _one_line_error(run_cli("run", *SMALL, "--work-dir", str(tmp_path), "--persist-dir", str(persist)),
                    f"cannot write the persist dir {persist} (Read-only file system)", "persist_dir=null")
    _one_line_error(run_cli("convert", "colab_kit/data/mp_eform_cgcnn_3000_matbench.json.gz", "--out",
                            str(read_only_dir / "s"), cwd=REPO),
                    f"cannot write the store {read_only_dir / 's'}")
