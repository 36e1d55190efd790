"""k-means on frozen embeddings: the baseline every method must beat.

Lloyd's algorithm with k-means++ seeding (scikit-learn), on the stored L2-normalised features:
the variant shared/spec/baselines.md 3.3 asks the harness to run. TEMI's official k-means
baseline (spec 3.1) runs on the raw embeddings instead, with n_init=2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans as _SkKMeans

from deepclust.config import CheckedChoices, Count
from trainables.methods.base import ClusteringMethod, FitInputs


@dataclass(frozen=True)
class KMeansConfig(CheckedChoices):
    n_init: Count = 10  # restarts; the best inertia wins (sklearn's classic default)
    max_iter: Count = 300  # Lloyd iterations per restart; converges far earlier on embeddings


class KMeans(ClusteringMethod):
    Config = KMeansConfig
    objective = "inertia"  # within-cluster sum of squares on the fit split; lower is better
    search_objective = ("inertia", "min")  # nothing to search at fixed k (empty space)

    def fit(self, inputs: FitInputs, hooks: object = None) -> dict[str, float]:
        # deviation: spec 3.3 also asks for k-means on the raw embeddings (TEMI's baseline);
        # only unit-norm embeddings are stored (deepclust/embedder.py), so only the L2 variant
        # runs.
        rows = inputs.embeddings
        if inputs.unlabelled_idx is not None:  # GCD: fit on the unlabelled pool (spec gcd 4)
            rows = rows[inputs.unlabelled_idx]
        self._model = _SkKMeans(
            n_clusters=inputs.num_clusters,
            n_init=self.config.n_init,
            max_iter=self.config.max_iter,
            random_state=inputs.seed,
        ).fit(rows)
        return {"inertia": float(self._model.inertia_)}

    def predict(self, embeddings: np.ndarray) -> np.ndarray:
        return self._model.predict(embeddings).astype(np.int64)
