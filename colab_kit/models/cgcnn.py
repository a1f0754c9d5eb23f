"""A compact CGCNN (Xie & Grossman 2018) in PyTorch Geometric for periodic radius graphs.

Atoms are embedded from Z by a learned table (no 92-float one-hot stored per node); edge features
are a Gaussian expansion of distances recomputed from positions, cell and image shifts, so the
store keeps integers only.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from colab_kit.graphs.radius import edge_vectors
from colab_kit.models.common import BatchNormAnySize, PygAdapter
from colab_kit.registry import Model, Option


class GaussianExpansion(nn.Module):
    """Distances ``[E]`` (Å) to ``[E, n]`` Gaussians centred on 0..cutoff."""

    def __init__(self, cutoff: float = 8.0, n: int = 64) -> None:
        super().__init__()
        self.register_buffer("centers", torch.linspace(0.0, cutoff, n))
        self.gamma = float(1.0 / (cutoff / (n - 1)) ** 2)

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        return torch.exp(-self.gamma * (d.unsqueeze(-1) - self.centers) ** 2)


class CGConv(nn.Module):
    """CGCNN's convolution (Xie & Grossman 2018, eq. 5) in PyG's ``CGConv(channels, dim, batch_norm=True)`` form:
    ``x_i + BN(sum_j sigmoid(z_ij W_f + b_f) * softplus(z_ij W_s + b_s))``, ``z_ij = x_i ⊕ x_j ⊕ u_ij``.

    The same function and parameter names as ``torch_geometric.nn.CGConv`` (tested against it; its weights load
    here), computed without building ``z`` per edge: ``z W = (x W_i)[i] + (x W_j)[j] + u W_u``, so the two
    atom-sized products run once per atom instead of once per edge, and the sum over neighbours is an
    ``index_add_`` (CPU: ~7x faster than the broadcast ``scatter_add_`` PyG's sum aggregation uses).
    """

    def __init__(self, channels: int, dim: int) -> None:
        super().__init__()
        self.channels = channels
        self.lin_f = nn.Linear(2 * channels + dim, channels)
        self.lin_s = nn.Linear(2 * channels + dim, channels)
        self.bn = BatchNormAnySize(channels)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor) -> torch.Tensor:
        """``x [A, C]``, ``edge_index [2, E]`` (row 0 neighbour j, row 1 centre i), ``edge_attr [E, dim]``."""
        c = self.channels
        j, i = edge_index
        w = torch.cat([self.lin_f.weight, self.lin_s.weight])  # [2C, 2C + dim]: both gates in one product
        b = torch.cat([self.lin_f.bias, self.lin_s.bias])
        h = (nn.functional.linear(x, w[:, :c]).index_select(0, i) + nn.functional.linear(x, w[:, c:2 * c]).index_select(0, j)
             + nn.functional.linear(edge_attr, w[:, 2 * c:], b))
        f, s = h.chunk(2, dim=-1)
        msg = torch.sigmoid(f) * nn.functional.softplus(s)
        return self.bn(x.new_zeros(x.shape).index_add_(0, i, msg)) + x


class CGCNN(PygAdapter, nn.Module):
    """:class:`CGConv` layers on learned element embeddings, mean pooling, MLP head; predicts a scalar per graph.

    Args:
        hidden: node feature size.
        n_conv: number of CGConv layers.
        cutoff: distance expansion range, Å (the store's cutoff).
        target_mean, target_std: the output is ``mean + std * net(x)`` so the net learns unit scale.
    """

    def __init__(self, hidden: int = 64, n_conv: int = 3, cutoff: float = 8.0, n_gaussians: int = 64,
                 target_mean: float = 0.0, target_std: float = 1.0) -> None:
        super().__init__()
        self.embed = nn.Embedding(101, hidden)
        self.expand = GaussianExpansion(cutoff, n_gaussians)
        self.convs = nn.ModuleList(CGConv(hidden, dim=n_gaussians) for _ in range(n_conv))
        self.head = nn.Sequential(nn.Linear(hidden, 128), nn.SiLU(), nn.Linear(128, 1))
        # start as the mean predictor (output = target_mean): a few steps can then only move it towards the data,
        # where a random head starts off by about the target's std and small runs end worse than the mean
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)
        self.register_buffer("target_mean", torch.tensor(float(target_mean)))
        self.register_buffer("target_std", torch.tensor(float(target_std)))
        self.gradient_checkpointing = False

    def forward(self, batch: Any) -> torch.Tensor:
        from torch_geometric.nn import global_mean_pool

        vec = edge_vectors(batch.pos, batch.cell, batch.edge_index, batch.edge_shift, batch.batch)
        e = self.expand(vec.norm(dim=-1))
        x = self.embed(batch.z)
        for conv in self.convs:
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(conv, x, batch.edge_index, e, use_reentrant=False)
            else:
                x = conv(x, batch.edge_index, e)
        out = self.head(global_mean_pool(x, batch.batch, size=batch.num_graphs)).squeeze(-1)
        return self.target_mean + self.target_std * out


def _build(target_mean: float, target_std: float, graph_params: dict[str, Any], hidden: int, n_conv: int) -> CGCNN:
    return CGCNN(hidden=hidden, n_conv=n_conv, cutoff=float(graph_params.get("cutoff", 8.0)),
                 target_mean=target_mean, target_std=target_std)


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


SPEC = Model(
    name="cgcnn", graph_kind="radius", description="CGCNN (Xie & Grossman 2018) in PyG, trained from scratch",
    builder=_build, bytes_per_atom=4_000, bytes_per_edge=2_000, lr=3e-3,
    epoch_scale=5, epoch_reason="trained from scratch: 5x the epochs of a pretrained model (each ~1/10 the cost)",
    options={"hidden": Option(64, "a positive integer", "CGCNN's atom feature size", _positive_int),
             "n_conv": Option(3, "a positive integer", "CGCNN's 3 convolution layers", _positive_int)},
)
