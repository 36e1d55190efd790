"""A training job: everything a Ray worker (a seed task, a Tune trial, a Ray Train worker)
rebuilds a method and its inputs from. Paths, never arrays: each worker reads the artifacts
itself. Typed and frozen; it crosses process boundaries as a plain dict (``to_dict`` /
``from_dict``, strict: an unknown or mistyped key is an error, not a silent default).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from deepclust.config import from_dict, to_dict


@dataclass(frozen=True)
class TrialSetup:
    """What a job gains as a trial of a Tune search (orchestrator/search.py)."""

    metric: str  # the search objective the trial reports (trainables/objective.py)
    mode: str  # "min" | "max"
    base_config: dict[str, Any] = field(default_factory=dict)  # the fidelity's config
    trial_workers: int = 0  # 0: the trial trains in its own process; N: Ray Train, N workers
    use_gpu: bool = False  # Ray Train trials: workers on GPUs
    train_storage: str | None = None  # Ray Train trials: where their Train runs live
    fits_dir: str | None = None  # in-process trials keep their fit here (the final run reuses it)
    trial_states: str | None = None  # in-process trials' loop state, for --resume


@dataclass(frozen=True)
class TrainJob:
    method: str
    method_config: dict[str, Any]
    seed: int
    num_clusters: int
    fit_embeddings: str
    eval_embeddings: str
    neighbors: str | None
    dataset: str  # a dataset name (parquet:/folder: paths absolute)
    data_root: str
    fit_split: str  # the loader's split names; ``subset`` is applied again by the worker
    eval_split: str  # GCD: the fit pool (the protocol is transductive)
    subset: int | None  # first n images (finetune smoke runs)
    backbone: str
    backbone_weights: str | None
    work_dir: str
    init_state: str | None  # a staged method's parent state file
    gcd_split: str | None  # the GCD split file: labels only for gcd_labels methods
    # the benchmark's view (deepclust/views.py), applied again by the worker that loads images
    view_classes: tuple[str, ...] = ()
    view_imbalance: float | None = None
    view_ignore_labels: bool = False
    cpu_threads: int = 0  # torch threads (0: leave torch's default)
    train_cpus: int = 1  # CPUs per Ray Train worker (its data loader uses the rest)
    keep_fits: bool = False  # search trials on the headline inputs keep their fit
    trial: TrialSetup | None = None  # set for a trial of a Tune search

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainJob:
        trial = data.get("trial")
        if isinstance(trial, dict):
            data = {**data, "trial": from_dict(TrialSetup, trial)}
        return from_dict(cls, data)

    def replace(self, **changes: Any) -> TrainJob:
        return dataclasses.replace(self, **changes)
