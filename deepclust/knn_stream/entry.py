"""Entry points: ``mine_knn_npy`` (a feature file, a query range, results appended to ``.npy``
files) and ``knn_self_blockwise`` (an in-memory array or CUDA tensor).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import numpy as np
import torch

from deepclust.errors import UserError
from deepclust.knn import check_k
from deepclust.knn_stream.certify import _FP16_MAX_NORM, _ID_BITS, _LOW_DTYPE, _exact_matmul
from deepclust.knn_stream.io import FeatureFile, NpyWriter
from deepclust.knn_stream.planning import StreamPlan, plan_blocks
from deepclust.knn_stream.search import KnnStats, _FileSource, _ResidentSource, _Search, _Source


def _resolve_device(device: str | torch.device | None, default: str = "cpu") -> torch.device:
    dev = torch.device(default if device is None else device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device '{device}' requested but CUDA is not available; use device=cpu")
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"unknown device '{device}'; valid: cpu, cuda")
    return dev


def _check_range(n: int, start: int, stop: int | None) -> int:
    stop = n if stop is None else stop
    if not 0 <= start < stop <= n:
        raise UserError(
            f"query range [{start}, {stop}) is empty or outside [0, {n}); fix start/stop"
        )
    return stop


def _check_n(n: int) -> None:
    if n >= 2**_ID_BITS:
        raise UserError(f"N={n} rows is too many for one search (at most {2**_ID_BITS - 1})")


def _check_fp16(src: _Source, precision: str) -> None:
    """fp16 scores overflow past 65504: resident features must have bounded norms."""
    if precision == "fp16" and isinstance(src, _ResidentSource):
        largest = float(src.norms.max())
        if largest > _FP16_MAX_NORM:
            raise UserError(
                f"precision 'fp16' needs feature norms <= {_FP16_MAX_NORM:g} (largest is "
                f"{largest:.3g}); normalise the features or use precision='bf16'"
            )


def _run(
    src: _Source,
    k: int,
    start: int,
    stop: int,
    plan: StreamPlan,
    emit: Callable[[int, np.ndarray, np.ndarray], None],
) -> KnnStats:
    t0 = time.perf_counter()
    search = _Search(src, k, plan)
    with _exact_matmul(), torch.inference_mode():
        for qs in range(start, stop, plan.bq):
            qe = min(qs + plan.bq, stop)
            ids, sims = search.search(qs, qe)
            emit(qs - start, ids.cpu().numpy(), sims.float().cpu().numpy())
    return KnnStats(
        rows=stop - start,
        n=src.n,
        d=src.d,
        k=k,
        bq=plan.bq,
        bd=plan.bd,
        candidates=plan.candidates,
        group=plan.group,
        precision=plan.precision,
        device=src.device.type,
        resident=plan.resident,
        fallback_rows=search.fallback_rows,
        seconds=round(time.perf_counter() - t0, 3),
        predicted_peak_bytes=plan.predicted_peak_bytes,
    )


def _plan(
    n: int,
    d: int,
    k: int,
    start: int,
    stop: int | None,
    dev: torch.device,
    precision: str,
    memory_budget: int | None,
    candidates: int | None,
    resident: bool | None,
    blocks: tuple[int, int] | None,
) -> tuple[int, StreamPlan]:
    """What both entry points check and plan first: k and the query range against N, then the
    blocks. Returns (stop, plan)."""
    check_k(n, k)
    _check_n(n)
    stop = _check_range(n, start, stop)
    plan = plan_blocks(
        n,
        d,
        k,
        nq=stop - start,
        memory_budget=memory_budget,
        precision=precision,
        device=dev.type,
        resident=resident,
        candidates=candidates,
        blocks=blocks,
    )
    return stop, plan


def mine_knn_npy(
    features_path: str | os.PathLike,
    k: int,
    ids_path: str | os.PathLike,
    sims_path: str | os.PathLike,
    *,
    start: int = 0,
    stop: int | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    memory_budget: int | None = None,
    candidates: int | None = None,
    resident: bool | None = None,
    normalize: bool = True,
    blocks: tuple[int, int] | None = None,
) -> KnnStats:
    """Exact cosine top-k (self excluded) of rows [start, stop) of an (N, d) float32 .npy.

    Writes ``ids_path`` ((stop - start, k) int64) and ``sims_path`` ((stop - start, k) float32)
    block by block; each appears only when complete. Memory is bounded by ``memory_budget``
    (docs/scaling.md); ``resident`` (default on CUDA) loads the database onto the device once.

    Args:
        features_path: (N, d) float32 C-order .npy (see :func:`write_features_npy`).
        k: neighbours per query, 1 <= k <= N - 1.
        start, stop: the query rows of this shard (default all).
        device: ``cpu`` or ``cuda``.
        precision: ``fp32``, or ``bf16``/``fp16`` tiles with certified fp32 re-scoring.
        memory_budget: working-set bytes (default 512 MiB on CPU, 8 GiB on CUDA).
        candidates: low-precision candidates per query (default k + 96 bf16, k + 32 fp16).
        normalize: L2-normalise rows (cosine); False if the file is already unit norm.
        blocks: (query rows, database rows) per block instead of the budget's choice.
    """
    dev = _resolve_device(device)
    with FeatureFile(features_path) as ff:
        stop, plan = _plan(
            ff.n, ff.d, k, start, stop, dev, precision, memory_budget, candidates, resident, blocks
        )
        low_dtype = _LOW_DTYPE.get(precision)
        if precision == "fp16" and not normalize and not plan.resident:
            raise UserError("precision 'fp16' when streaming needs normalize=True; or use 'bf16'")
        if plan.resident:
            src: _Source = _ResidentSource.from_file(ff, dev, low_dtype, normalize)
        else:
            src = _FileSource(ff, plan, dev, low_dtype, normalize)
        _check_fp16(src, precision)
        shape = (stop - start, k)
        ids_out = NpyWriter(ids_path, shape, np.int64)
        sims_out = NpyWriter(sims_path, shape, np.float32)
        try:
            stats = _run(
                src,
                k,
                start,
                stop,
                plan,
                lambda _, ids, sims: (ids_out.append(ids), sims_out.append(sims)),
            )
        except BaseException:
            ids_out.abort()
            sims_out.abort()
            raise
        ids_out.close()
        sims_out.close()
    return stats


def knn_self_blockwise(
    features: np.ndarray | torch.Tensor,
    k: int,
    *,
    start: int = 0,
    stop: int | None = None,
    device: str | torch.device | None = None,
    precision: str = "fp32",
    memory_budget: int | None = None,
    candidates: int | None = None,
    normalize: bool = True,
    blocks: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray, KnnStats]:
    """:func:`mine_knn_npy` on an in-memory (N, d) array or tensor, returning
    ``(ids (nq, k) int64, sims (nq, k) float32, stats)``. The database is resident on
    ``device`` (default: the tensor's device, else cpu); query blocks stream against it."""
    default = features.device.type if isinstance(features, torch.Tensor) else "cpu"
    dev = _resolve_device(device, default)
    n = int(features.shape[0])
    d = int(features.shape[1]) if features.ndim == 2 else 0
    stop, plan = _plan(
        n, d, k, start, stop, dev, precision, memory_budget, candidates, True, blocks
    )
    src = _ResidentSource.from_array(features, dev, _LOW_DTYPE.get(precision), normalize)
    _check_fp16(src, precision)
    ids = np.empty((stop - start, k), dtype=np.int64)
    sims = np.empty((stop - start, k), dtype=np.float32)

    def emit(offset: int, i: np.ndarray, s: np.ndarray) -> None:
        ids[offset : offset + len(i)], sims[offset : offset + len(s)] = i, s

    stats = _run(src, k, start, stop, plan, emit)
    return ids, sims, stats
