import numpy as np
import pytest

from deepclust.errors import UserError
from deepclust.knn import knn_search, knn_self, merge_topk, neighbor_precision

BACKENDS = ["torch", "faiss"]


def brute_force(x: np.ndarray, k: int) -> np.ndarray:
    """Reference: float64 cosine similarities with self masked out, (N, N)."""
    x = x.astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    return sims


def assert_matches_brute_force(x, k, ids, sims, tol=1e-5):
    ref = brute_force(x, k)
    n = len(x)
    assert ids.shape == sims.shape == (n, k)
    ref_sorted = -np.sort(-ref, axis=1)[:, :k]
    for i in range(n):
        assert len(set(ids[i])) == k, "duplicate neighbours"
        assert i not in ids[i], "self not excluded"
        np.testing.assert_allclose(sims[i], ref[i, ids[i]], atol=tol)  # sims are true sims
        np.testing.assert_allclose(sims[i], ref_sorted[i], atol=tol)  # and the top-k values
        # every candidate clearly above the k-th similarity must be present
        clear = np.flatnonzero(ref[i] > ref_sorted[i, -1] + tol)
        assert set(clear) <= set(ids[i])
    assert np.all(np.diff(sims, axis=1) <= tol), "not sorted by similarity"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("tile", [10**9, 4 * 200 * 7])  # one block, and ~7-row blocks
def test_blockwise_equals_brute_force(backend, tile):
    x = np.random.default_rng(0).normal(size=(200, 16)).astype(np.float32)
    ids, sims = knn_self(x, 10, backend=backend, max_tile_bytes=tile)
    assert_matches_brute_force(x, 10, ids, sims)
    # no ties in continuous random data: the neighbour sets are exactly the reference's
    ref_ids = np.argsort(-brute_force(x, 10), axis=1, kind="stable")[:, :10]
    assert np.array_equal(ids, ref_ids)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_from_duplicate_points(backend):
    base = np.random.default_rng(1).normal(size=(20, 8)).astype(np.float32)
    x = np.repeat(base, 4, axis=0)  # every point has 3 exact duplicates (sim 1.0 ties)
    ids, sims = knn_self(x, 5, backend=backend, max_tile_bytes=4 * 80 * 3)
    assert_matches_brute_force(x, 5, ids, sims)
    for i in range(len(x)):  # the three duplicates always come first
        assert set(ids[i, :3]) == {j for j in range(4 * (i // 4), 4 * (i // 4) + 4)} - {i}


@pytest.mark.parametrize("backend", BACKENDS)
def test_k_close_to_n(backend):
    x = np.random.default_rng(2).normal(size=(30, 4)).astype(np.float32)
    ids, sims = knn_self(x, 29, backend=backend, max_tile_bytes=4 * 30 * 4)
    assert_matches_brute_force(x, 29, ids, sims)
    for i in range(30):
        assert set(ids[i]) == set(range(30)) - {i}


@pytest.mark.parametrize("k", [30, 31, 0])
def test_k_out_of_range_is_a_user_error(k):
    x = np.ones((30, 4), np.float32)
    with pytest.raises(UserError, match="out of range"):
        knn_self(x, k)


def test_unknown_backend():
    with pytest.raises(UserError, match="valid: auto, faiss, torch"):
        knn_self(np.eye(5, dtype=np.float32), 2, backend="annoy")


def test_query_database_search_without_self_exclusion():
    rng = np.random.default_rng(3)
    db, q = rng.normal(size=(50, 8)), rng.normal(size=(7, 8))
    ids, _ = knn_search(q, db, 50, backend="torch")
    assert all(set(r) == set(range(50)) for r in ids)


def test_merge_of_database_shards_equals_full_search():
    x = np.random.default_rng(4).normal(size=(120, 8)).astype(np.float32)
    q = x[:20]
    full_ids, full_sims = knn_search(q, x, 6, backend="torch")
    parts = []
    for s, e in [(0, 50), (50, 120)]:
        ids, sims = knn_search(q, x[s:e], 6, backend="torch")
        parts.append((ids + s, sims))
    ids, sims = merge_topk(parts, 6)
    assert np.array_equal(ids, full_ids)
    np.testing.assert_allclose(sims, full_sims, atol=1e-6)


def test_neighbor_precision():
    labels = np.array([0, 0, 1, 1])
    nbr = np.array([[1, 2], [0, 3], [3, 0], [2, 1]])
    assert neighbor_precision(labels, nbr, ks=(1, 2, 5)) == {
        "nbr_precision@1": 1.0,
        "nbr_precision@2": 0.5,
    }
