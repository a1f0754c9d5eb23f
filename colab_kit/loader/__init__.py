"""Stage 5, the loader: lazy datasets over a store, memory-budgeted batches (:mod:`.batching`), the fixed
train / validation / test split and matbench's folds (:mod:`.splits`), and batches moved to the device ahead of the
step (:mod:`.device_feed`).
"""

from colab_kit.loader import device_feed
from colab_kit.loader.batching import (
    BudgetBatchSampler,
    GraphDataset,
    dataset_and_collate,
    make_loader,
    make_loaders,
    pack,
)
from colab_kit.loader.splits import (
    N_FOLDS,
    MatbenchError,
    SplitError,
    check_fold,
    load_or_make_splits,
    matbench_folds,
    splits_for,
    store_rows,
)

__all__ = ["N_FOLDS", "BudgetBatchSampler", "GraphDataset", "MatbenchError", "SplitError", "check_fold",
           "dataset_and_collate", "device_feed", "load_or_make_splits", "make_loader", "make_loaders",
           "matbench_folds", "pack", "splits_for", "store_rows"]
