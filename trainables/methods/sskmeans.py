"""Semi-supervised k-means, GCD's baseline (Vaze et al., CVPR 2022; docs/methods.md,
Semi-supervised k-means): labelled images stay with their class centroid, the remaining
centroids start by k-means++ on the unlabelled images, and every centroid moves with the images
assigned to it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deepclust.config import CheckedChoices, Count
from deepclust.errors import UserError
from deepclust.gcd import ss_kmeans
from deepclust.knn import l2_normalize
from trainables.methods.base import ClusteringMethod, FitInputs


@dataclass(frozen=True)
class SSKMeansConfig(CheckedChoices):
    n_init: Count = 100  # GCD evaluation scripts (v2 is sensitive to the initialisation)
    max_iter: Count = 200
    tol: float = 1e-4


class SSKMeans(ClusteringMethod):
    Config = SSKMeansConfig
    objective = "inertia"  # labelled rows to their class centroid + unlabelled to the nearest
    search_objective = ("inertia", "min")  # nothing to search at fixed k (empty space)
    # k is fixed by the benchmark and restarts only trade time for inertia: nothing to search
    search_space = None
    laptop = {}  # laptop fidelity (CPU-only clusters) trains as full
    settings = frozenset({"gcd"})
    gcd_labels = True
    smoke = {"n_init": 2, "max_iter": 20}

    def fit(self, inputs: FitInputs, hooks: object = None) -> dict[str, float]:
        if inputs.labelled_idx is None:
            raise UserError("sskmeans is a GCD method; run it with --setting gcd")
        n = len(inputs.embeddings)
        unlabelled = np.setdiff1d(np.arange(n), inputs.labelled_idx)
        cfg = self.config
        result = ss_kmeans(
            inputs.embeddings[inputs.labelled_idx],
            inputs.labelled_y,
            inputs.embeddings[unlabelled],
            inputs.num_clusters,
            n_init=cfg.n_init,
            max_iter=cfg.max_iter,
            tol=cfg.tol,
            seed=inputs.seed,
        )
        self.centroids = result.centroids.astype(np.float32)
        return {"inertia": result.inertia}

    def predict(self, embeddings: np.ndarray) -> np.ndarray:
        """Nearest centroid (squared Euclidean on unit-norm rows, as in the fit)."""
        x = l2_normalize(np.asarray(embeddings, dtype=np.float32))
        d = (self.centroids**2).sum(1)[None, :] - 2 * x @ self.centroids.T
        return d.argmin(1).astype(np.int64)
