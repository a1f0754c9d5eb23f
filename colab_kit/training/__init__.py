"""Stage 6, training: :func:`fit` trains a registered model from a store (:mod:`.trainer`), with a memory-budgeted
batch (:mod:`.budget`: static, calibrated, halved on out-of-memory via :mod:`.oom`), a learning-rate schedule
(:mod:`.schedule`), atomic checkpoints that resume exactly (:mod:`.checkpoint`, :mod:`.state`) and evaluation of
weights on a split (:mod:`.evaluate`). Nothing here imports the code that uses trained models.
"""

from colab_kit.training.budget import Budget, TrainingError, cap_gpu_memory
from colab_kit.training.checkpoint import CheckpointError, load_checkpoint, recover_best
from colab_kit.training.evaluate import (
    amp_dtype_for,
    evaluate_shipped,
    evaluate_weights,
    evaluate_with_backoff,
    potential_budget,
    starts_pretrained,
    trained_model_settings,
)
from colab_kit.training.oom import memory_fix, retry_on_oom
from colab_kit.training.potential import NAMES, QUANTITIES, SCALE, STORE_UNITS, UNITS, describe_scores
from colab_kit.training.trainer import TrainResult, fit

__all__ = ["NAMES", "QUANTITIES", "SCALE", "STORE_UNITS", "UNITS", "Budget", "CheckpointError", "describe_scores", "evaluate_shipped", "starts_pretrained", "TrainResult", "TrainingError", "amp_dtype_for", "cap_gpu_memory", "evaluate_weights",
           "evaluate_with_backoff", "fit", "load_checkpoint", "memory_fix", "potential_budget", "recover_best", "retry_on_oom",
           "trained_model_settings"]
