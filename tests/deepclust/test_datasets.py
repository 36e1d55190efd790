import os
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image

from deepclust.datasets import (
    DATASETS,
    UNLABELLED,
    DatasetUnavailable,
    load_parquet,
    resolve_dataset,
)
from deepclust.errors import UserError
from tests.conftest import make_images, sweep_settings

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


def _shards(root: Path, n_files: int = 2, rows: int = 15, row_group: int = 4) -> Path:
    """``n_files`` shards of ``rows`` images in row groups of ``row_group`` rows; image i's
    label is i % 2 and its pixels are seeded by i, so idx order is checkable."""
    import pyarrow as pa

    from tests.conftest import make_images

    root.mkdir()
    for f in range(n_files):
        images, labels = make_images(rows, seed=f)
        table = pa.table({"image": pa.array(images, pa.binary()), "label": labels})
        pq.write_table(table, root / f"part-{f}.parquet", row_group_size=row_group)
    return root


def _all_rows(ds) -> dict:
    from deepclust.datasets import read_parquet_part

    src = ds.parquet
    batches = [
        b
        for p in src.parts
        for b in read_parquet_part(p, src.image_column, src.label_column, rows=3)
    ]
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def test_parquet_idx_is_stable_across_files_and_row_groups(tmp_path, monkeypatch):
    from deepclust import datasets
    from tests.conftest import make_images

    monkeypatch.setattr(datasets, "PARQUET_PART_ROWS", 3)  # split row groups into parts too
    ds = resolve_dataset(f"parquet:{_shards(tmp_path / 'shards')}").load("all", tmp_path, False)
    rows = _all_rows(ds)
    expected = make_images(15, seed=0)[0] + make_images(15, seed=1)[0]  # file, then row order
    np.testing.assert_array_equal(rows["idx"], np.arange(30))
    assert list(rows["encoded"]) == expected
    np.testing.assert_array_equal(rows["label"], ds.labels)
    np.testing.assert_array_equal(ds.labels, np.r_[np.arange(15) % 2, np.arange(15) % 2])
    assert max(p.num_rows for p in ds.parquet.parts) == 3 and len(ds.parquet) == 30
    assert ds.describe(17).endswith("part-1.parquet row 2")
    assert ds.source_item(17) == expected[17] and ds.source_item(3) == expected[3]
    batches = list(ds.batches(7))  # exact batch sizes across parts
    assert [len(b["idx"]) for b in batches] == [7, 7, 7, 7, 2]
    assert list(np.concatenate([b["encoded"] for b in batches])) == expected
    head = ds.subset(10)
    assert len(head.parquet) == 10 and list(_all_rows(head)["idx"]) == list(range(10))


def test_a_parquet_imageset_holds_no_image_bytes(tiny_parquet, monkeypatch):
    """The driver reads footers and the label column only: any read of the image column
    while loading fails this test, and the ImageSet holds a manifest, not bytes."""
    read_table, columns_read = pq.read_table, []

    def spy(source, *args, columns=None, **kwargs):
        columns_read.append(columns)
        return read_table(source, *args, columns=columns, **kwargs)

    monkeypatch.setattr(pq, "read_table", spy)
    monkeypatch.setattr(pq.ParquetFile, "read_row_group", None)  # would fail if called
    monkeypatch.setattr(pq.ParquetFile, "iter_batches", None)
    ds = resolve_dataset(f"parquet:{tiny_parquet}").load("all", Path("."), False)
    assert columns_read == [["label"]]
    assert ds.encoded is None and ds.pixels is None and ds.parquet is not None
    assert ds.source_column == "encoded" and len(ds) == 24
    assert len(pickle.dumps(ds)) < 4096  # tiny_parquet holds ~24 KB of PNGs


@pytest.mark.parametrize(
    "values,ids,names",
    [
        (pa.array([2, 0, 1, 0], pa.int16()), [2, 0, 1, 0], ("0", "1", "2")),  # as given
        (pa.array([-5, 4, -4, 4]), [0, 2, 1, 2], ("-5", "-4", "4")),  # negative: remapped
        (pa.array([1, 2, 3, 1]), [0, 1, 2, 0], ("1", "2", "3")),  # 1-based: remapped
        (pa.array([0, 1, 10**6]), [0, 1, 2], ("0", "1", "1000000")),  # sparse: remapped
        (pa.array(["dog", "cat", "dog"]), [1, 0, 1], ("cat", "dog")),  # strings, sorted
        (pa.array([1.0, 2.0, 1.0]), [0, 1, 0], ("1", "2")),  # integral floats
    ],
)
def test_labels_become_class_ids_with_the_mapping_kept(values, ids, names):
    from deepclust.datasets import checked_labels

    got, class_names = checked_labels(values, "x.parquet")
    assert got.dtype == np.int64 and got.tolist() == ids and class_names == names


def test_listed_class_names_keep_the_given_ids():
    from deepclust.datasets import checked_labels

    got, names = checked_labels(pa.array([0, 2]), "x", class_names=("a", "b", "c"))
    assert got.tolist() == [0, 2] and names == ("a", "b", "c")  # class "b" has no image here


@pytest.mark.parametrize(
    "values,fragment",
    [
        (pa.array([1, None, 2]), "1 null label(s) in column 'label' (first at row 1)"),
        (pa.array([1.5, 2.0]), "non-integer values (e.g. 1.5)"),
        (pa.array([1.0, float("nan")]), "non-integer values"),
        (pa.array([], pa.int64()), "holds no rows"),
        (pa.array([3, 3, 3]), "every image has the label '3'"),
        (pa.array([[1], [2]]), "has type list<item: int64>"),
    ],
)
def test_bad_labels_are_one_line_errors(values, fragment):
    from deepclust.datasets import checked_labels

    with pytest.raises(UserError) as err:
        checked_labels(values, "x.parquet")
    assert fragment in str(err.value) and "\n" not in str(err.value)


def _labelled_parquet(path, labels):
    images, _ = make_images(len(labels))
    pq.write_table(pa.table({"image": pa.array(images, pa.binary()), "label": labels}), path)
    return path


def test_an_eval_split_is_numbered_as_the_fit_split(tmp_path):
    """Train and test parquets with string labels, test lacking one class: test's ids are the
    train split's; a class only the test split has is a one-line error."""
    from orchestrator.pipeline import load_splits

    folder = tmp_path / "d"
    folder.mkdir()
    _labelled_parquet(folder / "train.parquet", pa.array(["ant", "bee", "cat", "bee"]))
    _labelled_parquet(folder / "test.parquet", pa.array(["cat", "ant", "cat"]))
    splits = load_splits(resolve_dataset(f"parquet:{folder}"), sweep_settings(tmp_path))
    assert splits.fit.class_names == splits.eval.class_names == ("ant", "bee", "cat")
    assert splits.eval.labels.tolist() == [2, 0, 2] and splits.eval.num_classes == 3
    _labelled_parquet(folder / "test.parquet", pa.array(["cat", "dog", "cat"]))
    with pytest.raises(UserError, match="the test split has classes the train split lacks"):
        load_splits(resolve_dataset(f"parquet:{folder}"), sweep_settings(tmp_path))


def test_bad_labels_stop_the_sweep_before_ray_starts(tmp_path, capsys):
    from orchestrator.sweep import main

    bad = _labelled_parquet(tmp_path / "bad.parquet", pa.array([0, None, 1], pa.int64()))
    code = main(["--benchmark", f"parquet:{bad}", "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "null label(s)" in err[0], err
    import ray

    assert not ray.is_initialized()


def test_a_folder_with_link_loops_lists_each_real_image_once(tmp_path):
    """cat/ holds 3 images and a link back to itself; dog/ holds 2 and a link to cat/: 5
    images, numbered as torchvision's ImageFolder numbers the same tree without links."""
    from torchvision.datasets import ImageFolder

    plain = tmp_path / "plain"
    for cls, n in (("cat", 3), ("dog", 2)):
        (plain / cls / "sub").mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (i, 0, 0)).save(plain / cls / "sub" / f"{i}.png")
    reference = ImageFolder(str(plain))
    (plain / "cat" / "sub" / "loop").symlink_to(plain / "cat", target_is_directory=True)
    (plain / "dog" / "also_cat").symlink_to(plain / "cat", target_is_directory=True)
    ds = resolve_dataset(f"folder:{plain}").load("all", Path("."), False)
    assert len(ds) == 5 and ds.class_names == ("cat", "dog")
    assert [(Path(p).name, y) for p, y in zip(ds.paths, ds.labels, strict=True)] == [
        (Path(p).name, y) for p, y in reference.samples
    ]


def test_a_parquet_without_a_label_column_is_an_unlabelled_collection(tmp_path):
    images, _ = make_images(6)
    path = tmp_path / "u.parquet"
    pq.write_table(pa.table({"image": pa.array(images, pa.binary())}), path)
    ds = resolve_dataset(f"parquet:{path}").load("all", Path("."), False)
    assert not ds.labelled and ds.num_classes == 0 and ds.class_names == ()
    assert (ds.labels == UNLABELLED).all() and len(ds) == 6
    rows = _all_rows(ds)
    assert (rows["label"] == UNLABELLED).all() and len(rows["encoded"]) == 6


def test_a_folder_without_class_folders_is_an_unlabelled_collection_in_any_layout(tmp_path):
    images, _ = make_images(5)
    (tmp_path / "a" / "b").mkdir(parents=True)
    names = ["top.png", "a/one.png", "a/b/two.png", "a/b/three.png", "a/four.png"]
    for name, data in zip(names, images, strict=True):
        (tmp_path / name).write_bytes(data)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    ds = resolve_dataset(f"folder:{tmp_path}").load("all", Path("."), False)
    assert not ds.labelled and len(ds) == 5 and (ds.labels == UNLABELLED).all()
    assert sorted(Path(p).name for p in ds.paths) == sorted(Path(n).name for n in names)
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "x.png").write_bytes(images[0])
    assert not resolve_dataset(f"folder:{flat}").load("all", Path("."), False).labelled
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="holds no image"):
        resolve_dataset(f"folder:{empty}").load("all", Path("."), False)
