"""Generalized category discovery (docs/gcd.md): the labelled/unlabelled split, the
v2 accuracy (one Hungarian matching; All / Old / New) and semi-supervised k-means.

Visibility contract (docs/gcd.md, GCD: what methods receive): a method sees ``labelled_idx``
and ``labelled_y`` only; the labels of unlabelled images and their Old/New status stay with the
scorer (``gcd_scores``).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepclust.errors import UserError
from deepclust.metrics import balanced_acc, hungarian_acc, hungarian_matching

SPLITS_FILE = Path(__file__).parent / "data" / "gcd_splits.json"


@functools.cache
def published_splits() -> dict:
    """The published Old-class lists (docs/gcd.md, GCD: Old classes), kept as plain data."""
    return json.loads(SPLITS_FILE.read_text())


def default_old_classes(
    benchmark: str, num_classes: int, class_names: tuple[str, ...] = ()
) -> tuple[int, ...]:
    """The benchmark's Old (known) classes in its loader's label space.

    Published splits (docs/gcd.md, GCD: Old classes): CIFAR-100 0-79; CUB, Stanford Cars and
    FGVC-Aircraft from the SSB lists (Aircraft's ranks of sorted variant names, remapped by name
    because torchvision orders classes by ``variants.txt``); ImageNet-100 by wnid. Every other
    benchmark: the first floor(C / 2) class ids (CIFAR-10: airplane ... deer; digits: 0-4).
    """
    if num_classes < 2:
        raise UserError(f"GCD needs at least 2 classes, '{benchmark}' has {num_classes}")
    entry = published_splits().get(benchmark)
    if entry is None:
        return tuple(range(num_classes // 2))
    if entry["num_classes"] != num_classes:
        raise UserError(
            f"'{benchmark}' has {num_classes} classes but its GCD split lists "
            f"{entry['num_classes']}; check the dataset under --data-root"
        )
    if "old" in entry:
        return tuple(entry["old"])
    if "old_sorted_name_ranks" in entry:
        ranked = sorted(class_names)
        wanted = {ranked[r] for r in entry["old_sorted_name_ranks"]}
        return tuple(i for i, name in enumerate(class_names) if name in wanted)
    wanted = set(entry["old_wnids"])
    old = tuple(i for i, name in enumerate(class_names) if name in wanted)
    if len(old) != len(wanted):
        raise UserError(
            f"'{benchmark}' is not the GCD ImageNet-100 subset ({len(old)} of its 50 Old "
            "wnids present); list the seed-0 subset's 100 wnids in its subset file"
        )
    return old


@dataclass(frozen=True)
class GcdSplit:
    """Row ids into the train pool. ``labelled_idx``/``labelled_y``: what methods may see
    (sorted by row id); ``val_idx``: labelled rows held out for model selection (their labels
    go to the scorer, not to training); ``unlabelled_idx``: the rows that are scored."""

    labelled_idx: np.ndarray
    labelled_y: np.ndarray
    unlabelled_idx: np.ndarray
    val_idx: np.ndarray
    old_classes: tuple[int, ...]
    num_classes: int

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "labelled_idx": self.labelled_idx,
            "labelled_y": self.labelled_y,
            "unlabelled_idx": self.unlabelled_idx,
            "val_idx": self.val_idx,
            "old_classes": np.asarray(self.old_classes, dtype=np.int64),
            "num_classes": np.asarray(self.num_classes),
        }

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> GcdSplit:
        return cls(
            a["labelled_idx"],
            a["labelled_y"],
            a["unlabelled_idx"],
            a["val_idx"],
            tuple(int(c) for c in a["old_classes"]),
            int(a["num_classes"]),
        )


def make_split(
    labels: np.ndarray,
    old_classes: tuple[int, ...],
    labelled_frac: float = 0.5,
    val_frac: float = 0.0,
    seed: int = 0,
) -> GcdSplit:
    """The standard GCD split (docs/gcd.md, GCD: the labelled draw):
    ``floor(labelled_frac * N_old)`` of the Old-class images, drawn uniformly over all of them
    (not per class) with numpy's legacy generator seeded ``seed`` (always 0 in the protocol);
    every other image is unlabelled.

    ``val_frac`` > 0 holds out that fraction of the labelled images of each Old class (seed 0,
    docs/gcd.md, GCD: held-out labelled images) for model selection; they are neither trained
    on as labelled nor scored.
    """
    labels = np.asarray(labels)
    if not 0.0 < labelled_frac <= 1.0 or not 0.0 <= val_frac < 1.0:
        raise UserError(
            f"labelled fraction must be in (0, 1] and val fraction in [0, 1); "
            f"got {labelled_frac}, {val_frac}"
        )
    num_classes = int(labels.max()) + 1
    old = np.asarray(sorted(set(old_classes)), dtype=np.int64)
    if len(old) == 0 or old.min() < 0 or old.max() >= num_classes or len(old) >= num_classes:
        raise UserError(
            f"Old classes must be a non-empty proper subset of 0..{num_classes - 1}, got "
            f"{tuple(old_classes)}"
        )
    old_pos = np.flatnonzero(np.isin(labels, old))  # canonical (row) order
    draw = np.random.RandomState(seed).choice(
        len(old_pos), math.floor(labelled_frac * len(old_pos)), replace=False
    )
    labelled = np.sort(old_pos[draw])
    val = np.zeros(0, dtype=np.int64)
    if val_frac > 0:
        rng = np.random.RandomState(0)
        held = []
        for c in old:
            rows = labelled[labels[labelled] == c]
            held.append(rng.choice(rows, math.floor(val_frac * len(rows)), replace=False))
        val = np.sort(np.concatenate(held)).astype(np.int64)
        labelled = np.setdiff1d(labelled, val)
    unlabelled = np.setdiff1d(np.arange(len(labels)), np.concatenate([labelled, val]))
    return GcdSplit(
        labelled_idx=labelled.astype(np.int64),
        labelled_y=labels[labelled].astype(np.int64),
        unlabelled_idx=unlabelled.astype(np.int64),
        val_idx=val,
        old_classes=tuple(int(c) for c in old),
        num_classes=num_classes,
    )


def _relabel(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p)
    if p.size and p.min() < 0:
        raise ValueError("cluster ids must be non-negative (relabel -1 / noise first)")
    return np.unique(p, return_inverse=True)[1].reshape(-1)


def gcd_accuracy(
    y: np.ndarray, p: np.ndarray, old_classes: tuple[int, ...], variant: str = "v2"
) -> dict[str, float]:
    """All / Old / New accuracy over the unlabelled set (docs/gcd.md, GCD: accuracy).

    ``v2`` (report this): one Hungarian matching of clusters to classes over all images, then
    accuracy on all images and on the Old-class and New-class images. ``v2b``: the same
    matching, then mean per-class accuracy. ``v1`` (legacy): separate matchings on Old-class and
    on New-class images, All = their weighted mean. ``y`` (M,) classes, ``p`` (M,) cluster ids.
    """
    y, p = np.asarray(y), _relabel(p)
    if len(y) != len(p) or len(y) == 0:
        raise ValueError("gcd_accuracy needs equal-length, non-empty y and p")
    if y.min() < 0:
        raise ValueError("class ids must be non-negative")
    is_old = np.isin(y, np.asarray(old_classes))
    if variant == "v1":
        parts = {}
        for name, mask in (("old", is_old), ("new", ~is_old)):
            parts[name] = _matched_accuracy(y[mask], p[mask])[0] if mask.any() else float("nan")
        f = is_old.mean()
        old_v = 0.0 if math.isnan(parts["old"]) else parts["old"]
        new_v = 0.0 if math.isnan(parts["new"]) else parts["new"]
        return {"all": float(f * old_v + (1 - f) * new_v), **parts}
    if variant not in ("v2", "v2b"):
        raise ValueError(f"variant must be v1, v2 or v2b, got {variant!r}")
    _, correct = _matched_accuracy(y, p)
    classes = np.unique(y)
    if variant == "v2":

        def acc(mask: np.ndarray) -> float:
            return float(correct[mask].mean()) if mask.any() else float("nan")

        return {"all": acc(np.ones_like(is_old)), "old": acc(is_old), "new": acc(~is_old)}
    per_class = {int(c): float(correct[y == c].mean()) for c in classes}
    old_set = set(old_classes)

    def mean(cs: list[int]) -> float:
        return float(np.mean([per_class[c] for c in cs])) if cs else float("nan")

    return {
        "all": mean(list(per_class)),
        "old": mean([c for c in per_class if c in old_set]),
        "new": mean([c for c in per_class if c not in old_set]),
    }


def _matched_accuracy(y: np.ndarray, p: np.ndarray) -> tuple[float, np.ndarray]:
    """One Hungarian matching (clusters x classes, maximising agreement); returns the accuracy
    and the per-image correctness under it."""
    p = _relabel(p)
    d = max(int(p.max()), int(y.max())) + 1
    w = np.zeros((d, d), dtype=np.int64)
    np.add.at(w, (p, y), 1)
    rows, cols = hungarian_matching(w)
    class_of = np.full(d, -1)
    class_of[rows] = cols
    correct = class_of[p] == y
    return float(correct.mean()), correct


def gcd_scores(predictions: np.ndarray, labels: np.ndarray, split: GcdSplit) -> dict[str, float]:
    """The GCD row of a run: v2 All (as ``acc``) / Old / New, NMI and ARI on the unlabelled
    images; with a held-out labelled subset also its v2 accuracy (``val_acc``, selection)."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score  # ~0.9 s

    u = split.unlabelled_idx
    y, p = labels[u], predictions[u]
    v2 = gcd_accuracy(y, p, split.old_classes)
    out = {
        "acc": v2["all"],
        "bacc": balanced_acc(y, p),  # per-class recall under the All matching
        "acc_old": v2["old"],
        "acc_new": v2["new"],
        "nmi": float(normalized_mutual_info_score(y, p)),
        "ari": float(adjusted_rand_score(y, p)),
    }
    if len(split.val_idx):
        out["val_acc"] = hungarian_acc(labels[split.val_idx], predictions[split.val_idx])
    return out


@dataclass(frozen=True)
class SSKMeansResult:
    labels_u: np.ndarray  # (M,) clusters of the unlabelled rows
    centroids: np.ndarray  # (K, D)
    inertia: float


def ss_kmeans(
    xl: np.ndarray,
    yl: np.ndarray,
    xu: np.ndarray,
    k: int,
    n_init: int = 100,
    max_iter: int = 200,
    tol: float = 1e-4,
    seed: int = 0,
    normalize: bool = True,
) -> SSKMeansResult:
    """Semi-supervised k-means (GCD; docs/methods.md, SS-k-means: objective).

    Labelled rows stay assigned to their class; the first m centroids start at the labelled
    class means (classes in sorted order), the other K - m by k-means++ over the unlabelled
    rows; all centroids move with every assigned row. Per restart, the iterate with the lowest
    inertia (computed before each update) is kept; the restart with the lowest inertia wins.
    An empty cluster keeps its previous centroid (the reference code produces NaN).
    ``xl`` (L, D), ``yl`` (L,), ``xu`` (M, D) -> unlabelled assignments, centroids, inertia.
    """
    dtype = np.result_type(np.asarray(xl).dtype, np.asarray(xu).dtype, np.float32)
    xl = np.asarray(xl, dtype=dtype)
    xu = np.asarray(xu, dtype=dtype)
    if normalize:
        xl = xl / np.maximum(np.linalg.norm(xl, axis=1, keepdims=True), 1e-12)
        xu = xu / np.maximum(np.linalg.norm(xu, axis=1, keepdims=True), 1e-12)
    classes = np.unique(yl)
    m = len(classes)
    if m == 0:
        raise UserError("ss-k-means needs labelled images; use plain k-means without labels")
    if not m <= k or len(xu) < k - m:
        raise UserError(
            f"ss-k-means needs K >= labelled classes ({m}) and >= K - {m} unlabelled rows; "
            f"got K={k}, {len(xu)} unlabelled"
        )
    own = np.searchsorted(classes, yl)  # labelled row -> its centroid
    class_means = np.stack([xl[own == j].mean(0) for j in range(m)]).reshape(m, xu.shape[1])
    rng = np.random.RandomState(seed)
    u_sq = (xu**2).sum(1)
    # the labelled rows never move: their per-class sums make their share of the inertia and
    # of the centroid update O(K D) per iteration
    l_sum = np.zeros((k, xu.shape[1]), dtype=dtype)
    l_sum[:m] = class_means * np.bincount(own, minlength=m)[:, None]
    l_count = np.bincount(own, minlength=k)
    l_sq = float((xl.astype(np.float64) ** 2).sum())
    best: SSKMeansResult | None = None
    for _ in range(n_init):
        c = _plus_plus(xu, u_sq, class_means, k, rng)
        run_best: SSKMeansResult | None = None
        for _it in range(max_iter):
            c_sq = (c**2).sum(1)
            d_u = u_sq[:, None] - 2 * xu @ c.T + c_sq[None, :]
            a_u = d_u.argmin(1)
            labelled_part = l_sq - 2 * float((l_sum * c).sum()) + float(l_count @ c_sq)
            inertia = float(
                np.maximum(d_u[np.arange(len(xu)), a_u], 0).sum(dtype=np.float64)
                + max(labelled_part, 0.0)
            )
            if run_best is None or inertia < run_best.inertia:
                run_best = SSKMeansResult(a_u.astype(np.int64), c.copy(), inertia)
            onehot = np.zeros((k, len(xu)), dtype=dtype)
            onehot[a_u, np.arange(len(xu))] = 1
            sums = l_sum + onehot @ xu  # (K, D) per-cluster sums as one matmul
            counts = l_count + np.bincount(a_u, minlength=k)
            new_c = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], c)
            shift = float(np.sqrt(((new_c - c) ** 2).sum(1)).sum() ** 2)
            c = new_c.astype(dtype)
            if shift < tol:
                break
        if best is None or run_best.inertia < best.inertia:
            best = run_best
    return best


def _plus_plus(
    xu: np.ndarray, u_sq: np.ndarray, fixed: np.ndarray, k: int, rng: np.random.RandomState
) -> np.ndarray:
    """k-means++ (D^2 sampling) over ``xu`` for the K - m free centroids, distances to every
    centroid chosen so far (the labelled class means included)."""
    chosen = list(fixed)
    if not chosen:
        chosen.append(xu[rng.randint(len(xu))])
    d2 = np.full(len(xu), np.inf)
    for c in chosen:
        d2 = np.minimum(d2, np.maximum(u_sq - 2 * xu @ c + c @ c, 0))
    while len(chosen) < k:
        total = d2.sum()
        i = rng.choice(len(xu), p=d2 / total) if total > 0 else rng.randint(len(xu))
        chosen.append(xu[i])
        d2 = np.minimum(d2, np.maximum(u_sq - 2 * xu @ xu[i] + xu[i] @ xu[i], 0))
    return np.stack(chosen)
