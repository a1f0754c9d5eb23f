"""colab_kit's CGConv is PyG's CGConv computed faster: same outputs and gradients on real graphs, same weights."""

from __future__ import annotations

import pytest
import torch
from helpers import shipped_records
from pymatgen.core import Structure

from colab_kit.graphs import get_converter
from colab_kit.graphs.radius import collate, edge_vectors
from colab_kit.models.cgcnn import CGConv, GaussianExpansion


@pytest.fixture(scope="module")
def batch():
    ids, rows = shipped_records(24)
    conv = get_converter("radius")
    items = []
    for (structure, target) in rows:
        s = Structure.from_dict(structure)
        items.append((conv.to_graph(conv.convert(s), target=target), target))
    return collate(items)


@pytest.mark.parametrize("train", [True, False])
def test_cgconv_equals_pyg_cgconv(batch, train: bool) -> None:
    from torch_geometric.nn import CGConv as PygCGConv

    torch.manual_seed(0)
    ours, ref = CGConv(32, 16), PygCGConv(32, dim=16, batch_norm=True)
    ours.load_state_dict(ref.state_dict())  # PyG's parameter names: its checkpoints load here
    ours.train(train), ref.train(train)
    if not train:  # evaluation uses the running statistics: make them non-trivial
        ref.bn.running_mean.uniform_(-1, 1), ref.bn.running_var.uniform_(0.5, 2)
        ours.bn.load_state_dict(ref.bn.state_dict())
    x = torch.randn(batch.num_nodes, 32, dtype=torch.float64, requires_grad=True)
    e = GaussianExpansion(8.0, 16)(edge_vectors(batch.pos, batch.cell, batch.edge_index, batch.edge_shift,
                                                batch.batch).norm(dim=-1)).double()
    ours.double(), ref.double()
    a, b = ours(x, batch.edge_index, e), ref(x, batch.edge_index, e)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    ga = torch.autograd.grad(a.square().sum(), [x, *ours.parameters()])
    gb = torch.autograd.grad(b.square().sum(), [x, *ref.parameters()])
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v, rtol=1e-9, atol=1e-9)
    if train:  # a first batch sets the running mean to its mean (BatchNormAnySize); PyG's moves 0.1 of the way
        torch.testing.assert_close(ours.bn.running_mean, ref.bn.running_mean / 0.1)
