"""Estimating the number of clusters K without the evaluation labels.

Clustering (no labels at all): :func:`estimate_k`, the spectral eigengap of the mined kNN
graph the methods train on. With A the 0/1 adjacency of the ``graph_k``-nearest-neighbour
graph (all the mined neighbours, 50 by default) made symmetric, and M = D^-1/2 A D^-1/2 with
eigenvalues 1 = l_1 >= l_2 >= ..., a graph of K well separated groups has K eigenvalues near 1
and a drop after them: K̂ = argmax_K (l_K - l_{K+1}) over K in [2, min(50, N / 5)] (von
Luxburg, "A tutorial on spectral clustering", 2007, section 8.3). The criterion and the
graph's k were chosen on the development set (docs/num_clusters.md, ``bench/num_clusters.py
--dev``), never on a set any table scores.

GCD (labels for part of the Old classes): :func:`estimate_k_gcd`, the GCD paper's estimator
(docs/gcd.md, GCD: number of clusters): k-means on all the pool's features, scored by
Hungarian accuracy on the labelled images only, maximised over K by bounded Brent search.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

GRAPH_K = 50  # neighbours per row of the eigengap's graph (at most the mined kmax)


@dataclass(frozen=True)
class KEstimate:
    k: int
    criterion: str
    scores: dict[int, float] = field(default_factory=dict)  # K -> criterion value (higher wins)
    bounds: tuple[int, int] = (0, 0)  # the K range searched

    def to_dict(self) -> dict:
        return {
            "k": self.k,
            "criterion": self.criterion,
            "bounds": list(self.bounds),
            "scores": {str(k): round(float(v), 6) for k, v in self.scores.items()},
        }


def k_range(n: int, lo: int = 2, hi: int | None = None) -> tuple[int, int]:
    """The K searched for n rows: [2, min(50, n // 5)] by default (at least 5 rows a cluster
    on average); a one-line error when no K fits."""
    from deepclust.errors import UserError

    top = min(50, n // 5) if hi is None else min(hi, n - 1)
    if n < 2 * lo or top < lo:
        raise UserError(
            f"--num-clusters auto needs at least {max(2 * lo, 5 * lo)} images to choose K from "
            f"(got {n}); give --num-clusters N"
        )
    return lo, top


def eigengap_scores(neighbors: np.ndarray, ks: range, graph_k: int = GRAPH_K) -> dict[int, float]:
    """K -> l_K - l_{K+1} of the normalised adjacency of the symmetrised kNN graph."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import eigsh

    n = len(neighbors)
    g = min(graph_k, neighbors.shape[1])
    rows = np.repeat(np.arange(n), g)
    a = sp.coo_matrix((np.ones(n * g), (rows, neighbors[:, :g].ravel())), shape=(n, n)).tocsr()
    a = ((a + a.T) > 0).astype(np.float64)
    d = np.asarray(a.sum(1)).ravel()
    inv = sp.diags(1.0 / np.sqrt(np.maximum(d, 1e-12)))
    m = inv @ a @ inv
    top = max(ks) + 1
    v0 = np.random.default_rng(0).standard_normal(n)  # a fixed start: deterministic
    vals = np.sort(eigsh(m, k=min(top, n - 1), which="LA", v0=v0, return_eigenvectors=False))
    vals = vals[::-1]
    return {k: float(vals[k - 1] - vals[k]) for k in ks if k < len(vals)}


def estimate_k(
    features: np.ndarray,
    neighbors: np.ndarray,
    lo: int = 2,
    hi: int | None = None,
    graph_k: int = GRAPH_K,
) -> KEstimate:
    """K̂ for a set without labels: the eigengap of the mined kNN graph (see the module
    docstring). ``features``: (N, D) embeddings (only their count is read); ``neighbors``:
    (N, kmax) mined neighbour ids (self excluded)."""
    lo, hi = k_range(len(features), lo, hi)
    scores = eigengap_scores(neighbors, range(lo, hi + 1), graph_k)
    best = max(scores, key=lambda k: (scores[k], -k))  # ties: the smaller K
    return KEstimate(best, "eigengap", scores, (lo, hi))


def estimate_k_gcd(
    features: np.ndarray,
    labelled_idx: np.ndarray,
    labelled_y: np.ndarray,
    hi: int | None = None,
    seed: int = 0,
    max_rows: int = 20_000,
) -> KEstimate:
    """GCD's estimator: argmax over K in [#Old classes, hi] of the Hungarian accuracy of
    k-means (on all rows, labels ignored) on the labelled rows, by bounded Brent search over
    K (scipy ``minimize_scalar``, each K rounded to an integer and evaluated once)."""
    from scipy.optimize import minimize_scalar
    from sklearn.cluster import KMeans

    from deepclust.metrics import hungarian_acc

    n_old = len(np.unique(labelled_y))
    hi = hi or min(1000, len(features) // 5)
    rng = np.random.default_rng(seed)
    # deviation: GCD fits k-means on every row; above max_rows the centroids are fitted on
    # the labelled rows plus a fixed random sample of the others (every row is still assigned),
    # which keeps a 50k-image pool's search to minutes on a CPU.
    fit_rows = np.arange(len(features))
    if len(features) > max_rows:
        others = np.setdiff1d(fit_rows, labelled_idx)
        extra = max(0, max_rows - len(labelled_idx))
        fit_rows = np.union1d(labelled_idx, rng.choice(others, min(extra, len(others)), False))
    scores: dict[int, float] = {}

    def neg_acc(x: float) -> float:
        k = int(round(x))
        if k not in scores:
            km = KMeans(k, n_init=1, random_state=seed).fit(features[fit_rows])
            scores[k] = hungarian_acc(labelled_y, km.predict(features[labelled_idx]))
        return -scores[k]

    minimize_scalar(neg_acc, bounds=(n_old, hi), method="bounded", options={"xatol": 0.5})
    best = max(scores, key=lambda k: (scores[k], -k))
    return KEstimate(best, "gcd_labelled_acc", dict(sorted(scores.items())), (n_old, hi))
