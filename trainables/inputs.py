"""Ray-free glue between artifacts and a method: build its FitInputs from a training job
(trainables/job.py: paths and names, never arrays) and predict the evaluation split."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepclust.artifacts import ArtifactStore, stable_key
from deepclust.config import from_dict
from trainables import state_io
from trainables.job import TrainJob
from trainables.methods import METHODS, ClusteringMethod, FitInputs

STATE_FILE = "model_state.pt"  # a run's export_state(), kept for the stages that start from it


def load_state(path: str | None) -> dict[str, Any] | None:
    """The parent run's saved state (data only: trainables/state_io.py), or None."""
    return state_io.load_state(path) if path else None


def _images(job: TrainJob, split: str):
    """The split's images as the driver saw them: the benchmark's view, then ``subset``."""
    from deepclust.datasets import resolve_dataset
    from deepclust.views import BenchmarkView, apply_view

    spec = resolve_dataset(job.dataset)
    images = spec.load(split, Path(job.data_root), False)
    view = BenchmarkView(job.view_classes, job.view_imbalance, job.view_ignore_labels)
    # the long-tailed draw is the fit split's (a separate eval split keeps its balance)
    images = apply_view(images, view, long_tail=split == job.fit_split)
    return images.subset(job.subset) if job.subset else images


def build(job: TrainJob) -> tuple[ClusteringMethod, FitInputs]:
    """The method (config validated strictly) and its inputs for one training job."""
    method_cls = METHODS.get(job.method)
    method = method_cls(from_dict(method_cls.Config, job.method_config))
    fit = ArtifactStore.read_embeddings(Path(job.fit_embeddings))
    nbr = None
    if "neighbors" in method_cls.needs:
        nbr = ArtifactStore.read_neighbors(Path(job.neighbors))[0]
    finetune = bool(getattr(method.config, "finetune", False))
    labelled = {}
    if job.gcd_split:  # GCD: scored rows for all; labelled rows for gcd_labels methods
        with np.load(job.gcd_split) as split:
            labelled = {"unlabelled_idx": split["unlabelled_idx"]}
            if method_cls.gcd_labels:
                labelled.update(labelled_idx=split["labelled_idx"], labelled_y=split["labelled_y"])
    inputs = FitInputs(
        embeddings=fit.features,
        num_clusters=job.num_clusters,
        seed=job.seed,
        neighbors=nbr,
        labels=fit.labels if method_cls.uses_labels else None,  # leak guard
        images=_images(job, job.fit_split) if finetune else None,
        backbone=job.backbone,
        backbone_weights=job.backbone_weights,
        init_state=load_state(job.init_state),
        **labelled,
    )
    return method, inputs


def predict_eval(method: ClusteringMethod, job: TrainJob) -> np.ndarray:
    """(M,) cluster ids of the eval split: through the finetuned backbone when there is one."""
    if getattr(method.config, "finetune", False):
        return method.predict_images(_images(job, job.eval_split))
    return method.predict(ArtifactStore.read_embeddings(Path(job.eval_embeddings)).features)


@dataclass(frozen=True)
class KeptFit:
    """A finished search trial's fit, kept so that the final run of the search seed with the
    selected configuration is that fit instead of a second, identical training (runs are
    deterministic for a seed). Data only: a .npy read without pickle, state_io's state file,
    JSON."""

    predictions: np.ndarray  # (M,) cluster ids of the eval split
    diagnostics: dict[str, Any]
    state_file: Path | None  # the method's export_state(), for stages that start from it
    seconds: float


def _fit_dir(root: Path, config: dict[str, Any], seed: int) -> Path:
    return root / stable_key({"config": config, "seed": seed})[:16]


def keep_fit(
    root: Path,
    method: ClusteringMethod,
    job: TrainJob,
    diagnostics: dict[str, Any],
    seconds: float,
) -> None:
    """Write a trial's fit under ``root`` (shared storage: the driver reads it), atomically."""
    directory = _fit_dir(root, job.method_config, job.seed)
    tmp = directory.with_name(f"{directory.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    np.save(tmp / "predictions.npy", predict_eval(method, job).astype(np.int64))
    state = method.export_state()
    if state is not None:
        state_io.save_state(state, tmp / STATE_FILE)
    meta = {"config": job.method_config, "seed": job.seed, "seconds": seconds}
    (tmp / "fit.json").write_text(json.dumps({**meta, "diagnostics": diagnostics}, default=float))
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(tmp, directory)


def kept_fit(root: Path, config: dict[str, Any], seed: int) -> KeptFit | None:
    """The fit a trial kept for ``config`` and ``seed``, or None (none kept, or unreadable:
    the run then trains as usual)."""
    directory = _fit_dir(root, config, seed)
    try:
        meta = json.loads((directory / "fit.json").read_text())
        predictions = np.load(directory / "predictions.npy", allow_pickle=False)
    except (OSError, ValueError):
        return None
    if meta.get("config") != config or meta.get("seed") != seed:
        return None
    state = directory / STATE_FILE
    return KeptFit(
        predictions,
        meta["diagnostics"],
        state if state.is_file() else None,
        float(meta["seconds"]),
    )
