"""What the label is and in which unit: a folder's id_prop.csv names nothing, so `--set target=` / `--set unit=`
name it, also for a run that already trained (only the report's words change); a table's label column is chosen
with `target=` (or its alias `target_column=`) and another label is another run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from helpers import FIXTURES, run_cli

from colab_kit.plan.machine import detect
from colab_kit.plan.planner import make_plan
from colab_kit.run.pipeline import run_name

SMALL = ["--mode", "debug", "--graph-kind", "radius", "--set", "epochs=1", "--set", "convert_workers=1"]


def test_a_folder_label_named_later_resumes_the_same_run(tmp_path: Path) -> None:
    data = tmp_path / "my_cifs"
    shutil.copytree(FIXTURES / "poscar_dir", data)
    args = ["run", *SMALL, "--data", str(data), "--work-dir", str(tmp_path / "w")]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr[-2000:]
    run_dir = tmp_path / "w" / "my_cifs-radius-cgcnn-debug"
    m = json.loads((run_dir / "report" / "metrics.json").read_text())
    assert m["unit"] == "" and "unit not known: --set unit=... names it" in (run_dir / "report" / "summary.txt").read_text()
    named = run_cli(*args, "--set", "target=optb88vdw_bandgap")
    assert named.returncode == 0, named.stderr[-2000:]
    assert "nothing to convert" in named.stderr and "training already finished" in named.stderr  # resumed, not redone
    m = json.loads((run_dir / "report" / "metrics.json").read_text())
    assert m["target"] == "optb88vdw_bandgap" and m["unit"] == "eV" and m["target_label"] == "band gap (eV)"
    assert "MAE" in named.stdout and " eV" in named.stdout
    unit = run_cli(*args, "--set", "unit=meV")
    assert unit.returncode == 0 and "nothing to convert" in unit.stderr, unit.stderr[-2000:]
    assert json.loads((run_dir / "report" / "metrics.json").read_text())["unit"] == "meV"


def test_a_table_label_is_chosen_by_target_or_target_column(tmp_path: Path) -> None:
    csv = str(FIXTURES / "mp20_sample.csv")
    refused = run_cli("run", *SMALL, "--data", csv, "--work-dir", str(tmp_path))
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "several label columns ['formation_energy_per_atom', 'band_gap', 'e_above_hull']" in refused.stderr
    m = make_plan(detect(), "debug", data=csv, target_column="band_gap")
    assert m.target == "band_gap"
    a = make_plan(detect(), "debug", data=csv, target="band_gap", graph_kind="radius")
    b = make_plan(detect(), "debug", data=csv, target="e_above_hull", graph_kind="radius")
    assert run_name(a) != run_name(b) and "target=band_gap" in run_name(a)  # another label: another run folder
    ok = run_cli("run", *SMALL, "--data", csv, "--set", "target_column=formation_energy_per_atom",
                 "--work-dir", str(tmp_path))
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "eV/atom" in ok.stdout
