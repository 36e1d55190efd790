"""SPICE: prototype pseudo-labels and reliability on vectors derived in numpy from the official
definitions, naive oracles."""

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainables.losses.spice import (
    balance_reliable,
    fixmatch_loss,
    local_consistency,
    prototype_pseudo_labels,
    spice_ce,
)

FEATS = F.normalize(torch.tensor([[1, 0], [0.9, 0.1], [0.8, 0.3], [0.1, 0.9], [0, 1], [0.5, 0.5]]))
S = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.7, 0.3], [0.2, 0.8], [0.45, 0.55], [0.5, 0.5]])


def test_prototype_selection_derived_vector():
    idx, labels = prototype_pseudo_labels(S, FEATS)
    assert idx[:3].tolist() == [0, 1, 2] and idx[3:].tolist() == [3, 4, 5]
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_reliability_derived_vector_and_balancing_empties_the_set():
    pred = torch.tensor([0, 0, 0, 1, 1, 0])
    conf = torch.tensor([0.999, 0.995, 0.98, 0.999, 0.997, 0.999])
    nbr = torch.tensor([[0, 1, 2], [1, 0, 2], [2, 1, 0], [3, 4, 5], [4, 3, 5], [5, 2, 1]])
    reliable = local_consistency(pred, conf, nbr, 0.9, 0.99)
    assert reliable.tolist() == [True, True, False, False, False, True]
    assert not balance_reliable(reliable, pred, 2, torch.Generator().manual_seed(0)).any()
    pred2 = torch.tensor([0, 0, 0, 1, 1, 1])
    kept = balance_reliable(torch.ones(6, dtype=torch.bool), pred2, 2, torch.Generator())
    assert kept.all()
    kept = balance_reliable(torch.tensor([1, 1, 1, 1, 0, 0]).bool(), pred2, 2, torch.Generator())
    assert int(kept[:3].sum()) == 1 and kept[3] and int(kept.sum()) == 2


def test_median_balancing_caps_large_clusters_without_emptying_on_a_small_one():
    # reliable rows per cluster: 1, 3, 5, 0 (cluster 3 has none)
    pred = torch.tensor([0] + [1] * 3 + [2] * 5 + [3] * 2)
    reliable = torch.ones(11, dtype=torch.bool)
    reliable[9:] = False
    gen = torch.Generator().manual_seed(0)
    assert not balance_reliable(reliable, pred, 4, gen, "smallest").any()
    kept = balance_reliable(reliable, pred, 4, gen, "median")  # counts 0,1,3,5 -> cap 3
    per = torch.bincount(pred[kept], minlength=4).tolist()
    assert per == [1, 3, 3, 0] and not (kept & ~reliable).any()
    assert torch.equal(balance_reliable(reliable, pred, 4, gen, "none"), reliable)
    with pytest.raises(ValueError, match="smallest, median, none"):
        balance_reliable(reliable, pred, 4, gen, "mean")


def naive_prototypes(s, f, center_ratio=0.5):
    """Per cluster: the similarities of the rows it should select (prototype members tie
    exactly in exact arithmetic, so rows are compared by similarity, not index)."""
    n, k = s.shape
    m, per = max(1, math.floor(center_ratio * n / k)), n // k
    out = []
    for c in range(k):
        top = sorted(range(n), key=lambda i: (-s[i, c], i))[:m]
        mu = [sum(f[i, j] for i in top) / m for j in range(f.shape[1])]
        sim = [sum(mu[j] * f[i, j] for j in range(f.shape[1])) for i in range(n)]
        out.append((sorted(sim, reverse=True)[:per], sim))
    return out


@pytest.mark.parametrize("n,k,seed", list(itertools.product([6, 20, 33], [2, 3, 5], [0, 1])))
def test_prototypes_against_naive_loop(n, k, seed):
    rng = np.random.default_rng(seed)
    s = rng.dirichlet(np.ones(k), size=n)
    f = rng.normal(size=(n, 4))
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    idx, labels = prototype_pseudo_labels(torch.tensor(s), torch.tensor(f))
    assert len(idx) == k * (n // k)
    for c in range(k):
        want, sim = naive_prototypes(s, f)[c]
        got = sorted((sim[i] for i in idx[labels == c].tolist()), reverse=True)
        np.testing.assert_allclose(got, want, atol=1e-12)


def test_relabelling_permutes_the_pseudo_labels():
    g = torch.Generator().manual_seed(0)
    s = torch.softmax(torch.randn(30, 3, generator=g), -1)
    f = F.normalize(torch.randn(30, 5, generator=g))
    perm = torch.tensor([2, 0, 1])
    idx, lab = prototype_pseudo_labels(s, f)
    idx_p, lab_p = prototype_pseudo_labels(s[:, perm], f)
    for c in range(3):  # new cluster c is old cluster perm[c]
        assert sorted(idx_p[lab_p == c].tolist()) == sorted(idx[lab == perm[c]].tolist())
    logits, y = torch.randn(8, 3, generator=g), torch.randint(0, 3, (8,), generator=g)
    inv = torch.argsort(perm)
    assert float(spice_ce(logits[:, perm], inv[y])) == pytest.approx(float(spice_ce(logits, y)))


def test_double_softmax_and_fixmatch_values():
    logits, y = torch.tensor([[2.0, 0.0]]), torch.tensor([0])
    p = math.exp(2) / (math.exp(2) + 1)
    want = -math.log(math.exp(p) / (math.exp(p) + math.exp(1 - p)))
    assert float(spice_ce(logits, y)) == pytest.approx(want, rel=1e-6)
    assert float(spice_ce(logits, y, double_softmax=False)) == pytest.approx(-math.log(p), rel=1e-6)
    weak = torch.tensor([[9.0, 0.0], [0.0, 0.1]])  # only row 0 passes 0.95
    strong = torch.tensor([[1.0, 0.0], [5.0, 0.0]])
    loss, logs = fixmatch_loss(logits, y, weak, strong, 0.95, 1.0)
    unsup = -math.log(math.exp(1) / (math.exp(1) + 1)) / 2
    assert float(loss) == pytest.approx(-math.log(p) + unsup, rel=1e-6)
    assert logs["semi/mask_frac"] == 0.5


def test_degenerate_input():
    with pytest.raises(ValueError, match="K >= 2"):
        prototype_pseudo_labels(torch.ones(4, 1), torch.ones(4, 2))
    with pytest.raises(ValueError, match="N >= K"):
        prototype_pseudo_labels(torch.ones(2, 3) / 3, torch.ones(2, 2))
