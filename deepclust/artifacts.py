"""The one module that knows artifact paths, keys and schemas.

Every artifact is a directory of Parquet files plus ``_meta.json``, written last and atomically
(build in a temp sibling, then rename), so a directory with a valid meta is complete by
construction. The meta records the schema version, the inputs' key, the row count and every
file's size and SHA-256; :meth:`ArtifactStore.check` rejects a missing, foreign-key,
wrong-schema, truncated or altered artifact so the stage rebuilds it instead of reading
garbage.

Publishing is safe with several writers on one shared filesystem (Ray tasks and trials on a
cluster): a finished temp folder is renamed into place, which succeeds for exactly one writer;
a writer that finds the same result already published discards its own, and a stale folder
(other inputs) is first renamed aside, never deleted in place under a reader. Readers only
ever see complete folders, and temp folders start with a dot, which no reader lists.

Layout under the output root::

    artifacts/embeddings/{dataset}/{split}/{backbone}/part-*.parquet + _meta.json
    artifacts/neighbors/{embedding key}/k{kmax}/neighbors.parquet + _meta.json
    runs/{dataset}/{backbone}/{method}-{config hash}/seed{seed}/predictions.parquet + metrics.json
    runs-oracle/...   the same, for runs whose config test labels chose (``--oracle``)
    leaderboard.{md,csv,json}
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # 2: per-file SHA-256 in the meta
META_NAME = "_meta.json"
_CHUNK = 1 << 20


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (read in 1 MiB chunks)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def publish(tmp: Path, directory: Path, same: Any = None) -> bool:
    """Move the finished folder ``tmp`` to ``directory`` atomically: True when this writer's
    folder was published; False when ``same(directory)`` says an equal result is already
    there (``tmp`` is then removed). A different folder in the way is renamed aside and
    deleted first; concurrent writers never see a half-written or half-deleted folder."""
    for _ in range(20):
        try:
            os.replace(tmp, directory)  # a folder onto a non-empty one fails: one winner
            return True
        except OSError:
            if not directory.exists():
                continue  # cleared by another writer between our tries
        if same is not None and same(directory):
            shutil.rmtree(tmp, ignore_errors=True)
            return False
        aside = directory.parent / f".{directory.name}.old-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(directory, aside)
        except FileNotFoundError:
            continue
        except OSError:
            time.sleep(0.05)
            continue
        shutil.rmtree(aside, ignore_errors=True)
    raise OSError(f"could not publish {directory}: other writers kept replacing it")


def stable_key(payload: dict[str, Any]) -> str:
    """Short hash of a JSON-able dict; the identity of an artifact's inputs."""
    raw = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha1(raw).hexdigest()[:16]


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text)


class Embeddings:
    """Embeddings of one split, rows in ``idx`` order: ``labels`` (N,) int64, ``meta`` (with
    the artifact's ``path``) and ``features`` (N, D) float32, unit norm.

    Read from an artifact without its features (``read_embeddings(..., features=False)``),
    ``features`` is read from ``meta["path"]`` on first use: an orchestrating process that only
    passes the artifact on (to the Ray tasks that mine or train on it) never holds the N x D
    array.
    """

    def __init__(self, features: np.ndarray | None, labels: np.ndarray, meta: dict[str, Any]):
        self._features, self.labels, self.meta = features, labels, meta

    @property
    def loaded(self) -> bool:
        return self._features is not None

    @property
    def features(self) -> np.ndarray:
        if self._features is None:
            self._features = ArtifactStore.read_features(Path(self.meta["path"]), len(self.labels))
        return self._features

    @property
    def nbytes(self) -> int:
        """Bytes of the (N, D) float32 features, without reading them."""
        if self._features is not None:
            return int(self._features.nbytes)
        return len(self.labels) * int(self.meta["dim"]) * 4


@dataclass(frozen=True)
class ArtifactStore:
    """Paths and validated reads/writes under one output root."""

    root: Path

    # --- paths -----------------------------------------------------------------------
    def embeddings_dir(self, dataset: str, split: str, backbone: str) -> Path:
        return (
            self.root / "artifacts" / "embeddings" / _slug(dataset) / _slug(split) / _slug(backbone)
        )

    def neighbors_dir(self, embedding_key: str, kmax: int) -> Path:
        return self.root / "artifacts" / "neighbors" / embedding_key / f"k{kmax}"

    def gcd_split_dir(self, embedding_key: str, split_key: str) -> Path:
        """The GCD split of one embedded train pool (stored with the embedding artifacts)."""
        return self.root / "artifacts" / "gcd" / embedding_key / split_key

    def run_dir(
        self, dataset: str, backbone: str, variant: str, seed: int, oracle: bool = False
    ) -> Path:
        """``variant`` is the method name plus its config hash (``unic-1a2b3c4d``).

        ``oracle``: the run's configuration was chosen by test labels (an ``--oracle``
        search). Such runs live under their own root (``runs-oracle/``), so an oracle search
        that picks the same configuration as an honest one never shares, overwrites or
        relabels the honest run."""
        return (
            self.runs_root(oracle)
            / _slug(dataset)
            / _slug(backbone)
            / _slug(variant)
            / f"seed{seed}"
        )

    def runs_root(self, oracle: bool = False) -> Path:
        return self.root / ("runs-oracle" if oracle else "runs")

    def leaderboard_path(self, suffix: str) -> Path:
        return self.root / f"leaderboard.{suffix}"

    # --- meta / validity ----------------------------------------------------------------
    @staticmethod
    def read_meta(directory: Path) -> dict[str, Any] | None:
        try:
            return json.loads((directory / META_NAME).read_text())
        except (OSError, ValueError):
            return None

    @staticmethod
    def check(directory: Path, key: str) -> str | None:
        """None when ``directory`` holds a complete artifact for ``key``, else the reason."""
        meta = ArtifactStore.read_meta(directory)
        if meta is None:
            return "no meta" if not directory.exists() else "missing or unreadable meta"
        if meta.get("schema_version") != SCHEMA_VERSION:
            return f"schema {meta.get('schema_version')} != {SCHEMA_VERSION}"
        if meta.get("key") != key:
            return "inputs changed (key mismatch)"
        files = meta.get("files")
        if not isinstance(files, dict):
            return "malformed meta"
        for name, expected in files.items():
            path = directory / name
            if not isinstance(expected, dict) or not path.is_file():
                return f"file {name} missing"
            if path.stat().st_size != expected.get("bytes"):
                return f"file {name} truncated or extended"
            if file_digest(path) != expected.get("sha256"):
                return f"file {name} altered (checksum mismatch)"
        return None

    @staticmethod
    def check_writable(root: Path) -> None:
        """One-line UserError unless files can be created under ``root`` (created if needed):
        a file in the way, a read-only filesystem, missing permissions, a full disk."""
        from deepclust.errors import UserError

        probe = root / f".write-test-{uuid.uuid4().hex[:8]}"
        try:
            root.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"0" * 4096)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise UserError(
                f"cannot write to --output {root}: {reason}; pick a writable folder with free "
                "space (--output DIR)"
            ) from None
        finally:
            try:
                probe.unlink(missing_ok=True)
            except OSError:
                pass  # the folder is not one (the error above says so)

    @staticmethod
    def begin(directory: Path) -> Path:
        """A fresh temp directory beside ``directory`` to build an artifact in."""
        tmp = directory.parent / f".{directory.name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        return tmp

    @staticmethod
    def commit(tmp: Path, directory: Path, key: str, rows: int, **extra: Any) -> dict[str, Any]:
        """Write the meta into ``tmp`` and publish it, replacing a stale artifact; when another
        writer published the same inputs first, theirs is kept (and its meta returned)."""
        files = {
            p.name: {"bytes": p.stat().st_size, "sha256": file_digest(p)}
            for p in sorted(tmp.iterdir())
            if p.suffix in (".parquet", ".npz")
        }
        meta = {
            "schema_version": SCHEMA_VERSION,
            "key": key,
            "rows": rows,
            "files": files,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **extra,
        }
        (tmp / META_NAME).write_text(json.dumps(meta, indent=2, default=str))
        if not publish(tmp, directory, lambda d: ArtifactStore.check(d, key) is None):
            return ArtifactStore.read_meta(directory) or meta
        return meta

    # --- embeddings -----------------------------------------------------------------------
    @staticmethod
    def read_embeddings(directory: Path, features: bool = True) -> Embeddings:
        """Read an embeddings artifact, sorted by idx; checks idx is exactly 0..N-1.
        ``features=False`` reads the labels only (the features on first use)."""
        meta = {**(ArtifactStore.read_meta(directory) or {}), "path": str(directory)}
        table = pq.read_table(directory, columns=["idx", "label"])
        idx = table.column("idx").to_numpy()
        order = np.argsort(idx, kind="stable")
        n = len(idx)
        if not np.array_equal(idx[order], np.arange(n)):
            raise ValueError(f"{directory}: idx is not a permutation of 0..{n - 1}")
        labels = table.column("label").to_numpy().astype(np.int64)[order]
        meta["dim"] = ArtifactStore._embedding_dim(directory)
        emb = Embeddings(None, labels, meta)
        if features:
            emb.features  # noqa: B018 (read now)
        return emb

    @staticmethod
    def _embedding_dim(directory: Path) -> int:
        """D, from the first row (a list column's length is not in its Parquet type)."""
        for path in sorted(directory.glob("*.parquet")):
            for batch in pq.ParquetFile(path).iter_batches(batch_size=1, columns=["embedding"]):
                if batch.num_rows:
                    return int(fixed_list_to_numpy(batch.column("embedding")).shape[1])
        return 0

    @staticmethod
    def read_features(directory: Path, n: int) -> np.ndarray:
        """The (n, D) float32 features in idx order, placed batch by batch into one array:
        the peak is the result plus one record batch, not two copies of the whole table."""
        out: np.ndarray | None = None
        for path in sorted(directory.glob("*.parquet")):
            for batch in pq.ParquetFile(path).iter_batches(columns=["idx", "embedding"]):
                rows = fixed_list_to_numpy(batch.column("embedding"))
                if out is None:
                    out = np.empty((n, rows.shape[1]), dtype=np.float32)
                out[batch.column("idx").to_numpy()] = rows
        return out if out is not None else np.zeros((0, 0), np.float32)

    # --- neighbours -----------------------------------------------------------------------
    @staticmethod
    def write_neighbors(tmp: Path, nbr_idx: np.ndarray, nbr_sim: np.ndarray) -> None:
        n, k = nbr_idx.shape
        table = pa.table(
            {
                "idx": np.arange(n, dtype=np.int64),
                "nbr_idx": pa.FixedSizeListArray.from_arrays(nbr_idx.astype(np.int32).ravel(), k),
                "nbr_sim": pa.FixedSizeListArray.from_arrays(nbr_sim.astype(np.float32).ravel(), k),
            }
        )
        pq.write_table(table, tmp / "neighbors.parquet")

    @staticmethod
    def read_neighbors(directory: Path) -> tuple[np.ndarray, np.ndarray]:
        """(N, kmax) int64 neighbour indices and (N, kmax) float32 similarities, idx order."""
        table = pq.read_table(directory / "neighbors.parquet")
        order = np.argsort(table.column("idx").to_numpy(), kind="stable")
        nbr = fixed_list_to_numpy(table.column("nbr_idx"))[order].astype(np.int64)
        sim = fixed_list_to_numpy(table.column("nbr_sim"))[order].astype(np.float32)
        return nbr, sim

    # --- run results ------------------------------------------------------------------------
    @staticmethod
    def write_run(
        directory: Path,
        predictions: np.ndarray,
        metrics: dict[str, Any],
        extra_files: dict[str, Path] | None = None,
    ) -> None:
        """predictions.parquet (+ ``extra_files`` copied in, e.g. the model state a later
        stage starts from) then metrics.json (the completion marker), published atomically:
        when another writer published the same run (same ``key``) first, theirs is kept."""
        key = metrics.get("key")

        def same(d: Path) -> bool:
            done = ArtifactStore.read_run(d)
            return key is not None and done is not None and done.get("key") == key

        tmp = ArtifactStore.begin(directory)
        try:
            for name, src in (extra_files or {}).items():
                shutil.copyfile(src, tmp / name)
            pq.write_table(
                pa.table(
                    {
                        "idx": np.arange(len(predictions), dtype=np.int64),
                        "cluster": predictions.astype(np.int64),
                    }
                ),
                tmp / "predictions.parquet",
            )
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
            publish(tmp, directory, same)
        finally:  # a full disk or a failed copy leaves no temp folder behind
            shutil.rmtree(tmp, ignore_errors=True)

    @staticmethod
    def read_run(directory: Path, rows: int | None = None) -> dict[str, Any] | None:
        """A published run's metrics, or None when the folder holds no complete run: its
        metrics.json is missing or not a JSON object, or its predictions.parquet is missing,
        unreadable, or (``rows`` given) of another length."""
        try:
            result = json.loads((directory / "metrics.json").read_text())
            n = pq.read_metadata(directory / "predictions.parquet").num_rows
        except (OSError, ValueError, pa.ArrowException):
            return None
        if not isinstance(result, dict) or (rows is not None and n != rows):
            return None
        return result


def fixed_list_to_numpy(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """(N, k) numpy from a list / fixed-size-list / Ray tensor-extension column."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if isinstance(arr, pa.ExtensionArray):
        arr = arr.storage
    n = len(arr)
    flat = arr.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(n, -1) if n else flat.reshape(0, 0)
