"""Views of a labelled benchmark: some of its classes, a long-tailed draw, or its labels hidden.

``--classes``, ``--imbalance`` and ``--ignore-labels`` turn any labelled benchmark into another
one without copying or re-embedding an image: a view is an :class:`ImageSet` whose rows point
into the set it was drawn from (``ImageSet.take``), and its embeddings are those rows of the
base set's embeddings (``orchestrator/embed.py``).

* ``classes``: the images of the named classes (names or ids), renumbered 0..C'-1 in the
  order given, names kept.
* ``imbalance`` R: a long-tailed draw with class sizes ``n_max * R ** (-i / (C - 1))`` for the
  i-th class (0-based, class order), ``n_max`` the largest class's size, each class capped at
  what it has, the images of a class drawn at random with a fixed seed. This is the
  CIFAR-10-LT profile (Cao et al., NeurIPS 2019; Cui et al., CVPR 2019). The fit split is
  drawn long-tailed; a separate evaluation split stays as it is (the LT protocol scores on the
  balanced test set), and a benchmark that fits and scores one split is drawn once.
* ``ignore_labels``: the same images as an unlabelled collection (no accuracy; the end-to-end
  check of the unlabelled path on data whose answer is known).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deepclust.datasets import ImageSet
from deepclust.errors import UserError, unknown_name

LT_SEED = 0  # the long-tailed draw's seed (one fixed draw per benchmark and ratio)


@dataclass(frozen=True)
class BenchmarkView:
    classes: tuple[str, ...] = ()  # class names or ids to keep (empty: all)
    imbalance: float | None = None  # R = n_max / n_min of the long-tailed draw (None: as is)
    ignore_labels: bool = False

    def __post_init__(self) -> None:
        if self.imbalance is not None and not (np.isfinite(self.imbalance) and self.imbalance >= 1):
            raise UserError(
                f"--imbalance is the ratio of the largest class to the smallest, >= 1; "
                f"got {self.imbalance}"
            )

    @property
    def is_identity(self) -> bool:
        return not self.classes and self.imbalance is None and not self.ignore_labels

    def tag(self) -> str:
        """A short, stable name for the split (``all[classes=0,1,2;lt=10]``)."""
        parts = []
        if self.classes:
            parts.append("classes=" + ",".join(self.classes))
        if self.imbalance is not None:
            parts.append(f"lt={self.imbalance:g}")
        if self.ignore_labels:
            parts.append("unlabelled")
        return ";".join(parts)


def class_ids(imageset: ImageSet, classes: tuple[str, ...]) -> list[int]:
    """The class ids of ``classes`` (each a class name, or an id in range), in that order."""
    ids = []
    for c in classes:
        if c in imageset.class_names:
            ids.append(imageset.class_names.index(c))
        elif c.lstrip("-").isdigit() and 0 <= int(c) < imageset.num_classes:
            ids.append(int(c))
        else:
            raise unknown_name(f"class of {imageset.name}", c, imageset.class_names)
    if len(set(ids)) != len(ids):
        raise UserError(f"--classes names a class twice ({', '.join(classes)})")
    if len(ids) < 2:
        raise UserError("--classes needs at least 2 classes to cluster")
    return ids


def long_tail_sizes(counts: np.ndarray, ratio: float) -> np.ndarray:
    """Per-class sizes of the long-tailed draw: ``n_max * ratio ** (-i / (C - 1))``, floored,
    at least 1, at most what the class has."""
    c = len(counts)
    profile = counts.max() * float(ratio) ** (-np.arange(c) / max(1, c - 1))
    return np.minimum(counts, np.maximum(1, np.floor(profile).astype(np.int64)))


def apply_view(imageset: ImageSet, view: BenchmarkView, long_tail: bool = True) -> ImageSet:
    """``imageset`` seen through ``view`` (``long_tail=False``: skip the long-tailed draw, as
    for a separate evaluation split)."""
    if view.is_identity or (not long_tail and not view.classes and not view.ignore_labels):
        return imageset
    if not imageset.labelled and (view.classes or view.imbalance is not None):
        raise UserError(
            f"{imageset.name} has no labels: --classes and --imbalance need a labelled benchmark"
        )
    rows = np.arange(len(imageset))
    labels, names = imageset.labels, imageset.class_names
    if view.classes:
        ids = class_ids(imageset, view.classes)
        remap = np.full(imageset.num_classes, -1, dtype=np.int64)
        remap[ids] = np.arange(len(ids))
        rows = np.flatnonzero(remap[labels] >= 0)
        labels, names = remap[labels[rows]], tuple(imageset.class_names[i] for i in ids)
    if view.imbalance is not None and long_tail:
        counts = np.bincount(labels, minlength=len(names))
        sizes = long_tail_sizes(counts, view.imbalance)
        gen = np.random.default_rng(LT_SEED)
        keep = np.zeros(len(rows), dtype=bool)
        for c, size in enumerate(sizes):
            members = np.flatnonzero(labels == c)
            keep[np.sort(gen.permutation(members)[:size])] = True
        rows, labels = rows[keep], labels[keep]
    if view.ignore_labels:
        names = ()
    return imageset.take(rows, view.tag(), labels=labels, class_names=names)
