"""alignn's and matgl's graphs out of colab_kit's store are the packages' own, tensor for tensor, on real data.

The reference for each structure is the package's own graph builder on the same pymatgen structure:

* alignn: ``Graph.atom_dgl_multigraph(pmg_to_atoms(s), neighbor_strategy="pure_torch", ...)`` (what its pure
  LMDB dataset pickles), the ``(g, lg)`` ``TorchGraph`` pair: every ndata / edata tensor, src / dst, node counts;
* matgl: ``Structure2Graph(DEFAULT_ELEMENTS, cutoff).get_graph(s)`` (what ``MGLDataset`` holds): every ``Data``
  attribute, the lattice and the state attributes;

and the batches (alignn's ``batch_torch_graph_pairs``, matgl's ``collate_fn_graph`` of the references) equal the
store's collated batches. Every vendored set always; every shared set (``$COLAB_KIT_SHARED_DATA``) on its first
structures by default, all of them with ``--runslow``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA
from helpers import FIXTURE_SETS, FIXTURES

from colab_kit.graphs import get_converter
from colab_kit.store.build import build_store
from colab_kit.store.format import GraphStore

pytestmark = pytest.mark.extras  # CI runs these in the environment with the extras; the README's command skips them
pytest.importorskip("alignn.torch_graph_builder", reason='needs pip install "colab_kit[alignn]"')
pytest.importorskip("matgl.ext.pymatgen", reason='needs pip install "colab_kit[matgl]"')

SHARED_SETS = ["mp_eform_cgcnn_3000/mp_eform_cgcnn_3000_matbench.json.gz",
               "mp20_subset_1355/mp20_subset_1355_matbench.json.gz",
               "matbench_phonons_1265/matbench_phonons.json.gz",
               "matsciml_devsets/mp_devset_200.json.gz", "matsciml_devsets/oqmd_devset_200.json.gz",
               "matsciml_devsets/alexandria_devset_98.json.gz", "matsciml_devsets/carolina_devset_100.json.gz",
               "alignn_jarvis_bandgap_50"]
FIRST = 60  # structures per shared set in the default run


def _structures(source: Path, store: GraphStore) -> list[Any]:
    """The pymatgen structures of the store's items, read from ``source`` independently of colab_kit."""
    from pymatgen.core import Structure

    ids = store.ids()
    if source.is_dir():  # POSCAR folder: the store's ids are the file names without their suffix
        files = {p.stem: p for p in source.iterdir()}
        return [Structure.from_file(files[i]) for i in ids]
    from helpers import matbench_structures

    by_id = {i: s for i, s, _ in matbench_structures(source)}
    return [by_id[i] for i in ids]


def _store(source: Path, kind: str, tmp: Path, limit: int | None) -> GraphStore:
    out = tmp / f"{kind}-{source.name}"
    build_store(source, out, get_converter(kind), workers=1, shard_size=64, limit=limit, progress=False,
                on_bad_structure="skip")
    return GraphStore(out)


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


def alignn_difference(mine: Any, ref: Any) -> str | None:
    """The first difference between two alignn ``TorchGraph`` objects, or None."""
    if mine.num_nodes != ref.num_nodes:
        return f"num_nodes {mine.num_nodes} vs {ref.num_nodes}"
    for name in ("src", "dst", "batch_num_nodes", "batch_num_edges"):
        a, b = getattr(mine, name), getattr(ref, name)
        if (a is None) != (b is None) or (a is not None and not _same_tensor(a, b)):
            return name
    for field in ("ndata", "edata"):
        a, b = getattr(mine, field), getattr(ref, field)
        if set(a) != set(b):
            return f"{field} keys {sorted(a)} vs {sorted(b)}"
        for k in b:
            if not _same_tensor(a[k], b[k]):
                return f"{field}[{k!r}]"
    return None


def matgl_difference(mine: Any, ref: Any) -> str | None:
    """The first difference between two PyG ``Data`` / ``Batch`` objects of matgl, or None."""
    if set(mine.keys()) != set(ref.keys()):
        return f"keys {sorted(mine.keys())} vs {sorted(ref.keys())}"
    for k in ref.keys():
        a, b = getattr(mine, k), getattr(ref, k)
        if torch.is_tensor(b) and not _same_tensor(a, b):
            return k
        if not torch.is_tensor(b) and a != b:
            return f"{k}: {a!r} vs {b!r}"
    return None


def _alignn_ref(structure: Any, params: dict[str, Any]) -> tuple[Any, Any, torch.Tensor]:
    from alignn.graphs import Graph
    from jarvis.core.atoms import pmg_to_atoms

    atoms = pmg_to_atoms(structure)
    g, lg = Graph.atom_dgl_multigraph(atoms, neighbor_strategy="pure_torch", cutoff=params["cutoff"],
                                      max_neighbors=params["max_neighbors"],
                                      three_body_cutoff=params["three_body_cutoff"], compute_line_graph=True)
    return g, lg, torch.as_tensor(atoms.lattice_mat, dtype=torch.get_default_dtype())


def check_alignn(store: GraphStore, structures: list[Any]) -> int:
    from alignn.torch_graph_builder import batch_torch_graph_pairs

    params, ids = store.params, store.ids()
    refs = []
    for i, s in enumerate(structures):
        (g, lg, lattice, _), target = store.item(i)
        rg, rlg, rlat = _alignn_ref(s, params)
        assert (diff := alignn_difference(g, rg)) is None, (ids[i], "g", diff)
        assert (diff := alignn_difference(lg, rlg)) is None, (ids[i], "lg", diff)
        assert _same_tensor(lattice, rlat), ids[i]
        refs.append((rg, rlg, rlat, target))
    first = refs[:16]
    batch = store_batch(store, len(first))
    rg, rlg = batch_torch_graph_pairs([(r[0], r[1]) for r in first])
    assert alignn_difference(batch[0], rg) is None and alignn_difference(batch[1], rlg) is None
    assert _same_tensor(batch[2], torch.stack([r[2] for r in first]))
    return len(refs)


def check_matgl(store: GraphStore, structures: list[Any]) -> int:
    from matgl.config import DEFAULT_ELEMENTS
    from matgl.ext.pymatgen import Structure2Graph
    from matgl.graph.data import collate_fn_graph

    ref_conv = Structure2Graph(DEFAULT_ELEMENTS, cutoff=store.params["cutoff"])
    ids = store.ids()
    refs = []
    for i, s in enumerate(structures):
        (g, lattice, state, labels), target = store.item(i)
        rg, rlat, rstate = ref_conv.get_graph(s)
        assert (diff := matgl_difference(g, rg)) is None, (ids[i], diff)
        rlat = torch.as_tensor(rlat, dtype=torch.float32)
        assert _same_tensor(lattice, rlat), ids[i]
        assert _same_tensor(state, torch.tensor(rstate)), ids[i]
        refs.append((rg, rlat, torch.tensor(rstate), {"y": torch.tensor(target, dtype=torch.float32)}))
    first = refs[:16]
    batch = store_batch(store, len(first))
    ref = collate_fn_graph(first)
    assert matgl_difference(batch[0], ref[0]) is None
    assert all(_same_tensor(a, b) for a, b in zip(batch[1:], ref[1:]))
    return len(refs)


def store_batch(store: GraphStore, n: int) -> Any:
    from colab_kit.loader.batching import collate_fn

    return collate_fn(store)([store.item(i) for i in range(n)])


CHECKS = {"alignn": check_alignn, "matgl": check_matgl}


@pytest.mark.parametrize("kind", ["alignn", "matgl"])
def test_vendored_sets_give_the_packages_graphs(kind: str, tmp_path: Path) -> None:
    checked = 0
    for name in FIXTURE_SETS:
        store = _store(FIXTURES / name, kind, tmp_path, None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            checked += CHECKS[kind](store, _structures(FIXTURES / name, store))
    assert checked >= 40, checked  # 49 vendored real structures


@pytest.mark.parametrize("kind", ["alignn", "matgl"])
@pytest.mark.parametrize("name", SHARED_SETS)
def test_shared_sets_give_the_packages_graphs(kind: str, name: str, shared_data: Path, tmp_path: Path,
                                             request: pytest.FixtureRequest) -> None:
    source = SHARED_DATA / name
    run_all = request.config.getoption("--runslow")
    store = _store(source, kind, tmp_path, None if run_all else FIRST)
    assert len(store) > 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert CHECKS[kind](store, _structures(source, store)) == len(store)


def test_alignn_without_a_neighbour_cap_is_a_permutation_of_alignns(tmp_path: Path) -> None:
    """max_neighbors=None: alignn lists edges by image; the store groups them by centre (same edge set)."""
    from helpers import fixture_structures

    conv = get_converter("alignn", cutoff=5.0, max_neighbors=None, bond_cutoff=3.0, on_isolated_atoms="ignore")
    for _, s, _ in fixture_structures(FIXTURE_SETS[0])[:10]:
        g, lg, _, _ = conv.to_graph(conv.convert(s))
        rg, _, _ = _alignn_ref(s, conv.params)
        key = lambda gr: sorted(zip(gr.src.tolist(), gr.dst.tolist(), map(tuple, gr.edata["images"].tolist())))  # noqa: E731
        assert key(g) == key(rg)
        assert np.all(np.diff(g.src.numpy()) >= 0)


def test_alignn_bond_cutoff_above_the_cutoff_is_refused() -> None:
    from colab_kit.graphs import ConverterError

    with pytest.raises(ConverterError, match="must not exceed the cutoff"):
        get_converter("alignn", cutoff=4.0, bond_cutoff=5.0)


def test_matgl_refuses_an_element_it_has_no_type_for() -> None:
    from pymatgen.core import Lattice, Structure

    from colab_kit.graphs import BadStructure

    with pytest.raises(BadStructure, match=r"\['Am'\] are not among matgl's 89 element types"):
        get_converter("matgl").convert(Structure(Lattice.cubic(3.0), ["Am"], [[0, 0, 0]]))
