"""Thin Ray Train adapters: driver -> ``TorchTrainer`` -> worker -> ``method.fit`` (the one loop).

The worker injects Ray into the loop's hooks: ``prepare_model`` (DDP: gloo on CPU, NCCL on GPU),
``report`` (every epoch; rank 0 attaches a checkpoint) and the resume state from
``ray.train.get_checkpoint()``. Train V2 restores a run started again with the same
``(storage_path, name)``, so a killed job resumes from its last epoch when re-run.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import ray.train.torch as rtt
import torch

from trainables import inputs as job_inputs
from trainables import objective, state_io
from trainables.job import TrainJob
from trainables.loop import LoopHooks

log = logging.getLogger(__name__)


def _resume_state() -> dict[str, Any] | None:
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        return state_io.load_state(Path(directory) / state_io.CHECKPOINT_FILE)


_RAY_DIR = os.path.dirname(ray.__file__)


def _not_ray_info(record: logging.LogRecord) -> bool:
    """Keep a record unless Ray's own code logged it below WARNING."""
    return record.levelno >= logging.WARNING or not record.pathname.startswith(_RAY_DIR)


def train_worker(config: dict[str, Any]) -> None:
    """Runs on every Train worker; ``config`` is the job as a dict (``TrainJob.to_dict``)."""
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    # Ray Train logs two INFO lines per report ("Reporting training result", "Checkpoint
    # successfully created") through the root logger's console handler, which the sweep's
    # console receives; the loop's own lines (a resume, a NaN guard) stay
    for handler in logging.getLogger().handlers:
        handler.addFilter(_not_ray_info)
    job = TrainJob.from_dict(config)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if job.cpu_threads:
        torch.set_num_threads(job.cpu_threads)
    method, fit_inputs = job_inputs.build(job)
    search = job.trial.metric if job.trial else None  # a trial of a Tune search

    def report(metrics: dict[str, Any], state: dict[str, Any]) -> None:
        if search:  # Tune needs the metric in every report (TuneReportCallback forwards them)
            metrics = objective.with_metric(metrics, search, job.trial.mode)
        with tempfile.TemporaryDirectory() as directory:
            checkpoint = None
            if rank == 0:
                state_io.save_state(state, Path(directory) / state_io.CHECKPOINT_FILE)
                checkpoint = ray.train.Checkpoint.from_directory(directory)
            ray.train.report(metrics, checkpoint=checkpoint)  # every rank: it is a barrier

    resume_state = _resume_state()
    hooks = LoopHooks(
        prepare_model=rtt.prepare_model,
        report=report,
        resume_state=resume_state,
        device=rtt.get_device(),
        world_rank=rank,
        world_size=world,
        # the CPUs this worker reserved beyond its own process decode and augment its images
        loader_workers=max(0, job.train_cpus - 1),
        want_objective=bool(search),
    )
    diagnostics = method.fit(fit_inputs, hooks)
    diagnostics["resumed_from_epoch"] = int(resume_state["epoch"]) if resume_state else 0
    if search:  # a trial: the final objective is its result (every rank: report is a barrier)
        value = objective.trial_objective(method, diagnostics, job, fit_inputs)
        ray.train.report({**objective.numeric(diagnostics), search: value, "final": 1.0})
        return
    if rank == 0:
        out = Path(job.work_dir)
        out.mkdir(parents=True, exist_ok=True)
        np.save(out / "predictions.npy", job_inputs.predict_eval(method, job))
        state = method.export_state()
        if state is not None:  # what a later stage (starts_from) needs
            state_io.save_state(state, out / job_inputs.STATE_FILE)
        (out / "diagnostics.json").write_text(json.dumps(diagnostics, default=float))


def trainer(
    job: TrainJob,
    num_workers: int,
    use_gpu: bool,
    storage: Path | str,
    name: str,
    callbacks: list | None = None,
) -> rtt.TorchTrainer:
    """The TorchTrainer of one job. A stable ``(storage, name)`` makes a re-run resume."""
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    return rtt.TorchTrainer(
        train_worker,
        train_loop_config=job.to_dict(),
        scaling_config=ray.train.ScalingConfig(
            num_workers=num_workers,
            use_gpu=use_gpu,
            # a GPU worker's share of its node's CPUs decodes and augments its images
            resources_per_worker={
                "CPU": job.train_cpus,
                **({"GPU": 1} if use_gpu else {}),
            },
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=str(Path(storage).resolve()),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            failure_config=ray.train.FailureConfig(max_failures=1),
            callbacks=callbacks or [],
        ),
        torch_config=rtt.TorchConfig(backend="nccl" if use_gpu else "gloo"),
    )


def fit_off_main_thread(trainer: rtt.TorchTrainer) -> Any:
    """``trainer.fit()`` in a helper thread while the main thread waits for it.

    Called from the main thread, Train installs its own SIGINT handler, which aborts the run
    and exits the process with status 1 and no word; off the main thread it installs none (as
    in a Tune trial), so Ctrl-C reaches the CLI as a KeyboardInterrupt (exit 130, one line
    naming --resume) and the run's checkpoints so far stay for the rerun to resume from."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = trainer.fit()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="ray-train-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.5)  # a KeyboardInterrupt lands here
    if "error" in box:
        raise box["error"]
    return box["result"]


def train(
    job: TrainJob, num_workers: int, use_gpu: bool, storage: Path, name: str
) -> tuple[np.ndarray, dict[str, float]]:
    """Run ``job`` on ``num_workers`` DDP workers; returns (eval predictions, diagnostics)."""
    fit_off_main_thread(trainer(job, num_workers, use_gpu, storage, name))
    out = Path(job.work_dir)
    return np.load(out / "predictions.npy"), json.loads((out / "diagnostics.json").read_text())
