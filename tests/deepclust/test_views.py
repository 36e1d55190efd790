import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from deepclust.datasets import UNLABELLED, load_parquet
from deepclust.errors import UserError
from deepclust.views import BenchmarkView, apply_view, long_tail_sizes
from tests.conftest import make_images


def _set(tmp_path, n=60, classes=3):
    """A Parquet set of n images, image i of class i % classes, named c0, c1, ..."""
    images, _ = make_images(n)
    labels = np.arange(n) % classes
    table = pa.table({"image": pa.array(images, pa.binary()), "label": labels})
    names = ",".join(f"c{i}" for i in range(classes))
    pq.write_table(table.replace_schema_metadata({"classes": names}), tmp_path / "s.parquet")
    return load_parquet(tmp_path / "s.parquet", name="s"), images


def test_classes_keep_those_images_renumbered_in_the_order_given(tmp_path):
    ds, images = _set(tmp_path)
    view = apply_view(ds, BenchmarkView(classes=("c2", "0")))
    rows = np.flatnonzero(np.isin(np.arange(60) % 3, [0, 2]))
    assert view.class_names == ("c2", "c0") and view.num_classes == 2 and len(view) == 40
    assert np.array_equal(view.base_rows, rows) and view.base is ds
    assert np.array_equal(view.labels, np.where(rows % 3 == 2, 0, 1))
    assert [view.source_item(i) for i in (0, 1, 39)] == [images[r] for r in rows[[0, 1, 39]]]
    assert view.describe(1) == ds.describe(int(rows[1]))  # the source's own file and row
    assert view.split == "all[classes=c2,0]" and view.fingerprint != ds.fingerprint


def test_the_long_tail_follows_the_cifar_lt_profile_with_a_fixed_draw(tmp_path):
    assert long_tail_sizes(np.array([1000] * 10), 100).tolist() == [
        1000, 599, 359, 215, 129, 77, 46, 27, 16, 10
    ]  # fmt: skip
    assert long_tail_sizes(np.array([1000] * 10), 10).tolist()[::3] == [1000, 464, 215, 100]
    ds, _ = _set(tmp_path, n=90)
    view = apply_view(ds, BenchmarkView(imbalance=10))
    assert np.bincount(view.labels).tolist() == long_tail_sizes(np.array([30] * 3), 10).tolist()
    again = apply_view(ds, BenchmarkView(imbalance=10))
    assert np.array_equal(view.base_rows, again.base_rows)  # one draw per set and ratio
    assert np.array_equal(view.labels, ds.labels[view.base_rows])
    # a separate eval split keeps its balance
    assert apply_view(ds, BenchmarkView(imbalance=10), long_tail=False) is ds


def test_ignore_labels_hides_them(tmp_path):
    ds, _ = _set(tmp_path)
    view = apply_view(ds, BenchmarkView(ignore_labels=True))
    assert not view.labelled and (view.labels == UNLABELLED).all() and len(view) == len(ds)
    both = apply_view(ds, BenchmarkView(classes=("c0", "c1"), ignore_labels=True))
    assert not both.labelled and len(both) == 40


def test_impossible_views_are_one_line_errors(tmp_path):
    ds, _ = _set(tmp_path)
    with pytest.raises(UserError, match="unknown class of s 'c9'"):
        apply_view(ds, BenchmarkView(classes=("c0", "c9")))
    with pytest.raises(UserError, match="at least 2 classes"):
        apply_view(ds, BenchmarkView(classes=("c0",)))
    with pytest.raises(UserError, match=">= 1"):
        BenchmarkView(imbalance=0.5)
    unlabelled = apply_view(ds, BenchmarkView(ignore_labels=True))
    with pytest.raises(UserError, match="need a labelled benchmark"):
        apply_view(unlabelled, BenchmarkView(imbalance=10))
