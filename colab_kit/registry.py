"""The registry of graph kinds and models: the one place that knows which exist.

A graph kind (``graphs/<kind>.py``) turns a structure into the store's arrays and store slices into
its model's batch; a model (``models/<name>.py``) says which graph kind it trains on, what it costs
in memory, how it learns by default, and builds its adapter. The Plan, loader, trainer, CLI, panel
and ``detect`` ask here; none of them names a model or graph kind.

Adding a model is one file with a :class:`Model` and one line in :data:`MODEL_MODULES` (or, from a
notebook or a test, one :func:`register_model` call): the CLI's choices, ``--set model=...``, the
panel's dropdown and the Plan table pick it up.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

from colab_kit.errors import ColabKitError


class RegistryError(ColabKitError, ValueError):
    """An unknown graph kind or model, or one whose package is not installed; the message names the fix."""


# ---------------------------------------------------------------- what a graph kind and a model are

#: The Plan fields that fix a graph kind's resolution (each kind gives them a value and a reason).
GRAPH_SETTINGS = ("cutoff", "bond_cutoff", "max_neighbors")


@runtime_checkable
class GraphKind(Protocol):
    """How one kind of graph is made, stored and batched.

    ``resolution(low_ram)`` gives the Plan's ``cutoff`` / ``bond_cutoff`` / ``max_neighbors`` as (value, reason);
    ``params(...)`` validates them into the converter parameters (part of the store fingerprint);
    ``convert(structure, params, graph_id)`` gives the store's numpy arrays; ``to_graph(arrays, target, graph_id,
    params)`` gives one graph as its model consumes it; ``collate(items)`` a batch of ``(graph, target)`` items.
    ``settings(params)`` is the inverse of ``params``: a store's parameters as the Plan's graph settings.
    ``needs`` names the store arrays ``convert`` writes and ``to_graph`` reads (all in ``store.RAGGED`` + lattice);
    ``loader_workers`` is (workers, reason) when the kind needs a fixed number of DataLoader workers, else None.
    An optional ``batch_fn(gathered, params)`` assembles the batch ``collate`` would make straight from a whole-batch
    read (:func:`colab_kit.store.batch_read.gather`), without a graph object per item. A kind with ``device_edges`` can
    also keep structures only (``params(..., edges="device")``) and build each batch's edges on the training device.
    """

    name: str
    description: str
    needs: tuple[str, ...]
    loader_workers: tuple[int, str] | None

    def resolution(self, low_ram: bool) -> dict[str, tuple[Any, str]]: ...
    def settings(self, params: Mapping[str, Any]) -> dict[str, Any]: ...
    def params(self, cutoff: float | None, bond_cutoff: float | None, max_neighbors: int | None,
               on_isolated_atoms: str) -> dict[str, Any]: ...
    def convert(self, structure: Any, params: Mapping[str, Any], graph_id: str | None) -> dict: ...
    def to_graph(self, arrays: dict, target: float | None, graph_id: str | None, params: Mapping[str, Any]) -> Any: ...
    def collate(self, items: list[tuple[Any, float]]) -> Any: ...


@runtime_checkable
class ModelSpec(Protocol):
    """A trainable model: its graph kind, memory cost, default optimisation, options and builder.

    ``build(target_mean, target_std, graph_params, options)`` returns an ``nn.Module`` adapter with
    ``forward(batch) -> [G]`` (the target in its units), ``to_device(batch, device, non_blocking)``,
    ``targets(batch) -> [G]``, ``size(batch) -> (graphs, atoms, edges)`` and optionally
    ``init_output(batches)`` (fits the output to the targets before the first step; the target
    normalisation hook).
    """

    name: str
    graph_kind: str
    description: str
    bytes_per_atom: int
    bytes_per_edge: int
    lr: float
    schedule: str
    schedule_reason: str
    epoch_scale: int
    epoch_reason: str
    options: Mapping[str, Option]
    extra: str | None

    def build(self, target_mean: float, target_std: float, graph_params: Mapping[str, Any],
              options: Mapping[str, Any]) -> Any: ...


@dataclass(frozen=True)
class Option:
    """A model option the user sets with ``--set <option>=<value>`` (or the panel); ``check`` validates it."""

    default: Any
    allowed: str
    reason: str
    check: Callable[[Any], bool] = lambda v: True

    def validate(self, model: str, name: str, value: Any) -> Any:
        if not self.check(value):
            raise RegistryError(f"model option {name} of {model} must be {self.allowed} (got {value!r})")
        return value


def int_at_least(low: int) -> Callable[[Any], bool]:
    """An :class:`Option` check: an integer (not a bool) of at least ``low``."""
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


@dataclass(frozen=True)
class Graphs:
    """A :class:`GraphKind` made of functions (what ``graphs/<kind>.py`` files declare)."""

    name: str
    description: str
    resolve: Callable[[bool], dict[str, tuple[Any, str]]]
    make_params: Callable[..., dict[str, Any]]
    convert_fn: Callable[..., dict]
    to_graph_fn: Callable[..., Any]
    collate_fn: Callable[[list[tuple[Any, float]]], Any]
    needs: tuple[str, ...] = ("z", "frac", "lattice", "nbr_count", "nbr", "image")
    loader_workers: tuple[int, str] | None = None
    plan_names: Mapping[str, str] = field(default_factory=dict)  # converter parameter -> Plan field, where they differ
    # a batch from a whole-batch read (colab_kit.store.batch_read.Gathered) equal to collate_fn of its graphs; None: per graph
    batch_fn: Callable[[Any, Mapping[str, Any]], Any] | None = None
    # the store can keep structures only, the edges built per batch on the device (make_params takes ``edges``)
    device_edges: bool = False

    def resolution(self, low_ram: bool) -> dict[str, tuple[Any, str]]:
        return self.resolve(low_ram)

    def settings(self, params: Mapping[str, Any]) -> dict[str, Any]:
        named = {self.plan_names.get(k, k): v for k, v in params.items()}
        return {k: v for k, v in named.items() if k in GRAPH_SETTINGS}

    def params(self, cutoff: float | None = None, bond_cutoff: float | None = None, max_neighbors: int | None = None,
               on_isolated_atoms: str = "error", edges: str = "stored") -> dict[str, Any]:
        kw: dict[str, Any] = dict(cutoff=cutoff, bond_cutoff=bond_cutoff, max_neighbors=max_neighbors,
                                  on_isolated_atoms=on_isolated_atoms)
        if self.device_edges:
            kw["edges"] = edges
        elif edges != "stored":
            raise RegistryError(f"graph_edges={edges!r} needs a graph kind whose edges can be built on the device "
                                f"(radius); {self.name} graphs are read from the store: --set graph_edges=stored")
        return self.make_params(**kw)

    def convert(self, structure: Any, params: Mapping[str, Any], graph_id: str | None = None) -> dict:
        return self.convert_fn(structure, **params, graph_id=graph_id)

    def to_graph(self, arrays: dict, target: float | None, graph_id: str | None, params: Mapping[str, Any]) -> Any:
        return self.to_graph_fn(arrays, target=target, graph_id=graph_id, params=params)

    def collate(self, items: list[tuple[Any, float]]) -> Any:
        return self.collate_fn(items)


@dataclass(frozen=True)
class Model:
    """A :class:`ModelSpec` made of values and a builder (what ``models/<name>.py`` files declare)."""

    name: str
    graph_kind: str
    description: str
    builder: Callable[..., Any]
    bytes_per_atom: int
    bytes_per_edge: int
    lr: float
    schedule: str = "cosine"  # one of colab_kit.plan.settings.SCHEDULES
    schedule_reason: str = "cosine decay over the epochs"
    epoch_scale: int = 1
    epoch_reason: str = ""
    options: Mapping[str, Option] = field(default_factory=dict)
    extra: str | None = None
    #: train with PyTorch's deterministic kernels on CPU (needed for bit-exact resume by models that gather with
    #: advanced indexing; optional for a ModelSpec, read with getattr)
    deterministic: bool = False
    #: extra files ``export`` writes for the model's own package: file name -> ``fn(trained module, path) -> path``
    #: (CHGNet: ``chgnet.pt`` for ``CHGNet.from_file``); optional for a ModelSpec, read with getattr
    exports: Mapping[str, Callable[[Any, Any], Any]] = field(default_factory=dict)
    #: builds the model as an interatomic potential (energies, forces, stresses, magnetic moments):
    #: ``fn(targets, graph_params, **options)``; None for a model that predicts one number per structure only
    potential_builder: Callable[..., Any] | None = None
    #: what ``export`` writes for a potential: file (or folder) name -> ``fn(trained module, path) -> path``
    potential_exports: Mapping[str, Callable[[Any, Any], Any]] = field(default_factory=dict)
    #: trains only as an interatomic potential (MACE): the planner refuses it for one number per structure
    potential_only: bool = False

    def build(self, target_mean: float = 0.0, target_std: float = 1.0, graph_params: Mapping[str, Any] | None = None,
              options: Mapping[str, Any] | None = None) -> Any:
        opts = {k: o.default for k, o in self.options.items()}
        opts.update(options or {})
        return self.builder(target_mean=target_mean, target_std=target_std, graph_params=dict(graph_params or {}),
                            **opts)


# ---------------------------------------------------------------- the registry

#: name -> "module:attribute" of its spec, imported on first use (so `--help` imports no model code).
GRAPH_MODULES: dict[str, str] = {
    "chgnet": "colab_kit.graphs.chgnet:KIND",
    "radius": "colab_kit.graphs.radius:KIND",
    "comformer": "colab_kit.graphs.comformer:KIND",
    "alignn": "colab_kit.graphs.alignn:KIND",
    "matgl": "colab_kit.graphs.matgl:KIND",
    "mace": "colab_kit.graphs.mace:KIND",
}
MODEL_MODULES: dict[str, str] = {
    "chgnet": "colab_kit.models.chgnet:SPEC",
    "cgcnn": "colab_kit.models.cgcnn:SPEC",
    "comformer": "colab_kit.models.comformer:SPEC",
    "alignn": "colab_kit.models.alignn:SPEC",
    "m3gnet": "colab_kit.models.matgl:M3GNET",
    "tensornet": "colab_kit.models.matgl:TENSORNET",
    "mace": "colab_kit.models.mace:SPEC",
}
_graphs: dict[str, Any] = dict(GRAPH_MODULES)
_models: dict[str, Any] = dict(MODEL_MODULES)


def _resolve(table: dict[str, Any], name: str) -> Any:
    entry = table[name]
    if isinstance(entry, str):
        module, attr = entry.split(":")
        entry = table[name] = getattr(importlib.import_module(module), attr)
    return entry


def graph_kinds() -> tuple[str, ...]:
    """Names of the registered graph kinds, in registration order."""
    return tuple(_graphs)


def models() -> tuple[str, ...]:
    """Names of the registered models, in registration order (the first is the default)."""
    return tuple(_models)


def graph_kind(name: str) -> GraphKind:
    """The graph kind ``name``.

    Raises:
        RegistryError: ``name`` is not registered.
    """
    if name not in _graphs:
        raise RegistryError(f"graph kind must be one of {graph_kinds()} (got {name!r})")
    return _resolve(_graphs, name)


def model(name: str) -> ModelSpec:
    """The model ``name``.

    Raises:
        RegistryError: ``name`` is not registered.
    """
    if name not in _models:
        raise RegistryError(f"model must be one of {models()} (got {name!r})")
    return _resolve(_models, name)


def potential_models() -> tuple[str, ...]:
    """Names of the registered models that train as interatomic potentials (a ``potential_builder``)."""
    return tuple(m for m in _models if getattr(model(m), "potential_builder", None) is not None)


def property_models() -> tuple[str, ...]:
    """Names of the registered models that predict one number per structure (all but the potential-only ones)."""
    return tuple(m for m in _models if not getattr(model(m), "potential_only", False))


def model_graph_kind(name: str) -> str:
    """The graph kind model ``name`` trains on."""
    return model(name).graph_kind


def default_model(kind: str) -> str:
    """The first registered model that trains on graph kind ``kind``."""
    graph_kind(kind)
    for name in _models:
        if model(name).graph_kind == kind:
            return name
    raise RegistryError(f"no registered model trains on {kind!r} graphs; models: {models()}")


def register_graph_kind(kind: GraphKind) -> None:
    """Add (or replace) a graph kind at run time, e.g. from a notebook."""
    if not isinstance(kind, GraphKind):
        raise RegistryError(f"{kind!r} is not a GraphKind (see colab_kit.registry.Graphs)")
    _graphs[kind.name] = kind


def register_model(spec: ModelSpec) -> None:
    """Add (or replace) a model at run time; its graph kind must be registered."""
    if not isinstance(spec, ModelSpec):
        raise RegistryError(f"{spec!r} is not a ModelSpec (see colab_kit.registry.Model)")
    graph_kind(spec.graph_kind)
    _models[spec.name] = spec


def unregister(name: str) -> None:
    """Remove a model or graph kind registered at run time; a shipped name goes back to the shipped spec."""
    for table, shipped in ((_models, MODEL_MODULES), (_graphs, GRAPH_MODULES)):
        if name in shipped:
            table[name] = shipped[name]
        else:
            table.pop(name, None)


def require(module: str, extra: str, what: str) -> Any:
    """``importlib.import_module(module)``, or a one-line RegistryError naming the pip extra that installs it.

    Args:
        module: e.g. ``"alignn.torch_graph_builder"``.
        extra: colab_kit's extra that brings the package (``"alignn"`` -> ``pip install "colab_kit[alignn]"``).
        what: who needs it, named in the message (``"the alignn graph kind"``).
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package = module.split(".")[0]
        raise RegistryError(f"{what} needs the package {package}, which is not installed ({exc}); "
                            f'run: pip install "colab_kit[{extra}]"') from None
