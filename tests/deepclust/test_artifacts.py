import json
from pathlib import Path

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
    raw = part.read_bytes()
    flipped = bytearray(raw)
    flipped[len(raw) // 2 : len(raw) // 2 + 8] = bytes(8)  # same size, other content
    part.write_bytes(bytes(flipped))
    assert store.check(d, "k1") == "file part-0.parquet altered (checksum mismatch)"
    part.write_bytes(raw[:-10])  # truncated
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
    assert store.read_run(d) == {"acc": 0.5} == store.read_run(d, rows=3)
    assert pq.read_table(d / "predictions.parquet").column("cluster").to_pylist() == [1, 0, 1]


def test_an_incomplete_run_is_not_a_cached_run(tmp_path):
    """A run folder counts only with a JSON-object metrics.json and every prediction row."""
    store = ArtifactStore(tmp_path)
    d = store.run_dir("digits", "b", "kmeans", 0)
    store.write_run(d, np.array([1, 0, 1]), {"acc": 0.5})
    assert store.read_run(d, rows=4) is None  # another eval split's length
    (d / "metrics.json").write_text("[1, 2]")
    assert store.read_run(d) is None
    (d / "metrics.json").write_text('{"acc": 0.5')
    assert store.read_run(d) is None
    store.write_run(d, np.array([1, 0, 1]), {"acc": 0.5})
    (d / "predictions.parquet").unlink()
    assert store.read_run(d) is None


def _writer(root: str, worker: int, rounds: int, queue) -> None:
    """One process writing every run folder ``rounds`` times: half the folders get the same
    result from every writer (seed runs of one config), the other half a writer's own."""
    store = ArtifactStore(Path(root))
    errors = 0
    for r in range(rounds):
        for seed in range(6):
            d = store.run_dir("digits", "b", "kmeans-abc", seed)
            key = f"same-{seed}" if seed % 2 else f"w{worker}-r{r}-{seed}"
            try:
                store.write_run(d, np.arange(50) % 3, {"key": key, "seed": seed, "acc": 0.5})
            except OSError:
                errors += 1
    queue.put(errors)


def test_concurrent_writers_never_fail_and_the_leaderboard_counts_each_run_once(tmp_path):
    """Four processes writing the same six run folders 25 times each (600 writes): no write
    fails, every folder ends complete, no temp folder is left, and the leaderboard reads
    exactly six runs."""
    import multiprocessing as mp

    from orchestrator.leaderboard import collect_runs

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, 25, queue)) for w in range(4)]
    for p in procs:
        p.start()
    errors = sum(queue.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert errors == 0
    store = ArtifactStore(tmp_path)
    runs = collect_runs(store)
    assert sorted(r["seed"] for r in runs) == list(range(6))
    for seed in range(6):
        assert store.read_run(store.run_dir("digits", "b", "kmeans-abc", seed), rows=50)
    assert not [p for p in tmp_path.rglob(".*") if p.is_dir()]


def test_fixed_list_to_numpy_handles_plain_lists():
    col = pa.chunked_array([pa.array([[1.0, 2.0], [3.0, 4.0]])])
    np.testing.assert_array_equal(fixed_list_to_numpy(col), [[1, 2], [3, 4]])


def test_a_full_disk_leaves_no_temp_folder(tmp_path, monkeypatch):
    import errno

    import pytest

    import deepclust.artifacts as artifacts

    def full(table, where, **kw):
        raise OSError(errno.ENOSPC, "No space left on device", str(where))

    monkeypatch.setattr(artifacts.pq, "write_table", full)
    store = ArtifactStore(tmp_path)
    d = store.run_dir("digits", "b", "kmeans", 0)
    with pytest.raises(OSError, match="No space left"):
        store.write_run(d, np.array([1, 0]), {"acc": 0.5})
    assert not d.exists() and not list(d.parent.iterdir())


def test_an_unwritable_output_is_a_one_line_error(tmp_path):
    import pytest

    from deepclust.errors import UserError

    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="cannot write to --output .*file/out: Not a directory"):
        ArtifactStore.check_writable(tmp_path / "file" / "out")
    ArtifactStore.check_writable(tmp_path / "new")  # created, probe removed
    assert list((tmp_path / "new").iterdir()) == []
