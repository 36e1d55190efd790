"""Exact self-kNN over a feature file in bounded memory, and the certified low-precision GPU path.

``mine_knn_npy(features.npy, k, ids.npy, sims.npy, start=, stop=)`` finds the exact cosine
top-``k`` (self excluded) of the query rows ``[start, stop)`` among all N rows of an (N, d)
float32 ``.npy`` file. It reads query blocks (``bq`` rows) and database blocks (``bd`` rows) with
plain file reads into buffers it reuses (no ``np.memmap``: mapped pages that were touched count
in RSS), keeps a running top-k per query merged across the database blocks, and appends each
finished query block to the two output ``.npy`` files (their header is written first for the
known shape), so neither the database nor the output is ever whole in memory. A Ray shard task
calls it with its own query range; the shards' outputs concatenate to the full result.
``knn_self_blockwise`` does the same on an in-memory array or (CUDA) tensor and returns arrays.

Results equal :func:`deepclust.knn.knn_self`'s: rows sorted by similarity descending, then index
ascending; self excluded (its tile entry is set to -inf, which gives the same neighbours as
searching k + 1 and dropping self). Unlike ``knn_self``, a tie at the k-th place is always
broken towards the smaller index (the block top-k is re-selected where the k-th and (k+1)-th
similarities are equal), so the neighbours do not depend on the block sizes or the sharding;
only the last bit of a similarity can, where the BLAS picks another kernel for another tile
shape (e.g. a 1-row query block is a GEMV).

Memory (peak, bytes above the interpreter + torch baseline B0, ~0.5 GiB RSS with torch 2.14;
derived from what the code allocates: ``_terms`` lists the same buffers and
:func:`plan_blocks` picks the largest blocks whose sum fits ``memory_budget``). With ``bq``/``bd``
query/database rows per block, ``c`` candidates per query, ``g`` columns per run, ``r``
re-scored queries per gather and ``T`` torch threads:

* CPU, ``precision='fp32'`` (streaming from the file; the default)::

      P = 4*d*(bq + bd)                query and database blocks (float32, reused)
        + 4*bq*bd                      similarity tile (float32, reused)
        + 16*bq*(k + 1)                block top-(k+1) values + indices
        + 80*bq*k                      running top-k, sort keys, merge temporaries
        + 16*T*bd                      torch.topk's per-thread (value, index) row buffer
        + 4*1024*d + 8*bd              row-norm temporaries (1024-row chunks)

  dominated by ``4*d*(bq + bd) + 4*bq*bd``. Nothing grows with N: the outputs are appended per
  query block. At the default 512 MiB budget bq = bd = 10,257 for d = 768, k = 50 (tile
  401 MiB). glibc's heap adds fragmentation of the small per-block temporaries: measured +1%
  at N = 5,000 with one block, +26% of P at a 64 MiB budget (N = 20,000; +10% with
  ``MALLOC_MMAP_THRESHOLD_=65536``), see ``bench/knn_memory.py``.
* CPU, ``precision='bf16'|'fp16'`` (an exact emulation of the GPU arithmetic, for tests) adds the
  rounded copies ``6*d*(bq + bd)``, a second tile ``2*bq*bd``, the candidates ``40*bq*c``, the
  grouped selection ``2*bq*ceil(bd/g) + 19*bq*c*g`` (when g > 1) and the re-score gather
  ``4*r*c*d``.
* CUDA, ``resident=True`` (default on CUDA; also ``knn_self_blockwise``): the database stays on
  the GPU, ``4*N*d + 4*N`` (fp32 rows for the re-score, norms) ``+ 2*N*d + 8*N`` (the bf16/fp16
  copy for the GEMM, its split norms): 5.9 GB for 1.28M x 768; its blocks are views. Per query
  block the GPU holds the tile ``2*bq*bd`` (``4*bq*bd`` in fp32) with ``bd = N`` when the budget
  allows, the grouped selection ``2*bq*ceil(bd/g) + 19*bq*c*g``, the candidates ``40*bq*c`` and
  the re-score gather ``4*r*c*d``: at the default 8 GiB budget bq = 2,819 (fp16) / 2,545 (bf16)
  for N = 1.28M. The host holds one (bq, k) result block besides B0.

Low-precision path (``precision='bf16'`` or ``'fp16'``, meant for CUDA): each tile is a
bf16/fp16 GEMM (fp32 accumulation, output rounded to bf16/fp16); the top-``c`` candidates of each
row are taken from those scores, re-scored in fp32 (gather the candidate rows, fp32 dot, no TF32)
and the top-k is taken from the re-scored values. bf16 keeps 8 significant bits (unit roundoff
u = 2^-8, ~2.4 decimal digits; fp16 11 bits, u = 2^-11), so a tile score can be off by
~u * |q| |x| per input rounding plus u * |score| for the output rounding: up to ~0.012 (bf16) for
unit vectors in the worst case, while the k-th and (k+1)-th similarities of random unit vectors
in d = 768 differ by ~1e-4. A fixed margin is therefore not enough to be exact; instead the
result is **certified** row by row (:func:`non_candidate_bound`): with q = q_hi + q_lo (q_hi the
rounded row, q_lo the exact fp32 remainder) a non-candidate x, whose tile score is <= L (the
row's c-th score in that block), has exact similarity

    q.x <= unround(L)                               L / (1 - u) for L >= 0, else L / (1 + u)
         + gamma_acc |q_hi| |x_hi|                  fp32 accumulation, gamma_acc = d * 2^-21
         + |q_hi| |x_lo| + |q_lo| |x_hi| + |q_lo| |x_lo|     Cauchy-Schwarz, actual norms

(gamma_acc assumes tensor cores add with 4x the unit of truncating fp32 adders; the norms are the
block maxima; fp16 adds its subnormal spacing). If the k-th re-scored similarity minus the fp32
dot error ``gamma_d |q| max|x|`` exceeds that bound for every database block, no non-candidate
can be in the top-k and the answer equals the fp32 one. Rows that fail the check (dense
neighbourhoods, or too few candidates) are recomputed in fp32; their count is returned as
``fallback_rows``. So the margin ``c - k`` only trades speed, never recall. For random unit
vectors (the worst case: similarities ~N(0, 1/d), so many neighbours crowd the k-th one) the
bound is ~0.004 above the bf16 score (~0.0008 for fp16); at N = 10,000, k = 50 every row was
certified with c = k + 50 (bf16) and k + 14 (fp16), 2.4% of rows failed with k + 30 (bf16). The
crowd grows with N * pdf(z_k): ~1.6x at N = 1.28M, hence the defaults k + 96 (bf16) and k + 32
(fp16).

Selecting the top-c of a (bq, N) tile with ``torch.topk`` is slow on GPU (radix select over
1.28M-wide rows). :func:`topc_grouped` takes the maximum of each run of g columns (a bandwidth
bound reduction), the top-c runs by maximum, and the top-c of those c*g values: this is exactly
the top-c (the k-th largest value lies in a run whose maximum ranks in the top c) while topk
only sees ``bd/g + c*g`` values per row; g ~ sqrt(bd / c).
"""

from __future__ import annotations

import contextlib
import math
import os
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepclust.errors import UserError
from deepclust.knn import check_k

PRECISIONS = ("fp32", "bf16", "fp16")
DEFAULT_BUDGET = {"cpu": 512 * 2**20, "cuda": 8 * 2**30}
DEFAULT_MARGIN = {"bf16": 96, "fp16": 32}
HEADER_BYTES = 128  # every .npy written here has a fixed 128-byte (64-aligned) v1.0 header
NORM_CHUNK = 1024  # rows per np.linalg.norm call when normalising (bounds its temporary)
WRITE_CHUNK = 65536  # rows per write in write_features_npy

_LOW_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16}
_UNIT = {"bf16": 2.0**-8, "fp16": 2.0**-11}  # unit roundoff of the low-precision format
_SUBNORMAL = {"bf16": 2.0**-134, "fp16": 2.0**-25}  # absolute rounding error below min normal
_U_ACC = 2.0**-21  # assumed unit of the tensor-core fp32 accumulation (see module docstring)
_U32 = 2.0**-24
_ID_BITS = 32
_ID_MASK = (1 << _ID_BITS) - 1
_FP16_MAX_NORM = 128.0  # |q| |x| < 65504 keeps fp16 scores finite


# --------------------------------------------------------------------------------------------
# .npy files: fixed-size header, blockwise reads and appends


def npy_header(shape: tuple[int, ...], dtype: np.dtype | type) -> bytes:
    """A .npy v1.0 header of exactly HEADER_BYTES bytes for a C-order array."""
    descr = np.lib.format.dtype_to_descr(np.dtype(dtype))
    text = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': {tuple(shape)!r}, }}"
    body = HEADER_BYTES - 10
    if len(text) + 1 > body:
        raise ValueError(f"shape {shape} does not fit a {HEADER_BYTES}-byte npy header")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", body) + (text.ljust(body - 1) + "\n").encode()


class NpyWriter:
    """Append rows to a .npy file of known shape; the file appears at ``path`` only when complete.

    Rows go to ``path + '.partial'``, which is renamed on :meth:`close` once every row was
    written; an interrupted run leaves no file at ``path``.
    """

    def __init__(self, path: str | os.PathLike, shape: tuple[int, ...], dtype: type) -> None:
        self.path = Path(path)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.rows = 0
        self._row_shape = self.shape[1:]
        self._partial = self.path.with_name(self.path.name + ".partial")
        self._file = open(self._partial, "wb")  # noqa: SIM115 (closed in close/abort)
        self._file.write(npy_header(self.shape, self.dtype))

    def append(self, block: np.ndarray) -> None:
        """Write (m, *row_shape) rows after the previous ones."""
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.shape[1:] != self._row_shape or self.rows + len(block) > self.shape[0]:
            raise ValueError(
                f"{self.path}: block {block.shape} does not fit shape {self.shape} "
                f"after {self.rows} rows"
            )
        self._file.write(memoryview(block).cast("B"))
        self.rows += len(block)

    def close(self) -> None:
        if self.rows != self.shape[0]:
            self.abort()
            raise RuntimeError(f"{self.path}: wrote {self.rows} of {self.shape[0]} rows")
        self._file.close()
        os.replace(self._partial, self.path)

    def abort(self) -> None:
        self._file.close()
        self._partial.unlink(missing_ok=True)


def write_features_npy(
    path: str | os.PathLike, blocks: np.ndarray | Iterable[np.ndarray]
) -> tuple[int, int]:
    """Write an (N, d) float32 .npy from an array or from (m_i, d) blocks; return (N, d).

    Blocks are written as they come (the total N need not be known): the header is rewritten
    with the final shape at the end, so only one block is in memory at a time.
    """
    if isinstance(blocks, np.ndarray):
        if blocks.ndim != 2:
            raise UserError(f"features must be 2-D (N, d), got shape {blocks.shape}")
        array = blocks
        blocks = (array[i : i + WRITE_CHUNK] for i in range(0, len(array), WRITE_CHUNK))
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    n, d = 0, None
    with open(partial, "wb") as f:
        f.write(b"\0" * HEADER_BYTES)
        for block in blocks:
            block = np.ascontiguousarray(block, dtype=np.float32)
            if block.ndim != 2 or (d is not None and block.shape[1] != d):
                raise UserError(f"feature block of shape {block.shape} does not match d={d}")
            d = block.shape[1]
            f.write(memoryview(block).cast("B"))
            n += len(block)
        if d is None:
            raise UserError(f"no feature blocks to write to {path}")
        f.seek(0)
        f.write(npy_header((n, d), np.float32))
    os.replace(partial, path)
    return n, d


class FeatureFile:
    """An (N, d) float32 C-order .npy read by row ranges into caller-owned buffers."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"features file {self.path} does not exist")
        with open(self.path, "rb") as f:
            try:
                version = np.lib.format.read_magic(f)
                reader = {
                    (1, 0): np.lib.format.read_array_header_1_0,
                    (2, 0): np.lib.format.read_array_header_2_0,
                }.get(version)
                if reader is None:
                    raise ValueError(f"npy version {version}")
                shape, fortran, dtype = reader(f)
            except ValueError as e:
                raise UserError(f"features file {self.path} is not a readable .npy ({e})") from e
            self.offset = f.tell()
        if len(shape) != 2 or fortran or dtype != np.dtype("<f4"):
            raise UserError(
                f"features file {self.path} must hold a 2-D C-order float32 array; got shape "
                f"{shape}, dtype {dtype}{', Fortran order' if fortran else ''}"
            )
        self.n, self.d = int(shape[0]), int(shape[1])
        expected = self.offset + 4 * self.n * self.d
        size = self.path.stat().st_size
        if size < expected:
            raise UserError(
                f"features file {self.path} is truncated: {self.n} x {self.d} float32 needs "
                f"{expected} bytes, the file has {size}; rewrite it"
            )
        self._file = open(self.path, "rb", buffering=0)  # noqa: SIM115 (closed in close)

    def read(self, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        """Rows [start, stop) into ``out[:stop - start]`` (a C-contiguous (>= m, d) float32)."""
        m = stop - start
        view = memoryview(out[:m]).cast("B")
        self._file.seek(self.offset + 4 * self.d * start)
        got = 0
        while got < len(view):
            step = self._file.readinto(view[got:])
            if not step:
                raise UserError(f"features file {self.path} ended early at row {start}")
            got += step
        return out[:m]

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> FeatureFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------
# block plan and the memory formula


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
    module docstring); a resident database is counted apart (its blocks are views)."""
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
    """Largest blocks whose working set fits ``memory_budget`` bytes (see the module docstring).

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
    return StreamPlan(
        n=n,
        d=d,
        k=k,
        nq=nq,
        bq=bq,
        bd=bd,
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


# --------------------------------------------------------------------------------------------
# exact selection primitives (device independent; tested on CPU)


def sort_keys(vals: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """int64 keys ordering (similarity desc, index asc) ascending; ids must be < 2**32.

    The float32 bits map monotonically to int32 (negative floats have their magnitude bits
    flipped; -0.0 becomes +0.0 first), so equal similarities compare by index.
    """
    bits = (vals.float() + 0.0).view(torch.int32)
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).long()
    return (-ordered) * (1 << _ID_BITS) + ids


def merge_running(
    run: tuple[torch.Tensor, torch.Tensor] | None,
    keys: torch.Tensor,
    vals: torch.Tensor,
    k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge (nq, m) candidates into the running (keys, vals): the first k by key, sorted."""
    if run is not None:
        keys, vals = torch.cat([run[0], keys], 1), torch.cat([run[1], vals], 1)
    top, pos = keys.topk(min(k, keys.shape[1]), dim=1, largest=False, sorted=True)
    return top, vals.gather(1, pos)


def exact_block_topk(s: torch.Tensor, kk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-kk (values, column indices) of each row of ``s``; ties at the kk-th place go to the
    smallest column (rows whose kk-th and (kk+1)-th values are equal are re-selected)."""
    nb = s.shape[1]
    kk1 = min(kk + 1, nb)
    v, j = s.topk(kk1, dim=1, sorted=True)
    if kk1 == kk:
        return v, j
    tied = (v[:, kk - 1] == v[:, kk]).nonzero().flatten().tolist()
    v, j = v[:, :kk], j[:, :kk]
    for r in tied:
        row, t = s[r], v[r, kk - 1]
        above = (row > t).nonzero().flatten()
        equal = (row == t).nonzero().flatten()[: kk - len(above)]
        cols = torch.cat([above, equal])
        j[r], v[r] = cols, row[cols]
    return v, j


def topc_grouped(s: torch.Tensor, c: int, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The c largest values of each row of ``s`` (bq, nb) and their columns (unsorted).

    With ``group > 1`` (requires nb >= 4 * c * group, so rows have far more than c finite
    values): maxima of runs of ``group`` columns, the top-c runs, then the top-c of their
    c * group values. Exact as a multiset: an element above the c-th largest value v_c lies in a
    run whose maximum exceeds v_c, and fewer than c runs do; runs with maximum v_c fill the rest.
    Which of several equal values is returned is unspecified (as with torch.topk).
    """
    bq, nb = s.shape
    if group <= 1:
        return s.topk(c, dim=1, sorted=False)
    if nb < 4 * c * group:
        raise ValueError(f"topc_grouped needs nb >= 4*c*group, got nb={nb} c={c} g={group}")
    full = nb // group * group
    maxima = s[:, :full].unflatten(1, (full // group, group)).amax(2)
    if full < nb:
        maxima = torch.cat([maxima, s[:, full:].amax(1, keepdim=True)], 1)
    runs = maxima.topk(c, dim=1, sorted=False)[1]
    cols = (runs[:, :, None] * group + torch.arange(group, device=s.device)).view(bq, c * group)
    outside = cols >= nb  # the tail run is shorter than group
    vals = s.gather(1, cols.clamp_(max=nb - 1)).masked_fill_(outside, float("-inf"))
    v, pos = vals.topk(c, dim=1, sorted=False)
    return v, cols.gather(1, pos)


def non_candidate_bound(
    precision: str,
    d: int,
    c_th: torch.Tensor,
    q_hi: torch.Tensor,
    q_lo: torch.Tensor,
    x_hi_max: torch.Tensor,
    x_lo_max: torch.Tensor,
) -> torch.Tensor:
    """Upper bound on the exact similarity of any row whose low-precision score is <= c_th.

    With q = q_hi + q_lo (q_hi the bf16/fp16 rounding, q_lo = q - q_hi exactly in fp32) and the
    same for x: q.x = q_hi.x_hi + (q_hi.x_lo + q_lo.x_hi + q_lo.x_lo), the bracket bounded by
    Cauchy-Schwarz with the actual norms; the tensor-core sum of the exact products q_hi_i x_hi_i
    errs by <= gamma_acc |q_hi| |x_hi|; and a score rounded to <= c_th came from an fp32 value
    <= c_th / (1 - u) (c_th >= 0) or c_th / (1 + u) (c_th < 0), plus the subnormal spacing.

    Args:
        c_th: (nq,) the row's c-th largest low-precision score in the block.
        q_hi, q_lo: (nq,) norms of the queries' rounded part and remainder.
        x_hi_max, x_lo_max: () the largest such norms among the block's rows.
    """
    u, sub = _UNIT[precision], _SUBNORMAL[precision]
    gamma = d * _U_ACC / (1 - d * _U_ACC)
    c_th = c_th.float()
    unrounded = torch.where(c_th >= 0, c_th / (1 - u), c_th / (1 + u))
    unrounded = unrounded + c_th.abs() * 2.0**-20 + 2 * sub  # fp32 ops here, subnormal spacing
    split = q_hi * (gamma * x_hi_max + x_lo_max) + q_lo * (x_hi_max + x_lo_max)
    return unrounded + split * 1.01  # 1.01: rounding of the norms themselves


def fp32_dot_error_bound(d: int, q_norm: torch.Tensor, x_norm_max: torch.Tensor) -> torch.Tensor:
    """gamma_d |q| max|x|: bound on the error of an fp32 dot product in any summation order."""
    return (d * _U32 / (1 - d * _U32)) * q_norm * x_norm_max * 1.01


@contextlib.contextmanager
def _exact_matmul() -> Iterator[None]:
    """fp32 GEMMs in full fp32 (no TF32) and fp32 reductions in bf16/fp16 GEMMs."""
    m = torch.backends.cuda.matmul
    saved = (
        torch.get_float32_matmul_precision(),
        m.allow_bf16_reduced_precision_reduction,
        m.allow_fp16_reduced_precision_reduction,
    )
    torch.set_float32_matmul_precision("highest")
    m.allow_bf16_reduced_precision_reduction = False
    m.allow_fp16_reduced_precision_reduction = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved[0])
        m.allow_bf16_reduced_precision_reduction = saved[1]
        m.allow_fp16_reduced_precision_reduction = saved[2]


# --------------------------------------------------------------------------------------------
# database sources


@dataclass
class _Rows:
    """Normalised rows on the compute device: fp32, the low-precision copy, norms."""

    x32: torch.Tensor  # (m, d) float32
    low: torch.Tensor | None  # (m, d) bf16/fp16 (cuda) or fp32 holding rounded values (cpu)
    norms: torch.Tensor  # (m,) float32 (of x32)
    hi_norms: torch.Tensor | None = None  # (m,) norms of the rounded rows (low path)
    lo_norms: torch.Tensor | None = None  # (m,) norms of x32 - rounded rows (low path)

    def take(self, rows: torch.Tensor) -> _Rows:
        """The fp32 part of the given rows (for the exact fallback)."""
        return _Rows(self.x32[rows], None, self.norms[rows])


def _split_norms(
    x32: torch.Tensor, low: torch.Tensor, chunk: int = NORM_CHUNK
) -> tuple[torch.Tensor, torch.Tensor]:
    """(|rounded row|, |row - rounded row|) per row, ``chunk`` rows at a time."""
    hi = torch.empty(len(x32), dtype=torch.float32, device=x32.device)
    lo = torch.empty_like(hi)
    for i in range(0, len(x32), chunk):
        rounded = low[i : i + chunk].to(torch.float32, copy=True)
        hi[i : i + chunk] = torch.linalg.vector_norm(rounded, dim=1)
        lo[i : i + chunk] = torch.linalg.vector_norm(rounded.sub_(x32[i : i + chunk]), dim=1)
    return hi, lo


def _normalize_rows(x: np.ndarray, normalize: bool, where: str, first_row: int) -> None:
    """In place, bit-identical to deepclust.knn.l2_normalize; UserError on NaN/inf rows."""
    for i in range(0, len(x), NORM_CHUNK):
        chunk = x[i : i + NORM_CHUNK]
        norms = np.linalg.norm(chunk, axis=1, keepdims=True)
        if not np.isfinite(norms).all():
            bad = first_row + i + int(np.flatnonzero(~np.isfinite(norms[:, 0]))[0])
            raise UserError(f"{where}: row {bad} has NaN or inf values; re-embed or drop it")
        if normalize:
            np.divide(chunk, np.maximum(norms, 1e-12), out=chunk)


class _Source:
    """Database rows by range; ``queries`` and ``block`` may reuse their buffers per call."""

    n: int
    d: int
    device: torch.device
    low_dtype: torch.dtype | None

    def queries(self, start: int, stop: int) -> _Rows:
        raise NotImplementedError

    def block(self, start: int, stop: int, low: bool) -> _Rows:
        raise NotImplementedError


def _low_copy(x32: torch.Tensor, low_dtype: torch.dtype, out: torch.Tensor | None) -> torch.Tensor:
    """bf16/fp16 rounding of x32: on CUDA in that dtype, on CPU as rounded fp32 values (CPU
    bf16 GEMMs are slow; fp32 GEMMs of rounded inputs give the same products, accumulated in
    fp32, and the tile is rounded to bf16/fp16 afterwards)."""
    if x32.device.type == "cuda":
        return x32.to(low_dtype) if out is None else out[: len(x32)].copy_(x32)
    rounded = x32.to(low_dtype)
    return rounded.float() if out is None else out[: len(x32)].copy_(rounded)


class _FileSource(_Source):
    """Rows read from a FeatureFile into reused (bq, d) / (bd, d) buffers."""

    def __init__(
        self,
        ff: FeatureFile,
        plan: StreamPlan,
        device: torch.device,
        low_dtype: torch.dtype | None,
        normalize: bool,
    ) -> None:
        self.ff, self.n, self.d = ff, ff.n, ff.d
        self.device, self.low_dtype, self.normalize = device, low_dtype, normalize
        cuda = device.type == "cuda"
        self._host = {}
        self._dev = {}
        self._low = {}
        for name, rows in (("q", plan.bq), ("db", plan.bd)):
            host = torch.empty((rows, self.d), dtype=torch.float32, pin_memory=cuda)
            self._host[name] = host.numpy()
            self._dev[name] = torch.empty_like(host, device=device) if cuda else host
            if low_dtype is not None:
                self._low[name] = torch.empty(
                    (rows, self.d), dtype=low_dtype if cuda else torch.float32, device=device
                )

    def _read(self, name: str, start: int, stop: int, low: bool) -> _Rows:
        host = self.ff.read(start, stop, self._host[name])
        _normalize_rows(host, self.normalize, str(self.ff.path), start)
        x32 = self._dev[name][: stop - start]
        if self.device.type == "cuda":
            x32.copy_(torch.from_numpy(host), non_blocking=False)
        rows = _Rows(x32, None, torch.linalg.vector_norm(x32, dim=1))
        if low:
            rows.low = _low_copy(x32, self.low_dtype, self._low[name])
            rows.hi_norms, rows.lo_norms = _split_norms(x32, rows.low)
        return rows

    def queries(self, start: int, stop: int) -> _Rows:
        return self._read("q", start, stop, self.low_dtype is not None)

    def block(self, start: int, stop: int, low: bool) -> _Rows:
        return self._read("db", start, stop, low)


class _ResidentSource(_Source):
    """The whole database on the compute device (fp32, low-precision copy, norms)."""

    def __init__(self, x32: torch.Tensor, low_dtype: torch.dtype | None) -> None:
        self.n, self.d = x32.shape
        self.device, self.low_dtype = x32.device, low_dtype
        self.x32 = x32
        self.norms = torch.linalg.vector_norm(x32, dim=1)
        if not torch.isfinite(self.norms).all():
            bad = int((~torch.isfinite(self.norms)).nonzero()[0, 0])
            raise UserError(f"features row {bad} has NaN or inf values; re-embed or drop it")
        self.low = self.hi_norms = self.lo_norms = None
        if low_dtype is not None:
            self.low = torch.empty(
                x32.shape,
                dtype=low_dtype if x32.device.type == "cuda" else torch.float32,
                device=x32.device,
            )
            for i in range(0, self.n, WRITE_CHUNK):
                _low_copy(x32[i : i + WRITE_CHUNK], low_dtype, self.low[i:])
            chunk = 16 * NORM_CHUNK if x32.device.type == "cuda" else NORM_CHUNK
            self.hi_norms, self.lo_norms = _split_norms(x32, self.low, chunk)

    @classmethod
    def from_file(
        cls, ff: FeatureFile, device: torch.device, low_dtype: torch.dtype | None, normalize: bool
    ) -> _ResidentSource:
        x32 = torch.empty((ff.n, ff.d), dtype=torch.float32, device=device)
        rows = min(ff.n, WRITE_CHUNK)
        host = torch.empty((rows, ff.d), dtype=torch.float32, pin_memory=device.type == "cuda")
        for i in range(0, ff.n, rows):
            j = min(i + rows, ff.n)
            block = ff.read(i, j, host.numpy())
            _normalize_rows(block, normalize, str(ff.path), i)
            x32[i:j].copy_(host[: j - i])
        return cls(x32, low_dtype)

    @classmethod
    def from_array(
        cls,
        features: np.ndarray | torch.Tensor,
        device: torch.device,
        low_dtype: torch.dtype | None,
        normalize: bool,
    ) -> _ResidentSource:
        if features.ndim != 2:
            raise UserError(f"features must be 2-D (N, d), got shape {tuple(features.shape)}")
        if isinstance(features, torch.Tensor):
            x32 = features.to(device=device, dtype=torch.float32)
            if normalize:
                x32 = x32 / torch.linalg.vector_norm(x32, dim=1, keepdim=True).clamp_min(1e-12)
            return cls(x32.contiguous(), low_dtype)
        x = np.ascontiguousarray(features, dtype=np.float32)
        if normalize or device.type == "cuda":
            x32 = torch.empty(x.shape, dtype=torch.float32, device=device)
            for i in range(0, len(x), WRITE_CHUNK):
                block = x[i : i + WRITE_CHUNK].copy() if normalize else x[i : i + WRITE_CHUNK]
                _normalize_rows(block, normalize, "features", i)
                x32[i : i + len(block)].copy_(torch.from_numpy(block))
        else:
            x32 = torch.from_numpy(x)
        return cls(x32, low_dtype)

    def queries(self, start: int, stop: int) -> _Rows:
        return self.block(start, stop, self.low is not None)

    def block(self, start: int, stop: int, low: bool) -> _Rows:
        rows = _Rows(self.x32[start:stop], None, self.norms[start:stop])
        if low and self.low is not None:
            rows.low = self.low[start:stop]
            rows.hi_norms = self.hi_norms[start:stop]
            rows.lo_norms = self.lo_norms[start:stop]
        return rows


# --------------------------------------------------------------------------------------------
# the search


@dataclass
class KnnStats:
    """What a search did: sizes, blocks, certified-path fallbacks, time, predicted memory."""

    rows: int
    n: int
    d: int
    k: int
    bq: int
    bd: int
    candidates: int
    group: int
    precision: str
    device: str
    resident: bool
    fallback_rows: int
    seconds: float
    predicted_peak_bytes: int

    def as_dict(self) -> dict:
        return asdict(self)


class _Search:
    """One query range against a source, block by block, with one reused tile buffer."""

    def __init__(self, src: _Source, k: int, plan: StreamPlan) -> None:
        self.src, self.k, self.plan = src, k, plan
        self.low = plan.precision != "fp32"
        dev = src.device
        cpu_low = self.low and dev.type == "cpu"
        tile_bytes = plan.bq * plan.bd * (4 if not self.low else 2) + (
            4 * plan.bq * plan.bd if cpu_low else 0
        )
        self.arena = torch.empty(tile_bytes, dtype=torch.uint8, device=dev)
        self.gather = None
        if self.low:  # reused (r * c, d) buffer for the candidate rows being re-scored
            rows = max(1, plan.rescore_rows) * min(plan.candidates, plan.bd)
            self.gather = torch.empty((rows, src.d), dtype=torch.float32, device=dev)
        self.fallback_rows = 0

    def _tile(self, nq: int, nb: int, dtype: torch.dtype, offset: int = 0) -> torch.Tensor:
        size = torch.tensor([], dtype=dtype).element_size()
        return self.arena[offset : offset + nq * nb * size].view(dtype).view(nq, nb)

    def _scores(self, q: torch.Tensor, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(nq, nb) tile q @ x.T in ``dtype`` (bf16/fp16 rounded from an fp32 GEMM on CPU)."""
        nq, nb = len(q), len(x)
        if dtype == torch.float32 or q.dtype == dtype:
            return torch.mm(q, x.T, out=self._tile(nq, nb, dtype))
        s32 = torch.mm(q, x.T, out=self._tile(nq, nb, torch.float32))  # CPU emulation
        return self._tile(nq, nb, dtype, offset=4 * nq * nb).copy_(s32)

    @staticmethod
    def _mask_self(s: torch.Tensor, qids: torch.Tensor, qstart: int | None, ds: int) -> None:
        nq, nb = s.shape
        if qstart is not None:  # contiguous queries: self entries lie on one diagonal
            if qstart < ds + nb and ds < qstart + nq:
                s.diagonal(qstart - ds).fill_(float("-inf"))
            return
        cols = qids - ds
        inside = ((cols >= 0) & (cols < nb)).nonzero().flatten()
        s[inside, cols[inside]] = float("-inf")

    def _rescore(self, q32: torch.Tensor, x32: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Exact fp32 q_i . x_j for the (nq, c) candidate columns, r queries per gather."""
        nq, c = cols.shape
        out = torch.empty((nq, c), dtype=torch.float32, device=q32.device)
        r = max(1, min(nq, self.gather.shape[0] // c))
        for a in range(0, nq, r):
            m = min(r, nq - a)
            rows = self.gather[: m * c]
            torch.index_select(x32, 0, cols[a : a + m].reshape(-1), out=rows)
            torch.bmm(rows.view(m, c, -1), q32[a : a + m, :, None], out=out[a : a + m, :, None])
        return out

    def pass_(
        self, q: _Rows, qids: torch.Tensor, qstart: int | None, low: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Running (keys, vals) (nq, k) over all database blocks; and, for the low-precision
        path, the per-query bound max_b(L_b + eps_b) on non-candidates' exact similarity."""
        n, bd, k, p = self.src.n, self.plan.bd, self.k, self.plan
        if not low:  # fp32 (or fallback rows): the fp32 tile must fit the arena
            bd = max(1, min(bd, self.arena.numel() // (4 * len(q.x32))))
        run = None
        bound = None
        x_norm_max = torch.zeros((), device=q.x32.device)
        for ds in range(0, n, bd):
            de = min(ds + bd, n)
            blk = self.src.block(ds, de, low)
            nb = de - ds
            if not low:
                s = self._scores(q.x32, blk.x32, torch.float32)
                self._mask_self(s, qids, qstart, ds)
                v, j = exact_block_topk(s, min(k, nb))
                run = merge_running(run, sort_keys(v, j + ds), v, k)
                continue
            s = self._scores(q.low, blk.low, self.src.low_dtype)
            self._mask_self(s, qids, qstart, ds)
            cb = min(p.candidates, nb)
            v, cols = topc_grouped(s, cb, _group_size(nb, cb))
            block_norm = blk.norms.amax()
            x_norm_max = torch.maximum(x_norm_max, block_norm)
            if cb < nb:  # non-candidates exist: bound their exact similarity
                lb = non_candidate_bound(
                    p.precision,
                    self.src.d,
                    v.amin(1),
                    q.hi_norms,
                    q.lo_norms,
                    blk.hi_norms.amax(),
                    blk.lo_norms.amax(),
                )
                bound = lb if bound is None else torch.maximum(bound, lb)
            exact = self._rescore(q.x32, blk.x32, cols)
            gids = cols + ds
            exact.masked_fill_(gids == qids[:, None], float("-inf"))
            keys = sort_keys(exact, gids)
            top, pos = keys.topk(min(k, cb), dim=1, largest=False, sorted=False)
            run = merge_running(run, top, exact.gather(1, pos), k)
        if low and bound is not None:
            delta = fp32_dot_error_bound(self.src.d, q.norms, x_norm_max)
            bound = bound + delta  # certified iff kth - delta > max_b(L_b + eps_b)
        return run[0], run[1], bound

    def search(self, qs: int, qe: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids (nq, k) int64, sims (nq, k) float32) of queries [qs, qe) on the device."""
        q = self.src.queries(qs, qe)
        qids = torch.arange(qs, qe, device=q.x32.device)
        keys, vals, bound = self.pass_(q, qids, qs, self.low)
        if bound is not None:
            failed = (vals[:, self.k - 1] <= bound).nonzero().flatten()
            if len(failed):
                self.fallback_rows += len(failed)
                sub = q.take(failed)
                fkeys, fvals, _ = self.pass_(sub, qids[failed], None, low=False)
                keys[failed], vals[failed] = fkeys, fvals
        return keys & _ID_MASK, vals


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
    (module docstring); ``resident`` (default on CUDA) loads the database onto the device once.

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
        check_k(ff.n, k)
        _check_n(ff.n)
        stop = _check_range(ff.n, start, stop)
        plan = plan_blocks(
            ff.n,
            ff.d,
            k,
            nq=stop - start,
            memory_budget=memory_budget,
            precision=precision,
            device=dev.type,
            resident=resident,
            candidates=candidates,
            blocks=blocks,
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
    check_k(n, k)
    _check_n(n)
    stop = _check_range(n, start, stop)
    d = int(features.shape[1]) if features.ndim == 2 else 0
    plan = plan_blocks(
        n,
        d,
        k,
        nq=stop - start,
        memory_budget=memory_budget,
        precision=precision,
        device=dev.type,
        resident=True,
        candidates=candidates,
        blocks=blocks,
    )
    src = _ResidentSource.from_array(features, dev, _LOW_DTYPE.get(precision), normalize)
    _check_fp16(src, precision)
    ids = np.empty((stop - start, k), dtype=np.int64)
    sims = np.empty((stop - start, k), dtype=np.float32)

    def emit(offset: int, i: np.ndarray, s: np.ndarray) -> None:
        ids[offset : offset + len(i)], sims[offset : offset + len(s)] = i, s

    stats = _run(src, k, start, stop, plan, emit)
    return ids, sims, stats
