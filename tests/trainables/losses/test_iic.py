"""IIC loss: the derived value, -MI by a naive double loop, invariances, degenerate input."""

import itertools
import math

import numpy as np
import pytest
import torch

from trainables.losses.iic import iic_loss, joint_distribution


def test_derived_value():
    z = torch.tensor([[2, 0], [0, 2], [1, 0], [0, 0.5]])
    z2 = torch.tensor([[1.5, 0], [0, 1], [0.5, 0], [0.3, 0.6]])
    p = joint_distribution(z, z2)
    np.testing.assert_allclose(p.numpy(), [[0.341974, 0.188418], [0.188418, 0.281191]], atol=1e-6)
    assert float(iic_loss(z, z2)) == pytest.approx(-0.0299258, abs=1e-6)


def naive_neg_mi(a, b, lam):
    za = np.exp(a) / np.exp(a).sum(1, keepdims=True)
    zb = np.exp(b) / np.exp(b).sum(1, keepdims=True)
    n, c = za.shape
    p = [[sum(za[i, x] * zb[i, y] for i in range(n)) for y in range(c)] for x in range(c)]
    p = [[(p[x][y] + p[y][x]) / 2 for y in range(c)] for x in range(c)]
    total = sum(map(sum, p))
    p = [[v / total for v in row] for row in p]
    pi = [sum(p[x]) for x in range(c)]
    pj = [sum(p[x][y] for x in range(c)) for y in range(c)]
    return -sum(
        p[x][y] * (math.log(p[x][y]) - lam * math.log(pi[x]) - lam * math.log(pj[y]))
        for x in range(c)
        for y in range(c)
    )


@pytest.mark.parametrize(
    "n,c,lam,seed", list(itertools.product([1, 4, 30], [2, 3, 7], [1.0, 1.5], [0, 1]))
)
def test_against_naive_double_loop(n, c, lam, seed):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(n, c)), rng.normal(size=(n, c))
    got = float(iic_loss(torch.tensor(a), torch.tensor(b), lam))
    # float32 probabilities: MI near 0 is a difference of O(1) terms
    assert got == pytest.approx(naive_neg_mi(a, b, lam), rel=1e-4, abs=1e-6)


def test_optimum_is_minus_log_c_and_invariances():
    c = 5
    z = torch.eye(c).repeat(4, 1) * 40  # confident, balanced, pairs agree
    assert float(iic_loss(z, z)) == pytest.approx(-math.log(c), abs=1e-5)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(16, c, generator=g), torch.randn(16, c, generator=g)
    perm = torch.randperm(c, generator=g)
    assert float(iic_loss(a[:, perm], b[:, perm])) == pytest.approx(float(iic_loss(a, b)), abs=1e-6)
    assert float(iic_loss(b, a)) == pytest.approx(float(iic_loss(a, b)), abs=1e-6)


def test_degenerate_input():
    with pytest.raises(ValueError, match="C >= 2"):
        iic_loss(torch.zeros(4, 1), torch.zeros(4, 1))
    with pytest.raises(ValueError, match="n >= 1"):
        iic_loss(torch.zeros(0, 3), torch.zeros(0, 3))
    with pytest.raises(ValueError, match="both views"):
        iic_loss(torch.zeros(4, 3), torch.zeros(5, 3))
