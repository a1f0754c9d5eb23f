"""Every real dataset in shared/data, in every layout colab_kit reads, through ``run --mode debug`` with both
graph kinds and the model of each: the run finishes and beats predicting the training mean on the test split.
``--mode quick`` (slow) does the same at 3,000 structures / 10 epochs."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from colab_kit.plan.machine import detect
from colab_kit.plan.planner import make_plan
from colab_kit.run.pipeline import run

# (name, path under shared/data[, label column]); the cif_dir comes out of its tarball
SOURCES = [
    ("mp20_subset_1355_csv", "mp20_subset_1355/mp20_subset_1355.csv", "formation_energy_per_atom"),
    ("mp_eform_cgcnn_3000_json", "mp_eform_cgcnn_3000/mp_eform_cgcnn_3000_matbench.json.gz"),
    ("mp_eform_cgcnn_3000_cifs", "mp_eform_cgcnn_3000/cifs.tar.gz"),
    ("mp20_subset_1355", "mp20_subset_1355/mp20_subset_1355_matbench.json.gz"),
    ("mp_devset_200", "matsciml_devsets/mp_devset_200.json.gz"),
    ("oqmd_devset_200", "matsciml_devsets/oqmd_devset_200.json.gz"),
    ("alexandria_devset_98", "matsciml_devsets/alexandria_devset_98.json.gz"),
    ("carolina_devset_100", "matsciml_devsets/carolina_devset_100.json.gz"),
    ("alignn_jarvis_bandgap_50_poscars", "alignn_jarvis_bandgap_50"),
    ("alignn_jarvis_bandgap_50_json", "alignn_jarvis_bandgap_50/jarvis_format_derived.json"),
    ("matbench_phonons_1265", "matbench_phonons_1265/matbench_phonons.json.gz"),
]


def _source(shared: Path, rel: str, tmp: Path) -> Path:
    path = shared / rel
    if path.name == "cifs.tar.gz":
        if not (tmp / "mp_eform_cgcnn_3000").exists():
            with tarfile.open(path) as tar:
                tar.extractall(tmp, filter="data")
        return tmp / "mp_eform_cgcnn_3000"
    return path


@pytest.fixture(scope="module")
def extracted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("extracted")


def _run(shared: Path, rel: str, extracted: Path, work: Path, converter: str, mode: str,
         target: str | None = None) -> dict:
    plan = make_plan(detect(), mode, data=str(_source(shared, rel, extracted)), graph_kind=converter,
                     work_dir=str(work), convert_workers=2, target=target)
    return run(plan, progress=False, log_to_file=True).metrics


# Every layout with radius graphs (CGCNN); CHGNet's graphs and fine-tuning on one layout in the default suite and
# on every other in the long tests (the readers do not depend on the model: CHGNet there checks the model, ~15 s each)
DEBUG_CASES = [pytest.param(*(*s, None)[:3], kind, id=f"{s[0]}-{kind}",
                            marks=[pytest.mark.long] if kind == "chgnet" and s[0] != "mp_eform_cgcnn_3000_json" else [])
               for kind in ("radius", "chgnet") for s in SOURCES]


@pytest.mark.parametrize("name,rel,target,converter", DEBUG_CASES)
def test_debug_run_beats_the_mean_predictor(shared_data: Path, extracted: Path, tmp_path: Path, name: str,
                                            rel: str, target: str | None, converter: str) -> None:
    m = _run(shared_data, rel, extracted, tmp_path, converter, "debug", target)
    assert m["status"] in ("finished", "early-stopped") and m["test_n"] >= 4, m
    assert m["test_mae"] < m["mean_predictor_test_mae"], (name, converter, m["test_mae"], m["mean_predictor_test_mae"])


@pytest.mark.slow
@pytest.mark.parametrize("converter", ["radius", "chgnet"])
@pytest.mark.parametrize("name,rel,target", [(*s, None)[:3] for s in SOURCES], ids=[s[0] for s in SOURCES])
def test_quick_run_beats_the_mean_predictor(shared_data: Path, extracted: Path, tmp_path: Path, name: str,
                                            rel: str, target: str | None, converter: str) -> None:
    m = _run(shared_data, rel, extracted, tmp_path, converter, "quick", target)
    assert m["test_mae"] < m["mean_predictor_test_mae"], (name, converter, m["test_mae"], m["mean_predictor_test_mae"])
