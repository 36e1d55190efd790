"""TEMI loss: the derived vector, a naive loop over heads/pairs/clusters, invariances."""

import itertools
import math

import numpy as np
import pytest
import torch

from trainables.losses.temi import (
    ensemble_weight,
    teacher_probs,
    temi_loss,
    update_marginal,
)

SA = torch.tensor(
    [[[0.2, 0, -0.1], [0, 0.3, 0], [0.1, 0.1, 0.2]], [[0.1, 0, 0], [-0.2, 0.2, 0.1], [0, 0, 0.3]]]
)
SB = torch.tensor(
    [[[0.25, 0, 0], [0, 0.1, 0.05], [0, 0.2, 0.1]], [[0.1, 0.1, 0], [0, 0.3, 0], [0.1, 0, 0.2]]]
)


def step(sa, sb, ta, tb, marginal, beta=0.6, ts=0.1, tt=0.1, m=0.9):
    qa, qb = teacher_probs(ta, tt), teacher_probs(tb, tt)
    marginal = update_marginal(marginal, torch.cat([qa, qb], 1).mean(1), m)
    loss, per_head = temi_loss(sa, sb, ta, tb, marginal, beta, ts, tt)
    return loss, per_head, marginal, ensemble_weight(qa, qb)


def test_derived_vector():
    loss, per_head, marginal, w = step(SA, SB, 0.9 * SA, 0.9 * SB, torch.full((2, 3), 1 / 3))
    np.testing.assert_allclose(w.numpy(), [0.523378, 0.547093, 0.445626], atol=1e-6)
    np.testing.assert_allclose(
        marginal.numpy(), [[0.33708, 0.340872, 0.322049], [0.322721, 0.339718, 0.337561]], atol=1e-6
    )
    np.testing.assert_allclose(per_head.numpy(), [-0.434935, -0.456995], atol=1e-6)
    assert float(loss) == pytest.approx(-0.445965, abs=1e-6)


def naive(sa, sb, ta, tb, marg, beta, ts, tt):
    def sm(x, t):
        e = np.exp(x / t)
        return e / e.sum(-1, keepdims=True)

    h_, b_, c_ = sa.shape
    qsa, qsb, qta, qtb = sm(sa, ts), sm(sb, ts), sm(ta, tt), sm(tb, tt)
    w = [
        sum(qta[h, i, c] * qtb[h, i, c] for h in range(h_) for c in range(c_)) / h_
        for i in range(b_)
    ]
    per_head = []
    for h in range(h_):

        def pmi(qs, qt, i, h=h):
            return math.log(
                sum((qs[h, i, c] * qt[h, i, c]) ** beta / marg[h, c] for c in range(c_))
            )

        l1 = sum(-w[i] * pmi(qsb, qta, i) for i in range(b_)) / b_
        l2 = sum(-w[i] * pmi(qsa, qtb, i) for i in range(b_)) / b_
        per_head.append(0.5 * l1 + 0.5 * l2)
    return sum(per_head) / h_, per_head


@pytest.mark.parametrize("h,b,c,seed", list(itertools.product([1, 3], [1, 5], [2, 6], [0, 1])))
def test_against_naive_loop(h, b, c, seed):
    rng = np.random.default_rng(seed)
    sa, sb, ta, tb = (rng.normal(size=(h, b, c)) for _ in range(4))
    marg = rng.dirichlet(np.ones(c), size=h)
    loss, per_head = temi_loss(*(torch.tensor(x) for x in (sa, sb, ta, tb, marg)), 0.6, 0.1, 0.07)
    want, want_heads = naive(sa, sb, ta, tb, marg, 0.6, 0.1, 0.07)
    assert float(loss) == pytest.approx(want, rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(per_head.numpy(), want_heads, rtol=1e-5, atol=1e-6)


def test_invariant_when_clusters_and_marginal_are_permuted():
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(2, 7, 4, generator=g) for _ in range(4)]
    marg = torch.softmax(torch.randn(2, 4, generator=g), -1)
    perm = torch.randperm(4, generator=g)
    base = temi_loss(*xs, marg)[0]
    permuted = temi_loss(*(x[..., perm] for x in xs), marg[:, perm])[0]
    assert float(permuted) == pytest.approx(float(base), rel=1e-5)


def test_degenerate_input():
    z = torch.zeros(2, 3, 4)
    with pytest.raises(ValueError, match="H >= 1"):
        temi_loss(*(torch.zeros(0, 3, 4),) * 4, torch.ones(0, 4))
    with pytest.raises(ValueError, match="C >= 2"):
        temi_loss(*(torch.zeros(2, 3, 1),) * 4, torch.ones(2, 1))
    with pytest.raises(ValueError, match="beta"):
        temi_loss(z, z, z, z, torch.ones(2, 4) / 4, beta=0.0)
