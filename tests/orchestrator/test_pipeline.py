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
