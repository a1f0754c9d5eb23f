"""Frozen-backbone mode: CHGNet's pretrained crystal features (the pooled atom features its energy head reads,
``CHGNet(graphs, return_crystal_feas=True)["crystal_fea"]``, 64 per structure) computed once over a CHGNet store
by the prediction pass and cached beside it, then a small MLP head trained on them in seconds.

``python -m colab_kit head`` writes ``<work_dir>/<data>-chgnet-head-<mode>/``: ``store/`` (CHGNet graphs and the
cached features, shared by every fold and seed), ``head[-fold<k>][-seed<s>].pt`` (the head's state dict, with the
feature and target scaling as buffers), ``head...json`` and ``metrics...json``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from colab_kit import registry
from colab_kit.errors import ColabKitError
from colab_kit.graphs import get_converter
from colab_kit.loader import splits_for
from colab_kit.models import CHGNetRegressor
from colab_kit.run.pipeline import run_name
from colab_kit.run.report import mean_predictor_mae
from colab_kit.sources import resolve
from colab_kit.store import GraphStore, build_store
from colab_kit.use import read_outputs, run_pass
from colab_kit.util.files import atomic_write_bytes, atomic_write_json

if TYPE_CHECKING:
    from colab_kit.plan import Plan

log = logging.getLogger(__name__)


def features_key(pretrained: str) -> str:
    import chgnet

    return hashlib.sha256(f"chgnet crystal_fea {chgnet.__version__} {pretrained}".encode()).hexdigest()


def crystal_features(store: GraphStore, plan: Plan, pretrained: str = "0.3.0", progress: bool = True,
                     should_stop: Any = None) -> np.ndarray | None:
    """CHGNet's crystal features ``[N, 64]`` for every graph of a CHGNet store (cached; None if stopped first)."""

    if store.graph_kind != registry.model_graph_kind("chgnet"):
        raise ColabKitError(f"store {store.root} holds {store.graph_kind} graphs; CHGNet features need chgnet "
                            "graphs (`--graph-kind chgnet`)")
    key = features_key(pretrained)
    device = torch.device(plan.device)
    backbone = CHGNetRegressor(pretrained=pretrained).to(device)
    f = max(1, plan.eval_batch_size // plan.batch_size)
    done = run_pass(store, backbone, key, "CHGNet crystal features", device=device,
                    budget=(plan.batch_atoms * f, plan.batch_edges * f, plan.eval_batch_size), workers=plan.workers,
                    output=lambda m, b: m.chgnet(b[0], task="e", return_crystal_feas=True)["crystal_fea"],
                    progress=progress, should_stop=should_stop)
    return read_outputs(store, key) if done.complete else None


class Head(nn.Module):
    """MLP on standardised features; the output is ``mean + std * mlp(x)`` (all scalings are buffers)."""

    def __init__(self, x_mean: np.ndarray, x_std: np.ndarray, y_mean: float, y_std: float, hidden: int = 128) -> None:
        super().__init__()
        n = len(x_mean)
        self.mlp = nn.Sequential(nn.Linear(n, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1))
        self.register_buffer("x_mean", torch.as_tensor(x_mean, dtype=torch.float32))
        self.register_buffer("x_std", torch.as_tensor(np.where(x_std > 0, x_std, 1.0), dtype=torch.float32))
        self.register_buffer("y_mean", torch.tensor(float(y_mean)))
        self.register_buffer("y_std", torch.tensor(float(y_std or 1.0)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.y_mean + self.y_std * self.mlp((x - self.x_mean) / self.x_std).squeeze(-1)


def train_head(x: np.ndarray, y: np.ndarray, splits: dict[str, np.ndarray], *, hidden: int = 128, epochs: int = 500,
               lr: float = 2e-3, batch: int = 256, patience: int = 50, seed: int = 0) -> tuple[Head, dict[str, Any]]:
    """Train a :class:`Head` on features ``x`` [N, F] and targets ``y`` [N] (minibatches, AdamW, cosine schedule),
    keeping the weights of the best validation MAE; returns (head, {"epochs", "best_epoch", "val_mae", "seconds"}).

    Runs torch on one thread: steps this small spend their time in thread hand-offs (measured on the 2-core machine
    under load: 4.7 s on one thread, 242 s on two, the same weights)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_head(x, y, splits, hidden, epochs, lr, batch, patience, seed)
    finally:
        torch.set_num_threads(threads)


def _train_head(x: np.ndarray, y: np.ndarray, splits: dict[str, np.ndarray], hidden: int, epochs: int, lr: float,
                batch: int, patience: int, seed: int) -> tuple[Head, dict[str, Any]]:
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    tr, va = splits["train"], splits["val"]
    xt = torch.as_tensor(x, dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.float32)
    head = Head(x[tr].mean(0), x[tr].std(0), float(y[tr].mean()), float(y[tr].std()), hidden)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    gen = torch.Generator().manual_seed(seed)
    best, best_state, best_epoch, epoch = float("inf"), None, 0, 0
    for epoch in range(1, epochs + 1):
        head.train()
        order = torch.as_tensor(tr)[torch.randperm(len(tr), generator=gen)]
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            loss = nn.functional.mse_loss(head(xt[idx]) / head.y_std, yt[idx] / head.y_std)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        head.eval()
        with torch.no_grad():
            val = float((head(xt[va]) - yt[va]).abs().mean())
        if val < best:
            best, best_epoch, best_state = val, epoch, {k: v.clone() for k, v in head.state_dict().items()}
        elif epoch - best_epoch >= patience:
            break
    head.load_state_dict(best_state)
    return head.eval(), {"epochs": epoch, "best_epoch": best_epoch, "val_mae": best,
                         "seconds": round(time.perf_counter() - t0, 2)}


def run_head(plan: Plan, progress: bool = True, should_stop: Any = None) -> dict[str, Any]:
    """The frozen-backbone pipeline for ``plan`` (model chgnet): CHGNet store, cached features, head, test scores."""
    import io
    from pathlib import Path


    data = resolve(plan.data, Path(plan.work_dir) / "downloads", progress=progress, sha256=plan.data_sha256)
    # one store and one feature cache for every fold and seed; the head's files name them
    root = Path(plan.work_dir) / run_name(plan.replace("head", split="random", fold=None, seed=0)).replace(
        f"-chgnet-{plan.model}", "-chgnet-head", 1)
    tag = (f"-fold{plan.fold}" if plan.split == "matbench" else "") + (f"-seed{plan.seed}" if plan.seed else "")
    conv = get_converter("chgnet", cutoff=plan.cutoff, bond_cutoff=plan.bond_cutoff, max_neighbors=plan.max_neighbors,
                         on_isolated_atoms=plan.on_isolated_atoms)
    res = build_store(data, root / "store", conv, workers=plan.convert_workers, shard_size=plan.shard_size,
                      limit=plan.n_samples, on_bad_structure=plan.on_bad_structure, target=plan.target,
                      progress=progress, should_stop=should_stop)
    if not res.complete:
        return {"status": "stopped", "dir": root}
    store = GraphStore(root / "store")
    t0 = time.perf_counter()
    x = crystal_features(store, plan, plan.model_options.get("pretrained") or "0.3.0", progress, should_stop)
    if x is None:
        return {"status": "stopped", "dir": root}
    feature_s = time.perf_counter() - t0
    y = store.targets()
    splits = splits_for(store, plan)
    head, info = train_head(x, y, splits, seed=plan.seed)
    with torch.no_grad():
        pred = head(torch.as_tensor(x[splits["test"]], dtype=torch.float32)).numpy()
    err = pred - y[splits["test"]]
    metrics = {"status": "finished", "n_graphs": len(store), "test_n": int(len(err)), "test_mae": float(np.abs(err).mean()),
               "test_rmse": float(np.sqrt((err ** 2).mean())),
               "mean_predictor_test_mae": mean_predictor_mae(y, splits["train"], splits["test"]),
               "features_seconds": round(feature_s, 1), "head_seconds": info["seconds"], "head": info}
    buf = io.BytesIO()
    torch.save(head.state_dict(), buf)
    atomic_write_bytes(root / f"head{tag}.pt", buf.getvalue())
    atomic_write_json(root / f"head{tag}.json", {"features": "chgnet crystal_fea", "pretrained": plan.model_options.get("pretrained"),
                                           "n_features": int(x.shape[1]), "hidden": head.mlp[0].out_features,
                                           "target": store.manifest.target_name})
    atomic_write_json(root / f"metrics{tag}.json", metrics)
    log.info("frozen CHGNet + head: test MAE %.4g (mean predictor %.4g); features %.1f s once, head %.1f s",
             metrics["test_mae"], metrics["mean_predictor_test_mae"], feature_s, info["seconds"])
    return {**metrics, "dir": root, "files": {"head": root / f"head{tag}.pt", "metrics": root / f"metrics{tag}.json"}}
