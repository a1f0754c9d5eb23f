"""The package's shape, checked on its source: the layer contract (import-linter, pyproject.toml), no import cycle,
no module reaching into another's private names, and stages that talk through their packages' public names."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

PACKAGE = REPO / "colab_kit"
STAGES = ("plan", "sources", "graphs", "store", "loader", "models", "training", "use", "run", "cli", "notebook", "util")


def _modules() -> dict[str, Path]:
    """Every module of colab_kit by dotted name (a package by its __init__)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(path: Path) -> list[ast.ImportFrom]:
    return [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ImportFrom) and n.module
            and n.module.startswith("colab_kit")]


def test_the_layer_contract_holds() -> None:
    """import-linter's layers contract in pyproject.toml: each stage imports only the stages beneath it."""
    pytest.importorskip("importlinter", reason="install the test extra: pip install -e '.[test]'")
    script = Path(sys.executable).parent / "lint-imports"  # the console script installed beside this Python
    res = subprocess.run([str(script)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert res.returncode == 0 and "1 kept, 0 broken" in res.stdout, res.stdout[-4000:] + res.stderr[-2000:]


def test_no_import_cycle() -> None:
    """No module imports itself through others, at module level or inside a function."""
    grimp = pytest.importorskip("grimp", reason="install the test extra: pip install -e '.[test]'")
    graph = grimp.build_graph("colab_kit")
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def connect(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for module in sorted(graph.modules):
        if module not in index:
            connect(module)
    assert cycles == []


def test_no_module_imports_another_modules_private_name() -> None:
    found = []
    for name, path in MODULES.items():
        for node in _imports(path):
            if any(part.startswith("_") for part in node.module.split(".")):
                found.append(f"{path.relative_to(REPO)}:{node.lineno} imports private module {node.module}")
            found += [f"{path.relative_to(REPO)}:{node.lineno} imports {a.name} from {node.module}"
                      for a in node.names if a.name.startswith("_") and node.module != name]
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):  # module._name: an attribute of another colab_kit module
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and isinstance(node.value, ast.Name) and node.value.id in _module_aliases(tree)):
                found.append(f"{path.relative_to(REPO)}:{node.lineno} uses {node.value.id}.{node.attr}")
    assert found == []


def _module_aliases(tree: ast.Module) -> set[str]:
    """Local names bound to colab_kit modules (``from colab_kit.util import distributed``)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("colab_kit"):
            for a in node.names:
                if f"{node.module}.{a.name}" in MODULES:
                    names.add(a.asname or a.name)
    return names


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_declares_its_public_names_and_others_use_only_those(stage: str) -> None:
    package = importlib.import_module(f"colab_kit.{stage}")
    public = set(package.__all__)
    assert public and all(hasattr(package, n) for n in public), sorted(n for n in public if not hasattr(package, n))
    outside = []
    for path in MODULES.values():
        rel = path.relative_to(PACKAGE).parts
        if rel[0] == stage:
            continue
        for node in _imports(path):
            parts = node.module.split(".")
            if len(parts) < 2 or parts[1] != stage or len(parts) == 2 or parts[2] in public:
                continue  # the package itself, or a module it exports (util's modules)
            outside.append(f"{path.relative_to(REPO)}:{node.lineno} imports {node.module} "
                           f"(use `from colab_kit.{stage} import ...`)")
    assert outside == []
