"""The Ray Data embedding stage on tiny on-disk datasets (one local Ray per session)."""

import shutil

import numpy as np
import pytest

from deepclust.artifacts import ArtifactStore
from deepclust.datasets import resolve_dataset
from deepclust.embedder import Embedder
from deepclust.errors import UserError
from orchestrator import embed as embed_mod
from orchestrator.embed import EmbedOptions, ensure_embeddings

pytestmark = pytest.mark.ray
OPTS = EmbedOptions("efficientnet_lite0", batch_size=8)


def _load(path):
    return resolve_dataset(f"parquet:{path}").load("all", path.parent, False)


@pytest.fixture(scope="module")
def embedded(ray_cluster, tmp_path_factory):
    """One Ray Data run shared by the tests below (each run costs ~30 s on 2 cores)."""
    from tests.conftest import make_images, write_image_parquet

    root = tmp_path_factory.mktemp("embed")
    images, labels = make_images(24)
    path = write_image_parquet(root / "tiny.parquet", images, labels)
    store = ArtifactStore(root / "out")
    ds = _load(path)
    return ds, store, ensure_embeddings(ds, OPTS, store, ray_cluster)


def test_embeds_every_row_in_idx_order_and_matches_the_standalone_embedder(embedded):
    ds, _, emb = embedded
    assert emb.features.shape == (24, 1280)
    np.testing.assert_array_equal(emb.labels, ds.labels)
    # same numbers as running the decode + embed classes by hand, without Ray
    from deepclust.preprocess import decode_batch

    embedder = Embedder("efficientnet_lite0")
    batch = decode_batch(next(ds.batches(24)), embedder.preprocess)
    np.testing.assert_allclose(emb.features, embedder(batch)["embedding"], atol=1e-4)
    # a linear probe is not the point; the two classes should still separate in kNN space
    sims = emb.features @ emb.features.T
    np.fill_diagonal(sims, -1)
    assert (ds.labels[sims.argmax(1)] == ds.labels).mean() > 0.9


def test_second_run_reuses_the_cache(ray_cluster, embedded, monkeypatch):
    ds, store, first = embedded

    def boom(*args, **kwargs):
        raise AssertionError("pipeline ran although the cache was valid")

    monkeypatch.setattr(embed_mod, "_run_pipeline", boom)
    second = ensure_embeddings(ds, OPTS, store, ray_cluster)
    np.testing.assert_array_equal(first.features, second.features)
    assert first.meta["created"] == second.meta["created"]


def test_truncated_cache_file_is_rebuilt(ray_cluster, embedded, tmp_path):
    ds, shared_store, first = embedded
    shutil.copytree(shared_store.root, tmp_path / "out")  # the shared cache stays intact
    store = ArtifactStore(tmp_path / "out")
    directory = store.embeddings_dir(ds.name, ds.split, OPTS.backbone)
    part = next(directory.glob("*.parquet"))
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    assert store.check(directory, first.meta["key"]) is not None  # the damage is seen
    rebuilt = ensure_embeddings(ds, OPTS, store, ray_cluster)
    np.testing.assert_allclose(rebuilt.features, first.features, atol=1e-6)
    assert store.check(directory, rebuilt.meta["key"]) is None


def test_unreadable_images_are_reported_by_index_and_nothing_is_cached(
    ray_cluster, corrupt_parquet, tmp_path
):
    store = ArtifactStore(tmp_path / "out")
    ds = _load(corrupt_parquet)
    with pytest.raises(UserError) as err:
        ensure_embeddings(ds, OPTS, store, ray_cluster)
    message = str(err.value)
    assert message.startswith("2 unreadable image(s)") and "idx 5" in message
    assert "idx 7" in message and "corrupt.parquet row 5" in message and "\n" not in message
    directory = store.embeddings_dir(ds.name, ds.split, OPTS.backbone)
    assert not directory.exists() and not list(directory.parent.glob(".*tmp*"))


def test_parquet_shards_are_read_on_the_workers_and_embed_as_in_memory(
    ray_cluster, tmp_path, monkeypatch
):
    """Two shards in row groups of 5, cut into read parts of 4 rows: the Ray Data read gives
    every idx once, the file's labels, and the same embeddings row for row as the same bytes
    held in memory. The driver never reads a part (its copy of the reader is broken here;
    the workers import their own)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from deepclust import datasets
    from deepclust.datasets import ImageSet
    from tests.conftest import make_images

    monkeypatch.setattr(datasets, "PARQUET_PART_ROWS", 4)
    (tmp_path / "shards").mkdir()
    shards = [make_images(10, seed=s) for s in (0, 1)]
    for s, (images, labels) in enumerate(shards):
        table = pa.table({"image": pa.array(images, pa.binary()), "label": labels})
        pq.write_table(table, tmp_path / "shards" / f"{s}.parquet", row_group_size=5)
    ds = resolve_dataset(f"parquet:{tmp_path / 'shards'}").load("all", tmp_path, False)
    monkeypatch.setattr(embed_mod, "read_parquet_part", None)
    store = ArtifactStore(tmp_path / "out")
    emb = ensure_embeddings(ds, OPTS, store, ray_cluster)
    images = shards[0][0] + shards[1][0]
    in_memory = ImageSet(
        name="in-memory",
        split="all",
        labels=ds.labels,
        num_classes=2,
        class_names=("0", "1"),
        fingerprint="same-bytes",
        encoded=pa.array(images, pa.binary()),
    )
    reference = ensure_embeddings(in_memory, OPTS, store, ray_cluster)
    np.testing.assert_array_equal(emb.labels, np.r_[np.arange(10) % 2, np.arange(10) % 2])
    np.testing.assert_array_equal(emb.labels, reference.labels)
    np.testing.assert_allclose(emb.features, reference.features, atol=1e-6)
