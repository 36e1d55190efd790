"""k-means on frozen embeddings: the baseline every method must beat.

Lloyd's algorithm with k-means++ seeding (scikit-learn), on the stored L2-normalised features:
the variant docs/methods.md, k-means: objective and defaults describes. TEMI's official
k-means baseline runs on the raw embeddings instead, with n_init=2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
    # k is fixed by the benchmark and restarts only trade time for inertia: nothing to search
    search_space = None
    laptop = {}  # laptop fidelity (CPU-only clusters) trains as full
    smoke = {}  # already fast

    def fit(self, inputs: FitInputs, hooks: object = None) -> dict[str, float]:
        # deviation: the harness should also run k-means on the raw embeddings (TEMI's baseline);
        # only unit-norm embeddings are stored (deepclust/embedder.py), so only the L2 variant
        # runs.
        rows = inputs.embeddings
        if inputs.unlabelled_idx is not None:  # GCD: fit on the unlabelled pool (docs/gcd.md)
            rows = rows[inputs.unlabelled_idx]
        # imported here: scikit-learn's clustering module costs a second, and every Ray worker
        # imports the method registry whichever method it trains
        from sklearn.cluster import KMeans as _SkKMeans

        self._model = _SkKMeans(
            n_clusters=inputs.num_clusters,
            n_init=self.config.n_init,
            max_iter=self.config.max_iter,
            random_state=inputs.seed,
        ).fit(rows)
        return {"inertia": float(self._model.inertia_)}

    def predict(self, embeddings: np.ndarray) -> np.ndarray:
        return self._model.predict(embeddings).astype(np.int64)
