"""The suite's own guard (tests/conftest.py): a Ray test blocked for good fails with its reason
after the Ray-test timeout instead of hanging the whole run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, kill_session

# The fault the guard exists for: a task asks for more CPUs than the cluster has free (a leaked
# placement group did this), so ray.get waits for ever.
BLOCKED_TEST = """
import pytest
import ray


@pytest.mark.ray
def test_waits_for_a_cpu_nobody_frees():
    ray.init(address="local", num_cpus=1, include_dashboard=False)
    ray.get(ray.remote(num_cpus=2)(lambda: 0).remote())
"""


@pytest.mark.ray
def test_a_ray_test_blocked_in_ray_get_fails_with_its_stack_after_the_timeout(tmp_path):
    (tmp_path / "test_blocked.py").write_text(BLOCKED_TEST)
    (tmp_path / "conftest.py").write_text(
        "from tests.conftest import pytest_collection_modifyitems  # noqa: F401\n"
    )
    env = {**os.environ, "UNIC_RAY_TEST_TIMEOUT_S": "15", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o", "addopts="]
    cmd += ["--rootdir", str(tmp_path), str(tmp_path / "test_blocked.py")]
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its Ray is stopped with it, and only its Ray
    )
    try:
        out, _ = proc.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        out = ""
    finally:
        kill_session(proc)  # whatever Ray left behind
        proc.communicate()
    assert out, "the blocked test was still waiting 150 s later: the timeout never fired"
    assert proc.returncode != 0, out[-2000:]
    assert "Timeout" in out and "test_waits_for_a_cpu_nobody_frees" in out, out[-2000:]
