import json

import numpy as np

from deepclust.artifacts import ArtifactStore
from orchestrator.leaderboard import build_table, write_leaderboard


def _run(method, seed, acc, bench="digits", **extra):
    return {
        **extra,
        "benchmark": bench,
        "backbone": "b",
        "method": method,
        "config_hash": "c",
        "seed": seed,
        "acc": acc,
        "nmi": acc / 2,
        "ari": acc / 3,
        "objective": "inertia",
        "n_eval": 10,
        "nbr_precision@20": 0.7,
    }


def test_seeds_are_averaged_and_rows_ranked_by_acc():
    table = build_table([_run("kmeans", 0, 0.5), _run("kmeans", 1, 0.7), _run("other", 0, 0.9)])
    assert list(table["method"]) == ["other", "kmeans"]
    row = table.iloc[1]
    assert row["seeds"] == 2 and np.isclose(row["acc"], 0.6) and np.isclose(row["acc_std"], 0.1)


def test_files_are_written_from_run_dirs(tmp_path):
    store = ArtifactStore(tmp_path)
    for seed, acc in [(0, 0.5), (1, 0.7)]:
        store.write_run(
            store.run_dir("digits", "b", "kmeans", seed), np.zeros(3), _run("kmeans", seed, acc)
        )
    table, markdown = write_leaderboard(store)
    assert "| clustering | digits | b | kmeans | 2 | 60.00 ± 10.00 |" in markdown
    assert json.loads(store.leaderboard_path("json").read_text())[0]["seeds"] == 2
    assert store.leaderboard_path("csv").read_text().startswith("setting,benchmark,")


def test_wall_time_prefers_the_staged_total_and_tolerates_untimed_runs():
    staged = [_run("st", s, 0.5, seconds=10.0, seconds_total=30.0) for s in (0, 1)]
    table = build_table([*staged, _run("old", 0, 0.4)])
    by_method = table.set_index("method")["seconds"]
    assert by_method["st"] == 30.0 and np.isnan(by_method["old"])
    from orchestrator.leaderboard import to_markdown

    old_row = [line for line in to_markdown(table).splitlines() if "| old |" in line][0]
    assert "| - | inertia |" in old_row


def test_empty_leaderboard(tmp_path):
    table, markdown = write_leaderboard(ArtifactStore(tmp_path))
    assert table.empty and markdown.startswith("| setting | benchmark |")


def test_gcd_rows_show_old_and_new_and_stay_apart_from_clustering_rows():
    gcd = [_run("unic", s, 0.6, setting="gcd", acc_old=0.8, acc_new=0.5) for s in (0, 1)]
    table = build_table([*gcd, _run("unic", 0, 0.4)])
    assert list(table["setting"]) == ["clustering", "gcd"]  # same method, two rows
    from orchestrator.leaderboard import to_markdown

    row = [line for line in to_markdown(table).splitlines() if line.startswith("| gcd |")][0]
    assert "| 80.00 / 50.00 |" in row
