"""A Ray head started with ``ray start --head --block`` in a process session of its own, on
private ports and a temp dir of its own, and stopped by that session only (never ``ray stop``).
Used for the fake autoscaling cluster and as a bystander Ray instance on the same host."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import yaml
from ray.util import state

from tests.conftest import REPO, log_tails
from tests.orchestrator.placements import state_api_at

STORE_BYTES = 150 * 2**20
JOB_TIMEOUT_S = 600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HeadNode:
    """``ray start --head --block`` in a process session of its own, on private ports."""

    def __init__(
        self, root: Path, cpus: int, gpus: int, autoscaling: Callable[[int], dict] | None = None
    ) -> None:
        """``autoscaling``: the autoscaler config for a head on a given GCS port (Ray's fake
        provider), or None for a static node."""
        self.root = root
        # its own temp dir, short: Ray's socket paths under it must stay within 107 bytes
        self.temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.env = {
            **os.environ,
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "disabled",  # a token file elsewhere on the host must not apply
            "AUTOSCALER_UPDATE_INTERVAL_S": "1",
        }
        self.env.pop("RAY_ADDRESS", None)
        cmd = [
            sys.executable,
            "-m",
            "ray.scripts.scripts",
            "start",
            "--head",
            "--block",
            f"--port={self.gcs_port}",
            f"--dashboard-port={self.dashboard_port}",
            "--dashboard-host=127.0.0.1",
            f"--ray-client-server-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--temp-dir={self.temp_dir}",
            f"--num-cpus={cpus}",
            f"--num-gpus={gpus}",
            f"--object-store-memory={STORE_BYTES}",
            "--disable-usage-stats",
        ]
        if autoscaling is not None:
            config = root / "autoscaling.yaml"  # the path the autoscaler process is given
            config.write_text(yaml.safe_dump(autoscaling(self.gcs_port)))
            cmd.append(f"--autoscaling-config={config}")
            self.env["RAY_FAKE_CLUSTER"] = "1"
        self.log = open(root / "head.log", "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            cmd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            self._wait_ready()
        except BaseException:  # whatever stops the wait (a timeout, Ctrl-C): never leak a head
            self.stop()
            raise

    @property
    def dashboard(self) -> str:
        """Also the state API's address: given the GCS address instead, the state API leaves a
        GCS client in this process that ends the process a minute after the cluster stops."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _wait_ready(self, timeout: float = 120.0) -> None:
        """Until the dashboard answers and the state API lists the head as alive."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited: {(self.root / 'head.log').read_text()}")
            try:
                with urllib.request.urlopen(f"{self.dashboard}/api/version", timeout=2):
                    pass
                if self.alive_nodes():
                    return
            except Exception:  # noqa: BLE001 (not up yet: refused, or the state API not ready)
                pass
            time.sleep(1)
        raise RuntimeError(f"the head did not come up within {timeout:.0f} s")

    def alive_nodes(self) -> list:
        with state_api_at(self.dashboard):
            nodes = state.list_nodes(address=self.dashboard, detail=True)
        return [n for n in nodes if n.state == "ALIVE"]

    def submit(self, command: str, job_id: str) -> str:
        """``ray job submit`` from the checkout; returns the job's streamed output."""
        env = {k: v for k, v in self.env.items() if k != "RAY_FAKE_CLUSTER"}
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "ray.scripts.scripts",
                "job",
                "submit",
                f"--address={self.dashboard}",
                f"--submission-id={job_id}",
                "--",
                "bash",
                "-c",
                f"cd {REPO} && {command}",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=JOB_TIMEOUT_S,
        )
        (self.root / f"{job_id}.log").write_text(out.stdout + out.stderr)  # kept for a look
        return out.stdout + out.stderr

    def job_status(self, job_id: str) -> str:
        try:
            with urllib.request.urlopen(f"{self.dashboard}/api/jobs/{job_id}", timeout=10) as r:
                return json.loads(r.read())["status"]
        except OSError as exc:  # the dashboard is gone: say why the head ended
            raise AssertionError(f"{exc}\n{self.diagnostics()}") from exc

    def alive(self) -> bool:
        """The head process runs and its dashboard answers."""
        if self.proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"{self.dashboard}/api/version", timeout=5):
                return True
        except OSError:
            return False

    def diagnostics(self) -> str:
        """For a failure message (before ``stop``, which removes the logs): the head process's
        state, its own output and the tails of the Ray logs of its session."""
        code = self.proc.poll()
        logs = Path(self.temp_dir) / "session_latest" / "logs"
        paths = [self.root / "head.log", *sorted(logs.glob("*.out")), *sorted(logs.glob("*.err"))]
        state = "running" if code is None else f"exited with {code}"
        return "\n".join([f"head process: {state}", *log_tails(paths)])

    def stop(self) -> None:
        """Stop every process of this head's session (the fake worker nodes included)."""
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and session_alive(self.proc.pid):
                time.sleep(0.2)
        self.proc.wait(timeout=10)
        self.log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def session_alive(sid: int) -> bool:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":  # field 6 (session), not a zombie
                return True
    return False


def job_on_a_fresh_head(
    root: Path,
    command: Callable[[HeadNode, Path], str],
    job_id: str,
    cpus: int,
    gpus: int,
    autoscaling: Callable[[int], dict] | None = None,
) -> tuple[HeadNode, str, Path]:
    """Start a head under ``root/attempt-N``, submit ``command(head, out)`` (``out``: that
    attempt's own, empty output folder) and return the still-running head (the caller stops
    it), the job's output and ``out``.

    A head that comes down under the job (its ``ray start --block`` ends when a Ray process it
    started dies, and the dashboard goes with it) is this test cluster failing, not the sweep:
    its logs go to stderr and the job runs once more on a fresh head with fresh ports. A second
    death fails the test with both heads' logs."""
    reports = []
    for attempt in range(2):
        where = root / f"attempt-{attempt}"
        where.mkdir(parents=True)
        try:
            head = HeadNode(where, cpus=cpus, gpus=gpus, autoscaling=autoscaling)
        except RuntimeError as exc:  # `ray start` exited, or never answered
            reports.append(str(exc))
            print(f"the test's Ray head did not come up:\n{exc}", file=sys.stderr)
            continue
        try:
            log = head.submit(command(head, where / "out"), job_id)
            if head.alive():
                return head, log, where / "out"
            reports.append(f"{head.diagnostics()}\n--- job output\n{log[-3000:]}")
        except BaseException:
            head.stop()
            raise
        head.stop()
        print(f"the test's Ray head died under the job:\n{reports[-1]}", file=sys.stderr)
    raise AssertionError("the test's Ray head failed twice:\n" + "\n\n".join(reports))
