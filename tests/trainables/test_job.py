"""A training job crosses process boundaries as a dict and comes back equal; a dict that is
not a job (an unknown or mistyped key) is refused by name."""

import pytest

from deepclust.errors import UserError
from tests.trainables.jobs import make_job
from trainables.job import TrainJob, TrialSetup


def _job(**changes) -> TrainJob:
    return make_job(method="unic", method_config={"lr": 0.001}, neighbors="/a/nbr", **changes)


@pytest.mark.parametrize(
    "job",
    [_job(), _job(trial=TrialSetup("selection_score", "min", {"epochs": 3}, trial_states="/s"))],
)
def test_a_job_round_trips_through_a_dict(job):
    assert TrainJob.from_dict(job.to_dict()) == job


def test_a_dict_that_is_not_a_job_is_refused_by_name():
    data = _job().to_dict()
    with pytest.raises(UserError, match="unknown key 'sed' for TrainJob .*did you mean 'seed'"):
        TrainJob.from_dict({**{k: v for k, v in data.items() if k != "seed"}, "sed": 1})
    with pytest.raises(UserError, match="TrainJob.seed must be"):
        TrainJob.from_dict({**data, "seed": "one"})
    with pytest.raises(UserError, match="unknown key 'metrc' for TrialSetup"):
        TrainJob.from_dict({**data, "trial": {"metrc": "x", "mode": "min"}})
