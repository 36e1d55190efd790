import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from deepclust.artifacts import SCHEMA_VERSION, ArtifactStore, fixed_list_to_numpy


def _write_embeddings(store: ArtifactStore, key: str = "k1"):
    d = store.embeddings_dir("parquet:/x/y.parquet", "all", "b")
    tmp = store.begin(d)
    feats = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    order = np.array([3, 0, 5, 1, 4, 2])  # rows arrive out of order (Ray Data does that)
    table = pa.table(
        {
            "idx": order,
            "label": order % 2,
            "embedding": pa.FixedSizeListArray.from_arrays(feats[order].ravel(), 3),
        }
    )
    pq.write_table(table, tmp / "part-0.parquet")
    store.commit(tmp, d, key, rows=6)
    return d, feats


def test_commit_then_read_sorted_by_idx(tmp_path):
    store = ArtifactStore(tmp_path)
    d, feats = _write_embeddings(store)
    assert store.check(d, "k1") is None
    emb = store.read_embeddings(d)
    np.testing.assert_array_equal(emb.features, feats)
    np.testing.assert_array_equal(emb.labels, np.arange(6) % 2)
    assert emb.meta["schema_version"] == SCHEMA_VERSION and not list(d.parent.glob(".*tmp*"))


def test_check_detects_every_kind_of_bad_cache(tmp_path):
    store = ArtifactStore(tmp_path)
    d, _ = _write_embeddings(store)
    assert store.check(d, "other") == "inputs changed (key mismatch)"
    part = d / "part-0.parquet"
    part.write_bytes(part.read_bytes()[:-10])  # truncated
    assert "truncated" in store.check(d, "k1")
    (d / "_meta.json").write_text("{not json")
    assert store.check(d, "k1") == "missing or unreadable meta"
    meta = {"schema_version": SCHEMA_VERSION - 1, "key": "k1", "files": {}}
    (d / "_meta.json").write_text(json.dumps(meta))
    assert "schema" in store.check(d, "k1")
    assert store.check(tmp_path / "nothing", "k1") == "no meta"


def test_recommit_replaces_a_stale_artifact(tmp_path):
    store = ArtifactStore(tmp_path)
    d, _ = _write_embeddings(store, "old")
    d2, _ = _write_embeddings(store, "new")
    assert d == d2 and store.check(d, "new") is None and store.check(d, "old") is not None


def test_neighbors_round_trip(tmp_path):
    store = ArtifactStore(tmp_path)
    d = store.neighbors_dir("abc", 2)
    tmp = store.begin(d)
    nbr = np.array([[1, 2], [0, 2], [1, 0]])
    sim = np.array([[0.9, 0.1], [0.9, 0.5], [0.5, 0.1]], np.float32)
    store.write_neighbors(tmp, nbr, sim)
    store.commit(tmp, d, "key", rows=3)
    got_nbr, got_sim = store.read_neighbors(d)
    np.testing.assert_array_equal(got_nbr, nbr)
    np.testing.assert_array_equal(got_sim, sim)


def test_run_results_round_trip(tmp_path):
    store = ArtifactStore(tmp_path)
    d = store.run_dir("digits", "b", "kmeans", 0)
    store.write_run(d, np.array([1, 0, 1]), {"acc": 0.5})
    assert store.read_run(d) == {"acc": 0.5}
    assert pq.read_table(d / "predictions.parquet").column("cluster").to_pylist() == [1, 0, 1]


def test_fixed_list_to_numpy_handles_plain_lists():
    col = pa.chunked_array([pa.array([[1.0, 2.0], [3.0, 4.0]])])
    np.testing.assert_array_equal(fixed_list_to_numpy(col), [[1, 2], [3, 4]])
