"""SPICE: prototype pseudo-labelling, reliable-sample selection and the semi-supervised loss.

Reference: Niu, Shan, Wang, "SPICE: Semantic Pseudo-Labeling for Image Clustering", IEEE TIP
2022: Sec. III-B (prototype pseudo-labels: the most confident samples of each cluster define a
prototype; the samples nearest to it get the cluster's label), Sec. III-C (reliable samples by
local semantic consistency) and the FixMatch-style joint training. Behaviour as described in
docs/methods.md, SPICE: SPICE-Self, SPICE: reliable samples and SPICE: SPICE-Semi.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def prototype_pseudo_labels(
    probs: Tensor, features: Tensor, center_ratio: float = 0.5, select_ratio: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Pseudo-labels of one head for one big batch.

    Per cluster c: the top m = floor(center_ratio (N/K) r) rows of probs[:, c] (stable sort,
    ties to the lower index) define the prototype mu_c = mean of their features; the
    n = floor((N/K) r) rows most similar to mu_c get label c. Not exclusive (a row may be picked
    by two clusters), as SPICE's code.

    Args:
        probs: (N, K) cluster probabilities. features: (N, d) L2-normalised embeddings.
    Returns:
        (indices (K*n,), labels (K*n,)) int64, cluster 0's rows first.
    """
    n_rows, k = probs.shape
    if k < 2 or n_rows < k or features.shape[0] != n_rows:
        raise ValueError(
            f"need probs (N, K) with K >= 2, N >= K and features (N, d); got "
            f"{tuple(probs.shape)} and {tuple(features.shape)}"
        )
    m = max(1, math.floor(center_ratio * n_rows / k * select_ratio))
    n = max(1, math.floor(n_rows / k * select_ratio))
    order = torch.sort(probs, dim=0, descending=True, stable=True).indices[:m]  # (m, K)
    prototypes = features[order].mean(0)  # (K, d)
    sims = prototypes @ features.T  # (K, N)
    chosen = torch.sort(sims, dim=1, descending=True, stable=True).indices[:, :n]  # (K, n)
    labels = torch.arange(k).repeat_interleave(n)
    return chosen.reshape(-1), labels


def spice_ce(logits: Tensor, targets: Tensor, double_softmax: bool = True) -> Tensor:
    """Cross-entropy on pseudo-labels. (B, K), (B,) -> scalar.

    SPICE's heads end in a softmax and feed those probabilities to ``CrossEntropyLoss`` as if
    they were logits (CE(log_softmax(softmax(z)))): ``double_softmax`` reproduces that quirk,
    which bounds and flattens the gradients.
    """
    z = F.softmax(logits.float(), dim=-1) if double_softmax else logits.float()
    return F.cross_entropy(z, targets)


BALANCE_RULES = ("smallest", "median", "none")


def local_consistency(
    pred: Tensor, confidence: Tensor, neighbors_with_self: Tensor, ratio: float, threshold: float
) -> Tensor:
    """Reliable samples: a_i >= N_s * ratio and confidence_i > threshold, where a_i counts the
    rows of neighbors_with_self[i] (N_s entries, the sample itself included) predicted like i.

    (N,), (N,), (N, N_s) -> (N,) bool.
    """
    agree = (pred[neighbors_with_self] == pred[:, None]).sum(1)
    return (agree >= neighbors_with_self.shape[1] * ratio) & (confidence > threshold)


def balance_reliable(
    reliable: Tensor, pred: Tensor, num_clusters: int, gen: torch.Generator, rule: str = "smallest"
) -> Tensor:
    """Subsample every cluster's reliable rows down to a common cap (uniform, seeded).

    ``smallest`` (SPICE's code): the cap is the smallest cluster's count, so a cluster with no
    reliable row empties the whole set. ``median``: the cap is the median cluster's count
    (upper median), clusters below it keep every row, so one near-empty cluster no longer
    truncates the others. ``none``: every reliable row is kept.

    (N,) bool, (N,) int64 -> (N,) bool.
    """
    if rule not in BALANCE_RULES:
        raise ValueError(f"balance rule must be one of {', '.join(BALANCE_RULES)}, got {rule!r}")
    if rule == "none":
        return reliable.clone()
    counts = torch.bincount(pred[reliable], minlength=num_clusters)
    keep = torch.zeros_like(reliable)
    cap = int(counts.min()) if rule == "smallest" else int(counts.sort().values[num_clusters // 2])
    if cap == 0:
        return keep
    for c in range(num_clusters):
        rows = torch.nonzero(reliable & (pred == c)).squeeze(1)
        keep[rows[torch.randperm(len(rows), generator=gen)[:cap]]] = True
    return keep


def fixmatch_loss(
    labelled_logits: Tensor,
    labels: Tensor,
    weak_logits: Tensor,
    strong_logits: Tensor,
    threshold: float = 0.95,
    unlabelled_weight: float = 1.0,
) -> tuple[Tensor, dict]:
    """SPICE-Semi: CE on the reliable (pseudo-)labelled rows + lambda_u * mean_i[1(max q_i >=
    threshold) CE(strong_i, argmax q_i)], q = softmax(weak) without gradient.

    Args:
        labelled_logits: (B_l, K); labels (B_l,); weak_logits, strong_logits: (B_u, K).
    """
    sup = F.cross_entropy(labelled_logits.float(), labels)
    conf, target = F.softmax(weak_logits.detach().float(), dim=-1).max(-1)
    mask = (conf >= threshold).float()
    unsup = (F.cross_entropy(strong_logits.float(), target, reduction="none") * mask).mean()
    return sup + unlabelled_weight * unsup, {
        "loss/sup": float(sup.detach()),
        "loss/unsup": float(unsup.detach()),
        "semi/mask_frac": float(mask.mean()),
    }
