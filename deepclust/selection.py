"""Label-free model selection from hard cluster assignments (Ray-free, numpy only).

``neighbor_agreement`` is the search objective of methods whose own training loss is not
comparable across hyperparameters (TEMI's loss depends on beta and k, IIC's on lambda and the
overclustering factor, SPICE's pseudo-label CE on its thresholds). It only needs predictions
on the fit split and the mined kNN table, never a label, and it reads the same raw top-5
neighbours for every configuration, so two trials are scored on the same footing.
"""

from __future__ import annotations

import math

import numpy as np

WORST_AGREEMENT = -1.0  # degenerate partitions (an empty cluster or collapsed sizes)


def neighbor_agreement(
    pred: np.ndarray,
    neighbors: np.ndarray,
    num_clusters: int,
    k: int = 5,
    anchors: int = 10_000,
    seed: int = 0,
) -> float:
    """Higher is better: P(same cluster | raw top-k neighbour) - P(same cluster | random pair).

    Args:
        pred: (N,) int cluster ids of the fit split.
        neighbors: (N, kmax) mined neighbour ids (self excluded), kmax >= k.
        num_clusters: C, the number of clusters asked for.
        k: raw neighbours per anchor (5, as UNIC's and SCAN's selection scores, spec 10).
        anchors: fixed anchors drawn with ``seed`` (all rows when N is smaller).

    A partition that leaves a cluster empty or whose size entropy is below 0.9 log C scores
    ``WORST_AGREEMENT`` (the same degeneracy rule as UNIC's selection score): one giant
    cluster would otherwise agree with every neighbour.
    """
    pred = np.asarray(pred)
    n = len(pred)
    if neighbors.shape[0] != n or neighbors.shape[1] < k:
        raise ValueError(f"need (N={n}, >= {k}) neighbours, got {neighbors.shape}")
    sizes = np.bincount(pred, minlength=num_clusters) / n
    used = sizes[sizes > 0]
    if (sizes == 0).any() or -(used * np.log(used)).sum() < 0.9 * math.log(num_clusters):
        return WORST_AGREEMENT
    rng = np.random.default_rng(seed)
    rows = rng.choice(n, min(n, anchors), replace=False)
    partner = rng.integers(0, n, len(rows))
    same_nbr = (pred[neighbors[rows, :k]] == pred[rows, None]).mean()
    same_random = (pred[partner] == pred[rows]).mean()
    return float(same_nbr - same_random)
