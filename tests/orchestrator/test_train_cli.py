"""``python -m orchestrator.train``: a cached-mode UNIC run, and DDP finetuning that survives a
kill (2 gloo workers on CPU, resumed from the last epoch's checkpoint)."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, ray_session_logs

# the bad-input tests fail before Ray starts, so only the others are marked (one Ray worker)


def train_cmd(parquet, out, *extra):
    return [
        sys.executable,
        "-m",
        "orchestrator.train",
        "--method",
        "unic",
        "--benchmark",
        f"parquet:{parquet}",
        "--output",
        str(out),
        "--no-gallery",  # galleries: tests/orchestrator/test_sweep_cli.py
        *extra,
    ]


def _env():
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}


def _metrics(out):
    (path,) = list(out.glob("runs/**/metrics.json"))
    return json.loads(path.read_text())


@pytest.mark.ray
def test_cached_mode_run_writes_the_sweep_artifacts(tiny_parquet, tmp_path):
    out = tmp_path / "out"
    # relative --output and dataset path from another cwd: Ray workers must get absolute paths
    proc = subprocess.run(
        train_cmd(tiny_parquet.name, "out", "--set", "min_steps=100", "--set", "num_heads=2"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env=_env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = _metrics(out)
    assert result["method"] == "unic" and result["acc"] == 1.0  # two trivially separable classes
    assert result["objective"] == "selection_score" and "kept_pair_frac" in result["diagnostics"]
    assert "| unic |" in proc.stdout and (out / "leaderboard.md").is_file()


def test_bad_override_is_a_one_line_error(tiny_parquet, tmp_path):
    proc = subprocess.run(
        train_cmd(tiny_parquet, tmp_path, "--set", "pos_kk=3"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "unknown key 'pos_kk' for UnicConfig (did you mean 'pos_k'?)" in proc.stderr


@pytest.mark.parametrize(
    "method, args, fragment",
    [
        ("unic", ("--set", "scan.min_steps=3"), "'scan' is not the parent stage of 'unic'"),
        ("scan_selflabel", ("--set", "temi.epochs=3"), "use 'scan.KEY'"),
        ("scan_selflabel", ("--set", "scan.min_stepz=3"), "unknown key 'min_stepz' for ScanConfig"),
        ("temi", ("--finetune",), "'temi' has no finetune mode (methods with one: scan,"),
        ("unic", ("--set", "batch_size=-5"), "UnicConfig.batch_size=-5 is out of range"),
        ("unic", ("--set", "lr=NaN"), "UnicConfig.lr=nan is out of range; it must be a finite"),
        ("temi", ("--set", "num_heads=0"), "TemiConfig.num_heads=0 is out of range"),
        ("kmeans", ("--set", "n_init=0"), "KMeansConfig.n_init=0 is out of range"),
        ("scan_selflabel", ("--set", "scan.num_heads=-1"), "ScanConfig.num_heads=-1 is out"),
    ],
)
def test_bad_stage_or_mode_is_a_one_line_error(tiny_parquet, tmp_path, method, args, fragment):
    cmd = train_cmd(tiny_parquet, tmp_path, *args)
    cmd[cmd.index("unic")] = method
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert fragment in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.ray
def test_ddp_finetune_resumes_after_ctrl_c(tiny_parquet, tmp_path):
    """Once a checkpoint is registered, Ctrl-C (SIGINT to the process group): exit 130 and one
    line saying the same command continues; the rerun resumes from the checkpoint. (A
    SIGKILL leaves the same state behind: the checkpoints on disk, nothing else.)"""
    sig = signal.SIGINT
    out = tmp_path / "out"
    cmd = train_cmd(
        tiny_parquet,
        out,
        "--finetune",
        "--workers",
        "2",
        "--epochs",
        "3",
        "--subset",
        "16",
        "--set",
        "min_steps=20",
        "--set",
        "num_heads=2",
        "--set",
        "ft_batch_size=8",
    )
    log = tmp_path / "first.log"
    with log.open("wb") as sink:
        first = subprocess.Popen(
            cmd, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, env=_env(), start_new_session=True
        )
    deadline = time.time() + 480

    def registered() -> bool:  # Train V2 restores what its snapshot lists, not bare folders
        return any(
            "checkpoint_" in p.read_text()
            for p in out.glob("ray/*/checkpoint_manager_snapshot.json")
        )

    try:
        while not registered() and time.time() < deadline:
            if first.poll() is not None:
                pytest.fail(
                    f"the run ended before its first checkpoint:\n{log.read_text()[-3000:]}"
                )
            time.sleep(0.5)
        assert registered(), "no checkpoint within the time limit"
        os.killpg(first.pid, sig)  # the driver and every Ray process it started
        code = first.wait(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):  # already gone when the run failed
            os.killpg(first.pid, signal.SIGKILL)  # whatever is left
        first.wait()
    text = log.read_text()
    assert code == 130, f"exit {code}\n{text[-3000:]}\n{ray_session_logs(first.pid)}"
    assert "interrupted: " in text and "rerun the same command to continue" in text
    assert not list(out.glob("runs/**/metrics.json"))
    second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=_env())
    assert second.returncode == 0, second.stderr[-3000:]
    result = _metrics(out)
    assert result["diagnostics"]["resumed_from_epoch"] >= 1
    assert "resumed from the end of epoch" in second.stderr + second.stdout


@pytest.mark.ray
def test_selflabel_stage_starts_from_the_scan_run(tiny_parquet, tmp_path):
    """A staged method trains (or reuses) its parent run and starts from its saved state."""
    out = tmp_path / "out"
    small_parent = ("--set", "scan.min_steps=100", "--set", "scan.num_heads=2")
    # --workers 0: both stages train in the CLI's process (Ray Train is covered above)
    cmd = train_cmd(
        tiny_parquet,
        out,
        "--workers",
        "0",
        "--set",
        "threshold=0.5",
        "--set",
        "epochs=3",
        *small_parent,
    )
    cmd[cmd.index("unic")] = "scan_selflabel"
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = {json.loads(p.read_text())["method"]: p.parent for p in out.glob("runs/**/metrics.json")}
    assert set(runs) == {"scan", "scan_selflabel"}
    assert (runs["scan"] / "model_state.pt").is_file()  # what the stage started from
    result = json.loads((runs["scan_selflabel"] / "metrics.json").read_text())
    assert result["diagnostics"]["confident_frac_start"] > 0
    assert result["seconds_total"] > result["seconds"]  # the parent's time is counted
    parent = json.loads((runs["scan"] / "metrics.json").read_text())
    assert parent["config"]["min_steps"] == 100  # the parent-stage override reached it
