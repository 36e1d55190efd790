import json
from pathlib import Path

import numpy as np

from deepclust.artifacts import ArtifactStore
from orchestrator.leaderboard import build_table, write_leaderboard
from tests.conftest import synthetic_digits_context


def _run(method, seed, acc, bench="digits", **extra):
    return {
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
        **extra,
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
    assert "| clustering | digits | b | kmeans | 2 | - | 60.00 ± 10.00 | - |" in markdown
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


def test_the_k_column_and_an_unlabelled_collection_without_scores():
    from orchestrator.leaderboard import to_markdown

    unlabelled = [
        {**_run("kmeans", s, 0.0, bench="folder:x[K=auto]", num_clusters=4, num_classes=0,
            k_estimate={"k": 4}), "acc": None, "nmi": None, "ari": None}
        for s in (0, 1)
    ]  # fmt: skip
    for r in unlabelled:
        for m in ("acc", "nmi", "ari"):
            del r[m]
    asked = [_run("kmeans", 0, 0.5, bench="d[K=12]", num_clusters=12, num_classes=10, bacc=0.4)]
    lines = to_markdown(build_table([*unlabelled, *asked])).splitlines()
    row = next(line for line in lines if "folder:x" in line)
    assert "| 2 | K̂=4 | - | - | - | - | - |" in row, row
    row = next(line for line in lines if "d[K=12]" in line)
    assert "| 1 | 12 (10 classes) | 50.00 | 40.00 | 25.00 |" in row, row


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


def _same_config_twice():
    """One config chosen by an honest search (label-free) and by an oracle search."""
    honest = [_run("unic", s, 0.5, config_hash="c1", oracle=False) for s in (0, 1)]
    oracle = [_run("unic", s, 0.9, config_hash="c1", oracle=True) for s in (0, 1)]
    records = [
        {
            **_key("unic", "c1", False),
            "trials": 4,
            "search_seconds": 1.0,
            "finished": 1.0,
            "selected_by": "selection_score",
            "oracle": False,
        },
        {
            **_key("unic", "c1", True),
            "trials": 4,
            "search_seconds": 1.0,
            "finished": 2.0,
            "selected_by": "ORACLE oracle_acc",
            "oracle": True,
        },
    ]
    return honest + oracle, records


def _key(method, config_hash, oracle):
    return {
        "setting": "clustering",
        "benchmark": "digits",
        "backbone": "b",
        "method": method,
        "config_hash": config_hash,
        "oracle": oracle,
    }


def test_an_oracle_search_of_the_same_config_never_relabels_the_honest_row():
    runs, records = _same_config_twice()
    for order in (records, records[::-1]):
        table = build_table(runs, order).set_index("oracle")
        assert table.loc[False, "selected_by"] == "selection_score"
        assert table.loc[True, "selected_by"] == "ORACLE oracle_acc"
        assert np.isclose(table.loc[False, "acc"], 0.5) and np.isclose(table.loc[True, "acc"], 0.9)


def test_oracle_rows_appear_only_in_the_marked_oracle_section():
    from orchestrator.leaderboard import to_markdown

    runs, records = _same_config_twice()
    markdown = to_markdown(build_table(runs, records))
    honest, oracle = markdown.split("## ORACLE")
    assert "| unic |" in honest and "ORACLE" not in honest
    rows = [line for line in oracle.splitlines() if line.startswith("| clustering")]
    assert len(rows) == 1 and "| unic (ORACLE) |" in rows[0]
    assert "| ORACLE oracle_acc |" in rows[0]
    assert "upper bounds, not results" in oracle
    # no oracle run: no oracle section
    assert "ORACLE" not in to_markdown(build_table(runs[:2], records))


def test_honest_and_oracle_runs_of_one_config_live_apart(tmp_path, monkeypatch):
    """An honest search, then an --oracle search choosing the same config, then the honest
    search-and-run again (its runs deleted and trained anew): the honest and oracle runs
    keep separate folders and the honest row stays selected by the label-free metric.
    The search itself is a stand-in (Ray Tune's part is tests/orchestrator/test_search.py);
    the runs go through pipeline._search_and_run and run_method."""
    import shutil

    import search_spaces
    from orchestrator import pipeline, search
    from trainables.methods import METHODS
    from trainables.objective import search_metric

    def fake_search(method, job, identity, store, ray_session, setting, opts, kmax, **_):
        metric, mode = search_metric(METHODS.get(method), setting, opts.oracle)
        path = store.root / "tune" / f"{method}-{'oracle' if opts.oracle else 'honest'}"
        path.mkdir(parents=True, exist_ok=True)
        outcome = search.SearchOutcome({}, 3, 1.0, metric, mode, 0.5, opts.oracle, str(path))
        return outcome, f"key-{opts.oracle}"

    def in_process(runs, ctx, gpus=0, require_state=False):
        results = [pipeline.run_method(r, ctx, require_state) for r in runs]
        return lambda: results

    monkeypatch.setattr(search, "search_method", fake_search)
    monkeypatch.setattr(search_spaces, "is_empty", lambda method: False)  # kmeans "searched"
    monkeypatch.setattr(pipeline, "_submit_in_parallel", in_process)
    ctx = synthetic_digits_context(tmp_path)
    store = ctx.store

    def search_and_run(oracle):
        opts = search.SearchOptions(budget=3, fidelity="smoke", oracle=oracle)
        return pipeline._search_and_run("kmeans", ctx, opts, {})

    def rows():
        table, markdown = write_leaderboard(store)
        return table.set_index("oracle"), markdown

    honest = search_and_run(False)
    oracle = search_and_run(True)
    assert [r["config_hash"] for r in oracle] == [r["config_hash"] for r in honest]
    for h, o in zip(honest, oracle, strict=True):
        assert h["run_dir"] != o["run_dir"]
        assert Path(o["run_dir"]).is_relative_to(store.runs_root(oracle=True))
        assert Path(h["run_dir"]).is_relative_to(store.runs_root())
        assert ArtifactStore.read_run(Path(o["run_dir"]))["oracle"] is True
        assert ArtifactStore.read_run(Path(h["run_dir"]))["oracle"] is False
    table, markdown = rows()
    assert table.loc[False, "selected_by"] == "inertia" and table.loc[False, "seeds"] == 2
    assert table.loc[True, "selected_by"] == "ORACLE oracle_acc"

    shutil.rmtree(store.runs_root())  # the honest main job, run again from scratch
    again = search_and_run(False)
    assert [r["run_dir"] for r in again] == [r["run_dir"] for r in honest]
    assert all(Path(r["run_dir"]).is_dir() for r in oracle)  # untouched
    table, markdown = rows()
    assert table.loc[False, "selected_by"] == "inertia" and table.loc[False, "trials"] == 3
    assert table.loc[True, "selected_by"] == "ORACLE oracle_acc"
    honest_md, oracle_md = markdown.split("## ORACLE")
    assert "| kmeans |" in honest_md and "ORACLE" not in honest_md
    assert "| kmeans (ORACLE) |" in oracle_md
    records = json.loads(store.leaderboard_path("json").read_text())
    assert sorted(r["oracle"] for r in records) == [False, True]
    assert "oracle" in store.leaderboard_path("csv").read_text().splitlines()[0].split(",")
