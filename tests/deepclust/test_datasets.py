import os
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image

from deepclust.datasets import (
    DATASETS,
    DatasetUnavailable,
    load_parquet,
    resolve_dataset,
)
from deepclust.errors import UserError

STANDARD = [
    "digits",
    "mnist",
    "cifar10",
    "cifar100",
    "cifar100_20",
    "stl10",
    "imagenet50",
    "imagenet100",
    "imagenet200",
    "cub",
    "scars",
    "aircraft",
]


def test_registry_holds_every_benchmark_protocol():
    assert DATASETS.names() == STANDARD


@pytest.mark.parametrize("name", STANDARD)
def test_every_spec_declares_its_fit_and_eval_splits(name):
    spec = DATASETS.get(name)
    assert spec.fit_split in spec.splits and spec.eval_split in spec.splits


@pytest.mark.parametrize("name", [n for n in STANDARD if n != "digits"])
def test_missing_data_is_a_one_line_error_naming_the_path(name, tmp_path):
    spec = DATASETS.get(name)
    with pytest.raises(DatasetUnavailable) as err:
        spec.load(spec.fit_split, tmp_path, False)
    message = str(err.value)
    assert str(tmp_path) in message and "\n" not in message


def test_digits_is_embedded_and_offline():
    spec = DATASETS.get("digits")
    ds = spec.load("all", Path("/nonexistent"), False)
    assert len(ds) == 1797 and ds.num_classes == 10 and ds.pixels.dtype == np.uint8
    assert ds.pixels.max() == 255
    assert ds.fingerprint == spec.load("all", Path("/x"), False).fingerprint


def test_unknown_dataset_and_split():
    with pytest.raises(UserError, match="did you mean 'cifar10'.*parquet:<path>"):
        resolve_dataset("cifar-10")
    with pytest.raises(UserError, match="unknown split"):
        DATASETS.get("digits").load("train", Path("."), False)


def test_parquet_dataset(tiny_parquet):
    spec = resolve_dataset(f"parquet:{tiny_parquet}")
    assert (spec.fit_split, spec.eval_split) == ("all", "all")
    ds = spec.load("all", Path("."), False)
    assert len(ds) == 24 and ds.class_names == ("warm", "cool") and ds.source_column == "encoded"
    batch = next(ds.batches(10))
    assert batch["encoded"].shape == (10,) and isinstance(batch["encoded"][0], bytes)
    assert ds.describe(3).endswith("row 3")
    head = ds.subset(10)  # a smoke-run subset reloads by its loader split, then re-slices
    assert (len(head), head.split, head.loaded_split) == (10, "all[:10]", "all")
    assert list(spec.load(head.loaded_split, Path("."), False).subset(10).labels) == list(
        head.labels
    )


def test_parquet_fingerprint_follows_the_bytes_not_the_path_or_mtime(tiny_parquet, tmp_path):
    """A copied or re-mounted dataset keeps its cached embeddings; edited bytes do not."""
    copy = tmp_path / "elsewhere" / "copy.parquet"
    copy.parent.mkdir()
    copy.write_bytes(tiny_parquet.read_bytes())
    os.utime(copy, ns=(1, 1))
    assert load_parquet(copy).fingerprint == load_parquet(tiny_parquet).fingerprint
    table = pq.read_table(copy)
    i = table.column_names.index("label")
    pq.write_table(table.set_column(i, "label", pc.subtract(1, table.column("label"))), copy)
    assert load_parquet(copy).fingerprint != load_parquet(tiny_parquet).fingerprint


def test_parquet_with_train_test_files_uses_both_splits(tiny_parquet):
    folder = tiny_parquet.parent
    tiny_parquet.rename(folder / "train.parquet")
    (folder / "test.parquet").write_bytes((folder / "train.parquet").read_bytes())
    spec = resolve_dataset(f"parquet:{folder}")
    assert (spec.fit_split, spec.eval_split) == ("train", "test")


def test_parquet_without_an_image_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"x": [1, 2], "label": [0, 1]}), tmp_path / "bad.parquet")
    with pytest.raises(UserError, match="binary image column"):
        load_parquet(tmp_path / "bad.parquet")


def test_missing_parquet_path():
    with pytest.raises(DatasetUnavailable, match="does not exist"):
        resolve_dataset("parquet:/no/such/file.parquet")


def test_folder_dataset(tmp_path):
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (8, 8)).save(tmp_path / split / cls / f"{i}.png")
    spec = resolve_dataset(f"folder:{tmp_path}")
    assert (spec.fit_split, spec.eval_split) == ("train", "val")
    ds = spec.load("val", Path("."), False)
    assert len(ds) == 4 and ds.class_names == ("cat", "dog") and list(ds.labels) == [0, 0, 1, 1]


def test_cifar10_parquet_layout_from_shared_data(cifar10_dir):
    ds = DATASETS.get("cifar10").load("test", cifar10_dir.parent, False)
    assert len(ds) == 10_000 and ds.num_classes == 10 and ds.class_names[0] == "airplane"
    assert np.bincount(ds.labels).tolist() == [1000] * 10
