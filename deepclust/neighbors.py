"""Neighbour information from a mined kNN table: second-order cleaning and negative mining.

Implements UNIC's positives, cleaning and negatives (arXiv 2503.14500; docs/methods.md, UNIC:
positives, UNIC: cleaning, UNIC: negatives). The paper's method text could not be read; the
rules below are this project's design (docs/methods.md, UNIC: what the paper states) built on
what the paper and its reviewers state: positives are cleaned "based on the union size of
second-order neighbours", negatives are the "furthest" samples.

Shapes: ``nbr`` (N, kmax) int64, exact cosine kNN, self excluded, sorted by decreasing
similarity. ``pos_k`` candidates per anchor, second-order lists of length ``m``. Everything is
chunked over anchors so memory stays O(chunk * pos_k * m).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch

from deepclust.errors import UserError

# The choices are the Literal types (UNIC's config fields use them); the tuples derive from them.
CleanRule = Literal["pair_overlap", "votes", "anchor_spread", "none"]
NegRule = Literal["far_rank", "random", "none"]
CLEAN_RULES: tuple[str, ...] = get_args(CleanRule)
NEG_RULES: tuple[str, ...] = get_args(NegRule)
_CHUNK = 8192


def frac_threshold(frac: float, n: int) -> int:
    """ceil(frac * n) robust to float error (0.2 * 20 gives 4, not 5)."""
    return max(0, math.ceil(frac * n - 1e-9))


def check_table(nbr: np.ndarray, **widths: int) -> None:
    """One-line errors for list lengths the table cannot serve (e.g. pos_k > kmax)."""
    kmax = nbr.shape[1]
    for name, width in widths.items():
        if width < 1 or width > kmax:
            raise UserError(
                f"{name}={width} must be in [1, kmax={kmax}]; mine more neighbours "
                "(--kmax) or lower it"
            )


def _member(sorted_lists: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """values[..., j] in sorted_lists[...] (row-wise membership), same leading dims."""
    pos = torch.searchsorted(sorted_lists, values).clamp_(max=sorted_lists.shape[-1] - 1)
    return sorted_lists.gather(-1, pos) == values


def _sorted_lists(nbr: np.ndarray, pos_k: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The table as a tensor and its first ``m`` columns sorted per row (for membership)."""
    check_table(nbr, pos_k=pos_k, clean_m=m)
    nbr_t = torch.from_numpy(np.ascontiguousarray(nbr))
    return nbr_t, nbr_t[:, :m].sort(dim=1).values


def shared_counts(nbr: np.ndarray, pos_k: int, m: int) -> np.ndarray:
    """shared[i, a] = |nbr[i, :m] ∩ nbr[j, :m]| for j = nbr[i, a], a < pos_k. (N, pos_k) int."""
    nbr_t, lists = _sorted_lists(nbr, pos_k, m)
    out = torch.empty((len(nbr), pos_k), dtype=torch.int32)
    for s in range(0, len(nbr), _CHUNK):
        cand = nbr_t[s : s + _CHUNK, :pos_k]  # (c, pos_k)
        second = nbr_t[cand, :m].reshape(len(cand), pos_k * m)  # (c, pos_k*m)
        hit = _member(lists[s : s + _CHUNK], second).view(len(cand), pos_k, m)
        out[s : s + _CHUNK] = hit.sum(-1, dtype=torch.int32)
    return out.numpy()


def vote_counts(nbr: np.ndarray, pos_k: int, m: int) -> np.ndarray:
    """votes[i, a] = #{q in nbr[i, :pos_k] : nbr[i, a] in nbr[q, :m]}. (N, pos_k) int."""
    nbr_t, lists = _sorted_lists(nbr, pos_k, m)
    out = torch.empty((len(nbr), pos_k), dtype=torch.int32)
    for s in range(0, len(nbr), _CHUNK):
        cand = nbr_t[s : s + _CHUNK, :pos_k]  # (c, pos_k): both the voters q and the voted j
        q_lists = lists[cand]  # (c, pos_k_q, m)
        js = cand[:, None, :].expand(-1, pos_k, -1).contiguous()  # (c, pos_k_q, pos_k_j)
        out[s : s + _CHUNK] = _member(q_lists, js).sum(1, dtype=torch.int32)
    return out.numpy()


def spread_sizes(nbr: np.ndarray, pos_k: int, m: int) -> np.ndarray:
    """S[i] = |(nbr[i,:pos_k] ∪ ⋃_q nbr[q,:m]) \\ {i}| over q in nbr[i,:pos_k]. (N,) int."""
    check_table(nbr, pos_k=pos_k, clean_m=m)
    nbr_t = torch.from_numpy(np.ascontiguousarray(nbr))
    out = torch.empty(len(nbr), dtype=torch.int64)
    for s in range(0, len(nbr), _CHUNK):
        cand = nbr_t[s : s + _CHUNK, :pos_k]
        union = torch.cat([cand, nbr_t[cand, :m].reshape(len(cand), -1)], 1).sort(1).values
        distinct = 1 + (union.diff(dim=1) != 0).sum(1)
        anchors = torch.arange(s, s + len(cand))[:, None]
        out[s : s + _CHUNK] = distinct - (union == anchors).any(1).long()
    return out.numpy()


@dataclass(frozen=True)
class PositiveTable:
    """Cleaned positives: ``idx`` (N, pos_k) with the kept entries first (-1 padding), ``count``
    (N,) kept per anchor, ``shared`` (N, pos_k) second-order overlap of each kept entry."""

    idx: np.ndarray
    count: np.ndarray
    shared: np.ndarray

    def kept_fraction(self) -> float:
        return float(self.count.sum() / self.idx.size)

    def empty_fraction(self) -> float:
        return float((self.count == 0).mean())

    def precision(self, labels: np.ndarray) -> float:
        """Label agreement of the kept pairs (a diagnostic; never an objective)."""
        valid = self.idx >= 0
        if not valid.any():
            return float("nan")
        anchors = np.broadcast_to(np.arange(len(self.idx))[:, None], self.idx.shape)
        return float((labels[self.idx[valid]] == labels[anchors[valid]]).mean())


def clean_positives(
    nbr: np.ndarray,
    pos_k: int,
    rule: CleanRule = "pair_overlap",
    m: int | None = None,
    min_shared_frac: float = 0.2,
    spread_drop_frac: float = 0.2,
    veto: np.ndarray | None = None,
) -> PositiveTable:
    """Second-order cleaning of each anchor's first ``pos_k`` neighbours (docs/methods.md,
    UNIC: cleaning).

    Rules: ``pair_overlap`` keeps j iff shared(i, j) >= ceil(min_shared_frac * m);
    ``votes`` keeps j iff at least ceil(min_shared_frac * pos_k) of i's neighbours list j;
    ``anchor_spread`` drops every candidate of the floor(spread_drop_frac * N) anchors with the
    largest second-order union (ties: lower index first); ``none`` keeps everything.
    """
    if rule not in CLEAN_RULES:
        raise UserError(f"unknown clean_rule '{rule}'; valid: {', '.join(CLEAN_RULES)}")
    m = m or pos_k
    shared = shared_counts(nbr, pos_k, m)
    cand = nbr[:, :pos_k]
    if rule == "pair_overlap":
        keep = shared >= frac_threshold(min_shared_frac, m)
    elif rule == "votes":
        keep = vote_counts(nbr, pos_k, m) >= frac_threshold(min_shared_frac, pos_k)
    elif rule == "anchor_spread":
        spread = spread_sizes(nbr, pos_k, m)
        order = np.lexsort((np.arange(len(nbr)), -spread))  # largest first, lower index first
        keep = np.ones_like(cand, dtype=bool)
        keep[order[: math.floor(spread_drop_frac * len(nbr))]] = False
    else:
        keep = np.ones_like(cand, dtype=bool)
    if veto is not None:
        keep &= ~veto
    # stable partition: kept entries first, in their original (similarity) order
    order = np.argsort(~keep, axis=1, kind="stable")
    keep_sorted = np.take_along_axis(keep, order, 1)
    idx = np.where(keep_sorted, np.take_along_axis(cand, order, 1), -1)
    return PositiveTable(
        idx=idx.astype(np.int64),
        count=keep.sum(1).astype(np.int64),
        shared=np.where(keep_sorted, np.take_along_axis(shared, order, 1), 0),
    )


def negative_thresholds(
    features: np.ndarray, rho: float, ref_size: int = 4096, seed: int = 0
) -> np.ndarray:
    """t[i]: the r-th largest cosine from anchor i to a fixed reference sample
    (docs/methods.md, UNIC: negatives).

    With R the sample minus i, r = min(ceil(rho * |R|), |R| - 1); negatives must have cosine
    strictly below t[i]. rho = 0 gives t = +inf (any image). (N,) float32.
    """
    n = len(features)
    if not 0.0 <= rho < 1.0:
        raise UserError(f"neg_min_rank_frac={rho} must be in [0, 1)")
    if n < 3:
        raise UserError(f"negative mining needs at least 3 images, got N={n}")
    rng = np.random.default_rng(seed)
    ref = np.arange(n) if n - 1 <= ref_size else np.sort(rng.choice(n, ref_size, replace=False))
    feats = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    ref_feats = feats[torch.from_numpy(ref)]
    out = np.empty(n, dtype=np.float32)
    for s in range(0, n, _CHUNK):
        sims = feats[s : s + _CHUNK] @ ref_feats.T  # (c, |R|)
        is_self = torch.from_numpy(ref)[None, :] == torch.arange(s, min(s + _CHUNK, n))[:, None]
        size = len(ref) - is_self.sum(1)  # |R_i|
        sims[is_self] = -float("inf")  # self ranks last, outside the top r
        r = torch.minimum(torch.ceil(rho * size.double() - 1e-9).long(), size - 1)
        top = sims.sort(dim=1, descending=True).values
        t = top.gather(1, (r - 1).clamp(min=0)[:, None]).squeeze(1)
        out[s : s + _CHUNK] = torch.where(r > 0, t, torch.full_like(t, float("inf"))).numpy()
    return out


class NegativeSampler:
    """Draws negatives per anchor: uniform candidates accepted when far (docs/methods.md,
    UNIC: negatives).

    A candidate j != i is accepted when cos(i, j) < t[i], j is not among i's first ``pos_k``
    neighbours and, with ``exclude_shared``, the two length-``m`` lists share nothing. The
    first accepted of ``tries`` candidates wins; with none accepted, the least similar one.
    Similarities always use the pretrained features (also when the backbone is finetuned).
    """

    def __init__(
        self,
        features: np.ndarray,
        nbr: np.ndarray,
        thresholds: np.ndarray,
        pos_k: int,
        m: int,
        exclude_shared: bool = True,
        tries: int = 8,
        labels: np.ndarray | None = None,
    ) -> None:
        check_table(nbr, pos_k=pos_k, clean_m=m)
        # GCD label constraint: (N,) labels, -1 unlabelled; a labelled candidate with the
        # labelled anchor's label is never a negative
        self.labels = None if labels is None else torch.from_numpy(np.asarray(labels))
        self.features = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        nbr_t = torch.from_numpy(np.ascontiguousarray(nbr))
        self.pos_lists = nbr_t[:, :pos_k].sort(1).values
        self.m_lists = nbr_t[:, :m].sort(1).values
        self.thresholds = torch.from_numpy(np.asarray(thresholds, dtype=np.float32))
        self.exclude_shared, self.tries = exclude_shared, tries

    def sample(self, anchors: torch.Tensor, n_neg: int, generator: torch.Generator) -> torch.Tensor:
        """(B,) anchor ids -> (B, n_neg) negative ids."""
        n, b = len(self.features), len(anchors)
        cand = torch.randint(0, n - 1, (b, n_neg * self.tries), generator=generator)
        cand += (cand >= anchors[:, None]).long()  # uniform over images != anchor
        cos = torch.einsum("bd,bkd->bk", self.features[anchors], self.features[cand])
        ok = cos < self.thresholds[anchors][:, None]
        ok &= ~_member(self.pos_lists[anchors], cand)
        if self.labels is not None:
            la = self.labels[anchors][:, None]
            same = (la >= 0) & (self.labels[cand] == la)
            ok &= ~same
            cos = cos.masked_fill(same, float("inf"))  # the fallback avoids them too
        if self.exclude_shared:
            lists_j = self.m_lists[cand]  # (B, K, m)
            lists_i = self.m_lists[anchors][:, None, :].expand_as(lists_j).contiguous()
            ok &= ~_member(lists_i, lists_j).any(-1)
        ok = ok.view(b, n_neg, self.tries)
        cand, cos = cand.view(b, n_neg, self.tries), cos.view(b, n_neg, self.tries)
        first_ok = ok.long().argmax(-1)  # index of the first accepted candidate
        fallback = cos.argmin(-1)
        pick = torch.where(ok.any(-1), first_ok, fallback)
        return cand.gather(-1, pick[..., None]).squeeze(-1)


def label_veto(cand: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """GCD label constraint on mined pairs (docs/methods.md, UNIC: GCD mode): (N, k) candidate
    ids and (N,) labels (-1 = unlabelled) -> (N, k) bool, True where anchor and candidate are
    both labelled with different labels (such a pair is never a positive)."""
    la = labels[:, None]
    lc = labels[cand]
    return (la >= 0) & (lc >= 0) & (la != lc)


class LabelledPool:
    """Labelled rows grouped by label (docs/methods.md, UNIC: GCD mode): same-label positives
    and other-label negatives for labelled anchors, drawn uniformly with a generator.

    ``labels`` (N,) int with -1 for unlabelled rows.
    """

    def __init__(self, labels: np.ndarray) -> None:
        labels = np.asarray(labels, dtype=np.int64)
        rows = np.flatnonzero(labels >= 0)
        rows = rows[np.argsort(labels[rows], kind="stable")]
        size = int(labels.max()) + 1 if len(rows) else 1
        classes, start, count = np.unique(labels[rows], return_index=True, return_counts=True)
        start_of, count_of = np.zeros(size, np.int64), np.zeros(size, np.int64)
        start_of[classes], count_of[classes] = start, count
        slot = np.full(len(labels), -1, np.int64)
        slot[rows] = np.arange(len(rows))
        self.labels = torch.from_numpy(labels)
        self.rows = torch.from_numpy(rows)
        self.start_of, self.count_of = torch.from_numpy(start_of), torch.from_numpy(count_of)
        self.slot = torch.from_numpy(slot)
        cluster = np.full(size, -1, np.int64)
        cluster[classes] = np.arange(len(classes))  # labelled class (sorted) -> fixed cluster
        self.cluster = torch.from_numpy(cluster)

    def cluster_of(self, anchors: torch.Tensor) -> torch.Tensor:
        """(B,) anchors -> the fixed cluster of a labelled anchor's class (sorted order), -1
        for unlabelled anchors (the target of UNIC's optional supervised term)."""
        lab = self.labels[anchors]
        return torch.where(lab >= 0, self.cluster[lab.clamp(min=0)], torch.full_like(lab, -1))

    def positives(
        self, anchors: torch.Tensor, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) anchors -> (B,) another labelled row of the anchor's label, and (B,) valid
        (a labelled anchor whose label has at least two rows); invalid rows return the anchor."""
        lab = self.labels[anchors]
        c = lab.clamp(min=0)
        start, count = self.start_of[c], self.count_of[c]
        r = (torch.rand(len(anchors), generator=gen) * (count - 1).clamp(min=1)).long()
        r += (r >= self.slot[anchors] - start).long()  # skip the anchor itself
        valid = (lab >= 0) & (count >= 2)
        ids = self.rows[(start + r).clamp(max=max(0, len(self.rows) - 1))]
        return torch.where(valid, ids, anchors), valid

    def same_label_count(self, anchors: torch.Tensor) -> torch.Tensor:
        """(B,) how many other labelled rows share each anchor's label (0 if unlabelled)."""
        lab = self.labels[anchors]
        n = self.count_of[lab.clamp(min=0)] - 1
        return torch.where(lab >= 0, n, torch.zeros_like(n))

    def negatives(
        self, anchors: torch.Tensor, n_neg: int, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) anchors -> (B, n_neg) labelled rows of another label, and (B, n_neg) valid."""
        lab = self.labels[anchors]
        c = lab.clamp(min=0)
        start, count = self.start_of[c][:, None], self.count_of[c][:, None]
        others = len(self.rows) - count
        r = (torch.rand(len(anchors), n_neg, generator=gen) * others.clamp(min=1)).long()
        r += (r >= start).long() * count  # jump over the anchor's label block
        valid = ((lab >= 0)[:, None] & (others > 0)).expand(-1, n_neg)
        ids = self.rows[r.clamp(max=max(0, len(self.rows) - 1))]
        return torch.where(valid, ids, anchors[:, None].expand(-1, n_neg)), valid
