"""The authors' ComFormer (divelab/AIRS ``OpenMat/ComFormer``, ICLR 2024) trained by the authors' own code on a
given train/val/test split, for bench_accuracy.py's ``comformer-ref`` contender.

What runs, all of it the checkout's code, imported from ``--repo`` (nothing of it is copied or edited):

* ``comformer.train.train_main(config)``: their whole training recipe as ``train_mp.py`` / ``train_props.py``
  configure it: AdamW (lr 1e-3, weight_decay 1e-5, no decay on bias/norm params: ``group_decay``), OneCycleLR
  (max_lr = lr, pct_start 0.3, stepped every iteration), MSE loss on standardised targets, batch size 64, their
  ignite ``create_supervised_trainer`` / evaluator (val MAE every epoch, ``best_model_*neg_mae*`` checkpoints),
  ``ignite.utils.manual_seed(seed)`` + deterministic engine.
* their data path, ``comformer.data.get_train_val_loaders``: ``load_pyg_graphs`` (pandarallel ``parallel_apply``
  of ``PygGraph.atom_dgl_multigraph``: k-nearest, ``max_neighbors=25``, ``cutoff=4.0``, ``use_lattice=True``,
  ``use_canonize=True``, ``use_angle=False``), ``PygStructureDataset`` (CGCNN 92-d atom features; targets
  standardised by the training split's ``np.mean`` / ``np.std``), ``collate_line_graph`` loaders (train and val
  ``drop_last=True``, test batch 1).
* their model, ``comformer.models.comformer.iComformer(iComformerConfig)`` (or ``eComformer``, which needs e3nn).

The ONE thing changed in their flow: ``get_train_val_loaders`` is called (by their ``train_main``) with
``dataset_array=`` our records in train+val+test order and ``keep_data_order=True``, ``n_train/n_val/n_test`` = the
given split's sizes, so their ``get_id_train_val_test`` slices exactly the given split (the driver checks the ids
they write to ``ids_train_val_test.json``) instead of a random split of a jarvis/megnet download. Settings that are
not data-dependent are train_props.py's except ``num_workers=0`` (their megnet setting is 8 loader workers; the
loaders only collate precomputed graphs, and on 2 shared cores extra workers only add processes).

Compat shims, applied at runtime inside the driver process (their files are never edited):

1. ``pydantic``: their ``comformer/utils.py`` needs pydantic v1 (``from pydantic import BaseSettings``,
   ``pydantic.typing.Literal``, ``root_validator``, ``config.dict()``). With pydantic v2 installed the driver maps
   ``sys.modules["pydantic"]`` -> ``pydantic.v1`` and ``sys.modules["pydantic.typing"]`` -> ``pydantic.v1.typing``
   (after torch / torch_geometric / jarvis / pandas / sklearn / ignite are imported, so they keep v2).
2. ``torch_scatter`` (not installable here without a compiler): a stand-in module written next to the driver,
   registered in ``sys.modules`` AFTER torch_geometric is imported (so PyG does not think it has torch_scatter),
   with TorchScript-compatible ``scatter`` (sum/add/mean/max/min/mul, torch_scatter's broadcasting and its
   zero-fill of empty groups), ``segment_csr`` and ``gather_csr`` (needed because their ``models/utils.py``
   ``torch.jit.script``-compiles ``softmax``, which no model calls). Used for real: the mean readout and
   ``TensorProductConvLayer``'s mean aggregation (eComformer).
3. ``torch_sparse``: ``models/transformer.py`` imports ``SparseTensor`` and never uses it; a module with an empty
   ``SparseTensor`` class is put in ``sys.modules`` (after PyG is imported, for the same reason).
4. ``comforemr``: ``models/transformer.py`` does ``from comforemr.models.utils import softmax`` (a typo of the
   package name, present at divelab/AIRS HEAD): ``comforemr``, ``comforemr.models``, ``comforemr.models.utils``
   are aliased to the ``comformer`` modules.
5. ``MatformerConv``: ``ComformerConv.__init__`` calls ``super(MatformerConv, self)`` (the class was renamed from
   Matformer's; the name is undefined at HEAD, NameError on construction): the driver sets
   ``comformer.models.transformer.MatformerConv = ComformerConv``, which is what the call means.
6. pandarallel 1.6.5 does not import with pandas 3 (``ExpandingGroupby``), so the venv pins ``pandas<3``
   (2.3.3; numpy, torch, pymatgen, jarvis are the system ones). No shim: their ``parallel_apply`` runs.
7. ``pytorch-ignite`` (0.5.5), ``pandarallel`` (1.6.5), ``e3nn`` (0.6.0) are pip-installed (pure Python) into the
   venv ``/tmp/refs/venv-comformer`` (``python -m venv --system-site-packages``); see ``ensure_venv``.

Instrumentation only (no effect on what is computed): ``comformer.train.get_train_val_loaders``,
``create_supervised_trainer`` and ``iComformer`` / ``eComformer`` are wrapped to time the graph build, time each
epoch (ignite EPOCH_STARTED / COMPLETED handlers) and keep a handle on the model. After ``train_main`` returns
(it has already run its own test loop on the last-epoch weights and printed "Test MAE"), the driver predicts the
test set with (a) those last-epoch weights and (b) their best-validation checkpoint ``best_model_<epoch>_neg_mae=
<score>.pt`` (bench_accuracy's convention: every contender tests its best-validation weights): ``test_mae`` is
(b), ``test_mae_last_epoch`` is (a), which is the number their script prints.

Things in their code to know when reading results:

* ``iComformer.forward`` uses exactly ``att_layers[0..3]`` (one edge update after the first): ``conv_layers`` < 4
  raises IndexError, > 4 builds unused layers; eComformer uses ``att_layers[0..2]``. A reduced config can shrink
  widths (``node_features``, ``fc_features``, ``edge_features`` / ``triplet_input_features`` = RBF bins), not depth.
* val loader ``drop_last=True`` with batch 64: the validation MAE (and so the best epoch) is over the first
  ``64 * (n_val // 64)`` val structures; n_val < batch_size is refused here (their evaluator would fail).
* train loader ``drop_last=True``: ``n_train % 64`` random structures are skipped each epoch.
* their ``train_main`` runs an extra full pass over the training set every 20th epoch (train MAE for the log);
  it is part of their wall time, as are the ignite checkpoints it writes every epoch.
* ``seconds.graph_build`` is their ``load_pyg_graphs`` (pandarallel forks one worker per core); the tree RSS
  counts those forks' shared pages once per process, ``peak_tree_pss_mb`` does not.

Parameter counts (trainable; their classes and config defaults, colab_kit's ``SPEC.build``):

==========================================  ==========  ==========================================  ==========
reference                                       params  colab_kit                                       params
==========================================  ==========  ==========================================  ==========
iComformer, defaults (256 wide)              4,966,497  comformer, defaults                          4,899,073
iComformer, ``node_features=64`` (REDUCED)     357,345  ``hidden=64``                                  352,705
eComformer, defaults                         5,583,809  ``variant=equivariant``                      5,590,465
==========================================  ==========  ==========================================  ==========

The differences are all in the atom input and in two unused modules: the reference embeds the 92 CGCNN features
with ``Linear(92, C)`` where colab_kit has ``Embedding(119, C)``, and its ``ComformerConv_edge`` builds
``lin_edge_len`` (``Linear(C + 32, C)``) and ``lemb`` (``Embedding(3, 32)``) that its forward never uses
(256 wide: 23,808 + 73,984 + 96 - 30,464 = 67,424; 64 wide: 5,952 + 6,208 + 96 - 7,616 = 4,640; eComformer:
23,808 - 30,464 = -6,656). All 64 wide (``edge_features`` / ``triplet_input_features`` / ``fc_features`` = 64
too): 320,097.

Call::

    from ref_comformer import run_comformer_ref
    res = run_comformer_ref("/tmp/refs/airs/OpenMat/ComFormer", {"train": [(id, Structure, y), ...], "val": ...,
                            "test": ...}, epochs=30, seed=0, run_dir=Path("/tmp/x"),
                            config_overrides={"node_features": 64, "fc_features": 64})
    res["test_mae"], res["seconds"], res["peak_tree_rss_mb"], res["params"], res["predictions"]["test"]

Smoke / parameter counts::

    python benchmarks/ref_comformer.py --repo /tmp/refs/airs/OpenMat/ComFormer --smoke
    python benchmarks/ref_comformer.py --repo /tmp/refs/airs/OpenMat/ComFormer --params [--set node_features=64]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
VENV = Path("/tmp/refs/venv-comformer")
VENV_PACKAGES = ["pytorch-ignite==0.5.5", "pandarallel==1.6.5", "e3nn==0.6.0", "pandas<3"]
SMOKE_DATA = REPO_ROOT / "colab_kit" / "data" / "mp_eform_cgcnn_3000_matbench.json.gz"
# train_mp.py / train_jarvis.py -> train_props.train_prop_model(...) -> train.train_main(config)
REF_TRAINING = {"learning_rate": 0.001, "batch_size": 64, "weight_decay": 1e-05, "criterion": "mse",
                "optimizer": "adamw", "scheduler": "onecycle", "atom_features": "cgcnn", "max_neighbors": 25,
                "cutoff": 4.0, "use_lattice": True, "use_angle": False, "pyg_input": True,
                "neighbor_strategy": "k-nearest", "use_canonize": True, "save_dataloader": False,
                "pin_memory": False, "write_predictions": True, "dataset": "megnet", "id_tag": "id",
                "target": "target"}
# a labelled reduced size for CPU runs, the one colab_kit's ``--set hidden=64`` builds (colab_kit keeps 256 RBF bins
# and fc 256 too): 357,345 parameters here, 352,705 in colab_kit. iComformer's depth is fixed by its forward
# (4 node layers + 1 edge layer), so a reduced config cannot have fewer layers.
REDUCED = {"node_features": 64}
CEILING = 64 * 1024**3

TORCH_SCATTER_SHIM = '''"""Stand-in for torch_scatter (written by benchmarks/ref_comformer.py): the functions ComFormer imports,
TorchScript-compatible (their models/utils.py jit-scripts a softmax that calls them)."""
from typing import Optional

import torch


def _broadcast(index: torch.Tensor, src: torch.Tensor, dim: int) -> torch.Tensor:
    if index.dim() == 1:
        for _ in range(0, dim):
            index = index.unsqueeze(0)
    for _ in range(index.dim(), src.dim()):
        index = index.unsqueeze(-1)
    return index.expand_as(src)


def scatter(src: torch.Tensor, index: torch.Tensor, dim: int = -1, out: Optional[torch.Tensor] = None,
            dim_size: Optional[int] = None, reduce: str = "sum") -> torch.Tensor:
    if dim < 0:
        dim = src.dim() + dim
    idx = _broadcast(index, src, dim)
    if dim_size is None:
        if out is not None:
            dim_size = out.size(dim)
        elif index.numel() == 0:
            dim_size = 0
        else:
            dim_size = int(index.max()) + 1
    size = list(src.size())
    size[dim] = dim_size
    if reduce == "sum" or reduce == "add":
        base = torch.zeros(size, dtype=src.dtype, device=src.device) if out is None else out
        return base.scatter_add_(dim, idx, src)
    if reduce == "mean":
        total = torch.zeros(size, dtype=src.dtype, device=src.device).scatter_add_(dim, idx, src)
        count = torch.zeros(size, dtype=src.dtype, device=src.device).scatter_add_(dim, idx, torch.ones_like(src))
        total = total / count.clamp(min=1)
        if out is not None:
            return out.copy_(total)
        return total
    if reduce == "max" or reduce == "min" or reduce == "mul":
        op = "amax" if reduce == "max" else ("amin" if reduce == "min" else "prod")
        res = torch.zeros(size, dtype=src.dtype, device=src.device).scatter_reduce(dim, idx, src, op,
                                                                                   include_self=False)
        if out is not None:
            return out.copy_(res)
        return res
    raise ValueError("torch_scatter stand-in: unsupported reduce " + reduce)


def _segment_index(indptr: torch.Tensor) -> torch.Tensor:
    ptr = indptr.reshape(-1)
    counts = ptr[1:] - ptr[:-1]
    return torch.repeat_interleave(torch.arange(counts.numel(), device=ptr.device), counts)


def segment_csr(src: torch.Tensor, indptr: torch.Tensor, out: Optional[torch.Tensor] = None,
                reduce: str = "sum") -> torch.Tensor:
    dim = indptr.dim() - 1
    n = indptr.reshape(-1).numel() - 1
    return scatter(src, _segment_index(indptr), dim, out, n, reduce)


def gather_csr(src: torch.Tensor, indptr: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    dim = indptr.dim() - 1
    ptr = indptr.reshape(-1)
    return torch.repeat_interleave(src, ptr[1:] - ptr[:-1], dim=dim)
'''

DRIVER = r'''"""Drives the authors' ComFormer (divelab/AIRS OpenMat/ComFormer) on a given split (written by
benchmarks/ref_comformer.py; see its docstring for the shims and what is instrumented)."""
import functools, glob, importlib.util, json, os, re, sys, time, types

T0 = time.perf_counter()
cfg = json.load(open(sys.argv[1]))
os.environ.setdefault("MPLBACKEND", "Agg")
os.makedirs(cfg["workdir"], exist_ok=True)
os.chdir(cfg["workdir"])  # their loaders test for ./sample_*.data; train_main writes to output_dir
sys.path.insert(0, cfg["repo"])
SHIMS = []

# ---- imports that must see the real (v2) pydantic and no torch_scatter / torch_sparse
import numpy  # noqa: F401
import torch
import torch_geometric, torch_geometric.typing, torch_geometric.data, torch_geometric.nn  # noqa: F401
import pandas, sklearn.metrics, ignite, ignite.engine  # noqa: F401
import jarvis.core.atoms, jarvis.core.specie  # noqa: F401
from jarvis.core.atoms import Atoms

# ---- shim 1: pydantic v1 API
import pydantic
if int(pydantic.VERSION.split(".")[0]) >= 2:
    import pydantic.v1, pydantic.v1.typing
    sys.modules["pydantic"] = pydantic.v1
    sys.modules["pydantic.typing"] = pydantic.v1.typing
    SHIMS.append(f"pydantic -> pydantic.v1 (installed {pydantic.VERSION})")

# ---- shim 2: torch_scatter stand-in (a file: torch.jit.script needs the source)
try:
    import torch_scatter  # noqa: F401
    SHIMS.append("torch_scatter: real")
except ImportError:
    spec = importlib.util.spec_from_file_location("torch_scatter", cfg["torch_scatter_shim"])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["torch_scatter"] = mod
    spec.loader.exec_module(mod)
    SHIMS.append("torch_scatter -> stand-in (scatter, segment_csr, gather_csr)")

# ---- shim 3: torch_sparse.SparseTensor (imported, unused)
try:
    import torch_sparse  # noqa: F401
    SHIMS.append("torch_sparse: real")
except ImportError:
    ts = types.ModuleType("torch_sparse")
    class SparseTensor:  # noqa: D401
        """Placeholder: models/transformer.py imports it and never uses it."""
    ts.SparseTensor = SparseTensor
    sys.modules["torch_sparse"] = ts
    SHIMS.append("torch_sparse -> placeholder SparseTensor")

# ---- e3nn (transformer.py imports o3 at the top; only eComformer uses it)
try:
    import e3nn.o3  # noqa: F401
    E3NN = True
except ImportError:
    E3NN = False
    e3 = types.ModuleType("e3nn"); e3.o3 = types.ModuleType("e3nn.o3")
    sys.modules["e3nn"], sys.modules["e3nn.o3"] = e3, e3.o3
    SHIMS.append("e3nn missing -> empty e3nn.o3 (eComformer unavailable)")

# ---- shim 4: the 'comforemr' typo in models/transformer.py
import comformer, comformer.models, comformer.models.utils
sys.modules["comforemr"] = comformer
sys.modules["comforemr.models"] = comformer.models
sys.modules["comforemr.models.utils"] = comformer.models.utils
SHIMS.append("comforemr(.models.utils) -> comformer aliases")

# ---- shim 5: super(MatformerConv, self) in ComformerConv.__init__
import comformer.models.transformer as tr
if not hasattr(tr, "MatformerConv"):
    tr.MatformerConv = tr.ComformerConv
    SHIMS.append("comformer.models.transformer.MatformerConv = ComformerConv")

from comformer.models.comformer import iComformer, eComformer, iComformerConfig, eComformerConfig
from comformer.config import TrainingConfig

name = cfg["model"]
model_cls, model_cfg_cls = {"iComformer": (iComformer, iComformerConfig),
                            "eComformer": (eComformer, eComformerConfig)}[name]
if name == "eComformer" and not E3NN:
    sys.exit("eComformer needs e3nn, which is not importable")
model_cfg = {"name": name}
train_cfg = dict(cfg["training"])
for k, v in cfg["overrides"].items():
    if k in model_cfg_cls.__fields__:
        model_cfg[k] = v
    elif k in TrainingConfig.__fields__:
        train_cfg[k] = v
    else:
        sys.exit(f"config override {k!r} is neither an {model_cfg_cls.__name__} nor a TrainingConfig field")
min_layers = 4 if name == "iComformer" else 3
if model_cfg.get("conv_layers", min_layers) < min_layers:
    sys.exit(f"{name}.forward indexes att_layers[0..{min_layers - 1}]: conv_layers must be >= {min_layers}")


def n_params(net):
    return int(sum(p.numel() for p in net.parameters() if p.requires_grad))


if cfg["mode"] == "params":
    tc = TrainingConfig(**{**train_cfg, "model": model_cfg})
    net = model_cls(tc.model)
    json.dump({"params": n_params(net), "model_config": tc.model.dict(), "shims": SHIMS}, open(cfg["result"], "w"))
    sys.exit(0)

# ---- records in train + val + test order: their get_id_train_val_test with keep_data_order slices this split
split = json.load(open(cfg["data"]))
records = []
for part in ("train", "val", "test"):
    for r in split[part]:
        atoms = Atoms(lattice_mat=r["lattice"], coords=r["frac_coords"], elements=r["species"], cartesian=False)
        records.append({"id": r["id"], "atoms": atoms.to_dict(), "target": float(r["target"])})
n = {part: len(split[part]) for part in ("train", "val", "test")}
batch_size = train_cfg.get("batch_size", 64)
if n["val"] < batch_size or n["train"] < batch_size:
    sys.exit(f"their train/val loaders drop_last: need >= batch_size={batch_size} train and val structures, got {n}")
out_dir = os.path.join(cfg["workdir"], "ref_out")
config = {**train_cfg, "epochs": cfg["epochs"], "random_seed": cfg["seed"], "n_train": n["train"],
          "n_val": n["val"], "n_test": n["test"], "keep_data_order": True, "output_dir": out_dir,
          "model": model_cfg}

import comformer.train as ct
import comformer.data as cd
from ignite.engine import Events

CAP = {"epoch_start": [], "events": []}
_orig_loaders = cd.get_train_val_loaders


@functools.wraps(_orig_loaders)
def loaders_with_our_split(**kw):
    t = time.perf_counter()
    res = _orig_loaders(dataset_array=records, **kw)
    CAP["graph_s"] = time.perf_counter() - t
    CAP["loaders"] = res
    return res


ct.get_train_val_loaders = loaders_with_our_split
_orig_trainer = ct.create_supervised_trainer


def timed_trainer(*a, **kw):
    trainer = _orig_trainer(*a, **kw)
    trainer.add_event_handler(Events.STARTED, lambda e: CAP.__setitem__("train_t0", time.perf_counter()))
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: CAP["epoch_start"].append(time.perf_counter()))
    trainer.add_event_handler(Events.COMPLETED, lambda e: CAP.__setitem__("train_t1", time.perf_counter()))
    CAP["trainer"] = trainer
    return trainer


ct.create_supervised_trainer = timed_trainer


def capture(cls):
    def make(c):
        net = cls(c)
        CAP["net"] = net
        return net
    return make


ct.iComformer, ct.eComformer = capture(iComformer), capture(eComformer)

t_main = time.perf_counter()
history = ct.train_main(config)
t_end_main = time.perf_counter()
CAP["train_t1"] = CAP.get("train_t1", t_end_main)  # COMPLETED fires after the last epoch's validation
their_test_s = t_end_main - CAP["train_t1"]

train_loader, val_loader, test_loader, prepare_batch, mean_train, std_train = CAP["loaders"]
written = json.load(open(os.path.join(out_dir, "ids_train_val_test.json")))
for part, key in (("train", "id_train"), ("val", "id_val"), ("test", "id_test")):
    if list(written[key]) != [r["id"] for r in split[part]]:
        sys.exit(f"their {key} differs from the given {part} split")
net = CAP["net"]
mean_train, std_train = float(mean_train), float(std_train)


def predict(dataset, bs):
    from torch.utils.data import DataLoader
    loader = DataLoader(dataset, batch_size=bs, shuffle=False, collate_fn=dataset.collate_line_graph)
    net.eval()
    out = []
    with torch.no_grad():
        for g, lg, lat, _ in loader:
            out.extend(torch.atleast_1d(net([g, lg, lat])).reshape(-1).tolist())
    ids = list(dataset.ids)
    targets = (dataset.labels * std_train + mean_train).tolist()
    return {i: [float(t), float(p) * std_train + mean_train] for i, t, p in zip(ids, targets, out)}


te = time.perf_counter()
test_last = predict(test_loader.dataset, 1)   # their test loop: batch 1, last-epoch weights
best_files = []
for f in glob.glob(os.path.join(out_dir, "best_model_*neg_mae=*.pt")):
    m = re.search(r"best_model_(\d+)_neg_mae=(-?[0-9.eE+-]+?)\.pt$", os.path.basename(f))
    if m:
        best_files.append((float(m.group(2)), int(m.group(1)), f))
score, best_epoch, best_file = max(best_files)
state = torch.load(best_file, map_location="cpu")  # ignite saves a lone object's state_dict as is
net.load_state_dict(state["model"] if isinstance(state.get("model"), dict) else state)
test_best = predict(test_loader.dataset, 1)
preds = {"test": test_best}
for part in cfg["predict_splits"]:
    if part == "val":
        preds["val"] = predict(val_loader.dataset, batch_size)
    elif part == "train":
        preds["train"] = predict(train_loader.dataset, batch_size)
eval_s = time.perf_counter() - te

starts = CAP["epoch_start"] + [CAP["train_t1"]]
val_mae = history["validation"]["mae"]
hist = [{"epoch": k + 1, "val_mae": float(val_mae[k]), "seconds": starts[k + 1] - starts[k]}
        for k in range(len(val_mae))]
json.dump({
    "test": test_best, "test_last_epoch": test_last, "predictions": preds, "history": hist,
    "best_epoch": best_epoch, "best_val_mae": -score, "best_file": os.path.basename(best_file),
    "params": n_params(net), "model_config": ct.TrainingConfig(**config).model.dict(),
    "training_config": {k: v for k, v in ct.TrainingConfig(**config).dict().items() if k != "model"},
    "mean_train": mean_train, "std_train": std_train, "steps_per_epoch": len(train_loader),
    "n": n, "n_val_used": len(val_loader) * batch_size, "n_train_used_per_epoch": len(train_loader) * batch_size,
    "seconds": {"graph_build": CAP["graph_s"], "train": CAP["train_t1"] - CAP["train_t0"],
                "graph_train_eval": CAP["graph_s"] + CAP["train_t1"] - CAP["train_t0"] + their_test_s + eval_s,
                "their_test_loop": their_test_s, "eval": their_test_s + eval_s, "our_predictions": eval_s,
                "setup": t_main - T0, "driver_total": time.perf_counter() - T0},
    "shims": SHIMS, "e3nn": E3NN, "torch_threads": torch.get_num_threads(),
}, open(cfg["result"], "w"))
'''


def venv_python() -> str:
    """The venv's interpreter if the venv exists, else this one."""
    py = VENV / "bin" / "python"
    return str(py) if py.exists() else sys.executable


def ensure_venv(venv: Path = VENV) -> str:
    """Create ``venv`` (``--system-site-packages``: torch, PyG, pymatgen, jarvis, numpy are shared) with ComFormer's
    missing pure-Python dependencies (``VENV_PACKAGES``) from PyPI; returns its python."""
    py = venv / "bin" / "python"
    probe = "import ignite, pandarallel, e3nn.o3"
    if py.exists() and subprocess.run([str(py), "-c", probe], capture_output=True).returncode == 0:
        return str(py)
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", *VENV_PACKAGES], check=True)
    return str(py)


def _record(sid: str, structure: Any, target: float) -> dict[str, Any]:
    if isinstance(structure, dict):
        from pymatgen.core import Structure

        structure = Structure.from_dict(structure)
    if not structure.is_ordered:
        raise ValueError(f"{sid}: disordered structure (jarvis Atoms needs one element per site)")
    return {"id": str(sid), "lattice": structure.lattice.matrix.tolist(), "frac_coords": structure.frac_coords.tolist(),
            "species": [site.specie.symbol for site in structure], "target": float(target)}


def _run_driver(cfg: dict[str, Any], run_dir: Path, python: str | None, name: str) -> tuple[dict[str, Any], dict]:
    sys.path.insert(0, str(HERE))
    from harness import run_watched  # the benchmarks' tree-RSS sampler

    (run_dir / "torch_scatter_shim.py").write_text(TORCH_SCATTER_SHIM)
    (run_dir / "comformer_driver.py").write_text(DRIVER)
    cfg = {**cfg, "torch_scatter_shim": str(run_dir / "torch_scatter_shim.py"), "result": str(run_dir / f"{name}.json"),
           "workdir": str(run_dir / "work")}
    (run_dir / f"{name}.config.json").write_text(json.dumps(cfg, indent=1))
    cmd = [python or venv_python(), str(run_dir / "comformer_driver.py"), str(run_dir / f"{name}.config.json")]
    rec = run_watched(cmd, ceiling=CEILING, name=name, logdir=run_dir,
                      env={"PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg", "PYTHONNOUSERSITE": "1"})
    rec.pop("timeline_s_rss_mb", None)
    if rec["returncode"] != 0:
        tail = Path(rec["stderr"]).read_text(errors="replace")[-4000:]
        raise RuntimeError(f"ComFormer driver failed (exit {rec['returncode']}), log {rec['stderr']}:\n{tail}")
    return json.loads(Path(cfg["result"]).read_text()), rec


def run_comformer_ref(repo: str | os.PathLike[str], structures_by_split: dict[str, Iterable[tuple[str, Any, float]]],
                      epochs: int, seed: int, run_dir: str | os.PathLike[str],
                      config_overrides: dict[str, Any] | None = None, *, model: str = "iComformer",
                      python: str | None = None, predict_splits: tuple[str, ...] = ("val",)) -> dict[str, Any]:
    """Train the authors' ``model`` ("iComformer" / "eComformer") with their ``train_main`` on the given split.

    ``structures_by_split``: {"train"|"val"|"test": [(id, pymatgen Structure or its as_dict(), target), ...]}.
    ``config_overrides``: flat {field: value}; iComformerConfig fields (node_features, fc_features, edge_features,
    triplet_input_features, conv_layers >= 4, ...) go to the model, TrainingConfig fields (batch_size,
    learning_rate, cutoff, max_neighbors, ...) to training. ``predict_splits``: also "val" / "train" predictions.

    Returns test_mae (best-validation checkpoint, over exactly the given test ids), test_mae_last_epoch (their
    printed number), seconds {graph_build, train, eval, ...} (inside the driver) and wall_s (the whole watched
    process), peak_tree_rss_mb, params, history (val MAE + seconds per epoch), best_epoch, predictions
    {split: {id: [target, prediction]}}, the resolved configs, the shims applied, and proc (the watcher's record).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    data = {part: [_record(*row) for row in structures_by_split[part]] for part in ("train", "val", "test")}
    (run_dir / "split_structures.json").write_text(json.dumps(data))
    cfg = {"mode": "train", "repo": str(Path(repo).resolve()), "data": str(run_dir / "split_structures.json"),
           "epochs": int(epochs), "seed": int(seed), "model": model, "training": REF_TRAINING,
           "overrides": dict(config_overrides or {}), "predict_splits": list(predict_splits)}
    cfg["training"] = {**REF_TRAINING, "num_workers": 0}
    res, rec = _run_driver(cfg, run_dir, python, "driver")
    test = res.pop("test")
    want = {r["id"]: r["target"] for r in data["test"]}
    if set(test) != set(want):
        raise RuntimeError(f"ComFormer predicted {len(test)} test ids, the split has {len(want)}")
    bad = [i for i, (t, _) in test.items() if abs(t - want[i]) > 1e-4 * max(1.0, abs(want[i]))]
    if bad:
        raise RuntimeError(f"{len(bad)} de-standardised test targets differ from the given ones, e.g. {bad[0]}")
    last = res.pop("test_last_epoch")
    mae = sum(abs(p - want[i]) for i, (_, p) in test.items()) / len(test)
    mae_last = sum(abs(p - want[i]) for i, (_, p) in last.items()) / len(last)
    return {"contender": "comformer-ref", "model": model, "test_mae": mae, "test_mae_last_epoch": mae_last,
            "wall_s": rec["wall_s"], "peak_tree_rss_mb": rec["peak_tree_rss_mb"],
            "peak_tree_pss_mb": rec["peak_tree_pss_mb"], "proc": rec,
            "reduced": bool(config_overrides), "config_overrides": dict(config_overrides or {}),
            "predictions_last_epoch": {"test": last}, **res}


def count_ref_params(repo: str | os.PathLike[str], config_overrides: dict[str, Any] | None = None, *,
                     model: str = "iComformer", python: str | None = None, run_dir: str | None = None) -> dict:
    """Parameter count of their model class at its default config (+ overrides), built by their config classes."""
    import tempfile

    run_dir = Path(run_dir or tempfile.mkdtemp(prefix="comformer-params-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = {"mode": "params", "repo": str(Path(repo).resolve()), "model": model,
           "training": {**REF_TRAINING, "num_workers": 0}, "overrides": dict(config_overrides or {})}
    res, _ = _run_driver(cfg, run_dir, python, f"params-{model}")
    return res


def _smoke_rows(path: Path, n: int) -> list[tuple[str, dict, float]]:
    d = json.loads(gzip.open(path, "rt").read())
    return [(i, s, float(y)) for i, (s, y) in list(zip(d["index"], d["data"]))[:n]]


def _parse_sets(items: list[str]) -> dict[str, Any]:
    out = {}
    for s in items:
        k, _, v = s.partition("=")
        out[k] = json.loads(v) if v[:1] in "-0123456789tf[{\"" else v
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", required=True, help="divelab/AIRS OpenMat/ComFormer folder (contains comformer/)")
    ap.add_argument("--smoke", action="store_true", help="1 epoch on 60 shipped structures (32/16/12, batch 16)")
    ap.add_argument("--params", action="store_true", help="print the parameter count (default config + --set)")
    ap.add_argument("--model", default="iComformer", choices=["iComformer", "eComformer"])
    ap.add_argument("--full", action="store_true", help="smoke with the full-size model (default: REDUCED widths)")
    ap.add_argument("--set", action="append", default=[], help="config override key=value (repeatable)")
    ap.add_argument("--out", default="/tmp/ref_comformer_smoke")
    ap.add_argument("--setup-venv", action="store_true", help=f"create {VENV} with {VENV_PACKAGES}")
    args = ap.parse_args(argv)
    python = ensure_venv() if args.setup_venv else venv_python()
    overrides = _parse_sets(args.set)
    if args.params:
        print(json.dumps(count_ref_params(args.repo, overrides, model=args.model, python=python), indent=1))
        return 0
    if not args.smoke:
        ap.error("give --smoke or --params (the benchmark calls run_comformer_ref)")
    rows = _smoke_rows(SMOKE_DATA, 60)
    split = {"train": rows[:32], "val": rows[32:48], "test": rows[48:]}
    ov = {**({} if args.full else REDUCED), "batch_size": 16, **overrides}
    t = time.perf_counter()
    res = run_comformer_ref(args.repo, split, epochs=1, seed=0, run_dir=Path(args.out) / args.model,
                            config_overrides=ov, model=args.model, python=python)
    res["smoke_total_s"] = time.perf_counter() - t
    for k in ("predictions", "predictions_last_epoch", "proc"):
        res.pop(k, None)
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
