"""Knowledge distillation from a trained teacher: its outputs are computed once over the data by the chunked
prediction pass (:mod:`colab_kit.use.prediction_pass`), the teacher is freed, and the student trains on
``alpha * label loss + (1 - alpha) * teacher loss``.

The column lives beside the student's store as ``teacher-<weights sha256[:16]>.npz`` (``outputs`` [N] float32 in
store order, NaN where the teacher's graphs could not be made, plus the store fingerprint and the weights' sha256,
both checked on load). A teacher that reads other graphs than the student (CHGNet teaching CGCNN) predicts a
store of its own graphs of the same source, matched to the student's graphs by id.

The trainer's loss is the mean squared error, for which
``alpha (p - y)^2 + (1 - alpha)(p - t)^2 = (p - (alpha y + (1 - alpha) t))^2 + alpha (1 - alpha)(y - t)^2``:
the second term does not depend on the model, so training on the blended target ``alpha y + (1 - alpha) t``
takes exactly the gradient steps of the weighted sum of both losses, with one target per graph and no
teacher in memory. Validation, test, early stopping and the best weights use the labels alone.
"""

from __future__ import annotations

import gc
import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from colab_kit.errors import ColabKitError
from colab_kit.store import GraphStore
from colab_kit.use.prediction_pass import read_outputs
from colab_kit.use.predictor import Predictor, plan_for
from colab_kit.use.trained import load_trained
from colab_kit.util.files import atomic_write_bytes

if TYPE_CHECKING:
    from colab_kit.plan import Plan

log = logging.getLogger(__name__)


class DistillError(ColabKitError, RuntimeError):
    """Distillation cannot run as asked; the message says what to change."""


def column_path(store: GraphStore, weights_sha256: str) -> Path:
    return store.root / f"teacher-{weights_sha256[:16]}.npz"


def load_column(store: GraphStore, teacher: str) -> np.ndarray | None:
    """The teacher's cached outputs for ``store`` ([N] float32), or None when not computed (or stale)."""

    sha = load_trained(teacher).weights_sha256
    path = column_path(store, sha)
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as z:
        if str(z["store_fingerprint"]) != store.fingerprint or str(z["weights_sha256"]) != sha or len(z["outputs"]) != len(store):
            log.warning("%s was computed for another store or teacher; computing it again", path)
            return None
        return z["outputs"].copy()


def teacher_column(store: GraphStore, plan: Plan, source: str | Path | None = None, *, progress: bool = True,
                   should_stop: Callable[[], bool] | None = None) -> np.ndarray | None:
    """The outputs of ``plan.teacher`` for every graph of ``store``: loaded, or computed once and cached.

    Args:
        source: the data the store was converted from; needed when the teacher reads other graphs.

    Returns:
        [N] float32 (NaN for graphs the teacher could not read), or None when a stop was requested.

    Raises:
        DistillError: the teacher reads other graphs and ``source`` is None (``train --store``: use ``run``).
    """
    cached = load_column(store, plan.teacher)
    if cached is not None:
        return cached
    import torch


    trained = load_trained(plan.teacher)
    predictor = Predictor(trained, plan_for(trained, device=plan.device, work_dir=plan.work_dir))
    log.info("teacher %s: computing its outputs over %d graphs once", predictor, len(store))
    same = trained.graph_kind == store.graph_kind and trained.graph_params == store.params
    if same:
        own = store
    elif source is None:
        raise DistillError(
            f"teacher {plan.teacher} reads {trained.graph_kind} graphs and the store {store.root} holds "
            f"{store.graph_kind} graphs; use `python -m colab_kit run --data SOURCE --set teacher=...`, which "
            "converts the data for the teacher too")
    else:
        _, own = predictor.prediction_store(source, target=store.manifest.target_name, limit=store.manifest.limit,
                                            progress=progress, should_stop=should_stop)
        if own is None:
            return None
    done = predictor.predict_store(own, progress=progress, should_stop=should_stop)
    if not done.complete:
        return None
    values = read_outputs(own, trained.weights_sha256)
    if not same:
        by_id = dict(zip(own.ids(), values.tolist()))
        values = np.array([by_id.get(i, np.nan) for i in store.ids()], dtype=np.float32)
    del predictor, own  # the teacher leaves memory before the student is built
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    missing = int(np.isnan(values).sum())
    if missing:
        log.warning("the teacher has no output for %d of %d graphs (its graphs could not be made): those train "
                    "on their labels alone", missing, len(values))
    buf = io.BytesIO()
    np.savez(buf, outputs=values.astype(np.float32), store_fingerprint=np.array(store.fingerprint),
             weights_sha256=np.array(trained.weights_sha256))
    atomic_write_bytes(column_path(store, trained.weights_sha256), buf.getvalue())
    return values.astype(np.float32)


def blended_targets(labels: np.ndarray, teacher: np.ndarray, alpha: float) -> np.ndarray:
    """``alpha * labels + (1 - alpha) * teacher`` ([N] float64), the label alone where the teacher has no output."""
    labels = np.asarray(labels, dtype=np.float64)
    t = np.asarray(teacher, dtype=np.float64)
    return np.where(np.isfinite(t), alpha * labels + (1.0 - alpha) * t, labels)


def distill_targets(store: GraphStore, plan: Plan) -> np.ndarray | None:
    """The train targets for ``plan`` (None without a teacher): the teacher column (computed here when the teacher
    reads the store's graphs) blended with the labels by ``plan.distill_alpha``."""
    if not plan.teacher:
        return None
    column = teacher_column(store, plan, progress=False)
    if column is None:
        raise DistillError(f"the teacher outputs for {store.root} were not finished; run the same command again")
    return blended_targets(store.targets(), column, plan.distill_alpha)
