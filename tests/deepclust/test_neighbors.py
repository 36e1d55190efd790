"""Hand-checked cases of docs/methods.md, UNIC: hand-checked cases (computed by hand)."""

import math

import numpy as np
import pytest
import torch

from deepclust.errors import UserError
from deepclust.neighbors import (
    LabelledPool,
    NegativeSampler,
    clean_positives,
    frac_threshold,
    label_veto,
    negative_thresholds,
    shared_counts,
    spread_sizes,
    vote_counts,
)

# classes A = {0,1,2,3}, B = {4,5,6,7}; rows are nbr[i, :3]
NBR = np.array(
    [[1, 2, 3], [0, 2, 3], [0, 1, 3], [2, 4, 0], [5, 6, 3], [4, 6, 7], [5, 7, 4], [6, 5, 4]]
)
LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1])


def kept(table, i):
    return [int(j) for j in table.idx[i] if j >= 0]


def test_shared_counts():
    expected = {
        0: {1: 2, 2: 2, 3: 1},
        1: {0: 2, 2: 2, 3: 2},
        2: {0: 2, 1: 2, 3: 1},
        3: {2: 1, 4: 0, 0: 1},
        4: {5: 1, 6: 1, 3: 0},
        5: {4: 1, 6: 2, 7: 2},
        6: {5: 2, 7: 2, 4: 1},
        7: {6: 2, 5: 2, 4: 2},
    }
    shared = shared_counts(NBR, 3, 3)
    for i, row in expected.items():
        assert dict(zip(NBR[i].tolist(), shared[i].tolist(), strict=True)) == row


def test_pair_overlap_one_third():
    t = clean_positives(NBR, 3, "pair_overlap", min_shared_frac=1 / 3)
    assert t.count.sum() == 22
    assert kept(t, 3) == [2, 0] and kept(t, 4) == [5, 6]
    for i in (0, 1, 2, 5, 6, 7):
        assert kept(t, i) == NBR[i].tolist()
    assert clean_positives(NBR, 3, "none").precision(LABELS) == pytest.approx(22 / 24)
    assert t.precision(LABELS) == 1.0


def test_pair_overlap_two_thirds():
    t = clean_positives(NBR, 3, "pair_overlap", min_shared_frac=2 / 3)
    assert t.count.sum() == 14
    want = {0: [1, 2], 1: [0, 2, 3], 2: [0, 1], 3: [], 4: [], 5: [6, 7], 6: [5, 7], 7: [6, 5, 4]}
    assert {i: kept(t, i) for i in range(8)} == want
    assert t.empty_fraction() == 0.25


def test_votes():
    t = clean_positives(NBR, 3, "votes", min_shared_frac=2 / 3)  # threshold 2
    want = {0: [2, 3], 1: [0, 2, 3], 2: [0, 3], 3: [], 4: [], 5: [4, 6], 6: [5, 4], 7: [6, 5, 4]}
    assert {i: kept(t, i) for i in range(8)} == want
    one = clean_positives(NBR, 3, "votes", min_shared_frac=1 / 3)  # threshold 1 == case 2
    two = clean_positives(NBR, 3, "pair_overlap", min_shared_frac=1 / 3)
    np.testing.assert_array_equal(one.idx, two.idx)
    assert vote_counts(NBR, 3, 3).shape == (8, 3)


def test_anchor_spread():
    assert spread_sizes(NBR, 3, 3).tolist() == [4, 4, 4, 6, 6, 4, 4, 4]
    t = clean_positives(NBR, 3, "anchor_spread", spread_drop_frac=0.25)
    assert kept(t, 3) == [] and kept(t, 4) == [] and t.count.sum() == 18


def test_thresholds_are_robust_to_float_error():
    assert frac_threshold(0.2, 20) == 4 and frac_threshold(1 / 3, 3) == 1


def test_fields_beyond_the_table_are_one_line_errors():
    with pytest.raises(UserError, match="pos_k=4 must be in \\[1, kmax=3\\]"):
        clean_positives(NBR, 4)
    with pytest.raises(UserError, match="clean_m=5"):
        clean_positives(NBR, 3, m=5)
    with pytest.raises(UserError, match="unknown clean_rule"):
        clean_positives(NBR, 3, "magic")


def _circle_features():
    angles = np.deg2rad([0, 10, 20, 40, 90, 100, 180, 200])
    return np.stack([np.cos(angles), np.sin(angles)], 1).astype(np.float32)


def _pool(sampler, anchor, draws=400):
    gen = torch.Generator().manual_seed(0)
    return set(sampler.sample(torch.full((draws,), anchor), 1, gen).flatten().tolist())


@pytest.mark.parametrize("rho,pool", [(0.25, {3, 4, 5, 6, 7}), (0.5, {5, 6, 7}), (0.9, {6})])
def test_negative_pools_exact_form(rho, pool):
    feats = _circle_features()
    t = negative_thresholds(feats, rho, ref_size=10**6)
    nbr = np.array([[1, 2]] + [[(i + 1) % 8, (i + 2) % 8] for i in range(1, 8)])
    nbr[3] = [2, 1]
    sampler = NegativeSampler(feats, nbr, t, pos_k=1, m=2, exclude_shared=False, tries=64)
    assert _pool(sampler, 0) == pool


def test_negatives_exclude_shared_neighbourhoods():
    feats = _circle_features()
    t = negative_thresholds(feats, 0.25, ref_size=10**6)
    nbr = np.array([[1, 2], [2, 3], [3, 1], [2, 1], [5, 6], [4, 6], [7, 5], [6, 5]])
    sampler = NegativeSampler(feats, nbr, t, pos_k=1, m=2, exclude_shared=True, tries=64)
    assert _pool(sampler, 0) == {4, 5, 6, 7}


def test_rho_zero_is_uniform_outside_the_positive_candidates():
    feats = _circle_features()
    t = negative_thresholds(feats, 0.0)
    assert np.isinf(t).all()
    sampler = NegativeSampler(feats, NBR, t, pos_k=3, m=3, exclude_shared=False, tries=64)
    assert _pool(sampler, 0) == {4, 5, 6, 7}


def test_sampled_reference_threshold_approximates_the_exact_rank():
    feats = np.random.default_rng(0).normal(size=(3000, 8)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    exact = negative_thresholds(feats, 0.9, ref_size=10**6)
    approx = negative_thresholds(feats, 0.9, ref_size=1024)
    sims = feats @ feats.T
    np.fill_diagonal(sims, np.inf)
    frac_below = (sims < approx[:, None]).sum(1) / 2999
    assert abs(frac_below.mean() - 0.1) < 0.01 and np.abs(exact - approx).mean() < 0.02
    assert math.isfinite(float(exact.max()))


# docs/methods.md, UNIC: hand-checked cases, case 10: the same graph, labelled
# {0: A, 1: A, 4: B, 5: B}, the rest unlabelled (-1)
GCD_LABELS = np.array([0, 0, -1, -1, 1, 1, -1, -1])


def _pairs(draw, anchors, reps=300):
    gen = torch.Generator().manual_seed(0)
    a = torch.tensor(anchors * reps)
    ids, valid = draw(a, gen)
    ids, valid = ids.reshape(len(a), -1), valid.reshape(len(a), -1)
    out = {i: set() for i in anchors}
    for x, row, ok in zip(a.tolist(), ids.tolist(), valid.tolist(), strict=True):
        out[x] |= {j for j, v in zip(row, ok, strict=True) if v}
    return out


def test_gcd_labelled_positives_and_label_negatives():
    pool = LabelledPool(GCD_LABELS)
    pos = _pairs(pool.positives, [0, 4, 3])
    assert pos == {0: {1}, 4: {5}, 3: set()}  # unlabelled anchors keep their mined positives
    neg = _pairs(lambda a, g: pool.negatives(a, 2, g), [0, 4, 3])
    assert neg == {0: {4, 5}, 4: {0, 1}, 3: set()}  # gcd_neg_source="labels" pool


def test_gcd_label_veto_acts_before_cleaning():
    t = clean_positives(
        NBR, 3, "pair_overlap", m=3, min_shared_frac=1 / 3, veto=label_veto(NBR, GCD_LABELS)
    )
    assert kept(t, 3) == [2, 0]  # unlabelled anchor 3: as without labels (sigma = 1/3)
    labels = GCD_LABELS.copy()
    labels[3] = 0  # if 3 were labelled A, the pairs 3->4 and 4->3 are vetoed
    veto = label_veto(NBR, labels)
    assert veto[3].tolist() == [False, True, False] and veto[4].tolist() == [False, False, True]
    t = clean_positives(NBR, 3, "none", veto=veto)
    assert 4 not in kept(t, 3) and 3 not in kept(t, 4)


def test_gcd_negatives_never_share_the_labelled_anchors_label():
    feats = _circle_features()
    t = negative_thresholds(feats, 0.0)
    nbr = np.array([[2, 3]] * 8)
    labels = np.array([0, 0, -1, -1, 1, 1, -1, -1])
    sampler = NegativeSampler(
        feats, nbr, t, pos_k=1, m=2, exclude_shared=False, tries=64, labels=labels
    )
    assert 1 not in _pool(sampler, 0) and 1 in _pool(
        NegativeSampler(feats, nbr, t, 1, 2, False, 64), 0
    )
