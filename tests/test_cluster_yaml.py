"""cluster.yaml passes Ray's own launcher validation (as `ray up` does: prepare, then validate)."""

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def test_cluster_yaml_is_valid_for_the_ray_launcher():
    pytest.importorskip("ray")
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    validate_config(prepare_config(config))
    assert config["docker"]["image"].startswith("rayproject/ray:2.60.")
    assert "ray-ml" not in (REPO / "cluster.yaml").read_text().split("ray-ml is dead")[1]


def test_cluster_yaml_shares_results_installs_gpu_faiss_and_keeps_the_dashboard_private():
    text = (REPO / "cluster.yaml").read_text()
    config = yaml.safe_load(text)
    assert "-v /mnt/shared:/mnt/shared" in config["docker"]["run_options"]
    assert any("/mnt/shared" in c for c in config["initialization_commands"])
    assert any(
        "faiss-gpu" in c and "uninstall -y -q faiss-cpu" in c
        for c in config["worker_setup_commands"]
    )
    assert "dashboard-host" not in text  # reached with `ray dashboard cluster.yaml` only
