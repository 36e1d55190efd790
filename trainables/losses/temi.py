"""TEMI: teacher-ensemble-weighted, beta-sharpened pointwise mutual information.

Reference: Adaloglou et al., "Exploring the Limits of Deep Image Clustering using Pretrained
Models", BMVC 2023 (TEMI): the PMI objective with beta < 1, the EMA cluster-marginal estimate,
and the instance weight given by the teacher ensemble's agreement on a pair. Behaviour as
described in docs/methods.md, TEMI: loss.

Shapes: H heads, B pairs, C clusters. Student logits (H, B, C) of view a and view b (a mined
neighbour of a); teacher logits likewise; the marginal p~ is (H, C).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _check(*xs: Tensor) -> None:
    shape = xs[0].shape
    if len(shape) != 3 or shape[0] < 1 or shape[1] < 1 or shape[2] < 2:
        raise ValueError(f"logits must be (H >= 1, B >= 1, C >= 2), got {tuple(shape)}")
    for x in xs[1:]:
        if x.shape != shape:
            raise ValueError(
                f"all logits must share the shape {tuple(shape)}, got {tuple(x.shape)}"
            )


def teacher_probs(teacher_logits: Tensor, teacher_temp: float) -> Tensor:
    return F.softmax(teacher_logits.float() / teacher_temp, dim=-1)


def update_marginal(marginal: Tensor, batch_mean: Tensor, momentum: float = 0.9) -> Tensor:
    """p~ <- m p~ + (1 - m) mean_{batch, both views} q_t. (H, C), (H, C) -> (H, C)."""
    return momentum * marginal + (1 - momentum) * batch_mean


def ensemble_weight(q_teacher_a: Tensor, q_teacher_b: Tensor) -> Tensor:
    """w = (1/H) sum_h sum_c q_t^h(c|a) q_t^h(c|b): the ensemble's same-cluster probability.

    (H, B, C), (H, B, C) probabilities -> (B,) in [0, 1] (no gradient).
    """
    return (q_teacher_a * q_teacher_b).sum(-1).mean(0).detach()


def beta_pmi(q_student: Tensor, q_teacher: Tensor, marginal: Tensor, beta: float) -> Tensor:
    """pmi_beta = log sum_c (q_s(c) q_t(c))^beta / p~(c). (H,B,C),(H,B,C),(H,C) -> (H,B)."""
    joint = (q_student * q_teacher).pow(beta) / marginal[:, None, :]
    return torch.log(joint.sum(-1))


def temi_loss(
    student_a: Tensor,
    student_b: Tensor,
    teacher_a: Tensor,
    teacher_b: Tensor,
    marginal: Tensor,
    beta: float = 0.6,
    student_temp: float = 0.1,
    teacher_temp: float = 0.1,
) -> tuple[Tensor, Tensor]:
    """Weighted beta-PMI, symmetrised over the two views, averaged over heads.

    L_h = 1/2 mean_b[-w pmi(student b, teacher a)] + 1/2 mean_b[-w pmi(student a, teacher b)];
    L = mean_h L_h. ``marginal`` is p~ already updated with this batch (update_marginal).

    Returns:
        (L scalar, (H,) per-head losses L_h, detached, for lowest-loss head selection).
    """
    _check(student_a, student_b, teacher_a, teacher_b)
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    qs_a = F.softmax(student_a.float() / student_temp, dim=-1)
    qs_b = F.softmax(student_b.float() / student_temp, dim=-1)
    qt_a = teacher_probs(teacher_a, teacher_temp).detach()
    qt_b = teacher_probs(teacher_b, teacher_temp).detach()
    w = ensemble_weight(qt_a, qt_b)
    marginal = marginal.detach().float()
    per_head = 0.5 * (-w * beta_pmi(qs_b, qt_a, marginal, beta)).mean(-1) + 0.5 * (
        -w * beta_pmi(qs_a, qt_b, marginal, beta)
    ).mean(-1)
    return per_head.mean(), per_head.detach()
