"""ComFormer graphs and models on real MP structures (the shipped matbench set).

Graphs equal an independent k-nearest construction (pymatgen's ``get_all_neighbors``, ties kept, made undirected)
and lattice vectors equal the successive minima found by brute force; both variants train (one-atom batch
included), start at the target mean, and predict the same for a rotated, permuted, translated or re-celled
crystal: the invariances the paper is about. Small widths keep the file fast; the default sizes are covered by
the parameter-count test.
"""

from __future__ import annotations

import gzip
import json
from itertools import product
from typing import Any

import numpy as np
import pytest
import torch
from conftest import SHIPPED
from pymatgen.core import Lattice, Structure

from colab_kit.graphs.comformer import KIND, LENGTH_TIE_RTOL, TIE_TOL, lattice_images
from colab_kit.models.comformer import SPEC, EComFormer, IComFormer, spherical_harmonics

SINGLE = ["mp-71", "mp-81", "mp-8640"]  # one site per cell
DISTINCT = ["mp-1007692", "mp-1008487", "mp-1013900", "mp-10118"]  # three different lattice-vector lengths
SYMMETRIC = ["mp-10010", "mp-1001011"]  # tetragonal / cubic: ties at the k-th neighbour and between lengths
IDS = SINGLE + DISTINCT + SYMMETRIC
PARAMS = KIND.params()
K = PARAMS["max_neighbors"]


@pytest.fixture(scope="module")
def structures() -> dict[str, tuple[Structure, float]]:
    with gzip.open(SHIPPED, "rt") as f:
        d = json.load(f)
    return {sid: (Structure.from_dict(row[0]), row[1]) for sid, row in zip(d["index"], d["data"]) if sid in IDS}


def _reference_edges(s: Structure, k: int) -> tuple[set[tuple[int, int, tuple[int, ...]]], list[np.ndarray]]:
    """k nearest of every site by pymatgen's get_all_neighbors (a different search than get_neighbor_list),
    every neighbour tied with the k-th, both directions; and each site's sorted neighbour distances (Å)."""
    r = 8.0
    while min(len(n) for n in s.get_all_neighbors(r)) <= k:
        r *= 1.5
    edges, dists = set(), []
    for i, nbrs in enumerate(s.get_all_neighbors(r)):
        d = np.sort([n.nn_distance for n in nbrs])
        dists.append(d)
        for n in nbrs:
            if n.nn_distance <= d[k - 1] + TIE_TOL:
                image = tuple(int(round(x)) for x in n.image)
                edges.add((i, n.index, image))
                edges.add((n.index, i, tuple(-x for x in image)))
    return edges, dists


def _stored_edges(arrays: dict[str, np.ndarray]) -> list[tuple[int, int, tuple[int, ...]]]:
    center = np.repeat(np.arange(len(arrays["z"])), arrays["nbr_count"])
    return [(int(i), int(j), tuple(int(x) for x in im)) for i, j, im in zip(center, arrays["nbr"], arrays["image"])]


@pytest.mark.parametrize("sid", IDS)
def test_graph_equals_independent_knn(structures: dict, sid: str) -> None:
    s, _ = structures[sid]
    arrays = KIND.convert(s, PARAMS)
    stored = _stored_edges(arrays)
    assert len(stored) == len(set(stored)), "an edge is stored twice"
    ref, dists = _reference_edges(s, K)
    assert set(stored) == ref
    # each atom's own list: its k nearest, exactly k unless neighbours tie with the k-th (then all of those)
    cart = s.lattice.get_cartesian_coords
    for i, d in enumerate(dists):
        mine = [np.linalg.norm(cart(s.frac_coords[j] + np.array(im) - s.frac_coords[i])) for c, j, im in stored if c == i]
        own = int((np.array(mine) <= d[K - 1] + TIE_TOL).sum())
        assert own == int((d <= d[K - 1] + TIE_TOL).sum()) >= K
        if d[K] - d[K - 1] > TIE_TOL:
            assert own == K


def test_exactly_k_where_no_tie(structures: dict) -> None:
    """At least one real atom has no tie at its k-th neighbour: its own list is exactly k (the test can fail)."""
    exact = 0
    for sid in DISTINCT:
        s, _ = structures[sid]
        for nbrs in s.get_all_neighbors(12.0):
            d = np.sort([n.nn_distance for n in nbrs])
            exact += d[K] - d[K - 1] > TIE_TOL
    assert exact > 0


@pytest.mark.parametrize("sid", IDS)
def test_lattice_vectors_are_the_successive_minima(structures: dict, sid: str) -> None:
    s, _ = structures[sid]
    lat = s.lattice.matrix
    images = lattice_images(lat)
    cart = images @ lat
    # brute force over a generous box: the shortest, shortest non-collinear, shortest non-coplanar lengths
    pts = np.array([n for n in product(range(-4, 5), repeat=3) if any(n)])
    vecs = pts @ lat
    order = np.argsort(np.linalg.norm(vecs, axis=1), kind="stable")
    pts, vecs = pts[order], vecs[order]
    m1 = vecs[0]
    m2 = next(v for v in vecs if np.linalg.norm(np.cross(m1, v)) > 1e-6 * np.linalg.norm(v) ** 2)
    m3 = next(v for v in vecs if abs(np.linalg.det(np.stack([m1, m2, v]))) > 1e-6 * np.linalg.norm(v) ** 3)
    expected = np.linalg.norm(np.stack([m1, m2, m3]), axis=1)
    # equal up to the tie tolerance (mp-10010's a and a + b differ by 6e-7 Å: either may come first)
    np.testing.assert_allclose(np.linalg.norm(cart, axis=1), expected, rtol=LENGTH_TIE_RTOL)
    assert abs(round(np.linalg.det(images.astype(float)))) == 1  # a basis of the lattice
    assert np.linalg.det(cart) > 0 and cart[0] @ cart[1] >= -1e-8 and cart[0] @ cart[2] >= -1e-8
    data = KIND.to_graph(KIND.convert(s, PARAMS), 0.0, sid, PARAMS)
    loops = data.edge_index[0] == data.edge_index[1]
    shifts = {tuple(x) for x in data.edge_shift[loops].int().tolist()}
    assert {tuple(v) for v in np.concatenate([images, -images]).tolist()} <= shifts
    pairs = list(zip(data.edge_index.T.tolist(), data.edge_shift.int().tolist()))
    assert len({(tuple(a), tuple(b)) for a, b in pairs}) == len(pairs), "a lattice loop duplicates a stored edge"


def test_params_errors() -> None:
    from colab_kit.graphs.common import ConverterError

    for bad in ({"max_neighbors": 0}, {"max_neighbors": 2.5}, {"cutoff": -1.0}, {"cutoff": "x"},
                {"on_isolated_atoms": "drop"}):
        with pytest.raises(ConverterError, match="must be"):
            KIND.params(**bad)
    assert KIND.resolution(False)["max_neighbors"][0] == 25


# ---------------------------------------------------------------- models

def _batch(items: list[tuple[Structure, float]], dtype: torch.dtype = torch.float32) -> Any:
    graphs = [(KIND.to_graph(KIND.convert(s, PARAMS), y, None, PARAMS), y) for s, y in items]
    b = KIND.collate(graphs)
    for name in ("pos", "cell", "edge_shift", "lattice_image", "y"):
        setattr(b, name, getattr(b, name).to(dtype))
    return b


def _small(variant: str, **kw: Any) -> torch.nn.Module:
    cls = IComFormer if variant == "invariant" else EComFormer
    torch.manual_seed(0)
    return cls(hidden=32, bins=32, fc=32, **kw)


def _random_head(m: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(1)
    torch.nn.init.normal_(m.fc_out.weight, std=1.0)
    return m


def _rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _variants(s: Structure, seed: int) -> dict[str, Structure]:
    """The same crystal written differently: rotated, atoms permuted, translated, and with another unit cell."""
    rng = np.random.default_rng(seed)
    lat, frac, species = s.lattice.matrix, s.frac_coords, s.species
    rot = Structure(Lattice(lat @ _rotation(seed).T), species, frac)
    perm = rng.permutation(len(s))
    permuted = Structure(Lattice(lat), [species[p] for p in perm], frac[perm])
    translated = Structure(Lattice(lat), species, (frac + rng.uniform(size=3)) % 1.0)
    m = np.array([[1, 1, 0], [0, 1, 0], [-1, 0, 1]])  # det 1: the same lattice, another basis
    recelled = Structure(Lattice(m @ lat), species, (frac @ np.linalg.inv(m)) % 1.0)
    return {"rotated": rot, "permuted": permuted, "translated": translated, "recelled": recelled}


@pytest.mark.parametrize("variant", ["invariant", "equivariant"])
def test_predictions_invariant(structures: dict, variant: str) -> None:
    model = _random_head(_small(variant)).double().eval()
    ids = SINGLE[:1] + DISTINCT + SYMMETRIC[:1]
    base = [structures[sid] for sid in ids]
    with torch.no_grad():
        ref = model(_batch(base, torch.float64))
        assert ref.std() > 1e-3  # the crystals are told apart: a constant model would pass the checks below
        for seed, how in enumerate(["rotated", "permuted", "translated", "recelled"]):
            # another cell of a tied lattice may pick other (equally short) lattice vectors: the reference's
            # frame is unique only when the three lengths differ
            keep = [n for n, sid in enumerate(ids) if how != "recelled" or sid in DISTINCT]
            other = model(_batch([(_variants(base[n][0], seed)[how], base[n][1]) for n in keep], torch.float64))
            torch.testing.assert_close(other, ref[keep], rtol=1e-7, atol=1e-7, msg=f"{variant}: {how} differs")


@pytest.mark.parametrize("variant", ["invariant", "equivariant"])
def test_trains_on_real_batch_and_one_atom_batch(structures: dict, variant: str) -> None:
    model = _small(variant, target_mean=-1.0, target_std=2.0).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = _batch([structures[sid] for sid in IDS])
    for _ in range(2):  # the zero head passes gradient to the rest from the second step
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(batch), model.targets(batch))
        loss.backward()
        assert torch.isfinite(loss)
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert all(torch.isfinite(g).all() for g in grads)
        opt.step()
    assert sum(int(g.abs().sum() > 0) for g in grads) > len(list(model.parameters())) // 2
    one = _batch([structures["mp-71"]])
    assert model.size(one)[:2] == (1, 1)
    node_bn = model.layers[0].bn  # normalises atoms: one row here
    before = node_bn.running_mean.clone()
    opt.zero_grad()
    out = model(one)
    out.sum().backward()
    opt.step()
    assert out.shape == (1,) and torch.isfinite(out).all()
    assert torch.equal(before, node_bn.running_mean)  # a one-row batch norm used (and kept) its running statistics


@pytest.mark.parametrize("variant", ["invariant", "equivariant"])
def test_zero_head_predicts_target_mean(structures: dict, variant: str) -> None:
    model = SPEC.build(target_mean=-1.25, target_std=3.0, graph_params=PARAMS,
                       options={"variant": variant, "hidden": 16, "comformer_layers": 2})
    out = model.eval()(_batch([structures[sid] for sid in SINGLE + DISTINCT[:1]]))
    torch.testing.assert_close(out, torch.full_like(out, -1.25))


def test_default_sizes_match_the_reference() -> None:
    """Parameter counts of the reference's defaults (256 wide; 4 / 3 layers), less its 92-feature input Linear
    (23,808) for a 119 x 256 element table (30,464), less iComFormer's two unused modules (74,080)."""
    counts = {v: sum(p.numel() for p in SPEC.build(options={"variant": v}).parameters())
              for v in ("invariant", "equivariant")}
    assert counts == {"invariant": 4_966_497 - 23_808 + 30_464 - 74_080,
                      "equivariant": 5_583_809 - 23_808 + 30_464}
    with pytest.raises(ValueError, match="must be"):
        SPEC.options["variant"].validate("comformer", "variant", "chiral")


def test_spherical_harmonics_contractions_rotate_away() -> None:
    """|Y_l|^2 = 2l + 1 and Y_l(a) . Y_l(b) = (2l + 1) P_l(cos ab), unchanged by a rotation."""
    a, b = torch.randn(2, 50, 3, dtype=torch.float64)
    rot = torch.from_numpy(_rotation(3))
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
    legendre = {1: cos, 2: (3 * cos**2 - 1) / 2}
    for deg, (x, y, xr, yr) in enumerate(zip(spherical_harmonics(a), spherical_harmonics(b),
                                           spherical_harmonics(a @ rot.T), spherical_harmonics(b @ rot.T)), start=1):
        torch.testing.assert_close((x * x).sum(-1), torch.full((50,), 2.0 * deg + 1, dtype=torch.float64))
        torch.testing.assert_close((x * y).sum(-1), (2 * deg + 1) * legendre[deg])
        torch.testing.assert_close((xr * yr).sum(-1), (x * y).sum(-1))


def test_registered() -> None:
    from colab_kit import registry

    assert registry.graph_kind("comformer") is KIND and registry.model("comformer") is SPEC
    assert registry.model_graph_kind("comformer") == "comformer"
    assert not set(SPEC.options) & {"lr", "cutoff", "max_neighbors", "epochs", "batch_size", "model"}
