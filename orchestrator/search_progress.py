"""The search's progress bar (trials finished of the budget, with an ETA), advanced by a Tune
callback in the driver.

Tune pickles its callbacks into the experiment state and ``Tuner.restore`` brings them back,
so the callback holds only the search's name; the bar itself lives in ``BARS`` for as long
as ``search_method`` runs that search.
"""

from __future__ import annotations

from typing import Any

from ray.tune import Callback

BARS: dict[str, Any] = {}  # search name -> its open bar (deepclust.progress.bar)


class TrialProgress(Callback):
    def __init__(self, name: str):
        self.name = name

    def _advance(self) -> None:
        bar = BARS.get(self.name)
        if bar is not None:
            bar.update(1)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._advance()

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._advance()
