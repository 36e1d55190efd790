"""Cluster heads (no method logic): a linear or MLP map from features to cluster logits."""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Config fields choosing a head use these Literal types; the tuples derive from them.
HeadKind = Literal["linear", "mlp"]
InputNorm = Literal["l2", "none", "standardize"]
HEADS: tuple[str, ...] = get_args(HeadKind)
INPUT_NORMS: tuple[str, ...] = get_args(InputNorm)


class ClusterHead(nn.Module):
    """(B, D) features -> (B, C) logits.

    Args:
        in_dim: feature width D. num_clusters: C.
        kind: ``linear`` (Linear(D, C) with bias) or ``mlp`` (D -> hidden -> C, GELU).
        input_norm: ``l2`` (unit-norm rows), ``none``, or ``standardize`` (per-dimension
            z-score with statistics fixed by :meth:`fit_standardization` on training features).
    """

    def __init__(
        self,
        in_dim: int,
        num_clusters: int,
        kind: HeadKind = "linear",
        input_norm: InputNorm = "l2",
        hidden: int = 512,
    ) -> None:
        super().__init__()
        if kind not in HEADS or input_norm not in INPUT_NORMS:
            raise ValueError(
                f"head kind in {HEADS}, input_norm in {INPUT_NORMS}; got {kind!r}, {input_norm!r}"
            )
        self.input_norm = input_norm
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))
        if kind == "linear":
            self.net: nn.Module = nn.Linear(in_dim, num_clusters)
        else:
            self.net = nn.Sequential(
                nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, num_clusters)
            )

    @torch.no_grad()
    def fit_standardization(self, features: Tensor) -> None:
        self.mean.copy_(features.mean(0))
        self.std.copy_(features.std(0).clamp(min=1e-6))

    def normalize(self, x: Tensor) -> Tensor:
        if self.input_norm == "l2":
            return F.normalize(x, dim=-1)
        if self.input_norm == "standardize":
            return (x - self.mean) / self.std
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.normalize(x))


class L2Normalize(nn.Module):
    """(..., D) -> unit-norm rows (puts a head that expects unit-norm embeddings on raw
    backbone features in finetune modes)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=-1)


class MultiHead(nn.Module):
    """``num_heads`` independently initialised heads on the same input: (B, D) -> (R, B, C).

    Used as restarts trained side by side on identical batches; the caller keeps the one with
    the best label-free score (SCAN's lowest-loss head selection) and discards the rest.
    """

    def __init__(self, heads: list[ClusterHead]) -> None:
        super().__init__()
        self.heads = nn.ModuleList(heads)

    def forward(self, x: Tensor) -> Tensor:
        first = self.heads[0]
        if all(
            isinstance(h.net, nn.Linear)
            and h.input_norm == first.input_norm
            and h.input_norm != "standardize"
            for h in self.heads
        ):
            # one batched matmul instead of R small ones (restarts share the normalised input)
            x = first.normalize(x)
            weight = torch.stack([h.net.weight for h in self.heads])  # (R, C, D)
            bias = torch.stack([h.net.bias for h in self.heads])  # (R, C)
            r, c, d = weight.shape
            out = torch.addmm(bias.reshape(1, r * c), x, weight.reshape(r * c, d).t())
            return out.view(len(x), r, c).transpose(0, 1)  # (R, B, C)
        return torch.stack([h(x) for h in self.heads])
