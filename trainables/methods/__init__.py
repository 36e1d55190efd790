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

# The order here is the order `--methods all` searches them in (orchestrator.pipeline's
# _search_all): a method's seed runs go on during the next method's search, so the methods with
# the longest fits come early and the short ones last (the job's last seed runs, which nothing
# overlaps, are then short), and the staged self-labelling comes well after SCAN (its seed runs
# wait for SCAN's, which are long done by then). On the main job this packs the two cores about
# 15 s tighter than searching SCAN, self-labelling, TEMI, IIC, SPICE, UNIC in turn.
METHODS: Registry[type[ClusteringMethod]] = Registry("method")
METHODS.add("kmeans", KMeans)
METHODS.add("scan", Scan)
METHODS.add("spice", Spice)
METHODS.add("iic", Iic)
METHODS.add("unic", Unic)
METHODS.add("scan_selflabel", ScanSelfLabel)
METHODS.add("temi", Temi)
METHODS.add("sskmeans", SSKMeans)

__all__ = ["METHODS", "ClusteringMethod", "FitInputs"]
