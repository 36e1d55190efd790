import numpy as np
import pytest

from deepclust.metrics import clustering_metrics, contingency, hungarian_acc


def test_permuted_labels_score_perfectly():
    y = np.repeat(np.arange(5), 20)
    perm = np.array([3, 0, 4, 1, 2])
    m = clustering_metrics(y, perm[y])
    assert m == pytest.approx({"acc": 1.0, "bacc": 1.0, "nmi": 1.0, "ari": 1.0})


def test_hungarian_matches_a_brute_force_over_permutations():
    from itertools import permutations

    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 4, 60), rng.integers(0, 4, 60)
    best = max(np.mean(np.array(perm)[p] == y) for perm in permutations(range(4)))
    assert hungarian_acc(y, p) == pytest.approx(best)


def test_surplus_clusters_count_as_errors():
    y = np.array([0, 0, 1, 1])
    p = np.array([0, 1, 2, 3])  # 4 clusters for 2 classes: at most 2 points matched
    assert hungarian_acc(y, p) == 0.5


def test_contingency_shape_and_counts():
    t = contingency(np.array([0, 1, 1]), np.array([2, 2, 0]))
    assert t.shape == (3, 2) and t.sum() == 3 and t[2, 0] == 1 and t[2, 1] == 1


def test_mismatched_shapes_raise():
    with pytest.raises(ValueError, match="shape mismatch"):
        hungarian_acc(np.zeros(3, int), np.zeros(4, int))


def test_a_partition_is_degenerate_when_one_cluster_holds_over_90_percent():
    from deepclust.metrics import is_degenerate

    assert is_degenerate(np.zeros(10, np.int64))
    assert is_degenerate(np.array([0] * 91 + [1] * 9))
    assert not is_degenerate(np.array([0] * 90 + [1] * 10))
    assert not is_degenerate(np.arange(10) % 3)


def test_balanced_acc_weighs_every_class_the_same():
    from deepclust.metrics import balanced_acc

    # 90 rows of class 0 and 10 of class 1, all in one cluster: ACC 0.9, balanced 0.5
    y = np.array([0] * 90 + [1] * 10)
    p = np.zeros(100, dtype=np.int64)
    assert hungarian_acc(y, p) == pytest.approx(0.9)
    assert balanced_acc(y, p) == pytest.approx(0.5)
    # the small class found, 20 of the large one mistaken for it: recall 70/90 and 10/10
    p = np.array([0] * 70 + [1] * 20 + [1] * 10)
    assert balanced_acc(y, p) == pytest.approx((70 / 90 + 1.0) / 2)
    assert balanced_acc(y, 5 - p) == balanced_acc(y, p)  # cluster ids are arbitrary
    # balanced data: balanced ACC equals ACC
    yb, pb = np.arange(40) % 4, (np.arange(40) + (np.arange(40) > 30)) % 4
    assert balanced_acc(yb, pb) == pytest.approx(hungarian_acc(yb, pb))
    assert set(clustering_metrics(y, p)) == {"acc", "bacc", "nmi", "ari"}
