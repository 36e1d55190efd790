import numpy as np
import pytest

from deepclust.errors import UserError
from deepclust.knn import knn_self
from deepclust.num_clusters import estimate_k, estimate_k_gcd, k_range


def _blobs(k: int, per: int = 60, dim: int = 32, spread: float = 0.15, seed: int = 0):
    """k well separated groups of unit vectors (and their labels)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((k, dim))
    y = np.repeat(np.arange(k), per)
    x = centers[y] + spread * rng.standard_normal((k * per, dim)) * np.sqrt(dim) / 4
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), y


@pytest.mark.parametrize("k", [3, 7])
def test_the_eigengap_finds_well_separated_groups(k):
    x, _ = _blobs(k)
    nbr = knn_self(x, 20)[0]
    est = estimate_k(x, nbr, hi=12)
    assert est.k == k, est.scores
    assert set(est.scores) == set(range(2, 13)) and est.criterion == "eigengap"
    assert estimate_k(x, nbr, hi=12) == est  # deterministic


def test_the_gcd_estimator_reads_only_the_labelled_rows():
    x, y = _blobs(6)
    labelled = np.flatnonzero((y < 5) & (np.arange(len(y)) % 2 == 0))  # 5 Old classes, half
    est = estimate_k_gcd(x, labelled, y[labelled], hi=20)
    assert est.k == 6, est.scores
    assert min(est.scores) >= 5  # never below the Old class count
    # the unlabelled rows' labels play no part: shuffle them, same estimate
    y2 = y.copy()
    others = np.setdiff1d(np.arange(len(y)), labelled)
    y2[others] = np.random.default_rng(1).permutation(y2[others])
    assert estimate_k_gcd(x, labelled, y2[labelled], hi=20) == est


def test_too_few_images_for_auto_is_a_one_line_error():
    assert k_range(100) == (2, 20)
    assert k_range(10_000) == (2, 50)
    with pytest.raises(UserError, match="give --num-clusters N"):
        k_range(1)
    with pytest.raises(UserError, match="give --num-clusters N"):
        k_range(7)
