"""Oracle tests: the vectorised losses against naive loops over the equations."""

import itertools
import math

import numpy as np
import pytest
import torch

from trainables.losses.neighbors import (
    entropy_term,
    negative_loss,
    neighbor_clustering_loss,
    positive_loss,
)

PA = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
PP = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
PN = torch.tensor([[0.1, 0.1, 0.8], [0.8, 0.1, 0.1]])


def spec_loss(w_pos, w_neg, w_ent, mask=None):
    loss, _ = neighbor_clustering_loss(
        PA.log(), PP.log(), PN.log()[:, None, :], mask, w_pos, w_neg, w_ent
    )
    return float(loss)


def test_hand_computed_values_from_the_spec():
    assert float(positive_loss(PA.log(), PP.log())) == pytest.approx(0.683638, abs=1e-5)
    assert float(negative_loss(PA.log(), PN.log()[:, None])) == pytest.approx(0.186330, abs=1e-5)
    assert float(entropy_term(PA.log())) == pytest.approx(-1.010413, abs=1e-5)
    assert spec_loss(1, 1, 5) == pytest.approx(-4.182096, abs=1e-5)
    assert spec_loss(1, 0, 5) == pytest.approx(-4.368426, abs=1e-5)
    assert spec_loss(1, 1, 0) == pytest.approx(0.869968, abs=1e-5)
    assert spec_loss(1, 2, 2) == pytest.approx(-0.964528, abs=1e-5)
    mask = torch.tensor([True, False])
    assert float(positive_loss(PA.log(), PP.log(), mask)) == pytest.approx(0.713350, abs=1e-5)


def test_uniform_predictions():
    z = torch.zeros(5, 4)
    assert float(positive_loss(z, z)) == pytest.approx(math.log(4), abs=1e-6)
    assert float(negative_loss(z, z[:, None])) == pytest.approx(-math.log(0.75), abs=1e-6)
    assert float(entropy_term(z)) == pytest.approx(-math.log(4), abs=1e-6)


def naive(a, p, n, mask, w_pos, w_neg, w_ent, eps=1e-8):
    """Straight from the equations, one scalar at a time."""
    pa, pp, pn = (np.exp(x) / np.exp(x).sum(-1, keepdims=True) for x in (a, p, n))
    b, n_neg, c = pn.shape
    pos_terms = [
        -math.log(sum(pa[i, k] * pp[i, k] for k in range(c)) + eps) for i in range(b) if mask[i]
    ]
    l_pos = sum(pos_terms) / max(1, len(pos_terms))
    l_neg = -sum(
        math.log(1 - sum(pa[i, k] * pn[i, t, k] for k in range(c)) + eps)
        for i in range(b)
        for t in range(n_neg)
    ) / (b * n_neg)
    pbar = [sum(pa[i, k] for i in range(b)) / b for k in range(c)]
    l_ent = sum(q * math.log(max(q, eps)) for q in pbar)
    return w_pos * l_pos + w_neg * l_neg + w_ent * l_ent


@pytest.mark.parametrize(
    "b,c,n_neg,scale,weights",
    itertools.product([1, 3, 8], [2, 5], [1, 3], [0.5, 4.0], [(1, 1, 5), (1, 0.3, 2)]),
)
def test_matches_a_naive_loop(b, c, n_neg, scale, weights):
    rng = np.random.default_rng(b * 100 + c * 10 + n_neg)
    a, p = rng.normal(size=(b, c)) * scale, rng.normal(size=(b, c)) * scale
    n = rng.normal(size=(b, n_neg, c)) * scale
    mask = rng.random(b) > 0.3
    got, _ = neighbor_clustering_loss(
        *(torch.tensor(x, dtype=torch.float32) for x in (a, p, n)), torch.tensor(mask), *weights
    )
    assert float(got) == pytest.approx(naive(a, p, n, mask, *weights), abs=1e-4)


def test_invariant_to_relabelling_clusters_and_symmetric_in_the_pair():
    g = torch.Generator().manual_seed(0)
    a, p, n = (
        torch.randn(6, 5, generator=g),
        torch.randn(6, 5, generator=g),
        torch.randn(6, 2, 5, generator=g),
    )
    perm = torch.randperm(5, generator=g)
    base, _ = neighbor_clustering_loss(a, p, n)
    permuted, _ = neighbor_clustering_loss(a[:, perm], p[:, perm], n[:, :, perm])
    assert float(base) == pytest.approx(float(permuted), abs=1e-6)
    assert float(positive_loss(a, p)) == pytest.approx(float(positive_loss(p, a)), abs=1e-6)


def test_gradients_reach_every_branch():
    a, p, n = (torch.randn(*s, requires_grad=True) for s in [(4, 3), (4, 3), (4, 2, 3)])
    loss, logs = neighbor_clustering_loss(a, p, n)
    loss.backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (a, p, n))
    assert set(logs) == {"loss/pos", "loss/neg", "loss/ent"}


@pytest.mark.parametrize("bad", [torch.zeros(3, 1), torch.zeros(0, 4), torch.zeros(4)])
def test_degenerate_inputs_raise_clear_errors(bad):
    with pytest.raises(ValueError, match="C >= 2|at least one anchor"):
        positive_loss(bad, bad)


def test_negative_shape_is_checked():
    with pytest.raises(ValueError, match="negative_logits must be"):
        negative_loss(torch.zeros(2, 3), torch.zeros(2, 3))


def test_supervised_term_naive_loop_and_ignores_unlabelled_rows():
    from trainables.losses.neighbors import supervised_term

    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0], [0.0, 3.0, 1.0]])
    target = torch.tensor([0, -1, 2])
    naive = 0.0
    for row, t in zip(logits.tolist(), target.tolist(), strict=True):
        if t >= 0:
            naive += -(row[t] - math.log(sum(math.exp(v) for v in row)))
    assert float(supervised_term(logits, target)) == pytest.approx(naive / 2, rel=1e-6)
    perm = torch.tensor([2, 0, 1])  # relabel clusters and targets together: unchanged
    inv = torch.argsort(perm)
    moved = torch.where(target >= 0, inv[target.clamp(min=0)], target)
    assert float(supervised_term(logits[:, perm], moved)) == pytest.approx(naive / 2, rel=1e-6)
    assert float(supervised_term(logits, torch.full((3,), -1))) == 0.0
    with pytest.raises(ValueError, match="C >= 2"):
        supervised_term(torch.zeros(2, 1), torch.tensor([0, 0]))


def test_saturated_pairs_stay_at_the_eps_bound_instead_of_inf():
    # a confident anchor and a negative (or a positive far from it) in one-hot form: the float32
    # dot is exactly 1 (or 0); the loss must be -log(eps), finite, as the equation with eps says
    same = torch.tensor([[60.0, 0.0, 0.0]])
    other = torch.tensor([[0.0, 60.0, 0.0]])
    bound = -math.log(1e-8)
    assert float(negative_loss(same, same[:, None, :])) == pytest.approx(bound, rel=1e-5)
    assert float(positive_loss(same, other)) == pytest.approx(bound, rel=1e-5)
    loss, _ = neighbor_clustering_loss(same, other, same[:, None, :])
    assert torch.isfinite(loss)
