"""Installing colab_kit into Google Colab's own package set only adds packages: real pip resolution.

Colab's packages are Google's published ``pip freeze`` (``../shared/colab/pip-freeze.gpu.txt``,
Python 3.13, torch 2.11.0+cu128, ipywidgets 7.7.1 ...). A bare venv gets a metadata-only
``.dist-info`` for each of them (``.ci/colab_pins.py``), so pip sees Colab's packages as installed,
torch's CUDA build included, without downloading any of them. ``pip install --dry-run --report``
then resolves ``requirements.txt`` there with every installed version as a constraint, exactly as
the notebook's install cell does on Colab: it succeeds only if nothing of Colab's has to change,
and when it fails the unconstrained resolution names what pip would upgrade or downgrade.

Needs PyPI (package metadata only). Python 3.13 cannot be installed here, so what Colab's Python
does differently is checked from the wheels each added package publishes for cp313.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import venv
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import REPO
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REQUIREMENTS = REPO / "requirements.txt"
_spec = importlib.util.spec_from_file_location("colab_pins", REPO / ".ci" / "colab_pins.py")
colab_pins = sys.modules.setdefault("colab_pins", importlib.util.module_from_spec(_spec))  # dataclasses look it up
_spec.loader.exec_module(colab_pins)  # type: ignore[union-attr]

#: Packages colab_kit adds that publish no wheel for CPython 3.13, so pip builds them on Colab.
#: The notebook's install cell and the README name these; a change here must change those too.
SOURCE_BUILDS_ON_COLAB = {
    "chgnet": "Cython extension; wheels only up to cp312 (about 25 s to build on 2 CPUs)",
    "nvidia-ml-py3": "sdist only, pure Python (seconds)",
}
#: Colab's platform: Ubuntu 22.04 (glibc 2.35), x86_64. pip does not expand manylinux tags itself
#: when --platform is given, so every tag a glibc 2.35 system accepts is listed.
COLAB_PLATFORMS = [f"manylinux_2_{m}_x86_64" for m in range(35, 16, -1)] + [
    "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]


@dataclass
class Resolution:
    """What ``pip install --dry-run`` decided in the fake Colab environment.

    Attributes:
        ok: pip found a resolution.
        installs: what pip would install, canonical name -> version.
        changed: Colab packages pip would replace, name -> (Colab's version, pip's version).
        conflicts: Colab packages named in pip's conflict report (``The user requested (constraint) x==v``).
        output: pip's stdout and stderr, for failure messages.
    """

    ok: bool
    installs: dict[str, str] = field(default_factory=dict)
    changed: dict[str, tuple[str, str]] = field(default_factory=dict)
    conflicts: list[str] = field(default_factory=list)
    output: str = ""


@pytest.fixture(scope="module")
def pins() -> dict:
    try:
        return colab_pins.read_freeze()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def colab_python(pins: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv whose only 'installed' packages are Colab's, as metadata stubs; returns its python."""
    root = tmp_path_factory.mktemp("fake-colab")
    venv.EnvBuilder(with_pip=False).create(root / "venv")
    python = root / "venv" / "bin" / "python"
    site = Path(subprocess.check_output([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    assert colab_pins.fake_colab_site(pins, site) > 600
    return python


def resolve(python: Path, requirements: Path, pins: dict, tmp: Path, *, constrained: bool) -> Resolution:
    """``pip install --dry-run -r requirements`` into the fake Colab venv at ``python``.

    Args:
        constrained: pass every Colab version as a constraint (the notebook's install), so pip may
            only add packages; otherwise plain ``pip install``, which replaces a package whenever a
            requirement rules out Colab's version.
    """
    report = tmp / f"report-{'c' if constrained else 'u'}.json"
    # Not --quiet: pip's conflict report ("The user requested (constraint) x==v") is an info message.
    cmd = [sys.executable, "-m", "pip", "--python", str(python), "install", "--dry-run",
           "--report", str(report), "-r", str(requirements)]
    if constrained:
        constraints = tmp / "colab-installed.txt"
        constraints.write_text("".join(f"{p.name}=={p.version}\n" for p in pins.values() if p.version))
        cmd += ["-c", str(constraints)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    conflicts = sorted({colab_pins.canonical(m) for m in re.findall(r"\(constraint\) ([A-Za-z0-9_.\-]+)==", output)})
    if proc.returncode != 0:
        return Resolution(False, conflicts=conflicts, output=output)
    installs = {colab_pins.canonical(i["metadata"]["name"]): i["metadata"]["version"]
                for i in json.loads(report.read_text())["install"]}
    changed = {k: (pins[k].version, v) for k, v in installs.items() if k in pins and pins[k].version != v}
    return Resolution(True, installs, changed, conflicts, output)


def colab_changes(python: Path, requirements: Path, pins: dict, tmp: Path) -> list[str]:
    """Problems installing ``requirements`` on Colab would cause, one line per Colab package; empty when none."""
    res = resolve(python, requirements, pins, tmp, constrained=True)
    if res.ok:
        # Constraints forbid changes; a stub-less package would still show up here.
        return [f"{k}: Colab has {old}, pip would install {new}" for k, (old, new) in res.changed.items()]
    plain = resolve(python, requirements, pins, tmp, constrained=False)
    problems = [f"{k}: Colab has {pins[k].version}; {requirements.name} rules it out (pip's conflict report)"
                for k in res.conflicts]
    problems += [f"{k}: plain pip install would {'upgrade' if Version(new) > Version(old) else 'downgrade'} "
                 f"Colab's {old} to {new}" for k, (old, new) in plain.changed.items()]
    return problems or [f"pip could not resolve {requirements} against Colab's versions:\n{res.output[-3000:]}"]


@pytest.fixture(scope="module")
def colab_install(colab_python: Path, pins: dict, tmp_path_factory: pytest.TempPathFactory) -> Resolution:
    """The notebook's install of requirements.txt on Colab (constrained to Colab's versions), resolved once."""
    return resolve(colab_python, REQUIREMENTS, pins, tmp_path_factory.mktemp("resolve"), constrained=True)


def _requirements(path: Path) -> list[Requirement]:
    lines = (ln.split("#")[0].strip() for ln in path.read_text().splitlines())
    return [Requirement(ln) for ln in lines if ln]


def test_every_range_admits_colabs_version(pins: dict) -> None:
    both = [r for r in _requirements(REQUIREMENTS) if colab_pins.canonical(r.name) in pins]
    assert {colab_pins.canonical(r.name) for r in both} >= {"torch", "numpy", "ipywidgets", "tqdm", "scipy", "requests"}
    for req in both:
        colab = pins[colab_pins.canonical(req.name)].version
        # torch's CUDA build 2.11.0+cu128 is already installed on Colab and must be kept: the range
        # has to admit its public version (a local label is not a different release).
        public = Version(colab).public
        assert req.specifier.contains(public, prereleases=True), (
            f"requirements.txt: {req} rules out Colab's {req.name} {colab}; widen the range to admit it")


def test_install_on_colab_adds_packages_and_changes_none(colab_install: Resolution, colab_python: Path, pins: dict,
                                                        tmp_path: Path) -> None:
    if not colab_install.ok:
        pytest.fail("installing colab_kit on Colab would change Colab's packages:\n"
                    + "\n".join(colab_changes(colab_python, REQUIREMENTS, pins, tmp_path)))
    assert colab_install.changed == {}
    assert {"pymatgen", "chgnet", "torch-geometric", "jarvis-tools", "ase", "ijson"} <= set(colab_install.installs)
    assert "torch" not in colab_install.installs and "ipywidgets" not in colab_install.installs  # Colab's are kept


def test_a_requirement_needing_newer_ipywidgets_is_caught(colab_python: Path, pins: dict, tmp_path: Path) -> None:
    newer = tmp_path / "requirements.txt"
    newer.write_text(re.sub(r"^ipywidgets[^\s#]*", "ipywidgets>=8", REQUIREMENTS.read_text(), flags=re.M))
    assert "ipywidgets>=8" in newer.read_text()
    problems = colab_changes(colab_python, newer, pins, tmp_path)
    assert "ipywidgets: Colab has 7.7.1; requirements.txt rules it out (pip's conflict report)" in problems, problems
    assert any(p.startswith("ipywidgets: plain pip install would upgrade Colab's 7.7.1") for p in problems), problems


def _cp313_wheels(tmp: Path, *requirements: str) -> bool:
    """Whether every one of ``requirements`` has a wheel pip would take on Colab's CPython 3.13 (no build)."""
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--no-deps", "--only-binary=:all:",
           "--target", str(tmp / "cp313"), "--python-version", "3.13", "--implementation", "cp", "--abi", "cp313",
           *(a for p in COLAB_PLATFORMS for a in ("--platform", p)), *requirements]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600).returncode == 0


def test_what_colabs_python_313_builds_from_source(colab_install: Resolution, tmp_path: Path) -> None:
    adds = colab_install.installs
    assert colab_install.ok and adds, colab_install.output[-2000:]
    wheels = [f"{k}=={v}" for k, v in adds.items() if k not in SOURCE_BUILDS_ON_COLAB]
    # One pip call for all packages expected to have wheels; one per package only to name a failure.
    if not _cp313_wheels(tmp_path, *wheels):
        missing = [r for r in wheels if not _cp313_wheels(tmp_path, r)]
        pytest.fail(f"no CPython 3.13 wheel for {missing}: Colab builds them from source; add them to "
                    "SOURCE_BUILDS_ON_COLAB, the notebook's install cell and the README's Colab section")
    for name in SOURCE_BUILDS_ON_COLAB.keys() & adds.keys():
        assert not _cp313_wheels(tmp_path, f"{name}=={adds[name]}"), (
            f"{name} {adds[name]} now publishes a cp313 wheel: drop it from SOURCE_BUILDS_ON_COLAB, the "
            "notebook's install cell and the README")


def _model_extras() -> dict[str, list[str]]:
    """setup.py's ``MODEL_EXTRAS`` (read from its source: importing setup.py would run setup())."""
    import ast

    for node in ast.parse((REPO / "setup.py").read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "MODEL_EXTRAS" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py defines no MODEL_EXTRAS")


#: Packages a model extra adds that publish no cp313 wheel (pip builds them on Colab), with what that costs.
EXTRA_SOURCE_BUILDS = {"bibtexparser": "pymatgen-core's dependency (matgl extra): 1.4.4 is an sdist only, pure Python "
                                       "(seconds)",
                       "python-hostlist": "mace-torch's dependency (mace extra): 2.3.0 is an sdist only, one pure-Python "
                                          "module (seconds)"}
#: The one change a model extra makes to Colab's packages, each with its cause; anything else fails the test.
KNOWN_EXTRA_CHANGES = {
    "matgl": {"requests": "every matgl 4.x (the releases on PyTorch Geometric, without DGL) needs pymatgen-core >= "
                          "2026.5.18, and every such pymatgen-core needs requests >= 2.32.5; Colab has 2.32.4"},
}


@pytest.mark.parametrize("extra", sorted(_model_extras()))
def test_model_extra_on_colab_adds_packages_and_changes_none(extra: str, colab_python: Path, pins: dict,
                                                            tmp_path: Path) -> None:
    """``pip install "colab_kit[alignn]"`` / ``"[matgl]"`` / ``"[mace]"`` on Colab: only additions (or exactly the documented
    upgrade in :data:`KNOWN_EXTRA_CHANGES`), each package with a cp313 wheel."""
    reqs = tmp_path / "requirements.txt"
    reqs.write_text(REQUIREMENTS.read_text() + "".join(f"{r}\n" for r in _model_extras()[extra]))
    known = KNOWN_EXTRA_CHANGES.get(extra, {})
    # with a known change the constrained resolution has no answer (and pip backtracks for many minutes over
    # boto3 releases to find that out): resolve as a user's plain `pip install` does and check what it changes
    res = resolve(colab_python, reqs, pins, tmp_path, constrained=not known)
    if not res.ok:
        pytest.fail(f"installing colab_kit[{extra}] on Colab would change Colab's packages:\n"
                    + "\n".join(colab_changes(colab_python, reqs, pins, tmp_path)))
    assert set(res.changed) == set(known), (res.changed, known)
    for name, (old, new) in res.changed.items():  # upgrades only: Colab's own code keeps what it was built with
        assert Version(new) > Version(old), (name, old, new)
    packages = {canonicalize_name(Requirement(r).name) for r in _model_extras()[extra]}  # mace: mace-torch
    assert packages <= set(res.installs) and "torch" not in res.installs and "ipywidgets" not in res.installs
    builds = SOURCE_BUILDS_ON_COLAB.keys() | EXTRA_SOURCE_BUILDS.keys()
    wheels = [f"{k}=={v}" for k, v in res.installs.items() if k not in builds]
    if not _cp313_wheels(tmp_path, *wheels):
        missing = [r for r in wheels if not _cp313_wheels(tmp_path, r)]
        pytest.fail(f"colab_kit[{extra}]: no CPython 3.13 wheel for {missing}: Colab would build them from source; "
                    "add them to EXTRA_SOURCE_BUILDS and the README")
