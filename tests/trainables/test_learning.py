"""Each method learns on real data: on the same frozen embeddings of scikit-learn's bundled
digits (offline EfficientNet-Lite0, the product's default), it beats k-means where its paper
says it should (SCAN, TEMI, SPICE, UNIC). IIC learns (far above chance) but stays below k-means
on these embeddings: its paper's gain comes from image augmentations, which cached mode lacks.

Configurations are the defaults with fewer heads/steps to fit CI's budget; the default
configurations' numbers over 3 seeds are in the README. Labels are used only to score.
"""

from pathlib import Path

import numpy as np
import pytest

from deepclust.config import from_dict
from deepclust.knn import knn_self
from deepclust.metrics import hungarian_acc
from trainables.methods import METHODS, FitInputs

# (method, CI-budget overrides, minimum ACC gain over k-means on the same embeddings).
# Measured once on this machine (seed 0, k-means 0.479): scan 0.599, unic 0.541 (one MLP head at
# this 4,000-step budget; 0.629 with the former default of 5 linear restarts), temi 0.506,
# spice 0.529 (0.486 when the reliable set was cut to the smallest cluster).
CASES = [
    ("scan", {"min_steps": 4000}, 0.05),
    ("unic", {"min_steps": 4000}, 0.05),
    ("temi", {"epochs": 100, "min_steps": 2000, "num_heads": 2}, 0.01),
    ("spice", {}, 0.02),
]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    import torch

    from deepclust.datasets import resolve_dataset

    # one core for these CPU-bound tests, the other for the Ray tests that run beside them on
    # the other pytest-xdist worker (tests/conftest.py): with both cores busy here, Ray's own
    # processes starve and the Ray tests take 2-4x longer
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    from deepclust.embedder import Embedder
    from deepclust.preprocess import decode_batch

    spec = resolve_dataset("digits")
    images = spec.load(spec.fit_split, Path(tmp_path_factory.mktemp("data")), False)
    embedder = Embedder("efficientnet_lite0", device="cpu")
    feats = np.concatenate(
        [
            embedder.embed_images(decode_batch(b, embedder.preprocess)["image"])
            for b in images.batches(128)
        ]
    )
    labels = np.asarray(images.labels)
    nbr = knn_self(feats, 50)[0]
    kmeans = METHODS.get("kmeans")(METHODS.get("kmeans").Config())
    kmeans.fit(FitInputs(feats, 10, 0))
    yield feats, labels, nbr, hungarian_acc(labels, kmeans.predict(feats))
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name,overrides,margin", CASES, ids=[c[0] for c in CASES])
def test_beats_kmeans_on_digits_embeddings(digits, name, overrides, margin):
    feats, labels, nbr, kmeans_acc = digits
    method_cls = METHODS.get(name)
    method = method_cls(from_dict(method_cls.Config, overrides))
    method.fit(FitInputs(feats, 10, 0, nbr))
    acc = hungarian_acc(labels, method.predict(feats))
    print(f"{name}: ACC {acc:.4f} vs k-means {kmeans_acc:.4f}")
    assert acc >= kmeans_acc + margin, (name, acc, kmeans_acc)


def test_iic_learns_but_stays_below_kmeans_on_digits_embeddings(digits):
    """IIC (default config, seed 0) on mined-neighbour pairs of cached embeddings: measured
    0.386 vs k-means 0.479 on a fresh install of the pinned dependencies. It learns (three
    times chance, 0.1, is asserted) and loses to k-means here, as its paper's gain needs image
    augmentations (finetune mode)."""
    feats, labels, nbr, kmeans_acc = digits
    method_cls = METHODS.get("iic")
    method = method_cls(from_dict(method_cls.Config, {}))
    method.fit(FitInputs(feats, 10, 0, nbr))
    acc = hungarian_acc(labels, method.predict(feats))
    print(f"iic: ACC {acc:.4f} vs k-means {kmeans_acc:.4f}")
    assert acc >= 0.30, (acc, kmeans_acc)


def test_unic_gcd_beats_semi_supervised_kmeans_on_digits_embeddings(digits):
    """GCD (digits 0-4 Old, half of their images labelled): UNIC with labelled images as
    ground-truth neighbours beats semi-supervised k-means on All accuracy (v2, unlabelled
    images). Measured on this machine, seed 0: with the CI-budget config below (one MLP head,
    4,000 steps) 0.697 vs 0.475; with the former default of 5 linear restarts 0.521."""
    from deepclust.gcd import gcd_scores, make_split

    feats, labels, nbr, _ = digits
    split = make_split(labels, (0, 1, 2, 3, 4))
    seen = {
        "labelled_idx": split.labelled_idx,
        "labelled_y": split.labelled_y,
        "unlabelled_idx": split.unlabelled_idx,
    }
    scores = {}
    for name, overrides in [("sskmeans", {}), ("unic", {"min_steps": 4000})]:
        method_cls = METHODS.get(name)
        method = method_cls(from_dict(method_cls.Config, overrides))
        method.fit(FitInputs(feats, 10, 0, nbr, **seen))
        scores[name] = gcd_scores(method.predict(feats), labels, split)
        print(name, {k: round(v, 4) for k, v in scores[name].items()})
    assert scores["unic"]["acc"] >= scores["sskmeans"]["acc"] + 0.02, scores
