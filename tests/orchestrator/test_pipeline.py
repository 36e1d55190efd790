"""Pipeline helpers that need no cluster (the pipeline itself runs in the Ray tests)."""

from orchestrator.pipeline import seed_lines


def test_seed_runs_finished_together_print_one_line_per_method():
    results = [
        {"method": "kmeans", "seed": s, "acc": 0.5 + s / 100, "nmi": 0.4, "ari": 0.3}
        for s in (0, 1)
    ] + [{"method": "scan", "seed": 2, "acc": 0.61, "nmi": 0.5, "ari": 0.42}]
    assert seed_lines("digits", results) == [
        "digits/kmeans seeds 0, 1: acc=0.5000/0.5100 nmi=0.4000/0.4000 ari=0.3000/0.3000",
        "digits/scan seed 2: acc=0.6100 nmi=0.5000 ari=0.4200",
    ]


def test_a_view_and_a_cluster_count_name_the_benchmark_apart(tmp_path):
    """Runs of ``digits``, of a view of it and with another K never share a name (so never a
    run folder or a leaderboard row); the view's splits are the view."""
    import numpy as np

    from deepclust.datasets import resolve_dataset
    from deepclust.views import BenchmarkView
    from orchestrator.pipeline import load_splits
    from tests.conftest import sweep_settings

    spec = resolve_dataset("digits")
    plain = load_splits(spec, sweep_settings(tmp_path))
    view = BenchmarkView(classes=("1", "7"), imbalance=10)
    lt = load_splits(spec, sweep_settings(tmp_path, view=view, num_clusters="auto"))
    unlabelled = load_splits(
        spec, sweep_settings(tmp_path, view=BenchmarkView(ignore_labels=True), num_clusters=4)
    )
    assert plain.name == "digits"
    assert lt.name == "digits[classes=1,7;lt=10][K=auto]"
    assert unlabelled.name == "digits[unlabelled][K=4]"
    assert lt.eval is lt.fit and lt.fit.class_names == ("1", "7")
    assert np.bincount(lt.fit.labels).tolist() == [182, 18]  # 182 ones, a tenth as many sevens
    assert not unlabelled.fit.labelled and len(unlabelled.fit) == len(plain.fit)


def test_unscored_runs_say_so_in_their_lines():
    from orchestrator.pipeline import score_text

    run = {"method": "kmeans", "seed": 0, "num_clusters": 4}
    assert score_text(run) == "4 clusters (unlabelled: not scored)"
    assert seed_lines("x", [run]) == ["x/kmeans seed 0: 4 clusters (unlabelled: not scored)"]


def test_a_methods_seed_runs_queue_behind_the_next_searchs_first_trials(tmp_path, monkeypatch):
    """A method's seed runs are submitted once the next method's first trials run, or once
    that search ends if they never all run at once; the last method's when every search has
    ended. Queued in Ray behind those trials, they take a core a trial leaves idle instead of
    making the trials wait. The search and the runs are stand-ins that record the order (Ray
    Tune's side, the hook firing, is tests/orchestrator/test_search_progress.py)."""
    from orchestrator import pipeline, search
    from tests.conftest import synthetic_digits_context
    from trainables.methods import METHODS
    from trainables.objective import search_metric

    events = []

    def fake_search(method, job, identity, store, ray_session, setting, opts, kmax, on_running):
        events.append(("search", method))
        if method != "iic":  # iic's first trials never all run at once
            on_running()
            events.append(("trials running", method))
        events.append(("searched", method))
        metric, mode = search_metric(METHODS.get(method), setting, opts.oracle)
        return search.SearchOutcome({}, 2, 1.0, metric, mode, 0.5, False, None), None

    def submit(runs, ctx, gpus=0, require_state=False):
        events.append(("submit", runs[0].method))
        return lambda: [{"method": r.method, "seed": r.seed} for r in runs]

    monkeypatch.setattr(search, "search_method", fake_search)
    monkeypatch.setattr(pipeline, "_submit_in_parallel", submit)
    ctx = synthetic_digits_context(tmp_path, ("kmeans", "scan", "iic"), seeds=(0, 1))
    results = pipeline._search_all(ctx, search.SearchOptions(budget=2, fidelity="smoke"))
    assert events == [
        ("search", "kmeans"),
        ("trials running", "kmeans"),
        ("searched", "kmeans"),
        ("search", "scan"),
        ("submit", "kmeans"),
        ("trials running", "scan"),
        ("searched", "scan"),
        ("search", "iic"),
        ("searched", "iic"),
        ("submit", "scan"),
        ("submit", "iic"),
    ]
    assert [(r["method"], r["seed"]) for r in results] == [
        (m, s) for m in ("kmeans", "scan", "iic") for s in (0, 1)
    ]
