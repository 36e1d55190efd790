"""Search objectives: which metric each setting ranks by, and that only the allowed labels
are read (GCD: the held-out labelled rows; never the scored ones)."""

import math

import numpy as np

from deepclust.artifacts import ArtifactStore
from deepclust.gcd import make_split
from tests.trainables.jobs import make_job
from trainables import objective
from trainables.job import TrainJob, TrialSetup
from trainables.methods import METHODS, FitInputs


def test_metric_per_setting():
    unic, temi = METHODS.get("unic"), METHODS.get("temi")
    assert objective.search_metric(unic, "clustering", False) == ("selection_score", "min")
    assert objective.search_metric(temi, "clustering", False) == ("neighbor_agreement", "max")
    assert objective.search_metric(unic, "gcd", False) == ("val_acc", "max")
    assert objective.search_metric(temi, "clustering", True) == ("oracle_acc", "max")


def test_every_searched_method_declares_a_known_objective():
    for name in METHODS.names():
        metric, mode = METHODS.get(name).search_objective
        assert mode in ("min", "max")
        assert metric in ("neighbor_agreement", METHODS.get(name).objective), name


def test_degenerate_values_become_the_worst_finite_value():
    assert objective.finite(math.inf, "min") == objective.WORST
    assert objective.finite(math.nan, "max") == -objective.WORST
    assert objective.finite(0.25, "max") == 0.25


class _Fixed:
    """A fitted 'method' predicting given cluster ids."""

    config = None

    def __init__(self, pred):
        self.pred = pred

    def predict(self, embeddings):
        return self.pred


def _store_embeddings(tmp_path, labels):
    """An embeddings folder as the pipeline writes it (features + labels)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = len(labels)
    directory = tmp_path / "emb"
    tmp = ArtifactStore.begin(directory)
    emb = np.eye(n, 4, dtype=np.float32)
    table = pa.table(
        {
            "idx": pa.array(np.arange(n)),
            "label": pa.array(labels),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), 4),
        }
    )
    pq.write_table(table, tmp / "part-0.parquet")
    ArtifactStore.commit(tmp, directory, "k", n)
    return directory


def _job(metric: str, mode: str, **paths) -> TrainJob:
    """A trial's job whose artifact paths are the ones given (the rest point nowhere)."""
    return make_job(trial=TrialSetup(metric=metric, mode=mode), **paths)


def test_gcd_val_acc_reads_only_the_held_out_rows(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 25)
    split = make_split(labels, (0, 1), labelled_frac=0.5, val_frac=0.4)
    np.savez(tmp_path / "split.npz", **split.arrays())
    pred = labels.copy()
    values = []
    for scrambled in (False, True):
        y = labels.copy()
        if scrambled:  # every label outside the held-out rows changes
            outside = np.setdiff1d(np.arange(len(y)), split.val_idx)
            y[outside] = rng.permutation(y[outside]) + 7
        emb_dir = _store_embeddings(tmp_path / str(scrambled), y)
        job = _job(
            "val_acc", "max", gcd_split=str(tmp_path / "split.npz"), fit_embeddings=str(emb_dir)
        )
        inputs = FitInputs(np.zeros((len(y), 4), np.float32), 4, 0)
        values.append(objective.trial_objective(_Fixed(pred), {}, job, inputs))
    assert values == [1.0, 1.0]


def test_neighbor_agreement_needs_no_labels():
    pred = np.repeat(np.arange(2), 10)  # two clusters; every neighbour in the same one
    nbr = np.array([[(i // 10) * 10 + (i + j) % 10 for j in range(1, 6)] for i in range(20)])
    job = _job("neighbor_agreement", "max")
    inputs = FitInputs(np.zeros((20, 4), np.float32), 2, 0, nbr)
    value = objective.trial_objective(_Fixed(pred), {}, job, inputs)
    assert 0.3 < value < 0.7  # P(same | neighbour) = 1 minus P(same | random pair) ~ 0.5


def test_the_oracle_objective_follows_the_test_labels(tmp_path):
    """The check in tests/orchestrator/test_search.py has teeth: only --oracle reads labels."""
    labels = np.repeat(np.arange(2), 10)
    pred = labels.copy()
    values = []
    for name, y in (("true", labels), ("shuffled", np.random.default_rng(1).permutation(labels))):
        job = _job("oracle_acc", "max", eval_embeddings=str(_store_embeddings(tmp_path / name, y)))
        values.append(objective.trial_objective(_Fixed(pred), {}, job, FitInputs(None, 2, 0)))
    assert values[0] == 1.0 and values[1] < 0.9


def test_every_report_carries_a_finite_search_metric():
    assert objective.with_metric({"loss": 1.0}, "val_acc", "max")["val_acc"] == -objective.WORST
    assert objective.with_metric({"s": math.inf}, "s", "min") == {"s": objective.WORST}
    assert objective.with_metric({"s": 0.5}, "s", "min") == {"s": 0.5}
