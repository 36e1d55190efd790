"""Shared fixtures: tiny image datasets written to disk, the shared CIFAR-10 folder, Ray."""

from __future__ import annotations

import io
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Every Ray a test starts (in this process or a CLI subprocess, which inherits this) is its
# own: ray.init would otherwise join any Ray found on the machine (another test's cluster, a
# sweep someone runs beside the suite). Tests that join a cluster name its address.
os.environ["RAY_ADDRESS"] = "local"


def kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL whatever is left of the process session ``proc`` leads (e.g. the Ray it started;
    start it with ``start_new_session=True``), and only that session."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def log_tails(paths, lines: int = 30) -> list[str]:
    """``--- name`` and the last ``lines`` lines of each of ``paths`` that exists and is not
    empty: the pieces of a failure message that says why a Ray process ended."""
    parts = []
    for path in paths:
        try:
            tail = Path(path).read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            continue
        if tail:
            parts.append(f"--- {Path(path).name}\n" + "\n".join(tail))
    return parts


def ray_session_logs(driver_pid: int) -> str:
    """For a failure message: the tails of the logs of the local Ray that the driver process
    ``driver_pid`` started (Ray's default temp dir; the session folder ends with the driver's
    PID), which say why a driver ended without a word of its own."""
    root = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray"
    sessions = sorted(root.glob(f"session_*_{driver_pid}"))
    if not sessions:
        return f"(no Ray session of PID {driver_pid} under {root})"
    logs = sessions[-1] / "logs"
    paths = [
        *logs.glob(f"python-core-driver-*_{driver_pid}.log"),
        *logs.glob("raylet.*"),
        *logs.glob("gcs_server.*"),
    ]
    return "\n".join([f"Ray session {sessions[-1]}", *log_tails(paths)])


def make_images(n: int, seed: int = 0, size: int = 24) -> tuple[list[bytes], np.ndarray]:
    """n PNG images of two visually distinct classes (warm blobs vs cool stripes) + labels."""
    rng = np.random.default_rng(seed)
    images, labels = [], np.arange(n) % 2
    for label in labels:
        arr = rng.integers(0, 40, size=(size, size, 3)).astype(np.uint8)
        if label == 0:
            arr[4:-4, 4:-4, 0] = 220
        else:
            arr[:, ::4, 2] = 230
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        images.append(buf.getvalue())
    return images, labels


def write_image_parquet(path: Path, images: list[bytes], labels: np.ndarray) -> Path:
    table = pa.table(
        {"image": pa.array(images, type=pa.binary()), "label": pa.array(labels, type=pa.int16())}
    )
    table = table.replace_schema_metadata({"classes": "warm,cool"})
    pq.write_table(table, path)
    return path


def sweep_settings(out: Path, methods=("unic",), seeds=(0,), **overrides):
    """SweepSettings for in-process pipeline tests: everything under ``out``, default backbone."""
    from deepclust.backbones import DEFAULT_BACKBONE
    from orchestrator.pipeline import SweepSettings

    fields = {
        "data_root": out,
        "download": False,
        "output": out,
        "backbone": DEFAULT_BACKBONE,
        "weights_file": None,
        "methods": tuple(methods),
        "seeds": tuple(seeds),
        "kmax": None,
        "knn_backend": "auto",
        "knn_shards": 1,
        "batch_size": 64,
        "galleries": False,  # the gallery tests ask for them
    }
    return SweepSettings(**{**fields, **overrides})


def synthetic_digits_context(tmp_path: Path, methods=("kmeans",), seeds=(0, 1)):
    """A BenchmarkContext of 200 digits images with synthetic embeddings and no Ray: for
    driving the pipeline's search-and-run with a stand-in search and stand-in runs."""
    from deepclust.artifacts import ArtifactStore, Embeddings
    from deepclust.datasets import resolve_dataset
    from orchestrator.pipeline import BenchmarkContext, BenchmarkSplits

    spec = resolve_dataset("digits")
    images = spec.load("all", Path("."), False).subset(200)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 8))[images.labels] + 0.5 * rng.normal(size=(len(images), 8))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    emb = Embeddings(x, images.labels.astype(np.int64), {"key": "emb0", "path": "unused"})
    nbr = np.zeros((len(x), 1), dtype=np.int64)
    out = tmp_path / "out"
    settings = sweep_settings(out, methods, seeds=seeds, train_on_gpu=False)
    splits = BenchmarkSplits(spec, images, images)
    return BenchmarkContext(
        splits, emb, emb, nbr, {"key": "n0", "path": None}, settings, ArtifactStore(out)
    )


@pytest.fixture
def tiny_parquet(tmp_path: Path) -> Path:
    images, labels = make_images(24)
    return write_image_parquet(tmp_path / "tiny.parquet", images, labels)


@pytest.fixture
def corrupt_parquet(tmp_path: Path) -> Path:
    images, labels = make_images(12)
    images[5] = b"definitely not an image"
    images[7] = images[7][:40]  # truncated PNG
    return write_image_parquet(tmp_path / "corrupt.parquet", images, labels)


@pytest.fixture
def cifar10_dir() -> Path:
    path = SHARED_DATA / "cifar10"
    if not (path / "test.parquet").is_file():
        pytest.skip(f"needs the shared CIFAR-10 parquet at {path} (absent on a fresh clone)")
    return path


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray for the whole session (ray.init costs ~6 s on 2 cores)."""
    pytest.importorskip("ray")
    from orchestrator.ray_env import RaySession

    # "local": a Ray of its own, never one found on the machine (another test's, a sweep's)
    session = RaySession(address="local", num_cpus=2)
    session.resources()
    yield session
    session.close()


# A Ray test fails with its reason after this long instead of hanging the suite (a leaked
# placement group or a lost node would otherwise block it for good); the slowest takes ~3 min.
# The "thread" method: a test blocked inside ray.get never runs Python's SIGALRM handler (the
# "signal" method), so a watchdog thread dumps every thread's stack and ends the process;
# pytest-xdist reports the test as failed and starts a fresh worker for the rest.
RAY_TEST_TIMEOUT_S = float(os.environ.get("UNIC_RAY_TEST_TIMEOUT_S", "900"))
RAY_TEST_TIMEOUT_METHOD = "thread"


# Tests that start Ray (marked `ray`: a local cluster, or a CLI subprocess that starts one) run
# one after another on one pytest-xdist worker: two Ray clusters on a 2-core machine starve each other's
# timeouts. Those tests mostly wait, so the CPU-bound tests (the digits learning tests, kept
# together for their module-scoped embedding) run beside them on the other worker.
@pytest.hookimpl(tryfirst=True)  # before xdist's own hook turns the marks into groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("ray") or "ray_cluster" in item.fixturenames:
            item.add_marker(pytest.mark.xdist_group("ray"))
            if not item.get_closest_marker("timeout"):
                item.add_marker(
                    pytest.mark.timeout(RAY_TEST_TIMEOUT_S, method=RAY_TEST_TIMEOUT_METHOD)
                )
        elif item.path.name == "test_learning.py":
            item.add_marker(pytest.mark.xdist_group("digits"))
