"""Exact self-kNN over a feature file in bounded memory, and the certified low-precision GPU path.

``mine_knn_npy(features.npy, k, ids.npy, sims.npy, start=, stop=)`` finds the exact cosine
top-``k`` (self excluded) of the query rows ``[start, stop)`` among all N rows of an (N, d)
float32 ``.npy`` file: it streams query blocks against database blocks, keeps a running top-k per
query and appends each finished query block to the output files, so neither the database nor
the output is ever whole in memory. A Ray shard task calls it with its own query range; the
shards' outputs concatenate to the full result. ``knn_self_blockwise`` does the same on an
in-memory array or (CUDA) tensor and returns arrays.

Results equal :func:`deepclust.knn.knn_self`'s (rows by similarity descending, then index
ascending; a tie at the k-th place always broken towards the smaller index, so the neighbours
do not depend on block sizes or sharding). The peak-memory formula, the low-precision path and
its certification are derived in docs/scaling.md ("Bounded-memory kNN: the derivation").

Modules, by job: ``io`` (the ``.npy`` files), ``planning`` (blocks from a memory budget),
``certify`` (top-k selection and the certification bound), ``search`` (sources and the
blockwise search loop), ``entry`` (the two entry points and their argument checks).
"""

from deepclust.knn_stream.certify import PRECISIONS, non_candidate_bound, sort_keys, topc_grouped
from deepclust.knn_stream.entry import knn_self_blockwise, mine_knn_npy
from deepclust.knn_stream.io import HEADER_BYTES, FeatureFile, NpyWriter, write_features_npy
from deepclust.knn_stream.planning import DEFAULT_BUDGET, StreamPlan, plan_blocks
from deepclust.knn_stream.search import KnnStats

__all__ = [
    "DEFAULT_BUDGET",
    "HEADER_BYTES",
    "PRECISIONS",
    "FeatureFile",
    "KnnStats",
    "NpyWriter",
    "StreamPlan",
    "knn_self_blockwise",
    "mine_knn_npy",
    "non_candidate_bound",
    "plan_blocks",
    "sort_keys",
    "topc_grouped",
    "write_features_npy",
]
