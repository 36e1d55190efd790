"""SCAN's clustering loss and its self-labelling cross-entropy.

References:
    Van Gansbeke et al., "SCAN: Learning to Classify Images without Labels", ECCV 2020:
    Eq. 2 (consistency of an anchor with a mined neighbour, minus lambda times the entropy of
    the mean prediction) and Sec. 3.3 / Eq. 4 (self-labelling: cross-entropy of a strongly
    augmented view against the confident predictions of the weak view, class-balanced).
    Behaviour details: docs/methods.md, SCAN: loss and SCAN self-labelling: loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from trainables.losses.neighbors import EPS, _check, pair_nll, probs


def scan_loss(
    anchor_logits: Tensor, neighbor_logits: Tensor, entropy_weight: float = 5.0
) -> tuple[Tensor, dict]:
    """L = -(1/B) sum_i log<p(a_i), p(n_i)> - lambda * H(pbar), pbar = mean_i p(a_i).

    Args:
        anchor_logits: (B, C), or (R, B, C) for R heads trained side by side on the same
            batch (SCAN's heads): the loss is then the sum of the R heads' losses, so each
            head gets its full gradient, computed in one pass.
        neighbor_logits: the same shape, one sampled neighbour per anchor.
        entropy_weight: lambda (5 in every SCAN config).
    Returns:
        (loss scalar, {"loss/consistency", "loss/entropy"}) with entropy = H(pbar) >= 0, both
        averaged over heads.
    """
    _check(anchor_logits, "anchor_logits")
    if neighbor_logits.shape != anchor_logits.shape:
        raise ValueError(
            f"neighbor_logits {tuple(neighbor_logits.shape)} != anchor_logits "
            f"{tuple(anchor_logits.shape)}"
        )
    p_anchor = probs(anchor_logits)
    consistency = pair_nll((p_anchor * probs(neighbor_logits)).sum(-1), same=True).mean(-1)
    pbar = p_anchor.mean(-2)
    neg_entropy = (pbar * torch.log(pbar.clamp(min=EPS))).sum(-1)  # sum pbar log pbar = -H
    loss = (consistency + entropy_weight * neg_entropy).sum()
    return loss, {
        "loss/consistency": float(consistency.detach().mean()),
        "loss/entropy": float(-neg_entropy.detach().mean()),
    }


def confidence_mask(weak_logits: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """(B, C) logits -> ((B,) bool max-probability > threshold, (B,) argmax targets)."""
    conf, target = probs(weak_logits).max(-1)
    return conf > threshold, target


def selflabel_loss(
    weak_logits: Tensor, strong_logits: Tensor, threshold: float = 0.99, balanced: bool = True
) -> tuple[Tensor, dict]:
    """SCAN's confidence-based cross-entropy (self-labelling stage).

    Targets are argmax p(weak) where max p(weak) > threshold (no gradient through them); the
    loss is the cross-entropy of the strong view's logits on those rows. With ``balanced``,
    class c is weighted n_masked / count_c (count over the masked rows; classes without a
    confident row keep weight 1) and the loss is the weighted mean sum w_y nll / sum w_y.

    Args:
        weak_logits: (B, C). strong_logits: (B, C).
    Raises:
        ValueError: no row passes the threshold (the caller turns it into a clear error).
    """
    if weak_logits.shape != strong_logits.shape or weak_logits.ndim != 2:
        raise ValueError(
            f"weak and strong logits must both be (B, C), got {tuple(weak_logits.shape)} and "
            f"{tuple(strong_logits.shape)}"
        )
    mask, target = confidence_mask(weak_logits.detach(), threshold)
    n_masked = int(mask.sum())
    if n_masked == 0:
        raise ValueError(f"no prediction is more confident than threshold={threshold}")
    target = target[mask]
    weight = None
    if balanced:
        counts = torch.bincount(target, minlength=weak_logits.shape[1]).float()
        weight = torch.ones_like(counts)
        present = counts > 0
        weight[present] = n_masked / counts[present]
    loss = F.cross_entropy(strong_logits[mask].float(), target, weight=weight)
    return loss, {"selflabel/confident_frac": n_masked / len(mask)}
