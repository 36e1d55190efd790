"""The Tune callback's hook that tells the pipeline when a search's first trials run."""

import pytest

pytest.importorskip("ray")


def test_the_running_hook_fires_once_when_the_first_trials_have_started():
    from orchestrator.search_progress import WHEN_RUNNING, TrialProgress, when_running

    calls = []
    progress = TrialProgress("scan-search")
    when_running("scan-search", 2, lambda: calls.append("scan"))
    progress.on_trial_start(1, [], None)
    assert calls == []  # one of the two trials runs
    progress.on_trial_start(2, [], None)
    assert calls == ["scan"]
    progress.on_trial_start(3, [], None)  # a later trial
    progress.on_trial_complete(4, [], None)
    assert calls == ["scan"] and "scan-search" not in WHEN_RUNNING


@pytest.mark.parametrize("end", ["on_trial_complete", "on_trial_error"])
def test_the_running_hook_fires_when_a_trial_ends_before_the_others_start(end):
    """Fewer trials than asked run at once (the cluster has room for one): the first trial's
    end, completed or failed, fires the hook, once; another search's hook is left alone."""
    from orchestrator.search_progress import WHEN_RUNNING, TrialProgress, when_running

    calls = []
    progress = TrialProgress("iic-search")
    when_running("iic-search", 2, lambda: calls.append("iic"))
    when_running("other-search", 1, lambda: calls.append("other"))
    progress.on_trial_start(1, [], None)
    getattr(progress, end)(2, [], None)
    getattr(progress, end)(3, [], None)
    assert calls == ["iic"]
    WHEN_RUNNING.pop("other-search")
