"""benchmarks/harness: the tree-RSS ceiling watcher every study uses (fast); benchmarks/scale.py: the whole scale
proof on a tiny data set (slow)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from helpers import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import harness  # noqa: E402  (benchmarks/harness, the benchmarks' own package)
import scale  # noqa: E402  (a script in benchmarks/, not a package)

# A parent that only sleeps and a grandchild that allocates 40 MB (touched) every 50 ms and reports progress:
# the watcher must sum the whole tree, kill all of it above the ceiling, and say how far it got.
GROWER = textwrap.dedent("""
    import json, os, subprocess, sys, time
    if sys.argv[1] == "parent":
        subprocess.Popen([sys.executable, __file__, "child", sys.argv[2], sys.argv[3]])
        time.sleep(120)
    else:
        open(sys.argv[3], "w").write(str(os.getpid()))
        chunks = []
        for k in range(1, 400):
            chunks.append(b"\\x01" * (40 << 20))
            with open(sys.argv[2] + ".tmp", "w") as f:
                json.dump({"items": k}, f)
            os.replace(sys.argv[2] + ".tmp", sys.argv[2])
            time.sleep(0.05)
""")


def test_ceiling_watcher_kills_the_whole_tree_above_the_ceiling(tmp_path: Path) -> None:
    script = tmp_path / "grow.py"
    script.write_text(GROWER)
    progress, pidfile = tmp_path / "progress.json", tmp_path / "grandchild.pid"
    t0 = time.monotonic()
    rec = harness.run_watched([sys.executable, str(script), "parent", str(progress), str(pidfile)],
                            ceiling=300 * 2**20, name="grow", logdir=tmp_path, progress_file=progress, timeout=30)
    assert time.monotonic() - t0 < 10
    assert rec["exceeded_ceiling"] and rec["killed_by"] == "ceiling", rec
    assert rec["returncode"] == -9
    ex = rec["exceeded"]
    assert 300 < ex["tree_rss_mb"] < 700 and ex["progress"]["items"] >= 5
    assert rec["processes"] >= 2  # the parent and the grandchild were both counted
    grandchild = int(pidfile.read_text())
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        try:
            if psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"grandchild {grandchild} survived the kill")


def test_ceiling_watcher_lets_a_child_under_the_ceiling_finish(tmp_path: Path) -> None:
    code = "x = b'\\x01' * (120 << 20); import time; time.sleep(0.6); print('done')"
    rec = harness.run_watched([sys.executable, "-c", code], ceiling=1024 * 2**20, name="ok", logdir=tmp_path)
    assert rec["returncode"] == 0 and not rec["exceeded_ceiling"] and rec["killed_by"] is None
    assert 120 < rec["peak_tree_rss_mb"] < 1024
    assert Path(rec["stdout"]).read_text().strip() == "done"


@pytest.mark.slow
def test_scale_proof_end_to_end_on_a_tiny_data_set(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "scale.py"), "--n", "1500", "--data", str(tmp_path / "mp.json.gz"),
           "--workdir", str(tmp_path / "work"), "--json-out", str(out), "--loop-sample", "60",
           "--train-steps", "3", "--train-warmup", "1", "--train-models", "cgcnn"]  # CHGNet's setup alone takes minutes
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "HEADLINE:" in r.stdout
    res = json.loads(out.read_text())
    st = res["stages"]
    assert set(st) == set(scale.STAGES)
    assert st["generate"]["status"] == "ok" and st["generate"]["stats"]["n_isolated"] >= 1
    chg = st["convert"]["rows"][0]
    assert chg["status"] == "ok" and chg["items"] == 1500 and chg["graphs"] + chg["skipped"] == 1500
    assert chg["skipped"] >= 1  # the structure with an isolated atom
    assert chg["peak_tree_rss_mb"] < res["config"]["ceiling_gb"] * 1024 and chg["rss_target_met"]
    rs = st["resume"]
    assert rs["status"] == "ok" and rs["identical_to_uninterrupted"] and rs["reused_all_committed"]
    assert 0.5 <= rs["committed_at_kill"]["fraction"] < 1 and rs["first_run"]["killed_by"] == "caller"
    assert st["naive"]["status"] == "ok" and st["naive"]["result"]["items"] == 1500
    assert st["chgnet_loop"]["status"] == "ok" and st["chgnet_loop"]["result"]["extrapolated_convert_s"] > 0
    ld = {x["contender"]: x for x in st["loader"]["rows"]}
    assert ld["colab_kit"]["graphs"] == ld["per_file"]["graphs"] == chg["graphs"]
    assert st["train"]["status"] in ("ok", "skipped")
    # a second run measures nothing again
    t = time.monotonic()
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert again.returncode == 0 and "reusing it" in again.stdout and time.monotonic() - t < 120
