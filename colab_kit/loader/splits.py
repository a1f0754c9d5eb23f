"""How a store is split into train / validation / test, saved beside it so every run and resume sees the same one:
a seeded 80/10/10 split, or matbench's official fold with a seeded validation part.

Matbench v0.1's folds are matbench's by construction: matbench 0.6 froze them in ``matbench_v0.1_validation.json``
(``KFold``/``StratifiedKFold(n_splits=5, shuffle=True, random_state=18012019).split(df, df[target])``), as matbench
ids of the test rows; row ``i`` of a task's dataframe is ``mb-<task>-<i + 1>``, so the folds are row positions
0..n-1. scikit-learn 1.9.1's KFold reproduces that file exactly for all 10 regression tasks.
"""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from colab_kit.errors import ColabKitError
from colab_kit.plan import Plan
from colab_kit.store import GraphStore
from colab_kit.util.files import atomic_write_bytes

log = logging.getLogger(__name__)
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
FOLD_SEED = 18012019
N_FOLDS = 5
_MB_ID = re.compile(r"^mb-[a-z0-9-]+-(\d+)$")


class SplitError(ColabKitError, ValueError):
    """A store that cannot be split as asked; the message says what to change."""


class MatbenchError(SplitError):
    """A matbench task, fold or results file that cannot be used as asked; the message names the fix."""


def _read(path: Path, n: int) -> dict[str, np.ndarray] | None:
    """A saved split of ``n`` graphs (None when there is none, it is damaged, or it is another store's size)."""
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as z:
            splits = {k: z[k] for k in ("train", "val", "test")}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:  # an npz member's CRC catches a flipped byte
        log.warning("split file %s is damaged (%s); making it again", path, exc)
        return None
    if sum(len(v) for v in splits.values()) != n:
        log.warning("split file %s does not match the store's %d graphs; making a new one", path, n)
        return None
    return splits


def _write(path: Path, splits: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    buf = io.BytesIO()
    np.savez(buf, **splits)
    atomic_write_bytes(path, buf.getvalue())
    return splits


def load_or_make_splits(store: GraphStore, seed: int = 0, fractions: Sequence[float] = SPLIT_FRACTIONS) -> dict[str, np.ndarray]:
    """Train/val/test index arrays, made once from ``seed`` and saved next to the store
    (``splits-seed<seed>.npz``, loaded without pickle) so every run and resume sees the same split."""
    path = store.root / f"splits-seed{seed}.npz"
    n = len(store)
    if (saved := _read(path, n)) is not None:
        return saved
    if n < 3:
        raise SplitError(f"store {store.root} has {n} graphs; at least 3 are needed for train/val/test splits: "
                          "convert more structures (--set n_samples=...)")
    perm = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(fractions[1] * n)))
    n_test = max(1, int(round(fractions[2] * n)))
    return _write(path, {"train": np.sort(perm[n_val + n_test:]), "val": np.sort(perm[:n_val]),
                          "test": np.sort(perm[n_val:n_val + n_test])})


def splits_for(store: GraphStore, plan: Plan) -> dict[str, np.ndarray]:
    """The Plan's split of ``store``: :func:`load_or_make_splits`, or matbench's fold ``plan.fold`` (+ a seeded val)."""
    if plan.split == "matbench":
        return matbench_store_split(store, plan.fold or 0, plan.seed)
    return load_or_make_splits(store, plan.seed)


def matbench_folds(n: int, task_type: str = "regression", y: np.ndarray | None = None) -> list[np.ndarray]:
    """The sorted test row positions of each of matbench's 5 folds of an ``n``-row task.

    Args:
        n: rows of the task's dataframe (``MATBENCH_TASKS[task]["n_samples"]``), in matminer's order.
        task_type: ``"regression"`` (KFold) or ``"classification"`` (StratifiedKFold, needs ``y``).
        y: the labels of the ``n`` rows ``[n]``, for classification.

    Returns:
        5 int64 arrays that partition ``range(n)``.
    """
    if task_type not in ("regression", "classification"):
        raise MatbenchError(f"task_type {task_type!r} is not 'regression' or 'classification'")
    if n < N_FOLDS:
        raise MatbenchError(f"n={n} rows cannot make {N_FOLDS} folds; pass the task's row count (at least {N_FOLDS})")
    if task_type == "classification" and (y is None or len(y) != n):
        raise MatbenchError(f"classification folds are stratified: pass y with the {n} rows' labels "
                            f"(got {'none' if y is None else len(y)})")
    try:
        from sklearn.model_selection import KFold, StratifiedKFold
    except ImportError as exc:
        raise MatbenchError("matbench folds need scikit-learn; run `pip install 'scikit-learn>=1.3'`") from exc
    kind = KFold if task_type == "regression" else StratifiedKFold
    splits = kind(n_splits=N_FOLDS, shuffle=True, random_state=FOLD_SEED).split(np.zeros(n), y)
    return [test.astype(np.int64) for _, test in splits]


def check_fold(fold: object) -> None:
    if not (isinstance(fold, (int, np.integer)) and not isinstance(fold, bool) and 0 <= fold < N_FOLDS):
        raise MatbenchError(f"matbench fold {fold!r} does not exist; choose 0..{N_FOLDS - 1}")


def matbench_split(n: int, fold: int, val_fraction: float = 0.1, seed: int = 0, task_type: str = "regression",
                   y: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Train/val/test row positions for matbench fold ``fold``: test is the official one; val is a seeded
    random ``val_fraction`` of the fold's training rows (matbench leaves validation to the user).

    Returns:
        ``{"train", "val", "test"}``: sorted, disjoint int64 arrays covering ``range(n)``.
    """
    check_fold(fold)
    if not 0.0 <= val_fraction < 1.0:
        raise MatbenchError(f"val_fraction={val_fraction} is outside [0, 1); pass e.g. 0.1")
    test = matbench_folds(n, task_type, y)[fold]
    rest = np.setdiff1d(np.arange(n, dtype=np.int64), test)
    val = np.sort(np.random.default_rng(seed).choice(rest, size=round(val_fraction * len(rest)), replace=False))
    return {"train": np.setdiff1d(rest, val), "val": val.astype(np.int64), "test": test}


def store_rows(store: GraphStore) -> tuple[np.ndarray, int]:
    """(the source row of each graph ``[N]``, the source's row count): matbench folds are made over source rows,
    and a structure that conversion skipped still holds its row.

    Rows come from matbench ids (``mb-phonons-0001`` is row 0), from ids that are the row numbers themselves, or,
    when nothing was skipped, from the store's order (which is the source's).

    Raises:
        MatbenchError: structures were skipped and the ids do not say which rows the others are.
    """
    ids = store.ids()
    failed = [i for i, _ in store.failures()]
    n_rows = store.manifest.n_items or len(ids) + len(failed)
    if ids and all(_MB_ID.match(i) for i in ids):
        return np.array([int(_MB_ID.match(i).group(1)) - 1 for i in ids], dtype=np.int64), n_rows
    every = ids + failed
    if every and all(i.isdigit() for i in every) and sorted(int(i) for i in every) == list(range(n_rows)):
        return np.array([int(i) for i in ids], dtype=np.int64), n_rows
    if not failed:
        return np.arange(len(ids), dtype=np.int64), n_rows
    raise MatbenchError(
        f"store {store.root}: {len(failed)} structures were skipped and its ids ({ids[0]!r}, ...) are neither matbench "
        "ids nor row numbers, so the other graphs cannot be placed in matbench's rows; use the task's own file")


def matbench_store_split(store: GraphStore, fold: int, seed: int = 0, val_fraction: float = 0.1) -> dict[str, np.ndarray]:
    """Train/val/test graph indices of ``store`` for matbench fold ``fold``: the graphs in the fold's official test
    rows, and :func:`matbench_split`'s validation rows (matbench leaves validation to the user). Saved beside the
    store (``splits-matbench-fold<k>-seed<s>.npz``) as the random split is."""
    check_fold(fold)
    path = store.root / f"splits-matbench-fold{fold}-seed{seed}.npz"
    if (saved := _read(path, len(store))) is not None:
        return saved
    rows, n_rows = store_rows(store)
    if store.manifest.limit is not None:
        log.warning("matbench folds over the first %d rows only (n_samples caps the data): matbench's official folds "
                    "need the whole task; use --mode full or --set n_samples=null", n_rows)
    by_row = matbench_split(n_rows, fold, val_fraction, seed)
    graph_of_row = np.full(n_rows, -1, dtype=np.int64)
    graph_of_row[rows] = np.arange(len(rows))
    splits = {k: np.sort(graph_of_row[v][graph_of_row[v] >= 0]) for k, v in by_row.items()}
    return _write(path, splits)
