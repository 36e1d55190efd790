"""Top-k selection and the certification maths of the low-precision path: sort keys, block and
grouped top-c, the bound on any non-candidate's exact similarity (docs/scaling.md,
"Bounded-memory kNN: the derivation"), and the fp32 dot error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from deepclust.knn_stream.io import NORM_CHUNK

PRECISIONS = ("fp32", "bf16", "fp16")


_LOW_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16}


_UNIT = {"bf16": 2.0**-8, "fp16": 2.0**-11}  # unit roundoff of the low-precision format


_SUBNORMAL = {"bf16": 2.0**-134, "fp16": 2.0**-25}  # absolute rounding error below min normal


_U_ACC = (
    2.0**-21
)  # assumed unit of the tensor-core fp32 accumulation (docs/scaling.md, the derivation)


_U32 = 2.0**-24


_ID_BITS = 32


_ID_MASK = (1 << _ID_BITS) - 1


_FP16_MAX_NORM = 128.0  # |q| |x| < 65504 keeps fp16 scores finite


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


def _low_copy(x32: torch.Tensor, low_dtype: torch.dtype, out: torch.Tensor | None) -> torch.Tensor:
    """bf16/fp16 rounding of x32: on CUDA in that dtype, on CPU as rounded fp32 values (CPU
    bf16 GEMMs are slow; fp32 GEMMs of rounded inputs give the same products, accumulated in
    fp32, and the tile is rounded to bf16/fp16 afterwards)."""
    if x32.device.type == "cuda":
        return x32.to(low_dtype) if out is None else out[: len(x32)].copy_(x32)
    rounded = x32.to(low_dtype)
    return rounded.float() if out is None else out[: len(x32)].copy_(rounded)
