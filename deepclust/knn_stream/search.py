"""The blockwise search: query and database sources (a feature file, or rows resident on the
device) and the search loop that merges block top-k and re-scores candidates.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from deepclust.errors import UserError
from deepclust.knn_stream.certify import (
    _ID_MASK,
    _low_copy,
    _split_norms,
    exact_block_topk,
    fp32_dot_error_bound,
    merge_running,
    non_candidate_bound,
    sort_keys,
    topc_grouped,
)
from deepclust.knn_stream.io import NORM_CHUNK, WRITE_CHUNK, FeatureFile, _normalize_rows
from deepclust.knn_stream.planning import StreamPlan, _group_size


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
