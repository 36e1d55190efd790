"""The search dashboard as a user opens it: a real search of two methods, then the
``optuna-dashboard`` command the sweep logs, started on a free loopback port against the
finished output's journal, read through its HTTP API (and, where Debian's chromium is
installed, rendered headless)."""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from deepclust.artifacts import ArtifactStore
from deepclust.datasets import resolve_dataset
from orchestrator.leaderboard import SEARCH_FILE
from orchestrator.pipeline import load_splits, run_benchmark
from orchestrator.search import SearchOptions
from tests.conftest import make_images, sweep_settings, write_image_parquet

pytestmark = pytest.mark.ray

METHODS = ("unic", "scan")  # both have a search space (k-means has none)
BUDGET = 2


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def searched(ray_cluster, tmp_path_factory):
    """A finished sweep's output (2 methods x 2 trials, smoke fidelity), its search records
    by method, and the dashboard command it logged."""
    folder = tmp_path_factory.mktemp("dashboard")
    images, labels = make_images(24)
    parquet = write_image_parquet(folder / "tiny.parquet", images, labels)
    out = folder / "out"
    handler = _Lines()
    logger = logging.getLogger("orchestrator.optuna_journal")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        settings = sweep_settings(out, METHODS)
        splits = load_splits(resolve_dataset(f"parquet:{parquet}"), settings)
        run_benchmark(
            splits,
            settings,
            ArtifactStore(out),
            ray_cluster,
            search=SearchOptions(budget=BUDGET, fidelity="smoke"),
        )
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    records = {
        r["method"]: r
        for r in (json.loads(p.read_text()) for p in (out / "tune").glob(f"*/{SEARCH_FILE}"))
    }
    commands = [line for line in handler.lines if line.startswith("optuna dashboard: ")]
    return out, records, commands


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def dashboard(searched, tmp_path_factory):
    """The logged command, on a free port: the dashboard's base URL while it runs."""
    _, _, commands = searched
    assert len(commands) == 1, commands  # once per sweep, not once per method
    argv = shlex.split(commands[0].removeprefix("optuna dashboard: "))
    assert argv[0] == "optuna-dashboard" and argv[-2:] == ["--port", "8080"], argv
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    exe = shutil.which("optuna-dashboard", path=path)
    assert exe, "optuna-dashboard is not installed (a project dependency: pip install -e .)"
    port = _free_port()
    log = tmp_path_factory.mktemp("dashboard-log") / "dashboard.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [exe, *argv[1:-1], str(port)], stdout=sink, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"optuna-dashboard exited ({proc.returncode}):\n{log.read_text()}")
            try:
                _get(f"{url}/api/studies")
                break
            except OSError:
                if time.time() > deadline:
                    pytest.fail(f"optuna-dashboard did not answer in 30 s:\n{log.read_text()}")
                time.sleep(0.2)
        yield url
    finally:  # only the process started here, by its PID
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_the_dashboard_shows_every_searched_methods_study(searched, dashboard):
    out, records, commands = searched
    journal = Path(shlex.split(commands[0].removeprefix("optuna dashboard: "))[1])
    assert journal == (out / "tune" / "optuna.journal").resolve() and journal.is_file()
    assert sorted(records) == sorted(METHODS)
    studies = _get(f"{dashboard}/api/studies")["study_summaries"]
    # one study per search, named after its Tune folder
    names = {s["study_name"]: s for s in studies}
    assert sorted(names) == sorted(Path(r["search_path"]).name for r in records.values())
    for method, record in records.items():
        summary = names[Path(record["search_path"]).name]
        attrs = {a["key"]: a["value"] for a in summary["user_attrs"]}
        assert attrs["method"] == method and attrs["metric"] == record["outcome"]["metric"]
        assert summary["directions"] == [
            "maximize" if record["search_mode"] == "max" else "minimize"
        ]
        detail = _get(f"{dashboard}/api/studies/{summary['study_id']}")
        trials = detail["trials"]
        assert len(trials) == BUDGET == record["trials"], method
        assert {t["state"] for t in trials} == {"Complete"}, method
        (best,) = detail["best_trials"]
        assert best["values"] == pytest.approx([record["best_value"]]), method
        # the configuration the sweep chose is among the trials with the best value (ties)
        tied = [
            {p["name"]: p["param_external_value"] for p in t["params"]}
            for t in trials
            if t["values"] == best["values"]
        ]
        chosen = record["outcome"]["config"]
        assert any(
            all(str(chosen[name]) == value for name, value in params.items()) for params in tied
        )
        assert {p["name"] for p in best["params"]} <= set(chosen), method


def test_the_dashboard_renders_in_a_headless_browser(searched, dashboard, tmp_path):
    """The page a user opens lists every study (rendered DOM), and its screenshot is not blank."""
    browser = shutil.which("chromium")
    if browser is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    headless = [
        browser,
        "--headless",
        "--no-sandbox",  # root in a container
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--window-size=1280,800",
        "--virtual-time-budget=15000",  # let the page fetch its studies and draw them
    ]
    page = f"{dashboard}/dashboard"
    dom = subprocess.run(
        [*headless, "--dump-dom", page], capture_output=True, text=True, timeout=120
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    for record in searched[1].values():
        assert Path(record["search_path"]).name in dom.stdout, "a study missing from the page"
    shot = tmp_path / "dashboard.png"
    done = subprocess.run(
        [*headless, f"--screenshot={shot}", page], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape == (800, 1280)
    assert pixels.std() > 5, "blank screenshot"
    assert (np.abs(pixels - np.median(pixels)) > 40).mean() > 0.002, "nothing drawn on the page"
    keep = os.environ.get("DASHBOARD_SCREENSHOT")
    if keep:  # a copy to look at
        shutil.copy(shot, keep)
