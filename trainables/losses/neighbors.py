"""Neighbour-consistency clustering losses (SCAN's consistency + entropy; UNIC's negatives).

References:
    SCAN: Van Gansbeke et al., "SCAN: Learning to Classify Images without Labels", ECCV 2020,
        Eq. 2 (consistency between an anchor and a neighbour, entropy on the mean prediction).
    UNIC: Jayatilaka et al., arXiv 2503.14500 (2025); per its reviewers Eq. 6 is a binary
        cross-entropy on the dot product of two predictions (target 1 for a positive pair,
        0 for a negative one). Form and defaults: docs/methods.md, UNIC: loss.

All probabilities are computed in float32 from logits (also under autocast). ``EPS`` guards
the logs. Every term is invariant to permuting the cluster axis of all inputs together.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

EPS = 1e-8


def pair_nll(dots: Tensor, same: bool) -> Tensor:
    """Elementwise binary cross-entropy of a pair's agreement ``dots = <p_a, p_x>`` (any shape):
    -log(dots + eps) for a positive pair, -log(1 - dots + eps) for a negative one.

    (1 - dots) is formed first: a float32 dot of two saturated one-hots is exactly 1, and
    log1p(-1 + eps) rounds to log1p(-1) = -inf (eps is below half an ulp of 1); the clamp covers
    a sum of products that exceeds 1 by an ulp. Both terms are then bounded by -log(eps).
    """
    return -torch.log((dots if same else (1.0 - dots).clamp(min=0.0)) + EPS)


def _check(logits: Tensor, name: str) -> None:
    if logits.ndim < 2 or logits.shape[-1] < 2:
        raise ValueError(f"{name} must be (..., C) with C >= 2 clusters, got {tuple(logits.shape)}")
    if logits.shape[0] < 1:
        raise ValueError(f"{name} needs a batch of at least one anchor, got B=0")


def probs(logits: Tensor) -> Tensor:
    return F.softmax(logits.float(), dim=-1)


def positive_loss(
    anchor_logits: Tensor, positive_logits: Tensor, pos_mask: Tensor | None = None
) -> Tensor:
    """L_pos = -sum_b mask_b log(<p_a[b], p_p[b]> + eps) / max(1, sum_b mask_b).

    Args:
        anchor_logits: (B, C). positive_logits: (B, C). pos_mask: (B,) bool, False masks an
            anchor without a usable positive (it still feeds the other terms).
    """
    _check(anchor_logits, "anchor_logits")
    if positive_logits.shape != anchor_logits.shape:
        raise ValueError(
            f"positive_logits {tuple(positive_logits.shape)} != anchor_logits "
            f"{tuple(anchor_logits.shape)}"
        )
    nll = pair_nll((probs(anchor_logits) * probs(positive_logits)).sum(-1), same=True)
    if pos_mask is None:
        return nll.mean()
    mask = pos_mask.to(nll.dtype)
    return (nll * mask).sum() / mask.sum().clamp(min=1.0)


def negative_loss(anchor_logits: Tensor, negative_logits: Tensor) -> Tensor:
    """L_neg = -(1 / (B n_neg)) sum_{b,t} log(1 - <p_a[b], p_n[b,t]> + eps).

    Args:
        anchor_logits: (B, C). negative_logits: (B, n_neg, C).
    """
    _check(anchor_logits, "anchor_logits")
    if (
        negative_logits.ndim != 3
        or negative_logits.shape[0] != anchor_logits.shape[0]
        or negative_logits.shape[2] != anchor_logits.shape[1]
    ):
        raise ValueError(
            f"negative_logits must be (B, n_neg, C) = ({anchor_logits.shape[0]}, "
            f"n_neg, {anchor_logits.shape[1]}), got {tuple(negative_logits.shape)}"
        )
    dots = (probs(anchor_logits)[:, None, :] * probs(negative_logits)).sum(-1)  # (B, n_neg)
    return pair_nll(dots, same=False).mean()


def entropy_term(anchor_logits: Tensor) -> Tensor:
    """L_ent = sum_c pbar_c log max(pbar_c, eps), pbar = mean_b p_a[b] (negative entropy).

    Minimising it spreads anchors over clusters; its minimum is -log C. Args: (B, C).
    """
    _check(anchor_logits, "anchor_logits")
    pbar = probs(anchor_logits).mean(0)
    return (pbar * torch.log(pbar.clamp(min=EPS))).sum()


def neighbor_clustering_loss(
    anchor_logits: Tensor,
    positive_logits: Tensor,
    negative_logits: Tensor | None = None,
    pos_mask: Tensor | None = None,
    w_pos: float = 1.0,
    w_neg: float = 1.0,
    w_ent: float = 5.0,
) -> tuple[Tensor, dict]:
    """L = w_pos L_pos + w_neg L_neg + w_ent L_ent (UNIC); without negatives, SCAN's loss.

    Returns:
        (loss scalar, {"loss/pos", "loss/neg", "loss/ent"} detached floats).
    """
    l_pos = positive_loss(anchor_logits, positive_logits, pos_mask)
    l_ent = entropy_term(anchor_logits)
    loss = w_pos * l_pos + w_ent * l_ent
    logs = {"loss/pos": float(l_pos.detach()), "loss/ent": float(l_ent.detach())}
    if negative_logits is not None and w_neg:
        l_neg = negative_loss(anchor_logits, negative_logits)
        loss = loss + w_neg * l_neg
        logs["loss/neg"] = float(l_neg.detach())
    return loss, logs


def supervised_term(anchor_logits: Tensor, target: Tensor) -> Tensor:
    """GCD option of UNIC (docs/methods.md, UNIC: GCD mode, ``w_sup``): cross-entropy of the
    labelled anchors against their class's fixed cluster; rows with ``target < 0``
    (unlabelled) are ignored.

    Args: anchor_logits (B, C); target (B,) int64 cluster of the anchor's class, or -1.
    Returns the mean over labelled rows (0 when the batch has none).
    """
    _check(anchor_logits, "anchor_logits")
    labelled = target >= 0
    if not bool(labelled.any()):
        return anchor_logits.sum() * 0.0
    return F.cross_entropy(anchor_logits[labelled].float(), target[labelled])
