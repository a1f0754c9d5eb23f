"""Stage 8, the run: the whole pipeline behind ``python -m colab_kit run`` and the notebook (:mod:`.pipeline`:
plan, download, convert, train, evaluate, report; resumable by running it again), its mirror to a persist dir such
as Google Drive (:mod:`.persist`), the report (:mod:`.report`), matbench's benchmark (:mod:`.benchmark`,
:mod:`.matbench`) and the frozen-CHGNet head (:mod:`.frozen_head`).
"""

from colab_kit.run.benchmark import run_benchmark
from colab_kit.run.frozen_head import run_head
from colab_kit.run.pipeline import RunResult, folder_for, run, run_name
from colab_kit.run.report import (
    format_scores,
    mean_predictor_mae,
    potential_scores,
    reference_energy_mae,
    store_target_name,
)

__all__ = ["RunResult", "folder_for", "format_scores", "mean_predictor_mae", "run", "run_benchmark", "run_head",
           "potential_scores", "reference_energy_mae", "run_name", "store_target_name"]
