"""What every benchmark script shares: the machine it ran on, a watched subprocess with the peak RSS of its whole
process tree (and an optional hard memory limit), results as JSON records, and Markdown tables.

The scripts in ``benchmarks/`` are thin: each is one study (its contenders and its figures) on top of this package.
Run them from the repository root (``python benchmarks/bench_x.py``): the script's folder is on ``sys.path``, so
``import harness`` finds this package.
"""

from harness.machine import GB, MB, MP_LIKE_132K, REPO, dir_bytes, loadavg, machine_info
from harness.records import BenchRun, median, read_json, write_json_atomic
from harness.tables import print_table
from harness.watch import CeilingWatch, TreeRss, anon_bytes, kill_tree, run_watched, tail

__all__ = ["GB", "MB", "MP_LIKE_132K", "REPO", "BenchRun", "CeilingWatch", "TreeRss", "anon_bytes", "dir_bytes", "kill_tree", "loadavg",
           "machine_info", "median", "print_table", "read_json", "run_watched", "tail", "write_json_atomic"]
