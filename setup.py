"""Install colab_kit: ``pip install -e .`` (runtime) or ``pip install -e ".[test]"`` (tests)."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def version() -> str:
    """colab_kit/version.py's VERSION, read as text (setup.py must not import the package it installs)."""
    return re.search(r'^VERSION = "([^"]+)"', (HERE / "colab_kit" / "version.py").read_text(), re.M).group(1)


def requirements() -> list[str]:
    lines = (HERE / "requirements.txt").read_text().splitlines()
    return [ln.split("#")[0].strip() for ln in lines if ln.split("#")[0].strip()]


#: The field's model packages, each an optional extra: ``pip install "colab_kit[alignn]"`` / ``"colab_kit[matgl]"`` / ``"colab_kit[mace]"``.
#: tests/test_colab_install.py resolves each against Google Colab's packages (it may add packages, never replace
#: one of Colab's). alignn >= 2026.5.20: its pure-torch model and graph builder (no DGL); matgl >= 4.1: on
#: PyTorch Geometric, without DGL; mace-torch >= 0.3.14: ScaleShiftMACE with heads and radial_MLP, pure Python (its
#: e3nn 0.4.4 and matscipy's cp313 wheels install on Colab's Python 3.13 beside Colab's packages).
MODEL_EXTRAS = {
    "alignn": ["alignn>=2026.5.20"],
    "matgl": ["matgl>=4.1"],
    "mace": ["mace-torch>=0.3.14"],
}

setup(
    name="colab_kit",
    version=version(),
    description="Train crystal graph neural networks on a free Google Colab runtime without running out of memory",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["colab_kit", "colab_kit.*"]),
    package_data={"colab_kit": ["data/*.json.gz", "data/*.extxyz.gz", "data/*.md", "data/*.txt"]},
    include_package_data=True,
    install_requires=requirements(),
    extras_require={
        **MODEL_EXTRAS,
        "test": ["pytest>=8", "nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6", "ruff>=0.5", "cryptography>=42",
                 "pyarrow>=14", "import-linter>=2.1"],
    },
    entry_points={"console_scripts": ["colab_kit=colab_kit.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Chemistry",
        "Topic :: Scientific/Engineering :: Physics",
    ],
)
