import numpy as np

from deepclust.knn import knn_self
from deepclust.selection import neighbor_agreement


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


def test_collapse_is_penalised_smoothly():
    _, y, nbr = _blobs()
    assert neighbor_agreement(np.zeros_like(y), nbr, 4) == 0.0  # one cluster: chance level
    merged = neighbor_agreement(np.minimum(y, 2), nbr, 4)  # classes 2 and 3 merged
    assert 0.0 < merged < neighbor_agreement(y, nbr, 4)


def test_the_chance_term_is_the_partitions_own_size_distribution():
    _, y, nbr = _blobs()
    pred = np.minimum(y, 2)  # sizes 50, 50, 100 of 200
    same_nbr = (pred[nbr[:, :5]] == pred[:, None]).mean()
    assert neighbor_agreement(pred, nbr, 4) == same_nbr - (0.25**2 * 2 + 0.5**2)
