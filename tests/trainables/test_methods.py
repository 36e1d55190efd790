"""Contract tests over the whole METHODS registry, plus method-specific checks."""

import dataclasses

import numpy as np
import pytest

from deepclust.config import from_dict
from deepclust.knn import knn_self, l2_normalize
from deepclust.metrics import hungarian_acc
from trainables.methods import METHODS, ClusteringMethod, FitInputs


def blobs(n_per: int = 40, k: int = 4, d: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * 4
    x = np.concatenate([c + rng.normal(size=(n_per, d)) for c in centers]).astype(np.float32)
    return l2_normalize(x), np.repeat(np.arange(k), n_per)


def inputs_for(method_cls, x, y, seed=0):
    nbr = knn_self(x, 10)[0] if "neighbors" in method_cls.needs else None
    return FitInputs(
        embeddings=x,
        num_clusters=int(y.max()) + 1,
        seed=seed,
        neighbors=nbr,
        labels=y if method_cls.uses_labels else None,
    )


@pytest.mark.parametrize("name", METHODS.names())
def test_contract(name):
    method_cls = METHODS.get(name)
    assert issubclass(method_cls, ClusteringMethod)
    assert dataclasses.is_dataclass(method_cls.Config())
    cfg = from_dict(method_cls.Config, method_cls.smoke)
    assert dataclasses.is_dataclass(cfg) and method_cls.Config.__dataclass_params__.frozen
    assert method_cls.needs <= {f.name for f in dataclasses.fields(FitInputs)}
    assert isinstance(method_cls.objective, str) and method_cls.objective
    x, y = blobs()
    method = method_cls(cfg)
    diagnostics = method.fit(inputs_for(method_cls, x, y))
    assert np.isfinite(diagnostics[method_cls.objective])
    pred = method.predict(x)
    assert pred.shape == (len(x),) and pred.dtype == np.int64
    assert pred.min() >= 0 and pred.max() < 4


@pytest.mark.parametrize("name", METHODS.names())
def test_same_seed_same_result(name):
    method_cls = METHODS.get(name)
    x, y = blobs(seed=1)
    preds = []
    for _ in range(2):
        m = method_cls(from_dict(method_cls.Config, method_cls.smoke))
        m.fit(inputs_for(method_cls, x, y, seed=3))
        preds.append(m.predict(x))
    np.testing.assert_array_equal(*preds)


def test_wrong_config_type_is_rejected():
    with pytest.raises(TypeError, match="KMeansConfig"):
        METHODS.get("kmeans")(object())


def test_kmeans_recovers_separated_blobs():
    x, y = blobs(seed=2)
    m = METHODS.get("kmeans")(METHODS.get("kmeans").Config())
    m.fit(FitInputs(embeddings=x, num_clusters=4, seed=0))
    assert hungarian_acc(y, m.predict(x)) == 1.0
