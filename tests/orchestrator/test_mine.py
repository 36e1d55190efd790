import numpy as np
import pytest

from deepclust.artifacts import ArtifactStore, Embeddings
from deepclust.errors import UserError
from deepclust.knn import knn_self, l2_normalize
from orchestrator.mine import ensure_neighbors, sharded_knn, streamed_knn

pytestmark = pytest.mark.ray


def _embeddings(n=90, seed=0):
    rng = np.random.default_rng(seed)
    feats = l2_normalize(rng.normal(size=(n, 12)))
    return Embeddings(feats, np.arange(n) % 3, {"key": f"emb{seed}"})


@pytest.mark.parametrize("shards", [1, 3])
def test_sharded_mining_equals_single_process(ray_cluster, shards):
    emb = _embeddings()
    ids, sims = sharded_knn(emb.features, 7, shards, "auto", ray_cluster.resources())
    ref_ids, ref_sims = knn_self(emb.features, 7)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(sims, ref_sims, atol=1e-6)


def test_neighbors_are_cached_with_precision_in_meta(ray_cluster, tmp_path):
    store = ArtifactStore(tmp_path)
    emb = _embeddings(seed=1)
    nbr, meta = ensure_neighbors(emb, 5, store, ray_cluster, shards=2)
    assert nbr.shape == (90, 5) and 0 <= meta["nbr_precision@5"] <= 1
    again, meta2 = ensure_neighbors(emb, 5, store, ray_cluster)
    np.testing.assert_array_equal(nbr, again)
    assert meta2["created"] == meta["created"]


def test_k_not_below_n_is_a_user_error(ray_cluster, tmp_path):
    with pytest.raises(UserError, match="out of range"):
        ensure_neighbors(_embeddings(n=10), 10, ArtifactStore(tmp_path), ray_cluster)


@pytest.mark.parametrize("shards", [1, 3])
def test_streamed_mining_equals_in_memory_mining(ray_cluster, tmp_path, shards):
    """The file-streaming path (what auto uses on GPU clusters and for large databases) gives
    the in-memory table, and leaves only the neighbour table in the artifact."""
    emb = _embeddings(n=120, seed=2)
    ids, sims, stats = streamed_knn(
        emb.features, 7, shards, ray_cluster.resources(), tmp_path / "work"
    )
    ref_ids, ref_sims = knn_self(emb.features, 7)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(sims, ref_sims, atol=1e-6)
    assert sum(s["rows"] for s in stats) == 120 and not (tmp_path / "work").exists()
    store = ArtifactStore(tmp_path / "store")
    nbr, meta = ensure_neighbors(emb, 7, store, ray_cluster, backend="stream", shards=shards)
    np.testing.assert_array_equal(nbr, ref_ids)
    assert meta["backend"] == "stream" and meta["fallback_rows"] == 0
    files = sorted(p.name for p in store.neighbors_dir(emb.meta["key"], 7).iterdir())
    assert files == ["_meta.json", "neighbors.parquet"], files
