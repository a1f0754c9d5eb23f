"""ComFormer (Yan et al., ICLR 2024): iComFormer and eComFormer in plain PyTorch on ComFormer graphs.

Written from the paper and the facts of the reference (divelab/AIRS ``OpenMat/ComFormer``): layer order, sizes,
edge features and defaults follow it; the code is this package's own, with no e3nn / torch_scatter (the l = 1, 2
tensor products eComFormer uses are written out below).

* Edges: ``-0.75 / |r|`` (Å⁻¹, so every distance maps into [-4, 0)) expanded on 256 Gaussians, then
  Linear + Softplus to the node size. The lattice self-loops (see :mod:`colab_kit.graphs.comformer`) carry the
  lattice lengths the same way.
* Node layer (both variants): an edge-conditioned "vector attention" transformer block: the key of each edge is an
  MLP of (key_i, key_j, edge), the weight is ``sigmoid(BN(query_i * key / sqrt(C)))`` per channel (no softmax),
  the message an MLP of (value_i, value_j, edge); summed, projected, ``softplus(x + BN(out))``.
* iComFormer: 4 node layers, an edge update after the first: each edge attends to the three lattice vectors with
  their lengths and the cosines of its angle to each (256 Gaussians on [-1, 1]).
* eComFormer: 3 node layers, an equivariant update after the first: scalars -> (64x0e + 8x1o + 8x2e) -> 64x0e by
  two edge-weighted tensor products with the edge's spherical harmonics (l <= 2), mean aggregation.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from colab_kit.graphs.radius import edge_vectors
from colab_kit.models.common import BatchNormAnySize, PygAdapter
from colab_kit.registry import Model, Option

N_ELEMENTS = 119  # Z = 0..118; a learned table in place of the reference's 92 CGCNN atom features + Linear


class RBF(nn.Module):
    """Values ``[...]`` to ``[..., bins]`` Gaussians on ``linspace(vmin, vmax, bins)``; the reference's width:
    ``exp(-(x - c)^2 / spacing)`` (spacing, not squared)."""

    def __init__(self, vmin: float, vmax: float, bins: int) -> None:
        super().__init__()
        self.register_buffer("centers", torch.linspace(vmin, vmax, bins))
        self.gamma = float((bins - 1) / (vmax - vmin))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(-self.gamma * (x.unsqueeze(-1) - self.centers) ** 2)


def _embedding(vmin: float, vmax: float, bins: int, out: int) -> nn.Sequential:
    return nn.Sequential(RBF(vmin, vmax, bins), nn.Linear(bins, out), nn.Softplus())


def _mlp(c: int) -> nn.Sequential:
    """The reference's MLP of a concatenation of three C-vectors: Linear(3C, C), SiLU, Linear(C, C)."""
    return nn.Sequential(nn.Linear(3 * c, c), nn.SiLU(), nn.Linear(c, c))


def _part(mlp: nn.Sequential, k: int, x: torch.Tensor) -> torch.Tensor:
    """Part ``k`` (0, 1, 2) of ``mlp``'s first Linear applied to ``x [..., C]`` (the bias goes with part 2).

    ``Linear(cat(a[i], b[j], c)) = (W_a a)[i] + (W_b b)[j] + W_c c``: node-level parts are multiplied once per
    atom (or per crystal) and gathered, instead of once per edge; the same function, ~half the FLOPs and memory.
    """
    lin = mlp[0]
    c = x.shape[-1]
    return nn.functional.linear(x, lin.weight[:, k * c:(k + 1) * c], lin.bias if k == 2 else None)


def _rest(mlp: nn.Sequential, h: torch.Tensor) -> torch.Tensor:
    return mlp[2](mlp[1](h))


# Gathers are ``x.index_select(0, idx)``, never ``x[idx]``: on CPU the backward of advanced indexing
# (``index_put_`` with accumulate) is not deterministic across threads for some widths (measured: 2 threads,
# width 3 and the hidden 32 of the tests), so two identical runs, and a resumed one, ended with other weights.
# ``index_select``'s backward is ``index_add_``, which is deterministic.
def _add_to(index: torch.Tensor, src: torch.Tensor, n: int) -> torch.Tensor:
    return src.new_zeros((n,) + src.shape[1:]).index_add_(0, index, src)


class NodeAttention(nn.Module):
    """ComFormer's node block (the reference's ``ComformerConv``, one head).

    Args:
        c: node and edge feature size C.
    """

    def __init__(self, c: int) -> None:
        super().__init__()
        self.c = c
        self.query, self.key, self.value, self.edge = (nn.Linear(c, c) for _ in range(4))
        self.key_update, self.msg_update = _mlp(c), _mlp(c)
        self.out = nn.Linear(c, c)
        self.bn_att, self.bn = BatchNormAnySize(c), BatchNormAnySize(c)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """``x [A, C]``, ``edge_index [2, E]`` (row 0 sender j, row 1 receiver i), ``e [E, C]`` -> ``[A, C]``."""
        j, i = edge_index
        q, k, v, ea = self.query(x), self.key(x), self.value(x), self.edge(e)
        ku, mu = self.key_update, self.msg_update
        # key_update(cat(k_i, k_j, edge)) and msg_update(cat(v_i, v_j, edge)), node parts computed per atom
        key = _rest(ku, _part(ku, 0, k).index_select(0, i) + _part(ku, 1, k).index_select(0, j) + _part(ku, 2, ea))
        gate = torch.sigmoid(self.bn_att(q.index_select(0, i) * key / math.sqrt(self.c)))
        msg = _rest(mu, _part(mu, 0, v).index_select(0, i) + _part(mu, 1, v).index_select(0, j) + _part(mu, 2, ea)) * gate
        return nn.functional.softplus(x + self.bn(self.out(_add_to(i, msg, x.shape[0]))))


class LatticeEdgeUpdate(nn.Module):
    """iComFormer's edge block (the reference's ``ComformerConv_edge``): each edge attends to the 3 lattice vectors.

    Args:
        c: feature size C.
    """

    def __init__(self, c: int) -> None:
        super().__init__()
        self.c = c
        self.query, self.key, self.value = (nn.Linear(c, c) for _ in range(3))
        # one key / value map per lattice vector: l1, l2, l3 are ordered (shortest first), not interchangeable
        self.key_lat = nn.ModuleList(nn.Linear(c, c) for _ in range(3))
        self.value_lat = nn.ModuleList(nn.Linear(c, c) for _ in range(3))
        self.angle = nn.Linear(c, c, bias=False)
        self.key_update, self.msg_update = _mlp(c), _mlp(c)
        self.out = nn.Linear(c, c)
        self.bn_att, self.bn = BatchNormAnySize(c), BatchNormAnySize(c)

    def forward(self, e: torch.Tensor, lat_len: torch.Tensor, edge_graph: torch.Tensor,
                angle: torch.Tensor) -> torch.Tensor:
        """``e [E, C]``, ``lat_len [G, 3, C]`` (embedded lattice lengths), ``edge_graph [E]``, ``angle [E, 3, C]``
        (embedded cosines edge/lattice vector) -> ``[E, C]``."""
        n = e.shape[0]
        # lattice keys/values per crystal ([G, 3, C]): every edge of a crystal sees the same three vectors
        key_l = torch.stack([f(lat_len[:, k]) for k, f in enumerate(self.key_lat)], 1)
        value_l = torch.stack([f(lat_len[:, k]) for k, f in enumerate(self.value_lat)], 1)
        q, k, v = self.query(e), self.key(e), self.value(e)
        ang = self.angle(angle)
        ku, mu = self.key_update, self.msg_update
        # key_update(cat(k, k_lattice, angle)) over the 3 lattice vectors; the edge's own part once, not 3 times
        key = _rest(ku, _part(ku, 0, k).unsqueeze(1) + _part(ku, 1, key_l).index_select(0, edge_graph) + _part(ku, 2, ang))
        alpha = q.unsqueeze(1) * key / math.sqrt(self.c)
        gate = torch.sigmoid(self.bn_att(alpha.reshape(3 * n, self.c))).view(n, 3, self.c)
        msg = _rest(mu, _part(mu, 0, v).unsqueeze(1) + _part(mu, 1, value_l).index_select(0, edge_graph) + _part(mu, 2, ang)) * gate
        return nn.functional.softplus(e + self.bn(self.out(msg).sum(1)))


def spherical_harmonics(vec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Real spherical harmonics l = 1, 2 of the directions of ``vec [E, 3]``, "component" normalised
    (``|Y_l|^2 = 2l + 1``; Y_0 = 1): ``[E, 3]``, ``[E, 5]``. Any orthonormal real basis works: only
    rotation-invariant contractions ``Y_l(a) . Y_l(b)`` of the same basis are taken."""
    x, y, z = (vec / vec.norm(dim=-1, keepdim=True)).unbind(-1)
    s15 = math.sqrt(15.0)
    y1 = math.sqrt(3.0) * torch.stack([x, y, z], -1)
    y2 = torch.stack([s15 * x * y, s15 * y * z, math.sqrt(5.0) / 2 * (3 * z * z - 1), s15 * x * z,
                      s15 / 2 * (x * x - y * y)], -1)
    return y1, y2


class EquivariantUpdate(nn.Module):
    """eComFormer's node block (the reference's ``ComformerConvEqui``, e3nn-free).

    ``ns`` scalars per atom -> ``ns x 0e + nv x 1o + nv x 2e`` (tensor product with the edge's harmonics, weights an
    MLP of the edge features, mean over neighbours, scalar residual) -> ``ns x 0e`` (the 0e, 1o.1o and 2e.2e paths)
    -> BN, Softplus, Linear, Softplus, plus a linear skip. Path scales are e3nn's "component" normalisation
    (``1/sqrt(fan-in)`` per output), so an init matches the reference's.

    Args:
        c: node / edge feature size C.
        ns, nv: scalar and vector (l = 1 and l = 2) channels (the reference's 64 and 8).
    """

    def __init__(self, c: int, ns: int = 64, nv: int = 8) -> None:
        super().__init__()
        self.ns, self.nv = ns, nv
        self.node_in, self.skip, self.node_out = nn.Linear(c, ns), nn.Linear(c, c), nn.Linear(ns, c)
        n_weights = ns * ns + 2 * ns * nv  # both products have this many paths' weights
        self.w1 = nn.Sequential(nn.Linear(c, c), nn.Softplus(), nn.Linear(c, n_weights))
        self.w2 = nn.Sequential(nn.Linear(c, c), nn.Softplus(), nn.Linear(c, n_weights))
        self.bn = BatchNormAnySize(ns)

    def _split(self, w: torch.Tensor, first_in: int, second_in: int, third_in: int, out: tuple[int, int, int]
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a, b = first_in * out[0], second_in * out[1]
        n = w.shape[0]
        return (w[:, :a].view(n, first_in, out[0]), w[:, a:a + b].view(n, second_in, out[1]),
                w[:, a + b:].view(n, third_in, out[2]))

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, e: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        """``x [A, C]``, ``edge_index [2, E]``, ``e [E, C]``, ``vec [E, 3]`` (receiver -> sender, Å) -> ``[A, C]``."""
        j, i = edge_index
        n_atoms, ns, nv = x.shape[0], self.ns, self.nv
        y1, y2 = spherical_harmonics(vec)
        count = _add_to(i, torch.ones_like(vec[:, :1]), n_atoms).clamp(min=1.0)

        def mean(src: torch.Tensor) -> torch.Tensor:
            return _add_to(i, src, n_atoms) / count.view((-1,) + (1,) * (src.dim() - 1))

        s = self.node_in(x)
        # product 1: 0e x (0e + 1o + 2e) -> 0e + 1o + 2e, each output fed by ns inputs: scale 1/sqrt(ns)
        w00, w01, w02 = self._split(self.w1(e), ns, ns, ns, (ns, nv, nv))
        sj = s.index_select(0, j).unsqueeze(1)
        c1 = 1.0 / math.sqrt(ns)
        h0 = mean(torch.bmm(sj, w00).squeeze(1) * c1) + s
        h1 = mean(torch.bmm(sj, w01).squeeze(1).unsqueeze(-1) * y1.unsqueeze(1) * c1)  # [A, nv, 3]
        h2 = mean(torch.bmm(sj, w02).squeeze(1).unsqueeze(-1) * y2.unsqueeze(1) * c1)  # [A, nv, 5]
        # product 2: (0e + 1o + 2e) x (0e + 1o + 2e) -> 0e via 0e.0e, 1o.1o, 2e.2e (unit-norm couplings 1/sqrt(2l+1))
        v00, v11, v22 = self._split(self.w2(e), ns, nv, nv, (ns, ns, ns))
        p1 = (h1.index_select(0, j) * y1.unsqueeze(1)).sum(-1) / math.sqrt(3.0)
        p2 = (h2.index_select(0, j) * y2.unsqueeze(1)).sum(-1) / math.sqrt(5.0)
        out = (torch.bmm(h0.index_select(0, j).unsqueeze(1), v00) + torch.bmm(p1.unsqueeze(1), v11)
               + torch.bmm(p2.unsqueeze(1), v22)).squeeze(1) / math.sqrt(ns + 2 * nv)
        out = mean(out)
        softplus = nn.functional.softplus
        return softplus(self.node_out(softplus(self.bn(out)))) + self.skip(x)


class _ComFormer(PygAdapter, nn.Module):
    """What both variants share: embeddings, node layers, the update after the first, readout, adapter methods.

    Args:
        layers: node attention layers (the update runs after the first).
        hidden: node / edge feature size (the reference's 256).
        bins: Gaussians for distances and for angles (the reference's 256).
        fc: readout hidden size (the reference's 256).
        target_mean, target_std: the output is ``mean + std * net(x)``; the last layer starts at zero.
    """

    def __init__(self, layers: int, hidden: int = 256, bins: int = 256, fc: int = 256, target_mean: float = 0.0,
                 target_std: float = 1.0) -> None:
        super().__init__()
        self.embed = nn.Embedding(N_ELEMENTS, hidden)
        self.edge_embed = _embedding(-4.0, 0.0, bins, hidden)
        self.layers = nn.ModuleList(NodeAttention(hidden) for _ in range(layers))
        self.fc = nn.Sequential(nn.Linear(hidden, fc), nn.SiLU())
        self.fc_out = nn.Linear(fc, 1)
        # start as the mean predictor (output = target_mean), as CGCNN here does
        nn.init.zeros_(self.fc_out.weight)
        nn.init.zeros_(self.fc_out.bias)
        self.register_buffer("target_mean", torch.tensor(float(target_mean)))
        self.register_buffer("target_std", torch.tensor(float(target_std)))
        self.gradient_checkpointing = False

    def _call(self, layer: nn.Module, *args: Any) -> torch.Tensor:
        if self.gradient_checkpointing and self.training:
            return torch.utils.checkpoint.checkpoint(layer, *args, use_reentrant=False)
        return layer(*args)

    def _update(self, x: torch.Tensor, e: torch.Tensor, vec: torch.Tensor, batch: Any
                ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward(self, batch: Any) -> torch.Tensor:
        """``batch``: a collated ComFormer graph batch -> ``[G]`` predictions in target units."""
        vec = edge_vectors(batch.pos, batch.cell, batch.edge_index, batch.edge_shift, batch.batch)
        e = self.edge_embed(-0.75 / vec.norm(dim=-1))
        x = self.embed(batch.z)
        for n, layer in enumerate(self.layers):
            x = self._call(layer, x, batch.edge_index, e)
            if n == 0:
                x, e = self._update(x, e, vec, batch)
        pooled = _add_to(batch.batch, x, batch.num_graphs)
        pooled = pooled / torch.bincount(batch.batch, minlength=batch.num_graphs).clamp(min=1).unsqueeze(-1)
        out = self.fc_out(self.fc(pooled)).squeeze(-1)
        return self.target_mean + self.target_std * out


class IComFormer(_ComFormer):
    """iComFormer: invariant (distances, lattice lengths, edge-lattice angles); 4 layers by default."""

    def __init__(self, layers: int = 4, hidden: int = 256, bins: int = 256, fc: int = 256, **kw: Any) -> None:
        super().__init__(layers, hidden, bins, fc, **kw)
        self.angle_embed = _embedding(-1.0, 1.0, bins, hidden)
        self.edge_update = LatticeEdgeUpdate(hidden)

    def _update(self, x: torch.Tensor, e: torch.Tensor, vec: torch.Tensor, batch: Any
                ) -> tuple[torch.Tensor, torch.Tensor]:
        lat = torch.bmm(batch.lattice_image, batch.cell)  # [G, 3, 3] Å: l1, l2, l3 of each crystal
        edge_graph = batch.batch[batch.edge_index[1]]
        lat_len = self.edge_embed(-0.75 / lat.norm(dim=-1))  # [G, 3, C], the distances' embedding, as the reference
        # the reference's edge vector points sender -> receiver: -vec
        lat_e = lat.index_select(0, edge_graph)
        cos = -(lat_e * vec.unsqueeze(1)).sum(-1) / (lat_e.norm(dim=-1) * vec.norm(dim=-1, keepdim=True))
        angle = self.angle_embed(cos.clamp(-1.0, 1.0))  # [E, 3, C]
        return x, self._call(self.edge_update, e, lat_len, edge_graph, angle)


class EComFormer(_ComFormer):
    """eComFormer: equivariant l <= 2 features in one update (invariant prediction); 3 layers by default."""

    def __init__(self, layers: int = 3, hidden: int = 256, bins: int = 256, fc: int = 256, **kw: Any) -> None:
        super().__init__(layers, hidden, bins, fc, **kw)
        self.equi_update = EquivariantUpdate(hidden)

    def _update(self, x: torch.Tensor, e: torch.Tensor, vec: torch.Tensor, batch: Any
                ) -> tuple[torch.Tensor, torch.Tensor]:
        return self._call(self.equi_update, x, batch.edge_index, e, vec), e


VARIANTS = {"invariant": (IComFormer, 4), "equivariant": (EComFormer, 3)}


def _build(target_mean: float, target_std: float, graph_params: dict[str, Any], variant: str,
           comformer_layers: int | None, hidden: int) -> _ComFormer:
    # graph_params is not needed: -0.75/d covers every distance, as the k-nearest graph has no fixed cutoff
    cls, layers = VARIANTS[variant]
    return cls(layers=comformer_layers or layers, hidden=hidden, target_mean=target_mean, target_std=target_std)


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


SPEC = Model(
    name="comformer", graph_kind="comformer",
    description="ComFormer (Yan et al. 2024): iComFormer / eComFormer graph transformers, trained from scratch",
    # measured (autograd's saved tensors, 256 wide, fp32): ~94 kB per edge (iComFormer; eComFormer ~83 kB) and
    # ~26 kB per atom, plus each atom's 6 lattice self-loops, which the store's edge counts do not include
    builder=_build, bytes_per_atom=600_000, bytes_per_edge=100_000, lr=1e-3, schedule="warmup_cosine",
    schedule_reason="the authors train with a one-cycle schedule: warm up from lr/25 over 30% of the epochs, then "
                    "cosine (early full-lr epochs make its BatchNorm statistics swing)",
    epoch_scale=5, epoch_reason="trained from scratch: 5x the epochs of a pretrained model (the paper trains 500)",
    options={
        "variant": Option("invariant", "'invariant' or 'equivariant'",
                          "iComFormer: distances + edge-to-lattice angles (the cheaper one); "
                          "'equivariant' is eComFormer (l <= 2 tensor products)", lambda v: v in VARIANTS),
        "comformer_layers": Option(None, "a positive integer, or None for the paper's (4 invariant, 3 equivariant)",
                                   "the reference's node attention layers", lambda v: v is None or _positive_int(v)),
        "hidden": Option(256, "a positive integer", "the reference's 256 node / edge features", _positive_int),
    },
)
