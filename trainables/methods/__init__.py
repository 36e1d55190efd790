"""METHODS: the registry of clustering methods, filled by the explicit list below.

Adding a method = one file + one line here; contract tests parametrise over this registry.
"""

from __future__ import annotations

from deepclust.registry import Registry
from trainables.methods.base import ClusteringMethod, FitInputs
from trainables.methods.kmeans import KMeans
from trainables.methods.unic import Unic

METHODS: Registry[type[ClusteringMethod]] = Registry("method")
METHODS.add("kmeans", KMeans)
METHODS.add("unic", Unic)

__all__ = ["METHODS", "ClusteringMethod", "FitInputs"]
