"""The registry is the plug-in point: a model registered from here (one ``Model`` and one call) is picked
up by the Plan, ``--set``, the CLI, the trainer (with resume) and the panel, and no module outside the
registry and the model/graph files names a model or graph kind."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
from helpers import REPO, SHIPPED, shipped_records
from torch import nn

from colab_kit import registry
from colab_kit.cli.commands import build_parser, main
from colab_kit.graphs import get_converter
from colab_kit.models.common import PygAdapter
from colab_kit.plan.machine import GIB, Machine
from colab_kit.plan.planner import PlanError, make_plan
from colab_kit.store.build import build_store

PACKAGE = REPO / "colab_kit"


class MeanElement(PygAdapter, nn.Module):
    """A toy model: the mean over a cell's atoms of a learned per-element value (a composition baseline)."""

    def __init__(self, target_mean: float, target_std: float, width: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(101, width)
        self.out = nn.Linear(width, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.register_buffer("target_mean", torch.tensor(float(target_mean)))
        self.register_buffer("target_std", torch.tensor(float(target_std)))

    def forward(self, batch: Any) -> torch.Tensor:
        from torch_geometric.nn import global_mean_pool

        h = global_mean_pool(self.embed(batch.z), batch.batch, size=batch.num_graphs)
        return self.target_mean + self.target_std * self.out(h).squeeze(-1)


TOY = registry.Model(
    name="toy", graph_kind="radius", description="mean of per-element values",
    builder=lambda target_mean, target_std, graph_params, width: MeanElement(target_mean, target_std, width),
    bytes_per_atom=1_000, bytes_per_edge=100, lr=2e-2, epoch_scale=3, epoch_reason="toy: 3x epochs",
    options={"width": registry.Option(8, "a positive integer", "embedding width",
                                      lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0)},
)


@pytest.fixture
def toy() -> Iterator[registry.Model]:
    registry.register_model(TOY)
    yield TOY
    registry.unregister("toy")


def _machine(tmp_path: Path) -> Machine:
    return Machine(ram_total=16 * GIB, ram_available=12 * GIB, cgroup_limit=None, cpus=2, gpu=None,
                   is_colab=False, drive_mounted=False, disk_free={str(tmp_path): 50 * GIB},
                   home_cache=str(tmp_path / "cache"))


def test_the_plan_takes_a_registered_model_and_its_options(tmp_path: Path, toy: registry.Model) -> None:
    plan = make_plan(_machine(tmp_path), "debug", model="toy")
    assert (plan.graph_kind, plan.model, dict(plan.model_options)) == ("radius", "toy", {"width": 8})
    assert plan.lr == 2e-2 and plan.epochs == 2 * 3  # the spec's lr and epoch scale
    assert plan.batch_atoms == int(min(12 * GIB * 0.4, 8 * GIB)) // 1_000  # the spec's bytes per atom
    assert ("width", "8", "toy: embedding width") in plan.rows()
    assert make_plan(_machine(tmp_path), "debug", model="toy", width=16).model_options["width"] == 16
    with pytest.raises(PlanError, match=r"model option width of toy must be a positive integer \(got 0\)"):
        make_plan(_machine(tmp_path), "debug", model="toy", width=0)
    with pytest.raises(PlanError, match="options of toy: width"):
        make_plan(_machine(tmp_path), "debug", model="toy", depth=2)
    with pytest.raises(PlanError, match="model 'toy' trains on 'radius' graphs, not 'chgnet'"):
        make_plan(_machine(tmp_path), "debug", model="toy", graph_kind="chgnet")
    # the default model of a graph kind stays the first registered one
    assert make_plan(_machine(tmp_path), "debug", graph_kind="radius").model == "cgcnn"


def test_cli_trains_resumes_and_evaluates_a_registered_model(tmp_path: Path, toy: registry.Model,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert "toy" in _subcommand_help("train")
    assert main(["models"]) == 0
    assert re.search(r"^toy\s+radius\s+0.02\s+width=8\s+mean of per-element values$", capsys.readouterr().out, re.M)
    store = tmp_path / "store"
    build_store(SHIPPED, store, get_converter("radius"), limit=120, shard_size=60, progress=False)
    out = tmp_path / "run"
    args = ["train", "--store", str(store), "--model", "toy", "--set", "width=4", "--set", "epochs=3",
            "--set", "calibrate=false", "--out", str(out), "--work-dir", str(tmp_path / "work")]
    assert main(args) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    weights = torch.load(out / "best.pt", weights_only=True)
    assert weights["embed.weight"].shape == (101, 4)  # the option reached the model
    assert main(args) == 0  # a rerun resumes: nothing left to train, nothing changes
    assert [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()] == rows
    capsys.readouterr()
    changed = [*args[:5], "--set", "width=8", *args[7:]]  # a shape-fixing option cannot resume the checkpoint
    assert main(changed) == 2
    assert "trained with other settings (model_options {'width': 4} -> {'width': 8})" in capsys.readouterr().err
    capsys.readouterr()
    assert main(["evaluate", "--store", str(store), "--model", "toy", "--set", "width=4",
                 "--weights", str(out / "best.pt"), "--work-dir", str(tmp_path / "work")]) == 0
    first = capsys.readouterr().out
    assert re.search(r"test \(n=12\): MAE [0-9.]+ eV/atom", first)
    # without --model / --set: the model and its options come from the run that wrote best.pt
    assert main(["evaluate", "--store", str(store), "--weights", str(out / "best.pt"),
                 "--work-dir", str(tmp_path / "work")]) == 0
    assert capsys.readouterr().out == first


def _subcommand_help(name: str) -> str:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command" or getattr(a, "choices", None))
    return action.choices[name].format_help()  # type: ignore[index]


def test_the_panel_offers_a_registered_model(tmp_path: Path, toy: registry.Model) -> None:
    pytest.importorskip("ipywidgets")
    from colab_kit.notebook.panel import ControlPanel

    panel = ControlPanel(machine=_machine(tmp_path), model="toy", work_dir=str(tmp_path / "work"), progress=False)
    assert "toy" in panel.model.options and panel.graph_kind.value == "radius"
    assert panel.plan().model == "toy"
    panel.graph_kind.value = "chgnet"  # another graph kind: its first model
    assert panel.model.value == "chgnet"
    panel.model.value = "toy"  # a model: its graph kind
    assert panel.graph_kind.value == "radius" and panel.plan().model_options == {"width": 8}


def test_registry_errors_name_the_choices() -> None:
    with pytest.raises(registry.RegistryError, match=r"model must be one of \('chgnet', 'cgcnn'.*\) \(got 'nope'\)"):
        registry.model("nope")
    with pytest.raises(registry.RegistryError, match=r"graph kind must be one of .*'radius'.* \(got 'nope'\)"):
        registry.graph_kind("nope")
    with pytest.raises(registry.RegistryError, match="is not a ModelSpec"):
        registry.register_model(object())  # type: ignore[arg-type]
    with pytest.raises(registry.RegistryError, match="graph kind must be one of"):
        registry.register_model(registry.Model(**{**TOY.__dict__, "name": "x", "graph_kind": "nope"}))
    for name in registry.models():
        spec = registry.model(name)
        assert isinstance(spec, registry.ModelSpec) and spec.graph_kind in registry.graph_kinds()
        assert not set(spec.options) & set(_plan_fields()), f"{name}'s options shadow Plan fields"
    for name in registry.graph_kinds():
        if name not in EXTRA_KINDS:  # those need their packages: test_registry_kinds_of_the_extras
            _check_kind(name)


def _check_kind(name: str) -> None:
    """A graph kind writes what it says it needs and reads it back into a graph."""
    from pymatgen.core import Structure

    from colab_kit.store.format import RAGGED

    ids, rows = shipped_records(3)
    kind = registry.graph_kind(name)
    assert isinstance(kind, registry.GraphKind) and set(kind.needs) <= {*RAGGED, "lattice"}
    params = get_converter(name).params
    arrays = kind.convert(Structure.from_dict(rows[2][0]), params, ids[2])
    assert set(arrays) == set(kind.needs), name  # what it says it needs is what it writes
    assert kind.to_graph(arrays, 0.5, ids[2], params) is not None


#: graph kinds that live in a model extra's package (alignn, matgl)
EXTRA_KINDS = {"alignn": "alignn.torch_graph_builder", "matgl": "matgl.ext.pymatgen"}


@pytest.mark.extras
@pytest.mark.parametrize("name", sorted(EXTRA_KINDS))
def test_registry_kinds_of_the_extras(name: str) -> None:
    """What the core kinds are checked for above, for the kinds whose package is an extra (skipped without it)."""
    pytest.importorskip(EXTRA_KINDS[name], reason=f'needs pip install "colab_kit[{name}]"')
    _check_kind(name)


def _plan_fields() -> list[str]:
    from dataclasses import fields

    from colab_kit.plan.planner import Plan

    return [f.name for f in fields(Plan)]


# Modules that may name a model or graph kind: the registry and the files that declare them.
_ALLOWED = ("registry.py", "models/", "graphs/")
_NAMES = ("chgnet", "cgcnn", "radius", "comformer", "alignn", "m3gnet", "tensornet", "mace")


def test_no_module_outside_the_registry_compares_model_or_graph_names() -> None:
    """The grep the issue asks for: no `== "cgcnn"`, `in ("chgnet", ...)`, `{"radius": ...}` outside the registry."""
    names = "|".join(_NAMES)
    pattern = re.compile(rf"""(==|!=|\bin\b|\bis\b)\s*\(?\s*["']({names})["']|["']({names})["']\s*:""")
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith(_ALLOWED):
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{rel}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_help_lists_the_registered_models_without_importing_them() -> None:
    code = ("import sys; from colab_kit.cli import build_parser; build_parser().parse_args(['detect', '--model', "
            "'cgcnn']); print(sorted(m for m in sys.modules if m.startswith('colab_kit.models.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
