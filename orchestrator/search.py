"""Hyperparameter search: one Ray Tune ``Tuner`` per (benchmark, backbone, method, setting).

Design (each point follows how Ray Tune, Ray Train and Optuna behave together):

* Embeddings, the kNN table and the GCD split exist before Tune starts (pipeline.py); a trial
  receives their paths, never arrays, and never recomputes them.
* ``OptunaSearch`` (TPE, seeded) samples the method's define-by-run space
  (``search_spaces``), with ``metric``/``mode`` given to the searcher itself (with a
  define-by-run space Tune's own metric/mode never reach it).
* ASHA stops trials early only for methods whose loop reports the search objective at every
  report (``reports_objective``, UNIC); the others report it once, at the end, and run FIFO.
* Trials train in their own process (heads on cached embeddings, on the trial's GPU when the
  cluster has GPUs) or, with
  ``trial_workers >= 1``, through Ray Train inside the trial (trainables/tune_trial.py);
  ``max_concurrent_trials`` comes from the cluster's GPUs or CPUs per trial, since Tune only
  reserves the trial driver's resources (Train asks for its workers later).
* Tuners run one after another, each under ``<output>/tune/<name>``: the name holds a key of
  everything that shapes the search, so a changed budget or input starts a new search, a
  finished one is reused from its ``search.json``, and an interrupted one continues with
  ``--resume`` (``Tuner.restore``: finished trials are kept, never run again; an unfinished
  in-process trial continues from its ``trial_states/<trial id>.pt``, written at every report,
  not from a Tune checkpoint that Tune's ~1 s state snapshot may name after its deletion).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from deepclust.artifacts import ArtifactStore, stable_key
from deepclust.errors import UserError
from orchestrator.leaderboard import SEARCH_FILE
from search_spaces import SPACES, fidelity_overrides, is_empty
from trainables.job import TrainJob, TrialSetup
from trainables.methods import METHODS
from trainables.objective import search_metric

log = logging.getLogger(__name__)

ASHA_GRACE = 3  # reports before ASHA may stop a trial (UNIC reports ~10 times per run)


class SearchFailed(UserError):
    """Every trial of one method's search failed (the sweep reports it and goes on)."""


@dataclass(frozen=True)
class SearchOptions:
    budget: int  # trials per searched method (0: no search, the fidelity's config)
    fidelity: str = "full"  # full | laptop | smoke (search_spaces/budgets.py)
    oracle: bool = False  # rank trials by test accuracy: marked in every output
    resume: bool = False  # continue an interrupted search (Tuner.restore)
    trial_workers: int = 0  # 0: train inside the trial; N: Ray Train DDP with N workers
    seed: int = 0  # the trials' training seed and the sampler's seed
    asha: bool = True
    use_gpus: bool = True  # False (--cpu-workers): trials train on CPUs on a GPU cluster too


@dataclass(frozen=True)
class SearchOutcome:
    config: dict[str, Any]  # overrides the final seeds run with (fidelity + best trial)
    trials: int
    seconds: float
    metric: str
    mode: str
    best_value: float | None
    oracle: bool
    path: str | None  # the Tune experiment folder (None: nothing searched)

    def record(self) -> dict[str, Any]:
        return {
            "trials": self.trials,
            "search_seconds": round(self.seconds, 2),
            "selected_by": f"ORACLE {self.metric}" if self.oracle else self.metric,
            "search_mode": self.mode,
            "best_value": self.best_value,
            "oracle": self.oracle,
            "search_path": self.path,
        }


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("_")[-60:]


def _concurrency(resources, opts: SearchOptions, budget: int) -> tuple[int, dict, int]:
    """(max concurrent trials, resources of one trial driver, torch threads per trial)."""
    if opts.trial_workers > 0:  # Train workers are placed later, outside the driver's bundle
        if resources.gpus:
            slots = resources.gpus // opts.trial_workers
        else:
            slots = int(resources.cpus // (opts.trial_workers + 0.5))
        return max(1, min(budget, slots)), {"CPU": 0.5}, 0
    if resources.gpus:  # one GPU per trial: the head trains on it (trainables/loop.py)
        return max(1, min(budget, resources.gpus)), {"CPU": 1, "GPU": 1}, 0
    slots = max(1, min(budget, resources.cpus))
    return slots, {"CPU": 1}, max(1, resources.cpus // slots)


def search_method(
    method: str,
    job: TrainJob,
    identity: dict[str, Any],
    store: ArtifactStore,
    ray_session,
    setting: str,
    opts: SearchOptions,
    kmax: int = 50,
    on_running: Callable[[], None] | None = None,
) -> tuple[SearchOutcome, str | None]:
    """Search ``method``'s space on one benchmark: (the outcome, the search's key; None when
    nothing was searched). The outcome's ``config`` is what the final seeds run with.

    ``job`` is the training job of the search seed (pipeline._job); ``identity`` what
    else makes this search distinct (input keys, benchmark, backbone). ``on_running`` is
    called (at most once, from Tune's loop) when the first trials that fit at once have all
    started; the caller queues work behind them then (pipeline._search_all).
    """
    method_cls = METHODS.get(method)
    base = fidelity_overrides(method, opts.fidelity)
    metric, mode = search_metric(method_cls, setting, opts.oracle)
    if opts.budget == 0 or is_empty(method):
        return SearchOutcome(base, 0, 0.0, metric, mode, None, opts.oracle, None), None
    key = stable_key(
        {
            **identity,
            "method": method,
            "setting": setting,
            "base": base,
            "budget": opts.budget,
            "oracle": opts.oracle,
            "seed": opts.seed,
            "trial_workers": opts.trial_workers,
            "asha": opts.asha,
            "kmax": kmax,
        }
    )
    name = f"{method}-{setting}-{_slug(identity['benchmark'])}-{key[:10]}"
    root = store.root / "tune"
    exp_dir = root / name
    summary = exp_dir / SEARCH_FILE
    damaged = False
    if summary.is_file():
        try:
            done = json.loads(summary.read_text())
            if done.get("key") == key:
                log.info("%s search: cached (%s)", method, exp_dir)
                return SearchOutcome(**done["outcome"]), key
        except (ValueError, TypeError, AttributeError):
            damaged = True  # truncated or edited: rebuilt from the finished trials
    if exp_dir.exists() and not opts.resume:
        what = (
            f"the {method} search record {summary} is unreadable"
            if damaged
            else f"an interrupted {method} search is in {exp_dir}"
        )
        raise UserError(
            f"{what}; rerun with --resume to continue it from its finished trials, or "
            "delete that folder to start over"
        )
    # trials checkpoint ~10 times each; Tune's snapshot-frequency warning would flood the log
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # the previous method's seed runs may hold every CPU when a search starts (the pipeline
    # overlaps them); its trials then wait minutes, not for want of resources
    for suffix in ("", "_AUTOSCALER"):
        os.environ.setdefault(f"TUNE_WARN_INSUFFICENT_RESOURCE_THRESHOLD_S{suffix}", "900")
    import ray.tune as tune
    from ray.tune.schedulers import ASHAScheduler

    from deepclust.progress import bar as progress
    from orchestrator.optuna_journal import (
        JournalOptunaSearch,
        close_abandoned,
        finished_trials,
        new_study,
        open_journal,
        with_default_first,
    )
    from orchestrator.search_progress import BARS, WHEN_RUNNING, TrialProgress, when_running
    from trainables.tune_trial import TRIAL_STATES, run_trial

    resources = ray_session.resources()
    if not opts.use_gpus:
        resources = replace(resources, gpus=0)
    slots, per_trial, threads = _concurrency(resources, opts, opts.budget)
    use_gpu = resources.gpus > 0
    trial_job = job.replace(
        cpu_threads=threads,
        train_cpus=resources.train_worker_cpus(use_gpu),
        trial=TrialSetup(
            metric=metric,
            mode=mode,
            base_config=base,
            trial_workers=opts.trial_workers,
            use_gpu=use_gpu,
            train_storage=str((exp_dir / "train").resolve()),
            # trials that train in their own process keep their fit for the final run of the
            # search seed (pipeline._search_and_run); Ray Train trials do not
            fits_dir=str(exp_dir / "fits") if job.keep_fits and not opts.trial_workers else None,
            trial_states=str((exp_dir / TRIAL_STATES).resolve()),  # in-process trials' resume
        ),
    )
    trainable = tune.with_resources(tune.with_parameters(run_trial, job=trial_job), per_trial)
    t0 = time.perf_counter()
    if exp_dir.exists():
        if not tune.Tuner.can_restore(str(exp_dir)):
            raise UserError(
                f"{exp_dir} holds no restorable Tune state (killed before its first "
                "checkpoint); delete that folder and rerun"
            )
        log.info("%s search: resuming %s", method, exp_dir)
        journal = open_journal(root)  # the restored searcher writes on to its study in it
        tuner = tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_errored=False)
    else:
        asha = (
            opts.asha and method_cls.reports_objective and metric == method_cls.search_objective[0]
        )
        space = functools.partial(
            with_default_first,
            SPACES.get(method),
            setting=setting,
            kmax=kmax,
            num_clusters=job.num_clusters,
        )
        journal = open_journal(root)  # every search's Optuna study, for optuna-dashboard
        study_attrs = {
            "method": method,
            "setting": setting,
            "benchmark": identity["benchmark"],
            "fidelity": opts.fidelity,
            "budget": opts.budget,
            "tune_folder": str(exp_dir.resolve()),
        }
        new_study(journal, name, metric, mode, study_attrs)
        searcher = JournalOptunaSearch(
            space=space, metric=metric, mode=mode, seed=opts.seed, storage=journal, study_name=name
        )
        if not log.isEnabledFor(logging.DEBUG):  # -v keeps Tune's own console output
            # Tune's new console reporter prints an experiment box and a TensorBoard hint into
            # Ray's temp folder even at verbose=0; the classic one is silent there, and the
            # sweep logs the search, its TensorBoard folder and its result itself
            os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                metric=metric,
                mode=mode,
                search_alg=searcher,
                scheduler=(
                    ASHAScheduler(
                        time_attr="training_iteration",
                        max_t=1000,
                        grace_period=ASHA_GRACE,
                        reduction_factor=2,
                    )
                    if asha
                    else None
                ),
                num_samples=opts.budget,
                max_concurrent_trials=slots,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=str(root.resolve()),
                # Ray Train trials' checkpoints (in-process trials keep a state file instead,
                # trainables/tune_trial.py); 2, not 1: with 1 every report forces an
                # experiment snapshot (Tune warns)
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                failure_config=tune.FailureConfig(max_failures=0),
                verbose=0,
                callbacks=[TrialProgress(name)],
            ),
        )
        log.info(
            "%s search: %d trials (%d at a time), metric %s (%s)%s%s -> %s",
            method,
            opts.budget,
            slots,
            metric,
            mode,
            ", ASHA" if asha else "",
            ", ORACLE: ranked by test labels" if opts.oracle else "",
            exp_dir,
        )
    # Tune saves its experiment state at most every 10 s by default, and Tuner.restore runs
    # again every trial that state does not record as finished: a kill up to 10 s after a
    # trial ended repeated it. Each save is tens of kB here, so save at most every second.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    # Ctrl-C must stop the sweep, not the search alone: Tune's own SIGINT handler ends fit()
    # normally with the trials finished so far, and the sweep would record that partial
    # search as done. Without it the KeyboardInterrupt reaches the CLI (exit 130, no
    # search.json), and --resume continues from the experiment state saved every second.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    finished = finished_trials(journal, name)
    if on_running is not None:
        when_running(name, min(slots, opts.budget - finished), on_running)
    with progress(
        total=opts.budget, desc=f"{method} search", unit="trial", initial=finished
    ) as bar:
        BARS[name] = bar
        try:
            grid = tuner.fit()
        finally:
            BARS.pop(name, None)
            WHEN_RUNNING.pop(name, None)
    close_abandoned(journal, name)
    outcome = _best(grid, method, base, metric, mode, opts, exp_dir, time.perf_counter() - t0)
    shutil.rmtree(exp_dir / TRIAL_STATES, ignore_errors=True)  # only an unfinished search's
    return outcome, key


def _best(grid, method, base, metric, mode, opts, exp_dir, seconds) -> SearchOutcome:
    failed = [r for r in grid if r.error is not None]
    for r in failed:  # a trial that fails is reported once, with its reason; the search goes on
        reason = str(r.error).strip().splitlines()[-1] if str(r.error).strip() else r.error
        log.warning("%s search: trial %s failed: %s", method, Path(r.path).name, reason)
    scored = [
        r
        for r in grid
        if r.error is None and r.metrics and math.isfinite(r.metrics.get(metric, math.nan))
    ]
    if not scored:
        first = str(failed[0].error).strip().splitlines()[-1] if failed else "no trial reported"
        raise SearchFailed(f"every trial of the {method} search failed ({first}); see {exp_dir}")
    best = grid.get_best_result(metric=metric, mode=mode, scope="last", filter_nan_and_inf=True)
    suggested = dict(best.config)  # the space's suggestions (every name is a config field)
    log.info("%s search: best %s=%.4g with %s", method, metric, best.metrics[metric], suggested)
    return SearchOutcome(
        {**base, **suggested},
        len(grid),
        seconds,
        metric,
        mode,
        float(best.metrics[metric]),
        opts.oracle,
        str(exp_dir),
    )


def write_record(outcome: SearchOutcome, key: str, final: dict[str, Any]) -> None:
    """Mark a search finished (its ``search.json``): the outcome, the leaderboard join keys
    of the final runs (setting, benchmark, backbone, method, config hash, oracle: an oracle
    search's record joins only the oracle runs, never an honest row with the same config)
    and when it finished (``finished``, epoch seconds: the latest honest selection is what
    the ACC plot shows, orchestrator/plots.py)."""
    if outcome.path is None:
        return
    if bool(final.get("oracle")) != outcome.oracle:
        raise ValueError(
            f"search record oracle={outcome.oracle} for a run with oracle={final.get('oracle')}"
        )
    path = Path(outcome.path) / SEARCH_FILE
    payload = {
        "key": key,
        "outcome": outcome.__dict__,
        **{k: final[k] for k in ("setting", "benchmark", "backbone", "method", "config_hash")},
        **outcome.record(),
        "finished": time.time(),
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=float))
    tmp.replace(path)
