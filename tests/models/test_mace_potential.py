"""MACE (mace-torch) as a potential, on the shipped DFT frames: the store's MACE graphs are mace's own neighbourhood,
forces and stress are the derivatives of the energy (finite differences, float64), mace's own calculator reads the
exported file and agrees with the adapter, a model file fine-tunes from where it was, and what cannot work is
refused in one line."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.extras  # CI runs these in the environment with the extras; the README's command skips them
pytest.importorskip("mace.modules", reason='needs pip install "colab_kit[mace]"')

import torch  # noqa: E402
from torch_geometric.data import Batch  # noqa: E402

from colab_kit.graphs import radius  # noqa: E402
from colab_kit.models import build_model  # noqa: E402
from colab_kit.registry import RegistryError  # noqa: E402

FRAMES = Path(__file__).resolve().parents[2] / "colab_kit" / "data" / "mlearn_frames_221.extxyz.gz"
SMALL = {"channels": 8, "max_L": 1, "num_interactions": 2, "correlation": 2}


def _frames(n: int) -> list:
    import ase.io

    return ase.io.read(FRAMES, f":{n}")


def _batch(structures: list, cutoff: float = 5.0) -> Batch:
    return Batch.from_data_list([radius.to_data(radius.convert(s, cutoff=cutoff, max_neighbors=None))
                                 for s in structures])


def _structures(atoms: list) -> list:
    from pymatgen.io.ase import AseAtomsAdaptor

    return [AseAtomsAdaptor.get_structure(a) for a in atoms]


def _labels(atoms: list) -> object:
    from colab_kit.loader.frames import FrameBatch

    n = torch.tensor([len(a) for a in atoms])
    return FrameBatch(energy=torch.tensor([a.get_potential_energy() / len(a) for a in atoms]),
                      forces=torch.from_numpy(np.concatenate([a.get_forces() for a in atoms])).float(),
                      stress=torch.zeros(len(atoms), 3, 3), magmom=torch.full((int(n.sum()),), float("nan")), atoms=n)


def test_checkpoints_refuse_pickles_with_mace_imported(tmp_path: Path) -> None:
    """mace sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 for the process; colab_kit's checkpoint loader passes
    weights_only=True, which it does not override: a checkpoint that holds a pickled object is still refused."""
    from colab_kit.training.checkpoint import CheckpointError, load_checkpoint

    build_model("mace", graph_params={"cutoff": 5.0}, potential="efs", **SMALL)
    assert os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD") == "1"
    torch.save({"model": {}, "epoch": 1, "payload": Path("/")}, tmp_path / "latest.pt")  # a pickled class
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(tmp_path)


def test_store_graphs_are_maces_own_neighbourhood() -> None:
    from mace.data.neighborhood import get_neighborhood

    atoms = _frames(40)[::4]
    for a, s in zip(atoms, _structures(atoms)):
        g = radius.convert(s, cutoff=5.0, max_neighbors=None)
        center = np.repeat(np.arange(len(s)), g["nbr_count"])
        ours = set(zip(center.tolist(), g["nbr"].tolist(), map(tuple, g["image"].astype(int).tolist())))
        edges, _, unit_shifts, _ = get_neighborhood(a.get_positions(), cutoff=5.0, pbc=(True,) * 3,
                                                    cell=np.array(a.cell))
        theirs = set(zip(edges[0].tolist(), edges[1].tolist(), map(tuple, unit_shifts.astype(int).tolist())))
        assert ours == theirs and len(ours) > 0


def test_forces_and_stress_are_derivatives_of_the_energy() -> None:
    torch.manual_seed(0)
    model = build_model("mace", graph_params={"cutoff": 5.0}, potential="efs", **SMALL).double().eval()
    atoms = _frames(12)
    structures = _structures(atoms)
    model.init_output([(_batch(structures), _labels(atoms))])
    s = next(s for s in structures if 8 <= len(s) <= 64)

    def energy(struct: object) -> float:
        b = _batch([struct])
        b.pos, b.cell = b.pos.double(), b.cell.double()
        return float(model((b, None))["e"][0]) * len(struct)

    b = _batch([s])
    b.pos, b.cell = b.pos.double(), b.cell.double()
    pred = model((b, None))
    h = 1e-4
    for atom, axis in ((0, 0), (len(s) // 2, 2)):
        plus, minus = s.copy(), s.copy()
        step = np.eye(3)[axis] * h
        plus.translate_sites([atom], step, frac_coords=False, to_unit_cell=False)
        minus.translate_sites([atom], -step, frac_coords=False, to_unit_cell=False)
        fd = -(energy(plus) - energy(minus)) / (2 * h)
        assert abs(fd - float(pred["f"][atom, axis])) < 1e-5 + 1e-3 * abs(fd), (fd, pred["f"][atom, axis])
    from pymatgen.core import Lattice

    def strained(i: int, j: int, h: float) -> object:  # r' = r (1 + eps), eps symmetric with eps_ij = eps_ji = h
        eps = np.zeros((3, 3))
        eps[i, j] = eps[j, i] = h
        out = s.copy()
        out.lattice = Lattice(s.lattice.matrix @ (np.eye(3) + eps))  # fractional coordinates kept
        return out

    for i, j in ((0, 0), (1, 2)):  # GPa, tensile positive: (1/V) dE/d(strain)
        de = (energy(strained(i, j, 1e-5)) - energy(strained(i, j, -1e-5))) / 2e-5 / (1 if i == j else 2)
        fd = de / s.volume * 160.21766208
        assert abs(fd - float(pred["s"][0, i, j])) < 1e-3 + 1e-3 * abs(fd), (i, j, fd, pred["s"][0])


def test_export_is_read_by_maces_calculator_and_fine_tunes_from_the_file(tmp_path: Path) -> None:
    from mace.calculators import MACECalculator

    from colab_kit.models.mace import export_model_file

    torch.manual_seed(0)
    model = build_model("mace", graph_params={"cutoff": 5.0}, potential="efs", **SMALL).eval()
    atoms = _frames(12)
    model.init_output([(_batch(_structures(atoms)), _labels(atoms))])
    path = export_model_file(model, tmp_path / "export" / "mace.model")
    a = atoms[3].copy()
    a.calc = MACECalculator(model_paths=str(path), device="cpu", default_dtype="float32")
    pred = model((_batch(_structures([atoms[3]])), None))
    assert abs(a.get_potential_energy() / len(a) - float(pred["e"][0])) < 1e-4
    assert np.abs(a.get_forces() - pred["f"].detach().numpy()).max() < 1e-4
    ase_stress = a.get_stress(voigt=False) * 160.21766208  # ASE: eV/Å³, tensile positive
    assert np.abs(ase_stress - pred["s"][0].detach().numpy()).max() < 1e-3
    b = atoms[3].copy()
    b.calc = model.calculator()  # colab_kit.load(run).calculator() for a MACE run
    assert abs(b.get_potential_energy() - a.get_potential_energy()) < 1e-4

    resumed = build_model("mace", graph_params={"cutoff": 5.0}, potential="efs", **SMALL).eval()
    resumed.load_state_dict(model.state_dict())  # a checkpoint: avg_num_neighbors comes back from its buffer
    assert torch.allclose(resumed((_batch(_structures([atoms[3]])), None))["f"], pred["f"], atol=1e-6)

    again = build_model("mace", graph_params={"cutoff": 5.0}, potential="efs", weights=str(path)).eval()
    assert again.from_file and float(again.avg_neighbors) == pytest.approx(float(model.avg_neighbors))
    assert torch.allclose(again((_batch(_structures([atoms[3]])), None))["f"], pred["f"], atol=1e-5)
    with pytest.raises(RegistryError, match=r"r_max 5 Å but the store's graphs use 6 Å; convert with --set cutoff=5"):
        build_model("mace", graph_params={"cutoff": 6.0}, potential="efs", weights=str(path))
    torch.save({"run": os.system}, tmp_path / "evil.model")  # a pickle that names os.system: never unpickled
    with pytest.raises(RegistryError, match=r"names posix.system in its pickle, which a MACE model does not"):
        build_model("mace", graph_params={"cutoff": 5.0}, potential="efs", weights=str(tmp_path / "evil.model"))
    torch.save({"not": "a model"}, tmp_path / "other.model")
    with pytest.raises(RegistryError, match="is not a MACE model file"):
        build_model("mace", graph_params={"cutoff": 5.0}, potential="efs", weights=str(tmp_path / "other.model"))


def test_what_mace_cannot_do_is_refused_in_one_line() -> None:
    from colab_kit.plan import PlanError, detect, make_plan

    with pytest.raises(PlanError, match="mace trains as an interatomic potential only .* add --task potential"):
        make_plan(detect(), "debug", model="mace")
    with pytest.raises(RegistryError, match="MACE has no magnetic-moment head"):
        build_model("mace", graph_params={"cutoff": 5.0}, potential="efsm", **SMALL)
    plan = make_plan(detect(), "debug", model="mace", task="potential")
    assert (plan.graph_kind, plan.cutoff, plan.max_neighbors) == ("mace", 5.0, None)
    model = build_model("mace", graph_params={"cutoff": 5.0}, potential="efs", **SMALL)
    structures = _structures(_frames(3))
    structures[0].replace_species({structures[0].species[0]: "U"})  # Z 92: beyond the 89 elements of the z table
    with pytest.raises(RegistryError, match=r"knows atomic numbers .* not \[92\]"):
        model((_batch(structures), None))
