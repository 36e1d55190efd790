"""GCD protocol pieces against hand-computed cases (docs/gcd.md, GCD: the labelled draw and
GCD: accuracy; docs/methods.md, SS-k-means: defaults)."""

import numpy as np
import pytest

from deepclust.errors import UserError
from deepclust.gcd import (
    default_old_classes,
    gcd_accuracy,
    gcd_scores,
    make_split,
    published_splits,
    ss_kmeans,
)

OLD = (0, 1)
# docs/gcd.md, GCD: accuracy: id -> (y, p, v2, v1, v2b) with results as (All, Old, New)
CASES = {
    "T1": ([0, 0, 1, 1, 2, 2, 3, 3], [5, 5, 7, 7, 1, 1, 0, 0], (1, 1, 1), (1, 1, 1), (1, 1, 1)),
    "T2": (
        [0, 0, 0, 0, 1, 1, 1, 2, 2, 2],
        [0, 0, 0, 0, 1, 1, 1, 0, 0, 0],
        (0.7, 1.0, 0.0),
        (1, 1, 1),
        (0.6667, 1.0, 0.0),
    ),
    "T3": (
        [0, 0, 1, 1, 2, 2, 3, 3],
        [0, 0, 1, 1, 2, 3, 4, 4],
        (0.875, 1.0, 0.75),
        (0.875, 1.0, 0.75),
        (0.875, 1.0, 0.75),
    ),
    "T4": (
        [0, 0, 0, 1, 2, 2],
        [0, 0, 0, 0, 0, 0],
        (0.5, 0.75, 0.0),
        (0.8333, 0.75, 1.0),
        (0.3333, 0.5, 0.0),
    ),
    "T5": (
        [0, 0, 1, 1, 2, 2, 2, 3],
        [0, 0, 1, 1, 1, 1, 1, 3],
        (0.75, 0.5, 1.0),
        (1, 1, 1),
        (0.75, 0.5, 1.0),
    ),
    "T6": (
        [0] * 8 + [1] * 2 + [2] * 2 + [3] * 8,
        [0] * 8 + [0, 1, 2, 2] + [3] * 6 + [2, 2],
        (0.85, 0.9, 0.8),
        (0.85, 0.9, 0.8),
        (0.8125, 0.75, 0.875),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("variant", ["v2", "v1", "v2b"])
def test_accuracy_matches_the_hand_computed_cases(case, variant):
    y, p, *expected = CASES[case]
    want = dict(zip(["v2", "v1", "v2b"], expected, strict=True))[variant]
    got = gcd_accuracy(np.array(y), np.array(p), OLD, variant)
    assert [got["all"], got["old"], got["new"]] == pytest.approx(list(want), abs=1e-4)


def test_relabelling_clusters_never_changes_the_result_and_negative_ids_raise():
    y, p = np.array(CASES["T6"][0]), np.array(CASES["T6"][1])
    perm = np.array([7, 3, 9, 1])  # any injective relabelling
    for variant in ("v2", "v1", "v2b"):
        assert gcd_accuracy(y, perm[p], OLD, variant) == gcd_accuracy(y, p, OLD, variant)
    with pytest.raises(ValueError, match="non-negative"):
        gcd_accuracy(y, np.where(p == 3, -1, p), OLD)


def test_old_mask_is_membership_not_an_id_threshold():
    y = np.array([0, 0, 5, 5, 5, 2])
    got = gcd_accuracy(y, np.array([1, 1, 2, 2, 2, 2]), (5,))
    assert got["old"] == 1.0 and got["new"] == pytest.approx(2 / 3)  # old = {5}, not "id < 1"


def test_split_follows_the_protocol_rule():
    labels = np.repeat(np.arange(10), 5000)  # CIFAR-10-sized train pool
    s = make_split(labels, default_old_classes("cifar10", 10))
    assert s.old_classes == (0, 1, 2, 3, 4)
    assert len(s.labelled_idx) == 12_500 and len(s.unlabelled_idx) == 37_500
    old_pos = np.flatnonzero(labels < 5)
    draw = np.random.RandomState(0).choice(len(old_pos), 12_500, replace=False)
    np.testing.assert_array_equal(s.labelled_idx, np.sort(old_pos[draw]))
    np.testing.assert_array_equal(s.labelled_y, labels[s.labelled_idx])
    assert set(s.labelled_idx).isdisjoint(s.unlabelled_idx)
    assert len(s.labelled_idx) + len(s.unlabelled_idx) == len(labels)
    assert default_old_classes("cifar100", 100) == tuple(range(80))


def test_held_out_labelled_images_leave_training_and_scoring():
    labels = np.repeat(np.arange(4), 50)
    s = make_split(labels, (0, 1), val_frac=0.2)
    drawn = np.concatenate([s.labelled_idx, s.val_idx])  # the 50% draw is global, not per class
    per_class = np.bincount(labels[drawn], minlength=2)[:2]
    assert len(s.val_idx) == sum(int(0.2 * c) for c in per_class)  # 20% of each Old class
    assert set(labels[s.val_idx]) == {0, 1}
    everything = np.concatenate([s.labelled_idx, s.val_idx, s.unlabelled_idx])
    assert sorted(everything) == list(range(len(labels)))
    scores = gcd_scores(labels.copy(), labels, s)
    assert scores["acc"] == 1.0 and scores["val_acc"] == 1.0


@pytest.mark.parametrize("old", [(), (0, 1, 2, 3), (7,)])
def test_bad_old_classes_are_a_clear_error(old):
    with pytest.raises(UserError, match="Old classes"):
        make_split(np.repeat(np.arange(4), 5), old)


def test_ss_kmeans_toy_case():
    xl = np.array([[-0.1], [0.1], [9.9], [10.1]])
    xu = np.array([[0.2], [9.8], [20.0], [20.2], [19.8]])
    r = ss_kmeans(xl, np.array([0, 0, 1, 1]), xu, 3, n_init=5, normalize=False)
    np.testing.assert_array_equal(r.labels_u, [0, 1, 2, 2, 2])
    np.testing.assert_allclose(r.centroids.ravel(), [0.0666667, 9.9333333, 20.0], atol=1e-6)
    assert r.inertia == pytest.approx(0.17333, abs=1e-4)


def test_ss_kmeans_labelled_class_without_images_and_empty_cluster_stay_finite():
    rng = np.random.default_rng(0)
    xu = rng.normal(size=(30, 4))
    xl = rng.normal(size=(4, 4))
    r = ss_kmeans(xl, np.array([2, 2, 5, 5]), xu, 6, n_init=3, seed=1)
    assert np.isfinite(r.centroids).all() and r.labels_u.max() < 6
    with pytest.raises(UserError, match="K >= labelled classes"):
        ss_kmeans(xl, np.array([0, 1, 2, 3]), xu, 3)


def test_published_splits_partition_their_classes():
    data = published_splits()
    sizes = {"cub": (100, 200), "scars": (98, 196), "cifar100": (80, 100)}
    for name, (n_old, n_all) in sizes.items():
        old = default_old_classes(name, n_all)
        assert len(set(old)) == n_old and 0 <= min(old) and max(old) < n_all
    assert len(set(data["imagenet100"]["old_wnids"])) == 50


def test_aircraft_old_classes_are_remapped_by_name():
    # torchvision orders variants by variants.txt; the SSB ranks refer to sorted names
    names = tuple(f"v{i:03d}" for i in range(100))[::-1]  # a loader in reverse-sorted order
    old = default_old_classes("aircraft", 100, names)
    ranks = published_splits()["aircraft"]
    want = {f"v{r:03d}" for r in ranks["old_sorted_name_ranks"]}
    assert {names[i] for i in old} == want and len(old) == 50


def test_imagenet100_needs_the_gcd_subset():
    data = published_splits()
    wnids = tuple(data["imagenet100"]["old_wnids"]) + tuple(f"n9{i:07d}" for i in range(50))
    assert default_old_classes("imagenet100", 100, wnids) == tuple(range(50))
    with pytest.raises(UserError, match="not the GCD ImageNet-100 subset"):
        default_old_classes("imagenet100", 100, tuple(f"n8{i:07d}" for i in range(100)))
    with pytest.raises(UserError, match="GCD split lists 200"):
        default_old_classes("cub", 10)
