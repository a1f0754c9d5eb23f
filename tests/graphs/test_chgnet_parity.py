"""CHGNet parity: the facts CHGNet's own converter and crystal-graph tests check, checked on colab_kit's converter.

The cases follow CHGNet's tests/test_converter.py and tests/test_crystal_graph.py (v0.4 line): cutoff semantics, the
three ``on_isolated_atoms`` modes on an over-strained NaCl, LiMnO2 (mp-18767, CHGNet's example structure, rebuilt
here from its numbers) as is, with other cutoffs, perturbed, strained, as a 2x3x4 supercell, many randomly perturbed
supercells, and the graph's repr. Each colab_kit graph must also equal, attribute for attribute, the one CHGNet's
``CrystalGraphConverter`` builds; then the same on every vendored real structure and through the store.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import FIXTURES, crystal_graph_difference, fixture_structures
from pymatgen.core import Lattice, Structure

from colab_kit.graphs import BadStructure, ConverterError, get_converter

chgnet_graph = pytest.importorskip("chgnet.graph")
CrystalGraphConverter = chgnet_graph.CrystalGraphConverter


def limno2() -> Structure:
    """LiMnO2 mp-18767 (Materials Project, CC BY 4.0) with the oxidation states of CHGNet's example CIF."""
    lattice = Lattice.from_parameters(2.868779, 4.634475, 5.832507, 90, 90, 90)
    species = ["Li+", "Li+", "Mn3+", "Mn3+", "O2-", "O2-", "O2-", "O2-"]
    frac = [[0.5, 0.5, 0.3797505], [0, 0, 0.6202495], [0.5, 0.5, 0.8632525], [0, 0, 0.1367475],
            [0.5, 0, 0.3608245], [0, 0.5, 0.0985135], [0.5, 0, 0.9014865], [0, 0.5, 0.6391755]]
    return Structure(lattice, species, frac)


def _variant(name: str) -> Structure:
    s = limno2()
    if name == "perturbed":
        s.perturb(distance=0.1, seed=0)  # the generator CHGNet's test patches in: default_rng(0)
    elif name == "isotropic_strain":
        s.apply_strain([0.1, 0.1, 0.1])
    elif name == "anisotropic_strain":
        s.apply_strain([0.2, -0.3, 0.5])
    elif name == "supercell":
        s.make_supercell([2, 3, 4])
    return s


# (structure variant, atom cutoff, bond cutoff, n_atoms, directed edges, angles, composition or None,
#  [(tensor, column, value, expected count of rows with that value)]) -- the numbers CHGNet's tests assert
CASES = [
    ("as_is", 5, 3, 8, 384, 744, "Li2 Mn2 O4",
     [("atom_graph", 0, 0, 48), ("atom_graph", 1, 0, 48), ("atom_graph", 0, 4, 48), ("atom_graph", 0, 7, 48),
      ("bond_graph", 0, 1, 72)]),
    ("as_is", 5.5, 3.5, 8, 624, 2448, None,
     [("atom_graph", 0, 5, 78), ("atom_graph", 1, 5, 78), ("atom_graph", 1, 7, 78), ("bond_graph", 0, 1, 306),
      ("bond_graph", 1, 100, 0), ("bond_graph", 3, 100, 0)]),
    ("perturbed", 5, 3, 8, 392, 732, None,
     [("atom_graph", 0, 3, 48), ("atom_graph", 1, 3, 48), ("atom_graph", 1, 6, 50), ("bond_graph", 0, 1, 90),
      ("bond_graph", 1, 36, 0), ("bond_graph", 3, 36, 0), ("bond_graph", 2, 306, 0), ("bond_graph", 4, 120, 0)]),
    ("isotropic_strain", 5, 3, 8, 264, 288, None,
     [("atom_graph", 0, 3, 34), ("atom_graph", 1, 3, 34), ("atom_graph", 0, 7, 32)]),
    ("anisotropic_strain", 5, 3, 8, 336, 256, None,
     [("atom_graph", 0, 3, 42), ("atom_graph", 1, 3, 42), ("atom_graph", 0, 7, 42)]),
    ("supercell", 5, 3, 192, 9216, 17856, "Li48 Mn48 O96",
     [("atom_graph", 0, 30, 48), ("atom_graph", 1, 30, 48), ("atom_graph", 0, 70, 48), ("bond_graph", 0, 100, 72),
      ("bond_graph", 1, 623, 16), ("bond_graph", 3, 623, 16), ("bond_graph", 2, 2938, 8), ("bond_graph", 4, 121, 8)]),
]


@pytest.mark.parametrize(("variant", "atom_cut", "bond_cut", "n_atoms", "n_edges", "n_angles", "composition", "counts"),
                         CASES, ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in CASES])
def test_limno2_graphs_have_chgnets_numbers(variant: str, atom_cut: float, bond_cut: float, n_atoms: int,
                                            n_edges: int, n_angles: int, composition: str | None,
                                            counts: list[tuple[str, int, int, int]]) -> None:
    s = _variant(variant)
    conv = get_converter("chgnet", cutoff=atom_cut, bond_cutoff=bond_cut)
    g = conv.to_graph(conv.convert(s), graph_id=variant)
    if composition is not None:
        assert g.composition == composition
    if variant == "as_is":
        assert g.atomic_number.tolist() == [3, 3, 25, 25, 8, 8, 8, 8]
    assert tuple(g.atom_frac_coord.shape) == (n_atoms, 3) and tuple(g.lattice.shape) == (3, 3)
    assert tuple(g.atom_graph.shape) == (n_edges, 2) and tuple(g.bond_graph.shape) == (n_angles, 5)
    assert tuple(g.directed2undirected.shape) == (n_edges,) and tuple(g.undirected2directed.shape) == (n_edges // 2,)
    for tensor, col, value, want in counts:
        assert (getattr(g, tensor)[:, col] == value).sum().item() == want, (tensor, col, value)
    ref = CrystalGraphConverter(atom_graph_cutoff=atom_cut, bond_graph_cutoff=bond_cut)(s, graph_id=variant, mp_id=variant)
    assert crystal_graph_difference(ref, g) is None


def test_repr_and_isolated_count_are_chgnets() -> None:
    conv = get_converter("chgnet", cutoff=5, bond_cutoff=3, on_isolated_atoms="warn")
    g = conv.to_graph(conv.convert(limno2()))
    assert repr(g) == ("CrystalGraph(composition='Li2 Mn2 O4', atom_graph_cutoff=5, bond_graph_cutoff=3, "
                       "n_atoms=8, atom_graph_len=384, bond_graph_len=744)")
    assert g.num_isolated_atoms == 0


def test_randomly_perturbed_supercells_stay_consistent_and_identical() -> None:
    ref_conv = CrystalGraphConverter(atom_graph_cutoff=5, bond_graph_cutoff=3)
    conv = get_converter("chgnet", cutoff=5, bond_cutoff=3)
    for seed in range(20):
        s = limno2().make_supercell([2, 2, 2], in_place=False)
        s.perturb(distance=0.5, seed=seed)
        g = conv.to_graph(conv.convert(s))
        assert g.directed2undirected.shape[0] == 2 * g.undirected2directed.shape[0]
        assert g.atom_graph.shape[0] == g.directed2undirected.shape[0]
        assert crystal_graph_difference(ref_conv(s), g) is None, seed


@pytest.mark.parametrize(("atom_cut", "bond_cut", "want_bond"), [(5, 3, 3), (5, None, 5), (4, 2, 2), (None, 3, 3)])
def test_cutoff_semantics_match_crystal_graph_converter(atom_cut: float | None, bond_cut: float | None,
                                                        want_bond: float) -> None:
    conv = get_converter("chgnet", cutoff=atom_cut, bond_cutoff=bond_cut)
    want_atom = 6 if atom_cut is None else atom_cut
    assert (conv.params["atom_cutoff"], conv.params["bond_cutoff"]) == (want_atom, want_bond)
    ref_conv = CrystalGraphConverter(**({} if atom_cut is None else {"atom_graph_cutoff": atom_cut}),
                                     bond_graph_cutoff=bond_cut)
    s = limno2()
    assert crystal_graph_difference(ref_conv(s), conv.to_graph(conv.convert(s))) is None


def test_defaults_are_chgnets_and_of_its_pretrained_model() -> None:
    conv = get_converter("chgnet")
    assert conv.params == {"atom_cutoff": 6.0, "bond_cutoff": 3.0, "on_isolated_atoms": "error"}
    s = limno2()
    ref = CrystalGraphConverter()(s)  # CHGNet.load().graph_converter has these same 6 / 3 Å (ints), "error"
    assert crystal_graph_difference(ref, conv.to_graph(conv.convert(s))) is None


def _strained_nacl() -> Structure:
    """CHGNet's NaCl (4 Å cubic) strained by 500 %: 24 Å apart, both atoms without a neighbour within 5 Å."""
    s = Structure(Lattice.cubic(4), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    s.apply_strain(5)
    return s


@pytest.mark.parametrize("mode", ["ignore", "warn", "error"])
def test_on_isolated_atoms_modes(mode: str, capsys: pytest.CaptureFixture[str]) -> None:
    import warnings

    s = _strained_nacl()
    conv = get_converter("chgnet", cutoff=5, bond_cutoff=3, on_isolated_atoms=mode)
    ref_conv = CrystalGraphConverter(atom_graph_cutoff=5, bond_graph_cutoff=3, on_isolated_atoms=mode)
    if mode == "error":
        with pytest.raises(BadStructure, match=r"2 isolated atom\(s\) \(site \[0, 1\]\) with no neighbour within 5 Å"):
            conv.convert(s, graph_id="strained")
        with pytest.raises(ValueError, match="has 2 isolated atom"):
            ref_conv(s, graph_id="strained")
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        g = conv.to_graph(conv.convert(s, graph_id="strained"), graph_id="strained")
    ref = ref_conv(s, graph_id="strained", mp_id="strained")
    assert crystal_graph_difference(ref, g) is None
    assert g.atom_graph.shape == (0,) and g.bond_graph.shape == (0,) and g.neighbor_image.shape == (0, 3)
    lines = [str(w.message) for w in caught]
    if mode == "warn":
        assert len(lines) == 1 and "structure strained has 2 isolated atom(s)" in lines[0] and "5 Å" in lines[0]
        assert "graph_id='strained' has 2 isolated atom(s)" in capsys.readouterr().err  # CHGNet's own line
    else:
        assert lines == [] and capsys.readouterr().err == ""


def test_warning_without_an_id_names_the_formula() -> None:
    with pytest.warns(UserWarning, match=r"^structure Na1 Cl1 has 2 isolated atom\(s\)"):
        get_converter("chgnet", cutoff=5, on_isolated_atoms="warn").convert(_strained_nacl())


def test_warn_mode_in_a_conversion_is_recorded_with_the_item(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """A conversion keeps the warning in the store's record (and the report's warnings.csv), not on the terminal."""
    from colab_kit.store.build import build_store
    from colab_kit.store.format import GraphStore

    structures = [("nacl-strained", _strained_nacl(), 1.0), ("limno2", limno2(), 2.0), ("limno2-b", limno2(), 3.0)]
    res = build_store(structures_source(structures), tmp_path / "s",
                      get_converter("chgnet", cutoff=5, on_isolated_atoms="warn"), progress=False)
    store = GraphStore(res.path)
    assert len(store) == 3 and store.manifest.n_warned == 1
    ((item, text),) = store.warnings()
    assert item == "nacl-strained" and "structure nacl-strained has 2 isolated atom(s)" in text
    assert "isolated" not in capfd.readouterr().err


def structures_source(rows: list) -> object:
    from colab_kit.sources import open_source

    return open_source(rows, name="isolated-test")


def test_policy_is_in_the_params_and_checked() -> None:
    for name in ("chgnet", "radius"):
        assert get_converter(name).params["on_isolated_atoms"] == "error"
        assert get_converter(name, on_isolated_atoms="ignore").params != get_converter(name).params
        with pytest.raises(ConverterError, match=r"on_isolated_atoms must be one of \('error', 'warn', 'ignore'\) \(got 'skip'\)"):
            get_converter(name, on_isolated_atoms="skip")
        with pytest.raises(ConverterError, match=r"cutoff must be a positive number of Å \(got -1\)"):
            get_converter(name, cutoff=-1)
    with pytest.raises(ConverterError, match="converter must be one of"):
        get_converter("cgcnn")


def test_formula_is_pymatgens_on_every_vendored_structure() -> None:
    from colab_kit.graphs.common import base_arrays, formula

    items = fixture_structures()
    assert len(items) >= 45
    for sid, s, _ in items:
        assert formula(base_arrays(s)["z"]) == s.composition.formula, sid
    by_id = {sid: s for sid, s, _ in items}
    # electronegativity order, NaN (He: none) last, ties (Ir, Ru: 2.2) by symbol, as pymatgen does
    assert formula(base_arrays(by_id["mp-1019742"])["z"]) == "Si4 O8 He4"
    assert formula(base_arrays(by_id["mp-862620"])["z"]) == "Ir2 Ru6"


CONFIGS = {  # name: (CrystalGraphConverter kwargs, get_converter kwargs, whether isolated atoms are rejected)
    "6-3-error": ({"atom_graph_cutoff": 6, "bond_graph_cutoff": 3}, {}, True),
    "4-3-ignore": ({"atom_graph_cutoff": 4, "bond_graph_cutoff": 3, "on_isolated_atoms": "ignore"},
                   {"cutoff": 4, "on_isolated_atoms": "ignore"}, False),
    "4-None-error": ({"atom_graph_cutoff": 4, "bond_graph_cutoff": None}, {"cutoff": 4, "bond_cutoff": None}, True),
}


def _has_isolated(s: Structure, cutoff: float) -> bool:
    return len(set(s.get_neighbor_list(cutoff)[0].tolist())) < len(s)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_every_vendored_structure_gives_chgnets_graph(config: str) -> None:
    """Single-site cells, 101.8 Å vectors, 184 sites, a 0.75 Å pair, isolated atoms at 4 Å (kept or rejected)."""
    ref_kw, kw, rejects = CONFIGS[config]
    ref_conv, conv = CrystalGraphConverter(**ref_kw), get_converter("chgnet", **kw)
    items = fixture_structures()
    n_same = n_rejected = 0
    for sid, s, _ in items:
        try:
            ref = ref_conv(s, graph_id=sid, mp_id=sid)
        except ValueError:  # isolated atoms in "error" mode
            with pytest.raises(BadStructure, match="isolated atom"):
                conv.convert(s, graph_id=sid)
            n_rejected += 1
            continue
        assert crystal_graph_difference(ref, conv.to_graph(conv.convert(s, graph_id=sid), graph_id=sid)) is None, sid
        n_same += 1
    cut = ref_kw["atom_graph_cutoff"]
    want_rejected = sum(_has_isolated(s, cut) for _, s, _ in items) if rejects else 0
    assert (n_same, n_rejected) == (len(items) - want_rejected, want_rejected)
    assert sum(_has_isolated(s, 4) for _, s, _ in items) >= 10  # the fixtures do hold cells isolated at 4 Å


def test_store_round_trip_keeps_graphs_identical_with_isolated_atoms(tmp_path: Path) -> None:
    """Built in "ignore" mode at 4 Å (graphs with isolated atoms, single-site cells without any edge), stored in
    compact dtypes and read back: every graph still equals CHGNet's; the policy is part of the fingerprint."""
    from colab_kit.store.build import build_store
    from colab_kit.store.format import GraphStore, StoreError

    src = FIXTURES / "mp20_subset_sample.json.gz"
    conv = get_converter("chgnet", cutoff=4, on_isolated_atoms="ignore")
    res = build_store(src, tmp_path / "s", conv, shard_size=4, progress=False)
    items = fixture_structures("mp20_subset_sample.json.gz")
    assert res.n_graphs == len(items) and res.n_failed == 0
    store = GraphStore(tmp_path / "s")
    ref_conv = CrystalGraphConverter(atom_graph_cutoff=4, bond_graph_cutoff=3, on_isolated_atoms="ignore")
    n_isolated = 0
    for i, (sid, s, _) in enumerate(items):
        g = store.get(i)
        assert crystal_graph_difference(ref_conv(s, graph_id=sid, mp_id=sid), g) is None, sid
        n_isolated += len(s) - len(np.unique(g.atom_graph[:, 0])) if g.atom_graph.numel() else len(s)
    assert n_isolated >= 3
    with pytest.raises(StoreError, match="other data or settings"):
        build_store(src, tmp_path / "s", get_converter("chgnet", cutoff=4), shard_size=4, progress=False)
