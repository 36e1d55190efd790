"""The GCD setting through the pipeline: the split is fixed and stored, methods see only the
labelled rows, runs are scored on the unlabelled rows (All / Old / New)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from deepclust.artifacts import ArtifactStore, Embeddings
from deepclust.datasets import resolve_dataset
from deepclust.errors import UserError
from orchestrator.pipeline import (
    BenchmarkContext,
    BenchmarkSplits,
    MethodRun,
    SweepSettings,
    ensure_gcd_split,
    run_method,
)
from tests.orchestrator.test_train_cli import train_cmd
from trainables.methods import METHODS

REPO = Path(__file__).resolve().parents[2]


def _settings(tmp_path, **kw):
    return SweepSettings(
        data_root=tmp_path,
        download=False,
        output=tmp_path / "out",
        backbone="b",
        weights_file=None,
        methods=("sskmeans",),
        seeds=(0,),
        kmax=10,
        knn_backend="auto",
        knn_shards=1,
        batch_size=64,
        setting="gcd",
        **kw,
    )


def _digits_pool(labels=None):
    spec = resolve_dataset("digits")
    images = spec.load("all", Path("."), False)
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(10, 16))
    y = images.labels if labels is None else labels
    x = (centers[images.labels] + 0.6 * rng.normal(size=(len(y), 16))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    emb = Embeddings(x, np.asarray(y, dtype=np.int64), {"key": "emb0"})
    return BenchmarkSplits(spec, images, images), emb


def _run(tmp_path, method, emb, splits, gcd, out, config=None):
    store = ArtifactStore(tmp_path / out)
    nbr = np.zeros((len(emb.labels), 1), dtype=np.int64)
    ctx = BenchmarkContext(
        splits, emb, emb, nbr, {"key": "n0"}, _settings(tmp_path), store, gcd=gcd
    )
    config = dict(METHODS.get(method).smoke) if config is None else config
    return run_method(MethodRun(method, 0, config), ctx), store


@pytest.mark.parametrize("method", ["kmeans", "sskmeans"])
def test_labels_of_unlabelled_and_novel_images_never_reach_a_method(tmp_path, method):
    splits, emb = _digits_pool()
    gcd = ensure_gcd_split(splits, emb, _settings(tmp_path), ArtifactStore(tmp_path / "a"))
    split = gcd.split
    shuffled = emb.labels.copy()
    rng = np.random.default_rng(1)
    shuffled[split.unlabelled_idx] = rng.permutation(shuffled[split.unlabelled_idx])
    other = Embeddings(emb.features, shuffled, emb.meta)
    first, _ = _run(tmp_path, method, emb, splits, gcd, "a")
    second, _ = _run(tmp_path, method, other, splits, gcd, "b")
    assert first["setting"] == "gcd"
    pred = [
        pq.read_table(Path(r["run_dir"]) / "predictions.parquet")["cluster"].to_numpy()
        for r in (first, second)
    ]
    np.testing.assert_array_equal(pred[0], pred[1])  # outputs unchanged
    assert first["acc"] != second["acc"]  # while the scorer did read the (shuffled) labels
    assert first["n_eval"] == len(split.unlabelled_idx)
    assert {"acc_old", "acc_new"} <= set(first)


def test_sskmeans_beats_kmeans_with_labels_on_separable_data(tmp_path):
    splits, emb = _digits_pool()
    gcd = ensure_gcd_split(splits, emb, _settings(tmp_path), ArtifactStore(tmp_path / "a"))
    km, _ = _run(tmp_path, "kmeans", emb, splits, gcd, "a", config={})
    ss, _ = _run(tmp_path, "sskmeans", emb, splits, gcd, "a", config={})
    assert ss["acc"] >= km["acc"] and ss["acc_old"] > 0.9


def test_the_split_is_stored_once_and_reused(tmp_path):
    splits, emb = _digits_pool()
    store = ArtifactStore(tmp_path / "a")
    first = ensure_gcd_split(splits, emb, _settings(tmp_path), store)
    split, path, key = first.split, first.path, first.key
    assert path.is_file() and split.old_classes == (0, 1, 2, 3, 4)
    second = ensure_gcd_split(splits, emb, _settings(tmp_path), store)
    again, path2, key2 = second.split, second.path, second.key
    assert (path2, key2) == (path, key)
    np.testing.assert_array_equal(again.labelled_idx, split.labelled_idx)
    held = ensure_gcd_split(splits, emb, _settings(tmp_path, gcd_val_frac=0.2), store)
    assert held.key != key and len(held.split.val_idx) > 0


def test_clustering_only_and_gcd_only_methods_are_refused_in_the_other_setting(tmp_path):
    splits, emb = _digits_pool()
    with pytest.raises(UserError, match="does not run in the clustering setting"):
        _run(tmp_path, "sskmeans", emb, splits, None, "a")


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.sweep", *args, "--no-gallery"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_sskmeans_needs_the_gcd_setting_on_the_command_line(tmp_path):
    proc = _cli("--benchmark", "digits", "--methods", "sskmeans", "--output", str(tmp_path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "'sskmeans' does not run in the clustering setting" in proc.stderr
    assert "--setting gcd" in proc.stderr


@pytest.mark.ray
def test_gcd_end_to_end_through_ray_train(tiny_parquet, tmp_path):
    out = tmp_path / "out"
    cmd = train_cmd(
        tiny_parquet, out, "--setting", "gcd", "--set", "min_steps=50", "--set", "num_heads=2"
    )
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = list(out.glob("runs/**/metrics.json"))
    result = json.loads(path.read_text())
    assert result["setting"] == "gcd" and result["old_classes"] == [0]
    assert result["n_eval"] == 24 - 6  # half of the 12 Old-class images are labelled
    assert 0 <= result["acc_old"] <= 1 and 0 <= result["acc_new"] <= 1
    assert "| gcd | parquet:" in proc.stdout


def test_gcd_jobs_predict_the_pool_even_for_benchmarks_with_a_test_split(tmp_path):
    """A finetune-mode GCD run predicts images of the train pool, not the test split."""
    from orchestrator.pipeline import _job

    spec = resolve_dataset("cifar10")  # fit split train, eval split test
    splits, emb = _digits_pool()
    gcd_splits = BenchmarkSplits(spec, splits.fit, splits.fit)
    emb = Embeddings(emb.features, emb.labels, {"key": "e", "path": "p"})
    ctx = BenchmarkContext(
        gcd_splits, emb, emb, None, {}, _settings(tmp_path), ArtifactStore(tmp_path / "out")
    )
    job = _job(MethodRun("unic", 0), None, ctx, tmp_path)
    assert job.eval_split == job.fit_split == splits.fit.split
