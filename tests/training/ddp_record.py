"""Run under ``torchrun`` by tests/training/test_distributed.py: a real DistributedDataParallel ``fit`` whose sampler and steps
are recorded, then a gathered test-set evaluation.

    torchrun --nproc_per_node 2 tests/training/ddp_record.py STORE OUT RECORD_DIR

Writes ``RECORD_DIR/rank<r>.json``: for every iteration of the train sampler, its epoch and offset, this rank's
batches and their (counted graphs, graphs of the step) weights; and the graph ids of every batch the model trained
on. Rank 0 also writes ``RECORD_DIR/test.npz`` (predictions and targets of the gathered evaluation).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from colab_kit import registry
from colab_kit.loader.batching import BudgetBatchSampler
from colab_kit.plan.machine import detect
from colab_kit.plan.planner import make_plan
from colab_kit.store.format import GraphStore
from colab_kit.training.evaluate import evaluate_weights
from colab_kit.training.trainer import fit
from colab_kit.util import distributed

SETTINGS = {"model": "cgcnn", "hidden": 32, "epochs": 2, "batch_size": 16, "batch_atoms": 100_000,
            "batch_edges": 1_000_000, "workers": 0}


def plan_for(store: GraphStore, machine=None):  # noqa: ANN001, ANN201 - also used by the test, in one process
    settings = registry.graph_kind(store.graph_kind).settings(store.params)
    return make_plan(machine or detect(), "debug", graph_kind=store.graph_kind, **settings, **SETTINGS)


def main() -> None:
    store, out, record = GraphStore(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    plan = plan_for(store)
    iterations, trained = [], []
    original_iter = BudgetBatchSampler.__iter__

    def recording_iter(self: BudgetBatchSampler):  # noqa: ANN202
        it = original_iter(self)
        if self.shuffle:  # the train sampler
            batches = self.batches()
            iterations.append({"epoch": self.epoch, "offset": self.offset, "world": self.world,
                               "batches": batches, "weights": self.step_info})
        return it

    BudgetBatchSampler.__iter__ = recording_iter  # type: ignore[method-assign]
    fit(store, plan, out, progress=False, step_hook=lambda batch: trained.append(list(batch.graph_id)))
    record.mkdir(parents=True, exist_ok=True)
    rank = distributed.rank()
    (record / f"rank{rank}.json").write_text(json.dumps({"iterations": iterations, "trained": trained,
                                                         "world": distributed.size()}))
    test = evaluate_weights(store, plan, out / "best.pt")
    if rank == 0:
        np.savez(record / "test.npz", pred=test["pred"], target=test["target"], mae=test["mae"])
    distributed.stop()


if __name__ == "__main__":
    main()
