"""Label-free model selection from hard cluster assignments (Ray-free, numpy only).

``neighbor_agreement`` is the search objective of methods whose own training loss is not
comparable across hyperparameters (TEMI's loss depends on beta and k, IIC's on lambda and the
overclustering factor, SPICE's pseudo-label CE on its thresholds). It only needs predictions
on the fit split and the mined kNN table, never a label, and it reads the same raw top-5
neighbours for every configuration, so two trials are scored on the same footing.
"""

from __future__ import annotations

import numpy as np


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
        k: raw neighbours per anchor (5, as UNIC's and SCAN's selection scores, docs/methods.md,
            UNIC: model selection).
        anchors: fixed anchors drawn with ``seed`` (all rows when N is smaller).

    The random-pair term is the agreement the partition's own cluster sizes give by chance
    (sum_c p_c^2, p_c the cluster's share of the rows), so collapse is penalised smoothly: one giant cluster scores 0, and a
    partition into m equal, perfectly neighbour-consistent clusters scores 1 - 1/m, below the
    same with all C clusters used. There is no cut-off for small or empty clusters: a hard
    rule made every partition below it tie at one value, so a search could not tell a good
    partition that leaves a cluster empty from a worse one that fills all of them
    (bench/objective_check.py measures both variants on development data).
    """
    pred = np.asarray(pred)
    n = len(pred)
    if neighbors.shape[0] != n or neighbors.shape[1] < k:
        raise ValueError(f"need (N={n}, >= {k}) neighbours, got {neighbors.shape}")
    rows = np.random.default_rng(seed).choice(n, min(n, anchors), replace=False)
    same_nbr = (pred[neighbors[rows, :k]] == pred[rows, None]).mean()
    sizes = np.bincount(pred, minlength=num_clusters) / n
    same_random = float(sizes @ sizes)  # P(two rows drawn at random share a cluster)
    return float(same_nbr - same_random)
