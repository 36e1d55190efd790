"""The Optuna study of a new search: its first trial runs the method's default configuration
(suggests nothing), every later trial samples the method's space."""

import optuna

from orchestrator.optuna_journal import DEFAULT_TRIAL, new_study, open_journal, with_default_first
from search_spaces import SPACES


def test_a_new_study_runs_the_default_configuration_first(tmp_path):
    storage = open_journal(tmp_path)
    new_study(storage, "scan-search", "scan_selection", "min", {"method": "scan"})
    study = optuna.load_study(
        study_name="scan-search", storage=storage, sampler=optuna.samplers.TPESampler(seed=0)
    )
    suggested = []
    for value in (1.0, 0.5, 2.0):
        trial = study.ask()
        suggested.append(with_default_first(SPACES.get("scan"), trial, kmax=20))
        study.tell(trial, value)
    assert suggested[0] == {}  # the default configuration, at the search's fidelity
    assert all(s.keys() == {"num_neighbors", "entropy_weight", "lr"} for s in suggested[1:])
    first = study.trials[0]
    assert first.user_attrs[DEFAULT_TRIAL] is True and first.params == {}
    assert not any(t.user_attrs.get(DEFAULT_TRIAL) for t in study.trials[1:])
