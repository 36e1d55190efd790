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
