"""Feature and result files of the streaming kNN: fixed-header ``.npy`` writing and block reads
(no memory map: touched mapped pages count in RSS).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from deepclust.errors import UserError

HEADER_BYTES = 128  # every .npy written here has a fixed 128-byte (64-aligned) v1.0 header


NORM_CHUNK = 1024  # rows per np.linalg.norm call when normalising (bounds its temporary)


WRITE_CHUNK = 65536  # rows per write in write_features_npy


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
