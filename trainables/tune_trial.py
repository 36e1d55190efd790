"""The Tune function trainable: one trial = one method fit with the trial's overrides.

Two ways to train a trial, chosen by ``job.trial.trial_workers``:

* ``0`` (the default for heads on cached embeddings): the method trains inside the trial's own
  process. A Tune trial already is a Ray actor holding its resources; wrapping a one-process
  head fit in a TorchTrainer would add a controller actor, a worker group and a placement
  group per trial (tens of seconds on a 2-core machine) for no parallelism.
* ``N >= 1``: the Train V2 driver pattern (Ray Train inside a Tune function trainable, so
  Tune sees rank 0's reports through ``TuneReportCallback``). The trial builds a
  TorchTrainer with N DDP workers and ``TuneReportCallback``; its run name is the trial id, so
  a restored trial resumes from its last Train checkpoint.

Either way every loop report reaches Tune with the search metric (ASHA reads it for methods
that report their objective each epoch), and the last report is the finished trial's objective
(trainables/objective.py).

An in-process trial resumes from its own state file, not from a Tune checkpoint: Tune saves its
experiment state about once a second and, with a bounded ``num_to_keep``, deletes a trial's
older checkpoints as new ones arrive, so the state a Ctrl-C leaves behind can name a checkpoint
already deleted and ``--resume`` would fail that trial. ``<experiment>/trial_states/<trial
id>.pt`` is replaced atomically at every report and is always the trial's latest epoch.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import ray.tune as tune
import torch

from trainables import inputs as job_inputs
from trainables import objective, state_io
from trainables.job import TrainJob
from trainables.loop import LoopHooks

TRIAL_STATES = "trial_states"  # in the experiment folder: in-process trials' loop states


def state_path(job: TrainJob) -> Path:
    """This trial's state file (its Tune trial id is kept by a restored trial)."""
    return Path(job.trial.trial_states) / f"{tune.get_context().get_trial_id()}.pt"


def _resume_state(path: Path) -> dict[str, Any] | None:
    return state_io.load_state(path) if path.is_file() else None


def run_trial(config: dict[str, Any], job: TrainJob) -> None:
    """Tune entry point: ``config`` is what the search space suggested for this trial."""
    logging.getLogger("ray").setLevel(logging.WARNING)  # one line per checkpoint otherwise
    trial_job = job.replace(method_config={**job.trial.base_config, **config})
    if job.trial.trial_workers > 0:
        _train_in_tune(trial_job)
    else:
        _in_process(trial_job)


def _in_process(job: TrainJob) -> None:
    if job.cpu_threads:
        torch.set_num_threads(job.cpu_threads)
    metric, mode = job.trial.metric, job.trial.mode
    method, fit_inputs = job_inputs.build(job)

    path = state_path(job)
    path.parent.mkdir(parents=True, exist_ok=True)

    def report(metrics: dict[str, Any], state: dict[str, Any]) -> None:
        state_io.save_state(state, path)  # before the report: Tune may stop the trial on it
        tune.report(objective.with_metric(metrics, metric, mode))

    hooks = LoopHooks(report=report, resume_state=_resume_state(path), want_objective=True)
    t0 = time.perf_counter()
    diagnostics = method.fit(fit_inputs, hooks)
    seconds = round(time.perf_counter() - t0, 2)
    value = objective.trial_objective(method, diagnostics, job, fit_inputs)
    if job.trial.fits_dir:  # the search seed's final run of this config can be this fit
        job_inputs.keep_fit(Path(job.trial.fits_dir), method, job, diagnostics, seconds)
    tune.report({**objective.numeric(diagnostics), metric: value, "final": 1.0})


def _train_in_tune(job: TrainJob) -> None:
    from ray.tune.integration.ray_train import TuneReportCallback

    from trainables.ray_train import trainer

    trial_id = tune.get_context().get_trial_id()
    trainer(
        job,
        job.trial.trial_workers,
        job.trial.use_gpu,
        job.trial.train_storage,
        name=f"train-{trial_id}",  # stable per trial: a restored trial resumes its Train run
        callbacks=[TuneReportCallback()],
    ).fit()
