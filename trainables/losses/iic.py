"""IIC: mutual information between the cluster assignments of paired views.

Reference: Ji, Henriques, Vedaldi, "Invariant Information Clustering for Unsupervised Image
Classification and Segmentation", ICCV 2019, Eq. 1-3 (joint distribution of a pair's
assignments, symmetrised; objective I(z; z')). The lambda > 1 generalisation up-weights the
marginal entropy (docs/methods.md, IIC: loss).
"""

from __future__ import annotations

import sys

import torch
from torch import Tensor

from trainables.losses.neighbors import probs

EPS = sys.float_info.epsilon


def joint_distribution(logits_a: Tensor, logits_b: Tensor) -> Tensor:
    """(n, C), (n, C) logits -> the symmetric, normalised (C, C) joint P of the pair."""
    if logits_a.shape != logits_b.shape or logits_a.ndim != 2:
        raise ValueError(
            f"both views must be (n, C), got {tuple(logits_a.shape)} and {tuple(logits_b.shape)}"
        )
    if logits_a.shape[0] < 1 or logits_a.shape[1] < 2:
        raise ValueError(f"IIC needs n >= 1 pairs and C >= 2 clusters, got {tuple(logits_a.shape)}")
    p = probs(logits_a).T @ probs(logits_b)  # sum_i z_i z'_i^T
    p = (p + p.T) / 2
    return p / p.sum()


def iic_loss(logits_a: Tensor, logits_b: Tensor, lam: float = 1.0) -> Tensor:
    """L = -sum_{c,c'} P_cc' (log P_cc' - lam log P_c - lam log P_c'); with lam = 1, -I(z; z').

    Args:
        logits_a: (n, C) one view's logits. logits_b: (n, C) the paired view's.
        lam: marginal-entropy weight (1 for clustering).
    Returns:
        scalar; -log C at the optimum for C balanced clusters in perfect agreement.
    """
    p = joint_distribution(logits_a, logits_b)
    pi = p.sum(1, keepdim=True).expand_as(p)
    pj = p.sum(0, keepdim=True).expand_as(p)
    p, pi, pj = (x.clamp(min=EPS) for x in (p, pi, pj))
    return -(p * (torch.log(p) - lam * torch.log(pi) - lam * torch.log(pj))).sum()
