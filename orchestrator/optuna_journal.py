"""Every search's Optuna study in one journal file under the sweep's output, for optuna-dashboard.

* One journal per output folder (``<output>/tune/optuna.journal``, Optuna's
  ``JournalStorage`` over a ``JournalFileBackend``): a single ``optuna-dashboard`` shows every
  method's study. A file, not a database: it lives on the output's shared storage on a cluster
  (the searcher runs in the sweep's driver, which writes it; the trials never touch it).
* A study is named after its Tune experiment folder (``<method>-<setting>-<benchmark>-<key>``),
  so it names the same search as ``<output>/tune/<name>``; its user attributes repeat the
  method, setting, benchmark, metric and folder for the dashboard's study list.
* ``--resume``: ``Tuner.restore`` unpickles the searcher, storage included (the journal's
  absolute path), so it writes on to the same study; nothing new is created. The journal can be
  ahead of that pickle (Tune saves the searcher at most every second), which
  ``JournalOptunaSearch`` absorbs, and trials the killed driver had asked for but Tune never
  recorded stay ``RUNNING`` in the journal: ``close_abandoned`` fails them once the search ends.
"""

from __future__ import annotations

import logging
import shlex
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

log = logging.getLogger(__name__)

JOURNAL = "optuna.journal"  # under <output>/tune: every search's study
DEFAULT_TRIAL = "default_config"  # user attribute of the trial that runs the default config
DASHBOARD_PORT = 8080
_announced: set[str] = set()  # journals whose dashboard command this process logged


def journal_path(tune_root: Path) -> Path:
    return (Path(tune_root) / JOURNAL).resolve()


def dashboard_command(journal: Path, port: int = DASHBOARD_PORT) -> str:
    return f"optuna-dashboard {shlex.quote(str(journal))} --host 127.0.0.1 --port {port}"


def open_journal(tune_root: Path) -> JournalStorage:
    """The output's journal storage (created when absent); its dashboard command is logged
    once per process (one sweep)."""
    path = journal_path(tune_root)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not log.isEnabledFor(logging.DEBUG):  # -v keeps Optuna's "study created" lines
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(path)))
    if str(path) not in _announced:
        _announced.add(str(path))
        log.info("optuna dashboard: %s", dashboard_command(path))
    return storage


def new_study(
    storage: JournalStorage, name: str, metric: str, mode: str, attrs: dict[str, str]
) -> None:
    """Create the study of a search that starts from scratch. A study of that name left by an
    earlier start of the same search (its Tune folder deleted to start over) is deleted first:
    its trials would otherwise seed this search's TPE sampler."""
    try:
        optuna.delete_study(study_name=name, storage=storage)
        log.info("optuna study %s: replaced (its search starts over)", name)
    except KeyError:
        pass
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        direction="minimize" if mode == "min" else "maximize",
    )
    with warnings.catch_warnings():  # set_metric_names is marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([metric])
    for key, value in {**attrs, "metric": metric, "mode": mode}.items():
        study.set_user_attr(key, value)
    # the first trial runs the method's default configuration (no suggestions, see
    # with_default_first): the search moves away from it only when its objective prefers another
    study.enqueue_trial({}, user_attrs={DEFAULT_TRIAL: True})


def with_default_first(space: Callable[..., dict], trial, **kwargs) -> dict:
    """A define-by-run space whose enqueued first trial suggests nothing: that trial runs the
    method's default configuration (at the search's fidelity), every later one samples."""
    if trial.user_attrs.get(DEFAULT_TRIAL):
        return {}
    return space(trial, **kwargs)


def study_states(tune_root: Path) -> dict[str, list[str]]:
    """Each study in the output's journal -> its trials' states (``COMPLETE``, ...)."""
    path = journal_path(tune_root)
    if not path.is_file():
        return {}
    storage = JournalStorage(JournalFileBackend(str(path)))
    return {
        summary.study_name: [
            t.state.name
            for t in optuna.load_study(study_name=summary.study_name, storage=storage).trials
        ]
        for summary in optuna.get_all_study_summaries(storage)
    }


def finished_trials(storage: JournalStorage, name: str) -> int:
    """How many of the study's trials have ended (complete, failed or pruned); 0 without it."""
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return 0
    return sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))


def close_abandoned(storage: JournalStorage, name: str) -> int:
    """Fail the trials still RUNNING once a search has ended: asked for by a killed driver after
    Tune's last save, never run (Tune asked for new ones on --resume). Returns their count."""
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:  # a search started before its study was kept in the journal
        return 0
    abandoned = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in abandoned:
        study.tell(trial.number, state=TrialState.FAIL)
    if abandoned:
        log.info(
            "optuna study %s: %d trial(s) abandoned by the interrupted run marked failed",
            name,
            len(abandoned),
        )
    return len(abandoned)


class JournalOptunaSearch(OptunaSearch):
    """``OptunaSearch`` whose journal may be ahead of its restored state: after ``--resume``
    Tune runs again a trial that ended within a second before the kill; the journal already
    holds that trial's end, which stands (Optuna refuses to change a finished trial)."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        finished = self.__dict__.setdefault("_journal_finished", set())
        if trial_id in finished:
            return
        try:
            super().on_trial_result(trial_id, result)
        except UpdateFinishedTrialError:
            finished.add(trial_id)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if trial_id in self.__dict__.get("_journal_finished", ()):
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result=result, error=error)
