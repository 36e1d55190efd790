"""SCAN and self-labelling losses: values derived in numpy from the official definitions, a
naive oracle, invariances."""

import itertools
import math

import numpy as np
import pytest
import torch

from trainables.losses.scan import scan_loss, selflabel_loss


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_derived_values():
    a = torch.tensor([[2, 0, -1], [0, 1, 0], [-1, 0.5, 2]])
    n = torch.tensor([[1.5, 0.5, -1], [0.2, 0.8, 0.1], [0, 0, 1]])
    loss, logs = scan_loss(a, n, 5.0)
    assert logs["loss/consistency"] == pytest.approx(0.709211, abs=1e-5)
    assert logs["loss/entropy"] == pytest.approx(1.093746, abs=1e-5)
    assert float(loss) == pytest.approx(-4.759517, abs=1e-5)
    weak = torch.tensor([[8.0, 0, 0], [0, 7, 0], [9, 0, 0], [0, 0, 1], [6, 0, 0]])
    strong = torch.tensor([[2.0, 0, 0], [0, 1, 0], [0.5, 0.5, 0], [0, 0, 0], [1, 2, 0]])
    loss, logs = selflabel_loss(weak, strong, 0.99, balanced=True)
    assert float(loss) == pytest.approx(0.709917, abs=1e-5)
    assert logs["selflabel/confident_frac"] == pytest.approx(0.8)


def naive_scan(a, n, lam):
    pa, pn = softmax(a), softmax(n)
    b, c = pa.shape
    cons = -sum(math.log(sum(pa[i, k] * pn[i, k] for k in range(c)) + 1e-8) for i in range(b)) / b
    pbar = [sum(pa[i, k] for i in range(b)) / b for k in range(c)]
    ent = -sum(p * math.log(max(p, 1e-8)) for p in pbar)
    return cons - lam * ent


def naive_selflabel(weak, strong, thr):
    pw, ps = softmax(weak), softmax(strong)
    rows = [i for i in range(len(pw)) if pw[i].max() > thr]
    targets = [int(pw[i].argmax()) for i in rows]
    counts = {t: targets.count(t) for t in set(targets)}
    w = {t: len(rows) / counts[t] for t in counts}
    num = sum(w[t] * -math.log(ps[i, t]) for i, t in zip(rows, targets, strict=True))
    return num / sum(w[t] for t in targets)


@pytest.mark.parametrize("b,c,seed", list(itertools.product([1, 3, 17], [2, 5, 10], [0, 1])))
def test_against_naive_loops(b, c, seed):
    rng = np.random.default_rng(seed)
    a, n = rng.normal(size=(b, c)) * 2, rng.normal(size=(b, c)) * 2
    got = float(scan_loss(torch.tensor(a), torch.tensor(n), 5.0)[0])
    assert got == pytest.approx(naive_scan(a, n, 5.0), rel=1e-5, abs=1e-6)
    weak = rng.normal(size=(b, c)) * 6
    weak[0, 0] = 50.0  # at least one confident row
    strong = rng.normal(size=(b, c))
    got = float(selflabel_loss(torch.tensor(weak), torch.tensor(strong), 0.9)[0])
    assert got == pytest.approx(naive_selflabel(weak, strong, 0.9), rel=1e-5)


def test_relabelling_invariance():
    g = torch.Generator().manual_seed(0)
    a, n = torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g)
    perm = torch.randperm(6, generator=g)
    assert float(scan_loss(a[:, perm], n[:, perm])[0]) == pytest.approx(float(scan_loss(a, n)[0]))
    weak = a * 10
    assert float(selflabel_loss(weak[:, perm], n[:, perm], 0.5)[0]) == pytest.approx(
        float(selflabel_loss(weak, n, 0.5)[0])
    )


def test_degenerate_input():
    with pytest.raises(ValueError, match="C >= 2"):
        scan_loss(torch.zeros(4, 1), torch.zeros(4, 1))
    with pytest.raises(ValueError, match="B=0"):
        scan_loss(torch.zeros(0, 3), torch.zeros(0, 3))
    with pytest.raises(ValueError, match="threshold"):
        selflabel_loss(torch.zeros(4, 3), torch.zeros(4, 3), 0.99)


def test_heads_side_by_side_sum_their_losses():
    """(R, B, C) logits: the loss is the sum of the R heads' (B, C) losses, so each head's
    gradient is what it would get alone; the logs are the heads' means."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 6, 5, generator=g, requires_grad=True)
    n = torch.randn(4, 6, 5, generator=g)
    loss, logs = scan_loss(a, n, 3.0)
    alone = [scan_loss(a[r], n[r], 3.0) for r in range(4)]
    assert float(loss) == pytest.approx(sum(float(x) for x, _ in alone), rel=1e-6)
    for key in ("loss/consistency", "loss/entropy"):
        assert logs[key] == pytest.approx(np.mean([lg[key] for _, lg in alone]), rel=1e-6)
    (grad,) = torch.autograd.grad(loss, a)
    (grad0,) = torch.autograd.grad(alone[0][0], a)
    assert torch.allclose(grad[0], grad0[0], atol=1e-6)
