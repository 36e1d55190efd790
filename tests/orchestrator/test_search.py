"""Ray Tune + Optuna searches through the pipeline, on a tiny image set embedded for real:
Train-in-Tune with ASHA finishes, no objective reads labels without --oracle, a killed sweep
resumes without re-running finished trials, and the leaderboard rebuilds from the run folders.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from deepclust.artifacts import ArtifactStore
from deepclust.datasets import resolve_dataset
from deepclust.errors import UserError
from orchestrator.leaderboard import SEARCH_FILE
from orchestrator.pipeline import load_splits, run_benchmark
from orchestrator.search import SearchOptions
from tests.conftest import (
    REPO,
    kill_session,
    make_images,
    ray_session_logs,
    sweep_settings,
    write_image_parquet,
)
from tests.orchestrator.heads import HeadNode
from trainables.tune_trial import TRIAL_STATES

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def parquets(tmp_path_factory):
    """The same 32 images twice: with their labels, and with the labels shuffled."""
    folder = tmp_path_factory.mktemp("images")
    images, labels = make_images(32)
    shuffled = np.random.default_rng(1).permutation(labels)
    assert (shuffled != labels).any()
    return (
        write_image_parquet(folder / "true.parquet", images, labels),
        write_image_parquet(folder / "shuffled.parquet", images, shuffled),
    )


def _search(ray_cluster, parquet, out, opts, methods=("unic",)):
    settings = sweep_settings(out, methods)
    splits = load_splits(resolve_dataset(f"parquet:{parquet}"), settings)
    store = ArtifactStore(out)
    results = run_benchmark(splits, settings, store, ray_cluster, search=opts)
    (record,) = [json.loads(p.read_text()) for p in (out / "tune").glob(f"*/{SEARCH_FILE}")]
    return results, record


def _trials(record) -> dict[str, tuple[dict, float]]:
    """trial params (as JSON) -> (params, last reported value of the search metric)."""
    out = {}
    for params in Path(record["search_path"]).glob("*/params.json"):
        lines = params.with_name("result.json").read_text().splitlines()
        last = json.loads(lines[-1])
        out[params.read_text()] = (
            json.loads(params.read_text()),
            last[record["outcome"]["metric"]],
        )
    return out


def _reserved_placement_groups(timeout: float = 30.0) -> list[dict]:
    """Placement groups still holding resources, polled: Ray Train's cleaner frees the group
    of a run whose controller died (a trial ASHA stopped) a few seconds after the death."""
    import ray

    deadline = time.monotonic() + timeout
    while True:
        left = [g for g in ray.util.placement_group_table().values() if g["state"] != "REMOVED"]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(1)


def test_train_in_tune_with_asha_finishes(ray_cluster, parquets, tmp_path):
    """2 trials, each a Ray Train run (1 gloo worker) inside a Tune trial, ASHA on UNIC's
    per-report selection score: the sweep finishes and runs the best configuration, and no
    placement group outlives the search, also with another Ray instance on the host (Ray
    Train's placement-group cleaner must still find its own cluster; a leaked group would
    hold a CPU and every later task that needs the whole cluster would wait for good)."""
    (tmp_path / "bystander").mkdir()
    bystander = HeadNode(tmp_path / "bystander", cpus=1, gpus=0)
    try:
        opts = SearchOptions(budget=2, fidelity="smoke", trial_workers=1)
        results, record = _search(ray_cluster, parquets[0], tmp_path / "out", opts)
        assert _reserved_placement_groups() == []
    finally:
        bystander.stop()
    assert record["trials"] == 2 and record["selected_by"] == "selection_score"
    assert len(list((tmp_path / "out" / "tune").glob("*/train/train-*"))) == 2  # Train runs
    assert [r["method"] for r in results] == ["unic"] and results[0]["acc"] > 0.5
    assert record["oracle"] is False and results[0]["oracle"] is False
    assert Path(results[0]["run_dir"]).is_relative_to(tmp_path / "out" / "runs")
    assert results[0]["config_hash"] == record["config_hash"]
    chosen = record["outcome"]["config"]
    assert {k: results[0]["config"][k] for k in chosen} == chosen  # the best config was re-run


def test_no_objective_reads_labels_without_oracle(ray_cluster, parquets, tmp_path):
    """Same images, true vs shuffled labels: every trial scores the same and the same config
    is chosen. (With --oracle the scores follow the labels: tests/trainables/test_objective.py.)"""
    # FIFO: the rung at which ASHA stops a trial depends on when the other trials' reports
    # arrive (timing), which would change a trial's last score between two identical searches
    opts = SearchOptions(budget=3, fidelity="smoke", asha=False)
    runs = {}
    for which, parquet in zip(("true", "shuffled"), parquets, strict=True):
        _, runs[which] = _search(ray_cluster, parquet, tmp_path / which, opts)
    assert _trials(runs["true"]) == _trials(runs["shuffled"])
    assert runs["true"]["outcome"]["config"] == runs["shuffled"]["outcome"]["config"]


def test_the_search_seeds_run_is_the_selected_trials_fit(ray_cluster, parquets, tmp_path):
    """The final run of the search seed with the selected config is the trial's kept fit, not
    a second training; trained again from scratch it gives the same predictions and score.
    A truncated search record is a one-line error naming --resume, which rebuilds it from the
    finished trials."""
    out = tmp_path / "out"
    opts = SearchOptions(budget=2, fidelity="smoke", asha=False)
    settings = sweep_settings(out, ("scan",))
    splits = load_splits(resolve_dataset(f"parquet:{parquets[0]}"), settings)
    store = ArtifactStore(out)
    (first,) = run_benchmark(splits, settings, store, ray_cluster, search=opts)
    (record,) = [json.loads(p.read_text()) for p in out.glob(f"tune/*/{SEARCH_FILE}")]
    fits = Path(record["search_path"]) / "fits"
    assert len(list(fits.glob("*/fit.json"))) == 2  # one per finished trial
    run_dir = Path(first["run_dir"])
    kept = pd.read_parquet(run_dir / "predictions.parquet")
    shutil.rmtree(fits)
    shutil.rmtree(run_dir)
    summary = Path(record["search_path"]) / SEARCH_FILE
    summary.write_text(summary.read_text()[:40])  # a truncated record: rebuilt, no traceback
    with pytest.raises(UserError, match="search record .* is unreadable; rerun with --resume"):
        run_benchmark(splits, settings, store, ray_cluster, search=opts)
    resume = replace(opts, resume=True)  # the finished trials give the same selection
    (again,) = run_benchmark(splits, settings, store, ray_cluster, search=resume)
    assert json.loads(summary.read_text())["outcome"]["config"] == record["outcome"]["config"]
    assert again["key"] == first["key"]
    pd.testing.assert_frame_equal(pd.read_parquet(run_dir / "predictions.parquet"), kept)
    assert again["diagnostics"]["scan_selection"] == pytest.approx(
        first["diagnostics"]["scan_selection"], rel=1e-6
    )


def test_oracle_search_runs_live_apart_and_never_relabel_the_honest_row(
    ray_cluster, parquets, tmp_path
):
    """An honest search, then an --oracle search, in one output folder: the oracle runs live
    under runs-oracle/ (metrics.json ``oracle: true``), its record joins only them, and the
    leaderboard keeps the honest row selected by the label-free objective."""
    out = tmp_path / "out"
    settings = sweep_settings(out, ("unic",))
    splits = load_splits(resolve_dataset(f"parquet:{parquets[0]}"), settings)
    store = ArtifactStore(out)
    results = {}
    for oracle in (False, True):
        opts = SearchOptions(budget=2, fidelity="smoke", asha=False, oracle=oracle)
        results[oracle] = run_benchmark(splits, settings, store, ray_cluster, search=opts)
    records = {
        r["oracle"]: r
        for r in (json.loads(p.read_text()) for p in out.glob(f"tune/*/{SEARCH_FILE}"))
    }
    assert records[True]["selected_by"] == "ORACLE oracle_acc"
    assert records[False]["selected_by"] == "selection_score"
    for oracle, (run,) in results.items():
        assert run["oracle"] is oracle and records[oracle]["config_hash"] == run["config_hash"]
        assert Path(run["run_dir"]).is_relative_to(store.runs_root(oracle))
        assert ArtifactStore.read_run(Path(run["run_dir"]))["oracle"] is oracle

    from orchestrator.leaderboard import write_leaderboard

    table, markdown = write_leaderboard(store)
    by_oracle = table.set_index("oracle")
    assert by_oracle.loc[False, "selected_by"] == "selection_score"
    assert by_oracle.loc[True, "selected_by"] == "ORACLE oracle_acc"
    honest_md, oracle_md = markdown.split("## ORACLE")
    assert "| unic |" in honest_md and "ORACLE" not in honest_md
    assert "| unic (ORACLE) |" in oracle_md


def _finished_trials(out: Path, method: str = "unic") -> dict[Path, bytes]:
    done = {}
    for result in out.glob(f"tune/{method}-*/*/result.json"):
        text = result.read_bytes()
        if b'"final": 1.0' in text:
            done[result] = text
    return done


def _interrupt_once_a_trial_finished(
    cmd: list[str], out: Path, method: str, log: Path, env: dict, settle_s: float = 0.0
) -> tuple[int, dict[Path, bytes]]:
    """Start a sweep in its own process session, send the whole group SIGINT (Ctrl-C in a
    terminal) ``settle_s`` after the first trial of ``method`` finished; return the exit code
    and the trials finished ``settle_s`` before the interrupt."""
    with log.open("wb") as sink:
        first = subprocess.Popen(
            cmd, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    deadline = time.time() + 400
    try:
        while not _finished_trials(out, method) and time.time() < deadline:
            if first.poll() is not None:
                pytest.fail(f"the sweep ended before a trial finished:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        finished = _finished_trials(out, method)
        time.sleep(settle_s)
        os.killpg(first.pid, signal.SIGINT)
        code = first.wait(timeout=120)
    finally:
        kill_session(first)  # whatever Ray left behind
        first.wait()
    if code != 130:  # why, for the failure message: the logs of the Ray the sweep started
        with log.open("a") as sink:
            sink.write(f"\nexit {code}\n{ray_session_logs(first.pid)}")
    assert finished, "no trial finished within the time limit"
    return code, finished


def test_ctrl_c_mid_search_then_resume_equals_the_search_run_through(parquets, tmp_path):
    """The same SCAN search (FIFO: no scheduler decision depends on timing) run through, and
    stopped by a real SIGINT to the sweep's process group once a trial has finished: exit 130
    with one line naming --resume and no traceback, no search recorded as finished; the plain
    rerun asks for --resume; --resume runs the remaining trials only, and ends with the same
    trials (configurations and objective values) and the same selected configuration as the
    search run through. The leaderboard rebuilds from the run folders."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}

    def cmd(out: Path, *extra: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "orchestrator.sweep",
            "--benchmark",
            f"parquet:{parquets[0]}",
            "--methods",
            "scan",
            "--budget",
            "4",
            "--fidelity",
            "smoke",
            "--seeds",
            "0",
            "--output",
            str(out),
            "--no-gallery",
            *extra,
        ]

    whole = subprocess.run(
        cmd(tmp_path / "whole"),
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**env, "UNIC_PROGRESS": "1"},  # the bars a terminal shows
        timeout=600,
    )
    assert whole.returncode == 0, whole.stderr[-3000:]
    # progress bars with counts: images embedded, trials finished
    for bar in ("/32 [", "scan search:", "/4 [", "trial/s"):
        assert bar in whole.stderr, bar
    # Tune's own lines went to the log file, not to the console
    (logfile,) = (tmp_path / "whole" / "logs").glob("sweep-*.log")
    assert " ray.tune." in logfile.read_text() and "ray.tune" not in whole.stderr
    out = tmp_path / "cut"
    log = tmp_path / "cut.log"
    # what had finished 3 s before the interrupt, given the driver's 1 s experiment-state
    # period (search.py) to record it; a trial that ends in the last second may run again
    code, finished = _interrupt_once_a_trial_finished(cmd(out), out, "scan", log, env, settle_s=3)
    text = log.read_text()
    assert code == 130, text[-8000:]  # the sweep's last lines and its Ray's logs
    assert "interrupted: " in text and "with --resume to continue" in text
    assert "Traceback" not in text, text[-3000:]
    assert not list(out.glob(f"tune/*/{SEARCH_FILE}"))  # interrupted mid-search
    again = subprocess.run(cmd(out), cwd=REPO, capture_output=True, text=True, env=env)
    assert again.returncode == 2 and "rerun with --resume" in again.stderr
    assert "Traceback" not in again.stderr
    resumed = subprocess.run(
        cmd(out, "--resume"), cwd=REPO, capture_output=True, text=True, env=env, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    changed = {
        p.parent.name: (text.splitlines()[-1][:200], p.read_bytes().splitlines()[-1][:200])
        for p, text in finished.items()
        if p.read_bytes() != text
    }
    assert not changed, f"finished trials ran again (last line before, after): {changed}"

    records = {}
    for name in ("whole", "cut"):
        (path,) = (tmp_path / name).glob(f"tune/*/{SEARCH_FILE}")
        records[name] = json.loads(path.read_text())
    assert _trials(records["cut"]) == _trials(records["whole"])
    assert len(_trials(records["whole"])) == 4  # the budget, once
    for key in ("config", "trials", "best_value"):
        assert records["cut"]["outcome"][key] == records["whole"]["outcome"][key], key
    record = records["cut"]
    assert record["config_hash"] == records["whole"]["config_hash"]
    assert not (Path(record["search_path"]) / TRIAL_STATES).exists()  # kept while unfinished
    assert "| scan |" in resumed.stdout
    # the restored searcher went on writing to its Optuna study (optuna-dashboard's journal):
    # one study, the budget's trials complete once, none left running by the kill
    from orchestrator.optuna_journal import study_states

    states = study_states(out / "tune")
    assert list(states) == [Path(record["search_path"]).name], states
    (trials,) = states.values()
    assert trials.count("COMPLETE") == 4 and "RUNNING" not in trials, trials
    assert resumed.stderr.count("optuna dashboard: optuna-dashboard ") == 1

    # the leaderboard files and plots rebuild from the run folders, identical
    from orchestrator.leaderboard import leaderboard_files, main

    store = ArtifactStore(out)
    written = {p.name: p.read_bytes() for p in leaderboard_files(store) if p.suffix != ".png"}
    assert "leaderboard_acc.png" in {p.name for p in leaderboard_files(store)}
    for path in leaderboard_files(store):
        path.unlink()
    assert main([str(out)]) == 0
    rebuilt = {p.name: p.read_bytes() for p in leaderboard_files(store) if p.suffix != ".png"}
    assert rebuilt == written
    assert (out / "leaderboard_acc.png").stat().st_size > 1000
    rows = json.loads((out / "leaderboard.json").read_text())
    (scan,) = [r for r in rows if r["method"] == "scan"]
    assert scan["trials"] == 4 and scan["selected_by"] == "scan_selection"
    assert scan["oracle"] is False and not (out / "runs-oracle").exists()
    assert scan["seeds"] == 1 and scan["config_hash"] == record["config_hash"]


def _nan_copy(src: Path, dst: Path) -> Path:
    """A copy of an embeddings artifact whose features are all NaN (labels, ids and meta kept)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    dst.mkdir(parents=True)
    for f in src.glob("*.parquet"):
        table = pq.read_table(f)
        column = table.column("embedding").combine_chunks()  # a tensor extension array
        storage = column.storage  # (large) lists of float32
        nan = pa.array(np.full(len(storage.values), np.nan, np.float32))
        nan = type(storage).from_arrays(storage.offsets, nan)
        poisoned = pa.ExtensionArray.from_storage(column.type, nan)
        at = table.schema.get_field_index("embedding")
        pq.write_table(table.set_column(at, "embedding", poisoned), dst / f.name)
    shutil.copy(src / "_meta.json", dst / "_meta.json")
    return dst


def test_a_trial_with_a_nan_loss_is_reported_once_and_the_sweep_goes_on(
    ray_cluster, parquets, tmp_path, monkeypatch, caplog
):
    """The UNIC trials read features that are NaN (k-means the real ones): the loop stops each
    trial at its first step with its one-line reason, each trial is reported once, and the
    sweep goes on with the next method. Tune's callback told the pipeline once that UNIC's
    two trials ran (k-means has no search)."""
    import logging

    from orchestrator import search

    real = search.search_method
    running = []

    def poisoned(method, job, *args, on_running, **kwargs):
        if method == "unic":
            nan = _nan_copy(Path(job.fit_embeddings), tmp_path / "nan-embeddings")
            job = job.replace(fit_embeddings=str(nan))

        def hook():
            running.append(method)
            on_running()

        return real(method, job, *args, on_running=hook, **kwargs)

    monkeypatch.setattr(search, "search_method", poisoned)
    caplog.set_level(logging.WARNING, logger="orchestrator")
    out = tmp_path / "out"
    settings = sweep_settings(out, ("unic", "kmeans"))
    splits = load_splits(resolve_dataset(f"parquet:{parquets[0]}"), settings)
    failures: list[str] = []
    results = run_benchmark(
        splits,
        settings,
        ArtifactStore(out),
        ray_cluster,
        search=SearchOptions(budget=2, fidelity="smoke"),
        failures=failures,
    )
    assert [r["method"] for r in results] == ["kmeans"]  # the sweep went on
    assert len(failures) == 1 and "every trial of the unic search failed" in failures[0]
    trial_lines = [r.getMessage() for r in caplog.records if "search: trial" in r.getMessage()]
    assert len(trial_lines) == 2, trial_lines  # once per trial
    assert all("the loss became nan" in line for line in trial_lines), trial_lines
    assert running == ["unic"]
