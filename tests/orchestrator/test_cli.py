"""The console and the log file: the project's lines on the console, Ray's and Tune's own
lines (and the warnings raised inside Ray) in ``<output>/logs/`` only, unless -v."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

SCRIPT = """
import logging, sys, warnings
from orchestrator.cli import setup_logging
from orchestrator.ray_env import route_ray_logging

ray_logger = logging.getLogger("ray")
ray_logger.addHandler(logging.StreamHandler())  # what `import ray` installs
ray_logger.propagate = False
setup_logging(sys.argv[2] == "verbose", sys.argv[1], "python -m orchestrator.sweep")
route_ray_logging()
logging.getLogger("ray.tune.tune").warning("ray chatter")
logging.getLogger("orchestrator.sweep").info("our line")
warnings.warn_explicit("inside ray", UserWarning, "/x/site-packages/ray/data/op.py", 1)
warnings.warn_explicit("a user's warning", UserWarning, "/x/mine.py", 1)
"""


def _run(tmp_path: Path, mode: str) -> tuple[str, str]:
    out = tmp_path / mode
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(out), mode],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    (log,) = (out / "logs").glob("sweep-*.log")
    return proc.stderr, log.read_text()


@pytest.mark.parametrize("mode", ["quiet", "verbose"])
def test_ray_lines_reach_the_log_file_and_the_console_only_with_verbose(tmp_path, mode):
    console, logfile = _run(tmp_path, mode)
    for line in ("ray chatter", "our line", "inside ray", "a user's warning"):
        assert line in logfile, line
    assert "our line" in console and "a user's warning" in console
    shown = mode == "verbose"
    assert ("ray chatter" in console) is shown, console
    assert ("inside ray" in console) is shown, console
    assert console.count("ray chatter") <= 1  # Ray's own console handler is gone
