"""A Ray cluster of a head and two worker nodes on this one machine (``ray.cluster_utils``),
each worker advertising one GPU (fake: nothing here has CUDA, so the work runs on CPU while
Ray places it as it would on a GPU cluster).

Shown: embedding actors, kNN shards, Tune trials and the final seed runs spread over both
worker nodes; the multi-node run equals a single-node run of the same resources row for row
(same ``idx``, same neighbours, same trial scores and metrics); a worker node killed while
embedding loses and duplicates no row; a Ray Train worker killed mid-run resumes from its last
checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from deepclust import datasets
from deepclust.artifacts import ArtifactStore
from deepclust.backbones import DEFAULT_BACKBONE
from deepclust.datasets import resolve_dataset
from orchestrator import embed as embed_mod
from orchestrator.ray_env import RaySession, shutdown_ray
from tests.conftest import REPO, make_images, sweep_settings, write_image_parquet
from tests.orchestrator.placements import placements
from tests.orchestrator.test_train_cli import train_cmd

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402
from ray.util import state  # noqa: E402

pytestmark = [
    pytest.mark.multinode,
    pytest.mark.ray,
    # the nodes' GPUs are advertised, not real: on a CUDA machine the tasks Ray places on them
    # would see the real GPU and compute in bf16 while the reference run's don't
    pytest.mark.skipif(torch.cuda.is_available(), reason="simulates GPUs; run on a CPU machine"),
]

STORE_MB = 200 * 2**20
N_IMAGES = 48
ROWS_PER_BLOCK = 12  # 4 input blocks (Parquet read parts), so both embedding actors get work


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(workers: int) -> Cluster:
    """``workers`` 1-CPU, 1-GPU nodes beside a 1-CPU head; with 0 workers one head holding
    the same totals (3 CPUs, 2 GPUs), the single-node reference."""
    shutdown_ray()  # the session's local Ray (tests/conftest.py), if one runs
    # the nodes' processes must not inherit the suite's RAY_ADDRESS=local (tests/conftest.py):
    # they find their own cluster by its address; restored when the test ends (see _stop)
    os.environ.pop("RAY_ADDRESS", None)
    head = {"num_cpus": 1 if workers else 3, "num_gpus": 0 if workers else 2}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            **head,
            "object_store_memory": STORE_MB,
            "include_dashboard": True,  # the state API (placements) reads it
            "dashboard_port": _free_port(),
        },
    )
    for _ in range(workers):
        cluster.add_node(num_cpus=1, num_gpus=1, object_store_memory=STORE_MB)
    cluster.wait_for_nodes()
    return cluster


def _stop(cluster: Cluster) -> None:
    cluster.shutdown()
    os.environ["RAY_ADDRESS"] = "local"  # the suite's isolation again (tests/conftest.py)


def _settings(out: Path):
    # knn_shards 0: one shard per GPU; batches of 8 spread the 48 images over both actors
    return sweep_settings(out, ("kmeans", "unic"), (0, 1), knn_shards=0, batch_size=8)


def _sweep(cluster: Cluster, parquet: Path, out: Path) -> dict:
    """Embed, mine, search UNIC (2 trials) and run kmeans + UNIC with 2 seeds."""
    from orchestrator.pipeline import load_splits, run_benchmark
    from orchestrator.search import SearchOptions

    session = RaySession(address=cluster.address)
    settings = _settings(out)
    splits = load_splits(resolve_dataset(f"parquet:{parquet}"), settings)
    store = ArtifactStore(out)
    # FIFO: ASHA stops a trial at whichever rung it reaches while the other trial's reports are
    # in, which depends on timing, not on the cluster's shape
    opts = SearchOptions(budget=2, fidelity="smoke", asha=False)
    results = run_benchmark(splits, settings, store, session, search=opts)
    (emb_dir,) = out.glob("artifacts/embeddings/*/*/*")
    (nbr_dir,) = out.glob("artifacts/neighbors/*/*")
    trials = {}
    for params in out.glob("tune/unic-*/*/params.json"):
        reports = params.with_name("result.json").read_text().splitlines()
        trials[params.read_text()] = [json.loads(r)["selection_score"] for r in reports]
    return {
        "embeddings": store.read_embeddings(emb_dir),
        "neighbors": store.read_neighbors(nbr_dir)[0],
        "metrics": {(r["method"], r["seed"]): (r["acc"], r["nmi"], r["ari"]) for r in results},
        "trials": trials,
        "placement": _placements(cluster),
    }


def _placements(cluster: Cluster, timeout: float = 30.0) -> dict[str, set[str]]:
    """Node ids of every embedding actor, kNN shard, Tune trial and final seed run so far:
    polled until each kind was seen on every node that should hold it (both workers, or the
    head alone), since task events reach the state API a moment after the task ends."""
    expected = {n.node_id for n in cluster.worker_nodes} or {cluster.head_node.node_id}
    deadline = time.monotonic() + timeout
    while True:
        out, classes = placements(cluster.address)
        if all(v == expected for v in out.values()) or time.monotonic() > deadline:
            out["classes"] = classes
            return out


@pytest.fixture(scope="module")
def parquet(tmp_path_factory) -> Path:
    images, labels = make_images(N_IMAGES)
    return write_image_parquet(tmp_path_factory.mktemp("mn") / "images.parquet", images, labels)


@pytest.fixture(scope="module")
def single(parquet, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setattr(datasets, "PARQUET_PART_ROWS", ROWS_PER_BLOCK)
    cluster = _start(workers=0)
    try:  # shut down before the multi-node cluster starts: one Ray cluster at a time
        return _sweep(cluster, parquet, tmp_path_factory.mktemp("single"))
    finally:
        shutdown_ray()
        _stop(cluster)
        mp.undo()


@pytest.fixture(scope="module")
def multi(single, parquet, tmp_path_factory):
    """The multi-node cluster (kept up for the fault tests) and its sweep."""
    mp = pytest.MonkeyPatch()
    mp.setattr(datasets, "PARQUET_PART_ROWS", ROWS_PER_BLOCK)
    cluster = _start(workers=2)
    out = tmp_path_factory.mktemp("multi")
    try:
        yield cluster, out, _sweep(cluster, parquet, out)
    finally:
        shutdown_ray()
        _stop(cluster)
        mp.undo()


def _worker_ids(cluster: Cluster) -> set[str]:
    return {n.node_id for n in cluster.worker_nodes}


def test_work_spreads_over_both_worker_nodes(multi):
    cluster, _, run = multi
    placed = run["placement"]
    workers = _worker_ids(cluster)
    for what in ("embed", "shard", "trial", "seed"):
        assert placed[what] == workers, (what, placed)


def test_multi_node_equals_single_node_row_for_row(single, multi):
    _, _, run = multi
    np.testing.assert_array_equal(run["embeddings"].labels, single["embeddings"].labels)
    np.testing.assert_array_equal(run["embeddings"].features, single["embeddings"].features)
    np.testing.assert_array_equal(run["neighbors"], single["neighbors"])
    assert len(run["trials"]) == 2 and run["trials"] == single["trials"]
    assert set(run["metrics"]) == {("kmeans", 0), ("kmeans", 1), ("unic", 0), ("unic", 1)}
    assert run["metrics"] == single["metrics"]


def test_worker_node_killed_while_embedding_loses_no_row(single, multi, parquet, tmp_path):
    """Kill one worker node (no graceful drain) while an embedding actor runs on it (half a second
    after it is up, so batches are in flight); the stage completes on the surviving node. Every
    idx comes back exactly once, with the same features as the undisturbed run."""
    cluster, _, _ = multi
    out = tmp_path / "out"
    victim = next(iter(cluster.worker_nodes))
    killed = threading.Event()
    when: dict[str, float] = {}

    def embedder_on_victim() -> bool:
        alive = state.list_actors(
            address=cluster.address, filters=[("state", "=", "ALIVE")], detail=True
        )
        return any("Embedder" in a.class_name and a.node_id == victim.node_id for a in alive)

    def killer():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not embedder_on_victim():
            time.sleep(0.1)
        time.sleep(0.5)
        cluster.remove_node(victim, allow_graceful=False)
        when["killed"] = time.monotonic()
        killed.set()

    thread = threading.Thread(target=killer, daemon=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets, "PARQUET_PART_ROWS", 2)  # 24 read parts: most are still to come
        thread.start()
        session = RaySession(address=cluster.address)
        imageset = resolve_dataset(f"parquet:{parquet}").load("all", parquet.parent, False)
        opts = embed_mod.EmbedOptions(DEFAULT_BACKBONE, batch_size=4)
        emb = embed_mod.ensure_embeddings(imageset, opts, ArtifactStore(out), session)
        when["done"] = time.monotonic()
        thread.join(timeout=120)
    assert killed.is_set() and when["killed"] < when["done"], "the node outlived the stage"
    assert len(emb.features) == N_IMAGES  # read_embeddings checks idx is 0..N-1 exactly once
    np.testing.assert_allclose(emb.features, single["embeddings"].features, atol=1e-5)


def test_train_worker_killed_mid_run_resumes_from_its_checkpoint(multi, parquet):
    """``python -m orchestrator.train`` joins the cluster (RAY_ADDRESS); once the first epoch's
    checkpoint is written its Train worker process is SIGKILLed; Ray Train restarts the worker
    group (FailureConfig) and the run resumes from that epoch. ``--cpu-workers``: the nodes'
    GPUs are simulated, so the worker trains on CPU (gloo) rather than asking for one."""
    cluster, out, _ = multi
    cmd = [
        *train_cmd(parquet, out),
        "--workers",
        "1",
        "--cpu-workers",
        "--set",
        "num_heads=1",
        "--set",
        "epochs=60",
    ]
    env = {**os.environ, "RAY_ADDRESS": cluster.address, "RAY_USAGE_STATS_ENABLED": "0"}
    log = out / "train.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, env=env)
        try:
            pid = _kill_train_worker_after_first_checkpoint(cluster, out, proc)
            assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
    (metrics,) = [  # the sweep's seed runs train in Ray tasks, not Ray Train
        m
        for m in (json.loads(p.read_text()) for p in out.glob("runs/**/metrics.json"))
        if m["method"] == "unic" and "resumed_from_epoch" in m["diagnostics"]
    ]
    assert pid > 0 and metrics["diagnostics"]["resumed_from_epoch"] >= 1, metrics["diagnostics"]


def _registered_checkpoints(out: Path) -> int:
    for snapshot in out.glob("ray/*/checkpoint_manager_snapshot.json"):
        try:
            return len(json.loads(snapshot.read_text())["checkpoint_results"])
        except (json.JSONDecodeError, KeyError, OSError):  # being written
            return 0
    return 0


def _kill_train_worker_after_first_checkpoint(cluster, out: Path, proc) -> int:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before its first checkpoint"
        # a checkpoint the Train controller has registered (a worker's report reaches the
        # controller at its next poll; one still on the worker when it dies is lost)
        if _registered_checkpoints(out):
            for actor in state.list_actors(
                address=cluster.address, filters=[("state", "=", "ALIVE")], detail=True
            ):
                if "TrainWorker" in actor.class_name and actor.pid:
                    os.kill(actor.pid, signal.SIGKILL)
                    return actor.pid
        time.sleep(0.1)
    raise AssertionError("no Train checkpoint appeared in time")
