"""The Plan: every decision colab_kit makes about a run, each with a one-line reason.

``make_plan(machine, mode, **overrides)`` is pure: the same Machine and arguments always give
the same Plan. No other module decides sizes, paths or switches; they read the Plan.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from colab_kit import registry
from colab_kit.errors import ColabKitError
from colab_kit.plan.machine import GIB, Machine
from colab_kit.plan.settings import ALIASES, OVERRIDABLE, SCHEDULES, parse_size, with_current_names

#: Per-mode presets. Modes are data: anything mode-dependent is looked up here. ``epochs`` and ``patience``
#: are those of a pretrained model (CHGNet fine-tuning); a model's ``epoch_scale`` (in the registry) stretches them.
MODES: dict[str, dict[str, Any]] = {
    "debug": {"n_samples": 300, "epochs": 2, "patience": 2, "checkpoint_minutes": 1.0},
    "quick": {"n_samples": 3000, "epochs": 10, "patience": 4, "checkpoint_minutes": 5.0},
    "full": {"n_samples": None, "epochs": 50, "patience": 8, "checkpoint_minutes": 10.0},
}

DEFAULT_DATA = "mp_eform_cgcnn_3000"
DEFAULT_FRAMES = "mlearn_frames_221"  # --task potential's (colab_kit.sources.datasets.DEFAULT_FRAMES)
LOW_DISK = 2 * GIB
LOW_RAM = 4 * GIB
# RSS of one conversion worker (python + torch + pymatgen + one shard in flight), measured ~300 MB.
CONVERT_WORKER_BYTES = 450 * 1024**2


@dataclass(frozen=True)
class Plan:
    """Everything a run needs to know. Sizes in bytes unless named otherwise; cutoffs in Å."""

    mode: str
    data: str
    target: str | None
    graph_kind: str
    model: str
    model_options: Mapping[str, Any]  # the model's own settings (registry options), e.g. CGCNN's hidden size
    # graph resolution
    cutoff: float
    bond_cutoff: float
    max_neighbors: int | None
    on_isolated_atoms: str
    # batching (budgets are per batch, summed over its graphs)
    train_memory: int
    batch_edges: int
    batch_atoms: int
    calibrate: bool
    budget_cap: float
    batch_size: int
    eval_batch_size: int
    # data loading and compute
    threads: int  # torch's intra-op threads in this process
    workers: int
    pin_memory: bool
    persistent_workers: bool
    prefetch_factor: int | None
    # conversion and store
    convert_workers: int
    shard_size: int
    on_bad_structure: str
    # places
    work_dir: str
    persist_dir: str | None
    # training
    device: str
    amp: str
    n_samples: int | None
    epochs: int
    patience: int
    lr: float
    lr_min: float
    schedule: str
    weight_decay: float
    grad_clip: float
    seed: int
    checkpoint_minutes: float
    split: str  # one of SPLITS
    fold: int | None  # the matbench fold (split "matbench")
    teacher: str | None  # a trained model whose outputs are distilled into this one
    distill_alpha: float  # loss = alpha * label loss + (1 - alpha) * teacher loss
    # the torchrun launch this process is part of (1 / 0 / 0: a plain process); not settings, facts
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    # where a radius graph's edges come from: "stored" in the store, or "device" (built per batch on the device)
    graph_edges: str = "stored"
    unit: str | None = None  # the label's unit when its name does not say it (reports, plots)
    data_sha256: str | None = None  # pins a downloaded file's content
    gpu_memory: int | None = None  # bytes of the GPU this process may use and plans for (None: the whole GPU)
    # what is trained: one label per structure ("property"), or energies, forces, stresses and magnetic moments of
    # DFT frames ("potential"), with where the frames' labels are and their units (None: the format's convention)
    task: str = "property"
    potential_targets: str = "auto"
    energy_key: str | None = None
    forces_key: str | None = None
    stress_key: str | None = None
    magmoms_key: str | None = None
    energy_is: str | None = None
    stress_unit: str | None = None
    stress_sign: str | None = None
    energy_weight: float = 1.0
    force_weight: float = 1.0
    stress_weight: float = 0.1
    magmom_weight: float = 0.1
    loss: str = "mse"
    huber_delta: float = 0.1
    reasons: Mapping[str, str] = field(default_factory=dict, compare=False)
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["reasons"] = dict(self.reasons)
        d["model_options"] = dict(self.model_options)
        d["warnings"] = list(self.warnings)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Plan:
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in with_current_names(d).items() if k in names}  # "converter": graph_kind's old name
        kw["warnings"] = tuple(kw.get("warnings", ()))
        kw.setdefault("model_options", {})  # a Plan saved before models had options
        kw.setdefault("schedule", "cosine")  # ... or schedules
        for k, default in (("split", "random"), ("fold", None), ("teacher", None), ("distill_alpha", 1.0),
                           ("threads", 1)):
            kw.setdefault(k, default)  # ... or these
        return cls(**kw)

    def replace(self, reason: str, **changes: Any) -> Plan:
        """A copy with ``changes`` applied and ``reason`` recorded for each changed field."""
        reasons = dict(self.reasons)
        reasons.update({k: reason for k in changes})
        return dataclasses.replace(self, reasons=reasons, **changes)

    def label_settings(self) -> dict[str, Any]:
        """Where a potential's frames keep their labels and in which units (None: the format's convention)."""
        return {k: getattr(self, k) for k in LABEL_FIELDS}

    def rows(self) -> list[tuple[str, str, str]]:
        """(field, value, reason) triples for the plan table; each model option is a row of its own."""
        rows = []
        for f in fields(self):
            if f.name == "model_options":
                rows += [(k, _fmt(v), self.reasons.get(k, "")) for k, v in self.model_options.items()]
            elif f.name in POTENTIAL_FIELDS and self.task != "potential":
                continue  # a potential's settings say nothing about a run of one label per structure
            elif f.name not in ("reasons", "warnings"):
                rows.append((f.name, _fmt(getattr(self, f.name)), self.reasons.get(f.name, "")))
        return rows


#: the Plan fields of a potential's run (the table shows them for ``task=potential`` only)
POTENTIAL_FIELDS = ("potential_targets", "energy_key", "forces_key", "stress_key", "magmoms_key", "energy_is",
                    "stress_unit", "stress_sign", "energy_weight", "force_weight", "stress_weight", "magmom_weight",
                    "loss", "huber_delta")
#: the fields that say where a frame's labels are and in which units (colab_kit.sources.label_spec takes them)
LABEL_FIELDS = POTENTIAL_FIELDS[:8]


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


class PlanError(ColabKitError, ValueError):
    """An override or mode that colab_kit cannot use; the message says what is allowed."""


def make_plan(machine: Machine, mode: str = "debug", **overrides: Any) -> Plan:
    """Decide everything for a run on ``machine`` in ``mode``.

    Args:
        machine: facts from :func:`colab_kit.plan.machine.detect`.
        mode: one of :data:`MODES` (debug, quick, full).
        **overrides: any field in :data:`OVERRIDABLE`, or an option of the model (see the registry);
            validated, recorded as "set by user".

    Raises:
        PlanError: unknown mode, unknown override key, or a value that fails its check.
    """
    if mode not in MODES:
        raise PlanError(f"mode must be one of {tuple(MODES)} (got {mode!r})")
    for alias, name in ALIASES.items():
        if alias in overrides:
            if name in overrides and overrides[name] != overrides[alias]:
                raise PlanError(f"plan settings {alias} and {name} are the same setting; give one of them")
            overrides = {**{k: v for k, v in overrides.items() if k != alias}, name: overrides[alias]}
    model, graph_kind = _model_and_graphs(overrides)
    spec = registry.model(model)
    for key, value in overrides.items():
        if key in spec.options and key not in OVERRIDABLE:
            try:
                spec.options[key].validate(model, key, value)
            except registry.RegistryError as exc:
                raise PlanError(str(exc)) from None
            continue
        if key not in OVERRIDABLE:
            raise PlanError(
                f"unknown plan setting {key!r}; settings you can override: {', '.join(sorted(OVERRIDABLE))}"
                + (f"; options of {model}: {', '.join(spec.options)}" if spec.options else "")
            )
        check, allowed = OVERRIDABLE[key]
        if not check(value):
            raise PlanError(f"plan setting {key} must be {allowed} (got {value!r})")
    cpus = max(1, machine.cpus // max(1, machine.world.local_size))  # this rank's share of the host's CPUs
    for key in ("workers", "threads"):
        if key in overrides and overrides[key] > cpus:
            raise PlanError(f"plan setting {key} must be at most the {cpus} usable CPUs of this rank (got {overrides[key]})")

    v: dict[str, Any] = {}
    r: dict[str, str] = {}
    warnings: list[str] = []

    def set_(name: str, value: Any, reason: str) -> None:
        if name in overrides:
            v[name], r[name] = overrides[name], "set by user"
        else:
            v[name], r[name] = value, reason

    preset = MODES[mode]
    v["mode"], r["mode"] = mode, "requested"
    if overrides.get("task") == "potential":
        set_("data", DEFAULT_FRAMES, "shipped with colab_kit: 221 DFT frames with forces and stresses, no download")
    else:
        set_("data", DEFAULT_DATA, "shipped with colab_kit: 3,000 MP formation energies, no download")
    set_("target", None, "the label column the source names (matbench: its one target column)")
    set_("unit", None, "from the label's name (e_form: eV/atom); --set unit=... when the name does not say it")
    set_("data_sha256", None, "a URL's file is checked against its server's validator; known datasets carry their "
         "sha256; --set data_sha256=... pins a file's content")
    v["model"], r["model"] = model, ("set by user" if "model" in overrides else
                                     f"the model that trains on {graph_kind} graphs" if "graph_kind" in overrides else
                                     f"{spec.description} (best accuracy per sample)")
    v["graph_kind"], r["graph_kind"] = graph_kind, ("set by user" if "graph_kind" in overrides else
                                                 f"{spec.name} trains on {graph_kind} graphs")
    v["model_options"] = {}
    for key, option in spec.options.items():
        v["model_options"][key] = overrides.get(key, option.default)
        r[key] = "set by user" if key in overrides else f"{model}: {option.reason}"
    kind = registry.graph_kind(graph_kind)
    world = machine.world
    per_host = max(1, world.local_size)  # ranks sharing this host's RAM and CPUs
    avail = machine.ram_available // per_host
    v["world_size"], v["rank"], v["local_rank"] = world.size, world.rank, world.local_rank
    launched = (f"torchrun: {world.size} ranks, {world.local_size} on this host" if world.distributed
                else "one process (not launched by torchrun)")
    r["world_size"] = r["rank"] = r["local_rank"] = launched
    if machine.gpu is not None and world.distributed:
        set_("device", f"cuda:{world.local_rank}", f"{machine.gpu.name} found; local rank {world.local_rank} trains on GPU {world.local_rank}")
    elif machine.gpu is not None:
        set_("device", "cuda", f"{machine.gpu.name} found")
    else:
        set_("device", "cpu", "no CUDA GPU found")
    if v["device"].startswith("cuda") and machine.gpu is None:
        raise PlanError(f"plan setting device is {v['device']!r} but no CUDA GPU was found; use --set device=cpu")
    # every later decision follows the final device: a GPU the run does not train on plans nothing
    gpu = machine.gpu if v["device"].startswith("cuda") else None
    set_("gpu_memory", None, "the whole GPU; --set gpu_memory=15GiB plans and caps this process as if the GPU had "
         "15 GiB (a Colab T4), or leaves the rest to others sharing it")
    if v["gpu_memory"] is not None:
        v["gpu_memory"] = cap = parse_size(v["gpu_memory"])  # bytes from here on
        if gpu is None:
            warnings.append(f"gpu_memory={cap / GIB:.1f} GiB has no effect: this run trains on {v['device']}")
        else:
            if cap >= gpu.total_bytes:
                warnings.append(f"gpu_memory={cap / GIB:.1f} GiB is not below {gpu.name}'s {gpu.total_bytes / GIB:.1f} "
                                "GiB: the whole GPU is used")
            r["gpu_memory"] = (f"set by user: this process may use {min(cap, gpu.total_bytes) / GIB:.1f} GiB of "
                               f"{gpu.name}'s {gpu.total_bytes / GIB:.1f} GiB and plans as if that were the GPU")
            gpu = dataclasses.replace(gpu, name=f"{gpu.name} (capped at {cap / GIB:.1f} GiB)",
                                      total_bytes=min(gpu.total_bytes, cap), free_bytes=min(gpu.free_bytes, cap))

    # Graph resolution: the graph kind's (e.g. CHGNet's pretrained weights fix 6/3 Å; radius graphs shrink on small RAM).
    low_ram = avail < LOW_RAM and gpu is None
    usual = kind.resolution(False)
    for name, (value, why) in kind.resolution(low_ram).items():
        set_(name, value, f"{avail / GIB:.1f} GiB RAM free: {why}" if value != usual[name][0] else why)

    set_("on_isolated_atoms", "error", "an atom with no neighbour within the cutoff gets no messages: its structure is "
         "skipped and recorded ('warn'/'ignore' keep its graph)")

    # Batch budget from the memory the model will train in.
    if gpu is not None:
        set_("train_memory", int(gpu.free_bytes * 0.7), f"70% of {gpu.free_bytes / GIB:.1f} GiB free on {gpu.name}")
    else:
        set_("train_memory", int(min(avail * 0.4, 8 * GIB)), f"40% of {avail / GIB:.1f} GiB free RAM (max 8 GiB)"
             + (f", this rank's 1/{per_host} of the host's" if per_host > 1 else ""))
    train_mem = v["train_memory"]
    where = f"{train_mem / GIB:.1f} GiB for training"
    # the model's rough training memory per edge / atom; `colab_kit.training.budget` measures it at train time
    set_("batch_edges", max(2_000, train_mem // spec.bytes_per_edge),
         f"static estimate: {where} / {spec.bytes_per_edge} B per edge")
    set_("batch_atoms", max(200, train_mem // spec.bytes_per_atom),
         f"static estimate: {where} / {spec.bytes_per_atom} B per atom")
    budget_by_user = [k for k in ("batch_edges", "batch_atoms") if k in overrides]
    if budget_by_user:
        set_("calibrate", False, f"{' and '.join(budget_by_user)} set by you: that budget is used as given")
    else:
        set_("calibrate", True, f"measure real steps at train start and fit the budget into {where}")
    set_("budget_cap", 4.0, "a calibrated budget stays within 4x the static estimate (guards against an under-measured step)")
    set_("batch_size", 64 if gpu is not None else 32, "upper bound on graphs per batch; the budget decides")
    eval_factor = 4 if (gpu is None or gpu.free_bytes > 6 * GIB) else 2
    set_("eval_batch_size", v["batch_size"] * eval_factor,
         f"{eval_factor}x train: no gradients in evaluation" + ("" if eval_factor >= 4 else ", GPU is small"))

    # DataLoader workers: each is a process; tiny RAM cannot afford them. Reading a graph from the mmap'd
    # store is cheaper than receiving it from a worker: torch passes every tensor of a batch through its
    # own file descriptor, ~0.5 ms of main-process time each (docs/performance.md, "DataLoader throughput").
    if avail < LOW_RAM:
        set_("workers", 0, f"only {avail / GIB:.1f} GiB RAM free: load in the main process")
    elif kind.loader_workers is not None:
        set_("workers", *kind.loader_workers)
    elif cpus <= 2:
        set_("workers", 0, f"{cpus} CPUs: the main process reads the store ~3x faster than it "
                           "receives batches from workers")
    elif gpu is not None:
        set_("workers", min(cpus, 4), f"GPU training: up to 4 loader processes on {cpus} CPUs")
    else:
        set_("workers", min(cpus // 2, 4), f"CPU training: half of {cpus} CPUs load data")
    # torch's threads: never more than the cores other work leaves free (on 2 cores at load 6, CGCNN trained at
    # 2-4 graphs/s with torch's default 2 threads and at 100-120 with 1: threads that wait for a core cost, not help)
    free = max(1, machine.cpus - int(machine.load + 0.5)) // per_host or 1
    if machine.omp_threads is not None:
        set_("threads", min(machine.omp_threads, cpus), f"OMP_NUM_THREADS={machine.omp_threads} in the environment")
    elif free < cpus:
        set_("threads", free, f"{cpus} CPUs, {machine.load:.1f} busy (1-min load average): one thread per free core")
    else:
        set_("threads", cpus, f"{cpus} CPUs, all free (load {machine.load:.1f}): one thread per core")
    set_("pin_memory", v["device"].startswith("cuda"), "pinned host memory only helps CUDA copies")
    set_("persistent_workers", v["workers"] > 0, "keep loader processes between epochs (needs workers > 0)")
    set_("prefetch_factor", 2 if v["workers"] > 0 else None, "batches prefetched per worker (needs workers > 0)")

    # conversion runs in one process (rank 0 of a torchrun launch): the whole host is its
    n_convert = max(1, min(machine.cpus, (machine.ram_available - 1 * GIB) // CONVERT_WORKER_BYTES))
    set_("convert_workers", int(n_convert), f"{machine.cpus} CPUs, {CONVERT_WORKER_BYTES // 1024**2} MB per worker "
         f"within {machine.ram_available / GIB:.1f} GiB free")
    set_("on_bad_structure", "warn", "skip bad structures, record and report each one")

    # Places: fast local disk for work, Drive only for persistence.
    local = machine.content_dir + "/colab_kit" if machine.is_colab else machine.home_cache
    local_free = _free_for(machine, machine.content_dir if machine.is_colab else machine.home_cache)
    work_reason = "Colab's local disk (fast; Drive is slow for many reads)" if machine.is_colab else "per-user cache dir"
    shard_size, shard_reason = 1000, "~1000 graphs per shard: few large files, cheap to redo one"
    if local_free is not None and local_free < LOW_DISK:
        best = max(
            ((d, b) for d, b in machine.disk_free.items() if not _on_drive(d, machine)),
            key=lambda db: db[1],
            default=(None, 0),
        )
        if best[0] is not None and best[1] >= LOW_DISK:
            local, work_reason = best[0], f"{best[0]} has the most free disk ({best[1] / GIB:.1f} GiB)"
            warnings.append(f"only {local_free / GIB:.1f} GiB free at the default work dir; using {best[0]}")
        else:
            shard_size, shard_reason = 200, "low disk: small shards keep the in-flight files small"
            warnings.append(
                f"only {local_free / GIB:.1f} GiB free disk for the work dir {local}; a large dataset will not "
                "fit: free space or pass --work-dir on a bigger disk"
            )
    set_("work_dir", local, work_reason)
    if machine.drive_mounted:
        set_("persist_dir", machine.drive_dir + "/colab_kit", "Google Drive is mounted: survives a disconnect")
    else:
        set_("persist_dir", None, "no Google Drive mounted: nothing to mirror to")
    if v["persist_dir"] is not None and v["work_dir"].startswith(machine.drive_dir):
        raise PlanError(
            f"work_dir {v['work_dir']!r} is on Google Drive, which is too slow for the store; "
            "use a local dir (e.g. /content/colab_kit) and persist_dir for Drive"
        )
    set_("shard_size", shard_size, shard_reason)
    if not getattr(kind, "device_edges", False):
        if overrides.get("graph_edges", "stored") != "stored":
            raise PlanError(f"graph_edges=device needs graphs whose edges can be built on the device (radius: "
                            f"cgcnn); {model} trains on {graph_kind} graphs, read from the store: leave graph_edges out")
        set_("graph_edges", "stored", f"{graph_kind} graphs are read from the store")
    elif local_free is not None and local_free < LOW_DISK and gpu is not None:
        set_("graph_edges", "device", f"{local_free / GIB:.1f} GiB free disk: the store keeps structures only (~1/4 "
             f"the size) and {gpu.name} builds each batch's edges")
    else:
        set_("graph_edges", "stored", "read from the store: on a CPU ~27x faster than building them per batch, "
             "--set graph_edges=device keeps structures only (~1/4 the disk) and builds each batch's edges on the "
             "device (docs/performance.md)")

    # Training.
    if gpu is None:
        set_("amp", "off", "mixed precision is for CUDA")
        if v["amp"] != "off":
            raise PlanError(f"plan setting amp={v['amp']!r} needs device cuda (device is {v['device']!r}); use --set amp=off")
    elif gpu.supports_bf16:
        set_("amp", "bf16", f"{gpu.name} supports bfloat16 (no loss scaling needed)")
    else:
        set_("amp", "fp16", f"{gpu.name} has no bfloat16: float16 with loss scaling")
    set_("n_samples", preset["n_samples"], f"{mode} mode")
    set_("epochs", preset["epochs"] * spec.epoch_scale, f"{mode} mode, {model} {spec.epoch_reason}".rstrip())
    set_("patience", preset["patience"] * spec.epoch_scale, f"{mode} mode: epochs without improvement before stopping")
    set_("lr", spec.lr, f"AdamW learning rate for {model}")
    set_("lr_min", v["lr"] * 0.01, "cosine schedule ends at 1% of lr")
    set_("schedule", spec.schedule, f"{model}: {spec.schedule_reason}")
    if v["schedule"] not in SCHEDULES:
        raise PlanError(f"model {model} asks for schedule {v['schedule']!r}; schedules: {SCHEDULES}")
    set_("weight_decay", 1e-4, "AdamW weight decay")
    set_("grad_clip", 5.0, "gradients clipped to this norm: one odd batch cannot wreck the weights")
    set_("seed", 0, "fixed seed: same split and order on every run and resume")
    set_("checkpoint_minutes", preset["checkpoint_minutes"], f"{mode} mode: checkpoint interval")
    set_("split", "random", "80/10/10 train/val/test drawn from the seed")
    set_("fold", 0 if v["split"] == "matbench" else None,
         "matbench's fold 0 (`benchmark` runs all 5)" if v["split"] == "matbench" else "only for split matbench")
    if v["fold"] is not None and v["split"] != "matbench":
        raise PlanError(f"plan setting fold={v['fold']} needs split=matbench (split is {v['split']!r}); add --set split=matbench")
    set_("task", "property", "one label per structure; --task potential trains energies, forces, stresses and "
         "magnetic moments of DFT frames")
    if v["task"] == "potential":
        _potential_settings(v, set_, model)
    elif getattr(spec, "potential_only", False):
        raise PlanError(f"{model} trains as an interatomic potential only (energies, forces, stresses): add --task "
                        f"potential, or train one property with --model one of {registry.property_models()}")
    set_("teacher", None, "no teacher: train on the labels")
    set_("distill_alpha", 0.5 if v["teacher"] else 1.0,
         "half label loss, half teacher loss" if v["teacher"] else "labels only (no teacher)")
    return Plan(**v, reasons=r, warnings=tuple(warnings))


def _potential_settings(v: dict[str, Any], set_: Any, model: str) -> None:
    """A potential's settings: what is trained, where the labels are, and the loss (CHGNet's Trainer's defaults)."""
    if model not in registry.potential_models():
        raise PlanError(f"--task potential needs a model that predicts energies and forces; {model} predicts one "
                        f"number per structure: --model one of {registry.potential_models()}")
    set_("potential_targets", "auto", "energy and forces, plus stress and magnetic moments where the first frame "
         "has them")
    for key in LABEL_FIELDS[1:]:
        set_(key, None, "the data format's convention (written into the store's manifest)")
    set_("energy_weight", 1.0, "CHGNet's Trainer default: energy per atom, weight 1")
    set_("force_weight", 1.0, "CHGNet's Trainer default: forces, weight 1")
    set_("stress_weight", 0.1, "CHGNet's Trainer default: stress (GPa), weight 0.1")
    set_("magmom_weight", 0.1, "CHGNet's Trainer default: magnetic moments, weight 0.1")
    set_("loss", "mse", "CHGNet's Trainer default; huber with --set loss=huber (delta: huber_delta)")
    set_("huber_delta", 0.1, "CHGNet's Trainer's Huber delta")


def _model_and_graphs(overrides: Mapping[str, Any]) -> tuple[str, str]:
    """The model and graph kind: ``--model X`` alone picks X's graph kind, ``--graph-kind K`` alone the first model
    that trains on K, neither the first registered model (CHGNet fine-tuning).

    Raises:
        PlanError: an unknown name, or a model that does not train on the graph kind asked for.
    """
    for key, names in (("model", registry.models()), ("graph_kind", registry.graph_kinds())):
        if key in overrides and overrides[key] not in names:
            raise PlanError(f"plan setting {key} must be one of {names} (got {overrides[key]!r})")
    if "model" in overrides:
        model = overrides["model"]
        kind = registry.model_graph_kind(model)
        if overrides.get("graph_kind", kind) != kind:
            raise PlanError(f"model {model!r} trains on {kind!r} graphs, not {overrides['graph_kind']!r}; use "
                            f"--graph-kind {kind} (or leave it out), or --model {registry.default_model(overrides['graph_kind'])}")
        return model, kind
    if "graph_kind" in overrides:
        return registry.default_model(overrides["graph_kind"]), overrides["graph_kind"]
    model = registry.models()[0]
    return model, registry.model_graph_kind(model)


def _free_for(machine: Machine, path: str) -> int | None:
    for d, b in machine.disk_free.items():
        if os.path.normpath(path).startswith(os.path.normpath(d)):
            return b
    return None


def _on_drive(path: str, machine: Machine) -> bool:
    return os.path.normpath(path).startswith(os.path.normpath(machine.drive_dir))
