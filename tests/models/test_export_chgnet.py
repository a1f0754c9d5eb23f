"""export_chgnet: a fine-tuned CHGNetRegressor written as a plain CHGNet file, checked through CHGNet's own
``from_file``, ``predict_structure``, StructOptimizer and CHGNetCalculator on real MP structures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import fixture_structures

from colab_kit.errors import ColabKitError
from colab_kit.graphs import get_converter
from colab_kit.models.chgnet import CHGNetRegressor, ExportError, export_chgnet, export_chgnet_weights

# single-site Au; 2-, 3-, 4- and 5-site cells of 2-3 elements; 14- and 16-site ternary/binary oxides-chalcogenides
IDS = ("mp-81", "mp-10015", "mp-1018133", "mp-10052", "mp-10010", "mp-1013530", "mp-1001016", "mp-1001011")


@pytest.fixture(scope="module")
def records() -> list[tuple[str, object, float]]:
    by_id = {i: (i, s, y) for i, s, y in fixture_structures("mp_eform_cgcnn_3000_sample.json.gz")}
    return [by_id[i] for i in IDS]


@pytest.fixture(scope="module")
def batch(records: list) -> tuple[list, torch.Tensor]:
    conv = get_converter("chgnet")
    graphs = [conv.to_graph(conv.convert(s, graph_id=i), target=y, graph_id=i) for i, s, y in records]
    return graphs, torch.tensor([y for _, _, y in records], dtype=torch.float32)


@pytest.fixture(scope="module")
def fitted(batch: tuple) -> CHGNetRegressor:
    """The output map as a run starts it: least squares on the real formation energies."""
    reg = CHGNetRegressor(pretrained="0.3.0")
    reg.init_output([batch])
    return reg.eval()


@pytest.fixture(scope="module")
def moved() -> CHGNetRegressor:
    """An output map far from identity (as after fine-tuning): scale 0.7, random references."""
    reg = CHGNetRegressor(pretrained="0.3.0")
    with torch.no_grad():
        reg.scale.fill_(0.7)
        reg.reference.copy_(torch.randn(119, generator=torch.Generator().manual_seed(0)))
    return reg.eval()


@pytest.fixture(scope="module")
def exported(moved: CHGNetRegressor, tmp_path_factory: pytest.TempPathFactory):
    from chgnet.model import CHGNet

    return CHGNet.from_file(str(export_chgnet(moved, tmp_path_factory.mktemp("export") / "chgnet.pt")))


def prediction(reg: CHGNetRegressor, batch: tuple) -> np.ndarray:
    with torch.no_grad():
        return reg(batch).numpy()


@pytest.mark.parametrize("which", ["fitted", "moved"])
def test_energy_per_atom_equals_the_regressor(which: str, request: pytest.FixtureRequest, records: list,
                                              batch: tuple, tmp_path: Path) -> None:
    from chgnet.model import CHGNet

    reg = request.getfixturevalue(which)
    path = export_chgnet(reg, tmp_path / "chgnet.pt")
    model = CHGNet.from_file(str(path))
    got = np.array([float(model.predict_structure(s, task="e")["e"]) for _, s, _ in records])
    np.testing.assert_allclose(got, prediction(reg, batch), atol=1e-5, rtol=0)


def test_forces_and_stress_are_scaled_and_magmoms_unchanged(moved: CHGNetRegressor, exported, records: list) -> None:
    for _, s, _ in records[:5]:
        mine, orig = exported.predict_structure(s), moved.chgnet.predict_structure(s)
        np.testing.assert_allclose(mine["f"], 0.7 * orig["f"], atol=1e-5)
        # GPa; CHGNet's float32 stress moves ~4e-4 GPa (SiOs) when the readout weights change by 1e-7 relative
        np.testing.assert_allclose(mine["s"], 0.7 * orig["s"], atol=2e-3)
        np.testing.assert_allclose(mine["m"], orig["m"], atol=1e-6)
    assert np.abs(orig["f"]).max() > 1e-3  # a cell with real forces, so the check above means something


def test_file_is_chgnet_layout_and_loads_with_weights_only(moved: CHGNetRegressor, tmp_path: Path) -> None:
    path = export_chgnet(moved, tmp_path / "chgnet.pt")
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert set(state["model"]) == {"model_args", "state_dict"}
    assert set(state["model"]["state_dict"]) == set(moved.chgnet.state_dict())
    assert state["model"]["model_args"] == moved.chgnet.model_args
    assert [p.name for p in tmp_path.iterdir()] == ["chgnet.pt"]  # no temporary left beside it


def test_export_leaves_the_regressor_unchanged(moved: CHGNetRegressor, tmp_path: Path) -> None:
    before = {k: v.clone() for k, v in moved.state_dict().items()}
    export_chgnet(moved, tmp_path / "chgnet.pt")
    assert all(torch.equal(before[k], v) for k, v in moved.state_dict().items())


def test_best_pt_exports_the_same_file(moved: CHGNetRegressor, tmp_path: Path) -> None:
    torch.save(moved.state_dict(), tmp_path / "best.pt")
    a = torch.load(export_chgnet(moved, tmp_path / "a.pt"), weights_only=True)["model"]["state_dict"]
    b = torch.load(export_chgnet_weights(tmp_path / "best.pt", tmp_path / "b.pt"), weights_only=True)
    assert all(torch.equal(v, b["model"]["state_dict"][k]) for k, v in a.items())


def test_struct_optimizer_relaxes_with_the_exported_model(exported, records: list) -> None:
    from chgnet.model import StructOptimizer
    from pymatgen.core import Structure

    s = {i: s for i, s, _ in records}["mp-10010"].copy()
    rng = np.random.default_rng(0)
    for k in range(len(s)):
        s.translate_sites([k], rng.normal(0, 0.08, 3), frac_coords=False)
    e0 = float(exported.predict_structure(s, task="e")["e"])
    result = StructOptimizer(model=exported).relax(s, steps=20, fmax=0.1, verbose=False)
    final = result["final_structure"]
    assert isinstance(final, Structure)
    energies = result["trajectory"].energies  # eV per cell
    assert len(energies) > 1 and energies[0] == pytest.approx(e0 * len(s), abs=1e-4)  # steps of the exported model
    assert float(exported.predict_structure(final, task="e")["e"]) < e0


def test_ase_calculator_gives_the_same_energy(moved: CHGNetRegressor, exported, records: list, batch: tuple) -> None:
    from chgnet.model.dynamics import CHGNetCalculator
    from pymatgen.io.ase import AseAtomsAdaptor

    want = prediction(moved, batch)
    for k in (0, 4, 6):
        atoms = AseAtomsAdaptor.get_atoms(records[k][1])
        atoms.calc = CHGNetCalculator(model=exported)
        assert atoms.get_potential_energy() / len(atoms) == pytest.approx(want[k], abs=1e-5)  # eV total -> eV/atom


def test_not_a_chgnet_regressor_is_refused(tmp_path: Path) -> None:
    torch.save(torch.nn.Linear(2, 1).state_dict(), tmp_path / "linear.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    cases = [lambda: export_chgnet(torch.nn.Linear(2, 1), tmp_path / "out.pt"),
             lambda: export_chgnet_weights(tmp_path / "linear.pt", tmp_path / "out.pt"),
             lambda: export_chgnet_weights(tmp_path / "junk.pt", tmp_path / "out.pt"),
             lambda: export_chgnet_weights({"scale": torch.tensor(1.0)}, tmp_path / "out.pt")]
    for case in cases:
        with pytest.raises(ExportError) as info:
            case()
        assert isinstance(info.value, ColabKitError)
        assert "\n" not in str(info.value) and "best.pt" in str(info.value)
    assert not (tmp_path / "out.pt").exists()


def test_weights_of_another_architecture_are_refused(moved: CHGNetRegressor, tmp_path: Path) -> None:
    state = {k: v for k, v in moved.state_dict().items() if not k.startswith("chgnet.mlp.")}
    with pytest.raises(ExportError, match=r"do not fit CHGNet pretrained='0.3.0': pass the pretrained option"):
        export_chgnet_weights(state, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


@pytest.mark.long  # 1 min; the exported-model relaxation test stays in the default suite
def test_a_chgnet_fine_tuned_by_run_relaxes_through_struct_optimizer(tmp_path: Path, records: list) -> None:
    """End to end: `run` fine-tunes CHGNet, `export` writes chgnet.pt, CHGNet's own StructOptimizer relaxes with it,
    and colab_kit.load of the export predicts what CHGNet's predict_structure gives."""
    from chgnet.model import CHGNet, StructOptimizer
    from helpers import run_cli

    import colab_kit

    res = run_cli("run", "--mode", "debug", "--set", "n_samples=60", "--set", "epochs=1", "--work-dir", str(tmp_path))
    assert res.returncode == 0, res.stderr[-3000:]
    res = run_cli("export", "--run", str(tmp_path / "mp_eform_cgcnn_3000-chgnet-chgnet-debug"), "--out", str(tmp_path / "m"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "chgnet: " in res.stdout and (tmp_path / "m" / "chgnet.pt").is_file()
    model = CHGNet.from_file(str(tmp_path / "m" / "chgnet.pt"))
    s = records[3][1].copy()
    rng = np.random.default_rng(0)
    for i in range(len(s)):  # a seeded displacement of every site, ~0.05 Å
        s.translate_sites([i], rng.normal(0.0, 0.03, 3), frac_coords=False)
    e0 = float(model.predict_structure(s)["e"])
    assert colab_kit.load(tmp_path / "m", device="cpu").predict([s])[0] == pytest.approx(e0, abs=1e-5)
    out = StructOptimizer(model=model).relax(s, steps=15, fmax=0.1, verbose=False)
    assert out["final_structure"].composition == s.composition
    assert float(model.predict_structure(out["final_structure"])["e"]) <= e0 + 1e-6
