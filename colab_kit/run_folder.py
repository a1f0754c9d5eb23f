"""Every path of a run, named once: the run folder's layout as an object.

A run folder (``<work dir>/<run name>/``, mirrored to ``<persist dir>/<run name>/``; also a ``train --out`` folder,
which has the training part of it)::

    .colab_kit.lock          one writer at a time (colab_kit.util.locks)
    plan.json                the Plan this run used
    run.log                  everything logged, across resumes
    timing.json              compute time across every call of the command
    prepared.json            a torchrun launch: rank 0 has the store ready (the other ranks wait for it)
    store/                   the graph store (its manifest, shards, split files, teacher columns, outputs)
    store-structures/        ... or the structure-only store (graph_edges=device; its edges are built per batch)
    checkpoints/             latest.pt, previous.pt, checksums.json, oom-budget.json
    best.pt, checksums.json  the best validation epoch's weights, and their sha256
    metrics.jsonl, .csv      per-epoch metrics
    report/                  metrics.json, loss_curve.png, parity.png, summary.txt, skipped.csv, warnings.csv, files.json

Nothing here reads or writes: the modules that do ask this object where (the pipeline, persist, training, the
trained-model loader, the notebook panel). It sits in the lowest layer because every layer needs a path of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STORE = "store"
STRUCTURE_STORE = "store-structures"
STORES = (STORE, STRUCTURE_STORE)
LOCK = ".colab_kit.lock"
CHECKSUMS = "checksums.json"


@dataclass(frozen=True)
class RunFolder:
    """The paths of one run folder.

    Attributes:
        root: the folder.
        structures_only: its store keeps structures only (``graph_edges=device``): ``store`` is then
            ``store-structures/``, so switching ``graph_edges`` keeps both and resumes from the checkpoint.
    """

    root: Path
    structures_only: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    def mirrored(self, persist_root: str | Path) -> RunFolder:
        """The same layout under another root (the persist dir's copy)."""
        return RunFolder(Path(persist_root), self.structures_only)

    # the store
    @property
    def store(self) -> Path:
        return self.root / (STRUCTURE_STORE if self.structures_only else STORE)

    @property
    def stores(self) -> tuple[Path, Path]:
        """Both store folders: a run switched between graph_edges settings may hold either."""
        return self.root / STORE, self.root / STRUCTURE_STORE

    # files of the run
    @property
    def lock(self) -> Path:
        return self.root / LOCK

    @property
    def plan(self) -> Path:
        return self.root / "plan.json"

    @property
    def log(self) -> Path:
        return self.root / "run.log"

    @property
    def timing(self) -> Path:
        return self.root / "timing.json"

    @property
    def prepared(self) -> Path:
        return self.root / "prepared.json"

    # training
    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def latest(self) -> Path:
        return self.checkpoints / "latest.pt"

    @property
    def previous(self) -> Path:
        return self.checkpoints / "previous.pt"

    @property
    def oom_hint(self) -> Path:
        """The halved budget a rank that ran out of memory left for the next launch."""
        return self.checkpoints / "oom-budget.json"

    @property
    def best(self) -> Path:
        return self.root / "best.pt"

    @property
    def metrics_jsonl(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def metrics_csv(self) -> Path:
        return self.root / "metrics.csv"

    # the report
    @property
    def report(self) -> Path:
        return self.root / "report"

    def report_file(self, name: str) -> Path:
        """``metrics.json``, ``summary.txt``, ``loss_curve.png``, ``parity.png``, ``skipped.csv``, ``warnings.csv``,
        ``files.json``."""
        if name not in REPORT_FILES:
            raise ValueError(f"report file must be one of {REPORT_FILES} (got {name!r})")
        return self.report / name

    # what the persist dir keeps, relative to the root, checksum records before the files they list
    @staticmethod
    def kept() -> tuple[str, ...]:
        """Glob patterns (relative) of every completed file worth mirroring: few, large, never one per graph."""
        return MIRRORED

    def relative(self, path: Path) -> str:
        return str(Path(path).relative_to(self.root))

    # what is there
    def holds_work(self) -> bool:
        """Whether the folder holds anything worth keeping: a store shard (either store) or a checkpoint."""
        return any(any(d.glob("shard-*")) for d in self.stores) or any(self.checkpoints.glob("*.pt"))

    def found(self) -> list[str]:
        """What earlier work is here: "graph store", "structure-only store", "checkpoint", "report"."""
        parts = [what for path, what in ((self.root / STORE / "manifest.json", "graph store"),
                                         (self.root / STRUCTURE_STORE / "manifest.json", "structure-only store"),
                                         (self.latest, "checkpoint"), (self.report / "metrics.json", "report"))
                 if path.is_file()]
        return parts


REPORT_FILES = ("metrics.json", "summary.txt", "loss_curve.png", "parity.png", "parity_energy.png", "parity_force.png",
                "parity_stress.png", "parity_magmom.png", "skipped.csv", "warnings.csv",
                "files.json")
MIRRORED = (
    "plan.json",
    *(f"{d}/{f}" for d in STORES for f in ("manifest*.json", "shard-*.safetensors", "splits-*.npz", "teacher-*.npz")),
    f"checkpoints/{CHECKSUMS}", "checkpoints/*.pt", CHECKSUMS, "best.pt",
    "metrics.jsonl", "metrics.csv", "timing.json", "report/*",
    "fold-*.csv", "folds.csv", "results.json.gz",  # a benchmark's folder
)
