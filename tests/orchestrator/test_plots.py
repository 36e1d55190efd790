"""The leaderboard plots never choose a row by test accuracy: the ACC bar of a method is the
row its latest honest (label-free) search chose, or every row when no search chose one, and
oracle rows and trials are left out."""

import json

import numpy as np

from deepclust.artifacts import ArtifactStore
from orchestrator import plots
from orchestrator.leaderboard import build_table


def _key(config_hash, method="unic", oracle=False):
    """The leaderboard row a run or search record belongs to."""
    return {
        "setting": "clustering",
        "benchmark": "digits",
        "backbone": "b",
        "method": method,
        "config_hash": config_hash,
        "oracle": oracle,
    }


def _run(config_hash, seed, acc, method="unic", oracle=False, pos_k=5):
    return {
        **_key(config_hash, method, oracle),
        "seed": seed,
        "acc": acc,
        "nmi": acc / 2,
        "ari": acc / 3,
        "objective": "selection_score",
        "n_eval": 10,
        "config": {"pos_k": pos_k},
        "diagnostics": {"pos_k": pos_k},
    }


def _record(config_hash, finished, oracle=False, method="unic"):
    return {
        **_key(config_hash, method, oracle),
        "trials": 4,
        "search_seconds": 1.0,
        "selected_by": "ORACLE oracle_acc" if oracle else "selection_score",
        "best_value": 0.1,
        "finished": finished,
    }


def _runs():
    """c1 (acc 0.5): the latest honest search's choice; c2 (0.8): an older honest search's;
    c3 (0.9): a run no search chose; c1 again and c4 (0.99): oracle runs, c4 chosen last."""
    return [
        _run("c1", 0, 0.4),
        _run("c1", 1, 0.6),
        _run("c2", 0, 0.8, pos_k=10),
        _run("c3", 0, 0.9, pos_k=20),
        _run("c1", 0, 0.97, oracle=True),
        _run("c4", 0, 0.99, oracle=True),
    ]


def _records():
    return [
        _record("c2", 100.0),
        _record("c1", 200.0),
        _record("c1", 250.0, oracle=True),
        _record("c4", 300.0, oracle=True),
    ]


def test_the_bar_is_the_latest_honest_selection_not_the_best_accuracy():
    table = build_table(_runs(), _records())
    assert table["acc"].max() > 0.9  # rows with a higher accuracy exist (c3, oracle c1 / c4)
    bars = plots.bar_rows(table)
    assert len(bars) == 1
    bar = bars.iloc[0]
    assert (bar["config_hash"], bar["oracle"], bar["label"]) == ("c1", False, "unic")
    assert np.isclose(bar["acc"], 0.5) and np.isclose(bar["acc_std"], 0.1)
    assert bar["selected_by"] == "selection_score"


def test_the_choice_follows_the_search_order_whatever_the_accuracies():
    """The same table with the accuracies swapped around: the same row is drawn."""
    runs = _runs()
    for r in runs:
        r["acc"] = 1.0 - r["acc"]
    assert plots.bar_rows(build_table(runs, _records()))["config_hash"].tolist() == ["c1"]
    # the older honest search becomes the latest: its row is drawn
    records = [_record("c2", 400.0) if r["config_hash"] == "c2" else r for r in _records()]
    assert plots.bar_rows(build_table(_runs(), records))["config_hash"].tolist() == ["c2"]


def test_without_a_search_every_honest_row_is_drawn_with_its_config():
    bars = plots.bar_rows(build_table(_runs()))  # no search records: none chose a row
    assert sorted(bars["label"]) == ["unic c1", "unic c2", "unic c3"]  # no oracle row
    assert not bars["oracle"].any()
    one = plots.bar_rows(build_table([_run("c9", 0, 0.3, method="kmeans")]))
    assert one["label"].tolist() == ["kmeans"]


def test_only_oracle_rows_give_no_bar():
    table = build_table([_run("c1", 0, 0.9, oracle=True)], [_record("c1", 1.0, oracle=True)])
    assert plots.bar_rows(table).empty and plots.bar_rows(table.iloc[:0]).empty


def test_write_plots_draws_the_chosen_rows(tmp_path, monkeypatch):
    store = ArtifactStore(tmp_path)
    drawn = []
    real = plots._acc_plot
    monkeypatch.setattr(
        plots, "_acc_plot", lambda plt, bars, path: (drawn.append(bars), real(plt, bars, path))
    )
    plots.write_plots(store, build_table(_runs(), _records()), _runs())
    (bars,) = drawn
    assert bars["config_hash"].tolist() == ["c1"] and np.isclose(bars["acc"].iloc[0], 0.5)
    assert plots.plot_paths(store)[0].stat().st_size > 1000


def test_unic_k_leaves_oracle_runs_and_trials_out(tmp_path, monkeypatch):
    store = ArtifactStore(tmp_path)
    for name, pos_k, last in [
        ("unic-honest/t0", 5, {"selection_score": 0.3}),
        ("unic-honest/t1", 10, {"selection_score": 0.4}),
        ("unic-oracle/t0", 20, {"selection_score": 0.2, "oracle_acc": 0.9}),
    ]:
        trial = tmp_path / "tune" / name
        trial.mkdir(parents=True)
        (trial / "params.json").write_text(json.dumps({"pos_k": pos_k}))
        (trial / "result.json").write_text(json.dumps(last) + "\n")
    assert plots._unic_trials(store) == [(5, 0.3, "selection_score"), (10, 0.4, "selection_score")]

    import matplotlib.axes

    seen = []
    original = matplotlib.axes.Axes.plot

    def spy(self, x, y, *args, **kwargs):
        seen.append((self, list(y)))
        return original(self, x, y, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", spy)
    plots.write_plots(store, build_table(_runs(), _records()), _runs())
    left_axes = seen[0][0]  # the left panel (runs) is drawn first, then the right (trials)
    left = sorted(y for ax, ys in seen if ax is left_axes for y in ys)
    right = [y for ax, ys in seen if ax is not left_axes for y in ys]
    assert left == [40.0, 60.0, 80.0, 90.0]  # the honest UNIC runs' ACC; no oracle run
    assert right == [0.3, 0.4]  # the honest trials' objectives; no oracle trial


def test_unic_k_draws_only_panels_whose_points_span_several_counts(tmp_path):
    """A default run has one pos_k: a plot of it against pos_k is one dot, so there is none
    (and a stale one from an earlier build goes); with several counts the panel is drawn."""
    store = ArtifactStore(tmp_path)
    path = plots.plot_paths(store)[1]
    path.write_bytes(b"stale")
    one_k = [_run("c1", 0, 0.4), _run("c1", 1, 0.6)]
    plots.write_plots(store, build_table(one_k, [_record("c1", 1.0)]), one_k)
    assert not path.exists()
    two_k = [*one_k, _run("c2", 0, 0.8, pos_k=10)]
    plots.write_plots(store, build_table(two_k, [_record("c1", 1.0)]), two_k)
    assert path.stat().st_size > 1000
