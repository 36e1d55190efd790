"""Block sizes of the streaming kNN from a memory budget: the peak-memory terms (docs/scaling.md,
"Bounded-memory kNN: the derivation") and the largest blocks that fit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from deepclust.errors import UserError
from deepclust.knn_stream.certify import PRECISIONS
from deepclust.knn_stream.io import NORM_CHUNK

DEFAULT_BUDGET = {"cpu": 512 * 2**20, "cuda": 8 * 2**30}


DEFAULT_MARGIN = {"bf16": 96, "fp16": 32}


@dataclass(frozen=True)
class StreamPlan:
    """Block sizes of one search and the predicted memory (bytes) of its working set."""

    n: int
    d: int
    k: int
    nq: int
    bq: int  # query rows per block
    bd: int  # database rows per block
    candidates: int  # c: low-precision candidates per query and database block (0 for fp32)
    group: int  # g: columns per run in topc_grouped (1: plain topk)
    rescore_rows: int  # r: queries per re-score gather
    precision: str
    device: str
    resident: bool
    threads: int
    working_bytes: int  # on the computing device (GPU for cuda, host for cpu), besides below
    resident_bytes: int  # the resident database (0 when streaming from the file)
    host_bytes: int  # host-side buffers (equals working_bytes on cpu)
    terms: dict[str, int]

    @property
    def predicted_peak_bytes(self) -> int:
        """Host (cpu) or device (cuda) peak above the interpreter/torch baseline."""
        return self.working_bytes + self.resident_bytes


def _group_size(bd: int, c: int) -> int:
    """Run length g ~ sqrt(bd / c) (a power of two >= 8), or 1 when plain topk is as good."""
    if c <= 0 or bd < 64 * c:
        return 1
    g = 2 ** round(math.log2(math.sqrt(bd / c)))
    return g if g >= 8 and bd >= 4 * c * g else 1


def _terms(
    bq: int,
    bd: int,
    d: int,
    k: int,
    c: int,
    r: int,
    precision: str,
    device: str,
    resident: bool,
    t: int,
) -> dict[str, int]:
    """Bytes of every buffer the search allocates on the computing device (names match the
    docs/scaling.md); a resident database is counted apart (its blocks are views)."""
    low = precision != "fp32"
    cpu = device == "cpu"
    kk = min(k, bd)
    terms = {
        "blocks_fp32": 0 if resident else 4 * d * (bq + bd),
        "tile": (4 if not low or cpu else 0) * bq * bd + (2 if low else 0) * bq * bd,
        "block_topk": 16 * bq * (kk + 1),
        "running_merge": 80 * bq * k,
        "norms": 4 * min(NORM_CHUNK, bd) * d + 8 * bd if cpu else 8 * (bq + bd),
    }
    if cpu:
        terms["topk_threads"] = 16 * t * bd
    if low:
        cb = min(c, bd)
        g = _group_size(bd, cb)
        terms["low_blocks"] = 0 if resident else (6 if cpu else 2) * d * (bq + bd)
        terms["candidates"] = 40 * bq * cb
        if g > 1:
            terms["grouped_topc"] = 2 * bq * -(-bd // g) + 19 * bq * cb * g
        terms["rescore_gather"] = 4 * r * cb * d + 8 * r * cb
    return terms


def plan_blocks(
    n: int,
    d: int,
    k: int,
    *,
    nq: int | None = None,
    memory_budget: int | None = None,
    precision: str = "fp32",
    device: str = "cpu",
    resident: bool | None = None,
    candidates: int | None = None,
    blocks: tuple[int, int] | None = None,
) -> StreamPlan:
    """Largest blocks whose working set fits ``memory_budget`` bytes (docs/scaling.md, the derivation).

    Args:
        n, d: database rows and feature width.
        k: neighbours per query.
        nq: query rows searched (default n).
        memory_budget: bytes for the working set besides the interpreter/torch baseline and,
            on CUDA, the resident database (default 512 MiB on CPU, 8 GiB on CUDA).
        precision: ``fp32`` (exact tiles) or ``bf16``/``fp16`` (certified low-precision tiles).
        device: ``cpu`` or ``cuda``.
        resident: database held on the device (default: True on cuda, False on cpu).
        candidates: low-precision candidates per query and block (default k + margin).
        blocks: (bq, bd) to use instead of the largest that fit (tests, tuning).
    """
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision '{precision}'; valid: {', '.join(PRECISIONS)}")
    device = "cuda" if str(device).startswith("cuda") else "cpu"
    nq = n if nq is None else nq
    resident = device == "cuda" if resident is None else resident
    budget = DEFAULT_BUDGET[device] if memory_budget is None else int(memory_budget)
    low = precision != "fp32"
    c = 0
    if low:
        c = candidates if candidates is not None else k + DEFAULT_MARGIN[precision]
        if c < k:
            raise UserError(f"candidates={c} must be >= k={k}")
        c = min(c, n)
    t = torch.get_num_threads()

    def rescore_rows(bq: int) -> int:
        return max(1, min(bq, (budget // 8) // max(1, 4 * c * d))) if low else 0

    def work(bq: int, bd: int) -> int:
        terms = _terms(bq, bd, d, k, c, rescore_rows(bq), precision, device, resident, t)
        return sum(terms.values())

    def largest(fits: Callable[[int], bool], hi: int) -> int:
        lo = 0  # fits(lo) holds (or lo == 0), fits(hi + 1) is not tried
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
        return lo

    if blocks is not None:
        if min(blocks) < 1:
            raise UserError(f"blocks={blocks} must be positive (query rows, database rows)")
        budget = max(budget, work(min(blocks[0], nq), min(blocks[1], n)))
    if nq < 1 or work(1, 1) > budget:
        raise UserError(
            f"memory budget {budget} bytes is too small for d={d}, k={k}: need at least "
            f"{work(1, 1)} bytes; raise memory_budget"
        )
    bq = bd = 0
    if blocks is not None:
        bq, bd = min(blocks[0], nq), min(blocks[1], n)
    elif device == "cuda":  # wide tiles: the whole database per query block when it fits
        bq = largest(lambda b: work(b, n) <= budget, nq)
        bd = n if bq >= min(nq, 256) else 0
    if not bd:
        b = largest(lambda b: work(min(b, nq), min(b, n)) <= budget, max(n, nq))
        bq, bd = min(b, nq), min(b, n)
        if bq == nq:
            bd = largest(lambda x: work(bq, x) <= budget, n)
        elif bd == n:
            bq = largest(lambda x: work(x, bd) <= budget, nq)
    r = rescore_rows(bq)
    terms = _terms(bq, bd, d, k, c, r, precision, device, resident, t)
    working = sum(terms.values())
    resident_bytes = 0
    if resident:
        resident_bytes = 4 * n * d + 4 * n  # fp32 rows and their norms
        if low:  # rounded copy (bf16/fp16 on cuda, rounded fp32 on cpu) and its hi/lo norms
            resident_bytes += (2 if device == "cuda" else 4) * n * d + 8 * n
    host = working if device == "cpu" else 16 * bq * k + (0 if resident else 4 * d * (bq + bd))
    sizes = {"n": n, "d": d, "k": k, "nq": nq, "bq": bq, "bd": bd}
    return StreamPlan(
        **sizes,
        candidates=c,
        group=_group_size(bd, c) if low else 1,
        rescore_rows=r,
        precision=precision,
        device=device,
        resident=resident,
        threads=t,
        working_bytes=working,
        resident_bytes=resident_bytes,
        host_bytes=host,
        terms=terms,
    )


def predicted_peak_bytes(
    n: int, d: int, k: int, memory_budget: int | None = None, **kw: Any
) -> int:
    """Predicted peak bytes above the baseline for N x d, k: host RSS on cpu, device memory on
    cuda (resident database included); ``kw`` as in :func:`plan_blocks`."""
    return plan_blocks(n, d, k, memory_budget=memory_budget, **kw).predicted_peak_bytes
