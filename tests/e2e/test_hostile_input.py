"""Inputs built to hurt: they are refused per item or per file, in one line, quickly, and never take the runtime
down (no arbitrary import, no file outside the dataset, no unbounded memory or time, no crashed conversion)."""

from __future__ import annotations

import csv
import gzip
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import FIXTURES, REPO, run_cli, shipped_records, write_matbench

from colab_kit.graphs import get_converter
from colab_kit.sources import SourceError, open_source
from colab_kit.store.build import build_store
from colab_kit.store.format import GraphStore


def test_a_cif_folder_is_named_by_its_files_content(tmp_path: Path) -> None:
    data = tmp_path / "cifs"
    shutil.copytree(FIXTURES / "cif_dir", data)
    before = open_source(data).identity()
    cif = data / "6.cif"
    text = cif.read_text()
    edited = text.replace("0.333333", "0.333334", 1)  # one coordinate edited in place: same name, same size
    assert edited != text and len(edited) == len(text)
    cif.write_text(edited)
    assert open_source(data).identity() != before


def _matbench_with(tmp_path: Path, extra: list[tuple[str, dict, float]]) -> Path:
    ids, rows = shipped_records(6)
    ids += [e[0] for e in extra]
    rows += [[e[1], e[2]] for e in extra]
    return write_matbench(tmp_path / "hostile.json.gz", ids, rows)


def test_a_structure_naming_other_code_is_refused_not_imported(tmp_path: Path) -> None:
    _, rows = shipped_records(1)
    evil = json.loads(json.dumps(rows[0][0]))
    evil["sites"][0]["properties"] = {"x": {"@module": "this", "@class": "Anything"}}
    path = _matbench_with(tmp_path, [("evil", evil, 0.1)])
    res = run_cli("convert", str(path), "--graph-kind", "radius", "--out", str(tmp_path / "store"), "--workers", "2")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "The Zen of Python" not in res.stdout + res.stderr  # `import this` prints it: nothing was imported
    store = GraphStore(tmp_path / "store")
    reasons = dict(store.failures())
    assert len(store) == 6 and "names the module 'this'" in reasons["evil"]


def test_id_prop_rows_cannot_reach_outside_the_folder_nor_echo_a_file(tmp_path: Path) -> None:
    data = tmp_path / "poscars"
    shutil.copytree(FIXTURES / "poscar_dir", data)
    (data / "POSCAR-secret.vasp").write_text(Path("/etc/passwd").read_text())  # inside, but not a structure
    with open(data / "id_prop.csv", "a", newline="") as f:
        csv.writer(f).writerows([["../../../../etc/hostname", "1.0"], ["/etc/passwd", "2.0"],
                                 ["POSCAR-secret.vasp", "3.0"]])
    store = build_store(data, tmp_path / "store", get_converter("radius"), progress=False, on_bad_structure="skip")
    reasons = dict(GraphStore(store.path).failures())
    assert "no structure file for id '../../../../etc/hostname'" in reasons["../../../../etc/hostname"]
    assert "no structure file for id '/etc/passwd'" in reasons["/etc/passwd"]
    secret = Path("/etc/passwd").read_text().splitlines()[0]
    assert all(secret not in r and secret.split(":")[0] + ":" not in r for r in reasons.values()), reasons


def test_one_bad_cell_fails_that_structure_not_the_conversion(tmp_path: Path) -> None:
    """A zero-volume lattice (ZeroDivisionError in pymatgen's search) and a 100,000 Å cell (a 1.96 TB allocation)
    are skipped with their reasons, in conversion workers, and every other structure converts."""
    _, rows = shipped_records(2)
    flat = json.loads(json.dumps(rows[0][0]))
    flat["lattice"]["matrix"] = [[3.0, 0, 0], [6.0, 0, 0], [0, 0, 3.0]]
    huge = json.loads(json.dumps(rows[1][0]))
    huge["lattice"]["matrix"] = [[1e5, 0, 0], [0, 1e5, 0], [0, 0, 1e5]]
    path = _matbench_with(tmp_path, [("flat", flat, 0.1), ("huge", huge, 0.2)])
    rss0 = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    res = run_cli("convert", str(path), "--graph-kind", "chgnet", "--out", str(tmp_path / "store"), "--workers", "2")
    assert res.returncode == 0, res.stderr[-2000:]
    assert resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss < max(rss0, 3 * 2**20)  # KiB: no 1.96 TB attempt
    reasons = dict(GraphStore(tmp_path / "store").failures())
    assert "lattice has zero volume" in reasons["flat"]
    assert "grid cells" in reasons["huge"] and "check the lattice's units" in reasons["huge"]
    assert len(GraphStore(tmp_path / "store")) == 6


def _convert_quickly(path: Path, tmp_path: Path, *, seconds: float) -> subprocess.CompletedProcess:
    t0 = time.monotonic()
    res = run_cli("convert", str(path), "--graph-kind", "radius", "--out", str(tmp_path / "store"))
    assert time.monotonic() - t0 < seconds, "refused too slowly"
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    return res


def test_memory_and_time_bombs_are_refused_in_one_line(tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"  # 400 KB nested 200,000 levels: 22 GB before
    deep.write_text('{"index": [0], "columns": ["structure", "e_form"], "data": [[' + "[" * 200_000 + "]" * 200_000
                    + ", 1.0]]}")
    assert "JSON nested more than 64 levels deep" in _convert_quickly(deep, tmp_path, seconds=30).stderr
    long = tmp_path / "long.json.gz"  # one 40 MB string in ~40 kB of gzip: 27 min for a 2 GB one before
    with gzip.open(long, "wt") as f:
        f.write('{"index": [0], "columns": ["structure", "e_form"], "data": [["' + "a" * (40 << 20) + '", 1.0]]}')
    assert "a string longer than 8 MB" in _convert_quickly(long, tmp_path, seconds=30).stderr
    res = run_cli("run", "--mode", "debug", "--set", "cutoff=1e5", "--work-dir", str(tmp_path / "w"))
    assert res.returncode == 2 and "plan setting cutoff must be a number of Å in (0, 20]" in res.stderr
    line = tmp_path / "line.extxyz"  # a frame whose comment line never ends
    line.write_text("2\n" + "x" * (3 << 20))
    with pytest.raises(SourceError, match="line 2: longer than 1 M characters"):
        list(open_source(line, target="energy"))


def test_a_second_sigterm_stops_at_once(tmp_path: Path) -> None:
    """SIGTERM asks for a clean stop; a second one ends the process now (it used to be ignored while parsing)."""
    import signal

    ids, rows = shipped_records(None)
    path = write_matbench(tmp_path / "all.json.gz", ids * 4, rows * 4)
    # one shard of 12,000 structures: the first SIGTERM is seen only once the shard is done (a minute away)
    proc = subprocess.Popen([sys.executable, "-m", "colab_kit", "convert", str(path), "--graph-kind", "chgnet",
                             "--out", str(tmp_path / "s"), "--workers", "1", "--shard-size", "12000"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(6)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - t0 < 20 and proc.returncode == 130, (proc.returncode, err[-1000:])
    assert "interrupted; completed shards and checkpoints are kept" in err


def test_overlapping_atoms_in_a_structure_dict_are_refused(tmp_path: Path) -> None:
    _, rows = shipped_records(1)
    twin = json.loads(json.dumps(rows[0][0]))
    site = json.loads(json.dumps(twin["sites"][0]))
    site["abc"] = [x + 0.001 for x in site["abc"]]  # a copy of site 0, a few hundredths of an Å away
    twin["sites"].append(site)
    path = _matbench_with(tmp_path, [("twin", twin, 0.1)])
    for kind in ("radius", "chgnet"):
        res = build_store(path, tmp_path / kind, get_converter(kind), progress=False, on_bad_structure="skip")
        reason = dict(GraphStore(res.path).failures())["twin"]
        assert "Å apart (overlapping: less than 0.5 Å)" in reason and res.n_graphs == 6, (kind, reason)
