"""Embedding stage on Ray Data: image sources -> decode (CPU tasks) -> Embedder actors -> Parquet.

Rows carry an ``idx`` column end to end (Ray Data does not preserve order); readers sort by
it. The artifact is cached under a key of (dataset content fingerprint, split, backbone,
weights file, preprocessing), so a second run with the same inputs does no work, and a
corrupt or mismatched cache is rebuilt.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import ray.data as rd
from ray.data.extensions import ArrowTensorArray

from deepclust.artifacts import ArtifactStore, Embeddings, stable_key
from deepclust.backbones import backbone_preprocess, build_backbone, weights_fingerprint
from deepclust.datasets import ImageSet, ParquetPart, ParquetSource, read_parquet_part
from deepclust.embedder import Embedder
from deepclust.errors import UserError
from deepclust.preprocess import Preprocess, decode_batch
from deepclust.progress import bar as progress
from orchestrator.ray_env import ClusterResources, RaySession

log = logging.getLogger(__name__)

ROWS_PER_BLOCK = 512  # input blocks: small enough to stream and spread, big enough to amortise
CPU_ACTOR_SHARE = 0.5  # of a CPU, reserved by each embedding actor on a CPU-only cluster


@dataclasses.dataclass(frozen=True)
class EmbedOptions:
    backbone: str
    weights_file: str | None = None
    batch_size: int = 64  # images per model call; 64 keeps CPU memory low, fine on GPU too


def embedding_key(imageset: ImageSet, opts: EmbedOptions) -> str:
    return stable_key(
        {
            "dataset": imageset.name,
            "split": imageset.split,
            "content": imageset.fingerprint,
            "rows": len(imageset),
            "backbone": opts.backbone,
            "weights": weights_fingerprint(opts.weights_file),
            "preprocess": dataclasses.asdict(backbone_preprocess(opts.backbone)),
        }
    )


def _read_parts(batch: dict[str, np.ndarray], image_column: str, label_column: str):
    """A Ray Data step on the workers: each descriptor row -> its rows' ``encoded`` batches."""
    for i in range(len(batch["file"])):
        ints = {f: int(batch[f][i]) for f in ("row_group", "skip", "num_rows", "first_idx")}
        part = ParquetPart(str(batch["file"][i]), file_row=int(batch["file_row"][i]), **ints)
        yield from read_parquet_part(part, image_column, label_column)


def _parquet_dataset(source: ParquetSource) -> rd.Dataset:
    """Only the manifest (one small row per part) leaves the driver; each read task opens its
    part's row group itself, so no image byte passes through the driver or its object store."""
    items = [dataclasses.asdict(p) for p in source.parts]
    ds = rd.from_items(items, override_num_blocks=max(1, len(items)))
    return ds.map_batches(
        _read_parts,
        fn_kwargs={"image_column": source.image_column, "label_column": source.label_column},
        batch_size=1,
        num_cpus=1,
    )


def _source_dataset(imageset: ImageSet, rows_per_block: int = ROWS_PER_BLOCK) -> rd.Dataset:
    if imageset.parquet is not None:
        return _parquet_dataset(imageset.parquet)
    tables = []
    for start in range(0, len(imageset), rows_per_block):
        stop = min(start + rows_per_block, len(imageset))
        src = imageset.source_slice(start, stop)
        if imageset.pixels is not None:
            src = ArrowTensorArray.from_numpy(np.ascontiguousarray(src))
        elif imageset.paths is not None:
            src = pa.array(src, type=pa.string())
        tables.append(
            pa.table(
                {
                    "idx": np.arange(start, stop, dtype=np.int64),
                    "label": imageset.labels[start:stop],
                    imageset.source_column: src,
                }
            )
        )
    return rd.from_arrow(tables)


def _report_bad_images(directory: Path, imageset: ImageSet) -> None:
    table = pq.read_table(directory, columns=["idx", "error"])
    errors = table.column("error").to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(errors != "")
    if len(bad) == 0:
        return
    idx = table.column("idx").to_numpy()[bad]
    order = np.argsort(idx)
    shown = "; ".join(
        f"idx {idx[i]} ({imageset.describe(int(idx[i]))}: {errors[bad[i]]})" for i in order[:3]
    )
    more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
    raise UserError(
        f"{len(bad)} unreadable image(s) in {imageset.name}/{imageset.split}: "
        f"{shown}{more}; fix or remove them and rerun"
    )


def ensure_embeddings(
    imageset: ImageSet, opts: EmbedOptions, store: ArtifactStore, ray_session: RaySession
) -> Embeddings:
    """Return the split's embeddings, computing them on Ray Data unless cached."""
    key = embedding_key(imageset, opts)
    directory = store.embeddings_dir(imageset.name, imageset.split, opts.backbone)
    reason = store.check(directory, key)
    if reason is None:
        log.info("embeddings %s/%s: cached (%s)", imageset.name, imageset.split, directory)
        return store.read_embeddings(directory, features=False)  # read where they are used
    if directory.exists():
        log.warning("embeddings %s/%s: rebuilding (%s)", imageset.name, imageset.split, reason)
    if imageset.base is not None:
        return _view_embeddings(imageset, opts, store, ray_session, directory, key)
    # Build the backbone once in the driver before any actor starts: a missing weights file or
    # an unreachable hub fails here as one clean line instead of as a dying Ray actor (and
    # the hub download lands in this node's cache).
    _, preprocess = build_backbone(opts.backbone, opts.weights_file)
    resources = ray_session.resources()
    log.info(
        "embedding %s/%s: %d images with %s",
        imageset.name,
        imageset.split,
        len(imageset),
        opts.backbone,
    )
    tmp = store.begin(directory)
    t0 = time.perf_counter()
    try:
        _run_pipeline(imageset, opts, preprocess, resources, tmp)
        _report_bad_images(tmp, imageset)
        n = sum(pq.ParquetFile(p).metadata.num_rows for p in tmp.glob("*.parquet"))
        if n != len(imageset):
            raise RuntimeError(f"embedding stage wrote {n} rows for {len(imageset)} images")
        seconds = time.perf_counter() - t0
        _commit(store, tmp, directory, key, imageset, opts, seconds=round(seconds, 2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("embeddings %s/%s: %d images in %.1fs", imageset.name, imageset.split, n, seconds)
    return store.read_embeddings(directory, features=False)


def _commit(store, tmp: Path, directory: Path, key: str, imageset: ImageSet, opts, **extra):
    """Publish an embeddings artifact of ``imageset`` (its meta names the set and backbone)."""
    store.commit(
        tmp,
        directory,
        key,
        rows=len(imageset),
        dataset=imageset.name,
        split=imageset.split,
        backbone=opts.backbone,
        **extra,
    )


def _view_embeddings(
    view: ImageSet,
    opts: EmbedOptions,
    store: ArtifactStore,
    ray_session: RaySession,
    directory: Path,
    key: str,
) -> Embeddings:
    """A view's embeddings (deepclust/views.py): its rows of the base set's embeddings (which
    are computed first where they are not cached), with the view's labels; no image is read."""
    base = ensure_embeddings(view.base, opts, store, ray_session)
    feats = base.features[view.base_rows]
    tmp = store.begin(directory)
    try:
        n = len(view)
        table = pa.table(
            {
                "idx": np.arange(n, dtype=np.int64),
                "label": view.labels,
                "error": pa.array([""] * n, pa.string()),
                "embedding": pa.FixedSizeListArray.from_arrays(
                    np.ascontiguousarray(feats, dtype=np.float32).ravel(), feats.shape[1]
                ),
            }
        )
        pq.write_table(table, tmp / "embeddings.parquet")
        _commit(store, tmp, directory, key, view, opts, view_of=base.meta["key"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info(
        "embeddings %s/%s: %d rows of %s/%s", view.name, view.split, n, view.name, view.base.split
    )
    return store.read_embeddings(directory, features=False)


def _run_pipeline(
    imageset: ImageSet, opts: EmbedOptions, pp: Preprocess, res: ClusterResources, out_dir: Path
) -> None:
    ctor = {"backbone": opts.backbone, "weights_file": opts.weights_file}
    live_cpus, live_gpus = res.alive
    rows_per_block = ROWS_PER_BLOCK
    if res.gpus:
        # One actor per GPU the cluster can grow to; the pool starts with the GPUs alive and
        # grows as nodes join (its pending actors keep the autoscaler adding them). Decode
        # stays on separate CPU tasks (different resource asks keep the operators unfused, so
        # decode and the forward pass stream concurrently); the actor reserves no CPU, so a
        # GPU node's every core decodes (on a node with one CPU per GPU an actor holding it
        # would leave decode nowhere to run).
        embed_args = {
            "num_gpus": 1,
            "num_cpus": 0,
            "compute": rd.ActorPoolStrategy(
                min_size=max(1, min(live_gpus, res.gpus)), max_size=res.gpus
            ),
        }
    else:
        # CPU-only: one single-thread actor per CPU. Convnet inference scales poorly across
        # threads: on 2 cores two 1-thread processes embed 1.21x as many images a second as
        # one 2-thread process (bench/cpu_threads.py). Each actor reserves half a CPU so that
        # the decode and read tasks beside it always find room to run.
        pool = max(1, res.cpus)
        ctor["num_threads"] = 1
        embed_args = {
            "num_cpus": CPU_ACTOR_SHARE,
            "compute": rd.ActorPoolStrategy(min_size=max(1, min(pool, live_cpus)), max_size=pool),
        }
        # small sets in blocks small enough that every actor gets a fair share of the rows
        rows_per_block = int(np.clip(-(-len(imageset) // (4 * pool)), 64, ROWS_PER_BLOCK))
    ds = _source_dataset(imageset, rows_per_block).map_batches(
        decode_batch, fn_kwargs={"preprocess": pp}, batch_size=opts.batch_size, num_cpus=1
    )
    if not log.isEnabledFor(logging.DEBUG):  # -v keeps Ray Data's own progress output
        # Ray Data's bars count blocks and show "Total Progress: 0/?" until the write ends
        # (without a terminal, a 9-line status block every 10 s); the stage has its own bar
        rd.DataContext.get_current().enable_progress_bars = False
        # and its issue detectors print multi-line advice (memory hints for the actors)
        rd.DataContext.get_current().issue_detectors_config.detectors = []
        logging.getLogger("ray.data").setLevel(logging.ERROR)
    desc = f"embedding {imageset.name}/{imageset.split}"
    with progress(total=len(imageset), desc=desc, unit="img") as bar:
        counter = None if bar.disable else _Counter.remote()
        ds = ds.map_batches(
            _CountingEmbedder,
            fn_constructor_kwargs={**ctor, "counter": counter},
            batch_size=opts.batch_size,
            **embed_args,
        )
        write = functools.partial(ds.write_parquet, str(out_dir), min_rows_per_file=8192)
        if counter is None:
            write()
        else:
            _run_with_progress(write, counter, bar)


@ray.remote(num_cpus=0)
class _Counter:
    """Images embedded so far, added to by every embedding actor, read by the stage's bar."""

    def __init__(self):
        self.n = 0

    def add(self, n: int) -> None:
        self.n += n

    def value(self) -> int:
        return self.n


class _CountingEmbedder(Embedder):
    """The embedding actor; with a ``counter`` (a progress bar is up) it adds each batch's row
    count to it."""

    def __init__(self, counter=None, **kwargs):
        super().__init__(**kwargs)
        self._counter = counter

    def __call__(self, batch):
        out = super().__call__(batch)
        if self._counter is not None:
            self._counter.add.remote(len(out["idx"]))
        return out


def _run_with_progress(write, counter, bar) -> None:
    """``write()`` (the blocking Ray Data job) on a thread while this one, which keeps Ctrl-C,
    moves ``bar`` to the counter's value twice a second."""
    failure: list[BaseException] = []

    def target() -> None:
        try:
            write()
        except BaseException as exc:  # re-raised below, in the caller's thread
            failure.append(exc)

    worker = threading.Thread(target=target, name="embedding-write", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(timeout=0.5)
        bar.n = ray.get(counter.value.remote())
        bar.refresh()
    if failure:
        raise failure[0]
