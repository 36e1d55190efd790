"""Each method learns on real data: the same frozen embeddings of scikit-learn's bundled digits
(offline EfficientNet-Lite0, the product's default), scored against k-means on them.

SCAN, TEMI and UNIC beat k-means on every seed measured (0, 1, 2). SPICE (official reliable-set
balancing) and IIC learn (far above chance, 0.1) but do not beat k-means on these cached
embeddings: they lose on two seeds of three, and the tests say so and assert that they learn.

Configurations are the defaults with fewer heads/steps to fit CI's budget. Labels are used only
to score (the defaults chosen on data were chosen on a development set: docs/defaults.md).
Numbers were measured on the 2-core dev machine with one torch thread; the tests run seed 0, and
seeds 1 and 2 (same code, same embeddings) show whether a gain is more than seed luck. Each
margin is about half the smallest gain measured over seeds 0-2.
"""

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from deepclust.config import from_dict
from deepclust.datasets import resolve_dataset
from deepclust.knn import knn_self
from deepclust.metrics import hungarian_acc
from trainables.methods import METHODS, FitInputs

# (method, CI-budget overrides, minimum ACC gain over k-means on the same embeddings).
# Measured ACC, seeds 0 / 1 / 2 (k-means 0.479 / 0.479 / 0.499):
#   scan  0.599 / 0.591 / 0.595  (gain +0.120 / +0.112 / +0.097) -> margin 0.05
#   unic  0.541 / 0.543 / 0.556  (gain +0.062 / +0.064 / +0.057) -> margin 0.03
#   temi  0.506 / 0.599 / 0.514  (gain +0.027 / +0.121 / +0.016) -> margin 0.01
CASES = [
    ("scan", {"min_steps": 4000}, 0.05),
    ("unic", {"min_steps": 4000}, 0.03),
    ("temi", {"epochs": 100, "min_steps": 2000, "num_heads": 2}, 0.01),
]


def _lowest_priority() -> None:
    """This thread yields the CPU to every other: SCHED_IDLE where Linux offers it, else nice
    19 (both per thread on Linux; threads it starts inherit it)."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(19)


@pytest.fixture(scope="module")
def background():
    """A thread that runs this module's CPU-bound work (embedding, fits) at the lowest
    priority, on one torch thread: these tests run beside the Ray tests (tests/conftest.py)
    and use only the CPU those leave idle. At nice 19 alone, the kernel's weights still gave
    them about 30% of a core shared with a Ray worker (nice 15), and the Ray tests took 1,484 s
    of the suite instead of 1,346 s. The pytest worker's own thread keeps its priority."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with ThreadPoolExecutor(1, initializer=_lowest_priority) as pool:
        yield lambda fn, *args: pool.submit(fn, *args).result()
    torch.set_num_threads(threads)


def _embed_digits(tmp_path: Path):
    from deepclust.embedder import Embedder
    from deepclust.preprocess import decode_batch

    spec = resolve_dataset("digits")
    images = spec.load(spec.fit_split, tmp_path, False)
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
    return feats, labels, nbr, hungarian_acc(labels, kmeans.predict(feats))


def _fit_predict(method, inputs: FitInputs, feats: np.ndarray) -> np.ndarray:
    method.fit(inputs)
    return method.predict(feats)


@pytest.fixture(scope="module")
def digits(background, tmp_path_factory):
    return background(_embed_digits, Path(tmp_path_factory.mktemp("data")))


@pytest.mark.parametrize("name,overrides,margin", CASES, ids=[c[0] for c in CASES])
def test_beats_kmeans_on_digits_embeddings(background, digits, name, overrides, margin):
    feats, labels, nbr, kmeans_acc = digits
    method_cls = METHODS.get(name)
    method = method_cls(from_dict(method_cls.Config, overrides))
    acc = hungarian_acc(
        labels, background(_fit_predict, method, FitInputs(feats, 10, 0, nbr), feats)
    )
    print(f"{name}: ACC {acc:.4f} vs k-means {kmeans_acc:.4f}")
    assert acc >= kmeans_acc + margin, (name, acc, kmeans_acc)


def test_spice_learns_but_does_not_beat_kmeans_on_digits_embeddings(background, digits):
    """SPICE, default config (official "smallest" reliable-set balancing), seed 0: measured
    0.505 vs k-means 0.479; seeds 1 / 2: 0.454 / 0.461 vs 0.479 / 0.499. It does not beat
    k-means here (on every seed one cluster had no reliable row, so the balanced set was empty
    and the unbalanced fallback ran; SPICE-Self is prototype self-training on the embedding).
    It learns: four times chance, 0.40, is asserted."""
    feats, labels, nbr, kmeans_acc = digits
    method_cls = METHODS.get("spice")
    method = method_cls(from_dict(method_cls.Config, {}))
    acc = hungarian_acc(
        labels, background(_fit_predict, method, FitInputs(feats, 10, 0, nbr), feats)
    )
    print(f"spice: ACC {acc:.4f} vs k-means {kmeans_acc:.4f}")
    assert acc >= 0.40, (acc, kmeans_acc)


def test_iic_learns_but_stays_below_kmeans_on_digits_embeddings(background, digits):
    """IIC (default config) on mined-neighbour pairs of cached embeddings: measured 0.386 vs
    k-means 0.479 at seed 0; seeds 1 / 2: 0.514 / 0.377 vs 0.479 / 0.499 (mean 0.426 vs
    0.485). It learns (three times chance, 0.30, is asserted) and loses to k-means here on two
    seeds of three, as its paper's gain needs image augmentations (finetune mode)."""
    feats, labels, nbr, kmeans_acc = digits
    method_cls = METHODS.get("iic")
    method = method_cls(from_dict(method_cls.Config, {}))
    acc = hungarian_acc(
        labels, background(_fit_predict, method, FitInputs(feats, 10, 0, nbr), feats)
    )
    print(f"iic: ACC {acc:.4f} vs k-means {kmeans_acc:.4f}")
    assert acc >= 0.30, (acc, kmeans_acc)


def test_unic_gcd_beats_semi_supervised_kmeans_on_digits_embeddings(background, digits):
    """GCD (digits 0-4 Old, half of their images labelled): UNIC with labelled images as
    ground-truth neighbours beats semi-supervised k-means on All accuracy (v2, unlabelled
    images). CI-budget config below (one MLP head, 4,000 steps), measured All ACC at seeds
    0 / 1 / 2: UNIC 0.688 / 0.598 / 0.604, semi-supervised k-means 0.475 / 0.477 / 0.471
    (gain +0.212 / +0.121 / +0.133); the test runs seed 0 with margin 0.06."""
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
        pred = background(_fit_predict, method, FitInputs(feats, 10, 0, nbr, **seen), feats)
        scores[name] = gcd_scores(pred, labels, split)
        print(name, {k: round(v, 4) for k, v in scores[name].items()})
    assert scores["unic"]["acc"] >= scores["sskmeans"]["acc"] + 0.06, scores
