"""The search's progress bar (trials finished of the budget, with an ETA), advanced by a Tune
callback in the driver, and the hook that tells the pipeline when a search's trials run.

Tune pickles its callbacks into the experiment state and ``Tuner.restore`` brings them back,
so the callback holds only the search's name; the bar and the hook live in ``BARS`` and
``WHEN_RUNNING`` for as long as ``search_method`` runs that search.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ray.tune import Callback

BARS: dict[str, Any] = {}  # search name -> its open bar (deepclust.progress.bar)
# search name -> [trials still to start, hook]: the hook is called once, when that many trials
# have started, or when the first trial ends if fewer ever run at once
WHEN_RUNNING: dict[str, list[Any]] = {}


def when_running(name: str, trials: int, hook: Callable[[], None]) -> None:
    """Call ``hook`` once ``trials`` trials of search ``name`` have started (or one ended)."""
    WHEN_RUNNING[name] = [max(1, trials), hook]


def _fire(name: str) -> None:
    entry = WHEN_RUNNING.pop(name, None)
    if entry is not None:
        entry[1]()


class TrialProgress(Callback):
    def __init__(self, name: str):
        self.name = name

    def _advance(self) -> None:
        bar = BARS.get(self.name)
        if bar is not None:
            bar.update(1)

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        entry = WHEN_RUNNING.get(self.name)
        if entry is not None:
            entry[0] -= 1
            if entry[0] <= 0:
                _fire(self.name)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._advance()
        _fire(self.name)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._advance()
        _fire(self.name)
