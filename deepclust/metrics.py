"""Clustering metrics: Hungarian-matched accuracy, NMI, ARI.

ACC follows the standard clustering protocol (e.g. SCAN, Van Gansbeke et al. 2020): the
one-to-one cluster->class assignment maximising agreement (Hungarian algorithm,
``scipy.optimize.linear_sum_assignment``), then plain accuracy. With more clusters than
classes the surplus clusters match nothing and count as errors.
"""

from __future__ import annotations

import numpy as np


def contingency(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """(n_pred, n_true) counts of predicted cluster vs true class."""
    y_true, y_pred = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"shape mismatch: {y_true.shape} vs {y_pred.shape}")
    n_true = int(y_true.max()) + 1 if y_true.size else 0
    n_pred = int(y_pred.max()) + 1 if y_pred.size else 0
    table = np.zeros((n_pred, n_true), dtype=np.int64)
    np.add.at(table, (y_pred, y_true), 1)
    return table


def hungarian_acc(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Accuracy under the best one-to-one mapping of clusters to classes."""
    if len(y_true) == 0:
        raise ValueError("hungarian_acc of an empty set")
    table = contingency(y_true, y_pred)
    rows, cols = hungarian_matching(table)
    return float(table[rows, cols].sum() / len(y_true))


def balanced_acc(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean per-class recall under the same one-to-one matching as :func:`hungarian_acc` (the
    matching that maximises the number of correct rows): every class weighs the same, so a
    partition that serves only the large classes of an imbalanced set scores low. A class
    whose matched cluster is missing (more classes than clusters) has recall 0."""
    if len(y_true) == 0:
        raise ValueError("balanced_acc of an empty set")
    table = contingency(y_true, y_pred)
    rows, cols = hungarian_matching(table)
    sizes = table.sum(0)  # rows per class
    present = sizes > 0
    recall = np.zeros(table.shape[1])
    recall[cols] = table[rows, cols] / np.maximum(sizes[cols], 1)
    return float(recall[present].mean())


def hungarian_matching(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The Hungarian matching that maximises ``table``'s matched total: (rows, cols)."""
    # imported here, as scikit-learn below: every Tune trial process imports this module
    from scipy.optimize import linear_sum_assignment

    return linear_sum_assignment(table, maximize=True)


def clustering_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """``acc``, ``bacc`` (balanced), ``nmi``, ``ari`` of a clustering against ground truth."""
    # imported here: scikit-learn costs ~0.9 s, and every Tune trial process imports this
    # module, most for the accuracy alone
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    return {
        "acc": hungarian_acc(y_true, y_pred),
        "bacc": balanced_acc(y_true, y_pred),
        "nmi": float(normalized_mutual_info_score(y_true, y_pred)),
        "ari": float(adjusted_rand_score(y_true, y_pred)),
    }


DEGENERATE_SHARE = 0.9  # a partition whose largest cluster holds more of the rows than this


def is_degenerate(pred: np.ndarray) -> bool:
    """Label-free: True when one cluster holds more than 90% of the rows (a collapsed
    partition, e.g. every row in one cluster). Such a run is kept, marked in the leaderboard
    and makes the sweep exit non-zero."""
    pred = np.asarray(pred)
    if not len(pred):
        return True
    return bool(np.bincount(pred).max() > DEGENERATE_SHARE * len(pred))
