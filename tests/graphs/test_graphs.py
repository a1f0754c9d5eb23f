"""graphs: CHGNet graphs identical to CrystalGraphConverter; radius graphs equal a brute-force search.

The whole shared datasets are checked when they are present (``shared_data``); the same checks run on the
vendored real fixtures everywhere. More CHGNet cases (its own tests' facts) are in test_chgnet_parity.py.
"""

from __future__ import annotations

from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import crystal_graph_difference, fixture_structures, matbench_structures
from pymatgen.core import Lattice, Structure

from colab_kit.graphs import BadStructure, get_converter


def _matbench(path: Path) -> list[tuple[str, Structure]]:
    return [(sid, s) for sid, s, _ in matbench_structures(path)]


def _fixtures() -> list[tuple[str, Structure]]:
    return [(sid, s) for sid, s, _ in fixture_structures()]


def _assert_same_graph(ref: Any, mine: Any, sid: str) -> None:
    assert crystal_graph_difference(ref, mine) is None, sid


MP_3000 = "mp_eform_cgcnn_3000/mp_eform_cgcnn_3000_matbench.json.gz"


@pytest.mark.parametrize("dataset,stride", [(MP_3000, 5),  # every 5th of the 3,000 here, all of them in the long tests
                                            pytest.param(MP_3000, 1, marks=pytest.mark.long),
                                            ("matsciml_devsets/mp_devset_200.json.gz", 1),
                                            ("matsciml_devsets/oqmd_devset_200.json.gz", 1),
                                            ("matsciml_devsets/alexandria_devset_98.json.gz", 1),
                                            ("matsciml_devsets/carolina_devset_100.json.gz", 1)])
def test_chgnet_graphs_identical_to_crystal_graph_converter(shared_data: Path, dataset: str, stride: int) -> None:
    from chgnet.graph import CrystalGraphConverter

    ref_conv = CrystalGraphConverter(atom_graph_cutoff=6, bond_graph_cutoff=3, on_isolated_atoms="error")
    conv = get_converter("chgnet")
    n_same = n_bad = 0
    for sid, s in _matbench(shared_data / dataset)[::stride]:
        try:
            ref = ref_conv(s, graph_id=sid, mp_id=sid)
        except (ValueError, RuntimeError):
            with pytest.raises(BadStructure):
                conv.convert(s)
            n_bad += 1
            continue
        _assert_same_graph(ref, conv.to_graph(conv.convert(s), graph_id=sid), sid)
        n_same += 1
    assert n_bad == 0 and n_same > 0  # none of these real sets has an atom without a neighbour within 6 Å


def test_chgnet_other_cutoffs_match() -> None:
    from chgnet.graph import CrystalGraphConverter

    ref_conv = CrystalGraphConverter(atom_graph_cutoff=5, bond_graph_cutoff=2.5, on_isolated_atoms="error")
    conv = get_converter("chgnet", cutoff=5, bond_cutoff=2.5)
    n_same = 0
    for sid, s in _fixtures():
        try:
            ref = ref_conv(s)
        except ValueError:  # mp-604321 (Rb): no neighbour within 5 Å
            with pytest.raises(BadStructure, match="isolated"):
                conv.convert(s)
            continue
        _assert_same_graph(ref, conv.to_graph(conv.convert(s)), sid)
        n_same += 1
    assert n_same >= len(_fixtures()) - 1


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


def test_radius_graph_equals_brute_force() -> None:
    sample = [x for x in _fixtures() if len(x[1]) <= 40]
    assert len(sample) >= 35 and min(len(s) for _, s in sample) == 1  # single-site cells included
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
        by_center: dict[int, list[float]] = {}
        for (a, _, _), v in ref.items():
            by_center.setdefault(a, []).append(v)
        for i in range(len(s)):
            near = sorted(by_center.get(i, []))[:12]
            mine = sorted(ref[(i, int(j), tuple(int(x) for x in img))] for j, img in zip(gc["nbr"][cc == i], gc["image"][cc == i]))
            np.testing.assert_allclose(mine, near, atol=1e-9)


def test_isolated_atom_is_a_bad_structure() -> None:
    s = Structure(Lattice.cubic(20.0), ["Na", "Cl", "Ar"], [[0, 0, 0], [0.1, 0, 0], [0.5, 0.5, 0.5]])
    for name in ("chgnet", "radius"):
        with pytest.raises(BadStructure, match=r"1 isolated atom\(s\) \(site \[2\]\)"):
            get_converter(name, cutoff=6.0).convert(s)


@pytest.mark.parametrize("mode", ["warn", "ignore"])
def test_radius_graph_keeps_isolated_atoms_when_asked(mode: str) -> None:
    """Radius graphs follow the same policy: kept, the isolated atom has no edge, every other edge is the
    brute-force set; "warn" raises one UserWarning naming the structure (a conversion records it per item)."""
    import warnings

    isolated = {sid: s for sid, s in _fixtures() if sid in ("mp-568005", "mp-604321", "mp-1013530")}
    conv = get_converter("radius", cutoff=4.0, max_neighbors=None, on_isolated_atoms=mode)
    caught: list[warnings.WarningMessage] = []
    for sid, s in isolated.items():
        with warnings.catch_warnings(record=True) as got_warnings:
            warnings.simplefilter("always")
            g = conv.convert(s, graph_id=sid)
        caught += got_warnings
        center = np.repeat(np.arange(len(s)), g["nbr_count"])
        got = {(int(i), int(j), tuple(int(x) for x in img)) for i, j, img in zip(center, g["nbr"], g["image"])}
        ref = _brute_force(s, 4.0)
        assert got == set(ref) and (g["nbr_count"] == 0).any(), sid
        data = conv.to_graph(g)
        assert data.num_nodes == len(s) and data.edge_index.shape == (2, len(ref))
    lines = [str(w.message) for w in caught]
    if mode == "warn":
        assert len(lines) == 3 and all(f"structure {sid} has" in line for sid, line in zip(isolated, lines))
    else:
        assert lines == []
    with pytest.raises(BadStructure, match="isolated atom"):
        get_converter("radius", cutoff=4.0).convert(isolated["mp-604321"])
