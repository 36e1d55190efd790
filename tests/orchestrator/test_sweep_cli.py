"""The CLI as a user runs it: subprocesses, exit codes, one-line errors, cache reuse."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, kill_session, ray_session_logs


def sweep(*args, env=None, timeout=600):
    full_env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **(env or {})}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.sweep", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )
    return proc, time.perf_counter() - t0


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-2000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


@pytest.mark.parametrize(
    "args,fragments",
    [
        (["--benchmark", "cifar11"], ["unknown dataset 'cifar11'", "did you mean 'cifar10'"]),
        (["--backbone", "resnet9000"], ["unknown backbone 'resnet9000'", "efficientnet_lite0"]),
        (["--methods", "kmeans,scam"], ["unknown method 'scam'", "valid: iic, kmeans"]),
        (["--benchmark", "cifar10", "--data-root", "/no/such/root"], ["data root /no/such/root"]),
        (["--seeds", "1,x"], ["--seeds must be comma-separated integers"]),
        (["--benchmark", "parquet:/no/such.parquet"], ["/no/such.parquet does not exist"]),
    ],
)
def test_bad_input_is_one_line_exit_2(args, fragments, tmp_path):
    proc, _ = sweep(*args, "--output", str(tmp_path / "out"))
    assert_one_line_error(proc, *fragments)


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--budget", "-1"], "--budget must be >= 0 trials"),
        (["--oracle", "--budget", "0"], "--oracle ranks a search's trials"),
        (["--trial-workers", "-2"], "--trial-workers must be >= 0"),
    ],
)
def test_bad_search_flags_are_one_line_errors(args, fragment, tmp_path, capsys):
    from orchestrator.sweep import main

    assert main([*args, "--output", str(tmp_path)]) == 2  # before any work or Ray
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0]


def test_named_benchmark_without_data_names_the_path(tmp_path):
    proc, _ = sweep(
        "--benchmark", "cifar10", "--data-root", str(tmp_path), "--output", str(tmp_path / "out")
    )
    assert_one_line_error(proc, "dataset 'cifar10' not found at", str(tmp_path), "--download")


def _interrupt_while_embedding(args, tmp_path, sig=signal.SIGINT):
    """Ctrl-C (SIGINT to the process group), or SIGTERM to the sweep alone (``kill PID``), once
    Ray Data runs the embedding: exit 128 + the signal, one line naming the rerun, no
    traceback, nothing half-written left as an artifact."""
    log = tmp_path / "interrupted.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.sweep", *args],
            cwd=REPO,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
            start_new_session=True,
        )
    try:
        deadline = time.time() + 300
        while b"orchestrator.embed: embedding " not in log.read_bytes():  # Ray Data starts
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        time.sleep(2)  # Ray Data's actors are up (embedding 24 images takes ~15 s here)
        if sig == signal.SIGINT:
            os.killpg(proc.pid, sig)  # a terminal's Ctrl-C reaches the whole group
        else:
            os.kill(proc.pid, sig)
        code = proc.wait(timeout=120)
    finally:
        kill_session(proc)  # whatever Ray left behind
        proc.wait()
    text = log.read_text()
    line = "interrupted: " if sig == signal.SIGINT else f"stopped by {signal.Signals(sig).name}: "
    ok = code == 128 + sig and line in text and "Traceback" not in text
    assert ok, f"exit {code}\n{text[-3000:]}\n{ray_session_logs(proc.pid)}"
    assert "SIGTERM received" not in text  # Ray's C++ stack dump
    out = Path(args[args.index("--output") + 1])
    assert not list(out.glob("artifacts/embeddings/**/_meta.json"))  # nothing published


@pytest.mark.ray
def test_end_to_end_then_cached_rerun(tiny_parquet, tmp_path):
    """Interrupted while embedding, then run to the end, then run again from the caches."""
    args = [
        "--benchmark",
        f"parquet:{tiny_parquet}",
        "--output",
        str(tmp_path / "out"),
        "--seeds",
        "0,1",
        "--methods",
        "kmeans",  # UNIC through the CLI is covered by test_train_cli.py
    ]
    _interrupt_while_embedding(args, tmp_path)
    first, t_first = sweep(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "| kmeans | 2 |" in first.stdout and "leaderboard:" in first.stdout
    for suffix in ("md", "csv", "json"):
        assert (tmp_path / "out" / f"leaderboard.{suffix}").is_file()
    second, t_second = sweep(*args)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "embeddings parquet:" in second.stderr and ": cached" in second.stderr
    assert "kmeans seed 1: cached" in second.stderr
    assert second.stdout.split("leaderboard:")[0] == first.stdout.split("leaderboard:")[0]


@pytest.mark.ray
def test_sigterm_while_embedding_is_a_one_line_stop(tiny_parquet, tmp_path):
    """SIGTERM to the sweep alone (``kill PID``, ``timeout``, a job scheduler's preemption):
    the same one-line stop as Ctrl-C, exit 143, instead of the C++ stack dump and abort of the
    handler Ray's core worker installs."""
    out = tmp_path / "out"
    args = ["--benchmark", f"parquet:{tiny_parquet}", "--output", str(out), "--methods", "kmeans"]
    _interrupt_while_embedding([*args, "--seeds", "0"], tmp_path, signal.SIGTERM)


@pytest.mark.ray
def test_corrupt_image_and_k_too_large_fail_cleanly(corrupt_parquet, tiny_parquet, tmp_path):
    proc, _ = sweep("--benchmark", f"parquet:{corrupt_parquet}", "--output", str(tmp_path / "o"))
    assert_one_line_error(proc, "2 unreadable image(s)", "idx 5", "row 5")
    proc, _ = sweep(
        "--benchmark", f"parquet:{tiny_parquet}", "--kmax", "24", "--budget", "0",
        "--output", str(tmp_path / "o"),
    )  # fmt: skip
    assert_one_line_error(proc, "k=24 is out of range")
    # a --kmax the set cannot have is known from its size: nothing was embedded, nor Ray started
    assert "orchestrator.embed" not in proc.stderr and "cluster:" not in proc.stderr


@pytest.mark.ray
def test_unreachable_hub_weights_are_a_one_line_error(tiny_parquet, tmp_path):
    proc, _ = sweep(
        "--benchmark",
        f"parquet:{tiny_parquet}",
        "--backbone",
        "resnet18.a1_in1k",
        "--output",
        str(tmp_path / "o"),
        env={"HF_HUB_OFFLINE": "1"},
    )
    assert_one_line_error(proc, "could not load pretrained weights", "--backbone-weights")


def test_methods_default_and_all(tmp_path):
    """A search (the default) covers every method of the setting; --budget 0 keeps the short
    unsearched default; 'all' expands to the registry's methods of the setting (GCD adds
    semi-supervised k-means)."""
    from orchestrator.cli import DEFAULT_GCD_METHODS, DEFAULT_METHODS, settings_from_args
    from orchestrator.sweep import build_parser
    from trainables.methods import METHODS

    parser = build_parser()
    clustering = tuple(n for n in METHODS.names() if n != "sskmeans")
    default = settings_from_args(parser.parse_args(["--benchmark", "digits"]), False)
    assert default.methods == clustering and default.seeds == (0, 1, 2)
    plain = settings_from_args(parser.parse_args(["--benchmark", "digits", "--budget", "0"]), False)
    assert plain.methods == DEFAULT_METHODS and set(DEFAULT_METHODS) <= set(METHODS.names())
    every = settings_from_args(
        parser.parse_args(["--benchmark", "digits", "--methods", "all"]), False
    )
    assert every.methods == clustering
    gcd = parser.parse_args(["--benchmark", "digits", "--setting", "gcd", "--budget", "0"])
    assert settings_from_args(gcd, False).methods == DEFAULT_GCD_METHODS
    gcd_all = parser.parse_args(["--benchmark", "digits", "--setting", "gcd", "--methods", "all"])
    assert settings_from_args(gcd_all, False).methods == tuple(METHODS.names())


def test_a_failed_search_or_degenerate_run_makes_the_sweep_exit_1(tmp_path, monkeypatch, capsys):
    """Every method still runs and lands in the leaderboard, then one summary line and exit
    status 1 (with --budget 0 and a stubbed benchmark run: no Ray)."""
    import numpy as np

    import orchestrator.pipeline as pipeline
    from deepclust.artifacts import ArtifactStore
    from orchestrator.sweep import main

    out = tmp_path / "out"
    store = ArtifactStore(out)

    def fake_run_benchmark(splits, settings, store_, ray_session, search=None, failures=None):
        results = []
        for seed, degenerate in ((0, False), (1, True)):
            d = store.run_dir("digits", "b", "kmeans-abc", seed)
            result = {
                "setting": "clustering",
                "benchmark": "digits",
                "backbone": "b",
                "method": "kmeans",
                "config_hash": "abc",
                "seed": seed,
                "acc": 0.5,
                "nmi": 0.4,
                "ari": 0.3,
                "objective": "inertia",
                "n_eval": 4,
                "seconds": 1.0,
                "degenerate": degenerate,
            }
            store.write_run(d, np.zeros(4, np.int64), result)
            results.append(result)
        failures.append("scan_selflabel on digits: every trial of the search failed")
        return results

    monkeypatch.setattr(pipeline, "run_benchmark", fake_run_benchmark)
    code = main(["--benchmark", "digits", "--budget", "0", "--output", str(out)])
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert code == 1 and len(errors) == 1, captured.err
    assert "1 method search(es) failed and 1 run(s) came out degenerate" in errors[0]
    assert "| kmeans DEGENERATE 1/2 |" in (out / "leaderboard.md").read_text()
    assert "kmeans seed 1 on digits" in captured.out


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "args,fragment",
    [
        (("--output", "{tmp}/file"), "cannot write to --output {tmp}/file: File exists"),
        (
            ("--ray-address", "127.0.0.1:{port}", "--methods", "kmeans", "--budget", "0"),
            "cannot reach the Ray cluster at 127.0.0.1:{port} (Connection refused within",
        ),
    ],
)
def test_unwritable_output_and_unreachable_cluster_are_one_line_errors(
    args, fragment, tmp_path, capsys
):
    """Before anything is computed; an address nobody answers fails within the connect
    timeout instead of ray.init's minutes."""
    from orchestrator.sweep import main

    (tmp_path / "file").write_text("x")
    port = _free_port()
    fill = {"tmp": tmp_path, "port": port}
    argv = ["--benchmark", "digits", "--output", str(tmp_path / "out")]
    argv += [a.format(**fill) for a in args]
    t0 = time.perf_counter()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment.format(**fill) in err[0], err
    assert time.perf_counter() - t0 < 120


def test_a_full_disk_mid_sweep_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    import errno

    import orchestrator.pipeline as pipeline
    from orchestrator.sweep import main

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "x"))

    monkeypatch.setattr(pipeline, "run_benchmark", full)
    code = main(["--benchmark", "digits", "--budget", "0", "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("error: No space left on device writing") and "rerun" in err[0]


def test_benchmarks_without_data_share_one_line_per_fix():
    from orchestrator.sweep import skipped_lines

    fetch = "rerun with --download (needs internet)"
    skipped = [
        ("mnist", f"dataset 'mnist' not found at data/MNIST; {fetch}"),
        ("cifar100", f"dataset 'cifar100' not found at data/c100; {fetch}"),
        ("cifar100_20", f"dataset 'cifar100_20' not found at data/c100; {fetch}"),
        ("imagenet50", "dataset 'imagenet50' not found at data/imagenet; place the folders"),
        ("odd", "the parquet file has no image column"),
    ]
    assert skipped_lines(skipped) == [
        "odd: the parquet file has no image column",
        f"mnist (data/MNIST), cifar100, cifar100_20 (data/c100): not found; {fetch}",
        "imagenet50 (data/imagenet): not found; place the folders",
    ]


def _flat_folder(root: Path, n: int) -> Path:
    """An unlabelled collection: ``n`` PNGs, a few at the top, the rest in nested folders."""
    from tests.conftest import make_images

    images, _ = make_images(n)
    for i, data in enumerate(images):
        folder = root if i < 3 else root / f"day{i % 2}" / "camera"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"img{i:03d}.png").write_bytes(data)
    return root


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--num-clusters", "1"], "--num-clusters must be >= 2"),
        (["--num-clusters", "many"], "--num-clusters must be an integer >= 2 or 'auto'"),
        (["--imbalance", "0.5"], "ratio of the largest class to the smallest, >= 1"),
        (["--ignore-labels", "--setting", "gcd"], "--ignore-labels leaves GCD no labelled"),
        (["--classes", "3,eleven"], "unknown class of digits 'eleven'"),
        (["--num-clusters", "5000"], "more than the 1797 images of digits"),
        (["UNLABELLED"], "has no labels, so no class count: give --num-clusters N"),
        (["UNLABELLED", "--num-clusters", "4", "--imbalance", "10"], "need a labelled benchmark"),
        (["ONE_IMAGE", "--num-clusters", "auto"], "needs at least 10 images to choose K"),
        (["UNLABELLED", "--num-clusters", "4", "--setting", "gcd"], "GCD needs labelled images"),
    ],
)
def test_impossible_cluster_requests_are_one_line_errors(args, fragment, tmp_path, capsys):
    """Each fails in one line (exit 2); all but the GCD one before Ray starts."""
    from orchestrator.sweep import main

    if args[0] in ("UNLABELLED", "ONE_IMAGE"):
        folder = _flat_folder(tmp_path / "imgs", 1 if args[0] == "ONE_IMAGE" else 12)
        args = ["--benchmark", f"folder:{folder}", *args[1:]]
    else:
        args = ["--benchmark", "digits", *args]
    assert main([*args, "--budget", "0", "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], err


@pytest.mark.ray
def test_an_unlabelled_folder_is_clustered_end_to_end(tmp_path):
    """Images in nested folders, no labels, K estimated: every method's assignments file
    (every image once, a cluster and a confidence), gallery and map; a leaderboard without
    accuracy columns for the benchmark, K̂ in its K column."""
    import csv

    folder = _flat_folder(tmp_path / "imgs", 30)
    out = tmp_path / "out"
    proc, _ = sweep(
        "--benchmark", f"folder:{folder}", "--num-clusters", "auto", "--methods", "kmeans,scan",
        "--budget", "0", "--fidelity", "smoke", "--seeds", "0", "--output", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "K̂=" in proc.stderr and "(eigengap over K in 2..6)" in proc.stderr
    rows = [line for line in proc.stdout.splitlines() if f"folder:{folder}" in line]
    assert len(rows) == 2, proc.stdout
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[5].startswith("K̂=") and cells[6:10] == ["-", "-", "-", "-"], cells
    files = sorted((out / "assignments").glob("*/*.csv"))
    assert [f.name.split("-")[0] for f in files] == ["kmeans", "scan"], files
    for f in files:
        table = list(csv.DictReader(f.open()))
        assert [int(r["image_id"]) for r in table] == list(range(30))
        sources = {Path(r["source"]).name for r in table}
        assert sources == {f"img{i:03d}.png" for i in range(30)}
        assert all(0 <= float(r["confidence"]) <= 1 for r in table)
    for method in ("kmeans", "scan"):
        (run,) = (out / "runs").glob(f"*/*/{method}-*/seed0")
        assert (run / "gallery.html").stat().st_size > 1000 and (run / "map.png").is_file()
