"""What a hyperparameter search ranks trials by (Ray-free; used inside Tune trials and Train
workers).

Objective hygiene: a search never reads a ground-truth label of the images it is scored on.

* clustering: the method's ``search_objective``, label-free and comparable across configs;
* GCD: ``val_acc``, accuracy on held-out *labelled* Old-class images (docs/gcd.md, GCD:
  held-out labelled images),
  which the method never trained on;
* ``--oracle`` only: ``oracle_acc``, accuracy against the evaluation labels. Every output of an
  oracle search says so (leaderboard objective ``ORACLE acc``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from deepclust.artifacts import ArtifactStore
from deepclust.metrics import hungarian_acc
from deepclust.selection import neighbor_agreement
from trainables.job import TrainJob
from trainables.methods import ClusteringMethod, FitInputs

ORACLE = "oracle_acc"
GCD_VAL = "val_acc"
WORST = 1e9  # reported for a degenerate run (non-finite score) and before the first score


def search_metric(method_cls: type[ClusteringMethod], setting: str, oracle: bool):
    """(metric name, mode) a search of ``method_cls`` optimises."""
    if oracle:
        return ORACLE, "max"
    if setting == "gcd":
        return GCD_VAL, "max"
    return method_cls.search_objective


def pending(mode: str) -> float:
    """The worst value: what a report carries before the objective exists (Tune needs the
    metric key in every report; Optuna's pruner is off, so only the final value is used)."""
    return WORST if mode == "min" else -WORST


def finite(value: float, mode: str) -> float:
    """Degenerate runs (UNIC's +inf selection score) become the worst finite value: Optuna's
    sampler and Tune's schedulers compare numbers."""
    return float(value) if math.isfinite(value) else pending(mode)


def with_metric(metrics: dict[str, Any], name: str, mode: str) -> dict[str, Any]:
    """``metrics`` with the search metric present and finite (``pending`` until it exists):
    Tune needs it in every report."""
    return {**metrics, name: finite(metrics.get(name, pending(mode)), mode)}


def _fit_predictions(method: ClusteringMethod, inputs: FitInputs) -> np.ndarray:
    if getattr(method.config, "finetune", False):
        return method.predict_images(inputs.images)
    return method.predict(inputs.embeddings)


def trial_objective(
    method: ClusteringMethod,
    diagnostics: dict[str, Any],
    job: TrainJob,
    inputs: FitInputs,
) -> float:
    """The finished trial's value of its search metric (``job.trial``; finite, see ``finite``)."""
    name, mode = job.trial.metric, job.trial.mode
    if name == ORACLE:  # the evaluation labels: only with --oracle
        from trainables.inputs import predict_eval

        labels = ArtifactStore.read_embeddings(Path(job.eval_embeddings), features=False).labels
        pred = predict_eval(method, job)
        if job.gcd_split:
            with np.load(job.gcd_split) as split:
                rows = split["unlabelled_idx"]
            return finite(hungarian_acc(labels[rows], pred[rows]), mode)
        return finite(hungarian_acc(labels[: len(pred)], pred), mode)
    if name == GCD_VAL:  # held-out labelled images (GCD's labelled data, never trained on)
        with np.load(job.gcd_split) as split:
            rows = split["val_idx"]
        if not len(rows):
            raise ValueError("a GCD search needs held-out labelled images (--gcd-val-frac > 0)")
        fit = ArtifactStore.read_embeddings(Path(job.fit_embeddings), features=False)
        labels = fit.labels[rows]
        return finite(hungarian_acc(labels, _fit_predictions(method, inputs)[rows]), mode)
    if name in diagnostics:
        return finite(diagnostics[name], mode)
    if name == "neighbor_agreement":
        nbr = inputs.neighbors
        if nbr is None:
            nbr = ArtifactStore.read_neighbors(Path(job.neighbors))[0]
        pred = _fit_predictions(method, inputs)
        return finite(neighbor_agreement(pred, nbr, inputs.num_clusters), mode)
    raise KeyError(f"{type(method).__name__} reported no '{name}' (its search objective)")


def numeric(diagnostics: dict[str, Any]) -> dict[str, float]:
    """The diagnostics a Tune report can carry (numbers only)."""
    return {k: float(v) for k, v in diagnostics.items() if isinstance(v, int | float)}
