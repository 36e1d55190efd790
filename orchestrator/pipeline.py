"""One benchmark end to end: load splits -> embed -> mine -> each method x seed -> metrics.

Every stage is cached by its inputs' key (see deepclust/artifacts.py), so an interrupted
sweep resumes where it stopped and a finished one re-runs in seconds.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepclust.artifacts import ArtifactStore, Embeddings, stable_key
from deepclust.config import to_dict
from deepclust.datasets import DatasetSpec, ImageSet
from deepclust.metrics import clustering_metrics
from orchestrator.embed import EmbedOptions, ensure_embeddings
from orchestrator.mine import ensure_neighbors
from orchestrator.ray_env import RaySession
from trainables.methods import METHODS, FitInputs

log = logging.getLogger(__name__)

DEFAULT_KMAX = 50  # mined once; methods slice [:, :k] (SCAN uses 20, UNIC searches k <= 50)


@dataclass(frozen=True)
class SweepSettings:
    """Everything the CLI decides for a sweep (validated before any work starts)."""

    data_root: Path
    download: bool
    output: Path
    backbone: str
    weights_file: str | None
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    kmax: int | None  # None: min(50, N - 1); an explicit k >= N is an error
    knn_backend: str
    knn_shards: int
    batch_size: int


@dataclass(frozen=True)
class BenchmarkSplits:
    spec: DatasetSpec
    fit: ImageSet
    eval: ImageSet


def load_splits(spec: DatasetSpec, settings: SweepSettings) -> BenchmarkSplits:
    """Load the fit and eval splits (raises DatasetUnavailable when the data is missing)."""
    fit = spec.load(spec.fit_split, settings.data_root, settings.download)
    ev = (
        fit
        if spec.eval_split == spec.fit_split
        else spec.load(spec.eval_split, settings.data_root, settings.download)
    )
    return BenchmarkSplits(spec, fit, ev)


def _run_one(
    method_name: str,
    seed: int,
    splits: BenchmarkSplits,
    fit_emb: Embeddings,
    eval_emb: Embeddings,
    neighbors: tuple[np.ndarray, dict] | None,
    settings: SweepSettings,
    store: ArtifactStore,
) -> dict[str, Any]:
    method_cls = METHODS.get(method_name)
    config = method_cls.Config()
    config_dict = to_dict(config)
    key = stable_key(
        {
            "fit": fit_emb.meta["key"],
            "eval": eval_emb.meta["key"],
            "method": method_name,
            "config": config_dict,
            "seed": seed,
            "neighbors": neighbors[1]["key"] if neighbors else None,
        }
    )
    run_dir = store.run_dir(splits.fit.name, settings.backbone, method_name, seed)
    previous = store.read_run(run_dir)
    if previous is not None and previous.get("key") == key:
        log.info("%s/%s seed %d: cached", splits.fit.name, method_name, seed)
        return previous
    t0 = time.perf_counter()
    method = method_cls(config)
    inputs = FitInputs(
        embeddings=fit_emb.features,
        num_clusters=splits.fit.num_classes,
        seed=seed,
        neighbors=neighbors[0] if neighbors and "neighbors" in method_cls.needs else None,
        labels=fit_emb.labels if method_cls.uses_labels else None,  # leak guard
    )
    diagnostics = method.fit(inputs)
    predictions = method.predict(eval_emb.features)
    metrics = clustering_metrics(eval_emb.labels, predictions)
    nbr_meta = neighbors[1] if neighbors else {}
    result = {
        "key": key,
        "benchmark": splits.spec.name,
        "fit_split": splits.fit.split,
        "eval_split": splits.eval.split,
        "backbone": settings.backbone,
        "method": method_name,
        "seed": seed,
        "config": config_dict,
        "config_hash": stable_key(config_dict)[:8],
        "objective": method_cls.objective,
        "objective_value": diagnostics.get(method_cls.objective),
        "num_clusters": splits.fit.num_classes,
        "n_fit": len(fit_emb.labels),
        "n_eval": len(eval_emb.labels),
        **metrics,
        **{k: v for k, v in nbr_meta.items() if k.startswith("nbr_precision@")},
        "seconds": round(time.perf_counter() - t0, 2),
    }
    store.write_run(run_dir, predictions, result)
    log.info(
        "%s/%s seed %d: acc=%.4f nmi=%.4f ari=%.4f",
        splits.fit.name,
        method_name,
        seed,
        metrics["acc"],
        metrics["nmi"],
        metrics["ari"],
    )
    return result


def run_benchmark(
    splits: BenchmarkSplits,
    settings: SweepSettings,
    store: ArtifactStore,
    ray_session: RaySession,
) -> list[dict[str, Any]]:
    """Embed, mine and run every requested method x seed on one benchmark."""
    opts = EmbedOptions(settings.backbone, settings.weights_file, settings.batch_size)
    fit_emb = ensure_embeddings(splits.fit, opts, store, ray_session)
    eval_emb = (
        fit_emb
        if splits.eval is splits.fit
        else ensure_embeddings(splits.eval, opts, store, ray_session)
    )
    kmax = settings.kmax or min(DEFAULT_KMAX, len(fit_emb.labels) - 1)
    neighbors = ensure_neighbors(
        fit_emb, kmax, store, ray_session, settings.knn_backend, settings.knn_shards
    )
    return [
        _run_one(m, seed, splits, fit_emb, eval_emb, neighbors, settings, store)
        for m in settings.methods
        for seed in settings.seeds
    ]
