import numpy as np

from deepclust.knn import knn_self
from deepclust.selection import WORST_AGREEMENT, neighbor_agreement


def _blobs(seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(4), 50)
    x = rng.normal(size=(200, 8)).astype(np.float32) + 6 * np.eye(8, dtype=np.float32)[y]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, y, knn_self(x, 10)[0]


def test_the_true_partition_scores_above_a_shuffled_one():
    _, y, nbr = _blobs()
    shuffled = np.random.default_rng(1).permutation(y)
    assert neighbor_agreement(y, nbr, 4) > 0.6
    assert abs(neighbor_agreement(shuffled, nbr, 4)) < 0.1


def test_relabelling_clusters_does_not_change_the_score():
    _, y, nbr = _blobs()
    assert neighbor_agreement((y + 1) % 4, nbr, 4) == neighbor_agreement(y, nbr, 4)


def test_degenerate_partitions_score_worst():
    _, y, nbr = _blobs()
    assert neighbor_agreement(np.zeros_like(y), nbr, 4) == WORST_AGREEMENT  # one cluster
    assert neighbor_agreement(np.minimum(y, 2), nbr, 4) == WORST_AGREEMENT  # cluster 3 empty
