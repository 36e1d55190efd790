"""kNN mining stage: exact cosine top-kmax of every embedding, sharded over Ray tasks.

The database is replicated (one ``ray.put``) and the queries are split into ``shards``
contiguous ranges, each searched by a remote task (on a GPU when the cluster has one), so no
merge is needed. Mined once with ``kmax``; methods slice ``[:, :k]``, so ``k`` stays a free
hyperparameter. Neighbour precision (label agreement, a diagnostic only) goes into the meta.
"""

from __future__ import annotations

import logging
import shutil
import time

import numpy as np
import ray

from deepclust.artifacts import ArtifactStore, Embeddings, stable_key
from deepclust.knn import check_k, knn_search, neighbor_precision, resolve_backend
from orchestrator.ray_env import ClusterResources, RaySession

log = logging.getLogger(__name__)


@ray.remote
def _search_shard(
    db: np.ndarray, start: int, stop: int, k: int, backend: str, num_threads: int
) -> tuple[np.ndarray, np.ndarray]:
    import torch

    torch.set_num_threads(num_threads)
    try:
        import faiss

        faiss.omp_set_num_threads(num_threads)
    except ImportError:
        pass
    return knn_search(
        db[start:stop], db, k, query_ids=np.arange(start, stop), backend=backend, normalize=False
    )


def sharded_knn(
    features: np.ndarray, k: int, shards: int, backend: str, res: ClusterResources
) -> tuple[np.ndarray, np.ndarray]:
    """Self-excluded top-k over ``shards`` Ray tasks (database replicated, queries split)."""
    n = len(features)
    check_k(n, k)  # in the driver: a clean error before any task starts
    resolve_backend(backend)
    db_ref = ray.put(np.ascontiguousarray(features, dtype=np.float32))
    bounds = np.linspace(0, n, shards + 1).astype(int)
    cpus = max(1, res.cpus // shards) if not res.gpus else 1
    task = _search_shard.options(num_cpus=cpus, num_gpus=1 if res.gpus else 0)
    refs = [
        task.remote(db_ref, int(s), int(e), k, backend, cpus)
        for s, e in zip(bounds[:-1], bounds[1:], strict=True)
        if e > s
    ]
    parts = ray.get(refs)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def ensure_neighbors(
    emb: Embeddings,
    kmax: int,
    store: ArtifactStore,
    ray_session: RaySession,
    backend: str = "auto",
    shards: int = 0,
) -> tuple[np.ndarray, dict]:
    """(N, kmax) neighbour indices of the split, mined unless cached; and the meta."""
    key = stable_key({"embeddings": emb.meta["key"], "kmax": kmax})
    directory = store.neighbors_dir(emb.meta["key"], kmax)
    reason = store.check(directory, key)
    if reason is None:
        log.info("neighbors k=%d: cached (%s)", kmax, directory)
        return store.read_neighbors(directory)[0], {
            **store.read_meta(directory),
            "path": str(directory),
        }
    if directory.exists():
        log.warning("neighbors k=%d: rebuilding (%s)", kmax, reason)
    check_k(len(emb.features), kmax)
    res = ray_session.resources()
    shards = shards or max(1, res.gpus)
    t0 = time.perf_counter()
    nbr, sim = sharded_knn(emb.features, kmax, shards, backend, res)
    seconds = time.perf_counter() - t0
    precision = neighbor_precision(emb.labels, nbr)
    tmp = store.begin(directory)
    try:
        store.write_neighbors(tmp, nbr, sim)
        meta = store.commit(
            tmp,
            directory,
            key,
            rows=len(nbr),
            kmax=kmax,
            shards=shards,
            backend=backend,
            seconds=round(seconds, 2),
            **precision,
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info(
        "neighbors k=%d: %d rows in %.1fs, %s",
        kmax,
        len(nbr),
        seconds,
        ", ".join(f"{k}={v:.3f}" for k, v in precision.items()),
    )
    return nbr, {**meta, "path": str(directory)}
