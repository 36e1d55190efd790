"""How the sweep sizes itself: the cluster it can grow to (autoscaler configuration, ``--gpus``)
rather than the nodes alive at start-up, and never a CPU the cluster does not have."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import yaml

from deepclust.errors import UserError
from orchestrator import ray_env
from orchestrator.ray_env import ClusterResources, config_capacity, plan_resources
from tests.conftest import REPO

EMPTY_HEAD = ClusterResources(cpus=0, gpus=0, node_cpus=0)  # a 0-CPU head, no worker yet


def _config(**worker_types) -> dict:
    types = {"head": {"resources": {"CPU": 0}, "max_workers": 0}}
    types.update(worker_types)
    return {"max_workers": 8, "head_node_type": "head", "available_node_types": types}


def test_the_cluster_yaml_users_deploy_is_counted_from_its_node_types():
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    capacity, warnings = config_capacity(config)
    assert warnings == []
    # 4 g5.12xlarge workers of 48 CPUs and 4 GPUs; the head has no CPU
    assert (capacity.cpus, capacity.gpus, capacity.node_cpus) == (192, 16, 48)
    assert capacity.cpus_per_gpu == 12
    assert capacity.train_worker_cpus(use_gpu=True) == 11  # one left for drivers and decode
    assert capacity.train_worker_cpus(use_gpu=False) == 1


def test_worker_types_are_capped_by_the_cluster_max_workers_gpu_types_first():
    config = _config(
        cpu={"resources": {"CPU": 8}, "max_workers": 4},
        gpu={"resources": {"CPU": 4, "GPU": 1}, "max_workers": 2},
    )
    config["max_workers"] = 3  # two GPU nodes, then one CPU node
    capacity, _ = config_capacity(config)
    assert (capacity.cpus, capacity.gpus, capacity.node_cpus, capacity.cpus_per_gpu) == (
        16,
        2,
        8,
        4,
    )


def test_a_type_without_declared_resources_is_named_not_guessed():
    config = _config(gpu={"resources": {}, "max_workers": 2})
    capacity, warnings = config_capacity(config)
    assert capacity is None  # nothing countable: never a CPU or GPU invented
    assert len(warnings) == 1 and "'gpu'" in warnings[0] and "--gpus" in warnings[0]


def test_the_plan_is_the_autoscaler_capacity_not_the_empty_head():
    config = _config(gpu={"resources": {"CPU": 1, "GPU": 1}, "max_workers": 2})
    capacity, _ = config_capacity(config)
    plan = plan_resources(EMPTY_HEAD, capacity, None, "local.yaml")
    assert (plan.cpus, plan.gpus) == (2, 2)
    assert plan.alive == (0, 0)
    assert plan.source == "autoscaler config local.yaml"
    assert plan.describe() == (
        "2 CPUs, 2 GPUs (autoscaler config local.yaml); alive now: 0 CPUs, 0 GPUs"
    )


def test_gpus_flag_overrides_the_gpu_count_and_alive_nodes_count_when_larger():
    live = ClusterResources(cpus=16, gpus=2, node_cpus=8, cpus_per_gpu=4)
    assert plan_resources(live, None, gpus=8).gpus == 8
    assert plan_resources(live, None, gpus=0).gpus == 0  # --gpus 0: everything on CPUs
    plan = plan_resources(live, None)
    assert (plan.cpus, plan.gpus, plan.source) == (16, 2, "live nodes")
    small = ClusterResources(cpus=4, gpus=1, node_cpus=4, cpus_per_gpu=4)
    assert plan_resources(live, small, None, "x.yaml").cpus == 16  # alive beats a stale config


def test_task_cpus_never_exceed_a_node():
    res = ClusterResources(cpus=96, gpus=0, node_cpus=8)
    assert res.task_cpus(2) == 8
    assert ClusterResources(cpus=2, gpus=0).task_cpus(4) == 1


def test_monitor_config_path_is_read_from_the_autoscaler_process(tmp_path):
    """The driver of a job runs on the head, beside the autoscaler: its command line names the
    configuration, relative to the process's working directory."""
    (tmp_path / "local.yaml").write_text("cluster_name: x\n")
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)", "--autoscaling-config=local.yaml"],
        cwd=tmp_path,
    )
    try:
        time.sleep(0.2)
        path = ray_env._monitor_config_path({"monitor_pid": proc.pid})
    finally:
        proc.kill()
        proc.wait()
    assert path == tmp_path / "local.yaml"
    assert ray_env._monitor_config_path({"monitor_pid": None}) is None
    assert ray_env._monitor_config_path({}) is None


@pytest.mark.ray
def test_a_local_ray_plans_for_its_alive_cpus(ray_cluster):
    res = ray_cluster.resources()
    assert (res.cpus, res.gpus, res.source) == (2, 0, "live nodes")
    assert res.alive == (2, 0)


def test_waiting_for_gpus_that_never_join_ends_in_one_line(monkeypatch):
    """--gpus on a cluster where no GPU node ever joins: one line naming the fixes."""
    monkeypatch.setattr(ray_env, "live_resources", lambda: ClusterResources(2, 0, 2))
    monkeypatch.setattr("ray.autoscaler.sdk.request_resources", lambda **kw: None)
    plan = plan_resources(ClusterResources(2, 0, 2), None, gpus=2)
    with pytest.raises(UserError, match=r"no node with a GPU joined .* --gpus 0"):
        ray_env.wait_for_nodes(plan, timeout_s=0.5)


def test_the_sweep_rejects_bad_cluster_flags():
    env = {**os.environ, "RAY_ADDRESS": ""}
    for flags, message in (
        (["--gpus", "-1"], "--gpus must be >= 0"),
        (["--cluster-timeout", "0"], "--cluster-timeout must be > 0"),
    ):
        out = subprocess.run(
            [sys.executable, "-m", "orchestrator.sweep", "--benchmark", "digits", *flags],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
            timeout=120,
        )
        assert out.returncode == 2, out.stderr
        assert out.stderr.strip().splitlines()[-1].startswith(f"error: {message}"), out.stderr


def test_a_worker_ended_inside_a_weakref_callback_prints_no_traceback(monkeypatch, capsys):
    """Ray's SIGTERM handler raises SystemExit; landing in a weakref callback, Python prints it
    as an ignored exception with a traceback (forwarded to the sweep's console). The workers'
    hook drops exactly that; a real error in such a callback is still printed."""
    import weakref

    class Thing:
        pass

    def ray_sigterm(_ref):
        raise SystemExit(1)  # ray._private.worker: raise_sys_exit_with_custom_error_message

    def a_bug(_ref):
        raise ValueError("a real bug")

    def printed(hook) -> str:
        monkeypatch.setattr(sys, "unraisablehook", hook)
        for callback in (ray_sigterm, a_bug):
            thing = Thing()
            ref = weakref.ref(thing, callback)
            del thing
            assert ref() is None
        return capsys.readouterr().err

    default = printed(sys.__unraisablehook__)  # a worker without the hook
    assert "SystemExit" in default and "a real bug" in default
    ours = printed(ray_env.quiet_exit_unraisable)
    assert "SystemExit" not in ours
    assert "a real bug" in ours and "Traceback" in ours


def test_the_worker_setup_hook_named_to_ray_resolves():
    import importlib
    import inspect

    source = inspect.getsource(ray_env.init_ray)
    (path,) = [
        line.split('"')[3] for line in source.splitlines() if "worker_process_setup_hook" in line
    ]
    module, name = path.rsplit(".", 1)
    assert getattr(importlib.import_module(module), name) is ray_env.setup_worker
