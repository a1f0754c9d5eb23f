"""Colab's package set, read from Google's published ``pip freeze``, for CI and tests/e2e/test_colab_install.py.

Two uses:

* ``python .ci/colab_pins.py constraints OUT``: a pip constraints file with Colab's version of every
  package that can be installed on this Python, so a venv built with ``-c OUT`` has Colab's versions
  of whatever it installs (the second test environment of ``.ci/run``);
* :func:`fake_colab_site`: ``.dist-info`` stubs for *every* Colab package (torch 2.11.0+cu128 included)
  in a bare venv, so ``pip install --dry-run`` there decides exactly what pip decides on Colab: keep
  what is installed when it satisfies the requirement, replace it when not.

The freeze is ``$COLAB_FREEZE`` or ``../shared/colab/pip-freeze.gpu.txt`` beside the repository.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FREEZE = Path(os.environ.get("COLAB_FREEZE") or REPO.parent / "shared" / "colab" / "pip-freeze.gpu.txt")

#: Colab pins left out of the constraints file, each with the reason it cannot apply here.
NOT_INSTALLABLE_HERE: dict[str, str] = {
    "torch": "CUDA build 2.11.0+cu128 is not published for this Python; torch==2.13.0 CPU stands in",
    "torchvision": "CUDA build; colab_kit does not use it",
    "torchaudio": "CUDA build; colab_kit does not use it",
    "torchcodec": "CUDA build; colab_kit does not use it",
    "pip": "the venv's own pip is used",
    "setuptools": "build tooling of the venv",
    "wheel": "build tooling of the venv",
    "python-apt": "a Debian package seen by pip, not on PyPI",
    # Colab's own front end renders widgets without widgetsnbextension. In classic Notebook 6.5 the
    # Output widget of 3.6.10's JS fails with ipywidgets 7.7.1 ("_deserialize_state is not a
    # function"; measured), so the browser test uses 3.6.1, the release that came with 7.7.1.
    "widgetsnbextension": "3.6.1 (released with ipywidgets 7.7.1) stands in for the browser test",
    "audioop-lts": "backport for Python >= 3.13 only",
    "standard-aifc": "backport for Python >= 3.13 only",
    "standard-chunk": "backport for Python >= 3.13 only",
    "standard-sunau": "backport for Python >= 3.13 only",
}


@dataclass(frozen=True)
class Pin:
    """One line of the freeze.

    Attributes:
        name: the distribution name as written (``PyYAML``).
        key: the canonical name (``pyyaml``), for comparisons.
        version: the installed version, or None when the line is a URL without one (``git+...``).
        url: the direct URL of a ``name @ url`` line, else None.
    """

    name: str
    key: str
    version: str | None
    url: str | None = None

    @property
    def local(self) -> bool:
        """True for a local version label (``+cu128``): a build that only the vendor's index has."""
        return self.version is not None and "+" in self.version


def canonical(name: str) -> str:
    """PEP 503 name: ``Foo_Bar.baz`` -> ``foo-bar-baz``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_freeze(path: Path = FREEZE) -> dict[str, Pin]:
    """Colab's packages by canonical name.

    Raises:
        FileNotFoundError: the freeze is not at ``path`` (set ``COLAB_FREEZE`` to its location).
    """
    if not path.is_file():
        raise FileNotFoundError(f"Colab's pip freeze not found at {path}: set COLAB_FREEZE to "
                                "googlecolab/backend-info's pip-freeze.gpu.txt")
    pins: dict[str, Pin] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if " @ " in line:
            name, url = (s.strip() for s in line.split(" @ ", 1))
            # A wheel or sdist file name carries the version; a git URL does not.
            m = re.search(rf"/{re.escape(name).replace('-', '[-_]')}-([0-9][^-/]*?)(?:-py|-cp|\.tar\.gz|\.zip)",
                          url, re.IGNORECASE)
            pins[canonical(name)] = Pin(name, canonical(name), m.group(1) if m else None, url)
        else:
            name, _, version = line.partition("==")
            pins[canonical(name)] = Pin(name, canonical(name), version)
    return pins


def constraints_text(pins: dict[str, Pin]) -> str:
    """A pip constraints file pinning every Colab package that can apply on this Python.

    Left out: URL lines (an index cannot serve them), local versions (``+cu128``) and
    :data:`NOT_INSTALLABLE_HERE`, each listed as a comment with the reason.
    """
    lines = [f"# Colab's versions from {FREEZE.name}, for Python {sys.version_info.major}.{sys.version_info.minor}"]
    for pin in sorted(pins.values(), key=lambda p: p.key):
        reason = NOT_INSTALLABLE_HERE.get(pin.key)
        if reason is None and pin.url is not None:
            reason = "a direct URL, not an index release"
        elif reason is None and pin.local:
            reason = f"local version {pin.version}"
        lines.append(f"# {pin.name}: {reason}" if reason else f"{pin.name}=={pin.version}")
    return "\n".join(lines) + "\n"


def fake_colab_site(pins: dict[str, Pin], site_packages: Path) -> int:
    """Write a metadata-only ``.dist-info`` for each pinned package into ``site_packages``.

    pip then sees these packages as installed at Colab's versions (their own dependencies are
    Colab's business and are not declared). A URL line without a version is left out.

    Returns:
        the number of stubs written.
    """
    site_packages.mkdir(parents=True, exist_ok=True)
    n = 0
    for pin in pins.values():
        if pin.version is None:
            continue
        info = site_packages / f"{re.sub(r'[-.]+', '_', pin.name)}-{pin.version}.dist-info"
        info.mkdir(exist_ok=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {pin.name}\nVersion: {pin.version}\n")
        (info / "INSTALLER").write_text("colab-freeze-stub\n")
        (info / "RECORD").write_text("")
        n += 1
    return n


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "constraints":
        print("usage: python .ci/colab_pins.py constraints OUT", file=sys.stderr)
        return 2
    Path(argv[1]).write_text(constraints_text(read_freeze()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
