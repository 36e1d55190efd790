"""The cluster users get from ``ray up cluster.yaml``, simulated on this machine with Ray's fake
autoscaling provider: a head with no CPUs and a GPU worker type the autoscaler grows from 0 to
2 nodes (the GPUs are advertised, not real: nothing here has CUDA, so the work runs on CPU
while Ray places it as on a GPU cluster).

The sweep is submitted with ``ray job submit`` as a user would, while no worker exists. Shown:
it plans for the cluster the autoscaler can grow to (2 GPUs) instead of the nodes alive at
start-up, the autoscaler launches both workers, embedding actors, kNN shards, trials and seed
runs run on them and never on the head, the job succeeds, and its leaderboard equals a
single-node run of the same command row for row.

``ray up`` cannot drive the fake provider in Ray 2.60 (the wheel lacks the provider's defaults
file, and ``ray up`` would terminate the pre-registered head); ``ray start
--autoscaling-config`` is Ray's own way to test local autoscaling. ``ray job submit
--working-dir`` fails on fake clusters (every fake node unpacks the working dir into one
shared session folder), so the job runs from this checkout. Each cluster gets its own ports and
temp dir and runs in its own process session; only that session's processes are stopped.
"""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from orchestrator.ray_env import shutdown_ray

ray = pytest.importorskip("ray")
from ray.util import state  # noqa: E402

from tests.orchestrator.heads import STORE_BYTES, HeadNode, job_on_a_fresh_head  # noqa: E402
from tests.orchestrator.placements import placements, state_api_at  # noqa: E402

pytestmark = [
    pytest.mark.autoscaling,
    pytest.mark.ray,
    # the workers' GPUs are advertised, not real: on a CUDA machine the tasks Ray places on
    # them would see the real GPU and compute in bf16 while the reference run's don't
    pytest.mark.skipif(torch.cuda.is_available(), reason="simulates GPUs; run on a CPU machine"),
]

N_IMAGES = 120
ROWS_PER_GROUP = 30  # 4 Parquet row groups: the embedding work spreads over both actors


def _autoscaling_config(gcs_port: int) -> dict:
    """The shape of cluster.yaml: a 0-CPU head and a GPU worker type scaled from 0 to 2."""
    empty: list = []
    return {
        "cluster_name": "fake-autoscaling",
        "max_workers": 2,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": f"127.0.0.1:{gcs_port}",  # the fake nodes join this cluster only
        },
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            "gpu_worker": {
                "resources": {"CPU": 1, "GPU": 1, "object_store_memory": STORE_BYTES},
                "node_config": {},
                "min_workers": 0,
                "max_workers": 2,
            },
        },
        "head_node_type": "ray.head.default",
        "auth": {},
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 10,  # the nodes stay while the test reads the state API
        "docker": {},
        "file_mounts": {},
        "cluster_synced_files": empty,
        "file_mounts_sync_continuously": False,
        "rsync_exclude": empty,
        "rsync_filter": empty,
        "initialization_commands": empty,
        "setup_commands": empty,
        "head_setup_commands": empty,
        "worker_setup_commands": empty,
        "head_start_ray_commands": empty,
        "worker_start_ray_commands": empty,
    }


def _sweep_command(parquet: Path, out: Path) -> str:
    return (
        f"{sys.executable} -m orchestrator.sweep --benchmark parquet:{parquet} "
        f"--methods kmeans,scan --budget 2 --fidelity smoke --seeds 0,1 --batch-size 8 "
        f"--cluster-timeout 180 --output {out}"
    )


def _results(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The leaderboard and every seed run's scores, without what the wall clock decides."""
    table = pd.read_csv(out / "leaderboard.csv")
    timing = [c for c in table.columns if c in ("seconds", "compute_s") or "hours" in c]
    table = table.drop(columns=timing).sort_values(["method", "config_hash"])
    runs = pd.DataFrame(
        {k: r[k] for k in ("method", "seed", "config_hash", "acc", "nmi", "ari", "objective_value")}
        for r in map(json.loads, map(Path.read_text, sorted(out.glob("runs/**/metrics.json"))))
    ).sort_values(["method", "seed"])
    return table.reset_index(drop=True), runs.reset_index(drop=True)


def _placements(head: HeadNode, workers: set[str], timeout: float = 30.0) -> dict[str, set]:
    """Node ids of every embedding actor, kNN shard, trial and seed run: polled until each kind
    was seen on every worker, since task events reach the state API a moment after a task."""
    deadline = time.monotonic() + timeout
    while True:
        out, _ = placements(head.dashboard)
        union = set().union(*out.values())
        if (union == workers and all(out.values())) or time.monotonic() > deadline:
            return out


@pytest.fixture(scope="module")
def parquet(tmp_path_factory) -> Path:
    """The first images of scikit-learn's digits as PNGs: 10 classes no method gets all right,
    so two runs that differ anywhere differ in their scores."""
    digits = load_digits()
    images = []
    for pixels in digits.images[:N_IMAGES]:
        buf = io.BytesIO()
        Image.fromarray(np.round(pixels * 255 / 16).astype(np.uint8)).save(buf, format="PNG")
        images.append(buf.getvalue())
    labels = digits.target[:N_IMAGES]
    table = pa.table(
        {"image": pa.array(images, type=pa.binary()), "label": pa.array(labels, type=pa.int16())}
    ).replace_schema_metadata({"classes": ",".join(str(c) for c in range(10))})
    path = tmp_path_factory.mktemp("autoscaling") / "images.parquet"
    pq.write_table(table, path, row_group_size=ROWS_PER_GROUP)
    return path


@pytest.fixture(scope="module")
def reference(parquet, tmp_path_factory) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The same command on one static node holding the same GPUs (no autoscaler)."""
    shutdown_ray()  # the session's local Ray (tests/conftest.py): one Ray cluster at a time
    root = tmp_path_factory.mktemp("single")
    head, log, out = job_on_a_fresh_head(
        root, lambda head, out: _sweep_command(parquet, out), "single", cpus=2, gpus=2
    )
    try:
        assert head.job_status("single") == "SUCCEEDED", log[-3000:]
    finally:
        head.stop()
    return _results(out)


def test_the_sweep_grows_an_autoscaling_cluster_and_runs_on_its_workers(
    parquet, reference, tmp_path_factory
):
    root = tmp_path_factory.mktemp("autoscaled")

    def command(head: HeadNode, out: Path) -> str:  # submitted while no worker exists
        alive = head.alive_nodes()
        assert len(alive) == 1 and not alive[0].resources_total.get("CPU")  # no worker yet
        return _sweep_command(parquet, out)

    head, log, out = job_on_a_fresh_head(
        root, command, "autoscaled", cpus=0, gpus=0, autoscaling=_autoscaling_config
    )
    try:
        assert head.job_status("autoscaled") == "SUCCEEDED", log[-3000:]
        # planned from the autoscaler's configuration, not from the empty head it started on
        assert "up to 2 CPUs, 2 GPUs (autoscaler config" in log, log[-3000:]
        assert "cluster: 2 CPUs, 2 GPUs" in log, log[-3000:]
        assert "scan search: 2 trials (2 at a time)" in log, log[-3000:]

        with state_api_at(head.dashboard):
            nodes = state.list_nodes(address=head.dashboard, detail=True)
        workers = {n.node_id for n in nodes if not n.is_head_node}
        assert len(workers) == 2, nodes  # the autoscaler launched both workers
        assert all(n.resources_total.get("GPU") == 1 for n in nodes if n.node_id in workers)

        placed = _placements(head, workers)
        for kind, where in placed.items():
            assert where and where <= workers, (kind, where, workers)  # never on the head
        assert placed["shard"] == workers and placed["trial"] == workers, placed
        assert set().union(*placed.values()) == workers
    finally:
        head.stop()

    table, runs = _results(out)
    pd.testing.assert_frame_equal(table, reference[0])
    pd.testing.assert_frame_equal(runs, reference[1])
    assert set(table["method"]) == {"kmeans", "scan"} and len(runs) == 4  # 2 methods x 2 seeds
    assert ((0.2 < runs["acc"]) & (runs["acc"] < 1.0)).all()  # a task the rows can differ on
