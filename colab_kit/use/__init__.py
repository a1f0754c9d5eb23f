"""Stage 7, using trained models: a run's or an export's model (:mod:`.trained`), predictions on structures, files
and stores (:mod:`.predictor`, over the batched pass of :mod:`.prediction_pass`), and a teacher's predictions as
distillation targets (:mod:`.distill`).
"""

from colab_kit.use.distill import blended_targets, distill_targets, teacher_column
from colab_kit.use.prediction_pass import read_outputs, run_pass
from colab_kit.use.predictor import Predictor, load, plan_for
from colab_kit.use.trained import TrainedModel, TrainedModelError, export_model, load_trained

__all__ = ["Predictor", "TrainedModel", "TrainedModelError", "blended_targets", "distill_targets", "export_model",
           "load", "load_trained", "plan_for", "read_outputs", "run_pass", "teacher_column"]
