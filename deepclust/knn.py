"""Exact cosine k-nearest-neighbour search, blockwise over queries.

Memory bound: the database (N x D float32, 4ND bytes) plus one similarity tile of
``block`` x N float32 (4 * block * N bytes, capped by ``max_tile_bytes``, 256 MiB by default)
plus the (nq, k) results. So mining 1.28M x 768 needs ~3.7 GiB for the database and
256 MiB of tiles whatever the number of queries.

Backends: ``faiss`` (``faiss.knn`` / ``faiss.knn_gpu`` when a GPU faiss is installed),
``torch`` (matmul + topk, on CUDA when present), ``auto`` (faiss-GPU > torch-CUDA > faiss-CPU >
torch-CPU). Results are ordered by decreasing similarity, then increasing index; which of
several exactly tied candidates fills the last slot is left to the backend.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch

from deepclust.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_TILE_BYTES = 256 * 2**20
# "stream" (deepclust.knn_stream, used by the orchestrator's mining stage): query x database
# blocks read from a feature file, memory bounded whatever N; bf16 tiles + certified fp32
# re-score on CUDA. knn_search itself serves the in-memory backends.
BACKENDS = ("auto", "faiss", "torch", "stream")


def _faiss():
    try:
        import faiss
    except ImportError:
        return None
    return faiss


DEVICES = ("auto", "cpu", "cuda")


def resolve_backend(backend: str, device: str = "auto") -> tuple[str, str]:
    """(backend, device) actually used for ``backend`` in {auto, faiss, torch, stream}.

    ``device="auto"`` takes CUDA whenever torch (or faiss) sees a GPU; ``"cpu"`` never does
    (a Ray task that was not given a GPU must not use one another task holds); ``"cuda"``
    insists on it.
    """
    if backend not in BACKENDS:
        raise UserError(f"unknown knn backend '{backend}'; valid: {', '.join(BACKENDS)}")
    if device not in DEVICES:
        raise UserError(f"unknown knn device '{device}'; valid: {', '.join(DEVICES)}")
    faiss = _faiss()
    faiss_gpu = faiss is not None and hasattr(faiss, "knn_gpu") and faiss.get_num_gpus() > 0
    cuda = torch.cuda.is_available()
    if device == "cuda" and not cuda:
        raise UserError("knn device 'cuda' requested but torch sees no GPU; use device 'cpu'")
    if device == "cpu":
        faiss_gpu = cuda = False
    if backend == "faiss":
        if faiss is None:
            raise UserError(
                "knn backend 'faiss' needs faiss: pip install faiss-cpu, or use --knn-backend torch"
            )
        if device == "cuda" and not faiss_gpu:
            raise UserError(
                "knn backend 'faiss' on 'cuda' needs a GPU build of faiss installed in place "
                "of faiss-cpu; or use --knn-backend torch (the default on GPUs)"
            )
        return "faiss", "cuda" if faiss_gpu else "cpu"
    if backend in ("torch", "stream"):
        return backend, "cuda" if cuda else "cpu"
    if faiss_gpu:
        return "faiss", "cuda"
    if cuda:
        return "torch", "cuda"
    return ("faiss", "cpu") if faiss is not None else ("torch", "cpu")


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _torch_search(device: str, db: np.ndarray) -> Callable[[np.ndarray, int], tuple]:
    db_t = torch.from_numpy(db).to(device)

    def search(q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        sims = torch.from_numpy(q).to(device) @ db_t.T  # (B, N) tile
        vals, ids = sims.topk(k, dim=1)
        return vals.float().cpu().numpy(), ids.cpu().numpy()

    return search


def _faiss_search(device: str, db: np.ndarray) -> Callable[[np.ndarray, int], tuple]:
    faiss = _faiss()
    res = faiss.StandardGpuResources() if device == "cuda" else None

    def search(q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if res is not None:
            return faiss.knn_gpu(res, q, db, k, metric=faiss.METRIC_INNER_PRODUCT)
        return faiss.knn(q, db, k, metric=faiss.METRIC_INNER_PRODUCT)

    return search


def check_k(n: int, k: int, exclude_self: bool = True) -> None:
    """Raise a UserError unless 1 <= k <= N - 1 (self excluded) or N."""
    limit = n - 1 if exclude_self else n
    if k < 1 or k > limit:
        what = "N - 1 (self is excluded)" if exclude_self else "N"
        raise UserError(
            f"k={k} is out of range: need 1 <= k <= {what} = {limit} for N={n} "
            "images; lower --kmax/k"
        )


def _drop_self(ids: np.ndarray, sims: np.ndarray, qids: np.ndarray, k: int) -> tuple:
    """Remove each query's own id if present, else the last candidate; keep k per row."""
    is_self = ids == qids[:, None]
    keep = np.argsort(is_self, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(ids, keep, 1), np.take_along_axis(sims, keep, 1)


def knn_search(
    queries: np.ndarray,
    database: np.ndarray,
    k: int,
    *,
    query_ids: np.ndarray | None = None,
    backend: str = "auto",
    device: str = "auto",
    max_tile_bytes: int = DEFAULT_TILE_BYTES,
    normalize: bool = True,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine top-k of each query in ``database``.

    Args:
        queries: (nq, D) float.
        database: (N, D) float.
        k: neighbours per query; with ``query_ids`` at most N - 1, else at most N.
        query_ids: (nq,) database index of each query; that index is excluded from its own
            result (self-exclusion for mining a set against itself).
        backend: ``auto``, ``faiss`` or ``torch``.
        device: ``auto`` (CUDA when visible), ``cpu`` or ``cuda``; see :func:`resolve_backend`.
        max_tile_bytes: cap on the (block, N) float32 similarity tile.
        normalize: L2-normalise inputs (cosine); False if already unit norm.

    Returns:
        ``(indices (nq, k) int64, similarities (nq, k) float32)``, sorted by similarity desc.
    """
    if backend == "stream":
        raise UserError(
            "knn backend 'stream' reads a feature file (deepclust.knn_stream.mine_knn_npy, used "
            "by the mining stage); knn_search takes auto, faiss or torch"
        )
    n = len(database)
    check_k(n, k, exclude_self=query_ids is not None)
    if normalize:
        queries, database = l2_normalize(queries), l2_normalize(database)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    database = np.ascontiguousarray(database, dtype=np.float32)
    name, device = resolve_backend(backend, device)
    search = (_faiss_search if name == "faiss" else _torch_search)(device, database)
    k_search = k + 1 if query_ids is not None else k
    block = int(np.clip(max_tile_bytes // (4 * max(n, 1)), 1, 65536))
    out_ids = np.empty((len(queries), k), dtype=np.int64)
    out_sims = np.empty((len(queries), k), dtype=np.float32)
    starts = range(0, len(queries), block)
    if progress and len(starts) > 1:
        from deepclust.progress import bar

        starts = bar(starts, desc=f"kNN ({name}/{device})", unit="block")
    for s in starts:
        e = min(s + block, len(queries))
        sims, ids = search(queries[s:e], k_search)
        ids, sims = np.asarray(ids, dtype=np.int64), np.asarray(sims, dtype=np.float32)
        if query_ids is not None:
            ids, sims = _drop_self(ids, sims, np.asarray(query_ids[s:e]), k)
        order = np.lexsort((ids, -sims), axis=1)  # similarity desc, then index asc
        out_ids[s:e] = np.take_along_axis(ids, order, 1)
        out_sims[s:e] = np.take_along_axis(sims, order, 1)
    return out_ids, out_sims


def knn_self(features: np.ndarray, k: int, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """Top-k neighbours of every row of ``features`` among the others (self excluded)."""
    return knn_search(features, features, k, query_ids=np.arange(len(features)), **kwargs)


def merge_topk(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple:
    """Merge per-shard (ids, sims) results for the same queries into the global top-k."""
    ids = np.concatenate([p[0] for p in parts], axis=1)
    sims = np.concatenate([p[1] for p in parts], axis=1)
    order = np.lexsort((ids, -sims), axis=1)[:, :k]
    return np.take_along_axis(ids, order, 1), np.take_along_axis(sims, order, 1)


def neighbor_precision(labels: np.ndarray, nbr_idx: np.ndarray, ks=(1, 5, 10, 20, 50)) -> dict:
    """Fraction of the first k neighbours sharing the anchor's label, for each k <= kmax
    (nothing for an unlabelled collection: every label negative)."""
    if len(labels) and labels.max() < 0:
        return {}
    agree = labels[nbr_idx] == labels[:, None]
    return {f"nbr_precision@{k}": float(agree[:, :k].mean()) for k in ks if k <= nbr_idx.shape[1]}
