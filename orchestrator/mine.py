"""kNN mining stage: exact cosine top-kmax of every embedding, sharded over Ray tasks.

The queries are split into ``shards`` contiguous ranges, each searched by a remote task (on a
GPU when the cluster has one), so no merge is needed. Two ways to reach the database:

* in memory (``faiss``/``torch``; ``auto`` on CPU for databases up to ``STREAM_ABOVE_BYTES``):
  each shard reads the embeddings artifact (shared storage on clusters) into its memory;
* streamed (``stream``; ``auto`` on GPU clusters and for larger databases): a Ray task writes
  the features to one ``.npy`` in the stage's temporary folder (under ``--output``, shared
  storage on clusters), and each shard runs :func:`deepclust.knn_stream.mine_knn_npy` on its
  query range: query x database blocks in a fixed memory budget, neighbours appended to the
  shard's own ``.npy`` block by block (peak-memory formula: docs/scaling.md). On
  CUDA the tiles are bf16 GEMMs whose candidates are re-scored in fp32 and certified exact
  row by row.

The driver holds the labels and the neighbour table, never the N x D features. Mined once
with ``kmax``; methods slice ``[:, :k]``, so ``k`` stays a free hyperparameter. Neighbour precision (label agreement, a diagnostic only) goes into the meta.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np
import ray

from deepclust.artifacts import ArtifactStore, Embeddings, stable_key
from deepclust.knn import check_k, knn_search, neighbor_precision, resolve_backend
from orchestrator.ray_env import ClusterResources, RaySession

log = logging.getLogger(__name__)

# auto streams a database larger than this from a file instead of replicating it in memory
STREAM_ABOVE_BYTES = 2 * 2**30


def use_stream(backend: str, nbytes: int, res: ClusterResources) -> bool:
    return backend == "stream" or (
        backend == "auto" and (res.gpus > 0 or nbytes > STREAM_ABOVE_BYTES)
    )


def _task_device() -> str:
    """The device a mining task may use: a GPU only when Ray gave the task one. Ray leaves
    CUDA_VISIBLE_DEVICES alone for num_gpus=0 tasks, so torch may see GPUs other tasks hold;
    both shard kinds decide with this one rule."""
    import torch

    return "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"


# The database: the (N, D) features in memory, or the path of the embeddings artifact that
# each task reads itself (what the pipeline passes: the driver never holds the features)
Database = np.ndarray | str


def _rows(db: Database, n: int) -> np.ndarray:
    if isinstance(db, str):
        return ArtifactStore.read_features(Path(db), n)
    return db


@ray.remote
def _search_shard(
    db: Database, n: int, start: int, stop: int, k: int, backend: str, num_threads: int
) -> tuple[np.ndarray, np.ndarray]:
    import torch

    torch.set_num_threads(num_threads)
    try:
        import faiss

        faiss.omp_set_num_threads(num_threads)
    except ImportError:
        pass
    db = _rows(db, n)
    return knn_search(
        db[start:stop],
        db,
        k,
        query_ids=np.arange(start, stop),
        backend=backend,
        device=_task_device(),
        normalize=False,
    )


@ray.remote
def _stream_shard(
    features: str, start: int, stop: int, k: int, out_dir: str, num_threads: int
) -> dict:
    import torch

    from deepclust.knn_stream import mine_knn_npy

    torch.set_num_threads(num_threads)
    cuda = _task_device() == "cuda"
    stats = mine_knn_npy(
        features,
        k,
        f"{out_dir}/ids_{start:012d}.npy",
        f"{out_dir}/sims_{start:012d}.npy",
        start=start,
        stop=stop,
        device="cuda" if cuda else "cpu",
        precision="bf16" if cuda else "fp32",
        normalize=False,  # stored embeddings are unit norm
    )
    return stats.as_dict()


def _shard_bounds(n: int, shards: int) -> list[tuple[int, int]]:
    bounds = np.linspace(0, n, shards + 1).astype(int)
    return [(int(s), int(e)) for s, e in zip(bounds[:-1], bounds[1:], strict=True) if e > s]


@ray.remote(num_cpus=1)
def _write_features(db: Database, n: int, path: str) -> None:
    from deepclust.knn_stream import write_features_npy

    write_features_npy(Path(path), _rows(db, n))


def streamed_knn(
    features: Database, k: int, shards: int, res: ClusterResources, work: Path, n: int = -1
) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Self-excluded top-k over ``shards`` Ray tasks streaming from ``work/features.npy``
    (``work`` must be visible to every node; a Ray task writes it); also each shard's
    :class:`KnnStats` dict. ``n``: the row count when ``features`` is an artifact path."""
    n = len(features) if n < 0 else n
    check_k(n, k)
    work.mkdir(parents=True, exist_ok=True)
    path = work / "features.npy"
    ray.get(_write_features.remote(features, n, str(path)))
    cpus = res.task_cpus(shards) if not res.gpus else 1
    task = _stream_shard.options(num_cpus=cpus, num_gpus=1 if res.gpus else 0)
    parts = _shard_bounds(n, shards)
    stats = ray.get([task.remote(str(path), s, e, k, str(work), cpus) for s, e in parts])
    nbr = np.concatenate([np.load(work / f"ids_{s:012d}.npy") for s, _ in parts])
    sim = np.concatenate([np.load(work / f"sims_{s:012d}.npy") for s, _ in parts])
    shutil.rmtree(work)
    return nbr, sim, stats


def sharded_knn(
    features: Database, k: int, shards: int, backend: str, res: ClusterResources, n: int = -1
) -> tuple[np.ndarray, np.ndarray]:
    """Self-excluded top-k over ``shards`` Ray tasks (database replicated, queries split).
    ``n``: the row count when ``features`` is an artifact path (each task reads it)."""
    n = len(features) if n < 0 else n
    check_k(n, k)  # in the driver: a clean error before any task starts
    resolve_backend(backend)
    db = (
        features
        if isinstance(features, str)
        else ray.put(np.ascontiguousarray(features, np.float32))
    )
    cpus = res.task_cpus(shards) if not res.gpus else 1
    task = _search_shard.options(num_cpus=cpus, num_gpus=1 if res.gpus else 0)
    refs = [task.remote(db, n, s, e, k, backend, cpus) for s, e in _shard_bounds(n, shards)]
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
    n = len(emb.labels)
    check_k(n, kmax)
    res = ray_session.resources()
    shards = shards or max(1, res.gpus)
    resolve_backend(backend)
    streamed = use_stream(backend, emb.nbytes, res)
    # the artifact's path when the features are not in this process: the tasks read them
    db = emb.features if emb.loaded else emb.meta["path"]
    tmp = store.begin(directory)
    extra = {}
    try:
        t0 = time.perf_counter()
        if streamed:
            nbr, sim, stats = streamed_knn(db, kmax, shards, res, tmp / "stream", n)
            backend = "stream"
            extra = {
                "knn_precision": ",".join(sorted({s["precision"] for s in stats})),
                "fallback_rows": sum(s["fallback_rows"] for s in stats),
                "predicted_peak_bytes_per_shard": max(s["predicted_peak_bytes"] for s in stats),
            }
        else:
            nbr, sim = sharded_knn(db, kmax, shards, backend, res, n)
        seconds = time.perf_counter() - t0
        precision = neighbor_precision(emb.labels, nbr)
        store.write_neighbors(tmp, nbr, sim)
        meta = store.commit(
            tmp,
            directory,
            key,
            rows=len(nbr),
            kmax=kmax,
            shards=len(_shard_bounds(len(nbr), shards)),
            backend=backend,
            seconds=round(seconds, 2),
            **extra,
            **precision,
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info(
        "neighbors k=%d: %d rows in %.1fs (%s)%s",
        kmax,
        len(nbr),
        seconds,
        backend,
        "".join(f", {k}={v:.3f}" for k, v in precision.items()),  # none without labels
    )
    return nbr, {**meta, "path": str(directory)}
