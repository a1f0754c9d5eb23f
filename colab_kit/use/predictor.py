"""Use what was trained: ``colab_kit.load(run_dir)`` gives a :class:`Predictor`, whose ``predict(structures)``
serves Python and the notebook and whose ``predict_file(source, out_csv)`` screens any source colab_kit reads
(converted into a prediction store, resumable, memory flat in its size) into ``id,prediction[,target]`` rows.
"""

from __future__ import annotations

import csv
import io
import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np
import torch

from colab_kit.graphs import Converter
from colab_kit.plan import detect, make_plan
from colab_kit.registry import GRAPH_SETTINGS
from colab_kit.sources import open_source
from colab_kit.store import ConversionError, GraphStore, build_store, fingerprint
from colab_kit.training import amp_dtype_for, cap_gpu_memory
from colab_kit.use.prediction_pass import PredictionError, read_outputs, run_pass, write_csv
from colab_kit.use.trained import TrainedModel, export_model, load_trained
from colab_kit.util.files import atomic_write_bytes
from colab_kit.util.locks import hold, hold_file
from colab_kit.util.reproducible import use_threads

if TYPE_CHECKING:
    from colab_kit.plan import Plan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictResult:
    path: Path
    rows: int
    skipped: int
    store: Path
    complete: bool


def _skipped_path(out: Path) -> Path:
    return out.with_name(re.sub(r"\.csv$", "", out.name) + ".skipped.csv")


class Predictor:
    """A trained model ready to predict: built once, on the Plan's device, with the Plan's eval batch budget.

    Args:
        trained: from :func:`colab_kit.use.trained.load_trained`.
        plan: a Plan for this model and its graph settings (default: made for this machine, ``--mode full``).
    """

    def __init__(self, trained: TrainedModel, plan: Plan | None = None) -> None:
        self.trained = trained
        self.plan = plan if plan is not None else plan_for(trained)
        self.device = torch.device(self.plan.device)
        cap_gpu_memory(self.plan, self.device)
        self._model: Any = None

    def __repr__(self) -> str:
        t = self.trained
        what = f"potential {t.potential}" if t.is_potential else f"target {t.target or '?'} [{t.unit or '?'}]"
        return f"Predictor({t.model}, {t.graph_kind} graphs, {what}, {t.weights})"

    @property
    def model(self) -> Any:
        if self._model is None:
            self._model = self.trained.build(self.device)
        return self._model

    @property
    def budget(self) -> tuple[int, int, int]:
        """(atoms, edges, graphs) of one eval batch."""
        p = self.plan
        f = max(1, p.eval_batch_size // p.batch_size)
        return p.batch_atoms * f, p.batch_edges * f, p.eval_batch_size

    def predict_store(self, store: Any, *, progress: bool = True, should_stop: Callable[[], bool] | None = None,
                      workers: int | None = None) -> Any:
        """The prediction pass over a store built with this model's graphs (resumes; see :mod:`colab_kit.use.prediction_pass`)."""

        self._one_number_per_structure()
        if store.graph_kind != self.trained.graph_kind or store.params != self.trained.graph_params:
            raise PredictionError(
                f"store {store.root} has {store.graph_kind} graphs with {store.params}; this {self.trained.model} "
                f"reads {self.trained.graph_kind} graphs with {self.trained.graph_params}: convert the data with those")

        use_threads(self.plan.threads)
        with hold(store.root, "prediction store"):
            return run_pass(store, self.model, self.trained.weights_sha256, f"{self.trained.model} predictions",
                            device=self.device, budget=self.budget,
                            workers=self.plan.workers if workers is None else workers,
                            amp_dtype=amp_dtype_for(self.plan, self.device)[0], progress=progress,
                            should_stop=should_stop)

    def _one_number_per_structure(self) -> None:
        """Refuse a potential where predictions are one number per structure (predict, predict_file, predict_store)."""
        if self.trained.is_potential:
            raise PredictionError(f"{self.trained.weights} is a potential: its energies, forces and stresses come from "
                                  "its ASE calculator (colab_kit.load(run).calculator(), then atoms.calc = it), not "
                                  "from predict, which writes one number per structure")

    def calculator(self) -> Any:
        """An ASE calculator of a trained potential (energy eV, forces eV/Å, stress eV/Å³ in ASE's sign): CHGNet's own
        ``CHGNetCalculator`` or matgl's ``PESCalculator`` around the fine-tuned model, so ASE's optimisers and MD
        (and CHGNet's StructOptimizer, with ``model.chgnet``) run it.

        Raises:
            PredictionError: the model was trained on one label per structure, not as a potential.
        """
        if not self.trained.is_potential:
            raise PredictionError(f"{self.trained.weights} predicts one number per structure ({self.trained.target}); "
                                  "an ASE calculator needs a potential: train with --task potential")
        return self.model.calculator(self.device)

    def predict(self, structures: Iterable[Any], on_bad: str = "error") -> np.ndarray:
        """Predictions ``[n]`` (the target's units) for pymatgen Structures or ASE Atoms, in their order (one structure
        gives ``[1]``).

        Args:
            on_bad: a structure that cannot be made into a graph: ``"error"`` raises naming it; ``"nan"`` gives NaN.
        """

        if on_bad not in ("error", "nan"):
            raise PredictionError(f"on_bad must be 'error' or 'nan' (got {on_bad!r})")
        self._one_number_per_structure()
        from ase import Atoms
        from pymatgen.core import Structure

        if isinstance(structures, (Structure, Atoms)):  # one structure (iterating it would give its sites)
            structures = [structures]
        rows = [(str(i), _as_structure(s, i), None) for i, s in enumerate(structures)]
        out = np.full(len(rows), np.nan, dtype=np.float32)
        if not rows:
            return out
        with tempfile.TemporaryDirectory(prefix="colab_kit-predict-") as tmp:
            conv = Converter(self.trained.graph_kind, self.trained.graph_params)
            src = open_source(rows, name="predict")
            try:
                res = build_store(src, Path(tmp) / "store", conv, workers=1, shard_size=max(len(rows), 1),
                                  on_bad_structure="skip", labels="optional", progress=False)
            except ConversionError:  # not one of them converted
                failures = [(r[0], _why_not(conv, r[1])) for r in rows[:1]]
                store = None
            else:
                store = GraphStore(res.path)
                failures = store.failures()
            if failures and on_bad == "error":
                i, why = failures[0]
                raise PredictionError(f"structure {i} ({rows[int(i)][1].composition.reduced_formula}) cannot be made "
                                      f"into {conv.name} graphs: {why}; pass on_bad='nan' to get NaN for it")
            if store is not None:
                self.predict_store(store, progress=False, workers=0)
                out[[int(i) for i in store.ids()]] = read_outputs(store, self.trained.weights_sha256)
        return out

    def predict_file(self, source: str | Path, out: str | Path, *, target: str | None = None,
                     work_dir: str | Path | None = None, progress: bool = True,
                     should_stop: Callable[[], bool] | None = None) -> PredictResult:
        """Convert ``source`` into a prediction store (reused and resumed by fingerprint) and write ``out``.

        Rows are ``id,prediction`` (``,target`` too when the source has labels), in source order, one per structure
        that converted; the others are listed with their reason in ``<out>.skipped.csv``.
        """

        self._one_number_per_structure()  # before any conversion
        out = Path(out)
        with hold_file(out, "predictions file"):
            return self._predict_file(source, out, target, work_dir, progress, should_stop)

    def _predict_file(self, source: str | Path, out: Path, target: str | None, work_dir: str | Path | None,
                      progress: bool, should_stop: Callable[[], bool] | None) -> PredictResult:
        root, store = self.prediction_store(source, target=target, work_dir=work_dir, progress=progress,
                                            should_stop=should_stop)
        if store is None:
            return PredictResult(out, 0, 0, root, False)
        done = self.predict_store(store, progress=progress, should_stop=should_stop)
        if not done.complete:
            return PredictResult(out, 0, 0, root, False)
        with_target = bool(store.manifest.target_name) and bool(np.isfinite(store.targets()).any())
        rows = write_csv(store, self.trained.weights_sha256, out, with_target)
        skipped = store.failures()
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["id", "reason"])
        w.writerows(skipped)
        atomic_write_bytes(_skipped_path(out), buf.getvalue().encode())
        return PredictResult(out, rows, len(skipped), root, True)

    def prediction_store(self, source: str | Path, *, target: str | None = None, work_dir: str | Path | None = None,
                         limit: int | None = None, progress: bool = True,
                         should_stop: Callable[[], bool] | None = None) -> tuple[Path, Any]:
        """(its directory, the store) of ``source`` (its first ``limit`` items) in this model's graphs, labels optional,
        under ``<work dir>/predict/`` by fingerprint: built, resumed or reused. The store is None when a stop came first."""

        src = open_source(source, target=target)
        conv = Converter(self.trained.graph_kind, self.trained.graph_params)
        fp = fingerprint(conv.name, conv.params, {**src.identity(), "labels": "optional"}, limit)
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(str(source).rstrip("/")).name.split(".")[0])[:60] or "data"
        root = Path(work_dir or self.plan.work_dir) / "predict" / f"{stem}-{conv.name}-{fp[:12]}"

        with hold(root, "prediction store"):
            res = build_store(src, root, conv, workers=self.plan.convert_workers, shard_size=self.plan.shard_size,
                              limit=limit, on_bad_structure="skip", labels="optional", progress=progress,
                              should_stop=should_stop)
        return root, (GraphStore(root) if res.complete else None)

    def export(self, out: str | Path) -> dict[str, Path]:
        """Write this model as an exported model directory (see :func:`colab_kit.use.trained.export_model`)."""
        return export_model(self.trained.weights, out)


def _why_not(conv: Any, structure: Any) -> str:
    """Why ``structure`` cannot be made into ``conv``'s graphs (its converter's error)."""
    try:
        conv.convert(structure, graph_id="0")
    except Exception as exc:  # noqa: BLE001 - the converter's own reason, whatever its type
        return " ".join(str(exc).split())
    return "unknown"


def _as_structure(x: Any, i: int) -> Any:
    from pymatgen.core import Structure

    if isinstance(x, Structure):
        return x
    from ase import Atoms

    if isinstance(x, Atoms):  # pymatgen's AseAtomsAdaptor gives its MSONAtoms subclass
        from pymatgen.io.ase import AseAtomsAdaptor

        return AseAtomsAdaptor.get_structure(x)
    raise PredictionError(f"item {i} is a {type(x).__name__}; pass pymatgen Structures or ASE Atoms")


def plan_for(trained: TrainedModel, mode: str = "full", **overrides: Any) -> Any:
    """The Plan this machine would use for the trained model's graphs (device, eval budget, workers)."""

    fixed = {**trained.graph_settings(), "model": trained.model, "graph_kind": trained.graph_kind}
    if clash := [k for k in overrides if k in (*GRAPH_SETTINGS, "model", "graph_kind") and overrides[k] != fixed.get(k)]:
        raise PredictionError(f"{', '.join(clash)} cannot be set when predicting: the trained {trained.model} fixes "
                              f"{', '.join(f'{k}={fixed.get(k)}' for k in clash)}; drop --set {clash[0]}=...")
    overrides = {k: v for k, v in overrides.items() if k not in fixed}
    options = {k: v for k, v in trained.options.items() if k not in overrides}
    if trained.is_potential:
        overrides.setdefault("task", "potential")
    return make_plan(detect(), mode, model=trained.model, graph_kind=trained.graph_kind, **trained.graph_settings(),
                     **options, **overrides)


def load(path: str | Path, **plan_overrides: Any) -> Predictor:
    """The trained model at ``path`` (a run directory, a ``train --out`` directory or an exported model directory),
    ready to predict. ``plan_overrides`` are Plan settings (e.g. ``device="cpu"``, ``batch_edges=20000``)."""
    trained = load_trained(path)
    return Predictor(trained, plan_for(trained, **plan_overrides))
