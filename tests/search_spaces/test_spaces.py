"""Every search space suggests only real config fields, with values its config accepts."""

import dataclasses

import optuna
import pytest

from deepclust.config import from_dict
from search_spaces import SPACES
from trainables.methods import METHODS

optuna.logging.set_verbosity(optuna.logging.WARNING)


# every (method, setting) a method runs in
METHOD_SETTINGS = [
    (n, s) for n in METHODS.names() for s in ("clustering", "gcd") if s in METHODS.get(n).settings
]


def test_every_method_has_a_space():
    assert set(SPACES.names()) == set(METHODS.names())


@pytest.mark.parametrize("name,setting", METHOD_SETTINGS)
def test_suggested_names_are_config_fields_and_validate(name, setting):
    method_cls = METHODS.get(name)
    fields = {f.name for f in dataclasses.fields(method_cls.Config)}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(40):  # enough random trials to visit every conditional branch
        trial = study.ask()
        overrides = SPACES.get(name)(trial, setting)
        assert set(trial.params) <= fields, set(trial.params) - fields
        assert {k: overrides[k] for k in trial.params} == trial.params  # params = overrides
        from_dict(method_cls.Config, overrides)  # strict: names and types
        study.tell(trial, 0.0)
        seen |= set(trial.params)
    if name == "unic":  # every conditional branch was visited
        assert {"min_shared_frac", "spread_drop_frac", "neg_min_rank_frac", "w_neg"} <= seen
        assert ("gcd_neg_source" in seen) == (setting == "gcd")
        clean = [t.params for t in study.trials if "clean_m" in t.params]
        assert all(p["clean_m"] in (p["pos_k"], min(2 * p["pos_k"], 50)) for p in clean)


@pytest.mark.parametrize("name", ["unic", "scan", "temi", "iic", "spice"])
def test_neighbour_counts_stay_within_the_mined_table(name):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(30):
        trial = study.ask()
        overrides = SPACES.get(name)(trial, "clustering", kmax=12)
        for key in ("pos_k", "clean_m", "num_neighbors"):
            assert overrides.get(key, 0) <= 12, (key, overrides)
        assert overrides.get("reliable_neighbors", 0) <= 13  # the sample itself included
        study.tell(trial, 0.0)


# Literal fields a space deliberately leaves out or searches in part (the reason is in the
# space's docstring): method -> fields.
NOT_SEARCHED = {"unic": {"head", "input_norm", "empty_policy", "pos_weighting", "augment"}}


@pytest.mark.parametrize("name,setting", METHOD_SETTINGS)
def test_searched_choice_fields_cover_every_choice(name, setting):
    """A choice field a space searches is searched over all its Literal's values (the space
    reads them from the config type, so a new value is searched without editing the space)."""
    from deepclust.config import choice_fields

    allowed = choice_fields(METHODS.get(name).Config)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen: dict[str, set] = {}
    for _ in range(60):
        trial = study.ask()
        for key, value in SPACES.get(name)(trial, setting, num_clusters=10).items():
            seen.setdefault(key, set()).add(value)
        study.tell(trial, 0.0)
    for field, values in seen.items():
        if field in allowed:
            assert field not in NOT_SEARCHED.get(name, set()), field
            assert values == set(allowed[field]), (field, values)
    if name == "unic":
        searched = {"clean_rule", "neg_rule"} | (
            {"gcd_pos_labelled", "gcd_neg_source"} if setting == "gcd" else set()
        )
        assert searched <= set(seen)
        assert set(allowed) - searched - NOT_SEARCHED["unic"] == (
            set() if setting == "gcd" else {"gcd_pos_labelled", "gcd_neg_source"}
        )
        assert {0.0, 0.2} <= seen["neg_min_rank_frac"]  # UNIC's rho = 0 and 2/C (C = 10)
