"""graphs: CHGNet graphs identical to CrystalGraphConverter; radius graphs equal a brute-force search."""

from __future__ import annotations

import gzip
import json
from itertools import product
from pathlib import Path

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from colab_kit.graphs import BadStructure, get_converter

FIELDS = ("atomic_number", "atom_frac_coord", "atom_graph", "neighbor_image", "directed2undirected",
          "undirected2directed", "bond_graph", "lattice")


def _matbench(path: Path) -> list[tuple[str, Structure]]:
    with gzip.open(path, "rt") as f:
        d = json.load(f)
    return [(i, Structure.from_dict(row[0])) for i, row in zip(d["index"], d["data"])]


def _assert_same_graph(ref, mine, sid: str) -> None:
    for f in FIELDS:
        a, b = getattr(ref, f), getattr(mine, f)
        assert a.dtype == b.dtype and a.shape == b.shape, (sid, f, a.shape, b.shape, a.dtype, b.dtype)
        assert torch.equal(a, b), (sid, f)
    assert mine.atom_graph_cutoff == ref.atom_graph_cutoff and mine.bond_graph_cutoff == ref.bond_graph_cutoff


@pytest.mark.parametrize("dataset", ["mp_eform_cgcnn_3000/mp_eform_cgcnn_3000_matbench.json.gz",
                                     "matsciml_devsets/mp_devset_200.json.gz",
                                     "matsciml_devsets/oqmd_devset_200.json.gz",
                                     "matsciml_devsets/alexandria_devset_98.json.gz",
                                     "matsciml_devsets/carolina_devset_100.json.gz"])
def test_chgnet_graphs_identical_to_crystal_graph_converter(shared_data: Path, dataset: str) -> None:
    from chgnet.graph import CrystalGraphConverter

    ref_conv = CrystalGraphConverter(atom_graph_cutoff=6, bond_graph_cutoff=3, on_isolated_atoms="error")
    conv = get_converter("chgnet")
    n_same = n_bad = 0
    for sid, s in _matbench(shared_data / dataset):
        try:
            ref = ref_conv(s)
        except (ValueError, RuntimeError):
            with pytest.raises(BadStructure):
                conv.convert(s)
            n_bad += 1
            continue
        _assert_same_graph(ref, conv.to_graph(conv.convert(s), graph_id=sid), sid)
        n_same += 1
    assert n_same > 0.95 * (n_same + n_bad)


def test_chgnet_other_cutoffs_match(shared_data: Path) -> None:
    from chgnet.graph import CrystalGraphConverter

    ref_conv = CrystalGraphConverter(atom_graph_cutoff=5, bond_graph_cutoff=2.5, on_isolated_atoms="error")
    conv = get_converter("chgnet", cutoff=5, bond_cutoff=2.5)
    for sid, s in _matbench(shared_data / "mp_eform_cgcnn_3000/mp_eform_cgcnn_3000_matbench.json.gz")[:300]:
        try:
            ref = ref_conv(s)
        except (ValueError, RuntimeError):
            continue
        _assert_same_graph(ref, conv.to_graph(conv.convert(s)), sid)


def _brute_force(s: Structure, cutoff: float) -> dict[tuple[int, int, tuple[int, int, int]], float]:
    """Every (i, j, image) with 1e-8 < |r_j + image·L - r_i| <= cutoff, by looping over images."""
    lat = s.lattice.matrix
    cart = s.cart_coords
    inv = np.linalg.inv(lat).T
    reach = np.ceil(cutoff * np.linalg.norm(inv, axis=0)).astype(int) + 1  # cells needed per axis
    out = {}
    for img in product(*(range(-r, r + 1) for r in reach)):
        shifted = cart + np.array(img) @ lat
        d = np.linalg.norm(shifted[None, :, :] - cart[:, None, :], axis=-1)
        for i, j in zip(*np.nonzero((d <= cutoff) & (d > 1e-8))):
            out[(int(i), int(j), img)] = float(d[i, j])
    return out


def test_radius_graph_equals_brute_force(shared_data: Path) -> None:
    structures = _matbench(shared_data / "mp_eform_cgcnn_3000/mp_eform_cgcnn_3000_matbench.json.gz")
    sample = [x for x in structures if len(x[1]) <= 40][:40]
    sample.append(("skewed", Structure(Lattice.from_parameters(3.1, 4.2, 9.5, 61, 75, 110), ["Na", "Cl"],
                                       [[0, 0, 0], [0.4, 0.3, 0.6]])))
    conv = get_converter("radius", cutoff=6.0, max_neighbors=None)
    capped = get_converter("radius", cutoff=6.0, max_neighbors=12)
    for sid, s in sample:
        ref = _brute_force(s, 6.0)
        g = conv.convert(s)
        center = np.repeat(np.arange(len(s)), g["nbr_count"])
        got = {(int(i), int(j), tuple(int(x) for x in img)) for i, j, img in zip(center, g["nbr"], g["image"])}
        assert got == set(ref), sid
        data = conv.to_graph(g)
        from colab_kit.graphs.radius import edge_vectors

        d = edge_vectors(data.pos, data.cell, data.edge_index, data.edge_shift).norm(dim=1).numpy()
        want = np.array([ref[(int(i), int(j), tuple(int(x) for x in img))] for i, j, img in zip(center, g["nbr"], g["image"])])
        np.testing.assert_allclose(d, want, atol=1e-4)
        # the cap keeps each atom's 12 nearest
        gc = capped.convert(s)
        cc = np.repeat(np.arange(len(s)), gc["nbr_count"])
        for i in range(len(s)):
            near = sorted(v for (a, _, _), v in ref.items() if a == i)[:12]
            mine = sorted(ref[(i, int(j), tuple(int(x) for x in img))] for j, img in zip(gc["nbr"][cc == i], gc["image"][cc == i]))
            np.testing.assert_allclose(mine, near, atol=1e-9)


def test_isolated_atom_is_a_bad_structure() -> None:
    s = Structure(Lattice.cubic(20.0), ["Na", "Cl", "Ar"], [[0, 0, 0], [0.1, 0, 0], [0.5, 0.5, 0.5]])
    for name in ("chgnet", "radius"):
        with pytest.raises(BadStructure, match=r"1 isolated atom\(s\) \(site \[2\]\)"):
            get_converter(name, cutoff=6.0).convert(s)
