"""colab_kit against the packages' own training pipelines (issue #15): ALIGNN's ``train_for_folder`` and matgl's
``MGLDataset`` + Lightning path, on the same real data, split, model class, sizes and epochs, on CPU.

Contenders (``--contenders``; each run is a fresh process tree watched by ``harness.run_watched``: wall time and the
peak summed RSS of the tree):

``alignn-ref``     ``alignn.train_alignn.train_for_folder`` (alignn 2026.8.11, its documented train-for-folder path)
                   run in its own interpreter (``--child alignn-ref CONFIG``). DGL is not installed, so the model is
                   alignn's pure-torch ``"alignn_atomwise_pure"``, which makes ``train_for_folder`` build
                   ``neighbor_strategy="pure_torch"`` graphs into its pure LMDB dataset. Input: a folder of POSCAR
                   files (pymatgen ``Structure.to(fmt="poscar")`` of the records the colab_kit store is built from)
                   and ``id_prop.csv`` written in train, val, test order, with ``keep_data_order=True`` and exact
                   ``n_train`` / ``n_val`` / ``n_test``: ``get_id_train_val_test`` then takes the first n_train rows,
                   the n_val before the last n_test, and the last n_test, i.e. colab_kit's split. The ids alignn
                   writes to ``ids_train_val_test.json`` are checked against it. The config is the values of
                   alignn's ``examples/sample_data/config_example.json`` (cgcnn atom features, 8 Å / 12 neighbours,
                   AdamW lr 1e-3, weight decay 1e-5, OneCycle, ``num_workers`` 0, LMDB) with: the pure model and
                   strategy, ``calculate_gradient`` and ``energy_mult_natoms`` off (a per-atom property, no
                   forces), the split, ``random_seed`` s, the sizes and batch below. The driver only wraps two of
                   alignn's functions to record times (``train_dgl``: when the graphs are built;
                   ``print_train_val_loss``: each epoch). Test MAE: from the ``prediction_results_test_set.csv`` it
                   writes. That file comes from ``train_dgl``'s ``best_model``, which is an alias of the live network
                   (``best_model = net``), i.e. the LAST epoch's weights; ``best_model.pt`` (its best validation
                   epoch) is evaluated on the same test LMDB by the driver and reported beside it.
``m3gnet-ref``,    matgl 4.1.2 (PyG), the path of its "Training a M3GNet Formation Energy Model with PyTorch
``tensornet-ref``  Lightning" example: ``get_element_list`` of the structures, ``Structure2Graph(element_types,
                   cutoff)``, ``MGLDataset(structures=..., converter=..., labels={"eform": ...})``, ``MGLDataLoader``,
                   ``ModelLightningModule(model=M3GNet(...) | TensorNet(...))`` (its defaults: Adam lr 1e-3,
                   CosineAnnealingLR over 1000 epochs, MSE), ``lightning.Trainer(max_epochs=E,
                   accelerator="cpu")``. The split is given as ``torch.utils.data.Subset`` index ranges of the one
                   dataset built in train, val, test order (where the example calls ``split_dataset``); a
                   ``ModelCheckpoint(monitor="val_MAE")`` keeps the best validation epoch, which ``trainer.test``
                   (``ckpt_path="best"``) scores; the driver also predicts each test id with those weights to check
                   ids and targets against the split.
``*-ck``           ``python -m colab_kit convert --graph-kind alignn|matgl --limit N`` (once per data set, reported
                   apart as prep), then per seed ``python -m colab_kit train --model alignn|m3gnet|tensornet --set
                   epochs=E --set patience=E --set seed=s`` + the sizes, and ``evaluate --json`` of ``best.pt``, as
                   ``bench_accuracy.run_ck`` does for CGCNN. Everything else is the Plan's.

Design decisions (and why):

* **Data**: the first ``--n`` (600) structures of mp_eform_cgcnn_3000 (the shipped matbench file; sorted by id, so
  an unbiased subset), 480 / 60 / 60 train / val / test, and few epochs: what lets 6 contenders x 3 seeds, the
  kills and the ceiling run in about 90 minutes on 2 CPU cores shared with other jobs at nice 10 (an ALIGNN epoch
  took 40 s there, M3GNet and TensorNet ~1.3 s per 32-graph step even when the cores were free).
  At this size and these epochs every model is far from converged: the MAE columns compare two pipelines on
  one short budget, not the models' accuracy.
* **Seeds vary the split and the initialisation** (as in bench_accuracy): colab_kit's ``splits-seed<s>.npz`` of
  the contender family's store is the split of every contender at seed s; each seeds its RNGs with s. Paired
  ratios per seed.
* **Same model, same sizes, same epochs, same batch**: ALIGNN 2 ALIGNN + 2 GCN layers, hidden 64 (the defaults of
  alignn's own ``ALIGNNAtomWisePureConfig``; the example config's 4 + 4 x 256 costs 2.8 s per 32-graph CPU step,
  7x more; colab_kit's default is that example size, so ``--set alignn_layers=2 --set gcn_layers=2 --set
  hidden=64``); M3GNet and TensorNet at matgl's default sizes (units 64; 3 and 2 blocks; ``--set units=64 --set
  nblocks=..``), cutoff 5 Å (matgl's default and colab_kit's), weighted-atom readout (matgl's default and
  colab_kit's; the notebook's set2set is not the default). ``--epochs`` (5) ALIGNN epochs, ``--matgl-epochs`` (3)
  M3GNet / TensorNet epochs, the same on both sides; 32 graphs per batch (colab_kit's CPU upper bound, which its
  atom budget may lower; alignn's example uses 2, its TrainingConfig 64). Optimiser, schedule, loss and target
  scaling are each code's own default (what its user gets: alignn AdamW + OneCycle + L1, matgl Adam + a cosine
  over 1000 epochs + MSE on unscaled targets, colab_kit its Plan); colab_kit's early stopping is off
  (``patience = epochs``). matgl's element list is the notebook's ``get_element_list(structures)``, colab_kit's
  matgl's ``DEFAULT_ELEMENTS`` (only the embedding table's unused rows differ).
* **Graph build time**: the reference's dataset construction inside its own run (alignn: reading the POSCARs and
  building the three LMDBs, until ``train_dgl`` is called; matgl: ``MGLDataset(...)`` incl. saving its cache);
  colab_kit's ``convert`` runs once per data set and is reported as prep. Wall = the whole per-seed command(s).
* **Disk**: the bytes each leaves as its graph cache (alignn's LMDB directories, counted by allocated blocks since
  LMDB's file is sparse; matgl's ``pyg_graph.pt`` etc.; colab_kit's store), not checkpoints or logs.
* **Kill and rerun** (``--stages kill``, seed 0; ``--kills`` picks the cases of ``KILLS``, by default one
  mid-training kill per pipeline; ``--quick`` runs them all at 120 structures): a pipeline is SIGKILLed
  mid-graph-build or mid-training (half an epoch after E/2 finished ones), then the same command is run again; the
  record says whether the rerun rebuilt the graphs, which epoch it started from and its test MAE. alignn is also
  run with its resume options (``read_existing``, ``resume_checkpoint`` + ``--restart_model_path``), matgl with
  Lightning's ``fit(ckpt_path="last")``; matgl's pipeline is killed once (M3GNet: TensorNet shares it); colab_kit's
  ``train`` once per model (its resume is tested elsewhere).
* **Memory ceiling** (``--stages ceiling``): each reference's dataset-construction stage (where it holds
  everything) on growing MP-like sets (``benchmarks/mp_like.py``), under the 12 GiB tree-RSS ceiling; the
  largest N under 12 GiB is EXTRAPOLATED from a least-squares line through the measured (N, peak RSS) points.
* **A concurrent checkout**: ``--colab-kit-src DIR`` runs colab_kit from another tree (``git archive HEAD``) with
  ``python -P`` + ``PYTHONPATH=DIR``. **Resumable**: every result is ``<out>/results/<stage>/<name>.json``;
  a rerun reuses it (``--redo`` measures again).

Usage::

    git archive HEAD | tar -x -C /tmp/ck_src
    nice -n 10 python benchmarks/bench_peers.py --colab-kit-src /tmp/ck_src --out /tmp/bench_peers
    python benchmarks/bench_peers.py --quick                                  # smoke run, a few minutes
    python benchmarks/bench_peers.py --report-only --out /tmp/bench_peers     # the tables of all results
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
from bench_accuracy import DATASETS, _commit, ck_cmd, ensure_store, mae_on, registered, split_ids, watched  # noqa: E402
from harness import GB, MB, REPO, BenchRun, loadavg, print_table, run_watched  # noqa: E402  # noqa: E402

DS = "mp_eform_cgcnn_3000"
CONTENDERS = {
    "alignn-ref": "ALIGNN, alignn's train_for_folder",
    "alignn-ck": "ALIGNN, colab_kit",
    "m3gnet-ref": "M3GNet, matgl's MGLDataset + Lightning",
    "m3gnet-ck": "M3GNet, colab_kit",
    "tensornet-ref": "TensorNet, matgl's MGLDataset + Lightning",
    "tensornet-ck": "TensorNet, colab_kit",
}
REFERENCE_OF = {"alignn-ck": "alignn-ref", "m3gnet-ck": "m3gnet-ref", "tensornet-ck": "tensornet-ref"}
STORE_KIND = {"alignn": "alignn", "m3gnet": "matgl", "tensornet": "matgl"}
#: the sizes both sides train: reference name -> (value, colab_kit option)
SIZES: dict[str, dict[str, tuple[Any, str]]] = {
    "alignn": {"alignn_layers": (2, "alignn_layers"), "gcn_layers": (2, "gcn_layers"), "hidden_features": (64, "hidden")},
    "m3gnet": {"units": (64, "units"), "nblocks": (3, "nblocks")},
    "tensornet": {"units": (64, "units"), "nblocks": (2, "nblocks")},
}
BATCH = 32
MATGL_CUTOFF = 5.0
#: alignn's examples/sample_data/config_example.json values (those that differ from TrainingConfig's defaults or
#: matter here), then what this benchmark changes (below the blank line)
ALIGNN_CONFIG: dict[str, Any] = {
    "dataset": "user_data", "target": "target", "atom_features": "cgcnn", "id_tag": "jid", "dtype": "float32",
    "weight_decay": 1e-05, "learning_rate": 0.001, "criterion": "mse", "optimizer": "adamw", "scheduler": "onecycle",
    "num_workers": 0, "cutoff": 8.0, "cutoff_extra": 3.0, "max_neighbors": 12, "use_canonize": True,
    "write_checkpoint": True, "write_predictions": True, "use_lmdb": True, "progress": False,

    "neighbor_strategy": "pure_torch", "keep_data_order": True, "train_ratio": None, "val_ratio": None,
    "test_ratio": None, "batch_size": BATCH,
}
ALIGNN_MODEL: dict[str, Any] = {"name": "alignn_atomwise_pure", "atom_input_features": 92, "output_features": 1,
                                "calculate_gradient": False, "energy_mult_natoms": False, "penalty_factor": 0.1,
                                "graphwise_weight": 1.0,
                                "atomwise_weight": 0.0, "gradwise_weight": 0.0, "stresswise_weight": 0.0}
CEILING = 12 * GB
WATCH = 64 * GB  # accuracy/kill stages: the watcher only records the peak


# ---------------------------------------------------------------- helpers

def family(contender: str) -> str:
    return contender.split("-")[0]


def epochs_of(ctx: dict[str, Any], contender: str) -> int:
    return ctx["epochs"] if family(contender) == "alignn" else ctx["matgl_epochs"]


def disk_bytes(path: Path) -> int:
    """Allocated bytes under ``path`` (st_blocks: LMDB's data.mdb is a sparse file of map_size)."""
    if not path.exists():
        return 0
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_blocks * 512 for p in files)


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def source_structures(source: Path, wanted: set[str] | None = None, first: int | None = None) -> dict[str, Any]:
    """``{id: (Structure, target)}`` of the source's records (those in ``wanted``, or the first ``first``)."""
    from colab_kit.sources import open_source, parse_structure

    out: dict[str, Any] = {}
    for it in open_source(source):
        if wanted is None or it.id in wanted:
            out[it.id] = (parse_structure(it), it.target)
        if first is not None and len(out) >= first:
            break
    return out


def write_poscars(structures: dict[str, Any], root: Path) -> Path:
    """One POSCAR per structure (``<id>.vasp``) under ``root``, written once."""
    if (root / "complete").exists():
        return root
    root.mkdir(parents=True, exist_ok=True)
    for i, (s, _) in structures.items():
        if not re.fullmatch(r"[\w.+-]+", i):
            raise SystemExit(f"id {i!r} cannot be a file name")
        s.to(filename=str(root / f"{i}.vasp"), fmt="poscar")
    (root / "complete").write_text("")
    return root


def alignn_folder(poscars: Path, order: list[str], targets: dict[str, float], root: Path) -> Path:
    """train_for_folder's input: symlinks to the POSCARs + id_prop.csv in ``order`` (train, val, test)."""
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    for i in order:
        os.symlink(poscars / f"{i}.vasp", root / f"{i}.vasp")
    with open(root / "id_prop.csv", "w", newline="") as f:
        csv.writer(f).writerows([[f"{i}.vasp", repr(float(targets[i]))] for i in order])
    return root


def alignn_config(seed: int, epochs: int, n: dict[str, int], out_dir: Path, cache: Path,
                  **extra: Any) -> dict[str, Any]:
    model = {**ALIGNN_MODEL, **{k: v for k, (v, _) in SIZES["alignn"].items()}}
    return {**ALIGNN_CONFIG, "random_seed": seed, "epochs": epochs, "n_train": n["train"], "n_val": n["val"],
            "n_test": n["test"], "output_dir": str(out_dir), "filename": str(cache / "A"), "model": model, **extra}


# ---------------------------------------------------------------- children (the reference pipelines)

def progress(cfg: dict[str, Any], **state: Any) -> None:
    write_json(Path(cfg["progress"]), {"t": time.time(), **state})


def child_alignn(cfg: dict[str, Any]) -> None:
    """alignn's train_for_folder on the folder of ``cfg`` (its own interpreter: ``--child alignn-ref CONFIG``)."""
    import alignn.train as at
    import alignn.train_alignn as ta

    t0 = time.perf_counter()
    marks: dict[str, float] = {}
    epochs: list[dict[str, float]] = []
    real_print, real_train = at.print_train_val_loss, ta.train_dgl

    def print_hook(e: int, *a: Any, **kw: Any) -> Any:  # (running_loss x6, val_loss x6, train_s, val_s)
        epochs.append({"epoch": e + 1, "train_loss": float(a[0]), "val_loss": float(a[6]), "train_s": float(a[12]),
                       "val_s": float(a[13]), "seconds": float(a[12]) + float(a[13])})
        progress(cfg, stage="train", epochs_done=len(epochs), last_epoch=e + 1)
        return real_print(e, *a, **kw)

    def train_hook(config: Any, **kw: Any) -> Any:
        marks["graphs_built_s"] = time.perf_counter() - t0
        progress(cfg, stage="train", epochs_done=0)
        if cfg.get("build_only"):
            return None
        return real_train(config, **kw)

    at.print_train_val_loss, ta.train_dgl = print_hook, train_hook
    progress(cfg, stage="graphs")
    ta.train_for_folder(root_dir=cfg["root"], config_name=cfg["config"], file_format="poscar",
                        output_dir=cfg["output_dir"], restart_model_path=cfg.get("restart_model_path"))
    res: dict[str, Any] = {"graph_s": marks.get("graphs_built_s"), "history": epochs, "run_s": time.perf_counter() - t0}
    if not cfg.get("build_only"):
        out = Path(cfg["output_dir"])
        with open(out / "prediction_results_test_set.csv") as f:
            rows = list(csv.reader(f))[1:]
        res["test"] = {r[0].strip().removesuffix(".vasp"): [float(r[1]), float(r[2])] for r in rows}
        ids = json.loads((out / "ids_train_val_test.json").read_text())
        res["ids_used"] = {k: [i.removesuffix(".vasp") for i in ids[f"id_{k}"]] for k in ("train", "val", "test")}
        res["test_best"] = alignn_best_predictions(out, cfg["cache"])
        res["best_epoch"] = 1 + int(np.argmin([h["val_loss"] for h in epochs])) if epochs else None
    write_json(Path(cfg["result"]), res)


def alignn_best_predictions(out: Path, cache: str) -> dict[str, list[float]]:
    """``best_model.pt`` (alignn's best validation epoch) on the test LMDB alignn built: {id: [target, pred]}."""
    import torch
    from alignn.models.alignn_atomwise_pure import ALIGNNAtomWisePure, ALIGNNAtomWisePureConfig
    from alignn.pure_lmdb_dataset import PureTorchLMDBDataset

    conf = json.loads((out / "config.json").read_text())
    model = ALIGNNAtomWisePure(ALIGNNAtomWisePureConfig(**conf["model"]))
    model.load_state_dict(torch.load(out / "best_model.pt", map_location="cpu"))
    model.eval()
    ids = json.loads((out / "ids_train_val_test.json").read_text())["id_test"]
    ds = PureTorchLMDBDataset(lmdb_path=str(Path(cache) / "Atest_data"), line_graph=True)
    res = {}
    with torch.no_grad():
        for k, i in enumerate(ids):
            g, lg, lat, y = PureTorchLMDBDataset.collate_line_graph([ds[k]])
            res[i.removesuffix(".vasp")] = [float(y.reshape(-1)[0]), float(model([g, lg, lat])["out"].reshape(-1)[0])]
    ds.close()
    return res


def child_matgl(cfg: dict[str, Any]) -> None:
    """matgl's MGLDataset + ModelLightningModule + lightning.Trainer (``--child matgl-ref CONFIG``)."""
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger
    from matgl.ext.pymatgen import Structure2Graph, get_element_list
    from matgl.graph.data import MGLDataLoader, MGLDataset
    from matgl.models import M3GNet, TensorNet
    from matgl.utils.training import ModelLightningModule
    from torch.utils.data import Subset

    t0 = time.perf_counter()
    split = read_json(Path(cfg["split"]))
    order = split["train"] + split["val"] + split["test"]
    progress(cfg, stage="parse")
    data = source_structures(Path(cfg["source"]), wanted=set(order), first=cfg.get("first"))
    structures = [data[i][0] for i in order]
    targets = [float(split["target"][i]) for i in order]
    parse_s = time.perf_counter() - t0
    L.seed_everything(cfg["seed"], workers=True)
    progress(cfg, stage="graphs")
    tg = time.perf_counter()
    cache = Path(cfg["cache"])
    had_cache = (cache / "fingerprint.json").exists()
    elements = get_element_list(structures)
    converter = Structure2Graph(element_types=elements, cutoff=cfg["cutoff"])
    dataset = MGLDataset(structures=structures, converter=converter, labels={"eform": targets}, root=str(cache))
    graph_s = time.perf_counter() - tg
    res: dict[str, Any] = {"parse_s": parse_s, "graph_s": graph_s, "had_cache": had_cache, "history": []}
    progress(cfg, stage="train", epochs_done=0)
    if cfg.get("build_only"):
        res["run_s"] = time.perf_counter() - t0
        write_json(Path(cfg["result"]), res)
        return
    n_tr, n_va = len(split["train"]), len(split["val"])
    train, val, test = (Subset(dataset, range(0, n_tr)), Subset(dataset, range(n_tr, n_tr + n_va)),
                        Subset(dataset, range(n_tr + n_va, len(order))))
    train_loader, val_loader, test_loader = MGLDataLoader(train_data=train, val_data=val, test_data=test,
                                                          batch_size=cfg["batch"], num_workers=0)
    sizes = cfg["sizes"]
    if cfg["model"] == "m3gnet":
        model = M3GNet(element_types=elements, is_intensive=True, cutoff=cfg["cutoff"], **sizes)
    else:
        model = TensorNet(element_types=elements, is_intensive=True, cutoff=cfg["cutoff"], **sizes)
    lit = ModelLightningModule(model=model, include_line_graph=False)
    history: list[dict[str, float]] = res["history"]

    class Times(Callback):  # epoch wall times and progress for the kill stage
        def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
            self.t = time.perf_counter()

        def on_validation_epoch_end(self, trainer: Any, module: Any) -> None:
            if trainer.sanity_checking or not hasattr(self, "t"):
                return
            m = trainer.callback_metrics
            history.append({"epoch": trainer.current_epoch + 1, "seconds": time.perf_counter() - self.t,
                            "val_mae": float(m.get("val_MAE", float("nan")))})
            progress(cfg, stage="train", epochs_done=len(history), last_epoch=trainer.current_epoch + 1)

    ckpt = ModelCheckpoint(dirpath=cfg["ckpt_dir"], monitor="val_MAE", mode="min", save_last=True)
    trainer = L.Trainer(max_epochs=cfg["epochs"], accelerator="cpu", logger=CSVLogger(cfg["log_dir"]),
                        callbacks=[ckpt, Times()], enable_progress_bar=False, num_sanity_val_steps=0)
    trainer.fit(model=lit, train_dataloaders=train_loader, val_dataloaders=val_loader,
                ckpt_path=cfg.get("fit_ckpt_path"))
    scores = trainer.test(lit, dataloaders=test_loader, ckpt_path="best", verbose=False)
    lit.eval()
    preds: list[float] = []
    with torch.no_grad():
        for g, lat, state_attr, _labels in test_loader:
            p = lit(g=g, lat=lat, state_attr=state_attr)
            preds.extend((p * lit.data_std + lit.data_mean).reshape(-1).tolist())
    res.update({"test": {i: [float(split["target"][i]), p] for i, p in zip(split["test"], preds)},
                "trainer_test_mae": float(scores[0]["test_MAE"]), "best_path": ckpt.best_model_path,
                "best_epoch": 1 + int(np.argmin([h["val_mae"] for h in history])) if history else None,
                "steps_per_epoch": len(train_loader), "params": int(sum(p.numel() for p in model.parameters())),
                "run_s": time.perf_counter() - t0})
    write_json(Path(cfg["result"]), res)


# ---------------------------------------------------------------- contenders

def ref_config(ctx: dict[str, Any], contender: str, seed: int, split: dict[str, Any], run: Path,
               **extra: Any) -> tuple[dict[str, Any], Path]:
    """The child's config (written to ``run/child.json``) for a reference contender."""
    fam = family(contender)
    cfg: dict[str, Any] = {"seed": seed, "epochs": epochs_of(ctx, contender), "progress": str(run / "progress.json"),
                           "result": str(run / "child_result.json"), "src": str(ctx["src"])}
    if fam == "alignn":
        n = {k: len(split[k]) for k in ("train", "val", "test")}
        folder = alignn_folder(ctx["poscars"], split["train"] + split["val"] + split["test"], split["target"],
                               run / "folder")
        conf = alignn_config(seed, epochs_of(ctx, contender), n, run / "out", run / "cache", **extra.pop("alignn", {}))
        write_json(run / "alignn_config.json", conf)
        cfg.update({"root": str(folder), "config": str(run / "alignn_config.json"), "output_dir": str(run / "out"),
                    "cache": str(run / "cache")})
        (run / "cache").mkdir(exist_ok=True)
    else:
        write_json(run / "split.json", split)
        cfg.update({"model": fam, "source": str(DATASETS[DS][0]), "split": str(run / "split.json"),
                    "cutoff": MATGL_CUTOFF, "batch": BATCH, "sizes": {k: v for k, (v, _) in SIZES[fam].items()},
                    "cache": str(run / "cache"), "ckpt_dir": str(run / "ckpt"), "log_dir": str(run / "logs")})
    cfg.update(extra)
    path = run / "child.json"
    write_json(path, cfg)
    return cfg, path


def child_cmd(contender: str, cfg_path: Path) -> list[str]:
    kind = "alignn-ref" if family(contender) == "alignn" else "matgl-ref"
    return [sys.executable, str(Path(__file__).resolve()), "--child", kind, str(cfg_path)]


def run_ref(ctx: dict[str, Any], contender: str, seed: int, split: dict[str, Any], run: Path) -> dict[str, Any]:
    cfg, path = ref_config(ctx, contender, seed, split, run)
    rec = watched(child_cmd(contender, path), "child", run, ctx["src"])
    res = read_json(Path(cfg["result"]))
    out: dict[str, Any] = {"proc": rec, "disk_mb": disk_bytes(Path(cfg["cache"])) / MB, **res}
    out["test_mae"] = mae_on(out.pop("test"), split)
    if family(contender) == "alignn":
        out["test_mae_best_model"] = mae_on(out.pop("test_best"), split)
        used = out.pop("ids_used")
        if any(used[k] != split[k] for k in ("train", "val", "test")):
            raise RuntimeError("alignn's ids_train_val_test.json differs from colab_kit's split")
        out["split_checked"] = "ids_train_val_test.json == colab_kit's split (train, val, test, in order)"
        out["steps_per_epoch"] = len(split["train"]) // BATCH  # its train loader drops the last partial batch
    return out


def ck_sets(ctx: dict[str, Any], contender: str, seed: int) -> list[str]:
    e = epochs_of(ctx, contender)
    sets = [f"epochs={e}", f"patience={e}", f"seed={seed}"]
    sets += [f"{opt}={v}" for v, opt in SIZES[family(contender)].values()]
    return [a for s in sets for a in ("--set", s)]


def run_ck(ctx: dict[str, Any], contender: str, seed: int, split: dict[str, Any], run: Path) -> dict[str, Any]:
    store, model = ctx["stores"][family(contender)], family(contender)
    train = ck_cmd("train", "--store", str(store), "--model", model, "--out", str(run / "train"), "--fresh",
                   *ck_sets(ctx, contender, seed))
    rec_t = watched(train, "train", run, ctx["src"])
    return {**ck_evaluate(ctx, contender, seed, split, run, store), "train": rec_t} | ck_summary(rec_t, run)


def ck_evaluate(ctx: dict[str, Any], contender: str, seed: int, split: dict[str, Any], run: Path,
                store: Path) -> dict[str, Any]:
    sizes = [a for v, opt in SIZES[family(contender)].values() for a in ("--set", f"{opt}={v}")]
    ev = ck_cmd("evaluate", "--store", str(store), "--weights", str(run / "train" / "best.pt"), "--model",
                family(contender), "--set", f"seed={seed}", *sizes, "--json")
    rec_e = watched(ev, "evaluate", run, ctx["src"])
    scores = json.loads([ln for ln in Path(rec_e["stdout"]).read_text().splitlines() if ln.startswith("{")][-1])
    if scores["n"] != len(split["test"]):
        raise RuntimeError(f"colab_kit evaluated {scores['n']} test graphs, the split has {len(split['test'])}")
    return {"test_mae": scores["mae"], "evaluate": rec_e}


def ck_summary(rec_t: dict[str, Any], run: Path) -> dict[str, Any]:
    import torch

    history = [json.loads(ln) for ln in (run / "train" / "metrics.jsonl").read_text().splitlines()]
    state = torch.load(run / "train" / "checkpoints" / "latest.pt", map_location="cpu", weights_only=True)
    return {"history": history, "best_epoch": min(history, key=lambda h: h["val_mae"])["epoch"],
            "steps_per_epoch": int(state["step"]) / max(len(history), 1), "budget": state.get("budget")}


def run_one(ctx: dict[str, Any], contender: str, seed: int) -> dict[str, Any]:
    path = ctx["out"] / "results" / ctx["tag"] / f"{contender}-e{epochs_of(ctx, contender)}-seed{seed}.json"
    if path.exists() and not ctx["redo"]:
        print(f"[{ctx['tag']}] {contender} seed {seed}: reusing {path}", flush=True)
        return json.loads(path.read_text())
    split = split_ids(ctx["stores"][family(contender)], seed)
    run = ctx["out"] / "runs" / ctx["tag"] / f"{contender}-seed{seed}"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    print(f"[{ctx['tag']}] {contender} seed {seed}: {len(split['train'])}/{len(split['val'])}/{len(split['test'])}, "
          f"{epochs_of(ctx, contender)} epochs ...", flush=True)
    la0 = loadavg()
    if contender.endswith("-ref"):
        res = run_ref(ctx, contender, seed, split, run)
        wall, rss = res["proc"]["wall_s"], res["proc"]["peak_tree_rss_mb"]
    else:
        res = run_ck(ctx, contender, seed, split, run)
        wall = res["train"]["wall_s"] + res["evaluate"]["wall_s"]
        rss = max(res["train"]["peak_tree_rss_mb"], res["evaluate"]["peak_tree_rss_mb"])
        res["disk_mb"] = ctx["store_mb"][family(contender)]
    rec = {"tag": ctx["tag"], "contender": contender, "seed": seed, "epochs": epochs_of(ctx, contender),
           "n": {k: len(split[k]) for k in ("train", "val", "test")}, "test_sha": split["test_sha"],
           "mean_predictor_mae": split["mean_predictor_mae"], "wall_s": wall, "peak_tree_rss_mb": rss,
           "loadavg_before": la0, "loadavg_after": loadavg(), "finished": time.strftime("%Y-%m-%d %H:%M:%S"), **res}
    write_json(path, rec)
    print(f"[{ctx['tag']}] {contender} seed {seed}: test MAE {rec['test_mae']:.4g} eV/atom (mean predictor "
          f"{rec['mean_predictor_mae']:.4g}), {wall:.0f} s, peak {rss:.0f} MB", flush=True)
    return rec


# ---------------------------------------------------------------- kill and rerun

def kill_when(check: Any) -> Any:
    """An ``on_tick`` for run_watched: True (SIGKILL the tree) once ``check()`` says so; remembers the moment."""
    state: dict[str, Any] = {}

    def tick(t: float) -> bool:
        if "at" not in state and check(t):
            state["at"] = t
            return True
        return False

    tick.state = state  # type: ignore[attr-defined]
    return tick


def planned_kill(ctx: dict[str, Any], contender: str, when: str, run: Path) -> Any:
    """Kill mid-graph-build (half-way through the reference's measured build) or mid-training (half an epoch
    after E/2 epochs finished), timed from the seed-0 accuracy run of the same contender."""
    e = epochs_of(ctx, contender)
    ref = read_json(ctx["out"] / "results" / ctx["tag"] / f"{contender}-e{e}-seed0.json") or {}
    epoch_s = float(np.median([h["seconds"] for h in ref.get("history", []) if "seconds" in h] or [20.0]))
    half = max(1, e // 2)
    if contender.endswith("-ck"):
        metrics = run / "train" / "metrics.jsonl"

        def done() -> int:
            return len(metrics.read_text().splitlines()) if metrics.exists() else 0
    else:
        prog = run / "progress.json"

        def done() -> int:
            p = read_json(prog) or {}
            return int(p.get("epochs_done", 0)) if p.get("stage") == "train" else -1
    seen: dict[str, float] = {}
    if when == "graphs":
        graph_s = float(ref.get("graph_s") or 30.0)

        def check(t: float) -> bool:
            p = read_json(run / "progress.json") or {}
            if p.get("stage") == "graphs":
                seen.setdefault("graphs", t)
                return t - seen["graphs"] > 0.5 * graph_s
            return p.get("stage") == "train"  # too late: the build finished between two ticks; kill now
    else:
        def check(t: float) -> bool:
            if done() >= half:
                seen.setdefault("half", t)
                return t - seen["half"] > 0.5 * epoch_s
            return False
    return kill_when(check)


def kill_case(ctx: dict[str, Any], name: str, contender: str, when: str, variant: str = "") -> dict[str, Any]:
    """SIGKILL one run of ``contender`` at ``when`` (``graphs`` / ``train``), rerun the same command, record."""
    path = ctx["out"] / "results" / "kill" / f"{name}.json"
    if path.exists() and not ctx["redo"]:
        print(f"[kill] {name}: reusing {path}", flush=True)
        return json.loads(path.read_text())
    seed, fam = 0, family(contender)
    split = split_ids(ctx["stores"][fam], seed)
    run = ctx["out"] / "runs" / "kill" / name
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    env = {"PYTHONPATH": str(ctx["src"]), "PYTHONUNBUFFERED": "1"}
    print(f"[kill] {name}: {contender}, SIGKILL mid-{when}, then the same command again ...", flush=True)
    if contender.endswith("-ck"):
        cmd = ck_cmd("train", "--store", str(ctx["stores"][fam]), "--model", fam, "--out", str(run / "train"),
                     *ck_sets(ctx, contender, seed))
        first_cmd = second_cmd = cmd
    else:
        extra: dict[str, Any] = {}
        if variant == "alignn-resume":
            extra = {"alignn": {"read_existing": True, "resume_checkpoint": True}}
        cfg, cpath = ref_config(ctx, contender, seed, split, run, **extra)
        first_cmd = second_cmd = child_cmd(contender, cpath)
        if variant == "alignn-resume":  # its documented restart: --restart_model_path <output_dir>/current_model.pt
            write_json(run / "child2.json", {**cfg, "restart_model_path": str(run / "out" / "current_model.pt")})
            second_cmd = child_cmd(contender, run / "child2.json")
        elif variant == "lightning-last":
            write_json(run / "child2.json", {**cfg, "fit_ckpt_path": "last"})
            second_cmd = child_cmd(contender, run / "child2.json")
    tick = planned_kill(ctx, contender, when, run)
    first = run_watched(first_cmd, ceiling=WATCH, name="first", logdir=run, env=env, on_tick=tick)
    first.pop("timeline_s_rss_mb", None)
    at_kill = {"progress": read_json(run / "progress.json"),
               "epochs_logged": len((run / "train" / "metrics.jsonl").read_text().splitlines())
               if (run / "train" / "metrics.jsonl").exists() else None,
               "cache_mb": disk_bytes(run / "cache") / MB, "cache_files": sorted(
                   str(p.relative_to(run)) for p in (run / "cache").glob("*")) if (run / "cache").exists() else []}
    second = run_watched(second_cmd, ceiling=WATCH, name="second", logdir=run, env=env)
    second.pop("timeline_s_rss_mb", None)
    rec: dict[str, Any] = {"name": name, "contender": contender, "variant": variant or "same command", "when": when,
                           "killed_at_s": tick.state.get("at"), "first": first, "at_kill": at_kill, "second": second,
                           "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    if second["returncode"] != 0:
        rec["second_error"] = Path(second["stderr"]).read_text(errors="replace")[-2000:]
    elif contender.endswith("-ck"):
        log = (Path(second["stdout"]).read_text(errors="replace") + Path(second["stderr"]).read_text(errors="replace"))
        rec["resume_lines"] = [ln for ln in log.splitlines() if re.search(r"resum", ln, re.I)][:5]
        rec.update(ck_summary(second, run))
        rec["test_mae"] = ck_evaluate(ctx, contender, seed, split, run, ctx["stores"][fam])["test_mae"]
        rec["epochs_after_rerun"] = [h["epoch"] for h in rec["history"]]
    else:
        res = read_json(run / "child_result.json") or {}
        out = Path(second["stdout"]).read_text(errors="replace")
        rec["rerun_graph_s"] = res.get("graph_s")
        rec["rerun_epochs"] = [h["epoch"] for h in res.get("history", [])]
        rec["rerun_rebuilt_graphs"] = ("before write loop" in out) if fam == "alignn" else not res.get("had_cache")
        rec["resume_lines"] = [ln.strip() for ln in out.splitlines()
                               if re.match(r"\s*(Resuming|Restarting|Reading dataset|\[WARN\])", ln)][:6]
        if "test" in res:
            rec["test_mae"] = mae_on(res["test"], split)
    write_json(path, rec)
    print(f"[kill] {name}: killed at {rec['killed_at_s']}, rerun {second['wall_s']:.0f} s, "
          f"epochs {rec.get('rerun_epochs') or rec.get('epochs_after_rerun')}, MAE {rec.get('test_mae')}", flush=True)
    return rec


KILLS = [  # (name, contender, when, variant), the most telling first
    ("alignn-ref-train", "alignn-ref", "train", ""),
    ("matgl-ref-train", "m3gnet-ref", "train", ""),
    ("alignn-ck-train", "alignn-ck", "train", ""),
    ("m3gnet-ck-train", "m3gnet-ck", "train", ""),
    ("alignn-ref-train-resume-options", "alignn-ref", "train", "alignn-resume"),
    ("matgl-ref-train-ckpt-last", "m3gnet-ref", "train", "lightning-last"),
    ("alignn-ref-graphs", "alignn-ref", "graphs", ""),
    ("matgl-ref-graphs", "m3gnet-ref", "graphs", ""),
    ("tensornet-ck-train", "tensornet-ck", "train", ""),
]


# ---------------------------------------------------------------- memory ceiling

def ceiling_point(ctx: dict[str, Any], pipeline: str, n: int) -> dict[str, Any]:
    """Peak tree RSS of one reference's dataset construction on the first ``n`` MP-like structures."""
    path = ctx["out"] / "results" / "ceiling" / f"{pipeline}-n{n}.json"
    if path.exists() and not ctx["redo"]:
        return json.loads(path.read_text())
    run = ctx["out"] / "runs" / "ceiling" / f"{pipeline}-n{n}"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    if pipeline.startswith("ck-"):
        return ceiling_point_ck(ctx, pipeline, n, run, path)
    t = time.perf_counter()
    data = source_structures(ctx["mp_like"], first=n)
    ids = list(data)
    n_val = n_test = max(1, round(0.1 * len(ids)))
    split = {"train": ids[:-2 * n_val], "val": ids[-2 * n_val:-n_val], "test": ids[-n_val:],
             "target": {i: float(y) for i, (_, y) in data.items()}}
    cfg: dict[str, Any] = {"seed": 0, "epochs": 1, "build_only": True, "progress": str(run / "progress.json"),
                           "result": str(run / "child_result.json"), "src": str(ctx["src"])}
    if pipeline == "alignn":
        poscars = write_poscars(data, ctx["out"] / "refdata" / f"mp_like-n{n}-poscar")
        folder = alignn_folder(poscars, ids, split["target"], run / "folder")
        conf = alignn_config(0, 1, {"train": len(ids) - 2 * n_val, "val": n_val, "test": n_test}, run / "out",
                             run / "cache")
        write_json(run / "alignn_config.json", conf)
        (run / "cache").mkdir()
        cfg.update({"root": str(folder), "config": str(run / "alignn_config.json"), "output_dir": str(run / "out"),
                    "cache": str(run / "cache")})
        kind = "alignn-ref"
    else:
        write_json(run / "split.json", split)
        cfg.update({"model": "m3gnet", "source": str(ctx["mp_like"]), "split": str(run / "split.json"),
                    "cutoff": MATGL_CUTOFF, "cache": str(run / "cache"), "batch": BATCH, "sizes": {},
                    "first": len(ids)})
        kind = "matgl-ref"
    del data
    prep_s = time.perf_counter() - t
    write_json(run / "child.json", cfg)
    print(f"[ceiling] {pipeline} n={n}: dataset construction under {CEILING / GB:.0f} GiB ...", flush=True)
    rec = run_watched([sys.executable, str(Path(__file__).resolve()), "--child", kind, str(run / "child.json")],
                      ceiling=CEILING, name="child", logdir=run, env={"PYTHONPATH": str(ctx["src"])})
    timeline = rec.pop("timeline_s_rss_mb", [])
    res = read_json(run / "child_result.json") or {}
    out = {"pipeline": pipeline, "n": n, "prep_s": prep_s, "proc": rec, "graph_s": res.get("graph_s"),
           "peak_tree_rss_mb": rec["peak_tree_rss_mb"], "exceeded_ceiling": rec["exceeded_ceiling"],
           "returncode": rec["returncode"], "disk_mb": disk_bytes(run / "cache") / MB,
           "rss_timeline_every_10": timeline[::10], "loadavg": loadavg()}
    write_json(path, out)
    shutil.rmtree(run / "cache", ignore_errors=True)  # GBs at the larger sizes; the size is recorded
    print(f"[ceiling] {pipeline} n={n}: peak {out['peak_tree_rss_mb']:.0f} MB, {rec['wall_s']:.0f} s, "
          f"cache {out['disk_mb']:.0f} MB{' EXCEEDED' if out['exceeded_ceiling'] else ''}", flush=True)
    return out


def ceiling_point_ck(ctx: dict[str, Any], pipeline: str, n: int, run: Path, path: Path) -> dict[str, Any]:
    """colab_kit's ``convert --graph-kind K --limit n`` of the same MP-like file, beside the references' points."""
    kind = pipeline.removeprefix("ck-")
    cmd = ck_cmd("convert", str(ctx["mp_like"]), "--graph-kind", kind, "--limit", str(n), "--out", str(run / "store"))
    print(f"[ceiling] {pipeline} n={n}: colab_kit convert under {CEILING / GB:.0f} GiB ...", flush=True)
    rec = run_watched(cmd, ceiling=CEILING, name="convert", logdir=run, env={"PYTHONPATH": str(ctx["src"])})
    timeline = rec.pop("timeline_s_rss_mb", [])
    out = {"pipeline": pipeline, "n": n, "proc": rec, "graph_s": rec["wall_s"], "peak_tree_rss_mb": rec["peak_tree_rss_mb"],
           "peak_tree_pss_mb": rec["peak_tree_pss_mb"], "exceeded_ceiling": rec["exceeded_ceiling"],
           "returncode": rec["returncode"], "disk_mb": disk_bytes(run / "store") / MB,
           "rss_timeline_every_10": timeline[::10], "loadavg": loadavg()}
    write_json(path, out)
    shutil.rmtree(run / "store", ignore_errors=True)
    print(f"[ceiling] {pipeline} n={n}: peak {out['peak_tree_rss_mb']:.0f} MB, {rec['wall_s']:.0f} s, "
          f"store {out['disk_mb']:.0f} MB", flush=True)
    return out


def ceiling_fit(points: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Least-squares line peak_RSS = a + b N through the measured points; where it crosses 12 GiB (EXTRAPOLATED)."""
    ok = [p for p in points if p["returncode"] == 0]
    if len(ok) < 2:
        return None
    n = np.array([p["n"] for p in ok], float)
    r = np.array([p["peak_tree_rss_mb"] for p in ok], float)
    b, a = np.polyfit(n, r, 1)
    return {"a_mb": float(a), "mb_per_structure": float(b), "n_at_12gib_extrapolated":
            float((CEILING / MB - a) / b) if b > 0 else None, "measured_n": [int(x) for x in n]}


# ---------------------------------------------------------------- report

def report(rows: list[dict[str, Any]], prep: dict[str, dict[str, Any]], kills: list[dict[str, Any]],
           ceiling: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    summary: dict[str, Any] = {"accuracy": [], "ceiling": {}}
    by: dict[str, dict[int, dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(r["contender"], {})[r["seed"]] = r
    if rows:
        first = rows[0]
        mp = {r["seed"]: r["mean_predictor_mae"] for r in rows if r["contender"].startswith("alignn")} or \
             {r["seed"]: r["mean_predictor_mae"] for r in rows}
        lines = [["mean predictor (train mean)", len(mp), "—", f"{np.mean(list(mp.values())):.4g}",
                  " ".join(f"{mp[s]:.3g}" for s in sorted(mp)), "—", "—", "—", "—", "—", "—", "—", "—", "—"]]
        for c in [c for c in CONTENDERS if c in by]:
            seeds = by[c]
            ss = sorted(seeds)
            maes = [seeds[s]["test_mae"] for s in ss]
            ref = by.get(REFERENCE_OF.get(c, ""), {})
            for s in ss:
                if s in ref and ref[s]["test_sha"] != seeds[s]["test_sha"]:
                    raise SystemExit(f"{c} and its reference tested different ids at seed {s}")
            paired = [seeds[s]["test_mae"] / ref[s]["test_mae"] for s in ss if s in ref]
            walls = [seeds[s]["wall_s"] for s in ss]
            prep_s = prep.get(family(c), {}).get("wall_s") if c.endswith("-ck") else None
            wr = [seeds[s]["wall_s"] / ref[s]["wall_s"] for s in ss if s in ref]
            wall_ratio = float(np.mean(wr)) if wr else None
            e2e = [(seeds[s]["wall_s"] + (prep_s or 0.0)) / ref[s]["wall_s"] for s in ss if s in ref]
            rss = max(seeds[s]["peak_tree_rss_mb"] for s in ss)
            rss_ratio = rss / max(ref[s]["peak_tree_rss_mb"] for s in ref) if ref else None
            eps = [h["seconds"] for s in ss for h in seeds[s].get("history", []) if "seconds" in h]
            graph = [seeds[s].get("graph_s") for s in ss if seeds[s].get("graph_s") is not None]
            best = [seeds[s].get("test_mae_best_model") for s in ss if seeds[s].get("test_mae_best_model")]
            spe = seeds[ss[0]].get("steps_per_epoch")
            row = {"contender": c, "seeds": ss, "maes": maes, "mae_mean": float(np.mean(maes)),
                   "mae_std": float(np.std(maes, ddof=1)) if len(maes) > 1 else 0.0,
                   "mae_ratio_paired": float(np.mean(paired)) if paired else None, "wall_mean_s": float(np.mean(walls)),
                   "wall_ratio": wall_ratio, "peak_rss_mb": rss, "rss_ratio": rss_ratio,
                   "epoch_s_median": float(np.median(eps)) if eps else None,
                   "graph_s_mean": float(np.mean(graph)) if graph else None,
                   "prep_s": prep_s, "end_to_end_ratio": float(np.mean(e2e)) if e2e else None,
                   "epoch_s_min": float(np.min(eps)) if eps else None,
                   "disk_mb": seeds[ss[0]].get("disk_mb"), "steps_per_epoch": spe,
                   "best_model_maes": best}
            summary["accuracy"].append(row)
            steps_s = (spe / row["epoch_s_min"]) if spe and row["epoch_s_min"] else None
            lines.append([
                CONTENDERS[c], len(maes), seeds[ss[0]]["epochs"], f"{row['mae_mean']:.4g} ± {row['mae_std']:.2g}",
                " ".join(f"{x:.3g}" for x in maes), "—" if not paired else f"{row['mae_ratio_paired']:.2f}",
                "—" if not best else " ".join(f"{x:.3g}" for x in best), row["wall_mean_s"],
                "—" if wall_ratio is None else f"{wall_ratio:.2f} / {row['end_to_end_ratio']:.2f}",
                "—" if row["graph_s_mean"] is None else row["graph_s_mean"],
                "—" if row["prep_s"] is None else f"{row['prep_s']:.0f} (once)",
                "—" if row["epoch_s_median"] is None else f"{row['epoch_s_median']:.3g} / {row['epoch_s_min']:.3g} / "
                f"{'—' if steps_s is None else f'{steps_s:.2g}'}",
                f"{rss:.0f}" + ("" if rss_ratio is None else f" ({rss_ratio:.2f}x)"),
                "—" if row["disk_mb"] is None else f"{row['disk_mb']:.1f}"])
        n = first["n"]
        print_table(f"{first['tag']}: test MAE (eV/atom), {n['train']}/{n['val']}/{n['test']} train/val/test per seed "
                    "(colab_kit's split for each seed, the same ids for every contender)",
                    ["contender", "seeds", "epochs", "test MAE mean ± std", "per seed", "MAE ÷ ref (paired)",
                     "alignn best_model.pt MAE", "wall s / seed", "wall ÷ ref (paired) / incl. convert",
                     "graph build s (in run)", "prep s (convert)", "epoch s median / min / steps/s at min", "peak tree RSS MB (÷ ref)", "graph cache MB"],
                    lines)
    if kills:
        lines = []
        for k in kills:
            first, second = k["first"], k["second"]
            rebuilt = k.get("rerun_rebuilt_graphs")
            epochs = k.get("rerun_epochs") or k.get("epochs_after_rerun") or []
            lines.append([k["name"], k["variant"], f"mid-{k['when']} at {k['killed_at_s'] or 0:.0f} s",
                          (k["at_kill"]["progress"] or {}).get("epochs_done", k["at_kill"].get("epochs_logged")),
                          f"{k['at_kill']['cache_mb']:.1f}",
                          "—" if rebuilt is None else ("yes" if rebuilt else "no (cache reused)"),
                          f"{epochs[0]}..{epochs[-1]}" if epochs else ("error" if "second_error" in k else "—"),
                          f"{second['wall_s']:.0f}", "—" if k.get("test_mae") is None else f"{k['test_mae']:.4g}",
                          "; ".join(k.get("resume_lines", []))[:120]])
        print_table("kill and rerun (seed 0): SIGKILL of the whole tree, then the same command",
                    ["case", "variant", "killed", "epochs done at kill", "cache at kill MB", "rerun rebuilt graphs",
                     "epochs the rerun trained", "rerun wall s", "rerun test MAE", "its log says"], lines)
    if ceiling:
        lines = []
        for pipe, pts in ceiling.items():
            fit = ceiling_fit(pts)
            summary["ceiling"][pipe] = {"points": pts, "fit": fit}
            for p in sorted(pts, key=lambda p: p["n"]):
                lines.append([pipe, p["n"], f"{p['graph_s'] or 0:.0f}", f"{p['peak_tree_rss_mb']:.0f}",
                              f"{p['disk_mb']:.0f}", "EXCEEDED" if p["exceeded_ceiling"] else "under", "measured"])
            if fit:
                lines.append([pipe, f"{fit['n_at_12gib_extrapolated']:,.0f}" if fit["n_at_12gib_extrapolated"] else "—",
                              "—", "12,288", "—", f"{fit['mb_per_structure']:.3f} MB/structure + {fit['a_mb']:.0f} MB",
                              "EXTRAPOLATED (line through the measured points)"])
        print_table("memory ceiling: each reference's dataset construction on MP-like data, 12 GiB tree-RSS sampler",
                    ["pipeline", "N", "build s", "peak tree RSS MB", "cache MB", "ceiling", "how"], lines)
    return summary


def load_all(out: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    rows = [json.loads(p.read_text()) for p in sorted((out / "results").glob("*/*-seed*.json"))
            if p.parent.name not in ("kill", "ceiling")]
    kills = [json.loads(p.read_text()) for p in sorted((out / "results" / "kill").glob("*.json"))]
    ceiling: dict[str, list[dict[str, Any]]] = {}
    for p in sorted((out / "results" / "ceiling").glob("*.json")):
        r = json.loads(p.read_text())
        ceiling.setdefault(r["pipeline"], []).append(r)
    return rows, kills, ceiling


def prep_records(out: Path) -> dict[str, dict[str, Any]]:
    recs = {}
    for fam, kind in STORE_KIND.items():
        hits = sorted((out / "stores").glob(f"{DS}-{kind}-*.convert.json"))
        if hits:
            recs[fam] = json.loads(hits[-1].read_text())
    return recs


# ---------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        cfg = json.loads(Path(argv[2]).read_text())
        sys.path.insert(0, cfg["src"])
        (child_alignn if argv[1] == "alignn-ref" else child_matgl)(cfg)
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/bench_peers", help="stores, runs and results (reruns reuse results)")
    ap.add_argument("--colab-kit-src", default=str(REPO), help="colab_kit source tree to run (default: this checkout)")
    ap.add_argument("--contenders", default=",".join(CONTENDERS), help=f"subset of {','.join(CONTENDERS)}")
    ap.add_argument("--stages", default="accuracy,kill,ceiling", help="subset of accuracy,kill,ceiling")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--kills", default="alignn-ref-train,matgl-ref-train,alignn-ck-train,m3gnet-ck-train",
                    help=f"kill cases to run, from {','.join(k[0] for k in KILLS)}")
    ap.add_argument("--n", type=int, default=600, help="first N structures of mp_eform_cgcnn_3000")
    ap.add_argument("--epochs", type=int, default=5, help="ALIGNN epochs (both sides)")
    ap.add_argument("--matgl-epochs", type=int, default=3, help="M3GNet / TensorNet epochs (both sides)")
    ap.add_argument("--mp-like", default=None, help="MP-like json.gz for the ceiling (made by mp_like.py if missing)")
    ap.add_argument("--ceiling-n", default="alignn:500,1000,2000;matgl:2000,8000,32000;ck-alignn:2000;"
                    "ck-matgl:2000,32000", help="sizes per pipeline for the memory ceiling (ck-*: colab_kit's convert)")
    ap.add_argument("--quick", action="store_true", help="smoke run: seed 0, 120 structures, 1 epoch, tiny ceiling")
    ap.add_argument("--redo", action="store_true", help="measure again even where a result exists")
    ap.add_argument("--report-only", action="store_true", help="print the tables of every result in --out")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.n, args.epochs, args.matgl_epochs = "0", 120, 2, 2
        args.ceiling_n = "alignn:100,200;matgl:100,400;ck-alignn:100;ck-matgl:100,400"
        args.out = args.out.rstrip("/") + "_quick"
    out = Path(args.out)
    if args.report_only:
        rows, kills, ceiling = load_all(out)
        report(rows, prep_records(out), kills, ceiling)
        return 0
    contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    stages = {s.strip() for s in args.stages.split(",") if s.strip()}
    if set(contenders) - set(CONTENDERS) or stages - {"accuracy", "kill", "ceiling"}:
        ap.error(f"--contenders from {list(CONTENDERS)}, --stages from accuracy,kill,ceiling")
    src = Path(args.colab_kit_src).resolve()
    sys.path.insert(0, str(src))
    seeds = [int(s) for s in args.seeds.split(",")]
    tag = f"{DS}-n{args.n}"
    ctx: dict[str, Any] = {"out": out, "src": src, "epochs": args.epochs, "matgl_epochs": args.matgl_epochs, "redo": args.redo, "tag": tag,
                           "stores": {}, "store_mb": {}}
    run = BenchRun(str(out / "summary.json"), str(out), "ck-bench-peers-", benchmark="bench_peers",
                   colab_kit_src=str(src), colab_kit_commit=_commit(src), seeds=seeds, epochs=args.epochs,
                   matgl_epochs=args.matgl_epochs, n=args.n,
                   sizes=SIZES, batch=BATCH, alignn_config=ALIGNN_CONFIG, alignn_model=ALIGNN_MODEL, skipped={})
    models, kinds = registered(src, "train", "--model"), registered(src, "convert", "--graph-kind")
    skipped: dict[str, str] = run.results["skipped"]
    for c in contenders:
        if c.endswith("-ck") and not (family(c) in models and STORE_KIND[family(c)] in kinds):
            skipped[c] = f"`python -m colab_kit train --help` lists models {models}, converters {kinds}"
    with run:
        for fam in dict.fromkeys(family(c) for c in contenders):
            kind = STORE_KIND[fam]
            if kind not in kinds:  # the split needs a store; the same ids in the same order in any kind's store
                kind = "radius"
            store, conv = ensure_store(DS, kind, args.n, out, src)
            ctx["stores"][fam], ctx["store_mb"][fam] = store, disk_bytes(store) / MB
            run.results.setdefault("split_store", {})[fam] = store.name
        if any(family(c) == "alignn" for c in contenders if c.endswith("-ref")):
            wanted = set(split_ids(ctx["stores"]["alignn"], seeds[0])["target"])
            ctx["poscars"] = write_poscars(source_structures(DATASETS[DS][0], wanted=wanted),
                                           out / "refdata" / f"{DS}-n{args.n}-poscar")
        todo = [c for c in contenders if c not in skipped]
        if "accuracy" in stages:
            for seed in seeds:  # seed by seed, the contenders one after the other (slow spells hit a pair alike)
                for c in todo:
                    run_one(ctx, c, seed)
                    run.save()
        if "kill" in stages:
            wanted_kills = set(args.kills.split(","))
            for name, c, when, variant in KILLS:
                if c in todo and (name in wanted_kills or args.quick):
                    kill_case(ctx, name, c, when, variant)
                    run.save()
        if "ceiling" in stages:
            ctx["mp_like"] = Path(args.mp_like or out / "mp_like_32k.json.gz")
            sizes = {p.split(":")[0]: [int(x) for x in p.split(":")[1].split(",")] for p in args.ceiling_n.split(";")}
            if not ctx["mp_like"].exists():
                watched([sys.executable, str(HERE / "mp_like.py"), "--n", str(max(max(v) for v in sizes.values())),
                         "--out", str(ctx["mp_like"]), "--no-progress"], "mp_like", out, src)
            for pipe, ns in sizes.items():
                fams = ("alignn",) if pipe.endswith("alignn") else ("m3gnet", "tensornet")
                side = "-ck" if pipe.startswith("ck-") else "-ref"
                if any(family(c) in fams for c in contenders if c.endswith(side)):
                    for n in ns:
                        p = ceiling_point(ctx, pipe, n)
                        if p["exceeded_ceiling"]:
                            break
        rows, kills, ceiling = load_all(out)
        rows = [r for r in rows if r["tag"] == tag]
        run.results["summary"] = report(rows, prep_records(out), kills, ceiling)
        for c, why in skipped.items():
            print(f"* {c} ({CONTENDERS[c]}) skipped: {why}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
