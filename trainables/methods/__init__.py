"""METHODS: the registry of clustering methods, filled by the explicit list below.

Adding a method = one file + one line here; contract tests parametrise over this registry.
"""

from __future__ import annotations

from deepclust.registry import Registry
from trainables.methods.base import ClusteringMethod, FitInputs
from trainables.methods.iic import Iic
from trainables.methods.kmeans import KMeans
from trainables.methods.scan import Scan
from trainables.methods.selflabel import ScanSelfLabel
from trainables.methods.spice import Spice
from trainables.methods.sskmeans import SSKMeans
from trainables.methods.temi import Temi
from trainables.methods.unic import Unic

METHODS: Registry[type[ClusteringMethod]] = Registry("method")
METHODS.add("kmeans", KMeans)
METHODS.add("scan", Scan)
METHODS.add("scan_selflabel", ScanSelfLabel)
METHODS.add("temi", Temi)
METHODS.add("iic", Iic)
METHODS.add("spice", Spice)
METHODS.add("unic", Unic)
METHODS.add("sskmeans", SSKMeans)

__all__ = ["METHODS", "ClusteringMethod", "FitInputs"]
