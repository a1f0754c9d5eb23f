"""Accuracy against the reference implementations (issue #14): colab_kit's models and the original codes,
trained on the same split for the same number of epochs, on CPU, over several seeds.

Contenders (``--contenders``; each run is a fresh process tree watched by ``harness.run_watched``: wall time and
the peak summed RSS of the tree):

``cgcnn-ref``      txie-93/cgcnn, the paper's code, run from a checkout (``--cgcnn-repo``) by a small driver this
                   script writes next to the data (``<out>/refdata/cgcnn_driver.py``). The driver imports the
                   checkout's ``main.py`` (which parses its CLI options at import: they are set to the paper's
                   defaults, listed in ``CGCNN_REF``), ``CIFData``, ``collate_pool`` and ``CrystalGraphConvNet``,
                   and runs main()'s own loop with main's ``train`` / ``validate`` / ``save_checkpoint`` /
                   ``Normalizer``. It differs from ``python main.py`` in one thing: the train/val/test rows are
                   colab_kit's split (main() takes a ratio split of its own shuffle), fed through the same
                   ``SubsetRandomSampler`` loaders ``get_train_val_test_loader`` builds; its normalizer samples
                   500 training structures (main() samples the whole set, test included). Input: one CIF per
                   structure (pymatgen ``Structure.to``, from the same records the colab_kit store is built
                   from), ``id_prop.csv`` and the checkout's ``data/sample-regression/atom_init.json``.
``cgcnn-ck``       ``python -m colab_kit convert --graph-kind radius`` (once per data set), then per seed
                   ``python -m colab_kit train --model cgcnn --set epochs=E --set patience=E --set seed=s`` and
                   ``python -m colab_kit evaluate --json`` of its ``best.pt``. Everything else is the Plan's
                   (AdamW 3e-3, cosine, batches of up to 32 graphs, budget calibration, ...).
``chgnet-ref``     CHGNet's own ``chgnet.trainer.Trainer`` fine-tuning the pretrained CHGNet on ``StructureData``
                   (energies = the target, ``targets="e"``), the recipe of CHGNet's ``examples/fine_tuning.ipynb``:
                   embeddings, basis expansions, ``atom_conv_layers[:-1]``, ``bond_conv_layers`` and
                   ``angle_layers`` frozen, Adam, lr 1e-2, ``CosLR``, MSE, batch 8; ``Trainer.train(...,
                   train_composition_model=True)`` (its docstring advises it when the targets are shifted from
                   CHGNet's energies by elemental references, as formation energies are). Its test predictions
                   are the ``test_result.json`` it writes for its best-validation weights. Runs as ``--child``.
``chgnet-ref-atomref``  the same, with ``model.composition_model.fit(train structures, train targets)`` (CHGNet's
                   own least-squares refit of its per-element energies, ``AtomRef.fit``) before training: the
                   pretrained AtomRef holds total-energy references several eV/atom away from formation energies.
``chgnet-ck``      ``convert --graph-kind chgnet --limit N`` then ``train --model chgnet`` / ``evaluate``, as for CGCNN.
``comformer-ck``   colab_kit's iComFormer (``convert --graph-kind comformer --limit N``, ``train --model comformer
                   --set hidden=H``), everything else the Plan's (AdamW 1e-3, cosine, batches of up to 32 graphs).
``comformer-ref``  the authors' iComformer (divelab/AIRS, ``OpenMat/ComFormer``, ``--comformer-repo``) trained by
                   their own ``train_main`` (their graphs, k = 25, their AdamW 1e-3 / weight decay 1e-5, OneCycle,
                   MSE, batch 64) on the same split, through ``ref_comformer.run_comformer_ref`` (its docstring lists
                   the runtime shims: a ``torch_scatter`` stand-in, pydantic v1, two typos of theirs).
                   ComFormer at its full size costs ~13 s per 32-structure step on 2 CPU cores, so on CPU both
                   contenders train the same reduced width (``--comformer-hidden``, the reference's
                   ``node_features``; 4 layers, 256 RBF bins and a 256 fc layer as in both defaults) on the
                   first ``--comformer-n`` structures for ``--comformer-epochs``; ``--comformer-hidden 0`` is the
                   full size (for a GPU).

Design decisions (and why):

* **Seeds vary the split and the initialisation.** colab_kit ties both to ``--set seed=s``
  (``splits.load_or_make_splits(store, s)`` writes ``splits-seed<s>.npz`` next to the store); that split is THE split
  of every contender at seed s (the reference codes get the same ids), and each contender seeds its own RNGs with s.
  The spread over seeds therefore includes the split; the comparison is paired per seed (the ratio column).
* **Same budget = same split and same number of epochs**; everything else is each code's own default (batch size,
  optimiser, schedule), since that is what a user of each gets. colab_kit's early stopping is switched off
  (``patience = epochs``) because the reference codes have none; all contenders test the weights of their best
  validation epoch (main.py's ``model_best.pth.tar``, CHGNet's ``bestE_*``, colab_kit's ``best.pt``).
* **CHGNet on CPU is slow**: it trains on the first ``--chgnet-n`` structures of its data set (the store is built
  with ``--limit``; the shipped set is sorted by id, so this is an unbiased subset) for ``--chgnet-epochs``.
* **Wall time** is the contender's own commands per seed (colab_kit: train + evaluate; the references: their driver,
  which includes their featurisation: CIF parsing and neighbour lists for CGCNN, graph conversion in
  ``StructureData`` for CHGNet). colab_kit's conversion runs once per data set and is reported apart ("prep").
* **A concurrent checkout**: ``--colab-kit-src DIR`` runs colab_kit from another tree (e.g. ``git archive HEAD``)
  with ``python -P`` and ``PYTHONPATH=DIR``, so edits in the working tree cannot change a measurement under way.
* **Resumable**: every (data set, contender, seed) writes ``<out>/results/<data set>/<contender>-e<E>-seed<s>.json``;
  a rerun with the same settings reuses it (``--redo`` measures again).

Usage::

    git -C /work/.mirror/txie-93+cgcnn/repo archive HEAD | tar -x -C /tmp/refs/cgcnn   # or a git clone
    nice -n 10 python benchmarks/bench_accuracy.py --cgcnn-repo /tmp/refs/cgcnn --out /tmp/bench_accuracy
    python benchmarks/bench_accuracy.py --cgcnn-repo /tmp/refs/cgcnn --quick      # smoke run, ~3 min
    python benchmarks/bench_accuracy.py --report-only --out /tmp/bench_accuracy     # the tables of all results
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
from harness import GB, REPO, BenchRun, loadavg, print_table, run_watched  # noqa: E402  # noqa: E402

DATA_ROOT = Path(os.environ.get("COLAB_KIT_SHARED_DATA", REPO.parent / "shared" / "data"))
DATASETS = {  # name: (matbench json, target unit)
    "mp_eform_cgcnn_3000": (REPO / "colab_kit" / "data" / "mp_eform_cgcnn_3000_matbench.json.gz", "eV/atom"),
    "matbench_phonons_1265": (DATA_ROOT / "matbench_phonons_1265" / "matbench_phonons.json.gz", "cm^-1"),
    "mp20_subset_1355": (DATA_ROOT / "mp20_subset_1355" / "mp20_subset_1355_matbench.json.gz", "eV/atom"),
}
CONTENDERS = {
    "cgcnn-ref": "CGCNN, reference (txie-93/cgcnn)",
    "cgcnn-ck": "CGCNN, colab_kit",
    "comformer-ref": "ComFormer, reference (divelab/AIRS)",
    "comformer-ck": "ComFormer, colab_kit",
    "chgnet-ref": "CHGNet, its own Trainer",
    "chgnet-ref-atomref": "CHGNet, its own Trainer, AtomRef refitted",
    "chgnet-ck": "CHGNet, colab_kit",
}
REFERENCE_OF = {"cgcnn-ck": "cgcnn-ref", "comformer-ck": "comformer-ref", "chgnet-ck": "chgnet-ref"}
CK_MODEL = {"cgcnn-ck": "cgcnn", "comformer-ck": "comformer", "chgnet-ck": "chgnet"}
STORE_KIND = {"cgcnn-ref": "radius", "cgcnn-ck": "radius", "comformer-ref": "comformer", "comformer-ck": "comformer",
              "chgnet-ref": "chgnet", "chgnet-ref-atomref": "chgnet",
              "chgnet-ck": "chgnet"}  # the colab_kit store whose split (and, for a reference, structures) a contender uses
# txie-93/cgcnn main.py / CIFData defaults = the paper's settings (radius 8 Å, 12 neighbours are CIFData's defaults)
CGCNN_REF = {"batch_size": 256, "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0, "lr_milestones": [100],
             "atom_fea_len": 64, "h_fea_len": 128, "n_conv": 3, "n_h": 1, "optim": "SGD"}
# CHGNet examples/fine_tuning.ipynb
CHGNET_REF = {"optimizer": "Adam", "learning_rate": 1e-2, "scheduler": "CosLR", "criterion": "MSE", "batch_size": 8,
              "train_composition_model": True}
CEILING = 64 * GB  # the watcher's ceiling: far above anything here (it only records the peak)

CGCNN_DRIVER = '''"""Drives txie-93/cgcnn's own code on a given train/val/test split (written by bench_accuracy.py).

Mirrors main.py's main(): same loaders (SubsetRandomSampler over CIFData), Normalizer, model, SGD, MultiStepLR,
and main.train / main.validate / main.save_checkpoint per epoch; the split and the seed come from the config.
"""
import csv, json, os, random, sys, time

cfg = json.load(open(sys.argv[1]))
h = cfg["hyper"]
sys.path.insert(0, cfg["cgcnn_repo"])
# main.py parses sys.argv when imported: the options its CLI would get
sys.argv = ["main.py", cfg["root"], "--disable-cuda", "--workers", "0", "--epochs", str(cfg["epochs"]),
            "--batch-size", str(h["batch_size"]), "--lr", str(h["lr"]), "--momentum", str(h["momentum"]),
            "--weight-decay", str(h["weight_decay"]), "--optim", h["optim"], "--atom-fea-len", str(h["atom_fea_len"]),
            "--h-fea-len", str(h["h_fea_len"]), "--n-conv", str(h["n_conv"]), "--n-h", str(h["n_h"]),
            "--print-freq", "1000", "--lr-milestones", *map(str, h["lr_milestones"])]
import numpy as np
import torch
from torch.optim.lr_scheduler import MultiStepLR
from torch.utils.data import DataLoader
from torch.utils.data.sampler import SubsetRandomSampler

import main as ref
from cgcnn.data import CIFData, collate_pool
from cgcnn.model import CrystalGraphConvNet

args = ref.args
os.chdir(cfg["workdir"])  # main.py writes checkpoint.pth.tar, model_best.pth.tar and test_results.csv to the cwd
t0 = time.perf_counter()
dataset = CIFData(*args.data_options)
split = json.load(open(cfg["split"]))
pos = {row[0]: k for k, row in enumerate(dataset.id_prop_data)}
idx = {name: [pos[i] for i in split[name]] for name in ("train", "val", "test")}
seed = cfg["seed"]
random.seed(seed); np.random.seed(seed); torch.manual_seed(seed)
loaders = {name: DataLoader(dataset, batch_size=args.batch_size, sampler=SubsetRandomSampler(idx[name]),
                            num_workers=args.workers, collate_fn=collate_pool, pin_memory=args.cuda)
           for name in ("train", "val", "test")}
sample_data_list = [dataset[i] for i in random.sample(idx["train"], min(500, len(idx["train"])))]
_, sample_target, _ = collate_pool(sample_data_list)
normalizer = ref.Normalizer(sample_target)
structures, _, _ = dataset[0]
model = CrystalGraphConvNet(structures[0].shape[-1], structures[1].shape[-1], atom_fea_len=args.atom_fea_len,
                            n_conv=args.n_conv, h_fea_len=args.h_fea_len, n_h=args.n_h, classification=False)
criterion = torch.nn.MSELoss()
optimizer = torch.optim.SGD(model.parameters(), args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
scheduler = MultiStepLR(optimizer, milestones=args.lr_milestones, gamma=0.1)
best_mae_error, history = 1e10, []
for epoch in range(args.start_epoch, args.epochs):
    te = time.perf_counter()
    ref.train(loaders["train"], model, criterion, optimizer, epoch, normalizer)
    mae_error = ref.validate(loaders["val"], model, criterion, normalizer)
    if mae_error != mae_error:
        sys.exit("Exit due to NaN")
    scheduler.step()
    is_best = mae_error < best_mae_error
    best_mae_error = min(mae_error, best_mae_error)
    ref.save_checkpoint({"epoch": epoch + 1, "state_dict": model.state_dict(), "best_mae_error": best_mae_error,
                         "optimizer": optimizer.state_dict(), "normalizer": normalizer.state_dict(),
                         "args": vars(args)}, is_best)
    history.append({"epoch": epoch + 1, "val_mae": float(mae_error), "seconds": time.perf_counter() - te})
# main.py's torch.load("model_best.pth.tar"): torch >= 2.6 loads weights_only by default, which this file passes
best_checkpoint = torch.load("model_best.pth.tar")
model.load_state_dict(best_checkpoint["state_dict"])
ref.validate(loaders["test"], model, criterion, normalizer, test=True)
with open("test_results.csv") as f:
    test = {row[0]: [float(row[1]), float(row[2])] for row in csv.reader(f)}
n_atoms = {i: int(dataset[pos[i]][0][0].shape[0]) for i in split["test"]}
json.dump({"history": history, "best_epoch": int(best_checkpoint["epoch"]), "test": test,
           "steps_per_epoch": len(loaders["train"]), "run_s": time.perf_counter() - t0,
           "atoms_differ": [i for i in split["test"] if n_atoms[i] != split["n_atoms"][i]]}, open(cfg["result"], "w"))
'''


# ---------------------------------------------------------------- helpers

def ck_cmd(*args: str) -> list[str]:
    """``python -m colab_kit ...`` that imports colab_kit from PYTHONPATH (``-P``: not from the cwd)."""
    return [sys.executable, "-P", "-m", "colab_kit", *args]


def watched(cmd: list[str], name: str, logdir: Path, src: Path) -> dict[str, Any]:
    """Run ``cmd`` as a watched process tree; raise with its log tail when it fails."""
    env = {"PYTHONPATH": str(src), "PYTHONUNBUFFERED": "1"}
    rec = run_watched(cmd, ceiling=CEILING, name=name, logdir=logdir, env=env)
    if rec["returncode"] != 0:
        tail = Path(rec["stderr"]).read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{name} failed (exit {rec['returncode']}): {' '.join(cmd)}\n{tail}")
    rec.pop("timeline_s_rss_mb", None)
    return rec


def registered(src: Path, command: str, option: str) -> list[str]:
    """The choices ``python -m colab_kit <command> --help`` lists for ``option`` (e.g. ``--model``)."""
    out = subprocess.run(ck_cmd(command, "--help"), capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(src)},
                         cwd=REPO).stdout
    m = re.search(re.escape(option) + r" \{([^}]*)\}", out)
    return m.group(1).split(",") if m else []


def ensure_store(ds: str, kind: str, limit: int | None, out: Path, src: Path) -> tuple[Path, dict[str, Any]]:
    """colab_kit's store of ``ds`` (``kind`` graphs, first ``limit`` items), converted once; the record of that run."""
    store = out / "stores" / f"{ds}-{kind}-{'all' if limit is None else f'n{limit}'}"
    rec_path = store.with_suffix(".convert.json")
    if rec_path.exists() and (store / "manifest.json").exists():
        return store, json.loads(rec_path.read_text())
    cmd = ck_cmd("convert", str(DATASETS[ds][0]), "--graph-kind", kind, "--out", str(store),
                 *(["--limit", str(limit)] if limit else []))
    print(f"[{store.name}] converting ...", flush=True)
    rec = watched(cmd, f"convert-{ds}-{kind}", store.parent, src)
    rec_path.write_text(json.dumps(rec, indent=1))
    return store, rec


def split_ids(store: Path, seed: int) -> dict[str, Any]:
    """colab_kit's split of ``store`` for ``seed`` as ids (made and saved next to the store if new), + targets."""
    from colab_kit.loader.splits import load_or_make_splits
    from colab_kit.store.format import GraphStore

    gs = GraphStore(store)
    ids, targets, (atoms, _) = gs.ids(), gs.targets(), gs.sizes()
    splits = load_or_make_splits(gs, seed)
    out: dict[str, Any] = {k: [ids[i] for i in splits[k]] for k in ("train", "val", "test")}
    out["target"] = {ids[i]: float(targets[i]) for k in ("train", "val", "test") for i in splits[k]}
    out["n_atoms"] = {ids[i]: int(atoms[i]) for i in splits["test"]}
    out["mean_predictor_mae"] = float(np.mean(np.abs(targets[splits["test"]] - targets[splits["train"]].mean())))
    out["test_sha"] = hashlib.sha256("\n".join(sorted(out["test"])).encode()).hexdigest()[:12]
    return out


def mae_on(test: dict[str, list[float]], split: dict[str, Any]) -> float:
    """MAE over exactly the split's test ids from ``{id: [target, prediction]}``; checks ids and targets."""
    if set(test) != set(split["test"]):
        raise RuntimeError(f"predictions for {len(test)} ids, the test split has {len(split['test'])} "
                           f"({len(set(test) ^ set(split['test']))} differ)")
    bad = [i for i, (t, _) in test.items() if abs(t - split["target"][i]) > 1e-4 * max(1.0, abs(t))]
    if bad:
        raise RuntimeError(f"{len(bad)} test targets differ from the store's, e.g. {bad[0]}")
    return float(np.mean([abs(p - split["target"][i]) for i, (_, p) in test.items()]))


# ---------------------------------------------------------------- contenders

def write_cif_dir(ds: str, store: Path, cgcnn_repo: Path, out: Path) -> Path:
    """CIFs + id_prop.csv + atom_init.json of the store's structures, for txie-93/cgcnn's CIFData (written once)."""
    from colab_kit.sources import open_source, parse_structure
    from colab_kit.store.format import GraphStore

    root = out / "refdata" / f"{ds}-{store.name}"
    if (root / "complete").exists():
        return root
    root.mkdir(parents=True, exist_ok=True)
    gs = GraphStore(store)
    wanted = dict(zip(gs.ids(), gs.targets().tolist()))
    t = time.perf_counter()
    rows = []
    for item in open_source(DATASETS[ds][0]):
        if item.id in wanted:
            if not re.fullmatch(r"[\w.+-]+", item.id):
                raise SystemExit(f"id {item.id!r} cannot be a CIF file name")
            parse_structure(item).to(filename=str(root / f"{item.id}.cif"), fmt="cif")
            rows.append(f"{item.id},{wanted[item.id]!r}\n")
    (root / "id_prop.csv").write_text("".join(rows))
    shutil.copy(cgcnn_repo / "data" / "sample-regression" / "atom_init.json", root / "atom_init.json")
    (root / "complete").write_text("")
    print(f"[{ds}] wrote {len(rows)} CIFs for the reference CGCNN in {time.perf_counter() - t:.0f} s", flush=True)
    return root


def run_cgcnn_ref(ctx: dict[str, Any], ds: str, seed: int, split: dict[str, Any], run: Path) -> dict[str, Any]:
    root = write_cif_dir(ds, ctx["stores"][(ds, "radius")], ctx["cgcnn_repo"], ctx["out"])
    driver = ctx["out"] / "refdata" / "cgcnn_driver.py"
    driver.write_text(CGCNN_DRIVER)
    (run / "split.json").write_text(json.dumps(split))
    cfg = {"cgcnn_repo": str(ctx["cgcnn_repo"]), "root": str(root), "split": str(run / "split.json"), "seed": seed,
           "epochs": ctx["epochs"], "hyper": CGCNN_REF, "workdir": str(run), "result": str(run / "driver.json")}
    (run / "config.json").write_text(json.dumps(cfg))
    rec = watched([sys.executable, str(driver), str(run / "config.json")], "driver", run, ctx["src"])
    res = json.loads((run / "driver.json").read_text())
    if res["atoms_differ"]:
        raise RuntimeError(f"{len(res['atoms_differ'])} CIFs re-read with another atom count, e.g. {res['atoms_differ'][0]}")
    return {"test_mae": mae_on(res.pop("test"), split), "proc": rec, **res}


def run_ck(ctx: dict[str, Any], ds: str, seed: int, split: dict[str, Any], run: Path, contender: str) -> dict[str, Any]:
    model = CK_MODEL[contender]
    store = ctx["stores"][(ds, STORE_KIND[contender])]
    epochs = family_epochs(ctx, contender)
    sets = [f"epochs={epochs}", f"patience={epochs}", f"seed={seed}"]
    if model == "comformer" and ctx["comformer_hidden"]:
        sets.append(f"hidden={ctx['comformer_hidden']}")
    train = ck_cmd("train", "--store", str(store), "--model", model, "--out", str(run / "train"), "--fresh",
                   *[a for s in sets for a in ("--set", s)])
    rec_t = watched(train, "train", run, ctx["src"])
    ev = ck_cmd("evaluate", "--store", str(store), "--weights", str(run / "train" / "best.pt"), "--model", model,
                "--set", f"seed={seed}", "--json")
    rec_e = watched(ev, "evaluate", run, ctx["src"])
    scores = json.loads([ln for ln in Path(rec_e["stdout"]).read_text().splitlines() if ln.startswith("{")][-1])
    if scores["n"] != len(split["test"]):
        raise RuntimeError(f"colab_kit evaluated {scores['n']} test graphs, the split has {len(split['test'])}")
    history = [json.loads(ln) for ln in (run / "train" / "metrics.jsonl").read_text().splitlines()]
    import torch

    state = torch.load(run / "train" / "checkpoints" / "latest.pt", map_location="cpu", weights_only=True)
    best = min(history, key=lambda h: h["val_mae"])
    return {"test_mae": scores["mae"], "proc": {"wall_s": rec_t["wall_s"] + rec_e["wall_s"],
            "peak_tree_rss_mb": max(rec_t["peak_tree_rss_mb"], rec_e["peak_tree_rss_mb"]),
            "train": rec_t, "evaluate": rec_e}, "history": history, "best_epoch": best["epoch"],
            "steps_per_epoch": int(state["step"]) / max(len(history), 1), "budget": state.get("budget")}


def child_chgnet_ref(cfg: dict[str, Any]) -> None:
    """CHGNet's Trainer on the given split (runs in its own interpreter: ``--child chgnet-ref CONFIG``)."""
    import random

    import torch
    from chgnet.data.dataset import StructureData, collate_graphs
    from chgnet.model import CHGNet
    from chgnet.trainer import Trainer
    from torch.utils.data import DataLoader

    from colab_kit.sources import open_source, parse_structure

    t0 = time.perf_counter()
    split, h, seed = json.loads(Path(cfg["split"]).read_text()), cfg["hyper"], cfg["seed"]
    wanted = set(split["target"])
    structures = {it.id: parse_structure(it) for it in open_source(cfg["source"]) if it.id in wanted}
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    model = CHGNet.load(use_device="cpu", verbose=False)
    if cfg.get("refit_atomref"):  # CHGNet's own least-squares fit of its per-element energies, to the training targets
        train = split["train"]
        model.composition_model.fit([structures[i] for i in train], [split["target"][i] for i in train])
    for layer in [model.atom_embedding, model.bond_embedding, model.angle_embedding, model.bond_basis_expansion,
                  model.angle_basis_expansion, model.atom_conv_layers[:-1], model.bond_conv_layers, model.angle_layers]:
        for p in layer.parameters():
            p.requires_grad = False

    def loader(name: str) -> DataLoader:
        ids = split[name]
        data = StructureData(structures=[structures[i] for i in ids], energies=[split["target"][i] for i in ids],
                             forces=[np.zeros((len(structures[i]), 3)) for i in ids], structure_ids=ids, shuffle=False)
        return DataLoader(data, batch_size=h["batch_size"], shuffle=name == "train", collate_fn=collate_graphs,
                          num_workers=0)

    trainer = Trainer(model=model, targets="e", optimizer=h["optimizer"], scheduler=h["scheduler"],
                      criterion=h["criterion"], epochs=cfg["epochs"], learning_rate=h["learning_rate"],
                      use_device="cpu", print_freq=10**6, torch_seed=seed, data_seed=seed)
    save_dir = Path(cfg["workdir"]) / "chgnet"
    trainer.train(loader("train"), loader("val"), loader("test"), save_dir=str(save_dir), save_test_result=True,
                  train_composition_model=h["train_composition_model"])
    rows = json.loads((save_dir / "test_result.json").read_text())
    best = next(f for f in os.listdir(save_dir) if f.startswith("bestE_"))
    val = trainer.training_history["e"]["val"]
    Path(cfg["result"]).write_text(json.dumps({
        "test": {r["mp_id"]: [r["energy"]["ground_truth"], r["energy"]["prediction"]] for r in rows},
        "history": [{"epoch": k + 1, "val_mae": float(v)} for k, v in enumerate(val)],
        "best_epoch": int(re.match(r"bestE_epoch(\d+)", best).group(1)) + 1, "best_file": best,
        "trainer_test_mae": float(trainer.training_history["e"]["test"]),
        "steps_per_epoch": -(-len(split["train"]) // h["batch_size"]), "run_s": time.perf_counter() - t0,
        "trainable_params": int(sum(p.numel() for p in model.parameters() if p.requires_grad))}))


def run_chgnet_ref(ctx: dict[str, Any], ds: str, seed: int, split: dict[str, Any], run: Path,
                   refit_atomref: bool = False) -> dict[str, Any]:
    (run / "split.json").write_text(json.dumps(split))
    cfg = {"refit_atomref": refit_atomref, "split": str(run / "split.json"), "source": str(DATASETS[ds][0]), "seed": seed, "hyper": CHGNET_REF,
           "epochs": ctx["chgnet_epochs"], "workdir": str(run), "result": str(run / "child.json"), "src": str(ctx["src"])}
    (run / "config.json").write_text(json.dumps(cfg))
    rec = watched([sys.executable, str(Path(__file__).resolve()), "--child", "chgnet-ref", str(run / "config.json")],
                  "child", run, ctx["src"])
    res = json.loads((run / "child.json").read_text())
    return {"test_mae": mae_on(res.pop("test"), split), "proc": rec, **res}


def family_epochs(ctx: dict[str, Any], contender: str) -> int:
    return {"chgnet": ctx["chgnet_epochs"], "comformer": ctx["comformer_epochs"]}.get(contender.split("-")[0],
                                                                                      ctx["epochs"])


def run_comformer_ref_contender(ctx: dict[str, Any], ds: str, seed: int, split: dict[str, Any],
                                run: Path) -> dict[str, Any]:
    """The authors' iComformer on the split (their graphs from the same structures the colab_kit store holds)."""
    from ref_comformer import run_comformer_ref

    from colab_kit.sources import open_source, parse_structure

    wanted = set(split["target"])
    structures = {it.id: parse_structure(it) for it in open_source(DATASETS[ds][0]) if it.id in wanted}
    by_split = {k: [(i, structures[i], split["target"][i]) for i in split[k]] for k in ("train", "val", "test")}
    overrides = {"node_features": ctx["comformer_hidden"]} if ctx["comformer_hidden"] else {}
    res = run_comformer_ref(ctx["comformer_repo"], by_split, family_epochs(ctx, "comformer-ref"), seed, run / "ref",
                            overrides)
    return {"test_mae": res["test_mae"], "proc": res["proc"], "history": res.get("history", []),
            "best_epoch": res.get("best_epoch"), "params": res.get("params"), "seconds": res.get("seconds"),
            "test_mae_last_epoch": res.get("test_mae_last_epoch"), "config_overrides": overrides}


def comformer_ref_status(repo: str | None) -> str:
    """Why comformer-ref cannot run (its ids and targets are checked by ``ref_comformer`` itself)."""
    return (f"--comformer-repo {repo!r} is not the OpenMat/ComFormer folder (no comformer/ in it)" if repo else
            "no --comformer-repo given (the OpenMat/ComFormer folder of divelab/AIRS)")


# ---------------------------------------------------------------- orchestration

def data_tag(ctx: dict[str, Any], ds: str, contender: str) -> tuple[str, int | None]:
    """(name of the results group, structure limit) of a contender on ``ds``."""
    limit = {"chgnet": ctx["chgnet_n"], "comformer": ctx["comformer_n"]}.get(contender.split("-")[0], ctx["limit"])
    return (ds if limit is None else f"{ds}-n{limit}"), limit


def run_one(ctx: dict[str, Any], ds: str, contender: str, seed: int) -> dict[str, Any]:
    epochs = family_epochs(ctx, contender)
    tag, _ = data_tag(ctx, ds, contender)
    path = ctx["out"] / "results" / tag / f"{contender}-e{epochs}-seed{seed}.json"
    if path.exists() and not ctx["redo"]:
        print(f"[{tag}] {contender} seed {seed}: reusing {path}", flush=True)
        return json.loads(path.read_text())
    store = ctx["stores"][(ds, STORE_KIND[contender])]
    split = split_ids(store, seed)
    run = ctx["out"] / "runs" / tag / f"{contender}-seed{seed}"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    print(f"[{tag}] {contender} seed {seed}: {len(split['train'])}/{len(split['val'])}/{len(split['test'])} "
          f"train/val/test, {epochs} epochs ...", flush=True)
    la0 = loadavg()
    if contender == "cgcnn-ref":
        res = run_cgcnn_ref(ctx, ds, seed, split, run)
    elif contender.startswith("chgnet-ref"):
        res = run_chgnet_ref(ctx, ds, seed, split, run, refit_atomref=contender == "chgnet-ref-atomref")
    elif contender == "comformer-ref":
        res = run_comformer_ref_contender(ctx, ds, seed, split, run)
    else:
        res = run_ck(ctx, ds, seed, split, run, contender)
    rec = {"dataset": ds, "tag": tag, "contender": contender, "seed": seed, "epochs": epochs,
           "n": {k: len(split[k]) for k in ("train", "val", "test")}, "test_sha": split["test_sha"],
           "mean_predictor_mae": split["mean_predictor_mae"], "unit": DATASETS[ds][1],
           "wall_s": res["proc"]["wall_s"], "peak_tree_rss_mb": res["proc"]["peak_tree_rss_mb"],
           "loadavg_before": la0, "loadavg_after": loadavg(), "finished": time.strftime("%Y-%m-%d %H:%M:%S"), **res}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec, indent=1))
    print(f"[{tag}] {contender} seed {seed}: test MAE {rec['test_mae']:.4g} {rec['unit']} (mean predictor "
          f"{rec['mean_predictor_mae']:.4g}), {rec['wall_s']:.0f} s, peak {rec['peak_tree_rss_mb']:.0f} MB", flush=True)
    return rec


def report(rows: list[dict[str, Any]], prep: dict[str, float], skipped: dict[str, str]) -> list[dict[str, Any]]:
    """One table per data set: MAE mean ± std over seeds, paired ratios against the reference, wall, RSS."""
    summary = []
    for tag in dict.fromkeys(r["tag"] for r in rows):
        group = [r for r in rows if r["tag"] == tag]
        by: dict[str, dict[int, dict[str, Any]]] = {}
        for r in group:
            by.setdefault(r["contender"], {})[r["seed"]] = r
        lines = []
        first = group[0]
        by_seed = {r["seed"]: r["mean_predictor_mae"] for r in group}  # the same split, whoever ran it
        mp = [by_seed[s] for s in sorted(by_seed)]
        lines.append(["mean predictor (train mean)", len(mp), "—", f"{np.mean(mp):.4g} ± {np.std(mp, ddof=1) if len(mp) > 1 else 0.0:.2g}",
                      " ".join(f"{x:.3g}" for x in mp), "—", "—", "—", "—", "—", "—", "—"])
        for c, seeds in sorted(by.items(), key=lambda kv: list(CONTENDERS).index(kv[0])):
            maes = [seeds[s]["test_mae"] for s in sorted(seeds)]
            walls = [seeds[s]["wall_s"] for s in sorted(seeds)]
            ref = by.get(REFERENCE_OF.get(c, ""), {})
            paired = [seeds[s]["test_mae"] / ref[s]["test_mae"] for s in sorted(seeds) if s in ref]
            wall_ratio = (np.mean(walls) / np.mean([ref[s]["wall_s"] for s in ref])) if ref else None
            row = {"tag": tag, "contender": c, "label": CONTENDERS[c], "seeds": sorted(seeds), "maes": maes,
                   "mae_mean": float(np.mean(maes)), "mae_std": float(np.std(maes, ddof=1)) if len(maes) > 1 else 0.0,
                   "mae_ratio_paired": float(np.mean(paired)) if paired else None, "wall_mean_s": float(np.mean(walls)),
                   "wall_ratio": wall_ratio, "peak_rss_mb": max(seeds[s]["peak_tree_rss_mb"] for s in seeds),
                   "epochs": first_of(seeds)["epochs"], "steps_per_epoch": first_of(seeds).get("steps_per_epoch"),
                   "best_epochs": [seeds[s].get("best_epoch") for s in sorted(seeds)], "prep_s": prep.get(f"{tag}:{c}"),
                   "epoch_s": epoch_seconds(seeds)}
            summary.append(row)
            lines.append([row["label"], len(maes), row["epochs"], f"{row['mae_mean']:.4g} ± {row['mae_std']:.2g}",
                          " ".join(f"{x:.3g}" for x in maes), "—" if not paired else f"{row['mae_ratio_paired']:.2f}",
                          row["wall_mean_s"], "—" if wall_ratio is None else f"{wall_ratio:.2f}",
                          "—" if row["epoch_s"] is None else "{:.3g} / {:.3g}".format(*row["epoch_s"]),
                          "—" if row["prep_s"] is None else row["prep_s"], row["peak_rss_mb"],
                          "—" if row["steps_per_epoch"] is None else f"{row['steps_per_epoch']:.0f}"])
        n = first["n"]
        print_table(f"{tag}: test MAE ({first['unit']}), {n['train']}/{n['val']}/{n['test']} train/val/test per seed "
                    f"(colab_kit's split for each seed, the same ids for every contender)",
                    ["contender", "seeds", "epochs", "test MAE mean ± std", "per seed", "MAE ÷ ref (paired)",
                     "wall s / seed", "wall ÷ ref", "epoch s (median / min)", "prep s", "peak tree RSS MB", "steps/epoch"], lines)
    for c, why in skipped.items():
        print(f"* {c} ({CONTENDERS[c]}) skipped: {why}")
    return summary


def epoch_seconds(seeds: dict[int, dict[str, Any]]) -> tuple[float, float] | None:
    """(median, fastest) seconds of one training epoch + its validation over all epochs of all seeds: less hit by
    the shared machine's slow spells than the wall time. The reference CGCNN's first epoch, which parses and
    featurises every structure it meets (``CIFData`` caches them), is left out."""
    xs = [h["seconds"] for r in seeds.values() for h in r["history"][1 if r["contender"] == "cgcnn-ref" else 0:]
          if "seconds" in h]
    return (float(np.median(xs)), float(np.min(xs))) if xs else None


def first_of(seeds: dict[int, dict[str, Any]]) -> dict[str, Any]:
    return seeds[min(seeds)]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        cfg = json.loads(Path(argv[2]).read_text())
        sys.path.insert(0, cfg["src"])
        child_chgnet_ref(cfg)
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/bench_accuracy", help="stores, runs and results (reruns reuse results)")
    ap.add_argument("--cgcnn-repo", default=None, help="checkout/export of txie-93/cgcnn (needed by cgcnn-ref)")
    ap.add_argument("--comformer-repo", default=None, help="divelab/AIRS OpenMat/ComFormer folder (comformer-ref)")
    ap.add_argument("--comformer-data", default="mp_eform_cgcnn_3000")
    ap.add_argument("--comformer-n", type=int, default=1000, help="first N structures for the ComFormer contenders")
    ap.add_argument("--comformer-epochs", type=int, default=10)
    ap.add_argument("--comformer-hidden", type=int, default=64, help="width of both ComFormers (0: the full 256)")
    ap.add_argument("--colab-kit-src", default=str(REPO), help="colab_kit source tree to run (default: this checkout)")
    ap.add_argument("--contenders", default=",".join(CONTENDERS), help=f"subset of {','.join(CONTENDERS)}")
    ap.add_argument("--datasets", default="mp_eform_cgcnn_3000,matbench_phonons_1265",
                    help=f"data sets for CGCNN / ComFormer, from {','.join(DATASETS)}")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=30, help="CGCNN / ComFormer epochs for every contender")
    ap.add_argument("--limit", type=int, default=None, help="first N structures of each CGCNN / ComFormer data set")
    ap.add_argument("--chgnet-data", default="mp_eform_cgcnn_3000")
    ap.add_argument("--chgnet-n", type=int, default=600, help="first N structures for the CHGNet contenders")
    ap.add_argument("--chgnet-epochs", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="smoke run: seed 0, CGCNN 2 epochs on 400 structures, CHGNet / ComFormer 1 on 80")
    ap.add_argument("--redo", action="store_true", help="measure again even where a result exists")
    ap.add_argument("--report-only", action="store_true", help="print the tables of every result in --out; run nothing")
    args = ap.parse_args(argv)
    if args.report_only:
        return report_saved(Path(args.out))
    if args.quick:
        args.seeds, args.epochs, args.limit, args.chgnet_n, args.chgnet_epochs = "0", 2, 400, 80, 1
        args.comformer_n, args.comformer_epochs = 80, 1
        args.datasets = "mp_eform_cgcnn_3000"
        args.out = args.out.rstrip("/") + "_quick"
    contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    if set(contenders) - set(CONTENDERS) or set(datasets + [args.chgnet_data]) - set(DATASETS):
        ap.error(f"--contenders from {list(CONTENDERS)}, --datasets / --chgnet-data from {list(DATASETS)}")
    if "cgcnn-ref" in contenders and not (args.cgcnn_repo and (Path(args.cgcnn_repo) / "main.py").exists()):
        ap.error("cgcnn-ref needs --cgcnn-repo pointing at a txie-93/cgcnn checkout (main.py, cgcnn/)")
    src = Path(args.colab_kit_src).resolve()
    sys.path.insert(0, str(src))
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    run = BenchRun(str(out / "summary.json"), str(out), "ck-bench-accuracy-", benchmark="bench_accuracy",
                   colab_kit_src=str(src), colab_kit_commit=_commit(src), cgcnn_repo=args.cgcnn_repo, seeds=seeds,
                   epochs=args.epochs, chgnet_n=args.chgnet_n, chgnet_epochs=args.chgnet_epochs, limit=args.limit,
                   cgcnn_ref=CGCNN_REF, chgnet_ref=CHGNET_REF, results=[], skipped={})
    ctx = {"out": out, "src": src, "cgcnn_repo": Path(args.cgcnn_repo).resolve() if args.cgcnn_repo else None,
           "comformer_repo": args.comformer_repo, "comformer_n": args.comformer_n,
           "comformer_epochs": args.comformer_epochs, "comformer_hidden": args.comformer_hidden,
           "epochs": args.epochs, "chgnet_epochs": args.chgnet_epochs, "chgnet_n": args.chgnet_n,
           "limit": args.limit, "redo": args.redo, "stores": {}}
    skipped: dict[str, str] = run.results["skipped"]
    models, kinds = registered(src, "train", "--model"), registered(src, "convert", "--graph-kind")
    if "comformer-ck" in contenders and not ("comformer" in models and "comformer" in kinds):
        skipped["comformer-ck"] = f"`python -m colab_kit train --help` lists models {models}, converters {kinds}"
    if "comformer-ref" in contenders and "comformer" not in kinds:  # its split comes from a colab_kit comformer store
        skipped["comformer-ref"] = f"its split is that of colab_kit's comformer store; `convert --help` lists {kinds}"
    elif "comformer-ref" in contenders and not (args.comformer_repo and (Path(args.comformer_repo) / "comformer").is_dir()):
        skipped["comformer-ref"] = comformer_ref_status(args.comformer_repo)
    todo = [c for c in contenders if c not in skipped]
    rows: list[dict[str, Any]] = []
    prep: dict[str, float] = {}
    with run:
        # per data set and model family, seed by seed, the contenders one after the other (so a slow spell of
        # the shared machine hits the pair of a seed alike)
        groups = [(ds, [c for c in todo if c.startswith("cgcnn")]) for ds in datasets]
        groups.append((args.chgnet_data, [c for c in todo if c.startswith("chgnet")]))
        groups.append((args.comformer_data, [c for c in todo if c.startswith("comformer")]))
        for ds, group in groups:
            for c in group:
                tag, limit = data_tag(ctx, ds, c)
                store, conv = ensure_store(ds, STORE_KIND[c], limit, out, src)
                ctx["stores"][(ds, STORE_KIND[c])] = store
                if c.endswith("-ck"):
                    prep[f"{tag}:{c}"] = conv["wall_s"]
            for seed in seeds:
                for c in group:
                    rows.append(run_one(ctx, ds, c, seed))
                    run.results["results"] = rows
                    run.save()
        run.results["summary"] = report(rows, prep, skipped)
    return 0


def report_saved(out: Path) -> int:
    """The tables of every result under ``out/results`` (whatever invocation measured it)."""
    rows = [json.loads(p.read_text()) for p in sorted((out / "results").glob("*/*.json"))]
    if not rows:
        raise SystemExit(f"no results under {out / 'results'}")
    prep = {}
    for r in rows:
        if r["contender"].endswith("-ck"):
            limit = r["tag"][len(r["dataset"]) + 2:] if r["tag"] != r["dataset"] else None
            rec = out / "stores" / f"{r['dataset']}-{STORE_KIND[r['contender']]}-{f'n{limit}' if limit else 'all'}.convert.json"
            if rec.exists():
                prep[f"{r['tag']}:{r['contender']}"] = json.loads(rec.read_text())["wall_s"]
    report(rows, prep, {})
    return 0


def _commit(src: Path) -> str | None:
    r = subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return r.stdout.strip() or None


if __name__ == "__main__":
    raise SystemExit(main())
