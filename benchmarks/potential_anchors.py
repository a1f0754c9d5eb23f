"""The field's two "anchor" potential-training pipelines (energies, forces, stresses) on DFT frames, run as each
package documents them, so colab_kit's own potential training can be put side by side later.

Anchors (``--anchor``):

``chgnet``   CHGNet 0.4.2's fine-tuning notebook (``examples/fine_tuning.ipynb``): the pretrained ``CHGNet.load()``
             (weights 0.3.0, shipped in the wheel), ``chgnet.data.dataset.StructureData(structures, energies=eV/atom,
             forces, stresses=kBar VASP sign, magmoms=None)``, loaders as ``get_train_val_test_loader`` builds them
             (``DataLoader(dataset, collate_fn=collate_graphs, sampler=SubsetRandomSampler(...))``) but over OUR
             split, ``chgnet.trainer.Trainer(model, targets="efs", optimizer="Adam", scheduler="CosLR",
             criterion="MSE", learning_rate=lr, epochs=N, use_device="cpu")`` and ``trainer.train(train_loader,
             val_loader, test_loader, save_dir=<temp>)``. All weights are trained unless ``--chgnet-freeze notebook``
             (the notebook's optional cell: embeddings, basis expansions, all but the last atom conv layer, the bond
             conv and angle layers frozen). The AtomRef composition model stays frozen (``train()``'s default
             ``train_composition_model=False``) unless ``--chgnet-train-composition``.
``matgl``    matgl 4.1.2 (PyG backend), its "Training a M3GNet Potential with PyTorch Lightning" example:
             ``Structure2Graph(element_types=DEFAULT_ELEMENTS, cutoff=5)``, ``MGLDataset(structures, converter,
             labels={"energies": eV total, "forces": eV/A, "stresses": GPa tensile-positive 3x3})``,
             ``MGLDataLoader(..., collate_fn=partial(collate_fn_pes, include_stress=True), num_workers=0)`` over
             ``Subset``s of our split, ``M3GNet(element_types, is_intensive=False)`` (or ``TensorNet``) from scratch,
             ``PotentialLightningModule(model, element_refs=fit_element_refs(train), lr=lr, stress_weight=0.1,
             include_line_graph=False)`` and ``lightning.Trainer(max_epochs=N, accelerator="cpu",
             inference_mode=False)``; ``trainer.fit`` then ``trainer.test``. Where the (DGL-era) notebook says
             ``include_line_graph=True``: in 4.1.2 ``collate_fn_pes`` never puts a line graph in the batch (M3GNet
             builds it inside ``forward``) and ``PotentialLightningModule.step`` with ``include_line_graph=True``
             would unpack the batch wrongly, so it is False for M3GNet too. ``inference_mode=False`` is required
             (forces and stresses are autograd derivatives in validation and test). ``num_workers=0`` is explicit:
             ``MGLDataLoader`` otherwise defaults to min(4, cpu_count) workers.

Units and signs (checked at run time on the first frame, recorded under ``checks``):

* frames: ASE extxyz; ``get_potential_energy()`` eV total, ``get_forces()`` eV/A, ``get_stress(voigt=False)``
  eV/A^3, tensile positive.
* CHGNet: ``StructureData`` multiplies the stress labels by -0.1 (it expects raw VASP kBar, compressive positive);
  the model outputs GPa, tensile positive (1/V dE/d strain x 160.2177). So the labels given to it are
  ``-1602.1766208 x ASE stress`` and ``energy / n_atoms``.
* matgl: ``Potential`` outputs GPa with compressive negative (= tensile positive, 1/V dE/d strain x 160.2177) and
  ``MGLDataset`` labels are used as they are, so the labels are ``160.21766208 x ASE stress``; energies total eV.
* the test MAEs below are computed by this script, for both anchors alike, from the trained model's predictions
  against the ASE labels: energy per atom (meV/atom, one value per frame), forces per component (meV/A, all atoms of
  all frames pooled), stress per component of the full 3x3 tensor (GPa, tensile positive; 9 per frame, as both
  packages' own losses use it). Per element too, and the package's own reported test MAE beside it.
* "final" = the weights after the last epoch (the same rule for both). CHGNet's ``Trainer.train`` then reloads the
  checkpoint with the best validation ENERGY MAE into ``trainer.model`` and tests that; it is reported as
  ``test_trainer_model``. Lightning's ``trainer.test`` tests the module as it is (the last epoch).
* ``test_epoch0``: the starting model on the test split before any training (CHGNet: the pretrained weights; matgl:
  the random initialisation plus the fitted element references).

Timing: ``sec_per_epoch`` is the median over epochs of train + validation wall time (CHGNet: ``Trainer._train`` +
``Trainer._validate``; its per-epoch checkpoint writes are measured apart in ``checkpoint_s``; matgl: Lightning's
``on_train_epoch_start`` .. ``on_train_epoch_end``, after the sanity-check batches). ``setup_s`` is everything
between reading the frames and the first epoch (structures, graphs, model, loaders); ``graphs_s`` the graph building
alone. CHGNet's ``StructureData`` builds graphs lazily in ``__getitem__`` (``functools.cache``), i.e. inside the first
epoch; here every graph is built once before training (``--no-chgnet-prebuild`` leaves it lazy), so that
``graphs_s`` is in setup for both anchors. Memory: ``ru_maxrss`` of this process (whole life, imports included)
and the peak of psutil RSS samples every 0.2 s (``harness.TreeRss``).

Data: ``--frames`` extxyz(.gz); ``--split`` a JSON ``{"train": [...], "val": [...], "test": [...]}`` of 0-based frame
indices in file order. Without ``--split`` a seeded random 80/10/10 split of all frames is made and written next to
``--out`` (``<out stem>.split.json``). ``--limit K`` uses K frames in all: the first round(K x share) indices of each
list of the split, in the split's order (so a random split gives a random subset, every element represented).
Gzipped extxyz is decompressed into memory before ``ase.io.read``: ASE's extxyz reader seeks back once per frame,
and a seek in a gzip stream decompresses from the start (1,402 frames: 58 s directly, 0.7 s this way, same frames).

Memory: CHGNet's efs forward holds about 2 GB per 108-atom Cu/Ni cell on CPU (0.4 GB energy only), so a batch of 8
such cells needs ~16 GB; M3GNet at batch 8 peaked at 5 GB. ``--max-rss-gb`` ends the run (exit 3, ``"aborted"`` in
``--out``) before the kernel's OOM killer picks a process on a shared machine.

Usage (from the repository root; the first writes ``/tmp/anchors/chgnet.split.json``, the others reuse it)::

    python benchmarks/potential_anchors.py --anchor chgnet \\
        --frames /work/shared/data/mlearn_unary_1566/mlearn_train.extxyz.gz --epochs 2 --batch-size 2 \\
        --lr 1e-3 --limit 60 --max-rss-gb 8 --out /tmp/anchors/chgnet.json
    python benchmarks/potential_anchors.py --anchor matgl --model m3gnet --split /tmp/anchors/chgnet.split.json \\
        --frames /work/shared/data/mlearn_unary_1566/mlearn_train.extxyz.gz --epochs 2 --batch-size 8 \\
        --lr 1e-3 --limit 120 --max-rss-gb 8 --out /tmp/anchors/m3gnet.json
"""

from __future__ import annotations

import argparse
import copy
import gzip
import io
import json
import os
import random
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
from harness import MB, BenchRun, TreeRss, loadavg, median, print_table, write_json_atomic  # noqa: E402

EV_A3_TO_GPA = 160.21766208  # eV/A^3 -> GPa (CHGNet's and matgl's constant)
EV_A3_TO_KBAR_VASP = -10.0 * EV_A3_TO_GPA  # ASE eV/A^3 (tensile +) -> VASP kBar (compressive +)
MATGL_CUTOFF = 5.0
MATGL_STRESS_WEIGHT = 0.1


# ---------------------------------------------------------------- data and split

def read_frames(path: Path) -> list[Any]:
    """All frames of an extxyz(.gz) with ``ase.io.read(..., ":")``; a .gz is decompressed into memory first."""
    import ase.io

    if path.suffix == ".gz":
        with gzip.open(path, "rt") as f:
            return ase.io.read(io.StringIO(f.read()), ":", format="extxyz")
    return ase.io.read(str(path), ":")


def random_split(n: int, seed: int) -> dict[str, list[int]]:
    """Seeded random 80/10/10 split of ``range(n)``."""
    perm = np.random.default_rng(seed).permutation(n).tolist()
    n_tr, n_va = int(0.8 * n), int(0.1 * n)
    return {"train": perm[:n_tr], "val": perm[n_tr:n_tr + n_va], "test": perm[n_tr + n_va:]}


def check_split(split: dict[str, list[int]], n: int) -> None:
    seen: set[int] = set()
    for k in ("train", "val", "test"):
        if k not in split:
            raise SystemExit(f"split has no {k!r} list")
        for i in split[k]:
            if not (isinstance(i, int) and 0 <= i < n):
                raise SystemExit(f"split[{k!r}] has {i!r}, not a frame index of 0..{n - 1}")
            if i in seen:
                raise SystemExit(f"frame {i} is in the split twice")
            seen.add(i)
    if not split["train"] or not split["val"] or not split["test"]:
        raise SystemExit("train, val and test must each be non-empty")


def limit_split(split: dict[str, list[int]], k: int | None) -> dict[str, list[int]]:
    """``k`` frames in all: the first round(k x share) of each list (val and test at least one each)."""
    total = sum(len(split[s]) for s in ("train", "val", "test"))
    if k is None or k >= total:
        return {s: list(split[s]) for s in ("train", "val", "test")}
    if k < 3:
        raise SystemExit("--limit must be at least 3")
    n_va = max(1, round(k * len(split["val"]) / total))
    n_te = max(1, round(k * len(split["test"]) / total))
    n_tr = k - n_va - n_te
    return {"train": split["train"][:n_tr], "val": split["val"][:n_va], "test": split["test"][:n_te]}


def labels_of(atoms: Any) -> tuple[float, np.ndarray, np.ndarray]:
    """(total energy eV, forces eV/A (n, 3), stress eV/A^3 (3, 3), tensile positive) of one ASE frame."""
    return (float(atoms.get_potential_energy()), np.asarray(atoms.get_forces(), dtype=np.float64),
            np.asarray(atoms.get_stress(voigt=False), dtype=np.float64))


# ---------------------------------------------------------------- our evaluation (both anchors)

def evaluate(preds: list[tuple[float, np.ndarray, np.ndarray]], frames: list[Any]) -> dict[str, Any]:
    """MAEs of ``preds`` (per frame: energy eV/atom, forces eV/A (n, 3), stress GPa (3, 3) tensile positive)
    against the frames' ASE labels, overall and per element (a frame's first symbol: the data are unary)."""
    de: list[float] = []
    df: list[np.ndarray] = []
    ds: list[np.ndarray] = []
    s_pred_diag: list[np.ndarray] = []
    s_true_diag: list[np.ndarray] = []
    by_el: dict[str, dict[str, list[Any]]] = {}
    for (e_pa, f, s), atoms in zip(preds, frames, strict=True):
        e, f_true, s_true = labels_of(atoms)
        n = len(atoms)
        s_true_gpa = s_true * EV_A3_TO_GPA
        f = np.asarray(f, dtype=np.float64).reshape(n, 3)
        s = np.asarray(s, dtype=np.float64).reshape(3, 3)
        err = (abs(float(e_pa) - e / n), np.abs(f - f_true).ravel(), np.abs(s - s_true_gpa).ravel())
        de.append(err[0])
        df.append(err[1])
        ds.append(err[2])
        s_pred_diag.append(np.diag(s))
        s_true_diag.append(np.diag(s_true_gpa))
        el = atoms.get_chemical_symbols()[0]
        d = by_el.setdefault(el, {"e": [], "f": [], "s": []})
        d["e"].append(err[0])
        d["f"].append(err[1])
        d["s"].append(err[2])

    def summary(e: list[float], f: list[np.ndarray], s: list[np.ndarray]) -> dict[str, Any]:
        fa, sa = np.concatenate(f), np.concatenate(s)
        return {"n_frames": len(e), "n_force_components": int(fa.size),
                "energy_mae_mev_atom": 1000 * float(np.mean(e)), "force_mae_mev_A": 1000 * float(np.mean(fa)),
                "stress_mae_gpa": float(np.mean(sa)),
                "energy_rmse_mev_atom": 1000 * float(np.sqrt(np.mean(np.square(e)))),
                "force_rmse_mev_A": 1000 * float(np.sqrt(np.mean(np.square(fa)))),
                "stress_rmse_gpa": float(np.sqrt(np.mean(np.square(sa))))}

    out = summary(de, df, ds)
    pd_, td_ = np.concatenate(s_pred_diag), np.concatenate(s_true_diag)
    # the sign check: a flipped stress convention shows as a negative correlation of the diagonal components
    out["stress_diag_pearson_r"] = float(np.corrcoef(pd_, td_)[0, 1]) if pd_.std() > 0 and td_.std() > 0 else None
    out["by_element"] = {el: summary(d["e"], d["f"], d["s"]) for el, d in sorted(by_el.items())}
    return out


# ---------------------------------------------------------------- CHGNet

def run_chgnet(args: argparse.Namespace, frames: list[Any], split: dict[str, list[int]], work: Path,
               res: dict[str, Any]) -> None:
    from chgnet.data.dataset import StructureData, collate_graphs
    from chgnet.model import CHGNet
    from chgnet.trainer import Trainer
    from pymatgen.io.ase import AseAtomsAdaptor
    from torch.utils.data import DataLoader, SubsetRandomSampler

    t_setup = time.perf_counter()
    order = split["train"] + split["val"] + split["test"]
    adaptor = AseAtomsAdaptor()
    structures, energies, forces, stresses = [], [], [], []
    for i in order:
        e, f, s = labels_of(frames[i])
        structures.append(adaptor.get_structure(frames[i]))
        energies.append(e / len(frames[i]))  # eV/atom
        forces.append(f)  # eV/A
        stresses.append(EV_A3_TO_KBAR_VASP * s)  # kBar, VASP sign: StructureData multiplies by -0.1
    structures_s = time.perf_counter() - t_setup
    # shuffle=False: StructureData's own shuffle permutes its keys, which would break position == our order
    dataset = StructureData(structures=structures, energies=energies, forces=forces, stresses=stresses,
                            magmoms=None, structure_ids=order, shuffle=False)
    n_tr, n_va = len(split["train"]), len(split["val"])
    pos = {"train": list(range(n_tr)), "val": list(range(n_tr, n_tr + n_va)),
           "test": list(range(n_tr + n_va, len(order)))}
    tg = time.perf_counter()
    if args.chgnet_prebuild:
        for p in range(len(order)):
            dataset[p]  # noqa: B018  (functools.cache keeps the graph for the epochs)
    graphs_s = time.perf_counter() - tg if args.chgnet_prebuild else None
    if dataset.failed_idx:  # StructureData silently substitutes a random other frame for a failed graph
        raise SystemExit(f"CHGNet graphs failed for dataset positions {dataset.failed_idx}: "
                         f"{dataset.failed_graph_id}")
    g0, t0 = dataset[0]
    e0, _, s0 = labels_of(frames[order[0]])
    res["checks"] = {
        "graph_ids_match_split": all(int(dataset[p][0].mp_id) == order[p] for p in range(len(order)))
        if args.chgnet_prebuild else None,
        "stress_label_gpa_vs_ase_x160.2": float(np.max(np.abs(t0["s"].numpy() - EV_A3_TO_GPA * s0))),
        "energy_label_vs_ase_per_atom": abs(float(t0["e"]) - e0 / len(frames[order[0]])),
    }
    if res["checks"]["stress_label_gpa_vs_ase_x160.2"] > 1e-3 * max(1.0, float(np.abs(EV_A3_TO_GPA * s0).max())):
        raise SystemExit(f"stress labels inside StructureData are not 160.2 x ASE stress: {res['checks']}")

    tm = time.perf_counter()
    model = CHGNet.load(model_name=args.chgnet_model, use_device="cpu")
    if args.chgnet_freeze == "notebook":
        for layer in [model.atom_embedding, model.bond_embedding, model.angle_embedding, model.bond_basis_expansion,
                      model.angle_basis_expansion, model.atom_conv_layers[:-1], model.bond_conv_layers,
                      model.angle_layers]:
            for p in layer.parameters():
                p.requires_grad = False
    model_s = time.perf_counter() - tm

    def loader(name: str) -> DataLoader:  # what get_train_val_test_loader builds, on our positions
        return DataLoader(dataset, batch_size=args.batch_size, collate_fn=collate_graphs,
                          sampler=SubsetRandomSampler(indices=pos[name]), num_workers=0, pin_memory=False)

    train_loader, val_loader, test_loader = loader("train"), loader("val"), loader("test")
    trainer = Trainer(model=model, targets="efs", optimizer="Adam", scheduler="CosLR", criterion="MSE",
                      epochs=args.epochs, learning_rate=args.lr, use_device="cpu", torch_seed=args.seed,
                      data_seed=args.seed, print_freq=args.print_freq)
    res["setup_s"] = time.perf_counter() - t_setup
    res["setup_breakdown"] = {"structures_labels_s": structures_s, "graphs_s": graphs_s, "model_load_s": model_s}
    res["graphs_s"] = graphs_s
    res["params"] = int(sum(p.numel() for p in model.parameters()))
    res["trainable_params"] = int(sum(p.numel() for p in model.parameters() if p.requires_grad))

    test_graphs = [dataset[p][0] for p in pos["test"]]
    test_frames = [frames[i] for i in split["test"]]

    def predict() -> list[tuple[float, np.ndarray, np.ndarray]]:
        # CHGNet.predict_graph's loop, except that each batch's outputs (which hold the create_graph=True autograd
        # graph CHGNet always builds for forces and stress) are freed before the next batch runs: with
        # predict_graph two batches' graphs are alive at once (about 2 GB per 108-atom cell).
        was_training = model.training
        model.eval()
        out: list[tuple[float, np.ndarray, np.ndarray]] = []
        for b in range(0, len(test_graphs), args.batch_size):
            chunk = test_graphs[b:b + args.batch_size]
            pred = model(chunk, task="efs")
            for k, g in enumerate(chunk):
                n = len(g.atomic_number)
                e = float(pred["e"][k]) if model.is_intensive else float(pred["e"][k]) / n
                out.append((e, pred["f"][k].detach().numpy(), pred["s"][k].detach().numpy()))
            del pred
        model.train(was_training)
        return out

    te = time.perf_counter()
    res["test_epoch0"] = evaluate(predict(), test_frames)
    res["test_epoch0"]["what"] = f"pretrained CHGNet {args.chgnet_model}, before fine-tuning"
    res["eval_s"] = time.perf_counter() - te
    print("epoch-0 (pretrained) test:", _brief(res["test_epoch0"]), flush=True)

    # timing hooks around the Trainer's own per-epoch methods (instance attributes shadow the class methods)
    epochs: list[dict[str, Any]] = []
    ckpt_s: list[float] = []
    last_state: dict[str, Any] = {}
    orig_train, orig_validate, orig_ckpt = trainer._train, trainer._validate, trainer.save_checkpoint

    def _train(train_loader: Any, current_epoch: int, *a: Any, **kw: Any) -> dict:
        t = time.perf_counter()
        out = orig_train(train_loader, current_epoch, *a, **kw)
        epochs.append({"epoch": current_epoch + 1, "train_s": time.perf_counter() - t, "t0": t,
                       "train_mae": dict(out)})
        return out

    def _validate(val_loader: Any, *a: Any, is_test: bool = False, **kw: Any) -> dict:
        t = time.perf_counter()
        out = orig_validate(val_loader, *a, is_test=is_test, **kw)
        if is_test:
            res["trainer_test_s"] = time.perf_counter() - t
        else:
            ep = epochs[-1]
            ep["val_s"] = time.perf_counter() - t
            ep["seconds"] = time.perf_counter() - ep.pop("t0")
            ep["val_mae"] = dict(out)
            last_state["sd"] = copy.deepcopy(model.state_dict())
            print(f"epoch {ep['epoch']}: {ep['seconds']:.1f} s (train {ep['train_s']:.1f}, val {ep['val_s']:.1f});"
                  f" val MAE e {out['e']:.4f} eV/atom f {out['f']:.4f} eV/A s {out['s']:.4f} GPa", flush=True)
        return out

    def save_checkpoint(*a: Any, **kw: Any) -> None:
        t = time.perf_counter()
        orig_ckpt(*a, **kw)
        ckpt_s.append(time.perf_counter() - t)

    trainer._train, trainer._validate, trainer.save_checkpoint = _train, _validate, save_checkpoint
    save_dir = work / "chgnet_trainer"
    tf = time.perf_counter()
    trainer.train(train_loader, val_loader, test_loader, save_dir=str(save_dir),
                  train_composition_model=args.chgnet_train_composition)
    res["fit_wall_s"] = time.perf_counter() - tf
    res["epochs_detail"] = epochs
    res["epochs_run"] = len(epochs)
    res["sec_per_epoch"] = median([e["seconds"] for e in epochs])
    res["checkpoint_s"] = ckpt_s
    res["trainer_files"] = sorted(os.listdir(save_dir)) if save_dir.exists() else []
    hist = trainer.training_history
    res["package_reported_test"] = {
        "what": "Trainer.train's test of the best-validation-energy checkpoint (training_history[k]['test']); "
                "batch means weighted by structures (e), atoms (f, 3 comps each), 3 x structures (s, 3x3)",
        "energy_mae_mev_atom": 1000 * float(hist["e"]["test"]) if hist["e"]["test"] != [] else None,
        "force_mae_mev_A": 1000 * float(hist["f"]["test"]) if hist["f"]["test"] != [] else None,
        "stress_mae_gpa": float(hist["s"]["test"]) if hist["s"]["test"] != [] else None,
    }
    te = time.perf_counter()
    res["test_trainer_model"] = evaluate(predict(), test_frames)  # what train() left in trainer.model: best val E
    res["test_trainer_model"]["what"] = "trainer.model after train(): the checkpoint with the best validation e MAE"
    if last_state:
        model.load_state_dict(last_state["sd"])
    res["test"] = evaluate(predict(), test_frames)
    res["test"]["what"] = "weights after the last epoch"
    res["eval_s"] += time.perf_counter() - te
    res["recipe"] = {"model": f"CHGNet.load({args.chgnet_model!r}) pretrained",
                     "freeze": args.chgnet_freeze, "train_composition_model": args.chgnet_train_composition,
                     "dataset": "StructureData(energies eV/atom, forces eV/A, stresses -1602.18 x ASE (kBar VASP), "
                                "magmoms None, shuffle=False)",
                     "loaders": "DataLoader(collate_graphs, SubsetRandomSampler(split positions)), num_workers 0",
                     "trainer": {"targets": "efs", "optimizer": "Adam", "scheduler": "CosLR (T_max 10 x epochs, "
                                 "stepped 10 x per epoch, eta_min lr/100)", "criterion": "MSE",
                                 "loss_ratios": "e 1, f 1, s 0.1 (Trainer defaults)", "lr": args.lr,
                                 "epochs": args.epochs, "batch_size": args.batch_size}}


# ---------------------------------------------------------------- matgl

def run_matgl(args: argparse.Namespace, frames: list[Any], split: dict[str, list[int]], work: Path,
              res: dict[str, Any]) -> None:
    from functools import partial

    import lightning as L
    import torch
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.loggers import CSVLogger
    from matgl.config import DEFAULT_ELEMENTS
    from matgl.ext.pymatgen import Structure2Graph
    from matgl.graph.data import MGLDataLoader, MGLDataset, collate_fn_pes
    from matgl.models import M3GNet, TensorNet
    from matgl.utils.training import PotentialLightningModule, fit_element_refs
    from pymatgen.io.ase import AseAtomsAdaptor
    from torch.utils.data import Subset

    L.seed_everything(args.seed, workers=True)
    t_setup = time.perf_counter()
    order = split["train"] + split["val"] + split["test"]
    adaptor = AseAtomsAdaptor()
    structures, energies, forces, stresses = [], [], [], []
    for i in order:
        e, f, s = labels_of(frames[i])
        structures.append(adaptor.get_structure(frames[i]))
        energies.append(e)  # eV, total
        forces.append(f.tolist())  # eV/A
        stresses.append((EV_A3_TO_GPA * s).tolist())  # GPa, tensile positive (matgl: "compressive negative")
    structures_s = time.perf_counter() - t_setup
    element_types = DEFAULT_ELEMENTS  # the PES example's choice
    converter = Structure2Graph(element_types=element_types, cutoff=MATGL_CUTOFF)
    tg = time.perf_counter()
    # a fresh root: MGLDataset reuses any cache whose converter fingerprint matches, whatever the structures
    dataset = MGLDataset(structures=structures, converter=converter, include_line_graph=False,
                         labels={"energies": energies, "forces": forces, "stresses": stresses},
                         root=str(work / "mgl_dataset"))
    graphs_s = time.perf_counter() - tg
    _, _, _, lab0 = dataset[0]
    e0, _, s0 = labels_of(frames[order[0]])
    res["checks"] = {"stress_label_gpa_vs_ase_x160.2": float(np.max(np.abs(lab0["stresses"].numpy()
                                                                            - EV_A3_TO_GPA * s0))),
                     "energy_label_vs_ase_total": abs(float(lab0["energies"]) - e0)}
    n_tr, n_va = len(split["train"]), len(split["val"])
    train, val, test = (Subset(dataset, range(0, n_tr)), Subset(dataset, range(n_tr, n_tr + n_va)),
                        Subset(dataset, range(n_tr + n_va, len(order))))
    collate = partial(collate_fn_pes, include_line_graph=False, include_stress=True)
    train_loader, val_loader, test_loader = MGLDataLoader(train_data=train, val_data=val, test_data=test,
                                                          collate_fn=collate, batch_size=args.batch_size,
                                                          num_workers=0)
    tr = time.perf_counter()
    element_refs = None
    if args.matgl_element_refs == "fit":  # least squares on the TRAIN frames only
        element_refs = fit_element_refs(structures[:n_tr], energies[:n_tr], element_types)
    refs_s = time.perf_counter() - tr
    if args.model == "m3gnet":
        model = M3GNet(element_types=element_types, is_intensive=False, cutoff=MATGL_CUTOFF)
    else:
        model = TensorNet(element_types=element_types, is_intensive=False, cutoff=MATGL_CUTOFF)
    lit = PotentialLightningModule(model=model, element_refs=element_refs, lr=args.lr, include_line_graph=False,
                                   stress_weight=MATGL_STRESS_WEIGHT)
    res["setup_s"] = time.perf_counter() - t_setup
    res["setup_breakdown"] = {"structures_labels_s": structures_s, "graphs_s": graphs_s, "element_refs_s": refs_s}
    res["graphs_s"] = graphs_s
    res["params"] = int(sum(p.numel() for p in model.parameters()))
    res["trainable_params"] = int(sum(p.numel() for p in model.parameters() if p.requires_grad))
    if element_refs is not None:
        res["element_refs_fitted"] = {el: float(element_refs[k]) for k, el in enumerate(element_types)
                                      if any(el == s.species[0].symbol for s in structures[:n_tr])}
    test_frames = [frames[i] for i in split["test"]]

    def predict() -> list[tuple[float, np.ndarray, np.ndarray]]:
        pot = lit.model
        was_training = pot.training
        pot.eval()
        out: list[tuple[float, np.ndarray, np.ndarray]] = []
        with torch.enable_grad():
            for g, lat, state_attr, *_ in test_loader:
                e, f, s, _h = pot(g=g, lat=lat, state_attr=state_attr)
                n_at = torch.bincount(g.batch, minlength=int(g.num_graphs)).tolist()
                e, f, s = e.detach().reshape(-1), f.detach().numpy(), s.detach().numpy().reshape(-1, 3, 3)
                start = 0
                for k, n in enumerate(n_at):
                    out.append((float(e[k]) / n, f[start:start + n], s[k]))
                    start += n
        pot.train(was_training)
        return out

    te = time.perf_counter()
    res["test_epoch0"] = evaluate(predict(), test_frames)
    res["test_epoch0"]["what"] = "random initialisation + fitted element references, before training"
    res["eval_s"] = time.perf_counter() - te
    print("epoch-0 (untrained) test:", _brief(res["test_epoch0"]), flush=True)

    epochs: list[dict[str, Any]] = []

    class Times(Callback):
        def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
            self.t = time.perf_counter()

        def on_validation_epoch_start(self, trainer: Any, module: Any) -> None:
            self.tv = time.perf_counter()

        def on_validation_epoch_end(self, trainer: Any, module: Any) -> None:
            if not trainer.sanity_checking:
                self.val_s = time.perf_counter() - self.tv

        def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
            m = {k: float(v) for k, v in trainer.callback_metrics.items()
                 if k.startswith(("train_", "val_")) and k.endswith("MAE") and "Magmom" not in k and "Charge" not in k}
            ep = {"epoch": trainer.current_epoch + 1, "seconds": time.perf_counter() - self.t,
                  "val_s": getattr(self, "val_s", None), "metrics": m}
            epochs.append(ep)
            print(f"epoch {ep['epoch']}: {ep['seconds']:.1f} s (val {ep['val_s'] or 0:.1f}); val MAE "
                  f"e {m.get('val_Energy_MAE', float('nan')):.4f} eV/atom f {m.get('val_Force_MAE', float('nan')):.4f}"
                  f" eV/A s {m.get('val_Stress_MAE', float('nan')):.4f} GPa", flush=True)

    trainer = L.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1, inference_mode=False,
                        logger=CSVLogger(str(work / "logs"), name="matgl"), default_root_dir=str(work),
                        callbacks=[Times()], enable_progress_bar=False)
    tf = time.perf_counter()
    trainer.fit(model=lit, train_dataloaders=train_loader, val_dataloaders=val_loader)
    res["fit_wall_s"] = time.perf_counter() - tf
    tt = time.perf_counter()
    scores = trainer.test(lit, dataloaders=test_loader, verbose=False)
    res["trainer_test_s"] = time.perf_counter() - tt
    sc = scores[0] if scores else {}
    res["package_reported_test"] = {
        "what": "lightning trainer.test(lit) of the last epoch; PotentialLightningModule's batch metrics averaged "
                "with weights = structures per batch (f and s too)",
        "energy_mae_mev_atom": 1000 * float(sc["test_Energy_MAE"]) if "test_Energy_MAE" in sc else None,
        "force_mae_mev_A": 1000 * float(sc["test_Force_MAE"]) if "test_Force_MAE" in sc else None,
        "stress_mae_gpa": float(sc["test_Stress_MAE"]) if "test_Stress_MAE" in sc else None,
    }
    res["epochs_detail"] = epochs
    res["epochs_run"] = len(epochs)
    res["sec_per_epoch"] = median([e["seconds"] for e in epochs])
    te = time.perf_counter()
    res["test"] = evaluate(predict(), test_frames)
    res["test"]["what"] = "weights after the last epoch"
    res["eval_s"] += time.perf_counter() - te
    res["recipe"] = {"model": f"{args.model} from scratch, matgl defaults, element_types DEFAULT_ELEMENTS, "
                              f"is_intensive False, cutoff {MATGL_CUTOFF}",
                     "element_refs": args.matgl_element_refs + (" (fit_element_refs on the train frames' total "
                                                                "energies)" if element_refs is not None else ""),
                     "dataset": "MGLDataset(energies eV total, forces eV/A, stresses 160.2 x ASE (GPa, tensile +))",
                     "loaders": "MGLDataLoader over Subsets, collate_fn_pes(include_stress=True), num_workers 0",
                     "module": {"stress_weight": MATGL_STRESS_WEIGHT, "energy_weight": 1.0, "force_weight": 1.0,
                                "loss": "mse_loss", "optimizer": "Adam (eps 1e-8)",
                                "scheduler": "CosineAnnealingLR(T_max=decay_steps 1000, eta_min lr x 0.01) stepped "
                                             "per epoch", "include_line_graph": False, "lr": args.lr},
                     "trainer": {"max_epochs": args.epochs, "accelerator": "cpu", "inference_mode": False,
                                 "batch_size": args.batch_size}}


# ---------------------------------------------------------------- main

def rss_guard(limit_gb: float, out: Path, cleanup: list[Path]) -> None:
    """A thread that ends this process (exit status 3) when its RSS passes ``limit_gb``, before the kernel's OOM
    killer picks a victim on a shared machine (CHGNet's efs training holds about 2 GB per 108-atom cell on CPU)."""
    import threading

    import psutil

    proc, limit = psutil.Process(), limit_gb * 2**30

    def watch() -> None:
        while True:
            rss = proc.memory_info().rss
            if rss > limit:
                msg = f"RSS {rss / 2**30:.2f} GB passed --max-rss-gb {limit_gb}: aborted"
                print(msg, file=sys.stderr, flush=True)
                try:
                    rec = json.loads(out.read_text()) if out.exists() else {}
                    rec["aborted"] = msg
                    write_json_atomic(out, rec)
                finally:
                    for p in cleanup:  # os._exit skips BenchRun's removal of its temporary workdir
                        shutil.rmtree(p, ignore_errors=True)
                    os._exit(3)
            time.sleep(0.1)

    threading.Thread(target=watch, daemon=True).start()


def _brief(r: dict[str, Any]) -> str:
    return (f"E {r['energy_mae_mev_atom']:.1f} meV/atom, F {r['force_mae_mev_A']:.1f} meV/A, "
            f"S {r['stress_mae_gpa']:.3f} GPa (diag r {r['stress_diag_pearson_r']})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--anchor", required=True, choices=["chgnet", "matgl"])
    ap.add_argument("--frames", required=True, type=Path, help="extxyz or extxyz.gz with energy, forces, stress")
    ap.add_argument("--split", type=Path, default=None, help='JSON {"train": [...], "val": [...], "test": [...]}')
    ap.add_argument("--epochs", type=int, required=True)
    ap.add_argument("--batch-size", type=int, required=True)
    ap.add_argument("--lr", type=float, required=True)
    ap.add_argument("--out", type=Path, required=True, help="the result JSON")
    ap.add_argument("--model", default=None, choices=["m3gnet", "tensornet"], help="matgl model (default m3gnet)")
    ap.add_argument("--limit", type=int, default=None, help="use this many frames of the split in all")
    ap.add_argument("--seed", type=int, default=0, help="random split, torch, python and numpy seeds")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: leave torch's default)")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the package's files here (default: temp, "
                                                                 "removed at the end)")
    ap.add_argument("--chgnet-model", default="0.3.0", help="CHGNet.load(model_name=...)")
    ap.add_argument("--chgnet-freeze", default="none", choices=["none", "notebook"],
                    help="'notebook': freeze the layers the fine-tuning notebook's optional cell freezes")
    ap.add_argument("--chgnet-train-composition", action="store_true",
                    help="trainer.train(train_composition_model=True): also fit the AtomRef")
    ap.add_argument("--no-chgnet-prebuild", dest="chgnet_prebuild", action="store_false",
                    help="leave CHGNet's graphs to be built lazily in the first epoch")
    ap.add_argument("--print-freq", type=int, default=100, help="CHGNet Trainer print_freq")
    ap.add_argument("--matgl-element-refs", default="fit", choices=["fit", "none"])
    ap.add_argument("--max-rss-gb", type=float, default=0.0,
                    help="abort (exit 3, 'aborted' in --out) when this process's RSS passes this; 0: no limit")
    args = ap.parse_args(argv)
    if args.anchor == "chgnet" and args.model not in (None, "chgnet"):
        ap.error("--model is for --anchor matgl")
    if args.anchor == "matgl" and args.model is None:
        args.model = "m3gnet"

    mon = TreeRss(os.getpid())
    mon.__enter__()
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    model_name = f"chgnet-{args.chgnet_model}" if args.anchor == "chgnet" else args.model
    run = BenchRun(str(args.out), str(args.workdir) if args.workdir else None, "ck-anchors-",
                   benchmark="potential_anchors", anchor=args.anchor, model=model_name, frames=str(args.frames),
                   epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, limit=args.limit, seed=args.seed,
                   torch_threads=torch.get_num_threads())
    res = run.results
    if args.max_rss_gb > 0:
        rss_guard(args.max_rss_gb, args.out, [] if args.workdir else [run.workdir])
    with run:
        res["loadavg_start"] = loadavg()
        t = time.perf_counter()
        frames = read_frames(args.frames)
        res["read_s"] = time.perf_counter() - t
        res["n_frames_file"] = len(frames)
        if args.split is None:
            full = random_split(len(frames), args.seed)
            split_path = args.out.with_name(args.out.stem + ".split.json")
            write_json_atomic(split_path, full)
            res["split_written"] = str(split_path)
        else:
            full = json.loads(args.split.read_text())
            split_path = args.split
        check_split(full, len(frames))
        split = limit_split(full, args.limit)
        res["split_file"] = str(split_path)
        res["split_used"] = split
        for k in ("train", "val", "test"):
            res[f"n_{k}"] = len(split[k])
            res[f"n_atoms_{k}"] = int(sum(len(frames[i]) for i in split[k]))
        print(f"{args.anchor} {model_name}: {res['n_train']}/{res['n_val']}/{res['n_test']} frames "
              f"(train/val/test) of {len(frames)} in {args.frames.name}, read in {res['read_s']:.1f} s", flush=True)
        run.save()
        (run_chgnet if args.anchor == "chgnet" else run_matgl)(args, frames, split, run.workdir, res)
        mon.__exit__(None, None, None)
        res["peak_rss_bytes_getrusage"] = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        res["peak_rss_bytes_psutil_sampled"] = int(mon.peak_rss)
        res["peak_rss_mb"] = {"getrusage": res["peak_rss_bytes_getrusage"] / MB,
                              "psutil_sampled": mon.peak_rss / MB}
        res["loadavg_end"] = loadavg()
        rows = []
        for key in ("test_epoch0", "test_trainer_model", "test"):
            if key in res:
                r = res[key]
                rows.append([key, r["energy_mae_mev_atom"], r["force_mae_mev_A"], r["stress_mae_gpa"],
                             r["stress_diag_pearson_r"], r["what"]])
        p = res.get("package_reported_test", {})
        rows.append(["package_reported_test", p.get("energy_mae_mev_atom"), p.get("force_mae_mev_A"),
                     p.get("stress_mae_gpa"), "", p.get("what", "")[:60]])
        print_table(f"{args.anchor} {model_name}: test MAE ({res['n_test']} frames)",
                    ["weights", "E meV/atom", "F meV/A", "S GPa", "S diag r", "what"], rows)
        print_table(f"{args.anchor} {model_name}: cost",
                    ["n train/val/test", "epochs", "s/epoch (median)", "setup s", "graphs s", "fit wall s",
                     "peak RSS MB (getrusage)", "peak RSS MB (psutil)"],
                    [[f"{res['n_train']}/{res['n_val']}/{res['n_test']}", res["epochs_run"], res["sec_per_epoch"],
                      res["setup_s"], res["graphs_s"] if res["graphs_s"] is not None else "lazy", res["fit_wall_s"],
                      res["peak_rss_mb"]["getrusage"], res["peak_rss_mb"]["psutil_sampled"]]])
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
